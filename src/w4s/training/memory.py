"""How much memory a training run needs, how much it may have, and the one-line refusal when it cannot fit.

``memory_limit(device)``: the bytes this process may use and where that figure comes from. On CUDA it
is the GPU's free memory plus what this process already holds there; on CPU the smallest of the cgroup
limit (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``, of the process's cgroup and its ancestors),
``RLIMIT_AS`` when set, and ``MemAvailable`` plus this process's resident set.

``estimate_peak(...)``: an analytical estimate of the peak, in named parts, from plain numbers (so it is
tested without a model); ``estimate_for(model, cfg, tokens_per_batch, longest)`` reads those numbers from a
transformers model. ``check_fits(estimate, limit, cfg)`` raises a one-line
:class:`~w4s.errors.ConfigError` naming the settings that would shrink the estimate most.

The constants were calibrated on CPU against the peak RSS of SmolLM2-135M training steps (see
docs/performance.md, "Training memory"; within 2.5% at 2k-8k tokens, with and without gradient
checkpointing, LoRA and full fine-tuning). On CPU, call :func:`tame_allocator` before training: glibc's
malloc otherwise keeps freed activation buffers resident and the peak is 3-4x the estimate without its
``allocator`` part. torch is imported only by the functions that need it.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from w4s.errors import ConfigError
from w4s.training.config import LONG_EXAMPLE

GIB = 1024**3
MIB = 1024**2
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded LONG_MAX

# Calibrated constants (CPU, fp32, SmolLM2-135M; see the module docstring).
# Elements saved for backward per token per decoder layer, as multiples of the layer's sizes: RMSNorms
# (fp32 copies), q/k/v/o inputs and outputs, SDPA's saved q, k, v, output; the MLP's gate, up, act(gate)
# and their product.
ACT_PER_HIDDEN = 10.5
ACT_PER_INTERMEDIATE = 4.0
ACT_PER_KV = 4.0
# LoRA with dropout keeps a dropped copy of each adapted linear's input (q, k, v, o, gate, up: hidden;
# down: intermediate) and the adapter's rank-r intermediate.
LORA_ACT_PER_HIDDEN = 6.0
LORA_ACT_PER_INTERMEDIATE = 1.0
# Logits at completion positions: the logits, their log-softmax and its gradient, in fp32.
LOGIT_COPIES = 3.0
# torch + transformers + peft + trl imported, tokenizer and data (measured on CPU, the allocator tamed);
# on CUDA, the CUDA context and the caching allocator's fragmentation.
CPU_OVERHEAD = 400 * MIB
# glibc malloc with its dynamic mmap threshold keeps freed activation buffers resident: measured with
# w4s train at the defaults on ~2k-token records, 8.2 GiB peak RSS instead of 2.4 (about this many layers'
# worth of activations per token). tame_allocator() (or any MALLOC_*_ variable of glibc) removes it.
ALLOCATOR_SLACK_LAYERS = 12.0
_TAMED = {"done": False}
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
CUDA_OVERHEAD = 1 * GIB
CUDA_SLACK = 0.10  # the caching allocator's fragmentation, a share of the rest


# --- the limit ---------------------------------------------------------------------------------------


def _read_int(path: Path) -> int | None:
    """A cgroup limit file: bytes, or None for "max"/no limit/absent/unreadable."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED else value


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """``{"v2": path, "v1": path}`` of this process's memory cgroups, from ``/proc/self/cgroup``."""
    found: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            found["v2"] = path
        elif "memory" in controllers.split(","):
            found["v1"] = path
    return found


