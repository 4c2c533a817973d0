"""The image recipes, checked without a container engine: what they copy exists and is not ignored,
what they install is pinned the README's way, what they start exists, and the worker's sshd setup
matches what the Kubeflow MPI Operator mounts and runs. (The rehearsal tier, tests/rehearsal/,
builds both images and runs whole jobs through them.)"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from stylebatch.cli import build_parser
from stylebatch.contract import no_topology_file
from stylebatch_operator import manifests as mpi

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
CONSTRAINTS = (ROOT / "constraints.txt").read_text()
MPI_HOME = "/home/mpiuser"  # the MPIJob's sshAuthMountPath is <home>/.ssh
BUILD_TOOLS = {"gcc", "g++", "make", "build-essential", "cmake", "clang", "git", "curl", "wget"}


@dataclass
class Instruction:
    stage: int
    op: str
    args: str
    heredoc: str = ""


def parse(name: str) -> list[Instruction]:
    """Dockerfile -> instructions, with continuation lines joined and heredoc bodies attached."""
    lines = (ROOT / name).read_text().splitlines()
    out: list[Instruction] = []
    stage, i = -1, 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        op, _, args = line.partition(" ")
        op = op.upper()
        body = ""
        if match := re.search(r"<<-?[\"']?(\w+)[\"']?", args):
            end = lines.index(match.group(1), i)
            body, i = "\n".join(lines[i:end]), end + 1
        if op == "FROM":
            stage += 1
        out.append(Instruction(stage, op, args.strip(), body))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(ins.stage for ins in instructions)
    return [ins for ins in instructions if ins.stage == last]


def arg_default(instructions: list[Instruction], name: str) -> str:
    for ins in instructions:
        if ins.op == "ARG" and ins.args.startswith(f"{name}="):
            return ins.args.split("=", 1)[1]
    raise AssertionError(f"no default for ARG {name}")


def runs(instructions: list[Instruction]) -> str:
    return "\n".join(ins.args for ins in instructions if ins.op == "RUN")


def dockerignored(path: str) -> bool:
    """Docker's rules: the last matching pattern wins, `!` re-includes."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/").removeprefix("**/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(Path(p).name, pattern) for p in prefixes):
            ignored = not negate
    return ignored


IMAGES = ["Dockerfile.worker", "Dockerfile.operator"]


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_everything_copied_from_the_context_exists_and_is_sent(dockerfile):
    copies = [ins for ins in parse(dockerfile) if ins.op in ("COPY", "ADD")]
    sources = [
        src
        for ins in copies
        if "--from=" not in ins.args and "<<" not in ins.args
        for src in shlex.split(ins.args)[:-1]
        if not src.startswith("--")
    ]
    assert sources, "expected the recipe to copy the project in"
    for src in sources:
        assert (ROOT / src).exists(), f"{dockerfile} copies {src}, which is not in the repository"
        assert not dockerignored(src), f"{dockerfile} copies {src}, but .dockerignore leaves it out"


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    for path in [".venv/bin/python", ".git/config", "samples/sample.mp4", ".cache/azurite", "tests/conftest.py",
                 "worker/stylebatch/__pycache__/cli.cpython-311.pyc",
                 "worker/stylebatch/_native.cpython-311-x86_64-linux-gnu.so"]:  # built here, for this machine
        assert dockerignored(path), path
    # setuptools needs the readme named in pyproject.toml to build the package.
    assert not dockerignored(PYPROJECT["project"]["readme"])
    assert not dockerignored("setup.py")  # the worker's C instance norm


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_base_image_is_pinned_to_a_python_release_and_shared(dockerfile):
    instructions = parse(dockerfile)
    base = arg_default(instructions, "PYTHON_IMAGE")
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert base == arg_default(parse(IMAGES[0]), "PYTHON_IMAGE"), "both images should share one base"
    assert all(ins.args.split()[0] == "${PYTHON_IMAGE}" for ins in instructions if ins.op == "FROM")


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_pip_installs_go_through_the_constraints(dockerfile):
    commands = [c for c in re.split(r"&&|;|\n", runs(parse(dockerfile))) if re.search(r"\bpip install\b", c)]
    assert commands
    for command in commands:
        assert "-c constraints.txt" in command, f"unconstrained install: {command.strip()}"
    assert not re.search(r"torch\s*[=<>~]=", runs(parse(dockerfile))), "torch's version belongs in constraints.txt"


