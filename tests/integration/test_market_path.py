"""The whole market data path, every part real: the replay exchange playing the shipped recording, socket_proxy,
the aggregator, Redis and Kafka (embedded engines of tests/conftest.py). The scenarios of one aggregator run
again on a Redis Cluster of three masters (:data:`ON_A_CLUSTER_TOO`).

The replay runs many times faster than real time, so a loop of the ~11-minute recording takes seconds; its
timeline (``GET /replay/v1/info``) maps every replayed second and id back to the recording, which gives the
independent computation each published SecondStat is compared with.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import defaultdict
from contextlib import AsyncExitStack
from typing import NamedTuple

import aiohttp
import orjson
from support import polling
import pytest
from support.credentials import service_headers, service_token_file
from support.recordings import as_recorded, recorded_seconds
from support.stacks import exchange_and_proxy, published_on, serve_aggregator

from crypto_mesh.metrics import parse_samples
from support.ports import free_port
from crypto_mesh.redisclient import connect
from crypto_mesh.redisclient import pubsub as subscriber
from launcher.replay.server import start as start_replay
from launcher.replay.settings import ReplaySettings
from socket_proxy.server import start as start_proxy
from socket_proxy.settings import ProxySettings

#: Among the longest modules: scheduled first, so that the workers end together (tests/conftest.py).
pytestmark = pytest.mark.heavy

SYMBOLS = ("btcusdt", "ethusdt")
#: No HTTP call of these tests may hang the suite.
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)


# --- helpers -------------------------------------------------------------------------------------------------


async def get_json(url: str) -> dict:
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT, headers=service_headers()) as http,
        http.get(url) as response,
    ):
        return await response.json()


async def metrics(url: str) -> dict[str, float]:
    """``GET url`` in Prometheus text format → ``{"name{label=value,...}": value}`` of every sample."""
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT, headers=service_headers()) as http,
        http.get(url) as response,
    ):
        assert response.status == 200
        text = await response.text()
    return parse_samples(text)


#: The market path crosses several services and processes: a longer default wait.
eventually = functools.partial(polling.eventually, timeout_s=15.0)


class AggregatorDatabases(NamedTuple):
    """The Redis databases of this file's two aggregators (follower sets are per database; channels are
    not): the module's own and a second one."""

    first: str
    second: str


@pytest.fixture(scope="module")
def aggregator_databases(redis_url, redis_database_url) -> AggregatorDatabases:
    return AggregatorDatabases(redis_url, redis_database_url())


@pytest.fixture
async def clean_dbs(request, aggregator_databases) -> AggregatorDatabases:
    """This file's Redis databases, emptied before the test; a test parametrized with ``"cluster"``
    (:data:`ON_A_CLUSTER_TOO`) gets the session's Redis Cluster instead, as both (a cluster has one database:
    only a test of one aggregator runs there)."""
    databases = aggregator_databases
    if getattr(request, "param", "server") == "cluster":
        url = request.getfixturevalue("redis_cluster_url")
        databases = AggregatorDatabases(url, url)
    for url in set(databases):
        client = connect(url)
        await client.flushdb()  # on a cluster: on every master
        await client.aclose()
    return databases


#: The scenarios that run on one Redis server and again on a Redis Cluster of three masters, through the
#: aggregator's cluster URL (docs/CONTRACTS.md, "Redis"): a script whose keys span slots would fail there.
ON_A_CLUSTER_TOO = pytest.mark.parametrize("clean_dbs", ["server", "cluster"], indirect=True)


async def put_symbols(base: str, follower: str, symbols: list[str]) -> dict:
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT, headers=service_headers()) as http,
        http.put(f"{base}/v1/followers/{follower}", json={"symbols": symbols}) as response,
    ):
        assert response.status == 200
        return await response.json()


# --- tests ---------------------------------------------------------------------------------------------------


