"""Which pipeline of which rank takes which chunk (stylebatch.dispatch): each chunk exactly once, each
pipeline on from its own start while nobody has taken the next chunk (so its decoder goes straight on
instead of decoding the others' chunks to reach its own), the rest taken from whoever is slowest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stylebatch.dispatch import ChunkDispenser, dispense, longest_untaken, starts
from stylebatch.ranks import World


@pytest.mark.parametrize("taken, run", [
    ([], None),
    ([1, 1, 1], None),
    ([0, 0, 0], (0, 3)),
    ([1, 0, 0, 1, 0], (1, 2)),
    ([0, 1, 0, 0, 0], (2, 3)),  # the last run, when it is the longest
    ([0, 0, 1, 0, 0], (0, 2)),  # the first of equal runs
])
def test_the_longest_run_nobody_has_taken(taken, run) -> None:
    assert longest_untaken(taken) == run


@pytest.mark.parametrize("todo, consumers, first", [
    (list(range(16)), 2, [0, 8]),
    (list(range(16)), 4, [0, 4, 8, 12]),
    ([1, 2, 3, 7, 8, 9], 2, [1, 7]),  # resumed: spread over the chunks still to do
    ([5], 3, [5, 5, 5]),  # fewer chunks than pipelines: the others find nothing free and end
    ([], 2, [0, 0]),
])
def test_pipelines_start_spread_evenly_over_the_chunks_still_to_do(todo, consumers, first) -> None:
    assert starts(todo, consumers) == first


# cost: frames decoded only to reach each chunk after a seek; 16 chunks of 20 frames, keyframes every 50
EVERY_50 = [(20 * i) % 50 for i in range(16)]  # 0, 20, 40, 10, 30, 0, 20, ...


@pytest.mark.parametrize("todo, consumers, cost, first", [
    (list(range(16)), 2, EVERY_50, [0, 10]),  # chunk 10 starts on a keyframe; 8 would cost 10 frames
    (list(range(16)), 4, EVERY_50, [0, 5, 8, 13]),  # at most a quarter of a share (1 chunk) away: 8 (cost 10) stays
    (list(range(16)), 2, [0] * 16, [0, 8]),
])
def test_pipelines_start_at_a_chunk_near_a_keyframe_within_a_quarter_of_their_share(todo, consumers, cost,
                                                                                       first) -> None:
    assert starts(todo, consumers, cost) == first


def draw_in_threads(dispenser: ChunkDispenser, pipelines: int, pause=lambda index, chunk: None) -> list[list[int]]:
    taken: list[list[int]] = [[] for _ in range(pipelines)]

    def draw(index: int) -> None:
        for chunk in dispenser.draws(index):
            taken[index].append(chunk)
            pause(index, chunk)

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(pipelines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return taken


def test_pipelines_drawing_at_once_take_every_chunk_exactly_once() -> None:
    done = set(range(0, 2000, 7))
    dispenser = ChunkDispenser(World(), 2000, 4, sorted(done))
    taken = draw_in_threads(dispenser, 4)
    assert sorted(c for mine in taken for c in mine) == sorted(set(range(2000)) - done)


def test_pipelines_at_the_same_pace_each_take_one_run_of_consecutive_chunks() -> None:
    """With a chunk handed to whoever asked first, two pipelines took every other chunk, and each
    decoded the other's frames to reach its own (a clip whose keyframes lie further apart than two
    chunks: every frame decoded twice)."""
    dispenser = ChunkDispenser(World(), 16, 2)
    turn = threading.Condition()
    order = [0]

    def in_turns(index: int, chunk: int) -> None:  # the two pipelines take chunks strictly in turn
        with turn:
            order[0] += 1
            turn.notify_all()
            turn.wait_for(lambda: order[0] % 2 == index or order[0] >= 16, timeout=5)

    taken = draw_in_threads(dispenser, 2, in_turns)
    assert taken == [list(range(8)), list(range(8, 16))]


def test_a_slow_pipeline_loses_the_rest_of_its_run_to_a_fast_one_in_halves() -> None:
    dispenser = ChunkDispenser(World(), 16, 2)
    slow = dispenser.draws(1)
    assert next(slow) == 8  # the slow pipeline's first chunk, and then it is busy
    fast = list(dispenser.draws(0))
    # its own run, then the middle of the slow one's rest, on to its end, then the middle of what is left...
    assert fast == [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 10, 11, 9]
    assert list(slow) == []  # nothing left for the slow one


def test_a_thief_takes_the_chunk_nearest_a_keyframe_in_the_middle_half_of_the_longest_run() -> None:
    dispenser = ChunkDispenser(World(), 16, 2, cost=EVERY_50)
    slow = dispenser.draws(1)
    assert next(slow) == 10
    fast = dispenser.draws(0)
    assert [next(fast) for _ in range(10)] == list(range(10))
    # free: 11..15 (5 chunks); of 12..14, 13 costs 10 frames and 12 and 14 cost 40 and 30
    assert next(fast) == 13


def test_chunks_already_done_are_skipped_and_not_counted() -> None:
    chunks = [(s, s + 4) for s in range(0, 32, 4)]
    done = {chunks[1], chunks[6]}
    dispenser = ChunkDispenser(World(), len(chunks), 1, [i for i, c in enumerate(chunks) if c in done])
    took: list = []
    assert list(dispense(dispenser, 0, chunks, took.append)) == [c for c in chunks if c not in done] == took


DRAW_IN_RANKS = """
import json, pathlib, sys, threading, time
from stylebatch.dispatch import ChunkDispenser
from stylebatch.ranks import detect
world = detect()
pipelines = int(sys.argv[1 + world.rank])
dispenser = ChunkDispenser(world, 40, pipelines, [3, 4])
taken = [[] for _ in range(pipelines)]
def draw(i):
    for chunk in dispenser.draws(i):
        taken[i].append(chunk)
        time.sleep(0.02)
threads = [threading.Thread(target=draw, args=(i,)) for i in range(pipelines)]
for t in threads: t.start()
for t in threads: t.join()
dispenser.close()
pathlib.Path(sys.argv[3], f"rank{world.rank}.json").write_text(json.dumps(taken))
"""


@pytest.mark.mpi
def test_ranks_of_several_pipelines_share_the_chunks_over_mpi_exactly_once(tmp_path: Path) -> None:
    """Real MPI ranks (mpiexec), rank 0 with 1 pipeline, rank 1 with 2: one flag per chunk in rank 0's
    window, taken by compare-and-swap; every rank's pipelines start at their own part of the chunks."""
    from stylebatch.contract import HWLOC_XMLFILE_ENV, no_topology_file

    script = tmp_path / "draw.py"
    script.write_text(DRAW_IN_RANKS)
    env = dict(os.environ, TMPDIR=str(tmp_path), **{HWLOC_XMLFILE_ENV: no_topology_file(str(tmp_path))})
    mpiexec = Path(sys.executable).parent / "mpiexec"
    result = subprocess.run([str(mpiexec), "-n", "2", sys.executable, str(script), "1", "2", str(tmp_path)], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    ranks = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}
    consumers = ranks[0] + ranks[1]
    assert sorted(c for mine in consumers for c in mine) == [c for c in range(40) if c not in (3, 4)]
    # 38 chunks left over 3 pipelines: each starts at its own third, 0, 14 and 27
    assert [mine[0] for mine in consumers] == [0, 14, 27]
    for mine in consumers:  # each goes on chunk by chunk, moving elsewhere only a few times
        moves = sum(1 for a, b in zip(mine, mine[1:]) if b != a + 1 and not (a == 2 and b == 5))
        assert moves <= 6, consumers
