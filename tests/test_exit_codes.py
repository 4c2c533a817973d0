"""Exit codes that mean something: 75 where retrying later can help (storage unreachable, 5xx after
the SDK's retries, timeouts, no token), 2 where it cannot, and a rank the kernel killed for memory
named as such."""

from __future__ import annotations

import dataclasses
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from clips import error_lines, make_clip, stop_signals_at_default

from stylebatch import storage
from stylebatch.storage import tuning
from stylebatch.contract import EXIT_BAD_INPUT, EXIT_TRANSIENT

STORAGE_VARS = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
                "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_BLOB_ENDPOINT")
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class _Answer(http.server.BaseHTTPRequestHandler):
    """A fake blob endpoint: 'status' answers every request with that HTTP status; 'hang' never answers."""

    mode = "503"

    def _reply(self) -> None:
        if self.mode == "hang":
            threading.Event().wait(5)
            return
        self.send_response(int(self.mode))
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_PUT = do_DELETE = _reply

    def log_message(self, *args) -> None:
        pass


def _server(mode: str) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Answer,), {"mode": mode})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def quick_storage(monkeypatch: pytest.MonkeyPatch):
    """No SDK retries and a short read timeout (the seam the module documents), a clean environment."""
    for name in STORAGE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tuning, "settings", dataclasses.replace(tuning.settings, retry_total=0,
                                                                read_timeout_s=1, connection_timeout_s=2))
    storage.clear_client_cache()
    yield monkeypatch
    storage.clear_client_cache()


