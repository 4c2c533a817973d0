"""Reading the source video with PyAV: probing it once, and decoding any chunk of upright RGB frames."""

from __future__ import annotations

import bisect
import collections
import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from stylebatch.errors import StylebatchError
from stylebatch.logs import counted
from stylebatch.memory import codec_threads, lowres
from stylebatch.muxing import stream_tags

log = logging.getLogger(__name__)

# AVColorSpace codes -> the matrix swscale converts with; the same matrix is used both ways.
_MATRIX = {1: "itu709", 4: "fcc", 5: "itu601", 6: "itu601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
_SPACE = {"itu709": 1, "fcc": 4, "itu601": 6, "smpte240m": 7, "bt2020": 9}


@dataclass
class Probe:
    """What one full decode of the source tells: the manifest's facts about the video."""

    video_stream: int
    codec: str  # its decoder's name
    time_base: Fraction
    pts: list[int]
    keyframes: list[int]
    pts_reliable: bool
    last_duration: int
    frame_rate: Fraction
    base_rate: Fraction | None  # FFmpeg's r_frame_rate: the rate the frames' times are on (None: unknown)
    coded_width: int
    coded_height: int
    rotation: int
    pix_fmt: str
    color: dict[str, Any]
    sample_aspect_ratio: tuple[int, int] | None
    audio: list[dict[str, Any]] = field(default_factory=list)
    subtitles: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)  # the container's tags: title, creation_time...
    chapters: list[dict[str, Any]] = field(default_factory=list)  # start, end, time_base, metadata each
    video_metadata: dict[str, str] = field(default_factory=dict)  # the video stream's muxing.STREAM_TAGS
    others: list[dict[str, Any]] = field(default_factory=list)  # _other_streams

    @property
    def display_size(self) -> tuple[int, int]:
        if self.rotation in (90, 270):
            return self.coded_height, self.coded_width
        return self.coded_width, self.coded_height


def open_video(path: Path, label: str) -> av.container.InputContainer:
    try:
        return av.open(str(path), metadata_errors="ignore")
    except FileNotFoundError:
        raise StylebatchError(f"input not found: {label}") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise StylebatchError(f"{label} is not a readable video ({_reason(exc)})") from None


def video_stream(container: av.container.InputContainer, label: str) -> av.VideoStream:
    for s in container.streams.video:
        if not s.disposition & av.stream.Disposition.attached_pic:  # cover art is not the video
            return s
    kinds = "audio only" if container.streams.audio else "no streams"
    raise StylebatchError(f"{label} has no video stream ({kinds})")


# How much shorter than its declared length a video's frames may end before probe warns (seconds, and a
# share of that length): timestamps and declared lengths disagree by a frame or two in ordinary files.
CUT_SHORT_S, CUT_SHORT_SHARE = 1.0, 0.1


def _declared_end(vs) -> float | None:
    """Where the video stream declares it ends, in seconds of its timestamps: its start and duration,
    or Matroska's per-track DURATION tag (HH:MM:SS.fraction, the track's end; such files declare no
    frame count). Not the container's length, which covers every stream (a soundtrack may rightly
    outlast the picture)."""
    if vs.duration and vs.time_base:
        return float(((vs.start_time or 0) + vs.duration) * vs.time_base)
    tag = vs.metadata.get("DURATION") or vs.metadata.get("duration")
    try:
        h, m, sec = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except (AttributeError, ValueError):
        return None


def _warn_if_cut_short(label: str, vs, end: float, frames: int, expected: int) -> None:
    """A warning where the frames end (`end`, seconds) well before the video's declared end and no frame
    count was declared to refuse it by (probe's "decoded N of M frames"): a Matroska or WebM file cut
    short (a download or copy that stopped) decodes cleanly up to its cut. A warning, not an error: an
    end written wrong by a muxer would otherwise refuse a good video."""
    declared = _declared_end(vs)
    if expected or not declared or declared - end <= max(CUT_SHORT_S, CUT_SHORT_SHARE * declared):
        return
    log.warning("%s declares %.1f s of video but its frames end at %.1f s: it may be truncated (stylizing "
                "the %s it has)", label, declared, end, counted(frames, "frame"))


