"""The operator's vocabularies, each defined once: a job's phases, its condition types, a child's
states and the kinds of action decide() returns. The CRD's enum lists are made from these
(stylebatch_operator.crd), and the other modules use these members (they are strings: a member
equals its value, in comparisons, dict keys and JSON)."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """status.phase: where the job is."""

    PENDING = "Pending"
    PREPROCESSING = "Preprocessing"
    STYLIZING = "Stylizing"
    POSTPROCESSING = "Postprocessing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Condition(StrEnum):
    """status.conditions[].type."""

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    QUEUED = "Queued"  # the current child waits for Kueue
    ADMITTED = "Admitted"  # Kueue admitted it
    STALLED = "Stalled"  # the current child's pods cannot start (yet), or stylize stopped advancing
    SPEC_CHANGE_REJECTED = "SpecChangeRejected"


class ChildState(StrEnum):
    """What a child (Job or MPIJob) is doing, as stylebatch_operator.observe reads it."""

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ActionKind(StrEnum):
    """What decide() tells the glue to do."""

    START = "Start"  # accept the job: record its spec and start time
    CREATE = "Create"  # create the current stage's child (first time, or again when it went missing)
    ADOPT = "Adopt"  # the current stage's child exists but the status does not record it yet
    ADVANCE = "Advance"  # the current stage succeeded: create the next stage's child
    RETRY = "Retry"  # the current child failed and the budget allows: create the next attempt
    SUCCEED = "Succeed"
    FAIL = "Fail"
    REJECT_SPEC_CHANGE = "RejectSpecChange"  # the spec changed after the start: report it, apply nothing
    SPEC_RESTORED = "SpecRestored"  # the spec is back to the accepted one
    QUEUE = "Queue"  # the current child is suspended: it waits for Kueue to admit it
    ADMIT = "Admit"  # the current child, which waited, is admitted (unsuspended)
    STALL = "Stall"  # the current child's pods cannot start (yet): say why
    UNSTALL = "Unstall"  # they started after all
    WAIT = "Wait"  # the current child is running
    CLEAN_UP = "CleanUp"  # the job is over and spec.cleanup says its children go now
    EXPIRE = "Expire"  # the job is over and spec.cleanup says it goes now (its children with it)
    NOTHING = "Nothing"  # the job is over


def values(enum: type[StrEnum]) -> list[str]:
    """The plain strings of an enum, in order: what a schema's `enum` list holds."""
    return [member.value for member in enum]
