"""The video contract, end to end through `stylebatch run` on clips made by the real ffmpeg CLI:
same frame count, identical timestamps, same display size, sound kept without re-encoding."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from clips import (FAST_STYLE, audio_md5, count_frames, decode_rgb, display_size, ffprobe_json, format_name,
                   frame_pts, streams, stylebatch, video_stream)

pytestmark = pytest.mark.slow


def stylize(src: Path, out: Path, *flags: str) -> Path:
    result = stylebatch("run", src, "-o", out, "--workers", "1", *FAST_STYLE, *flags)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return out


def assert_same_timing(src: Path, out: Path) -> None:
    assert count_frames(out) == count_frames(src)
    assert frame_pts(out) == frame_pts(src)


def test_mp4_keeps_frames_timestamps_size_and_audio_bytes(clip, tmp_path: Path) -> None:
    src = clip("in.mp4", size=(96, 64), frames=30, audio=("aac",))
    out = stylize(src, tmp_path / "out.mp4", "--chunk-frames", "8")
    assert_same_timing(src, out)
    assert display_size(out) == (96, 64)
    assert audio_md5(out, 0) == audio_md5(src, 0)
    assert "mp4" in format_name(out)
    # the frames were really repainted
    assert np.abs(decode_rgb(out).astype(int) - decode_rgb(src).astype(int)).mean() > 10


def test_strength_zero_gives_back_the_input_frames_in_order(clip, tmp_path: Path) -> None:
    """With strength 0 the net's output is the input: the frames must match one to one."""
    src = clip("index.mp4", size=(64, 48), frames=24, index_colors=True, extra=("-g", "5"))
    out = stylize(src, tmp_path / "out.mp4", "--strength", "0", "--chunk-frames", "7", "--crf", "10")
    a, b = decode_rgb(src).astype(int), decode_rgb(out).astype(int)
    assert a.shape == b.shape
    per_frame = np.abs(a - b).mean(axis=(1, 2, 3))
    assert per_frame.max() < 4, per_frame


def test_vfr_stays_vfr_with_exact_timestamps(clip, tmp_path: Path) -> None:
    src = clip("vfr.mp4", frames=20, vfr=True)
    intervals = {round(float(b) - float(a), 4) for a, b in zip(frame_pts(src)[:-1], frame_pts(src)[1:])}
    assert len(intervals) > 1  # the clip really is variable frame rate
    out = stylize(src, tmp_path / "out.mp4", "--chunk-frames", "6")
    assert_same_timing(src, out)


def test_odd_size_comes_out_the_same_size(clip, tmp_path: Path) -> None:
    """4:2:0 needs even sizes: an odd-sized 4:2:0 source (FFV1 can hold one) comes out 4:4:4."""
    src = clip("odd.mkv", size=(97, 55), frames=10, codec="ffv1")
    assert display_size(src) == (97, 55)
    out = stylize(src, tmp_path / "out.mp4")
    assert display_size(out) == (97, 55)
    assert video_stream(out)["pix_fmt"] == "yuv444p"
    assert count_frames(out) == 10


def test_rotated_video_comes_out_upright_with_the_same_display_size(clip, tmp_path: Path) -> None:
    src = clip("rot.mp4", size=(80, 48), frames=10, rotate=90, audio=("aac",))
    assert display_size(src) == (48, 80)
    out = stylize(src, tmp_path / "out.mp4", "--strength", "0", "--crf", "10")
    v = video_stream(out)
    assert (v["width"], v["height"]) == (48, 80)
    assert not any("rotation" in sd for sd in v.get("side_data_list", []))
    # strength 0: the upright output matches what a player shows for the rotated input
    ours, theirs = decode_rgb(out).astype(int), decode_rgb(src).astype(int)
    assert np.abs(ours - theirs).mean() < 6
    assert np.abs(ours[:, ::-1, ::-1] - theirs).mean() > 20  # upside down would be far off
    assert_same_timing(src, out)


def test_video_without_audio(clip, tmp_path: Path) -> None:
    src = clip("silent.mp4", frames=10)
    out = stylize(src, tmp_path / "out.mp4")
    assert [s["codec_type"] for s in streams(out)] == ["video"]
    assert_same_timing(src, out)


@pytest.mark.parametrize("pix_fmt", ["yuv420p10le", "yuv444p"])
def test_10bit_and_444_are_kept(clip, tmp_path: Path, pix_fmt: str) -> None:
    src = clip(f"{pix_fmt}.mp4", frames=10, pix_fmt=pix_fmt)
    out = stylize(src, tmp_path / "out.mp4")
    assert video_stream(out)["pix_fmt"] == pix_fmt
    assert_same_timing(src, out)


