"""Stage: W4S episodes for one task → trajectories (``Dataset``), the optimizer's report
(``Markdown``), its curve (``HTML``), its numbers (``Metrics``) and the whole run folder (``Artifact``,
what the register stage reads)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Metrics, Output

from w4s.pipelines import settings


@dsl.component(base_image=settings.IMAGE, install_kfp_package=False)
def collect_trajectories(
    task: str,
    episode: int,
    meta_model: str,
    executor_model: str,
    trajectories: Output[Dataset],
    run_folder: Output[Artifact],
    report: Output[Markdown],
    curve: Output[HTML],
    metrics: Output[Metrics],
    base_model: str = "",
    meta_base_url: str = "",
    executor_base_url: str = "",
    turns: int = 0,
    candidates: int = 0,
    validation_limit: int = 0,
    test_limit: int = 0,
    meta_max_tokens: int = 0,
    executor_max_tokens: int = 0,
    baselines: list = [],
    repairs: int = -1,
    budget_usd: float = 0.0,
    optimize_config: dict = {},
    meta_config: dict = {},
    executor_config: dict = {},
    sandbox_config: dict = {},
    data_dir: str = "",
    tracking_uri: str = "",
    register: bool = False,
):
    """W4S episodes for one task with a meta-agent (a model path, an MLflow reference, or an
    OpenAI-compatible endpoint's model) and an executor."""
    from w4s.pipelines.stages.collect_trajectories import run

    values = run(
        task=task,
        episode=episode,
        meta_model=meta_model,
        executor_model=executor_model,
        run_dir=run_folder.path,
        trajectories=trajectories.path,
        report=report.path,
        curve=curve.path,
        base_model=base_model,
        meta_base_url=meta_base_url,
        executor_base_url=executor_base_url,
        turns=turns,
        candidates=candidates,
        validation_limit=validation_limit,
        test_limit=test_limit,
        meta_max_tokens=meta_max_tokens,
        executor_max_tokens=executor_max_tokens,
        baselines=baselines,
        repairs=repairs,
        budget_usd=budget_usd,
        optimize_config=optimize_config,
        meta_config=meta_config,
        executor_config=executor_config,
        sandbox_config=sandbox_config,
        data_dir=data_dir,
        tracking_uri=tracking_uri,
        register=register,
    )
    for name, value in values.items():
        metrics.log_metric(name, value)
