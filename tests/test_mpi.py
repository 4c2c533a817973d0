"""Real MPI ranks (mpiexec from the pip mpich package) running `stylebatch stylize`, and resume."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from clips import FAST_STYLE, count_frames, error_lines, frame_pts, stylebatch

from stylebatch.progress import latest_by_rank

pytestmark = [pytest.mark.mpi, pytest.mark.slow]
BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"


def mpiexec(*argv: str, work: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """mpiexec ARGV as the operator's launcher runs it: with its environment's HWLOC_XMLFILE and a
    TMPDIR of its own (a pod's emptyDir) beside the work dir, so ranks a test makes abort leave
    neither MPICH's topology file nor their scratch in this machine's /tmp."""
    from stylebatch.contract import HWLOC_XMLFILE_ENV, no_topology_file

    scratch = work.parent / "tmp"
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(scratch), **{HWLOC_XMLFILE_ENV: no_topology_file(str(scratch))})
    return subprocess.run([str(MPIEXEC), *argv], capture_output=True, text=True, timeout=timeout, env=env)


def mpi_stylize(n: int, work: Path, *flags: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Exactly the operator's pod command: mpiexec -n N stylebatch stylize --work W ..."""
    return mpiexec("-n", str(n), str(BIN / "stylebatch"), "stylize", "--work", str(work), *FAST_STYLE, *flags,
                   work=work, timeout=timeout)


def succeeded(result: subprocess.CompletedProcess) -> bool:
    """mpiexec's exit code 0; where not, the assertion shows both streams: MPICH's banner (which rank
    ended how: "EXIT CODE: 9" is a rank killed, by the kernel or by mpiexec after another rank's bad
    end) is on stdout, the ranks' lines on stderr."""
    assert result.returncode == 0, f"exit code {result.returncode}\nstderr:\n{result.stderr}\nstdout:\n{result.stdout[-4000:]}"
    return True


def last_progress(stdout: str) -> dict[int, object]:
    return latest_by_rank(stdout.splitlines())


def parts(work: Path) -> dict[str, tuple[int, int]]:
    """part name -> (inode, mtime_ns): equal means the file was not rewritten."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((work / "parts").iterdir())}


@pytest.fixture()
def preprocessed(clip, tmp_path: Path) -> tuple[Path, Path, Path]:
    src = clip("mpi.mp4", size=(96, 64), frames=30, audio=("aac",), extra=("-g", "7"))
    work, out = tmp_path / "work", tmp_path / "out.mp4"
    result = stylebatch("preprocess", src, "--work", work, "-o", out, "--chunk-frames", "6")
    assert succeeded(result)
    return src, work, out


@pytest.mark.parametrize("terminal", [True, False])
def test_stylize_by_hand_on_a_terminal_says_its_progress_in_words(preprocessed, terminal: bool) -> None:
    """`stylebatch stylize --work W` typed at a terminal printed STYLEBATCH_PROGRESS {"rank":0,...}
    records, meant for a launcher or the operator; there it says "stylize: 6/30 frames (20%), ..." as
    `stylebatch run` does. Piped (a launcher, a pod's log) it keeps the records."""
    import pty

    _, work, _ = preprocessed
    primary, secondary = pty.openpty() if terminal else os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "stylebatch", "stylize", "--work", str(work), *FAST_STYLE],
                            stdout=secondary, stderr=subprocess.PIPE, text=True)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # the terminal's other end closed
            break
        if not data:
            break
        chunks.append(data)
    _, err = proc.communicate(timeout=300)
    os.close(primary)
    out = b"".join(chunks).decode()
    assert proc.returncode == 0, err
    if terminal:
        assert "STYLEBATCH_PROGRESS" not in out + err and re.search(r"stylize: \d+/30 frames", err), (out, err)
    else:
        assert "STYLEBATCH_PROGRESS" in out and last_progress(out)[0].done == 30


def test_two_ranks_share_the_chunks_then_resume_redoes_only_the_missing_part(preprocessed) -> None:
    src, work, out = preprocessed
    result = mpi_stylize(2, work)
    assert succeeded(result)
    progress = last_progress(result.stdout)
    # 5 chunks of 6 frames, taken one at a time: each rank finished what it took, together all 30
    assert set(progress) == {0, 1}
    assert all((p.done, p.ranks, p.frames) == (p.share, 2, 30) and p.share % 6 == 0 for p in progress.values())
    assert sum(p.share for p in progress.values()) == 30
    first = parts(work)
    assert list(first) == [f"{s:09d}-{min(s + 6, 30):09d}.mkv" for s in range(0, 30, 6)]

    assert stylebatch("postprocess", "--work", work).returncode == 0
    assert count_frames(out) == 30 and frame_pts(out) == frame_pts(src)

    # resume with a different rank count: only the deleted part is stylized again
    (work / "parts" / "000000012-000000018.mkv").unlink()
    result = mpi_stylize(3, work)
    assert succeeded(result)
    again = parts(work)
    assert set(again) == set(first)
    changed = {name for name in first if again[name] != first[name]}
    assert changed == {"000000012-000000018.mkv"}
    progress = last_progress(result.stdout)
    assert sum(p.done for p in progress.values()) == 30  # resumed parts count as done

    out.unlink()
    result = stylebatch("postprocess", "--work", work)
    assert succeeded(result)
    assert count_frames(out) == 30 and frame_pts(out) == frame_pts(src)


