"""Client-side limits: request and token rates, and the per-evaluation budget."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field

from w4s.errors import W4SError


class BudgetExceeded(W4SError):
    """The evaluation's budget is spent: the request was not made. Not an infrastructure failure."""


class RateLimiter:
    """A token bucket refilled continuously; ``rate_per_minute`` 0 means unlimited."""

    def __init__(self, rate_per_minute: int):
        self.rate = rate_per_minute / 60.0
        self.capacity = float(rate_per_minute)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        if self.rate <= 0:
            return
        amount = min(amount, self.capacity)
        async with self._lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)

    def refund(self, amount: float) -> None:
        if self.rate > 0:
            self.level = min(self.capacity, self.level + amount)


@dataclass
class Usage:
    """What an evaluation (or a whole run) spent at the executor."""

    llm_calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    retries: int = 0

    def add(self, other: Usage) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["cost_usd"] = round(self.cost_usd, 6)
        return data


@dataclass
class Budget:
    """Limits on calls, tokens and dollars; 0 or None means no limit on that axis."""

    max_calls: int | None = None
    max_tokens: int | None = None
    max_usd: float | None = None
    usage: Usage = field(default_factory=Usage)

    @property
    def exhausted(self) -> str | None:
        """Why the budget is spent, or None."""
        u = self.usage
        if self.max_calls and u.llm_calls >= self.max_calls:
            return f"the call budget ({self.max_calls}) is spent"
        if self.max_tokens and u.prompt_tokens + u.completion_tokens >= self.max_tokens:
            return f"the token budget ({self.max_tokens}) is spent"
        if self.max_usd and u.cost_usd >= self.max_usd:
            return f"the budget of ${self.max_usd:g} is spent"
        return None

    def check(self) -> None:
        reason = self.exhausted
        if reason:
            raise BudgetExceeded(reason)
