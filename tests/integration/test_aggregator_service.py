"""The aggregator service end to end: a real gRPC upstream replaying the shipped recording, real Redis and
Kafka.

The upstream is a grpc.aio server implementing ``SocketProxy`` in this file (socket_proxy itself is tested on
its own): it streams the recorded frames of the requested symbol like a live stream, then holds the call open
until the client cancels it. Like socket_proxy, it may end a subscriber that fell behind (RESOURCE_EXHAUSTED),
and the frames that subscriber had not received yet are lost to it.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import uuid
from collections import defaultdict
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import aiohttp
import grpc
import orjson
import pytest
import redis.asyncio as redis
from support.credentials import service_headers
from support.polling import eventually
from support.kafka_helpers import TopicTail
from support.stacks import serve_aggregator
from yarl import URL

from aggregator.store import MINI_TICKER_PARTITIONS, FollowerStore, connect_redis, followers_key
from crypto_mesh.grpc_tls import tls_server
from crypto_mesh.kafka import MINI_TICKER_TOPIC
from crypto_mesh.metrics import parse_samples
from support.ports import free_port
from crypto_mesh.pki import SOCKET_PROXY
from crypto_mesh.proto import socket_pb2, socket_pb2_grpc
from socket_proxy.server import CALLERS as PROXY_CALLERS
from socket_proxy.server import SERVICE_NAME as PROXY_SERVICE

MALFORMED_FRAME = (
    b'{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"-1","q":"1","T":1}}'
)
UNKNOWN_EVENT_FRAME = b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"s":"BTCUSDT","k":{}}}'


class RecordingProxy(socket_pb2_grpc.SocketProxyServicer):
    """A SocketProxy upstream serving recorded frames, in messages of 50.

    ``trade_frames[(symbol, kind)]``: frames of that stream, played once: each call continues where the
    stream is (like a live stream). ``overflow_after``: the first call of a stream is ended after that many
    frames (at the end of a message) as socket_proxy ends a subscriber whose queue overflowed: with
    RESOURCE_EXHAUSTED, the frames queued for it thrown away and those the stream carries until it
    subscribes again never sent to it; ``lost_on_overflow`` frames in all, kept in :attr:`lost`.
    ``calls`` counts calls per symbol; ``cancelled[symbol]`` is set when a call of that symbol is cancelled
    by the client. ``history``: ``"serve"`` answers ``HistoricalTrades`` from the stream's frames by id,
    ``"refuse"`` ends it with RESOURCE_EXHAUSTED; ``history_calls`` counts them.
    """

    def __init__(
        self,
        trade_frames=None,
        mini_ticker_frames=(),
        overflow_after: int | None = None,
        lost_on_overflow: int = 0,
        history: str = "serve",
    ) -> None:
        self.history = history
        self.history_calls = 0
        self.trade_frames: dict[tuple[str, int], list[bytes]] = trade_frames or {}
        self.mini_ticker_frames = list(mini_ticker_frames)
        self.overflow_after = overflow_after
        self.lost_on_overflow = lost_on_overflow
        self.lost: list[bytes] = []
        self.cursor: dict[tuple[str, int], int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.cancelled: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.mini_ticker_calls = 0

    async def StreamTrades(self, request, context):
        key = (request.symbol, request.kind)
        self.calls[request.symbol] += 1
        first_call = self.calls[request.symbol] == 1
        frames = self.trade_frames.get(key, [])
        try:
            while self.cursor[key] < len(frames):
                if first_call and self.overflow_after is not None and self.cursor[key] >= self.overflow_after:
                    start, self.cursor[key] = self.cursor[key], self.cursor[key] + self.lost_on_overflow
                    self.lost = frames[start : self.cursor[key]]
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "subscriber fell behind")
                batch = frames[self.cursor[key] : self.cursor[key] + 50]
                self.cursor[key] += len(batch)
                yield socket_pb2.RawFrames(data=batch)
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled[request.symbol].set()
            raise

    async def HistoricalTrades(self, request, context):
        self.history_calls += 1
        if self.history == "refuse":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "request weight budget spent")
        id_field = "a" if request.kind == socket_pb2.TRADE_KIND_AGG_TRADE else "t"
        by_id = {}
        for frame in self.trade_frames.get((request.symbol, request.kind), []):
            trade_id = orjson.loads(frame).get("data", {}).get(id_field)
            if isinstance(trade_id, int) and trade_id >= request.from_id:
                by_id[trade_id] = frame
        return socket_pb2.RawFrames(data=[by_id[i] for i in sorted(by_id)][: request.limit])

    async def StreamMiniTickers(self, request, context):
        self.mini_ticker_calls += 1
        if self.mini_ticker_frames:
            yield socket_pb2.RawFrames(data=self.mini_ticker_frames)
        await asyncio.Event().wait()


@pytest.fixture
def serving(mesh_pki):
    """Factory: ``async with serving(proxy[, port]) as port`` serves a :class:`RecordingProxy` on
    ``127.0.0.1:port`` as socket_proxy serves: mutual TLS with the socket_proxy identity, the aggregator its
    one allowed caller."""
    tls = mesh_pki[SOCKET_PROXY].load()

    @asynccontextmanager
    async def serve(proxy: RecordingProxy, port: int = 0):
        server, port = tls_server(tls, "127.0.0.1", port, {PROXY_SERVICE: PROXY_CALLERS})
        socket_pb2_grpc.add_SocketProxyServicer_to_server(proxy, server)
        await server.start()
        try:
            yield port
        finally:
            await server.stop(grace=None)

    return serve


@asynccontextmanager
async def aggregator(redis_url: str, kafka_bootstrap: str, proxy_port: int, **overrides):
    """A running aggregator (:func:`support.stacks.serve_aggregator`); yields (control base URL, an HTTP
    session presenting the service credential)."""
    async with (
        serve_aggregator(redis_url, kafka_bootstrap, proxy_port, **overrides) as base,
        aiohttp.ClientSession(headers=service_headers()) as http,
    ):
        yield base, http


@pytest.fixture
async def agg_redis_url(redis_url):
    """This module's Redis database, emptied before the test: no follower set of an earlier test leaks into
    the aggregator's start."""
    client = redis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()
    return redis_url