async def test_two_aggregators_on_one_stream_each_publish_every_second_of_the_recording_exactly(
    redis_url, clean_dbs, kafka_bootstrap, trade_recording
):
    earliest, expected = recorded_seconds(trade_recording)
    listener = connect(redis_url)
    pubsub = await subscriber(listener)
    await pubsub.subscribe(*SYMBOLS)
    async with AsyncExitStack() as stack:
        exchange, proxy = await stack.enter_async_context(exchange_and_proxy(trade_recording, speed=50))
        timeline = (await get_json(f"{exchange.url.replace('ws', 'http', 1)}/replay/v1/info"))["recordings"][
            0
        ]
        bases = [
            await stack.enter_async_context(
                serve_aggregator(db, kafka_bootstrap, proxy.port, window_grace_ms=5000)
            )
            for db in clean_dbs
        ]
        for base in bases:
            await put_symbols(base, "user:1", list(SYMBOLS))

        # Both aggregators publish on the same channels: each second of each symbol arrives twice. An
        # aggregator's first second may be partial (it joined mid-second): the first second with both
        # messages is skipped, every later one must be the recorded second, from both, until every recorded
        # second of every symbol has been seen. On a busy machine the proxy may end a subscriber that
        # fell behind: the aggregator then resubscribes, sees the trade ids it missed and fetches them back from
        # the exchange's history; a second it could not fill in time is published marked incomplete ("x"),
        # and is not compared: whatever is published unmarked is still the recorded second, and a second
        # marked in one loop of the recording is checked in a later one.
        messages: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        first_pair: dict[str, int] = {}
        checked: set[tuple[str, int]] = set()
        deadline = time.monotonic() + 90

        async def counters() -> str:
            proxy_samples = await metrics(f"http://127.0.0.1:{proxy.service.metrics_port}/metrics")
            overflows = proxy_samples["socket_proxy_subscriber_overflows_total{policy=end_subscriber}"]
            gaps = [(await metrics(f"{base}/metrics"))["aggregator_trade_gaps_total"] for base in bases]
            return f"subscriber overflows {overflows:.0f}, trade gaps per aggregator {gaps}"

        while len(checked) < len(expected):
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{len(expected) - len(checked)} recorded seconds never seen; {await counters()}"
                )
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is None:
                continue
            stat = orjson.loads(message["data"])
            if stat.get("x"):
                continue
            key = (stat["s"], stat["t"])
            messages[key].append(message["data"])
            if len(messages[key]) < 2:
                continue
            if stat["s"] not in first_pair:
                first_pair[stat["s"]] = stat["t"]
                continue
            first, second = (orjson.loads(raw) for raw in messages.pop(key))
            recorded_key, fields = as_recorded(stat, timeline, earliest)
            assert first == second, (recorded_key, await counters())
            assert fields == expected[recorded_key], (recorded_key, await counters())
            checked.add(recorded_key)

        for base in bases:
            samples = await metrics(f"{base}/metrics")
            assert samples["aggregator_trade_frames_total{outcome=malformed}"] == 0
            assert samples["aggregator_late_trades_total"] == 0

        async def losses_explained() -> bool:
            """Trade ids are skipped only where the proxy ended a subscriber, and each subscriber it ended sees
            the ids it missed once it has resubscribed and received a trade."""
            proxy_samples = await metrics(f"http://127.0.0.1:{proxy.service.metrics_port}/metrics")
            overflows = proxy_samples["socket_proxy_subscriber_overflows_total{policy=end_subscriber}"]
            gaps = [(await metrics(f"{base}/metrics"))["aggregator_trade_gaps_total"] for base in bases]
            assert sum(gaps) == 0 or overflows > 0, await counters()
            return (overflows == 0) == (sum(gaps) == 0)

        await eventually(losses_explained)
        proxy_samples = await metrics(f"http://127.0.0.1:{proxy.service.metrics_port}/metrics")
        assert proxy_samples["socket_proxy_upstream_connections"] == 1
    await pubsub.aclose()
    await listener.aclose()


def end_as_overflowing(proxy, stream: str) -> None:
    """End every subscriber of ``stream`` as socket_proxy does when one falls behind: its bounded queue fills
    up (with frames offered in one go, so none is sent) and it is ended with RESOURCE_EXHAUSTED."""
    fanout = proxy.service.fanout
    while fanout.streams.get(stream):
        fanout.publish(stream, b"{}")


