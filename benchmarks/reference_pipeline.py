"""The reference architecture's pipeline, re-implemented from its description, against `stylebatch run`.

    .venv/bin/python benchmarks/reference_pipeline.py --quick      # one row: 640x360, TransformerNet, 2 ranks
    .venv/bin/python benchmarks/reference_pipeline.py              # the full table (about 20 min on 2 cores)
    .venv/bin/python benchmarks/reference_pipeline.py --weights mosaic.pth --sizes 1280x720 --ranks 2
    .venv/bin/python benchmarks/reference_pipeline.py --ranks 1,2 --layouts pipelines,ranks   # both layouts
    .venv/bin/python benchmarks/reference_pipeline.py --ranks 1,2 --layouts default   # as many ranks, its defaults

The reference ("Batch scoring of deep learning models on Azure", /work/shared/mission/
reference-architecture.md), each step its own process, on local files:

  1. ffmpeg -i clip.mp4 -vn -acodec copy audio.aac
  2. ffmpeg -i clip.mp4 frames/%05d.jpg
  3. mpiexec -n RANKS python reference_pipeline.py _rank ...: each rank takes its share of the sorted
     frame files (every frame is stylized; the published len // size split would drop the remainder)
     and, one frame at a time, reads the JPEG with PIL, runs the model at batch 1 in fp32 (the
     published fast_neural_style code: TransformerNet on 0..255, or the built-in network's plain
     module), and saves the result with PIL (JPEG quality 75)
  4. ffmpeg -framerate 30 -i out/%05d.jpg -c:v libx264 -profile:v high -crf 20 -pix_fmt yuv420p v.mp4
  5. ffmpeg -i v.mp4 -i audio.aac -map 0:0 -map 1:0 -vcodec copy -acodec copy out.mp4

Each rank gets cores / RANKS torch threads, as stylebatch's ranks do (the published code leaves
torch's default, every core in every rank, which oversubscribes the machine and is slower).
stylebatch runs as many networks at once as the reference has ranks (RANKS), laid out as --layouts
says: `pipelines` (its default on the CPU) as `stylebatch run clip.mp4 -o out.mp4 --workers 1
--pipelines RANKS ...`, one process stylizing RANKS chunks at once with one copy of torch and the
network; `ranks` as `--workers RANKS --pipelines 1`, RANKS MPI ranks as the reference's. Either way
each network gets cores / RANKS torch threads. `default` runs as many ranks as the reference instead,
`--workers RANKS` with stylebatch's default pipelines (one per core of a rank's share: with one rank
on 2 cores, 2 pipelines beside the reference's one rank of 2 threads), the rank count issue 14's
target names. The rest of the command is `--style STYLE
--device cpu --chunk-frames N` with its defaults otherwise (full size, precision auto, x264 crf 18
at the default preset). N = frames / (2 x RANKS): the short clips here would be one or two chunks by
the default rule (at least 16 frames a chunk: a 24-frame clip is one, leaving a network idle); a clip
of a minute gets 16 chunks anyway.

Both get the same generated clip (testsrc2 at 30 fps with an AAC tone: a constant rate, so the
reference's hard-coded 30 fps is right and its timing bugs cost it nothing) and the same weights: a
.pth of pytorch/examples' TransformerNet (--weights, or one made here with seeded random weights of
the right shapes, which cost exactly what trained ones cost), and a built-in style. Runs alternate
(reference, stylebatch, reference, stylebatch, ...) and each figure is the median of --repeats.

Measured per run: wall time; peak memory of the process tree, two ways: the sum of the resident sizes
of every process under the pipeline (sampled every 50 ms; pages shared between processes, such as
torch's libraries in each rank, count once per process, for both pipelines alike) and the sum of their
proportional set sizes (PSS, /proc/<pid>/smaps_rollup, sampled every 250 ms: a page shared by n of
them counts 1/n in each, so the sum is the physical memory the processes hold, what a pod's memory
limit is charged for their pages); CPU time (user + system)
and minor page faults of the pipeline's processes (getrusage of the reaped children); frames/s
(input frames / wall time). The ratio column is stylebatch's wall time over the reference's.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
BIN = Path(sys.executable).parent
BUILTIN = "lavender-gold"
SIZES = {"640x360": 32, "720x528": 24, "1280x720": 12}  # frames per size: a full table in ~20 min on 2 cores


def cores() -> int:
    """The cores a rank counts as this machine's (its affinity, within a cgroup's CPU quota)."""
    from stylebatch.ranks import cpu_count

    return cpu_count()


# --- the reference pipeline ---

def rank_main(style: str, frames_dir: Path, out_dir: Path) -> None:
    """Step 3 on one MPI rank: per frame, PIL in, the model at batch 1 in fp32, PIL JPEG out."""
    import numpy as np
    import torch
    from PIL import Image

    from stylebatch.ranks import detect

    world = detect()
    torch.set_num_threads(max(1, cores() // world.size))
    if style.endswith(".pth"):  # pytorch/examples neural_style.py stylize(): the module, 0..255 in and out
        from stylebatch.transformer_net import TransformerNet

        net = TransformerNet()
        net.load_state_dict(torch.load(style, map_location="cpu", weights_only=True))
        model = lambda x: net(x * 255).clamp(0, 255) / 255  # noqa: E731
    else:  # the built-in style's network as a plain module, the style as its weight vector
        from stylebatch.models import load_stylizer
        from stylebatch.multistyle import load_multistyle26

        painter, net = load_stylizer(style, device="cpu", precision="fp32").painters[0], load_multistyle26()
        model = lambda x: net(x, painter.condition)  # noqa: E731
    names = sorted(os.listdir(frames_dir))
    share = -(-len(names) // world.size)
    with torch.inference_mode():
        for name in names[world.rank * share:(world.rank + 1) * share]:
            image = torch.from_numpy(np.array(Image.open(frames_dir / name).convert("RGB")))
            x = image.permute(2, 0, 1)[None].float() / 255
            h, w = x.shape[-2:]
            x = torch.nn.functional.pad(x, [0, -w % 4, 0, -h % 4], mode="reflect") if h % 4 or w % 4 else x
            y = model(x)[0, :, :h, :w].clamp(0, 1).mul(255).round().to(torch.uint8)
            Image.fromarray(y.permute(1, 2, 0).numpy()).save(out_dir / name)  # PIL's default quality, 75


def run_reference(clip: Path, out: Path, style: str, ranks: int, tmp: Path) -> None:
    from stylebatch.run import find_mpiexec

    frames, stylized = tmp / "frames", tmp / "stylized"
    frames.mkdir()
    stylized.mkdir()
    ff = ["ffmpeg", "-v", "error", "-y"]
    sh([*ff, "-i", clip, "-vn", "-acodec", "copy", tmp / "audio.aac"])
    sh([*ff, "-i", clip, frames / "%05d.jpg"])
    sh([find_mpiexec(), "-n", str(ranks), sys.executable, HERE, "_rank", style, frames, stylized])
    sh([*ff, "-framerate", "30", "-i", stylized / "%05d.jpg", "-c:v", "libx264", "-profile:v", "high",
        "-crf", "20", "-pix_fmt", "yuv420p", tmp / "video.mp4"])
    sh([*ff, "-i", tmp / "video.mp4", "-i", tmp / "audio.aac", "-map", "0:0", "-map", "1:0",
        "-vcodec", "copy", "-acodec", "copy", out])


LAYOUTS = {  # how stylebatch runs beside the reference's `parallel` ranks
    # as many networks at once as the reference has ranks: one rank's pipelines (its default on the CPU)
    "pipelines": lambda parallel: ["--workers", "1", "--pipelines", str(parallel)],
    "ranks": lambda parallel: ["--workers", str(parallel), "--pipelines", "1"],  # ... or MPI ranks, as the reference
    # as many ranks as the reference, each with stylebatch's default pipelines (a chunk per core of its share)
    "default": lambda parallel: ["--workers", str(parallel)],
}


def effective(layout: str, parallel: int, chunks: int) -> tuple[int, int]:
    """(ranks, pipelines per rank) a layout runs on this machine's CPU with a clip of `chunks` chunks,
    as `stylebatch run` decides them: no more ranks than chunks, and a rank's default pipelines (one
    per core of its share) no more than the chunks (its memory may allow fewer still: not modelled)."""
    from stylebatch.memory import default_pipelines

    flags = LAYOUTS[layout](parallel)
    ranks = min(int(flags[flags.index("--workers") + 1]), chunks)
    if "--pipelines" in flags:
        pipelines = int(flags[flags.index("--pipelines") + 1])
    else:
        pipelines = default_pipelines(False, max(1, cores() // ranks))
    return ranks, min(pipelines, chunks)


def side_by_side_chunks(parallel: int) -> int:
    """The chunks run_stylebatch cuts a clip into beside `parallel` reference ranks (two per rank)."""
    return 2 * parallel


def layout_label(layout: str, parallel: int, chunks: int) -> str:
    """How the table names a layout beside `parallel` reference ranks: its ranks and pipelines."""
    ranks, pipelines = effective(layout, parallel, chunks)
    name = f"{ranks} rank{'s' if ranks > 1 else ''}" + ("" if pipelines == 1 else f" x {pipelines} pipelines")
    return name + (" (defaults)" if layout == "default" else "")


def layouts_to_run(parser: argparse.ArgumentParser, counts: str, layouts: str,
                   chunks=side_by_side_chunks) -> list[tuple[int, str]]:
    """(reference ranks, layout) for each of the comma-separated counts and layouts, once each per
    count where two layouts run stylebatch alike (with one network at a time `pipelines` and `ranks`
    are the same run); chunks(count): the clip's chunks. A parser error for an unknown layout."""
    runs, seen = [], set()
    for count, layout in ((int(c), lay) for c in counts.split(",") for lay in layouts.split(",")):
        if layout not in LAYOUTS:
            parser.error(f"--layouts: {layout} is not one of {', '.join(LAYOUTS)}")
        if (count, effective(layout, count, chunks(count))) not in seen:
            seen.add((count, effective(layout, count, chunks(count))))
            runs.append((count, layout))
    return runs


