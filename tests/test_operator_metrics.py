"""What /metrics counts, and the HTTP endpoint itself (tests/test_operator_kopf.py scrapes it from a
running operator)."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer

from stylebatch_operator.decide import CREATE, RETRY, Action
from stylebatch_operator.metrics import Metrics
from stylebatch_operator.web import application

A, B = ("media", "a"), ("media", "b")


def samples(metrics: Metrics) -> dict[str, float]:
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in metrics.render().splitlines() if not line.startswith("#"))}


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


def test_retries_are_counted_by_stage():
    m = Metrics()
    m.observe_action(Action(RETRY, "stylize", 2))
    m.observe_action(Action(RETRY, "stylize", 3))
    m.observe_action(Action(CREATE, "preprocess", 1))
    s = samples(m)
    assert s['stylebatch_child_retries_total{stage="stylize"}'] == 2
    assert s['stylebatch_child_retries_total{stage="preprocess"}'] == 0


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
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert 'stylebatch_jobs{phase="Succeeded"} 1\n' in await resp.text()
    asyncio.run(scenario())
