"""Alert firings exactly once in effect under SIGKILL: the alert evaluator runs in BFF processes of its own
(``python -m profile_bff`` with ``BFF_KAFKA_BOOTSTRAP_SERVERS``, as the mesh runs it), which are killed with
SIGKILL while the shipped trade recording's SecondStats are written to the topic; the user's WebSockets are
open on another BFF, never killed, that has no evaluator. Afterwards:

- the stored firings equal an independent computation from the recording (tests/support/alerts.py): which
  rule, which second, which price, each once, none invented;
- each socket received each firing exactly once, and nothing else of type ``alert``.

One test kills a lone evaluator ten times, each time starting a new one (a restart); the other runs two
evaluators in one consumer group and kills the one the group assigned the partition to, the other taking it
over. Where a kill lands is left to chance: records are written in small steps while an evaluator works, and
the kill follows the first records it evaluated after a random pause; tests/integration/test_alerts_exactly_once.py
stops evaluators in this process at chosen points (right after a batch is stored, before its offsets are
committed).
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from collections import Counter
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from support.alerts import BTC, recording_rules, reference_firings, replayed_closes, rule_body, second_records
from support.bff import Bff, next_profile, write_exchange_info
from support.credentials import service_headers
from support.databases import new_database
from support.fake_aggregator import FakeAggregator
from support.polling import eventually
from support.stacks import bff_process_environment, serve_auth, serve_bff

from crypto_mesh.kafka import ensure_topics
from crypto_mesh.metrics import parse_samples
from support.ports import free_port
from launcher.embedded import ManagedProcess
from profile_bff.alertstore import AlertStore
from profile_bff.store import ProfileStore

#: Among the longest modules: scheduled first, so that the workers end together (tests/conftest.py).
pytestmark = pytest.mark.heavy

ALERTS = "/v2/user/alerts"
KILLS = 10
#: The evaluators' consumer group session (ms): a killed member's partition is handed on after it expires.
SESSION_TIMEOUT_MS = 1500
#: Records written per step, and the pause between steps (s): the replay plays on while an evaluator dies.
STEP_RECORDS, STEP_S = 4, 0.01
#: Sockets the user holds open on the BFF that is never killed.
SOCKETS = 2


class EvaluatorProcess:
    """A BFF process (``python -m profile_bff``) with ``env`` (its alert evaluator's topic and group among
    them), on a free port and a free metrics port; its output in ``directory``."""

    def __init__(self, env: dict[str, str], directory: Path) -> None:
        port, self.metrics_port = free_port(), free_port()
        self.process = ManagedProcess(
            "evaluator",
            [sys.executable, "-m", "profile_bff"],
            port,
            directory / f"bff-{port}.log",
            env={**env, "BFF_PORT": str(port), "BFF_METRICS_PORT": str(self.metrics_port)},
        )

    async def start(self) -> EvaluatorProcess:
        """Start it and wait until its port accepts connections."""
        await asyncio.to_thread(self.process.start, 60.0)
        return self

    def kill(self) -> None:
        """SIGKILL, and wait for the process to be gone."""
        self.process.kill()

    async def metrics(self, http: aiohttp.ClientSession) -> dict[str, float]:
        """Its ``/metrics`` samples (:func:`crypto_mesh.metrics.parse_samples`)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with http.get(url, headers=service_headers()) as resp:
            assert resp.status == 200, await resp.text()
            return parse_samples(await resp.text())

    async def holds_partition(self, http: aiohttp.ClientSession) -> bool:
        """Whether the group assigned the topic's one partition to this evaluator."""
        return (await self.metrics(http))["bff_alert_partitions"] == 1

    async def records(self, http: aiohttp.ClientSession) -> float:
        """SecondStats this evaluator has evaluated."""
        return (await self.metrics(http))["bff_alert_records_total"]


@pytest.fixture
async def stack(postgres, redis_url, tmp_path_factory, kafka_bootstrap):
    """A BFF without an evaluator (the user's sockets are here) and the environment of evaluator processes
    on the same database, Redis, auth and aggregator. A database of each test's own: the latest closes and
    close histories the evaluators store are the market's, and each test replays the recording anew."""
    exchange_info = write_exchange_info(tmp_path_factory.mktemp("exchange"))
    database = new_database(postgres, "profile")
    async with (
        serve_auth(new_database(postgres, "auth"), tmp_path_factory.mktemp("auth")) as auth,
        FakeAggregator() as aggregator,
        serve_bff(database, redis_url, auth.port, aggregator, exchange_info) as bff,
    ):
        env = {
            **bff_process_environment(database, redis_url, auth.port, aggregator.url, exchange_info, kafka_bootstrap),
            "BFF_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            "BFF_ALERTS_REFRESH_S": "0.1",
            "BFF_LOG_LEVEL": "INFO",
        }
        yield bff, env


