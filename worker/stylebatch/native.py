"""stylebatch's CPU kernels in C (the `_native` library, setup.py): the instance norms
(`_instance_norm.c`: one call a picture, 2-4x torch's operations), padded copies of channels-last
pictures (`_padding.c`: fast_nets' reflection-padded strips, the first layer's input in column pairs)
and a frame's conversions into and out of the networks (`_frames.c`, for models.Stylizer).

Plain C (no Python API), built by pip as an optional extension and loaded here with ctypes: nothing
to build against, and each call releases the interpreter lock, so a rank's pipelines run them at
once. Where the library was not built (pip found no C compiler) or `STYLEBATCH_NATIVE=0` is set
(benchmarks, side by side), `available()` is False, the functions here return False and fast_nets
uses torch's operations: slower, the same pictures to within rounding (the copies and
conversions bit for bit; the norms sum in another order: 48 dB against the C path in bf16, 1 level at
most in fp32).

instance_norm_'s contract (the C file's top comment): in place, fp32 or bf16, channels-last or NCHW
pictures, the statistics of deviations from a shift near each channel's mean, a channel constant but
for rounding becomes its bias, then the ReLU and/or a residual added, rounded once; as many threads
as torch has for large pictures, with the same bits for any number of them.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
from pathlib import Path

import torch

_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_PIXELS, _ROWS = 0, 1  # channels-last [H*W][C], NCHW [C][H*W]
MAX_CHANNELS = 1024  # _instance_norm.c's MAX_CHANNELS
_LONG, _PTR, _INT = ctypes.c_long, ctypes.c_void_p, ctypes.c_int
_REFLECT, _REPLICATE = 0, 1  # _padding.c's modes
FRAME_CHANNELS = 16  # _frames.c's MAX_CHANNELS
_SIGNATURES = {  # the library's entry points: (restype, argtypes)
    "stylebatch_instance_norm": (_INT, [_PTR, _INT, _INT, _LONG, _LONG, _PTR, _PTR, _INT, _PTR, _LONG,
                                        ctypes.c_double, ctypes.c_double, _INT]),
    "stylebatch_column_pairs": (None, [_PTR, _LONG, _LONG, _LONG, _LONG, _LONG, _PTR, _LONG]),
    "stylebatch_row_strip": (None, [_PTR, _LONG, _LONG, _LONG, _LONG, _LONG, _LONG, _LONG, _INT, _LONG, _PTR]),
    "stylebatch_interleave": (None, [_PTR, _LONG, _LONG, _LONG, _LONG, _PTR]),
    "stylebatch_frames_to_unit": (None, [_PTR, _LONG, _PTR]),
    "stylebatch_centred": (_INT, [_PTR, _LONG, _LONG, _INT, _PTR]),
    "stylebatch_frames_from_unit": (None, [_PTR, _LONG, _PTR]),
}


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The C library with its entry points' signatures, or None where it is not there (or switched off)."""
    if os.environ.get("STYLEBATCH_NATIVE", "1") == "0":
        return None
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_native{suffix}"
        if path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
                for name, (restype, argtypes) in _SIGNATURES.items():
                    fn = getattr(lib, name)
                    fn.restype, fn.argtypes = restype, argtypes
            except (OSError, AttributeError):  # another platform's build, a damaged or older file
                return None
            return lib
    return None


def _kernel():
    """The instance norm's entry point, or None."""
    lib = _library()
    return None if lib is None else lib.stylebatch_instance_norm


def available() -> bool:
    """Whether the C library is there and switched on."""
    return _library() is not None


def _layout(x: torch.Tensor) -> int | None:
    if x.is_contiguous(memory_format=torch.channels_last):
        return _PIXELS
    if x.is_contiguous():
        return _ROWS
    return None


