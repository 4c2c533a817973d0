"""How the frames are cut into chunks (which rank takes which: stylebatch.dispatch)."""

from __future__ import annotations


MIN_CHUNK_FRAMES, MAX_CHUNK_FRAMES, TARGET_CHUNKS = 16, 120, 16


def default_chunk_frames(n_frames: int) -> int:
    """Frames per chunk when the user gives none: enough chunks (16) that up to 16 ranks all get
    work and none lags far behind on a short clip, but no chunk under 16 frames (every part starts
    with a keyframe) or over 120 (the work a pre-empted rank loses). A clip too short for 16 chunks
    is cut into the most equal chunks a power of two of them allows (8, 4, 2 or 1), so that 2, 4 or 8
    ranks or pipelines finish together: with a fixed 24 frames a chunk a one-second clip (32 frames)
    was 24 + 8, and one of a 2-core machine's two pipelines painted three quarters of it
    (docs/benchmarks.md: 5.6-6.0 s against 4.6-5.1 s for the whole run)."""
    chunks = TARGET_CHUNKS
    while chunks > 1 and n_frames < chunks * MIN_CHUNK_FRAMES:
        chunks //= 2
    return max(1, min(MAX_CHUNK_FRAMES, -(-n_frames // chunks)))


def chunk_bounds(n_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """The global chunk grid: [start, end) frame ranges of `chunk_frames`, the last one shorter."""
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be at least 1")
    return [(s, min(s + chunk_frames, n_frames)) for s in range(0, n_frames, chunk_frames)]


def part_name(start: int, end: int, ext: str) -> str:
    return f"{start:09d}-{end:09d}{ext}"
