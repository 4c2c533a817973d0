"""Stage 3: mux the parts (stream copy) with the source's sound into OUTPUT, timestamps exactly restored.

Which streams are copied, re-encoded or left out, and every packet's timestamps, are decided by
stylebatch.muxing (pure, with a worked B-frame example); this module moves the packets. Everything
is written to a local temp file and published atomically, so OUTPUT is only ever the finished video.
"""

from __future__ import annotations

import errno
import functools
import heapq
import logging
import os
import secrets
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av

from stylebatch.contract import ALLOWED, CONTAINERS, PART_EXT
from stylebatch.encoding import container_for
from stylebatch.errors import BadInput, StylebatchError
from stylebatch.logs import counted
from stylebatch.manifest import PARTS_DIR, Manifest, read_manifest
from stylebatch.workdir import delete_work_after, hold, read_owner
from stylebatch.muxing import (
    ATTACHMENT_CONTAINERS, CHAPTER_CONTAINERS, CONTAINER_META_SKIP, audio_plan, stream_tags, output_stream_tags, keeps_subtitles, layout_candidates, mux_options, packet_times,
    presentation_ranks, timeline,
)
from stylebatch.partition import chunk_bounds, part_name
from stylebatch.requests import PostprocessRequest
from stylebatch.storage.scrub import printable

log = logging.getLogger(__name__)

def run(req: PostprocessRequest) -> str:
    """Stage 3; the output's URI as shown to people (never a SAS)."""
    from stylebatch.storage import location

    req.validate()
    work = location(req.work)
    if req.output is not None and _published_by_this_job(out := location(req.output)):
        # a pod of this job published it and was lost before it said so (its node gone while it
        # deleted the work dir): done, whatever is left of the work dir; another attempt would
        # find no manifest or no parts, and fail the job whose video is there
        log.info("%s was published by this job already (an earlier attempt)", out.display)
        if req.delete_work and read_owner(work) is not None:
            with hold(work):
                delete_work_after(work, out.display)
        _delete_checkpoint_after(req, out.display)
        return out.display
    with hold(work):
        published = _postprocess(work, req)
    _delete_checkpoint_after(req, published)
    return published


def _delete_checkpoint_after(req: PostprocessRequest, output: str) -> None:
    """--delete-checkpoint, once `output` is published: the training checkpoint a StyleTransferJob
    left beside its trained style (kept until now: a training pod lost after it wrote the weights, or
    the job resumed with its work dir, finishes from it). Gone already (an earlier attempt deleted it)
    is no matter; one that cannot be deleted is a warning, as a work dir is (delete_work_after)."""
    from stylebatch.errors import Interrupted
    from stylebatch.storage import location

    if req.delete_checkpoint is None:
        return
    ckpt = location(req.delete_checkpoint)
    try:
        ckpt.delete()
    except Interrupted:
        raise
    except StylebatchError as exc:
        log.warning("%s is written, but the training checkpoint %s was not deleted (%s): delete it yourself",
                    output, ckpt.display, " ".join(str(exc).split()))
        return
    log.info("deleted the training checkpoint %s", ckpt.display)


def check_output_place(m: Manifest, work, out) -> None:
    """Refuse an output that would be written over the input the manifest records (however its path is
    spelled, or a hard link to it) or into the work dir (its source copy, a part: the stylized frames
    the output is made of), as preprocess and run refuse them. Reads and writes nothing."""
    from stylebatch.preprocess import check_not_overwritten
    from stylebatch.storage import location
    from stylebatch.workdir import inside

    if inside(out, work):
        raise StylebatchError(f"the output {out.display} is inside the work dir {work.display}: give another output")
    try:
        src = location(m.input)  # as the manifest shows it: a resolved path, a blob's address
    except (StylebatchError, ValueError):  # a name shown escaped: nothing it could be written over
        return
    check_not_overwritten(src, out)


