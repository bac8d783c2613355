"""Mini-tickers of the replay exchange: rolling 24 h statistics of the replayed trades, in Decimal."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from launcher.replay.minitickers import MINUTE_MS, WINDOW_MS, MiniTickers

T0 = 1_723_161_600_000  # 2024-08-09 00:00:00 UTC


def test_a_second_with_trades_gives_close_open_high_low_and_exact_volumes():
    tickers = MiniTickers()
    tickers.add_trade("BTCUSDT", "61837.63000000", "0.02000000", T0 + 100)
    tickers.add_trade("BTCUSDT", "61840.10000000", "0.10000000", T0 + 200)
    tickers.add_trade("BTCUSDT", "61829.99000000", "0.00100000", T0 + 300)
    tickers.add_trade("BTCUSDT", "61830.00000000", "1.00000000", T0 + 900)

    [ticker] = tickers.close_second(T0 + 1000)

    assert ticker == {
        "e": "24hrMiniTicker",
        "E": T0 + 1000,
        "s": "BTCUSDT",
        "c": "61830.00000000",
        "o": "61837.63000000",
        "h": "61840.10000000",
        "l": "61829.99000000",
        "v": "1.12100000",
        "q": "69312.5925900000000000",
    }


def test_only_symbols_that_traded_in_the_second_are_reported():
    tickers = MiniTickers()
    tickers.add_trade("BTCUSDT", "1.5", "1", T0)
    tickers.add_trade("ETHUSDT", "2.5", "1", T0)
    assert [t["s"] for t in tickers.close_second(T0 + 1000)] == ["BTCUSDT", "ETHUSDT"]
    tickers.add_trade("ETHUSDT", "2.6", "1", T0 + 1500)
    assert [t["s"] for t in tickers.close_second(T0 + 2000)] == ["ETHUSDT"]
    assert tickers.close_second(T0 + 3000) == []


def test_trades_older_than_24_hours_leave_the_window_minute_by_minute():
    tickers = MiniTickers()
    tickers.add_trade("BTCUSDT", "100", "1", T0)
    tickers.add_trade("BTCUSDT", "90", "2", T0 + MINUTE_MS)
    tickers.close_second(T0 + 1000)

    tickers.add_trade("BTCUSDT", "95", "3", T0 + WINDOW_MS + 1)
    [ticker] = tickers.close_second(T0 + WINDOW_MS + 1000)
    # The minute of T0 is exactly 24 h before the current minute: still inside the 1441-bucket window.
    assert (ticker["o"], ticker["h"], ticker["v"]) == ("100", "100", "6")

    tickers.add_trade("BTCUSDT", "96", "1", T0 + WINDOW_MS + MINUTE_MS)
    [ticker] = tickers.close_second(T0 + WINDOW_MS + MINUTE_MS + 1000)
    assert (ticker["o"], ticker["h"], ticker["l"], ticker["c"], ticker["v"]) == ("90", "96", "90", "96", "6")
    assert ticker["q"] == "561"  # 90×2 + 95×3 + 96×1


def test_memory_stays_within_1441_minute_buckets_per_symbol():
    tickers = MiniTickers()
    for minute in range(3000):
        tickers.add_trade("BTCUSDT", "1", "1", T0 + minute * MINUTE_MS)
        tickers.close_second(T0 + minute * MINUTE_MS + 1000)
    assert len(tickers._windows["BTCUSDT"].buckets) <= 1441


@given(
    trades=st.lists(
        st.tuples(
            st.sampled_from(["BTCUSDT", "ETHUSDT"]),
            st.sampled_from(["1.00", "1.5", "2.00", "0.99", "3.10", "2.0", "1.50"]),
            st.integers(0, 3 * WINDOW_MS // MINUTE_MS),  # minute of the trade
            st.booleans(),  # close the second after it
        ),
        max_size=120,
    )
)
def test_high_and_low_equal_a_pass_over_the_window_after_any_trades_and_pruning(trades):
    """Against an independent computation: every ticker's high and low are those of ``max``/``min`` over the
    buckets left in the window (the first of equal values, by the recorded string), whatever the order of
    trade times, including out-of-order ones that join the newest bucket."""
    tickers = MiniTickers()
    now = 0
    for symbol, price, minute, close in trades:
        trade_ms = minute * MINUTE_MS + 123
        now = max(now, trade_ms)
        tickers.add_trade(symbol, price, "1", trade_ms)
        if close:
            second_end = now - now % 1000 + 1000
            for ticker in tickers.close_second(second_end):
                window = tickers._windows[ticker["s"]]
                assert ticker["h"] == max((b.high for b in window.buckets), key=lambda pair: pair[0])[1]
                assert ticker["l"] == min((b.low for b in window.buckets), key=lambda pair: pair[0])[1]
                assert len(window.highs) <= len(window.buckets) and len(window.lows) <= len(window.buckets)


def test_of_equal_highs_or_lows_the_oldest_recorded_string_is_reported():
    tickers = MiniTickers()
    tickers.add_trade("BTCUSDT", "2.00", "1", T0)
    tickers.add_trade("BTCUSDT", "1.5", "1", T0 + 1)
    tickers.add_trade("BTCUSDT", "2.0", "1", T0 + MINUTE_MS)
    tickers.add_trade("BTCUSDT", "1.50", "1", T0 + 2 * MINUTE_MS)
    (ticker,) = tickers.close_second(T0 + 2 * MINUTE_MS + 1000)
    assert (ticker["h"], ticker["l"]) == ("2.00", "1.5")
    # Once the oldest minute leaves the window, the equal ones of later minutes are reported.
    tickers.add_trade("BTCUSDT", "1.75", "1", T0 + WINDOW_MS + MINUTE_MS)
    (ticker,) = tickers.close_second(T0 + WINDOW_MS + MINUTE_MS + 1000)
    assert (ticker["h"], ticker["l"]) == ("2.0", "1.50")
