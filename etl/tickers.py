"""KafkaMsg records of topic ``binance.miniticker`` → rows of ``crypto.market_tickers``.

The record format is KafkaMsg of docs/CONTRACTS.md (section "Kafka"): a JSON object with ``message_id``
(UUID string), ``e`` (event type), ``E`` (event time, Unix ms), ``receive_time`` (Unix ms), ``s`` (symbol),
``c``/``o``/``h``/``l`` (close/open/high/low price), ``change_price`` and ``change_percent``, every price a
decimal string. Decoding is pure: no I/O, so it is tested without a broker.
"""

from __future__ import annotations

from operator import itemgetter
from typing import NamedTuple

from etl import records
from etl.records import MAX_TIME_MS, InvalidRecord, TableSpec

__all__ = ["COLUMNS", "TICKERS", "InvalidRecord", "TickerRow", "decode_record"]

_MAX_EVENT_TYPE_CHARS = 64


class TickerRow(NamedTuple):
    """One row of ``crypto.market_tickers``: times in Unix ms, prices as exact decimal strings (at most 18
    places, the percent at most 8), so that ClickHouse parses them without rounding."""

    message_id: str
    event_type: str
    event_time: int
    receive_time: int
    symbol: str
    close_price: str
    open_price: str
    high_price: str
    low_price: str
    change_price: str
    change_percent: str


#: Columns of ``crypto.market_tickers`` in the order of :class:`TickerRow`'s fields.
COLUMNS = TickerRow._fields

_FIELDS = ("message_id", "e", "E", "receive_time", "s", "c", "o", "h", "l", "change_price", "change_percent")
_take_fields = itemgetter(*_FIELDS)  # one C call for every field (KeyError if one is missing)
_SIX_DECIMALS = records.plain_decimals(*[records.decimal_regex(18)] * 5, records.decimal_regex(8))


def decode_record(value: bytes | None) -> TickerRow:
    """Decode the value of one Kafka record (KafkaMsg JSON, UTF-8) into a :class:`TickerRow`.

    Raises :class:`InvalidRecord` for malformed JSON, a missing field, a wrong type, a symbol that
    :func:`crypto_mesh.binance.normalize_symbol` refuses, a time outside 1970..2299, or a price that is not a
    finite decimal string fitting its column (at most 20 integer digits and 18 decimal places; the percent at
    most 30 integer digits and 8 decimal places).
    """
    message = records.load_object(value)
    # Fast path: the aggregator's records are canonical, so one look at each field accepts them; anything
    # else takes the field-by-field path below, which also names what is wrong.
    try:
        row = _take_fields(message)
        event_type, event_time, receive_time = row[1], row[2], row[3]
        if (
            records.is_uuid(row[0])
            and type(event_type) is str
            and 0 < len(event_type) <= _MAX_EVENT_TYPE_CHARS
            and type(event_time) is int
            and 0 <= event_time <= MAX_TIME_MS
            and type(receive_time) is int
            and 0 <= receive_time <= MAX_TIME_MS
            and records.is_symbol(row[4])
            and _SIX_DECIMALS.fullmatch("\t".join(row[5:]))
        ):
            return tuple.__new__(TickerRow, row)
    except (KeyError, TypeError):
        pass
    return _decode_fields(message)


def _decode_fields(message: dict) -> TickerRow:
    return TickerRow(
        records.message_id(message),
        records.text(message, "e", _MAX_EVENT_TYPE_CHARS),
        records.time_ms(message, "E"),
        records.time_ms(message, "receive_time"),
        records.symbol(message),
        records.decimal_text(message, "c", 18),
        records.decimal_text(message, "o", 18),
        records.decimal_text(message, "h", 18),
        records.decimal_text(message, "l", 18),
        records.decimal_text(message, "change_price", 18),
        records.decimal_text(message, "change_percent", 8),
    )


#: How the consumer loads ``binance.miniticker``.
TICKERS = TableSpec(
    table="crypto.market_tickers",
    columns=COLUMNS,
    fields=(
        records.uuid_field("message_id"),
        records.text_field("e", _MAX_EVENT_TYPE_CHARS),
        records.time_field("E"),
        records.time_field("receive_time"),
        records.symbol_field("s"),
        *[records.decimal_field(key, 18) for key in ("c", "o", "h", "l", "change_price")],
        records.decimal_field("change_percent", 8),
    ),
    decode=decode_record,
)
