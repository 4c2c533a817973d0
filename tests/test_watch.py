"""`stylebatch watch`: every video in a folder or blob prefix stylized exactly once, across restarts,
never its own outputs, never a file still being written. The real CLI on real clips, locally and on
Azurite; the stylizing itself is `stylebatch run` (tiny clips, --max-side 48, one rank)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clips import FAST_STYLE, count_frames, error_lines, stylebatch
from stylebatch import watch as watch_mod
from stylebatch.contract import EXIT_TRANSIENT, OUTPUT_TAG
from stylebatch.errors import Interrupted
from stylebatch.storage import location
from stylebatch.trigger import Filters

pytestmark = pytest.mark.slow
FLAGS = [*FAST_STYLE, "--workers", "1", "--interval", "0.2", "--once"]


def outputs(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                  and ".stylebatch-watch" not in p.parts)


def started(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("stylebatch: started ")]


def test_watch_once_on_a_folder_stylizes_each_video_once_and_then_only_new_ones(clip, tmp_path):
    src, dest = tmp_path / "in", tmp_path / "out"
    (src / "holiday").mkdir(parents=True)
    shutil.copy(clip("a.mp4", frames=4), src / "a.mp4")
    shutil.copy(clip("b.mov", frames=3, size=(48, 32)), src / "holiday" / "b.mov")
    (src / "notes.txt").write_text("not a video")

    first = stylebatch("watch", src, "-o", dest, *FLAGS)
    assert first.returncode == 0, first.stderr
    assert outputs(dest) == ["a.mp4", "holiday/b.mov"]
    assert count_frames(dest / "holiday" / "b.mov") == 3
    assert len(started(first)) == 2 and first.stderr.count("stylebatch: finished ") == 2

    second = stylebatch("watch", src, "-o", dest, *FLAGS)
    assert second.returncode == 0, second.stderr
    assert started(second) == [] and "nothing new" in second.stderr
    assert outputs(dest) == ["a.mp4", "holiday/b.mov"]

    shutil.copy(clip("a.mp4", frames=4), src / "c.mp4")
    third = stylebatch("watch", src, "-o", dest, *FLAGS, "--ext", "mkv")
    assert third.returncode == 0, third.stderr
    assert [line.split(" -> ")[0] for line in started(third)] == [f"stylebatch: started {src / 'c.mp4'}"]
    assert outputs(dest) == ["a.mp4", "c.mkv", "holiday/b.mov"]


def test_watch_once_on_azurite_stylizes_each_blob_once_and_never_its_outputs(clip, azure_env):
    blobs = azure_env.azurite.service_client().get_container_client(azure_env.container)
    for name, path in [("in/a.mp4", clip("a.mp4", frames=4)), ("in/b.mp4", clip("a.mp4", frames=4))]:
        blobs.upload_blob(name, path.read_bytes())
    blobs.upload_blob("in/readme.txt", b"not a video")
    blobs.upload_blob("in//odd.mp4", b"a video no URI can name: its URI would be in/odd.mp4")
    blobs.upload_blob("in/q?x=1.mp4", b"a video no az:// URI can name: its '?' starts the query")
    # the outputs go inside the watched prefix: they must still never be taken for uploads
    source, dest = f"az://{azure_env.container}/in", f"az://{azure_env.container}/in/stylized"

    first = stylebatch("watch", source, "-o", dest, *FLAGS, env=azure_env.env)
    assert first.returncode == 0, first.stderr
    names = sorted(b.name for b in blobs.list_blobs(name_starts_with="in/stylized/", include=["metadata"])
                   if ".stylebatch-watch" not in b.name)
    assert names == ["in/stylized/a.mp4", "in/stylized/b.mp4"]
    tag = blobs.get_blob_client("in/stylized/a.mp4").get_blob_properties().metadata[OUTPUT_TAG]
    assert tag.startswith("a-") and len(started(first)) == 2
    # skipped, and said (it was skipped in silence): once, though both listings found it
    skipped = [line for line in first.stderr.splitlines() if "odd.mp4" in line]
    assert skipped == [f"stylebatch: warning: skipped az://{azure_env.container}/in//odd.mp4: an empty folder name "
                       "('//') in its name, which stylebatch cannot address: rename it"], first.stderr
    # (it failed on every pass: "output 'q' needs one of the extensions", and --once exited 2)
    assert [line for line in first.stderr.splitlines() if "q?x=1.mp4" in line] == [
        f"stylebatch: warning: skipped az://{azure_env.container}/in/q?x=1.mp4: a '?' in its name, which "
        "stylebatch cannot address (a URI's query starts there): rename it"], first.stderr

    second = stylebatch("watch", source, "-o", dest, *FLAGS, env=azure_env.env)
    assert second.returncode == 0 and started(second) == [], second.stderr

    blobs.upload_blob("in/c.mp4", clip("a.mp4", frames=4).read_bytes())
    third = stylebatch("watch", source, "-o", dest, *FLAGS, env=azure_env.env)
    assert third.returncode == 0, third.stderr
    assert len(started(third)) == 1 and "in/c.mp4" in started(third)[0]
    outs = [b.name for b in blobs.list_blobs(name_starts_with="in/stylized/") if ".stylebatch-watch" not in b.name]
    assert sorted(outs) == ["in/stylized/a.mp4", "in/stylized/b.mp4", "in/stylized/c.mp4"]


def test_an_output_prefix_given_by_the_accounts_url_is_known_as_the_same_place_as_its_az_source(clip, azure_env):
    """`watch az://c/in -o http://127.0.0.1:10000/devstoreaccount1/c/in/stylized`: the outputs were not
    known to lie inside the watched prefix (the URIs were compared as written), so the next pass took
    them for uploads and stylized them again; DEST given as SOURCE's own URL was not refused."""
    blobs = azure_env.azurite.service_client().get_container_client(azure_env.container)
    blobs.upload_blob("in/a.mp4", clip("a.mp4", frames=4).read_bytes())
    source = f"az://{azure_env.container}/in"
    by_url = f"{azure_env.azurite.endpoint}/{azure_env.container}/in"

    same = stylebatch("watch", source, "-o", by_url, *FLAGS, env=azure_env.env)
    assert same.returncode == 2 and len(error_lines(same)) == 1 and "is the watched" in error_lines(same)[0]
    assert [b.name for b in blobs.list_blobs()] == ["in/a.mp4"]

    first = stylebatch("watch", source, "-o", by_url + "/stylized", *FLAGS, env=azure_env.env)
    assert first.returncode == 0 and len(started(first)) == 1, first.stderr
    second = stylebatch("watch", source, "-o", by_url + "/stylized", *FLAGS, env=azure_env.env)
    assert second.returncode == 0 and started(second) == [], second.stderr
    assert sorted(b.name for b in blobs.list_blobs() if ".stylebatch-watch" not in b.name) == \
        ["in/a.mp4", "in/stylized/a.mp4"]


