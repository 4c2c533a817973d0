"""stylebatch.trigger: which uploads start a job, when, under which name, and where the output goes.
Pure decisions shared by the VideoWatch operator and `stylebatch watch`: no storage, no server."""

from __future__ import annotations

import base64
import json
import posixpath
import re

import pytest

from stylebatch import trigger
from stylebatch.contract import OUTPUT_TAG
from stylebatch.trigger import Filters, Stability

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def grid_event(blob: str = "incoming/cat.mp4", api: str = "PutBlockList", etag: str = "0x8DC0FFEE",
               size: int = 1234, event_type: str = "Microsoft.Storage.BlobCreated", container: str = "videos") -> dict:
    """A BlobCreated event in the Event Grid schema, as the storage account publishes it."""
    return {
        "topic": "/subscriptions/0000/resourceGroups/media/providers/Microsoft.Storage/storageAccounts/mediaacct",
        "subject": f"/blobServices/default/containers/{container}/blobs/{blob}",
        "eventType": event_type, "eventTime": "2026-05-01T12:00:00.123Z", "id": "831e1650", "dataVersion": "",
        "metadataVersion": "1",
        "data": {"api": api, "eTag": etag, "contentType": "video/mp4", "contentLength": size,
                 "blobType": "BlockBlob", "url": f"https://mediaacct.blob.core.windows.net/{container}/{blob}",
                 "sequencer": "0000000000000442000000000002896"},
    }


@pytest.mark.parametrize("name, size, metadata, filters, counts", [
    ("cat.mp4", 10, None, Filters(), True),
    ("holiday/2026/CAT.MOV", 10, {}, Filters(), True),
    ("notes.txt", 10, None, Filters(), False),
    ("cat.mp4", 0, None, Filters(), False),  # an empty blob created before its commit
    ("cat.mp4", 999, None, Filters.of(min_size=1000), False),
    ("cat.mp4", 1000, None, Filters.of(min_size=1000), True),
    ("cat.webm", 10, None, Filters.of(["mp4", ".MOV"]), False),
    ("cat.mov", 10, None, Filters.of(["mp4", ".MOV"]), True),
    (".cat.mp4.partial", 10, None, Filters(), False),
    ("holiday/.stylebatch-work/ns/job/parts/000.mkv", 10, None, Filters(), False),
    ("cat-lavender-gold.mp4", 10, {OUTPUT_TAG: "cat-0123456789"}, Filters(), False),
    ("cat-lavender-gold.mp4", 10, {"StyleBatchJob": "cat-0123456789"}, Filters(), False),  # keys are case-insensitive
    ("cat.mp4", 10, {"owner": "media-team"}, Filters(), True),
    # its URI would name another blob (holiday/cat.mp4): a job for that one, writing its output, was made
    ("holiday//cat.mp4", 10, None, Filters(), False),
    ("/cat.mp4", 10, None, Filters(), False),  # (incoming//cat.mp4 below the prefix incoming)
])
def test_a_blob_counts_only_when_it_is_a_whole_video_that_is_not_an_output(name, size, metadata, filters, counts):
    assert (trigger.skip_reason(name, size, metadata, filters) is None) == counts


@pytest.mark.parametrize("tier, why", [
    ("Archive", trigger.ARCHIVED),  # unreadable until rehydrated: its job failed at once
    ("archive", trigger.ARCHIVED),
    ("Hot", None), ("Cool", None), ("Cold", None), ("", None),
])
def test_a_video_in_the_archive_tier_is_skipped_and_its_uploader_told(tier, why):
    assert trigger.skip_reason("cat.mp4", 10, None, Filters(), tier) == why
    assert why is None or why in trigger.TOLD


@pytest.mark.parametrize("copy_status, why", [
    ("pending", trigger.COPY_PENDING), ("success", None), ("failed", None), ("aborted", None), ("", None),
])
def test_a_video_still_being_copied_in_is_not_ready_yet(copy_status, why):
    assert trigger.skip_reason("cat.mp4", 10, None, Filters(), copy_status=copy_status) == why
    assert why not in trigger.TOLD  # nothing its uploader must do: it counts once the copy ends


