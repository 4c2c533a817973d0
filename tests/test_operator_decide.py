"""decide(): what the operator does next, from a StyleTransferJob and its observed child, in every
state, on every kind of failure, and after a restart. Pure: no server, no kopf."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from stylebatch_operator.crd import SPEC_SCHEMA, apply_defaults
from stylebatch_operator.decide import Action, all_children, cleanup_due, decide, kind_not_served, not_created
from stylebatch_operator.observe import QUEUE_UNREAD, Stall, queue_stall
from stylebatch_operator.settings import Settings
from stylebatch_operator.spec import resolve
from stylebatch_operator.states import ActionKind
from stylebatch_operator.status import transition

EXAMPLE = Path(__file__).resolve().parent.parent / "manifests" / "examples" / "job.yaml"
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
STARTED = "2026-05-01T11:00:00Z"  # an hour before NOW; the example's deadline is two hours
# The operator as the chart's default values set it up.
SETTINGS = Settings(jobs={"workers": 2, "storage": {"secretName": "stylebatch-storage"}, "serviceAccountName": "stylebatch-job"})


def stj(phase: str | None = None, *, attempts: dict[str, int] | None = None, used: int = 0,
        children: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """The sample job as the API server stores it, with a status as the operator would have left it."""
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"].update(namespace="media", uid=UID, generation=1)
    obj["spec"] = apply_defaults({**obj["spec"], **spec}, SPEC_SCHEMA)
    if phase is not None:
        obj["status"] = {"phase": phase, "acceptedSpec": copy.deepcopy(obj["spec"]), "acceptedGeneration": 1,
                         "effectiveSpec": resolve(obj["spec"], SETTINGS),
                         "startTime": STARTED, "attempts": attempts or {}, "retries": used,
                         "children": children if children is not None else
                         {stage: f"orangutan-{stage}-{n}" for stage, n in (attempts or {}).items()},
                         "conditions": []}
    return obj


UID = "0123456789abcdef"  # the sample job's
OWNED = [{"apiVersion": "stylebatch.io/v1alpha1", "kind": "StyleTransferJob", "name": "orangutan", "uid": UID,
          "controller": True, "blockOwnerDeletion": True}]


def job(name: str, *conditions: tuple[str, str, str], owners: list[dict[str, Any]] = OWNED) -> dict[str, Any]:
    """A child as the operator makes it (controlled by the sample job), with these conditions."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "ownerReferences": owners},
            "status": {"conditions": [{"type": t, "status": "True", "reason": r, "message": m}
                                      for t, r, m in conditions]}}


def mpijob(name: str, *conditions: tuple[str, str, str], owners: list[dict[str, Any]] = OWNED) -> dict[str, Any]:
    return {**job(name, *conditions, owners=owners), "apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob"}


PHASES = {"train": "Training", "preprocess": "Preprocessing", "stylize": "Stylizing", "postprocess": "Postprocessing"}
COMPLETE = ("Complete", "", "")
MPI_SUCCEEDED = ("Succeeded", "MPIJobSucceeded", "MPIJob media/x successfully completed.")
BACKOFF = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
EVICTED = ("Failed", "MPIJobEvicted", "1/2 workers are evicted")
MPI_FAILED = ("Failed", "MPIJobFailed", "launcher failed")

PRE1, PRE2 = "orangutan-preprocess-1", "orangutan-preprocess-2"
STY1, STY2, STY4 = "orangutan-stylize-1", "orangutan-stylize-2", "orangutan-stylize-4"
POST1 = "orangutan-postprocess-1"
TRAIN1, TRAIN2 = "orangutan-train-1", "orangutan-train-2"
TRAINED = {"style": "az://styles/starry.jpg", "train": {"steps": 2000}}

# (case, job, observed children, expected (kind, stage, attempt, reason))
CASES = [
    ("new job is accepted", stj(), [], (ActionKind.START, None, 0, "Accepted")),
    ("accepted job creates its preprocess Job", stj("Pending"), [], (ActionKind.CREATE, "preprocess", 1, "PreprocessStarted")),
    ("preprocess running: wait", stj("Preprocessing", attempts={"preprocess": 1}, children={"preprocess": PRE1}),
     [job(PRE1)], (ActionKind.WAIT, "preprocess", 1, "")),
    ("preprocess done: MPIJob next",
     stj("Preprocessing", attempts={"preprocess": 1}), [job(PRE1, COMPLETE)], (ActionKind.ADVANCE, "stylize", 1, "PreprocessSucceeded")),
    ("stylize running: wait", stj("Stylizing", attempts={"preprocess": 1, "stylize": 1}),
     [mpijob(STY1, ("Running", "MPIJobRunning", ""))], (ActionKind.WAIT, "stylize", 1, "")),
    ("stylize done: postprocess next", stj("Stylizing", attempts={"stylize": 1}),
     [mpijob(STY1, MPI_SUCCEEDED)], (ActionKind.ADVANCE, "postprocess", 1, "StylizeSucceeded")),
    ("postprocess done: Succeeded", stj("Postprocessing", attempts={"postprocess": 1}),
     [job(POST1, COMPLETE)], (ActionKind.SUCCEED, None, 0, "Succeeded")),
    ("failed preprocess with budget left: retry", stj("Preprocessing", attempts={"preprocess": 1}),
     [job(PRE1, BACKOFF)], (ActionKind.RETRY, "preprocess", 2, "Retrying")),
    ("evicted spot worker: retry the MPIJob, not counted", stj("Stylizing", attempts={"stylize": 1}),
     [mpijob(STY1, EVICTED)], (ActionKind.RETRY, "stylize", 2, "Disrupted")),
    ("budget spent: Failed", stj("Stylizing", attempts={"stylize": 4}, used=3),
     [mpijob(STY4, MPI_FAILED)], (ActionKind.FAIL, "stylize", 4, "RetriesExhausted")),
    ("budget spent, then a worker is evicted: still retried", stj("Stylizing", attempts={"stylize": 4}, used=3),
     [mpijob(STY4, EVICTED)], (ActionKind.RETRY, "stylize", 5, "Disrupted")),
    ("no retries at all: first failure is final", stj("Preprocessing", attempts={"preprocess": 1}, retries=0),
     [job(PRE1, BACKOFF)], (ActionKind.FAIL, "preprocess", 1, "RetriesExhausted")),
    ("child hit its deadline: no retry", stj("Preprocessing", attempts={"preprocess": 1}),
     [job(PRE1, ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"))],
     (ActionKind.FAIL, "preprocess", 0, "DeadlineExceeded")),
    ("job deadline passed while running", stj("Stylizing", attempts={"stylize": 1}, activeDeadlineSeconds=1800),
     [mpijob(STY1)], (ActionKind.FAIL, "stylize", 0, "DeadlineExceeded")),
    ("job deadline passed between stages", stj("Preprocessing", attempts={"preprocess": 1}, activeDeadlineSeconds=3600),
     [job(PRE1, COMPLETE)], (ActionKind.FAIL, "preprocess", 0, "DeadlineExceeded")),
    ("Job still terminating pods (FailureTarget): wait", stj("Preprocessing", attempts={"preprocess": 1}),
     [job(PRE1, ("FailureTarget", "BackoffLimitExceeded", ""))], (ActionKind.WAIT, "preprocess", 1, "")),
    ("Job success criteria met, pods still finishing: wait", stj("Postprocessing", attempts={"postprocess": 1}),
     [job(POST1, ("SuccessCriteriaMet", "CompletionsReached", ""))], (ActionKind.WAIT, "postprocess", 1, "")),
    ("restart mid-retry: follows the recorded attempt, not attempt 1",
     stj("Stylizing", attempts={"stylize": 2}, used=1), [mpijob(STY1, EVICTED), mpijob(STY2)], (ActionKind.WAIT, "stylize", 2, "")),
    ("recorded child gone (deleted by hand): create it again",
     stj("Stylizing", attempts={"stylize": 2}, used=1), [mpijob(STY1, EVICTED)], (ActionKind.CREATE, "stylize", 2, "ChildMissing")),
    ("child exists but the status never recorded it (crash after create): adopt it",
     stj("Pending"), [job(PRE1)], (ActionKind.ADOPT, "preprocess", 1, "PreprocessStarted")),
    ("child deleted behind the operator's back: make it again",
     stj("Stylizing", attempts={"stylize": 1}, children={"stylize": STY1}), [], (ActionKind.CREATE, "stylize", 1, "ChildMissing")),
    ("restart before the status recorded the next stage: same step again",
     stj("Preprocessing", attempts={"preprocess": 1}), [job(PRE1, COMPLETE), mpijob(STY1)], (ActionKind.ADVANCE, "stylize", 1, "PreprocessSucceeded")),
    ("retried preprocess succeeds", stj("Preprocessing", attempts={"preprocess": 2}, used=1),
     [job(PRE1, BACKOFF), job(PRE2, COMPLETE)], (ActionKind.ADVANCE, "stylize", 1, "PreprocessSucceeded")),
    ("accepted job that trains a style creates its training Job first", stj("Pending", **TRAINED), [],
     (ActionKind.CREATE, "train", 1, "TrainStarted")),
    ("training running: wait", stj("Training", attempts={"train": 1}, **TRAINED), [job(TRAIN1)],
     (ActionKind.WAIT, "train", 1, "")),
    ("training done: preprocess next", stj("Training", attempts={"train": 1}, **TRAINED), [job(TRAIN1, COMPLETE)],
     (ActionKind.ADVANCE, "preprocess", 1, "TrainSucceeded")),
    ("training failed with budget left: retried (it resumes from its checkpoint)",
     stj("Training", attempts={"train": 1}, **TRAINED), [job(TRAIN1, BACKOFF)], (ActionKind.RETRY, "train", 2, "Retrying")),
    ("training failed, budget spent: Failed", stj("Training", attempts={"train": 2}, used=1, retries=1, **TRAINED),
     [job(TRAIN2, BACKOFF)], (ActionKind.FAIL, "train", 2, "RetriesExhausted")),
    ("training child adopted after a crash", stj("Pending", **TRAINED), [job(TRAIN1)],
     (ActionKind.ADOPT, "train", 1, "TrainStarted")),
    ("trained job's preprocess done: stylize next, as without training",
     stj("Preprocessing", attempts={"train": 1, "preprocess": 1}, **TRAINED), [job(PRE1, COMPLETE)],
     (ActionKind.ADVANCE, "stylize", 1, "PreprocessSucceeded")),
    ("Succeeded job: nothing more", stj("Succeeded"), [], (ActionKind.NOTHING, None, 0, "")),
    ("Failed job: nothing more", stj("Failed"), [job(PRE1, BACKOFF)], (ActionKind.NOTHING, None, 0, "")),
]


@pytest.mark.parametrize("case, obj, children, expected", CASES, ids=[c[0] for c in CASES])
def test_next_step(case, obj, children, expected):
    action = decide(obj, {c["metadata"]["name"]: c for c in children}, now=NOW, settings=SETTINGS)
    assert (action.kind, action.stage, action.attempt, action.reason) == expected


EARLIER = [{**OWNED[0], "uid": "uid-of-an-earlier-orangutan"}]  # deleted with --cascade=orphan, or not yet collected
# (case, job, the child by that name, which is not the job's)
NOT_OURS = [
    ("a succeeded preprocess Job of an earlier job", stj("Pending"), job(PRE1, COMPLETE, owners=EARLIER)),
    ("a failed one", stj("Pending"), job(PRE1, BACKOFF, owners=EARLIER)),
    ("a running one", stj("Pending"), job(PRE1, owners=EARLIER)),
    ("a succeeded MPIJob of an earlier job, the job's preprocess done", stj("Stylizing", attempts={"stylize": 1}),
     mpijob(STY1, MPI_SUCCEEDED, owners=EARLIER)),
    ("a succeeded postprocess Job", stj("Postprocessing", attempts={"postprocess": 1}),
     job(POST1, COMPLETE, owners=EARLIER)),
    ("a Job nobody owns", stj("Pending"), job(PRE1, COMPLETE, owners=[])),
]


@pytest.mark.parametrize("case, obj, foreign", NOT_OURS, ids=[c[0] for c in NOT_OURS])
def test_a_child_name_held_by_an_object_the_job_does_not_control_is_never_taken_for_its_own(case, obj, foreign):
    name = foreign["metadata"]["name"]
    shown = decide(obj, {name: foreign}, now=NOW, settings=SETTINGS)
    assert (shown.kind, shown.reason, shown.deletes) == (ActionKind.STALL, "ChildNameTaken", ())
    assert f"{foreign['kind']} {name} exists but is not this job's" in shown.message
    assert "delete it, or give the job another name" in shown.message
    obj["status"] = {**obj["status"], **transition(obj, shown, NOW).patch}
    assert decide(obj, {name: foreign}, now=NOW + timedelta(seconds=60), settings=SETTINGS).kind == ActionKind.WAIT
    failed = decide(obj, {name: foreign}, now=NOW + timedelta(seconds=120), settings=SETTINGS)
    assert (failed.kind, failed.reason, failed.deletes) == (ActionKind.FAIL, "ChildNameTaken", ())  # not ours to delete
    # once it is gone, the job makes its own
    assert decide(obj, {}, now=NOW + timedelta(seconds=60), settings=SETTINGS).kind == ActionKind.CREATE


def test_retry_reports_the_childs_reason_and_the_budget():
    action = decide(stj("Stylizing", attempts={"stylize": 1}, used=1),
                    {STY1: mpijob(STY1, MPI_FAILED)}, now=NOW)
    assert action.failure is not None
    assert (action.failure.stage, action.failure.child, action.failure.reason) == \
        ("stylize", f"MPIJob/{STY1}", "MPIJobFailed")
    assert "launcher failed" in action.message
    assert "retry 2 of 3" in action.message and STY2 in action.message


def test_an_eviction_is_retried_without_spending_the_budget_and_the_status_counts_it_apart():
    obj = stj("Stylizing", attempts={"stylize": 1}, used=1)
    action = decide(obj, {STY1: mpijob(STY1, EVICTED)}, now=NOW)
    assert (action.kind, action.reason, action.counted) == (ActionKind.RETRY, "Disrupted", False)
    assert "1/2 workers are evicted" in action.message and "not counted against spec.retries" in action.message
    patch = transition(obj, action, NOW).patch
    assert "retries" not in patch and patch["disruptions"] == 1 and patch["attempts"] == {"stylize": 2}
    assert transition(obj, action, NOW).event == ("Warning", "Disrupted", action.message)


def test_exhausted_budget_names_the_stage_child_and_reason():
    action = decide(stj("Preprocessing", attempts={"preprocess": 4}, used=3),
                    {"orangutan-preprocess-4": job("orangutan-preprocess-4", BACKOFF)}, now=NOW)
    assert action.kind == ActionKind.FAIL
    assert action.failure.child == "Job/orangutan-preprocess-4"
    assert "BackoffLimitExceeded" in action.message and "no retries left" in action.message


def test_failed_pod_detail_joins_the_reason_and_loses_its_secrets():
    pod = {"metadata": {"name": "orangutan-preprocess-1-x7k2p", "creationTimestamp": "2026-05-01T11:01:00Z"},
           "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {
               "exitCode": 2, "reason": "Error",
               "message": "reading input\nstylebatch: error: cannot read "
                          "https://acct.blob.core.windows.net/videos/a.mp4?sv=2024&sig=SECRET: 403\n"}}}]}}
    action = decide(stj("Preprocessing", attempts={"preprocess": 1}), {PRE1: job(PRE1, BACKOFF)},
                    now=NOW, pods=[pod])
    assert "stylebatch: error: cannot read https://acct.blob.core.windows.net/videos/a.mp4" in action.failure.message
    assert "SECRET" not in action.failure.message and "SECRET" not in action.message


