"""Stage 1: copy the input into the work dir, probe it, decide the encoder, write manifest.json last.

PyAV (and numpy) are imported only by the functions that decode or encode: the `stylebatch run`
launcher uses this module's checks of places and names without them (it stays small beside its ranks)."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from stylebatch.contract import ALLOWED, SOURCE_STEM, fresh_work
from stylebatch.errors import StylebatchError
from stylebatch.logs import counted
from stylebatch.manifest import MANIFEST_NAME, EncoderSettings, Manifest
from stylebatch.workdir import check_work, claim_work, hold, inside
from stylebatch.partition import default_chunk_frames
from stylebatch.requests import EncodingOptions, PreprocessRequest
from stylebatch.styles import too_small
from stylebatch.storage.local import special_file

log = logging.getLogger(__name__)


def encoder_settings(encoding: EncodingOptions, output_name: str) -> EncoderSettings:
    """The validated settings, with the encoder opened once on this machine (NVENC needs a GPU)."""
    from stylebatch.encoder import check_encoder

    settings = encoding.settings(output_name)
    check_encoder(settings.codec)
    return settings


def source_name(input_name: str) -> str:
    ext = Path(input_name).suffix.lower()
    return SOURCE_STEM + (ext if re.fullmatch(r"\.[a-z0-9]{1,8}", ext) else "")


def output_uri(output) -> str:
    """The output as stored in the manifest: absolute for local paths; for blobs the URI without its
    query string, so no SAS token is ever written to the work dir (stages take it from the environment)."""
    return str(output.local_path().resolve()) if output.is_local() else output.address


def input_name(src) -> str:
    """The input as the manifest records it (and resume compares it): the resolved path of a local
    file, the display URI (never a SAS) of a blob."""
    if src.is_local():
        from stylebatch.storage.scrub import printable

        return printable(str(src.local_path().resolve()))
    return src.display


def check_places(src, out, work) -> None:
    """Everything about where the job reads and writes, checked before any work: the output can be
    written, it is not the input, and the work dir holds neither and no foreign files."""
    check_not_overwritten(src, out)
    out.check_writable()
    if work is not None:
        check_work(work, src, out)


def check_not_overwritten(src, out, what: str = "the input") -> None:
    """Refuse an output that would be written over src, a file the command reads (`what` names it in
    the message: "the input", "the style file sty.png"): the same path however it is spelled (resolved:
    symlinks, `..`), the same file under another name (a hard link), or a folder holding it; for blobs
    the same blob or a prefix above it. Reads and writes nothing."""
    if inside(src, out) or _same_file(src, out):
        raise StylebatchError(f"the output {out.display} is {what}: give another output")


def _same_file(a, b) -> bool:
    """True if local a and b are one file (os.path.samefile); False for blobs or a file not there."""
    if not (a.is_local() and b.is_local()):
        return False
    try:
        return os.path.samefile(a.local_path(), b.local_path())
    except OSError:  # either is not there (yet)
        return False


def run(req: PreprocessRequest) -> Manifest:
    """Stage 1: the work dir's manifest (written by this call, or found there: resume)."""
    from stylebatch.storage import location

    req.validate()
    src, out, work = location(req.input), location(req.output), location(req.work)
    settings = encoder_settings(req.encoding, out.name)
    check_places(src, out, work)
    check_input(src)  # before the work dir is made: a mistyped input leaves nothing behind
    claim_work(work, source_name(src.name))
    with hold(work):
        return _preprocess(src, out, work, req.encoding, settings)


def check_input(src, role: str = "input", kind: str = "a video") -> None:
    """Refuse, in one line, a file to read that is a folder (empty or not) or is not there; `role`
    and `kind` name it in the message ("input", "a video or a picture"). Reads nothing else."""
    if src.is_local() and Path(src.local_path()).is_dir():
        raise StylebatchError(f"{role} is a folder, not {kind}: {src.display}")
    if src.is_local() and (special := special_file(Path(src.local_path()))):
        raise StylebatchError(f"{role} is {special}, not {kind}: {src.display}")
    if not src.exists():
        raise StylebatchError(f"{role} not found: {src.display}")