def _ancestors(base: Path, path: str) -> list[Path]:
    """``base/path`` and every folder above it up to ``base`` (limits of ancestors apply too; in a container
    without a cgroup namespace ``base`` itself is the container's cgroup and the deeper ones are absent)."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    return [base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def cgroup_dirs(proc_cgroup: str | Path = "/proc/self/cgroup", root: str | Path = "/sys/fs/cgroup") -> dict:
    """The folders of this process's own memory cgroup: ``{"v2": Path}`` and/or ``{"v1": Path}`` (the ones
    that exist). v2 is mounted at ``root`` (unified) or ``root/unified`` (hybrid); v1 at ``root/memory``."""
    root = Path(root)
    paths = _cgroup_paths(Path(proc_cgroup))
    found = {}
    if "v2" in paths:
        base = root if (root / "cgroup.controllers").exists() else root / "unified"
        own = _ancestors(base, paths["v2"])[0]
        if own.is_dir():
            found["v2"] = own
    if "v1" in paths:
        own = _ancestors(root / "memory", paths["v1"])[0]
        if own.is_dir():
            found["v1"] = own
    return found


def cgroup_limit(
    proc_cgroup: str | Path = "/proc/self/cgroup", root: str | Path = "/sys/fs/cgroup"
) -> tuple[int, str] | None:
    """The tightest memory limit of this process's cgroups (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``, over the cgroup and its ancestors), with its file's name; None if unlimited."""
    root = Path(root)
    paths = _cgroup_paths(Path(proc_cgroup))
    candidates: list[tuple[int, str]] = []
    if "v2" in paths:
        base = root if (root / "cgroup.controllers").exists() else root / "unified"
        for folder in _ancestors(base, paths["v2"]):
            value = _read_int(folder / "memory.max")
            if value is not None:
                candidates.append((value, "cgroup memory.max"))
    if "v1" in paths:
        for folder in _ancestors(root / "memory", paths["v1"]):
            value = _read_int(folder / "memory.limit_in_bytes")
            if value is not None:
                candidates.append((value, "cgroup memory.limit_in_bytes"))
    return min(candidates) if candidates else None


def _meminfo_available(proc: Path) -> int | None:
    """MemAvailable of ``proc/meminfo`` plus this process's VmRSS (what it may grow to), in bytes."""
    try:
        meminfo = (proc / "meminfo").read_text()
    except OSError:
        return None
    available = None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    if available is None:
        return None
    rss = 0
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return available + rss


def cpu_limit(proc: str | Path = "/proc", root: str | Path = "/sys/fs/cgroup") -> tuple[int, str]:
    """The smallest of the cgroup limit, RLIMIT_AS and MemAvailable + RSS, with its source."""
    proc = Path(proc)
    candidates: list[tuple[int, str]] = []
    cgroup = cgroup_limit(proc / "self" / "cgroup", root)
    if cgroup is not None:
        candidates.append(cgroup)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
        candidates.append((soft, "RLIMIT_AS"))
    available = _meminfo_available(proc)
    if available is not None:
        candidates.append((available, "the machine's available memory"))
    if not candidates:
        return _UNLIMITED, "no limit found"
    return min(candidates)


