"""Peak memory of the three stages on huge frames at a small --max-side, the decoder and encoder
choices side by side; prints a markdown table.

    .venv/bin/python benchmarks/bench_memory.py                        # 16000x16000 MJPEG, --max-side 256
    .venv/bin/python benchmarks/bench_memory.py --size 8000x8000 --frames 4

`stylebatch preprocess`, `stylize` (one rank, no mpiexec) and `postprocess`, one after the other in
one process, in a fresh memory cgroup (tests/memory_cap.py; needs root) whose peak counts the page
cache too, as a pod's memory limit does; the process's RSS, sampled every 20 ms, is shown beside
it. (`stylebatch run` adds its launcher, about 0.2 GiB: tests/test_memory.py caps a whole run.) The variants switch off, one at a time, what keeps full-size frames out of a rank:
decoding at the stylized size (an intra-only decoder's lowres, `stylebatch.memory.MAX_LOWRES`) and a
fresh encoder per frame (`stylebatch.memory.ENCODER_PER_FRAME_PIXELS`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import memory_cap  # noqa: E402

VARIANTS = {
    "stylebatch (decoded small, an encoder per frame)": {},
    "decoded at full size": {"memory.MAX_LOWRES": 0},
    "one encoder for all frames": {"memory.ENCODER_PER_FRAME_PIXELS": 1 << 62},
    "both (as before)": {"memory.MAX_LOWRES": 0, "memory.ENCODER_PER_FRAME_PIXELS": 1 << 62},
}
MAIN = ("import sys\nfrom stylebatch import memory, video\n{sets}\nfrom stylebatch.cli import main\n"
        "clip, work, out, side = sys.argv[1:]\n"
        "for argv in (['preprocess', clip, '--work', work, '-o', out], ['stylize', '--work', work, '--max-side', side],\n"
        "             ['postprocess', '--work', work, '--delete-work']):\n"
        "    if main(argv):\n"
        "        sys.exit(1)")


def tree_rss(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def run(variant: dict, clip: Path, out: Path, max_side: int, limit: int) -> tuple[int, float, float]:
    sets = "\n".join(f"{name} = {value!r}" for name, value in variant.items())
    argv = [sys.executable, "-c", MAIN.format(sets=sets), str(clip), str(out.parent / "work"), str(out),
            str(max_side)]
    peak_rss = [0]
    done = threading.Event()

    def sample() -> None:  # the capped run's processes are the youngest python ones under this one
        while not done.wait(0.02):
            peak_rss[0] = max(peak_rss[0], tree_rss(os.getpid()) - tree_rss_self)

    tree_rss_self = tree_rss(os.getpid())
    threading.Thread(target=sample, daemon=True).start()
    capped = memory_cap.run_capped(limit, argv, timeout=1800)
    done.set()
    if capped.returncode != 0:
        print(capped.stderr.strip().splitlines()[-1] if capped.stderr.strip() else "", file=sys.stderr)
    return capped.returncode, capped.peak / 2 ** 30, peak_rss[0] / 2 ** 30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="16000x16000")
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--max-side", type=int, default=256)
    p.add_argument("--limit-gib", type=float, default=16, help="the cgroup's limit (default 16 GiB)")
    args = p.parse_args()
    why = memory_cap.available()
    if why:
        sys.exit(why)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        clip = Path(tmp) / "huge.avi"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={args.size}:rate=2",
                        "-frames:v", str(args.frames), "-c:v", "mjpeg", "-q:v", "8", "-pix_fmt", "yuvj420p",
                        str(clip)], check=True)
        print(f"The three stages on {args.frames} frames of {args.size} MJPEG at --max-side {args.max_side}, "
              f"in a {args.limit_gib:g} GiB memory cgroup\n")
        print("| variant | exit code | cgroup peak (GiB) | summed RSS peak (GiB) | wall (s) |")
        print("|---|---|---|---|---|")
        for name, variant in VARIANTS.items():
            start = time.perf_counter()
            code, peak, rss = run(variant, clip, Path(tmp) / "out.avi", args.max_side, int(args.limit_gib * 2 ** 30))
            print(f"| {name} | {code} | {peak:.2f} | {rss:.2f} | {time.perf_counter() - start:.0f} |", flush=True)
            (Path(tmp) / "out.avi").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
