"""The one stand-in for the aggregator's control API (docs/CONTRACTS.md, "Aggregator control HTTP"), for tests
of the BFF: the follower routes with the real aggregator's answers and errors, its service credential, and a
record of every follower change it was asked for. It streams nothing; prices reach a BFF under test through
Redis, published by the test.

tests/test_fake_aggregator.py holds it to the real aggregator: the same calls get the same answers from both.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web
from support.credentials import service_token_file

from crypto_mesh import jsonutil
from crypto_mesh.binance import InvalidSymbol, normalize_symbol
from crypto_mesh.httperrors import ApiError, error_middleware
from crypto_mesh.servicecreds import bearer_token_middleware, read_tokens

#: docs/CONTRACTS.md: ``follower`` is ``[A-Za-z0-9:_-]{1,64}``, and one follower follows at most 4096 symbols.
FOLLOWER = re.compile(r"[A-Za-z0-9:_-]{1,64}")
MAX_SYMBOLS_PER_FOLLOWER = 4096


class FakeAggregator:
    """The aggregator's control API on 127.0.0.1 (``url``), in this process.

    Routes (every one but ``GET /healthz`` behind the service credential of ``token_file``, default the
    session's :func:`credentials.service_token_file`, as the real middleware refuses a missing or wrong one):

    - ``PUT /v1/symbols/{symbol}/followers/{follower}`` → ``{"symbol", "followers": n, "tracked": true}``
    - ``DELETE /v1/symbols/{symbol}/followers/{follower}`` → ``{"symbol", "followers": n, "tracked": n > 0}``
    - ``PUT /v1/followers/{follower}`` with ``{"symbols": [...]}`` → ``{"follower", "symbols": [{"symbol",
      "followers"}], "released": [...]}``: the follower's whole set
    - ``GET /v1/symbols`` → ``{"symbols": [{"symbol", "followers"}]}``, sorted by symbol
    - ``GET /healthz`` → ``{"status": "ok"}``

    Symbols are normalised as the aggregator does (:func:`crypto_mesh.binance.normalize_symbol`); an invalid
    symbol or follower is ``422`` (``invalid_symbol``, ``invalid_follower``, ``too_many_symbols``), a body
    that is not ``{"symbols": [...]}`` ``400 malformed``, an unknown route ``404 not_found``, a wrong method
    ``405 method_not_allowed``.

    :meth:`calls_of` tells what a BFF asked for one user; :meth:`followed_by` what that user follows now.
    :meth:`stop` forgets every follower (an aggregator that lost its state); :meth:`start` again answers on
    the same port.
    """

    def __init__(self, token_file: Path | None = None) -> None:
        self.port = 0
        #: Symbol → its followers, as the aggregator keeps them (a symbol is tracked while it has one).
        self.followers: dict[str, set[str]] = {}
        #: Every follower change asked for, in order: ``(follower, action, *symbols)``, ``action`` one of
        #: ``"follow"`` (PUT of one symbol), ``"unfollow"`` (DELETE of one symbol), ``"set"`` (the whole set).
        self.calls: list[tuple[str, ...]] = []
        self._tokens = read_tokens(token_file or service_token_file())
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: what a BFF's ``aggregator_url`` names."""
        return f"http://127.0.0.1:{self.port}"

    def calls_of(self, user_id: int) -> list[tuple[str, ...]]:
        """The follower changes asked for ``user:<user_id>`` (the BFF's follower), in order, as
        ``("follow", symbol)``, ``("unfollow", symbol)`` or ``("set", *symbols)``."""
        follower = f"user:{user_id}"
        return [call[1:] for call in self.calls if call[0] == follower]

    def followed_by(self, user_id: int) -> set[str]:
        """The symbols ``user:<user_id>`` follows now."""
        follower = f"user:{user_id}"
        return {symbol for symbol, followers in self.followers.items() if follower in followers}

    async def start(self) -> None:
        """Answer on :attr:`port` (a free one the first time)."""
        self._runner = web.AppRunner(self._app())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop answering and forget every follower."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.followers.clear()

    async def __aenter__(self) -> FakeAggregator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    # -- the routes ------------------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        # The credential first, as the aggregator has it: nothing else runs for an unauthenticated request.
        app = web.Application(
            middlewares=[bearer_token_middleware(self._tokens, realm="aggregator"), error_middleware()]
        )
        app.router.add_put("/v1/symbols/{symbol}/followers/{follower}", self._follow)
        app.router.add_delete("/v1/symbols/{symbol}/followers/{follower}", self._unfollow)
        app.router.add_put("/v1/followers/{follower}", self._set)
        app.router.add_get("/v1/symbols", self._symbols)
        app.router.add_get("/healthz", self._health)
        return app

    async def _follow(self, request: web.Request) -> web.Response:
        symbol, follower = _symbol(request.match_info["symbol"]), _follower(request)
        self.calls.append((follower, "follow", symbol))
        self.followers.setdefault(symbol, set()).add(follower)
        return _json({"symbol": symbol, "followers": len(self.followers[symbol]), "tracked": True})

    async def _unfollow(self, request: web.Request) -> web.Response:
        symbol, follower = _symbol(request.match_info["symbol"]), _follower(request)
        self.calls.append((follower, "unfollow", symbol))
        remaining = self.followers.get(symbol, set())
        remaining.discard(follower)
        if not remaining:
            self.followers.pop(symbol, None)
        return _json({"symbol": symbol, "followers": len(remaining), "tracked": bool(remaining)})

    async def _set(self, request: web.Request) -> web.Response:
        follower = _follower(request)
        symbols = _symbols_body(await request.read())
        self.calls.append((follower, "set", *symbols))
        released = []
        for symbol in [symbol for symbol in self.followers if symbol not in symbols]:
            followers = self.followers[symbol]
            if follower in followers:
                followers.discard(follower)
                if not followers:
                    del self.followers[symbol]
                    released.append(symbol)
        for symbol in symbols:
            self.followers.setdefault(symbol, set()).add(follower)
        return _json(
            {
                "follower": follower,
                "symbols": [{"symbol": s, "followers": len(self.followers[s])} for s in symbols],
                "released": sorted(released),
            }
        )

    async def _symbols(self, request: web.Request) -> web.Response:
        return _json(
            {"symbols": [{"symbol": s, "followers": len(self.followers[s])} for s in sorted(self.followers)]}
        )

    async def _health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})


def _json(body: dict) -> web.Response:
    return web.Response(body=jsonutil.dumps(body), content_type="application/json")


def _symbol(value: object) -> str:
    try:
        return normalize_symbol(value)
    except InvalidSymbol as exc:
        raise ApiError(422, "invalid_symbol", str(exc)) from None


def _follower(request: web.Request) -> str:
    follower = request.match_info["follower"]
    if not FOLLOWER.fullmatch(follower):
        raise ApiError(422, "invalid_follower", "follower must be 1 to 64 of A-Z a-z 0-9 : _ -")
    return follower


def _symbols_body(body: bytes) -> list[str]:
    """The distinct normalised symbols of a ``{"symbols": [...]}`` body, in first-seen order."""
    try:
        document = jsonutil.loads(body)
    except jsonutil.JSONDecodeError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("symbols"), list):
        raise ApiError(400, "malformed", 'body must be JSON {"symbols": [...]}')
    if len(document["symbols"]) > MAX_SYMBOLS_PER_FOLLOWER:
        raise ApiError(422, "too_many_symbols", f"at most {MAX_SYMBOLS_PER_FOLLOWER} symbols per follower")
    return list(dict.fromkeys(_symbol(value) for value in document["symbols"]))
