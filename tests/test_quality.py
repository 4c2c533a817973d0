"""`stylebatch quality`: the warping error (Lai et al. 2018) tells a flickering video from a steady one."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from clips import error_lines, make_clip, stylebatch

from stylebatch.flow import FlowEstimator, visible, warp
from stylebatch.quality import measure


def _texture(h: int = 120, w: int = 200, seed: int = 0) -> np.ndarray:
    """A smooth, richly textured RGB image: what optical flow can follow."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    return cv2.resize(cv2.GaussianBlur(noise, (0, 0), 1.0), (w, h), interpolation=cv2.INTER_CUBIC)


def _panning(frames: int = 12, step: int = 2) -> list[np.ndarray]:
    """A camera panning right by `step` pixels a frame over a larger scene."""
    scene = _texture(120, 200 + frames * step)
    return [np.ascontiguousarray(scene[:, i * step:i * step + 200]) for i in range(frames)]


def _static(frames: int = 12) -> list[np.ndarray]:
    scene = _texture()
    return [scene.copy() for _ in range(frames)]


def _restyle(frame: np.ndarray) -> np.ndarray:
    """A deterministic per-pixel 'style': the same input pixel always gives the same output pixel."""
    return np.ascontiguousarray(255 - frame[..., ::-1])


def _flicker(frames: list[np.ndarray], amount: int = 40, seed: int = 1) -> list[np.ndarray]:
    """Each frame restyled plus its own noise: what per-frame stylization does to texture."""
    rng = np.random.default_rng(seed)
    out = []
    for f in frames:
        noise = rng.integers(-amount, amount + 1, f.shape)
        out.append(np.clip(_restyle(f).astype(int) + noise, 0, 255).astype(np.uint8))
    return out


def test_flow_recovers_a_known_pan_and_warping_undoes_it():
    a, b = _panning(2, step=3)
    flow = FlowEstimator()(b, a)  # b's pixels -> a: the scene moved left, so +3 px in x
    inner = flow[20:-20, 20:-20]
    assert np.median(inner[..., 0]) == pytest.approx(3.0, abs=0.25)
    assert np.median(np.abs(inner[..., 1])) < 0.25
    mask = visible(flow, FlowEstimator()(a, b))
    moved = warp(a, flow).astype(int)
    assert np.abs(moved - b.astype(int))[mask].mean() < 3
    assert mask[:, :-10].mean() > 0.9  # only the strip entering at the right edge is new


@pytest.mark.parametrize("scene", [_static, _panning], ids=["static scene", "panning camera"])
def test_a_steady_stylization_scores_near_the_input_and_a_flickering_one_far_above(scene):
    frames = scene()
    steady = measure(frames, [_restyle(f) for f in frames])
    flickering = measure(frames, _flicker(frames))
    assert steady.short_ratio < 1.5
    assert flickering.short_ratio > 4 * steady.short_ratio
    assert flickering.short_output.error > 0.005  # ~ (40/255)^2 / 3 of noise variance, clearly visible
    assert flickering.long_output.error > 4 * steady.long_output.error
    assert steady.frames == flickering.frames == len(frames)
    assert steady.short_output.pairs == len(frames) - 1


