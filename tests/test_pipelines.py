"""A rank's pipelines: several chunks stylized at once in one process (decoder, network pass and
encoder each), sharing torch and the network; what they paint, how they share chunks, how they fail."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from clips import FAST_STYLE, count_frames, decode_rgb, error_lines, frame_pts, stylebatch

from stylebatch.progress import latest_by_rank

pytestmark = pytest.mark.slow


def parts(work: Path) -> dict[str, tuple[int, int]]:
    """part name -> (inode, mtime_ns): equal means the file was not rewritten."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((work / "parts").iterdir())}


@pytest.fixture()
def preprocessed(clip, tmp_path: Path):
    src = clip("pipelines.mp4", size=(96, 64), frames=30, audio=("aac",), extra=("-g", "7"))

    def make(name: str) -> tuple[Path, Path]:
        work, out = tmp_path / name / "work", tmp_path / name / "out.mp4"
        out.parent.mkdir()
        result = stylebatch("preprocess", src, "--work", work, "-o", out, "--chunk-frames", "6")
        assert result.returncode == 0, result.stderr
        return work, out

    return src, make


def test_three_pipelines_paint_the_same_video_as_one_and_each_chunk_once(preprocessed) -> None:
    src, make = preprocessed
    videos = {}
    for pipelines in (1, 3):
        work, out = make(f"p{pipelines}")
        result = stylebatch("stylize", "--work", work, "--pipelines", str(pipelines), *FAST_STYLE)
        assert result.returncode == 0, result.stderr
        said = [line for line in result.stderr.splitlines() if "chunks left to stylize" in line]
        assert said and ((", 3 at once" in said[0]) == (pipelines == 3)), said
        progress = latest_by_rank(result.stdout.splitlines())
        assert (progress[0].done, progress[0].share, progress[0].frames) == (30, 30, 30)
        assert list(parts(work)) == [f"{s:09d}-{min(s + 6, 30):09d}.mkv" for s in range(0, 30, 6)]
        assert stylebatch("postprocess", "--work", work).returncode == 0
        assert count_frames(out) == 30 and frame_pts(out) == frame_pts(src)
        videos[pipelines] = decode_rgb(out)
    np.testing.assert_array_equal(videos[3], videos[1])  # the same bits: one network, one thread each


