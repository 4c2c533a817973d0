"""`stylebatch run` (the three stages chained locally, stylize on N MPI ranks) and `stylebatch styles`."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from stylebatch.errors import StylebatchError
from stylebatch.monitor import Monitor
from stylebatch.ranks import cpu_count

log = logging.getLogger(__name__)
ERROR_PREFIX = "stylebatch: error: "


def list_styles(args: argparse.Namespace) -> int:
    from stylebatch.models import DEFAULT_STYLE, list_styles as styles

    for s in styles():
        mark = " (default)" if DEFAULT_STYLE in (s.name, str(s.index)) else ""
        print(f"{s.index:>3}  {s.name:<20} {s.description}{mark}")
    return 0


def default_workers(device: str) -> int:
    """One rank per GPU. On CPU, one rank per core up to 4 (then more threads per rank): torch
    scales poorly across threads, and on 2 cores 2 ranks x 1 thread ran 1.3x faster end to end than
    1 rank x 2 threads (benchmarks/bench_pipeline.py). The cap bounds memory: each rank holds a model
    and its own frame batches."""
    if device != "cpu":
        import torch

        if torch.cuda.is_available():
            return max(1, torch.cuda.device_count())
    return max(1, min(cpu_count(), 4))


def find_mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def run(args: argparse.Namespace) -> int:
    from stylebatch.preprocess import check_places, settings_from_args
    from stylebatch.storage import location

    from stylebatch.manifest import delete_work

    out = location(args.output)
    settings_from_args(args, out.name)  # every flag is checked before any work starts
    owned_tmp = None
    check_places(location(args.input), out, location(args.work) if args.work else None)
    if args.work:
        work = location(args.work)
    else:
        owned_tmp = tempfile.mkdtemp(prefix="stylebatch-work-")
        work = location(owned_tmp)
    style_dir = tempfile.mkdtemp(prefix="stylebatch-style-")
    try:
        _run_stages(args, work, Path(style_dir))
    except BaseException:
        if owned_tmp and not _has_parts(work):
            shutil.rmtree(owned_tmp, ignore_errors=True)  # nothing stylized yet: nothing worth resuming
        elif _has_parts(work) or args.work:
            log.warning("work dir kept at %s: run again with --work %s to resume", work.display, work.display)
        raise
    finally:
        shutil.rmtree(style_dir, ignore_errors=True)
    if args.keep_work:
        log.info("work dir kept at %s", work.display)
    else:
        delete_work(work)  # only what stylebatch wrote there, never the user's own files
        if owned_tmp:
            shutil.rmtree(owned_tmp, ignore_errors=True)
    return 0


def _has_parts(work) -> bool:
    from stylebatch.manifest import PARTS_DIR

    try:
        return bool(work.child(PARTS_DIR).list())
    except StylebatchError:
        return False


def _run_stages(args: argparse.Namespace, work, style_dir: Path) -> None:
    from stylebatch import postprocess, preprocess
    from stylebatch.manifest import read_manifest
    from stylebatch.partition import chunk_bounds

    style_check = _StyleCheck(args, style_dir)
    style_check.start()  # loading the model (torch import, weights) overlaps preprocess
    preprocess.run(argparse.Namespace(input=args.input, output=args.output, work=work.address,
                                      codec=args.codec, crf=args.crf, bitrate=args.bitrate,
                                      preset=args.preset, chunk_frames=args.chunk_frames))
    style, workers = style_check.result()
    m = read_manifest(work)
    frames, chunks = m.frames, len(chunk_bounds(m.frames, m.chunk_frames))
    if workers > chunks:
        log.info("%d chunk(s) of work: running %d rank(s), not %d", chunks, chunks, workers)
        workers = chunks
    from stylebatch.models import parse_style, style_label

    log.info("stylizing %d frames on %d rank(s), style %s", frames, workers, style_label(parse_style(style)))
    stylize_args = ["--work", work.address, "--style", style, "--strength", str(args.strength),
                    "--device", args.device]
    if args.max_side:
        stylize_args += ["--max-side", str(args.max_side)]
    if args.batch_size:
        stylize_args += ["--batch-size", str(args.batch_size)]
    if args.keep_colors:
        stylize_args += ["--keep-colors"]
    if args.temporal:
        stylize_args += ["--temporal", args.temporal]
    if args.temporal_strength is not None:
        stylize_args += ["--temporal-strength", str(args.temporal_strength)]
    _stylize(stylize_args, workers, frames)
    postprocess.run(argparse.Namespace(work=work.address, output=args.output, delete_work=False))


class _StyleCheck(threading.Thread):
    """Loads the style once in the launcher, so a bad style fails before the ranks start."""

    def __init__(self, args: argparse.Namespace, style_dir: Path) -> None:
        super().__init__(daemon=True, name="stylebatch-style-check")
        self.args, self.style_dir = args, style_dir
        self.style: str | None = None
        self.workers = args.workers
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            from stylebatch.models import DEFAULT_STYLE, load_stylizer
            from stylebatch.stylize import resolve_style

            if self.args.device == "cuda":
                import torch

                if not torch.cuda.is_available():
                    raise StylebatchError("--device cuda: no GPU is visible here (use --device cpu or auto)")
            self.style = resolve_style(self.args.style or DEFAULT_STYLE, self.style_dir)
            load_stylizer(self.style, device="cpu", strength=self.args.strength, max_side=self.args.max_side,
                          keep_colors=self.args.keep_colors)
            if self.workers is None:
                self.workers = default_workers(self.args.device)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            self.error = exc

    def result(self) -> tuple[str, int]:
        self.join()
        if self.error is not None:
            raise self.error
        assert self.style is not None and self.workers is not None
        return self.style, self.workers


def _stylize(stylize_args: list[str], workers: int, frames: int) -> None:
    mpiexec = find_mpiexec()
    if mpiexec is None:
        if workers > 1:
            raise StylebatchError(f"--workers {workers} needs mpiexec (MPI), which is not installed")
        from stylebatch.cli import build_parser
        from stylebatch.stylize import run as stylize

        stylize(build_parser().parse_args(["stylize", *stylize_args]))
        return
    cmd = [mpiexec, "-n", str(workers), sys.executable, "-m", "stylebatch", "stylize", *stylize_args]
    from stylebatch.storage.credentials import carried_sas_env

    # A SAS from a URL reaches the ranks in their environment, never in their (world-readable) arguments.
    env = dict(os.environ, PYTHONUNBUFFERED="1", **carried_sas_env())
    monitor = Monitor(frames)
    errors: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            errors="replace")

    def forward_stderr() -> None:
        for line in proc.stderr:
            if line.startswith(ERROR_PREFIX):
                errors.append(line[len(ERROR_PREFIX):].strip())
            elif line.strip():
                monitor.passthrough(line)

    reader = threading.Thread(target=forward_stderr, daemon=True)
    reader.start()
    try:
        for line in proc.stdout:
            if not monitor.line(line) and line.strip():
                monitor.passthrough(line)
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: take the ranks down with us
            proc.terminate()
            proc.wait()
    reader.join()
    monitor.show(final=True)
    if code != 0:
        if errors:
            raise StylebatchError(errors[0])
        raise StylebatchError(f"stylize failed on one of {workers} rank(s) (exit code {code})")
