"""The rehearsal: whole StyleTransferJobs through the real images and the real operator.

The operator runs from its image (`stylebatch operator`, read-only root, non-root) against kmock; the
executor in rehearsal_cluster.py plays the cluster, running every pod the operator's Jobs and MPIJob
ask for as a container of the CPU worker image, over ssh between launcher and workers as the MPI
Operator wires them. Each scenario is judged as a user would judge it: the StyleTransferJob's status
and the video in blob storage (every frame, the input's timestamps, the sound).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from azure.storage.blob import BlobServiceClient

from azurite_fixture import KEY
from clips import audio_md5, count_frames, frame_pts, make_clip
from rehearsal_cluster import Cluster
from rehearsal_engine import LABEL
from rehearsal_images import OPERATOR_TAG, REPO, WORKER_TAG
from stylebatch.progress import latest_by_rank
from stylebatch_operator.crd import apply_defaults, openapi_schema
from test_operator_kopf import NS, STJ, api_server, events, free_port, phases, status, until_healthy
from rehearsal_stack import FIGURES, Stack

pytestmark = [pytest.mark.rehearsal, pytest.mark.timeout(1800)]  # the first one builds the images

SAMPLE = REPO / "samples" / "sample.mp4"  # scripts/setup.sh makes it: 6 s, 144 frames, with sound
INTERVAL = "1"  # seconds between the operator's reconciliations


# --- the cluster, for one scenario -------------------------------------------------------------

@contextlib.asynccontextmanager
async def cluster(stack: Stack, tmp_path: Path) -> AsyncIterator[tuple[Any, Cluster]]:
    """kmock as the API server, the operator's image running `stylebatch operator` against it, and
    the executor playing the nodes and controllers; all stopped at the end, and the operator's log
    checked for tracebacks."""
    crds = [yaml.safe_load(path.read_text()) for path in sorted((REPO / "charts" / "stylebatch" / "crds").glob("*.yaml"))]
    async with api_server(install_crds=crds) as api:  # the chart's CRDs, as `helm install` leaves them
        verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
        for key, kind in [("v1/secrets", "Secret"), ("v1/configmaps", "ConfigMap")]:
            api.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=verbs, subresources=set())
        for crd in crds:
            spec = crd["spec"]
            version = next(v["name"] for v in spec["versions"] if v.get("served"))
            api.resources[f"{spec['group']}/{version}/{spec['names']['plural']}"] = kmock.ResourceInfo(
                kind=spec["names"]["kind"], namespaced=spec["scope"] == "Namespaced", verbs=verbs,
                subresources={"status"})
        executor = Cluster(api=api, engine=stack.engine, network=stack.network, extra_hosts=stack.extra_hosts,
                           scratch=tmp_path / "volumes", namespace=NS)
        # each pod's own log (before the mock's one launcher log: a higher priority)
        (api[kmock.resource("v1/pods"), kmock.subresource("log")] ** 10) << executor.serve_log
        connection = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
                      f"BlobEndpoint={stack.pod_blob_endpoint};")
        await executor.create("/api/v1/namespaces/media/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "stylebatch-storage"},
            "data": {"AZURE_STORAGE_CONNECTION_STRING": _b64(connection)}})

        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(api.url).rstrip("/")}}],
            "users": [{"name": "operator", "user": {"token": "rehearsal"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "operator"}}]}))
        kubeconfig.chmod(0o644)
        operator, port = f"stylebatch-operator-{free_port()}", free_port()
        # As the chart runs it: non-root, read-only root filesystem, /tmp an emptyDir, no capabilities.
        stack.engine.run("run", "-d", "--name", operator, "--label", f"{LABEL}=1", "--network", "host",
                         "--read-only", "--tmpfs", "/tmp", "--user", "65532:65532", "--cap-drop", "ALL",
                         "--security-opt", "no-new-privileges",
                         "--mount", f"type=bind,src={kubeconfig},dst=/etc/stylebatch/kubeconfig,readonly",
                         "-e", "KUBECONFIG=/etc/stylebatch/kubeconfig", "-e", f"STYLEBATCH_OPERATOR_INTERVAL={INTERVAL}",
                         OPERATOR_TAG, "operator", "--namespace", NS, "--liveness-port", str(port))
        task = executor.task = asyncio.create_task(executor.run())
        try:
            try:
                await until_healthy(port, timeout=90)
            except AssertionError:
                log = stack.engine.run("logs", operator, check=False)
                raise AssertionError(f"the operator did not start:\n{log.stdout}{log.stderr}") from None
            yield api, executor
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            stack.engine.run("stop", "-t", "20", operator, check=False)
            log = stack.engine.run("logs", operator, check=False)
            (stack.logs / f"{operator}.log").write_text(log.stdout + log.stderr)
            for name, text in executor.logs.items():
                (stack.logs / f"pod-{name}.log").write_text(text)
            stack.engine.remove_containers()
            await executor.close()
    assert "Traceback" not in log.stdout + log.stderr, log.stdout + log.stderr


async def until(executor: Cluster, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """check()'s first truthy result, polled every `every` seconds; fails after `timeout` seconds,
    or at once with what broke the executor."""
    deadline = time.monotonic() + timeout
    while True:
        executor.check()
        with contextlib.suppress(KeyError, IndexError, TypeError):
            if result := check():
                return result
        assert time.monotonic() < deadline, f"not true within {timeout}s: {inspect.getsource(check).strip()}"
        await asyncio.sleep(every)


async def finished(api: Any, executor: Cluster, name: str, timeout: float) -> dict[str, Any]:
    """The job's status once it is Succeeded or Failed."""
    await until(executor, lambda: status(api, name).get("phase") in ("Succeeded", "Failed"), timeout)
    return status(api, name)


