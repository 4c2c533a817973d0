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

from stylebatch.contract import DEFAULT_STYLE, PRECISIONS, STYLE_NAMES, is_style_file, split_style_term  # noqa: F401 - DEFAULT_STYLE: part of this API
from stylebatch.errors import BadInput, StylebatchError
from stylebatch.fast_nets import fast_transformer_net
from stylebatch.multistyle import NUM_STYLES, load_multistyle26
from stylebatch.paintings import is_image_name
from stylebatch.transformer_net import load_transformer_net


@dataclass(frozen=True)
class Style:
    name: str
    index: int
    description: str


# The weights came without names. These describe what each style does to a photo
# (rendered on test photos and a film frame), not which painting it was trained on.
_DESCRIPTIONS = (  # in the order of contract.STYLE_NAMES
    "flat pale sky blue and golden yellow with soft dark shadows",
    "thick black brush outlines over flat lemon yellow and white",
    "black ink lines over pale peach and grey washes, nearly monochrome",
    "dense tangle of red, blue, orange and black ribbons; abstract, little of the photo survives",
    "flat crimson, golden yellow and sky blue areas with crisp edges",
    "orange, red and lilac brushstrokes with dark contours",
    "dark navy texture pocked with round black cells",
    "saturated yellow, red and royal blue on black, broad smooth shapes",
    "white paper with pink, cyan and yellow pencil-like strokes",
    "teal and white bead pattern with red patches; the photo becomes a pattern",
    "earthy brown and burnt orange oil-paint look that keeps detail",
    "brown ink hatching on cream paper with golden fills",
    "soft lavender and golden yellow brushwork; calm and steady on video",
    "lime green, teal and red panes with dark outlines",
    "pale icy blue and peach, soft and low contrast",
    "white and pastel tile fragments outlined in thin dark lines",
    "blue field with diagonal olive and orange streaks",
    "red, orange and blue rectangles; the photo turns into a block pattern",
    "beige and brown wood-grain lines like a sepia woodcut",
    "deep blue and gold swirling impasto strokes; busy texture",
    "everything in reds with dark blue accents",
    "flat cut-paper shapes in sky blue, black, cream, pink and yellow",
    "cream cells with black crackle veins, lavender and red accents",
    "dim green-black with pale glowing highlights, soft",
    "indigo blue brush texture on cream, like blue-and-white ceramics",
    "copper brown and slate blue mosaic texture",
)
_STYLES = [Style(name, index, description)
           for index, (name, description) in enumerate(zip(STYLE_NAMES, _DESCRIPTIONS, strict=True))]
assert len(_STYLES) == NUM_STYLES
_BY_NAME = {s.name: s for s in _STYLES}

MIN_SIDE = 16  # below this the net's reflection pads run out of pixels


def list_styles() -> list[Style]:
    """The 26 built-in styles in index order."""
    return list(_STYLES)


IMAGE_KIND, WEIGHTS_KIND, BUILTIN_KIND = "painting", "weights", "builtin"


@dataclass(frozen=True)
class StylePart:
    """One term of a --style blend: a built-in (by name), a painting or a .pth file (path or URI)."""

    kind: str
    ref: str
    weight: float  # the parts of a blend sum to 1


def parse_style(style: str) -> list[StylePart]:
    """"lavender-gold", "3", "starry.jpg", "az://styles/candy.pth", or a blend of any of them:
    "starry.jpg:0.7,lavender-gold:0.3" (weights are relative; a missing weight is 1)."""
    if not isinstance(style, str) or not style.strip():
        raise BadInput(f"no style given ({style!r}): run `stylebatch styles` to list the built-in styles")
    parts = []
    for token in style.split(","):
        ref, text = _split_weight(token.strip())
        builtin = _builtin(ref)
        if builtin is not None:
            kind, ref = BUILTIN_KIND, builtin.name
        elif is_image_name(ref):
            kind = IMAGE_KIND
        elif is_style_file(ref) or (ref and Path(ref).expanduser().exists()):
            kind = WEIGHTS_KIND
        else:
            where = f" in {style!r}" if "," in style else ""
            raise BadInput(f"unknown style {ref!r}{where}: run `stylebatch styles` to list the built-in styles, "
                           "or give a painting (.jpg, .png, .webp) or a fast_neural_style .pth file")
        try:
            weight = float(text) if text.strip() else 1.0
        except ValueError:
            raise BadInput(f"bad weight {text!r} for {ref} in {style!r}; write e.g. "
                           f"{_STYLES[0].name}:0.5,{_STYLES[1].name}:0.5") from None
        if not math.isfinite(weight) or weight < 0:
            raise BadInput(f"style weights must be zero or positive, got {text!r} for {ref}")
        parts.append(StylePart(kind, ref, weight))
    total = sum(p.weight for p in parts)
    if total <= 0:
        raise BadInput(f"style weights in {style!r} are all zero")
    return [StylePart(p.kind, p.ref, p.weight / total) for p in parts if p.weight > 0]


