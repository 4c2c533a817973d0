"""One active operator at a time: a coordination.k8s.io/v1 Lease, as Kubernetes' own controllers
use one. `serve` takes the Lease before kopf starts, renews it while kopf runs, and stops kopf when
it cannot (another replica may take over); on a clean stop it hands the Lease back at once.

A Lease is free when it has no holder, or when its holder has not renewed it for
leaseDurationSeconds as measured by this process's own clock (the time it last saw the Lease
change, as client-go does: no trust in other machines' clocks). Writes are optimistic: a JSON
patch that first tests metadata.resourceVersion, so of two replicas racing for a free Lease exactly
one wins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from stylebatch_operator.kube import ApiError, Kube
from stylebatch_operator.settings import LeaseConfig

log = logging.getLogger("stylebatch_operator")

CONFLICTS = (409, 422)  # created meanwhile; resourceVersion test failed


class Elector:
    """Takes, holds and releases one Lease for this process."""

    def __init__(self, kube: Kube, config: LeaseConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube, self.config, self.clock = kube, config, clock
        self._seen: tuple[Any, ...] | None = None  # the Lease's record when it last changed ...
        self._seen_at = 0.0  # ... and when (our clock)
        self.held_since: float | None = None  # our clock, at the last successful renewal

    async def acquire(self, stopped: Callable[[], bool]) -> bool:
        """Until this process holds the Lease (True), or `stopped()` (False)."""
        announced = False
        while not stopped():
            if await self.try_acquire():
                log.info("leading: holding Lease %s/%s as %s", self.config.namespace, self.config.name,
                         self.config.identity)
                return True
            if not announced:
                log.info("standing by: Lease %s/%s is held by another operator", self.config.namespace,
                         self.config.name)
                announced = True
            await asyncio.sleep(self.config.retry_seconds)
        return False

    async def hold(self, lost: asyncio.Event) -> None:
        """Renews the Lease until cancelled; sets `lost` when it has not been renewed for the renew
        deadline (config.renew_deadline, short of lease_seconds, after which a standby may take it).
        Each renewal is cut off at that deadline: one stuck in the API server's request timeouts (a
        read and a write, 10 s each) kept this process acting for up to 20 s past the point where a
        standby took over, two operators at once."""
        deadline = self.config.renew_deadline
        pause = self.config.renew_seconds
        while True:
            left = deadline - (self.clock() - (self.held_since or 0.0))
            # (after a failed renewal, tried again every retry_seconds until the deadline, as
            # client-go does: waiting the whole renew period left one 500 to lose the Lease)
            await asyncio.sleep(min(pause, max(left - self.config.retry_seconds / 2, self.config.retry_seconds / 4)))
            left = deadline - (self.clock() - (self.held_since or 0.0))
            try:
                renewed = await asyncio.wait_for(self.try_acquire(), timeout=max(left, 0.01))
            except (ApiError, OSError, asyncio.TimeoutError) as exc:
                log.warning("could not renew Lease %s/%s: %s", self.config.namespace, self.config.name,
                            str(exc) or "no answer within the renew deadline")
                renewed = False
            if not renewed and self.clock() - (self.held_since or 0.0) >= deadline:
                lost.set()
                return
            pause = self.config.renew_seconds if renewed else self.config.retry_seconds

    async def try_acquire(self) -> bool:
        """One attempt to take (or renew) the Lease; True when this process holds it now."""
        cfg = self.config
        lease = await self.kube.get("Lease", cfg.namespace, cfg.name)
        now = self.clock()
        if lease is None:
            try:
                await self.kube.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                        "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                                        "spec": self._spec(transitions=0)})
            except ApiError as exc:
                if exc.status in CONFLICTS:
                    return False
                raise
            self.held_since = now
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._seen:
            self._seen, self._seen_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or cfg.lease_seconds)
        if holder and holder != cfg.identity and now - self._seen_at < duration:
            return False  # held, and renewed within its duration
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == cfg.identity else 1)
        new_spec = self._spec(transitions, acquired=spec.get("acquireTime") if holder == cfg.identity else None)
        if not await self._write(lease, new_spec):
            return False
        self.held_since = now
        return True

    async def release(self) -> None:
        """Hands the Lease back (no holder) when this process holds it, so a standby takes over at
        once instead of after lease_seconds."""
        if self.held_since is None:
            return
        cfg = self.config
        try:
            lease = await self.kube.get("Lease", cfg.namespace, cfg.name)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == cfg.identity:
                await self._write(lease, {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1})
                log.info("released Lease %s/%s", cfg.namespace, cfg.name)
        except (ApiError, OSError, asyncio.TimeoutError) as exc:
            log.warning("could not release Lease %s/%s (a standby takes over after %gs): %s",
                        cfg.namespace, cfg.name, cfg.lease_seconds, exc)
        self.held_since = None

    def _spec(self, transitions: int, acquired: str | None = None) -> dict[str, Any]:
        now = _micro_time(datetime.now(timezone.utc))
        return {"holderIdentity": self.config.identity, "leaseDurationSeconds": int(self.config.lease_seconds),
                "acquireTime": acquired or now, "renewTime": now, "leaseTransitions": transitions}

    async def _write(self, lease: dict[str, Any], spec: dict[str, Any]) -> bool:
        meta = lease["metadata"]
        try:
            await self.kube.patch_json("Lease", meta["namespace"], meta["name"], [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
                {"op": "add", "path": "/spec", "value": spec},
            ])
        except ApiError as exc:
            if exc.status in CONFLICTS:
                return False  # someone else wrote it first
            raise
        return True


def _micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339 with microseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
