"""The pure rules of postprocess (stylebatch.muxing): timestamps restored exactly through B-frame
reordering, AVI's frame clock, which audio and subtitle streams each container keeps, and the channel
layouts a re-encoding encoder is offered."""

from __future__ import annotations

from fractions import Fraction

import pytest

from stylebatch.muxing import (ENCODER_RATES, STANDARD_LAYOUTS, audio_plan, keeps_subtitles, layout_candidates, mux_options,
                               packet_times, presentation_ranks, timeline)

NTSC = [0, 1001, 2002, 3003, 4004]  # 29.97 fps in 1/30000 s


def test_the_worked_b_frame_example() -> None:
    # I P B B P: the P at presentation 3 is decoded second, the two Bs after it.
    ranks = presentation_ranks([0, 3003, 1001, 2002, 4004])
    assert ranks == [0, 3, 1, 2, 4]
    got = list(packet_times(NTSC, 1001, [(0, 5)], [ranks]))
    assert got == [(0, -1001, 1001), (3003, 0, 1001), (1001, 1001, 1001), (2002, 2002, 1001), (4004, 3003, 1001)]
    dts = [d for _, d, _ in got]
    assert dts == sorted(set(dts)) and all(d <= p for p, d, _ in got)  # what every muxer requires


def test_parts_continue_each_others_clock_and_the_last_frame_keeps_its_own_duration() -> None:
    pts = [0, 10, 25, 30, 50, 60]  # variable frame rate stays variable
    chunks = [(0, 3), (3, 6)]
    ranks = [presentation_ranks([0, 2, 1]), presentation_ranks([0, 1, 2])]  # a B-frame in the first part only
    got = list(packet_times(pts, 7, chunks, ranks))
    assert [p for p, _, _ in got] == [0, 25, 10, 30, 50, 60]
    assert [d for _, d, _ in got] == [-10, 0, 10, 25, 30, 50]
    assert [dur for _, _, dur in got] == [10, 5, 15, 20, 10, 7]


def test_without_b_frames_dts_is_pts() -> None:
    got = list(packet_times(NTSC, 1001, [(0, 2), (2, 5)], [[0, 1], [0, 1, 2]]))
    assert [(p, d) for p, d, _ in got] == [(t, t) for t in NTSC]


def test_avi_counts_frames_so_vfr_is_rounded_to_the_frame_clock_never_two_on_one_tick() -> None:
    tb, pts, last = timeline((1, 1000), [0, 33, 40, 100, 101], 33, (30, 1), "avi")
    assert (tb, pts, last) == (Fraction(1, 30), [0, 1, 2, 3, 4], 1)
    assert timeline((1, 1000), [0, 33, 40], 33, (30, 1), "mp4") == (Fraction(1, 1000), [0, 33, 40], 33)


@pytest.mark.parametrize("frame_rate, base_rate, tick, pts", [
    ((150, 131), (25, 1), Fraction(1, 25), [0, 1, 2, 128, 129]),  # a frame held 5 s: the frames' own clock
    ((150, 131), None, Fraction(131, 150), [0, 1, 2, 6, 7]),  # a work dir of an older version: the average
    ((150, 131), (90000, 1), Fraction(131, 150), [0, 1, 2, 6, 7]),  # a clock no AVI player runs: the average
    ((30000, 1001), (30000, 1001), Fraction(1001, 30000), [0, 1, 2, 153, 155]),
])
def test_avi_frame_clock_is_the_sources_base_rate_where_it_is_finer_than_the_average(frame_rate, base_rate, tick,
                                                                                     pts) -> None:
    assert timeline((1, 1000), [0, 40, 80, 5120, 5160], 40, frame_rate, "avi", base_rate) == (tick, pts, 1)


@pytest.mark.parametrize("codec, container, rate, plan", [
    ("aac", "mp4", 44100, (True, None, None)),
    ("pcm_s16le", "mp4", 44100, (False, "aac", 44100)),
    ("aac", "webm", 44100, (False, "libopus", 48000)),  # opus only at 48 kHz
    ("flac", "avi", None, (False, "libmp3lame", 48000)),
    ("opus", "matroska", 48000, (True, None, None)),
    ("flac", "avi", 96000, (False, "libmp3lame", 48000)),  # a rate the encoder cannot take: the nearest it can
    ("pcm_s24le", "mp4", 192000, (False, "aac", 96000)),
    ("pcm_s16be", "avi", 46050, (False, "libmp3lame", 48000)),  # as near as 44.1 kHz: the higher
    ("pcm_s16le", "mp4", 7350, (False, "aac", 7350)),
])
def test_audio_is_copied_where_the_container_takes_it_else_reencoded(codec, container, rate, plan) -> None:
    p = audio_plan(codec, container, rate)
    assert (p.copy, p.encoder, p.rate) == plan


@pytest.mark.parametrize("channels, layout, first", [
    (1, None, ["mono"]),  # no layout of its own (PCM in AVI or Matroska): FFmpeg's default, as the ffmpeg CLI gives it
    (2, None, ["stereo", "binaural", "downmix"]),
    (3, None, ["2.1", "3.0", "3.0(back)"]),  # libopus takes 3.0, not 2.1: the others of that count follow
    (4, None, ["4.0", "quad", "quad(side)", "3.1"]),
    (6, None, ["5.1", "5.1(side)", "6.0"]),
    (8, None, ["7.1", "7.1(wide)"]),
    (6, "5.1(side)", ["5.1(side)", "5.1", "6.0"]),  # a layout of its own comes first, and is not offered twice
    (2, "FL+FR", ["FL+FR", "stereo"]),
    (9, None, []),  # FFmpeg names no 9-channel layout: nothing to offer
])
def test_an_encoder_is_offered_the_audios_own_layout_then_ffmpegs_default_for_its_channel_count(
        channels, layout, first) -> None:
    got = layout_candidates(channels, layout)
    assert got[:len(first)] == first
    assert len(set(got)) == len(got)
    assert all(n == channels for name, n in STANDARD_LAYOUTS if name in got)


def test_the_standard_layouts_are_the_bundled_ffmpegs_and_the_first_of_each_count_is_its_default() -> None:
    av = pytest.importorskip("av")
    for name, channels in STANDARD_LAYOUTS:
        assert av.AudioLayout(name).nb_channels == channels, name
    for channels in {n for _, n in STANDARD_LAYOUTS}:
        default = next(name for name, n in STANDARD_LAYOUTS if n == channels)
        assert av.AudioLayout(f"{channels}c").name == default  # av_channel_layout_default


def test_the_encoder_rates_are_the_bundled_ffmpegs() -> None:
    av = pytest.importorskip("av")
    for encoder, rates in ENCODER_RATES.items():
        assert set(rates) == set(av.Codec(encoder, "w").audio_rates), encoder


@pytest.mark.parametrize("codec, container, kept", [
    ("mov_text", "mp4", True), ("subrip", "mp4", False), ("subrip", "matroska", True),
    ("webvtt", "webm", True), ("mov_text", "avi", False),
])
def test_subtitles_are_kept_only_where_the_container_holds_them(codec, container, kept) -> None:
    assert keeps_subtitles(codec, container) is kept


def test_mp4_starts_playing_early_and_avi_timestamps_are_never_shifted() -> None:
    assert mux_options("mp4") == {"movflags": "+faststart"} and mux_options("mov") == {"movflags": "+faststart"}
    assert mux_options("avi") == {"avoid_negative_ts": "disabled"} and mux_options("matroska") == {}
