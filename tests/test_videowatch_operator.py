"""VideoWatch end to end: the real operator (kopf, as `stylebatch operator` runs it) against kmock's
Kubernetes emulator and Azurite's blob and queue services.

Event Grid cannot run here, so the tests play it: they upload blobs to Azurite, then put the
BlobCreated events Event Grid would publish on the storage queue, base64-encoded as Event Grid does
for storage queues (duplicates, the create of an empty blob before its commit, events for outputs,
for other prefixes and for text files, and messages that are no events at all)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import aiohttp
import kmock
import pytest
from azure.storage.blob import BlobBlock

import test_operator_kopf as k
from stylebatch.contract import OUTPUT_TAG
from stylebatch_operator.settings import Settings
from stylebatch_operator.videowatch_crd import openapi_schema
from stylebatch_operator.crd import apply_defaults

pytestmark = [pytest.mark.timeout(120), pytest.mark.azurite]

NS = k.NS
WATCHES = f"/apis/stylebatch.io/v1alpha1/namespaces/{NS}/videowatches"
SETTINGS = Settings(interval=k.INTERVAL, jobs={"storage": {"secretName": "stylebatch-storage"}})
TEMPLATE = {"style": "lavender-gold", "workers": 1, "gpusPerWorker": 0}


@contextlib.asynccontextmanager
async def api_server() -> AsyncIterator[k.ApiServer]:
    async with k.api_server() as api:
        api.resources["stylebatch.io/v1alpha1/videowatches"] = kmock.ResourceInfo(
            kind="VideoWatch", namespaced=True, subresources={"status"},
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"})
        yield api


async def apply_watch(api: k.ApiServer, container: str, name: str = "uploads", **spec: Any) -> None:
    body = {"apiVersion": "stylebatch.io/v1alpha1", "kind": "VideoWatch", "metadata": {"name": name, "namespace": NS},
            "spec": {"source": f"az://{container}/incoming", "output": "az://stylized/{path}-{style}.mp4",
                     "template": TEMPLATE, **spec}}
    resp = await api.post(WATCHES, json=apply_defaults(body, openapi_schema()))
    assert resp.status == 200, await resp.text()


def watch_status(api: k.ApiServer, name: str = "uploads") -> dict[str, Any]:
    return api.objects["stylebatch.io/v1alpha1/videowatches", NS, name].raw.get("status") or {}


async def polls(api: k.ApiServer, n: int, name: str = "uploads") -> None:
    """Until the watch has ended `n` more listings (polls, or the queue mode's sweeps): each sets
    status.lastPollTime, in whole seconds, and they are a second or more apart. An assertion that a
    listing made nothing new proves it only once the listings were made, which a sleep alone does not
    make sure of on a slow, loaded machine."""
    for _ in range(n):
        before = watch_status(api, name).get("lastPollTime")
        await k.eventually(lambda: watch_status(api, name).get("lastPollTime") != before, timeout=20)


def jobs(api: k.ApiServer) -> dict[str, dict[str, Any]]:
    return {key[2]: obj.raw for key, obj in api.objects.items()
            if key[0].plural == "styletransferjobs" and not obj.deleted}


def inputs(api: k.ApiServer) -> list[str]:
    return sorted(j["spec"]["input"].rsplit("/", 1)[-1] for j in jobs(api).values())


def mode_spec(mode: str, queue: str, *, deliveries: int = 2, sweep: int = 0) -> dict[str, Any]:
    """A watch's spec fields for `mode`: "queue" (on `queue`, a sweep every `sweep` seconds, 0: none,
    whose listings stop after a second) or "poll" (every second)."""
    if mode == "poll":
        return {"mode": "poll", "poll": {"intervalSeconds": 1}}
    return {"mode": "queue", "sweepIntervalSeconds": sweep, **({"poll": {"maxSecondsPerPoll": 1}} if sweep else {}),
            "queue": {"name": queue, "maxDeliveries": deliveries, "visibilityTimeoutSeconds": 10}}


def skipped_said(api: k.ApiServer, name: str = "uploads") -> list[str]:
    """The watch's VideoSkipped events, their messages."""
    return [m for _, reason, m in k.events(api, name) if reason == "VideoSkipped"]


def job_posts(api: k.ApiServer) -> list[str]:
    return k.creates(api, f"/apis/stylebatch.io/v1alpha1/namespaces/{NS}/styletransferjobs")


async def set_phase(api: k.ApiServer, name: str, phase: str) -> None:
    """What the job's own reconciliation would write when it ends (re-applied until it sticks: the
    operator's reconcile of the job may be mid-flight)."""
    path = f"/apis/stylebatch.io/v1alpha1/namespaces/{NS}/styletransferjobs/{name}/status"
    for _ in range(50):
        resp = await api.patch(path, json={"status": {"phase": phase}},
                               headers={"Content-Type": "application/merge-patch+json"})
        assert resp.status == 200, await resp.text()
        await asyncio.sleep(0.3)
        if jobs(api)[name].get("status", {}).get("phase") == phase:
            return
    raise AssertionError(f"{name} did not stay {phase}")


def blob_created(container: str, blob: str, etag: str, size: int, api: str = "PutBlockList",
                 account: str = "devstoreaccount1") -> str:
    """A BlobCreated event in the Event Grid schema, as Event Grid puts it on a storage queue."""
    event = {
        "topic": f"/subscriptions/0000/resourceGroups/media/providers/Microsoft.Storage/storageAccounts/{account}",
        "subject": f"/blobServices/default/containers/{container}/blobs/{blob}",
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "id": f"evt-{blob}-{etag}", "dataVersion": "", "metadataVersion": "1",
        "data": {"api": api, "clientRequestId": "c", "requestId": "r", "eTag": etag, "contentType": "video/mp4",
                 "contentLength": size, "blobType": "BlockBlob",
                 "url": f"https://{account}.blob.core.windows.net/{container}/{blob}",
                 "sequencer": "00000000000004420000000000028963"},
    }
    return base64.b64encode(json.dumps(event).encode()).decode()


