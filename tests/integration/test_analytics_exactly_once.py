"""Exactly once, in effect: the ETL (``python -m etl``, a real process on real chDB) is killed with SIGKILL at
random points ten times while the aggregator's SecondStat producer and a mini-ticker producer keep writing
to Kafka; afterwards each table holds exactly one row per produced record, by count and by message_id.

chDB is opened by one process at a time, so each table is read through the last ETL's ``POST /v1/sql``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer
from support.credentials import service_token_file
from support.polling import eventually
from support.etl import sql_rows

from aggregator.second_topic import SecondProducer, second_message_id
from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil
from launcher.embedded import chdb_url
from crypto_mesh.netutil import free_port

KILLS = 10
SYMBOLS = ("btcusdt", "ethusdt", "dotusdt")
START_MS = 1723161240000  # 2024-08-08T23:54:00Z


def stat(symbol: str, n: int) -> SecondStat:
    """The ``n``-th SecondStat of ``symbol``: one per second from :data:`START_MS`."""
    price = Decimal("100.5") + n
    return SecondStat(
        symbol, START_MS + n * 1000, price, price + 1, price - 1, price, Decimal(2), price * 2, 3, n
    )


def ticker(symbol: str, n: int) -> dict:
    event_time = START_MS + n * 1000
    return {
        "message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"binance.miniticker/{symbol}/{event_time}")),
        "e": "24hrMiniTicker",
        "E": event_time,
        "receive_time": event_time + 7,
        "s": symbol,
        "c": f"{100 + n}.25",
        "o": "100",
        "h": f"{101 + n}",
        "l": "99",
        "change_price": f"{n}.25",
        "change_percent": "0.25",
    }


class EtlProcess:
    """``python -m etl`` with ``ETL_*`` settings, its output appended to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "etl"],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=40)


#: The ETL is killed and started again under these tests: a refused or failed request is "not yet".
wait_for = functools.partial(eventually, interval_s=0.2, tolerate=(aiohttp.ClientError, OSError))


async def produce_tickers(bootstrap: str, topic: str, stop: asyncio.Event, sent: list[str]) -> None:
    """Write mini-ticker records until ``stop``, about 150 a second; ``sent`` gets each acknowledged id."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        n = 0
        while not stop.is_set():
            batch = [ticker(symbol, n) for symbol in SYMBOLS]
            deliveries = [
                await producer.send(topic, key=m["s"].encode(), value=jsonutil.dumps(m)) for m in batch
            ]
            await asyncio.gather(*deliveries)
            sent.extend(m["message_id"] for m in batch)
            n += 1
            await asyncio.sleep(0.02)
    finally:
        await producer.stop()


async def produce_seconds(producer: SecondProducer, stop: asyncio.Event, submitted: list[str]) -> None:
    """Hand SecondStats to the aggregator's producer until ``stop``, about 150 a second."""
    n = 0
    while not stop.is_set():
        for symbol in SYMBOLS:
            producer.submit(stat(symbol, n))
            submitted.append(second_message_id(symbol, START_MS + n * 1000))
        n += 1
        await asyncio.sleep(0.02)


async def test_ten_kill_9s_of_the_etl_while_producing_leave_exactly_one_row_per_record(
    kafka_bootstrap, tmp_path
):
    name = uuid.uuid4().hex[:8]
    ticker_topic, second_topic = f"tickers-{name}", f"seconds-{name}"
    port = free_port()
    etl = EtlProcess(
        {
            "ETL_PORT": str(port),
            "ETL_API_TOKEN_FILE": str(service_token_file()),
            "ETL_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "ETL_KAFKA_GROUP_ID": f"etl-{name}",
            "ETL_KAFKA_TOPIC": ticker_topic,
            "ETL_KAFKA_SECOND_TOPIC": second_topic,
            "ETL_KAFKA_DEADLETTER_TOPIC": f"deadletter-{name}",
            "ETL_CLICKHOUSE_URL": chdb_url(tmp_path / "chdb"),
            # Small, quick batches: a kill then often falls between an insert and its commit.
            "ETL_BATCH_MAX_ROWS": "100",
            "ETL_BATCH_MAX_AGE_MS": "50",
            "ETL_RETRY_INITIAL_MS": "50",
            "ETL_RETRY_MAX_MS": "500",
            # A killed member leaves the group only when its session times out.
            "ETL_KAFKA_SESSION_TIMEOUT_MS": "1500",
        },
        tmp_path / "etl.log",
    )
    seconds = SecondProducer(kafka_bootstrap, enable_idempotence=False, topic=second_topic)
    sender = asyncio.create_task(seconds.run())
    stop = asyncio.Event()
    tickers_sent: list[str] = []
    seconds_submitted: list[str] = []
    producers = [
        asyncio.create_task(produce_tickers(kafka_bootstrap, ticker_topic, stop, tickers_sent)),
        asyncio.create_task(produce_seconds(seconds, stop, seconds_submitted)),
    ]
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    try:
        for kill in range(KILLS):
            etl.start()
            if kill % 3 == 0:
                # Some kills in the middle of start-up: migrations, joining the group.
                await asyncio.sleep(rng.uniform(0.2, 2.0))
            else:
                # The others at a random point of consuming, inserting and committing.
                await wait_for(lambda: _healthy(port), 30, "ETL consuming")
                await asyncio.sleep(rng.uniform(0.0, 1.0))
            etl.kill()
        stop.set()
        await asyncio.gather(*producers)
        await wait_for(
            lambda: seconds.sent + seconds.failed + seconds.dropped == len(seconds_submitted),
            20,
            "SecondStat deliveries",
        )
        assert (seconds.failed, seconds.dropped) == (0, 0)

        etl.start()
        await wait_for(lambda: _healthy(port), 30, "ETL consuming")
        expected = {
            "crypto.price_seconds": set(seconds_submitted),
            "crypto.market_tickers": set(tickers_sent),
        }
        for table, ids in expected.items():
            await wait_for(
                lambda table=table, ids=ids: _counts_reach(port, table, len(ids)), 60, f"{table} caught up"
            )
        for table, ids in expected.items():
            [[final_rows, distinct_ids, raw_rows]] = await sql_rows(
                port,
                f"SELECT (SELECT count() FROM {table} FINAL), uniqExact(message_id), count() FROM {table}",
            )
            stored = {row[0] for row in await sql_rows(port, f"SELECT message_id FROM {table} FINAL")}
            context = f"{table}: seed {seed}, {raw_rows} raw rows before merging"
            assert (final_rows, distinct_ids) == (len(ids), len(ids)), context
            assert stored == ids, context
            assert raw_rows >= len(ids), context
        assert etl.terminate() == 0
    finally:
        stop.set()
        await asyncio.gather(*producers, return_exceptions=True)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await seconds.close()
        if etl.process is not None and etl.process.poll() is None:
            etl.kill()


