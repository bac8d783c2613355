"""The Kafka consumer-group loop: records of ``binance.miniticker`` and ``binance.second`` → one batch per
topic → ClickHouse → committed offsets.

Delivery is at least once, and duplicates are folded: a batch is inserted, and only once ClickHouse has
acknowledged it (and the dead-letter topic has acknowledged the batch's undecodable records) are its offsets
(last offset + 1 per partition) committed. A redelivered batch carries the same ``insert_deduplication_token``
(the server drops it), and every row carries a deterministic ``message_id`` that the ReplacingMergeTree
tables fold, which also covers a redelivery cut into different batches (docs/ANALYTICS.md, "Exactly once").

Each topic has one open batch, closed by size (``ETL_BATCH_MAX_ROWS`` records) or age
(``ETL_BATCH_MAX_AGE_MS``); no poll takes more records than the fullest batch has room for. Those rules, and
the offsets a batch commits or gives back, are :mod:`etl.batching`'s, over plain numbers. Records are
decoded a whole poll at a time (:mod:`etl.columnar`) on a thread of their own, in the order polled, while the
loop polls the next ones (pyarrow parses and checks without holding the GIL); a batch waits for its decoding
only when it is inserted. A closed batch is handed to the
store's thread at once and inserted while the loop fills the next one (one insert in flight at a time,
committed in order; a batch due meanwhile keeps filling, up to its size, until that insert is acknowledged),
so at most the open batches and the one being inserted are held: three batches with two topics. If that insert
fails, the open batches are given back to Kafka (their partitions sought back to their first records), and
the failing batch, alone, is retried with exponential backoff and every partition paused, so nothing more
is taken from Kafka while ClickHouse (or the dead-letter topic) fails; the loop keeps polling (paused
partitions return nothing) to stay in the consumer group. A record that cannot be decoded goes to the
dead-letter topic with the reason (:mod:`etl.deadletter`) and the batch moves on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.exceptions import Error as ClickHouseError
from tenacity import AsyncRetrying

from crypto_mesh import retry
from crypto_mesh.kafka import ensure_topics, group_consumer
from crypto_mesh.logs import get_logger
from etl.batching import Batch, BatchPolicy
from etl.columnar import DecodedRun, decode_values, string_digest
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
#: Longest wait for an offset commit (s); past it the consumer is closed and a new one joins the group (the
#: rows are in ClickHouse; a redelivery is folded by message_id). While stopping, a shorter wait, also for a
#: commit already waiting when the stop is asked: a broker that does not answer then (it crashed) would only
#: hold up the stop.
_COMMIT_TIMEOUT_S = 10.0
_STOP_COMMIT_TIMEOUT_S = 1.0
#: Longest wait in one poll while an insert is in flight (bounds the delay before its batch is committed).
_INSERTING_POLL_MS = 10


def table_specs(settings: EtlSettings) -> dict[str, TableSpec]:
    """Topic → the table its records are loaded into."""
    return {settings.kafka_topic: TICKERS, settings.kafka_second_topic: SECONDS}


@dataclass
class ConsumerStats:
    """Counters since start: rows inserted, records sent to the dead-letter topic, batches committed, failed
    insert attempts, failed dead-letter sends, failed commits; ``records_held``: records taken from Kafka and
    not yet committed (now), ``max_records_held``: the most ever held at once; ``first_taken_at``: when the
    first record was taken from Kafka (``time.monotonic()`` s, as the poll returned it, before decoding; None
    until then), ``last_committed_at``: when the last batch's offsets were committed (monotonic s; None until
    then)."""

    rows_inserted: int = 0
    records_dead_lettered: int = 0
    batches_committed: int = 0
    insert_failures: int = 0
    deadletter_failures: int = 0
    commit_failures: int = 0
    records_held: int = 0
    max_records_held: int = 0
    first_taken_at: float | None = None
    last_committed_at: float | None = None


@dataclass
class _Load:
    """A batch on its way to ClickHouse: its positions (:class:`etl.batching.Batch`), its records (decoded on
    the consumer's decoding thread as they arrive), and how far its insert went.

    ``decoding`` holds the polls whose decoding has not been collected yet; once :meth:`decoded` has
    returned, ``rows`` counts the decoded rows (what is inserted) and ``dead_letters`` holds the records that
    could not be decoded. :meth:`seal` (after :meth:`decoded`) makes the one table and the deduplication token
    that every insert attempt of the batch sends.
    """

    spec: TableSpec
    batch: Batch
    tables: list[pa.Table] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    rows: int = 0
    sealed: tuple[pa.Table, str] | None = None
    inserted: bool = False
    dead_letters_sent: bool = False
    decoding: list[tuple[Future[DecodedRun], list[ConsumerRecord]]] = field(default_factory=list)

    def take(
        self, polled: Iterable[tuple[TopicPartition, list[ConsumerRecord]]], now: float, decoder: Executor
    ) -> None:
        """Add the records of one poll (per partition, consecutive), polled at ``now`` (monotonic s), to the
        batch, and hand them to ``decoder`` (one thread: the polls are decoded in order) to be decoded in one
        columnar run (:func:`etl.columnar.decode_values`). Returns at once; :meth:`decoded` collects the
        result."""
        records: list[ConsumerRecord] = []
        for tp, part in polled:
            if part:
                self.batch.add(tp, part[0].offset, part[-1].offset, len(part), now)
                records.extend(part)
        if not records:
            return
        self.decoding.append((decoder.submit(decode_values, self.spec, [r.value for r in records]), records))

    async def decoded(self) -> None:
        """Wait until every poll taken is decoded, and add its rows to the batch; the records that cannot be
        decoded become :attr:`dead_letters`. Raises what the decoding raised (a bug: bad input is never an
        error there)."""
        while self.decoding:
            future, records = self.decoding[0]
            run = await asyncio.wrap_future(future)
            del self.decoding[0]
            self._add(run, records)

    def _add(self, run: DecodedRun, records: list[ConsumerRecord]) -> None:
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

    def seal(self) -> tuple[pa.Table, str]:
        """(the batch's rows as one table, its deduplication token); the same on every call. Only once
        :meth:`decoded` has returned."""
        if self.decoding:
            raise RuntimeError("the batch is sealed before its records are decoded")
        if self.sealed is None:
            if self.tables:
                table = pa.concat_tables(self.tables)
            else:
                table = pa.schema(list(zip(self.spec.columns, self.spec.arrow_types))).empty_table()
            self.tables = [table]
            self.sealed = (table, self.batch.deduplication_token(string_digest(table.column("message_id"))))
        return self.sealed

    def commit_offsets(self) -> dict[TopicPartition, int]:
        """What to commit once the batch is inserted (:meth:`etl.batching.Batch.commit_offsets`)."""
        return {TopicPartition(*tp): offset for tp, offset in self.batch.commit_offsets().items()}


@dataclass
class _Insert:
    """A sealed batch whose first insert attempt runs on the store's thread while the loop goes on
    (:meth:`etl.store.ClickHouseStore.start_insert`); ``task`` is done once it is acknowledged or failed."""

    load: _Load
    task: asyncio.Future[None]


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
        self._policy = BatchPolicy(settings.batch_max_rows, settings.batch_max_age_ms)
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.stats = ConsumerStats()
        #: Partition → the offset after the last record taken from it, for :meth:`partition_lag`.
        self._positions: dict[TopicPartition, int] = {}
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
                retry.raise_if_cancelling()  # aiokafka may turn a cancellation into a KafkaTimeoutError
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
        consumer = group_consumer(
            settings.kafka_bootstrap_servers,
            settings.kafka_group_id,
            settings.kafka_session_timeout_ms,
            client_options,
            *self._specs,
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
        """The loop: insert each batch that is ready, poll, and hand the poll to the decoding thread for the
        topic's batch.

        Decoding and inserts are pipelined: each poll is decoded on a thread of this loop's own while the
        loop polls the next; a ready batch waits for its decoding, is sealed and its insert handed to the
        store's thread at once, and the loop goes on polling into a new batch meanwhile; one insert at a
        time, committed in order. A batch that comes due while an insert is in flight keeps filling until
        that insert is acknowledged, and one that is full waits for it (:meth:`etl.batching.Batch.ready`).
        If that insert fails, the batches filled meanwhile are given back to Kafka (:meth:`_release`) and the
        failing batch is retried alone with every partition paused.
        """
        loads = {topic: self._new_load(topic) for topic in self._specs}
        inserting: _Insert | None = None
        decoder = ThreadPoolExecutor(1, thread_name_prefix="etl-decode")
        try:
            while not self._stopping.is_set():
                # A cancellation a library swallowed (in a poll, a store call) still ends the loop.
                retry.raise_if_cancelling()
                if inserting is not None and inserting.task.done():
                    finished, inserting = inserting, None
                    if not await self._finish(consumer, finished, loads):
                        return
                for topic in list(loads):
                    load = loads[topic]
                    if not load.batch.ready(time.monotonic(), inserting is not None):
                        continue
                    if inserting is not None:  # full: it waits for the insert in flight
                        finished, inserting = inserting, None
                        if not await self._finish(consumer, finished, loads):
                            return
                        if loads[topic] is not load:
                            continue  # given back to Kafka after a failed insert
                    inserting = await self._start_insert(load)
                    loads[topic] = self._new_load(topic)
                    self._note_held(loads, inserting.load)
                batches = [load.batch for load in loads.values()]
                longest_ms = _IDLE_POLL_MS if inserting is None else _INSERTING_POLL_MS
                polled = await consumer.getmany(
                    timeout_ms=self._policy.poll_timeout_ms(
                        batches, time.monotonic(), longest_ms, inserting=inserting is not None
                    ),
                    max_records=self._policy.room(batches),
                )
                by_topic: dict[str, list[tuple[TopicPartition, list[ConsumerRecord]]]] = {}
                for tp, records in polled.items():
                    by_topic.setdefault(tp.topic, []).append((tp, records))
                    self._positions[tp] = records[-1].offset + 1
                now = time.monotonic()
                if by_topic and self.stats.first_taken_at is None:
                    self.stats.first_taken_at = now
                for topic, parts in by_topic.items():
                    loads[topic].take(parts, now, decoder)
                self._note_held(loads, inserting and inserting.load)
            if inserting is not None:
                finished, inserting = inserting, None
                if not await self._finish(consumer, finished, loads):
                    return
            for load in loads.values():
                if load.batch.size and not await self._flush(consumer, load):
                    return
        finally:
            # Decodings left are of batches given up (redelivered anyway): the one running ends by itself.
            decoder.shutdown(wait=False, cancel_futures=True)
            if inserting is not None:  # the loop failed: let the insert end, it is redelivered anyway
                await asyncio.wait([inserting.task])
                if not inserting.task.cancelled():
                    inserting.task.exception()

    def partition_lag(self) -> dict[tuple[str, str], int]:
        """Consumer lag now, ``{(topic, partition as str): records}``: each partition's high watermark (as the
        broker's last fetch answer gave it) minus the offset after the last record taken from it, of the
        partitions assigned to this consumer now; partitions not read yet, or with no consumer (Kafka down), are
        absent. (aiokafka's ``highwater`` refuses a partition no longer assigned, one a rebalance gave to another
        replica.)"""
        consumer = self._consumer
        if consumer is None:
            return {}
        lag = {}
        for tp in consumer.assignment():
            position = self._positions.get(tp)
            highwater = consumer.highwater(tp)
            if position is not None and highwater is not None:
                lag[(tp.topic, str(tp.partition))] = max(highwater - position, 0)
        return lag

    def _new_load(self, topic: str) -> _Load:
        return _Load(self._specs[topic], Batch(topic, self._policy))

    async def _start_insert(self, load: _Load) -> _Insert:
        await load.decoded()
        table, token = load.seal()
        return _Insert(load, self._store.start_insert(load.spec, table, token))

    async def _finish(self, consumer: AIOKafkaConsumer, inserting: _Insert, loads: dict[str, _Load]) -> bool:
        """Wait for the insert in flight, then complete its batch with :meth:`_flush` (which retries the
        insert if it failed, after the open batches are given back to Kafka). False if stopped meanwhile."""
        try:
            await inserting.task
        except _CLICKHOUSE_ERRORS as exc:
            self.clickhouse_failing = True
            self.stats.insert_failures += 1
            log.warning("clickhouse_insert_failed", error=repr(exc))
            self._release(consumer, loads)
        else:
            inserting.load.inserted = True
        self._note_held(loads, inserting.load)
        return await self._flush(consumer, inserting.load)

    def _release(self, consumer: AIOKafkaConsumer, loads: dict[str, _Load]) -> None:
        """Give the open batches back to Kafka: drop them and seek their partitions back to their first
        records, so that only the failing batch is held while ClickHouse is retried."""
        for topic, load in loads.items():
            for tp, offset in load.batch.first_offsets.items():
                consumer.seek(TopicPartition(*tp), offset)
            loads[topic] = self._new_load(topic)

    def _note_held(self, loads: dict[str, _Load], inserting: _Load | None) -> None:
        """Record how many records are held: the open batches and the batch being inserted."""
        held = sum(load.batch.size for load in loads.values())
        if inserting is not None:
            held += inserting.batch.size
        self.stats.records_held = held
        self.stats.max_records_held = max(self.stats.max_records_held, held)

    async def _flush(self, consumer: AIOKafkaConsumer, load: _Load) -> bool:
        """Insert the batch unless that is done (retrying while ClickHouse fails), send its dead letters
        (retrying while Kafka fails), then commit its offsets.

        Returns False if a stop request came while retrying: the batch is left uncommitted and Kafka
        redelivers it to the next consumer of the group. Raises ``KafkaError`` if the commit is not done within
        :data:`_COMMIT_TIMEOUT_S` (:data:`_STOP_COMMIT_TIMEOUT_S` while stopping): :meth:`run` then joins anew.
        """
        try:
            async for attempt in self.retrying("clickhouse_insert_retrying", _CLICKHOUSE_ERRORS):
                with attempt:
                    # One insert for the whole batch, every partition together: each insert into chDB has
                    # a fixed cost (and creates a part), so fewer, larger inserts load faster.
                    if not load.inserted:
                        await self._insert(load)
                        load.inserted = True
            self.clickhouse_failing = False
            if load.dead_letters and not load.dead_letters_sent:
                async for attempt in self.retrying("deadletter_send_retrying", _KAFKA_ERRORS):
                    with attempt:
                        await self._send_dead_letters(load.dead_letters)
                load.dead_letters_sent = True
                self.stats.records_dead_lettered += len(load.dead_letters)
        except (*_CLICKHOUSE_ERRORS, *_KAFKA_ERRORS):
            # These errors are retried until a stop request, which raises the last one again.
            log.warning("unflushed_batch_left_for_redelivery", records=load.batch.size)
            return False
        finally:
            consumer.resume(*consumer.paused())
        self.stats.rows_inserted += load.rows
        offsets = load.commit_offsets()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # The long wait, cut to the short one by a stop, whether asked before the commit or during it.
            async with asyncio.timeout(_COMMIT_TIMEOUT_S) as deadline:
                shorten = asyncio.create_task(self._shorten_on_stop(deadline))
                try:
                    await consumer.commit(offsets)
                finally:
                    shorten.cancel()
        except TimeoutError as exc:
            # aiokafka retries a commit for as long as the broker answers with a retriable error or not at all
            # (a broker that restarted empty answers UnknownTopicOrPartition): this consumer is done with.
            self.stats.commit_failures += 1
            waited_s = round(loop.time() - started, 1)
            log.warning(
                "offset_commit_timed_out", waited_s=waited_s, offsets={str(tp): o for tp, o in offsets.items()}
            )
            raise KafkaError(f"offset commit not done within {waited_s} s") from exc
        except (KafkaError, OSError) as exc:
            # The rows are in ClickHouse; a redelivery after this failure is folded by message_id.
            self.stats.commit_failures += 1
            log.warning(
                "offset_commit_failed", error=repr(exc), offsets={str(tp): o for tp, o in offsets.items()}
            )
            return True
        self.stats.batches_committed += 1
        self.stats.last_committed_at = time.monotonic()
        log.debug(
            "batch_committed", records=load.batch.size, offsets={str(tp): o for tp, o in offsets.items()}
        )
        return True

    async def _shorten_on_stop(self, deadline: asyncio.Timeout) -> None:
        """Once a stop is asked (at once if it already was), bring ``deadline`` (an offset commit's) to
        :data:`_STOP_COMMIT_TIMEOUT_S` from then if it is later: a commit that waits on a broker that died would
        otherwise hold up the stop for the whole :data:`_COMMIT_TIMEOUT_S` (a supervisor restarting the broker
        waits for that stop)."""
        await self._stopping.wait()
        when = asyncio.get_running_loop().time() + _STOP_COMMIT_TIMEOUT_S
        current = deadline.when()
        if current is None or when < current:
            deadline.reschedule(when)

    async def _insert(self, load: _Load) -> None:
        """Insert the sealed batch; a failure is counted (``insert_failures``, ``clickhouse_failing``) and
        raised."""
        try:
            await load.decoded()
            await self._store.insert(load.spec, *load.seal())
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
