"""The RWR trainer: a transformers ``Trainer`` whose loss is the reward-weighted one of :mod:`loss`.

It is the cleanest equivalent of a TRL ``SFTTrainer`` subclass here: TRL's trainer would have to be
taught to carry a per-example weight through its own tokenisation and collator, while the pieces
it adds (chat templating, completion-only labels, dynamic padding) are a few lines in
:mod:`w4s.training.dataset`. Everything else — accelerate (one GPU, DDP, FSDP, DeepSpeed ZeRO-3),
bf16, gradient checkpointing, checkpoints and resume, MLflow reporting — is the Trainer's own.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler
from transformers import Trainer

from w4s.training.loss import completion_positions, weighted_loss, weighted_loss_on_positions


class LengthGroupedSampler(Sampler):
    """Shuffled, but each run of ``group`` examples is sorted by length, so that a batch holds
    examples of similar length and dynamic padding adds few pad tokens."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_batches: int = 16):
        self.lengths = lengths
        self.group = batch_size * group_batches
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        for start in range(0, len(order), self.group):
            chunk = order[start : start + self.group]
            yield from sorted(chunk, key=lambda i: -self.lengths[i])


class WeightedTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Our loss is already a per-example mean: let the Trainer average over accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._positions_supported = True

    def _get_train_sampler(self, *args, **kwargs):
        dataset = self.train_dataset
        if self.args.world_size == 1 and isinstance(dataset, list) and dataset and "input_ids" in dataset[0]:
            return LengthGroupedSampler(
                [len(r["input_ids"]) for r in dataset], self.args.per_device_train_batch_size, self.args.seed
            )
        return super()._get_train_sampler(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("weights")
        labels = inputs.pop("labels")
        if self._positions_supported:
            # Logits only where a completion token is predicted: prompts are long (examples, feedback)
            # and completions short, so this removes most of the vocabulary-sized work and memory.
            positions = completion_positions(labels)
            try:
                outputs = model(**inputs, use_cache=False, logits_to_keep=positions)
                loss = weighted_loss_on_positions(outputs.logits, labels, positions, weights)
                return (loss, outputs) if return_outputs else loss
            except TypeError:
                self._positions_supported = False  # this architecture has no logits_to_keep
        outputs = model(**inputs, use_cache=False)
        loss = weighted_loss(outputs.logits, labels, weights)
        return (loss, outputs) if return_outputs else loss
