"""stylebatch's CPU kernels in C (the `_native` library, setup.py): the instance norms
(`_instance_norm.c`: one call a picture, 2-4x torch's operations) and the first layer's input in
column pairs (`_column_pairs.c`, for fast_nets.column_pair_conv).

Plain C (no Python API), built by pip as an optional extension and loaded here with ctypes: nothing
to build against, and each call releases the interpreter lock, so a rank's pipelines run them at
once. Where the library was not built (pip found no C compiler) or `STYLEBATCH_NATIVE=0` is set
(benchmarks, side by side), `available()` is False, the functions here return False and fast_nets
uses torch's operations: the same results, slower.

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
_LONG, _PTR = ctypes.c_long, ctypes.c_void_p


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
                norm, pairs = lib.stylebatch_instance_norm, lib.stylebatch_column_pairs
            except (OSError, AttributeError):  # another platform's build, a damaged or older file
                return None
            norm.restype = ctypes.c_int
            norm.argtypes = [_PTR, ctypes.c_int, ctypes.c_int, _LONG, _LONG, _PTR, _PTR, ctypes.c_int, _PTR, _LONG,
                             ctypes.c_double, ctypes.c_double, ctypes.c_int]
            pairs.restype = None
            pairs.argtypes = [_PTR, _LONG, _LONG, _LONG, _LONG, _LONG, _PTR, _LONG]
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
    return (t.device.type == "cpu" and t.dtype in _DTYPES and t.numel() > 0 and not t.is_neg()
            and not t.is_conj())


def column_pairs(x: torch.Tensor, pad: int, shift: int) -> torch.Tensor | None:
    """x [B,C,H,W] (bf16, channels-last) reflection-padded by `pad`, beside itself shifted `shift`
    columns: [B, 2C, H + 2 pad, W + shift - 1] channels-last (the columns a (2 pad + 1) x shift
    convolution needs for W outputs), the second C channels 0 past the padded width (_column_pairs.c);
    None where the library is not there or does not take x."""
    lib = _library()
    b, c, h, w = x.shape
    if (lib is None or x.dtype != torch.bfloat16 or x.device.type != "cpu" or not x.is_contiguous(
            memory_format=torch.channels_last) or x.is_neg() or x.is_conj() or x.numel() == 0 or x.requires_grad
            or not 0 <= pad < min(h, w) or not 0 < shift <= w):  # (autograd cannot see through C)
        return None
    ow = w + shift - 1
    out = torch.empty((b, 2 * c, h + 2 * pad, ow), dtype=x.dtype, memory_format=torch.channels_last)
    for i in range(b):
        lib.stylebatch_column_pairs(x[i].data_ptr(), h, w, c, pad, shift, out[i].data_ptr(), ow)
    return out
