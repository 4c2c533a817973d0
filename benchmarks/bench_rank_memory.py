"""Where the peak memory of `stylebatch run` goes: every process's RSS at the moment the summed RSS of
the run's process tree peaks, and the stylize rank's own peak split into anonymous memory (heap:
torch's start-up, activations, the codecs' buffers) and file-backed pages (libraries), by the number
of pipelines. Issue 14's memory target is a summed peak (reference_pipeline.py); this says which
process and which kind of memory a change would have to cut.

    .venv/bin/python benchmarks/bench_rank_memory.py --sizes 640x360,720x528 --pipelines 1,2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_pipeline import BIN, BUILTIN, TreeMemory, make_clip, make_weights  # noqa: E402

MiB = 2 ** 20


class PeakSnapshot(threading.Thread):
    """Every `every` seconds: each descendant's RSS; kept at the sample whose sum is the highest. The
    rank's (the `stylebatch stylize` process's) RssAnon and RssFile peaks, from /proc/PID/status."""

    def __init__(self, every: float = 0.03) -> None:
        super().__init__(daemon=True)
        self.every, self.tree = every, TreeMemory()
        self.peak, self.at_peak, self.rank = 0, {}, {"RssAnon": 0, "RssFile": 0}
        self._done = threading.Event()

    def run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._done.wait(self.every):
            now = {}
            for pid in self.tree._tree():
                try:
                    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
                    role = _role(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
                    if role == "stylize rank":
                        status = Path(f"/proc/{pid}/status").read_text().splitlines()
                        for line in status:
                            key, _, value = line.partition(":")
                            if key in self.rank:
                                self.rank[key] = max(self.rank[key], int(value.split()[0]) * 1024)
                except (OSError, ValueError, IndexError):
                    continue  # gone meanwhile
                now[role] = now.get(role, 0) + rss
            if sum(now.values()) > self.peak:
                self.peak, self.at_peak = sum(now.values()), now

    def stop(self) -> PeakSnapshot:
        self._done.set()
        self.join()
        return self


def _role(argv: list[bytes]) -> str:
    """A process of the run by what it does: the launcher, a stage, mpiexec, or other."""
    words = [a.decode(errors="replace") for a in argv if a]
    if "stylize" in words:
        return "stylize rank"
    if "preprocess" in words:
        return "preprocess"
    if "run" in words:
        return "launcher (stylebatch run)"
    return Path(words[0]).name if words else "other"


def measure(clip: Path, style: str, pipelines: int, tmp: Path) -> tuple[float, PeakSnapshot]:
    out = tmp / "out.mp4"
    snap = PeakSnapshot()
    snap.start()
    start = time.perf_counter()
    result = subprocess.run([str(BIN / "stylebatch"), "run", str(clip), "-o", str(out), "--style", style, "--device",
                             "cpu", "--workers", "1", "--pipelines", str(pipelines), "--chunk-frames",
                             str(max(1, _frames(clip) // (2 * pipelines)))],
                            capture_output=True, text=True, env=dict(os.environ, TMPDIR=str(tmp),
                                                                     XDG_CACHE_HOME=str(tmp / "cache")))
    wall = time.perf_counter() - start
    snap.stop()
    if result.returncode:
        raise SystemExit(f"stylebatch run failed ({result.returncode}):\n{result.stderr[-2000:]}")
    out.unlink()
    return wall, snap


def _frames(clip: Path) -> int:
    return int(clip.stem.rsplit("-", 1)[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="640x360,720x528,1280x720", help="comma-separated WxH (default: %(default)s)")
    p.add_argument("--frames", type=int, default=48, help="frames per clip, two chunks per pipeline (default: 48)")
    p.add_argument("--styles", default=f"weights,{BUILTIN}",
                   help="'weights' (a TransformerNet .pth) and/or built-in style names (default: %(default)s)")
    p.add_argument("--pipelines", default="1,2", help="comma-separated pipelines of the one rank (default: 1,2)")
    a = p.parse_args(argv)
    roles = ["stylize rank", "launcher (stylebatch run)", "preprocess"]
    with tempfile.TemporaryDirectory(prefix="rankmem-") as tmp_name:
        tmp = Path(tmp_name)
        weights = tmp / "transformer_net.pth"
        make_weights(weights)
        print(f"`stylebatch run --workers 1`, one run per row, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
        print("| style | clip | pipelines | wall (s) | peak summed RSS (MiB) | at the peak: "
              + " / ".join(roles) + " (MiB) | rank's peak RssAnon / RssFile (MiB) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for size in a.sizes.split(","):
            clip = tmp / f"clip-{size}-{a.frames}.mp4"
            make_clip(clip, size, a.frames)
            for style in a.styles.split(","):
                label = "TransformerNet .pth" if style == "weights" else style
                for pipelines in (int(n) for n in a.pipelines.split(",")):
                    wall, snap = measure(clip, str(weights) if style == "weights" else style, pipelines, tmp)
                    parts = " / ".join(f"{snap.at_peak.get(r, 0) / MiB:,.0f}" for r in roles)
                    print(f"| {label} | {size}, {a.frames} frames | {pipelines} | {wall:.1f} | {snap.peak / MiB:,.0f} | "
                          f"{parts} | {snap.rank['RssAnon'] / MiB:,.0f} / {snap.rank['RssFile'] / MiB:,.0f} |",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
