"""Parsing of raw Binance trade frames into :class:`Trade`.

Formats (Binance spot "WebSocket Streams" documentation, sections "Trade Streams" and "Aggregate Trade
Streams"), as socket_proxy hands them on in combined-stream form::

    {"stream": "btcusdt@trade",
     "data": {"e": "trade", "E": 1723161255343, "s": "BTCUSDT", "t": 3735683259,
              "p": "61837.63000000", "q": "0.02000000", "T": 1723161255342, "m": true, "M": true}}

    {"stream": "btcusdt@aggTrade",
     "data": {"e": "aggTrade", "E": 1617566591315, "s": "BTCUSDT", "a": 665076760,
              "p": "58001.03000000", "q": "0.08620500", "f": 745522877, "l": 745522877,
              "T": 1617566591314, "m": true, "M": true}}

The raw form of a ``/ws/<stream>`` connection (the ``data`` object alone) is accepted too. A frame that does
not parse is rejected with :class:`MalformedFrame`; a well-formed frame of another event type with
:class:`UnknownEvent`. Neither ever becomes a price.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import orjson

from crypto_mesh.binance import InvalidSymbol, normalize_symbol
from crypto_mesh.decimals import DecimalFieldError, parse_decimal

#: Event type (``e``) → the field holding the id that orders trades of a symbol.
TRADE_ID_FIELDS = {"trade": "t", "aggTrade": "a"}


class MalformedFrame(ValueError):
    """A frame that is not valid JSON or lacks a field of a trade event (or has one of the wrong type)."""


class UnknownEvent(ValueError):
    """A well-formed JSON frame whose event type ``e`` is neither ``trade`` nor ``aggTrade``."""


@dataclass(frozen=True, slots=True)
class Trade:
    """One trade (or aggregate trade) of a symbol.

    ``symbol`` lowercase (``"btcusdt"``); ``trade_id`` the trade id ``t`` or the aggregate id ``a``,
    increasing in exchange order within a symbol; ``price`` and ``quantity`` exact decimals (> 0);
    ``time_ms`` the trade time ``T`` in Unix milliseconds (exchange clock).
    """

    symbol: str
    trade_id: int
    price: Decimal
    quantity: Decimal
    time_ms: int


def parse_trade_frame(raw: bytes | str) -> Trade:
    """Parse one raw trade frame (combined-stream or raw form, see the module doc) into a :class:`Trade`.

    Raises :class:`MalformedFrame` for invalid JSON, missing or mistyped fields, a non-positive or non-finite
    price or quantity, or an invalid symbol; :class:`UnknownEvent` for an event type other than
    ``trade``/``aggTrade``.
    """
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedFrame(f"not JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise MalformedFrame("frame is not a JSON object")
    data = frame.get("data", frame) if "stream" in frame else frame
    if not isinstance(data, dict):
        raise MalformedFrame("data is not a JSON object")
    event = data.get("e")
    if not isinstance(event, str):
        raise MalformedFrame("missing event type 'e'")
    id_field = TRADE_ID_FIELDS.get(event)
    if id_field is None:
        raise UnknownEvent(f"event type {event!r} is not a trade")
    try:
        symbol = normalize_symbol(data.get("s"))
    except InvalidSymbol as exc:
        raise MalformedFrame(f"bad symbol: {exc}") from None
    return Trade(
        symbol=symbol,
        trade_id=_integer(data, id_field),
        price=_positive_decimal(data, "p"),
        quantity=_positive_decimal(data, "q"),
        time_ms=_integer(data, "T"),
    )


def _integer(data: dict, key: str) -> int:
    value = data.get(key)
    # bool is an int subclass; a JSON true is not an id or a time.
    if type(value) is not int or value < 0:
        raise MalformedFrame(f"field {key!r} must be a non-negative integer")
    return value


def _positive_decimal(data: dict, key: str) -> Decimal:
    try:
        return parse_decimal(data.get(key), minimum="positive")
    except DecimalFieldError as exc:
        raise MalformedFrame(f"field {key!r} {exc}") from None