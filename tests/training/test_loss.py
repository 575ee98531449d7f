"""The batched weighted loss equals a per-sample loop, and weights steer learning."""

from __future__ import annotations

import math

import pytest
import torch

import w4s
from tests.training import tiny
from w4s.training.dataset import IGNORE
from w4s.training.loss import per_sequence_nll
from w4s.training.trainer import WeightedCollator


class Recorder(w4s.Callback):
    def __init__(self):
        self.metrics = []

    def on_log(self, metrics: dict) -> None:
        self.metrics.append(metrics)


def rows(generator):
    out = []
    for length, prompt in ((12, 5), (7, 3), (20, 15), (9, 8)):
        ids = torch.randint(3, len(tiny.WORDS), (length,), generator=generator).tolist()
        out.append(
            {
                "input_ids": ids,
                "labels": [IGNORE] * prompt + ids[prompt:],
                "weight": math.exp(float(torch.rand(1, generator=generator)) / 0.4),
            }
        )
    return out


def naive_loss(model, examples) -> torch.Tensor:
    """The reference shape: one sample at a time, its own token mean, times its weight, averaged."""
    total = 0.0
    for ex in examples:
        ids = torch.tensor([ex["input_ids"]])
        logits = model(input_ids=ids).logits[0]
        terms = []
        for t in range(len(ex["input_ids"]) - 1):
            target = ex["labels"][t + 1]
            if target != IGNORE:
                terms.append(-torch.log_softmax(logits[t].float(), dim=-1)[target])
        total = total + ex["weight"] * torch.stack(terms).mean()
    return total / len(examples)


def trainer_for(tmp_path, model, examples, padding_free):
    from datasets import Dataset
    from trl import SFTConfig

    from w4s.training.trainer import WeightedCollator, WeightedTrainer

    args = SFTConfig(
        output_dir=str(tmp_path / "checkpoints"),
        report_to=[],
        max_length=None,
        completion_only_loss=True,
        activation_checkpointing=False,
        bf16=False,
        per_device_train_batch_size=4,
    )
    return WeightedTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tiny.tokenizer(),
        data_collator=WeightedCollator(pad_token_id=0, padding_free=padding_free),
        max_tokens_per_batch=4096,
        padding_free=padding_free,
    )


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding-free"])
@pytest.mark.parametrize("fused", [False, True], ids=["completion-logits", "trl-fused-head"])
def test_batched_loss_equals_the_per_sample_loop(tmp_path, padding_free, fused):
    """The trainer's own loss on a collated batch, in each layout and through each way of scoring
    (TRL's fused head runs its PyTorch fallback here; on GPUs its Triton kernel)."""
    model = tiny.model().eval()
    examples = rows(torch.Generator().manual_seed(0))
    trainer = trainer_for(tmp_path, model, examples, padding_free)
    trainer._fused = fused
    trainer.model.eval()
    batch = WeightedCollator(pad_token_id=0, padding_free=padding_free)(examples)
    if padding_free:
        assert batch["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
        assert "attention_mask" not in batch  # no pad token anywhere
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        reference = naive_loss(model, examples)
    assert abs(float(loss) - float(reference)) < 1e-5


def test_the_reference_trainers_loss_equals_the_per_sample_loop():
    """per_sequence_nll (full logits: the reference-style trainer of perf/train_speed.py) on a padded batch."""
    model = tiny.model().eval()
    examples = rows(torch.Generator().manual_seed(0))
    batch = WeightedCollator(pad_token_id=0)(examples)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        full = (per_sequence_nll(logits, batch["labels"]) * batch["weights"]).mean()
        reference = naive_loss(model, examples)
    assert abs(float(full) - float(reference)) < 1e-5


def test_padding_is_dynamic_and_labels_mask_the_prompt():
    batch = WeightedCollator(pad_token_id=0)(rows(torch.Generator().manual_seed(1)))
    assert batch["input_ids"].shape == (4, 20)  # the longest row, not a fixed maximum
    assert (batch["labels"][1, 7:] == IGNORE).all() and (batch["attention_mask"][1, 7:] == 0).all()
    assert (batch["labels"][0, :5] == IGNORE).all()
    assert batch["weights"].shape == (4,)


def log_prob(model, tok, prompt, completion) -> float:
    prompt_ids = tok(
        tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False), add_special_tokens=False
    )["input_ids"]
    completion_ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return float(sum(logp[len(prompt_ids) + i - 1, token] for i, token in enumerate(completion_ids)))


@pytest.mark.parametrize("lora", [False, True])
def test_weights_steer_learning(tmp_path, lora):
    import json

    from w4s.training.config import TrainConfig

    base = tiny.save_base(tmp_path / "base")
    prompt = [{"role": "system", "content": "write a workflow"}, {"role": "user", "content": "task 1 2 3"}]
    records = []
    for i in range(8):
        good = i % 2 == 0
        records.append(
            {
                "episode": 0,
                "turn": 1 + i // 4,
                "candidate": i % 4,
                "prompt_messages": prompt,
                "reply": "good answer is 7" if good else "bad answer is 3",
                "reward": 1.0 if good else -0.1,
                "workflow": "x" if good else None,
            }
        )
    path = tmp_path / "trajectories.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    tok = tiny.tokenizer()
    before = tiny.model()
    gap_before = log_prob(before, tok, prompt, "good answer is 7") - log_prob(
        before, tok, prompt, "bad answer is 3"
    )
    cfg = TrainConfig(
        base_model=str(base),
        output=str(tmp_path / "out"),
        lora=lora,
        lora_r=8,
        learning_rate=3e-3 if lora else 1e-3,
        max_steps=12,
        batch_size=4,
        warmup_ratio=0.0,
        max_length=64,
        save_steps=1000,
        mlflow=False,
    )
    logged = Recorder()
    summary = w4s.train(path, cfg, callbacks=[logged])
    from transformers import AutoModelForCausalLM

    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    gap_after = log_prob(after, tok, prompt, "good answer is 7") - log_prob(
        after, tok, prompt, "bad answer is 3"
    )
    assert gap_after > gap_before + 0.5, (gap_before, gap_after)
    assert summary.steps == 12 and summary.examples == 8 and summary.merged is lora
    assert [m["step"] for m in logged.metrics if "loss" in m] == list(range(1, 13))  # on_log at each step
    assert json.loads((tmp_path / "out" / "training_summary.json").read_text())["final_loss"] is not None
