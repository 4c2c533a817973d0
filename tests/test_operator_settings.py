"""The operator's settings: the chart's values reach the operator as ONE job-defaults document with
the StyleTransferJob spec's shape (STYLEBATCH_JOB_DEFAULTS) plus a few variables of its own, are
checked once at startup against the CRD's schema (a bad field stops it with one line naming it),
and become every job's defaults, which the job's own fields override. Pure, except the chart
rendering (Helm as a library)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from stylebatch.cli import main as cli_main
from stylebatch.errors import StylebatchError
from stylebatch_operator import settings as s
from stylebatch_operator.crd import SPEC_SCHEMA
from stylebatch_operator.settings import BUILT_IN_JOB_DEFAULTS, DEFAULT_IMAGE, Settings, from_environment
from stylebatch_operator.spec import effective_spec, resolve

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "stylebatch"
_spec = importlib.util.spec_from_file_location("render_manifests", ROOT / "scripts" / "render-manifests.py")
render_manifests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_manifests)

JOB = {"input": "az://videos/in.mp4", "output": "az://videos/out/in.mp4"}


def chart_env_entries(values: dict | None = None) -> list[dict]:
    """The operator container's env entries, as the chart renders them."""
    objects = render_manifests.render_objects(values)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]["containers"][0]["env"]


def chart_env(values: dict | None = None) -> dict[str, str]:
    """The operator container's environment as the chart renders it: the variables of a value (those
    from the pod itself, the downward API's, come at run time)."""
    return {e["name"]: e["value"] for e in chart_env_entries(values) if "value" in e}


def chart_defaults(values: dict | None = None) -> dict:
    """The job defaults as the chart writes them: a document the operator reads as it is."""
    return yaml.safe_load(chart_env(values)[s.JOB_DEFAULTS])


# --- from the chart to the settings ----------------------------------------------------------------

def test_the_chart_sets_every_variable_the_operator_reads_and_no_other():
    assert {e["name"] for e in chart_env_entries()} == set(s.ENV_VARS)


def test_the_chart_tells_the_operator_its_own_namespace_and_service_account():
    """What a job may not name as its pods' account (spec.operator_account_problem): from the pod
    itself (the downward API), so a renamed release or service account cannot leave it stale."""
    refs = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in chart_env_entries() if "valueFrom" in e}
    assert refs == {s.OPERATOR_NAMESPACE: "metadata.namespace", s.OPERATOR_SERVICE_ACCOUNT: "spec.serviceAccountName"}
    assert from_environment({s.OPERATOR_NAMESPACE: "stylebatch", s.OPERATOR_SERVICE_ACCOUNT: "sb-operator"}
                            ).operator_account == ("stylebatch", "sb-operator")


def test_the_chart_writes_the_job_defaults_as_one_document_with_the_specs_fields():
    document = chart_defaults()
    spec_fields = set(SPEC_SCHEMA["properties"])
    assert set(document) - spec_fields == {"serviceAccountName", "pods"}  # what no spec field sets
    assert document["workers"] == 2 and document["storage"] == {"secretName": "stylebatch-storage"}
    quantities = [q for r in (document["resources"], *document["pods"].values()) if isinstance(r, dict)
                  for kind in r.values() for q in kind.values()]
    assert quantities and all(isinstance(q, str) for q in quantities)


def test_default_chart_values_are_the_operators_built_in_defaults_plus_storage():
    chart = from_environment(chart_env()).job_defaults()
    built_in = Settings().job_defaults()
    assert chart["image"] == built_in["image"] == DEFAULT_IMAGE
    assert chart["imagePullPolicy"] == built_in["imagePullPolicy"]
    assert (chart["workers"], chart["gpusPerWorker"]) == (2, 1)
    assert chart["storage"] == {"secretName": "stylebatch-storage"} and "storage" not in built_in
    assert chart["serviceAccountName"] == "stylebatch-job"
    # every pod is sized the same way with or without the chart
    assert (chart["resources"], chart["pods"]) == (built_in["resources"], built_in["pods"])
    assert chart["progressTimeoutSeconds"] == built_in["progressTimeoutSeconds"] == 600
    assert "queueName" not in chart and "scheduling" not in chart
    settings = from_environment(chart_env())
    assert settings.interval == Settings().interval and settings.progress_read_seconds() == 30


