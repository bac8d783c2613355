"""``GET /v1/instruments`` and ``GET /v1/instruments/{symbol}``: the listed instruments with their 24 h
tickers and latest prices, ranked for a query, paged by an opaque cursor, cached for a moment.

Ranking (:func:`rank`, pure): the instruments whose symbol contains the query (any case), in three groups: the
exact match, then the symbols starting with the query, then the rest; within each group by 24 h quote volume,
descending, the instruments without a ticker after those with one, ties and those without by symbol. So
``q=btc`` puts BTCUSDT, the most traded ``btc…`` pair, first.

Paging: a cursor is where a page ended (the last instrument's symbol and the quote volume it was ranked by,
with the query), base64url-encoded JSON; the next page starts right after that position in the ranking of the
moment. Pages of one ticker snapshot never overlap nor leave a gap; across snapshots (they change every
:data:`CACHE_S`) only an instrument whose volume moved across the page boundary may show twice or not at all.
A cursor of another query, or one this route did not give, is :class:`InvalidCursor`.

Prices: an instrument's ``price`` and its time are the newer of two sources (:func:`latest_price`): the 24 h
ticker's close at its event time ``E`` (every listed symbol, from the exchange's all-market mini-tickers) and,
for a symbol the mesh follows, its latest SecondStat price at its second ``t`` (the mesh's own live price).

Caching: anyone may call these routes. The tickers of every symbol are read from Redis (``HGETALL
ticker:24h``) at most once per :data:`CACHE_S` for all searches together, and each answer is kept for
:data:`CACHE_S` per (query, limit, cursor), or per symbol, at most :data:`CACHE_ENTRIES` of them (the oldest
evicted first). Concurrent requests for an answer being computed wait for that one computation.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Generic, Literal, Protocol, TypeVar

from crypto_mesh import jsonutil
from crypto_mesh.binance import SYMBOL_PATTERN
from crypto_mesh.decimals import DecimalFieldError, parse_decimal
from profile_bff.instruments import Instrument, Instruments
from profile_bff.portfolio import Price

#: How long one answer, and one read of every ticker, is served again (s); distinct answers kept.
CACHE_S = 1.0
CACHE_ENTRIES = 1024
#: A followed symbol whose latest SecondStat's second started longer ago than this (s) has no live data: its
#: trade stream is stalled, or nobody traded it for that long.
LIVE_MAX_AGE_S = 60
#: The longest cursor this module gives (a 20-letter query, a 20-letter symbol, a long decimal) is ~150
#: characters; longer ones are refused before decoding.
MAX_CURSOR_CHARS = 256

_ZERO = Decimal(0)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class InvalidTicker(ValueError):
    """A value of ``ticker:24h`` that is not the 24 h ticker JSON of docs/CONTRACTS.md."""


class InvalidCursor(ValueError):
    """A cursor this route did not give for this query; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Ticker:
    """A symbol's rolling 24 h ticker as the aggregator keeps it (docs/CONTRACTS.md, "24 h ticker JSON"):
    ``event_time_ms`` its ``E`` (exchange Unix ms); ``close``, ``open``, ``high``, ``low``; ``volume`` (base)
    and ``quote_volume``; ``change_price`` (close − open) and ``change_percent`` (8 places): exact decimals
    as the mini-ticker carried them."""

    event_time_ms: int
    close: Decimal
    open: Decimal
    high: Decimal
    low: Decimal
    volume: Decimal
    quote_volume: Decimal
    change_price: Decimal
    change_percent: Decimal


_TICKER_AMOUNTS = {"c": "close", "o": "open", "h": "high", "l": "low", "v": "volume", "q": "quote_volume"}
#: The magnitudes an amount may have (its adjusted exponent, Decimal.adjusted()), zero aside: Binance amounts
#: have at most 8 decimal places and quote volumes below 10^20, so this only keeps the exponent a crafted
#: value could carry (``"1E+999999"``, a gigabyte once written out) away from the arithmetic and the answers.
#: Cheaper than parse_decimal's scale check, which costs 5 times the parse: every ticker is read every second.
_MAGNITUDES = range(-24, 30)


def parse_ticker(payload: bytes | str) -> Ticker:
    """The :class:`Ticker` of a 24 h ticker JSON. Raises :class:`InvalidTicker` for malformed JSON, an ``E``
    that is not a non-negative integer, or an amount that is not a decimal string (≥ 0, except the change)."""
    data = jsonutil.loads_object(payload, InvalidTicker, "ticker")
    event_time = data.get("E")
    if not isinstance(event_time, int) or isinstance(event_time, bool) or event_time < 0:
        raise InvalidTicker("E must be a non-negative integer")
    amounts: dict[str, Decimal] = {}
    try:
        for key, name in _TICKER_AMOUNTS.items():
            amounts[name] = _amount(data.get(key), "nonnegative")
        for name in ("change_price", "change_percent"):
            amounts[name] = _amount(data.get(name), "any")
    except DecimalFieldError as exc:
        raise InvalidTicker(f"an amount {exc}") from None
    return Ticker(event_time_ms=event_time, **amounts)


