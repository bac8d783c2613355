"""The BFF's market history, pure parts: live seconds folded into the ETL's candles
(profile_bff.candle), the use case's checks, cache and fallbacks (profile_bff.candles, with in-memory fakes
of the ETL and of Redis), and the times a request may give (profile_bff.views.market)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from support.market import INTERVAL_MS, recorded_secondstats, recorded_trades, reference_candles

from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil
from crypto_mesh.candles import CandleRange, InvalidRange
from profile_bff.candle import Candle, CandlePage, second_candle, with_live_seconds
from profile_bff.candles import CACHE_S, MarketHistory
from profile_bff.errors import EtlUnavailable, InstrumentNotFound, StoreUnavailable
from profile_bff.instruments import Instrument, Instruments
from profile_bff.portfolio import InvalidSecondStat
from profile_bff.views.market import EncodedAnswers, parse_time


def candle(reference) -> Candle:
    return Candle(
        reference.open_time_ms,
        reference.open,
        reference.high,
        reference.low,
        reference.close,
        reference.volume,
        reference.quote_volume,
        reference.trades,
    )


def second(stat: SecondStat) -> Candle:
    return second_candle(jsonutil.dumps(stat.to_json()))


# -- live seconds --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", sorted(INTERVAL_MS))
def test_clickhouses_candles_and_the_live_seconds_after_them_are_the_candles_of_every_trade(
    trade_recording, interval
):
    # ClickHouse holds the seconds up to one in the middle of the recording, Redis lists every second from
    # 150 s before it on: merged, they are the candles of all the recorded trades.
    interval_ms = INTERVAL_MS[interval]
    trades = [trade for trade in recorded_trades(trade_recording) if trade.symbol == "btcusdt"]
    stats = [stat for stat in recorded_secondstats(trade_recording) if stat.symbol == "btcusdt"]
    last_stored = stats[len(stats) // 2].second_ms
    stored = reference_candles([t for t in trades if t.time_ms < last_stored + 1000], "btcusdt", interval_ms)
    page = CandlePage([candle(c) for c in stored], last_stored)
    live = [second(stat) for stat in stats if stat.second_ms > last_stored - 150_000]
    selection = CandleRange.of(interval, limit=1000)
    assert with_live_seconds(page, live, selection) == [
        candle(c) for c in reference_candles(trades, "btcusdt", interval_ms)
    ]


def minute_candle(minute: int, close: str, trades: int = 1) -> Candle:
    price = Decimal(close)
    return Candle(minute * 60_000, price, price, price, price, Decimal(1), price, trades)


def live_second(second_ms: int, price: str) -> Candle:
    p = Decimal(price)
    return Candle(second_ms, p, p, p, p, Decimal("0.5"), p / 2, 2)


def test_seconds_at_or_before_the_last_second_of_the_answer_are_not_counted_again():
    page = CandlePage([minute_candle(1, "10")], last_second_ms=61_000)
    seconds = [live_second(61_000, "99"), live_second(60_000, "1"), live_second(62_000, "11")]
    [merged] = with_live_seconds(page, seconds, CandleRange.of("1m"))
    assert (merged.open, merged.high, merged.low, merged.close) == (10, 11, 10, 11)
    assert (merged.volume, merged.trades) == (Decimal("1.5"), 3)


def test_without_candles_in_clickhouse_every_live_second_of_the_selection_makes_the_candles():
    page = CandlePage([], None)
    seconds = [live_second(s * 1000, str(s)) for s in (59, 60, 61, 125)]
    merged = with_live_seconds(page, seconds, CandleRange.of("1m", start_ms=60_000, end_ms=60_000))
    assert merged == [Candle(60_000, 60, 61, 60, 61, Decimal(1), Decimal("60.5"), 4)]


def test_a_second_listed_twice_is_counted_once():
    page = CandlePage([], None)
    twice = live_second(1000, "5")
    assert with_live_seconds(page, [twice, twice], CandleRange.of("1s")) == [twice]


def test_the_selection_is_applied_again_so_live_candles_move_the_window_of_the_latest():
    page = CandlePage([minute_candle(n, str(n)) for n in (1, 2, 3)], last_second_ms=3 * 60_000)
    seconds = [live_second(4 * 60_000, "4"), live_second(5 * 60_000 + 1000, "5")]
    latest = with_live_seconds(page, seconds, CandleRange.of("1m", limit=3))
    assert [c.open_time_ms // 60_000 for c in latest] == [3, 4, 5]
    # With start, the window begins with the oldest candle: candles beyond its limit are left out.
    earliest = with_live_seconds(page, seconds, CandleRange.of("1m", start_ms=60_000, limit=3))
    assert [c.open_time_ms // 60_000 for c in earliest] == [1, 2, 3]


def test_a_secondstat_is_a_1_second_candle_and_a_malformed_one_is_refused():
    o, h, l_, c, v, q = (Decimal(x) for x in ("1.5", "2", "1", "1.75", "0.5", "0.9"))
    stat = SecondStat("btcusdt", 1_000, o, h, l_, c, v, q, 3, 42)
    assert second(stat) == Candle(1_000, o, h, l_, c, v, q, 3)
    good = stat.to_json()
    for bad in ({**good, "t": "1000"}, {**good, "h": 2}, {**good, "v": "-1"}, {**good, "n": True}):
        with pytest.raises(InvalidSecondStat):
            second_candle(jsonutil.dumps(bad))
    with pytest.raises(InvalidSecondStat):
        second_candle(b"[]")


# -- the use case --------------------------------------------------------------------------------------------


class FakeEtl:
    """The ETL's candles, counted; ``down`` makes every call fail as an unreachable ETL does."""

    def __init__(self, candles: list[Candle], last_second_ms: int | None) -> None:
        self.page = CandlePage(candles, last_second_ms)
        self.calls = 0
        self.down = False
        self.gate: asyncio.Event | None = None

    async def candles(self, symbol: str, selection: CandleRange) -> CandlePage:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise EtlUnavailable("connection refused")
        return self.page


