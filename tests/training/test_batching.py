"""Micro-batches bounded by tokens: every example once per epoch, within the budget, resumable order."""

from __future__ import annotations

import random

import pytest

from w4s.errors import ConfigError
from w4s.training.batching import TokenBudgetBatchSampler, batch_cost, token_batches


def lengths(count=200, seed=0):
    rng = random.Random(seed)
    return [rng.randint(50, 2500) for _ in range(count)]


@pytest.mark.parametrize("padding_free", [False, True])
def test_batches_cover_every_example_once_within_the_budget(padding_free):
    sizes = lengths()
    batches = token_batches(sizes, max_tokens=8192, max_examples=16, padding_free=padding_free)
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))
    for batch in batches:
        assert len(batch) <= 16
        assert batch_cost([sizes[i] for i in batch], padding_free) <= 8192
    # Filled, not one example per batch: the budget is what bounds a batch of short examples.
    assert len(batches) < len(sizes) / 2


def test_padded_cost_counts_the_padding():
    assert batch_cost([10, 100], padding_free=False) == 200
    assert batch_cost([10, 100], padding_free=True) == 110
    # Padding-free fits more examples of mixed length into the same budget.
    sizes = lengths()
    assert len(token_batches(sizes, 8192, 64, True)) < len(token_batches(sizes, 8192, 64, False))


def test_an_example_over_the_budget_is_a_clear_error():
    with pytest.raises(ConfigError, match="3000 tokens long, more than max_tokens_per_batch=2048"):
        token_batches([100, 3000], max_tokens=2048, max_examples=8, padding_free=True)


def test_the_order_changes_per_epoch_and_replays_for_a_resumed_run():
    sizes = lengths()
    sampler = TokenBudgetBatchSampler(sizes, 8192, 16, True, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert first != second and sorted(map(tuple, first)) == sorted(map(tuple, second))
    again = TokenBudgetBatchSampler(sizes, 8192, 16, True, seed=3)
    again.set_epoch(1)
    assert list(again) == second  # a run resumed in epoch 1 sees the same batches in the same order
    assert len(sampler) == len(first)
