"""The Helm chart, linted and rendered by Helm itself (helm-python-sdk: Helm 4 as a library), for
the default values and each variant in charts/stylebatch/ci/, with every object checked against the
Kubernetes JSON schemas and against what the operator and the images expect."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from stylebatch_operator import rbac
from stylebatch_operator.metrics import Metrics
from stylebatch_operator.settings import from_environment
from stylebatch_operator.web import application

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "stylebatch"
_spec = importlib.util.spec_from_file_location("render_manifests", ROOT / "scripts" / "render-manifests.py")
render_manifests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_manifests)

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
VARIANTS = {"default": {}} | {
    path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text())
    for path in sorted((CHART / "ci").glob("*-values.yaml"))
}
MIN_KUBE = re.search(r"(\d+\.\d+)", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]).group(1)
KUBE_VERSIONS = [MIN_KUBE, kubernetes_validate.latest_version()]
NAMESPACE = "media"


def render(variant: str = "default", namespace: str = NAMESPACE) -> list[dict]:
    return render_manifests.render_objects(VARIANTS[variant], namespace=namespace)


def one(objects: list[dict], kind: str) -> dict:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_container(objects: list[dict]) -> dict:
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env(objects: list[dict]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in operator_container(objects)["env"] if "value" in e}


def job_defaults(objects: list[dict]) -> dict:
    """The operator's job defaults, one document with the StyleTransferJob spec's shape."""
    return yaml.safe_load(env(objects)["STYLEBATCH_JOB_DEFAULTS"])


def test_variants_cover_aks_namespaced_and_kind():
    assert {"default", "aks", "namespaced", "kind"} <= VARIANTS.keys()


@pytest.mark.parametrize("variant", VARIANTS)
def test_chart_lints_clean(variant):
    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert not problems and not report["errors"], problems or report["errors"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_is_valid_kubernetes(variant):
    objects = render(variant)
    assert {"Deployment", "ServiceAccount"} <= {obj["kind"] for obj in objects}
    for obj in objects:
        if obj["apiVersion"].split("/")[0].endswith("monitoring.coreos.com"):
            continue  # no published JSON schema; test_pod_monitor_targets_the_operator checks it
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_crds_are_the_styletransferjob_and_videowatch_apis_and_valid():
    with helm.Chart.load(CHART) as chart:
        crds = {yaml.safe_load(crd["data"])["spec"]["names"]["kind"]: yaml.safe_load(crd["data"]) for crd in chart.crds}
    assert crds.keys() == {"StyleTransferJob", "VideoWatch"}
    for crd in crds.values():
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(crd, version, strict=True)
    for kind, plural, short in (("StyleTransferJob", "styletransferjobs", "stj"), ("VideoWatch", "videowatches", "vw")):
        names = crds[kind]["spec"]["names"]
        assert (crds[kind]["spec"]["group"], names["plural"]) == ("stylebatch.io", plural)
        assert short in names["shortNames"]


def test_operator_deployment_is_single_and_hardened():
    deployment = one(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # one pod; and never two acting at once, not even during an upgrade (the Lease)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
    }
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    # The only writable path is an emptyDir, bounded.
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"]


@pytest.mark.parametrize("variant", ["default", "namespaced"])
def test_operator_replicas_share_one_lease_in_the_release_namespace_which_they_may_take(variant):
    objects = render_manifests.render_objects({**VARIANTS[variant], "operator": {
        **VARIANTS[variant].get("operator", {}), "replicas": 2}}, namespace=NAMESPACE)
    assert one(objects, "Deployment")["spec"]["replicas"] == 2
    lease = from_environment(env(objects)).lease()
    assert (lease.namespace, lease.name) == (NAMESPACE, "stylebatch-operator")
    roles = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-leader")]
    assert [(r["metadata"]["namespace"], r["rules"]) for r in roles] == [(NAMESPACE, rbac.lease_rules(lease.name))]
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"].endswith("-leader")]
    assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_operators_lease_rights_reach_only_its_own_lease_but_create(variant):
    """get and patch on any Lease in the release namespace let the operator take over other
    controllers' Leases there; only create, which cannot be restricted by name, is left unnamed."""
    objects = render(variant)
    lease = from_environment(env(objects)).lease()
    (role,) = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-leader")]
    for rule in role["rules"]:
        if set(rule["verbs"]) - {"create"}:
            assert rule.get("resourceNames") == [lease.name], rule
        else:
            assert "resourceNames" not in rule, rule  # a name would keep create from working at all
    granted = {verb for rule in role["rules"] for verb in rule["verbs"]}
    assert granted == {verb for rule in rbac.LEASE_RULES for verb in rule["verbs"]} == {"get", "create", "patch"}


