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
import uuid
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer
from support.polling import eventually
from support.etl import sql_rows

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
    """The ``n``-th mini-ticker KafkaMsg of ``symbol`` (one per second from :data:`START_MS`), its
    ``message_id`` deterministic as the socket_proxy makes it."""
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
