"""The real operator (kopf, stylebatch_operator.main.serve) driving StyleTransferJobs end to end.

No kube-apiserver can run here: kmock's Kubernetes emulator stands in for it, made a little more
faithful (see ApiServer). The test plays the other controllers: it marks Jobs and MPIJobs complete
or failed the way the job controller and the MPI operator do, and serves the launcher pod's log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
import jsonpatch
import kmock
import pytest
import yaml

from stylebatch.errors import StylebatchError
from stylebatch.progress import RankProgress, format_line
from stylebatch_operator.crd import apply_defaults, crd, openapi_schema
from stylebatch_operator.kube import Kube, skip_environment_lookups
from stylebatch_operator.manifests import build_mpijob
from stylebatch_operator import main
from stylebatch_operator.main import serve
from stylebatch_operator.rbac import CLUSTER_RULES, LEASE_RULES, RULES
from stylebatch_operator import settings as settings_module
from stylebatch_operator.settings import LeaseConfig, Settings
from stylebatch_operator import videowatch_crd
from stylebatch_operator.uris import redact

pytestmark = pytest.mark.timeout(60)

NS = "media"
STJ = "/apis/stylebatch.io/v1alpha1/namespaces/media/styletransferjobs"
JOBS = "/apis/batch/v1/namespaces/media/jobs"
MPIJOBS = "/apis/kubeflow.org/v2beta1/namespaces/media/mpijobs"
PODS = "/api/v1/namespaces/media/pods"
INTERVAL = 0.1  # seconds between reconciliations (10 s in production)
SAS = "sv=2024-05-04&sp=rwl&sig=S3CR3T"


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator, plus what a real API server does and kopf relies on: uid, generateName,
    resourceVersion on every write, generation bumped by spec changes, and 422 (not 500) when a
    JSON patch's resourceVersion test fails; 404 for the resources (plurals) in `unserved`, as for a
    CRD nobody installed."""

    _versions = itertools.count(1)
    unserved: frozenset[str] = frozenset()
    # What the API server's validation says of an object to create (None: valid), as for a pod
    # template Kubernetes refuses: 422 Invalid with that message.
    invalid: Callable[[dict[str, Any]], str | None] = staticmethod(lambda obj: None)
    # What a quota, an admission webhook or RBAC says of an object to create (None: allowed): 403
    # Forbidden with that message.
    forbidden: Callable[[dict[str, Any]], str | None] = staticmethod(lambda obj: None)
    # What the API server answers instead of serving a create (None: it serves it), as when an
    # admission webhook does not answer (500) or API Priority and Fairness throttles (429):
    # (status, reason, message).
    unanswered: Callable[[dict[str, Any]], tuple[int, str, str] | None] = staticmethod(lambda obj: None)
    # Awaited with each DELETE of a named object before it is served: a test's way to change the
    # object between the operator's read and its write, as another client may.
    before_delete: Callable[[kmock.Request], Awaitable[None]] | None = None

    async def _handle(self, request: kmock.Request) -> Any:
        if request.action == kmock.action.DELETE and request.name is not None:
            if self.before_delete is not None:
                await self.before_delete(request)
            self._check_preconditions(request)
        if request.resource is not None and request.resource.plural in self.unserved:
            raise kmock.KubernetesError(status=404, reason="NotFound",
                                        message="the server could not find the requested resource")
        if (request.action == kmock.action.CREATE and isinstance(request.data, dict)
                and (complaint := self.invalid(request.data))):
            raise kmock.KubernetesError(status=422, reason="Invalid", message=complaint)
        if (request.action == kmock.action.CREATE and isinstance(request.data, dict)
                and (complaint := self.forbidden(request.data))):
            raise kmock.KubernetesError(status=403, reason="Forbidden", message=complaint)
        if (request.action == kmock.action.CREATE and isinstance(request.data, dict)
                and (answer := self.unanswered(request.data))):
            raise kmock.KubernetesError(status=answer[0], reason=answer[1], message=answer[2])
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                # (a real API server's 5 random characters, and a retry on a clash; here a longer
                # suffix, so a test's hundreds of Events never clash)
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:12]
            meta.update(uid=str(uuid.uuid4()), generation=1, resourceVersion=str(next(self._versions)),
                        creationTimestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        elif request.action == kmock.action.UPDATE:
            version = str(next(self._versions))
            if isinstance(request.data, list):
                request.data.append({"op": "replace", "path": "/metadata/resourceVersion", "value": version})
            elif isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                if "spec" in request.data and request.subresource is None:
                    current = self.objects[request.resource, request.namespace, request.name]
                    meta["generation"] = current["metadata"]["generation"] + 1
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None


    def _check_preconditions(self, request: kmock.Request) -> None:
        """A DELETE's preconditions.uid, as the API server checks it: 409 Conflict when the object of
        that name is another one (re-created since the client read it)."""
        wanted = ((request.data.get("preconditions") or {}).get("uid")
                  if isinstance(request.data, dict) else None)
        if not wanted:
            return
        try:
            current = self.objects[request.resource, request.namespace, request.name]
        except KeyError:
            return  # not there: kmock's own 404
        actual = None if current.deleted else current.raw["metadata"].get("uid")
        if actual is not None and actual != wanted:
            raise kmock.KubernetesError(status=409, reason="Conflict", message=(
                f"Precondition failed: UID in precondition: {wanted}, UID in object meta: {actual}"))


def kube_for(url: str) -> Kube:
    """The operator's API client, unauthenticated, for a test's server (kmock's)."""
    from kubernetes_asyncio import client

    return Kube(client.ApiClient(client.Configuration(host=url.rstrip("/"))))


@contextlib.asynccontextmanager
async def api_server(install_crds: Sequence[dict[str, Any]] = ()) -> AsyncIterator[ApiServer]:
    """kmock with the resources the operator uses; install_crds: the CRDs to serve (the operator
    command checks the StyleTransferJob's and the VideoWatch's at startup)."""
    async with ApiServer() as api, kmock.Server(api):
        verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
        for key, kind, namespaced, subresources in [
            ("stylebatch.io/v1alpha1/styletransferjobs", "StyleTransferJob", True, {"status"}),
            ("batch/v1/jobs", "Job", True, {"status"}),
            ("kubeflow.org/v2beta1/mpijobs", "MPIJob", True, {"status"}),
            ("v1/pods", "Pod", True, {"status", "log"}),
            ("v1/events", "Event", True, set()),
            ("v1/namespaces", "Namespace", False, set()),
            ("coordination.k8s.io/v1/leases", "Lease", True, set()),
            ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False, set()),
            ("kueue.x-k8s.io/v1beta1/localqueues", "LocalQueue", True, set()),  # (Kueue serves v1beta1 here)
        ]:
            api.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=verbs,
                                                    subresources=subresources)
        api.launcher_log = ""
        for installed in install_crds:  # as `helm install` (or kubectl apply) leaves them
            resp = await api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=installed)
            assert resp.status == 200, await resp.text()
        api[kmock.resource("v1/pods"), kmock.subresource("log")] << (lambda: api.launcher_log.encode())
        yield api


@contextlib.asynccontextmanager
async def operator(api: ApiServer, standby: bool = False, agent: str = "", **options: Any
                   ) -> AsyncIterator[threading.Event]:
    """The operator as `stylebatch operator --namespace media` runs it, until the block ends; yields
    the flag kopf sets once it runs. standby: do not wait for that (a second replica waits for the
    Lease); agent: the User-Agent of the operator's own requests, to tell replicas apart.

    In its own thread and event loop, as in production: when kopf stops, it cancels every task
    of its loop, which must not include the mock server's."""
    stop, ready = threading.Event(), threading.Event()
    failure: list[BaseException] = []
    options = {"namespaces": [NS], "settings": Settings(interval=INTERVAL), **options}

    async def main() -> None:
        kube = kube_for(str(api.url))
        if agent:
            kube._api.user_agent = agent
        try:
            await serve(kube=kube, stop_flag=stop, ready_flag=ready, **options)
        finally:
            await kube.close()

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported in the test's thread
            failure.append(exc)

    errors = ErrorLog()
    logging.getLogger("kopf").addHandler(errors)
    thread = threading.Thread(target=thread_main, name="operator", daemon=True)
    thread.start()
    try:
        assert standby or await asyncio.to_thread(ready.wait, 10), "the operator did not start"
        yield ready
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 20)
        logging.getLogger("kopf").removeHandler(errors)
        assert not thread.is_alive(), "the operator did not stop"
        assert not failure, failure
    assert errors.messages == [], "the operator logged errors"


class ErrorLog(logging.Handler):
    """A handler that failed, an API call kopf gave up on: nothing a clean run logs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def eventually(check: Callable[[], Any], timeout: float = 10) -> Any:
    """check()'s first truthy result; fails the test after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(KeyError, IndexError, TypeError):
            if result := check():
                return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout}s: {inspect.getsource(check).strip()}")
        await asyncio.sleep(0.02)


async def looked_again(api: ApiServer, times: int = 3) -> None:
    """Until the operator has reconciled the job `times` more times from now (each reconciliation
    reads the job first; one more read than that, as a reconciliation under way may have read it
    already): an assertion that something did not happen proves it only after the operator looked,
    which a sleep alone does not make sure of on a slow, loaded machine."""
    start = reads(api)
    await eventually(lambda: reads(api) >= start + times + 1)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 50))


# --- the user's side ---------------------------------------------------------------------------

async def apply_job(api: ApiServer, name: str = "orangutan", **spec: Any) -> None:
    """kubectl apply: the API server fills in the CRD's defaults."""
    body = {"apiVersion": "stylebatch.io/v1alpha1", "kind": "StyleTransferJob",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"input": "az://videos/orangutan.mp4", "output": "az://videos/out/orangutan.mp4",
                     "workers": 2, "storage": {"secretName": "stylebatch-storage"}, **spec}}
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}  # None: leave the field out
    resp = await api.post(STJ, json=apply_defaults(body, openapi_schema()))
    assert resp.status == 200, await resp.text()
    resp.release()  # back to the client's pool (a benchmark applies hundreds)


def job(api: ApiServer, name: str = "orangutan") -> dict[str, Any]:
    return api.objects["stylebatch.io/v1alpha1/styletransferjobs", NS, name].raw


def status(api: ApiServer, name: str = "orangutan") -> dict[str, Any]:
    return job(api, name).get("status") or {}


def phases(api: ApiServer, name: str = "orangutan") -> list[str]:
    """Every phase the job went through, in order."""
    seen: list[str] = []
    for version in api.objects["stylebatch.io/v1alpha1/styletransferjobs", NS, name].history:
        phase = version and (version.get("status") or {}).get("phase")
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
    return seen


def events(api: ApiServer, name: str = "orangutan") -> list[tuple[str, str, str]]:
    return [(e["type"], e["reason"], e["message"]) for (res, _, _), e in api.objects.items()
            if res.plural == "events" and not e.deleted and e["involvedObject"]["name"] == name]


RESOURCES = {"Job": "batch/v1/jobs", "MPIJob": "kubeflow.org/v2beta1/mpijobs"}


def child(api: ApiServer, kind: str, name: str) -> dict[str, Any]:
    return api.objects[RESOURCES[kind], NS, name].raw


def made(api: ApiServer, kind: str, name: str) -> bool:
    try:
        return not api.objects[RESOURCES[kind], NS, name].deleted
    except KeyError:
        return False


def gone(api: ApiServer, kind: str, name: str) -> bool:
    return api.objects[RESOURCES[kind], NS, name].deleted


def creates(api: ApiServer, collection: str) -> list[str]:
    """Names of the objects POSTed to a collection, duplicates included."""
    return [r.data["metadata"]["name"] for r in api if r.method == "POST" and str(r.url.path) == collection]


# --- the other controllers' side ---------------------------------------------------------------

