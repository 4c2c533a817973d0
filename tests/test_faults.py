"""The worker under faults a user meets: batch loops over stdin, signals, planted scratch paths, full
disks, odd timestamps, and the exit codes that tell a retry from a lost cause."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from clips import FAST_STYLE, count_frames, error_lines, stop_signals_at_default, stylebatch

pytestmark = pytest.mark.slow


def test_a_shell_loop_over_a_list_stylizes_every_video(clip, tmp_path: Path) -> None:
    """`while read f; do stylebatch run "$f" ...; done < list`: nothing may eat the rest of the list."""
    videos = [clip(f"v{i}.mp4", size=(64, 48), frames=4 + i) for i in range(3)]
    (tmp_path / "list").write_text("".join(f"{v}\n" for v in videos))
    (tmp_path / "out").mkdir()
    run = " ".join(map(shlex.quote, [sys.executable, "-m", "stylebatch", "run"]))
    script = (f'while read f; do {run} "$f" -o "{tmp_path}/out/$(basename "$f")" --workers 1 '
              f'{" ".join(FAST_STYLE)} || exit 1; done < "{tmp_path}/list"')
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["v0.mp4", "v1.mp4", "v2.mp4"], result.stderr
    assert [count_frames(tmp_path / "out" / v.name) for v in videos] == [4, 5, 6]


# --- signals and scratch space ---

def _wait_for(check, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"the run ended first: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _processes_mentioning(text: str) -> list[str]:
    """The command lines of this machine's processes whose command line holds `text`."""
    return [cmdline for _, cmdline in _mentioning(text)]


def _pids_mentioning(text: str) -> list[int]:
    return [pid for pid, _ in _mentioning(text)]


def _mentioning(text: str) -> list[tuple[int, str]]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(pid), cmdline))
    return found


def _two_rank_run(clip, tmp_path: Path) -> tuple[list[str], dict[str, str], Path, Path, Path]:
    """`stylebatch run` of a 120-frame clip on 2 ranks in chunks of 6, without --work, its cache and
    TMPDIR in tmp_path: (command, environment, cache, tmp, output)."""
    src = clip("long.mp4", size=(64, 48), frames=120)
    cache, tmp, out = tmp_path / "cache", tmp_path / "tmp", tmp_path / "o.mp4"
    tmp.mkdir()
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), TMPDIR=str(tmp))
    cmd = [sys.executable, "-m", "stylebatch", "run", str(src), "-o", str(out), "--workers", "2",
           "--chunk-frames", "6", *FAST_STYLE]
    return cmd, env, cache, tmp, out


def _said_interrupted(returncode: int, err: str, code: int, cache: Path) -> tuple[str, Path]:
    """An interrupted run's end: exit `code`, one error line that says so and how to resume, nothing but
    stylebatch's own lines (MPICH once said "Attempting to use an MPI routine (internal_Iprobe) ...
    after finalizing MPICH": the chunk counter's progress thread); (that line, the work dir kept)."""
    assert returncode == code and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("stylebatch: error:")]
    assert len(lines) == 1 and "interrupted" in lines[0] and "run the same command again" in lines[0], err
    assert [line for line in err.splitlines() if not line.startswith("stylebatch: ")] == [], err
    return lines[0], next(cache.rglob("stylebatch-work.json")).parent


@pytest.mark.mpi
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_a_signal_stops_the_ranks_says_where_the_work_is_and_the_same_command_resumes(sig: int, code: int, clip,
                                                                                        tmp_path: Path) -> None:
    """A run without --work, stopped like `kill`/`timeout`/Kubernetes (SIGTERM), Ctrl-C (SIGINT) or a
    closed terminal or ssh session (SIGHUP)."""
    cmd, env, cache, tmp, out = _two_rank_run(clip, tmp_path)
    # As from a terminal: SIGINT at its default even where the test runner was started in the
    # background (a non-interactive shell's `cmd &` ignores SIGINT, and Python keeps it ignored).
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=stop_signals_at_default)
    try:
        _wait_for(lambda: any(cache.rglob("parts/*.mkv")), proc)
        scratch = [p for p in tmp.rglob("*") if p.is_dir()]
        assert scratch and all(p.stat().st_mode & 0o077 == 0 for p in scratch), scratch  # private while it runs
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    line, work = _said_interrupted(proc.returncode, err, code, cache)
    assert str(work) in line
    assert os.listdir(tmp) == []  # no scratch and no copy of the input left behind
    assert _processes_mentioning(str(work)) == []  # mpiexec and every rank are gone
    done = sorted(p.name for p in (work / "parts").iterdir())
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr and count_frames(out) == 120
    left = set(re.findall(r": (\d+) of 20 chunks left to stylize", result.stderr))  # every rank says the same
    assert left == {str(20 - len(done))}  # the parts made before were kept
    assert not work.exists()  # the default work dir goes after success


