"""Locations in Azure Blob Storage: a blob, or a prefix of blobs."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mimetypes
import os
import pathlib
import threading
import urllib.parse
import uuid
from typing import IO, Any, Iterator

from stylebatch.errors import StylebatchError
from stylebatch.contract import JOB_ENV, JOB_UID_ENV, OUTPUT_TAG, OUTPUT_UID_TAG
from stylebatch.storage import tuning
from stylebatch.storage.base import IDENTITY_SPAN, FileInfo, HeldLock, Location, LockBusy, identity_record
from stylebatch.storage.clients import service_client
from stylebatch.storage.credentials import resolve_credential, sas_permissions, sas_scope, sas_write_problem
from stylebatch.storage.errors import blob_errors, local_errors
from stylebatch.storage.files import atomic_file, open_source
from stylebatch.storage.scrub import printable

log = logging.getLogger("stylebatch.storage")
WRITE_CHECK = ".stylebatch-write-check"  # marker blobs of the pre-flight write check, deleted at once


@dataclasses.dataclass(frozen=True, repr=False)
class BlobLocation(Location):
    """A blob, or a prefix of blobs. account/endpoint are None for az:// (taken from the environment)."""

    uri: str = dataclasses.field(compare=False)
    container: str = ""
    blob: str = ""  # "" for the whole container; never starts or ends with "/"
    account: str | None = None
    endpoint: str | None = None  # e.g. https://acct.blob.core.windows.net or http://127.0.0.1:10000/acct
    sas: str | None = None

    @property
    def display(self) -> str:  # type: ignore[override]
        return printable(self._address(self.blob))

    @property
    def address(self) -> str:
        return self._address(self.blob)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.blob.rsplit("/", 1)[-1] if self.blob else self.container

    def child(self, *parts: str) -> BlobLocation:
        blob = "/".join([*filter(None, [self.blob]), *self._child_segments(parts)])
        uri = self._address(blob) + (f"?{self.sas}" if self.sas else "")
        return dataclasses.replace(self, uri=uri, blob=blob)

    def exists(self) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        with blob_errors(self, "check"):
            if self.blob and self._blob_client().exists():
                return True
            try:
                return next(self._walk(results_per_page=1), None) is not None
            except ResourceNotFoundError:  # no container
                return False

    def size(self) -> int:
        with blob_errors(self, "read"):
            return int(self._blob_client().get_blob_properties().size)

    def list(self) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        cut = len(self._prefix())
        with blob_errors(self, "list"):
            try:
                return sorted(props.name[cut:] for props in self._walk())
            except ResourceNotFoundError:  # a missing container holds no files, like a missing folder
                return []

    def list_info(self) -> list[FileInfo]:
        from azure.core.exceptions import ResourceNotFoundError

        with blob_errors(self, "list"):
            try:
                return sorted((self._info(props) for props in self._walk()), key=lambda i: i.name)
            except ResourceNotFoundError:
                return []

    def list_page(self, token: str | None, page_size: int) -> tuple[list[FileInfo], str | None]:
        """One page of list_info (at most page_size files, in name order) from a continuation token
        (None: from the start), and the token of the next page (None: that was the last)."""
        from azure.core.exceptions import ResourceNotFoundError

        with blob_errors(self, "list"):
            try:
                pages = self._container_client().list_blobs(
                    name_starts_with=self._prefix(), include=["metadata", "copy"], results_per_page=page_size,
                ).by_page(continuation_token=token)
                page = next(pages, [])
                infos = [self._info(p) for p in page if (p.metadata or {}).get("hdi_isfolder") != "true"]
                return infos, pages.continuation_token or None
            except ResourceNotFoundError:
                return [], None

    def info(self) -> FileInfo | None:
        """This blob's size, ETag and metadata as they are now; None when there is no such blob."""
        from azure.core.exceptions import ResourceNotFoundError

        with blob_errors(self, "read"):
            try:
                props = self._blob_client().get_blob_properties()
            except ResourceNotFoundError:
                return None
        # the ETag as a listing gives it (unquoted; properties quote it), so the two compare equal
        return FileInfo(self.blob, int(props.size), str(props.etag).strip('"'), props.last_modified.timestamp(),
                        dict(props.metadata or {}), _tier(props), _copy_status(props))

    def _info(self, props: Any) -> FileInfo:
        return FileInfo(props.name[len(self._prefix()):], int(props.size), str(props.etag),
                        props.last_modified.timestamp(), dict(props.metadata or {}), _tier(props), _copy_status(props))

    def read_bytes(self) -> bytes:
        with blob_errors(self, "read"):
            return self._blob_client().download_blob().readall()

    def write_bytes(self, data: bytes) -> None:
        log.debug("writing %d bytes to %s", len(data), self.display)
        with blob_errors(self, "write"):
            self._upload(data, len(data))

    def download(self, local_path: str | os.PathLike[str]) -> None:
        dest = pathlib.Path(local_path)
        log.debug("downloading %s to %s", self.display, printable(str(dest)))
        with local_errors(printable(str(dest)), "write"), blob_errors(self, "download"):
            stream = self._blob_client().download_blob(max_concurrency=tuning.settings.max_concurrency)
            with atomic_file(dest) as out:
                stream.readinto(out)

    def upload(self, local_path: str | os.PathLike[str]) -> None:
        source = pathlib.Path(local_path)
        source_display = printable(str(source))
        log.debug("uploading %s to %s", source_display, self.display)
        reader = open_source(source, source_display)
        # Outside blob_errors: the SDK reads the file itself, so read errors surface from it.
        with reader, local_errors(source_display, "read"), blob_errors(self, "upload"):
            self._upload(reader, os.fstat(reader.fileno()).st_size)

    def delete(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with blob_errors(self, "delete"), contextlib.suppress(ResourceNotFoundError):
            self._blob_client().delete_blob(delete_snapshots="include")

    def delete_tree(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        def delete(name: str) -> None:
            with contextlib.suppress(ResourceNotFoundError):
                container.delete_blob(name, delete_snapshots="include")

        with blob_errors(self, "delete"):
            container = self._container_client()
            try:
                names = [props.name for props in self._walk()]
            except ResourceNotFoundError:
                return
            log.debug("deleting %d blobs under %s", len(names), self.display)
            import concurrent.futures  # only here: deleting blobs in parallel

            with concurrent.futures.ThreadPoolExecutor(max(1, tuning.settings.max_concurrency)) as pool:
                for _ in pool.map(delete, names):
                    pass

    def check_writable(self) -> None:
        with blob_errors(self, "check"):
            if not self._container_exists():
                raise StylebatchError(f"cannot write {self.display}: there is no container "
                                      f"{self.container!r} in this storage account")
        if not self.blob:
            raise StylebatchError(f"{self.display} is a container, not a file")
        self._probe_write()

    def _probe_write(self) -> None:
        """Prove the credential may write here before any work: a SAS token must grant write and not
        have expired; then a small marker blob is created next to the blob and deleted again. A SAS
        that grants this one blob only, or no delete (a marker it wrote would stay in the user's
        folder, one a run), writes nothing: its signature is proven by reading the blob's properties
        where it grants reading (signed for another blob or container, or with a rotated key, it failed
        only after the whole stylize); else the token's own fields are all there is."""
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceExistsError

        cred = resolve_credential(self)
        if cred.kind == "sas":
            problem = sas_write_problem(cred.secret or "")
            if problem:
                raise StylebatchError(f"cannot write {self.display}: the SAS token ({cred.source}) {problem}")
            granted = sas_permissions(cred.secret or "")
            if sas_scope(cred.secret or "") in ("b", "bs", "bv") or (granted is not None and "d" not in granted):
                self._check_signature(cred.source)
                return
        folder = self.blob.rpartition("/")[0]
        marker = dataclasses.replace(self, blob=f"{folder}/{WRITE_CHECK}" if folder else WRITE_CHECK)
        marker = dataclasses.replace(marker, blob=f"{marker.blob}-{uuid.uuid4().hex[:12]}")
        if cred.kind == "sas" and cred.source == "the URL":  # the output's own SAS, not another URL's
            marker = dataclasses.replace(marker, sas=cred.secret)
        with blob_errors(self, "write"):
            try:
                marker._blob_client().upload_blob(b"", overwrite=False)
            except ResourceExistsError:
                pass
            except (ClientAuthenticationError, HttpResponseError) as exc:
                if exc.status_code not in (401, 403):
                    raise
                raise StylebatchError(
                    f"cannot write {self.display}: the storage credential ({cred.source}) does not allow writing "
                    f"there (read-only, expired or revoked); give one with write permission") from None
            try:
                marker._blob_client().delete_blob()
            except HttpResponseError as exc:
                log.warning("could not delete the write check %s (%s): delete it yourself",
                            marker.display, exc.status_code)

    def _check_signature(self, source: str) -> None:
        """A SAS token that the storage does not accept here at all (AuthenticationFailed, or Azurite's
        AuthorizationFailure) is refused, proven by reading this blob's properties (a 404 proves it
        too); one that may not read says nothing either way."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        with blob_errors(self, "check"):
            try:
                self._blob_client().get_blob_properties()
            except ResourceNotFoundError:
                return
            except HttpResponseError as exc:
                code = str(getattr(exc, "error_code", "") or "")
                if exc.status_code == 403 and code.rsplit(".", 1)[-1].replace("_", "").lower() in (
                        "authenticationfailed", "authorizationfailure"):
                    raise StylebatchError(
                        f"cannot write {self.display}: the SAS token ({source}) is not valid for it (signed for "
                        "another blob or container, or with a key since rotated); give one for this place") from None
                if exc.status_code != 403:
                    raise

    def identity(self) -> dict[str, str | int]:
        from azure.core import MatchConditions

        with blob_errors(self, "read"):
            client = self._blob_client()
            props = client.get_blob_properties()
            size, etag = int(props.size), str(props.etag)

            def read(offset: int) -> bytes:
                if size == 0:
                    return b""
                return client.download_blob(offset=offset, length=min(IDENTITY_SPAN, size - offset),
                                            etag=etag, match_condition=MatchConditions.IfNotModified).readall()

            return identity_record(size, f"etag:{etag}", read(0), read(max(0, size - IDENTITY_SPAN)))

    def lock(self, holder: dict[str, str]) -> HeldLock:
        """A blob lease on this blob (created empty if missing), renewed by a thread until release().
        A lease whose holder died is never broken: it expires LEASE_S seconds after its last renewal."""
        from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

        client = self._blob_client()
        with blob_errors(self, "lock"):
            for _ in range(3):
                try:
                    lease = client.acquire_lease(lease_duration=LEASE_S)
                    break
                except ResourceNotFoundError:
                    with contextlib.suppress(ResourceExistsError):
                        client.upload_blob(b"", overwrite=False)
                except HttpResponseError as exc:
                    if exc.status_code != 409:  # 409: LeaseAlreadyPresent
                        raise
                    raise LockBusy(self._lock_holder(client)) from None
            else:
                raise StylebatchError(f"cannot lock {self.display}: it keeps disappearing")
            public = {k: v for k, v in holder.items() if k != "token"}
            client.set_blob_metadata({k: printable(str(v)).encode("ascii", "replace").decode() for k, v in
                                      public.items()}, lease=lease)
        return _BlobLease(self, lease)

    def lock_outlives_holder_s(self) -> float:
        """A dead holder's lease expires at most LEASE_S after its last renewal."""
        return float(LEASE_S)

    def lock_held_by(self, token: str) -> bool:
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob import BlobLeaseClient

        with blob_errors(self, "check the lock"):
            try:
                BlobLeaseClient(self._blob_client(), lease_id=token).renew()
            except HttpResponseError as exc:
                if exc.status_code in (404, 409, 412):
                    return False
                raise
        return True

    def lock_holder(self) -> dict | None:
        from azure.core.exceptions import ResourceNotFoundError

        client = self._blob_client()
        with blob_errors(self, "check the lock"):
            try:
                props = client.get_blob_properties()
            except ResourceNotFoundError:
                return None
        return dict(props.metadata or {}) if props.lease.state == "leased" else None

    def _lock_holder(self, client: Any) -> dict:
        from azure.core.exceptions import AzureError

        try:
            return dict(client.get_blob_properties().metadata or {})
        except AzureError:
            return {}

    def _container_exists(self) -> bool:
        """True unless the container is known to be missing. A SAS scoped to the container may not
        read its properties: then listing tells, and if that is denied too, the upload will."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        container = self._container_client()
        try:
            return bool(container.exists())
        except HttpResponseError as exc:
            if exc.status_code != 403:
                raise
        try:
            next(iter(container.list_blobs(name_starts_with=self.blob, results_per_page=1)), None)
        except ResourceNotFoundError:
            return False
        except HttpResponseError as exc:
            if exc.status_code != 403:
                raise
        return True

    def _address(self, blob: str) -> str:
        """The URI of blob in this container, without the SAS."""
        if self.endpoint is None:
            return f"az://{self.container}/{blob}"
        return f"{self.endpoint}/{self.container}/{urllib.parse.quote(blob)}"

    def _prefix(self) -> str:
        return f"{self.blob}/" if self.blob else ""

    def _walk(self, **kwargs: Any) -> Iterator[Any]:
        """Committed blobs under the prefix, minus the directory markers of ADLS Gen2 accounts."""
        for props in self._container_client().list_blobs(
            name_starts_with=self._prefix(), include=["metadata", "copy"], **kwargs
        ):
            if (props.metadata or {}).get("hdi_isfolder") != "true":
                yield props

    def _upload(self, data: bytes | IO[bytes], length: int) -> None:
        from azure.storage.blob import ContentSettings

        content_type = mimetypes.guess_type(self.blob)[0] or "application/octet-stream"
        # A block blob appears only when its block list is committed: readers never see a partial one.
        self._blob_client().upload_blob(
            data,
            length=length,
            overwrite=True,
            max_concurrency=tuning.settings.max_concurrency,
            content_settings=ContentSettings(content_type=content_type),
            metadata=job_tag(),
        )

    def _container_client(self) -> Any:
        return service_client(self).get_container_client(self.container)

    def _blob_client(self) -> Any:
        if not self.blob:
            raise StylebatchError(f"{self.display} is a container, not a file")
        return service_client(self).get_blob_client(self.container, self.blob)


def job_tag() -> dict[str, str] | None:
    """The metadata that marks a blob as written by a job (stylebatch.contract.OUTPUT_TAG), so that
    a watch never takes it for an upload, and by which instance of it (OUTPUT_UID_TAG, where the
    operator says); None outside a job."""
    job = os.environ.get(JOB_ENV, "").strip()
    uid = os.environ.get(JOB_UID_ENV, "").strip()
    return ({OUTPUT_TAG: job, **({OUTPUT_UID_TAG: uid} if uid else {})}) if job else None


def written_by_this_job(metadata: dict[str, str] | None) -> bool:
    """Whether a blob's metadata says this very job (JOB_ENV and JOB_UID_ENV both set, both matching)
    wrote it; False outside such a job."""
    tag = job_tag() or {}
    if OUTPUT_UID_TAG not in tag:
        return False
    found = {key.lower(): value for key, value in (metadata or {}).items()}
    return all(found.get(key) == value for key, value in tag.items())


LEASE_S = 60  # the longest finite blob lease; renewed every LEASE_S / 4 seconds


class _BlobLease(HeldLock):
    def __init__(self, loc: BlobLocation, lease: Any) -> None:
        self.loc, self.lease, self.token = loc, lease, lease.id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="stylebatch-lease")
        self._thread.start()

    def _renew(self) -> None:
        from azure.core.exceptions import AzureError

        while not self._stop.wait(LEASE_S / 4):
            try:
                self.lease.renew()
            except AzureError as exc:
                log.warning("could not renew the lease on %s (%s): another run may take the work dir "
                            "if this goes on", self.loc.display, type(exc).__name__)

    def release(self) -> None:
        from azure.core.exceptions import AzureError

        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            self.loc._blob_client().delete_blob(lease=self.lease)
        except AzureError as exc:
            log.warning("could not release the lease on %s (%s): it expires within %d s",
                        self.loc.display, type(exc).__name__, LEASE_S)


def _tier(props: Any) -> str:
    """A blob's access tier as its name ("Archive"), whether the SDK gives it as text or as an enum."""
    tier = getattr(props, "blob_tier", None)
    return str(getattr(tier, "value", tier) or "")


def _copy_status(props: Any) -> str:
    """The status of the blob's last Copy Blob ("pending", "success", "aborted", "failed"), or ""."""
    status = getattr(getattr(props, "copy", None), "status", None)
    return str(getattr(status, "value", status) or "")