def memory_limit(device: str = "cpu") -> tuple[int, str]:
    """Bytes this process may use for training on ``device`` ("cpu", "cuda", "cuda:1") and where the figure
    comes from ("cgroup memory.max", "GPU 0 free memory", ...)."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        free, total = torch.cuda.mem_get_info(index)
        held = torch.cuda.memory_reserved(index)  # what this process already holds counts as its own
        return min(free + held, total), f"GPU {index}'s free memory ({total / GIB:.1f} GiB in all)"
    return cpu_limit()


# --- the estimate ------------------------------------------------------------------------------------


def lora_params(hidden: int, intermediate: int, layers: int, kv_dim: int, rank: int) -> int:
    """Trainable parameters of rank-``rank`` LoRA on every linear layer of a Llama/Qwen-style decoder
    (q, k, v, o, gate, up, down): ``rank * (in + out)`` each."""
    per_layer = (
        (hidden + hidden)  # q
        + 2 * (hidden + kv_dim)  # k, v
        + (hidden + hidden)  # o
        + 2 * (hidden + intermediate)  # gate, up
        + (intermediate + hidden)  # down
    )
    return rank * per_layer * layers


def estimate_peak(
    *,
    params: int,
    trainable_params: int,
    weight_bytes: int,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    tokens_per_batch: int,
    longest: int,
    completion_tokens: int | None = None,
    gradient_checkpointing: bool = False,
    lora: bool = True,
    act_bytes: int | None = None,
    device: str = "cpu",
    head_dim: int | None = None,
    attention: str = "sdpa",
    allocator_slack: bool = False,
) -> dict:
    """The peak memory of a training step, in bytes, by part (:data:`PARTS`), their ``total``, and the
    ``inputs`` it was computed from.

    ``params``: all parameters; ``trainable_params``: those the optimizer updates (the adapters with
    ``lora``); ``weight_bytes``: bytes per weight (4 fp32, 2 bf16); ``act_bytes``: bytes per activation
    (default ``weight_bytes``); ``tokens_per_batch``: tokens of one micro-batch (padding included, if any);
    ``longest``: its longest sequence; ``completion_tokens``: positions where logits are computed (default a
    quarter of the batch); ``attention``: "sdpa"/"flash_attention_2" (fused: no L x L scores kept) or
    "eager" (scores kept per layer); ``allocator_slack``: on CPU, glibc malloc keeps freed buffers (see
    :func:`tame_allocator`).
    """
    inputs = {k: v for k, v in locals().items()}
    act_bytes = act_bytes or weight_bytes
    head_dim = head_dim or hidden // heads
    kv_dim = kv_heads * head_dim
    if completion_tokens is None:
        completion_tokens = max(1, tokens_per_batch // 4)
    completion_tokens = min(completion_tokens, tokens_per_batch)
    sequences = max(1, -(-tokens_per_batch // max(longest, 1)))

    # Weights in their dtype; trainable ones also hold a gradient (their dtype; LoRA adapters are fp32)
    # and AdamW's two moments in fp32.
    trainable_bytes = 4 if lora else weight_bytes
    weights = params * weight_bytes + (trainable_params * trainable_bytes if lora else 0)
    optimizer = trainable_params * (trainable_bytes + 8)

    per_token_layer = (
        ACT_PER_HIDDEN * hidden + ACT_PER_INTERMEDIATE * intermediate + ACT_PER_KV * kv_dim
    ) * act_bytes
    if lora:
        per_token_layer += (
            LORA_ACT_PER_HIDDEN * hidden + LORA_ACT_PER_INTERMEDIATE * intermediate
        ) * act_bytes
    scores = heads * longest * longest * act_bytes * sequences if attention == "eager" else 0
    if gradient_checkpointing:
        # each layer keeps its input; one layer at a time is recomputed with everything it saves
        activations = layers * hidden * tokens_per_batch * act_bytes + per_token_layer * tokens_per_batch
        activations += scores
    else:
        activations = layers * (per_token_layer * tokens_per_batch + scores)
    activations += 2 * hidden * tokens_per_batch * 4  # the embeddings' output and the final norm (fp32)
    # Scratch of one attention call for the longest sequence: fused kernels work in blocks (a few rows of
    # scores per head); eager softmax holds the fp32 scores and their gradient.
    if attention == "eager":
        attention_scratch = 2 * heads * longest * longest * 4
    else:
        attention_scratch = heads * longest * (head_dim + 64) * 4 * 2
    logits = int(LOGIT_COPIES * completion_tokens * vocab * 4)
    parts = {
        "weights": int(weights),
        "optimizer": int(optimizer),
        "activations": int(activations),
        "attention": int(attention_scratch),
        "logits": logits,
    }
    slack = allocator_slack and not device.startswith("cuda")
    parts["allocator"] = int(ALLOCATOR_SLACK_LAYERS * per_token_layer * tokens_per_batch) if slack else 0
    if device.startswith("cuda"):
        parts["overhead"] = int(CUDA_OVERHEAD + CUDA_SLACK * sum(parts.values()))
    else:
        parts["overhead"] = CPU_OVERHEAD
    parts["total"] = sum(parts.values())
    parts["inputs"] = inputs
    return parts


def _get(cfg, name: str, default=None):
    """A setting of a TrainConfig or of a dict of settings; ``default`` when absent."""
    if cfg is None:
        return default
    value = cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)
    return default if value is None else value


def gradient_checkpointing_on(cfg, longest: int) -> bool:
    """``gradient_checkpointing`` of a TrainConfig: "auto" is on when the longest example exceeds
    ``LONG_EXAMPLE`` (512) tokens (a bool is taken as it is). The one place "auto" is resolved: training
    and the estimate agree."""
    value = _get(cfg, "gradient_checkpointing", "auto")
    if isinstance(value, bool):
        return value
    if str(value) == "auto":
        return longest > LONG_EXAMPLE
    return str(value) == "true"


def estimate_for(
    model,
    cfg,
    tokens_per_batch: int,
    longest: int,
    completion_tokens: int | None = None,
    device: str | None = None,
    allocator_slack: bool | None = None,
) -> dict:
    """:func:`estimate_peak` for a loaded transformers model (a peft-wrapped one too) and a TrainConfig
    (``lora``, ``lora_r``, ``gradient_checkpointing``); the device is the model's unless given; the
    allocator part is counted unless this process's allocator is tamed (or ``allocator_slack`` says)."""
    config = model.config
    text = getattr(config, "text_config", None) or config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    weights = [p for p in model.parameters()]
    lora = bool(_get(cfg, "lora", True))
    first = weights[0]
    weight_bytes = first.element_size()
    already_adapted = any("lora_" in name for name, _ in model.named_parameters())
    if already_adapted:
        trainable = sum(p.numel() for p in weights if p.requires_grad)
        params = sum(p.numel() for p in weights) - trainable
    else:
        params = sum(p.numel() for p in weights)
        if lora:
            trainable = lora_params(
                hidden,
                text.intermediate_size,
                text.num_hidden_layers,
                kv_heads * head_dim,
                _get(cfg, "lora_r", 16),
            )
        else:
            trainable = params
    bf16 = str(_get(cfg, "bf16", "auto"))
    act_bytes = 2 if (weight_bytes == 2 or bf16 == "true") else 4
    return estimate_peak(
        params=params,
        trainable_params=trainable,
        weight_bytes=weight_bytes,
        act_bytes=act_bytes,
        hidden=hidden,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=text.vocab_size,
        tokens_per_batch=tokens_per_batch,
        longest=longest,
        completion_tokens=completion_tokens,
        gradient_checkpointing=gradient_checkpointing_on(cfg, longest),
        lora=lora,
        device=device or str(first.device.type),
        attention=getattr(config, "_attn_implementation", None) or "sdpa",
        allocator_slack=not allocator_tamed() if allocator_slack is None else allocator_slack,
    )


