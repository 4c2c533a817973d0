"""The contract between the worker and everything that runs it (the CLI's callers, the operator,
scripts): exit codes, the error line, the output containers and codecs, the built-in style names and
the work dir's layout. Pure: no torch, no PyAV, no Azure SDK; the operator imports it.

Every value here is the one source of its rule: the worker's flags (stylebatch.requests), the
encoder, the operator's checks and the CRD read them from here.
"""

from __future__ import annotations

import contextlib
import re
from contextvars import ContextVar
from typing import Iterator

# --- exit codes and the error line ---

ERROR_PREFIX = "stylebatch: error: "  # every failure ends in exactly one line starting with this

EXIT_BAD_INPUT = 2  # bad input or settings: retrying the same command cannot help
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: storage unreachable, 5xx after retries, timeouts, token failures: retry
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2
EXIT_TERMINATED = 143  # SIGTERM (kill, timeout, docker stop, Kubernetes): 128 + 15
EXIT_HUNG_UP = 129  # SIGHUP (the terminal or ssh session closed): 128 + 1

# Kubernetes fails a job at once on EXIT_BAD_INPUT (the Jobs' podFailurePolicy) and retries every other
# failure within its backoff limit; only these codes are stylebatch's own.

# --- MPI ---

# MPICH's process manager proxy (hydra_pmi_proxy) exports the machine's topology to a hard-coded
# /tmp/hydra_hwloc_xmlfile_* for its ranks and leaves it there when a rank aborts. With HWLOC_XMLFILE
# in its environment it writes none (the ranks then read the topology themselves); the file it names
# need not exist. `stylebatch run` sets it for its mpiexec, the operator in the MPIJob's launcher, and
# the worker image's sshd (docker/worker/sshd_config: SetEnv) for the proxies started over ssh.
HWLOC_XMLFILE_ENV = "HWLOC_XMLFILE"


# The worker image's sshd for the MPIJob's ranks (docker/worker/sshd_config and the ssh client's
# config there): the workers' readiness probe, and the launcher's wait for them (stylebatch.launcher).
SSHD_PORT = 2222


def no_topology_file(folder: str) -> str:
    """HWLOC_XMLFILE's value for MPI runs whose scratch folder is `folder`."""
    return f"{folder.rstrip('/')}/stylebatch-no-topology.xml"


# `stylebatch run` starts its ranks while preprocess still runs, where it can already tell how many
# and with which style: each rank imports torch (the slow part of its start), then waits for the file
# this variable names before it reads the work dir. The launcher creates the file once preprocess is
# done and the rank count holds; otherwise it stops them and starts the right ones.
START_GATE_ENV = "STYLEBATCH_START_GATE"

# --- output containers and video codecs ---

CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".m4v": "mp4", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
"""Output extension -> FFmpeg muxer. The extension of the output picks the container."""
OUTPUT_EXTENSIONS = tuple(CONTAINERS)

