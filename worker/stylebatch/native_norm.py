"""The CPU's instance norms in C (`_instance_norm.c`): one call a picture, 2-4x torch's operations.

A plain C library, built by pip from setup.py as an optional extension and loaded here with
ctypes (no Python API: nothing to build against, and the call releases the interpreter lock, so a
rank's pipelines normalise at the same time). Where it was not built (pip found no C compiler) or
`STYLEBATCH_NATIVE_NORM=0` is set (benchmarks, side by side), `instance_norm_` returns False and
fast_nets uses torch's operations: the same statistics, slower.

Contract (the C file's top comment): in place, fp32 or bf16, channels-last or NCHW pictures, the
statistics of deviations from a shift near each channel's mean, a channel constant but for
rounding becomes its bias, then the ReLU and/or a residual added, rounded once; as many threads as
torch has for large pictures, with the same bits for any number of them.
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
MAX_CHANNELS = 1024  # the C file's MAX_CHANNELS


@functools.lru_cache(maxsize=1)
def _kernel():
    """The C entry point, or None where the library is not there (or switched off)."""
    if os.environ.get("STYLEBATCH_NATIVE_NORM", "1") == "0":
        return None
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_instance_norm{suffix}"
        if path.is_file():
            try:
                fn = ctypes.CDLL(str(path)).stylebatch_instance_norm
            except (OSError, AttributeError):  # another platform's build, a damaged file
                return None
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long,
                           ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_long,
                           ctypes.c_double, ctypes.c_double, ctypes.c_int]
            return fn
    return None


def available() -> bool:
    """Whether the C kernel is there and switched on."""
    return _kernel() is not None


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
