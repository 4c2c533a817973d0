"""Every manifest the operator creates, checked against the real schemas: Jobs against the Kubernetes
JSON schemas (kubernetes-validate, strict), MPIJobs against the MPI operator's CRD schema (with
nothing the API server would prune), and what each pod runs, mounts, may schedule on, and may not do
(the restricted Pod Security Standard, no API token)."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stylebatch.cli import build_parser
from stylebatch.requests import (
    EncodingOptions, ModelOptions, PostprocessRequest, PreprocessRequest, StylizeRequest, TrainRequest, parse_argv,
)
from stylebatch_operator.crd import SPEC_SCHEMA, apply_defaults
from stylebatch_operator.decide import decide
from stylebatch_operator.states import ActionKind
from stylebatch.contract import SSHD_PORT
from stylebatch_operator.manifests import (
    RUN_AS_USER, SSHD_COMMAND, build_child, build_mpijob, build_postprocess_job, build_preprocess_job, build_train_job, work_dir,
)
from stylebatch_operator.names import STAGES
from stylebatch_operator.settings import Settings
from stylebatch_operator.spec import effective_spec
from stylebatch_operator.status import transition

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "manifests" / "examples" / "job.yaml"
# Next to the checkout (/work/main -> /work/shared), also from a worktree one level deeper.
MPIJOB_CRD = next((p for p in (REPO.parent / "shared", REPO.parent.parent / "shared")
                   if (p / "k8s").is_dir()), REPO.parent / "shared") / "k8s" / "mpijobs.kubeflow.org.crd.yaml"
K8S_VERSIONS = ["1.29", "1.33"]  # oldest AKS version with GA CEL validation rules, and a recent one
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)
# The operator as the chart's default values set it up.
SETTINGS = Settings(jobs={"workers": 2, "storage": {"secretName": "stylebatch-storage"}, "serviceAccountName": "stylebatch-job"})
# ... and as an AKS install sets it up (ci/aks-values.yaml, plus a pull secret).
AKS = Settings(jobs={
    "image": "stylebatchacr.azurecr.io/stylebatch-worker:0.1.0", "imagePullSecrets": [{"name": "acr"}],
    "workers": 4, "resources": {"requests": {"cpu": "3", "memory": "12Gi"}},
    "scheduling": {"nodeSelector": {"stylebatch.io/gpu": "true"},
                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    "serviceAccountName": "stylebatch-job",
    "storage": {"serviceAccountName": "stylebatch-job", "accountName": "stylebatchdata"}})


def stj(name: str = "orangutan", settings: Settings = SETTINGS, **spec: Any) -> dict[str, Any]:
    """The sample job as the API server stores it, accepted by an operator with `settings`."""
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"].update(name=name, namespace="media", uid="0123456789abcdef-uid", generation=1)
    obj["spec"] = apply_defaults({**obj["spec"], **spec}, SPEC_SCHEMA)
    action = decide(obj, {}, now=T0, settings=settings)
    assert action.kind == ActionKind.START, action.message
    obj["status"] = transition(obj, action, T0).patch
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
    "keep work dir": {"keepWorkDir": True},
    "cpu fallback": {"gpusPerWorker": 0, "workers": 3},
    "spot pool": {"scheduling": {"spot": True, "nodeSelector": {"agentpool": "gpuspot"},
                                 "tolerations": [{"key": "team", "operator": "Equal", "value": "media",
                                                  "effect": "NoSchedule"}]}},
    "workload identity": {"storage": {"serviceAccountName": "stylebatch-storage", "accountName": "mediastore"}},
    "kueue": {"queueName": "gpu-spot"},
    "aks defaults": {"settings": AKS},
    "aks defaults, job overrides": {"settings": AKS, "workers": 1, "gpusPerWorker": 0, "image": "mine:1",
                                    "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}},
                                    "storage": {"secretName": "team-storage"}, "scheduling": {"nodeSelector": {}}},
    "all options": {"workDir": "az://scratch/work/", "imagePullSecrets": [{"name": "acr"}],
                    "processing": {"maxSide": 720, "batchSize": 8, "chunkFrames": 240, "temporal": "on",
                                   "temporalStrength": 0.7, "precision": "bf16"},
                    "encoder": {"codec": "hevc", "bitrate": "8M", "preset": "slow"}, "strength": 0.6,
                    "style": "az://styles/starry.jpg:0.7,lavender-gold:0.3", "keepColors": True},
    "trained style": {"style": "az://styles/starry.jpg", "train": {"steps": 2000, "content": [
        "az://videos/more.mp4", "az://photos/beach.png"]}, "strength": 0.8, "keepColors": True},
    "trained style, aks defaults, kueue": {"settings": AKS, "style": "az://styles/starry.jpg", "train": {},
                                           "queueName": "gpu-spot"},
    "trained style on CPUs": {"style": "https://acct.blob.core.windows.net/styles/Starry.JPG", "train": {"size": 128},
                              "gpusPerWorker": 0, "scheduling": {"spot": True}},
}
TRAINED = VARIANTS["trained style"]


def children(job: dict[str, Any], attempt: int = 1) -> list[dict[str, Any]]:
    """Every child the job makes: the training Job first when it trains a style."""
    return [build_child(job, stage, attempt) for stage in STAGES
            if stage != "train" or effective_spec(job).get("train") is not None]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_jobs_are_valid_kubernetes_jobs(variant, version):
    for child in children(stj(**VARIANTS[variant])):
        if child["kind"] == "Job":
            kubernetes_validate.validate(child, version, strict=True)


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


def test_a_jobs_temporal_settings_reach_the_stylize_ranks():
    args = build_mpijob(stj(processing={"temporal": "on", "temporalStrength": 0.7}))[
        "spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--temporal") + 1] == "on"
    assert args[args.index("--temporal-strength") + 1] == "0.7"


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
        "stylebatch-mpiexec", "-n", "12", "-f", "/etc/mpi/hostfile", "stylebatch", "stylize",
        "--work", "az://videos/stylized/.stylebatch-work/media/orangutan-01234567/",
        "--style", "lavender-gold", "--strength", "0.5", "--device", "cuda", "--max-side", "720", "--batch-size", "8"]
    assert "nvidia.com/gpu" not in str(launcher)  # the launcher needs no GPU
    worker = worker_spec["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in worker["tolerations"]
    assert worker["containers"][0]["readinessProbe"]["tcpSocket"]["port"] == 2222


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_command_parses_back_to_the_request_the_job_asks_for(variant):
    """The operator writes pod commands with the worker's own request types; what a pod runs is
    read by the worker's real CLI as exactly the request the job's spec means."""
    parser = build_parser()
    job = stj(**VARIANTS[variant])
    spec, work = effective_spec(job), work_dir(job)
    processing, encoder = spec.get("processing") or {}, spec.get("encoder") or {}
    expected = {
        "preprocess": PreprocessRequest(input=spec["input"], work=work, output=spec["output"], encoding=EncodingOptions(
            codec=encoder.get("codec"), crf=encoder.get("crf"), bitrate=encoder.get("bitrate"),
            preset=encoder.get("preset"), chunk_frames=processing.get("chunkFrames"))),
        "stylize": StylizeRequest(work=work, model=ModelOptions(
            style=spec["style"], strength=spec["strength"], max_side=processing.get("maxSide"),
            batch_size=processing.get("batchSize"), device="cuda" if spec["gpusPerWorker"] else "cpu",
            keep_colors=spec.get("keepColors", False), temporal=processing.get("temporal"),
            precision=processing.get("precision"),
            temporal_strength=processing.get("temporalStrength"))),
        "postprocess": PostprocessRequest(work=work, output=spec["output"], delete_work=not spec.get("keepWorkDir")),
    }
    pre = build_preprocess_job(job)["spec"]["template"]["spec"]["containers"][0]["args"]
    post = build_postprocess_job(job)["spec"]["template"]["spec"]["containers"][0]["args"]
    launcher = build_mpijob(job)["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    stylize = launcher[launcher.index("stylebatch"):]
    argvs = [pre, stylize, post]
    if "train" in spec:  # the painting is spec.style; the job stylizes with the weights trained for it
        train = spec["train"]
        weights = work.rstrip("/") + ".pth"
        expected["train-style"] = TrainRequest(
            painting=spec["style"], output=weights, content=tuple(train.get("content") or [spec["input"]]),
            steps=train["steps"], size=train["size"], batch_size=train["batchSize"],
            device="cuda" if spec["gpusPerWorker"] else "cpu")
        expected["stylize"] = StylizeRequest(work=work, model=replace(expected["stylize"].model, style=weights))
        if not spec.get("keepWorkDir"):  # the training's checkpoint goes with the work dir
            expected["postprocess"] = replace(expected["postprocess"], delete_checkpoint=weights + ".ckpt")
        argvs.append(build_train_job(job)["spec"]["template"]["spec"]["containers"][0]["args"])
    for argv in argvs:
        assert argv[0] == "stylebatch"
        assert parse_argv(argv[1:]) == expected[argv[1]]
        ns = parser.parse_args(argv[1:])
        assert ns.request.from_namespace(ns) == expected[argv[1]]


def test_cpu_fallback_asks_for_no_gpu_and_tolerates_no_gpu_taint():
    mpijob = build_mpijob(stj(gpusPerWorker=0, workers=2))
    worker = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    args = mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["stylebatch-mpiexec", "-n", "2"] and args[args.index("--device") + 1] == "cpu"
    assert mpijob["spec"]["slotsPerWorker"] == 1
    assert "nvidia.com/gpu" not in str(worker) and "tolerations" not in worker


def test_spot_pool_tolerates_the_aks_spot_taint_and_selects_the_pool():
    worker = build_mpijob(stj(**VARIANTS["spot pool"]))["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot",
            "effect": "NoSchedule"} in worker["tolerations"]
    assert {"key": "team", "operator": "Equal", "value": "media", "effect": "NoSchedule"} in worker["tolerations"]
    assert worker["nodeSelector"] == {"kubernetes.io/os": "linux", "agentpool": "gpuspot"}


def test_preprocess_and_postprocess_run_the_worker_stages():
    pre = build_preprocess_job(stj(**VARIANTS["all options"]))
    post = build_postprocess_job(stj(**VARIANTS["all options"]))
    assert pre["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "stylebatch", "preprocess", "az://videos/orangutan.mp4", "--work", "az://scratch/work/",
        "-o", "az://videos/stylized/orangutan-lavender-gold.mp4",
        "--codec", "hevc", "--bitrate", "8M", "--preset", "slow", "--chunk-frames", "240"]
    assert post["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "stylebatch", "postprocess", "--work", "az://scratch/work/", "-o",
        "az://videos/stylized/orangutan-lavender-gold.mp4", "--delete-work"]
    for job in (pre, post):
        assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "acr"}]


def test_postprocess_deletes_the_work_dir_unless_the_job_keeps_it():
    args = lambda **spec: build_postprocess_job(stj(**spec))["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args()[-1] == "--delete-work" and args(keepWorkDir=False)[-1] == "--delete-work"
    assert "--delete-work" not in args(keepWorkDir=True)


def test_storage_credentials_are_references_never_values_and_the_secret_is_required():
    """Every key of the Secret, whichever form it holds, by one required reference: each key was an
    optional reference, so a missing Secret started the pods without credentials (the job failed on
    "no storage account configured") instead of stalling on 'secret "stylebatch-storage" not found'."""
    for child in children(stj(**TRAINED)):
        for container in _containers(child):
            assert container["envFrom"] == [{"secretRef": {"name": "stylebatch-storage"}}]  # not optional
            assert not [e for e in container["env"] if e["name"].startswith("AZURE")]


def test_workload_identity_labels_every_pod_and_uses_the_service_account():
    spec = {**VARIANTS["workload identity"], **TRAINED}
    for child in children(stj(**spec)):
        for template in _templates(child):
            assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
            assert template["spec"]["serviceAccountName"] == "stylebatch-storage"
            env = {e["name"]: e for c in template["spec"]["containers"] for e in c["env"]}
            assert env["AZURE_STORAGE_ACCOUNT"]["value"] == "mediastore"
            assert "AZURE_STORAGE_CONNECTION_STRING" not in env


def test_children_are_owned_labelled_and_named_by_job_uid_stage_and_attempt():
    job = stj(**TRAINED)
    for stage, kind in (("train", "Job"), ("preprocess", "Job"), ("stylize", "MPIJob"), ("postprocess", "Job")):
        child = build_child(job, stage, 2)
        assert (child["kind"], child["metadata"]["name"]) == (kind, f"orangutan-{stage}-2")
        assert child["metadata"]["ownerReferences"] == [{
            "apiVersion": "stylebatch.io/v1alpha1", "kind": "StyleTransferJob", "name": "orangutan",
            "uid": "0123456789abcdef-uid", "controller": True, "blockOwnerDeletion": True}]
        labels = {"app.kubernetes.io/managed-by": "stylebatch", "stylebatch.io/job": "orangutan",
                  "stylebatch.io/stage": stage, "stylebatch.io/attempt": "2",
                  "stylebatch.io/job-uid": "0123456789abcdef-uid"}  # a job of the same name re-created: another
        assert child["metadata"]["labels"] == labels
        for template in _templates(child):
            assert labels.items() <= template["metadata"]["labels"].items()
        assert build_child(job, stage, 2) == child  # deterministic: a restart builds the very same object


def test_with_a_queue_every_child_carries_the_kueue_label_and_starts_suspended_until_admitted():
    for job in (stj(queueName="gpu-spot", **TRAINED),
                stj(settings=Settings(jobs={**SETTINGS.jobs, "queueName": "gpu-spot"}), **TRAINED)):
        for stage in ("train", "preprocess", "stylize", "postprocess"):
            child = build_child(job, stage, 1)
            assert child["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-spot"
            holder = child["spec"]["runPolicy"] if child["kind"] == "MPIJob" else child["spec"]
            assert holder["suspend"] is True, stage
    # the job's own queue wins over the operator's default
    assert build_mpijob(stj(settings=Settings(jobs={**SETTINGS.jobs, "queueName": "gpu-spot"}),
                            queueName="on-demand"))["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "on-demand"
    # without Kueue: no label, nothing suspended (a suspended child would never start)
    for stage in ("train", "preprocess", "stylize", "postprocess"):
        child = build_child(stj(**TRAINED), stage, 1)
        assert "kueue.x-k8s.io/queue-name" not in child["metadata"]["labels"] and "suspend" not in str(child)


def test_longest_allowed_name_keeps_every_generated_name_a_dns_label():
    name = "j" * 40
    for stage in ("train", "preprocess", "stylize", "postprocess"):
        child = build_child(stj(name=name, **TRAINED), stage, 11)
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
    job["spec"]["workers"] = 9
    job["spec"]["style"] = "red-ember"
    mpijob = build_mpijob(job)
    assert mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
    assert "red-ember" not in str(mpijob)


def test_no_pod_argument_ever_carries_a_sas_token():
    """Even for a job whose spec URLs carry a SAS (refused at acceptance today, but accepted by an
    older operator, whose effective spec takes the URLs from the live spec): the pods get URLs
    without their query and the credentials from the Secret."""
    sas = "sv=2024&sp=rwl&sig=S3CR3T"
    uris = {"input": "https://acct.blob.core.windows.net/videos/in.mp4",
            "output": "https://acct.blob.core.windows.net/videos/out.mp4",
            "style": "https://acct.blob.core.windows.net/styles/mine.pth"}
    job = stj(**uris)
    job["spec"].update({field: f"{uri}?{sas}" for field, uri in uris.items()})
    children = [build_preprocess_job(job), build_mpijob(job), build_postprocess_job(job)]
    for child in children:
        for container in pod_containers(child):
            assert "sig=" not in str(container.get("args")) and "S3CR3T" not in str(container.get("args"))
    args = build_preprocess_job(job)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[1:7] == ["preprocess", "https://acct.blob.core.windows.net/videos/in.mp4", "--work",
                         "https://acct.blob.core.windows.net/videos/.stylebatch-work/media/orangutan-01234567/",
                         "-o", "https://acct.blob.core.windows.net/videos/out.mp4"]
    container = children[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "stylebatch-storage"}}]  # the SAS from the Secret


@pytest.mark.parametrize("input_uri, output, work", [
    ("az://videos/a#b.mp4", "az://stylized/out.mp4", "az://stylized/.stylebatch-work/"),
    ("az://videos/incoming/a#b.mp4", "az://stylized/a#b-candy.mp4", "az://stylized/.stylebatch-work/"),
    ("az://videos/in.mp4", "az://stylized/x#y/clip.mp4", "az://stylized/x#y/.stylebatch-work/"),
    ("az://videos/#.mp4", "az://stylized/#/#.mp4", "az://stylized/#/.stylebatch-work/"),
])
def test_a_hash_in_an_az_blob_name_reaches_the_pods_whole(input_uri, output, work):
    """In az:// a '#' is part of the blob's name (the worker's storage.location reads it so): an upload
    `incoming/a#b.mp4` made pods that read az://videos/incoming/a, another blob than the one its job
    names, and an output with a '#' was refused as having no extension."""
    job = stj(input=input_uri, output=output)
    pre = build_preprocess_job(job)["spec"]["template"]["spec"]["containers"][0]["args"]
    post = build_postprocess_job(job)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert pre[2] == input_uri and pre[pre.index("-o") + 1] == output and post[post.index("-o") + 1] == output
    assert pre[pre.index("--work") + 1].startswith(work) and post[post.index("--work") + 1].startswith(work)
    assert job["status"]["outputURI"] == output


def pod_containers(child: dict[str, Any]) -> list[dict[str, Any]]:
    if child["kind"] == "Job":
        return child["spec"]["template"]["spec"]["containers"]
    return [c for spec in child["spec"]["mpiReplicaSpecs"].values() for c in spec["template"]["spec"]["containers"]]


# --- hardening --------------------------------------------------------------------------------------

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What the "restricted" Pod Security Standard refuses in a pod spec (Kubernetes 1.29+ rules)."""
    found = []
    context = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(flag)
    found += [f"volume {v['name']}" for v in pod.get("volumes") or [] if not set(v) - {"name"} <= RESTRICTED_VOLUMES]
    for c in [*(pod.get("initContainers") or []), *pod["containers"]]:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"{c['name']}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{c['name']}: allowPrivilegeEscalation is not false")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            found.append(f"{c['name']}: capabilities not dropped")
        if set((sc.get("capabilities") or {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{c['name']}: capabilities added")
        if not sc.get("runAsNonRoot", context.get("runAsNonRoot")):
            found.append(f"{c['name']}: may run as root")
        if sc.get("runAsUser", context.get("runAsUser")) == 0:
            found.append(f"{c['name']}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{c['name']}: seccomp {seccomp}")
        if any(port.get("hostPort") for port in c.get("ports") or []):
            found.append(f"{c['name']}: hostPort")
    return found


def test_the_restricted_check_catches_what_baseline_would_let_through():
    pod = build_preprocess_job(stj())["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    loose = copy.deepcopy(pod)
    del loose["securityContext"]["seccompProfile"]
    loose["containers"][0]["securityContext"] = {"allowPrivilegeEscalation": True}
    loose["volumes"] = [{"name": "host", "hostPath": {"path": "/"}}]
    assert restricted_violations(loose) == ["volume host", "preprocess: allowPrivilegeEscalation is not false",
                                            "preprocess: capabilities not dropped", "preprocess: seccomp None"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_is_hardened_to_the_restricted_standard_without_an_api_token(variant):
    job = stj(**VARIANTS[variant])
    for child in children(job):
        for template in _templates(child):
            pod = template["spec"]
            assert restricted_violations(pod) == []
            assert pod["automountServiceAccountToken"] is False
            # the worker image's mpiuser, whose home holds the ssh keys and the sshd config
            assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": RUN_AS_USER,
                                              "runAsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}}
            for container in pod["containers"]:
                assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]},
                                                        "readOnlyRootFilesystem": True}
                # ...so the one place the stages write locally is an emptyDir (the launcher's
                # mpiexec writes nothing)
                volumes = {v["name"]: v for v in pod.get("volumes") or []}
                tmp = [m for m in container.get("volumeMounts") or [] if m["mountPath"] == "/tmp"]
                if container["name"] != "launcher":
                    assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]]


