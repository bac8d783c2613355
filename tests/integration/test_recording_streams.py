"""Any Binance recording plays: the mesh's plan tells the aggregator which trade stream (``@trade`` or
``@aggTrade``) each recorded symbol has, and with that alone the replay exchange, socket_proxy and the
aggregator (every part real) publish every recorded second of an ``@aggTrade`` recording, or of a recording of
both kinds; a followed symbol whose stream never carries a frame is reported stale.

The independent computation of each recorded second is :func:`support.recordings.recorded_seconds`; the
replay's timeline (``GET /replay/v1/info``) maps a published SecondStat back to it.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as redis
from structlog.testing import capture_logs
from support import polling
from support.credentials import service_headers
from support.recordings import as_recorded, recorded_seconds, write_mixed_recording
from support.stacks import exchange_and_proxy, serve_aggregator

from crypto_mesh.metrics import parse_samples
from launcher.mesh import build_plan
from launcher.settings import MeshSettings
from launcher.replay.recording import RecordingError

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)
#: The replay plays the 91 s aggTrade recording thirty times faster: a loop takes about three seconds.
SPEED = 30.0
eventually = functools.partial(polling.eventually, timeout_s=20.0)


def plan_environment(data_dir: Path, **mesh_settings) -> dict[str, dict[str, str]]:
    """The environment ``crypto-mesh up`` would give each process (name → variables), with ``mesh_settings``
    (further :class:`MeshSettings` fields) and a PostgreSQL server it does not start."""
    postgres = "postgresql+asyncpg://u:p@127.0.0.1:1"
    settings = MeshSettings(data_dir=data_dir, postgres_url=postgres, **mesh_settings)
    return {process.name: process.env for process in build_plan(settings, postgres=None).processes}


def launcher_stream_settings(data_dir: Path, recording: Path) -> dict[str, str]:
    """The aggregator's trade stream settings in the plan of ``crypto-mesh up`` with ``MESH_REPLAY_FILE`` =
    ``recording``, as :class:`AggregatorSettings` fields: what the tests below start the aggregator with, and
    nothing else about streams."""
    prefix = "AGGREGATOR_TRADE_STREAM"
    return {
        name.removeprefix("AGGREGATOR_").lower(): value
        for name, value in plan_environment(data_dir, replay_file=str(recording))["aggregator"].items()
        if name.startswith(prefix)
    }


async def get(url: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT, headers=service_headers()) as http,
        http.get(url) as response,
    ):
        return response.status, await response.text()


async def put_symbols(base: str, follower: str, symbols: list[str]) -> None:
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT, headers=service_headers()) as http,
        http.put(f"{base}/v1/followers/{follower}", json={"symbols": symbols}) as response,
    ):
        assert response.status == 200


@pytest.fixture
async def clean_redis(redis_url) -> str:
    """This module's Redis database, emptied before the test (an earlier test's followers would be loaded)."""
    client = redis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()
    return redis_url


@pytest.fixture(scope="module")
def mixed_recording(tmp_path_factory, agg_trade_recording, trade_recording) -> Path:
    """A recording of both kinds made from the shipped ones: btcusdt ``@trade`` and ``@aggTrade``, ethusdt and
    dotusdt ``@aggTrade`` (:func:`support.recordings.write_mixed_recording`)."""
    path = tmp_path_factory.mktemp("recordings") / "mixed.jsonl.gz"
    return write_mixed_recording(path, agg_trade_recording, trade_recording)


def test_the_mesh_plan_tells_the_aggregator_the_trade_stream_of_each_recorded_symbol(
    tmp_path, agg_trade_recording, trade_recording, mixed_recording
):
    variable = "AGGREGATOR_TRADE_STREAM_BY_SYMBOL"

    def by_symbol(replay_file: str) -> str:
        return plan_environment(tmp_path, replay_file=replay_file)["aggregator"][variable]

    assert by_symbol(str(agg_trade_recording)) == "btcusdt=aggTrade,dotusdt=aggTrade,ethusdt=aggTrade"
    assert by_symbol(str(trade_recording)) == "btcusdt=trade,ethusdt=trade"
    # A symbol recorded with both kinds is followed on @trade, the default of the live exchange too.
    assert by_symbol(str(mixed_recording)) == "btcusdt=trade,dotusdt=aggTrade,ethusdt=aggTrade"
    both = f"{agg_trade_recording}, {trade_recording}"
    assert by_symbol(both) == "btcusdt=trade,dotusdt=aggTrade,ethusdt=trade"

    # Against a real exchange, every symbol has both streams: the aggregator's default (@trade) stays.
    live = plan_environment(tmp_path, exchange_url="wss://stream.binance.com:9443")
    assert "exchange" not in live and variable not in live["aggregator"]

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"stream": "btcusdt@trade"}\n')
    with pytest.raises(RecordingError, match="broken.jsonl:1"):
        plan_environment(tmp_path, replay_file=str(broken))


@pytest.mark.parametrize(
    ("recording_name", "symbols", "streams"),
    [
        ("agg_trade_recording", ["dotusdt"], {"dotusdt@aggTrade"}),
        ("mixed_recording", ["btcusdt", "dotusdt"], {"btcusdt@trade", "dotusdt@aggTrade"}),
    ],
)
async def test_every_recorded_second_is_published_with_the_stream_settings_the_launcher_gives(
    request, tmp_path, clean_redis, kafka_bootstrap, recording_name, symbols, streams
):
    recording = request.getfixturevalue(recording_name)
    stream_settings = launcher_stream_settings(tmp_path, recording)
    earliest, expected = recorded_seconds(recording, streams)
    kinds = dict(stream.split("@") for stream in streams)
    wanted = {key for key in expected if key[0] in symbols}
    listener = redis.from_url(clean_redis)
    pubsub = listener.pubsub()
    await pubsub.subscribe(*symbols)
    async with (
        exchange_and_proxy(recording, speed=SPEED) as (exchange, proxy),
        serve_aggregator(
            clean_redis, kafka_bootstrap, proxy.port, window_grace_ms=2000, **stream_settings
        ) as base,
    ):
        _status, info = await get(f"http://127.0.0.1:{exchange.port}/replay/v1/info")
        timeline = orjson.loads(info)["recordings"][0]
        await put_symbols(base, "user:1", symbols)

        # The first second of each symbol may lack the trades before the subscription: it is skipped; every
        # later one must be the recorded second, until each recorded second of each symbol has been seen.
        first_seen: set[str] = set()
        checked: dict[tuple[str, int], dict] = {}
        deadline = time.monotonic() + 60
        while checked.keys() < wanted:
            assert time.monotonic() < deadline, f"never published: {sorted(wanted - checked.keys())[:5]}"
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is None:
                continue
            stat = orjson.loads(message["data"])
            if stat["s"] not in first_seen:
                first_seen.add(stat["s"])
                continue
            key, fields = as_recorded(stat, timeline, earliest, kinds)
            assert fields == expected[key], key
            checked[key] = fields

        samples = parse_samples((await get(f"{base}/metrics"))[1])
        assert samples["aggregator_trade_frames_total{outcome=malformed}"] == 0
        assert samples["aggregator_stale_streams"] == 0
        # Loops of the replay keep every kind of id contiguous: no trade looks lost.
        assert samples["aggregator_trade_gaps_total"] == 0
    await pubsub.aclose()
    await listener.aclose()


async def test_a_followed_symbol_the_exchange_never_sends_is_warned_about_and_counted_until_unfollowed(
    tmp_path, clean_redis, kafka_bootstrap, agg_trade_recording
):
    settings = launcher_stream_settings(tmp_path, agg_trade_recording)
    with capture_logs() as events:
        async with (
            exchange_and_proxy(agg_trade_recording, speed=SPEED) as (_exchange, proxy),
            serve_aggregator(clean_redis, kafka_bootstrap, proxy.port, stale_stream_s=2, **settings) as base,
        ):
            # solusdt is not in the recording; dotusdt's longest pause there is 5.1 s, 0.5 s at this speed.
            await put_symbols(base, "user:1", ["dotusdt", "solusdt"])

            async def stale_counted() -> dict[str, float]:
                samples = parse_samples((await get(f"{base}/metrics"))[1])
                return samples if samples["aggregator_stale_stream_periods_total"] >= 1 else {}

            samples = await eventually(stale_counted)
            assert samples["aggregator_stale_streams"] == 1
            stats = orjson.loads((await get(f"{base}/v1/stats"))[1])
            assert stats["stale"] == ["solusdt@trade"] and stats["tracked"] == ["dotusdt", "solusdt"]
            assert stats["upstream"]["stale_streams"] == 1

            await put_symbols(base, "user:1", ["dotusdt"])
            samples = parse_samples((await get(f"{base}/metrics"))[1])
            stale = (samples["aggregator_stale_streams"], samples["aggregator_stale_stream_periods_total"])
            assert stale == (0, 1)
            assert samples["aggregator_trade_frames_total{outcome=parsed}"] > 0
    warnings = [event for event in events if event["event"] == "trade_stream_stale"]
    assert [(event["log_level"], event["stream"]) for event in warnings] == [("warning", "solusdt@trade")]
    assert warnings[0]["silent_s"] >= 2
