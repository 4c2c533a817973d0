"""Every manifest the operator creates, checked against the real schemas: Jobs against the Kubernetes
JSON schemas (kubernetes-validate, strict), MPIJobs against the MPI operator's CRD schema (with
nothing the API server would prune), and what each pod runs, mounts and may schedule on."""

from __future__ import annotations

import copy
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stylebatch.cli import build_parser
from stylebatch_operator.crd import SPEC_SCHEMA, apply_defaults
from stylebatch_operator.decide import START, Action
from stylebatch_operator.manifests import (
    build_child, build_mpijob, build_postprocess_job, build_preprocess_job,
)
from stylebatch_operator.status import status_patch

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "manifests" / "examples" / "job.yaml"
MPIJOB_CRD = REPO.parent / "shared" / "k8s" / "mpijobs.kubeflow.org.crd.yaml"
K8S_VERSIONS = ["1.29", "1.33"]  # oldest AKS version with GA CEL validation rules, and a recent one
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def stj(name: str = "orangutan", **spec: Any) -> dict[str, Any]:
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"].update(name=name, namespace="media", uid="0123456789abcdef-uid", generation=1)
    obj["spec"] = apply_defaults({**obj["spec"], **spec}, SPEC_SCHEMA)
    return obj


@pytest.fixture(scope="module")
def mpijob_schema() -> dict[str, Any]:
    crd = yaml.safe_load(MPIJOB_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v2beta1"]
    return version["schema"]["openAPIV3Schema"]


def pruned_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields a structural schema does not declare: the API server would silently drop them."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if props is not None and key in props:
                found += pruned_fields(sub, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += pruned_fields(sub, extra, f"{path}.{key}")
            elif props is not None or extra is False:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += pruned_fields(item, schema["items"], f"{path}[{i}]")
    return found


VARIANTS = {
    "example": {},
    "cpu fallback": {"gpusPerWorker": 0, "workers": 3},
    "spot pool": {"scheduling": {"spot": True, "nodeSelector": {"agentpool": "gpuspot"},
                                 "tolerations": [{"key": "team", "operator": "Equal", "value": "media",
                                                  "effect": "NoSchedule"}]}},
    "workload identity": {"storage": {"serviceAccountName": "stylebatch-storage", "accountName": "mediastore"}},
    "all options": {"workDir": "az://scratch/work/", "imagePullSecrets": [{"name": "acr"}],
                    "processing": {"maxSide": 720, "batchSize": 8, "chunkFrames": 240},
                    "encoder": {"codec": "hevc", "bitrate": "8M", "preset": "slow"}, "strength": 0.6},
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_jobs_are_valid_kubernetes_jobs(variant, version):
    for build in (build_preprocess_job, build_postprocess_job):
        kubernetes_validate.validate(build(stj(**VARIANTS[variant])), version, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_mpijobs_are_valid_and_nothing_in_them_would_be_pruned(variant, mpijob_schema):
    mpijob = build_mpijob(stj(**VARIANTS[variant]))
    jsonschema.Draft7Validator(mpijob_schema).validate(mpijob)
    assert pruned_fields(mpijob, mpijob_schema) == []
    # the pod templates are plain Kubernetes pod templates: validate them as such too
    for role in ("Launcher", "Worker"):
        template = mpijob["spec"]["mpiReplicaSpecs"][role]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **template["metadata"]},
               "spec": template["spec"]}
        kubernetes_validate.validate(pod, K8S_VERSIONS[-1], strict=True)


def test_the_schema_checks_catch_a_misspelled_field(mpijob_schema):
    mpijob = build_mpijob(stj())
    mpijob["spec"]["launcherCreationPolcy"] = mpijob["spec"].pop("launcherCreationPolicy")
    assert pruned_fields(mpijob, mpijob_schema) == [".spec.launcherCreationPolcy"]
    job = build_preprocess_job(stj())
    job["spec"]["backofLimit"] = 0
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)


def test_mpijob_runs_stylize_under_mpich_across_every_gpu():
    mpijob = build_mpijob(stj(workers=3, gpusPerWorker=4, processing={"maxSide": 720, "batchSize": 8},
                              strength=0.5))
    spec = mpijob["spec"]
    assert (spec["mpiImplementation"], spec["launcherCreationPolicy"]) == ("MPICH", "WaitForWorkersReady")
    assert spec["sshAuthMountPath"] == "/home/mpiuser/.ssh"
    assert spec["slotsPerWorker"] == 4
    assert spec["runPolicy"]["cleanPodPolicy"] == "Running" and spec["runPolicy"]["backoffLimit"] == 0
    assert spec["runPolicy"]["activeDeadlineSeconds"] == 7200
    launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    worker_spec = spec["mpiReplicaSpecs"]["Worker"]
    assert worker_spec["replicas"] == 3
    assert launcher["containers"][0]["args"] == [
        "mpiexec", "-n", "12", "-f", "/etc/mpi/hostfile", "stylebatch", "stylize",
        "--work", "az://videos/stylized/.stylebatch-work/media/orangutan-01234567/",
        "--style", "lavender-gold", "--strength", "0.5", "--device", "cuda", "--max-side", "720", "--batch-size", "8"]
    assert "nvidia.com/gpu" not in str(launcher)  # the launcher needs no GPU
    worker = worker_spec["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 4}
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in worker["tolerations"]
    assert worker["containers"][0]["readinessProbe"]["tcpSocket"]["port"] == 2222


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_command_is_one_the_worker_cli_accepts(variant):
    parser = build_parser()
    job = stj(**VARIANTS[variant])
    pre = build_preprocess_job(job)["spec"]["template"]["spec"]["containers"][0]["args"]
    post = build_postprocess_job(job)["spec"]["template"]["spec"]["containers"][0]["args"]
    launcher = build_mpijob(job)["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    stylize = launcher[launcher.index("stylebatch"):]
    for argv in (pre, stylize, post):
        assert argv[0] == "stylebatch"
        args = parser.parse_args(argv[1:])
        assert args.command == argv[1] and args.work == argv[argv.index("--work") + 1]
    args = parser.parse_args(stylize[1:])
    assert (args.style, args.strength) == (job["spec"]["style"], job["spec"]["strength"])


def test_cpu_fallback_asks_for_no_gpu_and_tolerates_no_gpu_taint():
    mpijob = build_mpijob(stj(gpusPerWorker=0, workers=2))
    worker = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    args = mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["mpiexec", "-n", "2"] and args[args.index("--device") + 1] == "cpu"
    assert mpijob["spec"]["slotsPerWorker"] == 1
    assert "nvidia.com/gpu" not in str(worker) and "tolerations" not in worker


def test_spot_pool_tolerates_the_aks_spot_taint_and_selects_the_pool():
    worker = build_mpijob(stj(**VARIANTS["spot pool"]))["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot",
            "effect": "NoSchedule"} in worker["tolerations"]
    assert {"key": "team", "operator": "Equal", "value": "media", "effect": "NoSchedule"} in worker["tolerations"]
    assert worker["nodeSelector"] == {"agentpool": "gpuspot"}


def test_preprocess_and_postprocess_run_the_worker_stages():
    pre = build_preprocess_job(stj(**VARIANTS["all options"]))
    post = build_postprocess_job(stj(**VARIANTS["all options"]))
    assert pre["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "stylebatch", "preprocess", "az://videos/orangutan.mp4", "--work", "az://scratch/work/",
        "-o", "az://videos/stylized/orangutan-lavender-gold.mp4",
        "--codec", "hevc", "--bitrate", "8M", "--preset", "slow", "--chunk-frames", "240"]
    assert post["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "stylebatch", "postprocess", "--work", "az://scratch/work/"]
    for job in (pre, post):
        assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "acr"}]


def test_storage_credentials_are_references_never_values():
    for child in (build_preprocess_job(stj()), build_mpijob(stj()), build_postprocess_job(stj())):
        env = [e for c in _containers(child) for e in c["env"]]
        secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
        assert set(secret_env) == {"AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_SAS_TOKEN"}
        assert {ref["name"] for ref in secret_env.values()} == {"stylebatch-storage"}
        assert all(ref["optional"] for ref in secret_env.values())  # whichever form the Secret holds
        assert not [e for e in env if e["name"].startswith("AZURE") and "value" in e]


def test_workload_identity_labels_every_pod_and_uses_the_service_account():
    spec = VARIANTS["workload identity"]
    for child in (build_preprocess_job(stj(**spec)), build_mpijob(stj(**spec)), build_postprocess_job(stj(**spec))):
        for template in _templates(child):
            assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
            assert template["spec"]["serviceAccountName"] == "stylebatch-storage"
            env = {e["name"]: e for c in template["spec"]["containers"] for e in c["env"]}
            assert env["AZURE_STORAGE_ACCOUNT"]["value"] == "mediastore"
            assert "AZURE_STORAGE_CONNECTION_STRING" not in env


def test_children_are_owned_labelled_and_named_by_job_stage_and_attempt():
    job = stj()
    for stage, kind in (("preprocess", "Job"), ("stylize", "MPIJob"), ("postprocess", "Job")):
        child = build_child(job, stage, 2)
        assert (child["kind"], child["metadata"]["name"]) == (kind, f"orangutan-{stage}-2")
        assert child["metadata"]["ownerReferences"] == [{
            "apiVersion": "stylebatch.io/v1alpha1", "kind": "StyleTransferJob", "name": "orangutan",
            "uid": "0123456789abcdef-uid", "controller": True, "blockOwnerDeletion": True}]
        labels = {"app.kubernetes.io/managed-by": "stylebatch", "stylebatch.io/job": "orangutan",
                  "stylebatch.io/stage": stage, "stylebatch.io/attempt": "2"}
        assert child["metadata"]["labels"] == labels
        for template in _templates(child):
            assert labels.items() <= template["metadata"]["labels"].items()
        assert build_child(job, stage, 2) == child  # deterministic: a restart builds the very same object


def test_longest_allowed_name_keeps_every_generated_name_a_dns_label():
    name = "j" * 40
    for stage in ("preprocess", "stylize", "postprocess"):
        child = build_child(stj(name=name), stage, 11)
        assert len(child["metadata"]["name"]) <= 63 - 6  # Job pods add "-xxxxx"
    mpijob = build_child(stj(name=name), "stylize", 11)
    for suffix in ("-launcher", "-worker-63"):  # the MPI operator's pod and host names
        assert DNS_LABEL.match(mpijob["metadata"]["name"] + suffix)
        assert len(mpijob["metadata"]["name"] + suffix) <= 63


def test_children_never_outlive_the_jobs_deadline():
    assert build_preprocess_job(stj(), 1, deadline_seconds=1234)["spec"]["activeDeadlineSeconds"] == 1234
    assert build_mpijob(stj(), 2, deadline_seconds=99999)["spec"]["runPolicy"]["activeDeadlineSeconds"] == 7200


def test_a_spec_changed_after_start_does_not_reach_new_children():
    job = stj()
    job["status"] = {"acceptedSpec": copy.deepcopy(job["spec"])}
    job["spec"]["workers"] = 9
    job["spec"]["style"] = "red-ember"
    mpijob = build_mpijob(job)
    assert mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
    assert "red-ember" not in str(mpijob)


def test_children_of_a_started_job_still_get_the_sas_the_status_leaves_out():
    sas = "sv=2024&sp=rwl&sig=S3CR3T"
    job = stj(input=f"https://acct.blob.core.windows.net/videos/in.mp4?{sas}",
              output=f"https://acct.blob.core.windows.net/videos/out.mp4?{sas}")
    job["status"] = status_patch(job, Action(START), datetime(2026, 5, 1, tzinfo=timezone.utc))
    assert "S3CR3T" not in str(job["status"])
    args = build_preprocess_job(job)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[1:6] == ["preprocess", f"https://acct.blob.core.windows.net/videos/in.mp4?{sas}", "--work",
                         f"https://acct.blob.core.windows.net/videos/.stylebatch-work/media/orangutan-01234567/?{sas}",
                         "-o"]


def _templates(child: dict[str, Any]) -> list[dict[str, Any]]:
    if child["kind"] == "MPIJob":
        return [r["template"] for r in child["spec"]["mpiReplicaSpecs"].values()]
    return [child["spec"]["template"]]


def _containers(child: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for t in _templates(child) for c in t["spec"]["containers"]]
