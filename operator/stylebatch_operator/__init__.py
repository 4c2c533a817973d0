"""The StyleTransferJob operator: a kopf operator that turns a StyleTransferJob into a preprocess
Job, an MPIJob across GPU pods and a postprocess Job, and reports progress in the job's status.

Pure modules (no I/O): `names`, `uris`, `settings`, `crd`, `spec`, `manifests`, `observe`, `decide`,
`status`, `metrics`, `rbac`. I/O: `kube` (the API client), `handlers` (kopf glue), `web` (/healthz and
/metrics) and `main` (`stylebatch operator`).
Nothing here imports torch or the worker's heavy modules.
"""