def _amount(raw: object, minimum: Literal["any", "nonnegative"]) -> Decimal:
    value = parse_decimal(raw, minimum=minimum)
    if value and value.adjusted() not in _MAGNITUDES:
        raise DecimalFieldError(f"is out of range: {str(raw)[:40]!r}")
    return value


def latest_price(ticker: Ticker | None, second: Price | None) -> tuple[Decimal, int] | None:
    """The newer of the ticker's close (at ``E``) and the latest SecondStat price (of the second starting at
    ``t``), as ``(price, time ms)``; ``None`` with neither. The SecondStat holds trades up to ``t`` + 999 ms,
    so the ticker is newer only when ``E`` ≥ ``t`` + 1000."""
    if second is not None and (ticker is None or ticker.event_time_ms < second.second_ms + 1000):
        return second.value, second.second_ms
    if ticker is not None:
        return ticker.close, ticker.event_time_ms
    return None


@dataclass(frozen=True, slots=True)
class Quote:
    """A found instrument with its 24 h ``ticker`` (``None``: the exchange sent none yet) and ``second``, the
    latest SecondStat price (``None``: the mesh does not follow the symbol, or it has not traded yet)."""

    instrument: Instrument
    ticker: Ticker | None
    second: Price | None

    @property
    def price(self) -> tuple[Decimal, int] | None:
        """The latest price and its time (Unix ms): :func:`latest_price`."""
        return latest_price(self.ticker, self.second)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a search: ``quotes`` in rank order and the cursor of the next page (``None``: the last)."""

    quotes: list[Quote]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Detail:
    """One instrument: its ``quote`` and whether the mesh has live data of it: ``None`` when the mesh does not
    follow it (no SecondStat), else whether its latest second started at most :data:`LIVE_MAX_AGE_S` ago."""

    quote: Quote
    live: bool | None


# -- ranking and cursors (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ended: the symbol of its last instrument and the quote volume that instrument was ranked
    by (``None``: it had no ticker)."""

    symbol: str
    quote_volume: Decimal | None


#: (group: 0 exact, 1 prefix, 2 other; 0 with a ticker, 1 without; −quote volume; symbol), ascending.
RankKey = tuple[int, int, Decimal, str]


def rank_key(symbol: str, needle: str, quote_volume: Decimal | None) -> RankKey:
    """The sort key of ``symbol`` for the lowercase query ``needle`` (which ``symbol`` contains)."""
    group = 0 if symbol == needle else 1 if symbol.startswith(needle) else 2
    if quote_volume is None:
        return (group, 1, _ZERO, symbol)
    return (group, 0, -quote_volume, symbol)


@dataclass(frozen=True, slots=True)
class Ranking:
    """The instruments matching ``needle``, in rank order, with their keys (:func:`rank`)."""

    needle: str
    keys: list[RankKey]
    instruments: list[Instrument]

    def page(self, after: Position | None, limit: int) -> tuple[list[Instrument], Position | None]:
        """Up to ``limit`` instruments ranked after ``after`` (from the first with ``None``), and the position
        of the last of them when more follow (``None`` otherwise)."""
        start = 0
        if after is not None:
            start = _bisect_right(self.keys, rank_key(after.symbol, self.needle, after.quote_volume))
        end = start + limit
        found = self.instruments[start:end]
        if end >= len(self.instruments) or not found:
            return found, None
        last = self.keys[end - 1]
        return found, Position(last[3], None if last[1] else -last[2])


def _bisect_right(keys: list[RankKey], key: RankKey) -> int:
    low, high = 0, len(keys)
    while low < high:
        middle = (low + high) // 2
        if key < keys[middle]:
            high = middle
        else:
            low = middle + 1
    return low


def rank(instruments: Iterable[Instrument], query: str, tickers: Mapping[str, Ticker]) -> Ranking:
    """The instruments whose symbol contains ``query`` (any case), ranked as the module docstring says by the
    quote volumes of ``tickers`` (symbol → ticker)."""
    needle = query.lower()
    keyed = []
    for instrument in instruments:
        if needle in instrument.symbol:
            ticker = tickers.get(instrument.symbol)
            volume = None if ticker is None else ticker.quote_volume
            keyed.append((rank_key(instrument.symbol, needle, volume), instrument))
    keyed.sort(key=lambda pair: pair[0])
    return Ranking(needle, [key for key, _ in keyed], [instrument for _, instrument in keyed])


