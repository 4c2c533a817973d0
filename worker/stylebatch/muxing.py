"""What postprocess decides before it touches a packet, as pure functions (no PyAV): which audio and
subtitle streams each container takes as they are, which are re-encoded or left out (and the
channel layouts to offer the encoder), and every video packet's timestamps.

Timestamps. Frame p (in presentation order) keeps the source's pts[p]. A part's packets come in
decode order; with B-frames a packet may show a frame later than frames decoded after it, so the
packets' presentation ranks are a permutation of the decode positions. The reorder delay D is the
largest amount by which a packet's decode position runs ahead of its presentation rank; the packet
at decode position j gets dts = pts[j - D] (before the first frame: pts[0] minus whole frame
durations). dts then only grows and never passes pts, which is what every muxer requires.

    frames' pts (1/30000 s):        0  1001  2002  3003  4004
    decode order (ranks):           0     3     1     2     4      I P B B P: D = 1
    packet pts:                     0  3003  1001  2002  4004
    packet dts:                 -1001     0  1001  2002  3003
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Sequence

AUDIO_COPY = {
    "mp4": {"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac"},
    "mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_f32le"},
    "matroska": {"aac", "mp3", "mp2", "ac3", "eac3", "dts", "truehd", "opus", "vorbis", "flac", "alac",
                 "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "wavpack", "tta"},
    "webm": {"opus", "vorbis"},
    "avi": {"mp3", "mp2", "ac3", "pcm_s16le", "pcm_u8", "pcm_s24le"},
}
"""Audio codecs each container takes as they are (stream copy, bit for bit)."""
AUDIO_TRANSCODE = {"mp4": "aac", "mov": "aac", "matroska": "libopus", "webm": "libopus", "avi": "libmp3lame"}
"""The encoder for audio a container cannot take as it is."""
SUBTITLE_COPY = {
    "mp4": {"mov_text"}, "mov": {"mov_text"}, "webm": {"webvtt"}, "avi": set(),
    "matroska": {"subrip", "ass", "ssa", "webvtt", "hdmv_pgs_subtitle", "dvd_subtitle"},
}
"""Subtitle codecs each container takes; other subtitle streams are left out (and said so)."""
CHAPTER_CONTAINERS = {"mp4", "mov", "matroska", "webm"}
"""Containers that hold chapters (AVI has none: they are left out, and said so)."""
ATTACHMENT_CONTAINERS = {"matroska"}
"""Containers that take the input's attachments (fonts for its subtitles, files); in the others they are
left out, and said so, as is every data stream and any video besides the one stylized (cover art)."""
STREAM_TAGS = ("language", "title", "handler_name", "timecode")
"""The tags of a stream that the output keeps, by their lower-case names (Matroska writes TIMECODE,
MOV timecode; MOV and MP4 keep a video stream's timecode as a timecode track)."""
CONTAINER_META_SKIP = {"encoder", "major_brand", "minor_version", "compatible_brands"}  # the muxer writes its own
OPUS_RATE = 48000  # libopus encodes at 48 kHz only
ENCODER_RATES = {
    "aac": (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350),
    "libmp3lame": (48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000),
}
"""The sample rates each re-encoding encoder takes (FFmpeg's lists; libopus: OPUS_RATE)."""
STANDARD_LAYOUTS = (
    ("mono", 1), ("stereo", 2), ("2.1", 3), ("3.0", 3), ("3.0(back)", 3), ("4.0", 4), ("quad", 4),
    ("quad(side)", 4), ("3.1", 4), ("5.0", 5), ("5.0(side)", 5), ("4.1", 5), ("5.1", 6), ("5.1(side)", 6),
    ("6.0", 6), ("6.0(front)", 6), ("3.1.2", 6), ("hexagonal", 6), ("6.1", 7), ("6.1(back)", 7), ("6.1(front)", 7),
    ("7.0", 7), ("7.0(front)", 7), ("7.1", 8), ("7.1(wide)", 8), ("7.1(wide-side)", 8), ("5.1.2", 8),
    ("5.1.2(back)", 8), ("octagonal", 8), ("cube", 8), ("5.1.4", 10), ("7.1.2", 10), ("7.1.4", 12), ("7.2.3", 12),
    ("9.1.4", 14), ("9.1.6", 16), ("hexadecagonal", 16), ("binaural", 2), ("downmix", 2), ("22.2", 24),
)
"""FFmpeg's named channel layouts and their channel counts, in FFmpeg's order: the first of each count
is FFmpeg's default for that many channels (av_channel_layout_default: mono, stereo, 2.1, 4.0, 5.0,
5.1, 6.1, 7.1), which the ffmpeg CLI gives audio whose layout is unset."""


@dataclass(frozen=True)
class AudioPlan:
    copy: bool
    encoder: str | None = None  # when re-encoded
    rate: int | None = None


def audio_plan(codec: str, container: str, sample_rate: int | None) -> AudioPlan:
    """Copy the audio as it is where the container takes it; else re-encode it with the
    container's encoder, keeping its sample rate where that encoder can, else at the nearest rate it
    takes (the higher of two as near: 96 kHz goes into AVI's libmp3lame at 48 kHz)."""
    if codec in AUDIO_COPY[container]:
        return AudioPlan(copy=True)
    encoder = AUDIO_TRANSCODE[container]
    if encoder == "libopus" or not sample_rate:
        return AudioPlan(copy=False, encoder=encoder, rate=OPUS_RATE)
    rate = min(ENCODER_RATES[encoder], key=lambda r: (abs(r - sample_rate), -r))
    return AudioPlan(copy=False, encoder=encoder, rate=rate)


def layout_candidates(channels: int, layout: str | None) -> list[str]:
    """The channel layouts to offer the encoder that re-encodes audio of `channels` channels, best
    first; `layout` is the audio's own, None where it has none (FFmpeg's "unknown": PCM in AVI or
    Matroska). Its own layout first; then, as the ffmpeg CLI does, FFmpeg's default for that many
    channels; then FFmpeg's other layouts of that many channels, for an encoder that takes only some
    (libopus takes 3.0 and quad, not 2.1 and 4.0). Empty where FFmpeg names no layout of that many
    channels and the audio has none of its own (9 channels, say): no encoder can be given one."""
    same = [name for name, n in STANDARD_LAYOUTS if n == channels]
    return ([layout] if layout else []) + [name for name in same if name != layout]


def stream_tags(metadata: dict[str, str]) -> dict[str, str]:
    """A stream's STREAM_TAGS, by their lower-case names."""
    return {key.lower(): value for key, value in metadata.items() if key.lower() in STREAM_TAGS}


def output_stream_tags(tags: dict[str, str], container: str) -> dict[str, str]:
    """An output stream's tags in `container`, from its input's STREAM_TAGS. MP4 and MOV name a track
    only by its handler name (FFmpeg's muxer writes no title there): a title (Matroska's track name,
    "French") becomes the handler name where the stream has none, instead of being dropped."""
    if container in ("mp4", "mov") and "title" in tags and "handler_name" not in tags:
        return {**tags, "handler_name": tags["title"]}
    return tags


def keeps_subtitles(codec: str, container: str) -> bool:
    return codec in SUBTITLE_COPY[container]


def mux_options(container: str) -> dict[str, str]:
    """The muxer's options: MP4/MOV put their index first (playback starts before the download
    ends); AVI counts frames, so shifting timestamps to avoid negative ones would round them."""
    options = {"movflags": "+faststart"} if container in ("mp4", "mov") else {}
    if container == "avi":
        options["avoid_negative_ts"] = "disabled"
    return options


def presentation_ranks(pts: Sequence[int]) -> list[int]:
    """Each packet's rank in presentation order, for packets in decode order (their own pts)."""
    order = sorted(range(len(pts)), key=lambda j: pts[j])
    ranks = [0] * len(pts)
    for p, j in enumerate(order):
        ranks[j] = p
    return ranks


def reorder_delay(ranks_per_part: Sequence[Sequence[int]]) -> int:
    """D: how far, at most, a packet's decode position runs ahead of its presentation rank."""
    return max((j - p for ranks in ranks_per_part for j, p in enumerate(ranks)), default=0)


AVI_MAX_RATE = 240  # the finest frame clock an AVI output is given (fps)


def timeline(time_base: tuple[int, int], pts: list[int], last_duration: int, frame_rate: tuple[int, int],
             container: str, base_rate: tuple[int, int] | None = None) -> tuple[Fraction, list[int], int]:
    """(time base, pts of every frame, last frame's duration) as the output will carry them: the
    source's own, except in AVI, which counts frames at a constant rate (VFR gets rounded to it,
    never two frames on one tick). Its clock is the source's base rate (FFmpeg's r_frame_rate: the
    rate its frames are on, 25 for a 25 fps screen recording that holds one frame for 5 s) where that
    is finer than the average rate (1.1 fps there: every frame had been put up to 0.9 s off its time)
    and at most AVI_MAX_RATE; else the average rate."""
    tb = Fraction(*time_base)
    if container != "avi":
        return tb, pts, last_duration
    rate = Fraction(*frame_rate)
    if base_rate and rate < Fraction(*base_rate) <= AVI_MAX_RATE:
        rate = Fraction(*base_rate)
    tick = 1 / rate
    out: list[int] = []
    for t in pts:
        out.append(max(round((t - pts[0]) * tb / tick), out[-1] + 1 if out else 0))
    return tick, out, 1


def packet_times(pts: list[int], last_duration: int, chunks: Sequence[tuple[int, int]],
                 ranks_per_part: Sequence[Sequence[int]]) -> Iterator[tuple[int, int, int]]:
    """(pts, dts, duration) of every video packet, parts in order and each part's packets in
    decode order; `chunks` are the parts' (first frame, end) and `ranks_per_part` their packets'
    presentation ranks (presentation_ranks)."""
    n = len(pts)
    delay = reorder_delay(ranks_per_part)
    first_duration = pts[1] - pts[0] if n > 1 else last_duration
    j = 0
    for (start, _), ranks in zip(chunks, ranks_per_part):
        for rank in ranks:
            p = start + rank
            dts = pts[j - delay] if j >= delay else pts[0] - (delay - j) * first_duration
            duration = (pts[p + 1] if p + 1 < n else pts[p] + last_duration) - pts[p]
            yield pts[p], dts, duration
            j += 1
