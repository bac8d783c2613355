"""Kafka helpers shared by the tests: write records, read a consumer group's committed offset."""

from __future__ import annotations

import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from crypto_mesh.kafka import ensure_topics


async def produce_records(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> None:
    """Write ``(key, value)`` records to ``topic`` in order, each acknowledged (acks=all) before the next.

    Not idempotent: Tansu's memory storage refuses InitProducerId.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, key=key, value=value)
    finally:
        await producer.stop()


async def committed_offset(bootstrap: str, group: str, topic: str, partition: int = 0) -> int | None:
    """The group's committed offset of ``topic``/``partition``, read by a second consumer of the group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, partition))
    finally:
        await consumer.stop()


class TopicTail:
    """The records of ``topic`` (``partitions`` partitions, created if missing) written after :meth:`start`,
    read without a consumer group: the session's broker holds every earlier test's records, and reading them
    all, or joining a group, takes long on a loaded machine. ``async with TopicTail(...) as tail``."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def __aenter__(self) -> TopicTail:
        await ensure_topics(self.bootstrap, {self.topic: self.partitions})
        await self._consumer.start()
        partitions = [TopicPartition(self.topic, partition) for partition in range(self.partitions)]
        self._consumer.assign(partitions)
        for partition, end in (await self._consumer.end_offsets(partitions)).items():
            self._consumer.seek(partition, end)
        return self

    async def __aexit__(self, *_exc) -> None:
        await self._consumer.stop()

    async def records(self, keys: set[bytes], count: int, timeout_s: float = 30.0) -> list:
        """The records whose key is in ``keys``, read until ``count`` of them came or ``timeout_s`` passed
        (fewer then: the test compares what it got)."""
        found: list = []
        deadline = time.monotonic() + timeout_s
        while len(found) < count and time.monotonic() < deadline:
            batches = await self._consumer.getmany(timeout_ms=500)
            found += [record for records in batches.values() for record in records if record.key in keys]
        return found
