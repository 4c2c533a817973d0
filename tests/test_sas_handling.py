"""SAS tokens given in URLs: they work for every stage, are never written to the work dir, and a token
that cannot write the output is found before any work."""

from __future__ import annotations

import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

import pytest
from azurite_fixture import sas
from clips import FAST_STYLE, count_frames, error_lines, stylebatch

from stylebatch import storage
from stylebatch.errors import StylebatchError


def only_the_sas(azure_env) -> dict[str, str]:
    """The subprocess environment without the connection string: the SAS in the URLs is all there is."""
    return {k: v for k, v in azure_env.env.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}


@pytest.fixture(autouse=True)
def fresh_clients() -> None:
    storage.clear_client_cache()


@pytest.mark.slow
@pytest.mark.azurite
@pytest.mark.parametrize("work_on", ["blob", "local"])
def test_a_sas_given_in_urls_works_in_every_stage_and_is_never_written_to_the_work_dir(
    work_on: str, azure_env, clip, tmp_path: Path
) -> None:
    az, container = azure_env.azurite, azure_env.container
    token = sas(az, container)
    signature = urllib.parse.parse_qs(token)["sig"][0]
    base = f"{az.endpoint}/{container}"
    src = clip("in.mp4", size=(64, 48), frames=8)
    storage.location(f"{base}/in.mp4?{token}").upload(src)
    work = f"{base}/work/job1?{token}" if work_on == "blob" else str(tmp_path / "work")
    # two ranks: the stylize processes need the work dir's SAS too, and get it without a command line
    result = stylebatch("run", f"{base}/in.mp4?{token}", "-o", f"{base}/out.mp4?{token}", "--work", work,
                        "--keep-work", "--workers", "2", "--chunk-frames", "4", *FAST_STYLE,
                        env=only_the_sas(azure_env))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out.mp4"
    storage.location(f"{base}/out.mp4?{token}").download(out)
    assert count_frames(out) == 8
    kept = storage.location(work)
    names = kept.list()
    assert "manifest.json" in names and any(n.startswith("parts/") for n in names)
    for name in names:
        data = kept.child(name).read_bytes()
        for secret in (signature.encode(), urllib.parse.quote(signature, safe="").encode(), b"sig="):
            assert secret not in data, f"{name} holds the SAS"
    manifest = kept.child("manifest.json").read_bytes().decode()
    assert f'"output":"{base}/out.mp4"' in manifest


@pytest.mark.slow
@pytest.mark.azurite
def test_a_published_video_whose_work_dir_cannot_be_deleted_is_a_success_with_a_warning(azure_env, clip) -> None:
    """A SAS without delete permission (or an immutable container) for --work: the video was published,
    then the run ended in 'access denied' with exit 2, and the same again on every run."""
    az, container = azure_env.azurite, azure_env.container
    token = sas(az, container, permissions="racwl")
    base = f"{az.endpoint}/{container}"
    az.service_client().get_container_client(container).upload_blob(
        "in.mp4", clip("in.mp4", size=(64, 48), frames=8).read_bytes())
    result = stylebatch("run", f"{base}/in.mp4?{token}", "-o", f"{base}/out/x.mp4?{token}", "--work",
                        f"{base}/wnd?{token}", *FAST_STYLE, env=only_the_sas(azure_env), timeout=180)
    assert result.returncode == 0, result.stderr
    assert error_lines(result) == []
    assert f"stylebatch: warning: {base}/out/x.mp4 is written, but the work dir {base}/wnd was not deleted (" \
        in result.stderr and "delete it yourself" in result.stderr
    names = [b.name for b in az.service_client().get_container_client(container).list_blobs()]
    assert "out/x.mp4" in names and not any("write-check" in n for n in names)


@pytest.mark.slow
@pytest.mark.azurite
def test_a_read_only_style_sas_in_the_outputs_container_leaves_the_output_its_own_write_sas(
        azure_env, clip, tmp_path: Path) -> None:
    """`run IN?RW -o OUT?RW --style STYLE?RO`, all three in one container, no connection string: the
    style, parsed last, took the container's carried SAS, and the output's write check (a marker
    beside it, written in the preprocess child that has the URLs without their query) was refused
    with the style's read-only token: exit 2 'cannot write ...out/x2.mp4'."""
    az, container = azure_env.azurite, azure_env.container
    rw, ro = sas(az, container), sas(az, container, permissions="rl")
    base = f"{az.endpoint}/{container}"
    blobs = az.service_client().get_container_client(container)
    blobs.upload_blob("in.mp4", clip("in.mp4", size=(64, 48), frames=4).read_bytes())
    blobs.upload_blob("styles/p.jpg", Path("/usr/share/doc/opencv-doc/examples/data/starry_night.jpg").read_bytes())
    result = stylebatch("run", f"{base}/in.mp4?{rw}", "-o", f"{base}/out/x2.mp4?{rw}", "--style",
                        f"{base}/styles/p.jpg?{ro}", "--max-side", "48", "--work", tmp_path / "work",
                        env=only_the_sas(azure_env), timeout=240)
    assert result.returncode == 0, result.stderr
    names = [b.name for b in blobs.list_blobs()]
    assert "out/x2.mp4" in names and not any("write-check" in n for n in names)
    for token in (rw, ro):
        assert urllib.parse.parse_qs(token)["sig"][0] not in result.stderr + result.stdout


