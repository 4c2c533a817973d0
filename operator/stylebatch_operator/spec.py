"""The spec a job runs with (its effective spec): the job's own fields over the operator's
defaults, then the CRD's defaults, checked for what the CRD's schema cannot check.

It is worked out once, when the job is accepted, and recorded in status.effectiveSpec: a later
change of the job's spec or of the operator's settings never reaches a job that has started.
"""

from __future__ import annotations

import copy
import posixpath
import re
from typing import Any

from stylebatch.contract import OUTPUT_EXTENSIONS, file_part, is_style_file, precision_problem, split_style_term
from stylebatch_operator.crd import PAINTING_PATTERN, SPEC_SCHEMA, TRAIN_STYLE_MESSAGE, apply_defaults, storage_problem
from stylebatch_operator.names import MAX_NAME_LENGTH, NAME_PATTERN, NAME_RULE_MESSAGE
from stylebatch_operator.settings import (
    BUILT_IN, DEFAULTED_FIELDS, DEFAULTED_SCHEDULING_FIELDS, POD_DEFAULTS, SERVICE_ACCOUNT, Settings,
)
from stylebatch_operator.uris import URI_FIELDS, sas_problem, strip_secrets

# What a pod can reach: blob URIs (http:// for an emulator such as Azurite), never a local path.
BLOB_SCHEMES = ("az://", "https://", "http://")


def shown_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as the status records it: URIs without their SAS tokens."""
    return {k: strip_secrets(v) if k in URI_FIELDS and isinstance(v, str) else v for k, v in spec.items()}


def resolve(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The effective spec: each field the job sets wins as a whole (a job's nodeSelector or
    tolerations replace the default ones, they are not merged); each field it leaves out comes from
    the operator's job defaults, then from the CRD's defaults. Fields with no value anywhere
    (storage, when the job defaults have none) stay out: spec_problems names them. Plus what no
    spec field sets: the pods' service account (a job's workload identity one wins) and the pod
    defaults."""
    out = copy.deepcopy(spec)
    defaults = settings.job_defaults()
    for key in DEFAULTED_FIELDS:
        if key in defaults:
            out.setdefault(key, defaults[key])
    scheduling_defaults = {k: v for k, v in (defaults.get("scheduling") or {}).items() if k in DEFAULTED_SCHEDULING_FIELDS}
    if scheduling_defaults:
        scheduling = dict(out.get("scheduling") or {})
        for key, value in scheduling_defaults.items():
            scheduling.setdefault(key, value)
        out["scheduling"] = scheduling
    account = (out.get("storage") or {}).get("serviceAccountName") or defaults.get(SERVICE_ACCOUNT)
    out.pop(SERVICE_ACCOUNT, None)
    if account:
        out[SERVICE_ACCOUNT] = account
    out[POD_DEFAULTS] = defaults[POD_DEFAULTS]
    return apply_defaults(out, SPEC_SCHEMA)


def from_defaults(spec: dict[str, Any], settings: Settings) -> list[str]:
    """The fields the job leaves to the operator's settings, for the Accepted event."""
    defaults = settings.job_defaults()
    taken = [f for f in DEFAULTED_FIELDS if f not in spec and f in defaults]
    scheduling = spec.get("scheduling") or {}
    taken += [f"scheduling.{f}" for f in DEFAULTED_SCHEDULING_FIELDS
              if f not in scheduling and f in defaults.get("scheduling", {})]
    return taken


