"""kopf glue: one timer per active StyleTransferJob (running, or finished with a clean-up to come)
runs `reconcile`, which observes (the current child, its pods, its Events while it is short of pods, the
launcher's log), calls the pure `decide`, and carries out the action (delete a child, create one,
patch status, post an Event, delete the job); a watch
handler keeps the metrics' view of every job. The memo holds the API client (`kube`), the
operator's settings (`settings`) and the metrics (`metrics`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import kopf
from stylebatch.progress import RankProgress, latest_by_rank

from stylebatch_operator import decide as d, videowatch_handlers
from stylebatch_operator.kube import ApiError, Kube
from stylebatch_operator.manifests import build_child
from stylebatch_operator.metrics import Metrics
from stylebatch_operator.names import (
    CHILD_KIND, GROUP, KIND, LABEL_ATTEMPT, LABEL_JOB, LABEL_STAGE, MPI_LABEL_ROLE, PLURAL, STYLIZE, VERSION,
    is_controlled_by,
)
from stylebatch_operator.observe import RUNNING, SUCCEEDED, child_state, is_suspended, live_pods, wanted_pods

from stylebatch_operator.settings import BUILT_IN, Settings
from stylebatch_operator.status import event_for, progress_patch, status_patch

# Enough of the launcher's log to hold every rank's latest progress line. (No limitBytes: the
# server would cut the newest lines, not the oldest.)
LOG_TAIL_MIN_LINES, LOG_TAIL_LINES_PER_RANK = 1000, 20


def build_registry(*, interval: float) -> kopf.OperatorRegistry:
    """The operator's handlers; `interval`: seconds between two reconciliations of a job (progress
    is read as often)."""
    registry = kopf.OperatorRegistry()
    kopf.on.startup(registry=registry)(_connect)
    kopf.on.login(registry=registry)(_login)
    kopf.on.cleanup(registry=registry)(_disconnect)
    kopf.timer(GROUP, VERSION, PLURAL, id="reconcile", interval=interval, when=_active,
               registry=registry)(_reconcile_timer)
    kopf.on.event(GROUP, VERSION, PLURAL, id="metrics", registry=registry)(_count)
    videowatch_handlers.register(registry, interval=interval)
    return registry


async def _connect(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "kube", None) is None:
        memo.kube = await Kube.from_environment()
        memo.own_kube = True
    memo.started = True  # /healthz answers from now on


async def _login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf talks to the same server, with the same credentials, as the operator's own client."""
    await _connect(memo)
    return await memo.kube.connection_info()


async def _disconnect(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "own_kube", False):
        await memo.kube.close()


def _active(body: kopf.Body, **_: Any) -> bool:
    """Running, or finished with a clean-up still to come."""
    stj = {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}
    return (stj["status"].get("phase") not in d.TERMINAL_PHASES) or d.cleanup_due(stj) is not None


