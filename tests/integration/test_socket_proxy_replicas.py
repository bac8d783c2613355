"""socket_proxy replicas behind gRPC client-side load balancing (``AGGREGATOR_SOCKET_PROXY_TARGET`` naming
several, round robin): the replay exchange playing the shipped recording, two socket_proxy processes in front
of it, one aggregator, Redis and Kafka (embedded engines of tests/conftest.py), every part real. Calls on the
aggregator's channel options reach both replicas; the replica serving the aggregator's trade stream is killed with SIGKILL: the stream is called again on the other one,
the trades missed meanwhile are fetched back from the exchange's history, and every second published is the
recorded second, once.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from contextlib import AsyncExitStack

import aiohttp
import orjson
from support import polling
from support.credentials import service_headers
from support.recordings import as_recorded, recorded_seconds
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.stacks import proxy_process, published_on, replay_exchange, serve_aggregator

from aggregator.feeds import CHANNEL_OPTIONS
from crypto_mesh.grpc_tls import tls_channel
from crypto_mesh.metrics import parse_samples
from crypto_mesh.pki import AGGREGATOR, SOCKET_PROXY

STREAM = "btcusdt@trade"
SYMBOL = "btcusdt"
STREAM_TRADES = "/crypto.socket.v1.SocketProxy/StreamTrades"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)


async def metrics(url: str) -> dict[str, float]:
    """``GET url`` (Prometheus text, behind the service credential) → ``{"name{label=value,...}": value}``."""
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT, headers=service_headers()) as http,
        http.get(url) as response,
    ):
        assert response.status == 200, url
        return parse_samples(await response.text())


def open_calls(samples: dict[str, float], side: str, method: str) -> float:
    """Calls of ``method`` started and not yet handled, from a service's ``grpc_<side>_*`` series."""
    def total(series: str) -> float:
        # Labels come sorted by name: grpc_code, then grpc_method.
        return sum(
            value
            for key, value in samples.items()
            if f"_grpc_{side}_{series}_total{{" in key and key.endswith(f"grpc_method={method}}}")
        )

    return total("started") - total("handled")


async def test_the_replica_serving_a_stream_killed_the_stream_resumes_on_the_other_and_every_second_stays_exact(
    redis_url, kafka_bootstrap, trade_recording, mesh_pki
):
    earliest, expected = recorded_seconds(trade_recording, {STREAM})
    async with AsyncExitStack() as stack:
        published = await stack.enter_async_context(published_on(redis_url, SYMBOL))
        exchange = await stack.enter_async_context(replay_exchange(trade_recording, speed=10))
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            async with http.get(f"http://127.0.0.1:{exchange.port}/replay/v1/info") as response:
                timeline = (await response.json())["recordings"][0]
        replicas = [await stack.enter_async_context(proxy_process(exchange.url)) for _ in range(2)]
        target = "ipv4:" + ",".join(f"127.0.0.1:{replica.port}" for replica in replicas)

        async def calls_of(replica, method: str) -> float:
            samples = await metrics(f"http://127.0.0.1:{replica.metrics_port}/metrics")
            return samples.get(f"socket_proxy_grpc_server_started_total{{grpc_method={method}}}", 0)

        # The aggregator's channel options spread calls over every replica the target names (the first
        # address alone would serve them all with gRPC's default policy, pick_first).
        channel = tls_channel(target, mesh_pki[AGGREGATOR].load(), SOCKET_PROXY, options=CHANNEL_OPTIONS)
        stack.push_async_callback(channel.close)
        health = health_pb2_grpc.HealthStub(channel)

        async def both_answered() -> bool:
            for _ in range(4):
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            return all([await calls_of(replica, HEALTH_CHECK) > 0 for replica in replicas])

        await polling.eventually(both_answered, what="health checks answered by both replicas")
        base = await stack.enter_async_context(
            serve_aggregator(redis_url, kafka_bootstrap, target, window_grace_ms=3000)
        )
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT, headers=service_headers()) as http,
            http.put(f"{base}/v1/followers/user:1", json={"symbols": [SYMBOL]}) as response,
        ):
            assert response.status == 200
        await polling.eventually(lambda: len(published) >= 3, timeout_s=20, what="seconds flow")

        async def streams_per_replica() -> list[float]:
            return [
                open_calls(
                    await metrics(f"http://127.0.0.1:{replica.metrics_port}/metrics"), "server", STREAM_TRADES
                )
                for replica in replicas
            ]

        async def one_serving() -> list[float] | None:
            """The open trade streams of each replica, once exactly one replica serves the one stream."""
            counts = await streams_per_replica()
            return counts if sorted(counts) == [0, 1] else None

        counts = await polling.eventually(one_serving, what="one replica serving the trade stream")
        killed_index = counts.index(1)
        await asyncio.to_thread(replicas[killed_index].process.kill)
        killed_at = len(published)
        survivor = replicas[1 - killed_index]

        # Prices keep coming, now through the survivor.
        async def resumed_on_survivor() -> bool:
            samples = await metrics(f"http://127.0.0.1:{survivor.metrics_port}/metrics")
            return open_calls(samples, "server", STREAM_TRADES) == 1 and len(published) > killed_at

        await polling.eventually(resumed_on_survivor, timeout_s=10, what="the stream on the surviving replica")
        # More seconds: those around the kill are published by then (the grace is 3 s of exchange time).
        await polling.eventually(lambda: len(published) >= killed_at + 40, timeout_s=15, what="seconds after")
        samples = await metrics(f"{base}/metrics")
        survivor_samples = await metrics(f"http://127.0.0.1:{survivor.metrics_port}/metrics")

    # The aggregator's trade stream failed once (the kill) and runs again.
    failed = f"aggregator_grpc_client_handled_total{{grpc_code=UNAVAILABLE,grpc_method={STREAM_TRADES}}}"
    assert samples.get(failed, 0) >= 1
    assert open_calls(samples, "client", STREAM_TRADES) == 1
    # Whatever the kill lost was fetched back whole, from the survivor (the killed replica served no fill).
    assert samples["aggregator_backfills_total{result=whole}"] == samples["aggregator_trade_gaps_total"]
    assert samples["aggregator_incomplete_seconds_total"] == 0
    assert survivor_samples["socket_proxy_trade_history_trades_total"] == samples["aggregator_backfilled_trades_total"]
    # No second published with two contents, none marked incomplete; every second after the first (joined
    # mid-second) is the recorded second, and none is missing: those around the kill are among them.
    contents: dict[tuple[str, int], set[bytes]] = defaultdict(set)
    for raw in published:
        stat = orjson.loads(raw)
        contents[(stat["s"], stat["t"])].add(raw)
    assert all(len(versions) == 1 for versions in contents.values()), contents
    stats = [orjson.loads(raw) for raw in published]
    assert not [stat for stat in stats if "x" in stat]
    seconds = [as_recorded(stat, timeline, earliest) for stat in stats[1:]]
    for key, fields in seconds:
        assert fields == expected[key], key
    first, last = seconds[0][0], seconds[-1][0]
    assert [key for key, _fields in seconds] == sorted(key for key in expected if first <= key <= last)
