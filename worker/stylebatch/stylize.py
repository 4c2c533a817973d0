"""Stage 2, one MPI rank: stylize this rank's share of the chunks into encoded parts in the work dir.

A rank stylizes --pipelines chunks at once (pipeline.run_pipelines), each with its own decoder and
encoder, all sharing one copy of torch and the network. Parts already in the work dir are skipped
(resume); a failing pipeline ends the rank, and a failing rank aborts the whole MPI job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

from stylebatch.contract import ERROR_PREFIX, PART_EXT, START_GATE_ENV, called_by_api, run_by_operator
from stylebatch.encoder import PartWriter, part_encoding
from stylebatch.errors import StylebatchError, TransientError
from stylebatch.logs import counted, set_rank
from stylebatch.memory import default_batch, default_pipelines, on_gpu, one_heap, pipelines_that_fit, reuse_freed_memory
from stylebatch.manifest import PARTS_DIR, STYLIZE_NAME, Manifest, read_manifest
from stylebatch.dispatch import ChunkDispenser, dispense
from stylebatch.partition import chunk_bounds, part_name
from stylebatch.pipeline import Busy, Progress, run_pipeline, run_pipelines
from stylebatch.progress import RankProgress
from stylebatch.ranks import World, cpu_count, detect
from stylebatch.styles import resolve_style
from stylebatch.requests import ModelOptions, StylizeRequest
from stylebatch.video import ChunkReader, keyframe_before

log = logging.getLogger(__name__)


def run(req: StylizeRequest, sink: Callable[[RankProgress], None] | None = None) -> None:
    """Stage 2 on this rank (all ranks of an MPI job run it with the same request).

    sink: where this rank's progress records go (stylebatch.pipeline.Progress), called in this
    thread; default: progress lines on stdout, for mpiexec to gather."""
    req.validate()
    one_heap()  # for every thread: set before torch and the pipelines' threads allocate
    gate = os.environ.get(START_GATE_ENV)
    if gate:
        _wait_at_gate(gate, req.model)
    world = detect()  # MPI only past the gate: ranks killed before it leave nothing in /dev/shm
    set_rank(world.rank)  # a lone rank (no mpiexec) is rank 0 in JSON records too
    if sink is None and world.size == 1 and sys.stdout.isatty():
        sink = _progress_log()
    tmp = _rank_tmp(world.rank)
    try:
        with _work_lock(req.work, world):
            stylize(req, world, tmp, sink)
    except StylebatchError as exc:
        if world.size > 1:
            sys.stderr.write(f"{ERROR_PREFIX}{' '.join(str(exc).split())}\n")  # one write: one line
            _abort(world, tmp, exc.exit_code)
        raise
    except KeyboardInterrupt:  # a stop signal (the launcher's, Ctrl-C, or one aimed at this rank): no traceback
        if world.size > 1:
            # MPI_Finalize waits for every rank, and a signal aimed at this rank alone (`kill` of one
            # rank, an evicted worker pod) stops no other: the run hung, the others drawing chunks from
            # a counter whose rank was finalizing. MPI_Abort ends them all; the launcher says the run
            # was interrupted and keeps the work dir to resume.
            from stylebatch import signals

            sys.stderr.write(f"{ERROR_PREFIX}interrupted by {signals.cause()}\n")
            _abort(world, tmp, signals.exit_code())
        raise
    except SystemExit:  # left the gate orphaned: before MPI
        raise
    except BaseException:
        if world.size > 1:
            traceback.print_exc()
            _abort(world, tmp, 1)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _progress_log() -> Callable[[RankProgress], None]:
    """Progress for `stylebatch stylize` run by hand on a terminal (a lone rank, stdout a terminal):
    "stylize: 120/480 frames (25%), ..." log lines, as `stylebatch run` says it, instead of the
    STYLEBATCH_PROGRESS records a launcher or the operator reads from a pipe or a pod's log."""
    from stylebatch.monitor import Monitor

    monitor: Monitor | None = None

    def sink(p: RankProgress) -> None:
        nonlocal monitor
        monitor = monitor or Monitor(p.frames, tty=False)
        monitor.record(p)

    return sink