def test_two_pipelines_decode_a_clip_with_keyframes_far_apart_about_once(clip, tmp_path: Path) -> None:
    """A chunk went to whichever pipeline asked first, so two pipelines took every other chunk, and
    with keyframes further apart than two chunks each decoded the other's frames on the way to its
    own: every frame decoded twice (a third of a run's codec time on 2 cores). Each pipeline now goes
    on from its own start; the rank's summary line says how many frames its decoders made."""
    src = clip("far-keyframes.mp4", size=(64, 48), frames=256, extra=("-g", "64", "-sc_threshold", "0"))
    work, out = tmp_path / "work", tmp_path / "out.mp4"
    assert stylebatch("preprocess", src, "--work", work, "-o", out, "--chunk-frames", "4").returncode == 0
    result = stylebatch("stylize", "--work", work, "--pipelines", "2", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    summary = [line for line in result.stderr.splitlines() if " frames decoded" in line]
    assert len(summary) == 1 and "256 frames in " in summary[0], result.stderr
    decoded = int(summary[0].rsplit("; ", 1)[1].split()[0])
    assert 256 <= decoded <= 256 + 64, summary  # each frame once; the second pipeline starts on a keyframe
    assert stylebatch("postprocess", "--work", work).returncode == 0
    assert count_frames(out) == 256 and frame_pts(out) == frame_pts(src)


def test_resume_with_pipelines_redoes_only_the_missing_part(preprocessed) -> None:
    _, make = preprocessed
    work, out = make("resume")
    assert stylebatch("stylize", "--work", work, "--pipelines", "2", *FAST_STYLE).returncode == 0
    first = parts(work)
    (work / "parts" / "000000012-000000018.mkv").unlink()
    result = stylebatch("stylize", "--work", work, "--pipelines", "2", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    again = parts(work)
    assert set(again) == set(first)
    assert {name for name in first if again[name] != first[name]} == {"000000012-000000018.mkv"}
    # one chunk left: one pipeline runs, not two
    assert any("1 of 5 chunks left to stylize, taken one at a time (" in line for line in result.stderr.splitlines())
    assert stylebatch("postprocess", "--work", work).returncode == 0
    assert count_frames(out) == 30


def test_a_failing_pipeline_ends_the_others_and_the_rank_with_one_error_line(preprocessed) -> None:
    """The source in the work dir is cut short after preprocess: the pipeline that decodes past the
    cut fails; the others stop (no hang, no part of a chunk they had in hand), one error line."""
    _, make = preprocessed
    work, _ = make("cut")
    source = work / "source.mp4"
    source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    result = stylebatch("stylize", "--work", work, "--pipelines", "3", *FAST_STYLE, timeout=120)
    assert result.returncode != 0
    assert len(error_lines(result)) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for part in (work / "parts").glob("*") if (work / "parts").exists() else []:
        assert count_frames(part) == 6  # only whole chunks were published


def test_run_on_the_cpu_is_one_rank_with_a_pipeline_per_core(clip, tmp_path: Path) -> None:
    from stylebatch.ranks import cpu_count

    src = clip("default.mp4", size=(96, 64), frames=24, audio=("aac",))
    out = tmp_path / "out.mp4"
    result = stylebatch("run", src, "-o", out, "--chunk-frames", "6", "--device", "cpu", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    assert "on 1 rank," in result.stderr
    pipelines = min(cpu_count(), 4)
    said = [line for line in result.stderr.splitlines() if "chunks left to stylize" in line]
    assert said and (f", {pipelines} at once" in said[0] if pipelines > 1 else "at once" not in said[0]), said
    assert count_frames(out) == 24 and frame_pts(out) == frame_pts(src)


@pytest.mark.parametrize("gpu, rank_cpus, pipelines", [
    (False, 1, 1),
    (False, 2, 2),  # one per core
    (False, 3, 3),
    (False, 16, 4),  # at most MAX_DEFAULT_PIPELINES, each with more threads
    (True, 8, 1),  # a GPU runs one network call at a time
])
def test_default_pipelines(gpu, rank_cpus, pipelines) -> None:
    from stylebatch.memory import default_pipelines

    assert default_pipelines(gpu, rank_cpus) == pipelines


def test_default_workers_on_the_cpu_is_one_rank() -> None:
    from stylebatch.run import default_workers

    assert default_workers("cpu", 0) == 1 and default_workers("auto", 0) == 1
    assert default_workers("auto", 2) == 2 and default_workers("cpu", 2) == 1


def _manifest(width: int, height: int) -> SimpleNamespace:
    from stylebatch.encoding import choose_settings

    return SimpleNamespace(display_width=width, display_height=height, coded_width=width, coded_height=height,
                           rotation=0, video_codec="h264", encoder=choose_settings("out.mp4"))


@pytest.mark.parametrize("memory_gib, wanted, pipelines", [
    (64, 4, 4),  # room for all
    (2.4, 4, 3),  # 1280x720 at full size: torch once, each pipeline's frames; fewer where that is what fits
    (2.0, 4, 2),
    (1.5, 4, 1),
    (2.4, 2, 2),  # never more than asked for
])
def test_a_rank_runs_as_many_pipelines_as_fit_its_memory(memory_gib, wanted, pipelines, monkeypatch) -> None:
    from stylebatch import memory

    monkeypatch.setattr(memory, "machine_bytes", lambda: int(memory_gib * memory.GiB))
    assert memory.pipelines_that_fit(_manifest(1280, 720), None, None, False, 1, wanted) == pipelines


def test_a_rank_that_fits_not_even_one_pipeline_says_so_in_one_line(monkeypatch) -> None:
    from stylebatch import memory
    from stylebatch.errors import StylebatchError

    monkeypatch.setattr(memory, "machine_bytes", lambda: int(0.5 * memory.GiB))
    with pytest.raises(StylebatchError, match="per rank, more than this machine's"):
        memory.pipelines_that_fit(_manifest(1280, 720), None, None, False, 1, 4)


def test_rank_bytes_counts_torch_once_and_each_pipelines_frames() -> None:
    from stylebatch.memory import RANK_BASE_BYTES, rank_bytes

    one = rank_bytes(1280, 720, 1280, 720, 1, False)
    three = rank_bytes(1280, 720, 1280, 720, 1, False, pipelines=3)
    assert three - RANK_BASE_BYTES == 3 * (one - RANK_BASE_BYTES)


def test_the_first_failure_of_any_pipeline_stops_the_others_and_is_raised() -> None:
    from stylebatch.pipeline import Busy, run_pipelines

    ended = []

    def pipeline(index: int, stop: threading.Event) -> Busy:
        if index == 2:
            time.sleep(0.05)
            raise RuntimeError("pipeline 2 failed")
        assert stop.wait(30), "never told to stop"
        ended.append(index)
        return Busy()

    with pytest.raises(RuntimeError, match="pipeline 2 failed"):
        run_pipelines(3, pipeline)
    assert sorted(ended) == [0, 1]


def test_busy_of_several_pipelines_says_their_frames_and_the_longest_time() -> None:
    from stylebatch.pipeline import Busy

    a, b = Busy(), Busy()
    a.model, a.decoder, a.encoder, a.count, a.decoded = 1.0, 0.5, 0.5, 20, 20
    b.model, b.decoder, b.encoder, b.count, b.decoded = 3.0, 0.5, 0.5, 40, 52
    assert Busy.of([a, b]).summary() == ("60 frames in 4.0 s (15.0 fps) on 2 pipelines: model 67%, "
                                         "waiting for the decoder 17%, waiting for the encoder 17%; 72 frames decoded")
    a.decoded = 0  # not known
    assert Busy.of([a]).summary() == ("20 frames in 2.0 s (10.0 fps): model 50%, waiting for the decoder 25%, "
                                      "waiting for the encoder 25%")


def test_a_signal_while_the_last_chunks_finish_stops_every_pipeline() -> None:
    """Pipeline 0 (this thread) has no chunk left and waits for the others; Ctrl-C or SIGTERM then
    (an exception in this thread) must stop them too before it goes on, or they would go on
    decoding and publishing after the rank let go of its readers, scratch and work-dir lock."""
    import signal

    from stylebatch.pipeline import Busy, run_pipelines

    stopped = []

    def pipeline(index: int, stop: threading.Event) -> Busy:
        if index == 1:  # still on its last chunk
            stopped.append(stop.wait(30))
        return Busy()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            run_pipelines(2, pipeline)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert stopped == [True]  # told to stop, and ended before run_pipelines did
