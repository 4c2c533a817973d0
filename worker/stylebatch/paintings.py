"""Style images ("make it look like this painting"): read once, checked, turned into a style vector.

A style image is a JPEG, PNG or WebP file. Anything else, a truncated file, a picture smaller than
`MIN_SIDE` or larger than `MAX_PIXELS` (a decompression bomb is refused from its header, before any
pixel is decoded) is a one-line `BadInput`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stylebatch.contract import is_image_name  # noqa: F401 - this module's name for it too
from stylebatch.errors import BadInput

FORMATS = ("JPEG", "PNG", "WEBP")
MIN_SIDE = 16  # a few pixels hold no style
MAX_PIXELS = 64_000_000  # bigger than any painting scan worth using; beyond this is a decompression bomb


def read_style_image(path: str | Path, label: str | None = None, what: str = "a style image") -> np.ndarray:
    """The whole picture, upright (EXIF), transparency over white, as uint8 RGB [H, W, 3]. `label` names
    the file in a refusal (default "style image NAME", a blob's local copy by the blob's URI), `what` the kind of picture that is being read
    where the limit is said ("more than the 64 megapixels a style image may have"): for a picture that
    is not a painting, "an input picture", "a content image"."""
    from PIL import Image

    with _opened(path, label, what) as img:
        img.load()
        img = _upright(img)
        if img.mode == "I" or img.mode.startswith("I;16"):  # a 16-bit grayscale PNG: convert() clips it to
            gray = np.rint(np.asarray(img, dtype=np.float64) / 257)  # 0..255, nearly all white; scale it
            return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:  # (an RGB or L PNG's colour key)
            img = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
        return np.asarray(img.convert("RGB"))


def _upright(img):
    """The picture turned as its EXIF orientation says. Only the pixels are turned: ImageOps.exif_transpose
    also rewrites the EXIF, and a block with a tag of the wrong type (ColorMap as text) failed there with
    struct.error, a traceback for a picture that decodes; an orientation that cannot be read is none."""
    from PIL import Image

    try:
        orientation = int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - metadata Pillow cannot parse, of any kind: the picture as stored
        orientation = 1
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    return img.transpose(method) if method is not None else img


def check_style_image(path: str | Path, label: str | None = None, what: str = "a style image") -> None:
    """What read_style_image refuses from the file's header alone (not there, not a JPEG, PNG or WebP
    picture, too small or too many pixels), and a JPEG cut short (decoded at 1/8 scale; a PNG's chunks
    are verified to its end): for a check before any work starts.
    `label` and `what` as read_style_image's."""
    with _opened(path, label, what) as img:
        if img.format in ("JPEG", "MPO"):  # a JPEG cut short: refused here, not once the ranks have started;
            img.draft("RGB", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))  # all its data read, 1/64
            img.load()  # of its pixels made


@contextlib.contextmanager
def _opened(path: str | Path, label: str | None, what: str) -> Iterator:
    """The picture opened (its header read, its size checked), and a one-line BadInput for whatever is
    wrong with it, found here or while the caller decodes it."""
    from PIL import Image, UnidentifiedImageError

    from stylebatch.styles import shown_style_file

    path = Path(path)
    shown = shown_style_file(path)  # a blob's local copy: the blob's URI as displayed
    label = label or f"style image {path.name if shown == str(path) else shown}"
    if not path.is_file():
        raise BadInput(f"{label} not found" if not path.exists() else f"{label} is not a file")
    try:
        with warnings.catch_warnings():
            # Pillow's remarks on odd files (TIFF tags, APNG chunks): noise; and its bomb warning (over 89
            # megapixels), which said "a decompression bomb?" of a 12000x8000 scan: MAX_PIXELS, lower, says
            # its size below. Its DecompressionBombError (over 179) is still raised before the header is read
            warnings.simplefilter("ignore")
            with Image.open(path, formats=FORMATS) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise BadInput(f"{label} is {w}x{h} pixels, more than the {MAX_PIXELS // 1_000_000} "
                                   f"megapixels {what} may have; scale it down")
                if min(w, h) < MIN_SIDE:
                    raise BadInput(f"{label} is {w}x{h} pixels; both sides need at least {MIN_SIDE}")
                if img.format == "PNG":  # its chunks and checksums, to the end marker (no pixels decoded):
                    with Image.open(path, formats=("PNG",)) as whole:  # Pillow decodes a PNG cut short
                        whole.verify()  # after its pixel data without a word, the rows it lacks black
                yield img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInput(f"{label} has too many pixels (a decompression bomb?); at most "
                       f"{MAX_PIXELS // 1_000_000} megapixels") from None
    except UnidentifiedImageError:
        raise BadInput(f"{label} is not a JPEG, PNG or WebP image") from None
    except PermissionError:  # not the picture's fault: it was called corrupt
        raise BadInput(f"{label} cannot be read: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        why = "truncated" if "truncated" in str(exc) or isinstance(exc, EOFError) else "corrupt"
        raise BadInput(f"{label} cannot be decoded ({why}): {' '.join(str(exc).split())[:120]}") from None


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Center-crop to a square and resize to size x size (Lanczos): what the style predictor expects."""
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side]))
    return np.array(crop.resize((size, size), Image.LANCZOS))


def style_vector(image: np.ndarray):
    """The 100-number style vector of a uint8 RGB picture (on the CPU in float32, so every rank that
    computes it gets the same numbers), as a torch tensor [100]."""
    import torch

    from stylebatch.arbitrary import PREDICT_SIZE, load_predictor

    x = torch.from_numpy(square(image, PREDICT_SIZE)).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        return load_predictor()(x)[0].clone()
