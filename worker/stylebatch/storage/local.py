"""Locations on the local filesystem: a file, or a folder holding files."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from typing import Iterator

from stylebatch.errors import StylebatchError
from stylebatch.storage.base import FileInfo, Location
from stylebatch.storage.errors import local_errors, os_error
from stylebatch.storage.files import PARTIAL, atomic_file, copy_file
from stylebatch.storage.scrub import printable


@dataclasses.dataclass(frozen=True, repr=False)
class LocalLocation(Location):
    uri: str = dataclasses.field(compare=False)  # "out/" and "out" are the same place
    path: pathlib.Path

    @property
    def display(self) -> str:  # type: ignore[override]
        return printable(str(self.path))

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.path.name

    def child(self, *parts: str) -> LocalLocation:
        path = self.path.joinpath(*self._child_segments(parts))
        return LocalLocation(uri=str(path), path=path)

    def exists(self) -> bool:
        return self.path.is_file() or next(self._files(), None) is not None

    def size(self) -> int:
        with local_errors(self.display, "read"):
            self._require_file()
            return self.path.stat().st_size

    def list(self) -> list[str]:
        return sorted(self._files())

    def list_info(self) -> list[FileInfo]:
        infos = []
        for name in self.list():
            try:
                st = (self.path / name).stat()
            except FileNotFoundError:  # deleted since the walk
                continue
            infos.append(FileInfo(name, st.st_size, f"{st.st_size}-{st.st_mtime_ns}", st.st_mtime))
        return infos

    def read_bytes(self) -> bytes:
        with local_errors(self.display, "read"):
            self._require_file()
            return self.path.read_bytes()

    def write_bytes(self, data: bytes) -> None:
        with local_errors(self.display, "write"), atomic_file(self.path) as out:
            out.write(data)

    def download(self, local_path: str | os.PathLike[str]) -> None:
        copy_file(self.path, self.display, pathlib.Path(local_path))

    def upload(self, local_path: str | os.PathLike[str]) -> None:
        source = pathlib.Path(local_path)
        copy_file(source, printable(str(source)), self.path, self.display)

    def delete(self) -> None:
        with local_errors(self.display, "delete"):
            if self.path.is_dir():
                raise StylebatchError(f"cannot delete {self.display}: it is a folder")
            self.path.unlink(missing_ok=True)

    def delete_tree(self) -> None:
        if not self.path.is_dir():
            return
        with local_errors(self.display, "delete"):
            shutil.rmtree(self.path)

    def check_writable(self) -> None:
        parent = self.path.absolute().parent
        if self.path.is_dir():
            raise StylebatchError(f"{self.display} is a folder, not a file")
        if not parent.is_dir():
            raise StylebatchError(f"cannot write {self.display}: the folder {printable(str(parent))} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StylebatchError(f"cannot write {self.display}: the folder {printable(str(parent))} "
                                  f"is not writable")

    def is_local(self) -> bool:
        return True

    def local_path(self) -> pathlib.Path:
        return self.path

    def _require_file(self) -> None:
        if self.path.is_dir():
            raise StylebatchError(f"{self.display} is a folder, not a file")

    def _files(self) -> Iterator[str]:
        """Relative names of the files under this folder, minus in-progress atomic writes."""
        for folder, _, files in os.walk(self.path, onerror=self._raise_walk_error):
            rel = pathlib.PurePath(folder).relative_to(self.path)
            yield from ((rel / f).as_posix() for f in files if not PARTIAL.match(f))

    def _raise_walk_error(self, exc: OSError) -> None:
        if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            raise os_error(exc, self.display, "list")
