"""API requests, response bytes and memory of the operator per StyleTransferJob, with 10, 100 and
500 jobs running at once (side by side); prints markdown tables.

    .venv/bin/python benchmarks/bench_operator.py                          # 10, 100 and 500 jobs
    .venv/bin/python benchmarks/bench_operator.py --jobs 10 --window 60 --progress-interval 10 30

The operator runs as `stylebatch operator --namespace media` in its own process, with the production
reconcile interval (10 s), against benchmarks/apiserver.py (a recording API server that stays fast
with thousands of objects; kmock, the operator tests' emulator, stops answering with a few dozen
jobs). This script plays the Job controller, the MPI Operator and the kubelet: it completes every
preprocess Job (leaving its Succeeded pod), gives every MPIJob a Running status, a launcher and a
pod per worker (full pod specs and statuses from the templates, so the bytes are realistic), and
the ranks report progress every 20 s, so that all jobs end up Stylizing, the phase that costs the
most API calls (the launcher log, and status patches as progress moves). Then it counts the
operator's requests (kopf's and its own) and the bytes the server sent it over --window seconds,
per job and minute, by kind, and the operator's CPU time. On a busy machine reconciliations come less often than every 10 s, so
the table also gives requests per reconciliation (each starts by reading its job) and what that
makes at the nominal 6 reconciliations a minute. Memory per job is
(VmRSS with N jobs - VmRSS with none) / N.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apiserver import ApiServer, now  # noqa: E402
from stylebatch.progress import RankProgress, format_line  # noqa: E402
from stylebatch_operator.crd import apply_defaults, crd, openapi_schema  # noqa: E402
from stylebatch_operator.videowatch_crd import crd as videowatch_crd  # noqa: E402
from stylebatch_operator.names import MPI_LABEL_ROLE  # noqa: E402

NS = "media"
PROGRESS_EVERY = 20.0  # seconds between two progress lines of the simulated ranks
RANKS = 2


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod(owner: dict[str, Any], template: dict[str, Any], name: str, phase: str,
        role: str | None = None) -> dict[str, Any]:
    """A pod as the controller and the kubelet leave it: the template's spec and labels, the
    owner reference, a scheduled node and a full status."""
    labels = dict(template["metadata"].get("labels") or {})
    if role:
        labels.update({"training.kubeflow.org/job-name": owner["metadata"]["name"], MPI_LABEL_ROLE: role})
    spec = copy.deepcopy(template["spec"])
    spec.update(nodeName="aks-gpu-12345678-vmss000001", schedulerName="default-scheduler",
                serviceAccountName=spec.get("serviceAccountName", "default"), dnsPolicy="ClusterFirst",
                tolerations=[*spec.get("tolerations", []),
                             {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                              "tolerationSeconds": 300}])
    t = now()
    running = phase == "Running"
    state = ({"running": {"startedAt": t}} if running else
             {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": t, "finishedAt": t}})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels,
                     "annotations": dict(template["metadata"].get("annotations") or {}),
                     "ownerReferences": [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                          "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                                          "controller": True, "blockOwnerDeletion": True}]},
        "spec": spec,
        "status": {"phase": phase, "hostIP": "10.224.0.5", "podIP": "10.244.3.17", "startTime": t, "qosClass": "Burstable",
                   "conditions": [{"type": c, "status": "True" if running or c == "PodScheduled" else "False",
                                   "lastProbeTime": None, "lastTransitionTime": t}
                                  for c in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
                   "containerStatuses": [{"name": c["name"], "image": c.get("image", ""), "ready": running,
                                          "restartCount": 0, "started": running, "state": state,
                                          "imageID": "docker-pullable://" + c.get("image", "") + "@sha256:" + "0" * 64,
                                          "containerID": "containerd://" + "1" * 64}
                                         for c in spec.get("containers") or []]},
    }


async def play_controllers(api: ApiServer, stop: asyncio.Event) -> None:
    """The Job controller, the MPI Operator and the kubelet, as far as the operator can tell."""
    seen: set[tuple[str, str]] = set()
    last_progress, step = time.monotonic(), 0
    while not stop.is_set():
        for plural in ("jobs", "mpijobs"):
            for (_, name), obj in list(api.objects(plural).items()):
                if (plural, name) in seen:
                    continue
                seen.add((plural, name))
                obj = copy.deepcopy(obj)
                if plural == "jobs":
                    api.create("pods", pod(obj, obj["spec"]["template"], f"{name}-x7k2p", "Succeeded"))
                    obj["status"] = {"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now()}],
                                     "succeeded": 1, "startTime": now(), "completionTime": now()}
                    api.write(plural, obj)
                    continue
                specs = obj["spec"]["mpiReplicaSpecs"]
                api.create("pods", pod(obj, specs["Launcher"]["template"], f"{name}-launcher-abcde", "Running",
                                       "launcher"))
                for i in range(int(specs["Worker"].get("replicas") or 1)):
                    api.create("pods", pod(obj, specs["Worker"]["template"], f"{name}-worker-{i}", "Running", "worker"))
                t = now()
                obj["status"] = {"startTime": t, "conditions": [
                    {"type": "Created", "status": "True", "reason": "MPIJobCreated", "lastTransitionTime": t},
                    {"type": "Running", "status": "True", "reason": "MPIJobRunning", "lastTransitionTime": t}],
                    "replicaStatuses": {"Launcher": {"active": 1}, "Worker": {"active": 2}}}
                api.write(plural, obj)
        if time.monotonic() - last_progress >= PROGRESS_EVERY:  # every launcher's log moves on
            step += 1
            api.pod_log += "".join(format_line(RankProgress(r, RANKS, min(50, 2 * step + r), 50, 100)) + "\n"
                                   for r in range(RANKS))
            last_progress = time.monotonic()
        await asyncio.sleep(0.5)


def apply_job(api: ApiServer, name: str) -> None:
    """kubectl apply: the API server fills in the CRD's defaults."""
    body = {"apiVersion": "stylebatch.io/v1alpha1", "kind": "StyleTransferJob",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"input": f"az://videos/{name}.mp4", "output": f"az://videos/out/{name}.mp4", "workers": RANKS,
                     "storage": {"secretName": "stylebatch-storage"}}}
    api.create("styletransferjobs", apply_defaults(body, openapi_schema()))


