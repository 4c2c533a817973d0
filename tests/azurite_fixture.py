"""Azurite, the real Azure Storage emulator, for every test that touches blob storage.

`azurite` (session): the blob and queue services on 127.0.0.1 at free ports, stopped at the end.
`azure_env` (function): AZURE_STORAGE_CONNECTION_STRING pointing at it, a fresh container, and an
`env` dict for subprocesses (`stylebatch run az://<container>/in.mp4 ...`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key: public, documented, useless outside the emulator.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
STORAGE_ENV_VARS = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_BLOB_ENDPOINT",
)


@dataclasses.dataclass
class Azurite:
    port: int
    queue_port: int = 0
    account: str = ACCOUNT
    key: str = KEY

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account}"

    @property
    def queue_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.queue_port}/{self.account}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
            f"BlobEndpoint={self.endpoint};QueueEndpoint={self.queue_endpoint};"
        )

    def queue_client(self, name: str):  # -> azure.storage.queue.QueueClient, messages as given
        from azure.storage.queue import QueueClient

        return QueueClient.from_connection_string(self.connection_string, name)

    def service_client(self):  # -> azure.storage.blob.BlobServiceClient
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def new_container(self, prefix: str = "test") -> str:
        """Create a container with a unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.service_client().create_container(name)
        return name


@dataclasses.dataclass
class AzureEnv:
    azurite: Azurite
    container: str
    env: dict[str, str]


def sas(azurite, container: str, *, permissions: str = "racwdl", hours: float = 1, blob: str | None = None,
        key: str | None = None) -> str:
    """A container SAS (or a blob SAS when blob is given) with the given permission letters."""
    from azure.storage.blob import (BlobSasPermissions, ContainerSasPermissions, generate_blob_sas,
                                    generate_container_sas)

    expiry = datetime.now(timezone.utc) + timedelta(hours=hours)
    if blob is not None:
        return generate_blob_sas(azurite.account, container, blob, account_key=key or azurite.key,
                                 permission=BlobSasPermissions.from_string(permissions), expiry=expiry)
    return generate_container_sas(azurite.account, container, account_key=key or azurite.key,
                                  permission=ContainerSasPermissions.from_string(permissions), expiry=expiry)


def _azurite_binary(service: str = "blob") -> str:
    local = REPO / ".cache" / "azurite" / "node_modules" / ".bin" / f"azurite-{service}"
    if local.exists():
        return str(local)
    found = shutil.which(f"azurite-{service}")
    if found:
        return found
    pytest.fail(
        "Azurite (the Azure Storage emulator) is not installed: run scripts/setup.sh --test "
        f"(it installs {local.relative_to(REPO)})",
        pytrace=False,
    )


def _free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket is held until all are picked, so no two are the same."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(f"{endpoint}?comp=list", timeout=1)
    except urllib.error.HTTPError:
        return True  # an unsigned request is refused, but the service is up
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    workdir = tmp_path_factory.mktemp("azurite")
    blob_port, queue_port = _free_ports(2)
    server = Azurite(port=blob_port, queue_port=queue_port)
    with contextlib.ExitStack() as stack:
        for service, port, endpoint in (("blob", server.port, server.endpoint),
                                        ("queue", server.queue_port, server.queue_endpoint)):
            stack.enter_context(_service(service, port, endpoint, workdir))
        yield server


@contextlib.contextmanager
def _service(service: str, port: int, endpoint: str, workdir: pathlib.Path) -> Iterator[None]:
    """One Azurite service (azurite-blob, azurite-queue) until the block ends."""
    binary = _azurite_binary(service)
    log_path = workdir / f"azurite-{service}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--{service}Host", "127.0.0.1", f"--{service}Port", str(port),
             "--location", str(workdir / f"data-{service}"), "--skipApiVersionCheck", "--loose", "--silent",
             "--disableTelemetry"],  # no usage reports to Microsoft from a test run
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        while not _answers(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                output = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"Azurite's {service} service did not start on port {port}:\n{output}", pytrace=False)
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def azure_env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> AzureEnv:
    for name in STORAGE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    return AzureEnv(azurite=azurite, container=azurite.new_container(), env=dict(os.environ))
