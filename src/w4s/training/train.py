"""`w4s train`: fine-tune the meta-agent on trajectories by reward-weighted regression.

``main(cfg, trajectories)`` loads the base model (a local folder; a hub id where the hub is
reachable), builds the weighted dataset, trains with :class:`WeightedTrainer`, and writes
``OUTPUT/model`` (loads with transformers; LoRA merged on request) and
``OUTPUT/training_summary.json`` (written last and whole: its presence means the run finished).

A task that may be retried (a Kubernetes pod) sets ``resume_if_possible``: a retry returns the finished
result if there is one, else continues from the newest checkpoint, else starts fresh. With
``checkpoint_uri`` the output folder is mirrored to S3 (:mod:`w4s.training.checkpoints`), so a retry
on another node with an empty disk does the same from there.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from w4s.callbacks import CallbackHandler, RunInfo
from w4s.errors import ConfigError, InfrastructureError
from w4s.extras import require
from w4s.training.checkpoints import CHECKPOINTS, MODEL, SUMMARY, S3Mirror, newest_checkpoint
from w4s.training.config import TrainConfig
from w4s.training.dataset import Collator, build_examples, read_records, tokenize
from w4s.training.result import TrainResult

log = logging.getLogger(__name__)


def load_base(cfg: TrainConfig):
    require("train", "torch", "transformers")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not cfg.base_model:
        raise ConfigError("pass --base-model: a local model folder (or a hub id where the hub is reachable)")
    ref = os.path.expanduser(cfg.base_model)
    if (ref.startswith((".", "/", "~")) or Path(ref).exists()) and not (Path(ref) / "config.json").is_file():
        raise ConfigError(f"base model {cfg.base_model} does not exist (no config.json there)")
    use_bf16 = cfg.bf16 == "true" or (
        cfg.bf16 == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    except OSError as exc:
        raise InfrastructureError(
            f"could not load base model {cfg.base_model}: {str(exc).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model, tokenizer, use_bf16


def _with_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _report_to(cfg: TrainConfig) -> list[str]:
    if not cfg.mlflow or not os.environ.get("MLFLOW_TRACKING_URI"):
        return []
    try:
        import mlflow  # noqa: F401
    except ImportError:
        log.warning("MLFLOW_TRACKING_URI is set but mlflow is not installed: not logging to MLflow")
        return []
    return ["mlflow"]


def main(
    cfg: TrainConfig,
    trajectories: list[str],
    callbacks: CallbackHandler | None = None,
    run: RunInfo | None = None,
    extra: dict | None = None,
) -> TrainResult:
    """Train, write the checkpoint and training_summary.json (the result). ``callbacks`` hear
    ``on_run_start(run)`` once the inputs are accepted, and ``on_log`` with the trainer's metrics at
    every logging step."""
    require("train", "torch", "transformers", "accelerate", "peft")
    import torch
    from transformers import TrainerCallback, TrainingArguments

    from w4s.training.trainer import WeightedTrainer

    if not cfg.output:
        raise ConfigError("pass --output: the folder for the checkpoint")
    out = Path(cfg.output).expanduser().resolve()
    examples = build_examples(read_records(trajectories), cfg)
    fingerprint = trajectories_sha256(trajectories)
    mirror = S3Mirror(cfg.checkpoint_uri, out) if cfg.checkpoint_uri else None
    if cfg.resume_if_possible:
        finished = _finished(out, cfg, fingerprint, mirror)
        if finished is not None:
            log.info("%s already holds the finished training of these settings: not training again", out)
            if callbacks and run is not None:
                callbacks.emit("on_run_start", run)
            return finished
    resuming = cfg.resume or cfg.resume_if_possible
    if mirror is not None and not resuming and not mirror.is_empty():
        raise ConfigError(
            f"checkpoint_uri {cfg.checkpoint_uri} already holds files of a training; set resume_if_possible "
            "(or resume) to continue it, or choose another checkpoint_uri"
        )
    resume = newest_checkpoint(out / CHECKPOINTS) if resuming else None
    if resuming and mirror is not None:
        resume = mirror.fetch_checkpoint(resume)
    if cfg.resume and resume is None:
        log.warning(
            "resume was asked but %s holds no checkpoint: starting from the base model", out / CHECKPOINTS
        )
    elif cfg.resume_if_possible:
        log.info(
            "%s", f"resuming from {resume}" if resume else "no checkpoint to resume from: starting fresh"
        )
    model, tokenizer, use_bf16 = load_base(cfg)
    if callbacks and run is not None:
        callbacks.emit("on_run_start", run)
    rows = tokenize(examples, tokenizer, cfg)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if cfg.lora:
        model = _with_lora(model, cfg)
    out.mkdir(parents=True, exist_ok=True)
    accepted = inspect.signature(TrainingArguments.__init__).parameters
    version_specific = {"warmup_steps": cfg.warmup_ratio}  # transformers 5: a float < 1 is a ratio
    if "warmup_ratio" in accepted:
        version_specific = {"warmup_ratio": cfg.warmup_ratio}
    if "group_by_length" in accepted:
        version_specific["group_by_length"] = True  # fewer pad tokens per batch
    args = TrainingArguments(
        **version_specific,
        output_dir=str(out / CHECKPOINTS),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        logging_steps=1,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        bf16=use_bf16,
        seed=cfg.seed,
        report_to=_report_to(cfg),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
    )

    class _Forward(TrainerCallback):
        """The trainer's log lines to w4s callbacks (which run on their own thread)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if callbacks and logs:
                callbacks.emit("on_log", {"step": state.global_step, **logs})

    trainer = WeightedTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=Collator(tokenizer.pad_token_id),
        callbacks=[_Forward()] + ([mirror.callback()] if mirror is not None else []),
    )
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    final = trainer.model
    if cfg.lora and cfg.merge_lora:
        final = final.merge_and_unload()
    final.save_pretrained(out / MODEL)
    tokenizer.save_pretrained(out / MODEL)
    tokens = sum(len(r["input_ids"]) for r in rows)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = TrainResult(
        model=str(out / MODEL),
        examples=len(rows),
        dropped_too_long=len(examples) - len(rows),
        tokens_per_epoch=tokens,
        steps=trainer.state.global_step,
        epochs=round(trainer.state.epoch or 0.0, 4),
        first_loss=losses[0] if losses else None,
        final_loss=losses[-1] if losses else None,
        train_loss=result.training_loss,
        seconds=round(seconds, 3),
        tokens_per_second=round(tokens * (trainer.state.epoch or 0) / seconds, 1) if seconds else None,
        weights={"min": min(e.weight for e in examples), "max": max(e.weight for e in examples)},
        rewards=sorted({e.reward for e in examples}),
        resumed_from=str(resume) if resume else None,
        lora=cfg.lora,
        merged=cfg.lora and cfg.merge_lora,
        config=cfg.to_dict(),
        extra={
            "trajectories": [str(Path(p).expanduser().resolve()) for p in trajectories],
            "trajectories_sha256": fingerprint,
            **(extra or {}),
        },
    )
    if trainer.is_world_process_zero():
        tmp = out / f".{SUMMARY}.tmp"
        tmp.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        os.replace(tmp, out / SUMMARY)  # whole or absent: a retry takes its presence for a finished run
        if mirror is not None:
            mirror.upload_result()
    return summary


