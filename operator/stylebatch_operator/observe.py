"""What a child's status says: running, succeeded, or failed and why."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from stylebatch.contract import ERROR_PREFIX, EXIT_BAD_INPUT

from stylebatch_operator.names import MPI_LABEL_ROLE
from stylebatch_operator.states import ChildState
from stylebatch_operator.uris import redact



@dataclass(frozen=True)
class ChildStatus:
    state: ChildState
    reason: str = ""
    message: str = ""


def child_state(child: dict[str, Any]) -> ChildStatus:
    """From the terminal conditions only: a batch Job's Complete/Failed (not SuccessCriteriaMet or
    FailureTarget, which come while pods still terminate), an MPIJob's Succeeded/Failed (the MPI
    operator reports an evicted worker as Failed with reason MPIJobEvicted)."""
    success = "Succeeded" if child.get("kind") == "MPIJob" else "Complete"
    conditions = {c.get("type"): c for c in (child.get("status") or {}).get("conditions") or []}
    if _true(conditions.get(success)):
        return ChildStatus(ChildState.SUCCEEDED, conditions[success].get("reason", ""), "")
    if _true(conditions.get("Failed")):
        c = conditions["Failed"]
        return ChildStatus(ChildState.FAILED, c.get("reason") or "Failed", redact(c.get("message") or ""))
    return ChildStatus(ChildState.RUNNING)


def is_suspended(child: dict[str, Any]) -> bool:
    """Created suspended for Kueue (or suspended again by a Kueue preemption): a batch Job's
    spec.suspend, an MPIJob's spec.runPolicy.suspend. Kueue unsuspends it when it admits it."""
    spec = child.get("spec") or {}
    holder = spec.get("runPolicy") or {} if child.get("kind") == "MPIJob" else spec
    return bool(holder.get("suspend"))


def wanted_pods(child: dict[str, Any]) -> int:
    """How many pods the child runs at once when all goes well: a Job's parallelism, an MPIJob's
    workers and its launcher."""
    spec = child.get("spec") or {}
    if child.get("kind") == "MPIJob":
        return int(((spec.get("mpiReplicaSpecs") or {}).get("Worker") or {}).get("replicas") or 1) + 1
    return int(spec.get("parallelism") or 1)


def live_pods(pods: list[dict[str, Any]]) -> int:
    """Pods not yet finished (pending or running)."""
    return sum(1 for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))


