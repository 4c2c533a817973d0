"""Which uploaded videos start a job, when, under which name, and where the result goes: the pure
decisions shared by the VideoWatch operator (stylebatch_operator.videowatch) and `stylebatch watch`.
No torch, no Azure SDK, no I/O.

- `skip_reason`: a blob counts when its extension is a video one, it has at least `min_size` bytes,
  no path segment is hidden (".name": temp files of uploaders, stylebatch's own work dirs and
  records), an az:// URI can name it (`unaddressable`: no '//', no '?'), it is not in the archive
  tier nor still being copied into, and it is not an output (stylebatch tags what it writes with OUTPUT_TAG in the blob's
  metadata, naming the job that wrote it). The skips in TOLD are said to the uploader.
- `parse_event` / `event_skip_reason`: an Event Grid BlobCreated event (Event Grid or CloudEvents
  schema, base64 as Event Grid puts it on a storage queue) counts when its api committed the blob,
  as does a BlobRenamed of a file (an upload renamed into place).
- `Stability`: a listed blob is ready once its size and ETag were the same on two polls in a row.
- `job_name`: the same blob version (account, container, name, ETag) always gives the same name,
  a DNS-1035 label of at most JOB_NAME_LENGTH characters, so duplicates find the job already there.
- `output_name`: the output's URI from a pattern such as `az://stylized/{path}-{style}.mp4`.
- `overlaps`: whether outputs written by a pattern could land inside a watched prefix.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import posixpath
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from stylebatch.contract import OUTPUT_TAG

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
# The APIs after which a blob is committed and readable as a whole (Event Grid's data.api): the Blob
# service's, Data Lake's flush with close, and SFTP's commit (an SFTP put sends SftpCreate for the
# empty blob it opens, then SftpCommit once its bytes are written). PutBlock, an append, a Flush
# without close, SftpCreate or an SftpWrite of a resumable upload leave nothing whole to read yet.
COMMITTED_APIS = frozenset({"PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose", "SftpCommit"})
BLOB_RENAMED = "Microsoft.Storage.BlobRenamed"
# The renames of a file (Data Lake's RenameFile, SFTP's SftpRename; hierarchical-namespace accounts)
# that put a whole blob under its name and send no BlobCreated for it: an uploader that writes to a
# temporary name (WinSCP's cat.mp4.filepart, a hidden .cat.mp4) renames it when it is done. The event
# names the new blob (subject) but no ETag nor size: the blob, read when it is handled, gives them.
RENAME_APIS = frozenset({"RenameFile", "SftpRename"})
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts",
                    ".m2ts", ".mxf", ".wmv", ".flv", ".3gp")
# Child names add "-postprocess-NN" and the MPI operator "-worker-NNN" (the operator's
# stylebatch_operator.names.MAX_NAME_LENGTH is this value).
JOB_NAME_LENGTH = 40
HASH_LENGTH = 10
PLACEHOLDERS = ("path", "name", "dir", "ext", "style", "container")
# The one skip whose video never runs until its uploader acts: said to them (a warning, an event),
# where the others (not a video, an output, too small, hidden) are what the filters are for.
# Both are names no az:// URI of stylebatch's can carry (an empty folder name collapses into another
# blob's; a '?' starts the URI's query string), so the skip reasons `unaddressable` gives.
EMPTY_FOLDER = "an empty folder name ('//') in its name, which stylebatch cannot address: rename it"
QUESTION_MARK = "a '?' in its name, which stylebatch cannot address (a URI's query starts there): rename it"
UNADDRESSABLE = (EMPTY_FOLDER, QUESTION_MARK)
# A blob in the archive tier cannot be read until it is rehydrated (Set Blob Tier to Hot or Cool,
# hours): its job failed at once, and, the ETag the same after the rehydration, that failed job was
# the video's for good. Said to its uploader too; a listing after the rehydration finds it again.
ARCHIVE_TIER = "Archive"
ARCHIVED = "in the archive tier, which cannot be read: rehydrate it (set its tier to Hot or Cool)"
# A blob a Copy Blob still writes: on a hierarchical-namespace account its BlobCreated comes when
# the copy starts, and a copy from another account runs on for minutes, the ETag the same all along
# (so two listings find it "unchanged"). Its job read a partial blob. It counts once the copy is done.
COPY_PENDING = "a copy into it is still pending"
# The skips said to the uploader (a Warning Event, a log line), once per blob version.
TOLD = (*UNADDRESSABLE, ARCHIVED)
DEFAULT_EXTENSION = ".mp4"  # {ext} of an upload whose container stylebatch does not write
_DNS_UNSAFE = re.compile(r"[^a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class Filters:
    """Which blobs count: extensions (lower case, with the dot) and the least size in bytes."""

    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    min_size: int = 1

    @classmethod
    def of(cls, extensions: Iterable[str] | None = None, min_size: int | None = None) -> Filters:
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions or ()) or VIDEO_EXTENSIONS
        return cls(exts, max(1, min_size if min_size is not None else 1))


def skip_reason(relative_name: str, size: int, metadata: Mapping[str, str] | None, filters: Filters,
                tier: str = "", copy_status: str = "") -> str | None:
    """Why this blob (or file) does not start a job, or None when it does. relative_name: its name
    below the watched prefix; tier: its access tier (ARCHIVED when it is Archive); copy_status: its
    Copy Blob's (COPY_PENDING while it is "pending": not yet, where the other skips are for good)."""
    if any(segment.startswith(".") for segment in relative_name.split("/")):
        return "hidden (a temporary or stylebatch's own file)"
    if posixpath.splitext(relative_name)[1].lower() not in filters.extensions:
        return "not a video extension"
    if why := unaddressable(relative_name):
        return why
    job = output_of(metadata)
    if job:
        return f"an output of job {job}"
    if tier.lower() == ARCHIVE_TIER.lower():
        return ARCHIVED
    if copy_status.lower() == "pending":
        return COPY_PENDING
    if size < filters.min_size:
        return f"{size} bytes, less than {filters.min_size}"
    return None


