"""Client-side limits: request and token rates, and the per-evaluation budget."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict, dataclass, field

from w4s.errors import BudgetExceeded


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
    usage_clamped: int = 0  # replies whose reported usage was impossible (negative, absurd) and was clamped

    def add(self, other: Usage) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["cost_usd"] = round(self.cost_usd, 6)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Usage:
        """Inverse of :meth:`to_dict`; ValueError unless every count is a finite number, 0 or more."""
        values = {}
        for name, spec in cls.__dataclass_fields__.items():
            value = data.get(name, 0)
            kind = float if spec.type in (float, "float") else int
            if type(value) not in (int, kind) or not math.isfinite(value) or value < 0:
                raise ValueError(f"usage field {name} is {value!r}, not a count")
            values[name] = kind(value)
        return cls(**values)


@dataclass
class Reservation:
    """The worst case of one request, held against a budget while the request is in flight."""

    tokens: int
    usd: float


@dataclass
class Budget:
    """Limits on calls, tokens and dollars; 0 or None means no limit on that axis.

    A request holds a :class:`Reservation` of its worst case (n x the completion cap, the prompt's
    upper bound, their price) from the moment it is sent until its usage is accounted, and is refused
    when that worst case no longer fits. So concurrent requests can never overshoot a limit together.
    """

    max_calls: int | None = None
    max_tokens: int | None = None
    max_usd: float | None = None
    usage: Usage = field(default_factory=Usage)
    _calls_held: int = 0
    _tokens_held: int = 0
    _usd_held: float = 0.0
    _refused: str | None = None
    _waiters: list = field(default_factory=list)

    @property
    def exhausted(self) -> str | None:
        """Why the budget is spent (or can cover no further request), or None."""
        u = self.usage
        if self.max_calls and u.llm_calls >= self.max_calls:
            return f"the call budget ({self.max_calls}) is spent"
        if self.max_tokens and u.prompt_tokens + u.completion_tokens >= self.max_tokens:
            return f"the token budget ({self.max_tokens}) is spent"
        if self.max_usd and u.cost_usd >= self.max_usd:
            return f"the budget of ${self.max_usd:g} is spent"
        return self._refused

    def check(self) -> None:
        reason = self.exhausted
        if reason:
            raise BudgetExceeded(reason)

    def reserve(self, tokens: int, usd: float) -> Reservation:
        """Hold one request's worst case, or raise :class:`BudgetExceeded` if it does not fit."""
        self.check()
        u = self.usage
        reason = None
        used_tokens = u.prompt_tokens + u.completion_tokens + self._tokens_held
        if self.max_calls and u.llm_calls + self._calls_held + 1 > self.max_calls:
            reason = f"the call budget ({self.max_calls}) is spent"
        elif self.max_tokens and used_tokens + tokens > self.max_tokens:
            reason = (
                f"the token budget ({self.max_tokens}) has {self.max_tokens - used_tokens} left, fewer than the "
                f"next request may use ({tokens})"
            )
        elif self.max_usd and u.cost_usd + self._usd_held + usd > self.max_usd:
            reason = (
                f"the budget of ${self.max_usd:g} has ${max(0.0, self.max_usd - u.cost_usd - self._usd_held):.6f} "
                f"left, less than the next request may cost (${usd:.6f})"
            )
        if reason is not None:
            if not self.holding:
                self._refused = reason  # nothing in flight can free room: the budget is done
            raise BudgetExceeded(reason)
        self._calls_held += 1
        self._tokens_held += tokens
        self._usd_held += usd
        return Reservation(tokens, usd)

    @property
    def holding(self) -> bool:
        """Requests are in flight: when they end, their unused worst case becomes room again."""
        return self._calls_held > 0

    async def reserve_when_room(self, tokens: int, usd: float) -> Reservation:
        """:meth:`reserve`, waiting for requests in flight to end while they might leave room."""
        while True:
            try:
                return self.reserve(tokens, usd)
            except BudgetExceeded:
                if not self.holding:
                    raise
            room = asyncio.get_running_loop().create_future()
            self._waiters.append(room)
            await room

    def release(self, reservation: Reservation) -> None:
        """The request ended (answered and accounted, or failed): its hold is returned."""
        self._calls_held -= 1
        self._tokens_held -= reservation.tokens
        self._usd_held -= reservation.usd
        waiters, self._waiters = self._waiters, []
        for room in waiters:
            if not room.done():
                room.set_result(None)