class Replay:
    """One user's rules on the recording, created through the API, the user's sockets collecting what they are
    sent, and the evaluator processes of one topic and group."""

    def __init__(self, bff: Bff, env: dict[str, str], trade_recording: Path, directory: Path) -> None:
        self.bff = bff
        self.topic = f"alerts-killed-{uuid.uuid4().hex[:8]}"
        group = f"bff-alerts-{uuid.uuid4().hex[:8]}"
        self.env = {**env, "BFF_ALERTS_TOPIC": self.topic, "BFF_ALERTS_GROUP_ID": group}
        self.directory = directory
        self.by_symbol = replayed_closes(trade_recording)
        self.records = second_records(self.by_symbol)
        self.received: list[list[dict]] = [[] for _ in range(SOCKETS)]
        self.expected: set[tuple[int, int, Decimal]] = set()
        self.user_id = 0
        self.processes: list[EvaluatorProcess] = []

    async def prepare(self, sockets: AsyncExitStack, readers: list[asyncio.Task]) -> None:
        """The user, holding BTC, with the rules of :func:`recording_rules`; :data:`SOCKETS` sockets of theirs
        open, each read into :attr:`received` by a task of ``readers``."""
        self.user_id, auth = await self.bff.user()
        quantity = Decimal("2.5")
        await self.bff.add_coin(auth, BTC, str(quantity))
        for symbol, spec in recording_rules(self.by_symbol, quantity):
            async with self.bff.http.post(f"{self.bff.url}{ALERTS}", json=rule_body(spec), headers=auth) as resp:
                rule = await resp.json()
                assert resp.status == 201, rule
            self.expected |= {
                (rule["id"], second, close)
                for second, close in reference_firings(spec, self.by_symbol[symbol], quantity)
            }
        assert len(self.expected) > 20  # the recording crosses these thresholds often
        for received in self.received:
            ws = await sockets.enter_async_context(
                self.bff.http.ws_connect(f"{self.bff.url}/v2/user/profile/ws", headers=auth)
            )
            assert "type" not in await next_profile(ws)
            readers.append(asyncio.create_task(_collect_alerts(ws, received)))

    async def evaluator(self) -> EvaluatorProcess:
        """A new evaluator process in the group, started."""
        process = EvaluatorProcess(self.env, self.directory)
        self.processes.append(process)
        return await process.start()

    async def check(self, alerts: AlertStore) -> None:
        """Wait until every expected firing is stored and published and every socket got as many alerts;
        then the stored firings and each socket's alerts are exactly the expected ones, each once."""

        async def stored() -> set[tuple[int, int, Decimal]]:
            firings = await alerts.firings(self.user_id, before_seq=None, limit=1000)
            return {(f.rule_id, f.second, f.price) for f in firings}

        async def all_stored() -> bool:
            return await stored() >= self.expected

        async def all_published() -> bool:
            return not await alerts.unpublished(10)

        # Every expected one, then nothing else: a difference would be a lost or an invented firing.
        try:
            await eventually(all_stored, timeout_s=60, what="every expected firing stored")
        except pytest.fail.Exception:
            now = await stored()
            pytest.fail(
                f"{len(self.expected - now)} of {len(self.expected)} expected firings not stored, e.g. "
                f"{sorted(self.expected - now)[:3]}; {len(now - self.expected)} not expected; evaluator logs in "
                f"{self.directory}"
            )
        assert await stored() == self.expected
        assert len(await alerts.firings(self.user_id, before_seq=None, limit=1000)) == len(self.expected)
        await eventually(all_published, timeout_s=30, what="every firing published")
        await eventually(
            lambda: all(len(received) >= len(self.expected) for received in self.received),
            timeout_s=30,
            what="every firing on every socket",
        )
        for received in self.received:
            counts = Counter((alert["rule_id"], alert["second"], Decimal(alert["price"])) for alert in received)
            assert set(counts) == self.expected
            assert max(counts.values()) == 1

    def stop(self) -> None:
        for process in self.processes:
            process.process.stop()


