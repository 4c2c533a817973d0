"""Locations on the local filesystem: a file, or a folder holding files."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import pathlib
import shutil
import tempfile
from typing import Iterator

from stylebatch.errors import StylebatchError
from stylebatch.storage.base import IDENTITY_SPAN, FileInfo, HeldLock, Location, LockBusy, identity_record
from stylebatch.storage.errors import local_errors, os_error
from stylebatch.storage.files import PARTIAL, atomic_file, copy_file
from stylebatch.storage.scrub import printable


# why no file can be made in a folder that is there, where strerror would say something else
_CANNOT_CREATE = {
    errno.ENOENT: "a virtual file system, which takes no new files",  # /proc; strerror: "No such file or directory"
    errno.EROFS: "it is on a read-only file system",
}


def special_file(path: pathlib.Path) -> str | None:
    """What `path` is where it is there but not a regular file or a folder ("a FIFO (named pipe)", "a
    device"), else None. Such an input was read as if it were a file: a FIFO blocked the run forever
    before it said anything, /dev/null was "not found"; a video is read twice and sought in."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


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
        return [info for info in (_file_info(self.path / name, name) for name in self.list()) if info is not None]

    def info(self) -> FileInfo | None:
        """This file's size and "ETag" (size and modification time) as they are now; None when there is no
        such file."""
        return _file_info(self.path, self.path.name)

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
            above = next((p for p in (parent, *parent.parents) if p.exists()), None)
            if above is not None and not above.is_dir():  # a file where a folder of the path goes
                raise StylebatchError(f"cannot write {self.display}: {printable(str(above))} is a file, not a folder")
            raise StylebatchError(f"cannot write {self.display}: the folder {printable(str(parent))} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StylebatchError(f"cannot write {self.display}: the folder {printable(str(parent))} "
                                  f"is not writable")
        try:  # what access() cannot tell (root on a read-only mount or in /sys, an immutable folder): a real file
            fd, probe = tempfile.mkstemp(prefix=".stylebatch-probe-", dir=parent)
        except OSError as exc:
            why = _CANNOT_CREATE.get(exc.errno) or exc.strerror or type(exc).__name__
            raise StylebatchError(f"cannot write {self.display}: the folder {printable(str(parent))} "
                                  f"is not writable ({why})") from None
        os.close(fd)
        with contextlib.suppress(OSError):  # written is what was asked (an append-only folder keeps it)
            os.unlink(probe)

    def identity(self) -> dict[str, str | int]:
        with local_errors(self.display, "read"):
            self._require_file()
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                head = f.read(IDENTITY_SPAN)
                f.seek(max(0, st.st_size - IDENTITY_SPAN))
                tail = f.read(IDENTITY_SPAN)
        return identity_record(st.st_size, f"mtime_ns:{st.st_mtime_ns}", head, tail)

    def lock(self, holder: dict[str, str]) -> HeldLock:
        """flock(2) on this file: the kernel lets go when the holder dies, however it dies."""
        with local_errors(self.display, "lock"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    busy = LockBusy(_read_holder(fd))
                    os.close(fd)
                    raise busy from None
                if _same_file(fd, self.path):
                    break
                os.close(fd)  # the holder deleted the file as we opened it: lock the new one
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        return _FileLock(fd, self.path, holder["token"])

    def lock_held_by(self, token: str) -> bool:
        holder = self.lock_holder()
        return holder is not None and holder.get("token") == token

    def lock_holder(self) -> dict | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it
        except BlockingIOError:
            return _read_holder(fd)
        finally:
            os.close(fd)

    def is_local(self) -> bool:
        return True

    def local_path(self) -> pathlib.Path:
        return self.path

    def _require_file(self) -> None:
        if self.path.is_dir():
            raise StylebatchError(f"{self.display} is a folder, not a file")
        if kind := special_file(self.path):
            raise StylebatchError(f"{self.display} is {kind}, not a file")

    def _files(self) -> Iterator[str]:
        """Relative names of the files under this folder, minus in-progress atomic writes."""
        for folder, _, files in os.walk(self.path, onerror=self._raise_walk_error):
            rel = pathlib.PurePath(folder).relative_to(self.path)
            yield from ((rel / f).as_posix() for f in files if not PARTIAL.match(f))

    def _raise_walk_error(self, exc: OSError) -> None:
        if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            raise os_error(exc, self.display, "list")


def _file_info(path: pathlib.Path, name: str) -> FileInfo | None:
    """What a listing shows of one file, or None where there is none: deleted since the walk, a
    symbolic link to nothing or one going round in a loop (ELOOP: no file at the end of it)."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise os_error(exc, printable(str(path)), "list") from None
    return FileInfo(name, st.st_size, f"{st.st_size}-{st.st_mtime_ns}", st.st_mtime)


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: pathlib.Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class _FileLock(HeldLock):
    def __init__(self, fd: int, path: pathlib.Path, token: str) -> None:
        self.fd, self.path, self.token = fd, path, token

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            self.path.unlink()  # while still locked: whoever locks the old file next sees it is gone
        except OSError:
            pass
        os.close(self.fd)  # closing the only descriptor drops the flock
        self.fd = -1
