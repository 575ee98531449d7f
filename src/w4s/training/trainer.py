"""The RWR trainer: a transformers ``Trainer`` whose loss is the reward-weighted one of :mod:`loss`.

It is the cleanest equivalent of a TRL ``SFTTrainer`` subclass here: TRL's trainer would have to be
taught to carry a per-example weight through its own tokenisation and collator, while the pieces
it adds (chat templating, completion-only labels, dynamic padding) are a few lines in
:mod:`w4s.training.dataset`. Everything else — accelerate (one GPU, DDP, FSDP, DeepSpeed ZeRO-3),
bf16, gradient checkpointing, checkpoints and resume, MLflow reporting — is the Trainer's own.
"""

from __future__ import annotations

from transformers import Trainer

from w4s.training.loss import completion_positions, weighted_loss, weighted_loss_on_positions


class WeightedTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Our loss is already a per-example mean: let the Trainer average over accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._positions_supported = True

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