def all_running(child: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """Every pod the child runs is there and running, none waiting on anything (nothing for the
    Stalled condition to say until one of them changes)."""
    live = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    return (len(live) >= wanted_pods(child) and all((p.get("status") or {}).get("phase") == "Running" for p in live)
            and not any(_pod_stall(p) for p in live))


def newest_started_pod(pods: list[dict[str, Any]]) -> str | None:
    """The name of the newest pod that started (running or finished), or None: the one whose log
    tells a one-pod Job's progress."""
    started = [p for p in pods if (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")]
    if not started:
        return None
    return max(started, key=lambda p: p["metadata"].get("creationTimestamp") or "")["metadata"]["name"]


def failed_pod_detail(pods: list[dict[str, Any]]) -> str:
    """The most telling line from the child's failed pods: an eviction, or the container's
    termination message (its last log lines, thanks to FallbackToLogsOnError), redacted."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    failed.sort(key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "")
    for pod in reversed(failed):
        status = pod["status"]
        if status.get("reason"):  # Evicted, DeadlineExceeded, ...
            return redact(f"pod {pod['metadata'].get('name')}: {status['reason']}: {status.get('message', '')}".rstrip(": "))
        for cs in status.get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            message = (terminated.get("message") or "").strip()
            if message:
                return redact(_telling_lines(message))
            if terminated.get("reason"):
                return f"pod {pod['metadata'].get('name')}: {terminated['reason']} (exit code {terminated.get('exitCode')})"
    return ""


USER_ERROR_PREFIX = ERROR_PREFIX.strip()


def user_error(pods: list[dict[str, Any]]) -> str | None:
    """The worker's one-line `stylebatch: error: ...` when a failed pod's container exited with
    its bad-input code (stylebatch.contract.EXIT_BAD_INPUT): bad input, an unknown style, a codec
    the container cannot hold. Running it again would fail the same way. None for anything else
    (the transient code 75, a crash, an eviction, OOMKilled), which is worth a retry."""
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Failed" or status.get("reason"):  # evicted: not the worker's verdict
            continue
        for cs in status.get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") != EXIT_BAD_INPUT or terminated.get("reason") == "OOMKilled":
                continue
            lines = [line.strip() for line in (terminated.get("message") or "").splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith(USER_ERROR_PREFIX)]
            line = errors[-1] if errors else (lines[-1] if lines else f"{USER_ERROR_PREFIX} exit code {EXIT_BAD_INPUT}")
            return redact(line)[:500]
    return None


# A pod's status.reason, or its DisruptionTarget condition, when something outside the job ended it;
# and the kubelet's refusals of a pod at admission that are the node's state, not the pod's (a device
# plugin restarting: "UnexpectedAdmissionError", "OutOfnvidia.com/gpu").
DISRUPTION_REASONS = ("Evicted", "Preempting", "NodeLost", "Shutdown", "Terminated", "NodeShutdown",
                      "UnexpectedAdmissionError")
DISRUPTION_REASON_PREFIXES = ("OutOf",)


def worker_lost_before_launch(pods: list[dict[str, Any]], ranks_started: bool) -> str | None:
    """A worker pod of an MPIJob that ended (Failed or Succeeded) of its own, with no deletion under way,
    before the ranks reported any frames, in a few words; else None. The MPI Operator replaces a worker pod only
    when it is gone, not when it failed, so such an attempt never starts: its launcher is made once
    every worker is Ready (launcherCreationPolicy WaitForWorkersReady), or, started early (Kueue,
    kubeflow/mpi-operator#615), waits in stylebatch-mpiexec for every worker to take connections; the
    launcher Job's deadline, which would end it, is hours away. (Seen: a kubelet refusing a GPU pod while
    its device plugin restarts.) Not said once the launcher has finished or the ranks report frames
    (ranks_started): the MPIJob's own failure then says what happened; nor for a pod being deleted (the
    MPI Operator makes it again, or is removing the workers after the job)."""
    roles = [((p.get("metadata", {}).get("labels") or {}).get(MPI_LABEL_ROLE), p) for p in pods]
    launchers = [(p.get("status") or {}).get("phase") for role, p in roles if role == "launcher"]
    if any(phase in ("Failed", "Succeeded") for phase in launchers) or (launchers and ranks_started):
        return None
    for role, pod in roles:
        status = pod.get("status") or {}
        if role == "worker" and status.get("phase") in ("Failed", "Succeeded") \
                and not pod.get("metadata", {}).get("deletionTimestamp"):
            why = ": ".join(filter(None, (status.get("reason"), status.get("message")))) or status["phase"]
            return redact(f"worker pod {pod['metadata'].get('name')} ended before the ranks reported any frames ({why})")[:1000]
    return None


# The kubelet's words when it evicts a pod for outgrowing a limit of its own (pkg/kubelet/eviction:
# emptyDirMessageFmt, podEphemeralStorageMessageFmt, containerEphemeralStorageMessageFmt), with the
# setting that raises it. Such an eviction (status.reason Evicted, no DisruptionTarget condition: the
# kubelet sets one only for node pressure) is the pod's own doing, not its node's: the same pod on any
# node writes as much again, so it is an ordinary failure, counted against spec.retries.
OWN_LIMIT_EVICTIONS = (
    (re.compile(r'Usage of EmptyDir volume "[^"]*" exceeds the limit "[^"]*"'),
     "its emptyDir's sizeLimit (scratch: the chart's jobs.scratchSize; dshm: jobs.shmSize)"),
    (re.compile(r"Pod ephemeral local storage usage exceeds the total limit of containers \S+"),
     "its ephemeral-storage limit (spec.resources, or the chart's jobs.resources, stageResources, launcherResources)"),
    (re.compile(r'Container \S+ exceeded its local ephemeral storage limit "[^"]*"'),
     "its ephemeral-storage limit (spec.resources, or the chart's jobs.resources, stageResources, launcherResources)"),
)


def own_limit_eviction(child: dict[str, Any], pods: list[dict[str, Any]]) -> str | None:
    """A pod of the child that the kubelet evicted for outgrowing its own emptyDir sizeLimit or
    ephemeral-storage limit (OWN_LIMIT_EVICTIONS), in a few words naming the limit and what raises it;
    else None. Read from a listed pod's status.message (one with a DisruptionTarget condition is not
    one), or, its pod gone, from a failed MPIJob's BackoffLimitExceeded/Evicted condition, whose message
    the MPI Operator copies from the launcher pod's. (An MPIJobEvicted condition says only how many
    workers were evicted, "1/2 workers are evicted": its evicted workers, which stay listed, tell.)"""
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("reason") != "Evicted" or _disruption_target(pod) is not None:
            continue
        words = _own_limit_words(status.get("message") or "")
        if words:
            return redact(f"pod {pod.get('metadata', {}).get('name')} {words}")
    failed = next((c for c in (child.get("status") or {}).get("conditions") or []
                   if c.get("type") == "Failed" and c.get("status") == "True"), {})
    if child.get("kind") == "MPIJob" and failed.get("reason") == MPI_LAUNCHER_FAILED + "Evicted":
        words = _own_limit_words(failed.get("message") or "")
        if words:
            return redact(f"launcher pod {words}")
    return None


def _own_limit_words(message: str) -> str:
    """'was evicted for outgrowing <the limit>: <the kubelet's message> (raise <what>)', or ''."""
    for pattern, raise_ in OWN_LIMIT_EVICTIONS:
        match = pattern.search(message)
        if match:
            return f"was evicted for outgrowing its own limit: {match.group(0).rstrip('. ')} (raise {raise_})"
    return ""


