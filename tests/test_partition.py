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
    assert default_chunk_frames(1) == 24  # a one-frame video is one chunk
    assert len(chunk_bounds(144, default_chunk_frames(144))) == 6  # a 6 s clip: 2 ranks get 3 chunks each
    assert len(chunk_bounds(600, default_chunk_frames(600))) == 16
    assert default_chunk_frames(100_000) == 120
    for n in range(1, 5000, 7):
        k = default_chunk_frames(n)
        assert 24 <= k <= 120
        assert len(chunk_bounds(n, k)) >= min(16, -(-n // 24))
