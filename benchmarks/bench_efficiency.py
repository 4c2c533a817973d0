"""The style model's GFLOP/s against a measured GEMM on this CPU, per core; prints a markdown table.

    .venv/bin/python benchmarks/bench_efficiency.py                     # 640x360, 720x528, 1280x720
    .venv/bin/python benchmarks/bench_efficiency.py --sizes 720x528 --seconds 10

Everything runs on one torch thread and is timed in CPU seconds of this process (time.process_time),
which a machine shared with other work disturbs far less than wall time. FLOPs are counted by
torch.utils.flop_counter on the executed graph (2 per multiply-add, convolutions and matrix products);
"network GFLOP" is the published TransformerNet's count, the work a frame needs, and GFLOP/s divides
it by the time per frame, so a rewrite that skips work shows as a higher rate. Rows: the published
pytorch/examples layers at batch 1 (the reference pipeline's model) and stylebatch's CPU path
(`load_stylizer(.pth)`: fast_nets.FastTransformerNet, uint8 frames in and out, batch 1), and the
same two for the built-in style (the plain multistyle module, and `load_stylizer(style)`:
fast_nets.FastMultiStyleNet), and stylebatch's two networks once more with every convolution in
oneDNN (`fast_nets.USE_WINOGRAD` off): where torch has NNPACK the TransformerNet's residual blocks
are Winograd convolutions (and on an AVX2 AMD Zen 1 both networks' last layers FFT convolutions and the
built-in net's blocks Winograd ones, `fast_nets.NNPACK_LAYERS`), which the FLOP counter does not see
(so "executed" leaves them out) and which need fewer multiplications than the network's count, so
those rows' share of the GEMM may pass 100%. Untrained TransformerNet weights paint flat frames,
so the stylizer's warning about that is silenced here.
The GEMM is the faster of a 2048 x 2048 torch.mm (`--gemm-size`) and oneDNN's implicit GEMM (a 3x3 convolution of 128
channels at 160x90, channels-last: 14400 x 1152 by 1152 x 128, the networks' own kernel and layout), each
printed: torch.mm is BLAS (MKL), which on AMD CPUs may run a generic path far below the hardware (on
a Zen 5 EPYC here: 98-110 GFLOP/s, while oneDNN's convolutions ran at 235-259). The process reuses freed
memory as a rank does (`memory.reuse_freed_memory`), the reference's rows too. With --bf16, stylebatch's
two networks again in bf16 (`--precision bf16`: CPU autocast, no Winograd), against a bf16 GEMM
(worth it only on a CPU with native bf16, AVX-512 BF16 or AMX; elsewhere oneDNN emulates it).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from stylebatch import fast_nets
from stylebatch.memory import reuse_freed_memory
from stylebatch.models import DEFAULT_STYLE, load_stylizer
from stylebatch.multistyle import load_multistyle26
from stylebatch.transformer_net import TransformerNet


def per_call(fn, seconds: float) -> float:
    fn()
    calls, start = 0, time.process_time()
    while calls < 2 or time.process_time() - start < seconds:
        fn()
        calls += 1
    return (time.process_time() - start) / calls


def flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def measure_gemm(dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 1.0) -> tuple[float, float]:
    """(torch.mm's, oneDNN's implicit GEMM's) GFLOP/s on this thread in `dtype`: an n x n torch.mm, and a
    3x3 convolution of 128 channels at 160x90, channels-last. Measured again beside every row: a shared
    machine's speed drifts."""
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(n, n, generator=gen).to(dtype)
    x = torch.randn(1, 128, 90, 160, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    k = torch.randn(128, 128, 3, 3, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        mm = 2 * n ** 3 / per_call(lambda: torch.mm(m, m), seconds) / 1e9
        conv = 2 * 128 * 128 * 9 * 90 * 160 / per_call(lambda: F.conv2d(x, k, padding=1), seconds) / 1e9
    return mm, conv


def without_winograd(fn):
    def run():
        before, fast_nets.USE_WINOGRAD = fast_nets.USE_WINOGRAD, False
        try:
            return fn()
        finally:
            fast_nets.USE_WINOGRAD = before
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="640x360,720x528,1280x720")
    p.add_argument("--seconds", type=float, default=6.0, help="CPU seconds per row (default: 6)")
    p.add_argument("--bf16", action="store_true", help="also stylebatch's networks in bf16, against a bf16 GEMM")
    p.add_argument("--gemm-size", type=int, default=2048,
                   help="torch.mm's matrices (default: 2048; a bf16 one of 2048 takes about 16 s a call on a CPU "
                        "without native bf16)")
    a = p.parse_args(argv)
    logging.getLogger("stylebatch").setLevel(logging.ERROR)  # random weights paint flat frames: no warning
    reuse_freed_memory()  # as a rank does; the reference rows get it too (it can only speed them up)
    torch.set_num_threads(1)
    n = a.gemm_size
    gemm_rates = functools.partial(measure_gemm, n=n, seconds=max(1.0, a.seconds / 6))
    first = gemm_rates()
    rates = [max(first)]
    print(f"1 torch thread, CPU time; GEMM measured before each row (a bf16 GEMM before each bf16 row), the faster "
          f"of torch.mm ({n}^3) and oneDNN's implicit GEMM (3x3 convolution, 128 channels, 160x90): "
          f"{first[0]:.1f} and {first[1]:.1f} GFLOP/s per core at the start; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| model | size | network GFLOP/frame | executed GFLOP/frame | frames/s per core | GFLOP/s (network) "
          "| GEMM beside it (GFLOP/s) | of GEMM |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    net = TransformerNet().eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.pth")
        torch.save(net.state_dict(), path)
        fast, builtin = load_stylizer(path, device="cpu", precision="fp32"), load_stylizer(DEFAULT_STYLE, device="cpu",
                                                                                          precision="fp32")
        fast16, builtin16 = (load_stylizer(path, device="cpu", precision="bf16"),
                             load_stylizer(DEFAULT_STYLE, device="cpu", precision="bf16"))
    plain, condition = load_multistyle26(), builtin.painters[0].condition  # the network as published
    for size in a.sizes.split(","):
        w, h = map(int, size.split("x"))
        frame = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        x = torch.from_numpy(frame).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            published = flops(lambda: net(x))
            plain_flops = flops(lambda: plain(x / 255, condition))
            rows = [("TransformerNet, published layers (reference)", lambda: net(x), published, published),
                    ("TransformerNet, stylebatch (fast_nets), oneDNN only", without_winograd(lambda: fast(frame)),
                     published, flops(without_winograd(lambda: fast(frame)))),
                    ("TransformerNet, stylebatch (fast_nets)", lambda: fast(frame), published, flops(lambda: fast(frame))),
                    (f"built-in {DEFAULT_STYLE}, published layers (reference)", lambda: plain(x / 255, condition),
                     plain_flops, plain_flops),
                    (f"built-in {DEFAULT_STYLE}, stylebatch (fast_nets), oneDNN only",
                     without_winograd(lambda: builtin(frame)), plain_flops,
                     flops(without_winograd(lambda: builtin(frame)))),
                    (f"built-in {DEFAULT_STYLE}, stylebatch (fast_nets)", lambda: builtin(frame), plain_flops,
                     flops(lambda: builtin(frame)))]
            if a.bf16:
                rows += [("TransformerNet, stylebatch (fast_nets), bf16", lambda: fast16(frame), published,
                          flops(lambda: fast16(frame))),
                         (f"built-in {DEFAULT_STYLE}, stylebatch (fast_nets), bf16", lambda: builtin16(frame),
                          plain_flops, flops(lambda: builtin16(frame)))]
            for name, fn, network, executed in rows:
                bf16 = name.endswith("bf16")
                gemm = rates[-1] if len(rates) == 1 and not bf16 else max(gemm_rates(torch.bfloat16 if bf16 else
                                                                                     torch.float32))
                if not bf16:
                    rates.append(gemm)
                s = per_call(fn, a.seconds)
                work = network or executed
                print(f"| {name} | {size} | {work / 1e9:.1f} | {executed / 1e9:.1f} | {1 / s:.2f} | "
                      f"{work / s / 1e9:.1f} | {gemm:.1f} | {work / s / 1e9 / gemm:.0%} |", flush=True)
    print(f"\nGEMM {min(rates):.1f}-{max(rates):.1f} GFLOP/s per core over the run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
