"""Kafka helpers shared by the tests: write records, read a consumer group's committed offset."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


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
