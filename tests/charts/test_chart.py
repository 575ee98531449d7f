"""The Helm chart (charts/w4s): lint, render, strict Kubernetes validation, checkov and the values schema.

Needs helm and checkov in .venv/bin (scripts/install_helm.sh, which scripts/setup.sh runs) and
kubernetes-validate (the dev extra). Nothing is skipped: a missing tool fails with what to run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "w4s"
CHECKOV_CONFIG = CHART / ".checkov.yaml"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the chart supports (Chart.yaml kubeVersion)
NAMESPACE = "w4s"
SETUP_HINT = "run scripts/setup.sh (or scripts/install_helm.sh) to install helm and checkov into .venv/bin"
DIGEST = "sha256:" + "0123456789abcdef" * 4
KFP_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}},
    "podSelector": {"matchLabels": {"app": "ml-pipeline"}},
}
VLLM_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "llm"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "vllm"}},
}
INGRESS_NGINX = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}

# Several value sets the chart must render cleanly: the defaults, everything on, gVisor, existing secrets.
VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "everything-on": {
        "apiKeys": {"existingSecret": "", "executorApiKey": "sk-test-executor", "metaApiKey": "sk-test-meta"},
        "clientKeys": {"keys": ["sk-client-0123456789abcdef", "sk-client-fedcba9876543210"]},
        "executor": {"baseUrl": "https://api.openai.com/v1", "model": "gpt-4o-mini"},
        "image": {"digest": DIGEST},
        "serve": {
            "maxConcurrency": 8,
            "requestTimeoutSeconds": 120,
            "extraEnv": [{"name": "W4S_LOG_LEVEL", "value": "info"}],
        },
        "sandbox": {
            "hostUsers": False,
            "procMount": "Unmasked",
            "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/w4s-userns.json"},
            "doctor": {"strict": True},
        },
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "tls": [{"secretName": "w4s-tls", "hosts": ["w4s.example.com"]}],
        },
        "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
        "podDisruptionBudget": {"minAvailable": "", "maxUnavailable": 1},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "networkPolicy": {
            "enabled": True,
            "executor": {"cidrs": ["203.0.113.10/32", "198.51.100.0/24"]},
            # in-cluster KFP: by pod selector (a Service's ClusterIP range in cidrs matches nothing)
            "kfp": {"peers": [KFP_PEER], "ports": [8888]},
            "mlflowIngressFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}}}
            ],
            "ingressFrom": [INGRESS_NGINX],
            "metricsFrom": [PROMETHEUS],
        },
        "mlflow": {
            "server": {
                "enabled": True,
                "image": {"digest": DIGEST},
                "postgresql": {"host": "postgres.db.svc", "existingSecret": "mlflow-db"},
                "s3": {
                    "artifactsDestination": "s3://mlflow/w4s",
                    "endpointUrl": "http://minio.minio.svc:9000",
                    "existingSecret": "mlflow-s3",
                },
            }
        },
        "kfp": {"host": "http://ml-pipeline.kubeflow.svc:8888", "namespace": "team-a"},
        "schedule": {
            "enabled": True,
            "cron": "0 0 3 * * 1",
            "parameters": {
                "gpu_count": 1,
                "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
        },
    },
    "gvisor": {
        "image": {"digest": DIGEST},
        "sandbox": {"runtimeClassName": "gvisor", "allowDegraded": True},
        "networkPolicy": {
            "enabled": True,
            "executor": {"cidrs": ["203.0.113.10/32"]},
            "mlflow": {"cidrs": ["192.0.2.0/28"]},
        },
        "mlflow": {"trackingUri": "https://mlflow.example.com"},
    },
    "in-cluster-executor": {
        "executor": {"baseUrl": "http://vllm.llm.svc:8000/v1", "model": "Qwen/Qwen2.5-7B-Instruct"},
        "serve": {"replicaCount": 1},
        "networkPolicy": {"enabled": True, "executor": {"peers": [VLLM_PEER], "ports": [8000]}},
    },
    "existing-secrets": {
        "apiKeys": {"existingSecret": "team-executor-keys", "executorApiKeyKey": "openai"},
        "clientKeys": {"existingSecret": "team-client-keys", "secretKey": "keys"},
        "mlflow": {"existingSecret": "w4s-mlflow"},
        "networkPolicy": {
            "enabled": True,
            "executor": {"cidrs": ["203.0.113.10/32"]},
            "mlflow": {"cidrs": ["192.0.2.0/28"]},
            "kfp": {"cidrs": ["198.51.100.20/32"]},
        },
        "kfp": {"host": "https://kfp.example.com", "auth": {"mode": "secret", "existingSecret": "kfp-token"}},
        "schedule": {
            "enabled": True,
            "pipeline": "workflow-optimization",
            "parameters": {"tasks": "humaneval"},
        },
    },
}


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found in {path.parent} nor on PATH: {SETUP_HINT}")
    return found


@pytest.fixture(scope="module")
def helm() -> str:
    return _tool("helm")


def _values_file(tmp: Path, name: str, values: dict) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _helm(helm: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/w4s-helm-cache", "HELM_CONFIG_HOME": "/tmp/w4s-helm-config"}
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, env=env)


def _template(helm: str, values_file: Path) -> subprocess.CompletedProcess:
    """`helm template` of the chart with one values file, for the cluster version we target."""
    return _helm(
        helm,
        "template",
        "w4s",
        str(CHART),
        "--kube-version",
        K8S_VERSION,
        "-n",
        NAMESPACE,
        "-f",
        str(values_file),
    )


@pytest.fixture(scope="module")
def rendered(helm: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Every value set rendered once: name -> its documents."""
    tmp = tmp_path_factory.mktemp("values")
    out = {}
    for name, values in VALUE_SETS.items():
        res = _template(helm, _values_file(tmp, name, values))
        assert res.returncode == 0, f"helm template failed for {name}:\n{res.stderr}"
        out[name] = [d for d in yaml.safe_load_all(res.stdout) if d]
    return out


