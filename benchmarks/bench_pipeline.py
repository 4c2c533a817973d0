"""End-to-end frames per second of `stylebatch run` on CPU, by rank count; prints a markdown table.

    .venv/bin/python benchmarks/bench_pipeline.py                      # 640x360, 3 s, 1 and 2 ranks
    .venv/bin/python benchmarks/bench_pipeline.py --workers 1,2,4 --repeats 3 --size 1280x720

Each rank gets cores / ranks torch threads, so "1 rank" is 1 x all cores and "2 ranks" is 2 x half.
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


def run_once(clip: Path, out: Path, workers: int, args: argparse.Namespace) -> tuple[float, float | None]:
    cmd = [str(BIN / "stylebatch"), "run", str(clip), "-o", str(out), "--workers", str(workers),
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
    return wall, float(found[-1]) if found else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="640x360")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--workers", default="1,2", help="comma-separated rank counts (default: 1,2)")
    p.add_argument("--chunk-frames", type=int, default=15)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--style", default=None)
    p.add_argument("--max-side", type=int, default=None)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        clip = Path(tmp) / "clip.mp4"
        frames = make_clip(clip, args.size, args.seconds, args.fps)
        rows = []
        for workers in (int(w) for w in args.workers.split(",")):
            runs = [run_once(clip, Path(tmp) / "out.mp4", workers, args) for _ in range(args.repeats)]
            wall, stylize_fps = min(runs, key=lambda r: r[0])
            rows.append((workers, max(1, cores // workers), wall, frames / wall, stylize_fps))
    print(f"`stylebatch run`, {args.size}, {frames} frames, CPU ({platform.processor() or platform.machine()}, "
          f"{cores} cores), chunks of {args.chunk_frames}, best of {args.repeats}\n")
    print("| ranks | torch threads/rank | wall (s) | end-to-end fps | stylize fps |")
    print("|---:|---:|---:|---:|---:|")
    for workers, threads, wall, fps, sfps in rows:
        print(f"| {workers} | {threads} | {wall:.1f} | {fps:.2f} | {sfps if sfps is not None else '?'} |")


if __name__ == "__main__":
    main()
