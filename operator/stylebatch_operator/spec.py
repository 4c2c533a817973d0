"""The spec a job runs with: the one it was accepted with, CRD defaults filled in, checked for what
the CRD's schema cannot check when a cluster does not enforce its CEL rules."""

from __future__ import annotations

from typing import Any

from stylebatch_operator.crd import SPEC_SCHEMA, apply_defaults
from stylebatch_operator.names import MAX_NAME_LENGTH


def accepted_spec(stj: dict[str, Any]) -> dict[str, Any]:
    """Once the job has started, a later spec change is never applied: children are built from
    the spec recorded in status.acceptedSpec."""
    status = stj.get("status") or {}
    raw = status.get("acceptedSpec") or stj.get("spec") or {}
    return apply_defaults(raw, SPEC_SCHEMA)


def spec_problems(stj: dict[str, Any]) -> list[str]:
    """Why this job cannot run, in words; empty when it can."""
    spec = apply_defaults(stj.get("spec") or {}, SPEC_SCHEMA)
    problems = []
    name = stj.get("metadata", {}).get("name", "")
    if len(name) > MAX_NAME_LENGTH:
        problems.append(f"name {name!r} is longer than {MAX_NAME_LENGTH} characters")
    for field in ("input", "output"):
        if not isinstance(spec.get(field), str) or not spec[field].strip():
            problems.append(f"spec.{field} is required")
    storage = spec.get("storage") or {}
    if bool(storage.get("secretName")) == bool(storage.get("serviceAccountName")):
        problems.append("spec.storage needs exactly one of secretName and serviceAccountName")
    elif storage.get("serviceAccountName") and not storage.get("accountName"):
        problems.append("spec.storage.accountName is required with serviceAccountName")
    if not isinstance(spec.get("workers"), int) or spec["workers"] < 1:
        problems.append("spec.workers must be at least 1")
    if not isinstance(spec.get("gpusPerWorker"), int) or spec["gpusPerWorker"] < 0:
        problems.append("spec.gpusPerWorker must be 0 or more")
    encoder = spec.get("encoder") or {}
    if "crf" in encoder and "bitrate" in encoder:
        problems.append("spec.encoder: set crf or bitrate, not both")
    return problems
