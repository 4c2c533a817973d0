"""Tenant restrictions: the chart's ValidatingAdmissionPolicy, rendered by Helm (helm-python-sdk),
checked against the Kubernetes schemas (kubernetes-validate), and its CEL expressions evaluated
with cel-python against jobs an admin allows and jobs it refuses: no API server can run here, so
cel-python stands in for the API server's CEL."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import celpy
import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from stylebatch_operator.crd import SPEC_SCHEMA, apply_defaults

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "stylebatch"
_spec = importlib.util.spec_from_file_location("render_manifests", ROOT / "scripts" / "render-manifests.py")
render_manifests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_manifests)

# An admin's values: one registry, the team's Secrets and identity, at most 4 GPUs a job (the
# chart's defaults: 2 workers, 1 GPU each).
RESTRICTED = {"admissionPolicy": {
    "enabled": True, "allowedImages": ["stylebatchacr.azurecr.io/stylebatch-worker:"],
    "allowedSecrets": ["stylebatch-storage", "acr-pull"], "allowedServiceAccounts": ["stylebatch-job"],
    "maxGpusPerJob": 4, "namespaceSelector": {"matchLabels": {"stylebatch.io/tenant": "true"}}}}


def policy_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in render_manifests.render_objects(values, namespace="stylebatch")
            if o["apiVersion"].startswith("admissionregistration.k8s.io/")]


def job(**spec: Any) -> dict[str, Any]:
    """A job as the API server has it when validating admission runs: after the CRD's defaults."""
    own = {"input": "az://videos/in.mp4", "output": "az://videos/out.mp4", **spec}
    return {"apiVersion": "stylebatch.io/v1alpha1", "kind": "StyleTransferJob",
            "metadata": {"name": "orangutan", "namespace": "media"}, "spec": apply_defaults(own, SPEC_SCHEMA)}


TENANT = "alice@contoso.com"
OPERATOR = "system:serviceaccount:stylebatch:stylebatch-operator"  # the chart's, in its namespace


def admit(policy: dict[str, Any], obj: dict[str, Any], *, user: str = TENANT, old: dict[str, Any] | None = None
          ) -> list[str]:
    """What the API server answers `user`'s CREATE of obj, or with `old`, a write of obj's status
    over old's (a PATCH of styletransferjobs/status): the failed validations' messages (none:
    allowed). Only requests the policy matches reach it."""
    operation, subresource = ("CREATE", "") if old is None else ("UPDATE", "status")
    matched = any(operation in rule["operations"] and
                  (f"styletransferjobs/{subresource}" if subresource else "styletransferjobs") in rule["resources"]
                  for rule in policy["spec"]["matchConstraints"]["resourceRules"])
    if not matched:
        return []
    env = celpy.Environment()

    def evaluate(expression: str, activation: dict[str, Any]) -> Any:
        return env.program(env.compile(expression)).evaluate(activation)

    request = {"operation": operation, "subResource": subresource, "userInfo": {"username": user}}
    activation: dict[str, Any] = {"object": celpy.json_to_cel(obj), "request": celpy.json_to_cel(request),
                                  "oldObject": celpy.json_to_cel(old)}
    variables = {v["name"]: evaluate(v["expression"], activation) for v in policy["spec"].get("variables", [])}
    activation["variables"] = celpy.celtypes.MapType(
        {celpy.celtypes.StringType(k): v for k, v in variables.items()})
    messages = []
    for rule in policy["spec"]["validations"]:
        if not bool(evaluate(rule["expression"], activation)):
            messages.append(str(evaluate(rule["messageExpression"], activation)))
    return messages


def test_the_policy_is_off_by_default():
    assert policy_objects({}) == []