def unaddressable(name: str) -> str | None:
    """Why no az:// URI stylebatch makes can name this blob (one of UNADDRESSABLE), or None: an empty
    folder name (`incoming//x.mp4`: its URI would name incoming/x.mp4, another blob) or a '?'
    (`q?x=1.mp4`: its URI's query, refused as one, storage.location). The video never runs until it is
    renamed, so its uploader is told (once), where the filters' skips are not."""
    if "" in name.split("/"):
        return EMPTY_FOLDER
    if "?" in name:
        return QUESTION_MARK
    return None


def output_of(metadata: Mapping[str, str] | None) -> str | None:
    """The job that wrote this blob, from its metadata (keys are case-insensitive in Azure)."""
    for key, value in (metadata or {}).items():
        if key.lower() == OUTPUT_TAG:
            return value or "?"
    return None


@dataclasses.dataclass(frozen=True)
class BlobEvent:
    """A BlobCreated event, reduced to what the decisions need."""

    account: str
    container: str
    blob: str
    api: str
    etag: str
    size: int
    event_type: str
    time: str = ""


class BadEvent(ValueError):
    """A queue message that is not a storage event: no retry can make it one."""


def parse_event(text: str | bytes) -> BlobEvent:
    """A queue message as Event Grid writes it (base64 of the event's JSON; plain JSON is accepted
    too, as is a one-event array), Event Grid or CloudEvents schema. BadEvent if it is neither."""
    raw = text.encode() if isinstance(text, str) else text
    body: Any = None
    for candidate in (raw, _unbase64(raw)):
        if candidate is None:
            continue
        try:
            body = json.loads(candidate)
            break
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # (nested past Python's limit)
            continue
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict):
        raise BadEvent("not an Event Grid event (neither JSON nor base64 of JSON)")
    data = body.get("data")
    event_type = body.get("eventType") or body.get("type")
    subject = body.get("subject")
    if not isinstance(data, dict) or not isinstance(event_type, str) or not isinstance(subject, str):
        raise BadEvent("not an Event Grid event (no eventType, subject or data)")
    match = re.fullmatch(r"/blobServices/default/containers/([^/]+)/blobs/(.+)", subject)
    if not match:
        raise BadEvent(f"not a blob event: subject {subject[:200]!r}")
    account = _account(body, data)
    try:
        size = int(data.get("contentLength") or 0)
    except (TypeError, ValueError, OverflowError):  # (1e400 is JSON's infinity)
        size = 0
    return BlobEvent(account=account, container=match.group(1), blob=match.group(2), api=str(data.get("api") or ""),
                     etag=str(data.get("eTag") or data.get("etag") or ""), size=size, event_type=event_type,
                     time=str(body.get("eventTime") or body.get("time") or ""))


def _unbase64(raw: bytes) -> bytes | None:
    try:
        return base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _account(body: dict[str, Any], data: dict[str, Any]) -> str:
    topic = str(body.get("topic") or body.get("source") or "")
    found = re.search(r"/storageAccounts/([^/]+)", topic)
    if found:
        return found.group(1)
    try:
        url = urlsplit(str(data.get("url") or ""))
        return (url.hostname or "").split(".", 1)[0]
    except ValueError:  # "http://[x" and the like: no account named
        return ""


def event_skip_reason(event: BlobEvent) -> str | None:
    """Why this event starts nothing (not a BlobCreated or a file's BlobRenamed, or the blob is not
    committed yet), or None."""
    apis = {BLOB_CREATED: COMMITTED_APIS, BLOB_RENAMED: RENAME_APIS}.get(event.event_type)
    if apis is None:
        return f"event type {event.event_type}"
    if event.api not in apis:
        return f"api {event.api or '(none)'} does not {'commit' if apis is COMMITTED_APIS else 'rename'} a blob"
    return None


