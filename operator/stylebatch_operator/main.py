"""`stylebatch operator`: runs the kopf operator, namespaced or cluster-wide, with /healthz and
/metrics on one port. Its settings (job defaults, reconcile interval) come from STYLEBATCH_*
environment variables, read once here (stylebatch_operator.settings)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Collection
from typing import Any

import kopf

from stylebatch_operator import web
from stylebatch_operator.handlers import build_registry
from stylebatch_operator.kube import Kube, load_configuration
from stylebatch_operator.metrics import Metrics
from stylebatch_operator.settings import BUILT_IN, Settings, from_environment


def run(args: argparse.Namespace) -> int:
    namespaces = list(args.namespace or [])
    settings = from_environment(os.environ)  # a malformed variable stops here, in one line
    asyncio.run(load_configuration())  # so do missing credentials, before kopf starts retrying
    kopf.configure(verbose=False)
    log = logging.getLogger("stylebatch_operator")
    log.setLevel(logging.INFO)
    where = f"namespaces {', '.join(namespaces)}" if namespaces else "all namespaces"
    log.info("watching StyleTransferJobs in %s; /healthz and /metrics on :%d", where, args.liveness_port)
    log.info("%s", settings.summary())
    asyncio.run(serve(namespaces=namespaces, liveness_port=args.liveness_port, settings=settings))
    return 0


async def serve(*, namespaces: Collection[str] = (), liveness_port: int | None = None,
                settings: Settings = BUILT_IN, kube: Kube | None = None, **kopf_options: Any) -> None:
    """The operator until it is stopped. liveness_port: where /healthz and /metrics are served
    (none: not served); kube: the API client (default: from the environment); kopf_options: passed
    to kopf.operator (a test's vault, stop_flag, ready_flag)."""
    memo = kopf.Memo(kube=kube, settings=settings, metrics=Metrics(), started=False)
    runner = await web.start(liveness_port, memo.metrics, lambda: memo.started) if liveness_port else None
    try:
        await kopf.operator(
            registry=build_registry(interval=settings.interval),
            settings=operator_settings(),
            standalone=True,  # a single replica: no peering objects, no peering RBAC
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            memo=memo,
            **kopf_options,
        )
    finally:
        if runner is not None:
            await runner.cleanup()


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