def _published_by_this_job(out) -> bool:
    """Whether `out` is a blob this very job (the operator's STYLEBATCH_JOB and STYLEBATCH_JOB_UID)
    wrote; False for a local file, and outside such a job (nothing is read then)."""
    from stylebatch.contract import OUTPUT_UID_TAG
    from stylebatch.storage import BlobLocation
    from stylebatch.storage.blob import job_tag, written_by_this_job

    if not isinstance(out, BlobLocation) or OUTPUT_UID_TAG not in (job_tag() or {}):
        return False
    info = out.info()
    return info is not None and written_by_this_job(info.metadata)


def _postprocess(work, req: PostprocessRequest) -> str:
    from stylebatch.storage import location

    m = read_manifest(work)
    out = location(req.output or m.output)
    check_output_place(m, work, out)
    container = container_for(out.name)
    if m.encoder.codec not in ALLOWED[container]:
        raise StylebatchError(f"the parts are {m.encoder.codec}, which cannot go into {Path(out.name).suffix}")
    chunks = chunk_bounds(m.frames, m.chunk_frames)
    parts_dir = work.child(PARTS_DIR)
    have = set(parts_dir.list()) if parts_dir.exists() else set()
    missing = [c for c in chunks if part_name(*c, PART_EXT) not in have]
    if missing:
        raise StylebatchError(f"work dir {work.display} lacks the stylized frames {_ranges(missing)} "
                              f"of {m.frames}: run stylize again")
    check_timeline(m, container)
    check_audio(m, container)
    with tempfile.TemporaryDirectory(prefix="stylebatch-post-") as tmp_dir:
        tmp = Path(tmp_dir)
        parts = []
        for c in chunks:
            loc = parts_dir.child(part_name(*c, PART_EXT))
            if loc.is_local():
                parts.append(Path(loc.local_path()))
            else:
                parts.append(tmp / loc.name)
                loc.download(parts[-1])
        source = None
        if m.audio or m.subtitles or _attachments(m, container):
            src = work.child(m.source)
            source = Path(src.local_path()) if src.is_local() else tmp / m.source
            if not src.is_local():
                src.download(source)
        # A local output is built next to itself (the space it needs is where the user looks, and
        # publishing is a rename); a blob output in the temp folder, then uploaded.
        folder = out.local_path().absolute().parent if out.is_local() else tmp
        where = (f"the output's folder {printable(str(folder))}" if out.is_local() else
                 f"the temp folder {printable(tempfile.gettempdir())} (set TMPDIR to a roomier one)")
        need = sum(p.stat().st_size for p in parts) + (source.stat().st_size if source else 0)
        _check_space(folder, need, where)
        result = folder / f".{out.name[:200]}.{secrets.token_hex(4)}.partial"
        try:
            mux(m, chunks, parts, source, result, container)
            if out.is_local():
                _publish_local(result, out)
            else:
                out.upload(result)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StylebatchError(f"no space left in {where} to build {out.display} (it needs about "
                                      f"{_mb(need)}): free some space and run postprocess again") from None
            raise StylebatchError(f"cannot write {out.display}: {exc.strerror or exc}") from None
        except av.error.FFmpegError as exc:
            raise StylebatchError(f"cannot write {out.display}: {exc}") from None
        finally:
            result.unlink(missing_ok=True)
    log.info("wrote %s (%s)", out.display, counted(m.frames, "frame"))
    if req.delete_work and delete_work_after(work, out.display):
        log.info("deleted stylebatch's files in work dir %s", work.display)
    return out.display


def _mb(n: int) -> str:
    """A size as people read it: "2 MB", "0.2 MB" (a near-full disk had read "needs about 2 MB, 1 MB is free"
    for 2 MB against 200 KB)."""
    return f"{round(n / 1e6)} MB" if n >= 9.5e5 else f"{n / 1e6:.2g} MB" if n >= 1000 else f"{n} bytes"