CODEC_ALIASES = {
    "h264": "libx264", "x264": "libx264", "avc": "libx264", "libx264": "libx264",
    "hevc": "libx265", "h265": "libx265", "x265": "libx265", "libx265": "libx265",
    "vp9": "libvpx-vp9", "libvpx-vp9": "libvpx-vp9",
    "nvenc": "h264_nvenc", "h264_nvenc": "h264_nvenc", "hevc_nvenc": "hevc_nvenc",
    "mjpeg": "mjpeg",
}
"""What users type for --codec (spec.encoder.codec) -> FFmpeg encoder."""
ENCODERS = frozenset(CODEC_ALIASES.values())
FLAG_NAME = {"libx264": "h264", "libx265": "hevc", "libvpx-vp9": "vp9"}  # the --codec name users type
ALLOWED = {
    "mp4": {"libx264", "libx265", "libvpx-vp9", "h264_nvenc", "hevc_nvenc"},
    "mov": {"libx264", "libx265", "h264_nvenc", "hevc_nvenc", "mjpeg"},
    "matroska": set(ENCODERS),
    "webm": {"libvpx-vp9"},
    "avi": {"mjpeg"},  # AVI has no presentation timestamps: intra-only keeps every frame exact
}
HARDWARE_ENCODERS = frozenset({"h264_nvenc", "hevc_nvenc"})
"""Encoders a machine may lack (NVENC needs an NVIDIA GPU and driver); PyAV's FFmpeg has the others."""
INTRA_ONLY_ENCODERS = frozenset({"mjpeg"})  # every frame coded on its own (tests check it against FFmpeg)
DEFAULT_CODEC = {"mp4": "libx264", "mov": "libx264", "matroska": "libx264", "webm": "libvpx-vp9", "avi": "mjpeg"}
QUALITY = {  # crf/quality scale per encoder: (default, low, high)
    "libx264": (18, 0, 51), "libx265": (20, 0, 51), "libvpx-vp9": (30, 0, 63),
    "h264_nvenc": (20, 0, 51), "hevc_nvenc": (22, 0, 51), "mjpeg": (3, 2, 31),
}
_X26X_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
PRESETS = {
    "libx264": _X26X_PRESETS, "libx265": _X26X_PRESETS,
    "libvpx-vp9": ("realtime", "good", "best"),
    "h264_nvenc": tuple(f"p{i}" for i in range(1, 8)), "hevc_nvenc": tuple(f"p{i}" for i in range(1, 8)),
    "mjpeg": (),
}
DEFAULT_PRESET = {  # libx264 veryfast: measured (benchmarks/bench_x264.py, docs/benchmarks.md)
    "libx264": "veryfast", "libx265": "medium", "libvpx-vp9": "good", "h264_nvenc": "p5", "hevc_nvenc": "p5"}
X264_TUNING = {"veryfast": "partitions=i8x8,i4x4:me=dia"}
"""x264 settings stylebatch sets over a preset's own (`x264-params`). At `veryfast`, the default, x264
neither searches inter partitions smaller than a macroblock (p8x8, b8x8) nor moves its motion search
in hexagons, only diamonds (superfast's choices for both): on painted frames this made x264
1.15-1.58x as fast, its bytes at equal quality within 3% of x264's own veryfast either way, by
footage, painting and size (`benchmarks/bench_x264.py --match --params`, docs/benchmarks.md,
twenty-fourth pass). Other presets are x264's own."""
BITRATE_PATTERN = r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*(?:bps|b)?\s*"  # 4M, 800k, 2500000

# --- styles ---

STYLE_NAMES = (
    "pastel-gold", "ink-and-lemon", "ink-wash", "tangled-ribbons", "crimson-and-gold", "warm-brushwork",
    "navy-honeycomb", "primary-colors", "pastel-sketch", "teal-beadwork", "terracotta", "ink-on-parchment",
    "lavender-gold", "lime-stained-glass", "ice-wash", "pastel-tiles", "blue-streaks", "brick-grid",
    "sepia-woodcut", "blue-gold-swirls", "red-ember", "cut-paper", "cream-crackle", "green-nocturne",
    "indigo-on-cream", "copper-mosaic",
)
"""The built-in styles in index order (`--style 12` is STYLE_NAMES[12]); stylebatch.models holds
their weights and descriptions."""
DEFAULT_STYLE = "lavender-gold"
NO_STYLE = ("names no style: give a built-in's name or index (`stylebatch styles`), a painting, a .pth file "
            f"or a blend; leave --style out for the default, {DEFAULT_STYLE}")


def style_problem(style: str) -> str | None:
    """Why a given --style value names no style ("", blanks, commas alone), or None. Only an absent
    style (None: no --style) means DEFAULT_STYLE; an empty one (an unset shell variable) is refused,
    never painted as the default. The one check of every --style: the requests (run, stylize, watch,
    the API), preview, and parsing a style (styles.parse_style)."""
    return None if style.replace(",", " ").strip() else NO_STYLE


# --style: a built-in name, a painting to imitate or fast_neural_style weights (files by these
# suffixes, or any path/URI), or a blend of them: "starry.jpg:0.7,lavender-gold:0.3".
STYLE_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
STYLE_WEIGHTS_SUFFIXES = (".pth", ".pt", ".model")
_WEIGHT = re.compile(r"\s*([-+0-9.eE]+|nan|inf)?\s*", re.I)


def split_style_term(term: str) -> tuple[str, str]:
    """"name:0.5" -> ("name", "0.5"); a URI's own colons ("az://c/x.jpg") are not a weight."""
    head, sep, tail = term.rpartition(":")
    return (head.strip(), tail) if sep and _WEIGHT.fullmatch(tail) else (term.strip(), "")