def failed_pod(name: str, exit_code: int, message: str = "", reason: str = "Error",
               pod_reason: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {
        "exitCode": exit_code, "reason": reason, "message": message}}}]}
    if pod_reason:
        status["reason"] = pod_reason
    return {"metadata": {"name": name, "creationTimestamp": "2026-05-01T11:01:00Z"}, "status": status}


USER_ERROR_LOG = "reading input\nstylebatch: error: --codec vp9 cannot go into .mp4 (use .webm or .mkv)\n"


@pytest.mark.parametrize("case, stage, child, pod, expected", [
    ("user error (exit 2) in training: Failed at once", "train", job(TRAIN1, BACKOFF),
     failed_pod(TRAIN1 + "-x", 2, "stylebatch: error: painting starry.jpg is not a JPEG, PNG or WebP picture"),
     (ActionKind.FAIL, "InvalidInput")),
    ("training pod evicted: retried, not counted", "train", job(TRAIN1, BACKOFF),
     failed_pod(TRAIN1 + "-x", 143, "", pod_reason="Evicted"), (ActionKind.RETRY, "Disrupted")),
    ("user error (exit 2) in preprocess: Failed at once", "preprocess", job(PRE1, BACKOFF),
     failed_pod(PRE1 + "-x", 2, USER_ERROR_LOG), (ActionKind.FAIL, "InvalidInput")),
    ("user error in the stylize launcher: Failed at once", "stylize", mpijob(STY1, ("Failed", "MPIJobFailed", "")),
     failed_pod(STY1 + "-launcher-x", 2, "stylebatch: error: unknown style 'starry'"), (ActionKind.FAIL, "InvalidInput")),
    ("crash (exit 1): retried", "preprocess", job(PRE1, BACKOFF),
     failed_pod(PRE1 + "-x", 1, "Traceback ...\nRuntimeError: boom"), (ActionKind.RETRY, "Retrying")),
    ("OOMKilled: retried", "preprocess", job(PRE1, BACKOFF),
     failed_pod(PRE1 + "-x", 137, "", reason="OOMKilled"), (ActionKind.RETRY, "Retrying")),
    ("evicted pod: retried, not counted", "preprocess", job(PRE1, BACKOFF),
     failed_pod(PRE1 + "-x", 2, "", pod_reason="Evicted"), (ActionKind.RETRY, "Disrupted")),
], ids=lambda v: v if isinstance(v, str) else "")
def test_user_errors_are_not_retried(case, stage, child, pod, expected):
    obj = stj(PHASES[stage], attempts={stage: 1})
    action = decide(obj, {child["metadata"]["name"]: child}, now=NOW, pods=[pod])
    assert (action.kind, action.reason) == expected


def test_a_failed_training_names_its_reason_and_its_retry_resumes_from_the_checkpoint():
    pod = failed_pod(TRAIN1 + "-x", 1, "stylebatch: step 1200/2000 loss 3e+05\nRuntimeError: CUDA error: an illegal "
                                       "memory access was encountered")
    obj = stj("Training", attempts={"train": 1}, **TRAINED)
    action = decide(obj, {TRAIN1: job(TRAIN1, BACKOFF)}, now=NOW, pods=[pod])
    assert (action.kind, action.failure.stage, action.failure.child) == (ActionKind.RETRY, "train", f"Job/{TRAIN1}")
    assert "CUDA error" in action.failure.message and "CUDA error" in action.message
    assert f"created Job {TRAIN2}" in action.message and "resumes from its last checkpoint" in action.message
    patch = transition(obj, action, NOW).patch
    assert (patch["phase"], patch["attempts"], patch["retries"]) == ("Training", {"train": 2}, 1)
    assert patch["failure"]["stage"] == "train" and patch["reason"] == "Retrying"


def test_a_job_that_trains_is_accepted_saying_so_and_records_where_the_weights_go():
    obj = stj(**TRAINED)
    action = decide(obj, {}, now=NOW, settings=SETTINGS)
    assert action.kind == ActionKind.START
    assert "a style trained for az://styles/starry.jpg (2000 steps at 256 px, first, on one GPU)" in action.message
    patch = transition(obj, action, NOW).patch
    assert patch["trainedStyle"] == "az://videos/stylized/.stylebatch-work/media/orangutan-01234567.pth"
    running = {c["type"]: c for c in patch["conditions"]}["Running"]
    assert running["message"] == "about to create the train Job"


@pytest.mark.parametrize("style, train, words", [
    ("lavender-gold", {}, "spec.train trains a style for the painting spec.style names"),
    ("az://styles/starry.jpg:0.7,lavender-gold:0.3", {}, "no blend"),
    ("az://styles/mine.pth", {}, "no .pth"),
    ("az://styles/starry.jpg", {"content": ["/home/me/clip.mp4"]}, "spec.train.content[0] '/home/me/clip.mp4' is not a blob URI"),
    ("az://styles/starry.jpg", {"content": ["az://v/a.mp4?sv=1&sig=S3CR3T"]}, "spec.train.content[0] 'az://v/a.mp4' carries a query"),
])
def test_a_training_the_worker_could_not_run_fails_at_acceptance(style, train, words):
    action = decide(stj(style=style, train=train), {}, now=NOW, settings=SETTINGS)
    assert (action.kind, action.reason) == (ActionKind.FAIL, "InvalidSpec") and words in action.message
    assert "S3CR3T" not in action.message


