"""Encoder settings from the output's extension and the user's encoding flags. Pure (no PyAV):
the request types validate with it, and the operator can import it; the tables are the contract's."""

from __future__ import annotations

import re
from pathlib import Path

from stylebatch.contract import (
    ALLOWED, BITRATE_PATTERN, CODEC_ALIASES, CONTAINERS, DEFAULT_CODEC, DEFAULT_PRESET, FLAG_NAME, PRESETS, QUALITY,
)
from stylebatch.errors import BadInput
from stylebatch.manifest import EncoderSettings


def container_for(output_name: str) -> str:
    ext = Path(output_name).suffix.lower()
    if ext not in CONTAINERS:
        raise BadInput(
            f"output {output_name!r} needs one of the extensions {', '.join(sorted(CONTAINERS))}")
    return CONTAINERS[ext]


def parse_bitrate(text: str) -> int:
    m = re.fullmatch(BITRATE_PATTERN, text)
    if not m:
        raise BadInput(f"bad --bitrate {text!r}: use e.g. 4M, 800k or 2500000")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    if not 1e3 <= value <= 1e10:
        raise BadInput(f"bad --bitrate {text!r}: must be between 1k and 10G")
    return int(value)


def choose_settings(output_name: str, *, codec: str | None = None, crf: int | None = None,
                    bitrate: str | None = None, preset: str | None = None) -> EncoderSettings:
    """Validated encoder settings (pix_fmt is decided later, from the source)."""
    container = container_for(output_name)
    if codec is None:
        enc = DEFAULT_CODEC[container]
    else:
        enc = CODEC_ALIASES.get(codec.lower())
        if enc is None:
            raise BadInput(f"unknown --codec {codec!r}: use one of {', '.join(sorted(CODEC_ALIASES))}")
    if enc not in ALLOWED[container]:
        raise BadInput(f"--codec {codec} cannot go into {Path(output_name).suffix} "
                              f"(use {', '.join(sorted(FLAG_NAME.get(e, e) for e in ALLOWED[container]))})")
    if crf is not None and bitrate is not None:
        raise BadInput("--crf and --bitrate exclude each other: give one")
    default_q, low, high = QUALITY[enc]
    if crf is not None and not low <= crf <= high:
        raise BadInput(f"bad --crf {crf}: {enc} takes {low} to {high}")
    rate = parse_bitrate(bitrate) if bitrate is not None else None
    if preset is not None and preset not in PRESETS[enc]:
        if not PRESETS[enc]:
            raise BadInput(f"{enc} takes no --preset (it has no speed settings): leave it out")
        raise BadInput(f"bad --preset {preset!r} for {enc}: choices are {', '.join(PRESETS[enc])}")
    return EncoderSettings(codec=enc, pix_fmt="", container=container,
                           crf=None if rate is not None else (crf if crf is not None else default_q),
                           bitrate=rate, preset=preset or DEFAULT_PRESET.get(enc))
