"""Shared fixtures live in plugin modules next to this file, one per concern."""

import os
import shutil
import tempfile

from mpi_shm import mpi_shm_files, remove_orphaned_mpi_shm

from stylebatch.contract import HWLOC_XMLFILE_ENV, no_topology_file

pytest_plugins = ["azurite_fixture", "clips", "weights_fixtures"]

# `stylebatch run` without --work keeps its work dir under the user's cache folder: the tests' runs
# (and their subprocesses, which inherit this) use a folder of their own instead of ~/.cache.
_CACHE = os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="stylebatch-test-cache-")

# A bare `mpiexec` in a test (as the operator's launcher runs one) would have MPICH's proxy write the
# machine's topology to a hard-coded /tmp/hydra_hwloc_xmlfile_* and leave it there when a rank aborts;
# with HWLOC_XMLFILE set, as the product sets it for its own mpiexec, it writes none.
os.environ[HWLOC_XMLFILE_ENV] = no_topology_file(_CACHE)

_SHM_BEFORE = mpi_shm_files()  # MPI segment files no test made: never removed


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_CACHE, ignore_errors=True)
    remove_orphaned_mpi_shm(_SHM_BEFORE)
