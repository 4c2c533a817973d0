"""A work dir is stylebatch's only when stylebatch made it: foreign folders and prefixes are refused,
and only the files the work dir's own records list are ever deleted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from clips import FAST_STYLE, count_frames, decode_rgb, error_lines, stylebatch

# A user's folder whose names look like a work dir's: none of it may be taken over or deleted.
USER_FILES = {
    "parts/deep/thesis.tex": b"\\section{years of work}",
    "source.mp4": b"my own recording",
    "stylize.json": b'{"mine": true}',
    "manifest.json": b'{"format_version": 1}',
}


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def read_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", sorted(USER_FILES))
@pytest.mark.parametrize("command", ["run", "preprocess"])
def test_a_folder_stylebatch_did_not_make_is_refused_and_left_as_it_was(command: str, name: str, clip,
                                                                        tmp_path: Path) -> None:
    src = clip("in.mp4", size=(64, 48), frames=8)
    work = tmp_path / "mine"
    write_files(work, {name: USER_FILES[name]})
    result = stylebatch(command, src, "-o", tmp_path / "o.mp4", "--work", work, *(FAST_STYLE if command == "run"
                                                                                   else ()))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1 and "holds other files" in error_lines(result)[0]
    assert read_files(work) == {name: USER_FILES[name]}
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("command", [["stylize", *FAST_STYLE], ["postprocess"], ["postprocess", "--delete-work"]])
def test_later_stages_refuse_a_folder_stylebatch_did_not_make(command: list[str], tmp_path: Path) -> None:
    write_files(tmp_path / "w", USER_FILES)
    result = stylebatch(command[0], "--work", tmp_path / "w", *command[1:])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1 and "not made by stylebatch" in error_lines(result)[0]
    assert read_files(tmp_path / "w") == USER_FILES


def _blob_tree(prefix) -> dict[str, bytes]:
    return {name: prefix.child(name).read_bytes() for name in prefix.list()}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", pytest.param("blob", marks=pytest.mark.azurite)])
def test_delete_work_removes_only_the_files_its_records_list(backend: str, clip, tmp_path: Path,
                                                             request) -> None:
    """A user's files put into a stylebatch work dir (even under parts/) survive --delete-work."""
    from stylebatch.storage import location

    src = clip("in.mp4", size=(64, 48), frames=8)
    env = None
    if backend == "local":
        work_uri = str(tmp_path / "work")
    else:
        azure_env = request.getfixturevalue("azure_env")
        env, work_uri = azure_env.env, f"az://{azure_env.container}/jobs/one"
    out = tmp_path / "o.mp4"
    assert stylebatch("preprocess", src, "--work", work_uri, "-o", out, "--chunk-frames", "4", env=env).returncode == 0
    assert stylebatch("stylize", "--work", work_uri, *FAST_STYLE, env=env).returncode == 0
    work = location(work_uri)
    mine = {"parts/deep/thesis.tex": b"thesis", "parts/000000000-000000004.mkv.bak": b"backup",
            "source.txt": b"notes", "source.mov": b"my own recording"}
    for name, data in mine.items():
        work.child(name).write_bytes(data)
    result = stylebatch("postprocess", "--work", work_uri, "--delete-work", env=env)
    assert result.returncode == 0, result.stderr
    assert count_frames(out) == 8
    left = read_files(Path(work_uri)) if backend == "local" else _blob_tree(work)
    assert left == mine


@pytest.mark.slow
def test_postprocess_deletes_a_training_checkpoint_only_once_the_video_is_published(clip, tmp_path: Path) -> None:
    """A StyleTransferJob's postprocess (`--delete-checkpoint <trained style>.ckpt`): the weights stay for
    the user; the checkpoint is kept while the job may still need it (a failed postprocess, or a failed
    job resumed with its work dir, finishes its training from it)."""
    src, work, out = clip("in.mp4", size=(64, 48), frames=8), tmp_path / "work", tmp_path / "o.mp4"
    weights, ckpt = tmp_path / "work.pth", tmp_path / "work.pth.ckpt"
    weights.write_bytes(b"trained"), ckpt.write_bytes(b"net and optimizer")
    assert stylebatch("preprocess", src, "--work", work, "-o", out, "--chunk-frames", "4").returncode == 0
    flags = ["--work", work, "--delete-work", "--delete-checkpoint", ckpt]
    early = stylebatch("postprocess", *flags)  # no parts yet: nothing published
    assert early.returncode != 0 and ckpt.exists() and not out.exists()
    assert stylebatch("stylize", "--work", work, *FAST_STYLE).returncode == 0
    result = stylebatch("postprocess", *flags)
    assert result.returncode == 0 and count_frames(out) == 8, result.stderr
    assert not ckpt.exists() and weights.read_bytes() == b"trained" and not work.exists()
    wrong = stylebatch("postprocess", "--work", work, "--delete-checkpoint", weights)
    assert wrong.returncode == 2 and "is no training checkpoint" in error_lines(wrong)[0], wrong.stderr
    assert weights.exists()


