"""The style networks rewritten for inference: the same function, fewer operations.

`fast_multistyle_net` does the same for the built-in 26-style network (multistyle.py): channels-last,
its two upsampling layers as sub-pixel convolutions, and instance norms that compute the channel sums
as matrix products and apply the style's scale and shift (and the ReLU) in place.

`fast_transformer_net` turns a fast_neural_style TransformerNet into `FastTransformerNet`: its
upsampling layers become sub-pixel convolutions (`UpsampleConv2x`), the biases of convolutions that
an instance norm follows are dropped (the norm subtracts the channel mean, so they cancel exactly),
the 0..255 scaling of input and output is folded into the first and last convolution, and it works
channels-last (oneDNN runs the wide, shallow full-resolution convolutions about 2x faster that way
on CPU). Each rewrite is exact up to float rounding: tests/test_models.py checks the PSNR.

Nearest 2x upsample, reflection pad 1 and a 3x3 convolution as a sub-pixel convolution: every
output pixel of "upsample by 2, then 3x3 conv" sees only 2x2 distinct input pixels, so the 3x3
taps that land on the same low-resolution pixel can be summed beforehand. The layer equals one 2x2
convolution on the low-resolution input (edge-padded by 1) with 4x the output channels, one group
per output phase (row parity a, column parity b), whose outputs are interleaved: 16 instead of 36
multiply-adds per input channel, output channel and low-resolution pixel (2.25x fewer), and the 4x
larger upsampled input is never made. Reflection padding of the upsampled picture repeats its edge
pixel, which is edge (replicate) padding of the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Which of the 3 kernel rows (or columns) fall on each of the 2 input rows a phase reads.
_COMBINE = torch.tensor([[[1., 0., 0.], [0., 1., 1.]],   # even output rows: input rows i-1, i
                         [[1., 1., 0.], [0., 0., 1.]]])  # odd output rows: input rows i, i+1


def subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """[Cout, Cin, 3, 3] -> [4 * Cout, Cin, 2, 2], phase-major (phase = 2 * a + b)."""
    c = _COMBINE.to(weight)
    phases = [torch.einsum("rk,oikl,sl->oirs", c[a], weight, c[b]) for a in (0, 1) for b in (0, 1)]
    return torch.cat(phases)


class UpsampleConv2x(nn.Module):
    """forward(x) == conv2d(reflection_pad(interpolate(x, 2, "nearest"), 1), weight, bias), channels-last out."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_channels = weight.shape[0]
        self.weight = nn.Parameter(subpixel_weight(weight.detach()), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().repeat(4), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = F.conv2d(F.pad(x, [1, 1, 1, 1], mode="replicate"), self.weight, self.bias)  # [B, 4C, h+1, w+1]
        y = y.view(b, 4, self.out_channels, h + 1, w + 1)
        # interleaved into a channels-last picture (memory order b, row, a, column, c, channel)
        out = y.new_empty(b, h, 2, w, 2, self.out_channels).permute(0, 5, 1, 2, 3, 4)
        for a in (0, 1):
            for c in (0, 1):
                out[:, :, :, a, :, c] = y[:, 2 * a + c, :, a:a + h, c:c + w]
        return out.reshape(b, self.out_channels, 2 * h, 2 * w)


def instance_norm_(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
    """Instance norm (and ReLU) of a channels-last x, in place. The channel sums are two matrix
    products: F.instance_norm copies a channels-last tensor to contiguous and back, and var_mean's
    Welford loop runs at a fraction of the speed."""
    b, c, h, w = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view: channels-last is [B, H*W, C]
    ones = x.new_full((b, 1, h * w), 1.0 / (h * w))
    mean = torch.bmm(ones, pixels)
    var = torch.bmm(ones, pixels * pixels).sub_(mean * mean).clamp_(min=0)
    scale = weight * (var + 1e-5).rsqrt_()  # [B, 1, C]
    pixels.mul_(scale).add_(bias - mean * scale)
    return x.relu_() if relu else x


def instance_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
    """Instance norm (and ReLU): in place on fp32 (`instance_norm_`), else F.instance_norm, whose
    statistics stay in fp32 under autocast."""
    if x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
        return instance_norm_(x, weight, bias, relu)
    y = F.instance_norm(x, weight=weight.to(x.dtype), bias=bias.to(x.dtype), eps=1e-5)
    return y.relu_() if relu else y


class FastTransformerNet(nn.Module):
    """A TransformerNet's function on 0..1 pictures: [B,3,H,W] in 0..1 -> [B,3,H,W] (H, W multiples of 4)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        keep = lambda t: nn.Parameter(t.detach().clone(), requires_grad=False)  # noqa: E731
        blocks = (net.res1, net.res2, net.res3, net.res4, net.res5)
        self.conv1 = keep(net.conv1.conv2d.weight * 255)  # input 0..1 instead of 0..255
        self.down = nn.ParameterList([keep(net.conv2.conv2d.weight), keep(net.conv3.conv2d.weight)])
        self.res = nn.ParameterList([keep(c.conv2d.weight) for r in blocks for c in (r.conv1, r.conv2)])
        self.up = nn.ModuleList([UpsampleConv2x(net.deconv1.conv2d.weight), UpsampleConv2x(net.deconv2.conv2d.weight)])
        self.out_w, self.out_b = keep(net.deconv3.conv2d.weight / 255), keep(net.deconv3.conv2d.bias / 255)
        norms = [net.in1, net.in2, net.in3] + [n for r in blocks for n in (r.in1, r.in2)] + [net.in4, net.in5]
        self.norms = nn.ParameterList([keep(t) for n in norms for t in (n.weight, n.bias)])

    def _norm(self, i: int, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
        return instance_norm(x, self.norms[2 * i], self.norms[2 * i + 1], relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        y = self._norm(0, F.conv2d(F.pad(x, [4] * 4, mode="reflect"), self.conv1))
        for i, w in enumerate(self.down, start=1):
            y = self._norm(i, F.conv2d(F.pad(y, [1] * 4, mode="reflect"), w, stride=2))
        for i in range(0, len(self.res), 2):
            z = self._norm(3 + i, F.conv2d(F.pad(y, [1] * 4, mode="reflect"), self.res[i]))
            y = self._norm(4 + i, F.conv2d(F.pad(z, [1] * 4, mode="reflect"), self.res[i + 1]), relu=False).add_(y)
        for i, up in enumerate(self.up, start=13):
            y = self._norm(i, up(y))
        return F.conv2d(F.pad(y, [4] * 4, mode="reflect"), self.out_w, self.out_b)


class FastMultiStyleNet(nn.Module):
    """A MultiStyleNet's function: (image [B,3,H,W] in 0..1, H and W multiples of 4; style_weights [26])
    -> [B,3,H,W] in 0..1, channels-last."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        keep = lambda t: nn.Parameter(t.detach().clone(), requires_grad=False)  # noqa: E731
        layers = [*net.contract, *(c for block in net.res for c in block), *net.expand]
        self.weights = nn.ParameterList([keep(l.w) for l in layers[:-3]] + [keep(layers[-1].w)])
        self.up = nn.ModuleList([UpsampleConv2x(l.w) for l in layers[-3:-1]])
        self.gamma = nn.ParameterList([keep(l.norm.gamma) for l in layers])
        self.beta = nn.ParameterList([keep(l.norm.beta) for l in layers])

    def _norm(self, i: int, x: torch.Tensor, style: torch.Tensor, relu: bool = True) -> torch.Tensor:
        return instance_norm(x, style @ self.gamma[i], style @ self.beta[i], relu)

    def _conv(self, i: int, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        w = self.weights[i]
        return F.conv2d(F.pad(x, [w.shape[-1] // 2] * 4, mode="reflect"), w, stride=stride)

    def forward(self, image: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        s = style_weights.to(self.gamma[0].dtype)
        y = self._norm(0, self._conv(0, image.contiguous(memory_format=torch.channels_last)), s)
        y = self._norm(1, self._conv(1, y, stride=2), s)
        y = self._norm(2, self._conv(2, y, stride=2), s)
        for i in range(3, 15, 2):
            z = self._norm(i, self._conv(i, y), s)
            y = self._norm(i + 1, self._conv(i + 1, z), s, relu=False).add_(y)
        for i, up in enumerate(self.up, start=15):
            y = self._norm(i, up(y), s)
        return torch.sigmoid_(self._norm(17, self._conv(15, y), s, relu=False))


def fast_multistyle_net(net: nn.Module) -> FastMultiStyleNet:
    """The inference form of the built-in MultiStyleNet (eval mode, no gradients)."""
    return FastMultiStyleNet(net).eval()


def fast_transformer_net(net: nn.Module) -> FastTransformerNet:
    """The inference form of a loaded TransformerNet (eval mode, no gradients), channels-last."""
    return FastTransformerNet(net).eval().to(memory_format=torch.channels_last)
