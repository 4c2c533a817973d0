"""manifest.json: everything preprocess learned about the input, written last into the work dir.

Its existence means preprocess finished; stylize and postprocess read only the work dir.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from stylebatch.errors import StylebatchError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PARTS_DIR = "parts"


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def time_base_fraction(self) -> Fraction:
        return Fraction(*self.time_base)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            d = json.loads(text)
            if d.get("format_version") != FORMAT_VERSION:
                raise StylebatchError(
                    f"work dir was made by an incompatible stylebatch (manifest format "
                    f"{d.get('format_version')}, expected {FORMAT_VERSION}); start with a fresh --work")
            d["encoder"] = EncoderSettings(**d["encoder"])
            d["time_base"] = tuple(d["time_base"])
            d["frame_rate"] = tuple(d["frame_rate"])
            return cls(**d)
        except (ValueError, TypeError, KeyError) as exc:
            raise StylebatchError(f"work dir has a corrupt {MANIFEST_NAME} ({exc})") from None


def read_manifest(work) -> Manifest:
    """The manifest of a work dir (a storage Location), or a one-line error if preprocess never finished."""
    loc = work.child(MANIFEST_NAME)
    if not loc.exists():
        raise StylebatchError(f"no {MANIFEST_NAME} in work dir {work.display}: run `stylebatch preprocess` first")
    return Manifest.from_json(loc.read_bytes())


# --- what stylebatch owns in a work dir: the only files it ever deletes ---

STYLIZE_NAME = "stylize.json"
_SOURCE = re.compile(r"^source(\.[a-z0-9]{1,8})?$")
_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{8}\.partial$")  # temp files of atomic local writes


def is_own_name(name: str) -> bool:
    """True for a '/'-separated name relative to a work dir that stylebatch itself writes there."""
    top, _, rest = name.partition("/")
    if rest:
        return top == PARTS_DIR
    return name in (MANIFEST_NAME, STYLIZE_NAME) or bool(_SOURCE.match(name) or _PARTIAL.match(name))


def _top_level_names(work) -> list[str]:
    if work.is_local():
        path = work.local_path()
        if path.is_file():
            raise StylebatchError(f"work dir {work.display} is a file: give a folder (empty or new)")
        if not path.is_dir():
            return []
        try:
            return sorted(p.name + ("/x" if p.is_dir() else "") for p in path.iterdir())
        except OSError as exc:
            raise StylebatchError(f"cannot read work dir {work.display}: {exc.strerror or exc}") from None
    return work.list()


def _inside(loc, folder) -> bool:
    """True if loc is folder itself or lies below it (same backend, resolved paths)."""
    if loc.is_local() != folder.is_local():
        return False
    if loc.is_local():
        a, b = loc.local_path().resolve(), folder.local_path().resolve()
        return a == b or b in a.parents
    if (loc.container, loc.account, loc.endpoint) != (folder.container, folder.account, folder.endpoint):
        return False
    return not folder.blob or loc.blob == folder.blob or loc.blob.startswith(folder.blob + "/")


def check_work(work, *others) -> None:
    """Refuse a work dir that holds files stylebatch did not write (unless it holds a manifest,
    i.e. it is a stylebatch work dir being resumed), or that holds the input or the output."""
    for other in others:
        if other is not None and _inside(other, work):
            raise StylebatchError(f"work dir {work.display} contains {other.display}: give an empty or new "
                                  f"folder for --work (stylebatch deletes its work dir's files when done)")
    names = _top_level_names(work)
    if MANIFEST_NAME in names:
        return
    foreign = [n.partition("/")[0] for n in names if not is_own_name(n)]
    if foreign:
        raise StylebatchError(f"work dir {work.display} holds other files ({foreign[0]}...): "
                              f"give an empty or new folder for --work")


def delete_work(work) -> None:
    """Delete what stylebatch wrote into work (parts/, source.*, stylize.json, temp files, manifest.json
    last) and nothing else; a local work dir left empty is removed too."""
    own = [n for n in work.list() if is_own_name(n)]
    own.sort(key=lambda n: n == MANIFEST_NAME)  # the manifest last: a half-deleted dir still reads as ours
    for name in own:
        work.child(name).delete()
    if work.is_local():
        import contextlib
        import os

        path = work.local_path()
        for folder in (path / PARTS_DIR, path):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if empty
