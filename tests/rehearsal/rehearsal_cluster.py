"""The cluster's part in the rehearsal, and nothing more: a small executor that plays the kubelet,
the Job controller and the Kubeflow MPI Operator (v2beta1, MPICH) against kmock.

It watches the Jobs and MPIJobs in kmock and runs each pod as a container of the local docker
engine, as Kubernetes would: the pod's command and args, env (secretKeyRef and envFrom read from the Secret in
kmock), securityContext (user, group, no capabilities, no_new_privs, read-only root), volumes
(emptyDir, Secret, ConfigMap) and memory/cpu limits. For an MPIJob it does what the MPI Operator
does: the ssh key Secret (ECDSA P-521) mounted at sshAuthMountPath, the hostfile ConfigMap at
/etc/mpi, worker pods `<mpijob>-worker-<i>` reachable by `<pod>.<mpijob>-worker.<ns>.svc`, the
launcher Job created once the workers are ready (WaitForWorkersReady), with the launcher's
environment (HYDRA_HOST_FILE, HYDRA_LAUNCH_EXTRA_ARGS, K_MPI_JOB_ROLE, NVIDIA_*), and its status
derived from the launcher Job as the MPI Operator derives it. What it writes back is what those
controllers write: pods with phases, conditions and container states (exit codes, reasons,
FallbackToLogsOnError messages), Job conditions, MPIJob conditions, and every pod's log (the
operator reads the launcher's for progress).

Not emulated (the operator's children do not use them): init containers, probes other than
tcpSocket, fieldRef/configMapKeyRef env, `$(VAR)` expansion, node scheduling and quotas.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from rehearsal_engine import LABEL, Engine

JOBS, MPIJOBS = "batch/v1/jobs", "kubeflow.org/v2beta1/mpijobs"
POD_LABEL = "io.stylebatch.rehearsal.pod"
MPI_ROLE, MPI_JOB_NAME = "training.kubeflow.org/job-role", "training.kubeflow.org/job-name"
LOG_LINES, LOG_BYTES = 80, 2048  # FallbackToLogsOnError: the log's last 80 lines, at most 2 KiB
GRACE_SECONDS = 30  # terminationGracePeriodSeconds' default


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodResult:
    phase: str  # Succeeded or Failed
    exit_code: int


@dataclass
class Cluster:
    api: Any  # the kmock ApiServer (test_operator_kopf.ApiServer)
    engine: Engine
    network: str
    extra_hosts: dict[str, str]  # name -> address, like a Service's DNS name
    scratch: Path  # emptyDir, Secret and ConfigMap volumes of the pods
    namespace: str
    logs: dict[str, str] = field(default_factory=dict)  # pod name -> its log so far
    containers: dict[str, str] = field(default_factory=dict)  # pod name -> container name
    _seen: set[tuple[str, str]] = field(default_factory=set)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    task: asyncio.Task | None = None  # run(), once started

    # --- the API side --------------------------------------------------------------------------

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        with contextlib.suppress(KeyError):
            obj = self.api.objects[resource, self.namespace, name]
            if not obj.deleted:
                return obj.raw
        return None

    def names(self, resource: str) -> list[str]:
        wanted = kmock.resource(resource)
        return [name for (res, ns, name), obj in list(self.api.objects.items())
                if (res.group, res.plural) == (wanted.group, wanted.plural) and ns == self.namespace
                and not obj.deleted]

    async def create(self, collection: str, obj: dict[str, Any]) -> None:
        obj["metadata"]["namespace"] = self.namespace
        resp = await self.api.post(f"{collection}", json=obj)
        assert resp.status == 200, await resp.text()

    async def patch_status(self, path: str, status: dict[str, Any]) -> None:
        """A status update; none for an object deleted meanwhile (the operator cleaning up)."""
        resp = await self.api.patch(f"{path}/status", json={"status": status},
                                    headers={"Content-Type": "application/merge-patch+json"})
        assert resp.status in (200, 404), await resp.text()

    async def delete(self, path: str) -> None:
        (await self.api.delete(path)).release()

    def path(self, kind: str, name: str = "") -> str:
        root = {"Pod": "/api/v1", "Secret": "/api/v1", "ConfigMap": "/api/v1", "Service": "/api/v1",
                "Job": "/apis/batch/v1", "MPIJob": "/apis/kubeflow.org/v2beta1"}[kind]
        plural = {"MPIJob": "mpijobs"}.get(kind, kind.lower() + "s")
        return f"{root}/namespaces/{self.namespace}/{plural}" + (f"/{name}" if name else "")

    async def serve_log(self, request: Any) -> bytes:
        """GET pods/<name>/log[?tailLines=N]: the container's output, like the kubelet's."""
        name = request.name
        container = self.containers.get(name)
        if container is not None:
            proc = await self._docker("logs", container, check=False)
            self.logs[name] = proc[1]
        text = self.logs.get(name, "")
        tail = request.params.get("tailLines")
        if tail:
            text = "".join(text.splitlines(keepends=True)[-int(tail):])
        return text.encode()

    # --- the controllers' loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: start each new Job and MPIJob's pods."""
        try:
            while True:
                for resource, runner in ((JOBS, self._run_job), (MPIJOBS, self._run_mpijob)):
                    for name in self.names(resource):
                        if (resource, name) not in self._seen:
                            self._seen.add((resource, name))
                            self._tasks.append(asyncio.create_task(runner(name), name=f"{resource}/{name}"))
                for task in self._tasks:
                    if task.done() and not task.cancelled() and task.exception():
                        raise task.exception()  # a bug in the executor fails the test
                await asyncio.sleep(0.2)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def check(self) -> None:
        """Raises what stopped the executor, if anything did (a bug, or docker refusing a pod)."""
        if self.task is not None and self.task.done() and not self.task.cancelled() and self.task.exception():
            raise self.task.exception()

    async def kill(self, pod: str, signal: str = "TERM") -> None:
        """What a node drain or `kubectl delete pod` does to the pod's container: SIGTERM (then
        SIGKILL after the grace period)."""
        await self._docker("kill", "--signal", signal, self.containers[pod])

    # --- the Job controller --------------------------------------------------------------------

    async def _run_job(self, name: str) -> None:
        job = self.get(JOBS, name)
        spec = job["spec"]
        uid = job["metadata"]["uid"]
        await self.patch_status(self.path("Job", name), {"startTime": now(), "active": 1})
        deadline = spec.get("activeDeadlineSeconds")
        failures = 0
        while True:
            pod_name = f"{name}-{secrets.token_hex(3)[:5]}"
            template = copy.deepcopy(spec["template"])
            labels = {**(template["metadata"].get("labels") or {}), "batch.kubernetes.io/job-name": name,
                      "job-name": name, "batch.kubernetes.io/controller-uid": uid, "controller-uid": uid}
            owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid, "controller": True}
            try:
                result = await asyncio.wait_for(self._run_pod(pod_name, labels, template["spec"], owner, name),
                                                timeout=deadline)
            except asyncio.TimeoutError:
                await self._stop(pod_name)
                await self._finish_job(name, False, "DeadlineExceeded", "Job was active longer than specified deadline")
                return
            if result is None:  # the Job went away
                return
            if result.phase == "Succeeded":
                await self._finish_job(name, True)
                return
            failures += 1
            if failures > int(spec.get("backoffLimit", 6)):
                await self._finish_job(name, False, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                return

    async def _finish_job(self, name: str, ok: bool, reason: str = "", message: str = "") -> None:
        t = now()
        if ok:
            conditions = [{"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                           "message": "Reached expected number of succeeded pods", "lastTransitionTime": t},
                          {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                           "message": "Reached expected number of succeeded pods", "lastTransitionTime": t}]
            status = {"active": 0, "succeeded": 1, "completionTime": t, "conditions": conditions}
        else:
            conditions = [{"type": "FailureTarget", "status": "True", "reason": reason, "message": message,
                           "lastTransitionTime": t},
                          {"type": "Failed", "status": "True", "reason": reason, "message": message,
                           "lastTransitionTime": t}]
            status = {"active": 0, "failed": 1, "conditions": conditions}
        if self.get(JOBS, name) is not None:
            await self.patch_status(self.path("Job", name), status)

    # --- the MPI Operator ----------------------------------------------------------------------

    async def _run_mpijob(self, name: str) -> None:
        mpijob = self.get(MPIJOBS, name)
        spec, uid = mpijob["spec"], mpijob["metadata"]["uid"]
        owner = {"apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob", "name": name, "uid": uid, "controller": True}
        service = f"{name}-worker"
        slots = int(spec.get("slotsPerWorker") or 1)
        workers = int(spec["mpiReplicaSpecs"]["Worker"].get("replicas") or 0)
        assert spec.get("mpiImplementation") == "MPICH", "the rehearsal plays the MPI Operator for MPICH only"
        hosts = "".join(f"{service}-{i}.{service}.{self.namespace}.svc:{slots}\n" for i in range(workers))
        await self.create(self.path("ConfigMap"), {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-config", "ownerReferences": [owner]},
            "data": {"hostfile": hosts, "discover_hosts.sh": "#!/bin/sh\n" + "".join(
                f"echo {service}-{i}.{service}.{self.namespace}.svc\n" for i in range(workers))}})
        private, public = ssh_key_pair()
        await self.create(self.path("Secret"), {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/ssh-auth",
            "metadata": {"name": f"{name}-ssh", "ownerReferences": [owner]},
            "data": {"ssh-privatekey": _b64(private), "ssh-publickey": _b64(public)}})
        await self.patch_status(self.path("MPIJob", name), {"startTime": now(), "conditions": [
            _condition("Created", "MPIJobCreated", f"MPIJob {self.namespace}/{name} is created.")]})

        ssh_volume = {"name": "ssh-auth", "secret": {"secretName": f"{name}-ssh", "items": [
            {"key": "ssh-privatekey", "path": "id_rsa"}, {"key": "ssh-publickey", "path": "id_rsa.pub"},
            {"key": "ssh-publickey", "path": "authorized_keys"}]}}
        ssh_mount = {"name": "ssh-auth", "mountPath": spec["sshAuthMountPath"]}
        default_labels = {"training.kubeflow.org/operator-name": "mpi-operator", MPI_JOB_NAME: name}

        worker_tasks = []
        for i in range(workers):
            template = copy.deepcopy(spec["mpiReplicaSpecs"]["Worker"]["template"])
            pod_spec = template["spec"]
            pod_spec.update(hostname=f"{service}-{i}", subdomain=service, restartPolicy="Never")
            container = pod_spec["containers"][0]
            if not container.get("command") and not container.get("args"):
                container["command"] = ["/usr/sbin/sshd", "-De"]
            container.setdefault("env", []).append({"name": "K_MPI_JOB_ROLE", "value": "worker"})
            pod_spec.setdefault("volumes", []).append(ssh_volume)
            container.setdefault("volumeMounts", []).append(ssh_mount)
            labels = {**(template["metadata"].get("labels") or {}), **default_labels, MPI_ROLE: "worker",
                      "training.kubeflow.org/replica-index": str(i)}
            worker_tasks.append(asyncio.create_task(self._run_pod(f"{service}-{i}", labels, pod_spec, owner, name)))
        try:
            if spec.get("launcherCreationPolicy") == "WaitForWorkersReady":
                await self._until_ready([f"{service}-{i}" for i in range(workers)], worker_tasks)
            launcher = copy.deepcopy(spec["mpiReplicaSpecs"]["Launcher"]["template"])
            launcher["metadata"]["labels"] = {**(launcher["metadata"].get("labels") or {}), **default_labels,
                                              MPI_ROLE: "launcher"}
            pod_spec = launcher["spec"]
            pod_spec.update(hostname=f"{name}-launcher", subdomain=service, restartPolicy="Never")
            container = pod_spec["containers"][0]
            container.setdefault("env", []).extend([
                {"name": "K_MPI_JOB_ROLE", "value": "launcher"},
                {"name": "HYDRA_HOST_FILE", "value": "/etc/mpi/hostfile"},
                {"name": "HYDRA_LAUNCH_EXTRA_ARGS", "value": "-o ConnectionAttempts=10"},
                {"name": "NVIDIA_VISIBLE_DEVICES", "value": ""}, {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": ""}])
            pod_spec.setdefault("volumes", []).extend([ssh_volume, {"name": "mpi-job-config", "configMap": {
                "name": f"{name}-config", "items": [{"key": "hostfile", "path": "hostfile", "mode": 0o444},
                                                    {"key": "discover_hosts.sh", "path": "discover_hosts.sh",
                                                     "mode": 0o555}]}}])
            container.setdefault("volumeMounts", []).extend([ssh_mount, {"name": "mpi-job-config",
                                                                         "mountPath": "/etc/mpi"}])
            run_policy = spec.get("runPolicy") or {}
            job_spec = {"backoffLimit": run_policy.get("backoffLimit", 6), "template": launcher}
            if run_policy.get("activeDeadlineSeconds"):
                job_spec["activeDeadlineSeconds"] = run_policy["activeDeadlineSeconds"]
            await self.create(self.path("Job"), {"apiVersion": "batch/v1", "kind": "Job",
                                                 "metadata": {"name": f"{name}-launcher", "ownerReferences": [owner]},
                                                 "spec": job_spec})
            running_reported = False
            while True:  # updateMPIJobStatus, from the launcher Job and the worker pods
                if self.get(MPIJOBS, name) is None:
                    return
                job = self.get(JOBS, f"{name}-launcher") or {}
                conditions = {c["type"]: c for c in (job.get("status") or {}).get("conditions") or []}
                if "Complete" in conditions:
                    await self.patch_status(self.path("MPIJob", name), {
                        "completionTime": now(), "conditions": [_condition(
                            "Succeeded", "MPIJobSucceeded", f"MPIJob {self.namespace}/{name} successfully completed.")]})
                    return
                if "Failed" in conditions:
                    failed = conditions["Failed"]
                    reason, message = failed["reason"] or "MPIJobFailed", failed["message"]
                    if reason == "BackoffLimitExceeded":  # plus the last failed launcher pod's reason
                        pods = [p for p in self._pods_of(f"{name}-launcher") if p["status"]["phase"] == "Failed"]
                        last = (pods[-1]["status"] if pods else {})
                        reason += "/" + last.get("reason", "")
                        message += ": " + last.get("message", "")
                    await self.patch_status(self.path("MPIJob", name), {
                        "completionTime": now(), "conditions": [_condition("Failed", reason, message[:1024])]})
                    return
                launcher_running = any(p["status"]["phase"] == "Running" for p in self._pods_of(f"{name}-launcher"))
                workers_running = all((self.get("v1/pods", f"{service}-{i}") or {}).get("status", {}).get("phase")
                                      == "Running" for i in range(workers))
                if launcher_running and workers_running and not running_reported:
                    running_reported = True
                    await self.patch_status(self.path("MPIJob", name), {"conditions": [_condition(
                        "Running", "MPIJobRunning", f"MPIJob {self.namespace}/{name} is running.")]})
                await asyncio.sleep(0.5)
        finally:
            # cleanPodPolicy Running: workers still running go; finished ones stay for their logs.
            for i, task in enumerate(worker_tasks):
                pod = f"{service}-{i}"
                if not task.done():
                    await self._stop(pod)
                    await self.delete(self.path("Pod", pod))
                task.cancel()
            await asyncio.gather(*worker_tasks, return_exceptions=True)

    def _pods_of(self, job: str) -> list[dict[str, Any]]:
        pods = [self.get("v1/pods", n) for n in self.names("v1/pods")]
        pods = [p for p in pods if p and (p["metadata"].get("labels") or {}).get("job-name") == job]
        return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")

    def _ready(self, pod: str) -> bool:
        conditions = ((self.get("v1/pods", pod) or {}).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    async def _until_ready(self, pods: list[str], tasks: list[asyncio.Task]) -> None:
        while not all(self._ready(p) for p in pods):
            if any(t.done() for t in tasks):
                for t in tasks:
                    if t.done() and t.exception():
                        raise t.exception()
            await asyncio.sleep(0.3)

    # --- the kubelet ---------------------------------------------------------------------------

    async def _run_pod(self, name: str, labels: dict[str, str], spec: dict[str, Any], owner: dict[str, Any],
                       job: str) -> PodResult | None:
        """One pod, start to end; None if its Job or MPIJob was deleted while it waited for its
        image."""
        container = spec["containers"][0]
        await self.create(self.path("Pod"), {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "ownerReferences": [owner], "creationTimestamp": now()},
            "spec": spec,
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
                       "containerStatuses": [_waiting(container, "ContainerCreating")]}})
        pod_path = self.path("Pod", name)
        # The image: these nodes pull from nowhere; a missing image stays in back-off, as on a node.
        while not self.engine.has_image(container["image"]) or container.get("imagePullPolicy") == "Always":
            reference = container["image"] if "/" in container["image"] else f"docker.io/library/{container['image']}"
            await self.patch_status(pod_path, {"containerStatuses": [_waiting(
                container, "ErrImagePull", f'failed to pull and unpack image "{reference}": failed to resolve '
                                           f'reference "{reference}": pull access denied, repository does not exist '
                                           "or may require authorization")]})
            await asyncio.sleep(2)
            await self.patch_status(pod_path, {"containerStatuses": [_waiting(
                container, "ImagePullBackOff", f'Back-off pulling image "{container["image"]}"')]})
            for _ in range(10):
                await asyncio.sleep(1)
                if self.get(JOBS, job) is None and self.get(MPIJOBS, job) is None:
                    return None

        args, env = self._docker_run_args(name, labels, spec, container)
        cname = f"k8s_{container['name']}_{name}"
        self.containers[name] = cname
        await self._docker("run", "-d", "--name", cname, *args, env=env)
        started = now()
        await self.patch_status(pod_path, {"phase": "Running", "startTime": started, "conditions": [
            {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
            "containerStatuses": [{**_status(container), "state": {"running": {"startedAt": started}}}]})
        ready = asyncio.create_task(self._probe(name, cname, container))
        code = int((await self._docker("wait", cname))[1].strip())
        ready.cancel()
        state = self.engine.inspect("container", cname)["State"]
        self.logs[name] = (await self._docker("logs", cname, check=False))[1]
        policy = container.get("terminationMessagePolicy", "File")
        message = _log_tail(self.logs[name]) if policy == "FallbackToLogsOnError" and code != 0 else ""
        phase = "Succeeded" if code == 0 else "Failed"
        terminated = {"exitCode": code, "reason": "OOMKilled" if state.get("OOMKilled") else
                      ("Completed" if code == 0 else "Error"), "startedAt": started, "finishedAt": now()}
        if message:
            terminated["message"] = message
        if self.get("v1/pods", name) is not None:
            await self.patch_status(pod_path, {"phase": phase, "conditions": [
                {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
                "containerStatuses": [{**_status(container), "ready": False, "state": {"terminated": terminated}}]})
        return PodResult(phase, code)

    async def _probe(self, pod: str, cname: str, container: dict[str, Any]) -> None:
        """readinessProbe (tcpSocket only); a pod with none is ready once started."""
        port = ((container.get("readinessProbe") or {}).get("tcpSocket") or {}).get("port")
        if port:
            networks = self.engine.inspect("container", cname)["NetworkSettings"]["Networks"]
            address = networks[self.network]["IPAddress"]
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.wait_for(asyncio.open_connection(address, int(port)), 2)
                    writer.close()
                    break
                await asyncio.sleep(0.5)
        if (self.get("v1/pods", pod) or {}).get("status", {}).get("phase") == "Running":
            await self.patch_status(self.path("Pod", pod), {
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [{**_status(container), "ready": True,
                                       "state": {"running": {"startedAt": now()}}}]})

    async def _stop(self, pod: str) -> None:
        if pod in self.containers:
            await self._docker("stop", "-t", str(GRACE_SECONDS), self.containers[pod], check=False)

    def _docker_run_args(self, name: str, labels: dict[str, str], spec: dict[str, Any],
                         container: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        """`docker run` arguments for the pod's (only) container, and the environment that carries
        its env values to the docker client (`-e NAME` takes the value from there: no secret on a
        command line)."""
        hostname = spec.get("hostname") or name
        # The short name too: the MPI Operator's Service <mpijob>-launcher makes the launcher's
        # hostname resolve, which the workers' Hydra proxies connect back to.
        args = ["--label", f"{LABEL}=1", "--label", f"{POD_LABEL}={name}", "--network", self.network,
                "--hostname", hostname, "--network-alias", hostname]
        if spec.get("subdomain"):  # a headless Service: <hostname>.<subdomain>.<ns>.svc
            fqdn = f"{spec['hostname']}.{spec['subdomain']}.{self.namespace}.svc"
            args += ["--network-alias", fqdn, "--network-alias", f"{fqdn}.cluster.local"]
        for host, address in self.extra_hosts.items():
            args += ["--add-host", f"{host}:{address}"]

        security = {**(spec.get("securityContext") or {}), **(container.get("securityContext") or {})}
        image_user = self.engine.inspect("image", container["image"])["Config"].get("User") or "0"
        uid = security.get("runAsUser", image_user.split(":")[0])
        if security.get("runAsNonRoot") and str(uid) in ("0", "root"):
            raise RuntimeError(f"pod {name}: runAsNonRoot, but the image runs as root (CreateContainerConfigError)")
        user = str(uid) + (f":{security['runAsGroup']}" if "runAsGroup" in security else "")
        args += ["--user", user]
        for group in security.get("supplementalGroups") or []:
            args += ["--group-add", str(group)]
        caps = security.get("capabilities") or {}
        args += [f"--cap-drop={c}" for c in caps.get("drop") or []] + [f"--cap-add={c}" for c in caps.get("add") or []]
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if (security.get("seccompProfile") or {}).get("type") == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")

        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:  # first: `env` below wins over a key of the same name
            ref = source.get("secretRef")
            if ref is None:
                continue
            secret = self.get("v1/secrets", ref["name"])
            if secret is None:
                if ref.get("optional"):
                    continue
                raise RuntimeError(f"pod {name}: secret {ref['name']} not found (CreateContainerConfigError)")
            for key, data in (secret.get("data") or {}).items():
                env[source.get("prefix", "") + key] = base64.b64decode(data).decode()
                args += ["-e", source.get("prefix", "") + key]
        for var in container.get("env") or []:
            value = var.get("value")
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref is not None:
                data = (self.get("v1/secrets", ref["name"]) or {}).get("data") or {}
                if ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise RuntimeError(f"pod {name}: secret {ref['name']}/{ref['key']} not found "
                                       "(CreateContainerConfigError)")
                value = base64.b64decode(data[ref["key"]]).decode()
            env[var["name"]] = value or ""
            args += ["-e", var["name"]]

        limits = (container.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            args += ["--memory", _bytes(limits["memory"])]
        if "cpu" in limits:  # a limit may exceed the node; docker refuses more than the machine has
            args += ["--cpus", str(min(_cpus(limits["cpu"]), os.cpu_count() or 1))]

        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            args += self._mount(name, volumes[mount["name"]], mount)
        if container.get("workingDir"):
            args += ["-w", container["workingDir"]]
        command = container.get("command")
        if command:
            args += ["--entrypoint", command[0], container["image"], *command[1:], *(container.get("args") or [])]
        else:
            args += [container["image"], *(container.get("args") or [])]
        return args, env

    def _mount(self, pod: str, volume: dict[str, Any], mount: dict[str, Any]) -> list[str]:
        target, ro = mount["mountPath"], ",readonly" if mount.get("readOnly") else ""
        if "emptyDir" in volume:
            if (volume["emptyDir"] or {}).get("medium") == "Memory":
                if target == "/dev/shm":
                    return ["--shm-size", _bytes((volume["emptyDir"] or {}).get("sizeLimit", "1Gi"))]
                return ["--tmpfs", f"{target}:rw,mode=1777"]
            folder = self.scratch / pod / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)  # the kubelet's emptyDir: writable by any user
            return ["--mount", f"type=bind,src={folder},dst={target}{ro}"]
        if "secret" in volume or "configMap" in volume:
            source = volume.get("secret") or volume.get("configMap")
            if "secret" in volume:
                data = {k: base64.b64decode(v) for k, v in
                        ((self.get("v1/secrets", source["secretName"]) or {}).get("data") or {}).items()}
            else:
                data = {k: v.encode() for k, v in ((self.get("v1/configmaps", source["name"]) or {}).get("data") or {}).items()}
            folder = self.scratch / pod / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                path = folder / item["path"]
                path.write_bytes(data[item["key"]])
                path.chmod(item.get("mode", source.get("defaultMode", 0o644)))  # owned by root, as the kubelet does
            return ["--mount", f"type=bind,src={folder},dst={target},readonly"]
        raise RuntimeError(f"pod {pod}: volume {volume['name']} of a kind the rehearsal does not emulate")

    async def _docker(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            self.engine.docker, *args, env={**self.engine.env, **(env or {})},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out = (await proc.communicate())[0].decode(errors="replace")
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker {args[0]} failed ({proc.returncode}): {out[-2000:]}")
        return proc.returncode, out

    async def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def ssh_key_pair() -> tuple[bytes, bytes]:
    """What the MPI Operator puts in <mpijob>-ssh: an ECDSA P-521 key (PEM) and its public key in
    authorized_keys format."""
    key = ec.generate_private_key(ec.SECP521R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _condition(type_: str, reason: str, message: str) -> dict[str, Any]:
    t = now()
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastUpdateTime": t,
            "lastTransitionTime": t}


def _status(container: dict[str, Any]) -> dict[str, Any]:
    return {"name": container["name"], "image": container["image"], "ready": False, "restartCount": 0}


def _waiting(container: dict[str, Any], reason: str, message: str = "") -> dict[str, Any]:
    waiting = {"reason": reason, **({"message": message} if message else {})}
    return {**_status(container), "state": {"waiting": waiting}}


def _log_tail(log: str) -> str:
    lines = log.splitlines(keepends=True)[-LOG_LINES:]
    return "".join(lines).encode()[-LOG_BYTES:].decode(errors="replace")


UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _bytes(quantity: str | int) -> str:
    text = str(quantity)
    for suffix, factor in UNITS.items():
        if text.endswith(suffix):
            return str(int(float(text[: -len(suffix)]) * factor))
    return text


def _cpus(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)

