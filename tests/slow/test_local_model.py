"""End to end with the real local model (SmolLM2-135M-Instruct): pull it, then `w4s evaluate` with it.

A weak model: this proves the plumbing (pull, load, batched generation, sandbox, scoring), never
accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_evaluate_with_the_local_model(model_cache, tmp_path, data_dir):
    env = {**os.environ}
    if model_cache:
        env["W4S_CACHE_DIR"] = model_cache
    out = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "w4s.cli",
            "evaluate",
            "cot",
            "--task",
            "gsm8k",
            "--limit",
            "4",
            "--data-dir",
            str(data_dir),
            "--executor-model",
            "local:smollm2-135m",
            "--executor-max-completion-tokens",
            "48",
            "--executor-cache-path",
            str(tmp_path / "cache.sqlite"),
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["executor"] == "local:smollm2-135m" and len(result["samples"]) == 4
    assert 0.0 <= result["score"] <= 1.0
    assert result["usage"]["llm_calls"] == 4 and result["usage"]["completion_tokens"] > 0
    assert result["usage"]["cost_usd"] == 0.0
    assert all(s["error"] is None or "no number" in s["error"] for s in result["samples"])


def generate_counting_rows(model_cache, monkeypatch, requests, max_tokens: int, seed: int):
    """Send ``requests`` ((messages, n) pairs) at once to a SmolLM2 backend of batch size 4; returns
    the completions and the rows of every forward pass the real model ran (seen by a pre-hook)."""
    import asyncio

    from w4s.llm.local import LocalBackend

    if model_cache:
        monkeypatch.setenv("W4S_CACHE_DIR", model_cache)
    backend = LocalBackend("local:smollm2-135m", batch_size=4)
    model, _ = backend.loaded()
    rows = []

    def count_rows(module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        rows.append(ids.shape[0])

    hook = model.register_forward_pre_hook(count_rows, with_kwargs=True)

    async def scenario():
        try:
            return await asyncio.gather(
                *(
                    backend.generate(
                        m, n=n, temperature=0.7, max_tokens=max_tokens, json_mode=False, seed=seed
                    )
                    for m, n in requests
                )
            )
        finally:
            await backend.aclose()

    try:
        return asyncio.run(scenario()), rows
    finally:
        hook.remove()


def test_local_backend_batches_and_counts(model_cache, monkeypatch):
    requests = [([{"role": "user", "content": f"Say the number {i}."}], 2) for i in range(4)]
    completions, rows = generate_counting_rows(model_cache, monkeypatch, requests, max_tokens=12, seed=1)
    assert [len(c.texts) for c in completions] == [2, 2, 2, 2]
    # batch_size counts sequences: four requests for 2 are two calls of 4 rows, never one of 8.
    assert rows and max(rows) == 4
    assert all(c.prompt_tokens > 5 and 0 < c.completion_tokens <= 24 for c in completions)


def test_local_backend_generates_exactly_the_sequences_asked_for(model_cache, monkeypatch):
    """Requests for 1 and 3 completions at once get 1 and 3, and the model is never run on more rows
    than the 4 asked for (generating max(n) for each request would run 6); observed with a forward
    hook on the real model."""
    requests = [([{"role": "user", "content": f"Name a colour ({n})."}], n) for n in (1, 3)]
    (one, three), rows = generate_counting_rows(model_cache, monkeypatch, requests, max_tokens=4, seed=3)
    assert (len(one.texts), len(three.texts)) == (1, 3)
    assert 0 < one.completion_tokens <= 4 and 0 < three.completion_tokens <= 12
    assert rows and max(rows) <= 4


def test_local_backend_in_bfloat16_on_the_cpu(model_cache, monkeypatch):
    import asyncio

    import torch

    from w4s.llm.local import LocalBackend

    if model_cache:
        monkeypatch.setenv("W4S_CACHE_DIR", model_cache)
    backend = LocalBackend("local:smollm2-135m", dtype="bfloat16")
    full = LocalBackend("local:smollm2-135m", dtype="float32")
    assert backend.identity != full.identity  # its answers are cached apart from another dtype's

    async def scenario():
        try:
            return await backend.generate(
                [{"role": "user", "content": "Say hi."}],
                n=2,
                temperature=0.0,
                max_tokens=4,
                json_mode=False,
                seed=None,
            )
        finally:
            await backend.aclose()

    completion = asyncio.run(scenario())
    model, _ = backend.loaded()
    assert model.dtype == torch.bfloat16
    assert len(completion.texts) == 2 and completion.texts[0] == completion.texts[1]
    assert completion.prompt_tokens > 3 and 0 < completion.completion_tokens <= 8


def test_optimize_with_the_local_model_as_meta_agent_and_executor(model_cache, tmp_path, data_dir):
    env = {**os.environ}
    if model_cache:
        env["W4S_CACHE_DIR"] = model_cache
    run = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "w4s.cli",
            "optimize",
            "--task",
            "gsm8k",
            "--turns",
            "1",
            "--candidates",
            "2",
            "--repairs",
            "1",
            "--validation-limit",
            "2",
            "--test-limit",
            "2",
            "--sandbox-timeout-s",
            "300",
            "--data-dir",
            str(data_dir),
            "--out",
            str(run),
            "--meta-model",
            "local:smollm2-135m",
            "--meta-max-tokens",
            "160",
            "--executor-model",
            "local:smollm2-135m",
            "--executor-max-completion-tokens",
            "24",
            "--meta-cache-path",
            str(tmp_path / "meta.sqlite"),
            "--executor-cache-path",
            str(tmp_path / "ex.sqlite"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run / "trajectories.jsonl").read_text().splitlines()]
    assert [(r["turn"], r["candidate"]) for r in records] == [(1, 0), (1, 1)]
    assert all(r["reply"] for r in records) and all(r["reward"] is not None for r in records)
    report = json.loads((run / "report.json").read_text())
    assert report["meta_model"] == "local:smollm2-135m" and report["usage"]["meta"]["llm_calls"] >= 1
    assert (run / "curve.png").stat().st_size > 0 and (run / "best_workflow.py").exists()


def test_train_smollm2_with_lora_then_reload_and_generate(model_cache, tmp_path):
    from w4s.llm import models

    base = (
        os.path.join(model_cache, "models", "smollm2-135m")
        if model_cache
        else models.model_dir("smollm2-135m")
    )
    prompt = [
        {"role": "system", "content": "You write workflows."},
        {"role": "user", "content": "Solve: 2 + 3."},
    ]
    records = [
        {
            "episode": 0,
            "turn": 1,
            "candidate": i,
            "prompt_messages": prompt,
            "workflow": "x",
            "reply": "def solver(agent, task):\n    return {'answer': 5}" if i % 2 == 0 else "I do not know.",
            "reward": 1.0 if i % 2 == 0 else -0.1,
        }
        for i in range(4)
    ]
    data = tmp_path / "trajectories.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "w4s.cli",
            "train",
            "--trajectories",
            str(data),
            "--base-model",
            str(base),
            "--output",
            str(out),
            "--lora",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--learning-rate",
            "1e-4",
            "--max-length",
            "256",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["merged"] and summary["examples"] == 4

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    ids = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    generated = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]
