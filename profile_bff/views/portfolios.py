"""The portfolio routes: ``/v2/coin/symbols``, ``/v2/coin/symbol``, ``/v2/user/profile``, ``/v2/user/history``
(docs/CONTRACTS.md, "BFF REST"), over :class:`profile_bff.portfolios.Portfolios`.

Every route needs an access token; the writes (adding, updating and removing a coin, deleting the profile)
are charged to the user's write limit (``BFF_WRITE_RATE_PER_USER``, :mod:`profile_bff.ceilings`), and adding
a coin honours ``Idempotency-Key`` (:mod:`profile_bff.idempotency`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC
from decimal import Decimal
from typing import Any

from aiohttp import web

from crypto_mesh.httperrors import ApiError
from crypto_mesh.throttle import Rate
from profile_bff import idempotency
from profile_bff.ceilings import Ceilings
from profile_bff.idempotency import Idempotency
from profile_bff.portfolio import CONTEXT
from profile_bff.portfolios import Portfolios
from profile_bff.store import StoredAnswer
from profile_bff.tokens import AccessClaims, AccessTokenVerifier
from profile_bff.views.errors import answer
from profile_bff.views.requests import authenticate, int_param, json_response, read_json_object, required

HISTORY_MAX_LIMIT = 100


class PortfolioViews:
    """The portfolio routes over ``portfolios`` and ``keys`` (the ``Idempotency-Key`` rules); callers prove
    themselves with tokens ``verifier`` checks, and their writes are charged to ``ceilings`` at
    ``write_rate``."""

    def __init__(
        self,
        portfolios: Portfolios,
        keys: Idempotency,
        verifier: AccessTokenVerifier,
        ceilings: Ceilings,
        write_rate: Rate,
    ) -> None:
        self._portfolios = portfolios
        self._keys = keys
        self._verifier = verifier
        self._ceilings = ceilings
        self._write_rate = write_rate

    async def list_coins(self, request: web.Request) -> web.Response:
        """``GET /v2/coin/symbols`` → ``200 {"coins": [{"symbol", "quantity"}]}`` sorted by symbol; 404."""
        claims, _ = await authenticate(request, self._verifier)
        holdings = await self._portfolios.holdings(claims.user_id)
        return json_response({"coins": [_coin_json(s, q) for s, q in sorted(holdings.coins.items())]})

    async def add_coin(self, request: web.Request) -> web.StreamResponse:
        """``POST /v2/coin/symbol {"symbol", "quantity"}`` → ``201 {"symbol", "quantity"}``; 409 already held
        or ``coin_limit_reached`` (``BFF_MAX_COINS_PER_USER``); 422 a symbol the exchange does not list or
        that is not ``TRADING``; 429 over ``BFF_WRITE_RATE_PER_USER``. Honours ``Idempotency-Key``."""
        claims, _ = await self._writer(request)

        async def add() -> web.Response:
            body = await read_json_object(request)
            coin = await self._portfolios.add_coin(
                claims.user_id, required(body, "symbol"), required(body, "quantity")
            )
            return json_response(_coin_json(coin.symbol, coin.quantity), status=201)

        return await run_idempotent(request, self._keys, claims.user_id, add)

    async def update_coin(self, request: web.Request) -> web.Response:
        """``PATCH /v2/coin/symbol {"symbol", "quantity"}`` → ``200 {"symbol", "quantity"}``; 404 not held."""
        claims, _ = await self._writer(request)
        body = await read_json_object(request)
        coin = await self._portfolios.update_coin(
            claims.user_id, required(body, "symbol"), required(body, "quantity")
        )
        return json_response(_coin_json(coin.symbol, coin.quantity))

    async def delete_coin(self, request: web.Request) -> web.Response:
        """``DELETE /v2/coin/symbol`` with ``{"symbol"}`` or ``?symbol=`` → 204; 404 not held."""
        claims, _ = await self._writer(request)
        if "symbol" in request.query:
            symbol = request.query["symbol"]
        elif request.body_exists:
            symbol = required(await read_json_object(request), "symbol")
        else:
            raise ApiError(400, "missing_field", "symbol is required (JSON body or ?symbol=)")
        await self._portfolios.delete_coin(claims.user_id, symbol)
        return web.Response(status=204)

    async def get_profile(self, request: web.Request) -> web.Response:
        """``GET /v2/user/profile`` → 200 profile (docs/CONTRACTS.md, "Profile JSON"); 404; 503 Redis down."""
        claims, _ = await authenticate(request, self._verifier)
        return web.Response(
            body=await self._portfolios.profile(claims.user_id),
            content_type="application/json",
            charset="utf-8",
        )

    async def delete_profile(self, request: web.Request) -> web.Response:
        """``DELETE /v2/user/profile`` → 204: the profile, its coins, its followers and the auth user go; 503
        while auth is down (retry with the same token:
        :meth:`~profile_bff.portfolios.Portfolios.delete_profile`)."""
        claims, token = await self._writer(request)
        await self._portfolios.delete_profile(claims.user_id, token)
        return web.Response(status=204)

    async def list_history(self, request: web.Request) -> web.Response:
        """``GET /v2/user/history?limit=&cursor=`` → ``200 {"items": [...], "next_cursor"}``, newest first.

        Each item: ``{"id", "symbol", "operation": "add"|"update"|"remove", "old_quantity", "new_quantity",
        "at"}`` (quantities decimal strings or null, ``at`` RFC 3339 UTC). ``limit`` 1..100 (default 50);
        ``next_cursor`` is passed back as ``cursor`` for the next (older) page and is null on the last page.
        """
        claims, _ = await authenticate(request, self._verifier)
        limit = int_param(request, "limit", default=50, maximum=HISTORY_MAX_LIMIT)
        cursor = int_param(request, "cursor", default=None, maximum=2**63 - 1)
        assert limit is not None
        page = await self._portfolios.history(claims.user_id, before_id=cursor, limit=limit)
        items = [
            {
                "id": entry.id,
                "alert_id": entry.alert_id,
                "symbol": entry.symbol,
                "operation": entry.operation,
                "old_quantity": None if entry.old_quantity is None else CONTEXT.normalize(entry.old_quantity),
                "new_quantity": None if entry.new_quantity is None else CONTEXT.normalize(entry.new_quantity),
                "at": entry.at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            }
            for entry in page.entries
        ]
        next_cursor = None if page.next_cursor is None else str(page.next_cursor)
        return json_response({"items": items, "next_cursor": next_cursor})

    async def _writer(self, request: web.Request) -> tuple[AccessClaims, str]:
        """The caller of a write, charged to its write limit: its claims and access token."""
        claims, token = await authenticate(request, self._verifier)
        await self._ceilings.limit_user("write", claims.user_id, self._write_rate)
        return claims, token


async def run_idempotent(
    request: web.Request, keys: Idempotency, user_id: int, respond: Callable[[], Awaitable[web.Response]]
) -> web.StreamResponse:
    """``respond()`` at most once per ``Idempotency-Key`` of ``user_id`` (:mod:`profile_bff.idempotency`);
    without the header it simply runs. A retry gets the first answer, errors below 500 included, with
    ``Idempotent-Replayed: true``."""
    raw_key = request.headers.get("Idempotency-Key")
    if raw_key is None:
        return await respond()
    key = idempotency.parse_key(raw_key)
    request_hash = idempotency.fingerprint(request.method, request.path, await request.read())
    first: list[web.StreamResponse] = []

    async def run() -> StoredAnswer:
        response = await answer(request, respond)
        first.append(response)
        assert isinstance(response, web.Response)
        return StoredAnswer(response.status, response.text)

    stored, replayed = await keys.run(user_id, key, request_hash, run)
    return _replay(stored) if replayed else first[0]


def _coin_json(symbol: str, quantity: Decimal) -> dict[str, Any]:
    return {"symbol": symbol, "quantity": CONTEXT.normalize(quantity)}


def _replay(answer: StoredAnswer) -> web.Response:
    headers = {"Idempotent-Replayed": "true"}
    if answer.body is None:
        return web.Response(status=answer.status, headers=headers)
    return web.Response(
        status=answer.status, text=answer.body, content_type="application/json", headers=headers
    )