@pytest.mark.parametrize("version", ["1.30", kubernetes_validate.latest_version()])
def test_the_policy_and_its_binding_are_valid_kubernetes_objects(version):
    objects = policy_objects(RESTRICTED)
    assert [o["kind"] for o in objects] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    policy, binding = objects
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"] == {"matchLabels": {"stylebatch.io/tenant": "true"}}
    rules = [(r["apiGroups"], r["resources"], r["operations"]) for r in policy["spec"]["matchConstraints"]["resourceRules"]]
    # the spec on create only (it never changes afterwards, and the operator's finalizer patches
    # pass); the status on every write
    assert rules == [(["stylebatch.io"], ["styletransferjobs"], ["CREATE"]),
                     (["stylebatch.io"], ["styletransferjobs/status"], ["UPDATE"])]


ACR = "stylebatchacr.azurecr.io/stylebatch-worker:0.2.0"
ALLOWED = [
    ("everything left to the operator's defaults", job()),
    ("the allowed registry and Secrets", job(image=ACR, storage={"secretName": "stylebatch-storage"},
                                             imagePullSecrets=[{"name": "acr-pull"}])),
    ("the allowed workload identity", job(storage={"serviceAccountName": "stylebatch-job", "accountName": "data"})),
    ("4 GPUs exactly", job(workers=2, gpusPerWorker=2)),
    ("a CPU-only job", job(workers=16, gpusPerWorker=0)),
]
REFUSED = [
    ("another registry", job(image="docker.io/someone/miner:latest"),
     "spec.image docker.io/someone/miner:latest is not allowed in this cluster: images must start with one of "
     "stylebatchacr.azurecr.io/stylebatch-worker:"),
    ("a look-alike of the allowed image", job(image="stylebatchacr.azurecr.io/stylebatch-worker-evil:1"),
     "spec.image stylebatchacr.azurecr.io/stylebatch-worker-evil:1 is not allowed"),
    ("another team's storage Secret", job(storage={"secretName": "finance-storage"}),
     "spec.storage.secretName finance-storage is not allowed in this cluster: use one of stylebatch-storage, acr-pull"),
    ("another pull Secret", job(imagePullSecrets=[{"name": "acr-pull"}, {"name": "prod-registry"}]),
     "spec.imagePullSecrets names a Secret that is not allowed in this cluster"),
    ("another identity", job(storage={"serviceAccountName": "admin-identity", "accountName": "data"}),
     "spec.storage.serviceAccountName admin-identity is not allowed in this cluster: use one of stylebatch-job"),
    ("too many GPUs", job(workers=8, gpusPerWorker=1),
     "the job asks for 8 GPUs (workers x gpusPerWorker); at most 4 per job in this cluster"),
    ("too many GPUs with the default worker count", job(gpusPerWorker=4),
     "the job asks for 8 GPUs (workers x gpusPerWorker)"),
]


@pytest.mark.parametrize("case, obj", ALLOWED, ids=[c[0] for c in ALLOWED])
def test_jobs_within_the_restrictions_are_admitted(case, obj):
    (policy, _) = policy_objects(RESTRICTED)
    assert admit(policy, obj) == []


@pytest.mark.parametrize("case, obj, message", REFUSED, ids=[c[0] for c in REFUSED])
def test_jobs_outside_the_restrictions_are_refused_with_a_message_saying_why(case, obj, message):
    (policy, _) = policy_objects(RESTRICTED)
    messages = admit(policy, obj)
    assert len(messages) == 1 and messages[0].startswith(message), messages


ACCEPTED = job(image=ACR)
ACCEPTED["status"] = {"phase": "Pending", "acceptedSpec": ACCEPTED["spec"],
                      "effectiveSpec": {**ACCEPTED["spec"], "serviceAccountName": "stylebatch-job"}}


def status_write(**status: Any) -> dict[str, Any]:
    """The accepted job with these status fields written (effectiveSpec: these fields in it)."""
    effective = {**ACCEPTED["status"]["effectiveSpec"], **status.pop("effectiveSpec", {})}
    return {**ACCEPTED, "status": {**ACCEPTED["status"], "effectiveSpec": effective, **status}}


# (case, who writes the status, what the job is afterwards, refused)
STATUS_WRITES = [
    ("the operator records progress", OPERATOR, status_write(phase="Stylizing", progress={"framesDone": 10}), False),
    ("a tenant swaps in another image", TENANT, status_write(effectiveSpec={"image": "docker.io/someone/miner:1"}), True),
    ("a tenant swaps in another identity", TENANT, status_write(effectiveSpec={"serviceAccountName": "admin-identity"}),
     True),
    ("a tenant rewrites the phase", TENANT, status_write(phase="Succeeded"), True),
]


