#!/usr/bin/env bash
# End to end on a real (kind) cluster, for machines with Docker, kind, kubectl and helm.
# It cannot run where this project is developed (no Docker engine there): keep it correct by review.
#   bash hack/e2e-kind.sh            # create the cluster, build, install, train, serve, predict
#   KEEP=1 bash hack/e2e-kind.sh     # leave the cluster running afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-keras-operator}
TAG=${TAG:-e2e}
NS=ml

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
[ -n "${KEEP:-}" ] || trap 'kind delete cluster --name "$CLUSTER"' EXIT

docker build -f Dockerfile.operator -t "keras-operator:$TAG" .
docker build -f Dockerfile.trainer -t "keras-trainer:$TAG" .
kind load docker-image --name "$CLUSTER" "keras-operator:$TAG" "keras-trainer:$TAG"

helm upgrade --install keras-operator charts/keras-operator -n keras-system --create-namespace --wait \
  --set image.repository=keras-operator --set image.tag="$TAG" --set image.pullPolicy=Never \
  --set trainerImage="keras-trainer:$TAG"

kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
# The digits examples write to and read from a PVC named "models" (kind's default storage class).
kubectl apply -n "$NS" -f - <<'YAML'
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: models}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
YAML
kubectl apply -n "$NS" -f examples/digits.yaml
kubectl wait -n "$NS" ktj/digits --for=jsonpath='{.status.phase}'=Succeeded --timeout=15m
kubectl get -n "$NS" ktj digits

# Serve without autoscaling (kind has no metrics-server for the HPA).
sed '/autoscaling:/d' examples/digits-service.yaml | kubectl apply -n "$NS" -f -
kubectl wait -n "$NS" kms/digits --for=jsonpath='{.status.phase}'=Ready --timeout=10m
kubectl get -n "$NS" kms digits

kubectl port-forward -n "$NS" svc/digits 18080:8080 >/dev/null &
PF=$!
trap 'kill $PF 2>/dev/null || true; [ -n "${KEEP:-}" ] || kind delete cluster --name "$CLUSTER"' EXIT
sleep 3
python3 - <<'PY'
import json, urllib.request
x = [[0.0] * 64]
req = urllib.request.Request("http://127.0.0.1:18080/v1/models/digits:predict",
                             data=json.dumps({"instances": x}).encode(), headers={"Content-Type": "application/json"})
out = json.loads(urllib.request.urlopen(req, timeout=10).read())
assert len(out["predictions"][0]) == 10, out
print("prediction:", out["predictions"][0])
PY
echo "e2e on kind: OK"
