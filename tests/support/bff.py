"""Talking to a BFF under test: the one client (:class:`BffClient`), a running BFF with what it is wired to
(:class:`Bff`), and the symbols, prices and profiles a BFF test works with. A BFF is started by
:func:`support.stacks.serve_bff`.
"""

from __future__ import annotations

import gzip
import itertools
import uuid
from dataclasses import dataclass
from decimal import Decimal
from http.cookies import Morsel, SimpleCookie
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from support.polling import eventually

from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil
from profile_bff.app import Running
from crypto_mesh.binance import DEFAULT_EXCHANGE_INFO
from support.fake_aggregator import FakeAggregator

PASSWORD = "correct horse battery"
#: The refresh cookie's name over HTTPS (``BFF_COOKIE_SECURE=true``, the default).
REFRESH_COOKIE = "__Host-refresh_token"
COIN = "/v2/coin/symbol"
#: Symbols only this test run uses, listed as TRADING in the exchangeInfo of :func:`write_exchange_info`, so
#: that tests sharing a Redis database or its channels never see each other's prices.
_RUN = uuid.uuid4().hex[:6]
TEST_SYMBOLS = [f"t{_RUN}{n:04d}usdt" for n in range(3000)]
_next_symbol = itertools.count()


def new_symbol() -> str:
    """A listed symbol (:data:`TEST_SYMBOLS`) no other test of this run uses."""
    return TEST_SYMBOLS[next(_next_symbol)]


def new_name() -> str:
    """A user name no other test uses."""
    return f"u{uuid.uuid4().hex[:12]}"


def write_exchange_info(directory: Path) -> Path:
    """The shipped exchangeInfo snapshot plus :data:`TEST_SYMBOLS` (TRADING), as
    ``directory/exchangeInfo.json`` (``BFF_EXCHANGE_INFO_FILE``)."""
    body = jsonutil.loads(gzip.decompress(DEFAULT_EXCHANGE_INFO.read_bytes()))
    body["symbols"] += [
        {"symbol": s.upper(), "status": "TRADING", "baseAsset": s[:-4].upper(), "quoteAsset": "USDT"}
        for s in TEST_SYMBOLS
    ]
    path = directory / "exchangeInfo.json"
    path.write_bytes(jsonutil.dumps(body))
    return path


def second_stat(symbol: str, price: str, second_ms: int) -> bytes:
    """The SecondStat JSON of one trade at ``price`` (decimal string) in the second starting at Unix ms
    ``second_ms``, as the aggregator encodes it for Redis."""
    p = Decimal(price)
    return jsonutil.dumps(SecondStat(symbol, second_ms, p, p, p, p, Decimal(1), p, 1, 1).to_json())


async def write_second(redis: aioredis.Redis, symbol: str, price: str, second_ms: int) -> None:
    """A SecondStat written as the aggregator writes it: key ``price:<symbol>`` set, then published on channel
    ``<symbol>``."""
    stat = second_stat(symbol, price, second_ms)
    await redis.set(f"price:{symbol}", stat)
    await redis.publish(symbol, stat)


def refresh_cookie(response: aiohttp.ClientResponse) -> Morsel | None:
    """The refresh cookie ``response`` sets (with its attributes), or ``None``."""
    cookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        cookie.load(header)
    return cookie.get(REFRESH_COOKIE)


def refresh_token(response: aiohttp.ClientResponse) -> str | None:
    """The value of the refresh cookie ``response`` sets (``""`` when it clears it), or ``None``."""
    cookie = refresh_cookie(response)
    return None if cookie is None else cookie.value


def with_refresh_cookie(token: str) -> dict[str, str]:
    """The ``Cookie`` header that presents refresh token ``token``."""
    return {"Cookie": f"{REFRESH_COOKIE}={token}"}


async def error_body(response: aiohttp.ClientResponse) -> dict:
    """The ``{"code", "message"}`` of an error answer; fails the test if the body has another shape."""
    body = await response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]


async def error_of(response: aiohttp.ClientResponse) -> str:
    """The code of an error answer (:func:`error_body`)."""
    return (await error_body(response))["code"]


