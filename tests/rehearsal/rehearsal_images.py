"""The images the rehearsal runs, built from the repository's unmodified Dockerfiles without any
registry: the base is Debian made with debootstrap (from the mirror this machine's apt uses) and
imported, and the build's pip is configured the way pip is on this machine (its indexes, links,
certificate), handed over as build secrets, never as layers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from rehearsal_engine import Engine

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"  # the suite of the Dockerfiles' default base, python:3.11-slim-bookworm
BASE_PACKAGES = ("python3", "python3-venv")  # what the default base has that minbase lacks
BASE_TAG = f"stylebatch-rehearsal-base:{SUITE}"
WORKER_TAG = "stylebatch-worker:rehearsal-cpu"
OPERATOR_TAG = "stylebatch-operator:rehearsal"
# apt settings of this machine that the base's own apt needs too (an old snapshot mirror, a proxy)
APT_SETTINGS = re.compile(r"^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy(::[^ ]+)?) ")


def debian_mirror() -> str:
    """The first Debian (not security) archive in this machine's apt sources."""
    sources = Path("/etc/apt")
    for path in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            uris = words[1:] if words[:1] == ["URIs:"] else [w for w in words[1:2] if words[:1] == ["deb"]]
            for uri in uris:
                if uri.startswith("http") and "security" not in uri:
                    return uri
    return "http://deb.debian.org/debian"


def apt_settings() -> str:
    dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True).stdout
    return "".join(line + "\n" for line in dump.splitlines() if APT_SETTINGS.match(line))


def base_image(engine: Engine, cache: Path, log: Path) -> str:
    """BASE_TAG in the engine: from its own store, else from the cached root filesystem, else made
    with debootstrap now (a few minutes) and cached."""
    if engine.has_image(BASE_TAG):
        return BASE_TAG
    mirror, settings = debian_mirror(), apt_settings()
    key = hashlib.sha256(repr((SUITE, BASE_PACKAGES, mirror, settings)).encode()).hexdigest()[:12]
    tarball = cache / f"base-{SUITE}-{key}.tar"
    if not tarball.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix="debootstrap-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            with open(log, "ab") as out:
                subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                                SUITE, str(rootfs), mirror], stdout=out, stderr=subprocess.STDOUT, check=True,
                               timeout=1200)
            (rootfs / "etc/apt/apt.conf.d/99stylebatch-rehearsal").write_text(settings)
            for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
                subprocess.run(["find", str(rootfs / leftovers), "-type", "f", "-delete"], check=True)
            subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", f"{tarball}.part", "."], check=True)
            Path(f"{tarball}.part").rename(tarball)
    engine.run("import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', str(tarball), BASE_TAG,
               timeout=600)
    return BASE_TAG


# --- pip's configuration, carried into the build ------------------------------------------------

FIXED_PORT = 47391  # where the build's pip finds this machine's local packages (127.0.0.1, host network)
SCOPE_ORDER = {"global": 0, "user": 1, "site": 2, ":env:": 3}  # later wins, as pip reads them
LIST_KEYS = ("extra-index-url", "find-links", "trusted-host")
KEPT_KEYS = ("index-url", *LIST_KEYS, "proxy", "cert", "timeout", "default-timeout", "retries")


def pip_config() -> dict[str, str]:
    """This machine's effective pip settings (config files and PIP_* variables), as `pip config
    list` shows them."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         check=True).stdout
    found: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        match = re.match(r"^(.*?)\.([\w-]+)='(.*)'$", line)
        if not match:
            continue
        scope, key, value = match.groups()
        rank = SCOPE_ORDER.get(scope, 1)
        if key in KEPT_KEYS and rank >= found.get(key, (-1, ""))[0]:
            found[key] = (rank, value)
    return {key: value for key, (_, value) in found.items()}


@dataclass
class PipBuild:
    """What `docker build` gets: build secrets (pip.conf, pip-cert) and TORCH_INDEX_URL."""
    secrets: dict[str, Path] = field(default_factory=dict)
    torch_index_url: str = ""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def pip_for_build(workdir: Path) -> Iterator[PipBuild]:
    """pip.conf for the build, equal to this machine's pip settings; local folders and file://
    indexes are served read-only over HTTP on 127.0.0.1 for the block (builds use the host's
    network). The pinned CPU torch found among the local links becomes TORCH_INDEX_URL."""
    served = workdir / "served"
    served.mkdir(parents=True)
    handler = functools.partial(_Quiet, directory=str(served))
    try:  # a fixed port: TORCH_INDEX_URL is a build argument, and a new value rebuilds the torch layer
        server = http.server.ThreadingHTTPServer(("127.0.0.1", FIXED_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    base = f"http://127.0.0.1:{server.server_port}"
    names = iter(range(1000))

    def serve(location: str) -> str:
        if not location.startswith("file:") and "://" in location:
            return location  # already a URL the build can reach
        path = Path(urlparse(location).path if location.startswith("file:") else location).resolve()
        # The folder above is served too: an index's pages may link to ../../files/<wheel>.
        link = served / f"d{next(names)}"
        link.symlink_to(path.parent)
        return f"{base}/{link.name}/{path.name}/"

    settings = pip_config()
    build = PipBuild()
    lines = ["[global]"]
    for key, value in settings.items():
        if key in ("index-url", "extra-index-url", "find-links"):
            value = " ".join(serve(v) for v in value.split())
        elif key == "cert":
            build.secrets["pip-cert"] = Path(value)
            value = "/run/secrets/pip-cert"
        lines.append(f"{key} = {value}")
    conf = workdir / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    build.secrets["pip.conf"] = conf

    torch = re.search(r"^torch==([\w.]+)", (REPO / "constraints.txt").read_text(), re.M)
    for links in settings.get("find-links", "").split():
        path = Path(urlparse(links).path if links.startswith("file:") else links)
        wheels = sorted(path.glob(f"torch-{torch.group(1)}+cpu-*.whl")) if torch and path.is_dir() else []
        if wheels:
            (served / "torch" / "torch").mkdir(parents=True)
            (served / "torch" / "torch" / wheels[-1].name).symlink_to(wheels[-1])
            build.torch_index_url = f"{base}/torch/"
            break

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield build
    finally:
        server.shutdown()
        server.server_close()


def build_image(engine: Engine, dockerfile: str, tag: str, build_args: dict[str, str], pip: PipBuild,
                log: Path) -> float:
    """`docker build` from the repository; the seconds it took. Fails with the build's last lines."""
    args = ["build", "-f", str(REPO / dockerfile), "-t", tag, "--network", "host", "--progress", "plain"]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    for name, path in pip.secrets.items():
        args += ["--secret", f"id={name},src={path}"]
    start = time.monotonic()
    proc = engine.run(*args, str(REPO), check=False, timeout=2400)
    with open(log, "a") as out:
        out.write(f"\n$ docker {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"building {dockerfile} failed (full log: {log}):\n{proc.stderr[-4000:]}")
    return time.monotonic() - start


def image_size(engine: Engine, tag: str) -> int:
    return int(engine.inspect("image", tag)["Size"])