async def finish(api: ApiServer, collection: str, name: str, ok: bool = True, reason: str = "",
                 message: str = "") -> None:
    """What the job controller (Complete/Failed) or the MPI operator (Succeeded/Failed) writes."""
    kind_ok = "Succeeded" if "mpijobs" in collection else "Complete"
    condition = {"type": kind_ok if ok else "Failed", "status": "True", "reason": reason, "message": message}
    resp = await api.patch(f"{collection}/{name}/status", json={"status": {"conditions": [condition]}},
                           headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status == 200, await resp.text()


async def start_launcher(api: ApiServer, mpijob: str, attempt: int) -> None:
    """The MPI operator's launcher pod, carrying the pod template's labels."""
    labels = {**child(api, "MPIJob", mpijob)["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["metadata"]["labels"],
              "training.kubeflow.org/job-name": mpijob, "training.kubeflow.org/job-role": "launcher"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{mpijob}-launcher-abcde", "namespace": NS,
                                                           "labels": labels},
           "status": {"phase": "Running"}}
    assert (await api.post(PODS, json=pod)).status == 200


def ranks_report(api: ApiServer, *done: int, share: int = 50, frames: int = 100) -> None:
    api.launcher_log += "".join(format_line(RankProgress(r, len(done), d, share, frames)) + "\n"
                                for r, d in enumerate(done))


# --- scenarios ---------------------------------------------------------------------------------

def test_a_job_goes_from_apply_to_succeeded_with_progress_conditions_and_events():
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, output="https://acct.blob.core.windows.net/videos/out/orangutan.mp4")

            pre = await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            assert pre["metadata"]["ownerReferences"][0]["uid"] == job(api)["metadata"]["uid"]
            await eventually(lambda: status(api)["phase"] == "Preprocessing")
            await finish(api, JOBS, "orangutan-preprocess-1")

            mpijob = await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-1"))
            assert mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
            await start_launcher(api, "orangutan-stylize-1", 1)
            ranks_report(api, 10, 30)
            await eventually(lambda: status(api)["progress"]["summary"] == "40% (40/100)")
            ranks_report(api, 35, 40)
            await eventually(lambda: status(api)["progress"]["framesDone"] == 75)
            log_reads = [r for r in api if r.subresource == "log"]
            assert {str(r.url.path) for r in log_reads} == {f"{PODS}/orangutan-stylize-1-launcher-abcde/log"}
            assert log_reads[0].params == {"container": "launcher", "tailLines": "1000"}  # bounded reads
            await finish(api, MPIJOBS, "orangutan-stylize-1", reason="MPIJobSucceeded")

            post = await eventually(lambda: child(api, "Job", "orangutan-postprocess-1"))
            assert "sig=" not in str(post["spec"])  # the SAS token comes from the storage Secret
            await finish(api, JOBS, "orangutan-postprocess-1")
            await eventually(lambda: status(api)["phase"] == "Succeeded")

            s = status(api)
            assert phases(api) == ["Pending", "Preprocessing", "Stylizing", "Postprocessing", "Succeeded"]
            conditions = {c["type"]: (c["status"], c["observedGeneration"]) for c in s["conditions"]}
            assert conditions == {"Running": ("False", 1), "Succeeded": ("True", 1), "Failed": ("False", 1)}
            assert s["progress"]["percent"] == 100 and s["observedGeneration"] == 1
            assert s["outputURI"] == "https://acct.blob.core.windows.net/videos/out/orangutan.mp4"
            assert s["startTime"] and s["completionTime"]
            # the finished children go at once (spec.cleanup's default), the job stays
            await eventually(lambda: status(api).get("childrenDeleted"))
            assert sorted(deletes(api, JOBS)) == ["orangutan-postprocess-1", "orangutan-preprocess-1"]
            assert deletes(api, MPIJOBS) == ["orangutan-stylize-1"] and gone(api, "MPIJob", "orangutan-stylize-1")
            await eventually(lambda: events(api)[-1][1] == "ChildrenDeleted")
            assert [reason for _, reason, _ in events(api)] == [
                "Accepted", "PreprocessStarted", "PreprocessSucceeded", "StylizeSucceeded", "Succeeded",
                "ChildrenDeleted"]
            await asyncio.sleep(5 * INTERVAL)
            assert not job(api)["metadata"].get("deletionTimestamp") and status(api)["phase"] == "Succeeded"
            assert "S3CR3T" not in str(s) and "S3CR3T" not in str(events(api))
            # exactly one of each child, however many times the operator looked
            assert creates(api, JOBS) == ["orangutan-preprocess-1", "orangutan-postprocess-1"]
            assert creates(api, MPIJOBS) == ["orangutan-stylize-1"]
            # a finished job holds no finalizer: deleting it never waits for the operator
            await eventually(lambda: not job(api)["metadata"].get("finalizers"))
            assert_requests_allowed_by_rbac(api)
    run(scenario)


def test_the_launcher_log_is_read_only_while_stylizing_and_no_more_often_than_progress_needs():
    async def scenario() -> None:
        def log_reads() -> int:
            return len([r for r in api if r.subresource == "log"])

        def reconciliations() -> int:
            return len([r for r in api if r.method == "GET" and str(r.url.path) == f"{STJ}/orangutan"])

        settings = Settings(interval=INTERVAL, progress_interval=1.0)
        async with api_server() as api, operator(api, settings=settings):
            await apply_job(api)
            await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            await asyncio.sleep(10 * INTERVAL)
            await finish(api, JOBS, "orangutan-preprocess-1")
            await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-1"))
            assert log_reads() == 0  # nothing to read before stylize
            await start_launcher(api, "orangutan-stylize-1", 1)
            ranks_report(api, 10, 30)
            await eventually(lambda: status(api)["progress"]["framesDone"] == 40)
            loop = asyncio.get_running_loop()
            reads, looks, began = log_reads(), reconciliations(), loop.time()
            await asyncio.sleep(3)
            await eventually(lambda: reconciliations() - looks > 10)  # (fewer than 30 on a busy machine)
            took = loop.time() - began  # (3 s, or more where the machine is busy)
            # read once a second at most, however often the operator looked at the job (every 0.1 s),
            # where it used to read at every look
            read = log_reads() - reads
            assert read <= took + 1 and read < reconciliations() - looks, (read, took)
            await finish(api, MPIJOBS, "orangutan-stylize-1")
            await eventually(lambda: child(api, "Job", "orangutan-postprocess-1"))
            reads = log_reads()
            await asyncio.sleep(15 * INTERVAL)
            await looked_again(api, 5)
            assert log_reads() == reads  # nor after stylize
    run(scenario)


def test_an_evicted_spot_worker_is_retried_and_only_the_mpijob_runs_again():
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, scheduling={"spot": True})
            await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            await finish(api, JOBS, "orangutan-preprocess-1")
            first = await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-1"))
            await finish(api, MPIJOBS, "orangutan-stylize-1", ok=False, reason="MPIJobEvicted",
                         message="1/2 workers are evicted")

            second = await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-2"))
            s = await eventually(lambda: status(api).get("disruptions") == 1 and status(api))
            assert s["phase"] == "Stylizing" and s["attempts"]["stylize"] == 2
            assert s["retries"] == 0  # an eviction is not the job's failure: the budget is untouched
            assert (s["failure"]["child"], s["failure"]["reason"]) == ("MPIJob/orangutan-stylize-1", "MPIJobEvicted")
            retry = await eventually(lambda: [e for e in events(api) if e[1] == "Disrupted"])
            assert retry[0][0] == "Warning" and "1/2 workers are evicted" in retry[0][2]
            assert "not counted against spec.retries" in retry[0][2]
            # same work dir: the new attempt resumes from the parts already stylized
            assert _launcher_args(first)[-12:] == _launcher_args(second)[-12:]

            await finish(api, MPIJOBS, "orangutan-stylize-2")
            await eventually(lambda: child(api, "Job", "orangutan-postprocess-1"))
            await finish(api, JOBS, "orangutan-postprocess-1")
            await eventually(lambda: status(api)["phase"] == "Succeeded")
            assert creates(api, JOBS) == ["orangutan-preprocess-1", "orangutan-postprocess-1"]
    run(scenario)


def test_a_worker_lost_with_its_node_is_retried_uncounted_though_its_pod_is_gone_when_the_mpijob_fails():
    """A spot VM reclaimed: the pod GC marks the worker's pod (DisruptionTarget) and deletes it, the
    launcher fails on the lost connection, and the MPIJob's own status says nothing of a disruption.
    The operator saw the pod while the MPIJob ran; that is what keeps the retry off spec.retries."""
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, retries=1)
            await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            await finish(api, JOBS, "orangutan-preprocess-1")
            mpijob = await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-1"))
            await start_launcher(api, "orangutan-stylize-1", 1)
            worker = await add_pod(api, "MPIJob", "orangutan-stylize-1", "worker-1", {
                "phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True",
                                                   "reason": "DeletionByPodGC",
                                                   "message": "PodGC: node no longer exists"}]}, role="worker")
            seen = await eventually(lambda: status(api).get("disruption"))
            assert (seen["child"], seen["uid"]) == ("MPIJob/orangutan-stylize-1", mpijob["metadata"]["uid"])
            resp = await api.delete(f"{PODS}/{worker}")  # the pod GC's force delete
            assert resp.status == 200, await resp.text()
            await finish(api, MPIJOBS, "orangutan-stylize-1", ok=False, reason="BackoffLimitExceeded/",
                         message="Job has reached the specified backoff limit: ")

            await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-2"))
            s = await eventually(lambda: status(api).get("disruptions") == 1 and status(api))
            assert s["retries"] == 0 and "disruption" not in s  # the new MPIJob's pods are watched afresh
            retry = await eventually(lambda: [e for e in events(api) if e[1] == "Disrupted"])
            assert "DeletionByPodGC" in retry[0][2] and "not counted against spec.retries" in retry[0][2]
            assert "seen while it ran" in retry[0][2]  # from the status: no pod listed showed it any more
    run(scenario)


async def make_local_queue(api: ApiServer, name: str, active: bool = True) -> None:
    """What a cluster admin's Kueue set-up has: a LocalQueue in the job's namespace."""
    conditions = [{"type": "Active", "status": "True" if active else "False",
                   "reason": "Ready" if active else "ClusterQueueIsInactive",
                   "message": "" if active else "Can't submit new workloads to clusterQueue"}]
    resp = await api.post(f"/apis/kueue.x-k8s.io/v1beta1/namespaces/{NS}/localqueues", json={
        "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "LocalQueue", "metadata": {"name": name, "namespace": NS},
        "spec": {"clusterQueue": "gpus"}, "status": {"conditions": conditions}})
    assert resp.status == 200, await resp.text()