# Settings that do not change what is trained: a retry may differ in them and still be the same run.
_NOT_IDENTITY = ("output", "resume", "resume_if_possible", "checkpoint_uri", "mlflow")


def trajectories_sha256(paths: list[str]) -> str:
    """One hash of the trajectory files' contents, in order (their paths may differ between pods)."""
    digest = hashlib.sha256()
    for path in paths:
        data = Path(path).expanduser().read_bytes()
        digest.update(f"{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def _finished(out: Path, cfg: TrainConfig, fingerprint: str, mirror: S3Mirror | None) -> TrainResult | None:
    """The finished result of this training in ``out`` (downloaded from the mirror when only it holds
    one), or None; ConfigError when what is there was trained with other settings or data."""
    local = (out / SUMMARY).is_file()
    if not local and mirror is not None:
        mirror.fetch_result()
    if not (out / SUMMARY).is_file():
        return None
    done = TrainResult.load(out / SUMMARY)
    if not (out / MODEL / "config.json").is_file():
        log.warning("%s has %s but no model: training again", out, SUMMARY)
        return None
    mine, theirs = cfg.to_dict(), done.config
    for name in mine:
        if name not in _NOT_IDENTITY and theirs.get(name) != mine[name]:
            raise ConfigError(
                f"{out} holds a finished training with {name}={theirs.get(name)!r}, this one asks for "
                f"{mine[name]!r}; choose another output (and checkpoint_uri), or set resume instead of "
                "resume_if_possible to continue training it"
            )
    saved = done.extra.get("trajectories_sha256")
    if saved is not None and saved != fingerprint:
        raise ConfigError(
            f"{out} holds a finished training on other trajectories (their contents differ); choose another "
            "output (and checkpoint_uri)"
        )
    if local and mirror is not None and SUMMARY not in mirror.list():
        mirror.upload_result()  # the run that finished here did not get to mirror it
    return replace(done, model=str(out / MODEL))
