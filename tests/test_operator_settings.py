"""The operator's settings: the chart's values reach the operator as STYLEBATCH_* variables, are
parsed once at startup (a malformed one stops it with one line), and become every job's defaults,
which the job's own fields override. Pure, except the chart rendering (Helm as a library)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from stylebatch.cli import main as cli_main
from stylebatch.errors import StylebatchError
from stylebatch_operator import settings as s
from stylebatch_operator.settings import DEFAULT_IMAGE, Settings, from_environment
from stylebatch_operator.spec import effective_spec, resolve

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "stylebatch"
_spec = importlib.util.spec_from_file_location("render_manifests", ROOT / "scripts" / "render-manifests.py")
render_manifests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_manifests)

JOB = {"input": "az://videos/in.mp4", "output": "az://videos/out/in.mp4"}


def chart_env(values: dict | None = None) -> dict[str, str]:
    """The operator container's environment, as the chart renders it."""
    objects = render_manifests.render_objects(values)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    return {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


# --- from the chart to the settings ----------------------------------------------------------------

def test_the_chart_sets_every_variable_the_operator_reads_and_no_other():
    assert set(chart_env()) == set(s.ENV_VARS)


def test_default_chart_values_are_the_operators_built_in_defaults_plus_storage():
    chart = from_environment(chart_env())
    built_in = Settings()
    assert chart.worker_image == built_in.worker_image == DEFAULT_IMAGE
    assert (chart.image_pull_policy, chart.interval) == (built_in.image_pull_policy, built_in.interval)
    assert (chart.workers, chart.gpus_per_worker) == (2, 1)
    assert (chart.storage_secret, chart.workload_identity) == ("stylebatch-storage", False)
    assert chart.job_service_account == "stylebatch-job"
    # every pod is sized the same way with or without the chart
    assert (chart.worker_resources, chart.stage_resources, chart.launcher_resources, chart.scratch_size,
            chart.shm_size) == (built_in.worker_resources, built_in.stage_resources, built_in.launcher_resources,
                                built_in.scratch_size, built_in.shm_size)
    assert chart.queue_name == built_in.queue_name == ""
    assert chart.progress_read_seconds() == built_in.progress_read_seconds() == 30


def test_aks_values_become_the_job_defaults():
    values = yaml.safe_load((CHART / "ci" / "aks-values.yaml").read_text())
    values["imagePullSecrets"] = ["acr-pull"]
    values.setdefault("operator", {})["reconcileIntervalSeconds"] = 20
    settings = from_environment(chart_env(values))
    jobs = values["jobs"]
    assert settings.worker_image == f"{values['imageRegistry']}/stylebatch-worker:0.1.0"
    assert (settings.workers, settings.gpus_per_worker) == (jobs["workers"], jobs["gpusPerWorker"])
    assert settings.worker_resources == jobs["resources"]
    assert settings.node_selector == jobs["nodeSelector"]
    assert list(settings.tolerations) == jobs["tolerations"]
    assert settings.image_pull_secrets == ("acr-pull",)
    assert settings.interval == 20
    assert settings.default_storage() == {"serviceAccountName": "stylebatch-job",
                                          "accountName": values["storage"]["account"]}
    spec = resolve(JOB, settings)
    assert spec["storage"]["accountName"] == "stylebatchdata" and spec["serviceAccountName"] == "stylebatch-job"
    assert spec["scheduling"]["nodeSelector"] == jobs["nodeSelector"]


def test_without_a_created_job_service_account_the_pods_keep_the_namespaces_default():
    settings = from_environment(chart_env({"jobs": {"serviceAccount": {"create": False}}}))
    assert settings.job_service_account == ""
    assert "serviceAccountName" not in resolve(JOB, settings)
    named = from_environment(chart_env({"jobs": {"serviceAccount": {"create": False, "name": "media-jobs"}}}))
    assert named.job_service_account == "media-jobs"


# --- parsing ---------------------------------------------------------------------------------------

def test_unset_and_empty_variables_keep_the_built_in_defaults():
    assert from_environment({}) == Settings()
    assert from_environment({name: "" for name in s.ENV_VARS}) == Settings()
    assert Settings().default_storage() is None


@pytest.mark.parametrize("name", [s.IMAGE_PULL_SECRETS, s.WORKER_RESOURCES, s.DEFAULT_NODE_SELECTOR,
                                  s.DEFAULT_TOLERATIONS])
def test_malformed_json_names_the_variable_in_one_line(name):
    with pytest.raises(StylebatchError) as err:
        from_environment({name: '{"sku": gpu}'})
    message = str(err.value)
    assert message.startswith(f"{name} is not valid JSON (") and "\n" not in message


@pytest.mark.parametrize("env, complaint", [
    ({s.DEFAULT_TOLERATIONS: '{"key": "sku"}'}, "STYLEBATCH_DEFAULT_TOLERATIONS must be a JSON list"),
    ({s.DEFAULT_NODE_SELECTOR: '{"stylebatch.io/gpu": true}'}, "STYLEBATCH_DEFAULT_NODE_SELECTOR must be a JSON object of strings"),
    ({s.WORKER_RESOURCES: '{"cpu": "4"}'}, "STYLEBATCH_WORKER_RESOURCES must be a JSON object such as"),
    ({s.STAGE_RESOURCES: '{"limits": {"memory": "lots"}}'}, "STYLEBATCH_STAGE_RESOURCES must be a JSON object such as"),
    ({s.LAUNCHER_RESOURCES: '[]'}, "STYLEBATCH_LAUNCHER_RESOURCES must be a JSON object such as"),
    ({s.SCRATCH_SIZE: "50 GB"}, "STYLEBATCH_SCRATCH_SIZE must be a Kubernetes quantity such as 8Gi, got '50 GB'"),
    ({s.SHM_SIZE: "-"}, "STYLEBATCH_SHM_SIZE must be a Kubernetes quantity"),
    ({s.DEFAULT_QUEUE_NAME: "GPU_Queue"}, "STYLEBATCH_DEFAULT_QUEUE_NAME must be a LocalQueue name"),
    ({s.PROGRESS_INTERVAL: "600"}, "STYLEBATCH_PROGRESS_INTERVAL must be at most 300 seconds, got '600'"),
    ({s.LEASE_NAMESPACE: "Media Team"}, "STYLEBATCH_LEASE_NAMESPACE must be a Kubernetes name, got 'Media Team'"),
    ({s.IMAGE_PULL_SECRETS: '[{"nom": "acr"}]'}, "STYLEBATCH_IMAGE_PULL_SECRETS must be a JSON list"),
    ({s.DEFAULT_WORKERS: "0"}, "STYLEBATCH_DEFAULT_WORKERS must be a whole number from 1 to 64, got '0'"),
    ({s.DEFAULT_GPUS_PER_WORKER: "one"}, "STYLEBATCH_DEFAULT_GPUS_PER_WORKER must be a whole number from 0 to 8"),
    ({s.IMAGE_PULL_POLICY: "Sometimes"}, "STYLEBATCH_IMAGE_PULL_POLICY must be one of Always, IfNotPresent, Never"),
    ({s.WORKLOAD_IDENTITY: "yes"}, "STYLEBATCH_WORKLOAD_IDENTITY must be true or false"),
    ({s.WORKLOAD_IDENTITY: "true", s.JOB_SERVICE_ACCOUNT: "stylebatch-job"},
     "STYLEBATCH_WORKLOAD_IDENTITY is true but STYLEBATCH_STORAGE_ACCOUNT is empty"),
    ({s.WORKLOAD_IDENTITY: "true", s.STORAGE_ACCOUNT: "data", s.JOB_SERVICE_ACCOUNT: "sa", s.STORAGE_SECRET: "x"},
     "choose one way to reach storage"),
    ({s.INTERVAL: "60"}, "STYLEBATCH_OPERATOR_INTERVAL must be a number of seconds between 0 and 30, got '60'"),
])
def test_wrong_values_are_refused_with_the_variable_named(env, complaint):
    with pytest.raises(StylebatchError, match=complaint.replace("(", r"\(")):
        from_environment(env)


def test_a_bad_setting_stops_stylebatch_operator_before_it_connects(monkeypatch, capsys):
    monkeypatch.setenv(s.DEFAULT_TOLERATIONS, "[{'key': 'sku'}]")
    assert cli_main(["operator", "--namespace", "media"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stylebatch: error: STYLEBATCH_DEFAULT_TOLERATIONS is not valid JSON")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_startup_summary_names_the_defaults_without_credentials():
    line = from_environment(chart_env()).summary()
    assert line == ("job defaults: image ghcr.io/stylebatch/stylebatch-worker:0.1.0, 2 worker(s), 1 GPU(s) each, "
                    "storage Secret stylebatch-storage")
    assert "\n" not in line


# --- the effective spec: the job's fields over the defaults ------------------------------------------

AKS = Settings(worker_image="acr.io/stylebatch-worker:0.1.0", image_pull_policy="Always", image_pull_secrets=("acr",),
               workers=4, gpus_per_worker=2, worker_resources={"requests": {"cpu": "3", "memory": "12Gi"}},
               node_selector={"stylebatch.io/gpu": "true"},
               tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
               job_service_account="stylebatch-job", storage_account="data", workload_identity=True)


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
        "pods": AKS.pod_defaults(),
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
                                  "tolerations": [dict(AKS.tolerations[0])]}


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
    other = Settings(worker_image="other:2", workers=1, storage_secret="other")
    assert effective_spec(started, other) == resolve(JOB, AKS)
    assert effective_spec({**started, "status": {}}, other)["image"] == "other:2"  # before the start: today's
