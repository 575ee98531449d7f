"""Run a workflow on a split of a task: answers from the sandbox, scores on the host, usage from the
gateway. This is the environment of the W4S decision process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from w4s.callbacks import CallbackHandler, EvaluationInfo, EvaluationProgress
from w4s.config import Config, check_version, option, positive
from w4s.errors import ConfigError
from w4s.llm.gateway import CALL_LOG, CallRecord, Gateway
from w4s.llm.limits import Budget, Usage
from w4s.llm.pricing import require_prices
from w4s.sandbox.code_scoring import CodeScorer
from w4s.sandbox.config import SandboxConfig
from w4s.sandbox.runner import RunnerFactory, SampleResult
from w4s.sandbox.workflow import WorkflowSandbox, run_lanes
from w4s.tasks.base import Sample, Task

# Answers larger than this (as they crossed from the sandbox) are scored off the event loop.
_SCORE_INLINE_BYTES = 64 * 1024


@dataclass
class EvaluationConfig(Config):
    split: str = option(
        "validation", "which split to score", lambda v: v in ("validation", "test"), "use validation or test"
    )
    limit: int | None = option(None, "score at most this many samples (a seeded subset)", positive)
    seed: int = option(0, "seed of the subset chosen by --limit (never the clock)")
    concurrency: int = option(8, "samples running at once", positive)
    budget_usd: float | None = option(None, "stop cleanly once the executor cost reaches this", positive)
    budget_calls: int | None = option(None, "stop cleanly after this many executor calls", positive)
    budget_tokens: int | None = option(None, "stop cleanly after this many executor tokens", positive)


@dataclass
class SampleTrace:
    """Everything a traced sample did: its executor calls and what the sandbox reported (spans)."""

    prompt: str
    started_ns: int
    ended_ns: int
    calls: list[CallRecord]
    spans: list[dict]


def traced(sample_id: str, rate: float) -> bool:
    """Whether ``sample_id`` is among the ``rate`` share of samples traced (the same ones every run)."""
    if rate <= 0:
        return False
    digest = hashlib.sha256(sample_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") < rate * (1 << 32)


@dataclass
class SampleOutcome:
    id: str
    score: float
    answer: Any
    error: str | None
    error_line: str | None = None
    wall_seconds: float = 0.0
    llm_calls: int = 0
    output: str = ""
    not_run: bool = False  # never run, or stopped by the budget: its score says nothing about the workflow
    trace: SampleTrace | None = None  # for callbacks that asked for traces; not part of the results

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "score": self.score,
            "answer": to_json(self.answer),
            "error": self.error,
            "error_line": self.error_line,
            "wall_seconds": round(self.wall_seconds, 4),
            "llm_calls": self.llm_calls,
            "not_run": self.not_run,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SampleOutcome:
        """What :meth:`to_dict` wrote (the answer as the JSON it was written as)."""
        return cls(
            data["id"],
            data["score"],
            data["answer"],
            data["error"],
            data.get("error_line"),
            data.get("wall_seconds", 0.0),
            data.get("llm_calls", 0),
            not_run=data.get("not_run", False),
        )


@dataclass
class EvaluationResult:
    """An evaluation's outcome; :meth:`to_dict` is the evaluation JSON (``w4s evaluate --json``)."""

    VERSION: ClassVar[int] = 1

    task: str
    split: str
    workflow: str
    score: float
    samples: list[SampleOutcome]
    usage: Usage
    wall_seconds: float
    budget_exhausted: str | None = None
    executor: str = ""
    sandbox: dict = field(default_factory=dict)  # the isolation actually applied (Sandbox.isolation)
    extra: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every sample ran to its end: only then does ``score`` measure the workflow on the split."""
        return not any(s.not_run for s in self.samples)

    def to_dict(self) -> dict:
        run = [s for s in self.samples if not s.not_run]
        return {
            "version": self.VERSION,
            "task": self.task,
            "split": self.split,
            "workflow": self.workflow,
            "executor": self.executor,
            "score": round(self.score, 6),
            "complete": self.complete,
            "samples_total": len(self.samples),
            "samples_run": len(run),
            "samples_failed": sum(1 for s in run if s.error and s.score == 0),
            "budget_exhausted": self.budget_exhausted,
            "sandbox": self.sandbox,
            "samples": [s.to_dict() for s in self.samples],
            "usage": self.usage.to_dict(),
            "wall_seconds": round(self.wall_seconds, 3),
        }

    @classmethod
    def from_dict(cls, data: dict) -> EvaluationResult:
        """Inverse of :meth:`to_dict`; ConfigError for a dict that is not one (or from a newer w4s)."""
        check_version(cls, data.get("version") if isinstance(data, dict) else None)
        try:
            return cls(
                task=data["task"],
                split=data["split"],
                workflow=data["workflow"],
                score=data["score"],
                samples=[SampleOutcome.from_dict(s) for s in data["samples"]],
                usage=Usage.from_dict(data["usage"]),
                wall_seconds=data["wall_seconds"],
                budget_exhausted=data.get("budget_exhausted"),
                executor=data.get("executor", ""),
                sandbox=data.get("sandbox") or {},
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"not an evaluation result ({type(exc).__name__}: {exc}); upgrade w4s or rerun"
            ) from None


_JSON_TEXT = 100_000  # characters of one string kept in results
_JSON_ITEMS = 10_000  # items of one list, set or dict kept in results
_JSON_INT_BITS = 10_000  # larger ints (over ~3,000 digits) are described, not written out


def to_json(value: Any) -> Any:
    """An answer (plain data) as strict JSON for results: tuples and sets become lists, bytes hex,
    non-finite floats and enormous ints strings, and long strings and containers are shortened."""
    if value is None or isinstance(value, bool | str):
        return value if not isinstance(value, str) or len(value) <= _JSON_TEXT else _clipped(value)
    if isinstance(value, int):
        return value if value.bit_length() <= _JSON_INT_BITS else f"<int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, list | tuple | set | frozenset):
        items = [to_json(v) for v in itertools.islice(value, _JSON_ITEMS)]
        if isinstance(value, set | frozenset):
            items.sort(key=repr)
        if len(value) > _JSON_ITEMS:
            items.append(f"... [{len(value) - _JSON_ITEMS} more items]")
        return items
    if isinstance(value, dict):
        pairs = itertools.islice(value.items(), _JSON_ITEMS)
        return {k if isinstance(k, str) else json.dumps(to_json(k)): to_json(v) for k, v in pairs}
    if isinstance(value, bytes):
        return to_json(value.hex())
    return repr(value)[:_JSON_TEXT]


def _clipped(text: str) -> str:
    return text[:_JSON_TEXT] + f" ... [{len(text) - _JSON_TEXT} more characters]"


def select(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A deterministic subset: ``limit`` samples drawn with ``seed``, kept in split order."""
    if limit is None or limit >= len(samples):
        return list(samples)
    chosen = sorted(random.Random(seed).sample(range(len(samples)), limit))
    return [samples[i] for i in chosen]


