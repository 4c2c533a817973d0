"""The CLI a user runs: `stylebatch styles`, `stylebatch run` (progress, work dir, resume), and the full
blob round trip against Azurite."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from clips import FAST_STYLE, audio_md5, count_frames, error_lines, frame_pts, make_clip, stylebatch

from stylebatch.monitor import Monitor
from stylebatch.progress import RankProgress, format_line


def test_styles_lists_every_builtin_style_and_marks_the_default() -> None:
    from stylebatch.models import DEFAULT_STYLE, list_styles

    result = stylebatch("styles")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    styles = list_styles()
    assert len(lines) == len(styles)
    for line, style in zip(lines, styles):
        assert style.name in line and style.description in line
    marked = [line for line in lines if "(default)" in line]
    assert len(marked) == 1 and DEFAULT_STYLE in marked[0]


SIG = "FitZHDUHGRsL20hlUGWfnHI7YvaPFT9x3ZtL2mIzrpo%3D"


@pytest.mark.parametrize("argv", [
    ["run", "samples/none.mp4", "-o", f"out.mp4&se=2026-12-08&sp=racwdl&sv=2024-05-04&sr=c&sig={SIG}"],
    ["run", f"az://videos/in.mp4&sp=r&sig={SIG}", "-o", "out.mp4"],
    ["run", f"az://videos/in.mp4%26sp%3Dr%26sig%3D{SIG}", "-o", "out.mp4"],
])
def test_a_sas_pasted_where_no_query_string_goes_is_never_printed(argv, tmp_path) -> None:
    """'&' typed for '?' (or the token percent-encoded) made the SAS part of a name, printed whole."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_STORAGE")}
    result = stylebatch(*argv, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1 and "REDACTED" in error_lines(result)[0]
    assert SIG not in result.stderr and SIG.split("%")[0] not in result.stderr


def test_a_full_stdout_is_said_to_be_stdout_not_the_temp_folder() -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "stylebatch", "styles"], stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["stylebatch: error: cannot write to standard output (No space left on device)"]


