"""The columnar decoder (etl/columnar.py) gives exactly what decoding every record one by one gives: the
same rows, typed the same, and the same records refused with the same reasons; whatever the run mixes."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.second_topic import second_record
from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil
from etl.columnar import arrow_table, decode_values, string_digest
from etl.records import InvalidRecord, TableSpec
from etl.seconds import SECONDS
from etl.tickers import TICKERS


def second(n: int) -> dict:
    price = Decimal("61837.63") + n
    stat = SecondStat(
        "btcusdt" if n % 2 else "ethusdt",
        1723161255000 + 1000 * n,
        price - 1,
        price + 2,
        price - 3,
        price,
        Decimal("0.01234000") * (1 + n % 7),
        price * Decimal("0.01234000") * (1 + n % 7),
        1 + n % 40,
        3735683259 + n,
    )
    return jsonutil.loads(jsonutil.dumps(second_record(stat)))


def ticker(n: int) -> dict:
    return {
        "message_id": f"0f8d3c5e-6a0b-5d2f-9e41-{n:012x}",
        "e": "24hrMiniTicker",
        "E": 1723161256000 + n,
        "receive_time": 1723161256012 + n,
        "s": "btcusdt",
        "c": f"{61837 + n}.63",
        "o": "60000.00",
        "h": "62000.00",
        "l": "59000.00",
        "change_price": "-1837.63",
        "change_percent": "-3.06271667",
    }


def dumps(value: object) -> bytes:
    """JSON as a producer other than ours might write it (any integer size, raw UTF-8)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def one_by_one(spec: TableSpec, values: list[bytes | None]) -> tuple[list, list[tuple[int, str]]]:
    """The reference: each value through the per-record decoder; (rows as Python values, refusals)."""
    rows, invalid = [], []
    for index, value in enumerate(values):
        try:
            rows.append(spec.decode(value))
        except InvalidRecord as exc:
            invalid.append((index, str(exc)))
    table = arrow_table(spec, rows) if rows else None
    return python_rows(table), invalid


def python_rows(table: pa.Table | None) -> list[tuple]:
    return [] if table is None else sorted(tuple(row.values()) for row in table.to_pylist())


def assert_same_as_one_by_one(spec: TableSpec, values: list[bytes | None]) -> None:
    run = decode_values(spec, values)
    rows, invalid = one_by_one(spec, values)
    assert python_rows(run.table) == rows
    assert run.invalid == invalid
    if run.table is not None:
        assert run.table.schema == pa.schema(list(zip(spec.columns, spec.arrow_types, strict=True)))


def test_a_run_of_canonical_records_becomes_one_table_equal_to_the_rows_decoded_one_by_one():
    values = [dumps(second(n)) for n in range(500)]
    run = decode_values(SECONDS, values)
    assert run.invalid == []
    assert run.table.num_rows == 500
    assert run.table.equals(arrow_table(SECONDS, [SECONDS.decode(value) for value in values]))
    assert run.table.column("close")[0].as_py() == Decimal("61837.630000000000000000")  # exact

    tickers = [dumps(ticker(n)) for n in range(50)]
    run = decode_values(TICKERS, tickers)
    assert (run.invalid, run.table.num_rows) == ([], 50)
    assert run.table.equals(arrow_table(TICKERS, [TICKERS.decode(value) for value in tickers]))


def test_every_kind_of_bad_or_uncommon_record_in_one_run_is_decided_as_one_by_one():
    good = dumps(second(1))
    values = [
        good,
        b"not json",
        None,
        b"",
        b"   ",
        dumps({**second(2), "p": "-1"}),  # refused: negative
        dumps({**second(3), "s": "BTCUSDT"}),  # accepted, rewritten
        dumps({**second(4), "v": "1.5E-3"}),  # accepted, rewritten
        good.replace(b'{"message_id"', b'{"p":"1","message_id"'),  # duplicate member: the last counts
        good.replace(b",", b",\n", 1),  # a line break inside a valid record
        good.replace(b",", b",\r", 1),
        good + good,  # two objects in one record
        good + b"\n",
        b"\xef\xbb\xbf" + good,  # a byte-order mark
        dumps({**second(5), "p": 61837.63}),  # a number where a decimal string is due
        dumps({**second(6), "t": 1723161255001}),
        dumps({**second(7), "i": 2**64}),
        dumps({**second(8), "n": None}),
        dumps({key: value for key, value in second(9).items() if key != "vwap"}),
        dumps([second(10)]),
        b'{"s": "\xff"}',
        dumps({**second(11), "extra": {"nested": [1, 2]}}),  # unknown members are ignored
        dumps(second(12)),
    ]
    assert_same_as_one_by_one(SECONDS, values)
    run = decode_values(SECONDS, values)
    assert run.table.num_rows == 9


