"""kopf glue: one timer per active StyleTransferJob (running, or finished with a clean-up to come)
runs `reconcile`, which observes (the current child, its pods, its Events while it is short of pods, the
launcher's log), calls the pure `decide`, and carries out the action (delete a child, create one,
patch status, post an Event, delete the job); a watch
handler keeps the metrics' view of every job. The memo holds the API client (`kube`), the
operator's settings (`settings`) and the metrics (`metrics`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kopf
from stylebatch.progress import RankProgress, TrainProgress, latest_by_rank, latest_train_progress

from stylebatch_operator import decide as d, videowatch_handlers
from stylebatch_operator.kube import BAD_REQUEST, FORBIDDEN, INVALID, ApiError, Kube, unanswered
from stylebatch_operator.manifests import build_child
from stylebatch_operator.metrics import Metrics
from stylebatch_operator.names import (
    CHILD_KIND, GROUP, KIND, MPI_LABEL_ROLE, MPI_LAUNCHER_SUFFIX, PLURAL, STYLIZE, TRAIN, VERSION, is_controlled_by,
    pod_selector,
)
from stylebatch_operator.observe import (
    QUEUE_UNREAD, Stall, all_running, child_state, is_suspended, live_pods, newest_started_pod, queue_stall,
    wanted_pods,
)

from stylebatch_operator.settings import BUILT_IN, Settings
from stylebatch_operator.spec import effective_spec
from stylebatch_operator.states import ActionKind, ChildState, Phase
from stylebatch_operator.status import disruption_patch, progress_patch, training_patch, transition

# Enough of the launcher's log to hold every rank's latest progress line. (No limitBytes: the
# server would cut the newest lines, not the oldest.)
LOG_TAIL_MIN_LINES, LOG_TAIL_LINES_PER_RANK = 1000, 20
# The training pod logs a progress line every 10 s, and little else.
TRAIN_LOG_TAIL_LINES = 50


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
    return not Phase.of(stj["status"]).terminal or d.cleanup_due(stj) is not None


async def _reconcile_timer(namespace: str, name: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    if getattr(memo, "reads", None) is None:
        memo.reads = Reads()
    await reconcile(memo.kube, namespace, name, logger, settings=memo.settings, metrics=memo.metrics, reads=memo.reads)


async def _count(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    key = (body.metadata.namespace or "", body.metadata.name or "")
    if type == "DELETED":
        memo.metrics.forget_job(key)
        if getattr(memo, "reads", None) is not None:
            memo.reads.forget(key)
    else:
        memo.metrics.observe_job(key, dict(body.get("status") or {}))


async def reconcile(kube: Kube, namespace: str, name: str, logger: logging.Logger, now: datetime | None = None,
                    *, settings: Settings = BUILT_IN, metrics: Metrics | None = None,
                    reads: Reads | None = None) -> d.Action:
    """reads: what earlier reconciliations read of each job's child, so that the launcher's log,
    the pods of a child whose pods all run, and the Events of a child short of pods are read at
    most every settings.progress_read_seconds() (None: all at every reconciliation)."""
    # Read fresh rather than trust the watch's copy: a status patched a moment ago must count.
    stj = await kube.get(KIND, namespace, name)
    if stj is None or stj["metadata"].get("deletionTimestamp"):
        return d.Action(ActionKind.NOTHING)
    now = now or datetime.now(timezone.utc)
    status = stj.get("status") or {}
    child, pods, events = await _observe(kube, stj, now, settings.progress_read_seconds(), reads)
    queue = await _queue_stall(kube, stj, child, logger)

    patch: dict[str, Any] = {}
    stage, attempt, _ = d.current_child(stj) if child is not None else (None, 0, None)
    if (stage in (STYLIZE, TRAIN) and child_state(child).state == ChildState.RUNNING
            and not is_suspended(child)  # no log while it waits for Kueue
            and _progress_due(reads, (namespace, name), now, settings.progress_read_seconds())):
        if stage == STYLIZE:
            patch |= progress_patch(await _read_progress(kube, child, pods, logger), status, attempt, now) or {}
        else:
            pod, latest = await _read_training(kube, namespace, pods, logger)
            patch |= training_patch(latest, status, attempt, now, pod) or {}
        stj = {**stj, "status": {**status, **patch}}
    if child is not None and (seen := disruption_patch(child, pods, stj.get("status") or {}, now)):
        patch |= seen  # before the pod that shows it is gone: the MPIJob's failure then says nothing of it
        stj = {**stj, "status": {**(stj.get("status") or {}), **seen}}
    action = d.decide(stj, {child["metadata"]["name"]: child} if child else {}, now=now, pods=pods, events=events,
                      settings=settings, queue=queue)
    for kind, child_name in action.deletes:  # before the status says so: a failed delete is tried again
        if await _delete_own(kube, stj, kind, child_name, logger):
            logger.info("deleted %s %s", kind, child_name)
    if action.creates is not None and (refused := await _create_child(kube, stj, action, logger)) is not None:
        action = d.not_created(stj, action, refused, now, settings)
    if action.kind == ActionKind.EXPIRE:  # this very job, not one re-created with its name since it was read
        await kube.delete(KIND, namespace, name, uid=stj["metadata"]["uid"])  # its children go with it (owner refs)


    change = transition(stj, action, now)
    patch |= change.patch or {}
    if patch:
        await kube.patch_status(KIND, namespace, name, patch)
    if metrics is not None:
        metrics.observe_transition(stj, change.patch, child, now)
    if change.event is not None:
        type_, reason, message = change.event
        kopf.event(stj, type=type_, reason=reason, message=message)
        logger.info("%s: %s", reason, message)
    return action


def _progress_due(reads: Reads | None, key: tuple[str, str], now: datetime, every: float) -> bool:
    """Whether the job's progress is to be read now (and if so, notes that it is)."""
    if reads is not None:
        last = reads.progress.get(key)
        if last is not None and (now - last).total_seconds() < every:
            return False
        reads.progress[key] = now
    return True


