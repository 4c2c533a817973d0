"""Fixtures of the rehearsal tier (see rehearsal_stack.py) and the figures it prints at the end."""

from __future__ import annotations

import json

from rehearsal_stack import FIGURES, stack  # noqa: F401  (the fixture)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if FIGURES:
        terminalreporter.section("rehearsal figures")
        for name, values in FIGURES.items():
            terminalreporter.write_line(f"{name}: {json.dumps(values)}")
