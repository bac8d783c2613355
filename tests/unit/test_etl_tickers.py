"""ETL: decoding KafkaMsg records (docs/CONTRACTS.md, "Kafka") into rows, and reading migration files."""

from __future__ import annotations

import pytest

from crypto_mesh import jsonutil
from etl import migrate
from etl.tickers import COLUMNS, InvalidRecord, decode_record

MESSAGE = {
    "message_id": "0f8d3c5e-6a0b-5d2f-9e41-7c2b1a0d9e33",
    "e": "24hrMiniTicker",
    "E": 1723161256000,
    "receive_time": 1723161256012,
    "s": "BTCUSDT",
    "c": "61837.63",
    "o": "60000.00",
    "h": "62000.00",
    "l": "59000.00",
    "change_price": "1837.63",
    "change_percent": "3.06271667",
}


def test_a_kafkamsg_becomes_a_row_of_decimals_and_utc_times():
    row = decode_record(jsonutil.dumps(MESSAGE))
    assert row.symbol == "btcusdt"
    assert (row.event_time, row.receive_time) == (1723161256000, 1723161256012)  # Unix ms
    assert (row.close_price, row.change_percent) == ("61837.63", "3.06271667")  # exact decimal text
    assert len(row) == len(COLUMNS)


@pytest.mark.parametrize(
    ("price", "text"),
    [
        ("61837.630000000000000000000", "61837.630000000000000000"),  # zeros past the scale are dropped
        ("1E-8", "0.000000010000000000"),  # exponent form is written positionally
        ("+5", "5.000000000000000000"),
        ("-0.5", "-0.5"),  # the common form is passed on as it came
    ],
)
def test_other_decimal_forms_are_accepted_and_rewritten_exactly(price, text):
    row = decode_record(jsonutil.dumps({**MESSAGE, "c": price}))
    assert row.close_price == text


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (None, "no value"),
        (jsonutil.dumps({k: v for k, v in MESSAGE.items() if k != "c"}), "missing field 'c'"),
        (jsonutil.dumps({**MESSAGE, "c": "abc"}), "'c' is not a decimal"),
        (jsonutil.dumps({**MESSAGE, "c": 61837.63}), "'c' must be a decimal string"),
        (jsonutil.dumps({**MESSAGE, "h": "NaN"}), "'h' must be finite"),
        (jsonutil.dumps({**MESSAGE, "l": "0.0000000000000000001"}), "more than 18 decimal places.*Decimal\\(38, 18\\)"),
        (jsonutil.dumps({**MESSAGE, "change_percent": "1.123456789"}), "more than 8 decimal places.*Decimal\\(38, 8\\)"),
        (jsonutil.dumps({**MESSAGE, "E": "1723161256000"}), "'E' must be Unix milliseconds"),
        (jsonutil.dumps({**MESSAGE, "receive_time": -1}), "'receive_time' must be Unix milliseconds"),
        (jsonutil.dumps({**MESSAGE, "s": "BTC/USDT"}), "'s':"),
        (jsonutil.dumps({**MESSAGE, "message_id": "42"}), "'message_id' must be a UUID"),
        (jsonutil.dumps({**MESSAGE, "e": ""}), "'e' must be a string"),
    ],
)
def test_an_invalid_record_is_refused_with_the_reason(value, reason):
    with pytest.raises(InvalidRecord, match=reason):
        decode_record(value)


def test_migration_statements_end_with_a_semicolon_at_the_end_of_a_line():
    text = "-- header\nCREATE DATABASE IF NOT EXISTS x;\n\nSELECT ';'\nFROM y ;\n-- trailing note\n"
    assert migrate.split_statements(text) == [
        "-- header\nCREATE DATABASE IF NOT EXISTS x",
        "SELECT ';'\nFROM y",
    ]


def test_shipped_migrations_are_numbered_in_order():
    migrations = migrate.load_migrations()
    assert [(m.version, m.name) for m in migrations] == [
        (1, "market_tickers"),
        (2, "price_seconds"),
        (3, "incomplete_seconds"),
    ]
    assert len(migrations[0].statements) == 2


def test_a_badly_named_migration_file_is_an_error(tmp_path):
    (tmp_path / "1_oops.sql").write_text("SELECT 1;\n")
    with pytest.raises(migrate.MigrationError, match=r"NNNN_<name>\.sql"):
        migrate.load_migrations(tmp_path)