def test_a_failed_video_is_reported_skipped_and_retried_on_the_next_start(clip, tmp_path):
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "broken.mp4").write_bytes(b"\x00" * 2000)  # not a video at all
    (src / "notes.txt").write_text("not a video either")

    first = stylebatch("watch", src, "-o", dest, *FLAGS)
    assert first.returncode == 2
    assert "1 of 1 video failed" in error_lines(first)[0] and "broken.mp4" in error_lines(first)[0]
    assert len(error_lines(first)) == 1 and "Traceback" not in first.stderr
    assert "stylebatch: warning: failed " in first.stderr and outputs(dest) == []

    shutil.copy(clip("a.mp4", frames=4), src / "broken.mp4")  # fixed (a new version of the file)
    second = stylebatch("watch", src, "-o", dest, *FLAGS)
    assert second.returncode == 0, second.stderr
    assert [line.split(" -> ")[0].rsplit("/", 1)[-1] for line in started(second)] == ["broken.mp4"]
    assert outputs(dest) == ["broken.mp4"]


def test_once_names_a_failed_video_by_its_input_not_by_its_record_key(clip, tmp_path):
    """The summary named the video's record key: "1 of 2 videos failed (bad-501c48680d: ...)"."""
    src, dest = tmp_path / "in", tmp_path / "out"
    (src / "inc2").mkdir(parents=True)
    (src / "inc2" / "bad.mp4").write_bytes(b"\x00" * 2000)  # not a video at all
    shutil.copy(clip("a.mp4", frames=3), src / "a.mp4")

    result = stylebatch("watch", src, "-o", dest, *FLAGS)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [error] = error_lines(result)
    assert f"1 of 2 videos failed ({src / 'inc2' / 'bad.mp4'}: " in error, error
    assert "bad-" not in error and error.endswith("; tried again on the next start"), error
    assert outputs(dest) == ["a.mp4"]