@pytest.mark.parametrize("output, codec, warned", [
    ("out.webm", "libvpx-vp9", True),  # this build's vp9 writes 8 bits only
    ("out.avi", "mjpeg", True),
    ("out.mkv", "libx264", False),  # kept: nothing to say
])
def test_a_10bit_input_written_in_8_bits_is_said_in_a_warning(clip, tmp_path: Path, output, codec, warned) -> None:
    src = clip("deep.mkv", frames=4, pix_fmt="yuv420p10le")
    result = stylebatch("run", src, "-o", tmp_path / output, "--workers", "1", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "10-bit" in line]
    assert said == ([f"stylebatch: warning: {src} is 10-bit (yuv420p10le); {codec} writes 8 bits here, so the output "
                     "is 8-bit (banding may show in smooth gradients): an .mp4, .mov or .mkv output in h264 or hevc "
                     "keeps 10 bits"]
                    if warned else [])


def test_mjpeg_avi_with_pcm(clip, tmp_path: Path) -> None:
    src = clip("in.avi", frames=12, codec="mjpeg", pix_fmt="yuvj420p", audio=("pcm",))
    out = stylize(src, tmp_path / "out.avi")
    assert "avi" in format_name(out)
    assert video_stream(out)["codec_name"] == "mjpeg"
    assert audio_md5(out, 0) == audio_md5(src, 0)
    assert_same_timing(src, out)


def test_webm_vp9_with_opus(clip, tmp_path: Path) -> None:
    src = clip("in.webm", frames=12, codec="libvpx-vp9", audio=("opus",))
    out = stylize(src, tmp_path / "out.webm")
    assert format_name(out).startswith("matroska,webm")
    assert [s["codec_name"] for s in streams(out)] == ["vp9", "opus"]
    assert audio_md5(out, 0) == audio_md5(src, 0)
    assert_same_timing(src, out)


def test_mkv_with_two_audio_tracks_keeps_both(clip, tmp_path: Path) -> None:
    src = clip("two.mkv", frames=12, audio=("aac", "mp3"))
    out = stylize(src, tmp_path / "out.mkv")
    assert [s["codec_name"] for s in streams(out)] == ["h264", "aac", "mp3"]
    assert audio_md5(out, 0) == audio_md5(src, 0)
    assert audio_md5(out, 1) == audio_md5(src, 1)
    assert_same_timing(src, out)


def test_a_clip_trimmed_without_re_encoding_keeps_the_frames_its_edit_list_shows(clip, tmp_path: Path) -> None:
    """`ffmpeg -ss 0.5 -i in.mp4 -c copy` (and phone editors) keep the GOP before the cut and an edit
    list that hides it: the header counts those frames, the decoder never shows them. Such a file was
    refused as "truncated or corrupt (decoded 9 of 30 frames)"."""
    whole = clip("whole.mp4", frames=30, audio=("aac",), extra=("-g", "30"))
    src = tmp_path / "trimmed.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-ss", "0.7", "-i", whole, "-c", "copy", src], check=True)
    assert count_frames(src) < int(video_stream(src)["nb_frames"])  # the edit list hides frames
    out = stylize(src, tmp_path / "out.mp4", "--chunk-frames", "4")
    assert_same_timing(src, out)
    assert audio_md5(out, 0) == audio_md5(src, 0)


def _tagged(plain: Path, out: Path, chapters: bool = True) -> Path:
    """`plain` with a title and a creation time, two chapters, and a video stream with a language and a
    title (Matroska) or a timecode (MOV and MP4: a timecode track)."""
    meta = out.with_suffix(".txt")
    meta.write_text(";FFMETADATA1\ntitle=Holiday\n" + chapters * (
        "[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=200\ntitle=Intro\n"
        "[CHAPTER]\nTIMEBASE=1/1000\nSTART=200\nEND=400\ntitle=Beach\n"))
    stream = (["-metadata:s:v:0", "language=deu", "-metadata:s:v:0", "title=Cam A"] if out.suffix == ".mkv"
              else ["-timecode", "01:00:00:00"])
    subprocess.run(["ffmpeg", "-v", "error", "-i", plain, "-i", meta, "-map", "0", "-map_metadata", "1",
                    "-map_chapters", "1", "-c", "copy", "-metadata", "creation_time=2020-01-02T03:04:05Z",
                    *stream, out], check=True)
    return out


