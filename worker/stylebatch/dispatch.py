"""Which rank stylizes which chunk: handed out one at a time, to whichever rank asks first.

A fixed contiguous share makes the job as slow as its slowest rank (a throttled GPU, a busy node, a
rank that resumed fewer parts). Instead the ranks share one counter, an MPI one-sided window on rank
0 that each rank advances with an atomic fetch-and-add (MPI_Fetch_and_op, passive target: rank 0
need not take part), so a rank twice as slow simply takes about half as many chunks. The chunk grid,
the part names and resume are unchanged: a chunk whose part already exists is skipped by whoever
draws it.

One rank (no MPI) draws the chunks in order.
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


class ChunkDispenser:
    """Hands out indices 0..n-1, each exactly once over all ranks. Collective: every rank of the
    world creates one and closes it (close() waits for the other ranks to be done drawing)."""

    def __init__(self, world: World, n: int) -> None:
        self.n, self._next, self._win, self._progress = n, 0, None, None
        if world.comm is not None and world.size > 1:
            from mpi4py import MPI

            self._mpi = MPI
            itemsize = MPI.INT64_T.Get_size()
            self._win = MPI.Win.Allocate(itemsize if world.rank == 0 else 0, itemsize, comm=world.comm)
            if world.rank == 0:
                self._win.Lock(0, MPI.LOCK_EXCLUSIVE)
                self._win.tomemory()[:itemsize] = bytes(itemsize)  # the counter starts at 0
                self._win.Unlock(0)
            world.comm.Barrier()  # nobody draws before the counter is set
            if world.rank == 0:
                self._progress = _Progress(world.comm)

    def draw(self) -> int | None:
        """The next index nobody has drawn yet, or None when all are taken."""
        if self._win is None:
            index, self._next = self._next, self._next + 1
        else:
            import numpy as np

            one, old = np.ones(1, np.int64), np.zeros(1, np.int64)
            with _calls:
                if _ended:
                    return None
                self._win.Lock(0, self._mpi.LOCK_SHARED)
                self._win.Fetch_and_op(one, old, 0, 0, self._mpi.SUM)
                self._win.Unlock(0)
            index = int(old[0])
        return index if index < self.n else None

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


def dispense(dispenser: ChunkDispenser, chunks: Sequence[tuple[int, int]], done: set[tuple[int, int]],
             on_take: Callable[[tuple[int, int]], None]) -> Iterator[tuple[int, int]]:
    """This rank's chunks, drawn one at a time as it asks for the next one; chunks already done are
    skipped; on_take(chunk) is told of each one drawn (progress)."""
    while (index := dispenser.draw()) is not None:
        chunk = chunks[index]
        if chunk in done:
            continue
        on_take(chunk)
        yield chunk