def test_the_docs_name_the_sshd_command_and_port_the_worker_pods_run():
    """docs/operator.md told custom worker images that the workers start /usr/sbin/sshd; they run
    stylebatch-sshd, which an image without stylebatch in /opt/venv lacks."""
    (worker,) = build_mpijob(stj())["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    assert worker["command"] == SSHD_COMMAND
    doc = (REPO / "docs" / "operator.md").read_text()
    section = doc.split("### Job pods", 1)[1].split("\n### ", 1)[0]
    assert f"`{' '.join(SSHD_COMMAND)}`" in " ".join(section.split())
    assert f"port {SSHD_PORT}" in " ".join(section.split())
    assert "starts `/usr/sbin/sshd" not in doc and "started as `/usr/sbin/sshd" not in doc


def test_pods_run_as_the_job_service_account_or_the_federated_one():
    with_secret = build_preprocess_job(stj())["spec"]["template"]
    assert with_secret["spec"]["serviceAccountName"] == "stylebatch-job"  # created by the chart, no token
    assert "azure.workload.identity/use" not in with_secret["metadata"]["labels"]
    no_account = build_preprocess_job(stj(settings=Settings(jobs={"storage": {"secretName": "s"}})))["spec"]["template"]["spec"]
    assert "serviceAccountName" not in no_account and no_account["automountServiceAccountToken"] is False
    for template in _templates(build_mpijob(stj(settings=AKS))):  # the chart's workload identity default
        assert template["spec"]["serviceAccountName"] == "stylebatch-job"
        assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        env = {e["name"]: e for c in template["spec"]["containers"] for e in c["env"]}
        assert env["AZURE_STORAGE_ACCOUNT"] == {"name": "AZURE_STORAGE_ACCOUNT", "value": "stylebatchdata"}


@pytest.mark.parametrize("variant, on_the_pool", [
    ("example", {"kubernetes.io/os": "linux"}),
    ("cpu fallback", {"kubernetes.io/os": "linux"}),
    ("spot pool", {"kubernetes.io/os": "linux", "agentpool": "gpuspot"}),
    ("aks defaults", {"kubernetes.io/os": "linux", "stylebatch.io/gpu": "true"}),
    ("aks defaults, job overrides", {"kubernetes.io/os": "linux"}),  # nodeSelector: {}: no pool, still Linux
    ("trained style, aks defaults, kueue", {"kubernetes.io/os": "linux", "stylebatch.io/gpu": "true"}),
    ("the job names the os", {"kubernetes.io/os": "windows", "pool": "w"}),
    ("the operator names the os", {"kubernetes.io/os": "windows", "stylebatch.io/gpu": "true"}),
])
def test_every_pod_of_a_job_runs_on_linux_nodes_unless_the_jobs_node_selector_names_the_os(variant, on_the_pool):
    """An AKS cluster may have Windows node pools, where the Linux worker image cannot run. Every
    pod selects kubernetes.io/os: linux; the pods placed on the workers' pool (the workers, the
    training Job) get the job's nodeSelector merged over it, a kubernetes.io/os of its own winning."""
    spec = {"the job names the os": {"scheduling": {"nodeSelector": {"kubernetes.io/os": "windows", "pool": "w"}}},
            "the operator names the os": {"settings": Settings(jobs={**AKS.jobs, "scheduling": {"nodeSelector": {
                "kubernetes.io/os": "windows", "stylebatch.io/gpu": "true"}}})}}.get(variant) or VARIANTS[variant]
    job = stj(**spec)
    seen = set()
    for child in children(job):
        for template in _templates(child):
            (container,) = template["spec"]["containers"]
            seen.add(container["name"])
            placed = container["name"] in ("train", "worker")
            assert template["spec"]["nodeSelector"] == (on_the_pool if placed else {"kubernetes.io/os": "linux"}), (
                container["name"])
    assert {"preprocess", "launcher", "worker", "postprocess"} <= seen


def test_the_operators_defaults_reach_the_pods():
    job = stj(settings=AKS)
    mpijob = build_mpijob(job)
    worker = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]
    pod = worker["template"]["spec"]
    assert worker["replicas"] == 4
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "3", "memory": "12Gi"},
                                                 "limits": {"nvidia.com/gpu": 1}}
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "stylebatch.io/gpu": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    for child in (build_preprocess_job(job), mpijob, build_postprocess_job(job)):
        for template in _templates(child):
            assert template["spec"]["imagePullSecrets"] == [{"name": "acr"}]
            assert {c["image"] for c in template["spec"]["containers"]} == {AKS.jobs["image"]}
    # the launcher and the Jobs run on the system pool: no GPU pool selector for them
    launcher = mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    assert launcher["nodeSelector"] == build_preprocess_job(job)["spec"]["template"]["spec"]["nodeSelector"] == {
        "kubernetes.io/os": "linux"}


