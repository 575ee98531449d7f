"""Calibration of w4s.training.memory's estimate: bare training steps of SmolLM2-135M, peak RSS against the estimate.

Each point runs in a child process of its own (its ru_maxrss is that point's peak): the model in fp32,
LoRA r=16 on every linear layer (or full fine-tuning), gradient checkpointing on or off, rows of up to
2048 tokens adding up to TOKENS, two steps of forward, log-probabilities at 128 completion positions,
backward and AdamW; glibc's allocator tamed (memory.tame_allocator) as `w4s train` does.

Usage: python perf/train_memory_calibrate.py [TOKENS:CHECKPOINTING:LORA ...]   (default: the points of
docs/performance.md). Prints one JSON line per point and writes perf/results/train_memory_calibration-cpu.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POINTS = ["2048:1:1", "4096:1:1", "8192:1:1", "2048:0:1", "2048:1:0"]
COMPLETION = 128


def step(tokens: int, checkpointing: bool, lora: bool, base_model: str) -> dict:
    """The child: two training steps; its peak RSS."""
    import resource

    import torch

    from w4s.training.memory import tame_allocator

    tame_allocator()
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    length = min(tokens, 2048)
    rows = tokens // length
    ids = torch.randint(3, 49000, (rows, length))
    per_row = COMPLETION // rows
    started = time.time()
    for _ in range(2):
        base = model.get_base_model() if lora else model
        hidden = base.model(input_ids=ids).last_hidden_state
        tail = hidden[:, -per_row:].reshape(-1, hidden.shape[-1])
        logits = base.lm_head(tail).float()
        loss = -torch.log_softmax(logits, -1).gather(-1, ids[:, -per_row:].reshape(-1, 1)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {
        "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(time.time() - started, 1),
    }


def estimate(tokens: int, checkpointing: bool, lora: bool, base_model: str) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from w4s.training import memory

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    cfg = {"lora": lora, "lora_r": 16, "gradient_checkpointing": "true" if checkpointing else "false"}
    parts = memory.estimate_for(model, cfg, tokens, min(tokens, 2048), COMPLETION, device="cpu")
    return parts["total"]


def main() -> None:
    from w4s.llm import models

    base_model = str(models.model_dir("smollm2-135m"))
    if sys.argv[1:2] == ["--child"]:
        tokens, checkpointing, lora = sys.argv[2].split(":")
        print(json.dumps(step(int(tokens), checkpointing == "1", lora == "1", base_model)))
        return
    import os

    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")  # this process estimates for a tamed child
    results = []
    for point in sys.argv[1:] or POINTS:
        tokens, checkpointing, lora = point.split(":")
        done = subprocess.run(
            [sys.executable, __file__, "--child", point], capture_output=True, text=True, timeout=1800
        )
        if done.returncode != 0:
            raise SystemExit(f"{point} failed: {done.stderr[-2000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        total = estimate(int(tokens), checkpointing == "1", lora == "1", base_model)
        row = {
            "tokens": int(tokens),
            "gradient_checkpointing": checkpointing == "1",
            "lora": lora == "1",
            **measured,
            "estimate_mib": round(total / 2**20, 1),
            "estimate_over_measured": round(total / 2**20 / measured["peak_mib"], 3),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    out = REPO / "perf" / "results" / "train_memory_calibration-cpu.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "points": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
