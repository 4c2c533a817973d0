"""Fixtures of the rehearsal tier (see rehearsal_stack.py) and the figures it prints at the end."""

from __future__ import annotations

import json
import signal

from rehearsal_stack import FIGURES, stack  # noqa: F401  (the fixture)


def _stop(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def pytest_configure(config) -> None:  # noqa: ARG001
    """A CI runner's SIGTERM (a cancelled run, a time limit) ends the tier like Ctrl-C: pytest then
    tears the fixtures down, so the tier's own docker engine, containers, network and Azurite stop
    instead of outliving it (Python's default SIGTERM ends the process without any `finally`)."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if FIGURES:
        terminalreporter.section("rehearsal figures")
        for name, values in FIGURES.items():
            terminalreporter.write_line(f"{name}: {json.dumps(values)}")
