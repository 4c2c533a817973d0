"""What makes stylebatch fast on a GPU node: one prepared script, markdown tables.

    .venv/bin/python benchmarks/bench_gpu.py                      # on a GPU host: 720p and 1080p
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --tiny  # the same code paths in seconds (CI)

Measures, for the built-in network (conditional instance norm, 26 styles) and for pytorch/examples'
TransformerNet (what `--style weights.pth` loads):
  quality   each precision's output against fp32's, through the product's own Stylizer, on real
            frames (samples/sample.mp4 when present, else a generated clip): PSNR in dB;
  model     frames/s of the network alone (device tensors in and out, synchronized), by precision
            (fp32, tf32, fp16, bf16), memory format (contiguous, channels-last) and batch size;
  x264      frames/s of libx264 on ONE core at the presets offered, on stylized frames (what a
            rank's encoder thread costs), and NVENC where the GPU has one (A100, H100 and H200 have
            none), with the cores each preset needs to keep up with the model at its defaults;
  pipeline  end-to-end frames/s of `stylebatch run` (decode, model, encode in the ranks, mux) on two
            clips made from the sample's frames (48 and --frames): the start-up and the steady rate
            apart, and each rank's account of its time; with x264 and with NVENC where available;
  compile   torch.compile and CUDA graphs (torch.compile's "reduce-overhead" mode) at the GPU's
            default precision and the largest batch: last, since compiling takes the longest.
Rows that cannot run here (tf32 or CUDA graphs on a CPU, fp16 on a CPU, NVENC without one) are
printed as "n/a" with the reason, and rows past --budget seconds as "n/a: over --budget", so the
table always has the same shape and the script ends in time on a lent machine (10 minutes a call).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "sample.mp4"
BENCH_PRECISIONS = ("fp32", "tf32", "fp16", "bf16")  # tf32: fp32 tensors, TF32 convolutions (GPU only)
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "medium")
NETS = ("built-in (CIN)", "TransformerNet")


class Budget:
    """The seconds left for optional rows; rows past it are printed as skipped, not run."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def over(self) -> bool:
        return time.monotonic() > self.end

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


def _sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",")]


def _nets(device: torch.device, names=NETS):
    """(label, module, condition or None) for the network families named, fp32 on `device`."""
    from stylebatch.models import load_stylizer
    from stylebatch.multistyle import load_multistyle26
    from stylebatch.transformer_net import TransformerNet

    builtin = load_stylizer("lavender-gold", device="cpu", precision="fp32").painters[0]
    torch.manual_seed(0)  # the plain module, as the GPU runs it (the CPU runs its fast_nets rewrite)
    if NETS[0] in names:
        yield NETS[0], load_multistyle26().to(device).eval(), builtin.condition.to(device)
    if NETS[1] in names:
        yield NETS[1], TransformerNet().to(device).eval(), None


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


def _why_not(precision: str, layout: str, cuda: bool) -> str | None:
    if precision == "tf32" and not cuda:
        return "tf32 is a GPU mode"
    if precision == "fp16" and not cuda:
        return "fp16 needs a GPU"
    if layout == "CUDA graphs" and not cuda:
        return "CUDA graphs need a GPU"
    return None


