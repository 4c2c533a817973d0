"""A work dir is stylebatch's only when stylebatch made it.

The first file stylebatch writes into a new (or empty) work dir is its owner record, OWNER_NAME,
holding a random id and the names of the top-level files stylebatch writes there. A work dir is
resumed only if it holds that record; any other non-empty folder or blob prefix is refused. When
done, stylebatch deletes only what its own records list: the owner record's files, the manifest,
stylize.json and the parts the manifest's chunk grid names (plus the temp files of their atomic
local writes). A user's file that happens to sit in the work dir, whatever its name, is never touched.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import secrets
import socket
import time
from typing import Iterator

from stylebatch.contract import JOB_ENV, LOCK_NAME, MANIFEST_NAME, OWNER_NAME, PARTS_DIR, STYLIZE_NAME, called_by_api, fresh_work, run_by_operator
from stylebatch.errors import StylebatchError, TransientError

log = logging.getLogger(__name__)

def _fresh() -> str:
    """What a refusal of a work dir that is not stylebatch's asks for (contract.fresh_work)."""
    if run_by_operator(os.environ) or called_by_api():
        return f"give {fresh_work()}"
    return "give an empty or new folder for --work"


def _top_level_names(work) -> list[str]:
    if work.is_local():
        path = work.local_path()
        if path.is_file():
            raise StylebatchError(f"work dir {work.display} is a file: give a folder (empty or new)")
        if not path.is_dir():
            return []
        try:
            return sorted(p.name + ("/x" if p.is_dir() else "") for p in path.iterdir())
        except OSError as exc:
            raise StylebatchError(f"cannot read work dir {work.display}: {exc.strerror or exc}") from None
    return work.list()


def inside(loc, folder) -> bool:
    """True if loc is folder itself or lies below it (same backend; resolved paths, or blobs in one
    account's container however the URIs spell it: `storage.blob_place`)."""
    if loc.is_local() != folder.is_local():
        return False
    if loc.is_local():
        a, b = loc.local_path().resolve(), folder.local_path().resolve()
        return a == b or b in a.parents
    from stylebatch.storage import blob_place

    if blob_place(loc) != blob_place(folder):  # az:// and the account's URL, http and https: one place
        return False
    return not folder.blob or loc.blob == folder.blob or loc.blob.startswith(folder.blob + "/")


def read_owner(work) -> dict | None:
    """The owner record of work, or None if stylebatch did not make it."""
    loc = work.child(OWNER_NAME)
    if not loc.exists():
        return None
    try:
        record = json.loads(loc.read_bytes())
    except ValueError:
        record = None
    if not (isinstance(record, dict) and record.get("owner") == "stylebatch" and isinstance(record.get("id"), str)
            and isinstance(record.get("files"), list)):
        raise StylebatchError(f"work dir {work.display} has a damaged {OWNER_NAME}: {_fresh()}")
    return record


def check_work(work, *others) -> None:
    """Refuse a work dir that stylebatch did not make (any non-empty folder or prefix without the
    owner record), or that holds the input or the output. Writes nothing."""
    for other in others:
        if other is not None and inside(other, work):
            if work.is_local() and work.local_path().is_file():  # the input or output itself, not a folder
                raise StylebatchError(f"work dir {work.display} is a file: {_fresh()}")
            raise StylebatchError(f"work dir {work.display} contains {other.display}: {_fresh()} "
                                  f"(stylebatch deletes its work dir's files when done)")
    names = _top_level_names(work)
    if OWNER_NAME in names:
        read_owner(work)
        return
    if names and work.is_local() and all(_claim_in_flight(work, name) for name in names):
        # another stylebatch claiming this new work dir right now: its owner record is being written
        raise TransientError(f"work dir {work.display} is in use by another stylebatch (it is making it its work "
                             f"dir now): wait for it to end, or use {fresh_work()}")
    if LOCK_NAME in names and all(n == LOCK_NAME or _empty_parts_folder(work, n) for n in names):
        # what a work dir being deleted keeps until its deleter lets go of the lock (delete_work removes the
        # owner record last): in use while that lock is held; once let go (its deleter killed then), only
        # stylebatch's own lock file is left, which the next holder takes over
        holder = work.child(LOCK_NAME).lock_holder()
        if holder is not None:
            raise TransientError(f"work dir {work.display} is in use by another stylebatch ({_describe(holder)}: "
                                 f"it is deleting it now): wait for it to end, or use {fresh_work()}")
        return
    if names:
        first = names[0].partition("/")[0]
        made = " (made by an older stylebatch or by hand: no owner record)" if MANIFEST_NAME in names else ""
        raise StylebatchError(f"work dir {work.display} holds other files ({first}...){made}: {_fresh()}")


