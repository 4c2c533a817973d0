"""What a child's status says: running, succeeded, or failed and why."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from stylebatch.contract import ERROR_PREFIX, EXIT_BAD_INPUT

from stylebatch_operator.uris import redact

RUNNING, SUCCEEDED, FAILED = "Running", "Succeeded", "Failed"


@dataclass(frozen=True)
class ChildState:
    state: str  # RUNNING, SUCCEEDED or FAILED
    reason: str = ""
    message: str = ""


def child_state(child: dict[str, Any]) -> ChildState:
    """From the terminal conditions only: a batch Job's Complete/Failed (not SuccessCriteriaMet or
    FailureTarget, which come while pods still terminate), an MPIJob's Succeeded/Failed (the MPI
    operator reports an evicted worker as Failed with reason MPIJobEvicted)."""
    success = "Succeeded" if child.get("kind") == "MPIJob" else "Complete"
    conditions = {c.get("type"): c for c in (child.get("status") or {}).get("conditions") or []}
    if _true(conditions.get(success)):
        return ChildState(SUCCEEDED, conditions[success].get("reason", ""), "")
    if _true(conditions.get("Failed")):
        c = conditions["Failed"]
        return ChildState(FAILED, c.get("reason") or "Failed", redact(c.get("message") or ""))
    return ChildState(RUNNING)


def is_suspended(child: dict[str, Any]) -> bool:
    """Created suspended for Kueue (or suspended again by a Kueue preemption): a batch Job's
    spec.suspend, an MPIJob's spec.runPolicy.suspend. Kueue unsuspends it when it admits it."""
    spec = child.get("spec") or {}
    holder = spec.get("runPolicy") or {} if child.get("kind") == "MPIJob" else spec
    return bool(holder.get("suspend"))


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


# A pod's status.reason, or its DisruptionTarget condition, when something outside the job ended it.
DISRUPTION_REASONS = ("Evicted", "Preempting", "NodeLost", "Shutdown", "Terminated", "NodeShutdown")


def disruption(child: dict[str, Any], pods: list[dict[str, Any]]) -> str | None:
    """Why a failed child's pods were taken away from it (an eviction, a spot VM reclaimed, a node
    deleted outright, preemption), or None when the child failed of its own accord. The MPI
    Operator says MPIJobEvicted; otherwise a pod says so with its reason or its DisruptionTarget
    condition (set by the eviction API, the scheduler's preemption, the pod GC of a vanished node)."""
    failed = next((c for c in (child.get("status") or {}).get("conditions") or []
                   if c.get("type") == "Failed" and c.get("status") == "True"), {})
    if failed.get("reason") == "MPIJobEvicted":
        return redact(failed.get("message") or "a worker was evicted")
    for pod in pods:
        name, status = pod.get("metadata", {}).get("name"), pod.get("status") or {}
        target = next((c for c in status.get("conditions") or []
                       if c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None)
        if target is not None:
            return redact(f"pod {name}: {target.get('reason') or 'DisruptionTarget'}: {target.get('message') or ''}"
                          .rstrip(": "))
        if status.get("reason") in DISRUPTION_REASONS:
            return redact(f"pod {name}: {status['reason']}: {status.get('message') or ''}".rstrip(": "))
    return None


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


# Container waiting reasons that never go away by themselves, and those that may.
PERMANENT_WAITING = ("InvalidImageName", "CreateContainerConfigError", "ErrImageNeverPull")
TRANSIENT_WAITING = ("ErrImagePull", "ImagePullBackOff", "CreateContainerError", "RunContainerError")
# A FailedCreate that may clear up (quota freed, an admission webhook back): the rest are permanent.
TRANSIENT_CREATE = ("exceeded quota", "failed calling webhook", "Internal error", "the server is currently unable")
NO_MPI_OPERATOR = "NoMPIOperator"
MPIJOB_REFUSED = "MPIJobRefused"


def stall(child: dict[str, Any], pods: list[dict[str, Any]], events: list[dict[str, Any]],
          age_seconds: float, grace_seconds: float) -> Stall | None:
    """What keeps a running child from running: a pod waiting on its image or its configuration, a
    pod the scheduler cannot place, a Job that cannot create its pods, an MPIJob the MPI Operator
    refused or never picked up (no status and no pods `grace_seconds` after its creation). None when nothing
    is wrong. Permanent causes come first. `events`: the child's own Events."""
    found = [s for s in (_pod_stall(p) for p in pods) if s] + [s for s in (_event_stall(e) for e in events) if s]
    if not (found or pods) and child.get("kind") == "MPIJob" and not child.get("status") and age_seconds >= grace_seconds:
        found.append(Stall(NO_MPI_OPERATOR, f"no MPI Operator has picked up MPIJob {child['metadata']['name']} "
                                            f"in {age_seconds:.0f}s: is the Kubeflow MPI Operator (kubeflow.org/v2beta1) "
                                            "installed and running?", True))
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


def _event_stall(event: dict[str, Any]) -> Stall | None:
    if event.get("type") != "Warning":
        return None
    message = redact(event.get("message") or "")[:1000]
    if event.get("reason") == "FailedCreate":
        return Stall("FailedCreate", message, not any(t in message for t in TRANSIENT_CREATE))
    if event.get("reason") == "ValidationError":  # the MPI Operator's word for an MPIJob it will not run
        return Stall(MPIJOB_REFUSED, f"the MPI Operator refused the MPIJob: {message}", True)
    return None