@pytest.mark.mpi
@pytest.mark.parametrize("sig, code, which", [(signal.SIGTERM, 143, 0), (signal.SIGINT, 130, 1)])
def test_a_signal_to_one_rank_alone_ends_the_run_and_it_resumes(sig: int, code: int, which: int, clip,
                                                                  tmp_path: Path) -> None:
    """A stop signal aimed at one rank of two (`kill` of one process, an evicted worker pod): that rank
    finalized MPI, which waits for the other, and the other drew chunks from a counter whose rank was
    finalizing: the run hung until someone killed it, and MPICH's shared memory stayed in /dev/shm.
    Now the signalled rank aborts the job: the run ends interrupted, nothing is left, it resumes."""
    cmd, env, cache, tmp, out = _two_rank_run(clip, tmp_path)
    shm_before = set(Path("/dev/shm").glob("mpich_shm_*"))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=stop_signals_at_default)
    try:
        _wait_for(lambda: any(cache.rglob("parts/*.mkv")), proc)
        ranks = sorted(pid for pid, cmdline in _mentioning(" -m stylebatch stylize ")
                       if cmdline.startswith(sys.executable) and str(cache) in cmdline)  # not mpiexec's
        assert len(ranks) == 2, ranks
        os.kill(ranks[which], sig)
        _, err = proc.communicate(timeout=60)  # it hung here, forever
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _, work = _said_interrupted(proc.returncode, err, code, cache)
    assert _processes_mentioning(str(work)) == [] and os.listdir(tmp) == []
    assert set(Path("/dev/shm").glob("mpich_shm_*")) <= shm_before
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "resuming" in result.stderr, result.stderr
    assert count_frames(out) == 120


def _child_of(parent: int, text: str) -> int | None:
    """The pid of a child of `parent` whose command line holds `text`, if there is one now."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and text.encode() in cmdline:
            return int(pid)
    return None


def _preprocess_child(proc: subprocess.Popen) -> int:
    """The pid of the run's preprocess child, as soon as it exists."""
    child = None

    def found() -> bool:
        nonlocal child
        child = _child_of(proc.pid, "preprocess")
        return child is not None

    _wait_for(found, proc, timeout=60)
    return child


