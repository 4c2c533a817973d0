"""Checks on a user's weights file that run before and after torch unpacks it.

A `.pth` is a zip archive: its records can be deflated, so a few megabytes can claim gigabytes.
`check_archive` reads only the file's own structure, without torch (so `stylebatch run`'s launcher
refuses a bad file before it reads the input): it refuses a file that is no checkpoint at all, a zip
that is truncated or damaged (its directory or a record's checksum), and one whose records declare far
more bytes than a TransformerNet holds, before torch allocates anything. `load_state` is the one place a
user's file goes through `torch.load`; `check_finite` refuses weights with NaN or infinity, which
would paint every frame black or noise.
"""

from __future__ import annotations

import pickle
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from stylebatch.errors import StylebatchError
from stylebatch.logs import counted

if TYPE_CHECKING:
    import torch

# A fast_neural_style TransformerNet has 1.7 M parameters: 6.7 MB as float32, 13 MB as float64.
MAX_UNPACKED_BYTES = 64 * 1024 * 1024

NOT_A_CHECKPOINT = "not a PyTorch checkpoint, or corrupt or truncated"

# torch.save's legacy (pre-zip) format is a pickle stream that opens with torch's magic number, pickled
# with the protocol it was saved with (2 by default; any of 2-5); its older tar format holds a "pickle"
# member; its zip format a "<name>/data.pkl" record.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_HEADS = tuple(pickle.dumps(_LEGACY_MAGIC, protocol=protocol)[:-1] for protocol in range(2, 6))  # less STOP
# Pictures by their first bytes: (format, its suffix, (offset, bytes) pairs it starts with); a painting
# given under another name (a .gif, a PNG saved as .pth) is said to be one, not "not a PyTorch checkpoint"
_PICTURES = (("JPEG", ".jpg", ((0, b"\xff\xd8\xff"),)), ("PNG", ".png", ((0, b"\x89PNG\r\n\x1a\n"),)),
             ("WebP", ".webp", ((0, b"RIFF"), (8, b"WEBP"))), ("GIF", ".gif", ((0, b"GIF8"),)),
             ("BMP", ".bmp", ((0, b"BM"), (6, b"\x00\x00\x00\x00"))), ("TIFF", ".tif", ((0, b"II*\x00"),)),
             ("TIFF", ".tif", ((0, b"MM\x00*"),)), ("AVIF", ".avif", ((4, b"ftypavif"),)),
             ("HEIF", ".heic", ((4, b"ftypheic"),)), ("HEIF", ".heic", ((4, b"ftypmif1"),)))
_HEAD_BYTES = max(*map(len, _LEGACY_HEADS), *(at + len(magic) for *_, marks in _PICTURES for at, magic in marks))


def picture_format(head: bytes) -> tuple[str, str] | None:
    """The picture format a file's first bytes declare and its usual suffix (("GIF", ".gif")), or None."""
    return next(((name, suffix) for name, suffix, marks in _PICTURES
                 if all(head[at:at + len(magic)] == magic for at, magic in marks)), None)


def not_a_checkpoint(head: bytes) -> str:
    """Why a file whose first bytes are `head` cannot load as weights: NOT_A_CHECKPOINT, or that it is
    a picture, and what to do (a painting is told from weights by its name: .jpg, .jpeg, .png, .webp)."""
    from stylebatch.contract import STYLE_IMAGE_SUFFIXES

    picture = picture_format(head)
    if picture is None:
        return NOT_A_CHECKPOINT
    kind, suffix = picture
    if suffix in STYLE_IMAGE_SUFFIXES:
        return f"it is a {kind} picture, not a PyTorch checkpoint: to paint in its style, rename it to end in {suffix}"
    return (f"it is a {kind} picture, not a PyTorch checkpoint: paintings are read from JPEG, PNG or WebP "
            f"files ({', '.join(STYLE_IMAGE_SUFFIXES)}); convert it to one")


