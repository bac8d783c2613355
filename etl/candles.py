"""The ETL's typed read API over ClickHouse: candles of an interval and indicators over them
(``GET /v1/candles``, ``GET /v1/indicators``; docs/CONTRACTS.md, "ETL HTTP").

Never analysts' SQL: each query here is a fixed text whose values (symbol, times, interval, limit) are bound
as ClickHouse query parameters (``{name:Type}``, sent apart from the text by clickhouse-connect), run on the
analytics client (read-only, within the ``ETL_SQL_*`` limits of :class:`etl.sql.SqlLimits`).

Every interval is read from ``crypto.price_seconds FINAL`` (one row per symbol and second, exactly once):
the seconds of the selected window grouped by the candle they belong to, open of the first second and close
of the last, high and low the extremes, volumes and trade counts summed. The 1-minute rollup behind
``crypto.candles_1m`` is not read here: merging its per-second ``maxMap`` states costs about 10 KB per minute,
so 10,000 minutes took 0.6 s and 100,000 went over the 1 GB query memory limit, while from the seconds 1,000
hourly candles took 0.1 to 0.3 s and the daily candles of 347 days 1 to 2 s (30 million seconds of one symbol
in chDB, 2 threads; docs/ANALYTICS.md).

Which candles are selected is :class:`crypto_mesh.candles.CandleRange`: the query first finds the newest
(or, with ``start``, the oldest) second within the bounds, reading the table's primary key in order, and
from its candle the window of ``limit`` periods, then reads only the seconds of that window.

Each candle also says the last second with trades it holds (``last_second_ms``): the newest candle's tells a
reader of live seconds (the BFF) which seconds ClickHouse already had when the query read them, so that it
adds only later ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

from crypto_mesh.candles import CandleRange
from crypto_mesh.indicators import Computation
from etl import sql


@dataclass(frozen=True, slots=True)
class Candle:
    """One candle: ``open_time_ms`` (Unix ms), prices and volumes as exact ``Decimal`` (``Decimal(38, 18)``
    columns), ``trades`` the trades counted in its seconds, ``last_second_ms`` the start of its last second
    with trades."""

    open_time_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trades: int
    last_second_ms: int


#: The candles of a window of periods. ``{direction}`` is filled in below with ``DESC`` (the window ends with
#: the newest candle) or ``ASC`` (it begins with the oldest): a keyword cannot be a query parameter. Every
#: value is a query parameter.
_CANDLES = """
WITH
    (
        SELECT toNullable(toUnixTimestamp64Milli(second))
        FROM crypto.price_seconds
        WHERE symbol = {symbol:String}
            AND second >= fromUnixTimestamp64Milli({first:Int64}, 'UTC')
            AND second < fromUnixTimestamp64Milli({stop:Int64}, 'UTC')
        ORDER BY second {direction}
        LIMIT 1
    ) AS edge,
    intDiv(edge, {interval_ms:Int64}) * {interval_ms:Int64} AS anchor,
    if(
        {latest:Bool},
        greatest({first:Int64}, anchor - ({limit:Int64} - 1) * {interval_ms:Int64}),
        anchor
    ) AS window_start,
    if(
        {latest:Bool},
        anchor + {interval_ms:Int64},
        least({stop:Int64}, anchor + {limit:Int64} * {interval_ms:Int64})
    ) AS window_stop
SELECT
    intDiv(toUnixTimestamp64Milli(second), {interval_ms:Int64}) * {interval_ms:Int64} AS open_time,
    argMin(open, second) AS open,
    max(high) AS high,
    min(low) AS low,
    argMax(close, second) AS close,
    sum(volume) AS volume,
    sum(quote_volume) AS quote_volume,
    sum(toUInt64(trade_count)) AS trades,
    max(toUnixTimestamp64Milli(second)) AS last_second
FROM crypto.price_seconds FINAL
WHERE symbol = {symbol:String}
    AND second >= fromUnixTimestamp64Milli(window_start, 'UTC')
    AND second < fromUnixTimestamp64Milli(window_stop, 'UTC')
GROUP BY open_time
ORDER BY open_time
"""

#: Latest first? → query text.
_QUERIES = {latest: _CANDLES.replace("{direction}", "DESC" if latest else "ASC") for latest in (True, False)}


def candle_query(symbol: str, selection: CandleRange) -> tuple[str, dict[str, Any]]:
    """The query text and its parameters for the candles of ``symbol`` (normalised) that ``selection``
    selects."""
    return _QUERIES[selection.latest], {
        "symbol": symbol,
        "first": selection.first_open_ms,
        "stop": selection.stop_ms,
        "interval_ms": selection.interval_ms,
        "latest": selection.latest,
        "limit": selection.limit,
    }


def read_candles(
    client: Client, symbol: str, selection: CandleRange, limits: sql.SqlLimits
) -> list[Candle]:
    """The candles of ``symbol`` that ``selection`` selects, oldest first, read on ``client`` (an
    :func:`etl.sql.analytics_client`) within ``limits``. Blocking: the ETL calls it on a thread of its own.
    Raises clickhouse-connect's errors (``OperationalError``: ClickHouse unreachable)."""
    text, parameters = candle_query(symbol, selection)
    result = client.query(text, parameters=parameters, settings=sql.query_settings(client, limits))
    return [Candle(*row) for row in result.result_rows]


def candle_json(candle: Candle, interval_ms: int) -> dict[str, Any]:
    """A candle of the ``GET /v1/candles`` answer: times in Unix ms (``close_time`` = open + interval − 1),
    decimals as ``Decimal`` (written as strings by :mod:`crypto_mesh.jsonutil`)."""
    return {
        "open_time": candle.open_time_ms,
        "close_time": candle.open_time_ms + interval_ms - 1,
        "open": candle.open,
        "high": candle.high,
        "low": candle.low,
        "close": candle.close,
        "volume": candle.volume,
        "quote_volume": candle.quote_volume,
        "trades": candle.trades,
    }


def candles_json(symbol: str, selection: CandleRange, candles: Sequence[Candle]) -> dict[str, Any]:
    """The ``GET /v1/candles`` answer: ``{"symbol", "interval", "candles", "last_second"}``, ``last_second``
    the newest candle's last second with trades (Unix ms), ``null`` without candles."""
    return {
        "symbol": symbol,
        "interval": selection.interval,
        "candles": [candle_json(candle, selection.interval_ms) for candle in candles],
        "last_second": max((candle.last_second_ms for candle in candles), default=None),
    }


def indicator_json(
    symbol: str,
    selection: CandleRange,
    name: str,
    period: int,
    computation: Computation,
    candles: Sequence[Candle],
) -> dict[str, Any]:
    """The ``GET /v1/indicators`` answer: ``{"symbol", "interval", "name", "period", "points": [{"open_time",
    "value"}]}``, a point for each candle from the first that has a value (crypto_mesh.indicators)."""
    values = computation([candle.close for candle in candles], period)
    return {
        "symbol": symbol,
        "interval": selection.interval,
        "name": name,
        "period": period,
        "points": [
            {"open_time": candle.open_time_ms, "value": value}
            for candle, value in zip(candles, values, strict=True)
            if value is not None
        ],
    }