@pytest.mark.parametrize("sig, code, words", [
    # nothing to resume from before preprocess is done: run's own work dir goes ("nothing kept")
    (signal.SIGTERM, 143, ["preprocess", "interrupted", "before the input was read: nothing kept"]),
    (signal.SIGKILL, 75, ["preprocess was killed (signal 9) from outside stylebatch"]),
])
def test_the_preprocess_process_stopped_alone_is_named_and_nothing_is_published(sig: int, code: int,
                                                                                 words: list[str], clip,
                                                                                 tmp_path: Path) -> None:
    """`kill` aimed at the run's preprocess child only (an admin, a watchdog): the run says what
    happened to which stage, with the exit code of an interruption (the same command can resume) or
    of a kill from outside, publishes nothing and leaves no scratch. The child is frozen (SIGSTOP) as
    soon as it exists, so the signal lands while it starts, before its own handlers are in place.
    A kill from outside exits 75: the same command can work when tried again."""
    from stylebatch.ranks import oom_kills

    if sig == signal.SIGKILL and oom_kills() is None:
        pytest.skip("no memory cgroup's OOM count here: a SIGKILL is then taken for the OOM killer's")
    src = clip("in.mp4", size=(64, 48), frames=30)
    cache, tmp, out = tmp_path / "cache", tmp_path / "tmp", tmp_path / "o.mp4"
    tmp.mkdir()
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), TMPDIR=str(tmp))
    proc = subprocess.Popen([sys.executable, "-m", "stylebatch", "run", str(src), "-o", str(out), "--workers", "1",
                             *FAST_STYLE], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        child = _preprocess_child(proc)
        os.kill(child, signal.SIGSTOP)
        os.kill(child, sig)
        os.kill(child, signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code and "Traceback" not in err, err
    lines = error_lines(subprocess.CompletedProcess([], code, "", err))
    assert len(lines) == 1 and all(w in lines[0] for w in words), err
    assert not out.exists() and os.listdir(tmp) == []
    if sig == signal.SIGTERM:
        assert not any((cache / "stylebatch" / "work").iterdir())
    assert _processes_mentioning(str(src)) == []  # the child is gone, reaped
    assert _processes_mentioning(str(cache)) == []  # and the rank started beside it, waiting for it


def _ranks_of(cache: Path) -> list[int]:
    """Pids of the rank processes (`python -m stylebatch stylize --work <cache>/...`) now."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:4] == [sys.executable.encode(), b"-m", b"stylebatch", b"stylize"] and str(cache).encode() in b" ".join(argv):
            pids.append(int(pid))
    return pids


def _end_frozen_run(proc: subprocess.Popen, child: int | None) -> None:
    """After a test that froze a run's preprocess child: the run killed if it still goes, the child
    thawed (a frozen child would never act on its SIGTERM, the launcher gone)."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()
    if child is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGCONT)


def _imported_torch(pid: int) -> bool:
    try:
        return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _loaded_mpi(pid: int) -> bool:
    try:
        return "libmpi" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _shared_memory() -> set[str]:
    """The files in /dev/shm (MPICH's and UCX's shared memory among them)."""
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _local_weights(tmp_path: Path) -> list[str]:
    """A fast_neural_style .pth on this machine (untrained: its cost is a trained one's)."""
    import torch

    from stylebatch.transformer_net import TransformerNet

    torch.manual_seed(0)
    torch.save(TransformerNet().state_dict(), tmp_path / "net.pth")
    return ["--style", str(tmp_path / "net.pth"), "--max-side", "48"]


@pytest.mark.mpi
@pytest.mark.parametrize("style", [lambda tmp_path: FAST_STYLE, _local_weights], ids=["built-in", "local .pth"])
def test_the_ranks_start_beside_preprocess_and_touch_nothing_before_it_is_done(clip, tmp_path: Path, style) -> None:
    """On the CPU with a built-in style or a style file on this machine the ranks start with
    preprocess, so their torch import (most of a rank's start) overlaps it, and then wait for it: with
    preprocess frozen they are there, torch loaded, and the work dir holds nothing of theirs; thawed,
    the run finishes with those same ranks."""
    src = clip("in.mp4", size=(64, 48), frames=24)
    cache, out = tmp_path / "cache", tmp_path / "o.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "stylebatch", "run", str(src), "-o", str(out), "--workers", "2",
                             "--chunk-frames", "6", *style(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, XDG_CACHE_HOME=str(cache)))
    child = None
    try:
        child = _preprocess_child(proc)
        os.kill(child, signal.SIGSTOP)
        _wait_for(lambda: len(_ranks_of(cache)) == 2 and all(map(_imported_torch, _ranks_of(cache))), proc)
        ranks = sorted(_ranks_of(cache))
        time.sleep(0.5)  # beyond the gate they would read the work dir at once (and fail: no manifest yet)
        work = next(cache.rglob("stylebatch-work.json")).parent
        assert sorted(p.name for p in work.iterdir()) == ["stylebatch-work.json", "stylebatch.lock"]  # the run's
        assert not any(map(_loaded_mpi, ranks))  # nor MPI, whose start-up leaves files in /dev/shm if killed
        os.kill(child, signal.SIGCONT)
        seen, deadline = set(ranks), time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:  # (a rank lives seconds: none is missed)
            seen |= set(_ranks_of(cache))
            time.sleep(0.02)
        assert sorted(seen) == ranks  # the same ranks went on: none was started again
        _, err = proc.communicate(timeout=300)
    finally:
        _end_frozen_run(proc, child)
    assert proc.returncode == 0, err
    assert count_frames(out) == 24


