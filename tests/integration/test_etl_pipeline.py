"""ETL: KafkaMsg records in a real Kafka-protocol broker (Tansu) land in real ClickHouse (chDB), exactly once
as seen by ``FINAL`` and ``message_id``, with offsets committed only after ClickHouse acknowledged them."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import uuid
from decimal import Decimal

import clickhouse_connect
from support import polling
import pytest
from support.credentials import service_token_file
from support.kafka_helpers import committed_offset, produce_records
from support.etl import health, mini_ticker_message, sql

from crypto_mesh import jsonutil
from launcher.embedded import ManagedProcess, tansu_command
from support.ports import free_port
from etl import migrate
from etl import consumer as etl_consumer
from etl.app import start
from etl.settings import EtlSettings

START_E = 1723161256000  # 2024-08-08T23:54:16Z


def ticker(symbol: str, n: int) -> dict:
    """The KafkaMsg the aggregator writes for the ``n``-th mini-ticker second of ``symbol``."""
    return mini_ticker_message(
        symbol,
        START_E + n * 1000,
        Decimal("61837.63") + n,
        Decimal("60000.00"),
        Decimal("62000.000000000000000001"),
        Decimal("59000.00"),
    )


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    await produce_records(bootstrap, topic, [(b"btcusdt", value) for value in values])


#: ClickHouse and Kafka take their time here: longer to wait, less often to ask.
eventually = functools.partial(polling.eventually, timeout_s=20.0, interval_s=0.1)


@pytest.fixture
def etl_settings(kafka_bootstrap, clickhouse_url):
    """Factory of settings on this test's chDB directory, with a topic and a group of its own."""
    name = uuid.uuid4().hex[:8]

    def make(**overrides) -> EtlSettings:
        values = {
            "port": 0,
            "api_token_file": service_token_file(),
            "kafka_bootstrap_servers": kafka_bootstrap,
            "kafka_group_id": f"etl-{name}",
            "kafka_topic": f"tickers-{name}",
            "kafka_second_topic": f"seconds-{name}",
            "kafka_deadletter_topic": f"deadletter-{name}",
            "clickhouse_url": clickhouse_url,
            "batch_max_rows": 500,
            "batch_max_age_ms": 200,
            "retry_initial_ms": 50,
            "retry_max_ms": 500,
            "kafka_session_timeout_ms": 2000,  # Tansu holds a group join for half the session (at least 1 s)
        }
        return EtlSettings(**{**values, **overrides})

    return make


@pytest.fixture
async def etl(etl_settings):
    """Factory: ``await etl(**overrides)`` starts the service; every started one is stopped at teardown."""
    started = []

    async def make(wait_for_kafka: bool = True, **overrides):
        running = await start(etl_settings(**overrides))
        started.append(running)
        if wait_for_kafka:
            # The consumer has created the topic and joined its group, so records produced now are its.
            await eventually(lambda: _ready(running.port))
        return running

    yield make
    for running in started:
        await running.stop()


async def count_final(port: int) -> int:
    body = await sql(port, "SELECT count() FROM crypto.market_tickers FINAL")
    return int(body["rows"][0][0])


async def test_each_record_becomes_one_row_with_exact_decimals_and_utc_times(
    etl, etl_settings, kafka_bootstrap
):
    settings = etl_settings()
    running = await etl()
    messages = [ticker("btcusdt", n) for n in range(25)]
    await produce(kafka_bootstrap, settings.kafka_topic, [jsonutil.dumps(m) for m in messages])

    await eventually(lambda: _equals(count_final(running.port), 25))
    body = await sql(
        running.port,
        "SELECT message_id, event_type, event_time, receive_time, symbol, close_price, high_price,"
        " change_percent FROM crypto.market_tickers ORDER BY event_time LIMIT 1",
    )
    first = messages[0]
    assert body["types"][2] == "DateTime64(3, 'UTC')"
    assert body["types"][5] == "Decimal(38, 18)"
    message_id, event_type, event_time, receive_time, symbol, close, high, percent = body["rows"][0]
    assert (message_id, event_type, symbol) == (first["message_id"], "24hrMiniTicker", "btcusdt")
    assert event_time == "2024-08-08T23:54:16Z"
    assert receive_time == "2024-08-08T23:54:16.012000Z"  # RFC 3339, UTC, microseconds
    assert Decimal(close) == Decimal(first["c"])
    assert Decimal(high) == Decimal("62000.000000000000000001")  # all 18 decimal places kept
    assert Decimal(percent) == Decimal(first["change_percent"])
    # The offsets are committed after the insert is acknowledged: just after the rows can be read.
    await eventually(
        lambda: _equals(committed_offset(kafka_bootstrap, settings.kafka_group_id, settings.kafka_topic), 25)
    )
    status, report = await health(running.port)
    assert (status, report["status"], report["rows_inserted"]) == (200, "ok", 25)
    # When the first record was taken and the last batch committed (what benchmarks/bench_etl.py times).
    stats = running.service.consumer.stats
    assert stats.first_taken_at is not None and stats.last_committed_at is not None
    assert stats.first_taken_at < stats.last_committed_at


