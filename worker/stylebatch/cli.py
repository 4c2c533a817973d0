"""`stylebatch`: one CLI whose subcommands are exactly what the pods run.

Every subcommand's module is imported lazily, so `stylebatch operator` never imports torch
and `stylebatch styles` starts fast.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import tempfile
from typing import NoReturn

from stylebatch import __version__
from stylebatch.contract import EXIT_BAD_INPUT, PRECISIONS
from stylebatch.errors import StylebatchError


class _Parser(argparse.ArgumentParser):
    """Bad flags end like every other error: one `stylebatch: error:` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"stylebatch: error: {' '.join(message.split())} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {least}")
    return value


def _positive(text: str) -> int:
    return _whole(text, 1)


def _crf(text: str) -> int:
    return _whole(text, 0)


def _number(text: str, low: float, high: float, unit: str = "") -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r} must be between {low:g} and {high:g}{unit}")
    return value


def _strength(text: str) -> float:
    return _number(text, 0.0, 1.0)


def _temporal_strength(text: str) -> float:
    value = _strength(text)
    if value > 0.95:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most 0.95 (1 would freeze the picture)")
    return value


def _seconds(text: str) -> float:
    return _number(text, 0.1, 86400, " seconds")


def _max_side(text: str) -> int:
    return _whole(text, 32)


def _encoder_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("encoding")
    g.add_argument("--codec", help="h264 (default; vp9 for .webm, mjpeg for .avi), hevc, vp9, h264_nvenc, "
                                   "hevc_nvenc, mjpeg")
    rc = g.add_mutually_exclusive_group()
    rc.add_argument("--crf", type=_crf, help="constant quality (lower is better; default 18 for h264)")
    rc.add_argument("--bitrate", help="target bitrate instead of --crf, e.g. 4M or 800k")
    g.add_argument("--preset", help="encoder speed preset, e.g. medium (x264/x265), good (vp9), p5 (nvenc)")
    g.add_argument("--chunk-frames", type=_positive, default=None,
                   help="frames per chunk, the unit of work and of resume (default: 24 to 120, aiming at 16 chunks)")


def _model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("style")
    g.add_argument("--style", help="built-in style name or index (see `stylebatch styles`), a painting to "
                                   "imitate (.jpg .png .webp), a .pth weights file (paths or blob URIs), "
                                   "or a blend such as starry.jpg:0.7,lavender-gold:0.3")
    g.add_argument("--strength", type=_strength, default=1.0,
                   help="0 keeps the picture, 1 is full style (a painting: from the video's own style to the "
                        "painting's)")
    g.add_argument("--keep-colors", action="store_true",
                   help="keep the video's own colours: transfer only the style's brightness and strokes")
    g.add_argument("--max-side", type=_max_side, default=None,
                   help="stylize at most this many pixels on the long side (output keeps its size)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--batch-size", type=_positive, default=None, help="frames per model call")
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="model arithmetic: auto (default) is fp16 on a GPU, bf16 on a CPU with native bf16 "
                        "(AVX-512 BF16, AMX), else fp32")
    g.add_argument("--temporal", choices=["on", "off"], default=None,
                   help="on: blend each frame with the previous one moved along the optical flow, so texture "
                        "holds still (default: off)")
    g.add_argument("--temporal-strength", type=_temporal_strength, default=None,
                   help="0..0.95: how much of the previous frame is kept where the motion is trusted "
                        "(default 0.6)")


