"""A small recording Kubernetes API server for benchmarks/bench_operator.py: enough of the API for
the operator and kopf (discovery, get, list and watch with label and field selectors, create,
merge and JSON patches, status subresources, delete, a pod's log), fast with thousands of objects,
and it counts every request and the bytes of every response (a watch's bytes as its events flow).

Not a test double for behaviour: no validation, defaulting, admission, owner-reference garbage
collection or finalizer handling (a delete removes the object). kmock, which the operator tests use,
keeps every version of every object and every request, and stops answering with a few dozen jobs
at once on a 2-core machine; this keeps only the current objects and a short watch history.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import jsonpatch
from aiohttp import web

# (group, version, plural): (kind, namespaced, subresources)
RESOURCES: dict[tuple[str, str, str], tuple[str, bool, tuple[str, ...]]] = {
    ("stylebatch.io", "v1alpha1", "styletransferjobs"): ("StyleTransferJob", True, ("status",)),
    ("stylebatch.io", "v1alpha1", "videowatches"): ("VideoWatch", True, ("status",)),
    ("batch", "v1", "jobs"): ("Job", True, ("status",)),
    ("kubeflow.org", "v2beta1", "mpijobs"): ("MPIJob", True, ("status",)),
    ("", "v1", "pods"): ("Pod", True, ("status", "log")),
    ("", "v1", "events"): ("Event", True, ()),
    ("", "v1", "namespaces"): ("Namespace", False, ()),
    ("coordination.k8s.io", "v1", "leases"): ("Lease", True, ()),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions"): ("CustomResourceDefinition", False, ()),
}
WATCH_HISTORY = 20000  # events kept per resource, to resume a watch from a resourceVersion


@dataclass
class Request:
    """One request as the benchmark counts it: `kind` such as `GET pods/log`, `LIST pods`,
    `WATCH styletransferjobs`, `PATCH styletransferjobs/status`; `sent`: response bytes."""
    kind: str
    agent: str
    sent: int = 0


@dataclass
class Store:
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (namespace, name) ->
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=WATCH_HISTORY))
    watchers: set[asyncio.Queue] = field(default_factory=set)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def matches(obj: dict[str, Any], labels: str, fields: str) -> bool:
    """labelSelector (k=v, k!=v, k, !k, comma-separated) and fieldSelector (dotted=v)."""
    have = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, labels.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if have.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if have.get(key) != value.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in have:
                return False
        elif term not in have:
            return False
    for term in filter(None, fields.split(",")):
        path, value = term.split("=", 1)
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if str(node if node is not None else "") != value.lstrip("="):
            return False
    return True


class ApiServer:
    """Serve with `async with ApiServer() as api:`; api.url, api.requests, api.objects(plural)."""

    def __init__(self) -> None:
        self.stores = {plural: Store() for (_, _, plural) in RESOURCES}
        self.requests: list[Request] = []
        self.pod_log = ""  # every pod's log (the launchers' progress lines)
        self._versions = itertools.count(1)
        self.version = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    # --- the benchmark's side (no HTTP) ---
    def objects(self, plural: str) -> dict[tuple[str, str], dict[str, Any]]:
        return self.stores[plural].objects

    def write(self, plural: str, obj: dict[str, Any], event: str = "MODIFIED") -> dict[str, Any]:
        """Stores the object with a new resourceVersion and tells the watchers."""
        meta = obj["metadata"]
        self.version = next(self._versions)
        meta["resourceVersion"] = str(self.version)
        store = self.stores[plural]
        store.objects[(meta.get("namespace") or "", meta["name"])] = obj
        self._notify(store, event, obj)
        return obj

    def create(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=now())
        return self.write(plural, obj, "ADDED")

    def _notify(self, store: Store, event: str, obj: dict[str, Any]) -> None:
        line = (json.dumps({"type": event, "object": obj}) + "\n").encode()
        store.history.append((self.version, obj, line))
        for queue in store.watchers:
            queue.put_nowait((obj, line))

    # --- HTTP ---
    async def __aenter__(self) -> ApiServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for store in self.stores.values():
            for queue in store.watchers:
                queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        agent = request.headers.get("User-Agent", "")
        if parts[:1] == ["api"]:
            group, version, rest = "", parts[1] if len(parts) > 1 else "", parts[2:]
        elif parts[:1] == ["apis"]:
            group, version, rest = (parts[1] if len(parts) > 1 else ""), (parts[2] if len(parts) > 2 else ""), parts[3:]
        else:
            return self._json(request, agent, "GET (discovery)", {"major": "1", "minor": "31", "gitVersion": "v1.31.0"})
        if not rest:
            return self._json(request, agent, "GET (discovery)", self._discovery(parts, group, version))
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
        if plural not in self.stores:
            return self._error(request, agent, f"{request.method} {plural}", 404, "NotFound")
        query = request.query
        if request.method == "GET" and name is None:
            if query.get("watch") in ("true", "1"):
                return await self._watch(request, agent, plural, namespace)
            return self._list(request, agent, plural, namespace)
        what = plural + (f"/{sub}" if sub else "")
        key = (namespace, name)
        store = self.stores[plural]
        if request.method == "POST" and name is None:
            obj = await request.json()
            obj.setdefault("metadata", {}).setdefault("namespace", namespace) if namespace else None
            if obj["metadata"].get("name") and (namespace, obj["metadata"]["name"]) in store.objects:
                return self._error(request, agent, f"POST {what}", 409, "AlreadyExists")
            return self._json(request, agent, f"POST {what}", self.create(plural, obj), 201)
        obj = store.objects.get(key)
        if obj is None:
            return self._error(request, agent, f"{request.method} {what}", 404, "NotFound")
        if request.method == "GET" and sub == "log":
            lines = self.pod_log.splitlines(keepends=True)[-int(query.get("tailLines") or 10**9):]
            return self._sent(request, agent, f"GET {what}", web.Response(body="".join(lines).encode(),
                                                                          content_type="text/plain"))
        if request.method == "GET":
            return self._json(request, agent, f"GET {what}", obj)
        if request.method == "DELETE":
            del store.objects[key]
            self.version = next(self._versions)
            self._notify(store, "DELETED", obj)
            return self._json(request, agent, f"DELETE {what}", {"kind": "Status", "status": "Success"})
        if request.method in ("PATCH", "PUT"):
            body = await request.json()
            try:
                updated = self._patched(obj, body, request.content_type, sub)
            except jsonpatch.JsonPatchException as exc:
                return self._error(request, agent, f"PATCH {what}", 422, f"Invalid: {exc}")
            return self._json(request, agent, f"PATCH {what}", self.write(plural, updated))
        return self._error(request, agent, f"{request.method} {what}", 405, "MethodNotAllowed")

    def _patched(self, obj: dict[str, Any], body: Any, content_type: str, sub: str | None) -> dict[str, Any]:
        if content_type == "application/json-patch+json":
            return jsonpatch.apply_patch(obj, body)
        updated = copy.deepcopy(obj)
        if sub == "status":
            body = {"status": body.get("status")}
        elif "spec" in body and body["spec"] != obj.get("spec"):
            updated["metadata"]["generation"] = int(obj["metadata"].get("generation") or 1) + 1
        return merge(updated, body)

    def _discovery(self, parts: list[str], group: str, version: str) -> dict[str, Any]:
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"]}
        if parts == ["apis"]:
            groups = sorted({(g, v) for (g, v, _) in RESOURCES if g})
            return {"kind": "APIGroupList", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v in groups]}
        resources = []
        for (g, v, plural), (kind, namespaced, subs) in RESOURCES.items():
            if (g, v) == (group, version):
                verbs = ["get", "list", "watch", "create", "patch", "update", "delete"]
                resources.append({"name": plural, "singularName": kind.lower(), "kind": kind,
                                  "namespaced": namespaced, "verbs": verbs})
                resources += [{"name": f"{plural}/{s}", "singularName": "", "kind": kind, "namespaced": namespaced,
                               "verbs": ["get", "patch"]} for s in subs]
        return {"kind": "APIResourceList", "groupVersion": f"{group}/{version}".lstrip("/"), "resources": resources}

    def _selected(self, request: web.Request, plural: str, namespace: str) -> list[dict[str, Any]]:
        labels, fields = request.query.get("labelSelector", ""), request.query.get("fieldSelector", "")
        return [obj for (ns, _), obj in self.stores[plural].objects.items()
                if (not namespace or ns == namespace) and matches(obj, labels, fields)]

    def _list(self, request: web.Request, agent: str, plural: str, namespace: str) -> web.StreamResponse:
        return self._json(request, agent, f"LIST {plural}", {
            "kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.version)},
            "items": self._selected(request, plural, namespace)})

    async def _watch(self, request: web.Request, agent: str, plural: str, namespace: str) -> web.StreamResponse:
        record = Request(f"WATCH {plural}", agent)
        self.requests.append(record)
        store = self.stores[plural]
        labels, fields = request.query.get("labelSelector", ""), request.query.get("fieldSelector", "")
        since = int(request.query.get("resourceVersion") or self.version)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        queue: asyncio.Queue = asyncio.Queue()
        for version, obj, line in store.history:  # what happened after the client's list, before this watch
            if version > since:
                queue.put_nowait((obj, line))
        store.watchers.add(queue)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        try:
            while (left := end - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(queue.get(), left)
                except asyncio.TimeoutError:
                    break
                if item is None:
                    break
                obj, line = item
                if (not namespace or obj["metadata"].get("namespace") == namespace) and matches(obj, labels, fields):
                    await response.write(line)
                    record.sent += len(line)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            store.watchers.discard(queue)
        return response

    def _json(self, request: web.Request, agent: str, kind: str, body: Any, status: int = 200) -> web.Response:
        return self._sent(request, agent, kind, web.Response(body=json.dumps(body).encode(), status=status,
                                                             content_type="application/json"))

    def _error(self, request: web.Request, agent: str, kind: str, status: int, reason: str) -> web.Response:
        return self._json(request, agent, kind, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                 "code": status, "reason": reason, "message": reason}, status)

    def _sent(self, request: web.Request, agent: str, kind: str, response: web.Response) -> web.Response:
        self.requests.append(Request(kind, agent, len(response.body or b"")))
        return response


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    target = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge(target.get(key), value)
    return target
