"""The analytical path of SecondStats: the aggregator's producer → Kafka ``binance.second`` → ETL → chDB
``crypto.price_seconds`` → 1-minute candles; dead letters; ClickHouse refusing inserts for a while."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import base64
import functools
import gzip
import time
from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from support import polling
import pytest
from aiokafka import AIOKafkaConsumer
from support.kafka_helpers import committed_offset, produce_records
from support.etl import health, sql_rows
from support.market import recorded_secondstats
from support.stacks import etl_settings

from aggregator.second_topic import SecondProducer, second_message_id, second_record
from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil
from etl.app import start
from etl.settings import EtlSettings

START_MS = 1723161240000  # 2024-08-08T23:54:00Z


def stat(symbol: str, n: int, volume: str = "2") -> SecondStat:
    price = Decimal("61837.63") + n
    v = Decimal(volume)
    return SecondStat(
        symbol, START_MS + n * 1000, price - 1, price + 2, price - 3, price, v, price * v, 4, 1000 + n
    )


#: ClickHouse and Kafka take their time here: longer to wait, less often to ask.
eventually = functools.partial(polling.eventually, timeout_s=20.0, interval_s=0.1)


@pytest.fixture
def settings(kafka_bootstrap, clickhouse_url) -> EtlSettings:
    """Settings on this test's chDB directory, with topics and a group of its own (one partition each, so
    that offsets read as record positions), small batches and short retries."""
    return etl_settings(
        kafka_bootstrap,
        clickhouse_url,
        batch_max_rows=50,
        batch_max_age_ms=100,
        retry_initial_ms=50,
        retry_max_ms=300,
        kafka_session_timeout_ms=2000,  # the embedded mesh's: Tansu answers a join after 1 s
    )


@pytest.fixture
async def etl(settings):
    running = await start(settings)
    await eventually(lambda: _status_is(running.port, 200))
    yield running
    await running.stop()


async def _status_is(port: int, status: int) -> bool:
    return (await health(port))[0] == status


def rows_second(second_ms: int) -> str:
    """A ``second`` as the SQL API answers it (ISO 8601 UTC, whole seconds)."""
    return datetime.datetime.fromtimestamp(second_ms / 1000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def second_value(s: SecondStat) -> tuple[bytes, bytes]:
    return s.symbol.encode(), jsonutil.dumps(second_record(s))


#: The trades of the first second, (trade id, price, quantity): their VWAP, 61837.130000005, lies exactly
#: halfway between two steps of 1E-8, so the row shows which way it was rounded.
FIRST_SECOND_TRADES = [
    (997, "61836.63", "0.5"),
    (998, "61839.63", "0.5"),
    (999, "61834.63", "0.5"),
    (1000, "61837.63000002", "0.5"),
]


def independent_vwap(trades) -> Decimal:
    """Σ price × quantity / Σ quantity, rounded half-even to 8 decimal places (aggregator/secondstat.py)."""
    with localcontext() as exact:
        exact.prec = 60
        volume = sum((Decimal(q) for _, _, q in trades), Decimal(0))
        quote_volume = sum((Decimal(p) * Decimal(q) for _, p, q in trades), Decimal(0))
        return (quote_volume / volume).quantize(Decimal("0.00000001"), rounding=ROUND_HALF_EVEN)


async def test_every_secondstat_becomes_one_exact_row_of_price_seconds(etl, settings, kafka_bootstrap):
    prices = [Decimal(p) for _, p, _ in FIRST_SECOND_TRADES]
    first = SecondStat(
        "btcusdt",
        START_MS,
        prices[0],
        max(prices),
        min(prices),
        prices[-1],
        sum((Decimal(q) for _, _, q in FIRST_SECOND_TRADES), Decimal(0)),
        sum((Decimal(p) * Decimal(q) for _, p, q in FIRST_SECOND_TRADES), Decimal(0)),
        len(FIRST_SECOND_TRADES),
        FIRST_SECOND_TRADES[-1][0],
    )
    producer = SecondProducer(kafka_bootstrap, enable_idempotence=False, topic=settings.kafka_second_topic)
    sender = asyncio.create_task(producer.run())
    try:
        # One second published incomplete ("x": true): its row says so, the others do not.
        stats = [first] + [dataclasses.replace(stat("btcusdt", n), incomplete=n == 7) for n in range(1, 30)]
        for s in stats:
            producer.submit(s)
        await eventually(lambda: _count_is(etl.port, "crypto.price_seconds", 30))
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await producer.close()
    rows = await sql_rows(
        etl.port,
        "SELECT message_id, symbol, second, open, high, low, close, volume, quote_volume, vwap, trade_count,"
        " close_trade_id FROM crypto.price_seconds ORDER BY second LIMIT 1",
    )
    marked = await sql_rows(etl.port, "SELECT second FROM crypto.price_seconds WHERE incomplete")
    assert marked == [[rows_second(stats[7].second_ms)]]
    vwap = independent_vwap(FIRST_SECOND_TRADES)
    assert vwap == Decimal("61837.13000000")
    assert rows == [
        [
            second_message_id("btcusdt", START_MS),
            "btcusdt",
            "2024-08-08T23:54:00Z",
            "61836.630000000000000000",
            "61839.630000000000000000",
            "61834.630000000000000000",
            "61837.630000020000000000",
            "2.000000000000000000",
            "123674.260000010000000000",
            f"{vwap:.18f}",
            4,
            1000,
        ]
    ]


async def _count_is(port: int, table: str, expected: int) -> bool:
    [[count]] = await sql_rows(port, f"SELECT count() FROM {table} FINAL")
    return int(count) == expected


async def test_a_poison_record_goes_to_the_dead_letter_topic_and_the_records_around_it_land(
    etl, settings, kafka_bootstrap
):
    poison = b'{"message_id": "not a uuid", "s": "btcusdt"'
    bad_price = jsonutil.dumps({**second_record(stat("btcusdt", 2)), "p": "-1"})
    values = [
        second_value(stat("btcusdt", 0)),
        (b"btcusdt", poison),
        (b"btcusdt", bad_price),
        second_value(stat("btcusdt", 1)),
    ]
    await produce_records(kafka_bootstrap, settings.kafka_second_topic, values)

    await eventually(lambda: _committed_is(kafka_bootstrap, settings, settings.kafka_second_topic, 4))
    rows = await sql_rows(etl.port, "SELECT second FROM crypto.price_seconds FINAL ORDER BY second")
    assert rows == [["2024-08-08T23:54:00Z"], ["2024-08-08T23:54:01Z"]]

    letters = await read_all(kafka_bootstrap, settings.kafka_deadletter_topic, 2)
    envelopes = [jsonutil.loads(letter.value) for letter in letters]
    assert [(e["topic"], e["partition"], e["offset"]) for e in envelopes] == [
        (settings.kafka_second_topic, 0, 1),
        (settings.kafka_second_topic, 0, 2),
    ]
    assert base64.b64decode(envelopes[0]["value"]) == poison  # the original bytes, whatever they are
    assert base64.b64decode(envelopes[0]["key"]) == b"btcusdt"
    assert envelopes[0]["reason"].startswith("value is not JSON")
    assert envelopes[1]["reason"] == "'p' must not be negative (column Decimal(38, 18))"
    assert dict(letters[1].headers)["dlq.reason"] == envelopes[1]["reason"].encode()
    assert (await health(etl.port))[1]["records_dead_lettered"] == 2


async def _committed_is(bootstrap: str, settings: EtlSettings, topic: str, offset: int) -> bool:
    return await committed_offset(bootstrap, settings.kafka_group_id, topic) == offset


async def read_all(bootstrap: str, topic: str, count: int) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list = []
    try:
        deadline = time.monotonic() + 10
        while len(records) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda record: record.offset)


async def test_while_clickhouse_refuses_inserts_only_the_failing_batch_is_held_and_everything_lands_after(
    etl, settings, kafka_bootstrap
):
    # ClickHouse refuses every insert into price_seconds while the table is away: the ETL sees the errors
    # a failing server gives, with its process, Kafka and the chDB engine untouched.
    await etl.service.store.command("RENAME TABLE crypto.price_seconds TO crypto.price_seconds_away")
    stats = [stat("ethusdt", n) for n in range(6 * settings.batch_max_rows)]
    await produce_records(kafka_bootstrap, settings.kafka_second_topic, [second_value(s) for s in stats])
    await eventually(lambda: _report_at_least(etl.port, "insert_failures", 4))

    # While ClickHouse fails, only the failing batch is held: the batch filled during its first attempt went
    # back to Kafka, consumption is paused, the rest waits in Kafka.
    for _ in range(5):
        status, report = await health(etl.port)
        assert (status, report["clickhouse"]) == (503, "failing")
        assert 0 < report["records_held"] <= settings.batch_max_rows
        await asyncio.sleep(0.1)
    # Before the failure was known: one batch being inserted and the next one filling, never more.
    assert report["max_records_held"] <= 2 * settings.batch_max_rows
    assert await committed_offset(kafka_bootstrap, settings.kafka_group_id, settings.kafka_second_topic) is None

    await etl.service.store.command("RENAME TABLE crypto.price_seconds_away TO crypto.price_seconds")
    await eventually(
        lambda: _committed_is(kafka_bootstrap, settings, settings.kafka_second_topic, len(stats))
    )
    [[final_rows, ids]] = await sql_rows(
        etl.port,
        "SELECT (SELECT count() FROM crypto.price_seconds FINAL), uniqExact(message_id) FROM crypto.price_seconds",
    )
    assert (final_rows, ids) == (len(stats), len(stats))
    status, report = await health(etl.port)
    assert status == 200
    assert settings.batch_max_rows <= report["max_records_held"] <= 2 * settings.batch_max_rows


async def _report_at_least(port: int, name: str, minimum: int) -> bool:
    return (await health(port))[1][name] >= minimum


def independent_candles(recording) -> dict[tuple[str, str], tuple]:
    """Per symbol and minute, straight from the recorded trades: (open, high, low, close, volume, quote
    volume, trade count), open and close by trade id. No code of the aggregator or the ETL is used."""
    trades = defaultdict(list)
    with gzip.open(recording, "rb") as lines:
        for line in lines:
            trade = jsonutil.loads(line)["data"]
            minute_ms = trade["T"] - trade["T"] % 60_000
            trades[(trade["s"].lower(), minute_ms)].append(
                (trade["t"], Decimal(trade["p"]), Decimal(trade["q"]))
            )
    candles = {}
    for (symbol, minute_ms), items in trades.items():
        items.sort()
        prices = [price for _, price, _ in items]
        minute = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(minute_ms // 1000))
        candles[(symbol, minute)] = (
            prices[0],
            max(prices),
            min(prices),
            prices[-1],
            sum(quantity for _, _, quantity in items),
            sum(price * quantity for _, price, quantity in items),
            len(items),
        )
    return candles


async def test_candles_from_price_seconds_equal_candles_computed_from_the_recorded_trades(
    etl, settings, kafka_bootstrap, trade_recording
):
    stats = recorded_secondstats(trade_recording)
    values = [second_value(s) for s in stats]
    # Every record twice, at other offsets and in other batches: the insert token cannot recognise these
    # duplicates, so the candles must not count a second twice by themselves.
    await produce_records(kafka_bootstrap, settings.kafka_second_topic, values + values[: len(values) // 2])
    await eventually(
        lambda: _committed_is(kafka_bootstrap, settings, settings.kafka_second_topic, len(values) * 3 // 2),
        timeout_s=30,
    )

    rows = await sql_rows(
        etl.port,
        "SELECT symbol, minute, open, high, low, close, volume, quote_volume, trade_count FROM crypto.candles_1m"
        " ORDER BY symbol, minute",
    )
    stored = {
        (symbol, minute): (*(Decimal(v) for v in values[:6]), count)
        for symbol, minute, *values, count in ([*row[:8], row[8]] for row in rows)
    }
    expected = independent_candles(trade_recording)
    assert len(expected) > 20
    assert stored == expected
    [[final]] = await sql_rows(etl.port, "SELECT count() FROM crypto.price_seconds FINAL")
    assert final == len(stats)