def run_stylebatch(clip: Path, out: Path, style: str, ranks: int, tmp: Path, layout: str = "pipelines") -> None:
    # two chunks per rank, as a longer clip gets by default
    chunk = -(-frame_count(clip) // side_by_side_chunks(ranks))
    sh([BIN / "stylebatch", "run", clip, "-o", out, *LAYOUTS[layout](ranks), "--style", style, "--device", "cpu",
        "--chunk-frames", str(chunk)], env=dict(os.environ, TMPDIR=str(tmp)))


def sh(cmd: list, **kw) -> None:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if result.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stderr[-2000:]}")


# --- measuring ---

class TreeMemory(threading.Thread):
    """Peaks of the summed RSS (every `every` seconds) and of the summed PSS (every `pss_every`: reading
    smaps_rollup walks a process's page tables) of this process's descendants."""

    def __init__(self, every: float = 0.05, pss_every: int = 5) -> None:
        super().__init__(daemon=True)
        self.every, self.pss_every, self.peak, self.peak_pss = every, pss_every, 0, 0
        self._done = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _tree(self) -> list[int]:
        parent: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parent[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        me, tree = os.getpid(), []
        for pid in parent:
            p, seen = parent.get(pid), 0
            while p and p != me and seen < 64:
                p, seen = parent.get(p), seen + 1
            if p == me and pid != me:
                tree.append(pid)
        return tree

    def _sum(self, pids: list[int], pss: bool) -> int:
        total = 0
        for pid in pids:
            try:
                if pss:
                    line = next(l for l in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                                if l.startswith("Pss:"))
                    total += int(line.split()[1]) * 1024
                else:
                    total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * self.page
            except (OSError, ValueError, IndexError, StopIteration):
                continue  # gone meanwhile
        return total

    def run(self) -> None:
        n = 0
        while not self._done.wait(self.every):
            tree = self._tree()
            self.peak = max(self.peak, self._sum(tree, pss=False))
            if n % self.pss_every == 0:
                self.peak_pss = max(self.peak_pss, self._sum(tree, pss=True))
            n += 1

    def stop(self) -> tuple[int, int]:
        self._done.set()
        self.join()
        return self.peak, self.peak_pss


def measure(fn, *args) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    mem = TreeMemory()
    mem.start()
    start = time.perf_counter()
    fn(*args)
    wall = time.perf_counter() - start
    peak, pss = mem.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "peak": peak, "pss": pss, "user": after.ru_utime - before.ru_utime,
            "sys": after.ru_stime - before.ru_stime, "minflt": after.ru_minflt - before.ru_minflt}


