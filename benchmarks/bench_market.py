"""Benchmark of the BFF's public market routes: ``GET /v1/instruments?q=btc`` (the ranked search) and
``GET /v1/instruments/{symbol}/candles?interval=1m&limit=1000`` beside ``GET /healthz`` on the same BFF in the
same run, at ``--concurrency`` concurrent clients; the ratio of each route's request rate to that of
``/healthz`` is the figure (the machine's speed cancels out).

What runs, all on 127.0.0.1 and all started and stopped by this script:

- an embedded PostgreSQL (the BFF's profile database, for its health), Redis, and a Tansu broker (the ETL's
  Kafka); Redis holds a 24 h ticker for every symbol of the shipped exchangeInfo snapshot, written by the
  aggregator's ticker store, so that the search ranks ~2,000 instruments by quote volume;
- a real ETL in this process, on a new chDB holding ``--minutes`` minutes of btcusdt seconds: the shipped
  recording ``btcusdt_ethusdt_trade_2024-08-08.jsonl.gz`` (650 s) played again and again, shifted by its span
  each time as the replay exchange loops it, so that 1,000 one-minute candles exist;
- ONE BFF process (``python -m profile_bff``) reading the ETL's API with its service token, the per-address
  limit of the public routes lifted (every client is 127.0.0.1);
- ``--concurrency`` clients in this process, each sending its next request when the previous answer is read,
  for ``--seconds`` per route, ``/healthz`` first.

The BFF keeps a candle answer, and its JSON, for a second, so the run measures the BFF (routing, the
per-address limit in Redis, the cache, a 217 KB answer of 1,000 candles) with one ETL call a second, as a
chart served to many viewers would. Printed: the conditions, then per route requests/s, p50/p99 latency,
answer size and non-200 answers, and the ratio. One run on 2 CPUs shared with other work, 50 clients:
``/healthz`` 9,639 requests/s (p99 22 ms), candles 3,696 requests/s (p99 44 ms), ratio 0.38; before the
JSON was kept, writing 1,000 candles for each request held the candles to 192 requests/s.

    .venv/bin/python benchmarks/bench_market.py --concurrency 50 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import sys
import tempfile
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import aiohttp
# The script's directory is on sys.path when it runs: the BFF process helpers are bench_bff's.
from bench_bff import percentile, start_bff_process, stop_bff_process, wait_healthy

from aggregator.second_topic import second_record
from aggregator.store import TickerStore, connect_redis
from aggregator.secondstat import SecondStat, SecondWindows
from crypto_mesh import jsonutil
from crypto_mesh.binance import DEFAULT_EXCHANGE_INFO, MiniTicker, load_exchange_info, parse_trade_frame
from crypto_mesh.netutil import free_port
from crypto_mesh.pki import PROFILE_BFF
from crypto_mesh.secrets import ensure_secret, random_token, secrets_dir
from etl.app import start as start_etl
from etl.columnar import arrow_table
from etl.seconds import SECONDS
from etl.settings import EtlSettings
from launcher.embedded import EmbeddedPostgres, ManagedProcess, chdb_url, tansu_command
from launcher.mesh import embedded_redis, ensure_mesh_pki

ROOT = Path(__file__).resolve().parent.parent
RECORDING = ROOT / "crypto_mesh" / "data" / "binance" / "btcusdt_ethusdt_trade_2024-08-08.jsonl.gz"
CANDLES = "/v1/instruments/btcusdt/candles?interval=1m&limit=1000"
SEARCH = "/v1/instruments?q=btc"


async def seed_tickers(redis_url: str) -> int:
    """A 24 h ticker for every symbol of the shipped exchangeInfo snapshot, through the aggregator's ticker
    store (volumes differ per symbol, so the ranking has work to do); the number written."""
    client = connect_redis(redis_url)
    store = TickerStore(client)
    task = asyncio.create_task(store.run())
    try:
        symbols = [listed.symbol for listed in load_exchange_info(DEFAULT_EXCHANGE_INFO)]
        store.submit(
            [
                MiniTicker(1_700_000_000_000, symbol, Decimal("1.5"), Decimal(1), Decimal(2), Decimal("0.5"),
                           Decimal(n + 1), Decimal(n + 1) * 1000)
                for n, symbol in enumerate(symbols)
            ]
        )
        while store.pending() or store.written < len(symbols):
            await asyncio.sleep(0.05)
        return store.written
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


def looped_seconds(minutes: int) -> list[SecondStat]:
    """btcusdt's SecondStats of the recording, repeated back to back for at least ``minutes`` minutes."""
    windows = SecondWindows(grace_ms=1000)
    stats = []
    with gzip.open(RECORDING, "rb") as lines:
        for line in lines:
            stats += windows.add(parse_trade_frame(line))
    stats += windows.close_until(2**62)
    stats = [stat for stat in stats if stat.symbol == "btcusdt"]
    span = stats[-1].second_ms - stats[0].second_ms + 1000
    loops = -(-minutes * 60_000 // span)
    return [replace(stat, second_ms=stat.second_ms + k * span) for k in range(loops) for stat in stats]


async def load(url: str, concurrency: int, seconds: float) -> tuple[int, list[float], int, int]:
    """``concurrency`` clients on ``url`` for ``seconds``: requests, sorted latencies (ms), non-200 answers,
    bytes of the last answer."""
    latencies: list[float] = []
    errors = size = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client() -> None:
            nonlocal errors, size
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with http.get(url) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append((time.perf_counter() - started) * 1000)
                size = len(body)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return len(latencies), sorted(latencies), errors, size


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-market-"))
    postgres = EmbeddedPostgres(work / "pg")
    redis_port, kafka_port = free_port(), free_port()
    redis_argv, redis_urls = embedded_redis(work, redis_port)
    redis_process = ManagedProcess("redis", redis_argv, redis_port, work / "redis.log")
    kafka = ManagedProcess("tansu", tansu_command(kafka_port), kafka_port, work / "tansu.log")
    for process in (postgres, redis_process, kafka):
        await asyncio.to_thread(process.start)
    token = ensure_secret(secrets_dir(work / "secrets") / "etl_api_token", random_token)
    etl = await start_etl(
        EtlSettings(
            port=0,
            api_token_file=token,
            kafka_bootstrap_servers=f"127.0.0.1:{kafka_port}",
            clickhouse_url=chdb_url(work / "chdb"),
            log_level="WARNING",
        )
    )
    bff = None
    try:
        stats = looped_seconds(args.minutes)
        rows = [SECONDS.decode(jsonutil.dumps(second_record(stat))) for stat in stats]
        await etl.service.store.insert(SECONDS, arrow_table(SECONDS, rows), "bench")
        tickers = await seed_tickers(redis_urls["aggregator"])
        tls = ensure_mesh_pki(work)
        bff_port = free_port()
        env = {
            **os.environ,
            "BFF_PORT": str(bff_port),
            "BFF_DATABASE_URL": postgres.url("profile"),
            "BFF_REDIS_URL": redis_urls["bff"],
            "BFF_AUTH_TARGET": f"127.0.0.1:{free_port()}",
            "BFF_AGGREGATOR_URL": f"http://127.0.0.1:{free_port()}",
            "BFF_AGGREGATOR_TOKEN_FILE": str(token),
            "BFF_ETL_URL": f"http://127.0.0.1:{etl.port}",
            "BFF_ETL_TOKEN_FILE": str(token),
            "BFF_LOG_LEVEL": "WARNING",
            "BFF_PUBLIC_RATE_PER_ADDRESS": "100000000/minute",
            "BFF_MAX_CONNECTIONS_PER_ADDRESS": str(args.concurrency + 100),
            **tls[PROFILE_BFF].environment("BFF_"),
        }
        bff = await asyncio.to_thread(start_bff_process, env, work / "bff.log")
        url = f"http://127.0.0.1:{bff_port}"
        await wait_healthy(url, bff)
        results = {}
        routes = (("GET /healthz", "/healthz"), (f"GET {SEARCH}", SEARCH), (f"GET {CANDLES}", CANDLES))
        for name, path in routes:
            results[name] = await load(f"{url}{path}", args.concurrency, args.seconds)
        print("== bench_market: one BFF process, its ETL on chDB ==")
        print(
            f"machine: {os.cpu_count()} CPUs, load average before run {os.getloadavg()[0]:.2f}, "
            f"python {sys.version.split()[0]}; btcusdt seconds in ClickHouse: {len(stats)} "
            f"({len(stats) and (stats[-1].second_ms - stats[0].second_ms) // 60_000} minutes); "
            f"24 h tickers in Redis: {tickers}"
        )
        print(f"parameters: concurrency={args.concurrency}, seconds={args.seconds} per route")
        rates = {}
        for name, (count, latencies, errors, size) in results.items():
            rates[name] = count / args.seconds
            print(
                f"{name}: {rates[name]:.0f} requests/s, p50 {percentile(latencies, 0.5):.1f} ms, "
                f"p99 {percentile(latencies, 0.99):.1f} ms, {size} bytes, non-200: {errors}"
            )
        healthz, search, candles = rates.values()
        print(f"search / healthz request rate: {search / healthz:.2f}")
        print(f"candles / healthz request rate: {candles / healthz:.2f}")
    finally:
        if bff is not None:
            await asyncio.to_thread(stop_bff_process, bff)
        await etl.stop()
        for process in (kafka, redis_process, postgres):
            await asyncio.to_thread(process.stop)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per route (default 10)")
    parser.add_argument("--minutes", type=int, default=1100, help="minutes of seconds loaded (default 1100)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
