"""How much memory a stylize rank needs, what the machine has, and the caps that follow.

A rank's memory is bounded by what it stylizes, not by the input's size: with --max-side frames are
decoded straight at the stylized size (video.ChunkReader) and scaled up only in the encoder
(encoder.PartWriter). What stays full size is the codecs' own buffers, which grow with each codec
thread; `codec_threads` caps threads for very large frames. `rank_bytes` is a deliberately generous
estimate (measured on CPU: the nets peak at about 430 bytes per stylized pixel per frame), used before
any work to refuse a frame size that cannot fit (`check_fits`) and to start no more ranks than fit.
"""

from __future__ import annotations

import os
from pathlib import Path

from stylebatch.errors import StylebatchError

GiB = 1024 ** 3
RANK_BASE_BYTES = 768 * 1024 ** 2  # torch, the model, the codecs' fixed costs, batches in flight
NET_BYTES_PER_PIXEL = 512  # activations per stylized pixel and frame of a batch (float32, CPU)
FULL_FRAME_BYTES_PER_PIXEL = 12  # decoded frame, encoder input and its working copies (measured: about 7)
CODEC_THREAD_BYTES_PER_PIXEL = 12  # what each extra codec thread adds per full-size pixel (mjpeg: measured)
CODEC_THREADS_BUDGET = 1 * GiB
USABLE_SHARE = 0.85  # of the machine's memory, for all ranks together


def codec_threads(width: int, height: int, threads: int) -> int:
    """Threads for a decoder or encoder of width x height frames: `threads`, fewer when the frames are
    so large that the threads' own buffers would pass CODEC_THREADS_BUDGET (0, auto, stays 0 unless capped)."""
    cap = max(1, CODEC_THREADS_BUDGET // max(1, width * height * CODEC_THREAD_BYTES_PER_PIXEL))
    if threads <= 0:
        return 0 if cap >= (os.cpu_count() or 1) else cap
    return min(threads, cap)


def rank_bytes(width: int, height: int, work_width: int, work_height: int, batch: int, gpu: bool) -> int:
    """Host memory of one rank stylizing width x height frames at work_width x work_height."""
    full = width * height * FULL_FRAME_BYTES_PER_PIXEL
    net = 0 if gpu else batch * work_width * work_height * NET_BYTES_PER_PIXEL
    return RANK_BASE_BYTES + full + net


def machine_bytes() -> int:
    """Memory this process may use: the machine's, or its cgroup's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def check_fits(per_rank: int, width: int, height: int, max_side: int | None, available: int | None = None) -> int:
    """How many ranks fit in this machine's memory (at least 1); a one-line StylebatchError naming
    --max-side when not even one does."""
    usable = int((available or machine_bytes()) * USABLE_SHARE)
    if per_rank > usable:
        side = f"--max-side {max_side}" if max_side else "full size"
        raise StylebatchError(
            f"frames of {width}x{height} at {side} need about {per_rank / GiB:.1f} GiB per rank, more than "
            f"this machine's {usable / GiB:.1f} GiB: give a smaller --max-side (e.g. --max-side 1920) "
            f"or --batch-size 1, or run on a machine with more memory")
    return max(1, usable // per_rank)


def on_gpu(device: str) -> bool:
    """True when --device (auto, cpu, cuda...) will stylize on a GPU here."""
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def default_batch(gpu: bool) -> int:
    """Frames per model call when --batch-size is not given. On a CPU one frame at a time is fastest
    (a batch of 4 ran TransformerNet about 20% slower per frame at 640x360: its activations no longer
    fit the caches) and keeps a rank's memory to one frame's activations (docs/benchmarks.md)."""
    return 8 if gpu else 1


def ranks_that_fit(m, max_side: int | None, batch_size: int | None, gpu: bool, ranks_here: int = 1) -> int:
    """Pre-flight for a stylize of manifest m's frames: how many ranks fit in this machine's memory;
    a one-line StylebatchError naming --max-side when `ranks_here` ranks (or even one) cannot."""
    from stylebatch.models import working_size

    height, width = working_size(m.display_height, m.display_width, max_side)
    per_rank = rank_bytes(m.display_width, m.display_height, width, height,
                          batch_size or default_batch(gpu), gpu)
    fit = check_fits(per_rank * ranks_here, m.display_width, m.display_height, max_side)
    return fit * ranks_here
