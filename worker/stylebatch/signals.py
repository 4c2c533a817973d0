"""Stop signals: SIGINT (Ctrl-C), SIGTERM (what `kill`, `timeout`, docker and Kubernetes send) and
SIGHUP (a closed terminal or ssh session) all raise KeyboardInterrupt in the main thread, so every
`finally` runs (stage processes stopped, scratch removed, locks let go). What stopped us decides
the exit code: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP. Only the first of them raises: a
second one while the process is already stopping (mpiexec forwarding one, a second Ctrl-C) must
not break its cleanup or its last line; the launcher kills a stage that has not stopped within
20 s. After a hang-up the terminal is gone: writing to it would fail, so this process's standard
streams that were the terminal read and write /dev/null from then on."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import threading
import time
from pathlib import Path

from stylebatch.contract import EXIT_HUNG_UP, EXIT_INTERRUPTED, EXIT_TERMINATED

_HANDLED = {signal.SIGINT: (EXIT_INTERRUPTED, "Ctrl-C (SIGINT)"), signal.SIGTERM: (EXIT_TERMINATED, "SIGTERM"),
            signal.SIGHUP: (EXIT_HUNG_UP, "SIGHUP (hang-up)")}
_received: list[int] = []


def _on_signal(signum: int, frame) -> None:
    _received.append(signum)
    if signum == signal.SIGHUP:
        _leave_the_terminal()
    if len(_received) == 1:
        raise KeyboardInterrupt


def _leave_the_terminal() -> None:
    """Standard streams on a character device (the terminal: a hung-up one no longer answers as a
    tty, so isatty cannot tell) are pointed at /dev/null; files and pipes stay."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            with contextlib.suppress(OSError):
                if stat.S_ISCHR(os.fstat(fd).st_mode):
                    os.dup2(null, fd)
        os.close(null)


def install() -> None:
    """Handle the stop signals in this process as above (only the main thread can); one this process
    was started ignoring (`nohup`, a background job of a script) stays ignored."""
    if threading.current_thread() is threading.main_thread():
        _received.clear()
        for signum in _HANDLED:
            if signal.getsignal(signum) != signal.SIG_IGN:
                signal.signal(signum, _on_signal)


@contextlib.contextmanager
def noted(stop: list[int]):
    """For a loop that stops itself at a safe point (train-style between steps, to save its checkpoint):
    while the block runs, each stop signal is appended to `stop` instead of raising, where its handler
    is the default or stylebatch's own (`install`). Main thread only (elsewhere none can be set: an API
    caller's thread trains on, and Ctrl-C stays its program's); a signal the process was started
    ignoring (`nohup`'s SIGHUP) stays ignored, and an API caller's own handler stays the caller's.
    Restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = (signal.SIG_DFL, signal.default_int_handler, _on_signal)
    previous = {signum: signal.getsignal(signum) for signum in _HANDLED}
    mine = [signum for signum, handler in previous.items() if handler in ours]
    for signum in mine:
        signal.signal(signum, lambda signum, frame: stop.append(signum))
    try:
        yield
    finally:
        for signum in mine:
            signal.signal(signum, previous[signum])


@contextlib.contextmanager
def handled():
    """For an API call: SIGTERM and SIGHUP handled as in the CLI while the call runs, where the
    program left them at their defaults (main thread only), and restored afterwards. Otherwise a
    SIGTERM would end the program at once and leave its stage processes running. Ctrl-C stays the
    program's own (Python's KeyboardInterrupt)."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    mine = [signum for signum, handler in previous.items() if handler == signal.SIG_DFL]
    for signum in mine:
        signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum in mine:
            signal.signal(signum, previous[signum])
        _received.clear()


def exit_code() -> int:
    return _HANDLED[_received[0]][0] if _received else EXIT_INTERRUPTED


def cause() -> str:
    return _HANDLED[_received[0]][1] if _received else "Ctrl-C (SIGINT)"


def _parents(proc: Path = Path("/proc")) -> dict[int, int]:
    """Every process's parent, from /proc."""
    parents = {}
    for entry in proc.glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid ...
        except (OSError, IndexError):
            continue  # gone meanwhile
        parents[int(entry.parent.name)] = int(fields[1])
    return parents


def children(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The processes whose parent is `pid` (sshd forks one per ssh connection)."""
    return [child for child, parent in _parents(proc).items() if parent == pid]


def kill_tree(pid: int) -> None:
    """SIGKILL to process `pid` (a process group's leader), its group and every process under it,
    those that lead sessions of their own included (MPICH's proxy and the ranks it starts do, so a
    signal to the group misses them). Each is stopped first (SIGSTOP), and once every one found is
    seen stopped, /proc is scanned again, until no new one shows: none can start another unseen. Then
    all are killed, children before their parents (a stopped parent reaps none meanwhile), also if
    an interrupt cuts the stopping short. The caller reaps `pid`; init the rest."""
    found = [pid]
    try:
        new = [pid]
        while new:
            for p in new:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGSTOP)
            _wait_stopped(new)
            known = set(found)
            new = [child for child, parent in _parents().items() if parent in known and child not in known]
            found += new
    finally:
        for p in reversed(found[1:]):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _wait_stopped(pids: list[int], timeout: float = 1.0, proc: Path = Path("/proc")) -> None:
    """Until each of `pids` is stopped, a zombie or gone (SIGSTOP takes effect after kill() returns:
    a fork under way may yet finish), at most `timeout` seconds (one in a system call that cannot be
    interrupted stops when it returns)."""
    deadline = time.monotonic() + timeout
    for p in pids:
        while time.monotonic() < deadline:
            try:
                state = (proc / str(p) / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break  # gone
            if state in "TtZXx":
                break
            time.sleep(0.001)
