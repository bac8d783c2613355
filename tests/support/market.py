"""Reference computations of market history, written apart from the code under test: the trades of a shipped
recording, their candles of any interval, and the indicators over closes (docs/ANALYTICS.md, "Indicators"),
each computed the plain way (exact fractions, the standard library's statistics), with no code of the
aggregator, the ETL, the BFF or ``crypto_mesh.candles``/``crypto_mesh.indicators``. Also the recording's
SecondStats as the aggregator computes them, to load a ClickHouse the way the mesh fills it.
"""

from __future__ import annotations

import gzip
import itertools
import statistics
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

from aggregator.secondstat import SecondStat, SecondWindows
from crypto_mesh import jsonutil
from crypto_mesh.binance import parse_trade_frame

#: Decimal places of every indicator value (rounded half-even), as docs/ANALYTICS.md documents them.
INDICATOR_PLACES = 18
#: The symbols of each shipped recording, by the name the tests give it.
RECORDED_SYMBOLS = {"trade 2024": ["btcusdt", "ethusdt"], "aggTrade 2021": ["btcusdt", "ethusdt", "dotusdt"]}
#: The intervals of the candle routes, in ms.
INTERVAL_MS = {"1s": 1_000, "1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "1d": 86_400_000}


@dataclass(frozen=True)
class RecordedTrade:
    symbol: str
    trade_id: int
    price: Decimal
    quantity: Decimal
    time_ms: int


def recorded_trades(recording: Path) -> list[RecordedTrade]:
    """Every trade (``@trade``: id ``t``) or aggregate trade (``@aggTrade``: id ``a``) of a recording, in file
    order, read straight from its JSON."""
    trades = []
    with gzip.open(recording, "rb") as lines:
        for line in lines:
            data = jsonutil.loads(line)["data"]
            trade_id = data["t"] if data["e"] == "trade" else data["a"]
            trades.append(
                RecordedTrade(data["s"].lower(), trade_id, Decimal(data["p"]), Decimal(data["q"]), data["T"])
            )
    return trades


def both_recordings(trade_recording: Path, agg_trade_recording: Path) -> dict[str, list[RecordedTrade]]:
    """The trades of the shipped ``@trade`` (2024) and ``@aggTrade`` (2021) recordings, by the names of
    :data:`RECORDED_SYMBOLS`."""
    return {
        "trade 2024": recorded_trades(trade_recording),
        "aggTrade 2021": recorded_trades(agg_trade_recording),
    }


@dataclass(frozen=True)
class ReferenceCandle:
    """A candle as the routes answer it, with ``open_time_ms`` Unix ms."""

    open_time_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trades: int


def reference_candles(trades: list[RecordedTrade], symbol: str, interval_ms: int) -> list[ReferenceCandle]:
    """The candles of ``symbol`` of ``interval_ms`` from ``trades``, oldest first: the trades whose exchange
    time ``T`` falls in the period, open and close by trade id, only periods with trades."""
    periods: dict[int, list[RecordedTrade]] = defaultdict(list)
    for trade in trades:
        if trade.symbol == symbol:
            periods[trade.time_ms // interval_ms * interval_ms].append(trade)
    candles = []
    for start in sorted(periods):
        items = sorted(periods[start], key=lambda trade: trade.trade_id)
        prices = [trade.price for trade in items]
        candles.append(
            ReferenceCandle(
                start,
                prices[0],
                max(prices),
                min(prices),
                prices[-1],
                sum((trade.quantity for trade in items), Decimal(0)),
                sum((trade.price * trade.quantity for trade in items), Decimal(0)),
                len(items),
            )
        )
    return candles


def recorded_secondstats(recording: Path) -> list[SecondStat]:
    """The SecondStats the aggregator computes from the recording (its pure window code, no clock)."""
    windows = SecondWindows(grace_ms=1000)
    stats = []
    with gzip.open(recording, "rb") as lines:
        for line in lines:
            stats += windows.add(parse_trade_frame(line))
    stats += windows.close_until(2**62)
    return stats


# -- indicators ------------------------------------------------------------------------------------------


def rounded(value: Fraction | Decimal) -> Decimal:
    """``value`` rounded half-even to :data:`INDICATOR_PLACES` places (Python's ``round`` of a Fraction
    rounds half to even)."""
    return Decimal(f"{round(Fraction(value) * 10**INDICATOR_PLACES)}E-{INDICATOR_PLACES}")


def reference_sma(closes: list[Decimal], period: int) -> list[Decimal | None]:
    """Mean of each window of ``period`` closes, as an exact fraction."""
    return [
        None if end < period else rounded(sum(map(Fraction, closes[end - period : end])) / period)
        for end in range(1, len(closes) + 1)
    ]


def reference_ema(closes: list[Decimal], period: int) -> list[Decimal | None]:
    """EMA in exact fractions: the SMA of the first ``period`` closes, then ``EMA + a (C - EMA)`` with
    ``a = 2 / (n + 1)``, never rounded but for the answer."""
    alpha = Fraction(2, period + 1)
    values: list[Decimal | None] = [None] * len(closes)
    average = None
    for index, close in enumerate(closes):
        if index == period - 1:
            average = sum(map(Fraction, closes[:period])) / period
        elif average is not None:
            average += alpha * (Fraction(close) - average)
        if average is not None:
            values[index] = rounded(average)
    return values


def reference_rsi(closes: list[Decimal], period: int) -> list[Decimal | None]:
    """Wilder's RSI in exact fractions, as ``100 - 100 / (1 + RS)`` with ``RS = G / L`` (100 when ``L = 0``,
    50 when there was no change at all)."""
    exact = [Fraction(close) for close in closes]
    changes = [b - a for a, b in itertools.pairwise(exact)]
    values: list[Decimal | None] = [None] * len(closes)
    gain = loss = Fraction(0)
    for index, change in enumerate(changes):
        up, down = max(change, Fraction(0)), max(-change, Fraction(0))
        if index < period:
            gain, loss = gain + up / period, loss + down / period
        else:
            gain, loss = (gain * (period - 1) + up) / period, (loss * (period - 1) + down) / period
        if index >= period - 1:
            if loss == 0:
                value = Fraction(50) if gain == 0 else Fraction(100)
            else:
                value = 100 - Fraction(100) / (1 + gain / loss)
            values[index + 1] = rounded(value)
    return values


def reference_volatility(closes: list[Decimal], period: int) -> list[Decimal | None]:
    """Sample standard deviation of each window of ``period`` log returns ``ln(C_t / C_{t-1})``, with 100
    significant digits and :func:`statistics.stdev` (exact sums of squares, correctly rounded root)."""
    values: list[Decimal | None] = [None] * len(closes)
    with localcontext() as context:
        context.prec = 100
        returns = [(b / a).ln() for a, b in itertools.pairwise(closes)]
        for end in range(period, len(returns) + 1):
            values[end] = rounded(statistics.stdev(returns[end - period : end]))
    return values


REFERENCE_INDICATORS = {
    "sma": reference_sma,
    "ema": reference_ema,
    "rsi": reference_rsi,
    "volatility": reference_volatility,
}
