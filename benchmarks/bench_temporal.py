"""--temporal off vs on, side by side in one run: flicker (warping error), cost, ghosting at a cut.

    .venv/bin/python benchmarks/bench_temporal.py [--frames 48] [--max-side 360] [--workers 2]

Clips (real footage, from Debian's opencv-doc): the sample clip (a cartoon, camera and characters
moving), vtest.avi (a fixed camera over walking pedestrians), and a clip with a hard cut between the
two. Styles: the default (lavender-gold) and a busy one (blue-gold-swirls). Each (clip, style) runs
off then on, back to back, so both see the same machine load; the figures are from
`stylebatch.quality.measure`, the same code as `stylebatch quality`. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = Path("/usr/share/doc/opencv-doc/examples/data")
STYLES = ("lavender-gold", "blue-gold-swirls")


def _clips(tmp: Path, frames: int) -> dict[str, Path]:
    def cut(src: Path, dst: Path, n: int, extra: list[str] = ()) -> Path:
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), *extra, "-frames:v", str(n), "-an",
                        "-c:v", "libx264", "-crf", "16", "-pix_fmt", "yuv420p", str(dst)], check=True)
        return dst

    sample = REPO / "samples" / "sample.mp4"
    clips = {"sample (cartoon)": cut(sample, tmp / "sample.mp4", frames),
             "vtest (pedestrians)": cut(DATA / "vtest.avi", tmp / "vtest.mp4", frames)}
    half = frames // 2
    a = cut(sample, tmp / "a.mp4", half)
    b = cut(DATA / "vtest.avi", tmp / "b.mp4", half, ["-vf", "scale=720:528,setsar=1", "-r", "24"])
    joined = tmp / "cut.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(a), "-i", str(b), "-filter_complex",
                    "[0:v]fps=24[x];[1:v]fps=24[y];[x][y]concat=n=2:v=1[v]", "-map", "[v]", "-c:v", "libx264",
                    "-crf", "16", "-pix_fmt", "yuv420p", str(joined)], check=True)
    clips[f"hard cut at frame {half}"] = joined
    return clips


def _frames(path: Path) -> np.ndarray:
    from stylebatch.quality import read_frames

    return np.stack(list(read_frames(path, path.name, width=10_000)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--max-side", type=int, default=360)
    p.add_argument("--workers", type=int, default=2)
    opts = p.parse_args()
    from stylebatch.quality import measure

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-temporal-") as tmp_name:
        tmp = Path(tmp_name)
        for clip_name, clip in _clips(tmp, opts.frames).items():
            source = _frames(clip)
            for style in STYLES:
                result = {}
                for mode in ("off", "on"):
                    out = tmp / f"{clip.stem}-{style}-{mode}.mp4"
                    t0 = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "stylebatch", "run", str(clip), "-o", str(out),
                                    "--style", style, "--max-side", str(opts.max_side), "--workers",
                                    str(opts.workers), "--temporal", mode], check=True, capture_output=True)
                    wall = time.perf_counter() - t0
                    frames = _frames(out)
                    result[mode] = (measure(source, frames), wall, frames)
                (off, t_off, f_off), (on, t_on, f_on) = result["off"], result["on"]
                ghost = ""
                if clip_name.startswith("hard cut"):
                    first = opts.frames // 2
                    ghost = f"{np.abs(f_on[first].astype(int) - f_off[first].astype(int)).mean():.2f}"
                rows.append((clip_name, style, off.short_input.error, off.short_output.error, on.short_output.error,
                             off.long_output.error, on.long_output.error, t_off, t_on, ghost))
                print(f"done: {clip_name} / {style}", file=sys.stderr)
    print(f"{opts.frames} frames, --max-side {opts.max_side}, {opts.workers} ranks; warping error x 1000 "
          "(input = the floor); fps end to end\n")
    print("| clip | style | input | short-term off | short-term on | on/off | on/input | long-term off | "
          "long-term on | fps off | fps on | cost | first frame after the cut, on vs off (mean abs, 0..255) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for clip_name, style, inp, s_off, s_on, l_off, l_on, t_off, t_on, ghost in rows:
        fps_off, fps_on = opts.frames / t_off, opts.frames / t_on
        print(f"| {clip_name} | {style} | {inp * 1e3:.3f} | {s_off * 1e3:.3f} | {s_on * 1e3:.3f} | "
              f"{s_on / s_off:.2f} | {s_on / inp:.2f} | {l_off * 1e3:.3f} | {l_on * 1e3:.3f} | {fps_off:.2f} | "
              f"{fps_on:.2f} | {1 - fps_on / fps_off:+.0%} | {ghost or '-'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
