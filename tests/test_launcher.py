"""stylebatch-mpiexec, the MPIJob launcher's mpiexec: started only once every worker host in the
hostfile takes connections on the workers' sshd port. With Kueue the MPI Operator can start the
launcher while the workers still wait for a node (kubeflow/mpi-operator#615): mpiexec failed at once
on "ssh: Could not resolve hostname", and each retry spent spec.retries. Here the worker hosts are
this machine's loopback names, a real TCP listener plays the workers' sshd, and the real mpiexec
(MPICH runs local hosts without ssh) starts a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stylebatch import launcher


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_launcher_waits_for_every_worker_host_then_runs_mpiexec(tmp_path: Path) -> None:
    port = free_port()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1:1\nlocalhost:1\n")
    mpiexec = Path(sys.executable).parent  # the venv's mpiexec (mpich from PyPI)
    env = {**os.environ, launcher.PORT_ENV: str(port), "PATH": f"{mpiexec}{os.pathsep}{os.environ['PATH']}"}
    started = subprocess.Popen([sys.executable, "-m", "stylebatch.launcher", "-n", "1", "-f", hostfile, sys.executable,
                                "-c", "print('the ranks ran')"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        first = started.stderr.readline()
        assert first.startswith(f"stylebatch-mpiexec: waiting for 2 of 2 worker hosts to take connections on port "
                                f"{port} (127.0.0.1: Connection refused and 1 more) for 0s"), first
        time.sleep(1.0)
        assert started.poll() is None  # mpiexec not started: the workers do not take connections yet
        with socket.create_server(("127.0.0.1", port)):  # the workers' sshd listens
            out, err = started.communicate(timeout=60)
    finally:
        started.kill()
    assert started.returncode == 0, err
    assert out.splitlines() == ["the ranks ran"]
    assert "worker hosts take connections, after" in err and "starting mpiexec" in err


def test_without_a_wait_the_launcher_is_mpiexec_as_is(tmp_path: Path) -> None:
    port = free_port()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1:1\n")
    env = {**os.environ, launcher.PORT_ENV: str(port),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with socket.create_server(("127.0.0.1", port)):
        result = subprocess.run([sys.executable, "-m", "stylebatch.launcher", "-n", "1", "-f", hostfile, sys.executable,
                                 "-c", "import sys; sys.exit(3)"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3  # the ranks' exit code, as mpiexec gives it
    assert "stylebatch-mpiexec" not in result.stderr  # nothing waited for, nothing said


@pytest.mark.parametrize("text, names", [
    ("a-worker-0.a-worker.ns.svc:4\na-worker-1.a-worker.ns.svc:4\n",
     ["a-worker-0.a-worker.ns.svc", "a-worker-1.a-worker.ns.svc"]),
    ("# written by the MPI Operator\n\nw0 slots=2\nw1\n", ["w0", "w1"]),
    ("", []),
])
def test_the_hostfile_names_its_hosts_in_mpichs_forms(text, names) -> None:
    assert launcher.hosts(text) == names


@pytest.mark.parametrize("args, env, found", [
    (["-n", "2", "-f", "/etc/mpi/hostfile", "stylebatch"], {}, "/etc/mpi/hostfile"),
    (["-n", "2", "-f=/h", "stylebatch"], {}, "/h"),
    (["-n", "2", "stylebatch"], {"HYDRA_HOST_FILE": "/env"}, "/env"),
    (["-n", "2", "stylebatch"], {}, None),
])
def test_the_hostfile_is_found_as_mpiexec_finds_it(args, env, found, monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_HOST_FILE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launcher.hostfile_of(args) == found


def test_a_long_wait_is_said_every_half_minute_and_its_end_once() -> None:
    now = [0.0]
    up_at = {"w0": 0.0, "w1": 75.0}  # w1's node came after 75 s
    said: list[str] = []
    took = launcher.wait_for(["w0", "w1"], 2222, say=said.append,
                             check=lambda host, port: None if now[0] >= up_at[host] else "name not resolved yet",
                             clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert took == pytest.approx(76.0)
    assert said == [
        "waiting for 1 of 2 worker hosts to take connections on port 2222 (w1: name not resolved yet) for 0s",
        "waiting for 1 of 2 worker hosts to take connections on port 2222 (w1: name not resolved yet) for 30s",
        "waiting for 1 of 2 worker hosts to take connections on port 2222 (w1: name not resolved yet) for 60s",
        "all 2 worker hosts take connections, after 76s; starting mpiexec",
    ]


def test_the_launcher_never_imports_torch() -> None:
    result = subprocess.run([sys.executable, "-c", "import sys, stylebatch.launcher; print('torch' in sys.modules)"],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
