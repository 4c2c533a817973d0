"""`stylebatch operator`: runs the kopf operator, namespaced or cluster-wide, with a liveness endpoint."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Collection
from typing import Any

import kopf

from stylebatch.errors import StylebatchError

from stylebatch_operator.handlers import build_registry
from stylebatch_operator.kube import Kube

DEFAULT_INTERVAL = 10.0  # seconds between reconciliations of a job; progress is read as often
INTERVAL_ENV = "STYLEBATCH_OPERATOR_INTERVAL"


def run(args: argparse.Namespace) -> int:
    namespaces = list(args.namespace or [])
    interval = _interval(os.environ.get(INTERVAL_ENV))
    kopf.configure(verbose=False)
    logging.getLogger("stylebatch_operator").setLevel(logging.INFO)
    where = f"namespaces {', '.join(namespaces)}" if namespaces else "all namespaces"
    logging.getLogger("stylebatch_operator").info(
        "watching StyleTransferJobs in %s; liveness on :%d/healthz", where, args.liveness_port)
    asyncio.run(serve(namespaces=namespaces, liveness_port=args.liveness_port, interval=interval))
    return 0


async def serve(*, namespaces: Collection[str] = (), liveness_port: int | None = None,
                interval: float = DEFAULT_INTERVAL, kube: Kube | None = None, **kopf_options: Any) -> None:
    """The operator until it is stopped. kube: the API client (default: from the environment);
    kopf_options: passed to kopf.operator (a test's vault, stop_flag, ready_flag)."""
    await kopf.operator(
        registry=build_registry(interval=interval),
        settings=operator_settings(),
        standalone=True,  # a single replica: no peering objects, no peering RBAC
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
        memo=kopf.Memo(kube=kube),
        **kopf_options,
    )


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # kopf's own bookkeeping in annotations: the status schema is structural, so kopf's default
    # status.kopf field would be pruned, and a restart would forget what kopf had done.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="stylebatch.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="stylebatch.io", key="last-handled-configuration")
    settings.persistence.finalizer = "stylebatch.io/operator"
    # Discovery once at startup; no watching of CRDs or namespaces (and no cluster-wide RBAC for it).
    settings.scanning.disabled = True
    # On exit or deletion, let a reconciliation in flight finish its step (create + status patch)
    # rather than abandon it halfway; idle timers stop at once.
    settings.background.instant_exit_timeout = 10.0
    # Events are the operator's own transitions, not kopf's routine log lines.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "stylebatch-operator"
    return settings


def _interval(value: str | None) -> float:
    if not value:
        return DEFAULT_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 30:
        raise StylebatchError(f"{INTERVAL_ENV} must be a number of seconds between 0 and 30, got {value!r}")
    return seconds
