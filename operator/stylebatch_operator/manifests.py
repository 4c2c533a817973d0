"""The children of a StyleTransferJob as plain dicts: the training Job (with spec.train), the
preprocess Job, the stylize MPIJob and the postprocess Job. Pure functions of the job (and of the attempt and the time left), built from its
effective spec (status.effectiveSpec once it has started).

Every pod is hardened the same way: non-root (the worker image's mpiuser), no privilege
escalation, no capabilities, the runtime's default seccomp profile, a read-only root filesystem
(the stages write locally only to the scratch emptyDir on /tmp), and no Kubernetes API token.
That is the "restricted" Pod Security Standard; the worker's sshd (port 2222, as mpiuser) and
MPICH's Hydra (ssh, then unprivileged TCP) need nothing more."""

from __future__ import annotations

import copy
from typing import Any

from stylebatch.contract import (
    EXIT_BAD_INPUT, HWLOC_XMLFILE_ENV, JOB_ENV, JOB_UID_ENV, SSHD_PORT, checkpoint_of, no_topology_file,
)
from stylebatch.requests import (
    EncodingOptions, ModelOptions, PostprocessRequest, PreprocessRequest, StylizeRequest, TrainRequest,
)
from stylebatch_operator.names import (
    KUEUE_QUEUE_LABEL, MPI_API_VERSION, POSTPROCESS, PREPROCESS, STYLIZE, TRAIN, child_labels, child_name,
    owner_reference,
)
from stylebatch_operator.settings import BUILT_IN_JOB_DEFAULTS, POD_DEFAULTS, SERVICE_ACCOUNT
from stylebatch_operator.spec import effective_spec
from stylebatch_operator.uris import strip_secrets
from stylebatch_operator.uris import work_dir as derived_work_dir

# The worker image's non-root user, and the sshd set up for it as the MPI operator expects for
# non-root MPICH images: its own config, listening on 2222.
RUN_AS_USER = 1000
POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
                        "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY_CONTEXT = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                              "readOnlyRootFilesystem": True}
SSH_AUTH_MOUNT_PATH = "/home/mpiuser/.ssh"
# stylebatch-sshd: sshd, but a worker stopped while its ranks run exits non-zero (pod Failed, not Succeeded).
SSHD_COMMAND = ["/opt/venv/bin/stylebatch-sshd", "-De", "-f", "/home/mpiuser/.sshd_config"]
HOSTFILE = "/etc/mpi/hostfile"  # written by the MPI operator
LAUNCHER_COMMAND = "stylebatch-mpiexec"

# Taints of AKS GPU node pools: the one AKS docs recommend (sku=gpu) and the NVIDIA device plugin's.
GPU_TOLERATIONS = [
    {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
]
SPOT_TOLERATION = {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot",
                   "effect": "NoSchedule"}
WORKLOAD_IDENTITY_LABEL = "azure.workload.identity/use"
# Every pod runs on Linux nodes: the worker image is Linux-only, and an AKS cluster may also have
# Windows node pools. Merged under the job's own nodeSelector, which wins for this key too.
LINUX_NODE_SELECTOR = {"kubernetes.io/os": "linux"}
# Local scratch of preprocess, postprocess and the workers (the input, parts, the output before
# upload): an emptyDir on /tmp, which TMPDIR points at, capped by the scratch size.
SCRATCH_PATH = "/tmp"
# The cluster autoscaler must not evict a running stage to shrink a pool: the work would start over.
POD_ANNOTATIONS = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}


def work_dir(stj: dict[str, Any], spec: dict[str, Any] | None = None) -> str:
    """spec.workDir, or one next to the output; `spec`: the effective spec (default: the job's)."""
    spec, meta = spec or effective_spec(stj), stj["metadata"]
    return strip_secrets(spec.get("workDir")
                         or derived_work_dir(spec["output"], meta["namespace"], meta["name"], meta["uid"]))