def test_with_kueue_every_child_waits_suspended_until_admitted_and_the_status_says_queued_then_admitted():
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await make_local_queue(api, "gpu-spot")
            await apply_job(api, queueName="gpu-spot")
            pre = await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            assert pre["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-spot" and pre["spec"]["suspend"]
            queued = await eventually(lambda: {c["type"]: c for c in status(api)["conditions"]}["Queued"])
            assert queued["status"] == "True" and "Job orangutan-preprocess-1 waits for Kueue" in queued["message"]
            await admit(api, JOBS, "orangutan-preprocess-1")
            await eventually(lambda: {c["type"]: c["status"] for c in status(api)["conditions"]}["Admitted"] == "True")
            await finish(api, JOBS, "orangutan-preprocess-1")

            mpijob = await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-1"))
            assert mpijob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-spot"
            assert mpijob["spec"]["runPolicy"]["suspend"] is True  # launcher and workers admitted together
            await eventually(lambda: status(api).get("queuedSince"))
            conditions = {c["type"]: c["status"] for c in status(api)["conditions"]}
            assert (conditions["Queued"], conditions["Admitted"], conditions["Running"], status(api)["phase"]) == (
                "True", "False", "False", "Stylizing")  # nothing of it runs while it waits
            assert not [r for r in api if r.subresource == "log"]  # no launcher to read while queued
            await admit(api, MPIJOBS, "orangutan-stylize-1")
            await eventually(lambda: "queuedSince" not in status(api))
            assert {c["type"]: c["status"] for c in status(api)["conditions"]}["Running"] == "True"
            assert status(api)["queuedSeconds"] >= 0
            await eventually(lambda: [reason for _, reason, _ in events(api)] == [
                "Accepted", "PreprocessStarted", "Queued", "Admitted", "PreprocessSucceeded", "Queued", "Admitted"])
    run(scenario)


@pytest.mark.parametrize("case, made, reason, fails", [
    ("no LocalQueue of that name (a typo): shown, then the job fails", None, "NoLocalQueue", True),
    ("its ClusterQueue stopped: shown, waited on", False, "LocalQueueInactive", False),
    ("the LocalQueue made meanwhile: the stall is over, the child waits its turn", True, "NoLocalQueue", False),
])
def test_a_job_waiting_in_a_local_queue_that_cannot_admit_it_says_so_instead_of_waiting_for_ever(
        case, made, reason, fails):
    """A queueName nobody serves (a typo, a deleted LocalQueue, no Kueue) left the job Queued, its
    deadline not running, for ever: 'waits for Kueue to admit it' looked normal."""
    async def scenario() -> None:
        settings = Settings(interval=INTERVAL, stall_grace_seconds=GRACE if fails else 60)
        async with api_server() as api, operator(api, settings=settings):
            if made is False:
                await make_local_queue(api, "gpu-spto", active=False)
            await apply_job(api, queueName="gpu-spto")
            stalled = await once_stalled(api)
            assert stalled["reason"] == reason and "LocalQueue gpu-spto" in stalled["message"]
            assert child(api, "Job", "orangutan-preprocess-1")["spec"]["suspend"] is True
            if fails:
                await eventually(lambda: status(api)["phase"] == "Failed", timeout=GRACE + 10)
                assert condition(api, "Failed")["reason"] == "NoLocalQueue"
                assert gone(api, "Job", "orangutan-preprocess-1")  # nothing of it left waiting
            elif made:
                await make_local_queue(api, "gpu-spto")
                await eventually(lambda: condition(api, "Stalled")["status"] == "False")
                await eventually(lambda: condition(api, "Queued")["status"] == "True")
                assert status(api)["phase"] == "Preprocessing"
            else:
                await asyncio.sleep(GRACE + 1)
                await looked_again(api)  # after the grace period
                assert status(api)["phase"] == "Preprocessing"  # an inactive queue may be resumed: waited on
    run(scenario)


async def admit(api: ApiServer, collection: str, name: str) -> None:
    """What Kueue does once the workload fits its ClusterQueue's quota: unsuspend it."""
    spec = {"runPolicy": {"suspend": False}} if "mpijobs" in collection else {"suspend": False}
    resp = await api.patch(f"{collection}/{name}", json={"spec": spec},
                           headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status == 200, await resp.text()


LEASES = "/apis/coordination.k8s.io/v1/namespaces/media/leases"
FAST_LEASE = {"lease_seconds": 2, "renew_seconds": 0.3, "retry_seconds": 0.2}


def lease(api: ApiServer) -> dict[str, Any]:
    return api.objects["coordination.k8s.io/v1/leases", NS, "stylebatch-operator"].raw


def test_of_two_operators_only_the_lease_holder_acts_and_the_other_takes_over_when_it_stops():
    async def scenario() -> None:
        a, b = (LeaseConfig("stylebatch-operator", NS, identity=f"operator-{x}", **FAST_LEASE) for x in "ab")
        async with api_server() as api, contextlib.AsyncExitStack() as b_stack:
            async with operator(api, lease=a, agent="operator-a"):
                b_running = await b_stack.enter_async_context(operator(api, lease=b, agent="operator-b", standby=True))
                await apply_job(api)
                await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
                await asyncio.sleep(10 * INTERVAL)
                # (b's thread may start late on a busy machine: its tries at the Lease are waited for)
                await eventually(lambda: len([r for r in api if r.headers.get("User-Agent") == "operator-b"]) >= 2)
                assert lease(api)["spec"]["holderIdentity"] == "operator-a" and not b_running.is_set()
                by_b = {str(r.url.path) for r in api if r.headers.get("User-Agent") == "operator-b"}
                assert by_b and by_b <= {LEASES, f"{LEASES}/stylebatch-operator"}  # only looks at the Lease
                # one kopf watches the jobs: the standby's has not started
                assert len([r for r in api if r.params.get("watch") == "true" and str(r.url.path) == STJ]) == 1
            # a stopped (a rollout, a drained node) and handed the Lease back: b takes over at once
            # (at once: the Lease is handed back; 10 s, as for any operator's start, on a busy machine)
            assert await asyncio.to_thread(b_running.wait, 10), "the standby did not take over"
            assert lease(api)["spec"]["holderIdentity"] == "operator-b"
            await finish(api, JOBS, "orangutan-preprocess-1")
            await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-1"))
            assert {r.headers.get("User-Agent") for r in api if r.method == "POST" and str(r.url.path) == MPIJOBS} \
                == {"operator-b"}
            assert creates(api, JOBS) == ["orangutan-preprocess-1"]  # nothing done twice
            assert lease(api)["spec"]["leaseTransitions"] == 1
            await eventually(lambda: "PreprocessSucceeded" in [r for _, r, _ in events(api)])  # (posted by b's kopf)
            assert_requests_allowed_by_rbac(api, stylized=False)
    run(scenario)


def test_a_lease_left_by_a_crashed_operator_is_taken_once_it_expires():
    async def scenario() -> None:
        async with api_server() as api:
            now = "2026-05-01T12:00:00.000000Z"
            stale = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": "stylebatch-operator", "namespace": NS},
                     "spec": {"holderIdentity": "crashed", "leaseDurationSeconds": 2, "acquireTime": now,
                              "renewTime": now, "leaseTransitions": 4}}
            assert (await api.post(LEASES, json=stale)).status == 200
            config = LeaseConfig("stylebatch-operator", NS, identity="operator-a", **FAST_LEASE)
            started = asyncio.get_running_loop().time()
            async with operator(api, lease=config, standby=True) as running:
                await apply_job(api)
                assert await asyncio.to_thread(running.wait, 10)
                waited = asyncio.get_running_loop().time() - started
                # not before the crashed holder's lease ran out, as this operator's clock measures it
                assert waited >= 2
                await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
                spec = lease(api)["spec"]
                assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("operator-a", 5)
    run(scenario)


def test_kopf_watches_end_before_azures_load_balancer_drops_an_idle_connection():
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api)
            await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            watches = [r for r in api if r.params.get("watch") == "true"]
            assert watches and all(0 < int(r.params["timeoutSeconds"]) < 240 for r in watches)
    run(scenario)


def test_a_stage_that_keeps_failing_spends_the_budget_then_fails_the_job_with_its_reason():
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, retries=1)
            for attempt in (1, 2):
                name = f"orangutan-preprocess-{attempt}"
                await eventually(lambda: child(api, "Job", name))
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": f"{name}-x7k2p", "namespace": NS,
                                    "labels": child(api, "Job", name)["spec"]["template"]["metadata"]["labels"]},
                       "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {
                           "exitCode": 1, "message": "stylebatch: error: cannot read "
                                                     f"https://acct.blob.core.windows.net/v/o.mp4?{SAS}: 403\n"}}}]}}
                assert (await api.post(PODS, json=pod)).status == 200
                await finish(api, JOBS, name, ok=False, reason="BackoffLimitExceeded",
                             message="Job has reached the specified backoff limit")

            await eventually(lambda: status(api)["phase"] == "Failed")
            s = status(api)
            failed = {c["type"]: c for c in s["conditions"]}["Failed"]
            assert (failed["status"], failed["reason"]) == ("True", "RetriesExhausted")
            assert "stylebatch: error: cannot read https://acct.blob.core.windows.net/v/o.mp4" in failed["message"]
            assert (s["failure"]["stage"], s["failure"]["reason"]) == ("preprocess", "BackoffLimitExceeded")
            warning = await eventually(lambda: [e for e in events(api) if e[1] == "RetriesExhausted"])
            assert warning[0][0] == "Warning" and "BackoffLimitExceeded" in warning[0][2]
            assert "S3CR3T" not in str(s) and "S3CR3T" not in str(events(api))
            await asyncio.sleep(5 * INTERVAL)
            assert creates(api, JOBS) == ["orangutan-preprocess-1", "orangutan-preprocess-2"]
            assert creates(api, MPIJOBS) == []
    run(scenario)


def test_a_user_error_fails_the_job_at_once_without_a_retry():
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, retries=3)
            name = "orangutan-preprocess-1"
            await eventually(lambda: child(api, "Job", name))
            line = "stylebatch: error: --codec vp9 cannot go into .mp4 (use .webm or .mkv)"
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"{name}-x7k2p", "namespace": NS,
                                "labels": child(api, "Job", name)["spec"]["template"]["metadata"]["labels"]},
                   "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {
                       "exitCode": 2, "reason": "Error", "message": f"probing input\n{line}\n"}}}]}}
            assert (await api.post(PODS, json=pod)).status == 200
            await finish(api, JOBS, name, ok=False, reason="BackoffLimitExceeded",
                         message="Job has reached the specified backoff limit")

            await eventually(lambda: status(api)["phase"] == "Failed")
            s = status(api)
            failed = {c["type"]: c for c in s["conditions"]}["Failed"]
            assert (failed["status"], failed["reason"]) == ("True", "InvalidInput") and line in failed["message"]
            assert (s["failure"]["reason"], s["failure"]["message"]) == ("InvalidInput", line)
            assert s["retries"] == 0
            warning = await eventually(lambda: [e for e in events(api) if e[1] == "InvalidInput"])
            assert warning[0][0] == "Warning" and line in warning[0][2]
            await asyncio.sleep(5 * INTERVAL)
            assert creates(api, JOBS) == [name]
    run(scenario)


def test_a_pod_of_an_earlier_job_of_the_same_name_is_not_taken_for_the_new_jobs():
    """A job deleted and re-created with the same name: the earlier job's preprocess pod (same
    name, stage and attempt labels, the worker's bad-input exit code) is still terminating when the
    new job's own preprocess fails for a transient reason. The new job retries; it does not fail
    with the earlier job's verdict."""
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, retries=3)
            name = "orangutan-preprocess-1"
            labels = await eventually(lambda: child(api, "Job", name)["spec"]["template"]["metadata"]["labels"])
            assert labels["stylebatch.io/job-uid"] == job(api)["metadata"]["uid"]
            earlier = {k: v for k, v in labels.items() if k != "stylebatch.io/job-uid"}  # an earlier operator's
            for pod_name, pod_labels, code, line in [
                    (f"{name}-old11", earlier, 2, "stylebatch: error: the earlier job's input is not a video"),
                    (f"{name}-old22", {**labels, "stylebatch.io/job-uid": "uid-of-the-earlier-orangutan"}, 2,
                     "stylebatch: error: the earlier job's input is not a video"),
                    (f"{name}-x7k2p", labels, 75, "stylebatch: error: storage unreachable")]:
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": pod_name, "namespace": NS, "labels": pod_labels},
                       "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {
                           "exitCode": code, "reason": "Error", "message": line}}}]}}
                assert (await api.post(PODS, json=pod)).status == 200
            await finish(api, JOBS, name, ok=False, reason="BackoffLimitExceeded",
                         message="Job has reached the specified backoff limit")

            await eventually(lambda: child(api, "Job", "orangutan-preprocess-2") and status(api)["retries"])
            s = status(api)
            assert (s["phase"], s["reason"], s["retries"]) == ("Preprocessing", "Retrying", 1)
            assert "storage unreachable" in s["failure"]["message"] and "earlier" not in s["failure"]["message"]
            assert not [e for e in events(api) if e[1] == "InvalidInput"]
    run(scenario)


def test_a_restarted_operator_carries_on_without_duplicates_or_starting_over():
    async def scenario() -> None:
        async with api_server() as api:
            async with operator(api):
                await apply_job(api)
                await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
                await finish(api, JOBS, "orangutan-preprocess-1")
                await eventually(lambda: status(api)["phase"] == "Stylizing")
                # (kopf posts events from a queue of its own: the first operator's, before it stops)
                await eventually(lambda: "PreprocessSucceeded" in [r for _, r, _ in events(api)])
            # operator down: the MPIJob finishes meanwhile
            await finish(api, MPIJOBS, "orangutan-stylize-1")
            async with operator(api):
                await eventually(lambda: child(api, "Job", "orangutan-postprocess-1"))
                await finish(api, JOBS, "orangutan-postprocess-1")
                await eventually(lambda: status(api)["phase"] == "Succeeded")
                # the second operator's events posted (one object's are posted in order): an Accepted
                # posted again would be among them
                await eventually(lambda: "Succeeded" in [r for _, r, _ in events(api)])
            assert creates(api, JOBS) == ["orangutan-preprocess-1", "orangutan-postprocess-1"]
            assert creates(api, MPIJOBS) == ["orangutan-stylize-1"]
            assert [r for _, r, _ in events(api)].count("Accepted") == 1
    run(scenario)


def test_a_child_created_just_before_a_crash_is_adopted_not_duplicated():
    async def scenario() -> None:
        async with api_server() as api:
            async with operator(api):
                await apply_job(api)
                await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            # while no operator runs: the preprocess Job completes, and the MPIJob appears as a
            # crashed operator would have left it (created, but not yet noted in the job's status)
            await finish(api, JOBS, "orangutan-preprocess-1")
            assert (await api.post(MPIJOBS, json=build_mpijob(job(api)))).status == 200
            assert status(api)["phase"] == "Preprocessing"

            async with operator(api):
                await eventually(lambda: status(api)["phase"] == "Stylizing")
                await eventually(lambda: events(api)[-1][1] == "PreprocessSucceeded")
            assert creates(api, MPIJOBS) == ["orangutan-stylize-1"] * 2  # the second POST got 409: adopted
            assert len([key for key in api.objects if key[0].plural == "mpijobs"]) == 1
            assert status(api)["children"]["stylize"] == "orangutan-stylize-1"
    run(scenario)


