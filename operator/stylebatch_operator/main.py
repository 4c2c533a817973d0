"""`stylebatch operator`: runs the kopf operator, namespaced or cluster-wide, with /healthz and
/metrics on one port. Its settings (the job-defaults document STYLEBATCH_JOB_DEFAULTS, the reconcile
interval, the Lease) come from STYLEBATCH_* environment variables, read and checked once here
(stylebatch_operator.settings)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import threading
from collections.abc import Collection
from typing import Any

import kopf

from stylebatch.errors import BadInput, TransientError

from stylebatch_operator import web
from stylebatch_operator.crd import RELEASE, installed_release, missing_fields
from stylebatch_operator.handlers import build_registry
from stylebatch_operator.kube import ApiError, Kube
from stylebatch_operator.leader import Elector
from stylebatch_operator.metrics import Metrics
from stylebatch_operator.settings import BUILT_IN, LeaseConfig, Settings, from_environment
from stylebatch_operator.videowatch_crd import CRDS


# kopf's API timeouts, in seconds: below the 4-minute idle timeout of Azure load balancers.
WATCH_SERVER_TIMEOUT, WATCH_CLIENT_TIMEOUT, CONNECT_TIMEOUT, REQUEST_TIMEOUT = 180, 210, 30, 60
UPGRADE_CRD = "kubectl apply --server-side --force-conflicts -f charts/stylebatch/crds/ (from this release's chart)"


def run(args: argparse.Namespace) -> int:
    namespaces = list(args.namespace or [])
    settings = from_environment(os.environ)  # a malformed variable stops here, in one line
    # SIGTERM (the kubelet's stop) stops it from here on, standing by included: in the chart's pod the
    # process is the container's PID 1, which the kernel spares every signal it has no handler for,
    # and kopf has its own only once it runs (a standby ignored it until the grace period's SIGKILL).
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    asyncio.run(check_installed_crds())  # so do missing credentials and an older CRD, before kopf starts
    kopf.configure(verbose=False)
    if getattr(args, "log_format", "text") == "json":
        json_logs()
    log = logging.getLogger("stylebatch_operator")
    log.setLevel(logging.INFO)
    where = f"namespaces {', '.join(namespaces)}" if namespaces else "all namespaces"
    log.info("watching StyleTransferJobs in %s; /healthz and /metrics on :%d", where, args.liveness_port)
    log.info("%s", settings.summary())
    asyncio.run(serve(namespaces=namespaces, liveness_port=args.liveness_port, settings=settings, stop_flag=stop))
    return 0


def json_logs() -> None:
    """Every record (kopf's and ours) as one JSON object per line; a record about a job names it."""
    from stylebatch.logs import FORMAT_ENV, JsonFormat

    os.environ[FORMAT_ENV] = "json"
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormat())


async def serve(*, namespaces: Collection[str] = (), liveness_port: int | None = None,
                settings: Settings = BUILT_IN, kube: Kube | None = None, lease: LeaseConfig | None = None,
                **kopf_options: Any) -> None:
    """The operator until it is stopped. liveness_port: where /healthz and /metrics are served
    (none: not served); kube: the API client (default: from the environment); lease: take this
    Lease first and act only while holding it (default: settings.lease(), none when the settings
    name no Lease namespace); kopf_options: passed to kopf.operator (a test's vault, stop_flag,
    ready_flag).

    Raises TransientError when the Lease is lost while running: the process exits with 75 and
    its restart stands by for the Lease again."""
    lease = lease or settings.lease()
    own_kube = kube is None and lease is not None
    if own_kube:
        kube = await Kube.from_environment()
    # (kopf hands each object's handlers a shallow copy of this memo: what they share is made here,
    # such as the VideoWatches' states, by which two watches on one queue see each other)
    memo = kopf.Memo(kube=kube, settings=settings, metrics=Metrics(), started=False, standby=lease is not None,
                     watch_states={})
    # /healthz is fine while standing by: a standby is healthy, it just does not act
    runner = (await web.start(liveness_port, memo.metrics, lambda: memo.started or memo.standby)
              if liveness_port else None)
    elector = Elector(kube, lease) if lease is not None else None
    outer_stop = kopf_options.pop("stop_flag", None)
    try:
        if elector is not None and not await elector.acquire(lambda: _is_set(outer_stop)):
            return  # stopped while standing by
        memo.standby = False
        lost, stop = asyncio.Event(), asyncio.Event()
        watchers = [asyncio.create_task(_relay(outer_stop, lost, stop))]
        if elector is not None:
            watchers.append(asyncio.create_task(elector.hold(lost)))
        try:
            await kopf.operator(
                registry=build_registry(interval=settings.interval),
                settings=operator_settings(),
                standalone=True,  # one operator at a time by the Lease, not by kopf's peering
                clusterwide=not namespaces,
                namespaces=list(namespaces),
                memo=memo,
                stop_flag=stop,
                **kopf_options,
            )
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        if lost.is_set():
            raise TransientError(f"lost the Lease {lease.namespace}/{lease.name} (not renewed for "
                                 f"{lease.lease_seconds:g}s): stopped acting so that another operator can")
    finally:
        if elector is not None:
            await elector.release()
        if own_kube:
            await kube.close()
        if runner is not None:
            await runner.cleanup()


