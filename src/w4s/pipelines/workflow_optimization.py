"""The ``workflow-optimization`` pipeline: for each task (``ParallelFor``), the champion meta-agent
(or the base model before there is one) writes workflows for the executor → the best is scored once
on test → registered as a ``w4s-workflow-<task>`` version → promoted when it beats the champion. An
exit handler records how the run ended in MLflow."""

from kfp import dsl

from w4s.pipelines.components import collect_trajectories, record_failure, register_workflow
from w4s.pipelines.rlao_training import live, tracked

NAME = "workflow-optimization"


@dsl.pipeline(
    name=NAME, description="W4S: the champion meta-agent optimizes a workflow per task; register, promote"
)
def workflow_optimization(
    tasks: list = ["gsm8k"],
    turns: int = 2,
    candidates: int = 2,
    validation_limit: int = 4,
    test_limit: int = 4,
    meta_model: str = "mlflow:w4s-meta-agent@champion",
    base_model: str = "smollm2-135m",
    meta_base_url: str = "",
    meta_max_tokens: int = 256,
    executor_model: str = "local:smollm2-135m",
    executor_base_url: str = "",
    executor_max_completion_tokens: int = 128,
    baselines: list = ["cot"],
    repairs: int = 1,
    budget_usd: float = 0.0,
    promote: bool = True,
    sandbox_config: dict = {},
    data_dir: str = "",
    tracking_uri: str = "",
):
    exit_task = tracked(
        record_failure(pipeline=NAME, job=dsl.PIPELINE_JOB_ID_PLACEHOLDER, tracking_uri=tracking_uri)
    ).set_display_name("record the outcome in MLflow")
    # constants only inside dict arguments: KFP passes a pipeline parameter nested in a dict as text
    meta = {"timeout_s": 3600.0}
    executor = {"timeout_s": 600.0}
    with dsl.ExitHandler(exit_task, name="workflow-optimization"):
        with dsl.ParallelFor(tasks, name="tasks") as task:
            optimized = live(
                collect_trajectories(
                    task=task,
                    episode=0,
                    meta_model=meta_model,
                    base_model=base_model,
                    meta_base_url=meta_base_url,
                    executor_model=executor_model,
                    executor_base_url=executor_base_url,
                    turns=turns,
                    candidates=candidates,
                    validation_limit=validation_limit,
                    test_limit=test_limit,
                    meta_max_tokens=meta_max_tokens,
                    executor_max_tokens=executor_max_completion_tokens,
                    baselines=baselines,
                    repairs=repairs,
                    budget_usd=budget_usd,
                    meta_config=meta,
                    executor_config=executor,
                    sandbox_config=sandbox_config,
                    data_dir=data_dir,
                    tracking_uri=tracking_uri,
                )
            ).set_display_name("optimize")
            live(
                register_workflow(
                    run_folder=optimized.outputs["run_folder"],
                    promote=promote,
                    executor_model=executor_model,
                    executor_base_url=executor_base_url,
                    executor_max_tokens=executor_max_completion_tokens,
                    executor_config=executor,
                    sandbox_config=sandbox_config,
                    data_dir=data_dir,
                    tracking_uri=tracking_uri,
                )
            ).set_display_name("register and promote")
