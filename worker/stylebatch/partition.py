"""How the frames are cut into chunks (which rank takes which: stylebatch.dispatch)."""

from __future__ import annotations


MIN_CHUNK_FRAMES, MAX_CHUNK_FRAMES, TARGET_CHUNKS = 24, 120, 16


def default_chunk_frames(n_frames: int) -> int:
    """Frames per chunk when the user gives none: enough chunks (16) that up to 16 ranks all get
    work and none lags far behind on a short clip, but no chunk under 24 frames (every part starts
    with a keyframe) or over 120 (the work a pre-empted rank loses)."""
    return max(MIN_CHUNK_FRAMES, min(MAX_CHUNK_FRAMES, -(-n_frames // TARGET_CHUNKS)))


def chunk_bounds(n_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """The global chunk grid: [start, end) frame ranges of `chunk_frames`, the last one shorter."""
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be at least 1")
    return [(s, min(s + chunk_frames, n_frames)) for s in range(0, n_frames, chunk_frames)]


def part_name(start: int, end: int, ext: str) -> str:
    return f"{start:09d}-{end:09d}{ext}"