@dataclass(frozen=True)
class Read:
    """What was read of a child (by uid) at `time`."""
    time: datetime
    uid: str
    items: list[dict[str, Any]]

    def fresh(self, uid: str, now: datetime, every: float) -> bool:
        return self.uid == uid and (now - self.time).total_seconds() < every


@dataclass
class Reads:
    """By job: when the launcher's log was last read, the child's pods as last read while all of
    them ran, its Events as last read while it had some pods but not all."""
    progress: dict[tuple[str, str], datetime] = field(default_factory=dict)
    pods: dict[tuple[str, str], Read] = field(default_factory=dict)
    events: dict[tuple[str, str], Read] = field(default_factory=dict)

    def forget(self, key: tuple[str, str]) -> None:
        for kept in (self.progress, self.pods, self.events):
            kept.pop(key, None)


async def _queue_stall(kube: Kube, stj: dict[str, Any], child: dict[str, Any] | None,
                       logger: logging.Logger) -> Stall | None:
    """Why Kueue cannot admit the job's child while it waits suspended in spec.queueName (its LocalQueue
    read: missing, or inactive); None when it can, or when nothing waits; QUEUE_UNREAD when the
    LocalQueue cannot be read (an API server's error; the operator's RBAC from an older chart): not judged."""
    queue = effective_spec(stj).get("queueName")
    if child is None or not queue or not is_suspended(child) or not is_controlled_by(child, stj):
        return None
    namespace = stj["metadata"]["namespace"]
    try:
        local_queue = await kube.get_local_queue(namespace, queue)
    except ApiError as exc:
        logger.debug("could not read LocalQueue %s: %s", queue, exc)
        return QUEUE_UNREAD
    return queue_stall(queue, namespace, local_queue)


