"""Where videos, manifests and parts live: a local folder or Azure Blob Storage, behind one small API.

`location(uri)` turns a local path, a `file://` URI, `az://<container>/<path>` (account from the
environment) or a blob URL (`https://<account>.blob.core.windows.net/...[?<sas>]`, or path-style
`http://127.0.0.1:10000/<account>/...` for Azurite) into a `Location`. Every write is atomic: readers
see the old object or the whole new one, never a half-written one. Every failure is a one-line
`StylebatchError` that names the object by its `display` URI, which never carries a secret.

Blob credentials, first match wins: a SAS in the URL; AZURE_STORAGE_CONNECTION_STRING;
AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_SAS_TOKEN, else AZURE_STORAGE_KEY, else
DefaultAzureCredential (AKS workload identity). AZURE_STORAGE_BLOB_ENDPOINT overrides the endpoint of
az:// locations. Tune transfers by replacing the module-level `settings`.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import mimetypes
import os
import pathlib
import re
import secrets
import shutil
import urllib.parse
from typing import IO, Any, Iterator

from stylebatch.errors import StylebatchError

log = logging.getLogger(__name__)

# Handed to azure-core as its HTTP logger, which would log every request's URL and headers at INFO.
# Built directly rather than with getLogger, so no logging configuration can ever switch it on.
_AZURE_HTTP_LOG = logging.Logger("stylebatch.storage.azure_http", level=logging.CRITICAL + 1)
_AZURE_HTTP_LOG.disabled = True

_SAS_SIGNATURE = re.compile(r"((?:^|[?&\s])sig=)[^&\s\"']+")


class _RedactSasSignature(logging.Filter):
    """urllib3 logs every request line at DEBUG, query string included: blank out a SAS signature."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "sig=" in message:
            record.msg, record.args = _SAS_SIGNATURE.sub(r"\1REDACTED", message), None
        return True


_URLLIB3_LOG = logging.getLogger("urllib3.connectionpool")
if not any(isinstance(f, _RedactSasSignature) for f in _URLLIB3_LOG.filters):
    _URLLIB3_LOG.addFilter(_RedactSasSignature())

_CREDENTIAL_HELP = (
    "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_SAS_TOKEN, "
    "AZURE_STORAGE_KEY or a workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, "
    "AZURE_FEDERATED_TOKEN_FILE), or use a blob URL with a SAS token"
)
_AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_CONTAINER_NAME = re.compile(r"^(?:[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}|\$root|\$web|\$logs)$")
_ACCOUNT_NAME = re.compile(r"^[a-z0-9]{3,24}$")
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{8}\.partial$")
_MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TransferSettings:
    """Blob transfer tuning. Files above max_single_put_size go up as staged blocks (committed at
    the end, so still atomic); downloads above max_single_get_size come down in ranged chunks."""

    max_concurrency: int = 4
    max_single_put_size: int = 64 * _MiB
    max_block_size: int = 8 * _MiB
    max_single_get_size: int = 32 * _MiB
    max_chunk_get_size: int = 8 * _MiB
    retry_total: int = 3
    retry_backoff_s: int = 2
    connection_timeout_s: float = 20.0
    read_timeout_s: float = 120.0


settings = TransferSettings()


def location(uri: str | os.PathLike[str]) -> Location:
    """Parse a local path, file:// URI, az:// URI or blob URL. StylebatchError if malformed."""
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri:
        raise StylebatchError("empty storage location: give a local path, az://<container>/<path> or a blob URL")
    match = _URI_SCHEME.match(uri)
    if not match:
        return LocalLocation(uri=uri, path=pathlib.Path(uri))
    scheme = match.group(1).lower()
    if scheme == "file":
        return _parse_file_uri(uri)
    if scheme == "az":
        return _parse_az_uri(uri)
    if scheme in ("http", "https"):
        return _parse_blob_url(uri)
    raise StylebatchError(
        f"unsupported storage URI {_scrub_uri(uri)}: "
        "use a local path, file://, az://<container>/<path> or an https:// blob URL"
    )


