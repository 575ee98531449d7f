"""Stage: a workflow (a file artifact, a shipped workflow's name, or an ``mlflow:`` reference) on a
split of a task, in the sandbox inside the container → ``Metrics`` and the per-sample evaluation
JSON (``Dataset``)."""

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run(
    *,
    workflow: str,
    task: str,
    executor_model: str,
    results: str,
    split: str = "test",
    limit: int = 0,
    executor_base_url: str = "",
    evaluation_config: dict | None = None,
    executor_config: dict | None = None,
    sandbox_config: dict | None = None,
    data_dir: str = "",
    tracking_uri: str = "",
) -> dict:
    """``w4s.evaluate``; writes the evaluation JSON to ``results`` and returns the metrics."""
    from w4s.pipelines.params import component_logging

    component_logging()
    from w4s import api
    from w4s.evaluation import EvaluationConfig
    from w4s.pipelines import params
    from w4s.sandbox.config import SandboxConfig

    tracking = params.tracking(tracking_uri)
    loaded = api.load_workflow(workflow, task, tracking=tracking)
    result = api.evaluate(
        loaded,
        task,
        params.config(EvaluationConfig, evaluation_config, split=split, limit=limit or None),
        params.endpoint(executor_model, executor_base_url, executor_config),
        params.config(SandboxConfig, sandbox_config),
        data_dir=data_dir or None,
        tracking=tracking,
    )
    data = result.to_dict()
    Path(results).write_text(json.dumps(data, indent=2) + "\n")
    usage = data.get("usage", {})
    values = {
        "score": float(result.score),
        "samples": float(len(result.samples)),
        "failed": float(sum(1 for s in result.samples if s.error)),
        "llm_calls": float(usage.get("llm_calls", 0)),
        "cost_usd": float(usage.get("cost_usd", 0.0)),
        "wall_seconds": float(result.wall_seconds),
    }
    log.info(
        "evaluate %s on %s/%s: score %.4f over %d samples",
        workflow,
        task,
        split,
        result.score,
        len(result.samples),
    )
    return values
