"""Encoder settings from the output's extension and the user's flags, and writing one part."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from stylebatch.cpuinfo import CpuInfo, this_cpu
from stylebatch.errors import StylebatchError
from stylebatch.memory import codec_threads, encoder_per_frame
from stylebatch.manifest import EncoderSettings

from stylebatch.contract import DEFAULT_PRESET, PART_EXT, X264_TUNING

# Matroska counts in milliseconds; capping the rate the encoder is told keeps part timestamps distinct.
_MAX_PART_RATE = Fraction(500)


def source_layout(pix_fmt: str) -> tuple[str, int]:
    """(chroma, bits) of a pixel format: chroma is 420, 422 or 444."""
    fmt = av.VideoFormat(pix_fmt, 16, 16)
    bits = max(c.bits for c in fmt.components)
    if fmt.is_rgb or len(fmt.components) < 3:
        return "444" if fmt.is_rgb else "420", bits
    w, h = fmt.components[1].width, fmt.components[1].height
    return ("444" if (w, h) == (16, 16) else "422" if h == 16 else "420"), bits


def choose_pix_fmt(codec: str, source_pix_fmt: str, width: int, height: int) -> str:
    """Keep the source's chroma and depth where the encoder can; odd sizes need 4:4:4 (or 4:2:2 with
    an even width) because subsampled chroma rounds the picture size to even."""
    chroma, bits = source_layout(source_pix_fmt)
    if width % 2 or (height % 2 and chroma != "422"):
        chroma = "444"
    supported = {f.name for f in (av.Codec(codec, "w").video_formats or [])}
    deep = bits > 8
    candidates = {
        ("420", True): ["yuv420p10le", "p010le"], ("422", True): ["yuv422p10le"],
        ("444", True): ["yuv444p10le", "yuv444p16le"],
    }.get((chroma, deep), []) + [f"yuv{chroma}p", f"yuvj{chroma}p"]
    if codec == "mjpeg":  # full-range flavours are what every MJPEG decoder expects
        candidates = [f"yuvj{chroma}p", f"yuv{chroma}p"]
    if chroma == "422":
        candidates += ["yuv444p"]
    for name in candidates:
        if name in supported:
            return name
    raise StylebatchError(f"{codec} cannot encode a {width}x{height} picture exactly (needs {chroma} chroma)")


def check_encoder(codec: str) -> None:
    """Open the encoder once on a tiny frame, so one that this machine cannot run (NVENC without an
    NVIDIA GPU/driver, an encoder missing from this FFmpeg build) fails before any work starts."""
    try:
        ctx = av.CodecContext.create(codec, "w")
        formats = ctx.codec.video_formats or []
        ctx.width, ctx.height = 256, 256
        ctx.pix_fmt = formats[0].name if formats else "yuv420p"
        ctx.time_base = Fraction(1, 25)
        if codec == "libx265":
            ctx.options = {"x265-params": "log-level=error"}
        ctx.open()
    except Exception as exc:  # noqa: BLE001 - any failure here means: cannot encode with it
        hint = " (no NVIDIA GPU/driver?)" if "nvenc" in codec else ""
        raise StylebatchError(f"encoder {codec} is not available on this machine{hint}: "
                              f"{_av_reason(exc)}") from None


def _av_reason(exc: Exception) -> str:
    return " ".join(str(getattr(exc, "strerror", None) or exc).split()) or type(exc).__name__


# The CPU flags (cpuinfo.this_cpu) with which x264 runs its AVX-512 code, and the x264 feature names of
# the rest it would use (`x264_asm`).
_X264_AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
_X264_BELOW_AVX512 = (("fma", "FMA3"), ("bmi2", "BMI2"), ("abm", "LZCNT"))


def x264_asm(cpu: CpuInfo | None = None) -> str | None:
    """x264's `asm` option for this CPU (or cpu): where x264 would run its AVX-512 code, everything up
    to AVX2 instead (with FMA3, BMI2 and LZCNT where the CPU has them); elsewhere None (x264 detects).

    x264's AVX-512 code (core 165, in PyAV's wheel) encodes the same frames differently from one
    encoder to the next in one process (4 bitstreams in 30 encodes of six 96x64 frames on a Zen 5):
    a chunk stylized again on resume, or by another rank, came out as other bits, and a video was not
    the same from run to run. Up to AVX2 it is the same every time (the bitstream x264's AVX-512 code
    made most often), 0.2 ms a 640x360 frame slower (2.0 against 1.8-2.0 ms at `veryfast`)."""
    flags = (cpu or this_cpu()).flags
    if not _X264_AVX512 <= flags:
        return None
    return ",".join(["AVX2", *(name for flag, name in _X264_BELOW_AVX512 if flag in flags)])


def x264_params(tuning: str | None) -> str | None:
    """x264-params for an encoder on this CPU: `tuning` (stylebatch's for the preset, contract.X264_TUNING,
    or a benchmark's try) and the cap at x264's AVX2 code where this CPU needs it; None for neither."""
    asm = x264_asm()
    return ":".join(filter(None, [tuning, asm and f"asm={asm}"])) or None


def open_encoder_options(s: EncoderSettings) -> dict[str, str]:
    opts: dict[str, str] = {}
    c = s.codec
    if c in ("libx264", "libx265"):
        if s.crf is not None:
            opts["crf"] = str(s.crf)
        opts["preset"] = s.preset or DEFAULT_PRESET[c]
        if c == "libx265":
            opts["x265-params"] = "log-level=error"
        elif params := x264_params(X264_TUNING.get(opts["preset"])):
            opts["x264-params"] = params
    elif c == "libvpx-vp9":
        opts.update({"deadline": s.preset or DEFAULT_PRESET[c], "cpu-used": "8" if s.preset == "realtime" else "4",
                     "row-mt": "1"})
        if s.crf is not None:
            opts.update({"crf": str(s.crf), "b": "0"})
    elif c.endswith("_nvenc"):
        opts["preset"] = s.preset or DEFAULT_PRESET[c]
        if s.crf is not None:
            opts.update({"rc": "vbr", "cq": str(s.crf), "b": "0"})
    elif c == "mjpeg" and s.crf is not None:
        # FFmpeg's MJPEG encoder takes a fixed quantizer only from each frame's own quality, which
        # ffmpeg's -q:v sets and PyAV cannot (a context's global_quality alone left every frame at
        # the finest quantizer, whatever --crf said); its rate control held at one quantizer gives
        # every frame that one: -q:v's quantization tables. With --bitrate the rate control aims
        # at the bit rate, between FFmpeg's own bounds.
        opts.update({"qmin": str(s.crf), "qmax": str(s.crf)})
    return opts


def part_encoding(s: EncoderSettings) -> dict:
    """What decides how a part is encoded, as the parts' settings record keeps it (stylize.json's
    "encoding": stylize.settings_record): the encoder, the pixel format it is given, its bit rate, the
    options it is opened with, and contract.PART_ENCODING_VERSION. Parts whose record says otherwise
    were encoded otherwise (MJPEG before its --crf reached the encoder: every part at the finest
    quantizer, whatever --crf said) and are never resumed beside parts encoded now. x264's `asm` cap is
    left out: it follows the CPU of the rank, not the settings, and changes the bits, not the encoding
    (parts of ranks on two kinds of CPU are alike). FFmpeg's own version is not recorded either."""
    from stylebatch import contract

    options = dict(open_encoder_options(s))
    if "x264-params" in options:
        options["x264-params"] = ":".join(p for p in options["x264-params"].split(":") if not p.startswith("asm="))
        if not options["x264-params"]:
            del options["x264-params"]
    return {"codec": s.codec, "pix_fmt": s.pix_fmt, "bitrate": s.bitrate, "options": options,
            "version": contract.PART_ENCODING_VERSION}