def disruption(child: dict[str, Any], pods: list[dict[str, Any]]) -> str | None:
    """Why a failed child's pods were taken away from it (an eviction, a spot VM reclaimed, a node
    deleted outright, preemption), or None when nothing still there says so, or when a pod of it
    outgrew its own limit (own_limit_eviction: counted, whatever else happened). The MPIJob itself says
    so, however long its pods have been gone: the MPI Operator's MPIJobEvicted, or its
    BackoffLimitExceeded/<reason> (MPI_LAUNCHER_FAILED), where it copied the failed launcher pod's
    status.reason when it saw the launcher Job fail. Otherwise a pod still listed says so (pod_disruption).
    A worker pod deleted outright (its node gone: the pod GC removes it at once) leaves no trace in the
    MPIJob: decide also reads what the operator saw of it while the MPIJob ran (status.disruption,
    disruption_seen). A batch Job's condition never tells (BackoffLimitExceeded, PodFailurePolicy): its
    podFailurePolicy replaces a pod with a DisruptionTarget condition without failing, so only a pod
    the policy did not match (one a kubelet refused, evicted on a cluster without DisruptionTarget) can
    fail it, and that pod stays listed (Failed, not deleted) until the Job goes."""
    failed = next((c for c in (child.get("status") or {}).get("conditions") or []
                   if c.get("type") == "Failed" and c.get("status") == "True"), {})
    reason = str(failed.get("reason") or "")
    if own_limit_eviction(child, pods) is not None:
        return None
    if reason == "MPIJobEvicted":
        return redact(failed.get("message") or "a worker was evicted")
    if child.get("kind") == "MPIJob" and reason.startswith(MPI_LAUNCHER_FAILED):
        pod_reason = reason[len(MPI_LAUNCHER_FAILED):]
        if is_disruption_reason(pod_reason):
            return redact(f"launcher pod: {pod_reason}: {failed.get('message') or ''}".rstrip(": "))
    return pod_disruption(pods)


# The MPI Operator's Failed reason for an MPIJob whose launcher Job failed on its backoff limit: this,
# then the last failed launcher pod's status.reason (kubeflow/mpi-operator, updateMPIJobFailedStatus).
MPI_LAUNCHER_FAILED = "BackoffLimitExceeded/"


def is_disruption_reason(reason: str) -> bool:
    """A pod's status.reason that says something outside the job ended it (DISRUPTION_REASONS)."""
    return reason in DISRUPTION_REASONS or reason.startswith(DISRUPTION_REASON_PREFIXES)


