"""Mini-tickers derived from replayed trades: Binance's "Individual Symbol Mini Ticker Stream"
(``<symbol>@miniTicker``) and "All Market Mini Tickers Stream" (``!miniTicker@arr``).

No public capture of mini-ticker frames exists, so the replay exchange computes them: every second of replay
time, for each symbol that traded in that second, rolling 24 h statistics over its replayed trades. The window
is kept in 1-minute buckets, so it covers the trades of the current minute and of the 1440 minutes before it
(at most 1441 buckets per symbol): Binance's own window is exact to the millisecond, this one to the minute.
The window's high and low are kept as sliding-window extremes (a deque of the buckets that may still hold the
high, highs decreasing from the front, and likewise for the low), so a ticker costs the same whatever the
window holds, rather than a pass over its up to 1441 buckets every second.

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
    """The 24 h rolling window of one symbol; ``volume`` and ``quote_volume`` are running sums (exact).

    ``highs``: the buckets that hold the window's high or may hold it once older buckets leave, oldest first,
    their highs strictly decreasing (a bucket goes when a newer one's high reaches it; among equal highs the
    oldest stays first, as ``max`` over the buckets would pick it); ``highs[0]`` holds the window's high.
    ``lows`` likewise for the low, increasing.
    """

    __slots__ = ("buckets", "highs", "lows", "quote_volume", "symbol", "volume")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.buckets: deque[_Bucket] = deque()
        self.highs: deque[_Bucket] = deque()
        self.lows: deque[_Bucket] = deque()
        self.volume = Decimal(0)
        self.quote_volume = Decimal(0)

    def _rank(self, bucket: _Bucket, new_high: bool, new_low: bool) -> None:
        """``bucket``, the newest, was added (its high and low new) or got a higher high or a lower low: it
        goes to the back of ``highs`` / ``lows``, past the buckets it makes irrelevant."""
        if new_high:
            highs, value = self.highs, bucket.high[0]
            if highs and highs[-1] is bucket:
                highs.pop()
            while highs and highs[-1].high[0] < value:
                highs.pop()
            highs.append(bucket)
        if new_low:
            lows, value = self.lows, bucket.low[0]
            if lows and lows[-1] is bucket:
                lows.pop()
            while lows and lows[-1].low[0] > value:
                lows.pop()
            lows.append(bucket)

    def add(self, price: str, quantity: str, trade_ms: int) -> None:
        value, amount = Decimal(price), Decimal(quantity)
        quote = _EXACT.multiply(value, amount)
        minute = trade_ms - trade_ms % MINUTE_MS
        last = self.buckets[-1] if self.buckets else None
        if last is None or minute > last.minute_ms:
            bucket = _Bucket(minute, price, (value, price), (value, price), price, amount, quote)
            self.buckets.append(bucket)
            self._rank(bucket, new_high=True, new_low=True)
        else:
            # A trade timed in an earlier minute than the newest bucket (out-of-order T) joins the newest one:
            # the window stays ordered and its error is below one minute.
            higher, lower = value > last.high[0], value < last.low[0]
            if higher:
                last.high = (value, price)
            if lower:
                last.low = (value, price)
            if higher or lower:
                self._rank(last, new_high=higher, new_low=lower)
            last.close = price
            last.volume = _EXACT.add(last.volume, amount)
            last.quote_volume = _EXACT.add(last.quote_volume, quote)
        self.volume = _EXACT.add(self.volume, amount)
        self.quote_volume = _EXACT.add(self.quote_volume, quote)

    def prune(self, now_ms: int) -> None:
        oldest = (now_ms - now_ms % MINUTE_MS) - WINDOW_MS
        while self.buckets and self.buckets[0].minute_ms < oldest:
            gone = self.buckets.popleft()
            if self.highs[0] is gone:
                self.highs.popleft()
            if self.lows[0] is gone:
                self.lows.popleft()
            self.volume = _EXACT.subtract(self.volume, gone.volume)
            self.quote_volume = _EXACT.subtract(self.quote_volume, gone.quote_volume)

    def ticker(self, event_ms: int) -> dict[str, Any]:
        return mini_ticker_payload(
            event_ms=event_ms,
            symbol=self.symbol,
            close=self.buckets[-1].close,
            open_=self.buckets[0].open,
            high=self.highs[0].high[1],
            low=self.lows[0].low[1],
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
