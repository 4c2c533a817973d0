"""API requests and memory of the operator per StyleTransferJob, with many jobs running at once,
against kmock (the same Kubernetes emulator the operator tests use); prints a markdown table.

    .venv/bin/python benchmarks/bench_operator.py                       # 10 jobs, 60 s window
    .venv/bin/python benchmarks/bench_operator.py --jobs 500 --settle-timeout 1800   # where kmock keeps up
    .venv/bin/python benchmarks/bench_operator.py --progress-interval 10 30   # side by side

The operator runs as `stylebatch operator --namespace media` in its own process, with the production
reconcile interval (10 s), so its memory is its own (VmRSS, read from /proc). This script plays the
Job controller and the MPI Operator: it completes every preprocess Job, starts a launcher pod for
every MPIJob, and its ranks report progress every 20 s, so that all jobs end up Stylizing, the
phase that costs the most API calls (the launcher log, and status patches as progress moves). Then
it counts the operator's requests (kopf's and its own) over --window seconds, per job and minute, by
kind. On a busy machine the reconciliations come less often than every 10 s, so the table also
gives requests per reconciliation (each starts by reading its job) and what that makes at the
nominal 6 reconciliations a minute. Memory per job is (VmRSS with N jobs - VmRSS with none) / N.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from stylebatch.progress import RankProgress, format_line  # noqa: E402
from stylebatch_operator.crd import crd  # noqa: E402
from test_operator_kopf import (  # noqa: E402  (the tests' kmock server and helpers)
    JOBS, MPIJOBS, NS, PODS, ApiServer, apply_job, api_server, kubeconfig_env,
)

PROGRESS_EVERY = 20.0  # seconds between two progress lines of the simulated ranks


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def by_operator(request: Any) -> bool:
    return not (request.headers.get("User-Agent") or "").startswith("kmock/")


def kind_of(request: Any) -> str:
    """GET styletransferjobs/x, LIST pods, WATCH ..., PATCH .../status: what a request costs."""
    if not (request.resource and request.resource.plural):
        return f"{request.method.value} (discovery)"
    verb = request.method.value
    if verb == "GET":
        verb = "WATCH" if request.params.get("watch") == "true" else "GET" if request.name else "LIST"
    what = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
    return f"{verb} {what}"


async def play_controllers(api: ApiServer, stop: asyncio.Event) -> None:
    """The Job controller and the MPI Operator, as far as the operator can tell."""
    done: set[str] = set()
    started: set[str] = set()
    last_progress = time.monotonic()
    step = 0
    while not stop.is_set():
        for (resource, _, name), obj in list(api.objects.items()):
            if obj.deleted:
                continue
            if resource.plural == "jobs" and name.endswith("-preprocess-1") and name not in done:
                resp = await api.patch(f"{JOBS}/{name}/status", json={"status": {"conditions": [
                    {"type": "Complete", "status": "True"}]}}, headers={"Content-Type": "application/merge-patch+json"})
                resp.release()
                done.add(name)
            elif resource.plural == "mpijobs" and name not in started:
                labels = {**obj.raw["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["metadata"]["labels"],
                          "training.kubeflow.org/job-name": name, "training.kubeflow.org/job-role": "launcher"}
                resp = await api.post(PODS, json={"apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": f"{name}-launcher-abcde", "namespace": NS, "labels": labels}, "status": {"phase": "Running"}})
                resp.release()
                started.add(name)
        if time.monotonic() - last_progress >= PROGRESS_EVERY:  # every launcher's log moves on
            step += 1
            api.launcher_log += "".join(format_line(RankProgress(r, 2, min(50, 5 * step + r), 50, 100)) + "\n"
                                        for r in range(2))
            last_progress = time.monotonic()
        await asyncio.sleep(0.5)


def stylizing(api: ApiServer) -> int:
    return sum(1 for (resource, _, _), obj in list(api.objects.items())
               if resource.plural == "styletransferjobs" and not obj.deleted
               and ((obj.raw.get("status") or {}).get("progress") or {}).get("framesTotal"))


async def measure(jobs: int, window: float, progress_interval: float, settle_timeout: float) -> dict[str, Any]:
    async with api_server(install_crd=crd()) as api:
        api.launcher_log = "".join(format_line(RankProgress(r, 2, r, 50, 100)) + "\n" for r in range(2))
        with tempfile.TemporaryDirectory() as tmp:
            env = kubeconfig_env(api, Path(tmp))
            env.update(STYLEBATCH_OPERATOR_INTERVAL="10", STYLEBATCH_PROGRESS_INTERVAL=str(progress_interval),
                       STYLEBATCH_STORAGE_SECRET="stylebatch-storage")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "stylebatch", "operator", "--namespace", NS, "--liveness-port", str(free_port()),
                env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            stop = asyncio.Event()
            controllers = asyncio.create_task(play_controllers(api, stop))
            try:
                await asyncio.sleep(8)  # started, watching, idle
                idle_rss = rss_mib(proc.pid)
                t0 = time.monotonic()
                for i in range(jobs):
                    try:
                        await asyncio.wait_for(apply_job(api, name=f"video-{i:04d}"), 60)
                    except asyncio.TimeoutError:
                        raise SystemExit(f"kmock stopped answering after {i} jobs: try fewer --jobs") from None
                while (count := stylizing(api)) < jobs:
                    print(f"{time.monotonic() - t0:.0f}s: {count} of {jobs} jobs Stylizing", file=sys.stderr, flush=True)
                    if time.monotonic() - t0 > settle_timeout:
                        raise SystemExit(f"only {stylizing(api)} of {jobs} jobs reached Stylizing in {settle_timeout:.0f}s")
                    await asyncio.sleep(5)
                settled = time.monotonic() - t0
                await asyncio.sleep(10)  # one full reconcile interval in the steady state
                first = len(list(api))
                await asyncio.sleep(window)
                requests = [r for r in list(api)[first:] if by_operator(r)]
                busy_rss = rss_mib(proc.pid)
            finally:
                stop.set()
                await controllers
                proc.terminate()
                await proc.wait()
    minutes = window / 60
    kinds = collections.Counter(kind_of(r) for r in requests)
    looks = kinds["GET styletransferjobs"] / jobs / minutes  # every reconciliation reads the job first
    return {"jobs": jobs, "progress_interval": progress_interval, "settled_s": settled,
            "per_job_minute": len(requests) / jobs / minutes, "looks": looks,
            "per_look": len(requests) / jobs / minutes / looks if looks else 0.0,
            "kinds": {k: n / jobs / minutes for k, n in kinds.most_common()},
            "idle_rss": idle_rss, "busy_rss": busy_rss, "rss_per_job_kib": (busy_rss - idle_rss) * 1024 / jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 500 is the target; kmock stalls with a few dozen jobs on a 2-core machine (docs/benchmarks.md)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of steady state to count")
    parser.add_argument("--progress-interval", type=float, nargs="+", default=[30.0],
                        help="STYLEBATCH_PROGRESS_INTERVAL values to compare (10 = every reconciliation)")
    parser.add_argument("--settle-timeout", type=float, default=600.0)
    args = parser.parse_args()
    results = [asyncio.run(measure(args.jobs, args.window, p, args.settle_timeout)) for p in args.progress_interval]
    print(f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"{args.jobs} jobs Stylizing, reconcile interval 10 s, {args.window:.0f} s counted\n")
    print("| progress read every | requests / job / minute | reconciliations / job / minute | requests / "
          "reconciliation | at 6 reconciliations / minute (10 s) | operator RSS idle | with the jobs | RSS / job | "
          "all jobs Stylizing after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['progress_interval']:.0f} s | {r['per_job_minute']:.1f} | {r['looks']:.1f} | {r['per_look']:.2f} | "
              f"{6 * r['per_look']:.1f} | {r['idle_rss']:.0f} MiB | {r['busy_rss']:.0f} MiB | "
              f"{r['rss_per_job_kib']:.0f} KiB | {r['settled_s']:.0f} s |")
    for r in results:
        print(f"\nBy request, per job and minute (progress read every {r['progress_interval']:.0f} s):\n")
        print("| request | per job / minute |")
        print("|---|---|")
        for kind, rate in r["kinds"].items():
            print(f"| `{kind}` | {rate:.2f} |")


if __name__ == "__main__":
    main()
