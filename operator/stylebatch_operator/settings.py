"""The operator's own settings: cluster-wide defaults for every StyleTransferJob, read once at
startup from STYLEBATCH_* environment variables (the chart sets them from its values). Pure: the
caller passes the environment in.

A job's own spec fields always win over these defaults; `stylebatch_operator.spec.resolve` merges
them, and the result is recorded in the job's status when it starts, so a later change of these
settings never reaches a job that is already running.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stylebatch.errors import StylebatchError

from stylebatch_operator.names import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, QUANTITY_PATTERN

# The worker image of this release: what a job runs when neither it nor the operator's settings
# name one. tests/test_operator_settings.py keeps it equal to the chart's default.
DEFAULT_IMAGE = "ghcr.io/stylebatch/stylebatch-worker:0.1.0"
DEFAULT_LEASE_NAME = "stylebatch-operator"
DEFAULT_INTERVAL = 10.0  # seconds between reconciliations of a job; progress is read as often
MAX_INTERVAL = 30.0
PROGRESS_EVERY = 3  # reconciliations per read of the launcher's log, unless STYLEBATCH_PROGRESS_INTERVAL says
MAX_PROGRESS_INTERVAL = 300.0
DEFAULT_STALL_GRACE = 120.0  # seconds a permanent stall (a missing Secret, a refused MPIJob) may last
DEFAULT_PROGRESS_TIMEOUT = 600.0  # seconds stylize may go without a frame before the attempt is retried
MAX_SECONDS = 86400.0
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
# What each pod of a job asks for unless the chart says otherwise: CPU, memory and local disk
# (ephemeral-storage, which the scratch emptyDir counts against), requested and capped. A worker
# fits an AKS NC4as_T4_v3 GPU node (4 vCPUs, 28 GiB); preprocess and postprocess hold the whole
# input, or every part and the output, in their scratch.
DEFAULT_WORKER_RESOURCES = {"requests": {"cpu": "3", "memory": "12Gi", "ephemeral-storage": "20Gi"},
                            "limits": {"cpu": "4", "memory": "24Gi", "ephemeral-storage": "60Gi"}}
DEFAULT_STAGE_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "10Gi"},
                           "limits": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "60Gi"}}
DEFAULT_LAUNCHER_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "100Mi"},
                              "limits": {"cpu": "1", "memory": "512Mi", "ephemeral-storage": "1Gi"}}
DEFAULT_SCRATCH_SIZE = "50Gi"  # sizeLimit of /tmp (TMPDIR), an emptyDir, in preprocess, postprocess and workers
DEFAULT_SHM_SIZE = "4Gi"  # sizeLimit of the workers' /dev/shm, a memory emptyDir (counts as memory)
MAX_WORKERS, MAX_GPUS = 64, 8  # the CRD's bounds on spec.workers and spec.gpusPerWorker

# Environment variable names (the chart's templates/deployment.yaml sets every one of them).
WORKER_IMAGE = "STYLEBATCH_WORKER_IMAGE"
IMAGE_PULL_POLICY = "STYLEBATCH_IMAGE_PULL_POLICY"
IMAGE_PULL_SECRETS = "STYLEBATCH_IMAGE_PULL_SECRETS"
DEFAULT_WORKERS = "STYLEBATCH_DEFAULT_WORKERS"
DEFAULT_GPUS_PER_WORKER = "STYLEBATCH_DEFAULT_GPUS_PER_WORKER"
WORKER_RESOURCES = "STYLEBATCH_WORKER_RESOURCES"
STAGE_RESOURCES = "STYLEBATCH_STAGE_RESOURCES"
LAUNCHER_RESOURCES = "STYLEBATCH_LAUNCHER_RESOURCES"
SCRATCH_SIZE = "STYLEBATCH_SCRATCH_SIZE"
SHM_SIZE = "STYLEBATCH_SHM_SIZE"
DEFAULT_NODE_SELECTOR = "STYLEBATCH_DEFAULT_NODE_SELECTOR"
DEFAULT_TOLERATIONS = "STYLEBATCH_DEFAULT_TOLERATIONS"
JOB_SERVICE_ACCOUNT = "STYLEBATCH_JOB_SERVICE_ACCOUNT"
STORAGE_SECRET = "STYLEBATCH_STORAGE_SECRET"
STORAGE_ACCOUNT = "STYLEBATCH_STORAGE_ACCOUNT"
WORKLOAD_IDENTITY = "STYLEBATCH_WORKLOAD_IDENTITY"
DEFAULT_QUEUE_NAME = "STYLEBATCH_DEFAULT_QUEUE_NAME"
LEASE_NAMESPACE = "STYLEBATCH_LEASE_NAMESPACE"
LEASE_NAME = "STYLEBATCH_LEASE_NAME"
INTERVAL = "STYLEBATCH_OPERATOR_INTERVAL"
PROGRESS_INTERVAL = "STYLEBATCH_PROGRESS_INTERVAL"
STALL_GRACE = "STYLEBATCH_STALL_GRACE_SECONDS"
PROGRESS_TIMEOUT = "STYLEBATCH_PROGRESS_TIMEOUT_SECONDS"
ENV_VARS = (WORKER_IMAGE, IMAGE_PULL_POLICY, IMAGE_PULL_SECRETS, DEFAULT_WORKERS, DEFAULT_GPUS_PER_WORKER,
            WORKER_RESOURCES, DEFAULT_NODE_SELECTOR, DEFAULT_TOLERATIONS, JOB_SERVICE_ACCOUNT, STORAGE_SECRET,
            STORAGE_ACCOUNT, WORKLOAD_IDENTITY, DEFAULT_QUEUE_NAME, STAGE_RESOURCES, LAUNCHER_RESOURCES,
            SCRATCH_SIZE, SHM_SIZE, LEASE_NAMESPACE, LEASE_NAME, INTERVAL, PROGRESS_INTERVAL, STALL_GRACE,
            PROGRESS_TIMEOUT)


# The Lease (stylebatch_operator.leader): timings as Kubernetes' own controllers use them.
LEASE_SECONDS = 15.0  # a holder that has not renewed for this long is presumed gone
RENEW_SECONDS = 5.0  # the holder renews this often
RETRY_SECONDS = 2.0  # a standby looks this often


def default_identity() -> str:
    """The pod's name (its hostname, or POD_NAME when set) plus a random suffix: two processes
    never share an identity."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str = field(default_factory=default_identity)
    lease_seconds: float = LEASE_SECONDS
    renew_seconds: float = RENEW_SECONDS
    retry_seconds: float = RETRY_SECONDS


