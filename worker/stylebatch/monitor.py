"""What `stylebatch run` shows while the ranks work: a progress bar on a TTY, else log lines."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, TextIO

from stylebatch.progress import RankProgress, parse_records

log = logging.getLogger("stylebatch.run")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Monitor:
    """Sums the ranks' latest progress lines; speed counts only frames stylized in this run."""

    def __init__(self, frames: int, stream: TextIO = sys.stderr, tty: bool | None = None,
                 log_every_s: float = 10.0, on_update: Callable[[int, int], None] | None = None) -> None:
        """`on_update(done, frames)` is called with the frames done over all ranks when a report
        changes that count, and at the first report: once per state, the final (frames, frames) once,
        however many ranks repeat it (a rank's closing record, the last chunk's, a timed one)."""
        self.frames = frames
        self.on_update = on_update
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.log_every_s = log_every_s
        self.latest: dict[int, RankProgress] = {}
        self.start = time.monotonic()
        self.resumed: int | None = None
        self._last_log = 0.0
        self._drawn = False
        self._updated: int | None = None  # the done last handed to on_update

    @property
    def done(self) -> int:
        return min(self.frames, sum(p.done for p in self.latest.values()))

    def line(self, text: str) -> bool:
        """Feed one line of the ranks' stdout; True if it held progress (several ranks' records
        glued together on one line are read too)."""
        records = parse_records(text)
        for p in records:
            self.record(p)
        return bool(records)

    def record(self, p: RankProgress) -> None:
        """Take one rank's progress record (parsed from its line, or handed over in process)."""
        if p.rank not in self.latest:  # a rank's first record counts the parts it found already done
            self.resumed = (self.resumed or 0) + p.done
        self.latest[p.rank] = p
        self.show()
        if self.on_update is not None and self.done != self._updated:
            self._updated = self.done
            self.on_update(self.done, self.frames)

    def status(self) -> str:
        elapsed = max(1e-6, time.monotonic() - self.start)
        fresh = self.done - (self.resumed or 0)
        fps = fresh / elapsed
        eta = (self.frames - self.done) / fps if fps > 0 else None
        pct = 100.0 * self.done / self.frames if self.frames else 100.0
        return (f"{self.done}/{self.frames} frames ({pct:.0f}%), {fps:.1f} fps, "
                f"ETA {_clock(eta) if eta is not None else '?'}")

    def show(self, final: bool = False) -> None:
        if self.tty:
            width = 30
            filled = int(width * self.done / self.frames) if self.frames else width
            self.stream.write(f"\r\033[K[{'#' * filled}{'.' * (width - filled)}] {self.status()}")
            if final:
                self.stream.write("\n")
            self.stream.flush()
            self._drawn = not final
        else:
            now = time.monotonic()
            if final or now - self._last_log >= self.log_every_s:
                self._last_log = now
                log.info("stylize: %s", self.status())

    def passthrough(self, text: str) -> None:
        """Show another line (a rank's log) without garbling the bar."""
        if self.tty and self._drawn:
            self.stream.write("\r\033[K")
        self.stream.write(text if text.endswith("\n") else text + "\n")
        self.stream.flush()
        if self.tty and self._drawn:
            self.show()
