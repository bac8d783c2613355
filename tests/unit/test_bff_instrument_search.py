"""The instrument search (profile_bff.search): the ranking by match and 24 h quote volume, the cursor pages,
the newer of two prices, the live flag, and the brief cache in front of Redis. Pure: the market is an
in-memory fake of the search's port."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from crypto_mesh import jsonutil
from profile_bff.errors import StoreUnavailable
from profile_bff.instruments import Instrument, Instruments
from profile_bff.portfolio import Price
from profile_bff.search import (
    CACHE_S,
    LIVE_MAX_AGE_S,
    InstrumentSearch,
    InvalidCursor,
    InvalidTicker,
    Position,
    Ticker,
    decode_cursor,
    encode_cursor,
    latest_price,
    parse_ticker,
    rank,
)


def listed(*symbols: str) -> Instruments:
    return Instruments([Instrument(symbol, symbol[:3].upper(), "USDT", "TRADING") for symbol in symbols])


def ticker(quote_volume: str, close: str = "1", event_time_ms: int = 1723161256000) -> Ticker:
    one = Decimal(1)
    return Ticker(
        event_time_ms, Decimal(close), one, one, one, one, Decimal(quote_volume), Decimal(0), Decimal(0)
    )


def symbols_of(instruments) -> list[str]:
    return [instrument.symbol for instrument in instruments]


# -- ranking ---------------------------------------------------------------------------------------------


def test_the_exact_match_comes_first_then_prefix_matches_then_the_rest_each_by_quote_volume():
    instruments = listed("xabc", "abcbtc", "abc", "yabcusdt", "abcusdt", "abceur", "zzz", "xabcbtc")
    tickers = {
        "abc": ticker("1"),
        "abcbtc": ticker("500"),
        "abcusdt": ticker("90000.5"),
        "xabc": ticker("10"),
        "yabcusdt": ticker("20"),
        "zzz": ticker("999999"),  # does not match
    }

    ranking = rank(instruments, "ABC", tickers)

    assert symbols_of(ranking.instruments) == [
        "abc",  # exact, however little traded
        "abcusdt",  # prefix matches by quote volume, descending
        "abcbtc",
        "abceur",  # no ticker: after those with one
        "yabcusdt",  # the rest, by quote volume
        "xabc",
        "xabcbtc",  # no ticker
    ]


def test_equal_quote_volumes_and_instruments_without_a_ticker_are_ordered_by_symbol():
    instruments = listed("btcd", "btcc", "btcb", "btca", "btcz", "btcy")
    tickers = {"btcb": ticker("7.0"), "btca": ticker("7"), "btcd": ticker("8")}

    assert symbols_of(rank(instruments, "btc", tickers).instruments) == [
        "btcd",
        "btca",
        "btcb",
        "btcc",
        "btcy",
        "btcz",
    ]


def test_quote_volumes_are_compared_exactly_where_floats_would_tie():
    instruments = listed("ethusdt", "ethbtc")
    tickers = {"ethbtc": ticker("12345678901234567.02"), "ethusdt": ticker("12345678901234567.01")}
    assert float(tickers["ethbtc"].quote_volume) == float(tickers["ethusdt"].quote_volume)

    assert symbols_of(rank(instruments, "eth", tickers).instruments) == ["ethbtc", "ethusdt"]


def test_an_empty_query_ranks_every_instrument_by_quote_volume():
    instruments = listed("ethusdt", "btcusdt", "dotusdt")
    tickers = {"btcusdt": ticker("3"), "ethusdt": ticker("2")}

    assert symbols_of(rank(instruments, "", tickers).instruments) == ["btcusdt", "ethusdt", "dotusdt"]
    assert rank(instruments, "xrp", tickers).instruments == []


# -- pages and cursors -----------------------------------------------------------------------------------


INSTRUMENTS = listed(*(f"btc{letter}usdt" for letter in "abcdefg"), "wbtcusdt")
TICKERS = {f"btc{letter}usdt": ticker(str(volume)) for letter, volume in zip("abcde", (5, 9, 1, 9, 3))}


def pages(ranking, limit: int, query: str = "btc") -> list[list[str]]:
    """Every page of ``ranking``, following each page's cursor through its encoded form."""
    found, after = [], None
    while True:
        page, last = ranking.page(after, limit)
        found.append(symbols_of(page))
        if last is None:
            return found
        after = decode_cursor(query, encode_cursor(query, last))