@pytest.mark.parametrize("name, why", [
    ("holiday//cat.mp4", trigger.EMPTY_FOLDER),
    ("q?x=1.mp4", trigger.QUESTION_MARK),  # its az:// URI's query: refused as a SAS, a job failing every time
    ("holiday?/cat.mp4", trigger.QUESTION_MARK),
    ("what?.txt", "not a video extension"),  # not a video: nothing to tell its uploader
    ("cat#1.mp4", None),  # '#' is a character of an az:// blob's name
])
def test_a_name_no_az_uri_can_carry_is_skipped_as_unaddressable(name, why):
    assert trigger.skip_reason(name, 10, None, Filters()) == why
    assert (why in trigger.UNADDRESSABLE) == ("?" in name and name.endswith(".mp4") or "//" in name)


@pytest.mark.parametrize("encode", [
    lambda e: base64.b64encode(json.dumps(e).encode()).decode(),  # how Event Grid writes to a storage queue
    lambda e: json.dumps(e),
    lambda e: json.dumps([e]),
])
def test_an_event_grid_message_is_read_base64_or_plain(encode):
    event = trigger.parse_event(encode(grid_event("incoming/a b/cat.mp4")))
    assert (event.account, event.container, event.blob) == ("mediaacct", "videos", "incoming/a b/cat.mp4")
    assert (event.api, event.etag, event.size, event.time) == ("PutBlockList", "0x8DC0FFEE", 1234,
                                                                "2026-05-01T12:00:00.123Z")


def test_a_cloudevents_message_is_read_too():
    e = grid_event()
    cloud = {"specversion": "1.0", "type": e["eventType"], "source": e["topic"], "subject": e["subject"],
             "time": e["eventTime"], "id": "1", "data": e["data"]}
    event = trigger.parse_event(base64.b64encode(json.dumps(cloud).encode()))
    assert (event.account, event.blob, trigger.event_skip_reason(event)) == ("mediaacct", "incoming/cat.mp4", None)


@pytest.mark.parametrize("message", [
    "hello", base64.b64encode(b"not json").decode(), json.dumps({"eventType": "x"}), json.dumps([1, 2]),
    json.dumps({**grid_event(), "subject": "/queueServices/default/queues/q"}),
    "[" * 100_000 + "]" * 100_000,  # nested past Python's recursion limit: was a RecursionError
])
def test_a_message_that_is_not_a_blob_event_is_bad_for_good(message):
    with pytest.raises(trigger.BadEvent):
        trigger.parse_event(message)


@pytest.mark.parametrize("data, size, account", [
    ({"contentLength": float("inf")}, 0, "mediaacct"),  # 1e400 in the JSON: was an OverflowError
    ({"url": "http://[broken"}, 1234, ""),  # no topic, a URL that is none: was a ValueError
])
def test_an_event_with_odd_fields_is_read_as_far_as_it_goes(data, size, account):
    e = grid_event()
    e["data"] = {**e["data"], **data}
    if "url" in data:
        del e["topic"]
    event = trigger.parse_event(json.dumps(e).replace("Infinity", "1e400"))
    assert (event.size, event.account, event.blob) == (size, account, "incoming/cat.mp4")


