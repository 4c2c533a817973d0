"""A painting as the style: bad style images, blends, strength, keep-colors, resume, and a real clip."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from clips import audio_md5, count_frames, decode_rgb, error_lines, frame_pts, stylebatch
from PIL import Image

from stylebatch.errors import BadInput, StylebatchError
from stylebatch.models import load_stylizer, parse_style
from stylebatch.styles import style_label
from stylebatch.paintings import read_style_image

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
STARRY = DATA / "starry_night.jpg"


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose pixel data is a few bytes: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def png_cut_short(width: int, height: int, rows: int) -> bytes:
    """A PNG whose pixel data ends after `rows` rows and has no end marker (IEND): a crafted or cut file
    that Pillow decoded without a word, the missing rows black."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    pixels = b"".join(b"\0" + bytes([40 * r % 256]) * (width * 3) for r in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(pixels)))


def make_bad(kind: str, folder: Path) -> Path:
    path = folder / {"gif": "anim.gif", "text": "notes.jpg", "bomb": "bomb.png", "big": "huge.png",
                     "truncated-png": "cut.png", "scan": "scan.png", "cut-rows": "rows.png", "tiny": "tiny.png", "empty": "empty.webp"}.get(kind, f"{kind}.jpg")
    if kind == "text":
        path.write_text("not a picture\n" * 20)
    elif kind == "truncated":
        path.write_bytes(STARRY.read_bytes()[:STARRY.stat().st_size // 2])
    elif kind == "truncated-png":
        Image.open(STARRY).save(folder / "whole.png")
        data = (folder / "whole.png").read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "cut-rows":
        path.write_bytes(png_cut_short(400, 400, 10))
    elif kind == "tiny":
        Image.new("RGB", (1, 1), "red").save(path)
    elif kind == "bomb":
        path.write_bytes(png_header(30000, 30000))
    elif kind == "big":
        path.write_bytes(png_header(9000, 9000))  # under Pillow's own bomb limit, over ours
    elif kind == "scan":
        path.write_bytes(png_header(12000, 8000))  # over Pillow's bomb warning (89 MP), under its error
    elif kind == "gif":
        Image.new("RGB", (64, 64), "blue").save(path)
    elif kind == "empty":
        path.write_bytes(b"")
    return path


BAD_IMAGES = [
    ("text", "not a JPEG, PNG or WebP image"),
    ("gif", "not a JPEG, PNG or WebP image"),
    ("empty", "not a JPEG, PNG or WebP image"),
    ("truncated", "truncated"),
    ("truncated-png", "cannot be decoded"),
    ("cut-rows", "cannot be decoded (truncated)"),
    ("tiny", "1x1 pixels"),
    ("bomb", "decompression bomb"),
    ("big", "9000x9000 pixels, more than the 64 megapixels"),
    ("scan", "12000x8000 pixels, more than the 64 megapixels"),  # was "a decompression bomb?", no size
    ("missing", "not found"),
]


@pytest.mark.parametrize("kind, problem", BAD_IMAGES)
def test_every_bad_style_image_is_one_line_naming_file_and_problem(tmp_path, kind, problem):
    path = make_bad(kind, tmp_path)
    with pytest.raises(BadInput) as info:
        read_style_image(path)
    message = str(info.value)
    assert path.name in message and problem in message and "\n" not in message, message


@pytest.mark.parametrize("kind", ["bomb", "truncated", "tiny"])
def test_bad_style_image_stops_a_run_before_any_output(tmp_path, kind):
    """Through the real CLI: exit code 2, exactly one error line, no traceback, no output, no work dir."""
    video = tmp_path / "in.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-frames:v", "3",
                    "-pix_fmt", "yuv420p", str(video)], check=True)
    out = tmp_path / "out" / "result.mp4"
    out.parent.mkdir()
    result = stylebatch("run", video, "-o", out, "--style", make_bad(kind, tmp_path), "--work", tmp_path / "w")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1 and make_bad(kind, tmp_path).name in error_lines(result)[0]
    assert list(out.parent.iterdir()) == [] and not (tmp_path / "w" / "parts").exists()


@pytest.mark.parametrize("kind, problem", [(k, p) for k, p in BAD_IMAGES
                                           if not k.startswith("truncated") and k != "gif"])  # (.gif: no painting)