def _copy(value: Any) -> Any:
    """A deep copy of plain JSON."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class Settings:
    """Defaults for jobs, and how often the operator looks at each one.

    The JSON-valued fields hold plain JSON (dicts and lists); nothing here mutates them, and
    `job_defaults()` hands out copies.
    """

    worker_image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    workers: int = 1
    gpus_per_worker: int = 1
    # {requests: {...}, limits: {...}} of the MPI workers (a job's spec.resources wins), of the
    # preprocess and postprocess Jobs' pods, and of the MPIJob's launcher
    worker_resources: Mapping[str, Any] = field(default_factory=lambda: _copy(DEFAULT_WORKER_RESOURCES))
    stage_resources: Mapping[str, Any] = field(default_factory=lambda: _copy(DEFAULT_STAGE_RESOURCES))
    launcher_resources: Mapping[str, Any] = field(default_factory=lambda: _copy(DEFAULT_LAUNCHER_RESOURCES))
    scratch_size: str = DEFAULT_SCRATCH_SIZE
    shm_size: str = DEFAULT_SHM_SIZE
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    job_service_account: str = ""  # every job pod's service account; "" leaves the namespace's default
    storage_secret: str = ""  # default storage: a Secret in the job's namespace ...
    storage_account: str = ""  # ... or, with workload_identity, this account through job_service_account
    workload_identity: bool = False
    queue_name: str = ""  # Kueue LocalQueue of every job that names none; "": no Kueue
    interval: float = DEFAULT_INTERVAL
    # Seconds between two reads of a stylizing job's launcher log (its progress); None: every
    # PROGRESS_EVERY-th reconciliation (30 s by default). The launcher's log is the largest read.
    progress_interval: float | None = None
    stall_grace_seconds: float = DEFAULT_STALL_GRACE  # then a permanent stall fails the job
    progress_timeout_seconds: float = DEFAULT_PROGRESS_TIMEOUT  # a job's spec.progressTimeoutSeconds wins
    # The Lease that makes one operator act at a time (leader.py); no namespace: none, one operator
    # acts on its own (a developer's, or a single replica that never overlaps another)
    lease_namespace: str = ""
    lease_name: str = DEFAULT_LEASE_NAME

    def job_defaults(self) -> dict[str, Any]:
        """The spec fields a job gets when it leaves them out (scheduling's as a nested dict)."""
        defaults: dict[str, Any] = {
            "image": self.worker_image,
            "imagePullPolicy": self.image_pull_policy,
            "workers": self.workers,
            "gpusPerWorker": self.gpus_per_worker,
        }
        if self.queue_name:
            defaults["queueName"] = self.queue_name
        if self.image_pull_secrets:
            defaults["imagePullSecrets"] = [{"name": name} for name in self.image_pull_secrets]
        if self.worker_resources:
            defaults["resources"] = _copy(self.worker_resources)
        storage = self.default_storage()
        if storage:
            defaults["storage"] = storage
        scheduling: dict[str, Any] = {}
        if self.node_selector:
            scheduling["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            scheduling["tolerations"] = [dict(t) for t in self.tolerations]
        if scheduling:
            defaults["scheduling"] = scheduling
        return defaults

    def pod_defaults(self) -> dict[str, Any]:
        """What every job records in status.effectiveSpec.pods when it starts: the resources of the
        pods that spec.resources does not cover, and the sizes of the scratch and /dev/shm."""
        return {"stageResources": _copy(self.stage_resources), "launcherResources": _copy(self.launcher_resources),
                "scratchSize": self.scratch_size, "shmSize": self.shm_size}

    def progress_read_seconds(self) -> float:
        return self.progress_interval if self.progress_interval is not None else PROGRESS_EVERY * self.interval

    def lease(self) -> LeaseConfig | None:
        return LeaseConfig(self.lease_name, self.lease_namespace) if self.lease_namespace else None

    def default_storage(self) -> dict[str, str] | None:
        if self.workload_identity:
            return {"serviceAccountName": self.job_service_account, "accountName": self.storage_account}
        if self.storage_secret:
            return {"secretName": self.storage_secret}
        return None

    def summary(self) -> str:
        """One log line: names and numbers only, never a credential (there is none here)."""
        storage = ("workload identity (service account "
                   f"{self.job_service_account}, account {self.storage_account})" if self.workload_identity
                   else f"Secret {self.storage_secret}" if self.storage_secret else "none (each job names its own)")
        gpus = f"{self.gpus_per_worker} GPU(s) each" if self.gpus_per_worker else "CPUs only"
        return (f"job defaults: image {self.worker_image}, {self.workers} worker(s), {gpus}, "
                f"storage {storage}")


BUILT_IN = Settings()  # an operator started with no STYLEBATCH_* variables


def from_environment(env: Mapping[str, str]) -> Settings:
    """Settings from STYLEBATCH_* variables; unset or empty ones keep the built-in defaults.

    Raises StylebatchError with a one-line message naming the variable when one is malformed, so
    that a wrong chart value stops the operator at startup instead of failing every job later.
    """
    def text(name: str) -> str:
        return (env.get(name) or "").strip()

    kwargs: dict[str, Any] = {}
    if text(WORKER_IMAGE):
        kwargs["worker_image"] = text(WORKER_IMAGE)
    if text(IMAGE_PULL_POLICY):
        if text(IMAGE_PULL_POLICY) not in PULL_POLICIES:
            raise _bad(IMAGE_PULL_POLICY, f"must be one of {', '.join(PULL_POLICIES)}")
        kwargs["image_pull_policy"] = text(IMAGE_PULL_POLICY)
    if text(DEFAULT_WORKERS):
        kwargs["workers"] = _int(DEFAULT_WORKERS, text(DEFAULT_WORKERS), 1, MAX_WORKERS)
    if text(DEFAULT_GPUS_PER_WORKER):
        kwargs["gpus_per_worker"] = _int(DEFAULT_GPUS_PER_WORKER, text(DEFAULT_GPUS_PER_WORKER), 0, MAX_GPUS)

    secrets = _json(IMAGE_PULL_SECRETS, text(IMAGE_PULL_SECRETS), [])
    if not isinstance(secrets, list):
        raise _bad(IMAGE_PULL_SECRETS, 'must be a JSON list such as [{"name": "acr"}]')
    names = []
    for item in secrets:
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(name, str) or not name:
            raise _bad(IMAGE_PULL_SECRETS, 'must be a JSON list such as [{"name": "acr"}]')
        names.append(name)
    kwargs["image_pull_secrets"] = tuple(names)

    for name, key in ((WORKER_RESOURCES, "worker_resources"), (STAGE_RESOURCES, "stage_resources"),
                      (LAUNCHER_RESOURCES, "launcher_resources")):
        if text(name):
            kwargs[key] = _resources(name, text(name))
    for name, key in ((SCRATCH_SIZE, "scratch_size"), (SHM_SIZE, "shm_size")):
        if text(name):
            if not re.fullmatch(QUANTITY_PATTERN, text(name)):
                raise _bad(name, f"must be a Kubernetes quantity such as 8Gi, got {text(name)!r}")
            kwargs[key] = text(name)

    selector = _json(DEFAULT_NODE_SELECTOR, text(DEFAULT_NODE_SELECTOR), {})
    if not isinstance(selector, dict) or not all(isinstance(v, str) for v in selector.values()):
        raise _bad(DEFAULT_NODE_SELECTOR, 'must be a JSON object of strings such as {"stylebatch.io/gpu": "true"}')
    kwargs["node_selector"] = selector

    tolerations = _json(DEFAULT_TOLERATIONS, text(DEFAULT_TOLERATIONS), [])
    if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
        raise _bad(DEFAULT_TOLERATIONS, "must be a JSON list of tolerations (objects)")
    kwargs["tolerations"] = tuple(tolerations)

    kwargs["job_service_account"] = text(JOB_SERVICE_ACCOUNT)
    kwargs["storage_secret"] = text(STORAGE_SECRET)
    kwargs["storage_account"] = text(STORAGE_ACCOUNT)
    flag = text(WORKLOAD_IDENTITY).lower()
    if flag not in ("", "true", "false"):
        raise _bad(WORKLOAD_IDENTITY, f"must be true or false, got {flag!r}")
    kwargs["workload_identity"] = flag == "true"
    if kwargs["workload_identity"]:
        missing = [name for name, key in ((STORAGE_ACCOUNT, "storage_account"),
                                          (JOB_SERVICE_ACCOUNT, "job_service_account")) if not kwargs[key]]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise _bad(WORKLOAD_IDENTITY, f"is true but {' and '.join(missing)} {verb} empty")
        if kwargs["storage_secret"]:
            raise _bad(WORKLOAD_IDENTITY, f"is true and {STORAGE_SECRET} is set: choose one way to reach storage")

    if text(DEFAULT_QUEUE_NAME):
        if not re.fullmatch(DNS_LABEL_PATTERN, text(DEFAULT_QUEUE_NAME)):
            raise _bad(DEFAULT_QUEUE_NAME, f"must be a LocalQueue name (lower-case letters, digits and -), "
                                           f"got {text(DEFAULT_QUEUE_NAME)!r}")
        kwargs["queue_name"] = text(DEFAULT_QUEUE_NAME)

    for name, key in ((LEASE_NAMESPACE, "lease_namespace"), (LEASE_NAME, "lease_name")):
        if text(name):
            if not re.fullmatch(DNS_LABEL_PATTERN if name == LEASE_NAMESPACE else DNS_SUBDOMAIN_PATTERN, text(name)):
                raise _bad(name, f"must be a Kubernetes name, got {text(name)!r}")
            kwargs[key] = text(name)

    if text(INTERVAL):
        try:
            seconds = float(text(INTERVAL))
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= MAX_INTERVAL:
            raise _bad(INTERVAL, f"must be a number of seconds between 0 and {MAX_INTERVAL:g}, got {text(INTERVAL)!r}")
        kwargs["interval"] = seconds
    if text(PROGRESS_INTERVAL):
        seconds = _seconds(PROGRESS_INTERVAL, text(PROGRESS_INTERVAL))
        if seconds > MAX_PROGRESS_INTERVAL:
            raise _bad(PROGRESS_INTERVAL, f"must be at most {MAX_PROGRESS_INTERVAL:g} seconds, got {text(PROGRESS_INTERVAL)!r}")
        kwargs["progress_interval"] = seconds
    for name, key in ((STALL_GRACE, "stall_grace_seconds"), (PROGRESS_TIMEOUT, "progress_timeout_seconds")):
        if text(name):
            kwargs[key] = _seconds(name, text(name))
    return Settings(**kwargs)


def _resources(name: str, value: str) -> dict[str, Any]:
    resources = _json(name, value, {})
    if not isinstance(resources, dict) or not set(resources) <= {"requests", "limits"} or not all(
            isinstance(v, dict) and all(isinstance(q, (str, int, float)) and re.fullmatch(QUANTITY_PATTERN, str(q))
                                        for q in v.values())
            for v in resources.values()):
        raise _bad(name, 'must be a JSON object such as {"requests": {"cpu": "4", "memory": "16Gi"}}')
    return resources


def _seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= MAX_SECONDS:
        raise _bad(name, f"must be a number of seconds between 0 and {MAX_SECONDS:g}, got {value!r}")
    return seconds


def _json(name: str, value: str, empty: Any) -> Any:
    if not value:
        return empty
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise _bad(name, f"is not valid JSON ({exc.msg} at character {exc.pos})") from None


def _int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise _bad(name, f"must be a whole number from {low} to {high}, got {value!r}")
    return number


def _bad(name: str, problem: str) -> StylebatchError:
    return StylebatchError(f"{name} {problem}")
