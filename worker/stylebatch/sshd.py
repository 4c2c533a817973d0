"""`stylebatch-sshd ARGS...`: the MPIJob workers' sshd (`/usr/sbin/sshd ARGS...`), with an exit
code that tells the truth.

A worker pod runs sshd in the foreground and the launcher's mpiexec starts the ranks through it.
Stopped by SIGTERM (pod deleted, node drained, spot eviction) sshd itself exits 0, and a worker pod
whose container exits 0 is Succeeded, as if its ranks had finished. Here sshd runs as a child: a
stop while an ssh session (a rank) is still running exits 143 for SIGTERM (130 for SIGINT), so the
pod is Failed; a stop with no session open (the MPI operator removing the workers after the job)
exits as sshd does. Any other exit of sshd is passed on unchanged. Pure standard library: it must
start fast and never import torch."""

from __future__ import annotations

import signal
import subprocess
import sys

from stylebatch.contract import EXIT_INTERRUPTED, EXIT_TERMINATED
from stylebatch.signals import children

SSHD = "/usr/sbin/sshd"
EXIT_FOR_SIGNAL = {signal.SIGTERM: EXIT_TERMINATED, signal.SIGINT: EXIT_INTERRUPTED}


def main(argv: list[str] | None = None, sshd: str = SSHD) -> int:
    args = sys.argv[1:] if argv is None else argv
    servers: list[subprocess.Popen] = []
    stopped: list[int] = []  # the exit code owed to a stop that interrupted a session

    def stop(signum: int, _frame: object) -> None:
        if not servers:
            sys.exit(EXIT_FOR_SIGNAL[signal.Signals(signum)])  # stopped before sshd started
        if children(servers[0].pid) and not stopped:
            stopped.append(EXIT_FOR_SIGNAL[signal.Signals(signum)])
        servers[0].send_signal(signum)

    for signum in EXIT_FOR_SIGNAL:
        signal.signal(signum, stop)
    servers.append(subprocess.Popen([sshd, *args]))
    code = servers[0].wait()
    if stopped:
        print(f"stylebatch-sshd: stopped while a rank's ssh session was open: exit code {stopped[0]}",
              file=sys.stderr)
        return stopped[0]
    return code if code >= 0 else 128 - code

if __name__ == "__main__":
    sys.exit(main())
