"""Memory is bounded by what is stylized, not by the input's size: huge frames with --max-side run in
little memory, a frame size that cannot fit is refused before any stylize, ranks are capped to what fits."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from clips import count_frames, display_size, error_lines, stylebatch
from test_models import peak_rss_mib

from stylebatch import memory

MiB = 1024 ** 2


@pytest.fixture(scope="module")
def huge_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 8000x8000 frames (64 megapixels each) of MJPEG: under a MiB on disk, cheap to make."""
    path = tmp_path_factory.mktemp("huge") / "huge.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=teal:size=8000x8000:rate=2",
                    "-frames:v", "2", "-c:v", "mjpeg", "-q:v", "8", "-pix_fmt", "yuvj420p", str(path)], check=True)
    return path


@pytest.mark.slow
def test_huge_frames_with_max_side_are_stylized_in_bounded_memory(huge_clip: Path, tmp_path: Path) -> None:
    """Full-size frames exist only in the decoder and the encoder: 8000x8000 at --max-side 64 peaks
    well under 1.5 GiB over every process of the run (it took 4.5 GiB when whole frames went through)."""
    out = tmp_path / "out.avi"
    code, stderr, peak = peak_rss_mib("run", huge_clip, "-o", out, "--max-side", "64", "--workers", "1",
                                      timeout=600)
    assert code == 0, stderr
    assert peak < 1536, f"peak RSS {peak:.0f} MiB"
    assert display_size(out) == (8000, 8000) and count_frames(out) == 2


@pytest.mark.slow
def test_a_frame_size_that_cannot_fit_is_refused_before_any_stylize(huge_clip: Path, tmp_path: Path) -> None:
    result = stylebatch("run", huge_clip, "-o", tmp_path / "out.avi", "--workers", "1", timeout=300)
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert line.startswith("stylebatch: error: frames of 8000x8000 at full size need about ")
    assert "give a smaller --max-side" in line and "Traceback" not in result.stderr
    assert "stylizing" not in result.stderr and not (tmp_path / "out.avi").exists()


def test_ranks_are_capped_to_what_fits_in_the_machines_memory(clip, tmp_path: Path, monkeypatch, capsys) -> None:
    from stylebatch.cli import main

    monkeypatch.setattr(memory, "machine_bytes", lambda: 2 * memory.RANK_BASE_BYTES)  # room for two ranks
    src = clip("in.mp4", size=(64, 48), frames=12)
    code = main(["run", str(src), "-o", str(tmp_path / "out.mp4"), "--workers", "3", "--chunk-frames", "4",
                 "--style", "lavender-gold", "--max-side", "48"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "memory for 1 rank(s) of 64x48 frames: running 1, not 3" in err
    assert count_frames(tmp_path / "out.mp4") == 12


@pytest.mark.parametrize("size, max_side, batch, machine_gib, ranks", [
    ((1920, 1080), None, 4, 24, 4),     # 1080p at full size: under 5 GiB a rank
    ((1920, 1080), 720, 4, 24, 15),     # --max-side shrinks what the net holds
    ((3840, 2160), None, 4, 24, 1),
    ((3840, 2160), None, 8, 24, None),  # 4K, full size, batches of 8: over 30 GiB, refused
    ((16000, 16000), 256, 4, 24, 5),    # what is left is the frames in the codecs
    ((16000, 16000), 256, 4, 4, None),
    ((16000, 16000), None, 1, 128, None),
])
def test_how_many_ranks_fit(size, max_side, batch, machine_gib, ranks) -> None:
    from stylebatch.errors import StylebatchError
    from stylebatch.models import working_size

    w, h = size
    wh, ww = working_size(h, w, max_side)
    per_rank = memory.rank_bytes(w, h, ww, wh, batch, gpu=False)
    if ranks is None:
        with pytest.raises(StylebatchError, match="give a smaller --max-side"):
            memory.check_fits(per_rank, w, h, max_side, available=machine_gib * 1024 ** 3)
    else:
        assert memory.check_fits(per_rank, w, h, max_side, available=machine_gib * 1024 ** 3) == ranks


@pytest.mark.parametrize("size, threads, expected", [
    ((1920, 1080), 8, 8),
    ((1920, 1080), 0, 0),
    ((8000, 8000), 8, 1),
    ((4000, 4000), 8, 5),
])
def test_codec_threads_shrink_only_for_huge_frames(size, threads, expected) -> None:
    assert memory.codec_threads(*size, threads) == expected