async def _ready(port: int) -> bool:
    return (await health(port))[0] == 200


async def _equals(awaitable, expected) -> bool:
    return await awaitable == expected


async def test_redelivered_records_are_counted_once(etl, etl_settings, kafka_bootstrap):
    settings = etl_settings()
    running = await etl()
    values = [jsonutil.dumps(ticker("ethusdt", n)) for n in range(10)]
    await produce(kafka_bootstrap, settings.kafka_topic, values)
    await eventually(lambda: _equals(count_final(running.port), 10))

    await produce(kafka_bootstrap, settings.kafka_topic, values)  # the same records again, at new offsets
    await eventually(
        lambda: _equals(committed_offset(kafka_bootstrap, settings.kafka_group_id, settings.kafka_topic), 20)
    )
    body = await sql(
        running.port,
        "SELECT (SELECT count() FROM crypto.market_tickers FINAL), uniqExact(message_id)"
        " FROM crypto.market_tickers",
    )
    assert body["rows"] == [[10, 10]]


async def test_an_insert_repeated_with_its_deduplication_token_is_dropped_by_clickhouse(etl):
    running = await etl(
        wait_for_kafka=False, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}"
    )  # no Kafka needed
    from etl.tickers import decode_record

    rows = [decode_record(jsonutil.dumps(ticker("btcusdt", n))) for n in range(3)]
    store = running.service.store
    await store.insert_tickers(rows, "tickers:0:0-2:retry")
    await store.insert_tickers(rows, "tickers:0:0-2:retry")  # the acknowledgement was lost; same batch again
    body = await sql(running.port, "SELECT count() FROM crypto.market_tickers")  # no FINAL: raw rows
    assert body["rows"] == [[3]]


async def test_a_malformed_record_is_dead_lettered_and_counted_and_the_valid_ones_land(
    etl, etl_settings, kafka_bootstrap
):
    settings = etl_settings()
    running = await etl()
    bad_price = {**ticker("btcusdt", 2), "c": "not-a-number"}
    missing_field = {k: v for k, v in ticker("btcusdt", 3).items() if k != "E"}
    values = [
        jsonutil.dumps(ticker("btcusdt", 0)),
        b"{not json",
        jsonutil.dumps(bad_price),
        jsonutil.dumps(missing_field),
        jsonutil.dumps(ticker("btcusdt", 1)),
    ]
    await produce(kafka_bootstrap, settings.kafka_topic, values)

    await eventually(
        lambda: _equals(committed_offset(kafka_bootstrap, settings.kafka_group_id, settings.kafka_topic), 5)
    )
    body = await sql(running.port, "SELECT event_time FROM crypto.market_tickers FINAL ORDER BY event_time")
    assert body["rows"] == [["2024-08-08T23:54:16Z"], ["2024-08-08T23:54:17Z"]]
    _, report = await health(running.port)
    assert report["records_dead_lettered"] == 3


async def test_offsets_are_committed_only_after_clickhouse_acknowledged_the_insert(
    etl, etl_settings, kafka_bootstrap
):
    settings = etl_settings()
    running = await etl()
    await produce(
        kafka_bootstrap, settings.kafka_topic, [jsonutil.dumps(ticker("btcusdt", n)) for n in range(5)]
    )
    await eventually(
        lambda: _equals(committed_offset(kafka_bootstrap, settings.kafka_group_id, settings.kafka_topic), 5)
    )

    # ClickHouse refuses inserts while the table is away.
    await running.service.store.command("RENAME TABLE crypto.market_tickers TO crypto.market_tickers_away")
    await produce(
        kafka_bootstrap, settings.kafka_topic, [jsonutil.dumps(ticker("btcusdt", n)) for n in range(5, 8)]
    )
    await eventually(lambda: _report_field(running.port, "insert_failures", at_least=2))
    status, report = await health(running.port)
    assert (status, report["status"], report["clickhouse"]) == (503, "degraded", "failing")
    assert await committed_offset(kafka_bootstrap, settings.kafka_group_id, settings.kafka_topic) == 5

    await running.service.store.command("RENAME TABLE crypto.market_tickers_away TO crypto.market_tickers")
    await eventually(
        lambda: _equals(committed_offset(kafka_bootstrap, settings.kafka_group_id, settings.kafka_topic), 8)
    )
    assert await count_final(running.port) == 8
    assert (await health(running.port))[0] == 200


async def _report_field(port: int, name: str, at_least: int) -> bool:
    return (await health(port))[1][name] >= at_least


