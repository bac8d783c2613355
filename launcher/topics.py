"""Reading the mesh's Kafka topics from the command line (``crypto-mesh topics list|tail``).

The embedded broker (Tansu 0.6.0) does not answer Debian's kcat (1.7.1, on librdkafka 2.0.2): ``kcat -L``
fails at its first ApiVersions request ("Read underflow"); a newer librdkafka (confluent-kafka 2.16 bundles
2.16.0) talks to it. These commands need neither: they are aiokafka consumers without a consumer group (they
commit nothing and move no service's offsets).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from crypto_mesh.retry import raise_if_cancelling

T = TypeVar("T")
#: After Ctrl-C, how long a command may take to end by itself before it is cancelled (s).
INTERRUPT_GRACE_S = 5.0


class TopicError(Exception):
    """A topic that does not exist (its message names those that do)."""


@dataclass(frozen=True)
class TopicSummary:
    """One topic: its name, partition count and how many records its partitions hold now."""

    name: str
    partitions: int
    records: int


def _consumer(bootstrap_servers: str, options: Mapping[str, Any] | None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
        **dict(options or {}),
    )


async def list_topics(bootstrap_servers: str, options: Mapping[str, Any] | None = None) -> list[TopicSummary]:
    """Every topic of the broker, by name. Raises ``aiokafka.errors.KafkaError`` if it cannot be reached."""
    consumer = _consumer(bootstrap_servers, options)
    await consumer.start()
    try:
        summaries = []
        for name in sorted(await consumer.topics()):
            partitions = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
            beginning = await consumer.beginning_offsets(partitions) if partitions else {}
            end = await consumer.end_offsets(partitions) if partitions else {}
            records = sum(max(0, end[tp] - beginning.get(tp, 0)) for tp in partitions)
            summaries.append(TopicSummary(name, len(partitions), records))
        return summaries
    finally:
        await consumer.stop()


def format_record(record: ConsumerRecord) -> str:
    """One line of ``topics tail``: ``<UTC time, ms> <partition>:<offset> <key> <value>`` (key and value as
    UTF-8 text, undecodable bytes replaced; ``-`` for no key)."""
    at = datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(timespec="milliseconds")
    key = record.key.decode("utf-8", "replace") if record.key is not None else "-"
    value = record.value.decode("utf-8", "replace") if record.value is not None else ""
    return f"{at.replace('+00:00', 'Z')} {record.partition}:{record.offset} {key} {value}"


async def tail(
    bootstrap_servers: str,
    topic: str,
    last: int,
    follow: bool,
    emit: Callable[[str], None],
    options: Mapping[str, Any] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Emit the ``last`` newest records of ``topic`` (of all its partitions, in timestamp order), then, with
    ``follow``, every new record as it arrives until ``stop`` is set (checked at least every 0.5 s) or the
    call is cancelled. Raises :class:`TopicError` for a topic that
    does not exist, ``aiokafka.errors.KafkaError`` if the broker cannot be reached."""
    consumer = _consumer(bootstrap_servers, options)
    await consumer.start()
    try:
        topics = await consumer.topics()
        if topic not in topics:
            raise TopicError(f"no topic {topic!r}; there are: {', '.join(sorted(topics)) or 'none'}")
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        beginning = await consumer.beginning_offsets(partitions)
        end = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(beginning[tp], end[tp] - last))
        backlog: list[ConsumerRecord] = []
        pending = {tp for tp in partitions if end[tp] > max(beginning[tp], end[tp] - last)}
        while pending:
            raise_if_cancelling()  # a second Ctrl-C cancels; aiokafka may swallow it (crypto_mesh.retry)
            batches = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batches.items():
                backlog += [record for record in records if record.offset < end[tp]]
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
        backlog.sort(key=lambda record: (record.timestamp, record.partition, record.offset))
        for record in backlog[-last:] if last else []:
            emit(format_record(record))
        if not follow:
            return
        for tp in partitions:
            consumer.seek(tp, end[tp])
        while stop is None or not stop.is_set():
            raise_if_cancelling()
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    emit(format_record(record))
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer.stop(), INTERRUPT_GRACE_S)


def run(command: Callable[[asyncio.Event], Awaitable[T]]) -> T | None:
    """Run ``command(stop)`` in a new event loop, for the command line: Ctrl-C (SIGINT) or SIGTERM sets
    ``stop``, which a command that loops checks; a second one, or a command still running
    :data:`INTERRUPT_GRACE_S` later, is cancelled. Returns the command's result, or None when interrupted."""

    async def main() -> T | None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(command(stop))
        loop = asyncio.get_running_loop()

        def interrupt() -> None:
            if stop.is_set():
                task.cancel()
            else:
                stop.set()
                loop.call_later(INTERRUPT_GRACE_S, task.cancel)

        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, interrupt)
        try:
            return await task
        except asyncio.CancelledError:
            return None

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:  # before the handlers were installed
        return None
