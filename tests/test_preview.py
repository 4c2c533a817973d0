"""`stylebatch preview`: the sheet's layout (one labelled tile per style), style choice, frame choice."""

from __future__ import annotations

import numpy as np
import pytest
from clips import decode_rgb, error_lines, make_clip, stylebatch
from PIL import Image

from stylebatch.errors import BadInput
from stylebatch.models import list_styles, load_stylizer
from stylebatch.preview import LABEL_HEIGHT, chosen_styles, draw_label, fit, fitted_label, grab_frame, grid, parse_time

STARRY = "/usr/share/doc/opencv-doc/examples/data/starry_night.jpg"
BUILTINS = [s.name for s in list_styles()]


def test_sheet_has_one_labelled_tile_per_style_in_order(tmp_path):
    photo = tmp_path / "photo.png"
    Image.open("/usr/share/doc/opencv-doc/examples/data/fruits.jpg").save(photo)
    sheet_path = tmp_path / "sheet.png"
    result = stylebatch("preview", photo, "-o", sheet_path, "--style", f"ink-wash,{STARRY}", "--tile", "64",
                        "--columns", "2")
    assert result.returncode == 0, result.stderr
    sheet = np.asarray(Image.open(sheet_path).convert("RGB")).astype(np.int16)
    small = fit(np.asarray(Image.open(photo).convert("RGB")), 64)
    h, w = small.shape[:2]
    assert max(h, w) == 64
    size, boxes = grid(3, w, h, columns=2)
    assert sheet.shape == (size[1], size[0], 3) and len(boxes) == 3
    expected = [("original", small)] + [(s.name, s(small[None])[0]) for s in
                                        (load_stylizer("ink-wash", device="cpu", precision="fp32"), load_stylizer(STARRY, device="cpu"))]
    assert [name for name, _ in expected] == ["original", "ink-wash", "starry_night.jpg"]
    for (name, tile), (x, y) in zip(expected, boxes):
        assert np.abs(sheet[y:y + h, x:x + w] - tile).max() <= 1, name
        label = sheet[y + h:y + h + LABEL_HEIGHT, x:x + w]
        np.testing.assert_array_equal(label, np.asarray(draw_label(name, w)))  # the style's own name
        assert (label < 128).any()  # text is drawn
    assert {tuple(b) for b in boxes} == {(boxes[0][0], boxes[0][1]), (boxes[1][0], boxes[0][1]),
                                         (boxes[0][0], boxes[2][1])}  # 2 columns, 2 rows


def test_a_pth_tile_on_the_cpu_is_painted_once_in_fp32_without_timing_bf16(user_pth, monkeypatch):
    """On a CPU where auto chooses bf16 for a .pth (stood in for here), a preview's one small tile was
    timed in both arithmetics first (about a second) and painted twice (bf16, then fp32 to check it):
    the preview paints it once, in fp32."""
    from stylebatch import models, preview

    monkeypatch.setattr(models, "cpu_bf16_speedup", lambda network: pytest.fail("bf16 timed for a preview"))
    calls = []
    paint = models.Stylizer._in_batches
    monkeypatch.setattr(models.Stylizer, "_in_batches", lambda self, f: calls.append(self.arithmetic) or paint(self, f))
    frame = np.asarray(Image.open("/usr/share/doc/opencv-doc/examples/data/fruits.jpg").convert("RGB"))
    sheet = np.asarray(preview.render(frame, [str(user_pth[0])], 64, "cpu"))
    assert calls == ["fp32"]
    small = fit(frame, 64)
    exact = load_stylizer(str(user_pth[0]), device="cpu", precision="fp32")(small[None])[0]
    h, w = small.shape[:2]
    x, y = grid(2, w, h)[1][1]  # the second tile's corner
    np.testing.assert_array_equal(sheet[y:y + h, x:x + w], exact)


@pytest.mark.parametrize("values, everything, expected", [
    (None, False, BUILTINS),
    (["ink-wash,starry.jpg"], False, ["ink-wash", "starry.jpg"]),
    (["starry.jpg:0.7,lavender-gold:0.3"], False, ["starry.jpg:0.7,lavender-gold:0.3"]),
    # weights in any form run's parser takes (contract._WEIGHT) make one blend, as `run` paints it
    (["ink-wash:1e3,lavender-gold:1e3"], False, ["ink-wash:1e3,lavender-gold:1e3"]),
    (["ink-wash:+1,lavender-gold:2E-1"], False, ["ink-wash:+1,lavender-gold:2E-1"]),
    (["ink-wash:1, lavender-gold"], False, ["ink-wash:1, lavender-gold"]),
    (["12:30.jpg,ink-wash"], False, ["12:30.jpg", "ink-wash"]),  # a file's name with a colon, no weight
    (["a.jpg", "b.pth"], True, BUILTINS + ["a.jpg", "b.pth"]),
])
def test_chosen_styles(values, everything, expected):
    assert chosen_styles(values, everything) == expected


