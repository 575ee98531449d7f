"""Stage: the merged training set + a base model → a meta-agent checkpoint (``Model``: the training
output folder, ``model/`` and ``training_summary.json``) by reward-weighted regression, on a GPU node
in a cluster (the pipeline sets the accelerator, node selector, tolerations and requests).

A retried task resumes: its checkpoints go to ``checkpoint_dir`` (a PVC the pipeline mounts) under
the pipeline run's id, and to ``checkpoint_uri`` (S3) when given, and training continues from the
newest one there; a task whose training had finished returns the finished result."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from w4s.pipelines import settings


@dsl.component(base_image=settings.GPU_IMAGE, install_kfp_package=False)
def train_rwr(
    train_set: Input[Dataset],
    base_model: str,
    model: Output[Model],
    metrics: Output[Metrics],
    fallback_model: str = "",
    max_steps: int = 0,
    lora: bool = True,
    temperature: float = 0.0,
    max_tokens_per_batch: int = 0,
    gradient_checkpointing: str = "",
    train_config: dict = {},
    checkpoint_dir: str = "",
    checkpoint_uri: str = "",
    run_key: str = "",
    tracking_uri: str = "",
):
    """Reward-weighted regression of the meta-agent on the merged training set."""
    from w4s.pipelines.stages.train_rwr import run

    values = run(
        train_set=train_set.path,
        base_model=base_model,
        output=model.path,
        fallback_model=fallback_model,
        max_steps=max_steps,
        lora=lora,
        temperature=temperature,
        max_tokens_per_batch=max_tokens_per_batch,
        gradient_checkpointing=gradient_checkpointing,
        train_config=train_config,
        checkpoint_dir=checkpoint_dir,
        checkpoint_uri=checkpoint_uri,
        run_key=run_key,
        tracking_uri=tracking_uri,
    )
    for name, value in values.items():
        metrics.log_metric(name, value)
