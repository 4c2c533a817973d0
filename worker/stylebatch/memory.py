"""How much memory a stylize rank needs, what the machine has, and the caps that follow.

A rank's memory is bounded by what it stylizes, not by the input's size: with --max-side frames are
decoded straight at the stylized size (video.ChunkReader: scaled in the colour conversion, and an
intra-only decoder such as MJPEG's makes the small picture itself, FFmpeg's lowres) and scaled up
only in the encoder (encoder.PartWriter). What stays full size is the encoder's input and its own
buffers: FFmpeg's MJPEG encoder keeps copies of the pictures it coded, so huge frames get a fresh
encoder per frame (`encoder_per_frame`). Codec threads each add buffers; `codec_threads` caps them.

`rank_bytes` is a deliberately generous estimate from measurements on CPU (the nets peak at about
430 bytes per stylized pixel per frame; a 16000x16000 MJPEG at --max-side 256 peaks at 1.2 GiB in
its rank), used before any work to refuse a frame size that cannot fit (`check_fits`) and to start
no more ranks than fit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

from stylebatch.errors import StylebatchError

GiB = 1024 ** 3
RANK_BASE_BYTES = 512 * 1024 ** 2  # torch, the model, the codecs' fixed costs (measured: 280 MiB)
NET_BYTES_PER_PIXEL = 512  # activations per stylized pixel and frame of a batch (float32, CPU)
DECODE_BYTES_PER_PIXEL = 4  # a full-size decoded frame and the decoder's working copies (measured: 3)
ENCODE_BYTES_PER_PIXEL = 8  # the encoder's full-size input and the pictures it keeps (mjpeg: 6, measured)
ENCODE_PER_FRAME_BYTES_PER_PIXEL = 4  # the same with a fresh encoder per frame (measured: 3.6)
CODEC_THREAD_BYTES_PER_PIXEL = 12  # what each extra codec thread adds per full-size pixel (mjpeg: measured)
CODEC_THREADS_BUDGET = 1 * GiB
ENCODER_PER_FRAME_PIXELS = 4096 * 4096
USABLE_SHARE = 0.85  # of the machine's memory, for all ranks together


def codec_threads(width: int, height: int, threads: int) -> int:
    """Threads for a decoder or encoder of width x height frames: `threads`, fewer when the frames are
    so large that the threads' own buffers would pass CODEC_THREADS_BUDGET (0, auto, stays 0 unless capped)."""
    cap = max(1, CODEC_THREADS_BUDGET // max(1, width * height * CODEC_THREAD_BYTES_PER_PIXEL))
    if threads <= 0:
        return 0 if cap >= (os.cpu_count() or 1) else cap
    return min(threads, cap)


def encoder_per_frame(settings, width: int, height: int) -> bool:
    """Whether frames of width x height are encoded with a fresh encoder each (encoder.PartWriter):
    an intra-only codec (MJPEG) at constant quality, for frames over ENCODER_PER_FRAME_PIXELS, where
    the full-size pictures FFmpeg's MJPEG encoder keeps (three at any time) would dominate a rank's
    memory. The bytes are the same: each frame is coded on its own anyway."""
    from stylebatch.contract import INTRA_ONLY_ENCODERS

    return (width * height > ENCODER_PER_FRAME_PIXELS and settings.bitrate is None
            and settings.codec in INTRA_ONLY_ENCODERS)


def rank_bytes(width: int, height: int, work_width: int, work_height: int, batch: int, gpu: bool,
               decoded_small: bool = False, per_frame_encoder: bool = False, pipelines: int = 1) -> int:
    """Host memory of one rank stylizing width x height frames at work_width x work_height with
    `pipelines` chunks at once (each its own decoder, encoder and activations; torch and the
    network once); decoded_small: the decoder itself makes frames near the working size (no
    full-size decode)."""
    encode = ENCODE_PER_FRAME_BYTES_PER_PIXEL if per_frame_encoder else ENCODE_BYTES_PER_PIXEL
    full = width * height * (encode + (0 if decoded_small else DECODE_BYTES_PER_PIXEL))
    net = 0 if gpu else batch * work_width * work_height * NET_BYTES_PER_PIXEL
    return RANK_BASE_BYTES + pipelines * (full + net)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8


def one_heap() -> bool:
    """Every thread of this process allocates from the one heap (glibc's M_ARENA_MAX 1): see
    reuse_freed_memory. Call it before the threads that allocate start (before torch). Returns
    whether glibc took it (False on other C libraries, where nothing changes)."""
    return _mallopt([(_M_ARENA_MAX, 1)])


def reuse_freed_memory(frame_pixels: int = 0) -> bool:
    """Let this process reuse the memory of freed activations instead of returning it to the kernel,
    for a rank whose full-size frames have frame_pixels pixels (0: frames of no special size).

    A style network allocates and frees tens of MiB per layer per frame. glibc serves blocks above
    its mmap threshold with fresh mmaps, zero-filled page by page: 4x the minor page faults and about
    10% of a rank's time on the CPU (docs/benchmarks.md). Raising the threshold to its maximum
    (32 MiB) and never trimming the heap keeps those pages mapped; and since that maximum is below
    one 32-channel picture of 720x528 (49 MiB) or more, glibc maps no block of its own at all: the
    larger ones come from the heap too. Peak memory is unchanged (measured: a little lower), since
    the freed blocks are reused by the next frame. And every thread allocates from that one heap
    (one_heap): glibc gives a thread of its own an arena of its own, of heaps it hands back to the
    kernel as they empty whatever the trim threshold, so a rank's second pipeline (a thread) faulted
    its activations in afresh every frame: 20,900 minor faults a frame with a TransformerNet at
    640x360 in bf16 (a 240-frame run of 2 pipelines: 1.68 M faults and 3.5 s of system time, 0.13 M
    and 0.7 s in one arena, 8% sooner).

    Frames over ENCODER_PER_FRAME_PIXELS get the one heap only: their full-size pictures (384 MiB
    each at 16000x16000: the colour converter's and the encoder's) left holes in a heap that kept
    them, which the next frame's did not always fit, and a rank's peak went from 1.4 to 1.8 GiB at
    random. Mapped and unmapped by themselves, as glibc does by default, their page faults are
    nothing beside their conversion. Returns whether glibc took the settings (False on other C
    libraries, where nothing changes)."""
    if frame_pixels > ENCODER_PER_FRAME_PIXELS:
        return one_heap()
    return _mallopt([(_M_MMAP_THRESHOLD, 32 * 1024 * 1024), (_M_TRIM_THRESHOLD, 2 ** 31 - 1), (_M_MMAP_MAX, 0),
                     (_M_ARENA_MAX, 1)])


def _mallopt(settings: list[tuple[int, int]]) -> bool:
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(bool(mallopt(option, value)) for option, value in settings)


def machine_bytes() -> int:
    """Memory this process may use: the machine's, or the lowest memory cgroup limit above it when
    lower (v1 or v2, where /proc/self/cgroup places this process and every group above it)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in _cgroup_limits():
        total = min(total, limit)
    return total


def _cgroup_limits() -> list[int]:
    texts = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in ["0::/", "9:memory:/", *lines]:  # the mount roots too (a container's own cgroup)
        _, controllers, path = line.split(":", 2)
        parts = [p for p in path.split("/") if p]
        if controllers == "":  # v2: memory.max of this group and each one above
            folders = ["/".join(parts[:i]) for i in range(len(parts) + 1)]
            texts += [_read(f"/sys/fs/cgroup/{folder}/memory.max".replace("//", "/")) for folder in folders]
        elif "memory" in controllers.split(","):  # v1: the limit of this group or any above
            stat = _read(f"/sys/fs/cgroup/memory/{'/'.join(parts)}/memory.stat".replace("//", "/"))
            texts += [v for k, _, v in (row.partition(" ") for row in stat.splitlines())
                      if k == "hierarchical_memory_limit"]
            texts.append(_read(f"/sys/fs/cgroup/memory/{'/'.join(parts)}/memory.limit_in_bytes".replace("//", "/")))
    return [int(t) for t in (t.strip() for t in texts) if t.isdigit()]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def check_fits(need: Callable[[int | None, int], int], width: int, height: int, max_side: int | None, batch: int,
               available: int | None = None) -> int:
    """How many ranks fit in this machine's memory (at least 1), where need(max_side, batch) is the
    bytes they take; when not even one does, a one-line StylebatchError with what would fit: the
    batch size or the largest --max-side (of common sizes) that does, else a machine with more memory."""
    usable = int((available or machine_bytes()) * USABLE_SHARE)
    per_rank = need(max_side, batch)
    if per_rank <= usable:
        return max(1, usable // per_rank)
    side = f"--max-side {max_side}" if max_side else "full size"
    advice = _what_fits(need, max(width, height), max_side, batch, usable)
    raise StylebatchError(f"frames of {width}x{height} at {side} need about {per_rank / GiB:.1f} GiB per rank, more "
                          f"than this machine's {usable / GiB:.1f} GiB: {advice}")


# train-style on the CPU (float32): torch, VGG19 and the net, then per pixel of a step's crops the
# activations of the net and of VGG19 with their gradients. Measured peak RSS of one step: batch 1 and 4
# at 256, 1, 2 and 4 at 512: 0.85, 1.90, 1.98, 3.41, 6.04 GiB (5.4-5.7 KiB a pixel over 0.5 GiB).
TRAIN_BASE_BYTES = 512 * 1024 ** 2
TRAIN_BYTES_PER_PIXEL = 6 * 1024


def check_training_fits(batch: int, size: int, available: int | None = None) -> None:
    """A one-line StylebatchError when a training step of `batch` crops of size x size would not fit in
    this machine's memory (it would be killed without a word): with the --batch-size, else the --size,
    that fits."""
    from stylebatch.requests import MIN_MAX_SIDE

    total = available or machine_bytes()
    usable = int(total * USABLE_SHARE)
    per_crop = TRAIN_BYTES_PER_PIXEL * size * size
    need = TRAIN_BASE_BYTES + per_crop * batch
    if need <= usable:
        return
    fits = max(0, usable - TRAIN_BASE_BYTES) // per_crop
    side = math.isqrt(max(0, usable - TRAIN_BASE_BYTES) // TRAIN_BYTES_PER_PIXEL) // 16 * 16  # CROP_MULTIPLE divides 16
    if fits:
        advice = f"give --batch-size {fits}{' or less' if fits > 1 else ''}"
    elif side >= MIN_MAX_SIDE:
        advice = f"give --size {side} or less{' and --batch-size 1' if batch > 1 else ''}"
    else:
        advice = "train on a machine with more memory"
    raise StylebatchError(f"training {batch} {'crop' if batch == 1 else 'crops'} of {size}x{size} a step needs "
                          f"about {need / GiB:.1f} GiB, more than the {usable / GiB:.1f} GiB it may use here "
                          f"({USABLE_SHARE:.0%} of {total / GiB:.1f} GiB): {advice}")


SUGGESTED_SIDES = (3840, 2560, 1920, 1280, 1024, 720, 512, 384, 256)


def _what_fits(need: Callable[[int | None, int], int], long_side: int, max_side: int | None, batch: int,
               usable: int) -> str:
    # the largest batch under the one given that fits (need grows with the batch): halving, not counting
    # down, which took 26 minutes of a core for --batch-size 1000000000
    fits, over = 0, batch
    while over - fits > 1:
        mid = (fits + over) // 2
        fits, over = (mid, over) if need(max_side, mid) <= usable else (fits, mid)
    if fits:
        return f"give --batch-size {fits}{' or less' if fits > 1 else ''}, or run on a machine with more memory"
    smaller = [s for s in SUGGESTED_SIDES if s < min(long_side, max_side or long_side)]
    fits = next((s for s in smaller if need(s, 1) <= usable), None)
    if fits is None:  # what is left is torch and the full-size frames in the codecs
        return "no --max-side makes it fit; run on a machine with more memory"
    batch_1 = " and --batch-size 1" if batch > 1 and need(fits, batch) > usable else ""
    return f"give --max-side {fits} or less{batch_1}, or run on a machine with more memory"


def on_gpu(device: str) -> bool:
    """True when --device (auto, cpu, cuda...) will stylize on a GPU here."""
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


MAX_LOWRES = 3  # FFmpeg's lowres: MJPEG's decoder can make frames of 1/2, 1/4 or 1/8 the size
LOWRES_DECODERS = frozenset({"mjpeg"})  # intra-only, with lowres (tried: tests/test_memory.py)


def lowres(decoder: str, coded: tuple[int, int], wanted: tuple[int, int]) -> int:
    """How many halvings the decoder (FFmpeg's name for it) may apply while decoding (FFmpeg's lowres: MJPEG's IDCT makes
    the smaller picture, so a full-size frame never exists), keeping the frames at least `wanted`
    (width, height). 0 for other decoders: most have no lowres, and where a decoder of predicted
    frames has one (MPEG-4 Part 2, MPEG-2) its pictures drift from what the encoder meant."""
    if decoder not in LOWRES_DECODERS:
        return 0
    shift = 0
    while shift < MAX_LOWRES and all(-(-c // 2 ** (shift + 1)) >= w for c, w in zip(coded, wanted)):
        shift += 1
    return shift


def default_batch(gpu: bool) -> int:
    """Frames per model call when --batch-size is not given. On a CPU one frame at a time is fastest
    (a batch of 4 ran TransformerNet about 20% slower per frame at 640x360: its activations no longer
    fit the caches) and keeps a rank's memory to one frame's activations (docs/benchmarks.md)."""
    return 8 if gpu else 1


def ranks_that_fit(m, max_side: int | None, batch_size: int | None, gpu: bool, ranks_here: int = 1,
                   pipelines: int = 1) -> int:
    """Pre-flight for a stylize of manifest m's frames: how many ranks of `pipelines` pipelines fit in
    this machine's memory; a one-line StylebatchError naming --max-side when `ranks_here` ranks (or
    even one) cannot."""
    from stylebatch.styles import working_size

    per_frame_encoder = encoder_per_frame(m.encoder, m.display_width, m.display_height)

    def need(side: int | None, batch: int) -> int:
        height, width = working_size(m.display_height, m.display_width, side)
        coded = (width, height) if m.rotation % 180 == 0 else (height, width)
        small = bool(m.video_codec) and lowres(m.video_codec, (m.coded_width, m.coded_height), coded) > 0
        return ranks_here * rank_bytes(m.display_width, m.display_height, width, height, batch, gpu,
                                       decoded_small=small, per_frame_encoder=per_frame_encoder, pipelines=pipelines)

    fit = check_fits(need, m.display_width, m.display_height, max_side, batch_size or default_batch(gpu))
    return fit * ranks_here


# At most this many pipelines a rank runs by default (`default_pipelines`): each holds its own frames,
# activations and encoder.
MAX_DEFAULT_PIPELINES = 4


def default_pipelines(gpu: bool, rank_cpus: int) -> int:
    """Chunks a rank stylizes at once when --pipelines is not given: 1 beside a GPU (it runs one
    network call at a time anyway); on the CPU one per core of the rank's share, at most
    MAX_DEFAULT_PIPELINES, each with rank_cpus // pipelines torch threads. Torch scales poorly across
    threads (each layer waits for its slowest thread): on 2 cores two pipelines of 1 thread
    stylized about 1.25x as many frames a second as one of 2 (the built-in net at 640x360,
    docs/benchmarks.md), the speed of two ranks, with one copy of torch and the network instead of
    two (about 270 MiB each)."""
    return 1 if gpu else max(1, min(rank_cpus, MAX_DEFAULT_PIPELINES))


def pipelines_that_fit(m, max_side: int | None, batch_size: int | None, gpu: bool, ranks_here: int,
                       wanted: int) -> int:
    """The most pipelines, at most `wanted`, with which this machine's `ranks_here` ranks fit in its
    memory (ranks_that_fit); its one-line StylebatchError when not even one pipeline does."""
    for pipelines in range(wanted, 1, -1):
        try:
            if ranks_that_fit(m, max_side, batch_size, gpu, ranks_here=ranks_here, pipelines=pipelines):
                return pipelines
        except StylebatchError:
            continue
    ranks_that_fit(m, max_side, batch_size, gpu, ranks_here=ranks_here)
    return 1
