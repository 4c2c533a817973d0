"""The StyleTransferJob CustomResourceDefinition, as data.

The schema lives here (not only in the chart's YAML) so that the operator applies the same defaults
the API server does. Fields whose defaults are cluster-wide settings (image, workers, GPUs,
scheduling, storage: the chart's values) have none here: the operator fills them in
(stylebatch_operator.settings, stylebatch_operator.spec.resolve). charts/stylebatch/crds/styletransferjobs.yaml is generated from it:

    python -m stylebatch_operator.crd > charts/stylebatch/crds/styletransferjobs.yaml

and a test fails when the two drift apart.
"""

from __future__ import annotations

import copy
import re
import sys
from importlib import metadata
from typing import Any

import yaml

from stylebatch.contract import DEFAULT_STYLE, PRECISION_AUTO, PRECISIONS, STYLE_IMAGE_SUFFIXES
from stylebatch.requests import CROP_MULTIPLE, MIN_MAX_SIDE, TrainRequest
from stylebatch.temporal_defaults import DEFAULT_MODE as TEMPORAL_DEFAULT
from stylebatch.temporal_defaults import DEFAULT_STRENGTH as TEMPORAL_STRENGTH
from stylebatch.temporal_defaults import MAX_STRENGTH as TEMPORAL_MAX_STRENGTH
from stylebatch.temporal_defaults import MODES as TEMPORAL_MODES
from stylebatch_operator.names import (
    DNS_LABEL_PATTERN, GROUP, KIND, MAX_NAME_LENGTH, NAME_PATTERN, NAME_RULE_MESSAGE, PLURAL, QUANTITY_PATTERN,
    SHORT_NAMES, SINGULAR, STAGES, VERSION,
)
from stylebatch_operator.states import ConditionType, Phase
from stylebatch_operator.uris import SAS_GOES_IN_THE_SECRET, URI_FIELDS

CRD_NAME = f"{PLURAL}.{GROUP}"
# The release that generated the CRD (the package's version, which tests/test_chart.py keeps equal
# to the chart's), on the CRD: `kubectl get crd styletransferjobs.stylebatch.io -o
# jsonpath='{.metadata.annotations.stylebatch\.io/release}'`.
RELEASE_ANNOTATION = f"{GROUP}/release"
RELEASE = metadata.version("stylebatch")
# spec.train trains on the painting spec.style names: one picture, no blend (the CEL rule, and
# stylebatch_operator.spec for a CRD installed before it).
PAINTING_PATTERN = f"(?i)[.]({'|'.join(s.lstrip('.') for s in STYLE_IMAGE_SUFFIXES)})$"
TRAIN_STYLE_MESSAGE = ("spec.train trains a style for the painting spec.style names: give the blob URI of one "
                       f"{'/'.join(s.lstrip('.') for s in STYLE_IMAGE_SUFFIXES)} picture as spec.style "
                       "(no blend, no built-in name, no .pth)")


def _train_default(name: str) -> Any:
    """The worker's own default of a train-style setting (stylebatch.requests.TrainRequest)."""
    return TrainRequest.__dataclass_fields__[name].default


def _str(description: str, **extra: Any) -> dict[str, Any]:
    # Bounded lengths and sizes keep the CEL rules' estimated cost within the API server's budget.
    return {"type": "string", "description": description, "maxLength": 253, **extra}


def _text(description: str, **extra: Any) -> dict[str, Any]:
    """A status string: written by the operator, no CEL rule reads it."""
    return {"type": "string", "description": description, **extra}


def _int(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "description": description, **extra}


