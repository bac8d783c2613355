"""Every SecondStat to Kafka topic ``binance.second``, for the analytical path (ETL → ``crypto.price_seconds``).

Record: key = symbol (lowercase, UTF-8); value = the SecondStat JSON of docs/CONTRACTS.md ("Redis") plus
``message_id`` = ``uuid5(NAMESPACE_URL, "binance.second/<symbol>/<t>")``, so a record delivered twice (a
producer retry, an ETL redelivery) is recognisable as the same record::

    {"message_id": "…", "s": "btcusdt", "t": 1723161255000, "p": "61837.63", "o": "61830.00", "h": "61840.10",
     "l": "61829.99", "v": "1.23400000", "q": "76300.12", "n": 42, "vwap": "61831.1", "i": 3735683259}

:class:`SecondProducer` never blocks the real-time path: :meth:`SecondProducer.submit` appends to a bounded
buffer (the oldest record is dropped and counted when it is full, as for mini-tickers), and a background
task connects with backoff and sends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil
from crypto_mesh.backoff import Backoff
from crypto_mesh.kafka import SECOND_TOPIC, ensure_topics
from crypto_mesh.logs import get_logger

log = get_logger(__name__)

#: Partitions of ``binance.second`` when the aggregator creates it; the records of a symbol share one.
SECOND_PARTITIONS = 3


def second_message_id(symbol: str, second_ms: int) -> str:
    """``uuid5(NAMESPACE_URL, "binance.second/<symbol>/<second_ms>")``: one id per symbol and second."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{SECOND_TOPIC}/{symbol}/{second_ms}"))


def second_record(stat: SecondStat) -> dict[str, Any]:
    """The ``binance.second`` value of ``stat`` (decimals stay ``Decimal``; encode with
    :func:`crypto_mesh.jsonutil.dumps`)."""
    return {"message_id": second_message_id(stat.symbol, stat.second_ms), **stat.to_json()}


class SecondProducer:
    """Writes SecondStats to ``topic`` (default ``binance.second``; key = symbol) from a bounded buffer of
    ``maxsize`` stats.

    :meth:`submit` returns at once. :meth:`run` (a background task; cancel to stop) creates the topic and
    starts the producer, retrying with backoff until Kafka is reachable, then sends in order. Producer:
    ``acks=all``, ``enable_idempotence`` as configured, ``linger_ms=20``. Counters: ``sent`` (acknowledged),
    ``failed`` (given up by aiokafka after its retries), ``dropped`` (pushed out of a full buffer);
    ``healthy`` is None until the first connection, then whether the last delivery worked.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        enable_idempotence: bool,
        maxsize: int = 10_000,
        topic: str = SECOND_TOPIC,
    ) -> None:
        self.topic = topic
        self._bootstrap = bootstrap_servers
        self._idempotence = enable_idempotence
        self._queue: deque[SecondStat] = deque(maxlen=maxsize)
        self._wakeup = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.healthy: bool | None = None

    def submit(self, stat: SecondStat) -> None:
        """Queue ``stat``; returns at once."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(stat)
        self._wakeup.set()

    def pending(self) -> int:
        """Stats waiting in the buffer."""
        return len(self._queue)

    async def run(self) -> None:
        """Connect (with backoff), then send forever (cancel to stop)."""
        self._producer = await self._connect()
        self.healthy = True
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            stat = self._queue.popleft()
            try:
                delivery = await self._producer.send(
                    self.topic, key=stat.symbol.encode(), value=jsonutil.dumps(second_record(stat))
                )
            except KafkaError as exc:
                self._on_failure(exc)
                continue
            delivery.add_done_callback(self._on_delivery)

    async def flush(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds for the buffer to be handed to the producer (used at stop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._queue and self._producer is not None and loop.time() < deadline:
            await asyncio.sleep(0.02)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what the producer holds (up to ``timeout_s`` seconds) and stop it."""
        if self._producer is None:
            return
        try:
            await asyncio.wait_for(self._producer.stop(), timeout_s)
        except (TimeoutError, KafkaError) as exc:
            log.warning("kafka producer of SecondStats did not stop cleanly", error=str(exc))
        self._producer = None

    async def _connect(self) -> AIOKafkaProducer:
        backoff = Backoff(base_s=0.2, max_s=10.0)
        while True:
            try:
                await ensure_topics(self._bootstrap, {self.topic: SECOND_PARTITIONS})
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    acks="all",
                    enable_idempotence=self._idempotence,
                    linger_ms=20,
                )
                try:
                    await producer.start()
                except BaseException:
                    # Also on cancellation (stop during start): a half-started producer holds connections.
                    await producer.stop()
                    raise
                log.info("kafka producer started", topic=self.topic)
                return producer
            except (KafkaError, OSError) as exc:
                self.healthy = False
                log.warning("kafka not reachable; retrying", topic=self.topic, error=str(exc))
                await asyncio.sleep(backoff.next_delay())

    def _on_delivery(self, delivery: asyncio.Future) -> None:
        if delivery.cancelled():
            self.failed += 1
        elif delivery.exception() is not None:
            self._on_failure(delivery.exception())
        else:
            self.sent += 1
            self.healthy = True

    def _on_failure(self, exc: BaseException) -> None:
        self.failed += 1
        if self.healthy:
            log.warning("kafka delivery of a SecondStat failed", error=str(exc))
        self.healthy = False


def fan_out(*emits):
    """One emit callback that calls each of ``emits`` in turn (each must not block), e.g. the Redis
    publisher's and this producer's ``submit`` for :class:`aggregator.intake.TradeIntake`."""

    def emit(stat: SecondStat) -> None:
        for each in emits:
            each(stat)

    return emit