@pytest.mark.parametrize("name, audio, chapters, out_ext, video_tags", [
    ("silent.mp4", (), False, ".mp4", {"timecode": "01:00:00:00"}),  # no sound: the source was never opened
    ("silent.mov", (), True, ".mov", {"timecode": "01:00:00:00"}),
    ("sound.mkv", ("aac",), True, ".mkv", {"language": "deu", "title": "Cam A"}),
    ("sound.mkv", ("aac",), True, ".webm", {"language": "deu", "title": "Cam A"}),
])
def test_the_inputs_title_creation_time_chapters_and_video_tags_are_kept(clip, tmp_path: Path, name, audio, chapters,
                                                                           out_ext, video_tags) -> None:
    src = _tagged(clip("plain" + Path(name).suffix, frames=12, audio=audio), tmp_path / name, chapters)
    out = stylize(src, tmp_path / f"out{out_ext}")
    info = ffprobe_json(out, "-show_format", "-show_chapters")
    tags = {k.lower(): v for k, v in info["format"].get("tags", {}).items()}
    assert tags.get("title") == "Holiday", tags
    assert tags["creation_time"].startswith("2020-01-02T03:04:05")
    video = {k.lower(): v for k, v in video_stream(out).get("tags", {}).items()}
    assert video_tags.items() <= video.items(), video
    assert [(c["tags"]["title"], round(float(c["start_time"]), 2)) for c in info["chapters"]] == [
        ("Intro", 0.0), ("Beach", 0.2)][:2 * chapters]


@pytest.mark.parametrize("out_ext", [".mp4", ".mov", ".mkv"])
def test_a_tracks_title_is_kept_as_the_name_mp4_and_mov_give_a_track(clip, tmp_path: Path, out_ext: str) -> None:
    """A Matroska audio track titled "French" (language fra) lost its title in an MP4 or MOV output:
    those name a track by its handler name only. Now the title becomes that name there, and stays a
    title in Matroska; the language is kept either way."""
    plain = clip("plain.mkv", frames=12, audio=("aac", "aac"))
    src = tmp_path / "titled.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-i", plain, "-map", "0", "-c", "copy", "-metadata:s:a:1", "language=fra",
                    "-metadata:s:a:1", "title=French", "-metadata:s:v:0", "title=Cam A", src], check=True)
    out = stylize(src, tmp_path / f"out{out_ext}")
    name = "title" if out_ext == ".mkv" else "handler_name"
    tags = [{k.lower(): v for k, v in s.get("tags", {}).items()} for s in streams(out)]
    assert [s["codec_type"] for s in streams(out)] == ["video", "audio", "audio"]
    assert tags[2].get("language") == "fra" and tags[2].get(name) == "French", tags
    assert tags[0].get(name) == "Cam A", tags


def test_chapters_an_avi_cannot_hold_are_left_out_with_a_warning(clip, tmp_path: Path) -> None:
    src = _tagged(clip("plain.mkv", frames=12), tmp_path / "chapters.mkv")
    result = stylebatch("run", src, "-o", tmp_path / "out.avi", "--workers", "1", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    assert "the input's 2 chapters cannot go into avi: left out" in result.stderr


def test_an_avi_keeps_the_times_of_a_clip_that_holds_one_frame_for_seconds(tmp_path: Path) -> None:
    """A 25 fps screen recording that holds a frame for 2 s averages 3 fps: AVI's frame clock was that
    average, so every frame came out up to a third of a second off its time (and the sound with it)."""
    src = tmp_path / "hold.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-vf",
                    "settb=1/1000,setpts=N*40+gte(N\\,3)*2000", "-frames:v", "6", "-fps_mode", "passthrough",
                    "-c:v", "libx264", src], check=True)
    assert [round(float(t), 2) for t in frame_pts(src)] == [0, 0.04, 0.08, 2.12, 2.16, 2.2]
    out = stylize(src, tmp_path / "out.avi")
    assert np.allclose([float(t) for t in frame_pts(out)], [float(t) for t in frame_pts(src)], atol=0.001)


FONT = ["-attach", "{font}", "-metadata:s:t", "mimetype=application/x-truetype-font"]


