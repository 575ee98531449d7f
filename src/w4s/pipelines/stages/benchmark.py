"""Stage: the trained meta-agent writes workflows for one held-out task (an optimizer episode on
its validation split), the best is scored once on the test split → ``Metrics`` and a comparison
table (``Markdown``) against the task's shipped baselines and its champion workflow; the run folder
(``Artifact``) is what the register stage registers."""

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def champion_score(task: str, tracking_uri: str = "") -> tuple[str, float | None]:
    """The champion workflow of ``task`` and its recorded test score, where there is one."""
    from w4s import api
    from w4s.errors import ConfigError
    from w4s.pipelines import params
    from w4s.tracking import registry as reg

    registry = api.registry_of(params.tracking(tracking_uri))
    try:
        champion = registry.champion(reg.workflow_model_name(task))
    except ConfigError:  # no workflow of this task is registered yet
        return "none yet", None
    if champion is None:
        return "none yet", None
    score = (champion.tags or {}).get(reg.TAG_TEST_SCORE)
    return f"version {champion.version}", None if score is None else float(score)


def run(
    *,
    model: str,
    task: str,
    executor_model: str,
    run_dir: str,
    table: str,
    executor_base_url: str = "",
    turns: int = 1,
    candidates: int = 1,
    validation_limit: int = 0,
    test_limit: int = 0,
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
) -> dict:
    """``model`` is a training output folder (``model/`` inside) or a model folder."""
    from w4s.pipelines.params import component_logging

    component_logging()
    from w4s.pipelines.stages import collect_trajectories

    folder = Path(model)
    if (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    scratch = Path(run_dir).parent / f"{Path(run_dir).name}-files"
    scratch.mkdir(parents=True, exist_ok=True)
    values = collect_trajectories.run(
        task=task,
        episode=0,
        meta_model=f"local:{folder}",
        executor_model=executor_model,
        run_dir=run_dir,
        trajectories=str(scratch / "trajectories.jsonl"),
        report=str(scratch / "report.md"),
        curve=str(scratch / "curve.html"),
        executor_base_url=executor_base_url,
        turns=turns,
        candidates=candidates,
        validation_limit=validation_limit,
        test_limit=test_limit,
        meta_max_tokens=meta_max_tokens,
        executor_max_tokens=executor_max_tokens,
        baselines=baselines,
        repairs=repairs,
        optimize_config=optimize_config,
        meta_config=meta_config,
        executor_config=executor_config,
        sandbox_config=sandbox_config,
        data_dir=data_dir,
        tracking_uri=tracking_uri,
    )
    champion, champion_test = champion_score(task, tracking_uri)
    baselines = {k.removeprefix("baseline_"): v for k, v in values.items() if k.startswith("baseline_")}
    rows = [
        "| workflow | validation | test |",
        "|---|---|---|",
        f"| written by the trained meta-agent | {_shown(values.get('best_valid_score'))} | "
        f"{_shown(values.get('best_test_score'))} |",
    ]
    rows += [f"| baseline {name} | {_shown(score)} |  |" for name, score in sorted(baselines.items())]
    rows.append(f"| champion ({champion}) |  | {_shown(champion_test)} |")
    Path(table).write_text(f"## Benchmark: {task}\n\n" + "\n".join(rows) + "\n")
    result = {
        "test_score": values.get("best_test_score", 0.0),
        "valid_score": values.get("best_valid_score", 0.0),
    }
    if champion_test is not None:
        result["champion_test_score"] = champion_test
    log.info("benchmark %s: %s", task, ", ".join(f"{k} {v:g}" for k, v in result.items()))
    return result


def _shown(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