def test_a_standby_operator_is_spread_to_another_node_and_a_drain_never_evicts_both():
    """operator.replicas: 2 could put both pods on one node (its failure took both) and a drain
    could evict both at once: no HA."""
    single = render()
    assert "topologySpreadConstraints" not in one(single, "Deployment")["spec"]["template"]["spec"]
    assert not [o for o in single if o["kind"] == "PodDisruptionBudget"]
    objects = render_manifests.render_objects({"operator": {"replicas": 2}}, namespace=NAMESPACE)
    pod = one(objects, "Deployment")["spec"]["template"]
    (spread,) = pod["spec"]["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["whenUnsatisfiable"], spread["maxSkew"]) == (
        "kubernetes.io/hostname", "ScheduleAnyway", 1)  # a one-node cluster still runs both
    assert spread["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1 and budget["metadata"]["namespace"] == NAMESPACE
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    for obj in (one(objects, "Deployment"), budget):
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    zones = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
              "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}}}]
    objects = render_manifests.render_objects({"operator": {"replicas": 2, "topologySpreadConstraints": zones}},
                                              namespace=NAMESPACE)
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"] == zones


def test_operator_runs_as_the_image_user():
    user = re.findall(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile.operator").read_text(), re.M)[-1]
    context = one(render(), "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (str(context["runAsUser"]), str(context["runAsGroup"])) == user


def test_liveness_probe_targets_the_port_the_operator_listens_on():
    container = operator_container(render())
    assert container["command"] == ["stylebatch", "operator"]
    port = int(next(a for a in container["args"] if a.startswith("--liveness-port=")).split("=")[1])
    probe = container["livenessProbe"]["httpGet"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz" and named[probe["port"]] == port


def test_cluster_wide_install_grants_exactly_the_operators_rules():
    objects = render()
    role, binding = one(objects, "ClusterRole"), one(objects, "ClusterRoleBinding")
    assert role["rules"] == rbac.RULES + getattr(rbac, "CLUSTER_RULES", [])
    assert not [obj for obj in objects if obj["kind"] in ("Role", "RoleBinding")
                and not obj["metadata"]["name"].endswith("-leader")]  # the Lease's, in the release namespace
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    account = one([o for o in objects if o["kind"] == "ServiceAccount" and "operator" in o["metadata"]["name"]],
                  "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert not [a for a in operator_container(objects)["args"] if a.startswith("--namespace")]


def test_namespaced_install_grants_rules_only_in_the_watched_namespaces():
    objects = render("namespaced")
    watched = VARIANTS["namespaced"]["operator"]["watchNamespaces"]
    roles = {o["metadata"]["namespace"]: o for o in objects
             if o["kind"] == "Role" and not o["metadata"]["name"].endswith("-leader")}
    bindings = {o["metadata"]["namespace"]: o for o in objects
                if o["kind"] == "RoleBinding" and not o["metadata"]["name"].endswith("-leader")}
    assert sorted(roles) == sorted(bindings) == sorted(watched)
    assert all(role["rules"] == rbac.RULES for role in roles.values())
    cluster_rules = getattr(rbac, "CLUSTER_RULES", [])
    cluster_roles = [o for o in objects if o["kind"] == "ClusterRole"]
    assert [r["rules"] for r in cluster_roles] == ([cluster_rules] if cluster_rules else [])
    args = operator_container(objects)["args"]
    assert [a.split("=", 1)[1] for a in args if a.startswith("--namespace=")] == watched
    # Job pods in each watched namespace need their ServiceAccount there.
    job_accounts = {o["metadata"]["namespace"] for o in objects
                    if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == job_defaults(objects)["serviceAccountName"]}
    assert job_accounts == {NAMESPACE, *watched}


def test_rbac_never_reaches_secrets_or_wildcards():
    for variant in VARIANTS:
        for obj in render(variant):
            for rule in obj.get("rules", []):
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
                assert "secrets" not in rule["resources"], rule


def test_aks_values_reach_the_operator_as_job_defaults():
    values = VARIANTS["aks"]
    defaults = job_defaults(render("aks"))
    assert defaults["image"] == f"{values['imageRegistry']}/stylebatch-worker:{VERSION}"
    assert defaults["scheduling"] == {"nodeSelector": values["jobs"]["nodeSelector"],
                                      "tolerations": values["jobs"]["tolerations"]}
    assert defaults["resources"] == values["jobs"]["resources"]
    assert (defaults["workers"], defaults["gpusPerWorker"]) == (values["jobs"]["workers"], values["jobs"]["gpusPerWorker"])
    assert defaults["storage"] == {"serviceAccountName": defaults["serviceAccountName"],
                                   "accountName": values["storage"]["account"]}
    assert operator_container(render("aks"))["image"] == f"{values['imageRegistry']}/stylebatch-operator:{VERSION}"


def test_both_images_can_be_pinned_by_digest():
    """Only tags could be given: a re-pushed tag changed what the operator and new jobs ran."""
    operator_digest, worker_digest = "sha256:" + "0" * 63 + "1", "sha256:" + "f" * 64
    values = {**VARIANTS["aks"], "operator": {**VARIANTS["aks"]["operator"], "image": {"digest": operator_digest}},
              "jobs": {**VARIANTS["aks"]["jobs"], "image": {"tag": "ignored", "digest": worker_digest}}}
    objects = render_manifests.render_objects(values, namespace=NAMESPACE)
    registry = VARIANTS["aks"]["imageRegistry"]
    assert operator_container(objects)["image"] == f"{registry}/stylebatch-operator@{operator_digest}"
    assert job_defaults(objects)["image"] == f"{registry}/stylebatch-worker@{worker_digest}"
    from_environment(env(objects))  # the operator takes the pinned default (the CRD's spec.image)
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(one(objects, "Deployment"), version, strict=True)
    # unpinned, the tag
    assert operator_container(render("aks"))["image"] == f"{registry}/stylebatch-operator:{VERSION}"


def test_kind_values_run_jobs_on_cpus():
    defaults = job_defaults(render("kind"))
    assert defaults["gpusPerWorker"] == 0
    assert defaults["image"] == f"stylebatch-worker:{VERSION}"  # loaded into kind, no registry
    assert defaults["storage"] == {"secretName": VARIANTS["kind"]["storage"]["existingSecret"]}


def test_workload_identity_goes_on_the_job_service_account_without_api_token():
    objects = render("aks")
    name = job_defaults(objects)["serviceAccountName"]
    account = next(o for o in objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == name)
    client_id = VARIANTS["aks"]["storage"]["workloadIdentity"]["clientId"]
    assert account["metadata"]["annotations"]["azure.workload.identity/client-id"] == client_id
    assert account["automountServiceAccountToken"] is False
    # Secret-based storage: the job account carries no identity.
    default_account = next(o for o in render() if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == name)
    assert "azure.workload.identity/client-id" not in default_account["metadata"].get("annotations", {})


def test_the_example_videowatchs_az_source_resolves_with_the_operator_storage_the_chart_gives_it(monkeypatch):
    """manifests/examples/videowatch.yaml names az://videos/..., which the operator resolves from its
    own AZURE_STORAGE_* environment; no chart value set one, so it could not read it."""
    from stylebatch.errors import StylebatchError
    from stylebatch.storage import location, resolve_credential

    (watch,) = [d for d in yaml.safe_load_all((ROOT / "manifests" / "examples" / "videowatch.yaml").read_text()) if d]
    source = location(watch["spec"]["source"])

    def credential(variant: str, secret: dict[str, str] | None = None):
        container = operator_container(render(variant))
        for key in [k for k in os.environ if k.startswith("AZURE_")]:
            monkeypatch.delenv(key)
        for name, value in {**(secret or {}), **env(render(variant))}.items():  # env wins over envFrom
            monkeypatch.setenv(name, value)
        return container, resolve_credential(source)

    with pytest.raises(StylebatchError, match="no storage account configured"):
        credential("default")  # nothing set: the example needs operator.storage
    container, found = credential("aks")  # the account, signed in as the operator's workload identity
    assert (found.account, found.kind) == (VARIANTS["aks"]["operator"]["storage"]["account"], "identity")
    assert "envFrom" not in container
    # A Secret of the storage-secret example's shape, passed whole; its values never in the chart.
    (example,) = [d for d in yaml.safe_load_all((ROOT / "manifests" / "examples" / "storage-secret.yaml").read_text()) if d]
    filled = {key: {"AZURE_STORAGE_ACCOUNT": "mediastore", "AZURE_STORAGE_SAS_TOKEN": "sv=2024&sig=x"}[key]
              for key in example["stringData"]}
    container, found = credential("monitoring", filled)
    assert container["envFrom"] == [{"secretRef": {"name": VARIANTS["monitoring"]["operator"]["storage"]["existingSecret"]}}]
    assert (found.account, found.kind) == ("mediastore", "sas")
    assert not [e for e in container["env"] if e["name"].startswith("AZURE_STORAGE_") and e["name"] != "AZURE_STORAGE_ACCOUNT"]


def test_chart_never_renders_secret_material():
    for variant in VARIANTS:
        assert not [o for o in render(variant) if o["kind"] == "Secret"]
    text = "\n".join(p.read_text() for p in CHART.rglob("*") if p.is_file())
    assert not re.search(r"AccountKey=[A-Za-z0-9+/]{20,}|[?&]sig=[A-Za-z0-9%]{10,}", text)


@pytest.mark.parametrize("values,complaint", [
    ({"jobs": {"workers": 0}}, "/jobs/workers"),
    ({"jobs": {"gpusPerWorker": -1}}, "/jobs/gpusPerWorker"),
    # over the CRD's bounds: helm installed, then the operator failed at its start with them
    ({"jobs": {"workers": 65}}, "/jobs/workers"),
    ({"jobs": {"gpusPerWorker": 9}}, "/jobs/gpusPerWorker"),
    ({"jobs": {"progressTimeoutSeconds": 30}}, "/jobs/progressTimeoutSeconds"),
    ({"operator": {"watchNamespaces": ["Media_A"]}}, "/operator/watchNamespaces/0"),
    ({"storage": {"auth": "workloadIdentity"}}, "/storage"),  # needs account and clientId
    ({"storage": {"auth": "accountKey"}}, "/storage/auth"),
    ({"storage": {"connectionString": "DefaultEndpointsProtocol=https"}}, "connectionString"),
    ({"jobs": {"nodeSelector": {"stylebatch.io/gpu": True}}}, "/jobs/nodeSelector"),
    ({"workers": 4}, "workers"),  # a misplaced key, not silently ignored
    ({"operator": {"storage": {"connectionString": "DefaultEndpointsProtocol=https"}}}, "connectionString"),
    ({"operator": {"storage": {"account": "Media_Store"}}}, "/operator/storage/account"),
    ({"operator": {"image": {"digest": "sha256:abc"}}}, "/operator/image/digest"),
    ({"jobs": {"image": {"digest": "a" * 64}}}, "/jobs/image/digest"),
    ({"operator": {"reconcileIntervalSeconds": 0}}, "/operator/reconcileIntervalSeconds"),
    ({"operator": {"reconcileIntervalSeconds": 31}}, "/operator/reconcileIntervalSeconds"),
    # a pod label over a selector label: the Deployment's selector matched none of its pods
    ({"operator": {"podLabels": {"app.kubernetes.io/component": "x"}}}, "/operator/podLabels"),
    ({"operator": {"podLabels": {"app.kubernetes.io/instance": "other"}}}, "/operator/podLabels"),
    # the metrics policy without a namespace selector would let no one (or, {}, everyone) scrape
    ({"networkPolicy": {"metrics": {"enabled": True}}}, "/networkPolicy/metrics"),
])
def test_values_schema_rejects_mistakes(values, complaint):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        chart.render(values, name="stylebatch", namespace=NAMESPACE)


@pytest.mark.parametrize("key", ["workers", "gpusPerWorker", "progressTimeoutSeconds"])
def test_the_charts_job_defaults_have_the_bounds_the_crd_gives_a_jobs_spec(key: str) -> None:
    """jobs.* are the defaults of a StyleTransferJob's spec: the chart took values the CRD (and the
    operator reading them at its start) refuses."""
    import json

    from stylebatch_operator.crd import SPEC_SCHEMA

    chart = json.loads((CHART / "values.schema.json").read_text())["properties"]["jobs"]["properties"][key]
    crd = SPEC_SCHEMA["properties"][key]
    assert chart["type"] == crd["type"] and chart.get("minimum") == crd.get("minimum")
    assert "maximum" not in crd or chart.get("maximum") == crd["maximum"]


def test_pod_monitor_is_off_by_default_and_scrapes_what_the_operator_serves_when_on():
    assert not [o for o in render() if o["kind"] == "PodMonitor"]
    objects = render("aks")
    monitor = one(objects, "PodMonitor")
    pod = one(objects, "Deployment")["spec"]["template"]
    assert monitor["apiVersion"] == VARIANTS["aks"]["podMonitor"]["apiVersion"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    # the named port is the one the operator serves on, and the path one of its routes
    assert ports[endpoint["port"]] == int(next(a for a in container["args"] if a.startswith("--liveness-port="))
                                          .split("=")[1])
    served = {r.resource.canonical for r in application(Metrics(), lambda: True).router.routes()}
    assert endpoint["path"] in served and container["livenessProbe"]["httpGet"]["path"] in served


def test_service_monitor_is_off_by_default_and_its_service_reaches_the_operators_metrics_port():
    assert not [o for o in render() if o["kind"] in ("ServiceMonitor", "Service")]
    objects = render("monitoring")
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    pod = one(objects, "Deployment")["spec"]["template"]
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(service, version, strict=True)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] and port["targetPort"] == "http"
    assert "http" in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    served = {r.resource.canonical for r in application(Metrics(), lambda: True).router.routes()}
    assert endpoint["path"] in served


@pytest.mark.parametrize("node_selector, selected", [
    (None, {"kubernetes.io/os": "linux"}),
    ({}, {"kubernetes.io/os": "linux"}),
    ({"agentpool": "system"}, {"kubernetes.io/os": "linux", "agentpool": "system"}),
    ({"kubernetes.io/os": "windows", "agentpool": "w"}, {"kubernetes.io/os": "windows", "agentpool": "w"}),
])
def test_the_operator_pod_runs_on_linux_nodes_unless_its_node_selector_names_the_os(node_selector, selected):
    """An AKS cluster may have Windows node pools; the operator's image is Linux-only. The chart's
    operator.nodeSelector is merged over kubernetes.io/os: linux, a key of its own winning."""
    values = {} if node_selector is None else {"operator": {"nodeSelector": node_selector}}
    pod = one(render_manifests.render_objects(values, namespace=NAMESPACE), "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == selected
    for variant in VARIANTS:  # and in every shipped variant
        pod = one(render(variant), "Deployment")["spec"]["template"]["spec"]
        assert pod["nodeSelector"].get("kubernetes.io/os") == "linux", variant


def test_pod_labels_are_added_to_the_operator_pod_and_its_selector_still_selects_it():
    objects = render_manifests.render_objects({"operator": {"podLabels": {"team": "media"}}}, namespace=NAMESPACE)
    deployment = one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "media"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_metrics_services_name_is_a_dns_label_for_the_longest_release_names():
    """fullname keeps 50 characters and "-operator-metrics" adds 17: a 48-character release name
    gave a Service name of 65, which the API server refuses."""
    release = "video-team-production-eastus-stylebatch-release1"
    assert len(release) == 48
    objects = render_manifests.render_objects({"serviceMonitor": {"enabled": True}}, namespace=NAMESPACE,
                                              release=release)
    service, monitor = one(objects, "Service"), one(objects, "ServiceMonitor")
    name = service["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name), (name, len(name))
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(service, version, strict=True)
    # the ServiceMonitor finds it by labels, not by name
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) selects `labels`."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    tests = {"In": lambda e: labels.get(e["key"]) in e["values"], "NotIn": lambda e: labels.get(e["key"]) not in e["values"],
             "Exists": lambda e: e["key"] in labels, "DoesNotExist": lambda e: e["key"] not in labels}
    return all(tests[e["operator"]](e) for e in selector.get("matchExpressions") or [])


def network_policies(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def test_network_policies_are_off_by_default_and_on_cover_the_release_and_every_watched_namespace():
    assert not network_policies(render()) and not network_policies(render("aks"))
    policies = network_policies(render("namespaced"))
    job_policies = [p for p in policies if p["metadata"]["labels"]["app.kubernetes.io/component"] == "job"]
    namespaces = {NAMESPACE, *VARIANTS["namespaced"]["operator"]["watchNamespaces"]}
    assert sorted(p["metadata"]["namespace"] for p in job_policies) == sorted([*namespaces, *namespaces])
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress is not restricted: Blob Storage, Entra ID
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(policy, version, strict=True)
    cluster_wide = network_policies(render_manifests.render_objects({"networkPolicy": {"enabled": True}},
                                                                    namespace=NAMESPACE))
    assert {p["metadata"]["namespace"] for p in cluster_wide} == {NAMESPACE}  # the others: the example, by hand


def test_network_policies_let_only_the_stylize_steps_pods_reach_each_other_and_nothing_reach_other_job_pods():
    """Selected by the labels the operator's builders really put on each child's pods: every stage,
    the MPIJob's launcher and its sshd workers, with and without Kueue, training and workload identity."""
    from test_operator_manifests import VARIANTS as JOBS
    from test_operator_manifests import _templates, children, stj

    from stylebatch.contract import SSHD_PORT

    policies = network_policies(render("namespaced"))
    policies = [p for p in policies if p["metadata"]["namespace"] == NAMESPACE
                and p["metadata"]["labels"]["app.kubernetes.io/component"] == "job"]
    operator_pod = one(render("namespaced"), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not [p for p in policies if selects(p["spec"]["podSelector"], operator_pod)]
    for variant in JOBS.values():
        pods = [(child["metadata"]["labels"]["stylebatch.io/stage"], template) for child in children(stj(**variant))
                for template in _templates(child)]
        stages = {stage for stage, _ in pods}
        assert {"preprocess", "stylize", "postprocess"} <= stages
        for stage, template in pods:
            labels = template["metadata"]["labels"]
            governing = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
            assert governing, (stage, labels)  # every job pod is isolated for ingress
            sources = [peer for p in governing for rule in p["spec"]["ingress"] for peer in rule["from"]]
            assert all(set(peer) == {"podSelector"} for peer in sources)  # from this namespace only
            admitted = {s for s, other in pods if any(selects(peer["podSelector"], other["metadata"]["labels"])
                                                      for peer in sources)}
            assert admitted == ({"stylize"} if stage == "stylize" else set()), (stage, admitted)
            for container in template["spec"]["containers"]:  # the workers' sshd, which the launcher reaches
                assert stage == "stylize" or "readinessProbe" not in container
                if container["name"] == "worker":
                    assert container["readinessProbe"]["tcpSocket"]["port"] == SSHD_PORT
    # no port list: MPICH's proxies and ranks connect on ports it picks, besides the sshd's
    assert all("ports" not in rule for p in policies for rule in p["spec"]["ingress"])


def test_the_metrics_policy_opens_only_the_operators_port_and_only_to_the_chosen_namespaces():
    objects = render("namespaced")
    (policy,) = [p for p in network_policies(objects) if p["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"]
    pod = one(objects, "Deployment")["spec"]["template"]
    assert policy["metadata"]["namespace"] == NAMESPACE and selects(policy["spec"]["podSelector"], pod["metadata"]["labels"])
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": VARIANTS["namespaced"]["networkPolicy"]["metrics"]["namespaceSelector"]}]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert rule["ports"] == [{"port": ports["http"], "protocol": "TCP"}]
    assert not [p for p in network_policies(render_manifests.render_objects(
        {"networkPolicy": {"enabled": True}}, namespace=NAMESPACE)) if "operator" in p["metadata"]["name"]]


def test_the_network_policy_example_for_other_namespaces_is_the_charts():
    example = [d for d in yaml.safe_load_all((CHART / "examples" / "job-networkpolicy.yaml").read_text()) if d]
    rendered = network_policies(render_manifests.render_objects({"networkPolicy": {"enabled": True}},
                                                                namespace=NAMESPACE))
    assert [(p["metadata"]["name"], p["spec"]) for p in example] == [(p["metadata"]["name"], p["spec"]) for p in rendered]
    assert all("namespace" not in p["metadata"] for p in example)  # applied with kubectl -n


def _dashboard(objects: list[dict]) -> dict:
    config_map = one([o for o in objects if o["metadata"]["name"].endswith("-dashboard")], "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    return json.loads(config_map["data"]["stylebatch.json"])


def series_names(metrics: Metrics) -> set[str]:
    """Every series name /metrics exposes, samples or not yet: what a dashboard's queries may use."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {f.name + suffix for f in metrics.registry.collect() for suffix in suffixes[f.type]}


def test_grafana_dashboard_is_off_by_default_and_queries_exactly_the_metrics_the_operator_exports():
    assert not [o for o in render() if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    dashboard = _dashboard(render("monitoring"))
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for q in queries for name in re.findall(r"\bstylebatch_[a-z_]+", q)}
    exported = series_names(Metrics())
    assert used <= exported, used - exported  # every panel shows data: no name the operator does not export
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exported}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert shown == families, families - shown  # and every metric has a panel
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_reconcile_interval_reaches_the_operator():
    assert from_environment(env(render())).interval == 10
    values = {"operator": {"reconcileIntervalSeconds": 2.5}}
    assert from_environment(env(render_manifests.render_objects(values, namespace=NAMESPACE))).interval == 2.5


def test_every_variant_starts_the_operator_with_valid_settings():
    for variant in VARIANTS:
        settings = from_environment(env(render(variant)))  # raises on anything the operator refuses
        assert settings.job_defaults().get("storage"), variant  # every install gives jobs a way to storage


def test_job_service_account_can_be_brought_along_or_left_to_the_namespace():
    def accounts(values: dict) -> tuple[str, list[str]]:
        objects = render_manifests.render_objects(values, namespace=NAMESPACE)
        name = job_defaults(objects).get("serviceAccountName", "")
        created = [o["metadata"]["name"] for o in objects
                   if o["kind"] == "ServiceAccount" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "job"]
        return name, created
    assert accounts({}) == ("stylebatch-job", ["stylebatch-job"])
    assert accounts({"jobs": {"serviceAccount": {"create": False}}}) == ("", [])  # the namespace's default
    assert accounts({"jobs": {"serviceAccount": {"create": False, "name": "media-jobs"}}}) == ("media-jobs", [])
    aks = {**VARIANTS["aks"], "jobs": {**VARIANTS["aks"]["jobs"], "serviceAccount": {"create": False}}}
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError, match="jobs.serviceAccount.name is required"):
        chart.render(aks, name="stylebatch", namespace=NAMESPACE)


def test_chart_version_follows_the_package():
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
    assert meta["version"] == meta["appVersion"] == VERSION
    images = yaml.safe_load(meta["annotations"]["artifacthub.io/images"])
    rendered = [operator_container(render())["image"], job_defaults(render())["image"]]
    assert sorted(i["image"] for i in images) == sorted(rendered)


def test_the_charts_listing_names_every_crd_it_installs():
    """Artifact Hub's CRD list named StyleTransferJob only; the chart installs VideoWatch too."""
    with helm.Chart.load(CHART) as chart:
        listed = yaml.safe_load(chart.metadata["annotations"]["artifacthub.io/crds"])
    installed = [yaml.safe_load(p.read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))]
    assert sorted(c["name"] for c in listed) == sorted(c["metadata"]["name"] for c in installed)
    assert all(c["version"] in [v["name"] for i in installed for v in i["spec"]["versions"]] for c in listed)


def test_notes_say_how_to_finish_the_install():
    notes = render_manifests.render()["NOTES.txt"]
    # Rendered without a cluster there is no MPIJob API: the notes must say what to install.
    assert "Kubeflow MPI Operator" in notes and "mpi-operator" in notes
    # Every command names the release namespace, where the storage Secret and the job ServiceAccount are.
    assert "kubectl -n stylebatch get stj" in notes and "kubectl -n stylebatch apply -f job.yaml" in notes
    assert "kubectl get stj" not in notes and "kubectl apply -f job" not in notes and "kubectl create" not in notes
    assert "create secret generic stylebatch-storage" in notes
    aks = render_manifests.render(VARIANTS["aks"])["NOTES.txt"]
    assert "workload identity" in aks and "create secret" not in aks


@pytest.mark.parametrize("watched, where", [
    ([], NAMESPACE),  # all namespaces: the release's, where the chart creates the job ServiceAccount
    (["team-a", "team-b"], "team-a"),  # the release namespace is not watched: a job there never runs
    (["team-a", NAMESPACE], NAMESPACE),
])
def test_the_notes_submit_the_example_job_in_a_namespace_the_operator_watches(watched, where):
    """With operator.watchNamespaces not naming the release namespace, the notes still said to apply
    the job and create its storage Secret there, where no operator looks at it: it stayed without a
    status for ever."""
    values = {"operator": {"watchNamespaces": watched}}
    notes = render_manifests.render(values, namespace=NAMESPACE)["NOTES.txt"]
    args = operator_container(render_manifests.render_objects(values, namespace=NAMESPACE))["args"]
    handled = [a.split("=", 1)[1] for a in args if a.startswith("--namespace=")]
    assert not handled or where in handled
    for command in ("apply -f job.yaml", "get stj --watch", "describe stj", "create secret generic stylebatch-storage"):
        assert re.findall(rf"kubectl -n (\S+) {re.escape(command)}", notes) == [where], command
    assert f"kubectl -n {NAMESPACE} rollout status deployment/" in notes  # the operator stays in the release's
