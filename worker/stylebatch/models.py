"""Style models behind one call: `load_stylizer(style)(frames)`.

Built-in styles are the 26 of the conditional-instance-norm network (`multistyle.py`); a path
to a pytorch/examples fast_neural_style state dict loads a `TransformerNet` instead.
Frames go in and come out as uint8 [B, H, W, 3] RGB. Naming and parsing styles is `styles.py`
(no torch: the launcher uses it), re-exported here.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import numbers
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stylebatch import fast_nets, native
from stylebatch.contract import BF16_BUILTIN_STYLES, BF16_MIN_SPEEDUP, DEFAULT_STYLE, PRECISIONS, precision_problem  # noqa: F401 - DEFAULT_STYLE: part of this API
from stylebatch.cpuinfo import this_cpu
from stylebatch.errors import StylebatchError
from stylebatch.logs import counted
from stylebatch.fast_nets import fast_multistyle_net, fast_transformer_net
from stylebatch.multistyle import NUM_STYLES, load_multistyle26
from stylebatch.styles import (  # noqa: F401 - part of this API
    BUILTIN_KIND, IMAGE_KIND, MIN_SIDE, WEIGHTS_KIND, Style, StylePart, list_styles, parse_style,
    style_label, style_by_name, too_small, working_size,
)
from stylebatch.transformer_net import load_transformer_net

assert len(list_styles()) == NUM_STYLES
log = logging.getLogger(__name__)


@dataclass
class Painter:
    """One network's share of the picture. `condition`: the style weights or style vector it takes
    (None for a TransformerNet, which works in 0..255)."""

    net: nn.Module  # 0..1 pictures in and out
    condition: torch.Tensor | None
    share: float
    vector_strength: bool = False  # strength mixes style vectors (paintings), not pictures
    exact: Painter | None = None  # the same in fp32 on the CPU, where this one is not (Stylizer._flat_colour)


# Threads inside Stylizer._exact, and cuDNN's TF32 switch as it was when the first of them came in.
_TF32_LOCK = threading.Lock()
_TF32_STATE: dict = {"inside": 0, "before": None}


class Stylizer:
    """Repaints batches of uint8 RGB frames [B, H, W, 3]; output has the same shape.

    A blend across networks (a painting with a built-in, or a .pth with anything) runs each network
    and mixes their pictures by weight; blends within the built-ins or within the paintings mix in
    the network's own style space (one pass). `keep_colors` keeps each frame's own colours: only the
    luminance of the painted picture is used. With paintings, `strength` below 1 moves the style
    vector towards the video's own (from `own_frame`, or the first frame it is given).

    Several threads may call one Stylizer at once (a rank's pipelines share it): they share its
    networks, and the first frames a reduced precision paints are checked (`_checked`) before any
    other thread's are painted.
    """

    def __init__(self, painters: list[Painter], *, name: str, device: torch.device, dtype: torch.dtype,
                 strength: float = 1.0, max_side: int | None = None, keep_colors: bool = False,
                 own_vector: torch.Tensor | None = None, autocast: torch.dtype | None = None) -> None:
        self.painters, self.name, self.device, self.dtype = painters, name, device, dtype
        self.autocast = autocast
        self.strength, self.max_side, self.keep_colors = strength, max_side, keep_colors
        self.own_vector = own_vector
        self.fits: int | None = None  # frames per network call that fit the GPU's memory, once one did not
        self._flat: dict[bytes, np.ndarray] = {}  # a flat frame's colour -> its painted colour (_flat_colour)
        self._fp32: Stylizer | None = None  # this stylizer in fp32 on the CPU (`_fp32_twin`), made when needed
        # bf16 that `--precision auto` chose on the CPU: checked against fp32 on the first frame painted
        # (`_checked`); set by load_stylizer
        self.check_reduced = False
        self._seen_painting = False  # `_warn_if_flat` has looked at a painted frame of a varied one
        self._first = threading.Lock()  # held while the first frames are painted and checked (`_checked`)
        self.bf16_speedup: float | None = None  # what `--precision auto` measured (cpu_bf16_speedup); set by load_stylizer

    @property
    def net(self) -> nn.Module:
        return self.painters[0].net

    def _condition(self, p: Painter) -> torch.Tensor | None:
        if not p.vector_strength or self.strength >= 1.0:
            return p.condition
        return torch.lerp(self.own_vector.to(p.condition), p.condition, self.strength)

    @contextlib.contextmanager
    def _exact(self):
        """fp32 is fp32: cuDNN's convolutions may use TF32 by PyTorch's default (10-bit mantissas,
        60-62 dB against fp32 here), which is not what `--precision fp32` asks for. The switch is
        the process's: it is off while any thread (a rank's pipelines) is inside, and goes back to
        what it was when the last one leaves."""
        if self.dtype != torch.float32 or self.autocast is not None:
            yield
            return
        with _TF32_LOCK:
            if not _TF32_STATE["inside"]:
                _TF32_STATE["before"] = torch.backends.cudnn.allow_tf32
                torch.backends.cudnn.allow_tf32 = False
            _TF32_STATE["inside"] += 1
        try:
            yield
        finally:
            with _TF32_LOCK:
                _TF32_STATE["inside"] -= 1
                if not _TF32_STATE["inside"]:
                    torch.backends.cudnn.allow_tf32 = _TF32_STATE["before"]

    def _paint(self, p: Painter, x: torch.Tensor) -> torch.Tensor:
        """One network's picture: 0..1 in (fp32), 0..1 out, any H and W.

        A network whose first layer is a convolution and an instance norm (`shift_invariant`) gives
        the same picture when a constant is added to an input channel: that norm removes it (and
        reflection padding keeps it constant). Each frame's channels are centred on 0 before any
        rounding to the network's precision: in bf16 (8-bit mantissa) a low-contrast frame (fog, a
        fade) lost most of its detail to rounding near 0.5 (28-45 dB against fp32, now 48-52). In
        fp32 nothing is rounded away: the frame goes in as it is (no copy)."""
        h, w = x.shape[-2:]
        if self.reduced and getattr(p.net, "shift_invariant", False):
            made = native.centred(x, self.dtype)  # in one pass where it takes x (CPU, channels-last)
            x = (x - centred_means(x)).to(self.dtype) if made is None else made
        x = x.to(self.dtype)
        # the nets halve the size twice: reflect-pad to a multiple of 4, crop back after
        x = F.pad(x, [0, -w % 4, 0, -h % 4], mode="reflect") if h % 4 or w % 4 else x
        condition = self._condition(p)
        y = p.net(x).clamp_(0, 1) if condition is None else p.net(x, condition)
        return y[..., :h, :w]

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
                or frames.shape[-1] != 3:
            got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
            raise StylebatchError(f"frames must be a uint8 array [batch, height, width, 3], got {got}")
        b, h, w, _ = frames.shape
        if problem := too_small(w, h):
            raise StylebatchError(problem)
        if b == 0:
            return frames.copy()
        # pipelines share this stylizer: none paints while the first frames are painted and checked
        # (`_checked` clears check_reduced as it starts, holding the lock until it is done)
        if self.check_reduced or self._first.locked():
            with self._first:
                return self._paint_frames(frames)
        return self._paint_frames(frames)

    def _paint_frames(self, frames: np.ndarray) -> np.ndarray:
        b = frames.shape[0]
        if self.own_vector is None and self.strength < 1.0 and any(p.vector_strength for p in self.painters):
            from stylebatch.paintings import style_vector

            self.own_vector = style_vector(frames[0])
        flat = flat_frames(frames) if self.reduced else []
        if not flat:
            return self._warn_if_flat(frames, self._checked(frames, self._in_batches(frames)))
        out = np.empty_like(frames)
        for i in flat:
            out[i] = self._flat_colour(frames[i, 0, 0])
        rest = sorted(set(range(b)) - set(flat))
        if rest:
            out[rest] = self._warn_if_flat(frames[rest], self._checked(frames[rest], self._in_batches(frames[rest])))
        return out

    def _warn_if_flat(self, frames: np.ndarray, painted: np.ndarray) -> np.ndarray:
        """painted, after a warning if the first varied frame (VARIED_FRAME_STD) came out one flat colour
        (FLAT_PAINTING_STD): an untrained network (a .pth saved before any training step, or one whose
        training collapsed) paints every frame black or grey, and the run would end with exit code 0
        and a video of nothing. Once per stylizer (a rank), on a sparse grid of pixels."""
        if self._seen_painting:
            return painted
        for frame, out in zip(frames, painted):
            if _spread(frame) > VARIED_FRAME_STD:
                self._seen_painting = True
                if _spread(out) < FLAT_PAINTING_STD:
                    colour = out[::4, ::4].reshape(-1, 3).mean(axis=0).round().astype(int)
                    log.warning("style %s paints a varied frame as one flat colour (RGB %d, %d, %d): it paints no "
                                "picture; is the network trained? (a .pth saved before training paints black)",
                                self.name, *colour)
                break
        return painted

    def _checked(self, frames: np.ndarray, painted: np.ndarray) -> np.ndarray:
        """painted, once the first frame a bf16 stylizer that `--precision auto` chose paints is within
        AUTO_MIN_PSNR dB of fp32; else the frames again in fp32, and fp32 from then on, with a warning.
        Once per stylizer (a rank): one frame's fp32 pass. (oneDNN's bf16 convolutions of some shapes
        returned garbage on one CPU: whole frames came out black with exit code 0; fast_nets.)"""
        if not self.check_reduced:
            return painted
        self.check_reduced = False
        exact = self._fp32_twin()
        # oneDNN's convolutions only: NNPACK's workspace, kept for the process's life, is not for one frame
        winograd, fast_nets.USE_WINOGRAD = fast_nets.USE_WINOGRAD, False
        try:
            score = psnr(painted[:1], exact._in_batches(frames[:1]))
        finally:
            fast_nets.USE_WINOGRAD = winograd
        if score >= AUTO_MIN_PSNR:
            return painted
        # rounded down: 44.96 shown as "45.0 ... (at least 45 needed)" read as passing
        log.warning("precision auto: bf16 painted this video's first frame %.1f dB from fp32 (at least %d "
                    "needed): stylizing in fp32", math.floor(score * 10) / 10, AUTO_MIN_PSNR)
        self.autocast = None
        return self._in_batches(frames)

    def _fp32_twin(self) -> Stylizer:
        """This stylizer in fp32 on the CPU, made once: the painters' fp32 CPU networks (Painter.exact,
        or themselves), the same settings and the style vector it has now (flat frames, `_checked`)."""
        if self._fp32 is None:
            self._fp32 = Stylizer([_fp32_cpu(p) for p in self.painters], name=self.name, device=torch.device("cpu"),
                                  dtype=torch.float32, strength=self.strength, max_side=self.max_side,
                                  keep_colors=self.keep_colors)
        own = self.own_vector
        self._fp32.own_vector = None if own is None else own.to("cpu", torch.float32)
        return self._fp32

    @property
    def arithmetic(self) -> str:
        """What the networks compute in: fp32, bf16 or fp16 (autocast's type where there is one)."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.autocast or self.dtype, "fp32")

    def arithmetic_note(self, precision: str) -> str | None:
        """What to tell a user about the arithmetic, `precision` being what was asked for: nothing for
        fp32 asked for by name or chosen without a measurement; else the arithmetic and why."""
        measured = "" if self.bf16_speedup is None else \
            f"; bf16 ran {self.bf16_speedup:.2f}x fp32's speed on one core here" + \
            ("" if self.reduced else f", {BF16_MIN_SPEEDUP}x needed")
        if not self.reduced and not measured:
            return None
        return f"{self.arithmetic} (--precision {precision}{measured})"

    @property
    def reduced(self) -> bool:
        """Whether the networks compute in less than fp32 (fp16 or bf16, autocast or not)."""
        return self.dtype != torch.float32 or self.autocast is not None

    def _flat_colour(self, rgb: np.ndarray) -> np.ndarray:
        """The painted colour of a frame that is `rgb` everywhere, in fp32.

        Every network here pads by reflection (or edge) and sees no position, so a flat frame paints
        flat; but in reduced precision its channels, constant but for rounding, reach instance norms
        that scale that rounding by up to 1/sqrt(eps): a black frame came out as a full-contrast
        texture (15 dB against fp32 in bf16). The fp32 networks, on the CPU, paint a small flat
        frame of that colour instead (once per colour)."""
        key = bytes(rgb)
        if key not in self._flat:
            frame = np.full((1, 4 * MIN_SIDE, 4 * MIN_SIDE, 3), rgb, np.uint8)
            self._flat[key] = self._fp32_twin()._stylize(frame)[0, 0, 0]
        return self._flat[key]

    def _in_batches(self, frames: np.ndarray) -> np.ndarray:
        b, h, w, _ = frames.shape
        if self.fits is not None and b > self.fits:
            step = self.fits  # (a part may lower self.fits again)
            return np.concatenate([self._in_batches(frames[i:i + step]) for i in range(0, b, step)])
        try:
            return self._stylize(frames)
        except torch.OutOfMemoryError:
            pass  # handled outside the except: its traceback holds the tensors that filled the GPU
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if b == 1:
            raise StylebatchError(
                f"the GPU ran out of memory stylizing one {w}x{h} frame (style {self.name}): give a smaller "
                f"--max-side, or run where the GPU has more memory free") from None
        self.fits = b // 2
        log.warning("the GPU ran out of memory stylizing %d frames of %dx%d at a time: %d at a time from now on",
                    b, w, h, self.fits)
        return self._in_batches(frames)

    def _stylize(self, frames: np.ndarray) -> np.ndarray:
        b, h, w, _ = frames.shape
        with torch.inference_mode(), torch.autocast("cpu", dtype=self.autocast or torch.bfloat16,
                                                    enabled=self.autocast is not None), self._exact():
            host = torch.from_numpy(np.ascontiguousarray(frames) if frames.flags.writeable else frames.copy())
            if self.device.type == "cuda":
                host = host.pin_memory()
            # NHWC permuted to NCHW is exactly channels_last, which the GPU and the CPU's fast_nets want;
            # the CPU's other networks (the arbitrary-style pair) want plain NCHW
            x = native.frames_to_unit(host) if self.device.type == "cpu" else None  # (the same in one pass)
            if x is None:
                x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)  # fp32 to the networks
            if self.device.type == "cpu" and not all(getattr(p.net, "channels_last", False) for p in self.painters):
                x = x.contiguous()
            small = x
            size = working_size(h, w, self.max_side)
            if size != (h, w):
                small = F.interpolate(x, size=size, mode="area")
            y = None
            for p in self.painters:
                painted = self._paint(p, small).to(x.dtype)
                if small is not x:
                    painted = F.interpolate(painted, size=(h, w), mode="bilinear", align_corners=False)
                if self.strength < 1.0 and not p.vector_strength:
                    painted = torch.lerp(x, painted, self.strength)
                if y is None:
                    y = painted if p.share == 1.0 else painted.mul_(p.share)
                else:
                    y = y.add_(painted, alpha=p.share)
            if self.keep_colors:
                y = keep_colors(y, x)
            y = y.float()
            out = native.frames_from_unit(y)  # the same in one pass where it takes y (CPU, channels-last)
            if out is None:
                out = y.mul_(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
            return out.cpu().numpy()


# The least PSNR (dB) against fp32 at which a reduced precision that `--precision auto` chose is kept.
AUTO_MIN_PSNR = 45

# A painted frame whose channels (0..255) vary less than this, from a frame one of whose channels
# varies more than VARIED_FRAME_STD, is one flat colour: no style network paints a picture so
# (Stylizer._warn_if_flat). A seeded untrained TransformerNet paints a photo at a standard deviation
# of 0.3 (black).
FLAT_PAINTING_STD, VARIED_FRAME_STD = 1.0, 8.0


def _spread(frame: np.ndarray) -> float:
    """How much a frame [H, W, 3] varies: its most varied channel's standard deviation, on a sparse
    grid of pixels (a flat red frame varies 0, not as much as its channels differ)."""
    return float(frame[::4, ::4].reshape(-1, 3).std(axis=0).max())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 pictures; NaN-free (equal pictures: 200)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 200.0 if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def flat_frames(frames: np.ndarray) -> list[int]:
    """Indices of the frames [B, H, W, 3] that are one colour everywhere (a black frame, a title
    card's ground); a sparse grid of pixels rules most others out without reading them all."""
    corner = frames[:, :1, :1]
    maybe = np.flatnonzero((frames[:, ::16, ::16] == corner).all(axis=(1, 2, 3)))
    return [int(i) for i in maybe if (frames[i] == frames[i, 0, 0]).all()]


def _fp32_cpu(p: Painter) -> Painter:
    """p's network in fp32 on the CPU: its `exact` twin, p itself when it is so already, else a copy
    (a Painter made by hand: its weights carry the rounding of their precision)."""
    if p.exact is not None:
        return p.exact
    first = next(p.net.parameters())
    if first.device.type == "cpu" and first.dtype == torch.float32:
        return p
    return Painter(copy.deepcopy(p.net).to("cpu", torch.float32),
                   None if p.condition is None else p.condition.to("cpu", torch.float32), p.share, p.vector_strength)


_LUMA = (0.299, 0.587, 0.114)  # BT.601, as JPEG's YCbCr


def keep_colors(painted: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """The painted picture's luminance with the original's chroma (both [B,3,H,W] in 0..1)."""
    luma = torch.tensor(_LUMA, device=painted.device, dtype=painted.dtype).view(1, 3, 1, 1)
    shift = (painted * luma).sum(1, keepdim=True) - (original * luma).sum(1, keepdim=True)
    return (original + shift).clamp_(0, 1)


def centred_means(x: torch.Tensor) -> torch.Tensor:
    """Each picture's channel means of x [B,C,H,W] (fp32), [B,C,1,1]: summed in doubles, as
    native.centred (_frames.c) sums them, so both give the same means wherever the sums are exact
    (frames as decoded, k/255 values, up to 4 M pixels); fp32 sums' last bit depends on their order.
    A picture at a time: torch makes a double copy of what it sums (50 MiB for a 1080p frame, not
    the whole batch's)."""
    return torch.stack([p.double().mean(dim=(1, 2), keepdim=True) for p in x]).float()


def load_stylizer(style: str, *, device: str = "auto", strength: float = 1.0, max_side: int | None = None,
                  precision: str = "auto", keep_colors: bool = False,
                  own_frame: np.ndarray | None = None) -> Stylizer:
    """style: see `parse_style`; files are local paths here (styles.resolve_style fetches URIs).

    precision: auto (contract.PRECISION_AUTO), fp32, bf16, fp16.
    own_frame: a frame of the video whose style vector `strength` < 1 starts from with paintings."""
    parts = parse_style(style)
    dev = _device(device)
    dtype, autocast = _precision(precision, dev, parts)
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 <= strength <= 1.0:
        raise StylebatchError(f"strength must be between 0 and 1, got {strength!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, numbers.Integral)
                                 or max_side < 32):
        raise StylebatchError(f"max_side must be a whole number of pixels, at least 32, got {max_side!r}")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every frame of a video has the same size
    painters = _painters(parts, dev, dtype)
    own = None
    if own_frame is not None and strength < 1.0 and any(p.vector_strength for p in painters):
        from stylebatch.paintings import style_vector

        own = style_vector(own_frame)
    stylizer = Stylizer(painters, name=style_label(parts), device=dev, dtype=dtype, strength=float(strength),
                        max_side=None if max_side is None else int(max_side), keep_colors=bool(keep_colors),
                        own_vector=own, autocast=autocast)
    stylizer.check_reduced = precision == "auto" and autocast is not None
    if networks := _bf16_networks(precision, dev, parts):
        stylizer.bf16_speedup = _slowest_bf16(networks)  # measured already by _precision (cached)
    return stylizer


def _bf16_networks(precision: str, dev: torch.device, parts: list[StylePart]) -> tuple[str, ...]:
    """The kinds of network (WEIGHTS_KIND, BUILTIN_KIND) whose bf16 loading a style of `parts` times
    against fp32 (cpu_bf16_speedup): auto, on the CPU, every part a .pth TransformerNet or one of the
    built-in styles bf16 paints within 46 dB of fp32 (contract.BF16_BUILTIN_STYLES); else () and
    nothing is timed (paintings and the other built-ins stay fp32 on the CPU)."""
    if not (precision == "auto" and dev.type == "cpu" and parts):
        return ()
    if not all(p.kind == WEIGHTS_KIND or (p.kind == BUILTIN_KIND and p.ref in BF16_BUILTIN_STYLES) for p in parts):
        return ()
    return tuple(sorted({p.kind for p in parts}))


def _slowest_bf16(networks: tuple[str, ...]) -> float | None:
    """The least of cpu_bf16_speedup over `networks` (None where nothing could be timed)."""
    found = [cpu_bf16_speedup(n) for n in networks]
    return None if any(f is None for f in found) else min(found)  # type: ignore[type-var]


def time_bf16_ahead(style: str, *, device: str = "auto", precision: str = "auto") -> None:
    """Measure cpu_bf16_speedup now (it is kept for the process) where load_stylizer(style, device=device,
    precision=precision) would: a rank started before preprocess is done does it while it waits at its
    gate, off the run's critical path where preprocess takes longer than the rank's start (a clip
    fetched from blob storage). A style or device that loading would refuse: nothing (loading says so)."""
    from stylebatch.memory import on_gpu

    if device != "cpu" and (device != "auto" or on_gpu(device)):
        return  # a GPU's rank (or one loading will refuse): nothing to time, and CUDA left for it to start
    try:
        parts = parse_style(style)
    except StylebatchError:
        return
    for network in _bf16_networks(precision, torch.device("cpu"), parts):
        cpu_bf16_speedup(network)


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere oneDNN emulates
    it, slower than fp32. Having it is not enough for `--precision auto` (cpu_bf16_pays)."""
    return not this_cpu().flags.isdisjoint({"avx512_bf16", "amx_bf16"})


# The picture (height, width) cpu_bf16_speedup times: big enough that the ratio is a video's (on a Xeon
# without AMX 0.72-0.78 at 192x128 and up against 0.73 at 640x360 in one session, 0.58-0.66 at 192x128
# against 0.59-0.69 at 256x192 in another; at 64x64 fixed costs made it 1.76: smaller pictures lean
# towards bf16), small enough that the trial costs little (0.6 s there, 1.1 s at 256x192). Checked on
# that Xeon only.
BF16_TRIAL_SIZE = (128, 192)


@functools.cache
def cpu_bf16_speedup(network: str = WEIGHTS_KIND) -> float | None:
    """fp32's time over bf16's for a network of the kind given painting one picture on one core of this
    CPU, the best of two alternated calls each after a warm-up: a TransformerNet (WEIGHTS_KIND; fast_nets,
    seeded weights) on BF16_TRIAL_SIZE, or the built-in network (BUILTIN_KIND, lavender-gold: an eighth
    of the TransformerNet's work a pixel, so on twice the size each way; bf16 ran it 1.45x fp32 on a Zen
    4 EPYC where the TransformerNet ran 1.70x, docs/benchmarks.md); None, without timing anything, where
    the CPU has no native bf16 or oneDNN does not convolve it (fast_nets.onednn_bf16); 0 where bf16
    fails there (a warning: auto keeps fp32). Measured once per process and kind, before its threads
    paint (a TransformerNet about 0.6 s on a Xeon without AMX, less where bf16 is fast; the built-in
    0.3 s on the Zen 4). Timed in this thread's CPU time, where the one torch thread computes: a
    core shared with other processes (another rank's start, a codec, another pod) stretches wall time
    by whatever it lost, one call more than another (on a loaded 2-core Zen 4 the wall-time ratio read
    1.3x to 3.5x where the CPU time read 1.7-1.8x), and auto chose by that.

    Native bf16 is not always faster: 3.2x fp32 on a Xeon with AMX, 1.2-1.3x on a Zen 5 EPYC (AVX-512
    BF16), 0.65-0.73x on a Xeon with AVX-512 BF16 and no AMX, where choosing bf16 by the CPU's flags made
    the model 1.5x slower. On one torch thread: with two, small pictures parallelize worse in fp32 than in
    bf16 (1.16-1.34x at 128x192-192x256 on that Xeon, 0.78 at 640x360). fp32 by oneDNN only, not NNPACK's
    Winograd blocks: NNPACK keeps the thread count of its first call for the process's life (fast_nets.
    nnpack_conv), which is the rank's to set. Where Winograd speeds fp32 up (1.31-1.35x on the Zen 5,
    nothing on that Xeon) the ratio overstates bf16's lead by as much; bf16 still led there."""
    if not (cpu_has_native_bf16() and fast_nets.onednn_bf16()):
        return None
    from stylebatch.transformer_net import TransformerNet

    h, w = BF16_TRIAL_SIZE
    if network == BUILTIN_KIND:
        built_in, h, w = _builtin_net(torch.device("cpu"), torch.float32), 2 * h, 2 * w
        condition = torch.zeros(NUM_STYLES)
        condition[style_by_name(DEFAULT_STYLE).index] = 1.0
        net = functools.partial(built_in, style_weights=condition)
    else:
        with torch.random.fork_rng(devices=[]):  # (devices=[]: no GPU's generator, which would start CUDA)
            torch.manual_seed(0)
            net = fast_transformer_net(TransformerNet().eval())
    x = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(0)).permute(0, 3, 1, 2)  # as Stylizer's
    best, warm = {False: float("inf"), True: float("inf")}, set()
    threads, winograd = torch.get_num_threads(), fast_nets.USE_WINOGRAD
    torch.set_num_threads(1)
    fast_nets.USE_WINOGRAD = False
    try:
        with torch.inference_mode():
            for bf16 in (False, True, False, True, False, True):  # the first of each a warm-up
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    start = time.thread_time()
                    net(x)
                    seconds = time.thread_time() - start
                if bf16 in warm:
                    best[bf16] = min(best[bf16], seconds)
                warm.add(bf16)
    except RuntimeError as exc:  # oneDNN said it convolves bf16, and does not
        log.warning("precision auto: a bf16 network failed on this CPU (%s): stylizing in fp32",
                    " ".join(str(exc).split())[:200])
        return 0.0
    finally:
        torch.set_num_threads(threads)
        fast_nets.USE_WINOGRAD = winograd
    return best[False] / best[True]