def _obj(description: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": properties, **extra}


_TOLERATION = _obj("A Kubernetes toleration.", {
    "key": _str("Taint key."),
    "operator": _str("Exists or Equal.", enum=["Exists", "Equal"]),
    "value": _str("Taint value (with Equal)."),
    "effect": _str("Taint effect; empty matches all.", enum=["NoSchedule", "PreferNoSchedule", "NoExecute"]),
    "tolerationSeconds": _int("How long a NoExecute taint is tolerated.", format="int64"),
})

# Kubernetes quantities, as strings (cpu: "4", memory: 16Gi): a bounded string keeps the spec's CEL
# rule cheap, where an int-or-string could not carry a maxLength.
_QUANTITIES = {"type": "object", "maxProperties": 8,
               "description": "Resource name to quantity, as a string: cpu: \"4\", memory: 16Gi.",
               "additionalProperties": _str("A quantity.", maxLength=64, pattern=QUANTITY_PATTERN)}

# spec.storage's two CEL rules, also checked in Python by storage_problem (the operator has no CEL).
STORAGE_RULES = ("set exactly one of secretName and serviceAccountName",
                 "accountName is required with serviceAccountName")


def storage_problem(storage: dict[str, Any]) -> str | None:
    """What spec.storage's CEL rules say about `storage`; None when it passes them."""
    if bool(storage.get("secretName")) == bool(storage.get("serviceAccountName")):
        return STORAGE_RULES[0]
    if storage.get("serviceAccountName") and not storage.get("accountName"):
        return STORAGE_RULES[1]
    return None


_RESOURCES = _obj("CPU, memory and ephemeral-storage requests and limits.", {"requests": _QUANTITIES, "limits": _QUANTITIES})

SPEC_SCHEMA: dict[str, Any] = _obj(
    "What to stylize, where to write it, and the GPU pool to run on. Immutable once created.",
    {
        "input": _str("Video to stylize: az://container/path.mp4 or an https:// blob URL.", minLength=1, maxLength=2048),
        "output": _str("Where to write the finished video (same forms as input).", minLength=1, maxLength=2048),
        "style": _str("A built-in style name (see `stylebatch styles`), an index 0-25, the blob URI of a "
                      "painting to imitate (.jpg .png .webp) or of fast_neural_style .pth weights, or a "
                      "blend of them: az://styles/starry.jpg:0.7,lavender-gold:0.3.",
                      minLength=1, maxLength=2048, default=DEFAULT_STYLE),
        "keepColors": {"type": "boolean", "default": False,
                       "description": "Keep the video's own colours: only the style's brightness and strokes "
                                      "are transferred."},
        "train": _obj(
            "Train a style for the painting spec.style names (best quality) instead of painting zero-shot: "
            "a training Job (`stylebatch train-style`, one GPU, or the CPU with gpusPerWorker 0) runs before "
            "preprocess, writes the weights next to the work dir (status.trainedStyle) with its checkpoint "
            "beside them (a retried training resumes), and the stages stylize with them.",
            {
                "steps": _int(f"Training steps (default {_train_default('steps')}).", minimum=1, maximum=200000,
                              default=_train_default("steps")),
                "size": _int(f"Training crop size in pixels, a multiple of {CROP_MULTIPLE} (default "
                             f"{_train_default('size')}).", minimum=MIN_MAX_SIDE, maximum=1024,
                             multipleOf=CROP_MULTIPLE, default=_train_default("size")),
                "batchSize": _int(f"Crops per step (default {_train_default('batch_size')}).", minimum=1,
                                  maximum=64, default=_train_default("batch_size")),
                "content": {"type": "array", "maxItems": 16,
                            "items": _str("A blob URI.", minLength=1, maxLength=2048),
                            "description": "Videos and pictures (blob URIs) to learn on: frames are sampled "
                                           "from videos. Default: spec.input."},
            },
        ),
        "strength": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0,
                     "description": "How much of the style to apply, 1 full. Toward 0 a built-in or .pth style "
                                    "is mixed with the picture (0 keeps it); a painting's style moves to the "
                                    "video's own (0 still repaints, in the video's own style)."},
        "workers": _int("Number of worker pods of the MPIJob. Default: the operator's (chart value "
                        "jobs.workers).", minimum=1, maximum=64),
        "gpusPerWorker": _int("GPUs per worker pod (one MPI rank each); 0 runs on CPUs (kind, CI). Default: "
                              "the operator's (chart value jobs.gpusPerWorker).", minimum=0, maximum=8),
        "image": _str("The stylebatch worker image. Default: the operator's (chart value jobs.image).",
                      minLength=1, maxLength=512),
        "imagePullPolicy": _str("Pull policy of every pod. Default: the operator's (chart value imagePullPolicy).",
                                enum=["Always", "IfNotPresent", "Never"]),
        "imagePullSecrets": {"type": "array", "description": "Secrets to pull the image with. Default: the "
                             "operator's (chart value imagePullSecrets).",
                             "maxItems": 8,
                             "items": _obj("A Secret name.", {"name": _str("Secret name.")},
                                           required=["name"])},
        "resources": {**_RESOURCES, "description": "CPU and memory of each worker pod (its GPUs come from "
                      "gpusPerWorker). Default: the operator's (chart value jobs.resources)."},
        "storage": _obj(
            "Credentials for blob storage, by reference only: a Secret, or a service account "
            "federated with Azure workload identity. Default: the operator's (chart values storage.*); "
            "a job with neither fails at once.",
            {
                "secretName": _str("Secret with AZURE_STORAGE_CONNECTION_STRING, or with AZURE_STORAGE_ACCOUNT "
                                   "and AZURE_STORAGE_SAS_TOKEN.", minLength=1),
                "serviceAccountName": _str("Service account federated with a managed identity "
                                           "(workload identity).", minLength=1),
                "accountName": _str("Storage account name; required with serviceAccountName.", minLength=1),
            },
            **{"x-kubernetes-validations": [
                {"rule": "has(self.secretName) != has(self.serviceAccountName)", "message": STORAGE_RULES[0]},
                {"rule": "!has(self.serviceAccountName) || has(self.accountName)", "message": STORAGE_RULES[1]},
            ]},
        ),
        "workDir": _str("Where intermediate parts go; default: <output's folder>/.stylebatch-work/"
                        "<namespace>/<name>-<first 8 characters of the uid>/.", minLength=1, maxLength=2048),
        "keepWorkDir": {"type": "boolean", "default": False,
                        "description": "Keep the work dir's parts after the video is published (for debugging). "
                                       "By default postprocess deletes stylebatch's own files from it."},
        "cleanup": _obj(
            "When the operator deletes what a finished job leaves behind. Unset: kept.",
            {
                "childrenAfterSucceededSeconds": _int(
                    "Delete the children (Jobs, MPIJob, their pods) this long after the job succeeded.",
                    minimum=0, default=0, format="int64"),
                "childrenAfterFailedSeconds": _int(
                    "Delete the children this long after the job failed; unset: kept, for their logs, until "
                    "the job is deleted.", minimum=0, format="int64"),
                "jobAfterFinishedSeconds": _int(
                    "Delete the StyleTransferJob itself (and so its children) this long after it succeeded or "
                    "failed; unset: kept.", minimum=0, format="int64"),
            },
            default={},
        ),
        "encoder": _obj(
            "Output encoder settings; unset fields use the worker's defaults.",
            {
                "codec": _str("Video codec: h264, hevc, vp9, h264_nvenc, hevc_nvenc or mjpeg.", minLength=1, maxLength=32),
                "crf": _int("Constant rate factor (quality); excludes bitrate.", minimum=0, maximum=63),
                "bitrate": _str("Target bitrate such as 8M or 2500k; excludes crf.", pattern=r"^[0-9]+(\.[0-9]+)?[kKmMgG]?$",
                           maxLength=16),
                "preset": _str("Encoder speed preset, e.g. medium.", minLength=1),
            },
            **{"x-kubernetes-validations": [
                {"rule": "!(has(self.crf) && has(self.bitrate))", "message": "set crf or bitrate, not both"},
            ]},
        ),
        "processing": _obj("Processing size and batching.", {
            "maxSide": _int("Stylize at most this many pixels on the long side (upscaled back).", minimum=32),
            "batchSize": _int("Frames per GPU batch.", minimum=1),
            "chunkFrames": _int("Frames per part: the unit of work and of resume.", minimum=1),
            "precision": _str(f"Model arithmetic: auto ({PRECISION_AUTO}), fp32, bf16 or fp16.",
                              enum=list(PRECISIONS)),
            "temporal": _str("on: blend each frame with the previous one moved along the optical flow, so "
                             f"texture holds still (`stylebatch run --temporal`). Default {TEMPORAL_DEFAULT}.",
                             enum=list(TEMPORAL_MODES)),
            "temporalStrength": {"type": "number", "minimum": 0, "maximum": TEMPORAL_MAX_STRENGTH,
                                 "description": "With temporal on: how much of the previous frame is kept "
                                                f"where the motion is trusted (default {TEMPORAL_STRENGTH})."},
        }),
        "scheduling": _obj(
            "Where the GPU workers run. Workers with GPUs always tolerate sku=gpu:NoSchedule and "
            "nvidia.com/gpu:NoSchedule, the taints of AKS GPU pools.",
            {
                "nodeSelector": {"type": "object", "maxProperties": 32,
                                 "additionalProperties": {"type": "string", "maxLength": 253},
                                 "description": "Node labels the workers must match. Default: the operator's "
                                                "(chart value jobs.nodeSelector); a job's replaces it."},
                "tolerations": {"type": "array", "maxItems": 32, "items": _TOLERATION,
                                "description": "Tolerations for the workers. Default: the operator's (chart "
                                               "value jobs.tolerations); a job's replace them."},
                "spot": {"type": "boolean", "default": False,
                         "description": "Allow spot / low-priority nodes (tolerate kubernetes.azure.com/"
                                        "scalesetpriority=spot:NoSchedule); an evicted worker is retried."},
            },
        ),
        "queueName": _str("Kueue LocalQueue (in the job's namespace) to submit the children to: they carry the "
                          "kueue.x-k8s.io/queue-name label and are created suspended, and Kueue starts each once "
                          "it admits it, the MPIJob's launcher and workers at once. Time spent waiting for "
                          "admission does not count against activeDeadlineSeconds. Default: the operator's "
                          "(chart value jobs.queueName); none: no Kueue.", minLength=1, maxLength=63,
                          pattern=f"^{DNS_LABEL_PATTERN}$"),
        "activeDeadlineSeconds": _int("Time limit of the whole job, from its start, not counting the time its "
                                      "children wait for Kueue to admit them.", minimum=60,
                                      default=21600, format="int64"),
        "retries": _int("How many failed stages may be retried, in total (a disruption such as an evicted "
                        "spot worker is retried without counting).", minimum=0, maximum=10, default=3),
        "progressTimeoutSeconds": _int("End and retry a stylize attempt that adds no frame (a training attempt "
                                       "no step) for this long (it resumes from the parts already done, the "
                                       "training from its checkpoint). Default: the operator's (chart "
                                       "value jobs.progressTimeoutSeconds, 600).", minimum=60, format="int64"),
    },
    required=["input", "output"],
    **{"x-kubernetes-validations": [
        {"rule": "self == oldSelf",
         "message": "spec is immutable once the job is created; delete and re-create the job to change it"},
        {"rule": f"!has(self.train) || (!self.style.contains(',') && self.style.matches('{PAINTING_PATTERN}'))",
         "message": TRAIN_STYLE_MESSAGE},
    ]},
)
# A SAS token in a URI would be a secret in the job, readable by anyone who may read jobs: refused in
# every URI-valued field, URI_FIELDS and each of spec.train.content[].
for _node in [*(SPEC_SCHEMA["properties"][f] for f in URI_FIELDS),
              SPEC_SCHEMA["properties"]["train"]["properties"]["content"]["items"]]:
    _node["x-kubernetes-validations"] = [
        {"rule": "!self.contains('?')",
         "message": f"a query string (a SAS token?) is refused: {SAS_GOES_IN_THE_SECRET}"}]

