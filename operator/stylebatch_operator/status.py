"""What an action writes into the job's status (a JSON merge patch), which Event it posts, and the
progress read from the ranks. No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stylebatch.progress import RankProgress, TrainProgress

from stylebatch_operator.decide import (
    WAITING_FOR_ADMISSION, Action, current_child, failed_text, first_stage, parse_time,
)
from stylebatch_operator.manifests import trained_style, work_dir
from stylebatch_operator.names import CHILD_KIND, child_name
from stylebatch_operator.observe import disruption_seen
from stylebatch_operator.spec import effective_spec, shown_spec
from stylebatch_operator.states import ActionKind, ConditionType, Phase
from stylebatch_operator.uris import strip_secrets

NORMAL, WARNING = "Normal", "Warning"  # Event types
FINISHED = "Finished"  # the reason of the Stalled, Queued and Admitted conditions once the job has finished


def iso(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Transition:
    """What carrying out an action writes: a JSON merge patch of the job's status (None: nothing
    changes) and an Event (type, reason, message; None: none)."""

    patch: dict[str, Any] | None
    event: tuple[str, str, str] | None


def transition(stj: dict[str, Any], action: Action, now: datetime) -> Transition:
    """The one place that tells action kinds apart: each kind's status fields, conditions and
    Event. (The glue only creates and deletes what the action names, and deletes the job on EXPIRE.)"""
    status = stj.get("status") or {}
    generation = stj["metadata"].get("generation")
    conditions = list(status.get("conditions") or [])

    def cond(type_: ConditionType, value: str, reason: str, message: str = "") -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, value, reason, message, generation, now)

    kind, patch = action.kind, {}

    def settle(outcome: str) -> None:
        """A finished job waits for nothing: a True Stalled or Queued condition turns False (FINISHED),
        an Admitted one still False for the wait says FINISHED, and status.permanentStallSince and
        queuedSince go (the wait so far added to queuedSeconds, as ADMIT does)."""
        said = f"the job {outcome}"
        if _stalled(conditions):
            cond(ConditionType.STALLED, "False", FINISHED, said)
        if status.get("permanentStallSince"):
            patch["permanentStallSince"] = None
        if _condition(conditions, ConditionType.QUEUED).get("status") == "True":
            cond(ConditionType.QUEUED, "False", FINISHED, said)
        if _condition(conditions, ConditionType.ADMITTED).get("reason") == WAITING_FOR_ADMISSION:
            cond(ConditionType.ADMITTED, "False", FINISHED, said)
        since = parse_time(status.get("queuedSince"))
        if since is not None:
            waited = max(0, int((now - since).total_seconds()))
            patch.update(queuedSince=None, queuedSeconds=int(status.get("queuedSeconds") or 0) + waited)
    event_type = WARNING if kind in (ActionKind.RETRY, ActionKind.RETRY_WAITS, ActionKind.FAIL, ActionKind.STALL) \
        else NORMAL
    said = action.message  # the Event's message
    match kind:
        case ActionKind.WAIT | ActionKind.NOTHING:
            return Transition(None, None)
        case ActionKind.EXPIRE:  # the job itself goes: nothing to write
            return Transition(None, (NORMAL, action.reason, action.message))
        case ActionKind.CLEAN_UP:
            return Transition({"childrenDeleted": True}, (NORMAL, action.reason, action.message))
        case ActionKind.START:
            if action.spec is None:
                raise ValueError("a START action carries the effective spec")
            spec, effective = stj.get("spec") or {}, action.spec
            patch.update(phase=Phase.PENDING, acceptedSpec=shown_spec(spec), effectiveSpec=shown_spec(effective),
                         acceptedGeneration=generation, startTime=iso(now),
                         outputURI=strip_secrets(effective["output"]),
                         workDir=strip_secrets(work_dir(stj, effective)), attempts={}, retries=0, children={})
            if effective.get("train") is not None:
                patch["trainedStyle"] = trained_style(stj, effective)
            first = first_stage(effective)
            cond(ConditionType.RUNNING, "False", Phase.PENDING, f"about to create the {first} {CHILD_KIND[first]}")
            cond(ConditionType.SUCCEEDED, "False", Phase.PENDING)
            cond(ConditionType.FAILED, "False", Phase.PENDING)
        case ActionKind.CREATE | ActionKind.ADOPT | ActionKind.ADVANCE | ActionKind.RETRY:
            if action.records is None:
                return Transition(None, None)
            stage, attempt = action.records
            name = child_name(stj["metadata"]["name"], stage, attempt)
            phase = Phase.of_stage(stage)
            patch.update(phase=phase, attempts={stage: attempt}, children={stage: name})
            if kind == ActionKind.ADVANCE:  # the finished child too: made just before a restart, the
                # status may never have recorded it (it finished before the next look), and clean-up
                # deletes only the children status.attempts records (decide.all_children)
                done, done_attempt, done_name = current_child(stj)
                patch["attempts"][done] = done_attempt
                patch["children"][done] = done_name
            if effective_spec(stj).get("queueName"):  # made suspended: it runs once Kueue admits it
                cond(ConditionType.RUNNING, "False", WAITING_FOR_ADMISSION,
                     f"{CHILD_KIND[stage]} {name} (attempt {attempt}) waits for Kueue to admit it")
            else:
                cond(ConditionType.RUNNING, "True", phase, f"{CHILD_KIND[stage]} {name} (attempt {attempt})")
            cond(ConditionType.SUCCEEDED, "False", phase)
            if _stalled(conditions):  # a new child starts with a clean slate
                cond(ConditionType.STALLED, "False", "Started", f"created {CHILD_KIND[stage]} {name}")
                patch["permanentStallSince"] = None
            if kind != ActionKind.ADOPT and status.get("disruption"):  # the new child's own pods are watched
                patch["disruption"] = None
            retry = kind == ActionKind.RETRY
            patch.update(reason=action.reason if retry else "", message=action.message if retry else "")
            if retry:
                counter = "retries" if action.counted else "disruptions"
                patch[counter] = int(status.get(counter) or 0) + 1
            if kind == ActionKind.ADVANCE and Phase.of(status) == Phase.STYLIZING:
                done = _finished_progress(status, now)
                if done:
                    patch["progress"] = done
            if kind == ActionKind.ADVANCE and Phase.of(status) == Phase.TRAINING:
                patch["progress"] = None  # stylize's frames start from nothing
                steps = (status.get("training") or {}).get("steps")
                if steps:  # it succeeded: every step is done, whatever the last line said
                    patch["training"] = {"step": steps, "percent": 100, "etaSeconds": 0,
                                         "summary": f"100% ({steps}/{steps} steps)", "updateTime": iso(now)}
            if action.reason == "ChildMissing":
                event_type = WARNING
        case ActionKind.RETRY_WAITS:  # the retry is spent and recorded; its child is not made yet
            if action.stage is None or action.failure is None:
                raise ValueError("a RETRY_WAITS action carries its stage and failure")
            name = child_name(stj["metadata"]["name"], action.stage, action.attempt)
            counter = "retries" if action.counted else "disruptions"
            # (status.children keeps the ended attempt: the next look creates the new one as new)
            patch.update({"attempts": {action.stage: action.attempt}, counter: int(status.get(counter) or 0) + 1,
                          "reason": action.reason, "message": action.message,
                          "permanentStallSince": iso(now) if action.permanent else None})
            if status.get("disruption"):
                patch["disruption"] = None
            cond(ConditionType.RUNNING, "False", action.reason,
                 f"{CHILD_KIND[action.stage]} {name} (attempt {action.attempt}) is not created yet")
            cond(ConditionType.STALLED, "True", action.reason, action.message)
            said = f"{failed_text(action.failure)}; {action.message}"
        case ActionKind.STALL:
            # Another cause of the same stall: the condition says so but stays True (its
            # lastTransitionTime with it), and the Warning Event comes only when the child turns
            # stalled and when a cause waiting cannot help first shows (the grace period starts).
            news = not _stalled(conditions)
            cond(ConditionType.STALLED, "True", action.reason, action.message)
            patch.update(reason=action.reason, message=action.message)
            if action.permanent and not status.get("permanentStallSince"):
                patch["permanentStallSince"] = iso(now)
                news = True
            if not news:
                event_type = None
        case ActionKind.UNSTALL:
            cond(ConditionType.STALLED, "False", action.reason, action.message)
            patch.update(reason="", message="", permanentStallSince=None)
        case ActionKind.SUCCEED:
            patch.update(phase=Phase.SUCCEEDED, completionTime=iso(now), reason="", message="")
            settle("succeeded")
            cond(ConditionType.RUNNING, "False", Phase.SUCCEEDED, action.message)
            cond(ConditionType.SUCCEEDED, "True", Phase.SUCCEEDED, action.message)
            cond(ConditionType.FAILED, "False", Phase.SUCCEEDED)
        case ActionKind.FAIL:
            patch.update(phase=Phase.FAILED, completionTime=iso(now), reason=action.reason, message=action.message)
            settle("failed")
            cond(ConditionType.RUNNING, "False", action.reason, action.message)
            cond(ConditionType.SUCCEEDED, "False", action.reason)
            cond(ConditionType.FAILED, "True", action.reason, action.message)
        case ActionKind.QUEUE:  # suspended: nothing of it runs until Kueue admits it
            patch["queuedSince"] = iso(now)
            cond(ConditionType.QUEUED, "True", WAITING_FOR_ADMISSION, action.message)
            cond(ConditionType.ADMITTED, "False", WAITING_FOR_ADMISSION, action.message)
            cond(ConditionType.RUNNING, "False", WAITING_FOR_ADMISSION, action.message)
        case ActionKind.ADMIT:
            since = parse_time(status.get("queuedSince")) or now
            waited = max(0, int((now - since).total_seconds()))
            patch.update(queuedSince=None, queuedSeconds=int(status.get("queuedSeconds") or 0) + waited)
            cond(ConditionType.QUEUED, "False", ConditionType.ADMITTED, action.message)
            cond(ConditionType.ADMITTED, "True", ConditionType.ADMITTED, action.message)
            if action.stage is not None:
                name = child_name(stj["metadata"]["name"], action.stage, action.attempt)
                cond(ConditionType.RUNNING, "True", Phase.of_stage(action.stage),
                     f"{CHILD_KIND[action.stage]} {name} (attempt {action.attempt})")
        case _:
            raise ValueError(f"no transition for action kind {kind!r}")
    if action.failure is not None:
        f = action.failure
        patch["failure"] = {"stage": f.stage, "attempt": f.attempt, "child": f.child,
                            "reason": f.reason, "message": f.message}
    patch["conditions"] = conditions
    patch["observedGeneration"] = generation
    return Transition(patch, (event_type, action.reason, said) if event_type else None)


def disruption_patch(child: dict[str, Any], pods: list[dict[str, Any]], status: dict[str, Any],
                     now: datetime) -> dict[str, Any] | None:
    """status.disruption: a disruption of a pod of the running MPIJob `child` (observe.disruption_seen),
    with the child's kind, name and uid and when it was first seen, so that decide still tells the
    MPIJob's failure a disruption once that pod is gone (decide.seen_disruption). None when there is
    none, or the status records one of this child already (the first seen stays)."""
    seen = disruption_seen(child, pods)
    if seen is None:
        return None
    meta = child.get("metadata") or {}
    ref, uid = f"{child.get('kind')}/{meta.get('name')}", meta.get("uid")
    recorded = status.get("disruption") or {}
    if (recorded.get("child"), recorded.get("uid")) == (ref, uid):
        return None
    return {"disruption": {"child": ref, "uid": uid, "message": seen[:1000], "seenTime": iso(now)}}


def progress_patch(latest: dict[int, RankProgress] | None, status: dict[str, Any], attempt: int,
                   now: datetime) -> dict[str, Any] | None:
    """status.progress from the ranks' latest progress lines (`latest`: by rank; None when the
    launcher has not started). It never goes down within an attempt: each rank's highest count is
    kept in progress.ranks, so a rank that finished early and dropped out of the launcher's log
    tail still counts. progress.advanceTime is when the count last rose (or the attempt's launcher
    was first seen): the progress timeout runs from it. None when nothing changed."""
    if latest is None:
        return None
    previous = status.get("progress") or {}
    same = previous.get("attempt") == attempt
    ranks = [int(n) for n in previous.get("ranks") or []] if same else []
    frames = int(previous.get("framesTotal") or 0) if same else 0
    for p in latest.values():
        ranks += [0] * (p.rank + 1 - len(ranks))
        ranks[p.rank] = max(ranks[p.rank], p.done)
        frames = max(frames, p.frames)
    progress: dict[str, Any] = {"attempt": attempt, "ranks": ranks}
    if frames > 0:
        progress.update(_progress(min(frames, sum(ranks)), frames))
    advanced = not same or sum(ranks) > sum(int(n) for n in previous.get("ranks") or [])
    progress["advanceTime"] = iso(now) if advanced else previous.get("advanceTime")
    if all(previous.get(k) == v for k, v in progress.items()):
        return None
    return {"progress": {**progress, "updateTime": iso(now)}}


def training_patch(latest: TrainProgress | None, status: dict[str, Any], attempt: int, now: datetime,
                   pod: str = "") -> dict[str, Any] | None:
    """status.training from the training pod's latest progress line, and the same in words as
    status.progress.summary (the Progress column); None when there is no line yet or nothing changed.
    training.advanceTime is when the step last rose (or the attempt's first line was read): the
    progress timeout runs from it, as from stylize's. `pod`: the pod whose log it is (a replacement
    pod resumes from the checkpoint, possibly below the step shown)."""
    if latest is None:
        return None
    eta = "" if latest.eta is None else f", ETA {_clock(latest.eta)}"
    summary = f"{latest.percent}% ({latest.step}/{latest.steps} steps), {latest.rate:.2f} steps/s{eta}"
    training = {"step": latest.step, "steps": latest.steps, "percent": latest.percent,
                "stepsPerSecond": round(latest.rate, 3), "summary": summary, "attempt": attempt, "pod": pod}
    if latest.eta is not None:
        training["etaSeconds"] = int(latest.eta)
    previous = status.get("training") or {}
    advanced = ((previous.get("attempt"), previous.get("pod")) != (attempt, pod)
                or latest.step > int(previous.get("step") or 0))
    training["advanceTime"] = iso(now) if advanced else previous.get("advanceTime")
    if all(previous.get(k) == v for k, v in training.items()):
        return None
    return {"training": {**training, "updateTime": iso(now)},
            "progress": {"summary": f"training {latest.percent}% ({latest.step}/{latest.steps} steps)"}}


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _condition(conditions: list[dict[str, Any]], type_: ConditionType) -> dict[str, Any]:
    return next((c for c in conditions if c.get("type") == type_), {})


def _stalled(conditions: list[dict[str, Any]]) -> bool:
    return any(c.get("type") == ConditionType.STALLED and c.get("status") == "True" for c in conditions)


def set_condition(conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str,
                  generation: int | None, now: datetime) -> list[dict[str, Any]]:
    """conditions with `type_` set; lastTransitionTime moves only when the status does."""
    old = next((c for c in conditions if c.get("type") == type_), None)
    new = {"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == status
           and old.get("lastTransitionTime") else iso(now)}
    if generation is not None:
        new["observedGeneration"] = generation
    return [new if c is old else c for c in conditions] if old else [*conditions, new]


def _progress(done: int, frames: int) -> dict[str, Any]:
    percent = 100 * done // frames
    return {"framesDone": done, "framesTotal": frames, "percent": percent,
            "summary": f"{percent}% ({done}/{frames})"}


def _finished_progress(status: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """Stylize succeeded, so every frame is done, whatever the last progress line said."""
    frames = (status.get("progress") or {}).get("framesTotal")
    return {**_progress(frames, frames), "updateTime": iso(now)} if frames else None
