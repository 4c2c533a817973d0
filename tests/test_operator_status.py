"""What the operator writes into a StyleTransferJob's status and Events, and the URIs it shows:
conditions in the standard shape, progress from the ranks' lines, and never a secret. Pure."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from stylebatch.progress import RankProgress, format_line, latest_by_rank, latest_train_progress
from stylebatch_operator.crd import SPEC_SCHEMA, apply_defaults
from stylebatch_operator.decide import Action, Failure
from stylebatch_operator.settings import Settings
from stylebatch_operator.spec import resolve
from stylebatch_operator.states import ActionKind
from stylebatch_operator.status import disruption_patch, progress_patch, set_condition, training_patch, transition
from stylebatch_operator.uris import redact, strip_secrets, work_dir

EXAMPLE = Path(__file__).resolve().parent.parent / "manifests" / "examples" / "job.yaml"
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
SAS = "sv=2024-05-04&ss=b&srt=co&sp=rwl&se=2026-06-01&sig=S3CR3T%2Bsig"


def stj(**spec: Any) -> dict[str, Any]:
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"].update(namespace="media", uid="0123456789abcdef", generation=1)
    obj["spec"] = apply_defaults({**obj["spec"], **spec}, SPEC_SCHEMA)
    return obj


def accept(obj: dict[str, Any]) -> Action:
    """What decide() returns for a new job, with the chart's default storage."""
    return Action(ActionKind.START, reason="Accepted", spec=resolve(obj["spec"], Settings(jobs={"storage": {"secretName": "stylebatch-storage"}})))


def apply(obj: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    """The status after a JSON merge patch, as the API server stores it."""
    obj = copy.deepcopy(obj)
    status = obj.setdefault("status", {})
    for key, value in (patch or {}).items():
        if isinstance(value, dict) and isinstance(status.get(key), dict):
            status[key] = {**status[key], **value}
        else:
            status[key] = value
    return obj


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj["status"]["conditions"]}


def test_accepting_records_the_spec_start_and_a_safe_output_uri():
    obj = stj(output=f"https://acct.blob.core.windows.net/videos/out/clip.mp4?{SAS}")
    patch = transition(obj, accept(obj), T0).patch
    assert patch["phase"] == "Pending"
    assert patch["acceptedSpec"] == {**obj["spec"], "output": "https://acct.blob.core.windows.net/videos/out/clip.mp4"}
    # what it runs with: the operator's defaults filled in, at this moment, once
    assert patch["effectiveSpec"] == {**accept(obj).spec, "output": "https://acct.blob.core.windows.net/videos/out/clip.mp4"}
    assert patch["effectiveSpec"]["storage"] == {"secretName": "stylebatch-storage"}
    assert patch["acceptedGeneration"] == 1
    assert patch["startTime"] == "2026-05-01T12:00:00Z"
    assert patch["outputURI"] == "https://acct.blob.core.windows.net/videos/out/clip.mp4"
    assert patch["workDir"] == "https://acct.blob.core.windows.net/videos/out/.stylebatch-work/media/orangutan-01234567/"
    assert "sig=" not in str(patch) and "S3CR3T" not in str(patch)
    assert {c["type"]: c["status"] for c in patch["conditions"]} == {"Running": "False", "Succeeded": "False",
                                                                      "Failed": "False"}


