"""The follow topic and the aggregators' consumer group over it (aiokafka): how replicas share the symbols.

Topic ``AGGREGATOR_FOLLOW_TOPIC`` (default ``aggregator.follows``), ``cleanup.policy=compact``,
``AGGREGATOR_FOLLOW_PARTITIONS`` partitions. Record: key = symbol (lowercase, UTF-8); value = its follower
count as ASCII digits, or no value (a tombstone) once it has none. The replica that handles a follower change
writes it to Redis first, then sends the notice (:class:`FollowNotices`), so a notice is never older than what
Redis holds; a notice lost on the way is made up for by each owner's periodic resync with Redis. A notice says
only *that* a symbol changed: the owner reads the symbol's followers from Redis again (the source of truth), so
notices sent by two replicas in the other order than their Redis writes still end in the right state.

Every replica is a member of consumer group ``AGGREGATOR_GROUP_ID`` over the topic (:class:`FollowGroup`). The
group's partition assignment decides which replica owns which symbols (:mod:`aggregator.ownership`): on each
assignment the member seeks its partitions to their end *before* it reads the followed symbols from Redis, so a
change is either in what it read or in a notice after that position (the notice follows the Redis write).
Offsets are never committed (the position after an assignment is always the end). A member that dies is out
of the group once ``AGGREGATOR_GROUP_SESSION_TIMEOUT_MS`` pass without its heartbeat; the others are then
assigned its partitions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from aggregator.store import KafkaSink
from crypto_mesh.kafka import ensure_topics, group_consumer
from crypto_mesh.logs import get_logger
from crypto_mesh.retry import Backoff, raise_if_cancelling, retrying

log = get_logger(__name__)

_KAFKA_ERRORS = (KafkaError, OSError, TimeoutError)
#: Longest wait of one poll for notices (ms): bounds how late an owner starts a symbol followed elsewhere.
_POLL_MS = 200
#: The follow topic's configuration: only the latest notice of each symbol need be kept.
FOLLOW_TOPIC_CONFIG = {"cleanup.policy": "compact"}


def notice_value(count: int) -> bytes | None:
    """A notice's value: ``count`` as ASCII digits, ``None`` (a tombstone) for 0."""
    return str(count).encode() if count > 0 else None