class _TaskHost:
    """What the workflow's agent reaches: the gateway, charged to this evaluation's budget, and the
    visible tests of code tasks."""

    def __init__(self, gateway: Gateway, budget: Budget, task: Task, samples: list[Sample]):
        self.gateway = gateway
        self.budget = budget
        self.task = task
        self.by_prompt = {s.prompt: s for s in samples}

    async def call_llm(self, request: dict) -> list[str]:
        return await self.gateway.call_llm(request, self.budget)

    async def public_tests(self, task: str, entry_point: str) -> list[str]:
        sample = self.by_prompt.get(task)
        if sample is None:
            raise LookupError("pass the task text you received to test_on_public_test")
        return self.task.public_tests(sample)


async def evaluate(
    source: str,
    task: Task,
    gateway: Gateway,
    cfg: EvaluationConfig | None = None,
    *,
    sandbox: SandboxConfig | None = None,
    data_dir: str | Path | None = None,
    samples: list[Sample] | None = None,
    workflow_label: str = "workflow",
    callbacks: CallbackHandler | None = None,
    purpose: str = "evaluation",
    runner: RunnerFactory = WorkflowSandbox,
) -> EvaluationResult:
    """Score ``source`` on ``cfg.split`` of ``task``. Raises only for infrastructure failures.

    The evaluation owns its budget (``cfg.budget_*``) and its code scorer: concurrent evaluations on
    one gateway never charge each other. ``score`` is the mean over the samples that ran to their
    end; samples that the budget kept from running, or stopped while they ran, are marked
    ``not_run`` and make the result incomplete. ``callbacks`` hear ``on_evaluation_start``, every
    ``on_sample_end`` and ``on_evaluation_end`` (``purpose`` says which evaluation of a run this is);
    ``runner`` makes the workflow's runner (the local sandbox by default).
    """
    cfg = cfg or EvaluationConfig()
    sandbox = sandbox or SandboxConfig()
    callbacks = callbacks or CallbackHandler()
    chosen = samples if samples is not None else select(task.load(cfg.split, data_dir), cfg.limit, cfg.seed)
    require_prices(cfg.budget_usd, executor=gateway)
    budget = Budget(cfg.budget_calls, cfg.budget_tokens, cfg.budget_usd)
    trace_rate = callbacks.trace_rate
    started = time.perf_counter()
    outcomes: list[SampleOutcome | None] = [None] * len(chosen)
    isolation: dict = {}
    progress = {"done": 0, "scored": 0, "total": 0.0}
    callbacks.emit(
        "on_evaluation_start", EvaluationInfo(task.name, cfg.split, workflow_label, len(chosen), purpose)
    )
    if sandbox.warm_jobs is None:  # a ready job for every lane, so a lane never waits for a fork
        sandbox = replace(sandbox, warm_jobs=min(cfg.concurrency, len(chosen)))
    # Code answers are scored in a sandbox of their own, made here: its life is this evaluation's.
    with CodeScorer(sandbox) if task.family == "code" else contextlib.nullcontext() as scorer:
        async with runner(source, _TaskHost(gateway, budget, task, chosen), sandbox) as box:
            isolation = box.isolation

            async def one(index: int) -> None:
                if budget.exhausted:
                    outcome = SampleOutcome(
                        chosen[index].id, 0.0, None, f"not run: {budget.exhausted}", not_run=True
                    )
                else:
                    sample = chosen[index]
                    calls = [] if traced(sample.id, trace_rate) else None
                    token, started_ns = CALL_LOG.set(calls), time.time_ns()
                    try:
                        result = await box.run(sample.prompt, index=index)
                    finally:
                        CALL_LOG.reset(token)
                    outcome = await _score(task, sample, result, scorer)
                    if calls is not None:
                        outcome.trace = SampleTrace(
                            sample.prompt, started_ns, time.time_ns(), calls, result.spans
                        )
                outcomes[index] = outcome
                progress["done"] += 1
                if not outcome.not_run:
                    progress["scored"] += 1
                    progress["total"] += outcome.score
                if callbacks:
                    mean = progress["total"] / progress["scored"] if progress["scored"] else 0.0
                    state = EvaluationProgress(progress["done"], len(chosen), mean, budget.usage.cost_usd)
                    callbacks.emit("on_sample_end", outcome, state)

            await run_lanes(len(chosen), cfg.concurrency, one)
    final = [o for o in outcomes if o is not None]
    ran = [o for o in final if not o.not_run]
    result = EvaluationResult(
        task=task.name,
        split=cfg.split,
        workflow=workflow_label,
        score=sum(o.score for o in ran) / len(ran) if ran else 0.0,
        samples=final,
        usage=budget.usage,
        wall_seconds=time.perf_counter() - started,
        budget_exhausted=(budget.exhausted or "the budget is spent") if len(ran) < len(final) else None,
        executor=gateway.model,
        sandbox=isolation,
    )
    callbacks.emit("on_evaluation_end", result)
    return result