def relative(blob: str, prefix: str) -> str | None:
    """blob's name below the watched prefix ('' = the whole container), or None if outside it."""
    head = prefix.strip("/")
    if not head:
        return blob
    return blob[len(head) + 1:] if blob.startswith(head + "/") else None


Version = tuple[int, str]  # (size, etag)


class Stability:
    """Blobs still being written are not picked up: a blob is ready once a poll finds it with the
    size and ETag the previous poll found. One instance per watch, fed every listing."""

    def __init__(self) -> None:
        self._last: dict[str, Version] = {}

    def observe(self, seen: Mapping[str, Version], complete: bool = True) -> list[str]:
        """The names in `seen` that are ready. `complete`: `seen` is a whole listing, so names not in
        it are gone (a partial page forgets nothing)."""
        ready = [name for name, version in seen.items() if self._last.get(name) == version]
        if complete:
            self._last = dict(seen)
        else:
            self._last.update(seen)
        return sorted(ready)

    def keep_only(self, names: Iterable[str]) -> None:
        """A listing read page by page has ended: forget what it did not find (deleted blobs)."""
        keep = set(names)
        self._last = {name: version for name, version in self._last.items() if name in keep}


def job_name(account: str, container: str, blob: str, etag: str, salt: str = "") -> str:
    """A DNS-1035 label (a letter first; lower-case letters, digits, '-'), at most JOB_NAME_LENGTH
    characters: the video's name, then a hash of everything that makes this upload unique. The same
    inputs always give the same name; a new ETag (a re-upload) a new one. salt: what else tells
    apart jobs of the same blob (the watch's namespace and name: two watches, two styles)."""
    digest = hashlib.sha256("\n".join([account, container, blob, etag.strip('"'), salt]).encode()).hexdigest()
    stem = posixpath.splitext(posixpath.basename(blob))[0].lower()
    slug = _DNS_UNSAFE.sub("-", stem).strip("-")
    if not slug[:1].isalpha():
        slug = ("v-" + slug).rstrip("-")
    slug = slug[:JOB_NAME_LENGTH - HASH_LENGTH - 1].rstrip("-")
    return f"{slug}-{digest[:HASH_LENGTH]}"


def pattern_problems(pattern: str) -> list[str]:
    """What is wrong with an output pattern, in words; [] when it is usable."""
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        return [f"output pattern {pattern!r} is malformed: {exc}"]
    problems = [f"output pattern {pattern!r}: unknown placeholder {{{f}}} (use {', '.join('{%s}' % p for p in PLACEHOLDERS)})"
                for f in fields if f not in PLACEHOLDERS]
    if "path" not in fields and "name" not in fields:
        problems.append(f"output pattern {pattern!r} needs {{path}} or {{name}}: otherwise every video "
                        "writes the same output")
    return problems


def output_name(pattern: str, relative_name: str, style: str = "", container: str = "") -> str:
    """The output of the video at relative_name (below the watched prefix): {path} is its relative
    path without the extension, {name} its file name without it, {dir} its folder ('' or 'a/b/'),
    {ext} its extension without the dot where stylebatch writes that container, else mp4 (a .flv or
    .ts upload would make a job that fails at once), {style} the style's name, {container} the
    source container. In an https:// pattern the name's parts are percent-encoded, as a URL's path
    is: a blob named `x?sv=...&sig=...` made a query string (taken for a SAS token) of its name, and
    `a%20b` and `a b` made one output."""
    from stylebatch.contract import CONTAINERS

    folder, base = posixpath.split(relative_name)
    stem, ext = posixpath.splitext(base)
    ext = ext.lower() if ext.lower() in CONTAINERS else DEFAULT_EXTENSION
    in_url = urlsplit(pattern).scheme.lower() in ("http", "https")

    def part(text: str) -> str:
        return quote(text, safe="/") if in_url else text

    return pattern.format(path=part(posixpath.join(folder, stem)), name=part(stem),
                          dir=part(f"{folder}/" if folder else ""), ext=ext.lstrip("."), style=part(style_label(style)),
                          container=container)


def style_label(style: str) -> str:
    """A style as it may appear in a file name: a built-in name as is, weights by their file name."""
    base = posixpath.basename(unquote(style.split("?", 1)[0])) or style
    return re.sub(r"[^A-Za-z0-9._-]+", "-", posixpath.splitext(base)[0] if "/" in style else base).strip("-")


def overlaps(source: str, pattern: str) -> bool:
    """True when an output of `pattern` could land inside the watched `source` (both URIs; the
    query strings ignored): the pattern's fixed start and the source prefix are on one path."""
    head = pattern.split("?", 1)[0].split("{", 1)[0]
    root = source.split("?", 1)[0].rstrip("/") + "/"
    return head.startswith(root) or root.startswith(head)