# --- the loop itself, with a stand-in for `stylebatch run` (which the tests above run for real) ---

def make_watch(src: Path, dest: Path, made: list[str]) -> watch_mod.Watch:
    def stylize(input_uri: str, output_uri: str) -> None:
        made.append(Path(input_uri).name)
        Path(output_uri).parent.mkdir(parents=True, exist_ok=True)
        Path(output_uri).write_bytes(Path(input_uri).read_bytes())

    return watch_mod.Watch(location(str(src)), location(str(dest)), None, Filters(), stylize)


def test_an_interrupted_video_stops_the_watch_and_is_not_recorded(tmp_path):
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.mp4").write_bytes(b"video")

    def stylize(input_uri: str, output_uri: str) -> None:
        raise Interrupted("stopped by SIGTERM", 143)

    w = watch_mod.Watch(location(str(src)), location(str(dest)), None, Filters(), stylize)
    with pytest.raises(Interrupted):
        w.once(0)
    assert not (dest / ".stylebatch-watch").exists() or not list((dest / ".stylebatch-watch").iterdir())


def test_a_file_still_being_written_waits_until_two_listings_agree(tmp_path):
    src, dest, made = tmp_path / "in", tmp_path / "out", []
    src.mkdir()
    w = make_watch(src, dest, made)
    growing = src / "big.mp4"
    growing.write_bytes(b"x" * 100)
    assert w.poll() == []
    growing.write_bytes(b"x" * 200)  # still being copied
    assert w.poll() == []
    ready = w.poll()
    assert [v.input.name for v in ready] == ["big.mp4"]
    w.process(ready[0])
    assert made == ["big.mp4"] and w.poll() == []


def test_once_says_which_file_it_left_because_it_was_still_being_written(tmp_path, caplog):
    """--once left a file that grew between its two listings without a word, and said nothing new."""
    src, dest, made = tmp_path / "in", tmp_path / "out", []
    src.mkdir()
    (src / "done.mp4").write_bytes(b"video")
    growing = src / "growing.mp4"
    growing.write_bytes(b"part")
    w = make_watch(src, dest, made)
    listed = w.poll

    def poll():  # the copy goes on between the two listings
        videos = listed()
        growing.write_bytes(growing.read_bytes() + b" more")
        return videos

    w.poll = poll
    with caplog.at_level(logging.WARNING, logger="stylebatch"):
        assert w.once(0) == 0
    assert made == ["done.mp4"]
    assert [r.getMessage() for r in caplog.records if "still being written" in r.getMessage()] == [
        "1 file still being written (growing.mp4): left to the next start"]


def test_outputs_inside_the_watched_folder_never_trigger_and_the_same_folder_is_refused(tmp_path):
    src, made = tmp_path / "in", []
    src.mkdir()
    (src / "a.mp4").write_bytes(b"video")
    w = make_watch(src, src / "stylized", made)
    for _ in range(3):
        for video in w.poll():
            w.process(video)
    assert made == ["a.mp4"] and (src / "stylized" / "a.mp4").exists()
    with pytest.raises(Exception, match="is the watched"):
        make_watch(src, src, made)


