"""A pod whose root filesystem is read-only and that lacks its /tmp emptyDir has no temp folder at
all: the stages say so in one line (exit code 2), not with a traceback. (The rehearsal tier runs
the real image that way; here Python's list of temp folder candidates is pointed at nothing.)"""

from __future__ import annotations

import subprocess
import sys

from clips import make_clip

NO_TEMP = ("import sys, tempfile; tempfile._candidate_tempdir_list = lambda: ['/nonexistent-tmp']; "
           "tempfile.tempdir = None; from stylebatch.cli import main; sys.exit(main(sys.argv[1:]))")


def test_no_writable_temp_folder_is_one_line_and_exit_code_2(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", frames=6)
    proc = subprocess.run([sys.executable, "-c", NO_TEMP, "preprocess", str(clip), "--work", str(tmp_path / "w"),
                           "-o", str(tmp_path / "out.mp4")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("stylebatch: error: ")]
    assert len(lines) == 1 and "no writable temp folder" in lines[0] and "/tmp" in lines[0], proc.stderr
    assert not (tmp_path / "out.mp4").exists()


# --- the scratch of a run that was killed ---

def test_the_next_run_sweeps_the_scratch_a_killed_run_left(tmp_path):
    """`kill -9` of `stylebatch run` (or the OOM killer, a power cut) left its scratch folder in TMPDIR:
    the start gate, and under a rank's folder the part it was writing. The next run removes it, and
    nothing a live run holds, a run just starting, or a folder that is not a run's."""
    import os
    import signal
    import time

    from clips import stylebatch

    clip = make_clip(tmp_path / "in.mp4", size=(160, 120), frames=90)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), XDG_CACHE_HOME=str(tmp_path / "cache"))
    killed = subprocess.Popen([sys.executable, "-m", "stylebatch", "run", str(clip), "-o", str(tmp_path / "k.mp4"),
                               "--chunk-frames", "10"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp.glob("stylebatch-run-*/stylebatch-rank0-*")) and time.monotonic() < deadline:
        time.sleep(0.1)  # the rank has its scratch: stylizing
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (left,) = tmp.glob("stylebatch-run-*")
    # its ranks, told by the kernel (PR_SET_PDEATHSIG), stop, and with them goes the lock they
    # inherited (waited for: a rank busy in torch on a loaded machine may take more than a moment)
    import fcntl

    deadline = time.monotonic() + 60
    with open(left / ".held") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the killed run's ranks did not stop"
                time.sleep(0.1)
        fcntl.flock(lock, fcntl.LOCK_UN)
    old = time.time() - 120
    os.utime(left / ".held", (old, old))  # as if it died two minutes ago
    starting = tmp / "stylebatch-run-starting"  # a run that has just made its folder
    starting.mkdir()
    (starting / ".held").touch()
    foreign = tmp / "stylebatch-run-notes"  # no lock file: not a run's
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    live = tmp / "stylebatch-run-live"
    live.mkdir()
    (live / ".held").touch()
    os.utime(live / ".held", (old, old))
    import fcntl

    with open(live / ".held") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a long run that lives
        result = subprocess.run([sys.executable, "-m", "stylebatch", "run", str(clip), "-o", str(tmp_path / "o.mp4"),
                                 "--max-side", "32"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not left.exists()
    assert sorted(p.name for p in tmp.iterdir()) == ["stylebatch-run-live", "stylebatch-run-notes",
                                                     "stylebatch-run-starting"]
    assert (foreign / "mine.txt").read_text() == "keep"
