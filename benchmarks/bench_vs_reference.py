"""stylebatch against the Azure reference design, both on blob storage (Azurite); prints markdown tables.

    .venv/bin/python benchmarks/bench_vs_reference.py                        # 640x360, 4 s, max side 256
    .venv/bin/python benchmarks/bench_vs_reference.py --seconds 20 --size 1280x720 --max-side 360
    .venv/bin/python benchmarks/bench_vs_reference.py --input samples/sample.mp4

The reference design ("Batch scoring of deep learning models", Azure/Batch-Scoring-Deep-Learning-
Models-With-AML / -AKS) is re-implemented here as published, step by step, each step its own process:

  preprocess   ffmpeg -i video.mp4 -vn -acodec copy audio.aac       (--ref-audio reencode: as the AML
               ffmpeg -i video.mp4 %05d_video.jpg                    script, `ffmpeg -i video audio.aac`)
               upload audio.aac and every frame as its own blob
  stylize      mpiexec -n RANKS: each rank lists the frames, takes its len // size slice (the
               published partition: the remainder is dropped), and per frame downloads the JPEG,
               stylizes it, saves it with PIL (JPEG, quality 75) and uploads it as its own blob
  postprocess  download every stylized frame and the audio, then
               ffmpeg -framerate 30 -i %05d_video.jpg -c:v libx264 -profile:v high -crf 20 -pix_fmt yuv420p v.mp4
               ffmpeg -i v.mp4 -i audio.aac -map 0:0 -map 1:0 -vcodec copy -acodec copy out.mp4
               upload out.mp4

The per-frame model is stylebatch's own (`load_stylizer(style, max_side=...)`), with the same torch
threads per rank (cores / ranks), so the model cost is the same; blob transfers of a step run on
--transfer-threads threads (kinder to the reference than the sequential original).

stylebatch runs as `stylebatch run az://input/... -o az://output/... --workers RANKS`, once with its
default local work dir (one machine) and once with `--work az://...` (the AKS layout, where ranks on
different pods share the work dir through blob storage).

Measured per pipeline: wall time from the first step starting to the output blob written; storage
requests from Azurite's request logs (blobs and bytes written and read that are neither the input
nor the output); peak local disk under the pipeline's TMPDIR, sampled every 20 ms; and checks of the
output against the input: frame count (ffprobe -count_frames), presentation timestamps, duration,
audio packets (ffmpeg -map 0:a -c copy -f md5), size, and PSNR against the model's output for the
source frames computed in this process (frame shown at each output timestamp vs the stylized source
frame shown at that time: encoding losses and timing errors both lower it).

The default clip is testsrc2 at 29.97 fps (30000/1001) with a variable-rate stretch (every other
frame dropped from frame 45 to 74, so frames there last 2/29.97 s) and a stereo AAC tune; its colours
are tagged (BT.601 below 720 lines, BT.709 from 720 up). CPU time is counted too (the pipelines'
processes, Azurite, and everything else on the machine meanwhile), since wall times on a shared
machine move with its load: --repeats runs the variants interleaved and reports the fastest.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key: public, documented, useless outside the emulator.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
STORAGE_ENV_VARS = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
                    "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_BLOB_ENDPOINT")
IN_CONTAINER, OUT_CONTAINER, REF_CONTAINER, WORK_CONTAINER = "input", "output", "refdata", "sbwork"
REF_FRAMES, REF_STYLIZED, REF_AUDIO = "frames", "stylized", "audio/audio.aac"
FRAME_PATTERN = "%05d_video.jpg"  # as the AML scripts name them
VARIANTS = {
    "ref": "reference design",
    "sb-local": "stylebatch, local work dir",
    "sb-blob": "stylebatch, blob work dir",
    "sb-default-chunks": "stylebatch, local work, default chunks",
}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def container_client(container: str):
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"]) \
        .get_container_client(container)


def parallel(fn, items, threads: int) -> list:
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(fn, items))


# --------------------------------------------------------------------------------------------------
# The reference design, one function per step (run as `bench_vs_reference.py _ref-<step> ...`)
# --------------------------------------------------------------------------------------------------

def ref_preprocess(a: argparse.Namespace) -> None:
    src = container_client(a.input_container)
    ref = container_client(REF_CONTAINER)
    with tempfile.TemporaryDirectory(prefix="ref-pre-") as tmp:
        video = Path(tmp) / "video.mp4"
        video.write_bytes(src.download_blob(a.input_blob).readall())
        audio = Path(tmp) / "audio.aac"
        if a.audio == "copy":
            sh(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-vn", "-acodec", "copy", str(audio)])
        else:  # the AML script: `ffmpeg -i {input_video} {output_audio}/audio.aac` (re-encodes)
            sh(["ffmpeg", "-v", "error", "-y", "-i", str(video), str(audio)])
        frames = Path(tmp) / "frames"
        frames.mkdir()
        sh(["ffmpeg", "-v", "error", "-y", "-i", str(video), str(frames / FRAME_PATTERN), "-hide_banner"])
        ref.upload_blob(REF_AUDIO, audio.read_bytes(), overwrite=True)
        names = sorted(os.listdir(frames))
        parallel(lambda n: ref.upload_blob(f"{REF_FRAMES}/{n}", (frames / n).read_bytes(), overwrite=True),
                 names, a.transfer_threads)
    print(json.dumps({"frames_extracted": len(names)}))


def ref_stylize(a: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from mpi4py import MPI
    from PIL import Image

    from stylebatch.models import load_stylizer

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.set_num_threads(max(1, cores() // size))  # what stylebatch gives each of its ranks
    if a.device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())  # one GPU per rank, as stylebatch
    stylizer = load_stylizer(a.style, device=a.device, max_side=a.max_side)
    ref = container_client(REF_CONTAINER)
    filenames = sorted(b.name.rsplit("/", 1)[-1] for b in ref.list_blobs(name_starts_with=f"{REF_FRAMES}/"))
    partition_size = len(filenames) // size  # as published: the last len % size frames go to no rank
    mine = filenames[rank * partition_size:(rank + 1) * partition_size]
    model_s = 0.0
    with tempfile.TemporaryDirectory(prefix=f"ref-rank{rank}-") as tmp:
        for name in mine:
            local_in, local_out = Path(tmp) / ("in-" + name), Path(tmp) / name
            local_in.write_bytes(ref.download_blob(f"{REF_FRAMES}/{name}").readall())
            image = np.array(Image.open(local_in).convert("RGB"))
            t = time.perf_counter()
            out = stylizer(image[None])[0]
            model_s += time.perf_counter() - t
            Image.fromarray(out).save(local_out)  # save_image(): PIL's default JPEG quality (75)
            ref.upload_blob(f"{REF_STYLIZED}/{name}", local_out.read_bytes(), overwrite=True)
            local_in.unlink()
            local_out.unlink()
    print("REFRANK " + json.dumps({"rank": rank, "frames": len(mine), "of": len(filenames), "model_s": model_s}),
          flush=True)


def ref_postprocess(a: argparse.Namespace) -> None:
    ref = container_client(REF_CONTAINER)
    out = container_client(a.output_container)
    with tempfile.TemporaryDirectory(prefix="ref-post-") as tmp:
        frames = Path(tmp) / "frames"
        frames.mkdir()
        names = [b.name for b in ref.list_blobs(name_starts_with=f"{REF_STYLIZED}/")]
        parallel(lambda n: (frames / n.rsplit("/", 1)[-1]).write_bytes(ref.download_blob(n).readall()),
                 names, a.transfer_threads)
        audio = Path(tmp) / "audio.aac"
        audio.write_bytes(ref.download_blob(REF_AUDIO).readall())
        silent, final = Path(tmp) / "video_without_audio.mp4", Path(tmp) / "video_processed.mp4"
        sh(["ffmpeg", "-v", "error", "-framerate", "30", "-i", str(frames / FRAME_PATTERN), "-c:v", "libx264",
            "-profile:v", "high", "-crf", "20", "-pix_fmt", "yuv420p", "-y", str(silent)])
        sh(["ffmpeg", "-v", "error", "-i", str(silent), "-i", str(audio), "-map", "0:0", "-map", "1:0",
            "-vcodec", "copy", "-acodec", "copy", "-y", str(final)])
        with open(final, "rb") as f:
            out.upload_blob(a.output_blob, f, overwrite=True)


# --------------------------------------------------------------------------------------------------
# Azurite, and what its logs say about the requests
# --------------------------------------------------------------------------------------------------

@dataclass
class Azurite:
    port: int
    proc: subprocess.Popen
    access_log: Path
    debug_log: Path | None

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};")

    def offsets(self) -> tuple[int, int]:
        time.sleep(0.5)  # let Azurite flush the last request's log lines
        return (self.access_log.stat().st_size,
                self.debug_log.stat().st_size if self.debug_log and self.debug_log.exists() else 0)

    def cpu_seconds(self) -> float:
        """CPU time Azurite (node) has used so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def azurite_binary() -> str:
    local = REPO / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    found = str(local) if local.exists() else shutil.which("azurite-blob")
    if not found:
        sys.exit("bench_vs_reference: Azurite is not installed: run scripts/setup.sh --test")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_azurite(workdir: Path, request_log: bool) -> Azurite:
    port = free_port()
    access, debug = workdir / "access.log", (workdir / "debug.log") if request_log else None
    cmd = [azurite_binary(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(workdir / "data"),
           "--skipApiVersionCheck", "--loose", "--disableTelemetry"]
    if debug:
        cmd += ["--debug", str(debug)]
    with open(access, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Azurite(port, proc, access, debug)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/{ACCOUNT}?comp=list", timeout=1)
            break
        except urllib.error.HTTPError:
            break  # refused unsigned, but up
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"bench_vs_reference: Azurite did not start:\n{access.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
    return server


_ACCESS = re.compile(r'"(\w+) (\S+) HTTP/[\d.]+" (\d+) (\S+)')
_DEBUG = re.compile(r"RequestMethod=(\w+) RequestURL=(\S+) RequestHeaders:(\{.*\}) ClientIP=")


def _split(path_and_query: str) -> tuple[str, str, dict[str, str]]:
    parsed = urllib.parse.urlsplit(path_and_query)
    parts = urllib.parse.unquote(parsed.path).lstrip("/").split("/", 2)
    container = parts[1] if len(parts) > 1 else ""
    blob = parts[2] if len(parts) > 2 else ""
    return container, blob, dict(urllib.parse.parse_qsl(parsed.query))


@dataclass
class Requests:
    total: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    inter_written: set = field(default_factory=set)  # intermediate blobs committed
    inter_put_bytes: int = 0
    inter_read: set = field(default_factory=set)
    inter_gets: int = 0
    inter_get_bytes: int = 0
    logged_puts: bool = False


def count_requests(az: Azurite, start: tuple[int, int], end: tuple[int, int], keep: set[tuple[str, str]]) -> Requests:
    """Requests between two log offsets; `keep` are the (container, blob) pairs that are not
    intermediates (the input and the output)."""
    r = Requests()
    with open(az.access_log, "rb") as f:
        f.seek(start[0])
        text = f.read(end[0] - start[0]).decode(errors="replace")
    for method, target, status, size in _ACCESS.findall(text):
        container, blob, q = _split(target)
        r.total += 1
        if not blob:
            kind = "list" if q.get("comp") == "list" else "container"
        else:
            kind = {"PUT": "put", "GET": "get", "HEAD": "head", "DELETE": "delete"}.get(method, method.lower())
            if method == "PUT" and q.get("comp") in ("block", "blocklist"):
                kind = "put " + q["comp"]
        r.by_kind[kind] = r.by_kind.get(kind, 0) + 1
        if blob and (container, blob) not in keep and method == "GET" and int(status) < 300 and not q.get("comp"):
            r.inter_read.add((container, blob))
            r.inter_gets += 1
            r.inter_get_bytes += int(size) if size.isdigit() else 0
    if az.debug_log is not None:
        r.logged_puts = True
        with open(az.debug_log, "rb") as f:
            f.seek(start[1])
            text = f.read(end[1] - start[1]).decode(errors="replace")
        for method, url, headers in _DEBUG.findall(text):
            if method != "PUT":
                continue
            container, blob, q = _split(url)
            if not blob or (container, blob) in keep:
                continue
            if q.get("comp") in (None, "blocklist"):
                r.inter_written.add((container, blob))
            if q.get("comp") in (None, "block"):
                try:
                    r.inter_put_bytes += int(json.loads(headers).get("content-length", 0))
                except ValueError:
                    pass
    return r


# --------------------------------------------------------------------------------------------------
# Local disk and output checks
# --------------------------------------------------------------------------------------------------

class DiskPeak(threading.Thread):
    """Largest total size of the files under `root`, sampled every `every` seconds (less often when a
    scan is slow, so the sampling never takes more than a tenth of a core)."""

    def __init__(self, root: Path, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.root, self.every, self.peak = root, every, 0
        self._halt = threading.Event()

    def size(self) -> int:
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total

    def run(self) -> None:
        while not self._halt.is_set():
            t = time.perf_counter()
            self.peak = max(self.peak, self.size())
            self._halt.wait(max(self.every, 9 * (time.perf_counter() - t)))

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.size())
        return self.peak


def make_clip(path: Path, size: str, seconds: float, rate: str = "30000/1001") -> None:
    """testsrc2 at `rate` with a VFR stretch (frames 45..74: every other one dropped), stereo AAC.
    Colours are converted and tagged as usual for the size (BT.709 from 720 lines up, else BT.601),
    so no reader has to guess the matrix."""
    hd = int(size.lower().split("x")[1]) >= 720
    matrix, tag = ("bt709", "bt709") if hd else ("bt601", "smpte170m")
    sh(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
        "-f", "lavfi", "-i", "aevalsrc=0.3*sin(2*PI*440*t)|0.3*sin(2*PI*554*t):s=48000:c=stereo",
        "-t", str(seconds),
        "-vf", rf"select='not(between(n\,45\,74)*mod(n\,2))',scale=out_color_matrix={matrix}:out_range=tv,"
               "format=yuv420p",
        "-fps_mode", "vfr", "-colorspace", tag, "-color_primaries", tag, "-color_trc", tag,
        "-c:v", "libx264", "-c:a", "aac", "-b:a", "128k", str(path)])


def ffprobe(path: Path, *args: str) -> str:
    return sh(["ffprobe", "-v", "error", *args, str(path)], capture_output=True, text=True).stdout


def counted_frames(path: Path) -> int:
    out = ffprobe(path, "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames",
                  "-of", "csv=p=0")
    return int(out.strip().strip(","))


def video_pts(path: Path) -> list[Fraction]:
    """Presentation times of the video packets (sorted), exact."""
    out = ffprobe(path, "-select_streams", "v:0", "-show_entries", "packet=pts:stream=time_base", "-of", "json")
    d = json.loads(out)
    tb = Fraction(d["streams"][0]["time_base"])
    return sorted(Fraction(p["pts"]) * tb for p in d["packets"] if p.get("pts") is not None)


def stream_duration(path: Path, selector: str) -> float | None:
    out = ffprobe(path, "-select_streams", selector, "-show_entries", "stream=duration", "-of", "csv=p=0").strip()
    try:
        return float(out.split("\n")[0].strip(","))
    except ValueError:
        return None


def audio_md5(path: Path) -> str | None:
    res = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a", "-c", "copy", "-f", "md5", "-"],
                         capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else None


def decode_rgb(path: Path):
    """(presentation time in seconds, uint8 RGB frame) for every frame, colour matrix and range as tagged
    (untagged: BT.709 from 720 lines up, else BT.601, as players guess)."""
    import av
    from av.video.reformatter import VideoReformatter

    sws = VideoReformatter()
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        for frame in c.decode(vs):
            space = int(frame.colorspace or 2)
            matrix = "itu709" if space == 1 or (space == 2 and frame.height >= 720) else "itu601"
            rng = "JPEG" if frame.color_range == 2 else "MPEG"
            yield float(frame.pts * vs.time_base), sws.reformat(frame, format="rgb24", src_colorspace=matrix,
                                                                src_color_range=rng).to_ndarray()


def ideal_frames(source: Path, style: str, max_side: int | None, device: str):
    """The model's output for every source frame, in this process: what a lossless pipeline would show."""
    import numpy as np
    import torch

    from stylebatch.models import load_stylizer

    torch.set_num_threads(cores())
    stylizer = load_stylizer(style, device=device, max_side=max_side)  # same precision as the pipelines
    times, frames = zip(*decode_rgb(source))
    out = []
    for i in range(0, len(frames), 4):
        out.extend(stylizer(np.stack(frames[i:i + 4])))
    return list(times), out


def psnr_by_time(output: Path, times: list[float], ideal: list) -> tuple[float, float, float]:
    """Mean, median and min PSNR (dB) of each output frame against the stylized source frame on screen
    at the same time (a quarter of the shortest frame interval of slack)."""
    import bisect

    import numpy as np

    gaps = [b - a for a, b in zip(times, times[1:])] or [1.0]
    slack = min(gaps) / 4
    values = []
    for t, rgb in decode_rgb(output):
        i = max(0, bisect.bisect_right(times, t + slack) - 1)
        ref = ideal[i]
        if rgb.shape != ref.shape:
            return float("nan"), float("nan"), float("nan")
        mse = float(np.mean((rgb.astype(np.float32) - ref.astype(np.float32)) ** 2))
        values.append(100.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse))
    return statistics.fmean(values), statistics.median(values), min(values)