def test_a_whole_run_moves_phase_conditions_and_counters():
    obj = stj()
    obj = apply(obj, transition(obj, accept(obj), T0).patch)
    obj = apply(obj, transition(obj, Action(ActionKind.CREATE, "preprocess", 1, "PreprocessStarted"), T0).patch)
    assert obj["status"]["phase"] == "Preprocessing"
    assert obj["status"]["children"] == {"preprocess": "orangutan-preprocess-1"}
    running_since = conditions(obj)["Running"]["lastTransitionTime"]

    t1 = T0 + timedelta(minutes=3)
    obj = apply(obj, transition(obj, Action(ActionKind.ADVANCE, "stylize", 1, "PreprocessSucceeded"), t1).patch)
    assert obj["status"]["phase"] == "Stylizing"
    assert conditions(obj)["Running"]["lastTransitionTime"] == running_since  # still True: no transition
    assert conditions(obj)["Running"]["message"] == "MPIJob orangutan-stylize-1 (attempt 1)"

    failure = Failure("stylize", 1, "MPIJob/orangutan-stylize-1", "MPIJobEvicted", "1/2 workers are evicted")
    obj = apply(obj, transition(obj, Action(ActionKind.RETRY, "stylize", 2, "Retrying", "...", failure=failure), t1).patch)
    assert obj["status"]["retries"] == 1
    assert obj["status"]["attempts"] == {"preprocess": 1, "stylize": 2}
    assert obj["status"]["failure"]["reason"] == "MPIJobEvicted"

    obj = apply(obj, progress_patch(latest_by_rank([format_line(RankProgress(0, 2, 30, 50, 100))]), obj["status"], 2, t1))
    obj = apply(obj, transition(obj, Action(ActionKind.ADVANCE, "postprocess", 1, "StylizeSucceeded"), t1).patch)
    assert obj["status"]["progress"]["framesDone"] == 100 and obj["status"]["progress"]["percent"] == 100

    t2 = t1 + timedelta(minutes=1)
    obj = apply(obj, transition(obj, Action(ActionKind.SUCCEED, reason="Succeeded", message="wrote az://videos/x.mp4"), t2).patch)
    c = conditions(obj)
    assert obj["status"]["phase"] == "Succeeded" and obj["status"]["completionTime"] == "2026-05-01T12:04:00Z"
    assert (c["Succeeded"]["status"], c["Running"]["status"], c["Failed"]["status"]) == ("True", "False", "False")
    assert c["Succeeded"]["lastTransitionTime"] == "2026-05-01T12:04:00Z"
    assert all(cond["observedGeneration"] == 1 for cond in c.values())
    assert obj["status"]["observedGeneration"] == 1


def test_adopting_records_the_child_like_creating_it():
    obj = stj()
    obj = apply(obj, transition(obj, accept(obj), T0).patch)
    adopted = apply(obj, transition(obj, Action(ActionKind.ADOPT, "preprocess", 1, "PreprocessStarted"), T0).patch)
    created = apply(obj, transition(obj, Action(ActionKind.CREATE, "preprocess", 1, "PreprocessStarted"), T0).patch)
    assert adopted["status"] == created["status"]
    assert adopted["status"]["children"] == {"preprocess": "orangutan-preprocess-1"}


def test_failure_sets_failed_condition_with_the_reason():
    obj = stj()
    obj = apply(obj, transition(obj, accept(obj), T0).patch)
    failure = Failure("preprocess", 4, "Job/orangutan-preprocess-4", "BackoffLimitExceeded", "stylebatch: error: x")
    patch = transition(obj, Action(ActionKind.FAIL, "preprocess", 4, "RetriesExhausted", "Job ... failed", failure=failure), T0).patch
    obj = apply(obj, patch)
    assert obj["status"]["phase"] == "Failed"
    assert conditions(obj)["Failed"]["status"] == "True"
    assert conditions(obj)["Failed"]["reason"] == "RetriesExhausted"
    assert obj["status"]["failure"] == {"stage": "preprocess", "attempt": 4, "child": "Job/orangutan-preprocess-4",
                                        "reason": "BackoffLimitExceeded", "message": "stylebatch: error: x"}


def test_waiting_writes_nothing_and_posts_no_event():
    change = transition(stj(), Action(ActionKind.WAIT, "stylize", 1), T0)
    assert (change.patch, change.event) == (None, None)