def test_without_once_new_videos_are_picked_up_while_it_keeps_watching(clip, tmp_path):
    src, dest, made = tmp_path / "in", tmp_path / "out", []
    src.mkdir()
    (src / "a.mp4").write_bytes(b"one")
    w = make_watch(src, dest, made)
    thread = threading.Thread(target=w.forever, args=(0.05,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while made != ["a.mp4"] and time.monotonic() < deadline:
        time.sleep(0.05)
    (src / "b.mp4").write_bytes(b"two")
    while made != ["a.mp4", "b.mp4"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert made == ["a.mp4", "b.mp4"]
    records = [json.loads(p.read_text()) for p in (dest / ".stylebatch-watch").iterdir()]
    assert sorted(Path(r["output"]).name for r in records) == ["a.mp4", "b.mp4"]


@pytest.mark.parametrize("args, message", [
    (["--ext", "gif", "--once"], "--ext .gif"),
    (["--crf", "-1", "--once"], "--crf"),
    (["--interval", "0", "--once"], "--interval"),
    (["--style", "picasso", "--once"], "unknown style 'picasso'"),
    (["--style", "picasso"], "unknown style 'picasso'"),  # watching for good: refused at the start too
    (["--style", "missing.pth"], "not found"),
    (["--style", "broken.pth"], "broken.pth"),
    # checked against --ext's container, as `run -o x.webm` checks them (not a hard-coded out.mp4)
    (["--ext", "webm", "--codec", "h264", "--once"], "--codec h264 cannot go into .webm"),
    (["--ext", "avi", "--preset", "veryfast", "--once"], "takes no --preset"),
    (["--crf", "99", "--once"], "bad --crf 99"),  # no --ext: fits no container a video could keep
    # no --ext: fits some containers an upload may keep, and each upload of the others failed in turn
    (["--crf", "60"], "do not fit .mp4, .mov, .m4v, .mkv, .avi: give --ext webm"),
    (["--codec", "mjpeg", "--once"], "--codec mjpeg cannot go into .mp4 (use h264, h264_nvenc, hevc, hevc_nvenc, vp9); "
                                     "without --ext each output keeps its video's container"),
    (["--preset", "slow", "--once"], "do not fit .webm, .avi: give --ext mp4 (they fit .mp4, .mov, .m4v, .mkv)"),
])
def test_bad_watch_flags_are_one_line_errors_before_anything_is_made(tmp_path, args, message):
    """A style every video would fail with was found only video by video: the watch ran on, skipping
    each upload with a warning (and --once failed only after trying them all), and left DEST and an
    empty subfolder per video. Like `run`, it is refused at the start, before DEST is made."""
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "sub" / "a.mp4").write_bytes(b"\x00" * 2000)  # never reached
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    result = stylebatch("watch", tmp_path / "in", "-o", tmp_path / "out", *args, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and len(error_lines(result)) == 1 and message in error_lines(result)[0]
    assert "Traceback" not in result.stderr and "started" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("upload, args, output", [
    ("a.mp4", ["--ext", "webm", "--crf", "60"], "a.webm"),
    ("a.mkv", ["--ext", "mkv", "--codec", "mjpeg"], "a.mkv"),
    ("a.mkv", [], "a.mkv"),  # without --ext an upload keeps its container
])
def test_watch_flags_are_checked_against_the_outputs_container(clip, tmp_path, upload, args, output):
    """The run flags were checked against a hard-coded out.mp4: `--ext webm --crf 60` (libvpx-vp9 takes 0
    to 63) was refused as libx264's, though `run clip.mp4 -o x.webm --crf 60` works; --codec mjpeg goes
    into --ext mkv; and without --ext an .mkv upload keeps its container."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(clip(upload, frames=3), src / upload)
    result = stylebatch("watch", src, "-o", tmp_path / "out", *FLAGS, *args, timeout=300)
    assert result.returncode == 0, result.stderr
    assert outputs(tmp_path / "out") == [output]


@pytest.mark.parametrize("dest, message", [
    ("a_file.mp4", "the output folder a_file.mp4 is a file: give a folder"),
    ("a_file.mp4/out", "cannot make the output folder a_file.mp4/out"),
    ("read_only/out", "permission denied: cannot make the output folder"),
])
@pytest.mark.parametrize("once", [True, False])
def test_a_dest_that_cannot_be_made_is_a_one_line_error(tmp_path, dest, message, once):
    """Each was a traceback (FileExistsError, NotADirectoryError, PermissionError from DEST's mkdir)
    and exit code 1; a read-only DEST itself was one line already."""
    (tmp_path / "in").mkdir()
    (tmp_path / "a_file.mp4").write_bytes(b"not a folder")
    (tmp_path / "read_only").mkdir(mode=0o500)
    if dest.startswith("read_only") and os.geteuid() == 0:  # root writes anywhere but where the kernel says no
        if not Path("/sys/kernel").is_dir():
            pytest.skip("root can write anywhere, and there is no /sys/kernel here")
        dest = "/sys/kernel/stylebatch-test/out"
    result = stylebatch("watch", "in", "-o", dest, *(["--once"] if once else []), timeout=120, cwd=tmp_path)
    assert "Traceback" not in result.stderr and result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1 and message in error_lines(result)[0]
    assert (tmp_path / "a_file.mp4").read_bytes() == b"not a folder"


def test_a_source_subfolder_named_probe_does_not_stop_the_watch_from_starting_again(tmp_path):
    """The watch proved DEST writable with DEST/probe, and refused to start once a source subfolder
    of that name had been mirrored there ("DEST/probe is a folder, not a file")."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out" / "probe").mkdir(parents=True)
    result = stylebatch("watch", "in", "-o", "out", "--once", timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and error_lines(result) == [], result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == [".stylebatch-watch", "probe"]  # (its lock file)


def test_a_file_where_a_videos_subfolder_goes_fails_that_video_only(tmp_path):
    """A file in DEST named as a video's subfolder: its mkdir raised out of the watch (a traceback, the
    other videos never done); now that video fails with one line and the others are stylized."""
    src, dest = tmp_path / "in", tmp_path / "out"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "sub" / "deeper" / "a.mp4").write_bytes(b"x")
    (src / "b.mp4").write_bytes(b"y")
    dest.mkdir()
    (dest / "sub").write_bytes(b"someone's file")

    def stylize(input_uri: str, output_uri: str) -> None:
        Path(output_uri).write_bytes(Path(input_uri).read_bytes())

    watch = watch_mod.Watch(location(str(src)), location(str(dest)), None, Filters(), stylize)
    with pytest.raises(watch_mod.StylebatchError, match=r"1 of 2 video.*cannot make the folder .*sub/deeper"):
        watch.once(0.01)
    assert (dest / "b.mp4").read_bytes() == b"y" and (dest / "sub").read_bytes() == b"someone's file"


@pytest.mark.parametrize("name, ext", [
    ("a" * 252 + ".ts", None),  # its output a...a.mp4: one character more than a file name may have
    ("a" * 251 + ".mp4", ".webm"),
    ("a" * 251 + ".mp4", None),  # (a name that fits: stylized like the others)
])
def test_an_upload_whose_output_name_dest_cannot_hold_fails_that_video_only(tmp_path, name, ext):
    """A video whose output name is too long for DEST's file system (an upload may name it so): the
    look at its output raised out of the watch, which stopped (`--once` before the other videos,
    the endless watch for good) until the upload was renamed."""
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / name).write_bytes(b"x")
    (src / "b.mp4").write_bytes(b"y")

    def stylize(input_uri: str, output_uri: str) -> None:
        Path(output_uri).write_bytes(Path(input_uri).read_bytes())

    watch = watch_mod.Watch(location(str(src)), location(str(dest)), ext, Filters(), stylize)
    out_name = name.rsplit(".", 1)[0] + (ext or ".mp4")
    if len(out_name) > 255:
        with pytest.raises(watch_mod.StylebatchError, match=r"^1 of 2 videos failed .*File name too long"):
            watch.once(0.01)
    else:
        assert watch.once(0.01) == 0 and (dest / out_name).read_bytes() == b"x"
    assert (dest / f"b{ext or '.mp4'}").read_bytes() == b"y"


def test_a_failed_video_in_a_subfolder_leaves_no_empty_folder(tmp_path):
    """A video that fails made its subfolder in DEST and left it there, empty; a folder another
    video's output is in stays."""
    src, dest = tmp_path / "in", tmp_path / "out"
    (src / "deep" / "er").mkdir(parents=True)
    (src / "deep" / "er" / "broken.mp4").write_bytes(b"x")
    (src / "deep" / "ok.mp4").write_bytes(b"y")

    def stylize(input_uri: str, output_uri: str) -> None:
        if input_uri.endswith("broken.mp4"):
            raise watch_mod.StylebatchError("not a video")
        Path(output_uri).write_bytes(Path(input_uri).read_bytes())

    watch = watch_mod.Watch(location(str(src)), location(str(dest)), None, Filters(), stylize)
    with pytest.raises(watch_mod.StylebatchError, match="1 of 2 video"):
        watch.once(0.01)
    assert outputs(dest) == ["deep/ok.mp4"]
    assert not (dest / "deep" / "er").exists() and (dest / "deep").is_dir()


def test_watching_a_file_is_refused(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    result = stylebatch("watch", tmp_path / "a.mp4", "-o", tmp_path / "out", "--once")
    assert result.returncode == 2 and "is not a folder" in error_lines(result)[0]


def test_links_that_lead_nowhere_or_round_in_a_loop_are_skipped_and_the_rest_stylized(tmp_path):
    """A symbolic link loop named like a video stopped the watch with a traceback (OSError: Too many
    levels of symbolic links) and exit code 1, before any video was done."""
    src, dest, made = tmp_path / "in", tmp_path / "out", []
    (src / "sub").mkdir(parents=True)
    (src / "loop a.mp4").symlink_to("loop b.mp4")
    (src / "loop b.mp4").symlink_to("loop a.mp4")
    (src / "dangling.mp4").symlink_to("nowhere.mp4")
    (src / "sub" / "up").symlink_to("..")  # a folder loop: not walked into
    (src / "clip é.mp4").write_bytes(b"video")
    assert make_watch(src, dest, made).once(0) == 0
    assert made == ["clip é.mp4"] and outputs(dest) == ["clip é.mp4"]


@pytest.mark.parametrize("change", ["rewritten", "deleted"])
def test_a_file_that_changes_after_the_listings_agreed_is_not_stylized_or_recorded_under_its_old_version(
        tmp_path, change):
    """A copy that paused longer than the interval looked finished; when it went on before the video's
    turn came, the watch stylized the whole file, recorded it as the half it had listed, and stylized
    it again on the next listing. A file deleted in between failed (--once: exit code 2)."""
    src, dest, made = tmp_path / "in", tmp_path / "out", []
    src.mkdir()
    video = src / "a.mp4"
    video.write_bytes(b"half")

    def stylize(input_uri: str, output_uri: str) -> None:
        if not Path(input_uri).exists():
            raise watch_mod.StylebatchError(f"input not found: {input_uri}")
        made.append(Path(input_uri).read_bytes())
        Path(output_uri).write_bytes(Path(input_uri).read_bytes())

    w = watch_mod.Watch(location(str(src)), location(str(dest)), None, Filters(), stylize)
    w.poll()
    (ready,) = w.poll()  # two listings agree on "half"
    if change == "deleted":
        video.unlink()
    else:
        video.write_bytes(b"half and the rest")
    w.process(ready)
    assert made == [] and not w.failed and not list((dest / ".stylebatch-watch").glob("*"))
    if change == "rewritten":
        w.poll()
        for again in w.poll():
            w.process(again)
        assert made == [b"half and the rest"] and len(list((dest / ".stylebatch-watch").glob("*.json"))) == 1
        assert w.poll() == []


# --- a file in DEST the watch did not write ---

def test_a_users_file_at_a_videos_output_name_is_never_replaced_and_that_video_is_skipped_with_one_warning(
        clip, tmp_path):
    """A file of the user's in DEST at a video's output name was replaced without a word (exit code 0):
    the watch runs unattended over a whole folder. Now that video is skipped with one warning naming
    the file and what to do, the others are stylized, --once exits 2 with one error line, and once the
    file is moved away the next start stylizes it."""
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    dest.mkdir()
    shutil.copy(clip("a.mp4", frames=3), src / "a.mp4")
    shutil.copy(clip("b.mp4", frames=3), src / "b.mp4")
    (dest / "a.mp4").write_bytes(b"my own film")

    first = stylebatch("watch", src, "-o", dest, *FLAGS)
    assert first.returncode == 2 and "Traceback" not in first.stderr, first.stderr
    warnings = [line for line in first.stderr.splitlines() if line.startswith("stylebatch: warning:")]
    assert warnings == [f"stylebatch: warning: skipped {src / 'a.mp4'}: {dest / 'a.mp4'} is already there and "
                        "stylebatch watch did not write it (or it was changed since): it is left as it is; "
                        "move it away, or watch into another DEST"], first.stderr
    [error] = error_lines(first)
    assert "1 of 2 videos skipped" in error and str(dest / "a.mp4") in error
    assert (dest / "a.mp4").read_bytes() == b"my own film" and count_frames(dest / "b.mp4") == 3
    assert outputs(dest) == ["a.mp4", "b.mp4"]

    (dest / "a.mp4").rename(tmp_path / "mine.mp4")
    second = stylebatch("watch", src, "-o", dest, *FLAGS)
    assert second.returncode == 0 and "warning" not in second.stderr, second.stderr
    assert [line.split(" -> ")[0] for line in started(second)] == [f"stylebatch: started {src / 'a.mp4'}"]
    assert count_frames(dest / "a.mp4") == 3 and (tmp_path / "mine.mp4").read_bytes() == b"my own film"


def test_two_videos_of_the_same_output_name_never_replace_each_others_output(tmp_path):
    """clip.flv and clip.mp4 both make clip.mp4: the second replaced the first's stylized video and
    both were recorded as done, the first's lost for good. Now the second is skipped, said, and left to
    the next start (where it is skipped again until one of them is renamed), and --once says so."""
    src, dest, made = tmp_path / "in", tmp_path / "out", []
    src.mkdir()
    (src / "clip.flv").write_bytes(b"the flv")  # .flv is no output container: made as .mp4
    (src / "clip.mp4").write_bytes(b"the mp4")
    with pytest.raises(watch_mod.StylebatchError, match=r"1 of 2 videos skipped .*clip.mp4 is the stylized "
                                                        r".*clip\.(flv|mp4), another video of the same name") as said:
        make_watch(src, dest, made).once(0)
    assert len(made) == 1 and (dest / "clip.mp4").read_bytes() == (src / made[0]).read_bytes()
    # named by its input, and what the next start does said as it is: not "tried again", as a failure is
    skipped = next(n for n in ("clip.flv", "clip.mp4") if n != made[0])
    assert f"skipped ({src / skipped}: " in str(said.value) and "rename one of them" in str(said.value)
    assert "tried again" not in str(said.value) and "skipped again on every start until then" in str(said.value)
    assert len(list((dest / ".stylebatch-watch").glob("*.json"))) == 1
    with pytest.raises(watch_mod.StylebatchError, match="1 of 1 video skipped"):  # not done: said again
        make_watch(src, dest, made).once(0)
    assert len(made) == 1


def test_a_watched_folder_inside_dest_never_takes_its_outputs_for_videos(tmp_path):
    """SOURCE out/in inside DEST out: in/x.mp4 of SOURCE is stylized to out/in/x.mp4, inside SOURCE,
    and the next look stylized that output again as a new video (and so on, one folder up each time)."""
    dest, made = tmp_path / "out", []
    src = dest / "in"
    (src / "in").mkdir(parents=True)
    (src / "in" / "x.mp4").write_bytes(b"video")
    assert make_watch(src, dest, made).once(0) == 0 and (src / "x.mp4").exists()
    assert make_watch(src, dest, made).once(0) == 0 and made == ["x.mp4"]


def test_a_video_another_watch_finished_meanwhile_is_not_stylized_again(tmp_path):
    """Two watches of the same folders: each listed the video, and both stylized it."""
    src, dest, made = tmp_path / "in", tmp_path / "out", []
    src.mkdir()
    (src / "a.mp4").write_bytes(b"video")
    first, second = make_watch(src, dest, made), make_watch(src, dest, made)
    first.poll(), second.poll()
    (listed,) = second.poll()
    for video in first.poll():
        first.process(video)
    second.process(listed)
    assert made == ["a.mp4"]


def test_the_lines_a_watch_prints_name_the_videos_places_never_its_partial_folder(clip, tmp_path):
    """run's own "wrote DEST/.stylebatch-watch/partial/a.mp4" named a file gone a moment later."""
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(clip("a.mp4", frames=3), src / "a.mp4")
    result = stylebatch("watch", src, "-o", dest, *FLAGS)
    assert result.returncode == 0, result.stderr
    assert "partial" not in result.stderr
    assert f"stylebatch: finished {src / 'a.mp4'} -> {dest / 'a.mp4'} (" in result.stderr


def test_a_second_watch_into_the_same_folder_is_refused_as_transient_while_the_first_runs(clip, tmp_path):
    """Two at once removed the shared partial/ folder under each other's running videos."""
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    first = subprocess.Popen([sys.executable, "-m", "stylebatch", "watch", src, "-o", dest, *FAST_STYLE,
                              "--interval", "0.2"], stderr=subprocess.PIPE, text=True)
    try:
        assert "watching" in first.stderr.readline()
        shutil.copy(clip("a.mp4", frames=3), src / "a.mp4")
        second = stylebatch("watch", src, "-o", dest, *FLAGS)
        assert second.returncode == EXIT_TRANSIENT, second.stderr
        assert error_lines(second) == [f"stylebatch: error: another stylebatch watch (pid {first.pid} on "
                                       f"{socket.gethostname()}) is writing into {dest}: one watch at a time "
                                       "into a folder; start this one when that one has stopped"]
        assert not started(second)
    finally:
        first.terminate()
        first.wait(timeout=60)
    third = stylebatch("watch", src, "-o", dest, *FLAGS)  # the first has stopped: its lock went with it
    assert third.returncode == 0, third.stderr
    assert outputs(dest) == ["a.mp4"]


def test_the_watchs_own_output_is_replaced_when_its_input_changes_but_not_once_someone_changed_it(tmp_path):
    """What the watch wrote (its record names the output, unchanged since) is replaced by the new
    version of its input, as before; the same file changed by someone after the watch wrote it is not.
    A record from before the output's ETag was kept counts while the file is no newer than it."""
    src, dest, made = tmp_path / "in", tmp_path / "out", []
    src.mkdir()
    video = src / "a.mp4"
    video.write_bytes(b"one")
    assert make_watch(src, dest, made).once(0) == 0 and (dest / "a.mp4").read_bytes() == b"one"

    video.write_bytes(b"two, longer")  # a new version of the input
    assert make_watch(src, dest, made).once(0) == 0 and (dest / "a.mp4").read_bytes() == b"two, longer"

    (dest / "a.mp4").write_bytes(b"edited by hand")
    video.write_bytes(b"three, longer still")
    with pytest.raises(watch_mod.StylebatchError, match=r"1 of 1 video skipped .*out/a.mp4 is already there"):
        make_watch(src, dest, made).once(0)
    assert (dest / "a.mp4").read_bytes() == b"edited by hand" and made == ["a.mp4", "a.mp4"]

    # an older watch's records: no output ETag, only when the video was finished
    for record_file in (dest / ".stylebatch-watch").glob("*.json"):
        record = json.loads(record_file.read_text())
        for field in ("name", "output_size", "output_etag"):
            record.pop(field)
        record["finished"] = "2001-01-01T00:00:00+00:00"  # before the hand edit: not the watch's file
        record_file.write_text(json.dumps(record))
    with pytest.raises(watch_mod.StylebatchError, match="skipped"):
        make_watch(src, dest, made).once(0)
    past = time.time() - 3600
    os.utime(dest / "a.mp4", (past, past))  # no newer than the record: the watch's file
    for record_file in (dest / ".stylebatch-watch").glob("*.json"):
        record = json.loads(record_file.read_text())
        record["finished"] = "2030-01-01T00:00:00+00:00"
        record_file.write_text(json.dumps(record))
    assert make_watch(src, dest, made).once(0) == 0 and (dest / "a.mp4").read_bytes() == b"three, longer still"


def test_a_file_that_appears_at_the_output_name_while_the_video_is_stylized_is_kept(tmp_path):
    """The check before stylizing leaves a window as long as the video takes: a file copied into DEST
    under the output's name meanwhile was replaced when the output was published. Now the video is
    stylized beside DEST's records and put in place only where no file is (a hard link): the file
    stays, the video is skipped with the same warning and nothing is recorded or left behind."""
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.mp4").write_bytes(b"video")

    def stylize(input_uri: str, output_uri: str) -> None:
        (dest / "a.mp4").write_bytes(b"copied in meanwhile")
        Path(output_uri).write_bytes(b"stylized")

    w = watch_mod.Watch(location(str(src)), location(str(dest)), None, Filters(), stylize)
    with pytest.raises(watch_mod.StylebatchError, match="appeared while it was stylized"):
        w.once(0)
    assert (dest / "a.mp4").read_bytes() == b"copied in meanwhile"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [".stylebatch-watch", "a.mp4"]
