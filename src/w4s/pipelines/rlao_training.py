"""The ``rlao-training`` pipeline: collect W4S episodes over tasks × episodes (with the champion
meta-agent, or the base model on the first run) → merge them into a reward-weighted training set →
train on a GPU node → benchmark the trained meta-agent on held-out tasks → register → promote. An
exit handler records how the run ended in MLflow, whatever happened.

The defaults are the embedded ones (the README's main job): SmolLM2-135M as meta-agent and executor,
one small task, a few samples, two LoRA steps; at real scale pass a real executor endpoint, more
episodes, turns and samples, and the GPU parameters (docs/pipelines.md)."""

from kfp import dsl, kubernetes

from w4s.pipelines import settings
from w4s.pipelines.components import (
    benchmark,
    collect_trajectories,
    compute_rewards,
    plan_episodes,
    record_failure,
    register_meta_agent,
    train_rwr,
)

NAME = "rlao-training"


def live(task: dsl.PipelineTask, *, secrets: bool = True) -> dsl.PipelineTask:
    """A task whose output depends on a live LLM or the registry: never cached, retried with backoff
    on infrastructure failures, keys from the Kubernetes secret (never parameters)."""
    task.set_caching_options(False)
    if settings.RETRIES:
        task.set_retry(
            num_retries=settings.RETRIES, backoff_duration=settings.RETRY_BACKOFF, backoff_factor=2.0
        )
    if secrets:
        kubernetes.use_secret_as_env(task, settings.SECRET, settings.SECRET_KEYS, optional=True)
    return tracked(task)


def tracked(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The MLflow server's address and S3 keys, where the cluster keeps them in a secret."""
    kubernetes.use_secret_as_env(task, settings.MLFLOW_SECRET, settings.MLFLOW_SECRET_KEYS, optional=True)
    return task


@dsl.pipeline(
    name=NAME, description="W4S: collect trajectories, reward-weighted regression, benchmark, promote"
)
def rlao_training(
    tasks: list = ["gsm8k"],
    episodes: int = 1,
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
    benchmark_tasks: list = ["gsm8k"],
    benchmark_turns: int = 1,
    benchmark_candidates: int = 1,
    max_steps: int = 2,
    lora: bool = True,
    temperature: float = 0.4,
    max_tokens_per_batch: int = 0,
    gradient_checkpointing: str = "auto",
    train_config: dict = {},
    budget_usd: float = 0.0,
    promote: bool = True,
    gpu_type: str = "nvidia.com/gpu",
    gpu_count: int = 1,
    train_memory: str = "32Gi",
    train_cpu: str = "4",
    node_selector: dict = {},
    tolerations: list = [],
    checkpoint_uri: str = "",
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
    with dsl.ExitHandler(exit_task, name="rlao-training"):
        plan = plan_episodes(tasks=tasks, episodes=episodes).set_display_name("plan episodes")
        plan.set_caching_options(False)
        with dsl.ParallelFor(plan.output, name="tasks-x-episodes") as item:
            collect = live(
                collect_trajectories(
                    task=item,
                    episode=0,  # the item says which
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
            ).set_display_name("collect trajectories")
        rewards = compute_rewards(
            trajectories=dsl.Collected(collect.outputs["trajectories"]),
            temperature=temperature,
        ).set_display_name("compute rewards")
        rewards.set_caching_options(True)
        with dsl.If(rewards.outputs["Output"] != "empty", name="has-examples"):
            train = tracked(
                train_rwr(
                    train_set=rewards.outputs["train_set"],
                    base_model=meta_model,
                    fallback_model=base_model,
                    max_steps=max_steps,
                    lora=lora,
                    temperature=temperature,
                    max_tokens_per_batch=max_tokens_per_batch,
                    gradient_checkpointing=gradient_checkpointing,
                    train_config=train_config,
                    checkpoint_dir=settings.CHECKPOINT_MOUNT if settings.CHECKPOINT_PVC else "",
                    checkpoint_uri=checkpoint_uri,
                    run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                    tracking_uri=tracking_uri,
                )
            ).set_display_name("train (RWR)")
            train.set_caching_options(True)
            train.set_retry(
                num_retries=settings.RETRIES, backoff_duration=settings.RETRY_BACKOFF, backoff_factor=2.0
            )
            if not settings.LOCAL:  # placement on a GPU node (kfp.local has none to place on)
                train.set_accelerator_type(gpu_type).set_accelerator_limit(gpu_count)
                train.set_memory_request(train_memory).set_cpu_request(train_cpu)
                kubernetes.add_node_selector_json(train, node_selector)
                kubernetes.add_toleration_json(train, tolerations)
            if settings.CHECKPOINT_PVC:
                kubernetes.mount_pvc(
                    train, pvc_name=settings.CHECKPOINT_PVC, mount_path=settings.CHECKPOINT_MOUNT
                )
            with dsl.ParallelFor(benchmark_tasks, name="held-out-tasks") as held_out:
                scored = live(
                    benchmark(
                        model=train.outputs["model"],
                        task=held_out,
                        executor_model=executor_model,
                        executor_base_url=executor_base_url,
                        turns=benchmark_turns,
                        candidates=benchmark_candidates,
                        validation_limit=validation_limit,
                        test_limit=test_limit,
                        meta_max_tokens=meta_max_tokens,
                        executor_max_tokens=executor_max_completion_tokens,
                        baselines=baselines,
                        repairs=repairs,
                        meta_config=meta,
                        executor_config=executor,
                        sandbox_config=sandbox_config,
                        data_dir=data_dir,
                        tracking_uri=tracking_uri,
                    )
                ).set_display_name("benchmark")
            live(
                register_meta_agent(
                    model=train.outputs["model"],
                    runs=dsl.Collected(scored.outputs["run_folder"]),
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