@pytest.mark.parametrize("action, type_", [
    (accept(stj()), "Normal"),
    (Action(ActionKind.CREATE, "preprocess", 1, "PreprocessStarted"), "Normal"),
    (Action(ActionKind.CREATE, "stylize", 1, "ChildMissing"), "Warning"),
    (Action(ActionKind.ADOPT, "preprocess", 1, "PreprocessStarted"), "Normal"),
    (Action(ActionKind.ADVANCE, "stylize", 1, "PreprocessSucceeded"), "Normal"),
    (Action(ActionKind.RETRY, "stylize", 2, "Retrying"), "Warning"),
    (Action(ActionKind.FAIL, "stylize", 4, "RetriesExhausted"), "Warning"),
    (Action(ActionKind.SUCCEED, reason="Succeeded"), "Normal"),
])
def test_every_transition_posts_an_event(action, type_):
    assert transition(stj(), action, T0).event[:2] == (type_, action.reason)


def test_condition_transition_time_moves_only_with_its_status():
    first = set_condition([], "Running", "True", "Preprocessing", "", 1, T0)
    same = set_condition(first, "Running", "True", "Stylizing", "", 1, T0 + timedelta(minutes=5))
    flipped = set_condition(same, "Running", "False", "Succeeded", "", 1, T0 + timedelta(minutes=9))
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"] and same[0]["reason"] == "Stylizing"
    assert flipped[0]["lastTransitionTime"] == "2026-05-01T12:09:00Z"
    assert len(flipped) == 1


def test_progress_sums_the_ranks_latest_lines():
    lines = [format_line(RankProgress(0, 2, 10, 60, 120)), "ffmpeg noise",
             format_line(RankProgress(1, 2, 25, 60, 120)), format_line(RankProgress(0, 2, 20, 60, 120))]
    patch = progress_patch(latest_by_rank(lines), {}, 1, T0)
    assert patch["progress"] == {"framesDone": 45, "framesTotal": 120, "percent": 37, "summary": "37% (45/120)",
                                 "attempt": 1, "ranks": [20, 25], "advanceTime": "2026-05-01T12:00:00Z",
                                 "updateTime": "2026-05-01T12:00:00Z"}


def test_unchanged_or_missing_progress_writes_nothing():
    latest = latest_by_rank([format_line(RankProgress(0, 1, 5, 10, 10))])
    first = progress_patch(latest, {}, 1, T0)
    assert progress_patch(latest, first, 1, T0 + timedelta(seconds=10)) is None
    assert progress_patch(None, first, 1, T0) is None


def test_progress_never_goes_back_when_a_finished_rank_drops_out_of_the_log_tail():
    status = progress_patch(latest_by_rank([format_line(RankProgress(0, 2, 50, 50, 100)),
                                            format_line(RankProgress(1, 2, 20, 50, 100))]), {}, 1, T0)
    # rank 0 is done and silent; 1000 lines of rank 1 later, only rank 1 is in the tail
    later = progress_patch(latest_by_rank([format_line(RankProgress(1, 2, 30, 50, 100))]), status, 1,
                           T0 + timedelta(seconds=10))
    assert later["progress"]["summary"] == "80% (80/100)" and later["progress"]["ranks"] == [50, 30]
    assert later["progress"]["advanceTime"] == "2026-05-01T12:00:10Z"


def test_the_progress_clock_stops_when_no_frame_is_added_and_restarts_with_a_new_attempt():
    line = [format_line(RankProgress(0, 1, 5, 10, 10))]
    first = progress_patch(latest_by_rank(line), {}, 1, T0)
    # nothing new, or only an older line read again: advanceTime stays
    stale = progress_patch(latest_by_rank([format_line(RankProgress(0, 1, 3, 10, 10))]), first, 1,
                           T0 + timedelta(minutes=5))
    assert stale is None
    # a new attempt's launcher, before its first line: the clock starts again, counts start over
    retried = progress_patch({}, first, 2, T0 + timedelta(minutes=6))
    assert retried["progress"]["attempt"] == 2 and retried["progress"]["ranks"] == []
    assert retried["progress"]["advanceTime"] == "2026-05-01T12:06:00Z"


