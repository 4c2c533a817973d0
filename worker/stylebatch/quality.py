"""`stylebatch quality INPUT OUTPUT`: how much a stylized video flickers, as a number.

The short-term warping error of Lai et al., "Learning Blind Video Temporal Consistency" (ECCV 2018):
for each pair of consecutive frames, the flow between the INPUT's frames moves the previous OUTPUT
frame onto the current one, and the error is the mean squared difference, in [0,1] RGB averaged over
the three channels, over the pixels that pass a forward-backward occlusion check; the video's figure
is the mean over all pairs. Frames are first scaled to a fixed working width, so the figure does not
depend on resolution. The same figure computed on the input itself is the floor (what the flow
cannot explain: noise, lighting, compression), and the ratio output/input says how much the
stylization adds. The long-term figure compares the first frame of each window with every later
frame of the window through direct flow (motion the short-term figure lets drift unnoticed).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from stylebatch.errors import StylebatchError
from stylebatch.flow import FlowEstimator, resize_to_width, visible, warp
from stylebatch.logs import say

WORK_WIDTH = 320  # pixels: the working width of every figure
LONG_WINDOW = 10  # frames per long-term window


@dataclass(frozen=True)
class Figure:
    """A warping error: mean squared difference in [0,1] RGB over visible pixels, and how many
    frame pairs it averages."""

    error: float
    pairs: int
    per_pair: tuple[float, ...] = ()  # each pair's error in order (NaN: nothing visible in both)


@dataclass(frozen=True)
class Report:
    frames: int
    short_output: Figure
    short_input: Figure
    long_output: Figure
    long_input: Figure

    @property
    def short_ratio(self) -> float:
        return _ratio(self.short_output, self.short_input)

    @property
    def long_ratio(self) -> float:
        return _ratio(self.long_output, self.long_input)

    def lines(self) -> list[str]:
        def one(label: str, out: Figure, inp: Figure, ratio: float) -> str:
            # a still input's figure is 0: no ratio to it ("ratio infx" said nothing)
            said = f"ratio {ratio:.2f}x" if math.isfinite(ratio) else "no ratio (the input does not change)"
            return (f"{label}: output {out.error * 1000:.3f}  input {inp.error * 1000:.3f}  "
                    f"{said}  ({out.pairs} frame pairs)")

        return [f"warping error x 1000 (Lai et al. 2018; lower is steadier; {self.frames} frames at width "
                f"{WORK_WIDTH})",
                one("  short-term (consecutive frames)", self.short_output, self.short_input, self.short_ratio),
                one(f"  long-term ({LONG_WINDOW}-frame windows)", self.long_output, self.long_input,
                    self.long_ratio)]

    def to_json(self) -> str:
        """The report as strict JSON (RFC 8259): a ratio with no finite value (the input's figure is 0, a
        still picture) is null; it was written `Infinity`, which JSON parsers other than Python's refuse."""
        d = asdict(self)
        for key in ("short_output", "short_input", "long_output", "long_input"):
            d[key].pop("per_pair")
        d |= {"short_ratio": _finite(self.short_ratio), "long_ratio": _finite(self.long_ratio),
              "work_width": WORK_WIDTH, "long_window": LONG_WINDOW}
        return json.dumps(d, sort_keys=True, allow_nan=False)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _ratio(out: Figure, inp: Figure) -> float:
    if inp.error > 0:
        return out.error / inp.error
    return math.inf if out.error > 0 else 1.0