@pytest.mark.parametrize("case, user, after, refused", STATUS_WRITES, ids=[c[0] for c in STATUS_WRITES])
def test_only_the_operator_may_write_a_jobs_status_from_which_its_pods_are_built(case, user, after, refused):
    (policy, _) = policy_objects(RESTRICTED)
    messages = admit(policy, after, user=user, old=ACCEPTED)
    if refused:
        assert messages == [f"only the stylebatch operator ({OPERATOR}) may write a StyleTransferJob status, not "
                            f"{user}: the pods are built from status.effectiveSpec"]
    else:
        assert messages == []


def test_the_status_guard_names_the_operators_own_service_account():
    values = {**RESTRICTED, "serviceAccount": {"create": True, "name": "op"}}
    (policy, _) = policy_objects(values)
    assert admit(policy, ACCEPTED, user="system:serviceaccount:stylebatch:op", old=job(image=ACR)) == []
    assert admit(policy, ACCEPTED, user=OPERATOR, old=job(image=ACR))  # not the chart's default name any more


def test_only_the_restrictions_an_admin_sets_are_enforced():
    (policy, _) = policy_objects({"admissionPolicy": {"enabled": True, "maxGpusPerJob": 2}})
    assert len(policy["spec"]["validations"]) == 2  # the GPU limit, and the status guard that is always there
    assert admit(policy, job(image="docker.io/anything:1", storage={"secretName": "any"})) == []
    assert admit(policy, job(workers=3)) == ["the job asks for 3 GPUs (workers x gpusPerWorker); at most 2 per job "
                                             "in this cluster"]


# (case, allowedImages, image, admitted)
IMAGE_PREFIXES = [
    ("a registry host admits its images", ["myregistry.azurecr.io"], "myregistry.azurecr.io/stylebatch-worker:1", True),
    ("a registry host is not a prefix of another host", ["myregistry.azurecr.io"],
     "myregistry.azurecr.io.evil.com/stylebatch-worker:1", False),
    ("a repository admits its tags", ["myacr.azurecr.io/stylebatch-worker"], "myacr.azurecr.io/stylebatch-worker:0.2.0",
     True),
    ("a repository admits its digests", ["myacr.azurecr.io/stylebatch-worker"],
     "myacr.azurecr.io/stylebatch-worker@sha256:" + "0" * 64, True),
    ("a repository is not a prefix of another repository", ["myacr.azurecr.io/stylebatch-worker"],
     "myacr.azurecr.io/stylebatch-worker-evil:1", False),
    ("a whole image reference admits that image", ["myacr.azurecr.io/stylebatch-worker:0.2.0"],
     "myacr.azurecr.io/stylebatch-worker:0.2.0", True),
    ("a whole image reference admits no longer tag", ["myacr.azurecr.io/stylebatch-worker:0.2.0"],
     "myacr.azurecr.io/stylebatch-worker:0.2.0-evil", False),
    ("a prefix ending in / admits what is below it", ["myacr.azurecr.io/team/"], "myacr.azurecr.io/team/worker:1",
     True),
]


@pytest.mark.parametrize("case, allowed, image, admitted", IMAGE_PREFIXES, ids=[c[0] for c in IMAGE_PREFIXES])
def test_an_allowed_image_prefix_ends_at_a_whole_name_component(case, allowed, image, admitted):
    (policy, _) = policy_objects({"admissionPolicy": {"enabled": True, "allowedImages": allowed}})
    messages = admit(policy, job(image=image))
    assert messages == [] if admitted else messages == [
        f"spec.image {image} is not allowed in this cluster: images must start with one of {allowed[0]}"]