@pytest.mark.mpi
def test_ranks_started_beside_preprocess_give_way_when_the_clip_needs_fewer(clip, tmp_path: Path) -> None:
    """A clip of one chunk with --workers 2: the two ranks started beside preprocess are stopped and one
    rank does the work (with all the cores); nothing is left running, nor in /dev/shm (a rank killed
    inside MPI_Init left MPICH's 2 MiB start-up file there, 1 run in 3)."""
    src = clip("short.mp4", size=(64, 48), frames=6)
    cache, out = tmp_path / "cache", tmp_path / "o.mp4"
    shared = _shared_memory()
    result = stylebatch("run", src, "-o", out, "--workers", "2", "--chunk-frames", "6", *FAST_STYLE,
                        env=dict(os.environ, XDG_CACHE_HOME=str(cache)))
    assert result.returncode == 0, result.stderr
    assert "1 chunk of work: running 1 rank, not 2" in result.stderr
    from stylebatch.ranks import cpu_count

    threads = f"{cpu_count()} thread{'' if cpu_count() == 1 else 's'}"
    assert f"rank 0/1: 1 of 1 chunk left to stylize, taken one at a time ({threads})" in result.stderr
    assert count_frames(out) == 6
    assert _ranks_of(cache) == []
    assert _shared_memory() - shared == set()


