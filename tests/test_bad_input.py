"""Bad input through the real CLI: a one-line error, a non-zero exit, no traceback, and nothing at OUTPUT."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from clips import FAST_STYLE, count_frames, error_lines, make_clip, stylebatch


@pytest.fixture()
def place(tmp_path: Path) -> dict:
    """An empty output folder, and a private TMPDIR so leftovers of a failed run can be seen."""
    out_dir, tmp = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmp.mkdir()
    return {"out": out_dir / "result.mp4", "env": dict(os.environ, TMPDIR=str(tmp)), "tmp": tmp}


def assert_failed_cleanly(result: subprocess.CompletedProcess, output: Path, *words: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = error_lines(result)
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word.lower() in errors[0].lower(), errors[0]
    assert sorted(os.listdir(output.parent)) == ([output.name] if output.exists() else [])
    return errors[0]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("good") / "good.mp4", frames=8, audio=("aac",))


def _make(kind: str, folder: Path, good: Path) -> Path:
    path = folder / {"audio-only": "song.m4a"}.get(kind, f"{kind}.mp4")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 50)
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "tiny":  # 8x8: below what the networks can paint (styles.MIN_SIDE)
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=8x8:rate=30", "-frames:v", "3",
                        "-pix_fmt", "yuv420p", str(path)], check=True)
    elif kind == "audio-only":
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=0.5", "-c:a", "aac",
                        str(path)], check=True)
    return path


@pytest.mark.parametrize("kind, words", [
    ("empty", ["empty"]),
    ("text", ["not a readable video"]),
    ("truncated", ["truncated.mp4"]),
    ("audio-only", ["no video stream"]),
    ("missing", ["not found", "missing.mp4"]),
    ("tiny", ["8x8", "16"]),
])
def test_bad_input_file(kind: str, words: list[str], tmp_path: Path, place: dict, good: Path) -> None:
    src = _make(kind, tmp_path, good)
    result = stylebatch("run", src, "-o", place["out"], *FAST_STYLE, env=place["env"])
    assert_failed_cleanly(result, place["out"], *words)
    assert os.listdir(place["tmp"]) == []  # nothing worth resuming: no work dir left behind


@pytest.mark.parametrize("kind, words", [
    ("fifo", ["input is a FIFO (named pipe), not a video", "fifo.mp4"]),
    ("/dev/null", ["input is a device, not a video", "/dev/null"]),
    ("missing", ["input not found", "missing.mp4"]),
])
@pytest.mark.parametrize("work", [False, True])
def test_an_input_that_is_no_file_is_refused_at_once_and_leaves_nothing(kind: str, words: list[str], work: bool,
                                                                        tmp_path: Path, place: dict) -> None:
    """A FIFO as input blocked the run forever before it said anything; /dev/null was "not found"; and
    a --work given with a missing input was left behind, made for nothing."""
    src = Path(kind) if kind.startswith("/") else tmp_path / f"{kind}.mp4"
    if kind == "fifo":
        os.mkfifo(src)
    flags = ["--work", tmp_path / "w"] if work else []
    result = subprocess.run([sys.executable, "-m", "stylebatch", "run", str(src), "-o", str(place["out"]),
                             *FAST_STYLE, *map(str, flags)], capture_output=True, text=True, env=place["env"],
                            timeout=60)  # the FIFO: forever
    assert result.returncode == 2
    assert_failed_cleanly(result, place["out"], *words)
    assert os.listdir(place["tmp"]) == [] and not (tmp_path / "w").exists()


@pytest.mark.parametrize("kind, words", [
    ("text", ["not a readable video"]),
    # refused from its header, before a rank starts (a pod of its own in a cluster): it used to be
    # preprocessed and copied into the work dir, then refused by the stylizer
    ("tiny", ["8x8", "16"]),
])
def test_preprocess_alone_reports_bad_input(kind: str, words: list[str], tmp_path: Path, place: dict,
                                            good: Path) -> None:
    src = _make(kind, tmp_path, good)
    result = stylebatch("preprocess", src, "--work", tmp_path / "w", "-o", place["out"])
    assert_failed_cleanly(result, place["out"], *words)
    assert result.returncode == 2  # retrying cannot help
    assert not (tmp_path / "w" / "manifest.json").exists()


def test_unknown_style(good: Path, place: dict) -> None:
    result = stylebatch("run", good, "-o", place["out"], "--style", "no-such-style", env=place["env"])
    assert_failed_cleanly(result, place["out"], "unknown style", "no-such-style")
    assert os.listdir(place["tmp"]) == []


@pytest.mark.parametrize("name, workers, head", [
    ("broken.pth", "1", b""),
    ("broken.pth", "2", b""),
    ("broken.jpg", "2", b""),
    # starts like a pickle of protocol 254: torch warned about the protocol on stderr (1 random file in 256)
    ("broken.pth", "1", b"\x80\xfe"),
])
def test_corrupt_style_file(good: Path, tmp_path: Path, place: dict, name: str, workers: str, head: bytes) -> None:
    """On the CPU the ranks are the first to load a style file: a bad one fails them, and the run,
    with one line naming the file and exit code 2, leaving nothing behind."""
    style = tmp_path / name
    style.write_bytes(head + random.Random(name + workers).randbytes(2048))
    result = stylebatch("run", good, "-o", place["out"], "--style", style, "--workers", workers, "--chunk-frames", "4",
                        env=place["env"])  # 8 frames in 2 chunks: 2 ranks do run
    assert_failed_cleanly(result, place["out"], name)
    assert result.returncode == 2
    assert os.listdir(place["tmp"]) == []
    # every line is stylebatch's own: not MPICH's "Abort(2) on node 0 ... application called MPI_Abort"
    assert all(line.startswith("stylebatch: ") for line in result.stderr.splitlines() if line.strip()), result.stderr


def _style_case(case: str, folder: Path) -> list[str]:
    """The flags of a run whose style cannot work, its files made in `folder`."""
    if case == "a .pth that is not there":
        return ["--style", str(folder / "missing.pth")]
    if case == "a painting in a blend that is not there":
        return ["--style", f"lavender-gold:0.5,{folder / 'missing.jpg'}:0.5"]
    if case == "an unknown style name":
        return ["--style", "no-such-style"]
    if case.endswith("that is a folder"):
        folder = folder / ("weights.pth" if ".pth" in case else "starry.jpg")
        (folder / "inside").mkdir(parents=True)
        (folder / "inside" / "file").write_text("x")
        return ["--style", str(folder)]
    if case.startswith("fp16"):
        return ["--precision", "fp16", "--style", "lavender-gold", *(["--device", "cpu"] if "cpu" in case else [])]
    if case.startswith("a painting saved as"):  # "a painting saved as GIF in x.gif"
        from PIL import Image

        fmt, name = case.split()[4], case.split()[-1]
        Image.new("RGB", (64, 48), "teal").save(folder / name, format=fmt)
        return ["--style", str(folder / name)]
    import torch
    from stylebatch.transformer_net import TransformerNet

    good = folder / "good.pth"
    torch.save(TransformerNet().state_dict(), good)
    data = good.read_bytes()
    bad = folder / "bad.pth"
    if case == "a .pth of random bytes":
        bad.write_bytes(random.Random(case).randbytes(4096))
    elif case == "a truncated .pth (a download cut short)":
        bad.write_bytes(data[:len(data) // 2])
    elif case == "a .pth with one bit flipped (torch.load reads it)":
        bad.write_bytes(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1:])
    return ["--style", str(bad)]


@pytest.mark.parametrize("case, words", [
    ("a .pth that is not there", ["style file not found", "missing.pth"]),
    ("a painting in a blend that is not there", ["style file not found", "missing.jpg"]),
    ("an unknown style name", ["unknown style", "no-such-style"]),
    ("a .pth that is a folder", ["style file", "weights.pth is a folder"]),
    ("a painting that is a folder", ["style file", "starry.jpg is a folder"]),
    ("a .pth of random bytes", ["bad.pth", "not a PyTorch checkpoint"]),
    ("a truncated .pth (a download cut short)", ["bad.pth", "corrupt or truncated"]),
    ("a .pth with one bit flipped (torch.load reads it)", ["bad.pth", "checksum"]),
    # a picture in a format paintings are not read from, or in one under a weights file's name: each was
    # "not a PyTorch checkpoint, or corrupt or truncated" (anything not named .jpg/.png/.webp is weights)
    ("a painting saved as GIF in starry.gif", ["starry.gif: it is a GIF picture", "JPEG, PNG or WebP", "convert it"]),
    ("a painting saved as BMP in starry.bmp", ["starry.bmp: it is a BMP picture", "convert it"]),
    ("a painting saved as TIFF in starry.tiff", ["starry.tiff: it is a TIFF picture", "convert it"]),
    ("a painting saved as PNG in starry.pth", ["starry.pth: it is a PNG picture", "rename it to end in .png"]),
    ("a painting saved as JPEG in starry", ["starry: it is a JPEG picture", "rename it to end in .jpg"]),
    ("fp16 with --device cpu", ["fp16 needs a CUDA device"]),
    ("fp16 with --device auto on a machine without a GPU", ["fp16 needs a CUDA device"]),
])
def test_a_style_that_cannot_work_is_refused_before_the_input_is_read(good: Path, tmp_path: Path, place: dict,
                                                                        case: str, words: list[str]) -> None:
    """Each of these was found only after preprocess had copied and probed the whole input (a long
    download for a film in blob storage), or, for the flipped bit, not at all: the one line comes first
    and alone, with exit code 2, and no work dir is made."""
    from stylebatch.run import gpu_may_be_visible

    if case.endswith("without a GPU") and gpu_may_be_visible():
        pytest.skip("a GPU driver is here")
    cache = tmp_path / "cache"
    result = stylebatch("run", good, "-o", place["out"], "--workers", "1", *_style_case(case, tmp_path),
                        env=dict(place["env"], XDG_CACHE_HOME=str(cache)))
    error = assert_failed_cleanly(result, place["out"], *words)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [error]  # no "preprocessed ...", no rank's line
    assert not cache.exists() and os.listdir(place["tmp"]) == []


_COUNT_STYLE_CHECKS = r"""
import sys
from stylebatch import run
from stylebatch.cli import main
check = run._check_style
def counted(*args):
    print("STYLE CHECK", flush=True)
    return check(*args)
