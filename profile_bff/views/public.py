"""The routes that need no credentials: ``GET /v1/instruments``, ``GET /v1/instruments/{symbol}``,
``GET /openapi.json`` and ``GET /healthz``."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from crypto_mesh.binance import normalize_symbol
from crypto_mesh.httperrors import ApiError
from profile_bff.openapi import openapi_document
from profile_bff.portfolio import rfc3339_ms
from profile_bff.search import InstrumentSearch, Quote, Ticker
from profile_bff.views.requests import int_param, json_response

#: ``GET /v1/instruments``: ``q`` is up to 20 letters/digits; ``limit`` 1..100 (default 20).
_INSTRUMENT_QUERY = re.compile(r"[A-Za-z0-9]{0,20}")
INSTRUMENTS_MAX_LIMIT = 100


class PublicViews:
    """The public routes over ``search``; ``readiness()`` says which of the BFF's dependencies are ready
    (``{"database": migrated, "redis": subscribed}``)."""

    def __init__(self, search: InstrumentSearch, readiness: Callable[[], Mapping[str, bool]]) -> None:
        self._search = search
        self._readiness = readiness

    async def search_instruments(self, request: web.Request) -> web.Response:
        """``GET /v1/instruments?q=btc&limit=20&cursor=`` (no token needed) → ``200 {"instruments":
        [{"symbol", "type", "base", "quote", "status", "price", "price_time", "change_percent",
        "quote_volume"}], "next_cursor"}``: listed symbols containing ``q``, the exact match first, then
        prefix matches, then the rest, each by 24 h quote volume (:mod:`profile_bff.search`); ``next_cursor``
        (null on the last page) is the ``cursor`` of the next page. ``q`` is 0 to 20 letters or digits,
        ``limit`` 1 to 100, ``cursor`` empty or one this route gave for the same ``q``: 422 ``invalid``
        otherwise. Answers are cached for 1 s."""
        query = request.query.get("q", "")
        if not _INSTRUMENT_QUERY.fullmatch(query):
            raise ApiError(422, "invalid", "q must be at most 20 letters or digits")
        limit = int_param(request, "limit", default=20, maximum=INSTRUMENTS_MAX_LIMIT)
        assert limit is not None
        page = await self._search.search(query, limit, request.query.get("cursor") or None)
        return json_response(
            {"instruments": [_listed(quote) for quote in page.quotes], "next_cursor": page.next_cursor}
        )

    async def instrument(self, request: web.Request) -> web.Response:
        """``GET /v1/instruments/{symbol}`` (no token needed) → ``200`` the fields of a search result plus
        ``"ticker"`` (the whole 24 h ticker, null without one), ``"live"`` (null when the mesh does not follow
        the symbol, else whether its latest second is recent) and ``"last_second"`` (that second, RFC 3339, or
        null). 422 ``invalid_symbol`` for a malformed symbol, 404 ``unknown_symbol`` for one the exchange does
        not list. Cached for 1 s."""
        symbol = normalize_symbol(request.match_info["symbol"])
        detail = await self._search.instrument(symbol)
        if detail is None:
            raise ApiError(404, "unknown_symbol", f"{symbol} is not listed by the exchange")
        ticker, second = detail.quote.ticker, detail.quote.second
        return json_response(
            {
                **_listed(detail.quote),
                "ticker": None if ticker is None else _ticker_json(ticker),
                "live": detail.live,
                "last_second": None if second is None else second.time_text,
            }
        )

    async def openapi_json(self, request: web.Request) -> web.Response:
        """``GET /openapi.json``: the OpenAPI 3.1 document of every route (:mod:`profile_bff.openapi`)."""
        return json_response(openapi_document())

    async def healthz(self, request: web.Request) -> web.Response:
        """``GET /healthz``: ``200 {"status": "ok"}`` once the schema is migrated and the Redis subscriber is
        up; ``503 {"status": "starting"|"degraded", "database", "redis"}`` otherwise."""
        ready = dict(self._readiness())
        if all(ready.values()):
            return json_response({"status": "ok"})
        status = "starting" if not ready["database"] else "degraded"
        return json_response({"status": status, **ready}, status=503)


def _listed(quote: Quote) -> dict[str, Any]:
    """An instrument as ``GET /v1/instruments`` lists it."""
    instrument, ticker, price = quote.instrument, quote.ticker, quote.price
    return {
        "symbol": instrument.symbol,
        "type": instrument.type,
        "base": instrument.base,
        "quote": instrument.quote,
        "status": instrument.status,
        "price": None if price is None else price[0],
        "price_time": None if price is None else rfc3339_ms(price[1]),
        "change_percent": None if ticker is None else ticker.change_percent,
        "quote_volume": None if ticker is None else ticker.quote_volume,
    }


def _ticker_json(ticker: Ticker) -> dict[str, Any]:
    return {
        "close": ticker.close,
        "open": ticker.open,
        "high": ticker.high,
        "low": ticker.low,
        "volume": ticker.volume,
        "quote_volume": ticker.quote_volume,
        "change_price": ticker.change_price,
        "change_percent": ticker.change_percent,
        "event_time": rfc3339_ms(ticker.event_time_ms),
    }