@pytest.mark.slow
@pytest.mark.parametrize("given", [True, False])
def test_a_users_own_empty_folder_given_as_work_dir_is_kept_one_stylebatch_made_is_removed(given: bool, clip,
                                                                                            tmp_path: Path) -> None:
    """`mkdir mine; stylebatch run ... --work mine` removed the folder `mine` itself when done: only
    stylebatch's own files are its to delete."""
    src = clip("in.mp4", size=(64, 48), frames=8)
    work, out = tmp_path / "mine", tmp_path / "o.mp4"
    if given:
        work.mkdir()
    result = stylebatch("run", src, "-o", out, "--work", work, "--chunk-frames", "4", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    assert count_frames(out) == 8
    assert work.is_dir() == given and (not given or os.listdir(work) == [])


@pytest.mark.slow
def test_a_run_resumed_in_a_work_dir_keeps_the_users_files(clip, tmp_path: Path) -> None:
    src = clip("in.mp4", size=(64, 48), frames=8)
    work, out = tmp_path / "work", tmp_path / "o.mp4"
    args = ("run", src, "-o", out, "--work", work, "--workers", "1", "--chunk-frames", "4", *FAST_STYLE)
    assert stylebatch(*args, "--keep-work").returncode == 0
    assert sorted(os.listdir(work)) == ["manifest.json", "parts", "source.mp4", "stylebatch-work.json",
                                        "stylize.json"]
    write_files(work, {"parts/deep/thesis.tex": b"thesis", "notes.txt": b"mine"})
    out.unlink()
    result = stylebatch(*args)
    assert result.returncode == 0, result.stderr
    assert read_files(work) == {"parts/deep/thesis.tex": b"thesis", "notes.txt": b"mine"}


# --- one writer per work dir ---

def _wait_for_lock_holder(read_holder, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = read_holder()
        if holder.get("pid") == str(proc.pid):
            return holder
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the first run never took the work dir's lock")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", pytest.param("blob", marks=pytest.mark.azurite)])
def test_a_second_run_on_a_busy_work_dir_fails_at_once_naming_the_first(backend: str, clip, tmp_path: Path,
                                                                         request) -> None:
    """Two runs, two inputs, one work dir: the second is refused (75) while the first finishes right."""
    import json
    import socket

    from stylebatch.storage import location

    first, second = clip("a.mp4", size=(64, 48), frames=24), clip("b.mp4", size=(64, 48), frames=12)
    env = dict(os.environ)
    if backend == "local":
        work = str(tmp_path / "work")

        def holder() -> dict:
            try:
                return json.loads((tmp_path / "work" / "stylebatch.lock").read_text() or "{}")
            except (OSError, ValueError):
                return {}
    else:
        azure_env = request.getfixturevalue("azure_env")
        env, work = azure_env.env, f"az://{azure_env.container}/work"

        def holder() -> dict:
            lock = location(f"{work}/stylebatch.lock")
            try:
                return dict(lock._blob_client().get_blob_properties().metadata or {})
            except Exception:  # noqa: BLE001 - not there yet
                return {}
    run_a = subprocess.Popen([sys.executable, "-m", "stylebatch", "run", str(first), "-o", str(tmp_path / "a.mp4"),
                              "--work", work, "--workers", "2", "--chunk-frames", "6", *FAST_STYLE],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for_lock_holder(holder, run_a)
        # the first run's launcher held still while the second is tried, so the first cannot end
        # first however fast this machine is (its children go on; it resumes below)
        os.kill(run_a.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            result = stylebatch("run", second, "-o", tmp_path / "b.mp4", "--work", work, *FAST_STYLE, env=env)
            assert time.monotonic() - started < 30  # at once, not after waiting for the first
        finally:
            os.kill(run_a.pid, signal.SIGCONT)
        assert result.returncode == 75 and "Traceback" not in result.stderr, result.stderr
        assert len(error_lines(result)) == 1, result.stderr
        line = error_lines(result)[0]
        assert "in use" in line and f"pid {run_a.pid}" in line and socket.gethostname() in line, line
        _, err = run_a.communicate(timeout=300)
    finally:
        if run_a.poll() is None:
            run_a.kill()
            run_a.communicate()
    assert run_a.returncode == 0, err
    assert count_frames(tmp_path / "a.mp4") == 24 and not (tmp_path / "b.mp4").exists()
    assert location(work).list() == []  # the first run cleaned up after itself, its lock included


def _own_tmp(env: dict | None, tmp_path: Path) -> dict:
    """env with TMPDIR in the test's own folder: what a killed run or a bare mpiexec leaves there (a run's
    scratch folder) goes with the test, not into /tmp (hydra's topology file, which TMPDIR does not
    move, none is written: conftest sets HWLOC_XMLFILE for every test)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return dict(os.environ if env is None else env, TMPDIR=str(tmp))


@pytest.mark.mpi
def test_ranks_under_a_bare_mpiexec_refuse_a_work_dir_locked_by_another_stage(clip, tmp_path: Path) -> None:
    """The operator's MPIJob runs `mpiexec -n N stylebatch stylize`: rank 0 takes the lock for all."""
    from stylebatch.storage import location

    src = clip("in.mp4", size=(64, 48), frames=8)
    work = tmp_path / "work"
    assert stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "o.mp4").returncode == 0
    lock = location(work / "stylebatch.lock").lock({"host": "pod-7", "pid": "4242", "started": "then",
                                                    "token": "t"})
    try:
        bin_dir = Path(sys.executable).parent
        result = subprocess.run([str(bin_dir / "mpiexec"), "-n", "2", str(bin_dir / "stylebatch"), "stylize",
                                 "--work", str(work), *FAST_STYLE], capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL, env=_own_tmp(None, tmp_path))
    finally:
        lock.release()
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and "in use" in lines[0] and "host pod-7, pid 4242" in lines[0], result.stderr
    assert not (work / "parts").exists()


# --- a dead holder's lock ---

def _killed_once_stylizing(argv: list[str], env: dict) -> None:
    """Start argv (a whole run or an MPI stylize) in a session of its own; SIGKILL every process of
    it once a rank starts stylizing, as the kernel's OOM killer, a lost node or `kill -9` would."""
    import signal

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, env=env, start_new_session=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "left to stylize" in line:  # logged by rank 0 (and the others) once it holds the lock
                break
        else:
            pytest.fail("it ended before stylizing: " + "".join(seen))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _lease_state(work: str) -> str:
    from stylebatch.storage import location

    return location(f"{work}/stylebatch.lock")._blob_client().get_blob_properties().lease.state


@pytest.mark.slow
def test_the_lock_file_of_a_killed_run_blocks_nothing(clip, tmp_path: Path) -> None:
    src = clip("in.mp4", size=(64, 48), frames=24)
    args = ["run", str(src), "-o", str(tmp_path / "out.mp4"), "--work", str(tmp_path / "work"), "--workers", "1",
            "--chunk-frames", "4", *FAST_STYLE]
    _killed_once_stylizing([sys.executable, "-m", "stylebatch", *args], _own_tmp(None, tmp_path))
    assert (tmp_path / "work" / "stylebatch.lock").exists()  # left behind, but no process holds it
    started = time.monotonic()
    result = stylebatch(*args)
    assert result.returncode == 0, result.stderr
    assert "still locked" not in result.stderr and time.monotonic() - started < 120  # no wait for the lock
    assert count_frames(tmp_path / "out.mp4") == 24


@pytest.mark.slow
@pytest.mark.azurite
def test_a_killed_runs_blob_lease_holds_the_next_run_only_until_it_expires(azure_env, clip, tmp_path: Path) -> None:
    """`kill -9` of a run on this machine: its lease stays until it expires (under a minute); the
    next run, seeing that its holder is gone, waits that out and finishes, instead of failing with 75."""
    src = clip("in.mp4", size=(64, 48), frames=24)
    work = f"az://{azure_env.container}/work"
    args = ["run", str(src), "-o", str(tmp_path / "out.mp4"), "--work", work, "--workers", "1", "--chunk-frames", "4",
            *FAST_STYLE]
    _killed_once_stylizing([sys.executable, "-m", "stylebatch", *args], _own_tmp(azure_env.env, tmp_path))
    assert _lease_state(work) == "leased"
    result = stylebatch(*args, env=azure_env.env)
    assert result.returncode == 0, result.stderr
    assert "still locked by a stylebatch of this host that has ended" in result.stderr, result.stderr
    assert count_frames(tmp_path / "out.mp4") == 24


@pytest.mark.slow
@pytest.mark.azurite
@pytest.mark.mpi
def test_the_attempt_after_a_killed_mpijob_waits_for_its_lease_instead_of_failing(azure_env, clip,
                                                                                 tmp_path: Path) -> None:
    """The operator's MPIJob runs `mpiexec -n N stylebatch stylize` in a launcher pod; rank 0 holds
    the work dir's lease. When the attempt is killed (a rank OOM-killed, a node lost), the next
    attempt of the same job (STYLEBATCH_JOB) waits for the dead one's lease to expire and resumes,
    where it failed with 75 and cost the job one more retry. Another job's run is still refused at
    once. The killed attempt runs under another host name (a UTS namespace), as in its own pod."""
    if subprocess.run(["unshare", "-r", "-u", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user/UTS namespaces here (unshare -r -u)")
    src = clip("in.mp4", size=(64, 48), frames=24)
    work = f"az://{azure_env.container}/work"
    assert stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "o.mp4", "--chunk-frames", "4",
                      env=azure_env.env).returncode == 0
    bin_dir = Path(sys.executable).parent
    stylize = [str(bin_dir / "mpiexec"), "-n", "2", str(bin_dir / "stylebatch"), "stylize", "--work", work, *FAST_STYLE]
    attempt = dict(_own_tmp(azure_env.env, tmp_path), STYLEBATCH_JOB="orangutan")
    _killed_once_stylizing(["unshare", "-r", "-u", "sh", "-c", 'hostname orangutan-stylize-1-launcher && exec "$@"',
                            "sh", *stylize], attempt)
    assert _lease_state(work) == "leased"

    other = subprocess.run(stylize, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                           env=dict(_own_tmp(azure_env.env, tmp_path), STYLEBATCH_JOB="gibbon"))
    assert other.returncode == 75, other.stderr
    [line] = error_lines(other)
    assert "in use by another stylebatch (host orangutan-stylize-1-launcher" in line, line

    retry = subprocess.run(stylize, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
                           env=attempt)
    assert retry.returncode == 0, retry.stderr
    assert "still locked by an earlier attempt of job orangutan" in retry.stderr, retry.stderr
    assert stylebatch("postprocess", "--work", work, env=azure_env.env).returncode == 0
    assert count_frames(tmp_path / "o.mp4") == 24


# --- a changed input is not resumed ---

def _replace_keeping_size(path: Path, other: Path) -> None:
    """Put other's bytes at path, padded or cut to path's size (the same size, other content)."""
    size, data = path.stat().st_size, other.read_bytes()
    path.write_bytes((data + b"\0" * size)[:size])


@pytest.mark.parametrize("change, words", [
    ("other video", ["its size", "its bytes"]),
    ("same size, other bytes", ["(its bytes)"]),
    ("touched", ["its modification time"]),
])
def test_a_replaced_input_is_not_resumed(change: str, words: list[str], clip, tmp_path: Path) -> None:
    first, second = clip("a.mp4", size=(64, 48), frames=8), clip("b.mp4", size=(64, 48), frames=12)
    src, work, out = tmp_path / "in.mp4", tmp_path / "work", tmp_path / "o.mp4"
    src.write_bytes(first.read_bytes())
    assert stylebatch("preprocess", src, "--work", work, "-o", out).returncode == 0
    manifest, mtime = (work / "manifest.json").read_bytes(), src.stat().st_mtime_ns
    if change == "other video":
        src.write_bytes(second.read_bytes())
    elif change == "same size, other bytes":
        _replace_keeping_size(src, second)
        os.utime(src, ns=(src.stat().st_atime_ns, mtime))  # even the modification time is the same
    else:
        os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 5_000_000_000))
    for command in (["preprocess", src, "--work", work, "-o", out],
                    ["run", src, "--work", work, "-o", out, *FAST_STYLE]):
        result = stylebatch(*command)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(error_lines(result)) == 1, result.stderr
        line = error_lines(result)[0]
        assert "changed since work dir" in line and all(w in line for w in words), line
    assert (work / "manifest.json").read_bytes() == manifest and not out.exists()


@pytest.mark.azurite
def test_a_replaced_input_blob_is_not_resumed(azure_env, clip, tmp_path: Path) -> None:
    from stylebatch.storage import location

    first = clip("a.mp4", size=(64, 48), frames=8)
    blob, work = f"az://{azure_env.container}/in.mp4", f"az://{azure_env.container}/work"
    location(blob).upload(first)
    args = ("preprocess", blob, "--work", work, "-o", tmp_path / "o.mp4")
    assert stylebatch(*args, env=azure_env.env).returncode == 0
    result = stylebatch(*args, env=azure_env.env)
    assert result.returncode == 0 and "resuming" in result.stderr, result.stderr
    location(blob).upload(first)  # the same bytes again: a new ETag
    result = stylebatch(*args, env=azure_env.env)
    assert result.returncode == 2 and "its ETag" in error_lines(result)[0], result.stderr


def test_a_run_refused_a_work_dir_another_run_holds_says_only_that(clip, tmp_path: Path) -> None:
    """`run --work W` while another stylebatch holds W's lock exits 75 with one line naming the other
    holder; it had also warned "work dir kept at W: run again with --work W to resume", about a work
    dir it never held (the other run may finish and delete it). Nothing of W is touched."""
    from stylebatch.manifest import PARTS_DIR

    src, work = clip("in.mp4", size=(64, 48), frames=8), tmp_path / "work"
    assert stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "o.mp4").returncode == 0
    (work / PARTS_DIR).mkdir(exist_ok=True)
    (work / PARTS_DIR / "part-000000-000004.mkv").write_bytes(b"a part another run made")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom stylebatch.storage import location\n"
         "from stylebatch.workdir import hold\nwith hold(location(sys.argv[1])):\n"
         "    print('held', flush=True)\n    time.sleep(120)\n", str(work)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.relative_to(work).as_posix() for p in work.rglob("*"))  # its lock included
        result = stylebatch("run", src, "-o", tmp_path / "out.mp4", "--work", work, *FAST_STYLE, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 75, result.stderr
    [line] = error_lines(result)
    assert "is in use by another stylebatch" in line
    assert "warning" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out.mp4").exists()
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == before


@pytest.mark.parametrize("age_s, code", [(0, 75), (3600, 2)])
def test_a_new_work_dir_another_run_is_claiming_is_in_use_not_foreign(age_s: float, code: int, clip,
                                                                      tmp_path: Path) -> None:
    """Two runs given the same new --work at once: the loser saw the winner's owner record still being
    written (its atomic temp file) and refused the folder as holding other files (exit 2: 'give an
    empty or new folder'), instead of in use by another stylebatch (75: retrying can work). Here the
    other claimant's temp file is made as it would be, mid-write. One left by a killed writer an
    hour ago is a file like any other: refused, exit 2."""
    from stylebatch.contract import OWNER_NAME

    work = tmp_path / "wrace"
    work.mkdir()
    partial = work / f".{OWNER_NAME}.238821a8.partial"
    partial.write_bytes(b'{"owner": "stylebatch", "id": "')
    os.utime(partial, (time.time() - age_s, time.time() - age_s))
    result = stylebatch("run", clip("in.mp4", size=(64, 48), frames=4), "-o", tmp_path / "out.mp4", "--work",
                        work, *FAST_STYLE, timeout=120)
    assert result.returncode == code, result.stderr
    [line] = error_lines(result)
    assert ("is in use by another stylebatch" if code == 75 else "holds other files") in line, line
    assert "Traceback" not in result.stderr and "resume" not in result.stderr, result.stderr
    assert sorted(p.name for p in work.iterdir()) == [partial.name] and not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("backend, held, code", [
    ("local", True, 75),
    ("local", False, 0),
    pytest.param("blob", True, 75, marks=pytest.mark.azurite),
    pytest.param("blob", False, 0, marks=pytest.mark.azurite),
])
def test_a_work_dir_another_run_is_deleting_is_in_use_and_its_lone_lock_file_is_taken_over(
        backend: str, held: bool, code: int, clip, tmp_path: Path, request) -> None:
    """delete_work removes the owner record last, and the lock file goes only when its holder lets go:
    a run given that work dir in between saw nothing but the lock (and, locally, the empty parts folder)
    and refused it as holding other files (exit 2: 'give an empty or new folder'), though it is in use
    (75: retrying can work). And a deleter killed in between left only its lock file, which refused
    every later run of the same command, its own default work dir included, for good."""
    from stylebatch.contract import LOCK_NAME
    from stylebatch.manifest import PARTS_DIR
    from stylebatch.storage import location

    env = None
    if backend == "local":
        work_uri = str(tmp_path / "work")
        (tmp_path / "work" / PARTS_DIR).mkdir(parents=True)
    else:
        azure_env = request.getfixturevalue("azure_env")
        env, work_uri = azure_env.env, f"az://{azure_env.container}/work"
    lock = location(work_uri).child(LOCK_NAME).lock({"host": "pod-7", "pid": "4242", "started": "then", "token": "t"})
    try:
        if not held:  # let go, as by a deleter killed before it removed the file
            if backend == "local":
                lock.fd, fd = -1, lock.fd
                os.close(fd)
            else:
                lock._stop.set()
                lock._thread.join()
                lock.lease.release()
        result = stylebatch("run", clip("in.mp4", size=(64, 48), frames=4), "-o", tmp_path / "out.mp4", "--work",
                            work_uri, *FAST_STYLE, timeout=120, env=env)
    finally:
        if held:
            lock.release()
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    if code:
        [line] = error_lines(result)
        assert "is in use by another stylebatch (host pod-7, pid 4242" in line and "deleting it" in line, line
        assert not (tmp_path / "out.mp4").exists()
    else:
        assert count_frames(tmp_path / "out.mp4") == 4


# --- a run with other style settings ---

def _own_work_dirs(cache: Path) -> list[Path]:
    folder = cache / "stylebatch" / "work"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("first, second", [
    (["--style", "lavender-gold"], ["--style", "ink-wash"]),
    (["--crf", "30"], ["--crf", "20"]),  # "holds a job with another --crf: use a fresh --work"
    (["--max-side", "32"], ["--max-side", "48"]),
])
def test_a_run_with_other_settings_gets_a_work_dir_of_its_own_and_the_first_still_resumes(
        clip, tmp_path: Path, first: list[str], second: list[str]) -> None:
    """Without --work the work dir was named for the input and output only: after an interrupted run, a
    run with another style or encoding found its parts and failed ("has parts stylized with ...: use
    another --work"), every time, and `stylebatch watch` (which has no --work) could never stylize that
    video again. Now the settings the parts depend on name the work dir too."""
    src, out = clip("in.mp4", size=(64, 48), frames=12), tmp_path / "o.mp4"
    cache = tmp_path / "cache"
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    flags = ["--chunk-frames", "4", "--workers", "1"]
    kept = stylebatch("run", src, "-o", out, *FAST_STYLE, *flags, *first, "--keep-work", env=env)
    assert kept.returncode == 0, kept.stderr  # its work dir kept with every part: as an interrupted run's
    (work,) = _own_work_dirs(cache)
    parts = {p.name: p.read_bytes() for p in (work / "parts").iterdir()}
    assert len(parts) == 3
    other = stylebatch("run", src, "-o", out, *FAST_STYLE, *flags, *second, env=env)
    assert other.returncode == 0 and "Traceback" not in other.stderr, other.stderr
    assert _own_work_dirs(cache) == [work] and {p.name: p.read_bytes() for p in (work / "parts").iterdir()} == parts
    again = stylebatch("run", src, "-o", out, *FAST_STYLE, *flags, *first, env=env)
    assert again.returncode == 0 and "resuming" in again.stderr, again.stderr
    assert _own_work_dirs(cache) == []


@pytest.mark.parametrize("second", [["--style", "ink-wash"], ["--crf", "30"]])
def test_a_given_work_dir_of_other_settings_is_refused_without_advice_to_resume_it(clip, tmp_path: Path,
                                                                                   second: list[str]) -> None:
    """A --work holding another style's parts, or another --crf's job: the error says to use another
    --work. Before it, a warning said "work dir kept at W: run again with --work W to resume", which
    fails the same way every time; exit 2 means the same command cannot help, so no such advice."""
    src, work = clip("in.mp4", size=(64, 48), frames=12), tmp_path / "w"
    flags = [*FAST_STYLE, "--chunk-frames", "4", "--workers", "1", "--work", work]
    assert stylebatch("run", src, "-o", tmp_path / "a.mp4", *flags, "--keep-work").returncode == 0
    other = stylebatch("run", src, "-o", tmp_path / "b.mp4", *flags, *second)
    lines = other.stderr.splitlines()
    errors = [line for line in lines if line.startswith("stylebatch: error:")]
    assert other.returncode == 2 and len(errors) == 1 and "--work" in errors[0], other.stderr
    assert "run again" not in other.stderr and f"stylebatch: warning: work dir kept at {work}" in lines, other.stderr
    assert not (tmp_path / "b.mp4").exists() and len(list((work / "parts").iterdir())) == 3


def test_a_painting_changed_under_the_same_name_is_stylized_again_in_runs_own_work_dir(clip, tmp_path: Path) -> None:
    """The one way settings change inside run's own work dir: the style file's bytes. Its parts are
    deleted, with a warning, and stylized again; the output is the new painting's."""
    from PIL import Image

    src, out, fresh = clip("in.mp4", size=(64, 48), frames=12), tmp_path / "o.mp4", tmp_path / "fresh.mp4"
    painting = tmp_path / "painting.png"
    Image.new("RGB", (64, 64), "teal").save(painting)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    flags = ["--style", painting, "--max-side", "48", "--chunk-frames", "4", "--workers", "1"]
    assert stylebatch("run", src, "-o", out, *flags, "--keep-work", env=env).returncode == 0
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(painting)
    again = stylebatch("run", src, "-o", out, *flags, env=env)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert "stylebatch: warning: the 3 parts in work dir" in again.stderr and "deleting them" in again.stderr
    assert _own_work_dirs(tmp_path / "cache") == []
    assert stylebatch("run", src, "-o", fresh, *flags, "--work", tmp_path / "w").returncode == 0
    assert np.abs(decode_rgb(out).astype(int) - decode_rgb(fresh).astype(int)).mean() < 1


def test_a_restyle_stopped_halfway_leaves_no_part_that_passes_for_the_new_settings(tmp_path: Path) -> None:
    """The record went first, then the parts one by one: stopped between two (a signal, a delete that
    fails), the parts left and no record passed for any settings the next run brought."""
    from stylebatch.errors import StylebatchError
    from stylebatch.storage import location
    from stylebatch.stylize import check_settings, settings_record

    work = location(str(tmp_path))
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "000000000-000000004.mkv").write_bytes(b"old style")
    (tmp_path / "parts" / "000000004-000000008.mkv").mkdir()  # this one will not delete
    parts = ["000000000-000000004.mkv", "000000004-000000008.mkv"]
    old, new = settings_record("lavender-gold", 1.0, None), settings_record("ink-wash", 1.0, None)
    assert check_settings(work, old, []) is False
    with pytest.raises(StylebatchError):
        check_settings(work, new, parts, discard=True)
    left = [p.name for p in (tmp_path / "parts").iterdir()]
    assert left == ["000000004-000000008.mkv"]
    with pytest.raises(StylebatchError, match="has parts stylized with lavender-gold"):
        check_settings(work, new, left)  # a user's --work: still the old parts, refused
    (tmp_path / "parts" / left[0]).rmdir()
    (tmp_path / "parts" / left[0]).write_bytes(b"old style")
    assert check_settings(work, new, left, discard=True) is True and not any((tmp_path / "parts").iterdir())
    assert check_settings(work, new, []) is False  # the new settings recorded


