"""Where videos, manifests and parts live: a local folder or Azure Blob Storage, behind one small API.

`location(uri)` turns a local path, a `file://` URI, `az://<container>/<path>` (account from the
environment) or a blob URL (`https://<account>.blob.core.windows.net/...[?<sas>]`, or path-style
`http://127.0.0.1:10000/<account>/...` for Azurite) into a `Location`. Every write is atomic: readers
see the old object or the whole new one, never a half-written one. Every failure is a one-line
`StylebatchError` that names the object by its `display` URI, which never carries a secret.

Blob credentials, first match wins: a SAS in the URL; AZURE_STORAGE_CONNECTION_STRING;
AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_SAS_TOKEN, else AZURE_STORAGE_KEY, else
DefaultAzureCredential (AKS workload identity). AZURE_STORAGE_BLOB_ENDPOINT overrides the endpoint of
az:// locations. Tune transfers by replacing `stylebatch.storage.tuning.settings`.
"""

from __future__ import annotations

from stylebatch.storage.base import Location
from stylebatch.storage.blob import BlobLocation
from stylebatch.storage.clients import clear_client_cache, service_client
from stylebatch.storage.credentials import BlobCredential, blob_place, resolve_credential
from stylebatch.storage.local import LocalLocation
from stylebatch.storage.tuning import TransferSettings
from stylebatch.storage.uri import location

__all__ = [
    "BlobCredential", "BlobLocation", "LocalLocation", "Location", "TransferSettings",
    "blob_place", "clear_client_cache", "location", "resolve_credential", "service_client",
]
