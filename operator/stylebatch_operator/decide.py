"""What to do next, from a StyleTransferJob and the children observed for it. No I/O.

Level-triggered: the answer depends only on the job's status (what the operator recorded), the
current child, its pods and Events, and the time, so an operator restarted at any point, or one
that sees the same state twice, makes the same decision again; creating a child that already exists
just adopts it, deleting one that is gone is a no-op. Timers (the stall grace period, the progress
timeout, clean-up) run from times the status records (a condition's lastTransitionTime,
progress.advanceTime, completionTime), never from the operator's memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from stylebatch_operator.names import (
    CHILD_KIND, MPI_API_VERSION, POSTPROCESS, PREPROCESS, STAGES, STYLIZE, TRAIN, child_name, is_controlled_by,
)
from stylebatch_operator.observe import (
    NO_MPI_OPERATOR, QUEUE_STALLS, QUEUE_UNREAD, UNKNOWN_CREATE_FAILURE, Stall, child_state, create_failure,
    disruption, failed_pod_detail, is_suspended, newest_started_pod, own_limit_eviction, stall, user_error, worker_lost_before_launch,
)
from stylebatch_operator.settings import BUILT_IN, DEFAULT_PROGRESS_TIMEOUT, Settings
from stylebatch_operator.states import ActionKind, ChildState, ConditionType, Phase
from stylebatch_operator.spec import effective_spec, effective_spec_mismatch, from_defaults, resolve, spec_problems
from stylebatch_operator.uris import strip_secrets

PROGRESS_STALLED = "ProgressStalled"  # stylize (training) went without a new frame (step) for the progress timeout
# The status field each timed stage's progress is in (its advanceTime runs the timeout), and its unit.
PROGRESS_OF_STAGE = {STYLIZE: ("progress", "frame stylized"), TRAIN: ("training", "training step")}
INVALID_INPUT = "InvalidInput"  # the worker exited with its user-error code: Failed at once, no retry
DISRUPTED = "Disrupted"  # a pod was evicted or lost its node: retried without spending spec.retries
# A worker pod of the stylize MPIJob ended before the ranks reported frames: that attempt can never finish
WORKER_LOST = "WorkerLost"
# A child's name is held by an object this job does not control (the child of an earlier job of the
# same name, orphaned or not yet garbage-collected): never read, adopted or deleted as the job's own.
CHILD_NAME_TAKEN = "ChildNameTaken"
# The API server refused to create a child as specified (422 Invalid): a spec the CRD let through
# that Kubernetes will not run (resource requests over limits, a node selector value no label can hold).
CHILD_INVALID = "ChildInvalid"
# The API server would not create a child (400, 403): a quota (waited on), a policy, a webhook, RBAC;
# or could not (429, 5xx: a webhook that did not answer, throttling): waited on
CREATE_REFUSED = "ChildRefused"
UNANSWERED_CREATE = "the API server could not serve the request now"
# status.effectiveSpec, which the children are built from, contradicts the job's spec in a field the
# admission policy guards (image, credentials, GPUs): someone other than the operator wrote it.
EFFECTIVE_SPEC_MISMATCH = "EffectiveSpecMismatch"
# A child made suspended for Kueue (spec.queueName), or suspended again, waits for admission: the
# reason of the Queued, Admitted and Running conditions meanwhile.
WAITING_FOR_ADMISSION = "WaitingForAdmission"


# What a retried stage does not do again.
RESUMES = {STYLIZE: " (only the missing parts are stylized again)",
           TRAIN: " (the training resumes from its last checkpoint)"}


@dataclass(frozen=True)
class Failure:
    """A failed child, as status.failure shows it."""
    stage: str
    attempt: int
    child: str  # Kind/name
    reason: str
    message: str


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    stage: str | None = None  # the stage of the child to create, or the one that failed
    attempt: int = 0
    reason: str = ""  # CamelCase, for the Event and the condition
    message: str = ""
    failure: Failure | None = None
    deadline_seconds: int | None = None  # time left for a child to create
    spec: dict[str, Any] | None = None  # ActionKind.START: the effective spec the job is accepted with
    counted: bool = True  # ActionKind.RETRY: spends one of spec.retries (a disruption does not)
    permanent: bool = False  # ActionKind.STALL: waiting cannot help (the grace period runs)
    deletes: tuple[tuple[str, str], ...] = ()  # (kind, name) of children to delete first: no pod outlives it

    @property
    def creates(self) -> tuple[str, int] | None:
        """(stage, attempt) of the child this action creates, if any."""
        if self.kind.creates_child and self.stage is not None:
            return self.stage, self.attempt
        return None

    @property
    def records(self) -> tuple[str, int] | None:
        """(stage, attempt) of the child the status is to show as current, if it changes."""
        if self.kind == ActionKind.ADOPT and self.stage is not None:
            return self.stage, self.attempt
        return self.creates


def decide(stj: dict[str, Any], children: dict[str, dict[str, Any]], *, now: datetime,
           pods: list[dict[str, Any]] = (), events: list[dict[str, Any]] = (),
           settings: Settings = BUILT_IN, queue: Stall | None = None) -> Action:
    """children: observed child objects by name; only the current stage's current attempt matters.
    pods: the current child's pods, which say more about a failure (or a start that does not
    happen) than the child does; events: the current child's own Events (FailedCreate, the MPI
    Operator's ValidationError). settings: the operator's defaults (read when the job is accepted),
    the stall grace period and the progress timeout. queue: why Kueue cannot admit the current
    child while it waits in spec.queueName (observe.queue_stall), None when it can."""
    status = stj.get("status") or {}
    if Phase.of(status).terminal:
        return _cleanup(stj, now)
    if not status.get("acceptedSpec"):
        problems = spec_problems(stj, settings)
        if problems:
            return Action(ActionKind.FAIL, reason="InvalidSpec", message="; ".join(problems))
        own = stj.get("spec") or {}
        spec = resolve(own, settings)
        return Action(ActionKind.START, reason="Accepted", message=_accepted_message(spec, from_defaults(own, settings)), spec=spec)

    stage, attempt, name = current_child(stj)
    left = seconds_left(stj, now)
    child = children.get(name)
    recorded = (status.get("children") or {}).get(stage) == name
    mismatch = effective_spec_mismatch(stj)
    if mismatch:  # nothing more is built from it; a child built from it goes
        live = (((CHILD_KIND[stage], name),) if child is not None and is_controlled_by(child, stj)
                and child_state(child).state == ChildState.RUNNING else ())
        return Action(ActionKind.FAIL, stage, attempt, EFFECTIVE_SPEC_MISMATCH,
                      f"{'; '.join(mismatch)}: the status was not written by the operator; no child is made from it",
                      deletes=live)
    if child is not None and not is_controlled_by(child, stj):
        if left <= 0:
            return _deadline_failure(stage, None)
        found = name_taken(child)
        return _stall_action(stj, stage, attempt, found, (), now, settings) or Action(ActionKind.WAIT, stage, attempt)
    if child is None:
        if left <= 0:
            return _deadline_failure(stage, None)
        return _create(stage, attempt, name, recorded, left)
    state = child_state(child)
    if state.state == ChildState.FAILED:
        invalid = user_error(list(pods))
        if invalid is not None:  # the worker said the input is wrong: another attempt would say so again
            failure = Failure(stage, attempt, f"{CHILD_KIND[stage]}/{name}", INVALID_INPUT, invalid)
            return Action(ActionKind.FAIL, stage, attempt, INVALID_INPUT,
                          f"{CHILD_KIND[stage]} {name} failed: {invalid} (not retried)", failure=failure)
        # a pod that outgrew its own scratch or disk limit: counted, whatever else happened, and said
        own_limit = own_limit_eviction(child, list(pods))
        failure = Failure(stage, attempt, f"{CHILD_KIND[stage]}/{name}", state.reason,
                          "; ".join(m for m in (state.message, own_limit or failed_pod_detail(list(pods))) if m))
        if state.reason == "DeadlineExceeded" or left <= 0:
            return _deadline_failure(stage, failure)
        disrupted = None if own_limit else disruption(child, list(pods)) or seen_disruption(stj, child)
        if disrupted is not None:  # not the job's fault: the input would have been fine
            return _retry(stj, failure, left, DISRUPTED, f"disrupted ({disrupted}), not counted against spec.retries",
                          counted=False)
        return _retry_or_fail(stj, failure, left)
    if state.state == ChildState.SUCCEEDED and stage == POSTPROCESS:
        return Action(ActionKind.SUCCEED, reason="Succeeded", message=f"wrote {strip_secrets(effective_spec(stj)['output'])}")
    live = ((CHILD_KIND[stage], name),) if state.state == ChildState.RUNNING else ()
    if left <= 0:
        return _deadline_failure(stage, None, live)
    if state.state == ChildState.RUNNING and not is_suspended(child):  # a child waiting for Kueue is not stuck
        stuck = _stuck(stj, stage, attempt, child, list(pods), list(events), now, settings)
        if stuck is not None:
            return stuck
    if state.state == ChildState.SUCCEEDED:
        following = STAGES[STAGES.index(stage) + 1]
        return Action(ActionKind.ADVANCE, following, 1, f"{stage.capitalize()}Succeeded",
                      f"{CHILD_KIND[stage]} {name} succeeded; created {CHILD_KIND[following]} "
                      f"{child_name(stj['metadata']['name'], following, 1)}", deadline_seconds=left)
    if not recorded:  # made just before a restart, before the status said so
        return Action(ActionKind.ADOPT, stage, attempt, f"{stage.capitalize()}Started",
                      f"adopted the existing {CHILD_KIND[stage]} {name}")
    admission = _admission(stj, stage, attempt, child, now)
    if state.state == ChildState.RUNNING and is_suspended(child) and admission is None:
        # (queued first: the wait is recorded, and the deadline stops, however long the queue
        # cannot admit it; a stopped ClusterQueue's wait ran the deadline out behind its stall)
        waiting = _queue_action(stj, stage, attempt, queue, live, now, settings)
        if waiting is not None:
            return waiting
    return admission or Action(ActionKind.WAIT, stage, attempt)


def seen_disruption(stj: dict[str, Any], child: dict[str, Any]) -> str | None:
    """The disruption status.disruption records of this very child (its kind, name and uid: not an
    earlier one of the same name), seen on one of its pods while it ran (observe.disruption_seen), or
    None. What tells a failed MPIJob's disruption once the pod is gone and the MPIJob does not say it;
    a pod deleted between two looks (the operator reads the pods every 10 s or so, or every progress
    read while all of them run) was never seen, and its MPIJob's failure is counted."""
    seen = (stj.get("status") or {}).get("disruption") or {}
    meta = child.get("metadata") or {}
    if seen.get("child") != f"{child.get('kind')}/{meta.get('name')}" or seen.get("uid") != meta.get("uid"):
        return None
    return f"{seen.get('message') or 'a pod was disrupted'}, seen while it ran"


