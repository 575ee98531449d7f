"""Perf suite for RLAO training: w4s's trainer against a reference-style trainer, same model and data.

w4s: ``WeightedTrainer`` (batched, dynamic padding, logits only at completion positions).
Reference (the shape of the W4S code): a Python loop over samples, each padded to ``max_length``,
full logits, its weighted loss, backward; an optimizer step per batch.
Both see the same examples in the same order and count real (unpadded) tokens per second.

Usage: python perf/train_speed.py [--device cpu|cuda] [--shape tiny|qwen0.5b] [--steps 6]
       python perf/train_speed.py --device cuda --model HF_FOLDER --batch 16 --out result.json
Writes perf/results/train_speed-<device>-<shape>.json (or --out); on CUDA with peak GPU memory per path.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from w4s.training.dataset import IGNORE
from w4s.training.loss import per_sequence_nll
from w4s.training.trainer import WeightedCollator

HERE = Path(__file__).resolve().parent
SHAPES = {
    # small enough for 2 CPU cores
    "tiny": dict(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
    ),
    # Qwen2.5-0.5B's shape, random weights
    "qwen0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
}


def make_model(shape: str, device: str, dtype, path: str | None = None):
    from transformers import (
        AutoModelForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(0)
    if path:  # a real model (a Hugging Face folder), e.g. Qwen2.5-Coder-1.5B-Instruct
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    elif shape == "qwen0.5b":
        model = Qwen2ForCausalLM(
            Qwen2Config(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=True)
        )
    else:
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape], max_position_embeddings=4096))
    return model.to(device=device, dtype=dtype)


def make_rows(count: int, vocab: int, max_length: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt = rng.randint(max_length // 8, max_length // 2)
        completion = rng.randint(16, max_length // 8)
        ids = [rng.randrange(3, vocab) for _ in range(prompt + completion)]
        rows.append(
            {
                "input_ids": ids,
                "labels": [IGNORE] * prompt + ids[prompt:],
                "weight": math.exp(rng.choice([1.0, 0.5, 0.0, -0.1]) / 0.4),
            }
        )
    return rows


def placeholder_tokenizer():
    """SFTTrainer wants a tokenizer; the rows here are token ids already, so any will do."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<pad>")


def run_w4s(
    model, rows, batch: int, steps: int, device: str, bf16: bool, padding_free: bool, max_length: int
) -> float:
    """Seconds from the start of training to its end (the Trainer's own set-up excluded)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig

    from w4s.training.trainer import WeightedCollator, WeightedTrainer

    marks: list[float] = []

    class Clock(TrainerCallback):
        def _mark(self):
            if device == "cuda":
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

        def on_train_begin(self, args, state, control, **kwargs):
            self._mark()

        def on_train_end(self, args, state, control, **kwargs):
            self._mark()

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=steps,
            learning_rate=1e-5,
            report_to=[],
            save_strategy="no",
            logging_steps=1000,
            bf16=bf16,
            activation_checkpointing=False,
            max_length=None,
            completion_only_loss=True,
            use_cpu=device == "cpu",
            dataloader_pin_memory=False,
            disable_tqdm=True,
            seed=0,
        )
        trainer = WeightedTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows[: batch * steps]),
            processing_class=placeholder_tokenizer(),
            data_collator=WeightedCollator(pad_token_id=0, padding_free=padding_free),
            callbacks=[Clock()],
            # the same examples per step as the reference: the token budget never binds before `batch` does
            max_tokens_per_batch=batch * max_length,
            padding_free=padding_free,
        )
        trainer.train()
        return marks[-1] - marks[0]


def run_reference(model, rows, batch: int, steps: int, max_length: int, device: str, dtype) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for step in range(steps):
        optimizer.zero_grad()
        for row in rows[step * batch : (step + 1) * batch]:
            padded = WeightedCollator(pad_token_id=0)(
                [row] + [{"input_ids": [0] * max_length, "labels": [IGNORE] * max_length, "weight": 0.0}]
            )  # pad to max_length, keep the sample row
            ids = padded["input_ids"][:1].to(device)
            mask = padded["attention_mask"][:1].to(device)
            labels = padded["labels"][:1].to(device)
            with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
                logits = model(input_ids=ids, attention_mask=mask).logits
            loss = per_sequence_nll(logits, labels)[0] * row["weight"] / batch
            loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _reset_peak(device: str) -> None:
    if device == "cuda":
        gc.collect()  # the previous run's model, so that its memory is not counted again
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    """Peak GPU memory since the last reset (then resets), GiB; None on the CPU."""
    if device != "cuda":
        return None
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    _reset_peak(device)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument(
        "--padding-free",
        choices=["auto", "true", "false"],
        default="auto",
        help="w4s's layout: one row without pad tokens, or padded rows (auto: padding-free on CUDA)",
    )
    parser.add_argument("--model", help="a Hugging Face model folder to train instead of a random --shape")
    parser.add_argument(
        "--out", help="JSON file to write (default perf/results/train_speed-<device>-<shape>.json)"
    )
    args = parser.parse_args()
    shape = "model" if args.model else args.shape or ("qwen0.5b" if args.device == "cuda" else "tiny")
    max_length = args.max_length or (2048 if args.device == "cuda" else 1024)
    bf16 = args.device == "cuda" and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    fresh_model = partial(make_model, shape, args.device, torch.float32, args.model)
    if args.model:
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(args.model).vocab_size
    else:
        vocab = SHAPES[shape]["vocab_size"]
    rows = make_rows(args.batch * args.steps, vocab, max_length)
    tokens = sum(len(r["input_ids"]) for r in rows)
    # Warm up both paths once (kernels, allocator), then measure.
    padding_free = args.padding_free == "true" or (args.padding_free == "auto" and args.device == "cuda")
    run_w4s(fresh_model(), rows, args.batch, 1, args.device, bf16, padding_free, max_length)
    _reset_peak(args.device)
    w4s_seconds = run_w4s(
        fresh_model(), rows, args.batch, args.steps, args.device, bf16, padding_free, max_length
    )
    w4s_peak = _peak_gib(args.device)
    reference_seconds = run_reference(
        fresh_model(),
        rows,
        args.batch,
        args.steps,
        max_length,
        args.device,
        dtype,
    )
    result = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "shape": shape,
        "max_length": max_length,
        "batch": args.batch,
        "padding_free": padding_free,
        "steps": args.steps,
        "real_tokens": tokens,
        "w4s_tokens_per_second": round(tokens / w4s_seconds, 1),
        "reference_tokens_per_second": round(tokens / reference_seconds, 1),
        "ratio": round(reference_seconds / w4s_seconds, 2),
        "target": ">= 3x",
        "model": args.model,
        "w4s_peak_gpu_gib": w4s_peak,
        "reference_peak_gpu_gib": _peak_gib(args.device),
    }
    out = Path(args.out) if args.out else HERE / "results" / f"train_speed-{args.device}-{shape}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{shape} on {args.device}: w4s {result['w4s_tokens_per_second']} tokens/s, reference "
        f"{result['reference_tokens_per_second']} tokens/s -> {result['ratio']}x (target >= 3x)"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