class FakeLive:
    def __init__(self, seconds: list[Candle]) -> None:
        self.seconds = seconds
        self.down = False

    async def recent_seconds(self, symbol: str) -> list[Candle]:
        if self.down:
            raise StoreUnavailable("redis unavailable: ConnectionError")
        return self.seconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def history(etl: FakeEtl, live: FakeLive, clock: Clock) -> MarketHistory:
    listed = Instruments(
        [Instrument("btcusdt", "BTC", "USDT", "TRADING"), Instrument("lunausdt", "LUNA", "USDT", "BREAK")]
    )
    return MarketHistory(listed, etl, live, clock=clock)


@pytest.fixture
def parts():
    etl = FakeEtl([minute_candle(1, "10"), minute_candle(2, "12")], last_second_ms=2 * 60_000)
    live = FakeLive([live_second(2 * 60_000 + 1000, "13")])
    clock = Clock()
    return etl, live, clock, history(etl, live, clock)


async def test_the_answer_holds_the_live_seconds_and_is_cached_for_a_second(parts):
    etl, live, clock, market = parts
    selection = CandleRange.of("1m")
    found = await market.candles("BTCUSDT", selection)
    assert found.symbol == "btcusdt" and [c.close for c in found.candles] == [10, 13]
    live.seconds = []
    clock.now += CACHE_S / 2
    assert (await market.candles("btcusdt", selection)) == found and etl.calls == 1
    clock.now += CACHE_S
    assert [c.close for c in (await market.candles("btcusdt", selection)).candles] == [10, 12]
    assert etl.calls == 2


async def test_requests_for_an_answer_being_computed_wait_for_that_one_computation(parts):
    etl, _, _, market = parts
    etl.gate = asyncio.Event()
    waiting = [asyncio.create_task(market.candles("btcusdt", CandleRange.of("1m"))) for _ in range(10)]
    await asyncio.sleep(0)
    etl.gate.set()
    answers = await asyncio.gather(*waiting)
    assert etl.calls == 1 and all(answer == answers[0] for answer in answers)


async def test_a_failure_is_not_kept_and_redis_down_costs_only_the_live_seconds(parts):
    etl, live, _, market = parts
    etl.down = True
    with pytest.raises(EtlUnavailable):
        await market.candles("btcusdt", CandleRange.of("1m"))
    etl.down, live.down = False, True
    found = await market.candles("btcusdt", CandleRange.of("1m"))
    assert [c.close for c in found.candles] == [10, 12] and etl.calls == 2


async def test_only_listed_symbols_have_a_history_whatever_their_status(parts):
    _, _, _, market = parts
    assert (await market.candles("lunausdt", CandleRange.of("1m"))).symbol == "lunausdt"
    for symbol in ("ethusdt", "btc-usdt", "x" * 100):
        with pytest.raises(InstrumentNotFound):
            await market.candles(symbol, CandleRange.of("1m"))


async def test_an_indicator_is_computed_over_the_candles_with_the_live_seconds(parts):
    _, _, _, market = parts
    series = await market.indicator("btcusdt", CandleRange.of("1m"), "sma", 2)
    assert (series.name, series.period, series.points) == ("sma", 2, [(2 * 60_000, Decimal("11.5"))])
    assert (await market.indicator("btcusdt", CandleRange.of("1m"), "rsi", None)).period == 14


# -- times of a request --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "unix_ms"),
    [
        ("1723161240000", 1723161240000),
        ("2024-08-08T23:54:00Z", 1723161240000),
        ("2024-08-08T23:54:00.250Z", 1723161240250),
        ("2024-08-09T01:54:00.2509+02:00", 1723161240250),
    ],
)
def test_times_are_rfc_3339_with_an_offset_or_unix_ms(raw, unix_ms):
    assert parse_time(raw, "start") == unix_ms


@pytest.mark.parametrize("raw", ["2024-08-08T23:54:00", "yesterday", "-5", "１２３", "2024-08-08T23:54:00Z" * 3])
def test_other_times_are_refused_as_a_bad_range(raw):
    with pytest.raises(InvalidRange, match="start must be a time with its offset"):
        parse_time(raw, "start")



def test_an_answer_served_again_is_written_as_json_once():
    encoded, written = EncodedAnswers(size=2), []

    def encode(value):
        written.append(value)
        return {"value": value}

    first, second = CandlePage([], 1), CandlePage([], 1)  # equal, yet two answers
    assert encoded.body(first, lambda: encode(1)) == b'{"value":1}'
    assert encoded.body(first, lambda: encode(2)) == b'{"value":1}'
    assert encoded.body(second, lambda: encode(3)) == b'{"value":3}'
    assert written == [1, 3]