def _wait_at_gate(gate: str, model: ModelOptions) -> None:
    """Started before preprocess is done (`stylebatch run`, START_GATE_ENV): import torch meanwhile,
    and, if the gate is still shut, time bf16 against fp32 where --precision auto will (a .pth on the
    CPU: models.time_bf16_ahead), then wait for the launcher's go (the file `gate`). The launcher
    kills the ranks if it never comes; a rank whose parent is gone (mpiexec's proxy, or the launcher
    of a lone rank) stops waiting.
    Nothing before the gate touches MPI, the work dir or scratch, so a rank killed here leaves nothing."""
    parent = os.getppid()
    import torch  # noqa: F401 - most of a rank's start-up (about 1.5 s), done beside preprocess

    from stylebatch.models import time_bf16_ahead

    if not os.path.exists(gate):  # (open already: loading times it, if the rank has frames left to paint)
        time_bf16_ahead(model.chosen_style, device=model.device, precision=model.precision or "auto")

    while not os.path.exists(gate):
        if os.getppid() != parent:
            raise SystemExit(1)  # orphaned: no one will open the gate, or read this rank's output
        time.sleep(0.01)


def _abort(world: World, tmp: Path, code: int) -> None:
    """End every rank of the job now; this one exits without reporting anything twice."""
    sys.stderr.flush()
    shutil.rmtree(tmp, ignore_errors=True)
    world.abort(code)
    os._exit(code)  # MPI_Abort may return before it takes this process down


@contextlib.contextmanager
def _work_lock(work_uri: str, world: World) -> Iterator[None]:
    """The work dir's lock for the whole stage. Ranks started by `stylebatch run` work under the run's
    lock (its token is in their environment); under a bare mpiexec (the operator's MPIJob) rank 0
    takes it, tells the others whether it got it, and lets go only after every rank is done."""
    from stylebatch.storage import location
    from stylebatch.workdir import LOCK_ENV, hold

    work = location(work_uri)
    if world.size == 1 or os.environ.get(LOCK_ENV) or world.comm is None:
        if world.rank == 0 or os.environ.get(LOCK_ENV):
            with hold(work):
                yield
        else:
            yield  # without mpi4py the ranks cannot wait for rank 0: rank 0 holds the lock alone
        return
    with contextlib.ExitStack() as stack:
        failure = None
        if world.rank == 0:
            try:
                stack.enter_context(hold(work))
            except StylebatchError as exc:
                failure = exc
        code = world.comm.bcast(failure.exit_code if failure else 0, root=0)
        if failure is not None:
            raise failure
        if code:
            time.sleep(60)  # rank 0 reports why and aborts the job, this rank included
            raise SystemExit(code)
        yield
        world.comm.Barrier()  # rank 0 lets go of the lock only when every rank is done


def _rank_tmp(rank: int) -> Path:
    """This rank's private scratch folder (mode 0700, an unpredictable name), removed on every way
    out; under `stylebatch run` it lies in the run's own private folder (TMPDIR), removed by the run."""
    return Path(tempfile.mkdtemp(prefix=f"stylebatch-rank{rank}-"))


