"""`stylebatch preview`: one frame (or a photo) in many styles, labelled, on one sheet to choose from.

Fast by design: one frame, each style run once at the tile's size.
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from stylebatch.contract import style_problem
from stylebatch.errors import BadInput
from stylebatch.logs import counted, say

ORIGINAL = "original"
LABEL_HEIGHT, GAP = 18, 6
SHEET_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def parse_time(text: str) -> float:
    """"12", "12.5", "1:02", "00:00:12.5" -> seconds."""
    if not re.fullmatch(r"(\d+:){0,2}\d+(\.\d+)?", text.strip()):
        raise BadInput(f"--at {text!r} is not a time; write seconds (12.5) or [hh:]mm:ss (00:00:12)")
    seconds = 0.0
    for field in text.strip().split(":"):
        seconds = seconds * 60 + float(field)
    return seconds


def chosen_styles(values: list[str] | None, everything: bool) -> list[str]:
    """Each --style value is a comma list of styles (one tile each), unless it has weights (a:0.7,b:0.3):
    then it is one blend. No --style, or --all: the 26 built-ins, then the styles given."""
    from stylebatch.styles import is_weighted, list_styles

    given = []
    for value in values or []:
        if problem := style_problem(value):  # `--style ,` or `--style ""` was taken for no --style: all 26
            raise BadInput(f"--style {value!r} {problem}")
        named = [value] if is_weighted(value) else [v for v in value.split(",") if v.strip()]
        given += named
    builtins = [s.name for s in list_styles()] if everything or not given else []
    return builtins + given


def grab_frame(path: Path, label: str, at: float | None) -> np.ndarray:
    """The upright RGB frame shown at `at` seconds (default: the middle of the video), at its display
    shape: a frame of non-square pixels (a DVD's 720x480 at 32:27, 16:9 on screen) is scaled in width
    by its sample aspect ratio (it was shown 3:2, squeezed)."""
    import av

    from stylebatch.video import _rotation, open_video, video_stream

    with open_video(path, label) as container:
        vs = video_stream(container, label)
        duration = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else \
            (container.duration / 1e6 if container.duration else None)
        target = at if at is not None else (duration / 2 if duration else 0.0)
        if at is not None and at > 0 and vs.time_base:
            container.seek(int(at / vs.time_base), stream=vs, backward=True)
        picked = None
        try:
            for frame in container.decode(vs):
                if picked is not None and frame.time is not None and frame.time > target + 1e-6:
                    break
                picked = frame
        except (av.FFmpegError, OSError, ValueError):
            if picked is None:
                raise BadInput(f"{label} is truncated or corrupt: no frame decodes") from None
        if picked is None:
            raise BadInput(f"{label} has no decodable video frames")
        if at is not None and picked.time is not None and at > picked.time + 1.0:
            raise BadInput(f"--at {at:g}s is past the end of {label} (its last frame is at {picked.time:.2f}s)")
        sar = vs.sample_aspect_ratio
        width = max(2, round(picked.width * sar)) if sar and sar > 0 else picked.width
        rgb = picked.to_ndarray(format="rgb24", width=width, height=picked.height)
        k = _rotation(picked) // 90
        return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def read_input(path: Path, label: str, at: float | None) -> np.ndarray:
    """The photo (read and checked as a painting is, and named in a refusal as the input picture it is;
    `at` refused), or the video's frame at `at` (grab_frame)."""
    from stylebatch.paintings import is_image_name, read_style_image

    if is_image_name(path.name):
        if at is not None:  # was ignored: the sheet showed the photo as if --at had been met
            raise BadInput(f"--at picks a video's frame, and {label} is a picture: leave --at out")
        return read_style_image(path, label=label, what="an input picture")
    return grab_frame(path, label, at)


def fit(frame: np.ndarray, tile: int) -> np.ndarray:
    """Scaled (never up) so the long side is at most `tile`, both sides even and at least 16."""
    from PIL import Image

    h, w = frame.shape[:2]
    scale = min(1.0, tile / max(h, w))
    size = (max(16, round(w * scale / 2) * 2), max(16, round(h * scale / 2) * 2))
    return np.array(Image.fromarray(frame).resize(size, Image.LANCZOS)) if size != (w, h) else frame


def grid(count: int, tile_w: int, tile_h: int, columns: int | None = None) -> tuple[tuple[int, int], list]:
    """Sheet size and each tile's (x, y) for `count` labelled tiles: `columns` a row, at most `count` of
    them (more would only add empty space); by default about 16:9 overall."""
    columns = max(1, min(count, columns or round(math.sqrt(count * 16 / 9 * (tile_h + LABEL_HEIGHT) / tile_w))))
    rows = -(-count // columns)
    cell_w, cell_h = tile_w + GAP, tile_h + LABEL_HEIGHT + GAP
    boxes = [(GAP + (i % columns) * cell_w, GAP + (i // columns) * cell_h) for i in range(count)]
    return (GAP + columns * cell_w, GAP + rows * cell_h), boxes


def fitted_label(text: str, fits: Callable[[str], bool]) -> str:
    """`text`, shortened with "…" until fits(text): a file's name loses the end of its stem, not its
    extension (lavender-gold.jpg is a painting, lavender-gold the built-in: "lavende….jpg" is not
    "lavender-…"); any other label (a built-in, a blend) loses its end."""
    stem, dot, ext = text.rpartition(".")
    keep = dot + ext if stem and 0 < len(ext) <= 4 and ext.isalnum() and ext[0].isalpha() else ""
    head = text[:len(text) - len(keep)]
    while len(head) > 1 and not fits(head + keep):
        head = head[:-2] + "…"
    return head + keep


def draw_label(text: str, width: int):
    """The label strip under a tile: the style's name in black on white (Pillow's built-in font),
    shortened to fit (fitted_label)."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (width, LABEL_HEIGHT), "white")
    font = ImageFont.load_default()
    text = fitted_label(text, lambda t: ImageDraw.Draw(strip).textlength(t, font=font) <= width - 4)
    ImageDraw.Draw(strip).text((2, 3), text, fill="black", font=font)
    return strip


def make_sheet(tiles: list[tuple[str, np.ndarray]], columns: int | None = None):
    """One picture: each (label, image) tile with its label underneath, in reading order."""
    from PIL import Image

    th, tw = tiles[0][1].shape[:2]
    size, boxes = grid(len(tiles), tw, th, columns)
    sheet = Image.new("RGB", size, (236, 236, 236))
    for (label, image), (x, y) in zip(tiles, boxes):
        sheet.paste(Image.fromarray(image), (x, y))
        sheet.paste(draw_label(label, tw), (x, y + th))
    return sheet


def render(frame: np.ndarray, styles: list[str], tile: int, device: str, keep_colors: bool = False,
           columns: int | None = None):
    """The sheet for a frame: the original first, then each style (file styles as local paths). On the
    CPU in fp32: for one small tile auto's bf16 (a .pth) would time bf16 against fp32 first (about a
    second) and paint the tile twice to check it (models.cpu_bf16_speedup, Stylizer._checked)."""
    from stylebatch.memory import on_gpu
    from stylebatch.models import load_stylizer

    small = fit(frame, tile)
    tiles = [(ORIGINAL, small)]
    precision = "auto" if on_gpu(device) else "fp32"
    for style in styles:
        stylizer = load_stylizer(style, device=device, keep_colors=keep_colors, precision=precision)
        tiles.append((stylizer.name, stylizer(small[None])[0]))
    return make_sheet(tiles, columns)


def run(args: argparse.Namespace) -> int:
    from stylebatch import preprocess
    from stylebatch.storage import location
    from stylebatch.styles import resolve_style

    out = location(args.output)
    suffix = Path(out.name or "").suffix.lower()
    if suffix not in SHEET_SUFFIXES:
        raise BadInput(f"-o {out.display}: the sheet is a picture; end its name in {', '.join(SHEET_SUFFIXES)}")
    at = parse_time(args.at) if args.at is not None else None
    src = location(args.input)
    chosen = chosen_styles(args.style, args.all)
    check_not_overwritten(src, out, chosen)
    out.check_writable()  # a folder, a missing folder or container: said before any frame is read or painted
    with tempfile.TemporaryDirectory(prefix="stylebatch-preview-") as tmp:
        if src.is_local():
            preprocess.check_input(src, kind="a video or a picture")
            local = Path(src.local_path())
        else:
            local = Path(tmp) / (src.name or "input")
            src.download(local)
        frame = read_input(local, src.display, at)
        styles = [resolve_style(s, Path(tmp)) for s in chosen]
        sheet = render(frame, styles, args.tile, args.device, args.keep_colors, args.columns)
        result = Path(tmp) / f"sheet{suffix}"
        sheet.save(result, SHEET_SUFFIXES[suffix], **({"quality": 85} if suffix != ".png" else {}))
        out.upload(result)  # atomic: a half-written sheet never appears under its name
    say(f"{out.display}: {counted(len(styles), 'style')}")
    return 0


def check_not_overwritten(src, out, styles: list[str]) -> None:
    """Refuse, before anything is read, a sheet that would be written over the input or over a style's
    file (a painting or a .pth), however its path is spelled: the check `stylebatch run` makes of its
    input and output (preprocess.check_not_overwritten), for every file the preview reads."""
    from stylebatch import preprocess
    from stylebatch.styles import BUILTIN_KIND, parse_style, style_file

    preprocess.check_not_overwritten(src, out)
    for style in styles:
        for part in parse_style(style):
            if part.kind != BUILTIN_KIND:
                loc = style_file(part.ref)
                preprocess.check_not_overwritten(loc, out, f"the style file {loc.display}")