@pytest.mark.parametrize("src_ext, extra, out_ext, kept, warning", [
    (".mkv", FONT, ".mkv", "font.ttf", None),
    (".mkv", FONT, ".mp4", None, "attachment stream 2 (font.ttf) cannot go into mp4: left out (an .mkv output keeps it)"),
    (".mp4", ["-map", "1:v", "-c:v:1", "mjpeg", "-disposition:v:1", "attached_pic"], ".mp4", None,
     "cover art stream 2 (mjpeg) left out: the output holds the stylized video, the sound, subtitles and chapters"),
])
def test_attachments_go_into_matroska_and_every_stream_left_out_is_named(clip, tmp_path: Path, src_ext, extra,
                                                                         out_ext, kept, warning) -> None:
    """A Matroska file's fonts (for its ASS subtitles) and files, and cover art, had been dropped without
    a word."""
    font, cover = tmp_path / "font.ttf", tmp_path / "cover.png"
    font.write_bytes(b"not really a font")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=red:size=16x16", "-frames:v", "1", cover],
                   check=True)
    src = tmp_path / f"in{src_ext}"
    subprocess.run(["ffmpeg", "-v", "error", "-i", clip("plain" + src_ext, frames=12, audio=("aac",)), "-i", cover,
                    "-map", "0", "-c", "copy", *(x.format(font=font) for x in extra), src], check=True)
    result = stylebatch("run", src, "-o", tmp_path / f"out{out_ext}", "--workers", "1", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    left_out = [line for line in result.stderr.splitlines() if "left out" in line]
    assert left_out == ([f"stylebatch: warning: {warning}"] if warning else [])
    out = streams(tmp_path / f"out{out_ext}")
    assert [s.get("tags", {}).get("filename") for s in out if s["codec_type"] == "attachment"] == ([kept] if kept else [])
    assert [s["codec_type"] for s in out if s["codec_type"] != "attachment"] == ["video", "audio"]


@pytest.mark.parametrize("alpha, warned", [("if(lt(X,32),0,255)", True), ("255", False)])
def test_a_transparent_input_is_named_in_a_warning_an_opaque_alpha_channel_is_not(tmp_path: Path, alpha: str,
                                                                                   warned: bool) -> None:
    """No output codec keeps an alpha channel: an overlay in ProRes 4444 or PNG came out opaque without a
    word (what was stored under its transparent parts shows)."""
    src = tmp_path / "overlay.mov"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10,format=rgba", "-vf",
                    f"geq=r='r(X,Y)':g='g(X,Y)':b='b(X,Y)':a='{alpha}'", "-frames:v", "3", "-c:v", "png", src],
                   check=True)
    result = stylebatch("run", src, "-o", tmp_path / "out.mp4", "--workers", "1", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    assert ("overlay.mov is transparent in places (an alpha channel, rgba): the output cannot keep it"
            in result.stderr) == warned, result.stderr
    assert count_frames(tmp_path / "out.mp4") == 3


@pytest.mark.parametrize("flags, warned", [(("-flags", "+ildct+ilme", "-x264opts", "tff=1"), True), ((), False)])
def test_an_interlaced_input_is_named_in_a_warning(clip, tmp_path: Path, flags, warned: bool) -> None:
    """Interlaced video (DV, broadcast, camcorders) was painted as whole frames and written progressive,
    without a word: the two fields' combing on motion is painted into the picture."""
    src = clip("fields.mp4", frames=6, extra=flags)
    result = stylebatch("run", src, "-o", tmp_path / "out.mp4", "--workers", "1", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    assert ("fields.mp4 is interlaced: each frame's two fields are painted together" in result.stderr) == warned
    assert video_stream(tmp_path / "out.mp4")["field_order"] == "progressive"


def test_one_frame_video(clip, tmp_path: Path) -> None:
    src = clip("one.mp4", frames=1)
    result = stylebatch("run", src, "-o", tmp_path / "out.mp4", "--workers", "1", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    assert_same_timing(src, tmp_path / "out.mp4")
    # its log lines count it in English: "1 frame", never "1 frames"
    for line in ("one.mp4: 1 frame, ", "chunks of 1 frame\n", "stylizing 1 frame on 1 rank,",
                 "rank 0/1: 1 frame in ", "out.mp4 (1 frame)"):
        assert line in result.stderr, result.stderr
    assert not re.search(r"(?<![/\d])1 frames", result.stderr)  # ("stylize: 1/1 frames" is a fraction)


def test_60_fps(clip, tmp_path: Path) -> None:
    src = clip("sixty.mp4", frames=30, fps=60, audio=("aac",))
    out = stylize(src, tmp_path / "out.mp4", "--chunk-frames", "10")
    assert_same_timing(src, out)
    assert Fraction(video_stream(out)["avg_frame_rate"]) == 60


def test_awkward_file_names(clip, tmp_path: Path) -> None:
    src = clip("in.mp4", size=(96, 64), frames=30, audio=("aac",))
    odd = tmp_path / "my clip 'quoted' \"dq\"; rm -rf x; Ünïcødé 動画.mp4"
    odd.write_bytes(src.read_bytes())
    out = stylize(odd, tmp_path / "out; 'é' \"名\" now.mp4", "--chunk-frames", "16")
    assert_same_timing(src, out)


@pytest.mark.parametrize("ext, fmt, vcodec, acodec", [
    (".mkv", "matroska", "h264", "aac"),
    (".webm", "matroska,webm", "vp9", "opus"),  # webm takes no aac: re-encoded as opus
    (".mov", "mov", "h264", "aac"),
    (".avi", "avi", "mjpeg", "mp3"),  # AVI takes no aac either: re-encoded as mp3; frames at a constant rate
])
def test_output_container_follows_the_extension(clip, tmp_path: Path, ext, fmt, vcodec, acodec) -> None:
    src = clip("in.mp4", size=(96, 64), frames=30, audio=("aac",))
    result = stylebatch("run", src, "-o", tmp_path / f"out{ext}", "--workers", "1", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    out = tmp_path / f"out{ext}"
    assert format_name(out).startswith(fmt)
    assert [s["codec_name"] for s in streams(out)] == [vcodec, acodec]
    assert count_frames(out) == count_frames(src)
    # Matroska counts in milliseconds, and when a copied audio track starts before zero (AAC priming)
    # it shifts every stream: the reference is then the input stream-copied by the ffmpeg CLI.
    ref = src
    if ext == ".mkv":
        ref = tmp_path / f"ref{ext}"
        subprocess.run(["ffmpeg", "-v", "error", "-i", src, "-c", "copy", ref], check=True)
    assert np.allclose([float(t) for t in frame_pts(out)], [float(t) for t in frame_pts(ref)], atol=0.0011)
    if ext in (".webm", ".avi"):
        assert re.search(rf"audio stream \d+: aac cannot go into {ext[1:]}", result.stderr)
    else:
        assert audio_md5(out, 0) == audio_md5(src, 0)


@pytest.mark.parametrize("name, kwargs", [
    ("gop5.mp4", dict(extra=("-g", "5", "-bf", "3"))),  # B-frames, a keyframe every 5 frames
    ("vfr.mkv", dict(vfr=True, extra=("-g", "4"))),
    ("vp9.webm", dict(codec="libvpx-vp9", extra=("-g", "6"))),
    ("mjpeg.avi", dict(codec="mjpeg", pix_fmt="yuvj420p")),
    ("rot270.mp4", dict(rotate=270, extra=("-g", "5"))),
])
def test_every_chunk_decodes_exactly_its_frames(clip, tmp_path: Path, name: str, kwargs: dict) -> None:
    """A chunk read after a seek holds exactly the frames a full sequential decode has there, upright."""
    from stylebatch.manifest import Manifest
    from stylebatch.partition import chunk_bounds
    from stylebatch.video import ChunkReader

    src = clip(name, size=(64, 48), frames=23, index_colors=True, **kwargs)
    work = tmp_path / "work"
    result = stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "out.mp4", "--chunk-frames", "4")
    assert result.returncode == 0, result.stderr
    m = Manifest.from_json((work / "manifest.json").read_text())
    assert m.frames == 23
    source = work / m.source
    reader = ChunkReader(source, m)
    sequential = np.concatenate(list(reader.read(0, m.frames, batch=5)))
    reader.close()
    ffmpeg_frames = decode_rgb(src).astype(int)  # an independent decoder, rotation applied by ffmpeg
    assert sequential.shape == ffmpeg_frames.shape
    assert np.abs(sequential.astype(int) - ffmpeg_frames).mean(axis=(1, 2, 3)).max() < 3
    # every chunk on its own, in an order that forces seeks backward and forward
    for start, end in sorted(chunk_bounds(m.frames, 4), key=lambda c: (c[0] * 7) % 5):
        fresh = ChunkReader(source, m)
        got = np.concatenate(list(fresh.read(start, end, batch=3)))
        fresh.close()
        assert np.array_equal(got, sequential[start:end]), (start, end)
    # and ranges that continue one decode
    reader = ChunkReader(source, m)
    got = [b for s, e in [(5, 9), (9, 14), (2, 3), (20, 23)] for b in reader.read(s, e, batch=2)]
    reader.close()
    expected = [sequential[i] for s, e in [(5, 9), (9, 14), (2, 3), (20, 23)] for i in range(s, e)]
    assert np.array_equal(np.concatenate(got), np.stack(expected))


@pytest.mark.parametrize("name, kwargs", [
    ("one-gop.mp4", dict(extra=("-bf", "3"))),  # one keyframe: every chunk decodes on
    ("one-gop-vfr.mkv", dict(vfr=True)),
    ("gop5.mp4", dict(extra=("-g", "5", "-bf", "3"))),  # keyframes between some chunks: seeking is cheaper there
])
def test_a_ranks_next_chunk_in_the_same_gop_is_decoded_on_from_where_it_stands(clip, tmp_path: Path, monkeypatch,
                                                                                 name: str, kwargs: dict):
    """A rank of two takes every other chunk. With no keyframe between its chunks, it decodes on (the
    frames between are decoded, not converted) instead of reopening the file and decoding from the
    keyframe again, which for a long GOP decoded most of the clip once per chunk; the frames are the
    same either way."""
    from stylebatch import video
    from stylebatch.manifest import Manifest

    src = clip(name, size=(64, 48), frames=23, index_colors=True, **kwargs)
    work = tmp_path / "work"
    result = stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "out.mp4", "--chunk-frames", "4")
    assert result.returncode == 0, result.stderr
    m = Manifest.from_json((work / "manifest.json").read_text())
    reader = video.ChunkReader(work / m.source, m)
    sequential = np.concatenate(list(reader.read(0, m.frames, batch=5)))
    reader.close()
    opened = []
    real_open = video.open_video
    monkeypatch.setattr(video, "open_video", lambda *a: opened.append(a) or real_open(*a))
    reader = video.ChunkReader(work / m.source, m)
    chunks = [(0, 4), (8, 12), (16, 20)]
    got = np.concatenate([b for s, e in chunks for b in reader.read(s, e, batch=3)])
    reader.close()
    assert np.array_equal(got, np.concatenate([sequential[s:e] for s, e in chunks]))
    seeks = sum(any(end < key <= start for key in m.keyframes) for (_, end), (start, _) in zip(chunks, chunks[1:]))
    assert len(opened) == 1 + seeks
    assert (seeks == 0) == (len(m.keyframes) == 1)  # gop5 seeks once: both paths are used


@pytest.mark.parametrize("ext, flags, codec", [
    (".mp4", ["--codec", "hevc", "--bitrate", "300k", "--preset", "ultrafast"], "hevc"),
    (".mkv", ["--codec", "vp9", "--crf", "40", "--preset", "realtime"], "vp9"),
    (".mov", ["--codec", "mjpeg", "--crf", "5"], "mjpeg"),
    (".avi", ["--bitrate", "200k"], "mjpeg"),  # MJPEG at a bit rate ended in a traceback
])
def test_encoder_flags(clip, tmp_path: Path, ext: str, flags: list[str], codec: str) -> None:
    src = clip("in.mp4", size=(96, 64), frames=30, audio=("aac",))
    out = stylize(src, tmp_path / f"out{ext}", "--chunk-frames", "16", *flags)
    assert video_stream(out)["codec_name"] == codec
    assert count_frames(out) == 30
    if ext != ".mkv":
        assert frame_pts(out) == frame_pts(src)


def jpeg_quantizer(packet: bytes) -> bytes:
    """The first quantization table (DQT) of a JPEG picture."""
    start = packet.index(b"\xff\xdb") + 5
    return packet[start:start + 64]


def test_mjpegs_crf_is_the_quantizer_ffmpegs_q_v_gives_and_its_bitrate_is_aimed_at(tmp_path: Path) -> None:
    """--crf for MJPEG is FFmpeg's -q:v (2 finest to 31 coarsest): every frame is coded with the
    quantization tables `ffmpeg -q:v` writes, so a higher value makes a smaller file. It used to set
    only the context's global quality, and every --crf gave the same bytes, at the finest quantizer."""
    import av

    from stylebatch.encoder import PartWriter
    from stylebatch.manifest import EncoderSettings

    raw = tmp_path / "frames.rgb"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=24", "-frames:v", "6",
                    "-pix_fmt", "rgb24", "-f", "rawvideo", raw], check=True)
    frames = np.fromfile(raw, np.uint8).reshape(6, 64, 96, 3)
    color = {"matrix": "itu601", "space": 5, "range": 2, "primaries": 2, "trc": 2}

    def encode(name: str, **quality) -> list[bytes]:
        writer = PartWriter(tmp_path / name, EncoderSettings("mjpeg", "yuvj420p", "avi", **quality),
                            96, 64, Fraction(24), color, threads=1)
        writer.write(frames)
        writer.close()
        with av.open(str(tmp_path / name)) as c:
            return [bytes(p) for p in c.demux(video=0) if p.size]

    sizes = {}
    for q in (2, 10, 31):
        ours = encode(f"q{q}.mkv", crf=q)
        theirs = tmp_path / f"ffmpeg-q{q}.mkv"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "96x64", "-r", "24",
                        "-i", raw, "-c:v", "mjpeg", "-pix_fmt", "yuvj420p", "-q:v", str(q), theirs], check=True)
        with av.open(str(theirs)) as c:
            want = {jpeg_quantizer(bytes(p)) for p in c.demux(video=0) if p.size}
        assert {jpeg_quantizer(p) for p in ours} == want and len(want) == 1, q
        sizes[q] = sum(map(len, ours))
    assert sizes[2] > sizes[10] > sizes[31], sizes
    low, high = encode("100k.mkv", bitrate=100_000), encode("2M.mkv", bitrate=2_000_000)
    assert len(low) == len(high) == 6 and sum(map(len, low)) < sum(map(len, high))


