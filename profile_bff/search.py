"""``GET /v1/instruments``: the listed instruments whose symbol contains a query, with their latest prices,
cached for a moment.

Anyone may call the route, so its answers are cached per (query, limit) for :data:`CACHE_S` seconds, at most
:data:`CACHE_ENTRIES` of them (the oldest evicted first): a burst of the same search costs one read of the
prices from Redis per second.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from profile_bff.instruments import Instrument, Instruments
from profile_bff.portfolio import Price

#: How long one answer is served again (s), and how many distinct (query, limit) answers are kept.
CACHE_S = 1.0
CACHE_ENTRIES = 1024


class PriceSource(Protocol):
    """The latest prices (:meth:`profile_bff.store.MarketBus.latest_prices`); raises
    :class:`~profile_bff.errors.StoreUnavailable` when Redis is down."""

    async def latest_prices(self, symbols: Iterable[str]) -> dict[str, Price]: ...


@dataclass(frozen=True, slots=True)
class Quote:
    """A found instrument and its latest price (``None``: the aggregator has published none)."""

    instrument: Instrument
    price: Price | None


class InstrumentSearch:
    """Searches ``instruments`` (:meth:`profile_bff.instruments.Instruments.search`) and adds the prices of
    ``prices``; ``clock`` is a monotonic clock in seconds."""

    def __init__(
        self,
        instruments: Instruments,
        prices: PriceSource,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._instruments = instruments
        self._prices = prices
        self._clock = clock
        #: ``(query lowercased, limit)`` → (clock time, answer), oldest first.
        self._cache: OrderedDict[tuple[str, int], tuple[float, list[Quote]]] = OrderedDict()

    async def search(self, query: str, limit: int) -> list[Quote]:
        """Up to ``limit`` instruments whose symbol contains ``query`` (any case), the exact match first, then
        those starting with it, then the others, each group by symbol."""
        key = (query.lower(), limit)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < CACHE_S:
            return cached[1]
        found = self._instruments.search(query, limit)
        prices = await self._prices.latest_prices(instrument.symbol for instrument in found)
        quotes = [Quote(instrument, prices.get(instrument.symbol)) for instrument in found]
        self._cache[key] = (now, quotes)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return quotes
