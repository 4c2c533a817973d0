"""SIGTERM (what `kill`, `timeout`, docker and Kubernetes send) is handled exactly like Ctrl-C: it
raises KeyboardInterrupt in the main thread, so every `finally` runs (ranks stopped, scratch removed,
locks let go). What stopped us decides the exit code: 143 for SIGTERM, 130 for SIGINT."""

from __future__ import annotations

import signal
import threading

from stylebatch.contract import EXIT_INTERRUPTED, EXIT_TERMINATED

_received: list[int] = []


def _on_sigterm(signum: int, frame) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def install() -> None:
    """Turn SIGTERM into KeyboardInterrupt in this process (only the main thread can)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def exit_code() -> int:
    return EXIT_TERMINATED if _received else EXIT_INTERRUPTED


def cause() -> str:
    return "SIGTERM" if _received else "Ctrl-C (SIGINT)"