@pytest.mark.parametrize("given", [
    ["in/a.mp4?sr=c&sp=racwdl&sig=RW", "out/x.mp4?sr=c&sp=racwdl&sig=RW", "styles/p.jpg?sr=c&sp=rl&sig=RO"],
    ["in/a.mp4?sr=c&sp=rl&sig=RO", "out/x.mp4?sr=c&sp=racwdl&sig=RW"],
    ["out/p.jpg?sr=c&sp=rl&sig=RO", "out/x.mp4?sr=c&sp=racwdl&sig=RW", "out/q.jpg?sr=c&sp=rl&sig=RO2"],
])
def test_blobs_made_beside_the_output_take_its_sas_not_a_read_only_one_given_later(given, monkeypatch) -> None:
    """What stylebatch makes where no URL gave a SAS (the write check's marker and a lock beside the
    output, a --work without a SAS) falls back on a container SAS given with another URL: never on a
    read-only one given after the output's (a --style), in this process and in the child stages."""
    from stylebatch.storage.credentials import CARRIED_SAS_ENV, carried_sas, carried_sas_env, resolve_credential

    base = "https://acct.blob.core.windows.net/videos"
    for key in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for url in given:
        storage.location(f"{base}/{url}")
    for child in (False, True):
        if child:
            env = carried_sas_env()
            storage.clear_client_cache()
            monkeypatch.setenv(CARRIED_SAS_ENV, env[CARRIED_SAS_ENV])  # as the child sees them
        for name in ("out/.stylebatch-write-check-0123", "out/x.mp4.lock", "work/job/manifest.json"):
            assert carried_sas(storage.location(f"{base}/{name}")) == "sr=c&sp=racwdl&sig=RW", (child, name)
        for url in given:  # each URL's own blob keeps its own SAS
            assert resolve_credential(storage.location(f"{base}/{url.partition('?')[0]}")).secret == \
                url.partition("?")[2]


@pytest.mark.azurite
@pytest.mark.parametrize("case, token_of, problem", [
    ("read-only container SAS", lambda az, c: sas(az, c, permissions="rl"),
     "does not allow writing (its permissions are sp='rl'; writing needs w)"),
    ("expired SAS", lambda az, c: sas(az, c, hours=-1), "expired at "),
    ("read-only blob SAS", lambda az, c: sas(az, c, permissions="r", blob="out.mp4"),
     "does not allow writing (its permissions are sp='r'; writing needs w)"),
    ("revoked SAS (signed with another key)", lambda az, c: sas(az, c, key="bm90IHRoZSBrZXk="),
     "the storage credential (the URL) does not allow writing there (read-only, expired or revoked)"),
])
def test_an_output_sas_that_cannot_write_is_found_in_the_preflight_checks(
    case: str, token_of, problem: str, azure_env, clip, tmp_path: Path
) -> None:
    az, container = azure_env.azurite, azure_env.container
    url = f"{az.endpoint}/{container}/out.mp4"
    result = stylebatch("run", clip("in.mp4", size=(64, 48), frames=8), "-o", f"{url}?{token_of(az, container)}",
                        "--work", tmp_path / "work", *FAST_STYLE, env=only_the_sas(azure_env), timeout=120)
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [f"stylebatch: error: cannot write {url}: {error_lines(result)[0].split(': ', 3)[3]}"]
    assert problem in error_lines(result)[0]
    assert "stylizing" not in result.stderr and "preprocessed" not in result.stderr  # before any work
    assert not (tmp_path / "work").exists()
    assert [b.name for b in az.service_client().get_container_client(container).list_blobs()] == []


@pytest.mark.azurite
def test_the_write_check_passes_for_writable_credentials_and_leaves_nothing_behind(azure_env) -> None:
    """A SAS without delete permission left its marker blob in the user's output folder, one a run."""
    az, container = azure_env.azurite, azure_env.container
    for uri in (f"az://{container}/done/out.mp4",  # the connection string's key
                f"{az.endpoint}/{container}/done/out.mp4?{sas(az, container, permissions='cw')}",  # no delete
                f"{az.endpoint}/{container}/done/out.mp4?{sas(az, container, permissions='racwl')}",
                f"{az.endpoint}/{container}/out.mp4?{sas(az, container, permissions='cw', blob='out.mp4')}"):
        storage.location(uri).check_writable()
    assert [b.name for b in az.service_client().get_container_client(container).list_blobs()] == []