def cpu_bf16_pays(networks: tuple[str, ...] = (WEIGHTS_KIND,)) -> bool:
    """Whether `--precision auto` paints networks of these kinds in bf16 on this CPU: each of them
    timed at BF16_MIN_SPEEDUP or more (cpu_bf16_speedup)."""
    speedup = _slowest_bf16(networks)
    return speedup is not None and speedup >= BF16_MIN_SPEEDUP


def _precision(precision: str, dev: torch.device, parts: list[StylePart] = ()) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of the weights and activations, dtype to autocast to on the CPU or None).

    auto: fp16 on a GPU (on an H200: lavender-gold 59-60 dB against fp32, a TransformerNet 85 dB; with
    torch's fp16 on the CPU the 26 built-in styles 54-62 dB, a painting 51-58). On the CPU bf16 only
    where every network is a .pth TransformerNet (51 dB on real frames) or one of the 17 built-in styles
    measured at 46 dB or more on every kind of frame (contract.BF16_BUILTIN_STYLES), and bf16 runs
    each of those networks measurably faster than fp32 here (cpu_bf16_pays); the other built-ins
    measured 38-46 dB, a painting 33 dB on fog, so they stay fp32 (bench_precision.py)."""
    if precision not in PRECISIONS:
        raise StylebatchError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "auto":
        networks = _bf16_networks("auto", dev, parts)
        precision = "fp16" if dev.type == "cuda" else ("bf16" if networks and cpu_bf16_pays(networks) else "fp32")
    if problem := precision_problem(precision, "cuda" if dev.type == "cuda" else "cpu"):
        raise StylebatchError(problem)
    if precision == "bf16" and dev.type == "cpu":
        return torch.float32, torch.bfloat16  # fp32 weights, bf16 convolutions (instance norms stay fp32)
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise StylebatchError("this GPU has no bf16 (it came with Ampere): use --precision fp16 or auto")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision], None


def _painters(parts: list[StylePart], dev: torch.device, dtype: torch.dtype) -> list[Painter]:
    """One painter per network: all built-ins share one, all paintings another, each .pth its own.
    On a GPU each also keeps its network in fp32 on the CPU (Painter.exact: flat frames); on the CPU
    the weights are fp32 already (bf16 is autocast)."""
    painters = []

    def painter(net: nn.Module, exact: nn.Module, condition: torch.Tensor | None, share: float,
                vector_strength: bool = False) -> Painter:
        on_cpu = None if condition is None else condition.to(torch.float32)
        twin = None if dev.type == "cpu" else Painter(exact, on_cpu, share, vector_strength)
        return Painter(net, None if condition is None else condition.to(dev, dtype), share, vector_strength, twin)

    builtins = [p for p in parts if p.kind == BUILTIN_KIND]
    if builtins:
        weights = torch.zeros(NUM_STYLES, dtype=torch.float64)
        for p in builtins:
            weights[style_by_name(p.ref).index] += p.weight
        share = float(weights.sum())
        painters.append(painter(_builtin_net(dev, dtype), _net(load_multistyle26, torch.device("cpu"), torch.float32),
                                weights / share, share))
    paintings = [p for p in parts if p.kind == IMAGE_KIND]
    if paintings:
        from stylebatch.arbitrary import load_transformer
        from stylebatch.paintings import read_style_image, style_vector

        share = sum(p.weight for p in paintings)
        vector = sum(style_vector(read_style_image(p.ref)) * (p.weight / share) for p in paintings)
        painters.append(painter(_net(load_transformer, dev, dtype), _net(load_transformer, torch.device("cpu"),
                                                                         torch.float32), vector, share, True))
    for p in parts:
        if p.kind == WEIGHTS_KIND:
            net, exact = _user_net(Path(p.ref).expanduser(), dev, dtype)
            painters.append(painter(net, exact, None, p.weight))
    return painters


class _Unit(nn.Module):
    """A TransformerNet (0..255 in and out) on 0..1 pictures."""

    shift_invariant = True  # its first layer is a convolution and an instance norm (Stylizer)

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 255).div_(255)


def _user_net(path: Path, dev: torch.device, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """A .pth TransformerNet on 0..1 pictures, and the same in fp32 on the CPU. On the CPU it is its
    exact rewrite for inference (fast_nets: 2.2x the frames per CPU-second of the published
    layers, docs/benchmarks.md), fp32 (bf16 is autocast), so both are one network."""
    net = load_transformer_net(path)
    if dev.type == "cpu":
        fast = fast_transformer_net(net).to(dtype=dtype)
        return fast, fast
    return _Unit(copy.deepcopy(net)).to(dev, dtype).to(memory_format=torch.channels_last), _Unit(net)


def _fast_multistyle() -> nn.Module:
    """The 26-style network in its exact rewrite for CPU inference (fast_nets: channels-last, sub-pixel
    upsampling, in-place instance norms: 1.3-2.2x the frames per CPU-second of the plain module)."""
    return fast_multistyle_net(_net(load_multistyle26, torch.device("cpu"), torch.float32))


def _builtin_net(device: torch.device, dtype: torch.dtype) -> nn.Module:
    return _net(_fast_multistyle if device.type == "cpu" else load_multistyle26, device, dtype)


@functools.lru_cache(maxsize=None)
def _net(load, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A built-in network, read from ONNX once per process and copied once per device and precision."""
    if device.type == "cpu" and dtype == torch.float32:
        return load()
    net = copy.deepcopy(_net(load, torch.device("cpu"), torch.float32)).to(device, dtype)
    return net.to(memory_format=torch.channels_last) if device.type == "cuda" else net


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise StylebatchError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise StylebatchError(f"device {device!r} is not available: {why}; use the cpu device instead")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise StylebatchError(f"device {device!r} does not exist: {counted(torch.cuda.device_count(), 'GPU')} visible")
    return torch.device("cuda", index)
