"""Stage: the trained meta-agent writes workflows for one held-out task (an optimizer episode on
its validation split), the best is scored once on the test split → ``Metrics`` and a comparison
table (``Markdown``) against the task's shipped baselines and its champion workflow; the run folder
(``Artifact``) is what the register stage registers."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from w4s.pipelines import settings


@dsl.component(base_image=settings.IMAGE, install_kfp_package=False)
def benchmark(
    model: Input[Model],
    task: str,
    executor_model: str,
    run_folder: Output[Artifact],
    table: Output[Markdown],
    metrics: Output[Metrics],
    executor_base_url: str = "",
    turns: int = 1,
    candidates: int = 1,
    validation_limit: int = 0,
    test_limit: int = 0,
    meta_max_tokens: int = 0,
    executor_max_tokens: int = 0,
    baselines: list = [],
    repairs: int = -1,
    optimize_config: dict = {},
    meta_config: dict = {},
    executor_config: dict = {},
    sandbox_config: dict = {},
    data_dir: str = "",
    tracking_uri: str = "",
):
    """The trained meta-agent on one held-out task, scored once on its test split."""
    from w4s.pipelines.stages.benchmark import run

    values = run(
        model=model.path,
        task=task,
        executor_model=executor_model,
        run_dir=run_folder.path,
        table=table.path,
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
    for name, value in values.items():
        metrics.log_metric(name, value)
