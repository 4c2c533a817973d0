"""The VideoWatch CustomResourceDefinition, as data: a StyleTransferJob for every video uploaded to
a blob prefix. charts/stylebatch/crds/videowatches.yaml is generated from it:

    python -m stylebatch_operator.videowatch_crd > charts/stylebatch/crds/videowatches.yaml

The job template is the StyleTransferJob spec (stylebatch_operator.crd.SPEC_SCHEMA) less input
and output, which every video gets from the watch; one schema, so both always take the same fields.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

from stylebatch_operator import crd as job_crd
from stylebatch_operator.crd import SPEC_SCHEMA, _int, _obj, _str, _text, definition
from stylebatch_operator.crd import to_yaml as crd_yaml
from stylebatch_operator.names import GROUP, WATCH_KIND, WATCH_PLURAL, WATCH_SHORT_NAMES, WATCH_SINGULAR
from stylebatch.trigger import PLACEHOLDERS, VIDEO_EXTENSIONS

WATCH_CRD_NAME = f"{WATCH_PLURAL}.{GROUP}"
MODES = ["poll", "queue"]
POISON_SUFFIX = "-poison"
# Azure queue names: 3-63 lower-case letters, digits and single hyphens; room left for POISON_SUFFIX.
QUEUE_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,55}$"
_URI = r"^(az|https?)://[^?#{}\s]+$"
TEMPLATE_FIELDS = [k for k in SPEC_SCHEMA["properties"] if k not in ("input", "output", "workDir")]

_SOURCE_PREFIX = "(self.source.endsWith('/') ? self.source : self.source + '/')"
_OUTPUT_HEAD = "self.output.split('{')[0]"

WATCH_SPEC_SCHEMA: dict[str, Any] = _obj(
    "Which blobs to watch, how to learn of new ones, and the job each new video gets.",
    {
        "source": _str("The watched prefix: az://container/prefix or https://account.blob.core.windows.net/"
                       "container/prefix (no SAS: the operator signs with its own identity).",
                       minLength=6, maxLength=1024, pattern=_URI),
        "filters": _obj("Which blobs count; hidden names (.x) and stylebatch's outputs never do.", {
            "extensions": {"type": "array", "maxItems": 32, "description": "File extensions that count. "
                           f"Default: {' '.join(VIDEO_EXTENSIONS)}.",
                           "items": _str("An extension such as .mp4.", maxLength=16, pattern=r"^\.?[A-Za-z0-9]{1,15}$")},
            "minSize": _int("Blobs smaller than this many bytes do not count.", minimum=1, default=1, format="int64"),
        }),
        "output": _str("Where each video's output goes: a pattern such as az://stylized/{path}-{style}.mp4 with "
                       "the placeholders " + ", ".join("{%s}" % p for p in PLACEHOLDERS) + " ({path}: the blob's "
                       "name below the source prefix without its extension). Never inside the source.",
                       minLength=6, maxLength=1024, pattern=r"^(az|https?)://[^?#\s]+$"),
        "template": _obj("The spec of every StyleTransferJob the watch creates: a StyleTransferJob spec "
                         "without input and output.",
                         {k: copy.deepcopy(SPEC_SCHEMA["properties"][k]) for k in TEMPLATE_FIELDS}, default={}),
        "maxConcurrentJobs": _int("At most this many of the watch's jobs run at once; new videos wait.",
                                  minimum=1, maximum=1000, default=4),
        "suspend": {"type": "boolean", "default": False,
                    "description": "Start no new jobs (queued events wait in the queue)."},
        "mode": _str("queue: Event Grid delivers BlobCreated events to an Azure Storage Queue; poll: list the "
                     "prefix at an interval.", enum=MODES, default="poll"),
        "queue": _obj("Queue mode: the storage queue Event Grid writes to, in the source's account.", {
            "name": _str("Queue name; messages that keep failing go to <name>-poison.", pattern=QUEUE_NAME_PATTERN,
                         maxLength=56),
            "visibilityTimeoutSeconds": _int("How long a received message stays hidden before it is delivered "
                                             "again.", minimum=10, maximum=3600, default=300),
            "maxDeliveries": _int("A message delivered this many times without success goes to the poison "
                                  "queue.", minimum=1, maximum=100, default=5),
        }, required=["name"]),
        "poll": _obj("Poll mode (and the queue mode's sweep): listing the prefix.", {
            "intervalSeconds": _int("Seconds between polls; a blob counts once two polls in a row find it "
                                    "unchanged.", minimum=1, maximum=86400, default=60),
            "pageSize": _int("Blobs per listing request.", minimum=1, maximum=5000, default=1000),
            "maxSecondsPerPoll": _int("A listing stops after this long and carries on at the next poll.",
                                      minimum=1, maximum=600, default=20),
        }),
        "sweepIntervalSeconds": _int("Queue mode: list the prefix this often anyway, to catch events that "
                                     "never arrived; 0 never.", minimum=0, maximum=604800, default=900),
    },
    required=["source", "output"],
    **{"x-kubernetes-validations": [
        {"rule": f"!({_OUTPUT_HEAD}.startsWith({_SOURCE_PREFIX}) || {_SOURCE_PREFIX}.startsWith({_OUTPUT_HEAD}))",
         "message": "output must not be inside the watched source: its outputs would look like new uploads"},
        {"rule": "self.mode != 'queue' || has(self.queue)", "message": "mode queue needs queue.name"},
        {"rule": "self.output.contains('{path}') || self.output.contains('{name}')",
         "message": "output needs {path} or {name}: otherwise every video writes the same output"},
    ]},
)

_JOB_COUNTS = {
    "created": _int("Jobs the watch created."),
    "running": _int("Its jobs that have not finished."),
    "succeeded": _int("Its jobs that succeeded."),
    "failed": _int("Its jobs that failed."),
}

WATCH_STATUS_SCHEMA: dict[str, Any] = _obj("Observed state, written by the operator.", {
    "videosSeen": _int("Distinct uploads (blob versions) that counted and got their job, however many events "
                       "each had; the ones still waiting for a slot are in waiting."),
    "jobs": _obj("The watch's StyleTransferJobs.", _JOB_COUNTS),
    "waiting": _int("Videos found that wait for a free slot (maxConcurrentJobs) or for suspend to end."),
    "lastPollTime": _text("When the prefix was last listed to the end.", format="date-time"),
    "lastMessageTime": _text("When the last queue message was handled.", format="date-time"),
    "lastError": _text("The latest error (storage, queue, spec), empty once a round goes well."),
    "lastErrorTime": _text("When it happened.", format="date-time"),
    "observedGeneration": _int("metadata.generation last acted on.", format="int64"),
})


def crd() -> dict[str, Any]:
    return definition(
        WATCH_KIND, WATCH_PLURAL, WATCH_SINGULAR, WATCH_SHORT_NAMES,
        "Stylizes every video uploaded to a blob prefix, exactly once: one StyleTransferJob each.",
        WATCH_SPEC_SCHEMA, WATCH_STATUS_SCHEMA,
        [{"rule": "size(self.metadata.name) <= 63", "message": "name must be at most 63 characters (a label value)"}],
        [
            {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
            {"name": "Source", "type": "string", "jsonPath": ".spec.source"},
            {"name": "Seen", "type": "integer", "jsonPath": ".status.videosSeen"},
            {"name": "Running", "type": "integer", "jsonPath": ".status.jobs.running"},
            {"name": "Succeeded", "type": "integer", "jsonPath": ".status.jobs.succeeded"},
            {"name": "Failed", "type": "integer", "jsonPath": ".status.jobs.failed"},
            {"name": "Waiting", "type": "integer", "jsonPath": ".status.waiting", "priority": 1},
            {"name": "Suspended", "type": "boolean", "jsonPath": ".spec.suspend", "priority": 1},
            {"name": "Last-Error", "type": "string", "jsonPath": ".status.lastError", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


# Every CRD the operator uses, by name -> this release's CRD: main.check_installed_crds reads each
# installed one at startup (and refuses to start when it lacks a field of ours), and
# rbac.CLUSTER_RULES lets the operator get exactly these. Here, as this module sees both.
CRDS: dict[str, Callable[[], dict[str, Any]]] = {job_crd.CRD_NAME: job_crd.crd, WATCH_CRD_NAME: crd}


def openapi_schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def to_yaml() -> str:
    return crd_yaml(crd(), "videowatch_crd")


if __name__ == "__main__":
    sys.stdout.write(to_yaml())
