"""Which credential signs requests to a blob location, from the URL and the environment."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import threading
import urllib.parse
from typing import Iterator

from stylebatch.errors import StylebatchError
from stylebatch.storage.base import BlobAddress, is_path_style, not_blob_storage


CREDENTIAL_HELP = (
    "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_SAS_TOKEN or "
    "AZURE_STORAGE_KEY, or AZURE_STORAGE_ACCOUNT alone to sign in as an Azure identity "
    "(DefaultAzureCredential: a workload identity's AZURE_CLIENT_ID, AZURE_TENANT_ID and "
    "AZURE_FEDERATED_TOKEN_FILE, a managed identity, or `az login`), or use a blob URL with a SAS token"
)
_AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclasses.dataclass(frozen=True)
class BlobCredential:
    """Which credential signs requests to one account endpoint. The secret never reaches a repr."""

    endpoint: str
    account: str
    kind: str  # "sas" | "key" | "identity"
    source: str  # where it came from, for messages: "the URL", "AZURE_STORAGE_KEY", ...
    secret: str | None = dataclasses.field(default=None, repr=False)


def resolve_credential(loc: BlobAddress) -> BlobCredential:
    """Pick the credential for loc, in the documented order (first match wins).

    A credential from the environment is only ever sent to its own account's endpoint:
    https://ACCOUNT.blob.core.windows.net, the connection string's endpoint, or the one
    AZURE_STORAGE_BLOB_ENDPOINT names. A URL that names the account on any other host gets a
    one-line StylebatchError, never the credential (nor an Azure identity's token)."""
    env = os.environ
    override = env.get("AZURE_STORAGE_BLOB_ENDPOINT", "").strip().rstrip("/") or None
    if loc.sas and loc.endpoint and loc.account:
        return BlobCredential(loc.endpoint, loc.account, "sas", "the URL", loc.sas)
    carried, wide = _carried_match(loc)
    if carried and not wide and loc.endpoint and loc.account:  # given for this blob, or a folder above it
        return BlobCredential(loc.endpoint, loc.account, "sas", "the URL", carried)
    if env.get("AZURE_STORAGE_CONNECTION_STRING", "").strip():
        account, endpoint, kind, secret = _parse_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
        if loc.account in (None, account):
            source = "AZURE_STORAGE_CONNECTION_STRING"
            endpoint = _own_endpoint(loc, account, source, override or endpoint, endpoint)
            return BlobCredential(endpoint, account, kind, source, secret)
    account = env.get("AZURE_STORAGE_ACCOUNT", "").strip()
    if account and loc.account in (None, account):
        kind, source, secret = "identity", "DefaultAzureCredential", None
        if env.get("AZURE_STORAGE_SAS_TOKEN", "").strip():
            kind, source, secret = "sas", "AZURE_STORAGE_SAS_TOKEN", env["AZURE_STORAGE_SAS_TOKEN"].strip().lstrip("?")
        elif env.get("AZURE_STORAGE_KEY", "").strip():
            kind, source, secret = "key", "AZURE_STORAGE_KEY", env["AZURE_STORAGE_KEY"].strip()
        endpoint = _own_endpoint(loc, account, source, override or azure_endpoint(account))
        return BlobCredential(endpoint, account, kind, source, secret)
    if carried and loc.endpoint and loc.account:
        # A container SAS given with another URL of the container (the input's, for its work dir
        # there): after the environment's credentials, which a URL given without a SAS means (a
        # read-only input SAS was taken for the output, over a connection string that could write).
        return BlobCredential(loc.endpoint, loc.account, "sas", "the URL", carried)
    if loc.account and loc.endpoint:
        # A URL names its account; a workload or managed identity may still have access to it.
        endpoint = _own_endpoint(loc, loc.account, "DefaultAzureCredential", override or azure_endpoint(loc.account))
        return BlobCredential(endpoint, loc.account, "identity", "DefaultAzureCredential")
    raise StylebatchError(f"no storage account configured for {loc.display}: {CREDENTIAL_HELP}")


# --- SAS tokens given in URLs, carried to later stages in memory and in the environment, never on disk ---

CARRIED_SAS_ENV = "STYLEBATCH_URL_SAS"
_carried: dict[tuple[str, str, str, bool, bool], str] = {}


def remember_url_sas(loc: BlobAddress) -> None:
    """Remember the SAS of a URL the user gave, for the blobs it grants: one blob (sr=b), a folder
    (sr=d), or the URL's container (a container or account SAS). Work-dir records store URIs
    without their query; a URI read back from them finds its SAS here (or in CARRIED_SAS_ENV).

    A container or account SAS is also kept as a fallback ("wide") for the blobs stylebatch makes
    where no URL gave a SAS: beside the URL's blob (a lock, a checkpoint, the write check's marker),
    and anywhere in its container (a --work given without a SAS). Where several URLs give one for the
    same place, one that may write is never replaced by one that may not: a read-only --style in the
    output's container broke the output's write check, every later writer there too."""
    if not (loc.sas and loc.endpoint):
        return
    endpoint, scope = _endpoint_key(loc.endpoint), sas_scope(loc.sas)
    prefix, exact = {"b": (loc.blob, True), "bs": (loc.blob, True), "bv": (loc.blob, True),
                     "d": (loc.blob, False)}.get(scope, ("", False))
    _carried[(endpoint, loc.container, loc.blob, True, False)] = loc.sas  # the URL's own blob: its own SAS
    if prefix or exact:
        _carried[(endpoint, loc.container, prefix, exact, False)] = loc.sas
        return
    if loc.blob:  # and what is below it (a work dir given with a container SAS)
        _carried[(endpoint, loc.container, loc.blob, False, False)] = loc.sas
    for place in {"", loc.blob.rpartition("/")[0]}:  # the container, and the folder the blob is in
        key = (endpoint, loc.container, place, False, True)
        if key not in _carried or _may_write(loc.sas) or not _may_write(_carried[key]):
            _carried[key] = loc.sas


def _may_write(sas: str) -> bool:
    """False where a SAS token's own permissions (sp) show that it cannot write."""
    permissions = sas_permissions(sas)
    return permissions is None or "w" in permissions


def forget_url_sas() -> None:
    """Forget the SAS tokens of URLs given so far in this process."""
    _carried.clear()


_calls = threading.Lock()
_in_calls: list[dict] = []  # while calls run (threads of one service): the tokens from before the first


@contextlib.contextmanager
def url_sas_of_this_call() -> Iterator[None]:
    """The SAS tokens of URLs given within the block are forgotten when it ends, however it ends; those
    given before it are kept. For an API call (stylize_video): a later call of the same process, whose
    URLs came without a SAS, must not be signed with an earlier caller's token. Calls that overlap (in
    threads) keep each other's until the last of them ends: none loses a token while it runs."""
    with _calls:
        _in_calls.append(dict(_carried) if not _in_calls else _in_calls[0])
    try:
        yield
    finally:
        with _calls:
            before = _in_calls.pop()
            if not _in_calls:
                _carried.clear()
                _carried.update(before)


def carried_sas(loc: BlobAddress) -> str | None:
    """The SAS of a URL given earlier (this process, or the stage that started it) that grants loc;
    the most specific one when several do."""
    return _carried_match(loc)[0]


def _carried_match(loc: BlobAddress) -> tuple[str | None, bool]:
    """carried_sas, and whether it grants loc only as a container SAS given with another URL of the
    container (not for loc itself nor a folder above it). One given for loc or a folder above it comes
    first, the most specific; else a wide one: one that may write first, then the most specific."""
    if not loc.endpoint:
        return None, False
    found: tuple[tuple[bool, bool, int], str, bool] | None = None
    for (endpoint, container, prefix, exact, wide), sas in _all_carried().items():
        if endpoint != _endpoint_key(loc.endpoint) or container != loc.container:
            continue
        if loc.blob == prefix or (not exact and (not prefix or loc.blob.startswith(prefix + "/"))):
            rank = (not wide, wide and _may_write(sas), len(prefix))
            if found is None or rank > found[0]:
                found = (rank, sas, wide)
    return (found[1], found[2]) if found else (None, False)


def carried_sas_env() -> dict[str, str]:
    """Environment for a child stage process (the stylize ranks): the SAS tokens of URLs given so far."""
    entries = _all_carried()
    if not entries:
        return {}
    return {CARRIED_SAS_ENV: json.dumps([[*key, sas] for key, sas in entries.items()])}


def _all_carried() -> dict[tuple[str, str, str, bool, bool], str]:
    entries: dict[tuple[str, str, str, bool, bool], str] = {}
    try:
        for endpoint, container, prefix, exact, wide, sas in json.loads(os.environ.get(CARRIED_SAS_ENV) or "[]"):
            entries[(str(endpoint), str(container), str(prefix), bool(exact), bool(wide))] = str(sas)
    except (ValueError, TypeError):
        raise StylebatchError(f"{CARRIED_SAS_ENV} is malformed (it is set by stylebatch run for its ranks)") from None
    return {**entries, **_carried}


def _endpoint_key(endpoint: str) -> str:
    parts = urllib.parse.urlsplit(endpoint.strip())
    scheme = parts.scheme.lower()
    port = parts.port or {"https": 443, "http": 80}.get(scheme)
    return f"{scheme}://{(parts.hostname or '').lower().rstrip('.')}:{port}{parts.path.rstrip('/')}"


def sas_scope(sas: str) -> str:
    """What a SAS token grants: its sr field (b blob, c container, d folder), "" for an account SAS."""
    return urllib.parse.parse_qs(sas.lstrip("?")).get("sr", [""])[0]


def sas_permissions(sas: str) -> str | None:
    """A SAS token's sp field (its permission letters), or None where it has none (a stored access policy)."""
    return urllib.parse.parse_qs(sas.lstrip("?")).get("sp", [None])[0]


def sas_write_problem(sas: str, now: datetime.datetime | None = None) -> str | None:
    """Why a SAS token cannot write, read from its own fields (sp permissions, se expiry); None if
    nothing tells. The signature is never looked at or quoted."""
    fields = urllib.parse.parse_qs(sas.lstrip("?"))
    permissions = fields.get("sp", [None])[0]
    if permissions is not None and "w" not in permissions:
        return f"does not allow writing (its permissions are sp={permissions!r}; writing needs w)"
    expiry = fields.get("se", [None])[0]
    if expiry:
        try:
            when = datetime.datetime.fromisoformat(expiry.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        if when <= (now or datetime.datetime.now(datetime.timezone.utc)):
            return f"expired at {expiry}"
    return None


def azure_endpoint(account: str) -> str:
    """The public Azure endpoint of a storage account."""
    return f"https://{account}.blob.core.windows.net"


def blob_place(loc: BlobAddress) -> tuple[str, str]:
    """Where loc's blobs are stored, however its URI spells it: (the endpoint's host, port and path,
    container). An az:// location takes the endpoint its credential goes to; the scheme, its default
    port, the host's letter case and trailing dot, and localhost against 127.0.0.1 or ::1 make no
    difference. An az:// location with no account configured keeps "az://" (it names nothing yet)."""
    endpoint = loc.endpoint
    if endpoint is None:
        try:
            endpoint = resolve_credential(loc).endpoint
        except StylebatchError:
            return "az://", loc.container
    try:
        parts = urllib.parse.urlsplit(endpoint.strip())
        host = (parts.hostname or "").lower().rstrip(".")
        port = parts.port
    except ValueError:
        return endpoint, loc.container
    if host in ("localhost", "::1"):
        host = "127.0.0.1"
    if port == {"https": 443, "http": 80}.get(parts.scheme.lower()):
        port = None
    return f"{host}:{port or ''}{parts.path.rstrip('/')}", loc.container


def same_endpoint(a: str, b: str) -> bool:
    """True if two endpoint URLs name the same service: scheme, host, port (default ones filled in)
    and path compared, letter case of scheme and host ignored."""
    try:
        return _endpoint_key(a) == _endpoint_key(b)
    except ValueError:
        return False


def _own_endpoint(loc: BlobAddress, account: str, source: str, default: str, *more: str) -> str:
    """The endpoint a credential for `account` goes to: `default` for az:// locations; for a URL, its
    own endpoint if that is one of the account's own (`default`, `more`, the public Azure one)."""
    if loc.endpoint is None:
        return default
    own = [default, *more, azure_endpoint(account)]
    if any(same_endpoint(loc.endpoint, e) for e in own if e):
        return loc.endpoint
    if not_blob_storage(urllib.parse.urlsplit(loc.endpoint).hostname or ""):  # a web address
        raise StylebatchError(
            f"{loc.endpoint} is no Azure Blob Storage endpoint (no credentials are sent to it): stylebatch "
            "reads local files, az:// URIs and blob URLs (https://<account>.blob.core.windows.net/...); "
            "download the file first, or, for a blob behind a custom domain, put a SAS token in the URL")
    raise StylebatchError(
        f"refusing to send the credentials of storage account {account!r} ({source}) to {loc.endpoint}, "
        f"which is not that account's endpoint ({default}): use the account's own URL, put a SAS token "
        f"in the URL, or name an emulator's endpoint in AZURE_STORAGE_BLOB_ENDPOINT"
    )


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
    if endpoint:  # a wrong field named as such: a malformed endpoint had been blamed on the account key
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            field = "BlobEndpoint" if fields.get("blobendpoint") else "DefaultEndpointsProtocol or EndpointSuffix"
            raise StylebatchError(f"AZURE_STORAGE_CONNECTION_STRING is malformed: its {field} makes no "
                                  "http(s) URL of a host")
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
    if is_path_style(parts.hostname or ""):
        return parts.path.strip("/").split("/")[0]
    return (parts.hostname or "").split(".", 1)[0]