def test_a_reader_that_stops_early_ends_the_list_quietly() -> None:
    listing = subprocess.Popen([sys.executable, "-m", "stylebatch", "styles"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    listing.stdout.close()  # `stylebatch styles | head -0`
    assert listing.wait(timeout=120) == 0
    assert listing.stderr.read() == ""


@pytest.mark.parametrize("command", [[], ["run"], ["preprocess"], ["stylize"], ["postprocess"]])
def test_help(command: list[str]) -> None:
    result = stylebatch(*command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_monitor_sums_ranks_and_counts_speed_only_for_new_frames() -> None:
    out = io.StringIO()
    m = Monitor(frames=100, stream=out, tty=True)
    assert m.line(format_line(RankProgress(0, 2, 30, 50, 100)))  # 30 frames were already done (resume)
    assert m.line(format_line(RankProgress(1, 2, 0, 50, 100)))
    assert not m.line("some other log line")
    assert (m.done, m.resumed) == (30, 30)
    m.line(format_line(RankProgress(1, 2, 20, 50, 100)))
    assert m.done == 50
    assert "50/100 frames (50%)" in m.status()
    m.show(final=True)
    assert out.getvalue().endswith("\n") and "[###############" in out.getvalue()


def test_the_progress_callback_is_called_once_per_count_and_the_final_one_once() -> None:
    """Two ranks at 0, each chunk's record and a timed one at the same count, and each rank's closing
    record: the API's progress got (48, 48) three times."""
    seen: list[tuple[int, int]] = []
    m = Monitor(frames=48, stream=io.StringIO(), tty=False, on_update=lambda done, total: seen.append((done, total)))
    for rank, done in [(0, 0), (1, 0), (0, 12), (0, 12), (1, 12), (0, 24), (1, 24), (0, 24), (1, 24)]:
        m.line(format_line(RankProgress(rank, 2, done, 24, 48)))
    assert seen == [(0, 48), (12, 48), (24, 48), (36, 48), (48, 48)]


@pytest.mark.parametrize("command", ["styles", "quality", "operator", "preview", "watch"])
def test_every_subcommands_help_says_what_it_does_in_a_line(command: str) -> None:
    """`stylebatch styles --help` (and quality's, operator's, preview's, watch's) was a usage line and
    the flags, nothing saying what the command does; its line in `stylebatch --help` now heads it."""
    result = stylebatch(command, "--help")
    summary = next(line.split(None, 1)[1] for line in stylebatch("--help").stdout.splitlines()
                   if line.split()[:1] == [command])
    description = " ".join(result.stdout.split("\n\n")[1].split())
    assert result.returncode == 0 and description.lower().startswith(summary.lower()), result.stdout


@pytest.mark.parametrize("argv, help_of", [
    (["run", "in.mp4", "-o", "o.mp4", "--stlye", "ink-wash"], "stylebatch run"),  # said `stylebatch --help`
    (["watch", "in", "-o", "out", "--stlye", "ink-wash"], "stylebatch watch"),
    (["preview", "in.mp4", "-o", "p.png", "--tiles", "64"], "stylebatch preview"),
    (["run", "in.mp4", "-o", "o.mp4", "stray"], "stylebatch run"),
    (["--stlye", "ink-wash"], "stylebatch"),
    (["run", "in.mp4", "--stlye", "ink-wash"], "stylebatch run"),  # -o missing: no file-name hint for a flag
])
def test_a_mistyped_flag_points_at_the_help_of_the_command_it_was_given_to(argv: list[str], help_of: str) -> None:
    result = stylebatch(*argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert line.endswith(f"(see `{help_of} --help`)") and "read as a flag" not in line, line


@pytest.mark.parametrize("argv, dashed", [
    (["run", "-take2.mov", "-o", "x.mp4"], "-take2.mov"),  # said "the following arguments are required: input"
    (["run", "-o", "x.mp4", "-take2.mov"], "-take2.mov"),
    (["quality", "-a.mp4", "b.mp4"], "-a.mp4"),
])
def test_an_input_named_like_a_flag_is_told_how_to_give_it(argv: list[str], dashed: str, tmp_path: Path) -> None:
    result = stylebatch(*argv, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert f"{dashed} was read as a flag" in line and f"./{dashed}" in line and "after --" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, flag, dashed", [
    (["run", "in.mp4", "-o", "-take3.mp4"], "-o", "-take3.mp4"),  # said only "expected one argument"
    (["run", "in.mp4", "-o", "o.mp4", "--style", "-odd.jpg"], "--style", "-odd.jpg"),
])
def test_a_flags_value_named_like_a_flag_is_told_how_to_give_it(argv: list[str], flag: str, dashed: str,
                                                                 tmp_path: Path) -> None:
    result = stylebatch(*argv, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert f"{dashed} was read as a flag: write {flag}={dashed}, or {flag} ./{dashed}" in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_preset_for_a_codec_without_presets_says_so() -> None:
    """--preset slow for MJPEG said "bad --preset 'slow' for mjpeg: choices are none"."""
    result = stylebatch("run", "in.mp4", "-o", "o.avi", "--preset", "slow")
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "mjpeg takes no --preset" in line and "none" not in line, line


def test_monitor_reads_records_of_two_ranks_glued_on_one_line() -> None:
    m = Monitor(frames=40, stream=io.StringIO(), tty=False)
    assert m.line(format_line(RankProgress(0, 2, 5, 20, 40)) + format_line(RankProgress(1, 2, 7, 20, 40)) + "\n")
    assert m.done == 12


@pytest.mark.slow
def test_run_draws_a_progress_bar_on_a_tty(clip, tmp_path: Path) -> None:
    src = clip("in.mp4", size=(96, 64), frames=30, audio=("aac",))
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "stylebatch", "run", str(src), "-o", str(tmp_path / "o.mp4"),
                             "--chunk-frames", "8", *FAST_STYLE], stderr=follower, stdout=subprocess.DEVNULL)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0
    text = seen.decode(errors="replace")
    assert "\r" in text and "] 30/30 frames (100%)" in text and "ETA" in text


@pytest.mark.slow
def test_run_logs_progress_lines_when_not_a_tty_and_removes_its_temp_work_dir(clip, tmp_path: Path) -> None:
    src = clip("in.mp4", size=(96, 64), frames=30, audio=("aac",))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = stylebatch("run", src, "-o", tmp_path / "o.mp4", *FAST_STYLE, env=dict(os.environ, TMPDIR=str(tmp)))
    assert result.returncode == 0, result.stderr
    assert "stylize: 30/30 frames (100%)" in result.stderr
    assert "\r" not in result.stderr and "STYLEBATCH_PROGRESS" not in result.stderr
    assert os.listdir(tmp) == []


@pytest.mark.slow
def test_keep_work_then_resume_with_work(clip, tmp_path: Path) -> None:
    src = clip("in.mp4", size=(96, 64), frames=30, audio=("aac",))
    work, out = tmp_path / "work", tmp_path / "o.mp4"
    result = stylebatch("run", src, "-o", out, "--work", work, "--keep-work", "--chunk-frames", "8", "--workers", "1",
                        *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    assert (work / "manifest.json").exists()
    parts = sorted((work / "parts").iterdir())
    assert len(parts) == 4
    parts[0].unlink()
    out.unlink()
    # a different chunk size cannot reuse the parts; left out, the work dir's own is used
    result = stylebatch("run", src, "-o", out, "--work", work, "--chunk-frames", "10", *FAST_STYLE)
    assert result.returncode != 0 and "--chunk-frames" in result.stderr and (work / "manifest.json").exists()
    result = stylebatch("run", src, "-o", out, "--work", work, "--workers", "1", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    assert "1 of 4 chunks left to stylize" in result.stderr  # the other three parts were reused
    assert count_frames(out) == 30 and frame_pts(out) == frame_pts(src)
    assert not work.exists()  # removed after success without --keep-work


@pytest.mark.slow
@pytest.mark.azurite
def test_blob_round_trip(azure_env, clip, tmp_path: Path) -> None:
    """az:// in, az:// out, and the work dir on blob storage too, as the pods use it."""
    from stylebatch.storage import location

    src = clip("in.mp4", size=(96, 64), frames=30, audio=("aac",))
    base = f"az://{azure_env.container}"
    location(f"{base}/uploads/my clip.mp4").upload(src)
    result = stylebatch("run", f"{base}/uploads/my clip.mp4", "-o", f"{base}/done/styled.mp4",
                        "--work", f"{base}/work/job1", "--workers", "2", "--chunk-frames", "8", *FAST_STYLE,
                        env=azure_env.env)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "styled.mp4"
    location(f"{base}/done/styled.mp4").download(out)
    assert count_frames(out) == 30 and frame_pts(out) == frame_pts(src)
    assert audio_md5(out, 0) == audio_md5(src, 0)
    assert location(f"{base}/work/job1").list() == []  # the work dir is removed after success


@pytest.mark.azurite
@pytest.mark.parametrize("command", ["run", "preview"])
def test_a_blob_style_that_is_not_one_is_named_by_its_uri_not_by_a_deleted_temporary_copy(azure_env, clip,
                                                                                          tmp_path: Path, command):
    """A video given as --style by its URL with a SAS: the one line named the local copy it was loaded
    from (/tmp/stylebatch-run-.../style-0-.../in.mp4, gone when the command ended); now the blob, as
    the user gave it, without its SAS."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from stylebatch.storage import location

    az = azure_env.azurite
    sas = generate_container_sas(az.account, azure_env.container, account_key=az.key,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    base = f"{az.endpoint}/{azure_env.container}"
    src = clip("in.mp4", size=(96, 64), frames=6)
    location(f"{base}/in.mp4").upload(src)
    env = {k: v for k, v in azure_env.env.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}  # the SAS only
    out = tmp_path / ("out.mp4" if command == "run" else "sheet.png")
    result = stylebatch(command, src, "-o", out, "--style", f"{base}/in.mp4?{sas}", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = error_lines(result)
    assert f"style file {base}/in.mp4: not a PyTorch checkpoint" in line, line
    signature = [p for p in sas.split("&") if p.startswith("sig=")][0]
    assert "stylebatch-" not in line and signature not in result.stderr + result.stdout, line
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.azurite
def test_sas_urls_are_never_printed(azure_env, clip, tmp_path: Path) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from stylebatch.storage import location

    az = azure_env.azurite
    sas = generate_container_sas(az.account, azure_env.container, account_key=az.key,
                                 permission=ContainerSasPermissions(read=True, write=True, delete=True,
                                                                    list=True, create=True, add=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    base = f"{az.endpoint}/{azure_env.container}"
    src = clip("in.mp4", size=(96, 64), frames=30, audio=("aac",))
    location(f"{base}/in.mp4?{sas}").upload(src)
    env = {k: v for k, v in azure_env.env.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}  # the SAS only
    result = stylebatch("run", f"{base}/in.mp4?{sas}", "-o", f"{base}/out.mkv?{sas}", *FAST_STYLE, env=env)
    assert result.returncode == 0, result.stderr
    signature = [p for p in sas.split("&") if p.startswith("sig=")][0]
    assert signature not in result.stderr + result.stdout
    out = tmp_path / "out.mkv"
    location(f"{base}/out.mkv?{sas}").download(out)
    assert count_frames(out) == 30
    # and a missing blob behind a SAS is an error that names it without the SAS
    result = stylebatch("run", f"{base}/missing.mp4?{sas}", "-o", tmp_path / "x.mp4", env=env)
    assert result.returncode != 0 and signature not in result.stderr and "missing.mp4" in result.stderr


@pytest.mark.slow
def test_without_mpiexec_one_worker_runs_and_more_is_an_error(clip, tmp_path: Path, monkeypatch, capsys) -> None:
    """mpiexec is hidden by patching its lookup (it is installed here): one rank needs no MPI."""
    import stylebatch.run as run_module
    from stylebatch.cli import main

    monkeypatch.setattr(run_module, "find_mpiexec", lambda: None)
    src = clip("in.mp4", size=(96, 64), frames=30, audio=("aac",))
    assert main(["run", str(src), "-o", str(tmp_path / "o.mp4"), "--workers", "1", *FAST_STYLE]) == 0
    assert count_frames(tmp_path / "o.mp4") == 30 and frame_pts(tmp_path / "o.mp4") == frame_pts(src)
    capsys.readouterr()
    # two chunks, so two ranks have work (one chunk runs one rank: no mpiexec needed, as below)
    assert main(["run", str(src), "-o", str(tmp_path / "p.mp4"), "--workers", "2", "--chunk-frames", "15", *FAST_STYLE]) == 2
    assert "stylebatch: error: --workers 2 needs mpiexec" in capsys.readouterr().err
    assert not (tmp_path / "p.mp4").exists()
    # by default (one rank on the CPU): no mpiexec needed
    assert main(["run", str(src), "-o", str(tmp_path / "q.mp4"), "--chunk-frames", "30", *FAST_STYLE]) == 0
    assert count_frames(tmp_path / "q.mp4") == 30


def test_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    src = tmp_path / "x.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-frames:v", "3",
                    str(src)], check=True)
    work = tmp_path / "work"
    result = stylebatch("run", src, "-o", tmp_path / "o.mp4", "--device", "cuda", "--work", work)
    assert result.returncode == 2 and "Traceback" not in result.stderr  # retrying cannot help
    assert [line for line in result.stderr.splitlines() if line.startswith("stylebatch: error:")] == [
        "stylebatch: error: --device cuda: no GPU is visible here (use --device cpu or auto)"]
    assert not (tmp_path / "o.mp4").exists()
    from stylebatch.run import gpu_may_be_visible

    if not gpu_may_be_visible():  # no GPU driver here at all: refused before the input is read
        assert "preprocessed" not in result.stderr and not work.exists(), result.stderr


@pytest.mark.slow
def test_only_stylebatch_files_are_deleted_from_a_work_dir(clip, tmp_path: Path) -> None:
    src = clip("in.mp4", size=(64, 48), frames=8)
    work, out = tmp_path / "work", tmp_path / "o.mp4"
    args = ("run", src, "-o", out, "--work", work, "--workers", "1", "--chunk-frames", "4", *FAST_STYLE)
    assert stylebatch(*args, "--keep-work").returncode == 0
    (work / "notes.txt").write_text("mine")  # the user's own file, added to a stylebatch work dir
    out.unlink()
    result = stylebatch(*args)
    assert result.returncode == 0, result.stderr
    assert count_frames(out) == 8
    assert sorted(os.listdir(work)) == ["notes.txt"] and (work / "notes.txt").read_text() == "mine"


def test_postprocess_delete_work_removes_only_its_files_after_publishing(clip, tmp_path: Path) -> None:
    src = clip("in.mp4", size=(64, 48), frames=8)
    work, out = tmp_path / "work", tmp_path / "o.mp4"
    assert stylebatch("preprocess", src, "--work", work, "-o", out).returncode == 0
    assert stylebatch("stylize", "--work", work, *FAST_STYLE).returncode == 0
    (work / "keep.txt").write_text("mine")
    result = stylebatch("postprocess", "--work", work, "--delete-work")
    assert result.returncode == 0, result.stderr
    assert count_frames(out) == 8
    assert sorted(os.listdir(work)) == ["keep.txt"]
    # without the flag the work dir stays whole
    work2 = tmp_path / "work2"
    assert stylebatch("run", src, "-o", tmp_path / "p.mp4", "--work", work2, "--keep-work", *FAST_STYLE).returncode == 0
    assert (work2 / "manifest.json").exists()


@pytest.mark.slow
def test_resume_with_another_style_is_refused_and_the_same_style_resumes(clip, tmp_path: Path) -> None:
    src = clip("in.mp4", size=(64, 48), frames=8)
    work, out = tmp_path / "work", tmp_path / "o.mp4"
    assert stylebatch("preprocess", src, "--work", work, "-o", out, "--chunk-frames", "4").returncode == 0
    assert stylebatch("stylize", "--work", work, *FAST_STYLE).returncode == 0
    first = sorted((work / "parts").iterdir())
    first[0].unlink()
    for flags, words in [(["--style", "ink-wash", "--max-side", "48"], ["lavender-gold", "ink-wash"]),
                         (["--style", "lavender-gold", "--max-side", "64"], ["max side 48", "max side 64"]),
                         ([*FAST_STYLE, "--strength", "0.5"], ["strength 1", "strength 0.5"])]:
        result = stylebatch("stylize", "--work", work, *flags)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(error_lines(result)) == 1 and "delete its parts/" in result.stderr
        assert all(w in error_lines(result)[0] for w in words), result.stderr
        assert len(list((work / "parts").iterdir())) == 1
    # run passes the same check, as one line
    result = stylebatch("run", src, "-o", out, "--work", work, "--workers", "2", "--style", "2", "--max-side", "48")
    assert result.returncode == 2 and "Traceback" not in result.stderr and not out.exists()
    assert len(error_lines(result)) == 1 and "ink-wash" in error_lines(result)[0]
    result = stylebatch("run", src, "-o", out, "--work", work, "--workers", "1", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    assert count_frames(out) == 8



def test_more_workers_than_chunks_start_one_rank_per_chunk(clip, tmp_path: Path) -> None:
    src = clip("in.mp4", size=(96, 64), frames=30)
    result = stylebatch("run", src, "-o", tmp_path / "o.mp4", "--workers", "8", "--chunk-frames", "15", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    assert "2 chunks of work: running 2 ranks, not 8" in result.stderr
    assert count_frames(tmp_path / "o.mp4") == 30


@pytest.mark.parametrize("flags, warned", [
    (["--temporal-strength", "0.5"], True),  # accepted silently: it changed nothing
    (["--temporal", "off", "--temporal-strength", "0.5"], True),
    (["--temporal", "on", "--temporal-strength", "0.5"], False),
    ([], False),
])
def test_temporal_strength_without_temporal_on_is_said_to_change_nothing(tmp_path, flags, warned):
    clip = make_clip(tmp_path / "in.mp4", frames=4)
    result = stylebatch("run", clip, "-o", tmp_path / "o.mp4", "--max-side", "32", *flags,
                        env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert result.returncode == 0, result.stderr
    line = "stylebatch: warning: --temporal-strength changes nothing without --temporal on"
    assert (line in result.stderr) == warned and result.stderr.count(line) <= 1


def test_python_dash_m_stylebatch_operator_is_stylebatch_operator(tmp_path):
    """`python -m stylebatch_operator` said "No module named stylebatch_operator.__main__"."""
    helped = subprocess.run([sys.executable, "-m", "stylebatch_operator", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert helped.returncode == 0 and "--namespace" in helped.stdout and "--liveness-port" in helped.stdout
    result = subprocess.run([sys.executable, "-m", "stylebatch_operator"], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, KUBECONFIG=str(tmp_path / "none"), KUBERNETES_SERVICE_HOST=""))
    assert result.returncode == 2 and error_lines(result) == [
        line for line in result.stderr.splitlines() if line.startswith("stylebatch: error:")]
    assert len(error_lines(result)) == 1 and "no Kubernetes credentials" in error_lines(result)[0], result.stderr


WAIT_POLICY = """
import os, sys
import stylebatch.cli
print(os.environ["OMP_WAIT_POLICY"], "torch" in sys.modules)  # set before torch reads it
"""


@pytest.mark.parametrize("given, seen", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_torch_threads_wait_asleep_unless_the_user_says_otherwise(given, seen) -> None:
    """torch's OpenMP threads spun while they waited: beside one other busy process a pipeline of 2
    torch threads painted at a third of its speed (docs/benchmarks.md, twenty-sixth pass). The CLI
    (every stage and rank) sets the policy before torch is imported; a user's own setting stays."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    result = subprocess.run([sys.executable, "-c", WAIT_POLICY], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [seen, "False"]
