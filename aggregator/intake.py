"""From raw frames to outputs: trades → one-second windows → SecondStat publisher; mini-tickers → Kafka and
the 24 h tickers in Redis.

Everything here runs on the event loop without awaiting, so a slow Redis or Kafka can never hold up intake:
the outputs are the never-blocking ``submit`` of :class:`aggregator.store.StatPublisher`,
:class:`aggregator.store.TickerProducer` and :class:`aggregator.store.TickerStore`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from aggregator.secondstat import SecondStat, SecondWindows
from aggregator.tickers import KafkaMsg
from crypto_mesh.binance import (
    MalformedFrame,
    MalformedTicker,
    MiniTicker,
    UnknownEvent,
    parse_mini_ticker_frame,
    parse_trade_frame,
)
from crypto_mesh.gaps import GapDetector
from crypto_mesh.logs import get_logger

log = get_logger(__name__)

#: How often open windows are checked against the wall clock (ms).
TICK_MS = 100


def now_ms() -> int:
    """Local wall-clock time, Unix ms."""
    return time.time_ns() // 1_000_000


@dataclass
class TradeCounters:
    """Counts of the trade path since start: frames ``parsed`` into trades, ``malformed`` frames,
    ``unknown_event`` frames (well-formed, not a trade), ``wrong_symbol`` trades (another symbol than the
    stream's), ``late`` trades (their second was already closed), ``duplicates`` (their id was already in
    the window), ``stats`` SecondStats closed, ``gaps`` jumps of a stream's trade / aggregate id beyond +1 (also
    across reconnects to socket_proxy), ``ids_missed`` the ids those jumps skipped and ``incomplete`` seconds
    those jumps left without a SecondStat (their windows lacked skipped trades)."""

    parsed: int = 0
    malformed: int = 0
    unknown_event: int = 0
    wrong_symbol: int = 0
    late: int = 0
    duplicates: int = 0
    stats: int = 0
    gaps: int = 0
    ids_missed: int = 0
    incomplete: int = 0


class TradeIntake:
    """Parses raw trade frames, feeds :class:`SecondWindows`, hands closed SecondStats to ``emit``.

    ``emit`` must not block (it is :meth:`aggregator.store.StatPublisher.submit`). :meth:`run_clock` closes
    windows by wall clock every :data:`TICK_MS`.
    """

    def __init__(self, windows: SecondWindows, emit: Callable[[SecondStat], None]) -> None:
        self.windows = windows
        self._emit = emit
        self.counters = TradeCounters()
        self.gaps = GapDetector()

    def on_frames(self, symbol: str, frames: Iterable[bytes], received_ms: int) -> None:
        """Process raw frames of ``symbol``'s trade stream that arrived at local Unix ms ``received_ms``.
        A frame that does not parse, is not a trade, or is of another symbol is counted and dropped."""
        counters = self.counters
        for raw in frames:
            try:
                trade = parse_trade_frame(raw)
            except UnknownEvent:
                counters.unknown_event += 1
                continue
            except MalformedFrame as exc:
                counters.malformed += 1
                log.debug("trade_frame_malformed", symbol=symbol, error=str(exc))
                continue
            if trade.symbol != symbol:
                counters.wrong_symbol += 1
                continue
            counters.parsed += 1
            skipped = self.gaps.observe_id(symbol, trade.trade_id)
            self._publish(self.windows.add(trade, received_ms, after_gap=skipped > 0))
        counters.late = self.windows.late
        counters.duplicates = self.windows.duplicates
        counters.gaps = self.gaps.gaps
        counters.ids_missed = self.gaps.missed
        counters.incomplete = self.windows.incomplete

    def interrupt(self, symbol: str) -> None:
        """``symbol``'s stream to socket_proxy ended: its open second is published only if the first trade after
        the reconnect shows no trade was missed (:meth:`SecondWindows.interrupt`)."""
        self.windows.interrupt(symbol)

    def forget(self, symbol: str) -> None:
        """Drop the window and gap state of an untracked symbol."""
        self.windows.forget(symbol)
        self.gaps.forget(symbol)

    def close_until(self, wall_ms: int) -> None:
        """Close and emit the windows due at local Unix ms ``wall_ms``."""
        self._publish(self.windows.close_until(wall_ms))
        self.counters.incomplete = self.windows.incomplete

    async def run_clock(self) -> None:
        """Close windows by wall clock forever (cancel to stop)."""
        while True:
            await asyncio.sleep(TICK_MS / 1000)
            self.close_until(now_ms())

    def _publish(self, stats: list[SecondStat]) -> None:
        for stat in stats:
            self.counters.stats += 1
            self._emit(stat)


@dataclass
class TickerCounters:
    """Counts of the mini-ticker path: ``frames`` received, ``malformed`` frames or elements, ``records``
    handed to the Kafka producer."""

    frames: int = 0
    malformed: int = 0
    records: int = 0


class TickerIntake:
    """Parses mini-ticker frames: hands each ticker as a KafkaMsg record to ``emit``, and the valid tickers of
    each frame, as one list, to ``keep`` (the 24 h ticker store). Both must not block."""

    def __init__(self, emit: Callable[[KafkaMsg], None], keep: Callable[[list[MiniTicker]], None]) -> None:
        self._emit = emit
        self._keep = keep
        self.counters = TickerCounters()

    def on_frames(self, frames: Iterable[bytes], received_ms: int) -> None:
        """Process raw ``!miniTicker@arr`` frames that arrived at local Unix ms ``received_ms``."""
        for raw in frames:
            self.counters.frames += 1
            try:
                tickers, rejected = parse_mini_ticker_frame(raw)
            except MalformedTicker:
                self.counters.malformed += 1
                continue
            self.counters.malformed += rejected
            for ticker in tickers:
                self.counters.records += 1
                self._emit(KafkaMsg.of(ticker, received_ms))
            if tickers:
                self._keep(tickers)


def counters_json(counters: TradeCounters | TickerCounters) -> dict[str, int]:
    """Counters as a JSON object."""
    return asdict(counters)
