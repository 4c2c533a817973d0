"""libx264 frames per second per core at 720p and 1080p for every preset stylebatch offers, with size and quality.

    .venv/bin/python benchmarks/bench_x264.py                   # 720p and 1080p, 48 frames, crf 18
    .venv/bin/python benchmarks/bench_x264.py --frames 24 --presets ultrafast,veryfast,medium

What x264 is given is what a rank hands its encoder: stylized frames. Real footage (Megamind, from
Debian's opencv-doc) is stylized with the default built-in style at 640x360 and scaled up to each
size, written once as raw video; then `ffmpeg -threads 1 ... -c:v libx264 -threads 1 -preset P
-crf 18 -x264-params ...` encodes it once per preset, with the x264-params a rank's encoder has at
that preset on this CPU (`encoder.x264_params`, as `open_encoder_options` sets them: stylebatch's
tuning, `contract.X264_TUNING`, and on an AVX-512 CPU the cap at x264's AVX2 code; a preset
stylebatch tunes also gets a row "P, x264's own" with the cap alone). Frames/s per core = frames /
CPU seconds (user + system) of that ffmpeg, which a busy machine disturbs far less than wall time.
Size is the output's bitrate at the clip's 24 fps; quality is PSNR (Y) of the encode against its raw input.

`--match` adds what a preset costs at equal quality: each preset is encoded again at the CRFs
around the default (`--crfs`), and its bit rate at the PSNR the default preset reaches at the default
CRF is read off that curve (log bit rate linear in PSNR between the two encodes that bracket it), so
a faster preset's price is the bytes it needs for the same picture, not its bytes at the same CRF
(a faster preset at the same CRF gives another quality too).

`--params 'me=dia;partitions=i8x8,i4x4'` adds a row per try: the default preset, x264's own, with
those x264-params over it (how `contract.X264_TUNING` was chosen); `--footage` and `--style` paint
other frames (Debian's opencv-doc has vtest.avi and tree.avi beside Megamind.avi).
"""

from __future__ import annotations

import argparse
import math
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from stylebatch.contract import DEFAULT_PRESET, PRESETS, QUALITY, X264_TUNING
from stylebatch.encoder import x264_params

FOOTAGE = "/usr/share/doc/opencv-doc/examples/data/Megamind.avi"
SIZES = ("1280x720", "1920x1080")


def stylized_source(frames: int, footage: str = FOOTAGE, style: str | None = None) -> np.ndarray:
    from stylebatch.models import DEFAULT_STYLE, load_stylizer

    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", footage, "-frames:v", str(frames), "-vf", "scale=640:360",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    video = np.frombuffer(raw, np.uint8).reshape(-1, 360, 640, 3)
    stylizer = load_stylizer(style or DEFAULT_STYLE, device="cpu")
    return np.concatenate([stylizer(video[i:i + 8]) for i in range(0, len(video), 8)])


def encode(raw: Path, size: str, preset: str, crf: int, out: Path,
           params: str | None = None) -> tuple[float, float, float]:
    """(CPU seconds, kbit/s at 24 fps, PSNR Y in dB) of an encode at the preset with `params` over it."""
    params = ["-x264-params", params] if params else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-threads", "1", "-f", "rawvideo", "-pix_fmt", "yuv420p",
                    "-s", size, "-r", "24", "-i", str(raw), "-c:v", "libx264", "-threads", "1", "-preset", preset,
                    "-crf", str(crf), *params, str(out)], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    psnr = subprocess.run(["ffmpeg", "-i", str(out), "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", size, "-r", "24",
                           "-i", str(raw), "-lavfi", "psnr", "-f", "null", "-"], capture_output=True, text=True).stderr
    y = float(re.search(r"PSNR y:([\d.]+)", psnr).group(1))
    frames = raw.stat().st_size / (1.5 * eval(size.replace("x", "*")))
    return cpu, out.stat().st_size * 8 / 1000 / (frames / 24), y


