"""Frames per second of a Stylizer at common video sizes; prints a markdown table.

    .venv/bin/python benchmarks/bench_models.py                       # built-in default style, auto device
    .venv/bin/python benchmarks/bench_models.py --device cuda --max-side 720
    .venv/bin/python benchmarks/bench_models.py --transformer-net     # fast_neural_style architecture

Timing covers the whole call: uint8 frames in, host-to-device copy, net, copy back, uint8 out.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stylebatch.errors import StylebatchError
from stylebatch.models import DEFAULT_STYLE, load_stylizer
from stylebatch.transformer_net import TransformerNet

SIZES = [(320, 180), (640, 360), (1280, 720)]


def measure(stylizer, width: int, height: int, batch: int, min_seconds: float) -> float:
    frames = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    stylizer(frames)  # warm-up: allocations, cudnn autotuning
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < min_seconds:
        stylizer(frames)
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--style", default=DEFAULT_STYLE, help=f"style to time (default: {DEFAULT_STYLE})")
    parser.add_argument("--transformer-net", action="store_true",
                        help="time the fast_neural_style TransformerNet (random weights) instead of --style")
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes (default: 1,4)")
    parser.add_argument("--max-side", type=int, default=None, help="pass max_side to the stylizer")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time spent per row (default: 3)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        style = args.style
        if args.transformer_net:
            style = str(Path(tmp) / "random_transformer_net.pth")
            torch.save(TransformerNet().state_dict(), style)
        try:
            stylizer = load_stylizer(style, device=args.device, max_side=args.max_side, precision=args.precision)
        except StylebatchError as exc:
            print(f"bench_models: error: {exc}", file=sys.stderr)
            return 2
        where = torch.cuda.get_device_name(stylizer.device) if stylizer.device.type == "cuda" else (
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
        print(f"style `{'TransformerNet (fast_neural_style)' if args.transformer_net else stylizer.name}`, "
              f"device {stylizer.device} ({where}), {stylizer.autocast or stylizer.dtype}, torch {torch.__version__}"
              + (f", max_side {args.max_side}" if args.max_side else ""))
        print()
        print("| size | batch | frames/s | ms/frame |")
        print("|---|---|---|---|")
        for width, height in SIZES:
            for batch in (int(b) for b in args.batches.split(",")):
                fps = measure(stylizer, width, height, batch, args.min_seconds)
                print(f"| {width}x{height} | {batch} | {fps:.2f} | {1000 / fps:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
