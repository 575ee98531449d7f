"""The pipelines: compiled specs (deterministic, loadable, GPU settings, secrets, caching, retries),
bad input, and whole runs under kfp.local through the CLI, with the scripted OpenAI-compatible server
as meta-agent and executor (the only fake) and real MLflow (the embedded store)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, ScriptedServer
from tests.optimizer.scenario import script as optimizer_script
from tests.training import tiny
from w4s.tracking import registry as reg
from w4s.tracking.registry import Registry

NAMES = ("rlao-training", "workflow-optimization")
LIMIT = 4


def w4s(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "w4s.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


def documents(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


# --- compiled specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_compiling_twice_gives_the_same_bytes_and_kfp_loads_it_back(name, tmp_path):
    from kfp import components

    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    for seed, path in enumerate((first, second)):  # another hash seed: nothing may follow set or dict order
        made = w4s("pipeline", "compile", name, "--out", str(path), env={"PYTHONHASHSEED": str(seed + 1)})
        assert made.returncode == 0, made.stderr[-3000:]
    assert first.read_bytes() == second.read_bytes()
    loaded = components.load_component_from_file(str(first))
    assert loaded.name == name
    assert {"tasks", "executor_model", "tracking_uri"} <= set(loaded.component_spec.inputs)


@pytest.mark.parametrize("name", NAMES)
def test_the_committed_yaml_is_what_compile_writes(name, tmp_path):
    """pipelines/<name>.yaml is never hand-edited: regenerate it with `w4s pipeline compile`."""
    env = {
        key: ""
        for key in ("W4S_IMAGE", "W4S_GPU_IMAGE", "W4S_IMAGE_REGISTRY", "W4S_SECRET", "W4S_CHECKPOINT_PVC")
    }
    env = {k: v for k, v in os.environ.items() if k not in env}
    made = subprocess.run(
        [sys.executable, "-m", "w4s.cli", "pipeline", "compile", name, "--out", str(tmp_path / "now.yaml")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    committed = REPO / "pipelines" / f"{name}.yaml"
    assert committed.read_bytes() == (tmp_path / "now.yaml").read_bytes(), (
        f"{committed} is stale: run w4s pipeline compile {name} --out {committed.relative_to(REPO)}"
    )


def test_the_training_task_asks_for_gpus_and_keys_come_from_secrets(tmp_path):
    path = tmp_path / "rlao.yaml"
    assert w4s("pipeline", "compile", "rlao-training", "--out", str(path)).returncode == 0
    spec, platform = documents(path)
    executors = spec["deploymentSpec"]["executors"]
    train = next(e for name, e in executors.items() if name.startswith("exec-train-rwr"))
    resources = train["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "{{$.inputs.parameters['pipelinechannel--gpu_type']}}"
    assert (
        resources["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpu_count']}}"
    )
    assert resources["resourceMemoryRequest"].endswith("train_memory']}}")
    assert resources["resourceCpuRequest"].endswith("train_cpu']}}")
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train_k8s = next(e for name, e in kubernetes.items() if name.startswith("exec-train-rwr"))
    assert train_k8s["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("node_selector")
    assert train_k8s["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("tolerations")
    collect = next(e for name, e in kubernetes.items() if name.startswith("exec-collect-trajectories"))
    by_secret = {s["secretName"]: s for s in collect["secretAsEnv"]}
    keys = {k["envVar"]: k["secretKey"] for k in by_secret["w4s-api-keys"]["keyToEnv"]}
    assert keys == {"W4S_EXECUTOR_API_KEY": "executor-api-key", "W4S_META_API_KEY": "meta-api-key"}
    assert "w4s-mlflow" in by_secret
    # no parameter carries a key; nothing secret-looking has a default value
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert not [
        name for name in inputs if "key" in name or "secret" in name or "token" in name.replace("tokens", "")
    ]


def test_live_tasks_are_uncached_and_retried_deterministic_ones_cached(tmp_path):
    path = tmp_path / "rlao.yaml"
    assert w4s("pipeline", "compile", "rlao-training", "--out", str(path)).returncode == 0
    spec = documents(path)[0]
    tasks = {}

    def walk(dag: dict) -> None:
        for name, task in dag.get("tasks", {}).items():
            tasks[name] = task

    for component in spec["components"].values():
        walk(component.get("dag", {}))
    walk(spec["root"]["dag"])
    for live in ("collect-trajectories", "benchmark", "register-meta-agent"):
        assert tasks[live]["cachingOptions"] == {}, live  # enableCache absent: off
        assert tasks[live]["retryPolicy"]["maxRetryCount"] == 3, live
    assert tasks["compute-rewards"]["cachingOptions"] == {"enableCache": True}
    assert tasks["train-rwr"]["cachingOptions"] == {"enableCache": True}
    assert tasks["train-rwr"]["retryPolicy"]["maxRetryCount"] == 3


# --- bad input: one line, before anything runs ----------------------------------------------------------


def test_bad_input_is_one_line(tmp_path):
    unknown = w4s("pipeline", "compile", "nope", "--out", str(tmp_path / "x.yaml"))
    assert unknown.returncode == 2 and "rlao-training" in one_line(unknown)
    assert not (tmp_path / "x.yaml").exists()
    key = w4s(
        "pipeline", "run", "rlao-training", "--local", "--param", "bogus=1", "--root", str(tmp_path / "r")
    )
    assert key.returncode == 2 and "bogus" in one_line(key) and "episodes" in one_line(key)
    typed = w4s(
        "pipeline", "run", "rlao-training", "--local", "--param", "turns=two", "--root", str(tmp_path / "r")
    )
    assert typed.returncode == 2 and "turns" in one_line(typed) and "integer" in one_line(typed)
    shaped = w4s(
        "pipeline", "run", "rlao-training", "--local", "--param", "turns", "--root", str(tmp_path / "r")
    )
    assert shaped.returncode == 2 and "NAME=VALUE" in one_line(shaped)
    secret = w4s("pipeline", "run", "workflow-optimization", "--local", "--param", "api_key=sk-123456789")
    assert secret.returncode == 2 and "secret" in one_line(secret) and "sk-123456789" not in secret.stderr
    assert not (tmp_path / "r").exists()  # nothing ran
    cron = w4s(
        "pipeline", "schedule", "rlao-training", "--host", "http://127.0.0.1:9", "--cron", "every monday"
    )
    assert cron.returncode == 2 and "cron" in one_line(cron)


# --- whole runs under kfp.local ---------------------------------------------------------------------------


def scripted_params(server: ScriptedServer) -> list[str]:
    return [
        "--param", "meta_model=gpt-4o-mini", "--param", f"meta_base_url={server.url}",
        "--param", "executor_model=gpt-4o-mini", "--param", f"executor_base_url={server.url}",
        "--param", f"validation_limit={LIMIT}", "--param", f"test_limit={LIMIT}",
        "--param", 'sandbox_config={"timeout_s": 1.5}',
    ]  # fmt: skip


def pipeline_runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("w4s/pipelines")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_workflow_optimization_runs_locally_and_registers_the_champion(data_dir, tmp_path):
    server = ScriptedServer(optimizer_script(data_dir, LIMIT))
    home = tmp_path / "home"
    env = {
        "W4S_HOME": str(home),
        "W4S_DATA_DIR": str(data_dir),
        "W4S_EXECUTOR_API_KEY": "k",
        "W4S_META_API_KEY": "k",
    }
    try:
        ran = w4s(
            "pipeline", "run", "workflow-optimization", "--local", "--root", str(tmp_path / "root"),
            "--json", str(tmp_path / "summary.json"), "--param", "turns=2", "--param", "candidates=5",
            *scripted_params(server), env=env,
        )  # fmt: skip
    finally:
        server.stop()
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    uri = summary["mlflow"]["tracking_uri"]
    assert uri == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    assert summary["mlflow"]["registry"]["w4s-workflow-gsm8k"]["champion"] == "1"
    assert summary["mlflow"]["pipeline_run"]["state"] == "SUCCEEDED"
    assert (
        "w4s-workflow-gsm8k: latest 1, champion 1" in ran.stdout
        and "mlflow ui --backend-store-uri" in ran.stdout
    )
    champion = Registry(uri).champion("w4s-workflow-gsm8k")
    assert float(champion.tags[reg.TAG_TEST_SCORE]) == 1.0  # the scripted meta-agent's GOOD workflow
    assert champion.tags["w4s.promotion.decision"] == "promoted"
    (record,) = pipeline_runs(uri)
    assert record.data.tags["w4s.state"] == "SUCCEEDED" and record.info.status == "FINISHED"
    # each stage's outputs: the run folder, trajectories, report, curve and the decision table
    root = Path(summary["root"])
    assert any(root.rglob("trajectories")) and any(root.rglob("report")) and any(root.rglob("curve"))
    decision = next(p for p in root.rglob("decision") if p.is_file()).read_text()
    assert "w4s-workflow-gsm8k" in decision and "promoted over" in decision
    # progress shows in plain logs: each stage's lines reach the user
    assert "collect gsm8k episode 0" in ran.stdout + ran.stderr


def test_a_failed_run_is_one_line_and_recorded_in_mlflow(data_dir, tmp_path):
    home = tmp_path / "home"
    env = {
        "W4S_HOME": str(home),
        "W4S_DATA_DIR": str(data_dir),
        "W4S_EXECUTOR_API_KEY": "k",
        "W4S_META_API_KEY": "k",
    }
    closed = "http://127.0.0.1:9/v1"  # nothing listens there
    ran = w4s(
        "pipeline", "run", "workflow-optimization", "--local", "--root", str(tmp_path / "root"),
        "--param", "meta_model=gpt-4o-mini", "--param", f"meta_base_url={closed}",
        "--param", "executor_model=gpt-4o-mini", "--param", f"executor_base_url={closed}",
        "--param", f"validation_limit={LIMIT}", env=env,
    )  # fmt: skip
    assert ran.returncode == 1
    last = ran.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("w4s: error: pipeline workflow-optimization failed")
        and "collect-trajectories" in last
    )
    (record,) = pipeline_runs(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    assert record.data.tags["w4s.state"] == "FAILED" and record.info.status == "FAILED"


def test_rlao_training_runs_locally_end_to_end(data_dir, tmp_path):
    """Collect with the scripted meta-agent, merge, train a tiny real model, benchmark it (it writes
    nothing that runs: the best shipped baseline stands), register both with lineage, promote."""
    base = tiny.save_base(tmp_path / "base")
    server = ScriptedServer(optimizer_script(data_dir, LIMIT))
    home = tmp_path / "home"
    env = {
        "W4S_HOME": str(home),
        "W4S_DATA_DIR": str(data_dir),
        "W4S_EXECUTOR_API_KEY": "k",
        "W4S_META_API_KEY": "k",
    }
    try:
        ran = w4s(
            "pipeline", "run", "rlao-training", "--local", "--root", str(tmp_path / "root"),
            "--json", str(tmp_path / "summary.json"), "--param", "turns=2", "--param", "candidates=5",
            "--param", f"base_model={base}", "--param", "max_steps=2", "--param", "meta_max_tokens=16",
            *scripted_params(server), env=env, timeout=1200,
        )  # fmt: skip
    finally:
        server.stop()
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-4000:]
    uri = json.loads((tmp_path / "summary.json").read_text())["mlflow"]["tracking_uri"]
    registry = Registry(uri)
    meta = registry.version(f"{reg.META_AGENT}@1")
    workflow = registry.version("w4s-workflow-gsm8k@1")
    assert workflow.tags[reg.TAG_META_VERSION] == "1"  # lineage: written by the checkpoint just trained
    assert meta.tags.get("w4s.promotion.decision") in {"promoted", "rejected"}
    root = Path(tmp_path / "root")
    histogram = next(p for p in root.rglob("histogram") if p.is_file()).read_text()
    assert "data:image/png;base64," in histogram
    table = next(p for p in root.rglob("table") if p.is_file()).read_text()
    assert "## Benchmark: gsm8k" in table and "baseline" in table
    model = next(p for p in root.rglob("training_summary.json"))
    assert json.loads(model.read_text())["steps"] == 2
    (record,) = pipeline_runs(uri)
    assert record.data.tags["w4s.state"] == "SUCCEEDED"


# --- the CLI against the scripted KFP API server ------------------------------------------------------------


def test_submit_uploads_the_compiled_pipeline_and_schedule_carries_the_cron(kfp_server, tmp_path):
    from tests.pipelines.test_client import body, sent, uploaded_file

    compiled = tmp_path / "rlao.yaml"
    assert w4s("pipeline", "compile", "rlao-training", "--out", str(compiled)).returncode == 0
    submitted = w4s(
        "pipeline", "submit", "rlao-training", "--host", kfp_server.url, "--experiment", "nightly",
        "--param", "episodes=4", "--param", "tasks=[\"gsm8k\",\"svamp\"]",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    (upload,) = sent(kfp_server, "POST", "/pipelines/upload")
    assert list(yaml.safe_load_all(uploaded_file(upload))) == documents(compiled)  # spec + platform spec
    (run,) = sent(kfp_server, "POST", "/runs")
    assert body(run)["runtime_config"]["parameters"] == {"episodes": 4, "tasks": ["gsm8k", "svamp"]}
    assert json.loads(submitted.stdout)["run_id"]

    scheduled = w4s(
        "pipeline", "schedule", "rlao-training", "--host", kfp_server.url, "--cron", "0 0 3 * * 1",
        "--max-concurrency", "1", "--no-catchup",
    )  # fmt: skip
    assert scheduled.returncode == 0, scheduled.stderr[-3000:]
    (recurring,) = sent(kfp_server, "POST", "/recurringruns")
    recurring = body(recurring)
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert int(recurring["max_concurrency"]) == 1 and recurring["no_catchup"] is True
    listed = w4s("pipeline", "runs", "--host", kfp_server.url, "--json", str(tmp_path / "runs.json"))
    assert listed.returncode == 0 and len(json.loads((tmp_path / "runs.json").read_text())) == 1
    unreachable = w4s("pipeline", "submit", "rlao-training", "--host", "http://127.0.0.1:9")
    assert unreachable.returncode == 3 and "127.0.0.1:9" in one_line(unreachable)


# --- a component on its own under kfp.local -----------------------------------------------------------------


def test_evaluate_workflow_component_under_kfp_local(data_dir, tmp_path, monkeypatch):
    import kfp.local

    from w4s.pipelines.components import evaluate_workflow

    server = ScriptedServer({"default": "The answer is 42."})
    monkeypatch.setenv("W4S_EXECUTOR_API_KEY", "k")
    monkeypatch.setenv("W4S_HOME", str(tmp_path / "home"))
    try:
        kfp.local.init(
            runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root")
        )
        task = evaluate_workflow(
            task="gsm8k",
            executor_model="gpt-4o-mini",
            workflow="cot",
            limit=LIMIT,
            executor_base_url=server.url,
            data_dir=str(data_dir),
        )
    finally:
        server.stop()
    metrics = task.outputs["metrics"].metadata
    assert metrics["samples"] == LIMIT and metrics["llm_calls"] == LIMIT and 0 <= metrics["score"] <= 1
    results = json.loads(Path(task.outputs["results"].path).read_text())
    assert results["task"] == "gsm8k" and len(results["samples"]) == LIMIT
