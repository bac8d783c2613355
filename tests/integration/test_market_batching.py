"""Batching of frames into ``RawFrames`` messages (proto/socket.proto): never a lost, repeated or reordered frame,
whatever the batch sizes."""

from __future__ import annotations

import asyncio

import orjson
from support.polling import eventually

from crypto_mesh.grpc_tls import tls_channel
from crypto_mesh.pki import AGGREGATOR, SOCKET_PROXY
from crypto_mesh.proto import socket_pb2, socket_pb2_grpc
from launcher.replay.server import start as start_replay
from launcher.replay.settings import ReplaySettings
from socket_proxy.fanout import Subscriber
from socket_proxy.server import start as start_proxy
from socket_proxy.settings import ProxySettings


async def test_queued_frames_are_taken_oldest_first_without_waiting_and_not_after_an_overflow():
    subscriber = Subscriber("btcusdt@trade", queue_size=4)
    for frame in (b"1", b"2", b"3", b"4"):
        assert subscriber.offer(frame)
    assert await subscriber.next_batch(1) == [b"1"]
    assert subscriber.queued(2) == [b"2", b"3"]
    assert subscriber.queued(10) == [b"4"]
    assert subscriber.queued(10) == []
    for frame in (b"5", b"6", b"7", b"8"):
        subscriber.offer(frame)
    assert not subscriber.offer(b"9")  # full: ended
    assert subscriber.queued(10) == []


async def test_with_a_batch_linger_every_trade_still_arrives_once_and_in_id_order(trade_recording, mesh_pki):
    exchange = await start_replay(ReplaySettings(port=0, files=(trade_recording,), speed=100))
    proxy = await start_proxy(
        ProxySettings(port=0, exchange_url=exchange.url, max_batch=1000, batch_linger_ms=20)
    )
    try:
        tls = mesh_pki[AGGREGATOR].load()
        async with tls_channel(f"127.0.0.1:{proxy.port}", tls, SOCKET_PROXY) as channel:
            stub = socket_pb2_grpc.SocketProxyStub(channel)
            call = stub.StreamTrades(socket_pb2.TradeStreamRequest(symbol="btcusdt"))
            ids: list[int] = []

            async def read() -> None:
                async for message in call:
                    ids.extend(orjson.loads(frame)["data"]["t"] for frame in message.data)
                    if len(ids) >= 1500:
                        return

            await asyncio.wait_for(read(), 20)

            async def all_counted() -> bool:
                # The proxy counts a batch once its write returns, which can be just after the client has read
                # it; so the call stays open until then (a write the cancellation cut short is not counted).
                return proxy.service.counters.frames_out >= len(ids)

            assert await eventually(all_counted)
            call.cancel()
        # The shipped recording holds every trade of its span, and loops continue its ids: consecutive, none twice.
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert proxy.service.gaps.gaps == 0
    finally:
        await proxy.stop()
        await exchange.stop()
