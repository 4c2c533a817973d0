"""A small async Kubernetes API client over plain dicts, for any API server URL.

kubernetes_asyncio supplies the authentication (in-cluster service account or kubeconfig) and the
HTTP plumbing; objects stay plain JSON dicts, as the pure modules expect them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes_asyncio import client, config
from stylebatch.errors import StylebatchError

from stylebatch_operator.uris import redact

# kind -> (apiVersion, plural)
RESOURCES = {
    "StyleTransferJob": ("stylebatch.io/v1alpha1", "styletransferjobs"),
    "VideoWatch": ("stylebatch.io/v1alpha1", "videowatches"),
    "Job": ("batch/v1", "jobs"),
    "MPIJob": ("kubeflow.org/v2beta1", "mpijobs"),
    "Pod": ("v1", "pods"),
    "Event": ("v1", "events"),
    "Lease": ("coordination.k8s.io/v1", "leases"),
}
KUEUE_VERSIONS = ("kueue.x-k8s.io/v1beta2", "kueue.x-k8s.io/v1beta1")  # LocalQueues: the newest served first
CLUSTER_RESOURCES = {"CustomResourceDefinition": ("apiextensions.k8s.io/v1", "customresourcedefinitions")}
_JSON = {200: "object", 201: "object"}
TIMEOUT = 10  # seconds per request: a stuck call must not hold a reconciliation forever


class ApiError(Exception):
    """status and reason; detail: for a refusal (400, 403, 422) or an answer that it could not serve
    the request (429, 5xx), what the API server said (its Status message, redacted): which field of a
    child to fix, which quota or policy refused it, which webhook did not answer."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.detail = detail


