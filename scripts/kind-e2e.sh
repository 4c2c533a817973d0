#!/usr/bin/env bash
# End to end on a kind cluster, CPU only: the MPI Operator, the images, Azurite, the chart, one
# StyleTransferJob over the sample clip, and a frame count of the result.
#
# Needs a machine with internet and docker, kind, kubectl and helm (3.8+ or 4), in a checkout set up
# with `bash scripts/setup.sh` (the .venv, ffprobe and samples/sample.mp4). It CANNOT run on this
# project's own machines (no container engine, no internet there): tests/test_manifests.py checks
# everything it applies instead.
#
#   scripts/kind-e2e.sh                   # create or reuse the cluster, run, keep the cluster
#   KEEP_CLUSTER=0 scripts/kind-e2e.sh    # delete the cluster afterwards
#   scripts/kind-e2e.sh --help            # this text; it takes no other arguments
#
# Settings, from the environment: CLUSTER (stylebatch-e2e), MPI_OPERATOR_VERSION (v0.8.0),
# TIMEOUT_S for the job (1800), LOCAL_PORT Azurite is forwarded to (10000), KEEP_CLUSTER (1).
set -euo pipefail

case "${1-}" in
  -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
  "") ;;
  *) echo "kind-e2e.sh: unknown argument $1 (it takes none; settings are environment variables: --help)" >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

CLUSTER=${CLUSTER:-stylebatch-e2e}
NS=stylebatch
MPI_OPERATOR_VERSION=${MPI_OPERATOR_VERSION:-v0.8.0}
TIMEOUT_S=${TIMEOUT_S:-1800}
PY=.venv/bin/python
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)  # no tomllib: Python 3.10 is supported
OPERATOR_IMAGE=stylebatch-operator:$VERSION
WORKER_IMAGE=stylebatch-worker:$VERSION-cpu
LOCAL_PORT=${LOCAL_PORT:-10000}  # where Azurite is port-forwarded to, for the upload and download
CTX=kind-$CLUSTER
umask 077  # the files under $work hold the emulator's key
work=$(mktemp -d)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
k() { kubectl --context "$CTX" "$@"; }
cleanup() {
  [ -n "${pf_pid:-}" ] && kill "$pf_pid" 2>/dev/null
  rm -rf "$work"
  if [ "${KEEP_CLUSTER:-1}" = 0 ]; then kind delete cluster --name "$CLUSTER"; fi
}
trap cleanup EXIT

for tool in docker kind kubectl helm ffprobe; do
  command -v "$tool" >/dev/null || { echo "kind-e2e: $tool is missing" >&2; exit 2; }
done
[ -s samples/sample.mp4 ] && [ -x "$PY" ] || { echo "kind-e2e: run 'bash scripts/setup.sh' first" >&2; exit 2; }

step "1/10 kind cluster $CLUSTER"
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 180s

step "2/10 Kubeflow MPI Operator $MPI_OPERATOR_VERSION"
k apply --server-side -f "https://raw.githubusercontent.com/kubeflow/mpi-operator/$MPI_OPERATOR_VERSION/deploy/v2beta1/mpi-operator.yaml"
k -n mpi-operator rollout status deployment/mpi-operator --timeout=300s

step "3/10 images $OPERATOR_IMAGE and $WORKER_IMAGE (CPU torch), loaded into kind"
docker build -f Dockerfile.operator --build-arg VERSION="$VERSION" -t "$OPERATOR_IMAGE" .
docker build -f Dockerfile.worker --build-arg VARIANT=cpu --build-arg VERSION="$VERSION" -t "$WORKER_IMAGE" .
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$WORKER_IMAGE"

step "4/10 Azurite in namespace $NS, with a random account key"
k create namespace "$NS" --dry-run=client -o yaml | k apply -f -
if ! k -n "$NS" get secret azurite-account >/dev/null 2>&1; then
  printf 'AZURITE_ACCOUNTS=devstoreaccount1:%s\n' "$(head -c 48 /dev/urandom | base64 | tr -d '\n')" > "$work/azurite.env"
  k -n "$NS" create secret generic azurite-account --from-env-file="$work/azurite.env"
fi
key=$(k -n "$NS" get secret azurite-account -o jsonpath='{.data.AZURITE_ACCOUNTS}' | base64 -d | cut -d: -f2-)
k -n "$NS" apply -f manifests/kind/azurite.yaml
k -n "$NS" rollout status deployment/azurite --timeout=300s

step "5/10 storage Secret the job pods read (connection string to the in-cluster Azurite)"
endpoint="http://azurite.$NS.svc.cluster.local:10000/devstoreaccount1"
printf 'AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=%s;BlobEndpoint=%s\n' \
  "$key" "$endpoint" > "$work/storage.env"
