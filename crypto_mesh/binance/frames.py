"""Frames of Binance spot market data: the combined-stream envelope, trade, aggTrade and mini-ticker payloads.

Source: Binance spot API documentation, "WebSocket Streams for Binance"
(https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams).

Envelope (section "General WSS information"): a combined stream wraps every payload as
``{"stream": "<name>", "data": <payload>}``; a raw stream (``/ws/<name>``) sends the payload alone.

Payloads::

    # "Trade Streams", <symbol>@trade
    {"e": "trade", "E": 1723161255343, "s": "BTCUSDT", "t": 3735683259,
     "p": "61837.63000000", "q": "0.02000000", "T": 1723161255342, "m": true, "M": true}

    # "Aggregate Trade Streams", <symbol>@aggTrade
    {"e": "aggTrade", "E": 1617566591315, "s": "BTCUSDT", "a": 665076760,
     "p": "58001.03000000", "q": "0.08620500", "f": 745522877, "l": 745522877,
     "T": 1617566591314, "m": true, "M": true}

    # "Individual Symbol Mini Ticker Stream" (one object) and "All Market Mini Tickers Stream" (an array)
    {"e": "24hrMiniTicker", "E": 1723161256000, "s": "BTCUSDT", "c": "61837.63", "o": "60000.00",
     "h": "62000.00", "l": "59000.00", "v": "1234.5", "q": "76300000.1"}

``E`` is the event time and ``T`` the trade time (Unix ms, exchange clock); ``t`` numbers a symbol's trades
and ``a`` its aggregate trades consecutively (``f``/``l``: the first and last trade id an aggregate covers);
prices and quantities are decimal strings, parsed exactly (never through a float).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import orjson

from crypto_mesh import jsonutil
from crypto_mesh.binance.names import AGG_TRADE, TRADE, InvalidSymbol, normalize_symbol
from crypto_mesh.decimals import DecimalFieldError, parse_decimal

#: Trade stream kind (= event type ``e``) → the field holding the id that orders the symbol's trades.
TRADE_ID_FIELDS = {TRADE: "t", AGG_TRADE: "a"}
#: Fields of trade and aggTrade payloads holding exchange times (Unix ms): event time, trade time.
TIME_FIELDS = ("E", "T")
#: Fields of trade and aggTrade payloads holding ids: trade id, aggregate id, first and last trade id.
ID_FIELDS = ("t", "a", "f", "l")
MINI_TICKER_EVENT = "24hrMiniTicker"

#: How Binance starts every combined-stream frame: compact JSON, ``stream`` first.
_COMBINED_PREFIX = b'{"stream":"'
_NAME_START = len(_COMBINED_PREFIX)
_STREAM_NAME_MAX = 200
#: Stream names as :func:`stream_of` found them (bytes → str), decoded once per stream rather than per frame; a
#: connection carries at most 1,024 streams. Emptied should it ever hold :data:`_STREAM_NAMES_MAX`.
_STREAM_NAMES_MAX = 100_000
_stream_names: dict[bytes, str] = {}


# --- Combined-stream envelope ------------------------------------------------------------------------------


def combined_frame(stream: str, data: Any) -> bytes:
    """The combined-stream frame of ``data`` on ``stream``: ``{"stream":"<stream>","data":<data>}`` as compact
    UTF-8 JSON, the form :func:`stream_of` reads (decimals become strings, :mod:`crypto_mesh.jsonutil`)."""
    return jsonutil.dumps({"stream": stream, "data": data})


def stream_of(raw: bytes) -> str | None:
    """The stream name of a combined-stream frame read from its prefix, without decoding the whole frame (the
    hot path: most frames are only routed); None when the frame does not start in the exact compact form, or
    the name holds an escape, so that the caller decodes it fully instead (:func:`split_combined`). Stream
    names are ASCII letters, digits and ``@!_``, never escaped by Binance."""
    if not raw.startswith(_COMBINED_PREFIX):
        return None
    end = raw.find(b'"', _NAME_START, _NAME_START + _STREAM_NAME_MAX)
    if end < 0 or not raw.startswith(b',"data":', end + 1):
        return None
    name = raw[_NAME_START:end]
    stream = _stream_names.get(name)
    if stream is None:
        if b"\\" in name:
            return None
        if len(_stream_names) >= _STREAM_NAMES_MAX:
            _stream_names.clear()
        stream = _stream_names[name] = name.decode("ascii", "replace")
    return stream


def split_combined(frame: object) -> tuple[str, Any] | None:
    """``(stream, data)`` of a decoded combined-stream frame; None if ``frame`` is not an object with a string
    ``stream`` (a control answer, a raw payload). ``data`` is None when the frame lacks it."""
    if isinstance(frame, dict):
        stream = frame.get("stream")
        if isinstance(stream, str):
            return stream, frame.get("data")
    return None


def payload(frame: dict[str, Any]) -> Any:
    """The payload of a decoded frame in either form: ``data`` of a combined-stream frame (None if it has
    none), else the frame itself (a raw-stream frame)."""
    return frame.get("data") if "stream" in frame else frame


# --- Trade and aggTrade ------------------------------------------------------------------------------------


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


#: Trades as :func:`parse_trade_frame` builds them, one per frame of the market path: the slots' own setters
#: fill a new instance directly, at under half the cost of the frozen dataclass's ``__init__`` (which goes
#: through ``object.__setattr__`` once per field); the instance is the same frozen ``Trade``.
_new_trade = object.__new__
_set_trade_fields = tuple(
    getattr(Trade, name).__set__ for name in ("symbol", "trade_id", "price", "quantity", "time_ms")
)


def _trade(symbol: str, trade_id: int, price: Decimal, quantity: Decimal, time_ms: int) -> Trade:
    trade = _new_trade(Trade)
    set_symbol, set_id, set_price, set_quantity, set_time = _set_trade_fields
    set_symbol(trade, symbol)
    set_id(trade, trade_id)
    set_price(trade, price)
    set_quantity(trade, quantity)
    set_time(trade, time_ms)
    return trade


#: The exchange's symbols (``"BTCUSDT"``) as :func:`normalize_symbol` returned them, so that each frame's symbol
#: is checked once per distinct string rather than once per frame. A market has a few thousand symbols; the
#: cache is emptied should it ever hold :data:`_SYMBOL_CACHE_MAX`.
_SYMBOL_CACHE_MAX = 10_000
_normalized_symbols: dict[str, str] = {}


def _trade_symbol(value: object) -> str:
    """``normalize_symbol(value)``, remembered for strings; raises :class:`MalformedFrame` for a bad symbol."""
    if type(value) is str:
        symbol = _normalized_symbols.get(value)
        if symbol is not None:
            return symbol
    try:
        symbol = normalize_symbol(value)
    except InvalidSymbol as exc:
        raise MalformedFrame(f"bad symbol: {exc}") from None
    if type(value) is str:
        if len(_normalized_symbols) >= _SYMBOL_CACHE_MAX:
            _normalized_symbols.clear()
        _normalized_symbols[value] = symbol
    return symbol


def trade_id_field(stream: str) -> str | None:
    """The id field of a trade stream's payloads: ``"t"`` for ``<symbol>@trade``, ``"a"`` for
    ``<symbol>@aggTrade``; None for any other stream."""
    return TRADE_ID_FIELDS.get(stream.partition("@")[2])


def parse_trade_frame(raw: bytes | str) -> Trade:
    """Parse one raw trade or aggTrade frame (combined-stream or raw form) into a :class:`Trade`.

    Raises :class:`MalformedFrame` for invalid JSON, a combined-stream frame without an object ``data``,
    missing or mistyped fields, a non-positive or non-finite price or quantity, or an invalid symbol;
    :class:`UnknownEvent` for an event type other than ``trade``/``aggTrade``.
    """
    # The aggregator's hot path: one orjson decode (jsonutil), dict lookups, two Decimals; nothing else.
    frame = jsonutil.loads_object(raw, MalformedFrame, "frame")
    data = payload(frame)
    if not isinstance(data, dict):
        raise MalformedFrame("data is not a JSON object")
    event = data.get("e")
    if not isinstance(event, str):
        raise MalformedFrame("missing event type 'e'")
    id_field = TRADE_ID_FIELDS.get(event)
    if id_field is None:
        raise UnknownEvent(f"event type {event!r} is not a trade")
    return _trade(
        _trade_symbol(data.get("s")),
        _integer(data, id_field, MalformedFrame),
        _decimal(data, "p", "positive", MalformedFrame),
        _decimal(data, "q", "positive", MalformedFrame),
        _integer(data, "T", MalformedFrame),
    )


# --- Mini-ticker -------------------------------------------------------------------------------------------


class MalformedTicker(ValueError):
    """A mini-ticker frame (or one element of it) that is not valid JSON or lacks a field."""


@dataclass(frozen=True, slots=True)
class MiniTicker:
    """One ``24hrMiniTicker`` event of one symbol: ``event_time_ms`` its ``E`` (exchange Unix ms), ``symbol``
    lowercase, ``close``/``open``/``high``/``low`` its ``c``/``o``/``h``/``l`` and ``volume``/``quote_volume``
    its 24 h base and quote volumes ``v``/``q``, as exact decimals (≥ 0)."""

    event_time_ms: int
    symbol: str
    close: Decimal
    open: Decimal
    high: Decimal
    low: Decimal
    volume: Decimal
    quote_volume: Decimal


def parse_mini_ticker_frame(raw: bytes | str) -> tuple[list[MiniTicker], int]:
    """Parse one ``!miniTicker@arr`` frame (an array of mini-tickers) or ``<symbol>@miniTicker`` frame (one),
    combined-stream or raw form.

    Returns ``(tickers, rejected)``: the valid elements in frame order, and how many elements were malformed
    (skipped; the rest of the array is still used). Raises :class:`MalformedTicker` if the frame as a whole is
    not JSON or not a mini-ticker frame.
    """
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedTicker(f"not JSON: {exc}") from None
    data = payload(frame) if isinstance(frame, dict) else frame
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise MalformedTicker("data is neither a mini-ticker object nor an array of them")
    tickers, rejected = [], 0
    for element in data:
        try:
            tickers.append(_mini_ticker(element))
        except MalformedTicker:
            rejected += 1
    return tickers, rejected


def mini_ticker_payload(
    event_ms: int,
    symbol: str,
    close: str,
    open_: str,
    high: str,
    low: str,
    volume: str,
    quote_volume: str,
) -> dict[str, Any]:
    """The ``24hrMiniTicker`` payload as Binance writes it: ``symbol`` as in trade frames (uppercase ``s``),
    prices and volumes (base ``v``, quote ``q``) decimal strings, ``event_ms`` the event time ``E`` (Unix ms).
    :func:`parse_mini_ticker_frame` reads it back."""
    return {
        "e": MINI_TICKER_EVENT,
        "E": event_ms,
        "s": symbol,
        "c": close,
        "o": open_,
        "h": high,
        "l": low,
        "v": volume,
        "q": quote_volume,
    }


def _mini_ticker(element: Any) -> MiniTicker:
    if not isinstance(element, dict) or element.get("e") != MINI_TICKER_EVENT:
        raise MalformedTicker("not a 24hrMiniTicker object")
    event_time = _integer(element, "E", MalformedTicker)
    try:
        symbol = normalize_symbol(element.get("s"))
    except InvalidSymbol as exc:
        raise MalformedTicker(str(exc)) from None
    return MiniTicker(
        event_time_ms=event_time,
        symbol=symbol,
        close=_decimal(element, "c", "nonnegative", MalformedTicker),
        open=_decimal(element, "o", "nonnegative", MalformedTicker),
        high=_decimal(element, "h", "nonnegative", MalformedTicker),
        low=_decimal(element, "l", "nonnegative", MalformedTicker),
        volume=_decimal(element, "v", "nonnegative", MalformedTicker),
        quote_volume=_decimal(element, "q", "nonnegative", MalformedTicker),
    )


def _integer(data: dict, key: str, error: type[ValueError]) -> int:
    value = data.get(key)
    # bool is an int subclass; a JSON true is not an id or a time.
    if type(value) is not int or value < 0:
        raise error(f"field {key!r} must be a non-negative integer")
    return value


def _decimal(
    data: dict, key: str, minimum: Literal["nonnegative", "positive"], error: type[ValueError]
) -> Decimal:
    try:
        return parse_decimal(data.get(key), minimum=minimum)
    except DecimalFieldError as exc:
        raise error(f"field {key!r} {exc}") from None
