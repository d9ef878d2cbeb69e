"""checkov (a policy scanner) over what the project puts in a cluster or builds into an image: the chart in
its modes, every object `kerasop render` makes for examples/*.yaml (with the progress endpoint on, as the
chart runs it), both sides of a canary split by pods and by an HTTPRoute, the workload NetworkPolicies of
deploy/networkpolicy, and both Dockerfiles.

No check may fail but those in SKIPS, each for its reason and only where it says; a skip that matches no
failure fails the test too, so none outlives its reason. Dockerfiles carry their skips as `checkov:skip`
comments (checkov reads those there; for Kubernetes objects it reads only annotations, which the operator's
objects should not carry, hence the list here).

checkov pins libraries below what the project's constraints hold (boto3, packaging, networkx): it lives in
a venv of its own, .cache/venv-checkov, made on first use from the frozen tests/security/checkov-requirements.txt
(--no-deps: no resolver run; about a minute, once). The scan itself takes about 10 s, with checkov's calls to its
vendor's platform and to PyPI turned off (--skip-download, SKIP_PACKAGE_UPDATE_CHECK)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.manifests import ROOT
from helpers.rbac import render_chart
from keras_operator.api.model_service import KerasModelService
from keras_operator.api.parse import parse, read_documents
from keras_operator.builders.serving_manifests import (
    DeploymentModel,
    build_deployment,
    build_route,
    build_service,
    side_service_name,
)
from kerasop import cli

pytestmark = pytest.mark.slow  # checkov runs in its own venv, on what helm renders

REQUIREMENTS = Path(__file__).with_name("checkov-requirements.txt")
VENV = ROOT / ".cache" / "venv-checkov"
NAMESPACE = "ml"

# The chart as it is installed: by default, and with each setting that adds or changes objects.
CHART_MODES: dict[str, tuple[str, ...]] = {
    "default": (),
    "watch-namespaces": ("watchNamespaces={ml,team-b}",),
    "httproute": ("canary.trafficSplit=httproute", "canary.gateway=infra/public"),
    "service-monitor": ("metrics.serviceMonitor.enabled=true",),
    "network-policy": ("networkPolicy.enabled=true",),
    "digest": ("image.digest=sha256:" + "0" * 64,),
    "webhook-cert-manager": ("webhook.certificates=cert-manager",),
    "webhook-off": ("webhook.enabled=false",),
    "webhook-fail-namespaced": (
        "webhook.failurePolicy=Fail",
        "watchNamespaces={ml,team-b}",
        "networkPolicy.enabled=true",
    ),
}


@dataclass(frozen=True)
class Skip:
    check: str
    where: str
    """A regular expression searched in 'FILE RESOURCE' (FILE as written to the scan folder: chart-MODE.yaml,
    example-NAME.yaml, canary-SPLIT-NAME.yaml, networkpolicy-NAME.yaml)."""
    reason: str


NO_RESOURCES = "cnn-images|fine-tune|s3-training|tabular-csv"  # examples whose spec has no resources

SKIPS = (
    Skip(
        "CKV_K8S_15",
        ".",
        "imagePullPolicy Always: the images are pulled by release tags, which never move; the chart's "
        "image.pullPolicy sets Always, and a podTemplate or an image by digest does the same for workloads",
    ),
    Skip(
        "CKV_K8S_43",
        "^(?!chart-digest)",
        "image by digest: a release's digest exists only once it is built, so the defaults are tags; the chart "
        "takes image.digest (chart-digest passes) and trainerImage or spec.image may be REPO@sha256:...",
    ),
    Skip(
        "CKV_K8S_40",
        ".",
        "a uid of 10000 or more: both images run as uid 1000 (USER 1000:1000), the owner of what earlier "
        "trainings wrote to users' PVCs; runAsNonRoot, no privilege escalation, every capability dropped, a "
        "read-only root and the RuntimeDefault seccomp profile confine it; a podTemplate may set another uid",
    ),
    Skip(
        "CKV_K8S_38",
        r"^chart-\S+ Deployment\.keras-system\.",
        "the operator's own pod mounts its ServiceAccount token: it is the API client (the workloads' pods "
        "do not: automountServiceAccountToken false, the trainer's progress push uses a projected token of "
        "the operator's audience only)",
    ),
    *(
        Skip(
            check,
            rf"^example-({NO_RESOURCES})\.yaml Job\.",
            "no CPU or memory requests and limits: the operator sets exactly spec.resources (requests = "
            "limits); these examples give none (they run on a laptop with `kerasop run` too) and leave them "
            "to the namespace's LimitRange. The examples that give spec.resources pass.",
        )
        for check in ("CKV_K8S_10", "CKV_K8S_11", "CKV_K8S_12", "CKV_K8S_13")
    ),
    Skip(
        "CKV_K8S_35",
        r"^example-s3-training\.yaml Job\.",
        "Secret values in environment variables: the example hands s3fs the AWS SDK's own variables "
        "(envFrom a Secret), as users do; the user's podTemplate may mount the Secret as a credentials file "
        "(AWS_SHARED_CREDENTIALS_FILE) instead",
    ),
)


def checkov() -> Path:
    """checkov from its own venv, made once per version of the requirements file."""
    marker = VENV / f".installed-{hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]}"
    if not marker.exists():
        shutil.rmtree(VENV, ignore_errors=True)  # a half-made or outdated venv
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = subprocess.run(
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "-r", str(REQUIREMENTS)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
        marker.touch()
    return VENV / "bin" / "checkov"


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def rendered(example: Path, cert_dir: Path) -> list[dict[str, Any]]:
    """`kerasop render` of one example, as an operator installed by the chart would make the objects."""
    out = io.StringIO()
    with (
        _env(
            KERAS_OPERATOR_PROGRESS_PORT="8443",
            KERAS_OPERATOR_PROGRESS_URL="https://ko-keras-operator-progress.keras-system.svc:8443",
            KERAS_OPERATOR_PROGRESS_CERT_DIR=str(cert_dir),
        ),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        code = cli.main(["render", str(example), "-n", NAMESPACE, "-o", "json"])
    assert code == 0, f"kerasop render {example.name} failed"
    return json.loads(out.getvalue())["items"]


def canary_objects(service: KerasModelService, split: str) -> list[dict[str, Any]]:
    """What the operator adds for a canary (controllers/serving_reconciler.py): by pods, one Service over both sides'
    pods; by HTTPRoute, a Service per side and the route."""
    spec = service.spec
    assert spec.canary is not None
    assert spec.model.uri
    owner = {"apiVersion": service.api_version, "kind": service.kind, "metadata": {"name": service.metadata.name}}
    owner["metadata"]["namespace"] = NAMESPACE
    name = service.metadata.name
    model = spec.canary.model
    side = (
        DeploymentModel(model.uri, canary=True)
        if model.uri
        else DeploymentModel(spec.model.uri, f"specific:{model.version}", canary=True)
    )
    objects = [
        build_deployment(owner, spec, spec.model.uri, "ghcr.io/keras-operator/keras-trainer:0.1.0"),
        build_deployment(owner, spec, side, "ghcr.io/keras-operator/keras-trainer:0.1.0", replicas=1),
    ]
    if split == "pods":
        return [*objects, build_service(owner, spec, "both")]
    return [
        *objects,
        build_service(owner, spec),
        *(build_service(owner, spec, s, side_service_name(name, s == "canary")) for s in ("stable", "canary")),
        build_route(owner, spec, spec.canary.traffic_percent, None),
        build_route(owner, spec, spec.canary.traffic_percent, "infra/public"),
    ]


def write_scan_folder(folder: Path) -> None:
    for mode, sets in CHART_MODES.items():
        (folder / f"chart-{mode}.yaml").write_text(yaml.safe_dump_all(render_chart(*sets), sort_keys=False))
    cert_dir = folder.parent / "progress-tls"
    cert_dir.mkdir(exist_ok=True)
    (cert_dir / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    canaries = 0
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        objects = rendered(example, cert_dir)
        assert objects, example.name
        (folder / f"example-{example.stem}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
        for resource in (parse(d) for d in read_documents(example) if "spec" in d):  # not a ConfigMap of code
            if isinstance(resource, KerasModelService) and resource.spec.canary is not None:
                canaries += 1
                for split in ("pods", "httproute"):
                    path = folder / f"canary-{split}-{resource.metadata.name}.yaml"
                    path.write_text(yaml.safe_dump_all(canary_objects(resource, split), sort_keys=False))
    assert canaries, "no example has a canary"
    for policy in sorted((ROOT / "deploy" / "networkpolicy").glob("*.yaml")):
        shutil.copy(policy, folder / f"networkpolicy-{policy.name}")
    for dockerfile in ("Dockerfile.operator", "Dockerfile.trainer"):
        shutil.copy(ROOT / dockerfile, folder / dockerfile)


def scan(folder: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"}
    result = subprocess.run(
        [
            *(str(checkov()), "-d", str(folder), "--framework", "kubernetes", "dockerfile"),
            *("--skip-download", "--compact", "-o", "json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    # Exit 1 means failed checks, which the test sorts out; anything else is checkov itself failing.
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def _where(check: dict[str, Any]) -> str:
    return f"{Path(check['file_path']).name} {check['resource']}"


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("checkov") / "scan"
    folder.mkdir()
    write_scan_folder(folder)
    return scan(folder)


def test_no_check_fails_but_the_justified_ones(reports: list[dict[str, Any]]) -> None:
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    used: set[Skip] = set()
    unexplained = []
    for check in failed:
        skip = next((s for s in SKIPS if s.check == check["check_id"] and re.search(s.where, _where(check))), None)
        if skip is None:
            unexplained.append(check)
        else:
            used.add(skip)
    lines = [f"{c['check_id']} {c['check_name']}\n    {_where(c)} (lines {c['file_line_range']})" for c in unexplained]
    assert not unexplained, f"{len(unexplained)} failed checks:\n" + "\n".join(sorted(set(lines)))
    stale = [f"{s.check} where {s.where!r}" for s in SKIPS if s not in used]
    assert not stale, f"skips that no longer match a failure (remove them): {stale}"


def test_the_scan_covered_everything(reports: list[dict[str, Any]]) -> None:
    """A scan that parsed nothing passes vacuously: every kind of input must show up in the results."""
    results = [c for r in reports for kind in ("passed_checks", "failed_checks") for c in r["results"][kind]]
    files = {Path(c["file_path"]).name for c in results}
    expected = {f"chart-{mode}.yaml" for mode in CHART_MODES}
    expected |= {f"example-{p.stem}.yaml" for p in (ROOT / "examples").glob("*.yaml")}
    expected |= {"Dockerfile.operator", "Dockerfile.trainer"}
    assert expected <= files, sorted(expected - files)
    assert any(name.startswith("canary-httproute-") for name in files)
    kinds = {c["resource"].split(".")[0] for c in results}
    assert {"Deployment", "Job", "Service", "ClusterRole", "Role"} <= kinds, kinds
    # No check reads a NetworkPolicy itself; the one that pairs pods with policies (by their labels) shows
    # that deploy/networkpolicy's were read, and cover the trainer and server pods.
    paired = {c["resource"] for c in results if c["check_id"] == "CKV2_K8S_6"}
    for name in ("keras-trainer", "keras-model-server"):
        assert any(f"app.kubernetes.io/name-{name}." in resource for resource in paired), name
    # The Dockerfiles' own skips (checkov:skip comments) are the only ones checkov applied itself.
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    assert {Path(c["file_path"]).name for c in skipped} <= {"Dockerfile.operator", "Dockerfile.trainer"}
    assert all(c["check_result"].get("suppress_comment") for c in skipped)
    summary = {r["check_type"]: (r["summary"]["passed"], r["summary"]["failed"]) for r in reports}
    print(f"checkov (passed, failed) by framework: {summary}")