async def kill_until_trades_are_lost(
    recording, redis_url, db: str, kafka_bootstrap, stream: str, **proxy_overrides
) -> tuple[dict, list[dict], dict, dict]:
    """A replay of ``recording`` at ten times real time, socket_proxy on it (``proxy_overrides``) and an
    aggregator (Redis database ``db``, a 3 s grace) following ``stream``'s symbol; the proxy ends the
    aggregator's subscription as overflowing while a second is open (:func:`end_as_overflowing`) until the
    aggregator sees ids it missed while it subscribed again (a few dozen trades are lost each time). Returns the
    replay's timeline, every SecondStat published for the symbol from the start until 50 more after the gap,
    and the aggregator's and the proxy's metrics samples."""
    symbol = stream.partition("@")[0]
    async with AsyncExitStack() as stack:
        published = await stack.enter_async_context(published_on(redis_url, symbol))
        exchange, proxy = await stack.enter_async_context(
            exchange_and_proxy(recording, speed=10, **proxy_overrides)
        )
        info_url = f"{exchange.url.replace('ws', 'http', 1)}/replay/v1/info"
        timeline = (await get_json(info_url))["recordings"][0]
        base = await stack.enter_async_context(
            serve_aggregator(
                db, kafka_bootstrap, proxy.port, window_grace_ms=3000, trade_stream=stream.partition("@")[2]
            )
        )
        await put_symbols(base, "user:1", [symbol])
        await polling.eventually(lambda: len(published) >= 2, timeout_s=30, what="seconds flow")

        async def gaps() -> float:
            return (await metrics(f"{base}/metrics"))["aggregator_trade_gaps_total"]

        for _attempt in range(20):
            end_as_overflowing(proxy, stream)
            await polling.eventually(
                lambda: proxy.service.fanout.streams.get(stream) == 1, what="resubscribed"
            )
            await asyncio.sleep(0.5)
            if await gaps() > 0:
                break
        assert await gaps() > 0
        killed_at = len(published)
        # More seconds: those around the gap are published by then (the grace is 3 s of exchange time).
        await polling.eventually(lambda: len(published) >= killed_at + 50, timeout_s=30, what="seconds after")
        samples = await metrics(f"{base}/metrics")
        proxy_samples = await metrics(f"http://127.0.0.1:{proxy.service.metrics_port}/metrics")
    return timeline, [orjson.loads(raw) for raw in published], samples, proxy_samples


@ON_A_CLUSTER_TOO
async def test_a_subscription_killed_mid_second_is_filled_from_the_exchanges_history_and_published_whole(
    clean_dbs, kafka_bootstrap, trade_recording
):
    stream = "btcusdt@trade"
    earliest, expected = recorded_seconds(trade_recording, {stream})

    timeline, published, samples, proxy_samples = await kill_until_trades_are_lost(
        trade_recording, clean_dbs.first, clean_dbs.first, kafka_bootstrap, stream
    )

    assert samples["aggregator_backfilled_trades_total"] > 0
    assert samples["aggregator_backfills_total{result=whole}"] == samples["aggregator_trade_gaps_total"]
    assert samples["aggregator_incomplete_seconds_total"] == 0
    fetched = proxy_samples["socket_proxy_trade_history_trades_total"]
    assert fetched == samples["aggregator_backfilled_trades_total"]
    # Every second after the first (joined mid-second) is the recorded second, whole (count, volumes, close
    # id), none marked, and none is missing: the seconds the kills cut into are among them.
    seconds = [as_recorded(stat, timeline, earliest) for stat in published[1:]]
    assert not [stat for stat in published if "x" in stat]
    for key, fields in seconds:
        assert fields == expected[key], key
    first, last = seconds[0][0], seconds[-1][0]
    assert [key for key, _fields in seconds] == sorted(key for key in expected if first <= key <= last)


async def test_when_the_exchange_history_is_refused_the_seconds_a_kill_cut_into_are_published_marked(
    redis_url, clean_dbs, kafka_bootstrap, agg_trade_recording
):
    # The proxy's request-weight budget (1 a minute) holds no aggTrades request (weight 4): every fill is
    # refused before it reaches the exchange.
    stream = "btcusdt@aggTrade"
    earliest, expected = recorded_seconds(agg_trade_recording, {stream})

    timeline, published, samples, proxy_samples = await kill_until_trades_are_lost(
        agg_trade_recording, redis_url, clean_dbs[0], kafka_bootstrap, stream, rest_weight_per_minute=1
    )

    assert proxy_samples["socket_proxy_trade_history_requests_total{result=refused}"] > 0
    assert proxy_samples["socket_proxy_trade_history_requests_total{result=answered}"] == 0
    assert samples["aggregator_backfills_total{result=partial}"] == samples["aggregator_trade_gaps_total"]
    marked = [stat for stat in published if stat.get("x") is True]
    assert 0 < len(marked) == samples["aggregator_incomplete_seconds_total"]
    kinds = {"btcusdt": "aggTrade"}
    for stat in marked:  # the trades the aggregator got: the second may have had more
        key, fields = as_recorded(stat, timeline, earliest, kinds)
        assert fields["n"] <= expected[key]["n"], key
    for stat in published[1:]:
        if "x" not in stat:
            key, fields = as_recorded(stat, timeline, earliest, kinds)
            assert fields == expected[key], key


