"""manifests/: the plain `kubectl apply -f manifests/` install, rendered from the chart (and never
drifting from it), the examples users copy, and what scripts/kind-e2e.sh and docs/deploy-aks.md apply."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stylebatch_operator.settings import Settings, from_environment
from stylebatch_operator.spec import resolve, spec_problems

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
CHART = ROOT / "charts" / "stylebatch"
KIND_SCRIPT = ROOT / "scripts" / "kind-e2e.sh"
GUIDE = ROOT / "docs" / "deploy-aks.md"
_spec = importlib.util.spec_from_file_location("render_manifests", ROOT / "scripts" / "render-manifests.py")
render_manifests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_manifests)


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def crd_schema(file: str = "styletransferjobs.yaml") -> dict:
    (crd,) = load(CHART / "crds" / file)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def operator_settings(objects: list[dict]) -> Settings:
    """The settings the operator Deployment among `objects` starts with."""
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return from_environment({e["name"]: e["value"] for e in container["env"] if "value" in e})


def validate(obj: dict) -> None:
    if obj["kind"] == "StyleTransferJob":
        jsonschema.validate(obj, crd_schema())
    elif obj["kind"] == "VideoWatch":
        jsonschema.validate(obj, crd_schema("videowatches.yaml"))
    else:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_manifests_are_the_rendered_chart():
    expected = render_manifests.plain_manifests()
    committed = {str(p.relative_to(MANIFESTS)): p.read_text()
                 for p in [*MANIFESTS.glob("*.yaml"), *MANIFESTS.glob("examples/*.yaml")]}
    assert committed.keys() == expected.keys(), "run scripts/render-manifests.py"
    stale = [path for path in expected if committed[path] != expected[path]]
    assert not stale, f"out of date (run scripts/render-manifests.py): {stale}"


def test_render_script_check_mode_agrees():
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "scripts/render-manifests.py", "--check"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "manifests/ is up to date\n"


def test_render_script_without_helm_python_says_what_to_run():
    code = ("import runpy, sys; sys.modules['helm_python'] = None; sys.argv = ['render-manifests.py', '--check']; "
            "runpy.run_path('scripts/render-manifests.py', run_name='__main__')")
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "render-manifests: helm_python is not installed: run `bash scripts/setup.sh --test`\n"


def test_example_job_is_the_charts():
    assert (MANIFESTS / "examples" / "job.yaml").read_text() == (CHART / "examples" / "job.yaml").read_text()


def test_apply_order_creates_namespace_and_crd_before_the_operator():
    kinds = [obj["kind"] for path in sorted(MANIFESTS.glob("*.yaml")) for obj in load(path)]
    assert kinds[0] == "Namespace" and kinds[1] == "CustomResourceDefinition"
    assert kinds[-1] == "Deployment" and "ClusterRole" in kinds and "ServiceAccount" in kinds


def test_plain_install_lands_in_its_own_namespace():
    (namespace,) = load(MANIFESTS / "00-namespace.yaml")
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for path in MANIFESTS.glob("[0-9]*.yaml"):
        for obj in load(path):
            if obj["kind"] not in cluster_scoped:
                assert obj["metadata"]["namespace"] == namespace["metadata"]["name"], (path.name, obj["kind"])
    # Plain manifests are not a Helm release and must not claim to be one.
    text = "".join(p.read_text() for p in MANIFESTS.glob("[0-9]*.yaml"))
    assert "managed-by: Helm" not in text and "helm.sh/chart" not in text


def test_the_namespaces_enforce_the_restricted_pod_security_standard_which_every_pod_meets():
    """The plain install's namespace and the guide's enforced only baseline, though every pod there
    (the operator's; each job's preprocess, training, MPIJob launcher and sshd workers, and
    postprocess) meets restricted."""
    from test_operator_manifests import VARIANTS, _templates, children, restricted_violations, stj

    (namespace,) = load(MANIFESTS / "00-namespace.yaml")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    label = re.search(r"^kubectl label namespace \$NS (.*)$", GUIDE.read_text(), re.M).group(1).split()
    assert "pod-security.kubernetes.io/enforce=restricted" in label
    chart_variants = [{}, *(yaml.safe_load(p.read_text()) for p in sorted((CHART / "ci").glob("*.yaml")))]
    for values in chart_variants:
        objects = render_manifests.render_objects(values)
        (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
        assert restricted_violations(deployment["spec"]["template"]["spec"]) == []
    (deployment,) = [o for o in load(MANIFESTS / "30-operator.yaml") if o["kind"] == "Deployment"]
    assert restricted_violations(deployment["spec"]["template"]["spec"]) == []
    for variant in VARIANTS.values():  # GPUs, CPUs, spot, workload identity, Kueue, training, AKS defaults
        pods = [t["spec"] for child in children(stj(**variant)) for t in _templates(child)]
        assert len(pods) >= 3 and all(restricted_violations(pod) == [] for pod in pods)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("*.yaml")))
def test_every_manifest_is_valid(path):
    objects = load(MANIFESTS / path)
    assert objects
    for obj in objects:
        validate(obj)


def test_example_job_runs_with_the_plain_installs_defaults_and_the_example_secret():
    (job,) = load(MANIFESTS / "examples" / "job.yaml")
    (secret,) = load(MANIFESTS / "examples" / "storage-secret.yaml")
    settings = operator_settings(load(MANIFESTS / "30-operator.yaml"))  # kubectl apply -f manifests/
    assert spec_problems(job, settings) == []
    spec = resolve(job["spec"], settings)
    assert spec["storage"] == {"secretName": secret["metadata"]["name"]}
    assert (spec["workers"], spec["gpusPerWorker"]) == (2, 1)
    assert re.fullmatch(r"az://[a-z0-9-]{3,63}/.+", job["spec"]["input"])


def test_storage_secret_example_has_placeholders_only_and_the_keys_pods_read():
    (secret,) = load(MANIFESTS / "examples" / "storage-secret.yaml")
    data = secret["stringData"]
    assert set(data) == {"AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_SAS_TOKEN"}
    assert all(value.startswith("<") and value.endswith(">") for value in data.values())
    assert "AZURE_STORAGE_CONNECTION_STRING" in (MANIFESTS / "examples" / "storage-secret.yaml").read_text()


# --- scripts/kind-e2e.sh and what it applies -------------------------------------------------------

def test_kind_script_is_valid_bash_and_says_where_it_can_run():
    subprocess.run(["bash", "-n", str(KIND_SCRIPT)], check=True, timeout=30)
    head = KIND_SCRIPT.read_text()[:1200]
    assert "internet" in head and "CANNOT run on this" in head
    assert "set -euo pipefail" in KIND_SCRIPT.read_text()


@pytest.mark.parametrize("script, words", [
    ("scripts/kind-e2e.sh", ["kind cluster", "KEEP_CLUSTER=0", "TIMEOUT_S"]),
    ("benchmarks/gpu_host.sh", ["bench_gpu.py", "BUDGET", "OUT="]),
])
def test_the_scripts_a_user_runs_by_hand_say_what_they_do_with_help_and_do_nothing_else(tmp_path, script, words):
    """Each ran on `--help`: kind-e2e.sh ignored it and went on to create a cluster, gpu_host.sh ran its
    GPU smoke run and then handed it to bench_gpu.py. Now they print their header, exit 0 and make nothing."""
    for flag in ("--help", "-h"):
        result = subprocess.run(["bash", str(ROOT / script), flag], capture_output=True, text=True, timeout=30,
                                cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")})
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert all(w in result.stdout for w in words) and not result.stdout.startswith(("#", "!"))
        assert os.listdir(tmp_path) == []


def test_the_kind_script_refuses_an_argument_it_does_not_take(tmp_path):
    result = subprocess.run(["bash", str(KIND_SCRIPT), "--keep"], capture_output=True, text=True, timeout=30,
                            cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--keep" in result.stderr
    assert os.listdir(tmp_path) == []


def test_kind_script_only_uses_files_that_exist():
    text = KIND_SCRIPT.read_text()
    for path in set(re.findall(r"\b((?:manifests|charts|scripts)/[\w./-]+\.(?:yaml|sh|py))\b", text)):
        assert (ROOT / path).exists(), path
    for dockerfile in re.findall(r"-f (Dockerfile\.\w+)", text):
        assert (ROOT / dockerfile).exists()


def test_kind_script_loads_the_images_the_chart_runs():
    text = KIND_SCRIPT.read_text()
    version = render_manifests.yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    tag = re.search(r'--set jobs\.image\.tag="\$VERSION(-\w+)"', text).group(1)
    values = yaml.safe_load((CHART / "ci" / "kind-values.yaml").read_text())
    values.setdefault("jobs", {}).setdefault("image", {})["tag"] = version + tag
    objects = render_manifests.render_objects(values)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    defaults = yaml.safe_load({e["name"]: e["value"] for e in container["env"] if "value" in e}["STYLEBATCH_JOB_DEFAULTS"])
    built = {line.split(":")[0]: line for line in (
        re.search(r"^OPERATOR_IMAGE=(\S+)", text, re.M).group(1).replace("$VERSION", version),
        re.search(r"^WORKER_IMAGE=(\S+)", text, re.M).group(1).replace("$VERSION", version))}
    assert container["image"] == built["stylebatch-operator"]
    assert defaults["image"] == built["stylebatch-worker"]
    assert container["imagePullPolicy"] == "Never", "kind-loaded images are not in any registry"
    assert "--build-arg VARIANT=cpu" in text and defaults["gpusPerWorker"] == 0


def test_a_rerun_on_the_kept_kind_cluster_runs_the_rebuilt_operator_against_this_releases_crds():
    """The script keeps its cluster by default and reruns `helm upgrade --install` there, which never
    updates crds/ (the new operator then refused the older CRD and the run failed at --wait), and,
    the rebuilt operator image keeping its tag, left the operator's pod template as it was: the old
    operator kept running. The CRDs are applied first, and the pod template names the image id."""
    text = KIND_SCRIPT.read_text()
    helm_at = text.index("helm upgrade --install")
    crds = re.search(r"^k apply --server-side --force-conflicts -f (charts/stylebatch/crds/)$", text, re.M)
    assert crds and crds.start() < helm_at and (ROOT / crds.group(1)).is_dir()
    command = text[helm_at:text.index("\n\n", helm_at)]
    key, variable = re.search(r'--set-string "operator\.podAnnotations\.(\S+)=\$(\w+)"', command).groups()
    assert f"{variable}=$(docker image inspect -f '{{{{.Id}}}}' \"$OPERATOR_IMAGE\")" in text[:helm_at]
    values = yaml.safe_load((CHART / "ci" / "kind-values.yaml").read_text())

    def pod_template(image_id: str) -> dict:
        annotations = {key.replace("\\.", "."): image_id}
        objects = render_manifests.render_objects({**values, "operator": {"podAnnotations": annotations}})
        return next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]

    rebuilt, before = pod_template("sha256:" + "1" * 64), pod_template("sha256:" + "2" * 64)
    assert rebuilt != before and rebuilt["spec"] == before["spec"]  # a rollout, by the annotation alone


def test_kind_azurite_is_reachable_where_the_job_secret_points():
    text = KIND_SCRIPT.read_text()
    objects = load(MANIFESTS / "kind" / "azurite.yaml")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    service = next(o for o in objects if o["kind"] == "Service")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    container = pod["spec"]["containers"][0]
    assert {"name": port["targetPort"], "containerPort": port["port"]} in container["ports"]
    assert f"--blobPort {port['port']}" in " ".join(container["command"])
    endpoint = re.search(r'^endpoint="(\S+)"', text, re.M).group(1)
    assert endpoint == f"http://{service['metadata']['name']}.$NS.svc.cluster.local:{port['port']}/devstoreaccount1"
    assert f"svc/{service['metadata']['name']}" in text
    # The account key: random per cluster, from a Secret, never in a file of this repository.
    key_ref = container["env"][0]["valueFrom"]["secretKeyRef"]
    assert key_ref["name"] in text and "/dev/urandom" in text
    assert not re.search(r"AccountKey=[A-Za-z0-9+/]{20,}", text + (MANIFESTS / "kind" / "azurite.yaml").read_text())
    assert re.search(r":\d+\.\d+\.\d+$", container["image"]), "pin the emulator"


def test_kind_job_is_the_example_run_on_cpus_by_the_charts_kind_defaults():
    # Replays the script's edit of the example job, validates it against the CRD, and resolves it
    # with the settings the kind install gives the operator.
    text = KIND_SCRIPT.read_text()
    code = re.search(r'\$PY - > "\$work/job.yaml" <<\'EOF\'\n(.*?)\nEOF\n', text, re.S)
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-"],
                            input=code.group(1), cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    job = yaml.safe_load(result.stdout)
    validate(job)
    values = yaml.safe_load((CHART / "ci" / "kind-values.yaml").read_text())
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    tag = re.search(r'--set jobs\.image\.tag="\$VERSION(-\w+)"', text).group(1)
    values["jobs"]["image"] = {"repository": "stylebatch-worker", "tag": version + tag}
    spec = resolve(job["spec"], operator_settings(render_manifests.render_objects(values, namespace="stylebatch")))
    assert spec["gpusPerWorker"] == 0 and spec["image"] == f"stylebatch-worker:{version}-cpu"
    assert spec["imagePullPolicy"] == "Never" and spec["storage"] == {"secretName": "stylebatch-storage"}
    assert "scheduling" not in job["spec"]
    assert "secret generic stylebatch-storage" in text


# --- docs/deploy-aks.md and manifests/aks/ --------------------------------------------------------

def guide_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), re.S)


def test_device_plugin_runs_on_every_gpu_pool_the_guide_creates():
    pools = [block for block in guide_blocks("bash") if "az aks nodepool add" in block]
    assert len(pools) >= 2, "a GPU pool and a spot GPU pool"
    (daemonset,) = [o for o in load(MANIFESTS / "aks" / "nvidia-device-plugin.yaml") if o["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    tolerated = {(t["key"], t.get("value"), t["effect"]) for t in pod["tolerations"] if t["operator"] == "Equal"}
    tolerated_keys = {t["key"] for t in pod["tolerations"] if t["operator"] == "Exists"}
    for pool in pools:
        labels = dict(kv.split("=") for kv in re.search(r"--labels (\S+)", pool).group(1).split(","))
        assert pod["nodeSelector"].items() <= labels.items()
        taints = re.search(r"--node-taints (\S+)", pool).group(1).split(",")
        if "--priority Spot" in pool:
            taints.append("kubernetes.azure.com/scalesetpriority=spot:NoSchedule")  # added by AKS
        for taint in taints:
            key, value_effect = taint.split("=")
            value, effect = value_effect.split(":")
            assert (key, value, effect) in tolerated or key in tolerated_keys, taint


GUIDE_VARS = {"ACR": "stylebatchacr", "DATA_ACCOUNT": "stylebatchdata", "NS": "stylebatch", "VERSION": "0.1.0",
              "CLIENT_ID": "00000000-0000-0000-0000-000000000000", "OP_CLIENT_ID": "11111111-1111-1111-1111-111111111111", "QUEUE": "stylebatch-uploads"}


def guide_file(name: str) -> str:
    """A file the guide writes with `cat > name <<EOF`, its shell variables expanded."""
    body = re.search(rf"cat > {re.escape(name)} <<EOF\n(.*?)\nEOF\n", GUIDE.read_text(), re.S).group(1)
    return re.sub(r"\$(\w+)", lambda m: GUIDE_VARS[m.group(1)], body)


def test_guide_values_install_cleanly():
    values = yaml.safe_load(guide_file("stylebatch-values.yaml"))
    for obj in render_manifests.render_objects(values):
        validate(obj)
    assert "helm upgrade --install stylebatch charts/stylebatch --namespace $NS -f stylebatch-values.yaml" in GUIDE.read_text()


def test_guide_job_runs_as_the_federated_service_account_from_the_charts_defaults():
    job = yaml.safe_load(guide_file("orangutan.yaml"))
    validate(job)
    values = yaml.safe_load(guide_file("stylebatch-values.yaml"))
    objects = render_manifests.render_objects(values, namespace=job["metadata"]["namespace"])
    spec = resolve(job["spec"], operator_settings(objects))
    account = spec["serviceAccountName"]
    assert spec["storage"] == {"serviceAccountName": account, "accountName": GUIDE_VARS["DATA_ACCOUNT"]}
    (sa,) = [o for o in objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == account]
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == GUIDE_VARS["CLIENT_ID"]
    assert f"--subject system:serviceaccount:$NS:{account}" in GUIDE.read_text()
    assert spec["image"] == f"{GUIDE_VARS['ACR']}.azurecr.io/stylebatch-worker:{GUIDE_VARS['VERSION']}"
    assert (spec["workers"], spec["gpusPerWorker"]) == (2, 1)
    assert spec["scheduling"]["nodeSelector"] == {"stylebatch.io/gpu": "true"} and spec["scheduling"]["spot"]


def test_the_guide_recommends_confining_the_operator_to_watched_namespaces_for_production():
    """A cluster-wide install lets the operator create Jobs (pods) in every namespace, kube-system
    included; the guide presented it as the default without saying so."""
    step5 = GUIDE.read_text().split("## 5. Install stylebatch", 1)[1].split("\n## 6.", 1)[0]
    paragraph = next(p for p in step5.split("\n\n") if "operator.watchNamespaces" in p)
    text = " ".join(paragraph.split())
    assert "For production" in text and "kube-system" in text
    assert re.search(r"operator\.watchNamespaces: \[[-a-z0-9, $A-Z]+\]", text)
    values = yaml.safe_load(guide_file("stylebatch-values.yaml"))
    confined = {**values, "operator": {"watchNamespaces": ["team-a", "team-b"]}}
    kinds = {o["kind"] for o in render_manifests.render_objects(confined)}
    assert "Role" in kinds and not [o for o in render_manifests.render_objects(confined)
                                    if o["kind"] == "ClusterRole" and any("jobs" in r["resources"] for r in o["rules"])]


def test_the_guides_job_and_videowatch_land_in_a_namespace_its_production_advice_watches():
    """Step 5 advised `operator.watchNamespaces: [team-a, team-b]` for production, and steps 6 and 7
    then created the job and the VideoWatch in $NS, which that operator does not watch: they never
    got a status. Every namespace the guide creates them in or looks at them in is one the advised
    operator watches, with its Role and the jobs' service account there."""
    step5 = GUIDE.read_text().split("## 5. Install stylebatch", 1)[1].split("\n## 6.", 1)[0]
    advised = re.search(r"operator\.watchNamespaces: \[([^\]]+)\]", " ".join(step5.split())).group(1)
    watched = [re.sub(r"\$(\w+)", lambda m: GUIDE_VARS[m.group(1)], n.strip()) for n in advised.split(",")]
    created = [yaml.safe_load(guide_file(name))["metadata"]["namespace"] for name in ("orangutan.yaml", "uploads.yaml")]
    looked_at = [re.sub(r"\$(\w+)", lambda m: GUIDE_VARS[m.group(1)], ns)
                 for block in guide_blocks("bash") for ns in re.findall(r"kubectl -n (\S+) \S+ (?:stj|vw)\b", block)]
    assert created and looked_at
    values = {**yaml.safe_load(guide_file("stylebatch-values.yaml")), "operator": {"watchNamespaces": watched}}
    objects = render_manifests.render_objects(values, namespace=GUIDE_VARS["NS"])
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    by_operator = {a.split("=", 1)[1] for a in args if a.startswith("--namespace=")}
    roles = {o["metadata"]["namespace"] for o in objects if o["kind"] == "Role" and
             any("styletransferjobs" in r["resources"] for r in o["rules"])}
    job_accounts = {o["metadata"]["namespace"] for o in objects
                    if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "stylebatch-job"}
    for namespace in created + looked_at:
        assert namespace in by_operator and namespace in roles and namespace in job_accounts, (namespace, watched)