@pytest.fixture
async def redis_client(agg_redis_url):
    client = redis.from_url(agg_redis_url)
    yield client
    await client.aclose()


def recorded_frames(recording: Path, symbol: str) -> list[bytes]:
    with gzip.open(recording) as lines:
        return [line.rstrip(b"\n") for line in lines if line.startswith(b'{"stream":"%s@' % symbol.encode())]


def expected_stats(frames: list[bytes], id_field: str) -> list[dict]:
    """Per second, straight from the frames: the SecondStat fields a subscriber checks, in second order."""
    seconds = defaultdict(list)
    for frame in frames:
        data = orjson.loads(frame)["data"]
        seconds[data["T"] // 1000 * 1000].append(data)
    expected = []
    for second in sorted(seconds):
        trades = sorted(seconds[second], key=lambda d: d[id_field])
        expected.append(
            {
                "s": trades[-1]["s"].lower(),
                "t": second,
                "p": Decimal(trades[-1]["p"]),
                "i": trades[-1][id_field],
                "o": Decimal(trades[0]["p"]),
                "n": len(trades),
                "v": sum((Decimal(d["q"]) for d in trades), Decimal(0)),
            }
        )
    return expected


def checked_fields(stat: dict) -> dict:
    return {
        "s": stat["s"],
        "t": stat["t"],
        "p": Decimal(stat["p"]),
        "i": stat["i"],
        "o": Decimal(stat["o"]),
        "n": stat["n"],
        "v": Decimal(stat["v"]),
    }


async def receive(pubsub, count: int, timeout_s: float) -> list[dict]:
    received = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            received.append(orjson.loads(message["data"]))
    return received


def second_of(frame: bytes) -> int:
    """The second (Unix ms) of a trade frame's trade time."""
    return orjson.loads(frame)["data"]["T"] // 1000 * 1000


def seconds_around(lost: list[bytes], frames: list[bytes]) -> tuple[int, int]:
    """For ``lost``, a run of ``frames`` a subscriber never received: the second of the last trade it received
    before them and that of the first after them. Neither second is whole for that subscriber, and every
    second in between had only lost trades."""
    first, after = frames.index(lost[0]), frames.index(lost[-1]) + 1
    return second_of(frames[first - 1]), second_of(frames[after])


async def follow_through_an_overflow(
    proxy: RecordingProxy,
    count: int,
    redis_client,
    agg_redis_url,
    kafka_bootstrap,
    serving,
    grace_ms,
) -> tuple[list[dict], dict, dict]:
    """Follow btcusdt on an aggregator over ``proxy`` (which ends the first call as overflowing) until it has
    published ``count`` SecondStats; returns them, the ``trades`` counters of ``GET /v1/stats`` and the metrics samples. Then unfollows, and checks
    that the call is cancelled and nothing more is published."""
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("btcusdt")
    async with (
        serving(proxy) as proxy_port,
        aggregator(agg_redis_url, kafka_bootstrap, proxy_port, window_grace_ms=grace_ms) as (base, http),
    ):
        async with http.put(f"{base}/v1/symbols/BTCUSDT/followers/user:1") as response:
            assert response.status == 200
            assert await response.json() == {"symbol": "btcusdt", "followers": 1, "tracked": True}
        await eventually(lambda: proxy.calls["btcusdt"] == 2, what="the aggregator subscribed again")
        received = await receive(pubsub, count, timeout_s=30)

        assert orjson.loads(await redis_client.get("price:btcusdt")) == received[-1]
        async with http.get(f"{base}/v1/stats") as response:
            counters = (await response.json())["trades"]
        async with http.get(f"{base}/metrics") as response:
            samples = parse_samples(await response.text())

        async with http.delete(f"{base}/v1/symbols/btcusdt/followers/user:1") as response:
            assert await response.json() == {"symbol": "btcusdt", "followers": 0, "tracked": False}
        await asyncio.wait_for(proxy.cancelled["btcusdt"].wait(), timeout=5)
        async with http.get(f"{base}/v1/symbols") as response:
            assert await response.json() == {"symbols": []}
        assert await receive(pubsub, 1, timeout_s=1.5) == []  # nothing more, not even the last price again
    await pubsub.aclose()
    return received, counters, samples


def overflowing_stream(frames: list[bytes]) -> dict:
    """btcusdt's recorded frames with a malformed frame and a frame of another event type a third of the way."""
    middle = len(frames) // 3
    return {
        ("btcusdt", socket_pb2.TRADE_KIND_TRADE): frames[:middle]
        + [MALFORMED_FRAME, UNKNOWN_EVENT_FRAME]
        + frames[middle:]
    }


async def test_trades_an_overflow_cut_out_are_fetched_back_and_every_second_is_published_whole(
    agg_redis_url,
    redis_client,
    kafka_bootstrap,
    trade_recording,
    serving,
):
    frames = recorded_frames(trade_recording, "btcusdt")
    # Halfway through, the upstream ends the call as overflowing (RESOURCE_EXHAUSTED) and 120 trades never
    # reach the aggregator on the stream: it subscribes again, sees the skipped ids and fetches them back with
    # HistoricalTrades while the seconds around the gap wait (the grace is long enough for the fill).
    proxy = RecordingProxy(overflowing_stream(frames), overflow_after=len(frames) // 2, lost_on_overflow=120)

    expected = expected_stats(frames, "t")
    received, counters, samples = await follow_through_an_overflow(
        proxy, len(expected), redis_client, agg_redis_url, kafka_bootstrap, serving, grace_ms=3000
    )

    # Every recorded second is published, whole, the ones the overflow cut into too; none is marked.
    assert [checked_fields(stat) for stat in received] == expected
    assert not [stat for stat in received if "x" in stat]
    assert counters["malformed"] == 1 and counters["unknown_event"] == 1
    assert counters["parsed"] == len(frames) - len(proxy.lost)
    assert (counters["gaps"], counters["ids_missed"]) == (1, len(proxy.lost))
    assert (counters["backfills"], counters["backfilled"], counters["incomplete"]) == (1, len(proxy.lost), 0)
    assert samples["aggregator_backfills_total{result=whole}"] == 1
    assert samples["aggregator_backfilled_trades_total"] == len(proxy.lost) and proxy.history_calls == 1
    assert samples["aggregator_incomplete_seconds_total"] == 0


async def test_when_the_fill_is_refused_the_seconds_around_the_gap_are_published_marked_incomplete(
    agg_redis_url,
    redis_client,
    kafka_bootstrap,
    trade_recording,
    serving,
):
    frames = recorded_frames(trade_recording, "btcusdt")
    proxy = RecordingProxy(
        overflowing_stream(frames), overflow_after=len(frames) // 2, lost_on_overflow=120, history="refuse"
    )

    # A short grace: the wall clock may close the second cut short before the resubscription (the window is
    # held as interrupted, so it is closed incomplete) or the refused fill may: the published seconds must be
    # the same either way.
    # The lost frames are known once the first call has ended; the count to wait for too.
    recorded = expected_stats(frames, "t")
    middle, lost = len(frames) // 2, 120
    gap = second_of(frames[middle - 1]), second_of(frames[middle + lost])
    whole = [stat for stat in recorded if not gap[0] <= stat["t"] <= gap[1]]
    received, counters, samples = await follow_through_an_overflow(
        proxy, len(whole) + len(set(gap)), redis_client, agg_redis_url, kafka_bootstrap, serving, grace_ms=100
    )

    assert gap == seconds_around(proxy.lost, frames)
    # Every second published whole is the recorded second; the two around the gap are published marked
    # incomplete, with the trades the aggregator got; those wholly lost are not published.
    assert [checked_fields(stat) for stat in received if "x" not in stat] == whole
    marked = [stat for stat in received if "x" in stat]
    assert [(stat["t"], stat["x"]) for stat in marked] == [(second, True) for second in sorted(set(gap))]
    recorded_by_second = {stat["t"]: stat for stat in recorded}
    assert all(stat["n"] < recorded_by_second[stat["t"]]["n"] for stat in marked)
    assert (counters["gaps"], counters["ids_missed"]) == (1, len(proxy.lost))
    assert counters["backfills_partial"] == 1 and counters["backfilled"] == 0
    assert counters["incomplete"] == len(set(gap)) == samples["aggregator_incomplete_seconds_total"]
    assert samples["aggregator_backfills_total{result=partial}"] == 1


async def test_agg_trade_stream_is_used_when_configured(
    agg_redis_url,
    redis_client,
    kafka_bootstrap,
    agg_trade_recording,
    serving,
):
    frames = recorded_frames(agg_trade_recording, "dotusdt")
    expected = expected_stats(frames, "a")
    proxy = RecordingProxy({("dotusdt", socket_pb2.TRADE_KIND_AGG_TRADE): frames})
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("dotusdt")

    async with (
        serving(proxy) as proxy_port,
        aggregator(
            agg_redis_url,
            kafka_bootstrap,
            proxy_port,
            trade_stream="aggTrade",
            window_grace_ms=200,
        ) as (base, http),
    ):
        async with http.put(f"{base}/v1/symbols/dotusdt/followers/etl-probe") as response:
            assert response.status == 200
        received = await receive(pubsub, len(expected), timeout_s=15)

    assert [checked_fields(stat) for stat in received] == expected
    await pubsub.aclose()


async def test_followers_survive_a_restart_and_their_symbols_are_streamed_again(
    agg_redis_url,
    redis_client,
    kafka_bootstrap,
    serving,
):
    proxy = RecordingProxy()
    async with serving(proxy) as proxy_port:
        async with aggregator(agg_redis_url, kafka_bootstrap, proxy_port) as (base, http):
            await http.put(f"{base}/v1/symbols/ethusdt/followers/user:7")
            await http.put(f"{base}/v1/symbols/ethusdt/followers/user:8")
            await eventually(lambda: proxy.calls["ethusdt"] == 1)

        async with aggregator(agg_redis_url, kafka_bootstrap, proxy_port) as (base, http):
            await eventually(lambda: proxy.calls["ethusdt"] == 2)
            async with http.get(f"{base}/v1/symbols") as response:
                assert await response.json() == {"symbols": [{"symbol": "ethusdt", "followers": 2}]}
    assert await redis_client.smembers(followers_key("ethusdt")) == {b"user:7", b"user:8"}


async def test_followers_stored_under_the_untagged_names_of_earlier_versions_are_adopted_at_start(
    agg_redis_url, redis_client, kafka_bootstrap, serving
):
    # As an aggregator before the hash tags left them.
    await redis_client.sadd("aggregator:symbols", "ethusdt", "dotusdt")
    await redis_client.sadd("aggregator:followers:ethusdt", "user:7", "user:8")
    await redis_client.sadd("aggregator:followers:dotusdt", "user:7")
    proxy = RecordingProxy()
    async with serving(proxy) as proxy_port:
        async with aggregator(agg_redis_url, kafka_bootstrap, proxy_port) as (base, http):
            await eventually(lambda: proxy.calls["ethusdt"] == 1 and proxy.calls["dotusdt"] == 1)
            async with http.get(f"{base}/v1/symbols") as response:
                assert await response.json() == {
                    "symbols": [{"symbol": "dotusdt", "followers": 1}, {"symbol": "ethusdt", "followers": 2}]
                }
            # The adopted sets are the ones the follower routes change.
            async with http.put(f"{base}/v1/followers/user:7", json={"symbols": ["ethusdt"]}) as response:
                assert (await response.json())["released"] == ["dotusdt"]
    assert await redis_client.exists("aggregator:followers:ethusdt", "aggregator:followers:dotusdt") == 0
    assert await redis_client.smembers(followers_key("ethusdt")) == {b"user:7", b"user:8"}
    assert await redis_client.smembers("aggregator:symbols") == {b"ethusdt"}


async def test_a_bulk_follower_script_refuses_to_touch_a_tracked_symbol_it_was_not_given_the_key_of(
    agg_redis_url, redis_client
):
    """:meth:`FollowerStore.set_follower` reads the tracked symbols, then names each one's set in the script's
    KEYS; a symbol tracked in between makes the script answer nil (and the store read again), never build a
    key itself."""
    client = connect_redis(agg_redis_url)
    store = FollowerStore(client)
    try:
        await store.add("ethusdt", "user:1")
        stale_read = await store._set(
            keys=["aggregator:symbols", followers_key("btcusdt")], args=["user:1", 1, "btcusdt"]
        )
        assert stale_read is None
        assert await redis_client.smembers(followers_key("btcusdt")) == set()
        assert await store.set_follower("user:1", ["btcusdt"]) == ({"btcusdt": 1}, ["ethusdt"])
    finally:
        await client.aclose()


async def test_streams_come_back_after_socket_proxy_restarts(agg_redis_url, kafka_bootstrap, serving):
    port = free_port()
    before, after = RecordingProxy(), RecordingProxy()
    async with aggregator(agg_redis_url, kafka_bootstrap, port) as (base, http):
        async with serving(before, port):
            await http.put(f"{base}/v1/symbols/ethusdt/followers/user:1")
            await eventually(lambda: before.calls["ethusdt"] == 1 and before.mini_ticker_calls == 1)

        async with serving(after, port):
            await eventually(
                lambda: after.calls["ethusdt"] == 1 and after.mini_ticker_calls == 1, timeout_s=15
            )
            async with http.get(f"{base}/v1/stats") as response:
                assert (await response.json())["upstream"]["reconnects"] >= 2


def mini_ticker(symbol: str, event_time: int, close: str, open_: str) -> dict:
    return {
        "e": "24hrMiniTicker",
        "E": event_time,
        "s": symbol.upper(),
        "c": close,
        "o": open_,
        "h": "70000.00",
        "l": "50000.00",
        "v": "10.5",
        "q": "630000.25",
    }


async def test_mini_tickers_are_written_to_kafka_as_kafka_msgs_and_kept_in_redis_as_24h_tickers(
    agg_redis_url, redis_client, kafka_bootstrap, serving
):
    first, second = f"zz{uuid.uuid4().hex[:8]}usdt", f"zz{uuid.uuid4().hex[:8]}usdt"
    frame = orjson.dumps(
        {
            "stream": "!miniTicker@arr",
            "data": [
                mini_ticker(first, 1723161256000, "61837.63", "60000.00"),
                {
                    "e": "24hrMiniTicker",
                    "E": 1723161256000,
                    "s": "BAD/SYMBOL",
                    "c": "1",
                    "o": "1",
                    "h": "1",
                    "l": "1",
                },
                mini_ticker(second, 1723161256000, "5", "0"),
            ],
        }
    )
    proxy = RecordingProxy(mini_ticker_frames=[frame, b"not json"])
    before_ms = int(time.time() * 1000)

    async with (
        TopicTail(kafka_bootstrap, MINI_TICKER_TOPIC, MINI_TICKER_PARTITIONS) as tail,
        serving(proxy) as proxy_port,
        aggregator(agg_redis_url, kafka_bootstrap, proxy_port) as (base, http),
    ):
        records = await tail.records({first.encode(), second.encode()}, count=2)

        async def stored_tickers() -> list[dict] | None:
            values = await redis_client.hmget("ticker:24h", [first, second])
            return None if None in values else [orjson.loads(value) for value in values]

        tickers = await eventually(stored_tickers)
        async with http.get(f"{base}/v1/stats") as response:
            counters = await response.json()

    by_symbol = {record.key.decode(): orjson.loads(record.value) for record in records}
    assert by_symbol[first] == {
        "message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"binance.miniticker/{first}/1723161256000")),
        "e": "24hrMiniTicker",
        "E": 1723161256000,
        "receive_time": by_symbol[first]["receive_time"],
        "s": first,
        "c": "61837.63",
        "o": "60000.00",
        "h": "70000.00",
        "l": "50000.00",
        "change_price": "1837.63",
        "change_percent": "3.06271667",
    }
    assert by_symbol[first]["receive_time"] >= before_ms
    assert (by_symbol[second]["change_price"], by_symbol[second]["change_percent"]) == ("5", "0")
    assert counters["tickers"] == {"frames": 2, "malformed": 2, "records": 2}
    assert tickers[0] == {
        "s": first,
        "E": 1723161256000,
        "c": "61837.63",
        "o": "60000.00",
        "h": "70000.00",
        "l": "50000.00",
        "v": "10.5",
        "q": "630000.25",
        "change_price": "1837.63",
        "change_percent": "3.06271667",
    }
    assert (tickers[1]["c"], tickers[1]["change_percent"]) == ("5", "0")
    assert counters["ticker_store"]["written"] == 2 and counters["ticker_store"]["failures"] == 0
    assert counters["kafka"]["sent"] == 2 and counters["kafka"]["failed"] == 0


async def test_health_is_ok_once_redis_kafka_and_the_upstream_are_reachable(
    agg_redis_url, kafka_bootstrap, serving
):
    async with (
        serving(RecordingProxy()) as proxy_port,
        aggregator(agg_redis_url, kafka_bootstrap, proxy_port) as (
            base,
            http,
        ),
    ):
        deadline = time.monotonic() + 15
        while True:
            async with http.get(f"{base}/healthz") as response:
                body = await response.json()
            if response.status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)

    assert response.status == 200, body
    assert body["status"] == "ok"
    assert set(body["counters"]) >= {"trades", "publisher", "kafka"}


async def test_start_succeeds_with_every_dependency_down_and_health_says_so():
    # Its reconnect loops never give up, so a start that waited for a dependency would never return: the
    # suite's timeout would end this test.
    nothing = free_port()
    async with aggregator(
        f"redis://127.0.0.1:{nothing}/0", f"127.0.0.1:{nothing}", nothing, assigned=False
    ) as (base, http):
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 503
            assert (await response.json())["status"] in ("starting", "degraded")
        async with http.put(f"{base}/v1/symbols/btcusdt/followers/user:1") as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "unavailable"


class TestControlApi:
    """Routes of docs/CONTRACTS.md, "Aggregator control HTTP"."""

    @pytest.fixture
    async def api(self, agg_redis_url, kafka_bootstrap, serving):
        proxy = RecordingProxy()
        async with (
            serving(proxy) as proxy_port,
            aggregator(agg_redis_url, kafka_bootstrap, proxy_port) as (base, http),
        ):
            yield base, http, proxy

    async def test_put_and_delete_are_idempotent(self, api):
        base, http, proxy = api
        route = f"{base}/v1/symbols/solusdt/followers"
        answers = []
        for method, follower in [
            ("PUT", "user:1"),
            ("PUT", "user:1"),
            ("PUT", "user:2"),
            ("DELETE", "user:9"),
            ("DELETE", "user:1"),
            ("DELETE", "user:1"),
            ("DELETE", "user:2"),
            ("DELETE", "user:2"),
        ]:
            async with http.request(method, f"{route}/{follower}") as response:
                assert response.status == 200
                answers.append(await response.json())
            if len(answers) == 1:
                # Once the stream has reached the proxy, the last follower leaving has a call to end (a call
                # cancelled before it reached the proxy is never seen there).
                await eventually(lambda: proxy.calls["solusdt"] == 1, what="the proxy saw the solusdt stream")

        assert [(a["followers"], a["tracked"]) for a in answers] == [
            (1, True),
            (1, True),
            (2, True),
            (2, True),
            (1, True),
            (1, True),
            (0, False),
            (0, False),
        ]
        assert {a["symbol"] for a in answers} == {"solusdt"}
        await asyncio.wait_for(proxy.cancelled["solusdt"].wait(), timeout=5)
        assert proxy.calls["solusdt"] == 1

    @pytest.mark.parametrize(
        ("symbol", "follower", "code"),
        [
            ("BTC%2FUSDT", "user:1", "invalid_symbol"),
            ("..%2Fx", "user:1", "invalid_symbol"),
            ("a" * 1000, "user:1", "invalid_symbol"),
            ("b", "user:1", "invalid_symbol"),
            ("btc%20usdt", "user:1", "invalid_symbol"),
            ("btcusdt", "user%201", "invalid_follower"),
            ("btcusdt", "x" * 65, "invalid_follower"),
            ("btcusdt", "user%2F1", "invalid_follower"),
        ],
    )
    async def test_an_invalid_symbol_or_follower_is_422_and_changes_nothing(
        self,
        api,
        redis_client,
        symbol,
        follower,
        code,
    ):
        base, http, proxy = api
        for method in ("PUT", "DELETE"):
            url = URL(f"{base}/v1/symbols/{symbol}/followers/{follower}", encoded=True)
            async with http.request(method, url) as response:
                assert response.status == 422
                assert (await response.json())["error"]["code"] == code
        assert await redis_client.keys("aggregator:*") == []
        assert not proxy.calls

    async def test_gets_have_no_side_effects(self, api, redis_client):
        base, http, proxy = api

        async def healthy():
            async with http.get(f"{base}/healthz") as response:
                return response.status == 200

        await eventually(healthy, timeout_s=15, what="aggregator health ok")
        for _ in range(2):
            async with http.get(f"{base}/v1/symbols") as response:
                assert response.status == 200
                assert await response.json() == {"symbols": []}
            async with http.get(f"{base}/v1/symbols/btcusdt/followers/user:1") as response:
                assert response.status == 405
                assert (await response.json())["error"]["code"] == "method_not_allowed"
                assert set(response.headers["Allow"].split(",")) == {"PUT", "DELETE"}
            async with http.get(f"{base}/v1/stats") as response:
                assert response.status == 200
                assert (await response.json())["tracked"] == []
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
                assert (await response.json())["status"] == "ok"
        assert await redis_client.keys("aggregator:*") == []
        assert not proxy.calls

    async def test_unknown_routes_and_methods_answer_json_errors(self, api):
        base, http, _ = api
        async with http.get(f"{base}/v1/nope") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"
        async with http.post(f"{base}/v1/symbols/btcusdt/followers/user:1") as response:
            assert response.status == 405
            assert (await response.json())["error"]["code"] == "method_not_allowed"
            assert set(response.headers["Allow"].split(",")) == {"PUT", "DELETE"}