# --- the check ---------------------------------------------------------------------------------------

PARTS = ("weights", "optimizer", "activations", "attention", "logits", "allocator", "overhead")


def _gib(value: float) -> str:
    return f"{value / GIB:.1f}"


def _advice(estimate: dict, cfg) -> list[str]:
    """The settings whose change shrinks the estimate, the one that saves most first (each re-estimated
    from the estimate's inputs)."""
    inputs = estimate.get("inputs")
    if not inputs:
        return []
    total = estimate["total"]
    options: list[tuple[int, str]] = []

    def saving(**changes) -> int:
        return total - estimate_peak(**{**inputs, **changes})["total"]

    tokens = _get(cfg, "max_tokens_per_batch")
    half = max(inputs["longest"], inputs["tokens_per_batch"] // 2)
    if tokens is not None:
        options.append((saving(tokens_per_batch=half), f"lower max_tokens_per_batch (now {tokens})"))
    elif _get(cfg, "batch_size") is not None:
        options.append((saving(tokens_per_batch=half), f"lower batch_size (now {_get(cfg, 'batch_size')})"))
    if not inputs["gradient_checkpointing"]:
        options.append((saving(gradient_checkpointing=True), "set gradient_checkpointing=true"))
    if not inputs["lora"]:
        adapters = lora_params(
            inputs["hidden"],
            inputs["intermediate"],
            inputs["layers"],
            inputs["kv_heads"] * (inputs.get("head_dim") or inputs["hidden"] // inputs["heads"]),
            _get(cfg, "lora_r") or 16,
        )
        options.append((saving(lora=True, trainable_params=adapters), "set lora=true"))
    on_gpu = str(inputs.get("device", "cpu")).startswith("cuda")
    if on_gpu and inputs["weight_bytes"] > 2 and str(_get(cfg, "bf16") or "auto") != "false":
        options.append((saving(weight_bytes=2, act_bytes=2), "set bf16=true"))
    if inputs.get("allocator_slack") and estimate.get("allocator", 0):
        options.append(
            (saving(allocator_slack=False), "set MALLOC_MMAP_THRESHOLD_=131072 in the environment")
        )
    if _get(cfg, "max_length") is not None and inputs["longest"] > 512:
        options.append(
            (
                saving(longest=inputs["longest"] // 2, tokens_per_batch=inputs["tokens_per_batch"]),
                f"lower max_length (now {_get(cfg, 'max_length')}) with drop_long=true",
            )
        )
    options.sort(key=lambda item: -item[0])
    return [text for amount, text in options if amount >= 0.01 * total][:3]


def check_fits(estimate: dict, limit: tuple[int, str] | int, cfg=None) -> None:
    """Raise a one-line ConfigError when ``estimate["total"]`` exceeds the limit (``(bytes, source)`` as
    :func:`memory_limit` returns it, or bytes). ``cfg`` (a TrainConfig or a dict of its settings:
    ``max_tokens_per_batch`` or ``batch_size``, ``lora_r``, ``bf16``, ``max_length``) names the settings in
    the message: those whose change would shrink the estimate most, then ``memory_check=false``."""
    limit_bytes, source = limit if isinstance(limit, tuple) else (limit, "the memory limit")
    total = estimate["total"]
    if total <= limit_bytes:
        return
    parts = ", ".join(
        f"{name} {_gib(estimate[name])}"
        for name in sorted(PARTS, key=lambda n: -estimate.get(n, 0))
        if estimate.get(name, 0) >= 0.05 * GIB
    )
    todo = ", ".join([*_advice(estimate, cfg), "or set memory_check=false to try anyway"])
    raise ConfigError(
        f"training needs about {_gib(total)} GiB ({parts}) but {source} allows {_gib(limit_bytes)} GiB; {todo}"
    )


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tame_allocator(mmap_threshold: int = 128 * 1024) -> bool:
    """Stop glibc malloc from keeping freed activation buffers: fix the mmap threshold (glibc raises it
    to the largest freed block, so later multi-MB tensors come from the heap and stay resident after they
    are freed) and trim the heap eagerly. On CPU this takes `w4s train` at the defaults (SmolLM2-135M, four
    ~2k-token records) from 8.2 GiB peak RSS to 2.4 GiB, and a bare training step at 2k tokens from
    3.4-5.0 GiB to 1.3 GiB, at the same speed. Returns whether it applied (glibc only; a no-op elsewhere)."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold) == 1 and ok
    except (OSError, AttributeError):
        return False
    _TAMED["done"] = _TAMED["done"] or ok
    return ok


def allocator_tamed() -> bool:
    """Whether glibc's dynamic mmap threshold is off in this process: :func:`tame_allocator` was called, a
    MALLOC_*_ tunable is set, or the C library is not glibc (estimates then add no allocator slack)."""
    import platform

    if _TAMED["done"] or any(name in os.environ for name in _GLIBC_ENV):
        return True
    return platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