@pytest.mark.parametrize("text, seconds", [("12", 12), ("12.5", 12.5), ("1:02", 62), ("00:00:12", 12),
                                           ("1:00:00.5", 3600.5)])
def test_times(text, seconds):
    assert parse_time(text) == seconds


def test_frame_at_a_time_and_bad_times(tmp_path):
    video = make_clip(tmp_path / "colors.mp4", frames=12, fps=10, index_colors=True)
    frames = decode_rgb(video)
    for at, index in ((0.0, 0), (0.3, 3), (0.75, 7)):
        got = grab_frame(video, "colors.mp4", at)
        assert np.abs(got.astype(np.int16) - frames[index]).mean() < 3, at
    with pytest.raises(BadInput, match="past the end"):
        grab_frame(video, "colors.mp4", 30.0)
    result = stylebatch("preview", video, "-o", tmp_path / "s.png", "--at", "soon")
    assert result.returncode == 2 and len(error_lines(result)) == 1 and "--at 'soon'" in result.stderr
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("size, sar, rotate, shown", [
    ((72, 48), "32/27", 0, (85, 48)),  # a DVD's 720x480 at 16:9, shrunk
    ((72, 48), "8/9", 0, (64, 48)),  # 4:3 from 3:2 storage
    ((72, 48), "1/1", 0, (72, 48)),
    ((72, 48), "32/27", 90, (48, 85)),  # the pixels' shape is the stored frame's: turned with it
])
def test_a_frame_of_non_square_pixels_is_shown_at_its_display_shape(tmp_path, size, sar, rotate, shown):
    """A DVD frame (720x480 stored, 16:9 on screen) was shown as its stored 3:2, squeezed."""
    video = make_clip(tmp_path / "v.mp4", size=size, frames=3, rotate=rotate, extra=("-vf", f"setsar={sar}"))
    got = grab_frame(video, "v.mp4", None)
    assert (got.shape[1], got.shape[0]) == shown


@pytest.mark.parametrize("case, args, words", [
    # a folder was "input not found" (an empty one) or "not a readable video"
    ("a folder", ["folder"], ["input is a folder, not a video or a picture", "folder"]),
    ("an empty folder", ["empty"], ["input is a folder, not a video or a picture", "empty"]),
    ("--style with no name in it", ["p.png", "--style", ","], ["--style ',' names no style"]),  # was all 26
    ("--at on a picture", ["p.png", "--at", "3"], ["--at picks a video's frame", "is a picture"]),  # was ignored
])
def test_a_preview_that_cannot_mean_anything_is_refused_in_one_line(tmp_path, case, args, words):
    _photo(tmp_path / "p.png")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "clip.mp4").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    result = stylebatch("preview", *args, "-o", "s.png", "--tile", "32", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1 and all(w in error_lines(result)[0] for w in words), result.stderr
    assert not (tmp_path / "s.png").exists()


def _png_with_an_empty_animation_chunk(path) -> None:
    """A PNG whose acTL chunk claims 0 frames: Pillow reads the still picture and warns ("Invalid APNG")."""
    import struct
    import zlib

    Image.open("/usr/share/doc/opencv-doc/examples/data/fruits.jpg").convert("RGB").resize((96, 80)).save(path)
    data = path.read_bytes()
    body = struct.pack(">II", 0, 0)
    chunk = struct.pack(">I", len(body)) + b"acTL" + body + struct.pack(">I", zlib.crc32(b"acTL" + body))
    path.write_bytes(data[:33] + chunk + data[33:])  # after the signature and IHDR


def test_a_picture_pillow_warns_about_is_used_without_its_warning(tmp_path):
    """As the picture to preview and as the painting: Pillow's two-line UserWarning was on stderr."""
    odd = tmp_path / "odd.png"
    _png_with_an_empty_animation_chunk(odd)
    result = stylebatch("preview", odd, "-o", tmp_path / "sheet.png", "--style", f"ink-wash,{odd}", "--tile", "48")
    assert result.returncode == 0, result.stderr
    assert all(line.startswith("stylebatch: ") for line in result.stderr.splitlines()), result.stderr
    assert "APNG" not in result.stderr and Image.open(tmp_path / "sheet.png").size[0] > 48


def _photo(path):
    Image.open("/usr/share/doc/opencv-doc/examples/data/fruits.jpg").convert("RGB").resize((96, 80)).save(path)
    return path


@pytest.mark.parametrize("case", ["png", "jpg", "symlink", "hard-link", "other-spelling", "style-of-a-video"])
def test_a_sheet_that_would_replace_the_input_or_a_painting_is_refused_and_both_stay_as_they_were(tmp_path, case):
    """`preview p.png -o p.png` wrote the sheet over the photo (exit 0), and `preview clip.mp4 -o sty.png
    --style sty.png` over the painting: refused before anything is read, as `run` refuses its input as
    its output (one line, exit 2), also through a symlink, a hard link or another spelling of the path."""
    (tmp_path / "sub").mkdir()
    photo = _photo(tmp_path / ("p.jpg" if case == "jpg" else "p.png"))
    source, style, output, what = photo, "ink-wash", photo, "the input"
    if case == "symlink":
        output = tmp_path / "link.png"
        output.symlink_to(photo)
    elif case == "hard-link":
        output = tmp_path / "link.png"
        output.hardlink_to(photo)
    elif case == "other-spelling":
        output = tmp_path / "sub" / ".." / "p.png"
    elif case == "style-of-a-video":
        source, style, what = make_clip(tmp_path / "clip.mp4", frames=4, fps=10), str(photo), f"the style file {photo}"
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.is_symlink()}
    result = stylebatch("preview", source, "-o", output, "--style", style, "--tile", "32")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert error_lines(result) == [f"stylebatch: error: the output {output} is {what}: give another output"], \
        result.stderr
    assert result.stdout == ""
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.is_symlink()} == kept
    links = ["link.png"] if case == "symlink" else []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "sub", *links])  # no sheet, no .part
    assert case != "symlink" or output.resolve() == photo  # the link itself is not replaced either


