"""MPI's shared-memory segment files in /dev/shm, for the suite's clean-up (conftest.py)."""

import os
from pathlib import Path

from stylebatch.ranks import MPI_SHARED_MEMORY

# MPI's shared-memory segment files (MPICH keeps its 2 MiB one until MPI_Finalize, which a rank the
# tests SIGKILL on purpose never reaches): those made during the session and mapped by no process
# when it ends are removed, so the tests do not leave memory behind in /dev/shm run after run.
SHM = Path("/dev/shm")
MPI_SHM_PREFIXES = tuple(Path(prefix).name for prefix in MPI_SHARED_MEMORY)  # mpich_shm_, ucx_shm_


def mpi_shm_files() -> set[str]:
    """This user's MPI segment files (another user's are not ours to remove: /dev/shm is sticky)."""
    if not SHM.is_dir():
        return set()
    mine = set()
    for p in SHM.iterdir():
        try:
            if p.name.startswith(MPI_SHM_PREFIXES) and p.stat().st_uid == os.getuid():
                mine.add(p.name)
        except OSError:
            continue  # gone meanwhile
    return mine


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



def remove_orphaned_mpi_shm(before: set[str]) -> list[str]:
    """Remove the MPI segment files made since `before` that no process maps (their job is gone)."""
    orphans = sorted(mpi_shm_files() - before - mapped_shm_files())
    for name in orphans:
        try:
            (SHM / name).unlink()
        except OSError:
            continue  # gone meanwhile, or not ours after all: never a failure of the session
    return orphans