# The installed `stylebatch` command (its script, run as it is) with an exit hook standing in for the
# interpreter's teardown.
_WITH_EXIT_HOOK = ("import atexit, runpy, sys; atexit.register(lambda: sys.stderr.write('interpreter teardown ran\\n')); "
                   f"sys.argv[0] = {str(BIN / 'stylebatch')!r}; runpy.run_path(sys.argv[0], run_name='__main__')")


def test_ranks_end_without_the_interpreters_teardown_once_their_output_is_out(preprocessed) -> None:
    """Freeing torch and the model object by object at exit took 0.5-1 s per rank at the end of every
    job (docs/benchmarks.md); the ranks skip it, after their last lines and MPI's finalize, and
    mpiexec still sees them succeed. A command that never imports torch ends the ordinary way."""
    src, work, out = preprocessed
    result = mpiexec("-n", "2", sys.executable, "-c", _WITH_EXIT_HOOK, "stylize", "--work", str(work), *FAST_STYLE,
                     work=work)
    assert succeeded(result)
    assert "teardown ran" not in result.stderr
    progress = last_progress(result.stdout)  # every rank's last line arrived
    assert set(progress) == {0, 1} and sum(p.done for p in progress.values()) == 30
    assert len(parts(work)) == 5
    assert stylebatch("postprocess", "--work", work).returncode == 0
    assert count_frames(out) == 30

    styles = subprocess.run([sys.executable, "-c", _WITH_EXIT_HOOK, "styles"], capture_output=True, text=True)
    assert styles.returncode == 0 and "teardown ran" in styles.stderr


def test_more_ranks_than_chunks(clip, tmp_path: Path) -> None:
    src = clip("short.mp4", frames=8)
    work = tmp_path / "work"
    assert stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "o.mp4", "--chunk-frames", "4"
                      ).returncode == 0
    result = mpi_stylize(3, work)
    assert succeeded(result)
    progress = last_progress(result.stdout)
    assert sorted(p.share for p in progress.values()) in ([0, 4, 4], [0, 0, 8])  # a spare rank just idles
    assert len(parts(work)) == 2


def test_a_failing_rank_fails_the_job(preprocessed) -> None:
    """The source in the work dir is cut short after preprocess: the rank that decodes past the cut
    fails, and mpiexec exits non-zero (no rank left waiting)."""
    _, work, _ = preprocessed
    source = work / "source.mp4"
    source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    result = mpi_stylize(2, work, timeout=120)
    assert result.returncode != 0
    assert error_lines(result) or "Traceback" in result.stderr


def test_unknown_style_fails_every_rank_with_one_line(preprocessed) -> None:
    """...and the job's abort leaves nothing in /dev/shm: MPICH keeps its 2 MiB segment file until
    MPI_Finalize, which an aborted job never reaches (one left per failed job before)."""
    _, work, _ = preprocessed
    shared = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    result = mpiexec("-n", "2", str(BIN / "stylebatch"), "stylize", "--work", str(work), "--style", "no-such-style",
                     work=work, timeout=120)
    assert result.returncode != 0
    assert error_lines(result) and all("no-such-style" in line for line in error_lines(result))
    assert "Traceback" not in result.stderr
    assert not (work / "parts").exists() or not any((work / "parts").iterdir())
    if shared:
        assert set(os.listdir("/dev/shm")) - shared == set()


def test_run_with_two_workers(clip, tmp_path: Path) -> None:
    src = clip("mpi.mp4", size=(96, 64), frames=30, audio=("aac",), extra=("-g", "7"))
    out = tmp_path / "out.mp4"
    result = stylebatch("run", src, "-o", out, "--workers", "2", "--chunk-frames", "8", *FAST_STYLE)
    assert succeeded(result)
    assert "on 2 ranks," in result.stderr
    assert count_frames(out) == 30 and frame_pts(out) == frame_pts(src)


