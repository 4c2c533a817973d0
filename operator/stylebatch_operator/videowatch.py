"""VideoWatch decisions, pure (no server, no storage): what a watch's spec means, what to do with a
queue message or a blob, the StyleTransferJob a video gets, and the watch's status.

Exactly once by construction: a job's name is stylebatch.trigger.job_name of the blob's account,
container, name and ETag (salted with the watch's namespace and name), so a duplicate event, a
redelivery or a restarted operator finds the job already there, and the create's 409 is a success.
The thin kopf glue that lists, receives and creates is stylebatch_operator.videowatch_handlers.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from stylebatch import trigger

from stylebatch_operator.crd import DEFAULT_STYLE, SPEC_SCHEMA, apply_defaults
from stylebatch_operator.names import (
    API_VERSION, GROUP, KIND, LABEL_MANAGED_BY, LABEL_WATCH, MANAGED_BY, WATCH_KIND, is_controlled_by, owner_reference,
)
from stylebatch_operator.settings import Settings
from stylebatch_operator.spec import spec_problems
from stylebatch_operator.states import Phase
from stylebatch_operator.videowatch_crd import POISON_SUFFIX, WATCH_SPEC_SCHEMA

if TYPE_CHECKING:
    from stylebatch.storage.base import FileInfo

ANNOTATION_SOURCE = f"{GROUP}/source"
ANNOTATION_ETAG = f"{GROUP}/source-etag"
ANNOTATION_UPLOADED = f"{GROUP}/uploaded"

# What happens to a queue message or a listed blob. WAIT: not yet (a copy into the blob still
# pending): the message goes back on the queue, to be read again after the visibility timeout.
CREATE, IGNORE, POISON, WAIT = "create", "ignore", "poison", "wait"


@dataclasses.dataclass(frozen=True)
class WatchSpec:
    """A VideoWatch's spec with the CRD's defaults, taken apart."""

    source: str
    container: str
    prefix: str  # below the container, no slashes at the ends; "" for the whole container
    account: str | None  # from an https source; None for az:// (the operator's configured account)
    filters: trigger.Filters
    output: str
    template: dict[str, Any]
    max_jobs: int
    suspend: bool
    mode: str
    queue: str | None
    visibility_timeout: int
    max_deliveries: int
    poll_interval: int
    page_size: int
    max_seconds_per_poll: int
    sweep_interval: int

    @property
    def poison_queue(self) -> str | None:
        return f"{self.queue}{POISON_SUFFIX}" if self.queue else None


def read_spec(watch: Mapping[str, Any], settings: Settings) -> tuple[WatchSpec | None, list[str]]:
    """The watch's spec, or None and why it cannot work (what the CRD cannot check, for an API
    server without CEL or a spec written before a rule existed)."""
    from stylebatch.errors import StylebatchError
    from stylebatch.storage import BlobLocation, location

    spec = apply_defaults(dict(watch.get("spec") or {}), WATCH_SPEC_SCHEMA)
    problems = []
    try:
        source = location(spec.get("source") or "")
    except StylebatchError as exc:
        return None, [f"spec.source: {exc}"]
    if not isinstance(source, BlobLocation) or "?" in spec["source"]:
        return None, [f"spec.source {spec.get('source')!r} must be az://container/prefix or an https:// blob URL "
                      "without a SAS token"]
    output = str(spec.get("output") or "")
    problems += trigger.pattern_problems(output)
    if not problems and trigger.overlaps(as_az(spec["source"]), as_az(output)):
        problems.append(f"spec.output {output!r} is inside the watched source {spec['source']!r}: its outputs "
                        "would look like new uploads")
    if spec.get("mode") == "queue" and not (spec.get("queue") or {}).get("name"):
        problems.append("spec: mode queue needs queue.name")
    template = dict(spec.get("template") or {})
    if not problems:
        sample = job_manifest(watch, _parsed(spec, source, template), "sample.mp4", "0x0")
        problems += [p.replace("spec.", "spec.template.", 1) if p.startswith("spec.") else p
                     for p in spec_problems(sample, settings) if "is longer than" not in p]
    if problems:
        return None, problems
    return _parsed(spec, source, template), []


def _parsed(spec: dict[str, Any], source: Any, template: dict[str, Any]) -> WatchSpec:
    filters = spec.get("filters") or {}
    queue = spec.get("queue") or {}
    poll = apply_defaults(spec.get("poll") or {}, WATCH_SPEC_SCHEMA["properties"]["poll"])
    queue = apply_defaults(queue, WATCH_SPEC_SCHEMA["properties"]["queue"])
    return WatchSpec(
        source=spec["source"], container=source.container, prefix=source.blob, account=source.account,
        filters=trigger.Filters.of(filters.get("extensions"), filters.get("minSize")), output=spec["output"],
        template=template, max_jobs=int(spec["maxConcurrentJobs"]), suspend=bool(spec["suspend"]),
        mode=spec["mode"], queue=queue.get("name"), visibility_timeout=int(queue["visibilityTimeoutSeconds"]),
        max_deliveries=int(queue["maxDeliveries"]), poll_interval=int(poll["intervalSeconds"]),
        page_size=int(poll["pageSize"]), max_seconds_per_poll=int(poll["maxSecondsPerPoll"]),
        sweep_interval=int(spec["sweepIntervalSeconds"]),
    )


def as_az(uri: str) -> str:
    """A blob URI as az://container/path, so that an https source and an az:// output compare."""
    if uri.startswith("az://"):
        return uri
    parts = urllib.parse.urlsplit(uri.split("{", 1)[0])
    path = urllib.parse.unquote(parts.path).lstrip("/")
    host = parts.hostname or ""
    if "." not in host or host.replace(".", "").isdigit() or host == "localhost":  # path-style: /account/...
        path = path.split("/", 1)[1] if "/" in path else ""
    return "az://" + path + uri[len(uri.split("{", 1)[0]):]


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str  # CREATE, IGNORE or POISON
    reason: str = ""
    blob: str = ""  # the blob's name in the container
    etag: str = ""
    uploaded: str = ""  # when it was uploaded (the event's time), for the lag metric


