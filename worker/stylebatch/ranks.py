"""Who am I in the MPI job: rank, world size and ranks on this node, from the launcher's environment."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    comm: Any = None  # mpi4py COMM_WORLD when under mpiexec, else None

    def abort(self, code: int) -> None:
        """End every rank now, so no rank waits for a job that already failed."""
        if self.comm is not None and self.size > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            unlink_mpi_shared_memory()
            time.sleep(0.5)  # let mpiexec forward this rank's last lines: Abort kills its I/O at once
            self.comm.Abort(code)


# Files in /dev/shm that MPICH (its intranode segment) and UCX keep until MPI_Finalize.
MPI_SHARED_MEMORY = ("/dev/shm/mpich_shm_", "/dev/shm/ucx_shm_")


def unlink_mpi_shared_memory(maps: str = "/proc/self/maps") -> list[str]:
    """Remove the names of the MPI shared-memory files this process has mapped (MPI_SHARED_MEMORY), for
    a job that is ending without MPI_Finalize (MPI_Abort): in memory until the machine restarts
    otherwise, 2 MiB per failed job (in the MPIJob's worker pods, counted against their memory limit
    for as long as the pod lives: /dev/shm is a memory emptyDir there). The ranks keep their
    mappings; the job's MPI_Finalize (never reached here) would be the only one to use the names.
    Returns the names removed."""
    try:
        lines = Path(maps).read_text().splitlines()
    except OSError:
        return []
    removed = []
    for line in lines:
        fields = line.split(maxsplit=5)
        path = fields[5] if len(fields) == 6 else ""
        if path.startswith(MPI_SHARED_MEMORY) and not path.endswith(" (deleted)") and path not in removed:
            try:
                os.unlink(path)
            except OSError:
                continue  # another rank of the job removed it first
            removed.append(path)
    return removed


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, "") and value.lstrip("-").isdigit():
            return int(value)
    return None


def detect() -> World:
    rank = _env_int("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
    size = _env_int("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
    if rank is None:
        return World()
    world = World(rank=rank, size=size or 1)
    try:
        from mpi4py import MPI  # initialising MPI is collective: every rank does it here, at start

        comm = MPI.COMM_WORLD
        world.comm, world.rank, world.size = comm, comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        world.local_rank, world.local_size = node.Get_rank(), node.Get_size()
        return world
    except Exception as exc:  # noqa: BLE001 - without mpi4py the launcher's variables still say enough
        log.warning("mpi4py unavailable (%s): ranks are not aborted together on failure", exc)
    world.local_rank = _env_int("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK") or 0
    world.local_size = _env_int("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE") or 1
    return world


def cpu_count() -> int:
    """CPUs this process may use: the affinity mask and, in a container, the cgroup CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


# MPICH's mpiexec ends a failed job with a banner ("BAD TERMINATION ... EXIT CODE: 9 ...") and a rank
# that aborts with "Abort(2) on node 0 (rank 0 in comm 0): application called MPI_Abort(...)": neither
# says anything a user can act on, so the launcher keeps them out of sight and says what happened instead.
HYDRA_BANNER = re.compile(r"^(=+\s*$|=   |YOUR APPLICATION TERMINATED|This typically refers|Please see the FAQ"
                          r"|Abort\(-?\d+\) on node |application called MPI_Abort)")
_KILLED = re.compile(r"EXIT CODE: 9\b|KILLED BY SIGNAL: 9\b|\(signal 9\)")


def killed_by_sigkill(banner: list[str]) -> bool:
    return any(_KILLED.search(line) for line in banner)


def oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer ended in this process's memory cgroup
    (v2 memory.events or v1 memory.oom_control), or None where that cannot be read."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":
            candidates += [os.path.join("/sys/fs/cgroup", path, "memory.events"), "/sys/fs/cgroup/memory.events"]
        elif "memory" in controllers.split(","):
            candidates += [os.path.join("/sys/fs/cgroup/memory", path, "memory.oom_control"),
                           "/sys/fs/cgroup/memory/memory.oom_control"]
    for candidate in candidates:
        try:
            for entry in Path(candidate).read_text().splitlines():
                key, _, value = entry.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    return int(value)
        except OSError:
            continue
    return None
