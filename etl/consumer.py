"""The Kafka consumer-group loop: records of ``binance.miniticker`` and ``binance.second`` → one batch per
topic → ClickHouse → committed offsets.

Delivery is at least once, and duplicates are folded: a batch is inserted, and only once ClickHouse has
acknowledged it (and the dead-letter topic has acknowledged the batch's undecodable records) are its offsets
(last offset + 1 per partition) committed. A redelivered batch carries the same ``insert_deduplication_token``
(the server drops it), and every row carries a deterministic ``message_id`` that the ReplacingMergeTree
tables fold, which also covers a redelivery cut into different batches (docs/ANALYTICS.md, "Exactly once").

Each topic has one open batch, closed by size (``ETL_BATCH_MAX_ROWS`` records) or age
(``ETL_BATCH_MAX_AGE_MS``); no poll takes more records than the fullest batch has room for. Records are
decoded as they are polled, a whole poll at a time (:mod:`etl.columnar`). A closed batch is inserted on the
store's thread while the loop fills the next one (one insert in flight at a time, committed in order), so
at most the open batches and the one being inserted are held: three batches with two topics. If that insert
fails, the open batches are given back to Kafka (their partitions sought back to their first records), and
the failing batch, alone, is retried with exponential backoff and every partition paused, so nothing more
is taken from Kafka while ClickHouse (or the dead-letter topic) fails; the loop keeps polling (paused
partitions return nothing) to stay in the consumer group. A record that cannot be decoded goes to the
dead-letter topic with the reason (:mod:`etl.deadletter`) and the batch moves on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass, field

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.exceptions import Error as ClickHouseError
from tenacity import AsyncRetrying

from crypto_mesh import retry
from crypto_mesh.kafka import ensure_topics
from crypto_mesh.logs import get_logger
from etl.columnar import decode_values
from etl.deadletter import DeadLetter, dead_letter
from etl.records import TableSpec
from etl.seconds import SECONDS
from etl.settings import EtlSettings
from etl.store import ClickHouseStore
from etl.tickers import TICKERS

log = get_logger(__name__)

_KAFKA_ERRORS = (KafkaError, OSError, TimeoutError)
_CLICKHOUSE_ERRORS = (ClickHouseError, OSError)
#: Longest wait in one poll of Kafka when no batch is open (bounds the reaction time to a stop request).
_IDLE_POLL_MS = 250
#: Bytes fetched per partition per request (aiokafka's default: 1 MiB, about 3,500 SecondStat records): larger
#: fetches mean fewer round trips and fewer, larger columnar decodes; in benchmarks/bench_etl.py, 8 MiB
#: took the ETL from 41 % to 50-56 % of the direct-insert ceiling.
_MAX_PARTITION_FETCH_BYTES = 8 * 1024 * 1024
#: Longest wait in one poll while an insert is in flight (bounds the delay before its batch is committed).
_INSERTING_POLL_MS = 10


def table_specs(settings: EtlSettings) -> dict[str, TableSpec]:
    """Topic → the table its records are loaded into."""
    return {settings.kafka_topic: TICKERS, settings.kafka_second_topic: SECONDS}


@dataclass
class ConsumerStats:
    """Counters since start: rows inserted, records sent to the dead-letter topic, batches committed, failed
    insert attempts, failed dead-letter sends, failed commits; ``records_held``: records taken from Kafka and
    not yet committed (now), ``max_records_held``: the most ever held at once."""

    rows_inserted: int = 0
    records_dead_lettered: int = 0
    batches_committed: int = 0
    insert_failures: int = 0
    deadletter_failures: int = 0
    commit_failures: int = 0
    records_held: int = 0
    max_records_held: int = 0


@dataclass
class Batch:
    """Records of one topic taken from Kafka and not yet committed, decoded as they arrive.

    ``size`` counts every record taken (loaded or dead-lettered) and is bounded by ``ETL_BATCH_MAX_ROWS``;
    ``first_offset``/``last_offset`` (per partition) cover dead-lettered records too, so committing moves
    past them. :meth:`seal` makes the one table and the deduplication token that every insert attempt of
    the batch sends.
    """

    spec: TableSpec
    tables: list[pa.Table] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    first_offset: dict[TopicPartition, int] = field(default_factory=dict)
    last_offset: dict[TopicPartition, int] = field(default_factory=dict)
    size: int = 0
    rows: int = 0
    opened_at: float = 0.0
    sealed: tuple[pa.Table, str] | None = None
    inserted: bool = False
    dead_letters_sent: bool = False

    def take(self, polled: list[tuple[TopicPartition, list[ConsumerRecord]]]) -> None:
        """Decode the records of one poll (per partition, consecutive) into the batch, all partitions in
        one columnar run (:func:`etl.columnar.decode_values`); the records that cannot be decoded become
        :attr:`dead_letters`."""
        records: list[ConsumerRecord] = []
        for tp, part in polled:
            if part:
                self.first_offset.setdefault(tp, part[0].offset)
                self.last_offset[tp] = part[-1].offset
                records.extend(part)
        if not records:
            return
        if self.size == 0:
            self.opened_at = time.monotonic()
        self.size += len(records)
        run = decode_values(self.spec, [record.value for record in records])
        if run.table is not None:
            self.tables.append(run.table)
            self.rows += run.table.num_rows
        for index, reason in run.invalid:
            record = records[index]
            self.dead_letters.append(dead_letter(record, reason))
            log.warning(
                "record_dead_lettered",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                reason=reason,
            )

    def age_ms(self) -> float:
        return (time.monotonic() - self.opened_at) * 1000 if self.size else 0.0

    def seal(self) -> tuple[pa.Table, str]:
        """(the batch's rows as one table, its deduplication token); the same on every call."""
        if self.sealed is None:
            if self.tables:
                table = pa.concat_tables(self.tables)
            else:
                table = pa.schema(list(zip(self.spec.columns, self.spec.arrow_types))).empty_table()
            self.tables = [table]
            self.sealed = (table, self._deduplication_token(table))
        return self.sealed

    def _deduplication_token(self, table: pa.Table) -> str:
        """``<topic>:<partition>:<first offset>-<last offset>[,<partition>:...]:<digest of the message ids>``,
        partitions in order.

        The offsets name the runs of records; the digest keeps the token from matching a different run that
        reuses those offsets (a topic recreated on a broker with memory storage starts again at 0).
        """
        digest = hashlib.blake2b(digest_size=8)
        digest.update("".join(table.column("message_id").to_pylist()).encode())
        runs = ",".join(
            f"{tp.partition}:{self.first_offset[tp]}-{self.last_offset[tp]}"
            for tp in sorted(self.first_offset, key=lambda tp: tp.partition)
        )
        topic = next(iter(self.first_offset)).topic
        return f"{topic}:{runs}:{digest.hexdigest()}"

    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Offsets to commit: the next record to read in each partition (last offset + 1)."""
        return {tp: offset + 1 for tp, offset in self.last_offset.items()}


@dataclass
class _Insert:
    """A sealed batch whose first insert attempt runs on the store's thread while the loop goes on."""

    batch: Batch
    task: asyncio.Task[None]


class TickerConsumer:
    """Consumes the mini-ticker and SecondStat topics in group ``settings.kafka_group_id`` into ``store``
    until stopped.

    :meth:`run` is the loop (run it as a task once ClickHouse is migrated); :meth:`stop` asks it to flush the
    open batches, commit and leave the group; :meth:`retrying` retries a call to Kafka or ClickHouse until
    that stop request. ``kafka_ready`` is True while the consumer is started (and
    ``kafka_ever_ready`` once it has been); ``clickhouse_failing`` while an insert is being retried.
    """

    def __init__(self, settings: EtlSettings, store: ClickHouseStore) -> None:
        self._settings = settings
        self._store = store
        self._specs = table_specs(settings)
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.stats = ConsumerStats()
        self.kafka_ready = False
        self.kafka_ever_ready = False
        self.clickhouse_failing = False

    def retrying(self, event: str, errors: tuple[type[BaseException], ...]) -> AsyncRetrying:
        """Retry a call on ``errors`` until it succeeds or :meth:`stop` is asked (then the last error is
        raised again), logging ``event`` before each pause (:func:`crypto_mesh.retry.retrying`).

        Pauses are the mesh's full-jitter backoff: uniform in ``[0, cap]``, the cap starting at
        ``ETL_RETRY_INITIAL_MS`` and doubling after each failure up to ``ETL_RETRY_MAX_MS``, so that replicas
        do not retry in step; see :meth:`_sleep` for what a pause does.
        """
        max_s = self._settings.retry_max_ms / 1000
        return retry.retrying(
            event,
            retry_on=errors,
            base_s=min(self._settings.retry_initial_ms / 1000, max_s),
            max_s=max_s,
            stop_when=self._stopping.is_set,
            sleep=self._sleep,
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

        If the consumer fails with a Kafka error, it is closed and a new one joins the group: the open batches
        were not committed, so the new consumer reads them again from the committed offsets.
        """
        while not self._stopping.is_set():
            try:
                async for attempt in self.retrying("kafka_connect_retrying", _KAFKA_ERRORS):
                    with attempt:
                        consumer = await self._start_consumer()
            except _KAFKA_ERRORS:
                return  # stopped before Kafka came up
            try:
                await self._consume(consumer)
            except KafkaError as exc:
                log.warning("kafka_consumer_failed_rejoining", error=repr(exc))
            finally:
                self.kafka_ready = False
                self._consumer = None
                self.stats.records_held = 0
                await consumer.stop()
                if self._producer is not None:
                    await self._producer.stop()
                    self._producer = None
            await self._sleep(self._settings.retry_initial_ms / 1000)  # no busy loop if Kafka keeps failing

    async def _start_consumer(self) -> AIOKafkaConsumer:
        settings = self._settings
        partitions = settings.kafka_topic_partitions
        client_options = settings.kafka_client_options()
        await ensure_topics(
            settings.kafka_bootstrap_servers,
            {topic: partitions for topic in (*self._specs, settings.kafka_deadletter_topic)},
            client_options=client_options,
        )
        consumer = AIOKafkaConsumer(
            *self._specs,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            **client_options,
            group_id=settings.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_session_timeout_ms // 3,
            max_partition_fetch_bytes=_MAX_PARTITION_FETCH_BYTES,
        )
        # Dead letters are rare and written again if their batch is redelivered: plain acks=all is enough
        # (and Tansu's memory storage refuses idempotent producers).
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=False, **client_options
        )
        try:
            await consumer.start()
            await producer.start()
        except BaseException:
            await consumer.stop()
            await producer.stop()
            raise
        self._consumer, self._producer = consumer, producer
        self.kafka_ready = self.kafka_ever_ready = True
        log.info("consuming", topics=sorted(self._specs), group=settings.kafka_group_id)
        return consumer

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        """The loop: poll, decode into the topic's batch, and insert each batch that is full or old enough.

        Inserts are pipelined: a due batch is sealed and its insert starts on the store's thread, and the
        loop goes on polling and decoding into a new batch meanwhile; one insert at a time, committed in
        order (the next due batch first waits for the one in flight). If that insert fails, the batches
        filled meanwhile are given back to Kafka (:meth:`_release`) and the failing batch is retried alone
        with every partition paused.
        """
        max_rows, max_age_ms = self._settings.batch_max_rows, self._settings.batch_max_age_ms
        batches = {topic: Batch(spec) for topic, spec in self._specs.items()}
        inserting: _Insert | None = None
        try:
            while not self._stopping.is_set():
                if inserting is not None and inserting.task.done():
                    finished, inserting = inserting, None
                    if not await self._finish(consumer, finished, batches):
                        return
                open_batches = [batch for batch in batches.values() if batch.size]
                timeout_ms = _IDLE_POLL_MS if inserting is None else _INSERTING_POLL_MS
                if open_batches:
                    timeout_ms = min(timeout_ms, max_age_ms - max(batch.age_ms() for batch in open_batches))
                room = max_rows - max(batch.size for batch in batches.values())
                polled = await consumer.getmany(timeout_ms=max(0, int(timeout_ms)), max_records=room)
                by_topic: dict[str, list[tuple[TopicPartition, list[ConsumerRecord]]]] = {}
                for tp, records in polled.items():
                    by_topic.setdefault(tp.topic, []).append((tp, records))
                for topic, parts in by_topic.items():
                    batches[topic].take(parts)
                self._note_held(batches, inserting and inserting.batch)
                for topic in list(batches):
                    batch = batches[topic]
                    if not batch.size or (batch.size < max_rows and batch.age_ms() < max_age_ms):
                        continue
                    if inserting is not None:
                        finished, inserting = inserting, None
                        if not await self._finish(consumer, finished, batches):
                            return
                        if batches[topic] is not batch:
                            continue  # given back to Kafka after a failed insert
                    inserting = self._start_insert(batch)
                    batches[topic] = Batch(batch.spec)
                    self._note_held(batches, inserting and inserting.batch)
            if inserting is not None:
                finished, inserting = inserting, None
                if not await self._finish(consumer, finished, batches):
                    return
            for batch in batches.values():
                if batch.size and not await self._flush(consumer, batch):
                    return
        finally:
            if inserting is not None:  # the loop failed: let the insert end, it is redelivered anyway
                await asyncio.wait([inserting.task])
                if not inserting.task.cancelled():
                    inserting.task.exception()

    def _start_insert(self, batch: Batch) -> _Insert:
        table, token = batch.seal()
        task = asyncio.create_task(self._store.insert(batch.spec, table, token), name="clickhouse-insert")
        return _Insert(batch, task)

    async def _finish(
        self, consumer: AIOKafkaConsumer, inserting: _Insert, batches: dict[str, Batch]
    ) -> bool:
        """Wait for the insert in flight, then complete its batch with :meth:`_flush` (which retries the
        insert if it failed, after the open batches are given back to Kafka). False if stopped meanwhile."""
        try:
            await inserting.task
        except _CLICKHOUSE_ERRORS as exc:
            self.clickhouse_failing = True
            self.stats.insert_failures += 1
            log.warning("clickhouse_insert_failed", error=repr(exc))
            self._release(consumer, batches)
        else:
            inserting.batch.inserted = True
        self._note_held(batches, inserting.batch)
        return await self._flush(consumer, inserting.batch)

    def _release(self, consumer: AIOKafkaConsumer, batches: dict[str, Batch]) -> None:
        """Give the open batches back to Kafka: drop them and seek their partitions back to their first
        records, so that only the failing batch is held while ClickHouse is retried."""
        for topic, batch in batches.items():
            for tp, offset in batch.first_offset.items():
                consumer.seek(tp, offset)
            batches[topic] = Batch(batch.spec)

    def _note_held(self, batches: dict[str, Batch], inserting: Batch | None) -> None:
        """Record how many records are held: the open batches and the batch being inserted."""
        held = sum(batch.size for batch in batches.values())
        if inserting is not None:
            held += inserting.size
        self.stats.records_held = held
        self.stats.max_records_held = max(self.stats.max_records_held, held)

    async def _flush(self, consumer: AIOKafkaConsumer, batch: Batch) -> bool:
        """Insert the batch unless that is done (retrying while ClickHouse fails), send its dead letters
        (retrying while Kafka fails), then commit its offsets.

        Returns False if a stop request came while retrying: the batch is left uncommitted and Kafka
        redelivers it to the next consumer of the group.
        """
        try:
            async for attempt in self.retrying("clickhouse_insert_retrying", _CLICKHOUSE_ERRORS):
                with attempt:
                    # One insert for the whole batch, every partition together: each insert into chDB has
                    # a fixed cost (and creates a part), so fewer, larger inserts load faster.
                    if not batch.inserted:
                        await self._insert(batch)
                        batch.inserted = True
            self.clickhouse_failing = False
            if batch.dead_letters and not batch.dead_letters_sent:
                async for attempt in self.retrying("deadletter_send_retrying", _KAFKA_ERRORS):
                    with attempt:
                        await self._send_dead_letters(batch.dead_letters)
                batch.dead_letters_sent = True
                self.stats.records_dead_lettered += len(batch.dead_letters)
        except (*_CLICKHOUSE_ERRORS, *_KAFKA_ERRORS):
            # These errors are retried until a stop request, which raises the last one again.
            log.warning("unflushed_batch_left_for_redelivery", records=batch.size)
            return False
        finally:
            consumer.resume(*consumer.paused())
        self.stats.rows_inserted += batch.rows
        offsets = batch.commit_offsets()
        try:
            await consumer.commit(offsets)
        except (KafkaError, OSError) as exc:
            # The rows are in ClickHouse; a redelivery after this failure is folded by message_id.
            self.stats.commit_failures += 1
            log.warning(
                "offset_commit_failed", error=repr(exc), offsets={str(tp): o for tp, o in offsets.items()}
            )
            return True
        self.stats.batches_committed += 1
        log.debug("batch_committed", records=batch.size, offsets={str(tp): o for tp, o in offsets.items()})
        return True

    async def _insert(self, batch: Batch) -> None:
        """Insert the sealed batch; a failure is counted (``insert_failures``, ``clickhouse_failing``) and
        raised."""
        try:
            await self._store.insert(batch.spec, *batch.seal())
        except _CLICKHOUSE_ERRORS:
            self.clickhouse_failing = True
            self.stats.insert_failures += 1
            raise

    async def _send_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Send every letter and wait until the broker has acknowledged all of them; a failure is counted
        (``deadletter_failures``) and raised."""
        try:
            if self._producer is None:
                raise KafkaError("dead-letter producer is not running")
            topic = self._settings.kafka_deadletter_topic
            deliveries = [
                await self._producer.send(topic, key=letter.key, value=letter.value, headers=letter.headers)
                for letter in letters
            ]
            await asyncio.gather(*deliveries)
        except _KAFKA_ERRORS:
            self.stats.deadletter_failures += 1
            raise

    async def stop(self) -> None:
        """Ask :meth:`run` to flush its batches, commit and return (await the task to wait for it)."""
        self._stopping.set()
