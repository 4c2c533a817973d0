"""Audio an output container cannot take as it is, re-encoded end to end through `stylebatch run`:
audio whose channel layout is unset ("unknown" in ffprobe: PCM in AVI or Matroska) gets FFmpeg's
default layout for its channel count, as the ffmpeg CLI gives it, for every encoder stylebatch
re-encodes with; audio that encoder cannot take at all is refused before any work, in one line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from clips import FAST_STYLE, error_lines, streams, stylebatch

pytestmark = pytest.mark.slow

TINY = dict(size=(160, 120), frames=24, fps=24)  # 1 s


def channels(n: int) -> tuple[str, ...]:
    """make_clip's extra arguments for n-channel audio (the clip's tone in every channel). -ac knows
    no layout of more than 8 channels, so those are the tone merged n times."""
    if n <= 8:
        return ("-ac", str(n))
    pads = "".join(f"[a{i}]" for i in range(n))
    return ("-af", f"asplit={n}{pads};{pads}amerge=inputs={n}")


def audio_streams(path: Path) -> list[dict]:
    return [s for s in streams(path) if s["codec_type"] == "audio"]


def audio_seconds(path: Path, index: int) -> float:
    """How long audio stream `index` plays, by decoding it (WebM and Matroska note no stream duration)."""
    s = audio_streams(path)[index]
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:a:{index}", "-f", "s16le", "-"],
                         check=True, capture_output=True).stdout
    return len(raw) / (2 * int(s["channels"]) * int(s["sample_rate"]))


@pytest.fixture()
def cache(tmp_path: Path) -> dict:
    """An environment whose default work dirs go to a folder of the test's own, to see what a run leaves."""
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))


@pytest.mark.parametrize("name, kwargs, ext, expected", [
    # (the input, make_clip's arguments, the output's extension, [(codec, channels, layout)] of its audio)
    ("cam.avi", dict(codec="mjpeg", pix_fmt="yuvj420p", audio=("pcm",), extra=channels(1)), ".mp4",
     [("aac", 1, "mono")]),  # an old camera's MJPEG and PCM
    ("mono.mkv", dict(audio=("pcm",), extra=channels(1)), ".mp4", [("aac", 1, "mono")]),
    ("stereo.mkv", dict(audio=("pcm",), extra=channels(2)), ".mp4", [("aac", 2, "stereo")]),
    ("two.mkv", dict(audio=("pcm", "flac")), ".mp4", [("aac", 1, "mono"), ("flac", 1, "mono")]),  # flac is copied
    ("three.mkv", dict(audio=("pcm",), extra=channels(3)), ".mp4", [("aac", 3, "2.1")]),
    ("six.mkv", dict(audio=("pcm",), extra=channels(6)), ".mp4", [("aac", 6, "5.1")]),
    ("stereo.mkv", dict(audio=("pcm",), extra=channels(2)), ".webm", [("opus", 2, "stereo")]),
    ("three.mkv", dict(audio=("pcm",), extra=channels(3)), ".webm", [("opus", 3, "3.0")]),  # libopus takes no 2.1
    ("four.mkv", dict(audio=("pcm",), extra=channels(4)), ".webm", [("opus", 4, "quad")]),  # nor 4.0
    ("stereo-be.mkv", dict(audio=("pcm_be",), extra=channels(2)), ".avi", [("mp3", 2, "stereo")]),
])
def test_audio_without_a_channel_layout_is_reencoded_with_ffmpegs_default_layout_for_its_channel_count(
        clip, tmp_path: Path, cache: dict, name: str, kwargs: dict, ext: str, expected: list) -> None:
    src = clip(name, **TINY, **kwargs)
    assert {s.get("channel_layout", "unknown") for s in audio_streams(src)} >= {"unknown"}  # really unset
    out = tmp_path / f"out{ext}"
    result = stylebatch("run", src, "-o", out, "--workers", "1", *FAST_STYLE, env=cache)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    got = audio_streams(out)
    assert [(s["codec_name"], s["channels"], s.get("channel_layout")) for s in got] == expected
    for i in range(len(got)):
        assert abs(audio_seconds(out, i) - audio_seconds(src, i)) < 0.1, i
    assert "with no layout: taken as" in result.stderr


@pytest.mark.parametrize("name, kwargs, ext, words", [
    # AVI's encoder, libmp3lame, takes mono and stereo only
    ("six-flac.mkv", dict(audio=("flac",), extra=channels(6)), ".avi",
     ["audio stream 1 (flac, 6 channels)", "libmp3lame", "no 6-channel audio", ".mp4, .mov, .mkv or .webm"]),
    ("three-be.mkv", dict(audio=("pcm_be",), extra=channels(3)), ".avi",
     ["(pcm_s16be, 3 channels)", "libmp3lame", "no 3-channel audio", ".mp4, .mov, .mkv or .webm"]),
    # FFmpeg names no layout of 9 channels: AAC cannot be given one
    ("nine.mkv", dict(audio=("pcm",), extra=channels(9)), ".mp4",
     ["(pcm_s16le, 9 channels)", "aac", "no 9-channel audio", ".mov, .mkv or .avi"]),
])
def test_audio_the_encoder_cannot_take_is_refused_in_one_line_before_any_work(
        clip, tmp_path: Path, cache: dict, name: str, kwargs: dict, ext: str, words: list) -> None:
    src = clip(name, **TINY, **kwargs)
    out = tmp_path / f"out{ext}"
    result = stylebatch("run", src, "-o", out, "--workers", "1", *FAST_STYLE, env=cache)
    assert result.returncode == 2, result.stderr  # retrying cannot help
    assert "Traceback" not in result.stderr
    errors = error_lines(result)
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert "cannot write" not in errors[0]
    assert "stylizing" not in result.stderr and "resume" not in result.stderr  # refused before any work
    assert not out.exists()
    assert os.listdir(tmp_path / "cache" / "stylebatch" / "work") == []  # nothing kept to resume


def test_audio_at_a_rate_the_encoder_cannot_take_is_reencoded_at_the_nearest_rate_it_takes(
        clip, tmp_path: Path, cache: dict) -> None:
    src = clip("96k.mkv", **TINY, audio=("flac",), extra=("-ar", "96000"))  # libmp3lame takes up to 48 kHz
    out = tmp_path / "out.avi"
    result = stylebatch("run", src, "-o", out, "--workers", "1", *FAST_STYLE, env=cache)
    assert result.returncode == 0, result.stderr
    got = audio_streams(out)
    assert [(s["codec_name"], s["sample_rate"]) for s in got] == [("mp3", "48000")]
    assert abs(audio_seconds(out, 0) - audio_seconds(src, 0)) < 0.1
