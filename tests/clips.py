"""Short test clips made with the real ffmpeg CLI, and ffprobe/ffmpeg helpers to check outputs.

`make_clip` writes one clip; the session fixture `clip` caches clips by their parameters, so tests
that share a clip make it once per run. `stylebatch` runs the real CLI in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

AUDIO_ENCODERS = {"aac": ("aac", []), "opus": ("libopus", []), "mp3": ("libmp3lame", []),
                  "flac": ("flac", []), "pcm": ("pcm_s16le", []), "pcm_be": ("pcm_s16be", []),
                  "vorbis": ("libvorbis", [])}
# a cheap real style and a small working size keep the end-to-end tests fast
FAST_STYLE = ["--style", "lavender-gold", "--max-side", "48"]


def stop_signals_at_default() -> None:
    """preexec_fn: SIGINT and SIGHUP at their defaults, as in a process started from a terminal, even
    where the test runner itself ignores them (a shell's background job ignores SIGINT, `nohup`
    SIGHUP, and a process keeps what it was started ignoring)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def make_clip(path: Path, *, size: tuple[int, int] = (64, 48), frames: int = 12, fps: int | str = 30,
              pix_fmt: str = "yuv420p", codec: str = "libx264", audio: tuple[str, ...] = (),
              vfr: bool = False, rotate: int = 0, index_colors: bool = False,
              extra: tuple[str, ...] = ()) -> Path:
    """A clip of `frames` frames; audio: one track per codec name (aac, opus, mp3, flac, pcm, pcm_be).

    index_colors: every frame is one flat colour computed from its index (identifiable after coding).
    vfr: frame intervals alternate between 1/fps and 1/fps + 10 ms.
    rotate: counter-clockwise degrees written into the display matrix (remuxed with PyAV).
    """
    w, h = size
    duration = float(Fraction(frames) / Fraction(str(fps))) + 0.05
    src = f"testsrc2=size={w}x{h}:rate={fps}" if not index_colors else f"color=c=black:size={w}x{h}:rate={fps}"
    if w % 2 or h % 2:
        src += ",format=rgb24"  # lavfi's YUV sources round odd sizes down to even
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", src]
    for i, _ in enumerate(audio):
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={330 + 110 * i}:sample_rate=48000:duration={duration}"]
    filters = []
    if index_colors:
        filters.append("geq=r='mod(N*67+20,200)+20':g='mod(N*29+90,200)+20':b='mod(N*113+160,200)+20'")
    if vfr:
        filters.append(f"settb=1/1000,setpts=(N/{fps}+floor(N/2)*0.01)/TB")
    if filters:
        cmd += ["-vf", ",".join(filters)]
    cmd += ["-map", "0:v"] + [x for i in range(len(audio)) for x in ("-map", f"{i + 1}:a")]
    cmd += ["-frames:v", str(frames), "-c:v", codec, "-pix_fmt", pix_fmt]
    if codec == "libx264":
        cmd += ["-crf", "12", "-preset", "veryfast"]
    if codec == "libvpx-vp9":
        cmd += ["-crf", "20", "-b:v", "0", "-deadline", "realtime", "-cpu-used", "8"]
    if codec == "mjpeg":
        cmd += ["-q:v", "3"]
    if vfr:
        cmd += ["-fps_mode", "passthrough"]
    for i, name in enumerate(audio):
        enc, opts = AUDIO_ENCODERS[name]
        cmd += [f"-c:a:{i}", enc, *opts]
    if audio:
        cmd += ["-shortest"]
    cmd += [*extra]
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.with_name(".unrotated-" + path.name) if rotate else path
    subprocess.run([*cmd, str(target)], check=True)
    if rotate:
        _remux_rotated(target, path, rotate)
        target.unlink()
    return path


def _remux_rotated(src: Path, dst: Path, degrees: int) -> None:
    """ffmpeg 5.1's CLI cannot write a display matrix; PyAV's muxer can."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        out.streams.video[0].set_display_rotation(degrees)
        for packet in inp.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """clip(name, **make_clip_kwargs) -> path of a cached clip (make it once per session)."""
    root = tmp_path_factory.mktemp("clips")
    made: dict[str, Path] = {}

    def get(name: str, **kwargs) -> Path:
        key = hashlib.sha1((name + repr(sorted(kwargs.items()))).encode()).hexdigest()[:10]
        if key not in made:
            made[key] = make_clip(root / key / name, **kwargs)
        return made[key]

    return get


# --- checking outputs with ffprobe / ffmpeg ---

def ffprobe_json(path: Path, *args: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def frame_pts(path: Path) -> list[str]:
    """pts_time of every video frame as ffprobe decodes them."""
    frames = ffprobe_json(path, "-select_streams", "v:0", "-show_entries", "frame=pts_time")["frames"]
    return [f["pts_time"] for f in frames]


def count_frames(path: Path) -> int:
    s = ffprobe_json(path, "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames")
    return int(s["streams"][0]["nb_read_frames"])


def streams(path: Path) -> list[dict]:
    return ffprobe_json(path, "-show_streams")["streams"]


def video_stream(path: Path) -> dict:
    return next(s for s in streams(path) if s["codec_type"] == "video")


def display_size(path: Path) -> tuple[int, int]:
    """Width and height as a player shows them (rotation applied)."""
    v = ffprobe_json(path, "-select_streams", "v:0", "-show_streams")["streams"][0]
    rotation = 0
    for sd in v.get("side_data_list", []):
        rotation = int(sd.get("rotation", rotation))
    w, h = int(v["width"]), int(v["height"])
    return (h, w) if rotation % 180 else (w, h)


def format_name(path: Path) -> str:
    return ffprobe_json(path, "-show_format")["format"]["format_name"]


def audio_md5(path: Path, index: int) -> str:
    """MD5 of the packets of audio stream `index`, stream-copied: equal means not re-encoded."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:a:{index}", "-c", "copy",
                          "-f", "md5", "-"], check=True, capture_output=True, text=True).stdout
    return out.strip()


def decode_rgb(path: Path) -> np.ndarray:
    """Every frame as RGB [N, H, W, 3], upright, decoded by the ffmpeg CLI (which applies rotation)."""
    w, h = display_size(path)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


# --- running the real CLI ---

def stylebatch(*args: str | os.PathLike, env: dict | None = None, timeout: float = 300,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`stylebatch ARGS...` in a subprocess (python -m stylebatch), output captured as text."""
    return subprocess.run([sys.executable, "-m", "stylebatch", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=cwd)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("stylebatch: error:")]