async def _reconcile_timer(namespace: str, name: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    if getattr(memo, "progress_reads", None) is None:
        memo.progress_reads = {}
    if getattr(memo, "event_reads", None) is None:
        memo.event_reads = {}
    await reconcile(memo.kube, namespace, name, logger, settings=memo.settings, metrics=memo.metrics,
                    progress_reads=memo.progress_reads, event_reads=memo.event_reads)


async def _count(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    key = (body.metadata.namespace or "", body.metadata.name or "")
    if type == "DELETED":
        memo.metrics.forget_job(key)
        (getattr(memo, "progress_reads", None) or {}).pop(key, None)
        (getattr(memo, "event_reads", None) or {}).pop(key, None)
    else:
        memo.metrics.observe_job(key, dict(body.get("status") or {}))


async def reconcile(kube: Kube, namespace: str, name: str, logger: logging.Logger, now: datetime | None = None,
                    *, settings: Settings = BUILT_IN, metrics: Metrics | None = None,
                    progress_reads: dict[tuple[str, str], datetime] | None = None,
                    event_reads: dict[tuple[str, str], EventRead] | None = None) -> d.Action:
    """progress_reads: when each job's launcher log was last read, so that it is read at most every
    settings.progress_read_seconds() (None: at every reconciliation); event_reads: each job's
    child's Events as last read, so that they are read as rarely while the child has pods (None:
    at every reconciliation)."""
    # Read fresh rather than trust the watch's copy: a status patched a moment ago must count.
    stj = await kube.get(KIND, namespace, name)
    if stj is None or stj["metadata"].get("deletionTimestamp"):
        return d.Action(d.NOTHING)
    now = now or datetime.now(timezone.utc)
    status = stj.get("status") or {}
    child, pods, events = await _observe(kube, stj, now, settings.progress_read_seconds(), event_reads)

    patch: dict[str, Any] = {}
    if (child is not None and child["kind"] == CHILD_KIND[STYLIZE] and child_state(child).state == RUNNING
            and not is_suspended(child)  # no launcher log while it waits for Kueue
            and _progress_due(progress_reads, (namespace, name), now, settings.progress_read_seconds())):
        latest = await _read_progress(kube, child, pods, logger)
        patch |= progress_patch(latest, status, d.current_child(stj)[1], now) or {}
        stj = {**stj, "status": {**status, **patch}}
    action = d.decide(stj, {child["metadata"]["name"]: child} if child else {}, now=now, pods=pods, events=events,
                      settings=settings)
    for kind, child_name in action.deletes:  # before the status says so: a failed delete is tried again
        if await kube.delete(kind, namespace, child_name):
            logger.info("deleted %s %s", kind, child_name)
    if action.creates is not None and not await _create_child(kube, stj, action, logger):
        action = d.kind_not_served(stj, action, now, settings)
    if action.kind == d.EXPIRE:
        await kube.delete(KIND, namespace, name)  # Kubernetes deletes its children (owner references)


    patch |= status_patch(stj, action, now) or {}
    if patch:
        await kube.patch_status(KIND, namespace, name, patch)
    if metrics is not None:
        metrics.observe_action(action, stj, child, now)
    event = event_for(action)
    if event is not None:
        type_, reason, message = event
        kopf.event(stj, type=type_, reason=reason, message=message)
        logger.info("%s: %s", reason, message)
    return action


def _progress_due(reads: dict[tuple[str, str], datetime] | None, key: tuple[str, str], now: datetime,
                  every: float) -> bool:
    """Whether the job's progress is to be read now (and if so, notes that it is)."""
    if reads is not None:
        last = reads.get(key)
        if last is not None and (now - last).total_seconds() < every:
            return False
        reads[key] = now
    return True


@dataclass(frozen=True)
class EventRead:
    """A child's Events as read at `time` (the child by uid)."""
    time: datetime
    uid: str
    events: list[dict[str, Any]]


async def _observe(kube: Kube, stj: dict[str, Any], now: datetime, every: float,
                   event_reads: dict[tuple[str, str], EventRead] | None
                   ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """The child the job is at (None if there is none yet), its pods unless it succeeded, and its
    own Events while it is running short of pods: at every reconciliation while it has none (a Job
    that cannot create its pod, an MPIJob the MPI Operator refused or never saw), at most every
    `every` seconds while it has some but fewer than it runs (a replacement pod or a second worker
    that cannot be created); the last ones read in between. None once all its pods exist."""
    status = stj.get("status") or {}
    if not status.get("acceptedSpec") or status.get("phase") in d.TERMINAL_PHASES:
        return None, [], []
    stage, attempt, name = d.current_child(stj)
    namespace = stj["metadata"]["namespace"]
    child = await kube.get(CHILD_KIND[stage], namespace, name)
    if child is None or child_state(child).state == SUCCEEDED or is_suspended(child):
        return child, [], []
    pods = await kube.list("Pod", namespace, _pod_labels(child))
    if child_state(child).state != RUNNING or live_pods(pods) >= wanted_pods(child):
        return child, pods, []
    key, uid = (namespace, stj["metadata"]["name"]), child["metadata"].get("uid", "")
    last = (event_reads or {}).get(key)
    if pods and last is not None and last.uid == uid and (now - last.time).total_seconds() < every:
        return child, pods, last.events
    events = await kube.list("Event", namespace, {}, {"involvedObject.name": name, "involvedObject.uid": uid})
    if event_reads is not None:
        event_reads[key] = EventRead(now, uid, events)
    return child, pods, events


async def _create_child(kube: Kube, stj: dict[str, Any], action: d.Action, logger: logging.Logger) -> bool:
    """Creates (or adopts) the action's child; False when the API server does not serve its kind."""
    stage, attempt = action.creates  # type: ignore[misc]
    manifest = build_child(stj, stage, attempt, action.deadline_seconds)
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    try:
        await kube.create(manifest)
        return True
    except ApiError as exc:
        if exc.status == 404 and kind == CHILD_KIND[STYLIZE]:  # no MPIJob CRD (the namespace exists: the job is in it)
            logger.warning("could not create %s %s: %s", kind, name, exc)
            return False
        if exc.status != 409:
            raise kopf.TemporaryError(f"could not create {kind} {name}: {exc}", delay=30) from None
    # It exists: made by this operator before a restart (or by an earlier attempt at this step).
    existing = await kube.get(kind, manifest["metadata"]["namespace"], name)
    if existing is not None and is_controlled_by(existing, stj):
        logger.info("adopted the existing %s %s", kind, name)
        return True
    raise kopf.TemporaryError(f"{kind} {name} exists but does not belong to this job; waiting for it to go", delay=30)


async def _read_progress(kube: Kube, mpijob: dict[str, Any], pods: list[dict[str, Any]],
                         logger: logging.Logger) -> dict[int, RankProgress] | None:
    """Every rank prints progress lines; mpiexec gathers them in the launcher pod's log. None when
    the launcher has not started."""
    namespace = mpijob["metadata"]["namespace"]
    started = [p for p in pods if (p["metadata"].get("labels") or {}).get(MPI_LABEL_ROLE) == "launcher"
               and (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")]
    if not started:
        return None
    launcher = max(started, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    spec = mpijob["spec"]
    ranks = int(spec.get("slotsPerWorker") or 1) * int(spec["mpiReplicaSpecs"]["Worker"].get("replicas") or 1)
    tail = max(LOG_TAIL_MIN_LINES, LOG_TAIL_LINES_PER_RANK * ranks)
    try:
        text = await kube.pod_log(namespace, launcher["metadata"]["name"], "launcher", tail)
    except ApiError as exc:
        logger.debug("no progress from the launcher yet: %s", exc)
        return {}
    return latest_by_rank(text.splitlines())


def _pod_labels(child: dict[str, Any]) -> dict[str, str]:
    """The labels the child's pod templates give its pods."""
    labels = child["metadata"].get("labels") or {}
    return {key: labels.get(key, "") for key in (LABEL_JOB, LABEL_STAGE, LABEL_ATTEMPT)}
