"""Shared fixtures live in plugin modules next to this file, one per concern."""

import os
import shutil
import tempfile
from pathlib import Path

pytest_plugins = ["azurite_fixture", "clips"]

# `stylebatch run` without --work keeps its work dir under the user's cache folder: the tests' runs
# (and their subprocesses, which inherit this) use a folder of their own instead of ~/.cache.
_CACHE = os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="stylebatch-test-cache-")

# MPI's shared-memory segment files (MPICH keeps its 2 MiB one until MPI_Finalize, which a rank the
# tests SIGKILL on purpose never reaches): those made during the session and mapped by no process
# when it ends are removed, so the tests do not leave memory behind in /dev/shm run after run.
SHM = Path("/dev/shm")
MPI_SHM_PREFIXES = ("mpich_shm_", "ucx_shm_")


def mpi_shm_files() -> set[str]:
    return {p.name for p in SHM.iterdir() if p.name.startswith(MPI_SHM_PREFIXES)} if SHM.is_dir() else set()


def mapped_shm_files() -> set[str]:
    """The /dev/shm files some process on this machine has mapped (its /proc/<pid>/maps names them)."""
    names = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            names.update(line.rsplit("/dev/shm/", 1)[1].split(" ")[0] for line in maps.read_text().splitlines()
                         if "/dev/shm/" in line)
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return names


_SHM_BEFORE = mpi_shm_files()


def remove_orphaned_mpi_shm(before: set[str]) -> list[str]:
    """Remove the MPI segment files made since `before` that no process maps (their job is gone)."""
    orphans = sorted(mpi_shm_files() - before - mapped_shm_files())
    for name in orphans:
        (SHM / name).unlink(missing_ok=True)
    return orphans


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_CACHE, ignore_errors=True)
    remove_orphaned_mpi_shm(_SHM_BEFORE)