def _queue_action(stj: dict[str, Any], stage: str, attempt: int, found: Stall | None,
                  live: tuple[tuple[str, str], ...], now: datetime, settings: Settings) -> Action | None:
    """A child waiting for Kueue in a LocalQueue that cannot admit it: Stalled (failing after the
    grace period when the queue does not exist); UNSTALL once it can (the queue made meanwhile);
    None (as it is) while the queue cannot be read (QUEUE_UNREAD)."""
    if found is QUEUE_UNREAD:
        return None
    if found is not None:
        return _stall_action(stj, stage, attempt, found, live, now, settings)
    reported = _stalled_condition(stj)
    if reported is not None and reported.get("reason") in QUEUE_STALLS:
        return Action(ActionKind.UNSTALL, stage, attempt, "Unstalled",
                      f"{CHILD_KIND[stage]} {child_name(stj['metadata']['name'], stage, attempt)} can be admitted")
    return None


def _admission(stj: dict[str, Any], stage: str, attempt: int, child: dict[str, Any], now: datetime) -> Action | None:
    """QUEUE when the running child is suspended (waiting for Kueue) and the status does not say so
    yet; ActionKind.ADMIT when it was waiting and runs now."""
    status = stj["status"]
    kind_name = f"{CHILD_KIND[stage]} {child['metadata']['name']}"
    queue = effective_spec(stj).get("queueName")
    where = f" in LocalQueue {queue}" if queue else ""
    since = parse_time(status.get("queuedSince"))
    if is_suspended(child) and since is None:
        return Action(ActionKind.QUEUE, stage, attempt, "Queued", f"{kind_name} waits for Kueue to admit it{where}; the "
                      "deadline does not run meanwhile")
    running = next((c for c in status.get("conditions") or [] if c.get("type") == ConditionType.RUNNING), {})
    created_waiting = running.get("status") == "False" and running.get("reason") == WAITING_FOR_ADMISSION
    if not is_suspended(child) and (since is not None or created_waiting):  # (admitted before it was seen queued)
        waited = max(0, int((now - (since or now)).total_seconds()))
        return Action(ActionKind.ADMIT, stage, attempt, "Admitted", f"Kueue admitted {kind_name}{where} after {waited}s")
    return None


