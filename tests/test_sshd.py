"""stylebatch-sshd, the MPIJob workers' sshd: a worker stopped while its ranks run must not look
Succeeded. Here a stand-in plays sshd (Debian's sshd is not installed on this machine; the
rehearsal tier runs the real one in the worker image): like sshd -D, it forks one process per
session and exits 0 on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FAKE_SSHD = textwrap.dedent("""
    import os, signal, sys, time
    parent = os.getpid()
    if "--session" in sys.argv and os.fork() == 0:  # a rank's ssh session, until sshd goes
        while os.getppid() == parent:
            time.sleep(0.05)
        os._exit(0)
    if "--fail" in sys.argv:
        print("sshd: no hostkeys available -- exiting.", file=sys.stderr)
        sys.exit(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # sshd: "Received signal 15; terminating."
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    print("listening", flush=True)
    time.sleep(60)
""")


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    """`stylebatch-sshd -De ARGS` with the stand-in as its sshd."""
    fake = tmp_path / "sshd"
    fake.write_text(f"#!{sys.executable}\n{FAKE_SSHD}")
    fake.chmod(0o755)
    code = f"import sys; from stylebatch.sshd import main; sys.exit(main(sys.argv[1:], sshd={str(fake)!r}))"
    return subprocess.Popen([sys.executable, "-c", code, "-De", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("args,signum,expected", [
    (["--session"], signal.SIGTERM, 143),  # pod deleted / node drained while a rank runs: Failed
    (["--session"], signal.SIGINT, 130),
    ([], signal.SIGTERM, 0),               # the MPI operator removing an idle worker after the job
])
def test_a_stopped_worker_exits_non_zero_only_when_a_rank_was_still_running(tmp_path, args, signum, expected):
    proc = start(tmp_path, *args)
    assert proc.stdout.readline().strip() == "listening"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == expected, err
    assert "Traceback" not in err
    if expected:
        assert err.strip().endswith(f"stopped while a rank's ssh session was open: exit code {expected}")


def test_sshd_failing_by_itself_passes_its_exit_code_and_message_on(tmp_path):
    proc = start(tmp_path, "--fail")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert err.strip() == "sshd: no hostkeys available -- exiting."