run._check_style = counted
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("device_file", ["nvidia0", "dxg", "kfd"])
def test_any_gpu_drivers_device_file_makes_auto_count_the_gpus(tmp_path: Path, monkeypatch, device_file: str):
    """NVIDIA's /dev/nvidiaN, WSL2's (and Docker Desktop's) /dev/dxg, ROCm's /dev/kfd: where one exists
    torch may see a GPU, so `--device auto` asks torch (the style check) how many."""
    from stylebatch import run

    if Path("/proc/driver/nvidia/gpus").is_dir():
        pytest.skip("this machine has NVIDIA's driver")
    fake_dev = tmp_path / "dev"
    fake_dev.mkdir()
    monkeypatch.setattr(run, "GPU_DEVICE_FILES", tuple(f"{fake_dev}/{p.rsplit('/', 1)[1]}" for p in run.GPU_DEVICE_FILES))
    assert not run.gpu_may_be_visible()
    (fake_dev / device_file).touch()
    assert run.gpu_may_be_visible()


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_on_the_cpu_no_torch_process_runs_before_the_ranks(good: Path, tmp_path: Path, place: dict, device: str):
    """The style check's child (a torch start-up, about 2 s, longer than preprocess) only delayed the
    ranks on a machine without a GPU: there the ranks' own load is the check."""
    from stylebatch.run import gpu_may_be_visible

    if device == "auto" and gpu_may_be_visible():
        pytest.skip("a GPU may be here: auto counts the GPUs in the style check")
    import torch

    from stylebatch.transformer_net import TransformerNet

    weights = tmp_path / "net.pth"
    torch.save(TransformerNet().state_dict(), weights)
    result = subprocess.run([sys.executable, "-c", _COUNT_STYLE_CHECKS, "run", str(good), "-o", str(place["out"]),
                             "--style", str(weights), "--max-side", "32", "--device", device, "--workers", "2",
                             "--chunk-frames", "4"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "STYLE CHECK" not in result.stdout
    assert count_frames(place["out"]) == 8


@pytest.mark.parametrize("style, words", [
    # the weight was read as part of the file's name: "style file not found: .../x.pth:abc" for a file there
    ("{folder}/x.pth:abc,ink-wash:0.3", ["bad weight 'abc'", "x.pth"]),
    ("az://styles/x.pth:abc,ink-wash", ["bad weight 'abc'", "az://styles/x.pth"]),  # was: no storage account
    ("lavender-gold:0.5,", ["an empty term in the style blend"]),  # was: unknown style ''
    ("26", ["no built-in style number 26", "0 to 25"]),  # was: unknown style '26'
    ("lavender-gold:inf", ["finite numbers, 0 or more", "'inf'"]),  # was: "must be zero or positive"
])
def test_a_malformed_style_says_what_is_wrong_with_it(style: str, words: list[str], good: Path, place: dict,
                                                       tmp_path: Path) -> None:
    (tmp_path / "x.pth").write_bytes(b"weights")
    result = stylebatch("run", good, "-o", place["out"], "--style", style.format(folder=tmp_path), env=place["env"])
    assert_failed_cleanly(result, place["out"], *words)
    assert result.returncode == 2


@pytest.mark.parametrize("command", [
    ["run", "{good}", "-o", "{out}"],
    ["stylize", "--work", "{tmp}/w"],
    ["watch", "{tmp}/in", "-o", "{tmp}/dest", "--once"],
    ["preview", "{good}", "-o", "{tmp}/sheet.png"],
])
@pytest.mark.parametrize("style", ["", " ", ","])
def test_an_empty_style_is_refused_by_every_command_not_painted_as_the_default(command: list[str], style: str,
                                                                              good: Path, place: dict) -> None:
    """`run --style ""` painted lavender-gold and exited 0 (an unset shell variable, $STYLE, gives it)."""
    (place["tmp"] / "in").mkdir()
    argv = [a.format(good=good, out=place["out"], tmp=place["tmp"]) for a in command]
    result = stylebatch(*argv, "--style", style, env=place["env"])
    line = assert_failed_cleanly(result, place["out"], f"--style: {style!r} names no style"
                                 if command[0] != "preview" else f"--style {style!r} names no style")
    assert result.returncode == 2 and "lavender-gold" in line  # what leaving --style out would paint
    assert sorted(os.listdir(place["tmp"])) == ["in"] and os.listdir(place["tmp"] / "in") == []


_FAKE_GPU_DRIVER = r"""
import sys
from stylebatch import run
from stylebatch.cli import main
run.GPU_DEVICE_FILES = (sys.argv.pop(1) + "/nvidia[0-9]*",)  # a driver's device file, but torch sees no GPU
start = run._start_ranks
def counted(*args, **kwargs):
    print("RANKS STARTED", flush=True)
    return start(*args, **kwargs)
run._start_ranks = counted
sys.exit(main(sys.argv[1:]))
"""


def test_fp16_where_a_gpu_driver_is_but_torch_sees_no_gpu_is_refused_before_the_ranks(good: Path, place: dict,
                                                                                      tmp_path: Path) -> None:
    """--device auto with a GPU driver's device file here: the style check counts the GPUs torch sees;
    with none, fp16 cannot run, and no rank is started to find that out (they refused it, one by one)."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidia0").touch()
    result = subprocess.run([sys.executable, "-c", _FAKE_GPU_DRIVER, str(tmp_path / "dev"), "run", str(good), "-o",
                             str(place["out"]), "--precision", "fp16", "--workers", "1", *FAST_STYLE],
                            capture_output=True, text=True, timeout=300, env=place["env"])
    assert_failed_cleanly(result, place["out"], "--precision fp16 needs a CUDA device")
    assert result.returncode == 2 and "RANKS STARTED" not in result.stdout


@pytest.mark.parametrize("flags, words", [
    (["--crf", "99"], ["--crf"]),
    (["--crf", "abc"], ["--crf"]),
    (["--crf", "20", "--bitrate", "2M"], ["--bitrate", "--crf"]),
    (["--bitrate", "lots"], ["--bitrate"]),
    (["--preset", "warp-speed"], ["--preset"]),
    (["--codec", "nope"], ["--codec"]),
    (["--workers", "0"], ["--workers"]),
    (["--max-side", "5"], ["--max-side"]),
    (["--strength", "2"], ["--strength"]),
    (["--device", "tpu"], ["--device"]),
    (["--batch-size", "-1"], ["--batch-size"]),
    (["--chunk-frames", "0"], ["--chunk-frames"]),
])
def test_bad_flag_values(flags: list[str], words: list[str], good: Path, place: dict) -> None:
    result = stylebatch("run", good, "-o", place["out"], *flags, env=place["env"])
    assert_failed_cleanly(result, place["out"], *words)


def test_codec_that_the_container_cannot_hold(good: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.webm"
    result = stylebatch("run", good, "-o", out, "--codec", "h264")
    assert_failed_cleanly(result, out, "h264", ".webm")


def test_unknown_output_extension(good: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.xyz"
    assert_failed_cleanly(stylebatch("run", good, "-o", out), out, "extension")


def test_existing_output_is_replaced_only_on_success(tmp_path: Path, place: dict, good: Path) -> None:
    out = place["out"]
    out.write_bytes(b"the previous result")
    bad = _make("truncated", tmp_path, good)
    assert_failed_cleanly(stylebatch("run", bad, "-o", out, *FAST_STYLE, env=place["env"]), out)
    assert_failed_cleanly(stylebatch("run", good, "-o", out, "--style", "nope", env=place["env"]), out)
    assert out.read_bytes() == b"the previous result"
    result = stylebatch("run", good, "-o", out, *FAST_STYLE, env=place["env"])
    assert result.returncode == 0, result.stderr
    assert count_frames(out) == 8
    assert os.listdir(out.parent) == [out.name]


def test_postprocess_names_the_missing_frames_and_writes_nothing(good: Path, tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out" / "o.mp4"
    out.parent.mkdir()
    assert stylebatch("preprocess", good, "--work", work, "-o", out, "--chunk-frames", "3").returncode == 0
    result = stylebatch("postprocess", "--work", work)
    assert_failed_cleanly(result, out, "0-7", "stylize")


@pytest.mark.parametrize("command", ["stylize", "postprocess"])
def test_stage_on_a_work_dir_that_was_never_preprocessed(command: str, tmp_path: Path) -> None:
    result = stylebatch(command, "--work", tmp_path / "nowhere")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(error_lines(result)) == 1 and "preprocess" in error_lines(result)[0]


@pytest.mark.azurite
def test_missing_blob(azure_env, place: dict) -> None:
    uri = f"az://{azure_env.container}/no/such/video.mp4"
    result = stylebatch("run", uri, "-o", place["out"], *FAST_STYLE, env={**azure_env.env, **place["env"],
                        "AZURE_STORAGE_CONNECTION_STRING": azure_env.env["AZURE_STORAGE_CONNECTION_STRING"]})
    error = assert_failed_cleanly(result, place["out"], "not found")
    assert "video.mp4" in error


def test_work_dir_with_other_files_is_refused_and_kept(good: Path, place: dict, tmp_path: Path) -> None:
    work = tmp_path / "mine"
    work.mkdir()
    (work / "notes.txt").write_text("my own file")
    result = stylebatch("run", good, "-o", place["out"], "--work", work, *FAST_STYLE, env=place["env"])
    assert_failed_cleanly(result, place["out"], "holds other files", "empty or new folder")
    assert sorted(os.listdir(work)) == ["notes.txt"]
    result = stylebatch("preprocess", good, "--work", work, "-o", place["out"])
    assert_failed_cleanly(result, place["out"], "holds other files")
    assert sorted(os.listdir(work)) == ["notes.txt"]


def test_work_dot_holding_the_input_is_refused_and_nothing_is_deleted(good: Path, tmp_path: Path) -> None:
    folder = tmp_path / "here"
    folder.mkdir()
    (folder / "in.mp4").write_bytes(good.read_bytes())
    result = stylebatch("run", "in.mp4", "-o", "out.mp4", "--work", ".", *FAST_STYLE, cwd=folder)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1 and "contains" in error_lines(result)[0] and "in.mp4" in result.stderr
    assert sorted(os.listdir(folder)) == ["in.mp4"]
    # the output inside the work dir is refused the same way
    result = stylebatch("run", good, "-o", folder / "out.mp4", "--work", folder, cwd=folder)
    assert result.returncode == 2 and "contains" in error_lines(result)[0]
    assert sorted(os.listdir(folder)) == ["in.mp4"]


def test_a_file_as_work_dir_is_refused(good: Path, place: dict, tmp_path: Path) -> None:
    work = tmp_path / "work.txt"
    work.write_text("x")
    result = stylebatch("preprocess", good, "--work", work, "-o", place["out"])
    assert_failed_cleanly(result, place["out"], "is a file")
    assert work.read_text() == "x"
    # the input itself given as --work: it said "work dir in.mp4 contains in.mp4"
    source = tmp_path / "in.mp4"
    source.write_bytes(good.read_bytes())
    for command in ("run", "preprocess"):
        result = stylebatch(command, source, "--work", source, "-o", place["out"])
        assert_failed_cleanly(result, place["out"], f"work dir {source} is a file")
        assert source.read_bytes() == good.read_bytes()


@pytest.mark.azurite
def test_a_container_with_other_blobs_as_work_dir_is_refused(azure_env, good: Path, place: dict) -> None:
    from stylebatch.storage import location

    base = f"az://{azure_env.container}"
    location(f"{base}/videos/holiday.mp4").write_bytes(b"precious")
    env = {**azure_env.env, **place["env"]}
    for work in (f"{base}/", f"{base}/videos"):
        result = stylebatch("run", good, "-o", place["out"], "--work", work, *FAST_STYLE, env=env)
        assert_failed_cleanly(result, place["out"], "holds other files")
    assert location(f"{base}/videos/holiday.mp4").read_bytes() == b"precious"


@pytest.mark.azurite
def test_a_style_blob_that_is_not_there_is_refused_before_the_input_is_read_and_one_that_is_paints(
        azure_env, good: Path, place: dict, tmp_path: Path) -> None:
    """The launcher asks the blob service whether the style blob exists before preprocess (it learnt
    so only when it downloaded the style, once the whole input had been read); a style blob that is
    there still paints the video."""
    import torch
    from stylebatch.storage import location
    from stylebatch.transformer_net import TransformerNet

    base = f"az://{azure_env.container}"
    env = {**azure_env.env, **place["env"], "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = stylebatch("run", good, "-o", place["out"], "--workers", "1", "--style", f"{base}/styles/gone.pth", env=env)
    error = assert_failed_cleanly(result, place["out"], "style file not found", "styles/gone.pth")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [error]
    assert not (tmp_path / "cache").exists()

    torch.save(TransformerNet().state_dict(), tmp_path / "net.pth")
    location(f"{base}/styles/net.pth").write_bytes((tmp_path / "net.pth").read_bytes())
    result = stylebatch("run", good, "-o", place["out"], "--workers", "1", "--style", f"{base}/styles/net.pth",
                        "--max-side", "32", env=env)
    assert result.returncode == 0, result.stderr
    assert count_frames(place["out"]) == 8


@pytest.mark.azurite
def test_a_painting_blob_is_named_by_its_own_name(azure_env, good: Path, place: dict, tmp_path: Path) -> None:
    """A painting fetched from blob storage was named by the file it was downloaded to: "style image
    style-0-cut.jpg cannot be decoded", and its label "style-0-starry" in the lines a run prints."""
    from PIL import Image
    from stylebatch.storage import location

    base = f"az://{azure_env.container}/styles"
    Image.new("RGB", (64, 64), "teal").save(tmp_path / "starry.jpg")
    whole = (tmp_path / "starry.jpg").read_bytes()
    location(f"{base}/starry.jpg").write_bytes(whole)
    location(f"{base}/cut.jpg").write_bytes(whole[:len(whole) // 2])
    env = {**azure_env.env, **place["env"], "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = stylebatch("run", good, "-o", place["out"], "--workers", "1", "--style", f"{base}/cut.jpg",
                        "--max-side", "32", env=env)
    error = assert_failed_cleanly(result, place["out"], f"style image {base}/cut.jpg")
    assert "style-0" not in result.stderr and "/tmp/" not in error, error
    result = stylebatch("run", good, "-o", place["out"], "--workers", "1", "--style", f"{base}/starry.jpg",
                        "--max-side", "32", env=env)
    assert result.returncode == 0 and "style starry" in result.stderr and "style-0" not in result.stderr, result.stderr


@pytest.mark.azurite
def test_two_style_blobs_of_one_name_resolve_to_two_files(azure_env, tmp_path: Path) -> None:
    """`preview --style az://c/a/starry.jpg --style az://c/b/starry.jpg` resolves both into one tmp:
    the second download replaced the first, and both tiles showed the second painting."""
    from stylebatch.storage import location
    from stylebatch.styles import resolve_style

    base = f"az://{azure_env.container}"
    location(f"{base}/a/starry.jpg").write_bytes(b"first")
    location(f"{base}/b/starry.jpg").write_bytes(b"second")
    first, second = (resolve_style(f"{base}/{d}/starry.jpg", tmp_path) for d in "ab")
    assert Path(first).name == Path(second).name == "starry.jpg"
    assert (Path(first).read_bytes(), Path(second).read_bytes()) == (b"first", b"second")


def test_an_existing_output_is_kept_by_a_failed_run_and_replaced_by_one_that_succeeds(good: Path, place: dict,
                                                                                     tmp_path: Path) -> None:
    """OUTPUT is replaced without asking, as `-o` says, but only by a finished video: a run that fails
    after the input was read (here in its ranks: weights that are not finite) leaves the old file."""
    import torch
    from stylebatch.transformer_net import TransformerNet

    out = place["out"]
    out.write_bytes(b"last week's video")
    state = TransformerNet().state_dict()
    state["res1.conv1.conv2d.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "diverged.pth")
    failed = stylebatch("run", good, "-o", out, "--workers", "1", "--style", tmp_path / "diverged.pth", env=place["env"])
    assert_failed_cleanly(failed, out, "not finite")
    assert "preprocessed" in failed.stderr  # it failed after the input was read
    assert out.read_bytes() == b"last week's video"
    done = stylebatch("run", good, "-o", out, "--workers", "1", *FAST_STYLE, env=place["env"])
    assert done.returncode == 0, done.stderr
    assert count_frames(out) == 8 and sorted(os.listdir(out.parent)) == [out.name]


def test_manifest_records_absolute_paths_and_resume_compares_resolved_inputs(good: Path, tmp_path: Path) -> None:
    import json

    (tmp_path / "in.mp4").write_bytes(good.read_bytes())
    (tmp_path / "out").mkdir()
    args = ("--work", "work", "-o", "out/o.mp4")
    assert stylebatch("preprocess", "in.mp4", *args, cwd=tmp_path).returncode == 0
    m = json.loads((tmp_path / "work" / "manifest.json").read_text())
    assert m["output"] == str((tmp_path / "out" / "o.mp4").resolve())
    assert m["input"] == str((tmp_path / "in.mp4").resolve())
    # the same input by another spelling resumes; another input does not
    result = stylebatch("preprocess", tmp_path / "out" / ".." / "in.mp4", *args, cwd=tmp_path)
    assert result.returncode == 0 and "resuming" in result.stderr, result.stderr
    result = stylebatch("preprocess", good, *args, cwd=tmp_path)
    assert result.returncode == 2 and "another input" in error_lines(result)[0]


@pytest.mark.parametrize("text", ["[]", "null", "42", "{not json", '{"format_version": 1}'])
@pytest.mark.parametrize("command", ["stylize", "postprocess"])
def test_a_damaged_manifest_is_one_line_and_the_work_dir_is_kept(command: str, text: str, good: Path,
                                                                 tmp_path: Path) -> None:
    """A later stage reads the manifest preprocess wrote; JSON that is not an object was a traceback."""
    work = tmp_path / "work"
    assert stylebatch("preprocess", good, "--work", work, "-o", tmp_path / "o.mp4").returncode == 0
    (work / "manifest.json").write_text(text)
    before = sorted(p.name for p in work.iterdir())
    result = stylebatch(command, "--work", work, *(FAST_STYLE if command == "stylize" else ()))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1, result.stderr
    assert "manifest" in error_lines(result)[0] and "work dir" in error_lines(result)[0], result.stderr
    assert sorted(p.name for p in work.iterdir()) == before and not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("output, words", [
    ("nowhere/o.mp4", ["does not exist"]),
    ("in.mp4", ["is the input"]),
    ("folder.mp4", ["is a folder"]),
    ("in.mp4/o.mp4", ["in.mp4 is a file, not a folder"]),  # said "the folder ... does not exist"
    # a folder access() calls writable for root that is not (sysfs; a read-only mount alike): it was
    # found only when the output was written, after all the work
    ("/sys/kernel/o.mp4", ["the folder /sys/kernel is not writable"]),
])
@pytest.mark.parametrize("command", ["run", "preprocess"])
def test_output_that_cannot_be_written_is_refused_before_any_work(command: str, output: str, words: list[str],
                                                                  good: Path, tmp_path: Path) -> None:
    if output.startswith("/sys/") and not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys/kernel here")
    (tmp_path / "in.mp4").write_bytes(good.read_bytes())
    (tmp_path / "folder.mp4").mkdir()
    result = stylebatch(command, "in.mp4", "-o", output, "--work", "w", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1 and all(w in error_lines(result)[0] for w in words), result.stderr
    assert sorted(os.listdir(tmp_path)) == ["folder.mp4", "in.mp4"]  # no work dir, no output
    assert (tmp_path / "in.mp4").read_bytes() == good.read_bytes()


@pytest.mark.parametrize("output, words", [
    ("in.mp4", ["the output in.mp4 is the input"]),
    ("../t/in.mp4", ["is the input"]),  # the same file, spelled otherwise
    ("link.mp4", ["is the input"]),  # a hard link to it
    ("w/source.mp4", ["is inside the work dir"]),
    ("w/parts/000000000-000000008.mkv", ["is inside the work dir"]),  # the one part
])
def test_postprocess_refuses_an_output_over_the_input_or_in_the_work_dir(output: str, words: list[str], good: Path,
                                                                          tmp_path: Path) -> None:
    """postprocess -o in.mp4 wrote the stylized video over the user's original with exit code 0, and an
    output over a part broke the work dir; preprocess and run refused both."""
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "in.mp4").write_bytes(good.read_bytes())
    os.link(folder / "in.mp4", folder / "link.mp4")
    assert stylebatch("preprocess", "in.mp4", "-o", "out.mp4", "--work", "w", "--chunk-frames", "12",
                      cwd=folder).returncode == 0
    assert stylebatch("stylize", "--work", "w", *FAST_STYLE, cwd=folder).returncode == 0
    work_files = {p: p.read_bytes() for p in (folder / "w").rglob("*") if p.is_file()}
    result = stylebatch("postprocess", "--work", "w", "-o", output, cwd=folder)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1 and all(w in error_lines(result)[0] for w in words), result.stderr
    assert (folder / "in.mp4").read_bytes() == good.read_bytes()
    assert {p: p.read_bytes() for p in (folder / "w").rglob("*") if p.is_file()} == work_files
    assert stylebatch("postprocess", "--work", "w", cwd=folder).returncode == 0  # the work dir still makes the video
    assert (folder / "out.mp4").exists()


def test_an_output_in_a_folder_that_takes_no_files_says_so_not_no_such_file(tmp_path: Path, good: Path) -> None:
    """-o /proc/out.mp4 said "the folder /proc is not writable (No such file or directory)" (root: procfs
    refuses a new file with ENOENT), as if something were missing."""
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    result = stylebatch("run", good, "-o", "/proc/out.mp4", "--work", tmp_path / "w")
    line = assert_failed_cleanly(result, tmp_path / "none.mp4", "cannot write /proc/out.mp4",
                                 "the folder /proc is not writable")
    assert result.returncode == 2 and "No such file" not in line and not (tmp_path / "w").exists()
    if os.geteuid() == 0:
        assert "a virtual file system, which takes no new files" in line


@pytest.mark.parametrize("output, words", [
    ("adir", ["--output 'adir' is a folder", "e.g. adir/out.mp4"]),  # said "needs one of the extensions"
    (".", ["--output '.' is a folder", "e.g. ./out.mp4"]),
    ("adir/", ["--output 'adir/' ends in /", "names a folder", "e.g. adir/out.mp4"]),
    ("az://videos/", ["--output 'az://videos/' ends in /", "e.g. az://videos/out.mp4"]),  # said "output ''"
    ("https://acct.blob.core.windows.net/videos/?sig=S3CR3T",  # said "output 'videos'": the container
     ["--output 'https://acct.blob.core.windows.net/videos/' ends in /"]),
])
@pytest.mark.parametrize("command", [["run", "in.mp4"], ["preprocess", "in.mp4", "--work", "w"],
                                     ["postprocess", "--work", "w"]])
def test_an_output_that_names_a_folder_asks_for_a_file_name(command: list[str], output: str, words: list[str],
                                                            good: Path, tmp_path: Path) -> None:
    (tmp_path / "in.mp4").write_bytes(good.read_bytes())
    (tmp_path / "adir").mkdir()
    result = stylebatch(*command, "-o", output, cwd=tmp_path)
    line = assert_failed_cleanly(result, tmp_path / "adir" / "out.mp4", *words)
    assert result.returncode == 2 and "extensions" not in line and "S3CR3T" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["adir", "in.mp4"] and os.listdir(tmp_path / "adir") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder_is_refused(good: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = stylebatch("run", good, "-o", locked / "o.mp4")
        assert result.returncode == 2 and "not writable" in error_lines(result)[0]
    finally:
        locked.chmod(0o700)


@pytest.mark.azurite
def test_missing_output_container_is_refused_before_any_work(azure_env, good: Path, tmp_path: Path) -> None:
    result = stylebatch("run", good, "-o", "az://no-such-container/o.mp4", "--work", tmp_path / "w",
                        env=azure_env.env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "no container 'no-such-container'" in error_lines(result)[0]
    assert not (tmp_path / "w").exists()


@pytest.mark.azurite
@pytest.mark.parametrize("spelling", ["the account's URL", "localhost with a SAS", "the default port written out",
                                      "az:// for an input given by URL", "work dir by URL above an az:// input"])
@pytest.mark.parametrize("command", ["run", "preview"])
def test_one_blob_spelled_two_ways_is_never_written_over(command: str, spelling: str, azure_env, good: Path,
                                                         tmp_path: Path) -> None:
    """`run az://c/in/clip.mp4 -o http://127.0.0.1:10000/devstoreaccount1/c/in/clip.mp4` (or
    localhost's URL with a SAS) replaced the input and exited 0: az:// and the account's own URL were
    compared as written, not as the blob they name. Refused before any work, one line, exit 2."""
    from azurite_fixture import sas

    azurite, container = azure_env.azurite, azure_env.container
    name = "in/clip.mp4" if command == "run" else "in/p.png"
    data = good.read_bytes() if command == "run" else _picture(tmp_path / "p.png").read_bytes()
    blobs = azurite.service_client().get_container_client(container)
    blobs.upload_blob(name, data)
    by_url = f"{azurite.endpoint}/{container}/{name}"
    src, out, extra, what = f"az://{container}/{name}", by_url, [], "is the input"
    env = dict(azure_env.env)
    if spelling == "localhost with a SAS":
        out = f"http://LocalHost:{azurite.port}/{azurite.account}/{container}/{name}?{sas(azurite, container)}"
    elif spelling == "the default port written out":  # nothing listens there: refused before it is asked
        env["AZURE_STORAGE_BLOB_ENDPOINT"] = f"http://127.0.0.1:80/{azurite.account}"
        src, out = f"az://{container}/{name}", f"http://127.0.0.1/{azurite.account}/{container}/{name}"
    elif spelling == "az:// for an input given by URL":
        src, out = by_url, f"az://{container}/{name}"
    elif spelling == "work dir by URL above an az:// input":
        if command == "preview":
            pytest.skip("preview has no work dir")
        out, extra, what = str(tmp_path / "o.mp4"), ["--work", f"{azurite.endpoint}/{container}/in"], "contains"
    args = ["--style", "ink-wash", "--tile", "32"] if command == "preview" else [*FAST_STYLE, *extra]
    result = stylebatch(command, src, "-o", out, *args, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1 and what in error_lines(result)[0], result.stderr
    assert [b.name for b in blobs.list_blobs()] == [name]
    assert blobs.download_blob(name).readall() == data and not (tmp_path / "o.mp4").exists()


def _picture(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 120, 40)).save(path)
    return path


@pytest.mark.parametrize("command", ["run", "preprocess"])
def test_nvenc_without_an_nvidia_gpu_is_a_one_line_error(command: str, good: Path, place: dict) -> None:
    import av

    try:
        ctx = av.CodecContext.create("h264_nvenc", "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.open()
        pytest.skip("this machine can run NVENC")
    except av.FFmpegError:
        pass
    work = place["tmp"] / "w"
    result = stylebatch(command, good, "-o", place["out"], "--work", work, "--codec", "h264_nvenc", env=place["env"])
    assert_failed_cleanly(result, place["out"], "encoder h264_nvenc is not available on this machine")
    assert not work.exists()


def test_a_file_cut_short_to_one_frame_is_warned_of_in_english(caplog) -> None:
    """The warning counts what is left: "the 1 frame it has", not "the 1 frames"."""
    import logging
    from fractions import Fraction
    from types import SimpleNamespace

    from stylebatch.video import _warn_if_cut_short

    declares_6_s = SimpleNamespace(duration=6000, time_base=Fraction(1, 1000), start_time=0, metadata={})
    with caplog.at_level(logging.WARNING, logger="stylebatch"):
        _warn_if_cut_short("cut.mkv", declares_6_s, end=0.04, frames=1, expected=0)
    assert [r.getMessage() for r in caplog.records] == [
        "cut.mkv declares 6.0 s of video but its frames end at 0.0 s: it may be truncated (stylizing the 1 frame it has)"]


@pytest.mark.parametrize("case, warned", [
    ("a whole Matroska file", False),
    ("the first 55% of it (a download that stopped)", True),
    ("a whole one whose timestamps start at 10 s", False),
])
def test_a_matroska_file_cut_short_is_stylized_with_a_warning(case: str, warned: bool, tmp_path: Path) -> None:
    """A cut-short .mp4 is refused (its frame count is declared), but Matroska and WebM declare no
    frame count, and a file cut short decodes cleanly up to its cut: a 6 s .mkv cut to its first part
    made a 3.4 s video, exit 0, nothing said. Its video track still declares where it ends (its
    DURATION tag): well short of that, a warning says so. A video whose timestamps start late is not
    short."""
    whole = tmp_path / "whole.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25", "-f", "lavfi",
                    "-i", "sine=frequency=440", "-t", "6", "-c:v", "libx264", "-g", "10", "-c:a", "aac",
                    "-shortest", str(whole)], check=True)
    src = tmp_path / "in.mkv"
    if case.startswith("the first"):
        src.write_bytes(whole.read_bytes()[:int(whole.stat().st_size * 0.55)])
    elif "10 s" in case:
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(whole), "-c", "copy", "-output_ts_offset", "10", str(src)],
                       check=True)
    else:
        src = whole
    result = stylebatch("preprocess", src, "--work", tmp_path / "work", "-o", tmp_path / "out.mkv")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "may be truncated" in line]
    assert len(warnings) == warned, result.stderr
    if warned:
        frames = int(re.search(r"preprocessed \S*in\.mkv: (\d+) frames?", result.stderr).group(1))
        assert 60 < frames < 150
        assert re.fullmatch(r"stylebatch: warning: \S*in\.mkv declares 6\.0 s of video but its frames end at "
                            rf"\d\.\d s: it may be truncated \(stylizing the {frames} frames it has\)", warnings[0])
