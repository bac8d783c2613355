"""One-second windows of trades per symbol, closed by watermark into :class:`SecondStat` (pure, no I/O).

A trade belongs to the second ``T - T % 1000`` of its exchange trade time ``T``. Per symbol at most one window
is open. It closes, exactly once, when

- a trade of a later second arrives (the exchange sends a symbol's trades in id order, so an earlier second
  can no longer receive trades), or
- ``grace_ms`` pass after the end of the second with no later trade: :meth:`SecondWindows.close_until`.

The second of a closed window and every earlier one are final: a trade arriving for them is *late*, counted
and dropped, so a published SecondStat is never revised or republished. A trade whose id is already in the
open window (a frame delivered twice, e.g. around an upstream reconnect) is a *duplicate*, counted and
dropped.
Seconds without trades produce nothing.

Gaps: a trade added with ``after_gap=True`` follows ids that were skipped (``crypto_mesh.gaps``: lost while the
subscription to socket_proxy was re-established, and not fetched back from the exchange's trade history, see
:mod:`aggregator.intake`). The skipped trades happened between the previous trade and this one, so the open
window and this trade's window may both lack some of them: each is closed like any other and its SecondStat is
marked ``incomplete`` (counted in :attr:`SecondWindows.incomplete`), so no second is published as whole that may
not be. Seconds in between had only skipped trades, and produce nothing as before.

Clock offset: the wall-clock test compares local time with exchange time. To be right when the exchange
clock and the local clock differ (skew, or a replayed recording whose timestamps are not shifted), each
symbol remembers ``received_ms - T`` of its latest trade and reads the local clock through that offset:
the window closes ``grace_ms`` after the second has ended *as seen by the stream*. With synchronised clocks
this is the plain wall-clock rule plus the network latency.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow
from typing import Any

from crypto_mesh.binance import Trade

SECOND_MS = 1000

#: Sums of prices × quantities must be exact: 60 significant digits hold any Binance price × quantity sum
#: with room to spare, and trapping Inexact turns a silent rounding into a loud error.
_EXACT = Context(prec=60, traps=[Inexact, InvalidOperation, DivisionByZero, Overflow])

#: VWAP is a quotient, so it is rounded: to Binance's finest price step (8 decimal places), half-even.
VWAP_QUANTUM = Decimal("1E-8")
_DIVISION = Context(prec=60, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class SecondStat:
    """Trades of one symbol in one second of exchange time, as published on Redis channel ``<symbol>``.

    ``second_ms``: start of the second (Unix ms, ``T`` floored); ``close``: price of the trade with the
    highest id in the second, ``close_id`` that id; ``open``: price of the lowest id; ``high``/``low``:
    extreme prices; ``volume``: Σ quantity (base asset); ``quote_volume``: Σ price × quantity (quote
    asset), exact; ``count``: number of trades; ``vwap``: quote_volume / volume rounded half-even to 8
    decimal places; ``incomplete``: trades of the second are known to be missing (module doc, "Gaps"), so
    every field but ``second_ms`` may differ from the exchange's second.
    """

    symbol: str
    second_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    count: int
    close_id: int
    incomplete: bool = False

    @property
    def vwap(self) -> Decimal:
        return _DIVISION.divide(self.quote_volume, self.volume).quantize(VWAP_QUANTUM, context=_DIVISION)

    def to_json(self) -> dict[str, Any]:
        """The SecondStat JSON object of docs/CONTRACTS.md, ``{"s", "t", "p", "o", "h", "l", "v", "q", "n",
        "vwap", "i"}`` and ``"x": true`` when incomplete (decimals stay ``Decimal``; encode with
        :func:`crypto_mesh.jsonutil.dumps`)."""
        stat = {
            "s": self.symbol,
            "t": self.second_ms,
            "p": self.close,
            "o": self.open,
            "h": self.high,
            "l": self.low,
            "v": self.volume,
            "q": self.quote_volume,
            "n": self.count,
            "vwap": self.vwap,
            "i": self.close_id,
        }
        if self.incomplete:
            stat["x"] = True
        return stat


class _Window:
    """The open window of one symbol: running aggregates of the trades of ``second_ms``."""

    __slots__ = (
        "close",
        "close_id",
        "complete",
        "count",
        "high",
        "ids",
        "interrupted",
        "low",
        "open",
        "open_id",
        "quote_volume",
        "second_ms",
        "volume",
    )

    def __init__(self, second_ms: int, trade: Trade) -> None:
        self.second_ms = second_ms
        self.open_id = self.close_id = trade.trade_id
        self.open = self.close = self.high = self.low = trade.price
        self.volume = trade.quantity
        self.quote_volume = _EXACT.multiply(trade.price, trade.quantity)
        self.count = 1
        self.ids = {trade.trade_id}
        #: False once trades of this second are known to be missing (see "Gaps" in the module doc).
        self.complete = True
        #: The stream ended while this window was open; the next trade tells whether trades were lost.
        self.interrupted = False

    def add(self, trade: Trade) -> bool:
        """Add ``trade``; False (and no change) if a trade with its id is already in the window."""
        if trade.trade_id in self.ids:
            return False
        self.ids.add(trade.trade_id)
        # Arrival order is not trusted: open and close follow the trade ids.
        if trade.trade_id > self.close_id:
            self.close_id, self.close = trade.trade_id, trade.price
        if trade.trade_id < self.open_id:
            self.open_id, self.open = trade.trade_id, trade.price
        self.high = max(self.high, trade.price)
        self.low = min(self.low, trade.price)
        self.volume = _EXACT.add(self.volume, trade.quantity)
        self.quote_volume = _EXACT.add(self.quote_volume, _EXACT.multiply(trade.price, trade.quantity))
        self.count += 1
        return True

    def stat(self, symbol: str) -> SecondStat:
        return SecondStat(
            incomplete=not self.complete,
            symbol=symbol,
            second_ms=self.second_ms,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=self.volume,
            quote_volume=self.quote_volume,
            count=self.count,
            close_id=self.close_id,
        )


class _SymbolState:
    __slots__ = ("final_before_ms", "offset_ms", "window")

    def __init__(self) -> None:
        self.window: _Window | None = None
        #: Every second starting before this (ms) is closed: trades for it are late. While a window is open,
        #: its own second.
        self.final_before_ms = 0
        #: Local receive time minus exchange trade time of the latest trade (ms).
        self.offset_ms = 0


class SecondWindows:
    """Per-symbol one-second windows; see the module doc for the closing rules.

    ``grace_ms``: how long after the end of a second (exchange time, read through the symbol's clock offset)
    a window without a later trade is closed. ``late`` counts trades dropped because their second was
    already closed, ``duplicates`` trades dropped because their id was already in the window, ``incomplete``
    SecondStats closed marked incomplete because trades of their second were skipped. Memory: one small state
    per symbol that has had a trade since its last :meth:`forget`.
    """

    def __init__(self, grace_ms: int) -> None:
        if grace_ms < 0:
            raise ValueError("grace_ms must be >= 0")
        self.grace_ms = grace_ms
        self.late = 0
        self.duplicates = 0
        self.incomplete = 0
        self._symbols: dict[str, _SymbolState] = {}

    def add(
        self, trade: Trade, received_ms: int | None = None, *, after_gap: bool = False
    ) -> list[SecondStat]:
        """Add ``trade`` (received at local Unix ms ``received_ms``; ``None``: the local clock is the
        exchange clock). Returns the SecondStat of the window this trade closed (a trade of a later second),
        else ``[]``. A late trade returns ``[]`` and increments :attr:`late`, a duplicate
        :attr:`duplicates`. ``after_gap``: ids were skipped just before this trade, so the open window and
        this trade's window are incomplete (module doc, "Gaps")."""
        state = self._symbols.get(trade.symbol)
        if state is None:
            state = self._symbols[trade.symbol] = _SymbolState()
        second_ms = trade.time_ms - trade.time_ms % SECOND_MS
        window = state.window
        if window is not None and window.interrupted:
            window.interrupted = False
            window.complete = window.complete and not after_gap
        if window is not None and second_ms == window.second_ms:
            if not window.add(trade):
                self.duplicates += 1
                return []
            closed: list[SecondStat] = []
        elif second_ms < state.final_before_ms:
            self.late += 1
            return []
        else:
            if window is not None and after_gap:
                window.complete = False
            closed = self._closed(trade.symbol, window)
            window = state.window = _Window(second_ms, trade)
            state.final_before_ms = second_ms
        if after_gap:
            window.complete = False
        if received_ms is not None:
            state.offset_ms = received_ms - trade.time_ms
        return closed

    def close_until(self, now_ms: int) -> list[SecondStat]:
        """Close every open window whose second ended at least ``grace_ms`` before ``now_ms`` (local Unix ms,
        read through each symbol's clock offset). Returns their SecondStats, in no particular order."""
        closed = []
        for symbol, state in self._symbols.items():
            window = state.window
            if window is None:
                continue
            end_ms = window.second_ms + SECOND_MS
            if now_ms - state.offset_ms >= end_ms + self.grace_ms:
                if window.interrupted:
                    window.complete = False
                closed += self._closed(symbol, window)
                state.window = None
                state.final_before_ms = end_ms
        return closed

    def _closed(self, symbol: str, window: _Window | None) -> list[SecondStat]:
        """What closing ``window`` publishes: its SecondStat, marked incomplete (and counted in
        :attr:`incomplete`) unless it holds its whole second."""
        if window is None:
            return []
        if not window.complete:
            self.incomplete += 1
        return [window.stat(symbol)]

    def interrupt(self, symbol: str) -> None:
        """``symbol``'s stream ended: hold its open window until the next trade shows whether trades were lost
        meanwhile (module doc, "Interruptions"). Nothing happens to a symbol without an open window."""
        state = self._symbols.get(symbol)
        if state is not None and state.window is not None:
            state.window.interrupted = True

    def resume(self, symbol: str, final_before_ms: int) -> None:
        """Treat every second of ``symbol`` starting before ``final_before_ms`` (Unix ms) as closed: they were
        published before this stream began (by another replica, or before a restart), so a trade of theirs is
        late and none of them is published again. Nothing changes while a window of the symbol is open."""
        state = self._symbols.get(symbol)
        if state is None:
            state = self._symbols[symbol] = _SymbolState()
        if state.window is None:
            state.final_before_ms = max(state.final_before_ms, final_before_ms)

    def discard_open(self, symbol: str) -> None:
        """Drop ``symbol``'s open window unpublished (it lacks trades that will not come); a later trade of
        its second opens it anew. Earlier seconds stay final."""
        state = self._symbols.get(symbol)
        if state is not None:
            state.window = None

    def forget(self, symbol: str) -> None:
        """Drop all state of ``symbol``, its open window included (unpublished): the symbol is no longer
        tracked."""
        self._symbols.pop(symbol, None)

    def open_symbols(self) -> list[str]:
        """Symbols with an open window."""
        return [symbol for symbol, state in self._symbols.items() if state.window is not None]

    def __len__(self) -> int:
        """Number of symbols with state."""
        return len(self._symbols)