def instance_norm_(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool,
                   residual: torch.Tensor | None, sample_stride: int, flat: float, eps: float = 1e-5) -> bool:
    """Normalise x [B,C,H,W] in place (then the ReLU, then + residual) and return True; False, with x
    untouched, where the kernel does not take it (torch's operations then do, or say what is wrong):
    not built, not a CPU fp32/bf16 picture in one of its two layouts, a view whose values are not its
    memory's (negated, conjugated), weights of another length than C, or a residual of another shape,
    type or layout or sharing x's memory. weight, bias: [C]. Autograd sees the write (x's version)."""
    fn = _kernel()
    if fn is None or not _takes(x) or x.shape[1] > MAX_CHANNELS:
        return False
    if x.requires_grad or (residual is not None and residual.requires_grad):  # autograd could not differentiate it
        return False
    b, c, h, w = x.shape
    if any(t.numel() != c or t.device.type != "cpu" for t in (weight, bias)):
        return False
    layout = _layout(x)
    if layout is None or (residual is not None and (
            not _takes(residual) or residual.dtype != x.dtype or residual.shape != x.shape
            or residual.stride() != x.stride()
            or residual.untyped_storage().data_ptr() == x.untyped_storage().data_ptr())):  # read while written
        return False
    weight, bias = weight.detach().float().contiguous(), bias.detach().float().contiguous()
    threads = torch.get_num_threads()
    for i in range(b):
        done = fn(x[i].data_ptr(), _DTYPES[x.dtype], layout, h * w, c, weight.data_ptr(), bias.data_ptr(), int(relu),
                  None if residual is None else residual[i].data_ptr(), sample_stride, flat, eps, threads)
        if done != 0:  # it takes every picture that passed the checks above, given a few KiB of memory
            raise MemoryError(f"no memory for the instance norm of a {tuple(x.shape)} picture")
    torch.autograd.graph.increment_version(x)  # as an in-place torch operation would: a saved x is now stale
    return True


def _takes(t: torch.Tensor) -> bool:
    """A CPU fp32/bf16 tensor whose values are its memory's, with some values."""
    return t.device.type == "cpu" and t.dtype in _DTYPES and t.numel() > 0 and _in_memory(t)


def _in_memory(t: torch.Tensor) -> bool:
    """Whether t's values are what its memory holds: not a negated or conjugated view, nor one of
    autograd's zero tensors (no memory at all: its data pointer is 0)."""
    return not (t.is_neg() or t.is_conj() or t._is_zerotensor())


def column_pairs(x: torch.Tensor, pad: int, shift: int) -> torch.Tensor | None:
    """x [B,C,H,W] (bf16, channels-last) reflection-padded by `pad`, beside itself shifted `shift`
    columns: [B, 2C, H + 2 pad, W + shift - 1] channels-last (the columns a (2 pad + 1) x shift
    convolution needs for W outputs), the second C channels 0 past the padded width (_padding.c);
    None where the library is not there or does not take x."""
    lib = _library()
    if lib is None or x.dim() != 4:
        return None
    b, c, h, w = x.shape
    if (x.dtype != torch.bfloat16 or not _takes(x) or not x.is_contiguous(memory_format=torch.channels_last)
            or x.requires_grad
            or not 0 <= pad < min(h, w) or not 0 < shift <= w):  # (autograd cannot see through C)
        return None
    ow = w + shift - 1
    out = torch.empty((b, 2 * c, h + 2 * pad, ow), dtype=x.dtype, memory_format=torch.channels_last)
    for i in range(b):
        lib.stylebatch_column_pairs(x[i].data_ptr(), h, w, c, pad, shift, out[i].data_ptr(), ow)
    return out


def row_strip(x: torch.Tensor, r0: int, r1: int, pad: int, mode: str, extra: int = 0) -> torch.Tensor | None:
    """Rows [r0, r1) of x [B,C,H,W] (fp32 or bf16, channels-last) padded by `pad` columns each side,
    rows and columns outside x as `mode` ("reflect" or "replicate") pads them, then `extra` zero
    columns on the right: [B, C, r1 - r0, W + 2 pad + extra] channels-last, made in C in one pass
    (_padding.c; F.pad(x, [pad] * 4, mode) is the strip of rows [-pad, H + pad)). None where the
    library is not there or does not take x: another type or layout, autograd tracking it, or a
    reflection reaching past the far edge (torch's F.pad refuses those too)."""
    lib = _library()
    if lib is None or x.dim() != 4:
        return None
    b, c, h, w = x.shape
    if (mode not in ("reflect", "replicate") or not _takes(x) or x.requires_grad
            or not x.is_contiguous(memory_format=torch.channels_last) or not -2**62 < r0 < r1 < 2**62
            or not 0 <= pad < 2**62 or not 0 <= extra < 2**62):  # (the C code's longs)
        return None
    if mode == "reflect" and not reflects_once(h, w, r0, r1, pad):
        return None
    ow = w + 2 * pad + extra
    out = torch.empty((b, c, r1 - r0, ow), dtype=x.dtype, memory_format=torch.channels_last)
    for i in range(b):
        lib.stylebatch_row_strip(x[i].data_ptr(), h, w, c, x.element_size(), r0, r1, pad,
                                 _REFLECT if mode == "reflect" else _REPLICATE, extra, out[i].data_ptr())
    return out


