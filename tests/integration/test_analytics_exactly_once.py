"""Exactly once, in effect: the ETL (``python -m etl``, a real process on real chDB) is killed with SIGKILL at
random points ten times while the aggregator's SecondStat producer and a mini-ticker producer keep writing
to Kafka; afterwards each table holds exactly one row per produced record, by count and by message_id.

chDB is opened by one process at a time, so each table is read through the last ETL's ``POST /v1/sql``.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import aiohttp
import pytest
from support.etl import sql_rows
from support.etl_processes import (
    EtlProcess,
    counts_reach,
    finish_producing,
    healthy,
    kill_test_environment,
    produce_seconds,
    produce_tickers,
    stop_producing,
    stat,
    wait_for,
)

from aggregator.second_topic import SecondProducer
from support.ports import free_port
from launcher.embedded import chdb_url

#: Among the longest modules: scheduled first, so that the workers end together (tests/conftest.py).
pytestmark = pytest.mark.heavy

KILLS = 10


async def test_ten_kill_9s_of_the_etl_while_producing_leave_exactly_one_row_per_record(
    kafka_bootstrap, tmp_path
):
    name = uuid.uuid4().hex[:8]
    ticker_topic, second_topic = f"tickers-{name}", f"seconds-{name}"
    port = free_port()
    etl = EtlProcess(
        {
            **kill_test_environment(kafka_bootstrap, name),
            "ETL_PORT": str(port),
            "ETL_CLICKHOUSE_URL": chdb_url(tmp_path / "chdb"),
        },
        tmp_path / "etl.log",
    )
    seconds = SecondProducer(kafka_bootstrap, enable_idempotence=False, topic=second_topic)
    sender = asyncio.create_task(seconds.run())
    stop = asyncio.Event()
    tickers_sent: list[str] = []
    seconds_submitted: list[str] = []
    producers = [
        asyncio.create_task(produce_tickers(kafka_bootstrap, ticker_topic, stop, tickers_sent)),
        asyncio.create_task(produce_seconds(seconds, stop, seconds_submitted)),
    ]
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    try:
        for kill in range(KILLS):
            etl.start()
            if kill % 3 == 0:
                # Some kills in the middle of start-up: migrations, joining the group.
                await asyncio.sleep(rng.uniform(0.2, 2.0))
            else:
                # The others at a random point of consuming, inserting and committing.
                await wait_for(lambda: healthy(port), 30, "ETL consuming")
                await asyncio.sleep(rng.uniform(0.0, 1.0))
            etl.kill()
        await finish_producing(stop, producers, seconds, seconds_submitted)

        etl.start()
        await wait_for(lambda: healthy(port), 30, "ETL consuming")
        expected = {
            "crypto.price_seconds": set(seconds_submitted),
            "crypto.market_tickers": set(tickers_sent),
        }
        for table, ids in expected.items():
            await wait_for(
                lambda table=table, ids=ids: counts_reach(port, table, len(ids)), 60, f"{table} caught up"
            )
        for table, ids in expected.items():
            [[final_rows, distinct_ids, raw_rows]] = await sql_rows(
                port,
                f"SELECT (SELECT count() FROM {table} FINAL), uniqExact(message_id), count() FROM {table}",
            )
            stored = {row[0] for row in await sql_rows(port, f"SELECT message_id FROM {table} FINAL")}
            context = f"{table}: seed {seed}, {raw_rows} raw rows before merging"
            assert (final_rows, distinct_ids) == (len(ids), len(ids)), context
            assert stored == ids, context
            assert raw_rows >= len(ids), context
        assert etl.terminate() == 0
    finally:
        await stop_producing(stop, producers, sender, seconds)
        etl.kill_if_running()



async def test_with_clickhouse_unreachable_the_etl_takes_nothing_and_catches_up_once_it_is_back(
    kafka_bootstrap, tmp_path
):
    # chDB cannot be stopped from outside the process that embeds it, so "unreachable" is a ClickHouse HTTP
    # URL where nothing listens (connection refused), fixed by a restart with the real URL.
    name = uuid.uuid4().hex[:8]
    port = free_port()
    env = {**kill_test_environment(kafka_bootstrap, name), "ETL_PORT": str(port), "ETL_RETRY_MAX_MS": "300"}
    down = EtlProcess({**env, "ETL_CLICKHOUSE_URL": f"http://127.0.0.1:{free_port()}"}, tmp_path / "down.log")
    down.start()
    try:
        status, report = await wait_for(lambda: _health_report(port), 30, "ETL answering")
        assert (status, report["clickhouse"]) == (503, "connecting")
        producer = SecondProducer(
            kafka_bootstrap, enable_idempotence=False, topic=env["ETL_KAFKA_SECOND_TOPIC"]
        )
        sender = asyncio.create_task(producer.run())
        try:
            for n in range(500):
                producer.submit(stat("btcusdt", n))
            await wait_for(lambda: producer.sent == 500, 20, "records produced")
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await producer.close()
        await asyncio.sleep(1.0)  # retrying meanwhile
        status, report = await _health_report(port)
        assert (status, report["rows_inserted"], report["records_held"]) == (503, 0, 0)
        assert down.terminate() == 0  # stops cleanly although ClickHouse never answered
    finally:
        if down.process.poll() is None:
            down.kill()

    up = EtlProcess({**env, "ETL_CLICKHOUSE_URL": chdb_url(tmp_path / "chdb")}, tmp_path / "up.log")
    up.start()
    try:
        await wait_for(lambda: healthy(port), 30, "ETL consuming")
        await wait_for(lambda: counts_reach(port, "crypto.price_seconds", 500), 30, "caught up")
        [[rows, ids]] = await sql_rows(port, "SELECT count(), uniqExact(message_id) FROM crypto.price_seconds")
        assert (rows, ids) == (500, 500)
        assert up.terminate() == 0
    finally:
        if up.process.poll() is None:
            up.kill()


async def _health_report(port: int) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status, await response.json()
