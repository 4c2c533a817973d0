"""The words of the operator's state machine, each defined once: a StyleTransferJob's phases, the
condition types it writes, the states of a child (a Job or MPIJob), and the kinds of action
`decide` returns. The CRD's enum lists and descriptions are generated from these (crd.py).

They are str enums: a member is its word (Phase.STYLIZING == "Stylizing"), so it goes into a status
patch, an Event or a metric label as is.
"""

from __future__ import annotations

from enum import Enum

from stylebatch_operator.names import POSTPROCESS, PREPROCESS, STYLIZE, TRAIN


class Word(str, Enum):
    """A str enum that formats as its value (enum.StrEnum, which Python 3.10 lacks)."""

    __str__ = str.__str__
    __format__ = str.__format__

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]


class Phase(Word):
    """status.phase: where a job is. A job the operator has not accepted yet has none (Pending)."""

    PENDING = "Pending"
    TRAINING = "Training"  # spec.train: the style is trained first
    PREPROCESSING = "Preprocessing"
    STYLIZING = "Stylizing"
    POSTPROCESSING = "Postprocessing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)

    @property
    def stage(self) -> str | None:
        """The stage whose child runs in this phase; None in Pending and once the job is over."""
        return _STAGE_OF_PHASE.get(self)

    @classmethod
    def of_stage(cls, stage: str) -> Phase:
        return next(phase for phase, s in _STAGE_OF_PHASE.items() if s == stage)

    @classmethod
    def of(cls, status: dict) -> Phase:
        """The phase a status records (none, or a word this operator does not know: Pending)."""
        try:
            return cls(status.get("phase") or cls.PENDING)
        except ValueError:
            return cls.PENDING


_STAGE_OF_PHASE = {Phase.TRAINING: TRAIN, Phase.PREPROCESSING: PREPROCESS, Phase.STYLIZING: STYLIZE,
                   Phase.POSTPROCESSING: POSTPROCESS}


class ConditionType(Word):
    """status.conditions[].type."""

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STALLED = "Stalled"  # the current child's pods cannot start (yet)
    QUEUED = "Queued"  # the current child waits for Kueue to admit it
    ADMITTED = "Admitted"  # Kueue admitted it


class ChildState(Word):
    """Where a child (a batch Job, an MPIJob) is, from its terminal conditions (observe.child_state)."""

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ActionKind(Word):
    """What `decide` says to do; status.transition carries each one out (its status patch and Event)."""

    START = "Start"  # accept the job: record its effective spec and start time
    CREATE = "Create"  # create the current stage's child (first time, or again when it went missing)
    ADOPT = "Adopt"  # the current stage's child exists but the status does not record it yet
    ADVANCE = "Advance"  # the current stage succeeded: create the next stage's child
    RETRY = "Retry"  # the current child failed and the budget allows: create the next attempt
    # A RETRY that ended (deleted) the current child, whose next attempt the API server would not
    # create yet: the retry is recorded (attempt, budget, failure), and why the new attempt waits
    RETRY_WAITS = "RetryWaits"
    SUCCEED = "Succeed"
    FAIL = "Fail"
    QUEUE = "Queue"  # the current child is suspended: it waits for Kueue to admit it
    ADMIT = "Admit"  # the current child, which waited, is admitted (unsuspended)
    STALL = "Stall"  # the current child's pods cannot start (yet): say why
    UNSTALL = "Unstall"  # they started after all
    WAIT = "Wait"  # the current child is running
    CLEAN_UP = "CleanUp"  # the job is over and spec.cleanup says its children go now
    EXPIRE = "Expire"  # the job is over and spec.cleanup says it goes now (its children with it)
    NOTHING = "Nothing"  # the job is over

    @property
    def creates_child(self) -> bool:
        return self in (ActionKind.CREATE, ActionKind.ADVANCE, ActionKind.RETRY)
