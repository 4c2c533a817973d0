"""The chunk grid: every frame in exactly one chunk, and the default chunk size."""

from __future__ import annotations

import pytest

from stylebatch.partition import chunk_bounds, default_chunk_frames, part_name


def test_chunk_grid_covers_every_frame_with_a_short_last_chunk() -> None:
    assert chunk_bounds(0, 10) == []
    assert chunk_bounds(1, 10) == [(0, 1)]
    assert chunk_bounds(25, 10) == [(0, 10), (10, 20), (20, 25)]
    for n in range(0, 60):
        for k in (1, 2, 7, 60):
            grid = chunk_bounds(n, k)
            assert [i for s, e in grid for i in range(s, e)] == list(range(n))
            assert all(e - s == k for s, e in grid[:-1])


def test_part_names_sort_in_frame_order() -> None:
    names = [part_name(s, e, ".mkv") for s, e in chunk_bounds(2500, 120)]
    assert names == sorted(names)
    assert part_name(0, 120, ".mkv") == "000000000-000000120.mkv"


def test_default_chunks_keep_16_ranks_busy_within_sane_chunk_sizes() -> None:
    assert default_chunk_frames(1) == 1  # a one-frame video is one chunk
    assert len(chunk_bounds(600, default_chunk_frames(600))) == 16
    assert default_chunk_frames(100_000) == 120
    for n in range(1, 5000, 7):
        k = default_chunk_frames(n)
        assert min(n, 16) <= k <= 120
        assert 2 * len(chunk_bounds(n, k)) > min(16, n // 16)  # a power of two of chunks: more than half as many


def _finish(chunks: list[tuple[int, int]], workers: int) -> int:
    """Frames the busiest of `workers` does when each takes the next chunk as it becomes free."""
    loads = [0] * workers
    for start, end in chunks:
        loads[loads.index(min(loads))] += end - start
    return max(loads)


@pytest.mark.parametrize("frames, workers", [
    (32, 2),    # a one-second clip on a 2-core machine's two pipelines: 24 + 8 frames before
    (60, 2),    # 24 + 24 + 12: one pipeline did 36 frames of 60
    (64, 4),    # 24 + 24 + 16 on four: one idle
    (100, 4),   # 24 x 4 + 4
    (144, 4),   # 6 chunks of 24: two ranks of four did 48 frames, two 24
    (200, 8),
    (300, 16),
])
def test_default_chunks_of_a_short_clip_keep_a_power_of_two_of_workers_equally_busy(frames: int, workers: int) -> None:
    """Short clips are cut into a power of two of equal chunks (of at least 16 frames), so 2, 4, 8 or 16
    ranks or pipelines finish together: a fixed 24 frames a chunk left the last one short and one
    worker with up to half again the others' frames."""
    chunks = chunk_bounds(frames, default_chunk_frames(frames))
    assert _finish(chunks, workers) <= frames / workers * 1.1 + 1  # within 10% of an even share
    assert default_chunk_frames(frames) >= 16