@pytest.mark.parametrize("api, event_type, counts", [
    ("PutBlob", "Microsoft.Storage.BlobCreated", True),
    ("PutBlockList", "Microsoft.Storage.BlobCreated", True),
    ("CopyBlob", "Microsoft.Storage.BlobCreated", True),
    ("FlushWithClose", "Microsoft.Storage.BlobCreated", True),
    # an SFTP upload (hierarchical namespace): the empty blob its open makes, then its commit at close
    ("SftpCreate", "Microsoft.Storage.BlobCreated", False),
    ("SftpCommit", "Microsoft.Storage.BlobCreated", True),
    ("SftpWrite", "Microsoft.Storage.BlobCreated", False),  # a resumable upload's part
    ("PutBlock", "Microsoft.Storage.BlobCreated", False),
    ("FlushFile", "Microsoft.Storage.BlobCreated", False),
    ("AppendBlock", "Microsoft.Storage.BlobCreated", False),
    ("DeleteBlob", "Microsoft.Storage.BlobDeleted", False),
    ("PutBlob", "Microsoft.Storage.BlobTierChanged", False),
    # an upload renamed into place from a temporary name (Data Lake, SFTP): no BlobCreated for its name
    ("RenameFile", "Microsoft.Storage.BlobRenamed", True),
    ("SftpRename", "Microsoft.Storage.BlobRenamed", True),
    ("RenameDirectory", "Microsoft.Storage.DirectoryRenamed", False),
    ("PutBlob", "Microsoft.Storage.BlobRenamed", False),
])
def test_only_events_that_commit_a_blob_count(api, event_type, counts):
    event = trigger.parse_event(json.dumps(grid_event(api=api, event_type=event_type)))
    assert (trigger.event_skip_reason(event) is None) == counts


@pytest.mark.parametrize("blob, prefix, rel", [
    ("incoming/cat.mp4", "incoming", "cat.mp4"),
    ("incoming/a/cat.mp4", "incoming/", "a/cat.mp4"),
    ("incoming-old/cat.mp4", "incoming", None),
    ("cat.mp4", "incoming", None),
    ("cat.mp4", "", "cat.mp4"),
])
def test_relative_names_stay_inside_the_watched_prefix(blob, prefix, rel):
    assert trigger.relative(blob, prefix) == rel


def test_a_blob_is_ready_once_two_polls_in_a_row_find_the_same_size_and_etag():
    s = Stability()
    assert s.observe({"a.mp4": (0, "e1"), "b.mp4": (10, "e1")}) == []
    assert s.observe({"a.mp4": (500, "e2"), "b.mp4": (10, "e1")}) == ["b.mp4"]  # a is still being written
    assert s.observe({"a.mp4": (900, "e3"), "b.mp4": (10, "e1")}) == ["b.mp4"]
    assert s.observe({"a.mp4": (900, "e3")}) == ["a.mp4"]
    assert s.observe({"b.mp4": (10, "e1")}) == []  # b went away and came back: two more polls
    # a page of a listing that is not finished forgets nothing
    assert s.observe({"c.mp4": (1, "x")}, complete=False) == []
    assert s.observe({"b.mp4": (10, "e1"), "c.mp4": (1, "x")}) == ["b.mp4", "c.mp4"]
    s.keep_only(["c.mp4"])  # a paged listing ended without b: b starts over
    assert s.observe({"b.mp4": (10, "e1"), "c.mp4": (1, "x")}, complete=False) == ["c.mp4"]


@pytest.mark.parametrize("blob", [
    "incoming/cat.mp4", "CAT.MP4", "2026/05/01/0001.mov", "---.mp4", "émile à la plage.mp4",
    "a" * 300 + ".mp4", "x.mp4", "The Quick Brown Fox Jumps Over The Lazy Dog Again.mkv", ".mp4",
])
def test_job_names_are_short_dns_labels_with_the_video_s_name_first(blob):
    name = trigger.job_name("mediaacct", "videos", blob, '"0x8DC0FFEE"')
    assert DNS_1035.match(name) and len(name) <= trigger.JOB_NAME_LENGTH, name
    assert name == trigger.job_name("mediaacct", "videos", blob, "0x8DC0FFEE")  # quotes or not: the same ETag
    assert len(f"{name}-postprocess-10") <= 63 and len(f"{name}-stylize-10-worker-100") <= 63


def test_job_names_change_with_each_part_of_the_identity_and_nothing_else():
    base = ("mediaacct", "videos", "incoming/cat.mp4", "0x1")
    name = trigger.job_name(*base)
    assert name.startswith("cat-") and name == trigger.job_name(*base)
    others = {trigger.job_name("otheracct", *base[1:]), trigger.job_name(base[0], "clips", *base[2:]),
              trigger.job_name(*base[:2], "incoming/dog/cat.mp4", base[3]), trigger.job_name(*base[:3], "0x2"),
              trigger.job_name(*base, salt="media/watch-b")}
    assert len(others) == 5 and name not in others


