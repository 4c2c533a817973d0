"""MPI's shared-memory segment files in /dev/shm, for the suite's clean-up (conftest.py)."""

from pathlib import Path

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



def remove_orphaned_mpi_shm(before: set[str]) -> list[str]:
    """Remove the MPI segment files made since `before` that no process maps (their job is gone)."""
    orphans = sorted(mpi_shm_files() - before - mapped_shm_files())
    for name in orphans:
        (SHM / name).unlink(missing_ok=True)
    return orphans