# --------------------------------------------------------------------------------------------------
# Running the pipelines
# --------------------------------------------------------------------------------------------------

@dataclass
class Result:
    variant: str
    wall: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)
    requests: Requests | None = None
    peak_disk: int = 0
    cpu_s: float = 0.0  # pipeline processes (user + sys), children waited for
    other_cpu_s: float = 0.0  # everything else on the machine during the run
    storage_cpu_s: float = 0.0  # Azurite
    left_behind: int = 0
    output: Path | None = None


def run_reference(a: argparse.Namespace, env: dict[str, str], output_blob: str, input_blob: str) -> Result:
    from stylebatch.run import find_mpiexec

    res = Result("ref")
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--transfer-threads", str(a.transfer_threads)]
    steps = [
        ("preprocess", me + ["_ref-preprocess", "--input-container", IN_CONTAINER, "--input-blob", input_blob,
                             "--audio", a.ref_audio] + common),
        ("stylize", [find_mpiexec() or "mpiexec", "-n", str(a.ranks), *me, "_ref-stylize", "--style", a.style,
                     "--device", a.device]
         + (["--max-side", str(a.max_side)] if a.max_side else []) + common),
        ("postprocess", me + ["_ref-postprocess", "--output-container", OUT_CONTAINER, "--output-blob", output_blob]
         + common),
    ]
    start = time.perf_counter()
    for name, cmd in steps:
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        res.stages[name] = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"reference {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        if name == "preprocess":
            res.notes["frames_extracted"] = json.loads(proc.stdout.strip().splitlines()[-1])["frames_extracted"]
        if name == "stylize":
            ranks = [json.loads(m) for m in re.findall(r"REFRANK (\{.*?\})", proc.stdout)]
            res.notes["frames_stylized"] = sum(r["frames"] for r in ranks)
            res.notes["model_s"] = sum(r["model_s"] for r in ranks)
    res.wall = time.perf_counter() - start
    return res


