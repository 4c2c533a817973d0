"""Two ranks, one of them half as fast: wall time against the ideal for that capacity.

    .venv/bin/python benchmarks/bench_uneven.py                      # 640x360, 192 frames, 2 runs each
    .venv/bin/python benchmarks/bench_uneven.py --frames 96 --repeats 1

The stylize stage runs as `mpiexec -n 1 stylebatch stylize ... : -n 1 python slow_rank.py stylize ...`
on one preprocessed work dir (parts deleted between runs). The slow rank is the real CLI with its
model call followed by a sleep as long as the call took: it stylizes at half speed, on its own core.
"even" is the same job with both ranks at full speed, run alternately with the uneven one.

If the even job takes T, each rank runs at frames / (2 T) and the uneven pair has 1.5x one rank's
capacity, so the ideal is T * 2 / 1.5 (startup included on both sides). A fixed contiguous half per
rank (before chunks were taken dynamically) would take about 2 T: the slow rank's half at half speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent

SLOW_RANK = """
import sys, time
import stylebatch.models as models
call = models.Stylizer.__call__
def half_speed(self, frames):
    start = time.perf_counter()
    out = call(self, frames)
    time.sleep(time.perf_counter() - start)
    return out
models.Stylizer.__call__ = half_speed
from stylebatch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if result.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{result.stderr[-2000:]}")
    return result


def shares(stdout: str) -> str:
    """Frames each rank stylized, from the last progress line of each."""
    from stylebatch.progress import latest_by_rank

    last = latest_by_rank(stdout.splitlines())
    return " / ".join(str(last[r].done) for r in sorted(last))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="640x360")
    p.add_argument("--frames", type=int, default=192)
    p.add_argument("--style", default="lavender-gold")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--chunk-frames", type=int, help="default: stylebatch's own rule (192 frames: 8 chunks of 24)")
    a = p.parse_args(argv)
    from stylebatch.run import find_mpiexec

    mpiexec = find_mpiexec()
    with tempfile.TemporaryDirectory(prefix="uneven-") as tmp_name:
        tmp = Path(tmp_name)
        clip, work, wrapper = tmp / "clip.mp4", tmp / "work", tmp / "slow_rank.py"
        wrapper.write_text(SLOW_RANK)
        run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={a.size}:rate=30", "-frames:v",
             str(a.frames), "-c:v", "libx264", "-pix_fmt", "yuv420p", clip])
        chunking = ["--chunk-frames", str(a.chunk_frames)] if a.chunk_frames else []
        run([BIN / "stylebatch", "preprocess", clip, "--work", work, "-o", tmp / "out.mp4", *chunking])
        args = ["stylize", "--work", work, "--style", a.style, "--device", "cpu"]
        env = dict(os.environ, TMPDIR=str(tmp))
        variants = {
            "even": [mpiexec, "-n", "2", BIN / "stylebatch", *args],
            "uneven": [mpiexec, "-n", "1", BIN / "stylebatch", *args, ":", "-n", "1", sys.executable, wrapper, *args],
        }
        walls: dict[str, list[float]] = {k: [] for k in variants}
        split: dict[str, str] = {}
        for _ in range(a.repeats):
            for name, cmd in variants.items():
                shutil.rmtree(work / "parts", ignore_errors=True)
                start = time.perf_counter()
                result = run(cmd, env=env)
                walls[name].append(time.perf_counter() - start)
                split[name] = shares(result.stdout)
        chunks = len(list((work / "parts").iterdir()))
    even, uneven = statistics.median(walls["even"]), statistics.median(walls["uneven"])
    ideal = even * 2 / 1.5
    print(f"`stylebatch stylize`, {a.size}, {a.frames} frames in {chunks} chunks, style {a.style}, 2 ranks x 1 "
          f"torch thread, median of {a.repeats} alternating runs, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| ranks | wall (s) | frames per rank (fast / slow) | against the ideal |")
    print("|---|---:|---:|---:|")
    print(f"| both at full speed | {even:.1f} | {split['even']} | |")
    print(f"| one at half speed, chunks taken dynamically | {uneven:.1f} | {split['uneven']} | "
          f"{uneven / ideal:.2f}x of {ideal:.1f} s |")
    print(f"| one at half speed, fixed halves (computed: 2 x even) | {2 * even:.1f} | {a.frames // 2} / "
          f"{a.frames - a.frames // 2} | {2 * even / ideal:.2f}x |")
    print(f"\nwalls: even {', '.join(f'{w:.1f}' for w in walls['even'])}; "
          f"uneven {', '.join(f'{w:.1f}' for w in walls['uneven'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