async def _collect_alerts(ws: aiohttp.ClientWebSocketResponse, received: list[dict]) -> None:
    """Append every ``alert`` message of ``ws`` to ``received`` (profiles, which have no type, are skipped)."""
    async for message in ws:
        if message.type != aiohttp.WSMsgType.TEXT:
            break
        data = message.json()
        if data.get("type") == "alert":
            received.append(data)


class Writer:
    """Writes records to a topic in steps (:data:`STEP_RECORDS` every :data:`STEP_S`), as a replay plays."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        self._producer = producer
        self._topic = topic
        self._records = records
        self.written = 0

    async def write(self, count: int | None = None) -> None:
        """The next ``count`` records (default: all that are left)."""
        end = len(self._records) if count is None else min(len(self._records), self.written + count)
        while self.written < end:
            step = self._records[self.written : min(end, self.written + STEP_RECORDS)]
            for key, value in step:
                await self._producer.send(self._topic, key=key, value=value)
            await self._producer.flush()
            self.written += len(step)
            await asyncio.sleep(STEP_S)


async def kill_while_evaluating(
    process: EvaluatorProcess, writer: Writer, count: int, http: aiohttp.ClientSession, rng: random.Random
) -> None:
    """Once ``process`` holds the partition, write ``count`` records and SIGKILL it at a random moment after
    it evaluated the first of them, while the others are still being written."""
    await eventually(lambda: process.holds_partition(http), timeout_s=60, what="the partition assigned", tolerate=(aiohttp.ClientError,))
    before = await process.records(http)

    async def evaluated() -> bool:
        return await process.records(http) > before

    writing = asyncio.create_task(writer.write(count))
    try:
        await eventually(evaluated, timeout_s=30, what="records evaluated")
        await asyncio.sleep(rng.uniform(0, 0.15))
        process.kill()
    finally:
        await writing


@pytest.fixture
async def replay(stack, trade_recording, kafka_bootstrap, tmp_path):
    """A :class:`Replay` prepared, with a producer of its topic and the alert store of the BFF's database;
    yields ``(replay, writer, alerts)``."""
    bff, env = stack
    replay = Replay(bff, env, trade_recording, tmp_path)
    await ensure_topics(kafka_bootstrap, {replay.topic: 1})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False, acks="all")
    store = ProfileStore(bff.database_url)
    readers: list[asyncio.Task] = []
    async with AsyncExitStack() as sockets:
        try:
            await producer.start()
            await replay.prepare(sockets, readers)
            yield replay, Writer(producer, replay.topic, replay.records), AlertStore(store)
        finally:
            for task in readers:
                task.cancel()
            await asyncio.to_thread(replay.stop)
            await producer.stop()
            await store.close()


async def test_a_lone_evaluator_killed_ten_times_while_the_replay_plays_stores_and_delivers_each_firing_once(replay):
    replay, writer, alerts = replay
    rng = random.Random(20261130)
    # KILLS slices of the recording, each written while an evaluator works and dies; the rest after.
    size = len(replay.records) // (KILLS + 2)
    async with aiohttp.ClientSession() as http:
        for _kill in range(KILLS):
            await kill_while_evaluating(await replay.evaluator(), writer, size, http, rng)
        last = await replay.evaluator()
        await writer.write()
        await replay.check(alerts)
        assert last.process.process.poll() is None


async def test_two_evaluators_in_one_group_one_killed_store_and_deliver_each_firing_once(replay):
    replay, writer, alerts = replay
    rng = random.Random(20261201)
    first, second = await asyncio.gather(replay.evaluator(), replay.evaluator())
    async with aiohttp.ClientSession() as http:

        async def owner() -> EvaluatorProcess | None:
            holding = [p for p in (first, second) if await p.holds_partition(http)]
            return holding[0] if len(holding) == 1 else None

        killed = await eventually(owner, timeout_s=60, what="one of the two holding the partition", tolerate=(aiohttp.ClientError,))
        survivor = second if killed is first else first
        await kill_while_evaluating(killed, writer, len(replay.records) // 2, http, rng)
        await writer.write()
        await replay.check(alerts)
        assert await survivor.holds_partition(http)