class Storage:
    """The test's side of Azurite: upload blobs, publish their events."""

    def __init__(self, azure_env: Any, queue: str) -> None:
        self.container = azure_env.container
        self.blobs = azure_env.azurite.service_client().get_container_client(self.container)
        self.queue = azure_env.azurite.queue_client(queue)
        self.poison = azure_env.azurite.queue_client(f"{queue}-poison")
        self.queue.create_queue()

    def upload(self, blob: str, data: bytes = b"\x00\x00\x00\x18ftypmp42 video bytes", **metadata: str) -> str:
        return self.blobs.get_blob_client(blob).upload_blob(data, overwrite=True, metadata=metadata or None)["etag"]

    def publish(self, blob: str, etag: str, size: int, api: str = "PutBlockList") -> None:
        self.queue.send_message(blob_created(self.container, blob, etag, size, api))

    def messages_left(self, queue: Any) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return [m.content for m in queue.peek_messages(max_messages=32)]
        except ResourceNotFoundError:  # the operator makes the poison queue when it first needs it
            return []

    def unfinished(self, queue: Any) -> int:
        """Messages still on the queue, counting those a receiver holds invisible (peek sees only visible ones)."""
        return queue.get_queue_properties().approximate_message_count


def test_queue_mode_gives_each_video_exactly_one_job_across_duplicates_restarts_and_poison(azure_env):
    store = Storage(azure_env, "uploads")
    cat = store.upload("incoming/cat.mp4")
    dog = store.upload("incoming/holiday/dog.mov")
    # an uploader that creates the blob empty, then commits its blocks: two events, one video
    empty = store.upload("incoming/late.mp4", b"")
    store.blobs.get_blob_client("incoming/late.mp4").stage_block("b1", b"late video bytes")
    late = store.blobs.get_blob_client("incoming/late.mp4").commit_block_list([BlobBlock("b1")])["etag"]
    output = store.upload("incoming/old-output.mp4", **{OUTPUT_TAG: "cat-0123456789"})  # written by a job
    text = store.upload("incoming/readme.txt")
    other = store.upload("elsewhere/fish.mp4")
    flaky = store.upload("incoming/flaky.mp4")

    # a message that already failed twice (its earlier deliveries are played here, before the
    # others arrive: each receive without a delete is a failed delivery, as when a create fails)
    store.queue.send_message(blob_created(store.container, "incoming/flaky.mp4", flaky, 36))
    for _ in range(2):
        assert len(list(store.queue.receive_messages(visibility_timeout=1))) == 1
        time.sleep(1.2)
    store.publish("incoming/cat.mp4", cat, 36)
    store.publish("incoming/cat.mp4", cat, 36)  # Event Grid delivers at least once
    store.publish("incoming/holiday/dog.mov", dog, 36, api="PutBlob")
    store.publish("incoming/late.mp4", empty, 0, api="PutBlob")
    store.publish("incoming/late.mp4", late, 16)
    store.publish("incoming/late.mp4", late, 16, api="FlushFile")  # not a commit
    store.publish("incoming/old-output.mp4", output, 36)
    store.publish("incoming/readme.txt", text, 36)
    store.publish("elsewhere/fish.mp4", other, 36)
    store.queue.send_message("this is not an event")

    async def scenario() -> None:
        port = k.free_port()
        async with api_server() as api:
            async with k.operator(api, settings=SETTINGS, liveness_port=port):
                await apply_watch(api, store.container, mode="queue",
                                  queue={"name": "uploads", "maxDeliveries": 2, "visibilityTimeoutSeconds": 10},
                                  sweepIntervalSeconds=0)
                await k.eventually(lambda: inputs(api) == ["cat.mp4", "dog.mov", "late.mp4"], timeout=20)
                # a message being handled is invisible to a peek: wait until none is left at all
                await k.eventually(lambda: store.unfinished(store.queue) == 0
                                   and len(store.messages_left(store.poison)) == 2, timeout=30)
                poisoned = sorted(store.messages_left(store.poison))
                assert "this is not an event" in poisoned
                await k.eventually(lambda: watch_status(api).get("jobs", {}).get("created") == 3)
                metrics = await scrape(port)

            by_input = {j["spec"]["input"].rsplit("/", 1)[-1]: j for j in jobs(api).values()}
            late_job = by_input["late.mp4"]
            assert late_job["metadata"]["annotations"]["stylebatch.io/source-etag"].strip('"') == late.strip('"')  # committed
            cat_job = by_input["cat.mp4"]
            assert cat_job["spec"]["input"] == f"az://{store.container}/incoming/cat.mp4"
            assert by_input["dog.mov"]["spec"]["output"] == "az://stylized/holiday/dog-lavender-gold.mp4"
            owner = cat_job["metadata"]["ownerReferences"][0]
            watch = api.objects["stylebatch.io/v1alpha1/videowatches", NS, "uploads"].raw
            assert (owner["kind"], owner["uid"], owner["controller"]) == ("VideoWatch", watch["metadata"]["uid"], True)
            assert cat_job["metadata"]["labels"]["stylebatch.io/watch"] == "uploads"
            assert cat_job["spec"]["style"] == "lavender-gold" and cat_job["spec"]["workers"] == 1
            # (kopf posts events from a queue of its own: they may come after the jobs)
            def counted(reason: str) -> int:
                return [r for _, r, _ in k.events(api, "uploads")].count(reason)
            await k.eventually(lambda: counted("JobCreated") == 3 and counted("PoisonMessage") == 2)
            watched = 'namespace="media",watch="uploads"'
            assert metrics[f'stylebatch_watch_jobs_created_total{{{watched}}}'] == 3
            assert metrics[f'stylebatch_watch_poison_messages_total{{{watched}}}'] == 2
            # cat's second event, and late.mp4's commit (its empty create's event, handled after the
            # commit, made the job for the blob as it is then)
            assert metrics[f'stylebatch_watch_duplicates_dropped_total{{{watched}}}'] == 2
            queued = 'namespace="media",source="queue",watch="uploads"'  # prometheus_client sorts labels
            assert metrics[f'stylebatch_watch_events_received_total{{{queued}}}'] == 11
            assert metrics[f'stylebatch_watch_upload_to_job_seconds_count{{{watched}}}'] == 3
            s = watch_status(api)
            assert s["videosSeen"] == 3 and s["lastMessageTime"] and s["lastError"] == ""

            # the operator is down while more events arrive: a redelivered one and a new video
            bird = store.upload("incoming/bird.mp4")
            store.publish("incoming/cat.mp4", cat, 36)
            store.publish("incoming/bird.mp4", bird, 36)
            async with k.operator(api, settings=SETTINGS):
                await k.eventually(lambda: inputs(api) == ["bird.mp4", "cat.mp4", "dog.mov", "late.mp4"], timeout=20)
                await k.eventually(lambda: store.unfinished(store.queue) == 0, timeout=30)
                await k.eventually(lambda: watch_status(api)["jobs"]["created"] == 4)
            assert sorted(job_posts(api)) == sorted(set(job_posts(api))) and len(job_posts(api)) == 4
            used = k.requests_allowed_by_rbac(api)
            assert {("stylebatch.io", "styletransferjobs", "create"), ("stylebatch.io", "videowatches/status", "patch"),
                    ("stylebatch.io", "videowatches", "watch")} <= used
    k.run(scenario)


