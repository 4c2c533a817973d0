"""Where a frame's time goes in stylebatch's networks on one core, layer by layer; prints a markdown table.

    .venv/bin/python benchmarks/bench_layers.py                          # built-in lavender-gold, 640x360, fp32, bf16
    .venv/bin/python benchmarks/bench_layers.py --style weights --size 720x528 --precisions bf16

A frame is painted as a rank paints it (`load_stylizer`, uint8 in and out, batch 1, one torch thread,
freed memory reused as a rank does). Each of fast_nets' layer functions (`padded_conv`,
`instance_norm`, `UpsampleConv2x`, `RowSplitConv`, `ColumnPairConv`, `winograd_conv3x3`,
`nnpack_conv`) is wrapped to add its thread CPU time to its row, keyed by what it is and the
picture it takes (channels x height x width, its type); a call inside another (the edge strips of a
padded_conv, an nnpack_conv of a Winograd layer) counts in its caller only. "other" is the rest of a
frame: the colour conversions, the style's affines, the network's own glue. A row's GFLOP are those
torch.utils.flop_counter sees in it (2 per multiply-add), counted once, not timed (the frame's are
counted over the whole frame, so a layer no row covers would show as a gap); NNPACK's
convolutions (Winograd, FFT) are invisible to it, so their rows show none. The GEMM beside each
precision is bench_efficiency's (the faster of torch.mm and oneDNN's implicit GEMM, in that
precision), so a row's share says how near the hardware that layer runs. `--style weights` paints
with an untrained TransformerNet (its layers' times do not depend on its weights).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import logging
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_efficiency import measure_gemm
from stylebatch import fast_nets
from stylebatch.memory import reuse_freed_memory
from stylebatch.models import DEFAULT_STYLE, load_stylizer
from stylebatch.transformer_net import TransformerNet

# (fast_nets attribute, the class it is a method of or None, the row's name)
LAYERS = (("padded_conv", None, "convolution"), ("instance_norm", None, "instance norm (and ReLU)"),
          ("forward", "UpsampleConv2x", "upsample x2 + convolution"), ("forward", "RowSplitConv", "last convolution"),
          ("forward", "ColumnPairConv", "last convolution"), ("winograd_conv3x3", None, "Winograd convolution"),
          ("nnpack_conv", None, "NNPACK convolution"))


class LayerClock:
    """Thread CPU time and FLOPs per (layer, picture) while installed (a context manager)."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.calls: dict[tuple[str, str], int] = collections.defaultdict(int)
        self.flops: dict[tuple[str, str], int] = collections.defaultdict(int)
        self.counting = False  # count FLOPs (one untimed frame) instead of time
        self.frame_flops = 0  # the whole frame's, counted apart from the layers'
        self._depth = 0

    def _wrap(self, fn, name: str, method: bool):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            x = args[1] if method else args[0]
            key = (name, f"{'x'.join(map(str, x.shape[1:]))} {str(x.dtype).removeprefix('torch.')}")
            self._depth += 1
            try:
                if self.counting:
                    counter = FlopCounterMode(display=False)
                    with counter:
                        out = fn(*args, **kwargs)
                    self.flops[key] += counter.get_total_flops()
                    return out
                start = time.thread_time()
                out = fn(*args, **kwargs)
                self.seconds[key] += time.thread_time() - start
                self.calls[key] += 1
                return out
            finally:
                self._depth -= 1
        return timed

    @contextlib.contextmanager
    def installed(self):
        with contextlib.ExitStack() as undo:
            for attr, owner, name in LAYERS:
                target = getattr(fast_nets, owner) if owner else fast_nets
                fn = getattr(target, attr)
                setattr(target, attr, self._wrap(fn, name, owner is not None))
                undo.callback(setattr, target, attr, fn)
            yield self


def layer_rows(paint, seconds: float) -> tuple[float, int, LayerClock]:
    """(thread CPU seconds a frame, frames painted, the clock) for `paint()`: two frames' warm-up, one
    counting FLOPs, then frames until `seconds` of CPU time have passed."""
    clock = LayerClock()
    with clock.installed(), torch.inference_mode():
        paint(), paint()
        clock.seconds.clear(), clock.calls.clear()
        clock.counting, whole = True, FlopCounterMode(display=False)
        with whole:
            paint()
        clock.counting, clock.frame_flops = False, whole.get_total_flops()
        frames, start = 0, time.thread_time()
        while frames < 2 or time.thread_time() - start < seconds:
            paint()
            frames += 1
        return (time.thread_time() - start) / frames, frames, clock


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--style", default=DEFAULT_STYLE, help="a built-in style, or 'weights' (a TransformerNet .pth)")
    p.add_argument("--size", default="640x360", help="WxH of the frame painted")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (default: both)")
    p.add_argument("--seconds", type=float, default=4.0, help="CPU seconds of frames per precision (default: 4)")
    p.add_argument("--gemm-size", type=int, default=2048, help="torch.mm's matrices for the GEMM (default: 2048)")
    a = p.parse_args(argv)
    logging.getLogger("stylebatch").setLevel(logging.ERROR)  # untrained weights paint flat frames: no warning
    reuse_freed_memory()
    torch.set_num_threads(1)
    w, h = map(int, a.size.split("x"))
    frame = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    print(f"{a.style} at {a.size}, 1 torch thread, thread CPU time a frame; load average {os.getloadavg()[0]:.1f}\n")
    print("| precision | layer | picture in | calls a frame | ms a frame | of the frame | GFLOP a frame | GFLOP/s "
          "| of GEMM |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    gemms = []
    with tempfile.TemporaryDirectory() as tmp:
        style = a.style
        if style == "weights":
            style = os.path.join(tmp, "net.pth")
            torch.save(TransformerNet().eval().state_dict(), style)
        for precision in a.precisions.split(","):
            stylizer = load_stylizer(style, device="cpu", precision=precision)
            gemm = max(measure_gemm(torch.bfloat16 if precision == "bf16" else torch.float32, n=a.gemm_size))
            gemms.append(f"{precision} {gemm:.1f}")
            per_frame, frames, clock = layer_rows(lambda: stylizer(frame), a.seconds)
            rows = sorted(clock.seconds, key=lambda k: -clock.seconds[k])
            for key in rows:
                s, gflop = clock.seconds[key] / frames, clock.flops[key] / 1e9
                rate = f"{gflop / s:.1f} | {gflop / s / gemm:.0%}" if gflop and s else "- | -"
                print(f"| {precision} | {key[0]} | {key[1]} | {clock.calls[key] / frames:g} | {1e3 * s:.2f} | "
                      f"{s / per_frame:.0%} | {gflop:.3g} | {rate} |")
            other = per_frame - sum(clock.seconds.values()) / frames
            total = clock.frame_flops / 1e9
            print(f"| {precision} | other | | | {1e3 * other:.2f} | {other / per_frame:.0%} | | | |")
            print(f"| {precision} | **frame** | 3x{h}x{w} uint8 | 1 | **{1e3 * per_frame:.2f}** | 100% | {total:.3g} | "
                  f"{total / per_frame:.1f} | {total / per_frame / gemm:.0%} |", flush=True)
    print(f"\nGEMM (GFLOP/s per core, the faster of torch.mm {a.gemm_size}^3 and oneDNN's implicit GEMM): "
          f"{', '.join(gemms)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