async def test_stopping_flushes_and_commits_the_open_batch(etl_settings, kafka_bootstrap):
    settings = etl_settings(batch_max_age_ms=600_000)  # the batch would never close on its own
    running = await start(settings)
    try:
        await eventually(lambda: _ready(running.port))
        await produce(
            kafka_bootstrap, settings.kafka_topic, [jsonutil.dumps(ticker("btcusdt", n)) for n in range(4)]
        )
        await asyncio.sleep(1.5)  # taken into the open batch
        assert await count_final(running.port) == 0
    finally:
        await running.stop()
    assert await committed_offset(kafka_bootstrap, settings.kafka_group_id, settings.kafka_topic) == 4

    again = await start(settings)
    try:
        assert await count_final(again.port) == 4
    finally:
        await again.stop()


async def test_start_does_not_wait_for_kafka_and_joins_it_once_it_is_up(etl, tmp_path):
    kafka_port = free_port()  # nothing listens there yet
    running = await etl(wait_for_kafka=False, kafka_bootstrap_servers=f"127.0.0.1:{kafka_port}")
    status, report = await health(running.port)
    assert (status, report["status"], report["kafka"], report["clickhouse"]) == (
        503,
        "starting",
        "connecting",
        "ok",
    )
    assert (await sql(running.port, "SELECT 1"))["rows"] == [[1]]  # analysts are served meanwhile

    broker = ManagedProcess("tansu-late", tansu_command(kafka_port), kafka_port, tmp_path / "tansu.log")
    broker.start()
    try:
        await eventually(lambda: _ready(running.port))
    finally:
        await running.stop()
        broker.stop()


async def test_migrations_are_applied_once_and_recorded(etl_settings, clickhouse_url):
    settings = etl_settings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    for _ in range(2):
        running = await start(settings)
        try:
            body = await sql(running.port, "SELECT version, name, checksum FROM crypto.schema_migrations")
        finally:
            await running.stop()
        sha256 = [
            hashlib.sha256((migrate.MIGRATIONS_DIR / name).read_bytes()).hexdigest()
            for name in ("0001_market_tickers.sql", "0002_price_seconds.sql", "0003_incomplete_seconds.sql")
        ]
        assert sorted(body["rows"]) == [
            [1, "market_tickers", sha256[0]],
            [2, "price_seconds", sha256[1]],
            [3, "incomplete_seconds", sha256[2]],
        ]
    client = clickhouse_connect.get_client(dsn=clickhouse_url)  # system.* is not for analysts' SQL
    try:
        engine = client.query(
            "SELECT engine, partition_key, sorting_key FROM system.tables "
            "WHERE database = 'crypto' AND name = 'market_tickers'"
        ).result_rows
    finally:
        client.close()
    assert engine == [("ReplacingMergeTree", "toYYYYMM(event_time)", "symbol, event_time, message_id")]


def test_a_migration_changed_after_it_was_applied_is_an_error(clickhouse_url):
    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    try:
        migrations = migrate.load_migrations()
        assert migrate.apply_migrations(client, migrations) == [1, 2, 3]
        assert migrate.apply_migrations(client, migrations) == []
        edited = [migrations[0].__class__(1, "market_tickers", migrations[0].statements, "0" * 64), *migrations[1:]]
        with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
            migrate.apply_migrations(client, edited)
    finally:
        client.close()


async def test_a_stop_while_a_commit_waits_on_a_dead_broker_waits_only_the_short_stop_wait(
    etl_settings, own_kafka, monkeypatch
):
    # Only the stop can end the commit's wait: with the long wait in force the stop would take an hour.
    monkeypatch.setattr(etl_consumer, "_COMMIT_TIMEOUT_S", 3600.0)
    bootstrap = f"127.0.0.1:{own_kafka.port}"
    settings = etl_settings(kafka_bootstrap_servers=bootstrap, batch_max_age_ms=1500)
    running = await start(settings)
    stats = running.service.consumer.stats
    try:
        await eventually(lambda: _ready(running.port))
        values = [jsonutil.dumps(ticker("btcusdt", n)) for n in range(4)]
        await produce(bootstrap, settings.kafka_topic, values)
        await eventually(lambda: stats.records_held == 4, what="the records taken into the open batch")
        own_kafka.kill()  # before the batch closes: its insert lands, its commit finds no broker
        await eventually(lambda: stats.rows_inserted == 4, what="the batch inserted, its commit waiting")
        assert stats.batches_committed == 0
    finally:
        await asyncio.wait_for(running.stop(), 60)  # a bound that only a hang reaches
    # The stop cut the commit's wait to _STOP_COMMIT_TIMEOUT_S, which ended it as a failed commit; had the
    # wait gone on, the service's stop would have cancelled the loop after its grace, no failure counted.
    assert (stats.batches_committed, stats.commit_failures) == (0, 1)