def test_poll_mode_lists_in_pages_waits_for_stable_blobs_and_keeps_to_max_concurrent_jobs(azure_env):
    store = Storage(azure_env, "unused")
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        store.upload(f"incoming/{name}")
    store.upload("incoming/readme.txt")
    store.upload("incoming/stylized-a.mp4", **{OUTPUT_TAG: "a-0123456789"})
    store.upload("incoming/partial.mp4", b"")  # created, not committed yet

    async def scenario() -> None:
        async with api_server() as api:
            async with k.operator(api, settings=SETTINGS):
                await apply_watch(api, store.container, mode="poll", maxConcurrentJobs=2,
                                  output=f"az://{store.container}/stylized/{{path}}-{{style}}.mp4",
                                  poll={"intervalSeconds": 1, "pageSize": 2, "maxSecondsPerPoll": 1})
                await k.eventually(lambda: len(jobs(api)) == 2, timeout=20)
                await k.eventually(lambda: watch_status(api).get("waiting") == 1, timeout=20)
                await polls(api, 2)  # two more polls: still two, the third waits for a free slot
                assert len(jobs(api)) == 2
                first = sorted(jobs(api))
                await set_phase(api, first[0], "Succeeded")
                await k.eventually(lambda: inputs(api) == ["a.mp4", "b.mp4", "c.mp4"], timeout=20)

                store.upload("incoming/partial.mp4", b"now it has content")  # the commit
                await set_phase(api, first[1], "Failed")
                await k.eventually(lambda: inputs(api) == ["a.mp4", "b.mp4", "c.mp4", "partial.mp4"], timeout=20)
                await k.eventually(lambda: watch_status(api).get("jobs") == {
                    "created": 4, "running": 2, "succeeded": 1, "failed": 1}, timeout=20)
                s = watch_status(api)
                assert s["videosSeen"] == 4 and s["lastPollTime"] and s["lastError"] == ""
                await polls(api, 2)  # more polls find the same blobs: nothing new
                assert len(job_posts(api)) == 4

            # a finished job deleted (by hand, or by a TTL) leaves its tagged output behind: a restarted
            # operator, which no longer knows the job, finds the output and makes no second job
            done = first[0]
            output = jobs(api)[done]["spec"]["output"]
            assert output.startswith(f"az://{store.container}/stylized/")
            store.upload(output.split("/", 3)[3], **{OUTPUT_TAG: done})  # what its postprocess wrote
            resp = await api.delete(f"/apis/stylebatch.io/v1alpha1/namespaces/{NS}/styletransferjobs/{done}")
            assert resp.status == 200, await resp.text()
            async with k.operator(api, settings=SETTINGS):
                await k.eventually(lambda: watch_status(api).get("jobs", {}).get("running") == 2)
                await polls(api, 3)  # three polls: every blob stable again
            assert len(job_posts(api)) == 4 and done not in jobs(api) and len(jobs(api)) == 3
    k.run(scenario)