def _find(docs: list[dict], kind: str, component: str | None = None) -> list[dict]:
    found = [d for d in docs if d["kind"] == kind]
    if component:
        found = [d for d in found if d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    return found


def _one(docs: list[dict], kind: str, component: str | None = None) -> dict:
    found = _find(docs, kind, component)
    assert len(found) == 1, f"expected one {kind} ({component}), got {len(found)}"
    return found[0]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_strict(helm: str, tmp_path: Path, name: str):
    res = _helm(
        helm,
        "lint",
        "--strict",
        str(CHART),
        "-n",
        NAMESPACE,
        "-f",
        str(_values_file(tmp_path, name, VALUE_SETS[name])),
    )
    assert res.returncode == 0, f"helm lint --strict failed for {name}:\n{res.stdout}\n{res.stderr}"
    # helm lint reports a template's `fail` as an INFO line only
    assert "Fail:" not in res.stderr + res.stdout, f"a template failed for {name}:\n{res.stderr}"


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_manifests_validate_strictly(rendered: dict[str, list[dict]], name: str):
    import kubernetes_validate

    docs = rendered[name]
    assert docs, "nothing rendered"
    for doc in docs:
        ident = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"].get("namespace") == NAMESPACE, f"{ident} has no namespace"
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # a CRD: no schema offline; check what the Prometheus Operator needs by hand
            assert doc["kind"] == "ServiceMonitor"
            (endpoint,) = doc["spec"]["endpoints"]
            assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {ident} is not valid Kubernetes {K8S_VERSION} (strict): {exc}")


def test_defaults_serve_pod_is_hardened(rendered: dict[str, list[dict]]):
    docs = rendered["defaults"]
    deploy = _one(docs, "Deployment", "serve")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert "runtimeClassName" not in pod and "hostUsers" not in pod
    (serve,) = pod["containers"]
    sc = serve["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert serve["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert serve["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert serve["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert serve["resources"]["limits"]["memory"] and serve["resources"]["requests"]["cpu"]
    mounts = {m["mountPath"]: m["name"] for m in serve["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", "/var/lib/w4s/home", "/var/lib/w4s/data", "/home/w4s"):
        assert "emptyDir" in volumes[mounts[path]], f"{path} must be a writable emptyDir"
    args = serve["args"]
    assert args[:5] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert args[args.index("--api-keys-file") + 1] == "/etc/w4s/client-keys/keys"
    assert "--allow-degraded-sandbox" not in args
    env = {e["name"]: e for e in serve["env"]}
    assert env["W4S_EXECUTOR_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "w4s-api-keys",
        "key": "executor-api-key",
    }
    assert env["W4S_DATA_DIR"]["value"] == "/var/lib/w4s/data"
    (doctor,) = pod["initContainers"]
    assert doctor["args"] == ["sandbox", "doctor"], "the pod logs its isolation at start-up"
    # on by default: Service, ServiceAccount, PDB, the generated client key; off: the rest
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"]
    assert not _find(docs, "Job") and not _find(docs, "CronJob"), "retraining is off by default"
    assert "procMount" not in serve["securityContext"]
    # a PDB that never blocks a node drain, whatever the replica count
    assert _one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_everything_on(rendered: dict[str, list[dict]]):
    docs = rendered["everything-on"]
    pod = _one(docs, "Deployment", "serve")["spec"]["template"]["spec"]
    assert pod["hostUsers"] is False
    assert pod["securityContext"]["seccompProfile"] == {
        "type": "Localhost",
        "localhostProfile": "profiles/w4s-userns.json",
    }
    (serve,) = pod["containers"]
    assert serve["image"] == f"ghcr.io/w4s-project/w4s-cpu@{DIGEST}"
    # bubblewrap's fresh /proc per job needs an unmasked /proc (inside the pod's own user namespace)
    assert serve["securityContext"]["procMount"] == "Unmasked"
    assert pod["initContainers"][0]["securityContext"]["procMount"] == "Unmasked"
    args = serve["args"]
    assert args[args.index("--max-concurrency") + 1] == "8"
    assert args[args.index("--request-timeout-s") + 1] == "120"
    assert args[args.index("--executor-base-url") + 1] == "https://api.openai.com/v1"
    assert args[args.index("--executor-model") + 1] == "gpt-4o-mini"
    assert pod["initContainers"][0]["args"] == ["sandbox", "doctor", "--strict"]
    env = {e["name"]: e for e in serve["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://w4s-mlflow.w4s.svc:5000"
    assert "replicas" not in _one(docs, "Deployment", "serve")["spec"], "the HPA owns the replica count"
    for kind in ("Ingress", "HorizontalPodAutoscaler", "ServiceMonitor"):
        _one(docs, kind)
    assert _one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1

    # NetworkPolicy: serve reaches only DNS, the executor CIDRs and the bundled MLflow
    policy = next(d for d in _find(docs, "NetworkPolicy") if d["metadata"]["name"] == "w4s")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress = policy["spec"]["egress"]
    assert egress[0]["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert [p["ipBlock"]["cidr"] for p in egress[1]["to"]] == ["203.0.113.10/32", "198.51.100.0/24"]
    assert egress[2]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "mlflow"
    assert egress[2]["ports"] == [{"port": 5000, "protocol": "TCP"}], (
        "the MLflow pods' port, not the Service's"
    )
    assert len(egress) == 3
    # callers come through the ingress controller; Prometheus may still scrape /metrics
    ingress = policy["spec"]["ingress"]
    assert [rule["from"] for rule in ingress] == [[INGRESS_NGINX], [PROMETHEUS]]
    assert all(rule["ports"] == [{"port": "http", "protocol": "TCP"}] for rule in ingress)
    # the schedule job reaches the in-cluster KFP API by pod selector
    job_policy = next(d for d in _find(docs, "NetworkPolicy") if d["metadata"]["name"] == "w4s-schedule")
    assert job_policy["spec"]["egress"][1] == {"to": [KFP_PEER], "ports": [{"port": 8888, "protocol": "TCP"}]}

    # bundled MLflow on PostgreSQL and S3
    mlflow = _one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["args"][mlflow["args"].index("--artifacts-destination") + 1] == "s3://mlflow/w4s"
    # the database password reaches `mlflow server` through its env var, never its argv
    assert not any("MLFLOW_DB_PASSWORD" in a or "postgresql://" in a for a in mlflow["args"])
    mlflow_env = {e["name"]: e for e in mlflow["env"]}
    assert (
        mlflow_env["MLFLOW_BACKEND_STORE_URI"]["value"]
        == "postgresql://$(MLFLOW_DB_USER):$(MLFLOW_DB_PASSWORD)@postgres.db.svc:5432/mlflow?sslmode=require"
    )
    names = [e["name"] for e in mlflow["env"]]
    assert names.index("MLFLOW_DB_PASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI"), (
        "$(VAR) needs VAR first"
    )
    # serve's Host header (the Service name with its port) passes MLflow's host check
    allowed = mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert {"w4s-mlflow.w4s.svc:*", "w4s-mlflow:*", "10.*"} <= set(allowed)
    _one(docs, "Service", "mlflow")

    # retraining: a post-install/upgrade hook that runs `w4s pipeline schedule`
    job = _one(docs, "Job", "schedule")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:5] == [
        "pipeline",
        "schedule",
        "rlao-training",
        "--host",
        "http://ml-pipeline.kubeflow.svc:8888",
    ]
    assert args[args.index("--cron") + 1] == "0 0 3 * * 1"
    assert args[args.index("--namespace") + 1] == "team-a"
    params = [args[i + 1] for i, a in enumerate(args) if a == "--param"]
    assert "gpu_count=1" in params
    assert 'node_selector={"nvidia.com/gpu.product":"NVIDIA-H100-80GB-HBM3"}' in params
    assert any(p.startswith("tolerations=[") for p in params)

    secrets = {d["metadata"]["name"]: d for d in _find(docs, "Secret")}
    assert set(secrets) == {"w4s-api-keys", "w4s-client-keys"}


def test_gvisor(rendered: dict[str, list[dict]]):
    pod = _one(rendered["gvisor"], "Deployment", "serve")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "gvisor"
    assert "--allow-degraded-sandbox" in pod["containers"][0]["args"]
    assert pod["initContainers"][0]["args"] == ["sandbox", "doctor"], "no --strict when degraded is allowed"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "https://mlflow.example.com"


def test_in_cluster_executor(rendered: dict[str, list[dict]]):
    docs = rendered["in-cluster-executor"]
    policy = _one(docs, "NetworkPolicy")
    executor = policy["spec"]["egress"][1]
    assert executor == {"to": [VLLM_PEER], "ports": [{"port": 8000, "protocol": "TCP"}]}
    assert "from" not in policy["spec"]["ingress"][0], "no ingressFrom: any peer may call serve"
    # one replica: the PDB still lets a node drain evict it
    assert _one(docs, "Deployment", "serve")["spec"]["replicas"] == 1
    assert _one(docs, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/name": "w4s",
                "app.kubernetes.io/instance": "w4s",
                "app.kubernetes.io/component": "serve",
            }
        },
    }


def test_existing_secrets(rendered: dict[str, list[dict]]):
    docs = rendered["existing-secrets"]
    assert not _find(docs, "Secret"), "existing secrets: the chart makes none"
    pod = _one(docs, "Deployment", "serve")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["W4S_EXECUTOR_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "team-executor-keys",
        "key": "openai",
    }
    for var, key in [
        ("MLFLOW_TRACKING_URI", "tracking-uri"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key"),
    ]:
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "w4s-mlflow"
        assert env[var]["valueFrom"]["secretKeyRef"]["key"] == key
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["client-keys"]["secret"]["secretName"] == "team-client-keys"
    job = _one(docs, "Job", "schedule")["spec"]["template"]["spec"]["containers"][0]
    assert job["args"][2] == "workflow-optimization" and "--token" in job["args"]
    assert {e["name"] for e in job["env"]} >= {"KFP_TOKEN"}
    policy = next(d for d in _find(docs, "NetworkPolicy") if d["metadata"]["name"] == "w4s")
    cidrs = [p["ipBlock"]["cidr"] for rule in policy["spec"]["egress"] for p in rule["to"] if "ipBlock" in p]
    assert cidrs == ["203.0.113.10/32", "192.0.2.0/28"]


def _checkov_skips() -> dict[str, str]:
    """skip-check entries of .checkov.yaml with the reason written on their line."""
    skips = {}
    in_list = False
    for line in CHECKOV_CONFIG.read_text().splitlines():
        if re.match(r"^skip-check:", line):
            in_list = True
            continue
        if in_list and (m := re.match(r"^\s+-\s+(\S+)\s*(?:#\s*(.*))?$", line)):
            skips[m.group(1)] = (m.group(2) or "").strip()
        elif in_list and line.strip() and not line.startswith((" ", "#")):
            in_list = False
    return skips


def test_checkov_no_unexplained_failures(rendered: dict[str, list[dict]], tmp_path: Path):
    checkov = _tool("checkov")
    skips = _checkov_skips()
    assert set(yaml.safe_load(CHECKOV_CONFIG.read_text())["skip-check"]) == set(skips)
    for check, reason in skips.items():
        assert len(reason) > 20, f"{CHECKOV_CONFIG.name}: skip {check} needs a reason on its line"
    for name, docs in rendered.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    res = subprocess.run(
        [checkov, "-d", str(tmp_path), "--config-file", str(CHECKOV_CONFIG), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
        cwd=tmp_path,
    )
    assert res.stdout.strip(), f"checkov printed nothing (rc {res.returncode}):\n{res.stderr[-3000:]}"
    report = json.loads(res.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "checkov failures not explained in charts/w4s/.checkov.yaml:\n" + "\n".join(failed)
    summary = reports[0]["summary"]
    assert summary["passed"] > 100 and summary["parsing_errors"] == 0, summary


BUNDLED_MLFLOW = {
    "enabled": True,
    "postgresql": {"host": "postgres.db.svc", "existingSecret": "mlflow-db"},
    "s3": {"artifactsDestination": "s3://mlflow/w4s"},
}
BAD_VALUES = [
    ({"serve": {"port": "http"}}, "serve.port: Invalid type"),
    ({"serve": {"replicas": 3}}, "Additional property replicas is not allowed"),
    ({"schedule": {"cron": "0 3 * * 1"}}, "schedule.cron: Does not match pattern"),
    ({"schedule": {"cron": "run at three am on mondays"}}, "schedule.cron: Does not match pattern"),
    ({"schedule": {"cron": "0 0 25 * * 1"}}, "schedule.cron: Does not match pattern"),
    ({"schedule": {"cron": "0 0 3 * * 7"}}, "schedule.cron: Does not match pattern"),
    ({"schedule": {"pipeline": "nightly"}}, "schedule.pipeline"),
    ({"schedule": {"enabled": True}}, "kfp.host: String length must be greater than or equal to 1"),
    ({"sandbox": {"seccompProfile": {"type": "Localhost"}}}, "sandbox.seccompProfile.localhostProfile"),
    ({"sandbox": {"allowDegraded": "yes"}}, "sandbox.allowDegraded: Invalid type"),
    ({"networkPolicy": {"enabled": True}}, "networkPolicy.executor.cidrs: Array must have at least 1 items"),
    (
        {"networkPolicy": {"executor": {"cidrs": ["10.0.0.1"]}}},
        "networkPolicy.executor.cidrs.0: Does not match pattern",
    ),
    (
        {"networkPolicy": {"executor": {"cidrs": ["999.0.0.1/40"]}}},
        "networkPolicy.executor.cidrs.0: Does not match pattern",
    ),
    (
        {"networkPolicy": {"executor": {"peers": [{"podSelctor": {}}]}}},
        "Additional property podSelctor is not allowed",
    ),
    (
        {
            "kfp": {"host": "http://ml-pipeline.kubeflow.svc:8888"},
            "schedule": {"enabled": True},
            "networkPolicy": {"enabled": True, "executor": {"cidrs": ["203.0.113.10/32"]}},
        },
        "networkPolicy.kfp.cidrs: Array must have at least 1 items",
    ),
    ({"ingress": {"enabled": True, "hosts": []}}, "ingress.hosts: Array must have at least 1 items"),
    (
        {
            "ingress": {
                "hosts": [
                    {"host": "https://w4s.example.com/", "paths": [{"path": "/", "pathType": "Prefix"}]}
                ]
            }
        },
        "ingress.hosts.0.host: Does not match pattern",
    ),
    (
        {"mlflow": {"trackingUri": "https://mlflow.example.com", "server": BUNDLED_MLFLOW}},
        'mlflow.trackingUri: mlflow.trackingUri does not match: ""',
    ),
    (
        {"mlflow": {"existingSecret": "w4s-mlflow", "server": BUNDLED_MLFLOW}},
        'mlflow.existingSecret: mlflow.existingSecret does not match: ""',
    ),
    (
        {"serve": {"securityContext": {"readOnlyRootFilesystem": False}}},
        "serve.securityContext.readOnlyRootFilesystem",
    ),
    (
        {"serve": {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}},
        "serve.securityContext.capabilities.add",
    ),
    (
        {"serve": {"securityContext": {"readOnlyRootFS": True}}},
        "Additional property readOnlyRootFS is not allowed",
    ),
    (
        {"serve": {"podSecurityContext": {"runAsNonroot": True}}},
        "Additional property runAsNonroot is not allowed",
    ),
    ({"sandbox": {"procMount": "Unmasked"}}, "sandbox.hostUsers"),
    (
        {"apiKeys": {"existingSecret": ""}},
        "apiKeys.executorApiKey: String length must be greater than or equal to 1",
    ),
    ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    ({"executor": {"baseUrl": "api.openai.com"}}, "executor.baseUrl: Does not match pattern"),
    (
        {"mlflow": {"server": {"enabled": True}}},
        "mlflow.server.postgresql.host: String length must be greater",
    ),
    (
        {"podDisruptionBudget": {"minAvailable": "", "maxUnavailable": ""}},
        "podDisruptionBudget: Must validate one and only one schema",
    ),
    (
        {"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
        "podDisruptionBudget: Must validate one and only one schema",
    ),
    ({"serve": {"securityContext": {"runAsNonRoot": False}}}, "serve.securityContext.runAsNonRoot"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m.split(":")[0] for _, m in BAD_VALUES])
def test_schema_rejects_bad_values(helm: str, tmp_path: Path, values: dict, message: str):
    res = _template(helm, _values_file(tmp_path, "bad", values))
    assert res.returncode != 0, f"helm template accepted bad values {values}"
    assert "values don't meet the specifications of the schema" in res.stderr, res.stderr
    assert message in res.stderr, f"expected {message!r} in:\n{res.stderr}"


# Values the schema cannot judge alone (they compare two values); the templates refuse them by name.
REFUSED_BY_TEMPLATES = [
    (
        {"serve": {"replicaCount": 1}, "podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": ""}},
        "podDisruptionBudget.minAvailable 1 with 1 replica(s) would block every node drain",
    ),
    (
        {
            "autoscaling": {"enabled": True, "minReplicas": 2},
            "podDisruptionBudget": {"minAvailable": 2, "maxUnavailable": ""},
        },
        "podDisruptionBudget.minAvailable 2 with 2 replica(s) would block every node drain",
    ),
    (
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}},
        "autoscaling.minReplicas 5 is above autoscaling.maxReplicas 3",
    ),
    (
        {
            "executor": {"baseUrl": "http://203.0.113.10:8000/v1"},
            "networkPolicy": {"enabled": True, "executor": {"cidrs": ["203.0.113.10/32"]}},
        },
        "executor.baseUrl http://203.0.113.10:8000/v1 is on port 8000, which networkPolicy.executor.ports (443) does not open",
    ),
    (
        {
            "mlflow": {"trackingUri": "http://192.0.2.5"},
            "networkPolicy": {
                "enabled": True,
                "executor": {"cidrs": ["203.0.113.10/32"]},
                "mlflow": {"cidrs": ["192.0.2.0/28"]},
            },
        },
        "mlflow.trackingUri http://192.0.2.5 is on port 80, which networkPolicy.mlflow.ports (443, 5000) does not open",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"), REFUSED_BY_TEMPLATES, ids=[m.split(" ")[0] for _, m in REFUSED_BY_TEMPLATES]
)
def test_templates_refuse_inconsistent_values(helm: str, tmp_path: Path, values: dict, message: str):
    res = _template(helm, _values_file(tmp_path, "bad", values))
    assert res.returncode != 0, f"helm template accepted {values}"
    assert message in res.stderr, f"expected {message!r} in:\n{res.stderr}"


def test_values_annotated_for_every_key():
    """Every key of values.yaml has a `## @param` line (a map with one covers its children), and every
    @param names a real key."""
    text = (CHART / "values.yaml").read_text()
    params = set(re.findall(r"^\s*## @param (\S+) \S", text, re.MULTILINE))
    values = yaml.safe_load(text)
    missing = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in params:
                continue
            if isinstance(value, dict) and value:
                walk(value, path + ".")
            else:
                missing.append(path)

    walk(values, "")
    assert not missing, f"values.yaml keys without ## @param: {missing}"

    def exists(path: str) -> bool:
        node = values
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    assert not [p for p in params if not exists(p)], "## @param lines naming no key"