def test_a_users_work_dir_with_parts_of_other_style_settings_is_refused(clip, tmp_path: Path) -> None:
    """A --work of the user's is theirs: its parts are not deleted for a run with another style."""
    src, out, work = clip("in.mp4", size=(64, 48), frames=12), tmp_path / "o.mp4", tmp_path / "work"
    flags = ["--max-side", "48", "--chunk-frames", "4", "--workers", "1", "--work", work]
    assert stylebatch("run", src, "-o", out, "--style", "lavender-gold", *flags, "--keep-work").returncode == 0
    parts = {p.name: p.read_bytes() for p in (work / "parts").iterdir()}
    result = stylebatch("run", src, "-o", tmp_path / "o2.mp4", "--style", "ink-wash", *flags)
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert "has parts stylized with lavender-gold" in error_lines(result)[0] and "not ink-wash" in error_lines(result)[0]
    assert "--restyle" not in error_lines(result)[0]  # a flag of `stylize`, which `run` has not
    assert {p.name: p.read_bytes() for p in (work / "parts").iterdir()} == parts
    assert not (tmp_path / "o2.mp4").exists()


def test_stylize_refusing_parts_of_another_style_names_its_restyle_flag_which_then_restyles(clip,
                                                                                           tmp_path: Path) -> None:
    """`stylebatch stylize --work W --style ink-wash` on parts made with another style said "use another
    --work, or delete its parts/", not the --restyle flag made for exactly this."""
    src, work = clip("in.mp4", size=(64, 48), frames=8), tmp_path / "work"
    assert stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "o.mp4", "--chunk-frames", "4").returncode == 0
    flags = ["--work", work, "--max-side", "48"]
    assert stylebatch("stylize", *flags, "--style", "lavender-gold").returncode == 0
    parts = {p.name: p.read_bytes() for p in (work / "parts").iterdir()}
    result = stylebatch("stylize", *flags, "--style", "ink-wash")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = error_lines(result)
    assert "has parts stylized with lavender-gold" in line and "give --restyle to delete them" in line, line
    assert {p.name: p.read_bytes() for p in (work / "parts").iterdir()} == parts  # refused: nothing deleted
    again = stylebatch("stylize", *flags, "--style", "ink-wash", "--restyle")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (work / "parts").iterdir()) == sorted(parts)
    assert all((work / "parts" / name).read_bytes() != old for name, old in parts.items())  # stylized again


