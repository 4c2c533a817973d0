"""Blob transfer tuning, and the seam through which local files are opened for reading. A leaf:
it imports nothing of the storage package, and the modules that use it look `settings` and
`open_file` up here on every call, so replacing them here (a test, or a caller tuning transfers)
takes effect at once."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import IO

_MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TransferSettings:
    """Blob transfer tuning. Files above max_single_put_size go up as staged blocks (committed at
    the end, so still atomic); downloads above max_single_get_size come down in ranged chunks."""

    max_concurrency: int = 4
    max_single_put_size: int = 64 * _MiB
    max_block_size: int = 8 * _MiB
    max_single_get_size: int = 32 * _MiB
    max_chunk_get_size: int = 8 * _MiB
    retry_total: int = 3
    retry_backoff_s: int = 2
    connection_timeout_s: float = 20.0
    read_timeout_s: float = 120.0


settings = TransferSettings()


def open_file(path: pathlib.Path) -> IO[bytes]:
    """Opens a local file to be copied or uploaded (a seam for fault-injection tests)."""
    return open(path, "rb")