async def _counts_reach(port: int, table: str, expected: int) -> bool:
    [[count]] = await sql_rows(port, f"SELECT count() FROM {table} FINAL")
    return int(count) >= expected


async def _healthy(port: int) -> bool:
    """The ETL answers ``/healthz`` 200: ClickHouse migrated, consumer in its group."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status == 200


async def test_with_clickhouse_unreachable_the_etl_takes_nothing_and_catches_up_once_it_is_back(
    kafka_bootstrap, tmp_path
):
    # chDB cannot be stopped from outside the process that embeds it, so "unreachable" is a ClickHouse HTTP
    # URL where nothing listens (connection refused), fixed by a restart with the real URL.
    name = uuid.uuid4().hex[:8]
    port = free_port()
    env = {
        "ETL_PORT": str(port),
        "ETL_API_TOKEN_FILE": str(service_token_file()),
        "ETL_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ETL_KAFKA_GROUP_ID": f"etl-{name}",
        "ETL_KAFKA_TOPIC": f"tickers-{name}",
        "ETL_KAFKA_SECOND_TOPIC": f"seconds-{name}",
        "ETL_KAFKA_DEADLETTER_TOPIC": f"deadletter-{name}",
        "ETL_RETRY_INITIAL_MS": "50",
        "ETL_RETRY_MAX_MS": "300",
        "ETL_KAFKA_SESSION_TIMEOUT_MS": "1500",
    }
    down = EtlProcess({**env, "ETL_CLICKHOUSE_URL": f"http://127.0.0.1:{free_port()}"}, tmp_path / "down.log")
    down.start()
    try:
        status, report = await wait_for(lambda: _health_report(port), 30, "ETL answering")
        assert (status, report["clickhouse"]) == (503, "connecting")
        producer = SecondProducer(
            kafka_bootstrap, enable_idempotence=False, topic=env["ETL_KAFKA_SECOND_TOPIC"]
        )
        sender = asyncio.create_task(producer.run())
        try:
            for n in range(500):
                producer.submit(stat("btcusdt", n))
            await wait_for(lambda: producer.sent == 500, 20, "records produced")
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await producer.close()
        await asyncio.sleep(1.0)  # retrying meanwhile
        status, report = await _health_report(port)
        assert (status, report["rows_inserted"], report["records_held"]) == (503, 0, 0)
        assert down.terminate() == 0  # stops cleanly although ClickHouse never answered
    finally:
        if down.process.poll() is None:
            down.kill()

    up = EtlProcess({**env, "ETL_CLICKHOUSE_URL": chdb_url(tmp_path / "chdb")}, tmp_path / "up.log")
    up.start()
    try:
        await wait_for(lambda: _healthy(port), 30, "ETL consuming")
        await wait_for(lambda: _counts_reach(port, "crypto.price_seconds", 500), 30, "caught up")
        [[rows, ids]] = await sql_rows(port, "SELECT count(), uniqExact(message_id) FROM crypto.price_seconds")
        assert (rows, ids) == (500, 500)
        assert up.terminate() == 0
    finally:
        if up.process.poll() is None:
            up.kill()


async def _health_report(port: int) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status, await response.json()
