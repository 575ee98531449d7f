"""The RWR trainer: TRL's ``SFTTrainer`` with a per-example weight and token-bounded batches.

What TRL gives as usual: prompt-completion training with completion-only labels, PEFT from a
``peft_config``, padding-free batching (one row, position ids, varlen attention), the fused LM head
(on GPUs: log-probabilities computed in tiles at the labelled positions only, never the
vocabulary-sized logits), Liger's layer kernels, and the Trainer's accelerate integration (DDP, FSDP,
DeepSpeed ZeRO-3), bf16, gradient checkpointing, checkpoints and resume, MLflow reporting.

What w4s adds:
- the examples arrive tokenised (:func:`w4s.training.dataset.tokenize`: the chat template over prompt and
  completion together) with a ``weight`` column that the collator carries into each batch;
- micro-batches are bounded by tokens (:mod:`w4s.training.batching`), not by a number of examples;
- the loss is the reward-weighted one of :mod:`w4s.training.loss`: each example's mean NLL over its
  completion, times exp(reward / T), averaged over the batch's examples.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.data import DataLoader
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from w4s.training.batching import TokenBudgetBatchSampler
from w4s.training.loss import (
    IGNORE,
    completion_log_probs,
    completion_positions,
    sequence_ids,
    weighted_sequence_loss,
)

WEIGHT = "weight"


class WeightedCollator(DataCollatorForLanguageModeling):
    """TRL's collator (dynamic padding, or one padding-free row with position ids and cumulative
    sequence lengths for the varlen kernels) plus each example's RWR weight as ``weights``."""

    def torch_call(self, examples: list[dict]) -> dict:
        batch = super().torch_call([{k: v for k, v in e.items() if k != WEIGHT} for e in examples])
        batch["weights"] = torch.tensor([float(e[WEIGHT]) for e in examples], dtype=torch.float32)
        return batch


def fused_head_available(device: torch.device) -> bool:
    """Whether TRL's fused LM head scores only the labelled positions here (Triton on a GPU). Elsewhere it
    scores every position, and asking the model for the completion positions' logits is cheaper."""
    from trl.kernels.chunked_logprob import _use_triton

    return _use_triton(device)


class WeightedTrainer(SFTTrainer):
    def __init__(self, *args, max_tokens_per_batch: int, padding_free: bool, **kwargs):
        self.max_tokens_per_batch = max_tokens_per_batch
        self.pack = padding_free
        super().__init__(*args, **kwargs)
        # Our loss is already a per-example mean: let the Trainer average over accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._fused = None

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "labels", WEIGHT]

    @functools.cached_property
    def batch_sampler(self) -> TokenBudgetBatchSampler:
        """The token-bounded batches of the training set (formed once: the summary reads their count)."""
        lengths = [len(ids) for ids in self.train_dataset["input_ids"]]
        return TokenBudgetBatchSampler(
            lengths,
            self.max_tokens_per_batch,
            self.args.per_device_train_batch_size,
            self.pack,
            self.args.seed,
        )

    def get_train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset.select_columns(["input_ids", "labels", WEIGHT])
        loader = DataLoader(
            dataset,
            batch_sampler=self.batch_sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        # Several processes: accelerate hands the batches out in turn (each rank its own batches).
        return self.accelerator.prepare(loader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("weights")
        labels = inputs.pop("labels")
        inputs["use_cache"] = False
        sequence = sequence_ids(labels, inputs.get("position_ids"), self.pack)
        if self._fused is None:
            self._fused = fused_head_available(labels.device)
        if self._fused:
            outputs = model(**inputs, labels=labels, fused_lm_head=True)
            token_logp, mask, sequence = outputs.log_probs, outputs.label_mask, sequence[:, 1:]
        else:
            # Logits only where a completion token is predicted: prompts are long (examples, feedback) and
            # completions short, so this removes most of the vocabulary-sized work and memory.
            positions = completion_positions(labels)
            outputs = model(**inputs, logits_to_keep=positions)
            targets = labels[:, positions + 1]
            token_logp = completion_log_probs(outputs.logits, targets)
            mask, sequence = targets != IGNORE, sequence[:, positions + 1]
        loss = weighted_sequence_loss(token_logp, mask, sequence, weights)
        if self.model.training:
            self._metrics["train"]["completion_tokens"].append(float(mask.sum()))
        return (loss, outputs) if return_outputs else loss
