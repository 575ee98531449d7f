"""Trajectories -> reward-weighted chat examples, tokenised with the model's own chat template.

An example is the prompt the meta-agent saw for a candidate (system prompt, initial prompt, and the
selected actions and observations of the earlier turns in its context window: the record's
``prompt_messages``) and, as completion, the candidate's reply. Its weight is exp(reward / T).
Only completion tokens carry loss (labels -100 elsewhere).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from w4s.errors import ConfigError
from w4s.training.config import TrainConfig

IGNORE = -100


@dataclass
class Example:
    messages: list[dict]
    completion: str
    reward: float
    weight: float
    source: str


def read_records(paths: list[str | Path]) -> list[dict]:
    records = []
    for path in paths:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"trajectory file {path} does not exist")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise ConfigError(
                    f"{path}:{number} is not a JSON line; is this a w4s trajectories file?"
                ) from None
    return records


def build_examples(records: list[dict], cfg: TrainConfig) -> list[Example]:
    if not records:
        raise ConfigError("the trajectory files hold no records; run `w4s optimize` first")
    for field in ("episode", "turn", "prompt_messages", "reply", "reward"):
        if any(field not in r for r in records):
            raise ConfigError(
                f"some trajectory records lack {field!r}; they were not written by w4s optimize"
            )
    kept = list(records)
    if cfg.only_success_episodes:
        good = {r["episode"] for r in kept if (r["reward"] or 0) >= 1.0}
        kept = [r for r in kept if r["episode"] in good]
    if cfg.drop_failed:
        kept = [r for r in kept if r.get("workflow")]
    if cfg.turns is not None:
        kept = [r for r in kept if r["turn"] in set(cfg.turns)]
    if not kept:
        raise ConfigError(
            "no trajectory records are left after the filters (only_success_episodes, drop_failed, turns)"
        )
    rewards = {float(r["reward"]) for r in kept}
    if len(rewards) == 1 and not cfg.allow_uniform_weights:
        raise ConfigError(
            f"every reward equals {rewards.pop()}: weighting cannot steer anything (RWR would be plain SFT); "
            "collect more turns, or set allow_uniform_weights"
        )
    return [
        Example(
            r["prompt_messages"],
            r["reply"],
            float(r["reward"]),
            math.exp(float(r["reward"]) / cfg.temperature),
            f"episode {r['episode']} turn {r['turn']} candidate {r.get('candidate')}",
        )
        for r in kept
    ]


def tokenize(examples: list[Example], tokenizer, cfg: TrainConfig) -> list[dict]:
    """input_ids, labels (completion only) and weight per example; no padding here."""
    rows, too_long = [], []
    for example in examples:
        prompt = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion_ids = completion_ids + [tokenizer.eos_token_id]
        ids = prompt_ids + completion_ids
        if len(ids) > cfg.max_length:
            too_long.append((example.source, len(ids)))
            continue
        rows.append(
            {
                "input_ids": ids,
                "labels": [IGNORE] * len(prompt_ids) + completion_ids,
                "weight": example.weight,
            }
        )
    if too_long and not cfg.drop_long:
        worst = max(too_long, key=lambda item: item[1])
        raise ConfigError(
            f"{len(too_long)} examples are longer than max_length={cfg.max_length} tokens (longest: {worst[0]}, "
            f"{worst[1]} tokens); raise max_length or set drop_long"
        )
    if not rows:
        raise ConfigError(f"every example is longer than max_length={cfg.max_length}; raise max_length")
    return rows


class Collator:
    """Dynamic padding: each batch is padded to its own longest sequence, never to max_length."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
        weights = torch.tensor([float(r["weight"]) for r in rows], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}
