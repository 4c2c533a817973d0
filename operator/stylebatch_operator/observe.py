"""What a child's status says: running, succeeded, or failed and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
                return redact(_last_lines(message))
            if terminated.get("reason"):
                return f"pod {pod['metadata'].get('name')}: {terminated['reason']} (exit code {terminated.get('exitCode')})"
    return ""


USER_ERROR_EXIT_CODE = 2  # the worker's exit code for a user error (stylebatch.errors.StylebatchError)
USER_ERROR_PREFIX = "stylebatch: error:"


def user_error(pods: list[dict[str, Any]]) -> str | None:
    """The worker's one-line `stylebatch: error: ...` when a failed pod's container exited with
    code 2: bad input, an unknown style, a codec the container cannot hold. Running it again would
    fail the same way. None for anything else (exit code 1, an eviction, OOMKilled), which is worth
    a retry."""
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Failed" or status.get("reason"):  # evicted: not the worker's verdict
            continue
        for cs in status.get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") != USER_ERROR_EXIT_CODE or terminated.get("reason") == "OOMKilled":
                continue
            lines = [line.strip() for line in (terminated.get("message") or "").splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith(USER_ERROR_PREFIX)]
            line = errors[-1] if errors else (lines[-1] if lines else f"{USER_ERROR_PREFIX} exit code 2")
            return redact(line)[:500]
    return None


def _last_lines(text: str, lines: int = 3, limit: int = 500) -> str:
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())
    return tail[-limit:]


def _true(condition: dict[str, Any] | None) -> bool:
    return bool(condition) and condition.get("status") == "True"
