"""From raw frames to outputs: trades → one-second windows → SecondStat publisher; mini-tickers → Kafka and
the 24 h tickers in Redis.

Skipped trade ids: when a symbol's ids jump, :class:`TradeIntake` asks for the skipped trades
(:mod:`aggregator.backfill`; its ``backfill`` callback starts the fetch and later calls :meth:`TradeIntake.on_fill`)
and holds the symbol's trades back until they come: its open window is interrupted
(:meth:`aggregator.secondstat.SecondWindows.interrupt`), so the clock still closes it at the grace, marked
incomplete, if the fill is late. The fetched trades are added in id order, then the held ones; if the fetched run
stops short of the gap's end, the first held trade is added after a gap, so the seconds still lacking trades are
published marked incomplete.

Resumed streams: a symbol whose stream starts (taken over from another replica, or after a restart) with the
last second published on Redis as its :class:`aggregator.backfill.ResumePoint`
(:meth:`TradeIntake.resume_after`) continues from there when its first trade fits
(:func:`aggregator.backfill.resumes`): the trades since that second's last one are filled as above, so the
seconds between are published whole, and nothing at or before it again. A resumed stream's fill that comes
back short publishes no incomplete second: the seconds it could not rebuild, and the first held trade's, are
left out. A first trade that does not fit skips the first window.

Everything here runs on the event loop without awaiting, so a slow Redis or Kafka can never hold up intake:
the outputs are the never-blocking ``submit`` of :class:`aggregator.store.StatPublisher`,
:class:`aggregator.store.TickerProducer` and :class:`aggregator.store.TickerStore`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from aggregator.backfill import Fill, ResumePoint, filling_run, plan_fill, resumes
from aggregator.secondstat import SECOND_MS, SecondStat, SecondWindows
from aggregator.tickers import KafkaMsg
from crypto_mesh.binance import (
    MalformedFrame,
    MalformedTicker,
    MiniTicker,
    Trade,
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
    across reconnects to socket_proxy), ``ids_missed`` the ids those jumps skipped, ``backfills`` fills of those
    ids started, ``backfills_whole`` those that brought every skipped trade back, ``backfills_partial`` those that
    ended without every skipped trade (late, refused, or capped),
    ``backfilled`` trades added from fills, ``incomplete`` SecondStats published marked incomplete (their
    windows lacked skipped trades), ``first_windows_skipped`` first windows of taken-over symbols not
    published (:meth:`TradeIntake.skip_first_window`), and ``resumed`` streams that continued after the last
    second published (:meth:`TradeIntake.resume_after`; their fetched ids count in ``backfills`` and
    ``backfilled``, not in ``gaps``)."""

    parsed: int = 0
    malformed: int = 0
    unknown_event: int = 0
    wrong_symbol: int = 0
    late: int = 0
    duplicates: int = 0
    stats: int = 0
    gaps: int = 0
    ids_missed: int = 0
    backfills: int = 0
    backfills_whole: int = 0
    backfills_partial: int = 0
    backfilled: int = 0
    incomplete: int = 0
    first_windows_skipped: int = 0
    resumed: int = 0