def test_a_stylize_the_operator_runs_refuses_parts_of_another_style_in_spec_terms_not_flags(clip,
                                                                                           tmp_path: Path) -> None:
    """The MPIJob's ranks run `stylebatch stylize`, so its refusal told a Kubernetes user to "give
    --restyle" or "use another --work": flags of a command they never type. They write a spec."""
    from stylebatch.contract import JOB_UID_ENV
    from stylebatch.requests import ModelOptions, StylizeRequest

    src, work = clip("in.mp4", size=(64, 48), frames=8), tmp_path / "work"
    assert stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "o.mp4", "--chunk-frames", "4").returncode == 0
    pods = {**os.environ, JOB_UID_ENV: "0123456789abcdef"}  # what the operator sets in every container

    def argv(style: str) -> list[str]:  # as the operator's launcher gives it (manifests.stylize_request)
        return StylizeRequest(work=str(work), model=ModelOptions(style=style, max_side=48)).to_argv()

    assert stylebatch(*argv("lavender-gold"), env=pods).returncode == 0
    parts = {p.name: p.read_bytes() for p in (work / "parts").iterdir()}
    result = stylebatch(*argv("ink-wash"), env=pods)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = error_lines(result)
    assert "has parts stylized with lavender-gold" in line and "not ink-wash" in line, line
    assert "spec.workDir" in line and "delete the work dir's parts/" in line, line
    assert "--restyle" not in line and "--work" not in line, line
    assert {p.name: p.read_bytes() for p in (work / "parts").iterdir()} == parts  # refused: nothing deleted


