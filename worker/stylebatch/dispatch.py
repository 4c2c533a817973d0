"""Which rank, and which of its pipelines, stylizes which chunk: each takes the chunk after its last one
while nobody else has, and work left elsewhere when its own run of chunks is done.

A fixed contiguous share makes the job as slow as its slowest rank (a throttled GPU, a busy node, a
rank that resumed fewer parts). Handing out chunk after chunk to whichever asks first (one shared
counter) fixed that, but every pipeline then took every S-th chunk of S pipelines at once, and a
decoder can only start at a keyframe: in a clip whose keyframes lie further apart than S chunks (an
encoder's default of 250 frames, screen recordings), each pipeline decoded the frames of all the
others' chunks too, to reach its own: every frame S times over.

So each pipeline of the job (a consumer) starts at its own point of the chunks still to do (spread
evenly) and goes on chunk by chunk, decoding straight on, as long as nobody has taken the next chunk.
When somebody has (the next consumer's start, or a thief), it takes the middle of the longest run of
chunks nobody has taken yet, and goes on from there (starts and middles move, within bounds, to a
chunk that begins at or just after a keyframe, where a seek decodes least): a consumer twice as slow
simply loses half its run to the others, and each move costs one seek. Taking is atomic over all ranks: one flag per chunk
in an MPI one-sided window on rank 0, set by compare-and-swap (passive target: rank 0 need not take
part). The chunk grid, the part names and resume are unchanged: chunks whose part already exists are
marked taken before anyone starts.

One rank (no MPI) keeps the flags in memory for its pipelines.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator, Sequence

from stylebatch.ranks import World

_calls = threading.Lock()  # held around every MPI call this module makes, from any thread
_ended = False  # end_mpi_calls() was called: no more


def end_mpi_calls(timeout: float = 2.0) -> None:
    """Before MPI_Finalize (cli.exit_now): once this returns, no thread calls MPI from here again.
    An interrupted rank finalized while its progress thread went on probing, and MPICH printed
    "Attempting to use an MPI routine (internal_Iprobe) ... after finalizing MPICH" among the run's
    last lines. A call stuck in MPI (a rank gone) is waited for `timeout` seconds at most."""
    global _ended
    held = _calls.acquire(timeout=timeout)
    _ended = True
    if held:
        _calls.release()


def longest_untaken(taken: Sequence[int]) -> tuple[int, int] | None:
    """(start, length) of the longest run of untaken (0) flags, the first of equal ones; None if none."""
    best, start = None, None
    for i, flag in enumerate([*taken, 1]):
        if not flag and start is None:
            start = i
        elif flag and start is not None:
            if best is None or i - start > best[1]:
                best = (start, i - start)
            start = None
    return best


def nearest_cheapest(candidates: range, centre: int, cost: Sequence[int] | None) -> int:
    """Of `candidates`, the one whose seek costs least (cost[i]: frames decoded only to reach chunk i
    from its keyframe), the nearest to `centre` of equal ones."""
    return min(candidates, key=lambda i: (cost[i] if cost else 0, abs(i - centre)))


def starts(todo: Sequence[int], consumers: int, cost: Sequence[int] | None = None) -> list[int]:
    """Where each of `consumers` begins: spread evenly over the indices still to do (sorted), each
    moved by up to a quarter of its share to the chunk that is cheapest to seek to (one that starts at
    or just after a keyframe)."""
    if not todo:
        return [0] * consumers
    n, reach = len(todo), len(todo) // (4 * consumers)
    todo_cost = None if cost is None else [cost[i] for i in todo]
    first = []
    for c in range(consumers):
        k = c * n // consumers
        first.append(todo[nearest_cheapest(range(max(0, k - reach), min(n, k + reach + 1)), k, todo_cost)])
    return first


class ChunkDispenser:
    """Hands out indices 0..n-1, each exactly once over all ranks and pipelines. Collective: every
    rank of the world creates one (with the same `done`, and its own count of pipelines) and closes
    it (close() waits for the other ranks to be done drawing)."""

    def __init__(self, world: World, n: int, pipelines: int = 1, done: Sequence[int] = (),
                 cost: Sequence[int] | None = None) -> None:
        """cost[i]: frames decoded only to reach chunk i after a seek (None: all alike), so that
        pipelines start and move to chunks near a keyframe where they can."""
        self.n, self._win, self._progress, self._cost = n, None, None, cost
        self._lock = threading.Lock()
        self._done = done = set(done)
        counts = [pipelines]
        if world.comm is not None and world.size > 1:
            from mpi4py import MPI

            self._mpi = MPI
            counts = world.comm.allgather(pipelines)
            self._flags = None
            self._win = MPI.Win.Allocate(n * 4 if world.rank == 0 else 0, 4, comm=world.comm)
            if world.rank == 0:
                import numpy as np

                self._win.Lock(0, MPI.LOCK_EXCLUSIVE)
                flags = np.frombuffer(self._win.tomemory(), np.int32, n)
                flags[:] = 0
                flags[sorted(done)] = 1
                self._win.Unlock(0)
            world.comm.Barrier()  # nobody takes a chunk before the flags are set
            if world.rank == 0:
                self._progress = _Progress(world.comm)
        else:
            self._flags = bytearray(n)
            for i in done:
                self._flags[i] = 1
        first = sum(counts[:world.rank])
        everyone = starts([i for i in range(n) if i not in done], sum(counts), cost)
        self._starts = everyone[first:first + pipelines]

    def draws(self, pipeline: int = 0) -> Iterator[int]:
        """The indices this rank's `pipeline` takes, one at a time as it asks: on from its start while
        the next is free (past those done before), then from the middle of the longest free run, until
        none is left."""
        index = self._starts[pipeline] if pipeline < len(self._starts) else self.n
        while True:
            if index >= self.n or not self._take(index):
                index = self._steal()
                if index is None:
                    return
            yield index
            index += 1
            while index in self._done:
                index += 1

    def _steal(self) -> int | None:
        while (run := longest_untaken(self._taken())) is not None:
            start, length = run  # the thief takes the second half, from a chunk near a keyframe
            index = nearest_cheapest(range(start + length // 4, start + length - length // 4), start + length // 2,
                                     self._cost)
            if self._take(index):
                return index
        return None

    def _take(self, index: int) -> bool:
        """Atomically: whether chunk `index` was free, and now is this caller's."""
        if self._win is None:
            with self._lock:
                free = not self._flags[index]
                self._flags[index] = 1
                return free
        import numpy as np

        one, zero, old = np.ones(1, np.int32), np.zeros(1, np.int32), np.zeros(1, np.int32)  # MPI.INT, as the reads
        with _calls:
            if _ended:
                return False
            self._win.Lock(0, self._mpi.LOCK_SHARED)
            self._win.Compare_and_swap(one, zero, old, 0, index)
            self._win.Unlock(0)
        return old[0] == 0

    def _taken(self) -> Sequence[int]:
        """Every chunk's flag (1: taken), read atomically flag by flag."""
        if self._win is None:
            with self._lock:
                return bytes(self._flags)
        import numpy as np

        flags = np.zeros(self.n, np.int32)
        with _calls:
            if _ended:
                return [1] * self.n
            self._win.Lock(0, self._mpi.LOCK_SHARED)
            self._win.Get_accumulate(np.zeros(self.n, np.int32), flags, 0, (0, self.n, self._mpi.INT),
                                     op=self._mpi.NO_OP)
            self._win.Unlock(0)
        return flags.tolist()

    def close(self) -> None:
        if self._win is not None:
            self._win.Free()  # collective: after every rank is done drawing
            self._win = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class _Progress(threading.Thread):
    """Keeps MPI's progress engine turning on the counter's rank while its own threads compute.

    Across nodes (MPICH over TCP) an atomic on a window completes only when the target process
    enters MPI; rank 0 otherwise would not until its own work is done. A cheap non-blocking probe
    every few milliseconds is enough (MPICH's own async-progress thread would spin a whole core)."""

    def __init__(self, comm) -> None:
        super().__init__(name="stylebatch-mpi-progress", daemon=True)
        self.comm, self._done = comm, threading.Event()
        self.start()

    def run(self) -> None:
        while not self._done.wait(0.005):
            with _calls:
                if _ended:
                    return
                self.comm.Iprobe()

    def stop(self) -> None:
        self._done.set()
        self.join()


def dispense(dispenser: ChunkDispenser, pipeline: int, chunks: Sequence[tuple[int, int]],
             on_take: Callable[[tuple[int, int]], None]) -> Iterator[tuple[int, int]]:
    """The chunks this rank's `pipeline` takes, one at a time as it asks for the next one (never one
    the dispenser was told is done); on_take(chunk) is told of each one taken (progress)."""
    for index in dispenser.draws(pipeline):
        chunk = chunks[index]
        on_take(chunk)
        yield chunk