def check_archive(path: Path, what: str, limit: int = MAX_UNPACKED_BYTES) -> None:
    """Refuse what torch.load could not load or should not try, reading no more than the file: not a
    zip with torch's data.pkl (torch.save's format), nor a legacy pickle stream that opens with torch's
    magic number, nor a tar with torch's "pickle" member; a zip whose directory does not read (a
    truncated download) or whose records fail their CRC or do not inflate (damaged bytes); contents
    that would unpack to more than `limit` bytes (a zip's declared record sizes are summed before any
    is read; any other file counts as it is). `what` names the file in the error ("style file x.pth")."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                records = archive.infolist()
                if not any(info.filename.rsplit("/", 1)[-1] == "data.pkl" for info in records):
                    raise StylebatchError(f"cannot load {what}: {NOT_A_CHECKPOINT} (a zip without torch's data.pkl)")
                _check_size(sum(max(0, info.file_size) for info in records), what, limit)
                damaged = _damaged_record(archive, records)  # reads (and inflates) them: after the size check
            if damaged is not None:
                raise StylebatchError(f"cannot load {what}: it is damaged (record {damaged} fails its checksum)")
            return
        head = _head(path)
        if not (head.startswith(_LEGACY_HEADS) or _torch_tar(path)):
            raise StylebatchError(f"cannot load {what}: {not_a_checkpoint(head)}")
        _check_size(path.stat().st_size, what, limit)
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, ValueError, NotImplementedError) as exc:
        raise StylebatchError(f"cannot load {what}: {NOT_A_CHECKPOINT} ({type(exc).__name__})") from None


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(_HEAD_BYTES)
    except OSError:
        return b""


def _torch_tar(path: Path) -> bool:
    """Whether `path` is a tar archive with torch's "pickle" member (tarfile.is_tarfile alone takes a
    file of zero bytes for one)."""
    if not tarfile.is_tarfile(path):
        return False
    with tarfile.open(path) as archive:
        return "pickle" in archive.getnames()


def _damaged_record(archive: zipfile.ZipFile, records: list[zipfile.ZipInfo]) -> str | None:
    """The first record whose bytes fail its CRC-32 (or do not even inflate), or None. A record whose
    stored CRC is 0 is not checked: torch.save writes 0 for every record after
    `torch.serialization.set_crc32_options(False)`, and torch.load reads such a file."""
    for info in records:
        if info.CRC == 0 or info.is_dir():
            continue
        try:
            with archive.open(info) as record:
                while record.read(1 << 20):  # ZipExtFile checks the CRC at the end of the record
                    pass
        except Exception:  # noqa: BLE001 - bad CRC, zlib/lzma errors, an encrypted record: all damage here
            return info.filename
    return None


def _check_size(total: int, what: str, limit: int) -> None:
    if total > limit:
        raise StylebatchError(
            f"{what} would unpack to {total / 2**20:,.0f} MiB, far more than a fast_neural_style "
            f"TransformerNet ({limit // 2**20} MiB at most): refusing to load it")


def plain_real(tensor: object) -> bool:
    """A dense tensor of real numbers at least 16 bits wide (or integers): what weights are. Complex,
    sparse, quantized and 8-bit float tensors are not (torch would warn, fail or lose the imaginary part)."""
    import torch

    return (isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided and not tensor.is_complex()
            and not tensor.is_quantized and not (tensor.is_floating_point() and tensor.element_size() < 2))


def check_finite(state: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Refuse weights that are not plain real tensors (plain_real) or hold NaN or infinity; `path`:
    the style file as its messages name it."""
    import torch

    for key, tensor in state.items():
        if not plain_real(tensor):
            raise StylebatchError(f"style file {path} holds {key} as a {tensor.dtype} tensor ({tensor.layout}): "
                                  "weights are dense tensors of real numbers")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise StylebatchError(f"style file {path} has {counted(bad, 'weight')} that are not finite (NaN or "
                                  f"infinity) in {key}: the training run diverged; use another checkpoint")


def load_state(path: Path, what: str) -> object:
    """`torch.load` of a user's file (weights only, onto the CPU): whatever torch raises or warns on a
    foreign, corrupt or truncated file (pickle, zip, EOF errors; a "pickle protocol" warning when its
    first bytes happen to look like a pickle) becomes one line naming `what` (e.g. "style file x.pth")."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warnings about the file are part of the failure, or noise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways, with pages of text
        why = ("it holds a pickled Python object, not a state dict (save model.state_dict())"
               if "Unsupported global" in str(exc) else not_a_checkpoint(_head(path)))
        raise StylebatchError(f"cannot load {what}: {why}") from None
