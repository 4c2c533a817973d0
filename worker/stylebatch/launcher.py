"""`stylebatch-mpiexec ARGS...`: the MPIJob launcher's `mpiexec ARGS...`, started only once every
worker host in its hostfile (`-f FILE`) accepts connections on the workers' sshd port.

The MPI Operator makes the launcher once every worker pod is Ready (launcherCreationPolicy
WaitForWorkersReady), except where it does not: an MPIJob created suspended for Kueue
(spec.queueName) gets its launcher Job at once (no worker pods yet, so "all Ready" holds for none),
and when Kueue admits it the launcher is unsuspended in the same sync that creates the workers
(kubeflow/mpi-operator#615, open). mpiexec then started while the GPU workers were still waiting
for a node or an image, failed at once on "ssh: Could not resolve hostname ...", and every retry
spent one of spec.retries the same way before a worker had run. Waiting here makes the attempt
wait for its workers however the launcher was started; the wait is bounded by the launcher Job's
activeDeadlineSeconds, and meanwhile the operator's Stalled condition says why the workers do not
come (their pods' reasons). A line on stderr says what is awaited, when the wait begins and every
SAY_EVERY_S, and how long it took.

Pure standard library: it starts fast and never imports torch."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable

from stylebatch.contract import SSHD_PORT

PORT_ENV = "STYLEBATCH_SSHD_PORT"  # the workers' sshd port, where an image listens elsewhere (tests)
POLL_S = 2.0
SAY_EVERY_S = 30.0
HOSTFILE_FLAGS = ("-f", "-hostfile", "--hostfile", "-machinefile", "--machinefile")


def hostfile_of(args: list[str]) -> str | None:
    """The hostfile mpiexec is given (`-f FILE`, `-f=FILE`, or HYDRA_HOST_FILE), or None."""
    for i, arg in enumerate(args):
        if arg in HOSTFILE_FLAGS and i + 1 < len(args):
            return args[i + 1]
        flag, eq, value = arg.partition("=")
        if eq and flag in HOSTFILE_FLAGS:
            return value
    return os.environ.get("HYDRA_HOST_FILE")


def hosts(text: str) -> list[str]:
    """The host names of an MPICH hostfile, in order: `host`, `host:slots` or `host slots=N` lines;
    blank lines and `#` comments skipped."""
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line.split()[0].split(":", 1)[0])
    return names


def unreachable(host: str, port: int, timeout: float = 2.0) -> str | None:
    """Why `host` does not take a connection on `port` now (its name unresolved, refused, ...), or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror:
        return "name not resolved yet"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def wait_for(names: list[str], port: int, *, say: Callable[[str], None],
             check: Callable[[str, int], str | None] = unreachable,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> float:
    """Return once every host in `names` takes a connection on `port`; the seconds it took. Says
    which hosts it waits for when the wait begins, every SAY_EVERY_S, and when it ends."""
    began = clock()
    said = None
    waiting = list(dict.fromkeys(names))
    while True:
        why = {host: reason for host in waiting if (reason := check(host, port)) is not None}
        waiting = list(why)
        now = clock()
        if not waiting:
            if said is not None:
                say(f"all {len(set(names))} worker hosts take connections, after {now - began:.0f}s; starting mpiexec")
            return now - began
        if said is None or now - said >= SAY_EVERY_S:
            first = waiting[0]
            more = f" and {len(waiting) - 1} more" if len(waiting) > 1 else ""
            say(f"waiting for {len(waiting)} of {len(set(names))} worker hosts to take connections on port "
                f"{port} ({first}: {why[first]}{more}) for {now - began:.0f}s")
            said = now
        sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = hostfile_of(args)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                names = hosts(f.read())
        except (OSError, UnicodeDecodeError):
            names = []  # mpiexec says what is wrong with it
        if names:
            port = int(os.environ.get(PORT_ENV) or SSHD_PORT)
            wait_for(names, port, say=lambda line: print(f"stylebatch-mpiexec: {line}", file=sys.stderr, flush=True))
    os.execvp("mpiexec", ["mpiexec", *args])
    return 127  # (not reached: exec replaces this process or raises)


if __name__ == "__main__":
    sys.exit(main())