def test_a_style_image_bad_in_its_header_is_refused_before_the_input_is_read(tmp_path, kind, problem):
    """A text file named .jpg (and every picture whose header says it cannot work: not a JPEG, PNG or
    WebP, too small, too many pixels) was found only once preprocess had read the whole input and the
    ranks had started, progress lines first; a bad .pth was refused before anything. Now both are: one
    line, exit code 2, no work dir. (A JPEG cut short: the test of that below.)"""
    video = tmp_path / "in.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-frames:v", "3",
                    "-pix_fmt", "yuv420p", str(video)], check=True)
    style = make_bad(kind, tmp_path)
    result = stylebatch("run", video, "-o", tmp_path / "out.mp4", "--style", style, "--work", tmp_path / "w")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()  # no "preprocessed ...", no rank's line
    assert line.startswith("stylebatch: error: ") and style.name in line and problem in line, line
    assert not (tmp_path / "w").exists() and not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("spec, kinds, weights, label", [
    ("starry.jpg", ["painting"], [1.0], "starry.jpg"),
    ("az://styles/Starry Night.WEBP", ["painting"], [1.0], "Starry Night.WEBP"),
    ("https://acct.blob.core.windows.net/styles/Starry%20Night.jpg?sv=1&sig=x#top", ["painting"], [1.0],
     "Starry Night.jpg"),  # a URI's name decoded, as the ranks name the file they fetch
    ("/styles/evil\nstylebatch: error: forged.jpg", ["painting"], [1.0], "evil\\nstylebatch: error: forged.jpg"),
    ("https://h/s/a%0Ab.jpg", ["painting"], [1.0], "a\\nb.jpg"),  # a newline is escaped, never a log line of its own
    ("https://acct.blob.core.windows.net/styles/s.png?sv=1&sig=x:3,lavender-gold:1", ["painting", "builtin"],
     [0.75, 0.25], "s.png:0.75,lavender-gold:0.25"),
    ("starry.jpg:0.7,lavender-gold:0.3", ["painting", "builtin"], [0.7, 0.3], "starry.jpg:0.7,lavender-gold:0.3"),
    ("a.jpg:1,b.png:1,3", ["painting", "painting", "builtin"], [1 / 3] * 3, "a.jpg:0.333,b.png:0.333,tangled-ribbons:0.333"),
    ("candy.pth:2,12:2", ["weights", "builtin"], [0.5, 0.5], "candy.pth:0.5,lavender-gold:0.5"),
    # weights are relative at any scale: a sum of huge ones overflowed to inf, every share to 0 (black frames)
    ("ink-wash:1e308,lavender-gold:1e308", ["builtin", "builtin"], [0.5, 0.5], "ink-wash:0.5,lavender-gold:0.5"),
    ("starry.jpg:1.7e308,ink-wash:0.85e308", ["painting", "builtin"], [2 / 3, 1 / 3], "starry.jpg:0.667,ink-wash:0.333"),
    ("ink-wash:3e-320,lavender-gold:1e-320", ["builtin", "builtin"], [0.75, 0.25], "ink-wash:0.75,lavender-gold:0.25"),
    # a painting or weights file named like a built-in style is not shown as that style
    ("/styles/lavender-gold.jpg", ["painting"], [1.0], "lavender-gold.jpg"),
    ("ink-wash.pth", ["weights"], [1.0], "ink-wash.pth"),
])
def test_style_specs_name_paintings_weights_and_builtins(spec, kinds, weights, label):
    """Each part's kind and weight, and the style as logs show it (a file by its name, extension
    included; a URI's query, which may hold a SAS, never)."""
    parts = parse_style(spec)
    assert [p.kind for p in parts] == kinds
    np.testing.assert_allclose([p.weight for p in parts], weights)
    assert style_label(parts) == label


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.array(Image.open(DATA / "fruits.jpg").convert("RGB").resize((96, 72)))[None]


