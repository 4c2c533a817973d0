"""Credentials go only where they belong: a credential from the environment reaches its own
account's endpoint and nothing else, whatever host a URL names."""

from __future__ import annotations

import base64
import http.server
import os
import threading
from pathlib import Path
from typing import Iterator

import pytest
from clips import error_lines, stylebatch

from stylebatch import storage
from stylebatch.errors import StylebatchError

ACCOUNT = "prodaccount"
KEY = base64.b64encode(b"the production account key, 64 bytes long, never to leave home!!").decode()
SAS = "sv=2023-11-03&ss=b&srt=sco&sp=rwdlac&se=2099-01-01T00:00:00Z&sig=SiGnAtUrE%2Bproduction%3D"
SECRETS = ("sig=", "SiGnAtUrE", "SharedKey", "Bearer", KEY)

ENV_CREDENTIALS = {
    "connection string": {"AZURE_STORAGE_CONNECTION_STRING":
                          f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={KEY};"
                          "EndpointSuffix=core.windows.net"},
    "account and sas token": {"AZURE_STORAGE_ACCOUNT": ACCOUNT, "AZURE_STORAGE_SAS_TOKEN": "?" + SAS},
    "account and key": {"AZURE_STORAGE_ACCOUNT": ACCOUNT, "AZURE_STORAGE_KEY": KEY},
}


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request 404 and keeps its request line and headers."""

    seen: list[str] = []

    def _any(self) -> None:
        Recorder.seen.append(f"{self.requestline}\n{self.headers}")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            Recorder.seen.append(self.rfile.read(length).decode("latin-1"))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = do_CONNECT = _any

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[int]:
    """A foreign host on 127.0.0.1 that records everything it receives; yields its port."""
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AZURE_") and k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    return {**env, **extra}


def foreign_urls(port: int) -> dict[str, tuple[str, dict[str, str]]]:
    """URL shape -> (URL of a blob on a foreign host that mentions the account, extra environment)."""
    return {
        # the account in the path of another host, as Azurite URLs have it
        "path-style on another host": (f"http://127.0.0.1:{port}/{ACCOUNT}/videos/clip.mp4", {}),
        # the account as the first label of another domain; the proxy routes it to the listener
        "account-named subdomain of another host": (
            f"http://{ACCOUNT}.attacker.example/videos/clip.mp4", {"HTTP_PROXY": f"http://127.0.0.1:{port}"}),
    }


def refused(message: str) -> bool:
    """The refusal to send a credential: to another account's endpoint, or to a host that is no Blob
    Storage endpoint at all (said as such: a web address)."""
    return "not that account's endpoint" in message or "is no Azure Blob Storage endpoint (no credentials" in message


@pytest.mark.parametrize("uri, said", [
    ("https://upload.wikimedia.org/wikipedia/commons/e/ea/Starry_Night.jpg",
     "https://upload.wikimedia.org is no Azure Blob Storage endpoint (no credentials are sent to it): stylebatch "
     "reads local files, az:// URIs and blob URLs (https://<account>.blob.core.windows.net/...); download the file "
     "first"),
    ("http://example.com/starry.jpg", "container names are 3-63 lowercase letters, digits and single hyphens "
     "(example.com is no Azure Blob Storage endpoint: stylebatch reads local files, az:// URIs and blob URLs"),
])
@pytest.mark.parametrize("flag", ["--style", "input"])
def test_a_web_address_for_a_painting_or_a_video_says_to_download_it_first(uri, said, flag, tmp_path, clip) -> None:
    """A web address was 'refusing to send the credentials of storage account 'upload' (DefaultAzureCredential)'
    with no credentials configured, or 'container names are 3-63 lowercase letters': true, and no help."""
    out = tmp_path / "out.mp4"
    argv = ["run", uri, "-o", out] if flag == "input" else ["run", clip("in.mp4"), "-o", out, "--style", uri]
    result = stylebatch(*argv, env=clean_env(), timeout=120)
    assert result.returncode == 2 and len(error_lines(result)) == 1 and said in error_lines(result)[0], result.stderr
    assert not out.exists()


@pytest.mark.parametrize("shape", ["path-style on another host", "account-named subdomain of another host"])
@pytest.mark.parametrize("credential", list(ENV_CREDENTIALS))
def test_an_environment_credential_never_reaches_a_foreign_host_named_as_the_output(
    credential: str, shape: str, listener: int, tmp_path: Path, clip
) -> None:
    url, extra = foreign_urls(listener)[shape]
    env = clean_env(**ENV_CREDENTIALS[credential], **extra)
    result = stylebatch("run", clip("in.mp4"), "-o", url, "--work", tmp_path / "work", env=env, timeout=120)
    received = "\n".join(Recorder.seen)
    for secret in SECRETS:
        assert secret not in received
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1 and "Traceback" not in result.stderr
    assert refused(error_lines(result)[0])
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("shape", ["path-style on another host", "account-named subdomain of another host"])
def test_an_environment_sas_never_reaches_a_foreign_host_named_as_the_input(
    shape: str, listener: int, tmp_path: Path
) -> None:
    url, extra = foreign_urls(listener)[shape]
    env = clean_env(**ENV_CREDENTIALS["account and sas token"], **extra)
    result = stylebatch("preprocess", url, "--work", tmp_path / "work", "-o", tmp_path / "out.mp4", env=env,
                        timeout=120)
    assert all(secret not in "\n".join(Recorder.seen) for secret in SECRETS)
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert SAS not in result.stderr and "SiGnAtUrE" not in result.stderr


@pytest.fixture
def no_storage_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("AZURE_"):
            monkeypatch.delenv(name)
    storage.clear_client_cache()
    return monkeypatch


@pytest.mark.parametrize("env, uri, endpoint", [
    ({"AZURE_STORAGE_ACCOUNT": ACCOUNT, "AZURE_STORAGE_KEY": KEY},
     f"https://{ACCOUNT}.blob.core.windows.net/videos/in.mp4", f"https://{ACCOUNT}.blob.core.windows.net"),
    ({"AZURE_STORAGE_ACCOUNT": ACCOUNT, "AZURE_STORAGE_KEY": KEY},
     f"HTTPS://{ACCOUNT.upper()}.Blob.Core.Windows.Net:443/videos/in.mp4",
     f"https://{ACCOUNT}.blob.core.windows.net:443"),
    ({"AZURE_STORAGE_ACCOUNT": ACCOUNT, "AZURE_STORAGE_KEY": KEY,
      "AZURE_STORAGE_BLOB_ENDPOINT": f"http://azurite:10000/{ACCOUNT}/"},
     f"http://azurite:10000/{ACCOUNT}/videos/in.mp4", f"http://azurite:10000/{ACCOUNT}"),
    ({"AZURE_STORAGE_CONNECTION_STRING": f"AccountName={ACCOUNT};AccountKey={KEY};"
                                         f"BlobEndpoint=http://10.0.0.5:10000/{ACCOUNT}"},
     f"http://10.0.0.5:10000/{ACCOUNT}/videos/in.mp4", f"http://10.0.0.5:10000/{ACCOUNT}"),
    ({}, f"https://{ACCOUNT}.blob.core.windows.net/videos/in.mp4", f"https://{ACCOUNT}.blob.core.windows.net"),
    ({"AZURE_STORAGE_ACCOUNT": ACCOUNT, "AZURE_STORAGE_KEY": KEY},
     f"https://attacker.example/{ACCOUNT}/videos/in.mp4?{SAS}", None),  # the URL's own SAS: the user's choice
])
def test_credentials_go_to_the_accounts_own_endpoints(env: dict, uri: str, endpoint: str | None,
                                                       no_storage_env) -> None:
    for name, value in env.items():
        no_storage_env.setenv(name, value)
    loc = storage.location(uri)
    assert storage.resolve_credential(loc).endpoint == (endpoint or loc.endpoint)


@pytest.mark.parametrize("env, uri", [
    ({"AZURE_STORAGE_ACCOUNT": ACCOUNT, "AZURE_STORAGE_SAS_TOKEN": SAS},
     f"https://{ACCOUNT}.blob.core.windows.net.attacker.example/videos/in.mp4"),
    ({"AZURE_STORAGE_ACCOUNT": ACCOUNT, "AZURE_STORAGE_KEY": KEY}, f"http://{ACCOUNT}.blob.core.windows.net/videos/in.mp4"),
    ({"AZURE_STORAGE_ACCOUNT": ACCOUNT, "AZURE_STORAGE_KEY": KEY,
      "AZURE_STORAGE_BLOB_ENDPOINT": f"http://azurite:10000/{ACCOUNT}"}, f"http://azurite:10001/{ACCOUNT}/videos/in.mp4"),
    ({"AZURE_STORAGE_CONNECTION_STRING": f"AccountName={ACCOUNT};AccountKey={KEY};"
                                         f"BlobEndpoint=http://10.0.0.5:10000/{ACCOUNT}"},
     f"http://10.0.0.6:10000/{ACCOUNT}/videos/in.mp4"),
    # no credential in the environment: an Azure identity's token goes to Azure's own hosts only
    ({}, f"https://{ACCOUNT}.attacker.example/videos/in.mp4"),
    ({"AZURE_STORAGE_ACCOUNT": ACCOUNT}, f"https://10.0.0.5/{ACCOUNT}/videos/in.mp4"),
])
def test_no_credential_for_a_host_that_only_mentions_the_account(env: dict, uri: str, no_storage_env) -> None:
    for name, value in env.items():
        no_storage_env.setenv(name, value)
    loc = storage.location(uri)
    with pytest.raises(StylebatchError) as info:
        storage.resolve_credential(loc)
    message = str(info.value)
    assert refused(message) and "\n" not in message
    assert KEY not in message and "SiGnAtUrE" not in message
