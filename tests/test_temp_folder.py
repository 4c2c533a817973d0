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