class _Accumulator:
    def __init__(self) -> None:
        self.errors: list[float] = []

    def add(self, a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> None:
        """a: the earlier frame already warped onto b; mask: pixels of b to count."""
        if not mask.any():  # nothing the flow can follow (a scene cut): no figure for this pair
            self.errors.append(math.nan)
            return
        diff = (a.astype(np.float32) - b.astype(np.float32)) / 255.0
        self.errors.append(float(np.mean(diff[mask] ** 2)))

    def figure(self) -> Figure:
        counted = [e for e in self.errors if not math.isnan(e)]
        return Figure(sum(counted) / len(counted) if counted else 0.0, len(counted), tuple(self.errors))


def measure(inputs: Iterable[np.ndarray], outputs: Iterable[np.ndarray], *, width: int = WORK_WIDTH,
            window: int = LONG_WINDOW) -> Report:
    """Warping errors of `outputs` (and of `inputs`, the floor), flow taken from `inputs`.

    Both are sequences of upright RGB uint8 frames of the same video; they may differ in size
    (each is scaled to `width`), not in shape. Raises StylebatchError when their frame counts or
    their pictures' aspect ratios differ (another video, or one turned or cropped: no figure could
    mean anything)."""
    estimate = FlowEstimator()
    acc = {k: _Accumulator() for k in ("so", "si", "lo", "li")}
    prev_in = prev_out = anchor_in = anchor_out = None
    frames = 0
    out_iter = iter(outputs)
    for frame_in in inputs:
        frame_out = next(out_iter, None)
        if frame_out is None:
            raise StylebatchError(f"the output has fewer frames than the input ({frames})")
        if frames == 0:
            _check_same_picture(frame_in, frame_out)
        cur_in = resize_to_width(frame_in, width)
        cur_out = _match(resize_to_width(frame_out, width), cur_in)
        if prev_in is not None:
            _pair(estimate, prev_in, cur_in, prev_out, cur_out, acc["si"], acc["so"])
        if frames % window == 0:
            anchor_in, anchor_out = cur_in, cur_out
        elif anchor_in is not None and frames % window > 1:  # distance 1 is the short-term figure
            _pair(estimate, anchor_in, cur_in, anchor_out, cur_out, acc["li"], acc["lo"])
        prev_in, prev_out = cur_in, cur_out
        frames += 1
    if next(out_iter, None) is not None:
        raise StylebatchError(f"the output has more frames than the input ({frames})")
    if frames < 2:
        raise StylebatchError("a warping error needs at least two frames")
    return Report(frames, acc["so"].figure(), acc["si"].figure(), acc["lo"].figure(), acc["li"].figure())


def _check_same_picture(frame_in: np.ndarray, frame_out: np.ndarray) -> None:
    (hi, wi), (ho, wo) = frame_in.shape[:2], frame_out.shape[:2]
    if abs((wo / ho) / (wi / hi) - 1) > 0.02:  # was scored, squeezed to the input's shape, with no word
        raise StylebatchError(f"the output's picture is {wo}x{ho} as decoded and the input's {wi}x{hi}: "
                              "not the same shape, so not the input's frames stylized (turned or cropped?)")


def _match(frame: np.ndarray, like: np.ndarray) -> np.ndarray:
    """The output at exactly the input's working size (aspect ratios may round differently)."""
    if frame.shape[:2] == like.shape[:2]:
        return frame
    import cv2

    return cv2.resize(frame, (like.shape[1], like.shape[0]), interpolation=cv2.INTER_AREA)


def _pair(estimate: FlowEstimator, a_in, b_in, a_out, b_out, acc_in: _Accumulator, acc_out: _Accumulator) -> None:
    back = estimate(b_in, a_in)  # b's pixels -> where they were in a
    fwd = estimate(a_in, b_in)
    mask = visible(back, fwd)
    acc_in.add(warp(a_in, back), b_in, mask)
    acc_out.add(warp(a_out, back), b_out, mask)


def read_frames(path: Path, label: str, width: int = WORK_WIDTH) -> Iterator[np.ndarray]:
    """Upright RGB frames of a video file in presentation order, scaled to about `width` (decoded
    scaled, so a 4K video costs little memory)."""
    import av

    from stylebatch.video import _rotation, open_video, video_stream

    with open_video(path, label) as container:
        vs = video_stream(container, label)
        vs.thread_type = "AUTO"
        try:
            for frame in container.decode(vs):
                k = _rotation(frame) // 90
                upright_w = frame.height if k % 2 else frame.width
                scale = min(1.0, 2 * width / upright_w)  # decode at about twice the width, then area-average
                w, h = max(2, round(frame.width * scale)), max(2, round(frame.height * scale))
                rgb = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
                yield np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise StylebatchError(f"cannot decode {label} ({' '.join(str(exc).split())})") from None


def run(input: str, output: str, *, as_json: bool = False) -> int:
    """The CLI: print the report for two local videos or blob URIs."""
    import tempfile

    from stylebatch.preprocess import check_input
    from stylebatch.storage import location

    with tempfile.TemporaryDirectory(prefix="stylebatch-quality-") as tmp:
        paths = []
        for i, uri in enumerate((input, output)):
            loc = location(uri)
            if loc.is_local():
                check_input(loc, role=("input", "output")[i])
                paths.append((Path(loc.local_path()), loc.display))
            else:
                local = Path(tmp) / f"{i}-{Path(loc.name).name or 'video'}"
                loc.download(local)
                paths.append((local, loc.display))
        report = measure(read_frames(*paths[0]), read_frames(*paths[1]))
    say(report.to_json() if as_json else "\n".join(report.lines()))
    return 0


def cli(args) -> int:
    return run(args.input, args.output, as_json=args.json)