# (case, values, the job's storage, what is refused)
CREDENTIALS = [
    ("Secrets restricted: no workload identity either", {"allowedSecrets": ["stylebatch-storage"]},
     {"serviceAccountName": "admin-identity", "accountName": "data"},
     "spec.storage.serviceAccountName admin-identity is not allowed in this cluster: jobs may name no workload "
     "identity here: leave spec.storage to the operator default"),
    ("identities restricted: no Secret either", {"allowedServiceAccounts": ["stylebatch-job"]},
     {"secretName": "finance-storage"},
     "spec.storage.secretName finance-storage is not allowed in this cluster: jobs may name no Secret here: leave "
     "spec.storage and spec.imagePullSecrets to the operator defaults"),
    ("Secrets restricted: a listed Secret", {"allowedSecrets": ["stylebatch-storage"]},
     {"secretName": "stylebatch-storage"}, None),
    ("identities restricted: a listed identity", {"allowedServiceAccounts": ["stylebatch-job"]},
     {"serviceAccountName": "stylebatch-job", "accountName": "data"}, None),
]


@pytest.mark.parametrize("case, values, storage, refused", CREDENTIALS, ids=[c[0] for c in CREDENTIALS])
def test_restricting_either_kind_of_credential_restricts_both(case, values, storage, refused):
    (policy, _) = policy_objects({"admissionPolicy": {"enabled": True, **values}})
    assert admit(policy, job(storage=storage)) == ([refused] if refused else [])


# (case, scheduling, refused)
SCHEDULING = [
    ("the cluster's defaults", None, False),
    ("a spot pool", {"spot": True}, False),
    ("a toleration of its own", {"tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}]}, True),
    ("a node selector of its own", {"nodeSelector": {"agentpool": "teamb"}}, True),
]


@pytest.mark.parametrize("case, scheduling, refused", SCHEDULING, ids=[c[0] for c in SCHEDULING])
def test_with_fixed_scheduling_a_job_cannot_choose_its_nodes(case, scheduling, refused):
    (policy, _) = policy_objects({"admissionPolicy": {"enabled": True, "fixedScheduling": True}})
    messages = admit(policy, job(**({"scheduling": scheduling} if scheduling else {})))
    assert messages == (["spec.scheduling.nodeSelector and spec.scheduling.tolerations are not allowed in this "
                         "cluster: the workers go where the cluster defaults send them"] if refused else [])
    (unrestricted, _) = policy_objects(RESTRICTED)  # off by default
    assert admit(unrestricted, job(**({"scheduling": scheduling} if scheduling else {}))) == []


def test_the_gpu_limit_counts_unset_fields_with_the_charts_defaults():
    values = {**RESTRICTED, "jobs": {"workers": 4, "gpusPerWorker": 2}}
    (policy, _) = policy_objects(values)
    assert admit(policy, job()) == ["the job asks for 8 GPUs (workers x gpusPerWorker); at most 4 per job in this "
                                    "cluster"]


@pytest.mark.parametrize("values, complaint", [
    ({"admissionPolicy": {"enabled": True}}, "set at least one of allowedImages"),
    ({"admissionPolicy": {"enabled": True, "maxGpusPerJob": -1}}, "/admissionPolicy/maxGpusPerJob"),
    ({"admissionPolicy": {"enabled": True, "allowedSecrets": ["Not A Name"]}}, "/admissionPolicy/allowedSecrets/0"),
    ({"admissionPolicy": {"enabled": True, "maxGpusPerJob": 4, "validationActions": ["Block"]}},
     "/admissionPolicy/validationActions/0"),
])
def test_restrictions_that_cannot_work_are_refused_at_install(values, complaint):
    with helm.Chart.load(CHART) as chart, pytest.raises((helm.HelmValuesError, helm.HelmRenderError),
                                                        match=re.escape(complaint)):
        chart.render(values, name="stylebatch", namespace="stylebatch")


def test_the_documented_example_values_render_the_documented_policy():
    doc = (ROOT / "docs" / "operator.md").read_text()
    example = doc.split("## Tenant restrictions", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    (policy, binding) = policy_objects(yaml.safe_load(example))
    assert admit(policy, job(image="docker.io/someone/miner:latest"))
    assert admit(policy, job()) == []
