"""The local backend's progress lines: a plain log line while a generation runs (at most every
PROGRESS_INTERVAL_S seconds) and one with the totals when it ends, both with tokens/s."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from w4s.llm import local  # noqa: E402 - after the skips: it needs the local extra

LOGGER = "w4s.llm.local"
PROGRESS = re.compile(
    r"local:smollm2-135m: generating (\d+) sequences, (\d+) tokens so far \(step (\d+) of at most (\d+)\) "
    r"in \d+ s, [\d.]+ tokens/s"
)
TOTAL = re.compile(
    r"local:smollm2-135m: generated (\d+) tokens in (\d+) sequences in [\d.]+ s \((\d+) steps\), [\d.]+ tokens/s"
)


def _lines(caplog, pattern):
    return [m for r in caplog.records if r.name == LOGGER and (m := pattern.fullmatch(r.getMessage()))]


def test_the_criterion_logs_only_once_the_interval_has_passed(monkeypatch, caplog):
    """Without the model: a step logs when the interval has passed since the last line, never
    otherwise, counts the tokens that are not padding, and never stops a row."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    pad = 0
    ids = torch.tensor([[5, 6, 7, 8, pad], [pad, 6, 7, pad, pad]])  # prompt width 2: 2 and 1 tokens generated
    monkeypatch.setattr(local, "PROGRESS_INTERVAL_S", 3600.0)
    quiet = local._progress_criterion("local:smollm2-135m", 2, 2, 64, pad)
    assert not quiet(ids, None).any()
    assert quiet.steps == 1 and not caplog.records
    monkeypatch.setattr(local, "PROGRESS_INTERVAL_S", 0.0)
    chatty = local._progress_criterion("local:smollm2-135m", 2, 2, 64, pad)
    done = chatty(ids, None)
    assert done.shape == (2,) and done.dtype == torch.bool and not done.any()
    chatty(ids, None)
    assert [m.groups() for m in _lines(caplog, PROGRESS)] == [("2", "3", "1", "64"), ("2", "3", "2", "64")]


@pytest.mark.slow
def test_a_generation_logs_progress_and_totals_with_tokens_per_second(model_cache, monkeypatch, caplog):
    if model_cache:
        monkeypatch.setenv("W4S_CACHE_DIR", model_cache)
    monkeypatch.setattr(local, "PROGRESS_INTERVAL_S", 0.0)  # every step is past the interval
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario():
        backend = local.LocalBackend("local:smollm2-135m")
        try:
            return await backend.generate(
                [{"role": "user", "content": "Count from one to twenty in words."}],
                n=2,
                temperature=0.0,
                max_tokens=12,
                json_mode=False,
                seed=None,
            )
        finally:
            await backend.aclose()

    completion = asyncio.run(scenario())
    progress = [m.groups() for m in _lines(caplog, PROGRESS)]
    totals = [m.groups() for m in _lines(caplog, TOTAL)]
    assert len(progress) >= 2  # a generation of several steps, a line for each
    assert all(sequences == "2" and most == "12" for sequences, _, _, most in progress)
    steps = [int(step) for _, _, step, _ in progress]
    assert steps == list(range(1, len(steps) + 1))
    tokens = [int(count) for _, count, _, _ in progress]
    assert tokens == sorted(tokens) and 0 < tokens[-1] <= completion.completion_tokens
    assert totals == [(str(completion.completion_tokens), "2", str(len(steps)))]
