"""Log records as people read them (`stylebatch: ...` lines, the default) or as log pipelines read
them (`--log-format json`: one JSON object per line). Used by the worker's CLI and the operator.

Every JSON record has time, level, logger, message, job and rank (null when there is none): job is
STYLEBATCH_JOB (the operator sets it in every pod) or what the first command worked on (`run`'s
output, inherited by its ranks),
or the StyleTransferJob an operator record is about; rank is the MPI rank of a stylize process.
The final `stylebatch: error: ...` line is not a log record: it stays one plain line in both
formats, the contract callers parse (stylebatch.contract.ERROR_PREFIX).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import datetime, timezone

from stylebatch.contract import JOB_ENV

FORMATS = ("text", "json")
FORMAT_ENV = "STYLEBATCH_LOG_FORMAT"  # the format when no --log-format is given (inherited by child processes)
LOG_JOB_ENV = "STYLEBATCH_LOG_JOB"  # the job the first stylebatch process named: its ranks log the same one
RANK_ENVS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


# A signature anywhere in text, also where it is no query string: a SAS pasted after '&' or a path
# (`-o out.mp4&sv=...&sig=...`), percent-encoded (`%26sig%3D...`), HTML-escaped (`&amp;sig=`), or
# after any other mark (`;` `#` `,` `[`): whatever is no letter, digit or '_' before it.
_ANY_SAS_SIGNATURE = re.compile(r"((?:^|[^A-Za-z0-9_]|%26)sig(?:=|%3D))(?:(?!%26)[A-Za-z0-9%+/=_.-])+", re.IGNORECASE)


def hide_signatures(text: str) -> str:
    """text with the value of every SAS signature in it replaced by REDACTED."""
    return _ANY_SAS_SIGNATURE.sub(r"\1REDACTED", text) if "sig" in text.lower() else text


def say(text: str) -> None:
    """Write a command's own output (its result, not a log record) to stdout, now. A reader that
    went away (`stylebatch styles | head -1`) ends the output quietly; a stdout that takes nothing
    more (`> /dev/full`, a full disk) is BadInput, said as such, not as a full temp folder."""
    from stylebatch.errors import BadInput

    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to say, nor at exit
    except OSError as exc:
        raise BadInput(f"cannot write to standard output ({exc.strerror or exc})") from None


def counted(n: int, noun: str) -> str:
    """"1 frame", "2 frames": a count in a log line, in English."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class TextFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else record.levelname.lower() + ": "
        return f"stylebatch: {level}{hide_signatures(record.getMessage())}"


class OtherFormat(logging.Formatter):
    """Another library's WARNING or worse as one line: `stylebatch: warning: <logger>: <first line>`,
    a Python warning (logging.captureWarnings) as `stylebatch: warning: <Category>: <message>`."""

    def format(self, record: logging.LogRecord) -> str:
        lines = record.getMessage().strip().splitlines() or [""]
        text = f"{record.name}: {hide_signatures(lines[0])}"
        if record.name == "py.warnings":  # "path:line: Category: message\n  source line"
            where, _, rest = lines[0].partition(": ")
            text = rest if rest and where.rpartition(":")[2].isdigit() else lines[0]
        return f"stylebatch: {record.levelname.lower()}: {text}"


class JsonFormat(logging.Formatter):
    """One JSON object per record, on one line (a traceback goes into "exception", escaped). No field
    shows a SAS signature (hide_signatures), as no text line does."""

    def __init__(self, job: str | None = None, rank: int | None = None) -> None:
        super().__init__()
        self.job, self.rank = job, rank

    def format(self, record: logging.LogRecord) -> str:
        ref = getattr(record, "k8s_ref", None) or {}  # kopf's per-object loggers
        job = f"{ref['namespace']}/{ref['name']}" if ref.get("namespace") and ref.get("name") else ref.get("name")
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": hide_signatures(record.getMessage()),
            "job": hide_signatures(job or self.job) if job or self.job else None,  # (`-o out&sig=...`)
            "rank": self.rank,
        }
        if record.exc_info:
            out["exception"] = hide_signatures(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def chosen(flag: str | None) -> str:
    """The format: the flag's, else STYLEBATCH_LOG_FORMAT's, else text."""
    value = flag or os.environ.get(FORMAT_ENV) or "text"
    if value not in FORMATS:
        from stylebatch.errors import BadInput

        raise BadInput(f"bad {FORMAT_ENV} {value!r}: use {' or '.join(FORMATS)}")
    return value


def rank_from_env() -> int | None:
    for name in RANK_ENVS:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def formatter(fmt: str, job: str | None = None) -> logging.Formatter:
    job = os.environ.get(JOB_ENV) or os.environ.get(LOG_JOB_ENV) or job
    return JsonFormat(job, rank_from_env()) if fmt == "json" else TextFormat()


_chosen: dict[str, str] = {}  # what setup() chose in this process: child_env() hands it to child processes


def child_env() -> dict[str, str]:
    """The variables a stylebatch child process (an MPI rank) needs to log as this process does.

    setup() never changes os.environ: a program that calls the API in-process keeps its environment."""
    return dict(_chosen)


def set_rank(rank: int, logger: str = "stylebatch") -> None:
    """JSON records say `rank` from now on where no MPI variable named one: a stylize process that is
    its run's only rank (no mpiexec: `stylebatch run --workers 1`, or `stylebatch stylize` by hand)."""
    for handler in (*logging.getLogger(logger).handlers, *logging.getLogger().handlers):
        if isinstance(handler.formatter, JsonFormat) and handler.formatter.rank is None:
            handler.formatter.rank = rank


def setup(fmt: str, job: str | None = None, logger: str = "stylebatch") -> None:
    """Send `logger`'s records (INFO and up) to stderr in `fmt`, and where logging is not configured yet
    every other logger's WARNING and up and Python's warnings too; child_env() carries the choice to children."""
    _chosen.clear()
    _chosen[FORMAT_ENV] = fmt
    job = os.environ.get(LOG_JOB_ENV) or job
    if job:
        _chosen[LOG_JOB_ENV] = job
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, job))
    log = logging.getLogger(logger)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    root = logging.getLogger()
    if not root.handlers:  # nobody configured logging (stylebatch's own process, not a program calling main())
        # the other libraries' records (WARNING and up) and Python warnings (torch's, Pillow's, azure-core's)
        # one line each in the same format: never Python's bare fallback handler or showwarning's two lines
        other = logging.StreamHandler(sys.stderr)
        other.setFormatter(formatter(fmt, job) if fmt == "json" else OtherFormat())
        root.addHandler(other)
        root.setLevel(logging.WARNING)
        logging.captureWarnings(True)
