"""How far reduced precision lands from fp32, per style, on real and on awkward frames.

    .venv/bin/python benchmarks/bench_precision.py                  # every built-in style, a painting, a .pth
    .venv/bin/python benchmarks/bench_precision.py --styles lavender-gold,blue-gold-swirls --frames 1

For each style: PSNR (dB) of bf16 (CPU autocast, what `--precision bf16` runs on a CPU) against fp32 on
real footage (Megamind.avi from Debian's opencv-doc and the repository's sample clip), on the same
footage at 2% and 10% of its contrast (fog around mid-grey, a fade to black), and on flat frames
(black, limited-range black, grey, white). With `--fp16`, the same for fp16 with the plain layers,
the GPU's default arithmetic (torch runs fp16 convolutions on the CPU too, accumulating in fp32 as
cuDNN does), for built-in styles and paintings (a .pth measured 85 dB on an H200). The last column
says whether `--precision auto` would run that style in that arithmetic (models._precision). No
timings: this CPU's bf16 is emulated, its speed means nothing for a CPU with native bf16.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")
PAINTING = Path("/usr/share/doc/opencv-doc/examples/data/starry_night.jpg")
SAMPLE = REPO / "samples" / "sample.mp4"


def frames_of(clip: Path, count: int, size: str, start: float) -> np.ndarray:
    w, h = map(int, size.split("x"))
    raw = subprocess.run(["ffmpeg", "-v", "error", "-ss", str(start), "-i", str(clip), "-frames:v", str(count),
                          "-vf", f"scale={w}:{h}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3).copy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", help="comma-separated styles (default: every built-in, a painting and a .pth)")
    p.add_argument("--frames", type=int, default=2, help="frames of each clip (default: %(default)s)")
    p.add_argument("--size", default="360x264", help="frame size (default: %(default)s)")
    p.add_argument("--fp16", action="store_true", help="also fp16 with the plain layers (built-in styles, paintings)")
    args = p.parse_args()
    sys.path.insert(0, str(REPO / "worker"))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch

    from stylebatch import models
    from stylebatch.models import Painter, Stylizer, load_stylizer, list_styles
    from stylebatch.multistyle import load_multistyle26
    from stylebatch.styles import BUILTIN_KIND, IMAGE_KIND, parse_style

    real = np.concatenate([frames_of(MEGAMIND, args.frames, args.size, 2),
                           *([frames_of(SAMPLE, args.frames, args.size, 2)] if SAMPLE.exists() else [])])
    grey = real.astype(np.float64)
    low = {f"fog {k:.0%}": (128 + (grey - 128) * k).round().astype(np.uint8) for k in (0.02, 0.1)}
    low.update({f"fade {k:.0%}": (grey * k).round().astype(np.uint8) for k in (0.02, 0.1)})
    h, w = real.shape[1:3]
    flat = np.stack([np.full((h, w, 3), v, np.uint8) for v in (0, 16, 128, 255)])
    if args.styles:
        styles = args.styles.split(",")
    else:
        from reference_pipeline import make_weights

        pth = Path("/tmp/bench_precision_transformer_net.pth")
        make_weights(pth)  # seeded random weights of the published shapes
        styles = [s.name for s in list_styles()] + [str(PAINTING), str(pth)]
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
    speedup = models.cpu_bf16_speedup
    models.cpu_bf16_speedup = lambda network=None: 2.0  # what auto would pick on a CPU where bf16 is twice fp32
    kinds = ["real", *low, "flat"]
    rows = []
    for style in styles:
        exact = load_stylizer(style, device="cpu", precision="fp32")
        auto = load_stylizer(style, device="cpu").autocast is not None
        arithmetics = [("bf16", load_stylizer(style, device="cpu", precision="bf16"))]
        kinds_here = {part.kind for part in parse_style(style)}
        if args.fp16 and kinds_here in ({BUILTIN_KIND}, {IMAGE_KIND}):  # the plain layers, as on a GPU
            painter = exact.painters[0]
            net = load_multistyle26() if kinds_here == {BUILTIN_KIND} else copy.deepcopy(painter.net)
            half = Painter(net.half(), painter.condition.half(), 1.0, painter.vector_strength, exact=painter)
            arithmetics.append(("fp16", Stylizer([half], name=style, device=torch.device("cpu"), dtype=torch.float16)))
        for name, stylizer in arithmetics:
            got = [psnr(stylizer(real), exact(real)), *(psnr(stylizer(f), exact(f)) for f in low.values()),
                   min(psnr(stylizer(f[None]), exact(f[None])) for f in flat)]
            pick = "on a GPU" if name == "fp16" else ("on a CPU where bf16 is faster" if auto else "no: fp32")
            rows.append((Path(style).name, name, got, pick))
            print(f"{rows[-1][0]} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in zip(kinds, got)), file=sys.stderr)
    models.cpu_bf16_speedup = speedup
    print(f"PSNR (dB) against fp32; real: {len(real)} frames at {args.size} (Megamind"
          f"{', sample.mp4' if SAMPLE.exists() else ''}); flat: the worst of black, 16, 128 and 255\n")
    print("| style | arithmetic | " + " | ".join(kinds) + " | --precision auto picks it |")
    print("|---|---|" + "---:|" * len(kinds) + "---|")
    for style, name, got, auto in rows:
        print(f"| {style} | {name} | " + " | ".join(f"{v:.1f}" for v in got) + f" | {auto} |")


if __name__ == "__main__":
    main()