def test_children_left_by_an_earlier_job_of_the_same_name_are_not_taken_for_the_new_jobs():
    """A job deleted with --cascade=orphan (or re-created before the garbage collector got to its
    children) leaves finished children with the names the new job's children get. The new job must
    not take their success for its own (it would say Succeeded having run nothing), nor read or
    delete them: it says so, and runs once they are gone."""
    async def scenario() -> None:
        earlier = {"apiVersion": "stylebatch.io/v1alpha1", "kind": "StyleTransferJob", "name": "orangutan",
                   "uid": "uid-of-the-earlier-orangutan", "controller": True, "blockOwnerDeletion": True}
        async with api_server() as api:
            for collection, kind, name in [(JOBS, "Job", "orangutan-preprocess-1"),
                                           (MPIJOBS, "MPIJob", "orangutan-stylize-1"),
                                           (JOBS, "Job", "orangutan-postprocess-1")]:
                left = {"apiVersion": RESOURCES[kind].rsplit("/", 1)[0], "kind": kind,
                        "metadata": {"name": name, "namespace": NS, "ownerReferences": [earlier],
                                     "labels": {"stylebatch.io/job": "orangutan"}}, "spec": {}}
                assert (await api.post(collection, json=left)).status == 200
                await finish(api, collection, name)
            async with operator(api):
                await apply_job(api)
                stalled = await once_stalled(api)
                assert stalled["reason"] == "ChildNameTaken"
                assert "Job orangutan-preprocess-1 exists but is not this job's" in stalled["message"]
                await looked_again(api, 5)
                assert status(api)["phase"] == "Pending"  # not Succeeded: it has run nothing
                assert deletes(api, JOBS) == deletes(api, MPIJOBS) == []  # not the operator's to delete
                assert not [r for r in api if r.subresource == "log"]

                (await api.delete(f"{JOBS}/orangutan-preprocess-1")).release()  # the garbage collector
                pre = await eventually(lambda: not gone(api, "Job", "orangutan-preprocess-1")
                                       and child(api, "Job", "orangutan-preprocess-1"))
                assert pre["metadata"]["ownerReferences"][0]["uid"] == job(api)["metadata"]["uid"]
                await eventually(lambda: status(api)["phase"] == "Preprocessing")
                assert condition(api, "Stalled")["status"] == "False"

                # the next stage's name is taken too: the create's 409 is not an adoption
                await finish(api, JOBS, "orangutan-preprocess-1")
                await eventually(lambda: condition(api, "Stalled")["status"] == "True"
                                 and "MPIJob orangutan-stylize-1 exists but is not this job's"
                                 in condition(api, "Stalled")["message"])
                assert status(api)["phase"] == "Preprocessing" and deletes(api, MPIJOBS) == []
                (await api.delete(f"{MPIJOBS}/orangutan-stylize-1")).release()
                await eventually(lambda: status(api)["phase"] == "Stylizing")
                assert child(api, "MPIJob", "orangutan-stylize-1")["metadata"]["ownerReferences"][0]["uid"] == \
                    job(api)["metadata"]["uid"]
    run(scenario)