def test_a_jobs_own_fields_override_the_operators_defaults():
    job = stj(**VARIANTS["aks defaults, job overrides"])
    worker = build_mpijob(job)["spec"]["mpiReplicaSpecs"]["Worker"]
    pod = worker["template"]["spec"]
    assert worker["replicas"] == 1 and pod["containers"][0]["image"] == "mine:1"
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}}
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}  # {} in the job: no pool selector, not the default's
    assert pod["tolerations"] == AKS.jobs["scheduling"]["tolerations"]  # not set in the job: the default's
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "team-storage"}}]
    assert pod["serviceAccountName"] == "stylebatch-job"  # not the federated one's label either:
    assert "azure.workload.identity/use" not in worker["template"]["metadata"]["labels"]


def test_operator_settings_changed_after_the_start_do_not_reach_new_children():
    job = stj(settings=AKS)
    # the operator restarts with other settings (a helm upgrade): the next stage's child keeps the old ones
    other = Settings(jobs={"image": "other:2", "workers": 8, "storage": {"secretName": "other"},
                      "scheduling": {"nodeSelector": {"pool": "b"}}})
    done = {**build_child(job, "preprocess", 1), "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    job["status"].update(phase="Preprocessing", attempts={"preprocess": 1}, children={"preprocess": "orangutan-preprocess-1"})
    action = decide(job, {"orangutan-preprocess-1": done}, now=T0, settings=other)
    assert action.kind == ActionKind.ADVANCE
    mpijob = build_child(job, *action.creates, action.deadline_seconds)
    assert mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 4
    assert "other" not in str(mpijob) and AKS.jobs["image"] in str(mpijob)


def _templates(child: dict[str, Any]) -> list[dict[str, Any]]:
    if child["kind"] == "MPIJob":
        return [r["template"] for r in child["spec"]["mpiReplicaSpecs"].values()]
    return [child["spec"]["template"]]


def _containers(child: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for t in _templates(child) for c in t["spec"]["containers"]]


def test_a_toleration_given_twice_appears_once():
    """The AKS defaults list the GPU taint the operator adds itself; the pod must not repeat it."""
    for variant in VARIANTS.values():
        for replica in build_mpijob(stj(**variant))["spec"]["mpiReplicaSpecs"].values():
            tolerations = replica["template"]["spec"].get("tolerations", [])
            assert len(tolerations) == len({tuple(sorted(t.items())) for t in tolerations})


# --- resources, /dev/shm and scratch -------------------------------------------------------------

@pytest.mark.parametrize("settings", [SETTINGS, Settings(jobs={"storage": {"secretName": "s"}})], ids=["chart defaults", "built-in defaults"])
def test_every_pod_requests_and_caps_cpu_memory_and_local_disk_by_default(settings):
    job = stj(settings=settings, **TRAINED)
    for stage in ("train", "preprocess", "stylize", "postprocess"):
        for container in _containers(build_child(job, stage, 1)):
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory", "ephemeral-storage"} <= resources[kind].keys(), (stage, container["name"], kind)


def test_the_chart_sizes_each_kind_of_pod_and_a_job_sizes_its_workers():
    settings = Settings(jobs={"pods": {"stageResources": {"requests": {"cpu": "2"}, "limits": {"memory": "8Gi"}},
                                       "launcherResources": {"requests": {"cpu": "50m"}}, "scratchSize": "100Gi",
                                       "shmSize": "16Gi"},
                              "storage": {"secretName": "s"}})
    job = stj(settings=settings, resources={"requests": {"cpu": "7", "memory": "30Gi"}})
    assert _containers(build_preprocess_job(job))[0]["resources"] == {"requests": {"cpu": "2"},
                                                                      "limits": {"memory": "8Gi"}}
    launcher, worker = _containers(build_mpijob(job))
    assert launcher["resources"] == {"requests": {"cpu": "50m"}}
    assert worker["resources"]["requests"] == {"cpu": "7", "memory": "30Gi"}
    volumes = {v["name"]: v["emptyDir"] for v in build_mpijob(job)["spec"]["mpiReplicaSpecs"]["Worker"]["template"]
               ["spec"]["volumes"]}
    assert volumes == {"dshm": {"medium": "Memory", "sizeLimit": "16Gi"}, "scratch": {"sizeLimit": "100Gi"}}


@pytest.mark.parametrize("stage", ["train", "preprocess", "stylize", "postprocess"])
def test_shm_is_a_capped_memory_volume_and_scratch_a_capped_emptydir_where_tmpdir_points(stage):
    child = build_child(stj(**TRAINED), stage, 1)
    for template in _templates(child):
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for container in pod["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["TMPDIR"] == "/tmp"  # mpiexec hands the launcher's to the ranks
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
            if container["name"] == "launcher":
                continue  # runs mpiexec only
            assert volumes[mounts["/tmp"]]["emptyDir"] == {"sizeLimit": "50Gi"}
            if container["name"] == "worker":
                assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}


def test_jobs_fail_at_once_on_bad_input_and_ignore_disruptions():
    """podFailurePolicy: the worker's bad-input exit code ends the Job (no second pod would do
    better); a pod lost to an eviction, preemption or a vanished node is replaced without failing it."""
    for build, container in ((build_train_job, "train"), (build_preprocess_job, "preprocess"),
                             (build_postprocess_job, "postprocess")):
        job = build(stj(**TRAINED))
        assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        assert job["spec"]["podFailurePolicy"] == {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": container, "operator": "In", "values": [2]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]}
        assert job["spec"]["template"]["spec"]["containers"][0]["name"] == container
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)


def test_no_pod_of_a_job_is_evicted_by_the_cluster_autoscaler():
    mpijob = build_mpijob(stj())
    templates = [build_preprocess_job(stj())["spec"]["template"], build_postprocess_job(stj())["spec"]["template"],
                 build_train_job(stj(**TRAINED))["spec"]["template"],
                 *(mpijob["spec"]["mpiReplicaSpecs"][role]["template"] for role in ("Launcher", "Worker"))]
    for template in templates:
        assert template["metadata"]["annotations"] == {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}


@pytest.mark.parametrize("stage", ["train", "preprocess", "stylize", "postprocess"])
def test_every_pod_names_its_job_so_the_blobs_it_writes_never_look_like_uploads(stage):
    from stylebatch.contract import JOB_ENV, JOB_UID_ENV, run_by_operator

    job = stj(**TRAINED)
    for template in _templates(build_child(job, stage, 1)):
        for container in template["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env[JOB_ENV] == job["metadata"]["name"], container["name"]
            # ...and its uid, by which the worker also knows the operator runs it: what it tells the user
            # to do is then said in spec terms, not flags (stylize's refusal of parts of other settings)
            assert run_by_operator(env) and env[JOB_UID_ENV] == job["metadata"]["uid"], container["name"]


# --- the training Job (spec.train) ---------------------------------------------------------------

def test_the_training_job_takes_one_gpu_of_the_workers_pool_with_the_workers_cpu_and_memory():
    job = stj(**VARIANTS["trained style, aks defaults, kueue"], gpusPerWorker=4)
    train = build_train_job(job)
    pod = train["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {"requests": {"cpu": "3", "memory": "12Gi"}, "limits": {"nvidia.com/gpu": 1}}
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "stylebatch.io/gpu": "true"}
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in pod["tolerations"]
    args = container["args"]
    assert args[:3] == ["stylebatch", "train-style", "az://styles/starry.jpg"]
    assert args[args.index("--device") + 1] == "cuda" and args[args.index("--steps") + 1] == "4000"
    assert args[args.index("--content") + 1] == "az://videos/orangutan.mp4"  # the job's own video by default
    assert train["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-spot" and train["spec"]["suspend"]
    assert (train["metadata"]["name"], train["spec"]["backoffLimit"]) == ("orangutan-train-1", 0)


def test_a_training_on_cpus_asks_for_no_gpu_and_tolerates_only_what_the_job_asks():
    pod = build_train_job(stj(**VARIANTS["trained style on CPUs"]))["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(pod)
    assert pod["tolerations"] == [{"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal",
                                   "value": "spot", "effect": "NoSchedule"}]  # resumable: spot is fine
    args = pod["containers"][0]["args"]
    assert args[args.index("--device") + 1] == "cpu" and args[args.index("--size") + 1] == "128"


def test_the_weights_go_next_to_the_work_dir_and_every_stylize_rank_reads_them_from_there():
    job = stj(**TRAINED)
    work = work_dir(job)
    assert work == "az://videos/stylized/.stylebatch-work/media/orangutan-01234567/"
    weights = "az://videos/stylized/.stylebatch-work/media/orangutan-01234567.pth"
    assert job["status"]["trainedStyle"] == weights
    train_args = build_train_job(job)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert train_args[train_args.index("-o") + 1] == weights
    launcher = build_mpijob(job)["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    assert launcher[launcher.index("--style") + 1] == weights and "starry.jpg" not in str(launcher)
    # postprocess cleans the work dir; the weights are not in it, so the user keeps them
    post = build_postprocess_job(job)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--delete-work" in post and not weights.startswith(work)
    assert "trainedStyle" not in stj()["status"]


def test_a_trained_jobs_checkpoint_goes_with_its_work_dir_once_the_video_is_published_and_the_weights_stay():
    """The training left <work dir>.pth.ckpt (net and optimizer state, several times the weights) in the
    user's storage for good: postprocess deleted the work dir, not the checkpoint beside it."""
    post = lambda **spec: build_postprocess_job(stj(**spec))["spec"]["template"]["spec"]["containers"][0]["args"]
    weights = stj(**TRAINED)["status"]["trainedStyle"]
    args = post(**TRAINED)
    assert args[args.index("--delete-checkpoint") + 1] == weights + ".ckpt"
    assert "--delete-checkpoint" not in post(**TRAINED, keepWorkDir=True)  # kept with the work dir
    assert "--delete-checkpoint" not in post()  # nothing trained
    train_args = build_train_job(stj(**TRAINED))["spec"]["template"]["spec"]["containers"][0]["args"]
    assert train_args[train_args.index("-o") + 1] == weights  # the training's own checkpoint: weights + .ckpt


ABORTING_RANK = "from mpi4py import MPI; import time; MPI.COMM_WORLD.Abort(3) if MPI.COMM_WORLD.rank else time.sleep(5)"


def _sshd_session_env() -> dict[str, str]:
    """What the worker image's sshd sets in every ssh session (its SetEnv line): a hydra proxy's environment."""
    line = next(line for line in (REPO / "docker" / "worker" / "sshd_config").read_text().splitlines()
                if line.startswith("SetEnv "))
    return dict(pair.split("=", 1) for pair in line.split()[1:])


@pytest.mark.mpi
@pytest.mark.parametrize("where", ["launcher", "worker"])
def test_mpich_proxies_in_the_mpijobs_pods_leave_no_topology_files_in_tmp(where):
    """MPICH's proxy writes /tmp/hydra_hwloc_xmlfile_* and leaves it when a rank aborts. A proxy on the
    launcher runs with the launcher container's environment (the built manifest); one on a worker with
    its ssh session's (the image's sshd). Each is tried with the real mpiexec and a rank that aborts,
    /tmp a fresh tmpfs in a private mount namespace so that other processes' files cannot confuse it."""
    import shlex
    import subprocess
    import sys

    if subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user/mount namespaces here (unshare -r -m)")
    if where == "launcher":
        launcher = build_mpijob(stj())["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in launcher["env"] if "value" in e}
    else:
        env = _sshd_session_env()
    env.pop("PATH", None)  # the image's; here the checkout's venv runs
    mpiexec = Path(sys.executable).parent / "mpiexec"
    run = " ".join(map(shlex.quote, ["env", *(f"{k}={v}" for k, v in env.items()), str(mpiexec), "-n", "2",
                                     sys.executable, "-c", ABORTING_RANK]))
    script = f"mount -t tmpfs none /tmp && cd / && {run} >/dev/null 2>&1; echo rc=$?; ls -A /tmp"
    result = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert "rc=3" in result.stdout, result.stdout + result.stderr
    assert result.stdout.strip().endswith("rc=3"), result.stdout  # nothing left in /tmp
