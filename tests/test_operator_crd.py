"""The StyleTransferJob CRD: a valid, structural CustomResourceDefinition; the chart's copy is the
generated one; the sample job a user copies validates against it; bad specs are refused."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stylebatch_operator.crd import (
    DEFAULT_STYLE, SPEC_SCHEMA, TRAIN_STYLE_MESSAGE, apply_defaults, crd, openapi_schema, to_yaml,
)
from stylebatch_operator.decide import decide
from stylebatch_operator.settings import Settings
from stylebatch_operator.status import transition

REPO = Path(__file__).resolve().parent.parent
CHART_CRD = REPO / "charts" / "stylebatch" / "crds" / "styletransferjobs.yaml"
EXAMPLE = REPO / "manifests" / "examples" / "job.yaml"


def walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def validator() -> jsonschema.Validator:
    return jsonschema.Draft7Validator(openapi_schema())


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


@pytest.mark.parametrize("version", ["1.29", "1.33"])
def test_crd_is_a_valid_customresourcedefinition(version):
    kubernetes_validate.validate(crd(), version, strict=True)


def test_chart_crd_is_the_generated_one():
    assert CHART_CRD.read_text() == to_yaml(), \
        "regenerate: python -m stylebatch_operator.crd > charts/stylebatch/crds/styletransferjobs.yaml"


def test_schema_is_structural():
    for path, node in walk(openapi_schema()):
        assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "properties" in node:
            assert node["type"] == "object", path
    assert openapi_schema()["properties"]["metadata"] == {"type": "object"}


def test_every_default_is_valid_for_its_field():
    for path, node in walk(openapi_schema()):
        if "default" in node:
            sub = {k: v for k, v in node.items() if k != "default"}
            assert jsonschema.Draft7Validator(sub).is_valid(node["default"]), path


def test_served_with_status_subresource_short_name_and_columns():
    spec = crd()["spec"]
    assert (spec["scope"], spec["names"]["kind"], spec["names"]["shortNames"]) == \
        ("Namespaced", "StyleTransferJob", ["stj"])
    (version,) = spec["versions"]
    assert version["served"] and version["storage"] and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {"Phase": ".status.phase", "Progress": ".status.progress.summary",
                       "Style": ".status.effectiveSpec.style", "Reason": ".status.reason",
                       "Workers": ".status.effectiveSpec.workers",
                       "GPUs": ".status.effectiveSpec.gpusPerWorker", "Queue": ".status.effectiveSpec.queueName",
                       "Age": ".metadata.creationTimestamp", "Message": ".status.message"}
    # every spec/status column reads a field the schema declares or keeps (else it would always be empty)
    for json_path in columns.values():
        if json_path.startswith(".metadata."):
            continue
        node = version["schema"]["openAPIV3Schema"]
        for part in json_path.strip(".").split("."):
            if node.get("x-kubernetes-preserve-unknown-fields"):
                assert part in SPEC_SCHEMA["properties"], json_path  # effectiveSpec: a spec
                break
            assert part in node["properties"], json_path
            node = node["properties"][part]


def test_spec_is_immutable_and_the_name_short_enough_for_child_names():
    schema = openapi_schema()
    assert {"rule": "self == oldSelf", "message": schema["properties"]["spec"]["x-kubernetes-validations"][0]["message"]} \
        in schema["properties"]["spec"]["x-kubernetes-validations"]
    assert schema["x-kubernetes-validations"][0]["rule"] == "size(self.metadata.name) <= 40"


def test_example_job_validates_and_leaves_the_cluster_wide_settings_to_the_operator():
    job = example()
    assert (job["apiVersion"], job["kind"]) == ("stylebatch.io/v1alpha1", "StyleTransferJob")
    defaulted = apply_defaults(job, openapi_schema())
    validator().validate(defaulted)
    spec = defaulted["spec"]
    assert spec["input"].startswith("az://") and spec["output"].startswith("az://")
    assert spec["style"] == DEFAULT_STYLE and spec["scheduling"] == {"spot": False}
    # what the chart's values decide is not the CRD's to fill in, or they could never apply
    assert not {"image", "imagePullPolicy", "imagePullSecrets", "workers", "gpusPerWorker", "resources",
                "storage"} & spec.keys()
    minimal = apply_defaults({"spec": {"input": "az://a/b.mp4", "output": "az://a/c.mp4"}}, openapi_schema())
    validator().validate(minimal)  # no storage: allowed, the operator may have a default
    assert minimal["spec"] == {"input": "az://a/b.mp4", "output": "az://a/c.mp4", "style": DEFAULT_STYLE,
                               "strength": 1.0, "activeDeadlineSeconds": 21600, "retries": 3,
                               "keepWorkDir": False, "keepColors": False,
                               "cleanup": {"childrenAfterSucceededSeconds": 0}}


@pytest.mark.parametrize("change, field", [
    ({"workers": 0}, "workers"),
    ({"gpusPerWorker": -1}, "gpusPerWorker"),
    ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy"),
    ({"resources": {"requests": {"cpu": 4}}}, "cpu"),  # quantities are strings: "4"
    ({"resources": {"requests": {"memory": "16 GB"}}}, "memory"),
    ({"strength": 2}, "strength"),
    ({"encoder": {"bitrate": "fast"}}, "bitrate"),
    ({"retries": 11}, "retries"),
    ({"input": ""}, "input"),
    ({"output": None}, "output"),
])
def test_bad_specs_are_refused(change, field):
    job = copy.deepcopy(example())
    job["spec"].update(change)
    if change.get("output", "") is None:
        del job["spec"]["output"]
    errors = list(validator().iter_errors(apply_defaults(job, openapi_schema())))
    assert errors and any(field in "/".join(map(str, e.path)) + e.message for e in errors)


def test_worker_resources_take_kubernetes_quantities():
    job = copy.deepcopy(example())
    job["spec"]["resources"] = {"requests": {"cpu": "500m", "memory": "16Gi", "ephemeral-storage": "1e3"},
                                "limits": {"memory": "1.5Gi"}}
    validator().validate(apply_defaults(job, openapi_schema()))


def test_default_style_is_the_workers_default():
    pytest.importorskip("torch")
    from stylebatch.models import DEFAULT_STYLE as WORKER_DEFAULT
    assert DEFAULT_STYLE == WORKER_DEFAULT


def test_kubectl_get_never_shows_a_sas_token():
    """Every printer column, read from a job whose URIs all carry a SAS token, once the operator
    has decided on it (what `kubectl get stj -o wide` prints). Such a job is refused (the SAS
    belongs in the storage Secret), and not even the refusal shows the token."""
    sas = "sv=2024-05-04&sp=r&sig=S3CR3T"
    job = {"apiVersion": "stylebatch.io/v1alpha1", "kind": "StyleTransferJob",
           "metadata": {"name": "orangutan", "namespace": "media", "uid": "u1", "generation": 1,
                        "creationTimestamp": "2026-05-01T12:00:00Z"},
           "spec": apply_defaults({"input": f"https://a.blob.core.windows.net/v/in.mp4?{sas}",
                                   "output": f"https://a.blob.core.windows.net/v/out.mp4?{sas}",
                                   "style": f"https://a.blob.core.windows.net/styles/mine.pth?{sas}",
                                   "workDir": f"https://a.blob.core.windows.net/v/work/?{sas}",
                                   "storage": {"secretName": "s"}, "queueName": "gpu"}, SPEC_SCHEMA)}
    now = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    action = decide(job, {}, now=now, settings=Settings())
    job["status"] = transition(job, action, now).patch
    shown = {}
    for column in crd()["spec"]["versions"][0]["additionalPrinterColumns"]:
        value: Any = job
        for part in column["jsonPath"].strip(".").split("."):
            value = (value or {}).get(part)
        shown[column["name"]] = value
    assert action.reason == "InvalidSpec"
    assert "S3CR3T" not in str(shown) and "S3CR3T" not in str(job["status"])


def cel_rules_refuse(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """The messages of the CRD's x-kubernetes-validations rules, at every level (the spec's fields, theirs,
    the items of arrays), that `obj` breaks, evaluated with a CEL implementation (cel-python) as the API
    server evaluates them. (Transition rules, on oldSelf, only where `old` has the value: on updates.)"""
    import celpy
    env = celpy.Environment()
    broken: list[str] = []

    def walk(node: dict[str, Any], value: Any, old_value: Any) -> None:
        for rule in node.get("x-kubernetes-validations") or []:
            if "oldSelf" in rule["rule"] and old_value is None:
                continue  # transition rules apply to updates only
            activation = {"self": celpy.json_to_cel(value)}
            if old_value is not None:
                activation["oldSelf"] = celpy.json_to_cel(old_value)
            if not env.program(env.compile(rule["rule"])).evaluate(activation):
                broken.append(rule["message"])
        if isinstance(value, dict):
            for name, sub in value.items():
                if name in (node.get("properties") or {}):
                    walk(node["properties"][name], sub, (old_value or {}).get(name) if isinstance(old_value, dict)
                         else None)
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for item in value:
                walk(node["items"], item, None)  # (list items have no oldSelf unless the list is a map)

    walk(openapi_schema(), obj, old)
    return broken


@pytest.mark.parametrize("name, accepted", [
    ("orangutan", True),
    ("promo-2024", True),
    ("a", True),
    ("x" * 40, True),
    ("2024-promo", False),  # a Job could be named so, the MPI Operator's pods not
    ("trip.v2", False),
    ("Orangutan", False),
    ("promo-", False),
    ("x" * 41, False),
])
def test_the_crd_refuses_names_the_mpi_operator_cannot_use(name, accepted):
    job = apply_defaults(example(), openapi_schema())
    job["metadata"]["name"] = name
    broken = cel_rules_refuse(job)
    if accepted:
        assert broken == []
    else:
        assert len(broken) == 1
        assert "DNS-1035" in broken[0] or "at most 40" in broken[0]


def test_the_spec_rules_hold_for_the_example_and_refuse_a_change():
    job = apply_defaults(example(), openapi_schema())
    assert cel_rules_refuse(job, old=job) == []
    changed = copy.deepcopy(job)
    changed["spec"]["workers"] = 8
    assert cel_rules_refuse(changed, old=job) == [
        "spec is immutable once the job is created; delete and re-create the job to change it"]


@pytest.mark.parametrize("style, train, refused", [
    ("az://styles/starry.jpg", {"steps": 100}, False),
    ("https://acct.blob.core.windows.net/styles/Starry.JPEG", {}, False),
    ("az://styles/monet.webp", {"content": ["az://videos/a.mp4"]}, False),
    ("lavender-gold", {}, True),  # also the default style: spec.train needs the painting named
    ("az://styles/starry.jpg:0.7,lavender-gold:0.3", {}, True),
    ("az://styles/mine.pth", {}, True),
    ("az://styles/starry.jpg", None, False),  # no training: any style, as before
])
def test_the_crd_refuses_a_training_without_one_painting_to_train_for(style, train, refused):
    job = example()
    job["spec"]["style"] = style
    if train is not None:
        job["spec"]["train"] = train
    job = apply_defaults(job, openapi_schema())
    assert validator().is_valid(job)
    broken = cel_rules_refuse(job)
    assert broken == ([TRAIN_STYLE_MESSAGE] if refused else [])


def test_training_settings_default_to_the_workers_own_and_are_bounded():
    job = example()
    job["spec"].update(style="az://styles/starry.jpg", train={})
    train = apply_defaults(job, openapi_schema())["spec"]["train"]
    assert train == {"steps": 4000, "size": 256, "batchSize": 4}  # `stylebatch train-style`'s defaults
    # size 250: not a multiple of 4, the training Job ended with a traceback and exit code 1
    for bad in ({"steps": 0}, {"size": 16}, {"size": 250}, {"batchSize": 0}, {"content": ["az://v/a.mp4"] * 17}):
        job["spec"]["train"] = bad
        assert not validator().is_valid(job), bad


def test_the_training_example_passes_the_crd_and_is_accepted_to_train_first():
    job = apply_defaults(yaml.safe_load((EXAMPLE.parent / "job-trained.yaml").read_text()), openapi_schema())
    job["metadata"].update(namespace="stylebatch", uid="0123456789abcdef", generation=1)
    validator().validate(job)
    assert cel_rules_refuse(job) == []
    now = datetime(2026, 5, 1, tzinfo=timezone.utc)
    action = decide(job, {}, now=now, settings=Settings(jobs={"storage": {"secretName": "stylebatch-storage"}}))
    job["status"] = transition(job, action, now).patch
    assert decide(job, {}, now=now).creates == ("train", 1)


@pytest.mark.parametrize("field", ["input", "output", "style", "workDir", "train.content[1]"])
@pytest.mark.parametrize("uri, refused", [
    ("https://a.blob.core.windows.net/v/file.mp4?sv=2024-05-04&sp=r&sig=S3CR3T", True),
    ("az://v/file.mp4?sig=S3CR3T", True),
    ("https://a.blob.core.windows.net/v/file.mp4", False),
    ("az://v/file.mp4", False),
])
def test_the_crd_refuses_a_sas_token_in_any_uri_saying_credentials_go_in_a_secret(field, uri, refused):
    """The API server refuses the job, so the token is never stored in it; the operator's own check
    (spec_problems) stays for jobs created before the rule."""
    job = apply_defaults(example(), openapi_schema())
    if field == "train.content[1]":  # a training's videos, each a URI too (a painting to train on)
        job["spec"].update(style="az://styles/starry.jpg", train={"content": ["az://v/other.mp4", uri]})
    else:
        job["spec"][field] = uri
    broken = cel_rules_refuse(job)
    if not refused:
        assert broken == []
        return
    assert len(broken) == 1 and "S3CR3T" not in broken[0]
    assert "credentials go in the storage Secret" in broken[0] and "spec.storage.secretName" in broken[0]


@pytest.mark.parametrize("storage", [
    {"secretName": "s"},
    {"serviceAccountName": "sa", "accountName": "data"},
    {"serviceAccountName": "sa"},
    {"secretName": "s", "serviceAccountName": "sa", "accountName": "data"},
    {"accountName": "data"},
])
def test_the_operators_storage_check_says_what_the_crds_cel_rules_say(storage):
    """The operator checks its job defaults' storage without CEL: the same verdict, the same words."""
    import celpy
    from stylebatch_operator.crd import SPEC_SCHEMA, storage_problem

    env = celpy.Environment()
    rules = SPEC_SCHEMA["properties"]["storage"]["x-kubernetes-validations"]
    broken = [r["message"] for r in rules
              if not env.program(env.compile(r["rule"])).evaluate({"self": celpy.json_to_cel(storage)})]
    assert storage_problem(storage) == (broken[0] if broken else None)


def test_the_docs_say_how_to_free_every_kind_the_operators_finalizer_holds_once_it_is_gone():
    """Every job and VideoWatch carries the operator's finalizer (kopf's timers need it); with the
    operator uninstalled or down for good, deleting them, or their namespace, hung, and the docs said
    only to uninstall in the right order. They give the `kubectl patch` that frees each kind, by a name
    kubectl resolves for it."""
    import re

    from stylebatch_operator.videowatch_crd import CRDS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "operator.md").read_text()
    freed = set(re.findall(r"kubectl -n <ns> patch (\S+) <name> --type=json -p='\[\{\"op\": \"remove\", "
                           r"\"path\": \"/metadata/finalizers\"\}\]'", doc))
    for make in CRDS.values():
        names = make()["spec"]["names"]
        assert freed & {names["plural"], names["singular"], *names.get("shortNames", [])}, names["kind"]