def _cleanup(stj: dict[str, Any], now: datetime) -> Action:
    """A finished job's children, then the job itself, go when spec.cleanup says (measured from
    status.completionTime); ActionKind.NOTHING until then, and after."""
    due = cleanup_due(stj)
    if due is None or now < due[1]:
        return Action(ActionKind.NOTHING)
    if due[0] == ActionKind.EXPIRE:
        return Action(ActionKind.EXPIRE, reason="Expired", message="deleted after spec.cleanup.jobAfterFinishedSeconds")
    deletes = all_children(stj)
    return Action(ActionKind.CLEAN_UP, reason="ChildrenDeleted", message="deleted the finished children "
                  + ", ".join(f"{kind} {name}" for kind, name in deletes), deletes=deletes)


def cleanup_due(stj: dict[str, Any]) -> tuple[str, datetime] | None:
    """(ActionKind.CLEAN_UP or ActionKind.EXPIRE, when) of the next clean-up a finished job waits for; None when there
    is nothing (more) to do. The operator keeps looking at the job until then."""
    status = stj.get("status") or {}
    finished = parse_time(status.get("completionTime"))
    if not Phase.of(status).terminal or finished is None:
        return None
    if not status.get("acceptedSpec"):  # failed when accepted (InvalidSpec): no children, its own TTL only
        keep = ((stj.get("spec") or {}).get("cleanup") or {}).get("jobAfterFinishedSeconds")
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
            return None
        return ActionKind.EXPIRE, finished + timedelta(seconds=keep)
    cleanup = effective_spec(stj).get("cleanup") or {}
    field = "childrenAfterSucceededSeconds" if status["phase"] == Phase.SUCCEEDED else "childrenAfterFailedSeconds"
    if cleanup.get(field) is not None and not status.get("childrenDeleted") and all_children(stj):
        return ActionKind.CLEAN_UP, finished + timedelta(seconds=int(cleanup[field]))
    if cleanup.get("jobAfterFinishedSeconds") is not None:
        return ActionKind.EXPIRE, finished + timedelta(seconds=int(cleanup["jobAfterFinishedSeconds"]))
    return None