def _warn_if_transparent(label: str, frame: av.VideoFrame) -> None:
    """A warning where the first frame is transparent in places (ProRes 4444, PNG or QuickTime
    Animation with an alpha channel, an overlay or a title): no output codec stylebatch writes keeps
    an alpha channel, and the network paints opaque frames, so what is stored under the transparent
    parts shows. Looked at through a small copy: an alpha channel that is opaque everywhere (most
    GIFs, most RGBA screen captures) is no loss and says nothing."""
    if not any(c.is_alpha for c in frame.format.components):
        return
    scale = min(1.0, 256 / max(frame.width, frame.height))
    small = frame.reformat(width=max(1, round(frame.width * scale)), height=max(1, round(frame.height * scale)),
                           format="rgba", interpolation="AREA")
    if small.to_ndarray()[..., 3].min() < 255:
        log.warning("%s is transparent in places (an alpha channel, %s): the output cannot keep it and is "
                    "opaque, showing the colours stored under the transparent parts", label, frame.format.name)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _rotation(frame: av.VideoFrame) -> int:
    try:
        angle = float(frame.rotation or 0)
    except (AttributeError, TypeError, ValueError):
        return 0
    quarter = round(angle / 90) % 4
    if abs(angle - round(angle / 90) * 90) > 1:
        log.warning("display rotation of %.1f degrees is not a multiple of 90: ignored", angle)
        return 0
    return quarter * 90


def probe(path: Path, label: str) -> Probe:
    """Decode the whole video once: exact pts of every frame, and one-line errors for anything broken."""
    with open_video(path, label) as container:
        vs = video_stream(container, label)
        vs.thread_type = "AUTO"
        vs.codec_context.thread_count = codec_threads(vs.codec_context.width, vs.codec_context.height, 0)
        expected = vs.frames
        pts: list[int | None] = []
        keyframes: list[int] = []
        first: dict[str, Any] | None = None  # the first frame's facts (not the frame: it may be huge)
        last_duration = 0
        cut = [0]  # packets an edit list leaves out (a file trimmed without re-encoding): never shown
        try:
            for frame in _decode_counting_cut(container, vs, cut):
                if first is None:
                    first = {"coded_width": frame.width, "coded_height": frame.height,
                             "rotation": _rotation(frame), "pix_fmt": frame.format.name, "color": _color(frame)}
                    _warn_if_transparent(label, frame)
                    if frame.interlaced_frame:
                        log.warning("%s is interlaced: each frame's two fields are painted together and written "
                                    "as one progressive frame, so moving edges keep their combing (deinterlace it "
                                    "first for smooth motion, e.g. ffmpeg -vf bwdif)", label)
                if frame.key_frame:
                    keyframes.append(len(pts))
                pts.append(frame.pts)
                last_duration = frame.duration or 0
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise StylebatchError(f"{label} is truncated or corrupt ({_reason(exc)})") from None
        if first is None:
            raise StylebatchError(f"{label} has no decodable video frames (empty or corrupt)")
        # The header counts every coded frame, those an edit list cuts off included (MP4/MOV trimmed
        # with `ffmpeg -ss ... -c copy`, phone editors): the decoder never shows those.
        expected = max(0, expected - cut[0]) if expected else 0
        if expected and len(pts) < expected:
            raise StylebatchError(f"{label} is truncated or corrupt (decoded {len(pts)} of {expected} frames)")
        tb = vs.time_base or Fraction(1, 90000)
        rate = vs.average_rate or vs.guessed_rate or Fraction(25)
        reliable = all(p is not None for p in pts) and all(a < b for a, b in zip(pts, pts[1:]))
        if reliable:
            exact: list[int] = pts  # type: ignore[assignment]
        else:
            log.warning("the video's timestamps are missing or out of order: writing it at %s fps", float(rate))
            step = max(1, round(1 / (rate * tb)))
            exact = [i * step for i in range(len(pts))]
        if last_duration <= 0:
            last_duration = exact[-1] - exact[-2] if len(exact) > 1 else max(1, round(1 / (rate * tb)))
        if not keyframes or keyframes[0] != 0:
            keyframes.insert(0, 0)
        if reliable:  # (made-up timestamps say nothing of where the video ends)
            _warn_if_cut_short(label, vs, float((exact[-1] + last_duration) * tb), len(exact), expected)
        sar = vs.sample_aspect_ratio
        return Probe(
            video_stream=vs.index, codec=vs.codec_context.codec.name, time_base=tb, pts=exact, keyframes=keyframes,
            pts_reliable=reliable, last_duration=last_duration, frame_rate=rate, base_rate=vs.base_rate or None,
            **first,
            sample_aspect_ratio=(sar.numerator, sar.denominator) if sar and sar != 1 else None,
            audio=[_audio_summary(a) for a in container.streams.audio],
            subtitles=[{"index": s.index, "codec": s.codec_context.codec.canonical_name,
                        "language": s.metadata.get("language")} for s in container.streams.subtitles],
            metadata=dict(container.metadata), chapters=_chapters(container), video_metadata=stream_tags(vs.metadata),
            others=_other_streams(container, vs),
        )


