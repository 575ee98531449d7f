"""Stage: the merged training set + a base model → a meta-agent checkpoint (``Model``: the training
output folder, ``model/`` and ``training_summary.json``) by reward-weighted regression, on a GPU node
in a cluster (the pipeline sets the accelerator, node selector, tolerations and requests).

A retried task resumes: its checkpoints go to ``checkpoint_dir`` (a PVC the pipeline mounts) under
the pipeline run's id, and to ``checkpoint_uri`` (S3) when given, and training continues from the
newest one there; a task whose training had finished returns the finished result."""

import logging
import shutil
from pathlib import Path

from w4s.errors import ConfigError

log = logging.getLogger(__name__)


def base_model_path(meta_model: str, fallback_model: str = "", tracking_uri: str = "") -> str:
    """What ``TrainConfig.base_model`` takes. Training continues the meta-agent that collected the
    trajectories where it is a checkpoint at hand (a registry reference, ``local:PATH``); a reference
    that names nothing yet (the first run) or an endpoint's model name falls back to
    ``fallback_model`` (a pulled model's name such as ``smollm2-135m``, a folder or a hub id)."""
    from w4s.llm import models
    from w4s.pipelines import params

    model, _ = params.starting_meta_agent(meta_model, fallback_model, tracking_uri)
    if model.startswith("mlflow:"):
        return model
    if not model.startswith("local:"):  # an endpoint's model: its weights are not ours to train
        if not fallback_model:
            raise ConfigError(
                f"cannot train {meta_model!r} (a model behind an endpoint); give the pipeline a base_model"
            )
        model = fallback_model
    name = model.removeprefix("local:")
    if name in models.KNOWN:
        return str(models.resolve(name))
    return name


def run(
    *,
    train_set: str,
    base_model: str,
    output: str,
    fallback_model: str = "",
    max_steps: int = 0,
    lora: bool = True,
    temperature: float = 0.0,
    max_tokens_per_batch: int = 0,
    gradient_checkpointing: str = "",
    train_config: dict | None = None,
    checkpoint_dir: str = "",
    checkpoint_uri: str = "",
    run_key: str = "",
    allow_uniform_weights: bool = True,
    tracking_uri: str = "",
) -> dict:
    """Train (``w4s.train``) and leave the result in ``output``; returns the metrics."""
    from w4s.pipelines.params import component_logging

    component_logging()
    from w4s import api
    from w4s.pipelines import params
    from w4s.training.config import TrainConfig

    work = Path(checkpoint_dir) / (run_key or "w4s-train") if checkpoint_dir else Path(output)
    config = params.config(
        TrainConfig,
        {"resume_if_possible": True, **(train_config or {})},
        base_model=base_model_path(base_model, fallback_model, tracking_uri),
        output=str(work),
        max_steps=max_steps or None,
        lora=lora,
        temperature=temperature or None,
        max_tokens_per_batch=max_tokens_per_batch or None,
        gradient_checkpointing=gradient_checkpointing or None,
        allow_uniform_weights=allow_uniform_weights,
        checkpoint_uri=checkpoint_uri or None,
    )
    log.info("train %s on %s into %s", config.base_model, train_set, work)
    result = api.train([train_set], config, tracking=params.tracking(tracking_uri))
    if work != Path(output):
        shutil.copytree(work, output, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint-*"))
    values = {
        "examples": float(result.examples),
        "steps": float(result.steps),
        "seconds": float(result.seconds),
    }
    for name in ("first_loss", "final_loss", "train_loss", "tokens_per_second"):
        if getattr(result, name) is not None:
            values[name] = float(getattr(result, name))
    for name, value in (result.weights or {}).items():
        values[f"weight_{name}"] = float(value)
    log.info("train: %s", ", ".join(f"{k} {v:g}" for k, v in values.items()))
    return values