def all_children(stj: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(kind, name) of every child the job made: each attempt of each stage it reached."""
    attempts = (stj.get("status") or {}).get("attempts") or {}
    return tuple((CHILD_KIND[stage], child_name(stj["metadata"]["name"], stage, n))
                 for stage in STAGES for n in range(1, int(attempts.get(stage) or 0) + 1))


def _create(stage: str, attempt: int, name: str, recorded: bool, left: int) -> Action:
    kind_name = f"{CHILD_KIND[stage]} {name}"
    if recorded:  # it was there: someone deleted it
        return Action(ActionKind.CREATE, stage, attempt, "ChildMissing", f"{kind_name} is gone; creating it again",
                      deadline_seconds=left)
    return Action(ActionKind.CREATE, stage, attempt, f"{stage.capitalize()}Started", f"created {kind_name}",
                  deadline_seconds=left)


def _retry_or_fail(stj: dict[str, Any], failure: Failure, left: int) -> Action:
    used = int((stj.get("status") or {}).get("retries") or 0)
    budget = int(effective_spec(stj)["retries"])
    if used >= budget:
        return Action(ActionKind.FAIL, failure.stage, failure.attempt, "RetriesExhausted",
                      f"{failed_text(failure)}; no retries left (spec.retries: {budget})", failure=failure)
    return _retry(stj, failure, left, "Retrying", f"retry {used + 1} of {budget}")


def _retry(stj: dict[str, Any], failure: Failure, left: int, reason: str, which: str, *,
           counted: bool = True) -> Action:
    attempt = failure.attempt + 1
    resume = RESUMES.get(failure.stage, "")
    return Action(ActionKind.RETRY, failure.stage, attempt, reason,
                  f"{failed_text(failure)}; {which}: created {CHILD_KIND[failure.stage]} "
                  f"{child_name(stj['metadata']['name'], failure.stage, attempt)}{resume}",
                  failure=failure, deadline_seconds=left, counted=counted)


def failed_text(failure: Failure) -> str:
    """'<Kind> <name> failed: <reason>: <message>', as a retry's or a failure's message begins."""
    return f"{CHILD_KIND[failure.stage]} {failure.child.split('/', 1)[1]} failed: {_reason_text(failure)}"


def first_stage(spec: dict[str, Any]) -> str:
    """train when the (effective) spec asks for a trained style, else preprocess."""
    return TRAIN if spec.get("train") is not None else PREPROCESS


def current_child(stj: dict[str, Any]) -> tuple[str, int, str]:
    """(stage, attempt, name) of the child the job is at, as its status records it."""
    status = stj.get("status") or {}
    stage = Phase.of(status).stage or first_stage(effective_spec(stj))
    attempt = (status.get("attempts") or {}).get(stage) or 1
    return stage, attempt, child_name(stj["metadata"]["name"], stage, attempt)


def seconds_left(stj: dict[str, Any], now: datetime) -> int:
    """Seconds until the job's deadline: spec.activeDeadlineSeconds from status.startTime, plus the
    time its children waited for Kueue to admit them (status.queuedSeconds, and the current wait
    since status.queuedSince, which so does not shorten it)."""
    return int((deadline(stj, now) - now).total_seconds())


def deadline(stj: dict[str, Any], now: datetime) -> datetime:
    """When the job runs out of time, as of `now`."""
    status = stj.get("status") or {}
    start = parse_time(status.get("startTime")) or now
    queued = timedelta(seconds=int(status.get("queuedSeconds") or 0))
    since = parse_time(status.get("queuedSince"))
    if since is not None:
        queued += max(now - since, timedelta(0))
    return start + queued + timedelta(seconds=int(effective_spec(stj)["activeDeadlineSeconds"]))


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _deadline_failure(stage: str, failure: Failure | None, deletes: tuple[tuple[str, str], ...] = ()) -> Action:
    detail = f" ({_reason_text(failure)})" if failure else ""
    return Action(ActionKind.FAIL, stage, 0, "DeadlineExceeded",
                  f"spec.activeDeadlineSeconds passed during {stage}{detail}", failure=failure, deletes=deletes)


def _stuck(stj: dict[str, Any], stage: str, attempt: int, child: dict[str, Any], pods: list[dict[str, Any]],
           events: list[dict[str, Any]], now: datetime, settings: Settings) -> Action | None:
    """A running child that does not get going: its pods cannot start (Stalled, and after the grace
    period Failed when waiting cannot help), or stylize (a training) stopped advancing (the attempt is
    retried)."""
    name = child["metadata"]["name"]
    kind_name = f"{CHILD_KIND[stage]} {name}"
    live = ((CHILD_KIND[stage], name),)
    status = stj.get("status") or {}
    created = parse_time(child["metadata"].get("creationTimestamp")) or now
    found = stall(child, pods, events, (now - created).total_seconds(), settings.stall_grace_seconds)
    reported = _stalled_condition(stj)
    if found is not None:
        return _stall_action(stj, stage, attempt, found, live, now, settings)
    if reported is not None:
        return Action(ActionKind.UNSTALL, stage, attempt, "Unstalled", f"{kind_name} is running")
    ranks_started = (status.get(PROGRESS_OF_STAGE[STYLIZE][0]) or {}).get("attempt") == attempt
    if stage == STYLIZE and (lost := worker_lost_before_launch(pods, ranks_started)) is not None:
        failure = Failure(stage, attempt, f"{CHILD_KIND[stage]}/{name}", WORKER_LOST, lost)
        disrupted = disruption(child, pods)
        action = (_retry(stj, failure, seconds_left(stj, now), DISRUPTED,
                         f"disrupted ({disrupted}), not counted against spec.retries", counted=False)
                  if disrupted is not None else _retry_or_fail(stj, failure, seconds_left(stj, now)))
        return replace(action, deletes=live)
    if stage not in PROGRESS_OF_STAGE or status.get("queuedSince"):  # (admitted again: said first, the clock restarts)
        return None
    field, unit = PROGRESS_OF_STAGE[stage]
    progress = status.get(field) or {}
    # (a job accepted before its effective spec recorded the default: the built-in one)
    timeout = float(effective_spec(stj).get("progressTimeoutSeconds") or DEFAULT_PROGRESS_TIMEOUT)
    timeout = max(timeout, 3 * settings.progress_read_seconds())  # several reads, however rarely the log is read
    advanced = parse_time(progress.get("advanceTime"))
    admitted = _admitted_since(stj)  # Kueue took the attempt's pods away meanwhile: no frames while it was queued
    if admitted is not None and advanced is not None:
        advanced = max(advanced, admitted)
    if progress.get("attempt") != attempt or advanced is None or (now - advanced).total_seconds() < timeout:
        return None
    if stage == TRAIN and newest_started_pod(pods) != progress.get("pod"):
        return None  # a replacement pod starts (and resumes from the checkpoint): its own first line counts
    failure = Failure(stage, attempt, f"{CHILD_KIND[stage]}/{name}", PROGRESS_STALLED,
                      f"no {unit} for {timeout:.0f}s (at {progress.get('summary') or 'no progress yet'})")
    action = _retry_or_fail(stj, failure, seconds_left(stj, now))
    return replace(action, deletes=live)


def _admitted_since(stj: dict[str, Any]) -> datetime | None:
    """When Kueue last admitted the job's current child (its Admitted condition turned True), if it did."""
    admitted = next((c for c in (stj.get("status") or {}).get("conditions") or []
                     if c.get("type") == ConditionType.ADMITTED and c.get("status") == "True"), None)
    return parse_time(admitted.get("lastTransitionTime")) if admitted else None


def _stalled_condition(stj: dict[str, Any]) -> dict[str, Any] | None:
    """The Stalled condition when it is True."""
    reported = next((c for c in (stj.get("status") or {}).get("conditions") or []
                     if c.get("type") == ConditionType.STALLED), None)
    return reported if reported is not None and reported.get("status") == "True" else None


def _stall_action(stj: dict[str, Any], stage: str, attempt: int, found: Stall, live: tuple[tuple[str, str], ...],
                  now: datetime, settings: Settings) -> Action | None:
    """STALL when the status does not show `found` yet; FAIL (deleting `live`) once the child,
    shown stalled, has been stalled by permanent causes for the grace period: since the status
    first showed one (status.permanentStallSince; causes that alternate do not restart it), or
    since the child shows it began; None while there is nothing new to say."""
    name = child_name(stj["metadata"]["name"], stage, attempt)
    kind_name = f"{CHILD_KIND[stage]} {name}"
    reported = _stalled_condition(stj)
    since = None
    if reported is not None and found.permanent:
        since = parse_time((stj.get("status") or {}).get("permanentStallSince"))
        if since is None and reported.get("reason") == found.reason:  # shown before permanentStallSince existed
            since = parse_time(reported.get("lastTransitionTime"))
    if found.elapsed is not None and since is not None:  # shown first, however late it was first seen
        since = min(since, now - timedelta(seconds=found.elapsed))
    if found.permanent and since is not None and (now - since).total_seconds() >= settings.stall_grace_seconds:
        failure = Failure(stage, attempt, f"{CHILD_KIND[stage]}/{name}", found.reason, found.message)
        return Action(ActionKind.FAIL, stage, attempt, found.reason, f"{kind_name} cannot start: {found.message}",
                      failure=failure, deletes=live)
    message = _stall_message(kind_name, found, settings)
    if reported is None or (reported.get("reason"), reported.get("message")) != (found.reason, message):
        return Action(ActionKind.STALL, stage, attempt, found.reason, message, permanent=found.permanent)
    return None


def kind_not_served(stj: dict[str, Any], action: Action, now: datetime, settings: Settings = BUILT_IN) -> Action:
    """What to do instead of `action` when the API server refused to create its child because it
    does not serve the child's kind (404: no MPI Operator, hence no MPIJob CRD, installed): ActionKind.STALL
    (NoMPIOperator, permanent), then ActionKind.FAIL once that has lasted the grace period; ActionKind.WAIT meanwhile."""
    stage, _ = action.creates  # type: ignore[misc]
    return not_created(stj, action, not_served(CHILD_KIND[stage]), now, settings)


def not_served(kind: str) -> Stall:
    """The stall of a job whose child's kind the API server does not serve."""
    return Stall(NO_MPI_OPERATOR, f"the API server does not serve {kind}s ({MPI_API_VERSION}): is the "
                                  "Kubeflow MPI Operator installed?", True)


def name_taken(existing: dict[str, Any]) -> Stall:
    """The stall of a job whose child's name is held by `existing`, an object the job does not
    control: permanent (an orphaned child never goes by itself; one the garbage collector is about
    to delete goes within the grace period)."""
    meta = existing.get("metadata") or {}
    owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    whose = (f"{owner.get('kind')} {owner.get('name')} uid {owner.get('uid')}" if owner
             else "it has no owner")
    return Stall(CHILD_NAME_TAKEN, f"{existing.get('kind')} {meta.get('name')} exists but is not this job's ({whose}: "
                                   "an earlier job of the same name?); delete it, or give the job another name", True)


def refused(kind: str, name: str, detail: str) -> Stall:
    """The stall of a job whose child the API server refused as invalid: permanent (the same child
    is refused again), with what the API server found wrong."""
    return Stall(CHILD_INVALID, f"the API server refused {kind} {name}: {detail or 'invalid'} (a spec field the "
                                "StyleTransferJob's schema allows but Kubernetes does not; re-create the job "
                                "with it fixed)", True)


def create_refused(kind: str, name: str, detail: str) -> Stall:
    """The stall of a job whose child the API server would not create (400 or 403): a quota used up
    (transient: created as soon as it is released), an admission webhook's or policy's denial, a
    namespace being deleted, RBAC (permanent), as the same words in a FailedCreate Event mean."""
    permanent, why = create_failure(detail)
    return Stall(CREATE_REFUSED, f"the API server would not create {kind} {name}: {why}: {detail}", permanent)


def create_unanswered(kind: str, name: str, detail: str) -> Stall:
    """The stall of a job whose child the API server could not create now (429, 5xx: an admission
    webhook that did not answer, such as Kueue's or a policy engine's while it restarts; throttling;
    etcd): transient whatever the message says (the same create may succeed at the next look), and
    the job's deadline bounds the wait."""
    permanent, why = create_failure(detail)
    why = UNANSWERED_CREATE if permanent or (permanent, why) == UNKNOWN_CREATE_FAILURE else why
    return Stall(CREATE_REFUSED, f"the API server would not create {kind} {name}: {why}: {detail}", False)


def not_created(stj: dict[str, Any], action: Action, found: Stall, now: datetime, settings: Settings = BUILT_IN) -> Action:
    """What to do instead of `action` when its child could not be created for the cause `found`
    (kind_not_served; a name another object holds: name_taken; a 422: refused; a 400 or 403:
    create_refused; a 429 or 5xx: create_unanswered): ActionKind.STALL, then, for a permanent cause,
    ActionKind.FAIL once that has lasted the grace period; ActionKind.WAIT meanwhile. Nothing is deleted.
    A RETRY whose deletes were carried out (the ended attempt is gone) becomes ActionKind.RETRY_WAITS:
    the retry recorded with the stall, so the next look creates the new attempt."""
    stage, attempt = action.creates  # type: ignore[misc]
    if action.kind == ActionKind.RETRY and action.deletes:
        # The ended attempt is deleted already: unless the retry is recorded now, the next look finds
        # the recorded attempt gone and makes it again (ChildMissing), its retry never spent, its
        # failure never said; a stylize attempt ended for its progress was then ended again at once.
        kind_name = f"{CHILD_KIND[stage]} {child_name(stj['metadata']['name'], stage, attempt)}"
        return replace(action, kind=ActionKind.RETRY_WAITS, reason=found.reason,
                       message=_stall_message(kind_name, found, settings), permanent=found.permanent)
    return _stall_action(stj, stage, attempt, found, (), now, settings) or Action(ActionKind.WAIT, stage, attempt)


def _stall_message(kind_name: str, found: Stall, settings: Settings) -> str:
    grace = f"{settings.stall_grace_seconds:.0f}s"
    when = f"{grace} after the {kind_name.split()[0]}'s creation" if found.elapsed is not None else f"in {grace}"
    then = (f"the job fails {when} unless this is fixed" if found.permanent
            else "waiting; the time counts against spec.activeDeadlineSeconds")
    return f"{kind_name} cannot start: {found.message} ({then})"


def _reason_text(failure: Failure) -> str:
    return f"{failure.reason}: {failure.message}" if failure.message else failure.reason


def _accepted_message(spec: dict[str, Any], defaulted: list[str]) -> str:
    gpus = spec["gpusPerWorker"]
    where = f"{gpus} GPU{'s' if gpus != 1 else ''} each" if gpus else "CPUs"
    train = spec.get("train")
    style = (f"a style trained for {strip_secrets(spec['style'])} ({train['steps']} steps at {train['size']} px, "
             f"first, on {'one GPU' if gpus else 'a CPU'})" if train is not None
             else f"style {strip_secrets(spec['style'])}")
    message = (f"stylizing {strip_secrets(spec['input'])} into {strip_secrets(spec['output'])} with {style} "
               f"on {spec['workers']} worker{'s' if spec['workers'] != 1 else ''} ({where})")
    return f"{message}; from the operator's defaults: {', '.join(defaulted)}" if defaulted else message
