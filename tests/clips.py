"""Test clips made with ffmpeg: filled in by the pipeline work."""
