"""The public market-history routes: ``GET /v1/instruments/{symbol}/candles`` and
``GET /v1/instruments/{symbol}/indicators`` (no credentials; docs/CONTRACTS.md, "BFF REST").

The views read the query (:func:`candle_range`), call :class:`profile_bff.candles.MarketHistory`, and write
its answer: times as RFC 3339 UTC with milliseconds, prices, volumes and values as normalised decimal
strings, candles oldest first. Errors are the domain's (profile_bff/views/errors.py): 404 unknown symbol,
422 bad interval, range, limit or indicator (``too_many_points`` naming the maximum), 503 the ETL down.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from crypto_mesh import jsonutil

from crypto_mesh.candles import CandleRange, InvalidLimit, InvalidRange
from crypto_mesh.indicators import InvalidIndicator
from profile_bff.candles import Candles, IndicatorSeries, MarketHistory
from profile_bff.portfolio import decimal_text, rfc3339_ms

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def parse_time(raw: str, name: str) -> int:
    """``raw``, the value of query parameter ``name``, as Unix ms: an RFC 3339 / ISO 8601 time with its
    offset (``2024-08-08T23:54:00Z``, ``2024-08-08T23:54:00.250+02:00``; digits below the millisecond are
    cut), or a Unix time in ms (``1723161240000``). :class:`InvalidRange` otherwise (a time without an
    offset among them: it would depend on the server's time zone)."""
    if raw.isascii() and raw.isdigit() and len(raw) <= 15:
        return int(raw)
    try:
        moment = datetime.fromisoformat(raw) if raw.isascii() and len(raw) <= 40 else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidRange(f"{name} must be a time with its offset, such as 2024-08-08T23:54:00Z, or Unix ms")
    return (moment - _EPOCH) // _MILLISECOND


def _count_param(request: web.Request, name: str, error: type[ValueError]) -> int | None:
    """Query parameter ``name`` as a non-negative integer (``None`` when absent); ``error`` otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 30:
        raise error(f"{name} must be an integer")
    return int(raw)


def candle_range(request: web.Request) -> CandleRange:
    """The selection of ``?interval=`` (default ``1m``), ``start``, ``end`` and ``limit``
    (:meth:`CandleRange.of`); raises :class:`crypto_mesh.candles.InvalidCandleQuery`."""
    start, end = (request.query.get(name) for name in ("start", "end"))
    return CandleRange.of(
        request.query.get("interval", "1m"),
        None if start is None else parse_time(start, "start"),
        None if end is None else parse_time(end, "end"),
        _count_param(request, "limit", InvalidLimit),
    )


def candles_json(found: Candles) -> dict[str, Any]:
    """The ``.../candles`` answer of ``found``."""
    interval_ms = found.selection.interval_ms
    return {
        "symbol": found.symbol,
        "interval": found.selection.interval,
        "candles": [
            {
                "open_time": rfc3339_ms(candle.open_time_ms),
                "close_time": rfc3339_ms(candle.open_time_ms + interval_ms - 1),
                "open": decimal_text(candle.open),
                "high": decimal_text(candle.high),
                "low": decimal_text(candle.low),
                "close": decimal_text(candle.close),
                "volume": decimal_text(candle.volume),
                "quote_volume": decimal_text(candle.quote_volume),
                "trades": candle.trades,
            }
            for candle in found.candles
        ],
    }


def indicator_json(series: IndicatorSeries) -> dict[str, Any]:
    """The ``.../indicators`` answer of ``series``."""
    return {
        "symbol": series.symbol,
        "interval": series.selection.interval,
        "name": series.name,
        "period": series.period,
        "points": [
            {"open_time": rfc3339_ms(open_ms), "value": decimal_text(value)}
            for open_ms, value in series.points
        ],
    }


class EncodedAnswers:
    """The JSON bodies of the latest answers, by the answer object they were written from.

    :class:`MarketHistory` hands the same answer object to every request of the second it keeps it, and
    writing 1,000 candles as JSON takes milliseconds of the event loop; so each answer is written once. An
    entry holds its answer, so that the answer's ``id`` is not reused while the entry lives; at most
    ``size`` entries, the oldest dropped first."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._bodies: OrderedDict[int, tuple[object, bytes]] = OrderedDict()

    def body(self, answer: object, encode: Callable[[], Any]) -> bytes:
        """The JSON of ``encode()``, written the first time ``answer`` is seen."""
        entry = self._bodies.get(id(answer))
        if entry is None or entry[0] is not answer:
            entry = (answer, jsonutil.dumps(encode()))
            self._bodies[id(answer)] = entry
            while len(self._bodies) > self._size:
                self._bodies.popitem(last=False)
        return entry[1]


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


class MarketViews:
    """The market-history routes over ``history``."""

    def __init__(self, history: MarketHistory) -> None:
        self._history = history
        self._encoded = EncodedAnswers()

    async def candles(self, request: web.Request) -> web.Response:
        """``GET /v1/instruments/{symbol}/candles?interval=&start=&end=&limit=`` → ``200 {"symbol",
        "interval", "candles": [{"open_time", "close_time", "open", "high", "low", "close", "volume",
        "quote_volume", "trades"}]}``, oldest first, the newest current to the last closed second."""
        symbol = self._history.listed(request.match_info["symbol"])
        found = await self._history.candles(symbol, candle_range(request))
        return _json(self._encoded.body(found, lambda: candles_json(found)))

    async def indicators(self, request: web.Request) -> web.Response:
        """``GET /v1/instruments/{symbol}/indicators?name=sma|ema|rsi|volatility&period=&interval=&start=&end=
        &limit=`` → ``200 {"symbol", "interval", "name", "period", "points": [{"open_time", "value"}]}``: the
        indicator over the candles ``.../candles`` answers for the same query, a point for each candle from
        the first that has a value."""
        symbol = self._history.listed(request.match_info["symbol"])
        series = await self._history.indicator(
            symbol,
            candle_range(request),
            request.query.get("name", ""),
            _count_param(request, "period", InvalidIndicator),
        )
        return _json(self._encoded.body(series, lambda: indicator_json(series)))
