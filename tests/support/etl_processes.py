"""The ETL as a real OS process (``python -m etl``) under SIGKILL, and the producers that keep writing to its
topics meanwhile: the exactly-once tests (tests/integration/test_analytics_exactly_once.py,
tests/integration/test_etl_consumer_group.py) start, kill and read it through these."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer
from support.credentials import service_token_file
from support.polling import eventually
from support.etl import mini_ticker_message, sql_rows

from aggregator.second_topic import SecondProducer, second_message_id
from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil

SYMBOLS = ("btcusdt", "ethusdt", "dotusdt")
START_MS = 1723161240000  # 2024-08-08T23:54:00Z


def stat(symbol: str, n: int) -> SecondStat:
    """The ``n``-th SecondStat of ``symbol``: one per second from :data:`START_MS`."""
    price = Decimal("100.5") + n
    return SecondStat(
        symbol, START_MS + n * 1000, price, price + 1, price - 1, price, Decimal(2), price * 2, 3, n
    )


def ticker(symbol: str, n: int) -> dict:
    """The ``n``-th mini-ticker KafkaMsg of ``symbol`` (one per second from :data:`START_MS`)."""
    close = Decimal(f"{100 + n}.25")
    return mini_ticker_message(symbol, START_MS + n * 1000, close, Decimal(100), close + 1, Decimal(99))


class EtlProcess:
    """``python -m etl`` with ``ETL_*`` settings, its output appended to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        """The HTTP port (``ETL_PORT``)."""
        return int(self.env["ETL_PORT"])

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "etl"],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL, and wait for the process to be gone."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> int:
        """SIGTERM; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=40)

    def kill_if_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


def kill_test_environment(kafka_bootstrap: str, name: str) -> dict[str, str]:
    """``ETL_*`` settings of an ETL killed under test: topics ``tickers-<name>``, ``seconds-<name>``,
    ``deadletter-<name>``, group ``etl-<name>``, small quick batches, quick retries and a short session (add
    ``ETL_PORT`` and ``ETL_CLICKHOUSE_URL``)."""
    return {
        "ETL_API_TOKEN_FILE": str(service_token_file()),
        "ETL_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ETL_KAFKA_GROUP_ID": f"etl-{name}",
        "ETL_KAFKA_TOPIC": f"tickers-{name}",
        "ETL_KAFKA_SECOND_TOPIC": f"seconds-{name}",
        "ETL_KAFKA_DEADLETTER_TOPIC": f"deadletter-{name}",
        # Small, quick batches: a kill then often falls between an insert and its commit.
        "ETL_BATCH_MAX_ROWS": "100",
        "ETL_BATCH_MAX_AGE_MS": "50",
        "ETL_RETRY_INITIAL_MS": "50",
        "ETL_RETRY_MAX_MS": "500",
        # A killed member leaves the group only when its session times out.
        "ETL_KAFKA_SESSION_TIMEOUT_MS": "1500",
    }


#: The ETL is killed and started again under these tests: a refused or failed request is "not yet".
wait_for = functools.partial(eventually, interval_s=0.2, tolerate=(aiohttp.ClientError, OSError))


async def produce_tickers(
    bootstrap: str, topic: str, stop: asyncio.Event, sent: list[str], symbols: Sequence[str] = SYMBOLS
) -> None:
    """Write one mini-ticker record per symbol every 20 ms until ``stop``; ``sent`` gets each acknowledged
    id."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        n = 0
        while not stop.is_set():
            batch = [ticker(symbol, n) for symbol in symbols]
            deliveries = [
                await producer.send(topic, key=m["s"].encode(), value=jsonutil.dumps(m)) for m in batch
            ]
            await asyncio.gather(*deliveries)
            sent.extend(m["message_id"] for m in batch)
            n += 1
            await asyncio.sleep(0.02)
    finally:
        await producer.stop()


async def produce_seconds(
    producer: SecondProducer, stop: asyncio.Event, submitted: list[str], symbols: Sequence[str] = SYMBOLS
) -> None:
    """Hand one SecondStat per symbol every 20 ms to the aggregator's producer until ``stop``."""
    n = 0
    while not stop.is_set():
        for symbol in symbols:
            producer.submit(stat(symbol, n))
            submitted.append(second_message_id(symbol, START_MS + n * 1000))
        n += 1
        await asyncio.sleep(0.02)


async def finish_producing(
    stop: asyncio.Event, producers: Sequence[asyncio.Task], seconds: SecondProducer, submitted: Sequence[str]
) -> None:
    """Stop the producer tasks, wait until every SecondStat handed to ``seconds`` is delivered or failed, and
    fail the test unless all were delivered."""
    stop.set()
    await asyncio.gather(*producers)
    await wait_for(
        lambda: seconds.sent + seconds.failed + seconds.dropped == len(submitted), 20, "SecondStat deliveries"
    )
    assert (seconds.failed, seconds.dropped) == (0, 0)


async def stop_producing(
    stop: asyncio.Event, producers: Sequence[asyncio.Task], sender: asyncio.Task, seconds: SecondProducer
) -> None:
    """Whatever happened: stop the producer tasks and the SecondStat producer's ``sender`` task, close it."""
    stop.set()
    await asyncio.gather(*producers, return_exceptions=True)
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    await seconds.close()


async def healthy(port: int) -> bool:
    """The ETL answers ``/healthz`` 200: ClickHouse migrated, consumer in its group."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status == 200


async def counts_reach(port: int, table: str, expected: int) -> bool:
    """``table`` holds at least ``expected`` rows after folding (``FINAL``)."""
    [[count]] = await sql_rows(port, f"SELECT count() FROM {table} FINAL")
    return int(count) >= expected