@pytest.mark.parametrize("output, expected", [
    ("az://videos/out/clip.mp4", "az://videos/out/.stylebatch-work/media/job-0123abcd/"),
    ("az://videos/clip.mp4", "az://videos/.stylebatch-work/media/job-0123abcd/"),
    (f"https://acct.blob.core.windows.net/videos/clip.mp4?{SAS}",
     "https://acct.blob.core.windows.net/videos/.stylebatch-work/media/job-0123abcd/"),
    ("/data/out/clip.mp4", "/data/out/.stylebatch-work/media/job-0123abcd/"),
])
def test_work_dir_sits_next_to_the_output_without_any_sas(output, expected):
    assert work_dir(output, "media", "job", "0123abcdef") == expected


def test_shown_uris_and_messages_lose_their_secrets():
    assert strip_secrets(f"https://user:pw@acct.blob.core.windows.net/v/a.mp4?{SAS}") == \
        "https://acct.blob.core.windows.net/v/a.mp4"
    text = redact(f"GET https://acct.blob.core.windows.net/v/a.mp4?{SAS} failed; "
                  "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abc123==;EndpointSuffix=x")
    assert "S3CR3T" not in text and "abc123" not in text
    assert "https://acct.blob.core.windows.net/v/a.mp4?<redacted>" in text and "AccountName=acct" in text
    # a SAS pasted after '&' and percent-encoded (a name, not a query string) in a pod's last line
    text = redact("stylebatch: error: az://videos/in.mp4%26sp%3Dr%26sig%3DS3CR3Tsig%2Bx%3D not found")
    assert "S3CR3T" not in text and "REDACTED" in text


# --- training progress (spec.train) ---------------------------------------------------------------

TRAIN_LOG = [
    "stylebatch: resuming from az://videos/out/.stylebatch-work/media/orangutan-01234567.pth.ckpt at step 1000",
    "stylebatch: step 1001/4000 loss 2.1e+06 content 1e+05 style 2e+06 0.00 steps/s ETA --:--:--",
    '{"time": "2026-05-01T12:00:10Z", "level": "INFO", "message": "step 1680/4000 loss 9.9e+05 content 2e+05 '
    'style 7.9e+05 3.10 steps/s ETA 00:12:28", "job": "orangutan"}',
    "an unrelated line",
]


def test_training_progress_is_the_latest_step_line_in_words_and_figures():
    latest = latest_train_progress(TRAIN_LOG)  # text and JSON log records alike
    assert (latest.step, latest.steps, latest.rate, latest.eta, latest.percent) == (1680, 4000, 3.1, 748, 42)
    patch = training_patch(latest, {}, 2, T0, "orangutan-train-2-x")
    assert patch["training"] == {"step": 1680, "steps": 4000, "percent": 42, "stepsPerSecond": 3.1,
                                 "etaSeconds": 748, "summary": "42% (1680/4000 steps), 3.10 steps/s, ETA 00:12:28",
                                 "attempt": 2, "pod": "orangutan-train-2-x", "advanceTime": "2026-05-01T12:00:00Z",
                                 "updateTime": "2026-05-01T12:00:00Z"}
    assert patch["progress"] == {"summary": "training 42% (1680/4000 steps)"}  # the Progress column
    assert training_patch(latest, apply(stj(), patch)["status"], 2, T0 + timedelta(seconds=30),
                          "orangutan-train-2-x") is None  # nothing new: no write
    assert training_patch(latest_train_progress(TRAIN_LOG[:2]), {}, 1, T0)["training"]["summary"] == \
        "25% (1001/4000 steps), 0.00 steps/s"  # no ETA yet
    assert training_patch(latest_train_progress(TRAIN_LOG[3:]), {}, 1, T0) is None


