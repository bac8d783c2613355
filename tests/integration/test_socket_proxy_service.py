"""socket_proxy against a real replay exchange over real gRPC: fan-out, reference counting, reconnects,
validation and backpressure."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.polling import eventually

from crypto_mesh.grpc_tls import tls_channel
from support.ports import free_port
from crypto_mesh.pki import AGGREGATOR, HEALTHCHECK, SOCKET_PROXY
from crypto_mesh.proto import socket_pb2, socket_pb2_grpc
from launcher.replay.server import start as start_replay
from launcher.replay.settings import ReplaySettings
from socket_proxy.server import start as start_proxy
from socket_proxy.settings import ProxySettings

BTC_TRADES = socket_pb2.TradeStreamRequest(symbol="btcusdt", kind=socket_pb2.TRADE_KIND_TRADE)


async def replay_info(port: int) -> dict:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/replay/v1/info") as response,
    ):
        return await response.json()


@pytest.fixture
def stub_for(mesh_pki):
    """Factory: ``async with stub_for(port[, options]) as stub`` is a SocketProxy stub on a channel to the
    proxy on ``port`` as the aggregator, its one allowed caller."""

    @contextlib.asynccontextmanager
    async def open_stub(port: int, options=()):
        tls = mesh_pki[AGGREGATOR].load()
        async with tls_channel(f"127.0.0.1:{port}", tls, SOCKET_PROXY, options) as channel:
            yield socket_pb2_grpc.SocketProxyStub(channel)

    return open_stub


async def read_frames(call, count: int) -> list[bytes]:
    frames: list[bytes] = []
    async for message in call:
        frames.extend(message.data)
        if len(frames) >= count:
            return frames
    return frames


async def test_two_subscribers_of_one_stream_each_get_the_same_complete_ordered_frames(
    proxy, exchange, stub_for
):
    async with stub_for(proxy.port) as stub:
        first = stub.StreamTrades(BTC_TRADES)
        second = stub.StreamTrades(BTC_TRADES)
        frames_a, frames_b = await asyncio.wait_for(
            asyncio.gather(read_frames(first, 1500), read_frames(second, 1500)), 20
        )
        info = await replay_info(exchange.port)
        assert info["subscriptions"] == {"btcusdt@trade": 1}  # one upstream subscription for both
        first.cancel()
        second.cancel()

    ids_a = [orjson.loads(frame)["data"]["t"] for frame in frames_a]
    ids_b = [orjson.loads(frame)["data"]["t"] for frame in frames_b]
    for ids in (ids_a, ids_b):
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # trade ids of the recording are contiguous
    common = range(max(ids_a[0], ids_b[0]), min(ids_a[-1], ids_b[-1]) + 1)
    assert len(common) > 1000
    assert [f for f, i in zip(frames_a, ids_a) if i in common] == [
        f for f, i in zip(frames_b, ids_b) if i in common
    ]
    frame = orjson.loads(frames_a[0])
    assert frame["stream"] == "btcusdt@trade" and set(frame["data"]) >= {"e", "E", "s", "t", "p", "q", "T"}
    assert proxy.service.counters.frames_in >= 1500

    async def all_counted() -> bool:
        # The proxy counts a batch once its write returns. A client can read a batch and cancel before that
        # write returns, so each call's last batch (at most max_batch frames) may never be counted.
        read = len(frames_a) + len(frames_b)
        return proxy.service.counters.frames_out >= read - 2 * ProxySettings().max_batch

    assert await eventually(all_counted)

    async def released():
        info = await replay_info(exchange.port)
        upstream_released = info["connections"] == 0 and info["subscriptions"] == {}
        return upstream_released and proxy.service.upstream.connections == 0

    assert await eventually(released)
    assert proxy.service.fanout.streams == {}


async def test_streams_of_several_subscribers_share_one_upstream_connection_until_the_last_leaves(
    proxy, exchange, stub_for
):
    async with stub_for(proxy.port) as stub:
        btc = stub.StreamTrades(BTC_TRADES)
        eth = stub.StreamTrades(socket_pb2.TradeStreamRequest(symbol=" ETHUSDT "))
        tickers = stub.StreamMiniTickers(socket_pb2.MiniTickerStreamRequest())
        await read_frames(btc, 1)
        eth_frame = orjson.loads((await read_frames(eth, 1))[0])
        ticker_frame = orjson.loads((await read_frames(tickers, 1))[0])
        assert eth_frame["stream"] == "ethusdt@trade"
        assert (
            ticker_frame["stream"] == "!miniTicker@arr" and ticker_frame["data"][0]["e"] == "24hrMiniTicker"
        )
        info = await replay_info(exchange.port)
        assert info["connections"] == 1
        assert set(info["subscriptions"]) == {"btcusdt@trade", "ethusdt@trade", "!miniTicker@arr"}

        btc.cancel()

        async def btc_released():
            return set((await replay_info(exchange.port))["subscriptions"]) == {
                "ethusdt@trade",
                "!miniTicker@arr",
            }

        assert await eventually(btc_released)
        eth.cancel()
        tickers.cancel()

    async def all_released():
        info = await replay_info(exchange.port)
        return info["connections"] == 0 and info["subscriptions"] == {}

    assert await eventually(all_released)


async def test_the_proxy_reconnects_and_resubscribes_when_the_exchange_restarts(trade_recording, stub_for):
    settings = ReplaySettings(port=0, files=(trade_recording,), speed=50.0)
    exchange = await start_replay(settings)
    port = exchange.port
    proxy = await start_proxy(ProxySettings(port=0, exchange_url=exchange.url))
    try:
        async with stub_for(proxy.port) as stub:
            call = stub.StreamTrades(BTC_TRADES)
            await read_frames(call, 100)

            await exchange.stop()
            exchange = await start_replay(settings.model_copy(update={"port": port}))

            # Far more frames than were in flight when the first exchange stopped: these come from the new one.
            after = await asyncio.wait_for(read_frames(call, 2000), 20)
            assert len(after) >= 2000
            decoded = [orjson.loads(frame) for frame in after]
            assert {frame["stream"] for frame in decoded} == {"btcusdt@trade"}
            assert {(frame["data"]["e"], frame["data"]["s"]) for frame in decoded} == {("trade", "BTCUSDT")}
            assert proxy.service.counters.reconnects >= 1
            info = await replay_info(port)
            assert info["connections"] == 1 and info["subscriptions"] == {"btcusdt@trade": 1}
            call.cancel()
    finally:
        await proxy.stop()
        await exchange.stop()


async def test_an_exchange_that_is_down_when_a_subscriber_arrives_is_retried_until_it_is_up(
    trade_recording, stub_for
):
    port = free_port()
    proxy = await start_proxy(ProxySettings(port=0, exchange_url=f"ws://127.0.0.1:{port}"))
    exchange = None
    try:
        async with stub_for(proxy.port) as stub:
            call = stub.StreamTrades(BTC_TRADES)

            async def failed_twice():
                return proxy.service.counters.connect_failures >= 2

            assert await eventually(failed_twice)
            exchange = await start_replay(ReplaySettings(port=port, files=(trade_recording,), speed=50.0))
            frames = await asyncio.wait_for(read_frames(call, 10), 20)
            assert orjson.loads(frames[0])["stream"] == "btcusdt@trade"
            call.cancel()
    finally:
        await proxy.stop()
        if exchange is not None:
            await exchange.stop()


@pytest.mark.parametrize("symbol", ["", "x", "BTC-USDT", "btcusdt/../../ws", "a" * 21])
async def test_a_malformed_symbol_is_refused_with_invalid_argument(proxy, symbol, stub_for):
    async with stub_for(proxy.port) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read_frames(stub.StreamTrades(socket_pb2.TradeStreamRequest(symbol=symbol)), 1)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert proxy.service.fanout.streams == {}


async def test_an_unknown_trade_kind_is_refused_with_invalid_argument(proxy, stub_for):
    async with stub_for(proxy.port) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read_frames(stub.StreamTrades(socket_pb2.TradeStreamRequest(symbol="btcusdt", kind=7)), 1)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_subscriber_that_does_not_read_is_ended_with_resource_exhausted_and_the_other_keeps_going(
    exchange, stub_for
):
    proxy = await start_proxy(
        ProxySettings(port=0, exchange_url=exchange.url, subscriber_queue_size=2000, max_batch=64)
    )
    try:
        # Without BDP probing the slow client's HTTP/2 window stays at 64 KiB, so the proxy's queue fills soon.
        async with (
            stub_for(proxy.port) as stub,
            stub_for(proxy.port, [("grpc.http2.bdp_probe", 0)]) as slow_stub,
        ):
            slow = slow_stub.StreamTrades(BTC_TRADES)
            await read_frames(slow, 1)
            reader = stub.StreamTrades(BTC_TRADES)
            received: list[bytes] = []

            async def keep_reading():
                async for message in reader:
                    received.extend(message.data)

            reading = asyncio.create_task(keep_reading())

            async def slow_dropped():
                return proxy.service.counters.drops == 1

            assert await eventually(slow_dropped, 20)
            count_at_drop = len(received)

            async def still_flowing():
                return len(received) > count_at_drop + 500

            assert await eventually(still_flowing, 20)
            assert proxy.service.fanout.streams == {"btcusdt@trade": 1}

            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(read_frames(slow, 10**9), 20)
            assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    finally:
        await proxy.stop()


async def test_health_reports_serving_to_the_readiness_watcher(proxy, mesh_pki):
    tls = mesh_pki[HEALTHCHECK].load()
    async with tls_channel(f"127.0.0.1:{proxy.port}", tls, SOCKET_PROXY) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def history_request(
    from_id: int, limit: int = 1000, symbol: str = "btcusdt", kind=socket_pb2.TRADE_KIND_TRADE
):
    return socket_pb2.HistoricalTradesRequest(symbol=symbol, kind=kind, from_id=from_id, limit=limit)


async def test_historical_trades_answers_the_frames_the_stream_carried_by_id(proxy, stub_for):
    async with stub_for(proxy.port) as stub:
        streamed = await read_frames(stub.StreamTrades(BTC_TRADES), 300)
        first_id = orjson.loads(streamed[0])["data"]["t"]

        history = (await stub.HistoricalTrades(history_request(first_id, 200))).data

    # The same trades as the stream carried them (the REST form has no event time: E is the trade time).
    def trade_fields(frame: bytes) -> dict:
        data = orjson.loads(frame)["data"]
        return {key: data[key] for key in ("e", "s", "t", "p", "q", "T", "m")}

    assert [trade_fields(frame) for frame in history] == [trade_fields(frame) for frame in streamed[:200]]
    assert all(orjson.loads(frame)["stream"] == "btcusdt@trade" for frame in history)
    assert proxy.service.history.requests == 1 and proxy.service.history.budget.used == 25


async def test_historical_trades_refuses_bad_requests_and_beyond_the_weight_budget(exchange, stub_for):
    proxy = await start_proxy(ProxySettings(port=0, exchange_url=exchange.url, rest_weight_per_minute=30))
    try:
        async with stub_for(proxy.port) as stub:
            for request in (
                history_request(1, limit=0),
                history_request(1, limit=1001),
                history_request(1, symbol="x"),
                history_request(1, kind=7),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.HistoricalTrades(request)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
            await stub.HistoricalTrades(history_request(1, limit=1))  # weight 25 of 30
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.HistoricalTrades(history_request(1, limit=1))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # A symbol the exchange does not have: its 400 is no usable answer.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.HistoricalTrades(
                    history_request(1, kind=socket_pb2.TRADE_KIND_AGG_TRADE, symbol="dogeusdt")
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await proxy.stop()