def test_aks_values_become_the_job_defaults():
    values = yaml.safe_load((CHART / "ci" / "aks-values.yaml").read_text())
    values["imagePullSecrets"] = ["acr-pull"]
    values.setdefault("operator", {})["reconcileIntervalSeconds"] = 20
    values["jobs"]["resources"] = {"requests": {"cpu": 3}}  # a number is a quantity too (Helm merges the rest)
    settings = from_environment(chart_env(values))
    defaults, jobs = settings.job_defaults(), values["jobs"]
    assert defaults["image"] == f"{values['imageRegistry']}/stylebatch-worker:0.1.0"
    assert (defaults["workers"], defaults["gpusPerWorker"]) == (jobs["workers"], jobs["gpusPerWorker"])
    assert defaults["resources"]["requests"] == {"cpu": "3", "memory": "12Gi", "ephemeral-storage": "20Gi"}
    assert defaults["scheduling"] == {"nodeSelector": jobs["nodeSelector"], "tolerations": jobs["tolerations"]}
    assert defaults["imagePullSecrets"] == [{"name": "acr-pull"}]
    assert settings.interval == 20
    assert defaults["storage"] == {"serviceAccountName": "stylebatch-job", "accountName": values["storage"]["account"]}
    spec = resolve(JOB, settings)
    assert spec["storage"]["accountName"] == "stylebatchdata" and spec["serviceAccountName"] == "stylebatch-job"
    assert spec["scheduling"]["nodeSelector"] == jobs["nodeSelector"]


def test_without_a_created_job_service_account_the_pods_keep_the_namespaces_default():
    settings = from_environment(chart_env({"jobs": {"serviceAccount": {"create": False}}}))
    assert "serviceAccountName" not in settings.job_defaults()
    assert "serviceAccountName" not in resolve(JOB, settings)
    named = from_environment(chart_env({"jobs": {"serviceAccount": {"create": False, "name": "media-jobs"}}}))
    assert named.job_defaults()["serviceAccountName"] == "media-jobs"


# --- reading and checking ----------------------------------------------------------------------------

def test_unset_and_empty_variables_keep_the_built_in_defaults():
    assert from_environment({}) == Settings()
    assert from_environment({name: "" for name in s.ENV_VARS}) == Settings()
    assert Settings().job_defaults() == BUILT_IN_JOB_DEFAULTS and "storage" not in BUILT_IN_JOB_DEFAULTS


def test_the_job_defaults_may_be_yaml_or_json_and_leave_out_what_keeps_the_built_in_default():
    as_json = from_environment({s.JOB_DEFAULTS: '{"workers": 3, "pods": {"shmSize": "8Gi"}}'})
    as_yaml = from_environment({s.JOB_DEFAULTS: "workers: 3\npods:\n  shmSize: 8Gi\n"})
    assert as_json == as_yaml
    defaults = as_yaml.job_defaults()
    assert defaults["workers"] == 3 and defaults["image"] == DEFAULT_IMAGE
    assert defaults["pods"] == {**BUILT_IN_JOB_DEFAULTS["pods"], "shmSize": "8Gi"}  # pods: key by key


