"""kopf glue for VideoWatches: one timer per watch runs `tick`, which lists the watch's jobs,
then (queue mode) receives Event Grid messages from its storage queue, or (poll mode, and the
queue mode's sweep) lists the prefix page by page, and creates one StyleTransferJob per new video.
Every decision is stylebatch_operator.videowatch's; storage calls run in a thread.

A message is deleted only after its job was created or found already there (409); one that fails
stays in the queue and comes back after its visibility timeout, and after spec.queue.maxDeliveries
deliveries (or at once if it is no event at all) it moves to <queue>-poison with a Warning Event.
One whose blob a copy still writes goes back on the queue as a new message (vw.WAIT).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import urllib.parse
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import kopf
from stylebatch import trigger
from stylebatch.errors import StylebatchError

from stylebatch_operator import videowatch as vw
from stylebatch_operator.kube import ApiError, Kube
from stylebatch_operator.metrics import Metrics
from stylebatch_operator.names import GROUP, KIND, LABEL_WATCH, VERSION, WATCH_KIND, WATCH_PLURAL
from stylebatch_operator.settings import Settings
from stylebatch_operator.uris import redact

if TYPE_CHECKING:
    from stylebatch.storage.base import FileInfo

Key = tuple[str, str]
MAX_MESSAGES = 32  # the queue service's most per receive


@dataclasses.dataclass
class WatchState:
    """What the operator remembers of a watch between ticks (lost on restart, by design: job
    names make a restart harmless; stability then takes two more listings)."""

    stability: trigger.Stability = dataclasses.field(default_factory=trigger.Stability)
    token: str | None = None  # a listing in progress
    listing: bool = False
    listed: set[str] = dataclasses.field(default_factory=set)
    next_listing: float = 0.0  # time.monotonic()
    known: set[str] = dataclasses.field(default_factory=set)  # job names that exist or are done
    told: set[tuple[str, str]] = dataclasses.field(default_factory=set)  # (blob, ETag) skipped as unaddressable
    new_seen: int = 0
    new_created: int = 0
    waiting: int = 0
    last_poll: str | None = None
    last_message: str | None = None
    clients: dict[str, Any] = dataclasses.field(default_factory=dict)
    queue: tuple[str, str] | None = None  # (storage account, queue name) it receives from, in queue mode
    created: str = ""  # its creationTimestamp: the first of two watches on one queue keeps it
    ticks: int = 0  # in this process


def register(registry: kopf.OperatorRegistry, *, interval: float) -> None:
    kopf.timer(GROUP, VERSION, WATCH_PLURAL, id="videowatch", interval=interval, registry=registry)(_tick_timer)
    kopf.on.event(GROUP, VERSION, WATCH_PLURAL, id="videowatch-forget", registry=registry)(_forget)


async def _tick_timer(namespace: str, name: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    states = memo.watch_states  # the operator's, shared by every watch (main.serve)
    await tick(memo.kube, namespace, name, logger, settings=memo.settings, metrics=memo.metrics, states=states)


async def _forget(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        memo.watch_states.pop((body.metadata.namespace, body.metadata.name), None)


async def tick(kube: Kube, namespace: str, name: str, logger: logging.Logger, *, settings: Settings,
               metrics: Metrics, states: dict[Key, WatchState]) -> None:
    watch = await kube.get(WATCH_KIND, namespace, name)
    if watch is None or watch["metadata"].get("deletionTimestamp"):
        return
    key = (namespace, name)
    state = states.setdefault(key, WatchState())
    status = watch.get("status") or {}
    spec, problems = vw.read_spec(watch, settings)
    jobs = await kube.list(KIND, namespace, {LABEL_WATCH: name})
    state.known |= {j["metadata"]["name"] for j in jobs}
    counts = vw.job_counts(watch, jobs)
    error = "; ".join(problems)
    owner = None
    state.queue = _queue_of(spec) if spec is not None else None  # (a spec made invalid receives nothing)
    first = state.ticks == 0
    state.ticks += 1
    if spec is not None:
        state.created = str(watch["metadata"].get("creationTimestamp") or "")
        owner = vw.queue_owner(key, {k: (st.queue, st.created) for k, st in states.items()})
    if owner is not None:  # another watch's queue: its messages are not this one's to take
        account, queue = state.queue  # type: ignore[misc]
        other = f"VideoWatch {owner[1]}" if owner[0] == namespace else "a VideoWatch in another namespace"
        error = (f"queue {queue} of storage account {account} is {other}'s (it was there first): a watch deletes "
                 "the messages it does not take, so two on one queue lose each other's videos; give each "
                 "VideoWatch its own queue (an Event Grid subscription each)")
    elif spec is not None and first and state.queue is not None:
        # A watch's first tick in this process only says which queue it receives from: after an
        # operator's restart, a newer watch of a shared queue that ticked first took (and deleted)
        # a round of the older one's messages before the older one was known.
        pass
    elif spec is not None:
        run = _Round(kube, watch, spec, state, metrics, logger, vw.free_slots(spec, counts["running"]))
        from azure.core.exceptions import AzureError

        try:
            await run.go()
        except (StylebatchError, ApiError, AzureError) as exc:  # storage or queue away: said in the status
            error = _one_line(exc)
        error = error or run.error
        counts["running"] += run.created
    created = int((status.get("jobs") or {}).get("created") or 0) + state.new_created
    now = _now()
    patch = vw.status_patch(
        status, videosSeen=int(status.get("videosSeen") or 0) + state.new_seen,
        jobs={"created": created, **counts}, waiting=state.waiting,
        lastPollTime=state.last_poll or status.get("lastPollTime"),
        lastMessageTime=state.last_message or status.get("lastMessageTime"),
        lastError=error, observedGeneration=watch["metadata"].get("generation"))
    if patch and "lastError" in patch and error:
        patch["lastErrorTime"] = now
        kopf.event(watch, type="Warning", reason="InvalidSpec" if problems else "WatchError", message=error)
        logger.warning("%s", error)
    if patch:
        await kube.patch_status(WATCH_KIND, namespace, name, patch)
        state.new_seen = state.new_created = 0


class _Round:
    """One tick of one watch: receive and/or list, create what is new, within the free slots."""

    def __init__(self, kube: Kube, watch: dict[str, Any], spec: vw.WatchSpec, state: WatchState,
                 metrics: Metrics, logger: logging.Logger, free: int) -> None:
        from stylebatch.storage import location

        self.kube, self.watch, self.spec, self.state, self.logger, self.free = kube, watch, spec, state, logger, free
        self.metrics = metrics.watch
        self.key: Key = (watch["metadata"]["namespace"], watch["metadata"]["name"])
        self.source = location(spec.source)
        self.created = 0
        self.error = ""

    async def go(self) -> None:
        from stylebatch.storage import resolve_credential

        self.account = resolve_credential(self.source).account
        if self.spec.mode == "queue":
            await self.drain_queue()
            due = self.spec.sweep_interval > 0 and (self.state.listing or time.monotonic() >= self.state.next_listing)
            if due:
                await self.list_prefix(self.spec.sweep_interval)
        elif self.state.listing or time.monotonic() >= self.state.next_listing:
            await self.list_prefix(self.spec.poll_interval)

    # --- queue mode ---

    async def drain_queue(self) -> None:
        from azure.core.exceptions import AzureError, HttpResponseError

        queue = self._queue(self.spec.queue)
        if self.free <= 0:
            try:
                props = await asyncio.to_thread(queue.get_queue_properties)
            except HttpResponseError as exc:
                if exc.status_code != 403:
                    raise
                # (Storage Queue Data Message Processor alone may not read the queue's properties:
                # status.waiting is then not known, which is no error of the watch's)
                self.logger.debug("could not count the messages waiting in queue %s: %s", self.spec.queue, exc)
                return
            self.state.waiting = int(props.approximate_message_count or 0)
            return
        self.state.waiting = 0
        messages = await asyncio.to_thread(lambda: list(queue.receive_messages(
            messages_per_page=min(self.free, MAX_MESSAGES), max_messages=min(self.free, MAX_MESSAGES),
            visibility_timeout=self.spec.visibility_timeout)))
        for message in messages:
            self.metrics.received[(self.key, "queue")] += 1
            try:
                await self.handle(queue, message)
            except Exception as exc:  # noqa: BLE001 - one message's failure is that message's alone
                # Left in the queue: it comes back after the visibility timeout, and goes to the
                # poison queue once it has been delivered too often. Whatever it was (the storage's
                # or the API server's error, a timeout, a fault of this code's), the messages received
                # with it are handled: raised, it ended the round, and they came back without being
                # tried, one delivery nearer the poison queue each time.
                expected = isinstance(exc, (StylebatchError, ApiError, AzureError, TimeoutError))
                self.error = f"queue message {message.id}: {_one_line(exc) if expected else type(exc).__name__}"
                self.logger.warning("%s", self.error, exc_info=not expected)
            self.state.last_message = _now()

    async def handle(self, queue: Any, message: Any) -> None:
        decision = vw.message_decision(message.content, int(message.dequeue_count or 1), self.spec, self.account)
        if decision.action == vw.CREATE:
            info = await asyncio.to_thread(self.source_blob(decision.blob).info)
            decision = vw.blob_decision(info, decision, self.spec)
        if decision.action == vw.POISON:
            await asyncio.to_thread(self._poison, queue, message)
            self.metrics.poison[self.key] += 1
            text = f"queue message {message.id} moved to {self.spec.poison_queue}: {decision.reason}"
            kopf.event(self.watch, type="Warning", reason="PoisonMessage", message=text)
            self.logger.warning("%s", text)
            return
        if decision.action == vw.WAIT:
            await asyncio.to_thread(self._later, queue, message)
            self.logger.info("queue message %s: %s: %s; read again in %ss", message.id, decision.blob, decision.reason,
                             self.spec.visibility_timeout)
            return
        if decision.action == vw.CREATE:
            await self.create(decision.blob, decision.etag, decision.uploaded, from_queue=True)
        elif decision.reason in trigger.TOLD:
            self.skipped(decision.blob, decision.etag, decision.reason)
        else:
            self.logger.debug("ignored %s: %s", _printable(decision.blob or message.id), _printable(decision.reason))
        await asyncio.to_thread(queue.delete_message, message)

    def _later(self, queue: Any, message: Any) -> None:
        """Put the message back, hidden for the visibility timeout, as a new one (then delete it): a
        copy that takes longer than maxDeliveries visibility timeouts is no failure to poison."""
        queue.send_message(message.content, visibility_timeout=self.spec.visibility_timeout)
        queue.delete_message(message)

    def _poison(self, queue: Any, message: Any) -> None:
        """Copy to <queue>-poison (created on first use where the identity may create queues), then delete."""
        from azure.core.exceptions import ResourceNotFoundError

        poison = self._queue(self.spec.poison_queue)
        try:
            poison.send_message(message.content)
        except ResourceNotFoundError:
            poison.create_queue()
            poison.send_message(message.content)
        queue.delete_message(message)

    def _queue(self, name: str | None) -> Any:
        from stylebatch.storage.queue import queue_client

        assert name
        if name not in self.state.clients:
            self.state.clients[name] = queue_client(self.source, name)
        return self.state.clients[name]

    # --- poll mode, and the queue mode's sweep ---

    async def list_prefix(self, interval: int) -> None:
        """Pages of the listing until it ends or the time per poll is spent (then it carries on at
        the next tick from its continuation token)."""
        state, spec = self.state, self.spec
        if not state.listing:
            state.listing, state.listed, state.waiting = True, set(), 0
        deadline = time.monotonic() + spec.max_seconds_per_poll
        while True:
            infos, state.token = await asyncio.to_thread(self.source.list_page, state.token, spec.page_size)
            state.listed |= {i.name for i in infos}
            candidates, told = vw.listed_candidates(infos, spec)
            for info, why in told:
                self.skipped(f"{spec.prefix}/{info.name}" if spec.prefix else info.name, info.etag, why)
            for rel in state.stability.observe({n: (i.size, i.etag) for n, i in candidates.items()}, complete=False):
                await self.found(candidates[rel])
            if state.token is None:
                state.stability.keep_only(state.listed)
                state.told = {(b, e) for b, e in state.told if trigger.relative(b, spec.prefix) in state.listed}
                state.listing, state.listed = False, set()
                state.next_listing = time.monotonic() + interval
                state.last_poll = _now()
                return
            if time.monotonic() >= deadline:
                return

    async def found(self, info: FileInfo) -> None:
        blob = f"{self.spec.prefix}/{info.name}" if self.spec.prefix else info.name
        if vw.job_name(self.watch, self.account, self.spec, blob, info.etag) in self.state.known:
            return  # done before: every listing finds every old video again
        self.metrics.received[(self.key, "listing")] += 1
        uploaded = datetime.fromtimestamp(info.modified, timezone.utc).isoformat().replace("+00:00", "Z")
        await self.create(blob, info.etag, uploaded, from_queue=False)

    # --- both ---

    def skipped(self, blob: str, etag: str, why: str) -> None:
        """A video that never runs until its uploader acts (renames it, rehydrates it: trigger.TOLD):
        said once per version (a Warning event on the watch and the log), where the filters' skips
        are said only at debug."""
        version = (blob, etag.strip('"'))  # (an event's ETag is quoted, a listing's not: one version)
        if version in self.state.told:
            return
        self.state.told.add(version)
        text = f"skipped az://{self.spec.container}/{_printable(blob)}: {why}"
        kopf.event(self.watch, type="Warning", reason="VideoSkipped", message=text)
        self.logger.warning("%s", text)

    def source_blob(self, blob: str) -> Any:
        return self.source.child(trigger.relative(blob, self.spec.prefix) or blob)

    async def create(self, blob: str, etag: str, uploaded: str, *, from_queue: bool) -> None:
        """Creates the video's job unless it exists, or existed and wrote its output (a job deleted
        after it finished, by TTL or by hand, leaves its tagged output behind)."""
        name = vw.job_name(self.watch, self.account, self.spec, blob, etag)
        if name in self.state.known:
            self.metrics.duplicates[self.key] += 1
            return
        manifest = vw.job_manifest(self.watch, self.spec, blob, etag, name=name, uploaded=uploaded)
        if await asyncio.to_thread(self._output_done, manifest["spec"]["output"], name, self.source):
            self.state.known.add(name)
            self.metrics.duplicates[self.key] += 1
            return
        if not from_queue and self.free <= 0:
            self.state.waiting += 1
            return
        try:
            await self.kube.create(manifest)
        except ApiError as exc:
            if exc.status != 409:
                raise
            self.state.known.add(name)
            self.metrics.duplicates[self.key] += 1  # a restart, a redelivery, or another replica
            return
        self.state.known.add(name)
        self.state.new_seen += 1
        self.state.new_created += 1
        self.created += 1
        self.free -= 1
        self.metrics.created[self.key] += 1
        if uploaded:
            self.metrics.observe_lag(self.key, _age(uploaded))
        text = f"created StyleTransferJob {name} for az://{self.spec.container}/{_printable(blob)}"
        kopf.event(self.watch, type="Normal", reason="JobCreated", message=text)
        self.logger.info("%s", text)

    @staticmethod
    def _output_done(output: str, name: str, source: Any) -> bool:
        """Whether the output exists and was written by job `name`. An az:// output is looked up in
        the source's account when the source names one (the operator has no account setting)."""
        from stylebatch.storage import BlobLocation, location

        try:
            loc = location(output)
            if isinstance(loc, BlobLocation) and loc.account is None and source.endpoint:
                loc = location(f"{source.endpoint}/{loc.container}/{urllib.parse.quote(loc.blob)}")
            info = loc.info() if isinstance(loc, BlobLocation) else None
        except StylebatchError:
            return False  # cannot tell (no access to the output's account): the job name still dedupes
        return info is not None and trigger.output_of(info.metadata) == name


def _queue_of(spec: vw.WatchSpec) -> tuple[str, str] | None:
    """(storage account, queue name) a queue-mode watch receives from; None in poll mode, or where its
    account cannot be told (no credentials: its round says so)."""
    if spec.mode != "queue" or not spec.queue:
        return None
    from stylebatch.storage import location, resolve_credential

    try:
        return resolve_credential(location(spec.source)).account, spec.queue
    except StylebatchError:
        return None


def _printable(name: str) -> str:
    """An upload's name (or a queue message's words) on one line, control characters escaped
    (storage.scrub.printable, imported here only: the operator loads no storage module at start)."""
    from stylebatch.storage.scrub import printable

    return printable(name)


def _one_line(exc: BaseException) -> str:
    """An error for status, events and logs: its first line (the Azure SDK's go on with the
    response's XML), any SAS or key in it redacted."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return redact(lines[0] if lines else type(exc).__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _age(stamp: str) -> float:
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - then).total_seconds()