_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(ref: str) -> bool:
    """A URI (`az://`, `https://`, `file://` ...), not a local path."""
    return bool(_URI_SCHEME.match(ref.strip()))


def is_az(ref: str) -> bool:
    """An az:// URI: there a '#' is a character of the blob's name (as storage.location reads it), not
    the start of a fragment; only '?' ends the name."""
    return ref.strip()[:5].lower() == "az://"


def file_part(ref: str) -> str:
    """What names the file of a style term, path or URI: a local path whole ('#' and '?' are characters
    of a file's name: `mosaic#2.pth`, `what?.jpg`); a URI without its query string (a SAS) and, but in
    az:// (where '#' is part of the blob's name, as storage.location reads it), its fragment."""
    ref = ref.strip()
    if not is_uri(ref):
        return ref
    if is_az(ref):
        return ref.split("?", 1)[0]
    return re.split(r"[?#]", ref, maxsplit=1)[0]


def is_style_file(ref: str) -> bool:
    """A painting or weights file (a path or URI), not a built-in name."""
    path = file_part(ref)
    return "/" in path or "\\" in path or is_style_name(path)


def is_style_name(name: str) -> bool:
    """A painting's or weights file's name, path or URI, by its suffix (`file_part`: a URI's before its
    query string; a local name's whole)."""
    return file_part(name).lower().endswith(STYLE_IMAGE_SUFFIXES + STYLE_WEIGHTS_SUFFIXES)


def is_image_name(name: str) -> bool:
    """A painting's file name or URI, by its suffix (`file_part`: a URI's before its query string; a
    local name's whole)."""
    return file_part(name).lower().endswith(STYLE_IMAGE_SUFFIXES)


DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # --precision, spec.processing.precision
# `--precision auto` paints in bf16 on a CPU only where each rank times bf16 at least this many times as
# fast as fp32 for the network it runs (models.cpu_bf16_speedup): bf16 costs some exactness and a checked frame
BF16_MIN_SPEEDUP = 1.15
# The built-in styles auto may paint in bf16 on such a CPU: each at least 46 dB from fp32 on real frames,
# fog, fades and flat frames, on two CPUs (benchmarks/bench_precision.py: an Intel Xeon, 2026-11-30, and
# an AMD EPYC Zen 4, 2026-12-05; docs/benchmarks.md). The other nine measured 38-46 dB and stay fp32.
BF16_BUILTIN_STYLES = frozenset({
    "blue-streaks", "cream-crackle", "crimson-and-gold", "green-nocturne", "ice-wash", "indigo-on-cream",
    "ink-on-parchment", "ink-wash", "lavender-gold", "lime-stained-glass", "navy-honeycomb", "pastel-gold",
    "primary-colors", "red-ember", "sepia-woodcut", "terracotta", "warm-brushwork",
})
# what auto picks (models._precision), for --precision's help and the CRD
PRECISION_AUTO = (f"fp16 on a GPU; on a CPU with native bf16 (AVX-512 BF16, AMX) bf16 for .pth networks and "
                  f"{len(BF16_BUILTIN_STYLES)} of the 26 built-in styles (lavender-gold among them; the "
                  f"others and paintings measured under 46 dB against fp32), where each rank times it at "
                  f"{BF16_MIN_SPEEDUP}x fp32's speed or more on one core, checked against fp32 on each rank's "
                  f"first frame (under 45 dB: fp32); else fp32")


def precision_problem(precision: str | None, device: str) -> str | None:
    """Why `precision` cannot run on `device` (cpu, cuda; auto: not known yet), or None. Checked before
    any work starts: by the request (--device cpu), by `stylebatch run` once it knows no GPU is here, by
    the operator (gpusPerWorker 0), and by the ranks (stylebatch.models)."""
    if precision == "fp16" and device == "cpu":
        return "fp16 needs a CUDA device; on a CPU use fp32, bf16 or auto"
    return None

# --- training ---

CHECKPOINT_SUFFIX = ".ckpt"


def beside_name(output: str, suffix: str) -> str:
    """`<output><suffix>`: a file beside a local output, a blob beside a blob one (a URI's query
    string, a SAS, stays at the end, after the new name)."""
    base, query = output.split("?", 1) if "://" in output and "?" in output else (output, "")
    return base + suffix + (f"?{query}" if query else "")


