"""The spec a job runs with: the one it was accepted with, CRD defaults filled in, checked for what
the CRD's schema cannot check when a cluster does not enforce its CEL rules."""

from __future__ import annotations

from typing import Any

from stylebatch_operator.crd import SPEC_SCHEMA, apply_defaults
from stylebatch_operator.names import MAX_NAME_LENGTH
from stylebatch_operator.uris import strip_secrets

# Fields holding URIs, whose query string may carry a SAS token.
URI_FIELDS = ("input", "output", "style", "workDir")


def shown_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as status.acceptedSpec records it: URIs without their SAS tokens."""
    return {k: strip_secrets(v) if k in URI_FIELDS and isinstance(v, str) else v for k, v in spec.items()}


def accepted_spec(stj: dict[str, Any]) -> dict[str, Any]:
    """The spec children are built from, CRD defaults filled in.

    Once the job has started, a later spec change is never applied: this is status.acceptedSpec.
    It holds no SAS tokens, so a URI comes from the live spec when it points at the same place.
    """
    live = stj.get("spec") or {}
    accepted = (stj.get("status") or {}).get("acceptedSpec")
    if not accepted:
        return apply_defaults(live, SPEC_SCHEMA)
    spec = dict(accepted)
    for field in URI_FIELDS:
        value = live.get(field)
        if isinstance(value, str) and strip_secrets(value) == spec.get(field):
            spec[field] = value
    return apply_defaults(spec, SPEC_SCHEMA)


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
