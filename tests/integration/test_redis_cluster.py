"""The BFF's Redis use on a Redis Cluster of three masters (``redis_cluster_url``, tests/conftest.py), through
the cluster URL of :mod:`crypto_mesh.redisclient`, each service connecting as its own ACL user: its
subscriptions hear prices that scripts on every master published, latest prices are read across slots, and the
login limits and socket leases run their scripts there. The market-path scenarios of one aggregator run on the
cluster in test_market_path.py (``ON_A_CLUSTER_TOO``). A script whose keys span slots fails on a cluster with
``CROSSSLOT``, so passing here proves the hash tags; tests/unit/test_redis_slots.py checks the same of every key
builder without a cluster.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from support import polling
from support.credentials import redis_user_url

from aggregator.secondstat import SecondStat
from aggregator.store import StatPublisher, connect_redis
from crypto_mesh.redisclient import connect
from profile_bff.ceilings import Ceilings
from profile_bff.ratelimit import Rate, RoutePolicy, client_charges
from profile_bff.store import ALERTS_CHANNEL, MarketBus
from profile_bff.subscriptions import Subscriptions


@pytest.fixture
async def cluster_url(redis_cluster_url) -> str:
    """The session's Redis Cluster, emptied."""
    client = connect(redis_cluster_url)
    await client.flushdb()  # on every master
    await client.aclose()
    return redis_cluster_url


def stat(symbol: str, second: int, price: str) -> SecondStat:
    p = Decimal(price)
    return SecondStat(symbol, second * 1000, p, p, p, p, Decimal(1), p, 1, second)


async def test_the_bff_hears_and_reads_prices_published_on_every_master(cluster_url):
    # Symbols whose price keys land on different masters: a publish from each master's script.
    symbols = [f"s{i}usdt" for i in range(12)]
    inspector = connect(cluster_url)
    await inspector.initialize()
    masters = {inspector.get_node_from_key(f"price:{symbol}").name for symbol in symbols}
    await inspector.aclose()
    assert len(masters) == 3
    aggregator = connect_redis(redis_user_url(cluster_url, "aggregator"))
    publisher = StatPublisher(aggregator)
    writer = asyncio.create_task(publisher.run())
    bus = MarketBus(redis_user_url(cluster_url, "bff"))
    heard: dict[str, bytes] = {}
    alerts: list[bytes] = []
    connected = asyncio.Event()

    def on_message(channel: str, data: bytes) -> None:
        if channel == ALERTS_CHANNEL:
            alerts.append(data)
        else:
            heard[channel] = data

    async def on_connected() -> None:
        connected.set()

    subscriptions = Subscriptions(bus, lambda: [*symbols, ALERTS_CHANNEL], on_message, on_connected)
    try:
        subscriptions.start()
        await polling.eventually(connected.is_set, what="subscribed")
        for symbol in symbols:
            publisher.submit(stat(symbol, 1_700_000_000, "10"))
        await polling.eventually(lambda: set(heard) == set(symbols), what="every symbol heard")
        prices = await bus.latest_prices([*symbols, "nonesuch"])
        assert sorted(prices) == sorted(symbols)
        assert all(price.second_ms == 1_700_000_000_000 for price in prices.values())
        assert len(await bus.recent_seconds(symbols[0])) == 1
        # Retried (an ambiguous failure): not republished, not listed twice.
        publisher.submit(stat(symbols[0], 1_700_000_000, "10"))
        await polling.eventually(lambda: publisher.stale == 1, what="the retry refused")
        assert len(await bus.recent_seconds(symbols[0])) == 1
        # The alerts of one evaluation round: published by one script, heard in order.
        sent = [b'{"user_id": %d}' % n for n in range(5)]
        await bus.publish_alerts(sent)
        await polling.eventually(lambda: len(alerts) >= len(sent), what="the alerts heard")
        assert alerts == sent
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await subscriptions.close()
        await bus.close()
        await aggregator.aclose()


async def test_login_limits_and_socket_leases_run_on_a_cluster(cluster_url):
    ceilings = Ceilings(redis_user_url(cluster_url, "bff"), max_sockets_per_user=2)
    policy = RoutePolicy(
        route="login",
        per_address=Rate(5, 60),
        per_name=Rate(5, 60),
        refund_success=True,
        per_name_and_address=Rate(2, 60),
    )
    charges = client_charges(policy, "203.0.113.7", "alice")
    try:
        assert len(charges) == 3
        assert await ceilings.limiter.acquire(charges) == 0
        assert await ceilings.limiter.acquire(charges) == 0
        assert await ceilings.limiter.acquire(charges) > 0  # the (name, address) budget of 2 is spent
        await ceilings.limiter.refund(charges)
        assert await ceilings.limiter.acquire(charges) == 0

        slots = [await ceilings.slots.acquire(user_id) for user_id in (1, 1, 1, 2)]
        assert slots[2] is None and None not in (slots[0], slots[1], slots[3])
        await ceilings.slots.renew()  # pipelined scripts over several masters
        await ceilings.slots.release(1, slots[0])
        assert await ceilings.slots.acquire(1) is not None
    finally:
        await ceilings.close()
