"""Run a command under a hard memory limit for its whole process tree: a fresh memory cgroup
(v2, or v1 as on Docker hosts with cgroup v1), as a Kubernetes pod's memory limit would be.

The kernel kills a process of the tree when their memory together passes the limit, and reports
the tree's peak. Needs a writable cgroup hierarchy (root in a container, as here and in CI);
`available()` says why not otherwise.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

V2 = Path("/sys/fs/cgroup")
V1 = Path("/sys/fs/cgroup/memory")


@dataclass
class Capped:
    returncode: int
    stdout: str
    stderr: str
    peak: int  # bytes: the most the tree used at any time (anonymous memory and page cache)
    oom_killed: bool


def _make() -> tuple[Path, str, str, str]:
    """(folder, limit file, peak file, the file that counts OOM kills) of a fresh cgroup."""
    name = f"stylebatch-test-{secrets.token_hex(4)}"
    if (V2 / "cgroup.controllers").exists() and "memory" in (V2 / "cgroup.subtree_control").read_text().split():
        folder = V2 / name
        folder.mkdir()
        return folder, "memory.max", "memory.peak", "memory.events"
    if (V1 / "memory.limit_in_bytes").exists():
        folder = V1 / name
        folder.mkdir()
        return folder, "memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.oom_control"
    raise OSError("no cgroup v2 with the memory controller delegated and no cgroup v1 memory hierarchy")


def available() -> str | None:
    """None when memory cgroups can be made here, else why not."""
    try:
        folder = _make()[0]
    except OSError as exc:
        return f"cannot make a memory cgroup: {exc}"
    folder.rmdir()
    return None


def run_capped(limit: int, argv: list[str], timeout: float = 600, env: dict | None = None,
               nested: bool = False, companion: list[str] | None = None) -> Capped:
    """argv in a fresh cgroup limited to `limit` bytes (no swap); the cgroup is removed afterwards.
    nested: argv runs in a group of its own below the limited one (the limit is its parent's).
    companion: a command started first in the same group, which must print a line when ready
    (for example a process holding memory), stopped when argv ends."""
    folder, limit_file, peak_file, events_file = _make()
    inner = folder / "inner" if nested else folder
    helper = None
    try:
        (folder / limit_file).write_text(str(limit))
        swap = folder / ("memory.swap.max" if limit_file == "memory.max" else "memory.memsw.limit_in_bytes")
        if swap.exists():
            swap.write_text("0" if limit_file == "memory.max" else str(limit))
        if nested:
            if limit_file == "memory.max":
                (folder / "cgroup.subtree_control").write_text("+memory")
            inner.mkdir()
        procs = str(inner / "cgroup.procs")

        def enter() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        if companion:
            helper = subprocess.Popen(companion, stdout=subprocess.PIPE, text=True, preexec_fn=enter)
            helper.stdout.readline()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                                preexec_fn=enter)
        events = (folder / events_file).read_text()
        killed = any(line.split()[0] == "oom_kill" and int(line.split()[1]) > 0 for line in events.splitlines())
        return Capped(result.returncode, result.stdout, result.stderr, int((folder / peak_file).read_text()),
                      killed)
    finally:
        if helper is not None:
            helper.kill()
            helper.wait()
        for group in dict.fromkeys([inner, folder]):
            for _ in range(50):  # the last process may take a moment to leave
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
