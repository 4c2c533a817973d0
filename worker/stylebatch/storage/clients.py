"""BlobServiceClients: one per account endpoint, credential and transfer tuning, reused."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

from stylebatch.errors import StylebatchError
from stylebatch.storage.credentials import CREDENTIAL_HELP, forget_url_sas, resolve_credential
from stylebatch.storage import tuning
from stylebatch.storage.base import BlobAddress
from stylebatch.storage.tuning import TransferSettings


log = logging.getLogger(__name__)

# Handed to azure-core as its HTTP logger, which would log every request's URL and headers at INFO.
# Built directly rather than with getLogger, so no logging configuration can ever switch it on.
_AZURE_HTTP_LOG = logging.Logger("stylebatch.storage.azure_http", level=logging.CRITICAL + 1)
_AZURE_HTTP_LOG.disabled = True


def service_client(loc: BlobAddress) -> Any:
    """The BlobServiceClient for loc's account and credential, created once and reused."""
    cred = resolve_credential(loc)
    if cred.kind == "identity" and not cred.endpoint.startswith("https://"):
        raise StylebatchError(
            f"cannot use an Azure identity over plain http for {loc.display}: {CREDENTIAL_HELP}"
        )
    return _service_client(cred.endpoint, cred.account, cred.kind, cred.secret, tuning.settings)


def clear_client_cache() -> None:
    """Forget cached clients, the cached Azure identity and the SAS tokens of URLs given so far
    (after the environment changed)."""
    forget_url_sas()
    _service_client.cache_clear()
    _default_azure_credential.cache_clear()


@functools.lru_cache(maxsize=32)
def _service_client(endpoint: str, account: str, kind: str, secret: str | None, tuning: TransferSettings) -> Any:
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
        retry_policy=_said_retry(ExponentialRetry)(
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
def _said_retry(base: type) -> type:
    """The SDK's retry policy, saying each retry in a warning (the host and why, never the URL's
    query): a storage endpoint that takes connections and never answers was minutes of silence
    (read timeout times retries) before the transient error."""

    class SaidRetry(base):  # type: ignore[misc, valid-type]
        def increment(self, settings: dict, request: Any, response: Any = None, error: Any = None) -> bool:
            again = super().increment(settings, request, response=response, error=error)
            if again:
                from urllib.parse import urlsplit

                why = (f"HTTP {response.status_code}" if getattr(response, "status_code", None)
                       else "timed out" if "Timeout" in type(error).__name__
                       else "could not connect" if type(error).__name__ == "ServiceRequestError"
                       else "the connection broke" if error is not None else "no answer")
                log.warning("storage at %s did not answer (%s): trying again (retry %d of %d)",
                            urlsplit(request.url).netloc, why, settings.get("count", 0),
                            settings.get("count", 0) + settings.get("total", 0))
            return again

    return SaidRetry


@functools.lru_cache(maxsize=1)
def _default_azure_credential() -> Any:
    from azure.identity import DefaultAzureCredential

    # On failure the chain logs a multi-line WARNING listing every credential it tried; we report
    # the failure ourselves, in one line. A logger the application configured is left alone.
    chain_log = logging.getLogger("azure.identity._credentials.chained")
    if chain_log.level == logging.NOTSET:
        chain_log.setLevel(logging.ERROR)
    return DefaultAzureCredential()
