"""Two training processes on the CPU (torchrun, gloo): one model trained on split data, saved once.

This is the shape of a multi-GPU node (``accelerate launch`` / ``torchrun``), with gloo for NCCL: the
processes form one data-parallel group (each sees half the batches), the model is saved through the
trainer, the LoRA adapters are merged on rank 0 alone, and only rank 0 writes the summary and records
the run in MLflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.training import tiny

PROMPT = [{"role": "system", "content": "write a workflow"}, {"role": "user", "content": "task 1 2"}]


def test_two_processes_train_one_model_and_save_it_once(tmp_path):
    import mlflow
    import torch
    from transformers import AutoModelForCausalLM

    base = tiny.save_base(tmp_path / "base")
    records = [
        {
            "episode": 0,
            "turn": 1,
            "candidate": i,
            "prompt_messages": PROMPT,
            "reply": "good answer is 1" if i % 2 else "bad answer is 3",
            "reward": 1.0 if i % 2 else 0.0,
            "workflow": "x",
        }
        for i in range(8)
    ]
    data = tmp_path / "trajectories.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_"))}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free loopback port for the group's rendezvous
        "--nproc_per_node",
        "2",
        "-m",
        "w4s.cli",
        "train",
        "--trajectories",
        str(data),
        "--base-model",
        str(base),
        "--output",
        str(out),
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--learning-rate",
        "1e-2",
        "--mlflow",
        "false",
        "--tracking-uri",
        store,
    ]
    # cwd: a sqlite store's runs keep their artifacts in ./mlruns
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    # 8 examples in batches of 2 are 4 batches: each process took 2, so one epoch is 2 optimizer steps
    # (two independent processes would each have taken 4).
    assert summary["steps"] == 2 and summary["epochs"] == 1.0
    assert summary["merged"] is True and (out / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    original = AutoModelForCausalLM.from_pretrained(base)
    changed = [
        name
        for (name, p), (_, q) in zip(merged.named_parameters(), original.named_parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    assert changed and all("lora" not in name for name, _ in merged.named_parameters())
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len([r for r in runs if r.info.run_name.startswith("train")]) == 1  # rank 0 alone records it