@pytest.mark.parametrize("case", ["another job's work dir", "a folder of the user's"])
def test_the_operators_preprocess_refuses_a_work_dir_in_spec_terms_not_flags(clip, tmp_path: Path, case: str) -> None:
    """A StyleTransferJob's spec.workDir holding another job (or files of the user's) was refused with
    "use a fresh --work" (or "give an empty or new folder for --work"): a flag its user never types."""
    from stylebatch.contract import JOB_UID_ENV

    src, work = clip("in.mp4", size=(64, 48), frames=4), tmp_path / "work"
    if case == "another job's work dir":
        assert stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "o.mp4", "--crf", "30").returncode == 0
    else:
        work.mkdir()
        (work / "holiday.mp4").write_bytes(b"the user's")
    pods = {**os.environ, JOB_UID_ENV: "0123456789abcdef"}  # what the operator sets in every container
    result = stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "o.mp4", "--crf", "20", env=pods)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = error_lines(result)
    assert "spec.workDir" in line and "--work" not in line, line
    if case == "a folder of the user's":
        assert (work / "holiday.mp4").read_bytes() == b"the user's"


def test_parts_an_older_stylebatch_encoded_are_not_resumed_beside_parts_encoded_now(clip, tmp_path: Path) -> None:
    """MJPEG's --crf reached the encoder only from de8a017 on: parts made before were at the finest
    quantizer whatever --crf said, and stylize.json did not say how the parts were encoded, so a work
    dir resumed across that upgrade concatenated parts of two quantizers. The record now keeps the
    parts' encoding; one without it (an older stylebatch's) is taken for another encoding: a user's
    --work is refused, `stylize --restyle` stylizes every part again, at one quantizer."""
    import json

    import av

    from test_video_contract import jpeg_quantizer

    src, work = clip("in.mp4", size=(64, 48), frames=12), tmp_path / "work"
    assert stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "o.avi", "--crf", "10",
                      "--chunk-frames", "4").returncode == 0
    flags = ["--work", work, *FAST_STYLE]
    assert stylebatch("stylize", *flags).returncode == 0
    record = json.loads((work / "stylize.json").read_text())
    record.pop("encoding", None)  # as an older stylebatch wrote it
    (work / "stylize.json").write_text(json.dumps(record))
    *made, last = sorted((work / "parts").iterdir())
    last.unlink()  # that run stopped before its last chunk
    parts = {p.name: p.read_bytes() for p in made}

    again = stylebatch("stylize", *flags)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
    [line] = error_lines(again)
    assert "encoded by an older stylebatch" in line and "give --restyle" in line, line
    assert {p.name: p.read_bytes() for p in (work / "parts").iterdir()} == parts  # refused: nothing touched

    restyled = stylebatch("stylize", *flags, "--restyle")
    assert restyled.returncode == 0 and "deleting them" in restyled.stderr, restyled.stderr
    assert len(list((work / "parts").iterdir())) == 3
    quantizers = set()
    for part in (work / "parts").iterdir():
        with av.open(str(part)) as c:
            quantizers |= {jpeg_quantizer(bytes(p)) for p in c.demux(video=0) if p.size}
    assert len(quantizers) == 1
    encoding = json.loads((work / "stylize.json").read_text())["encoding"]
    assert encoding["codec"] == "mjpeg" and encoding["options"] == {"qmin": "10", "qmax": "10"}, encoding


