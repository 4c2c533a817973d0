"""The Python API a notebook or a scheduler uses: `import stylebatch` is light, one call stylizes a
video and reports its progress, and failures are error types a caller can tell apart."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from clips import count_frames, make_clip, stop_signals_at_default

import stylebatch
from stylebatch.api import postprocess, preprocess, stylize
from stylebatch.requests import EncodingOptions, PostprocessRequest, PreprocessRequest


def test_import_stylebatch_loads_neither_torch_nor_pyav_nor_the_azure_sdk() -> None:
    code = ("import sys, stylebatch; stylebatch.stylize_video; stylebatch.RunRequest; "
            "print(sorted(m for m in ('torch', 'av', 'numpy', 'azure.storage.blob') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# One rank needs no MPI: it is a plain child process whether or not mpiexec (mpich's, beside this
# Python) is there; here it is hidden too (a machine without MPI: find_mpiexec is pointed at nothing,
# nothing else is replaced).
WAYS = {"mpiexec installed": False, "no mpiexec": True}


@pytest.fixture(params=list(WAYS))
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if WAYS[request.param]:
        import stylebatch.run as run_module

        monkeypatch.setattr(run_module, "find_mpiexec", lambda: None)
    return request.param


@pytest.mark.slow
def test_stylize_video_reports_progress_after_every_chunk_in_the_calling_thread_and_returns_the_result(
        way: str, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=12, fps=30)
    out = tmp_path / "out" / "styled.mkv"
    out.parent.mkdir()
    seen: list[tuple[int, int, bool]] = []
    # one pipeline: a chunk at a time, so each chunk's end is a round number of frames done
    result = stylebatch.stylize_video(src, out, style="ink-wash", strength=0.7, max_side=48, workers=1, pipelines=1,
                                      device="cpu", encoder=EncodingOptions(chunk_frames=4),
                                      progress=lambda done, total: seen.append(
                                          (done, total, threading.current_thread() is threading.main_thread())))
    assert count_frames(out) == result.frames == 12
    assert result.output == str(out) and result.duration == pytest.approx(12 / 30)
    assert list(result.timings) == ["preprocess", "stylize", "postprocess"]
    assert all(seconds > 0 for seconds in result.timings.values())
    done = [d for d, _, _ in seen]
    assert {total for _, total, _ in seen} == {12} and done == sorted(done) and done[-1] == 12
    assert {4, 8, 12} <= set(done)  # each chunk of 4 frames, as it is finished
    assert len(done) == len(set(done)) and done.count(12) == 1  # once per count: the end was said 2-3 times
    assert all(main for _, _, main in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out"]  # no work dir left behind


@pytest.mark.slow
@pytest.mark.parametrize("raised, caught, exit_code", [
    (KeyboardInterrupt, stylebatch.Interrupted, 130),  # Ctrl-C, a notebook's stop button
    (ValueError, ValueError, None),  # the callback's own bug reaches the caller as it is
])
def test_an_exception_in_the_progress_callback_stops_the_run_and_keeps_the_work_dir_to_resume(
        way: str, raised: type, caught: type, exit_code: int | None, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=12, fps=30)
    out, work = tmp_path / "out.mkv", tmp_path / "work"

    def stop_after_a_chunk(done: int, total: int) -> None:
        if done >= 4:
            raise raised("stop")

    with pytest.raises(caught) as stopped:
        stylebatch.stylize_video(src, out, style="ink-wash", max_side=48, workers=1, device="cpu", work=work,
                                 encoder=EncodingOptions(chunk_frames=4), progress=stop_after_a_chunk)
    if exit_code is not None:
        assert stopped.value.exit_code == exit_code and "to resume" in str(stopped.value)
    assert not out.exists()
    seen: list[int] = []
    result = stylebatch.stylize_video(src, out, style="ink-wash", max_side=48, workers=1, device="cpu", work=work,
                                      encoder=EncodingOptions(chunk_frames=4),
                                      progress=lambda done, total: seen.append(done))
    assert result.frames == count_frames(out) == 12
    assert seen[0] >= 4  # resumed: the chunk finished before the stop was not stylized again


def _open_pipes() -> set[str]:
    """This process's descriptors that are pipes (a stage process's stdout and stderr), by inode."""
    pipes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed meanwhile
            if (target := os.readlink(f"/proc/self/fd/{fd}")).startswith("pipe:"):
                pipes.add(target)
    return pipes


def _stop_at_a_chunk(done: int, total: int) -> None:
    if done:
        raise ValueError("the callback's own bug")


@pytest.mark.slow
@pytest.mark.parametrize("progress, raised", [(None, None), (_stop_at_a_chunk, ValueError)])
def test_a_call_closes_the_pipes_of_its_stage_processes_whether_it_succeeds_or_fails(
        progress, raised: type | None, tmp_path: Path) -> None:
    """A service calls stylize_video again and again: each call left its stage processes' pipes to the
    garbage collector ("ResourceWarning: unclosed file" on success), and a failed one's traceback kept
    them open for as long as the caller held the exception."""
    src = make_clip(tmp_path / "in.mp4", frames=8, fps=30)
    before = _open_pipes()
    with warnings.catch_warnings(record=True) as warned, contextlib.ExitStack() as stack:
        warnings.simplefilter("always", ResourceWarning)
        if raised is not None:
            stack.enter_context(pytest.raises(raised))
        stylebatch.stylize_video(src, tmp_path / "out.mkv", max_side=32, workers=1, device="cpu",
                                 work=tmp_path / "work", encoder=EncodingOptions(chunk_frames=4), progress=progress)
    deadline = time.monotonic() + 10  # a stage's stderr is closed by its reader thread once the stage is gone
    while _open_pipes() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_pipes() - before == set()
    assert [str(w.message) for w in warned if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.azurite
def test_a_sas_given_to_one_call_never_signs_a_later_calls_urls(azure_env, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A service calls stylize_video for one caller with a container SAS in its URLs, then for another
    with URLs of the same container and no SAS: the second was signed with the first caller's token
    (remembered for the process) and succeeded, where it has no credential of its own."""
    from azurite_fixture import sas

    from stylebatch import storage

    az, container = azure_env.azurite, azure_env.container
    src = make_clip(tmp_path / "in.mp4", frames=4)
    az.service_client().get_blob_client(container, "in.mp4").upload_blob(src.read_bytes())
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")  # no credential but the SAS given
    storage.clear_client_cache()
    base, token = f"{az.endpoint}/{container}", sas(az, container)
    result = stylebatch.stylize_video(f"{base}/in.mp4?{token}", f"{base}/first.mp4?{token}", max_side=32,
                                      workers=1, device="cpu")
    assert result.frames == 4
    with pytest.raises(stylebatch.BadInput, match="SAS token"):  # no credential: how to give one
        stylebatch.stylize_video(f"{base}/in.mp4", f"{base}/second.mp4", max_side=32, workers=1, device="cpu")
    assert not az.service_client().get_blob_client(container, "second.mp4").exists()