def test_following_the_cursors_gives_the_whole_ranking_once_in_order():
    ranking = rank(INSTRUMENTS, "btc", TICKERS)

    assert pages(ranking, 3) == [
        ["btcbusdt", "btcdusdt", "btcausdt"],
        ["btceusdt", "btccusdt", "btcfusdt"],
        ["btcgusdt", "wbtcusdt"],
    ]
    assert pages(ranking, 8) == [symbols_of(ranking.instruments)]
    assert pages(ranking, 100) == [symbols_of(ranking.instruments)]


def test_a_page_after_a_new_snapshot_continues_after_the_last_position_shown():
    first, last = rank(INSTRUMENTS, "btc", TICKERS).page(None, 2)
    assert symbols_of(first) == ["btcbusdt", "btcdusdt"] and last == Position("btcdusdt", Decimal(9))
    # Volumes change between the pages: btcb, already shown, drops; btcc, not shown yet, passes btcd.
    moved = {**TICKERS, "btcbusdt": ticker("0.5"), "btccusdt": ticker("100")}

    second, _ = rank(INSTRUMENTS, "btc", moved).page(last, 10)

    # Only what moved across the boundary shows twice (btcb) or not at all (btcc); nothing else changes.
    assert symbols_of(second) == ["btcausdt", "btceusdt", "btcbusdt", "btcfusdt", "btcgusdt", "wbtcusdt"]


def test_a_cursor_is_opaque_url_safe_text_that_reads_back_its_position():
    position = Position("btcusdt", Decimal("76300000.10000000"))

    cursor = encode_cursor("BTC", position)

    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert decode_cursor("btc", cursor) == position
    assert decode_cursor("btc", encode_cursor("btc", Position("btcusdt", None))) == Position("btcusdt", None)


def raw_cursor(value: object) -> str:
    return base64.urlsafe_b64encode(jsonutil.dumps(value)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not a cursor",
        "%%%",
        "A" * 300,
        raw_cursor({"q": "btc"}),
        raw_cursor(["btc", "btcusdt"]),
        raw_cursor(["btc", "ethusdt", None]),  # a symbol the query does not match
        raw_cursor(["btc", "btc/usdt", None]),
        raw_cursor(["btc", "btcusdt", "-1"]),
        raw_cursor(["btc", "btcusdt", "1e999999"]),
        raw_cursor(["btc", "btcusdt", 5]),
        raw_cursor(["btc", 7, None]),
    ],
)
def test_a_cursor_this_route_did_not_give_is_refused(cursor):
    with pytest.raises(InvalidCursor):
        decode_cursor("btc", cursor)


def test_a_cursor_of_another_query_is_refused_and_says_so():
    with pytest.raises(InvalidCursor, match="another query"):
        decode_cursor("eth", encode_cursor("btc", Position("btcusdt", None)))


# -- tickers and prices ----------------------------------------------------------------------------------