async def next_profile(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict:
    """The next profile message of a profile WebSocket; fails the test on any other message."""
    message = await ws.receive(timeout=timeout)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    return jsonutil.loads(message.data)


@dataclass
class BffClient:
    """A client of the BFF at ``url`` (``http://127.0.0.1:<port>``) on a session that keeps no cookies: each
    request says which it sends.

    :meth:`register`, :meth:`login`, :meth:`refresh` and :meth:`profile` answer whatever the BFF answers,
    for tests about those answers; :meth:`sign_up`, :meth:`sign_in`, :meth:`user` and the coin methods are
    the setup steps of other tests, and fail the test unless the BFF says yes.
    """

    url: str
    http: aiohttp.ClientSession

    async def post(self, path: str, **kwargs) -> tuple[int, dict | None, aiohttp.ClientResponse]:
        """``POST url+path``: the status, the JSON body (``None`` if not JSON) and the (read) response."""
        async with self.http.post(f"{self.url}{path}", **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, body, resp

    async def register(self, name: str, password: str = PASSWORD) -> tuple[int, dict | None]:
        """``POST /v1/register``: status and body."""
        status, body, _ = await self.post("/v1/register", json={"name": name, "password": password})
        return status, body

    async def login(self, name: str, password: str = PASSWORD) -> tuple[int, dict | None, str | None]:
        """``POST /v1/login``: status, body and the refresh token set (or ``None``)."""
        status, body, resp = await self.post("/v1/login", json={"name": name, "password": password})
        return status, body, refresh_token(resp)

    async def refresh(self, token: str, **headers: str) -> tuple[int, dict | None, str | None]:
        """``POST /v1/refresh`` presenting refresh token ``token``: status, body and the refresh token set."""
        status, body, resp = await self.post("/v1/refresh", headers={**with_refresh_cookie(token), **headers})
        return status, body, refresh_token(resp)

    async def profile(self, access_token: str) -> tuple[int, dict]:
        """``GET /v2/user/profile`` with ``access_token``: status and body."""
        headers = {"Authorization": f"Bearer {access_token}"}
        async with self.http.get(f"{self.url}/v2/user/profile", headers=headers) as resp:
            return resp.status, await resp.json()

    async def sign_up(self, name: str | None = None) -> tuple[str, int]:
        """Register ``name`` (default: a new one) with :data:`PASSWORD`: its name and user id."""
        name = name or new_name()
        status, body = await self.register(name)
        assert status == 201, body
        return name, body["id"]

    async def sign_in(self, name: str) -> tuple[str, str]:
        """Log ``name`` in with :data:`PASSWORD`: its access token and refresh token."""
        status, body, token = await self.login(name)
        assert status == 200 and token, body
        return body["access_token"], token

    async def user(self) -> tuple[int, dict[str, str]]:
        """A new registered, logged-in user: its id and its ``Authorization`` header."""
        name, user_id = await self.sign_up()
        access, _ = await self.sign_in(name)
        return user_id, {"Authorization": f"Bearer {access}"}

    async def add_coin(self, auth: dict[str, str], symbol: str, quantity: str = "2") -> dict:
        """``POST /v2/coin/symbol`` for the user of ``auth``: the coin answered (``201``)."""
        return await self._coin("POST", 201, auth, json={"symbol": symbol, "quantity": quantity})

    async def update_coin(self, auth: dict[str, str], symbol: str, quantity: str) -> dict:
        """``PATCH /v2/coin/symbol``: the coin answered (``200``)."""
        return await self._coin("PATCH", 200, auth, json={"symbol": symbol, "quantity": quantity})

    async def remove_coin(self, auth: dict[str, str], symbol: str) -> None:
        """``DELETE /v2/coin/symbol?symbol=…`` (``204``)."""
        await self._coin("DELETE", 204, auth, params={"symbol": symbol})

    async def _coin(self, method: str, expected: int, auth: dict[str, str], **kwargs) -> dict | None:
        async with self.http.request(method, f"{self.url}{COIN}", headers=auth, **kwargs) as resp:
            assert resp.status == expected, await resp.text()
            return await resp.json() if expected != 204 else None


@dataclass
class Bff(BffClient):
    """A BFF under test and what it is wired to: the fake aggregator it calls (``None`` when it calls a real
    one or none), a client of its Redis database (the tests' own user), its profile database's URL, and
    the running service."""

    aggregator: FakeAggregator | None
    redis: aioredis.Redis
    database_url: str
    running: Running


async def wait_until_subscribed(bff: Bff, channel: str) -> None:
    """Wait until someone (the BFF) is subscribed to Redis channel ``channel``: a price published before
    would reach nobody."""

    async def subscribed() -> bool:
        return (await bff.redis.pubsub_numsub(channel))[0][1] > 0

    await eventually(subscribed, what=f"a subscriber of {channel}", interval_s=0.02)
