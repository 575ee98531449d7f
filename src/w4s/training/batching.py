"""Micro-batches bounded by tokens, not by examples.

Trajectory records are long prompts (system prompt, task, example workflows, feedback: ~2k tokens) with
short completions, and their lengths vary several-fold. A fixed number of examples per batch is either
wasteful (short records) or fatal (long ones: the memory of a step grows with its tokens). So the
examples are sorted by length and cut into consecutive runs whose cost stays within
``max_tokens_per_batch``:

- padding-free (the batch is one row of concatenated examples): the cost is the sum of the lengths;
- padded: every row is padded to the longest, so the cost is ``rows x longest``.

The batches are formed once (so their number, and the trainer's step count, never changes between
epochs or on resume) and visited in a seeded random order per epoch (``set_epoch``, which the
Trainer calls, makes a resumed run see the same order as the interrupted one).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler

from w4s.errors import ConfigError


def batch_cost(lengths: Sequence[int], padding_free: bool) -> int:
    """Tokens a micro-batch of examples of these lengths puts through the model."""
    if not lengths:
        return 0
    return sum(lengths) if padding_free else len(lengths) * max(lengths)


def token_batches(
    lengths: Sequence[int], max_tokens: int, max_examples: int, padding_free: bool
) -> list[list[int]]:
    """Indices of ``lengths`` cut into length-sorted batches of cost <= ``max_tokens`` and at most
    ``max_examples`` examples. An example longer than ``max_tokens`` on its own is a ConfigError."""
    longest = max(lengths, default=0)
    if longest > max_tokens:
        raise ConfigError(
            f"an example is {longest} tokens long, more than max_tokens_per_batch={max_tokens}; raise "
            "max_tokens_per_batch or lower max_length (with drop_long) to leave it out"
        )
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        candidate = [lengths[i] for i in current] + [lengths[index]]
        if current and (len(candidate) > max_examples or batch_cost(candidate, padding_free) > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """A batch sampler over :func:`token_batches`, shuffled per epoch with ``seed + epoch``."""

    def __init__(
        self, lengths: Sequence[int], max_tokens: int, max_examples: int, padding_free: bool, seed: int
    ):
        self.batches = token_batches(lengths, max_tokens, max_examples, padding_free)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        for index in order:
            yield list(self.batches[index])