def rate_at(points: list[tuple[float, float]], psnr: float) -> float | None:
    """kbit/s at `psnr` on a preset's (kbit/s, PSNR) points: log rate linear in PSNR between the two
    points that bracket it; None when none do (the curve does not reach that quality)."""
    points = sorted(points, key=lambda p: p[1])
    for (r0, q0), (r1, q1) in zip(points, points[1:]):
        if q0 <= psnr <= q1 and q1 > q0:
            return math.exp(math.log(r0) + (psnr - q0) / (q1 - q0) * (math.log(r1) - math.log(r0)))
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--sizes", default=",".join(SIZES))
    offered = [x for x in PRESETS["libx264"] if x != "placebo"]
    p.add_argument("--presets", default=",".join(offered), help="default: all offered but placebo")
    p.add_argument("--crf", type=int, default=QUALITY["libx264"][0])
    p.add_argument("--match", action="store_true",
                   help="also each preset's bit rate at the default preset's quality (encodes at --crfs)")
    p.add_argument("--crfs", default=None, help="CRFs for --match (default: the CRF -2, +2, +4)")
    p.add_argument("--params", type=lambda text: [x for x in text.split(";") if x], default=[],
                   help="x264-params to try over x264's own default preset, ';' between tries "
                        "(e.g. 'me=dia;partitions=i8x8,i4x4'): a row each")
    p.add_argument("--footage", default=FOOTAGE, help="the video whose frames are stylized (first --frames)")
    p.add_argument("--style", default=None, help="the built-in style that paints them (default: the default style)")
    a = p.parse_args(argv)
    crfs = [int(c) for c in a.crfs.split(",")] if a.crfs else [a.crf - 2, a.crf + 2, a.crf + 4]
    if a.match and not set(crfs) - {a.crf}:
        p.error(f"--match needs --crfs other than --crf {a.crf}: a preset's curve is read between two encodes")
    source = stylized_source(a.frames, a.footage, a.style)
    default = DEFAULT_PRESET["libx264"]
    tuning = f" ({X264_TUNING[default]})" if default in X264_TUNING else ""
    print(f"libx264, 1 thread, crf {a.crf}, {len(source)} frames of {Path(a.footage).name} painted in "
          f"{a.style or 'the default style'} per size; stylebatch's default preset: {default}{tuning}\n")
    if a.match:
        print(f"At equal quality: each preset's kbit/s at the PSNR {default} reaches at crf {a.crf}, from encodes at "
              f"crf {', '.join(map(str, sorted({a.crf, *crfs})))}\n")
        print("| size | preset | frames/s per core | kbit/s at 24 fps | PSNR Y (dB) | kbit/s at the default's PSNR | "
              "bytes against the default at equal PSNR |")
        print("|---|---|---:|---:|---:|---:|---:|")
    else:
        print("| size | preset | frames/s per core | kbit/s at 24 fps | PSNR Y (dB) |")
        print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="x264-") as tmp_name:
        tmp = Path(tmp_name)
        for size in a.sizes.split(","):
            raw = tmp / f"{size}.yuv"
            subprocess.run(["ffmpeg", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "640x360", "-i", "-",
                            "-vf", f"scale={size.replace('x', ':')}:flags=bicubic", "-pix_fmt", "yuv420p", "-f",
                            "rawvideo", str(raw)], input=source.tobytes(), check=True)
            presets = a.presets.split(",")
            if a.match and default not in presets:
                presets.insert(0, default)  # its PSNR is the quality the others are read at
            rows = []  # (label, preset, x264-params): each preset as a rank sets it, then x264's own where they differ
            for preset in sorted(presets, key=lambda x: x != default) if a.match else presets:
                rows.append((preset, preset, x264_params(X264_TUNING.get(preset))))  # as a rank's encoder has it
                if preset in X264_TUNING:
                    rows.append((f"{preset}, x264's own", preset, x264_params(None)))
            rows += [(f"{default}, x264's own + {extra}", default, x264_params(extra)) for extra in a.params]
            for n, (label, preset, params) in enumerate(rows):
                cpu, kbps, psnr = encode(raw, size, preset, a.crf, tmp / "out.mp4", params)
                row = f"| {size} | {label} | {len(source) / cpu:.1f} | {kbps:,.0f} | {psnr:.2f} |"
                if a.match and n == 0:  # the default as a rank sets it: the quality the others are read at
                    target, base = psnr, kbps
                    row += f" {kbps:,.0f} | (the default) |"
                elif a.match:
                    at = rate_at([(kbps, psnr)] + [encode(raw, size, preset, c, tmp / "out.mp4", params)[1:]
                                                   for c in crfs if c != a.crf], target)
                    row += (f" {at:,.0f} | {round(100 * (at / base - 1)):+d}% |" if at is not None
                            else " - | out of its range |")
                print(row, flush=True)
            raw.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
