"""Stage: W4S episodes for one task → trajectories (``Dataset``), the optimizer's report
(``Markdown``), its curve (``HTML``), its numbers (``Metrics``) and the whole run folder (``Artifact``,
what the register stage reads)."""

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def run(
    *,
    task: str,
    episode: int,
    meta_model: str,
    executor_model: str,
    run_dir: str,
    trajectories: str,
    report: str,
    curve: str,
    base_model: str = "",
    meta_base_url: str = "",
    executor_base_url: str = "",
    turns: int = 0,
    candidates: int = 0,
    validation_limit: int = 0,
    test_limit: int = 0,
    budget_usd: float = 0.0,
    meta_max_tokens: int = 0,
    executor_max_tokens: int = 0,
    baselines: list | None = None,
    repairs: int = -1,
    optimize_config: dict | None = None,
    meta_config: dict | None = None,
    executor_config: dict | None = None,
    sandbox_config: dict | None = None,
    data_dir: str = "",
    tracking_uri: str = "",
    register: bool = False,
) -> dict:
    """One episode of the optimizer (``w4s.optimize``); returns the metrics. Zero or empty values keep
    the stage's default. ``meta_model`` may be a registry reference that names nothing yet (the
    first run): then the episode starts from ``base_model``."""
    from w4s.pipelines.params import component_logging

    component_logging()
    from w4s import api
    from w4s.optimizer.loop import OptimizeConfig
    from w4s.pipelines import params
    from w4s.sandbox.config import SandboxConfig

    if "/" in task:  # a plan item, TASK/EPISODE (plan_episodes)
        task, _, number = task.partition("/")
        episode = int(number)
    model, why = params.starting_meta_agent(meta_model, base_model, tracking_uri)
    log.info(
        "collect %s episode %d: meta-agent %s (%s), executor %s", task, episode, model, why, executor_model
    )
    config = params.config(
        OptimizeConfig,
        optimize_config,
        episode=episode,
        turns=turns or None,
        candidates=candidates or None,
        validation_limit=validation_limit or None,
        test_limit=test_limit or None,
        budget_usd=budget_usd or None,
        meta_max_tokens=meta_max_tokens or None,
        baselines=list(baselines) if baselines else None,
        repairs=repairs if repairs >= 0 else None,
    )
    result = api.optimize(
        task,
        config,
        out_dir=run_dir,
        meta=params.endpoint(
            model, meta_base_url, meta_config, max_completion_tokens=meta_max_tokens or None
        ),
        executor=params.endpoint(
            executor_model,
            executor_base_url,
            executor_config,
            max_completion_tokens=executor_max_tokens or None,
        ),
        sandbox=params.config(SandboxConfig, sandbox_config),
        data_dir=data_dir or None,
        tracking=params.tracking(tracking_uri, register=register),
    )
    shutil.copyfile(result.paths.trajectories, trajectories)
    shutil.copyfile(Path(run_dir) / "report.md", report)
    picture = Path(run_dir) / "curve.png"
    if picture.is_file():
        Path(curve).write_text(
            params.picture_html(picture, f"{task} episode {episode}: best so far per turn")
        )
    else:
        Path(curve).write_text("<!doctype html><p>no curve (matplotlib is not installed)</p>\n")
    metrics = {
        "candidates": float(sum(len(turn.candidates) for turn in result.turns)),
        "turns": float(len(result.turns)),
        "executor_cost_usd": float(result.usage.get("executor", {}).get("cost_usd", 0.0)),
    }
    if result.best is not None:
        metrics["best_valid_score"] = float(result.best.valid_score)
        if result.best.test_score is not None:
            metrics["best_test_score"] = float(result.best.test_score)
    for name, score in (result.baselines or {}).items():
        metrics[f"baseline_{name}"] = float(score)
    log.info("collect %s episode %d: %s", task, episode, ", ".join(f"{k} {v:g}" for k, v in metrics.items()))
    return metrics