class Location(abc.ABC):
    """A file, or a folder-like prefix holding files. Immutable and hashable; see the backends."""

    uri: str
    display: str
    name: str

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

    def is_local(self) -> bool:
        return False

    def local_path(self) -> pathlib.Path | None:
        return None


# --------------------------------------------------------------------------- local filesystem


@dataclasses.dataclass(frozen=True, repr=False)
class LocalLocation(Location):
    uri: str = dataclasses.field(compare=False)  # "out/" and "out" are the same place
    path: pathlib.Path

    @property
    def display(self) -> str:  # type: ignore[override]
        return _printable(str(self.path))

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.path.name

    def child(self, *parts: str) -> LocalLocation:
        path = self.path.joinpath(*_segments(parts, self.display))
        return LocalLocation(uri=str(path), path=path)

    def exists(self) -> bool:
        return self.path.is_file() or next(self._files(), None) is not None

    def size(self) -> int:
        with _local_errors(self.display, "read"):
            self._require_file()
            return self.path.stat().st_size

    def list(self) -> list[str]:
        return sorted(self._files())

    def read_bytes(self) -> bytes:
        with _local_errors(self.display, "read"):
            self._require_file()
            return self.path.read_bytes()

    def write_bytes(self, data: bytes) -> None:
        with _local_errors(self.display, "write"), _atomic_file(self.path) as out:
            out.write(data)

    def download(self, local_path: str | os.PathLike[str]) -> None:
        _copy_local(self.path, self.display, pathlib.Path(local_path))

    def upload(self, local_path: str | os.PathLike[str]) -> None:
        source = pathlib.Path(local_path)
        _copy_local(source, _printable(str(source)), self.path, self.display)

    def delete(self) -> None:
        with _local_errors(self.display, "delete"):
            if self.path.is_dir():
                raise StylebatchError(f"cannot delete {self.display}: it is a folder")
            self.path.unlink(missing_ok=True)

    def delete_tree(self) -> None:
        if not self.path.is_dir():
            return
        with _local_errors(self.display, "delete"):
            shutil.rmtree(self.path)

    def is_local(self) -> bool:
        return True

    def local_path(self) -> pathlib.Path:
        return self.path

    def _require_file(self) -> None:
        if self.path.is_dir():
            raise StylebatchError(f"{self.display} is a folder, not a file")

    def _files(self) -> Iterator[str]:
        """Relative names of the files under this folder, minus in-progress atomic writes."""
        for folder, _, files in os.walk(self.path, onerror=self._raise_walk_error):
            rel = pathlib.PurePath(folder).relative_to(self.path)
            yield from ((rel / f).as_posix() for f in files if not _PARTIAL.match(f))

    def _raise_walk_error(self, exc: OSError) -> None:
        if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            raise _os_error(exc, self.display, "list")


def _parse_file_uri(uri: str) -> LocalLocation:
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise StylebatchError(f"malformed file URI {_scrub_uri(uri)}: expected file:///absolute/path")
    return LocalLocation(uri=uri, path=pathlib.Path(urllib.parse.unquote(parts.path)))


def _open_source(path: pathlib.Path) -> IO[bytes]:
    """Opens a local file to be copied or uploaded (a seam for fault-injection tests)."""
    return open(path, "rb")