@pytest.mark.azurite
@pytest.mark.parametrize("case, token", [
    ("a blob SAS signed for another blob", lambda az, c: sas(az, c, permissions="rcw", blob="other.mp4")),
    ("a container SAS signed with another key (rotated since)",
     lambda az, c: sas(az, c, permissions="racwl", key="QUJD" * 22)),
])
def test_a_sas_the_storage_does_not_accept_for_the_output_is_refused_before_any_work(azure_env, case, token):
    """It was written with nothing checked, and failed with 'access denied' after the whole stylize."""
    az, container = azure_env.azurite, azure_env.container
    url = f"{az.endpoint}/{container}/out.mp4"
    with pytest.raises(StylebatchError, match="is not valid for it"):
        storage.location(f"{url}?{token(az, container)}").check_writable()


def test_a_sas_is_judged_by_its_own_fields_without_quoting_its_signature() -> None:
    from stylebatch.storage.credentials import sas_write_problem

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert sas_write_problem("sv=2023-11-03&sp=racwdl&se=2026-01-02T00:00:00Z&sig=AbC", now) is None
    assert sas_write_problem("sp=rl&se=2026-01-02T00:00:00Z&sig=AbC", now) == \
        "does not allow writing (its permissions are sp='rl'; writing needs w)"
    assert sas_write_problem("?sp=rw&se=2025-12-31&sig=AbC", now) == "expired at 2025-12-31"
    assert sas_write_problem("sig=AbC&si=policy", now) is None  # a stored access policy: only the service knows


