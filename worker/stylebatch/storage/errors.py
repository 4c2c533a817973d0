"""Failed filesystem and blob calls as one-line StylebatchErrors that name the object, never a secret."""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from typing import Iterator

from stylebatch.errors import StylebatchError, TransientError
from stylebatch.storage.credentials import CREDENTIAL_HELP, resolve_credential
from stylebatch.storage.scrub import one_line
from stylebatch.storage.base import BlobAddress



@contextlib.contextmanager
def local_errors(display: str, action: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise os_error(exc, display, action) from None


def os_error(exc: OSError, display: str, action: str) -> StylebatchError:
    if isinstance(exc, FileNotFoundError) and action != "write":
        return StylebatchError(f"not found: {display}")
    if isinstance(exc, IsADirectoryError):
        return StylebatchError(f"{display} is a folder, not a file")
    if isinstance(exc, PermissionError):
        return StylebatchError(f"permission denied: cannot {action} {display}")
    reason = exc.strerror or type(exc).__name__
    return StylebatchError(f"cannot {action} {display}: {one_line(reason)}")


@contextlib.contextmanager
def blob_errors(loc: BlobAddress, action: str) -> Iterator[None]:
    """Turn azure-core exceptions into one-line messages naming loc.display, without secrets."""
    from azure.core.exceptions import AzureError

    try:
        yield
    except (AzureError, ValueError) as exc:
        raise blob_error(exc, loc, action) from None


def blob_error(exc: Exception, loc: BlobLocation, action: str) -> StylebatchError:
    """The one-line error for a failed blob call: TransientError (exit 75) where retrying later can
    help (unreachable, timed out, 5xx/408/429 after the SDK's retries, no token from the identity),
    a plain StylebatchError (exit 2) where it cannot (denied, not found, malformed settings)."""
    return (TransientError if _transient(exc, loc) else StylebatchError)(_blob_message(exc, loc, action))


def _transient(exc: Exception, loc: BlobLocation) -> bool:
    from azure.core import exceptions as az

    if isinstance(exc, az.ClientAuthenticationError):
        return exc.status_code is None and resolve_credential(loc).kind == "identity"  # no token (yet)
    if isinstance(exc, (az.ServiceRequestError, az.ServiceResponseError)):
        return True
    if isinstance(exc, az.HttpResponseError):
        return exc.status_code is not None and (exc.status_code >= 500 or exc.status_code in (408, 429))
    return False


def _blob_message(exc: Exception, loc: BlobAddress, action: str) -> str:
    from azure.core import exceptions as az

    denied = f"access denied to {loc.display}: check the storage credentials"
    not_found = f"not found: {loc.display}"
    if isinstance(exc, az.ClientAuthenticationError):
        return _no_authentication(exc, loc) if exc.status_code is None else denied
    if isinstance(exc, az.ResourceNotFoundError):
        if exc.error_code == "ContainerNotFound":
            return f"container '{loc.container}' does not exist: {loc.display}"
        return not_found
    if isinstance(exc, az.HttpResponseError):
        if exc.status_code == 403:
            return denied
        if exc.status_code == 404:
            return not_found
        code = f" ({one_line(str(exc.error_code))})" if exc.error_code else ""
        return f"blob storage refused to {action} {loc.display}: HTTP {exc.status_code}{code}"
    if isinstance(exc, (az.ServiceRequestError, az.ServiceResponseError)):
        host = urllib.parse.urlsplit(resolve_credential(loc).endpoint).netloc
        return f"cannot reach blob storage at {host} to {action} {loc.display}: {_network_reason(exc)}"
    if isinstance(exc, az.AzureError):
        return f"cannot {action} {loc.display}: {type(exc).__name__}"
    # The SDK rejects some inputs (e.g. a malformed endpoint or setting) with ValueError.
    return f"cannot {action} {loc.display}: invalid storage credentials or settings ({type(exc).__name__})"


def _no_authentication(exc: Exception, loc: BlobAddress) -> str:
    """Raised before any request was sent: the request could not be signed, or there was no token."""
    cred = resolve_credential(loc)
    if cred.kind != "identity":
        return f"cannot sign requests for {loc.display}: the account key in {cred.source} is malformed"
    return (
        f"could not get a token from an Azure identity (DefaultAzureCredential) for {loc.display}"
        f"{_entra_reason(str(exc))}: {CREDENTIAL_HELP}"
    )


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