def trained_style(stj: dict[str, Any], spec: dict[str, Any] | None = None) -> str | None:
    """With spec.train: the weights the training Job writes, next to the work dir (<work dir>.pth; its
    checkpoint <work dir>.pth.ckpt beside it, contract.checkpoint_of). Outside the work dir, so
    postprocess's clean-up of the work dir keeps them for the user; the checkpoint it deletes with the
    work dir (postprocess_request). None without spec.train."""
    spec = spec or effective_spec(stj)
    return work_dir(stj, spec).rstrip("/") + ".pth" if spec.get("train") is not None else None


def train_request(stj: dict[str, Any]) -> TrainRequest:
    """The painting is spec.style; the content spec.train.content, else the job's own input. One
    GPU when the job's workers have GPUs, else the CPU."""
    spec = effective_spec(stj)
    train = spec["train"]
    return TrainRequest(painting=strip_secrets(spec["style"]), output=trained_style(stj, spec),
                        content=tuple(strip_secrets(c) for c in train.get("content") or [spec["input"]]),
                        steps=train["steps"], size=train["size"], batch_size=train["batchSize"],
                        device="cuda" if spec["gpusPerWorker"] > 0 else "cpu")


def preprocess_request(stj: dict[str, Any]) -> PreprocessRequest:
    spec = effective_spec(stj)
    # No SAS token in any pod argument (anyone who can list pods reads them): the pods take their
    # credentials from the storage Secret's environment variables.
    return PreprocessRequest(input=strip_secrets(spec["input"]), work=work_dir(stj), output=strip_secrets(spec["output"]),
                             encoding=encoding_options(spec))


def stylize_request(stj: dict[str, Any]) -> StylizeRequest:
    spec = effective_spec(stj)
    processing = spec.get("processing") or {}
    return StylizeRequest(work=work_dir(stj), model=ModelOptions(
        style=trained_style(stj, spec) or strip_secrets(spec["style"]), strength=spec["strength"], keep_colors=bool(spec.get("keepColors")),
        max_side=processing.get("maxSide"), device="cuda" if spec["gpusPerWorker"] > 0 else "cpu",
        batch_size=processing.get("batchSize"), precision=processing.get("precision"),
        temporal=processing.get("temporal"),
        temporal_strength=processing.get("temporalStrength")))


def postprocess_request(stj: dict[str, Any]) -> PostprocessRequest:
    # --delete-work: only stylebatch's own files, after the video is published. -o: the output the
    # manifest records too, given so that a pod retried after it published (a node lost while it
    # deleted the work dir) finds its own video there and succeeds, with no manifest left to read.
    # --delete-checkpoint: with the work dir, the training's checkpoint beside the trained style (the
    # weights stay, for the user); kept with it by keepWorkDir.
    spec = effective_spec(stj)
    trained = trained_style(stj, spec)
    delete = not spec.get("keepWorkDir")
    return PostprocessRequest(work=work_dir(stj), output=strip_secrets(spec["output"]), delete_work=delete,
                              delete_checkpoint=checkpoint_of(trained) if trained and delete else None)


def encoding_options(spec: dict[str, Any]) -> EncodingOptions:
    """spec.encoder and spec.processing.chunkFrames as the worker's encoding flags."""
    encoder = spec.get("encoder") or {}
    return EncodingOptions(codec=encoder.get("codec"), crf=encoder.get("crf"), bitrate=encoder.get("bitrate"),
                           preset=encoder.get("preset"),
                           chunk_frames=(spec.get("processing") or {}).get("chunkFrames"))


def build_train_job(stj: dict[str, Any], attempt: int = 1, deadline_seconds: int | None = None) -> dict[str, Any]:
    """One pod with one GPU (of the job's GPU pool, placed as its workers) and the workers' CPU and
    memory; the CPU when the job's workers have no GPUs."""
    return _job(stj, TRAIN, attempt, train_request(stj).to_argv(), deadline_seconds,
                gpus=min(1, effective_spec(stj)["gpusPerWorker"]))


def build_preprocess_job(stj: dict[str, Any], attempt: int = 1, deadline_seconds: int | None = None) -> dict[str, Any]:
    return _job(stj, PREPROCESS, attempt, preprocess_request(stj).to_argv(), deadline_seconds)


