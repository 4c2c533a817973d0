"""User style weights: the TransformerNet of pytorch/examples `fast_neural_style` (Johnson et al.).

The class is the one in `neural_style/transformer_net.py`, so its `.pth` / `.model` state dicts
(mosaic, candy, rain_princess, udnie, or your own training run) load unchanged.
Input and output are images in 0..255.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from stylebatch.errors import StylebatchError
from stylebatch.weights_file import check_archive, check_finite, load_state


class TransformerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # Initial convolution layers
        self.conv1 = ConvLayer(3, 32, kernel_size=9, stride=1)
        self.in1 = nn.InstanceNorm2d(32, affine=True)
        self.conv2 = ConvLayer(32, 64, kernel_size=3, stride=2)
        self.in2 = nn.InstanceNorm2d(64, affine=True)
        self.conv3 = ConvLayer(64, 128, kernel_size=3, stride=2)
        self.in3 = nn.InstanceNorm2d(128, affine=True)
        # Residual layers
        self.res1 = ResidualBlock(128)
        self.res2 = ResidualBlock(128)
        self.res3 = ResidualBlock(128)
        self.res4 = ResidualBlock(128)
        self.res5 = ResidualBlock(128)
        # Upsampling Layers
        self.deconv1 = UpsampleConvLayer(128, 64, kernel_size=3, stride=1, upsample=2)
        self.in4 = nn.InstanceNorm2d(64, affine=True)
        self.deconv2 = UpsampleConvLayer(64, 32, kernel_size=3, stride=1, upsample=2)
        self.in5 = nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, kernel_size=9, stride=1)
        # Non-linearities
        self.relu = nn.ReLU()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.in1(self.conv1(X)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res1(y)
        y = self.res2(y)
        y = self.res3(y)
        y = self.res4(y)
        y = self.res5(y)
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        y = self.deconv3(y)
        return y


class ConvLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        reflection_padding = kernel_size // 2
        self.reflection_pad = nn.ReflectionPad2d(reflection_padding)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.reflection_pad(x)
        out = self.conv2d(out)
        return out


class ResidualBlock(nn.Module):
    """introduced in: https://arxiv.org/abs/1512.03385"""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.in1(self.conv1(x)))
        out = self.in2(self.conv2(out))
        out = out + residual
        return out


class UpsampleConvLayer(nn.Module):
    """Upsample (nearest) then convolve: fewer checkerboard artifacts than ConvTranspose2d.
    ref: http://distill.pub/2016/deconv-checkerboard/
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 upsample: int | None = None) -> None:
        super().__init__()
        self.upsample = upsample
        reflection_padding = kernel_size // 2
        self.reflection_pad = nn.ReflectionPad2d(reflection_padding)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = x
        if self.upsample:
            x_in = nn.functional.interpolate(x_in, mode="nearest", scale_factor=self.upsample)
        out = self.reflection_pad(x_in)
        out = self.conv2d(out)
        return out


# InstanceNorm2d of torch < 0.4 saved running stats that today's affine-only layer doesn't have
_DEPRECATED_KEY = re.compile(r"in\d+\.running_(mean|var)$")


def load_transformer_net(path: str | Path) -> TransformerNet:
    """Load a fast_neural_style state dict; any unreadable or foreign file is a one-line StylebatchError
    naming it as the user gave it (a blob's local copy by the blob: styles.shown_style_file)."""
    from stylebatch.styles import shown_style_file, style_file

    path = style_file(str(path)).local_path()  # "style file not found", "... is a folder, not a file"
    shown = shown_style_file(path)  # a blob's local copy is named as the blob
    check_archive(path, f"style file {shown}")  # before torch unpacks anything: a zip bomb costs nothing
    state = load_state(path, f"style file {shown}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StylebatchError(f"style file {shown} does not hold a state dict of tensors")
    state = {k: v for k, v in state.items() if not _DEPRECATED_KEY.search(str(k))}
    net = TransformerNet()
    want = {k: v.shape for k, v in net.state_dict().items()}
    missing = sorted(want.keys() - state.keys())
    unexpected = sorted(state.keys() - want.keys(), key=str)
    wrong = sorted(k for k in want.keys() & state.keys() if state[k].shape != want[k])
    if missing or unexpected or wrong:
        first = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                 else f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(want[wrong[0]])}")
        raise StylebatchError(
            f"style file {shown} is not a fast_neural_style TransformerNet state dict "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped keys; {first})")
    check_finite(state, shown)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval().requires_grad_(False)