def x264_options(video: Path) -> set[bytes]:
    """The settings x264 wrote into each of the video's parts (its SEI: "x264 - core N - ... options: ...")."""
    return set(re.findall(rb"options: ([^\x00]+)", video.read_bytes()))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores: with one, every thread count is 1")
def test_on_the_cpu_the_encoder_takes_one_thread_beside_the_models(clip, tmp_path: Path) -> None:
    """One rank on the CPU gives the model every core; an encoder (and decoder) with as many threads
    only contends with it: a 640x360 run took 5% longer (docs/benchmarks.md). x264 writes its
    thread count into the stream."""
    src = clip("in.mp4", size=(320, 192), frames=8)
    out = stylize(src, tmp_path / "out.mp4", "--device", "cpu")
    (options,) = x264_options(out)
    assert b"threads=1" in options.split(), options


def test_subtitles_are_kept_where_the_container_takes_them(clip, tmp_path: Path) -> None:
    srt = tmp_path / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,300\nhello\n\n2\n00:00:00,300 --> 00:00:00,600\nworld\n")
    plain = clip("in.mkv", frames=18, audio=("aac",))
    src = tmp_path / "subbed.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-i", plain, "-i", srt, "-map", "0", "-map", "1", "-c", "copy",
                    "-c:s", "srt", src], check=True)
    out = stylize(src, tmp_path / "out.mkv")
    assert [s["codec_name"] for s in streams(out)] == ["h264", "aac", "subrip"]
    text = subprocess.run(["ffmpeg", "-v", "error", "-i", out, "-map", "0:s", "-f", "srt", "-"],
                          capture_output=True, text=True, check=True).stdout
    assert "hello" in text and "world" in text
    result = stylebatch("run", src, "-o", tmp_path / "out.mp4", "--workers", "1", *FAST_STYLE)
    assert result.returncode == 0, result.stderr
    assert "subtitle stream 2 (subrip) cannot go into mp4: left out" in result.stderr
    assert [s["codec_name"] for s in streams(tmp_path / "out.mp4")] == ["h264", "aac"]


