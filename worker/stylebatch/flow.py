"""Optical flow between video frames, and what temporal stability needs from it. Pure NumPy/OpenCV.

Conventions: frames are uint8 or float [H,W,3] RGB arrays; a flow is float32 [H,W,2] (dx, dy) in
pixels; `flow(a, b)` maps each pixel x of `a` to where it is in `b` (x + flow[x]). OpenCV's DIS
flow (Kroeger et al. 2016) needs no weights, runs on the CPU in a few milliseconds at the sizes used
here, and is what both `stylebatch quality` and `--temporal on` use, so the figure measures exactly
the motion the blending follows.
"""

from __future__ import annotations

import cv2
import numpy as np

# Forward-backward consistency (Sundaram et al. 2010, as used by Lai et al. 2018 and Ruder et al.
# 2016): a pixel is visible in both frames when following the flow there and back returns close to
# where it started.
_OCC_REL, _OCC_ABS = 0.01, 0.5
# DIS needs this many pixels on each side of a frame: below it, it returned NaN flows (a 256x8
# strip), failed an OpenCV assertion (320x12: a traceback from `stylebatch quality`) or crashed the
# process (256x13: a rank with --temporal on killed by SIGSEGV)
MIN_FLOW_SIDE = 16


class FlowEstimator:
    """DIS optical flow on grayscale frames, both sides at least MIN_FLOW_SIDE (resize_to_width). One
    instance per thread (OpenCV objects are not shared)."""

    def __init__(self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> None:
        self._dis = cv2.DISOpticalFlow_create(preset)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flow from frame a to frame b (same size; RGB uint8 or already grayscale)."""
        return self._dis.calc(gray(a), gray(b), None)


def gray(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame if frame.dtype == np.uint8 else np.clip(frame, 0, 255).astype(np.uint8)
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image sampled at x + flow[x]: with flow = flow(current, previous), the previous frame moved
    onto the current one. Pixels whose source lies outside are taken from the nearest edge."""
    h, w = flow.shape[:2]
    xs, ys = _grid(h, w)
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def visible(flow_ab: np.ndarray, flow_ba: np.ndarray) -> np.ndarray:
    """bool [H,W] over frame a: pixels that are not occluded in b (forward-backward consistency)."""
    back = warp(flow_ba, flow_ab)  # flow_ba taken where each pixel of a lands in b
    err = np.sum((flow_ab + back) ** 2, axis=-1)
    bound = _OCC_REL * (np.sum(flow_ab ** 2, axis=-1) + np.sum(back ** 2, axis=-1)) + _OCC_ABS
    h, w = flow_ab.shape[:2]
    xs, ys = _grid(h, w)
    tx, ty = xs + flow_ab[..., 0], ys + flow_ab[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return (err <= bound) & inside


def resize_to_width(frame: np.ndarray, width: int) -> np.ndarray:
    """frame scaled to `width` pixels (height by the aspect ratio, at least MIN_FLOW_SIDE: a wide strip
    is stretched to it), area-averaged."""
    h, w = frame.shape[:2]
    height = max(MIN_FLOW_SIDE, round(h * width / w))
    if (w, h) == (width, height):
        return frame
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if width < w else cv2.INTER_LINEAR)


def resize_flow(flow: np.ndarray, width: int, height: int) -> np.ndarray:
    """A flow field scaled to another frame size, its vectors scaled with it."""
    h, w = flow.shape[:2]
    if (w, h) == (width, height):
        return flow
    out = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
    out[..., 0] *= width / w
    out[..., 1] *= height / h
    return out
