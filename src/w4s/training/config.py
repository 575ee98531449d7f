"""Configuration of a training run (one place for the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from w4s.config import Config, non_negative, option, positive

# Examples longer than this (tokens) turn gradient checkpointing on when it is "auto".
LONG_EXAMPLE = 512


def _tristate(value) -> bool:
    return value in ("auto", "true", "false")


@dataclass
class TrainConfig(Config):
    base_model: str = option(
        "", "base meta-agent: a local Hugging Face folder (or a hub id on machines with access)"
    )
    output: str = option("", "folder for the checkpoint, training_summary.json and trainer checkpoints")
    temperature: float = option(0.4, "RWR temperature T: weight = exp(reward / T)", positive)
    only_success_episodes: bool = option(False, "keep only episodes where some candidate earned reward >= 1")
    drop_failed: bool = option(False, "drop candidates that never produced a runnable workflow")
    turns: list | None = option(None, "keep only these turns (e.g. [1, 2]); None keeps all")
    allow_uniform_weights: bool = option(False, "train even if every reward is equal (then RWR is plain SFT)")
    max_length: int = option(4096, "longest prompt + completion in tokens", positive)
    drop_long: bool = option(False, "drop examples longer than max_length instead of failing")
    lora: bool = option(True, "train LoRA adapters (peft) instead of all weights")
    lora_r: int = option(16, "LoRA rank", positive)
    lora_alpha: int = option(32, "LoRA alpha", positive)
    lora_dropout: float = option(0.05, "LoRA dropout", lambda v: 0 <= v < 1, "between 0 and 1")
    merge_lora: bool = option(
        True, "merge the adapters into the saved checkpoint (loads with plain transformers)"
    )
    learning_rate: float = option(1e-5, "peak learning rate", positive)
    epochs: float = option(1.0, "passes over the data (ignored when max_steps is set)", positive)
    max_steps: int | None = option(None, "stop after this many optimizer steps", positive)
    max_tokens_per_batch: int = option(
        8192,
        "tokens (prompt + completion, padding included) per device per micro-batch: examples are sorted by "
        "length and cut into batches within this budget, so memory per step is bounded whatever the records",
        positive,
    )
    batch_size: int = option(
        16, "most examples per device per micro-batch (max_tokens_per_batch bounds it first)", positive
    )
    padding_free: str = option(
        "auto",
        "concatenate a micro-batch's examples into one row (no pad tokens): auto = where flash-attention 2 "
        "(varlen kernels) is available, true, or false",
        _tristate,
        "use auto, true or false",
    )
    grad_accum: int = option(1, "gradient accumulation steps", positive)
    warmup_ratio: float = option(0.03, "fraction of steps for learning-rate warm-up", non_negative)
    bf16: str = option(
        "auto",
        "auto (when the GPU supports it), true or false",
        lambda v: v in ("auto", "true", "false"),
        "use auto, true or false",
    )
    gradient_checkpointing: str = option(
        "auto",
        "recompute activations in the backward pass (memory for compute): auto = on when the longest example "
        f"exceeds {LONG_EXAMPLE} tokens (real meta-agent prompts do), true, or false",
        _tristate,
        "use auto, true or false",
    )
    attn_implementation: str = option(
        "auto",
        "attention kernels: auto = flash_attention_2 on a GPU where flash-attn is installed, else sdpa; or "
        "sdpa, eager, flash_attention_2",
        lambda v: v in ("auto", "sdpa", "eager", "flash_attention_2"),
        "use auto, sdpa, eager or flash_attention_2",
    )
    use_liger_kernel: bool = option(
        False,
        "Liger's fused layer kernels (RMSNorm, RoPE, SwiGLU; GPU with liger-kernel installed); the LM head is "
        "fused by TRL in any case on GPUs: no vocabulary-sized logits",
    )
    memory_check: bool = option(
        True,
        "estimate peak memory before training and refuse, with the setting to change, a configuration that "
        "cannot fit the device or the container's memory limit",
    )
    save_steps: int = option(200, "checkpoint every this many steps (resume with resume=true)", positive)
    resume: bool = option(
        False,
        "continue from the newest checkpoint in output (or checkpoint_uri); start fresh, warned, if none",
    )
    resume_if_possible: bool = option(
        False,
        "for a task that may be retried: return the finished result when output (or checkpoint_uri) already "
        "holds one of these settings, else continue from the newest checkpoint there, else start fresh",
    )
    checkpoint_uri: str | None = option(
        None,
        "s3://bucket/prefix mirroring output: checkpoints uploaded as saved, the model and summary at the end, "
        "downloaded before training (a retried pod on another node resumes); AWS_* and AWS_ENDPOINT_URL "
        "(or MLFLOW_S3_ENDPOINT_URL) from the environment",
        lambda v: v.startswith("s3://") and bool(v[5:].split("/", 1)[0]),
        "must be an s3://bucket/prefix URI",
    )
    seed: int = option(0, "seed of data order and initialisation")
    mlflow: bool = option(True, "log params and metrics to MLflow when MLFLOW_TRACKING_URI is set")
