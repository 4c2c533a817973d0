"""`stylebatch`: one CLI whose subcommands are exactly what the pods run.

Every subcommand's module is imported lazily, so `stylebatch operator` never imports torch
and `stylebatch styles` starts fast.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import tempfile

from stylebatch.contract import ERROR_PREFIX, EXIT_BAD_INPUT
from stylebatch.errors import StylebatchError
from stylebatch.fields import ArgParser
from stylebatch.logs import FORMATS

log = logging.getLogger(__name__)

# torch's OpenMP threads wait for the next parallel layer asleep, not spinning (set before torch is
# imported; a user's own setting wins): a spinning thread on a core that another process wants made
# every layer wait out a time slice. A pipeline of 2 torch threads beside one busy process painted a
# 640x360 frame in 141 ms spinning, 63 asleep; on an idle machine 40-43 and 38-41 ms
# (docs/benchmarks.md, twenty-sixth pass). The ranks, train-style and every stage are this CLI.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _Version(argparse.Action):
    """--version: the package's version, read only when asked for (stylebatch.__version__)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        import stylebatch

        print(f"stylebatch {stylebatch.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The stage commands' flags come from their request types (stylebatch.requests)."""
    from stylebatch.contract import DEVICES
    from stylebatch.fields import at_least, between, converter
    from stylebatch.requests import MIN_MAX_SIDE, RUN_FLAGS, RunRequest, add_commands

    positive, side = converter(int, at_least(1)), converter(int, at_least(MIN_MAX_SIDE))

    parser = ArgParser(
        prog="stylebatch",
        description="Batch neural style transfer for videos: locally, or across GPU pods on Kubernetes.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, default=argparse.SUPPRESS,
                        help="show the program's version number and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)

    prev = _command(sub, "preview", "one frame (or a photo) in many styles, labelled, on one sheet")
    prev.add_argument("input", help="video or image (.jpg .png .webp), file or blob URI")
    prev.add_argument("-o", "--output", required=True, help="the sheet: .png, .jpg or .webp (file or blob URI)")
    prev.add_argument("--at", help="time of the frame, seconds or [hh:]mm:ss (default: the middle of the video)")
    prev.add_argument("--style", action="append",
                      help="styles to show, comma-separated (one tile each; a value with weights, "
                           "a:0.7,b:0.3, is one blend); repeatable. Default: the 26 built-ins")
    prev.add_argument("--all", action="store_true", help="the 26 built-ins as well as the --style ones")
    prev.add_argument("--tile", type=side, default=256,
                      help="long side of each tile in pixels (default 256; a smaller frame is not scaled up)")
    prev.add_argument("--columns", type=positive, default=None,
                      help="tiles per row, at most the number of tiles (default: about 16:9)")
    prev.add_argument("--keep-colors", action="store_true", help="keep the frame's own colours in every tile")
    prev.add_argument("--device", choices=DEVICES, default="auto")
    prev.set_defaults(handler="stylebatch.preview:run")

    watch = _command(sub, "watch", "stylize every video in a folder or blob prefix, and every new one, exactly once")
    watch.add_argument("source", help="folder or blob prefix to watch (az://container/prefix, https://...)")
    watch.add_argument("-o", "--output", required=True,
                       help="folder or blob prefix for the outputs: same relative path and name as the video")
    watch.add_argument("--ext", help="output extension (default: the video's own when stylebatch writes it, "
                                     "else .mp4)")
    watch.add_argument("--once", action="store_true", help="stylize what is there now, then exit")
    watch.add_argument("--interval", type=converter(float, between(0.1, 86400)), default=10.0,
                       help="seconds between listings (default: 10)")
    watch.add_argument("--min-size", type=positive, default=1, help="ignore files smaller than this many bytes")
    RunRequest.add_arguments(watch, only=RUN_FLAGS)  # the flags of `run` that watch passes on to it
    watch.set_defaults(handler="stylebatch.watch:run")

    qual = _command(sub, "quality", "how much a stylized video flickers: its warping error against the input's "
                                    "(Lai et al. 2018)")
    qual.add_argument("input", help="the original video (file or blob URI): its motion is the reference")
    qual.add_argument("output", help="the stylized video (same frames)")
    qual.add_argument("--json", action="store_true", help="one JSON object instead of text")
    qual.set_defaults(handler="stylebatch.quality:cli")

    styles = _command(sub, "styles", "list the built-in styles")
    styles.set_defaults(handler="stylebatch.run:list_styles")

    op = _command(sub, "operator", "run the StyleTransferJob Kubernetes operator (kopf)")
    op.add_argument("--namespace", action="append", default=[],
                    help="namespace to watch (repeatable); default: all namespaces")
    op.add_argument("--liveness-port", type=int, default=8080,
                    help="port serving /healthz (liveness) and /metrics (Prometheus) (default: 8080)")
    op.set_defaults(handler="stylebatch_operator.main:run")

    log_help = "log records as text lines (default) or one JSON object per line (env STYLEBATCH_LOG_FORMAT)"
    parser.add_argument("--log-format", choices=FORMATS, default=None, help=log_help)
    for command in sub.choices.values():  # also after the command: `stylebatch run --log-format json ...`
        command.add_argument("--log-format", choices=FORMATS, default=argparse.SUPPRESS, help=log_help)
    return parser


def _command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is its line in `stylebatch --help` and heads its own --help."""
    return sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}.")


def _setup_logging(args: argparse.Namespace) -> None:
    from stylebatch import logs

    fmt = logs.chosen(getattr(args, "log_format", None))
    if args.command == "operator":
        args.log_format = fmt  # kopf configures its own logging; the operator applies the format
        return
    job = getattr(args, "output", None) or getattr(args, "work", None)
    logs.setup(fmt, job=job.split("?", 1)[0] if isinstance(job, str) else None)


def _call(args: argparse.Namespace) -> int:
    """A stage gets its validated request (its result is for Python callers); other commands their Namespace."""
    import importlib

    module, _, func = args.handler.partition(":")
    handler = getattr(importlib.import_module(module), func)
    request = getattr(args, "request", None)
    if request is not None:
        handler(request.from_namespace(args).validate())
        return 0
    return handler(args) or 0


def _temp_folder_problem(exc: OSError) -> str | None:
    """No writable temp folder at all (a read-only root filesystem without the pods' /tmp emptyDir)
    or a full one, in words; None for any other OSError. Running again in the same place cannot help."""
    if isinstance(exc, FileNotFoundError) and "No usable temporary directory" in str(exc):
        return ("no writable temp folder (TMPDIR, /tmp, /var/tmp, /usr/tmp and the current folder were tried): "
                "mount one at /tmp (the job pods' emptyDir) or set TMPDIR")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left in {exc.filename or tempfile.gettempdir()} ({exc.strerror}): "
                "give the temp folder (/tmp, or TMPDIR) more room")
    return None


def main(argv: list[str] | None = None) -> int:
    from stylebatch import signals

    try:
        args = build_parser().parse_args(argv)
        _setup_logging(args)
        if args.command != "operator":  # kopf handles its own signals
            signals.install()
        _warn_of_ignored_flags(args)
        return _call(args)
    except StylebatchError as exc:
        from stylebatch.logs import hide_signatures

        print(f"{ERROR_PREFIX}{hide_signatures(' '.join(str(exc).split()))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{ERROR_PREFIX}interrupted by {signals.cause()}", file=sys.stderr)
        return signals.exit_code()
    except OSError as exc:
        problem = _temp_folder_problem(exc)
        if problem is None:
            raise
        print(f"{ERROR_PREFIX}{problem}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _warn_of_ignored_flags(args: argparse.Namespace) -> None:
    """Say so, once, where a user's command gives a flag that changes nothing (the stages' commands, as
    pods run them, say nothing: each rank would repeat it)."""
    from stylebatch.temporal_defaults import with_defaults

    given = getattr(args, "temporal_strength", None)
    if args.command in ("run", "watch") and given is not None \
            and with_defaults(getattr(args, "temporal", None), given)[0] != "on":
        log.warning("--temporal-strength changes nothing without --temporal on (temporal stability is off)")


def entry() -> None:
    """The `stylebatch` command (and `python -m stylebatch`): main(), then the process ends with its
    exit code, at once where torch was imported (`exit_now`)."""
    code = main()
    if "torch" in sys.modules:
        exit_now(code)
    raise SystemExit(code)


def exit_now(code: int) -> None:
    """End this process with `code` once its output is out: logs and stdout/stderr flushed, MPI
    finalized, without the interpreter's teardown. In a process that imported torch (a stylize rank,
    the style check) that teardown frees torch's modules and the model one object at a time: 0.5-1 s
    at the end of every job, for memory the kernel takes back anyway. Every file a stage writes is
    closed before its command returns."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said on it
            pass
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        if (dispatch := sys.modules.get("stylebatch.dispatch")) is not None:
            dispatch.end_mpi_calls()  # its threads (the chunk counter's progress) call MPI no more
        mpi.Finalize()  # what mpi4py's exit hook would do: mpiexec counts a rank without it as failed
    os._exit(code)
