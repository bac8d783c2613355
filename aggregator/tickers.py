"""Mini-tickers → KafkaMsg records of topic ``binance.miniticker``.

Input: :class:`crypto_mesh.binance.MiniTicker`, parsed from ``!miniTicker@arr`` frames by the Binance adapter.
Output: the KafkaMsg JSON of docs/CONTRACTS.md, see :class:`KafkaMsg`: the ticker's prices, its receive time,
a stable ``message_id`` and the change since open.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

from crypto_mesh.binance import MINI_TICKER_EVENT, MiniTicker
from crypto_mesh.kafka import MINI_TICKER_TOPIC

CHANGE_PERCENT_QUANTUM = Decimal("1E-8")
_ARITHMETIC = Context(prec=60, rounding=ROUND_HALF_EVEN)


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

    @classmethod
    def of(cls, ticker: MiniTicker, received_ms: int) -> KafkaMsg:
        """The record of ``ticker``, received at local Unix ms ``received_ms``."""
        return cls(
            event_type=MINI_TICKER_EVENT,
            event_time_ms=ticker.event_time_ms,
            receive_time_ms=received_ms,
            symbol=ticker.symbol,
            close=ticker.close,
            open=ticker.open,
            high=ticker.high,
            low=ticker.low,
        )

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

