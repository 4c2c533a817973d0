"""Exactly the permissions the operator uses, for the chart's Role/ClusterRole (a chart test compares).

RULES go in a Role in each watched namespace, or in a ClusterRole when the operator watches all
namespaces. CLUSTER_RULES, always in a ClusterRole: reading the operator's two CRDs (StyleTransferJob's
and VideoWatch's, those only: videowatch_crd.CRDS) at startup, to refuse to run against an older
one. Nothing else cluster-scoped: kopf's scanning is off (main.operator_settings), so kopf reads API
discovery once at startup (allowed to every authenticated user) and watches neither CRDs nor
namespaces. No Secrets: credentials reach the pods
by reference, never through the operator.
"""

from __future__ import annotations

from stylebatch_operator.videowatch_crd import CRDS

RULES: list[dict[str, list[str]]] = [
    # kopf watches jobs, patches its annotations and finalizer; the operator reads them fresh
    {"apiGroups": ["stylebatch.io"], "resources": ["styletransferjobs"],
     "verbs": ["get", "list", "watch", "patch", "delete", "create"]},  # delete: spec.cleanup.jobAfterFinishedSeconds;
    # create: a VideoWatch's jobs. VideoWatches: watched like jobs; their status holds the counts
    {"apiGroups": ["stylebatch.io"], "resources": ["videowatches"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["stylebatch.io"], "resources": ["videowatches/status"], "verbs": ["patch"]},
    {"apiGroups": ["stylebatch.io"], "resources": ["videowatches/finalizers"], "verbs": ["update"]},
    {"apiGroups": ["stylebatch.io"], "resources": ["styletransferjobs/status"], "verbs": ["patch"]},
    # ownerReferences with blockOwnerDeletion need update on the owner's finalizers
    {"apiGroups": ["stylebatch.io"], "resources": ["styletransferjobs/finalizers"], "verbs": ["update"]},
    # delete: a child still running when the job ends (deadline, a permanent stall) or is retried,
    # and finished children (spec.cleanup)
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "create", "delete"]},
    {"apiGroups": ["kubeflow.org"], "resources": ["mpijobs"], "verbs": ["get", "create", "delete"]},
    # a child's pods say why it fails or cannot start; the MPIJob launcher's log holds the ranks' progress lines
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    # list: a child's own Events (a Job's FailedCreate, the MPI Operator's ValidationError)
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "list"]},
    # get: the LocalQueue a job waits in (spec.queueName), which Kueue can admit it from only if it exists
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["localqueues"], "verbs": ["get"]},
]

CLUSTER_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "resourceNames": list(CRDS),
     "verbs": ["get"]},
]

# In the operator's own namespace: the Lease that makes one operator act at a time (leader.py). get
# and patch reach only the operator's own Lease (its name, <release>-operator in the chart, goes in
# resourceNames: lease_rules); create cannot be restricted by name, so it is a rule of its own.
LEASE_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "patch"]},
]


def lease_rules(name: str) -> list[dict[str, list[str]]]:
    """LEASE_RULES for the Lease `name`: every rule but create's limited to it by resourceNames."""
    return [rule if "create" in rule["verbs"] else {**rule, "resourceNames": [name]} for rule in LEASE_RULES]
