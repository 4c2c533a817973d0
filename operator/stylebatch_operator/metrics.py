"""What the operator counts, and its Prometheus text exposition (served at /metrics by
`stylebatch_operator.web`). Updated from the kopf glue; no I/O here.

- stylebatch_jobs{phase}: StyleTransferJobs the operator watches, by phase (a job it has not
  accepted yet counts as Pending);
- stylebatch_frames_stylized_total: frames stylized, as read from the jobs' progress since the
  operator started (a job already running at the start counts from where it was);
- stylebatch_child_retries_total{stage}: failed children replaced by a new attempt.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from stylebatch_operator.decide import PENDING, RETRY, Action
from stylebatch_operator.crd import PHASES
from stylebatch_operator.names import STAGES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Key = tuple[str, str]  # (namespace, name)


class Metrics:
    def __init__(self) -> None:
        self._phases: dict[Key, str] = {}
        self._frames_high: dict[Key, int] = {}  # the most frames done seen per job
        self.frames_stylized = 0
        self.retries: Counter[str] = Counter()

    def observe_job(self, key: Key, status: dict[str, Any]) -> None:
        """A job as the watch shows it: its phase, and frames done beyond what was seen before."""
        phase = status.get("phase") or PENDING
        self._phases[key] = phase if phase in PHASES else PENDING
        done = int((status.get("progress") or {}).get("framesDone") or 0)
        if key in self._frames_high:
            self.frames_stylized += max(0, done - self._frames_high[key])
            done = max(done, self._frames_high[key])  # a retry's first lines may say less: count once
        self._frames_high[key] = done

    def forget_job(self, key: Key) -> None:
        self._phases.pop(key, None)
        self._frames_high.pop(key, None)

    def observe_action(self, action: Action) -> None:
        if action.kind == RETRY and action.stage:
            self.retries[action.stage] += 1

    def render(self) -> str:
        by_phase = Counter(self._phases.values())
        lines = [
            "# HELP stylebatch_jobs StyleTransferJobs the operator watches, by phase.",
            "# TYPE stylebatch_jobs gauge",
            *(f'stylebatch_jobs{{phase="{phase}"}} {by_phase[phase]}' for phase in PHASES),
            "# HELP stylebatch_frames_stylized_total Frames stylized, read from the jobs' progress since the "
            "operator started.",
            "# TYPE stylebatch_frames_stylized_total counter",
            f"stylebatch_frames_stylized_total {self.frames_stylized}",
            "# HELP stylebatch_child_retries_total Failed children replaced by a new attempt, by stage.",
            "# TYPE stylebatch_child_retries_total counter",
            *(f'stylebatch_child_retries_total{{stage="{stage}"}} {self.retries[stage]}' for stage in STAGES),
        ]
        return "\n".join(lines) + "\n"
