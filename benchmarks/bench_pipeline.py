"""End-to-end frames per second of `stylebatch run` on CPU, by how many networks run at once,
against the model alone; prints a markdown table.

    .venv/bin/python benchmarks/bench_pipeline.py                      # 640x360, 3 s, 1 and 2 at once
    .venv/bin/python benchmarks/bench_pipeline.py --workers 1,2,4 --repeats 3 --size 1280x720
    .venv/bin/python benchmarks/bench_pipeline.py --seconds 4 --style weights    # a fast_neural_style .pth
    .venv/bin/python benchmarks/bench_pipeline.py --layouts pipelines,ranks      # one rank's pipelines, MPI ranks

N networks at once (--workers) run as one rank of N pipelines (`--workers 1 --pipelines N`, the
default layout on the CPU) or as N ranks (`--workers N --pipelines 1`), as --layouts says
(reference_pipeline.LAYOUTS); `default` runs N ranks with stylebatch's default pipelines (one per core of
a rank's share), and the model alone as many networks as that.

The model alone: as many processes as networks at once, each with their torch threads and precision,
each running `load_stylizer(style)` (uint8 frames in and out, batch 1, what a rank calls, with the
rank's allocator settings, `memory.reuse_freed_memory`) over its
share of the clip's frames, decoded beforehand and not timed; they start together after a warm-up
frame, and frames / the slowest one's time is the model-alone rate. "of model" divides three rates
by it: end to end (everything a user waits for), the stylize stage's (the run's own progress line:
from the ranks' go, so with the rest of their start-up) and the painting rate (the ranks' own summary
lines: frames over the slowest rank's time from its first frame to its last, the model's warm-up
frame included; its start-up not). End to end against painting is what start-up, preprocess and
postprocess cost; painting against the model alone what decoding, encoding, copying and the chunk
hand-out cost on the same cores.

Each network gets cores / N torch threads, so "1" is 1 x all cores and "2" is 2 x half.
The clip (testsrc2 + a sine soundtrack, made by the ffmpeg CLI) is cut into chunks small enough that
every rank gets work. The wall time covers everything a user waits for: the CLI starting, preprocess,
stylize under mpiexec, postprocess. The best of --repeats runs is reported (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def make_clip(path: Path, size: str, seconds: float, fps: int) -> int:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)
    return round(seconds * fps)


def model_child(style: str, threads: str, frames_file: str, share: str, ready: str, go: str) -> None:
    """One model-alone process: load, warm up, say ready, wait for go, time its frames; prints seconds."""
    import numpy as np
    import torch

    from stylebatch.memory import reuse_freed_memory
    from stylebatch.models import load_stylizer

    reuse_freed_memory()  # as a rank does
    torch.set_num_threads(int(threads))
    frames = np.load(frames_file, mmap_mode="r")
    first, last = map(int, share.split(":"))
    stylizer = load_stylizer(style, device="cpu")
    stylizer(np.array(frames[first:first + 1]))
    Path(ready).touch()
    while not os.path.exists(go):
        time.sleep(0.01)
    start = time.perf_counter()
    for i in range(first, last):
        stylizer(np.array(frames[i:i + 1]))
    print(time.perf_counter() - start)


def model_alone(clip: Path, frames: int, workers: int, style: str, tmp: Path) -> float:
    """Frames/s of `workers` concurrent model-only processes over the clip's frames."""
    import numpy as np

    npy = tmp / "frames.npy"
    if not npy.exists():
        w, h = (int(v) for v in subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height", "-of",
             "csv=p=0", str(clip)], capture_output=True, text=True, check=True).stdout.strip().split(","))
        raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                             capture_output=True, check=True).stdout
        np.save(npy, np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3))
    go = tmp / "go"
    go.unlink(missing_ok=True)
    from reference_pipeline import cores as rank_cores

    cores = rank_cores()
    bounds = [frames * r // workers for r in range(workers + 1)]
    children = []
    for r in range(workers):
        ready = tmp / f"ready-{r}"
        ready.unlink(missing_ok=True)
        children.append((ready, subprocess.Popen(
            [sys.executable, __file__, "_model", style, str(max(1, cores // workers)), str(npy),
             f"{bounds[r]}:{bounds[r + 1]}", str(ready), str(go)], stdout=subprocess.PIPE, text=True)))
    while not all(ready.exists() for ready, _ in children):
        if any(c.poll() not in (None, 0) for _, c in children):
            sys.exit("a model-alone process failed")
        time.sleep(0.01)
    go.touch()
    seconds = max(float(c.communicate()[0].split()[-1]) for _, c in children)
    return frames / seconds


RANK_SUMMARY = re.compile(r"rank \d+/\d+: (\d+) frames? in [\d.]+ s \(([\d.]+) fps\)")


def painting_fps(stderr: str) -> float | None:
    """Frames over the slowest rank's painting time, from the ranks' summary lines (stylize.py). Each
    rank's time is its frames over its own rate: the seconds it prints are rounded to 0.1 s, which on a
    tiny clip is most of them (0.0 s, or 0.2 s for 0.151 s)."""
    done = [(int(n), int(n) / float(fps)) for n, fps in RANK_SUMMARY.findall(stderr) if float(fps) > 0]
    return sum(n for n, _ in done) / max(s for _, s in done) if done else None


def run_once(clip: Path, out: Path, workers: int, layout: str,
             args: argparse.Namespace) -> tuple[float, float | None, float | None]:
    from reference_pipeline import LAYOUTS

    cmd = [str(BIN / "stylebatch"), "run", str(clip), "-o", str(out), *LAYOUTS[layout](workers),
           "--device", "cpu", "--chunk-frames", str(args.chunk_frames)]
    if args.style:
        cmd += ["--style", args.style]
    if args.max_side:
        cmd += ["--max-side", str(args.max_side)]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"stylebatch run failed:\n{result.stderr}")
    found = re.findall(r"stylize: \d+/\d+ frames \(100%\), ([\d.]+) fps", result.stderr)
    return wall, float(found[-1]) if found else None, painting_fps(result.stderr)


def main() -> None:
    if sys.argv[1:2] == ["_model"]:
        return model_child(*sys.argv[2:8])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="640x360")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--workers", default="1,2", help="networks at once, comma-separated (default: 1,2)")
    p.add_argument("--layouts", default="pipelines",
                   help="pipelines (one rank), ranks, and/or default (--workers N with its default pipelines: N x "
                        "cores/N networks) (default: %(default)s)")
    p.add_argument("--chunk-frames", type=int, default=15)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--style", default=None, help="a style as `stylebatch run --style` takes it, or `weights`: "
                   "a pytorch/examples TransformerNet .pth with random weights (costs what a trained one costs)")
    p.add_argument("--max-side", type=int, default=None)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from reference_pipeline import cores as rank_cores
    from reference_pipeline import effective, layout_label, layouts_to_run

    cores = rank_cores()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        clip = Path(tmp) / "clip.mp4"
        frames = make_clip(clip, args.size, args.seconds, args.fps)
        if args.style == "weights":
            from reference_pipeline import make_weights

            args.style = str(Path(tmp) / "weights.pth")
            make_weights(Path(args.style))
        style = args.style or "lavender-gold"
        rows = []
        chunks = -(-frames // args.chunk_frames)
        for workers, layout in layouts_to_run(p, args.workers, args.layouts, chunks=lambda _: chunks):
            ranks, pipelines = effective(layout, workers, chunks)
            networks = ranks * pipelines  # `default` runs --workers ranks of its default pipelines
            runs, alone = [], []
            for _ in range(args.repeats):  # alternating, so both see the same load
                runs.append(run_once(clip, Path(tmp) / "out.mp4", workers, layout, args))
                alone.append(model_alone(clip, frames, networks, style, Path(tmp)))
            wall, stylize_fps, paint_fps = min(runs, key=lambda r: r[0])
            rows.append((networks, layout_label(layout, workers, chunks), max(1, cores // networks), wall, frames / wall,
                         stylize_fps, paint_fps, max(alone)))
    print(f"`stylebatch run`, {args.size}, {frames} frames, style {Path(style).name}, CPU "
          f"({platform.processor() or platform.machine()}, {cores} cores), chunks of {args.chunk_frames}, "
          f"best of {args.repeats}, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| networks at once | stylebatch | torch threads each | wall (s) | end-to-end fps | stylize fps "
          "| painting fps | model alone fps | end-to-end of model | stylize of model | painting of model |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    of = lambda rate, mfps: f"{rate / mfps:.2f}" if rate is not None else "?"  # noqa: E731
    for workers, label, threads, wall, fps, sfps, pfps, mfps in rows:
        print(f"| {workers} | {label} | {threads} | {wall:.1f} | {fps:.2f} | {sfps if sfps is not None else '?'} | "
              f"{f'{pfps:.2f}' if pfps is not None else '?'} | {mfps:.2f} | {fps / mfps:.2f} | {of(sfps, mfps)} | "
              f"{of(pfps, mfps)} |")


if __name__ == "__main__":
    main()
