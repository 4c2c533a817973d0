"""Which convolution shapes of stylebatch's networks oneDNN gets wrong in bf16 on this CPU; prints a markdown table.

    .venv/bin/python benchmarks/bench_bf16_shapes.py              # 1 thread, 12 trials a shape
    .venv/bin/python benchmarks/bench_bf16_shapes.py --threads 2 --trials 40

For every layer shape of the built-in network and the TransformerNet (input and output channels, kernel,
stride), and outputs of 1, 2, 3, 5 and 40 rows by as many columns, a channels-last bf16 convolution of
random bf16 input is compared with float64: the largest error relative to the output's peak. Rows are
the shapes over 5% (bf16's own rounding is under 1%), or one line saying there are none. Run it after a
torch upgrade, on a CPU with native bf16 (AVX-512 BF16, AMX): on torch 2.13 and a Sapphire Rapids,
stride 2 with a single output column gave NaN, inf and 1e19 (memory oneDNN never wrote), which is why
fast_nets.padded_conv's border strips are EDGE_STRIP_COLUMNS wide. Elsewhere oneDNN emulates bf16.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from stylebatch.cpuinfo import this_cpu

# (in channels, out channels, kernel height, kernel width, (row stride, column stride)): the convolutions
# fast_nets runs (FastTransformerNet, FastMultiStyleNet), as it runs them
LAYERS = [
    (3, 32, 9, 9, (1, 1)),      # both networks' first layer
    (32, 64, 3, 3, (2, 2)),     # TransformerNet: down-sampling
    (64, 128, 3, 3, (2, 2)),
    (128, 128, 3, 3, (1, 1)),   # its residual blocks (oneDNN's under bf16; NNPACK's in fp32)
    (128, 256, 2, 2, (1, 1)),   # UpsampleConv2x 128 -> 64: four phases of 64
    (64, 128, 2, 2, (1, 1)),    # UpsampleConv2x 64 -> 32
    (32, 27, 1, 9, (1, 1)),     # RowSplitConv 32 -> 3, 9x9: a 1x9 convolution to 9 x 3 channels
    (32, 32, 3, 3, (2, 2)),     # built-in: down-sampling
    (32, 32, 3, 3, (1, 1)),     # its residual blocks
    (32, 32, 2, 2, (1, 1)),     # UpsampleConv2x 32 -> 8
    (8, 16, 2, 2, (1, 1)),      # UpsampleConv2x 8 -> 4
    (4, 6, 9, 10, (1, 2)),      # ColumnPairConv 4 -> 3, 9x9: two columns a position
    (4, 3, 9, 9, (1, 1)),       # its odd-width path
]
SIDES = (1, 2, 3, 5, 40)


def worst_error(cin: int, cout: int, kh: int, kw: int, stride: tuple[int, int], rows: int, cols: int, extra: int,
                trials: int, gen: torch.Generator) -> float:
    weight = (torch.randn(cout, cin, kh, kw, generator=gen) * 0.1).bfloat16()
    h, w = (rows - 1) * stride[0] + kh, (cols - 1) * stride[1] + kw + extra
    worst = 0.0
    for _ in range(trials):
        x = torch.randn(1, cin, h, w, generator=gen).bfloat16()
        exact = F.conv2d(x.double(), weight.double(), stride=stride)
        got = F.conv2d(x.contiguous(memory_format=torch.channels_last),
                       weight.contiguous(memory_format=torch.channels_last), stride=stride).double()
        if not bool(torch.isfinite(got).all()):
            return float("inf")
        worst = max(worst, float((got - exact).abs().max() / exact.abs().max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trials", type=int, default=12, help="random inputs per shape (default: %(default)s)")
    p.add_argument("--sides", default=",".join(map(str, SIDES)), help="output rows and columns to try")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    sides = [int(s) for s in a.sides.split(",")]
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in this_cpu().flags]
    print(f"torch {torch.__version__}, {a.threads} thread(s), {a.trials} trials a shape; "
          f"native bf16: {', '.join(native) or 'none (oneDNN emulates it)'}\n")
    bad = []
    for cin, cout, kh, kw, stride in LAYERS:
        for rows in sides:
            for cols in sides:
                for extra in range(stride[1]):  # an odd input width too, where stride 2 drops a column
                    e = worst_error(cin, cout, kh, kw, stride, rows, cols, extra, a.trials, gen)
                    if e > 0.05:
                        width = (cols - 1) * stride[1] + kw + extra
                        label = stride[0] if stride[0] == stride[1] else f"{stride[0]}x{stride[1]}"
                        bad.append((f"{cin} -> {cout}, {kh}x{kw}, stride {label}", f"{rows} x {cols}", width, e))
    if not bad:
        print("No shape over 5% of its output's peak.")
        return 0
    print("| layer | output rows x columns | input columns | worst error / peak |")
    print("|---|---|---:|---:|")
    for layer, out, width, e in bad:
        print(f"| {layer} | {out} | {width} | {e:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
