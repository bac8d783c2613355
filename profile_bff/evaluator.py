"""The alert evaluator: SecondStats of ``binance.second`` → the rules' decisions (:mod:`profile_bff.crossing`) →
states and firings in PostgreSQL → committed offsets → the firings published for the sockets.

It runs in every BFF replica with ``BFF_KAFKA_BOOTSTRAP_SERVERS`` (:class:`EvaluatorSettings`), in consumer
group ``BFF_ALERTS_GROUP_ID``:
a symbol's records are on one partition, so each symbol rule is evaluated by the one replica the group assigns
that partition to.

Exactly once in effect:

1. a polled batch is evaluated in memory, then the rules' changed states, the latest closes and the batch's
   firings are stored in ONE PostgreSQL transaction (:meth:`AlertStore.commit_batch
   <profile_bff.alertstore.AlertStore.commit_batch>`), a firing at most once (its id is (rule, second));
2. only then are the batch's offsets committed to Kafka;
3. then every firing not yet published is published on Redis ``bff:alerts`` and marked published (an outbox:
   firings stored by an evaluator killed before it published are published after the next batch, or at
   start, by whichever replica gets there).

Killed anywhere, the evaluator is restarted from the committed offsets with the stored states: records
redelivered after step 1 find their seconds already evaluated (:func:`profile_bff.crossing.step` changes
nothing for them) and so fire nothing twice; records before it are evaluated as the first time. A failure of
PostgreSQL or Kafka does the same without a restart: the consumer leaves the group, the in-memory state is
dropped, and a new consumer starts from what is stored. On every partition assignment the states are read
again, since another replica may have evaluated the partition meanwhile; a rebalance waits for the batch in
hand to be stored and committed (:class:`_Assignments`), and a rule's state is never replaced by one of an
older second, so a replica that lost its partition while stalled cannot undo what its successor stored.

Rules and portfolios are read again when they changed (``BFF_ALERTS_REFRESH_S``, a cheap version query), and
with them the stored states of the rules that became active (created or resumed) and the close histories of
symbols newly watched; what was active before is as stored already (each batch is stored before the next). A
portfolio rule is evaluated on the SecondStats of its coins by the replica that receives them; with more than
one partition its coins may be on several replicas, so portfolio rules need a topic of one partition (the
default) — a known limit (docs/CONTRACTS.md, "Alerts").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from crypto_mesh import jsonutil
from crypto_mesh.kafka import group_consumer
from crypto_mesh.logs import get_logger
from crypto_mesh.retry import Backoff, raise_if_cancelling, retrying
from profile_bff.alerts import alert_json
from profile_bff.alertstore import AlertStore
from profile_bff.crossing import Evaluation, Firing
from profile_bff.errors import StoreUnavailable
from profile_bff.portfolio import InvalidSecondStat, second_stat_close
from profile_bff.settings import BffSettings
from profile_bff.store import MarketBus

log = get_logger(__name__)

_KAFKA_ERRORS = (KafkaError, OSError, TimeoutError)
#: Longest wait of one poll (bounds the reaction time to changed rules and to a stop).
_POLL_MS = 250
#: Records evaluated and stored per transaction at most.
_MAX_RECORDS = 5000
#: Firings published per outbox round.
_PUBLISH_BATCH = 500


class _Assignments(ConsumerRebalanceListener):
    """Notes that partitions were (re)assigned: the states must be read again before the next batch.

    A batch is evaluated, stored and committed under :attr:`batch`, which a revocation waits for: aiokafka
    awaits every member's ``on_partitions_revoked`` before any is assigned the partitions, so the next owner
    of a partition reads the states stored after the last batch of the previous one."""

    def __init__(self) -> None:
        self.changed = True
        self.assigned: frozenset[TopicPartition] = frozenset()
        self.batch = asyncio.Lock()

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self.batch:
            self.assigned = frozenset()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.assigned = frozenset(assigned)
        self.changed = True


@dataclass(frozen=True)
class EvaluatorSettings:
    """What the evaluator needs of the BFF's settings: the brokers and the aiokafka client options (SASL),
    the topic and the group, the session timeout (ms), and how often rules are looked at again (s)."""

    bootstrap_servers: str
    topic: str
    group_id: str
    client_options: dict[str, Any] = field(default_factory=dict)
    session_timeout_ms: int = 10_000
    refresh_s: float = 1.0

    @classmethod
    def of(cls, settings: BffSettings) -> EvaluatorSettings:
        """From ``BFF_KAFKA_*`` and ``BFF_ALERTS_*``; ``ValueError`` without ``BFF_KAFKA_BOOTSTRAP_SERVERS``,
        ``OSError`` if the SASL password file cannot be read."""
        if not settings.kafka_bootstrap_servers:
            raise ValueError("the alert evaluator needs BFF_KAFKA_BOOTSTRAP_SERVERS")
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic=settings.alerts_topic,
            group_id=settings.alerts_group_id,
            client_options=settings.kafka_client_options(),
            session_timeout_ms=settings.kafka_session_timeout_ms,
            refresh_s=settings.alerts_refresh_s,
        )


class AlertEvaluator:
    """Evaluates the alert rules on ``settings.topic`` (module docstring) with ``store`` and publishes firings
    on ``bus``. :meth:`run` is the loop (a task; cancel it to stop); counters: ``records``, ``firings`` (stored
    by this evaluator), ``batches``."""

    def __init__(self, settings: EvaluatorSettings, store: AlertStore, bus: MarketBus) -> None:
        self._settings = settings
        self._store = store
        self._bus = bus
        self.records = 0
        self.firings = 0
        self.batches = 0
        self.consuming = False
        self._listener: _Assignments | None = None
        #: The ids of the rules evaluated now.
        self.loaded_rule_ids: frozenset[int] = frozenset()

    async def run(self) -> None:
        """Join the group and evaluate until cancelled; a Kafka or PostgreSQL failure restarts the consumer
        from the committed offsets and the stored states, after a backoff pause."""
        backoff = Backoff(0.2, 10.0)
        while True:
            raise_if_cancelling()
            listener = self._listener = _Assignments()
            async for attempt in retrying("alerts_kafka_connect_retrying", retry_on=_KAFKA_ERRORS, max_s=10.0):
                with attempt:
                    consumer = await self._start_consumer(listener)
            try:
                await self._consume(consumer, listener, backoff)
            except (KafkaError, StoreUnavailable) as exc:
                log.warning("alert_evaluator_restarting", error=f"{type(exc).__name__}: {exc}")
            finally:
                self.consuming = False
                self._listener = None
                await consumer.stop()
            await asyncio.sleep(backoff.next_delay())

    @property
    def partitions(self) -> int:
        """How many partitions the group assigns this evaluator now."""
        return len(self._listener.assigned) if self._listener is not None else 0

    async def _start_consumer(self, listener: _Assignments) -> AIOKafkaConsumer:
        settings = self._settings
        consumer = group_consumer(
            settings.bootstrap_servers, settings.group_id, settings.session_timeout_ms, settings.client_options
        )
        await consumer.start()
        try:
            # A topic created after the subscription would be seen only at the next metadata refresh (5 min):
            # wait for the producer's (the aggregator, or the ETL at its start) to create it.
            if settings.topic not in await consumer.topics():
                raise UnknownTopicOrPartitionError(f"topic {settings.topic} does not exist yet")
        except BaseException:
            await consumer.stop()
            raise
        partitions = consumer.partitions_for_topic(settings.topic) or set()
        if len(partitions) > 1:
            # The known limit of the module docstring, said where an operator looks.
            log.warning(
                "alert_portfolio_rules_need_one_partition",
                topic=settings.topic,
                partitions=len(partitions),
                detail="with several replicas, a portfolio rule sees only the coins on its own replica's partitions",
            )
        consumer.subscribe([settings.topic], listener=listener)
        log.info("alert_evaluator_consuming", topic=settings.topic, group=settings.group_id)
        return consumer

    async def _consume(self, consumer: AIOKafkaConsumer, listener: _Assignments, backoff: Backoff) -> None:
        evaluation = Evaluation()
        version: tuple[int, int] | None = None
        next_refresh = 0.0
        await self._publish_outbox()
        while True:
            # A cancellation a library swallowed (in a poll, a store call) still ends the loop.
            raise_if_cancelling()
            if time.monotonic() >= next_refresh:
                current = await self._store.version()
                if current != version:
                    added_rules, added_symbols = await self._load_rules(evaluation)
                    version = current
                    if not listener.changed:  # else all is read after the poll
                        await self._load_added(evaluation, added_rules, added_symbols)
                next_refresh = time.monotonic() + self._settings.refresh_s
            polled = await consumer.getmany(timeout_ms=_POLL_MS, max_records=_MAX_RECORDS)
            self.consuming = True
            async with listener.batch:
                if listener.changed:
                    # Read after the poll that rebalanced: the states another replica stored for these partitions.
                    await self._load_states(evaluation)
                    listener.changed = False
                # Records of partitions revoked since the poll are their next owner's.
                polled = {tp: records for tp, records in polled.items() if tp in listener.assigned}
                if not polled:
                    continue
                stored = await self._evaluate(consumer, evaluation, polled)
            backoff.reset()
            if stored:
                log.info("alerts_fired", count=len(stored))
            # Also what an evaluator killed between storing and publishing left (one indexed query).
            await self._publish_outbox()

    async def _evaluate(
        self, consumer: AIOKafkaConsumer, evaluation: Evaluation, polled: dict[TopicPartition, list[Any]]
    ) -> list[Firing]:
        """Evaluate ``polled`` records, store the outcome in one transaction, then commit their offsets;
        returns the firings stored now."""
        firings: list[Firing] = []
        closes: list[tuple[str, int, Decimal]] = []
        history_symbols = evaluation.history_symbols()
        for tp, records in polled.items():
            for record in records:
                symbol = (record.key or b"").decode("ascii", "replace")
                try:
                    second_ms, close = second_stat_close(record.value or b"")
                except InvalidSecondStat as exc:
                    log.warning("malformed_second_record", partition=tp.partition, offset=record.offset, error=str(exc))
                    continue
                if symbol in history_symbols:
                    closes.append((symbol, second_ms, close))
                firings.extend(evaluation.apply(symbol, second_ms, close))
                self.records += 1
        prune = {
            symbol: evaluation.closes[symbol][0] - window_ms
            for symbol, window_ms in history_symbols.items()
            if symbol in evaluation.closes and symbol in evaluation.closes_changed
        }
        stored = await self._store.commit_batch(
            {rule_id: evaluation.states[rule_id] for rule_id in evaluation.changed if rule_id in evaluation.states},
            firings,
            {symbol: evaluation.closes[symbol] for symbol in evaluation.closes_changed},
            closes,
            prune,
        )
        evaluation.changed.clear()
        evaluation.closes_changed.clear()
        await consumer.commit({tp: records[-1].offset + 1 for tp, records in polled.items()})
        self.batches += 1
        self.firings += len(stored)
        return stored

    async def _load_rules(self, evaluation: Evaluation) -> tuple[set[int], set[str]]:
        """Load the active rules and portfolios; the ids of the rules and the symbols whose close history is
        needed that were not before."""
        watched = evaluation.history_symbols().keys()
        rules, holdings = await self._store.active_rules()
        evaluation.set_rules(rules)
        evaluation.set_holdings(holdings)
        loaded = frozenset(rule.id for rule in rules)
        added_rules, self.loaded_rule_ids = set(loaded - self.loaded_rule_ids), loaded
        log.info("alert_rules_loaded", rules=len(rules))
        return added_rules, set(evaluation.history_symbols().keys() - watched)

    async def _load_added(self, evaluation: Evaluation, rule_ids: set[int], symbols: set[str]) -> None:
        """The stored states of ``rule_ids`` and the stored close histories of ``symbols``, for rules that
        became active: those active before are as stored."""
        if rule_ids:
            evaluation.states.update(await self._store.states(rule_ids))
        windows = evaluation.history_symbols()
        for symbol in symbols:
            await self._load_history(evaluation, symbol, windows[symbol])

    async def _load_states(self, evaluation: Evaluation) -> None:
        """The stored states, latest closes and close histories: what this evaluator applies next is
        evaluated on exactly what is stored."""
        evaluation.restore(await self._store.states(evaluation.rule_ids()), await self._store.prices())
        for symbol, window_ms in evaluation.history_symbols().items():
            await self._load_history(evaluation, symbol, window_ms)

    async def _load_history(self, evaluation: Evaluation, symbol: str, window_ms: int) -> None:
        """Replace the close history of ``symbol`` with the stored closes of the window up to its latest."""
        history = evaluation.history(symbol)
        latest = evaluation.closes.get(symbol)
        since = (latest[0] if latest else 0) - window_ms
        history.clear()
        for second, close in await self._store.closes(symbol, since):
            history.add(second, close)

    async def _publish_outbox(self) -> None:
        """Publish every firing not yet published, oldest first, and mark it; a Redis failure leaves them for
        the next round (they are also sent to sockets at connect, and listed by the events route)."""
        while True:
            pending = await self._store.unpublished(_PUBLISH_BATCH)
            if not pending:
                return
            messages = [
                jsonutil.dumps({"user_id": firing.user_id, "alert": alert_json(firing)}) for firing in pending
            ]
            try:
                await self._bus.publish_alerts(messages)
            except StoreUnavailable as exc:
                log.warning("alerts_publish_failed", pending=len(pending), error=str(exc))
                return
            await self._store.mark_published(firing.alert_id for firing in pending)
            if len(pending) < _PUBLISH_BATCH:
                return