def frame_count(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
                          "stream=nb_read_packets", "-of", "csv=p=0", str(path)], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def make_clip(path: Path, size: str, frames: int) -> None:
    sh(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30", "-f", "lavfi",
        "-i", "sine=frequency=440:sample_rate=48000", "-frames:v", str(frames), "-t", f"{frames / 30:.3f}",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", path])


def make_weights(path: Path) -> None:
    """pytorch/examples' TransformerNet with seeded random weights (output spread over 0..255)."""
    import torch

    from stylebatch.transformer_net import TransformerNet

    torch.manual_seed(0)
    net = TransformerNet()
    with torch.no_grad():
        net.deconv3.conv2d.weight.mul_(60)
        net.deconv3.conv2d.bias.fill_(128)
    torch.save(net.state_dict(), path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_rank"]:
        rank_main(argv[1], Path(argv[2]), Path(argv[3]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated WxH (default: %(default)s)")
    p.add_argument("--frames", type=int, help="frames per clip (default: 32 / 24 / 12 by size)")
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts (default: 1,2)")
    p.add_argument("--styles", default=f"weights,{BUILTIN}",
                   help="'weights' (the TransformerNet .pth) and/or built-in style names (default: %(default)s)")
    p.add_argument("--weights", type=Path, help="a fast_neural_style .pth (default: random weights, made here)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each pipeline per row, alternating (default: 2)")
    p.add_argument("--layouts", default="pipelines",
                   help="how stylebatch runs beside the reference's ranks, comma-separated: as many networks at "
                        "once as the reference has ranks, as pipelines (one rank, its default on the CPU) or "
                        "ranks (MPI ranks); or default (as many ranks as the reference, with stylebatch's "
                        "default pipelines) (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="one row: 640x360, the TransformerNet, 2 ranks, 1 run each")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.ranks, a.styles, a.repeats = "640x360", "2", "weights", 1
        a.frames = a.frames or 24
    import torch

    with tempfile.TemporaryDirectory(prefix="refbench-") as tmp_name:
        tmp = Path(tmp_name)
        weights = a.weights or tmp / "transformer_net.pth"
        if a.weights is None:
            make_weights(weights)
        print(f"{platform.machine()}, {cores()} cores, torch {torch.__version__}; median of {a.repeats} "
              f"alternating runs per pipeline; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"load average {os.getloadavg()[0]:.1f} at the start\n")
        print("| style | clip | ranks | stylebatch | reference wall (s) | stylebatch wall (s) | ratio | reference fps | "
              "stylebatch fps | peak memory, reference / stylebatch (MiB) | peak PSS, reference / stylebatch (MiB) "
              "| CPU user+sys, reference / stylebatch (s) "
              "| minor faults, reference / stylebatch (M) | output frames |")
        print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for size in a.sizes.split(","):
            frames = a.frames or SIZES.get(size, 24)
            clip = tmp / f"clip-{size}.mp4"
            make_clip(clip, size, frames)
            for style in a.styles.split(","):
                style_arg = str(weights) if style == "weights" else style
                label = "TransformerNet .pth" if style == "weights" else style
                for ranks, layout in layouts_to_run(p, a.ranks, a.layouts):
                    runs: dict[str, list[dict]] = {"ref": [], "sb": []}
                    counts = {}
                    for repeat in range(a.repeats):
                        for name, fn in (("ref", run_reference),
                                         ("sb", lambda *args: run_stylebatch(*args, layout=layout))):
                            work = tmp / f"{name}-{repeat}"
                            work.mkdir()
                            out = work / "out.mp4"
                            runs[name].append(measure(fn, clip, out, style_arg, ranks, work))
                            counts[name] = frame_count(out)
                            shutil.rmtree(work)
                    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
                    r, s = med["ref"], med["sb"]
                    print(f"| {label} | {size}, {frames} frames | {ranks} | {layout_label(layout, ranks, side_by_side_chunks(ranks))} | "
                          f"{r['wall']:.1f} | {s['wall']:.1f} | "
                          f"{s['wall'] / r['wall']:.2f}x | {frames / r['wall']:.2f} | {frames / s['wall']:.2f} | "
                          f"{r['peak'] / 2**20:,.0f} / {s['peak'] / 2**20:,.0f} | "
                          f"{r['pss'] / 2**20:,.0f} / {s['pss'] / 2**20:,.0f} | "
                          f"{r['user'] + r['sys']:.1f} / {s['user'] + s['sys']:.1f} | "
                          f"{r['minflt'] / 1e6:.2f} / {s['minflt'] / 1e6:.2f} | {counts['ref']} / {counts['sb']} |",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
