"""`stylebatch watch SOURCE -o DEST`: stylize every video in SOURCE (a folder or blob prefix), the
ones there now and every new one, into DEST at the same relative path, each exactly once.

- Exactly once across restarts: a record per finished video in DEST/.stylebatch-watch/, named by
  stylebatch.trigger.job_name (source account, container, name and ETag; a local file's "ETag" is
  its size and modification time), as the operator names its jobs. A re-upload is a new video.
- Never its own outputs: blobs it writes carry the job's tag (stylebatch.contract.OUTPUT_TAG), a DEST
  inside SOURCE is left out of the listing, and hidden names (".x") never count.
- Files still being written wait: a video counts once two listings in a row show the same size and
  ETag (trigger.Stability), so even `--once` lists twice, a moment apart.
- A failed video is reported and skipped; nothing is recorded, so the next start tries it again.
- Never a file of someone else's in DEST: a video whose output name holds a file this watch did not
  write is skipped with one warning (`--once`: exit code 2), the file left as it is, and looked at
  again on each listing. A file counts as the watch's own when one of its records names it as the
  output and it is unchanged since (the record's "output_etag": size and modification time, or a
  blob's ETag; a record from before that field: not modified after it was "finished"): it is
  replaced when its input changed. In a local DEST a video is stylized into RECORD_DIR/PARTIAL_DIR
  and put in place only then, by a hard link (or, replacing the watch's own file, a rename once it is
  seen unchanged), so a file that appears at that name meanwhile is kept too (the stylized video is
  dropped, with the same warning); in a blob DEST the check is made when the video starts.
- One watch at a time into a local DEST (an flock held while it runs, `_only_watch`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import posixpath
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from stylebatch import trigger
from stylebatch.contract import EXIT_TRANSIENT, JOB_ENV
from stylebatch.errors import Interrupted, StylebatchError, TransientError
from stylebatch.logs import counted
from stylebatch.storage import BlobLocation, Location, location
from stylebatch.storage.base import FileInfo
from stylebatch.storage.errors import local_errors
from stylebatch.storage.scrub import printable

log = logging.getLogger(__name__)
RECORD_DIR = ".stylebatch-watch"
ONCE_SETTLE_S = 5.0  # the most --once waits between its two listings
DEFAULT_EXT = ".mp4"
LOCK_FILE = "watch.lock"  # in RECORD_DIR: held by the one watch writing into a local DEST (_only_watch)
PARTIAL_DIR = "partial"  # in RECORD_DIR: a local DEST's videos while they are stylized, named as in DEST
NOT_OURS = "move it away, or watch into another DEST"


def run(args: argparse.Namespace, stylize: Callable[[str, str], None] | None = None) -> int:
    """stylize(input_uri, output_uri): how one video is stylized (default: `stylebatch run` with the
    watch's run flags)."""
    watch = Watch(location(args.source), location(args.output), _extension(args.ext),
                  trigger.Filters.of(min_size=args.min_size), stylize or _runner(args))
    with _only_watch(watch.dest):
        if args.once:
            return watch.once(min(args.interval, ONCE_SETTLE_S))
        log.info("watching %s every %gs; outputs in %s (Ctrl-C to stop)", watch.source.display, args.interval,
                 watch.dest.display)
        watch.forever(args.interval)
    return 0


@contextlib.contextmanager
def _only_watch(dest: Location) -> Iterator[None]:
    """One watch at a time into a local DEST, for as long as it runs: a second one (another terminal,
    a cron `--once` while the last is still at work) is TransientError (try again once the first has
    stopped). Two at once removed the shared PARTIAL_DIR under each other's running videos. An flock
    on RECORD_DIR/LOCK_FILE, let go by the kernel however the holder ends; the file names its holder.
    A blob DEST takes no lock (videos are written in place, and one finished meanwhile is not redone)."""
    folder = dest.local_path()
    if folder is None:
        yield
        return
    path = folder / RECORD_DIR / LOCK_FILE
    with local_errors(printable(str(path)), "open the watch's lock file"):
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            raise TransientError(f"another stylebatch watch{f' ({holder})' if holder else ''} is writing into "
                                 f"{dest.display}: one watch at a time into a folder; "
                                 "start this one when that one has stopped") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _extension(ext: str | None) -> str | None:
    from stylebatch.contract import CONTAINERS

    if ext is None:
        return None
    ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
    if ext not in CONTAINERS:
        raise StylebatchError(f"--ext {ext}: stylebatch writes {' '.join(CONTAINERS)}")
    return ext


def _runner(args: argparse.Namespace) -> Callable[[str, str], None]:
    """`stylebatch run INPUT -o OUTPUT` with the run flags given to watch (RUN_FLAGS)."""
    from stylebatch.requests import EncodingOptions, ModelOptions, RunRequest
    from stylebatch.run import run as run_video

    from stylebatch.contract import CONTAINERS
    from stylebatch.errors import BadInput

    template = RunRequest(input="in.mp4", output="out.mp4", workers=args.workers, pipelines=args.pipelines,
                          model=ModelOptions.from_namespace(args), encoding=EncodingOptions.from_namespace(args))
    # bad flags stop here, before any work and before DEST is made, checked against the outputs' real
    # container as `run` checks them: --ext's (a hard-coded out.mp4 refused `--ext webm --crf 60` and let
    # `--ext webm --codec h264` fail every video). Without --ext each output keeps its video's container,
    # any of them: flags that fit only some were accepted, then failed each upload of the others one by
    # one (`--crf 60` fits .webm, so every .mp4 failed); they are refused, naming an --ext that fits
    ext = _extension(args.ext)
    candidates = [ext] if ext else [DEFAULT_EXT, *(e for e in CONTAINERS if e != DEFAULT_EXT)]
    refused: dict[str, BadInput] = {}
    for candidate in candidates:
        try:
            template.with_places("in.mp4", f"out{candidate}").validate()
        except BadInput as exc:
            refused[candidate] = exc
    if len(refused) == len(candidates):
        raise refused[candidates[0]]
    if refused:
        fits = [e for e in candidates if e not in refused]
        first = next(iter(refused))
        raise BadInput(f"{refused[first]}; without --ext each output keeps its video's container, and these flags "
                       f"do not fit {', '.join(refused)}: give --ext {fits[0][1:]} (they fit {', '.join(fits)})")
    from stylebatch.styles import check_style_files

    # and a style every video would fail with (unknown, a missing file, a broken .pth), as `run` refuses
    # it: before DEST is made, not as one skipped video after another
    check_style_files(template.model.chosen_style)

    def stylize(input_uri: str, output_uri: str) -> None:
        run_video(template.with_places(input_uri, output_uri))

    return stylize


class Watch:
    def __init__(self, source: Location, dest: Location, ext: str | None, filters: trigger.Filters,
                 stylize: Callable[[str, str], None]) -> None:
        self.source, self.dest, self.ext, self.filters, self.stylize = source, dest, ext, filters, stylize
        self.stability = trigger.Stability()
        self.failed: dict[str, StylebatchError] = {}
        self.blocked: dict[str, str] = {}  # key -> why: its output name holds a file this watch did not write
        self.told: set[str] = set()  # names of blobs skipped as trigger.TOLD, said once
        self.shown: dict[str, str] = {}  # key -> the input as shown, of the videos failed or blocked
        self.unsettled: list[str] = []  # names the last listing found changed since the one before
        self._records: dict[str, dict] = {}  # the records read so far (never rewritten), by file name
        self.excluded = _inside(dest, source)  # DEST within SOURCE: its files are outputs, never inputs
        # SOURCE within DEST: an output of a video in a subfolder can land in SOURCE (DEST/in/x.mp4 for
        # SOURCE DEST/in's in/x.mp4), and was stylized again as a new video
        self.within_dest = _inside(source, dest)
        if self.excluded == "":
            raise StylebatchError(f"the output prefix {dest.display} is the watched {source.display}: "
                                  "give a separate folder or prefix")
        self._check_places()

    def _check_places(self) -> None:
        src = self.source.local_path()
        if src is not None and not src.is_dir():
            raise StylebatchError(f"{self.source.display} is not a folder: watch a folder or a blob prefix")
        out = self.dest.local_path()
        if out is not None:
            if out.exists() and not out.is_dir():
                raise StylebatchError(f"the output folder {self.dest.display} is a file: give a folder")
            with local_errors(self.dest.display, "make the output folder"):  # a file above it, no permission
                out.mkdir(parents=True, exist_ok=True)
        self.dest.child(".stylebatch-write-check").check_writable()  # not "probe": a source subfolder of that name

    def once(self, settle: float) -> int:
        """Everything there now (and stable), then return: 0, or the exit code of a failure."""
        self.poll()
        time.sleep(settle)
        ready = self.poll()
        for video in ready:
            self.process(video)
        if self.failed or self.blocked:
            # each video named by its input as shown (never its record key); and what the next start does
            # with it said as it is: a failed one is tried again, a skipped one is skipped again while the
            # file at its output name is there (the advice in its reason says what frees it)
            code = EXIT_TRANSIENT if any(e.exit_code == EXIT_TRANSIENT for e in self.failed.values()) else 2
            said = []
            if self.failed:
                first = next(iter(self.failed))
                said.append(f"{len(self.failed)} of {counted(len(ready), 'video')} failed ({self.shown[first]}: "
                            f"{self.failed[first]}); tried again on the next start")
            if self.blocked:
                first = next(iter(self.blocked))
                said.append(f"{len(self.blocked)} of {counted(len(ready), 'video')} skipped ({self.shown[first]}: "
                            f"{self.blocked[first]}); skipped again on every start until then")
            error = StylebatchError("; ".join(said))
            error.exit_code = code
            raise error
        unsettled = self.unsettled  # (changed between the two listings: a new version, never done)
        if unsettled:  # (left out without a word: --once said nothing of a file still being copied in)
            log.warning("%s still being written (%s%s): left to the next start", counted(len(unsettled), "file"),
                        unsettled[0], ", ..." if len(unsettled) > 1 else "")
        elif not ready:
            log.info("nothing new in %s", self.source.display)
        return 0

    def forever(self, interval: float) -> None:
        while True:
            try:
                for video in self.poll():
                    self.process(video)
            except TransientError as exc:  # storage away for a while: keep watching
                log.warning("%s; trying again in %gs", exc, interval)
            time.sleep(interval)

    def poll(self) -> list[Video]:
        """The videos that are stable, not done, and not failed in this run."""
        outputs = self._own_outputs()
        infos = {i.name: i for i in self.source.list_info() if not self._excluded(i.name) and i.name not in outputs}
        skipped = {name: trigger.skip_reason(name, i.size, i.metadata, self.filters, i.tier, i.copy_status) for name, i in infos.items()}
        candidates = {name: i for name, i in infos.items() if skipped[name] is None}
        for name in sorted(n for n, why in skipped.items() if why in trigger.TOLD and n not in self.told):
            log.warning("skipped %s: %s", printable(f"{self.source.display.rstrip('/')}/{name}"),
                        skipped[name])  # once a watch: no location can name it
            self.told.add(name)
        ready = self.stability.observe({n: (i.size, i.etag) for n, i in candidates.items()})
        done = self._done()
        self.unsettled = sorted(set(candidates) - set(ready))  # changed since the previous listing
        videos = [self._video(candidates[name]) for name in ready]
        return [v for v in videos if v.key not in done and v.key not in self.failed]

    def process(self, video: Video) -> None:
        if video.key in self._done():  # done meanwhile (another watch of the same folders)
            return
        try:  # this video's names (an upload's name too long for DEST's file system): it fails, alone
            now, there = video.input.info(), video.output.info()
        except TransientError:
            raise  # storage away for a while: the watch's, not the video's
        except StylebatchError as exc:
            self._fail(video, exc)
            return
        if now is None or (now.size, now.etag) != (video.info.size, video.info.etag):
            # changed (or gone) since the listing that found it stable: stylizing it now would record the
            # new bytes under the old version's name, and do them again once the listings caught up
            log.info("%s changed since it was listed: %s", video.input.display,
                     "it is gone" if now is None else "waiting until it stays the same")
            return
        if there is not None and (other := self._output_of_another(video)) is not None:
            self._block(video, f"is the stylized {other}, another video of the same name", "rename one of them")
            return
        if there is not None and not self._wrote(video, there):
            self._block(video, "is already there and stylebatch watch did not write it (or it was changed since)")
            return
        self.blocked.pop(video.key, None)
        log.info("started %s -> %s", video.input.display, video.output.display)
        began = time.monotonic()
        out = video.output.local_path()
        made = _folders_to_make(out.parent) if out is not None else []
        try:
            for folder in made:  # the video's own subfolder (a file of its name there: this video fails)
                with local_errors(printable(str(folder)), "make the folder"):
                    folder.mkdir(exist_ok=True)
            with _job_env(video.key):
                if out is None:  # a blob: written in place (checked above)
                    self.stylize(video.input.uri, video.output.uri)
                elif not self._stylize_then_publish(video, there):
                    _remove_empty(made)
                    self._block(video, "appeared while it was stylized (the stylized video was not kept)")
                    return
            self._record(video)
        except Interrupted:
            _remove_empty(made)
            raise  # Ctrl-C or SIGTERM stops the watch, not just this video
        except StylebatchError as exc:
            _remove_empty(made)  # no empty folder left for a video that made nothing
            self._fail(video, exc)
            return
        log.info("finished %s -> %s (%.1fs)", video.input.display, video.output.display, time.monotonic() - began)

    def _fail(self, video: Video, exc: StylebatchError) -> None:
        """A video that failed: said, skipped, and tried again on the next start."""
        self.failed[video.key], self.shown[video.key] = exc, video.input.display
        log.warning("failed %s: %s (skipped; tried again on the next start)", video.input.display,
                    " ".join(str(exc).split()))

    def _block(self, video: Video, what: str, advice: str = NOT_OURS) -> None:
        """Skip a video whose output name holds a file this watch did not write for it: one warning per video."""
        why = f"{video.output.display} {what}: it is left as it is; {advice}"
        if video.key not in self.blocked:
            log.warning("skipped %s: %s", video.input.display, why)
        self.blocked[video.key], self.shown[video.key] = why, video.input.display

    def _wrote(self, video: Video, there: FileInfo) -> bool:
        """Whether the file at the video's output name is one this watch wrote and nobody changed since:
        a record names it (by its name in DEST, or, an older record, by the output as shown) with its
        "output_etag", or, an older record without one, it was not modified after the record's
        "finished" (2 s to spare: that time is in whole seconds, a blob's from the storage's clock)."""
        for record in self._read_records():
            if record.get("name") != video.name and record.get("output") != video.output.display:
                continue
            if "output_etag" in record:
                if record["output_etag"] == there.etag:
                    return True
                continue
            try:
                finished = datetime.fromisoformat(record["finished"]).timestamp()
            except (KeyError, TypeError, ValueError):
                continue
            if there.modified <= finished + 2:
                return True
        return False

    def _output_of_another(self, video: Video) -> str | None:
        """The input (as shown) whose stylized video this watch wrote at `video`'s output name, when it is
        another file than `video`'s input (clip.flv and clip.mp4 both make clip.mp4), else None: the
        second replaced the first's output, and both counted as done."""
        for record in reversed(self._read_records()):
            if record.get("name") == video.name and record.get("input") not in (None, video.input.display):
                return record["input"]
        return None

    def _own_outputs(self) -> set[str]:
        """Names in SOURCE that are this watch's outputs (SOURCE within DEST), never new videos."""
        if not self.within_dest:
            return set()
        prefix = self.within_dest + "/"
        return {r["name"][len(prefix):] for r in self._read_records()
                if isinstance(r.get("name"), str) and r["name"].startswith(prefix)}

    def _read_records(self) -> list[dict]:
        folder = self.dest.child(RECORD_DIR)
        for name in folder.list():
            if name.endswith(".json") and "/" not in name and name not in self._records:
                try:
                    record = json.loads(folder.child(name).read_bytes())
                except (ValueError, StylebatchError):  # damaged, or gone meanwhile: proves nothing
                    continue
                if isinstance(record, dict):
                    self._records[name] = record
        return list(self._records.values())

    def _stylize_then_publish(self, video: Video, own: FileInfo | None) -> bool:
        """Stylize a video of a local DEST into RECORD_DIR/PARTIAL_DIR, then put it at its output name
        without replacing a file this watch did not write (`_publish`); whether it was put there."""
        # named as in DEST, not by key: `run`'s work dir for a new version of the input then knows the
        # old version's by their common input and output, and removes it (workdir.remove_outdated)
        temp = self.dest.child(RECORD_DIR, PARTIAL_DIR, *video.name.split("/"))
        path, top = temp.local_path(), self.dest.child(RECORD_DIR, PARTIAL_DIR).local_path()
        assert path is not None and top is not None
        with local_errors(printable(str(path.parent)), "make the folder"):
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with _unsaid_wrote(temp.display):
                self.stylize(video.input.uri, temp.uri)
            with local_errors(video.output.display, "write"):
                return _publish(path, video.output, own)
        finally:
            path.unlink(missing_ok=True)
            folder = path.parent
            while folder != top.parent:  # the folders left empty, PARTIAL_DIR too
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent

    def _video(self, info: FileInfo) -> Video:
        account, container, prefix = _identity(self.source)
        key = trigger.job_name(account, container, posixpath.join(prefix, info.name), info.etag)
        stem, ext = posixpath.splitext(info.name)
        from stylebatch.contract import CONTAINERS

        out_ext = self.ext or (ext.lower() if ext.lower() in CONTAINERS else DEFAULT_EXT)
        return Video(key, info, self.source.child(info.name), self.dest.child(stem + out_ext), stem + out_ext)

    def _excluded(self, name: str) -> bool:
        return self.excluded is not None and (name + "/").startswith(self.excluded + "/")

    def _done(self) -> set[str]:
        return {posixpath.splitext(n)[0] for n in self.dest.child(RECORD_DIR).list() if n.endswith(".json")}

    def _record(self, video: Video) -> None:
        written = video.output.info()  # what `_wrote` knows the watch's own output by
        record = {"input": video.input.display, "output": video.output.display, "name": video.name,
                  "size": video.info.size, "etag": video.info.etag,
                  "output_size": written.size if written else None, "output_etag": written.etag if written else None,
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.dest.child(RECORD_DIR, f"{video.key}.json").write_bytes(json.dumps(record, indent=1).encode())


@contextlib.contextmanager
def _unsaid_wrote(temp: str) -> Iterator[None]:
    """Without postprocess's "wrote TEMP" line while a video is stylized into PARTIAL_DIR: it named
    a file that is gone a moment later (the watch's "finished" line names where the video went)."""
    from stylebatch import postprocess

    def keep(record: logging.LogRecord) -> bool:
        return not (isinstance(record.args, tuple) and record.args[:1] == (temp,)
                    and str(record.msg).startswith("wrote "))

    postprocess.log.addFilter(keep)
    try:
        yield
    finally:
        postprocess.log.removeFilter(keep)


def _publish(temp: Path, output: Location, own: FileInfo | None) -> bool:
    """Put the finished `temp` at `output` unless a file this watch did not write is there: a new name by
    a hard link, which fails if a file appeared there meanwhile; the watch's own earlier file
    (`own`, as `Watch._wrote` found it) by a rename once it is seen unchanged. Whether it was put there.
    Where hard links cannot be made (some network file systems) a rename after a last look; a
    subfolder of DEST on another file system gets a copy beside the output first."""
    out = output.local_path()
    assert out is not None
    if os.stat(temp).st_dev != os.stat(out.parent).st_dev:
        beside = out.with_name(f".{out.name[:200]}.{secrets.token_hex(4)}.partial")
        try:
            shutil.copyfile(temp, beside)
            return _publish(beside, output, own)
        finally:
            beside.unlink(missing_ok=True)
    if own is not None:
        now = output.info()
        if now is not None and now.etag != own.etag:
            return False
        if now is not None:
            os.replace(temp, out)
            return True
    try:
        os.link(temp, out)
    except FileExistsError:
        return False
    except OSError:
        if os.path.lexists(out):
            return False
        os.replace(temp, out)
    return True


def _folders_to_make(folder: Path) -> list[Path]:
    """The folders, outermost first, that do not exist yet down to `folder`."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _remove_empty(made: list[Path]) -> None:
    """Remove the folders of `made` (outermost first) that are still empty, innermost first."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:  # not empty (another video's output), or gone
            return


@dataclasses.dataclass(frozen=True)
class Video:
    key: str  # trigger.job_name of the source blob or file: the record's name
    info: FileInfo
    input: Location
    output: Location
    name: str = ""  # the output's name in DEST ('/'-separated): what the records know it by


@contextlib.contextmanager
def _job_env(key: str) -> Iterator[None]:
    """While a video is stylized, the blobs written carry its key (stylebatch.contract.OUTPUT_TAG)."""
    before = os.environ.get(JOB_ENV)
    os.environ[JOB_ENV] = key
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(JOB_ENV, None)
        else:
            os.environ[JOB_ENV] = before


def _identity(source: Location) -> tuple[str, str, str]:
    """(account, container, prefix) as job names use them; a local folder has neither account nor
    container, and its path is left out so that moving the folder (and DEST with it) changes nothing."""
    if isinstance(source, BlobLocation):
        from stylebatch.storage import resolve_credential

        return resolve_credential(source).account, source.container, source.blob
    return "", "", ""


def _inside(dest: Location, source: Location) -> str | None:
    """dest's path below source ('' when they are the same place), or None when it is not inside."""
    if dest.is_local() != source.is_local():
        return None
    if dest.is_local():
        d, s = dest.local_path().resolve(), source.local_path().resolve()  # type: ignore[union-attr]
        if d == s:
            return ""
        return d.relative_to(s).as_posix() if d.is_relative_to(s) else None
    from stylebatch.storage import blob_place

    if blob_place(dest) != blob_place(source):  # type: ignore[arg-type]  # az:// and the account's URL alike
        return None
    d, s = dest.blob, source.blob  # type: ignore[attr-defined]
    if d == s:
        return ""
    if not s:
        return d
    return d[len(s) + 1:] if d.startswith(s + "/") else None
