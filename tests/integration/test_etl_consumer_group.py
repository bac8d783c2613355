"""Two ETL processes (``python -m etl``, real OS processes) in one consumer group over topics of four
partitions; while the aggregator's SecondStat producer and a mini-ticker producer keep writing, one member
or the other is killed with SIGKILL and started again, so its partitions move to the survivor (uncommitted
batches redelivered there) and back. Afterwards every produced record is stored, none twice.

Each ETL has its own chDB directory: chDB is an embedded engine that one process opens at a time, and no
ClickHouse server runs on this machine (Debian's ``clickhouse-server`` package is 18.16, from 2018: no
``DateTime64``, no Arrow inserts, which the ETL needs; there is no container engine). So the test checks
what one shared ClickHouse would hold in two steps: while the ETLs run, through each one's ``POST /v1/sql``,
that the two stores together hold every record, each store one row per record it holds; after both have
stopped, that one chDB store given every row of the other (both tables, as the ETLs wrote them) holds
exactly one row per produced record after folding (``FINAL``), as a shared server would.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from support.etl import sql_rows
from support.etl_processes import (
    EtlProcess,
    finish_producing,
    healthy,
    kill_test_environment,
    produce_seconds,
    produce_tickers,
    stop_producing,
    wait_for,
)

from aggregator.second_topic import SecondProducer
from support.ports import free_port
from launcher.embedded import chdb_url

pytestmark = pytest.mark.heavy

KILLS = 4
PARTITIONS = 4
#: Eight symbols, so that records land in every partition of both topics (keys are symbols).
SYMBOLS = ("btcusdt", "ethusdt", "dotusdt", "bnbusdt", "solusdt", "xrpusdt", "adausdt", "ltcusdt")
TABLES = ("crypto.price_seconds", "crypto.market_tickers")

# Run in a process of its own (chDB opens one directory per process): ``export DIR OUT`` writes every row of
# both tables of the store in DIR as Arrow IPC files OUT/<table>.arrow; ``merge DIR OUT`` inserts those rows
# into the store in DIR and prints, per table, [rows FINAL, distinct message ids, raw rows, message ids].
_STORE_SCRIPT = """
import json, sys
from pathlib import Path
import clickhouse_connect, pyarrow as pa
from launcher.embedded import chdb_url
mode, directory, out = sys.argv[1:4]
tables = sys.argv[4:]
client = clickhouse_connect.get_client(dsn=chdb_url(Path(directory)))
report = {}
for table in tables:
    path = f"{out}/{table}.arrow"
    if mode == "export":
        rows = client.query_arrow(f"SELECT * FROM {table}")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, rows.schema) as writer:
            writer.write_table(rows)
    else:
        with pa.memory_map(path) as source:
            client.insert_arrow(table, pa.ipc.open_file(source).read_all())
        [[final, distinct, raw]] = client.query(
            f"SELECT (SELECT count() FROM {table} FINAL), uniqExact(message_id), count() FROM {table}"
        ).result_rows
        ids = [row[0] for row in client.query(f"SELECT message_id FROM {table} FINAL").result_rows]
        report[table] = [final, distinct, raw, ids]
client.close()
print(json.dumps(report))
"""


def _store(mode: str, directory: Path, out: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _STORE_SCRIPT, mode, str(directory), str(out), *TABLES],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def _stored(etls: list[EtlProcess], table: str) -> list[list[str]]:
    """The message ids of ``table`` (after folding) in each ETL's store."""
    return [
        [row[0] for row in await sql_rows(etl.port, f"SELECT message_id FROM {table} FINAL")] for etl in etls
    ]


async def test_two_etls_in_one_group_killed_while_producing_store_each_record_once(kafka_bootstrap, tmp_path):
    name = uuid.uuid4().hex[:8]
    ticker_topic, second_topic = f"tickers-{name}", f"seconds-{name}"
    common = {
        **kill_test_environment(kafka_bootstrap, name),
        "ETL_KAFKA_TOPIC_PARTITIONS": str(PARTITIONS),
        "ETL_SQL_MAX_ROWS": "1000000",
    }
    etls = [
        EtlProcess(
            {**common, "ETL_PORT": str(free_port()), "ETL_CLICKHOUSE_URL": chdb_url(tmp_path / f"chdb-{i}")},
            tmp_path / f"etl-{i}.log",
        )
        for i in range(2)
    ]
    seconds = SecondProducer(kafka_bootstrap, enable_idempotence=False, topic=second_topic)
    sender = asyncio.create_task(seconds.run())
    stop = asyncio.Event()
    tickers_sent: list[str] = []
    seconds_submitted: list[str] = []
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    producers: list[asyncio.Task] = []
    try:
        for etl in etls:
            etl.start()
        for etl in etls:
            await wait_for(lambda etl=etl: healthy(etl.port), 30, "ETL consuming")
        producers += [
            asyncio.create_task(produce_tickers(kafka_bootstrap, ticker_topic, stop, tickers_sent, SYMBOLS)),
            asyncio.create_task(produce_seconds(seconds, stop, seconds_submitted, SYMBOLS)),
        ]
        for kill in range(KILLS):
            victim = etls[kill % 2]
            # At a random point of consuming, inserting and committing, the survivor going on meanwhile.
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            victim.kill()
            # The survivor takes the victim's partitions once its session has timed out.
            await asyncio.sleep(rng.uniform(0.0, 2.0))
            victim.start()
            await wait_for(lambda victim=victim: healthy(victim.port), 30, "killed ETL back in the group")
        await finish_producing(stop, producers, seconds, seconds_submitted)

        expected = {"crypto.price_seconds": set(seconds_submitted), "crypto.market_tickers": set(tickers_sent)}
        for table, ids in expected.items():

            async def caught_up(table=table, ids=ids) -> bool:
                return ids <= set().union(*await _stored(etls, table))

            await wait_for(caught_up, 30, f"{table} caught up in the two stores")
        for table, ids in expected.items():
            stores = await _stored(etls, table)
            context = f"{table}: seed {seed}"
            # Both members loaded records, each store one row per record it holds (after folding).
            assert all(stores), context
            assert [len(store) for store in stores] == [len(set(store)) for store in stores], context
            assert set().union(*stores) == ids, context
        for etl in etls:
            assert etl.terminate() == 0

        # One store given the other's rows: what a ClickHouse shared by the two members holds.
        _store("export", tmp_path / "chdb-1", tmp_path)
        merged = _store("merge", tmp_path / "chdb-0", tmp_path)
        for table, ids in expected.items():
            final_rows, distinct_ids, raw_rows, stored = merged[table]
            context = f"{table}: seed {seed}, {raw_rows} raw rows before folding"
            assert (final_rows, distinct_ids) == (len(ids), len(ids)), context
            assert set(stored) == ids, context
    finally:
        await stop_producing(stop, producers, sender, seconds)
        for etl in etls:
            etl.kill_if_running()