def test_deleting_a_job_releases_it_and_leaves_its_children_to_the_garbage_collector():
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api)
            pre = await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            assert job(api)["metadata"]["finalizers"] == ["stylebatch.io/operator"]
            (await api.delete(f"{STJ}/orangutan")).release()
            await eventually(lambda: api.objects["stylebatch.io/v1alpha1/styletransferjobs", NS, "orangutan"].deleted)
            requests_after = len(list(api))
            await asyncio.sleep(5 * INTERVAL)
            assert not [r for r in list(api)[requests_after:] if "orangutan" in str(r.url.path)]
            # Kubernetes deletes the children: they are controlled by the deleted job
            owner = pre["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["controller"], owner["blockOwnerDeletion"]) == ("StyleTransferJob", True, True)
    run(scenario)


def test_watching_all_namespaces_finds_jobs_in_any_of_them():
    async def scenario() -> None:
        async with api_server() as api, operator(api, namespaces=[]):
            await apply_job(api)
            await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            watches = {str(r.url.path) for r in api if r.params.get("watch") == "true"}
            assert "/apis/stylebatch.io/v1alpha1/styletransferjobs" in watches
    run(scenario)


def test_liveness_and_metrics_endpoints_report_jobs_frames_and_retries():
    async def scenario() -> None:
        port = free_port()
        async with api_server() as api, operator(api, liveness_port=port):
            await until_healthy(port, timeout=10)
            await apply_job(api)
            await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            await finish(api, JOBS, "orangutan-preprocess-1")
            await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-1"))
            await finish(api, MPIJOBS, "orangutan-stylize-1", ok=False, reason="MPIJobEvicted", message="evicted")
            await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-2"))
            await start_launcher(api, "orangutan-stylize-2", 2)
            ranks_report(api, 10, 30)
            await eventually(lambda: status(api)["progress"]["framesDone"] == 40)
            metrics = await eventually_scraped(port, lambda m: m["stylebatch_frames_stylized_total"] == 40)
            assert metrics['stylebatch_jobs{phase="Stylizing"}'] == 1
            assert metrics['stylebatch_jobs{phase="Pending"}'] == 0
            assert summed(metrics, "stylebatch_child_retries_total", stage="stylize") == 1
            assert summed(metrics, "stylebatch_child_retries_total", stage="preprocess") == 0
            assert metrics["stylebatch_job_start_seconds_count"] == 1
            assert metrics['stylebatch_stage_duration_seconds_count{stage="preprocess"}'] == 1

            await finish(api, MPIJOBS, "orangutan-stylize-2")
            await eventually(lambda: child(api, "Job", "orangutan-postprocess-1"))
            await finish(api, JOBS, "orangutan-postprocess-1")
            # (the phases come from kopf's watch, the durations from the reconciliation that wrote the
            # status, after its write: either may be seen first)
            metrics = await eventually_scraped(port, lambda m: m['stylebatch_jobs{phase="Succeeded"}'] == 1
                                               and m["stylebatch_job_duration_seconds_count"] == 1)
            assert metrics["stylebatch_frames_stylized_total"] == 100  # stylize's success completes the count
            assert metrics['stylebatch_jobs{phase="Stylizing"}'] == 0
            assert summed(metrics, "stylebatch_stage_duration_seconds_count") == 3  # one success per stage

            await eventually(lambda: not job(api)["metadata"].get("finalizers"))
            (await api.delete(f"{STJ}/orangutan")).release()
            metrics = await eventually_scraped(port, lambda m: m['stylebatch_jobs{phase="Succeeded"}'] == 0)
            assert metrics["stylebatch_frames_stylized_total"] == 100  # a counter: never goes down
    run(scenario)


def test_the_operators_defaults_apply_to_a_job_that_leaves_them_out():
    async def scenario() -> None:
        settings = Settings(interval=INTERVAL, jobs={
            "workers": 3, "gpusPerWorker": 0, "image": "registry.local/worker:9", "storage": {"secretName": "team-storage"},
            "serviceAccountName": "stylebatch-job", "scheduling": {"nodeSelector": {"pool": "cpu"}}})
        async with api_server() as api, operator(api, settings=settings):
            await apply_job(api, workers=None, storage=None)
            await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            effective = status(api)["effectiveSpec"]
            assert (effective["workers"], effective["gpusPerWorker"], effective["storage"]) == \
                (3, 0, {"secretName": "team-storage"})
            accepted = await eventually(lambda: [m for _, reason, m in events(api) if reason == "Accepted"])
            assert accepted[0].endswith("on 3 workers (CPUs); from the operator's defaults: image, imagePullPolicy, "
                                        "workers, gpusPerWorker, resources, storage, progressTimeoutSeconds, "
                                        "scheduling.nodeSelector")
            await finish(api, JOBS, "orangutan-preprocess-1")
            mpijob = await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-1"))
            worker = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]
            assert worker["replicas"] == 3 and worker["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "cpu"}
            assert worker["template"]["spec"]["containers"][0]["image"] == "registry.local/worker:9"
            assert worker["template"]["spec"]["serviceAccountName"] == "stylebatch-job"
            assert "team-storage" in str(worker)
    run(scenario)


def test_a_job_with_no_storage_credentials_anywhere_fails_at_once():
    async def scenario() -> None:
        async with api_server() as api, operator(api):  # an operator installed without a storage default
            await apply_job(api, storage=None)
            await eventually(lambda: status(api)["phase"] == "Failed")
            failed = {c["type"]: c for c in status(api)["conditions"]}["Failed"]
            assert (failed["status"], failed["reason"]) == ("True", "InvalidSpec")
            assert failed["message"].startswith("no storage credentials")
            warning = await eventually(lambda: [e for e in events(api) if e[1] == "InvalidSpec"])
            assert warning[0][0] == "Warning" and "no storage credentials" in warning[0][2]
            await asyncio.sleep(5 * INTERVAL)
            assert creates(api, JOBS) == [] and creates(api, MPIJOBS) == []
    run(scenario)


def kubeconfig_env(api: ApiServer, tmp_path: Path) -> dict[str, str]:
    """The environment of `stylebatch operator` run outside a cluster, with a kubeconfig for kmock."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(api.url).rstrip("/")}}],
        "users": [{"name": "tester", "user": {"token": "t0k3n"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester"}}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(KUBECONFIG=str(kubeconfig), STYLEBATCH_OPERATOR_INTERVAL="0.2")
    return env


def older_crd() -> dict[str, Any]:
    """The CRD of an earlier release: no spec.queueName, no status.queuedSince/queuedSeconds."""
    old = crd()
    old["metadata"]["annotations"]["stylebatch.io/release"] = "0.0.9"
    schema = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    del schema["spec"]["properties"]["queueName"]
    del schema["status"]["properties"]["queuedSince"], schema["status"]["properties"]["queuedSeconds"]
    return old


def older_watch_crd() -> dict[str, Any]:
    """The VideoWatch CRD of an earlier release: no status.waiting, no status.lastError/lastErrorTime."""
    old = videowatch_crd.crd()
    old["metadata"]["annotations"]["stylebatch.io/release"] = "0.0.9"
    status = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    del status["waiting"], status["lastError"], status["lastErrorTime"]
    return old


def test_stylebatch_operator_command_runs_with_the_kubeconfig_and_stops_cleanly_on_sigterm(tmp_path):
    async def scenario() -> None:
        port = free_port()
        async with api_server(install_crds=[crd(), videowatch_crd.crd()]) as api:
            env = kubeconfig_env(api, tmp_path)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "stylebatch", "operator", "--namespace", NS, "--liveness-port", str(port),
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                await until_healthy(port, timeout=20)
                await apply_job(api)
                await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"), timeout=20)
                # the Event is queued just before the log line, with nothing awaited between: once it is
                # posted the line is written (the child alone: SIGTERM could come before the line)
                await eventually(lambda: "PreprocessStarted" in [r for _, r, _ in events(api)], timeout=20)
            finally:
                proc.send_signal(signal.SIGTERM)
                output = (await asyncio.wait_for(proc.communicate(), 20))[0].decode()
            assert proc.returncode == 0, output
            assert "PreprocessStarted: created Job orangutan-preprocess-1" in output
            assert "Traceback" not in output and "Unclosed" not in output, output
            # kopf and the operator's own client both authenticate as the kubeconfig says
            agents = {r.headers.get("User-Agent", "").split("/")[0]: r.headers.get("Authorization")
                      for r in api if not r.headers.get("User-Agent", "").startswith("kmock/")}
            assert agents == {"kopf": "Bearer t0k3n", "OpenAPI-Generator": "Bearer t0k3n"}
    run(scenario)


def _pid_1_of(proc: asyncio.subprocess.Process) -> int:
    """The pid (as seen here) of `unshare --fork`'s child: PID 1 of its own PID namespace."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.mark.parametrize("as_pid_1", [False, True], ids=["plain process", "PID 1 of its namespace"])
def test_a_standby_operator_stops_at_once_on_sigterm_even_as_a_containers_pid_1(tmp_path, as_pid_1):
    """The chart runs `stylebatch operator` as the container's command: the Python process is PID 1,
    which the kernel spares every signal it has no handler for. kopf installs its SIGTERM handler
    only once it runs, so a standby (waiting for the Lease held by another replica) ignored the
    kubelet's SIGTERM and was killed terminationGracePeriodSeconds later (as a plain process SIGTERM
    killed it outright, exit -15): every rollout of a 2-replica install waited for it."""
    if as_pid_1 and subprocess.run(["unshare", "-r", "-p", "-f", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user/PID namespaces here (unshare -r -p -f)")

    async def scenario() -> None:
        async with api_server(install_crds=[crd(), videowatch_crd.crd()]) as api:
            now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            held = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "stylebatch-operator", "namespace": NS},
                    "spec": {"holderIdentity": "operator-a", "leaseDurationSeconds": 3600, "acquireTime": now,
                             "renewTime": now, "leaseTransitions": 0}}
            assert (await api.post(LEASES, json=held)).status == 200
            env = kubeconfig_env(api, tmp_path)
            env.update(STYLEBATCH_LEASE_NAMESPACE=NS, STYLEBATCH_LEASE_NAME="stylebatch-operator")
            command = [sys.executable, "-m", "stylebatch", "operator", "--namespace", NS,
                       "--liveness-port", str(free_port())]
            proc = await asyncio.create_subprocess_exec(
                *(["unshare", "-r", "-p", "-f"] if as_pid_1 else []), *command,
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            lines: list[str] = []
            target = proc.pid
            try:
                while not any("standing by" in line for line in lines):
                    line = await asyncio.wait_for(proc.stdout.readline(), 20)
                    assert line, "".join(lines)
                    lines.append(line.decode())
                target = _pid_1_of(proc) if as_pid_1 else proc.pid
                os.kill(target, signal.SIGTERM)
                with contextlib.suppress(asyncio.TimeoutError):  # (a grace period's wait, cut short)
                    lines.append((await asyncio.wait_for(proc.communicate(), 10))[0].decode())
            finally:
                if proc.returncode is None:
                    os.kill(target, signal.SIGKILL)
                    await proc.wait()
            output = "".join(lines)
            assert proc.returncode == 0, f"exit {proc.returncode} (not 0: SIGTERM killed it, or was ignored)\n{output}"
            assert "Traceback" not in output, output
            assert lease(api)["spec"]["holderIdentity"] == "operator-a"  # never taken
    run(scenario)


def test_an_operator_refuses_to_start_in_one_line_when_the_installed_crd_is_older(tmp_path):
    async def scenario() -> None:
        async with api_server(install_crds=[older_crd(), videowatch_crd.crd()]) as api:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "stylebatch", "operator", "--namespace", NS, env=kubeconfig_env(api, tmp_path),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 2, err
            lines = err.decode().strip().splitlines()
            assert len(lines) == 1 and not out, err
            assert lines[0] == (
                "stylebatch: error: the installed CustomResourceDefinition styletransferjobs.stylebatch.io (stylebatch "
                "0.0.9) is older than this operator (stylebatch 0.1.0): it lacks spec.queueName, status.queuedSeconds, "
                "status.queuedSince; Helm does not upgrade CRDs: kubectl apply --server-side --force-conflicts -f "
                "charts/stylebatch/crds/ (from this release's chart)")
            # it never started watching or acting
            assert not [r for r in api if r.params.get("watch") == "true" or r.method == "POST"
                        and not (r.headers.get("User-Agent") or "").startswith("kmock/")]
    run(scenario)


INSTALLED = {"this": lambda: [crd(), videowatch_crd.crd()], "older job": lambda: [older_crd(), videowatch_crd.crd()],
             "older watch": lambda: [crd(), older_watch_crd()], "both older": lambda: [older_crd(), older_watch_crd()],
             "none": lambda: [], "no watch": lambda: [crd()]}


@pytest.mark.parametrize("installed, complaint", [
    ("none", "the CustomResourceDefinition styletransferjobs.stylebatch.io is not installed: kubectl apply "
             "--server-side --force-conflicts -f charts/stylebatch/crds/"),
    ("older job", "the installed CustomResourceDefinition styletransferjobs.stylebatch.io (stylebatch 0.0.9) is "
                  "older than this operator (stylebatch 0.1.0): it lacks spec.queueName, status.queuedSeconds, "
                  "status.queuedSince;"),
    ("no watch", "the CustomResourceDefinition videowatches.stylebatch.io is not installed: kubectl apply "
                 "--server-side --force-conflicts -f charts/stylebatch/crds/"),
    ("older watch", "the installed CustomResourceDefinition videowatches.stylebatch.io (stylebatch 0.0.9) is "
                    "older than this operator (stylebatch 0.1.0): it lacks status.lastError, status.lastErrorTime, "
                    "status.waiting;"),
    ("both older", "styletransferjobs.stylebatch.io (stylebatch 0.0.9) is older"),  # the first, in one line
])
def test_the_startup_check_names_what_the_installed_crd_lacks(installed, complaint):
    async def scenario() -> None:
        async with api_server(install_crds=INSTALLED[installed]()) as api:
            kube = kube_for(str(api.url))
            try:
                with pytest.raises(StylebatchError, match=re.escape(complaint)) as err:
                    await main.check_installed_crds(kube)
                assert err.value.exit_code == 2 and "\n" not in str(err.value)
            finally:
                await kube.close()
    run(scenario)


def test_the_startup_check_passes_this_releases_crds_and_newer_ones():
    async def scenario() -> None:
        newer = [crd(), videowatch_crd.crd()]
        for each in newer:
            each["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["future"] = {
                "type": "string"}
        for installed in (INSTALLED["this"](), newer):
            async with api_server(install_crds=installed) as api:
                kube = kube_for(str(api.url))
                try:
                    await main.check_installed_crds(kube)
                    # it read exactly the CRDs its ClusterRole may read, by name
                    read = [r.name for r in api if not (r.headers.get("User-Agent") or "").startswith("kmock/")]
                    assert read == CLUSTER_RULES[0]["resourceNames"] == [c["metadata"]["name"] for c in installed]
                finally:
                    await kube.close()
    run(scenario)


def test_the_operator_never_imports_torch_or_the_workers_heavy_modules():
    code = ("import sys, stylebatch.cli, stylebatch_operator.main, stylebatch_operator.handlers; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'av') "
            "or m.startswith('stylebatch.') and m not in ('stylebatch.cli', 'stylebatch.contract', 'stylebatch.errors', 'stylebatch.progress',"
            " 'stylebatch.temporal_defaults', 'stylebatch.trigger', 'stylebatch.fields', 'stylebatch.requests', 'stylebatch.logs')))")  # pure
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_bad_reconcile_interval_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("STYLEBATCH_OPERATOR_INTERVAL", "soon")
    with pytest.raises(StylebatchError, match="STYLEBATCH_OPERATOR_INTERVAL must be a number of seconds"):
        main.run(argparse.Namespace(namespace=[], liveness_port=8080))


def test_no_credentials_is_a_one_line_error_and_a_non_zero_exit(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(KUBECONFIG=str(tmp_path / "missing"), HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "stylebatch", "operator", "--namespace", NS],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stylebatch: error: no Kubernetes credentials: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


async def until_healthy(port: int, timeout: float) -> None:
    """Until http://127.0.0.1:<port>/healthz answers 200."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            assert asyncio.get_running_loop().time() < deadline, "no /healthz"
            await asyncio.sleep(0.05)


async def scrape(port: int) -> dict[str, float]:
    """GET /metrics, parsed as Prometheus parses it: every sample by name{labels, sorted}."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in s.labels.items())  # as exposed
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def summed(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples that carry `labels` (whatever their other labels)."""
    return sum(v for k, v in samples.items() if k.split("{")[0] == name
               and all(f'{label}="{value}"' in k for label, value in labels.items()))


async def eventually_scraped(port: int, check: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    deadline = asyncio.get_running_loop().time() + 10
    while not check(metrics := await scrape(port)):
        assert asyncio.get_running_loop().time() < deadline, metrics
        await asyncio.sleep(0.05)
    return metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher_args(mpijob: dict[str, Any]) -> list[str]:
    return mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("case, environ, netrc, looked_up", [
    ("nothing to find", {}, False, False),
    ("an HTTPS proxy", {"HTTPS_PROXY": "http://proxy.corp:3128"}, False, True),
    ("a lowercase no_proxy", {"no_proxy": "kubernetes.default.svc"}, False, True),
    ("a netrc file", {}, True, True),
], ids=lambda v: v if isinstance(v, str) else "")
def test_the_api_client_reads_proxies_and_netrc_per_request_only_when_the_environment_has_them(
        case, environ, netrc, looked_up, tmp_path):
    async def scenario() -> None:
        if netrc:
            (tmp_path / ".netrc").write_text("machine example.org login u password p\n")
        kube = kube_for("http://127.0.0.1:1")
        try:
            session = kube._api.rest_client.pool_manager
            session._trust_env = True  # as kubernetes_asyncio makes it
            skip_environment_lookups(kube._api, {"HOME": str(tmp_path), **environ})
            assert session.trust_env == looked_up
        finally:
            await kube.close()
    run(scenario)


def test_the_documented_rbac_is_the_one_the_operator_uses():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operator.md").read_text()
    table = doc.split("### RBAC", 1)[1]
    rows = [[cell.strip().strip("`") for cell in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| `")]
    documented = [(group.strip('"'), resource, sorted(verbs.split(", "))) for group, resource, verbs in rows]
    assert documented == [(r["apiGroups"][0], r["resources"][0], sorted(r["verbs"])) for r in RULES + CLUSTER_RULES + LEASE_RULES]


def assert_requests_allowed_by_rbac(api: ApiServer, stylized: bool = True) -> None:
    """Every API request the operator made (kopf's and its own) is allowed by rbac.RULES."""
    used = requests_allowed_by_rbac(api)
    assert {("batch", "jobs", "create"), ("", "events", "create"),
            ("stylebatch.io", "styletransferjobs/status", "patch")} <= used
    assert not stylized or ("", "pods/log", "get") in used


def requests_allowed_by_rbac(api: ApiServer) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every API request the operator made, each checked against the RBAC rules."""
    allowed = {(group, resource, verb) for rule in RULES + LEASE_RULES for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    used = set()
    for r in api:
        if (r.headers.get("User-Agent") or "").startswith("kmock/") or not (r.resource and r.resource.plural):
            continue  # the test's own requests; API discovery (allowed to everyone)
        assert r.namespace == NS, f"cluster-scoped request {r.method} {r.url.path}"
        resource = f"{r.resource.plural}/{r.subresource}" if r.subresource else r.resource.plural
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(r.method.value) or (
            "watch" if r.params.get("watch") == "true" else "get" if r.name else "list")
        used.add((r.resource.group, resource, verb))
    assert used - allowed == set()
    return used


# --- a child that cannot start -----------------------------------------------------------------

EVENTS = "/api/v1/namespaces/media/events"
GRACE = 1.0  # seconds a permanent stall may last here (2 minutes by default)


async def add_pod(api: ApiServer, kind: str, child_name: str, suffix: str, status: dict[str, Any],
                  role: str | None = None) -> str:
    """A pod of the child, as its controller makes it (the template's labels), with this status."""
    spec = (await eventually(lambda: child(api, kind, child_name)))["spec"]
    template = spec["template"] if kind == "Job" else spec["mpiReplicaSpecs"][role.capitalize()]["template"]
    labels = {**template["metadata"]["labels"], **({"training.kubeflow.org/job-role": role} if role else {})}
    name = f"{child_name}-{suffix}"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
           "status": status}
    assert (await api.post(PODS, json=pod)).status == 200
    return name


def waiting(container: str, reason: str, message: str) -> dict[str, Any]:
    return {"phase": "Pending", "containerStatuses": [{"name": container, "ready": False,
                                                       "state": {"waiting": {"reason": reason, "message": message}}}]}


UNSCHEDULABLE = {"phase": "Pending", "conditions": [{
    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
    "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. "
               "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."}]}


async def child_event(api: ApiServer, kind: str, child_name: str, reason: str, message: str) -> None:
    """An Event the Job controller or the MPI Operator posts about its object."""
    obj = await eventually(lambda: child(api, kind, child_name))
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{child_name}.{uuid.uuid4().hex[:8]}",
                                                                "namespace": NS},
             "involvedObject": {"kind": kind, "name": child_name, "namespace": NS, "uid": obj["metadata"]["uid"]},
             "type": "Warning", "reason": reason, "message": message}
    assert (await api.post(EVENTS, json=event)).status == 200


def condition(api: ApiServer, type_: str) -> dict[str, Any]:
    return {c["type"]: c for c in status(api).get("conditions") or []}[type_]


async def once_stalled(api: ApiServer) -> dict[str, Any]:
    """The job's Stalled condition, once it is True."""
    return await eventually(lambda: condition(api, "Stalled")["status"] == "True" and condition(api, "Stalled"))


def deletes(api: ApiServer, collection: str) -> list[str]:
    return [str(r.url.path).rsplit("/", 1)[1] for r in api
            if r.method == "DELETE" and str(r.url.path).startswith(collection + "/")]


async def to_stylize(api: ApiServer) -> None:
    await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
    await finish(api, JOBS, "orangutan-preprocess-1")
    await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-1"))


async def missing_secret(api: ApiServer) -> None:
    await add_pod(api, "Job", "orangutan-preprocess-1", "x7k2p",
                  waiting("preprocess", "CreateContainerConfigError", 'secret "stylebatch-storage" not found'))


async def invalid_image(api: ApiServer) -> None:
    await add_pod(api, "Job", "orangutan-preprocess-1", "x7k2p",
                  waiting("preprocess", "InvalidImageName", 'Failed to apply default image tag "Reg/Worker:1"'))


async def missing_service_account(api: ApiServer) -> None:
    await child_event(api, "Job", "orangutan-preprocess-1", "FailedCreate",
                      'Error creating: pods "orangutan-preprocess-1-" is forbidden: error looking up service '
                      'account media/stylebatch-job: serviceaccount "stylebatch-job" not found')


async def mpijob_refused(api: ApiServer) -> None:
    await to_stylize(api)
    await child_event(api, "MPIJob", "orangutan-stylize-1", "ValidationError",
                      "Found validation errors: spec.mpiReplicaSpecs[Worker].replicas: Invalid value")


async def no_mpi_operator(api: ApiServer) -> None:
    await to_stylize(api)  # and nobody ever writes its status


# (case, what happens, child kind and name, the reason, words in the message)
PERMANENT = [
    ("missing Secret", missing_secret, "Job", "orangutan-preprocess-1", "CreateContainerConfigError",
     'secret "stylebatch-storage" not found'),
    ("invalid image name", invalid_image, "Job", "orangutan-preprocess-1", "InvalidImageName", "Reg/Worker:1"),
    ("missing ServiceAccount", missing_service_account, "Job", "orangutan-preprocess-1", "FailedCreate",
     'serviceaccount "stylebatch-job" not found'),
    ("MPIJob refused", mpijob_refused, "MPIJob", "orangutan-stylize-1", "MPIJobRefused",
     "the MPI Operator refused the MPIJob: Found validation errors"),
    ("no MPI Operator", no_mpi_operator, "MPIJob", "orangutan-stylize-1", "NoMPIOperator",
     "is the Kubeflow MPI Operator (kubeflow.org/v2beta1) installed"),
]


@pytest.mark.parametrize("case, happen, kind, name, reason, words", PERMANENT, ids=[c[0] for c in PERMANENT])
def test_a_child_that_can_never_start_is_shown_at_once_then_fails_the_job_and_is_deleted(
        case, happen, kind, name, reason, words):
    async def scenario() -> None:
        settings = Settings(interval=INTERVAL, stall_grace_seconds=GRACE)
        async with api_server() as api, operator(api, settings=settings):
            await apply_job(api)
            await happen(api)
            stalled = await once_stalled(api)
            assert stalled["reason"] == reason and words in stalled["message"]
            assert f"the job fails {'' if kind == 'MPIJob' and not words.startswith('the MPI') else 'in '}" \
                   f"{GRACE:.0f}s" in stalled["message"] and "unless this is fixed" in stalled["message"]
            assert (status(api)["reason"], status(api)["message"]) == (reason, stalled["message"])  # kubectl get
            warning = await eventually(lambda: [e for e in events(api) if e[1] == reason])
            assert warning[0][0] == "Warning" and words in warning[0][2]

            await eventually(lambda: status(api)["phase"] == "Failed", timeout=GRACE + 10)
            failed = condition(api, "Failed")
            assert failed["reason"] == reason and words in failed["message"]
            assert status(api)["failure"]["reason"] == reason and status(api)["retries"] == 0
            await eventually(lambda: [e for e in events(api) if e[1] == reason and "the job fails" not in e[2]])
            collection = JOBS if kind == "Job" else MPIJOBS
            assert deletes(api, collection) == [name]  # no pod keeps pulling or waiting
            assert gone(api, kind, name)
            await asyncio.sleep(5 * INTERVAL)
            assert len(creates(api, collection)) == 1  # not retried: it would stall the same way
    run(scenario)


def cpu_request_over_limit(obj: dict[str, Any]) -> str | None:
    """The API server's word on a Job whose pod asks for more CPU than its limit."""
    if obj.get("kind") != "Job":
        return None
    resources = obj["spec"]["template"]["spec"]["containers"][0].get("resources") or {}
    if int((resources.get("requests") or {}).get("cpu", 0)) > int((resources.get("limits") or {}).get("cpu", 99)):
        return (f'Job.batch "{obj["metadata"]["name"]}" is invalid: spec.template.spec.containers[0].resources.'
                'requests: Invalid value: "8": must be less than or equal to cpu limit of 4')
    return None


def test_a_child_the_api_server_refuses_as_invalid_is_shown_then_fails_the_job_instead_of_hanging_silently():
    """A spec the CRD lets through can still make a child Kubernetes refuses (here a training Job
    whose workers' CPU request is over their limit). The job must not sit Pending, saying nothing,
    until its deadline hours later."""
    async def scenario() -> None:
        settings = Settings(interval=INTERVAL, stall_grace_seconds=GRACE)
        async with api_server() as api, operator(api, settings=settings):
            api.invalid = cpu_request_over_limit
            await apply_job(api, style="az://styles/starry.jpg", train={"steps": 10},
                            resources={"requests": {"cpu": "8"}, "limits": {"cpu": "4"}})
            stalled = await once_stalled(api)
            assert stalled["reason"] == "ChildInvalid"
            assert ("the API server refused Job orangutan-train-1: Job.batch \"orangutan-train-1\" is invalid: "
                    "spec.template.spec.containers[0].resources.requests: Invalid value: \"8\": must be less than "
                    "or equal to cpu limit of 4") in stalled["message"]
            await eventually(lambda: status(api)["phase"] == "Failed", timeout=GRACE + 10)
            assert condition(api, "Failed")["reason"] == "ChildInvalid"
            assert status(api)["failure"]["stage"] == "train"
    run(scenario)


QUOTA = ('jobs.batch "orangutan-preprocess-1" is forbidden: exceeded quota: jobs, requested: count/jobs.batch=1, '
         'used: count/jobs.batch=10, limited: count/jobs.batch=10')
DENIED = ('admission webhook "validation.gatekeeper.sh" denied the request: [no-latest] container <stylebatch> '
          'has no resource limits')


@pytest.mark.parametrize("case, refusal, fails", [
    ("a quota on Jobs that is used up: shown, waited on, the Job made once it is released", QUOTA, False),
    ("a policy webhook's denial: shown, then the job fails (the same Job is denied again)", DENIED, True),
])
def test_a_child_the_api_server_will_not_create_is_shown_instead_of_a_silent_pending_job(case, refusal, fails):
    """A 403 to the operator's own create of a child (a ResourceQuota on count/jobs.batch, Gatekeeper,
    Kyverno, a namespace being deleted) was retried every 30 s, said nowhere but the operator's log:
    the job sat Pending with no reason until its deadline, hours later."""
    async def scenario() -> None:
        settings = Settings(interval=INTERVAL, stall_grace_seconds=GRACE)
        async with api_server() as api, operator(api, settings=settings):
            refusing = [True]
            api.forbidden = lambda obj: refusal if obj.get("kind") == "Job" and refusing[0] else None
            await apply_job(api)
            stalled = await once_stalled(api)
            assert stalled["reason"] == "ChildRefused"
            assert "the API server would not create Job orangutan-preprocess-1: " in stalled["message"]
            assert refusal in stalled["message"]
            await eventually(lambda: any(refusal in e[2] for e in events(api)))
            if fails:
                await eventually(lambda: status(api)["phase"] == "Failed", timeout=GRACE + 10)
                assert condition(api, "Failed")["reason"] == "ChildRefused"
                return
            await asyncio.sleep(GRACE + 1)
            await looked_again(api)  # after the grace period
            assert status(api)["phase"] == "Pending"  # a quota is waited on, against the deadline
            refusing[0] = False  # another job finished: the quota has room
            await eventually(lambda: made(api, "Job", "orangutan-preprocess-1"))
            await eventually(lambda: condition(api, "Stalled")["status"] == "False")
    run(scenario)


WEBHOOK_DOWN = (500, "InternalError", 'Internal error occurred: failed calling webhook "mmpijob.kb.io": failed to '
                'call webhook: Post "https://kueue-webhook-service.kueue-system.svc:443/mutate-kubeflow-org-v2beta1-'
                'mpijob?timeout=10s": dial tcp 10.0.12.7:443: connect: connection refused')
THROTTLED = (429, "TooManyRequests", "Too many requests, please try again later.")


@pytest.mark.parametrize("case, answer, words", [
    ("Kueue's webhook down while it restarts (500)", WEBHOOK_DOWN, "an admission webhook did not answer"),
    ("API Priority and Fairness throttling (429)", THROTTLED, "the API server did not answer"),
])
def test_a_child_the_api_server_cannot_create_for_now_is_shown_stalled_with_one_event_and_made_once_it_answers(
        case, answer, words):
    """A 500 or 429 to the operator's create of the next child raised kopf's TemporaryError: the job
    said Preprocessing with Running=True for a Job that had finished, no Stalled condition, no reason,
    and the operator's log only got a kopf error every 30 s until the webhook came back (or the
    deadline, hours later, failed the job as DeadlineExceeded 'during preprocess')."""
    async def scenario() -> None:
        settings = Settings(interval=INTERVAL, stall_grace_seconds=GRACE)
        async with api_server() as api, operator(api, settings=settings):
            down = [True]
            api.unanswered = lambda obj: answer if obj.get("kind") == "MPIJob" and down[0] else None
            await apply_job(api)
            await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            await finish(api, JOBS, "orangutan-preprocess-1")
            stalled = await once_stalled(api)
            assert stalled["reason"] == "ChildRefused"
            assert f"the API server would not create MPIJob orangutan-stylize-1: {words}: {redact(answer[2])}" \
                in stalled["message"] and "waiting" in stalled["message"]
            assert (status(api)["reason"], status(api)["message"]) == ("ChildRefused", stalled["message"])
            await asyncio.sleep(GRACE + 1)
            await looked_again(api)  # past the grace period: it is waited on, against the deadline
            assert status(api)["phase"] == "Preprocessing" and condition(api, "Stalled")["status"] == "True"
            assert len([e for e in events(api) if e[1] == "ChildRefused"]) == 1  # said once, not per look
            down[0] = False
            await eventually(lambda: made(api, "MPIJob", "orangutan-stylize-1"))
            await eventually(lambda: status(api)["phase"] == "Stylizing"
                             and condition(api, "Stalled")["status"] == "False")
            assert creates(api, MPIJOBS).count("orangutan-stylize-1") > 1  # tried at each look meanwhile
    run(scenario)


def lists(api: ApiServer, collection: str) -> int:
    return sum(1 for r in api if r.method == "GET" and str(r.url.path) == collection and "watch" not in r.params)


def reads(api: ApiServer) -> int:
    """Reconciliations so far: each reads its job first."""
    return sum(1 for r in api if r.method == "GET" and str(r.url.path) == f"{STJ}/orangutan")


async def assert_read_about_once_a_second(api: ApiServer, collection: str) -> None:
    """Over 2.5 s (or more: the time it took, on a busy machine) the collection is listed at least
    once, at most once a second (4 times in 2.5 s), fewer times than the job is reconciled."""
    loop = asyncio.get_running_loop()
    before, looks, began = lists(api, collection), reads(api), loop.time()
    await asyncio.sleep(2.5)
    await eventually(lambda: reads(api) - looks > 10)  # (25 reconciliations; fewer on a busy machine)
    took = loop.time() - began
    read, looked = lists(api, collection) - before, reads(api) - looks
    assert 1 <= read <= took + 1.5 and looked > read, (read, looked, took)


def test_a_replacement_pod_that_cannot_be_created_is_shown_and_the_events_are_read_only_every_progress_interval():
    async def scenario() -> None:
        settings = Settings(interval=INTERVAL, stall_grace_seconds=GRACE, progress_interval=1.0)
        async with api_server() as api, operator(api, settings=settings):
            await apply_job(api)
            # the first pod failed (a storage outage, exit 75); the Job controller cannot create the
            # next one: another tenant's pods took the namespace's GPU quota meanwhile
            await add_pod(api, "Job", "orangutan-preprocess-1", "x7k2p", {"phase": "Failed", "containerStatuses": [
                {"name": "preprocess", "state": {"terminated": {"exitCode": 75, "reason": "Error"}}}]})
            await child_event(api, "Job", "orangutan-preprocess-1", "FailedCreate",
                              'Error creating: pods "orangutan-preprocess-1-q8w4n" is forbidden: exceeded quota: '
                              "gpu-quota, requested: requests.cpu=4, used: requests.cpu=32, limited: requests.cpu=32")
            stalled = await once_stalled(api)
            assert stalled["reason"] == "FailedCreate" and "ResourceQuota is used up" in stalled["message"]
            assert "the time counts against spec.activeDeadlineSeconds" in stalled["message"]
            # while the pod is missing, the Events are read at most once a second (the progress
            # interval), not at every reconciliation (every 0.1 s)
            await assert_read_about_once_a_second(api, EVENTS)
            assert status(api)["phase"] == "Preprocessing"  # transient: it waits

            await add_pod(api, "Job", "orangutan-preprocess-1", "q8w4n", {"phase": "Running"})  # quota freed
            await eventually(lambda: condition(api, "Stalled")["status"] == "False")
            before = lists(api, EVENTS)
            await asyncio.sleep(1.5)
            await looked_again(api, 5)
            assert lists(api, EVENTS) == before  # every pod is there: no Events to read
    run(scenario)


def test_the_pods_of_a_child_whose_pods_all_run_are_read_only_every_progress_interval():
    async def scenario() -> None:
        settings = Settings(interval=INTERVAL, stall_grace_seconds=GRACE, progress_interval=1.0)
        async with api_server() as api, operator(api, settings=settings):
            await apply_job(api)
            await to_stylize(api)
            running = {"phase": "Running", "containerStatuses": [{"name": "worker", "ready": True,
                                                                 "state": {"running": {}}}]}
            worker = await add_pod(api, "MPIJob", "orangutan-stylize-1", "worker-0", UNSCHEDULABLE, role="worker")
            await eventually(lambda: condition(api, "Stalled")["status"] == "True")
            before, looks = lists(api, PODS), reads(api)
            await asyncio.sleep(1)
            assert lists(api, PODS) - before >= reads(api) - looks - 1  # not all running: read every time
            resp = await api.patch(f"{PODS}/{worker}/status", json={"status": {**running, "conditions": []}},
                                   headers={"Content-Type": "application/merge-patch+json"})
            assert resp.status == 200
            await add_pod(api, "MPIJob", "orangutan-stylize-1", "worker-1", running, role="worker")
            await add_pod(api, "MPIJob", "orangutan-stylize-1", "launcher-abcde", running, role="launcher")
            await eventually(lambda: condition(api, "Stalled")["status"] == "False")
            ranks_report(api, 10, 5)
            await eventually(lambda: status(api)["progress"]["framesDone"] == 15)

            await assert_read_about_once_a_second(api, PODS)
            await finish(api, MPIJOBS, "orangutan-stylize-1", ok=False, reason="MPIJobEvicted",
                         message="1/2 workers are evicted")
            await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-2"))  # the failure is seen at once
    run(scenario)


def test_an_mpijob_whose_launcher_pod_cannot_be_created_is_shown_stalled():
    async def scenario() -> None:
        settings = Settings(interval=INTERVAL, stall_grace_seconds=GRACE, progress_interval=0.5)
        async with api_server() as api, operator(api, settings=settings):
            await apply_job(api)
            await to_stylize(api)
            for i in range(2):
                await add_pod(api, "MPIJob", "orangutan-stylize-1", f"worker-{i}", {"phase": "Running"}, role="worker")
            # the MPI Operator's launcher Job cannot create its pod: a policy refuses it
            event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "orangutan-stylize-1-launcher.1",
                                                                        "namespace": NS},
                     "involvedObject": {"kind": "Job", "name": "orangutan-stylize-1-launcher", "namespace": NS,
                                        "uid": str(uuid.uuid4())},
                     "type": "Warning", "reason": "FailedCreate",
                     "message": 'Error creating: pods "orangutan-stylize-1-launcher-q8w4n" is forbidden: violates '
                                'PodSecurity "restricted:latest": runAsNonRoot != true'}
            assert (await api.post(EVENTS, json=event)).status == 200
            stalled = await once_stalled(api)
            assert stalled["reason"] == "FailedCreate" and "Pod Security level forbids" in stalled["message"]
            await eventually(lambda: status(api)["phase"] == "Failed", timeout=GRACE + 10)
            assert deletes(api, MPIJOBS) == ["orangutan-stylize-1"]
    run(scenario)


def test_without_an_mpijob_crd_the_job_is_shown_stalled_then_fails_after_one_grace_period():
    # (3 s, not GRACE: the times are whole seconds, and one grace period must be told from two with
    # room for a slow reconciliation on a busy machine)
    grace = 3.0

    async def scenario() -> None:
        settings = Settings(interval=INTERVAL, stall_grace_seconds=grace)
        async with api_server() as api, operator(api, settings=settings):
            api.unserved = frozenset({"mpijobs"})  # no MPI Operator, so no MPIJob CRD
            await apply_job(api)
            await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            await finish(api, JOBS, "orangutan-preprocess-1")
            stalled = await once_stalled(api)
            assert stalled["reason"] == "NoMPIOperator"
            assert "does not serve MPIJobs (kubeflow.org/v2beta1): is the Kubeflow MPI Operator installed?" \
                   in stalled["message"]
            await eventually(lambda: status(api)["phase"] == "Failed", timeout=grace + 10)
            failed = condition(api, "Failed")
            assert failed["reason"] == "NoMPIOperator" and status(api)["failure"]["stage"] == "stylize"
            # one grace period, not two (whole seconds: two would read at least 2 * grace)
            assert since(failed) - since(stalled) <= 2 * grace - 1
    run(scenario)


def since(condition: dict[str, Any]) -> float:
    return datetime.fromisoformat(condition["lastTransitionTime"].replace("Z", "+00:00")).timestamp()


def test_an_mpijob_nobody_picks_up_fails_one_grace_period_after_its_creation():
    async def scenario() -> None:
        # (6 s: the times are whole seconds, and half a grace period must be told from a whole one,
        # one from two, with room for a slow reconciliation on a busy machine)
        grace = 6.0
        settings = Settings(interval=INTERVAL, stall_grace_seconds=grace)
        async with api_server() as api, operator(api, settings=settings):
            await apply_job(api)
            await no_mpi_operator(api)
            created = since({"lastTransitionTime": child(api, "MPIJob", "orangutan-stylize-1")["metadata"][
                "creationTimestamp"]})
            stalled = await eventually(lambda: condition(api, "Stalled")["status"] == "True"
                                       and condition(api, "Stalled"), timeout=grace + 5)
            assert stalled["reason"] == "NoMPIOperator"
            # shown after half the grace period (whole seconds: a whole one would read at least `grace`)
            assert since(stalled) - created <= grace - 1
            await eventually(lambda: status(api)["phase"] == "Failed", timeout=grace + 10)
            # one grace period after its creation (was two: 2 * grace, at least that in whole seconds)
            assert since(condition(api, "Failed")) - created <= 2 * grace - 1
    run(scenario)


def test_a_transient_stall_is_shown_but_does_not_fail_the_job_and_clears_when_the_pods_start():
    async def scenario() -> None:
        settings = Settings(interval=INTERVAL, stall_grace_seconds=GRACE)
        async with api_server() as api, operator(api, settings=settings):
            await apply_job(api)
            await to_stylize(api)
            # the GPU pool scales from zero: the workers wait for a node, then for their image
            worker = await add_pod(api, "MPIJob", "orangutan-stylize-1", "worker-0", UNSCHEDULABLE, role="worker")
            stalled = await once_stalled(api)
            assert stalled["reason"] == "Unschedulable" and "0/3 nodes are available" in stalled["message"]
            assert "waiting; the time counts against spec.activeDeadlineSeconds" in stalled["message"]
            await eventually(lambda: [e for e in events(api) if e[1] == "Unschedulable" and e[0] == "Warning"])
            resp = await api.patch(f"{PODS}/{worker}/status", json={"status": {
                **waiting("worker", "ImagePullBackOff", 'Back-off pulling image "acr.io/stylebatch-worker:1"'),
                "conditions": [{"type": "PodScheduled", "status": "True"}]}},
                headers={"Content-Type": "application/merge-patch+json"})
            assert resp.status == 200
            await eventually(lambda: condition(api, "Stalled")["reason"] == "ImagePullBackOff")
            await asyncio.sleep(GRACE + 10 * INTERVAL)  # longer than a permanent stall may last
            await looked_again(api)
            assert status(api)["phase"] == "Stylizing" and not deletes(api, MPIJOBS)

            resp = await api.patch(f"{PODS}/{worker}/status", json={"status": {
                "phase": "Running", "containerStatuses": [{"name": "worker", "ready": True,
                                                           "state": {"running": {}}}]}},
                headers={"Content-Type": "application/merge-patch+json"})
            assert resp.status == 200
            cleared = await eventually(lambda: condition(api, "Stalled")["status"] == "False"
                                       and condition(api, "Stalled"))
            assert cleared["reason"] == "Unstalled" and status(api)["reason"] == ""
            await eventually(lambda: [e for e in events(api) if e[1] == "Unstalled" and e[0] == "Normal"])
            await finish(api, MPIJOBS, "orangutan-stylize-1")
            await eventually(lambda: child(api, "Job", "orangutan-postprocess-1"))
    run(scenario)


def test_a_stylize_that_stops_advancing_is_ended_and_retried_and_its_progress_never_falls(monkeypatch):
    # A progress timeout of 4 s, far below the 60 s the CRD's schema allows in a job or in the job
    # defaults: set in the built-in defaults, which no schema checks (a shortcut only a test takes).
    # advanceTime is stored in whole seconds (rounded down), so the timeout can fire up to 1 s early:
    # 4 s leaves the test's two progress steps (a few 0.1 s reconciliations) far inside it.
    monkeypatch.setitem(settings_module.BUILT_IN_JOB_DEFAULTS, "progressTimeoutSeconds", 4)

    async def scenario() -> None:
        settings = Settings(interval=INTERVAL)
        async with api_server() as api, operator(api, settings=settings):
            await apply_job(api)
            await to_stylize(api)
            first = child(api, "MPIJob", "orangutan-stylize-1")
            await start_launcher(api, "orangutan-stylize-1", 1)
            ranks_report(api, 50, 20)  # rank 0 has finished its share
            await eventually(lambda: status(api)["progress"]["framesDone"] == 70)
            # the launcher's log tail now holds only rank 1's lines (rank 0 fell out of it)
            api.launcher_log = format_line(RankProgress(1, 2, 30, 50, 100)) + "\n"
            await eventually(lambda: status(api)["progress"]["framesDone"] == 80)
            seen = [v["status"]["progress"]["framesDone"] for v in
                    api.objects["stylebatch.io/v1alpha1/styletransferjobs", NS, "orangutan"].history
                    if v and "framesDone" in ((v.get("status") or {}).get("progress") or {})]
            assert seen == sorted(seen)  # never backwards
            # then nothing moves (a network partition: mpiexec hangs)
            second = await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-2"), timeout=20)
            assert deletes(api, MPIJOBS) == ["orangutan-stylize-1"] and gone(api, "MPIJob", "orangutan-stylize-1")
            s = await eventually(lambda: status(api)["retries"] == 1 and status(api))
            assert s["failure"]["reason"] == "ProgressStalled"
            assert "no frame stylized for 4s (at 80% (80/100))" in s["failure"]["message"]
            retry = await eventually(lambda: [e for e in events(api) if e[1] == "Retrying"])
            assert "ProgressStalled" in retry[0][2] and "only the missing parts are stylized again" in retry[0][2]
            assert _launcher_args(second)[-12:] == _launcher_args(first)[-12:]  # same work dir: resumes
    run(scenario)


def test_a_job_past_its_deadline_deletes_its_running_mpijob():
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, activeDeadlineSeconds=3)
            await to_stylize(api)
            await start_launcher(api, "orangutan-stylize-1", 1)
            await eventually(lambda: status(api)["phase"] == "Failed", timeout=15)
            assert condition(api, "Failed")["reason"] == "DeadlineExceeded"
            assert deletes(api, MPIJOBS) == ["orangutan-stylize-1"]  # no GPU pod keeps running
            assert gone(api, "MPIJob", "orangutan-stylize-1")
            assert_requests_allowed_by_rbac(api)
    run(scenario)


