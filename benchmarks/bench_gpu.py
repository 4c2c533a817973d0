"""What makes stylebatch fast on a GPU node: one prepared script, one markdown table.

    .venv/bin/python benchmarks/bench_gpu.py                      # on a GPU host: 720p and 1080p
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --tiny  # the same code paths in seconds (CI)

Measures, for the built-in network (conditional instance norm, 26 styles) and for pytorch/examples'
TransformerNet (what `--style weights.pth` loads):
  model     frames/s of the network alone (device tensors in and out, synchronized), by precision
            (fp32, tf32, fp16, bf16), memory format (contiguous, channels-last), batch size,
            torch.compile, and CUDA graphs (torch.compile's "reduce-overhead" mode);
  x264      frames/s of libx264 on ONE core at the presets offered (what a rank's encoder thread
            costs), and NVENC where the GPU has it (A100, H100 and H200 have none);
  pipeline  end-to-end frames/s of `stylebatch run` on a generated clip (decode, model, encode in
            the ranks, mux), with x264 and with NVENC where available.
Rows that cannot run here (tf32 or CUDA graphs on a CPU, fp16 on a CPU, NVENC without one) are
printed as "n/a" with the reason, so the table always has the same shape. Each row runs for at
least --seconds after a warm-up. A session with a GPU for a few minutes runs this once (at most
about 8 minutes at the defaults) and puts the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
X264_PRESETS = ("ultrafast", "veryfast", "faster", "medium")


def _sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",")]


def _nets(device: torch.device):
    """(label, module, condition or None) for both network families, fp32 on `device`."""
    from stylebatch.models import load_stylizer
    from stylebatch.multistyle import load_multistyle26
    from stylebatch.transformer_net import TransformerNet

    builtin = load_stylizer("lavender-gold", device="cpu", precision="fp32").painters[0]
    torch.manual_seed(0)  # the plain module, as the GPU runs it (the CPU runs its fast_nets rewrite)
    yield "built-in (CIN)", load_multistyle26().to(device).eval(), builtin.condition.to(device)
    yield "TransformerNet", TransformerNet().to(device).eval(), None


def _timed(step, seconds: float, frames_per_step: int, sync) -> float:
    for _ in range(2):
        step()
    sync()
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 3:
            return n * frames_per_step / elapsed


def model_rows(device: torch.device, sizes, batches, seconds: float, compile_: bool):
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for label, net, condition in _nets(device):
        for w, h in sizes:
            for precision in PRECISIONS:
                why = None
                if precision == "tf32" and not cuda:
                    why = "tf32 is a GPU mode"
                if precision == "fp16" and not cuda:
                    why = "fp16 needs a GPU"
                variants = [("contiguous", 1), ("channels-last", 1)] + [("channels-last", b) for b in batches if b > 1]
                if compile_:
                    variants += [("compile", max(batches)), ("CUDA graphs", max(batches))]
                for layout, batch in variants:
                    setting = f"{label}, {precision}, {layout}, batch {batch}"
                    reason = why or ("CUDA graphs need a GPU" if layout == "CUDA graphs" and not cuda else None)
                    if reason:
                        yield ("model", f"{w}x{h}", setting, None, reason)
                        continue
                    try:
                        fps = _model_fps(net, condition, device, precision, layout, batch, w, h, seconds, sync)
                        yield ("model", f"{w}x{h}", setting, fps, "")
                    except Exception as exc:  # noqa: BLE001 - a row that fails says why, the rest go on
                        yield ("model", f"{w}x{h}", setting, None, f"failed: {type(exc).__name__}: {exc}"[:80])


def _model_fps(net, condition, device, precision, layout, batch, w, h, seconds, sync) -> float:
    cuda = device.type == "cuda"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32) if cuda else torch.float32
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.benchmark = True
    fmt = torch.contiguous_format if layout == "contiguous" else torch.channels_last
    model = net.to(dtype=dtype, memory_format=fmt)
    cond = None if condition is None else condition.to(dtype)
    x = torch.rand(batch, 3, h - h % 4, w - w % 4, device=device, dtype=dtype).to(memory_format=fmt)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" and not cuda \
        else contextlib.nullcontext()

    def forward(inp):
        return model(inp) if cond is None else model(inp, cond)

    if layout in ("compile", "CUDA graphs"):
        forward = torch.compile(forward, mode="reduce-overhead" if layout == "CUDA graphs" else "max-autotune-no-cudagraphs")
    with torch.inference_mode(), autocast:
        fps = _timed(lambda: forward(x), seconds, batch, sync)
    net.to(torch.float32, memory_format=torch.contiguous_format)
    return fps


def _has_nvenc() -> bool:
    import av

    try:
        av.codec.Codec("h264_nvenc", "w")
    except Exception:  # noqa: BLE001
        return False
    return torch.cuda.is_available()


def x264_rows(sizes, seconds: float):
    import av

    for w, h in sizes:
        frame = av.VideoFrame.from_ndarray(
            np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8), format="rgb24").reformat(format="yuv420p")
        for codec, presets in (("libx264", X264_PRESETS), ("h264_nvenc", ("p4",))):
            for preset in presets:
                setting = f"{codec}, preset {preset}, 1 thread"
                if codec == "h264_nvenc" and not _has_nvenc():
                    yield ("x264" if codec == "libx264" else "nvenc", f"{w}x{h}", setting, None, "no NVENC here")
                    continue
                ctx = av.CodecContext.create(codec, "w")
                ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = w, h, "yuv420p", Fraction(1, 30)
                ctx.options = {"preset": preset, "crf": "18"} if codec == "libx264" else {"preset": preset}
                ctx.thread_count = 1
                ctx.open()
                count = [0]

                def step():
                    frame.pts = count[0]
                    count[0] += 1
                    ctx.encode(frame)

                fps = _timed(step, seconds, 1, lambda: None)
                ctx.encode(None)
                yield ("x264" if codec == "libx264" else "nvenc", f"{w}x{h}", setting, fps, "")


def pipeline_rows(device: str, sizes, frames: int):
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for w, h in sizes:
            clip = Path(tmp) / f"clip-{w}x{h}.mp4"
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate=30",
                            "-frames:v", str(frames), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                            str(clip)], check=True)
            for codec in ("h264", "h264_nvenc"):
                setting = f"stylebatch run --device {device} --codec {codec}"
                if codec == "h264_nvenc" and not _has_nvenc():
                    yield ("pipeline", f"{w}x{h}", setting, None, "no NVENC here")
                    continue
                out = Path(tmp) / f"out-{w}x{h}-{codec}.mp4"
                t0 = time.perf_counter()
                result = subprocess.run([sys.executable, "-m", "stylebatch", "run", str(clip), "-o", str(out),
                                         "--device", device, "--codec", codec], capture_output=True, text=True)
                elapsed = time.perf_counter() - t0
                if result.returncode != 0:
                    yield ("pipeline", f"{w}x{h}", setting, None, result.stderr.strip().splitlines()[-1][:80])
                else:
                    yield ("pipeline", f"{w}x{h}", setting, frames / elapsed, "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="1280x720,1920x1080")
    p.add_argument("--batches", default="1,4,8")
    p.add_argument("--seconds", type=float, default=2.0, help="time per row after warm-up (default 2)")
    p.add_argument("--frames", type=int, default=240, help="frames of the end-to-end clip (default 240)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile and CUDA graph rows")
    p.add_argument("--tiny", action="store_true", help="tiny sizes and times: check that every path runs (CI)")
    a = p.parse_args(argv)
    if a.tiny:
        a.sizes, a.batches, a.seconds, a.frames, a.no_compile = "64x48", "1,2", 0.05, 8, True
        torch.set_num_threads(1)  # tiny tensors: threads only add waiting
    device = torch.device(a.device)
    sizes, batches = _sizes(a.sizes), [int(b) for b in a.batches.split(",")]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"stylebatch bench_gpu: {where}, torch {torch.__version__}\n")
    print("| what | size | setting | frames/s | note |")
    print("|---|---|---|---:|---|")
    rows = []
    for row in itertools.chain(model_rows(device, sizes, batches, a.seconds, not a.no_compile),
                               x264_rows(sizes, a.seconds), pipeline_rows(a.device, sizes, a.frames)):
        what, size, setting, fps, note = row
        print(f"| {what} | {size} | {setting} | {'n/a' if fps is None else f'{fps:.2f}'} | {note} |", flush=True)
        rows.append(row)
    best = max((r for r in rows if r[0] == "model" and r[3]), key=lambda r: r[3], default=None)
    if best:
        print(f"\nfastest model setting: {best[2]} at {best[1]}: {best[3]:.2f} frames/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
