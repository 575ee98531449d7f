"""Stage: register what a pipeline produced in the MLflow registry and run the promotion gate
(:func:`w4s.promotion.promote`) → the decisions as ``Markdown`` and ``Metrics``, and as the task's
output (JSON) for the steps after it.

Two components: ``register_meta_agent`` (the training pipeline: the checkpoint as a
``w4s-meta-agent`` version, then the workflows it wrote in the benchmark as ``w4s-workflow-<task>``
versions whose lineage names it, then the gate for each) and ``register_workflow`` (the workflow
pipeline: one optimize run's best workflow, then the gate)."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from w4s.pipelines import settings


@dsl.component(base_image=settings.IMAGE, install_kfp_package=False)
def register_meta_agent(
    model: Input[Model],
    runs: Input[List[Artifact]],
    decision: Output[Markdown],
    metrics: Output[Metrics],
    promote: bool = True,
    promotion_config: dict = {},
    executor_model: str = "",
    executor_base_url: str = "",
    executor_max_tokens: int = 0,
    executor_config: dict = {},
    sandbox_config: dict = {},
    data_dir: str = "",
    tracking_uri: str = "",
) -> str:
    """Register the checkpoint and the workflows it wrote; promote where the evidence says so."""
    import json

    from w4s.pipelines.stages.register import run_meta_agent

    values, decisions = run_meta_agent(
        model=model.path,
        runs=[run.path for run in runs],
        report=decision.path,
        promote=promote,
        promotion_config=promotion_config,
        executor_model=executor_model,
        executor_base_url=executor_base_url,
        executor_max_tokens=executor_max_tokens,
        executor_config=executor_config,
        sandbox_config=sandbox_config,
        data_dir=data_dir,
        tracking_uri=tracking_uri,
    )
    for name, value in values.items():
        metrics.log_metric(name, value)
    return json.dumps(decisions, default=str)


@dsl.component(base_image=settings.IMAGE, install_kfp_package=False)
def register_workflow(
    run_folder: Input[Artifact],
    decision: Output[Markdown],
    metrics: Output[Metrics],
    promote: bool = True,
    promotion_config: dict = {},
    executor_model: str = "",
    executor_base_url: str = "",
    executor_max_tokens: int = 0,
    executor_config: dict = {},
    sandbox_config: dict = {},
    data_dir: str = "",
    tracking_uri: str = "",
) -> str:
    """Register one optimize run's best workflow and promote it if it beats the champion."""
    import json

    from w4s.pipelines.stages.register import run_workflow

    values, decisions = run_workflow(
        run=run_folder.path,
        report=decision.path,
        promote=promote,
        promotion_config=promotion_config,
        executor_model=executor_model,
        executor_base_url=executor_base_url,
        executor_max_tokens=executor_max_tokens,
        executor_config=executor_config,
        sandbox_config=sandbox_config,
        data_dir=data_dir,
        tracking_uri=tracking_uri,
    )
    for name, value in values.items():
        metrics.log_metric(name, value)
    return json.dumps(decisions, default=str)
