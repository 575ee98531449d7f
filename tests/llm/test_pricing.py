"""The price table a user passes (--executor-prices-path) is checked: a price that would refund a
dollar budget (negative) or make it never or always hold (NaN, infinite, absurd) is a one-line error."""

from __future__ import annotations

import pytest

from w4s.errors import ConfigError
from w4s.llm.pricing import PriceTable, require_prices


@pytest.mark.parametrize(
    "price",
    ["-1000", "-0.01", ".nan", ".inf", "-.inf", "1e308", "true", "'0.15'", "null", "[1]"],
)
def test_a_price_that_breaks_the_budget_is_refused(tmp_path, price):
    table = tmp_path / "prices.yaml"
    table.write_text(f"gpt-4o-mini: {{input: {price}, output: 0.6}}\n")
    with pytest.raises(ConfigError, match="each a number from 0 to"):
        PriceTable.load(table)


def test_good_prices_load_and_cost(tmp_path):
    table = tmp_path / "prices.yaml"
    table.write_text("my-model: {input: 1, output: 2.5}\nfree: {input: 0, output: 0}\n")
    prices = PriceTable.load(table)
    assert prices.cost("my-model", 1_000_000, 2_000_000) == pytest.approx(6.0)
    assert prices.cost("free", 10**6, 10**6) == 0.0
    assert prices.cost("gpt-4o-mini", 10**6, 0) == pytest.approx(0.15)  # the defaults stay


class _Endpoint:
    def __init__(self, model: str, prices: PriceTable):
        self.model = model
        self.prices = prices


def test_a_dollar_budget_needs_a_price_for_every_model_it_pays_for():
    prices = PriceTable()
    priced, local, unknown = (_Endpoint(m, prices) for m in ("gpt-4o-mini", "local:smollm2-135m", "my-model"))
    require_prices(None, executor=unknown)  # no dollar budget: nothing to hold
    require_prices(1.0, executor=priced, meta=local)  # a local model costs nothing
    with pytest.raises(
        ConfigError, match=r"no price is known for the meta model 'my-model'.*--meta-prices-path"
    ):
        require_prices(1.0, executor=priced, meta=unknown)