async def test_the_exchange_killed_and_restarted_ten_times_resumes_every_subscription_without_leaking(
    clean_dbs, kafka_bootstrap, trade_recording
):
    settings = ReplaySettings(port=0, files=(trade_recording,), speed=20)
    exchange = await start_replay(settings)
    settings = settings.model_copy(update={"port": exchange.port})
    info_url = f"http://127.0.0.1:{exchange.port}/replay/v1/info"
    proxy = await start_proxy(
        ProxySettings(
            port=0, exchange_url=exchange.url, metrics_port=free_port(), metrics_token_file=service_token_file()
        )
    )
    try:
        async with serve_aggregator(clean_dbs.first, kafka_bootstrap, proxy.port) as base:
            await put_symbols(base, "user:1", list(SYMBOLS))
            wanted = {"btcusdt@trade": 1, "ethusdt@trade": 1, "!miniTicker@arr": 1}

            async def resumed() -> bool:
                """Both trade streams and the mini-tickers subscribed on one connection, and trades flowing
                again to the aggregator since the last restart."""
                info = await get_json(info_url)
                parsed = (await metrics(f"{base}/metrics"))["aggregator_trade_frames_total{outcome=parsed}"]
                return (
                    info["connections"] == 1 and info["subscriptions"] == wanted and parsed > parsed_mark + 20
                )

            for _restart in range(10):
                parsed_mark = (await metrics(f"{base}/metrics"))[
                    "aggregator_trade_frames_total{outcome=parsed}"
                ]
                await eventually(resumed)
                await exchange.stop()
                exchange = await start_replay(settings)
            parsed_mark = (await metrics(f"{base}/metrics"))["aggregator_trade_frames_total{outcome=parsed}"]
            await eventually(resumed)

            assert proxy.service.counters.reconnects >= 10
            proxy_samples = await metrics(f"http://127.0.0.1:{proxy.service.metrics_port}/metrics")
            assert proxy_samples["socket_proxy_upstream_reconnects_total"] >= 10
            assert proxy_samples["socket_proxy_upstream_connections"] == 1

            await put_symbols(base, "user:1", [])
            only_tickers = {"!miniTicker@arr": 1}
            assert await eventually(lambda: _subscriptions_are(info_url, only_tickers))
        # The aggregator stopped: the last stream is released and the connection closed.
        assert await eventually(lambda: _connections_are(info_url, 0))
    finally:
        await proxy.stop()
        await exchange.stop()


async def _subscriptions_are(info_url: str, wanted: dict) -> bool:
    info = await get_json(info_url)
    return info["connections"] == 1 and info["subscriptions"] == wanted


async def _connections_are(info_url: str, count: int) -> bool:
    return (await get_json(info_url))["connections"] == count


@ON_A_CLUSTER_TOO
async def test_when_every_follower_leaves_streams_windows_and_upstream_are_released(
    clean_dbs, kafka_bootstrap, trade_recording
):
    client = connect(clean_dbs.first)
    async with (
        exchange_and_proxy(trade_recording, speed=50) as (exchange, proxy),
        serve_aggregator(clean_dbs.first, kafka_bootstrap, proxy.port, window_grace_ms=200) as base,
    ):
        info_url = f"http://127.0.0.1:{exchange.port}/replay/v1/info"
        # Rebuilt from two portfolios; solusdt has no trades in the recording.
        first = await put_symbols(base, "user:1", ["BTCUSDT", "ethusdt", "btcusdt"])
        assert first == {
            "follower": "user:1",
            "symbols": [{"symbol": "btcusdt", "followers": 1}, {"symbol": "ethusdt", "followers": 1}],
            "released": [],
        }
        await put_symbols(base, "user:2", ["ethusdt", "solusdt"])
        # Idempotent: the same call again changes nothing.
        assert (await put_symbols(base, "user:2", ["ethusdt", "solusdt"]))["symbols"] == [
            {"symbol": "ethusdt", "followers": 2},
            {"symbol": "solusdt", "followers": 1},
        ]
        assert await get_json(f"{base}/v1/symbols") == {
            "symbols": [
                {"symbol": "btcusdt", "followers": 1},
                {"symbol": "ethusdt", "followers": 2},
                {"symbol": "solusdt", "followers": 1},
            ]
        }

        async def both_priced():
            return await client.exists("price:btcusdt", "price:ethusdt") == 2

        await eventually(both_priced)
        assert await client.exists("price:solusdt") == 0  # a symbol with no trades is never priced
        samples = await metrics(f"{base}/metrics")
        assert samples["aggregator_tracked_symbols"] == 3

        assert (await put_symbols(base, "user:1", ["ethusdt"]))["released"] == ["btcusdt"]
        assert (await put_symbols(base, "user:2", []))["released"] == ["solusdt"]
        assert (await put_symbols(base, "user:1", []))["released"] == ["ethusdt"]

        assert await get_json(f"{base}/v1/symbols") == {"symbols": []}
        samples = await metrics(f"{base}/metrics")
        assert samples["aggregator_tracked_symbols"] == 0
        assert samples["aggregator_window_symbols"] == 0
        assert await eventually(lambda: _subscriptions_are(info_url, {"!miniTicker@arr": 1}))
        assert proxy.service.fanout.streams == {"!miniTicker@arr": 1}
        assert len(proxy.service.gaps) == 0
    await client.aclose()