def test_strength_blend_and_keep_colors_with_a_painting(photo):
    full = load_stylizer(str(STARRY), device="cpu")(photo).astype(np.float32)
    assert np.abs(full - photo).mean() > 25
    # strength moves the style vector towards the photo's own: a smaller change than the painting's
    half = load_stylizer(str(STARRY), device="cpu", strength=0.5, own_frame=photo[0])(photo).astype(np.float32)
    assert 5 < np.abs(half - photo).mean() < np.abs(full - photo).mean()
    # a blend across the two networks mixes their pictures by weight (fp32 both: on a CPU where bf16
    # pays, auto paints lavender-gold alone in bf16 but a blend with a painting in fp32)
    builtin = load_stylizer("lavender-gold", device="cpu", precision="fp32")(photo).astype(np.float32)
    mixed = load_stylizer(f"{STARRY}:0.7,lavender-gold:0.3", device="cpu", precision="fp32")(photo).astype(np.float32)
    assert np.abs(mixed - (0.7 * full + 0.3 * builtin)).max() <= 1
    # keep-colors: the photo's chroma, the painting's brightness
    kept = load_stylizer(str(STARRY), device="cpu", keep_colors=True)(photo).astype(np.float32)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    chroma = lambda x: x - (x @ luma)[..., None]  # noqa: E731
    assert np.abs(chroma(kept) - chroma(photo.astype(np.float32))).mean() < 3
    assert np.abs(kept @ luma - full @ luma).mean() < 3
    assert np.abs(chroma(full) - chroma(photo.astype(np.float32))).mean() > 15


def test_resume_refuses_another_painting_with_the_same_name(tmp_path):
    from stylebatch.storage import location
    from stylebatch.stylize import check_settings, settings_record

    work = location(tmp_path / "work")
    (tmp_path / "work").mkdir()
    painting = tmp_path / "style.jpg"
    shutil.copy(STARRY, painting)
    first = settings_record(str(painting), 1.0, None)
    check_settings(work, first, [])
    assert json.loads((tmp_path / "work" / "stylize.json").read_bytes())["style"].startswith("sha256:")
    check_settings(work, settings_record(str(painting), 1.0, None), ["000000000-000000010.mkv"])  # same bytes: resumes
    Image.open(DATA / "fruits.jpg").save(painting)
    with pytest.raises(StylebatchError, match="style.jpg"):
        check_settings(work, settings_record(str(painting), 1.0, None), ["000000000-000000010.mkv"])
    with pytest.raises(StylebatchError, match="own colours"):
        check_settings(work, settings_record(str(STARRY), 1.0, None, keep_colors=True), ["000000000-000000010.mkv"])


def colour_histogram(frames: np.ndarray) -> np.ndarray:
    """A normalized 3-D RGB histogram with 6 bins per channel."""
    bins = (frames.reshape(-1, 3) // 43).astype(np.int64)
    counts = np.bincount(bins[:, 0] * 36 + bins[:, 1] * 6 + bins[:, 2], minlength=216).astype(np.float64)
    return counts / counts.sum()


def test_painting_on_a_real_clip_moves_its_colours_toward_the_painting_and_keeps_the_video_contract(tmp_path):
    """A real film clip (opencv-doc's Megamind.avi, 10 frames) with a soundtrack, painted like Starry Night."""
    video, out = tmp_path / "megamind.mp4", tmp_path / "starry.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(DATA / "Megamind.avi"), "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=48000:duration=1", "-map", "0:v", "-map", "1:a",
                    "-frames:v", "10", "-vf", "scale=128:-2", "-c:v", "libx264", "-crf", "12", "-pix_fmt",
                    "yuv420p", "-c:a", "aac", "-shortest", str(video)], check=True)
    result = stylebatch("run", video, "-o", out, "--style", STARRY, "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert count_frames(out) == count_frames(video) == 10
    assert frame_pts(out) == frame_pts(video)
    assert audio_md5(out, 0) == audio_md5(video, 0)
    painting = colour_histogram(np.asarray(Image.open(STARRY).convert("RGB")))
    before = np.abs(colour_histogram(decode_rgb(video)) - painting).sum()
    after = np.abs(colour_histogram(decode_rgb(out)) - painting).sum()
    assert after < 0.6 * before, (before, after)


def test_a_painting_whose_file_name_holds_a_newline_forges_no_log_line(tmp_path):
    """The error line is a contract callers parse: a style file named "evil\\nstylebatch: error: forged.jpg"
    made `run` print a line "stylebatch: error: forged.jpg" in a run that succeeded (exit 0)."""
    src = tmp_path / "in.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=30", "-frames:v", "4",
                    "-pix_fmt", "yuv420p", str(src)], check=True)
    painting = tmp_path / "evil\nstylebatch: error: forged.jpg"
    shutil.copy(STARRY, painting)
    result = stylebatch("run", src, "-o", tmp_path / "out.mp4", "--style", painting, "--max-side", "32")
    assert result.returncode == 0, result.stderr
    assert all(line.startswith("stylebatch: ") for line in result.stderr.splitlines()), result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("stylebatch: error:")], result.stderr
    assert "style evil\\nstylebatch: error: forged.jpg" in result.stderr  # named, escaped, on its own line
    assert count_frames(tmp_path / "out.mp4") == 4


