"""Runs recorded in MLflow (real servers): what evaluate and optimize log, traces without keys, the
embedded store, and a store that is down at the start or goes down mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import mlflow
import pytest

from tests.conftest import REPO, ScriptedServer
from tests.optimizer.scenario import script as optimizer_script
from tests.servers.mlflow_server import free_port
from w4s import api
from w4s.errors import InfrastructureError
from w4s.evaluation import EvaluationConfig
from w4s.llm.config import EndpointConfig
from w4s.tracking.store import TrackingConfig

SECRET = "sk-w4s-test-SECRET-never-in-a-trace"


def w4s(*args, env: dict, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "w4s.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def runs_of(client, experiment: str, **tags):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    runs = client.search_runs([found.experiment_id], max_results=100)
    return [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]


def test_evaluate_is_recorded_with_params_tags_metrics_artifacts_and_traces(
    mlflow_server, data_dir, monkeypatch
):
    monkeypatch.setenv("W4S_EXECUTOR_API_KEY", SECRET)
    server = ScriptedServer({"default": "The answer is 42."})
    try:
        result = api.evaluate(
            "cot",
            api.load_task("gsm8k", data_dir),
            EvaluationConfig(limit=20, concurrency=4),
            EndpointConfig(base_url=server.url),
            tracking=TrackingConfig(tracking_uri=mlflow_server.url, trace_sample_rate=1.0),
        )
    finally:
        server.stop()
    client = mlflow_server.client()
    (run,) = runs_of(client, "w4s/gsm8k", **{"w4s.workflow": "math/cot", "w4s.samples": "20"})
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "evaluate math/cot on gsm8k/validation"
    params = run.data.params
    assert params["evaluation.limit"] == "20" and params["executor.model"] == "gpt-4o-mini"
    tags = run.data.tags
    assert tags["w4s.executor"] == "gpt-4o-mini" and tags["w4s.split"] == "validation"
    assert tags["w4s.version"] and tags["w4s.complete"] == "true" and len(tags["w4s.samples_sha256"]) == 64
    metrics = run.data.metrics
    assert metrics["score"] == pytest.approx(result.score) and metrics["llm_calls"] == 20
    assert metrics["prompt_tokens"] > 0 and "wall_seconds" in metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["evaluation.json"]
    stored = json.loads(open(client.download_artifacts(run.info.run_id, "evaluation.json")).read())
    assert stored == result.to_dict()

    traces = _traces(mlflow_server.url, run)
    assert len(traces) == 20  # rate 1.0: every sample
    trace = traces[0]
    kinds = [span.span_type for span in trace.data.spans]
    assert kinds[0] == "CHAIN" and "LLM" in kinds
    llm = next(span for span in trace.data.spans if span.span_type == "LLM")
    assert llm.inputs["messages"][-1]["role"] == "user" and llm.outputs["replies"] == ["The answer is 42."]
    assert llm.attributes["prompt_tokens"] > 0 and "cached_choices" in llm.attributes
    everything = json.dumps([t.to_dict() for t in traces])
    assert SECRET not in everything and "Authorization" not in everything


def _traces(uri: str, run):
    from w4s.tracking.store import fluent_uri

    with fluent_uri(uri):
        return mlflow.search_traces(
            locations=[run.info.experiment_id], run_id=run.info.run_id, return_type="list"
        )


def test_the_default_trace_rate_samples_a_few(mlflow_server, data_dir):
    server = ScriptedServer({"default": "The answer is 42."})
    try:
        api.evaluate(
            "cot",
            api.load_task("gsm8k", data_dir),
            EvaluationConfig(split="test", limit=200, concurrency=8),
            EndpointConfig(base_url=server.url, api_key_env="NONE_SET"),
            tracking=TrackingConfig(tracking_uri=mlflow_server.url),
        )
    finally:
        server.stop()
    (run,) = runs_of(mlflow_server.client(), "w4s/gsm8k", **{"w4s.samples": "200", "w4s.split": "test"})
    traces = _traces(mlflow_server.url, run)
    assert 2 <= len(traces) <= 25  # 5% of 200, chosen by sample id


def test_optimize_records_turns_candidates_and_its_files_and_a_resume_continues_the_run(
    mlflow_server, data_dir, tmp_path
):
    server = ScriptedServer(optimizer_script(data_dir, 6))
    env = {"W4S_DATA_DIR": str(data_dir), "MLFLOW_TRACKING_URI": mlflow_server.url}
    common = [
        "optimize",
        "--task",
        "gsm8k",
        "--candidates",
        "5",
        "--validation-limit",
        "6",
        "--test-limit",
        "6",
    ]
    common += ["--sandbox-timeout-s", "1.5", "--out", str(tmp_path / "run")]
    common += ["--meta-base-url", server.url, "--executor-base-url", server.url]
    try:
        first = w4s(*common, "--turns", "1", env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        second = w4s(*common, "--turns", "2", "--resume", env=env)
        assert second.returncode == 0, second.stderr[-3000:]
    finally:
        server.stop()
    record = json.loads((tmp_path / "run" / "mlflow.json").read_text())
    client = mlflow_server.client()
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["w4s.kind"] == "optimize"
    folder = str((tmp_path / "run").resolve())
    mine = [
        r
        for r in runs_of(client, "w4s/gsm8k", **{"w4s.kind": "optimize"})
        if r.data.params.get("out_dir") == folder
    ]
    assert [r.info.run_id for r in mine] == [run.info.run_id]  # the resume continued it
    best = client.get_metric_history(run.info.run_id, "best_so_far")
    assert [m.step for m in best] == [1, 2]  # one per turn, the resumed turn in the same run
    assert len(client.get_metric_history(run.info.run_id, "candidate_reward")) == 10
    assert run.data.metrics["test_score"] == pytest.approx(1.0)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best_workflow.py", "report.json", "report.md", "trajectories.jsonl"} <= names
    assert f"open {mlflow_server.url}" in second.stderr


def test_embedded_store_without_a_server_and_the_ui_command(mlflow_embedded, data_dir, executor_server):
    executor_server.script(default="The answer is 42.")
    env = {"W4S_DATA_DIR": str(data_dir), "W4S_EXECUTOR_API_KEY": "k"}
    done = w4s(
        "evaluate",
        "cot",
        "--task",
        "gsm8k",
        "--limit",
        "5",
        "--executor-base-url",
        executor_server.url,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"mlflow ui --backend-store-uri {mlflow_embedded.tracking_uri}" in done.stderr
    (run,) = runs_of(mlflow_embedded.client(), "w4s/gsm8k")
    artifact = mlflow_embedded.client().download_artifacts(run.info.run_id, "evaluation.json")
    assert str(mlflow_embedded.artifact_root) in artifact or os.path.isfile(artifact)
    assert list((mlflow_embedded.artifact_root).rglob("evaluation.json"))

    off = w4s(
        "evaluate",
        "cot",
        "--task",
        "gsm8k",
        "--limit",
        "5",
        "--executor-base-url",
        executor_server.url,
        "--no-tracking",
        env=env,
    )
    assert off.returncode == 0 and "mlflow ui" not in off.stderr
    assert len(runs_of(mlflow_embedded.client(), "w4s/gsm8k")) == 1


def test_a_store_that_is_down_at_the_start_is_one_line(data_dir, executor_server):
    uri = f"http://127.0.0.1:{free_port()}"
    env = {"W4S_DATA_DIR": str(data_dir), "W4S_EXECUTOR_API_KEY": "k", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    done = w4s(
        "evaluate",
        "cot",
        "--task",
        "gsm8k",
        "--limit",
        "3",
        "--executor-base-url",
        executor_server.url,
        "--tracking-uri",
        uri,
        env=env,
    )
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and uri in lines[0] and "--no-tracking" in lines[0] and "Traceback" not in done.stderr
    )
    assert executor_server.stats()["requests"] == 0  # refused before any work
    with pytest.raises(InfrastructureError, match="--no-tracking"):
        api.evaluate("cot", "gsm8k", tracking=TrackingConfig(tracking_uri=uri), data_dir=data_dir)


def test_a_store_that_goes_down_mid_run_loses_only_the_record(start_mlflow_server, data_dir, tmp_path):
    server = start_mlflow_server()
    executor = ScriptedServer({"default": "The answer is 42.", "latency_ms": 30})
    out = tmp_path / "evaluation.json"
    env = {"W4S_DATA_DIR": str(data_dir), "W4S_EXECUTOR_API_KEY": "k", "MLFLOW_TRACKING_URI": server.url}
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "w4s.cli",
                "evaluate",
                "cot",
                "--task",
                "gsm8k",
                "--split",
                "test",
                "--limit",
                "300",
                "--concurrency",
                "4",
                "--executor-base-url",
                executor.url,
                "--json",
                str(out),
            ],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        client = server.client()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the run exists: tracking has begun
            found = client.get_experiment_by_name("w4s/gsm8k")
            if found is not None and client.search_runs([found.experiment_id]):
                break
            time.sleep(0.2)
        server.stop()
        _, stderr = proc.communicate(timeout=300)
    finally:
        executor.stop()
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    result = json.loads(out.read_text())
    assert result["complete"] and result["samples_total"] == 300  # the run's own output is whole
    warning = [line for line in stderr.splitlines() if "stopped answering" in line]
    assert len(warning) == 1 and server.url in warning[0] and "not logged" in warning[0]


def test_the_process_doing_the_work_never_loads_mlflow_and_metrics_go_in_batches(mlflow_server, data_dir):
    """MLflow is imported (a second of CPU, about 140 MiB) only by the recorder process; the work's
    process sends it events through a pipe."""
    server = ScriptedServer({"default": "The answer is 42."})
    code = (
        "import sys, w4s\n"
        "from w4s.llm.config import EndpointConfig\n"
        f"w4s.evaluate('cot', w4s.load_task('gsm8k', {str(data_dir)!r}), w4s.EvaluationConfig(limit=120),\n"
        f"    EndpointConfig(base_url={server.url!r}, api_key_env='NONE_SET'),\n"
        f"    tracking=w4s.TrackingConfig(tracking_uri={mlflow_server.url!r}, trace_sample_rate=0.1))\n"
        "print('mlflow' in sys.modules)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "False"
    (run,) = runs_of(mlflow_server.client(), "w4s/gsm8k", **{"w4s.samples": "120"})
    history = mlflow_server.client().get_metric_history(run.info.run_id, "score_so_far")
    assert [m.step for m in history] == [50, 100, 120]  # progress every 50 samples, not every sample


class _BrokenRunner:
    """A workflow runner whose start fails the way a lost sandbox host does."""

    def __init__(self, *args):
        pass

    async def __aenter__(self):
        raise InfrastructureError("the sandbox host went away")

    async def __aexit__(self, *exc):
        return None


def test_a_run_that_raises_is_marked_failed_and_leaves_mlflow_as_it_was(mlflow_embedded, data_dir):
    with pytest.raises(InfrastructureError, match="went away"):
        api.evaluate(
            "cot",
            api.load_task("gsm8k", data_dir),
            EvaluationConfig(limit=3),
            EndpointConfig(base_url="http://127.0.0.1:9/v1", api_key_env="NONE_SET"),
            tracking=TrackingConfig(trace_sample_rate=1.0),
            runner=_BrokenRunner,
        )
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the process-wide setting is put back
    assert mlflow.get_tracking_uri() != mlflow_embedded.tracking_uri
    (run,) = runs_of(mlflow_embedded.client(), "w4s/gsm8k")
    assert run.info.status == "FAILED"
