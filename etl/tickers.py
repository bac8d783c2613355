"""KafkaMsg records of topic ``binance.miniticker`` → rows of ``crypto.market_tickers``.

The record format is KafkaMsg of docs/CONTRACTS.md (section "Kafka"): a JSON object with ``message_id``
(UUID string), ``e`` (event type), ``E`` (event time, Unix ms), ``receive_time`` (Unix ms), ``s`` (symbol),
``c``/``o``/``h``/``l`` (close/open/high/low price), ``change_price`` and ``change_percent``, every price a
decimal string. Decoding is pure: no I/O, so it is tested without a broker.
"""

from __future__ import annotations

import uuid
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from crypto_mesh import jsonutil
from crypto_mesh.binance import InvalidSymbol, normalize_symbol
from crypto_mesh.decimals import DecimalFieldError, parse_decimal

#: Columns of ``crypto.market_tickers`` in the order of :class:`TickerRow`'s fields.
COLUMNS = (
    "message_id",
    "event_type",
    "event_time",
    "receive_time",
    "symbol",
    "close_price",
    "open_price",
    "high_price",
    "low_price",
    "change_price",
    "change_percent",
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: DateTime64 holds years 1900 to 2299; times before the epoch are not market data.
_MAX_TIME_MS = int((datetime(2299, 12, 31, tzinfo=UTC) - _EPOCH).total_seconds()) * 1000
#: (KafkaMsg field, column scale) of each decimal: Decimal(38, 18) for prices, Decimal(38, 8) for the percent.
_DECIMAL_FIELDS = (("c", 18), ("o", 18), ("h", 18), ("l", 18), ("change_price", 18), ("change_percent", 8))
_MAX_EVENT_TYPE_CHARS = 64


class InvalidRecord(ValueError):
    """A Kafka record that is not a valid KafkaMsg; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class TickerRow:
    """One row of ``crypto.market_tickers``: times are UTC datetimes (ms precision), prices ``Decimal``."""

    message_id: str
    event_type: str
    event_time: datetime
    receive_time: datetime
    symbol: str
    close_price: Decimal
    open_price: Decimal
    high_price: Decimal
    low_price: Decimal
    change_price: Decimal
    change_percent: Decimal

    def values(self) -> tuple:
        """The row's values in the order of :data:`COLUMNS` (for a clickhouse-connect insert)."""
        return astuple(self)


def decode_record(value: bytes | None) -> TickerRow:
    """Decode the value of one Kafka record (KafkaMsg JSON, UTF-8) into a :class:`TickerRow`.

    Raises :class:`InvalidRecord` for malformed JSON, a missing field, a wrong type, a symbol that
    :func:`crypto_mesh.binance.normalize_symbol` refuses, a time outside 1970..2299, or a price that is not a
    finite decimal string fitting its column (at most 20 integer digits and 18 decimal places; the percent at
    most 30 integer digits and 8 decimal places).
    """
    if value is None:
        raise InvalidRecord("record has no value")
    try:
        message = jsonutil.loads(value)
    except jsonutil.JSONDecodeError as exc:
        raise InvalidRecord(f"value is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise InvalidRecord("value is not a JSON object")
    close, open_, high, low, change_price, change_percent = (
        _decimal(message, name, scale) for name, scale in _DECIMAL_FIELDS
    )
    return TickerRow(
        message_id=_message_id(message),
        event_type=_event_type(message),
        event_time=_time_ms(message, "E"),
        receive_time=_time_ms(message, "receive_time"),
        symbol=_symbol(message),
        close_price=close,
        open_price=open_,
        high_price=high,
        low_price=low,
        change_price=change_price,
        change_percent=change_percent,
    )


def _field(message: dict, name: str) -> object:
    try:
        return message[name]
    except KeyError:
        raise InvalidRecord(f"missing field {name!r}") from None


def _message_id(message: dict) -> str:
    raw = _field(message, "message_id")
    if not isinstance(raw, str):
        raise InvalidRecord("'message_id' must be a UUID string")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidRecord("'message_id' must be a UUID string") from None


def _event_type(message: dict) -> str:
    raw = _field(message, "e")
    if not isinstance(raw, str) or not 0 < len(raw) <= _MAX_EVENT_TYPE_CHARS:
        raise InvalidRecord(f"'e' must be a string of 1 to {_MAX_EVENT_TYPE_CHARS} characters")
    return raw


def _symbol(message: dict) -> str:
    try:
        return normalize_symbol(_field(message, "s"))
    except InvalidSymbol as exc:
        raise InvalidRecord(f"'s': {exc}") from None


def _time_ms(message: dict, name: str) -> datetime:
    raw = _field(message, name)
    # bool is an int in Python; a JSON true is not a time.
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= _MAX_TIME_MS:
        raise InvalidRecord(f"{name!r} must be Unix milliseconds between 1970 and 2299")
    return _EPOCH + timedelta(milliseconds=raw)


def _decimal(message: dict, name: str, scale: int) -> Decimal:
    try:
        return parse_decimal(_field(message, name), scale=scale, integer_digits=38 - scale)
    except DecimalFieldError as exc:
        raise InvalidRecord(f"{name!r} {exc} (column Decimal(38, {scale}))") from None