async def _observe(kube: Kube, stj: dict[str, Any], now: datetime, every: float, reads: Reads | None
                   ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """The child the job is at (None if there is none yet), its pods unless it succeeded, and its
    own Events while it is running short of pods. The pods are read at every reconciliation, but
    while all of them run, at most every `every` seconds (the last ones read in between: a child
    that fails is read at once, as it says so itself). The Events are read at every reconciliation
    while the child has no pods (a Job that cannot create its pod, an MPIJob the MPI Operator
    refused or never saw), at most every `every` seconds while it has some but fewer than it runs
    (a replacement pod or a second worker that cannot be created), not at all once all its pods
    exist. An MPIJob's Events come with those of its launcher Job (a launcher pod that cannot be
    created)."""
    status = stj.get("status") or {}
    if not status.get("acceptedSpec") or Phase.of(status).terminal:
        return None, [], []
    stage, attempt, name = d.current_child(stj)
    namespace = stj["metadata"]["namespace"]
    child = await kube.get(CHILD_KIND[stage], namespace, name)
    if (child is None or not is_controlled_by(child, stj)  # another's: none of its pods, Events or logs are the job's
            or child_state(child).state == ChildState.SUCCEEDED or is_suspended(child)):
        return child, [], []
    key, uid = (namespace, stj["metadata"]["name"]), child["metadata"].get("uid", "")
    running = child_state(child).state == ChildState.RUNNING
    last = reads.pods.get(key) if reads is not None else None
    if running and last is not None and last.fresh(uid, now, every):
        return child, last.items, []
    pods = await kube.list("Pod", namespace, pod_selector(child))
    if reads is not None:
        if running and all_running(child, pods):
            reads.pods[key] = Read(now, uid, pods)
        else:
            reads.pods.pop(key, None)
    if not running or live_pods(pods) >= wanted_pods(child):
        return child, pods, []
    last = reads.events.get(key) if reads is not None else None
    if pods and last is not None and last.fresh(uid, now, every):
        return child, pods, last.items
    events = await kube.list("Event", namespace, {}, {"involvedObject.name": name, "involvedObject.uid": uid})
    if child["kind"] == CHILD_KIND[STYLIZE]:  # the MPI Operator runs the launcher as a Job of its own
        events += await kube.list("Event", namespace, {}, {"involvedObject.kind": "Job",
                                                           "involvedObject.name": f"{name}{MPI_LAUNCHER_SUFFIX}"})
    if reads is not None:
        reads.events[key] = Read(now, uid, events)
    return child, pods, events


async def _delete_own(kube: Kube, stj: dict[str, Any], kind: str, name: str, logger: logging.Logger) -> bool:
    """Deletes the job's child `name` if the job controls it; an object of that name the job does
    not control (an earlier job's child, orphaned; anyone's) is left alone. False if nothing of the
    job's was deleted."""
    found = await kube.get(kind, stj["metadata"]["namespace"], name)
    if found is None:
        return False
    if not is_controlled_by(found, stj):
        logger.warning("left %s %s alone: it is not this job's", kind, name)
        return False
    return await kube.delete(kind, stj["metadata"]["namespace"], name, uid=found["metadata"].get("uid"))


async def _create_child(kube: Kube, stj: dict[str, Any], action: d.Action, logger: logging.Logger) -> Stall | None:
    """Creates (or adopts) the action's child; None when it is there, else why it cannot be: the
    API server does not serve its kind, refuses it (422, 400, 403) or cannot serve the create now
    (429, 5xx: an admission webhook that does not answer), or another object (not the job's) holds
    its name."""
    stage, attempt = action.creates  # type: ignore[misc]
    manifest = build_child(stj, stage, attempt, action.deadline_seconds)
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    try:
        await kube.create(manifest)
        return None
    except ApiError as exc:
        if exc.status == 404 and kind == CHILD_KIND[STYLIZE]:  # no MPIJob CRD (the namespace exists: the job is in it)
            logger.warning("could not create %s %s: %s", kind, name, exc)
            return d.not_served(kind)
        if exc.status == INVALID:  # the same child would be refused again
            logger.warning("could not create %s %s: %s: %s", kind, name, exc, exc.detail)
            return d.refused(kind, name, exc.detail)
        if exc.status in (BAD_REQUEST, FORBIDDEN):  # a quota (waited on), a policy or webhook (fails the job)
            logger.warning("could not create %s %s: %s: %s", kind, name, exc, exc.detail)
            return d.create_refused(kind, name, exc.detail or str(exc))
        if unanswered(exc.status):  # a webhook down, throttling: shown, and created once it answers
            logger.warning("could not create %s %s: %s: %s", kind, name, exc, exc.detail)
            return d.create_unanswered(kind, name, exc.detail or str(exc))
        if exc.status != 409:
            raise kopf.TemporaryError(f"could not create {kind} {name}: {exc}", delay=30) from None
    # It exists: made by this operator before a restart (or by an earlier attempt at this step).
    existing = await kube.get(kind, manifest["metadata"]["namespace"], name)
    if existing is None:  # deleted in between: created at the next reconciliation
        raise kopf.TemporaryError(f"{kind} {name} was there and is gone; creating it again", delay=1)
    if is_controlled_by(existing, stj):
        logger.info("adopted the existing %s %s", kind, name)
        return None
    return d.name_taken(existing)


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


async def _read_training(kube: Kube, namespace: str, pods: list[dict[str, Any]],
                         logger: logging.Logger) -> tuple[str, TrainProgress | None]:
    """The training Job's newest started pod, and the latest progress line of its log (None before
    it has one)."""
    pod = newest_started_pod(pods)
    if pod is None:
        return "", None
    try:
        text = await kube.pod_log(namespace, pod, TRAIN, TRAIN_LOG_TAIL_LINES)
    except ApiError as exc:
        logger.debug("no training progress yet: %s", exc)
        return pod, None
    return pod, latest_train_progress(text.splitlines())
