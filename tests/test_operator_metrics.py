"""What /metrics counts, produced by prometheus_client and read back with its parser, and the HTTP
endpoint itself (tests/test_operator_kopf.py scrapes it from a running operator)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from stylebatch_operator.decide import Action
from stylebatch_operator.metrics import Metrics
from stylebatch_operator.names import child_labels
from stylebatch_operator.settings import Settings
from stylebatch_operator.spec import resolve
from stylebatch_operator.states import ActionKind
from stylebatch_operator.status import iso, transition
from stylebatch_operator.web import application

A, B = ("media", "a"), ("media", "b")
T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)
SPEC = resolve({"input": "az://videos/a.mp4", "output": "az://videos/out/a.mp4"}, Settings(jobs={"storage": {"secretName": "s"}}))


def samples(metrics: Metrics) -> dict[str, float]:
    """name{label="value",...} -> value, as a Prometheus server would read the exposition."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def job(created: datetime, **status) -> dict:
    return {"metadata": {"namespace": "media", "name": "a", "uid": "u-a", "creationTimestamp": iso(created)},
            "status": status}


def child(stage: str, created: datetime) -> dict:
    return {"metadata": {"name": f"a-{stage}-1", "creationTimestamp": iso(created),
                         "labels": child_labels("a", stage, 1)}}


def test_jobs_are_counted_by_phase_every_phase_always_present():
    m = Metrics()
    m.observe_job(A, {})  # not accepted yet
    m.observe_job(B, {"phase": "Stylizing"})
    s = samples(m)
    assert s['stylebatch_jobs{phase="Pending"}'] == 1 and s['stylebatch_jobs{phase="Stylizing"}'] == 1
    assert s['stylebatch_jobs{phase="Failed"}'] == 0
    m.observe_job(B, {"phase": "Failed"})
    m.forget_job(A)
    s = samples(m)
    assert s['stylebatch_jobs{phase="Pending"}'] == 0 and s['stylebatch_jobs{phase="Stylizing"}'] == 0
    assert s['stylebatch_jobs{phase="Failed"}'] == 1


def test_frames_count_once_each_even_when_a_retry_reports_less_at_first():
    m = Metrics()
    m.observe_job(A, {"phase": "Stylizing", "progress": {"framesDone": 300}})  # running when the operator started
    m.observe_job(A, {"phase": "Stylizing", "progress": {"framesDone": 340}})
    m.observe_job(A, {"phase": "Stylizing", "progress": {"framesDone": 200}})  # a retry's first lines
    m.observe_job(A, {"phase": "Stylizing", "progress": {"framesDone": 360}})
    m.observe_job(B, {})
    m.observe_job(B, {"phase": "Stylizing", "progress": {"framesDone": 10}})
    assert samples(m)["stylebatch_frames_stylized_total"] == 40 + 20 + 10


def test_frames_per_second_per_job_between_its_last_two_readings_and_only_while_stylizing():
    m = Metrics()
    fps = 'stylebatch_job_frames_per_second{job="a",namespace="media"}'
    m.observe_job(A, {"phase": "Stylizing", "progress": {"framesDone": 100, "updateTime": iso(T0)}})
    assert fps not in samples(m)  # one reading: no speed yet
    m.observe_job(A, {"phase": "Stylizing", "progress": {"framesDone": 160, "updateTime": iso(T0 + timedelta(seconds=20))}})
    m.observe_job(A, {"phase": "Stylizing", "progress": {"framesDone": 160, "updateTime": iso(T0 + timedelta(seconds=20))}})
    assert samples(m)[fps] == 3.0  # the same reading seen twice (watch and reconcile) changes nothing
    m.observe_job(A, {"phase": "Postprocessing", "progress": {"framesDone": 300, "updateTime": iso(T0)}})
    assert fps not in samples(m)


def through(m: Metrics, status: dict, action: Action, child: dict | None = None,
            now: datetime = T0, created: datetime = T0) -> None:
    """The operator carrying out `action` on job a (with `status`): the metrics see what it writes."""
    obj = {**job(created, **status), "spec": SPEC}
    m.observe_transition(obj, transition(obj, action, now).patch, child, now)


