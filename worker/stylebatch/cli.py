"""`stylebatch`: one CLI whose subcommands are exactly what the pods run.

Every subcommand's module is imported lazily, so `stylebatch operator` never imports torch
and `stylebatch styles` starts fast.
"""

from __future__ import annotations

import argparse
import sys

from stylebatch import __version__
from stylebatch.errors import StylebatchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylebatch",
        description="Batch neural style transfer for videos: locally, or across GPU pods on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"stylebatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    op = sub.add_parser("operator", help="run the StyleTransferJob Kubernetes operator (kopf)")
    op.add_argument("--namespace", action="append", default=[],
                    help="namespace to watch (repeatable); default: all namespaces")
    op.add_argument("--liveness-port", type=int, default=8080,
                    help="port of the /healthz liveness endpoint (default: 8080)")
    op.set_defaults(handler="stylebatch_operator.main:run")
    return parser


def _call(target: str, args: argparse.Namespace) -> int:
    import importlib

    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)(args) or 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _call(args.handler, args)
    except StylebatchError as exc:
        print(f"stylebatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("stylebatch: interrupted", file=sys.stderr)
        return 130