@pytest.mark.parametrize("output, message", [
    ("folder.jpg", "folder.jpg is a folder, not a file"),  # was a traceback (IsADirectoryError), exit 1, a .part left
    ("nowhere/s.png", "the folder {tmp}/nowhere does not exist"),
    ("p.png/s.png", "{tmp}/p.png is a file, not a folder"),
])
def test_a_sheet_that_cannot_be_written_is_refused_in_one_line_and_leaves_nothing(tmp_path, output, message):
    """`preview p.png -o existing_folder.jpg` painted the sheet, then failed renaming its part file onto
    the folder: now the output is checked as `run` checks its own, before anything is read or painted."""
    photo = _photo(tmp_path / "p.png")
    (tmp_path / "folder.jpg").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = stylebatch("preview", photo, "-o", tmp_path / output, "--style", "ink-wash", "--tile", "32")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1 and message.format(tmp=tmp_path) in error_lines(result)[0], result.stderr
    assert result.stdout == "" and sorted(p.name for p in tmp_path.rglob("*")) == before  # no sheet, no .part


def test_columns_beyond_the_number_of_tiles_are_capped_at_it(tmp_path):
    """--columns 50 with 2 tiles made a 50-column sheet (13106x222 at --tile 256), almost all empty."""
    size, boxes = grid(2, 256, 144, columns=50)
    assert (size, boxes) == grid(2, 256, 144, columns=2)
    photo = _photo(tmp_path / "photo.png")
    result = stylebatch("preview", photo, "-o", tmp_path / "sheet.png", "--style", "ink-wash", "--tile", "48",
                        "--columns", "50")
    assert result.returncode == 0, result.stderr
    tile_w, tile_h = fit(np.asarray(Image.open(photo)), 48).shape[1::-1]
    assert Image.open(tmp_path / "sheet.png").size == grid(2, tile_w, tile_h, columns=2)[0]
    assert "at most the number of tiles" in " ".join(stylebatch("preview", "--help").stdout.split())


def test_an_input_photo_with_too_many_pixels_is_named_as_the_input_not_a_style_image(tmp_path):
    """An 8200x8200 photo to preview was said to have more megapixels than "a style image may have"."""
    huge = tmp_path / "huge.jpg"
    Image.new("L", (8200, 8200)).save(huge)
    result = stylebatch("preview", huge, "-o", tmp_path / "sheet.png", "--style", "ink-wash")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert error_lines(result) == [f"stylebatch: error: {huge} is 8200x8200 pixels, more than the 64 megapixels "
                                   "an input picture may have; scale it down"], result.stderr
    assert "style image" not in result.stderr and not (tmp_path / "sheet.png").exists()


@pytest.mark.parametrize("label, room, shown", [
    ("lavender-gold", 20, "lavender-gold"),  # fits: as it is
    ("lavender-gold", 10, "lavender-…"),
    ("lavender-gold.jpg", 12, "lavende….jpg"),  # a file keeps its extension
    ("Starry Night.webp", 10, "Star….webp"),
    ("candy.pth:0.5,lavender-gold:0.5", 12, "candy.pth:0…"),  # a blend loses its end
    ("starry.jpg:0.7", 10, "starry.jp…"),  # a weight is no extension
])
def test_a_label_too_long_for_its_tile_loses_the_end_of_its_name_not_its_extension(label, room, shown):
    assert fitted_label(label, lambda text: len(text) <= room) == shown


def test_a_painting_named_like_a_built_in_style_is_labelled_apart_from_it_on_a_small_tile():
    painting, built_in = (np.asarray(draw_label(name, 64)) for name in ("lavender-gold.jpg", "lavender-gold"))
    assert (painting != built_in).any()
