"""The gateway: the only holder of the executor's key, and the host side of every ``agent.call_llm``.

It adds what workflows must not control: the response cache, retries with jittered backoff that
honour ``Retry-After``, client-side rate limits and a global concurrency cap, each caller's budget
(held per request, so concurrent evaluations never charge each other), filling in choices when a
server ignores ``n``, and usage and cost accounting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from w4s.errors import BudgetExceeded, ConfigError, InfrastructureError
from w4s.llm.backends import (
    OPENAI_URL,
    Backend,
    Completion,
    OpenAIBackend,
    Rejected,
    Retryable,
    Unreachable,
    estimate_tokens,
)
from w4s.llm.cache import ResponseCache, request_key
from w4s.llm.config import EndpointConfig
from w4s.llm.limits import Budget, RateLimiter, Usage
from w4s.llm.pricing import PriceTable

log = logging.getLogger(__name__)

_MAX_RETRY_AFTER_S = 300.0
EXECUTOR_API_KEYS = "W4S_EXECUTOR_API_KEY,OPENAI_API_KEY"
META_API_KEYS = "W4S_META_API_KEY,OPENAI_API_KEY"
_TEMPLATE_TOKENS = 16  # chat-template tokens around one message, generously
_TEMPLATE_BASE_TOKENS = 256  # and around the whole prompt (some templates add a default system prompt)


def default_cache_path() -> Path:
    root = os.environ.get("W4S_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "w4s")
    return Path(root) / "llm-cache.sqlite"


def api_key_from_env(names: str) -> str | None:
    for name in (n.strip() for n in names.split(",")):
        if name and os.environ.get(name):
            return os.environ[name]
    return None


def make_backend(cfg: EndpointConfig) -> Backend:
    if cfg.model.startswith("local:"):
        from w4s.llm.local import LocalBackend

        return LocalBackend(cfg.model, batch_size=cfg.local_batch_size, dtype=cfg.local_dtype)
    base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
    names = cfg.api_key_env or EXECUTOR_API_KEYS
    key = api_key_from_env(names)
    if key is None and base_url.startswith(OPENAI_URL):
        raise ConfigError(f"no API key for {base_url}: set one of {names.replace(',', ', ')}")
    return OpenAIBackend(
        cfg.model,
        base_url,
        key,
        cfg.timeout_s,
        connections=cfg.concurrency,
        max_response_bytes=cfg.max_response_bytes,
    )


def build_messages(request: dict) -> list[dict]:
    """The chat messages of an ``agent.call_llm`` request, with its role and instructions as system text."""
    messages = [dict(m) for m in request.get("messages") or []]
    system = []
    if request.get("agent_role"):
        system.append(f"You are {request['agent_role']}.")
    if request.get("instructions"):
        system.append(str(request["instructions"]))
    if system:
        if messages and messages[0].get("role") == "system":
            messages[0]["content"] = "\n\n".join([*system, messages[0].get("content", "")])
        else:
            messages.insert(0, {"role": "system", "content": "\n\n".join(system)})
    return messages


@dataclass
class CallRecord:
    """One answered chat request, as hooks and traces see it."""

    model: str
    messages: list[dict]
    texts: list[str]
    cached_choices: int
    seconds: float
    usage: Usage  # this request's own: calls, tokens, cost, retries
    started_ns: int = 0  # wall-clock start (time.time_ns), for trace spans


CallHook = Callable[[CallRecord], None]

# Where the requests of the code running now are recorded, when someone traces it (an evaluation
# sets it around a sampled sample; the tasks serving that sample's calls inherit it).
CALL_LOG: ContextVar[list[CallRecord] | None] = ContextVar("w4s_call_log", default=None)


class Gateway:
    """Answers chat requests for one model; shared by every sample of a run, and by any number of
    evaluations at once. Use it as ``async with Gateway(cfg) as gateway``.

    A budget belongs to whoever spends it (one evaluation, one optimization run): callers pass their
    :class:`Budget` with each request, and it is charged and held against only that budget. ``usage``
    accumulates over the gateway's life.
    """

    def __init__(self, cfg: EndpointConfig | None = None, backend: Backend | None = None):
        self.cfg = cfg or EndpointConfig()
        self.backend = backend or make_backend(self.cfg)
        self.model = self.cfg.model
        self.prices = PriceTable.load(self.cfg.prices_path)
        self.cache = (
            None
            if self.cfg.cache_path == "off"
            else ResponseCache(self.cfg.cache_path or default_cache_path())
        )
        self.usage = Usage()
        self._requests = RateLimiter(self.cfg.requests_per_minute)
        self._tokens = RateLimiter(self.cfg.tokens_per_minute)
        self._slots: asyncio.Semaphore | None = None
        self.hooks: list[CallHook] = []  # called after every answered chat request

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.backend.aclose()
        if self.cache is not None:
            self.cache.close()

    # --- the AgentHost side ----------------------------------------------------------------------
    async def call_llm(self, request: dict, budget: Budget | None = None) -> list[str]:
        """A workflow's request, charged to ``budget``: its ``n`` and completion length are capped by
        this gateway's config."""
        n = int(request.get("n") or 1)
        if not 1 <= n <= self.cfg.max_n:
            raise ValueError(f"num_of_response must be between 1 and {self.cfg.max_n} (the executor's limit)")
        asked = request.get("max_completion_tokens")
        max_tokens = self.cfg.max_completion_tokens if asked is None else int(asked)
        if max_tokens < 1:
            raise ValueError("max_completion_tokens must be at least 1")
        temperature = float(request.get("temperature", 1.0))
        if not 0.0 <= temperature <= 2.0:  # NaN fails this too
            raise ValueError("temperature must be between 0 and 2")
        return await self.chat(
            build_messages(request),
            n=n,
            temperature=temperature,
            max_tokens=min(max_tokens, self.cfg.max_completion_tokens),
            json_mode=request.get("response_format") == "json",
            budget=budget,
        )

    # --- chat ------------------------------------------------------------------------------------
    async def chat(
        self,
        messages: list[dict],
        *,
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int | None = None,
        json_mode: bool = False,
        seed: int | None = None,
        budget: Budget | None = None,
    ) -> list[str]:
        """``n`` completions, from the cache where it has them; the rest from the backend.

        ``seed`` replaces the configured seed for this request (the optimizer derives one per
        episode, turn and candidate, so that its samples differ where they should). ``budget`` is
        charged, and must cover each request's worst case before it is sent (none: no limit).
        """
        started = time.perf_counter()
        started_ns = time.time_ns()
        budget = budget or Budget()
        ledgers = (self.usage, budget.usage, Usage())  # the gateway's, the budget's, this call's
        texts = await self._chat(
            budget,
            ledgers,
            messages,
            n,
            temperature,
            max_tokens or self.cfg.max_completion_tokens,
            json_mode,
            self.cfg.seed if seed is None else seed,
        )
        traced = CALL_LOG.get()
        if self.hooks or traced is not None:
            spent, seconds = ledgers[2], time.perf_counter() - started
            record = CallRecord(self.model, messages, texts, spent.cached_calls, seconds, spent, started_ns)
            if traced is not None:
                traced.append(record)
            for hook in self.hooks:
                hook(record)
        return texts

    async def _chat(
        self,
        budget: Budget,
        ledgers: tuple[Usage, ...],
        messages: list[dict],
        n: int,
        temperature: float,
        max_tokens: int,
        json_mode: bool,
        seed: int | None,
    ) -> list[str]:
        params = {"temperature": temperature, "max_tokens": max_tokens, "json": json_mode, "seed": seed}
        if self.cache is None:
            key, texts = "", {}
        else:  # hashing the request is only needed to look it up and store it
            key = request_key(self.backend.identity, self.cfg.model_revision, messages, params)
            texts = self.cache.get(key, n)
        if len(texts) == n:
            for usage in ledgers:
                usage.cached_calls += 1
            return [texts[i] for i in range(n)]
        missing = [i for i in range(n) if i not in texts]
        first = await self._request(
            budget, ledgers, messages, len(missing), temperature, max_tokens, json_mode, seed
        )
        self._store(key, texts, missing[: len(first.texts)], first.texts)
        missing = missing[len(first.texts) :]
        if missing:
            # The server ignored n (llama.cpp, `transformers serve`): ask for the rest one by one,
            # each with its own seed so that seeded servers do not repeat the same sample.
            seeds = [None if seed is None else seed + i for i in missing]
            extra = await asyncio.gather(
                *(
                    self._request(budget, ledgers, messages, 1, temperature, max_tokens, json_mode, seed)
                    for seed in seeds
                )
            )
            for index, completion in zip(missing, extra, strict=True):
                self._store(key, texts, [index], completion.texts[:1])
        return [texts[i] for i in range(n)]

    def _store(self, key: str, texts: dict[int, str], indices: list[int], values: list[str]) -> None:
        for index, value in zip(indices, values, strict=False):
            texts[index] = value
            if self.cache is not None:
                self.cache.put(key, index, [value], 0, 0)

    async def _request(
        self,
        budget: Budget,
        ledgers: tuple[Usage, ...],
        messages: list[dict],
        n: int,
        temperature: float,
        max_tokens: int,
        json_mode: bool,
        seed: int | None,
    ) -> Completion:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.cfg.concurrency)
        estimate = sum(estimate_tokens(str(m.get("content", ""))) for m in messages) + max_tokens * n
        prompt_bound = prompt_token_bound(messages)
        retries = connects = 0
        while True:
            budget.check()
            await self._requests.acquire()
            await self._tokens.acquire(estimate)
            try:
                async with self._slots:
                    # Checked again now that it is about to go out, and its worst case held until its
                    # usage is accounted: requests that waited for a slot cannot overshoot together.
                    worst = (
                        prompt_bound + n * max_tokens,
                        self.prices.cost(self.model, prompt_bound, n * max_tokens),
                    )
                    try:
                        held = budget.reserve(*worst)
                    except BudgetExceeded:
                        if not budget.holding:
                            raise
                        held = await budget.reserve_when_room(*worst)
                    try:
                        completion = await self.backend.generate(
                            messages,
                            n=n,
                            temperature=temperature,
                            max_tokens=max_tokens,
                            json_mode=json_mode,
                            seed=seed,
                        )
                        self._account(ledgers, completion, messages, prompt_bound, n * max_tokens)
                    except Rejected as exc:
                        if exc.billed:  # the work was done (and paid for), the reply not taken: worst case
                            spent = Completion([], prompt_bound, n * max_tokens)
                            self._account(ledgers, spent, messages, prompt_bound, n * max_tokens)
                        raise
                    finally:
                        budget.release(held)
            except Retryable as exc:
                if retries >= self.cfg.max_retries:
                    raise InfrastructureError(
                        f"the executor kept failing after {retries + 1} tries ({exc}); check the server, or raise "
                        "max_retries"
                    ) from None
                delay = exc.retry_after if exc.retry_after is not None else self._backoff(retries)
                retries += 1
                self._count_retry(ledgers)
                log.debug("retrying in %.2f s: %s", delay, exc)
                await asyncio.sleep(min(delay, _MAX_RETRY_AFTER_S))
                continue
            except Unreachable as exc:
                if connects >= self.cfg.connect_retries:
                    where = getattr(self.backend, "base_url", self.model)
                    raise InfrastructureError(
                        f"the executor at {where} is unreachable ({exc}); check --executor-base-url and that the "
                        "server is running"
                    ) from None
                connects += 1
                self._count_retry(ledgers)
                await asyncio.sleep(self._backoff(connects - 1))
                continue
            except Rejected:
                raise
            self._tokens.refund(max(0, estimate - completion.prompt_tokens - completion.completion_tokens))
            return completion

    def _backoff(self, attempt: int) -> float:
        return min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2**attempt) * random.uniform(0.5, 1.5)

    @staticmethod
    def _count_retry(ledgers: tuple[Usage, ...]) -> None:
        for usage in ledgers:
            usage.retries += 1

    def _account(
        self,
        ledgers: tuple[Usage, ...],
        completion: Completion,
        messages: list[dict],
        prompt_bound: int,
        completion_bound: int,
    ) -> None:
        """Charge the ledgers. Usage a server reports is checked: missing numbers are estimated, and
        impossible ones (not an integer, negative, beyond what the request could use) are clamped and
        counted, so no server can refund a budget or charge it more than the request's worst case."""
        reported = (completion.prompt_tokens, completion.completion_tokens)
        prompt, bad_prompt = _checked_count(
            reported[0],
            prompt_bound,
            lambda: sum(estimate_tokens(str(m.get("content", ""))) for m in messages),
        )
        used, bad_used = _checked_count(
            reported[1], completion_bound, lambda: sum(estimate_tokens(t) for t in completion.texts)
        )
        clamped = bad_prompt or bad_used
        if clamped:
            log.warning(
                "the executor reported impossible usage (prompt %r, completion %r tokens): clamped",
                completion.prompt_tokens,
                completion.completion_tokens,
            )
        completion.prompt_tokens, completion.completion_tokens = prompt, used
        cost = self.prices.cost(self.model, prompt, used)
        for usage in ledgers:
            usage.llm_calls += 1
            usage.prompt_tokens += prompt
            usage.completion_tokens += used
            usage.cost_usd += cost
            usage.usage_clamped += clamped


def _checked_count(value, bound: int, estimate: Callable[[], int]) -> tuple[int, bool]:
    """A reported token count, or the estimate where none was reported, within [0, bound]; and
    whether the report was impossible (not an integer, negative, or beyond ``bound``)."""
    if value is None:
        return min(estimate(), bound), False
    if type(value) is not int or value < 0:  # bool, float, string; a negative count would refund
        return min(estimate(), bound), True
    if value > bound:
        return bound, True
    return value, False


def prompt_token_bound(messages: list[dict]) -> int:
    """An upper bound on the prompt tokens of ``messages``: a token of a byte-level tokenizer covers at
    least one byte, plus what a chat template adds around each message."""
    return (
        sum(len(str(m.get("content", "")).encode()) + _TEMPLATE_TOKENS for m in messages)
        + _TEMPLATE_BASE_TOKENS
    )
