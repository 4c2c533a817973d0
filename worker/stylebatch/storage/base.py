"""The Location interface both backends implement, and the path rules they share."""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import ipaddress
import os
import pathlib
from typing import Iterable, Mapping, Protocol

from stylebatch.errors import StylebatchError


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """A file as a listing shows it. etag: changes whenever the content may have (a blob's ETag; a
    local file's size and modification time); modified: seconds since the epoch; tier: a blob's
    access tier ("Hot", "Cool", "Cold", "Archive"; "" when not known or not a blob); copy_status: its
    last Copy Blob's ("pending" while the copy still writes it; "" when none or not a blob)."""

    name: str  # relative to the listed prefix, '/'-separated
    size: int
    etag: str
    modified: float
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tier: str = ""
    copy_status: str = ""


class LockBusy(Exception):
    """Another process holds the lock; holder is what it recorded about itself (host, pid, started)."""

    def __init__(self, holder: dict) -> None:
        super().__init__("lock busy")
        self.holder = holder


class HeldLock(abc.ABC):
    """An exclusive lock this process holds, until release(). token lets helpers (MPI ranks) prove
    that they work for the holder (Location.lock_held_by)."""

    token: str

    @abc.abstractmethod
    def release(self) -> None:
        """Let go and remove the lock file (a waiter then locks a new one); never raises."""


class BlobAddress(Protocol):
    """Where a blob is, as credentials, clients and error messages need it: what they take instead
    of storage.blob.BlobLocation, so that blob.py imports them and none of them imports blob.py."""

    uri: str
    container: str
    blob: str
    account: str | None
    endpoint: str | None
    sas: str | None

    @property
    def display(self) -> str: ...


class Location(abc.ABC):
    """A file, or a folder-like prefix holding files. Immutable and hashable; see the backends."""

    uri: str
    display: str
    name: str

    @property
    def address(self) -> str:
        """The location as a URI without any secret (no SAS query string): what may be stored in a
        work dir, passed in arguments, or given to location() in a later stage, which then takes the
        credential from the environment (or from a SAS URL given earlier: storage.credentials)."""
        return self.uri

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display!r})"

    def __str__(self) -> str:
        return self.display

    @abc.abstractmethod
    def child(self, *parts: str) -> Location:
        """The location below this one: child("parts", "000.mkv") == child("parts/000.mkv")."""

    @abc.abstractmethod
    def exists(self) -> bool:
        """True if a file is here, or if this is a prefix with at least one file under it."""

    @abc.abstractmethod
    def size(self) -> int:
        """Size of the file in bytes."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Sorted '/'-separated names of every file under this prefix, relative to it; [] if none."""

    @abc.abstractmethod
    def list_info(self) -> list[FileInfo]:
        """Like list(), with each file's size, ETag, modification time and metadata."""

    @abc.abstractmethod
    def info(self) -> FileInfo | None:
        """This file's size, ETag, modification time and metadata as they are now; None if there is none."""

    @abc.abstractmethod
    def read_bytes(self) -> bytes:
        """The whole file: for small files such as manifests."""

    @abc.abstractmethod
    def write_bytes(self, data: bytes) -> None:
        """Replace the file atomically."""

    @abc.abstractmethod
    def download(self, local_path: str | os.PathLike[str]) -> None:
        """Stream the file to local_path (created atomically, parent folders included)."""

    @abc.abstractmethod
    def upload(self, local_path: str | os.PathLike[str]) -> None:
        """Stream local_path here; readers see the old file or the whole new one."""

    @abc.abstractmethod
    def delete(self) -> None:
        """Delete the file; a missing one is fine."""

    @abc.abstractmethod
    def delete_tree(self) -> None:
        """Delete every file under this prefix (not a file at exactly this location)."""

    @abc.abstractmethod
    def check_writable(self) -> None:
        """A cheap check that a file can be written here (local: the parent folder exists and is
        writable; blob: the container exists and the credential may write this blob, proven by a
        marker blob written and deleted next to it, or, where that would stay, by its SAS token's
        fields and signature); a one-line StylebatchError if not."""

    @abc.abstractmethod
    def identity(self) -> dict[str, str | int]:
        """What tells this file's bytes from others without reading them all: size, modification
        time (local) or ETag (blob), and the sha256 of its first and last MiB."""

    @abc.abstractmethod
    def lock(self, holder: dict[str, str]) -> HeldLock:
        """Take the exclusive lock whose file is this location, recording holder (str values) in it;
        LockBusy at once, naming the holder, if another process has it."""

    @abc.abstractmethod
    def lock_held_by(self, token: str) -> bool:
        """True if the lock at this location is held now by the holder whose token this is."""

    @abc.abstractmethod
    def lock_holder(self) -> dict | None:
        """What the holder of the lock at this location recorded (as LockBusy.holder), or None when
        nobody holds it now (no lock file, or one a holder let go or died with). Takes nothing."""

    def lock_outlives_holder_s(self) -> float:
        """How long a lock here can outlive a holder that died: 0 for a local lock file (the kernel
        lets go when the process ends, however it ends)."""
        return 0.0

    def is_local(self) -> bool:
        return False

    def local_path(self) -> pathlib.Path | None:
        return None

    def _child_segments(self, parts: tuple[str, ...]) -> list[str]:
        return split_path(parts, f"bad path below {self.display}: '.' and '..' are not allowed")


def split_path(parts: Iterable[str], error: str) -> list[str]:
    """The non-empty '/'-separated segments of parts; StylebatchError(error) if one is '.' or '..'."""
    found = [s for part in parts for s in part.split("/") if s]
    if any(s in (".", "..") for s in found):
        raise StylebatchError(error)
    return found


def is_path_style(host: str) -> bool:
    """Azurite and other emulators put the account in the path: an IP, localhost or a bare service name."""
    if host == "localhost" or "." not in host:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def not_blob_storage(host: str) -> str:
    """For an error about a URL whose host is no Blob Storage endpoint's (not <account>.blob.<cloud's
    suffix>, nor an emulator's), what stylebatch reads instead, to end the error with; "" otherwise.
    (A web address given for a painting or a video was 'refusing to send the credentials of storage
    account 'upload'' or 'container names are 3-63 lowercase letters': true, and no help.)"""
    labels = host.lower().split(".")
    if is_path_style(host) or (len(labels) > 2 and labels[1] in ("blob", "dfs")):
        return ""
    return (f" ({host} is no Azure Blob Storage endpoint: stylebatch reads local files, az:// URIs and blob "
            "URLs, https://<account>.blob.core.windows.net/...; download the file first)")


IDENTITY_SPAN = 1024 * 1024  # identity() hashes this many bytes at each end of the file


def identity_record(size: int, stamp: str, head: bytes, tail: bytes) -> dict[str, str | int]:
    """The identity() both backends return: size, stamp, and the sha256 of the first and last span."""
    digest = hashlib.sha256(head)
    digest.update(tail)
    return {"size": size, "stamp": stamp, "ends_sha256": digest.hexdigest()}