k -n "$NS" create secret generic stylebatch-storage --from-env-file="$work/storage.env" --dry-run=client -o yaml \
  | k apply -f -

step "6/10 the chart (CPU defaults from ci/kind-values.yaml)"
# On a reused cluster: Helm installs crds/ on the first install only (the operator refuses an older
# CRD), and the rebuilt operator image keeps its tag, so the pod template names its image id to be
# replaced (else the old operator kept running).
k apply --server-side --force-conflicts -f charts/stylebatch/crds/
operator_id=$(docker image inspect -f '{{.Id}}' "$OPERATOR_IMAGE")
helm upgrade --install stylebatch charts/stylebatch --kube-context "$CTX" --namespace "$NS" \
  -f charts/stylebatch/ci/kind-values.yaml --set jobs.image.tag="$VERSION-cpu" \
  --set-string "operator.podAnnotations.stylebatch\.io/image-id=$operator_id" --wait --timeout 5m

step "7/10 the sample job as it is: the chart's kind values make it run here (CPU image, no GPUs, the Azurite Secret)"
$PY - > "$work/job.yaml" <<'EOF'
import yaml
job = yaml.safe_load(open("manifests/examples/job.yaml"))
job["metadata"]["name"] = "e2e-sample"
job["spec"].pop("scheduling", None)  # no spot pools on kind
print(yaml.safe_dump(job, sort_keys=False))
EOF
read -r input output < <($PY -c 'import sys, yaml; s = yaml.safe_load(open(sys.argv[1]))["spec"]; print(s["input"], s["output"])' "$work/job.yaml")

step "8/10 upload samples/sample.mp4 to $input"
k -n "$NS" port-forward svc/azurite "$LOCAL_PORT:10000" >/dev/null 2>&1 &
pf_pid=$!
export AZURE_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$key;BlobEndpoint=http://127.0.0.1:$LOCAL_PORT/devstoreaccount1"
$PY - "$input" <<'EOF'
import os, sys, time
from azure.storage.blob import BlobServiceClient
container, _, blob = sys.argv[1].removeprefix("az://").partition("/")
service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
for _ in range(30):  # the port-forward takes a moment
    try:
        service.get_service_properties()
        break
    except Exception:
        time.sleep(1)
if not service.get_container_client(container).exists():
    service.create_container(container)
with open("samples/sample.mp4", "rb") as f:
    service.get_blob_client(container, blob).upload_blob(f, overwrite=True)
EOF
k -n "$NS" delete stj e2e-sample --ignore-not-found --wait
k -n "$NS" apply -f "$work/job.yaml"

step "9/10 wait for Succeeded (at most ${TIMEOUT_S}s)"
deadline=$((SECONDS + TIMEOUT_S))
while :; do
  phase=$(k -n "$NS" get stj e2e-sample -o jsonpath='{.status.phase}')
  echo "  ${phase:-Pending} $(k -n "$NS" get stj e2e-sample -o jsonpath='{.status.progress.summary}')"
  if [ "$phase" = Succeeded ]; then
    ran=$(k -n "$NS" get stj e2e-sample -o jsonpath='{.status.effectiveSpec.image}')
    [ "$ran" = "$WORKER_IMAGE" ] || { echo "kind-e2e: the job ran $ran, not the chart's $WORKER_IMAGE" >&2; exit 1; }
    break
  fi
  if [ "$phase" = Failed ] || [ "$SECONDS" -ge "$deadline" ]; then
    k -n "$NS" describe stj e2e-sample
    k -n "$NS" get pods -o wide
    k -n "$NS" logs -l stylebatch.io/job=e2e-sample --all-containers --tail=50 --prefix --max-log-requests=20 || true
    echo "kind-e2e: the job did not succeed" >&2
    exit 1
  fi
  sleep 10
done

step "10/10 download $output and compare frame counts"
$PY - "$output" "$work/output.mp4" <<'EOF'
import os, sys
from azure.storage.blob import BlobServiceClient
container, _, blob = sys.argv[1].removeprefix("az://").partition("/")
service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
with open(sys.argv[2], "wb") as f:
    service.get_blob_client(container, blob).download_blob().readinto(f)
EOF
frames() { ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames -of csv=p=0 "$1"; }
want=$(frames samples/sample.mp4)
got=$(frames "$work/output.mp4")
audio=$(ffprobe -v error -select_streams a -show_entries stream=index -of csv=p=0 "$work/output.mp4" | wc -l)
echo "  input $want frames, output $got frames, $audio audio stream(s)"
[ "$got" = "$want" ] && [ "$audio" -ge 1 ] || { echo "kind-e2e: output does not match the input" >&2; exit 1; }
echo "kind-e2e: OK"