def test_a_16_bit_grayscale_painting_is_read_at_its_own_brightness_not_white(tmp_path):
    """A 16-bit grayscale PNG (a scan, an export from a raw editor) opens as Pillow mode I;16, whose
    convert("RGB") clips every value over 255 to white: a dark-to-light ramp was read as a white picture
    (mean 254 of 255) and the video painted with the style of a blank page, without a word."""
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    path = tmp_path / "scan.png"
    Image.fromarray(ramp).save(path)  # a 16-bit grayscale PNG
    with Image.open(path) as img:
        assert img.mode.startswith("I"), img.mode
    picture = read_style_image(path)
    assert picture.shape == (48, 64, 3) and picture.dtype == np.uint8
    expected = np.rint(ramp / 257).astype(np.uint8)
    assert np.abs(picture[..., 0].astype(int) - expected).max() <= 1
    assert (picture[..., 0] == picture[..., 1]).all() and (picture[..., 1] == picture[..., 2]).all()


@pytest.mark.parametrize("mode, save", [
    ("RGB", {"transparency": (0, 0, 0)}),  # an RGB PNG's colour key (tRNS): its black read as black
    ("L", {"transparency": 0}),  # a grayscale one's
    ("P", {"transparency": 0}),
    ("RGBA", {}),
])
def test_transparent_pixels_of_a_painting_are_read_as_white_whatever_its_mode(tmp_path, mode, save):
    """Transparency is read over white (read_style_image); a PNG whose transparency is a colour key
    (RGB or grayscale with a tRNS chunk) had its transparent pixels read as the key colour, black."""
    opaque = Image.new("RGB", (32, 32), (200, 40, 40))
    picture = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    picture.paste(opaque.crop((0, 0, 32, 16)), (0, 0))
    image = picture.convert("RGB").convert(mode) if mode in ("RGB", "L") else picture
    if mode == "P":
        image = picture.convert("RGB").quantize(4)
        save = {"transparency": image.getpixel((0, 31))}
    image.save(tmp_path / "logo.png", **save)
    got = read_style_image(tmp_path / "logo.png")
    assert (got[20:] == 255).all(), got[20:].reshape(-1, 3)[0]  # the transparent half
    assert (got[:16] != 255).any()  # the opaque half is not


@pytest.mark.parametrize("spec", ["12:30.jpg", "./12:30.jpg", "shots/3:2.png", "12:30.jpg:0.5,ink-wash:0.5"])
def test_a_painting_whose_name_has_a_colon_after_a_built_in_number_or_name_is_that_painting(tmp_path, spec,
                                                                                           monkeypatch):
    """A painting named like a clock time, "12:30.jpg", was read as the built-in style 12 (lavender-gold)
    with the weight "30.jpg": "bad weight '30.jpg' for lavender-gold"; so was "./12:30.jpg", whose "./"
    the path of the style file drops. What follows a colon is a weight only where it is not a file name."""
    from stylebatch.styles import resolve_style

    monkeypatch.chdir(tmp_path)
    for part in parse_style(spec):
        if part.kind == "painting":
            Path(part.ref).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(STARRY, part.ref)
    parts = parse_style(spec)
    assert [p.ref for p in parts if p.kind == "painting"] == [spec.split(",")[0].split(":0.5")[0]]
    resolved = parse_style(resolve_style(spec, tmp_path))  # a path as the ranks are given it
    assert [(p.kind, p.weight) for p in resolved] == [(p.kind, p.weight) for p in parts]


