"""Memory is bounded by what is stylized, not by the input's size: huge frames with --max-side run in
little memory, a frame size that cannot fit is refused before any stylize, ranks are capped to what fits."""

from __future__ import annotations

import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import memory_cap
from clips import count_frames, display_size, error_lines, stylebatch
from test_models import peak_rss_mib

from stylebatch import memory
from stylebatch.contract import ENCODERS, INTRA_ONLY_ENCODERS

MiB = 1024 ** 2
GiB = 1024 ** 3


def _square_mjpeg(path: Path, side: int) -> Path:
    """Two side x side frames of flat-colour MJPEG: tiny on disk, huge once decoded."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c=teal:size={side}x{side}:rate=2",
                    "-frames:v", "2", "-c:v", "mjpeg", "-q:v", "8", "-pix_fmt", "yuvj420p", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def huge_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 8000x8000 frames (64 megapixels each) of MJPEG: under a MiB on disk, cheap to make."""
    return _square_mjpeg(tmp_path_factory.mktemp("huge") / "huge.avi", 8000)


@pytest.mark.slow
def test_huge_frames_with_max_side_are_stylized_in_bounded_memory(huge_clip: Path, tmp_path: Path) -> None:
    """Full-size frames exist only in the decoder and the encoder: 8000x8000 at --max-side 64 peaks
    well under 1.5 GiB over every process of the run (it took 4.5 GiB when whole frames went through)."""
    out = tmp_path / "out.avi"
    code, stderr, peak = peak_rss_mib("run", huge_clip, "-o", out, "--max-side", "64", "--workers", "1",
                                      timeout=600)
    assert code == 0, stderr
    assert peak < 1536, f"peak RSS {peak:.0f} MiB"
    assert display_size(out) == (8000, 8000) and count_frames(out) == 2