def run_stylebatch(a: argparse.Namespace, env: dict[str, str], variant: str, output_blob: str, input_blob: str,
                   chunk_frames: int | None) -> Result:
    res = Result(variant)
    cmd = [str(BIN / "stylebatch"), "run", f"az://{IN_CONTAINER}/{input_blob}", "-o", f"az://{OUT_CONTAINER}/{output_blob}",
           "--workers", str(a.ranks), "--style", a.style, "--device", a.device]
    if a.max_side:
        cmd += ["--max-side", str(a.max_side)]
    if chunk_frames:
        cmd += ["--chunk-frames", str(chunk_frames)]
    if a.sb_crf is not None:
        cmd += ["--crf", str(a.sb_crf)]
    if variant == "sb-blob":
        cmd += ["--work", f"az://{WORK_CONTAINER}/job-{time.monotonic_ns()}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    res.wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"stylebatch run ({variant}) failed:\n{proc.stderr[-4000:]}")
    found = re.findall(r"stylize: \d+/\d+ frames \(100%\), ([\d.]+) fps", proc.stderr)
    if found:
        res.notes["stylize_fps"] = float(found[-1])
    res.notes["chunk_frames"] = chunk_frames or 120
    return res


def children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def own_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def machine_busy_cpu() -> float:
    """CPU seconds all processes on the machine have used (from /proc/stat), or nan."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def stored_intermediates() -> int:
    return sum(1 for c in (REF_CONTAINER, WORK_CONTAINER) for _ in container_client(c).list_blobs())


def run_variant(a, az: Azurite, variant: str, tmp: Path, input_blob: str, frames: int, repeat: int) -> Result:
    scratch = tmp / f"scratch-{variant}-{repeat}"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in STORAGE_ENV_VARS}
    env.update(AZURE_STORAGE_CONNECTION_STRING=az.connection_string, TMPDIR=str(scratch), PYTHONUNBUFFERED="1")
    output_blob = f"{variant}-{repeat}.mp4"
    if variant == "ref":
        ref = container_client(REF_CONTAINER)  # a fresh run starts from an empty reference container
        names = [b.name for b in ref.list_blobs()]
        parallel(ref.delete_blob, names, 8)
    chunk = a.chunk_frames or math.ceil(frames / (2 * a.ranks))
    disk = DiskPeak(scratch)
    stored_before = stored_intermediates()
    before = az.offsets()
    cpu_before, az_before, own_before, busy_before = children_cpu(), az.cpu_seconds(), own_cpu(), machine_busy_cpu()
    disk.start()
    if variant == "ref":
        res = run_reference(a, env, output_blob, input_blob)
    else:
        res = run_stylebatch(a, env, variant, output_blob, input_blob,
                             None if variant == "sb-default-chunks" else chunk)
    res.peak_disk = disk.stop()
    res.cpu_s, res.storage_cpu_s = children_cpu() - cpu_before, az.cpu_seconds() - az_before
    res.other_cpu_s = max(0.0, machine_busy_cpu() - busy_before - res.cpu_s - res.storage_cpu_s
                          - (own_cpu() - own_before))
    after = az.offsets()
    res.requests = count_requests(az, before, after, {(IN_CONTAINER, input_blob), (OUT_CONTAINER, output_blob)})
    res.left_behind = stored_intermediates() - stored_before
    res.output = tmp / f"out-{variant}-{repeat}.mp4"
    res.output.write_bytes(container_client(OUT_CONTAINER).download_blob(output_blob).readall())
    shutil.rmtree(scratch, ignore_errors=True)
    return res


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

def kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MiB"


def where(device: str) -> str:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return f"model on {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} GPU(s))"
    return "CPU only"


def report(a, source: Path, results: list[Result], frames: int, ideal) -> None:
    in_pts = video_pts(source)
    in_dur = stream_duration(source, "v:0")
    in_md5 = audio_md5(source)
    in_audio_dur = stream_duration(source, "a:0")
    cols = [VARIANTS[r.variant] for r in results]
    rows: list[tuple[str, list[str]]] = []

    def row(name: str, values: list[str]) -> None:
        rows.append((name, values))

    row("wall time, end to end (s)", [f"{r.wall:.1f}" for r in results])
    row("end-to-end fps (input frames / wall)", [f"{frames / r.wall:.1f}" for r in results])
    row("CPU time: pipeline processes + storage emulator (s)",
        [f"{r.cpu_s:.1f} + {r.storage_cpu_s:.1f}" for r in results])
    row("CPU used by other work on the machine meanwhile (s)", [f"{r.other_cpu_s:.1f}" for r in results])
    row("steps (s)", [" / ".join(f"{k} {v:.1f}" for k, v in r.stages.items()) if r.stages else "one command"
                      for r in results])
    row("frames run through the model", [str(r.notes.get("frames_stylized", frames)) for r in results])
    checks = []
    for r in results:
        out_pts = video_pts(r.output)
        n = min(len(out_pts), len(in_pts))
        max_diff = max((abs(float(x - y)) for x, y in zip(out_pts[:n], in_pts[:n])), default=0.0)
        dur = stream_duration(r.output, "v:0")
        md5 = audio_md5(r.output)
        adur = stream_duration(r.output, "a:0")
        checks.append(dict(frames=counted_frames(r.output), max_pts_ms=1000 * max_diff,
                           dur_ms=None if dur is None or in_dur is None else 1000 * (dur - in_dur),
                           audio=md5 is not None and md5 == in_md5,
                           adur_ms=None if adur is None or in_audio_dur is None else 1000 * (adur - in_audio_dur),
                           size=r.output.stat().st_size, psnr=psnr_by_time(r.output, *ideal)))
    req = [r.requests for r in results]
    row("storage requests, all", [str(q.total) for q in req])
    row("intermediate blobs written", [str(len(q.inter_written)) if q.logged_puts else "?" for q in req])
    row("intermediate bytes written", [kib(q.inter_put_bytes) if q.logged_puts else "?" for q in req])
    row("intermediate blob reads (GETs) / blobs", [f"{q.inter_gets} / {len(q.inter_read)}" for q in req])
    row("intermediate bytes read", [kib(q.inter_get_bytes) for q in req])
    row("intermediate blobs left in storage after the run", [str(r.left_behind) for r in results])
    row("peak local disk for intermediates", [kib(r.peak_disk) for r in results])
    row(f"output frames (input: {frames})", [str(c["frames"]) for c in checks])
    row("max abs pts difference vs input, frame by frame (ms)", [f"{c['max_pts_ms']:.1f}" for c in checks])
    row("video duration difference vs input (ms)",
        ["?" if c["dur_ms"] is None else f"{c['dur_ms']:+.1f}" for c in checks])
    row("audio packets bit-exact (md5)", ["yes" if c["audio"] else "no" for c in checks])
    row("audio duration difference vs input (ms)",
        ["?" if c["adur_ms"] is None else f"{c['adur_ms']:+.1f}" for c in checks])
    row("output size", [kib(c["size"]) for c in checks])
    row("PSNR vs model output, by timestamp: mean / median / min (dB)",
        [f"{p[0]:.1f} / {p[1]:.1f} / {p[2]:.1f}" for p in (c["psnr"] for c in checks)])
    lossy = {"ref": "3 (JPEG, JPEG q75, x264 crf 20)"}
    crf = a.sb_crf if a.sb_crf is not None else 18
    row("lossy encodes of each picture", [lossy.get(r.variant, f"1 (x264 crf {crf})") for r in results])

    print(f"| | {' | '.join(cols)} |")
    print("|---|" + "---:|" * len(cols))
    for name, values in rows:
        print(f"| {name} | {' | '.join(values)} |")
    print()
    for r in results:
        extra = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.notes.items())
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.requests.by_kind.items()))
        print(f"- {VARIANTS[r.variant]}: {extra}; requests: {kinds}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_ref-"):
        return internal(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0, help="length of the generated clip (default 4)")
    p.add_argument("--size", default="640x360", help="size of the generated clip (default 640x360)")
    p.add_argument("--rate", default="30000/1001", help="frame rate of the generated clip (default 30000/1001)")
    p.add_argument("--input", type=Path, help="use this video instead of the generated clip")
    p.add_argument("--max-side", type=int, default=256, help="stylize at most this many pixels on the long side")
    p.add_argument("--style", default="lavender-gold")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where both pipelines run the model (default cpu; cuda: one GPU per rank)")
    p.add_argument("--ranks", type=int, default=2, help="MPI ranks for both pipelines (default 2)")
    p.add_argument("--chunk-frames", type=int, default=None,
                   help="stylebatch --chunk-frames (default: frames / (2 x ranks), so every rank gets work)")
    p.add_argument("--sb-crf", type=int, default=None, help="stylebatch --crf (default: its own, 18)")
    p.add_argument("--ref-audio", choices=["copy", "reencode"], default="copy",
                   help="reference audio extraction: -acodec copy (default) or re-encode as the AML script")
    p.add_argument("--transfer-threads", type=int, default=8, help="reference blob transfer threads per step")
    p.add_argument("--variants", default="ref,sb-local,sb-blob",
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: ref,sb-local,sb-blob)")
    p.add_argument("--repeats", type=int, default=1, help="runs per variant; the fastest is reported")
    p.add_argument("--no-request-log", action="store_true",
                   help="skip Azurite's debug log (blobs/bytes written then show as ?)")
    a = p.parse_args(argv)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-vs-ref-"))
    az = None
    try:
        if a.input:
            source = tmp / ("input" + a.input.suffix)
            shutil.copyfile(a.input, source)
        else:
            source = tmp / "clip.mp4"
            make_clip(source, a.size, a.seconds, a.rate)
        frames = counted_frames(source)
        (tmp / "azurite").mkdir()
        az = start_azurite(tmp / "azurite", request_log=not a.no_request_log)
        for k in STORAGE_ENV_VARS:
            os.environ.pop(k, None)
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = az.connection_string
        for c in (IN_CONTAINER, OUT_CONTAINER, REF_CONTAINER, WORK_CONTAINER):
            container_client(c).create_container()
        input_blob = source.name
        with open(source, "rb") as f:
            container_client(IN_CONTAINER).upload_blob(input_blob, f)
        load_before = os.getloadavg()
        runs: dict[str, list[Result]] = {v: [] for v in variants}
        for i in range(a.repeats):  # interleaved, so a change in the machine's load hits every variant
            for v in variants:
                runs[v].append(run_variant(a, az, v, tmp, input_blob, frames, i))
                print(f"{VARIANTS[v]}, run {i + 1}: {runs[v][-1].wall:.1f} s", file=sys.stderr, flush=True)
        results = [min(runs[v], key=lambda r: r.wall) for v in variants]
        for r in results:
            r.notes["walls_s"] = "/".join(f"{x.wall:.1f}" for x in runs[r.variant])
        load_after = os.getloadavg()
        ideal = ideal_frames(source, a.style, a.max_side, a.device)
        import torch

        w, h = ffprobe(source, "-select_streams", "v:0", "-show_entries", "stream=width,height",
                       "-of", "csv=p=0").strip().split(",")[:2]
        print(f"{'input ' + a.input.name if a.input else 'generated clip'}: {w}x{h}, {frames} frames, "
              f"{stream_duration(source, 'v:0'):.3f} s; style {a.style}, --max-side {a.max_side}, {a.ranks} ranks; "
              f"{where(a.device)}, {platform.processor() or platform.machine()}, {cores()} cores, torch {torch.__version__}; "
              f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; best of {a.repeats}\n")
        report(a, source, results, frames, ideal)
    finally:
        if az is not None:
            az.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def internal(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=["_ref-preprocess", "_ref-stylize", "_ref-postprocess"])
    p.add_argument("--input-container")
    p.add_argument("--input-blob")
    p.add_argument("--output-container")
    p.add_argument("--output-blob")
    p.add_argument("--audio", default="copy")
    p.add_argument("--style")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-side", type=int, default=None)
    p.add_argument("--transfer-threads", type=int, default=8)
    a = p.parse_args(argv)
    {"_ref-preprocess": ref_preprocess, "_ref-stylize": ref_stylize, "_ref-postprocess": ref_postprocess}[a.step](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