def test_a_painting_with_a_malformed_exif_block_is_read_upright_not_a_traceback(tmp_path):
    """A JPEG whose EXIF has an orientation and a tag of the wrong type (a camera's or an editor's odd
    block; here ColorMap written as text): Pillow's exif_transpose turned it and then failed re-packing
    the EXIF ("struct.error: required argument is not an integer"), a traceback with exit code 1 from
    preview, and from run a rank's traceback and "stylize failed". The picture is fine: it is read,
    turned as its orientation says."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise
    exif[0x010F] = "Canon"
    block = exif.tobytes().replace(b"\x01\x0f\x00\x02", b"\x01\x40\x00\x02")  # the make's tag, now ColorMap's
    path = tmp_path / "odd exif.jpg"
    Image.open(STARRY).convert("RGB").resize((64, 48)).save(path, exif=block)
    picture = read_style_image(path)
    assert picture.shape == (64, 48, 3) and picture.dtype == np.uint8


@pytest.mark.parametrize("where", ["local", "blob"])
def test_a_jpeg_painting_cut_short_is_refused_before_the_input_is_read(where, tmp_path, request):
    """docs/painting-styles.md: bad pictures, truncated ones among them, "are refused before anything
    runs". A JPEG cut short passed the header check and was found only once preprocess had read the
    whole input and the ranks had started (progress lines first; in `watch`, once per video). Its data
    is now decoded at 1/8 scale before any work: all of it read, 1/64 of the pixels made; a blob's
    painting is fetched to be checked (it was checked by the ranks only)."""
    video = tmp_path / "in.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-frames:v", "3",
                    "-pix_fmt", "yuv420p", str(video)], check=True)
    style, env = str(make_bad("truncated", tmp_path)), None
    if where == "blob":
        azure_env = request.getfixturevalue("azure_env")
        blobs = azure_env.azurite.service_client().get_container_client(azure_env.container)
        blobs.upload_blob("styles/truncated.jpg", Path(style).read_bytes())
        style, env = f"az://{azure_env.container}/styles/truncated.jpg", azure_env.env
    result = stylebatch("run", video, "-o", tmp_path / "out.mp4", "--style", style, "--work", tmp_path / "w", env=env)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()  # no "preprocessed ...", no rank's line
    shown = style if where == "blob" else "truncated.jpg"  # (the blob by its URI, never its local copy)
    assert line.startswith("stylebatch: error: ") and shown in line and "(truncated)" in line, line
    assert not (tmp_path / "w").exists() and not (tmp_path / "out.mp4").exists()


def test_a_painting_that_cannot_be_read_for_its_permissions_is_said_so_not_called_corrupt(tmp_path, monkeypatch):
    """A painting the user may not read (chmod 000, another user's file) was "style image x.jpg cannot
    be decoded (corrupt): [Errno 13] Permission denied": nothing is wrong with the picture. (open() is
    made to refuse it: the tests may run as root, whom permissions do not stop.)"""
    import builtins

    painting = tmp_path / "locked.jpg"
    shutil.copy(STARRY, painting)
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file) == str(painting):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(BadInput) as info:
        read_style_image(painting)
    assert str(info.value) == "style image locked.jpg cannot be read: permission denied", str(info.value)


# --- '#' and '?' in a local style file's name ---

def _style_files(folder: Path, spec: str, pth: Path) -> None:
    """The local files a --style spec names, made in `folder`: paintings (.jpg) a copy of Starry
    Night, any other file a copy of a .pth."""
    for term in spec.split(","):
        ref = term.rsplit(":", 1)[0] if term.rsplit(":", 1)[-1].replace(".", "").isdigit() else term
        if ref == "lavender-gold":
            continue
        (folder / ref).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(STARRY if ref.endswith(".jpg") else pth, folder / ref)


@pytest.mark.parametrize("spec, kinds, shown", [
    ("mosaic#2.pth", ["weights"], "mosaic#2.pth"),
    ("x#y", ["weights"], "x#y"),  # no extension: a file there is read as weights, its name whole
    ("star?1.jpg", ["painting"], "star?1.jpg"),  # was weights (its suffix looked for before the '?'): refused
    ("art/what?.jpg", ["painting"], "what?.jpg"),
    ("12:what?.jpg", ["painting"], "12:what?.jpg"),  # not built-in 12 weighing "what?.jpg"
    ("a#b.pth:0.5,lavender-gold:0.5", ["weights", "builtin"], "a#b.pth:0.5,lavender-gold:0.5"),
    ("star?1.jpg:0.7,x#y:0.3", ["painting", "weights"], "star?1.jpg:0.7,x#y:0.3"),
])
def test_a_local_style_file_with_a_hash_or_a_question_mark_in_its_name_is_that_file(tmp_path, monkeypatch, user_pth,
                                                                                   spec, kinds, shown):
    """A local path is a file's name whole: '#' and '?' are characters of it, not a URL's fragment or
    query. "star?1.jpg" was read as weights (its suffix was looked for before the '?'): "it is a JPEG
    picture, not a PyTorch checkpoint: ... rename it to end in .jpg"; "x#y" was shown as "x" in errors
    and in the run's summary. Only a URI (az://, https://, file://) has a query (a SAS)."""
    from stylebatch.styles import check_style_files, resolve_style, shown_style

    monkeypatch.chdir(tmp_path)
    _style_files(tmp_path, spec, user_pth[0])
    parts = parse_style(spec)
    assert [p.kind for p in parts] == kinds
    assert shown_style(spec) == spec and style_label(parts) == shown
    check_style_files(spec)  # each file read as the kind it is
    resolved = parse_style(resolve_style(spec, tmp_path / "tmp"))  # as the ranks are given it
    assert [(p.kind, p.weight) for p in resolved] == [(p.kind, p.weight) for p in parts]
    assert [Path(p.ref).name for p in resolved] == [Path(p.ref).name for p in parts]


