"""The Kafka consumer-group loop: KafkaMsg records → batches → ClickHouse → committed offsets.

Delivery is at least once, and duplicates are folded: a batch is inserted, and only once ClickHouse has
acknowledged it are its offsets (last offset + 1 per partition) committed. A redelivered batch carries the
same ``insert_deduplication_token`` (the server drops it) and the same deterministic ``message_id`` values
(ReplacingMergeTree folds them).

While ClickHouse fails, the one bounded batch is retried with exponential backoff and the partitions are
paused, so nothing more is taken from Kafka; the loop keeps polling (paused partitions return nothing) to
stay in the consumer group. Records that are not valid KafkaMsg are skipped in
:meth:`TickerConsumer.skip_invalid`, the one place to change when they go to a dead-letter topic instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.exceptions import Error as ClickHouseError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from crypto_mesh.kafka import ensure_topics
from crypto_mesh.logs import get_logger
from etl.settings import EtlSettings
from etl.store import ClickHouseStore
from etl.tickers import InvalidRecord, TickerRow, decode_record

log = get_logger(__name__)

_KAFKA_ERRORS = (KafkaError, OSError, TimeoutError)
_CLICKHOUSE_ERRORS = (ClickHouseError, OSError)
#: Longest wait in one poll of Kafka when no batch is open (bounds the reaction time to a stop request).
_IDLE_POLL_MS = 250


def backoff(settings: EtlSettings) -> wait_exponential_jitter:
    """Wait between attempts to reach Kafka or ClickHouse: ``ETL_RETRY_INITIAL_MS`` doubling up to
    ``ETL_RETRY_MAX_MS``, plus up to ``ETL_RETRY_INITIAL_MS`` of jitter so that replicas do not retry in
    step."""
    initial_s = settings.retry_initial_ms / 1000
    return wait_exponential_jitter(multiplier=initial_s, jitter=initial_s, max=settings.retry_max_ms / 1000)


@dataclass
class ConsumerStats:
    """Counters since start: rows inserted, invalid records skipped, batches committed, failed insert
    attempts, failed commits."""

    rows_inserted: int = 0
    records_skipped: int = 0
    batches_committed: int = 0
    insert_failures: int = 0
    commit_failures: int = 0


@dataclass
class Batch:
    """Records taken from Kafka and not yet committed, per partition.

    ``size`` counts every record taken (valid or skipped) and is bounded by ``ETL_BATCH_MAX_ROWS``;
    ``first_offset``/``last_offset`` cover skipped records too, so committing moves past them.
    """

    rows: dict[TopicPartition, list[TickerRow]] = field(default_factory=dict)
    first_offset: dict[TopicPartition, int] = field(default_factory=dict)
    last_offset: dict[TopicPartition, int] = field(default_factory=dict)
    size: int = 0
    opened_at: float = 0.0

    def take(self, tp: TopicPartition, offset: int, row: TickerRow | None) -> None:
        """Add the record at ``offset`` of ``tp``; ``row`` is None for a skipped record."""
        if self.size == 0:
            self.opened_at = time.monotonic()
        self.size += 1
        self.first_offset.setdefault(tp, offset)
        self.last_offset[tp] = offset
        if row is not None:
            self.rows.setdefault(tp, []).append(row)

    def age_ms(self) -> float:
        return (time.monotonic() - self.opened_at) * 1000 if self.size else 0.0

    def deduplication_token(self, tp: TopicPartition) -> str:
        """``<topic>:<partition>:<first offset>-<last offset>:<digest of the message ids>``.

        The offsets name the run of records; the digest keeps the token from matching a different run that
        reuses those offsets (a topic recreated on a broker with memory storage starts again at 0).
        """
        digest = hashlib.blake2b(digest_size=8)
        for row in self.rows.get(tp, ()):
            digest.update(row.message_id.encode())
        return (
            f"{tp.topic}:{tp.partition}:{self.first_offset[tp]}-{self.last_offset[tp]}:{digest.hexdigest()}"
        )

    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Offsets to commit: the next record to read in each partition (last offset + 1)."""
        return {tp: offset + 1 for tp, offset in self.last_offset.items()}