_STOPPED_BY_PROGRESS = """
import sys
import stylebatch

def stop(done, total):
    if done >= 4:
        raise {"ValueError": ValueError, "KeyboardInterrupt": KeyboardInterrupt}[sys.argv[4]]("stop")

try:
    stylebatch.stylize_video(sys.argv[1], sys.argv[2], work=sys.argv[3] or None, max_side=32, workers=1,
                             device="cpu", encoder=stylebatch.EncodingOptions(chunk_frames=4), progress=stop)
except stylebatch.Interrupted as exc:
    print("INTERRUPTED", exc)
except ValueError:
    print("VALUE ERROR")
"""


@pytest.mark.slow
@pytest.mark.parametrize("raised", ["ValueError", "KeyboardInterrupt"])
@pytest.mark.parametrize("work", ["wk5", ""])
def test_how_to_resume_is_said_in_the_apis_terms_not_the_clis(raised: str, work: str, tmp_path: Path) -> None:
    """A progress callback that raised left `work dir kept at wk5: run again with --work wk5 to resume`
    on stderr, without `stylebatch:`, naming a flag an API caller has no use for."""
    src = make_clip(tmp_path / "in.mp4", frames=12, fps=30)
    result = subprocess.run([sys.executable, "-c", _STOPPED_BY_PROGRESS, str(src), "out.mkv", work, raised],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    advice = f"call stylize_video again with work={work!r} to resume" if work else \
        "call stylize_video again with the same arguments to resume"
    if raised == "ValueError":  # the caller's own exception, as it is: the advice is a warning beside it
        assert "VALUE ERROR" in result.stdout
        assert f"stylebatch: warning: work dir kept at {work}: {advice}" in result.stderr.splitlines() or not work
    else:
        assert "INTERRUPTED" in result.stdout and result.stdout.strip().endswith(advice)
    assert advice in result.stdout + result.stderr and "--work" not in result.stdout + result.stderr
    assert not (tmp_path / "out.mkv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case, advice", [
    ("a work dir of another style", "call stylize_video with another work=, or delete its parts/"),
    ("the input for work", "give another work= folder, empty or new"),
    ("a folder of the caller's files", "give another work= folder, empty or new"),
])
def test_a_refused_work_dir_is_said_in_the_apis_terms_not_the_clis(case: str, advice: str, tmp_path: Path) -> None:
    """stylize_video(work=...) refusals told the caller to 'use another --work' or 'give an empty or
    new folder for --work' (their ranks' words, or the CLI's): a flag the caller has no use for."""
    from stylebatch.errors import BadInput

    src, work = make_clip(tmp_path / "in.mp4", frames=4), tmp_path / "wk"
    call = dict(style="ink-wash", max_side=32, workers=1, device="cpu", work=str(work))
    if case == "a work dir of another style":
        stylebatch.stylize_video(src, tmp_path / "a.mp4", **{**call, "style": "lavender-gold"}, keep_work=True)
    elif case == "the input for work":
        call["work"] = str(src)
    else:
        work.mkdir()
        (work / "notes.txt").write_text("the caller's")
    with pytest.raises(BadInput) as raised:
        stylebatch.stylize_video(src, tmp_path / "b.mp4", **call)
    assert str(raised.value).endswith(advice) and "--work" not in str(raised.value), raised.value
    assert not (tmp_path / "b.mp4").exists()
    from stylebatch.contract import fresh_work

    assert fresh_work() == "a fresh --work"  # the CLI's words again once the call is over


_SIGNALLED = """
import os, signal, sys
import stylebatch

def stop(done, total):
    if done >= 4:
        os.kill(os.getpid(), getattr(signal, sys.argv[4]))

try:
    stylebatch.stylize_video(sys.argv[1], sys.argv[2], style="ink-wash", max_side=48, workers=2, device="cpu",
                             work=sys.argv[3], encoder=stylebatch.EncodingOptions(chunk_frames=4), progress=stop)
except stylebatch.Interrupted as exc:
    restored = all(signal.getsignal(s) == signal.SIG_DFL for s in (signal.SIGTERM, signal.SIGHUP))
    print(exc.exit_code, "restored" if restored else "still ours", exc, flush=True)
"""


_SIGNALLED_EARLY = """
import os, signal, sys
import stylebatch
from stylebatch import workdir

def claim(*args, **kwargs):  # the signal lands while the run checks its places and claims its work dir
    os.kill(os.getpid(), getattr(signal, sys.argv[3]))
    [None for _ in range(10 ** 6)]  # Python runs the handler between bytecodes

workdir.claim_work = claim
try:
    stylebatch.stylize_video(sys.argv[1], sys.argv[2], style="ink-wash", max_side=48, workers=1, device="cpu")
except stylebatch.Interrupted as exc:
    print(exc.exit_code, exc)
"""


@pytest.mark.parametrize("sig, exit_code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_a_stop_signal_before_any_work_began_is_still_interrupted(sig: str, exit_code: int, tmp_path: Path) -> None:
    """The signal's moment cannot be chosen from outside, so it is sent from inside the work-dir
    claim (replaced here for that alone): the caller gets Interrupted, not a bare KeyboardInterrupt."""
    src = make_clip(tmp_path / "in.mp4", frames=4, fps=30)
    result = subprocess.run([sys.executable, "-c", _SIGNALLED_EARLY, str(src), str(tmp_path / "out.mkv"), sig],
                            preexec_fn=stop_signals_at_default,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.split()[0] == str(exit_code) and "before any work began" in result.stdout, result.stdout
    assert not (tmp_path / "out.mkv").exists()


def _command_lines() -> list[str]:
    lines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
        except OSError:
            pass  # ended meanwhile
    return lines


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("sig, exit_code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_or_sighup_during_a_call_stops_the_ranks_and_raises_interrupted(sig: str, exit_code: int,
                                                                                tmp_path: Path) -> None:
    """A program calling stylize_video is stopped by its pod or its terminal: the call raises
    Interrupted with the signal's exit code (the program decides what follows), the ranks are gone,
    nothing is published, the work dir resumes, and the program's own signal handling is as it was."""
    src = make_clip(tmp_path / "in.mp4", frames=24, fps=30)
    out, work = tmp_path / "out.mkv", tmp_path / "work"
    result = subprocess.run([sys.executable, "-c", _SIGNALLED, str(src), str(out), str(work), sig],
                            preexec_fn=stop_signals_at_default,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.split()[:2] == [str(exit_code), "restored"], result
    assert "to resume" in result.stdout and not out.exists()
    assert not any(str(work) in args for args in _command_lines())  # mpiexec and the ranks are gone
    assert any((work / "parts").iterdir())  # what was done is kept to resume


@pytest.mark.parametrize("kwargs, error, words", [
    ({"strength": 2}, stylebatch.BadInput, ["--strength", "between 0 and 1"]),
    ({"encoder": "vp9"}, stylebatch.BadInput, ["vp9", ".avi"]),
    ({"device": "tpu"}, stylebatch.BadInput, ["--device"]),
    ({"precision": "fp8"}, stylebatch.BadInput, ["--precision", "fp8"]),
    ({"temporal": "sideways"}, stylebatch.BadInput, ["--temporal", "sideways"]),
    ({"temporal": True}, stylebatch.BadInput, ["--temporal True", "one of on, off"]),  # was "must be a str"
    ({"temporal_strength": 1}, stylebatch.BadInput, ["--temporal-strength", "between 0 and 0.95"]),
    # painted the default style and returned: only style=None means the default
    ({"style": ""}, stylebatch.BadInput, ["--style ''", "names no style"]),
    ({"style": " "}, stylebatch.BadInput, ["--style ' '", "names no style"]),
    ({"input": "missing.mp4"}, stylebatch.BadInput, ["not found", "missing.mp4"]),
    # were "not found: None", and a TypeError once preprocess had run
    ({"input": None}, stylebatch.BadInput, ["input is required"]),
    ({"progress": 5}, stylebatch.BadInput, ["progress", "function"]),
    # was a TypeError from the first chunk's report, after preprocess and a chunk had run
    ({"progress": lambda done: None}, stylebatch.BadInput, ["progress must take two arguments"]),
    ({"progress": lambda done, total, extra: None}, stylebatch.BadInput, ["progress must take two arguments"]),
])
def test_bad_settings_raise_bad_input_before_any_work(kwargs: dict, error: type, words: list[str],
                                                      tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=4)
    out = tmp_path / "out" / "result.avi"
    out.parent.mkdir()
    kwargs = {"input": str(src), **kwargs}
    with pytest.raises(error) as caught:
        stylebatch.stylize_video(kwargs.pop("input"), out, **kwargs)
    assert caught.value.exit_code == 2 and isinstance(caught.value, stylebatch.StylebatchError)
    for word in words:
        assert word in str(caught.value)
    assert list(out.parent.iterdir()) == []


def test_the_stages_are_functions_over_requests(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=10)
    req = PreprocessRequest(input=str(src), work=str(tmp_path / "work"), output=str(tmp_path / "out.mkv"),
                            encoding=EncodingOptions(chunk_frames=4))
    m = preprocess(req)
    assert (m.frames, m.chunk_frames, m.encoder.container) == (10, 4, "matroska")
    assert preprocess(req) == m  # the same request again: the work dir is reused
    with pytest.raises(stylebatch.BadInput, match="lacks the stylized frames 0-9"):
        postprocess(PostprocessRequest(work=req.work))


def test_the_stylize_stage_leaves_the_callers_torch_thread_count_as_it_was(tmp_path: Path) -> None:
    """stylize() in this process set torch's threads for its pipelines (1 each of 2 on 2 cores) and
    left them so: a notebook's own torch work ran on one core from then on."""
    import torch

    from stylebatch.requests import ModelOptions, StylizeRequest

    src = make_clip(tmp_path / "in.mp4", frames=8)
    work = str(tmp_path / "work")
    preprocess(PreprocessRequest(input=str(src), work=work, output=str(tmp_path / "out.mkv"),
                                 encoding=EncodingOptions(chunk_frames=4)))
    callers = os.cpu_count() + 1  # more than any rank takes: never its own choice by chance
    before = torch.get_num_threads()
    torch.set_num_threads(callers)
    try:
        stylize(StylizeRequest(work=work, pipelines=2, model=ModelOptions(max_side=32, device="cpu")))
        assert torch.get_num_threads() == callers
    finally:
        torch.set_num_threads(before)
    assert postprocess(PostprocessRequest(work=work)) == str(tmp_path / "out.mkv")


@pytest.mark.parametrize("extra", [
    (),
    ("-aspect", "16:9"),  # anamorphic: its sample aspect ratio came back from the work dir as a list, not a tuple
    ("-metadata", "title=Ferien", "-metadata:s:v", "language=deu"),
])
def test_preprocess_returns_the_manifest_the_later_stages_read_from_its_work_dir(extra, tmp_path: Path) -> None:
    from stylebatch.manifest import read_manifest
    from stylebatch.storage.uri import location

    src = make_clip(tmp_path / "in.mp4", frames=3, extra=extra)
    req = PreprocessRequest(input=str(src), work=str(tmp_path / "work"), output=str(tmp_path / "out.mp4"))
    assert preprocess(req) == read_manifest(location(req.work))


@pytest.mark.parametrize("call, given", [
    (lambda req: preprocess(req), PostprocessRequest(work="w")),
    (lambda req: postprocess(req), PreprocessRequest(input="in.mp4", work="w", output="out.mp4")),
    (lambda req: stylize(req), {"work": "w"}),
])
def test_a_stage_given_something_other_than_its_request_raises_bad_input_naming_the_type(
        call, given, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each was an AttributeError from inside the stage."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(stylebatch.BadInput, match="Request expected, not "):
        call(given)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing", ["missing.mp4", "a folder"])
def test_preprocess_of_an_input_that_is_not_there_makes_no_work_dir(missing: str, tmp_path: Path) -> None:
    """A mistyped input made the work dir (empty) before it said "input not found"."""
    (tmp_path / "a folder").mkdir()
    req = PreprocessRequest(input=str(tmp_path / missing), work=str(tmp_path / "work"), output=str(tmp_path / "o.mp4"))
    with pytest.raises(stylebatch.BadInput, match="input not found|input is a folder"):
        preprocess(req)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a folder"]