def test_the_training_clock_runs_from_the_last_new_step_and_restarts_with_a_new_pod_or_attempt():
    status = apply(stj(), training_patch(latest_train_progress(TRAIN_LOG), {}, 1, T0, "a"))["status"]
    later = T0 + timedelta(minutes=5)
    slower = latest_train_progress([TRAIN_LOG[2].replace("3.10 steps/s", "2.90 steps/s")])
    assert training_patch(slower, status, 1, later, "a")["training"]["advanceTime"] == "2026-05-01T12:00:00Z"
    for pod, attempt in (("b", 1), ("a", 2)):  # a replacement pod resumed from the checkpoint, or a retry
        resumed = latest_train_progress(TRAIN_LOG[1:2])  # step 1001, below the 1680 shown
        assert training_patch(resumed, status, attempt, later, pod)["training"]["advanceTime"] == "2026-05-01T12:05:00Z"


def test_after_the_training_its_figures_say_done_and_stylize_progress_starts_from_nothing():
    obj = stj(style="az://styles/starry.jpg", train={})
    obj = apply(obj, transition(obj, accept(obj), T0).patch)
    obj = apply(obj, transition(obj, Action(ActionKind.CREATE, "train", 1, "TrainStarted", "created"), T0).patch)
    assert obj["status"]["phase"] == "Training"
    obj = apply(obj, training_patch(latest_train_progress(TRAIN_LOG), obj["status"], 1, T0))
    obj = apply(obj, transition(obj, Action(ActionKind.ADVANCE, "preprocess", 1, "TrainSucceeded", "done"), T0).patch)
    s = obj["status"]
    assert s["phase"] == "Preprocessing" and s["progress"] is None  # a merge patch's null deletes it
    assert (s["training"]["step"], s["training"]["percent"], s["training"]["summary"]) == (
        4000, 100, "100% (4000/4000 steps)")


def every_action(obj: dict[str, Any]) -> list[Action]:
    """One action of each kind, as decide() makes them for the sample job."""
    failure = Failure("stylize", 1, "MPIJob/orangutan-stylize-1", "Evicted", "")
    made = {ActionKind.START: accept(obj), ActionKind.RETRY: Action(ActionKind.RETRY, "stylize", 2, "Retrying", failure=failure),
            ActionKind.FAIL: Action(ActionKind.FAIL, "stylize", 1, "RetriesExhausted", failure=failure),
            ActionKind.RETRY_WAITS: Action(ActionKind.RETRY_WAITS, "stylize", 2, "ChildRefused", "m", failure=failure)}
    return [made.get(kind) or Action(kind, "stylize", 1, reason=f"{kind}Reason", message="m") for kind in ActionKind]


def test_every_action_kind_has_its_transition_and_writes_only_the_crds_phases_and_declared_conditions():
    from stylebatch_operator.crd import crd, openapi_schema
    from stylebatch_operator.states import ConditionType, Phase

    status_schema = openapi_schema()["properties"]["status"]["properties"]
    assert status_schema["phase"]["enum"] == [p.value for p in Phase]
    (column,) = [c for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"] if c["name"] == "Phase"]
    assert all(p.value in column["description"] for p in Phase)
    condition_text = status_schema["conditions"]["items"]["properties"]["type"]["description"]
    assert all(c.value in condition_text for c in ConditionType)
    obj = stj()
    obj = apply(obj, transition(obj, accept(obj), T0).patch)
    written_conditions, written_phases = set(), set()
    for action in every_action(obj):
        change = transition(obj, action, T0)  # raises for a kind it does not know
        patch = change.patch or {}
        written_phases |= {patch["phase"]} if "phase" in patch else set()
        written_conditions |= {c["type"] for c in patch.get("conditions") or []}
        silent = action.kind in (ActionKind.WAIT, ActionKind.NOTHING)
        assert (change.event is None) == silent, action.kind
    assert written_phases <= set(Phase) and written_conditions <= set(ConditionType)
    assert {Phase.PENDING, Phase.STYLIZING, Phase.SUCCEEDED, Phase.FAILED} <= written_phases
    assert set(ConditionType) == written_conditions


def running(kind: str, name: str, uid: str = "uid-1") -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "uid": uid},
            "status": {"conditions": [{"type": "Running", "status": "True"}]}}