def _empty_parts_folder(work, name: str) -> bool:
    """True if `name` (as _top_level_names lists it) is a local work dir's parts folder, empty."""
    if name != f"{PARTS_DIR}/x" or not work.is_local():
        return False
    try:
        return not any((work.local_path() / PARTS_DIR).iterdir())
    except OSError:
        return False


OWNER_PARTIAL_AGE_S = 60  # a temp file of the owner record younger than this is a claim in flight


def _claim_in_flight(work, name: str) -> bool:
    """True if `name`, in local work dir `work`, is the temp file of another stylebatch's owner record
    being written (storage.files.atomic_file), made less than OWNER_PARTIAL_AGE_S ago (or just renamed
    into the record). An older one is left over by a killed writer: a file like any other."""
    from stylebatch.storage.files import partials_of

    path = work.local_path() / name
    if path not in partials_of(work.local_path() / OWNER_NAME):
        return False
    try:
        return time.time() - path.stat().st_mtime < OWNER_PARTIAL_AGE_S
    except FileNotFoundError:
        return True  # renamed into the owner record since it was listed


def claim_work(work, *files: str, made_for: dict | None = None) -> dict:
    """Make work a stylebatch work dir if it is not one yet (the owner record is written first, so
    nothing stylebatch writes is ever unlisted), and list `files` (top-level names) in the record.
    `made_for` (run's own work dir only: see the function made_for) goes into a new record as
    MADE_FOR; an existing record keeps what it has (one without it is never given it)."""
    record = read_owner(work)
    if record is None:
        check_work(work)
        given = work.is_local() and work.local_path().is_dir()  # the user's own (empty) folder: kept
        record = {"owner": "stylebatch", "id": secrets.token_hex(16), "host": socket.gethostname(),
                  "created": _now(), "files": [], **({MADE_FOR: made_for} if made_for else {}),
                  **({FOLDER_GIVEN: True} if given else {})}
    missing = [f for f in files if f not in record["files"]]
    if missing or not work.child(OWNER_NAME).exists():
        record["files"] = record["files"] + missing
        work.child(OWNER_NAME).write_bytes(json.dumps(record, sort_keys=True).encode())
    return record


def require_owned(work) -> dict:
    """The owner record of a work dir a later stage works in; a one-line error if there is none."""
    record = read_owner(work)
    if record is not None:
        return record
    if work.child(MANIFEST_NAME).exists():
        raise StylebatchError(f"work dir {work.display} was not made by stylebatch (no {OWNER_NAME}): "
                              f"run preprocess into a fresh --work")
    raise StylebatchError(f"no {MANIFEST_NAME} in work dir {work.display}: run `stylebatch preprocess` first")


def own_files(work) -> list[str]:
    """Every file the work dir's own records list, the owner record last (so that a half-deleted
    work dir still reads as stylebatch's), whether or not it exists."""
    record = read_owner(work)
    if record is None:
        return []
    names = [MANIFEST_NAME, STYLIZE_NAME, *record["files"]]
    manifest = work.child(MANIFEST_NAME)
    if manifest.exists():
        from stylebatch.contract import PART_EXT
        from stylebatch.manifest import Manifest
        from stylebatch.partition import chunk_bounds, part_name

        m = Manifest.from_json(manifest.read_bytes())
        names += [f"{PARTS_DIR}/{part_name(s, e, PART_EXT)}" for s, e in chunk_bounds(m.frames, m.chunk_frames)]
        if m.source not in names:
            names.append(m.source)
    names.remove(MANIFEST_NAME)
    return [n for n in dict.fromkeys(names) if n not in (OWNER_NAME, LOCK_NAME)] + [MANIFEST_NAME, OWNER_NAME]


