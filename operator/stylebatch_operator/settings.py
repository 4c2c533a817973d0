"""The operator's settings, read once at startup; pure: the caller passes the environment in.

- The job defaults: ONE document with the StyleTransferJob spec's shape (STYLEBATCH_JOB_DEFAULTS,
  YAML or JSON; the chart renders it from its `jobs:` and `storage:` values), checked against the
  CRD's own schema. Each field is what a job gets when its spec leaves that field out, plus two
  no spec field sets: serviceAccountName (of every job pod) and pods (the preprocess, postprocess
  and launcher pods' resources, the scratch and /dev/shm sizes). Fields it leaves out keep the
  built-in defaults (BUILT_IN_JOB_DEFAULTS).
- The operator's own timings and Lease: STYLEBATCH_OPERATOR_INTERVAL, STYLEBATCH_PROGRESS_INTERVAL,
  STYLEBATCH_STALL_GRACE_SECONDS, STYLEBATCH_LEASE_NAMESPACE, STYLEBATCH_LEASE_NAME.

A job's own spec fields always win over the defaults; `stylebatch_operator.spec.resolve` merges
them, and the result is recorded in the job's status when it starts, so a later change of these
settings never reaches a job that is already running.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from stylebatch.errors import StylebatchError
from stylebatch.logs import counted

from stylebatch_operator.crd import EFFECTIVE_ONLY_SCHEMA, SPEC_SCHEMA, schema_problems, storage_problem
from stylebatch_operator.names import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN

# The worker image of this release: what a job runs when neither it nor the job defaults name one.
# tests/test_operator_settings.py keeps it equal to the chart's default.
DEFAULT_IMAGE = "ghcr.io/stylebatch/stylebatch-worker:0.1.0"
DEFAULT_LEASE_NAME = "stylebatch-operator"
DEFAULT_INTERVAL = 10.0  # seconds between reconciliations of a job; progress is read as often
MAX_INTERVAL = 30.0
PROGRESS_EVERY = 3  # reconciliations per read of the launcher's log, unless STYLEBATCH_PROGRESS_INTERVAL says
MAX_PROGRESS_INTERVAL = 300.0
DEFAULT_STALL_GRACE = 120.0  # seconds a permanent stall (a missing Secret, a refused MPIJob) may last
DEFAULT_PROGRESS_TIMEOUT = 600  # seconds stylize may go without a frame before the attempt is retried
MAX_SECONDS = 86400.0

# Spec fields the job defaults may set (a job's own field wins as a whole), and of scheduling, the
# sub-fields (a job's scheduling.spot is its own).
DEFAULTED_FIELDS = ("image", "imagePullPolicy", "imagePullSecrets", "workers", "gpusPerWorker", "resources",
                    "storage", "queueName", "progressTimeoutSeconds")
DEFAULTED_SCHEDULING_FIELDS = ("nodeSelector", "tolerations")
SERVICE_ACCOUNT, POD_DEFAULTS = tuple(EFFECTIVE_ONLY_SCHEMA)  # the fields no spec field sets


def _defaults_schema() -> dict[str, Any]:
    """The job defaults' schema: the CRD's own, for the fields they may set."""
    fields = SPEC_SCHEMA["properties"]
    scheduling = fields["scheduling"]
    return {"type": "object", "properties": {
        **{name: fields[name] for name in DEFAULTED_FIELDS},
        "scheduling": {**scheduling, "properties": {k: scheduling["properties"][k] for k in DEFAULTED_SCHEDULING_FIELDS}},
        **EFFECTIVE_ONLY_SCHEMA,
    }}


DEFAULTS_SCHEMA = _defaults_schema()

# What every job gets with no job defaults at all (a developer's `stylebatch operator`). A worker
# fits an AKS NC4as_T4_v3 GPU node (4 vCPUs, 28 GiB); preprocess and postprocess hold the whole
# input, or every part and the output, in their scratch (/tmp, an emptyDir counted against
# ephemeral-storage); /dev/shm is a memory emptyDir (counts as memory).
BUILT_IN_JOB_DEFAULTS: dict[str, Any] = {
    "image": DEFAULT_IMAGE,
    "imagePullPolicy": "IfNotPresent",
    "workers": 1,
    "gpusPerWorker": 1,
    "resources": {"requests": {"cpu": "3", "memory": "12Gi", "ephemeral-storage": "20Gi"},
                  "limits": {"cpu": "4", "memory": "24Gi", "ephemeral-storage": "60Gi"}},
    "progressTimeoutSeconds": DEFAULT_PROGRESS_TIMEOUT,
    POD_DEFAULTS: {
        "stageResources": {"requests": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "10Gi"},
                           "limits": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "60Gi"}},
        "launcherResources": {"requests": {"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "100Mi"},
                              "limits": {"cpu": "1", "memory": "512Mi", "ephemeral-storage": "1Gi"}},
        "scratchSize": "50Gi",
        "shmSize": "4Gi",
    },
}

# Environment variable names (the chart's templates/deployment.yaml sets every one of them).
JOB_DEFAULTS = "STYLEBATCH_JOB_DEFAULTS"
INTERVAL = "STYLEBATCH_OPERATOR_INTERVAL"
PROGRESS_INTERVAL = "STYLEBATCH_PROGRESS_INTERVAL"
STALL_GRACE = "STYLEBATCH_STALL_GRACE_SECONDS"
LEASE_NAMESPACE = "STYLEBATCH_LEASE_NAMESPACE"
LEASE_NAME = "STYLEBATCH_LEASE_NAME"
# The operator's own pod's namespace and service account (the downward API): a job there may not run
# its pods as that account (spec.operator_account_problem)
OPERATOR_NAMESPACE = "STYLEBATCH_OPERATOR_NAMESPACE"
OPERATOR_SERVICE_ACCOUNT = "STYLEBATCH_OPERATOR_SERVICE_ACCOUNT"
ENV_VARS = (JOB_DEFAULTS, INTERVAL, PROGRESS_INTERVAL, STALL_GRACE, LEASE_NAMESPACE, LEASE_NAME, OPERATOR_NAMESPACE,
            OPERATOR_SERVICE_ACCOUNT)


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

    @property
    def renew_deadline(self) -> float:
        """How long after its last renewal the holder stops acting when it cannot renew: short of
        lease_seconds (2/3 of it, client-go's 10 s of 15), so that it has stopped before a standby,
        which waits lease_seconds from the last change it saw, takes over."""
        return self.lease_seconds * 2 / 3


def job_defaults_problem(document: Any) -> str | None:
    """The first thing wrong with a job-defaults document, as "field: what", or None."""
    if not isinstance(document, dict):
        return f"must be an object with the StyleTransferJob spec's fields, got {document!r}"
    problems = schema_problems(document, DEFAULTS_SCHEMA)
    if not problems and document.get("storage") is not None:
        problem = storage_problem(document["storage"])
        problems = [f"storage: {problem}"] if problem else []
    return problems[0] if problems else None


@dataclass(frozen=True)
class Settings:
    """Defaults for jobs, and how often the operator looks at each one.

    jobs: the job-defaults document (fields it leaves out: BUILT_IN_JOB_DEFAULTS); refused with a
    StylebatchError naming the field when the CRD's schema refuses it. Nothing mutates it;
    `job_defaults()` hands out a merged copy.
    """

    jobs: Mapping[str, Any] = field(default_factory=dict)
    interval: float = DEFAULT_INTERVAL
    # Seconds between two reads of a stylizing job's launcher log (its progress); None: every
    # PROGRESS_EVERY-th reconciliation (30 s by default). The launcher's log is the largest read.
    progress_interval: float | None = None
    stall_grace_seconds: float = DEFAULT_STALL_GRACE  # then a permanent stall fails the job
    # The Lease that makes one operator act at a time (leader.py); no namespace: none, one operator
    # acts on its own (a developer's, or a single replica that never overlaps another)
    lease_namespace: str = ""
    lease_name: str = DEFAULT_LEASE_NAME
    # (namespace, name) of the service account the operator runs as; None: unknown (run outside a pod)
    operator_account: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        problem = job_defaults_problem(dict(self.jobs))
        if problem:
            raise StylebatchError(f"{JOB_DEFAULTS}: {problem}")

    def job_defaults(self) -> dict[str, Any]:
        """The whole job-defaults document: the given one over the built-in one (pods key by key)."""
        merged = {**copy.deepcopy(BUILT_IN_JOB_DEFAULTS), **copy.deepcopy(dict(self.jobs))}
        merged[POD_DEFAULTS] = {**BUILT_IN_JOB_DEFAULTS[POD_DEFAULTS], **merged[POD_DEFAULTS]}
        return merged

    def progress_read_seconds(self) -> float:
        return self.progress_interval if self.progress_interval is not None else PROGRESS_EVERY * self.interval

    def lease(self) -> LeaseConfig | None:
        return LeaseConfig(self.lease_name, self.lease_namespace) if self.lease_namespace else None

    def summary(self) -> str:
        """One log line: names and numbers only, never a credential (there is none here)."""
        d = self.job_defaults()
        storage = d.get("storage") or {}
        way = (f"workload identity (service account {storage['serviceAccountName']}, account "
               f"{storage.get('accountName')})" if storage.get("serviceAccountName")
               else f"Secret {storage['secretName']}" if storage.get("secretName") else "none (each job names its own)")
        gpus = f"{counted(d['gpusPerWorker'], 'GPU')} each" if d["gpusPerWorker"] else "CPUs only"
        return f"job defaults: image {d['image']}, {counted(d['workers'], 'worker')}, {gpus}, storage {way}"


BUILT_IN = Settings()  # an operator started with no STYLEBATCH_* variables


def from_environment(env: Mapping[str, str]) -> Settings:
    """Settings from STYLEBATCH_* variables; unset or empty ones keep the built-in defaults.

    Raises StylebatchError with a one-line message naming the variable (and, in the job defaults,
    the field) when one is malformed, so that a wrong chart value stops the operator at startup
    instead of failing every job later.
    """
    def text(name: str) -> str:
        return (env.get(name) or "").strip()

    kwargs: dict[str, Any] = {}
    if text(JOB_DEFAULTS):
        try:
            kwargs["jobs"] = yaml.safe_load(text(JOB_DEFAULTS))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise _bad(JOB_DEFAULTS, f"is not valid YAML or JSON ({getattr(exc, 'problem', None) or exc}{where})") from None
        problem = job_defaults_problem(kwargs["jobs"])
        if problem:
            raise StylebatchError(f"{JOB_DEFAULTS}: {problem}")
    for name, key in ((LEASE_NAMESPACE, "lease_namespace"), (LEASE_NAME, "lease_name")):
        if text(name):
            if not re.fullmatch(DNS_LABEL_PATTERN if name == LEASE_NAMESPACE else DNS_SUBDOMAIN_PATTERN, text(name)):
                raise _bad(name, f"must be a Kubernetes name, got {text(name)!r}")
            kwargs[key] = text(name)
    for name, pattern in ((OPERATOR_NAMESPACE, DNS_LABEL_PATTERN), (OPERATOR_SERVICE_ACCOUNT, DNS_SUBDOMAIN_PATTERN)):
        if text(name) and not re.fullmatch(pattern, text(name)):
            raise _bad(name, f"must be a Kubernetes name, got {text(name)!r}")
    if text(OPERATOR_NAMESPACE) and text(OPERATOR_SERVICE_ACCOUNT):
        kwargs["operator_account"] = (text(OPERATOR_NAMESPACE), text(OPERATOR_SERVICE_ACCOUNT))
    if text(INTERVAL):
        seconds = _seconds(INTERVAL, text(INTERVAL), MAX_INTERVAL)
        kwargs["interval"] = seconds
    if text(PROGRESS_INTERVAL):
        kwargs["progress_interval"] = _seconds(PROGRESS_INTERVAL, text(PROGRESS_INTERVAL), MAX_PROGRESS_INTERVAL)
    if text(STALL_GRACE):
        kwargs["stall_grace_seconds"] = _seconds(STALL_GRACE, text(STALL_GRACE), MAX_SECONDS)
    return Settings(**kwargs)


def _seconds(name: str, value: str, most: float) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= most:
        raise _bad(name, f"must be a number of seconds between 0 and {most:g}, got {value!r}")
    return seconds


def _bad(name: str, problem: str) -> StylebatchError:
    return StylebatchError(f"{name} {problem}")