def test_worker_torch_comes_from_the_pytorch_index_for_gpu_and_cpu():
    worker = parse("Dockerfile.worker")
    script = runs(worker)
    assert re.search(r"^torch==\d", CONSTRAINTS, re.M), "constraints.txt must pin torch"
    assert 'gpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}"' in script
    assert 'cpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"' in script
    assert arg_default(worker, "TORCH_INDEX_URL") == "", "empty: the variant's PyTorch index"
    assert arg_default(worker, "VARIANT") == "gpu"


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_only_torch_comes_from_the_torch_index_and_pip_keeps_its_own_configuration(dockerfile):
    # --index-url would replace the index pip is configured with (a mirror, a proxy): never used.
    script = runs(parse(dockerfile))
    assert "--index-url" not in script.replace("--extra-index-url", "")
    extra = [c for c in re.split(r"&&|\n", script) if "--extra-index-url" in c]
    assert all(re.search(r"--no-deps\b.*\btorch$", c.strip()) for c in extra), extra
    # pip's own configuration comes as a build secret on every pip run, never as an ARG or ENV (a
    # token in an index URL would stay in the image's history)
    pip_runs = [ins.args for ins in parse(dockerfile) if ins.op == "RUN" and "pip install" in ins.args]
    assert pip_runs and all("--mount=type=secret,id=pip.conf,target=/etc/pip.conf" in r for r in pip_runs)
    declared = [ins.args for ins in parse(dockerfile) if ins.op in ("ARG", "ENV")]
    assert not [d for d in declared if re.search(r"PIP_(INDEX|EXTRA|CERT|FIND|TRUSTED|PROXY)", d)]


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_recipes_build_offline_with_the_engines_own_dockerfile_syntax(dockerfile):
    # `# syntax=` makes BuildKit pull a frontend image first; heredocs need that newer frontend.
    text = (ROOT / dockerfile).read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    assert not [ins for ins in parse(dockerfile) if "<<" in ins.args]
    assert arg_default(parse(dockerfile), "PYTHON_IMAGE"), "the base is a build argument"


def test_each_image_installs_its_own_extra_and_the_operator_never_gets_torch():
    assert '".[worker]"' in runs(parse("Dockerfile.worker"))
    operator = runs(parse("Dockerfile.operator"))
    installs = [c for c in re.split(r"&&|\n", operator) if "pip install" in c]
    assert any('".[operator]"' in c for c in installs)
    assert not any("torch" in c or "[worker]" in c for c in installs)
    assert '! python -c "import torch"' in operator, "the build should fail if torch sneaks in"
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert not any(dep.startswith("torch") for dep in extras["operator"] + PYPROJECT["project"]["dependencies"])


def test_worker_extra_brings_the_mpi_the_image_relies_on():
    deps = {re.split(r"[\s<>=~!\[]", dep, maxsplit=1)[0].lower() for dep in PYPROJECT["project"]["optional-dependencies"]["worker"]}
    assert {"mpi4py", "mpich"} <= deps, "the worker image gets MPICH (mpiexec, libmpi) only through .[worker]"


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_final_stage_has_no_build_tools(dockerfile):
    final = final_stage(parse(dockerfile))
    installed = set(re.findall(r"[\w.+-]+", " ".join(
        re.findall(r"apt-get install ([^&;]+)", runs(final)))))
    assert not installed & BUILD_TOOLS
    assert not {pkg for pkg in installed if pkg.endswith("-dev")}
    assert "pip install" not in runs(final), "install in the build stage, copy the venv"
    assert any(ins.op == "COPY" and "--from=build /opt/venv" in ins.args for ins in final)


@pytest.mark.parametrize("dockerfile,uid", [("Dockerfile.worker", 1000), ("Dockerfile.operator", 65532)])
def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile, uid):
    # A numeric USER lets the kubelet enforce runAsNonRoot without a runAsUser in the pod.
    users = [ins.args for ins in final_stage(parse(dockerfile)) if ins.op == "USER"]
    assert users and users[-1] == f"{uid}:{uid}"
    assert re.search(rf"useradd --uid {uid}\b", runs(final_stage(parse(dockerfile))))