@pytest.mark.parametrize("pattern, rel, style, expected", [
    ("az://stylized/{path}-{style}.mp4", "2026/cat.mov", "lavender-gold", "az://stylized/2026/cat-lavender-gold.mp4"),
    ("az://stylized/{dir}{name}.{ext}", "2026/cat.mov", "", "az://stylized/2026/cat.mov"),
    ("az://stylized/{dir}{name}.{ext}", "cat.mkv", "", "az://stylized/cat.mkv"),
    ("az://{container}-out/{name}.webm", "a/b/cat.mp4", "", "az://videos-out/cat.webm"),
    ("az://stylized/{path}-{style}.mp4", "cat.mp4", "az://styles/mosaic.pth", "az://stylized/cat-mosaic.mp4"),
    ("az://stylized/{path}-{style}.mp4", "cat.mp4", "candy:0.5,mosaic:0.5", "az://stylized/cat-candy-0.5-mosaic-0.5.mp4"),
    # {ext} of a container stylebatch does not write: mp4 (a job for cat.flv.flv failed at once)
    ("az://stylized/{dir}{name}.{ext}", "2026/cat.flv", "", "az://stylized/2026/cat.mp4"),
    ("az://stylized/{dir}{name}.{ext}", "cat.MOV", "", "az://stylized/cat.mov"),
    # in an https:// pattern the name is a URL's path: a name that looks like a SAS token stays a name
    ("https://acct.blob.core.windows.net/stylized/{path}.mp4", "x?sv=2024&sr=c&sig=AAAA", "",
     "https://acct.blob.core.windows.net/stylized/x%3Fsv%3D2024%26sr%3Dc%26sig%3DAAAA.mp4"),
    ("https://acct.blob.core.windows.net/stylized/{dir}{name}.mp4", "a b/c%20d#1.mp4", "",
     "https://acct.blob.core.windows.net/stylized/a%20b/c%2520d%231.mp4"),
])
def test_output_names_follow_the_pattern(pattern, rel, style, expected):
    from stylebatch.storage import location

    assert trigger.pattern_problems(pattern) == []
    output = trigger.output_name(pattern, rel, style, container="videos")
    assert output == expected
    if output.startswith("https://"):  # the blob it names has the video's own name; no SAS taken from it
        loc = location(output)
        assert (loc.sas, loc.blob) == (None, posixpath.splitext(rel)[0] + ".mp4")


@pytest.mark.parametrize("pattern, problem", [
    ("az://stylized/{style}.mp4", "needs {path} or {name}"),
    ("az://stylized/{file}.mp4", "unknown placeholder {file}"),
    ("az://stylized/{path.mp4", "malformed"),
])
def test_unusable_output_patterns_are_explained(pattern, problem):
    assert any(problem in p for p in trigger.pattern_problems(pattern))


@pytest.mark.parametrize("source, pattern, inside", [
    ("az://videos/incoming", "az://stylized/{path}.mp4", False),
    ("az://videos/incoming", "az://videos/stylized/{path}.mp4", False),
    ("az://videos/incoming/", "az://videos/incoming-stylized/{path}.mp4", False),
    ("az://videos/incoming", "az://videos/incoming/stylized/{path}.mp4", True),
    ("az://videos/incoming", "az://videos/{path}-styled.mp4", True),  # {path} may start with incoming/
    ("az://videos", "az://videos/out/{path}.mp4", True),
    ("az://videos/in", "az://videos/in{path}.mp4", True),
    ("https://a.blob.core.windows.net/videos/in?sv=1&sig=x", "https://a.blob.core.windows.net/videos/in/o/{name}.mp4",
     True),
])
def test_an_output_pattern_that_could_write_into_the_watched_prefix_is_found(source, pattern, inside):
    assert trigger.overlaps(source, pattern) == inside