# --- after the end -------------------------------------------------------------------------------

def test_a_failed_job_is_resumed_by_a_new_job_naming_its_work_dir():
    """The documented rerun: the failed job's status.workDir as the new job's spec.workDir, so the
    parts already stylized are reused (the worker resumes from the work dir's manifest)."""
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, retries=0)
            await to_stylize(api)
            await finish(api, MPIJOBS, "orangutan-stylize-1", ok=False, reason="MPIJobFailed", message="launcher failed")
            await eventually(lambda: status(api)["phase"] == "Failed")
            work = status(api)["workDir"]
            assert work == f"az://videos/out/.stylebatch-work/media/orangutan-{job(api)['metadata']['uid'][:8]}/"
            failed_args = _launcher_args(child(api, "MPIJob", "orangutan-stylize-1"))
            assert not gone(api, "MPIJob", "orangutan-stylize-1")  # a failed job's children stay for their logs

            await apply_job(api, name="orangutan-again", workDir=work)
            pre = await eventually(lambda: child(api, "Job", "orangutan-again-preprocess-1"))
            assert pre["spec"]["template"]["spec"]["containers"][0]["args"][3:5] == ["--work", work]
            await finish(api, JOBS, "orangutan-again-preprocess-1")
            again = await eventually(lambda: child(api, "MPIJob", "orangutan-again-stylize-1"))
            assert _launcher_args(again)[-12:] == failed_args[-12:]  # same work dir, same stylize command
            assert status(api, "orangutan-again")["workDir"] == work
    run(scenario)