def test_a_ticker_reads_back_the_aggregators_json_exactly_and_refuses_anything_else():
    payload = {
        "s": "btcusdt",
        "E": 1723161256000,
        "c": "61837.63000000",
        "o": "60000.00000000",
        "h": "62000.00",
        "l": "59000.00",
        "v": "1234.5",
        "q": "76300000.1",
        "change_price": "1837.63000000",
        "change_percent": "3.06271667",
    }

    parsed = parse_ticker(jsonutil.dumps(payload))

    assert parsed == Ticker(
        1723161256000,
        Decimal("61837.63000000"),
        Decimal("60000.00000000"),
        Decimal("62000.00"),
        Decimal("59000.00"),
        Decimal("1234.5"),
        Decimal("76300000.1"),
        Decimal("1837.63000000"),
        Decimal("3.06271667"),
    )
    assert parse_ticker(jsonutil.dumps({**payload, "change_price": "-5", "change_percent": "-0.1"}))
    assert parse_ticker(jsonutil.dumps({**payload, "v": "0E-30", "q": "0"})).quote_volume == 0
    broken = (
        {**payload, "E": "1"},
        {**payload, "E": True},
        {**payload, "q": 1.5},
        {**payload, "c": "-1"},
        {**payload, "q": "1E+999999"},
        {**payload, "change_percent": "NaN"},
    )
    for value in broken:
        with pytest.raises(InvalidTicker):
            parse_ticker(jsonutil.dumps(value))
    with pytest.raises(InvalidTicker):
        parse_ticker(b"[]")


def test_the_price_shown_is_the_newer_of_the_tickers_close_and_the_latest_second():
    second = Price(Decimal("100"), 1_000_000)
    # The second holds trades up to 1_000_999: a ticker is newer only from E = 1_001_000 on.
    same_second = ticker("1", close="99", event_time_ms=1_000_999)
    next_second = ticker("1", close="101", event_time_ms=1_001_000)

    assert latest_price(same_second, second) == (Decimal("100"), 1_000_000)
    assert latest_price(next_second, second) == (Decimal("101"), 1_001_000)
    assert latest_price(None, second) == (Decimal("100"), 1_000_000)
    assert latest_price(next_second, None) == (Decimal("101"), 1_001_000)
    assert latest_price(None, None) is None


# -- the use case over a fake market ---------------------------------------------------------------------


@dataclass
class Market:
    """Redis as the search reads it, counting reads; while ``down`` every read fails."""

    tickers_by_symbol: dict[str, Ticker] = field(default_factory=dict)
    prices: dict[str, Price] = field(default_factory=dict)
    down: bool = False
    ticker_reads: int = 0
    price_reads: int = 0
    market_reads: int = 0
    #: Set: reads of every ticker wait for it.
    gate: asyncio.Event | None = None

    async def tickers(self) -> dict[str, Ticker]:
        self.ticker_reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise StoreUnavailable("redis unavailable")
        return dict(self.tickers_by_symbol)

    async def latest_prices(self, symbols) -> dict[str, Price]:
        self.price_reads += 1
        if self.down:
            raise StoreUnavailable("redis unavailable")
        return {symbol: self.prices[symbol] for symbol in symbols if symbol in self.prices}

    async def market_of(self, symbol: str) -> tuple[Ticker | None, Price | None]:
        self.market_reads += 1
        if self.down:
            raise StoreUnavailable("redis unavailable")
        return self.tickers_by_symbol.get(symbol), self.prices.get(symbol)


class Clocks:
    def __init__(self) -> None:
        self.monotonic = 100.0
        self.wall_ms = 1_723_161_300_000


def search_over(market: Market, clocks: Clocks, instruments: Instruments = INSTRUMENTS) -> InstrumentSearch:
    return InstrumentSearch(
        instruments, market, clock=lambda: clocks.monotonic, wall_ms=lambda: clocks.wall_ms
    )


