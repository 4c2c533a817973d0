"""Which credential signs requests to a blob location, from the URL and the environment."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from typing import TYPE_CHECKING

from stylebatch.errors import StylebatchError
from stylebatch.storage.base import is_path_style

if TYPE_CHECKING:
    from stylebatch.storage.blob import BlobLocation

CREDENTIAL_HELP = (
    "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_SAS_TOKEN, "
    "AZURE_STORAGE_KEY or a workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, "
    "AZURE_FEDERATED_TOKEN_FILE), or use a blob URL with a SAS token"
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
    raise StylebatchError(f"no storage account configured for {loc.display}: {CREDENTIAL_HELP}")


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
    if is_path_style(parts.hostname or ""):
        return parts.path.strip("/").split("/")[0]
    return (parts.hostname or "").split(".", 1)[0]