@contextlib.contextmanager
def _atomic_file(dest: pathlib.Path) -> Iterator[IO[bytes]]:
    """A temp file next to dest, renamed over it only once fully written and synced."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.parent / f".{dest.name[:200]}.{secrets.token_hex(4)}.partial"
    try:
        with open(temp, "xb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _copy_local(source: pathlib.Path, source_display: str, dest: pathlib.Path, dest_display: str | None = None) -> None:
    dest_display = dest_display or _printable(str(dest))
    with _local_errors(source_display, "read"):
        if source.is_dir():
            raise StylebatchError(f"{source_display} is a folder, not a file")
        reader = _open_source(source)
    with reader, _local_errors(dest_display, "write"), _atomic_file(dest) as out:
        while True:
            with _local_errors(source_display, "read"):
                chunk = reader.read(4 * _MiB)
            if not chunk:
                break
            out.write(chunk)


@contextlib.contextmanager
def _local_errors(display: str, action: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _os_error(exc, display, action) from None


def _os_error(exc: OSError, display: str, action: str) -> StylebatchError:
    if isinstance(exc, FileNotFoundError) and action != "write":
        return StylebatchError(f"not found: {display}")
    if isinstance(exc, IsADirectoryError):
        return StylebatchError(f"{display} is a folder, not a file")
    if isinstance(exc, PermissionError):
        return StylebatchError(f"permission denied: cannot {action} {display}")
    reason = exc.strerror or type(exc).__name__
    return StylebatchError(f"cannot {action} {display}: {_one_line(reason)}")


# --------------------------------------------------------------------------- Azure Blob


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
        if self.endpoint is None:
            return _printable(f"az://{self.container}/{self.blob}")
        return _printable(f"{self.endpoint}/{self.container}/{urllib.parse.quote(self.blob)}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.blob.rsplit("/", 1)[-1] if self.blob else self.container

    def child(self, *parts: str) -> BlobLocation:
        blob = "/".join([*filter(None, [self.blob]), *_segments(parts, self.display)])
        if self.endpoint is None:
            uri = f"az://{self.container}/{blob}"
        else:
            uri = f"{self.endpoint}/{self.container}/{urllib.parse.quote(blob)}"
            uri += f"?{self.sas}" if self.sas else ""
        return dataclasses.replace(self, uri=uri, blob=blob)

    def exists(self) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        with _blob_errors(self, "check"):
            if self.blob and self._blob_client().exists():
                return True
            try:
                return next(self._walk(results_per_page=1), None) is not None
            except ResourceNotFoundError:  # no container
                return False

    def size(self) -> int:
        with _blob_errors(self, "read"):
            return int(self._blob_client().get_blob_properties().size)

    def list(self) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        cut = len(self._prefix())
        with _blob_errors(self, "list"):
            try:
                return sorted(props.name[cut:] for props in self._walk())
            except ResourceNotFoundError:  # a missing container holds no files, like a missing folder
                return []

    def read_bytes(self) -> bytes:
        with _blob_errors(self, "read"):
            return self._blob_client().download_blob().readall()

    def write_bytes(self, data: bytes) -> None:
        log.debug("writing %d bytes to %s", len(data), self.display)
        with _blob_errors(self, "write"):
            self._upload(data, len(data))

    def download(self, local_path: str | os.PathLike[str]) -> None:
        dest = pathlib.Path(local_path)
        log.debug("downloading %s to %s", self.display, _printable(str(dest)))
        with _local_errors(_printable(str(dest)), "write"), _blob_errors(self, "download"):
            stream = self._blob_client().download_blob(max_concurrency=settings.max_concurrency)
            with _atomic_file(dest) as out:
                stream.readinto(out)

    def upload(self, local_path: str | os.PathLike[str]) -> None:
        source = pathlib.Path(local_path)
        source_display = _printable(str(source))
        log.debug("uploading %s to %s", source_display, self.display)
        with _local_errors(source_display, "read"):
            if source.is_dir():
                raise StylebatchError(f"{source_display} is a folder, not a file")
            reader = _open_source(source)
        # Outside _blob_errors: the SDK reads the file itself, so read errors surface from it.
        with reader, _local_errors(source_display, "read"), _blob_errors(self, "upload"):
            self._upload(reader, os.fstat(reader.fileno()).st_size)

    def delete(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with _blob_errors(self, "delete"), contextlib.suppress(ResourceNotFoundError):
            self._blob_client().delete_blob(delete_snapshots="include")

    def delete_tree(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        def delete(name: str) -> None:
            with contextlib.suppress(ResourceNotFoundError):
                container.delete_blob(name, delete_snapshots="include")

        with _blob_errors(self, "delete"):
            container = self._container_client()
            try:
                names = [props.name for props in self._walk()]
            except ResourceNotFoundError:
                return
            log.debug("deleting %d blobs under %s", len(names), self.display)
            with concurrent.futures.ThreadPoolExecutor(max(1, settings.max_concurrency)) as pool:
                for _ in pool.map(delete, names):
                    pass

    def _prefix(self) -> str:
        return f"{self.blob}/" if self.blob else ""

    def _walk(self, **kwargs: Any) -> Iterator[Any]:
        """Committed blobs under the prefix, minus the directory markers of ADLS Gen2 accounts."""
        for props in self._container_client().list_blobs(
            name_starts_with=self._prefix(), include=["metadata"], **kwargs
        ):
            if (props.metadata or {}).get("hdi_isfolder") != "true":
                yield props

    def _upload(self, data: bytes | IO[bytes], length: int) -> None:
        from azure.storage.blob import ContentSettings

        if not self.blob:
            raise StylebatchError(f"{self.display} is a container, not a file")
        content_type = mimetypes.guess_type(self.blob)[0] or "application/octet-stream"
        # A block blob appears only when its block list is committed: readers never see a partial one.
        self._blob_client().upload_blob(
            data,
            length=length,
            overwrite=True,
            max_concurrency=settings.max_concurrency,
            content_settings=ContentSettings(content_type=content_type),
        )

    def _container_client(self) -> Any:
        return _service_client_for(self).get_container_client(self.container)

    def _blob_client(self) -> Any:
        if not self.blob:
            raise StylebatchError(f"{self.display} is a container, not a file")
        return _service_client_for(self).get_blob_client(self.container, self.blob)


def _parse_az_uri(uri: str) -> BlobLocation:
    safe = _scrub_uri(uri)
    if "?" in uri:
        raise StylebatchError(
            f"malformed storage URI {safe}: az:// takes no query string; put a SAS token in "
            "AZURE_STORAGE_SAS_TOKEN or use an https:// blob URL"
        )
    container, _, path = uri[len("az://"):].partition("/")
    _check_container(container, safe)
    blob = "/".join(_path_segments(path, safe))
    return BlobLocation(uri=uri, container=container, blob=blob)


def _parse_blob_url(uri: str) -> BlobLocation:
    safe = _scrub_uri(uri)
    try:
        parts = urllib.parse.urlsplit(uri)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        raise StylebatchError(f"malformed blob URL {safe}: bad host or port") from None
    if parts.username or parts.password:
        raise StylebatchError(f"malformed blob URL {safe}: credentials in the host part are not supported")
    if not host:
        raise StylebatchError(f"malformed blob URL {safe}: no host")
    segments = parts.path.split("/")[1:]
    netloc = f"{host}:{port}" if port else host
    if ":" in host:
        netloc = f"[{host}]:{port}" if port else f"[{host}]"
    if _is_path_style(host):
        account = urllib.parse.unquote(segments.pop(0)) if segments else ""
        endpoint = f"{parts.scheme.lower()}://{netloc}/{account}"
    else:
        account = host.split(".", 1)[0]
        endpoint = f"{parts.scheme.lower()}://{netloc}"
    if not _ACCOUNT_NAME.match(account):
        raise StylebatchError(f"malformed blob URL {safe}: '{_printable(account)}' is not a storage account name")
    container = urllib.parse.unquote(segments.pop(0)) if segments else ""
    _check_container(container, safe)
    path = urllib.parse.unquote("/".join(segments))
    blob = "/".join(_path_segments(path, safe))
    return BlobLocation(uri=uri, container=container, blob=blob, account=account,
                        endpoint=endpoint, sas=_sas_from_query(parts.query, safe))


def _is_path_style(host: str) -> bool:
    """Azurite and other emulators put the account in the path: an IP, localhost or a bare service name."""
    if host == "localhost" or "." not in host:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _sas_from_query(query: str, safe: str) -> str | None:
    if not query:
        return None
    fields = urllib.parse.parse_qs(query, keep_blank_values=True)
    if "sig" not in fields:
        raise StylebatchError(f"malformed blob URL {safe}: the query string is not a SAS token (no sig=)")
    return query


def _check_container(container: str, safe: str) -> None:
    if not container:
        raise StylebatchError(f"malformed storage URI {safe}: no container, expected az://<container>/<path>")
    if not _CONTAINER_NAME.match(container):
        raise StylebatchError(
            f"malformed storage URI {safe}: container names are 3-63 lowercase letters, digits and single hyphens"
        )


def _path_segments(path: str, safe: str) -> list[str]:
    segments = [s for s in path.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise StylebatchError(f"malformed storage URI {safe}: '.' and '..' are not allowed in blob paths")
    if len("/".join(segments)) > 1024:
        raise StylebatchError(f"malformed storage URI {safe}: blob names are at most 1024 characters")
    return segments


def _segments(parts: tuple[str, ...], display: str) -> list[str]:
    segments = [s for part in parts for s in part.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise StylebatchError(f"bad path below {display}: '.' and '..' are not allowed")
    return segments


# --------------------------------------------------------------------------- Azure credentials


@dataclasses.dataclass(frozen=True)
class BlobCredential:
    """Which credential signs requests to one account endpoint. The secret never reaches a repr."""

    endpoint: str
    account: str
    kind: str  # "sas" | "key" | "identity"
    source: str  # where it came from, for messages: "the URL", "AZURE_STORAGE_KEY", ...
    secret: str | None = dataclasses.field(default=None, repr=False)


def resolve_credential(loc: BlobLocation) -> BlobCredential:
    """Pick the credential for loc, in the documented order (first match wins)."""
    env = os.environ
    override = env.get("AZURE_STORAGE_BLOB_ENDPOINT", "").strip().rstrip("/") or None
    if loc.sas and loc.endpoint and loc.account:
        return BlobCredential(loc.endpoint, loc.account, "sas", "the URL", loc.sas)
    if env.get("AZURE_STORAGE_CONNECTION_STRING", "").strip():
        account, endpoint, kind, secret = _parse_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
        if loc.account in (None, account):
            endpoint = loc.endpoint or override or endpoint
            return BlobCredential(endpoint, account, kind, "AZURE_STORAGE_CONNECTION_STRING", secret)
    account = env.get("AZURE_STORAGE_ACCOUNT", "").strip()
    if account and loc.account in (None, account):
        endpoint = loc.endpoint or override or f"https://{account}.blob.core.windows.net"
        if env.get("AZURE_STORAGE_SAS_TOKEN", "").strip():
            sas = env["AZURE_STORAGE_SAS_TOKEN"].strip().lstrip("?")
            return BlobCredential(endpoint, account, "sas", "AZURE_STORAGE_SAS_TOKEN", sas)
        if env.get("AZURE_STORAGE_KEY", "").strip():
            return BlobCredential(endpoint, account, "key", "AZURE_STORAGE_KEY", env["AZURE_STORAGE_KEY"].strip())
        return BlobCredential(endpoint, account, "identity", "DefaultAzureCredential")
    if loc.account and loc.endpoint:
        # A URL names its account; a workload or managed identity may still have access to it.
        return BlobCredential(loc.endpoint, loc.account, "identity", "DefaultAzureCredential")
    raise StylebatchError(f"no storage account configured for {loc.display}: {_CREDENTIAL_HELP}")


def _parse_connection_string(text: str) -> tuple[str, str, str, str]:
    """(account, blob endpoint, credential kind, secret). Errors never quote the string."""
    fields: dict[str, str] = {}
    for item in text.strip().split(";"):
        key, sep, value = item.partition("=")
        if item.strip() and not sep:
            raise StylebatchError(
                "AZURE_STORAGE_CONNECTION_STRING is malformed: expected Key=Value pairs separated by ';'"
            )
        if sep:
            fields[key.strip().lower()] = value.strip()
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return "devstoreaccount1", "http://127.0.0.1:10000/devstoreaccount1", "key", _AZURITE_KEY
    account = fields.get("accountname", "")
    endpoint = fields.get("blobendpoint", "").rstrip("/")
    if not endpoint and account:
        protocol = fields.get("defaultendpointsprotocol", "https")
        endpoint = f"{protocol}://{account}.blob.{fields.get('endpointsuffix', 'core.windows.net')}"
    if endpoint and not account:
        account = _account_from_endpoint(endpoint)
    if fields.get("sharedaccesssignature") and endpoint:
        return account, endpoint, "sas", fields["sharedaccesssignature"].lstrip("?")
    if fields.get("accountkey") and account:
        return account, endpoint, "key", fields["accountkey"]
    raise StylebatchError(
        "AZURE_STORAGE_CONNECTION_STRING is malformed: it needs AccountName and AccountKey, "
        "or BlobEndpoint and SharedAccessSignature"
    )


def _account_from_endpoint(endpoint: str) -> str:
    parts = urllib.parse.urlsplit(endpoint)
    if _is_path_style(parts.hostname or ""):
        return parts.path.strip("/").split("/")[0]
    return (parts.hostname or "").split(".", 1)[0]


def service_client(loc: BlobLocation) -> Any:
    """The BlobServiceClient for loc's account and credential, created once and reused."""
    return _service_client_for(loc)