def _split_weight(token: str) -> tuple[str, str]:
    """"name:0.5" -> ("name", "0.5"), and "name:lots" too when name is a built-in (a bad weight)."""
    head, sep, tail = token.rpartition(":")
    if sep and _builtin(head) is not None:
        return head.strip(), tail
    return split_style_term(token)


def style_label(parts: list[StylePart]) -> str:
    """How a style is shown: "lavender-gold", "starry", "starry:0.7,lavender-gold:0.3"."""
    def name(p: StylePart) -> str:
        return p.ref if p.kind == BUILTIN_KIND else Path(p.ref.split("?")[0]).stem
    return name(parts[0]) if len(parts) == 1 else ",".join(f"{name(p)}:{p.weight:.3g}" for p in parts)


@dataclass
class Painter:
    """One network's share of the picture. `condition`: the style weights or style vector it takes
    (None for a TransformerNet, which works in 0..255)."""

    net: nn.Module  # 0..1 pictures in and out
    condition: torch.Tensor | None
    share: float
    vector_strength: bool = False  # strength mixes style vectors (paintings), not pictures


class Stylizer:
    """Repaints batches of uint8 RGB frames [B, H, W, 3]; output has the same shape.

    A blend across networks (a painting with a built-in, or a .pth with anything) runs each network
    and mixes their pictures by weight; blends within the built-ins or within the paintings mix in
    the network's own style space (one pass). `keep_colors` keeps each frame's own colours: only the
    luminance of the painted picture is used. With paintings, `strength` below 1 moves the style
    vector towards the video's own (from `own_frame`, or the first frame it is given).
    """

    def __init__(self, painters: list[Painter], *, name: str, device: torch.device, dtype: torch.dtype,
                 strength: float = 1.0, max_side: int | None = None, keep_colors: bool = False,
                 own_vector: torch.Tensor | None = None, autocast: torch.dtype | None = None) -> None:
        self.painters, self.name, self.device, self.dtype = painters, name, device, dtype
        self.autocast = autocast
        self.strength, self.max_side, self.keep_colors = strength, max_side, keep_colors
        self.own_vector = own_vector

    @property
    def net(self) -> nn.Module:
        return self.painters[0].net

    def _condition(self, p: Painter) -> torch.Tensor | None:
        if not p.vector_strength or self.strength >= 1.0:
            return p.condition
        return torch.lerp(self.own_vector.to(p.condition), p.condition, self.strength)

    def _paint(self, p: Painter, x: torch.Tensor) -> torch.Tensor:
        """One network's picture: 0..1 in, 0..1 out, any H and W."""
        h, w = x.shape[-2:]
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
        if min(h, w) < MIN_SIDE:
            raise StylebatchError(f"frames of {w}x{h} are too small to stylize; both sides need {MIN_SIDE}px")
        if b == 0:
            return frames.copy()
        if self.own_vector is None and self.strength < 1.0 and any(p.vector_strength for p in self.painters):
            from stylebatch.paintings import style_vector

            self.own_vector = style_vector(frames[0])
        with torch.inference_mode(), torch.autocast("cpu", dtype=self.autocast or torch.bfloat16,
                                                    enabled=self.autocast is not None):
            host = torch.from_numpy(np.ascontiguousarray(frames) if frames.flags.writeable else frames.copy())
            if self.device.type == "cuda":
                host = host.pin_memory()
            # NHWC permuted to NCHW is exactly channels_last, which the GPU wants; the CPU wants plain NCHW
            x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).to(self.dtype).div_(255)
            if self.device.type == "cpu":
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
                y = painted.mul_(p.share) if y is None else y.add_(painted, alpha=p.share)
            if self.keep_colors:
                y = keep_colors(y, x)
            y = y.float()
            out = y.mul_(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
            return out.cpu().numpy()


_LUMA = (0.299, 0.587, 0.114)  # BT.601, as JPEG's YCbCr


def keep_colors(painted: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """The painted picture's luminance with the original's chroma (both [B,3,H,W] in 0..1)."""
    luma = torch.tensor(_LUMA, device=painted.device, dtype=painted.dtype).view(1, 3, 1, 1)
    shift = (painted * luma).sum(1, keepdim=True) - (original * luma).sum(1, keepdim=True)
    return (original + shift).clamp_(0, 1)


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) frames are stylized at: their own, or scaled so the long side is max_side
    rounded down to a multiple of 4 (each side a multiple of 4, at least MIN_SIDE)."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    scale = (max_side // 4 * 4) / max(height, width)
    return max(MIN_SIDE, 4 * round(height * scale / 4)), max(MIN_SIDE, 4 * round(width * scale / 4))


def load_stylizer(style: str, *, device: str = "auto", strength: float = 1.0, max_side: int | None = None,
                  precision: str = "auto", keep_colors: bool = False,
                  own_frame: np.ndarray | None = None) -> Stylizer:
    """style: see `parse_style`; files are local paths here (stylize.resolve_style fetches URIs).

    precision: auto (fp16 on a GPU; bf16 on a CPU with native bf16, else fp32), fp32, bf16, fp16.
    own_frame: a frame of the video whose style vector `strength` < 1 starts from with paintings."""
    parts = parse_style(style)
    dev = _device(device)
    dtype, autocast = _precision(precision, dev)
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
    return Stylizer(painters, name=style_label(parts), device=dev, dtype=dtype, strength=float(strength),
                    max_side=None if max_side is None else int(max_side), keep_colors=bool(keep_colors),
                    own_vector=own, autocast=autocast)


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), where it is about twice as
    fast as fp32; elsewhere oneDNN emulates it, slower than fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))


