"""The contract between the worker and everything that runs it (the CLI's callers, the operator,
scripts): exit codes and the error line. Pure: no torch, no Azure SDK, importable by the operator.

Issue 9 grows this module (containers, codecs, style names, work-dir layout); the values here are
already a contract and do not change.
"""

from __future__ import annotations

import re

ERROR_PREFIX = "stylebatch: error: "  # every failure ends in exactly one line starting with this

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # bad input or settings: retrying the same command cannot help
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: storage unreachable, 5xx after retries, timeouts, token failures: retry
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2
EXIT_TERMINATED = 143  # SIGTERM (kill, timeout, docker stop, Kubernetes): 128 + 15

RETRYABLE_EXIT_CODES = frozenset({EXIT_TRANSIENT})

# --style: a built-in name, a painting to imitate or fast_neural_style weights (files by these
# suffixes, or any path/URI), or a blend of them: "starry.jpg:0.7,lavender-gold:0.3".
STYLE_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
STYLE_WEIGHTS_SUFFIXES = (".pth", ".pt", ".model")
_WEIGHT = re.compile(r"\s*([-+0-9.eE]+|nan|inf)?\s*", re.I)


def split_style_term(term: str) -> tuple[str, str]:
    """"name:0.5" -> ("name", "0.5"); a URI's own colons ("az://c/x.jpg") are not a weight."""
    head, sep, tail = term.rpartition(":")
    return (head.strip(), tail) if sep and _WEIGHT.fullmatch(tail) else (term.strip(), "")


def is_style_file(ref: str) -> bool:
    """A painting or weights file (a path or URI), not a built-in name."""
    path = ref.strip().split("?", 1)[0].lower()
    return "/" in path or "\\" in path or path.endswith(STYLE_IMAGE_SUFFIXES + STYLE_WEIGHTS_SUFFIXES)

# Outputs name the job that wrote them, so that a watch never takes them for new uploads: every
# blob the worker writes while JOB_ENV is set carries metadata OUTPUT_TAG=<job> (stylebatch.trigger).
JOB_ENV = "STYLEBATCH_JOB"
OUTPUT_TAG = "stylebatchjob"  # blob metadata keys are C# identifiers: letters, digits, underscores

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # --precision, spec.processing.precision
