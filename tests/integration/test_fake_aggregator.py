"""The fake aggregator of the BFF tests (tests/support/fake_aggregator.py) answers the control API as the real
aggregator does (docs/CONTRACTS.md, "Aggregator control HTTP"): each test here runs against both, with the
same calls and the same expected answers, so that no BFF test passes only against the fake.

The real aggregator runs on Redis and Kafka without a socket_proxy: its control API does not need one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from support.credentials import service_headers
from support.fake_aggregator import FakeAggregator
from support.stacks import serve_aggregator

from support.ports import free_port
from crypto_mesh.secrets import random_token


@dataclass
class ControlApi:
    """A control API at ``base``; calling it makes one request presenting the service credential and
    answers ``(status, JSON body)``."""

    base: str
    http: aiohttp.ClientSession

    async def __call__(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        async with self.http.request(method, f"{self.base}{path}", data=body) as response:
            return response.status, await response.json()


@pytest.fixture(params=["fake", "real"])
async def control(request, redis_url, kafka_bootstrap) -> ControlApi:
    """The control API of the fake, or of a real aggregator on this module's Redis database (emptied
    first)."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "fake":
            base = (await stack.enter_async_context(FakeAggregator())).url
        else:
            async with aioredis.Redis.from_url(redis_url) as redis:
                await redis.flushdb()
            base = await stack.enter_async_context(serve_aggregator(redis_url, kafka_bootstrap, free_port()))
        http = await stack.enter_async_context(aiohttp.ClientSession(headers=service_headers()))
        yield ControlApi(base, http)


async def test_following_one_symbol_at_a_time_is_idempotent_and_counts_followers(control):
    route = "/v1/symbols/{}/followers/{}"
    answers = [
        await control(method, route.format(symbol, follower))
        for method, symbol, follower in [
            ("PUT", "BTCUSDT", "user:1"),
            ("PUT", "btcusdt", "user:1"),
            ("PUT", "btcusdt", "user:2"),
            ("DELETE", "btcusdt", "user:9"),
            ("DELETE", "btcusdt", "user:1"),
            ("DELETE", "btcusdt", "user:2"),
            ("DELETE", "btcusdt", "user:2"),
        ]
    ]
    assert answers == [
        (200, {"symbol": "btcusdt", "followers": 1, "tracked": True}),
        (200, {"symbol": "btcusdt", "followers": 1, "tracked": True}),
        (200, {"symbol": "btcusdt", "followers": 2, "tracked": True}),
        (200, {"symbol": "btcusdt", "followers": 2, "tracked": True}),
        (200, {"symbol": "btcusdt", "followers": 1, "tracked": True}),
        (200, {"symbol": "btcusdt", "followers": 0, "tracked": False}),
        (200, {"symbol": "btcusdt", "followers": 0, "tracked": False}),
    ]
    assert await control("GET", "/v1/symbols") == (200, {"symbols": []})


async def test_setting_a_followers_whole_set_joins_and_releases_symbols(control):
    await control("PUT", "/v1/symbols/btcusdt/followers/user:2")
    answer = await control("PUT", "/v1/followers/user:1", b'{"symbols": ["ETHUSDT", "btcusdt", "ethusdt"]}')
    assert answer == (
        200,
        {
            "follower": "user:1",
            "symbols": [{"symbol": "ethusdt", "followers": 1}, {"symbol": "btcusdt", "followers": 2}],
            "released": [],
        },
    )
    assert await control("GET", "/v1/symbols") == (
        200,
        {"symbols": [{"symbol": "btcusdt", "followers": 2}, {"symbol": "ethusdt", "followers": 1}]},
    )
    # btcusdt keeps user:2; ethusdt had no one else and is released.
    assert await control("PUT", "/v1/followers/user:1", b'{"symbols": ["solusdt"]}') == (
        200,
        {"follower": "user:1", "symbols": [{"symbol": "solusdt", "followers": 1}], "released": ["ethusdt"]},
    )
    assert await control("PUT", "/v1/followers/user:2", b'{"symbols": []}') == (
        200,
        {"follower": "user:2", "symbols": [], "released": ["btcusdt"]},
    )
    assert await control("GET", "/v1/symbols") == (200, {"symbols": [{"symbol": "solusdt", "followers": 1}]})


#: One symbol more than a follower may follow (docs/CONTRACTS.md: at most 4096).
TOO_MANY_SYMBOLS = orjson.dumps({"symbols": [f"sym{n}usdt" for n in range(4097)]})


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("PUT", "/v1/symbols/btc%2Fusdt/followers/user:1", None, 422, "invalid_symbol"),
        ("DELETE", "/v1/symbols/b/followers/user:1", None, 422, "invalid_symbol"),
        ("PUT", "/v1/symbols/btcusdt/followers/user%201", None, 422, "invalid_follower"),
        ("PUT", "/v1/followers/user%201", b'{"symbols": []}', 422, "invalid_follower"),
        ("PUT", "/v1/followers/user:1", b"not json", 400, "malformed"),
        ("PUT", "/v1/followers/user:1", b'{"symbols": "btcusdt"}', 400, "malformed"),
        ("PUT", "/v1/followers/user:1", b'{"symbols": [42]}', 422, "invalid_symbol"),
        ("PUT", "/v1/followers/user:1", TOO_MANY_SYMBOLS, 422, "too_many_symbols"),
        ("GET", "/v1/symbols/btcusdt/followers/user:1", None, 405, "method_not_allowed"),
        ("GET", "/v1/nothing-here", None, 404, "not_found"),
    ],
)
async def test_a_client_mistake_is_a_4xx_with_its_code_and_changes_nothing(
    control, method, path, body, status, code
):
    answer_status, answer = await control(method, path, body)
    assert (answer_status, answer["error"]["code"]) == (status, code)
    assert await control("GET", "/v1/symbols") == (200, {"symbols": []})


async def test_a_caller_without_the_service_credential_is_refused_with_a_bearer_challenge(control):
    async with aiohttp.ClientSession() as anonymous:
        wrong = {"Authorization": f"Bearer {random_token()}"}
        for headers, challenge in (
            ({}, 'Bearer realm="aggregator"'),
            (wrong, 'Bearer realm="aggregator", error="invalid_token"'),
        ):
            async with anonymous.put(
                f"{control.base}/v1/symbols/btcusdt/followers/user:1", headers=headers
            ) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"] == challenge
                assert (await response.json())["error"]["code"] == "unauthenticated"
    assert await control("GET", "/v1/symbols") == (200, {"symbols": []})