class PartWriter:
    """Encodes upright RGB frames into one part file: a fresh encoder, so it starts on a keyframe
    and every GOP is closed inside it.

    Huge frames of an intra-only codec at constant quality (MJPEG) get a fresh encoder per frame
    (`memory.encoder_per_frame`): FFmpeg's MJPEG encoder keeps copies of the pictures it encoded,
    three full-size ones at any time, and each frame is coded on its own anyway (same bytes)."""

    def __init__(self, path: Path, s: EncoderSettings, width: int, height: int,
                 frame_rate: Fraction, color: dict, threads: int = 0, sar: tuple[int, int] | None = None) -> None:
        self.codec = s.codec
        try:
            self._open(path, s, width, height, frame_rate, color, threads, sar)
        except av.FFmpegError as exc:
            raise StylebatchError(f"encoder {s.codec} failed to open: {_av_reason(exc)}") from None

    def _open(self, path: Path, s: EncoderSettings, width: int, height: int,
              frame_rate: Fraction, color: dict, threads: int, sar: tuple[int, int] | None) -> None:
        self.container = av.open(str(path), "w", format="matroska")
        rate = min(frame_rate, _MAX_PART_RATE)
        self.stream = self.container.add_stream(s.codec, rate=rate, options=open_encoder_options(s))
        self.full_range = s.pix_fmt.startswith("yuvj") or s.codec == "mjpeg"
        self.matrix = color["matrix"]

        def configure(cc: av.VideoCodecContext) -> av.VideoCodecContext:
            cc.width, cc.height, cc.pix_fmt = width, height, s.pix_fmt
            cc.time_base = 1 / rate
            cc.thread_count = codec_threads(width, height, threads)
            if sar:
                cc.sample_aspect_ratio = Fraction(*sar)
            if s.bitrate is not None:
                cc.bit_rate = s.bitrate
            cc.colorspace = color["space"]
            cc.color_range = 2 if self.full_range else 1
            if color.get("primaries") not in (None, 2):
                cc.color_primaries = color["primaries"]
            if color.get("trc") not in (None, 2):
                cc.color_trc = color["trc"]
            return cc

        def fresh() -> av.VideoCodecContext:
            cc = av.CodecContext.create(s.codec, "w")
            cc.options = open_encoder_options(s)
            return configure(cc)

        configure(self.stream.codec_context)
        self._fresh = fresh if encoder_per_frame(s, width, height) else None
        self.count = 0
        self._sws = VideoReformatter()  # one converter for the whole part
        self._rgb: av.VideoFrame | None = None  # made on the first full-size frame only

    def _full_size_rgb(self) -> tuple[av.VideoFrame, np.ndarray]:
        """One RGB frame for the whole part, for frames already at its size: a fresh 1080p frame per
        picture costs more in page faults than the colour conversion itself."""
        if self._rgb is None:
            cc = self.stream.codec_context
            self._rgb = av.VideoFrame(cc.width, cc.height, "rgb24")
            plane = self._rgb.planes[0]
            self._rgb_view = np.frombuffer(plane, np.uint8).reshape(cc.height, plane.line_size)[
                :, :cc.width * 3].reshape(cc.height, cc.width, 3)
        return self._rgb, self._rgb_view

    def write(self, frames: np.ndarray) -> None:
        try:
            self._write(frames)
        except av.FFmpegError as exc:
            raise StylebatchError(f"encoder {self.codec} failed: {_av_reason(exc)}") from None

    def _write(self, frames: np.ndarray) -> None:
        """Frames smaller than the part (stylized at --max-side and decoded that small) are scaled up
        here, in the colour conversion: the only place a full-size frame exists."""
        cc = self.stream.codec_context
        for rgb in frames:
            if rgb.shape[:2] == (cc.height, cc.width):
                source, view = self._full_size_rgb()
                np.copyto(view, rgb)
                scale = {}
            else:
                source = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                scale = {"width": cc.width, "height": cc.height, "interpolation": "BICUBIC"}
            frame = self._sws.reformat(source, format=cc.pix_fmt, dst_colorspace=self.matrix,
                                       dst_color_range="JPEG" if self.full_range else "MPEG", **scale)
            frame.pts = self.count
            self.count += 1
            if self._fresh is None:
                self.container.mux(self.stream.encode(frame))
                continue
            encoder = self._fresh()
            packets = encoder.encode(frame) + encoder.encode(None)
            del frame, encoder  # the full-size picture and the encoder's copy of it go now
            for packet in packets:
                packet.stream = self.stream
            self.container.mux(packets)

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))
            self.container.close()
        except av.FFmpegError as exc:
            raise StylebatchError(f"encoder {self.codec} failed: {_av_reason(exc)}") from None

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - a half-written temp file is deleted by the caller anyway
            pass
