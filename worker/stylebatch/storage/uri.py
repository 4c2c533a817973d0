"""location(): a local path, file:// URI, az:// URI or blob URL parsed into a Location."""

from __future__ import annotations

import os
import pathlib
import re
import urllib.parse

from stylebatch.errors import StylebatchError
from stylebatch.storage.base import Location, is_path_style, not_blob_storage, split_path
from stylebatch.storage.blob import BlobLocation
from stylebatch.storage.credentials import remember_url_sas
from stylebatch.storage.local import LocalLocation
from stylebatch.storage.scrub import printable, scrub_uri

_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CONTAINER_NAME = re.compile(r"^(?:[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}|\$root|\$web|\$logs)$")
_ACCOUNT_NAME = re.compile(r"^[a-z0-9]{3,24}$")


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
        f"unsupported storage URI {scrub_uri(uri)}: "
        "use a local path, file://, az://<container>/<path> or an https:// blob URL"
    )


def _parse_file_uri(uri: str) -> LocalLocation:
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise StylebatchError(f"malformed file URI {scrub_uri(uri)}: expected file:///absolute/path")
    return LocalLocation(uri=uri, path=pathlib.Path(urllib.parse.unquote(parts.path)))


def _parse_az_uri(uri: str) -> BlobLocation:
    safe = scrub_uri(uri)
    if "?" in uri:
        raise StylebatchError(
            f"malformed storage URI {safe}: az:// takes no query string; put a SAS token in "
            "AZURE_STORAGE_SAS_TOKEN or use an https:// blob URL"
        )
    container, _, path = uri[len("az://"):].partition("/")
    _check_container(container, safe)
    return BlobLocation(uri=uri, container=container, blob=_blob_name(path, safe))


def _parse_blob_url(uri: str) -> BlobLocation:
    safe = scrub_uri(uri)
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
    if is_path_style(host):
        account = urllib.parse.unquote(segments.pop(0)) if segments else ""
        endpoint = f"{parts.scheme.lower()}://{netloc}/{account}"
    else:
        account = host.split(".", 1)[0]
        endpoint = f"{parts.scheme.lower()}://{netloc}"
    try:
        if not _ACCOUNT_NAME.match(account):
            raise StylebatchError(f"malformed blob URL {safe}: '{printable(account)}' is not a storage account name")
        container = urllib.parse.unquote(segments.pop(0)) if segments else ""
        _check_container(container, safe)
        blob = _blob_name(urllib.parse.unquote("/".join(segments)), safe)
    except StylebatchError as exc:
        raise StylebatchError(f"{exc}{not_blob_storage(host)}") from None
    loc = BlobLocation(uri=uri, container=container, blob=blob, account=account,
                       endpoint=endpoint, sas=_sas_from_query(parts.query, safe))
    remember_url_sas(loc)  # later stages find it by the URI without its query: never stored on disk
    return loc


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


def _blob_name(path: str, safe: str) -> str:
    if "//" in path.strip("/"):  # split_path would drop the empty segment and name another blob
        raise StylebatchError(f"malformed storage URI {safe}: an empty folder name ('//') in a blob path is not "
                              "supported: rename the blob")
    error = f"malformed storage URI {safe}: '.' and '..' are not allowed in blob paths"
    name = "/".join(split_path([path], error))
    if len(name) > 1024:
        raise StylebatchError(f"malformed storage URI {safe}: blob names are at most 1024 characters")
    return name
