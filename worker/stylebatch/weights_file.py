"""Checks on a user's weights file that run before and after torch unpacks it.

A `.pth` is a zip archive: its records can be deflated, so a few megabytes can claim gigabytes.
`check_unpacked_size` reads only the zip's directory and refuses a file whose records declare far
more bytes than a TransformerNet holds, before torch allocates anything; `check_finite` refuses
weights with NaN or infinity, which would paint every frame black or noise.
"""

from __future__ import annotations

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


def check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise StylebatchError(f"style file {path} has {bad} weight(s) that are not finite (NaN or "
                                  f"infinity) in {key}: the training run diverged; use another checkpoint")
