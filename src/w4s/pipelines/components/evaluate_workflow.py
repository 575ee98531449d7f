"""Stage: a workflow (a file artifact, a shipped workflow's name, or an ``mlflow:`` reference) on a
split of a task, in the sandbox inside the container → ``Metrics`` and the per-sample evaluation
JSON (``Dataset``)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from w4s.pipelines import settings


@dsl.component(base_image=settings.IMAGE, install_kfp_package=False)
def evaluate_workflow(
    task: str,
    executor_model: str,
    results: Output[Dataset],
    metrics: Output[Metrics],
    workflow: str = "",
    workflow_file: Input[Artifact] = None,
    split: str = "test",
    limit: int = 0,
    executor_base_url: str = "",
    evaluation_config: dict = {},
    executor_config: dict = {},
    sandbox_config: dict = {},
    data_dir: str = "",
    tracking_uri: str = "",
):
    """Score a workflow (``workflow_file``, else ``workflow``: a shipped name or ``mlflow:`` reference)."""
    from w4s.pipelines.stages.evaluate_workflow import run

    values = run(
        workflow=workflow_file.path if workflow_file is not None else workflow,
        task=task,
        executor_model=executor_model,
        results=results.path,
        split=split,
        limit=limit,
        executor_base_url=executor_base_url,
        evaluation_config=evaluation_config,
        executor_config=executor_config,
        sandbox_config=sandbox_config,
        data_dir=data_dir,
        tracking_uri=tracking_uri,
    )
    for name, value in values.items():
        metrics.log_metric(name, value)
