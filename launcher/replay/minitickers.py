"""Mini-tickers derived from replayed trades: Binance's "Individual Symbol Mini Ticker Stream"
(``<symbol>@miniTicker``) and "All Market Mini Tickers Stream" (``!miniTicker@arr``).

No public capture of mini-ticker frames exists, so the replay exchange computes them: every second of replay
time, for each symbol that traded in that second, rolling 24 h statistics over its replayed trades. The window
is kept in 1-minute buckets, so it covers the trades of the current minute and of the 1440 minutes before it
(at most 1441 buckets per symbol): Binance's own window is exact to the millisecond, this one to the minute.

Payload: :func:`crypto_mesh.binance.mini_ticker_payload`, with close, open, high and low the trade price
strings as recorded, and the base volume (Σ q) and quote volume (Σ p × q) exact decimal strings. Decimal only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Any

from crypto_mesh.binance import mini_ticker_payload
from crypto_mesh.jsonutil import decimal_str

MINUTE_MS = 60_000
WINDOW_MS = 24 * 60 * MINUTE_MS
#: Enough digits that sums of Binance quantities (≤ 8 decimals) and quote amounts (≤ 16) stay exact.
_EXACT = Context(prec=80)


@dataclass(slots=True)
class _Bucket:
    """The trades of one minute: open/high/low/close as (value, recorded string), volumes as Decimal."""

    minute_ms: int
    open: str
    high: tuple[Decimal, str]
    low: tuple[Decimal, str]
    close: str
    volume: Decimal
    quote_volume: Decimal


class _SymbolWindow:
    """The 24 h rolling window of one symbol; ``volume`` and ``quote_volume`` are running sums (exact)."""

    __slots__ = ("buckets", "quote_volume", "symbol", "volume")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.buckets: deque[_Bucket] = deque()
        self.volume = Decimal(0)
        self.quote_volume = Decimal(0)

    def add(self, price: str, quantity: str, trade_ms: int) -> None:
        value, amount = Decimal(price), Decimal(quantity)
        quote = _EXACT.multiply(value, amount)
        minute = trade_ms - trade_ms % MINUTE_MS
        last = self.buckets[-1] if self.buckets else None
        if last is None or minute > last.minute_ms:
            self.buckets.append(_Bucket(minute, price, (value, price), (value, price), price, amount, quote))
        else:
            # A trade timed in an earlier minute than the newest bucket (out-of-order T) joins the newest one:
            # the window stays ordered and its error is below one minute.
            if value > last.high[0]:
                last.high = (value, price)
            if value < last.low[0]:
                last.low = (value, price)
            last.close = price
            last.volume = _EXACT.add(last.volume, amount)
            last.quote_volume = _EXACT.add(last.quote_volume, quote)
        self.volume = _EXACT.add(self.volume, amount)
        self.quote_volume = _EXACT.add(self.quote_volume, quote)

    def prune(self, now_ms: int) -> None:
        oldest = (now_ms - now_ms % MINUTE_MS) - WINDOW_MS
        while self.buckets and self.buckets[0].minute_ms < oldest:
            gone = self.buckets.popleft()
            self.volume = _EXACT.subtract(self.volume, gone.volume)
            self.quote_volume = _EXACT.subtract(self.quote_volume, gone.quote_volume)

    def ticker(self, event_ms: int) -> dict[str, Any]:
        high = max((bucket.high for bucket in self.buckets), key=lambda pair: pair[0])
        low = min((bucket.low for bucket in self.buckets), key=lambda pair: pair[0])
        return mini_ticker_payload(
            event_ms=event_ms,
            symbol=self.symbol,
            close=self.buckets[-1].close,
            open_=self.buckets[0].open,
            high=high[1],
            low=low[1],
            volume=decimal_str(self.volume),
            quote_volume=decimal_str(self.quote_volume),
        )


class MiniTickers:
    """Rolling 24 h mini-ticker statistics of the symbols of one replayed recording.

    Feed every trade with :meth:`add_trade` in replay order, and call :meth:`close_second` when a second of
    replay time ends. Memory is bounded: at most 1441 buckets per symbol.
    """

    def __init__(self) -> None:
        self._windows: dict[str, _SymbolWindow] = {}
        self._traded: dict[str, None] = {}

    def add_trade(self, symbol: str, price: str, quantity: str, trade_ms: int) -> None:
        """Count one trade: ``symbol`` as Binance writes it (uppercase ``s``), ``price`` and ``quantity`` decimal
        strings, ``trade_ms`` its (replayed) trade time ``T`` in ms.

        Raises ``decimal.InvalidOperation`` if ``price`` or ``quantity`` is not a decimal string.
        """
        window = self._windows.get(symbol)
        if window is None:
            window = self._windows[symbol] = _SymbolWindow(symbol)
        window.add(price, quantity, trade_ms)
        self._traded[symbol] = None

    def close_second(self, event_ms: int) -> list[dict[str, Any]]:
        """The mini-tickers of the symbols that traded since the previous call, in first-trade order, each with
        ``E`` = ``event_ms`` (the end of the second, ms); empty if none traded. Drops buckets older than 24 h."""
        tickers = []
        for symbol in self._traded:
            window = self._windows[symbol]
            window.prune(event_ms)
            if window.buckets:
                tickers.append(window.ticker(event_ms))
        self._traded.clear()
        return tickers
