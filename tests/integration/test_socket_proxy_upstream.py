"""Upstream connections of socket_proxy against the replay exchange: placement within the per-connection stream
limit, idle close, frame-exact replacement before the 24 h limit, pacing of control messages. The decisions
alone (handover, attempt budget, backoff) are tests/unit/test_socket_proxy_handover.py."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from support.polling import eventually

from launcher.replay.server import start as start_replay
from launcher.replay.settings import ReplaySettings
from socket_proxy.fanout import Counters
from socket_proxy.upstream import Upstream


async def replay_info(port: int) -> dict:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/replay/v1/info") as response,
    ):
        return await response.json()


@pytest.fixture(scope="module")
async def exchange(trade_recording):
    running = await start_replay(ReplaySettings(port=0, files=(trade_recording,), speed=50.0))
    yield running
    await running.stop()


@pytest.fixture(autouse=True)
async def no_connection_left(exchange):
    """Each test starts when the exchange has closed every connection of the tests before (the exchange is
    the module's, and it sees a closed connection go a moment after the client closed it)."""

    async def none_open():
        return (await replay_info(exchange.port))["connections"] == 0

    await eventually(none_open, 30)


class Collector:
    """Frames handed on by an Upstream, per stream, in arrival order."""

    def __init__(self) -> None:
        self.frames: dict[str, list[bytes]] = {}

    def __call__(self, stream: str, raw: bytes) -> None:
        self.frames.setdefault(stream, []).append(raw)


async def test_a_full_connection_makes_the_pool_open_another_and_an_emptied_one_closes(exchange):
    collector = Collector()
    upstream = Upstream(exchange.url, collector, Counters(), max_streams=2)
    try:
        for stream in ("btcusdt@trade", "ethusdt@trade", "!miniTicker@arr"):
            upstream.add(stream)

        async def all_subscribed():
            info = await replay_info(exchange.port)
            return info["connections"] == 2 and len(info["subscriptions"]) == 3

        assert await eventually(all_subscribed)
        assert upstream.connections == 2

        upstream.remove("!miniTicker@arr")

        async def one_left():
            info = await replay_info(exchange.port)
            return info["connections"] == 1 and set(info["subscriptions"]) == {
                "btcusdt@trade",
                "ethusdt@trade",
            }

        assert await eventually(one_left)
        upstream.remove("btcusdt@trade")
        upstream.remove("ethusdt@trade")

        async def none_left():
            info = await replay_info(exchange.port)
            return info["connections"] == 0 and info["subscriptions"] == {}

        assert await eventually(none_left)
        assert collector.frames["btcusdt@trade"][0].startswith(b'{"stream":"btcusdt@trade","data":')
    finally:
        await upstream.close()


async def test_connections_are_replaced_before_their_age_limit_without_losing_or_repeating_a_frame(exchange):
    collector = Collector()
    counters = Counters()
    upstream = Upstream(exchange.url, collector, counters, max_age_s=0.7)
    try:
        upstream.add("btcusdt@trade")

        async def rotated_twice():
            return counters.rotations >= 2

        # Each replacement subscribes a new websocket and waits for it to catch up; a loaded machine is slower.
        assert await eventually(rotated_twice, 60)

        # A connection is replaced every 0.7 s and the old one closes once the new one has caught up, so two
        # may be open at a given moment; a replaced connection left open would keep the count above one.
        async def one_subscription():
            return (await replay_info(exchange.port))["subscriptions"] == {"btcusdt@trade": 1}

        assert await eventually(one_subscription, 30)
    finally:
        await upstream.close()
    ids = [orjson.loads(frame)["data"]["t"] for frame in collector.frames["btcusdt@trade"]]
    assert len(ids) > 500
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert counters.reconnects == 0


async def test_many_subscription_changes_are_batched_and_paced_below_five_messages_a_second(exchange):
    upstream = Upstream(exchange.url, Collector(), Counters())
    streams = [f"sym{i:03d}usdt@trade" for i in range(300)]
    try:
        upstream.add("btcusdt@trade")

        async def connected():
            return (await replay_info(exchange.port))["connections"] == 1

        assert await eventually(connected)
        # One stream at a time, as subscribers arrive: the replay exchange closes a connection that sends a
        # sixth message within a second, so all 300 arriving means they were coalesced and paced.
        for stream in streams:
            upstream.add(stream)
            await asyncio.sleep(0.001)

        async def all_subscribed():
            return len((await replay_info(exchange.port))["subscriptions"]) == 301

        assert await eventually(all_subscribed)
        info = await replay_info(exchange.port)
        assert info["connections"] == 1
    finally:
        await upstream.close()