# What status.effectiveSpec holds besides spec fields (the operator's job defaults set them; no
# spec field does): the service account of the job's pods, and the pods spec.resources does not cover.
EFFECTIVE_ONLY_SCHEMA: dict[str, Any] = {
    "serviceAccountName": _str("Service account of every pod of the job (with workload identity: "
                               "storage.serviceAccountName); none: the namespace's default.", minLength=1),
    "pods": _obj("Pods no spec field sizes.", {
        "stageResources": {**_RESOURCES, "description": "The preprocess and postprocess pods' resources."},
        "launcherResources": {**_RESOURCES, "description": "The MPIJob launcher's resources."},
        "scratchSize": _str("sizeLimit of /tmp (TMPDIR), an emptyDir, in every pod but the launcher.",
                            maxLength=64, pattern=QUANTITY_PATTERN),
        "shmSize": _str("sizeLimit of the workers' /dev/shm, a memory emptyDir.", maxLength=64,
                        pattern=QUANTITY_PATTERN),
    }),
}


def schema_problems(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """What is wrong with `value` by an openAPI schema of this module: type, enum, bounds, lengths,
    patterns, required fields and, unlike the API server (which drops them), unknown fields. Each
    problem is "path: what" (path dotted; [i] for list items). CEL rules are not evaluated."""
    where = path or "(the document)"
    kind = schema.get("type")
    checks = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if kind in checks and (not isinstance(value, checks[kind]) or (kind in ("integer", "number")
                                                                  and isinstance(value, bool))):
        return [f"{where}: must be {'an' if kind in ('object', 'array', 'integer') else 'a'} {kind}, got {value!r}"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: must be one of {', '.join(map(str, schema['enum']))}, got {value!r}")
    for bound, fails, text in (("minimum", lambda v, b: v < b, "at least {}"), ("maximum", lambda v, b: v > b, "at most {}"),
                               ("minLength", lambda v, b: b == 1 and not v, "set (not empty)"),
                               ("minLength", lambda v, b: 1 < b > len(v), "at least {} characters long"),
                               ("maxLength", lambda v, b: len(v) > b, "at most {} characters long"),
                               ("maxItems", lambda v, b: len(v) > b, "at most {} items"),
                               ("maxProperties", lambda v, b: len(v) > b, "at most {} keys")):
        if bound in schema and fails(value, schema[bound]):
            problems.append(f"{where}: must be {text.format(schema[bound])}, got {value!r}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{where}: must match {schema['pattern']}, got {value!r}")
    if kind == "object":
        known = schema.get("properties")
        for key in schema.get("required") or []:
            if key not in value:
                problems.append(f"{_join(path, key)}: is required")
        for key, item in value.items():
            sub = (known or {}).get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                problems += schema_problems(item, sub, _join(path, key))
            elif known is not None:
                problems.append(f"{_join(path, key)}: unknown field (known: {', '.join(known)})")
    if kind == "array" and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += schema_problems(item, schema["items"], f"{path}[{i}]")
    return problems


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_CONDITION = _obj("Standard Kubernetes condition.", {
    "type": _text(f"{', '.join(ConditionType.values()[:-1])} or {ConditionType.values()[-1]}."),
    "status": _text("True, False or Unknown.", enum=["True", "False", "Unknown"]),
    "reason": _text("One-word CamelCase reason."),
    "message": _text("Human-readable detail."),
    "lastTransitionTime": _text("When status last changed.", format="date-time"),
    "observedGeneration": _int("metadata.generation the condition was set from.", format="int64"),
}, required=["type", "status"])

_STAGE_COUNTS = {stage: _int(f"{stage} attempts.") for stage in STAGES}
_STAGE_NAMES = {stage: _text(f"Latest {stage} child.") for stage in STAGES}

STATUS_SCHEMA: dict[str, Any] = _obj("Observed state, written by the operator.", {
    "phase": _text("Where the job is.", enum=Phase.values()),
    "reason": _text("What is wrong now, in one CamelCase word (Stalled's or Failed's reason), or what "
                    "the last retry was for; empty while all is well."),
    "message": _text("The same in words."),
    "conditions": {"type": "array", "items": _CONDITION, "x-kubernetes-list-type": "map",
                   "x-kubernetes-list-map-keys": ["type"], "description": "Standard conditions."},
    "observedGeneration": _int("metadata.generation last acted on.", format="int64"),
    "acceptedGeneration": _int("metadata.generation whose spec the job runs with.", format="int64"),
    "acceptedSpec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "description": "The spec the job started with; later changes are not applied."},
    "effectiveSpec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                      "description": "What the job runs with: acceptedSpec over the operator's defaults at the "
                                     "start, plus serviceAccountName, the pods' service account. Later changes "
                                     "of the operator's settings are not applied."},
    "startTime": _text("When the operator accepted the job.", format="date-time"),
    "queuedSeconds": _int("Seconds the children waited for Kueue to admit them, before the current wait; "
                          "added to the deadline.", format="int64"),
    "queuedSince": _text("When the current child began to wait for admission (suspended); unset once it "
                         "is admitted.", format="date-time"),
    "completionTime": _text("When the job succeeded or failed.", format="date-time"),
    "permanentStallSince": _text("While the current child is stalled: when it was first shown stalled by a cause "
                                 "waiting cannot help (the grace period runs from here, whatever causes follow); "
                                 "unset when the stall ends.", format="date-time"),
    "outputURI": _text("The output (any SAS token removed)."),
    "workDir": _text("The work dir (any SAS token removed)."),
    "trainedStyle": _text("With spec.train: where the training Job writes the trained weights (next to the work "
                          "dir; kept after the job, for --style or another job's spec.style)."),
    "training": _obj("With spec.train: the training's steps, from the training pod's progress lines.", {
        "step": _int("Steps done, resumed ones included."),
        "steps": _int("Steps in all (spec.train.steps)."),
        "percent": _int("step / steps, rounded down."),
        "stepsPerSecond": {"type": "number", "description": "Training speed of the current pod."},
        "etaSeconds": _int("Seconds left at that speed."),
        "summary": _text("42% (1680/4000 steps), 3.1 steps/s, ETA 00:12:30."),
        "attempt": _int("The training attempt the figures are from."),
        "pod": _text("The pod whose log they are from."),
        "updateTime": _text("When it was read.", format="date-time"),
        "advanceTime": _text("When the step last rose (or the attempt's first line was read): the progress "
                             "timeout runs from here.", format="date-time"),
    }),
    "attempts": _obj("Attempts started per stage.", _STAGE_COUNTS),
    "retries": _int("Retries used, out of spec.retries."),
    "childrenDeleted": {"type": "boolean", "description": "The finished job's children were deleted (spec.cleanup)."},
    "disruptions": _int("Retries after a disruption (an evicted pod, a vanished node): not counted in retries."),
    "children": _obj("The latest child of each stage.", _STAGE_NAMES),
    "disruption": _obj("A disruption of a pod of the current MPIJob, seen while it ran: if the MPIJob then "
                       "fails, that is retried as a disruption (not counted in retries) even once the pod is "
                       "gone. Unset when the next child is made.", {
        "child": _text("Kind/name of the child."),
        "uid": _text("Its uid."),
        "message": _text("The pod and what ended it (its DisruptionTarget condition or its reason)."),
        "seenTime": _text("When the operator first saw it.", format="date-time"),
    }),
    "progress": _obj("Frames stylized, from the ranks' progress lines.", {
        "framesDone": _int("Frames stylized, resumed ones included."),
        "framesTotal": _int("Frames in the video."),
        "percent": _int("framesDone / framesTotal, rounded down."),
        "summary": _text("For kubectl get: 42% (420/1000); while training, the training's: training 42% "
                         "(1680/4000 steps)."),
        "updateTime": _text("When it was read.", format="date-time"),
        "attempt": _int("The stylize attempt the counts are from."),
        "ranks": {"type": "array", "items": {"type": "integer"},
                  "description": "Highest frames done per rank in this attempt: the count never goes down."},
        "advanceTime": _text("When the count last rose (or the attempt's launcher started): the progress "
                             "timeout runs from here.", format="date-time"),
    }),
    "failure": _obj("The latest failed child.", {
        "stage": _text("Stage that failed."),
        "attempt": _int("Its attempt."),
        "child": _text("Kind/name of the failed child."),
        "reason": _text("The child's reason."),
        "message": _text("The child's message."),
    }),
})


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1)."""
    return definition(
        KIND, PLURAL, SINGULAR, SHORT_NAMES,
        "Repaints every frame of a video in the style of a painting, across GPU pods.",
        SPEC_SCHEMA, STATUS_SCHEMA,
        [
            {"rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
             "message": f"name must be at most {MAX_NAME_LENGTH} characters: child names add suffixes"},
            {"rule": f"self.metadata.name.matches('{NAME_PATTERN}')", "message": f"name {NAME_RULE_MESSAGE}"},
        ],
        [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
             "description": f"Where the job is: {', '.join(Phase.values())}."},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary"},
            # what the job runs with, from the status: a style given as a URI shows no SAS token
            {"name": "Style", "type": "string", "jsonPath": ".status.effectiveSpec.style"},
            {"name": "Reason", "type": "string", "jsonPath": ".status.reason"},
            {"name": "Workers", "type": "integer", "jsonPath": ".status.effectiveSpec.workers"},
            {"name": "GPUs", "type": "integer", "jsonPath": ".status.effectiveSpec.gpusPerWorker", "priority": 1},
            {"name": "Queue", "type": "string", "jsonPath": ".status.effectiveSpec.queueName", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
        ],
    )


def definition(kind: str, plural: str, singular: str, short_names: list[str], description: str,
               spec: dict[str, Any], status: dict[str, Any], rules: list[dict[str, str]],
               columns: list[dict[str, Any]]) -> dict[str, Any]:
    """A namespaced stylebatch.io CustomResourceDefinition with one version and a status subresource
    (also stylebatch_operator.videowatch_crd's)."""
    schema = {
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": copy.deepcopy(spec),
            "status": copy.deepcopy(status),
        },
        "required": ["spec"],
        "x-kubernetes-validations": rules,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/name": "stylebatch"},
                     "annotations": {RELEASE_ANNOTATION: RELEASE}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": singular,
                      "shortNames": list(short_names), "categories": ["stylebatch"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": schema},
                "additionalPrinterColumns": columns,
            }],
        },
    }