@pytest.mark.parametrize("granted, asked, carried", [
    ("https://acct.blob.core.windows.net/videos/in.mp4?sr=c&sp=rl&sig=C",
     "https://acct.blob.core.windows.net/videos/work/manifest.json", True),
    ("https://acct.blob.core.windows.net/videos/out.mp4?sr=b&sp=w&sig=B",
     "https://acct.blob.core.windows.net/videos/out.mp4", True),
    ("https://acct.blob.core.windows.net/videos/out.mp4?sr=b&sp=w&sig=B",
     "https://acct.blob.core.windows.net/videos/out.mp4.bak", False),
    ("https://acct.blob.core.windows.net/videos/jobs?sr=d&sdd=1&sp=rw&sig=D",
     "https://acct.blob.core.windows.net/videos/jobs/1/manifest.json", True),
    ("https://acct.blob.core.windows.net/videos/jobs?sr=d&sdd=1&sp=rw&sig=D",
     "https://acct.blob.core.windows.net/videos/jobs2/manifest.json", False),
    ("https://acct.blob.core.windows.net/videos/in.mp4?sr=c&sp=rl&sig=C",
     "https://acct.blob.core.windows.net/other/in.mp4", False),
    ("https://acct.blob.core.windows.net/videos/in.mp4?sr=c&sp=rl&sig=C",
     "https://evil.blob.core.windows.net/videos/in.mp4", False),
])
def test_a_url_without_its_sas_finds_the_sas_given_for_it_earlier(granted: str, asked: str, carried: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """What a later stage does with a URI read back from the work dir (stored without its query)."""
    from stylebatch.storage.credentials import CARRIED_SAS_ENV, carried_sas, carried_sas_env

    storage.location(granted)
    expected = granted.partition("?")[2] if carried else None
    assert carried_sas(storage.location(asked)) == expected
    env = carried_sas_env()  # what `stylebatch run` hands its stylize ranks
    storage.clear_client_cache()
    assert carried_sas(storage.location(asked)) is None
    monkeypatch.setenv(CARRIED_SAS_ENV, env[CARRIED_SAS_ENV])
    assert carried_sas(storage.location(asked)) == expected


@pytest.mark.parametrize("environment, used", [
    ({"AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=S0VZ;"
                                         "EndpointSuffix=core.windows.net"}, "AZURE_STORAGE_CONNECTION_STRING"),
    ({"AZURE_STORAGE_ACCOUNT": "acct", "AZURE_STORAGE_KEY": "S0VZ"}, "AZURE_STORAGE_KEY"),
    ({}, "the URL"),  # nothing else: the container SAS given with the input
])
def test_a_url_given_without_a_sas_uses_the_environments_credential_before_another_urls_sas(
        environment, used, monkeypatch) -> None:
    """`run IN?<read-only container SAS> -o OUT` (no SAS) with a connection string that could write:
    the output was refused as 'the SAS token (the URL) does not allow writing'."""
    from stylebatch.storage.credentials import resolve_credential

    for key in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
                "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_BLOB_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    storage.location("https://acct.blob.core.windows.net/videos/in.mp4?sr=c&sp=rl&sig=C")
    assert resolve_credential(storage.location("https://acct.blob.core.windows.net/videos/out/x.mp4")).source == used
    # what is under a URL given with a container SAS keeps that SAS, whatever the environment has
    storage.location("https://acct.blob.core.windows.net/videos/work?sr=c&sp=racwdl&sig=W")
    work_file = resolve_credential(storage.location("https://acct.blob.core.windows.net/videos/work/manifest.json"))
    assert (work_file.source, work_file.secret) == ("the URL", "sr=c&sp=racwdl&sig=W")


def test_each_url_given_finds_its_own_sas_again_when_two_grant_the_same_container(monkeypatch) -> None:
    """An input URL with a read-only container SAS and an output URL with a write-only one: the
    preprocess child (given the URLs without their query) reads the input with the input's SAS and
    writes the output with the output's; the work dir takes the last one given for the container."""
    from stylebatch.storage.credentials import CARRIED_SAS_ENV, carried_sas, carried_sas_env

    base = "https://acct.blob.core.windows.net/videos"
    storage.location(f"{base}/in/a.mp4?sr=c&sp=rl&sig=READ")
    storage.location(f"{base}/out/a.mp4?sr=c&sp=cw&sig=WRITE")
    env = carried_sas_env()
    storage.clear_client_cache()
    monkeypatch.setenv(CARRIED_SAS_ENV, env[CARRIED_SAS_ENV])  # as the child sees them
    assert carried_sas(storage.location(f"{base}/in/a.mp4")) == "sr=c&sp=rl&sig=READ"
    assert carried_sas(storage.location(f"{base}/out/a.mp4")) == "sr=c&sp=cw&sig=WRITE"
    assert carried_sas(storage.location(f"{base}/work/manifest.json")) == "sr=c&sp=cw&sig=WRITE"


def test_a_carried_sas_never_overrides_the_urls_own(monkeypatch: pytest.MonkeyPatch) -> None:
    storage.location("https://acct.blob.core.windows.net/videos/in.mp4?sr=c&sp=rl&sig=OLD")
    loc = storage.location("https://acct.blob.core.windows.net/videos/out.mp4?sr=b&sp=w&sig=NEW")
    assert storage.resolve_credential(loc).secret == "sr=b&sp=w&sig=NEW"
    with pytest.raises(StylebatchError):
        storage.location("https://acct.blob.core.windows.net/videos/x.mp4?sp=r")  # not a SAS: refused as before


def test_calls_that_overlap_keep_each_others_sas_until_the_last_ends_and_then_forget_them() -> None:
    """Two stylize_video calls in threads of one service: the first to end must not take the second's
    token away while it still runs (its work dir's URIs are read back without one), and once both
    ended neither token signs a later call's URLs; one given before them is kept."""
    from stylebatch.storage.credentials import carried_sas, url_sas_of_this_call

    base = "https://acct.blob.core.windows.net"
    storage.location(f"{base}/kept/in.mp4?sr=c&sp=rl&sig=BEFORE")
    first, second = url_sas_of_this_call(), url_sas_of_this_call()
    first.__enter__()
    storage.location(f"{base}/first/in.mp4?sr=c&sp=rl&sig=A")
    second.__enter__()
    storage.location(f"{base}/second/in.mp4?sr=c&sp=rl&sig=B")
    first.__exit__(None, None, None)
    assert carried_sas(storage.location(f"{base}/second/work/manifest.json")) == "sr=c&sp=rl&sig=B"
    second.__exit__(None, None, None)
    after = [carried_sas(storage.location(f"{base}/{c}/work/manifest.json")) for c in ("first", "second", "kept")]
    assert after == [None, None, "sr=c&sp=rl&sig=BEFORE"]


@pytest.mark.parametrize("style, words", [
    ("https://acct.blob.core.windows.net/styles/x.pth?sv=2024&sig=S3CR3T:-1", "finite numbers, 0 or more"),
    ("https://acct.blob.core.windows.net/styles/x.pth?sv=2024&sig=S3CR3T:0", "are all zero"),
    ("https://acct.blob.core.windows.net/styles/x.pth?sv=2024&sig=S3CR3T:-1,lavender-gold", "finite numbers, 0 or more"),
])
def test_a_malformed_style_blend_is_one_line_without_the_sas_of_its_blob(style: str, words: str, clip,
                                                                         tmp_path: Path) -> None:
    result = stylebatch("run", clip("in.mp4", size=(64, 48), frames=2), "-o", tmp_path / "out.mp4", "--style", style)
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert words in error_lines(result)[0] and "acct.blob.core.windows.net/styles/x.pth" in error_lines(result)[0]
    assert "S3CR3T" not in result.stderr + result.stdout and "sig=" not in result.stderr