def stylize(req: StylizeRequest, world: World, tmp: Path,
            sink: Callable[[RankProgress], None] | None = None) -> None:
    from stylebatch.storage import location

    model = req.model
    work = location(req.work)
    m = read_manifest(work)
    reuse_freed_memory(m.display_width * m.display_height)  # freed activations kept, unless frames are huge
    chunks = chunk_bounds(m.frames, m.chunk_frames)
    have = set(work.child(PARTS_DIR).list()) if work.child(PARTS_DIR).exists() else set()
    done = {c for c in chunks if part_name(*c, PART_EXT) in have}
    missing = [c for c in chunks if c not in done]
    style = resolve_style(model.chosen_style, tmp)
    keep_colors = model.keep_colors
    temporal = temporal_settings(model)
    record = settings_record(style, model.strength, model.max_side, keep_colors, *temporal,
                             encoding=part_encoding(m.encoder))
    if _settings_checked(work, record, sorted(part_name(*c, PART_EXT) for c in done), req.restyle, world):
        done, missing = set(), list(chunks)  # the parts of other settings are gone: every chunk to do
    resumed = sum(e - s for s, e in done) if world.rank == 0 else 0  # rank 0 reports the resumed parts
    progress = Progress(world, resumed, resumed, m.frames, sink)
    progress.report(force=True)
    if missing:
        gpu = on_gpu(model.device)
        rank_cpus = max(1, cpu_count() // world.local_size)
        # Pre-flight: this machine's ranks together must fit its memory (one line naming --max-side if
        # not); a rank runs fewer pipelines than asked where that is what fits
        wanted = min(req.pipelines or default_pipelines(gpu, rank_cpus), len(missing))
        pipelines = pipelines_that_fit(m, model.max_side, model.batch_size, gpu, world.local_size, wanted)
        threads = max(1, rank_cpus // pipelines)
        # on the CPU the model's threads fill this rank's cores: a decoder and an encoder with as many
        # threads again would only contend with them (5% slower at 640x360); beside a GPU they get them
        codec = threads if gpu else 1
        at_once = "" if pipelines == 1 else f", {pipelines} at once"
        log.info("rank %d/%d: %d of %s left to stylize, taken one at a time%s (%s%s)", world.rank, world.size,
                 len(missing), counted(len(chunks), "chunk"), at_once, counted(threads, "thread"),
                 "" if pipelines == 1 else " each")
        from stylebatch.temporal_defaults import warmup_frames

        warmup = warmup_frames(m.chunk_frames) if temporal[0] == "on" else 0
        source = _local_source(work, m, tmp)
        size = decode_size(m, model.max_side, model.strength, keep_colors)
        readers: list[ChunkReader] = []
        try:
            readers.append(ChunkReader(source, m, threads=codec, keep=warmup, size=size))
            stylizer = _load(model, world, threads, style, _own_frame(readers[0], m, style, model.strength))
            note = stylizer.arithmetic_note(model.precision or "auto")
            if note and world.rank == 0:  # fp32 goes without saying, unless auto measured bf16 against it
                log.info("rank 0/%d: the networks compute in %s", world.size, note)
            batch = model.batch_size or default_batch(stylizer.device.type == "cuda")
            while len(readers) < pipelines:
                readers.append(ChunkReader(source, m, threads=codec, keep=warmup, size=size))

            def publish(chunk: tuple[int, int], path: Path) -> None:
                work.child(PARTS_DIR, part_name(*chunk, PART_EXT)).upload(path)
                path.unlink()

            def open_part(chunk: tuple[int, int]) -> tuple[PartWriter, Path]:
                path = tmp / part_name(*chunk, PART_EXT)
                return PartWriter(path, m.encoder, m.display_width, m.display_height, Fraction(*m.frame_rate),
                                  m.color, codec, _sar(m)), path

            dispenser = ChunkDispenser(world, len(chunks), pipelines, [i for i, c in enumerate(chunks) if c in done],
                                       # without trusted timestamps every seek decodes from the start alike
                                       [s - keyframe_before(m, s) for s, _ in chunks] if m.pts_reliable else None)

            def pipeline(index: int, stop) -> Busy:
                reader, todo = readers[index], dispense(dispenser, index, chunks, progress.take)
                if temporal[0] == "on":
                    from stylebatch.temporal import TemporalChunks

                    steady = TemporalChunks(strength=temporal[1], warmup=warmup)
                    busy = run_pipeline(todo, lambda c: steady.read(reader.read, *c, batch),
                                        lambda item: steady.stylize(stylizer, item), open_part, publish, progress,
                                        finish=steady.finish, stop=stop)
                else:
                    busy = run_pipeline(todo, lambda c: reader.read(*c, batch), stylizer, open_part, publish,
                                        progress, stop=stop)
                busy.decoded = reader.decoded  # with the frames read for a painting's own look (_own_frame)
                return busy

            busy = Busy.of(run_pipelines(pipelines, pipeline))
            log.info("rank %d/%d: %s", world.rank, world.size, busy.summary())
            dispenser.close()  # collective, so only on success: a failing rank aborts the whole job
        finally:
            for reader in readers:
                reader.close()
    progress.report(force=True)


# Up to this many pixels a frame stays full size through stylize when the result is blended with it
# (--strength below 1, --keep-colors), so the original's detail survives; above, it is blended at
# the stylized size too, and memory stays bounded by what is stylized.
FULL_SIZE_BLEND_PIXELS = 3840 * 2160


def decode_size(m: Manifest, max_side: int | None, strength: float, keep_colors: bool) -> tuple[int, int] | None:
    """(width, height) to decode frames at, or None for the display size. With --max-side, frames are
    scaled down in the decoder to the size they are stylized at and scaled up again only in the
    encoder, so no full-size frame is held anywhere else."""
    from stylebatch.styles import working_size

    height, width = working_size(m.display_height, m.display_width, max_side)
    if (width, height) == (m.display_width, m.display_height):
        return None
    if (strength < 1.0 or keep_colors) and m.display_width * m.display_height <= FULL_SIZE_BLEND_PIXELS:
        return None
    return width, height


def _sar(m: Manifest) -> tuple[int, int] | None:
    sar = m.extra.get("sample_aspect_ratio")
    if not sar:
        return None
    return (sar[1], sar[0]) if m.rotation in (90, 270) else (sar[0], sar[1])


def _own_frame(reader: ChunkReader, m: Manifest, style: str, strength: float):
    """The video's own look for --strength below 1 with a painting: its middle frame (the same on
    every rank, so every rank paints with the same style vector), or None when not needed."""
    from stylebatch.styles import IMAGE_KIND, parse_style

    if strength >= 1.0 or all(p.kind != IMAGE_KIND for p in parse_style(style)):
        return None
    middle = m.frames // 2
    return next(reader.read(middle, middle + 1, 1))[0].copy()


def _load(model: ModelOptions, world: World, threads: int, style: str, own_frame=None):
    import torch

    from stylebatch.models import load_stylizer

    torch.set_num_threads(threads)
    if model.device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    return load_stylizer(style, device=model.device, strength=model.strength, max_side=model.max_side,
                         keep_colors=model.keep_colors, own_frame=own_frame, precision=model.precision or "auto")


def temporal_settings(model: ModelOptions) -> tuple[str, float]:
    """(--temporal, --temporal-strength) with their defaults applied."""
    from stylebatch.temporal_defaults import with_defaults

    return with_defaults(model.temporal, model.temporal_strength)


def settings_record(style: str, strength: float, max_side: int | None, keep_colors: bool = False,
                    temporal: str = "off", temporal_strength: float = 0.0, encoding: dict | None = None) -> dict:
    """What decides how a part looks, normalized: built-in styles by their resolved names, files
    (paintings, .pth weights) by the sha256 of their bytes, so resuming with another painting that has
    the same file name is refused; and how it is encoded (`encoding`: encoder.part_encoding of the
    manifest's settings), so that parts an older stylebatch encoded otherwise are never concatenated
    with parts encoded now."""
    from stylebatch.styles import BUILTIN_KIND, parse_style

    keys, names = [], []
    parts = parse_style(style)
    for p in parts:
        if p.kind == BUILTIN_KIND:
            key = name = p.ref
        else:
            path = Path(p.ref)
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as exc:
                raise StylebatchError(f"cannot read style file {path.name}: {exc.strerror or exc}") from None
            key, name = f"sha256:{digest}", f"{path.name} (sha256 {digest[:12]})"
        weight = f":{p.weight:.6g}" if len(parts) > 1 else ""
        keys.append(key + weight)
        names.append(name + weight)
    return {"style": ",".join(keys), "style_name": ",".join(names), "strength": float(strength),
            "max_side": max_side, "keep_colors": bool(keep_colors), "temporal": temporal,
            "temporal_strength": float(temporal_strength) if temporal == "on" else 0.0, "encoding": encoding}


def describe_settings(r: dict, encoding: bool = False) -> str:
    """A record as a message says it; with `encoding`, how its parts were encoded too (said where
    that is what differs)."""
    size = f", max side {r['max_side']}" if r.get("max_side") else ", full size"
    colors = ", own colours" if r.get("keep_colors") else ""
    steady = (f", temporal on at {r['temporal_strength']:g}" if r.get("temporal") == "on"
              else ", temporal off")
    return (f"{r.get('style_name') or r.get('style')} (strength {r.get('strength'):g}{size}{colors}{steady}"
            f"{_describe_encoding(r) if encoding else ''})")


def _describe_encoding(r: dict) -> str:
    """How a record's parts were encoded, for describe_settings: an older stylebatch's record does not say."""
    if "encoding" not in r:
        return ", encoded by an older stylebatch that did not record how"
    e = r["encoding"]
    if not isinstance(e, dict):
        return ""
    options = " ".join(f"{k}={v}" for k, v in sorted((e.get("options") or {}).items()))
    rate = f" {e['bitrate']} b/s" if e.get("bitrate") else ""
    return f", {e.get('codec')} {e.get('pix_fmt')}{rate}{' ' + options if options else ''} (encoding v{e.get('version')})"


def _settings_checked(work, record: dict, parts: list[str], restyle: bool, world: World) -> bool:
    """check_settings on rank 0 alone (it may delete parts), every rank following its outcome: its
    return value, or its error raised on every rank. Ranks with no MPI to agree by (mpiexec without
    mpi4py) only check: none deletes what another may be making. A refusal says what to do in the
    terms of what runs stylize (settings_caller)."""
    caller = settings_caller()
    if world.size == 1:
        return check_settings(work, record, parts, restyle, caller=caller)
    if world.comm is None:
        return check_settings(work, record, parts, discard=False, caller=caller)
    # Each rank read the style itself (a blob: its own download): rank 0's record stands for all only
    # if every rank's is the same. A style blob replaced while the ranks started painted the video's
    # chunks with two styles, and the job succeeded.
    records = world.comm.allgather(record)
    if any(r != records[0] for r in records):
        other = next(i for i, r in enumerate(records) if r != records[0])
        raise TransientError(f"the style changed while the ranks read it (rank {other} read other bytes than rank 0): "
                             "run again")
    outcome = None
    if world.rank == 0:
        try:
            outcome = (check_settings(work, record, parts, restyle, caller=caller), None, 0)
        except StylebatchError as exc:
            outcome = (False, str(exc), exc.exit_code)
    discarded, message, code = world.comm.bcast(outcome, root=0)
    if message is not None:
        error = StylebatchError(message)
        error.exit_code = code
        raise error
    return discarded


# What to do about a work dir whose parts were stylized with other settings, in the terms of what ran
# stylize (check_settings' refusal: the one place for these words). A user's `stylebatch stylize` has
# --restyle; the ranks of `stylebatch run` (their launcher holds the work dir's lock for them: LOCK_ENV)
# only --work; a StyleTransferJob's MPIJob (contract.run_by_operator) has neither: its user writes the
# spec, where spec.workDir (or, left out, the job's own name and uid) decides the work dir.
# A stylize_video call's ranks (contract.called_by_api) have its `work=`.
STYLIZE, RUN, API, OPERATOR = "stylize", "run", "api", "operator"
OTHER_SETTINGS_REMEDY = {
    STYLIZE: f"give --restyle to delete them and stylize again, use another --work, or delete its {PARTS_DIR}/",
    RUN: f"use another --work, or delete its {PARTS_DIR}/",
    API: f"call stylize_video with another work=, or delete its {PARTS_DIR}/",
    OPERATOR: ("create the StyleTransferJob again with another spec.workDir, or with none (a new job gets a "
               f"work dir of its own), or delete the work dir's {PARTS_DIR}/ first"),
}


def settings_caller() -> str:
    """Who runs this stylize, as OTHER_SETTINGS_REMEDY knows them: the operator's pods, the ranks of
    `stylebatch run` or of a stylize_video call, or a user's `stylebatch stylize`."""
    from stylebatch.workdir import LOCK_ENV

    if run_by_operator(os.environ):
        return OPERATOR
    if os.environ.get(LOCK_ENV):
        return API if called_by_api() else RUN
    return STYLIZE


_SETTINGS_KEYS = ("style", "strength", "max_side", "keep_colors", "temporal", "temporal_strength", "encoding")
_UNRECORDED = object()  # an older record's "encoding": equal to no encoding, so its parts never pass for these


def check_settings(work, record: dict, parts: list[str], discard: bool = False, caller: str = RUN) -> bool:
    """Record these settings in the work dir, where they are the parts' (`parts`: the names of the
    parts there) or there are no parts yet. Parts stylized otherwise, or under a record that does not
    read, are refused (a user's --work, a job's spec.workDir), the refusal saying what to do in the
    terms of `caller` (OTHER_SETTINGS_REMEDY); with `discard` (`stylize --restyle`: `stylebatch run`'s own
    work dir, where this means a style file's bytes changed under the same name) they are deleted,
    with a warning, and True is returned. The old record stays until the last of them is gone, so a
    run stopped meanwhile leaves none that passes for these settings. Call it on one rank: it writes."""
    loc = work.child(STYLIZE_NAME)
    old: dict | str | None = None  # the parts' settings; "unreadable"; None: no record (an old work dir's parts)
    if loc.exists():
        try:
            old = json.loads(loc.read_bytes())
        except ValueError:
            old = "unreadable"
        if not isinstance(old, dict):
            old = "unreadable"
        # older records lack these; one without "encoding" is from before it was recorded: parts an older
        # stylebatch may have encoded otherwise (PART_ENCODING_VERSION), taken for another encoding
        legacy = {"keep_colors": False, "temporal": "off", "temporal_strength": 0.0, "encoding": _UNRECORDED}
        if isinstance(old, dict) and all(old.get(k, legacy.get(k)) == record[k] for k in _SETTINGS_KEYS):
            return False
    if parts and (old is not None or discard):
        coded = isinstance(old, dict) and old.get("encoding", _UNRECORDED) != record["encoding"]
        made = describe_settings(old, coded) if isinstance(old, dict) else f"settings its {STYLIZE_NAME} does not say"
        now = describe_settings(record, coded)
        if not discard:
            raise StylebatchError(f"work dir {work.display} has parts stylized with {made}, "
                                  f"not {now}: {OTHER_SETTINGS_REMEDY[caller]}")
        log.warning("the %s in work dir %s were stylized with %s: deleting them, to stylize with %s",
                    counted(len(parts), "part"), work.display, made, now)
        for name in parts:
            work.child(PARTS_DIR, name).delete()
        loc.write_bytes(json.dumps(record, sort_keys=True).encode())
        return True
    loc.write_bytes(json.dumps(record, sort_keys=True).encode())
    return False


def _local_source(work, m: Manifest, tmp: Path) -> Path:
    src = work.child(m.source)
    if src.is_local():
        if not src.exists():
            raise StylebatchError(f"work dir {work.display} lacks its {m.source}: run preprocess again")
        return Path(src.local_path())
    local = tmp / m.source
    src.download(local)
    return local