def pod_disruption(pods: list[dict[str, Any]]) -> str | None:
    """The first of `pods` that something outside the job ended, in a few words: its DisruptionTarget
    condition (set by the eviction API, the scheduler's preemption, the taint manager, the pod GC of a
    vanished node, the kubelet under node pressure), or its status.reason (DISRUPTION_REASONS); else
    None. A pod the kubelet evicted for outgrowing its own limit (Evicted, with a message
    OWN_LIMIT_EVICTIONS knows, and no DisruptionTarget) is not one."""
    for pod in pods:
        name, status = pod.get("metadata", {}).get("name"), pod.get("status") or {}
        target = _disruption_target(pod)
        if target is not None:
            return redact(f"pod {name}: {target.get('reason') or 'DisruptionTarget'}: {target.get('message') or ''}"
                          .rstrip(": "))
        reason = str(status.get("reason") or "")
        if is_disruption_reason(reason) and not (reason == "Evicted" and _own_limit_words(status.get("message") or "")):
            return redact(f"pod {name}: {status['reason']}: {status.get('message') or ''}".rstrip(": "))
    return None


def _disruption_target(pod: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in (pod.get("status") or {}).get("conditions") or []
                 if c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None)


def disruption_seen(child: dict[str, Any], pods: list[dict[str, Any]]) -> str | None:
    """A disruption of a pod of a running MPIJob, in a few words, or None: worth remembering (the
    operator writes it into status.disruption), for the pod may be gone by the time the MPIJob fails
    (the pod GC deletes a pod of a vanished node outright; the MPI Operator makes the worker anew, then
    deletes the workers once the MPIJob has failed), and the MPIJob's own status then does not say why.
    Every rank is needed to the end, so an MPIJob that lost a pod fails for it. Never for a batch Job:
    its podFailurePolicy replaces a disrupted pod, so a later failure of the Job is the new pod's own."""
    if child.get("kind") != "MPIJob" or child_state(child).state != ChildState.RUNNING:
        return None
    return pod_disruption(pods)


# MPICH's report when a rank fails ends with the same lines for every failure; the lines above them
# say which process failed, on which host (the worker pod), and how. A worker that went away (its
# pod deleted, its node gone) shows as the launcher's ssh connection to it closing.
_MPICH_FACT = re.compile(r"^=\s+((?:RANK \d+ )?PID \d+ RUNNING AT \S+|EXIT CODE: -?\d+|KILLED BY SIGNAL: .+?)\s*$")
_MPICH_EXIT_STRING = "YOUR APPLICATION TERMINATED WITH THE EXIT STRING:"
_SSH_FAILURE = re.compile(r"^(ssh: .+|Connection to \S+ closed by remote host\.?)$")
_MPICH_GENERIC = ("This typically refers to a problem with your application.",
                  "Please see the FAQ page for debugging suggestions")


def _telling_lines(text: str, lines: int = 3, limit: int = 500) -> str:
    """A failed container's last log lines, or, for an MPI launcher, the rank that failed and how
    (with the worker's own `stylebatch: error:` line when a rank printed one)."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip() and line.strip() not in _MPICH_GENERIC]
    facts = []
    for line in kept:
        if match := _MPICH_FACT.match(line):
            facts.append(match.group(1))
        elif line.startswith(_MPICH_EXIT_STRING):
            facts.append(line[len(_MPICH_EXIT_STRING):].strip())
        elif _SSH_FAILURE.match(line):
            facts.append(line)
    if facts:
        errors = [line for line in kept if line.startswith(USER_ERROR_PREFIX)]
        return " | ".join([*errors[-1:], "an MPI rank failed: " + ", ".join(facts)])[-limit:]
    return " | ".join(kept[-lines:])[-limit:]


def _true(condition: dict[str, Any] | None) -> bool:
    return bool(condition) and condition.get("status") == "True"


@dataclass(frozen=True)
class Stall:
    """Why a running child's pods do not start, as the Stalled condition shows it."""
    reason: str  # CamelCase: the kubelet's, the scheduler's or the controller's own word
    message: str
    permanent: bool  # waiting cannot help: the job fails after the operator's grace period
    # Seconds the cause has lasted, as the child itself shows it (an MPIJob's age with no status):
    # the grace period runs from then, not from when the Stalled condition was first set.
    elapsed: float | None = None


# Container waiting reasons that never go away by themselves, and those that may.
PERMANENT_WAITING = ("InvalidImageName", "CreateContainerConfigError", "ErrImageNeverPull")
TRANSIENT_WAITING = ("ErrImagePull", "ImagePullBackOff", "CreateContainerError", "RunContainerError")

