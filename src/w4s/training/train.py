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
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from w4s.callbacks import CallbackHandler, RunInfo
from w4s.errors import ConfigError, InfrastructureError
from w4s.extras import require
from w4s.training.checkpoints import ADAPTER, CHECKPOINTS, MODEL, SUMMARY, S3Mirror, newest_checkpoint
from w4s.training.config import TrainConfig
from w4s.training.dataset import IGNORE, build_examples, read_records, tokenize
from w4s.training.result import TrainResult

log = logging.getLogger(__name__)


def load_tokenizer(cfg: TrainConfig):
    require("train", "torch", "transformers")
    from transformers import AutoTokenizer

    if not cfg.base_model:
        raise ConfigError("pass --base-model: a local model folder (or a hub id where the hub is reachable)")
    ref = os.path.expanduser(cfg.base_model)
    if (ref.startswith((".", "/", "~")) or Path(ref).exists()) and not (Path(ref) / "config.json").is_file():
        raise ConfigError(f"base model {cfg.base_model} does not exist (no config.json there)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
    except OSError as exc:
        raise InfrastructureError(
            f"could not load base model {cfg.base_model}: {str(exc).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def use_bf16(cfg: TrainConfig) -> bool:
    import torch

    return cfg.bf16 == "true" or (
        cfg.bf16 == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    )


def attention(cfg: TrainConfig) -> str:
    """The attention implementation: flash-attention 2 (varlen: padding-free without a mask) where a GPU and
    flash-attn are there, else PyTorch's SDPA."""
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_model(cfg: TrainConfig, bf16: bool, attn: str):
    """The base model, loaded after the TrainingArguments exist (so DeepSpeed ZeRO-3 can shard it as it
    loads)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            os.path.expanduser(cfg.base_model),
            dtype=torch.bfloat16 if bf16 else torch.float32,
            attn_implementation=attn,
        )
    except OSError as exc:
        raise InfrastructureError(
            f"could not load base model {cfg.base_model}: {str(exc).splitlines()[0]}"
        ) from None
    except (ImportError, ValueError) as exc:
        raise ConfigError(
            f"attn_implementation={attn} cannot be used here ({str(exc).splitlines()[0]}); set "
            "attn_implementation to sdpa"
        ) from None
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def settle(cfg: TrainConfig, rows: list[dict], attn: str) -> dict:
    """What the "auto" settings resolve to for these examples and this machine."""
    from w4s.training.memory import gradient_checkpointing_on

    longest = max(len(r["input_ids"]) for r in rows)
    checkpointing = gradient_checkpointing_on(cfg, longest)
    padding_free = cfg.padding_free == "true" or (cfg.padding_free == "auto" and attn == "flash_attention_2")
    return {"gradient_checkpointing": checkpointing, "padding_free": padding_free, "longest_example": longest}


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
    require("train", "torch", "transformers", "accelerate", "peft", "trl", "datasets")
    from datasets import Dataset
    from transformers import TrainerCallback

    from w4s.training.trainer import WeightedCollator, WeightedTrainer

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
    if cfg.use_liger_kernel:
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError(
                "use_liger_kernel needs Liger's kernels (GPUs with Triton): pip install liger-kernel, or set "
                "use_liger_kernel false (the LM head is fused by TRL on GPUs in any case)"
            )
    from w4s.training import memory

    # glibc keeps freed activation buffers resident unless its mmap threshold is fixed (on CPU, 8.2 GiB
    # peak RSS instead of 2.4 for SmolLM2 at the defaults); a MALLOC_* tunable the user set is respected.
    if not any(name.startswith("MALLOC_") for name in os.environ):
        memory.tame_allocator()
    tokenizer = load_tokenizer(cfg)
    if callbacks and run is not None:
        callbacks.emit("on_run_start", run)
    rows = tokenize(examples, tokenizer, cfg)
    bf16 = use_bf16(cfg)
    attn = attention(cfg)
    settled = settle(cfg, rows, attn)
    out.mkdir(parents=True, exist_ok=True)
    args = _arguments(cfg, out, bf16, settled["gradient_checkpointing"])
    model = load_model(cfg, bf16, attn)
    if cfg.memory_check:
        _check_memory(cfg, model, rows, settled)

    class _Forward(TrainerCallback):
        """The trainer's log lines to w4s callbacks (which run on their own thread)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if callbacks and logs:
                callbacks.emit("on_log", {"step": state.global_step, **logs})

    trainer = WeightedTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        data_collator=WeightedCollator(
            pad_token_id=tokenizer.pad_token_id, padding_free=settled["padding_free"]
        ),
        peft_config=lora_config(cfg) if cfg.lora else None,
        callbacks=[_Forward()] + ([mirror.callback()] if mirror is not None else []),
        max_tokens_per_batch=cfg.max_tokens_per_batch,
        padding_free=settled["padding_free"],
    )
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    _save(trainer, cfg, out, tokenizer, bf16)
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
        batches_per_epoch=len(trainer.batch_sampler),
        settings={**settled, "attn_implementation": attn, "bf16": bf16},
        peak_memory_bytes=_peak_memory(),
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


def _arguments(cfg: TrainConfig, out: Path, bf16: bool, checkpointing: bool):
    """TRL's SFTConfig for this run (created before the model is loaded: DeepSpeed ZeRO-3 reads it then)."""
    import dataclasses

    import torch
    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    # transformers 5.24 renamed gradient_checkpointing (TRL still sets the old name's default).
    checkpoint_name = (
        "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    )
    return SFTConfig(
        **{checkpoint_name: checkpointing},
        output_dir=str(out / CHECKPOINTS),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the steps
        logging_steps=1,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        bf16=bf16,
        use_liger_kernel=cfg.use_liger_kernel,
        seed=cfg.seed,
        report_to=_report_to(cfg),
        max_length=None,  # tokenize() has applied max_length (refusing or dropping the longer examples)
        completion_only_loss=True,
        padding_free=False,  # our collator does it (SFTTrainer refuses a custom collator with this flag)
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without a GPU, say so: several processes (torchrun, accelerate launch) then form a gloo group
        # and train one model (DDP) instead of each training its own copy.
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,  # every trainable parameter takes part in every forward
        disable_tqdm=False,
    )


def _check_memory(cfg: TrainConfig, model, rows: list[dict], settled: dict) -> None:
    """Refuse, before training, a configuration whose estimated peak exceeds the device or container."""
    from w4s.training import memory
    from w4s.training.batching import batch_cost, token_batches

    lengths = [len(r["input_ids"]) for r in rows]
    batches = token_batches(lengths, cfg.max_tokens_per_batch, cfg.batch_size, settled["padding_free"])
    heaviest = max(batches, key=lambda b: batch_cost([lengths[i] for i in b], settled["padding_free"]))
    completion = sum(sum(1 for t in rows[i]["labels"] if t != IGNORE) for i in heaviest)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    estimate = memory.estimate_for(
        model,
        cfg,
        batch_cost([lengths[i] for i in heaviest], settled["padding_free"]),
        settled["longest_example"],
        completion_tokens=completion,
        device=device,
    )
    memory.check_fits(estimate, memory.memory_limit(device), cfg)


def _save(trainer, cfg: TrainConfig, out: Path, tokenizer, bf16: bool) -> None:
    """The final model, saved through the trainer (which gathers FSDP/ZeRO-3 shards and writes on the main
    process only); LoRA adapters merged on the main process into a fresh copy of the base model."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    merge = cfg.lora and cfg.merge_lora
    target = out / ADAPTER if merge else out / MODEL
    trainer.save_model(str(target))
    trainer.accelerator.wait_for_everyone()
    if merge and trainer.is_world_process_zero():
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(
            os.path.expanduser(cfg.base_model), dtype=torch.bfloat16 if bf16 else torch.float32
        )
        merged = PeftModel.from_pretrained(base, str(target)).merge_and_unload()
        merged.save_pretrained(out / MODEL)
        tokenizer.save_pretrained(out / MODEL)
    trainer.accelerator.wait_for_everyone()


def _peak_memory() -> int | None:
    """Peak memory of this process: the GPU's allocator peak with CUDA, else the peak resident set."""
    import torch

    from w4s.training.memory import peak_rss_bytes

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return peak_rss_bytes()


# Settings that do not change what is trained: a retry may differ in them and still be the same run.
_NOT_IDENTITY = ("output", "resume", "resume_if_possible", "checkpoint_uri", "mlflow", "memory_check")


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