@pytest.mark.parametrize("change, same", [
    ("nothing", True),
    ("the CPU (x264's asm cap)", True),  # ranks on two kinds of CPU make parts of one encoding
    ("--crf", False),
    ("the pixel format", False),
    ("the encoder's options for the same settings (an upgrade)", False),
    ("PART_ENCODING_VERSION (an upgrade)", False),
])
def test_the_parts_encoding_record_changes_with_what_changes_the_parts_and_nothing_else(monkeypatch, change, same):
    from stylebatch import contract, encoder
    from stylebatch.manifest import EncoderSettings

    settings = EncoderSettings("libx264", "yuv420p", "mp4", crf=18, preset="veryfast")
    before = encoder.part_encoding(settings)
    if change == "the CPU (x264's asm cap)":
        monkeypatch.setattr(encoder, "x264_asm", lambda cpu=None: "AVX2,FMA3,BMI2")
    elif change == "--crf":
        settings = EncoderSettings("libx264", "yuv420p", "mp4", crf=20, preset="veryfast")
    elif change == "the pixel format":
        settings = EncoderSettings("libx264", "yuv420p10le", "mp4", crf=18, preset="veryfast")
    elif change.startswith("the encoder's options"):
        real = encoder.open_encoder_options
        monkeypatch.setattr(encoder, "open_encoder_options", lambda s: {**real(s), "aq-mode": "2"})
    elif change.startswith("PART_ENCODING_VERSION"):
        monkeypatch.setattr(contract, "PART_ENCODING_VERSION", contract.PART_ENCODING_VERSION + 1)
    assert (encoder.part_encoding(settings) == before) == same


