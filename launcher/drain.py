"""Draining the embedded broker before it stops: Tansu keeps records in memory only, so what the ETL has not
loaded when it exits is gone.

``crypto-mesh up`` stops its producers first (:mod:`launcher.supervisor`'s stages); then, before the ETL is
stopped, :func:`wait_until_consumed` waits until the ETL's consumer group has committed every record of its
topics (the ETL commits a batch once ClickHouse holds it), so the ETL's own stop (which loads and commits its
open batch) finds nothing left behind, and the broker stops last.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from crypto_mesh.retry import raise_if_cancelling


def lag(
    beginning: Mapping[TopicPartition, int],
    end: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int | None],
) -> int:
    """Records of the partitions of ``end`` not yet committed: ``end - committed`` per partition, counting
    from ``beginning`` (the oldest offset held) where the group has committed nothing (None or negative)."""
    total = 0
    for partition, last in end.items():
        done = committed.get(partition)
        start = beginning.get(partition, 0)
        total += max(0, last - (done if done is not None and done >= start else start))
    return total


async def consumer_lag(
    bootstrap_servers: str,
    group_id: str,
    topics: Sequence[str],
    client_options: Mapping[str, Any] | None = None,
) -> int:
    """The :func:`lag` of consumer group ``group_id`` over ``topics`` (a topic that does not exist counts 0).
    Raises ``aiokafka.errors.KafkaError`` or ``OSError`` if the broker cannot be asked."""
    async with _LagReader(bootstrap_servers, client_options) as reader:
        return await reader.lag(group_id, topics)


class _LagReader:
    """A consumer (offsets) and an admin client (a group's commits) of one broker, started once for as many
    :meth:`lag` questions as the caller asks."""

    def __init__(self, bootstrap_servers: str, client_options: Mapping[str, Any] | None = None) -> None:
        options = dict(client_options or {})
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **options
        )
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **options)

    async def __aenter__(self) -> _LagReader:
        await self._consumer.start()
        try:
            await self._admin.start()
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(self, *_exc) -> None:
        try:
            await self._admin.close()
        finally:
            await self._consumer.stop()

    async def lag(self, group_id: str, topics: Sequence[str]) -> int:
        """:func:`consumer_lag` on the started clients."""
        consumer = self._consumer
        existing = await consumer.topics()
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            if topic in existing
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return 0
        beginning = await consumer.beginning_offsets(partitions)
        end = await consumer.end_offsets(partitions)
        offsets = await self._admin.list_consumer_group_offsets(group_id, partitions=partitions)
        committed = {tp: meta.offset for tp, meta in offsets.items()}
        return lag(beginning, end, committed)


async def wait_until_consumed(
    bootstrap_servers: str,
    group_id: str,
    topics: Sequence[str],
    report: Callable[[str], None],
    timeout_s: float = 60.0,
    interval_s: float = 0.2,
) -> bool:
    """Wait until group ``group_id`` has committed every record of ``topics`` (:func:`consumer_lag` is 0), at
    most ``timeout_s`` seconds; ``report`` gets a line when it has to wait, and one at the end (``the ETL has
    loaded every record the broker holds`` once drained). Returns True once drained, False on time-out or when
    the broker cannot be asked (then the records left are lost with it)."""
    deadline = time.monotonic() + timeout_s
    waiting_for: int | None = None
    try:
        # The clients are started once for the whole wait, not once per question.
        async with _LagReader(bootstrap_servers) as reader:
            while True:
                raise_if_cancelling()  # aiokafka may swallow a cancel (crypto_mesh.retry)
                left = await reader.lag(group_id, topics)
                if left == 0:
                    held = f" (it had {waiting_for} left to load)" if waiting_for else ""
                    report(f"the ETL has loaded every record the broker holds{held}")
                    return True
                if waiting_for is None:
                    waiting_for = left
                    report(f"waiting for the ETL to load the {left} records still in the broker")
                if time.monotonic() >= deadline:
                    report(
                        f"the ETL has not loaded {left} records within {timeout_s:.0f}s: they are lost with "
                        "the broker"
                    )
                    return False
                await asyncio.sleep(interval_s)
    except (KafkaError, OSError) as error:
        report(f"cannot ask the broker what the ETL has loaded ({type(error).__name__}: {error})")
        return False
