"""Mini-tickers → KafkaMsg records of topic ``binance.miniticker``, and each symbol's latest 24 h ticker.

Input: :class:`crypto_mesh.binance.MiniTicker`, parsed from ``!miniTicker@arr`` frames by the Binance adapter.
Outputs (docs/CONTRACTS.md):

- the KafkaMsg JSON, see :class:`KafkaMsg`: the ticker's prices, its receive time, a stable ``message_id`` and
  the change since open;
- the 24 h ticker JSON kept in Redis (hash ``ticker:24h``), see :func:`day_ticker_json`, fed through
  :class:`LatestTickers`, the bounded buffer that keeps only the newest pending ticker of each symbol.

The change since open is computed once here for both (:func:`change_price`, :func:`change_percent`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

from crypto_mesh.binance import MINI_TICKER_EVENT, MiniTicker
from crypto_mesh.kafka import MINI_TICKER_TOPIC

CHANGE_PERCENT_QUANTUM = Decimal("1E-8")
#: Exact for the subtraction and the product below: Binance prices have at most 8 decimal places and 20
#: digits, far below 60 digits; the one rounding is the documented quantize to 8 places.
_ARITHMETIC = Context(prec=60, rounding=ROUND_HALF_EVEN)


def change_price(close: Decimal, open_: Decimal) -> Decimal:
    """close − open, exact (its scale is the larger of the two operands')."""
    return _ARITHMETIC.subtract(close, open_)


def change_percent(close: Decimal, open_: Decimal) -> Decimal:
    """(close − open) / open × 100, rounded half-even to 8 decimal places (scale 8); ``0`` when open is 0."""
    if open_ == 0:
        return Decimal(0)
    ratio = _ARITHMETIC.divide(_ARITHMETIC.multiply(change_price(close, open_), 100), open_)
    return ratio.quantize(CHANGE_PERCENT_QUANTUM, context=_ARITHMETIC)


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
        """close − open (:func:`change_price`)."""
        return change_price(self.close, self.open)

    @property
    def change_percent(self) -> Decimal:
        """(close − open) / open × 100 (:func:`change_percent`)."""
        return change_percent(self.close, self.open)

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



def day_ticker_json(ticker: MiniTicker) -> dict[str, Any]:
    """The 24 h ticker JSON object of ``ticker`` kept in Redis (docs/CONTRACTS.md, "24 h ticker JSON"):
    ``{"s", "E", "c", "o", "h", "l", "v", "q", "change_price", "change_percent"}``, every amount the exact
    decimal of the mini-ticker (decimals stay ``Decimal``; encode with :func:`crypto_mesh.jsonutil.dumps`)."""
    return {
        "s": ticker.symbol,
        "E": ticker.event_time_ms,
        "c": ticker.close,
        "o": ticker.open,
        "h": ticker.high,
        "l": ticker.low,
        "v": ticker.volume,
        "q": ticker.quote_volume,
        "change_price": change_price(ticker.close, ticker.open),
        "change_percent": change_percent(ticker.close, ticker.open),
    }


class LatestTickers:
    """The tickers waiting to be written, at most one per symbol: the newest by event time.

    A ticker is a state, not an event: the newest one of a symbol replaces any pending older one (counted in
    :attr:`conflated`), and an older one than the pending is ignored (counted too). At most ``max_symbols``
    symbols wait; a ticker of a further symbol is dropped (:attr:`dropped`): Binance lists about 2,000, so
    the bound only holds if something floods the stream with invented symbols.
    """

    def __init__(self, max_symbols: int = 10_000) -> None:
        self._max = max_symbols
        self._pending: dict[str, MiniTicker] = {}
        self.conflated = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, tickers: Iterable[MiniTicker]) -> None:
        """Keep each of ``tickers`` unless a newer (or same-time) one of its symbol is pending."""
        pending = self._pending
        for ticker in tickers:
            current = pending.get(ticker.symbol)
            if current is None:
                if len(pending) >= self._max:
                    self.dropped += 1
                    continue
            else:
                self.conflated += 1
                if current.event_time_ms >= ticker.event_time_ms:
                    continue
            pending[ticker.symbol] = ticker

    def take(self) -> list[MiniTicker]:
        """Every pending ticker (oldest symbol first), leaving none."""
        taken, self._pending = list(self._pending.values()), {}
        return taken

    def restore(self, tickers: Iterable[MiniTicker]) -> None:
        """Put back tickers taken but not written (Redis failed): pending newer ones win. Not counted as
        conflated: they were only lent out."""
        pending = self._pending
        for ticker in tickers:
            current = pending.get(ticker.symbol)
            if current is None or current.event_time_ms < ticker.event_time_ms:
                pending[ticker.symbol] = ticker