class FollowNotices(KafkaSink[tuple[str, int]]):
    """Sends follow notices (module doc) to ``topic`` (created compacted with ``partitions`` partitions)
    through the bounded, never-blocking buffer of :class:`aggregator.store.KafkaSink`: :meth:`notify` returns
    at once, so a follower change never waits for Kafka, as it never did. A failed delivery is sent again
    (counted in ``failed``); a notice dropped from the full buffer (``dropped``), or lost with a stopping
    replica, is made up for by the owner's periodic resync with Redis (``AGGREGATOR_FOLLOW_RESYNC_S``)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partitions: int,
        enable_idempotence: bool,
        maxsize: int = 10_000,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            bootstrap_servers,
            enable_idempotence,
            topic=topic,
            partitions=partitions,
            encode=lambda notice: (notice[0].encode(), notice_value(notice[1])),
            maxsize=maxsize,
            client_options=client_options,
            topic_config=FOLLOW_TOPIC_CONFIG,
        )

    def notify(self, counts: Mapping[str, int]) -> None:
        """Queue one notice per symbol of ``counts`` (symbol → its follower count now); returns at once."""
        for notice in counts.items():
            self.submit(notice)


class _Listener(ConsumerRebalanceListener):
    """Hands each assignment of the follow topic's partitions to ``on_assigned`` once the partitions are
    positioned at their end (module doc). Revocations change nothing: the streams of partitions not assigned
    again are stopped by the next assignment (:mod:`aggregator.ownership`)."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        on_assigned: Callable[[frozenset[int], int | None], Awaitable[None]],
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        log.info("follow_partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        mine = [tp for tp in assigned if tp.topic == self._topic]
        if mine:
            try:
                end = await self._consumer.end_offsets(mine)
            except _KAFKA_ERRORS as exc:
                # Without a committed offset the partitions are read from their beginning: every notice
                # again, each a Redis read of its symbol, which is more work and the same outcome.
                log.warning("follow_partitions_end_unknown", error=f"{type(exc).__name__}: {exc}")
            else:
                for tp in mine:
                    self._consumer.seek(tp, end[tp])
        partitions = frozenset(tp.partition for tp in mine)
        count = len(self._consumer.partitions_for_topic(self._topic) or ()) or None
        log.info("follow_partitions_assigned", partitions=sorted(partitions), of=count)
        await self._on_assigned(partitions, count)


class FollowGroup:
    """This replica's membership of the consumer group ``group_id`` over the follow ``topic``.

    :meth:`run` (a task; cancel it to stop) joins the group and calls ``on_assigned(partitions, count)`` at
    each assignment (after positioning the partitions at their end; ``count``: the topic's partitions as the
    broker has them, ``None`` if unknown), then ``on_notice(symbols)`` with the symbols of
    the notices that follow (distinct, in order). A Kafka failure restarts the consumer after a backoff pause;
    the streams already started keep running meanwhile. ``session_timeout_ms``: how long the group waits for a
    silent member before reassigning its partitions; ``partitions``: of the topic, if this member creates it;
    ``client_options`` authenticate the client."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        session_timeout_ms: int,
        on_assigned: Callable[[frozenset[int], int | None], Awaitable[None]],
        on_notice: Callable[[list[str]], Awaitable[None]],
        partitions: int,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self._partitions = partitions
        self.group_id = group_id
        self._bootstrap = bootstrap_servers
        self._session_timeout_ms = session_timeout_ms
        self._on_assigned = on_assigned
        self._on_notice = on_notice
        self._client_options = dict(client_options or {})
        self.notices = 0
        self.restarts = 0

    async def run(self) -> None:
        """Be a member until cancelled (class doc)."""
        backoff = Backoff(0.2, 10.0)
        while True:
            raise_if_cancelling()
            async for attempt in retrying(
                "follow_group_connect_retrying", retry_on=_KAFKA_ERRORS, max_s=10.0, group=self.group_id
            ):
                with attempt:
                    consumer = await self._start_consumer()
            try:
                await self._consume(consumer, backoff)
            except KafkaError as exc:
                raise_if_cancelling()
                self.restarts += 1
                log.warning("follow_group_restarting", error=f"{type(exc).__name__}: {exc}")
            finally:
                await consumer.stop()
            await asyncio.sleep(backoff.next_delay())

    async def _start_consumer(self) -> AIOKafkaConsumer:
        # Created here too (as the notices' producer does), so that joining never waits for the producer.
        await ensure_topics(
            self._bootstrap,
            {self.topic: self._partitions},
            client_options=self._client_options,
            configs={self.topic: FOLLOW_TOPIC_CONFIG},
        )
        consumer = group_consumer(
            self._bootstrap,
            self.group_id,
            self._session_timeout_ms,
            self._client_options,
            fetch_max_wait_ms=_POLL_MS,
        )
        await consumer.start()
        try:
            # A topic created after the subscription is seen only at the next metadata refresh (5 min).
            if self.topic not in await consumer.topics():
                raise UnknownTopicOrPartitionError(f"topic {self.topic} does not exist yet")
        except BaseException:
            await consumer.stop()
            raise
        consumer.subscribe([self.topic], listener=_Listener(consumer, self.topic, self._on_assigned))
        log.info("follow_group_joining", topic=self.topic, group=self.group_id)
        return consumer

    async def _consume(self, consumer: AIOKafkaConsumer, backoff: Backoff) -> None:
        while True:
            # A cancellation a library swallowed (in a poll, a store call) still ends the loop.
            raise_if_cancelling()
            batches = await consumer.getmany(timeout_ms=_POLL_MS)
            backoff.reset()
            symbols: dict[str, None] = {}
            for records in batches.values():
                for record in records:
                    if record.key:
                        symbols[record.key.decode("utf-8", "replace")] = None
            if symbols:
                self.notices += len(symbols)
                await self._on_notice(list(symbols))
