#!/usr/bin/env bash
# End to end on a real (kind) cluster, for machines with Docker, kind, kubectl and helm.
# It cannot run where this project is developed (no Docker engine there): keep it correct by review.
#   bash hack/e2e-kind.sh            # create the cluster, build, install, run every scenario
#   KEEP=1 bash hack/e2e-kind.sh     # leave the cluster running afterwards
#   SCENARIOS="train serve" bash hack/e2e-kind.sh   # only these (after the install)
#
# Each scenario is a function `scenario_NAME` whose `# mirrors:` line names the emulated tests
# (tests/e2e and the folders that mirror the code) that check the same behaviour on the emulated API server; a unit test
# (tests/chart/test_gitops.py) fails when a named test no longer exists. The real API server is where
# the emulator's leniency shows: canonical quantities, defaults, server-side apply ownership, CEL.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-keras-operator}
TAG=${TAG:-e2e}
NS=ml
OPERATOR_NS=keras-system

say() { printf '\n=== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# mirrors: tests/chart/test_install_checks.py (the chart's CRDs accepted by a strict API server)
scenario_install() {
  # The CRDs go in first and alone: a CEL rule the API server cannot compile refuses them here.
  kubectl apply --server-side -f crds/
  helm upgrade --install keras-operator charts/keras-operator -n "$OPERATOR_NS" --create-namespace --wait \
    --set image.repository=keras-operator --set image.tag="$TAG" --set image.pullPolicy=Never \
    --set trainerImage="keras-trainer:$TAG" --set "watchNamespaces={$NS}"
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
}

# mirrors: tests/e2e/test_api_server_realism.py::test_watching_named_namespaces_never_lists_the_clusters_namespaces
scenario_no_namespace_listing() {
  # With watchNamespaces the chart grants no cluster-wide namespace list: the operator must not try.
  sleep 5
  if kubectl logs -n "$OPERATOR_NS" deploy/keras-operator | grep -q 'namespaces is forbidden'; then
    fail "the operator listed namespaces (403) although it watches named ones"
  fi
}

# mirrors: tests/e2e/test_training_e2e.py::test_invalid_resource_is_reported_and_creates_nothing
#          tests/e2e/test_admission_webhook.py::test_an_invalid_resource_is_refused_at_apply_and_a_valid_one_runs
scenario_invalid_refused() {
  local out
  if out=$(kubectl apply -n "$NS" -f - 2>&1 <<'YAML'
apiVersion: kerasoperator.dev/v1alpha1
kind: KerasTrainingJob
metadata: {name: broken}
spec:
  model: {inputShape: [4], layers: [{type: Dense, units: 2}]}
  data: {train: {uri: "pvc://Not_A_Claim/x.npz"}}
  training: {epochs: 1, optimizer: {name: adam, learningRate: -1}}
YAML
  ); then
    fail "an invalid KerasTrainingJob was accepted: $out"
  fi
  echo "$out" | grep -q 'spec\.' || fail "the refusal does not name the field: $out"
}

# mirrors: tests/e2e/test_training_e2e.py::test_training_job_runs_to_success
scenario_train() {
  kubectl apply -n "$NS" -f examples/digits.yaml
  kubectl wait -n "$NS" ktj/digits --for=jsonpath='{.status.phase}'=Succeeded --timeout=15m
  kubectl get -n "$NS" ktj digits
  [ -n "$(kubectl get -n "$NS" ktj digits -o jsonpath='{.status.modelUri}')" ] || fail "no status.modelUri"
}

# mirrors: tests/e2e/test_serving_e2e.py::test_train_then_serve_through_the_service_url
scenario_serve() {
  # Without autoscaling: kind has no metrics-server for the HPA.
  sed '/autoscaling:/d' examples/digits-service.yaml | kubectl apply -n "$NS" -f -
  kubectl wait -n "$NS" kms/digits --for=jsonpath='{.status.phase}'=Ready --timeout=10m
  kubectl get -n "$NS" kms digits
  kubectl port-forward -n "$NS" svc/digits 18080:8080 >/dev/null &
  PF=$!
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
  kill "$PF" 2>/dev/null || true
}