def _preprocess(src, out, work, enc: EncodingOptions, settings: EncoderSettings) -> Manifest:
    import stylebatch
    from stylebatch.encoder import choose_pix_fmt
    from stylebatch.postprocess import check_audio, check_timeline
    from stylebatch.video import probe

    check_input(src)  # again under the lock: it may have gone meanwhile
    identity = src.identity()
    reused = _reuse_existing(work, src, out, enc, settings, identity)
    if reused is not None:
        return reused
    with tempfile.TemporaryDirectory(prefix="stylebatch-pre-") as tmp:
        if src.is_local():
            local = Path(src.local_path())
        else:
            local = Path(tmp) / source_name(src.name)
            log.info("downloading %s", src.display)
            src.download(local)
        if local.stat().st_size == 0:
            raise StylebatchError(f"input is an empty file: {src.display}")
        info = probe(local, src.display)
        chunk_frames = enc.chunk_frames or default_chunk_frames(len(info.pts))
        width, height = info.display_size
        if problem := too_small(width, height):  # the stylizer would refuse it: said before any stage starts
            raise StylebatchError(f"{problem}: {src.display}")
        settings.pix_fmt = choose_pix_fmt(settings.codec, info.pix_fmt, width, height)
        _warn_if_shallower(src.display, info.pix_fmt, settings)
        name = source_name(src.name)
        manifest = Manifest(
            input=input_name(src), output=output_uri(out), source=name, frames=len(info.pts),
            time_base=(info.time_base.numerator, info.time_base.denominator), pts=info.pts,
            last_duration=info.last_duration, keyframes=info.keyframes, pts_reliable=info.pts_reliable,
            frame_rate=(info.frame_rate.numerator, info.frame_rate.denominator), video_stream=info.video_stream,
            coded_width=info.coded_width, coded_height=info.coded_height, rotation=info.rotation,
            display_width=width, display_height=height, pix_fmt=info.pix_fmt, color=info.color,
            audio=info.audio, subtitles=info.subtitles, encoder=settings, chunk_frames=chunk_frames,
            stylebatch_version=stylebatch.__version__, input_identity=identity, video_codec=info.codec,
            extra={"sample_aspect_ratio": info.sample_aspect_ratio, "metadata": info.metadata,
                   "chapters": info.chapters, "video_metadata": info.video_metadata, "others": info.others,
                   "base_rate": (info.base_rate.numerator, info.base_rate.denominator) if info.base_rate else None},
        )
        check_timeline(manifest, settings.container)  # before any work
        check_audio(manifest, settings.container)
        work.child(name).upload(local)
    work.child(MANIFEST_NAME).write_bytes(manifest.to_json().encode())
    log.info("preprocessed %s: %s, %dx%d, %s %s, %s, chunks of %s",
             src.display, counted(manifest.frames, "frame"), width, height, settings.codec, settings.pix_fmt,
             counted(len(info.audio), "audio stream"), counted(chunk_frames, "frame"))
    return manifest


def _warn_if_shallower(label: str, source_pix_fmt: str, settings: EncoderSettings) -> None:
    """A warning where a deeper-than-8-bit input comes out in 8 bits because the chosen encoder writes
    no more here (vp9 in this build, MJPEG): the README promises the depth "where the codec allows"."""
    from stylebatch.encoder import source_layout

    _, given = source_layout(source_pix_fmt)
    _, written = source_layout(settings.pix_fmt)
    if given > 8 and written <= 8:
        log.warning("%s is %d-bit (%s); %s writes 8 bits here, so the output is 8-bit (banding may show in "
                    "smooth gradients): an .mp4, .mov or .mkv output in h264 or hevc keeps 10 bits",
                    label, given, source_pix_fmt, settings.codec)


def _reuse_existing(work, src, out, enc: EncodingOptions, settings: EncoderSettings,
                    identity: dict) -> Manifest | None:
    """A work dir that preprocess already finished for the same job is reused (resume). Flags left
    out take the work dir's values; flags given must agree with them, since the parts depend on them;
    the input must be the same bytes (its identity() unchanged)."""
    from stylebatch.postprocess import check_audio, check_timeline

    if not work.child(MANIFEST_NAME).exists():
        return None
    from stylebatch.manifest import read_manifest

    m = read_manifest(work)
    given = {"input": (input_name(src), m.input),
             "--chunk-frames": (enc.chunk_frames, m.chunk_frames),
             "--codec": (settings.codec if enc.codec else None, m.encoder.codec),
             "--crf": (enc.crf, m.encoder.crf),
             "--bitrate": (settings.bitrate if enc.bitrate else None, m.encoder.bitrate),
             "--preset": (enc.preset, m.encoder.preset)}
    differ = [name for name, (new, old) in given.items() if new is not None and new != old]
    if differ:
        raise StylebatchError(f"work dir {work.display} holds a job with another {', '.join(differ)} "
                              f"(input {m.input}): use {fresh_work()}, or the same settings to resume")
    changed = [k for k in ("size", "stamp", "ends_sha256") if m.input_identity.get(k) != identity[k]]
    if changed:
        what = {"size": "its size", "stamp": "its modification time" if src.is_local() else "its ETag",
                "ends_sha256": "its bytes"}
        raise StylebatchError(f"the input {src.display} changed since work dir {work.display} was made from it "
                              f"({', '.join(what[k] for k in changed)}): use {fresh_work()} to stylize the "
                              f"new video")
    if m.encoder.codec not in ALLOWED[settings.container]:
        raise StylebatchError(f"work dir {work.display} holds {m.encoder.codec} parts, which cannot go into "
                              f"{Path(out.name).suffix}: use {fresh_work()}")
    check_timeline(m, settings.container)
    check_audio(m, settings.container)
    if m.output != output_uri(out):
        m.output = output_uri(out)
        work.child(MANIFEST_NAME).write_bytes(m.to_json().encode())
    log.info("work dir %s already preprocessed: resuming", work.display)
    return m
