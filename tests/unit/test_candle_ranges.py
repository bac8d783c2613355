"""Which candles a request selects, and which requests are refused (crypto_mesh.candles)."""

from __future__ import annotations

import pytest

from crypto_mesh.candles import (
    DEFAULT_LIMIT,
    MAX_CANDLES,
    MAX_TIME_MS,
    CandleRange,
    InvalidInterval,
    InvalidLimit,
    InvalidRange,
    TooManyCandles,
    open_time,
)

MINUTE = 60_000


def test_open_times_are_multiples_of_the_interval_from_the_epoch_so_days_start_at_midnight_utc():
    assert open_time(1723161255123, 1000) == 1723161255000
    assert open_time(1723161255123, 86_400_000) == 1723075200000  # 2024-08-08T00:00:00Z


def minutes(*numbers: int) -> list[int]:
    """Candles given by their open times: minutes ``numbers`` after the epoch."""
    return [n * MINUTE for n in numbers]


def itself(open_ms: int) -> int:
    return open_ms


def test_without_start_the_window_ends_with_the_newest_candle_and_with_start_begins_with_the_oldest():
    candles = minutes(*range(10))
    assert CandleRange.of("1m", limit=3).select(candles, itself) == minutes(7, 8, 9)
    assert CandleRange.of("1m", end_ms=5 * MINUTE + 1, limit=3).select(candles, itself) == minutes(3, 4, 5)
    assert CandleRange.of("1m", start_ms=1, limit=3).select(candles, itself) == minutes(1, 2, 3)
    assert CandleRange.of("1m", start_ms=0, end_ms=9 * MINUTE, limit=20).select(candles, itself) == candles
    assert CandleRange.of("1m").limit == DEFAULT_LIMIT


def test_the_window_counts_periods_so_periods_without_trades_leave_fewer_candles():
    candles = minutes(0, 1, 5, 8, 9)
    assert CandleRange.of("1m", limit=5).select(candles, itself) == minutes(5, 8, 9)
    assert CandleRange.of("1m", start_ms=0, limit=5).select(candles, itself) == minutes(0, 1)
    # The window is anchored at the oldest candle within the bounds, not at start.
    assert CandleRange.of("1m", start_ms=2 * MINUTE, limit=4).select(candles, itself) == minutes(5, 8)
    assert CandleRange.of("1m", start_ms=10 * MINUTE).select(candles, itself) == []


def test_the_bounds_hold_the_candles_that_open_from_start_to_end_inclusive():
    selection = CandleRange.of("5m", start_ms=1, end_ms=600_000)
    assert (selection.first_open_ms, selection.stop_ms) == (300_000, 900_000)
    assert [selection.holds(t) for t in (0, 300_000, 600_000, 900_000)] == [False, True, True, False]
    unbounded = CandleRange.of("1d")
    assert unbounded.holds(0) and unbounded.holds(open_time(MAX_TIME_MS, 86_400_000))


def test_a_range_of_exactly_the_maximum_candles_is_accepted_and_one_more_is_refused():
    CandleRange.of("1s", start_ms=0, end_ms=(MAX_CANDLES - 1) * 1000)
    with pytest.raises(TooManyCandles, match="from start to end there are 1001 candles of 1s; at most 1000"):
        CandleRange.of("1s", start_ms=0, end_ms=MAX_CANDLES * 1000)
    # Unaligned ends: only the open times inside count.
    CandleRange.of("1s", start_ms=1, end_ms=MAX_CANDLES * 1000 + 999)


@pytest.mark.parametrize(
    ("arguments", "error", "code"),
    [
        ({"interval": "2m"}, InvalidInterval, "invalid_interval"),
        ({"interval": "1m", "start_ms": 2, "end_ms": 1}, InvalidRange, "invalid_range"),
        ({"interval": "1m", "start_ms": -1}, InvalidRange, "invalid_range"),
        ({"interval": "1m", "end_ms": MAX_TIME_MS + 1}, InvalidRange, "invalid_range"),
        ({"interval": "1m", "limit": 0}, InvalidLimit, "invalid_limit"),
        ({"interval": "1m", "limit": MAX_CANDLES + 1}, TooManyCandles, "too_many_points"),
    ],
)
def test_bad_requests_are_refused_with_the_code_of_their_answer(arguments, error, code):
    with pytest.raises(error) as refused:
        CandleRange.of(**arguments)
    assert refused.value.code == code


def test_the_limit_refusal_names_the_maximum():
    with pytest.raises(TooManyCandles, match=f"at most {MAX_CANDLES}"):
        CandleRange.of("1h", limit=5000)