# The Deployment's resourceVersion, sampled over two resyncs: it must not move when nothing changed.
_settled() {
  local before after
  before=$(kubectl get -n "$NS" deploy/digits -o jsonpath='{.metadata.generation}')
  sleep 15
  after=$(kubectl get -n "$NS" deploy/digits -o jsonpath='{.metadata.generation}')
  [ "$before" = "$after" ] || fail "deploy/digits re-applied while nothing changed ($1): generation $before -> $after"
}

# mirrors: tests/e2e/test_drift_converges.py::test_a_service_written_non_canonically_converges_and_keeps_another_managers_env
scenario_converges() {
  # Written non-canonically: the API server stores 500m and 1Gi, which must not read as drift.
  kubectl patch -n "$NS" kms/digits --type merge -p '{"spec": {"resources": {"cpu": "0.5", "memory": "1024Mi"}}}'
  sleep 10
  _settled "canonical quantities"
  # Another field manager's env var stays, and is not the operator's drift.
  kubectl set env -n "$NS" deploy/digits FOO=bar
  sleep 10
  _settled "an env var added by kubectl"
  kubectl get -n "$NS" deploy/digits -o jsonpath='{.spec.template.spec.containers[0].env[*].name}' | grep -qw FOO \
    || fail "the operator removed another manager's env var"
}

# mirrors: tests/e2e/test_rbac.py::test_chart_rbac_covers_every_call_and_grants_nothing_unexplained
scenario_field_managers() {
  local managers
  managers=$(kubectl get -n "$NS" deploy/digits ktj/digits kms/digits \
    -o jsonpath='{range .items[*]}{range .metadata.managedFields[*]}{.manager}{"\n"}{end}{end}' | sort -u)
  echo "$managers"
  if echo "$managers" | grep -q OpenAPI-Generator; then fail "a write went under the client's default manager"; fi
}

# mirrors: tests/e2e/test_training_e2e.py::test_deleting_the_resource_removes_job_and_pods
scenario_delete() {
  kubectl delete -n "$NS" kms/digits ktj/digits --wait
  kubectl wait -n "$NS" --for=delete job/digits-train deploy/digits --timeout=2m || true
  [ -z "$(kubectl get -n "$NS" jobs,deploy -o name)" ] || fail "children left after their owners were deleted"
}

# mirrors: tests/e2e/test_leader.py::test_sigterm_releases_the_lease_as_soon_as_kopf_is_done
scenario_leader_handover() {
  kubectl scale -n "$OPERATOR_NS" deploy/keras-operator --replicas 2
  kubectl rollout status -n "$OPERATOR_NS" deploy/keras-operator --timeout=3m
  local lease holder start
  lease=$(kubectl get lease -n "$OPERATOR_NS" -o name | head -1)
  holder=$(kubectl get -n "$OPERATOR_NS" "$lease" -o jsonpath='{.spec.holderIdentity}')
  start=$(date +%s)
  kubectl delete pod -n "$OPERATOR_NS" "$holder" --wait=false
  until [ "$(kubectl get -n "$OPERATOR_NS" "$lease" -o jsonpath='{.spec.holderIdentity}')" != "$holder" ]; do sleep 0.5; done
  echo "hand-over after SIGTERM: $(($(date +%s) - start)) s"
}

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
[ -n "${KEEP:-}" ] || trap 'kind delete cluster --name "$CLUSTER"' EXIT

docker build -f Dockerfile.operator -t "keras-operator:$TAG" .
docker build -f Dockerfile.trainer -t "keras-trainer:$TAG" .
kind load docker-image --name "$CLUSTER" "keras-operator:$TAG" "keras-trainer:$TAG"

say install
scenario_install
for name in ${SCENARIOS:-no_namespace_listing invalid_refused train serve converges field_managers delete leader_handover}; do
  say "$name"
  "scenario_$name"
done
echo "e2e on kind: OK"