def message_decision(text: str, dequeue_count: int, spec: WatchSpec, account: str) -> Decision:
    """A queue message before the blob is read: POISON (never an event, or delivered too often),
    IGNORE (not a committed video under the prefix), or CREATE pending blob_decision."""
    if dequeue_count > spec.max_deliveries:
        return Decision(POISON, f"delivered {dequeue_count} times without success")
    try:
        event = trigger.parse_event(text)
    except trigger.BadEvent as exc:
        return Decision(POISON, str(exc))
    why = trigger.event_skip_reason(event)
    if why is None and event.account != account:
        why = f"account {event.account}, not {account}"
    if why is None and event.container != spec.container:
        why = f"container {event.container}, not {spec.container}"
    rel = trigger.relative(event.blob, spec.prefix)
    if why is None and rel is None:
        why = f"{event.blob} is outside the watched prefix"
    if why is None:
        why = trigger.skip_reason(rel or "", max(event.size, spec.filters.min_size), None, spec.filters)
    if why is not None:
        return Decision(IGNORE, why, event.blob, event.etag)
    return Decision(CREATE, "", event.blob, event.etag, event.time)


def blob_decision(info: FileInfo | None, decision: Decision, spec: WatchSpec) -> Decision:
    """The blob as it is now, for an event: it must exist, be big enough, and not be an output; WAIT
    while a copy into it is pending (a hierarchical-namespace account's CopyBlob event comes when the
    copy starts). Its
    job is for the blob's ETag now: one changed since the event (its metadata or tier set, which
    sends no BlobCreated; or a newer upload, whose own event then finds the job made) was the video
    dropped as "superseded", though no event would come for it."""
    if info is None:
        return dataclasses.replace(decision, action=IGNORE, reason="the blob is gone (or was never committed)")
    if info.etag.strip('"') != decision.etag.strip('"'):
        decision = dataclasses.replace(decision, etag=info.etag)
    why = trigger.skip_reason(trigger.relative(decision.blob, spec.prefix) or "", info.size, info.metadata, spec.filters,
                              info.tier, info.copy_status)
    if why == trigger.COPY_PENDING:
        return dataclasses.replace(decision, action=WAIT, reason=why)
    if why is not None:
        return dataclasses.replace(decision, action=IGNORE, reason=why)
    return decision