# --- run's own work dirs that no run can resume ---

def test_a_changed_input_removes_the_earlier_runs_work_dir_for_that_input_and_output_only(
        clip, tmp_path: Path) -> None:
    """A changed input (touched, rewritten) gets a new work dir; the old one, made from the old bytes
    and never resumable again, stayed in the cache for ever with its copy of the input (gigabytes for
    a real video), and nothing said so. Now the next run for that input and output removes it, in
    one line; a work dir of another output, one another run holds, and one an older stylebatch made
    (no record of what it was for) are left alone."""
    import json
    import shutil

    from stylebatch.storage import location
    from stylebatch.workdir import hold

    src, out = clip("in.mp4", size=(64, 48), frames=12), tmp_path / "o.mp4"
    cache = tmp_path / "cache"
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    flags = [*FAST_STYLE, "--chunk-frames", "4", "--workers", "1", "--keep-work"]
    assert stylebatch("run", src, "-o", out, *flags, env=env).returncode == 0  # kept: as an interrupted run's
    (old,) = _own_work_dirs(cache)
    assert stylebatch("run", src, "-o", tmp_path / "other.mp4", *flags, env=env).returncode == 0
    (other,) = set(_own_work_dirs(cache)) - {old}
    held, legacy = old.with_name("f" * 24), old.with_name("e" * 24)
    shutil.copytree(old, held)
    shutil.copytree(old, legacy)
    record = json.loads((legacy / "stylebatch-work.json").read_text())
    del record["made_for"]
    (legacy / "stylebatch-work.json").write_text(json.dumps(record))
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: another version of the input

    with hold(location(str(held))):  # a run on it now
        result = stylebatch("run", src, "-o", out, *flags[:-1], env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    [line] = [x for x in result.stderr.splitlines() if "removed" in x and "work dir" in x]
    assert line.startswith("stylebatch: removed an earlier run's work dir for this input and output (")
    assert "MB): the input changed since" in line
    assert sorted(_own_work_dirs(cache)) == sorted([other, held, legacy])
    assert len(list((held / "parts").iterdir())) == 3 and (legacy / "source.mp4").exists()

    again = stylebatch("run", src, "-o", out, *flags[:-1], env=env)  # no longer held: nothing can resume it
    assert again.returncode == 0 and "removed an earlier run's work dir" in again.stderr, again.stderr
    assert sorted(_own_work_dirs(cache)) == sorted([other, legacy])
