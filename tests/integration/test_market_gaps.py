"""Gap detection from trade / aggregate ids: the pure rule, and through the replay exchange, socket_proxy and
the aggregator with a recording that misses one trade."""

from __future__ import annotations

import asyncio
import gzip
import time

import aiohttp
import orjson
from support.credentials import service_headers, service_token_file
from support.stacks import serve_aggregator

from crypto_mesh.gaps import GapDetector
from support.ports import free_port
from launcher.replay.server import start as start_replay
from launcher.replay.settings import ReplaySettings
from socket_proxy.server import start as start_proxy
from socket_proxy.settings import ProxySettings


def frame(stream: str, **data) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def test_a_jump_beyond_the_next_id_counts_one_gap_of_its_size():
    gaps = GapDetector()
    assert gaps.observe("btcusdt@trade", frame("btcusdt@trade", e="trade", t=10)) == 0
    assert gaps.observe("btcusdt@trade", frame("btcusdt@trade", e="trade", t=11)) == 0
    assert gaps.observe("btcusdt@trade", frame("btcusdt@trade", e="trade", t=15)) == 3
    assert (gaps.gaps, gaps.missed) == (1, 3)


def test_aggregate_ids_are_followed_per_stream_and_repeats_neither_count_nor_rewind():
    gaps = GapDetector()
    gaps.observe("btcusdt@aggTrade", frame("btcusdt@aggTrade", e="aggTrade", a=100))
    gaps.observe("ethusdt@aggTrade", frame("ethusdt@aggTrade", e="aggTrade", a=7))
    assert gaps.observe("btcusdt@aggTrade", frame("btcusdt@aggTrade", e="aggTrade", a=99)) == 0
    assert gaps.observe("btcusdt@aggTrade", frame("btcusdt@aggTrade", e="aggTrade", a=100)) == 0
    assert gaps.observe("btcusdt@aggTrade", frame("btcusdt@aggTrade", e="aggTrade", a=101)) == 0
    assert gaps.observe("ethusdt@aggTrade", frame("ethusdt@aggTrade", e="aggTrade", a=9)) == 1
    assert (gaps.gaps, gaps.missed, len(gaps)) == (1, 1, 2)


def test_other_streams_and_malformed_frames_are_ignored_and_forget_drops_the_state():
    gaps = GapDetector()
    assert gaps.observe("!miniTicker@arr", b'{"stream":"!miniTicker@arr","data":[]}') == 0
    assert gaps.observe("btcusdt@trade", b"not json") == 0
    assert gaps.observe("btcusdt@trade", b'{"stream":"btcusdt@trade","data":[1]}') == 0
    assert gaps.observe("btcusdt@trade", frame("btcusdt@trade", e="trade", t="12")) == 0
    assert len(gaps) == 0
    gaps.observe_id("btcusdt@trade", 5)
    gaps.forget("btcusdt@trade")
    # A stream subscribed again starts afresh: no gap from the id before it was released.
    assert gaps.observe_id("btcusdt@trade", 50) == 0
    assert gaps.gaps == 0


async def test_a_missing_trade_is_counted_by_socket_proxy_and_by_the_aggregator_in_every_loop(
    tmp_path, trade_recording, redis_url, kafka_bootstrap
):
    with gzip.open(trade_recording) as lines:
        btc = [line for line in lines if line.startswith(b'{"stream":"btcusdt@trade"')][:300]
    del btc[150]  # one trade never sent: a gap of exactly one id per loop of the replay
    recording = tmp_path / "btcusdt_one_missing.jsonl"
    recording.write_bytes(b"".join(btc))

    exchange = await start_replay(ReplaySettings(port=0, files=(recording,), speed=100))
    proxy = await start_proxy(
        ProxySettings(
            port=0, exchange_url=exchange.url, metrics_port=free_port(), metrics_token_file=service_token_file()
        )
    )
    try:
        async with (
            serve_aggregator(redis_url, kafka_bootstrap, proxy.port) as base,
            aiohttp.ClientSession(headers=service_headers()) as http,
        ):
            async with http.put(f"{base}/v1/followers/gap-probe", json={"symbols": ["btcusdt"]}) as response:
                assert response.status == 200
            deadline = time.monotonic() + 20
            while True:
                async with http.get(f"{base}/v1/stats") as response:
                    trades = (await response.json())["trades"]
                if trades["gaps"] >= 2 and proxy.service.gaps.gaps >= 2:
                    break
                assert time.monotonic() < deadline, "gaps not detected"
                await asyncio.sleep(0.05)
            async with http.get(f"http://127.0.0.1:{proxy.service.metrics_port}/metrics") as response:
                text = await response.text()
            async with http.put(f"{base}/v1/followers/gap-probe", json={"symbols": []}) as response:
                assert response.status == 200
        assert trades["ids_missed"] == trades["gaps"]  # each jump skipped exactly the one missing id
        assert proxy.service.gaps.missed == proxy.service.gaps.gaps
        assert "socket_proxy_trade_gaps_total" in text and "socket_proxy_trade_ids_missed_total" in text
    finally:
        await proxy.stop()
        await exchange.stop()