def listed_candidates(infos: Iterable[FileInfo], spec: WatchSpec
                      ) -> tuple[dict[str, FileInfo], list[tuple[FileInfo, str]]]:
    """The listed blobs (names relative to the prefix) that count, by name; and those skipped until
    their uploader acts (trigger.TOLD: a name stylebatch cannot address, the archive tier), with
    why, which the user is told of."""
    counted: dict[str, FileInfo] = {}
    told: list[tuple[FileInfo, str]] = []
    for info in infos:
        why = trigger.skip_reason(info.name, info.size, info.metadata, spec.filters, info.tier, info.copy_status)
        if why is None:
            counted[info.name] = info
        elif why in trigger.TOLD:
            told.append((info, why))
    return counted, told


def job_name(watch: Mapping[str, Any], account: str, spec: WatchSpec, blob: str, etag: str) -> str:
    meta = watch["metadata"]
    return trigger.job_name(account, spec.container, blob, etag, salt=f"{meta['namespace']}/{meta['name']}")


def job_manifest(watch: Mapping[str, Any], spec: WatchSpec, blob: str, etag: str, *, name: str = "x",
                 uploaded: str = "") -> dict[str, Any]:
    """The StyleTransferJob for one upload: the template, the blob as input, the output from the
    pattern; owned by the watch (deleted with it), labelled with its name."""
    from stylebatch.storage import location

    meta = watch["metadata"]
    rel = trigger.relative(blob, spec.prefix) or blob
    style = str(spec.template.get("style") or DEFAULT_STYLE)
    job_spec = {**spec.template,
                "input": location(spec.source).child(rel).uri,
                "output": trigger.output_name(spec.output, rel, style, spec.container)}
    annotations = {ANNOTATION_SOURCE: f"az://{spec.container}/{blob}", ANNOTATION_ETAG: etag}
    if uploaded:
        annotations[ANNOTATION_UPLOADED] = uploaded
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": meta["namespace"],
                     "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_WATCH: meta["name"]},
                     "annotations": annotations,
                     "ownerReferences": [owner_reference(dict(watch), WATCH_KIND)] if meta.get("uid") else []},
        "spec": apply_defaults(job_spec, SPEC_SCHEMA),
    }


def job_counts(watch: Mapping[str, Any], jobs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """running / succeeded / failed among the watch's jobs, by their phase: the jobs it controls
    (its owner reference), not any job carrying its label (an orphaned one, from a watch of the
    same name deleted with --cascade=orphan, or one labelled by hand), which count against no
    watch's maxConcurrentJobs."""
    phases = [Phase.of(j.get("status") or {}) for j in jobs if is_controlled_by(j, watch)]
    return {"running": sum(not p.terminal for p in phases), "succeeded": phases.count(Phase.SUCCEEDED),
            "failed": phases.count(Phase.FAILED)}


def queue_owner(me: tuple[str, str], watches: Mapping[tuple[str, str], tuple[Any, str]]) -> tuple[str, str] | None:
    """The (namespace, name) of the watch that keeps the queue `me` receives from, when that is
    another one; else None. watches: (queue, creationTimestamp) of each watch the operator runs, the
    queue None for a watch that uses none. Of several on one queue (the same account's queue
    name), the first created keeps it (then the first by namespace and name)."""
    queue = watches.get(me, (None, ""))[0]
    if queue is None:
        return None
    first = min((created, key) for key, (their, created) in watches.items() if their == queue)[1]
    return None if first == me else first


def free_slots(spec: WatchSpec, running: int) -> int:
    """How many more jobs may start now."""
    return 0 if spec.suspend else max(0, spec.max_jobs - running)


def status_patch(current: Mapping[str, Any], **changes: Any) -> dict[str, Any] | None:
    """The merge patch that brings the status to `changes` (None when nothing changes). A nested
    dict (jobs) is compared as a whole."""
    patch = {k: v for k, v in changes.items() if current.get(k) != v}
    return patch or None