def checkpoint_of(weights: str) -> str:
    """Where `stylebatch train-style -o WEIGHTS` keeps its resumable checkpoint: beside the weights,
    WEIGHTS.ckpt (a file, or a blob like them). The one rule for its name: the training, and the
    operator's postprocess that deletes a job's once it succeeded."""
    return beside_name(weights, CHECKPOINT_SUFFIX)

# --- the work dir: the only interface between the stages ---

OWNER_NAME = "stylebatch-work.json"  # written first: stylebatch made this work dir, and what it wrote there
LOCK_NAME = "stylebatch.lock"  # one writer at a time
MANIFEST_NAME = "manifest.json"  # written last by preprocess: its existence means preprocess finished
STYLIZE_NAME = "stylize.json"  # the style settings the parts were made with, and their encoding
# stylize.json's "encoding" (encoder.part_encoding) holds this: raise it whenever parts of the same
# encoder settings come out encoded otherwise in a way the encoder's recorded options do not show (a
# colour conversion, a range, an encoder's own defaults), so that a work dir resumed across that
# upgrade never concatenates parts of both. A record without "encoding" (from before this) is taken
# for an unknown encoding: its parts are stylized again (`stylize --restyle`, run's own work dir) or
# refused (a user's --work), never resumed beside new ones.
PART_ENCODING_VERSION = 1
PARTS_DIR = "parts"  # one encoded part per chunk of frames
PART_EXT = ".mkv"  # parts are Matroska whatever the final container: it holds every codec above
SOURCE_STEM = "source"  # the input's byte copy: source.<input's extension>
WORK_DIR_NAME = ".stylebatch-work"  # the operator's default work dirs live under <output's folder>/ this

# Outputs name the job that wrote them, so that a watch never takes them for new uploads: every
# blob the worker writes while JOB_ENV is set carries metadata OUTPUT_TAG=<job> (stylebatch.trigger).
JOB_ENV = "STYLEBATCH_JOB"
OUTPUT_TAG = "stylebatchjob"  # blob metadata keys are C# identifiers: letters, digits, underscores
# ...and, where JOB_UID_ENV is set (the operator's pods: the StyleTransferJob's uid), OUTPUT_UID_TAG=<uid>:
# which job of that name wrote it, so that a postprocess retried after it published knows its own video.
JOB_UID_ENV = "STYLEBATCH_JOB_UID"
OUTPUT_UID_TAG = "stylebatchjobuid"


# A stylebatch.stylize_video call's work, in its own process (`api_call`) and in the stage processes it
# starts (this variable, "api"): its caller gives `work=`, not --work, and is told so.
CALLER_ENV = "STYLEBATCH_CALLER"
API_CALLER = "api"
_API_CALL: ContextVar[bool] = ContextVar("stylebatch_api_call", default=False)


@contextlib.contextmanager
def api_call() -> Iterator[None]:
    """Within the block, this thread's work is a stylize_video call's (called_by_api)."""
    token = _API_CALL.set(True)
    try:
        yield
    finally:
        _API_CALL.reset(token)


def called_by_api(environ=None) -> bool:
    """Whether the work at hand is a stylebatch.stylize_video call's: in its own thread (api_call), or
    in a stage process it started (CALLER_ENV)."""
    import os

    return _API_CALL.get() or (os.environ if environ is None else environ).get(CALLER_ENV) == API_CALLER


def fresh_work() -> str:
    """How a refusal names another work dir to the one reading it: "a fresh --work" on the command
    line; in a StyleTransferJob's pod (run_by_operator) in the spec's words, for its user writes no
    flags; to a stylize_video caller (called_by_api) as its argument."""
    import os

    if run_by_operator(os.environ):
        return "another spec.workDir, or none (a new job gets a work dir of its own)"
    if called_by_api():
        return "another work= folder, empty or new"
    return "a fresh --work"


def run_by_operator(environ) -> bool:
    """Whether this process runs in a pod of a StyleTransferJob (the operator sets JOB_UID_ENV in every
    container it makes, and the MPIJob's launcher hands it to the ranks; nothing else sets it): its user
    writes a spec, not the command's flags, so what the worker tells them to do is said in spec terms."""
    return bool(environ.get(JOB_UID_ENV, "").strip())
