"""Mini-ticker frames → KafkaMsg records of topic ``binance.miniticker``.

Input (Binance spot "WebSocket Streams" documentation, "All Market Mini Tickers Stream" and "Individual Symbol
Mini Ticker Stream"), in combined-stream form::

    {"stream": "!miniTicker@arr",
     "data": [{"e": "24hrMiniTicker", "E": 1723161256000, "s": "BTCUSDT", "c": "61837.63", "o": "60000.00",
               "h": "62000.00", "l": "59000.00", "v": "1234.5", "q": "76300000.1"}, ...]}

(``<symbol>@miniTicker`` carries one such object instead of an array; the raw ``/ws`` form, without the
``stream`` wrapper, is accepted too.) Output: the KafkaMsg JSON of docs/CONTRACTS.md, see :class:`KafkaMsg`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

import orjson

from crypto_mesh.binance import InvalidSymbol, normalize_symbol
from crypto_mesh.decimals import DecimalFieldError, parse_decimal
from crypto_mesh.kafka import MINI_TICKER_TOPIC

MINI_TICKER_EVENT = "24hrMiniTicker"
CHANGE_PERCENT_QUANTUM = Decimal("1E-8")
_ARITHMETIC = Context(prec=60, rounding=ROUND_HALF_EVEN)


class MalformedTicker(ValueError):
    """A mini-ticker frame (or one element of it) that is not valid JSON or lacks a field."""


@dataclass(frozen=True, slots=True)
class KafkaMsg:
    """One mini-ticker event of one symbol, as written to Kafka.

    ``event_time_ms``: ``E`` (exchange Unix ms); ``receive_time_ms``: local Unix ms when the frame arrived;
    ``symbol`` lowercase; ``close``/``open``/``high``/``low``: ``c``/``o``/``h``/``l`` as exact decimals.
    """

    event_type: str
    event_time_ms: int
    receive_time_ms: int
    symbol: str
    close: Decimal
    open: Decimal
    high: Decimal
    low: Decimal

    @property
    def message_id(self) -> str:
        """``uuid5(NAMESPACE_URL, "binance.miniticker/<symbol>/<E>")``: the same event always gets the same
        id, so a redelivered record is recognisable."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{MINI_TICKER_TOPIC}/{self.symbol}/{self.event_time_ms}"))

    @property
    def change_price(self) -> Decimal:
        """close − open, exact."""
        return _ARITHMETIC.subtract(self.close, self.open)

    @property
    def change_percent(self) -> Decimal:
        """(close − open) / open × 100, rounded half-even to 8 decimal places; ``0`` when open is 0."""
        if self.open == 0:
            return Decimal(0)
        ratio = _ARITHMETIC.divide(_ARITHMETIC.multiply(self.change_price, 100), self.open)
        return ratio.quantize(CHANGE_PERCENT_QUANTUM, context=_ARITHMETIC)

    def to_json(self) -> dict[str, Any]:
        """The KafkaMsg JSON object of docs/CONTRACTS.md (decimals stay ``Decimal``; encode with
        :func:`crypto_mesh.jsonutil.dumps`)."""
        return {
            "message_id": self.message_id,
            "e": self.event_type,
            "E": self.event_time_ms,
            "receive_time": self.receive_time_ms,
            "s": self.symbol,
            "c": self.close,
            "o": self.open,
            "h": self.high,
            "l": self.low,
            "change_price": self.change_price,
            "change_percent": self.change_percent,
        }


def parse_mini_ticker_frame(raw: bytes | str, received_ms: int) -> tuple[list[KafkaMsg], int]:
    """Parse one mini-ticker frame received at local Unix ms ``received_ms``.

    Returns ``(messages, rejected)``: the valid elements as :class:`KafkaMsg`, in frame order, and how many
    elements were malformed (skipped; the rest of the array is still used). Raises :class:`MalformedTicker` if
    the frame as a whole is not JSON or not a mini-ticker frame.
    """
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedTicker(f"not JSON: {exc}") from None
    data = frame.get("data") if isinstance(frame, dict) and "stream" in frame else frame
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise MalformedTicker("data is neither a mini-ticker object nor an array of them")
    messages, rejected = [], 0
    for element in data:
        try:
            messages.append(_parse_element(element, received_ms))
        except MalformedTicker:
            rejected += 1
    return messages, rejected


def _parse_element(element: Any, received_ms: int) -> KafkaMsg:
    if not isinstance(element, dict) or element.get("e") != MINI_TICKER_EVENT:
        raise MalformedTicker("not a 24hrMiniTicker object")
    event_time = element.get("E")
    if type(event_time) is not int or event_time < 0:
        raise MalformedTicker("field 'E' must be a non-negative integer")
    try:
        symbol = normalize_symbol(element.get("s"))
    except InvalidSymbol as exc:
        raise MalformedTicker(str(exc)) from None
    return KafkaMsg(
        event_type=MINI_TICKER_EVENT,
        event_time_ms=event_time,
        receive_time_ms=received_ms,
        symbol=symbol,
        close=_decimal(element, "c"),
        open=_decimal(element, "o"),
        high=_decimal(element, "h"),
        low=_decimal(element, "l"),
    )


def _decimal(element: dict, key: str) -> Decimal:
    try:
        return parse_decimal(element.get(key), minimum="nonnegative")
    except DecimalFieldError as exc:
        raise MalformedTicker(f"field {key!r} {exc}") from None