def clear_client_cache() -> None:
    """Forget cached clients and the cached Azure identity (after the environment changed)."""
    _service_client.cache_clear()
    _default_azure_credential.cache_clear()


def _service_client_for(loc: BlobLocation) -> Any:
    cred = resolve_credential(loc)
    if cred.kind == "identity" and not cred.endpoint.startswith("https://"):
        raise StylebatchError(
            f"cannot use an Azure identity over plain http for {loc.display}: {_CREDENTIAL_HELP}"
        )
    return _service_client(cred.endpoint, cred.account, cred.kind, cred.secret, settings)


@functools.lru_cache(maxsize=32)
def _service_client(endpoint: str, account: str, kind: str, secret: str | None, tuning: TransferSettings) -> Any:
    """One client (and connection pool) per account endpoint, credential and tuning."""
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
    from azure.storage.blob import BlobServiceClient, ExponentialRetry

    credential: Any
    if kind == "sas":
        credential = AzureSasCredential(secret or "")
    elif kind == "key":
        credential = AzureNamedKeyCredential(account, secret or "")
    else:
        credential = _default_azure_credential()
    return BlobServiceClient(
        endpoint,
        credential=credential,
        logging_enable=False,  # the storage policy's own request logging can leak a SAS signature
        logger=_AZURE_HTTP_LOG,
        retry_policy=ExponentialRetry(
            initial_backoff=tuning.retry_backoff_s, increment_base=2,
            retry_total=tuning.retry_total, random_jitter_range=1,
        ),
        connection_timeout=tuning.connection_timeout_s,
        read_timeout=tuning.read_timeout_s,
        max_single_put_size=tuning.max_single_put_size,
        max_block_size=tuning.max_block_size,
        max_single_get_size=tuning.max_single_get_size,
        max_chunk_get_size=tuning.max_chunk_get_size,
    )