def build_postprocess_job(stj: dict[str, Any], attempt: int = 1, deadline_seconds: int | None = None) -> dict[str, Any]:
    return _job(stj, POSTPROCESS, attempt, postprocess_request(stj).to_argv(), deadline_seconds)


def build_mpijob(stj: dict[str, Any], attempt: int = 1, deadline_seconds: int | None = None) -> dict[str, Any]:
    spec = effective_spec(stj)
    name = child_name(stj["metadata"]["name"], STYLIZE, attempt)
    labels = child_labels(stj["metadata"]["name"], STYLIZE, attempt, stj["metadata"]["uid"])
    gpus = spec["gpusPerWorker"]
    slots = max(gpus, 1)  # one rank per GPU; one rank per worker on CPUs
    return {
        "apiVersion": MPI_API_VERSION,
        "kind": "MPIJob",
        "metadata": _metadata(stj, spec, name, labels),
        "spec": {
            "slotsPerWorker": slots,
            "mpiImplementation": "MPICH",
            "sshAuthMountPath": SSH_AUTH_MOUNT_PATH,
            "launcherCreationPolicy": "WaitForWorkersReady",
            "runPolicy": {
                # Running: workers go away when done, the launcher pod stays for its log (progress).
                "cleanPodPolicy": "Running",
                # The operator retries a failed MPIJob itself, against the job's retry budget.
                "backoffLimit": 0,
                "activeDeadlineSeconds": _deadline(spec, deadline_seconds),
                # Kueue admits the launcher and all the workers at once, then unsuspends it; the MPI
                # operator resets its start time (and so its deadline) when it resumes.
                **({"suspend": True} if spec.get("queueName") else {}),
            },
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "Never",
                             "template": _launcher_template(stj, spec, labels, spec["workers"] * slots)},
                "Worker": {"replicas": spec["workers"], "restartPolicy": "Never",
                           "template": _worker_template(stj, spec, labels)},
            },
        },
    }


BUILDERS = {TRAIN: build_train_job, PREPROCESS: build_preprocess_job, STYLIZE: build_mpijob,
            POSTPROCESS: build_postprocess_job}


def build_child(stj: dict[str, Any], stage: str, attempt: int, deadline_seconds: int | None = None) -> dict[str, Any]:
    return BUILDERS[stage](stj, attempt, deadline_seconds)


def stylize_args(stj: dict[str, Any], ranks: int) -> list[str]:
    """The launcher's command: every rank runs the same stylize request. `stylebatch-mpiexec` is
    mpiexec started once every worker in the hostfile takes ssh connections (stylebatch.launcher: with
    Kueue the MPI Operator can start the launcher before its workers)."""
    return [LAUNCHER_COMMAND, "-n", str(ranks), "-f", HOSTFILE, "stylebatch", *stylize_request(stj).to_argv()]


def _job(stj: dict[str, Any], stage: str, attempt: int, args: list[str], deadline_seconds: int | None,
         gpus: int | None = None) -> dict[str, Any]:
    """A stage's batch Job. gpus: None for a light stage (the operator's stage resources, any node),
    else the workers' resources with that many GPUs, placed on the workers' pool."""
    spec = effective_spec(stj)
    name = child_name(stj["metadata"]["name"], stage, attempt)
    labels = child_labels(stj["metadata"]["name"], stage, attempt, stj["metadata"]["uid"])
    container = _container(stj, spec, stage, ["stylebatch", *args])
    if gpus is None:
        container["resources"] = copy.deepcopy(_pod_defaults(spec)["stageResources"])
    elif resources := _gpu_resources(spec, gpus):
        container["resources"] = resources
    pod_spec = _pod_spec(spec, [container], restart_policy="Never")
    _add_scratch(spec, pod_spec)
    if gpus is not None:
        _place(spec, pod_spec, gpus)
    # The worker's bad-input exit code fails the Job at once (another pod would say the same); a pod
    # lost to a disruption (eviction, preemption, its node gone) is replaced without counting.
    failure_policy = {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": stage, "operator": "In", "values": [EXIT_BAD_INPUT]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(stj, spec, name, labels),
        "spec": {
            "backoffLimit": 0,  # retried by the operator, against the job's retry budget
            "podFailurePolicy": failure_policy,
            "activeDeadlineSeconds": _deadline(spec, deadline_seconds),
            # With Kueue: created suspended, started once admitted (its deadline counts from then).
            **({"suspend": True} if spec.get("queueName") else {}),
            "template": {"metadata": _pod_metadata(spec, labels), "spec": pod_spec},
        },
    }