def field_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Every field a schema declares, as dotted paths (spec.encoder.crf; [] for list items, {} for
    map values)."""
    paths = set()
    for key, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}.{key}" if prefix else key
        paths |= {path} | field_paths(sub, path)
    if isinstance(schema.get("items"), dict):
        paths |= field_paths(schema["items"], f"{prefix}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        paths |= field_paths(schema["additionalProperties"], f"{prefix}{{}}")
    return paths


def missing_fields(installed: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """The fields this operator reads or writes that an installed CRD (from the API server) does
    not declare, against `ours`, the same CRD as this release generates it (crd(), or
    videowatch_crd.crd()): for a missing spec field users cannot set it, a missing status field is
    pruned from every status the operator writes. Empty when the installed CRD is ours or newer."""
    return sorted(field_paths(_schema(ours)) - field_paths(_schema(installed)))


def _schema(crd_object: dict[str, Any]) -> dict[str, Any]:
    """A CRD's openAPIV3Schema for VERSION; empty when it has no such version."""
    versions = [v for v in (crd_object.get("spec") or {}).get("versions") or [] if v.get("name") == VERSION]
    return versions[0].get("schema", {}).get("openAPIV3Schema", {}) if versions else {}


def installed_release(installed: dict[str, Any]) -> str:
    """The stylebatch release that generated an installed CRD (its annotation), or "unknown"."""
    return ((installed.get("metadata") or {}).get("annotations") or {}).get(RELEASE_ANNOTATION) or "unknown"


def openapi_schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """A copy of `value` with the schema's defaults filled in, as the API server does on write."""
    if isinstance(value, dict) and schema.get("type") == "object":
        out = dict(value)
        for key, sub in (schema.get("properties") or {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(out[key], sub)
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def to_yaml(obj: dict[str, Any] | None = None, module: str = "crd") -> str:
    """The CRD as the chart holds it (default: this one; `module` names where `obj` is made)."""
    header = (f"# Generated by `python -m stylebatch_operator.{module}`; edit "
              f"operator/stylebatch_operator/{module}.py instead.\n")
    return header + yaml.safe_dump(obj or crd(), sort_keys=False, width=110)


if __name__ == "__main__":
    sys.stdout.write(to_yaml())
