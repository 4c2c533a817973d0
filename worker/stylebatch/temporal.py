"""`--temporal on`: style that holds still. Flow-guided blending of the previous stylized frame.

Per-frame stylization repaints texture anew on every frame, so brush strokes crawl where the picture
does not move. Here each stylized frame is blended with the previous OUTPUT frame moved along the
input's optical flow:

    out[t] = s[t] + w[t] * (warp(out[t-1], flow[t -> t-1]) - s[t]),   w = strength * confidence

confidence is 1 where the flow is trusted and falls to 0 where it is not: pixels occluded or
revealed (forward-backward check), pixels whose colour the flow does not explain (a moving object's
edge, a flash), and whole frames after a scene cut (most pixels fail), so nothing smears or ghosts.
Since out[t-1] already holds out[t-2], steadiness accumulates along motion paths.

Work is split so the model never waits: `Motion.estimate` (flow on the INPUT frames at a small
working width, OpenCV's DIS, CPU) runs in the rank's decode thread; `Blender.blend` (one warp and
one blend per frame at output size) runs in its encode thread.

Chunks and ranks: every chunk starts a few frames early (`warmup_frames`); those frames are stylized and blended
but not encoded, and the state starts empty at the first of them. So a chunk's output depends only
on the input and the settings, never on which rank made it or whether the run was resumed, and the
seams between chunks are as steady as the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stylebatch.flow import FlowEstimator, resize_flow, resize_to_width, visible, warp
from stylebatch.temporal_defaults import DEFAULT_STRENGTH, MAX_WARMUP

FLOW_WIDTH = 256  # pixels: the working width of the flow
_CUT_VISIBLE = 0.45  # fewer pixels than this visible in both frames: a scene cut
_COLOR_TOL = 10.0  # grey levels (0..255) of unexplained change that cut the confidence to 1/e


@dataclass
class FrameMotion:
    """How frame t relates to frame t-1 of the input, at the flow's working size.

    flow: [h,w,2] from t to t-1 (None: the first frame of a sequence, or a scene cut);
    confidence: [h,w] float32 in 0..1."""

    flow: np.ndarray | None
    confidence: np.ndarray | None


class Motion:
    """Decode-side half: flow and confidence for each input frame, given in order within a chunk."""

    def __init__(self, width: int = FLOW_WIDTH) -> None:
        self.width = width
        self._flow = FlowEstimator()
        self._prev: np.ndarray | None = None

    def reset(self) -> None:
        """The next frame starts a new sequence (the first frame of a chunk's warm-up)."""
        self._prev = None

    def estimate(self, frames: np.ndarray) -> list[FrameMotion]:
        """frames: uint8 [B,H,W,3], the next frames of the sequence."""
        out = []
        for frame in frames:
            cur = cv2.cvtColor(resize_to_width(frame, min(self.width, frame.shape[1])), cv2.COLOR_RGB2GRAY)
            out.append(self._one(self._prev, cur) if self._prev is not None else FrameMotion(None, None))
            self._prev = cur
        return out

    def _one(self, prev: np.ndarray, cur: np.ndarray) -> FrameMotion:
        back = self._flow(cur, prev)  # cur's pixels -> where they were in prev
        seen = visible(back, self._flow(prev, cur))
        if seen.mean() < _CUT_VISIBLE:
            return FrameMotion(None, None)  # a scene cut: start over, no trace of the previous scene
        moved = warp(prev, back).astype(np.float32)
        unexplained = np.abs(moved - cur.astype(np.float32))
        if float(np.median(unexplained)) > 3 * _COLOR_TOL:
            return FrameMotion(None, None)  # a cut the flow happened to match geometrically
        # untrusted pixels grow by a pixel (flow is least reliable at motion boundaries), then the
        # weights are softened a little: a hard edge in them would itself show as a seam
        seen = cv2.erode(seen.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
        confidence = seen * np.exp(-(unexplained / _COLOR_TOL) ** 2)
        confidence = cv2.GaussianBlur(confidence, (0, 0), 0.7)
        return FrameMotion(back, confidence)


class Blender:
    """Encode-side half: blends each stylized frame with the moved previous output."""

    def __init__(self, strength: float = DEFAULT_STRENGTH) -> None:
        if not 0.0 <= strength < 1.0:
            raise ValueError("temporal strength must be in [0, 1)")
        self.strength = strength
        self._prev: np.ndarray | None = None

    def reset(self) -> None:
        self._prev = None

    def blend(self, stylized: np.ndarray, motions: list[FrameMotion]) -> np.ndarray:
        """stylized: uint8 [B,H,W,3]; motions: one per frame. Returns the blended frames (new array)."""
        out = np.empty_like(stylized)
        for i, (frame, motion) in enumerate(zip(stylized, motions)):
            if self._prev is None or motion.flow is None or self.strength == 0:
                out[i] = frame
            else:
                h, w = frame.shape[:2]
                flow = resize_flow(motion.flow, w, h)
                weight = cv2.resize(motion.confidence, (w, h), interpolation=cv2.INTER_LINEAR)
                weight *= self.strength
                moved = warp(self._prev, flow).astype(np.float32)
                cur = frame.astype(np.float32)
                blended = cur + weight[..., None] * (moved - cur)
                out[i] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
            self._prev = out[i]
        return out


@dataclass
class Batch:
    """One batch of a chunk on its way through the rank's pipeline."""

    frames: np.ndarray | None  # input frames, dropped once stylized
    motions: list[FrameMotion]
    skip: int  # leading frames that are warm-up: blended, not encoded
    first: bool  # the chunk's first batch: the blender starts over
    stylized: np.ndarray | None = None


class TemporalChunks:
    """The three pipeline hooks (read, stylize, finish) of one rank with `--temporal on`."""

    def __init__(self, strength: float = DEFAULT_STRENGTH, warmup: int = MAX_WARMUP) -> None:
        self.warmup = warmup
        self.motion = Motion()
        self.blender = Blender(strength)

    def read(self, read_frames, start: int, end: int, batch: int):
        """read_frames(first, end, batch) -> uint8 batches; yields Batch items for [start, end)
        preceded by up to `warmup` warm-up frames."""
        first_read = max(0, start - self.warmup)
        lead = start - first_read
        self.motion.reset()
        first = True
        for frames in read_frames(first_read, end, batch):
            skip = min(lead, len(frames))
            lead -= skip
            yield Batch(frames, self.motion.estimate(frames), skip, first)
            first = False

    @staticmethod
    def stylize(stylizer, item: Batch) -> Batch:
        item.stylized, item.frames = stylizer(item.frames), None
        return item

    def finish(self, item: Batch) -> np.ndarray:
        if item.first:
            self.blender.reset()
        return self.blender.blend(item.stylized, item.motions)[item.skip:]