def test_a_user_error_fails_with_the_workers_one_line_message():
    pod = failed_pod(PRE1 + "-x", 2, USER_ERROR_LOG)
    action = decide(stj("Preprocessing", attempts={"preprocess": 1}), {PRE1: job(PRE1, BACKOFF)}, now=NOW, pods=[pod])
    line = "stylebatch: error: --codec vp9 cannot go into .mp4 (use .webm or .mkv)"
    assert action.failure.reason == "InvalidInput" and action.failure.message == line
    assert line in action.message and "not retried" in action.message
    patch = transition(stj("Preprocessing", attempts={"preprocess": 1}), action, NOW).patch
    assert patch["phase"] == "Failed" and patch["failure"]["message"] == line
    failed = next(c for c in patch["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "InvalidInput" and line in failed["message"]
    assert transition(stj("Preprocessing", attempts={"preprocess": 1}), action, NOW).event == ("Warning", "InvalidInput", action.message)


def test_evicted_pod_is_named_in_the_failure():
    pod = {"metadata": {"name": "orangutan-stylize-1-worker-1"},
           "status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}}
    action = decide(stj("Stylizing", attempts={"stylize": 1}), {STY1: mpijob(STY1, ("Failed", "BackoffLimitExceeded", ""))},
                    now=NOW, pods=[pod])
    assert "orangutan-stylize-1-worker-1: Evicted" in action.failure.message


def test_children_get_the_time_left_until_the_jobs_deadline():
    action = decide(stj("Preprocessing", attempts={"preprocess": 1}), {PRE1: job(PRE1, COMPLETE)}, now=NOW)
    assert action.deadline_seconds == 3600  # 7200 s deadline, started an hour ago


@pytest.mark.parametrize("spec, problem", [
    ({"storage": {}}, "exactly one of secretName and serviceAccountName"),
    ({"storage": {"secretName": "s", "serviceAccountName": "sa", "accountName": "a"}}, "exactly one"),
    ({"storage": {"serviceAccountName": "sa"}}, "accountName is required"),
    ({"workers": 0}, "spec.workers"),
    ({"input": ""}, "spec.input is required"),
    ({"encoder": {"crf": 20, "bitrate": "4M"}}, "crf or bitrate"),
    ({"output": "az://videos/out/clip.gif"}, "must end in one of .mp4 .mov .m4v .mkv .webm .avi"),
    ({"output": "https://acct.blob.core.windows.net/videos/out?sv=1&sig=S3CR3T"}, "(got no extension)"),
    ({"input": "/data/in.mp4"}, "spec.input '/data/in.mp4' is not a blob URI"),
    ({"output": "out.mp4"}, "spec.output 'out.mp4' is not a blob URI"),
    ({"style": "./mosaic.pth"}, "spec.style './mosaic.pth' looks like a painting or weights file but is not a blob URI"),
    ({"style": "starry.jpg"}, "spec.style 'starry.jpg' looks like a painting or weights file but is not a blob URI"),
    ({"style": "lavender-gold:0.3,starry.webp:0.7"}, "spec.style 'starry.webp' looks like a painting"),
    ({"output": "https://acct.blob.core.windows.net/videos/out/clip.mkv?sv=1&sig=S3CR3T"},
     "spec.output 'https://acct.blob.core.windows.net/videos/out/clip.mkv' carries a query string (a SAS token?): "
     "give the URL without it: credentials go in the storage Secret (keys AZURE_STORAGE_ACCOUNT and "
     "AZURE_STORAGE_SAS_TOKEN, named by spec.storage.secretName)"),
    ({"input": "https://acct.blob.core.windows.net/videos/in.mp4?sv=1&sig=S3CR3T"}, "spec.input"),
    ({"style": "az://styles/mine.pth?sig=S3CR3T"}, "spec.style 'az://styles/mine.pth' carries a query string"),
    ({"workDir": "https://acct.blob.core.windows.net/videos/w/?sig=S3CR3T"}, "spec.workDir"),
    ({"style": "https://ops.blob.core.windows.net/styles/starry.png?sv=1&sig=S3CR3T:0.7,lavender-gold:0.3"},
     "spec.style 'https://ops.blob.core.windows.net/styles/starry.png' carries a query string"),
])
def test_a_spec_the_cluster_let_through_fails_instead_of_running(spec, problem):
    action = decide(stj(**spec), {}, now=NOW, settings=SETTINGS)
    assert (action.kind, action.reason) == (ActionKind.FAIL, "InvalidSpec")
    assert problem in action.message and "S3CR3T" not in action.message


@pytest.mark.parametrize("spec", [
    {"output": "az://videos/out/clip.WEBM", "style": "mosaic"},
    {"output": "https://acct.blob.core.windows.net/videos/out/clip.mkv", "style": "candy:0.5,mosaic:0.5"},
    {"style": "https://ops.blob.core.windows.net/styles/starry.pth"},
    {"style": "az://styles/starry.pth", "input": "http://azurite:10000/devstoreaccount1/videos/in.mp4"},
    {"style": "az://styles/starry.jpg"},
    {"style": "https://ops.blob.core.windows.net/styles/starry.png:0.7,lavender-gold:0.3"},
])
def test_blob_uris_and_supported_containers_are_accepted(spec):
    assert decide(stj(**spec), {}, now=NOW, settings=SETTINGS).kind == ActionKind.START


def test_a_name_too_long_for_child_names_fails():
    obj = stj()
    obj["metadata"]["name"] = "x" * 41
    action = decide(obj, {}, now=NOW, settings=SETTINGS)
    assert action.kind == ActionKind.FAIL and "longer than 40" in action.message


def test_deadline_is_counted_from_the_start():
    obj = stj("Stylizing", attempts={"stylize": 1})
    later = NOW + timedelta(seconds=3599)
    assert decide(obj, {STY1: mpijob(STY1)}, now=later).kind == ActionKind.WAIT
    assert decide(obj, {STY1: mpijob(STY1)}, now=later + timedelta(seconds=1)).reason == "DeadlineExceeded"


# --- the operator's defaults -----------------------------------------------------------------------

def test_a_job_without_storage_takes_the_operators_default_and_says_so():
    action = decide(stj(), {}, now=NOW, settings=SETTINGS)
    assert action.kind == ActionKind.START
    assert action.spec["storage"] == {"secretName": "stylebatch-storage"}
    assert (action.spec["workers"], action.spec["gpusPerWorker"]) == (2, 1)
    assert "on 2 workers (1 GPU each)" in action.message
    assert action.message.endswith("from the operator's defaults: image, imagePullPolicy, workers, gpusPerWorker, "
                                   "resources, storage, progressTimeoutSeconds")


def test_a_job_without_storage_fails_at_once_when_the_operator_has_no_default_either():
    action = decide(stj(), {}, now=NOW, settings=Settings())
    assert (action.kind, action.reason) == (ActionKind.FAIL, "InvalidSpec")
    assert action.message.startswith("no storage credentials: the job sets no spec.storage and the operator has "
                                     "no default")
    assert "chart with storage.existingSecret or storage.auth=workloadIdentity" in action.message


def test_a_job_with_its_own_storage_needs_no_default():
    own = {"serviceAccountName": "media-identity", "accountName": "mediastore"}
    action = decide(stj(storage=own, workers=4), {}, now=NOW, settings=Settings())
    assert action.kind == ActionKind.START and action.spec["storage"] == own and action.spec["workers"] == 4
    assert "from the operator's defaults: image, imagePullPolicy, gpusPerWorker" in action.message


@pytest.mark.parametrize("operator, account, refused", [
    (("media", "stylebatch-operator"), "stylebatch-operator", True),  # the operator's own, in its namespace
    (("stylebatch", "stylebatch-operator"), "stylebatch-operator", False),  # a namespace's own of that name
    (("media", "stylebatch-operator"), "media-identity", False),
    (None, "stylebatch-operator", False),  # an operator run outside a pod knows no account of its own
])
def test_a_job_may_not_run_its_pods_as_the_operators_own_service_account(operator, account, refused):
    """spec.storage.serviceAccountName took any service account of the job's namespace: in the
    operator's, its own, whose Azure workload identity reads the VideoWatches' queues and sources and
    whose Kubernetes rights make pods, went to pods running the image the job names."""
    own = {"serviceAccountName": account, "accountName": "mediastore"}
    action = decide(stj(storage=own), {}, now=NOW, settings=Settings(operator_account=operator))
    if refused:
        assert (action.kind, action.reason) == (ActionKind.FAIL, "InvalidSpec")
        assert action.message == ("spec.storage.serviceAccountName 'stylebatch-operator' is the operator's own service "
                                  "account: a job's pods may not run as the operator (its rights and Azure identity); "
                                  "give the job a service account of its own")
    else:
        assert action.kind == ActionKind.START and action.spec["serviceAccountName"] == account


def test_deadline_and_budget_come_from_the_recorded_effective_spec():
    obj = stj("Stylizing", attempts={"stylize": 1}, used=1)  # the spec says 3 retries and 7200 s
    obj["status"]["effectiveSpec"].update(retries=1, activeDeadlineSeconds=3600)
    assert decide(obj, {STY1: mpijob(STY1, MPI_FAILED)}, now=NOW - timedelta(seconds=1)).reason == "RetriesExhausted"
    assert decide(obj, {STY1: mpijob(STY1)}, now=NOW).reason == "DeadlineExceeded"


# --- Kueue -------------------------------------------------------------------------------------------

def suspended(child: dict[str, Any]) -> dict[str, Any]:
    """As the operator creates a child with a queueName, before Kueue admits it."""
    if child["kind"] == "MPIJob":
        return {**child, "spec": {"runPolicy": {"suspend": True}}}
    return {**child, "spec": {"suspend": True}}


def apply(obj: dict[str, Any], action, now: datetime) -> dict[str, Any]:
    """The job with the action's status patch merged in (a JSON merge patch: None deletes)."""
    patch = transition(obj, action, now).patch or {}
    merged = {**obj["status"], **patch}
    return {**obj, "status": {k: v for k, v in merged.items() if v is not None}}


def merge_patch(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """status with a JSON merge patch applied as the API server applies it (objects merged, None deletes)."""
    merged = dict(status)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.mark.parametrize("case, spec, first, following", [
    ("preprocess first", {}, ("Job", PRE1), ("stylize", STY1)),
    ("training first", TRAINED, ("Job", TRAIN1), ("preprocess", PRE1)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_first_child_that_finished_before_the_status_recorded_it_is_recorded_and_cleaned_up(case, spec, first,
                                                                                            following):
    """The operator made the first stage's child, restarted before writing the status, and the child
    finished before the next look: decide advances (nothing to adopt), and the status must still
    record the finished child, or spec.cleanup never deletes it."""
    obj = stj("Pending", **spec)
    action = decide(obj, {first[1]: job(first[1], COMPLETE)}, now=NOW)
    assert (action.kind, action.stage) == (ActionKind.ADVANCE, following[0])
    status = merge_patch(obj["status"], transition(obj, action, NOW).patch)
    assert status["children"] == {first[1].split("-")[1]: first[1], following[0]: following[1]}
    done = {**obj, "status": {**status, "phase": "Succeeded", "completionTime": "2026-05-01T12:30:00Z"}}
    assert first in all_children(done)


EARLIER = "2026-05-01T11:50:00Z"  # ten minutes before NOW


def condition(type_: str, status: str, reason: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": "", "lastTransitionTime": EARLIER}


FINISH = {"succeeds": Action(ActionKind.SUCCEED, reason="Succeeded", message="wrote az://videos/out.mp4"),
          "fails": Action(ActionKind.FAIL, "stylize", 1, "NoLocalQueue", "LocalQueue gpu-spot does not exist")}
STALLED_ON = {"conditions": [condition("Stalled", "True", "ImagePullBackOff")], "permanentStallSince": EARLIER}
QUEUED_ON = {"conditions": [condition("Queued", "True", "WaitingForAdmission"),
                            condition("Admitted", "False", "WaitingForAdmission")], "queuedSince": EARLIER}
ADMITTED_ON = {"conditions": [condition("Queued", "False", "Admitted"), condition("Admitted", "True", "Admitted")]}


# (case, the status before, how the job ends, conditions after: type -> (status, reason, lastTransitionTime moved),
#  status fields after)
SETTLED = [
    ("a job that succeeds while stalled is no longer stalled", STALLED_ON, "succeeds",
     {"Stalled": ("False", "Finished", True)}, {"permanentStallSince": None}),
    ("a job that fails while stalled is no longer stalled", STALLED_ON, "fails",
     {"Stalled": ("False", "Finished", True)}, {"permanentStallSince": None}),
    ("a job that fails waiting for Kueue is no longer queued, and the wait is counted", QUEUED_ON, "fails",
     {"Queued": ("False", "Finished", True), "Admitted": ("False", "Finished", False)},
     {"queuedSince": None, "queuedSeconds": 600}),
    ("a job that succeeds after admission stays admitted", ADMITTED_ON, "succeeds",
     {"Queued": ("False", "Admitted", False), "Admitted": ("True", "Admitted", False)}, {"queuedSince": None}),
]


@pytest.mark.parametrize("case, before, ends, conditions, fields", SETTLED, ids=[c[0] for c in SETTLED])
def test_a_finished_job_keeps_no_stale_stalled_or_queued_condition(case, before, ends, conditions, fields):
    obj = stj("Stylizing", attempts={"stylize": 1}, queueName="gpu-spot")
    obj["status"].update(copy.deepcopy(before))
    status = merge_patch(obj["status"], transition(obj, FINISH[ends], NOW).patch)
    shown = {c["type"]: (c["status"], c["reason"], c["lastTransitionTime"] != EARLIER) for c in status["conditions"]}
    assert {t: shown[t] for t in conditions} == conditions
    assert {k: status.get(k) for k in fields} == fields


def test_a_child_waiting_for_kueue_is_queued_then_admitted_and_the_wait_does_not_count_against_the_deadline():
    obj = stj("Stylizing", attempts={"stylize": 1}, queueName="gpu-spot")  # an hour left at NOW
    action = decide(obj, {STY1: suspended(mpijob(STY1))}, now=NOW)
    assert (action.kind, action.reason) == (ActionKind.QUEUE, "Queued")
    assert "MPIJob orangutan-stylize-1 waits for Kueue to admit it in LocalQueue gpu-spot" in action.message
    assert transition(obj, action, NOW).event[:2] == ("Normal", "Queued")
    obj["status"]["conditions"] = [{"type": "Running", "status": "True", "reason": "Stylizing",  # as created
                                    "message": "MPIJob orangutan-stylize-1 (attempt 1)",
                                    "lastTransitionTime": STARTED}]
    obj = apply(obj, action, NOW)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in obj["status"]["conditions"]}
    assert conditions == {"Queued": ("True", "WaitingForAdmission"), "Admitted": ("False", "WaitingForAdmission"),
                          "Running": ("False", "WaitingForAdmission")}  # nothing of it runs meanwhile

    # five hours in the queue: far past the two-hour deadline counted from the start, yet no failure
    later = NOW + timedelta(hours=5)
    assert decide(obj, {STY1: suspended(mpijob(STY1))}, now=later).kind == ActionKind.WAIT
    action = decide(obj, {STY1: mpijob(STY1)}, now=later)  # Kueue unsuspended it
    assert (action.kind, action.reason) == (ActionKind.ADMIT, "Admitted") and "after 18000s" in action.message
    obj = apply(obj, action, later)
    assert obj["status"]["queuedSeconds"] == 5 * 3600 and "queuedSince" not in obj["status"]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in obj["status"]["conditions"]}
    assert conditions == {"Queued": ("False", "Admitted"), "Admitted": ("True", "Admitted"),
                          "Running": ("True", "Stylizing")}

    # the hour that was left is still there, and no more
    assert decide(obj, {STY1: mpijob(STY1)}, now=later + timedelta(seconds=3599)).kind == ActionKind.WAIT
    assert decide(obj, {STY1: mpijob(STY1)}, now=later + timedelta(seconds=3600)).reason == "DeadlineExceeded"
    # and the next child gets it
    done = decide(obj, {STY1: mpijob(STY1, MPI_SUCCEEDED)}, now=later + timedelta(seconds=600))
    assert (done.kind, done.deadline_seconds) == (ActionKind.ADVANCE, 3000)


def conditions_of(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in obj["status"]["conditions"]}


@pytest.mark.parametrize("seen_suspended", [True, False], ids=["seen waiting", "admitted before the next look"])
def test_a_child_made_for_kueue_is_not_running_from_its_creation_until_it_is_admitted(seen_suspended):
    obj = stj("Pending", queueName="gpu")
    create = decide(obj, {}, now=NOW)
    assert create.kind == ActionKind.CREATE
    obj = apply(obj, create, NOW)
    assert conditions_of(obj)["Running"] == ("False", "WaitingForAdmission")  # created suspended
    if seen_suspended:
        obj = apply(obj, decide(obj, {PRE1: suspended(job(PRE1))}, now=NOW), NOW)
        assert conditions_of(obj)["Running"] == ("False", "WaitingForAdmission")
    later = NOW + timedelta(seconds=10)
    admitted = decide(obj, {PRE1: job(PRE1)}, now=later)
    assert (admitted.kind, admitted.reason) == (ActionKind.ADMIT, "Admitted")
    obj = apply(obj, admitted, later)
    assert conditions_of(obj)["Running"] == ("True", "Preprocessing")
    assert decide(obj, {PRE1: job(PRE1)}, now=later).kind == ActionKind.WAIT


def test_a_child_whose_cluster_queue_is_stopped_is_queued_first_and_its_wait_never_runs_the_deadline_out():
    """A stopped ClusterQueue (LocalQueueInactive) was shown as a stall before the child was ever
    recorded as queued: no status.queuedSince, and the job failed DeadlineExceeded while Kueue held it."""
    inactive = Stall("LocalQueueInactive", "LocalQueue gpu-spot is inactive (its ClusterQueue is stopped)", False)
    obj = stj("Stylizing", attempts={"stylize": 1}, queueName="gpu-spot")  # an hour left at NOW
    action = decide(obj, {STY1: suspended(mpijob(STY1))}, now=NOW, queue=inactive)
    assert (action.kind, action.reason) == (ActionKind.QUEUE, "Queued")
    obj = apply(obj, action, NOW)
    stall = decide(obj, {STY1: suspended(mpijob(STY1))}, now=NOW, queue=inactive)
    assert (stall.kind, stall.reason) == (ActionKind.STALL, "LocalQueueInactive")
    obj = apply(obj, stall, NOW)
    assert conditions_of(obj)["Queued"] == ("True", "WaitingForAdmission") and obj["status"]["queuedSince"]
    later = NOW + timedelta(hours=5)  # far past the deadline counted from the start
    assert decide(obj, {STY1: suspended(mpijob(STY1))}, now=later, queue=inactive).kind == ActionKind.WAIT  # (said)
    unstalled = decide(obj, {STY1: mpijob(STY1)}, now=later)  # the ClusterQueue resumed, Kueue admitted it
    assert unstalled.kind == ActionKind.UNSTALL
    obj = apply(obj, unstalled, later)
    admitted = decide(obj, {STY1: mpijob(STY1)}, now=later)
    assert (admitted.kind, admitted.reason) == (ActionKind.ADMIT, "Admitted") and "after 18000s" in admitted.message
    obj = apply(obj, admitted, later)
    assert decide(obj, {STY1: mpijob(STY1)}, now=later + timedelta(seconds=3599)).kind == ActionKind.WAIT  # its hour


def test_a_local_queue_that_cannot_be_read_leaves_its_stall_and_grace_period_as_they_are():
    """One failed read of the LocalQueue (a 500, a 429) was taken as "it can admit": the NoLocalQueue
    stall was cleared (an Unstalled event) and set again with a new grace period at the next look, so
    flapping reads postponed the job's failure for as long as they flapped."""
    missing = queue_stall("gpu-spto", "media", None)
    obj = stj("Stylizing", attempts={"stylize": 1}, queueName="gpu-spto")
    obj = apply(obj, decide(obj, {STY1: suspended(mpijob(STY1))}, now=NOW, queue=missing), NOW)  # queued
    obj = apply(obj, decide(obj, {STY1: suspended(mpijob(STY1))}, now=NOW, queue=missing), NOW)  # stalled
    since = obj["status"]["permanentStallSince"]
    later = NOW + timedelta(seconds=30)
    assert decide(obj, {STY1: suspended(mpijob(STY1))}, now=later, queue=QUEUE_UNREAD).kind == ActionKind.WAIT
    assert decide(obj, {STY1: suspended(mpijob(STY1))}, now=later, queue=None).kind == ActionKind.UNSTALL  # (made)
    assert obj["status"]["permanentStallSince"] == since


def test_a_child_suspended_again_by_a_preemption_is_queued_again_and_the_waits_add_up():
    obj = stj("Preprocessing", attempts={"preprocess": 1})
    obj["status"]["queuedSeconds"] = 600
    action = decide(obj, {PRE1: suspended(job(PRE1))}, now=NOW)
    assert action.kind == ActionKind.QUEUE
    obj = apply(obj, action, NOW)
    obj = apply(obj, decide(obj, {PRE1: job(PRE1)}, now=NOW + timedelta(seconds=60)), NOW + timedelta(seconds=60))
    assert obj["status"]["queuedSeconds"] == 660


def forged(change: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A stylizing job whose status.effectiveSpec someone other than the operator rewrote with `change`."""
    obj = stj("Stylizing", attempts={"preprocess": 1, "stylize": 1}, **spec)
    obj["status"]["effectiveSpec"].update(change)
    return obj


ACR = "stylebatchacr.azurecr.io/stylebatch-worker:0.2.0"
# (case, the job, what the forged status says instead of its spec)
FORGED = [
    ("another image", forged({"image": "docker.io/someone/miner:1"}, image=ACR),
     f"status.effectiveSpec.image 'docker.io/someone/miner:1' is not spec.image '{ACR}'"),
    ("another storage Secret", forged({"storage": {"secretName": "finance-storage"}}, storage={"secretName": "team"}),
     "status.effectiveSpec.storage {'secretName': 'finance-storage'} is not spec.storage {'secretName': 'team'}"),
    ("another pods' identity", forged({"serviceAccountName": "admin-identity"},
                                      storage={"serviceAccountName": "team-identity", "accountName": "data"}),
     "status.effectiveSpec.serviceAccountName 'admin-identity' is not spec.storage.serviceAccountName 'team-identity'"),
    ("more GPUs", forged({"workers": 16}, workers=2), "status.effectiveSpec.workers 16 is not spec.workers 2"),
]
# with no effectiveSpec the operator falls back to acceptedSpec (a job accepted before it existed)
LEGACY = stj("Stylizing", attempts={"preprocess": 1, "stylize": 1})
del LEGACY["status"]["effectiveSpec"]
LEGACY["status"]["acceptedSpec"]["image"] = "docker.io/someone/miner:1"
FORGED.append(("an accepted spec with an image the spec has not", LEGACY,
               "status.acceptedSpec.image 'docker.io/someone/miner:1' is not spec.image (unset)"))


@pytest.mark.parametrize("case, obj, words", FORGED, ids=[c[0] for c in FORGED])
def test_a_status_that_contradicts_the_spec_in_a_guarded_field_fails_the_job_and_builds_nothing_from_it(
        case, obj, words):
    running = mpijob(STY1)
    action = decide(obj, {STY1: running}, now=NOW, settings=SETTINGS)
    assert (action.kind, action.reason) == (ActionKind.FAIL, "EffectiveSpecMismatch")
    assert words in action.message and "the status was not written by the operator" in action.message
    assert action.deletes == (("MPIJob", STY1),) and action.creates is None  # its running child goes
    change = transition(obj, action, NOW)
    assert (change.patch["phase"], change.event[:2]) == ("Failed", ("Warning", "EffectiveSpecMismatch"))
    # the next stage is not made from it either
    assert decide(obj, {STY1: mpijob(STY1, MPI_SUCCEEDED)}, now=NOW, settings=SETTINGS).kind == ActionKind.FAIL


def test_an_effective_spec_that_fills_in_the_operators_defaults_is_the_jobs_own():
    obj = stj("Stylizing", attempts={"preprocess": 1, "stylize": 1})  # no image, storage, workers of its own
    obj["status"]["effectiveSpec"].update(image="registry.example/worker:9", workers=4)  # the defaults then
    assert decide(obj, {STY1: mpijob(STY1)}, now=NOW, settings=SETTINGS).kind == ActionKind.WAIT


@pytest.mark.parametrize("name", ["2024-promo", "trip.v2", "Orangutan"])
def test_a_name_the_mpi_operator_would_refuse_fails_before_any_child_is_made(name):
    obj = stj()
    obj["metadata"]["name"] = name
    action = decide(obj, {}, now=NOW, settings=SETTINGS)
    assert (action.kind, action.reason) == (ActionKind.FAIL, "InvalidSpec")
    assert f"name {name!r} must start with a lowercase letter" in action.message
    assert "DNS-1035" in action.message and "<name>-stylize-1-worker-0" in action.message


def pod_gone_with_its_node(name: str) -> dict[str, Any]:
    """A worker whose node was deleted outright (a spot VM reclaimed): the pod GC marks it."""
    return {"metadata": {"name": name}, "status": {"phase": "Failed", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
         "message": "PodGC: node no longer exists"}]}}


@pytest.mark.parametrize("case, pod, expected", [
    ("worker's node vanished", pod_gone_with_its_node(STY1 + "-worker-1"), (ActionKind.RETRY, "Disrupted", False)),
    ("preempted worker", {"metadata": {"name": STY1 + "-worker-0"}, "status": {
        "phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True",
                                           "reason": "PreemptionByScheduler"}]}}, (ActionKind.RETRY, "Disrupted", False)),
    ("launcher crashed", failed_pod(STY1 + "-launcher-x", 1, "RuntimeError: boom"), (ActionKind.RETRY, "Retrying", True)),
    ("storage outage (exit 75)", failed_pod(STY1 + "-launcher-x", 75, "stylebatch: error: storage unreachable"),
     (ActionKind.RETRY, "Retrying", True)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_disrupted_mpijob_is_retried_without_counting_its_own_failures_are(case, pod, expected):
    obj = stj("Stylizing", attempts={"stylize": 1})
    action = decide(obj, {STY1: mpijob(STY1, MPI_FAILED)}, now=NOW, pods=[pod])
    assert (action.kind, action.reason, action.counted) == expected


# The MPIJob's Failed condition once its launcher Job failed on its backoff limit: the MPI Operator adds
# the last failed launcher pod's status.reason ("" for a launcher that exited non-zero of its own).
LAUNCHER_EXITED = ("Failed", "BackoffLimitExceeded/", "Job has reached the specified backoff limit: ")
LAUNCHER_EVICTED = ("Failed", "BackoffLimitExceeded/Evicted",
                    "Job has reached the specified backoff limit: The node was low on resource: memory.")
LAUNCHER_LOG = "rank 1: 40/72 frames\nssh: connect to host 10.244.1.7 port 2222: No route to host"


def seen_on(child: str, uid: str) -> dict[str, Any]:
    """status.disruption as the operator wrote it while that MPIJob ran."""
    return {"child": f"MPIJob/{child}", "uid": uid, "seenTime": "2026-05-01T11:58:00Z",
            "message": f"pod {child}-worker-1: DeletionByPodGC: PodGC: node no longer exists"}


@pytest.mark.parametrize("case, condition, seen, expected", [
    ("a worker's node vanished and its pod with it, seen while the MPIJob ran: not counted",
     LAUNCHER_EXITED, seen_on(STY1, "uid-1"), (ActionKind.RETRY, "Disrupted", False)),
    ("an evicted launcher whose pod is gone: the MPIJob's own reason says so, not counted",
     LAUNCHER_EVICTED, None, (ActionKind.RETRY, "Disrupted", False)),
    ("a launcher that failed of its own, nothing seen: counted", LAUNCHER_EXITED, None, (ActionKind.RETRY, "Retrying", True)),
    ("a disruption seen on an earlier MPIJob of the same name (deleted, made again): counted",
     LAUNCHER_EXITED, seen_on(STY1, "uid-0"), (ActionKind.RETRY, "Retrying", True)),
    ("a disruption seen on the attempt before: counted", LAUNCHER_EXITED, seen_on("orangutan-stylize-0", "uid-1"),
     (ActionKind.RETRY, "Retrying", True)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_disruption_whose_pod_is_gone_is_still_not_counted(case, condition, seen, expected):
    """A spot VM reclaimed: the pod GC deletes its worker pod at once, the launcher fails on the lost
    connection, and by the time the MPIJob is seen Failed no pod of it shows a DisruptionTarget (the MPI
    Operator made the worker anew, then deleted the workers). That failure was counted against spec.retries."""
    obj = stj("Stylizing", attempts={"stylize": 1})
    if seen is not None:
        obj["status"]["disruption"] = seen
    child = mpijob(STY1, condition)
    child["metadata"]["uid"] = "uid-1"
    launcher = failed_pod(STY1 + "-launcher-x", 7, LAUNCHER_LOG)
    action = decide(obj, {STY1: child}, now=NOW, pods=[launcher])
    assert (action.kind, action.reason, action.counted) == expected
    if action.reason == "Disrupted":
        assert "not counted against spec.retries" in action.message
        assert ("DeletionByPodGC" if seen else "launcher pod: Evicted: ") in action.message


def evicted_pod(name: str, message: str, target: str | None = None) -> dict[str, Any]:
    """A pod the kubelet evicted with this message; `target`: the reason of the DisruptionTarget condition
    the kubelet adds under node pressure (none for a pod over its own limit)."""
    status: dict[str, Any] = {"phase": "Failed", "reason": "Evicted", "message": message}
    if target:
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": target, "message": message}]
    return {"metadata": {"name": name, "creationTimestamp": "2026-05-01T11:01:00Z"}, "status": status}


SCRATCH_FULL = 'Usage of EmptyDir volume "scratch" exceeds the limit "50Gi". '
POD_DISK_FULL = "Pod ephemeral local storage usage exceeds the total limit of containers 60Gi. "
CONTAINER_DISK_FULL = 'Container preprocess exceeded its local ephemeral storage limit "60Gi". '
NODE_LOW = "The node was low on resource: memory. "
LAUNCHER_OVER_ITS_DISK = ("Failed", "BackoffLimitExceeded/Evicted", "Job has reached the specified backoff limit: "
                          'Container launcher exceeded its local ephemeral storage limit "1Gi". ')


# (case, stage, child, pods, expected (kind, reason, counted), words the failure message holds)
OWN_LIMIT_CASES = [
    ("preprocess pod over its scratch sizeLimit: counted", "preprocess", job(PRE1, BACKOFF),
     [evicted_pod(PRE1 + "-x", SCRATCH_FULL)], (ActionKind.RETRY, "Retrying", True), 'volume "scratch" exceeds the limit "50Gi"'),
    ("pod over its ephemeral-storage limit: counted", "preprocess", job(PRE1, BACKOFF),
     [evicted_pod(PRE1 + "-x", POD_DISK_FULL)], (ActionKind.RETRY, "Retrying", True), "total limit of containers 60Gi"),
    ("container over its ephemeral-storage limit: counted", "train", job(TRAIN1, BACKOFF),
     [evicted_pod(TRAIN1 + "-x", CONTAINER_DISK_FULL)], (ActionKind.RETRY, "Retrying", True), 'storage limit "60Gi"'),
    ("MPIJobEvicted, the evicted worker over its scratch: counted", "stylize", mpijob(STY1, EVICTED),
     [evicted_pod(STY1 + "-worker-1", SCRATCH_FULL)], (ActionKind.RETRY, "Retrying", True), f"{STY1}-worker-1 was evicted"),
    ("launcher over its disk, its pod gone (the MPI Operator copied its message): counted", "stylize",
     mpijob(STY1, LAUNCHER_OVER_ITS_DISK), [], (ActionKind.RETRY, "Retrying", True), 'launcher pod was evicted'),
    ("node low on memory (DisruptionTarget): not counted", "preprocess", job(PRE1, BACKOFF),
     [evicted_pod(PRE1 + "-x", NODE_LOW, "TerminationByKubelet")], (ActionKind.RETRY, "Disrupted", False), "low on resource"),
    ("node low on memory, a kubelet without DisruptionTarget: not counted", "preprocess", job(PRE1, BACKOFF),
     [evicted_pod(PRE1 + "-x", NODE_LOW)], (ActionKind.RETRY, "Disrupted", False), "low on resource"),
    ("MPIJobEvicted, the worker evicted for node pressure: not counted", "stylize", mpijob(STY1, EVICTED),
     [evicted_pod(STY1 + "-worker-1", NODE_LOW, "TerminationByKubelet")], (ActionKind.RETRY, "Disrupted", False), "evicted"),
    ("MPIJobEvicted, one worker over its scratch, another preempted: counted", "stylize", mpijob(STY1, EVICTED),
     [pod_gone_with_its_node(STY1 + "-worker-0"), evicted_pod(STY1 + "-worker-1", SCRATCH_FULL)],
     (ActionKind.RETRY, "Retrying", True), 'volume "scratch"'),
]


@pytest.mark.parametrize("case, stage, child, pods, expected, words", OWN_LIMIT_CASES, ids=[c[0] for c in OWN_LIMIT_CASES])
def test_a_pod_evicted_for_outgrowing_its_own_limit_is_counted_a_node_pressure_eviction_is_not(case, stage, child, pods,
                                                                                                expected, words):
    obj = stj(PHASES[stage], attempts={stage: 1}, **(TRAINED if stage == "train" else {}))
    action = decide(obj, {child["metadata"]["name"]: child}, now=NOW, pods=pods)
    assert (action.kind, action.reason, action.counted) == expected
    assert words in action.failure.message and words in action.message
    if expected[1] == "Retrying":  # the user learns which limit to raise
        assert "outgrowing its own limit" in action.failure.message and "(raise " in action.failure.message


def test_a_pod_that_outgrows_its_own_scratch_fails_the_job_once_the_retries_are_spent():
    """docs/operator.md: such a pod's child fails and is retried within spec.retries (it was retried as a
    disruption, free, until activeDeadlineSeconds)."""
    name = "orangutan-preprocess-4"
    obj = stj("Preprocessing", attempts={"preprocess": 4}, used=3)
    action = decide(obj, {name: job(name, BACKOFF)}, now=NOW, pods=[evicted_pod(name + "-x", SCRATCH_FULL)])
    assert (action.kind, action.reason) == (ActionKind.FAIL, "RetriesExhausted")
    assert 'Usage of EmptyDir volume "scratch" exceeds the limit "50Gi"' in action.message
    assert "jobs.scratchSize" in action.message


def test_an_own_limit_eviction_is_counted_even_after_a_disruption_was_seen_on_the_mpijob():
    obj = stj("Stylizing", attempts={"stylize": 1})
    obj["status"]["disruption"] = seen_on(STY1, "uid-1")
    child = mpijob(STY1, EVICTED)
    child["metadata"]["uid"] = "uid-1"
    action = decide(obj, {STY1: child}, now=NOW, pods=[evicted_pod(STY1 + "-worker-1", SCRATCH_FULL)])
    assert (action.kind, action.reason, action.counted) == (ActionKind.RETRY, "Retrying", True)


def test_a_storage_outage_with_no_retries_left_fails_with_retries_exhausted_not_invalid_input():
    obj = stj("Preprocessing", attempts={"preprocess": 4}, used=3)
    pod = failed_pod("orangutan-preprocess-4-x", 75, "stylebatch: error: storage unreachable: 503")
    action = decide(obj, {"orangutan-preprocess-4": job("orangutan-preprocess-4", BACKOFF)}, now=NOW, pods=[pod])
    assert (action.kind, action.reason) == (ActionKind.FAIL, "RetriesExhausted")
    assert "storage unreachable" in action.message


# --- a child that cannot start -------------------------------------------------------------------

def pending_pod(reason: str, message: str = "") -> dict[str, Any]:
    return {"metadata": {"name": PRE1 + "-x"}, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "preprocess", "state": {"waiting": {"reason": reason, "message": message}}}]}}


def warning(reason: str, message: str) -> dict[str, Any]:
    return {"type": "Warning", "reason": reason, "message": message}


UNSCHEDULABLE = {"metadata": {"name": PRE1 + "-x"}, "status": {"phase": "Pending", "conditions": [
    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
     "message": "0/2 nodes are available: 2 node(s) had untolerated taint {sku: gpu}."}]}}

# (case, pods, events, Stalled reason, permanent)
STALLS = [
    ("image pull error", [pending_pod("ErrImagePull", "manifest unknown")], [], "ErrImagePull", False),
    ("image pull back-off", [pending_pod("ImagePullBackOff", "Back-off pulling image")], [], "ImagePullBackOff", False),
    ("invalid image name", [pending_pod("InvalidImageName", "couldn't parse image")], [], "InvalidImageName", True),
    ("missing Secret key", [pending_pod("CreateContainerConfigError",
                                        "couldn't find key AZURE_X in Secret media/s")], [],
     "CreateContainerConfigError", True),
    ("unschedulable (no GPU node yet)", [UNSCHEDULABLE], [], "Unschedulable", False),
    ("quota exceeded", [], [warning("FailedCreate", 'pods "x" is forbidden: exceeded quota: gpu, requested: '
                                                    "nvidia.com/gpu=1")], "FailedCreate", False),
    ("admission refused", [], [warning("FailedCreate", 'admission webhook "policy" denied the request')],
     "FailedCreate", True),
    ("permanent cause shown before a transient one", [UNSCHEDULABLE, pending_pod("InvalidImageName")], [],
     "InvalidImageName", True),
]


@pytest.mark.parametrize("case, pods, events, reason, permanent", STALLS, ids=[c[0] for c in STALLS])
def test_a_child_that_cannot_start_is_reported_stalled_at_the_first_look(case, pods, events, reason, permanent):
    obj = stj("Preprocessing", attempts={"preprocess": 1})
    action = decide(obj, {PRE1: job(PRE1)}, now=NOW, pods=pods, events=events, settings=SETTINGS)
    assert (action.kind, action.reason) == (ActionKind.STALL, reason)
    assert ("the job fails in 120s unless this is fixed" in action.message) == permanent
    patch = transition(obj, action, NOW).patch
    stalled = next(c for c in patch["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"], stalled["message"]) == ("True", reason, action.message)
    assert (patch["reason"], patch["message"]) == (reason, action.message)
    assert transition(obj, action, NOW).event == ("Warning", reason, action.message)

    # the same again: nothing new to say; after the grace period a permanent cause fails the job
    obj["status"].update(patch)
    later = NOW + timedelta(seconds=SETTINGS.stall_grace_seconds)
    again = decide(obj, {PRE1: job(PRE1)}, now=later, pods=pods, events=events, settings=SETTINGS)
    if permanent:
        assert (again.kind, again.reason, again.deletes) == (ActionKind.FAIL, reason, (("Job", PRE1),))
        assert again.failure.reason == reason
    else:
        assert again.kind == ActionKind.WAIT


def test_a_permanent_cause_after_a_transient_one_gets_its_own_grace_period():
    obj = stj("Preprocessing", attempts={"preprocess": 1})
    waited = NOW - timedelta(minutes=5)  # the GPU pool scaled up for five minutes
    first = decide(obj, {PRE1: job(PRE1)}, now=waited, pods=[UNSCHEDULABLE])
    obj["status"].update(transition(obj, first, waited).patch)
    secret = [pending_pod("CreateContainerConfigError", 'secret "stylebatch-storage" not found')]
    shown = decide(obj, {PRE1: job(PRE1)}, now=NOW, pods=secret, settings=SETTINGS)
    assert (shown.kind, shown.reason) == (ActionKind.STALL, "CreateContainerConfigError")  # not failed at once
    assert transition(obj, shown, NOW).event[:2] == ("Warning", "CreateContainerConfigError")  # the grace starts
    obj["status"].update(transition(obj, shown, NOW).patch)
    stalled = next(c for c in obj["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["lastTransitionTime"] == "2026-05-01T11:55:00Z"  # stalled all along: since the first cause
    assert obj["status"]["permanentStallSince"] == "2026-05-01T12:00:00Z"
    later = NOW + timedelta(seconds=SETTINGS.stall_grace_seconds)
    assert decide(obj, {PRE1: job(PRE1)}, now=later - timedelta(seconds=1), pods=secret, settings=SETTINGS).kind == ActionKind.WAIT
    assert decide(obj, {PRE1: job(PRE1)}, now=later, pods=secret, settings=SETTINGS).kind == ActionKind.FAIL


def reconcile_times(obj: dict[str, Any], causes: list[list[dict[str, Any]]], every: float = 10):
    """The job through reconciliations `every` seconds apart from NOW, its child's pods showing
    each of `causes` in turn: (the actions, the Events posted, the job afterwards)."""
    actions, posted = [], []
    for i, pods in enumerate(causes):
        now = NOW + timedelta(seconds=i * every)
        action = decide(obj, {PRE1: job(PRE1)}, now=now, pods=pods, settings=SETTINGS)
        change = transition(obj, action, now)
        actions.append(action)
        if change.event:
            posted.append(change.event[:2])
        obj = apply(obj, action, now) if change.patch else obj
    return actions, posted, obj


PULL = [pending_pod("ErrImagePull", "manifest unknown")]
BACKOFF_PULL = [pending_pod("ImagePullBackOff", 'Back-off pulling image "acr/worker:9"')]
BAD_NAME = [pending_pod("InvalidImageName", "couldn't parse image")]
NO_SECRET = [pending_pod("CreateContainerConfigError", 'secret "stylebatch-storage" not found')]


def test_a_stall_whose_cause_alternates_stays_one_stall_with_one_warning():
    """The kubelet alternates ErrImagePull and ImagePullBackOff while it retries a pull."""
    actions, posted, obj = reconcile_times(stj("Preprocessing", attempts={"preprocess": 1}),
                                           [PULL, BACKOFF_PULL, PULL, BACKOFF_PULL, PULL])
    assert [a.reason for a in actions] == ["ErrImagePull", "ImagePullBackOff"] * 2 + ["ErrImagePull"]
    assert posted == [("Warning", "ErrImagePull")]  # once, when the child turned stalled
    stalled = next(c for c in obj["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "ErrImagePull")  # the cause now
    assert stalled["lastTransitionTime"] == "2026-05-01T12:00:00Z"  # since it first stalled
    assert obj["status"]["reason"] == "ErrImagePull"


def test_permanent_causes_that_alternate_fail_the_job_one_grace_period_after_the_first():
    grace = int(SETTINGS.stall_grace_seconds)
    causes = [BAD_NAME, NO_SECRET] * (grace // 20) + [BAD_NAME]  # every 10 s, for the grace period
    actions, posted, obj = reconcile_times(stj("Preprocessing", attempts={"preprocess": 1}), causes)
    assert all(a.kind == ActionKind.STALL for a in actions[:-1])
    assert (actions[-1].kind, actions[-1].reason) == (ActionKind.FAIL, "InvalidImageName")
    assert posted == [("Warning", "InvalidImageName"), ("Warning", "InvalidImageName")]  # stalled, then failed


def test_the_pods_starting_clear_the_stall():
    obj = stj("Preprocessing", attempts={"preprocess": 1})
    obj["status"].update(transition(obj, decide(obj, {PRE1: job(PRE1)}, now=NOW, pods=[UNSCHEDULABLE]), NOW).patch)
    running = {"metadata": {"name": PRE1 + "-x"}, "status": {"phase": "Running"}}
    action = decide(obj, {PRE1: job(PRE1)}, now=NOW, pods=[running])
    assert (action.kind, action.reason) == (ActionKind.UNSTALL, "Unstalled")
    assert transition(obj, action, NOW).event[:2] == ("Normal", "Unstalled")


def silent_mpijob(age: float) -> dict[str, Any]:
    """An MPIJob nobody wrote a status for, created `age` seconds before NOW."""
    silent = {**mpijob(STY1), "status": {}}
    created = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    silent["metadata"] = {**silent["metadata"], "creationTimestamp": created}
    return silent


def test_an_mpijob_nobody_picks_up_is_shown_after_half_a_minute_and_fails_one_grace_period_after_its_creation():
    obj = stj("Stylizing", attempts={"stylize": 1})
    assert decide(obj, {STY1: silent_mpijob(20)}, now=NOW, settings=SETTINGS).kind == ActionKind.WAIT  # the MPI Operator is quick
    shown = decide(obj, {STY1: silent_mpijob(30)}, now=NOW, settings=SETTINGS)
    assert (shown.kind, shown.reason) == (ActionKind.STALL, "NoMPIOperator")
    assert "the job fails 120s after the MPIJob's creation unless this is fixed" in shown.message
    obj["status"].update(transition(obj, shown, NOW).patch)
    later = NOW + timedelta(seconds=89)  # the MPIJob is 119 s old
    assert decide(obj, {STY1: silent_mpijob(30)}, now=later, settings=SETTINGS).kind == ActionKind.WAIT
    failed = decide(obj, {STY1: silent_mpijob(30)}, now=NOW + timedelta(seconds=90), settings=SETTINGS)
    assert (failed.kind, failed.reason, failed.deletes) == (ActionKind.FAIL, "NoMPIOperator", (("MPIJob", STY1),))
    # first seen after the grace period (an operator that was down): shown first all the same
    fresh = stj("Stylizing", attempts={"stylize": 1})
    assert decide(fresh, {STY1: silent_mpijob(300)}, now=NOW, settings=SETTINGS).kind == ActionKind.STALL


def test_an_mpijob_kind_the_api_server_does_not_serve_is_shown_then_fails_after_one_grace_period():
    obj = stj("Preprocessing", attempts={"preprocess": 1})
    advance = decide(obj, {PRE1: job(PRE1, COMPLETE)}, now=NOW, settings=SETTINGS)
    assert advance.creates == ("stylize", 1)
    shown = kind_not_served(obj, advance, NOW, SETTINGS)
    assert (shown.kind, shown.reason) == (ActionKind.STALL, "NoMPIOperator")
    assert "does not serve MPIJobs (kubeflow.org/v2beta1)" in shown.message
    assert "the job fails in 120s unless this is fixed" in shown.message
    obj["status"].update(transition(obj, shown, NOW).patch)
    assert kind_not_served(obj, advance, NOW + timedelta(seconds=119), SETTINGS).kind == ActionKind.WAIT
    failed = kind_not_served(obj, advance, NOW + timedelta(seconds=120), SETTINGS)
    assert (failed.kind, failed.reason, failed.stage) == (ActionKind.FAIL, "NoMPIOperator", "stylize")
    assert transition(obj, failed, NOW).patch["phase"] == "Failed"


# (FailedCreate message as the Job controller reports it, permanent, words of what it means)
CREATE_FAILURES = [
    ('Error creating: pods "orangutan-preprocess-1-x7k2p" is forbidden: exceeded quota: gpu-quota, requested: '
     "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=8, limited: requests.nvidia.com/gpu=8",
     False, "ResourceQuota is used up"),
    ('Error creating: pods "orangutan-preprocess-1-x7k2p" is forbidden: status unknown for quota: compute, '
     "resource: requests.cpu", False, "usage is not counted yet"),
    ('Error creating: pods "orangutan-preprocess-1-x7k2p" is forbidden: failed quota: compute: must specify '
     "limits.cpu for: preprocess; limits.memory for: preprocess", True, "requires requests or limits"),
    ('Error creating: pods "orangutan-preprocess-1-" is forbidden: error looking up service account '
     'media/stylebatch-job: serviceaccount "stylebatch-job" not found', True, "ServiceAccount does not exist"),
    ('Error creating: pods "orangutan-preprocess-1-x7k2p" is forbidden: violates PodSecurity "restricted:latest": '
     'allowPrivilegeEscalation != false (container "preprocess" must set securityContext.allowPrivilegeEscalation'
     "=false)", True, "Pod Security level"),
    ('Error creating: admission webhook "validation.gatekeeper.sh" denied the request: [allowed-repos] container '
     "<preprocess> has an invalid image repo <docker.io/x>", True, "admission webhook refused"),
    ('Error creating: pods "orangutan-preprocess-1-x7k2p" is forbidden: ValidatingAdmissionPolicy '
     "'stylebatch-tenants' with binding 'stylebatch-tenants' denied request: image not allowed", True,
     "ValidatingAdmissionPolicy refused"),
    ('Error creating: pods "orangutan-preprocess-1-x7k2p" is forbidden: maximum cpu usage per Container is 2, '
     "but limit is 4", True, "LimitRange"),
    ('Error creating: pods "orangutan-preprocess-1-x7k2p" is forbidden: unable to create new content in namespace '
     "media because it is being terminated", True, "namespace is being deleted"),
    ('Error creating: Internal error occurred: failed calling webhook "mpod.kb.io": failed to call webhook: Post '
     '"https://webhook.svc:443/mutate?timeout=10s": dial tcp 10.0.0.1:443: connect: connection refused', False,
     "webhook did not answer"),
    ("Error creating: Timeout: request did not complete within requested timeout - context deadline exceeded",
     False, "API server did not answer"),
    ("Error creating: the server is currently unable to handle the request (post pods)", False,
     "API server did not answer"),
    ('Error creating: pods "orangutan-preprocess-1-x7k2p" is forbidden: node selector not allowed by the '
     "namespace's PodNodeSelector", True, "admission plugin refused"),
    ('jobs.batch is forbidden: User "system:serviceaccount:stylebatch:stylebatch-operator" cannot create resource '
     '"jobs" in API group "batch" in the namespace "media"', True, "RBAC"),
    ("Error creating: something nobody has seen before", False, "not a known cause"),
]


@pytest.mark.parametrize("message, permanent, words", CREATE_FAILURES, ids=[m[2] for m in CREATE_FAILURES])
def test_a_failed_create_is_permanent_only_when_the_same_pod_would_be_refused_again(message, permanent, words):
    obj = stj("Preprocessing", attempts={"preprocess": 1})
    shown = decide(obj, {PRE1: job(PRE1)}, now=NOW, events=[warning("FailedCreate", message)], settings=SETTINGS)
    assert (shown.kind, shown.reason) == (ActionKind.STALL, "FailedCreate")
    assert words in shown.message and message[:60] in shown.message
    assert ("the job fails in 120s unless this is fixed" in shown.message) == permanent
    assert ("the time counts against spec.activeDeadlineSeconds" in shown.message) == (not permanent)


def at(event: dict[str, Any], when: str) -> dict[str, Any]:
    return {**event, "lastTimestamp": when}


def test_a_failed_create_counts_while_pods_exist_unless_a_pod_was_created_after_it():
    obj = stj("Stylizing", attempts={"stylize": 1})
    worker0 = {"metadata": {"name": STY1 + "-worker-0", "creationTimestamp": "2026-05-01T11:58:00Z"},
               "status": {"phase": "Running"}}
    quota = warning("FailedCreate", 'Error creating: pods "orangutan-stylize-1-worker-1" is forbidden: exceeded '
                                    "quota: gpu-quota, requested: requests.nvidia.com/gpu=1")
    # worker-1 cannot be created (after worker-0 was): shown
    shown = decide(obj, {STY1: mpijob(STY1)}, now=NOW, pods=[worker0], events=[at(quota, "2026-05-01T11:59:00Z")],
                   settings=SETTINGS)
    assert (shown.kind, shown.reason) == (ActionKind.STALL, "FailedCreate")
    # worker-1 was created after the last failure: the Event is history
    worker1 = {"metadata": {"name": STY1 + "-worker-1", "creationTimestamp": "2026-05-01T11:59:30Z"},
               "status": {"phase": "Running"}}
    over = decide(obj, {STY1: mpijob(STY1)}, now=NOW, pods=[worker0, worker1],
                  events=[at(quota, "2026-05-01T11:59:00Z")], settings=SETTINGS)
    assert over.kind == ActionKind.WAIT


@pytest.mark.parametrize("message, permanent", [
    ('worker pod created failed: pods "orangutan-stylize-1-worker-1" is forbidden: exceeded quota: gpu-quota, '
     "requested: requests.nvidia.com/gpu=1", False),
    ('worker pod created failed: admission webhook "validation.gatekeeper.sh" denied the request: '
     "[no-privileged] not allowed", True),
    ('launcher pod created failed: jobs.batch "orangutan-stylize-1-launcher" is forbidden: exceeded quota: '
     "jobs, requested: count/jobs.batch=1", False),
])
def test_the_mpi_operators_own_word_for_a_pod_it_cannot_create_is_a_stall(message: str, permanent: bool):
    """The MPI Operator reports a worker pod (or launcher Job) the API server refused as a Warning
    of reason MPIJobFailed, not FailedCreate: the job waited, Running, for its 6 h deadline."""
    obj = stj("Stylizing", attempts={"stylize": 1})
    worker0 = {"metadata": {"name": STY1 + "-worker-0", "creationTimestamp": "2026-05-01T11:58:00Z"},
               "status": {"phase": "Running"}}
    event = at(warning("MPIJobFailed", message), "2026-05-01T11:59:00Z")
    shown = decide(obj, {STY1: mpijob(STY1)}, now=NOW, pods=[worker0], events=[event], settings=SETTINGS)
    assert (shown.kind, shown.reason) == (ActionKind.STALL, "FailedCreate"), shown
    assert message.split(": ", 1)[1][:40] in shown.message
    assert ("the job fails in 120s unless this is fixed" in shown.message) == permanent
    other = at(warning("MPIJobFailed", "some other failure"), "2026-05-01T11:59:00Z")
    assert decide(obj, {STY1: mpijob(STY1)}, now=NOW, pods=[worker0], events=[other], settings=SETTINGS).kind \
        == ActionKind.WAIT


def test_an_event_from_before_the_child_was_made_is_not_its_own():
    """The MPI Operator's launcher Job is found by name (<MPIJob>-launcher): an earlier MPIJob of
    the same name, deleted, left its launcher Job's FailedCreate behind."""
    obj = stj("Stylizing", attempts={"stylize": 1})
    mpi = {**mpijob(STY1), "metadata": {**mpijob(STY1)["metadata"], "creationTimestamp": "2026-05-01T11:59:00Z"}}
    workers: list[dict[str, Any]] = []  # none yet: the MPI Operator is making them
    refused = warning("FailedCreate", 'Error creating: pods "x" is forbidden: violates PodSecurity "restricted:latest"')
    earlier = {**refused, "lastTimestamp": "2026-05-01T11:58:30Z"}  # the earlier launcher's
    assert decide(obj, {STY1: mpi}, now=NOW, pods=workers, events=[earlier], settings=SETTINGS).kind == ActionKind.WAIT
    own = {**refused, "lastTimestamp": "2026-05-01T11:59:10Z"}
    assert decide(obj, {STY1: mpi}, now=NOW, pods=workers, events=[own], settings=SETTINGS).reason == "FailedCreate"


def test_a_child_waiting_for_kueue_is_not_stalled():
    obj = stj("Stylizing", attempts={"stylize": 1}, queueName="gpu")
    silent = {**suspended(mpijob(STY1)), "status": {}}
    silent["metadata"] = {**silent["metadata"], "creationTimestamp": "2026-05-01T10:00:00Z"}
    assert decide(obj, {STY1: silent}, now=NOW, settings=SETTINGS).kind == ActionKind.QUEUE


# --- what a finished job leaves behind -----------------------------------------------------------

def finished(phase: str, **cleanup: int) -> dict[str, Any]:
    obj = stj(phase, attempts={"preprocess": 1, "stylize": 2, "postprocess": 1}, used=1,
              cleanup={"childrenAfterSucceededSeconds": 0, **cleanup})
    obj["status"]["effectiveSpec"]["cleanup"] = obj["spec"]["cleanup"]
    obj["status"]["completionTime"] = "2026-05-01T11:30:00Z"  # half an hour before NOW
    return obj


ALL_CHILDREN = (("Job", PRE1), ("MPIJob", STY1), ("MPIJob", STY2), ("Job", POST1))


@pytest.mark.parametrize("case, obj, expected", [
    ("succeeded: every child goes at once", finished("Succeeded"), (ActionKind.CLEAN_UP, ALL_CHILDREN)),
    ("succeeded, children kept an hour", finished("Succeeded", childrenAfterSucceededSeconds=3600), (ActionKind.NOTHING, ())),
    ("failed: children kept for their logs", finished("Failed"), (ActionKind.NOTHING, ())),
    ("failed, children go after 10 minutes", finished("Failed", childrenAfterFailedSeconds=600),
     (ActionKind.CLEAN_UP, ALL_CHILDREN)),
    ("the job itself expires after 20 minutes", finished("Failed", jobAfterFinishedSeconds=1200), (ActionKind.EXPIRE, ())),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_finished_job_cleans_up_as_spec_cleanup_says(case, obj, expected):
    action = decide(obj, {}, now=NOW)
    assert (action.kind, action.deletes) == expected


def test_children_are_deleted_once_then_the_job_waits_for_its_own_ttl():
    obj = finished("Succeeded", jobAfterFinishedSeconds=7200)
    action = decide(obj, {}, now=NOW)
    obj["status"].update(transition(obj, action, NOW).patch)
    assert obj["status"]["childrenDeleted"] is True
    assert decide(obj, {}, now=NOW).kind == ActionKind.NOTHING
    assert cleanup_due(obj) == (ActionKind.EXPIRE, datetime(2026, 5, 1, 13, 30, tzinfo=timezone.utc))
    assert decide(obj, {}, now=NOW + timedelta(hours=1, minutes=30)).kind == ActionKind.EXPIRE


@pytest.mark.parametrize("cleanup, expected", [
    ({"jobAfterFinishedSeconds": 1200}, ActionKind.EXPIRE),  # was kept for good: piles of them under a VideoWatch
    ({"jobAfterFinishedSeconds": 7200}, ActionKind.NOTHING),  # not yet
    ({}, ActionKind.NOTHING),
])
def test_a_job_failed_when_accepted_keeps_to_its_own_ttl(cleanup, expected):
    obj = stj("Failed", cleanup=cleanup)
    obj["status"] = {"phase": "Failed", "reason": "InvalidSpec", "completionTime": "2026-05-01T11:30:00Z"}
    assert decide(obj, {}, now=NOW).kind == expected


def stylizing_since(advanced: str, **spec: Any) -> dict[str, Any]:
    obj = stj("Stylizing", attempts={"stylize": 1}, **spec)
    obj["status"]["progress"] = {"attempt": 1, "ranks": [40, 40], "framesDone": 80, "framesTotal": 100,
                                 "summary": "80% (80/100)", "advanceTime": advanced}
    return obj


@pytest.mark.parametrize("case, obj, settings, expected", [
    ("a frame 9 minutes ago: wait", stylizing_since("2026-05-01T11:51:00Z"), SETTINGS, (ActionKind.WAIT, "", ())),
    ("no frame for 10 minutes: the MPIJob is deleted and retried", stylizing_since("2026-05-01T11:50:00Z"), SETTINGS,
     (ActionKind.RETRY, "Retrying", (("MPIJob", STY1),))),
    ("the job's own timeout wins", stylizing_since("2026-05-01T11:58:00Z", progressTimeoutSeconds=120), SETTINGS,
     (ActionKind.RETRY, "Retrying", (("MPIJob", STY1),))),
    ("never shorter than three reads of the log", stylizing_since("2026-05-01T11:58:00Z", progressTimeoutSeconds=120),
     Settings(progress_interval=60.0), (ActionKind.WAIT, "", ())),
    ("no retries left: Failed, and the MPIJob deleted", stylizing_since("2026-05-01T11:50:00Z", retries=0), SETTINGS,
     (ActionKind.FAIL, "RetriesExhausted", (("MPIJob", STY1),))),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_stylize_without_a_new_frame_for_the_progress_timeout_is_ended(case, obj, settings, expected):
    action = decide(obj, {STY1: mpijob(STY1)}, now=NOW, settings=settings)
    assert (action.kind, action.reason, action.deletes) == expected
    if action.failure is not None:
        assert action.failure.reason == "ProgressStalled"
        assert "no frame stylized for" in action.failure.message and "80% (80/100)" in action.failure.message


def test_a_stylize_preempted_by_kueue_and_admitted_again_gets_the_whole_timeout_again():
    """Kueue preempted a running stylize attempt (the MPIJob suspended) and admitted it again 20 minutes
    later: the first look after that counted the queue time as "no frame for 600s", deleted the freshly
    admitted MPIJob and spent a retry. Now it is admitted, and the clock runs from the admission."""
    obj = stylizing_since("2026-05-01T11:39:00Z", queueName="gpu-spot")  # its last frame, before the preemption
    preempted = decide(obj, {STY1: suspended(mpijob(STY1))}, now=NOW - timedelta(minutes=20))
    assert preempted.kind == ActionKind.QUEUE
    obj = apply(obj, preempted, NOW - timedelta(minutes=20))
    admitted = decide(obj, {STY1: mpijob(STY1)}, now=NOW)
    assert (admitted.kind, admitted.reason) == (ActionKind.ADMIT, "Admitted"), admitted
    obj = apply(obj, admitted, NOW)
    assert decide(obj, {STY1: mpijob(STY1)}, now=NOW + timedelta(minutes=9)).kind == ActionKind.WAIT
    stalled = decide(obj, {STY1: mpijob(STY1)}, now=NOW + timedelta(minutes=10))
    assert (stalled.kind, stalled.failure.reason) == (ActionKind.RETRY, "ProgressStalled")


def mpi_pod(name: str, role: str, phase: str, reason: str | None = None, message: str | None = None) -> dict[str, Any]:
    status = {"phase": phase, **({"reason": reason} if reason else {}), **({"message": message} if message else {})}
    return {"metadata": {"name": name, "creationTimestamp": "2026-05-01T11:58:00Z",
                         "labels": {"training.kubeflow.org/job-role": role}}, "status": status}


def deleted(pod: dict[str, Any]) -> dict[str, Any]:
    pod["metadata"]["deletionTimestamp"] = "2026-05-01T11:59:30Z"
    return pod


@pytest.mark.parametrize("case, pods, ranks_started, expected", [
    ("a worker refused by its kubelet (a device plugin restarting): retried, not counted",
     [mpi_pod(STY1 + "-worker-0", "worker", "Failed", "UnexpectedAdmissionError", "Allocate failed"),
      mpi_pod(STY1 + "-worker-1", "worker", "Running")], False, (ActionKind.RETRY, "Disrupted", False)),
    ("a worker out of GPUs at admission: retried, not counted",
     [mpi_pod(STY1 + "-worker-0", "worker", "Failed", "OutOfnvidia.com/gpu")], False,
     (ActionKind.RETRY, "Disrupted", False)),
    ("a worker that exited (its sshd failed): retried, counted",
     [mpi_pod(STY1 + "-worker-0", "worker", "Failed"), mpi_pod(STY1 + "-worker-1", "worker", "Running")], False,
     (ActionKind.RETRY, "Retrying", True)),
    ("a failed worker while the launcher waits for it (started early, Kueue): retried, counted",
     [mpi_pod(STY1 + "-worker-0", "worker", "Failed"), mpi_pod(STY1 + "-launcher-x", "launcher", "Running")], False,
     (ActionKind.RETRY, "Retrying", True)),
    ("a failed worker once the ranks report frames: the MPIJob's own failure decides, not this",
     [mpi_pod(STY1 + "-worker-0", "worker", "Failed"), mpi_pod(STY1 + "-launcher-x", "launcher", "Running")], True,
     (ActionKind.WAIT, "", None)),
    ("a failed worker once the launcher has ended: the MPIJob's own failure decides, not this",
     [mpi_pod(STY1 + "-worker-0", "worker", "Failed"), mpi_pod(STY1 + "-launcher-x", "launcher", "Succeeded")],
     False, (ActionKind.WAIT, "", None)),
    ("a worker ended while it is deleted (the MPI Operator makes it again, or cleans up after the job)",
     [deleted(mpi_pod(STY1 + "-worker-0", "worker", "Succeeded")), mpi_pod(STY1 + "-launcher-x", "launcher", "Running")],
     False, (ActionKind.WAIT, "", None)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_worker_that_ended_before_the_ranks_started_ends_the_attempt(case, pods, ranks_started, expected):
    """The launcher is made once every worker is Ready (or, started early by Kueue's resume, waits for
    them), and the MPI Operator replaces only a worker pod that is gone: a worker that failed before
    the ranks started left the job Running until its 6 h deadline."""
    obj = stj("Stylizing", attempts={"stylize": 1})
    if ranks_started:
        obj["status"]["progress"] = {"attempt": 1, "summary": "0% (0/100)", "advanceTime": "2026-05-01T11:59:00Z"}
    action = decide(obj, {STY1: mpijob(STY1)}, now=NOW, pods=pods, settings=SETTINGS)
    assert (action.kind, action.reason, action.counted if action.kind == ActionKind.RETRY else None) == expected
    if action.kind == ActionKind.RETRY:
        assert action.deletes == (("MPIJob", STY1),) and action.failure.reason == "WorkerLost"
        assert "worker-0 ended before the ranks reported any frames" in action.failure.message


def training_since(advanced: str, pod: str = TRAIN1 + "-a", **spec: Any) -> dict[str, Any]:
    obj = stj("Training", attempts={"train": 1}, **TRAINED, **spec)
    obj["status"]["training"] = {"attempt": 1, "pod": pod, "step": 1200, "steps": 2000, "percent": 60,
                                 "summary": "60% (1200/2000 steps), 2.00 steps/s", "advanceTime": advanced}
    return obj


RUNNING_POD = {"metadata": {"name": TRAIN1 + "-a", "creationTimestamp": "2026-05-01T11:00:00Z"},
               "status": {"phase": "Running"}}
REPLACEMENT_POD = {"metadata": {"name": TRAIN1 + "-b", "creationTimestamp": "2026-05-01T11:55:00Z"},
                   "status": {"phase": "Running"}}


@pytest.mark.parametrize("case, obj, pods, expected", [
    ("a step 9 minutes ago: wait", training_since("2026-05-01T11:51:00Z"), [RUNNING_POD], (ActionKind.WAIT, "", ())),
    ("no step for 10 minutes: the training Job is deleted and retried (it resumes from its checkpoint)",
     training_since("2026-05-01T11:50:00Z"), [RUNNING_POD], (ActionKind.RETRY, "Retrying", (("Job", TRAIN1),))),
    ("no step for 10 minutes, but a replacement pod is starting: wait for its own first line",
     training_since("2026-05-01T11:50:00Z"), [RUNNING_POD, REPLACEMENT_POD], (ActionKind.WAIT, "", ())),
    ("no retries left: Failed, and the Job deleted", training_since("2026-05-01T11:50:00Z", retries=0), [RUNNING_POD],
     (ActionKind.FAIL, "RetriesExhausted", (("Job", TRAIN1),))),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_training_without_a_new_step_for_the_progress_timeout_is_ended(case, obj, pods, expected):
    action = decide(obj, {TRAIN1: job(TRAIN1)}, now=NOW, pods=pods, settings=SETTINGS)
    assert (action.kind, action.reason, action.deletes) == expected
    if action.failure is not None:
        assert action.failure.reason == "ProgressStalled"
        assert "no training step for 600s (at 60% (1200/2000 steps)" in action.failure.message


# The launcher's log when a rank dies (MPICH's Hydra, as `mpiexec` prints it), and when a rank
# reported its own error first.
MPICH_RANK_KILLED = """rank 0: 40/72 frames
===================================================================================
=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES
=   PID 4678 RUNNING AT orangutan-stylize-1-worker-1.orangutan-stylize-1-worker.media.svc
=   EXIT CODE: 9
=   CLEANING UP REMAINING PROCESSES
=   YOU CAN IGNORE THE BELOW CLEANUP MESSAGES
===================================================================================
YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Terminated (signal 15)
This typically refers to a problem with your application.
Please see the FAQ page for debugging suggestions
"""


# ...and when a worker's pod went away mid-job (as the rehearsal tier records it)
MPICH_WORKER_GONE = """stylebatch: rank 1/2: 6 of its 6 chunks to stylize (2 threads)
Connection to killed-stylize-1-worker-1.killed-stylize-1-worker.media.svc closed by remote host.
[mpiexec@killed-stylize-1-launcher] control_cb (/mpich-5.0.2/src/pm/hydra/mpiexec/pmiserv_cb.c:280): assert (!closed) failed
[mpiexec@killed-stylize-1-launcher] HYDT_dmxu_poll_wait_for_event (/mpich-5.0.2/src/pm/hydra/lib/tools/demux/demux_poll.c:76): callback returned error status
[mpiexec@killed-stylize-1-launcher] HYD_pmci_wait_for_completion (/mpich-5.0.2/src/pm/hydra/mpiexec/pmiserv_pmci.c:180): error waiting for event
[mpiexec@killed-stylize-1-launcher] main (/mpich-5.0.2/src/pm/hydra/mpiexec/mpiexec.c:270): process manager error waiting for completion
"""


LAUNCHER_CASES = [
    ("a worker gone mid-job: the connection to it", MPICH_WORKER_GONE,
     ["Connection to killed-stylize-1-worker-1.killed-stylize-1-worker.media.svc closed by remote host"],
     ["process manager error"]),
    ("a rank killed: which process, on which worker, and how", MPICH_RANK_KILLED,
     ["PID 4678 RUNNING AT orangutan-stylize-1-worker-1.orangutan-stylize-1-worker.media.svc", "EXIT CODE: 9",
      "Terminated (signal 15)"], ["This typically refers", "FAQ page"]),
    ("a rank's own error line comes first",
     "stylebatch: error: rank 1: cannot write part 3: disk full\n" + MPICH_RANK_KILLED.replace("EXIT CODE: 9", "EXIT CODE: 2"),
     ["stylebatch: error: rank 1: cannot write part 3: disk full", "EXIT CODE: 2"], ["FAQ page"]),
    ("no MPI report: the last lines, as before", "loading\nRuntimeError: boom\n", ["loading | RuntimeError: boom"], []),
]


@pytest.mark.parametrize("case, log, kept, dropped", LAUNCHER_CASES, ids=[c[0] for c in LAUNCHER_CASES])
def test_a_failed_launcher_reports_which_rank_failed_and_how(case, log, kept, dropped):
    pod = failed_pod(STY1 + "-launcher-x7k2p", 15 if "signal 15" in log else 1, log)
    action = decide(stj("Stylizing", attempts={"stylize": 1}), {STY1: mpijob(STY1, ("Failed", "BackoffLimitExceeded/", ""))},
                    now=NOW, pods=[pod], settings=SETTINGS)
    for text in kept:
        assert text in action.failure.message, action.failure.message
    for text in dropped:
        assert text not in action.failure.message


@pytest.mark.parametrize("gpus, precision, fails", [
    (0, "fp16", True),  # the CPU workers' ranks refused it after preprocess, the MPIJob failed InvalidInput
    (1, "fp16", False),
    (0, "bf16", False),
    (0, None, False),
])
def test_fp16_on_cpu_workers_fails_at_acceptance_not_in_the_workers(gpus, precision, fails):
    processing = {"precision": precision} if precision else {}
    action = decide(stj(gpusPerWorker=gpus, processing=processing), {}, now=NOW, settings=SETTINGS)
    if fails:
        assert (action.kind, action.reason) == (ActionKind.FAIL, "InvalidSpec")
        assert "spec.processing.precision: fp16 needs a CUDA device" in action.message
        assert "(gpusPerWorker is 0)" in action.message and "--precision" not in action.message
    else:
        assert action.kind == ActionKind.START, action.message


QUOTA_FULL = Stall("ChildRefused", "the API server would not create MPIJob orangutan-stylize-2: a ResourceQuota is "
                   "used up: exceeded quota: mpijobs, used: count/mpijobs.kubeflow.org=1", False)
POLICY = Stall("ChildRefused", "the API server would not create MPIJob orangutan-stylize-2: an admission webhook "
               "refused the pods: admission webhook \"kyverno\" denied the request", True)


@pytest.mark.parametrize("case, obj, pods, refused, counter", [
    ("ended for its progress, a quota on MPIJobs not yet released", stylizing_since("2026-05-01T11:50:00Z"), [],
     QUOTA_FULL, "retries"),
    ("ended for its progress, a policy refusing the new MPIJob", stylizing_since("2026-05-01T11:50:00Z"), [],
     POLICY, "retries"),
    ("a worker lost to its node before the ranks started, the quota not yet released",
     stj("Stylizing", attempts={"stylize": 1}),
     [mpi_pod(STY1 + "-worker-0", "worker", "Failed", "UnexpectedAdmissionError", "Allocate failed")],
     QUOTA_FULL, "disruptions"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_an_attempt_ended_for_a_retry_whose_next_attempt_cannot_be_created_yet_is_not_made_again(
        case, obj, pods, refused, counter):
    """The operator deletes a stylize attempt that stopped advancing (or lost a worker) before it
    creates the next one. When that create was refused (the quota counts the deleted MPIJob a moment
    longer), nothing recorded the retry: the next look found attempt 1 gone and made it again as
    'ChildMissing', whose stale progress ended it again at once: a loop that never spent a retry and
    posted a Warning Event each time, until the deadline."""
    retry = decide(obj, {STY1: mpijob(STY1)}, now=NOW, pods=pods, settings=SETTINGS)
    assert (retry.kind, retry.attempt, retry.deletes) == (ActionKind.RETRY, 2, (("MPIJob", STY1),))
    waits = not_created(obj, retry, refused, NOW, SETTINGS)  # the MPIJob deleted, its successor refused
    change = transition(obj, waits, NOW)
    after = {**obj, "status": merge_patch(obj["status"], change.patch)}
    status = after["status"]
    assert status["attempts"]["stylize"] == 2 and status[counter] == int(obj["status"].get(counter) or 0) + 1
    assert status["failure"]["attempt"] == 1 and status["failure"]["reason"] == retry.failure.reason
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "ChildRefused") and refused.message in stalled["message"]
    assert (status["reason"], status["message"]) == ("ChildRefused", stalled["message"])
    assert change.event[0] == "Warning" and retry.failure.reason in change.event[2] and refused.message in change.event[2]
    assert ("permanentStallSince" in status) == refused.permanent

    again = decide(after, {}, now=NOW + timedelta(seconds=10), settings=SETTINGS)  # attempt 1 is gone
    assert (again.kind, again.stage, again.attempt, again.reason) == (ActionKind.CREATE, "stylize", 2, "StylizeStarted")
    assert (waits.kind, waits.reason, waits.permanent) == (ActionKind.RETRY_WAITS, "ChildRefused", refused.permanent)
    still = not_created(after, again, refused, NOW + timedelta(seconds=10), SETTINGS)  # refused again
    assert still.kind == ActionKind.WAIT  # said already: no second Event, no status write
    created = apply(after, again, NOW + timedelta(seconds=20))  # the quota has room now
    assert created["status"]["children"]["stylize"] == STY2
    assert next(c for c in created["status"]["conditions"] if c["type"] == "Stalled")["status"] == "False"
    assert created["status"][counter] == status[counter]  # one retry, spent once
