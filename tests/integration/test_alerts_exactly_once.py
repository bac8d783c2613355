"""Alert firings on the shipped trade recording, exactly once in effect: the recording's SecondStats (computed
from its frames, as the aggregator publishes them: tests/support/recordings.py) are written to a Kafka topic
while evaluators consume it in one group, and evaluators are killed six times (cancelled without a clean
stop: half at random moments, half right after a batch is stored and before its offsets are committed, the
window where a redelivery must fire nothing twice), each time restarted; at the last kill a second replica
stands by in the group and takes the partition over. Afterwards the stored firings equal an independent
computation from the recording: which rule, which second, which price, each once, none invented.
"""

from __future__ import annotations

import asyncio
import io
import random
import uuid
from decimal import Decimal

import pytest
from support.credentials import redis_user_url
from support.databases import new_database
from support.polling import eventually
from support.alerts import BTC, recording_rules, reference_firings, replayed_closes, second_records

from crypto_mesh.kafka import ensure_topics
from profile_bff.alertrules import RuleSpec
from profile_bff.alertstore import AlertStore
from profile_bff.crossing import RuleState
from profile_bff.evaluator import AlertEvaluator, EvaluatorSettings
from profile_bff.store import MarketBus, ProfileStore
from aiokafka import AIOKafkaProducer

KILLS = 6
USER = 1


class CrashingStore(AlertStore):
    """The alert store of an evaluator that dies right after a batch is stored when told to: its task is
    cancelled before the offsets are committed."""

    crash_task: asyncio.Task | None = None

    async def commit_batch(self, *args, **kwargs):
        stored = await super().commit_batch(*args, **kwargs)
        task = asyncio.current_task()
        if task is not None and task is self.crash_task:
            self.crash_task = None
            task.cancel()
        return stored


@pytest.fixture
async def stores(postgres):
    store = ProfileStore(new_database(postgres, "alerts"))
    await store.migrate()
    await store.ensure_profile(USER, "trader")
    try:
        yield store
    finally:
        await store.close()


async def test_firings_on_the_recording_are_stored_once_through_six_kills(stores, redis_url, kafka_bootstrap, trade_recording):
    by_symbol = replayed_closes(trade_recording)
    quantity = Decimal("2.5")
    rules = recording_rules(by_symbol, quantity)
    await stores.add_coin(USER, BTC, quantity)
    alerts = CrashingStore(stores)
    ids = {}
    for symbol, spec in rules:
        ids[(await alerts.create_rule(USER, spec, None, max_rules=50)).id] = (symbol, spec)
    expected = {
        (rule_id, second, close)
        for rule_id, (symbol, spec) in ids.items()
        for second, close in reference_firings(spec, by_symbol[symbol], quantity)
    }
    assert len(expected) > 20  # the recording crosses these thresholds often

    topic = f"alerts-once-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {topic: 1})
    settings = EvaluatorSettings(
        kafka_bootstrap, topic, f"alerts-{uuid.uuid4().hex[:8]}", session_timeout_ms=2000, refresh_s=0.2
    )
    bus = MarketBus(redis_user_url(redis_url, "bff"))
    records = second_records(by_symbol)
    rng = random.Random(20261130)
    replicas: list[tuple[AlertEvaluator, asyncio.Task]] = []

    def start_replica() -> None:
        evaluator = AlertEvaluator(settings, alerts, bus)
        replicas.append((evaluator, asyncio.create_task(evaluator.run())))

    def owner() -> tuple[AlertEvaluator, asyncio.Task] | None:
        """The live replica the group assigned the partition to."""
        for evaluator, task in replicas:
            if not task.done() and evaluator.partitions:
                return evaluator, task
        return None

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False, acks="all")
    await producer.start()

    async def produce(part) -> None:
        for start in range(0, len(part), 10):
            for key, value in part[start : start + 10]:
                await producer.send(topic, key=key, value=value)
            await producer.flush()
            await asyncio.sleep(0.005)  # the replay plays on while an evaluator dies

    size = len(records) // (KILLS + 1) + 1
    parts = [records[i : i + size] for i in range(0, len(records), size)]
    try:
        start_replica()
        for kill in range(KILLS):
            if kill == KILLS - 1:
                start_replica()  # a second replica in the group: it takes over from the one killed now
            evaluator, task = await eventually(owner, timeout_s=60, what="a replica holding the partition")
            before = evaluator.records
            if kill % 2:
                alerts.crash_task = task  # dies right after storing its next batch, offsets not committed
                await finished(asyncio.create_task(produce(parts[kill])), 60, "writing the records")
                await eventually(task.done, timeout_s=30, what="a crash after a stored batch")
            else:
                producing = asyncio.create_task(produce(parts[kill]))
                await eventually(lambda: evaluator.records > before, timeout_s=30, what="records evaluated")
                await asyncio.sleep(rng.uniform(0, 0.05))
                task.cancel()
                await finished(producing, 60, "writing the records")
            await finished(task, 30, f"the evaluator cancelled at kill {kill}")
            if kill < KILLS - 1:
                start_replica()  # the next evaluator, alone in the group (a restart)
        await produce(parts[KILLS])

        async def all_stored() -> bool:
            stored = {(f.rule_id, f.second, f.price) for f in await alerts.firings(USER, before_seq=None, limit=1000)}
            return stored == expected

        await eventually(all_stored, timeout_s=60, what="every expected firing stored")
        firings = await alerts.firings(USER, before_seq=None, limit=1000)
        assert len(firings) == len(expected)
        await eventually(lambda: _all_published(alerts), what="every firing published")
    finally:
        await producer.stop()
        for _, task in replicas:
            task.cancel()
        for index, (_, task) in enumerate(replicas):
            await finished(task, 30, f"evaluator {index}, cancelled at the end")
        await asyncio.gather(*(task for _, task in replicas), return_exceptions=True)
        await bus.close()


async def finished(task: asyncio.Task, timeout_s: float, what: str) -> None:
    """Wait for ``task`` to end (its exception, a cancellation included, is not raised); fail after
    ``timeout_s`` with the stack where it waits, rather than wait forever."""
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        stack = io.StringIO()
        task.print_stack(file=stack)
        pytest.fail(f"{what}: not done after {timeout_s} s, waiting in:\n{stack.getvalue()}")


async def _all_published(alerts: AlertStore) -> bool:
    return not await alerts.unpublished(10)


async def test_a_rule_state_is_not_replaced_by_one_of_an_older_second_and_is_read_among_any_number(stores):
    # What a replica that lost its partition while stalled would store after its successor stored newer states.
    alerts = AlertStore(stores)
    spec = RuleSpec("price_above", BTC, Decimal("60000"), None, "every_crossing", 0)
    rule = await alerts.create_rule(USER, spec, None, max_rules=50)
    newer = RuleState(second=2000, side=True, fired_second=2000)
    await alerts.commit_batch({rule.id: newer}, [], {}, [], {})
    await alerts.commit_batch({rule.id: RuleState(second=1000, side=False)}, [], {}, [], {})
    assert (await alerts.states([rule.id]))[rule.id] == newer
    later = RuleState(second=3000, side=False, fired_second=2000)
    await alerts.commit_batch({rule.id: later}, [], {}, [], {})
    # Read among more rule ids than a statement has parameters (32,767): 10,000 users with 5 rules each.
    assert await alerts.states([rule.id, *range(10**9, 10**9 + 40_000)]) == {rule.id: later}