def delete_work(work) -> None:
    """Delete the files the work dir's records list and nothing else; refuse a work dir stylebatch
    did not make. The lock file goes when the lock is let go; a local work dir left empty then too."""
    folder = not require_owned(work).get(FOLDER_GIVEN)
    held = _HELD.get(work.display)
    names = own_files(work)
    local = work.is_local()
    for name in names:
        loc = work.child(name)
        if local:
            from stylebatch.storage.files import partials_of

            for temp in partials_of(loc.local_path()):
                with contextlib.suppress(OSError):
                    temp.unlink()
        loc.delete()
    if held is not None:
        held.delete, held.folder = True, folder
    else:
        _remove_if_empty(work, folder)


def delete_work_after(work, output: str) -> bool:
    """delete_work once `output` is published; whether it was done. A work dir that cannot be deleted
    then (a SAS without delete permission, an immutable container, storage gone away) is said in a
    warning: the command did what it was for, and an error's exit code (2: the same command cannot
    succeed) told the caller, and the operator, that the published video had failed."""
    from stylebatch.errors import Interrupted, StylebatchError

    try:
        delete_work(work)
    except Interrupted:
        raise
    except StylebatchError as exc:
        log.warning("%s is written, but the work dir %s was not deleted (%s): delete it yourself", output,
                    work.display, " ".join(str(exc).split()))
        return False
    return True


def _remove_if_empty(work, folder: bool = True) -> None:
    """Remove a local work dir's parts folder, and the work dir itself unless the user made it, if empty."""
    if work.is_local():
        path = work.local_path()
        for empty in (path / PARTS_DIR, path) if folder else (path / PARTS_DIR,):
            with contextlib.suppress(OSError):
                os.rmdir(empty)  # only if empty


def default_work_dir(*key: object) -> str:
    """The work dir of `stylebatch run` without --work: $XDG_CACHE_HOME/stylebatch/work/<hash of key>
    (~/.cache when unset). The key is the input (name and identity), the output and what the parts
    depend on (run._parts_key: style and encoding settings), so running the same command again finds the
    work of an interrupted run, and a changed input or other settings get a fresh one."""
    import hashlib
    import pathlib

    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "stylebatch"
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        (cache / "work").mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StylebatchError(f"cannot make a work dir in {cache}: {exc.strerror or exc}: give one with {'work=' if called_by_api() else '--work'}") from None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return str(cache / "work" / digest[:24])


MADE_FOR = "made_for"  # in the owner record of run's own work dir: what it was made for (`made_for`)
FOLDER_GIVEN = "folder_given"  # in the owner record: the folder was there (the user's, empty): never removed


def made_for(input_name: str, identity: object, output: str) -> dict[str, str]:
    """What run's own work dir is made for, as its owner record keeps it: "target", a hash of the input's
    path or URI and the output's (the same command's target, whatever the settings), and "input", a
    hash of the input's identity (its bytes as default_work_dir's key has them)."""
    import hashlib

    def digest(value: object) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]

    return {"target": digest([input_name, output]), "input": digest(identity)}


def remove_outdated(work) -> list[tuple[str, int]]:
    """Run's own work dirs beside `work` (default_work_dir, whose owner record says MADE_FOR) made for
    the same input and output from another version of the input: no run can resume them (resuming
    from other bytes is refused), so each is deleted as delete_work deletes (its records' files only)
    unless another run holds its lock (then it is left alone). Left alone too: work dirs of the same
    input with other settings (the command that made them still resumes them), and those without
    MADE_FOR (an older stylebatch's; a --work is never under the cache). Never raises; returns the
    (display, bytes freed) of each removed."""
    from stylebatch.storage import location

    record, here = read_owner(work), work.local_path()
    mine = (record or {}).get(MADE_FOR)
    if not isinstance(mine, dict) or here is None:
        return []
    removed = []
    try:
        others = sorted(p for p in here.parent.iterdir() if p != here and not p.is_symlink() and p.is_dir())
    except OSError:
        return []
    for path in others:
        try:
            theirs = json.loads((path / OWNER_NAME).read_bytes()).get(MADE_FOR)
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(theirs, dict) or theirs.get("target") != mine.get("target") \
                or theirs.get("input") == mine.get("input"):
            continue
        old, before = location(str(path)), _bytes_under(path)
        try:
            with hold(old):  # another run holds it: TransientError, left alone
                delete_work(old)
        except (StylebatchError, OSError) as exc:
            log.debug("left work dir %s: %s", old.display, exc)
            continue
        removed.append((old.display, before - _bytes_under(path)))
    return removed


def _bytes_under(path) -> int:
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