def test_the_clean_up_deletes_only_the_jobs_own_children_not_others_of_the_same_name():
    """A failed job's children go after spec.cleanup.childrenAfterFailedSeconds. Meanwhile its
    preprocess Job was deleted by hand and someone made another Job of that name (another job's,
    or nobody's): the clean-up leaves that one alone and deletes the job's own MPIJob."""
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, retries=0, cleanup={"childrenAfterFailedSeconds": 2})
            await to_stylize(api)
            await finish(api, MPIJOBS, "orangutan-stylize-1", ok=False, reason="MPIJobFailed")
            await eventually(lambda: status(api)["phase"] == "Failed")
            (await api.delete(f"{JOBS}/orangutan-preprocess-1")).release()
            other = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
                "name": "orangutan-preprocess-1", "namespace": NS, "labels": {"stylebatch.io/job": "orangutan"},
                "ownerReferences": [{"apiVersion": "stylebatch.io/v1alpha1", "kind": "StyleTransferJob",
                                     "name": "orangutan", "uid": "uid-of-another-orangutan", "controller": True}]},
                "spec": {}}
            assert (await api.post(JOBS, json=other)).status == 200

            await eventually(lambda: status(api).get("childrenDeleted"))
            assert gone(api, "MPIJob", "orangutan-stylize-1")
            (request,) = [r for r in api if r.method == "DELETE" and str(r.url.path).startswith(MPIJOBS + "/")]
            assert request.data["preconditions"]["uid"]  # that very MPIJob, not one made since it was read
            assert not gone(api, "Job", "orangutan-preprocess-1")  # not the job's: still there
            assert child(api, "Job", "orangutan-preprocess-1")["metadata"]["ownerReferences"][0]["uid"] == \
                "uid-of-another-orangutan"
    run(scenario)


