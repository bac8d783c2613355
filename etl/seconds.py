"""SecondStat records of topic ``binance.second`` → rows of ``crypto.price_seconds``.

The record (written by :mod:`aggregator.second_topic`) is the SecondStat JSON of docs/CONTRACTS.md, section
"Redis", plus a deterministic ``message_id``::

    {"message_id": "…", "s": "btcusdt", "t": 1723161255000, "p": "61837.63", "o": "61830.00",
     "h": "61840.10", "l": "61829.99", "v": "1.23400000", "q": "76300.12", "n": 42, "vwap": "61831.1",
     "i": 3735683259}

``t``: start of the second (Unix ms, a multiple of 1000); ``p``/``o``/``h``/``l``: close/open/high/low;
``v``: base volume; ``q``: quote volume; ``n``: trade count (≥ 1); ``vwap``: q / v; ``i``: id of the closing
trade; ``x``: ``true`` only for a second published incomplete (trades of it are known to be missing; absent
otherwise), the column ``incomplete`` (migration 0003). Decoding is pure: no I/O.
"""

from __future__ import annotations

from operator import itemgetter
from typing import NamedTuple

import pyarrow as pa

from etl import records
from etl.records import MAX_TIME_MS, MAX_UINT32, MAX_UINT64, InvalidRecord, TableSpec

__all__ = ["COLUMNS", "SECONDS", "InvalidRecord", "SecondRow", "decode_second"]


class SecondRow(NamedTuple):
    """One row of ``crypto.price_seconds``: ``second`` in Unix ms, decimals as exact decimal strings."""

    message_id: str
    symbol: str
    second: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    quote_volume: str
    vwap: str
    trade_count: int
    close_trade_id: int
    incomplete: bool


#: Columns of ``crypto.price_seconds`` in the order of :class:`SecondRow`'s fields.
COLUMNS = SecondRow._fields


_SEVEN_DECIMALS = records.plain_decimals(*[records.decimal_regex(18, nonnegative=True)] * 7)
_FIELDS = ("message_id", "s", "t", "o", "h", "l", "p", "v", "q", "vwap", "n", "i")
_take_fields = itemgetter(*_FIELDS)  # one C call for every field (KeyError if one is missing)


def decode_second(value: bytes | None) -> SecondRow:
    """Decode the value of one ``binance.second`` record into a :class:`SecondRow`.

    Raises :class:`InvalidRecord` for malformed JSON, a missing field, a wrong type, an invalid symbol, a
    ``t`` outside 1970..2299 or not on a whole second, a negative or ill-formed decimal (at most 20 integer
    digits and 18 places), a trade count outside 1..2^32-1 or a trade id outside 0..2^64-1.
    """
    message = records.load_object(value)
    # Fast path: the aggregator's records are canonical, so one look at each field accepts them; anything
    # else takes the field-by-field path below, which also names what is wrong.
    try:
        row = _take_fields(message)
        t, n, i = row[2], row[10], row[11]
        if (
            records.is_uuid(row[0])
            and records.is_symbol(row[1])
            and type(t) is int
            and 0 <= t <= MAX_TIME_MS
            and not t % 1000
            and type(n) is int
            and 1 <= n <= MAX_UINT32
            and type(i) is int
            and 0 <= i <= MAX_UINT64
            and _SEVEN_DECIMALS.fullmatch("\t".join(row[3:10]))
        ):
            incomplete = message.get("x")
            if incomplete is None or type(incomplete) is bool:
                return tuple.__new__(SecondRow, (*row, bool(incomplete)))
    except (KeyError, TypeError):
        pass
    return _decode_fields(message)


def _decode_fields(message: dict) -> SecondRow:
    second = records.time_ms(message, "t")
    if second % 1000:
        raise InvalidRecord("'t' must be the start of a second (a multiple of 1000 ms)")
    return SecondRow(
        records.message_id(message),
        records.symbol(message),
        second,
        records.decimal_text(message, "o", 18, nonnegative=True),
        records.decimal_text(message, "h", 18, nonnegative=True),
        records.decimal_text(message, "l", 18, nonnegative=True),
        records.decimal_text(message, "p", 18, nonnegative=True),
        records.decimal_text(message, "v", 18, nonnegative=True),
        records.decimal_text(message, "q", 18, nonnegative=True),
        records.decimal_text(message, "vwap", 18, nonnegative=True),
        records.integer(message, "n", 1, MAX_UINT32),
        records.integer(message, "i", 0, MAX_UINT64),
        records.flag(message, "x"),
    )


#: How the consumer loads ``binance.second``.
SECONDS = TableSpec(
    table="crypto.price_seconds",
    columns=COLUMNS,
    fields=(
        records.uuid_field("message_id"),
        records.symbol_field("s"),
        records.time_field("t", whole_second=True),
        *[records.decimal_field(key, 18, nonnegative=True) for key in ("o", "h", "l", "p", "v", "q", "vwap")],
        records.int_field("n", 1, MAX_UINT32, pa.uint32()),
        records.int_field("i", 0, MAX_UINT64, pa.uint64()),
        records.flag_field("x"),
    ),
    decode=decode_second,
)