# --- one writer per work dir ---

LOCK_ENV = "STYLEBATCH_WORK_LOCK"  # the holder's token, handed to the MPI ranks that work for it


class _Held:
    def __init__(self, lock) -> None:
        self.lock, self.delete, self.folder = lock, False, True


_HELD: dict[str, _Held] = {}  # work dir display -> the lock this process holds on it


def lock_token(work) -> str | None:
    """The token of the lock this process holds on work (for the ranks it starts), if any."""
    held = _HELD.get(work.display)
    return held.lock.token if held else None


@contextlib.contextmanager
def hold(work) -> Iterator[None]:
    """Hold the work dir's exclusive lock for a whole stage: one writer per work dir. Re-entrant in
    one process; a process given LOCK_ENV (an MPI rank of a run) works under its launcher's lock
    instead. Another holder: a TransientError at once, naming it (retrying once it ends can work);
    a holder known to have stopped (`_stopped`) is waited for until its lock expires (a blob lease:
    at most a minute), so the attempt after a killed one is not lost to the dead one's lock."""
    if work.display in _HELD:
        yield
        return
    loc = work.child(LOCK_NAME)
    token = os.environ.get(LOCK_ENV)
    if token:
        if not loc.lock_held_by(token):
            raise StylebatchError(f"work dir {work.display} is not locked by the run that started this "
                                  f"process ({LOCK_ENV} is stale): run the stage again")
        yield
        return
    require_owned(work)
    held = _HELD[work.display] = _Held(take(loc, f"work dir {work.display}", f"wait for it to end, or use {fresh_work()}"))
    try:
        yield
    finally:
        del _HELD[work.display]
        held.lock.release()
        if held.delete:
            _remove_if_empty(work, held.folder)


LOCK_POLL_S = 3.0


def take(loc, what: str, advice: str):
    """The exclusive lock whose file is `loc` (Location.lock), recording this process as its holder;
    `what` is what the lock guards and `advice` what to do while another has it, both for the one
    line a busy lock is: a TransientError at once, naming the holder (retrying once it ends can work).
    A holder known to have stopped (`_stopped`) is waited for until its lock expires (a blob lease:
    at most a minute; a local flock goes with its process), so the attempt after a killed one is not
    lost to the dead one's lock."""
    from stylebatch.storage.base import LockBusy

    holder = {"host": socket.gethostname(), "pid": str(os.getpid()), "started": _now(),
              "token": secrets.token_hex(16), **({"job": _job()} if _job() else {})}
    deadline = None
    while True:
        try:
            return loc.lock(holder)
        except LockBusy as busy:
            stopped = _stopped(busy.holder)
            if stopped and loc.lock_outlives_holder_s() > 0:
                if deadline is None:
                    wait = loc.lock_outlives_holder_s() + 2 * LOCK_POLL_S
                    deadline = time.monotonic() + wait
                    log.warning("%s is still locked by %s (%s): waiting up to %d s for its lock to expire",
                                what, stopped, _describe(busy.holder), wait)
                if time.monotonic() < deadline:
                    time.sleep(LOCK_POLL_S)
                    continue
            raise TransientError(f"{what} is in use by another stylebatch ({_describe(busy.holder)}): "
                                 f"{advice}") from None


@contextlib.contextmanager
def exclusive(loc, what: str, advice: str) -> Iterator[None]:
    """Hold the lock whose file is `loc` for the block (`take`), then let it go and remove its file:
    one writer of a place that is no work dir (`stylebatch train-style`'s output and checkpoint)."""
    lock = take(loc, what, advice)
    try:
        yield
    finally:
        lock.release()


def _job() -> str:
    return os.environ.get(JOB_ENV, "").strip()


def _stopped(holder: dict) -> str | None:
    """What tells that a lock's holder has stopped, or None if it may be running: an earlier attempt
    of this same job (the operator runs one attempt of a stage at a time: it starts the next only
    once the last has failed), or a process of this host that no longer exists."""
    if _job() and holder.get("job") == _job():
        return f"an earlier attempt of job {_job()}"
    pid = str(holder.get("pid", ""))
    if holder.get("host") == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return "a stylebatch of this host that has ended"
        except OSError:
            return None
    return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "holder unknown"
    return f"host {holder.get('host', '?')}, pid {holder['pid']}, since {holder.get('started', '?')}"