@pytest.mark.parametrize("spec, words", [
    ("gone#2.pth", "style file not found: gone#2.pth"),
    ("nothing#here", "unknown style 'nothing#here'"),
    ("ink-wash:0.5,gone?.jpg:0.5", "style file not found: gone?.jpg"),
])
def test_a_missing_local_style_file_with_a_hash_or_a_question_mark_is_named_whole(tmp_path, clip, spec, words):
    result = stylebatch("run", clip("in.mp4", size=(64, 48), frames=4), "-o", tmp_path / "out.mp4", "--style", spec)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [line] = error_lines(result)
    assert words in line, line


def test_a_run_with_a_local_style_file_named_with_a_hash_paints_with_that_file_and_names_it_whole(tmp_path, clip,
                                                                                                  user_pth):
    src = clip("in.mp4", size=(64, 48), frames=4)
    shutil.copy(user_pth[0], tmp_path / "x#y")
    shutil.copy(STARRY, tmp_path / "star?1.jpg")
    style = f"{tmp_path / 'x#y'}:0.5,{tmp_path / 'star?1.jpg'}:0.5"
    result = stylebatch("run", src, "-o", tmp_path / "out.mp4", "--style", style, "--max-side", "32",
                        "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "x#y:0.5,star?1.jpg:0.5" in result.stderr, result.stderr
    assert count_frames(tmp_path / "out.mp4") == 4


def test_a_blend_of_huge_weights_paints_the_video_as_the_same_blend_of_small_ones(tmp_path, clip):
    """'a:1e308,b:1e308' is a:1,b:1. The weights' sum overflowed to inf, so every style's share was 0:
    a black video, exit code 0, and a warning naming the style 'ink-wash:0,lavender-gold:0'."""
    src = clip("in.mp4", size=(64, 48), frames=4)
    outputs = {}
    for name, style in (("huge", "ink-wash:1e308,lavender-gold:1e308"), ("small", "ink-wash:1,lavender-gold:1")):
        result = stylebatch("run", src, "-o", tmp_path / f"{name}.mp4", "--style", style, "--workers", "1",
                            "--precision", "fp32", "--work", tmp_path / f"w-{name}")  # (auto's trial may differ)
        assert result.returncode == 0, result.stderr
        assert "flat colour" not in result.stderr and "ink-wash:0.5,lavender-gold:0.5" in result.stderr, result.stderr
        outputs[name] = decode_rgb(tmp_path / f"{name}.mp4")
    assert outputs["huge"].std() > 20  # a painted picture, not black
    np.testing.assert_array_equal(outputs["huge"], outputs["small"])
