"""Checks on a user's weights file that run before and after torch unpacks it.

A `.pth` is a zip archive: its records can be deflated, so a few megabytes can claim gigabytes.
`load_state` is the one place a user's file goes through `torch.load`; `check_unpacked_size` reads only the zip's directory and refuses a file whose records declare far
more bytes than a TransformerNet holds, before torch allocates anything; `check_finite` refuses
weights with NaN or infinity, which would paint every frame black or noise.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from stylebatch.errors import StylebatchError

# A fast_neural_style TransformerNet has 1.7 M parameters: 6.7 MB as float32, 13 MB as float64.
MAX_UNPACKED_BYTES = 64 * 1024 * 1024


def check_unpacked_size(path: Path, limit: int = MAX_UNPACKED_BYTES) -> None:
    """Refuse a weights file whose contents would unpack to more than `limit` bytes: a zip's
    declared record sizes are summed (nothing is decompressed); any other file counts as it is."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                total = sum(max(0, info.file_size) for info in archive.infolist())
        else:
            total = path.stat().st_size
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise StylebatchError(f"cannot load style file {path}: not a PyTorch checkpoint, or corrupt "
                              f"({type(exc).__name__})") from None
    if total > limit:
        raise StylebatchError(
            f"style file {path} would unpack to {total / 2**20:,.0f} MiB, far more than a fast_neural_style "
            f"TransformerNet ({limit // 2**20} MiB at most): refusing to load it")


def plain_real(tensor: object) -> bool:
    """A dense tensor of real numbers at least 16 bits wide (or integers): what weights are. Complex,
    sparse, quantized and 8-bit float tensors are not (torch would warn, fail or lose the imaginary part)."""
    return (isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided and not tensor.is_complex()
            and not tensor.is_quantized and not (tensor.is_floating_point() and tensor.element_size() < 2))


def check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights that are not plain real tensors (plain_real) or hold NaN or infinity."""
    for key, tensor in state.items():
        if not plain_real(tensor):
            raise StylebatchError(f"style file {path} holds {key} as a {tensor.dtype} tensor ({tensor.layout}): "
                                  "weights are dense tensors of real numbers")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise StylebatchError(f"style file {path} has {bad} weight(s) that are not finite (NaN or "
                                  f"infinity) in {key}: the training run diverged; use another checkpoint")


def load_state(path: Path, what: str) -> object:
    """`torch.load` of a user's file (weights only, onto the CPU): whatever torch raises or warns on a
    foreign, corrupt or truncated file (pickle, zip, EOF errors; a "pickle protocol" warning when its
    first bytes happen to look like a pickle) becomes one line naming `what` (e.g. "style file x.pth")."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warnings about the file are part of the failure, or noise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways, with pages of text
        why = ("it holds a pickled Python object, not a state dict (save model.state_dict())"
               if "Unsupported global" in str(exc) else "not a PyTorch checkpoint, or corrupt or truncated")
        raise StylebatchError(f"cannot load {what}: {why}") from None