@ON_A_CLUSTER_TOO
async def test_bulk_follower_control_refuses_client_mistakes_with_4xx(clean_dbs, kafka_bootstrap):
    async with (
        serve_aggregator(clean_dbs.first, kafka_bootstrap, free_port()) as base,
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT, headers=service_headers()) as http,
    ):
        for follower, body, status, code in (
            ("user:1", b"not json", 400, "malformed"),
            ("user:1", b'["btcusdt"]', 400, "malformed"),
            ("user:1", b'{"symbols": "btcusdt"}', 400, "malformed"),
            ("user:1", b'{"symbols": ["btc/usdt"]}', 422, "invalid_symbol"),
            ("user:1", b'{"symbols": [42]}', 422, "invalid_symbol"),
            ("user 1", b'{"symbols": []}', 422, "invalid_follower"),
        ):
            async with http.put(f"{base}/v1/followers/{follower}", data=body) as response:
                assert response.status == status, body
                assert (await response.json())["error"]["code"] == code
        too_many = orjson.dumps({"symbols": [f"sym{i}usdt" for i in range(4097)]})
        async with http.put(f"{base}/v1/followers/user:1", data=too_many) as response:
            assert response.status == 422
        assert await get_json(f"{base}/v1/symbols") == {"symbols": []}


async def test_redis_and_kafka_restarted_under_load_publishing_resumes_and_nothing_stale_is_republished(
    redis_url, redis_server, own_kafka, clean_dbs, trade_recording
):
    kafka_server = own_kafka
    async with (
        exchange_and_proxy(trade_recording, speed=20) as (_exchange, proxy),
        serve_aggregator(clean_dbs.first, f"127.0.0.1:{own_kafka.port}", proxy.port) as base,
    ):
        await put_symbols(base, "user:1", list(SYMBOLS))
        seen: dict[str, list[int]] = defaultdict(list)

        async def listen(count: int) -> None:
            client = connect(redis_url)
            pubsub = await subscriber(client)
            await pubsub.subscribe(*SYMBOLS)
            received = 0
            deadline = time.monotonic() + 20
            while received < count:
                assert time.monotonic() < deadline, "publishing did not resume"
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is not None:
                    stat = orjson.loads(message["data"])
                    seen[stat["s"]].append(stat["t"])
                    received += 1
            await pubsub.aclose()
            await client.aclose()

        async def counter(name: str) -> float:
            return (await metrics(f"{base}/metrics"))[name]

        await listen(10)
        # Redis down while trades keep coming, then back (empty: the embedded Redis keeps nothing).
        await asyncio.to_thread(redis_server.stop)
        await eventually(lambda: _above(counter, "aggregator_redis_publish_failures_total", 0))
        await asyncio.to_thread(redis_server.start)
        await listen(10)

        sent = await counter("aggregator_kafka_sent_total")
        await eventually(lambda: _above(counter, "aggregator_kafka_sent_total", 0))
        await asyncio.to_thread(kafka_server.stop)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(kafka_server.start)
        sent = await counter("aggregator_kafka_sent_total")
        await eventually(lambda: _above(counter, "aggregator_kafka_sent_total", sent), timeout_s=30)
        await listen(5)

    # Across both restarts, every symbol's seconds only ever move forward: nothing republished, nothing stale.
    for seconds in seen.values():
        assert seconds == sorted(set(seconds))


async def _above(counter, name: str, value: float) -> bool:
    return await counter(name) > value