def effective_spec(stj: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """The spec children are built from.

    Once the job has started this is status.effectiveSpec, whatever the spec or the operator's
    settings say now. It holds no SAS tokens, so a URI comes from the live spec when it points at
    the same place. Before the start (or for a job started by an operator that did not record it)
    it is worked out from the spec and `settings` (default: the built-in ones).
    """
    live = stj.get("spec") or {}
    status = stj.get("status") or {}
    recorded = status.get("effectiveSpec") or status.get("acceptedSpec")
    if not recorded:
        return resolve(live, settings or BUILT_IN)
    spec = dict(recorded)
    for field in URI_FIELDS:
        value = live.get(field)
        if isinstance(value, str) and strip_secrets(value) == spec.get(field):
            spec[field] = value
    if status.get("effectiveSpec"):
        return apply_defaults(spec, SPEC_SCHEMA)
    return resolve(spec, BUILT_IN)  # accepted before effectiveSpec existed: no operator defaults then


# The spec fields the chart's admission policy guards (templates/admission-policy.yaml): the image,
# the credentials and the GPUs the pods get. The pods are built from status.effectiveSpec, so where
# the job sets one of them, its effective spec must say the same.
GUARDED_FIELDS = ("image", "imagePullSecrets", "storage", "workers", "gpusPerWorker")


def effective_spec_mismatch(stj: dict[str, Any]) -> list[str]:
    """Where a started job's status.effectiveSpec contradicts its own spec in a guarded field (or
    in the service account its storage names), in words: the status was written by someone other
    than the operator, which records the spec's own values. Empty when they agree."""
    live = stj.get("spec") or {}
    status = stj.get("status") or {}
    found = []
    accepted = status.get("acceptedSpec")
    if isinstance(accepted, dict):  # the spec itself, as accepted (used when there is no effectiveSpec)
        found += [(f"status.acceptedSpec.{key}", accepted.get(key), f"spec.{key}", live.get(key))
                  for key in GUARDED_FIELDS if accepted.get(key) != live.get(key)]
    recorded = status.get("effectiveSpec")
    if isinstance(recorded, dict):
        found += [(f"status.effectiveSpec.{key}", recorded.get(key), f"spec.{key}", live[key])
                  for key in GUARDED_FIELDS if key in live and recorded.get(key) != live[key]]
        account = (live.get("storage") or {}).get("serviceAccountName")
        if account and recorded.get(SERVICE_ACCOUNT) != account:
            found.append((f"status.effectiveSpec.{SERVICE_ACCOUNT}", recorded.get(SERVICE_ACCOUNT),
                          "spec.storage.serviceAccountName", account))

    def shown(value: Any) -> str:
        return "(unset)" if value is None else repr(value)

    return [f"{field} {shown(value)} is not {own} {shown(want)}" for field, value, own, want in found]


def spec_problems(stj: dict[str, Any], settings: Settings) -> list[str]:
    """Why this job cannot run, in words; empty when it can."""
    spec = resolve(stj.get("spec") or {}, settings)
    problems = []
    name = stj.get("metadata", {}).get("name", "")
    if len(name) > MAX_NAME_LENGTH:
        problems.append(f"name {name!r} is longer than {MAX_NAME_LENGTH} characters")
    if not re.match(NAME_PATTERN, name):
        problems.append(f"name {name!r} {NAME_RULE_MESSAGE}")
    for field in ("input", "output"):
        if not isinstance(spec.get(field), str) or not spec[field].strip():
            problems.append(f"spec.{field} is required")
    problems += uri_problems(spec)
    storage = spec.get("storage")
    if storage is None:
        problems.append("no storage credentials: the job sets no spec.storage and the operator has no default; "
                        "set spec.storage.secretName (or serviceAccountName and accountName), or install the "
                        "chart with storage.existingSecret or storage.auth=workloadIdentity")
    elif storage_problem(storage):
        problems.append(f"spec.storage: {storage_problem(storage)}")
    if problem := operator_account_problem(stj, settings):
        problems.append(problem)
    if not isinstance(spec.get("workers"), int) or spec["workers"] < 1:
        problems.append("spec.workers must be at least 1")
    if not isinstance(spec.get("gpusPerWorker"), int) or spec["gpusPerWorker"] < 0:
        problems.append("spec.gpusPerWorker must be 0 or more")
    encoder = spec.get("encoder") or {}
    if "crf" in encoder and "bitrate" in encoder:
        problems.append("spec.encoder: set crf or bitrate, not both")
    precision = (spec.get("processing") or {}).get("precision")
    if spec.get("gpusPerWorker") == 0 and (problem := precision_problem(precision, "cpu")):
        whose = "" if "gpusPerWorker" in (stj.get("spec") or {}) else ", the operator's default"
        problems.append(f"spec.processing.precision: {problem} (gpusPerWorker is 0{whose})")
    return problems + train_problems(spec)


def operator_account_problem(stj: dict[str, Any], settings: Settings) -> str | None:
    """A job in the operator's own namespace whose spec.storage.serviceAccountName is the operator's
    service account: its pods would run as the operator, with its Kubernetes rights and its Azure
    workload identity (the VideoWatches' queues and sources), and, the image being the job's to name,
    with whatever code the job's author chose. Anyone who may create a job there could borrow them."""
    account = ((stj.get("spec") or {}).get("storage") or {}).get("serviceAccountName")
    namespace = (stj.get("metadata") or {}).get("namespace")
    if settings.operator_account is None or (namespace, account) != settings.operator_account:
        return None
    return (f"spec.storage.serviceAccountName {account!r} is the operator's own service account: a job's pods may "
            "not run as the operator (its rights and Azure identity); give the job a service account of its own")


def train_problems(spec: dict[str, Any]) -> list[str]:
    """What the CRD's rule on spec.train says (for a CRD installed before it), and its content URIs."""
    train = spec.get("train")
    if train is None:
        return []
    style = spec.get("style")
    problems = []
    if not isinstance(style, str) or "," in style or not re.search(PAINTING_PATTERN, style):
        problems.append(TRAIN_STYLE_MESSAGE)
    for i, uri in enumerate(train.get("content") or []):
        field = f"train.content[{i}]"
        problem = sas_problem(field, uri) if isinstance(uri, str) else f"spec.{field} must be a string"
        if problem is None and not _is_blob_uri(uri):
            problem = f"spec.{field} {strip_secrets(uri)!r} is not a blob URI: write az://container/path"
        if problem:
            problems.append(problem)
    return problems


def uri_problems(spec: dict[str, Any]) -> list[str]:
    """What is wrong with the job's URIs, found without the worker: local paths, and an output
    container the worker cannot write."""
    problems = []
    for field in URI_FIELDS:
        value = spec.get(field)
        problem = sas_problem(field, value) if isinstance(value, str) else None
        if problem:
            problems.append(problem)
    for field in ("input", "output", "workDir"):
        value = spec.get(field)
        if isinstance(value, str) and value.strip() and not _is_blob_uri(value):
            problems.append(f"spec.{field} {strip_secrets(value)!r} is not a blob URI: write "
                            "az://container/path or https://account.blob.core.windows.net/container/path")
    output = spec.get("output")
    if isinstance(output, str) and output.strip() and _is_blob_uri(output):
        ext = posixpath.splitext(file_part(output))[1].lower()  # (an az:// blob's '#' is in its name)
        if ext not in OUTPUT_EXTENSIONS:
            problems.append(f"spec.output {strip_secrets(output)!r} must end in one of {' '.join(OUTPUT_EXTENSIONS)} "
                            f"(got {ext or 'no extension'})")
    style = spec.get("style")
    for term in style.split(",") if isinstance(style, str) else []:
        ref = split_style_term(term)[0]
        if is_style_file(ref) and not _is_blob_uri(ref):
            problems.append(f"spec.style {strip_secrets(ref)!r} looks like a painting or weights file but is not a "
                            "blob URI: write az://container/starry.jpg or https://account.blob.core.windows.net/"
                            "container/x.pth, or give a built-in style name (`stylebatch styles`)")
    return problems


def _is_blob_uri(value: str) -> bool:
    return value.strip().lower().startswith(BLOB_SCHEMES)
