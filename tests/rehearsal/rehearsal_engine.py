"""A private Docker engine for the rehearsal: Debian's docker.io (`dockerd`), started as root with its
own socket, exec root and containerd namespace, so it touches no other engine on the machine, and
stopped with everything it ran. Its data root (image layers, BuildKit's cache) lives under the
repository's .cache/ and is reused by the next run on the same machine; nothing depends on it.

No iptables rules and no default bridge: the rehearsal's containers talk to each other on a network
it creates (and removes), and builds use the host's network, so the machine's firewall and routing
are left exactly as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LABEL = "io.stylebatch.rehearsal"  # on every container and network the rehearsal makes


class EngineUnavailable(RuntimeError):
    """No engine can run here (not root, docker.io missing): the tier reports it, one line."""


@dataclass
class Engine:
    socket: Path
    docker: str  # the client that ships with this dockerd (the same API version)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "1"}

    def run(self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`docker ARGS...`; raises with docker's own message when it fails and `check`."""
        proc = subprocess.run([self.docker, *args], capture_output=True, text=True, timeout=timeout,
                              input=input, env={**self.env, **(env or {})})
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} ... failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-2000:]}")
        return proc

    def inspect(self, kind: str, name: str) -> dict | None:
        proc = self.run(kind, "inspect", name, check=False)
        return json.loads(proc.stdout)[0] if proc.returncode == 0 else None

    def has_image(self, ref: str) -> bool:
        return self.inspect("image", ref) is not None

    def remove_containers(self) -> None:
        """Every container the rehearsal labelled, running or not."""
        ids = self.run("ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
        if ids:
            self.run("rm", "-f", "-v", *ids, check=False, timeout=120)

    def remove_all(self) -> None:
        """Every container and network the rehearsal labelled."""
        self.remove_containers()
        nets = self.run("network", "ls", "-q", "--filter", f"label={LABEL}", check=False).stdout.split()
        if nets:
            self.run("network", "rm", *nets, check=False)


def binaries() -> tuple[str, str]:
    """(dockerd, its docker client) from Debian's docker.io; the client first on PATH may be
    another version's."""
    dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
    if not dockerd:
        raise EngineUnavailable("dockerd is not installed: run scripts/setup.sh --test (Debian's docker.io)")
    docker = Path(dockerd).resolve().parent / "docker"
    if not docker.exists():
        docker = Path("/usr/bin/docker")
    return dockerd, str(docker)


@contextlib.contextmanager
def engine(data_root: Path, start_timeout: float = 60) -> Iterator[Engine]:
    """A running dockerd for the block; stopped, with its containers, networks and run-time files,
    at the end. `data_root` (kept): images and build cache."""
    if os.geteuid() != 0:
        raise EngineUnavailable("the rehearsal starts its own docker engine, which needs root")
    dockerd, docker = binaries()
    data_root.mkdir(parents=True, exist_ok=True)
    # Short paths: containerd's and docker's unix sockets live in the exec root.
    run_dir = Path(tempfile.mkdtemp(prefix="sbd-", dir="/tmp"))
    sock = run_dir / "docker.sock"
    log = open(run_dir / "dockerd.log", "wb")
    namespace = f"stylebatch-rehearsal-{os.getpid()}"
    proc = subprocess.Popen(
        [dockerd, "--data-root", str(data_root), "--exec-root", str(run_dir / "x"),
         "--pidfile", str(run_dir / "dockerd.pid"), "--host", f"unix://{sock}",
         "--containerd-namespace", namespace, "--containerd-plugins-namespace", namespace + "-p",
         "--iptables=false", "--ip-masq=false", "--bridge=none", "--log-level=warn"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    eng = Engine(socket=sock, docker=docker)
    try:
        deadline = time.monotonic() + start_timeout
        while eng.run("version", "--format", "{{.Server.Version}}", check=False, timeout=10).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (run_dir / "dockerd.log").read_text(errors="replace")[-3000:]
                raise EngineUnavailable(f"dockerd did not start:\n{tail}")
            time.sleep(0.5)
        yield eng
    finally:
        try:
            with contextlib.suppress(Exception):
                if proc.poll() is None:
                    eng.remove_all()
                    # Keep the layer cache bounded: build cache beyond a few GB and untagged images go.
                    eng.run("builder", "prune", "-f", "--keep-storage", "6gb", check=False, timeout=120)
                    eng.run("image", "prune", "-f", check=False, timeout=120)
        finally:  # even when interrupted: never leave an engine running
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            log.close()
            unmount_under(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)


def unmount_under(root: Path) -> None:
    """Whatever a killed engine left mounted below `root` (container root filesystems, network
    namespaces), deepest first, so that removing `root` never reaches into a mount."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
