"""Candles as the BFF answers them, and the live seconds that make the newest one current. Pure, no I/O.

The candles come from the ETL's read API (ClickHouse), which holds the seconds the ETL has loaded from
Kafka; the seconds of the last moments are not there yet (the aggregator's Kafka producer, then the ETL's
batches, take a second or two, longer while either is down). The aggregator also keeps each symbol's latest
SecondStats in Redis (a capped list, docs/CONTRACTS.md, "Redis"), and a SecondStat is a 1-second candle. So
:func:`with_live_seconds` folds into the ETL's answer the live seconds after the last second that answer
holds (its ``last_second``), and selects again: the newest candle is then current to the last closed
second.

Why "after the last second the answer holds" is the right cut: the aggregator publishes a symbol's seconds in
order, and the ETL inserts them in order (one Kafka partition per symbol, batches inserted one after
another), so when ClickHouse holds a second it holds every earlier one; a live second is either in the
answer already (at or before its ``last_second``) or not in ClickHouse at all. If the answer holds no candle,
no second of the selection is in ClickHouse, and every live second of the selection is added.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal

from crypto_mesh import jsonutil
from crypto_mesh.candles import CandleRange, open_time
from crypto_mesh.decimals import DecimalFieldError, parse_decimal
from profile_bff.portfolio import CONTEXT, InvalidSecondStat

#: SecondStat ``t`` must be a representable time (before year 10000).
_YEAR_10000_MS = 253_402_300_800_000
#: The SecondStat fields of a candle's open, high, low, close, volume and quote volume.
_AMOUNTS = ("o", "h", "l", "p", "v", "q")


@dataclass(frozen=True, slots=True)
class Candle:
    """One candle: ``open_time_ms`` (Unix ms, a multiple of its interval), prices and volumes as exact
    ``Decimal`` (``volume`` in the base asset, ``quote_volume`` in the quote asset), ``trades`` the trades
    counted in it (an aggTrade counts once)."""

    open_time_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trades: int

    def then(self, later: Candle) -> Candle:
        """This candle extended by ``later``, the trades that came after all of its own (a later second):
        the open stays, the close is ``later``'s, extremes and sums take both; exact."""
        return replace(
            self,
            high=max(self.high, later.high),
            low=min(self.low, later.low),
            close=later.close,
            volume=CONTEXT.add(self.volume, later.volume),
            quote_volume=CONTEXT.add(self.quote_volume, later.quote_volume),
            trades=self.trades + later.trades,
        )


@dataclass(frozen=True, slots=True)
class CandlePage:
    """The ETL's answer: candles oldest first, and ``last_second_ms``, the last second with trades they hold
    (``None`` when there is no candle)."""

    candles: list[Candle]
    last_second_ms: int | None


def second_candle(payload: bytes | str) -> Candle:
    """The 1-second candle of a SecondStat JSON (docs/CONTRACTS.md, "SecondStat JSON": ``t``, ``o``, ``h``,
    ``l``, ``p`` the close, ``v``, ``q``, ``n``). Raises :class:`~profile_bff.portfolio.InvalidSecondStat`
    for malformed JSON, a missing or mistyped field, or a negative or non-finite decimal."""
    stat = jsonutil.loads_object(payload, InvalidSecondStat, "SecondStat")
    second, trades = stat.get("t"), stat.get("n")
    if not _is_integer(second) or not _is_integer(trades) or not 0 <= second < _YEAR_10000_MS or trades < 0:
        raise InvalidSecondStat("t must be a Unix time in ms and n a count")
    try:
        amounts = [parse_decimal(stat.get(key), minimum="nonnegative") for key in _AMOUNTS]
    except DecimalFieldError as exc:
        raise InvalidSecondStat(f"a price or volume {exc}") from None
    return Candle(second - second % 1000, *amounts, trades)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def with_live_seconds(page: CandlePage, seconds: Iterable[Candle], selection: CandleRange) -> list[Candle]:
    """The candles of ``page`` (selected by the ETL for ``selection``) with the live ``seconds`` (1-second
    candles in any order) that come after ``page.last_second_ms`` folded in, selected again by
    ``selection`` (:meth:`crypto_mesh.candles.CandleRange.select`), oldest first."""
    watermark = -1 if page.last_second_ms is None else page.last_second_ms
    by_open = {candle.open_time_ms: candle for candle in page.candles}
    for second in sorted(seconds, key=lambda candle: candle.open_time_ms):
        if second.open_time_ms <= watermark:
            continue
        start = open_time(second.open_time_ms, selection.interval_ms)
        if not selection.holds(start):
            continue
        current = by_open.get(start)
        by_open[start] = replace(second, open_time_ms=start) if current is None else current.then(second)
        watermark = second.open_time_ms  # a second listed twice is folded once
    ordered = [by_open[start] for start in sorted(by_open)]
    return selection.select(ordered, lambda candle: candle.open_time_ms)