SLOW_RANK = """
import pathlib, sys, time
import stylebatch.models as models
call = models.Stylizer.__call__
parts = pathlib.Path(sys.argv[sys.argv.index("--work") + 1]) / "parts"
def slow(self, frames):
    # this rank's device is far slower than the other's: its first batch ends only once the other
    # rank has written 7 parts, however fast or slow this machine is
    deadline = time.monotonic() + 60
    while len(list(parts.glob("*.mkv"))) < 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    return call(self, frames)
models.Stylizer.__call__ = slow
from stylebatch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_slow_rank_takes_fewer_chunks_and_every_chunk_is_done_once(preprocessed, tmp_path: Path) -> None:
    """Chunks are handed out one at a time (an MPI one-sided counter), so a rank that is slow does not
    hold the job up by a fixed share. Rank 1 is throttled by a wrapper around the real CLI."""
    src, _, out = preprocessed
    work = tmp_path / "work10"
    assert stylebatch("preprocess", src, "--work", work, "-o", out, "--chunk-frames", "3").returncode == 0
    wrapper = tmp_path / "slow_rank.py"
    wrapper.write_text(SLOW_RANK)
    args = ["stylize", "--work", str(work), *FAST_STYLE, "--batch-size", "3"]
    result = mpiexec("-n", "1", str(BIN / "stylebatch"), *args, ":", "-n", "1", sys.executable, str(wrapper), *args,
                     work=work)
    assert succeeded(result)
    progress = last_progress(result.stdout)
    # 10 chunks of 3 frames; the slow rank holds at most the chunk in hand and the next at any time
    assert progress[1].share <= 3 * 3 and progress[0].share >= 7 * 3
    assert sum(p.done for p in progress.values()) == 30
    assert len(parts(work)) == 10
    assert stylebatch("postprocess", "--work", work).returncode == 0
    assert count_frames(out) == 30 and frame_pts(out) == frame_pts(src)


@pytest.mark.parametrize("workers, gpus, warned", [
    (1, 1, False), (2, 2, False), (1, 4, False),  # one rank per GPU or fewer
    (2, 1, True), (4, 1, True), (5, 4, True),  # ranks share GPUs
    (4, 0, False),  # a CPU run: no GPU to share
])
def test_more_ranks_than_gpus_is_warned_about(workers, gpus, warned):
    """On one H200, 2 and 4 ranks sharing it took 1.15x and 1.2x one rank's time."""
    from stylebatch.run import default_workers, gpu_sharing

    note = gpu_sharing(workers, gpus)
    assert (note is not None) == warned
    if warned:
        assert note.startswith(f"{workers} ranks on {gpus} GPU") and ": ranks will share GPUs" in note
    assert gpu_sharing(default_workers("cuda", gpus), gpus) is None  # the default never shares


def test_the_tests_remove_mpi_segment_files_no_process_maps_and_keep_mapped_ones():
    """The suite's own clean-up (conftest.py, mpi_shm.py): tests that SIGKILL ranks leave MPICH's segment file behind;
    at the end of a session those no process maps are removed, a live job's never."""
    import mmap

    from mpi_shm import SHM, mpi_shm_files, remove_orphaned_mpi_shm

    if not SHM.is_dir():
        pytest.skip("no /dev/shm here")
    before = mpi_shm_files()
    orphan, live = SHM / f"mpich_shm_test_orphan_{os.getpid()}", SHM / f"mpich_shm_test_live_{os.getpid()}"
    orphan.write_bytes(b"\0" * 4096)
    live.write_bytes(b"\0" * 4096)
    try:
        with open(live, "r+b") as f, mmap.mmap(f.fileno(), 4096):
            removed = remove_orphaned_mpi_shm(before)
            assert orphan.name in removed and not orphan.exists()
            assert live.name not in removed and live.exists()
    finally:
        orphan.unlink(missing_ok=True)
        live.unlink(missing_ok=True)


def test_ranks_that_read_other_bytes_of_the_style_stop_before_painting_anything(preprocessed, user_pth) -> None:
    """Each rank reads the style itself (a blob: its own download), and only rank 0's record was checked:
    a style replaced while the ranks started painted the video's chunks with two styles, and the job
    succeeded. Played here by giving the two ranks two files (mpiexec's MPMD form: one command each)."""
    _, work, _ = preprocessed
    plain, other = user_pth  # the same weights, other bytes
    rank = [str(BIN / "stylebatch"), "stylize", "--work", str(work), "--max-side", "48", "--style"]
    result = mpiexec("-n", "1", *rank, str(plain), ":", "-n", "1", *rank, str(other), work=work)
    assert result.returncode == 75, result.stderr  # run again: the style reads the same then
    assert "stylebatch: error: the style changed while the ranks read it (rank 1 read other bytes than rank 0): " \
        "run again" in result.stderr
    assert not (work / "parts").exists() or not list((work / "parts").iterdir())


def test_a_bare_mpiexec_in_the_tests_writes_no_topology_file_into_tmp() -> None:
    """Tests run `mpiexec` as the operator's launcher does, some without the launcher's environment
    (test_workdir, test_launcher); MPICH's proxy then exported the topology to a file of its own in
    /tmp (hydra hard-codes it; TMPDIR does not move it) and left it there whenever a rank aborted. The
    tests' environment names one that is not written (conftest: HWLOC_XMLFILE), so its ranks see it."""
    result = subprocess.run([str(MPIEXEC), "-n", "1", sys.executable, "-c",
                             "import os; print(os.environ.get('HWLOC_XMLFILE', ''))"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = result.stdout.strip()
    assert seen and not seen.startswith("/tmp/hydra_hwloc_xmlfile"), seen