def _launcher_template(stj: dict[str, Any], spec: dict[str, Any], labels: dict[str, str], ranks: int) -> dict[str, Any]:
    container = _container(stj, spec, "launcher", stylize_args(stj, ranks))
    container["resources"] = copy.deepcopy(_pod_defaults(spec)["launcherResources"])
    # as `stylebatch run` does: MPICH's proxies write no topology file (the workers' sshd sets the same)
    container["env"].append({"name": HWLOC_XMLFILE_ENV, "value": no_topology_file(SCRATCH_PATH)})
    return {"metadata": _pod_metadata(spec, labels), "spec": _pod_spec(spec, [container])}


def _worker_template(stj: dict[str, Any], spec: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    container = _container(stj, spec, "worker", None)
    container["command"] = list(SSHD_COMMAND)
    container["readinessProbe"] = {"tcpSocket": {"port": SSHD_PORT}, "initialDelaySeconds": 2, "periodSeconds": 5}
    gpus = spec["gpusPerWorker"]
    if resources := _gpu_resources(spec, gpus):
        container["resources"] = resources
    # torch shares tensors between processes through /dev/shm, which is 64 MiB by default; in
    # memory, so it counts against the memory limit, and capped.
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    pod_spec = _pod_spec(spec, [container])
    pod_spec["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _pod_defaults(spec)["shmSize"]}}]
    _add_scratch(spec, pod_spec)
    _place(spec, pod_spec, gpus)
    return {"metadata": _pod_metadata(spec, labels), "spec": pod_spec}


def _gpu_resources(spec: dict[str, Any], gpus: int) -> dict[str, Any]:
    """spec.resources (the workers' CPU and memory) with `gpus` NVIDIA GPUs."""
    resources = {kind: dict(quantities) for kind, quantities in (spec.get("resources") or {}).items() if quantities}
    if gpus > 0:
        resources["limits"] = {**resources.get("limits", {}), "nvidia.com/gpu": gpus}
    else:
        resources.get("limits", {}).pop("nvidia.com/gpu", None)
    return resources


def _place(spec: dict[str, Any], pod_spec: dict[str, Any], gpus: int) -> None:
    """On the workers' pool: the GPU pools' taints tolerated when it uses GPUs, spec.scheduling
    (its nodeSelector merged over the Linux one of _pod_spec)."""
    scheduling = spec.get("scheduling") or {}
    tolerations = [*(GPU_TOLERATIONS if gpus > 0 else []), *(scheduling.get("tolerations") or [])]
    if scheduling.get("spot"):
        tolerations.append(SPOT_TOLERATION)
    if tolerations:
        pod_spec["tolerations"] = _unique(tolerations)
    if scheduling.get("nodeSelector"):  # over LINUX_NODE_SELECTOR: a kubernetes.io/os of the job's wins
        pod_spec["nodeSelector"] = {**pod_spec["nodeSelector"], **scheduling["nodeSelector"]}


def _container(stj: dict[str, Any], spec: dict[str, Any], name: str, args: list[str] | None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": spec["image"],
        "imagePullPolicy": spec["imagePullPolicy"],
        # TMPDIR: the scratch emptyDir (the launcher's mpiexec hands its environment to the ranks,
        # which run over ssh on the workers). JOB_ENV: the blobs the job writes carry its name, so
        # that no VideoWatch takes them for uploads.
        "env": _storage_env(spec) + [{"name": "PYTHONUNBUFFERED", "value": "1"},
                                     {"name": "TMPDIR", "value": SCRATCH_PATH},
                                     {"name": JOB_ENV, "value": stj["metadata"]["name"]},
                                     {"name": JOB_UID_ENV, "value": stj["metadata"]["uid"]}],
        # A failed stage's last log lines (`stylebatch: error: ...`) become the failure's message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
    }
    if env_from := _storage_env_from(spec):
        container["envFrom"] = env_from  # (the variables above win over a key of the same name)
    if args is not None:
        container["args"] = args
    return container


def _pod_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """The operator's pod defaults the job started with (built-in ones for a job accepted before
    they were recorded)."""
    return {**BUILT_IN_JOB_DEFAULTS[POD_DEFAULTS], **(spec.get(POD_DEFAULTS) or {})}


def _add_scratch(spec: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    """/tmp as an emptyDir capped at the scratch size, in every container."""
    pod_spec.setdefault("volumes", []).append(
        {"name": "scratch", "emptyDir": {"sizeLimit": _pod_defaults(spec)["scratchSize"]}})
    for container in pod_spec["containers"]:
        container.setdefault("volumeMounts", []).append({"name": "scratch", "mountPath": SCRATCH_PATH})


def _storage_env(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The account of a job with workload identity (a name, no credential)."""
    storage = spec["storage"]
    if storage.get("serviceAccountName"):
        return [{"name": "AZURE_STORAGE_ACCOUNT", "value": storage["accountName"]}]
    return []


def _storage_env_from(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Credentials by reference only (the values never pass through the operator): every key of the
    storage Secret as a variable of its name, whichever it holds (a connection string, or an account
    name and a SAS token). The Secret is required: a pod whose Secret is missing waits with
    CreateContainerConfigError ('secret "..." not found'), which the job shows as a stall. (Each key
    was an optional reference: a missing Secret started the pods without credentials, and the job
    failed, or retried, on "no storage account configured".)"""
    secret = spec["storage"].get("secretName")
    return [{"secretRef": {"name": secret}}] if secret and not spec["storage"].get("serviceAccountName") else []


def _pod_spec(spec: dict[str, Any], containers: list[dict[str, Any]], restart_policy: str | None = None) -> dict[str, Any]:
    """Every child's pod: hardened, without an API token, on Linux nodes (LINUX_NODE_SELECTOR; _place
    adds the workers' pool)."""
    pod: dict[str, Any] = {
        "containers": containers,
        "nodeSelector": dict(LINUX_NODE_SELECTOR),
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        # No pod of a job talks to the Kubernetes API (the MPI operator's launcher reaches the workers
        # over ssh). Workload identity still works: its webhook mounts its own projected token.
        "automountServiceAccountToken": False,
    }
    if restart_policy:
        pod["restartPolicy"] = restart_policy
    if spec.get(SERVICE_ACCOUNT):
        pod["serviceAccountName"] = spec[SERVICE_ACCOUNT]
    if spec.get("imagePullSecrets"):
        pod["imagePullSecrets"] = [{"name": s["name"]} for s in spec["imagePullSecrets"]]
    return pod


def _pod_metadata(spec: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    out = dict(labels)
    if spec["storage"].get("serviceAccountName"):
        out[WORKLOAD_IDENTITY_LABEL] = "true"  # the workload identity webhook injects the token
    return {"labels": out, "annotations": dict(POD_ANNOTATIONS)}


def _metadata(stj: dict[str, Any], spec: dict[str, Any], name: str, labels: dict[str, str]) -> dict[str, Any]:
    labels = {**labels, KUEUE_QUEUE_LABEL: spec["queueName"]} if spec.get("queueName") else dict(labels)
    return {"name": name, "namespace": stj["metadata"]["namespace"], "labels": labels,
            "ownerReferences": [owner_reference(stj)]}


def _deadline(spec: dict[str, Any], deadline_seconds: int | None) -> int:
    """A child never outlives the job's own deadline."""
    total = int(spec["activeDeadlineSeconds"])
    return max(1, min(total, int(deadline_seconds))) if deadline_seconds is not None else total


def _unique(tolerations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The built-in GPU/spot tolerations and the ones a user lists often overlap: keep each once."""
    seen: list[dict[str, Any]] = []
    for t in tolerations:
        if dict(t) not in seen:
            seen.append(dict(t))
    return seen