def test_the_figure_does_not_depend_on_resolution():
    frames = _panning()
    rng = np.random.default_rng(2)
    # flicker in blobs a few pixels wide, as a style's strokes are, so it survives scaling
    blobs = [cv2.resize(rng.normal(0, 30, (15, 25, 3)).astype(np.float32), (200, 120)) for _ in frames]
    output = [np.clip(_restyle(f) + b, 0, 255).astype(np.uint8) for f, b in zip(frames, blobs)]

    def at(width: int, video: list[np.ndarray]) -> list[np.ndarray]:
        return [cv2.resize(f, (width, width * 3 // 5), interpolation=cv2.INTER_CUBIC) for f in video]

    small, large = (measure(at(w, frames), at(w, output)) for w in (480, 1280))
    assert large.short_output.error == pytest.approx(small.short_output.error, rel=0.2)


def test_quality_on_real_videos_prints_both_figures_and_their_ratio(tmp_path):
    src = make_clip(tmp_path / "in.mp4", size=(96, 64), frames=10)
    same = stylebatch("quality", src, src)
    assert same.returncode == 0, same.stderr
    assert "short-term" in same.stdout and "long-term" in same.stdout and "ratio 1.00x" in same.stdout
    noisy = tmp_path / "noisy.mp4"
    make_clip(noisy, size=(96, 64), frames=10, extra=("-vf", "noise=alls=60:allf=t"))
    result = stylebatch("quality", src, noisy, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frames"] == 10 and report["short_ratio"] > 3


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


@pytest.mark.parametrize("output_filter, ratio", [("noise=alls=60:allf=t", None), ("null", 1.0)],
                         ids=["flickering", "still"])
def test_quality_json_of_a_still_input_is_strict_json(tmp_path, output_filter, ratio):
    """A still input's figure is 0: the ratio was written `Infinity`, which no JSON parser but Python's
    reads (JavaScript's JSON.parse, Go's encoding/json); now null, and 1.0 where both figures are 0."""
    src = make_clip(tmp_path / "in.mp4", frames=6, extra=("-vf", "hue=s=0,geq=lum=128:cb=128:cr=128"))
    out = make_clip(tmp_path / "out.mp4", frames=6, extra=("-vf", f"hue=s=0,geq=lum=128:cb=128:cr=128,{output_filter}"))
    result = stylebatch("quality", src, out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout, parse_constant=_no_constants)
    assert report["short_input"]["error"] == 0 and report["short_ratio"] == ratio
    assert report["long_ratio"] == ratio


@pytest.mark.parametrize("output_filter, said", [("noise=alls=60:allf=t", "no ratio (the input does not change)"),
                                                  ("null", "ratio 1.00x")], ids=["flickering", "still"])
def test_quality_text_of_a_still_input_says_there_is_no_ratio(tmp_path, output_filter, said):
    """The text report read `ratio infx` where the input's figure is 0."""
    src = make_clip(tmp_path / "in.mp4", frames=6, extra=("-vf", "hue=s=0,geq=lum=128:cb=128:cr=128"))
    out = make_clip(tmp_path / "out.mp4", frames=6, extra=("-vf", f"hue=s=0,geq=lum=128:cb=128:cr=128,{output_filter}"))
    result = stylebatch("quality", src, out)
    assert result.returncode == 0, result.stderr
    ratios = [line for line in result.stdout.splitlines() if "term" in line]
    assert len(ratios) == 2 and all(said in line for line in ratios) and "inf" not in result.stdout, result.stdout


def test_quality_refuses_videos_of_different_lengths_in_one_line(tmp_path):
    a = make_clip(tmp_path / "a.mp4", frames=6)
    b = make_clip(tmp_path / "b.mp4", frames=4)
    result = stylebatch("quality", a, b)
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and "fewer frames" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("which", ["input", "output"])
def test_quality_names_a_folder_given_for_a_video_as_a_folder(tmp_path, which):
    """An empty folder was "not found", a full one "not a readable video": now which one, and what it is."""
    clip = make_clip(tmp_path / "a.mp4", frames=4)
    (tmp_path / "folder").mkdir()
    args = [tmp_path / "folder", clip] if which == "input" else [clip, tmp_path / "folder"]
    result = stylebatch("quality", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert error_lines(result) == [f"stylebatch: error: {which} is a folder, not a video: {tmp_path / 'folder'}"]


@pytest.mark.parametrize("case", ["turned", "cropped"])
def test_quality_refuses_an_output_whose_picture_is_not_the_inputs_shape(tmp_path, case):
    """A turned or cropped video was scored against the input, squeezed into its shape, with no word."""
    src = make_clip(tmp_path / "in.mp4", size=(96, 64), frames=6)
    other = make_clip(tmp_path / "other.mp4", size=(96, 64), frames=6,
                      extra=("-vf", "transpose=1" if case == "turned" else "crop=64:64"))
    result = stylebatch("quality", src, other)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1 and "not the same shape" in error_lines(result)[0], result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("width, height", [(640, 16), (640, 24), (640, 30)])
def test_a_wide_strip_of_video_is_measured_not_a_traceback(width, height):
    """At the working width of 320 a 640x24 strip was 320x12, and DIS failed an OpenCV assertion on it
    (a traceback from `stylebatch quality`); at 320x8 and under it returned NaN flows."""
    scene = _texture(height, width + 40)
    frames = [np.ascontiguousarray(scene[:, i * 2:i * 2 + width]) for i in range(6)]
    report = measure(frames, _flicker(frames))
    assert report.short_output.pairs == 5 and np.isfinite(report.short_output.error)
    assert report.short_output.error > 2 * report.short_input.error  # the flicker is told from the input
