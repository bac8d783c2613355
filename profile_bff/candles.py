"""Market history for the public routes: the candles and indicators of a listed instrument, current to the
last closed second, cached for a moment (``GET /v1/instruments/{symbol}/candles`` and ``.../indicators``;
docs/CONTRACTS.md, "BFF REST").

:class:`MarketHistory` is the use case the views (:mod:`profile_bff.views.market`) call:

- the symbol must be listed by the exchange, whatever its status (a halted symbol still has a history):
  :class:`~profile_bff.errors.InstrumentNotFound` otherwise;
- which candles is a :class:`crypto_mesh.candles.CandleRange` the view has checked;
- the candles come from the ETL's read API (:class:`~profile_bff.clients.EtlClient`; ClickHouse), with
  the symbol's live seconds from Redis folded in (:func:`profile_bff.candle.with_live_seconds`). The ETL
  unreachable is :class:`~profile_bff.errors.EtlUnavailable` (503); Redis unreachable only costs the live
  seconds (logged): ClickHouse's candles are still right, a second or two behind;
- an indicator (:mod:`crypto_mesh.indicators`) is computed over the closes of those same candles, so its
  newest value is current too.

Anyone may call these routes, so each answer is cached per (symbol, selection, indicator) for
:data:`CACHE_S` seconds, at most :data:`CACHE_ENTRIES` of them (the oldest evicted first), and requests
for an answer being computed wait for that computation: a burst of the same chart costs one ETL call and
one Redis read per second.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, TypeVar

from crypto_mesh.binance import InvalidSymbol, normalize_symbol
from crypto_mesh.candles import CandleRange
from crypto_mesh.indicators import indicator
from crypto_mesh.logs import get_logger
from profile_bff.candle import Candle, CandlePage, with_live_seconds
from profile_bff.errors import InstrumentNotFound, StoreUnavailable
from profile_bff.instruments import Instruments

log = get_logger(__name__)

T = TypeVar("T")

#: How long one answer is served again (s), and how many distinct answers are kept.
CACHE_S = 1.0
CACHE_ENTRIES = 1024


class CandleSource(Protocol):
    """The candles held in ClickHouse (:meth:`profile_bff.clients.EtlClient.candles`); raises
    :class:`~profile_bff.errors.EtlUnavailable`."""

    async def candles(self, symbol: str, selection: CandleRange) -> CandlePage: ...


class LiveSeconds(Protocol):
    """A symbol's latest seconds as 1-second candles (:meth:`profile_bff.store.MarketBus.recent_seconds`);
    raises :class:`~profile_bff.errors.StoreUnavailable`."""

    async def recent_seconds(self, symbol: str) -> list[Candle]: ...


@dataclass(frozen=True, slots=True)
class Candles:
    """The candles of ``symbol`` (normalised) that ``selection`` selects, oldest first."""

    symbol: str
    selection: CandleRange
    candles: list[Candle]


@dataclass(frozen=True, slots=True)
class IndicatorSeries:
    """Indicator ``name`` with ``period`` over the candles of ``symbol`` that ``selection`` selects:
    ``points`` are ``(open time in Unix ms, value)`` for each candle from the first that has a value."""

    symbol: str
    selection: CandleRange
    name: str
    period: int
    points: list[tuple[int, Decimal]]


class MarketHistory:
    """Candles and indicators of listed ``instruments`` from ``history`` (the ETL) and ``live`` (Redis);
    ``clock`` is a monotonic clock in seconds."""

    def __init__(
        self,
        instruments: Instruments,
        history: CandleSource,
        live: LiveSeconds,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._instruments = instruments
        self._history = history
        self._live = live
        self._clock = clock
        #: key → (clock time, the answer's computation), oldest first.
        self._cache: OrderedDict[Hashable, tuple[float, asyncio.Future]] = OrderedDict()

    def listed(self, symbol: str) -> str:
        """``symbol`` normalised, if the exchange lists it; :class:`InstrumentNotFound` otherwise."""
        try:
            normalised = normalize_symbol(symbol)
        except InvalidSymbol:
            raise InstrumentNotFound(symbol[:40]) from None
        if self._instruments.get(normalised) is None:
            raise InstrumentNotFound(normalised)
        return normalised

    async def candles(self, symbol: str, selection: CandleRange) -> Candles:
        """The candles of a listed ``symbol`` that ``selection`` selects, the live seconds included."""
        listed = self.listed(symbol)
        return await self._cached(("candles", listed, selection), lambda: self._candles(listed, selection))

    async def indicator(
        self, symbol: str, selection: CandleRange, name: str, period: int | None
    ) -> IndicatorSeries:
        """Indicator ``name`` with ``period`` (its default when ``None``) over the candles
        :meth:`candles` answers; raises :class:`crypto_mesh.indicators.InvalidIndicator`."""
        computation, period = indicator(name, period)
        listed = self.listed(symbol)

        async def compute() -> IndicatorSeries:
            found = await self.candles(listed, selection)
            closes = [candle.close for candle in found.candles]
            # Up to tens of milliseconds for 1,000 closes: off the event loop's thread.
            values = await asyncio.to_thread(computation, closes, period)
            points = [
                (candle.open_time_ms, value)
                for candle, value in zip(found.candles, values, strict=True)
                if value is not None
            ]
            return IndicatorSeries(listed, selection, name, period, points)

        return await self._cached(("indicator", listed, selection, name, period), compute)

    async def _candles(self, symbol: str, selection: CandleRange) -> Candles:
        page, live = await asyncio.gather(self._history.candles(symbol, selection), self._recent(symbol))
        return Candles(symbol, selection, with_live_seconds(page, live, selection))

    async def _recent(self, symbol: str) -> list[Candle]:
        try:
            return await self._live.recent_seconds(symbol)
        except StoreUnavailable as exc:
            log.warning("live_seconds_unavailable", symbol=symbol, error=str(exc))
            return []

    async def _cached(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        """The answer for ``key``: the one computed less than :data:`CACHE_S` ago or being computed, else
        ``compute()``'s. A failed computation is not kept."""
        now = self._clock()
        entry = self._cache.get(key)
        if entry is None or now - entry[0] >= CACHE_S:
            entry = (now, asyncio.ensure_future(compute()))
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        future = entry[1]
        try:
            # shielded: a client that goes away does not cancel the answer others wait for
            return await asyncio.shield(future)
        except Exception:
            if self._cache.get(key) is entry:
                del self._cache[key]
            raise
