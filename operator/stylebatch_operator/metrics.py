"""What the operator counts, and its Prometheus text exposition (served at /metrics by
`stylebatch_operator.web`). Updated from the kopf glue; no I/O here.

- stylebatch_jobs{phase}: StyleTransferJobs the operator watches, by phase (a job it has not
  accepted yet counts as Pending);
- stylebatch_frames_stylized_total: frames stylized, as read from the jobs' progress since the
  operator started (a job already running at the start counts from where it was);
- stylebatch_child_retries_total{stage}: failed children replaced by a new attempt;
- stylebatch_watch_*{namespace,watch}: what each VideoWatch received and did (WatchMetrics).
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
        self.watch = WatchMetrics()

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
            *self.watch.render(),
        ]
        return "\n".join(lines) + "\n"


LAG_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 3600, 14400)


class WatchMetrics:
    """Per VideoWatch (namespace, name): events received (queue messages, and stable videos found by
    listing), duplicates dropped (the job was already there), poison messages, jobs created, and
    the lag from upload to job creation."""

    def __init__(self) -> None:
        self.received: Counter[tuple[Key, str]] = Counter()  # ((ns, watch), "queue" | "listing")
        self.duplicates: Counter[Key] = Counter()
        self.poison: Counter[Key] = Counter()
        self.created: Counter[Key] = Counter()
        self.lag_buckets: dict[Key, list[int]] = {}
        self.lag_sum: Counter[Key] = Counter()
        self.lag_count: Counter[Key] = Counter()

    def observe_lag(self, key: Key, seconds: float) -> None:
        buckets = self.lag_buckets.setdefault(key, [0] * len(LAG_BUCKETS))
        for i, bound in enumerate(LAG_BUCKETS):
            if seconds <= bound:
                buckets[i] += 1
        self.lag_sum[key] += max(0.0, seconds)
        self.lag_count[key] += 1

    def render(self) -> list[str]:
        def labels(key: Key, **extra: str) -> str:
            pairs = {"namespace": key[0], "watch": key[1], **extra}
            return ",".join(f'{k}="{v}"' for k, v in pairs.items())

        lines = ["# HELP stylebatch_watch_events_received_total Uploads a VideoWatch learned of, by source "
                 "(queue messages, or stable videos found by listing).",
                 "# TYPE stylebatch_watch_events_received_total counter",
                 *(f"stylebatch_watch_events_received_total{{{labels(k, source=src)}}} {n}"
                   for (k, src), n in sorted(self.received.items()))]
        for name, help_, counter in (
                ("duplicates_dropped", "Uploads whose job was already there (duplicate or redelivered events).",
                 self.duplicates),
                ("poison_messages", "Queue messages moved to the poison queue.", self.poison),
                ("jobs_created", "StyleTransferJobs a VideoWatch created.", self.created)):
            lines += [f"# HELP stylebatch_watch_{name}_total {help_}", f"# TYPE stylebatch_watch_{name}_total counter",
                      *(f"stylebatch_watch_{name}_total{{{labels(k)}}} {n}" for k, n in sorted(counter.items()))]
        lines += ["# HELP stylebatch_watch_upload_to_job_seconds From the upload (event time or blob "
                  "modification) to the job's creation.",
                  "# TYPE stylebatch_watch_upload_to_job_seconds histogram"]
        for key, buckets in sorted(self.lag_buckets.items()):
            lines += [f"stylebatch_watch_upload_to_job_seconds_bucket{{{labels(key, le=str(b))}}} {n}"
                      for b, n in zip(LAG_BUCKETS, buckets)]
            count = self.lag_count[key]
            lines += [f"stylebatch_watch_upload_to_job_seconds_bucket{{{labels(key, le='+Inf')}}} {count}",
                      f"stylebatch_watch_upload_to_job_seconds_sum{{{labels(key)}}} {self.lag_sum[key]:.3f}",
                      f"stylebatch_watch_upload_to_job_seconds_count{{{labels(key)}}} {count}"]
        return lines