@pytest.mark.parametrize("document, complaint", [
    ("workers: 0", "workers: must be at least 1, got 0"),
    ("workers: 100", "workers: must be at most 64, got 100"),
    ("gpusPerWorker: one", "gpusPerWorker: must be an integer, got 'one'"),
    ("imagePullPolicy: Sometimes", "imagePullPolicy: must be one of Always, IfNotPresent, Never, got 'Sometimes'"),
    ("imagePullSecrets: [{nom: acr}]", "imagePullSecrets[0].name: is required"),
    ("resources: {cpu: '4'}", "resources.cpu: unknown field (known: requests, limits)"),
    ("resources: {limits: {memory: lots}}", "resources.limits.memory: must match"),
    ("pods: {scratchSize: 50 GB}", "pods.scratchSize: must match"),
    ("pods: {stageResources: []}", "pods.stageResources: must be an object, got []"),
    ("queueName: GPU_Queue", "queueName: must match"),
    ("scheduling: {tolerations: {key: sku}}", "scheduling.tolerations: must be an array"),
    ("scheduling: {nodeSelector: {stylebatch.io/gpu: true}}", "scheduling.nodeSelector.stylebatch.io/gpu: must be a string"),
    ("scheduling: {spot: true}", "scheduling.spot: unknown field (known: nodeSelector, tolerations)"),
    ("storage: {secretName: s, serviceAccountName: sa, accountName: a}",
     "storage: set exactly one of secretName and serviceAccountName"),
    ("storage: {serviceAccountName: sa}", "storage: accountName is required with serviceAccountName"),
    ("storage: {serviceAccountName: sa, accountName: ''}", "storage.accountName: must be set (not empty), got ''"),
    ("input: az://videos/x.mp4", "input: unknown field (known: image, imagePullPolicy"),  # each job's own
    ("worker: 2", "worker: unknown field"),  # a typo is not ignored
    ("progressTimeoutSeconds: 10", "progressTimeoutSeconds: must be at least 60, got 10"),
    ("[workers, 2]", "must be an object with the StyleTransferJob spec's fields"),
])
def test_a_bad_field_in_the_job_defaults_is_refused_by_the_crds_schema_with_the_field_named(document, complaint):
    with pytest.raises(StylebatchError) as err:
        from_environment({s.JOB_DEFAULTS: document})
    message = str(err.value)
    assert message.startswith(f"{s.JOB_DEFAULTS}: {complaint}") and "\n" not in message


def test_job_defaults_that_are_not_yaml_name_the_variable_and_the_place():
    with pytest.raises(StylebatchError) as err:
        from_environment({s.JOB_DEFAULTS: '{"workers": [2}'})
    assert str(err.value).startswith(f"{s.JOB_DEFAULTS} is not valid YAML or JSON (") and "line 1" in str(err.value)


@pytest.mark.parametrize("env, complaint", [
    ({s.PROGRESS_INTERVAL: "600"}, "STYLEBATCH_PROGRESS_INTERVAL must be a number of seconds between 0 and 300, got '600'"),
    ({s.LEASE_NAMESPACE: "Media Team"}, "STYLEBATCH_LEASE_NAMESPACE must be a Kubernetes name, got 'Media Team'"),
    ({s.INTERVAL: "60"}, "STYLEBATCH_OPERATOR_INTERVAL must be a number of seconds between 0 and 30, got '60'"),
    ({s.STALL_GRACE: "soon"}, "STYLEBATCH_STALL_GRACE_SECONDS must be a number of seconds"),
])
def test_wrong_operator_settings_are_refused_with_the_variable_named(env, complaint):
    with pytest.raises(StylebatchError, match=complaint.replace("(", r"\(")):
        from_environment(env)