def test_a_rank_waiting_at_its_gate_whose_parent_is_gone_stops_waiting(tmp_path: Path) -> None:
    """A rank started beside preprocess waits for its gate file; should its parent (mpiexec's proxy,
    or the launcher of a lone rank) vanish without killing it, no gate will ever come: it exits
    rather than poll for ever."""
    from stylebatch.contract import START_GATE_ENV

    work = tmp_path / "work-never-made"
    env = dict(os.environ, **{START_GATE_ENV: str(tmp_path / "gate-never-made")})
    rank = f"{shlex.quote(sys.executable)} -m stylebatch stylize --work {shlex.quote(str(work))} --device cpu"
    # the shell becomes the rank's parent (exec sleep); it is killed only once the rank has noted its
    # parent and imported torch (so it sits at its gate), however slowly this machine starts Python
    parent = subprocess.Popen(["sh", "-c", f"{rank} & exec sleep 120"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(map(_imported_torch, _pids_mentioning(str(work)))) and time.monotonic() < deadline:
            assert parent.poll() is None
            time.sleep(0.05)
        parent.kill()
        parent.wait(timeout=30)
        assert _processes_mentioning(str(work))  # orphaned, at its gate
        deadline = time.monotonic() + 60
        while _processes_mentioning(str(work)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_mentioning(str(work)) == []
        assert not work.exists()
    finally:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if str(work).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(int(pid), signal.SIGKILL)


def test_kill_tree_takes_down_processes_in_sessions_of_their_own_that_ignore_sigterm(tmp_path: Path) -> None:
    """signals.kill_tree: a stage process whose grandchildren lead sessions of their own (as MPICH's
    proxy and ranks do) and ignore SIGTERM: it, they, and a child one of them starts while being
    stopped are all gone, and nothing else is touched."""
    from stylebatch.signals import children, kill_tree

    # bounded, so that even a failure here leaves nothing for long: at most 100 sleeps, 60 s each
    script = ("trap '' TERM; setsid sh -c \"trap '' TERM; sleep 60 & sleep 60\" & "
              "setsid sh -c \"trap '' TERM; i=0; while [ \\$i -lt 100 ]; do sleep 60 & sleep 0.1; i=\\$((i+1)); done\" & "
              "sleep 60")
    bystander = subprocess.Popen(["sleep", "60"])
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    sessions: set[int] = set()
    try:
        def tree(pid: int) -> list[int]:
            return [pid, *(d for c in children(pid) for d in tree(c))]

        def sessions_of_tree() -> set[int]:
            found = set()
            for p in tree(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    found.add(os.getsid(p))
            return found

        def ready() -> bool:
            sessions.update(sessions_of_tree())  # two of them out of reach of a signal to the process group
            return len(sessions) == 3 and len(tree(proc.pid)) >= 7

        _wait_for(ready, proc, timeout=30)
        kill_tree(proc.pid)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while _alive_in(sessions) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive_in(sessions) == []  # the children started meanwhile too
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        for pid in _alive_in(sessions | {proc.pid}):  # whatever a failure left
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _alive_in(sessions: set[int]) -> list[int]:
    """Processes of these sessions that are not dead (zombies waiting for init count as dead)."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # state ppid pgrp session
        except (OSError, IndexError):
            continue
        if int(fields[3]) in sessions and fields[0] != "Z":
            alive.append(int(pid))
    return alive


@pytest.mark.mpi
def test_ranks_started_beside_preprocess_and_not_needed_go_at_once_even_one_deaf_to_sigterm(clip, tmp_path: Path) -> None:
    """A clip of one chunk with --workers 2: the two ranks started beside preprocess are not needed,
    and are killed at once with every process under mpiexec (before their gate they have touched
    nothing), not asked with SIGTERM first: a rank that cannot act on it (stopped here; in the wild,
    inside MPI_Init waiting on a peer SIGTERM had already ended, 1 run in 5) held the run for the
    20 s before SIGKILL. The rank that does the work starts within seconds; nothing is left running."""
    src = clip("short.mp4", size=(64, 48), frames=6)
    cache, out = tmp_path / "cache", tmp_path / "o.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "stylebatch", "run", str(src), "-o", str(out), "--workers", "2",
                             "--chunk-frames", "6", *FAST_STYLE], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, XDG_CACHE_HOME=str(cache)))
    child, early = None, []
    try:
        child = _preprocess_child(proc)
        os.kill(child, signal.SIGSTOP)
        _wait_for(lambda: len(_ranks_of(cache)) == 2 and all(map(_imported_torch, _ranks_of(cache))), proc)
        early = _ranks_of(cache)
        os.kill(early[0], signal.SIGSTOP)  # deaf to SIGTERM until it is continued
        thawed = time.monotonic()
        os.kill(child, signal.SIGCONT)
        _wait_for(lambda: set(_ranks_of(cache)) - set(early), proc, timeout=60)
        waited = time.monotonic() - thawed
        _, err = proc.communicate(timeout=300)
    finally:
        _end_frozen_run(proc, child)
        for pid in set(early) & set(_ranks_of(cache)):  # a frozen rank left by a failure
            os.kill(pid, signal.SIGKILL)
    # (under the 20 s a SIGTERM-first end took, with room for a slow machine to start the rank)
    assert waited < 18, f"the ranks not needed took {waited:.1f} s to go"
    assert proc.returncode == 0, err
    assert "1 chunk of work: running 1 rank, not 2" in err
    assert count_frames(out) == 6
    assert _ranks_of(cache) == []


@pytest.mark.mpi
def test_a_launcher_killed_outright_takes_its_ranks_with_it(clip, tmp_path: Path) -> None:
    """`kill -9` of `stylebatch run` (or `timeout -s KILL`): it cannot stop its stages itself, and they
    run in a session of their own; the kernel tells them (PR_SET_PDEATHSIG) and no rank stays behind.
    (The run's private scratch folder stays in TMPDIR: nothing is left to remove it.)"""
    src = clip("long.mp4", size=(64, 48), frames=120)
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "stylebatch", "run", str(src), "-o", str(tmp_path / "o.mp4"),
                             "--workers", "2", "--chunk-frames", "6", *FAST_STYLE], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, XDG_CACHE_HOME=str(cache), TMPDIR=str(tmp)))
    try:
        _wait_for(lambda: any(cache.rglob("parts/*.mkv")), proc)
        work = str(next(cache.rglob("stylebatch-work.json")).parent)
        assert _processes_mentioning(work)  # mpiexec and the ranks, working
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 60
        while _processes_mentioning(work) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_mentioning(work) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _own_terminal() -> None:
    """preexec_fn: the pty on stdin becomes this new session's controlling terminal."""
    import fcntl
    import termios

    stop_signals_at_default()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.mpi
def test_a_closed_terminal_stops_the_run_cleanly_with_129(clip, tmp_path: Path) -> None:
    """An ssh session drops or a terminal window closes while `stylebatch run` works in it: the
    kernel sends SIGHUP, writing to the gone terminal fails from then on. The run stops its ranks,
    keeps its work to resume, exits 129 and leaves nothing running (the work dir kept tells it
    finished its cleanup; before, SIGHUP's default ended it on the spot)."""
    import pty
    import select

    src = clip("long.mp4", size=(64, 48), frames=120)
    cache, out = tmp_path / "cache", tmp_path / "o.mp4"
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "stylebatch", "run", str(src), "-o", str(out), "--workers", "2",
                             "--chunk-frames", "6", *FAST_STYLE], stdin=slave, stdout=slave, stderr=slave,
                            env=dict(os.environ, XDG_CACHE_HOME=str(cache)), start_new_session=True,
                            preexec_fn=_own_terminal)
    os.close(slave)

    def drained_and_working() -> bool:  # read what a terminal would show (in this thread: a read
        while select.select([master], [], [], 0)[0]:  # blocked in another would keep it open)
            with contextlib.suppress(OSError):
                os.read(master, 4096)
        return any(cache.rglob("parts/*.mkv"))

    try:
        _wait_for(drained_and_working, proc)
        work = next(cache.rglob("stylebatch-work.json")).parent
        os.close(master)  # the terminal goes away
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 129
    assert _processes_mentioning(str(work)) == [] and any((work / "parts").iterdir()) and not out.exists()


