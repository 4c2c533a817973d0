"""The Python API a notebook or a scheduler uses: `import stylebatch` is light, one call stylizes a
video and reports its progress, and failures are error types a caller can tell apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from clips import count_frames, make_clip

import stylebatch
from stylebatch.api import postprocess, preprocess
from stylebatch.requests import EncodingOptions, PostprocessRequest, PreprocessRequest


def test_import_stylebatch_loads_neither_torch_nor_pyav_nor_the_azure_sdk() -> None:
    code = ("import sys, stylebatch; stylebatch.stylize_video; stylebatch.RunRequest; "
            "print(sorted(m for m in ('torch', 'av', 'numpy', 'azure.storage.blob') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_stylize_video_reports_progress_up_to_the_frame_count_and_returns_the_result(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=12, fps=30)
    out = tmp_path / "out" / "styled.mkv"
    out.parent.mkdir()
    seen: list[tuple[int, int]] = []
    result = stylebatch.stylize_video(src, out, style="ink-wash", strength=0.7, max_side=48, workers=1,
                                      device="cpu", encoder=EncodingOptions(chunk_frames=4),
                                      progress=lambda done, total: seen.append((done, total)))
    assert count_frames(out) == result.frames == 12
    assert result.output == str(out) and result.duration == pytest.approx(12 / 30)
    assert list(result.timings) == ["preprocess", "stylize", "postprocess"]
    assert all(seconds > 0 for seconds in result.timings.values())
    done = [d for d, _ in seen]
    assert {total for _, total in seen} == {12} and done == sorted(done) and done[-1] == 12 and len(done) >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out"]  # no work dir left behind


@pytest.mark.parametrize("kwargs, error, words", [
    ({"strength": 2}, stylebatch.BadInput, ["--strength", "between 0 and 1"]),
    ({"encoder": "vp9"}, stylebatch.BadInput, ["vp9", ".avi"]),
    ({"device": "tpu"}, stylebatch.BadInput, ["--device"]),
    ({"input": "missing.mp4"}, stylebatch.BadInput, ["not found", "missing.mp4"]),
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