def test_only_the_watchs_own_jobs_count_against_max_concurrent_jobs(azure_env):
    """Jobs that carry the watch's label but are not its own (orphaned by a watch of the same name
    deleted with --cascade=orphan, or labelled by hand) neither hold its slots back nor show in its
    counts."""
    store = Storage(azure_env, "not-the-watchs")
    store.upload("incoming/a.mp4")

    async def scenario() -> None:
        async with api_server() as api:
            orphan = {"apiVersion": "stylebatch.io/v1alpha1", "kind": "StyleTransferJob",
                      "metadata": {"name": "left-over", "namespace": NS, "labels": {"stylebatch.io/watch": "uploads"},
                                   "ownerReferences": [{"apiVersion": "stylebatch.io/v1alpha1", "kind": "VideoWatch",
                                                        "name": "uploads", "uid": "uid-of-an-earlier-watch",
                                                        "controller": True}]},
                      "spec": {"input": "az://videos/x.mp4", "output": "az://videos/x-out.mp4"}}
            by_hand = {**orphan, "metadata": {"name": "by-hand", "namespace": NS,
                                              "labels": {"stylebatch.io/watch": "uploads"}}}
            for body in (orphan, by_hand):  # both running: their children never finish here
                resp = await api.post(f"/apis/stylebatch.io/v1alpha1/namespaces/{NS}/styletransferjobs", json=body)
                assert resp.status == 200, await resp.text()
            async with k.operator(api, settings=SETTINGS):
                await k.eventually(lambda: all(j.get("status", {}).get("phase") == "Preprocessing"
                                               for j in jobs(api).values()))
                await apply_watch(api, store.container, mode="poll", maxConcurrentJobs=1,
                                  poll={"intervalSeconds": 1, "pageSize": 10, "maxSecondsPerPoll": 1})
                await k.eventually(lambda: inputs(api) == ["a.mp4", "x.mp4", "x.mp4"], timeout=20)
                await k.eventually(lambda: watch_status(api).get("jobs") == {
                    "created": 1, "running": 1, "succeeded": 0, "failed": 0}, timeout=20)
                assert watch_status(api).get("waiting", 0) == 0
    k.run(scenario)


def test_a_message_whose_job_cannot_be_created_is_retried_then_moved_to_the_poison_queue(azure_env, monkeypatch):
    store = Storage(azure_env, "refused")
    etag = store.upload("incoming/refused.mp4")
    store.publish("incoming/refused.mp4", etag, 36)
    handle = k.ApiServer._handle

    async def refuse_jobs(self: k.ApiServer, request: kmock.Request) -> Any:
        """The API server (an admission policy, say) refuses every StyleTransferJob."""
        if request.action == kmock.action.CREATE and request.resource and \
                request.resource.plural == "styletransferjobs":
            raise kmock.KubernetesError(status=403, reason="Forbidden", message="denied by policy")
        return await handle(self, request)

    monkeypatch.setattr(k.ApiServer, "_handle", refuse_jobs)

    async def scenario() -> None:
        async with api_server() as api, k.operator(api, settings=SETTINGS):
            # a visibility timeout shorter than the CRD allows (10 s), so that redeliveries come quickly
            await apply_watch(api, store.container, mode="queue", sweepIntervalSeconds=0,
                              queue={"name": "refused", "maxDeliveries": 2, "visibilityTimeoutSeconds": 1})
            error = await k.eventually(lambda: watch_status(api).get("lastError"), timeout=20)
            assert "403" in error
            await k.eventually(lambda: len(store.messages_left(store.poison)) == 1, timeout=30)
            await k.eventually(lambda: store.unfinished(store.queue) == 0)
            assert jobs(api) == {}
            assert len(job_posts(api)) == 2  # one try per delivery, then the poison queue
            poison = await k.eventually(lambda: [e for e in k.events(api, "uploads") if e[1] == "PoisonMessage"])
            assert "delivered 3 times" in poison[0][2]
    k.run(scenario)