@pytest.fixture(scope="module")
def giant_mjpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 16000x16000 frames (256 megapixels each) of MJPEG: 3 MB on disk, a few seconds to make."""
    return _square_mjpeg(tmp_path_factory.mktemp("giant") / "giant.avi", 16000)


@pytest.mark.slow
def test_a_16000x16000_mjpeg_at_max_side_256_runs_well_under_a_2_gib_memory_limit(giant_mjpeg, tmp_path) -> None:
    """The whole run (launcher, mpiexec, rank) in one memory cgroup limited to 2 GiB, as a pod would
    be: it finishes, and its peak (page cache included) stays under 1.5 GiB. It peaked at 2.7 GiB when
    the decoder made full-size frames and one MJPEG encoder kept three full-size pictures."""
    why = memory_cap.available()
    if why:
        pytest.skip(why)
    out = tmp_path / "out.avi"
    run = memory_cap.run_capped(2 * GiB, [sys.executable, "-m", "stylebatch", "run", str(giant_mjpeg), "-o", str(out),
                                          "--max-side", "256", "--workers", "1"])
    assert run.returncode == 0 and not run.oom_killed, run.stderr
    assert run.peak < 1.5 * GiB, f"peak {run.peak / MiB:.0f} MiB"
    assert display_size(out) == (16000, 16000) and count_frames(out) == 2


@pytest.mark.slow
def test_a_frame_size_that_cannot_fit_is_refused_before_any_stylize(huge_clip: Path, tmp_path: Path) -> None:
    result = stylebatch("run", huge_clip, "-o", tmp_path / "out.avi", "--workers", "1", timeout=300)
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert line.startswith("stylebatch: error: frames of 8000x8000 at full size need about ")
    assert "give --max-side " in line and "Traceback" not in result.stderr
    assert "stylizing" not in result.stderr and not (tmp_path / "out.avi").exists()


def test_ranks_are_capped_to_what_fits_in_the_machines_memory(clip, tmp_path: Path, monkeypatch, capsys) -> None:
    from stylebatch.cli import main

    monkeypatch.setattr(memory, "machine_bytes", lambda: 2 * memory.RANK_BASE_BYTES)  # room for two ranks
    src = clip("in.mp4", size=(64, 48), frames=12)
    code = main(["run", str(src), "-o", str(tmp_path / "out.mp4"), "--workers", "3", "--chunk-frames", "4",
                 "--style", "lavender-gold", "--max-side", "48"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "memory for 1 rank of 64x48 frames: running 1, not 3" in err
    assert count_frames(tmp_path / "out.mp4") == 12


@pytest.mark.parametrize("size, max_side, batch, machine_gib, expected", [
    ((1920, 1080), None, 4, 24, 4),     # 1080p at full size: under 5 GiB a rank
    ((1920, 1080), 720, 4, 24, 18),     # --max-side shrinks what the net holds
    ((3840, 2160), None, 4, 24, 1),
    ((3840, 2160), None, 8, 24, "give --batch-size 5 or less,"),  # 4K, full size, batches of 8: over 30 GiB
    ((1920, 1080), None, 10 ** 9, 24, "give --batch-size "),  # found by halving: counting down took 26 minutes
    ((3840, 2160), None, 4, 4, "give --max-side 2560 or less and --batch-size 1,"),
    ((3840, 2160), 3000, 1, 1.5, "give --max-side 1280 or less,"),
    ((16000, 16000), 256, 4, 24, 5),    # what is left is the frames in the codecs
    ((16000, 16000), 256, 4, 4, "give --batch-size 1,"),
    ((16000, 16000), 256, 1, 3, "no --max-side makes it fit; run on a machine with more memory"),
    ((16000, 16000, "mjpeg"), 256, 4, 2, 1),  # decoded small, a fresh encoder per frame: fits a 2 GiB pod
    ((16000, 16000, "mjpeg"), 256, 4, 1.5, "no --max-side makes it fit"),
    ((16000, 16000), None, 1, 128, "give --max-side 3840 or less,"),
    ((1280, 720), 32, 1, 0.3, "no --max-side makes it fit"),  # never a larger --max-side than the one given
])
def test_how_many_ranks_fit_and_what_would_when_none_does(size, max_side, batch, machine_gib, expected) -> None:
    from stylebatch.errors import StylebatchError
    from stylebatch.models import working_size

    w, h, *mjpeg = size

    def need(side: int | None, frames: int) -> int:
        wh, ww = working_size(h, w, side)
        return memory.rank_bytes(w, h, ww, wh, frames, gpu=False, decoded_small=bool(mjpeg),
                                 per_frame_encoder=bool(mjpeg))

    if isinstance(expected, str):
        with pytest.raises(StylebatchError) as refused:
            memory.check_fits(need, w, h, max_side, batch, available=int(machine_gib * 1024 ** 3))
        assert expected in str(refused.value) and "more than this machine's" in str(refused.value)
        usable = int(machine_gib * 1024 ** 3 * memory.USABLE_SHARE)
        batch_given = re.search(r"give --batch-size (\d+)", str(refused.value))
        if batch_given:  # the largest batch that fits
            b = int(batch_given[1])
            assert need(max_side, b) <= usable < need(max_side, b + 1)
        suggested = re.search(r"--max-side (\d+) or less", str(refused.value))
        if suggested:  # what it suggests does fit
            assert need(int(suggested[1]), 1 if "--batch-size 1" in str(refused.value) else batch) <= int(
                machine_gib * 1024 ** 3 * memory.USABLE_SHARE)
    else:
        assert memory.check_fits(need, w, h, max_side, batch, available=int(machine_gib * 1024 ** 3)) == expected


@pytest.mark.parametrize("size, threads, expected", [
    ((1920, 1080), 8, 8),
    ((1920, 1080), 0, 0),
    ((8000, 8000), 8, 1),
    ((4000, 4000), 8, 5),
])
def test_codec_threads_shrink_only_for_huge_frames(size, threads, expected) -> None:
    assert memory.codec_threads(*size, threads) == expected


@pytest.mark.parametrize("codec, coded, wanted, shift", [
    ("mjpeg", (16000, 16000), (256, 256), 3),  # 2000x2000 out of the decoder
    ("mjpeg", (1920, 1080), (960, 540), 1),
    ("mjpeg", (1921, 1081), (961, 541), 1),    # FFmpeg rounds a halved odd size up
    ("mjpeg", (1920, 1080), (961, 540), 0),    # a half would be one pixel short
    ("mjpeg", (1080, 1920), (540, 960), 1),
    ("h264", (16000, 16000), (256, 256), 0),  # predicted frames: full size, scaled after
    ("prores", (16000, 16000), (256, 256), 0),  # intra-only, but no lowres in FFmpeg's decoder
])
def test_an_intra_only_decoder_makes_frames_no_smaller_than_wanted(codec, coded, wanted, shift) -> None:
    assert memory.lowres(av.Codec(codec, "r").name, coded, wanted) == shift


def test_frames_decoded_small_match_frames_decoded_full_size_and_scaled(clip, monkeypatch) -> None:
    """MJPEG frames made at 1/4 size in the decoder look like full-size frames scaled down."""
    from stylebatch import video

    src = clip("in.avi", size=(640, 480), frames=3, codec="mjpeg", pix_fmt="yuvj420p")
    info = video.probe(src, "in.avi")

    class M:  # the manifest fields ChunkReader reads
        input, video_stream, rotation, frames = "in.avi", info.video_stream, 0, 3
        coded_width, coded_height, display_width, display_height = 640, 480, 640, 480
        pts, keyframes, pts_reliable, color = info.pts, info.keyframes, info.pts_reliable, info.color

    def frames() -> np.ndarray:
        reader = video.ChunkReader(src, M, size=(160, 120))
        try:
            return np.concatenate(list(reader.read(0, 3, 3))).astype(float)
        finally:
            reader.close()

    assert memory.lowres(av.Codec("mjpeg", "r").name, (640, 480), (160, 120)) == 2
    small = frames()
    monkeypatch.setattr(memory, "MAX_LOWRES", 0)
    full = frames()
    assert small.shape == full.shape == (3, 120, 160, 3)
    assert np.abs(small - full).mean() < 3, np.abs(small - full).mean()


@pytest.mark.parametrize("codec, pix_fmt, bitrate, per_frame", [
    ("mjpeg", "yuvj420p", None, True),
    ("mjpeg", "yuvj420p", 2_000_000, False),  # rate control needs the frames before
    ("libx264", "yuv420p", None, False),  # predicts from the frames before
])
def test_huge_intra_only_frames_get_a_fresh_encoder_each_and_the_same_bytes(codec, pix_fmt, bitrate, per_frame,
                                                                        tmp_path, monkeypatch) -> None:
    """Above ENCODER_PER_FRAME_PIXELS (lowered here to 0) MJPEG frames are coded by an encoder each,
    which keeps no full-size pictures; every packet is byte for byte what one encoder makes."""
    from stylebatch.encoder import PartWriter
    from stylebatch.manifest import EncoderSettings

    settings = EncoderSettings(codec=codec, pix_fmt=pix_fmt, container="avi", crf=3 if codec == "mjpeg" else 18,
                               bitrate=bitrate)
    frames = (np.random.default_rng(0).random((4, 24, 32, 3)) * 255).astype(np.uint8)
    color = {"matrix": "itu601", "space": 5, "range": 2, "primaries": 2, "trc": 2}

    def packets(name: str) -> list[bytes]:
        writer = PartWriter(tmp_path / name, settings, 64, 48, Fraction(25), color, threads=1)
        assert (writer._fresh is not None) == (name == "huge.mkv" and per_frame)
        writer.write(frames)
        writer.close()
        with av.open(str(tmp_path / name)) as c:
            return [bytes(p) for p in c.demux(video=0) if p.size]

    one_encoder = packets("one.mkv")
    monkeypatch.setattr(memory, "ENCODER_PER_FRAME_PIXELS", 0)
    assert len(one_encoder) == 4 and packets("huge.mkv") == one_encoder


@pytest.mark.parametrize("nested", [False, True])
def test_the_memory_limit_of_this_process_cgroup_is_what_the_machine_has(nested: bool) -> None:
    """A rank in a cgroup limited below the machine (a pod, a capped run), or below a limited group
    (a pod's limit above its container's), plans for the limit."""
    why = memory_cap.available()
    if why:
        pytest.skip(why)
    run = memory_cap.run_capped(
        700 * MiB, [sys.executable, "-c", "from stylebatch.memory import machine_bytes; print(machine_bytes())"],
        nested=nested)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == 700 * MiB


LAUNCHER = r"""
import re, sys
from stylebatch.cli import main
code = main(sys.argv[1:])
peak = re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)  # since exec, unlike ru_maxrss
print("LAUNCHER", code, "torch" in sys.modules, int(peak) // 1024)
"""


@pytest.mark.parametrize("style", ["lavender-gold", "weights"])
def test_the_launcher_loads_no_torch_so_it_holds_no_model_memory_while_the_ranks_work(clip, tmp_path: Path,
                                                                                       style) -> None:
    """`stylebatch run` checks the style in a short-lived child process: the launcher itself, alive
    for the whole job beside its ranks, never imports torch (about 300 MB resident)."""
    import sys

    import torch

    from stylebatch.transformer_net import TransformerNet

    if style == "weights":
        style = str(tmp_path / "net.pth")
        torch.save(TransformerNet().state_dict(), style)
    src = clip("in.mp4", size=(64, 48), frames=8)
    result = subprocess.run([sys.executable, "-c", LAUNCHER, "run", str(src), "-o", str(tmp_path / "out.mp4"),
                             "--workers", "2", "--style", style, "--max-side", "32"],
                            capture_output=True, text=True, timeout=300)
    code, torch_loaded, peak_mib = result.stdout.split("LAUNCHER")[-1].split()
    assert code == "0", result.stderr
    assert torch_loaded == "False"
    assert int(peak_mib) < 150, f"launcher peak RSS {peak_mib} MiB"
    assert count_frames(tmp_path / "out.mp4") == 8


BESIDE_THE_RANKS = r"""
import re, sys
from stylebatch import run
from stylebatch.cli import main
stylize = run._stylize
def looked(*args, **kwargs):  # the launcher as the ranks start: what it holds beside them
    rss = re.search(r"VmRSS:\s+(\d+) kB", open("/proc/self/status").read()).group(1)
    print("BESIDE", ",".join(m for m in ("av", "numpy", "torch") if m in sys.modules) or "-", int(rss) // 1024)
    return stylize(*args, **kwargs)
run._stylize = looked
print("CODE", main(sys.argv[1:]))
"""


def test_beside_the_ranks_the_launcher_holds_no_pyav_or_numpy(clip, tmp_path: Path) -> None:
    """Preprocess runs in a child process, as its pod does, and the ranks' memory fit is planned
    without PyAV: the launcher, alive beside the ranks for the whole job, holds about 20 MiB, not 65
    (at 640x360 that was 15% of the whole run's peak; docs/benchmarks.md)."""
    src = clip("in.mp4", size=(64, 48), frames=8, audio=("aac",))
    result = subprocess.run([sys.executable, "-c", BESIDE_THE_RANKS, "run", str(src), "-o", str(tmp_path / "out.mp4"),
                             "--workers", "2", "--style", "lavender-gold", "--max-side", "32"],
                            capture_output=True, text=True, timeout=300)
    assert "CODE 0" in result.stdout, result.stderr
    modules, rss_mib = result.stdout.split("BESIDE")[-1].split()[:2]
    assert modules == "-"
    assert int(rss_mib) < 40, f"launcher RSS {rss_mib} MiB beside the ranks"
    assert result.stderr.count(f"preprocessed {src}: 8 frames") == 1  # the child's own line, passed on once
    assert count_frames(tmp_path / "out.mp4") == 8


@pytest.mark.parametrize("codec", sorted(ENCODERS))
def test_the_intra_only_encoders_are_those_ffmpeg_says(codec: str) -> None:
    """The launcher plans the ranks' memory without PyAV: contract.INTRA_ONLY_ENCODERS must say what
    FFmpeg does (an intra-only encoder of huge frames gets a fresh encoder per frame)."""
    assert (codec in INTRA_ONLY_ENCODERS) == av.Codec(codec, "w").intra_only


FAULTS = r"""
import resource, sys
import numpy as np
from stylebatch.memory import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
def frame():  # a frame's activations: several alive at once, written, then all freed
    layers = [np.ones(int(sys.argv[2]) << 20 >> 3) for _ in range(4)]
frame()  # the first frame maps its pages once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    frame()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.parametrize("mib", [20, 48])  # 48: a 32-channel 720x528 picture, over glibc's largest mmap threshold
def test_a_rank_reuses_freed_activation_memory_instead_of_faulting_in_fresh_pages_every_frame(mib: int):
    """glibc gives freed activations back to the kernel (it maps big blocks afresh, or trims the heap
    when much is free at its top), and the kernel zero-fills them again page by page on the next
    frame (here about 20,000 minor page faults in 10 frames of 4 x 20 MiB). A rank keeps the pages,
    of pictures larger than any mmap threshold too."""
    faults = {mode: int(subprocess.run([sys.executable, "-c", FAULTS, mode, str(mib)], capture_output=True,
                                       text=True, check=True).stdout) for mode in ("default", "reuse")}
    assert faults["default"] >= 10_000, faults  # 40 MiB and more zero-filled again: the cost is real here
    assert faults["reuse"] < faults["default"] // 10, faults


KEPT = r"""
import ctypes, sys
from stylebatch.memory import reuse_freed_memory
assert reuse_freed_memory(int(sys.argv[1]))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
before = rss()
block = libc.malloc(384 << 20)  # a 16000x16000 picture in yuv420p
ctypes.memset(block, 1, 384 << 20)
libc.free(ctypes.c_void_p(block))
print(rss() - before)
"""


@pytest.mark.parametrize("width, height, kept", [
    (1920, 1080, True),  # a rank's activations: their pages stay for the next frame
    (4096, 4096, True),
    (16000, 16000, False),  # were kept too: their holes in the heap made a rank's peak 1.4-1.8 GiB at random
])
def test_a_rank_keeps_freed_memory_except_for_frames_so_huge_their_pictures_fragment_its_heap(width, height, kept):
    """A freed 384 MiB block (a full-size picture) stays in the process only where frames are at
    most 4096x4096; above, it goes back to the kernel at once, and the rank's peak is the same every run."""
    grown = int(subprocess.run([sys.executable, "-c", KEPT, str(width * height)], capture_output=True, text=True,
                               check=True).stdout)
    assert (grown > 300) == kept, f"{grown} MiB still held after the free"


ARENAS = r"""
import ctypes, re, sys, threading
from stylebatch.memory import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = libc.open_memstream.restype = ctypes.c_void_p
blocks = []
thread = threading.Thread(target=lambda: blocks.append(libc.malloc(1 << 20)))  # a pipeline's thread allocates
thread.start()
thread.join()
libc.fflush(None)
size, buffer = ctypes.c_size_t(), ctypes.c_char_p()
stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
assert stream
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
print(len(re.findall(r"<heap nr=", buffer.value.decode())))
"""


@pytest.mark.parametrize("mode, arenas", [("default", 2), ("reuse", 1)])
def test_a_pipelines_thread_allocates_from_the_heap_whose_freed_memory_is_kept(mode, arenas):
    """glibc gives a new thread an arena of its own, whose heaps go back to the kernel as they
    empty, whatever the trim threshold: a rank's second pipeline (a thread) faulted its activations
    in afresh every frame (9,000-27,000 minor faults a 640x360 frame of a TransformerNet in bf16 here,
    when it had an arena of its own). After reuse_freed_memory every thread allocates from the one
    heap whose freed memory is kept (glibc's malloc_info lists the arenas)."""
    found = int(subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True,
                               check=True).stdout)
    assert found == arenas