PREEMPTED = {"metadata": {"name": "orangutan-stylize-1-worker-1"}, "status": {"phase": "Running", "conditions": [
    {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "message": "preempted"}]}}


@pytest.mark.parametrize("case, child, pods, recorded, expected", [
    ("a worker of the running MPIJob preempted: recorded", running("MPIJob", "orangutan-stylize-1"), [PREEMPTED], None,
     {"child": "MPIJob/orangutan-stylize-1", "uid": "uid-1", "seenTime": "2026-05-01T12:00:00Z",
      "message": "pod orangutan-stylize-1-worker-1: PreemptionByScheduler: preempted"}),
    ("recorded already: the first one stays", running("MPIJob", "orangutan-stylize-1"), [PREEMPTED],
     {"child": "MPIJob/orangutan-stylize-1", "uid": "uid-1"}, None),
    ("recorded for the MPIJob of that name before: this one's recorded", running("MPIJob", "orangutan-stylize-1"),
     [PREEMPTED], {"child": "MPIJob/orangutan-stylize-1", "uid": "uid-0"}, "new"),
    ("nothing wrong", running("MPIJob", "orangutan-stylize-1"), [{"status": {"phase": "Running"}}], None, None),
    ("a worker evicted for outgrowing its own scratch: its own doing, not recorded",
     running("MPIJob", "orangutan-stylize-1"), [{"metadata": {"name": "orangutan-stylize-1-worker-1"}, "status": {
         "phase": "Failed", "reason": "Evicted",
         "message": 'Usage of EmptyDir volume "scratch" exceeds the limit "50Gi". '}}], None, None),
    ("a worker evicted for node pressure: recorded", running("MPIJob", "orangutan-stylize-1"),
     [{"metadata": {"name": "orangutan-stylize-1-worker-1"}, "status": {
         "phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory. "}}], None,
     {"child": "MPIJob/orangutan-stylize-1", "uid": "uid-1", "seenTime": "2026-05-01T12:00:00Z",
      "message": "pod orangutan-stylize-1-worker-1: Evicted: The node was low on resource: memory."}),
    ("a batch Job's pod: its podFailurePolicy replaces it, a later failure is the Job's own",
     running("Job", "orangutan-preprocess-1"), [PREEMPTED], None, None),
    ("an MPIJob already failed: decide reads its pods itself",
     {**running("MPIJob", "orangutan-stylize-1"), "status": {"conditions": [{"type": "Failed", "status": "True"}]}},
     [PREEMPTED], None, None),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_disruption_of_a_running_mpijobs_pod_is_recorded_once_before_its_pod_is_gone(case, child, pods, recorded,
                                                                                         expected):
    patch = disruption_patch(child, pods, {"disruption": recorded} if recorded else {}, T0)
    if expected == "new":
        assert patch["disruption"]["uid"] == "uid-1"
    else:
        assert (patch or {}).get("disruption") == expected


def test_the_next_child_starts_with_no_disruption_recorded():
    obj = {**stj(), "status": {"phase": "Stylizing", "attempts": {"stylize": 1}, "children": {"stylize": "orangutan-stylize-1"},
                               "disruption": {"child": "MPIJob/orangutan-stylize-1", "uid": "uid-1"}, "conditions": []}}
    obj["status"]["effectiveSpec"] = resolve(obj["spec"], Settings(jobs={"storage": {"secretName": "s"}}))
    failure = Failure("stylize", 1, "MPIJob/orangutan-stylize-1", "BackoffLimitExceeded/", "")
    retry = Action(ActionKind.RETRY, "stylize", 2, "Disrupted", "…", failure=failure, counted=False)
    assert transition(obj, retry, T0).patch["disruption"] is None
    adopt = Action(ActionKind.ADOPT, "stylize", 1, "StylizeStarted", "…")
    assert "disruption" not in transition(obj, adopt, T0).patch