def test_a_message_that_breaks_its_handling_goes_alone_and_the_ones_received_with_it_get_their_jobs(azure_env):
    """An event nested past Python's recursion limit, a contentLength of 1e400, a URL that is none: each
    raised out of the round, which ended without deleting the good messages received with it; with
    maxDeliveries 1 they went to the poison queue untried, and the status said nothing."""
    store = Storage(azure_env, "mixed")
    nested = base64.b64encode(("[" * 5_000 + "]" * 5_000).encode()).decode()  # (a queue message is at most 64 KiB)
    store.queue.send_message(nested)
    for name in ("a.mp4", "b.mp4"):
        store.publish(f"incoming/{name}", store.upload(f"incoming/{name}"), 36)
    huge = json.loads(base64.b64decode(blob_created(store.container, "incoming/c.mp4", store.upload("incoming/c.mp4"),
                                                    36)))
    store.queue.send_message(base64.b64encode(json.dumps(huge).replace('"contentLength": 36',
                                                                       '"contentLength": 1e400').encode()).decode())
    store.publish("incoming/d.mp4", store.upload("incoming/d.mp4"), 36)

    async def scenario() -> None:
        async with api_server() as api, k.operator(api, settings=SETTINGS):
            await apply_watch(api, store.container, mode="queue", sweepIntervalSeconds=0,
                              queue={"name": "mixed", "maxDeliveries": 1, "visibilityTimeoutSeconds": 10})
            await k.eventually(lambda: inputs(api) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"], timeout=20)
            await k.eventually(lambda: store.unfinished(store.queue) == 0, timeout=20)
            assert store.messages_left(store.poison) == [nested]
    k.run(scenario)


def test_a_video_whose_metadata_was_set_after_its_upload_still_gets_its_job(azure_env):
    """Setting a blob's metadata (or tier) gives it a new ETag and sends no BlobCreated: its one event
    named the old ETag, and the video was dropped as "superseded by a newer upload"."""
    store = Storage(azure_env, "tagged")
    etag = store.upload("incoming/cat.mp4")
    store.blobs.get_blob_client("incoming/cat.mp4").set_blob_metadata({"camera": "a7"})
    store.publish("incoming/cat.mp4", etag, 36)

    async def scenario() -> None:
        async with api_server() as api, k.operator(api, settings=SETTINGS):
            await apply_watch(api, store.container, mode="queue", sweepIntervalSeconds=0,
                              queue={"name": "tagged", "maxDeliveries": 2, "visibilityTimeoutSeconds": 10})
            await k.eventually(lambda: inputs(api) == ["cat.mp4"], timeout=20)
            await k.eventually(lambda: store.unfinished(store.queue) == 0, timeout=20)
    k.run(scenario)


def blob_renamed(container: str, blob: str, source: str, api: str = "SftpRename",
                 account: str = "devstoreaccount1") -> str:
    """A BlobRenamed event (hierarchical-namespace accounts), CloudEvents schema: the new name in the
    subject, the old and new URLs in data, no ETag and no size."""
    url = f"https://{account}.blob.core.windows.net/{container}"
    event = {
        "source": f"/subscriptions/0000/resourceGroups/media/providers/Microsoft.Storage/storageAccounts/{account}",
        "subject": f"/blobServices/default/containers/{container}/blobs/{blob}",
        "type": "Microsoft.Storage.BlobRenamed", "time": datetime.now(timezone.utc).isoformat(), "id": f"ren-{blob}",
        "specversion": "1.0",
        "data": {"api": api, "requestId": "r", "sourceUrl": f"{url}/{source}", "destinationUrl": f"{url}/{blob}",
                 "sequencer": "00000000000004420000000000028964", "identity": "media"},
    }
    return base64.b64encode(json.dumps(event).encode()).decode()


@pytest.mark.parametrize("api", ["SftpRename", "RenameFile"])
def test_an_sftp_upload_and_an_upload_renamed_into_place_each_get_their_job_from_the_queue(azure_env, api):
    """An SFTP put sends SftpCreate (the empty blob it opens) then SftpCommit; an uploader that writes
    to a temporary name (WinSCP's .filepart, a Data Lake tool's hidden file) and renames it when done
    sends a BlobCreated only for the temporary name, then a BlobRenamed. Both were ignored, so the
    videos waited for a sweep (forever without one)."""
    queue = f"sftp-{api.lower()}"
    store = Storage(azure_env, queue)
    dog = store.upload("incoming/dog.mp4")
    store.publish("incoming/dog.mp4", dog, 0, api="SftpCreate")
    store.publish("incoming/dog.mp4", dog, 36, api="SftpCommit")
    cat = store.upload("incoming/cat.mp4")  # (Azurite cannot rename: the blob as the rename left it)
    store.publish("incoming/cat.mp4.filepart", cat, 36, api="SftpCommit")
    store.queue.send_message(blob_renamed(store.container, "incoming/cat.mp4", "incoming/cat.mp4.filepart", api))

    async def scenario() -> None:
        async with api_server() as api, k.operator(api, settings=SETTINGS):
            await apply_watch(api, store.container, mode="queue", sweepIntervalSeconds=0,
                              queue={"name": queue, "maxDeliveries": 2, "visibilityTimeoutSeconds": 10})
            await k.eventually(lambda: inputs(api) == ["cat.mp4", "dog.mp4"], timeout=20)
            await k.eventually(lambda: store.unfinished(store.queue) == 0, timeout=20)
            by_input = {j["spec"]["input"].rsplit("/", 1)[-1]: j for j in jobs(api).values()}
            assert by_input["cat.mp4"]["metadata"]["annotations"]["stylebatch.io/source-etag"].strip('"') \
                == cat.strip('"')  # the blob's ETag, which the rename's event does not carry
            assert len(job_posts(api)) == 2 and store.messages_left(store.poison) == []
    k.run(scenario)


def test_an_event_without_an_etag_gets_the_one_job_a_listing_names_for_that_blob_version(azure_env):
    """A BlobCreated message with no data.eTag (a publisher or a schema that leaves it out) is no
    crash and no job of its own name: the job is named for the blob's ETag now, the name a listing
    of that blob gives, so its duplicate events and the sweep's listings find that job there."""
    from stylebatch import trigger

    store = Storage(azure_env, "noetag")
    etag = store.upload("incoming/cat.mp4")
    event = json.loads(base64.b64decode(blob_created(store.container, "incoming/cat.mp4", etag, 36)))
    del event["data"]["eTag"]
    assert trigger.parse_event(json.dumps(event)).etag == ""
    for _ in range(2):  # (Event Grid delivers at least once)
        store.queue.send_message(base64.b64encode(json.dumps(event).encode()).decode())

    async def scenario() -> None:
        async with api_server() as api, k.operator(api, settings=SETTINGS):
            await apply_watch(api, store.container, mode="queue", sweepIntervalSeconds=1,
                              queue={"name": "noetag", "maxDeliveries": 2, "visibilityTimeoutSeconds": 10},
                              poll={"pageSize": 10, "maxSecondsPerPoll": 1})
            await k.eventually(lambda: inputs(api) == ["cat.mp4"], timeout=20)
            await k.eventually(lambda: store.unfinished(store.queue) == 0, timeout=20)
            await polls(api, 2)  # two sweeps (listings) since
            [(name, job)] = jobs(api).items()
            assert name == trigger.job_name("devstoreaccount1", store.container, "incoming/cat.mp4", etag,
                                            salt=f"{NS}/uploads")  # the name the listing gives this version
            assert job["metadata"]["annotations"]["stylebatch.io/source-etag"].strip('"') == etag.strip('"')
            assert job_posts(api) == [name] and store.messages_left(store.poison) == []
    k.run(scenario)


@pytest.mark.parametrize("blob, why", [
    ("incoming//cat.mp4", "an empty folder name ('//') in its name, which stylebatch cannot address: rename it"),
    # a job was made whose input az://.../incoming/q?x=1.mp4 carries a query string: refused, every time
    ("incoming/q?x=1.mp4", "a '?' in its name, which stylebatch cannot address (a URI's query starts there): "
                           "rename it"),
])
@pytest.mark.parametrize("mode", ["queue", "poll"])
def test_an_upload_no_uri_can_name_is_said_once_in_an_event_not_skipped_in_silence(azure_env, mode, blob, why):
    """A blob `incoming//cat.mp4` (a script's path join): skipped, as it must be (its URI would name
    incoming/cat.mp4), but said only at debug level: the uploader waited for a video that never came.
    A '?' in the name likewise: no az:// URI can carry it."""
    queue = f"{'slashes' if '//' in blob else 'query'}-{mode}"
    store = Storage(azure_env, queue)
    etag = store.upload(blob)
    store.upload("incoming/dog.mp4")
    if mode == "queue":
        store.publish(blob, etag, 36)
        store.publish(blob, etag, 36)  # (Event Grid delivers at least once)
    spec = mode_spec(mode, queue)

    async def scenario() -> None:
        async with api_server() as api, k.operator(api, settings=SETTINGS):
            await apply_watch(api, store.container, **spec)
            if mode == "queue":
                store.publish("incoming/dog.mp4", store.upload("incoming/dog.mp4"), 36)
            await k.eventually(lambda: inputs(api) == ["dog.mp4"], timeout=20)

            said = await k.eventually(lambda: skipped_said(api), timeout=20)
            assert said[0] == f"skipped az://{store.container}/{blob}: {why}"
            if mode == "queue":  # both deliveries handled before dog's, whose Event kopf posts after theirs
                await k.eventually(lambda: store.unfinished(store.queue) == 0, timeout=20)
                await k.eventually(lambda: [e for e in k.events(api, "uploads") if e[1] == "JobCreated"], timeout=20)
            else:
                await polls(api, 2)  # more listings of it
            assert len(skipped_said(api)) == 1 and inputs(api) == ["dog.mp4"]  # said once
    k.run(scenario)


def test_an_uploads_name_with_control_characters_cannot_forge_lines_in_the_watchs_events_or_log(azure_env, caplog):
    """A blob's name (and an Event Grid subject) may hold control characters: the JobCreated event and
    log line carried them raw (a carriage return or a terminal escape rewrote what `kubectl describe`
    and the operator's log showed), where a skipped upload's were escaped. The job still names the blob."""
    names = ["incoming/a\rstylebatch_operator: error: forged.mp4", "incoming/b\x1b[2Kc.mp4", "incoming/d\u2028e.mp4"]
    store = Storage(azure_env, "controls")
    for blob in names:
        store.publish(blob, store.upload(blob), 36)

    async def scenario() -> None:
        async with api_server() as api, k.operator(api, settings=SETTINGS):
            await apply_watch(api, store.container, mode="queue", sweepIntervalSeconds=0,
                              queue={"name": "controls", "maxDeliveries": 2, "visibilityTimeoutSeconds": 10})
            await k.eventually(lambda: len(jobs(api)) == 3, timeout=20)
            created = await k.eventually(lambda: [m for _, reason, m in k.events(api, "uploads")
                                                  if reason == "JobCreated"][2:], timeout=20)
            said = [m for _, reason, m in k.events(api, "uploads") if reason == "JobCreated"]
            assert len(said) == 3 and created
            assert all(m.isprintable() for m in said), said
            logged = [r.getMessage() for r in caplog.records if "created StyleTransferJob" in r.getMessage()]
            assert len(logged) == 3 and all(m.isprintable() for m in logged), logged
            assert sorted(j["spec"]["input"] for j in jobs(api).values()) == sorted(
                f"az://{store.container}/{blob}" for blob in names)
    with caplog.at_level(logging.INFO):
        k.run(scenario)


@pytest.mark.parametrize("mode", ["queue", "poll"])
def test_a_video_in_the_archive_tier_is_said_and_waits_for_its_rehydration_instead_of_a_job_that_fails(
        azure_env, mode):
    """A blob in the archive tier cannot be read: its job failed at once, and the rehydrated blob (the
    same ETag: a tier change makes no new version) found that failed job already there, so the video
    was never stylized. Now it is skipped with a VideoSkipped Warning, once, and its job is made by the
    first listings after the rehydration (a poll, or the queue mode's sweep)."""
    from stylebatch import trigger

    queue = f"archived-{mode}"
    store = Storage(azure_env, queue)
    etag = store.upload("incoming/cat.mp4")
    cat = store.blobs.get_blob_client("incoming/cat.mp4")
    cat.set_standard_blob_tier("Archive")
    store.upload("incoming/dog.mp4")
    if mode == "queue":
        store.publish("incoming/cat.mp4", etag, 36)
    spec = mode_spec(mode, queue, sweep=1)

    async def scenario() -> None:
        async with api_server() as api, k.operator(api, settings=SETTINGS):
            await apply_watch(api, store.container, **spec)

            said = await k.eventually(lambda: skipped_said(api), timeout=20)
            assert said == [f"skipped az://{store.container}/incoming/cat.mp4: {trigger.ARCHIVED}"]
            await k.eventually(lambda: inputs(api) == ["dog.mp4"], timeout=20)
            if mode == "queue":
                await k.eventually(lambda: store.unfinished(store.queue) == 0, timeout=20)
            await polls(api, 2)  # more listings of it, archived: no job, nothing said again
            assert inputs(api) == ["dog.mp4"] and len(skipped_said(api)) == 1

            cat.set_standard_blob_tier("Hot")  # rehydrated (Azurite at once; Azure in hours)
            await k.eventually(lambda: inputs(api) == ["cat.mp4", "dog.mp4"], timeout=20)
            [job] = [j for j in jobs(api).values() if j["spec"]["input"].endswith("/cat.mp4")]
            assert job["metadata"]["annotations"]["stylebatch.io/source-etag"].strip('"') == etag.strip('"')
            assert store.messages_left(store.poison) == []
    k.run(scenario)


@pytest.mark.parametrize("mode", ["queue", "poll"])
def test_a_video_still_being_copied_in_waits_for_its_copy_instead_of_a_job_on_part_of_it(azure_env, mode,
                                                                                       monkeypatch):
    """A hierarchical-namespace account sends a CopyBlob's BlobCreated when the copy starts, and a copy
    from another account runs on for minutes with the same ETag (two listings find it "unchanged"):
    the job was made at once, on a partial blob, and its name was the finished copy's too. Now the
    message goes back on the queue (a new one: a long copy is no failure to poison) and the listings
    pass the blob by until the copy is done. (Azurite copies at once: its status is played here.)"""
    from stylebatch.storage import blob as blob_module

    copying = {"incoming/cat.mp4"}
    real = blob_module._copy_status
    monkeypatch.setattr(blob_module, "_copy_status",
                        lambda props: "pending" if getattr(props, "name", "") in copying else real(props))
    queue = f"copying-{mode}"
    store = Storage(azure_env, queue)
    etag = store.upload("incoming/cat.mp4")
    store.upload("incoming/dog.mp4")
    if mode == "queue":
        store.publish("incoming/cat.mp4", etag, 36, api="CopyBlob")
    spec = mode_spec(mode, queue, deliveries=1)

    async def scenario() -> None:
        async with api_server() as api, k.operator(api, settings=SETTINGS):
            await apply_watch(api, store.container, **spec)
            if mode == "queue":
                store.publish("incoming/dog.mp4", store.upload("incoming/dog.mp4"), 36)
                await k.eventually(lambda: inputs(api) == ["dog.mp4"], timeout=20)
                await asyncio.sleep(12)  # cat's message read again after its visibility timeout
                assert store.unfinished(store.queue) == 1 and store.messages_left(store.poison) == []
            else:
                await k.eventually(lambda: inputs(api) == ["dog.mp4"], timeout=20)
                await polls(api, 2)
            assert inputs(api) == ["dog.mp4"]

            copying.clear()  # the copy is done
            await k.eventually(lambda: inputs(api) == ["cat.mp4", "dog.mp4"], timeout=30)
            if mode == "queue":
                await k.eventually(lambda: store.unfinished(store.queue) == 0, timeout=20)
            assert store.messages_left(store.poison) == [] and len(job_posts(api)) == 2
    k.run(scenario)


def test_a_second_watch_on_the_same_queue_is_refused_instead_of_eating_the_first_ones_videos(azure_env):
    """Two VideoWatches on one queue (two styles of the same uploads, or two prefixes under one Event
    Grid subscription): each deleted the messages it did not take, the other's among them, and each
    got some of the videos, with no error anywhere."""
    store = Storage(azure_env, "shared")
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"):
        store.publish(f"incoming/{name}", store.upload(f"incoming/{name}"), 36)

    async def scenario() -> None:
        async with api_server() as api, k.operator(api, settings=SETTINGS):
            queue = {"name": "shared", "maxDeliveries": 5, "visibilityTimeoutSeconds": 10}
            await apply_watch(api, store.container, name="candy", mode="queue", sweepIntervalSeconds=0, queue=queue,
                              template={**TEMPLATE, "style": "candy"})
            await asyncio.sleep(1.1)  # (creation times are whole seconds)
            await apply_watch(api, store.container, name="mosaic", mode="queue", sweepIntervalSeconds=0, queue=queue,
                              template={**TEMPLATE, "style": "mosaic"})
            error = await k.eventually(lambda: watch_status(api, "mosaic").get("lastError"), timeout=20)
            assert error.startswith("queue shared of storage account devstoreaccount1 is VideoWatch candy's (it was "
                                    "there first)") and "give each VideoWatch its own queue" in error
            await k.eventually(lambda: sorted(j["spec"]["style"] for j in jobs(api).values()) == ["candy"] * 4,
                               timeout=20)
            await k.eventually(lambda: any(e[1] == "WatchError" and "give each VideoWatch its own queue" in e[2]
                                           for e in k.events(api, "mosaic")))  # (kopf posts events from a queue)
            assert watch_status(api, "candy").get("lastError") == ""

            # candy edited into a spec that cannot work receives nothing: the queue is mosaic's now
            # (candy kept it, and nobody received its messages until the operator restarted)
            resp = await api.patch(f"{WATCHES}/candy", json={"spec": {"output": "az://stylized/{path}-{nosuch}.mp4"}},
                                   headers={"Content-Type": "application/merge-patch+json"})
            assert resp.status == 200, await resp.text()
            await k.eventually(lambda: "nosuch" in watch_status(api, "candy").get("lastError", ""), timeout=20)
            store.publish("incoming/e.mp4", store.upload("incoming/e.mp4"), 36)
            await k.eventually(lambda: sorted(j["spec"]["style"] for j in jobs(api).values()) == ["candy"] * 4
                               + ["mosaic"], timeout=20)
            await k.eventually(lambda: watch_status(api, "mosaic").get("lastError") == "", timeout=20)
    k.run(scenario)


def test_after_a_restart_the_newer_watch_of_a_shared_queue_takes_nothing_before_the_older_one_is_known(monkeypatch):
    """A restarted operator knows no watch: the newer of two on one queue, ticking first, received
    (and deleted) a round of the older one's messages before the older one said it was there. A stand-in
    Kube and storage (the order of two watches' first ticks cannot be set through kopf)."""
    import logging

    from stylebatch_operator import videowatch_handlers as handlers
    from stylebatch_operator.metrics import Metrics

    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "media")
    monkeypatch.setenv("AZURE_STORAGE_KEY", base64.b64encode(b"k" * 32).decode())
    monkeypatch.setattr(handlers.kopf, "event", lambda *a, **kw: None)
    rounds: list[str] = []

    async def go(self: Any) -> None:  # what would receive from the queue
        rounds.append(self.watch["metadata"]["name"])
    monkeypatch.setattr(handlers._Round, "go", go)

    def watch(name: str, created: str) -> dict[str, Any]:
        body = {"apiVersion": "stylebatch.io/v1alpha1", "kind": "VideoWatch",
                "metadata": {"name": name, "namespace": NS, "uid": name, "creationTimestamp": created},
                "spec": {"source": "az://uploads/incoming", "output": "az://stylized/{path}-{style}.mp4",
                         "mode": "queue", "queue": {"name": "shared"}, "template": TEMPLATE}}
        return apply_defaults(body, openapi_schema())
    watches = {"older": watch("older", "2026-01-01T00:00:00Z"), "newer": watch("newer", "2026-02-01T00:00:00Z")}
    statuses: dict[str, dict[str, Any]] = {}

    class Kube:
        async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
            return watches[name]

        async def list(self, *_: Any, **__: Any) -> list[Any]:
            return []

        async def patch_status(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
            statuses.setdefault(name, {}).update(patch)

    async def scenario() -> None:
        states: dict[Any, Any] = {}  # the restarted process's

        async def tick(name: str) -> None:
            await handlers.tick(Kube(), NS, name, logging.getLogger("test"), settings=SETTINGS,  # type: ignore[arg-type]
                                metrics=Metrics(), states=states)
        for name in ("newer", "older", "newer", "older"):
            await tick(name)
        assert rounds == ["older"]
        assert "is VideoWatch older's" in statuses["newer"]["lastError"]
    asyncio.run(scenario())


def test_the_sweep_finds_a_video_whose_event_never_came_and_suspend_holds_new_jobs_back(azure_env):
    store = Storage(azure_env, "sweep")
    store.upload("incoming/lost.mp4")  # Event Grid never delivered its event
    path = f"{WATCHES}/uploads"

    async def scenario() -> None:
        async with api_server() as api, k.operator(api, settings=SETTINGS):
            await apply_watch(api, store.container, mode="queue", queue={"name": "sweep"}, suspend=True,
                              sweepIntervalSeconds=1, poll={"pageSize": 10, "maxSecondsPerPoll": 1})
            await k.eventually(lambda: watch_status(api).get("waiting") == 1, timeout=20)
            etag = store.upload("incoming/new.mp4")
            store.publish("incoming/new.mp4", etag, 36)
            await polls(api, 2)  # two sweeps since, with the message there
            assert jobs(api) == {} and len(store.messages_left(store.queue)) == 1  # held back, not lost
            resp = await api.patch(path, json={"spec": {"suspend": False}},
                                   headers={"Content-Type": "application/merge-patch+json"})
            assert resp.status == 200, await resp.text()
            await k.eventually(lambda: inputs(api) == ["lost.mp4", "new.mp4"], timeout=20)
            await k.eventually(lambda: store.unfinished(store.queue) == 0)
            assert len(job_posts(api)) == 2
    k.run(scenario)


def test_a_watch_that_cannot_work_says_why_in_its_status_and_an_event(azure_env):
    async def scenario() -> None:
        async with api_server() as api, k.operator(api, settings=SETTINGS):
            # what the CRD's CEL rule refuses, on a server that did not check it
            await apply_watch(api, azure_env.container, output=f"az://{azure_env.container}/incoming/out/{{path}}.mp4")
            error = await k.eventually(lambda: watch_status(api).get("lastError"))
            assert "inside the watched source" in error
            await k.eventually(lambda: [e for e in k.events(api, "uploads") if e[1] == "InvalidSpec"])
            assert jobs(api) == {}
    k.run(scenario)


async def scrape(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


@pytest.mark.parametrize("error, shown", [
    ("The specified queue does not exist.\nRequestId:1\nTime:2026\nErrorCode:QueueNotFound\nContent: <?xml ...>",
     "The specified queue does not exist."),
    ("cannot list https://acct.blob.core.windows.net/videos?sv=2024&sig=S3CR3T: 403",
     "cannot list https://acct.blob.core.windows.net/videos?<redacted> 403"),
    ("", "ValueError"),
])
def test_errors_reach_status_events_and_logs_on_one_line_without_secrets(error, shown):
    from stylebatch_operator.videowatch_handlers import _one_line

    assert _one_line(ValueError(error)) == shown


def test_a_full_watch_whose_identity_may_not_read_the_queues_length_is_no_error(monkeypatch):
    """At maxConcurrentJobs a watch counts the messages waiting (Get Queue Properties, status.waiting),
    which the Storage Queue Data Message Processor role alone does not allow: the 403 was the watch's
    lastError (and a Warning Event each time it changed) while it worked as it should. A stand-in queue
    (Azurite has no roles)."""
    import logging

    from azure.core.exceptions import HttpResponseError

    from stylebatch_operator import videowatch_handlers as handlers
    from stylebatch_operator.metrics import Metrics
    from stylebatch_operator.videowatch import read_spec

    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "media")
    monkeypatch.setenv("AZURE_STORAGE_KEY", base64.b64encode(b"k" * 32).decode())

    class Forbidden:
        def get_queue_properties(self) -> None:
            error = HttpResponseError(message="This request is not authorized to perform this operation using this "
                                              "permission.")
            error.status_code = 403
            raise error

        def receive_messages(self, **_: Any) -> list[Any]:
            raise AssertionError("a full watch receives nothing")

    body = apply_defaults({"apiVersion": "stylebatch.io/v1alpha1", "kind": "VideoWatch",
                           "metadata": {"name": "uploads", "namespace": NS, "uid": "u"},
                           "spec": {"source": "az://uploads/incoming", "output": "az://stylized/{path}-{style}.mp4",
                                    "mode": "queue", "queue": {"name": "uploads"}, "template": TEMPLATE}},
                          openapi_schema())
    spec, problems = read_spec(body, SETTINGS)
    assert spec is not None, problems
    state = handlers.WatchState(waiting=3, clients={"uploads": Forbidden()})
    run = handlers._Round(None, body, spec, state, Metrics(), logging.getLogger("test"), free=0)  # type: ignore[arg-type]
    asyncio.run(run.drain_queue())
    assert run.error == "" and state.waiting == 3  # (not known now: as last seen)
