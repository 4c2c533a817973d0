"""Storage: the same contract on the local filesystem and on Azure Blob (Azurite), URI parsing,
credential selection, secret scrubbing and one-line error messages."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import errno
import hashlib
import logging
import os
import pathlib
import socket
import tracemalloc
import urllib.parse
import uuid
from typing import Callable

import pytest

from stylebatch import storage
from stylebatch.storage import tuning
from stylebatch.errors import StylebatchError

BAD_KEY = base64.b64encode(b"not the right key, but well formed" * 2).decode()


@pytest.fixture(autouse=True)
def fresh_clients() -> None:
    # Each test sets its own environment; cached clients and identities must not leak across.
    storage.clear_client_cache()


@pytest.fixture
def no_storage_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
                 "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_BLOB_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(params=["local", "blob"])
def root(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> storage.Location:
    """An empty folder-like location on each backend; the name has a space on purpose."""
    if request.param == "local":
        return storage.location(str(tmp_path / "store root"))
    env = request.getfixturevalue("azure_env")
    return storage.location(f"az://{env.container}/store root")


def error_of(action: Callable[[], object]) -> str:
    with pytest.raises(StylebatchError) as info:
        action()
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


def partial_files(folder: pathlib.Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".partial")] if folder.exists() else []


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def container_sas(azurite, container: str, key: str | None = None) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        azurite.account, container, account_key=key or azurite.key,
        permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
        expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FailingReader:
    """A file opened for reading that fails with EIO after `budget` bytes, like a dying disk."""

    def __init__(self, path: pathlib.Path, budget: int) -> None:
        self._file = open(path, "rb")
        self._budget = budget

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._budget -= len(data)
        if self._budget < 0:
            raise OSError(errno.EIO, "Input/output error")
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def __enter__(self) -> FailingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


# --------------------------------------------------------------------------- the contract, both backends


def test_write_read_and_overwrite(root: storage.Location) -> None:
    manifest = root.child("manifest.json")
    assert not manifest.exists()
    manifest.write_bytes(b'{"frames": 96}')
    assert manifest.exists()
    assert manifest.size() == 14
    assert manifest.read_bytes() == b'{"frames": 96}'
    manifest.write_bytes(b"{}")
    assert manifest.read_bytes() == b"{}"
    assert manifest.size() == 2
    assert root.list() == ["manifest.json"]


def test_list_is_recursive_sorted_and_scoped_to_the_prefix(root: storage.Location) -> None:
    names = [
        "parts/000000096-000000192.mkv",
        "parts/000000000-000000096.mkv",
        "parts/sub dir/é ü;'q'.bin",
        "parts.txt",
        "parts2/other.mkv",
        "manifest.json",
    ]
    for name in names:
        root.child(name).write_bytes(name.encode())
    assert root.list() == sorted(names)
    parts = root.child("parts")
    assert parts.list() == ["000000000-000000096.mkv", "000000096-000000192.mkv", "sub dir/é ü;'q'.bin"]
    assert parts.exists()  # a prefix with files under it
    assert not root.child("part").exists()  # "part" is a string prefix of "parts", not a folder
    assert root.child("part").list() == []
    assert root.child("nothing", "here").list() == []
    assert parts.child("sub dir/é ü;'q'.bin").read_bytes() == b"parts/sub dir/\xc3\xa9 \xc3\xbc;'q'.bin"


def test_child_joins_parts_and_names_the_last_one(root: storage.Location) -> None:
    part = root.child("parts", "000000000-000000096.mkv")
    assert part == root.child("parts/000000000-000000096.mkv")
    assert hash(part) == hash(root.child("parts/000000000-000000096.mkv"))
    assert part.name == "000000000-000000096.mkv"
    assert part.display.endswith("store root/parts/000000000-000000096.mkv")
    assert root.name == "store root"
    part.write_bytes(b"x")
    assert root.list() == ["parts/000000000-000000096.mkv"]
    message = error_of(lambda: root.child("parts", "..", "escape"))
    assert "'..'" in message and root.display in message


def test_upload_and_download_round_trip(root: storage.Location, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "source clip.mp4"
    source.write_bytes(os.urandom(300_000))
    target = root.child("in.mp4")
    target.upload(source)
    assert target.exists() and target.size() == 300_000
    dest = tmp_path / "deep" / "new dir" / "out.mp4"
    target.download(dest)
    assert sha256(dest) == sha256(source)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["out.mp4"]  # no temp file left behind
    assert root.list() == ["in.mp4"]


def test_delete_and_delete_tree(root: storage.Location) -> None:
    for name in ["parts/a.mkv", "parts/deeper/b.mkv", "parts.txt", "parts2/c.mkv", "manifest.json"]:
        root.child(name).write_bytes(b"x")
    root.child("manifest.json").delete()
    assert not root.child("manifest.json").exists()
    root.child("manifest.json").delete()  # already gone: fine
    root.child("parts").delete_tree()
    assert root.list() == ["parts.txt", "parts2/c.mkv"]
    root.child("parts").delete_tree()  # nothing left: fine
    root.delete_tree()
    assert root.list() == []
    assert not root.exists()


def test_missing_file_errors_name_it(root: storage.Location, tmp_path: pathlib.Path) -> None:
    missing = root.child("no such video.mp4")
    assert not missing.exists()
    for action in (missing.size, missing.read_bytes, lambda: missing.download(tmp_path / "out.mp4")):
        assert error_of(action) == f"not found: {missing.display}"
    assert not (tmp_path / "out.mp4").exists()
    missing.delete()  # missing is fine


def test_failed_upload_publishes_nothing_and_keeps_the_old_object(
    root: storage.Location, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small blocks, so the blob upload has really staged some blocks when the source fails.
    monkeypatch.setattr(tuning, "settings", dataclasses.replace(
        tuning.settings, max_single_put_size=64 * 1024, max_block_size=64 * 1024, max_concurrency=2))
    source = tmp_path / "video.mp4"
    source.write_bytes(os.urandom(1024 * 1024))
    monkeypatch.setattr(tuning, "open_file", lambda path: FailingReader(path, budget=300 * 1024))

    fresh = root.child("fresh.mp4")
    message = error_of(lambda: fresh.upload(source))
    assert message == f"cannot read {source}: Input/output error"
    assert not fresh.exists()
    assert root.list() == []
    if isinstance(fresh, storage.BlobLocation):  # it did fail midway: blocks were staged, never committed
        blob = storage.service_client(fresh).get_blob_client(fresh.container, fresh.blob)
        assert blob.get_block_list("uncommitted")[1]

    existing = root.child("existing.mp4")
    existing.write_bytes(b"the finished video")
    error_of(lambda: existing.upload(source))
    assert existing.read_bytes() == b"the finished video"
    assert root.list() == ["existing.mp4"]
    if root.is_local():
        assert partial_files(root.local_path()) == []


def test_failed_local_write_keeps_the_old_file(
    root: storage.Location, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = root.child("out.mp4")
    remote.write_bytes(b"new video")
    dest = tmp_path / "downloads" / "out.mp4"
    dest.parent.mkdir()
    dest.write_bytes(b"old video")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    assert error_of(lambda: remote.download(dest)) == f"cannot write {dest}: No space left on device"
    assert dest.read_bytes() == b"old video"
    assert partial_files(dest.parent) == []
    if root.is_local():
        assert "No space left" in error_of(lambda: remote.write_bytes(b"newer"))
        assert remote.read_bytes() == b"new video"
        assert partial_files(root.local_path()) == []


# --------------------------------------------------------------------------- blob specifics


@pytest.mark.azurite
def test_large_blobs_stream_through_blocks_and_ranged_gets(
    azure_env, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = 256 * 1024
    monkeypatch.setattr(tuning, "settings", dataclasses.replace(
        tuning.settings, max_single_put_size=chunk, max_block_size=chunk,
        max_single_get_size=chunk, max_chunk_get_size=chunk, max_concurrency=2))
    size = 16 * 1024 * 1024
    source = tmp_path / "big.mp4"
    source.write_bytes(os.urandom(size))
    target = storage.location(f"az://{azure_env.container}/videos/big.mp4")
    dest = tmp_path / "back" / "big.mp4"

    tracemalloc.start()
    try:
        target.upload(source)
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        target.download(dest)
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert sha256(dest) == sha256(source)
    # Bounded by the chunks in flight (the SDK holds a few per thread), far below the file size.
    assert upload_peak < size / 2 and download_peak < size / 2, (upload_peak, download_peak)
    blob = storage.service_client(target).get_blob_client(azure_env.container, "videos/big.mp4")
    committed, _ = blob.get_block_list()
    assert len(committed) == size // chunk
    assert blob.get_blob_properties().content_settings.content_type == "video/mp4"


@pytest.mark.azurite
def test_clients_are_cached_per_account_and_credential(azure_env, azurite, no_storage_env) -> None:
    no_storage_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    a = storage.location(f"az://{azure_env.container}/a.mp4")
    b = storage.location(f"az://{azure_env.container}/sub/b.mp4")
    url = storage.location(f"{azurite.endpoint}/{azure_env.container}/c.mp4")  # same account: same credential
    assert storage.service_client(a) is storage.service_client(b) is storage.service_client(url)
    sas = container_sas(azurite, azure_env.container)
    with_sas = storage.location(f"{azurite.endpoint}/{azure_env.container}/c.mp4?{sas}")
    assert storage.service_client(with_sas) is not storage.service_client(a)


@pytest.mark.azurite
def test_missing_container_is_named(azure_env, tmp_path: pathlib.Path) -> None:
    blob = storage.location("az://no-such-container/in.mp4")
    expected = "container 'no-such-container' does not exist: az://no-such-container/in.mp4"
    assert error_of(blob.read_bytes) == expected
    assert error_of(lambda: blob.write_bytes(b"x")) == expected
    source = tmp_path / "in.mp4"
    source.write_bytes(b"x")
    assert error_of(lambda: blob.upload(source)) == expected
    assert not blob.exists()
    assert blob.list() == []
    blob.delete()
    blob.delete_tree()


def test_upload_of_a_missing_local_file_names_it(root: storage.Location, tmp_path: pathlib.Path) -> None:
    target = root.child("in.mp4")
    assert error_of(lambda: target.upload(tmp_path / "nope.mp4")) == f"not found: {tmp_path / 'nope.mp4'}"
    assert not target.exists()


# --------------------------------------------------------------------------- URI parsing


def test_az_uri() -> None:
    loc = storage.location("az://videos/jobs/run 1/in.mp4")
    assert isinstance(loc, storage.BlobLocation)
    assert (loc.container, loc.blob, loc.account) == ("videos", "jobs/run 1/in.mp4", None)
    assert loc.display == loc.uri == "az://videos/jobs/run 1/in.mp4"
    assert loc.name == "in.mp4"
    assert not loc.is_local() and loc.local_path() is None
    assert storage.location("az://videos/jobs/") == storage.location("az://videos/jobs")
    assert storage.location("az://videos/jobs").child("run 1", "in.mp4") == loc
    assert len({loc, storage.location("az://videos/jobs/run 1/in.mp4")}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        loc.blob = "other"  # type: ignore[misc]


def test_https_url_with_sas_keeps_the_sas_out_of_display() -> None:
    sas = "sv=2023-11-03&sr=c&sp=rwl&sig=SeCrEt%2Bsig%3D"
    loc = storage.location(f"https://myacct.blob.core.windows.net/videos/my%20clip.mp4?{sas}")
    assert (loc.account, loc.container, loc.blob) == ("myacct", "videos", "my clip.mp4")
    assert loc.endpoint == "https://myacct.blob.core.windows.net"
    assert loc.display == "https://myacct.blob.core.windows.net/videos/my%20clip.mp4"
    assert loc.name == "my clip.mp4"
    part = loc.child("parts", "000000000-000000096.mkv")
    assert part.uri == f"https://myacct.blob.core.windows.net/videos/my%20clip.mp4/parts/000000000-000000096.mkv?{sas}"
    assert part.display == "https://myacct.blob.core.windows.net/videos/my%20clip.mp4/parts/000000000-000000096.mkv"
    for text in (loc.display, repr(loc), str(loc), part.display, repr(part), f"{part}"):
        assert "SeCrEt" not in text


@pytest.mark.parametrize("uri, account, endpoint", [
    ("http://127.0.0.1:10000/devstoreaccount1/videos/in.mp4", "devstoreaccount1",
     "http://127.0.0.1:10000/devstoreaccount1"),
    ("http://localhost:10000/devstoreaccount1/videos/in.mp4", "devstoreaccount1",
     "http://localhost:10000/devstoreaccount1"),
    ("http://azurite:10000/devstoreaccount1/videos/in.mp4", "devstoreaccount1",
     "http://azurite:10000/devstoreaccount1"),
])
def test_path_style_url_takes_the_account_from_the_path(uri: str, account: str, endpoint: str) -> None:
    loc = storage.location(uri)
    assert (loc.account, loc.endpoint, loc.container, loc.blob) == (account, endpoint, "videos", "in.mp4")
    assert loc.display == uri


@pytest.mark.parametrize("name", ["with space.mp4", "ünïcødé 视频.mp4", "it's \"quoted\".mp4",
                                  "semi;colon.mp4", "what?.mp4", "hash#1.mp4", "az:x.mp4"])
def test_local_paths_with_any_characters(name: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "in dir" / name
    path.parent.mkdir()
    path.write_bytes(b"video")
    loc = storage.location(str(path))
    assert loc.is_local() and loc.local_path() == path
    assert loc.display == str(path) and loc.name == name
    assert loc.exists() and loc.read_bytes() == b"video"
    assert storage.location(str(path.parent)).list() == [name]
    assert storage.location(path.as_uri()).read_bytes() == b"video"  # file:// with percent-encoding
    monkeypatch.chdir(tmp_path)
    relative = storage.location(f"in dir/{name}")
    assert relative.read_bytes() == b"video"
    copy = storage.location(f"out dir/{name}")
    copy.upload(path)
    assert (tmp_path / "out dir" / name).read_bytes() == b"video"


def test_a_path_with_a_newline_still_prints_on_one_line(tmp_path: pathlib.Path) -> None:
    loc = storage.location(str(tmp_path / "evil\nname.mp4"))
    assert "\n" not in loc.display
    assert error_of(loc.read_bytes).startswith("not found: ")


@pytest.mark.parametrize("uri, reason", [
    ("", "empty"),
    ("az://", "no container"),
    ("az:///in.mp4", "no container"),
    ("az://Bad_Container/in.mp4", "container names"),
    ("az://videos/../in.mp4", "'..'"),
    ("az://videos/in.mp4?sv=1&sig=SeCrEt", "az:// takes no query string"),
    ("s3://bucket/in.mp4", "unsupported"),
    ("https://myacct.blob.core.windows.net", "no container"),
    ("https://myacct.blob.core.windows.net/videos/in.mp4?sv=1&token=SeCrEt", "not a SAS"),
    ("https://user:SeCrEt@myacct.blob.core.windows.net/videos/in.mp4", "credentials in the host"),
    ("https://myacct.blob.core.windows.net:notaport/videos/in.mp4?sig=SeCrEt", "bad host or port"),
    ("http://127.0.0.1:10000/Not_An_Account/videos/in.mp4", "not a storage account"),
    ("file://otherhost/srv/in.mp4", "file:///"),
    # the empty segment was dropped, and the URI named another blob (holiday/cat.mp4)
    ("az://videos/holiday//cat.mp4", "empty folder name ('//')"),
    ("https://myacct.blob.core.windows.net/videos/holiday//cat.mp4?sv=1&sig=SeCrEt", "empty folder name ('//')"),
])
def test_malformed_uris_are_one_line_errors_without_secrets(uri: str, reason: str) -> None:
    message = error_of(lambda: storage.location(uri))
    assert reason in message
    assert "SeCrEt" not in message


@pytest.mark.parametrize("uri, shown", [
    # '#' is a character of an az:// blob's name: the error named az://c/a, another blob
    ("az://c/a#b.mp4", "az://c/a#b.mp4"),
    ("az://Bad_Container/take#2.mp4", "az://Bad_Container/take#2.mp4"),
    # in a URL it starts a fragment, and the query is a SAS: neither is shown
    ("https://myacct.blob.core.windows.net/Bad_Container/in.mp4?sv=1&sig=SeCrEt", "blob.core.windows.net/Bad_Container/in.mp4:"),
    ("https://myacct.blob.core.windows.net/Bad_Container/in.mp4#frag", "blob.core.windows.net/Bad_Container/in.mp4:"),
])
def test_a_malformed_uri_is_named_as_given_but_for_its_query(uri: str, shown: str) -> None:
    message = error_of(lambda: storage.location(uri))
    assert shown in message and "SeCrEt" not in message and "frag" not in message, message


# --------------------------------------------------------------------------- credential selection


def credential_cases(azurite, container: str) -> dict[str, tuple[dict[str, str], str]]:
    """case → (environment, uri). In each pair of sources only one secret is valid, so the read
    succeeds exactly when the higher-priority source is the valid one."""
    good_cs = azurite.connection_string
    bad_cs = good_cs.replace(azurite.key, BAD_KEY)
    az_uri = f"az://{container}/clip.mp4"
    url = f"{azurite.endpoint}/{container}/clip.mp4"
    account = {"AZURE_STORAGE_ACCOUNT": azurite.account, "AZURE_STORAGE_BLOB_ENDPOINT": azurite.endpoint}
    good_sas, bad_sas = container_sas(azurite, container), container_sas(azurite, container, BAD_KEY)
    return {
        "url sas (good) over connection string (bad)": ({"AZURE_STORAGE_CONNECTION_STRING": bad_cs}, f"{url}?{good_sas}"),
        "url sas (bad) over connection string (good)": ({"AZURE_STORAGE_CONNECTION_STRING": good_cs}, f"{url}?{bad_sas}"),
        "url without sas: connection string of its account": ({"AZURE_STORAGE_CONNECTION_STRING": good_cs}, url),
        "connection string (good) over account key (bad)": (
            {"AZURE_STORAGE_CONNECTION_STRING": good_cs, **account, "AZURE_STORAGE_KEY": BAD_KEY}, az_uri),
        "connection string (bad) over account key (good)": (
            {"AZURE_STORAGE_CONNECTION_STRING": bad_cs, **account, "AZURE_STORAGE_KEY": azurite.key}, az_uri),
        "sas token (good) over account key (bad)": (
            {**account, "AZURE_STORAGE_SAS_TOKEN": "?" + good_sas, "AZURE_STORAGE_KEY": BAD_KEY}, az_uri),
        "sas token (bad) over account key (good)": (
            {**account, "AZURE_STORAGE_SAS_TOKEN": bad_sas, "AZURE_STORAGE_KEY": azurite.key}, az_uri),
        "account key (good)": ({**account, "AZURE_STORAGE_KEY": azurite.key}, az_uri),
        "endpoint override (good) over the connection string's endpoint (closed)": (
            {"AZURE_STORAGE_CONNECTION_STRING": good_cs.replace(str(azurite.port), str(closed_port())),
             "AZURE_STORAGE_BLOB_ENDPOINT": azurite.endpoint}, az_uri),
    }


CREDENTIAL_CASES = [
    "url sas (good) over connection string (bad)",
    "url sas (bad) over connection string (good)",
    "url without sas: connection string of its account",
    "connection string (good) over account key (bad)",
    "connection string (bad) over account key (good)",
    "sas token (good) over account key (bad)",
    "sas token (bad) over account key (good)",
    "account key (good)",
    "endpoint override (good) over the connection string's endpoint (closed)",
]


@pytest.mark.azurite
@pytest.mark.parametrize("case", CREDENTIAL_CASES)
def test_credential_selection_order(case: str, azure_env, azurite, no_storage_env) -> None:
    azurite.service_client().get_blob_client(azure_env.container, "clip.mp4").upload_blob(b"video")
    env, uri = credential_cases(azurite, azure_env.container)[case]
    for name, value in env.items():
        no_storage_env.setenv(name, value)
    loc = storage.location(uri)
    if "(bad) over" in case:
        assert error_of(loc.read_bytes) == f"access denied to {loc.display}: check the storage credentials"
    else:
        assert loc.read_bytes() == b"video"
        loc.write_bytes(b"restyled")
        assert loc.read_bytes() == b"restyled"


def test_no_credentials_says_which_variables_to_set(no_storage_env) -> None:
    message = error_of(storage.location("az://videos/in.mp4").exists)
    assert message.startswith("no storage account configured for az://videos/in.mp4: set ")
    for var in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_SAS_TOKEN",
                "AZURE_STORAGE_KEY", "AZURE_FEDERATED_TOKEN_FILE"):
        assert var in message
    # and that the account alone is enough where the machine has an identity (a managed identity, az login)
    assert "AZURE_STORAGE_ACCOUNT alone" in message and "managed identity" in message


def test_account_alone_uses_the_workload_identity(
    no_storage_env, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """AZURE_STORAGE_ACCOUNT alone → DefaultAzureCredential, which picks up the workload identity
    that the AKS webhook injects. Here its token file was never mounted: one line, no warning dump."""
    no_storage_env.setattr(tuning, "settings", dataclasses.replace(tuning.settings, retry_total=0))
    for name, value in {
        "AZURE_STORAGE_ACCOUNT": "myacct",
        "AZURE_STORAGE_BLOB_ENDPOINT": f"https://127.0.0.1:{closed_port()}/myacct",
        "AZURE_TOKEN_CREDENTIALS": "WorkloadIdentityCredential",  # skip the slow IMDS probe
        "AZURE_CLIENT_ID": str(uuid.uuid4()),
        "AZURE_TENANT_ID": str(uuid.uuid4()),
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "not-mounted" / "azure-identity-token"),
    }.items():
        no_storage_env.setenv(name, value)
    loc = storage.location("az://videos/in.mp4")
    assert storage.resolve_credential(loc).source == "DefaultAzureCredential"
    message = error_of(loc.read_bytes)
    assert message.startswith(
        "could not get a token from an Azure identity (DefaultAzureCredential) for az://videos/in.mp4: set ")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_identity_over_plain_http_is_refused(no_storage_env) -> None:
    no_storage_env.setenv("AZURE_STORAGE_ACCOUNT", "devstoreaccount1")
    no_storage_env.setenv("AZURE_STORAGE_BLOB_ENDPOINT", "http://127.0.0.1:10000/devstoreaccount1")
    message = error_of(storage.location("az://videos/in.mp4").exists)
    assert message.startswith("cannot use an Azure identity over plain http for az://videos/in.mp4: set ")


# --------------------------------------------------------------------------- secrets never leak


@pytest.mark.azurite
def test_secrets_never_reach_logs_errors_or_reprs(
    azure_env, azurite, no_storage_env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="stylebatch")
    # an in-process CLI run earlier in the session points "stylebatch" at stderr only
    monkeypatch.setattr(logging.getLogger("stylebatch"), "propagate", True)
    container = azure_env.container
    sas = container_sas(azurite, container)
    signature = urllib.parse.parse_qs(sas)["sig"][0]
    bad_sas = container_sas(azurite, container, BAD_KEY)
    bad_signature = urllib.parse.parse_qs(bad_sas)["sig"][0]
    secrets = [signature, urllib.parse.quote(signature, safe=""), bad_signature,
               urllib.parse.quote(bad_signature, safe=""), azurite.key, BAD_KEY]
    seen: list[str] = []

    loc = storage.location(f"{azurite.endpoint}/{container}/in.mp4?{sas}")
    loc.write_bytes(b"video")
    assert loc.read_bytes() == b"video"
    seen += [repr(loc), str(loc), loc.display, repr(storage.resolve_credential(loc)), repr(loc.child("x"))]
    seen.append(error_of(loc.child("missing.mp4").read_bytes))
    seen.append(error_of(storage.location(f"{azurite.endpoint}/{container}/in.mp4?{bad_sas}").read_bytes))

    no_storage_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    keyed = storage.location(f"az://{container}/in.mp4")
    assert storage.location(f"az://{container}").list() == ["in.mp4"]
    seen += [repr(storage.resolve_credential(keyed)), error_of(keyed.child("missing").size)]
    no_storage_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string.replace(azurite.key, BAD_KEY))
    seen.append(error_of(keyed.read_bytes))
    no_storage_env.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName=x;AccountKey{azurite.key}")
    seen.append(error_of(keyed.read_bytes))

    assert loc.display in caplog.text  # the log was captured: what matters is what is not in it
    for secret in secrets:
        assert secret not in caplog.text
        for text in seen:
            assert secret not in text


# --------------------------------------------------------------------------- error messages


@pytest.mark.azurite
def test_access_denied_names_the_object(azure_env, azurite, no_storage_env) -> None:
    no_storage_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string.replace(azurite.key, BAD_KEY))
    loc = storage.location(f"az://{azure_env.container}/x.mp4")
    expected = f"access denied to az://{azure_env.container}/x.mp4: check the storage credentials"
    assert error_of(loc.read_bytes) == expected
    assert error_of(lambda: loc.write_bytes(b"x")) == expected
    assert error_of(loc.list) == expected


def test_connection_refused_is_one_line(no_storage_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "settings", dataclasses.replace(tuning.settings, retry_total=0))
    port = closed_port()
    no_storage_env.setenv("AZURE_STORAGE_CONNECTION_STRING", "UseDevelopmentStorage=true")
    no_storage_env.setenv("AZURE_STORAGE_BLOB_ENDPOINT", f"http://127.0.0.1:{port}/devstoreaccount1")
    loc = storage.location(f"http://127.0.0.1:{port}/devstoreaccount1/videos/in.mp4")
    assert error_of(loc.read_bytes) == (
        f"cannot reach blob storage at 127.0.0.1:{port} to read "
        f"http://127.0.0.1:{port}/devstoreaccount1/videos/in.mp4: connection refused"
    )


def test_malformed_account_key_is_named_without_quoting_it(no_storage_env) -> None:
    no_storage_env.setenv("AZURE_STORAGE_CONNECTION_STRING",
                          "AccountName=devstoreaccount1;AccountKey=SeCrEt*not-base64!;"
                          "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1")
    assert error_of(storage.location("az://videos/in.mp4").read_bytes) == (
        "cannot sign requests for az://videos/in.mp4: the account key in AZURE_STORAGE_CONNECTION_STRING is malformed")


@pytest.mark.parametrize("connection, field", [
    ("AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=htp:/127.0.0.1:10000/devstoreaccount1", "BlobEndpoint"),
    ("AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=127.0.0.1:10000", "BlobEndpoint"),
    ("AccountName=acct;AccountKey=a2V5;DefaultEndpointsProtocol=ftp", "DefaultEndpointsProtocol or EndpointSuffix"),
    ("BlobEndpoint=https://;SharedAccessSignature=sv=1&sig=SeCrEt", "BlobEndpoint"),
])
def test_a_malformed_endpoint_in_the_connection_string_is_named_not_the_account_key(no_storage_env, connection,
                                                                                    field) -> None:
    """BlobEndpoint=htp:/bad was reported as 'the account key ... is malformed': the wrong field."""
    no_storage_env.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
    message = error_of(storage.location("az://videos/in.mp4").read_bytes)
    assert message == f"AZURE_STORAGE_CONNECTION_STRING is malformed: its {field} makes no http(s) URL of a host"
    assert "SeCrEt" not in message and "a2V5" not in message


def test_azurite_missing_fails_with_the_setup_command(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    import azurite_fixture

    monkeypatch.setattr(azurite_fixture, "REPO", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"run scripts/setup.sh --test"):
        azurite_fixture._azurite_binary()


def test_reading_a_folder_is_an_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "folder").mkdir()
    loc = storage.location(str(tmp_path / "folder"))
    assert error_of(loc.read_bytes) == f"{tmp_path / 'folder'} is a folder, not a file"
    assert error_of(loc.size) == f"{tmp_path / 'folder'} is a folder, not a file"


@pytest.mark.parametrize("need, free, words", [
    (2_000_000, 200_000, "it needs about 2 MB, 0.2 MB is free"),  # said "2 MB, 1 MB is free"
    (5_000_000_000, 1_200_000_000, "it needs about 5000 MB, 1200 MB is free"),
    (900_000, 800, "it needs about 0.9 MB, 800 bytes is free"),
])
def test_the_space_check_before_muxing_says_sizes_under_a_megabyte_as_they_are(monkeypatch, tmp_path, need, free,
                                                                                words):
    import shutil

    from stylebatch import postprocess

    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10 * need, 0, free))
    with pytest.raises(StylebatchError) as info:
        postprocess._check_space(tmp_path, need, "the temp folder")
    assert str(info.value) == f"not enough space in the temp folder to build the output: {words}"
