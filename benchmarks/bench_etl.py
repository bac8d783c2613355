"""Rows per second from Kafka to ClickHouse (embedded chDB) through the ETL, beside a direct insert.

Usage::

    .venv/bin/python benchmarks/bench_etl.py [--rows 400000] [--batch-rows 50000] [--repeat 3]

What it does (bounded: the run stops itself after ``--timeout`` seconds, 300 by default; about a minute with
the defaults on 2 cores):

1. Starts an embedded Tansu broker (Kafka protocol) on 127.0.0.1 and writes ``--rows`` SecondStat records
   (the aggregator's ``binance.second`` format, 3 symbols) to one topic of 4 partitions. Not timed.
2. ``--repeat`` rounds of, alternately:

   - *Ceiling*: the same records, already decoded (not timed), inserted straight into
     ``crypto.price_seconds`` of a fresh chDB with clickhouse-connect, in batches of ``--batch-rows``: (a)
     ``client.insert`` of row tuples with ``Decimal`` and ``datetime`` values, (b) ``client.insert_arrow``
     of prebuilt Arrow tables. The faster of the two is the round's ceiling.
   - *ETL*: the ETL service in this process (``etl.app.start``, with ``etl.app.tune_interpreter`` applied
     as ``python -m etl`` does: consumer group, columnar decoding,
     pipelined insert with its deduplication token, commit after the insert) on another fresh chDB,
     consuming the whole topic from the start as a new consumer group. Timed from the first record taken
     (the consumer's poll returned it, before any decoding) to the commit of the last batch's offsets, both
     stamped by the consumer itself (``ConsumerStats.first_taken_at``, ``last_committed_at``), so the
     benchmark's own polling of the counters adds nothing to the time.

   Alternating rounds share the machine's conditions; the medians are compared, so one disturbed round
   does not decide the result.

Goals: at least 100,000 rows/s through the ETL, and at least half the ceiling (issue 6); at least
``GOAL_CEILING_SHARE`` of the ceiling (issue 18). Every figure is printed with the conditions: CPU, cores,
load average before and after, parameters.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import clickhouse_connect
from aiokafka import AIOKafkaProducer

from aggregator.second_topic import second_record
from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil
from launcher.embedded import ManagedProcess, tansu_command
from crypto_mesh.kafka import ensure_topics
from crypto_mesh.logs import configure_logging
from crypto_mesh.netutil import free_port
from crypto_mesh.secrets import ensure_secret, random_token, secrets_dir
from etl import migrate
from etl.app import start, tune_interpreter
from etl.columnar import arrow_table
from etl.seconds import SECONDS
from etl.settings import EtlSettings

from machine import cpu_model

GOAL_ROWS_PER_S = 100_000
#: Goal (issue 18): the ETL's rows/s at least this share of the direct-insert ceiling (medians).
GOAL_CEILING_SHARE = 0.75
SYMBOLS = ("btcusdt", "ethusdt", "dotusdt")
PARTITIONS = 4
START_MS = 1723161240000


def records(count: int) -> list[tuple[bytes, bytes]]:
    """``count`` (key, value) pairs of ``binance.second``: realistic prices, volumes and ids."""
    out = []
    for n in range(count):
        symbol = SYMBOLS[n % len(SYMBOLS)]
        price = Decimal("61837.63") + Decimal(n % 5000) / 100
        volume = Decimal("0.01234000") * (1 + n % 7)
        stat = SecondStat(
            symbol,
            START_MS + (n // len(SYMBOLS)) * 1000,
            price - 1,
            price + 2,
            price - 3,
            price,
            volume,
            price * volume,
            1 + n % 40,
            3735683259 + n,
        )
        out.append((symbol.encode(), jsonutil.dumps(second_record(stat))))
    return out


async def produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    await ensure_topics(bootstrap, {topic: PARTITIONS})
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        deliveries = [await producer.send(topic, key=key, value=value) for key, value in values]
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()


def python_rows(rows: list[tuple]) -> list[tuple]:
    """Decoded rows as the driver's row API takes them: ``Decimal`` and aware ``datetime`` values."""
    out = []
    for row in rows:
        values = list(row)
        values[2] = datetime.fromtimestamp(row[2] / 1000, UTC)
        for index in range(3, 10):
            values[index] = Decimal(row[index])
        out.append(tuple(values))
    return out


def ceiling(directory: Path, values: list[bytes], batch_rows: int) -> dict[str, float]:
    """Rows per second of direct clickhouse-connect inserts of the decoded ``values`` (decoding not timed)."""
    rows = [SECONDS.decode(value) for value in values]
    client = clickhouse_connect.get_client(dsn=f"chdb://{directory}", tz_mode="aware")
    try:
        migrate.apply_migrations(client, migrate.load_migrations())
        batches = [rows[i : i + batch_rows] for i in range(0, len(rows), batch_rows)]
        python_batches = [python_rows(batch) for batch in batches]
        started = time.perf_counter()
        for batch in python_batches:
            client.insert(SECONDS.table, batch, column_names=list(SECONDS.columns))
        tuples_rate = len(rows) / (time.perf_counter() - started)
        client.command("TRUNCATE TABLE crypto.price_seconds")
        tables = [arrow_table(SECONDS, batch) for batch in batches]
        started = time.perf_counter()
        for table in tables:
            client.insert_arrow(SECONDS.table, table)
        arrow_rate = len(rows) / (time.perf_counter() - started)
        return {
            "insert of row tuples (Decimal, datetime)": tuples_rate,
            "insert_arrow of prebuilt tables": arrow_rate,
        }
    finally:
        client.close()


