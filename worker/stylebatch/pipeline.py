"""Decode, model and encode in three threads joined by small bounded queues, so the model (the GPU)
never waits on the CPU work around it (a pipeline); a rank's pipelines, several at once, each taking
its own chunks (stylebatch.dispatch); and the progress lines a rank prints."""

from __future__ import annotations

import queue
import sys
import threading
import time
from typing import Callable, Iterable, Iterator

from stylebatch.logs import counted
from stylebatch.progress import RankProgress, format_line
from stylebatch.ranks import World

REPORT_EVERY_S = 3.0
_DONE = object()


class Progress:
    """This rank's progress: a record at the start, after each chunk it finishes, every
    REPORT_EVERY_S between, and at the end.

    Without `sink` each record is a line on stdout (mpiexec gathers the ranks' lines on the
    launcher). With `sink` (one rank in the caller's own process) each record is handed to
    sink(record) instead, always in the thread that created this Progress: records made in the
    encode thread wait until that thread calls `deliver()` (the model loop does, after each batch)."""

    def __init__(self, world: World, share: int, done: int, frames: int,
                 sink: Callable[[RankProgress], None] | None = None) -> None:
        self.world, self.share, self.done, self.frames = world, share, done, frames
        self.sink = sink
        self._owner = threading.get_ident()
        self._pending: list[RankProgress] = []
        self._lock = threading.Lock()
        self._last = 0.0

    def take(self, chunk: tuple[int, int]) -> None:
        """This rank took the chunk [start, end): its share grows."""
        with self._lock:
            self.share += chunk[1] - chunk[0]

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
        self.report()

    def report(self, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < REPORT_EVERY_S:
                return
            self._last = now
            record = RankProgress(self.world.rank, self.world.size, self.done, self.share, self.frames)
            if self.sink is not None:
                self._pending.append(record)
        if self.sink is not None:
            self.deliver()
            return
        # one write per line: print() writes the newline separately, and mpiexec may slip another
        # rank's output in between
        sys.stdout.write(format_line(record) + "\n")
        sys.stdout.flush()

    def deliver(self) -> None:
        """Hand the records made so far to the sink, when called in the owner's thread (else: later)."""
        if self.sink is None or threading.get_ident() != self._owner:
            return
        with self._lock:
            records, self._pending = self._pending, []
        for record in records:
            self.sink(record)


class _Stopped(Exception):
    pass


class Busy:
    """Where the model thread's time went (run_pipeline's result), from its first wait for frames
    to the encoder's last frame: stylizing, waiting for the decoder (it is the bottleneck), or
    waiting for the encoder to take stylized frames (it is). On a GPU the first share is what the
    GPU had to do; the other two say what needs more cores or a faster preset. `count`: frames
    encoded (a temporal chunk's warm-up frames are stylized, not encoded). `decoded`: frames out of
    the decoder, where known (more than `count` when reaching a chunk meant decoding from an earlier
    keyframe, or for a temporal chunk's warm-up)."""

    def __init__(self) -> None:
        self.model = self.decoder = self.encoder = 0.0
        self.count = self.decoded = 0
        self.pipelines = 1
        self.wall = None  # seconds, when not the sum of the three (several pipelines: the longest one's)

    @staticmethod
    def of(parts: list[Busy]) -> Busy:
        """Several pipelines' Busy as one: frames and shares summed, the time the longest one's."""
        if len(parts) == 1:
            return parts[0]
        total = Busy()
        for b in parts:
            total.model, total.decoder, total.encoder = (total.model + b.model, total.decoder + b.decoder,
                                                         total.encoder + b.encoder)
            total.count += b.count
            total.decoded += b.decoded
        total.pipelines = len(parts)
        total.wall = max(b.model + b.decoder + b.encoder for b in parts)
        return total

    def summary(self) -> str:
        total = self.model + self.decoder + self.encoder
        if not self.count or not total:
            return "no frames to stylize"
        wall = total if self.wall is None else self.wall
        share = lambda part: f"{100 * part / total:.0f}%"  # noqa: E731
        on = "" if self.pipelines == 1 else f" on {self.pipelines} pipelines"
        return (f"{counted(self.count, 'frame')} in {wall:.1f} s ({self.count / wall:.1f} fps){on}: model {share(self.model)}, "
                f"waiting for the decoder {share(self.decoder)}, waiting for the encoder {share(self.encoder)}"
                + (f"; {counted(self.decoded, 'frame')} decoded" if self.decoded else ""))


def run_pipelines(count: int, pipeline: Callable[[int, threading.Event], Busy]) -> list[Busy]:
    """pipeline(index, stop) for index 0..count-1 at once: the first in this thread (signals reach
    it), the others in threads of their own. `stop` is shared: the first failure sets it, which ends
    the others' pipelines, and is raised here once every one has ended; so does a signal's exception
    (KeyboardInterrupt, SystemExit) while this thread waits for the others. Returns each one's Busy."""
    stop = threading.Event()
    busy: list = [None] * count
    failures: list[BaseException] = []

    ended = [threading.Event() for _ in range(count)]

    def body(index: int) -> None:
        try:
            busy[index] = pipeline(index, stop)
        except BaseException as exc:  # noqa: BLE001 - raised below, in this thread
            failures.append(exc)
            stop.set()
        finally:
            ended[index].set()

    others = [threading.Thread(target=body, args=(i,), name=f"stylebatch-pipeline-{i}", daemon=True)
              for i in range(1, count)]
    for t in others:
        t.start()
    body(0)
    # waited for by their events, not Thread.join: a join a signal interrupts marks its thread ended
    # (Python 3.11), and a second join would not wait
    try:
        for done in ended:
            done.wait()
    except BaseException:  # a signal while the others finish their last chunks: they stop too
        stop.set()
        for done in ended:
            done.wait()
        raise
    if failures:
        raise failures[0]
    return busy


def run_pipeline(todo: Iterable[tuple[int, int]], read: Callable, stylizer, open_part: Callable,
                 publish: Callable, progress: Progress, finish: Callable | None = None,
                 stop: threading.Event | None = None) -> Busy:
    """decode thread -> model (this thread) -> encode thread; the first failure stops all three.

    read(chunk) yields the chunk's items (in the decode thread); stylizer(item) maps each (in this
    thread); finish(item) turns a stylized item into the uint8 frames to encode (in the encode
    thread; default: the item is those frames). An item that finishes as no frames is not encoded.

    The next chunk is taken from `todo` only once the model has started on the previous one, so a
    rank never holds more than the chunk in hand and the next (chunks are handed out on demand).
    `stop`: an event other pipelines share (run_pipelines): once set, this one ends too (its part in
    hand is discarded) and returns. Returns where the model thread's time went (Busy)."""
    q_in: queue.Queue = queue.Queue(maxsize=3)
    ahead = threading.Semaphore(1)  # chunks taken whose first item the model has not yet started
    q_out: queue.Queue = queue.Queue(maxsize=3)
    stop = threading.Event() if stop is None else stop
    failures: list[BaseException] = []

    def put(q: queue.Queue, item) -> None:
        while True:
            if stop.is_set():
                raise _Stopped
            try:
                return q.put(item, timeout=0.1)
            except queue.Full:
                pass

    def get(q: queue.Queue):
        while True:
            if stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                pass

    def guarded(fn: Callable) -> Callable:
        def body() -> None:
            try:
                fn()
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                failures.append(exc)
                stop.set()
        return body

    def next_chunk(chunks: Iterator[tuple[int, int]]) -> tuple[int, int] | None:
        while not ahead.acquire(timeout=0.1):
            if stop.is_set():
                raise _Stopped
        return next(chunks, None)

    def decode() -> None:
        chunks = iter(todo)
        while (chunk := next_chunk(chunks)) is not None:
            for frames in read(chunk):
                put(q_in, (chunk, frames))
            put(q_in, (chunk, None))
        put(q_in, _DONE)

    def encode() -> None:
        writer, path = None, None
        try:
            while (item := get(q_out)) is not _DONE:
                chunk, frames = item
                if frames is None:
                    writer.close()
                    publish(chunk, path)
                    writer = None
                    progress.report(force=True)  # a chunk is done, for good
                    continue
                if finish is not None:
                    frames = finish(frames)
                if not len(frames):
                    continue
                if writer is None:
                    writer, path = open_part(chunk)
                writer.write(frames)
                busy.count += len(frames)  # read by the caller only after this thread has ended
                progress.add(len(frames))
        finally:
            if writer is not None:
                writer.abort()

    busy = Busy()
    ended = [0.0]  # when the model thread had stylized its last frames

    def model() -> None:
        current = None
        clock = time.perf_counter
        t0 = clock()
        while (item := get(q_in)) is not _DONE:
            t1 = clock()
            busy.decoder += t1 - t0  # the first batch's wait is the decoder's start-up: counted too
            chunk, frames = item
            if chunk != current:  # the model starts on a chunk: the decoder may take the next one
                current = chunk
                ahead.release()
            out = None if frames is None else stylizer(frames)
            t2 = clock()
            busy.model += t2 - t1
            put(q_out, (chunk, out))
            progress.deliver()  # in the caller's thread: what the encoder reported since
            t0 = clock()
            busy.encoder += t0 - t2
        ended[0] = clock()
        busy.decoder += ended[0] - t0
        put(q_out, _DONE)

    workers = [threading.Thread(target=guarded(f), name=f"stylebatch-{f.__name__}", daemon=True)
               for f in (decode, encode)]
    for t in workers:
        t.start()
    guarded(model)()
    for t in workers:
        t.join()
    busy.encoder += time.perf_counter() - ended[0]  # the encoder finishing the last frames
    if failures:
        raise failures[0]
    return busy
