"""`stylebatch run` (the three stages chained locally, stylize on N MPI ranks) and `stylebatch styles`."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

from stylebatch import signals
from stylebatch.contract import (ERROR_PREFIX, EXIT_HUNG_UP, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_TRANSIENT,
                                 HWLOC_XMLFILE_ENV, START_GATE_ENV, no_topology_file, precision_problem)
from stylebatch.errors import BadInput, Interrupted, StylebatchError, TransientError
from stylebatch.logs import counted, say
from stylebatch.memory import RANK_BASE_BYTES, USABLE_SHARE, GiB, machine_bytes, ranks_that_fit
from stylebatch.monitor import Monitor
from stylebatch.ranks import HYDRA_BANNER, cpu_count, killed_by_sigkill, oom_kills
from stylebatch.requests import PreprocessRequest, RunRequest, StylizeRequest

log = logging.getLogger(__name__)


def list_styles(args: argparse.Namespace) -> int:
    from stylebatch.contract import DEFAULT_STYLE
    from stylebatch.styles import list_styles as styles

    for s in styles():
        mark = " (default)" if DEFAULT_STYLE in (s.name, str(s.index)) else ""
        say(f"{s.index:>3}  {s.name:<20} {s.description}{mark}")
    return 0


def default_workers(device: str, gpus: int) -> int:
    """One rank per GPU (`gpus`: how many this host's torch sees). On the CPU one rank, which
    stylizes a chunk per core at once (memory.default_pipelines): as fast as a rank per core (2
    ranks x 1 thread ran 1.04-1.4x faster than 1 rank x 2 threads, by style and size: torch scales
    poorly across threads) with one copy of torch and the network instead of one per rank, and one
    start of torch (benchmarks/reference_pipeline.py, docs/benchmarks.md)."""
    if device != "cpu" and gpus:
        return gpus
    return 1


def gpu_sharing(workers: int, gpus: int) -> str | None:
    """A warning when ranks outnumber the GPUs they run on (--workers above the GPU count): they
    share GPUs, each with its own CUDA context, kernel trials and batches in the GPU's memory; on one
    H200, 2 and 4 ranks took 1.15x and 1.2x one rank's time (docs/benchmarks.md)."""
    if not gpus or workers <= gpus:
        return None
    return (f"{workers} ranks on {counted(gpus, 'GPU')}: ranks will share GPUs, which was slower than one rank per "
            f"GPU where measured; leave out --workers for one rank per GPU")


def find_mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


@dataclass(frozen=True)
class Result:
    """What `run` made."""

    output: str  # the output's URI or path as shown to people (never a SAS)
    frames: int
    duration: float  # seconds of video
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage, in stage order


Progress = Callable[[int, int], None]
"""progress(done, frames): frames stylized so far over all ranks (resumed ones included), of the total."""


def run(args: RunRequest, progress: Progress | None = None, *, api: bool = False) -> Result:
    """The three stages on this machine. `progress` is called now and then while stylize runs. api:
    the caller is stylebatch.stylize_video, whose users are told how to resume in its terms (work=...)."""
    from stylebatch.contract import HARDWARE_ENCODERS
    from stylebatch.preprocess import check_input, check_places, encoder_settings, input_name, output_uri, source_name
    from stylebatch.storage import location
    from stylebatch.styles import check_style_files
    from stylebatch.workdir import claim_work, default_work_dir, delete_work_after, hold, made_for

    args.validate()
    src, out = location(args.input), location(args.output)
    settings = args.encoding.settings(out.name)  # every flag is checked before any work starts
    if settings.codec in HARDWARE_ENCODERS:  # the machine may lack them; PyAV's FFmpeg has the others
        encoder_settings(args.encoding, out.name)
    check_places(src, out, location(args.work) if args.work else None)
    check_input(src)  # not there, a folder, a FIFO or a device: before a work dir is made or the input read
    if args.model.device == "cuda" and not gpu_may_be_visible():  # before any input is read or work dir made
        raise StylebatchError(NO_GPU)
    if problem := precision_problem(args.model.precision, "cuda" if may_use_gpu(args.model.device) else "cpu"):
        raise BadInput(f"--precision {problem}")  # --device auto on a machine without a GPU driver: the CPU
    check_style_files(args.model.chosen_style)
    if args.work:
        work, made = location(args.work), None
        resume = how_to_resume(work.display, given=True, api=api)
    else:
        identity = src.identity()
        work = location(default_work_dir(input_name(src), identity, output_uri(out), _parts_key(args, settings)))
        made = made_for(input_name(src), identity, output_uri(out))
        resume = how_to_resume(work.display, given=False, api=api)
    claim_work(work, source_name(src.name), made_for=made)
    scratch, scratch_lock = _make_scratch()  # private (0700): style, rank scratch, MPI
    held, result = False, None
    try:
        with hold(work):
            held = True
            if not args.work:
                _remove_outdated(work)
            result = _run_stages(args, src, out, work, scratch, progress)
            if args.keep_work:
                log.info("work dir kept at %s", work.display)
            else:
                delete_work_after(work, result.output)  # only what its records list, never the user's own files
    except (KeyboardInterrupt, Interrupted) as exc:  # Interrupted: a stage's process stopped on its own (a signal)
        said, code = ((f"interrupted by {signals.cause()}", signals.exit_code()) if isinstance(exc, KeyboardInterrupt)
                      else (str(exc), exc.exit_code))
        if result is not None:  # stopped while its work dir was being removed: the output is there
            raise Interrupted(f"{said} after {result.output} was written, while work dir {work.display} was being "
                              "removed: delete what is left of it", code) from None
        # nothing to resume from, or only preprocess's copy of the input (a small share of the run's time
        # that would keep the input's size on disk): run's own work dir goes
        if held and not args.work and not _has_parts(work):
            read = _preprocessed(work)
            if _forget(work):
                raise Interrupted(f"{said} before {'any chunk was stylized' if read else 'the input was read'}: "
                                  "nothing kept", code) from None
        raise Interrupted(f"{said}: {_state(work)}: {resume}", code) from None
    except BaseException:
        if not held:
            raise  # another run holds the work dir: nothing of it is this run's to keep or forget
        if not args.work and not _has_parts(work):
            _forget(work)  # nothing stylized yet: nothing worth resuming
        elif _has_parts(work):
            # bad input (exit 2): the same command again cannot help, and the error says what to change
            # (another --work, where the work dir holds other settings' parts); advice to resume with it
            # contradicted that
            exc = sys.exc_info()[1]
            log.warning("work dir kept at %s%s", work.display, "" if isinstance(exc, BadInput) else f": {resume}")
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        _SCRATCH_LOCKS.discard(scratch_lock)
        os.close(scratch_lock)
    return result


def how_to_resume(work: str, given: bool, api: bool) -> str:
    """How to resume a run whose work dir (`work`, as shown; `given`: by the user, not run's own) was
    kept, in the caller's terms: the CLI's (--work) or, for `api`, stylize_video's (work=...)."""
    if api:
        return (f"call stylize_video again with work={work!r} to resume" if given
                else "call stylize_video again with the same arguments to resume")
    return f"run again with --work {work} to resume" if given else "run the same command again to resume"


SCRATCH_PREFIX = "stylebatch-run-"  # a run's scratch folder in TMPDIR
SCRATCH_LOCK = ".held"  # in it: flock(2)ed by the run for as long as it lives
SCRATCH_SWEEP_AGE_S = 60  # a lock file younger than this is a run starting, never swept
_SCRATCH_LOCKS: set[int] = set()  # this process's runs' lock descriptors, handed to their stage processes


def _make_scratch() -> tuple[Path, int]:
    """This run's private scratch folder in TMPDIR and the descriptor of its lock file, held (flock)
    until this process closes it or dies. First the scratch of runs that died without removing theirs
    (SIGKILL, the OOM killer, a power cut: a killed run's rank scratch held its last parts) is swept."""
    import fcntl

    _sweep_scratch(Path(tempfile.gettempdir()))
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    fd = os.open(scratch / SCRATCH_LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # a TMPDIR without flock (some NFS, Lustre): unlocked, a sweep there keeps it too
        log.debug("no flock in %s: this run's scratch is not marked as live", scratch.parent)
    _SCRATCH_LOCKS.add(fd)
    return scratch, fd


def _sweep_scratch(tmp: Path, now: float | None = None) -> list[Path]:
    """Remove the scratch folders in `tmp` whose run is gone: this user's, with a lock file no process
    holds that is older than SCRATCH_SWEEP_AGE_S (one just made, its run about to lock it, stays).
    Folders without a lock file (not a run's, or an older version's) stay. Returns those removed."""
    import fcntl
    import stat

    removed, now = [], time.time() if now is None else now
    for folder in sorted(tmp.glob(SCRATCH_PREFIX + "*")):
        try:
            st = folder.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            fd = os.open(folder / SCRATCH_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if now - os.fstat(fd).st_mtime < SCRATCH_SWEEP_AGE_S:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: its run lives
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    if removed:
        log.debug("removed the scratch of %s that ended without removing it", counted(len(removed), "run"))
    return removed


def _parts_key(args: RunRequest, settings) -> dict:
    """What the parts depend on, for the name of run's own work dir (default_work_dir): the style
    settings (files by their path or URI, without a SAS) and the encoding. A run with others gets a
    work dir of its own, and running the first command again still resumes the first; in one work dir
    parts of other settings are refused (a user's --work) or, where a style file's bytes changed
    under the same name, stylized again (stylize --restyle)."""
    import dataclasses

    from stylebatch.styles import shown_style
    from stylebatch.temporal_defaults import with_defaults

    m = args.model
    temporal, steady = with_defaults(m.temporal, m.temporal_strength)
    steady = steady if temporal == "on" else 0.0  # as the parts' record has it (stylize.settings_record)
    return {"style": shown_style(m.chosen_style), "strength": m.strength, "max_side": m.max_side,
            "keep_colors": m.keep_colors, "temporal": temporal, "temporal_strength": steady,
            "encoding": dataclasses.asdict(settings), "chunk_frames": args.encoding.chunk_frames}


def _remove_outdated(work) -> None:
    """Remove run's own work dirs for this input and output that were made from another version of
    the input (workdir.remove_outdated), in one line."""
    from stylebatch.workdir import remove_outdated

    removed = remove_outdated(work)
    if removed:
        freed = sum(n for _, n in removed)
        mb = f"{freed / 1e6:.0f} MB" if freed >= 1e6 else f"{freed / 1e6:.2g} MB"
        what = "an earlier run's work dir" if len(removed) == 1 else f"{len(removed)} earlier runs' work dirs"
        log.info("removed %s for this input and output (%s): the input changed since, so no run could resume %s",
                 what, mb, "it" if len(removed) == 1 else "them")


def _has_parts(work) -> bool:
    from stylebatch.manifest import PARTS_DIR

    try:
        return bool(work.child(PARTS_DIR).list())
    except StylebatchError:
        return False


def _preprocessed(work) -> bool:
    """Whether preprocess finished in `work` (its manifest is there): the least a later run resumes from."""
    from stylebatch.manifest import MANIFEST_NAME

    try:
        return work.child(MANIFEST_NAME).exists()
    except StylebatchError:
        return False


def _state(work) -> str:
    """The work dir's state in a few words, for the line an interrupted run ends with."""
    from stylebatch.manifest import PARTS_DIR, read_manifest
    from stylebatch.partition import chunk_bounds

    try:
        m = read_manifest(work)
        done = len(work.child(PARTS_DIR).list())
    except StylebatchError:
        return f"work dir {work.display} kept (the input was not fully read yet)"
    return f"work dir {work.display} kept with {done} of {len(chunk_bounds(m.frames, m.chunk_frames))} chunks stylized"


def _forget(work) -> bool:
    """Delete the work dir's files (it holds nothing worth resuming); whether that was done."""
    from stylebatch.workdir import delete_work, hold

    try:
        with hold(work):
            delete_work(work)
    except StylebatchError:
        return False
    return True


def _run_stages(args: RunRequest, src, out, work, scratch: Path, progress: Progress | None) -> Result:
    from stylebatch.partition import chunk_bounds
    from stylebatch.workdir import lock_token

    style_check = _StyleCheck(args, scratch)
    style_check.start()  # loading the model (torch import, weights) overlaps preprocess
    timings, t0 = {}, time.monotonic()
    early = _early_ranks(args, work, lock_token(work), scratch)
    try:
        m = _preprocess(args.preprocess_request(work.address, src.address, out.address), work, lock_token(work),
                        scratch)
        timings["preprocess"], t0 = time.monotonic() - t0, time.monotonic()
        style, workers = style_check.result()
        if not style_check.gpus and (problem := precision_problem(args.model.precision, "cpu")):
            raise BadInput(f"--precision {problem}")  # a GPU driver here, but torch sees no GPU: before the ranks
        frames, chunks = m.frames, len(chunk_bounds(m.frames, m.chunk_frames))
        if workers > chunks:
            log.info("%s of work: running %s, not %d", counted(chunks, "chunk"), counted(chunks, "rank"), workers)
            workers = chunks
        model = args.model
        gpu = model.device != "cpu" and style_check.gpus > 0
        if gpu and (note := gpu_sharing(workers, style_check.gpus)):
            log.warning("%s", note)
        fit = ranks_that_fit(m, model.max_side, model.batch_size, gpu)  # before any stylize
        if workers > fit:
            log.info("memory for %s of %dx%d frames: running %d, not %d", counted(fit, "rank"), m.display_width,
                     m.display_height, fit, workers)
            workers = fit
        from stylebatch.styles import parse_style, style_label

        log.info("stylizing %s on %s, style %s", counted(frames, "frame"), counted(workers, "rank"),
                 style_label(parse_style(style)))
        if early is not None and (early.workers, early.style) == (workers, style):
            log.debug("the %s started beside preprocess go on", counted(workers, "rank"))
            ranks, early = early, None
        else:
            if early is not None:
                _discard_stage(early.proc)
                early = None
            ranks = _start_ranks(args.stylize_request(work.address, style), workers, lock_token(work), scratch)
        try:
            if ranks.gate is not None:
                ranks.gate.touch()  # go
            _stylize(ranks, frames, progress)
        finally:
            _stop_stage(ranks.proc)  # a failure before _stylize follows them, too (a no-op after it)
    finally:
        if early is not None:  # preprocess failed, or the run was interrupted: the waiting ranks go too
            _discard_stage(early.proc)
    timings["stylize"], t0 = time.monotonic() - t0, time.monotonic()
    from stylebatch import postprocess  # PyAV: only once the ranks are done

    shown = postprocess.run(args.postprocess_request(work.address))
    timings["postprocess"] = time.monotonic() - t0
    duration = (m.pts[-1] - m.pts[0] + m.last_duration) * Fraction(*m.time_base) if m.frames else 0
    return Result(output=shown, frames=m.frames, duration=float(duration), timings=timings)


_CHECK_STYLE = "import json, sys; from stylebatch.run import check_style_child; check_style_child(json.loads(sys.argv[1]))"


def _check_style(style: str, model) -> int:
    """Load the style as the ranks will, in a child process: the launcher never imports torch, so it
    holds none of torch's or the model's memory (about 300 MB) while the ranks work. Returns how
    many GPUs torch sees here."""
    options = {"style": style, "strength": model.strength, "max_side": model.max_side, "keep_colors": model.keep_colors}
    result = subprocess.run([sys.executable, "-c", _CHECK_STYLE, json.dumps(options)], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, errors="replace")
    if result.returncode == 0:
        return int(result.stdout.split()[-1])
    reason = next((line[len(ERROR_PREFIX):].strip() for line in result.stderr.splitlines()
                   if line.startswith(ERROR_PREFIX)), None)
    if reason is None:
        raise StylebatchError(f"checking style {style} failed (exit code {result.returncode}): "
                              f"{' '.join(result.stderr.split())[-300:]}")
    raise (TransientError if result.returncode == EXIT_TRANSIENT else StylebatchError)(reason)


def check_style_child(options: dict) -> None:
    """The child of `_check_style`: prints the GPUs torch sees, or one error line and the error's
    exit code for a bad style."""
    import torch

    from stylebatch.cli import exit_now
    from stylebatch.models import load_stylizer

    try:
        # fp32: the precision is the ranks' to choose (auto times bf16 against fp32: cpu_bf16_speedup)
        load_stylizer(options["style"], device="cpu", strength=options["strength"], max_side=options["max_side"],
                      keep_colors=options["keep_colors"], precision="fp32")
    except StylebatchError as exc:
        sys.stderr.write(f"{ERROR_PREFIX}{' '.join(str(exc).split())}\n")
        exit_now(exc.exit_code)
    print(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    exit_now(0)  # beside preprocess, on the way to the ranks: torch's teardown would only delay them


def _builtin_only(style: str) -> bool:
    """Whether the style is built-in styles only (names checked by parse_style, no file to load)."""
    from stylebatch.styles import BUILTIN_KIND, parse_style

    return all(part.kind == BUILTIN_KIND for part in parse_style(style))


def _local_only(style: str) -> bool:
    """Whether every part of the style is built-in or a file on this machine (nothing to download)."""
    from stylebatch.storage import location
    from stylebatch.styles import BUILTIN_KIND, parse_style

    return all(part.kind == BUILTIN_KIND or location(part.ref).is_local() for part in parse_style(style))


NO_GPU = "--device cuda: no GPU is visible here (use --device cpu or auto)"
GPU_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/dxg", "/dev/kfd")  # NVIDIA; WSL2 and Docker Desktop; AMD ROCm


def gpu_may_be_visible() -> bool:
    """Whether torch may see a GPU here: a GPU driver's device files (or NVIDIA's /proc entry) exist.
    Without any, it sees none, so no torch start-up is needed to know it."""
    return (any(next(Path("/").glob(pattern.lstrip("/")), None) for pattern in GPU_DEVICE_FILES)
            or Path("/proc/driver/nvidia/gpus").is_dir())


def may_use_gpu(device: str) -> bool:
    """Whether a run with --device `device` may stylize on a GPU here: cuda, or auto where a GPU
    driver's device files exist (otherwise torch sees none, and nothing needs torch to know it)."""
    return device == "cuda" or (device == "auto" and gpu_may_be_visible())


class _StyleCheck(threading.Thread):
    """Resolves the style (blob files fetched) and, where a GPU may be in use, checks it in a child
    process that also counts the GPUs, beside preprocess, so a bad style fails before the ranks start.
    On the CPU (--device cpu, or auto with no GPU driver here) there is no child: what `run` could check
    without torch was checked before preprocess (styles.check_style_files); the ranks load the style
    first thing, and what only loading tells (a .pth's tensors) fails them with its own one line before
    any frame, while every good job starts its ranks about 2 s sooner (the child's torch start-up,
    longer than preprocess)."""

    def __init__(self, args: RunRequest, style_dir: Path) -> None:
        super().__init__(daemon=True, name="stylebatch-style-check")
        self.model, self.style_dir = args.model, style_dir
        self.style: str | None = None
        self.workers = args.workers
        self.gpus = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            from stylebatch.styles import onnx_path, resolve_style

            self.style = resolve_style(self.model.chosen_style, self.style_dir)
            if _builtin_only(self.style):
                onnx_path()  # a name parse_style knows and the weights installed: a child could add nothing
            if may_use_gpu(self.model.device):
                self.gpus = _check_style(self.style, self.model)
            if self.model.device == "cuda" and not self.gpus:
                raise StylebatchError(NO_GPU)
            if self.workers is None:
                self.workers = default_workers(self.model.device, self.gpus)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            self.error = exc

    def result(self) -> tuple[str, int]:
        self.join()
        if self.error is not None:
            raise self.error
        assert self.style is not None and self.workers is not None
        return self.style, self.workers


def _child_env(token: str | None, scratch: Path) -> dict[str, str]:
    """A stage process's environment: the run's log format, lock token and private temp folder, and
    the SAS of any URL given (in the environment, never in the world-readable arguments)."""
    from stylebatch import logs
    from stylebatch.contract import API_CALLER, CALLER_ENV, called_by_api
    from stylebatch.storage.credentials import carried_sas_env
    from stylebatch.workdir import LOCK_ENV

    env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(scratch), **logs.child_env(), **carried_sas_env(),
               **({LOCK_ENV: token} if token else {}))
    env.pop(CALLER_ENV, None)
    return dict(env, **{CALLER_ENV: API_CALLER}) if called_by_api() else env


def _start_stage(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a stage's process (preprocess; a lone rank; mpiexec and its ranks), its stdout and stderr
    piped to the launcher (read by `_stage_process`)."""
    # stdin: a `while read` loop's list. A session of its own: a terminal's Ctrl-C or hang-up reaches
    # the launcher alone, which stops the stage below (a signal straight to a Python process still
    # importing would end it with a traceback, or kill it before its handlers are in place); and
    # should the launcher itself be killed outright, the kernel sends the stage SIGTERM.
    # The run's scratch lock goes with it (_SCRATCH_LOCKS): held while any of the run's processes
    # lives, so a new run sweeps no scratch a stage still writes after the launcher was killed.
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, errors="replace", start_new_session=True,
                            preexec_fn=_die_with_launcher(), pass_fds=tuple(_SCRATCH_LOCKS))


def _stop_stage(proc: subprocess.Popen) -> None:
    """Take a stage's process (its whole process group) down, if it still runs: SIGTERM, and after
    20 s SIGKILL to it and every process under it (`signals.kill_tree`); reaped."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            signals.kill_tree(proc.pid)
            proc.wait()


def _discard_stage(proc: subprocess.Popen) -> None:
    """Kill a stage's process whose output was never read (ranks started early, not needed, still at
    their gate or short of it), and every process under it, at once, and close its pipes. Before the
    gate a rank has touched nothing (not MPI, whose start-up files in /dev/shm a kill inside MPI_Init
    would leave, nor the work dir or scratch). SIGTERM, as before, left one waiting 1 run in 5 for
    the 20 s of `_stop_stage`: inside MPI_Init, its Python handler not yet run, on a peer SIGTERM had
    already ended (then MPI started before the gate)."""
    if not Path("/proc/self/stat").exists():  # no /proc to find the proxies and ranks by: ask mpiexec
        _stop_stage(proc)
    elif proc.poll() is None:
        signals.kill_tree(proc.pid)
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _stage_process(proc: subprocess.Popen, out_line: Callable[[str], None],
                   err_line: Callable[[str], None]) -> tuple[int, list[str]]:
    """Follow a stage's process (`_start_stage`) to its end: each line of its stdout goes to out_line,
    of its stderr to err_line, except the `stylebatch: error:` lines, returned (reasons only) with the
    exit code. Interrupted, the process is stopped (`_stop_stage`). Both pipes are closed however it
    ends (each by its reader), not left to the garbage collector: an API caller's process calls
    this again and again, and a failure's traceback would hold them open."""
    errors: list[str] = []
    try:
        def forward_stderr() -> None:
            with proc.stderr:  # closed by this thread once the stage is gone: never joined when interrupted
                for line in proc.stderr:
                    if line.startswith(ERROR_PREFIX):
                        errors.append(line[len(ERROR_PREFIX):].strip())
                    else:
                        err_line(line)

        reader = threading.Thread(target=forward_stderr, daemon=True)
        reader.start()
        for line in proc.stdout:
            out_line(line)
        code = proc.wait()
    finally:
        _stop_stage(proc)  # interrupted: take the stage down with us
        proc.stdout.close()
    reader.join()
    return code, errors


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_launcher() -> Callable[[], None] | None:
    """A preexec_fn arming the kernel to send the stage process SIGTERM when the launcher dies
    without stopping it (SIGKILL, `timeout -s KILL`): a stage in a session of its own is no longer
    reached by a signal to the launcher's process group. None where prctl cannot be had (not Linux).
    It only calls a function looked up beforehand: nothing in the forked child imports or locks."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    launcher, term = os.getpid(), int(signal.SIGTERM)

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, term)
        if os.getppid() != launcher:  # it died before the line above
            os.kill(os.getpid(), term)

    return arm


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    """signum to a stage process and its process group (it leads its own: mpiexec's proxies and ranks)."""
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        proc.send_signal(signum)


def _preprocess(req: PreprocessRequest, work, token: str | None, scratch: Path):
    """Stage 1 in a child process, as its pod runs it; its manifest. The launcher itself then never
    imports PyAV or numpy: it holds about 24 MiB instead of 67 while the ranks work (docs/benchmarks.md)."""
    from stylebatch.manifest import read_manifest

    def passthrough(line: str) -> None:
        if line.strip():
            sys.stderr.write(line)
            sys.stderr.flush()

    ooms = oom_kills()
    code, errors = _stage_process(_start_stage([sys.executable, "-m", "stylebatch", *req.to_argv()],
                                               _child_env(token, scratch)), passthrough, passthrough)
    if code == 0:
        return read_manifest(work)
    stopped = _stopped("preprocess", code, errors)
    if stopped:
        raise stopped
    if errors:  # what preprocess said; its exit code says whether a retry can help
        raise (TransientError if code == EXIT_TRANSIENT else StylebatchError)(errors[0])
    if code == -signal.SIGKILL:
        raise _killed("preprocess", ooms, "")
    if code < 0:
        raise StylebatchError(f"preprocess was killed (signal {-code})")
    raise StylebatchError(f"preprocess failed (exit code {code})")


def _stopped(stage: str, code: int, errors: list[str]) -> Interrupted | None:
    """A stage's process stopped by a stop signal aimed at it (its exit code for one, or the signal
    itself where it came before its handlers were in place): Interrupted, the work dir resumable."""
    if code in (-signal.SIGINT, -signal.SIGTERM, -signal.SIGHUP):
        code = 128 - code
    if code not in (EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_HUNG_UP):
        return None
    return Interrupted(f"{stage} {errors[0] if errors else 'was interrupted'}", code)


def _killed(who: str, ooms_before: int | None, advice: str) -> StylebatchError:
    """Why `who` died of SIGKILL: the kernel's out-of-memory killer when its count in this cgroup rose
    meanwhile (or cannot be read: the likeliest cause; exit code 2, the same run would fail again),
    else someone outside stylebatch (a transient error: a retry can work)."""
    after = oom_kills()
    if ooms_before is None or after is None or after > ooms_before:
        return StylebatchError(f"{who} ran out of memory (the kernel killed it){advice}")
    return TransientError(f"{who} was killed (signal 9) from outside stylebatch")  # another try can work


@dataclass
class _Ranks:
    """The stylize stage's processes (`_start_ranks`): `workers` ranks with `style`, waiting at `gate`
    (a file the launcher creates) when started before preprocess was done."""

    proc: subprocess.Popen
    workers: int
    style: str
    gate: Path | None
    ooms: int | None  # the memory cgroup's OOM kills when they started


def _start_ranks(req: StylizeRequest, workers: int, token: str | None, scratch: Path,
                 gate: Path | None = None) -> _Ranks:
    """Stage 2's processes: one rank alone is a plain process (no MPI needed: no mpiexec or hydra proxy
    beside it, about 5 MiB, and no MPI library or mpi4py in it); more are ranks under mpiexec. With
    `gate`, the ranks import torch, then wait for that file (START_GATE_ENV)."""
    rank = [sys.executable, "-m", "stylebatch", *req.to_argv()]
    if workers == 1:
        cmd = rank
    else:
        mpiexec = find_mpiexec()
        if mpiexec is None:
            raise StylebatchError(f"--workers {workers} needs mpiexec (MPI), which is not installed")
        cmd = [mpiexec, "-n", str(workers), *rank]
    # The ranks' scratch goes into the run's private folder (removed however the run ends), and so
    # does the topology file MPICH's proxy would otherwise leave in /tmp when a rank aborts: with
    # HWLOC_XMLFILE set it writes none (the ranks then read the topology themselves).
    env = dict(_child_env(token, scratch), **{HWLOC_XMLFILE_ENV: no_topology_file(str(scratch))})
    if gate is not None:
        env[START_GATE_ENV] = str(gate)
    ooms = oom_kills()
    return _Ranks(_start_stage(cmd, env), workers, req.model.style or "", gate, ooms)


# Memory the early ranks leave free for preprocess beside them (it decodes a frame or two to probe).
PREPROCESS_BYTES = GiB


def _early_ranks(args: RunRequest, work, token: str | None, scratch: Path) -> _Ranks | None:
    """The ranks started beside preprocess, where the launcher can already tell how many and with
    which style without loading or fetching anything: on the CPU (no GPU driver here), built-in styles
    and local style files (.pth, paintings; the ranks load and check them after their gate, as they
    would if started later), not blobs (the style check downloads those first), and memory for them
    all beside preprocess. They import torch meanwhile (about 1.5-2 s of a rank's start, longer than
    preprocess of a local clip) and wait at their gate. Else None (started afterwards)."""
    from stylebatch.styles import resolve_style

    model = args.model
    if may_use_gpu(model.device):
        return None
    try:
        if not _local_only(model.chosen_style):
            return None
        style = resolve_style(model.chosen_style, scratch)  # as the style check will: nothing fetched
    except StylebatchError:  # reported by the style check, after preprocess, as without early ranks
        return None
    workers = args.workers or default_workers(model.device, 0)
    if workers > 1 and find_mpiexec() is None:  # the run may yet need only one (a short clip): decided later
        return None
    if workers * RANK_BASE_BYTES + PREPROCESS_BYTES > machine_bytes() * USABLE_SHARE:
        return None
    return _start_ranks(args.stylize_request(work.address, style), workers, token, scratch, scratch / "start-gate")


def _stylize(ranks: _Ranks, frames: int, progress: Progress | None = None) -> None:
    """Follow the ranks to their end, their progress lines shown (and handed to `progress`)."""
    monitor = Monitor(frames, on_update=progress)
    banner: list[str] = []

    def out_line(line: str) -> None:
        if HYDRA_BANNER.match(line):
            banner.append(line)
        elif not monitor.line(line) and line.strip():
            monitor.passthrough(line)

    def err_line(line: str) -> None:
        if HYDRA_BANNER.match(line):
            banner.append(line)
        elif line.strip():
            monitor.passthrough(line)

    code, errors = _stage_process(ranks.proc, out_line, err_line)
    monitor.show(final=True)
    if code != 0:
        stopped = _stopped("stylize", code, errors)
        if stopped:
            raise stopped
        if errors:  # what the failing rank said; its exit code says whether a retry can help
            raise (TransientError if code == EXIT_TRANSIENT else StylebatchError)(errors[0])
        if killed_by_sigkill(banner) or code == -signal.SIGKILL:
            raise _killed("a rank", ranks.ooms, "; try --max-side or --batch-size 1")
        if code < 0:
            raise StylebatchError(f"stylize was killed (signal {-code})")
        raise StylebatchError(f"stylize failed on one of {counted(ranks.workers, 'rank')} (exit code {code})")