async def answer(
    source: str,
    task: Task,
    gateway: Gateway,
    prompts: list[str],
    *,
    concurrency: int = 8,
    sandbox: SandboxConfig | None = None,
    budget: Budget | None = None,
    runner: RunnerFactory = WorkflowSandbox,
) -> list[SampleResult]:
    """Run ``source`` on each of ``prompts`` (inputs, not benchmark samples: nothing is scored), in
    order. A workflow failure is that prompt's ``error``; raises only for infrastructure failures.
    Code tasks' visible tests are not known for an input, so ``test_on_public_test`` fails there."""
    sandbox = sandbox or SandboxConfig()
    budget = budget or Budget()
    results: list[SampleResult | None] = [None] * len(prompts)
    if sandbox.warm_jobs is None:
        sandbox = replace(sandbox, warm_jobs=max(1, min(concurrency, len(prompts))))
    async with runner(source, _TaskHost(gateway, budget, task, []), sandbox) as box:

        async def one(index: int) -> None:
            results[index] = await box.run(prompts[index], index=index)

        await run_lanes(len(prompts), concurrency, one)
    return [r for r in results if r is not None]


async def _score(
    task: Task, sample: Sample, result: SampleResult, scorer: CodeScorer | None
) -> SampleOutcome:
    outcome = SampleOutcome(
        sample.id,
        0.0,
        result.answer,
        None,
        wall_seconds=result.wall_seconds,
        llm_calls=result.llm_calls,
        output=result.output,
    )
    if result.stopped is not None:
        outcome.not_run = True
        outcome.error = f"not run: stopped while it ran, {result.stopped}"
        return outcome
    if result.error is not None:
        outcome.error = f"{result.error['type']}: {result.error.get('message') or ''}".rstrip(": ")
        outcome.error_line = result.error.get("line")
        return outcome
    if scorer is not None or result.answer_bytes >= _SCORE_INLINE_BYTES:
        scored = await asyncio.to_thread(task.score, sample, result.answer, scorer=scorer)
    else:
        scored = task.score(sample, result.answer)
    outcome.score = scored.value
    if scored.value == 0 and scored.error:
        outcome.error = scored.error
    return outcome