def path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    api_version, plural = RESOURCES[kind]
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [root, "namespaces", namespace, plural, name, subresource]
    return "/".join(p for p in parts if p)


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        skip_environment_lookups(api)

    @classmethod
    async def from_environment(cls) -> Kube:
        """The pod's service account in a cluster; the current kubeconfig context elsewhere."""
        return cls(client.ApiClient(await load_configuration()))

    async def close(self) -> None:
        await self._api.close()

    async def connection_info(self) -> kopf.ConnectionInfo:
        """The same server and credentials for kopf's own API calls (its login handler)."""
        cfg = self._api.configuration
        header = await cfg.get_api_key_with_prefix("BearerToken")  # refreshes an expiring token
        scheme, _, token = (header or "").rpartition(" ")
        return kopf.ConnectionInfo(
            server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
            scheme=scheme or None, token=token or None,
            certificate_path=cfg.cert_file, private_key_path=cfg.key_file, proxy_url=cfg.proxy,
        )

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when there is none."""
        try:
            return await self._call("GET", path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_local_queue(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Kueue LocalQueue in any API version Kueue serves, or None when none has it (or no Kueue)."""
        for api_version in KUEUE_VERSIONS:
            try:
                return await self._call("GET", f"/apis/{api_version}/namespaces/{namespace}/localqueues/{name}")
            except ApiError as exc:
                if exc.status != 404:
                    raise
        return None

    async def get_cluster_scoped(self, kind: str, name: str) -> dict[str, Any] | None:
        """A cluster-scoped object (a CRD), or None when there is none."""
        api_version, plural = CLUSTER_RESOURCES[kind]
        try:
            return await self._call("GET", f"/apis/{api_version}/{plural}/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Creates the object; raises ApiError(409) when it already exists."""
        return await self._call("POST", path(obj["kind"], obj["metadata"]["namespace"]), body=obj)

    async def list(self, kind: str, namespace: str, labels: dict[str, str],
                   fields: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Objects with these labels and (dotted path -> value) fields."""
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())}
        if fields:
            query["fieldSelector"] = ",".join(f"{k}={v}" for k, v in fields.items())
        result = await self._call("GET", path(kind, namespace), query=query)
        # Filtered again here: a selector a server ignored must not mix in other objects.
        return [item for item in result.get("items") or []
                if all((item.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())
                and all(_field(item, k) == v for k, v in (fields or {}).items())]

    async def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        """Deletes the object and, in the background, what it owns (its pods); False if it was gone.
        uid: only that very object (a precondition the API server checks: another object of the same
        name, made since it was read, is left alone, and False is returned)."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background",
                **({"preconditions": {"uid": uid}} if uid else {})}
        try:
            await self._call("DELETE", path(kind, namespace, name), query={"propagationPolicy": "Background"},
                             body=body if uid else None)
        except ApiError as exc:
            if exc.status == 404 or (uid and exc.status == 409):  # gone, or another object by now
                return False
            raise
        return True

    async def patch_status(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", path(kind, namespace, name, "status"), body={"status": patch},
                                content_type="application/merge-patch+json")

    async def patch_json(self, kind: str, namespace: str, name: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
        """A JSON patch (RFC 6902): with a leading test of metadata.resourceVersion, an optimistic
        write that fails (422) when the object changed meanwhile."""
        return await self._call("PATCH", path(kind, namespace, name), body=operations,
                                content_type="application/json-patch+json")

    async def pod_log(self, namespace: str, pod: str, container: str, tail_lines: int) -> str:
        response = await self._api.call_api(
            path("Pod", namespace, pod, "log"), "GET",
            query_params=[("container", container), ("tailLines", str(tail_lines))],
            header_params={"Accept": "text/plain"}, auth_settings=["BearerToken"], _preload_content=False,
            _request_timeout=TIMEOUT)
        try:
            text = await response.text()
            if not 200 <= response.status <= 299:
                raise ApiError(response.status, response.reason or "")
            return text
        finally:
            response.release()

    async def _call(self, method: str, url: str, *, body: Any = None, query: dict[str, str] | None = None,
                    content_type: str = "application/json") -> dict[str, Any]:
        try:
            return await self._api.call_api(
                url, method, query_params=list((query or {}).items()), body=body,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                response_types_map=_JSON, auth_settings=["BearerToken"], _return_http_data_only=True,
                _request_timeout=TIMEOUT)
        except client.ApiException as exc:
            # Only the status and reason, but for a refusal of what was sent (the message of an
            # Invalid names the offending fields and values; of a Forbidden, the quota, policy or
            # webhook that said no), which is what the user must fix; redacted: it can echo the request.
            raise ApiError(exc.status, exc.reason or "", _refusal_detail(exc.status, exc.body)) from None


def skip_environment_lookups(api: client.ApiClient, environ: Mapping[str, str] = os.environ) -> bool:
    """kubernetes_asyncio's HTTP session trusts the environment, so aiohttp looks up ~/.netrc and
    the proxy variables in a worker thread for every request: two thread round trips per API
    call, about a third of the operator's CPU per reconciliation (docs/benchmarks.md). With no
    *_proxy variable and no netrc file those lookups can only come back empty, so they are skipped
    (True); with either, they stay as they are (False)."""
    if any(key.lower().endswith("_proxy") for key in environ):
        return False
    netrc = environ.get("NETRC") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".netrc")
    session = getattr(getattr(api, "rest_client", None), "pool_manager", None)
    if os.path.exists(netrc) or not hasattr(session, "_trust_env"):
        return False
    session._trust_env = False  # aiohttp reads it per request (ClientSession(trust_env=...))
    return True


INVALID = 422  # the API server's validation refused the object as specified
BAD_REQUEST, FORBIDDEN = 400, 403  # refused otherwise: a quota, an admission webhook or policy, RBAC
REFUSALS = (BAD_REQUEST, FORBIDDEN, INVALID)
TOO_MANY_REQUESTS = 429  # API Priority and Fairness, or a webhook's own throttling


def unanswered(status: int) -> bool:
    """The API server could not serve the request now (429, or a 5xx: an admission webhook that did
    not answer, etcd, a timeout): the same request may succeed later."""
    return status == TOO_MANY_REQUESTS or status >= 500


def _refusal_detail(status: int, body: Any) -> str:
    """The Status message of a 400, 403, 422, 429 or 5xx response, redacted and bounded; "" for
    anything else."""
    if status not in REFUSALS and not unanswered(status):
        return ""
    try:
        message = json.loads(body).get("message") or ""
    except (TypeError, ValueError, AttributeError):
        return ""
    return redact(" ".join(str(message).split()))[:1000]


def _field(obj: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


async def load_configuration() -> client.Configuration:
    """The pod's service account in a cluster, the current kubeconfig context elsewhere; a one-line
    StylebatchError when there is neither (kopf would otherwise retry for ever, with tracebacks)."""
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
        return cfg
    except config.ConfigException as exc:
        in_cluster = str(exc)

    def missing(why: str) -> StylebatchError:
        return StylebatchError(f"no Kubernetes credentials: not in a cluster ({' '.join(in_cluster.split())}) "
                               f"and {' '.join(why.split())}; set KUBECONFIG or run in a pod")

    paths = os.path.expanduser(os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)
    if not any(os.path.isfile(os.path.expanduser(path)) for path in paths if path):
        raise missing(f"no kubeconfig at {os.pathsep.join(paths)}")
    try:
        await config.load_kube_config(client_configuration=cfg)
    except (config.ConfigException, OSError, TypeError, ValueError, KeyError) as exc:
        raise missing(f"no usable kubeconfig ({str(exc) or type(exc).__name__})") from None
    return cfg