class TradeIntake:
    """Parses raw trade frames, feeds :class:`SecondWindows`, hands closed SecondStats to ``emit``.

    ``emit`` must not block (it is :meth:`aggregator.store.StatPublisher.submit`). :meth:`run_clock` closes
    windows by wall clock every :data:`TICK_MS`. ``backfill(symbol, first_id, wanted_id)``, when set, starts
    fetching the skipped ids ``first_id``..``wanted_id`` of ``symbol`` without blocking, and calls
    :meth:`on_fill` with what it got (module doc); at most ``max_backfill_ids`` ids per gap. Unset, skipped ids
    only mark the seconds around them incomplete.
    """

    def __init__(
        self,
        windows: SecondWindows,
        emit: Callable[[SecondStat], None],
        max_backfill_ids: int = 0,
    ) -> None:
        self.windows = windows
        self._emit = emit
        self.counters = TradeCounters()
        self.gaps = GapDetector()
        self.backfill: Callable[[str, int, int], None] | None = None
        self.max_backfill_ids = max_backfill_ids
        self._fills: dict[str, Fill] = {}
        #: Symbols whose next SecondStat is the first window of a taken-over stream (not published).
        self._skip_first: set[str] = set()
        #: Symbols whose stream has yet to show whether it continues after the last second published.
        self._resume: dict[str, ResumePoint] = {}

    def skip_first_window(self, symbol: str) -> None:
        """Do not publish ``symbol``'s next SecondStat: its stream is about to start (taken over from another
        replica, :mod:`aggregator.ownership`), so its first window began before the stream did and lacks the
        trades before it, while the replica that streamed it until now may have published that second whole.
        Every later second is whole and, computed from the same trades, the same as that replica's."""
        self._skip_first.add(symbol)

    def resume_after(self, symbol: str, point: ResumePoint) -> None:
        """``symbol``'s stream is about to start and ``point`` is the last second published for it (by another
        replica, or before a restart): if its first trade continues from there
        (:func:`aggregator.backfill.resumes` with :attr:`max_backfill_ids`, 0 without ``backfill``), the
        trades in between are fetched and every second after ``point`` is published whole (module doc);
        otherwise its first window is skipped (:meth:`skip_first_window`)."""
        self._skip_first.add(symbol)
        self._resume[symbol] = point

    def on_frames(self, symbol: str, frames: Iterable[bytes], received_ms: int) -> None:
        """Process raw frames of ``symbol``'s trade stream that arrived at local Unix ms ``received_ms``.
        A frame that does not parse, is not a trade, or is of another symbol is counted and dropped."""
        counters, take = self.counters, self._take
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
            take(trade, received_ms)
        self._sync_counters()

    def on_fill(self, symbol: str, first_id: int, frames: Iterable[bytes]) -> None:
        """The fill of ``symbol`` from ``first_id`` ended with ``frames`` (raw trade frames, any order; fewer
        than asked, or none, when it was cut short): add the run of them that fills the gap, then the trades
        held meanwhile (module doc). A fill the symbol no longer waits for (untracked meanwhile) is ignored."""
        fill = self._fills.get(symbol)
        if fill is None or fill.first_id != first_id:
            return
        del self._fills[symbol]
        fetched = []
        for raw in frames:
            try:
                trade = parse_trade_frame(raw)
            except (MalformedFrame, UnknownEvent):
                self.counters.malformed += 1
                continue
            if trade.symbol == symbol:
                fetched.append(trade)
        run = filling_run(fetched, fill.first_id, fill.last_id)
        whole = len(run) == fill.last_id - fill.first_id + 1
        self.counters.backfilled += len(run)
        if whole:
            self.counters.backfills_whole += 1
        else:
            self.counters.backfills_partial += 1
        log.info(
            "trades_backfilled",
            symbol=symbol,
            first_id=fill.first_id,
            missed=fill.last_id - fill.first_id + 1,
            fetched=len(run),
        )
        for trade in run:
            self._publish(self.windows.add(trade))
        (trade, received_ms), *rest = fill.held
        if fill.resumed and not whole:
            # Another replica may have published the seconds the run stops in whole: leave them out rather
            # than publish them incomplete. Trades of seconds already published stay late.
            self.windows.discard_open(symbol)
            self._skip_first.add(symbol)
        self._publish(self.windows.add(trade, received_ms, after_gap=not whole and not fill.resumed))
        for trade, received_ms in rest:
            self._take(trade, received_ms)
        self._sync_counters()

    def _take(self, trade: Trade, received_ms: int) -> None:
        """Window ``trade``, or hold it back while its symbol's fill runs, or start a fill if ids were
        skipped before it."""
        symbol = trade.symbol
        fill = self._fills.get(symbol)
        if fill is not None:
            fill.held.append((trade, received_ms))
            return
        skipped = self.gaps.observe_id(symbol, trade.trade_id)
        point = self._resume.pop(symbol, None) if self._resume else None
        resumed = point is not None and self._resumes(point, trade)
        if resumed:
            skipped = trade.trade_id - point.close_id - 1
        fill = (
            plan_fill(trade.trade_id, skipped, self.max_backfill_ids)
            if skipped and self.backfill is not None
            else None
        )
        if fill is None:
            self._publish(self.windows.add(trade, received_ms, after_gap=skipped > 0))
            return
        fill.held.append((trade, received_ms))
        fill.resumed = resumed
        self._fills[symbol] = fill
        self.counters.backfills += 1
        # The open window waits for the fill as for a resubscription: up to the grace.
        self.windows.interrupt(symbol)
        self.backfill(symbol, fill.first_id, fill.wanted_id)

    def _resumes(self, point: ResumePoint, trade: Trade) -> bool:
        """Whether ``trade``, the first of its symbol's stream, continues from ``point``; if so, the seconds
        up to ``point`` are made final and the first window is published."""
        symbol = trade.symbol
        max_ids = self.max_backfill_ids if self.backfill is not None else 0
        if not resumes(point, trade, max_ids):
            log.info(
                "stream_not_resumed",
                symbol=symbol,
                after_second_ms=point.second_ms,
                after_id=point.close_id,
                first_id=trade.trade_id,
            )
            return False
        self._skip_first.discard(symbol)
        self.windows.resume(symbol, point.second_ms + SECOND_MS)
        self.counters.resumed += 1
        log.info(
            "stream_resumed",
            symbol=symbol,
            after_second_ms=point.second_ms,
            after_id=point.close_id,
            missed=trade.trade_id - point.close_id - 1,
        )
        return True

    def _sync_counters(self) -> None:
        counters = self.counters
        counters.late = self.windows.late
        counters.duplicates = self.windows.duplicates
        counters.gaps = self.gaps.gaps
        counters.ids_missed = self.gaps.missed
        counters.incomplete = self.windows.incomplete

    def interrupt(self, symbol: str) -> None:
        """``symbol``'s stream to socket_proxy ended: its open second is published whole only if the first trade
        after the reconnect shows no trade was missed, or a fill brings back those missed in time
        (:meth:`SecondWindows.interrupt`)."""
        self.windows.interrupt(symbol)

    def forget(self, symbol: str) -> None:
        """Drop the window, gap and fill state of an untracked symbol (its held trades are dropped)."""
        self.windows.forget(symbol)
        self.gaps.forget(symbol)
        self._fills.pop(symbol, None)
        self._skip_first.discard(symbol)
        self._resume.pop(symbol, None)

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
            if stat.symbol in self._skip_first:
                self._skip_first.discard(stat.symbol)
                self.counters.first_windows_skipped += 1
                log.info("first_window_skipped", symbol=stat.symbol, second_ms=stat.second_ms)
                continue
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
