"""What each of stylebatch's C kernels (`stylebatch._native`) saves a frame, side by side in one process;
prints a markdown table.

    .venv/bin/python benchmarks/bench_native.py                                  # built-in lavender-gold, 640x360, bf16
    .venv/bin/python benchmarks/bench_native.py --style weights --precision fp32 --size 1280x720

Frames of real footage (Debian's opencv-doc Megamind clip, installed by setup.sh) are painted as a rank
paints them (`load_stylizer`, uint8 in and out, batch 1, one torch thread, freed memory reused), each
frame once with every kernel and once with one group of kernels switched off (native's functions
replaced by ones that decline, so fast_nets and models.Stylizer use torch's operations there), the
order alternating from round to round, so a shared machine's drift falls on both alike. A row is the
median thread CPU time of a frame (and the fastest) with that group off, and what the group saves
against all on; the last row has every kernel off (`STYLEBATCH_NATIVE=0`'s paths). `--style weights`
paints with a seeded, untrained TransformerNet (its time does not depend on its weights).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from stylebatch import native
from stylebatch.memory import reuse_freed_memory
from stylebatch.models import load_stylizer
from stylebatch.transformer_net import TransformerNet

CLIP = "/usr/share/doc/opencv-doc/examples/data/Megamind.avi"

# group -> native's functions it switches off, and what declining looks like for each
GROUPS = {
    "instance norms (_instance_norm.c)": {"_kernel": None},
    "first layer's column pairs (_padding.c)": {"column_pairs": None},
    "padded strips, upsampling interleave (_padding.c)": {"row_strip": None, "interleave": False},
    "frames in and out, centring (_frames.c)": {"frames_to_unit": None, "centred": None, "frames_from_unit": None},
}


def real_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-ss", "2", "-i", CLIP, "-frames:v", str(count), "-vf",
                          f"scale={width}:{height}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return list(np.frombuffer(raw, np.uint8).reshape(count, 1, height, width, 3).copy())


def switched_off(names: dict) -> dict:
    """native's functions for `names` replaced by ones that decline; returns the originals."""
    before = {}
    for name, declined in names.items():
        before[name] = getattr(native, name)
        setattr(native, name, (lambda *a, **k: None) if name == "_kernel" else
                (lambda *a, declined=declined, **k: declined))
    return before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--style", default="lavender-gold", help="a built-in style, or 'weights' (a TransformerNet .pth)")
    ap.add_argument("--size", default="640x360", help="WxH of the frames painted")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=8, help="times each frame is painted each way")
    args = ap.parse_args(argv)
    if not native.available():
        sys.exit("bench_native: the C kernels were not built (scripts/setup.sh) or STYLEBATCH_NATIVE=0 is set")
    reuse_freed_memory()
    torch.set_num_threads(1)
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        style = args.style
        if style == "weights":
            torch.manual_seed(0)
            style = os.path.join(tmp, "weights.pth")
            torch.save(TransformerNet().state_dict(), style)
        stylizer = load_stylizer(style, device="cpu", precision=args.precision)
    frames = real_frames(args.frames, w, h)
    for f in frames:
        stylizer(f)  # warm-up: oneDNN's kernels made, memory pooled
    groups = {**GROUPS, "every kernel (STYLEBATCH_NATIVE=0)": {k: v for g in GROUPS.values() for k, v in g.items()}}
    times: dict[str, list[float]] = {"all on": [], **{g: [] for g in groups}}
    for r in range(args.rounds):
        for name, names in (groups.items() if r % 2 else reversed(groups.items())):
            for way in ((name, "all on") if r % 2 else ("all on", name)):
                before = switched_off(names) if way != "all on" else {}
                try:
                    for f in frames:
                        t = time.thread_time()
                        stylizer(f)
                        times[way].append(time.thread_time() - t)
                finally:
                    for n, fn in before.items():
                        setattr(native, n, fn)
    on = statistics.median(times["all on"]) * 1000
    print(f"{args.style} at {w}x{h}, {args.precision}, 1 torch thread, thread CPU time a frame over "
          f"{args.rounds} rounds of {args.frames} real frames; load average {os.getloadavg()[0]:.1f}\n")
    print("| switched off | median ms a frame | fastest | the kernels save |")
    print("|---|---:|---:|---:|")
    print(f"| nothing (every kernel on) | {on:.2f} | {min(times['all on']) * 1000:.2f} | |")
    for name in groups:
        med = statistics.median(times[name]) * 1000
        print(f"| {name} | {med:.2f} | {min(times[name]) * 1000:.2f} | {med - on:.2f} ms ({(med - on) / med:.0%}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
