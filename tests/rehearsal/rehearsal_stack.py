"""The rehearsal's stage (the `stack` fixture, made available by conftest.py): a private docker engine, the two images built from the repository's
Dockerfiles, a container network standing in for the cluster's pod network, and Azurite started as
manifests/kind/azurite.yaml starts it, reachable from the containers by a DNS name like the
in-cluster Service's. Built once per run (module scope); reused between runs on the same machine
where the cache allows (STYLEBATCH_REHEARSAL_CACHE, default ~/.cache/stylebatch-rehearsal: the
debootstrap base and docker's image and build cache), never depending on it.

`pytest -m rehearsal` runs it; `.ci/run` runs it after the other tests.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from rehearsal_engine import LABEL, Engine, EngineUnavailable, engine
from rehearsal_images import (BASE_TAG, OPERATOR_TAG, REPO, WORKER_TAG, base_image, build_image, image_size,
                              pip_for_build)

AZURITE_MANIFEST = REPO / "manifests" / "kind" / "azurite.yaml"
AZURITE_HOST = "azurite"  # the containers' name for it, like the Service's azurite.<ns>.svc...
FIGURES: dict[str, object] = {}  # what the run measured, printed at the end and kept in the cache


def cache_dir() -> Path:
    return Path(os.environ.get("STYLEBATCH_REHEARSAL_CACHE") or Path.home() / ".cache" / "stylebatch-rehearsal")


@dataclass
class Stack:
    engine: Engine
    network: str
    gateway: str  # the host's address on the network: where Azurite listens
    azurite_port: int
    logs: Path
    extra_hosts: dict[str, str] = field(default_factory=dict)

    @property
    def blob_endpoint(self) -> str:
        """How the test (on the host) reaches Azurite."""
        return f"http://{self.gateway}:{self.azurite_port}/devstoreaccount1"

    @property
    def pod_blob_endpoint(self) -> str:
        """How the pods reach it: by name, as in a cluster (needs --disableProductStyleUrl)."""
        return f"http://{AZURITE_HOST}:{self.azurite_port}/devstoreaccount1"


def azurite_command(host: str, port: int, location: Path) -> list[str]:
    """The kind manifest's Azurite command, with this machine's binary, address, port and folder."""
    docs = [d for d in yaml.safe_load_all(AZURITE_MANIFEST.read_text()) if d and d["kind"] == "Deployment"]
    command = list(docs[0]["spec"]["template"]["spec"]["containers"][0]["command"])
    values = {"--blobHost": host, "--blobPort": str(port), "--location": str(location)}
    for i, word in enumerate(command[:-1]):
        if word in values:
            command[i + 1] = values[word]
    binary = REPO / ".cache" / "azurite" / "node_modules" / ".bin" / command[0]
    return [str(binary), *command[1:]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    logs = tmp_path_factory.mktemp("rehearsal-logs")
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one engine per data root
        try:
            with engine(cache / "docker") as eng:
                yield from _stack(eng, cache, logs, tmp_path_factory.mktemp("rehearsal"))
        except EngineUnavailable as exc:
            pytest.skip(f"rehearsal: {exc}") if os.geteuid() != 0 else pytest.fail(str(exc), pytrace=False)
        finally:
            (cache / "figures.json").write_text(json.dumps(FIGURES, indent=2))


def _stack(eng: Engine, cache: Path, logs: Path, work: Path) -> Iterator[Stack]:
    build_log = logs / "build.log"
    start = time.monotonic()
    had_base = eng.has_image(BASE_TAG)
    base_image(eng, cache, build_log)
    FIGURES["base image"] = {"seconds": round(time.monotonic() - start, 1), "cached": had_base}
    with pip_for_build(work / "pip") as pip:
        worker_args = {"VARIANT": "cpu", "PYTHON_IMAGE": BASE_TAG, "REVISION": "rehearsal"}
        if pip.torch_index_url:
            worker_args["TORCH_INDEX_URL"] = pip.torch_index_url
        for dockerfile, tag, args in [("Dockerfile.worker", WORKER_TAG, worker_args),
                                      ("Dockerfile.operator", OPERATOR_TAG, {"PYTHON_IMAGE": BASE_TAG})]:
            seconds = build_image(eng, dockerfile, tag, args, pip, build_log)
            FIGURES[tag] = {"build seconds": round(seconds, 1), "size MB": round(image_size(eng, tag) / 1e6)}

    network = f"stylebatch-rehearsal-{os.getpid()}"
    bridge = f"sbr{os.getpid()}"[:15]
    eng.run("network", "create", "--label", f"{LABEL}=1", "-o", f"com.docker.network.bridge.name={bridge}", network)
    gateway = eng.inspect("network", network)["IPAM"]["Config"][0]["Gateway"]
    # Pod to pod on the bridge, whatever the host's FORWARD policy (the engine itself adds no
    # iptables rules): one rule for this bridge, removed at the end.
    forward = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
    iptables = shutil.which("iptables")
    if iptables:
        subprocess.run([iptables, "-I", *forward], capture_output=True)
    port = _free_port(gateway)
    azurite_log = open(logs / "azurite.log", "wb")
    azurite = subprocess.Popen(azurite_command(gateway, port, work / "azurite"), stdout=azurite_log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        stack = Stack(eng, network, gateway, port, logs, {AZURITE_HOST: gateway})
        _until_listening(gateway, port, azurite)
        yield stack
    finally:
        azurite.terminate()
        azurite.wait(timeout=20)
        azurite_log.close()
        eng.remove_all()
        if iptables:
            subprocess.run([iptables, "-D", *forward], capture_output=True)


def _free_port(host: str) -> int:
    import socket
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _until_listening(host: str, port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Azurite did not start (exit code {proc.poll()})") from None
            time.sleep(0.2)

