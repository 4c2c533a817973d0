"""What the operator counts, exposed with prometheus_client (served at /metrics by
`stylebatch_operator.web`). Updated from the kopf glue; no I/O here. Every metric lives in the
Metrics' own registry, so a test (or a second operator object) never shares counts.

Gauges, read at each scrape:
- stylebatch_jobs{phase}: StyleTransferJobs the operator watches, by phase (a job it has not
  accepted yet counts as Pending);
- stylebatch_job_frames_per_second{namespace,job}: a stylizing job's speed between its last two
  progress readings (only jobs in Stylizing have one).

Counters:
- stylebatch_frames_stylized_total: frames stylized, as read from the jobs' progress since the
  operator started (a job already running at the start counts from where it was);
- stylebatch_child_retries_total{stage,reason}: failed children replaced by a new attempt;
- stylebatch_job_failures_total{reason}: jobs that ended Failed, by status.reason.

Histograms (seconds), observed when the transition happens in this operator:
- stylebatch_job_start_seconds: from the job's creation to its acceptance (first child created);
- stylebatch_job_admission_seconds: from the job's creation to its first Kueue admission;
- stylebatch_stage_duration_seconds{stage}: a stage's successful attempt, from its child's
  creation to its success;
- stylebatch_job_duration_seconds: from acceptance to success.

The upload trigger's, per VideoWatch (WatchMetrics, `metrics.watch`):
- stylebatch_watch_events_received_total{namespace,watch,source}, _duplicates_dropped_total,
  _poison_messages_total, _jobs_created_total{namespace,watch}, and the histogram
  stylebatch_watch_upload_to_job_seconds{namespace,watch}.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from stylebatch_operator.decide import parse_time
from stylebatch_operator.states import Phase

disable_created_metrics()  # no *_created series: they double what a scrape returns and no panel reads them
CONTENT_TYPE = CONTENT_TYPE_LATEST
Key = tuple[str, str]  # (namespace, name)

# A job waits seconds to minutes for admission and start; a stage runs seconds to hours.
WAIT_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, float("inf"))

JOBS = "stylebatch_jobs"
FRAMES_PER_SECOND = "stylebatch_job_frames_per_second"
FRAMES_STYLIZED = "stylebatch_frames_stylized"
RETRIES = "stylebatch_child_retries"
FAILURES = "stylebatch_job_failures"
START_SECONDS = "stylebatch_job_start_seconds"
ADMISSION_SECONDS = "stylebatch_job_admission_seconds"
STAGE_SECONDS = "stylebatch_stage_duration_seconds"
JOB_SECONDS = "stylebatch_job_duration_seconds"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._phases: dict[Key, str] = {}
        self._frames_high: dict[Key, int] = {}  # the most frames done seen per job
        self._speed: dict[Key, tuple[int, datetime, float | None]] = {}  # frames, when, frames/s
        r = self.registry
        self.frames_stylized = PromCounter(FRAMES_STYLIZED, "Frames stylized, read from the jobs' progress "
                                           "since the operator started.", registry=r)
        self.retries = PromCounter(RETRIES, "Failed children replaced by a new attempt.", ["stage", "reason"],
                                   registry=r)
        self.failures = PromCounter(FAILURES, "Jobs that ended Failed.", ["reason"], registry=r)
        self.start_seconds = Histogram(START_SECONDS, "Seconds from a job's creation to its acceptance.",
                                       buckets=WAIT_BUCKETS, registry=r)
        self.admission_seconds = Histogram(ADMISSION_SECONDS, "Seconds from a job's creation to its first "
                                           "Kueue admission.", buckets=WAIT_BUCKETS, registry=r)
        self.stage_seconds = Histogram(STAGE_SECONDS, "Seconds of a stage's successful attempt, from its "
                                       "child's creation to its success.", ["stage"], buckets=DURATION_BUCKETS,
                                       registry=r)
        self.job_seconds = Histogram(JOB_SECONDS, "Seconds from a job's acceptance to its success.",
                                     buckets=DURATION_BUCKETS, registry=r)
        self.watch = WatchMetrics()
        r.register(_Snapshot(self))
        r.register(self.watch)

    def observe_job(self, key: Key, status: dict[str, Any]) -> None:
        """A job as the watch shows it: its phase, frames done beyond what was seen before, speed."""
        phase = Phase.of(status)
        self._phases[key] = phase
        progress = status.get("progress") or {}
        done = int(progress.get("framesDone") or 0)
        if key in self._frames_high:
            self.frames_stylized.inc(max(0, done - self._frames_high[key]))
            done = max(done, self._frames_high[key])  # a retry's first lines may say less: count once
        self._frames_high[key] = done
        self._observe_speed(key, phase, progress)

    def _observe_speed(self, key: Key, phase: Phase, progress: dict[str, Any]) -> None:
        when = parse_time(progress.get("updateTime"))
        if phase != Phase.STYLIZING or when is None:
            self._speed.pop(key, None)
            return
        done = int(progress.get("framesDone") or 0)
        previous = self._speed.get(key)
        fps = previous[2] if previous else None
        if previous and when > previous[1] and done >= previous[0]:
            fps = (done - previous[0]) / (when - previous[1]).total_seconds()
        if not previous or when > previous[1]:
            self._speed[key] = (done, when, fps)

    def forget_job(self, key: Key) -> None:
        self._phases.pop(key, None)
        self._frames_high.pop(key, None)
        self._speed.pop(key, None)

    def observe_transition(self, stj: dict[str, Any], patch: dict[str, Any] | None,
                           child: dict[str, Any] | None = None, now: datetime | None = None) -> None:
        """A change the operator wrote into a job's status: `stj` as it was before, `patch` what was
        written (stylebatch_operator.status.transition), `child` the job's current child then."""
        if not patch:
            return
        before = stj.get("status") or {}
        old = Phase.of(before)
        new = Phase.of(patch) if "phase" in patch else old
        if any(int(patch.get(n) or 0) > int(before.get(n) or 0) for n in ("retries", "disruptions")):
            for stage in patch.get("attempts") or {}:  # a new attempt of a failed child
                self.retries.labels(stage, patch.get("reason") or "Unknown").inc()
        if new == Phase.FAILED and old != Phase.FAILED:
            self.failures.labels(patch.get("reason") or "Unknown").inc()
        if now is None:
            return
        created = parse_time((stj.get("metadata") or {}).get("creationTimestamp"))
        if created is not None and patch.get("startTime") and not before.get("startTime"):
            self.start_seconds.observe(_seconds(created, now))
        if created is not None and "queuedSeconds" in patch and "queuedSeconds" not in before:
            self.admission_seconds.observe(_seconds(created, now))  # the first admission
        if old.stage and new not in (old, Phase.FAILED) and child is not None:  # the stage succeeded
            born = parse_time(child["metadata"].get("creationTimestamp"))
            if born is not None:
                self.stage_seconds.labels(old.stage).observe(_seconds(born, now))
        if new == Phase.SUCCEEDED and old != Phase.SUCCEEDED:
            started = parse_time(before.get("startTime"))
            if started is not None:
                self.job_seconds.observe(_seconds(started, now))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Snapshot:
    """The gauges that are a view of the watched jobs, computed at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self):
        return [GaugeMetricFamily(JOBS, ""), GaugeMetricFamily(FRAMES_PER_SECOND, "")]

    def collect(self):
        jobs = GaugeMetricFamily(JOBS, "StyleTransferJobs the operator watches, by phase.", labels=["phase"])
        by_phase = Counter(self.metrics._phases.values())
        for phase in Phase:
            jobs.add_metric([phase.value], by_phase[phase])
        yield jobs
        fps = GaugeMetricFamily(FRAMES_PER_SECOND, "A stylizing job's frames per second between its last two "
                                "progress readings.", labels=["namespace", "job"])
        for (namespace, name), (_, _, speed) in sorted(self.metrics._speed.items()):
            if speed is not None:
                fps.add_metric([namespace, name], speed)
        yield fps


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


LAG_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 3600, 14400)
WATCH_LABELS = ["namespace", "watch"]


class WatchMetrics:
    """Per VideoWatch (namespace, name): events received (queue messages, and stable videos found by
    listing), duplicates dropped (the job was already there), poison messages, jobs created, and
    the lag from upload to job creation. The upload trigger counts here; a scrape reads it."""

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

    def describe(self):
        return list(self.collect())

    def collect(self):
        received = CounterMetricFamily("stylebatch_watch_events_received", "Uploads a VideoWatch learned of, by "
                                       "source (queue messages, or stable videos found by listing).",
                                       labels=[*WATCH_LABELS, "source"])
        for (key, source), n in sorted(self.received.items()):
            received.add_metric([*key, source], n)
        yield received
        for name, help_, counter in (
                ("duplicates_dropped", "Uploads whose job was already there (duplicate or redelivered events).",
                 self.duplicates),
                ("poison_messages", "Queue messages moved to the poison queue.", self.poison),
                ("jobs_created", "StyleTransferJobs a VideoWatch created.", self.created)):
            family = CounterMetricFamily(f"stylebatch_watch_{name}", help_, labels=WATCH_LABELS)
            for key, n in sorted(counter.items()):
                family.add_metric(list(key), n)
            yield family
        lag = HistogramMetricFamily("stylebatch_watch_upload_to_job_seconds", "From the upload (event time or "
                                    "blob modification) to the job's creation.", labels=WATCH_LABELS)
        for key, buckets in sorted(self.lag_buckets.items()):
            cumulative = [(str(float(b)), n) for b, n in zip(LAG_BUCKETS, buckets)]
            lag.add_metric(list(key), [*cumulative, ("+Inf", self.lag_count[key])], self.lag_sum[key])
        yield lag