@pytest.mark.parametrize("flags, asm", [
    ("fpu sse2 avx avx2 fma bmi1 bmi2 abm avx512f avx512cd avx512bw avx512dq avx512vl avx512_bf16", "AVX2,FMA3,BMI2,LZCNT"),
    ("fpu sse2 avx avx2 avx512f avx512cd avx512bw avx512dq avx512vl", "AVX2"),
    ("fpu sse2 avx avx2 fma bmi1 bmi2 abm", None),  # no AVX-512: x264 detects, as always
    ("fpu sse2 avx avx2 avx512f avx512cd", None),  # not the AVX-512 x264 runs
    ("fp asimd evtstrm aes pmull sha1 sha2 crc32", None),  # an ARM CPU
])
def test_x264_runs_without_its_avx512_code(flags, asm) -> None:
    from stylebatch.cpuinfo import CpuInfo, parse_cpuinfo
    from stylebatch.encoder import x264_asm

    cpuinfo = f"processor\t: 0\nvendor_id\t: AnyCPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert x264_asm(parse_cpuinfo(cpuinfo)) == asm
    assert x264_asm(CpuInfo()) is None  # no /proc/cpuinfo: x264 detects


@pytest.mark.parametrize("flags, expected", [
    ((), {b"analyse=0x3:0x3", b"me=dia", b"subme=2"}),  # the default: veryfast without the searches
    (("--preset", "veryfast"), {b"analyse=0x3:0x3", b"me=dia", b"subme=2"}),  # the default by name: the same
    (("--preset", "faster"), {b"analyse=0x3:0x113", b"me=hex", b"subme=4"}),  # any other preset: x264's own
    (("--preset", "slow"), {b"me=hex", b"subme=8", b"ref=5"}),
])
def test_h264_is_encoded_at_the_measured_default_preset_unless_one_is_given(
        clip, tmp_path: Path, flags, expected) -> None:
    """veryfast by default: 3x medium's frames/s per core at 720p and 1080p at about the same size, so a
    GPU node's CPUs keep up with its GPU; and without two of its searches, p8x8 and b8x8 partitions
    (analyse=0x3:0x113) and a motion search in hexagons: on painted frames they made x264 1.15-1.58x
    slower for bytes within 3% at equal quality (docs/benchmarks.md, bench_x264.py). x264 writes its
    settings into the stream; every part of the video has the same ones."""
    src = clip("in.mp4", size=(96, 64), frames=12)
    out = stylize(src, tmp_path / "out.mp4", "--chunk-frames", "4", *flags)
    (options,) = x264_options(out)  # three parts, one set of settings
    assert expected <= set(options.split())
    assert_same_timing(src, out)


