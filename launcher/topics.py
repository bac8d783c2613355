"""Reading the mesh's Kafka topics from the command line (``crypto-mesh topics list|tail``).

The embedded broker (Tansu 0.6.0) answers aiokafka but not librdkafka: ``kcat -L`` fails at its first
ApiVersions request ("Read underflow"), so kcat and confluent-kafka cannot be used on it; these commands are
aiokafka consumers without a consumer group (they commit nothing and move no service's offsets).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


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
) -> None:
    """Emit the ``last`` newest records of ``topic`` (of all its partitions, in timestamp order), then, with
    ``follow``, every new record as it arrives until cancelled. Raises :class:`TopicError` for a topic that
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
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    emit(format_record(record))
    finally:
        await consumer.stop()


def run(coroutine) -> Any:
    """``asyncio.run`` for the command line: Ctrl-C ends the command quietly."""
    try:
        return asyncio.run(coroutine)
    except KeyboardInterrupt:
        return None