# What the API server told a controller that could not create a pod (a FailedCreate Event's
# message), first match wins: (pattern, permanent, what it means). Permanent: an admission decision
# about the pod as specified (ServiceAccount, Pod Security, a webhook's or policy's denial, a
# LimitRange, a quota demanding limits), which the same pod meets again. Transient: the API server
# or a webhook not answering, a quota other pods will release: the job waits, against its deadline.
CREATE_FAILURES: tuple[tuple[re.Pattern[str], bool, str], ...] = tuple((re.compile(p), permanent, why) for p, permanent, why in (
    (r"exceeded quota: ", False, "a ResourceQuota is used up (pods start as others release it)"),
    (r"status unknown for quota: ", False, "the ResourceQuota's usage is not counted yet"),
    (r"failed quota: .*must specify", True, "a ResourceQuota requires requests or limits the pods do not set"),
    (r'serviceaccount "[^"]*" not found', True, "the ServiceAccount does not exist"),
    (r"violates PodSecurity ", True, "the namespace's Pod Security level forbids the pods"),
    (r'admission webhook "[^"]*" denied the request', True, "an admission webhook refused the pods"),
    (r"ValidatingAdmissionPolicy .* denied request", True, "a ValidatingAdmissionPolicy refused the pods"),
    (r"(maximum|minimum) \S+ usage per (Container|Pod) is|must be less than or equal to \S+ limit",
     True, "a LimitRange refuses the pods' resources"),
    (r"because it is being terminated", True, "the namespace is being deleted"),
    (r"failed calling webhook|failed to call webhook", False, "an admission webhook did not answer"),
    (r"Internal error occurred|the server is currently unable|Timeout: |etcdserver: |context deadline exceeded|"
     r"[Tt]oo many requests|the object has been modified|connection refused", False, "the API server did not answer"),
    (r'cannot create resource "[^"]*"', True, "RBAC: the ServiceAccount that creates it may not (for the "
     "operator's: is the namespace in the chart's operator.watchNamespaces?)"),
    (r" is forbidden: ", True, "an admission plugin refused the pods"),
))
UNKNOWN_CREATE_FAILURE = (False, "not a known cause")  # shown, and waited on against the deadline
NO_MPI_OPERATOR = "NoMPIOperator"
MPIJOB_REFUSED = "MPIJobRefused"
# An MPIJob with no status and no pods this long after its creation is shown as not picked up (the
# MPI Operator sets a status within seconds); it fails once the grace period has passed since its creation.
MPI_PICKUP_SECONDS = 30.0


def create_failure(message: str) -> tuple[bool, str]:
    """(permanent, what it means) of a FailedCreate Event's message (CREATE_FAILURES)."""
    return next(((permanent, why) for pattern, permanent, why in CREATE_FAILURES if pattern.search(message)),
                UNKNOWN_CREATE_FAILURE)


NO_LOCAL_QUEUE = "NoLocalQueue"
LOCAL_QUEUE_INACTIVE = "LocalQueueInactive"
QUEUE_STALLS = (NO_LOCAL_QUEUE, LOCAL_QUEUE_INACTIVE)
# The LocalQueue could not be read (the API server's 500, 429, a timeout; RBAC of an older chart):
# not judged, so the Stalled condition stays as it is. (Taken as "it can admit", one failed read
# cleared a NoLocalQueue stall and restarted its grace period: flapping reads postponed the failure.)
QUEUE_UNREAD = Stall("LocalQueueUnread", "the LocalQueue could not be read", False)


def queue_stall(queue: str, namespace: str, local_queue: dict[str, Any] | None) -> Stall | None:
    """Why Kueue cannot admit a child waiting in LocalQueue `queue` (local_queue: that object as read,
    None when the API server has none: no such LocalQueue, or no Kueue at all): a child nobody can
    admit waited for ever, its deadline not running while it is queued. None while the queue is there
    and active (it waits its turn)."""
    if local_queue is None:
        return Stall(NO_LOCAL_QUEUE, f"LocalQueue {queue} does not exist in namespace {namespace} (or Kueue is not "
                                     "installed): nothing can admit the job; create the LocalQueue, or re-create "
                                     "the job with spec.queueName fixed", True)
    active = next((c for c in (local_queue.get("status") or {}).get("conditions") or [] if c.get("type") == "Active"),
                  None)
    if active is not None and active.get("status") == "False":
        why = " ".join(filter(None, (active.get("reason"), active.get("message")))) or "inactive"
        return Stall(LOCAL_QUEUE_INACTIVE, redact(f"LocalQueue {queue} is not active: {why}")[:1000], False)
    return None


