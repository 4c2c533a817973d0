"""The style networks rewritten for inference: the same function, fewer operations, less memory.

`fast_multistyle_net` does so for the built-in 26-style network (multistyle.py): channels-last,
its two upsampling layers as sub-pixel convolutions, and instance norms that compute the channel
statistics of a shifted picture and apply the style's scale and shift (and the ReLU) in place.

`fast_transformer_net` turns a fast_neural_style TransformerNet into `FastTransformerNet`: its
upsampling layers become sub-pixel convolutions (`UpsampleConv2x`), the biases of convolutions that
an instance norm follows are dropped (the norm subtracts the channel mean, so they cancel exactly),
the 0..255 scaling of input and output is folded into the first and last convolution, and it works
channels-last (oneDNN runs the wide, shallow full-resolution convolutions about 2x faster that way
on CPU), its last layer (32 -> 3 channels, 9x9) as a `RowSplitConv`. Each rewrite is exact up to
float rounding: tests/test_models.py checks the PSNR.

What both networks share, so that a frame's activations are about two full-size pictures at their
peak (tests/test_models.py measures it) and no pass over memory is wasted:
- `padded_conv`: reflection (or edge) padding without the padded copy of a large picture; the
  copies and strips it does make, in C where pip built `_padding.c` (native.row_strip: one pass);
- `UpsampleConv2x` works a band of rows at a time, so its 4x-channel output is never whole (its
  four phases interleaved in C where it was built: native.interleave);
- `instance_norm_` works in place: in C where pip built `_instance_norm.c` (native: one call a
  picture, one vectorised pass for the statistics and one for the normalisation, the residual
  blocks' sum in the same pass), else in torch's operations, small pictures whole, large ones in
  cache-sized steps.

In bf16 on the CPU (`--precision bf16`, or auto with a .pth where bf16 measured faster than fp32:
models.cpu_bf16_speedup; the CPU's bf16 autocast around the network) both networks run in bf16
themselves (`in_own_precision`): the pictures stay bf16 from layer to layer, at half fp32's memory, and each norm works on its bf16
picture in place with fp32 statistics. Under autocast each convolution rounded an fp32 picture to a
new bf16 one and each norm made an fp32 copy of its bf16 one: on a CPU with AMX those conversions
took longer than the convolutions (docs/benchmarks.md, thirteenth pass).

The TransformerNet's residual blocks (ten 3x3 convolutions of 128 channels at quarter resolution,
60% of its arithmetic) run as NNPACK's Winograd convolutions (`winograd_conv3x3`, F(6x6, 3x3):
about 5x fewer multiplications) where torch has NNPACK for this CPU: each convolution about 2.2x as
fast as oneDNN's on one core, the whole network 1.47x on one thread and 1.1-1.3x on two (NNPACK's
threads scale less well), measured on an AVX2 AMD EPYC only (docs/benchmarks.md). On the one CPU
where that was measured faster (an AVX2 AMD Zen 1) NNPACK also runs both networks' last layers (9x9,
by FFT) and the built-in net's residual blocks (`NNPACK_LAYERS`). NNPACK keeps a workspace per process, which the convolutions in
bands of rows (`nnpack_conv`) keep small.

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

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from stylebatch import native
from stylebatch.cpuinfo import this_cpu

# Which of the 3 kernel rows (or columns) fall on each of the 2 input rows a phase reads.
_COMBINE = torch.tensor([[[1., 0., 0.], [0., 1., 1.]],   # even output rows: input rows i-1, i
                         [[1., 1., 0.], [0., 0., 1.]]])  # odd output rows: input rows i, i+1


def subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """[Cout, Cin, 3, 3] -> [4 * Cout, Cin, 2, 2], phase-major (phase = 2 * a + b)."""
    c = _COMBINE.to(weight)
    phases = [torch.einsum("rk,oikl,sl->oirs", c[a], weight, c[b]) for a in (0, 1) for b in (0, 1)]
    return torch.cat(phases)


def _edge_index(i: int, size: int, mode: str) -> int:
    """Index i of a dimension of `size`, mapped back into it as `mode` pads it if outside."""
    if mode == "reflect":
        i = abs(i)
        return 2 * (size - 1) - i if i > size - 1 else i
    return min(max(i, 0), size - 1)  # replicate


@functools.lru_cache(maxsize=1024)
def _edge_rows(start: int, stop: int, size: int, mode: str, offset: int = 0) -> torch.Tensor:
    """Indices [start, stop) of a dimension of `size`, those outside mapped back as `mode` pads them,
    plus `offset`. Cached (the same few index lists serve every band of every frame; a rank's pipelines
    share the cache and never write to what it returns): a frame's strips made them thousands of times,
    small torch calls that each took the interpreter lock from the rank's other pipelines."""
    return torch.tensor([_edge_index(i, size, mode) + offset for i in range(start, stop)], dtype=torch.int64)


