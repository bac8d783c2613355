"""Indicators over closes (crypto_mesh.indicators) equal the reference computations of support.market to the
last of their 18 decimal places, on the closes of the shipped recordings and on made-up edge cases."""

from __future__ import annotations

from decimal import Decimal

import pytest
from support.market import (
    INTERVAL_MS,
    REFERENCE_INDICATORS,
    recorded_trades,
    reference_candles,
    reference_rsi,
)

from crypto_mesh import indicators
from crypto_mesh.indicators import InvalidIndicator, indicator


@pytest.fixture(scope="module")
def recorded_closes(trade_recording, agg_trade_recording) -> dict[str, list[Decimal]]:
    """Closes of 1-second and 1-minute candles of both recordings, straight from their trades."""
    trade, agg_trade = recorded_trades(trade_recording), recorded_trades(agg_trade_recording)
    return {
        "btcusdt 1s 2024": [c.close for c in reference_candles(trade, "btcusdt", INTERVAL_MS["1s"])],
        "ethusdt 1m 2024": [c.close for c in reference_candles(trade, "ethusdt", INTERVAL_MS["1m"])],
        "dotusdt 1s 2021": [c.close for c in reference_candles(agg_trade, "dotusdt", INTERVAL_MS["1s"])],
    }


@pytest.mark.parametrize("name", sorted(REFERENCE_INDICATORS))
@pytest.mark.parametrize("period", [2, 5, 14, 50])
def test_each_indicator_equals_its_reference_on_recorded_closes(recorded_closes, name, period):
    computation, _ = indicator(name, period)
    for series, closes in recorded_closes.items():
        expected = REFERENCE_INDICATORS[name](closes, period)
        assert computation(closes, period) == expected, series
        assert all(value is None or value.as_tuple().exponent == -18 for value in expected)


def test_the_first_value_comes_at_the_period_and_one_more_close_for_changes(recorded_closes):
    closes = recorded_closes["btcusdt 1s 2024"][:30]
    first = {name: next(i for i, v in enumerate(indicator(name, 10)[0](closes, 10)) if v is not None)
             for name in REFERENCE_INDICATORS}
    assert first == {"sma": 9, "ema": 9, "rsi": 10, "volatility": 10}


def test_fewer_closes_than_the_period_give_no_value():
    closes = [Decimal("1.5"), Decimal("2")]
    for name in REFERENCE_INDICATORS:
        assert indicator(name, 3)[0](closes, 3) == [None, None]


def test_the_rsi_is_100_when_prices_only_rose_and_50_when_they_never_moved():
    rising = [Decimal(100 + n) for n in range(20)]
    flat = [Decimal("1.0001")] * 20
    assert indicators.rsi(rising, 14)[14:] == [Decimal(100)] * 6
    assert indicators.rsi(flat, 14)[14:] == [Decimal(50)] * 6


def test_the_rsi_keeps_its_value_over_a_long_flat_stretch_as_a_stablecoin_has():
    # One rise, one fall, 900 closes unchanged: both averages shrink by (n-1)/n a step; their ratio stays.
    closes = [Decimal("1.0000"), Decimal("1.0002"), Decimal("1.0001")] + [Decimal("1.0001")] * 900
    values = indicators.rsi(closes, 2)
    assert values == reference_rsi(closes, 2)
    assert values[-1] == values[3] == Decimal("66.666666666666666667")


def test_the_volatility_of_unchanged_closes_is_zero_and_is_not_annualised():
    assert indicators.volatility([Decimal(7)] * 5, 3)[3:] == [Decimal(0), Decimal(0)]
    # Returns ln(1.01) and -ln(1.01): their sample standard deviation is ln(1.01)·√2 ≈ 0.014072.
    closes = [Decimal(100), Decimal(101), Decimal(100)]
    [value] = [v for v in indicators.volatility(closes, 2) if v is not None]
    assert abs(value - Decimal("0.01407")) < Decimal("0.00001")


@pytest.mark.parametrize(
    ("name", "period", "message"),
    [
        ("macd", 14, "name must be one of sma, ema, rsi, volatility"),
        ("sma", 1, "period must be an integer from 2 to 1000"),
        ("rsi", 1001, "period must be an integer from 2 to 1000"),
    ],
)
def test_unknown_names_and_periods_out_of_range_are_refused(name, period, message):
    with pytest.raises(InvalidIndicator, match=message):
        indicator(name, period)


def test_each_indicator_has_a_default_period():
    assert {name: indicator(name, None)[1] for name in REFERENCE_INDICATORS} == {
        "sma": 20,
        "ema": 20,
        "rsi": 14,
        "volatility": 20,
    }