@pytest.mark.parametrize("preset, asm, params", [
    ("veryfast", None, "partitions=i8x8,i4x4:me=dia"),
    ("veryfast", "AVX2,FMA3", "partitions=i8x8,i4x4:me=dia:asm=AVX2,FMA3"),
    ("medium", "AVX2,FMA3", "asm=AVX2,FMA3"),
    ("medium", None, None),  # x264's own preset on a CPU whose code x264 may choose: no x264-params at all
])
def test_a_ranks_x264_params_are_the_presets_tuning_and_the_cpus_cap(monkeypatch, preset, asm, params) -> None:
    import stylebatch.encoder as encoder
    from stylebatch.encoding import choose_settings

    monkeypatch.setattr(encoder, "x264_asm", lambda: asm)
    options = encoder.open_encoder_options(choose_settings("out.mp4", preset=preset))
    assert options.get("x264-params") == params
    assert options["preset"] == preset and options["crf"] == "18"


ENCODE_PART = r"""
import hashlib, subprocess, sys
from fractions import Fraction
from pathlib import Path
import numpy as np
from stylebatch.encoder import PartWriter
from stylebatch.manifest import read_manifest
from stylebatch.storage import location
from stylebatch.stylize import _sar
m = read_manifest(location(sys.argv[1]))
part = Path(sys.argv[3])
writer = PartWriter(part, m.encoder, m.display_width, m.display_height, Fraction(*m.frame_rate), m.color, 1, _sar(m))
writer.write(np.load(sys.argv[2]))
writer.close()
video = subprocess.run(["ffmpeg", "-v", "error", "-i", str(part), "-map", "0:v", "-c", "copy", "-f", "data", "-"],
                       capture_output=True, check=True).stdout
print(hashlib.md5(video).hexdigest())
"""