def _catches_sigint(pid: int) -> bool:
    """Whether the process has a SIGINT handler yet (Python installs its own early in its start-up,
    long before the imports of a stage are done)."""
    try:
        caught = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGINT - 1)))


@pytest.mark.mpi
@pytest.mark.parametrize("stage", ["preprocess", "stylize"])
def test_ctrl_c_in_a_terminal_as_a_stage_starts_ends_with_one_line_and_no_traceback(stage: str, clip,
                                                                                    tmp_path: Path) -> None:
    """Ctrl-C at a terminal signals the whole foreground process group. It lands while the stage's
    Python processes (the preprocess child; mpiexec's ranks) are still importing: none may print a
    traceback or die uncounted; the run stops them, ends with its one line and 130, and leaves
    none of them running."""
    src = clip("in.mp4", size=(64, 48), frames=60)
    cache, tmp, out = tmp_path / "cache", tmp_path / "tmp", tmp_path / "o.mp4"
    tmp.mkdir()
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), TMPDIR=str(tmp))
    proc = subprocess.Popen([sys.executable, "-m", "stylebatch", "run", str(src), "-o", str(out), "--workers", "2",
                             "--chunk-frames", "24", *FAST_STYLE], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True,  # a terminal's job: its own group
                            preexec_fn=stop_signals_at_default)
    try:
        def starting() -> bool:
            pids = _python_processes_with(stage, str(src)) if stage == "preprocess" else _ranks_of(cache)
            return any(map(_catches_sigint, pids))

        _wait_for(starting, proc, timeout=120)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = error_lines(subprocess.CompletedProcess([], 130, "", err))
    assert len(lines) == 1 and "interrupted by Ctrl-C" in lines[0], err
    assert not out.exists() and os.listdir(tmp) == []
    assert _processes_mentioning(str(src)) == [] and _ranks_of(cache) == []


