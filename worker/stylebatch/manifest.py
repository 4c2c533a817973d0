"""manifest.json: everything preprocess learned about the input, written last into the work dir.

Its existence means preprocess finished; stylize and postprocess read only the work dir.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from stylebatch.contract import fresh_work
from stylebatch.errors import StylebatchError
from stylebatch.workdir import MANIFEST_NAME, PARTS_DIR, STYLIZE_NAME, require_owned

__all__ = ["EncoderSettings", "Manifest", "read_manifest", "MANIFEST_NAME", "PARTS_DIR", "STYLIZE_NAME"]
FORMAT_VERSION = 1


@dataclass
class EncoderSettings:
    codec: str  # FFmpeg encoder name, e.g. libx264
    pix_fmt: str  # what the encoder gets, e.g. yuv420p10le
    container: str  # FFmpeg muxer name of the final output, e.g. mp4
    crf: int | None = None
    bitrate: int | None = None  # bits per second
    preset: str | None = None


@dataclass
class Manifest:
    input: str  # display form of the input (never a secret)
    output: str  # output URI without its query string: never a SAS
    source: str  # file name of the input's byte copy inside the work dir
    frames: int
    time_base: tuple[int, int]
    pts: list[int]  # pts of every frame in presentation order
    last_duration: int
    keyframes: list[int]  # presentation indices of keyframes (safe seek points)
    pts_reliable: bool  # False: pts were missing or not increasing, frames are found by counting
    frame_rate: tuple[int, int]  # average rate, only to tell the encoder
    video_stream: int
    coded_width: int
    coded_height: int
    rotation: int  # counter-clockwise degrees of the display matrix, a multiple of 90
    display_width: int
    display_height: int
    pix_fmt: str  # the source's
    color: dict[str, Any]
    audio: list[dict[str, Any]]
    subtitles: list[dict[str, Any]]
    encoder: EncoderSettings
    chunk_frames: int
    stylebatch_version: str
    format_version: int = FORMAT_VERSION
    input_identity: dict[str, Any] = field(default_factory=dict)  # Location.identity() of the input
    video_codec: str = ""  # the source video's decoder, e.g. mjpeg ("" in work dirs of older versions)
    extra: dict[str, Any] = field(default_factory=dict)  # JSON values only: held as they read back

    def __post_init__(self) -> None:
        # what preprocess returns equals what later stages read (a tuple would come back a list)
        self.extra = json.loads(json.dumps(self.extra))

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise ValueError(f"a JSON {type(d).__name__}, not an object")
            if d.get("format_version") != FORMAT_VERSION:
                raise StylebatchError(
                    f"work dir was made by an incompatible stylebatch (manifest format "
                    f"{d.get('format_version')}, expected {FORMAT_VERSION}); start with {fresh_work()}")
            d["encoder"] = EncoderSettings(**d["encoder"])
            d["time_base"] = tuple(d["time_base"])
            d["frame_rate"] = tuple(d["frame_rate"])
            return cls(**d)
        except (ValueError, TypeError, KeyError) as exc:
            raise StylebatchError(f"work dir has a corrupt {MANIFEST_NAME} ({exc})") from None


def read_manifest(work) -> Manifest:
    """The manifest of a work dir (a storage Location) that stylebatch made, or a one-line error if
    preprocess never finished there."""
    require_owned(work)
    loc = work.child(MANIFEST_NAME)
    if not loc.exists():
        raise StylebatchError(f"no {MANIFEST_NAME} in work dir {work.display}: run `stylebatch preprocess` first")
    return Manifest.from_json(loc.read_bytes())
