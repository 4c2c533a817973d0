"""Shared fixtures live in plugin modules next to this file, one per concern."""

import os
import shutil
import tempfile

pytest_plugins = ["azurite_fixture", "clips"]

# `stylebatch run` without --work keeps its work dir under the user's cache folder: the tests' runs
# (and their subprocesses, which inherit this) use a folder of their own instead of ~/.cache.
_CACHE = os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="stylebatch-test-cache-")


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_CACHE, ignore_errors=True)