def _python_processes_with(*words: str) -> list[int]:
    """The pids of stylebatch's Python processes whose arguments include every one of `words` (not
    mpiexec's: it is no Python), not counting this test's."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if int(pid) != os.getpid() and args[0] == sys.executable and "stylebatch" in args and all(
                w in args for w in words):
            found.append(int(pid))
    return found


@pytest.mark.parametrize("plant", ["file", "symlink to a folder"])
def test_something_planted_at_an_old_predictable_scratch_path_cannot_break_a_run(plant: str, clip,
                                                                               tmp_path: Path) -> None:
    src = clip("in.mp4", size=(64, 48), frames=8)
    work, tmp, elsewhere = tmp_path / "work", tmp_path / "tmp", tmp_path / "elsewhere"
    tmp.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not yours")
    assert stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "o.mp4").returncode == 0
    old = tmp / f"stylebatch-rank-{hashlib.sha1(str(work).encode()).hexdigest()[:12]}-0"  # stylebatch <= 0.x
    if plant == "file":
        old.write_text("planted")
    else:
        old.symlink_to(elsewhere)
    result = stylebatch("stylize", "--work", work, *FAST_STYLE, env=dict(os.environ, TMPDIR=str(tmp)))
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp)) == [old.name]
    assert sorted(os.listdir(elsewhere)) == ["keep.txt"]


@pytest.mark.mpi
def test_failed_mpi_runs_leave_no_hydra_topology_files_in_tmp(clip) -> None:
    """MPICH's proxy writes /tmp/hydra_hwloc_xmlfile_* and leaves it when a rank aborts. /tmp is a
    fresh tmpfs in a private mount namespace here, so other processes' files cannot confuse the count."""
    if subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user/mount namespaces here (unshare -r -m)")
    root = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="stylebatch-test-"))
    try:
        src = root / "in.mp4"
        src.write_bytes(clip("in.mp4", size=(64, 48), frames=12).read_bytes())
        work = root / "work"
        assert stylebatch("preprocess", src, "--work", work, "-o", root / "o.mp4", "--chunk-frames", "6",
                          ).returncode == 0
        source = work / "source.mp4"
        source.write_bytes(source.read_bytes()[:2000])  # every rank fails to decode and the job aborts
        run = " ".join(map(shlex.quote, [sys.executable, "-m", "stylebatch", "run", str(src), "-o", str(root / "o.mp4"),
                                         "--work", str(work), "--workers", "2", *FAST_STYLE]))
        script = f"mount -t tmpfs none /tmp && cd / && TMPDIR=/tmp {run}; echo rc=$?; ls -A /tmp"
        result = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], capture_output=True, text=True,
                                timeout=300)
        assert "rc=2" in result.stdout, result.stdout + result.stderr
        assert result.stdout.strip().endswith("rc=2"), result.stdout  # nothing left in /tmp
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def _run_with_a_private_tmp(args: list[str], env: dict, terminate_after: str | None = None) -> tuple[int, str, str]:
    """`stylebatch ARGS` with /tmp a fresh tmpfs in a private mount namespace (TMPDIR unset, so
    Python's temp folder is that /tmp): (exit code, what is left in /tmp, recursively, stderr).
    terminate_after: send SIGTERM once this text is on stderr (the way Kubernetes stops a pod)."""
    env = {k: v for k, v in env.items() if k != "TMPDIR"}
    run = " ".join(map(shlex.quote, [sys.executable, "-m", "stylebatch", *args]))
    script = (f"mount -t tmpfs none /tmp && cd / && {{ {run} & }} && echo pid=$! && wait $!; echo rc=$?; "
              "find /tmp -mindepth 1")
    proc = subprocess.Popen(["unshare", "-r", "-m", "sh", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
    pid = int(proc.stdout.readline().strip().removeprefix("pid="))
    stderr = []
    for line in proc.stderr:
        stderr.append(line)
        if terminate_after and terminate_after in line:
            os.kill(pid, signal.SIGTERM)
            terminate_after = None
    out = proc.stdout.read()
    proc.wait(timeout=60)
    code, _, left = out.partition("\n")
    return int(code.removeprefix("rc=")), left.strip(), "".join(stderr)


@pytest.mark.azurite
@pytest.mark.parametrize("case, expected", [
    ("it succeeds", 0),
    ("the input blob is corrupt", 2),  # found by preprocess, after the download
    ("it is stopped during stylize", 143),
])
def test_a_blob_input_leaves_no_copy_in_tmp(case: str, expected: int, azure_env, clip, tmp_path: Path) -> None:
    """Blob input, output and work dir: the input's bytes travel only into the work dir (a blob);
    every local copy (preprocess's download, each rank's source, postprocess's parts) is gone
    however the run ends."""
    if subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user/mount namespaces here (unshare -r -m)")
    from stylebatch.storage import location

    src = clip("in.mp4", size=(64, 48), frames=48 if "stopped" in case else 8)
    blob = f"az://{azure_env.container}/private/in.mp4"
    if "corrupt" in case:
        broken = tmp_path / "broken.mp4"
        broken.write_bytes(src.read_bytes()[:3000])
        src = broken
    location(blob).upload(src)
    out, work = f"az://{azure_env.container}/out.mp4", f"az://{azure_env.container}/work"
    code, left, stderr = _run_with_a_private_tmp(
        ["run", blob, "-o", out, "--work", work, "--workers", "1", "--chunk-frames", "4", *FAST_STYLE],
        azure_env.env, terminate_after="stylize: " if "stopped" in case else None)
    assert code == expected, stderr
    assert left == "", f"left in /tmp: {left}"
    assert location(out).exists() == (expected == 0)


# --- one-line errors where tracebacks were ---

def _gap_clip(path: Path, gap_s: int) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=30", "-frames:v", "8",
                    "-vf", f"settb=1/1000,setpts='(N/30+if(gte(N,4),{gap_s},0))/TB'", "-fps_mode", "passthrough",
                    "-c:v", "libx264", str(path)], check=True)
    return path