@pytest.mark.parametrize("dockerfile,title", [("Dockerfile.worker", "stylebatch-worker"),
                                              ("Dockerfile.operator", "stylebatch-operator")])
def test_images_carry_oci_labels_with_the_package_version(dockerfile, title):
    final = final_stage(parse(dockerfile))
    labels = " ".join(ins.args for ins in final if ins.op == "LABEL")
    assert arg_default(final, "VERSION") == VERSION
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert f'org.opencontainers.image.title="{title}"' in labels
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


def test_operator_image_starts_the_operator_subcommand():
    final = final_stage(parse("Dockerfile.operator"))
    entry = [ins.args for ins in final if ins.op == "ENTRYPOINT"][-1]
    cmd = [ins.args for ins in final if ins.op == "CMD"][-1]
    assert entry == '["stylebatch"]' and cmd == '["operator"]'
    assert "stylebatch" in PYPROJECT["project"]["scripts"]
    subcommands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    assert "operator" in subcommands


def test_worker_image_runs_the_cli_under_an_init():
    final = final_stage(parse("Dockerfile.worker"))
    assert re.search(r"apt-get install [^&]*\btini\b", runs(final))
    assert [ins.args for ins in final if ins.op == "CMD"][-1].startswith('["stylebatch"')
    env = " ".join(ins.args for ins in final if ins.op == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env


def _copied(target: str) -> dict[str, str]:
    """The file the worker image installs at `target`, as `Key value` settings."""
    ins = next(i for i in parse("Dockerfile.worker") if i.op == "COPY" and i.args.endswith(f" {target}"))
    source = ROOT / shlex.split(ins.args)[0]
    return {k: v for k, _, v in (line.strip().partition(" ") for line in source.read_text().splitlines())
            if k and not k.startswith("#")}


def test_worker_image_matches_the_mpijob_the_operator_builds():
    final = final_stage(parse("Dockerfile.worker"))
    home = str(Path(mpi.SSH_AUTH_MOUNT_PATH).parent)
    assert re.search(rf"useradd --uid {mpi.RUN_AS_USER} .*--home-dir {home} ", runs(final))
    assert [ins.args for ins in final if ins.op == "WORKDIR"][-1] == home
    config = mpi.SSHD_COMMAND[mpi.SSHD_COMMAND.index("-f") + 1]
    assert int(_copied(config)["Port"]) == mpi.SSHD_PORT
    # the workers' command is the package's stylebatch-sshd, installed into the image's venv
    script = Path(mpi.SSHD_COMMAND[0])
    assert script.parent == Path("/opt/venv/bin") and script.name in PYPROJECT["project"]["scripts"]
    assert [ins.args for ins in final if ins.op == "EXPOSE"] == [str(mpi.SSHD_PORT)]
    # The operator passes whole command lines (`mpiexec ...`, `stylebatch preprocess ...`) as args.
    assert [ins.args for ins in final if ins.op == "ENTRYPOINT"][-1] == '["/usr/bin/tini", "--"]'


def test_sshd_runs_unprivileged_with_the_job_key():
    sshd = _copied(f"{MPI_HOME}/.sshd_config")
    assert int(sshd["Port"]) >= 1024, "a non-root sshd cannot bind a privileged port"
    # The MPI Operator mounts its Secret (private key as id_rsa) at sshAuthMountPath, read-only, root-owned.
    assert sshd["HostKey"] == f"{MPI_HOME}/.ssh/id_rsa"
    assert sshd["AuthorizedKeysFile"] == f"{MPI_HOME}/.ssh/authorized_keys"
    assert sshd["StrictModes"] == "no" and sshd["UsePAM"] == "no" and sshd["PidFile"] == "none"
    assert sshd["PasswordAuthentication"] == "no" and sshd["PermitRootLogin"] == "no"
    assert sshd["AllowUsers"] == "mpiuser"
    assert sshd["SetEnv"].startswith("PATH=/opt/venv/bin:"), "ranks started over ssh need the venv"
    # the hydra proxies the launcher starts over ssh write no topology file, as the launcher's own would not
    assert f"HWLOC_XMLFILE={no_topology_file(mpi.SCRATCH_PATH)}" in sshd["SetEnv"].split()
    # The MPI Operator's default worker command is a bare `sshd -De`: it must read the same config.
    assert _copied("/etc/ssh/sshd_config.d/stylebatch.conf") == {"Include": f"{MPI_HOME}/.sshd_config"}
    assert "/etc/ssh/ssh_host_*" in runs(parse("Dockerfile.worker")), \
        "host keys baked into the image would be shared by every cluster"


def test_launcher_ssh_client_reaches_the_workers_sshd():
    client = _copied("/etc/ssh/ssh_config.d/stylebatch.conf")
    assert client["Port"] == _copied(f"{MPI_HOME}/.sshd_config")["Port"]
    assert client["StrictHostKeyChecking"] == "no" and client["UserKnownHostsFile"] == "/dev/null"


def test_no_stage_needs_the_ffmpeg_command_line_tool():
    # The image relies on PyAV's bundled FFmpeg libraries; a stage that shells out to ffmpeg or
    # ffprobe would need Debian's ffmpeg installed in Dockerfile.worker.
    calls = [p.name for p in (ROOT / "worker" / "stylebatch").rglob("*.py")
             if re.search(r"""(subprocess|Popen|check_call|check_output|os\.system)[^\n]*["'](ffmpeg|ffprobe)\b""",
                          p.read_text())]
    installs_ffmpeg = re.search(r"apt-get install[^&]*\bffmpeg\b", runs(parse("Dockerfile.worker")))
    assert not calls or installs_ffmpeg, f"{calls} run the ffmpeg CLI, which the worker image lacks"


def test_worker_image_needs_nothing_the_hardened_job_pods_take_away():
    final = final_stage(parse("Dockerfile.worker"))
    context = mpi.POD_SECURITY_CONTEXT
    assert [ins.args for ins in final if ins.op == "USER"][-1] == f"{context['runAsUser']}:{context['runAsGroup']}"
    # Pods drop every capability and set no_new_privs (allowPrivilegeEscalation: false), which void
    # file capabilities and setuid bits: nothing in the image may rely on them.
    assert not re.search(r"\bsetcap\b|chmod [^&;\n]*(\b[ugo]*\+[rwx]*s|\b[0-7]?[4-7][0-7]{3}\b)", runs(final))
    # The non-root sshd binds an unprivileged port and writes no pid file; Hydra's ranks start over
    # ssh as the same user: no capability, no root.
    sshd = _copied(f"{MPI_HOME}/.sshd_config")
    assert int(sshd["Port"]) >= 1024 and sshd["PidFile"] == "none"


def test_the_worker_image_builds_the_c_instance_norm_in_its_build_stage_only():
    """The worker image's CPU norms are the C kernel's (2-4x torch's operations): the build stage has a
    compiler and the build fails if the kernel was not built; the final stage gets the library only."""
    instructions = parse("Dockerfile.worker")
    final = final_stage(instructions)
    build = instructions[:len(instructions) - len(final)]
    installed = " ".join(re.findall(r"apt-get install ([^&;]+)", runs(build)))
    assert {"gcc", "libc6-dev"} <= set(installed.split())
    assert "native.available()" in runs(build), "a build whose compiler failed would paint at torch's speed"


@pytest.mark.parametrize("compiler, built", [("cc", True), ("/bin/false", False)])
def test_the_package_installs_with_or_without_a_c_compiler(tmp_path, compiler, built):
    """pip builds the C instance norm where there is a compiler; where there is none (or it fails) the
    package still installs, and its norms are torch's operations (fast_nets, native)."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "source"  # the sources only: no library or build folder left by an earlier build
    keep_out = shutil.ignore_patterns("*.so", "__pycache__", "build", "*.egg-info")
    for part in ("worker", "operator"):
        shutil.copytree(ROOT / part, source / part, ignore=keep_out)
    for part in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / part, source / part)
    env = {**os.environ, "CC": compiler}
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "wheels"), str(source)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "wheels").glob("stylebatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    libraries = [n for n in names if n.startswith("stylebatch/_native") and n.endswith(".so")]
    assert bool(libraries) == built
    assert "stylebatch/native.py" in names and "stylebatch/fast_nets.py" in names
