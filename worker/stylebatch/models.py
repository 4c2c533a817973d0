"""Style models behind one call: `load_stylizer(style)(frames)`.

Built-in styles are the 26 of the conditional-instance-norm network (`multistyle.py`); a path
to a pytorch/examples fast_neural_style state dict loads a `TransformerNet` instead.
Frames go in and come out as uint8 [B, H, W, 3] RGB.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stylebatch.errors import StylebatchError
from stylebatch.multistyle import NUM_STYLES, load_multistyle26
from stylebatch.transformer_net import load_transformer_net


@dataclass(frozen=True)
class Style:
    name: str
    index: int
    description: str


# The weights came without names. These describe what each style does to a photo
# (rendered on test photos and a film frame), not which painting it was trained on.
_STYLES = [Style(name, index, description) for index, (name, description) in enumerate([
    ("pastel-gold", "flat pale sky blue and golden yellow with soft dark shadows"),
    ("ink-and-lemon", "thick black brush outlines over flat lemon yellow and white"),
    ("ink-wash", "black ink lines over pale peach and grey washes, nearly monochrome"),
    ("tangled-ribbons", "dense tangle of red, blue, orange and black ribbons; abstract, little of the photo survives"),
    ("crimson-and-gold", "flat crimson, golden yellow and sky blue areas with crisp edges"),
    ("warm-brushwork", "orange, red and lilac brushstrokes with dark contours"),
    ("navy-honeycomb", "dark navy texture pocked with round black cells"),
    ("primary-colors", "saturated yellow, red and royal blue on black, broad smooth shapes"),
    ("pastel-sketch", "white paper with pink, cyan and yellow pencil-like strokes"),
    ("teal-beadwork", "teal and white bead pattern with red patches; the photo becomes a pattern"),
    ("terracotta", "earthy brown and burnt orange oil-paint look that keeps detail"),
    ("ink-on-parchment", "brown ink hatching on cream paper with golden fills"),
    ("lavender-gold", "soft lavender and golden yellow brushwork; calm and steady on video"),
    ("lime-stained-glass", "lime green, teal and red panes with dark outlines"),
    ("ice-wash", "pale icy blue and peach, soft and low contrast"),
    ("pastel-tiles", "white and pastel tile fragments outlined in thin dark lines"),
    ("blue-streaks", "blue field with diagonal olive and orange streaks"),
    ("brick-grid", "red, orange and blue rectangles; the photo turns into a block pattern"),
    ("sepia-woodcut", "beige and brown wood-grain lines like a sepia woodcut"),
    ("blue-gold-swirls", "deep blue and gold swirling impasto strokes; busy texture"),
    ("red-ember", "everything in reds with dark blue accents"),
    ("cut-paper", "flat cut-paper shapes in sky blue, black, cream, pink and yellow"),
    ("cream-crackle", "cream cells with black crackle veins, lavender and red accents"),
    ("green-nocturne", "dim green-black with pale glowing highlights, soft"),
    ("indigo-on-cream", "indigo blue brush texture on cream, like blue-and-white ceramics"),
    ("copper-mosaic", "copper brown and slate blue mosaic texture"),
])]
assert len(_STYLES) == NUM_STYLES
_BY_NAME = {s.name: s for s in _STYLES}

DEFAULT_STYLE = "lavender-gold"
MIN_SIDE = 16  # below this the net's reflection pads run out of pixels


def list_styles() -> list[Style]:
    """The 26 built-in styles in index order."""
    return list(_STYLES)


class Stylizer:
    """Repaints batches of uint8 RGB frames [B, H, W, 3]; output has the same shape."""

    def __init__(self, net: nn.Module, *, name: str, device: torch.device, dtype: torch.dtype,
                 style_weights: torch.Tensor | None = None, strength: float = 1.0,
                 max_side: int | None = None) -> None:
        self.net, self.name, self.device, self.dtype = net, name, device, dtype
        self.style_weights, self.strength, self.max_side = style_weights, strength, max_side

    def _stylize(self, x: torch.Tensor) -> torch.Tensor:
        """0..1 in, 0..1 out, any H and W."""
        h, w = x.shape[-2:]
        # the net halves the size twice: reflect-pad to a multiple of 4, crop back after
        x = F.pad(x, [0, -w % 4, 0, -h % 4], mode="reflect") if h % 4 or w % 4 else x
        if self.style_weights is None:  # fast_neural_style works in 0..255
            y = self.net(x * 255) / 255
        else:
            y = self.net(x, self.style_weights)
        return y[..., :h, :w]

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
                or frames.shape[-1] != 3:
            got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
            raise StylebatchError(f"frames must be a uint8 array [batch, height, width, 3], got {got}")
        b, h, w, _ = frames.shape
        if min(h, w) < MIN_SIDE:
            raise StylebatchError(f"frames of {w}x{h} are too small to stylize; both sides need {MIN_SIDE}px")
        if b == 0:
            return frames.copy()
        with torch.inference_mode():
            host = torch.from_numpy(np.ascontiguousarray(frames))
            if self.device.type == "cuda":
                host = host.pin_memory()
            # NHWC permuted to NCHW is exactly channels_last, which the GPU wants; the CPU wants plain NCHW
            x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).to(self.dtype).div_(255)
            if self.device.type == "cpu":
                x = x.contiguous()
            if self.max_side and max(h, w) > self.max_side:
                scale = (self.max_side // 4 * 4) / max(h, w)
                small = (max(MIN_SIDE, 4 * round(h * scale / 4)), max(MIN_SIDE, 4 * round(w * scale / 4)))
                y = self._stylize(F.interpolate(x, size=small, mode="area"))
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            else:
                y = self._stylize(x)
            if self.strength < 1.0:
                y = torch.lerp(x, y, self.strength)
            out = y.mul_(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
            return out.cpu().numpy()


def load_stylizer(style: str, *, device: str = "auto", strength: float = 1.0, max_side: int | None = None,
                  half: bool | None = None) -> Stylizer:
    """style: a built-in name, an index "0".."25", a blend "name:0.5,other:0.5", or a path to a .pth file."""
    if not isinstance(style, str) or not style.strip():
        raise StylebatchError(f"no style given ({style!r}): run `stylebatch styles` to list the built-in styles")
    dev = _device(device)
    half = dev.type == "cuda" if half is None else half
    if half and dev.type != "cuda":
        raise StylebatchError("half precision needs a CUDA device; leave half unset on cpu")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 <= strength <= 1.0:
        raise StylebatchError(f"strength must be between 0 and 1, got {strength!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, numbers.Integral)
                                 or max_side < 32):
        raise StylebatchError(f"max_side must be a whole number of pixels, at least 32, got {max_side!r}")
    dtype = torch.float16 if half else torch.float32
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every frame of a video has the same size
    options = dict(device=dev, dtype=dtype, strength=float(strength),
                   max_side=None if max_side is None else int(max_side))

    blend = _builtin_blend(style)
    if blend is not None:
        name, weights = blend
        return Stylizer(_builtin_net(dev, dtype), name=name, style_weights=weights.to(dev, dtype), **options)
    path = Path(style).expanduser()
    if path.exists() or path.suffix in (".pth", ".pt", ".model") or "/" in style:
        net = load_transformer_net(path).to(dev, dtype)
        if dev.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        return Stylizer(net, name=path.stem, **options)
    raise StylebatchError(f"unknown style {style!r}: run `stylebatch styles` to list the built-in styles, "
                          "or give the path of a fast_neural_style .pth file")


def builtin_style_name(style: str) -> str | None:
    """The resolved name of a built-in style or blend (e.g. "3" -> its name), None for a weights file."""
    blend = _builtin_blend(style)
    return None if blend is None else blend[0]


def _builtin_blend(style: str) -> tuple[str, torch.Tensor] | None:
    """Display name and 26 style weights summing to 1, or None when `style` mentions no built-in."""
    parts = [p.partition(":") for p in style.split(",")]
    picked = [(_builtin(token), token, weight) for token, sep, weight in parts]
    if all(s is None for s, _, _ in picked):
        return None
    weights = torch.zeros(NUM_STYLES, dtype=torch.float64)
    for s, token, text in picked:
        if s is None:
            raise StylebatchError(f"unknown style {token.strip()!r} in {style!r}: run `stylebatch styles` "
                                  "to list the built-in styles (blends take built-ins only)")
        try:
            weight = float(text) if text.strip() else 1.0
        except ValueError:
            raise StylebatchError(f"bad weight {text!r} for {s.name} in {style!r}; write e.g. "
                                  f"{_STYLES[0].name}:0.5,{_STYLES[1].name}:0.5") from None
        if not math.isfinite(weight) or weight < 0:
            raise StylebatchError(f"style weights must be zero or positive, got {text!r} for {s.name}")
        weights[s.index] += weight
    if weights.sum() <= 0:
        raise StylebatchError(f"style weights in {style!r} are all zero")
    weights /= weights.sum()
    used = weights.nonzero().flatten().tolist()
    name = (_STYLES[used[0]].name if len(used) == 1
            else ",".join(f"{_STYLES[i].name}:{weights[i].item():.3g}" for i in used))
    return name, weights.float()


def _builtin(token: str) -> Style | None:
    token = token.strip().lower()
    if token.isdigit() and int(token) < NUM_STYLES:
        return _STYLES[int(token)]
    return _BY_NAME.get(token)


@functools.lru_cache(maxsize=None)
def _builtin_net(device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The built-in net, read from ONNX once per process and copied once per device and precision."""
    if device.type == "cpu" and dtype == torch.float32:
        return load_multistyle26()
    net = copy.deepcopy(_builtin_net(torch.device("cpu"), torch.float32)).to(device, dtype)
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
        raise StylebatchError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    return torch.device("cuda", index)