def _is_set(flag: Any) -> bool:
    return flag is not None and flag.is_set()


async def _relay(outer_stop: Any, lost: asyncio.Event, stop: asyncio.Event) -> None:
    """Sets `stop` (kopf's stop flag) when the caller's flag (an asyncio or threading Event) is set
    or the Lease is lost."""
    while not (_is_set(outer_stop) or lost.is_set()):
        await asyncio.sleep(0.1)
    stop.set()


async def check_installed_crds(kube: Kube | None = None) -> None:
    """Refuses to start, in one line, when an installed CRD the operator uses (videowatch_crd.CRDS:
    StyleTransferJob's, then VideoWatch's) lacks fields this operator reads or writes (Helm installs
    crds/ once and never upgrades them); also when one is not installed, or no Kubernetes
    credentials. The first CRD found wanting is named: one command applies them all. kube: the
    client (default: from the environment)."""
    own = kube is None
    kube = kube or await Kube.from_environment()
    try:
        for name, ours in CRDS.items():
            _check_crd(name, ours(), await _read_crd(kube, name))
    finally:
        if own:
            await kube.close()


async def _read_crd(kube: Kube, name: str) -> dict[str, Any] | None:
    """The installed CustomResourceDefinition `name`, or None when there is none."""
    try:
        return await kube.get_cluster_scoped("CustomResourceDefinition", name)
    except ApiError as exc:
        if exc.status in (401, 403):
            raise BadInput(f"cannot read the CustomResourceDefinition {name} ({exc}): the operator's "
                           "ClusterRole needs get on it (the chart grants it)") from None
        raise TransientError(f"cannot read the CustomResourceDefinition {name} ({exc}); retrying "
                             "helps once the API server answers") from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise TransientError(f"cannot reach the Kubernetes API server ({type(exc).__name__}: {exc})") from None


def _check_crd(name: str, ours: dict[str, Any], installed: dict[str, Any] | None) -> None:
    """Raises BadInput when `installed` (the API server's CRD `name`, None: not installed) lacks a
    field of `ours` (this release's)."""
    if installed is None:
        raise BadInput(f"the CustomResourceDefinition {name} is not installed: {UPGRADE_CRD}")
    missing = missing_fields(installed, ours)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise BadInput(f"the installed CustomResourceDefinition {name} (stylebatch "
                       f"{installed_release(installed)}) is older than this operator (stylebatch {RELEASE}): it "
                       f"lacks {shown}; Helm does not upgrade CRDs: {UPGRADE_CRD}")


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
    # Azure's load balancers (AKS's API server endpoint included) drop a TCP connection idle for 4
    # minutes without telling either end: a quiet watch would hang, and the operator would miss
    # every change. The server ends each watch after WATCH_SERVER_TIMEOUT and kopf watches again; a
    # connection dropped silently is given up after WATCH_CLIENT_TIMEOUT.
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT
    settings.watching.connect_timeout = CONNECT_TIMEOUT
    settings.networking.connect_timeout = CONNECT_TIMEOUT
    settings.networking.request_timeout = REQUEST_TIMEOUT
    return settings
