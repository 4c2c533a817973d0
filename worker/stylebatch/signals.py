"""SIGTERM (what `kill`, `timeout`, docker and Kubernetes send) and SIGHUP (a closed terminal or ssh
session) are handled exactly like Ctrl-C: they raise KeyboardInterrupt in the main thread, so every
`finally` runs (stage processes stopped, scratch removed, locks let go). What stopped us decides the
exit code: 143 for SIGTERM, 129 for SIGHUP, 130 for SIGINT. Only the first of them raises: a second
one while the process is already stopping (mpiexec forwarding one, say) must not break its cleanup
or its last line."""

from __future__ import annotations

import contextlib
import signal
import threading

from stylebatch.contract import EXIT_HUNG_UP, EXIT_INTERRUPTED, EXIT_TERMINATED

_HANDLED = {signal.SIGTERM: (EXIT_TERMINATED, "SIGTERM"), signal.SIGHUP: (EXIT_HUNG_UP, "SIGHUP (hang-up)")}
_received: list[int] = []


def _on_signal(signum: int, frame) -> None:
    _received.append(signum)
    if len(_received) == 1:
        raise KeyboardInterrupt


def install() -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt in this process (only the main thread can)."""
    if threading.current_thread() is threading.main_thread():
        for signum in _HANDLED:
            signal.signal(signum, _on_signal)


@contextlib.contextmanager
def handled():
    """For an API call: SIGTERM and SIGHUP handled as in the CLI while the call runs, where the
    program left them at their defaults (main thread only), and restored afterwards. Otherwise a
    SIGTERM would end the program at once and leave its stage processes running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _HANDLED}
    mine = [signum for signum, handler in previous.items() if handler == signal.SIG_DFL]
    if mine:
        _received.clear()
    for signum in mine:
        signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum in mine:
            signal.signal(signum, previous[signum])


def exit_code() -> int:
    return _HANDLED[_received[0]][0] if _received else EXIT_INTERRUPTED


def cause() -> str:
    return _HANDLED[_received[0]][1] if _received else "Ctrl-C (SIGINT)"