def run(scenario: Callable[[], Any], timeout: float = 600) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


async def apply(api: Any, name: str, **spec: Any) -> None:
    """`kubectl apply -f manifests/examples/job.yaml`, with this cluster's image, 2 CPU workers
    and the storage Secret; the API server fills in the CRD's defaults."""
    body = yaml.safe_load((REPO / "manifests" / "examples" / "job.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": NS}
    body["spec"].update({"image": WORKER_TAG, "imagePullPolicy": "IfNotPresent", "workers": 2, "gpusPerWorker": 0,
                         "storage": {"secretName": "stylebatch-storage"}, **spec})
    resp = await api.post(STJ, json=apply_defaults(body, openapi_schema()))
    assert resp.status == 200, await resp.text()


# --- storage ------------------------------------------------------------------------------------

def blobs(stack: Stack) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint={stack.blob_endpoint};")


def upload(stack: Stack, container: str, name: str, path: Path) -> None:
    service = blobs(stack)
    with contextlib.suppress(Exception):
        service.create_container(container)
    with open(path, "rb") as f:
        service.get_blob_client(container, name).upload_blob(f, overwrite=True)


def download(stack: Stack, container: str, name: str, path: Path) -> Path:
    path.write_bytes(blobs(stack).get_blob_client(container, name).download_blob().readall())
    return path


def parts(stack: Stack, container: str) -> dict[str, str]:
    """The stylized parts in the job's work dir: name -> etag (a rewritten part has a new one)."""
    return {b.name: b.etag for b in blobs(stack).get_container_client(container).list_blobs()
            if "/parts/" in b.name}


def assert_same_video(out: Path, src: Path) -> None:
    assert count_frames(out) == count_frames(src)
    assert frame_pts(out) == frame_pts(src)
    assert audio_md5(out, 0) == audio_md5(src, 0), "the sound is copied bit for bit"


def condition(api: Any, name: str, type_: str) -> dict[str, Any]:
    return {c["type"]: c for c in status(api, name).get("conditions") or []}.get(type_) or {}


# --- scenarios ----------------------------------------------------------------------------------

def test_the_example_job_runs_through_the_images_to_succeeded_with_every_frame_and_the_sound(stack, tmp_path):
    async def scenario() -> None:
        upload(stack, "videos", "orangutan.mp4", SAMPLE)
        async with cluster(stack, tmp_path) as (api, executor):
            start = time.monotonic()
            await apply(api, "orangutan", processing={"maxSide": 96})
            await finished(api, executor, "orangutan", timeout=900)
            FIGURES["example job (144 frames, 2 workers, --max-side 96)"] = {
                "wall seconds": round(time.monotonic() - start, 1)}
            s = status(api, "orangutan")
            assert s["phase"] == "Succeeded", s
            assert phases(api, "orangutan") == ["Pending", "Preprocessing", "Stylizing", "Postprocessing", "Succeeded"]
            assert s["progress"]["percent"] == 100 and s["progress"]["framesTotal"] == 144
            assert s["retries"] == 0
            # the stylize stage really ran on two workers, each reached over ssh by the launcher
            launcher_log = "".join(v for k, v in executor.logs.items() if k.startswith("orangutan-stylize-1-launcher"))
            ranks = latest_by_rank(launcher_log.splitlines())
            assert sorted(ranks) == [0, 1] and sum(r.done for r in ranks.values()) == 144, launcher_log[-2000:]
        out = download(stack, "videos", "stylized/orangutan-lavender-gold.mp4", tmp_path / "out.mp4")
        assert_same_video(out, SAMPLE)
        assert not parts(stack, "videos"), "the work dir is removed after a success (keepWorkDir: false)"
    run(scenario, timeout=1500)


def test_a_worker_killed_mid_stylize_is_retried_and_the_job_resumes_from_the_parts_already_done(stack, tmp_path):
    # 480x360 at full size, 12 parts of 8 frames: a second or more per part, so the kill lands mid-stylize
    clip = make_clip(tmp_path / "in.mp4", size=(480, 360), frames=96, fps=24, audio=("aac",))

    async def scenario() -> None:
        upload(stack, "kills", "in.mp4", clip)
        async with cluster(stack, tmp_path) as (api, executor):
            await apply(api, "killed", input="az://kills/in.mp4", output="az://kills/out/in.mp4",
                        keepWorkDir=True, processing={"chunkFrames": 8})
            # a few parts done, most not: then the node goes (SIGTERM to the worker's container)
            done = await until(executor, lambda: len(parts(stack, "kills")) >= 2 and parts(stack, "kills"), 900)
            assert len(done) < 12, "the stylize stage finished before the kill: make the clip longer"
            await executor.kill("killed-stylize-1-worker-1")

            s = await finished(api, executor, "killed", timeout=900)
            assert s["phase"] == "Succeeded", s
            # (a third attempt when the second finds the work dir's lease of the killed attempt
            # not yet expired: it exits 75 and is retried)
            assert s["attempts"]["stylize"] >= 2
            # the stopped worker's pod failed (not "Succeeded"), with SIGTERM's exit code
            worker = api.objects["v1/pods", NS, "killed-stylize-1-worker-1"].raw["status"]
            assert worker["phase"] == "Failed"
            assert worker["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143
            # the retry names the worker that went away, not only mpiexec's generic last lines
            retry = [e for e in events(api, "killed") if e[1] == "Retrying"]
            assert retry and retry[0][0] == "Warning"
            assert "killed-stylize-1-worker-1" in retry[0][2], retry[0][2]
            # resumed: the parts done before the kill were kept, not stylized again
            after = parts(stack, "kills")
            assert len(after) == 12
            assert {name: after[name] for name in done} == done
        out = download(stack, "kills", "out/in.mp4", tmp_path / "out.mp4")
        assert_same_video(out, clip)
    run(scenario, timeout=1500)


def test_a_bad_input_fails_as_invalid_input_with_the_workers_one_line_and_no_retry(stack, tmp_path):
    async def scenario() -> None:
        bad = tmp_path / "notes.mp4"
        bad.write_text("these are meeting notes, not a video\n")
        upload(stack, "bad", "notes.mp4", bad)
        async with cluster(stack, tmp_path) as (api, executor):
            await apply(api, "notes", input="az://bad/notes.mp4", output="az://bad/out/notes.mp4", retries=3)
            s = await finished(api, executor, "notes", timeout=600)
            failed = condition(api, "notes", "Failed")
            assert s["phase"] == "Failed" and failed["reason"] == "InvalidInput", s
            line = s["failure"]["message"]
            assert line.startswith("stylebatch: error: ") and "not a readable video" in line and "\n" not in line
            assert line in failed["message"]
            assert "Traceback" not in str(s) and KEY not in str(s)
            assert s["retries"] == 0
            await asyncio.sleep(3)
            jobs = [name for (res, _, name) in api.objects if res.plural == "jobs"]
            assert jobs == ["notes-preprocess-1"], "retrying a bad input cannot help"
        assert not [b.name for b in blobs(stack).get_container_client("bad").list_blobs() if b.name.startswith("out/")
                    and "/.stylebatch-work/" not in b.name]
    run(scenario)


def test_a_missing_image_is_reported_on_the_job_within_a_minute(stack, tmp_path):
    async def scenario() -> None:
        upload(stack, "videos", "orangutan.mp4", SAMPLE)
        async with cluster(stack, tmp_path) as (api, executor):
            await apply(api, "typo", image="stylebatch-worker:no-such-tag")
            stalled = await until(executor, lambda: condition(api, "typo", "Stalled").get("status") == "True"
                                  and condition(api, "typo", "Stalled"), timeout=60)  # (fails past a minute)
            assert stalled["reason"] in ("ErrImagePull", "ImagePullBackOff"), stalled
            assert "stylebatch-worker:no-such-tag" in stalled["message"] and "typo-preprocess-1" in stalled["message"]
    run(scenario, timeout=300)


def _b64(text: str) -> str:
    import base64
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("case, tmp", [
    ("no /tmp at all: a read-only root filesystem and no emptyDir", []),
    ("a /tmp that is full", ["--tmpfs", "/tmp:rw,size=16k,mode=1777"]),
])
def test_the_worker_image_on_a_read_only_root_says_in_one_line_when_tmp_is_missing_or_full(stack, tmp_path, case, tmp):
    clip = make_clip(tmp_path / "in.mp4", size=(160, 120), frames=24, fps=24, audio=("aac",))
    upload(stack, "tmpcheck", "in.mp4", clip)
    connection = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
                  f"BlobEndpoint={stack.pod_blob_endpoint};")
    # as the chart's pods run it: non-root, read-only, no capabilities, no privilege escalation
    proc = stack.engine.run(
        "run", "--rm", "--label", f"{LABEL}=1", "--network", stack.network, "--add-host", f"azurite:{stack.gateway}",
        "--read-only", "--user", "1000:1000", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *tmp,
        "-e", "AZURE_STORAGE_CONNECTION_STRING", WORKER_TAG,
        "stylebatch", "preprocess", "az://tmpcheck/in.mp4", "--work", "az://tmpcheck/work/", "-o", "az://tmpcheck/out.mp4",
        check=False, timeout=300, env={"AZURE_STORAGE_CONNECTION_STRING": connection})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("stylebatch: error: ")]
    assert len(errors) == 1 and "/tmp" in errors[0], output
    assert KEY not in output