async def test_a_search_shows_each_instruments_ticker_and_latest_price_and_pages_on():
    second = Price(Decimal("42.5"), 1_723_161_299_000)
    market = Market(dict(TICKERS), {"btcdusdt": second})
    search = search_over(market, Clocks())

    page = await search.search("BTC", 2)
    rest = await search.search("btc", 10, page.next_cursor)

    assert [(q.instrument.symbol, q.ticker, q.second) for q in page.quotes] == [
        ("btcbusdt", TICKERS["btcbusdt"], None),
        ("btcdusdt", TICKERS["btcdusdt"], second),
    ]
    assert page.quotes[1].price == (Decimal("42.5"), 1_723_161_299_000)
    assert [q.instrument.symbol for q in rest.quotes] == [
        "btcausdt",
        "btceusdt",
        "btccusdt",
        "btcfusdt",
        "btcgusdt",
        "wbtcusdt",
    ]
    assert rest.next_cursor is None
    # One read of every ticker served both pages.
    assert market.ticker_reads == 1


async def test_answers_and_the_tickers_are_read_again_only_after_a_second():
    market = Market(dict(TICKERS))
    clocks = Clocks()
    search = search_over(market, clocks)

    first = await search.search("btc", 3)
    clocks.monotonic += CACHE_S / 2
    assert await search.search("BTC", 3) == first
    await search.search("wbtc", 3)
    assert (market.ticker_reads, market.price_reads) == (1, 2)

    clocks.monotonic += CACHE_S
    await search.search("btc", 3)
    assert (market.ticker_reads, market.price_reads) == (2, 3)


async def test_concurrent_searches_wait_for_one_read_of_the_tickers():
    market = Market(dict(TICKERS), gate=asyncio.Event())
    search = search_over(market, Clocks())

    waiting = [asyncio.create_task(search.search(query, 5)) for query in ("btc", "btc", "btca", "wbtc")]
    await asyncio.sleep(0)
    market.gate.set()
    pages_found = await asyncio.gather(*waiting)

    assert market.ticker_reads == 1
    assert pages_found[0] is pages_found[1]
    assert [q.instrument.symbol for q in pages_found[3].quotes] == ["wbtcusdt"]


async def test_a_failed_read_is_not_kept_and_the_next_search_reads_again():
    market = Market(dict(TICKERS), down=True)
    search = search_over(market, Clocks())

    with pytest.raises(StoreUnavailable):
        await search.search("btc", 3)
    market.down = False

    assert len((await search.search("btc", 3)).quotes) == 3
    assert market.ticker_reads == 2


async def test_an_invalid_cursor_is_refused_before_anything_is_read():
    market = Market(dict(TICKERS))
    with pytest.raises(InvalidCursor):
        await search_over(market, Clocks()).search("btc", 3, "garbage")
    assert market.ticker_reads == 0


async def test_one_instrument_says_whether_its_latest_second_is_recent_when_the_mesh_follows_it():
    clocks = Clocks()
    recent = Price(Decimal("1"), clocks.wall_ms - LIVE_MAX_AGE_S * 1000)
    stale = Price(Decimal("1"), clocks.wall_ms - LIVE_MAX_AGE_S * 1000 - 1)
    market = Market(dict(TICKERS), {"btcausdt": recent, "btcbusdt": stale})
    search = search_over(market, clocks)

    followed, stalled, unfollowed = [
        await search.instrument(symbol) for symbol in ("btcausdt", "btcbusdt", "btccusdt")
    ]

    assert followed is not None and followed.live is True and followed.quote.ticker == TICKERS["btcausdt"]
    assert stalled is not None and stalled.live is False
    assert unfollowed is not None and unfollowed.live is None and unfollowed.quote.second is None
    assert await search.instrument("nopeusdt") is None
    assert market.market_reads == 3


async def test_the_live_flag_follows_the_wall_clock_while_the_instrument_is_served_from_the_cache():
    clocks = Clocks()
    market = Market(dict(TICKERS), {"btcausdt": Price(Decimal("1"), clocks.wall_ms)})
    search = search_over(market, clocks)

    assert (await search.instrument("btcausdt")).live is True
    clocks.wall_ms += LIVE_MAX_AGE_S * 1000 + 1

    assert (await search.instrument("btcausdt")).live is False
    assert market.market_reads == 1
