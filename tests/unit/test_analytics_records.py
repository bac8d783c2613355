"""The ``binance.second`` record: what the aggregator writes (aggregator/second_topic.py) and how the ETL
decodes it into a row of ``crypto.price_seconds`` (etl/seconds.py), valid or not."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from aggregator.second_topic import fan_out, second_message_id, second_record
from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil
from etl.records import InvalidRecord
from etl.seconds import COLUMNS, decode_second

STAT = SecondStat(
    "btcusdt",
    1723161255000,
    Decimal("61830.00"),
    Decimal("61840.10"),
    Decimal("61829.99"),
    Decimal("61837.63"),
    Decimal("1.23400000"),
    Decimal("76300.1200000000"),
    42,
    3735683259,
)


def test_the_record_is_the_secondstat_json_with_a_deterministic_message_id():
    record = second_record(STAT)
    assert record["message_id"] == str(uuid.uuid5(uuid.NAMESPACE_URL, "binance.second/btcusdt/1723161255000"))
    assert (
        record["message_id"]
        == second_message_id("btcusdt", 1723161255000)
        == second_record(STAT)["message_id"]
    )
    assert {key: value for key, value in record.items() if key != "message_id"} == STAT.to_json()
    assert jsonutil.loads(jsonutil.dumps(record))["p"] == "61837.63"  # decimals travel as strings


def test_a_record_of_the_aggregator_becomes_a_row_with_exact_decimal_text():
    row = decode_second(jsonutil.dumps(second_record(STAT)))
    assert len(row) == len(COLUMNS)
    assert (row.message_id, row.symbol, row.second) == (
        second_message_id("btcusdt", 1723161255000),
        "btcusdt",
        1723161255000,
    )
    assert (row.open, row.high, row.low, row.close) == ("61830.00", "61840.10", "61829.99", "61837.63")
    assert (row.volume, row.quote_volume, row.vwap) == ("1.23400000", "76300.1200000000", str(STAT.vwap))
    assert (row.trade_count, row.close_trade_id, row.incomplete) == (42, 3735683259, False)


def test_a_second_published_incomplete_keeps_its_mark_in_the_row():
    assert decode_second(fields(x=True)).incomplete is True
    assert decode_second(fields(x=None)).incomplete is False  # null reads as absent


def test_uncommon_but_valid_forms_are_rewritten_canonically():
    record = {
        **second_record(STAT),
        "s": "BTCUSDT",
        "message_id": str(uuid.UUID(second_record(STAT)["message_id"])).upper(),
        "v": "1.234E0",
    }
    row = decode_second(jsonutil.dumps(record))
    assert (row.symbol, row.message_id, row.volume) == (
        "btcusdt",
        second_record(STAT)["message_id"],
        "1.234000000000000000",
    )


def fields(**changes) -> bytes:
    return jsonutil.dumps({**jsonutil.loads(jsonutil.dumps(second_record(STAT))), **changes})


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (fields(t=1723161255001), "'t' must be the start of a second"),
        (fields(t=True), "'t' must be Unix milliseconds"),
        (fields(p="-1"), "'p' must not be negative"),
        (fields(p=61837.63), "'p' must be a decimal string"),
        (fields(o="1\t2"), "'o' is not a decimal"),  # a tab cannot slip through the one-pattern check
        (fields(q="0.0000000000000000001"), "'q' has more than 18 decimal places"),
        (fields(h="123456789012345678901"), "'h' has more than 20 integer digits"),
        (fields(n=0), "'n' must be an integer from 1"),
        (fields(i=-1), "'i' must be an integer from 0"),
        (fields(s="btc/usdt"), "'s': symbol must be"),
        (fields(message_id="x"), "'message_id' must be a UUID"),
        (fields(x=1), "'x' must be true or false"),
        (
            jsonutil.dumps({k: v for k, v in second_record(STAT).items() if k != "vwap"}),
            "missing field 'vwap'",
        ),
    ],
)
def test_an_invalid_record_is_refused_with_the_reason(value, reason):
    with pytest.raises(InvalidRecord, match=reason):
        decode_second(value)


def test_fan_out_hands_each_stat_to_every_sink_in_order():
    seen: list[tuple[str, int]] = []
    emit = fan_out(
        lambda s: seen.append(("redis", s.second_ms)), lambda s: seen.append(("kafka", s.second_ms))
    )
    emit(STAT)
    assert seen == [("redis", 1723161255000), ("kafka", 1723161255000)]
