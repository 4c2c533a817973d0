"""Progress lines: how stylize ranks report frames done, read by `stylebatch run` and the operator,
and how train-style reports its steps.

Each rank prints one line now and then on stdout; mpiexec gathers every rank's stdout on the
launcher, so the launcher's log holds everyone's progress. Pure Python: the operator imports it
without torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable

PREFIX = "STYLEBATCH_PROGRESS "


@dataclass(frozen=True)
class RankProgress:
    rank: int
    ranks: int  # world size
    done: int  # frames of this rank's share that are stylized (resumed parts included)
    share: int  # frames this rank owns
    frames: int  # frames in the whole video


def format_line(p: RankProgress) -> str:
    return PREFIX + json.dumps(
        {"rank": p.rank, "ranks": p.ranks, "done": p.done, "share": p.share, "frames": p.frames},
        separators=(",", ":"),
    )


def parse_records(line: str) -> list[RankProgress]:
    """Every progress record in a log line. mpiexec can glue two ranks' lines into one."""
    records = []
    for piece in line.split(PREFIX)[1:]:
        try:
            d, _ = json.JSONDecoder().raw_decode(piece.strip())
            records.append(RankProgress(int(d["rank"]), int(d["ranks"]), int(d["done"]), int(d["share"]), int(d["frames"])))
        except (ValueError, KeyError, TypeError):
            continue
    return records


def latest_by_rank(lines: Iterable[str]) -> dict[int, RankProgress]:
    """The latest progress record of each rank that reported."""
    latest: dict[int, RankProgress] = {}
    for line in lines:
        for p in parse_records(line):
            latest[p.rank] = p
    return latest


# `stylebatch train-style` reports its steps in a line of its own (a progress bar on a terminal, a
# log line every 10 s otherwise): `step 120/4000 loss 1.2e+06 ... 3.10 steps/s ETA 00:20:51`. The
# operator reads the training pod's log for the latest one.
_TRAIN_LINE = re.compile(r"\bstep (\d+)/(\d+)\b.*?\b(\d+(?:\.\d+)?) steps/s ETA (\d{2,}:\d\d:\d\d|--:--:--)")


@dataclass(frozen=True)
class TrainProgress:
    step: int  # steps done, resumed ones included
    steps: int  # steps in all
    rate: float  # steps per second since this process started
    eta: float | None  # seconds left at that rate; None when unknown

    @property
    def percent(self) -> int:
        return 100 * min(self.step, self.steps) // self.steps if self.steps else 0


def format_train_line(p: TrainProgress, losses: dict[str, float]) -> str:
    parts = " ".join(f"{k} {v:.4g}" for k, v in losses.items())
    eta = "--:--:--"
    if p.eta is not None:  # hours past 24 as hours (not strftime's %H, which wrapped; nor gmtime, which overflowed)
        left = int(p.eta)
        eta = f"{left // 3600:02d}:{left // 60 % 60:02d}:{left % 60:02d}"
    return f"step {p.step}/{p.steps} {parts} {p.rate:.2f} steps/s ETA {eta}"


def latest_train_progress(lines: Iterable[str]) -> TrainProgress | None:
    """The last training progress line among `lines` (text or JSON log records); None if none."""
    found = None
    for line in lines:
        for m in _TRAIN_LINE.finditer(line):
            eta = None if m.group(4).startswith("-") else sum(
                int(x) * f for x, f in zip(m.group(4).split(":"), (3600, 60, 1)))
            found = TrainProgress(int(m.group(1)), int(m.group(2)), float(m.group(3)), eta)
    return found
