"""The gateway against a real HTTP server: replies, faults, retries, n-fill, cache, budget, cost."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from w4s.errors import BudgetExceeded, InfrastructureError
from w4s.llm.backends import Rejected
from w4s.llm.config import EndpointConfig
from w4s.llm.gateway import Gateway, build_messages
from w4s.llm.limits import Budget, RateLimiter

MESSAGES = [{"role": "user", "content": "2+2?"}]


def gateway(server, tmp_path, **overrides) -> Gateway:
    settings = {
        "model": "gpt-4o-mini",
        "base_url": server.url,
        "cache_path": str(tmp_path / "cache.sqlite"),
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_s": 5.0,
    }
    settings.update(overrides)
    return Gateway(EndpointConfig(**settings))


def run(coro):
    return asyncio.run(coro)


async def chat(gw, *args, **kwargs):
    try:
        return await gw.chat(*args, **kwargs)
    finally:
        await gw.aclose()


def test_reply_usage_and_cost(executor_server, tmp_path):
    executor_server.script(rules=[{"match": r"2\+2", "reply": "four is the answer"}])
    gw = gateway(executor_server, tmp_path)
    assert run(chat(gw, MESSAGES, n=2, temperature=0.0)) == ["four is the answer"] * 2
    usage = gw.usage
    assert (usage.llm_calls, usage.prompt_tokens, usage.completion_tokens) == (1, 4, 8)
    assert usage.cost_usd == pytest.approx((4 * 0.15 + 8 * 0.60) / 1e6)


def test_fewer_choices_than_n_are_filled_in(executor_server, tmp_path):
    executor_server.script(ignore_n=True, rules=[{"match": ".", "reply": "r"}])
    gw = gateway(executor_server, tmp_path)
    assert run(chat(gw, MESSAGES, n=4, temperature=0.7)) == ["r"] * 4
    assert executor_server.stats()["requests"] == 4 and gw.usage.llm_calls == 4


def test_a_429_storm_is_ridden_out_honouring_retry_after(executor_server, tmp_path):
    executor_server.script(faults=[{"kind": "429", "count": 5, "retry_after": 0.2}])
    gw = gateway(executor_server, tmp_path)
    started = time.perf_counter()
    assert run(chat(gw, MESSAGES)) == ["echo:2+2?"]
    # A lower bound only (sleeps never end early): Retry-After was waited for, not the 10 ms backoff.
    assert time.perf_counter() - started >= 5 * 0.2
    assert gw.usage.retries == 5 and executor_server.stats()["requests"] == 6


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "500", "count": 2},
        {"kind": "malformed", "count": 2},
        {"kind": "empty", "count": 2},
        {"kind": "hang", "count": 1, "hang_s": 3},
    ],
)
def test_transient_failures_are_retried(executor_server, tmp_path, fault):
    executor_server.script(faults=[fault])
    gw = gateway(executor_server, tmp_path, timeout_s=0.5)
    assert run(chat(gw, MESSAGES)) == ["echo:2+2?"]
    assert gw.usage.retries == fault["count"]


def test_persistent_failure_stops_with_a_clear_error(executor_server, tmp_path):
    executor_server.script(faults=[{"kind": "500", "count": 100}])
    gw = gateway(executor_server, tmp_path, max_retries=3)
    with pytest.raises(InfrastructureError, match=r"kept failing after 4 tries \(server error \(500\)\)"):
        run(chat(gw, MESSAGES))
    assert executor_server.stats()["requests"] == 4


def test_dead_endpoint_fails_fast(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gw = Gateway(EndpointConfig(base_url=f"http://127.0.0.1:{port}/v1", cache_path="off", backoff_s=0.05))
    with pytest.raises(InfrastructureError, match=f"127.0.0.1:{port}/v1 is unreachable"):
        run(chat(gw, MESSAGES))
    assert gw.usage.retries == gw.cfg.connect_retries  # it gave up after its connect retries


def test_auth_and_missing_model_are_infrastructure_errors(executor_server, tmp_path):
    executor_server.script(faults=[{"kind": "status", "status": 401}])
    with pytest.raises(InfrastructureError, match="rejected the API key"):
        run(chat(gateway(executor_server, tmp_path), MESSAGES))
    executor_server.script(faults=[{"kind": "status", "status": 404}])
    with pytest.raises(InfrastructureError, match="model 'gpt-4o-mini' was not found"):
        run(chat(gateway(executor_server, tmp_path), MESSAGES))


def test_bad_requests_are_the_workflows_problem(executor_server, tmp_path):
    executor_server.script(faults=[{"kind": "status", "status": 400, "message": "context too long"}])
    with pytest.raises(Rejected, match="refused the request \\(400\\): context too long"):
        run(chat(gateway(executor_server, tmp_path), MESSAGES))


def test_cache_replays_and_keys_on_every_parameter(executor_server, tmp_path):
    executor_server.script(rules=[{"match": ".", "reply": "choice {index}"}])

    async def scenario():
        gw = gateway(executor_server, tmp_path)
        try:
            first = await gw.chat(MESSAGES, n=3, temperature=0.9)
            again = await gw.chat(MESSAGES, n=3, temperature=0.9)
            fewer = await gw.chat(MESSAGES, n=2, temperature=0.9)
            more = await gw.chat(MESSAGES, n=4, temperature=0.9)
            other = await gw.chat(MESSAGES, n=1, temperature=0.0)
            return first, again, fewer, more, other, gw.usage
        finally:
            await gw.aclose()

    first, again, fewer, more, other, usage = run(scenario())
    assert first == again == ["choice 0", "choice 1", "choice 2"]
    assert fewer == first[:2] and more[:3] == first
    assert usage.llm_calls == 3 and usage.cached_calls == 2  # first, the 4th choice, temperature 0
    # A new gateway on the same file makes no call at all.
    before = executor_server.stats()["requests"]
    assert run(chat(gateway(executor_server, tmp_path), MESSAGES, n=3, temperature=0.9)) == first
    assert executor_server.stats()["requests"] == before


def test_budget_stops_requests(executor_server, tmp_path):
    async def scenario():
        gw = gateway(executor_server, tmp_path, cache_path="off")
        budget = Budget(max_calls=2)
        try:
            await gw.chat(MESSAGES, budget=budget)
            await gw.chat(MESSAGES, budget=budget)
            await gw.chat(MESSAGES, budget=budget)
        finally:
            await gw.aclose()

    with pytest.raises(BudgetExceeded, match=r"the call budget \(2\) is spent"):
        run(scenario())


def test_concurrency_cap_holds(executor_server, tmp_path):
    executor_server.script(latency_ms=200)

    async def scenario():
        gw = gateway(executor_server, tmp_path, cache_path="off", concurrency=4)
        try:
            await asyncio.gather(*(gw.chat([{"role": "user", "content": str(i)}]) for i in range(8)))
        finally:
            await gw.aclose()

    run(scenario())
    stats = executor_server.stats()
    assert stats["requests"] == 8 and stats["max_in_flight"] == 4  # counted by the server itself


def test_rate_limiter_waits_when_the_bucket_is_empty():
    async def scenario():
        limiter = RateLimiter(6000)  # 100 per second, bucket of 6000
        await limiter.acquire(6000)
        started = time.perf_counter()
        await limiter.acquire(10)
        return time.perf_counter() - started

    assert run(scenario()) >= 0.07  # a lower bound only: 10 tokens at 100 per second


def test_role_and_instructions_become_system_text():
    assert build_messages({"messages": MESSAGES, "agent_role": "a judge", "instructions": "be terse"}) == [
        {"role": "system", "content": "You are a judge.\n\nbe terse"},
        *MESSAGES,
    ]
    merged = build_messages({"messages": [{"role": "system", "content": "S"}, *MESSAGES], "agent_role": "x"})
    assert merged[0] == {"role": "system", "content": "You are x.\n\nS"}


def test_missing_key_for_openai_is_a_config_error(monkeypatch):
    from w4s.errors import ConfigError

    for name in ("OPENAI_API_KEY", "W4S_EXECUTOR_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="no API key for https://api.openai.com/v1: set one of"):
        Gateway(EndpointConfig(cache_path="off"))


def test_hooks_see_every_answered_call(executor_server, tmp_path):
    records = []

    async def scenario():
        gw = gateway(executor_server, tmp_path)
        gw.hooks.append(records.append)
        try:
            await asyncio.gather(gw.chat(MESSAGES, n=2), gw.chat([{"role": "user", "content": "other"}]))
            await gw.chat(MESSAGES, n=2)
        finally:
            await gw.aclose()

    run(scenario())
    first_two = sorted((r.texts, r.usage.llm_calls, r.cached_choices) for r in records[:2])
    assert first_two == [(["echo:2+2?"] * 2, 1, 0), (["echo:other"], 1, 0)]
    assert sum(r.usage.llm_calls for r in records) == 2 and all(r.seconds >= 0 for r in records)
    assert records[-1].usage.llm_calls == 0 and records[-1].cached_choices == 1


# --- budgets that hold, caps a workflow cannot raise, usage that cannot lie ------------------------


def flood(gw: Gateway, count: int, budget: Budget, **request) -> list:
    """``count`` workflow requests at once, as 60 threads of one workflow would send them."""

    async def one(i):
        try:
            return await gw.call_llm({"messages": [{"role": "user", "content": f"q{i}"}], **request}, budget)
        except BudgetExceeded as exc:
            return exc

    async def scenario():
        try:
            return await asyncio.gather(*(one(i) for i in range(count)))
        finally:
            await gw.aclose()

    return run(scenario())


def test_a_flood_of_requests_gets_no_more_than_the_call_budget(executor_server, tmp_path):
    executor_server.script(latency_ms=100)
    gw = gateway(executor_server, tmp_path, cache_path="off")
    budget = Budget(max_calls=1)
    results = flood(gw, 60, budget, n=32, max_completion_tokens=10**9)
    assert executor_server.stats()["requests"] == 1 and gw.usage.llm_calls == 1
    assert sum(isinstance(r, BudgetExceeded) for r in results) == 59
    assert budget.exhausted == "the call budget (1) is spent"


def test_a_dollar_budget_is_never_exceeded_by_concurrent_requests(executor_server, tmp_path):
    executor_server.script(latency_ms=50, usage={"prompt_tokens": 200, "completion_tokens": 2000})
    gw = gateway(executor_server, tmp_path, cache_path="off", max_completion_tokens=2000)
    budget = Budget(max_usd=0.01)  # each request really costs $0.00123, worst case $0.00124
    results = flood(gw, 40, budget)
    answered = [r for r in results if not isinstance(r, BudgetExceeded)]
    assert 0 < len(answered) < 40 and gw.usage.cost_usd <= 0.01
    assert len(answered) == int(0.01 // gw.prices.cost("gpt-4o-mini", 200, 2000))  # as many as fit
    assert budget.exhausted


def test_a_workflow_cannot_raise_n_or_the_completion_length(executor_server, tmp_path):
    gw = gateway(executor_server, tmp_path, cache_path="off", max_completion_tokens=64, max_n=4)
    with pytest.raises(ValueError, match="between 1 and 4"):
        run(gw.call_llm({"messages": MESSAGES, "n": 5}))
    for bad in ({"temperature": float("nan")}, {"temperature": 50}, {"max_completion_tokens": 0}):
        with pytest.raises(ValueError):
            run(gw.call_llm({"messages": MESSAGES, **bad}))
    assert (
        run(chat_llm(gw, {"messages": MESSAGES, "n": 4, "max_completion_tokens": 10**9})) == ["echo:2+2?"] * 4
    )
    stats = executor_server.stats()
    assert stats["max_tokens_seen"] == 64 and stats["max_n_seen"] == 4


async def chat_llm(gw, request):
    try:
        return await gw.call_llm(request)
    finally:
        await gw.aclose()


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        ({"prompt_tokens": -1_000_000, "completion_tokens": -5}, "estimated"),  # would refund the budget
        ({"prompt_tokens": "12", "completion_tokens": True}, "estimated"),
        ({"prompt_tokens": 10**24, "completion_tokens": 10**24}, "bound"),  # would cost 1e17 dollars
    ],
)
def test_impossible_usage_is_clamped_and_counted(executor_server, tmp_path, reported, expected):
    from w4s.llm.gateway import prompt_token_bound

    executor_server.script(usage=reported)
    gw = gateway(executor_server, tmp_path, cache_path="off", max_completion_tokens=100)
    budget = Budget(max_usd=1.0)
    run(chat(gw, MESSAGES, n=2, budget=budget))
    usage = gw.usage
    assert usage.usage_clamped == 1 and budget.usage.usage_clamped == 1
    assert usage.prompt_tokens >= 0 and usage.completion_tokens >= 0 and usage.cost_usd >= 0
    if expected == "bound":
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_token_bound(MESSAGES), 2 * 100)
    else:
        assert usage.prompt_tokens == 1 and usage.completion_tokens == 4  # the estimates: 1 + 2 x 2 tokens
    assert budget.usage.cost_usd == usage.cost_usd <= 1.0


def test_the_cache_keys_on_the_endpoint_and_the_model_revision(executor_server, tmp_path):
    from tests.conftest import ScriptedServer

    other = ScriptedServer()
    try:
        cache = str(tmp_path / "shared.sqlite")
        run(chat(gateway(executor_server, tmp_path, cache_path=cache, model_revision="v1"), MESSAGES))
        run(chat(gateway(executor_server, tmp_path, cache_path=cache, model_revision="v1"), MESSAGES))
        assert executor_server.stats()["requests"] == 1  # the same endpoint and revision: replayed
        run(chat(gateway(executor_server, tmp_path, cache_path=cache, model_revision="v2"), MESSAGES))
        assert executor_server.stats()["requests"] == 2  # a redeployed model answers itself
        run(chat(gateway(other, tmp_path, cache_path=cache, model_revision="v1"), MESSAGES))
        assert other.stats()["requests"] == 1  # another server under the same model name too
    finally:
        other.stop()


def test_two_budgets_share_one_gateway_without_charging_each_other(executor_server, tmp_path):
    """Budgets belong to whoever spends them: concurrent callers on one gateway are each held to
    their own, and each sees only its own usage."""
    executor_server.script(latency_ms=30)
    gw = gateway(executor_server, tmp_path, cache_path="off")
    small, large = Budget(max_calls=2), Budget(max_calls=5)

    async def spend(budget: Budget, label: str) -> int:
        answered = 0
        for i in range(8):
            try:
                await gw.chat([{"role": "user", "content": f"{label}{i}"}], budget=budget)
                answered += 1
            except BudgetExceeded:
                break
        return answered

    async def scenario():
        async with gw:
            return await asyncio.gather(spend(small, "a"), spend(large, "b"))

    assert run(scenario()) == [2, 5]
    assert (small.usage.llm_calls, large.usage.llm_calls, gw.usage.llm_calls) == (2, 5, 7)