def test_every_upgrade_the_guides_give_keeps_the_values_set_before_and_takes_the_new_charts_defaults():
    """Step 7 gave the operator its workload identity with `helm upgrade --reuse-values --set ...`,
    and step 5 said to upgrade later with the same `helm upgrade --install -f stylebatch-values.yaml`,
    which dropped those --set values: the VideoWatches lost the operator's identity. And the operator
    guide upgraded to a new release with --reuse-values, which renders the new chart with the old
    chart's defaults, so the values the new release adds are missing. The guide's values all live in
    the files it writes, every upgrade names them, and no command block reuses values."""
    written = re.findall(r"^cat > (\S+-values\.yaml) <<EOF$", GUIDE.read_text(), re.M)
    commands = [" ".join(c.split()) for block in guide_blocks("bash")
                for c in re.findall(r"^helm upgrade .*?(?<!\\)$", block, re.M | re.S)]
    assert len(commands) >= 2 and len(written) >= 2
    for command in commands:
        assert "--reuse-values" not in command and "--set" not in command, command
        assert re.findall(r"-f (\S+)", command) == written[:len(re.findall(r"-f (\S+)", command))], command
    upgrade_later = " ".join(GUIDE.read_text().split("To upgrade later", 1)[1].split("\n\n", 1)[0].split())
    assert all(name in upgrade_later for name in written) and "Not `--reuse-values`" in upgrade_later
    values: dict = {}
    for name in written:  # as Helm merges -f files, the later over the earlier
        for key, value in yaml.safe_load(guide_file(name)).items():
            values[key] = {**values[key], **value} if isinstance(value, dict) and key in values else value
    objects = render_manifests.render_objects(values, namespace=GUIDE_VARS["NS"])
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == pod["spec"]["serviceAccountName"]]
    assert account["metadata"]["annotations"]["azure.workload.identity/client-id"] == GUIDE_VARS["OP_CLIENT_ID"]
    assert f"--subject system:serviceaccount:$NS:{account['metadata']['name']}" in GUIDE.read_text()
    for doc in (GUIDE, ROOT / "docs" / "operator.md", CHART / "README.md", ROOT / "README.md"):
        for block in re.findall(r"```\w*\n(.*?)```", doc.read_text(), re.S):
            assert "--reuse-values" not in block, doc.name