@pytest.mark.parametrize("command", ["run", "preprocess"])
def test_an_avi_output_that_cannot_hold_a_long_gap_is_refused_at_preprocess(command: str, tmp_path: Path) -> None:
    src = _gap_clip(tmp_path / "gap.mkv", 100_000)  # 3 million frames of nothing at 30 fps
    work = tmp_path / "work"
    result = stylebatch(command, src, "-o", tmp_path / "o.avi", "--work", work, *FAST_STYLE[:2] * (command == "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and "gap" in lines[0] and ".mkv" in lines[0], result.stderr
    assert not (work / "manifest.json").exists() and not (tmp_path / "o.avi").exists()
    assert "stylize" not in result.stderr  # found before any stylizing
    # the same clip into a container that keeps timestamps is fine
    assert stylebatch("preprocess", src, "-o", tmp_path / "o.mkv", "--work", tmp_path / "w2").returncode == 0


def _in_small_tmpfs(folder: Path, size: str, command: list[str], env: dict) -> subprocess.CompletedProcess:
    """command with a tmpfs of `size` mounted on folder (a private mount namespace: no root needed)."""
    script = f"mount -t tmpfs -o size={size} none {shlex.quote(str(folder))} && exec " + shlex.join(command)
    return subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("full", ["output folder", pytest.param("TMPDIR", marks=pytest.mark.azurite)])
def test_postprocess_without_space_for_the_output_says_where_and_how_much(full: str, clip, tmp_path: Path,
                                                                        request) -> None:
    if subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user/mount namespaces here (unshare -r -m)")
    src = clip("in.mp4", size=(96, 64), frames=24, audio=("aac",))
    small, work = tmp_path / "small", tmp_path / "work"
    small.mkdir()
    env = dict(os.environ)
    if full == "output folder":
        out = str(small / "o.mp4")
    else:
        azure_env = request.getfixturevalue("azure_env")
        env, out = dict(azure_env.env, TMPDIR=str(small)), f"az://{azure_env.container}/o.mp4"
    assert stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "o.mp4").returncode == 0
    assert stylebatch("stylize", "--work", work, *FAST_STYLE).returncode == 0
    result = _in_small_tmpfs(small, "24k", [sys.executable, "-m", "stylebatch", "postprocess", "--work", str(work),
                                            "-o", out], env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and "space" in lines[0] and str(small) in lines[0] and "MB" in lines[0], result.stderr
    assert sorted(os.listdir(work / "parts"))  # the work is all still there to try again


# --- the operator's stages, retried ---

@pytest.mark.azurite
def test_a_postprocess_retried_after_it_published_succeeds_and_never_takes_another_jobs_video(
        azure_env, clip) -> None:
    """The operator's postprocess pod lost (its node gone) after it published, while it deleted the
    work dir: the Job's replacement pod found no manifest or no parts and failed with exit 2, and the
    job whose video was there ended Failed. Now a retry knows its own video by the job's name and uid."""
    from stylebatch.contract import JOB_ENV, JOB_UID_ENV
    from stylebatch.storage import location

    base = f"az://{azure_env.container}"
    location(f"{base}/in.mp4").upload(clip("in.mp4", size=(64, 48), frames=8))
    pod = {**azure_env.env, JOB_ENV: "orangutan", JOB_UID_ENV: "0b1e5c4e-1111"}  # what the operator sets
    out = f"{base}/out/orangutan.mp4"

    def stages(work: str, *post: str) -> None:
        for argv in (("preprocess", f"{base}/in.mp4", "--work", work, "-o", out),
                     ("stylize", "--work", work, *FAST_STYLE), ("postprocess", "--work", work, "-o", out, *post)):
            done = stylebatch(*argv, env=pod)
            assert done.returncode == 0, done.stderr

    def retried(work: str, **env: str):
        return stylebatch("postprocess", "--work", work, "-o", out, "--delete-work", env={**pod, **env})

    stages(f"{base}/work-a", "--delete-work")  # published, and the work dir deleted whole
    published = location(out).info()
    again = retried(f"{base}/work-a")
    assert again.returncode == 0, again.stderr
    assert f"stylebatch: {out} was published by this job already (an earlier attempt)" in again.stderr
    assert location(out).info().etag == published.etag  # not written again

    stages(f"{base}/work-b")  # published; the pod then deleted the parts and was lost
    location(f"{base}/work-b/parts").delete_tree()
    again = retried(f"{base}/work-b")
    assert again.returncode == 0, again.stderr
    assert location(f"{base}/work-b").list() == []  # the rest of the work dir deleted now

    # a job of the same name made again (another uid): the video there is not its own
    stages(f"{base}/work-c")
    location(f"{base}/work-c/parts").delete_tree()
    other = retried(f"{base}/work-c", **{JOB_UID_ENV: "77aa0000-2222"})
    assert other.returncode == 2 and "lacks the stylized frames" in error_lines(other)[0]