def _run_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `run` that `watch` passes on to it."""
    p.add_argument("--workers", type=_positive, default=None,
                   help="MPI ranks to run locally (default: one per GPU, else one per CPU core, at most 4)")
    _model_flags(p)
    _encoder_flags(p)


def run_flags_argv(args: argparse.Namespace) -> list[str]:
    """The run flags (_run_flags) that args sets to other than their defaults, as command-line words."""
    parser = argparse.ArgumentParser(add_help=False)
    _run_flags(parser)
    argv: list[str] = []
    for action in parser._actions:
        value = getattr(args, action.dest, action.default)
        if value is None or value == action.default:
            continue
        argv += [action.option_strings[-1]] if action.nargs == 0 else [action.option_strings[-1], str(value)]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stylebatch",
        description="Batch neural style transfer for videos: locally, or across GPU pods on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"stylebatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="stylize a video end to end: preprocess, stylize on N ranks, postprocess")
    run.add_argument("input", help="video file or blob URI (az://container/path, https://...)")
    run.add_argument("-o", "--output", required=True, help="output file or blob URI; its extension picks "
                                                            "the container (.mp4 .mov .m4v .mkv .webm .avi)")
    run.add_argument("--work", help="work dir (folder or blob prefix); re-use one to resume (default: temp)")
    run.add_argument("--keep-work", action="store_true", help="keep the work dir after success")
    _run_flags(run)
    run.set_defaults(handler="stylebatch.run:run")

    prev = sub.add_parser("preview", help="one frame (or a photo) in many styles, labelled, on one sheet")
    prev.add_argument("input", help="video or image (.jpg .png .webp), file or blob URI")
    prev.add_argument("-o", "--output", required=True, help="the sheet: .png, .jpg or .webp (file or blob URI)")
    prev.add_argument("--at", help="time of the frame, seconds or [hh:]mm:ss (default: the middle of the video)")
    prev.add_argument("--style", action="append",
                      help="styles to show, comma-separated (one tile each; a value with weights, "
                           "a:0.7,b:0.3, is one blend); repeatable. Default: the 26 built-ins")
    prev.add_argument("--all", action="store_true", help="the 26 built-ins as well as the --style ones")
    prev.add_argument("--tile", type=_max_side, default=256, help="long side of each tile in pixels (default 256)")
    prev.add_argument("--columns", type=_positive, default=None, help="tiles per row (default: about 16:9)")
    prev.add_argument("--keep-colors", action="store_true", help="keep the frame's own colours in every tile")
    prev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    prev.set_defaults(handler="stylebatch.preview:run")

    watch = sub.add_parser("watch", help="stylize every video in a folder or blob prefix, and every new one, "
                                         "exactly once")
    watch.add_argument("source", help="folder or blob prefix to watch (az://container/prefix, https://...)")
    watch.add_argument("-o", "--output", required=True,
                       help="folder or blob prefix for the outputs: same relative path and name as the video")
    watch.add_argument("--ext", help="output extension (default: the video's own when stylebatch writes it, "
                                     "else .mp4)")
    watch.add_argument("--once", action="store_true", help="stylize what is there now, then exit")
    watch.add_argument("--interval", type=_seconds, default=10.0, help="seconds between listings (default: 10)")
    watch.add_argument("--min-size", type=_positive, default=1, help="ignore files smaller than this many bytes")
    _run_flags(watch)
    watch.set_defaults(handler="stylebatch.watch:run")

    tr = sub.add_parser("train-style", help="train a fast_neural_style network for a painting (best quality)")
    tr.add_argument("painting", help="the painting (.jpg .png .webp), file or blob URI")
    tr.add_argument("-o", "--output", required=True, help="the weights file to write (.pth), for --style")
    tr.add_argument("--content", action="append", default=[],
                    help="a video, picture or folder of pictures to learn on (repeatable); frames are sampled")
    tr.add_argument("--steps", type=_positive, default=4000, help="training steps (default 4000)")
    tr.add_argument("--size", type=_max_side, default=256, help="training crop size in pixels (default 256)")
    tr.add_argument("--batch-size", type=_positive, default=4, help="crops per step (default 4)")
    tr.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 0.001)")
    tr.add_argument("--style-weight", type=float, default=None, help="style loss weight (default tuned)")
    tr.add_argument("--content-weight", type=float, default=None, help="content loss weight (default tuned)")
    tr.add_argument("--checkpoint-every", type=_positive, default=200, help="steps between checkpoints")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    tr.set_defaults(handler="stylebatch.train:run")

    styles = sub.add_parser("styles", help="list the built-in styles")
    styles.set_defaults(handler="stylebatch.run:list_styles")

    pre = sub.add_parser("preprocess", help="stage 1: copy and probe the input, write the work dir's manifest")
    pre.add_argument("input")
    pre.add_argument("--work", required=True)
    pre.add_argument("-o", "--output", required=True)
    _encoder_flags(pre)
    pre.set_defaults(handler="stylebatch.preprocess:run")

    sty = sub.add_parser("stylize", help="stage 2 (under mpiexec): stylize this rank's chunks into parts")
    sty.add_argument("--work", required=True)
    _model_flags(sty)
    sty.set_defaults(handler="stylebatch.stylize:run")

    post = sub.add_parser("postprocess", help="stage 3: mux the parts and the sound, publish the output")
    post.add_argument("--work", required=True)
    post.add_argument("-o", "--output", help="override the output recorded by preprocess")
    post.add_argument("--delete-work", action="store_true",
                      help="after the output is published, delete the files stylebatch wrote into the work dir")
    post.set_defaults(handler="stylebatch.postprocess:run")

    qual = sub.add_parser("quality", help="how much a stylized video flickers: its warping error against "
                                          "the input's (Lai et al. 2018)")
    qual.add_argument("input", help="the original video (file or blob URI): its motion is the reference")
    qual.add_argument("output", help="the stylized video (same frames)")
    qual.add_argument("--json", action="store_true", help="one JSON object instead of text")
    qual.set_defaults(handler="stylebatch.quality:cli")

    op = sub.add_parser("operator", help="run the StyleTransferJob Kubernetes operator (kopf)")
    op.add_argument("--namespace", action="append", default=[],
                    help="namespace to watch (repeatable); default: all namespaces")
    op.add_argument("--liveness-port", type=int, default=8080,
                    help="port serving /healthz (liveness) and /metrics (Prometheus) (default: 8080)")
    op.set_defaults(handler="stylebatch_operator.main:run")
    return parser


class _LogFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else record.levelname.lower() + ": "
        return f"stylebatch: {level}{record.getMessage()}"


def _setup_logging(command: str) -> None:
    if command == "operator":
        return  # kopf configures its own logging
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormat())
    root = logging.getLogger("stylebatch")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _call(target: str, args: argparse.Namespace) -> int:
    import importlib

    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)(args) or 0


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

    args = build_parser().parse_args(argv)
    _setup_logging(args.command)
    if args.command != "operator":  # kopf handles its own signals
        signals.install()
    try:
        return _call(args.handler, args)
    except StylebatchError as exc:
        print(f"stylebatch: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        problem = _temp_folder_problem(exc)
        if problem is None:
            raise
        print(f"stylebatch: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"stylebatch: error: interrupted by {signals.cause()}", file=sys.stderr)
        return signals.exit_code()
