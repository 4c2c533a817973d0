"""Local files as both backends write and read them: atomically replaced, errors translated."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import secrets
from typing import IO, Iterator

from stylebatch.errors import StylebatchError
from stylebatch.storage import tuning
from stylebatch.storage.errors import local_errors
from stylebatch.storage.scrub import printable

PARTIAL = re.compile(r"^\..+\.[0-9a-f]{8}\.partial$")  # the temp files of atomic_file
_CHUNK = 4 * 1024 * 1024


@contextlib.contextmanager
def atomic_file(dest: pathlib.Path) -> Iterator[IO[bytes]]:
    """A temp file next to dest, renamed over it only once fully written and synced."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.parent / f".{dest.name[:200]}.{secrets.token_hex(4)}.partial"
    try:
        with open(temp, "xb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def partials_of(dest: pathlib.Path) -> list[pathlib.Path]:
    """The temp files atomic_file left for dest (a write that was killed), and no other file."""
    pattern = re.compile(re.escape(f".{dest.name[:200]}.") + r"[0-9a-f]{8}\.partial")
    try:
        return [p for p in dest.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return []


def open_source(source: pathlib.Path, display: str) -> IO[bytes]:
    """Open a local file to copy or upload; a StylebatchError naming display if it can't be read."""
    with local_errors(display, "read"):
        if source.is_dir():
            raise StylebatchError(f"{display} is a folder, not a file")
        return tuning.open_file(source)


def copy_file(source: pathlib.Path, source_display: str, dest: pathlib.Path, dest_display: str | None = None) -> None:
    dest_display = dest_display or printable(str(dest))
    reader = open_source(source, source_display)
    with reader, local_errors(dest_display, "write"), atomic_file(dest) as out:
        while True:
            with local_errors(source_display, "read"):
                chunk = reader.read(_CHUNK)
            if not chunk:
                break
            out.write(chunk)