def test_a_finished_job_is_deleted_after_its_ttl():
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, retries=0, cleanup={"childrenAfterSucceededSeconds": 0, "jobAfterFinishedSeconds": 1})
            await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            await finish(api, JOBS, "orangutan-preprocess-1", ok=False, reason="BackoffLimitExceeded")
            await eventually(lambda: status(api)["phase"] == "Failed")
            await eventually(lambda: api.objects["stylebatch.io/v1alpha1/styletransferjobs", NS, "orangutan"].deleted,
                             timeout=10)
            assert not deletes(api, JOBS)  # a failed job's children went with it (owner references), not before
            assert_requests_allowed_by_rbac(api, stylized=False)
    run(scenario)


def test_the_ttl_leaves_alone_a_job_re_created_under_the_same_name_since_it_was_read():
    """The TTL's DELETE names the job it read by uid. Someone deleted it and applied a new job of the
    same name between that read and the DELETE: the API server answers 409, the new job is not
    deleted, nothing is logged as an error, and the new job runs as a job of its own."""
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, retries=0, cleanup={"childrenAfterSucceededSeconds": 0, "jobAfterFinishedSeconds": 1})
            await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            old_uid = job(api)["metadata"]["uid"]
            await finish(api, JOBS, "orangutan-preprocess-1", ok=False, reason="BackoffLimitExceeded")
            await eventually(lambda: status(api)["phase"] == "Failed")
            swapped: list[bool] = []

            async def re_create(request: kmock.Request) -> None:
                if request.resource.plural == "styletransferjobs" and not swapped:
                    swapped.append(True)  # the old job gone with its children (owner references), a new one
                    api.objects[RESOURCES["Job"], NS, "orangutan-preprocess-1"].delete()
                    api.objects["stylebatch.io/v1alpha1/styletransferjobs", NS, "orangutan"].patch(
                        {"metadata": {"uid": "uid-of-the-new-orangutan"}, "status": None})
            api.before_delete = re_create
            await eventually(lambda: swapped, timeout=10)

            pre = await eventually(lambda: not gone(api, "Job", "orangutan-preprocess-1")
                                   and child(api, "Job", "orangutan-preprocess-1"))
            assert pre["metadata"]["ownerReferences"][0]["uid"] == "uid-of-the-new-orangutan"
            assert status(api)["phase"] in ("Pending", "Preprocessing")  # the new job's own, not the old's Failed
            assert not api.objects["stylebatch.io/v1alpha1/styletransferjobs", NS, "orangutan"].deleted
            (stj_delete,) = [r for r in api if r.method == "DELETE" and str(r.url.path) == f"{STJ}/orangutan"]
            assert stj_delete.data["preconditions"]["uid"] == old_uid
    run(scenario)


# --- a style trained as part of the job (spec.train) -------------------------------------------

PAINTING = "az://styles/starry.jpg"
WEIGHTS = "az://videos/out/.stylebatch-work/media/orangutan-{uid8}.pth"


def train_log(api: ApiServer, step: int, steps: int, rate: float, eta: str) -> None:
    """What the training pod logs every 10 s (the worker's own line; the API serves it as the pod's log)."""
    api.launcher_log += (f"stylebatch: step {step}/{steps} loss 1.2e+06 content 2e+05 style 1e+06 "
                         f"{rate:.2f} steps/s ETA {eta}\n")


def test_a_job_that_trains_a_style_trains_first_shows_its_steps_then_stylizes_with_the_trained_weights():
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, style=PAINTING, train={"steps": 100})
            train = await eventually(lambda: child(api, "Job", "orangutan-train-1"))
            weights = WEIGHTS.format(uid8=job(api)["metadata"]["uid"][:8])
            await eventually(lambda: status(api)["phase"] == "Training")
            assert status(api)["trainedStyle"] == weights
            args = train["spec"]["template"]["spec"]["containers"][0]["args"]
            assert args[:3] == ["stylebatch", "train-style", PAINTING] and args[args.index("-o") + 1] == weights
            assert train["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert creates(api, JOBS) == ["orangutan-train-1"]  # nothing else before the training is done

            pod = await add_pod(api, "Job", "orangutan-train-1", "x7k2p", {"phase": "Running"})
            train_log(api, 40, 100, 2.5, "00:00:24")
            await eventually(lambda: status(api)["training"]["step"] == 40)
            s = status(api)
            assert s["progress"]["summary"] == "training 40% (40/100 steps)"
            assert s["training"]["summary"] == "40% (40/100 steps), 2.50 steps/s, ETA 00:00:24"
            reads = [r for r in api if r.subresource == "log"]
            assert {str(r.url.path) for r in reads} == {f"{PODS}/{pod}/log"}
            assert reads[0].params == {"container": "train", "tailLines": "50"}
            train_log(api, 90, 100, 2.5, "00:00:04")
            await eventually(lambda: status(api)["training"]["step"] == 90)
            await finish(api, JOBS, "orangutan-train-1")

            await eventually(lambda: child(api, "Job", "orangutan-preprocess-1"))
            await eventually(lambda: status(api)["phase"] == "Preprocessing")
            s = status(api)
            assert "progress" not in s and s["training"]["percent"] == 100  # the stages' progress starts afresh
            await finish(api, JOBS, "orangutan-preprocess-1")
            mpijob = await eventually(lambda: child(api, "MPIJob", "orangutan-stylize-1"))
            launcher = _launcher_args(mpijob)
            assert launcher[launcher.index("--style") + 1] == weights  # every rank paints with the trained net
            await finish(api, MPIJOBS, "orangutan-stylize-1")
            await eventually(lambda: child(api, "Job", "orangutan-postprocess-1"))
            await finish(api, JOBS, "orangutan-postprocess-1")
            await eventually(lambda: status(api)["phase"] == "Succeeded")
            assert phases(api) == ["Pending", "Training", "Preprocessing", "Stylizing", "Postprocessing", "Succeeded"]
            await eventually(lambda: [reason for _, reason, _ in events(api)][:4] == [
                "Accepted", "TrainStarted", "TrainSucceeded", "PreprocessSucceeded"])  # (kopf posts events from a queue)
            assert creates(api, JOBS) == ["orangutan-train-1", "orangutan-preprocess-1", "orangutan-postprocess-1"]
            assert status(api)["trainedStyle"] == weights
    run(scenario)


def test_a_failed_training_is_retried_and_resumes_then_a_bad_painting_fails_the_job_with_its_reason():
    async def scenario() -> None:
        async with api_server() as api, operator(api):
            await apply_job(api, style=PAINTING, train={"steps": 100}, retries=2)
            first = await eventually(lambda: child(api, "Job", "orangutan-train-1"))
            await add_pod(api, "Job", "orangutan-train-1", "a", {"phase": "Failed", "containerStatuses": [{
                "state": {"terminated": {"exitCode": 1, "reason": "Error", "message":
                          "stylebatch: step 60/100 loss 1e+06\nRuntimeError: CUDA error: an illegal memory access"}}}]})
            await finish(api, JOBS, "orangutan-train-1", ok=False, reason="BackoffLimitExceeded",
                         message="Job has reached the specified backoff limit")
            second = await eventually(lambda: child(api, "Job", "orangutan-train-2"))
            s = await eventually(lambda: status(api)["attempts"]["train"] == 2 and status(api))
            assert (s["phase"], s["attempts"]["train"], s["retries"], s["reason"]) == ("Training", 2, 1, "Retrying")
            assert (s["failure"]["stage"], s["failure"]["child"]) == ("train", "Job/orangutan-train-1")
            retry = await eventually(lambda: [e for e in events(api) if e[1] == "Retrying"])
            assert "CUDA error" in retry[0][2] and "resumes from its last checkpoint" in retry[0][2]
            # the same command: it continues from the checkpoint beside the weights
            container = lambda j: j["spec"]["template"]["spec"]["containers"][0]  # noqa: E731
            assert container(first)["args"] == container(second)["args"]

            line = "stylebatch: error: painting starry.jpg is truncated or corrupt"
            await add_pod(api, "Job", "orangutan-train-2", "b", {"phase": "Failed", "containerStatuses": [{
                "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": f"{line}\n"}}}]})
            await finish(api, JOBS, "orangutan-train-2", ok=False, reason="PodFailurePolicy",
                         message="Container train for pod media/orangutan-train-2-b failed with exit code 2")
            await eventually(lambda: status(api)["phase"] == "Failed")
            s = status(api)
            failed = condition(api, "Failed")
            assert (failed["status"], failed["reason"]) == ("True", "InvalidInput") and line in failed["message"]
            assert (s["failure"]["stage"], s["failure"]["reason"], s["failure"]["message"]) == (
                "train", "InvalidInput", line)
            await asyncio.sleep(5 * INTERVAL)
            assert creates(api, JOBS) == ["orangutan-train-1", "orangutan-train-2"] and creates(api, MPIJOBS) == []
    run(scenario)


def test_a_leader_whose_renewals_hang_stops_acting_before_a_standby_may_take_the_lease(caplog):
    """A renewal stuck in the API server's timeouts (10 s for the read, 10 s for the write) kept the
    leader acting until it came back, up to 20 s after a standby took the Lease at lease_seconds: two
    operators at once. The API server here never answers the renewal (a stand-in Kube: no server can
    hang on demand in kmock)."""
    from stylebatch_operator.leader import Elector

    class Hanging:
        async def get(self, *_: Any) -> None:
            await asyncio.sleep(3600)

    # (a 3 s lease: 1 s between the renew deadline and the lease's end, for a busy machine's late timers)
    config = LeaseConfig(name="stylebatch-operator", namespace=NS, identity="a", lease_seconds=3,
                         renew_seconds=0.1)

    async def scenario() -> float:
        elector = Elector(Hanging(), config)  # type: ignore[arg-type]
        elector.held_since = time.monotonic()  # renewed just now
        lost = asyncio.Event()
        began = time.monotonic()
        await asyncio.wait_for(elector.hold(lost), timeout=10)
        assert lost.is_set()
        return time.monotonic() - began

    took = asyncio.run(scenario())
    assert config.renew_deadline <= took < config.lease_seconds  # stopped before a standby may take over
    said = [r.getMessage() for r in caplog.records if "could not renew" in r.getMessage()]
    assert said and all(m.endswith(": no answer within the renew deadline") for m in said), said  # (it ended ': ')


def test_one_failed_renewal_is_tried_again_before_the_deadline_and_the_leader_keeps_the_lease():
    """One renewal refused (an API server's 500 during an upgrade) and the next one came only a whole
    renew period later, at the deadline, given 10 ms: one blip stopped the operator. Client-go's ratio
    (15 s lease, renewals every 5 s, retries every 2 s, a 10 s deadline), at a fifth of it (at a tenth
    the retry had 0.2 s to spare, too little on a busy machine)."""
    from stylebatch_operator.kube import ApiError
    from stylebatch_operator.leader import Elector

    config = LeaseConfig(name="stylebatch-operator", namespace=NS, identity="a", lease_seconds=3,
                         renew_seconds=1, retry_seconds=0.4)
    calls: list[float] = []

    class Blip:
        async def get(self, *_: Any) -> dict[str, Any]:
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise ApiError(500, "Internal Server Error")
            await asyncio.sleep(0.05)  # a normal round trip
            return {"metadata": {"namespace": NS, "name": "stylebatch-operator", "resourceVersion": str(len(calls))},
                    "spec": {"holderIdentity": "a", "leaseDurationSeconds": 1}}

        async def patch_json(self, *_: Any) -> None:
            await asyncio.sleep(0.05)

    async def scenario() -> bool:
        elector = Elector(Blip(), config)  # type: ignore[arg-type]
        elector.held_since = time.monotonic()
        lost = asyncio.Event()
        task = asyncio.create_task(elector.hold(lost))
        await asyncio.sleep(5)
        task.cancel()
        return lost.is_set()

    assert not asyncio.run(scenario()) and len(calls) >= 3  # (renewed again, and on)