def _other_streams(container, video) -> list[dict[str, Any]]:
    """The streams besides the video, its audio and subtitles: attachments (Matroska's fonts and
    files), data (telemetry, ...), other video (cover art, a second angle). Each as {index, kind,
    name, mimetype}. A MOV/MP4's chapter track (which its demuxer discards) and timecode track are
    not among them: the output writes the chapters and the video's timecode itself."""
    others = []
    for s in container.streams:
        if s.type == "attachment":
            others.append({"index": s.index, "kind": "attachment", "name": s.name or "", "mimetype": s.mimetype or ""})
        elif s.type == "data":
            if s.discard == av.stream.Discard.all or "timecode" in stream_tags(s.metadata):
                continue
            others.append({"index": s.index, "kind": "data", "name": s.name or s.metadata.get("handler_name") or ""})
        elif s.type == "video" and s.index != video.index:
            cover = s.disposition & av.stream.Disposition.attached_pic
            others.append({"index": s.index, "kind": "cover art" if cover else "video",
                           "name": s.codec_context.codec.name if s.codec_context else ""})
    return others


def _chapters(container) -> list[dict[str, Any]]:
    try:
        chapters = container.chapters()
    except (av.FFmpegError, AttributeError, ValueError):
        return []
    return [{"start": c["start"], "end": c["end"], "time_base": [c["time_base"].numerator, c["time_base"].denominator],
             "metadata": dict(c["metadata"])} for c in chapters if c.get("time_base")]


def _decode_counting_cut(container, vs, cut: list[int]) -> Iterator[av.VideoFrame]:
    """container.decode(vs), counting in cut[0] the packets the demuxer marks to be discarded (those
    before an edit list's start: decoded, as later frames may need them, but never shown)."""
    for packet in container.demux(vs):
        if packet.is_discard:
            cut[0] += 1
        yield from packet.decode()  # the final empty packet flushes the decoder


def _color(frame: av.VideoFrame) -> dict[str, Any]:
    space = int(frame.colorspace or 2)
    matrix = _MATRIX.get(space) or ("itu709" if frame.height >= 720 else "itu601")
    return {"matrix": matrix, "space": _SPACE[matrix] if space not in _MATRIX else space,
            "range": int(frame.color_range or 0), "primaries": int(frame.color_primaries or 2),
            "trc": int(frame.color_trc or 2)}


def _audio_summary(a: av.AudioStream) -> dict[str, Any]:
    cc = a.codec_context
    return {"index": a.index, "codec": cc.codec.canonical_name, "channels": cc.channels,
            "sample_rate": cc.sample_rate,
            "language": a.metadata.get("language")}




def keyframe_before(m, start: int) -> int:
    """The frame a decoder must start from to reach frame `start`: the last keyframe at or before it
    (the first frame where the timestamps cannot be trusted to seek by). start - keyframe_before(m,
    start) frames are decoded only to reach it."""
    if not m.pts_reliable or not m.keyframes or start < m.keyframes[0]:
        return 0
    return m.keyframes[bisect.bisect_right(m.keyframes, start) - 1]


