"""The routes that need no credentials: ``GET /v1/instruments``, ``GET /openapi.json`` and
``GET /healthz``."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from aiohttp import web

from crypto_mesh.httperrors import ApiError
from profile_bff.openapi import openapi_document
from profile_bff.portfolio import rfc3339_ms
from profile_bff.search import InstrumentSearch
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
        """``GET /v1/instruments?q=btc&limit=20`` (no token needed) → ``200 {"instruments": [{"symbol",
        "type", "base", "quote", "status", "price", "price_time"}]}``: listed symbols containing ``q`` (prefix
        matches first), with the aggregator's latest price (``price:<symbol>``; null when none). ``q`` is 0 to
        20 letters or digits (422 otherwise). Answers are cached for 1 s per (q, limit)."""
        query = request.query.get("q", "")
        if not _INSTRUMENT_QUERY.fullmatch(query):
            raise ApiError(422, "invalid", "q must be at most 20 letters or digits")
        limit = int_param(request, "limit", default=20, maximum=INSTRUMENTS_MAX_LIMIT)
        assert limit is not None
        quotes = await self._search.search(query, limit)
        return json_response(
            {
                "instruments": [
                    {
                        "symbol": quote.instrument.symbol,
                        "type": quote.instrument.type,
                        "base": quote.instrument.base,
                        "quote": quote.instrument.quote,
                        "status": quote.instrument.status,
                        "price": None if quote.price is None else quote.price.value,
                        "price_time": None if quote.price is None else rfc3339_ms(quote.price.second_ms),
                    }
                    for quote in quotes
                ]
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