@pytest.mark.parametrize("case, code, words", [
    ("connection refused", EXIT_TRANSIENT, ["cannot reach blob storage", "connection refused"]),
    ("HTTP 503", EXIT_TRANSIENT, ["HTTP 503"]),
    ("HTTP 500", EXIT_TRANSIENT, ["HTTP 500"]),
    ("no answer (timeout)", EXIT_TRANSIENT, ["cannot reach blob storage"]),
    ("no token from the identity", EXIT_TRANSIENT, ["could not get a token"]),
    ("HTTP 403", EXIT_BAD_INPUT, ["access denied"]),
    ("HTTP 404", EXIT_BAD_INPUT, ["not found"]),
])
def test_storage_failures_exit_75_when_a_retry_can_help_and_2_when_not(case: str, code: int, words: list[str],
                                                                      quick_storage, tmp_path: Path, capsys) -> None:
    from stylebatch.cli import main

    server = None
    if case == "connection refused":
        endpoint = f"http://127.0.0.1:{_closed_port()}/devstoreaccount1"
    elif case == "no token from the identity":
        endpoint = f"https://127.0.0.1:{_closed_port()}/myacct"
        for name, value in {"AZURE_STORAGE_ACCOUNT": "myacct", "AZURE_STORAGE_BLOB_ENDPOINT": endpoint,
                            "AZURE_TOKEN_CREDENTIALS": "WorkloadIdentityCredential",
                            "AZURE_CLIENT_ID": str(uuid.uuid4()), "AZURE_TENANT_ID": str(uuid.uuid4()),
                            "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "not-mounted")}.items():
            quick_storage.setenv(name, value)
    else:
        server = _server("hang" if case.startswith("no answer") else case.split()[-1])
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/devstoreaccount1"
    if case != "no token from the identity":
        quick_storage.setenv("AZURE_STORAGE_CONNECTION_STRING",
                             f"AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint={endpoint}")
    try:
        result = main(["preprocess", "az://videos/in.mp4", "--work", str(tmp_path / "w"), "-o",
                       str(tmp_path / "o.mp4")])
    finally:
        if server is not None:
            server.shutdown()
    err = capsys.readouterr().err
    assert result == code, err
    lines = error_lines(subprocess.CompletedProcess([], 0, "", err))
    assert len(lines) == 1 and all(w in lines[0] for w in words), err


def test_storage_that_does_not_answer_says_each_retry_instead_of_minutes_of_silence(quick_storage, tmp_path: Path,
                                                                                   capsys) -> None:
    """An endpoint that takes connections and never answers: nothing was printed for the read timeout
    times the retries (minutes) before the transient error."""
    from stylebatch.cli import main

    quick_storage.setattr(tuning, "settings", dataclasses.replace(tuning.settings, retry_total=2, retry_backoff_s=0))
    server = _server("hang")
    port = server.server_address[1]
    quick_storage.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName=devstoreaccount1;AccountKey={KEY};"
                                                            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1")
    try:
        result = main(["preprocess", "az://videos/in.mp4", "--work", str(tmp_path / "w"), "-o", str(tmp_path / "o.mp4")])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert result == EXIT_TRANSIENT, err
    said = [line for line in err.splitlines() if "did not answer" in line]
    assert said[:2] == [f"stylebatch: warning: storage at 127.0.0.1:{port} did not answer (timed out): "
                        f"trying again (retry {n} of 2)" for n in (1, 2)], err


# Holds memory in the run's cgroup: what else runs in a pod.
HOG = "import numpy as np, sys, time\nheld = np.ones(int(sys.argv[1]), np.uint8)\nprint('ready', flush=True)\ntime.sleep(600)"


@pytest.mark.slow
@pytest.mark.mpi
def test_a_rank_the_kernel_kills_for_memory_is_named_with_what_to_try(tmp_path: Path) -> None:
    """A real out-of-memory kill: the run goes into a 1.5 GiB memory cgroup, which the pre-flight
    sees (a rank of 720p frames at full size, batches of one, fits it), but where another process
    holds 1.2 GiB, so the kernel's OOM killer ends the rank (the run's processes are its first
    choice, as a pod's container is, and the rank is the largest of them). The 300 MiB left cannot
    hold a rank (torch alone is about 220 MiB); with 1 GiB held, a rank of the leaner networks fit."""
    import memory_cap

    why = memory_cap.available()
    if why:
        pytest.skip(why)
    src = make_clip(tmp_path / "big.mp4", size=(1280, 720), frames=4)
    result = memory_cap.run_capped(
        1536 * 1024 ** 2, ["sh", "-c", 'echo 1000 > /proc/self/oom_score_adj && exec "$@"', "sh",
                           sys.executable, "-m", "stylebatch", "run", str(src), "-o", str(tmp_path / "o.mp4"),
                           "--workers", "1", "--batch-size", "1", "--style", "lavender-gold"],
        companion=[sys.executable, "-c", HOG, str(1229 * 1024 ** 2)])
    assert result.oom_killed and result.returncode == EXIT_BAD_INPUT and "Traceback" not in result.stderr, \
        result.stderr
    assert error_lines(result) == ["stylebatch: error: a rank ran out of memory (the kernel killed it); "
                                   "try --max-side or --batch-size 1"], result.stderr
    assert "BAD TERMINATION" not in result.stderr + result.stdout and "EXIT CODE" not in result.stderr
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.slow
def test_preprocess_the_kernel_kills_for_memory_is_named_as_such(tmp_path: Path) -> None:
    """A real out-of-memory kill of the run's preprocess child: 80 MiB above what another process
    holds in the run's memory cgroup hold the launcher (about 25 MiB) but not preprocess decoding 4K
    frames (it needs 50-110 MiB more, measured); the kernel ends the child, the largest of the run's
    processes. The run says preprocess ran out of memory, with one line and exit code 2."""
    import memory_cap

    why = memory_cap.available()
    if why:
        pytest.skip(why)
    src = make_clip(tmp_path / "big.mp4", size=(3840, 2160), frames=4)
    held = 256 * 1024 ** 2
    result = memory_cap.run_capped(
        held + 80 * 1024 ** 2, ["sh", "-c", 'echo 1000 > /proc/self/oom_score_adj && exec "$@"', "sh",
                                sys.executable, "-m", "stylebatch", "run", str(src), "-o", str(tmp_path / "o.mp4"),
                                "--workers", "1", "--max-side", "32", "--style", "lavender-gold"],
        companion=[sys.executable, "-c", HOG, str(held)])
    assert result.oom_killed and result.returncode == EXIT_BAD_INPUT and "Traceback" not in result.stderr, \
        result.stderr
    assert error_lines(result) == ["stylebatch: error: preprocess ran out of memory (the kernel killed it)"], \
        result.stderr
    assert not (tmp_path / "o.mp4").exists()


# How the launcher reads a stage process's end. The process runner is replaced by one returning the
# exit code (the real signals are sent in test_faults.py; a signal landing before a child's handlers
# are in place cannot be timed there).
@pytest.mark.parametrize("code, errors, ooms, error, exit_code, words", [
    (-15, [], (0, 0), "Interrupted", 143, ["preprocess was interrupted"]),   # before its handlers
    (143, ["interrupted by SIGTERM"], (0, 0), "Interrupted", 143, ["preprocess interrupted by SIGTERM"]),
    (-2, [], (0, 0), "Interrupted", 130, ["preprocess was interrupted"]),
    (-1, [], (0, 0), "Interrupted", 129, ["preprocess was interrupted"]),
    (-9, [], (0, 1), "StylebatchError", 2, ["preprocess ran out of memory (the kernel killed it)"]),
    (-9, [], (None, None), "StylebatchError", 2, ["preprocess ran out of memory"]),  # cannot tell: the likeliest
    (-9, [], (3, 3), "TransientError", 75, ["preprocess was killed (signal 9) from outside stylebatch"]),
    (75, ["storage unreachable"], (0, 0), "TransientError", 75, ["storage unreachable"]),
    (2, ["not a video"], (0, 0), "StylebatchError", 2, ["not a video"]),
    (-11, [], (0, 0), "StylebatchError", 2, ["preprocess was killed (signal 11)"]),
    (1, [], (0, 0), "StylebatchError", 2, ["preprocess failed (exit code 1)"]),
])
def test_how_a_preprocess_process_ended_is_what_the_run_says(monkeypatch, tmp_path: Path, code, errors, ooms, error,
                                                             exit_code, words) -> None:
    from stylebatch import errors as errors_module, run
    from stylebatch.requests import PreprocessRequest

    counts = iter(ooms)
    monkeypatch.setattr(run, "oom_kills", lambda: next(counts))
    monkeypatch.setattr(run, "_start_stage", lambda *args: None)
    monkeypatch.setattr(run, "_stage_process", lambda *args: (code, list(errors)))
    req = PreprocessRequest(input="in.mp4", work=str(tmp_path / "w"), output="out.mp4")
    with pytest.raises(errors_module.StylebatchError) as ended:
        run._preprocess(req, None, None, tmp_path)
    assert isinstance(ended.value, getattr(errors_module, error)) and ended.value.exit_code == exit_code
    assert all(w in str(ended.value) for w in words), str(ended.value)


SIGNALS_PROBE = """
import os, signal, sys
from stylebatch import signals

signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
signals.install()
print("hup ignored" if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else "hup taken over")
try:
    os.kill(os.getpid(), signal.SIGINT)
    signal.pause() if False else [None for _ in range(10 ** 6)]
except KeyboardInterrupt:
    os.kill(os.getpid(), signal.SIGTERM)  # a second stop signal while stopping: no second raise
    [None for _ in range(10 ** 6)]
    print("stopped once", signals.exit_code(), signals.cause())
"""


def test_the_first_stop_signal_decides_and_a_later_one_does_not_interrupt_the_cleanup() -> None:
    result = subprocess.run([sys.executable, "-c", SIGNALS_PROBE], capture_output=True, text=True, timeout=60,
                            preexec_fn=stop_signals_at_default)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines() == ["hup ignored", "stopped once 130 Ctrl-C (SIGINT)"], result.stdout


@pytest.mark.parametrize("stopped_when, frames, said, kept", [
    # stopped during preprocess (a SIGTERM in its first second): run left its own work dir holding only the
    # owner record and said "kept (the input was not fully read yet): run the same command again to resume"
    ("during preprocess", 4, "before the input was read", "kept (the input was not fully read yet)"),
    # stopped after preprocess, before any chunk was stylized: run's own work dir stayed in the cache (for
    # ever, if the command was not run again) holding a whole copy of the input, to save only preprocess
    ("after preprocess", 12, "before any chunk was stylized", "kept with 0 of 3 chunks stylized"),
])
@pytest.mark.parametrize("own_work", [True, False])
def test_a_run_stopped_before_any_chunk_was_stylized_keeps_no_work_dir_of_its_own(
        monkeypatch, tmp_path: Path, stopped_when: str, frames: int, said: str, kept: str, own_work: bool) -> None:
    """Nothing, or only preprocess, to resume from: run's own work dir goes, in one line saying so. A --work
    of the user's is kept, as it is said to be."""
    from stylebatch import run
    from stylebatch.errors import Interrupted
    from stylebatch.requests import EncodingOptions, RunRequest

    preprocess = run._preprocess

    def stopped(*args):
        if stopped_when == "after preprocess":
            preprocess(*args)
        raise KeyboardInterrupt  # what the stop signal's handler raises (signals.py)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(run, "_early_ranks", lambda *args: None)
    monkeypatch.setattr(run, "_preprocess", stopped)
    clip = make_clip(tmp_path / "in.mp4", frames=frames)
    work = None if own_work else str(tmp_path / "work")
    with pytest.raises(Interrupted) as ended:
        run.run(RunRequest(input=str(clip), output=str(tmp_path / "o.mp4"), work=work, workers=1,
                           encoding=EncodingOptions(chunk_frames=4)))
    if own_work:
        assert str(ended.value).endswith(f"{said}: nothing kept"), str(ended.value)
        assert list((tmp_path / "cache" / "stylebatch" / "work").iterdir()) == []
    else:
        assert f"work dir {work} {kept}: run again with --work" in str(ended.value)
        assert (tmp_path / "work" / ("source.mp4" if stopped_when == "after preprocess" else
                                     "stylebatch-work.json")).exists()
    assert not (tmp_path / "o.mp4").exists()


def test_a_run_stopped_while_its_work_dir_goes_says_its_output_was_written(monkeypatch, tmp_path: Path) -> None:
    """Ctrl-C while run removed its work dir after publishing the output: the manifest goes first, so it
    said "interrupted by ... before the input was read: nothing kept" of a finished video."""
    from clips import FAST_STYLE, count_frames, make_clip
    from stylebatch import run, workdir
    from stylebatch.errors import Interrupted
    from stylebatch.requests import ModelOptions, RunRequest

    def stopped_halfway(work):
        (Path(work.local_path()) / "manifest.json").unlink()
        raise KeyboardInterrupt

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(workdir, "delete_work", stopped_halfway)
    clip, out = make_clip(tmp_path / "in.mp4", frames=4), tmp_path / "o.mp4"
    with pytest.raises(Interrupted) as ended:
        run.run(RunRequest(input=str(clip), output=str(out), workers=1,
                           model=ModelOptions(style=FAST_STYLE[1], max_side=int(FAST_STYLE[3]))))
    assert f"after {out} was written, while work dir" in str(ended.value) and "nothing kept" not in str(ended.value)
    assert count_frames(out) == 4


def test_a_temp_folder_without_flock_still_runs(monkeypatch, tmp_path: Path) -> None:
    """On a TMPDIR whose filesystem has no flock (some NFS, Lustre) the scratch lock raised OSError:
    a traceback and exit code 1 before any work."""
    import errno
    import fcntl

    from stylebatch import run

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.setattr(run.tempfile, "tempdir", None)
    scratch, fd = run._make_scratch()
    os.close(fd)
    assert scratch.parent == tmp_path and scratch.is_dir()
    old = time.time() - 3600
    os.utime(scratch / run.SCRATCH_LOCK, (old, old))
    assert run._sweep_scratch(tmp_path) == [] and scratch.is_dir()  # whether it lives cannot be told: kept


def test_a_runs_stage_processes_hold_its_scratch_lock_too(monkeypatch, tmp_path: Path) -> None:
    """Only the launcher held the lock: killed, its stages (told to stop by the kernel, a moment later)
    still wrote their scratch while a new run could sweep it."""
    import fcntl

    from stylebatch import run

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(run.tempfile, "tempdir", None)
    scratch, fd = run._make_scratch()
    stage = run._start_stage([sys.executable, "-c", "import time; time.sleep(30)"], dict(os.environ))
    try:
        os.close(fd)  # as if the launcher were gone
        run._SCRATCH_LOCKS.discard(fd)
        with open(scratch / run.SCRATCH_LOCK) as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the stage holds it
    finally:
        stage.kill()
        stage.wait()
    with open(scratch / run.SCRATCH_LOCK) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the stage is gone