class ChunkReader:
    """Upright RGB frames of any presentation range, by seeking to a keyframe and matching pts.

    Consecutive ranges continue the same decode without seeking; with `keep`, so does a range that
    starts up to `keep` frames before the previous one ended (those frames are kept after decoding).
    """

    def __init__(self, path: Path, manifest, threads: int = 0, keep: int = 0,
                 size: tuple[int, int] | None = None) -> None:
        """size: (width, height) of the upright frames to produce, scaled in the decoder's colour
        conversion (so no full-size RGB frame is ever made); default the display size."""
        self.path, self.m, self.threads = path, manifest, threads
        self.size = size or (manifest.display_width, manifest.display_height)
        self.k = (manifest.rotation // 90) % 4
        self.full_range = manifest.color.get("range") == 2
        self._container = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._next = -1  # presentation index of the next frame self._frames yields
        self._pending: av.VideoFrame | None = None  # a frame read ahead while seeking
        self._sws = VideoReformatter()  # one converter for all frames, not one per frame
        self._recent: collections.deque[tuple[int, np.ndarray]] = collections.deque(maxlen=keep)
        self.decoded = 0  # frames out of the decoder so far, those decoded only to reach a chunk included

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _open(self) -> av.VideoStream:
        self.close()
        self._container = open_video(self.path, self.m.input)
        vs = self._container.streams[self.m.video_stream]
        vs.thread_type = "AUTO"
        vs.codec_context.thread_count = codec_threads(self.m.coded_width, self.m.coded_height, self.threads)
        wanted = self.size if self.k % 2 == 0 else self.size[::-1]  # in the coded orientation
        shift = lowres(vs.codec_context.codec.name, (self.m.coded_width, self.m.coded_height), wanted)
        if shift:
            vs.codec_context.options = {"lowres": str(shift)}
        return vs

    def _decode(self, vs: av.VideoStream) -> Iterator[av.VideoFrame]:
        try:
            for frame in self._container.decode(vs):
                self.decoded += 1
                yield frame
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise StylebatchError(f"cannot decode {self.m.input} ({_reason(exc)})") from None

    def _position(self, start: int, seek: bool) -> None:
        vs = self._open()
        if seek and self.m.pts_reliable and start > 0:
            self._container.seek(self.m.pts[keyframe_before(self.m, start)], stream=vs, backward=True)
        self._frames = self._decode(vs)
        if not self.m.pts_reliable:  # find frames by counting from the start
            for _ in range(start):
                next(self._frames, None)
            self._next = start
            return
        target = self.m.pts[start]
        for frame in self._frames:
            if frame.pts is None or frame.pts > target:
                break  # the seek overshot or the stream is odd: decode from the start instead
            if frame.pts == target:
                self._pending = frame
                self._next = start
                return
        if seek:
            return self._position(start, seek=False)
        raise StylebatchError(f"{self.m.input}: frame {start} (pts {target}) is missing on decode")

    def _decode_on_to(self, start: int) -> bool:
        """Reach frame `start` by decoding on from where this reader stands, when no keyframe lies
        between: a seek would decode from the keyframe before `start`, which is at or before here,
        again (a rank whose next chunk is a few chunks on in a long GOP: the frames between are
        decoded, never converted). Whether it did; False leaves the reader to seek."""
        if self._frames is None or start < self._next:
            return False
        if self.m.pts_reliable:
            if keyframe_before(self.m, start) > self._next:
                return False
            target = self.m.pts[start]
            for frame in self._frames:
                if frame.pts is None or frame.pts > target:
                    return False  # odd stream: seek as before
                if frame.pts == target:
                    self._pending, self._next = frame, start
                    return True
            return False
        for _ in range(start - self._next):  # no usable pts: frames are counted, as from the start
            if next(self._frames, None) is None:
                return False
        self._next = start
        return True

    def read(self, start: int, end: int, batch: int) -> Iterator[np.ndarray]:
        """Batches (at most `batch` frames, uint8 [B,H,W,3]) of the frames [start, end), upright.

        A range that starts up to `keep` frames before where the previous one ended (a chunk's
        temporal warm-up) is served from the frames just decoded, without seeking."""
        w, h = self.size
        buf = np.empty((min(batch, end - start), h, w, 3), np.uint8)
        n = 0
        for index, rgb in self._upright(start, end):
            buf[n] = rgb
            n += 1
            if n == len(buf):
                yield buf
                buf = np.empty((min(batch, end - index - 1), h, w, 3), np.uint8) if index + 1 < end else buf
                n = 0
        if n:
            yield buf[:n]

    def _upright(self, start: int, end: int) -> Iterator[tuple[int, np.ndarray]]:
        recent = [f for i, f in self._recent if start <= i < self._next]
        if self._frames is not None and self._next - len(recent) == start and len(recent) == self._next - start:
            for offset, frame in enumerate(recent[:end - start]):
                yield start + offset, frame
            start = self._next
            if start >= end:
                return
        self._pending = None
        if (self._next != start or self._frames is None) and not self._decode_on_to(start):
            self._position(start, seek=True)
        for index in range(start, end):
            frame = self._pending or next(self._frames, None)
            self._pending = None
            if frame is None:
                raise StylebatchError(f"{self.m.input}: decoding ended at frame {index} of {self.m.frames}")
            if self.m.pts_reliable and frame.pts != self.m.pts[index]:
                raise StylebatchError(
                    f"{self.m.input}: frame {index} decodes with pts {frame.pts}, expected {self.m.pts[index]}")
            width, height = self.size if self.k % 2 == 0 else self.size[::-1]  # the coded orientation
            rgb = self._sws.reformat(frame, format="rgb24", width=width, height=height, interpolation="AREA",
                                     src_colorspace=self.m.color["matrix"],
                                     src_color_range="JPEG" if self.full_range else "MPEG").to_ndarray()
            rgb = np.rot90(rgb, self.k) if self.k else rgb
            self._next = index + 1
            if self._recent.maxlen:
                self._recent.append((index, rgb))
            yield index, rgb
