"""Redis answers only its users: nothing without a password, and each service only its own keys.

Against the test Redis server, started like the mesh's (crypto_mesh.redisacl: default user disabled, a user per
service), and against the Redis server of a `crypto-mesh up` plan.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from support.credentials import redis_passwords, redis_user_url
from support.polling import eventually
from redis.exceptions import AuthenticationError, NoPermissionError

from aggregator.secondstat import SecondStat
from aggregator.store import FollowerStore, followers_key, StatPublisher, TickerStore, connect_redis
from crypto_mesh.binance import MiniTicker
from launcher.embedded import ManagedProcess
from launcher.mesh import REDIS_ACL_FILE, build_plan
from launcher.settings import MeshSettings
from crypto_mesh.redisacl import acl_file_text, url_with_user, without_credentials
from profile_bff.ratelimit import Charge, Rate, RateLimiter
from profile_bff.store import MarketBus

#: What each kind of key looks like (docs/CONTRACTS.md, "Redis").
PRICE, TICKET, RATE_LIMIT = "price:btcusdt", "bff:ws-ticket:abc", "ratelimit:login:addr:203.0.113.7"
FOLLOWERS = followers_key("btcusdt")
TICKERS = "ticker:24h"
#: redis-py's message for Redis's ``NOAUTH`` error (the prefix becomes the exception class).
NOAUTH = "Authentication required"


def anonymous(redis_url: str) -> aioredis.Redis:
    """A client that sends no credential (RESP2: no HELLO first, so each command meets the NOAUTH check)."""
    return aioredis.Redis.from_url(without_credentials(redis_url), protocol=2)


@pytest.mark.parametrize(
    "command",
    [
        ("GET", RATE_LIMIT),
        ("SET", RATE_LIMIT, "1"),
        ("GETDEL", TICKET),
        ("SET", TICKET, "{}"),
        ("GET", PRICE),
        ("MGET", PRICE),
        ("SET", PRICE, "{}"),
        ("HGETALL", TICKERS),
        ("HSET", TICKERS, "btcusdt", "{}"),
        ("SMEMBERS", "aggregator:symbols"),
        ("PUBLISH", "btcusdt", "{}"),
        ("KEYS", "*"),
        ("CONFIG", "GET", "*"),
    ],
)
async def test_a_connection_without_credentials_can_neither_read_nor_write_anything(redis_url, command):
    client = anonymous(redis_url)
    try:
        with pytest.raises(AuthenticationError, match=NOAUTH):
            await client.execute_command(*command)
    finally:
        await client.aclose()


async def test_a_connection_without_credentials_cannot_subscribe_to_prices(redis_url):
    client = anonymous(redis_url)
    pubsub = client.pubsub()
    try:
        with pytest.raises(AuthenticationError, match=NOAUTH):
            await pubsub.subscribe("btcusdt")
            await pubsub.get_message(timeout=2.0)  # the refusal is the answer to SUBSCRIBE
    finally:
        await pubsub.aclose()
        await client.aclose()


@pytest.mark.parametrize("user", ["bff", "aggregator", "default"])
async def test_a_wrong_password_is_refused(redis_url, user):
    client = aioredis.Redis.from_url(url_with_user(redis_url, user, "not-the-password"))
    try:
        with pytest.raises(AuthenticationError, match="invalid username-password pair"):
            await client.get(PRICE)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "command",
    [("GET", TICKET), ("GETDEL", TICKET), ("SET", TICKET, "{}"), ("GET", RATE_LIMIT), ("SET", RATE_LIMIT, "0"),
     ("DEL", RATE_LIMIT), ("KEYS", "*"), ("FLUSHDB",), ("CONFIG", "GET", "*")],
)
async def test_the_aggregator_cannot_read_or_write_the_bffs_tickets_or_rate_limits(redis_url, command):
    client = aioredis.Redis.from_url(redis_user_url(redis_url, "aggregator"))
    try:
        with pytest.raises(NoPermissionError):
            await client.execute_command(*command)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "command",
    [("SADD", FOLLOWERS, "user:1"), ("SREM", FOLLOWERS, "user:1"), ("SMEMBERS", "aggregator:symbols"),
     ("HSET", TICKERS, "btcusdt", "{}"), ("HDEL", TICKERS, "btcusdt"), ("KEYS", "*"), ("FLUSHDB",),
     ("CONFIG", "SET", "appendonly", "no"), ("ACL", "LIST")],
)
async def test_the_bff_cannot_write_the_aggregators_followers_or_tickers_nor_administer_redis(
    redis_url, command
):
    client = aioredis.Redis.from_url(redis_user_url(redis_url, "bff"))
    try:
        with pytest.raises(NoPermissionError):
            await client.execute_command(*command)
    finally:
        await client.aclose()


async def test_with_their_credentials_prices_tickers_seconds_tickets_followers_and_rate_limits_all_work(
    redis_url,
):
    symbol = f"zz{uuid.uuid4().hex[:8]}usdt"
    aggregator = connect_redis(redis_user_url(redis_url, "aggregator"))
    bff_url = redis_user_url(redis_url, "bff")
    bus = MarketBus(bff_url)
    bff = aioredis.Redis.from_url(bff_url)
    publisher = StatPublisher(aggregator)
    ticker_store = TickerStore(aggregator)
    task = asyncio.create_task(publisher.run())
    ticker_task = asyncio.create_task(ticker_store.run())
    pubsub = await bus.pubsub()
    try:
        # The aggregator follows and publishes; the BFF hears the price and reads the latest one.
        assert await FollowerStore(aggregator).add(symbol, "user:1") == 1
        assert await FollowerStore(aggregator).remove(symbol, "user:1") == 0
        await pubsub.subscribe(symbol)
        price = Decimal("61837.63")
        publisher.submit(SecondStat(symbol, 1_000, price, price, price, price, Decimal(1), price, 1, 7))

        async def heard():
            message = await pubsub.get_message(timeout=0.1)
            return message is not None and json.loads(message["data"])["p"] == "61837.63"

        await eventually(heard)
        assert (await bus.latest_prices([symbol]))[symbol].value == price
        # The aggregator keeps the symbol's 24 h ticker; the BFF reads them all, and this one with its price.
        one = Decimal(1)
        ticker_store.submit([MiniTicker(5_000, symbol, price, one, price, one, one, price)])
        await eventually(lambda: ticker_store.written == 1)
        assert (await bus.tickers())[symbol].close == price
        ticker, latest = await bus.market_of(symbol)
        assert ticker is not None and ticker.quote_volume == price and latest is not None
        assert [second.close for second in await bus.recent_seconds(symbol)] == [price]
        # The BFF's own keys: a single-use ticket, a portfolio notice, a rate-limit charge.
        ticket = uuid.uuid4().hex
        await bus.issue_ticket(ticket, b'{"sub": "1"}', ttl_s=30)
        assert await bus.redeem_ticket(ticket) == b'{"sub": "1"}'
        assert await bus.redeem_ticket(ticket) is None
        await bus.publish_portfolio_change(1)
        charge = [Charge(f"ratelimit:test:{uuid.uuid4().hex}", Rate(1, 60))]
        limiter = RateLimiter(bff)
        assert await limiter.acquire(charge) == 0
        assert await limiter.acquire(charge) > 0
        await limiter.refund(charge)
        assert await limiter.acquire(charge) == 0
    finally:
        task.cancel()
        ticker_task.cancel()
        await asyncio.gather(task, ticker_task, return_exceptions=True)
        await pubsub.aclose()
        await bus.close()
        await bff.aclose()
        await aggregator.aclose()


def test_the_acl_file_disables_the_default_user_and_holds_hashes_not_passwords():
    passwords = redis_passwords()
    text = acl_file_text({"bff": passwords["bff"], "aggregator": passwords["aggregator"]}, healthcheck=True)
    assert "user default off" in text
    assert not any(password in text for password in passwords.values())
    lines = {line.split()[1]: line for line in text.splitlines()}
    assert set(lines) == {"default", "bff", "aggregator", "healthcheck"}
    assert "nopass" in lines["healthcheck"] and lines["healthcheck"].endswith("-@all +ping")


async def test_the_mesh_starts_its_redis_with_a_user_per_service_and_writes_no_password_in_its_state(tmp_path):
    settings = MeshSettings(data_dir=tmp_path, postgres_url="postgresql+asyncpg://u:p@127.0.0.1:1")
    plan = build_plan(settings, postgres=None)
    redis = next(process for process in plan.processes if process.name == "redis")
    acl_file = tmp_path / "secrets" / REDIS_ACL_FILE
    assert redis.argv[redis.argv.index("--aclfile") + 1] == str(acl_file)
    assert oct(acl_file.stat().st_mode & 0o777) == "0o600"
    envs = {process.name: process.env for process in plan.processes}
    bff_url, aggregator_url = envs["profile_bff"]["BFF_REDIS_URL"], envs["aggregator"]["AGGREGATOR_REDIS_URL"]
    assert bff_url.startswith("redis://bff:") and aggregator_url.startswith("redis://aggregator:")
    state = json.dumps(plan.state())
    for secret in ("redis_bff_password", "redis_aggregator_password", "aggregator_api_token", "etl_api_token"):
        assert (tmp_path / "secrets" / secret).read_text() not in state
    assert envs["profile_bff"]["BFF_AGGREGATOR_TOKEN_FILE"] == envs["aggregator"]["AGGREGATOR_API_TOKEN_FILE"]

    port = int(redis.argv[redis.argv.index("--port") + 1])
    server = ManagedProcess("redis", redis.argv, port, tmp_path / "redis.log")
    await asyncio.to_thread(server.start)
    try:
        nobody = anonymous(plan.urls["redis"])
        bff = aioredis.Redis.from_url(bff_url)
        try:
            with pytest.raises(AuthenticationError, match=NOAUTH):
                await nobody.get(PRICE)
            await bff.set(TICKET, "{}", ex=5)
            assert await bff.getdel(TICKET) == b"{}"
        finally:
            await nobody.aclose()
            await bff.aclose()
    finally:
        await asyncio.to_thread(server.stop)
