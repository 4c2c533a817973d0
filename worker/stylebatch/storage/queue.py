"""Azure Storage Queues (where Event Grid delivers BlobCreated events), signed like the blobs.

`queue_client(loc, name)`: the queue `name` in the storage account of the blob location `loc`,
with the credential stylebatch.storage picks for `loc`. The queue endpoint: the connection string's
QueueEndpoint, else AZURE_STORAGE_QUEUE_ENDPOINT, else the blob endpoint's host with `.queue.` for
`.blob.` (https://<account>.queue.core.windows.net).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from stylebatch.errors import StylebatchError
from stylebatch.storage.clients import _AZURE_HTTP_LOG, _default_azure_credential
from stylebatch.storage.credentials import resolve_credential

if TYPE_CHECKING:
    from stylebatch.storage.blob import BlobLocation


def queue_client(loc: BlobLocation, name: str) -> Any:
    """An azure.storage.queue.QueueClient; messages are read and written as given (no encoding
    policy: Event Grid writes base64 text, which stylebatch.trigger.parse_event decodes)."""
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
    from azure.storage.queue import QueueClient

    options: dict[str, Any] = {"logging_enable": False, "logger": _AZURE_HTTP_LOG}
    conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "").strip()
    cred = resolve_credential(loc)
    if conn and cred.source == "AZURE_STORAGE_CONNECTION_STRING" and "queueendpoint=" in conn.lower():
        return QueueClient.from_connection_string(conn, name, **options)
    endpoint = os.environ.get("AZURE_STORAGE_QUEUE_ENDPOINT", "").strip().rstrip("/")
    if not endpoint:
        if ".blob." not in cred.endpoint:
            raise StylebatchError(f"no queue endpoint for {loc.display}: set AZURE_STORAGE_QUEUE_ENDPOINT "
                                  "(or QueueEndpoint in AZURE_STORAGE_CONNECTION_STRING)")
        endpoint = cred.endpoint.replace(".blob.", ".queue.", 1)
    credential: Any
    if cred.kind == "sas":
        credential = AzureSasCredential(cred.secret or "")
    elif cred.kind == "key":
        credential = AzureNamedKeyCredential(cred.account, cred.secret or "")
    else:
        credential = _default_azure_credential()
    return QueueClient(endpoint, name, credential=credential, **options)