def test_a_bad_job_default_stops_stylebatch_operator_before_it_connects(monkeypatch, capsys):
    monkeypatch.setenv(s.JOB_DEFAULTS, "scheduling: {tolerations: {key: sku}}")
    assert cli_main(["operator", "--namespace", "media"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stylebatch: error: STYLEBATCH_JOB_DEFAULTS: scheduling.tolerations: must be an array")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_startup_summary_names_the_defaults_without_credentials():
    line = from_environment(chart_env()).summary()
    assert line == ("job defaults: image ghcr.io/stylebatch/stylebatch-worker:0.1.0, 2 workers, 1 GPU each, "
                    "storage Secret stylebatch-storage")
    assert "\n" not in line


# --- the effective spec: the job's fields over the defaults ------------------------------------------

AKS = Settings(jobs={
    "image": "acr.io/stylebatch-worker:0.1.0", "imagePullPolicy": "Always", "imagePullSecrets": [{"name": "acr"}],
    "workers": 4, "gpusPerWorker": 2, "resources": {"requests": {"cpu": "3", "memory": "12Gi"}},
    "scheduling": {"nodeSelector": {"stylebatch.io/gpu": "true"},
                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    "serviceAccountName": "stylebatch-job", "storage": {"serviceAccountName": "stylebatch-job", "accountName": "data"}})


def test_defaults_fill_every_field_the_job_leaves_out():
    spec = resolve(JOB, AKS)
    assert spec == {
        **JOB, "image": "acr.io/stylebatch-worker:0.1.0", "imagePullPolicy": "Always",
        "imagePullSecrets": [{"name": "acr"}], "workers": 4, "gpusPerWorker": 2,
        "resources": {"requests": {"cpu": "3", "memory": "12Gi"}},
        "storage": {"serviceAccountName": "stylebatch-job", "accountName": "data"},
        "scheduling": {"nodeSelector": {"stylebatch.io/gpu": "true"},
                       "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                       "spot": False},
        "serviceAccountName": "stylebatch-job",
        "cleanup": {"childrenAfterSucceededSeconds": 0},
        # what no spec field sets: the other pods' resources, scratch and /dev/shm sizes
        "pods": BUILT_IN_JOB_DEFAULTS["pods"], "progressTimeoutSeconds": 600,
        # the CRD's own defaults, which the API server fills in too
        "style": "lavender-gold", "strength": 1.0, "activeDeadlineSeconds": 21600, "retries": 3, "keepWorkDir": False,
        "keepColors": False,
    }


def test_the_jobs_own_fields_win_each_as_a_whole():
    own = {**JOB, "image": "mine:1", "imagePullPolicy": "IfNotPresent", "imagePullSecrets": [], "workers": 1,
           "gpusPerWorker": 0, "resources": {"requests": {"cpu": "1"}}, "storage": {"secretName": "team-storage"},
           "scheduling": {"nodeSelector": {"pool": "cpu"}, "tolerations": [], "spot": False}}
    spec = resolve(own, AKS)
    assert {k: spec[k] for k in own} == own  # an empty list or a 0 is a value, not a gap
    # a Secret instead of workload identity: the pods still run as the job service account (no token)
    assert spec["serviceAccountName"] == "stylebatch-job"


def test_a_partly_set_scheduling_keeps_the_default_for_the_rest():
    spec = resolve({**JOB, "scheduling": {"spot": True, "nodeSelector": {"agentpool": "gpuspot"}}}, AKS)
    assert spec["scheduling"] == {"spot": True, "nodeSelector": {"agentpool": "gpuspot"},
                                  "tolerations": AKS.jobs["scheduling"]["tolerations"]}


def test_workload_identity_of_the_job_names_the_pods_service_account():
    spec = resolve({**JOB, "storage": {"serviceAccountName": "team-identity", "accountName": "teamdata"}}, AKS)
    assert spec["serviceAccountName"] == "team-identity"
    assert "serviceAccountName" not in resolve({**JOB, "storage": {"secretName": "s"}}, Settings())


def test_resolving_never_changes_the_settings_or_the_job():
    job = json.loads(json.dumps({**JOB, "scheduling": {"spot": True}}))
    spec = resolve(job, AKS)
    spec["scheduling"]["tolerations"].append({"key": "x"})
    spec["resources"]["requests"]["cpu"] = "99"
    assert job == {**JOB, "scheduling": {"spot": True}}
    assert resolve(JOB, AKS)["resources"] == {"requests": {"cpu": "3", "memory": "12Gi"}}
    assert len(resolve(JOB, AKS)["scheduling"]["tolerations"]) == 1


def test_a_started_job_keeps_its_effective_spec_whatever_the_settings_say_now():
    started = {"metadata": {"name": "j", "namespace": "media", "uid": "u"}, "spec": dict(JOB),
               "status": {"acceptedSpec": dict(JOB), "effectiveSpec": resolve(JOB, AKS)}}
    other = Settings(jobs={"image": "other:2", "workers": 1, "storage": {"secretName": "other"}})
    assert effective_spec(started, other) == resolve(JOB, AKS)
    assert effective_spec({**started, "status": {}}, other)["image"] == "other:2"  # before the start: today's
