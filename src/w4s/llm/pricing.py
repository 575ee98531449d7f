"""Executor prices (USD per million tokens) and cost accounting from reported usage."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import yaml

from w4s.errors import ConfigError

log = logging.getLogger(__name__)

# Public list prices, USD per 1M tokens (input, output). Override with EndpointConfig.prices_path.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}


MAX_PRICE = 1_000_000.0  # USD per 1M tokens: a dollar a token


class PriceTable:
    def __init__(self, prices: dict[str, tuple[float, float]] | None = None):
        self.prices = dict(DEFAULT_PRICES if prices is None else prices)
        self._found: dict[str, tuple[float, float] | None] = {}

    @classmethod
    def load(cls, path: str | Path | None) -> PriceTable:
        if path is None:
            return cls()
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"price table {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            prices = {str(m): (_price(p["input"]), _price(p["output"])) for m, p in raw.items()}
        except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(
                f"price table {path} must map model names to {{input: USD per 1M tokens, output: USD per 1M}}, "
                f"each a number from 0 to {MAX_PRICE:g}"
            ) from None
        merged = dict(DEFAULT_PRICES)
        merged.update(prices)
        return cls(merged)

    def priced(self, model: str) -> bool:
        """Whether ``model``'s cost is known: a local model costs nothing; any other needs a price."""
        return model.startswith("local:") or self._price(model) is not None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        price = self._price(model)
        if price is None:
            return 0.0
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000

    def _price(self, model: str) -> tuple[float, float] | None:
        """(input, output) USD per 1M tokens, found once per model (every request asks twice)."""
        if model in self._found:
            return self._found[model]
        price = None
        if not model.startswith("local:"):
            price = self.prices.get(model)
            if price is None:
                # Dated snapshots ("gpt-4o-mini-2024-07-18") cost what their family costs.
                family = max((m for m in self.prices if model.startswith(m)), key=len, default=None)
                price = self.prices.get(family) if family else None
            if price is None:
                _warn_unpriced(model)
        self._found[model] = price
        return price


def _price(value) -> float:
    """A price from a table: a number of USD per 1M tokens, 0 to ``MAX_PRICE``. A negative one would
    refund a dollar budget, a NaN or infinite one make it never (or always) hold."""
    if type(value) not in (int, float) or not 0 <= value <= MAX_PRICE:  # NaN fails this too
        raise ValueError(f"price {value!r}")
    return float(value)


def require_prices(budget_usd: float | None, **gateways) -> None:
    """A dollar budget holds only if every model it pays for has a price: refused in one line when
    one has none (its calls would count as $0 and the budget would never stop them). ``gateways``
    are named for their flags' prefix: ``executor=``, ``meta=``."""
    if budget_usd is None:
        return
    for name, gateway in gateways.items():
        if not gateway.prices.priced(gateway.model):
            raise ConfigError(
                f"a dollar budget (${budget_usd:g}) cannot hold: no price is known for the {name} model "
                f"{gateway.model!r}, so its calls would count as $0; give its price in a price table "
                f"(--{name}-prices-path), or budget calls or tokens instead"
            )


@functools.cache
def _warn_unpriced(model: str) -> None:
    log.warning("no price known for model %r: its cost is reported as 0; add it with a price table", model)