def model_rows(device: torch.device, sizes, batches, seconds: float, budget: Budget, compiled: bool,
               nets=NETS, precisions=BENCH_PRECISIONS):
    """Eager rows (every precision, layout and batch) or, with `compiled`, the torch.compile and CUDA
    graph rows at the device's default precision and the largest batch."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for label, net, condition in _nets(device, nets):
        for w, h in sizes:
            if compiled:
                precision = "fp16" if cuda else "fp32"  # what --precision auto runs on this device (no native bf16 assumed)
                variants = [(precision, "compile", max(batches)), (precision, "CUDA graphs", max(batches))]
            else:
                variants = [(p, layout, b) for p in precisions for b in batches
                            for layout in ("contiguous", "channels-last")]
            for precision, layout, batch in variants:
                setting = f"{label}, {precision}, {layout}, batch {batch}"
                reason = _why_not(precision, layout, cuda) or ("over --budget" if budget.over() else None)
                if reason:
                    yield ("model", f"{w}x{h}", setting, None, reason)
                    continue
                try:
                    fps = _model_fps(net, condition, device, precision, layout, batch, w, h, seconds, sync)
                    yield ("model", f"{w}x{h}", setting, fps, "")
                except Exception as exc:  # noqa: BLE001 - a row that fails says why, the rest go on
                    yield ("model", f"{w}x{h}", setting, None, f"failed: {type(exc).__name__}: {exc}"[:100])
                finally:
                    if cuda:
                        torch.cuda.empty_cache()


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
        torch._dynamo.reset()
        forward = torch.compile(forward, mode="reduce-overhead" if layout == "CUDA graphs" else None)
    try:
        with torch.inference_mode(), autocast:
            return _timed(lambda: forward(x), seconds, batch, sync)
    finally:
        net.to(torch.float32, memory_format=torch.contiguous_format)


def real_frames(count: int, width: int, height: int) -> np.ndarray:
    """`count` uint8 RGB frames [count, height, width, 3] from samples/sample.mp4 (a real clip)
    scaled to width x height, repeating it as needed; a moving generated picture without it. The
    clip's dark frames (its fade-in) are left out: a precision's error on them says nothing."""
    import av

    frames = []
    if SAMPLE.exists():
        with av.open(str(SAMPLE)) as c:
            for f in c.decode(video=0):
                frames.append(f.reformat(width=width, height=height, format="rgb24").to_ndarray())
        frames = [p for p in frames if p.mean() >= 32] or frames
        frames = [frames[i % len(frames)] for i in range(count)]
    else:
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(count):
            t = i / 10
            frames.append(np.stack([(xx + 7 * i) % 256, (yy + 3 * i) % 256,
                                    (128 + 127 * np.sin(xx / 37 + yy / 23 + t))], axis=-1).astype(np.uint8))
    return np.stack(frames)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def quality_rows(device: torch.device, sizes, budget: Budget, nets=NETS):
    """Each precision through the product's Stylizer (built-in style and TransformerNet weights)
    against fp32 on the same real frames: PSNR of the uint8 outputs."""
    from stylebatch.models import load_stylizer

    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="bench-gpu-q-") as tmp:
        from stylebatch.transformer_net import TransformerNet

        torch.manual_seed(0)
        weights = Path(tmp) / "weights.pth"
        torch.save(TransformerNet().state_dict(), weights)
        for w, h in sizes:
            frames = real_frames(4, w, h)
            for label, style in zip(NETS, ("lavender-gold", str(weights))):
                if label not in nets:
                    continue
                outputs = {}
                for precision in BENCH_PRECISIONS:
                    setting = f"{label}, {precision} against fp32"
                    why = _why_not(precision, "", cuda) or ("over --budget" if budget.over() else None)
                    if precision != "fp32" and "fp32" not in outputs:
                        why = why or "fp32 did not run"
                    if why:
                        if precision != "fp32":
                            yield ("quality", f"{w}x{h}", setting, None, why)
                        continue
                    try:
                        if cuda:  # the Stylizer keeps fp32 exact; tf32 is fp32 with cuDNN's TF32 allowed
                            torch.backends.cudnn.allow_tf32 = precision == "tf32"
                        s = load_stylizer(style, device=str(device), precision="fp32" if precision == "tf32" else precision)
                        if precision == "tf32":
                            s._exact = contextlib.nullcontext  # the Stylizer's fp32 turns TF32 off; let it be
                        outputs[precision] = s(frames)
                    except Exception as exc:  # noqa: BLE001 - a row that fails says why, the rest go on
                        yield ("quality", f"{w}x{h}", setting, None, f"failed: {type(exc).__name__}: {exc}"[:100])
                        continue
                    if precision != "fp32":
                        yield ("quality", f"{w}x{h}", setting, _psnr(outputs["fp32"], outputs[precision]), "PSNR, dB")
                if cuda:
                    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default


def _nvenc_missing() -> str | None:
    """Why h264_nvenc cannot run here, or None when it opens."""
    import av

    if not torch.cuda.is_available():
        return "no NVENC here (no GPU)"
    try:  # FFmpeg may be built with NVENC for a GPU that has no video encoder (an H200)
        ctx = av.CodecContext.create("h264_nvenc", "w")
    except Exception:  # noqa: BLE001
        return "no NVENC here (FFmpeg has no h264_nvenc)"
    try:
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 256, 256, "yuv420p", Fraction(1, 30)
        ctx.open()
    except Exception:  # noqa: BLE001
        return "no NVENC here (h264_nvenc did not open: this GPU has no video encoder)"
    return None


def x264_rows(device: torch.device, sizes, frames: int, budget: Budget):
    """libx264 on one thread, with a rank's settings at each preset (its default CRF, `X264_TUNING`):
    `frames` stylized frames (what a rank encodes: a painting's texture costs x264 more than the
    camera's picture) and the flush, timed together (x264 holds frames back for its look-ahead, so a
    short timing window measures the wrong frames)."""
    import av

    from stylebatch.encoder import open_encoder_options
    from stylebatch.encoding import choose_settings
    from stylebatch.models import load_stylizer

    stylizer = load_stylizer("lavender-gold", device=str(device))
    nvenc_missing = _nvenc_missing()
    for w, h in sizes:
        real = real_frames(min(frames, 24), w, h)
        pictures = [av.VideoFrame.from_ndarray(p, format="rgb24").reformat(format="yuv420p")
                    for i in range(0, len(real), 4) for p in stylizer(real[i:i + 4])]
        for codec, presets in (("libx264", X264_PRESETS), ("h264_nvenc", ("p4",))):
            for preset in presets:
                setting = f"{codec}, preset {preset}, 1 thread"
                kind = "x264" if codec == "libx264" else "nvenc"
                why = nvenc_missing if codec == "h264_nvenc" else None
                if why or budget.over():
                    yield (kind, f"{w}x{h}", setting, None, why or "over --budget")
                    continue
                try:
                    ctx = av.CodecContext.create(codec, "w")
                    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = w, h, "yuv420p", Fraction(1, 30)
                    ctx.options = open_encoder_options(choose_settings("part.mp4", codec=codec, preset=preset))  # a rank's
                    ctx.thread_count = 1
                    ctx.open()
                    t0 = time.perf_counter()
                    for i in range(frames):
                        frame = pictures[i % len(pictures)]
                        frame.pts = i
                        ctx.encode(frame)
                    ctx.encode(None)
                    yield (kind, f"{w}x{h}", setting, frames / (time.perf_counter() - t0), f"{frames} stylized frames")
                except Exception as exc:  # noqa: BLE001 - a row that fails says why, the rest go on
                    yield (kind, f"{w}x{h}", setting, None, f"failed: {type(exc).__name__}: {exc}"[:100])


def make_clip(path: Path, frames: int, width: int, height: int, rate: int = 30) -> None:
    """An H.264 clip of `frames` real frames (see real_frames) at width x height."""
    import av

    pictures = real_frames(min(frames, 144), width, height)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast", "crf": "18"})
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            for packet in s.encode(av.VideoFrame.from_ndarray(pictures[i % len(pictures)], format="rgb24")):
                out.mux(packet)
        for packet in s.encode(None):
            out.mux(packet)


def pipeline_rows(device: str, sizes, frames: int, budget: Budget, extra: list[str]):
    """`stylebatch run` on a short clip and on a long one of the same frames: frames/s of the long
    run, the fixed start-up (preprocess, ranks, CUDA, cuDNN's choice of kernels, postprocess) and the
    steady frames/s from the difference, and each rank's own account of where its time went."""
    short = max(1, min(48, frames // 4))
    nvenc_missing = _nvenc_missing()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for w, h in sizes:
            made = False
            for codec in ("h264", "h264_nvenc"):
                setting = " ".join(["stylebatch run --device", device, "--codec", codec, *extra])
                why = nvenc_missing if codec == "h264_nvenc" else None
                if why or budget.over():
                    yield ("pipeline", f"{w}x{h}", setting, None, why or "over --budget")
                    continue
                try:
                    if not made:
                        for n in (short, frames):
                            make_clip(Path(tmp) / f"clip-{w}x{h}-{n}.mp4", n, w, h)
                        made = True
                    times, notes = {}, ""
                    for n in (short, frames):
                        t0 = time.perf_counter()
                        result = subprocess.run([sys.executable, "-m", "stylebatch", "run",
                                                 str(Path(tmp) / f"clip-{w}x{h}-{n}.mp4"), "-o",
                                                 str(Path(tmp) / f"out-{w}x{h}-{codec}.mp4"),
                                                 "--device", device, "--codec", codec, *extra],
                                                capture_output=True, text=True, timeout=max(60.0, budget.left() + 60))
                        times[n] = time.perf_counter() - t0
                        if result.returncode != 0:
                            notes = (result.stderr.strip() or f"exit {result.returncode}").splitlines()[-1][:100]
                            break
                        notes = "; ".join(line.removeprefix("stylebatch: ") for line in result.stderr.splitlines()
                                          if "waiting for the decoder" in line)
                except subprocess.TimeoutExpired as exc:
                    yield ("pipeline", f"{w}x{h}", setting, None, f"did not end in {exc.timeout:.0f} s")
                    continue
                except Exception as exc:  # noqa: BLE001 - a row that fails says why, the rest go on
                    yield ("pipeline", f"{w}x{h}", setting, None, f"failed: {type(exc).__name__}: {exc}"[:100])
                    continue
                if len(times) < 2 or result.returncode != 0:
                    yield ("pipeline", f"{w}x{h}", setting, None, notes)
                    continue
                steady = (frames - short) / max(1e-9, times[frames] - times[short])
                start = times[short] - short / steady
                yield ("pipeline", f"{w}x{h}", setting, frames / times[frames],
                       f"{frames} frames in {times[frames]:.1f} s; start-up {start:.1f} s, then {steady:.1f} "
                       f"frames/s; {notes}")


def keep_up_lines(rows, cores: int, cuda: bool) -> list[str]:
    """For each size: the model's frames/s at the product's defaults (on a GPU fp16, channels-last,
    memory.default_batch) and the cores each x264 preset needs to encode as fast."""
    from stylebatch.memory import default_batch

    default = f"{'fp16' if cuda else 'fp32'}, channels-last, batch {default_batch(cuda)}"
    lines = []
    for size in dict.fromkeys(r[1] for r in rows if r[0] == "x264"):
        for model in (r for r in rows if r[0] == "model" and r[1] == size and r[3] and r[2].endswith(default)):
            for r in (r for r in rows if r[0] == "x264" and r[1] == size and r[3]):
                lines.append(f"- {size}: x264 {r[2].split(',')[1].strip()} needs {model[3] / r[3]:.1f} cores to keep "
                             f"up with {model[3]:.1f} frames/s ({model[2]}, the defaults); this host has {cores}")
    return lines


SECTIONS = ("pipeline", "quality", "x264", "model", "compile")  # the default order: what matters most first


def _choices(text: str, allowed, what: str) -> list[str]:
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="1280x720,1920x1080")
    p.add_argument("--batches", default="1,8,16")
    p.add_argument("--seconds", type=float, default=1.0, help="time per model row after warm-up (default 1)")
    p.add_argument("--frames", type=int, default=600, help="frames of the long end-to-end clip (default 600)")
    p.add_argument("--budget", type=float, default=300.0,
                   help="seconds after which the rows not yet started are skipped (default 300)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile and CUDA graph rows")
    p.add_argument("--sections", default=",".join(SECTIONS), type=lambda t: _choices(t, SECTIONS, "section"),
                   help=f"tables to run, in this order (default {','.join(SECTIONS)})")
    p.add_argument("--nets", default=list(NETS), type=lambda t: _choices(t, NETS, "network"),
                   help=f"networks for quality, model and compile rows (default: {', '.join(NETS)})")
    p.add_argument("--precisions", default=list(BENCH_PRECISIONS),
                   type=lambda t: _choices(t, BENCH_PRECISIONS, "precision"),
                   help=f"precisions for the model rows (default {','.join(BENCH_PRECISIONS)})")
    p.add_argument("--run-args", default="", help='more `stylebatch run` options for the pipeline rows, as one '
                   'value: --run-args="--workers 4"')
    p.add_argument("--tiny", action="store_true", help="tiny sizes and times: check that every path runs (CI)")
    a = p.parse_args(argv)
    if a.tiny:
        a.sizes, a.batches, a.seconds, a.frames, a.no_compile = "64x48", "1,2", 0.05, 8, True
        torch.set_num_threads(1)  # tiny tensors: threads only add waiting
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    budget = Budget(a.budget)
    sizes, batches = _sizes(a.sizes), [int(b) for b in a.batches.split(",")]
    cores = os.cpu_count() or 1
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"stylebatch bench_gpu: {where}, {cores} CPU cores, torch {torch.__version__}\n")
    print("| what | size | setting | frames/s (quality: PSNR dB) | note |")
    print("|---|---|---|---:|---|")
    rows = []
    sections = {"quality": lambda: quality_rows(device, sizes, budget, a.nets),
                "model": lambda: model_rows(device, sizes, batches, a.seconds, budget, False, a.nets, a.precisions),
                "x264": lambda: x264_rows(device, sizes, 8 if a.tiny else 150, budget),
                "pipeline": lambda: pipeline_rows(a.device, sizes, a.frames, budget, a.run_args.split()),
                "compile": lambda: model_rows(device, sizes, batches, a.seconds, budget, True, a.nets)}
    wanted = [w for w in a.sections if not (a.no_compile and w == "compile")]
    for row in itertools.chain(*(sections[w]() for w in wanted)):
        what, size, setting, value, note = row
        print(f"| {what} | {size} | {setting} | {'n/a' if value is None else f'{value:.2f}'} | {note} |", flush=True)
        rows.append(row)
    print()
    for net in NETS:
        for size in dict.fromkeys(r[1] for r in rows):
            best = max((r for r in rows if r[0] == "model" and r[1] == size and r[2].startswith(net) and r[3]),
                       key=lambda r: r[3], default=None)
            if best:
                print(f"fastest model setting, {size}: {best[2]}: {best[3]:.2f} frames/s")
    print("\n".join(keep_up_lines(rows, cores, cuda)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