async def through_etl(
    bootstrap: str, topic: str, directory: Path, count: int, batch_rows: int, timeout_s: float
):
    """(rows per second, seconds) of the ETL loading ``count`` records of ``topic`` into fresh chDB."""
    settings = EtlSettings(
        port=0,
        api_token_file=ensure_secret(secrets_dir(directory.parent / "secrets") / "etl_api_token", random_token),
        kafka_bootstrap_servers=bootstrap,
        kafka_group_id=f"bench-{uuid.uuid4().hex[:8]}",
        kafka_topic=f"bench-tickers-{uuid.uuid4().hex[:8]}",
        kafka_second_topic=topic,
        kafka_deadletter_topic=f"bench-deadletter-{uuid.uuid4().hex[:8]}",
        clickhouse_url=f"chdb://{directory}",
        batch_max_rows=batch_rows,
        batch_max_age_ms=200,
        kafka_session_timeout_ms=6000,
    )
    running = await start(settings)
    stats = running.service.consumer.stats
    deadline = time.monotonic() + timeout_s
    try:
        # Every row inserted and nothing held: the last batch is committed (or its commit failed, refused
        # below). Polled only to know when it is over; the time comes from the consumer's own stamps.
        while stats.rows_inserted < count or stats.records_held:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ETL loaded {stats.rows_inserted} of {count} rows")
            await asyncio.sleep(0.05)
        if stats.commit_failures:
            raise RuntimeError(f"{stats.commit_failures} offset commits failed: the run is not comparable")
        assert stats.first_taken_at is not None and stats.last_committed_at is not None
        elapsed = stats.last_committed_at - stats.first_taken_at
        [[stored]] = (
            await running.service.store.query("SELECT count() FROM crypto.price_seconds", running.service.settings.sql_limits())
        ).rows
        assert stored == count, f"{stored} rows stored, {count} produced"
        return count / elapsed, elapsed, stats.batches_committed
    finally:
        await running.stop()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument(
        "--batch-rows", type=int, default=50_000, help="ETL_BATCH_MAX_ROWS and the ceiling's batch"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds of ceiling and ETL")
    parser.add_argument("--timeout", type=float, default=300.0, help="stop the run after this many seconds")
    args = parser.parse_args()
    configure_logging("bench-etl", "WARNING")
    run_deadline = time.monotonic() + args.timeout

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"load average before: {os.getloadavg()}")
    print(
        f"rows: {args.rows} SecondStat records, {len(SYMBOLS)} symbols, {PARTITIONS} partitions; "
        f"batch: {args.batch_rows} rows; rounds: {args.repeat}"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-etl-"))
    port = free_port()
    broker = ManagedProcess("tansu", tansu_command(port), port, work / "tansu.log").start()
    try:
        bootstrap = f"127.0.0.1:{port}"
        topic = f"bench-seconds-{uuid.uuid4().hex[:8]}"
        keyed = records(args.rows)
        started = time.perf_counter()
        await produce(bootstrap, topic, keyed)
        print(f"produced in {time.perf_counter() - started:.1f} s (not timed)")
        # The ETL service holds no such list: keep only the values (bytes, which the collector does not
        # track), so that garbage collection during the ETL's run costs what it costs in the service.
        values = [value for _key, value in keyed]
        del keyed
        tune_interpreter()  # as python -m etl does at start-up

        ceilings: list[float] = []
        rates: list[float] = []
        for round_number in range(1, args.repeat + 1):
            measured = ceiling(work / f"chdb-ceiling-{round_number}", values, args.batch_rows)
            gc.collect()
            best = max(measured.values())
            ceilings.append(best)
            rate, elapsed, batches = await through_etl(
                bootstrap,
                topic,
                work / f"chdb-etl-{round_number}",
                args.rows,
                args.batch_rows,
                run_deadline - time.monotonic(),
            )
            rates.append(rate)
            print(
                f"round {round_number}: ceiling "
                + ", ".join(f"{name} {value:,.0f} rows/s" for name, value in measured.items())
                + f"; ETL Kafka → chDB {rate:,.0f} rows/s ({args.rows} rows in {elapsed:.2f} s, "
                f"{batches} batches), {rate / best:.0%} of the round's ceiling"
            )
        ceiling_median, rate_median = statistics.median(ceilings), statistics.median(rates)
        print(f"ceiling (best direct insert), median of {args.repeat}: {ceiling_median:,.0f} rows/s")
        print(f"ETL Kafka → chDB, median of {args.repeat}: {rate_median:,.0f} rows/s")
        print(f"ETL / ceiling (medians): {rate_median / ceiling_median:.0%}")
        print(f"load average after: {os.getloadavg()}")
        met = rate_median >= GOAL_ROWS_PER_S and rate_median >= ceiling_median / 2
        print(f"goal (>= {GOAL_ROWS_PER_S:,} rows/s and >= half the ceiling): {'met' if met else 'NOT met'}")
        share_met = rate_median >= GOAL_CEILING_SHARE * ceiling_median
        verdict = "met" if share_met else "NOT met"
        print(f"goal (>= {GOAL_CEILING_SHARE:.0%} of the ceiling, issue 18): {verdict}")
        return 0
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
