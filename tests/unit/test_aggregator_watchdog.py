"""The stream watchdog's rule (aggregator.watchdog): when a followed trade stream is stale, once per silence,
and when it resumes; and the settings that choose each symbol's trade stream (aggregator.settings)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aggregator.feeds import TradeStreams
from aggregator.settings import (
    AggregatorSettings,
    format_trade_stream_by_symbol,
    parse_trade_stream_by_symbol,
)
from aggregator.watchdog import Silence, StreamWatchdog, check_interval_s, is_stale, newly_stale

STALE_MS = 60_000


@pytest.mark.parametrize(
    ("last", "now", "stale"),
    [
        (1_000, 1_000, False),
        (1_000, 60_999, False),
        (1_000, 61_000, True),  # exactly the stale time: stale
        (1_000, 500_000, True),
        (61_000, 1_000, False),  # a clock that went back is no silence
    ],
)
def test_a_stream_is_stale_from_the_stale_time_after_its_last_frame(last, now, stale):
    assert is_stale(last, now, STALE_MS) is stale


def test_newly_stale_names_the_silent_streams_not_yet_reported_in_order():
    last = {"ethusdt@trade": 0, "btcusdt@trade": 10_000, "dotusdt@aggTrade": 50_000, "solusdt@trade": 0}
    assert newly_stale(last, {"solusdt@trade"}, 70_000, STALE_MS) == ["btcusdt@trade", "ethusdt@trade"]
    assert newly_stale(last, set(), 59_999, STALE_MS) == []


def test_a_stream_the_exchange_never_sends_goes_stale_once_counted_once():
    watchdog = StreamWatchdog(STALE_MS)
    watchdog.watch("solusdt@trade", 1_000)
    assert watchdog.check(60_999) == ([], [])
    assert watchdog.check(61_000) == ([Silence("solusdt@trade", 60_000)], [])
    # Still silent: no second warning, no second period.
    assert watchdog.check(200_000) == ([], [])
    assert (watchdog.stale, watchdog.periods) == ({"solusdt@trade"}, 1)


def test_frames_keep_a_stream_fresh_and_a_stale_one_resumes_with_its_silence():
    watchdog = StreamWatchdog(STALE_MS)
    watchdog.watch("btcusdt@trade", 0)
    watchdog.frame("btcusdt@trade", 50_000)
    assert watchdog.check(100_000) == ([], [])  # 50 s since the last frame
    assert watchdog.check(110_000) == ([Silence("btcusdt@trade", 60_000)], [])

    watchdog.frame("btcusdt@trade", 125_000)
    watchdog.frame("btcusdt@trade", 125_500)
    assert watchdog.stale == frozenset()
    assert watchdog.check(126_000) == ([], [Silence("btcusdt@trade", 75_000)])
    assert watchdog.check(127_000) == ([], [])

    # A second silence is a second period.
    assert watchdog.check(185_500) == ([Silence("btcusdt@trade", 60_000)], [])
    assert watchdog.periods == 2


def test_watching_again_keeps_the_silence_and_unwatching_forgets_it():
    watchdog = StreamWatchdog(STALE_MS)
    watchdog.watch("ethusdt@trade", 0)
    watchdog.watch("ethusdt@trade", 30_000)  # tracked again: the silence started at 0
    assert watchdog.check(60_000)[0] == [Silence("ethusdt@trade", 60_000)]

    watchdog.unwatch("ethusdt@trade")
    assert (watchdog.stale, watchdog.watched()) == (frozenset(), [])
    watchdog.frame("ethusdt@trade", 61_000)  # a late frame of a stream no longer followed
    assert watchdog.check(200_000) == ([], [])
    assert (watchdog.watched(), watchdog.periods) == ([], 1)


def test_stale_time_must_be_positive_and_checks_come_at_most_a_quarter_of_it_late():
    with pytest.raises(ValueError):
        StreamWatchdog(0)
    assert check_interval_s(60_000) == 1.0
    assert check_interval_s(2_000) == 0.5


def test_trade_stream_by_symbol_reads_symbol_equals_kind_and_writes_it_back():
    kinds = parse_trade_stream_by_symbol(" DOTUSDT=aggTrade, btcusdt = trade,,")
    assert kinds == {"dotusdt": "aggTrade", "btcusdt": "trade"}
    assert format_trade_stream_by_symbol(kinds) == "btcusdt=trade,dotusdt=aggTrade"
    assert parse_trade_stream_by_symbol(format_trade_stream_by_symbol(kinds)) == kinds
    assert parse_trade_stream_by_symbol("") == {}


@pytest.mark.parametrize(
    "text", ["dotusdt", "dotusdt=depth", "dot/usdt=trade", "dotusdt=trade,DOTUSDT=aggTrade", "=trade"]
)
def test_trade_stream_by_symbol_refuses_what_it_cannot_follow(text):
    with pytest.raises(ValueError):
        parse_trade_stream_by_symbol(text)


def test_each_symbol_follows_its_own_kind_else_the_default(monkeypatch, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("t\n")
    monkeypatch.setenv("AGGREGATOR_TRADE_STREAM_BY_SYMBOL", "DOTUSDT=aggTrade,ethusdt=trade")
    settings = AggregatorSettings(
        api_token_file=token_file, redis_url="redis://x", kafka_bootstrap_servers="k:9092"
    )
    assert settings.trade_stream_by_symbol == {"dotusdt": "aggTrade", "ethusdt": "trade"}
    assert settings.stale_stream_s == 60.0
    streams = TradeStreams(settings.trade_stream, settings.trade_stream_by_symbol)
    kinds = [streams.kind(symbol) for symbol in ("dotusdt", "ethusdt", "btcusdt")]
    assert kinds == ["aggTrade", "trade", "trade"]

    monkeypatch.setenv("AGGREGATOR_TRADE_STREAM_BY_SYMBOL", "dotusdt=aggtrade")
    with pytest.raises(ValidationError):
        AggregatorSettings(api_token_file=token_file, redis_url="redis://x", kafka_bootstrap_servers="k:9092")