def _check_space(folder: Path, need: int, where: str) -> None:
    """Refuse before muxing if the output (about the size of the parts and the sound) cannot fit."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < need:
        raise StylebatchError(f"not enough space in {where} to build the output: it needs about {_mb(need)}, "
                              f"{_mb(free)} is free")


def _publish_local(result: Path, out) -> None:
    with open(result, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(result, out.local_path())


AVI_MAX_SKIP = 60000  # FFmpeg's AVI muxer refuses a jump of more frames than this between two frames


def check_timeline(m: Manifest, container: str) -> None:
    """An output container that cannot hold the input's timestamps is refused (at preprocess, before
    any work): AVI counts frames at a constant rate, so a long gap becomes too many skipped frames."""
    if container != "avi":
        return
    pts = _timeline(m, container)[1]
    for i in range(1, len(pts)):
        if pts[i] - pts[i - 1] > AVI_MAX_SKIP:
            gap = float((m.pts[i] - m.pts[i - 1]) * Fraction(*m.time_base))
            raise StylebatchError(f"the input jumps {gap:.0f} s between frames {i - 1} and {i}: AVI counts frames "
                                  f"and cannot hold a gap of more than {AVI_MAX_SKIP} frames; choose a .mkv, .mp4 "
                                  f"or .mov output")


def check_audio(m: Manifest, container: str) -> None:
    """Audio that the output container cannot take as it is gets re-encoded with the container's
    encoder (muxing.audio_plan). Where that encoder takes no layout of the audio's channel count (AVI's
    libmp3lame takes mono and stereo only), the job is refused (at preprocess, before any work) with
    the output containers that can hold that audio: a BadInput, since running it again cannot help."""
    for a in m.audio:
        plan = audio_plan(a["codec"], container, a["sample_rate"])
        if not plan.copy and a.get("channels") and encoder_layout(plan.encoder, a["channels"], None) is None:
            raise BadInput(_no_layout(a, container, plan.encoder))


def encoder_layout(encoder: str, channels: int, layout: str | None) -> str | None:
    """The channel layout to give `encoder` for audio of `channels` channels whose own layout is
    `layout` (None where it has none): the first of muxing.layout_candidates the encoder itself opens
    with (its own; else FFmpeg's default for that many channels, as the ffmpeg CLI gives audio without
    a layout; else another of that many channels). None where the encoder takes none of them."""
    return next((name for name in layout_candidates(channels, layout) if _encoder_takes(encoder, name)), None)


@functools.lru_cache(maxsize=None)
def _encoder_takes(encoder: str, layout: str) -> bool:
    """Whether `encoder` opens with `layout` (PyAV does not list the layouts an encoder takes), at a
    sample rate and sample format it takes: only the layout is in question here."""
    codec = av.Codec(encoder, "w")
    ctx = av.CodecContext.create(codec)
    rates = codec.audio_rates or ()
    ctx.sample_rate = 48000 if not rates or 48000 in rates else rates[0]
    if codec.audio_formats:
        ctx.format = codec.audio_formats[0]
    try:
        ctx.layout = av.AudioLayout(layout)
        ctx.open()
    except (av.FFmpegError, ValueError):
        return False
    return True


def layout_name(layout: av.AudioLayout) -> str | None:
    """A stream's channel layout by FFmpeg's name, None where it is unset ("unknown" in ffprobe, "N
    channels" in PyAV: its channels are counted but not named)."""
    if not layout.nb_channels or all(c.name == "NONE" for c in layout.channels):
        return None
    return layout.name


def _first_extensions() -> dict[str, str]:
    first: dict[str, str] = {}
    for ext, container in CONTAINERS.items():
        first.setdefault(container, ext)
    return first


_EXTENSIONS = _first_extensions()  # each container by its first extension, in CONTAINERS' order


def _no_layout(a: dict, container: str, encoder: str) -> str:
    channels = a["channels"]
    fits = [ext for c, ext in _EXTENSIONS.items() if c != container and _holds(a, c)]
    choose = (f"choose a {', '.join(fits[:-1])} or {fits[-1]} output" if len(fits) > 1 else
              f"choose a {fits[0]} output" if fits else "no output container stylebatch writes can hold it")
    return (f"audio stream {a['index']} ({a['codec']}, {_channels(channels)}) cannot go into "
            f"{_EXTENSIONS[container]} as it is, and {encoder}, which would re-encode it, takes no "
            f"{channels}-channel audio: {choose}")


def _holds(a: dict, container: str) -> bool:
    plan = audio_plan(a["codec"], container, a["sample_rate"])
    return plan.copy or encoder_layout(plan.encoder, a["channels"], None) is not None


def _channels(n: int) -> str:
    return f"{n} channel{'s' if n != 1 else ''}"


def _ranges(chunks: list[tuple[int, int]]) -> str:
    merged: list[list[int]] = []
    for s, e in chunks:
        if merged and merged[-1][1] == s:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    return ", ".join(f"{s}-{e - 1}" for s, e in merged)


def _part_packets(path: Path) -> tuple[av.container.InputContainer, list[av.Packet]]:
    c = av.open(str(path))
    return c, [p for p in c.demux(c.streams.video[0]) if p.size]


def _presentation_ranks(packets: list[av.Packet], expected: int, path: Path) -> list[int]:
    if len(packets) != expected or any(p.pts is None for p in packets):
        raise StylebatchError(f"part {path.name} is damaged ({counted(len(packets), 'frame')}, expected {expected}): "
                              f"delete it and run stylize again")
    return presentation_ranks([p.pts for p in packets])


def _part_ranks(chunks: list[tuple[int, int]], parts: list[Path]) -> list[list[int]]:
    ranks = []
    for (s, e), path in zip(chunks, parts):
        c, packets = _part_packets(path)
        with c:
            ranks.append(_presentation_ranks(packets, e - s, path))
    return ranks


def _timeline(m: Manifest, container: str) -> tuple[Fraction, list[int], int]:
    return timeline(m.time_base, m.pts, m.last_duration, m.frame_rate, container, m.extra.get("base_rate"))


def _video_packets(m: Manifest, chunks, parts, out_stream, container: str) -> Iterator[tuple[float, int, av.Packet]]:
    tb, pts, last_duration = _timeline(m, container)
    times = packet_times(pts, last_duration, chunks, _part_ranks(chunks, parts))
    for path in parts:
        c, packets = _part_packets(path)
        with c:
            for packet in packets:
                packet.stream = out_stream
                packet.time_base = tb
                packet.pts, packet.dts, packet.duration = next(times)
                yield float(packet.dts * tb), 0, packet


def _copied_packets(source: av.container.InputContainer, streams: dict[int, av.stream.Stream]):
    if not streams:
        return
    for packet in source.demux([source.streams[i] for i in streams]):
        if packet.dts is None or not packet.size:
            continue
        out_stream = streams[packet.stream.index]
        t = float(packet.dts * packet.time_base)
        packet.stream = out_stream
        yield t, 1, packet


def _transcoded_packets(path: Path, index: int, out_stream,
                        decode_as: str | None) -> Iterator[tuple[float, int, av.Packet]]:
    """Stream `index` of `path` decoded and re-encoded by `out_stream`. decode_as: the layout the
    decoder labels channels with where the stream has none, one for one (no remixing), as the ffmpeg
    CLI does; the encoder is given that same layout."""
    with av.open(str(path)) as src:
        if decode_as is not None:
            src.streams[index].codec_context.layout = av.AudioLayout(decode_as)
        for frame in src.decode(src.streams[index]):
            for packet in out_stream.encode(frame):
                yield float(packet.pts * packet.time_base), 2, packet
        for packet in out_stream.encode(None):
            yield float(packet.pts * packet.time_base), 2, packet


def mux(m: Manifest, chunks, parts: list[Path], source: Path | None, result: Path, container: str) -> None:
    options = mux_options(container)
    with av.open(str(parts[0])) as first, av.open(str(result), "w", format=container, options=options) as out:
        video = out.add_stream_from_template(first.streams.video[0])
        video.time_base = _timeline(m, container)[0]
        video.metadata.update(output_stream_tags(m.extra.get("video_metadata", {}), container))
        streams: list[Iterator] = [_video_packets(m, chunks, parts, video, container)]
        src = av.open(str(source)) if source is not None else None
        try:
            _add_container_facts(m, src, out, container)
            if src is not None:
                streams += _add_source_streams(m, src, source, out, container)
            for _, _, packet in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
                out.mux(packet)
        finally:
            if src is not None:
                src.close()


def _attachments(m: Manifest, container: str) -> list[dict]:
    """The input's attachments that the output keeps."""
    return [o for o in m.extra.get("others", []) if o["kind"] == "attachment" and container in ATTACHMENT_CONTAINERS]


def _add_container_facts(m: Manifest, src, out, container: str) -> None:
    """The input's container tags (title, creation_time...) and chapters, from the manifest, whatever
    streams the input has (a silent video's title was lost: the source was opened only for its sound);
    a work dir of an older stylebatch records neither: the tags come from the source where it is open.
    The streams the output leaves out (muxing.ATTACHMENT_CONTAINERS) are named in a warning each."""
    tags = m.extra.get("metadata", src.metadata if src is not None else {})
    for key, value in tags.items():
        if key.lower() not in CONTAINER_META_SKIP:
            out.metadata[key] = value
    chapters = m.extra.get("chapters", [])
    if chapters and container not in CHAPTER_CONTAINERS:
        log.warning("the input's %d chapters cannot go into %s: left out", len(chapters), container)
    elif chapters:
        out.set_chapters([{"id": i + 1, "start": c["start"], "end": c["end"], "time_base": Fraction(*c["time_base"]),
                           "metadata": c["metadata"]} for i, c in enumerate(chapters)])
    kept = _attachments(m, container)
    for o in m.extra.get("others", []):
        if o not in kept:
            name = f" ({o['name']})" if o["name"] else ""
            why = ("cannot go into " + container + ": left out (an .mkv output keeps it)" if o["kind"] == "attachment"
                   else "left out: the output holds the stylized video, the sound, subtitles and chapters")
            log.warning("%s stream %d%s %s", o["kind"], o["index"], name, why)


def _add_source_streams(m: Manifest, src, source: Path, out, container: str) -> list[Iterator]:
    copies: dict[int, av.stream.Stream] = {}
    transcodes: list[Iterator] = []
    for a in m.audio:
        in_s = src.streams[a["index"]]
        plan = audio_plan(a["codec"], container, a["sample_rate"])
        if plan.copy:
            copies[in_s.index] = out_s = out.add_stream_from_template(in_s)
        else:
            own, channels = layout_name(in_s.codec_context.layout), in_s.codec_context.channels
            layout = encoder_layout(plan.encoder, channels, own) if channels else None
            if channels and layout is None:
                raise BadInput(_no_layout({**a, "channels": channels}, container, plan.encoder))
            note = ""
            if layout and not own:
                note = f" ({_channels(channels)} with no layout: taken as {layout})"
            elif layout and layout != own:
                note = f" (remixed from {own} to {layout}, which {plan.encoder} takes)"
            log.info("audio stream %d: %s cannot go into %s: re-encoding it as %s%s",
                     in_s.index, a["codec"], container, plan.encoder, note)
            out_s = out.add_stream(plan.encoder, rate=plan.rate)
            out_s.layout = av.AudioLayout(layout) if layout else in_s.codec_context.layout
            transcodes.append(_transcoded_packets(source, in_s.index, out_s, None if own else layout))
        _copy_stream_meta(in_s, out_s, container)
    for a in _attachments(m, container):
        out.add_attachment(a["name"], a["mimetype"], bytes(src.streams[a["index"]].data))
    for s in m.subtitles:
        in_s = src.streams[s["index"]]
        if keeps_subtitles(s["codec"], container):
            copies[in_s.index] = out_s = out.add_stream_from_template(in_s)
            _copy_stream_meta(in_s, out_s, container)
        else:
            log.warning("subtitle stream %d (%s) cannot go into %s: left out", in_s.index, s["codec"], container)
    return [_copied_packets(src, copies)] + transcodes


def _copy_stream_meta(in_s, out_s, container: str) -> None:
    out_s.metadata.update(output_stream_tags(stream_tags(in_s.metadata), container))
    out_s.disposition = in_s.disposition