def stylizing(api: ApiServer) -> int:
    return sum(1 for obj in list(api.objects("styletransferjobs").values())
               if ((obj.get("status") or {}).get("progress") or {}).get("framesTotal"))


def kubeconfig(api: ApiServer, tmp: Path) -> dict[str, str]:
    path = tmp / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": api.url}}],
        "users": [{"name": "bench", "user": {"token": "t0k3n"}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["KUBECONFIG"] = str(path)
    return env


async def measure(jobs: int, window: float, progress_interval: float, settle_timeout: float,
                  operator_log: str | None = None) -> dict[str, Any]:
    async with ApiServer() as api:
        for each in (crd(), videowatch_crd()):  # as `helm install` leaves them
            api.create("customresourcedefinitions", each)
        api.pod_log = "".join(format_line(RankProgress(r, RANKS, r, 50, 100)) + "\n" for r in range(RANKS))
        with tempfile.TemporaryDirectory() as tmp, open(operator_log or os.devnull, "ab") as log:
            env = kubeconfig(api, Path(tmp))
            env.update(STYLEBATCH_OPERATOR_INTERVAL="10", STYLEBATCH_PROGRESS_INTERVAL=str(progress_interval),
                       STYLEBATCH_JOB_DEFAULTS='{"storage": {"secretName": "stylebatch-storage"}}')
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "stylebatch", "operator", "--namespace", NS, "--liveness-port", str(free_port()),
                env=env, stdout=log, stderr=asyncio.subprocess.STDOUT)
            stop = asyncio.Event()
            controllers = asyncio.create_task(play_controllers(api, stop))
            try:
                await asyncio.sleep(8)  # started, watching, idle
                idle_rss = rss_mib(proc.pid)
                t0 = time.monotonic()
                for i in range(jobs):
                    apply_job(api, f"video-{i:04d}")
                while (count := stylizing(api)) < jobs:
                    print(f"{jobs} jobs, {time.monotonic() - t0:.0f}s: {count} Stylizing", file=sys.stderr, flush=True)
                    if time.monotonic() - t0 > settle_timeout:
                        raise SystemExit(f"only {count} of {jobs} jobs reached Stylizing in {settle_timeout:.0f}s")
                    await asyncio.sleep(5)
                settled = time.monotonic() - t0
                await asyncio.sleep(20)  # two full reconcile intervals in the steady state
                first, cpu0 = len(api.requests), cpu_seconds(proc.pid)
                # a watch opened before the window counts with the bytes it sent during the window
                watches = {id(r): r.sent for r in api.requests[:first] if r.kind.startswith("WATCH")}
                await asyncio.sleep(window)
                busy_rss, cpu = rss_mib(proc.pid), cpu_seconds(proc.pid) - cpu0
                sent: collections.Counter[str] = collections.Counter()
                for r in api.requests[:first]:
                    if id(r) in watches:
                        sent[r.kind] += r.sent - watches[id(r)]
                requests = api.requests[first:]
                for r in requests:
                    sent[r.kind] += r.sent
            finally:
                stop.set()
                await controllers
                proc.terminate()
                await proc.wait()
    minutes = window / 60
    kinds = collections.Counter(r.kind for r in requests)
    looks = kinds["GET styletransferjobs"] / jobs / minutes  # every reconciliation reads the job first
    total = len(requests) / jobs / minutes
    return {"jobs": jobs, "progress_interval": progress_interval, "settled_s": settled,
            "per_job_minute": total, "looks": looks, "per_look": total / looks if looks else 0.0,
            "bytes_per_job_minute": sum(sent.values()) / jobs / minutes,
            "kinds": {k: (kinds[k] / jobs / minutes, sent[k] / jobs / minutes) for k in sorted(set(kinds) | set(sent),
                                                                                              key=lambda k: -sent[k])},
            "cpu_percent": 100 * cpu / window, "cpu_ms_per_look": 1000 * cpu / (looks * jobs * minutes) if looks else 0.0,
            "idle_rss": idle_rss, "busy_rss": busy_rss, "rss_per_job_kib": (busy_rss - idle_rss) * 1024 / jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--window", type=float, default=60.0, help="seconds of steady state to count")
    parser.add_argument("--progress-interval", type=float, nargs="+", default=[30.0],
                        help="STYLEBATCH_PROGRESS_INTERVAL values to compare (10 = every reconciliation)")
    parser.add_argument("--settle-timeout", type=float, default=1200.0)
    parser.add_argument("--operator-log", help="append the operator's output to this file")
    args = parser.parse_args()
    results = [asyncio.run(measure(n, args.window, p, args.settle_timeout, args.operator_log))
               for p in args.progress_interval for n in args.jobs]
    load = os.getloadavg()[0]
    print(f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
          f"{load:.1f} at the end; reconcile interval 10 s, {args.window:.0f} s counted\n")
    print("| jobs Stylizing | progress read every | requests / job / minute | KiB / job / minute | "
          "reconciliations / job / minute | requests / reconciliation | at 6 reconciliations / minute (10 s) | "
          "operator CPU (one core = 100%) | CPU / reconciliation | "
          "operator RSS idle | with the jobs | RSS / job | all jobs Stylizing after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['jobs']} | {r['progress_interval']:.0f} s | {r['per_job_minute']:.1f} | "
              f"{r['bytes_per_job_minute'] / 1024:.1f} | {r['looks']:.1f} | {r['per_look']:.2f} | "
              f"{6 * r['per_look']:.1f} | {r['cpu_percent']:.0f}% | {r['cpu_ms_per_look']:.1f} ms | {r['idle_rss']:.0f} MiB | {r['busy_rss']:.0f} MiB | "
              f"{r['rss_per_job_kib']:.0f} KiB | {r['settled_s']:.0f} s |")
    kinds = list(dict.fromkeys(k for r in results for k in r["kinds"]))
    heads = [f"{r['jobs']} jobs" + (f", {r['progress_interval']:.0f} s" if len(args.progress_interval) > 1 else "")
             for r in results]
    print("\nBy request, per job and minute: requests (KiB sent)\n")
    print("| request | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(results))
    for kind in kinds:
        cells = [f"{r['kinds'][kind][0]:.2f} ({r['kinds'][kind][1] / 1024:.1f})" if kind in r["kinds"] else "0"
                 for r in results]
        print(f"| `{kind}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