def reflects_once(h: int, w: int, r0: int, r1: int, pad: int) -> bool:
    """Whether rows [r0, r1) of an h x w picture padded by `pad` columns each side lie within one
    reflection of it (what F.pad's reflect takes; row_strip in C and in torch refuse the rest)."""
    return -(h - 1) <= r0 and r1 <= 2 * h - 1 and pad < w


def interleave(y: torch.Tensor, out: torch.Tensor) -> bool:
    """The four phases of fast_nets.UpsampleConv2x's band, y [B, 4 Co, n + 1, W + 1] (channels-last,
    phase-major channels: phase 2a + b), into out [B, n, 2, W, 2, Co] (each image's contiguous):
    out[:, i, a, j, b] = y[:, (2a + b) Co:(2a + b + 1) Co, i + a, j + b], in C in one pass
    (_padding.c); False, with out untouched, where the library is not there or does not take them."""
    lib = _library()
    if lib is None or y.dim() != 4 or out.dim() != 6:
        return False
    b, n, two, w, two_, co = out.shape
    if (not _takes(y) or y.requires_grad or y.dtype != out.dtype or not _takes(out) or out.requires_grad
            or (two, two_) != (2, 2) or tuple(y.shape) != (b, 4 * co, n + 1, w + 1)
            or not y.is_contiguous(memory_format=torch.channels_last)
            or not out[0].is_contiguous()  # (a band of a batch: each image's is contiguous...)
            or (b > 1 and abs(out.stride(0)) < out[0].numel())):  # (...and apart from the others)
        return False
    for i in range(b):
        lib.stylebatch_interleave(y[i].data_ptr(), n, w, co, y.element_size(), out[i].data_ptr())
    torch.autograd.graph.increment_version(out)
    return True


def frames_to_unit(frames: torch.Tensor) -> torch.Tensor | None:
    """uint8 RGB frames [B,H,W,3] (contiguous) as the networks' input: [B,3,H,W] fp32 0..1,
    channels-last (`frames.permute(0, 3, 1, 2).float().div_(255)`, the same bits, one pass); None where
    the library is not there or does not take them."""
    lib = _library()
    if (lib is None or frames.dtype != torch.uint8 or frames.device.type != "cpu" or frames.dim() != 4
            or not frames.is_contiguous() or frames.requires_grad or not _in_memory(frames)):
        return None
    out = torch.empty(frames.shape, dtype=torch.float32)
    lib.stylebatch_frames_to_unit(frames.data_ptr(), frames.numel(), out.data_ptr())
    return out.permute(0, 3, 1, 2)


def centred(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """x [B,C,H,W] (fp32, channels-last, C <= FRAME_CHANNELS) less each picture's channel means, in
    `dtype` (fp32 or bf16), rounded once, in one pass after the sums (_frames.c), the means summed in
    doubles as models.centred_means sums them in torch: the same bits wherever those sums are exact,
    as they are for frames as decoded (k/255 values) up to 4 M pixels; elsewhere a mean may differ in
    its last bit (an fp32 sum's last bit depends on its order, and moved thousands of a frame's
    values). None where the library is not there or does not take x."""
    lib = _library()
    if lib is None or x.dim() != 4:
        return None
    b, c, h, w = x.shape
    if (dtype not in _DTYPES or x.dtype != torch.float32 or not _takes(x) or x.requires_grad
            or not x.is_contiguous(memory_format=torch.channels_last) or c > FRAME_CHANNELS):
        return None
    out = torch.empty(x.shape, dtype=dtype, memory_format=torch.channels_last)
    for i in range(b):
        lib.stylebatch_centred(x[i].data_ptr(), h * w, c, _DTYPES[dtype], out[i].data_ptr())
    return out


def frames_from_unit(y: torch.Tensor) -> torch.Tensor | None:
    """A network's 0..1 pictures [B,3,H,W] (fp32, channels-last) as uint8 frames [B,H,W,3]: times 255,
    rounded to nearest even, clamped (NaN: 0), one pass (`y.mul(255).round_().clamp_(0, 255)
    .to(torch.uint8).permute(0, 2, 3, 1)`, the same bits); None where the library is not there or
    does not take y."""
    lib = _library()
    if (lib is None or y.dtype != torch.float32 or not _takes(y) or y.dim() != 4 or y.requires_grad
            or not y.is_contiguous(memory_format=torch.channels_last)):
        return None
    out = torch.empty((y.shape[0], y.shape[2], y.shape[3], y.shape[1]), dtype=torch.uint8)
    lib.stylebatch_frames_from_unit(y.data_ptr(), y.numel(), out.data_ptr())
    return out