def _row_strip(x: torch.Tensor, r0: int, r1: int, pad: int, mode: str, extra: int = 0) -> torch.Tensor:
    """Rows [r0, r1) of x, rows outside it and `pad` columns each side filled as `mode` pads them, then
    `extra` zero columns on the right: F.pad(x, [pad] * 4, mode)[:, :, r0 + pad:r1 + pad] (and those
    columns), channels-last, made without that padded copy: in C in one pass where it takes x
    (native.row_strip), else by torch's indexing (several calls, each a copy)."""
    made = native.row_strip(x, r0, r1, pad, mode, extra)
    if made is not None:
        return made
    if extra:
        return F.pad(_row_strip(x, r0, r1, pad, mode), [0, extra]).contiguous(memory_format=torch.channels_last)
    b, c, h, w = x.shape
    if mode == "reflect" and not native.reflects_once(h, w, r0, r1, pad):  # as F.pad refuses it
        raise ValueError(f"rows [{r0}, {r1}) with {pad} columns each side reach past one reflection of a {h}x{w} picture")
    out = torch.empty((b, c, r1 - r0, w + 2 * pad), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    lo = min(max(r0, 0), r1)  # the picture's rows in the strip: [lo, hi), empty for a strip wholly outside
    hi = max(min(r1, h), lo)
    out[:, :, lo - r0:hi - r0, pad:pad + w] = x[:, :, lo:hi]
    for i in (*range(r0, lo), *range(hi, r1)):  # the few rows above or below the picture
        out[:, :, i - r0, pad:pad + w] = x[:, :, _edge_index(i, h, mode)]
    if pad:
        out[:, :, :, :pad] = out.index_select(3, _edge_rows(-pad, 0, w, mode, pad))
        out[:, :, :, pad + w:] = out.index_select(3, _edge_rows(w, w + pad, w, mode, pad))
    return out


def _padded(x: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """F.pad(x, [pad] * 4, mode): in C for a channels-last picture (native.row_strip; torch's reflection
    pad of one runs at a fraction of memory speed: 12 of them were ~4% of a bf16 frame with AMX)."""
    made = native.row_strip(x, -pad, x.shape[-2] + pad, pad, mode)
    return F.pad(x, [pad] * 4, mode=mode) if made is None else made


def _conv_cl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int) -> torch.Tensor:
    # index_select makes a contiguous strip; channels-last keeps the convolution in oneDNN
    return F.conv2d(x.contiguous(memory_format=torch.channels_last), weight, bias, stride=stride)


# Pictures of at most this many values per image (or of fewer than 8 channels) are padded by copying:
# cheaper there than the border strips' extra convolution calls (measured on one core, docs/benchmarks.md:
# 32 channels at 90x160 3.98 vs 4.67 ms, a 3-channel 640x360 input to a 9x9 layer 38.7 vs 51.9 ms; but
# 128 channels at 90x160 56.3 vs 48.7 ms).
PAD_COPY_VALUES = 1 << 20

# The fewest output columns padded_conv computes a border strip with. oneDNN's bf16 convolution
# (torch 2.13's, on a CPU with AVX-512 BF16 / AMX: Sapphire Rapids) of stride 2 and one output column
# gives garbage (1e19, inf, NaN: memory it never wrote) most of the time; the 3x3 stride-2 layers'
# one-column strips made whole bf16 frames black. Two columns were right in every shape tried, four
# leave a margin; fp32 never went wrong (tests/test_models.py).
EDGE_STRIP_COLUMNS = 4


def padded_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, pad: int = 0,
                mode: str = "reflect", stride: int = 1) -> torch.Tensor:
    """conv2d(F.pad(x, [pad] * 4, mode), weight, bias, stride), without making the padded copy of a
    large picture.

    The convolution runs on x zero-padded inside oneDNN (no copy), and only the output rows and
    columns whose window reaches into the padding are computed again from thin strips of x padded
    `mode`-wise. F.pad on a channels-last picture copies it at a fraction of memory speed (38 ms
    for one 32-channel 720x528 picture on one core, as long as the convolution after it), and the
    copy, as large as the picture, raised the network's peak memory."""
    if pad == 0:
        return F.conv2d(x, weight, bias, stride=stride)
    if column_pairs_pay(x, weight, pad, mode, stride):
        return column_pair_conv(x, weight, bias)
    if x.shape[1] < 8 or x[0].numel() <= PAD_COPY_VALUES:  # a cheap copy beats the strips' small convolutions
        return F.conv2d(_padded(x, pad, mode), weight, bias, stride=stride)
    y = F.conv2d(x, weight, bias, stride=stride, padding=pad)
    (h, w), k, (oh, ow) = x.shape[-2:], weight.shape[-1], y.shape[-2:]
    top, bottom = -(-pad // stride), -(-(h - k + 1 + pad) // stride)  # rows [0, top) and [bottom, oh) read padding
    left, right = -(-pad // stride), -(-(w - k + 1 + pad) // stride)
    all_rows = _edge_rows(-pad, h + pad, h, mode)
    for r0, r1 in ((0, min(top, oh)), (max(bottom, top), oh)):
        if r0 < r1:
            strip = _row_strip(x, r0 * stride - pad, (r1 - 1) * stride - pad + k, pad, mode)
            y[:, :, r0:r1] = F.conv2d(strip, weight, bias, stride=stride)
    # column strips EDGE_STRIP_COLUMNS wide at least (their inner columns come out the same again);
    # no right strip where no output column reads the right padding (stride 2 on an even width)
    left = max(left, EDGE_STRIP_COLUMNS)
    right = min(right, ow - EDGE_STRIP_COLUMNS) if right < ow else right
    for c0, c1 in ((0, min(left, ow)), (max(right, 0), ow)):
        if c0 < c1:
            strip = x.index_select(3, _edge_rows(c0 * stride - pad, (c1 - 1) * stride - pad + k, w, mode))
            y[:, :, :, c0:c1] = _conv_cl(strip.index_select(2, all_rows), weight, bias, stride)
    return y


def column_pairs_pay(x: torch.Tensor, weight: torch.Tensor, pad: int, mode: str, stride: int) -> bool:
    """Whether padded_conv convolves x as column_pair_conv: the networks' first layer (3 channels, 9x9,
    reflection-padded, stride 1) in bf16 where oneDNN convolves bf16 in AVX-512 (not on AMX: there the
    plain padded convolution was faster, the built-in net's frame 3-7% at 640x360 to 1280x720,
    benchmarks/bench_native.py) and the C library is there."""
    k = weight.shape[-1]
    return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.shape[1] == 3 and weight.shape[-2] == k
            and k >= 5 and pad == k // 2 and mode == "reflect" and stride == 1 and min(x.shape[-2:]) > k
            and onednn_bf16() and not onednn_amx() and native.available())


def column_pair_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """conv2d(F.pad(x, [k // 2] * 4, "reflect"), weight, bias) for a bf16 x of few channels and a KxK
    weight: oneDNN pads bf16 input channels to an even count (3 cost 4), so the padded picture goes
    beside itself shifted (K + 1) // 2 columns (native.column_pairs: 2C channels, made in C in one
    pass) and the layer is a K x (K + 1) // 2 convolution of it, the second half of the taps on the
    shifted copy (the last column of taps 0 for odd K): the built-in net's first layer at 640x360
    about 18 against 22 ms on a Zen 4 (docs/benchmarks.md). The same sums in another order: as exact
    as the plain convolution in bf16 (tests/test_models.py)."""
    o, c, k, _ = weight.shape
    half = (k + 1) // 2
    pairs = native.column_pairs(x, k // 2, half)
    if pairs is None:
        return F.conv2d(F.pad(x, [k // 2] * 4, mode="reflect"), weight, bias)
    paired = weight.new_zeros((o, 2 * c, k, half))
    paired[:, :c] = weight[..., :half]
    paired[:, c:, :, :k - half] = weight[..., half:]
    return F.conv2d(pairs, paired.contiguous(memory_format=torch.channels_last), bias)


# Rows of the low-resolution input UpsampleConv2x convolves at a time: its 4x-channel output then
# stays a few MiB instead of as large as the upsampled picture (46 MiB at 720x528 with 32 channels).
UPSAMPLE_BAND_ROWS = 16
# ... or more rows, up to this many values of that output a band, where the layer is thin.
UPSAMPLE_BAND_VALUES = 1 << 19


class UpsampleConv2x(nn.Module):
    """forward(x) == conv2d(reflection_pad(interpolate(x, 2, "nearest"), 1), weight, bias), channels-last out."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_channels = weight.shape[0]
        self.weight = nn.Parameter(subpixel_weight(weight.detach()), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().repeat(4), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        # interleaved into a channels-last picture (memory order b, row, a, column, c, channel)
        out = x.new_empty(b, h, 2, w, 2, self.out_channels).permute(0, 5, 1, 2, 3, 4)
        weight, bias = self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
        rows = max(UPSAMPLE_BAND_ROWS, UPSAMPLE_BAND_VALUES // (4 * self.out_channels * (w + 1)))
        for i0 in range(0, h, rows):  # a band of rows at a time: no 4C-channel picture
            n = min(h, i0 + rows) - i0
            strip = _row_strip(x, i0 - 1, i0 + n + 1, 1, "replicate")
            y = F.conv2d(strip, weight, bias)
            if native.interleave(y, out.permute(0, 2, 3, 4, 5, 1)[:, i0:i0 + n]):  # (in C, one pass)
                continue
            y = y.view(b, 4, self.out_channels, n + 1, w + 1)
            for a in (0, 1):
                for c in (0, 1):
                    out[:, :, i0:i0 + n, a, :, c] = y[:, 2 * a + c, :, a:a + n, c:c + w]
        return out.reshape(b, self.out_channels, 2 * h, 2 * w)


# Output rows RowSplitConv makes at a time: its k * Cout-channel intermediate stays a few MiB.
ROW_SPLIT_BAND_ROWS = 64


class RowSplitConv(nn.Module):
    """forward(x) == conv2d(F.pad(x, [k // 2] * 4, mode="reflect"), weight, bias), channels-last, for a
    k x k kernel with few output channels (the TransformerNet's last layer: 32 -> 3 channels, 9 x 9).

    oneDNN runs a convolution to 3 channels at a third of its usual rate. This one is a 1 x k
    convolution to k * Cout channels (a group of Cout per kernel row) whose groups are then summed
    k rows apart, a band of rows at a time: the same multiply-adds, about 1.8x faster at 640x360 to
    1920x1080 on one core."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_channels, in_channels, self.k, _ = weight.shape
        rows = weight.detach().permute(2, 0, 1, 3).reshape(self.k * self.out_channels, in_channels, 1, self.k)
        self.weight = nn.Parameter(rows.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.full = nn.Parameter(weight.detach().clone(), requires_grad=False)  # the k x k kernel (nnpack_conv)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        k, co, p = self.k, self.out_channels, self.k // 2
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and onednn_bf16():
            return column_group_conv(x, self.full, self.bias)
        # the k partial sums are added in fp32 at least (under bf16 autocast too), as a convolution would
        dtype = torch.promote_types(x.dtype, torch.float32)
        out = torch.empty((b, co, h, w), dtype=dtype, device=x.device, memory_format=torch.channels_last)
        weight = self.weight.to(x.dtype)
        for r0 in range(0, h, ROW_SPLIT_BAND_ROWS):
            n = min(h, r0 + ROW_SPLIT_BAND_ROWS) - r0
            z = F.conv2d(_row_strip(x, r0 - p, r0 + n + p, p, "reflect"), weight)  # [B, k*Cout, n+2p, W]
            z = z.permute(0, 2, 3, 1).reshape(b, n + 2 * p, w, k, co)
            band = out.permute(0, 2, 3, 1)[:, r0:r0 + n]  # [B, n, W, Cout], a view
            band.copy_(z[:, 0:n, :, 0])
            for dy in range(1, k):
                band += z[:, dy:dy + n, :, dy]
            if self.bias is not None:
                band += self.bias
        return out


class ColumnPairConv(nn.Module):
    """forward(x) == conv2d(F.pad(x, [k // 2] * 4, mode="reflect"), weight), channels-last, for a k x k
    kernel with few input and output channels (the built-in net's last layer: 4 -> 3 channels, 9 x 9).

    oneDNN spends as long on a convolution to 3 channels as on one to 8 (a vector holds 8 floats).
    This one makes two neighbouring output columns at each position: a stride-(1, 2) convolution with
    a k x (k + 1) kernel to 2 x Cout channels, (column parity, channel) in that order, so its
    channels-last output already is the picture, channels-last (columns 2j and 2j + 1 adjacent, the
    channels innermost): half the positions, twice the useful lanes. Exact; 21 -> 11 ms at 640x360
    on one core (docs/benchmarks.md). Where Cin is large the extra taps cost more than the lanes
    gain (RowSplitConv is faster there).

    Where oneDNN convolves in AVX-512 (onednn_bf16: 16 fp32 lanes a vector) five columns fill them
    (column_group_conv, as in bf16): on a Zen 4 EPYC 12.8 -> 8.2 ms at 640x360 and 52 -> 28 ms at
    1280x720 on one core; in AVX2 (8 lanes) two stay faster (docs/benchmarks.md, twentieth pass)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_channels, in_channels, self.k, _ = weight.shape
        pair = weight.new_zeros(2 * self.out_channels, in_channels, self.k, self.k + 1)
        pair[:self.out_channels, :, :, :self.k] = weight.detach()  # even columns
        pair[self.out_channels:, :, :, 1:] = weight.detach()  # odd columns: the same kernel a column on
        self.weight = nn.Parameter(pair.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.single = nn.Parameter(weight.detach().clone(), requires_grad=False)  # odd widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p, co = self.k // 2, self.out_channels
        if x.dtype in (torch.bfloat16, torch.float32) and x.device.type == "cpu" and onednn_bf16():
            return column_group_conv(x, self.single)  # AVX-512's 16 lanes: 5 columns of 3 channels
        if w % 2:
            return padded_conv(x, self.single.to(x.dtype), pad=p)
        z = F.conv2d(_padded(x, p, "reflect"), self.weight.to(x.dtype), stride=(1, 2))  # [B, 2*Cout, H, W/2]
        z = z.contiguous(memory_format=torch.channels_last)  # it is; a copy only if oneDNN chose otherwise
        return z.as_strided((b, co, h, w), (h * w * co, 1, w * co, co))


# The output channels oneDNN's bf16 convolution fills at once on a CPU with AMX (a tile row: 16 fp32 sums).
BF16_OUTPUT_LANES = 16


def column_group_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      columns: int | None = None) -> torch.Tensor:
    """conv2d(F.pad(x, [k // 2] * 4, mode="reflect"), weight, bias) in x's precision, fp32 and
    channels-last out, for a k x k kernel with few output channels: the networks' last layers in bf16.

    As ColumnPairConv, with `columns` neighbouring output columns at each position (by default as many
    as fill BF16_OUTPUT_LANES: 5 for 3 channels): a stride-(1, columns) convolution with a
    k x (k + columns - 1) kernel to columns x Cout channels, whose channels-last output is the picture.
    Any width: a band's strip gets zero columns on the right up to a multiple of `columns`, and the
    output columns they make are dropped. A band of ROW_SPLIT_BAND_ROWS rows at a time, so no padded
    copy of the picture is made; the bias is added in fp32. A 32 -> 3 channel 9x9 layer in bf16 on one
    core with AMX, 640x360 to 1280x720: 2.5-2.8x as fast as one convolution to 3 channels (5 columns;
    2, 3, 4, 6 and 8 were slower, docs/benchmarks.md)."""
    b, _, h, w = x.shape
    co, _, k, _ = weight.shape
    g = columns or max(1, BF16_OUTPUT_LANES // co)
    p, extra = k // 2, -w % g
    grouped = weight.new_zeros(g * co, weight.shape[1], k, k + g - 1)
    for j in range(g):
        grouped[j * co:(j + 1) * co, :, :, j:j + k] = weight
    grouped = grouped.to(x.dtype).contiguous(memory_format=torch.channels_last)
    out = torch.empty((b, co, h, w), dtype=torch.float32, device=x.device, memory_format=torch.channels_last)
    for r0 in range(0, h, ROW_SPLIT_BAND_ROWS):
        n = min(h, r0 + ROW_SPLIT_BAND_ROWS) - r0
        strip = _row_strip(x, r0 - p, r0 + n + p, p, "reflect", extra)
        z = F.conv2d(strip, grouped, stride=(1, g)).contiguous(memory_format=torch.channels_last)
        z = z.permute(0, 2, 3, 1).reshape(b, n, w + extra, co)  # (column group, column in it, channel): a column
        out.permute(0, 2, 3, 1)[:, r0:r0 + n].copy_(z[:, :, :w])
    return out if bias is None else out.add_(bias.float().view(1, -1, 1, 1))


@functools.cache
def winograd_available() -> bool:
    """Whether torch's NNPACK runs on this CPU (x86-64 with AVX2 and FMA, or ARM NEON); initialises it
    (its convolutions fail before)."""
    if not hasattr(torch, "_nnpack_spatial_convolution"):  # a private op: a later torch may drop it
        return False
    return bool(getattr(torch, "_nnpack_available", lambda: False)())


# Set False to run every convolution through oneDNN (benchmarks/bench_efficiency.py compares both);
# winograd_conv3x3 sets it False itself if NNPACK ever refuses a convolution.
USE_WINOGRAD = True


def plain_fp32(x: torch.Tensor) -> bool:
    """Whether x is computed in plain fp32: an fp32 tensor and no CPU autocast (bf16) around it."""
    return x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def cpu_bf16(x: torch.Tensor) -> bool:
    """Whether x is to be painted in bf16 on the CPU: the CPU's bf16 autocast is on around it (the
    networks then run in bf16 themselves, autocast off: in_own_precision)."""
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def in_own_precision(forward, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
    """forward(x, *rest), under the CPU's bf16 autocast (cpu_bf16) as forward(x in bf16, *rest) with
    autocast off: the network's pictures stay bf16 from layer to layer (autocast would round each
    convolution's input to bf16 again and give its norm an fp32 copy); each layer casts its fp32 weights
    to x's type, and keeps in fp32 what autocast kept so (instance norms' statistics, the last layer's
    sums and bias)."""
    if cpu_bf16(x):
        with torch.autocast("cpu", enabled=False):
            return forward(x.to(torch.bfloat16), *rest)
    return forward(x, *rest)


@functools.cache
def onednn_bf16() -> bool:
    """Whether oneDNN convolves bf16 on this CPU (AVX-512 and up, AMX; `ONEDNN_MAX_CPU_ISA` may forbid
    it). Elsewhere torch's fallback convolution unfolds its input: a 9x9 layer's is 81 copies of it."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # a private op: a later torch may drop it
    return bool(check and check())


@functools.cache
def onednn_amx() -> bool:
    """Whether oneDNN's bf16 convolutions run on AMX here: onednn_bf16 on a CPU whose flags say
    amx_bf16 (Sapphire Rapids and later)."""
    return onednn_bf16() and "amx_bf16" in this_cpu().flags


def winograd_ready(x: torch.Tensor) -> bool:
    """Whether winograd_conv3x3 may take x: plain fp32 on a CPU with NNPACK."""
    return USE_WINOGRAD and x.device.type == "cpu" and plain_fp32(x) and winograd_available()


# Input values (channels x rows x columns) per NNPACK call and torch thread, in bands of whole output
# tiles (NNPACK_TILE_ROWS). NNPACK's workspace, which torch keeps for the life of the process, grows to
# about 4x the largest input it was given: with these bands it stays near 64 MiB per torch thread (a rank of
# many threads is bounded less), where whole pictures keep about one full-size 32-channel picture
# (106 MiB at 1280x720, about 1 GiB at 4K). Bands cost time:
# with bands of 2 M values a whole `stylebatch run` took 2-3% longer at 720x528 (2 ranks) and 4-7% at
# 1280x720 (1 rank of 2 threads), alternated; with 4 M both of those run whole pictures.
WINOGRAD_BAND_VALUES = 1 << 22

# The same for the layers NNPACK runs only where NNPACK_LAYERS holds: the built-in net's blocks and last
# layer (the FFT's workspace is about 5x a band's output, so these bands are small: a few MiB of
# workspace, as fast on one core as whole pictures), and the TransformerNet's last layer in larger
# bands (NNPACK transforms its 96 kernels again each call: 149 ms a 640x360 frame in bands of 256 K
# values, 128 in bands of 1 M, 126 whole, on one core).
SMALL_BAND_VALUES = 1 << 18
LAST_LAYER_BAND_VALUES = 1 << 20

# Output rows of one tile of the algorithm NNPACK picks for a kernel size: Winograd F(6x6, 3x3), FFT 16x16.
NNPACK_TILE_ROWS = {3: 6, 9: 8}


def nnpack_band_rows(channels: int, width: int, kernel: int = 3, values: int | None = None) -> int:
    """Output rows per NNPACK call for `channels` (the more of input and output) x `width` and a
    kernel x kernel convolution: a multiple of its tile's rows (NNPACK_TILE_ROWS), at least one tile;
    `values` per torch thread (WINOGRAD_BAND_VALUES by default)."""
    tile = NNPACK_TILE_ROWS[kernel]
    values = (WINOGRAD_BAND_VALUES if values is None else values) * torch.get_num_threads()
    return tile * max(1, values // (channels * (width + kernel - 1) * tile))


def nnpack_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, values: int | None = None,
                channels_last: bool = False) -> torch.Tensor:
    """conv2d(F.pad(x, [k // 2] * 4, mode="reflect"), weight, bias) for fp32 x on the CPU and a 3x3 or
    9x9 kernel, by NNPACK (its layout is NCHW: out NCHW, or channels-last if asked): Winograd
    F(6x6, 3x3) for 3x3, FFT 16x16 for 9x9. Each image on its own (NNPACK takes a batch by another,
    slower algorithm, and a frame must not depend on its batch), a band of rows at a time (`values`,
    nnpack_band_rows). The same bits with any number of threads (tests/test_models.py); NNPACK's
    thread pool is sized once per process, from torch's thread count at its first convolution (a rank
    sets its count before). Against float64 Winograd's PSNR is at least 110 dB of the output's peak
    (121-123 measured; fp32's direct convolution 138-144); the FFT's relative error is about 2e-7. If
    NNPACK refuses a call (its own error; running out of memory is not a refusal), this and every later
    convolution is oneDNN's (USE_WINOGRAD off), with one warning. That rank's frames then differ from
    NNPACK's in the last bits."""
    global USE_WINOGRAD
    b, c, h, w = x.shape
    k, p = weight.shape[-1], weight.shape[-1] // 2
    # an NCHW picture padded whole (a cheap copy); another's strips padded and made NCHW one band at a time
    padded = F.pad(x, [p] * 4, mode="reflect") if x.is_contiguous() else None
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if not USE_WINOGRAD:  # NNPACK refused earlier in this frame
        return F.conv2d(F.pad(x, [p] * 4, mode="reflect"), weight, bias).contiguous(memory_format=layout)
    out = torch.empty(b, weight.shape[0], h, w, dtype=x.dtype, device=x.device, memory_format=layout)
    band = nnpack_band_rows(max(c, weight.shape[0]), w, k, values)
    winograd_available()  # NNPACK refuses every call before it is initialised (cached: once)
    weight = weight.contiguous()  # NNPACK's layout (the networks keep channels-last weights): once, not per band
    try:
        for i in range(b):
            for r0 in range(0, h, band):
                r1 = min(h, r0 + band)
                strip = padded[i:i + 1, :, r0:r1 + 2 * p] if padded is not None else _transposed(
                    _row_strip(x[i:i + 1], r0 - p, r1 + p, p, "reflect"), torch.contiguous_format)
                y = torch._nnpack_spatial_convolution(strip, weight, bias, [0, 0])
                if channels_last:
                    _transposed(y, torch.channels_last, out=out[i:i + 1, :, r0:r1])
                else:
                    out[i:i + 1, :, r0:r1] = y
    except RuntimeError as exc:
        if "NNPACK" not in str(exc):
            raise
        USE_WINOGRAD = False
        logging.getLogger(__name__).warning("NNPACK refused a convolution (%s); using oneDNN's from now on", exc)
        out.copy_(F.conv2d(F.pad(x, [p] * 4, mode="reflect"), weight, bias))
    return out


def _transposed(x: torch.Tensor, layout: torch.memory_format, out: torch.Tensor | None = None) -> torch.Tensor:
    """One image x ([1, C, H, W], channels-last or NCHW) in the other layout (into `out`, a
    [1, C, H, W] view contiguous in `layout`, if given), copied as one 2-D transpose: about twice as
    fast as torch's copy between the two 4-D layouts (a band of 32 channels x 8 rows x 640 columns:
    0.25 against 0.53 ms on one core)."""
    _, c, h, w = x.shape
    if out is None:
        out = torch.empty_like(x, memory_format=layout)
    if layout == torch.channels_last:  # [C, H*W] -> [H*W, C]
        out[0].permute(1, 2, 0).view(h * w, c).copy_(x[0].view(c, h * w).t())
    else:  # [H*W, C] -> [C, H*W]
        out[0].view(c, h * w).copy_(x[0].permute(1, 2, 0).reshape(h * w, c).t())
    return out


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """conv2d(F.pad(x, [1] * 4, mode="reflect"), weight), NCHW out: the TransformerNet's residual
    blocks' convolution (nnpack_conv, bands of WINOGRAD_BAND_VALUES)."""
    return nnpack_conv(x, weight)


# On the CPU where it was measured faster, NNPACK runs more layers than the TransformerNet's blocks:
# both networks' last layers (4 -> 3 and 32 -> 3 channels, 9x9, by FFT) and the built-in net's
# 32-channel residual blocks (Winograd). That CPU is an AVX2 AMD EPYC of the first Zen generation
# (family 23, models below 0x30: Naples, and Zen+), where at 640x360 on one core (docs/benchmarks.md,
# eleventh pass) they took 43.6 -> 20.6 ms, 177 -> 128 ms and 8.3 -> 5.3 ms a block convolution, the
# built-in net 348 -> 304 and 378 -> 339 ms a frame, the TransformerNet 1121 -> 1065 ms; on two threads
# about even. On a Zen 3 EPYC (family 25, AVX2 only; seventeenth pass) NNPACK's were no faster on one
# thread alone (the built-in net 137 against 138 ms at 640x360, 228 against 223 at 720x528) and slower
# in every layout a rank runs: in a rank's two pipelines of one thread each (the CPU's default) the
# built-in net's frame pair 166-171 against 156-166 ms at 640x360 and 645 against 621 at 1280x720, on
# two threads 104-112 against 85 ms; the TransformerNet about even (1% slower in two pipelines, 2-5% on
# two threads). So elsewhere (every other AVX2 CPU, not measured; AVX-512, where oneDNN's vectors are
# twice as wide) these layers are oneDNN's, torch's own choice. The choice does not follow the thread
# count, so a rank paints the same bits with any number of threads (a resumed run with another rank
# count). Not the first layer (3 -> 32 channels, 9x9): with its output made channels-last NNPACK's FFT
# was hardly faster (91 against 98 ms, Zen 1). None: by that rule; True or False: always or never
# (tests, benchmarks). The TransformerNet's 128-channel blocks are NNPACK's wherever it runs (USE_WINOGRAD).
NNPACK_LAYERS: bool | None = None


@functools.cache
def _nnpack_layers_faster() -> bool:
    """Whether this is a CPU NNPACK_LAYERS' layers were measured faster on: torch's kernels AVX2 on an
    AMD Zen 1 (family 23, model below 0x30)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX2" and this_cpu().is_amd(family=23, below_model=0x30)


def nnpack_layers_ready(x: torch.Tensor) -> bool:
    """Whether the layers NNPACK_LAYERS names run as nnpack_conv for x (fp32, on a CPU with NNPACK)."""
    return winograd_ready(x) and (_nnpack_layers_faster() if NNPACK_LAYERS is None else NNPACK_LAYERS)


# Values (pixels x channels) per step of instance_norm_'s passes over a large picture: a step and its
# temporary stay in the core's cache, so no temporary as large as the picture is made.
NORM_STEP_VALUES = 1 << 18

# Values per block of channels in _instance_norm_channels_ (NCHW): 128 channels at 160x90 on one core
# 4.2 ms a norm in blocks of 256 K values, 3.7 ms in blocks of 1 M, 13 ms whole.
NORM_CHANNEL_BLOCK_VALUES = 1 << 20

# Pictures of at most this many values (per image) are normalised in one step: the networks'
# quarter- and half-resolution layers, where many steps' small operations cost more than the
# arithmetic; the step's squares are a temporary of at most 8 MiB, below the full-resolution pictures
# that set the peak (for frames of at most 64 K pixels, where the full-resolution norms take one
# step too, it adds up to one picture of at most 8 MiB to the peak).
NORM_WHOLE_VALUES = 1 << 21

# Elementwise passes over a channels-last picture see a row of `lanes * C` values with a per-channel
# vector tiled `lanes` times: with only 3 or 4 channels a row of C values leaves the vector units
# idle (a 4-channel 640x360 picture: 4.6 -> 0.9 ms a norm on one core).
NORM_ROW_VALUES = 256


# instance norms shift each channel by the mean of every this-many-th pixel (a value near its mean)
SHIFT_SAMPLE_STRIDE = 64


# A channel whose variance is at most this share of its squared mean (plus 1) is constant but for
# rounding: a flat picture (a black frame, a title card) makes every channel constant, and the plain
# network keeps them exactly so (its instance norms then give the bias). This network's upsampling
# and output layers round each output phase differently (1e-14 of variance), which an instance norm
# scaled up by 1/sqrt(eps) and the next layers again, to a full-contrast texture on a black frame.
# Real pictures' channels vary by 1e-4 and more (measured on camera frames: 0.9 and up).
FLAT_VARIANCE = 1e-10


def instance_norm_(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool,
                   residual: torch.Tensor | None = None) -> torch.Tensor:
    """Instance norm (and ReLU) of x, in place (x is returned); weight and bias: [C]. F.instance_norm
    copies a channels-last tensor to contiguous and back, and var_mean's Welford loop runs at a
    fraction of the speed.

    Each image's channels are first shifted by a value near their mean (the mean of a sparse grid of
    pixels), in place: the statistics are then those of small deviations, and the variance (mean
    square minus squared mean of the deviations) cannot cancel away in fp32 on low-contrast pictures
    (a fade, fog, a flat title card), where the mean is large against the spread. The shifted pixels
    are normalised as `x' * scale + (bias - residual * scale)`, residual being the deviations' mean,
    as exact as `(x - mean) * scale + bias`. A channel constant but for rounding (FLAT_VARIANCE) is
    its bias, as in the plain network. Small pictures are summed whole (NORM_WHOLE_VALUES), large
    ones in cache-sized steps, each pass over a step at once (NORM_STEP_VALUES).

    Where the C kernel was built (native: the same contract, one call, 2-4x faster) it does the
    whole norm, and `residual` (a picture of x's shape, type and layout) is added in the same pass,
    rounded once; else torch's operations below do, and residual is added after."""
    if native.instance_norm_(x, weight, bias, relu, residual, SHIFT_SAMPLE_STRIDE, FLAT_VARIANCE):
        return x
    _torch_instance_norm_(x, weight, bias, relu)
    return x if residual is None else x.add_(residual)


def _torch_instance_norm_(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
    """instance_norm_ in torch's operations."""
    b, c, h, w = x.shape
    if x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last):
        for i in range(b):
            _instance_norm_pixels_bf16_(x[i].permute(1, 2, 0).reshape(h * w, c), weight, bias, relu)
    elif x.is_contiguous(memory_format=torch.channels_last):
        for i in range(b):
            _instance_norm_pixels_(x[i].permute(1, 2, 0).reshape(h * w, c), weight, bias, relu)  # a view
    elif x.is_contiguous():  # NCHW (winograd_conv3x3's layout): each channel a row of pixels
        for i in range(b):
            _instance_norm_channels_(x[i].view(c, h * w), weight, bias, relu)
    else:  # pixels above would be a copy
        x.copy_(_torch_instance_norm_(x.contiguous(memory_format=torch.channels_last), weight, bias, relu))
    return x


def _norm_affine(shift: torch.Tensor, residual: torch.Tensor, variance: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, beta) normalising pixels shifted by `shift`, whose deviations have mean `residual`."""
    flat = variance <= FLAT_VARIANCE * ((shift + residual).square() + 1)  # a constant channel, but for rounding
    scale = (weight * (variance + 1e-5).rsqrt()).masked_fill_(flat, 0.0)
    return scale, bias - residual * scale


def _pixel_steps(pixels: torch.Tensor, whole_at: int = 0) -> tuple[int, list[torch.Tensor]]:
    """(pixels a step, the steps) of an image's [H*W, C] view: each step's rows of `lanes` pixels
    (NORM_ROW_VALUES values a row) as a [rows, lanes * C] view, NORM_STEP_VALUES values a step, or
    one step where the picture has at most `whole_at` values; the few pixels left over from whole
    rows are a step of their own, rows of one pixel."""
    n, c = pixels.shape
    lanes = max(1, NORM_ROW_VALUES // c)
    row = lanes * c
    step = n if n * c <= whole_at else max(1, NORM_STEP_VALUES // row) * lanes  # pixels, a multiple of lanes
    whole = n - n % lanes
    flat = pixels.view(-1)
    parts = [flat[s * c:min(s + step, whole) * c].view(-1, row) for s in range(0, whole, step)]
    if whole < n:
        parts.append(pixels[whole:])
    return step, parts


def _instance_norm_pixels_(pixels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> None:
    """instance_norm_ of one image, pixels: its [H*W, C] view, in rows of `lanes` pixels, in steps.
    Every sum is over the rows, column by column, so the threads split the columns, not the sums: the
    same bits with 1, 2 or 3 threads on this project's AVX2 machines (tests/test_models.py), which
    resumed runs with another rank count rely on (torch's batch-norm statistics differ in the last
    bit). On AVX-512, torch's column sums may take another path for columns where a thread's share
    ends; not measured."""
    n, c = pixels.shape
    shift = pixels[::SHIFT_SAMPLE_STRIDE].mean(dim=0)
    step, parts = _pixel_steps(pixels, whole_at=NORM_WHOLE_VALUES)
    squares = pixels.new_empty(min(step, n) * c)
    # per lane of a row (summed over the lanes at the end): shift, sums, sums of squares
    lanes_of = {w: (shift.repeat(w // c), pixels.new_zeros(w), pixels.new_zeros(w)) for w in {p.shape[1] for p in parts}}
    for part in parts:
        tiled, sums, sum_squares = lanes_of[part.shape[1]]
        part.sub_(tiled)
        sums += part.sum(dim=0)
        sum_squares += torch.mul(part, part, out=squares[:part.numel()].view(part.shape)).sum(dim=0)
    residual = sum(v[1].view(-1, c).sum(dim=0) for v in lanes_of.values()).div_(n)
    variance = sum(v[2].view(-1, c).sum(dim=0) for v in lanes_of.values()).div_(n).sub_(residual.square()).clamp_(min=0)
    scale, beta = _norm_affine(shift, residual, variance, weight, bias)
    tiled = {w: (beta.repeat(w // c), scale.repeat(w // c)) for w in lanes_of}
    for part in parts:
        beta_row, scale_row = tiled[part.shape[1]]
        torch.addcmul(beta_row, part, scale_row, out=part)
        if relu:
            part.relu_()


def _instance_norm_pixels_bf16_(pixels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> None:
    """_instance_norm_pixels_ of a bf16 picture: every sum and the normalisation in fp32, a cache-sized
    step at a time, the picture rounded to bf16 once, when it is written back."""
    n, c = pixels.shape
    shift = pixels[::SHIFT_SAMPLE_STRIDE].float().mean(dim=0)
    step, parts = _pixel_steps(pixels)
    row = parts[0].shape[1]  # (lanes * C; a picture of fewer pixels than a row: C)
    work = torch.empty(min(step, n) * c, dtype=torch.float32, device=pixels.device)
    # each part's sums and sums of squares per lane, a row each (summed at the end: fewer calls a part)
    sums = work.new_zeros(len(parts), 2, row)
    tiled = {w: shift.repeat(w // c) for w in {p.shape[1] for p in parts}}
    for part, out in zip(parts, sums):
        w = part.shape[1]
        f = work[:part.numel()].view(part.shape)
        torch.sum(f.copy_(part).sub_(tiled[w]), dim=0, out=out[0, :w])
        torch.sum(f.mul_(f), dim=0, out=out[1, :w])
    totals = sums.sum(dim=0)  # [2, row]: lanes of whole rows; a part of single pixels filled the first c
    residual, mean_square = (t.view(-1, c).sum(dim=0).div_(n) for t in totals)
    variance = mean_square.sub_(residual.square()).clamp_(min=0)
    scale, beta = _norm_affine(shift, residual, variance, weight, bias)
    beta = beta - shift * scale  # the picture is normalised unshifted
    tiled = {w: (beta.repeat(w // c), scale.repeat(w // c)) for w in tiled}
    for part in parts:
        beta_row, scale_row = tiled[part.shape[1]]
        f = work[:part.numel()].view(part.shape)
        torch.addcmul(beta_row, f.copy_(part), scale_row, out=f)
        if relu:
            f.relu_()
        part.copy_(f)


def _instance_norm_channels_(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> None:
    """instance_norm_ of one NCHW image, rows: its [C, H*W] view. As _instance_norm_pixels_ (a shift near
    each channel's mean, the deviations' sums, one addcmul), a block of channels at a time: a channel's
    statistics need no other channel, so each block is summed and normalised while it is in cache. Each
    row is summed by one thread: the same bits with any number of threads (tests/test_models.py), as
    long as a block holds at least 2 channels (torch splits a single long sum between its threads),
    so blocks are near-equal and never of one channel, even where one channel exceeds the block size."""
    c, n = rows.shape
    blocks = max(1, min(c // 2, -(-c * n // NORM_CHANNEL_BLOCK_VALUES)))
    bounds = [c * i // blocks for i in range(blocks + 1)]
    most = max(hi - lo for lo, hi in zip(bounds, bounds[1:]))
    step = n if most * n <= NORM_STEP_VALUES else max(SHIFT_SAMPLE_STRIDE, NORM_STEP_VALUES // most)  # columns
    squares = rows.new_empty(most * min(step, n))
    for c0, c1 in zip(bounds, bounds[1:]):
        block, k = rows[c0:c1], c1 - c0
        shift = block[:, ::SHIFT_SAMPLE_STRIDE].mean(dim=1)
        sums, sum_squares = block.new_zeros(k), block.new_zeros(k)
        parts = [block[:, j:j + step] for j in range(0, n, step)]
        for part in parts:
            part.sub_(shift[:, None])
            sums += part.sum(dim=1)
            m = part.shape[1]
            sum_squares += torch.mul(part, part, out=squares[:k * m].view(k, m)).sum(dim=1)
        residual = sums.div_(n)
        variance = sum_squares.div_(n).sub_(residual.square()).clamp_(min=0)
        scale, beta = _norm_affine(shift, residual, variance, weight[c0:c1], bias[c0:c1])
        for part in parts:  # (an addcmul broadcasting along rows ran at a third of mul_'s and add_'s speed)
            part.mul_(scale[:, None]).add_(beta[:, None])
            if relu:
                part.relu_()


def instance_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
    """Instance norm (and ReLU), plus `residual` if given: in place on the CPU (`instance_norm_`; a
    bf16 picture's statistics and normalisation in fp32, rounded to bf16 once); else F.instance_norm."""
    if x.dtype == torch.float32 or (x.device.type == "cpu" and x.dtype == torch.bfloat16):
        return instance_norm_(x, weight.float(), bias.float(), relu, residual)
    y = F.instance_norm(x, weight=weight.to(x.dtype), bias=bias.to(x.dtype), eps=1e-5)
    y = y.relu_() if relu else y
    return y if residual is None else y.add_(residual)


class FastTransformerNet(nn.Module):
    """A TransformerNet's function on 0..1 pictures: [B,3,H,W] in 0..1 -> [B,3,H,W] (H, W multiples of 4)."""

    channels_last = True  # takes and gives channels-last pictures (models.Stylizer keeps frames so)
    shift_invariant = True  # its first layer is a convolution and an instance norm (models.Stylizer)

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        keep = lambda t: nn.Parameter(t.detach().clone(), requires_grad=False)  # noqa: E731
        blocks = (net.res1, net.res2, net.res3, net.res4, net.res5)
        self.conv1 = keep(net.conv1.conv2d.weight * 255)  # input 0..1 instead of 0..255
        self.down = nn.ParameterList([keep(net.conv2.conv2d.weight), keep(net.conv3.conv2d.weight)])
        self.res = nn.ParameterList([keep(c.conv2d.weight) for r in blocks for c in (r.conv1, r.conv2)])
        self.up = nn.ModuleList([UpsampleConv2x(net.deconv1.conv2d.weight), UpsampleConv2x(net.deconv2.conv2d.weight)])
        self.out = RowSplitConv(net.deconv3.conv2d.weight / 255, net.deconv3.conv2d.bias / 255)
        norms = [net.in1, net.in2, net.in3] + [n for r in blocks for n in (r.in1, r.in2)] + [net.in4, net.in5]
        self.norms = nn.ParameterList([keep(t) for n in norms for t in (n.weight, n.bias)])

    def _norm(self, i: int, x: torch.Tensor, relu: bool = True, residual: torch.Tensor | None = None) -> torch.Tensor:
        return instance_norm(x, self.norms[2 * i], self.norms[2 * i + 1], relu, residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_own_precision(self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        y = self._norm(0, padded_conv(x.contiguous(memory_format=torch.channels_last), self.conv1.to(dt), pad=4))
        for i, w in enumerate(self.down, start=1):
            y = padded_conv(y, w.to(dt), pad=1, stride=2)  # the larger picture goes before the norm, not after
            y = self._norm(i, y)
        y = self._residual_blocks(y)
        for i, up in enumerate(self.up, start=13):
            y = up(y)
            y = self._norm(i, y)
        if nnpack_layers_ready(y):  # (NNPACK_LAYERS)
            return nnpack_conv(y, self.out.full, self.out.bias, values=LAST_LAYER_BAND_VALUES, channels_last=True)
        return self.out(y)

    def _residual_blocks(self, y: torch.Tensor) -> torch.Tensor:
        """The five residual blocks, channels-last in and out; NCHW inside where they run as Winograd
        convolutions (winograd_conv3x3)."""
        winograd = winograd_ready(y)
        if winograd:
            y = y.contiguous()
        conv = winograd_conv3x3 if winograd else functools.partial(padded_conv, pad=1)
        for i in range(0, len(self.res), 2):
            z = self._norm(3 + i, conv(y, self.res[i].to(y.dtype)))
            y = self._norm(4 + i, conv(z, self.res[i + 1].to(y.dtype)), relu=False, residual=y)
        return y.contiguous(memory_format=torch.channels_last)


class FastMultiStyleNet(nn.Module):
    """A MultiStyleNet's function: (image [B,3,H,W] in 0..1, H and W multiples of 4; style_weights [26])
    -> [B,3,H,W] in 0..1, channels-last."""

    channels_last = True  # takes and gives channels-last pictures (models.Stylizer keeps frames so)
    shift_invariant = True  # its first layer is a convolution and an instance norm (models.Stylizer)

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        keep = lambda t: nn.Parameter(t.detach().clone(), requires_grad=False)  # noqa: E731
        layers = [*net.contract, *(c for block in net.res for c in block), *net.expand]
        self.weights = nn.ParameterList([keep(l.w) for l in layers[:-3]])
        self.up = nn.ModuleList([UpsampleConv2x(l.w) for l in layers[-3:-1]])
        self.out = ColumnPairConv(layers[-1].w)
        # every norm's style matrices side by side ([26, sum of channels]): a frame's scales and shifts are
        # two products, not two per norm (36 small calls a frame, each taking the interpreter lock from
        # the rank's other pipelines)
        self.gamma = keep(torch.cat([l.norm.gamma for l in layers], dim=1))
        self.beta = keep(torch.cat([l.norm.beta for l in layers], dim=1))
        self.norm_channels = [l.norm.gamma.shape[1] for l in layers]

    def _affines(self, style: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each norm's (scale, shift) for `style` [26], in fp32 under bf16 autocast too."""
        with torch.autocast("cpu", enabled=False):
            s = style.to(self.gamma.dtype)
            return list(zip((s @ self.gamma).split(self.norm_channels), (s @ self.beta).split(self.norm_channels)))

    def _norm(self, i: int, x: torch.Tensor, affines: list, relu: bool = True,
              residual: torch.Tensor | None = None) -> torch.Tensor:
        return instance_norm(x, *affines[i], relu, residual)

    def _conv(self, i: int, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        w = self.weights[i].to(x.dtype)
        return padded_conv(x, w, pad=w.shape[-1] // 2, stride=stride)

    def forward(self, image: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        return in_own_precision(self._forward, image, style_weights)

    def _forward(self, image: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        s = self._affines(style_weights)
        nnpack = nnpack_layers_ready(image)  # the blocks (NCHW) and the last layer NNPACK's (NNPACK_LAYERS)
        conv = functools.partial(nnpack_conv, values=SMALL_BAND_VALUES)
        y = self._norm(0, self._conv(0, image.contiguous(memory_format=torch.channels_last)), s)
        for i in (1, 2):
            y = self._conv(i, y, stride=2)  # the larger picture goes before the norm, not after
            y = self._norm(i, y, s)
        if nnpack:
            y = y.contiguous()
        for i in range(3, 15, 2):
            z = self._norm(i, conv(y, self.weights[i]) if nnpack else self._conv(i, y), s)
            y = self._norm(i + 1, conv(z, self.weights[i + 1]) if nnpack else self._conv(i + 1, z), s,
                           relu=False, residual=y)
        y = y.contiguous(memory_format=torch.channels_last)
        for i, up in enumerate(self.up, start=15):
            y = up(y)
            y = self._norm(i, y, s)
        y = conv(y, self.out.single, channels_last=True) if nnpack else self.out(y).float()  # (bf16: 3 channels)
        return torch.sigmoid_(self._norm(17, y, s, relu=False))


def fast_multistyle_net(net: nn.Module) -> FastMultiStyleNet:
    """The inference form of the built-in MultiStyleNet (eval mode, no gradients), channels-last: with
    its 4->3-channel 9x9 output convolution's weights in the default layout, oneDNN took 4x as long."""
    return FastMultiStyleNet(net).eval().to(memory_format=torch.channels_last)


def fast_transformer_net(net: nn.Module) -> FastTransformerNet:
    """The inference form of a loaded TransformerNet (eval mode, no gradients), channels-last."""
    return FastTransformerNet(net).eval().to(memory_format=torch.channels_last)