def test_retries_and_failures_are_counted_by_reason():
    m = Metrics()
    through(m, {"phase": "Stylizing"}, Action(ActionKind.RETRY, "stylize", 2, reason="ChildFailed"))
    through(m, {"phase": "Stylizing", "retries": 1}, Action(ActionKind.RETRY, "stylize", 3, reason="ChildFailed"))
    through(m, {"phase": "Preprocessing"}, Action(ActionKind.RETRY, "preprocess", 2, reason="Disrupted", counted=False))
    through(m, {"phase": "Pending"}, Action(ActionKind.CREATE, "preprocess", 1))
    through(m, {"phase": "Preprocessing"}, Action(ActionKind.FAIL, "preprocess", 1, reason="InvalidInput"))
    s = samples(m)
    assert s['stylebatch_child_retries_total{reason="ChildFailed",stage="stylize"}'] == 2
    assert s['stylebatch_child_retries_total{reason="Disrupted",stage="preprocess"}'] == 1
    assert 'stylebatch_child_retries_total{reason="",stage="preprocess"}' not in s
    assert s['stylebatch_job_failures_total{reason="InvalidInput"}'] == 1


def test_waits_and_stage_durations_are_histograms_of_the_transitions_this_operator_saw():
    m = Metrics()
    created = T0 - timedelta(seconds=40)
    through(m, {}, Action(ActionKind.START, reason="Accepted", spec=SPEC), created=created)
    through(m, {"phase": "Stylizing", "queuedSince": iso(T0 + timedelta(seconds=20))}, Action(ActionKind.ADMIT),
            now=T0 + timedelta(seconds=80), created=created)
    through(m, {"phase": "Postprocessing", "queuedSince": iso(T0 + timedelta(seconds=890)), "queuedSeconds": 60},
            Action(ActionKind.ADMIT), now=T0 + timedelta(seconds=900), created=created)  # a later child
    through(m, {"phase": "Preprocessing"}, Action(ActionKind.ADVANCE, "stylize", 1), child("preprocess", T0),
            now=T0 + timedelta(seconds=20), created=created)
    through(m, {"phase": "Postprocessing", "startTime": iso(T0)}, Action(ActionKind.SUCCEED, reason="Succeeded"),
            child("postprocess", T0 + timedelta(seconds=400)), now=T0 + timedelta(seconds=430), created=created)
    s = samples(m)
    assert (s["stylebatch_job_start_seconds_count"], s["stylebatch_job_start_seconds_sum"]) == (1, 40)
    assert s['stylebatch_job_start_seconds_bucket{le="30.0"}'] == 0 and s['stylebatch_job_start_seconds_bucket{le="60.0"}'] == 1
    assert (s["stylebatch_job_admission_seconds_count"], s["stylebatch_job_admission_seconds_sum"]) == (1, 120)
    assert s['stylebatch_stage_duration_seconds_sum{stage="preprocess"}'] == 20
    assert s['stylebatch_stage_duration_seconds_sum{stage="postprocess"}'] == 30
    assert 'stylebatch_stage_duration_seconds_count{stage="stylize"}' not in s  # no stylize finished
    assert (s["stylebatch_job_duration_seconds_count"], s["stylebatch_job_duration_seconds_sum"]) == (1, 430)


def test_the_upload_trigger_counts_into_the_same_registry():
    m = Metrics()
    key = ("media", "incoming")
    m.watch.received[(key, "queue")] += 2
    m.watch.created[key] += 1
    m.watch.observe_lag(key, 12)
    s = samples(m)
    assert s['stylebatch_watch_events_received_total{namespace="media",source="queue",watch="incoming"}'] == 2
    assert s['stylebatch_watch_jobs_created_total{namespace="media",watch="incoming"}'] == 1
    assert s['stylebatch_watch_upload_to_job_seconds_bucket{le="15.0",namespace="media",watch="incoming"}'] == 1
    assert s['stylebatch_watch_upload_to_job_seconds_bucket{le="5.0",namespace="media",watch="incoming"}'] == 0


@pytest.mark.parametrize("first", [Metrics, Metrics])
def test_two_metrics_objects_never_share_counts(first):
    a, b = first(), Metrics()
    through(a, {"phase": "Stylizing"}, Action(ActionKind.FAIL, reason="X"))
    assert 'stylebatch_job_failures_total{reason="X"}' not in samples(b)


def test_healthz_waits_for_the_operators_startup_and_metrics_is_prometheus_text():
    async def scenario() -> None:
        started = False
        m = Metrics()
        m.observe_job(A, {"phase": "Succeeded"})
        async with TestClient(TestServer(application(m, lambda: started))) as client:
            assert (await client.get("/healthz")).status == 503
            started = True
            assert (await client.get("/healthz")).status == 200
            resp = await client.get("/metrics")
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            text = await resp.text()
            assert 'stylebatch_jobs{phase="Succeeded"} 1.0\n' in text
            families = {f.name: f.type for f in text_string_to_metric_families(text)}
            assert families["stylebatch_stage_duration_seconds"] == "histogram"
            assert families["stylebatch_child_retries"] == "counter" and families["stylebatch_jobs"] == "gauge"
    asyncio.run(scenario())