def test_a_part_encodes_to_the_same_bits_whatever_memory_it_is_given(clip, tmp_path: Path) -> None:
    """x264's AVX-512 code reads memory it never wrote: the same frames came out as other bits from
    one encoder to the next (4 bitstreams in 30 encodes of one chunk in one process on a Zen 5), so a
    chunk painted again (resume, another rank or pipeline) changed the video. glibc fills each block
    it hands out with a byte of our choosing here (MALLOC_PERTURB_), which made that read give a
    different bitstream for each of these four bytes. On a CPU without AVX-512 this held before too."""
    from stylebatch.manifest import read_manifest
    from stylebatch.models import load_stylizer
    from stylebatch.storage import location
    from stylebatch.stylize import decode_size
    from stylebatch.video import ChunkReader

    src = clip("pipelines.mp4", size=(96, 64), frames=30, audio=("aac",), extra=("-g", "7"))
    work = tmp_path / "work"
    assert stylebatch("preprocess", src, "--work", work, "-o", tmp_path / "out.mp4", "--chunk-frames", "6"
                      ).returncode == 0
    m = read_manifest(location(str(work)))
    reader = ChunkReader(work / "source.mp4", m, threads=1, size=decode_size(m, 48, 1.0, False))
    try:  # the last chunk, painted as `stylebatch stylize --max-side 48` paints it
        stylizer = load_stylizer("lavender-gold", device="cpu", max_side=48)
        np.save(tmp_path / "frames.npy", np.concatenate([stylizer(batch) for batch in reader.read(24, 30, 1)]))
    finally:
        reader.close()
    streams = {subprocess.run([sys.executable, "-c", ENCODE_PART, str(work), str(tmp_path / "frames.npy"),
                               str(tmp_path / f"part{byte}.mkv")], capture_output=True, text=True, check=True,
                              env=dict(os.environ, MALLOC_PERTURB_=str(byte))).stdout
               for byte in (17, 90, 165, 255)}
    assert len(streams) == 1