class TickerConsumer:
    """Consumes ``settings.kafka_topic`` in group ``settings.kafka_group_id`` into ``store`` until stopped.

    :meth:`run` is the loop (run it as a task once ClickHouse is migrated); :meth:`stop` asks it to flush the
    open batch, commit and leave the group. ``kafka_ready`` is True while the consumer is started (and
    ``kafka_ever_ready`` once it has been); ``clickhouse_failing`` while an insert is being retried.
    """

    def __init__(self, settings: EtlSettings, store: ClickHouseStore) -> None:
        self._settings = settings
        self._store = store
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self.stats = ConsumerStats()
        self.kafka_ready = False
        self.kafka_ever_ready = False
        self.clickhouse_failing = False

    def _retrying(self, errors: tuple[type[BaseException], ...], before_sleep) -> AsyncRetrying:
        """Retry on ``errors`` with :func:`backoff` until success or a stop request (then ``RetryError``)."""
        return AsyncRetrying(
            wait=backoff(self._settings),
            retry=retry_if_exception_type(errors),
            stop=lambda _state: self._stopping.is_set(),
            sleep=self._sleep,
            before_sleep=before_sleep,
        )

    async def _sleep(self, seconds: float) -> None:
        """Backoff pause that ends early on stop; while a consumer is running, it polls with every partition
        paused, so the group still sees this member alive and no record is fetched."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            if self._consumer is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), left)
                continue
            self._consumer.pause(*self._consumer.assignment())
            polled = await self._consumer.getmany(timeout_ms=int(min(left, _IDLE_POLL_MS / 1000) * 1000))
            # Partitions assigned during the pause were not paused yet: put their records back.
            for tp, records in polled.items():
                self._consumer.seek(tp, records[0].offset)

    async def run(self) -> None:
        """Connect to Kafka (retrying until it is up), then consume until :meth:`stop`.

        If the consumer fails with a Kafka error, it is closed and a new one joins the group: the open batch
        was not committed, so the new consumer reads it again from the committed offsets.
        """
        while not self._stopping.is_set():
            try:
                async for attempt in self._retrying(_KAFKA_ERRORS, self._log_kafka_retry):
                    with attempt:
                        consumer = await self._start_consumer()
            except RetryError:
                return  # stopped before Kafka came up
            try:
                await self._consume(consumer)
            except KafkaError as exc:
                log.warning("kafka consumer failed; rejoining the group", error=repr(exc))
            finally:
                self.kafka_ready = False
                self._consumer = None
                await consumer.stop()
            await self._sleep(self._settings.retry_initial_ms / 1000)  # no busy loop if Kafka keeps failing

    async def _start_consumer(self) -> AIOKafkaConsumer:
        settings = self._settings
        await ensure_topics(
            settings.kafka_bootstrap_servers, {settings.kafka_topic: settings.kafka_topic_partitions}
        )
        consumer = AIOKafkaConsumer(
            settings.kafka_topic,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=settings.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_session_timeout_ms // 3,
        )
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self.kafka_ready = self.kafka_ever_ready = True
        log.info("consuming", topic=settings.kafka_topic, group=settings.kafka_group_id)
        return consumer

    def _log_kafka_retry(self, state: RetryCallState) -> None:
        log.warning(
            "kafka not reachable, retrying",
            attempt=state.attempt_number,
            retry_in_s=round(state.upcoming_sleep, 2),
            error=repr(state.outcome.exception()),
        )

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        max_rows, max_age_ms = self._settings.batch_max_rows, self._settings.batch_max_age_ms
        batch = Batch()
        while not self._stopping.is_set():
            timeout_ms = min(max_age_ms - batch.age_ms(), _IDLE_POLL_MS) if batch.size else _IDLE_POLL_MS
            polled = await consumer.getmany(
                timeout_ms=max(0, int(timeout_ms)), max_records=max_rows - batch.size
            )
            for tp, records in polled.items():
                for record in records:
                    batch.take(tp, record.offset, self._decode(record))
            if batch.size and (batch.size >= max_rows or batch.age_ms() >= max_age_ms):
                if not await self._flush(consumer, batch):
                    return
                batch = Batch()
        if batch.size:
            await self._flush(consumer, batch)

    def _decode(self, record: ConsumerRecord) -> TickerRow | None:
        try:
            return decode_record(record.value)
        except InvalidRecord as exc:
            self.skip_invalid(record, exc)
            return None

    def skip_invalid(self, record: ConsumerRecord, error: InvalidRecord) -> None:
        """Log and count a record that is not a valid KafkaMsg; the batch moves on without it."""
        self.stats.records_skipped += 1
        log.warning(
            "invalid record skipped",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=str(error),
        )

    async def _flush(self, consumer: AIOKafkaConsumer, batch: Batch) -> bool:
        """Insert the batch (retrying while ClickHouse fails), then commit its offsets.

        Returns False if a stop request came while ClickHouse was failing: the batch is left uncommitted and
        Kafka redelivers it to the next consumer of the group.
        """
        try:
            async for attempt in self._retrying(_CLICKHOUSE_ERRORS, self._log_insert_retry):
                with attempt:
                    for tp, rows in batch.rows.items():
                        await self._store.insert_tickers(rows, batch.deduplication_token(tp))
        except RetryError:
            log.warning("stopping with an uninserted batch; Kafka will redeliver it", records=batch.size)
            return False
        finally:
            consumer.resume(*consumer.paused())
        self.clickhouse_failing = False
        self.stats.rows_inserted += sum(len(rows) for rows in batch.rows.values())
        offsets = batch.commit_offsets()
        try:
            await consumer.commit(offsets)
        except (KafkaError, OSError) as exc:
            # The rows are in ClickHouse; a redelivery after this failure is folded by message_id.
            self.stats.commit_failures += 1
            log.warning(
                "offset commit failed", error=repr(exc), offsets={str(tp): o for tp, o in offsets.items()}
            )
            return True
        self.stats.batches_committed += 1
        log.debug("batch committed", records=batch.size, offsets={str(tp): o for tp, o in offsets.items()})
        return True

    def _log_insert_retry(self, state: RetryCallState) -> None:
        self.clickhouse_failing = True
        self.stats.insert_failures += 1
        log.warning(
            "clickhouse insert failed, retrying the batch with partitions paused",
            attempt=state.attempt_number,
            retry_in_s=round(state.upcoming_sleep, 2),
            error=repr(state.outcome.exception()),
        )

    async def stop(self) -> None:
        """Ask :meth:`run` to flush its batch, commit and return (await the task to wait for it)."""
        self._stopping.set()