def stall(child: dict[str, Any], pods: list[dict[str, Any]], events: list[dict[str, Any]],
          age_seconds: float, grace_seconds: float) -> Stall | None:
    """What keeps a running child from running: a pod waiting on its image or its configuration, a
    pod the scheduler cannot place, a controller that cannot create pods, an MPIJob the MPI
    Operator refused or never picked up (no status and no pods MPI_PICKUP_SECONDS after its
    creation, or half the grace period if shorter; failing `grace_seconds` after its creation).
    None when nothing is wrong. Permanent causes come first. `events`: the child's own Events; a
    FailedCreate older than the newest pod is over (that pod was created after it), and an Event
    older than the child is not its own."""
    newest = max((p.get("metadata", {}).get("creationTimestamp") or "" for p in pods), default="")
    created = str(child.get("metadata", {}).get("creationTimestamp") or "")[:19]
    found = [s for s in (_pod_stall(p) for p in pods) if s]
    # (an Event from before the child was made is another's: the launcher Job of an earlier MPIJob
    # of the same name, whose Events are found by name)
    found += [s for s in (_event_stall(e, newest) for e in events if not (created and "" < event_time(e) < created))
              if s]
    pickup = min(MPI_PICKUP_SECONDS, grace_seconds / 2)
    if not (found or pods) and child.get("kind") == "MPIJob" and not child.get("status") and age_seconds >= pickup:
        found.append(Stall(NO_MPI_OPERATOR, f"no MPI Operator has picked up MPIJob {child['metadata']['name']} "
                                            f"in {pickup:g}s: is the Kubeflow MPI Operator (kubeflow.org/v2beta1) "
                                            "installed and running?", True, age_seconds))
    found.sort(key=lambda s: not s.permanent)
    return found[0] if found else None


def _pod_stall(pod: dict[str, Any]) -> Stall | None:
    status, name = pod.get("status") or {}, pod.get("metadata", {}).get("name")
    if status.get("phase") not in (None, "Pending", "Running"):
        return None
    found = []
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        if reason in PERMANENT_WAITING or reason in TRANSIENT_WAITING:
            message = redact(f"pod {name}: container {cs.get('name')}: {waiting.get('message') or reason}")
            found.append(Stall(reason, message[:1000], reason in PERMANENT_WAITING))
    scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        found.append(Stall("Unschedulable", redact(f"pod {name}: {scheduled.get('message') or 'Unschedulable'}")[:1000],
                           False))
    found.sort(key=lambda s: not s.permanent)
    return found[0] if found else None


# The MPI Operator's Warning when the API server refuses a pod (a worker) or the launcher Job it
# creates (a quota, a policy or admission webhook, a missing ServiceAccount): reason MPIJobFailed,
# not FailedCreate, with the API server's error after this (kubeflow/mpi-operator, the controller's
# getOrCreateWorker and its launcher creation).
MPI_CREATE_FAILED = ("worker pod created failed: ", "launcher pod created failed: ")


def _event_stall(event: dict[str, Any], newest_pod: str) -> Stall | None:
    if event.get("type") != "Warning":
        return None
    message = redact(event.get("message") or "")[:1000]
    if event.get("reason") == "FailedCreate" or (event.get("reason") == "MPIJobFailed"
                                                 and message.startswith(MPI_CREATE_FAILED)):
        if newest_pod and event_time(event) < newest_pod[:19]:
            return None
        permanent, why = create_failure(message)
        return Stall("FailedCreate", f"{why}: {message}", permanent)
    if event.get("reason") == "ValidationError":  # the MPI Operator's word for an MPIJob it will not run
        return Stall(MPIJOB_REFUSED, f"the MPI Operator refused the MPIJob: {message}", True)
    return None


def event_time(event: dict[str, Any]) -> str:
    """When an Event last happened (RFC 3339, comparable as text): its series' last observation,
    lastTimestamp, eventTime or creation."""
    series = event.get("series") or {}
    for value in (series.get("lastObservedTime"), event.get("lastTimestamp"), event.get("eventTime"),
                  (event.get("metadata") or {}).get("creationTimestamp")):
        if value:
            return str(value)[:19]
    return ""
