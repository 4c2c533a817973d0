"""The contract between the worker and everything that runs it (the CLI's callers, the operator,
scripts): exit codes and the error line. Pure: no torch, no Azure SDK, importable by the operator.

Issue 9 grows this module (containers, codecs, style names, work-dir layout); the values here are
already a contract and do not change.
"""

from __future__ import annotations

ERROR_PREFIX = "stylebatch: error: "  # every failure ends in exactly one line starting with this

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # bad input or settings: retrying the same command cannot help
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: storage unreachable, 5xx after retries, timeouts, token failures: retry
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2
EXIT_TERMINATED = 143  # SIGTERM (kill, timeout, docker stop, Kubernetes): 128 + 15

RETRYABLE_EXIT_CODES = frozenset({EXIT_TRANSIENT})
