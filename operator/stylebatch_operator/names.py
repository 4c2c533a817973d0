"""Who is who: the custom resource's API coordinates, the stages, and the names, labels and owner
references of the children a StyleTransferJob creates."""

from __future__ import annotations

from typing import Any

from stylebatch.trigger import JOB_NAME_LENGTH

GROUP = "stylebatch.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "StyleTransferJob"
PLURAL = "styletransferjobs"
SINGULAR = "styletransferjob"
SHORT_NAMES = ["stj"]

# A VideoWatch makes a StyleTransferJob for every video uploaded to a blob prefix.
WATCH_KIND = "VideoWatch"
WATCH_PLURAL = "videowatches"
WATCH_SINGULAR = "videowatch"
WATCH_SHORT_NAMES = ["vw"]

MPI_API_VERSION = "kubeflow.org/v2beta1"

MANAGED_BY = "stylebatch"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB = f"{GROUP}/job"
LABEL_STAGE = f"{GROUP}/stage"
LABEL_ATTEMPT = f"{GROUP}/attempt"
# The uid of the StyleTransferJob a child (and its pods) belongs to: a job re-created with the same
# name gets children and pods with the same names and the labels above, which must not be taken for
# the earlier job's (its pods may still be terminating).
LABEL_JOB_UID = f"{GROUP}/job-uid"
LABEL_WATCH = f"{GROUP}/watch"  # on the StyleTransferJobs a VideoWatch made

# A Kubernetes quantity (cpu: "4", memory: 16Gi, ephemeral-storage: 20Gi).
QUANTITY_PATTERN = (r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+))?$")

# Kueue's label naming the LocalQueue a workload (a Job, an MPIJob) is submitted to.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# A DNS-1123 label: the form of a LocalQueue's name (and of a label value that names an object).
DNS_LABEL_PATTERN = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_SUBDOMAIN_PATTERN = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"  # most objects' names

# The MPI operator's label on the pods of an MPIJob that says launcher or worker.
MPI_LABEL_ROLE = "training.kubeflow.org/job-role"
# ... which runs an MPIJob's launcher as a batch Job named <MPIJob>-launcher (so its pod is
# <MPIJob>-launcher-xxxxx, and a launcher pod that cannot be created is that Job's FailedCreate).
MPI_LAUNCHER_SUFFIX = "-launcher"

TRAIN, PREPROCESS, STYLIZE, POSTPROCESS = "train", "preprocess", "stylize", "postprocess"
STAGES = (TRAIN, PREPROCESS, STYLIZE, POSTPROCESS)  # train only when spec.train asks for it
CHILD_KIND = {TRAIN: "Job", PREPROCESS: "Job", STYLIZE: "MPIJob", POSTPROCESS: "Job"}

# Children append "-postprocess-NN", and the MPI operator appends "-launcher" / "-worker-NNN" to
# the MPIJob's name; pod names and hostnames must stay within 63 characters.
MAX_NAME_LENGTH = JOB_NAME_LENGTH  # 40; the names a VideoWatch gives its jobs fit too
# ... and the MPI operator's pod names (<name>-stylize-1-worker-0) must be DNS-1035 labels, as must
# the Services it makes for them: a lowercase letter first, then lowercase letters, digits and '-',
# no '-' at the end. A name such as 2024-promo or trip.v2 is fine for a Job but not for an MPIJob.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_RULE_MESSAGE = ("must start with a lowercase letter and hold only lowercase letters, digits and '-' "
                     "(a DNS-1035 label): the MPI Operator names its pods <name>-stylize-1-worker-0")


def child_name(job_name: str, stage: str, attempt: int) -> str:
    """Deterministic, so that a restarted operator finds (or re-creates) exactly the same child."""
    return f"{job_name}-{stage}-{attempt}"


def child_labels(job_name: str, stage: str, attempt: int, job_uid: str = "") -> dict[str, str]:
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB: job_name,
        LABEL_STAGE: stage,
        LABEL_ATTEMPT: str(attempt),
    }
    if job_uid:
        labels[LABEL_JOB_UID] = job_uid
    return labels


def pod_selector(child: dict[str, Any]) -> dict[str, str]:
    """The labels that select a child's pods (its pod templates carry the child's labels): those of
    its job, stage and attempt, and its job's uid (absent on a child made before that label)."""
    labels = child["metadata"].get("labels") or {}
    return {key: labels.get(key, "") for key in (LABEL_JOB, LABEL_STAGE, LABEL_ATTEMPT, LABEL_JOB_UID)
            if key != LABEL_JOB_UID or key in labels}


def owner_reference(stj: dict[str, Any], kind: str = KIND) -> dict[str, Any]:
    """Makes Kubernetes delete the child with its StyleTransferJob (or a job with its VideoWatch)."""
    meta = stj["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_controlled_by(obj: dict[str, Any], stj: dict[str, Any]) -> bool:
    uid = stj["metadata"]["uid"]
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in obj.get("metadata", {}).get("ownerReferences") or [])