def test_values_that_would_break_the_one_line_per_value_framing_are_decided_as_one_by_one():
    # No value is missing here, so only the framing check keeps these from the one joined read.
    values = [
        dumps(second(1)),
        b"",
        dumps(second(2)) + dumps(second(3)),
        b" " + dumps(second(4)),
        dumps(second(5)) + b"\n" + dumps(second(6)),
        dumps(second(7)),
    ]
    assert_same_as_one_by_one(SECONDS, values)
    assert decode_values(SECONDS, values).table.num_rows == 3


def test_the_incomplete_mark_is_read_columnar_as_one_by_one_and_false_when_absent():
    values = [dumps(second(1)), dumps({**second(2), "x": True}), dumps({**second(3), "x": None})]
    assert_same_as_one_by_one(SECONDS, values)
    run = decode_values(SECONDS, values)
    assert (run.invalid, run.table.column("incomplete").to_pylist()) == ([], [False, True, False])
    refused = [dumps(second(1)), dumps({**second(2), "x": 1}), dumps({**second(3), "x": "true"})]
    assert_same_as_one_by_one(SECONDS, refused)
    assert [index for index, _reason in decode_values(SECONDS, refused).invalid] == [1, 2]


def test_text_outside_printable_ascii_is_left_to_the_per_record_decoder():
    values = [
        dumps({**ticker(1), "e": "24hrMiniTicker€"}),
        dumps({**ticker(2), "e": ""}),
        dumps({**ticker(3), "e": "x" * 65}),
        dumps(ticker(4)),
    ]
    assert_same_as_one_by_one(TICKERS, values)
    assert decode_values(TICKERS, values).table.column("event_type").to_pylist() == [
        "24hrMiniTicker",
        "24hrMiniTicker€",
    ]


def test_a_run_with_nothing_valid_has_no_table():
    run = decode_values(SECONDS, [b"[]", None])
    assert run.table is None
    assert [index for index, _reason in run.invalid] == [0, 1]


_json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        ["", "1", "-0", "0.5", "1E3", "+1", "007.50", "1" * 21, "0." + "1" * 19, "BTCUSDT", "x\ty"]
    ),
    st.text(max_size=8),
)


@st.composite
def mutated_records(draw) -> tuple[TableSpec, list[bytes | None]]:
    spec, make = draw(st.sampled_from([(SECONDS, second), (TICKERS, ticker)]))
    values: list[bytes | None] = []
    for n in range(draw(st.integers(1, 12))):
        record = make(n)
        action = draw(st.sampled_from(["keep", "keep", "replace", "drop", "bytes"]))
        if action == "replace":
            record[draw(st.sampled_from(sorted(record)))] = draw(_json_values)
        elif action == "drop":
            del record[draw(st.sampled_from(sorted(record)))]
        value = dumps(record)
        if action == "bytes":
            position = draw(st.integers(0, len(value)))
            value = value[:position] + draw(st.binary(max_size=3)) + value[position:]
        values.append(value)
    return spec, values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_records())
def test_any_mix_of_mutated_records_is_decided_as_one_by_one(case):
    spec, values = case
    assert_same_as_one_by_one(spec, values)


def test_the_digest_of_a_string_column_is_that_of_its_values_joined_whatever_its_chunks():
    texts = ["6f1c", "", "é-ü", "a" * 300, "x"]
    column = pa.chunked_array([pa.array(texts[:2]), pa.array(texts[2:]).slice(1), pa.array([], pa.string())])
    expected = hashlib.blake2b("".join(column.to_pylist()).encode(), digest_size=8).hexdigest()
    assert string_digest(column) == expected
    # The value the slice leaves out is not hashed.
    assert string_digest(pa.chunked_array([pa.array(texts)])) != expected
    assert string_digest(pa.chunked_array([], pa.string())) == hashlib.blake2b(b"", digest_size=8).hexdigest()
