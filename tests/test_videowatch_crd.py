"""The VideoWatch CRD: a valid, structural CustomResourceDefinition; the chart's copy is the generated
one; its template takes exactly a StyleTransferJob's fields; its CEL rules (run with cel-python)
refuse an output inside the watched source, a queue mode without a queue, a pattern every video
would share; the example a user copies validates and means what it says."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml
from celpy import celtypes

from stylebatch_operator.crd import SPEC_SCHEMA, apply_defaults
from stylebatch_operator.settings import Settings
from stylebatch_operator.videowatch import read_spec
from stylebatch_operator.videowatch_crd import WATCH_SPEC_SCHEMA, crd, openapi_schema, to_yaml
from test_operator_crd import walk

REPO = Path(__file__).resolve().parent.parent
CHART_CRD = REPO / "charts" / "stylebatch" / "crds" / "videowatches.yaml"
EXAMPLE = REPO / "manifests" / "examples" / "videowatch.yaml"
SETTINGS = Settings(jobs={"storage": {"secretName": "stylebatch-storage"}})


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def cel_errors(spec: dict[str, Any]) -> list[str]:
    """The messages of the spec's x-kubernetes-validations rules that fail, evaluated by cel-python.
    `split` comes from the Kubernetes CEL strings library, which cel-python lacks: given here with
    the library's semantics."""
    def split(text: Any, sep: Any) -> celtypes.ListType:
        return celtypes.ListType([celtypes.StringType(part) for part in str(text).split(str(sep))])

    env = celpy.Environment()
    value = celpy.json_to_cel(apply_defaults(spec, WATCH_SPEC_SCHEMA))
    return [rule["message"] for rule in WATCH_SPEC_SCHEMA["x-kubernetes-validations"]
            if not env.program(env.compile(rule["rule"]), functions={"split": split}).evaluate({"self": value})]


@pytest.mark.parametrize("version", ["1.29", "1.33"])
def test_crd_is_a_valid_customresourcedefinition(version):
    kubernetes_validate.validate(crd(), version, strict=True)


def test_chart_crd_is_the_generated_one():
    assert CHART_CRD.read_text() == to_yaml(), \
        "regenerate: python -m stylebatch_operator.videowatch_crd > charts/stylebatch/crds/videowatches.yaml"


def test_schema_is_structural_and_every_default_valid():
    for path, node in walk(openapi_schema()):
        assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "default" in node:
            sub = {k: v for k, v in node.items() if k != "default"}
            assert jsonschema.Draft7Validator(sub).is_valid(node["default"]), path


def test_the_template_takes_a_styletransferjob_s_fields_except_where_the_video_goes():
    template = WATCH_SPEC_SCHEMA["properties"]["template"]["properties"]
    assert template.keys() == SPEC_SCHEMA["properties"].keys() - {"input", "output", "workDir"}
    assert all(template[k] == SPEC_SCHEMA["properties"][k] for k in template)


def test_printer_columns_read_declared_fields():
    (version,) = crd()["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata."):
            continue
        node = version["schema"]["openAPIV3Schema"]
        for part in column["jsonPath"].strip(".").split("."):
            assert part in node["properties"], column
            node = node["properties"][part]
    names = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert names == ["Mode", "Source", "Seen", "Running", "Succeeded", "Failed", "Age"]


@pytest.mark.parametrize("change, message", [
    ({}, None),
    ({"output": "az://videos/incoming/stylized/{path}.mp4"}, "inside the watched source"),
    ({"output": "az://videos/{path}-styled.mp4"}, "inside the watched source"),  # {path} may be incoming/...
    ({"source": "az://videos", "output": "az://videos/out/{path}.mp4"}, "inside the watched source"),
    ({"output": "az://videos/incoming-stylized/{path}.mp4"}, None),
    ({"source": "az://videos/incoming/", "output": "az://videos/stylized/{dir}{name}.mp4"}, None),
    ({"output": "az://stylized/{style}.mp4"}, "needs {path} or {name}"),
    ({"queue": None}, "mode queue needs queue.name"),
    ({"queue": None, "mode": "poll"}, None),
])
def test_cel_rules_refuse_a_watch_that_would_trigger_itself_or_cannot_work(change, message):
    spec = {**example()["spec"], **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    errors = cel_errors(spec)
    assert len(errors) == (1 if message else 0) and all(message in e for e in errors), errors
    watch = {"metadata": {"name": "w", "namespace": "media", "uid": "u"}, "spec": spec}
    parsed, problems = read_spec(watch, SETTINGS)  # the operator refuses the same, for a server without CEL
    assert (parsed is None) == bool(message), problems
    if message:
        assert any(message.split(" ", 1)[-1] in p for p in problems), problems


@pytest.mark.parametrize("change, field", [
    ({"source": "az://videos/incoming?sv=1&sig=x"}, "source"),  # credentials by reference, never a SAS
    ({"source": "/mnt/videos"}, "source"),
    ({"mode": "push"}, "mode"),
    ({"queue": {"name": "Uploads"}}, "name"),
    ({"queue": {"name": "a" * 57}}, "name"),  # no room for -poison
    ({"maxConcurrentJobs": 0}, "maxConcurrentJobs"),
    ({"filters": {"minSize": 0}}, "minSize"),
    ({"template": {"workers": 0}}, "workers"),
    ({"template": {"input": "az://a/b.mp4"}}, "input"),
])
def test_bad_watch_specs_are_refused_by_the_schema(change, field):
    watch = copy.deepcopy(example())
    watch["spec"].update(change)
    schema = {**openapi_schema()}
    schema["properties"]["spec"]["properties"]["template"]["additionalProperties"] = False
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(apply_defaults(watch, openapi_schema())))
    assert errors and any(field in "/".join(map(str, e.path)) + e.message for e in errors)


def test_the_example_validates_and_reads_as_it_says():
    watch = apply_defaults(example(), openapi_schema())
    jsonschema.Draft7Validator(openapi_schema()).validate(watch)
    assert cel_errors(watch["spec"]) == []
    spec, problems = read_spec({**watch, "metadata": {"name": "incoming", "namespace": "stylebatch"}}, SETTINGS)
    assert problems == [] and spec is not None
    assert (spec.mode, spec.queue, spec.poison_queue) == ("queue", "stylebatch-uploads", "stylebatch-uploads-poison")
    assert (spec.container, spec.prefix, spec.max_jobs, spec.filters.min_size) == ("videos", "incoming", 4, 1024)