def encode_cursor(query: str, position: Position) -> str:
    """The opaque cursor of ``position`` for ``query``: base64url (no padding) of JSON ``[query lowercased,
    symbol, quote volume string or null]``."""
    raw = jsonutil.dumps([query.lower(), position.symbol, position.quote_volume])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(query: str, cursor: str) -> Position:
    """The position :func:`encode_cursor` wrote into ``cursor``. Raises :class:`InvalidCursor` unless it is
    such a cursor for ``query`` (any case)."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursor("cursor is not one this route gave")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = jsonutil.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidCursor("cursor is not one this route gave") from None
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value[:2])):
        raise InvalidCursor("cursor is not one this route gave")
    needle, symbol, volume = value
    if needle != query.lower():
        raise InvalidCursor("cursor belongs to another query: pass the q of the page that gave it")
    if not SYMBOL_PATTERN.fullmatch(symbol) or needle not in symbol:
        raise InvalidCursor("cursor is not one this route gave")
    if volume is None:
        return Position(symbol, None)
    try:
        return Position(symbol, _amount(volume, "nonnegative"))
    except DecimalFieldError:
        raise InvalidCursor("cursor is not one this route gave") from None


# -- the use case ------------------------------------------------------------------------------------------


class MarketSource(Protocol):
    """The 24 h tickers and latest prices (:class:`profile_bff.store.MarketBus`); each raises
    :class:`~profile_bff.errors.StoreUnavailable` when Redis is down."""

    async def latest_prices(self, symbols: Iterable[str]) -> dict[str, Price]: ...

    async def tickers(self) -> dict[str, Ticker]: ...

    async def market_of(self, symbol: str) -> tuple[Ticker | None, Price | None]: ...


class InstrumentSearch:
    """Searches ``instruments`` with the tickers and prices of ``market``; ``clock`` is a monotonic clock (s)
    and ``wall_ms`` the wall clock (Unix ms) the age of a latest second is measured with."""

    def __init__(
        self,
        instruments: Instruments,
        market: MarketSource,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        live_max_age_s: float = LIVE_MAX_AGE_S,
    ) -> None:
        self._instruments = instruments
        self._market = market
        self._wall_ms = wall_ms
        self._live_max_age_ms = live_max_age_s * 1000
        self._tickers: Recent[None, dict[str, Ticker]] = Recent(clock)
        self._pages: Recent[tuple[str, int, str], Page] = Recent(clock)
        self._details: Recent[str, Quote | None] = Recent(clock)

    async def search(self, query: str, limit: int, cursor: str | None = None) -> Page:
        """Up to ``limit`` instruments whose symbol contains ``query`` (any case) in rank order, after the
        position of ``cursor`` (from the first without). Raises :class:`InvalidCursor`."""
        after = None if cursor is None else decode_cursor(query, cursor)
        return await self._pages.get(
            (query.lower(), limit, cursor or ""), lambda: self._search(query, limit, after)
        )

    async def instrument(self, symbol: str) -> Detail | None:
        """The normalised ``symbol``'s instrument with its ticker, latest price and live flag; ``None`` if the
        exchange does not list it."""
        quote = await self._details.get(symbol, lambda: self._quote(symbol))
        if quote is None:
            return None
        live = None
        if quote.second is not None:
            live = self._wall_ms() - quote.second.second_ms <= self._live_max_age_ms
        return Detail(quote, live)

    async def _search(self, query: str, limit: int, after: Position | None) -> Page:
        tickers = await self._tickers.get(None, self._market.tickers)
        found, last = rank(self._instruments, query, tickers).page(after, limit)
        seconds = await self._market.latest_prices(instrument.symbol for instrument in found)
        return Page(
            [Quote(i, tickers.get(i.symbol), seconds.get(i.symbol)) for i in found],
            None if last is None else encode_cursor(query, last),
        )

    async def _quote(self, symbol: str) -> Quote | None:
        instrument = self._instruments.get(symbol)
        if instrument is None:
            return None
        ticker, second = await self._market.market_of(symbol)
        return Quote(instrument, ticker, second)


class Recent(Generic[K, V]):
    """Values computed by key, each served again for ``ttl_s`` (by ``clock``, s), at most ``entries`` of them
    (the oldest evicted first). A key being computed is computed once: concurrent callers await the same
    computation, which runs to its end even if they are cancelled. Errors are not kept."""

    def __init__(
        self, clock: Callable[[], float], ttl_s: float = CACHE_S, entries: int = CACHE_ENTRIES
    ) -> None:
        self._clock = clock
        self._ttl_s = ttl_s
        self._entries = entries
        self._done: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._running: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        """The value of ``key``: kept, being computed, or computed now by ``compute()``."""
        kept = self._done.get(key)
        if kept is not None and self._clock() - kept[0] < self._ttl_s:
            return kept[1]
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.ensure_future(compute())
            running.add_done_callback(lambda future: self._settle(key, future))
        return await asyncio.shield(running)

    def _settle(self, key: K, future: asyncio.Future[V]) -> None:
        del self._running[key]
        if future.cancelled() or future.exception() is not None:
            return  # the callers awaiting it got the error; retrieving it here keeps asyncio from logging it
        self._done[key] = (self._clock(), future.result())
        self._done.move_to_end(key)
        while len(self._done) > self._entries:
            self._done.popitem(last=False)
