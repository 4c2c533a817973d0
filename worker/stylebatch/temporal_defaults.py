"""--temporal's defaults, importable without OpenCV or torch (the CLI and the operator read them)."""

from __future__ import annotations

MODES = ("on", "off")
DEFAULT_MODE = "off"
DEFAULT_STRENGTH = 0.6  # weight of the moved previous output where the flow is trusted
MAX_STRENGTH = 0.95  # the most --temporal-strength may be: at 1 the first frame would be kept for ever
MAX_WARMUP = 6  # frames stylized before a chunk's first frame: 0.6 ** 6, ~5% of the history, is left out


def warmup_frames(chunk_frames: int) -> int:
    """Warm-up frames per chunk: 6, fewer for short chunks so they cost at most ~1/8 more model time
    (a chunk of 24 frames gets 3: its first frame then misses 0.6 ** 3, ~22%, of the history)."""
    return max(2, min(MAX_WARMUP, chunk_frames // 8))


def with_defaults(mode: str | None, strength: float | None) -> tuple[str, float]:
    """(--temporal, --temporal-strength) as given (None: not given) with their defaults applied."""
    return mode or DEFAULT_MODE, float(DEFAULT_STRENGTH if strength is None else strength)