@functools.lru_cache(maxsize=1)
def _default_azure_credential() -> Any:
    from azure.identity import DefaultAzureCredential

    # On failure the chain logs a multi-line WARNING listing every credential it tried; we report
    # the failure ourselves, in one line. A logger the application configured is left alone.
    chain_log = logging.getLogger("azure.identity._credentials.chained")
    if chain_log.level == logging.NOTSET:
        chain_log.setLevel(logging.ERROR)
    return DefaultAzureCredential()


# --------------------------------------------------------------------------- Azure errors


@contextlib.contextmanager
def _blob_errors(loc: BlobLocation, action: str) -> Iterator[None]:
    """Turn azure-core exceptions into one-line messages naming loc.display, without secrets."""
    from azure.core import exceptions as az

    try:
        yield
    except az.ClientAuthenticationError as exc:
        if exc.status_code is None:  # raised before any request: signing failed, or no token
            cred = resolve_credential(loc)
            if cred.kind != "identity":
                raise StylebatchError(
                    f"cannot sign requests for {loc.display}: the account key in {cred.source} is malformed"
                ) from None
            raise StylebatchError(
                f"could not get a token from an Azure identity (DefaultAzureCredential) for {loc.display}"
                f"{_entra_reason(str(exc))}: {_CREDENTIAL_HELP}"
            ) from None
        raise StylebatchError(f"access denied to {loc.display}: check the storage credentials") from None
    except az.ResourceNotFoundError as exc:
        if exc.error_code == "ContainerNotFound":
            raise StylebatchError(f"container '{loc.container}' does not exist: {loc.display}") from None
        raise StylebatchError(f"not found: {loc.display}") from None
    except az.HttpResponseError as exc:
        if exc.status_code == 403:
            raise StylebatchError(f"access denied to {loc.display}: check the storage credentials") from None
        if exc.status_code == 404:
            raise StylebatchError(f"not found: {loc.display}") from None
        code = f" ({_one_line(str(exc.error_code))})" if exc.error_code else ""
        raise StylebatchError(
            f"blob storage refused to {action} {loc.display}: HTTP {exc.status_code}{code}"
        ) from None
    except (az.ServiceRequestError, az.ServiceResponseError) as exc:
        host = urllib.parse.urlsplit(resolve_credential(loc).endpoint).netloc
        raise StylebatchError(
            f"cannot reach blob storage at {host} to {action} {loc.display}: {_network_reason(exc)}"
        ) from None
    except az.AzureError as exc:
        raise StylebatchError(f"cannot {action} {loc.display}: {type(exc).__name__}") from None
    except ValueError as exc:
        # The SDK rejects some inputs (e.g. a malformed endpoint or setting) with ValueError.
        raise StylebatchError(
            f"cannot {action} {loc.display}: invalid storage credentials or settings ({type(exc).__name__})"
        ) from None


def _entra_reason(text: str) -> str:
    """The first sentence of an Entra ID error (e.g. AADSTS700213: No matching federated identity
    record found ...), which says what to fix; the rest is trace ids and links."""
    match = re.search(r"AADSTS\d+:[^\r\n]*", text)
    if not match:
        return ""
    return f" ({match.group(0).split('. ')[0].rstrip('.')[:300]})"


def _network_reason(exc: Exception) -> str:
    text = str(exc).lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("name or service not known", "host name not found"),
        ("nodename nor servname", "host name not found"),
        ("name resolution", "host name not found"),
        ("getaddrinfo", "host name not found"),
        ("timed out", "timed out"),
        ("unreachable", "network unreachable"),
        ("certificate", "TLS certificate problem"),
        ("reset", "connection reset"),
    ):
        if needle in text:
            return reason
    return "network error"


# --------------------------------------------------------------------------- text helpers


def _printable(text: str) -> str:
    """Escape control characters (and undecodable bytes) so a path always prints on one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _scrub_uri(uri: str) -> str:
    """The URI without its query, fragment or user info: safe to print even when it is malformed."""
    head = re.split(r"[?#]", uri, maxsplit=1)[0]
    head = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", head)
    return _printable(head)