def _precision(precision: str, dev: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of the weights and activations, dtype to autocast to on the CPU or None)."""
    if precision not in PRECISIONS:
        raise StylebatchError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "fp16" if dev.type == "cuda" else ("bf16" if cpu_has_native_bf16() else "fp32")
    if precision == "fp16" and dev.type != "cuda":
        raise StylebatchError("fp16 needs a CUDA device; on a CPU use --precision fp32 or bf16")
    if precision == "bf16" and dev.type == "cpu":
        return torch.float32, torch.bfloat16  # fp32 weights, bf16 convolutions (instance norms stay fp32)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision], None


def _painters(parts: list[StylePart], dev: torch.device, dtype: torch.dtype) -> list[Painter]:
    """One painter per network: all built-ins share one, all paintings another, each .pth its own."""
    painters = []
    builtins = [p for p in parts if p.kind == BUILTIN_KIND]
    if builtins:
        weights = torch.zeros(NUM_STYLES, dtype=torch.float64)
        for p in builtins:
            weights[_BY_NAME[p.ref].index] += p.weight
        share = float(weights.sum())
        painters.append(Painter(_net(load_multistyle26, dev, dtype), (weights / share).to(dev, dtype), share))
    paintings = [p for p in parts if p.kind == IMAGE_KIND]
    if paintings:
        from stylebatch.arbitrary import load_transformer
        from stylebatch.paintings import read_style_image, style_vector

        share = sum(p.weight for p in paintings)
        vector = sum(style_vector(read_style_image(p.ref)) * (p.weight / share) for p in paintings)
        painters.append(Painter(_net(load_transformer, dev, dtype), vector.to(dev, dtype), share, True))
    for p in parts:
        if p.kind == WEIGHTS_KIND:
            painters.append(Painter(_user_net(Path(p.ref).expanduser(), dev, dtype), None, p.weight))
    return painters


class _Unit(nn.Module):
    """A TransformerNet (0..255 in and out) on 0..1 pictures."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 255).div_(255)


def _user_net(path: Path, dev: torch.device, dtype: torch.dtype) -> nn.Module:
    """A .pth TransformerNet on 0..1 pictures; on the CPU in its exact rewrite for inference
    (fast_nets: sub-pixel upsampling, folded scaling, channels-last: about 1.5x the frames/s)."""
    net = load_transformer_net(path)
    if dev.type == "cpu":
        return fast_transformer_net(net).to(dtype=dtype)
    return _Unit(net).to(dev, dtype).to(memory_format=torch.channels_last)


def _builtin(token: str) -> Style | None:
    token = token.strip().lower()
    if token.isdigit() and int(token) < NUM_STYLES:
        return _STYLES[int(token)]
    return _BY_NAME.get(token)


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
        raise StylebatchError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    return torch.device("cuda", index)
