"""The ETL's typed read API (``GET /v1/candles``, ``GET /v1/indicators``) over chDB loaded with the
SecondStats of both shipped recordings: every candle of every interval equals the candle computed here from
the recording's trades, and every indicator its reference computation to the last of its 18 places."""

from __future__ import annotations

from decimal import Decimal

import pytest
from support.etl import load_recordings, read
from support.market import (
    INTERVAL_MS,
    RECORDED_SYMBOLS,
    REFERENCE_INDICATORS,
    both_recordings,
    reference_candles,
)
from support.stacks import serve_etl

@pytest.fixture(scope="module")
async def etl(tmp_path_factory, kafka_bootstrap, trade_recording, agg_trade_recording):
    """A real ETL on its own chDB holding the SecondStats of both recordings, half of them inserted twice
    (a redelivery the insert token cannot recognise: the candles must not count them twice)."""
    async with serve_etl(kafka_bootstrap, tmp_path_factory.mktemp("candles") / "chdb") as running:
        await load_recordings(running.service.store, trade_recording, agg_trade_recording)
        yield running


@pytest.fixture(scope="module")
def trades(trade_recording, agg_trade_recording) -> dict[str, list]:
    return both_recordings(trade_recording, agg_trade_recording)


def candle_of(reference, interval_ms: int) -> dict:
    """A reference candle as the ETL answers it."""
    return {
        "open_time": reference.open_time_ms,
        "close_time": reference.open_time_ms + interval_ms - 1,
        "open": reference.open,
        "high": reference.high,
        "low": reference.low,
        "close": reference.close,
        "volume": reference.volume,
        "quote_volume": reference.quote_volume,
        "trades": reference.trades,
    }


def exact(candle: dict) -> dict:
    """An answered candle with its decimal strings read as ``Decimal``."""
    return {key: Decimal(value) if isinstance(value, str) else value for key, value in candle.items()}


@pytest.mark.parametrize("interval", sorted(INTERVAL_MS))
@pytest.mark.parametrize("recording", sorted(RECORDED_SYMBOLS))
async def test_every_candle_of_every_interval_equals_the_candle_of_the_recorded_trades(
    etl, trades, recording, interval
):
    symbols = RECORDED_SYMBOLS[recording]
    interval_ms = INTERVAL_MS[interval]
    first = min(trade.time_ms for trade in trades[recording])
    last = max(trade.time_ms for trade in trades[recording])
    for symbol in symbols:
        references = reference_candles(trades[recording], symbol, interval_ms)
        expected = [candle_of(c, interval_ms) for c in references]
        status, body = await read(
            etl.port,
            "/v1/candles",
            symbol=symbol,
            interval=interval,
            start=first - first % interval_ms,
            end=last,
            limit=1000,
        )
        assert status == 200, body
        assert (body["symbol"], body["interval"]) == (symbol, interval)
        assert [exact(candle) for candle in body["candles"]] == expected, symbol
        newest_trade = max(trade.time_ms for trade in trades[recording] if trade.symbol == symbol)
        assert body["last_second"] == newest_trade - newest_trade % 1000


async def test_without_start_the_latest_periods_are_answered_and_end_pages_backwards(etl, trades):
    newest = reference_candles(trades["trade 2024"], "btcusdt", 1000)
    status, body = await read(etl.port, "/v1/candles", symbol="btcusdt", interval="1s", limit=60)
    assert status == 200
    last = newest[-1].open_time_ms
    assert [exact(c) for c in body["candles"]] == [
        candle_of(c, 1000) for c in newest if c.open_time_ms > last - 60_000
    ]
    # The page before: candles opening up to a second before the oldest answered one.
    oldest = body["candles"][0]["open_time"]
    status, page = await read(
        etl.port, "/v1/candles", symbol="btcusdt", interval="1s", limit=60, end=oldest - 1
    )
    anchor = max(c.open_time_ms for c in newest if c.open_time_ms < oldest)
    assert [exact(c) for c in page["candles"]] == [
        candle_of(c, 1000) for c in newest if anchor - 60_000 < c.open_time_ms <= anchor
    ]


async def test_a_symbol_without_seconds_has_no_candles(etl):
    status, body = await read(etl.port, "/v1/candles", symbol="solusdt", interval="1m")
    assert status == 200
    assert body == {"symbol": "solusdt", "interval": "1m", "candles": [], "last_second": None}


@pytest.mark.parametrize("name", sorted(REFERENCE_INDICATORS))
async def test_each_indicator_equals_its_reference_over_the_recorded_candles(etl, trades, name):
    candles = reference_candles(trades["trade 2024"], "btcusdt", 1000)
    first = candles[0].open_time_ms
    closes = [c.close for c in candles]
    expected = [
        {"open_time": c.open_time_ms, "value": value}
        for c, value in zip(candles, REFERENCE_INDICATORS[name](closes, 14), strict=True)
        if value is not None
    ]
    status, body = await read(
        etl.port, "/v1/indicators", symbol="btcusdt", interval="1s", name=name, period=14, start=first,
        limit=1000,
    )
    assert status == 200, body
    assert (body["name"], body["period"], body["interval"]) == (name, 14, "1s")
    assert [{"open_time": p["open_time"], "value": Decimal(p["value"])} for p in body["points"]] == expected
    assert len(expected) > 400


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"symbol": "btc-usdt"}, "invalid_symbol"),
        ({"symbol": "btcusdt", "interval": "2h"}, "invalid_interval"),
        ({"symbol": "btcusdt", "start": "yesterday"}, "invalid_range"),
        ({"symbol": "btcusdt", "start": "2000", "end": "1000"}, "invalid_range"),
        ({"symbol": "btcusdt", "interval": "1s", "start": "0", "end": "1000000"}, "too_many_points"),
        ({"symbol": "btcusdt", "limit": "1001"}, "too_many_points"),
        ({"symbol": "btcusdt", "limit": "0"}, "invalid_limit"),
    ],
)
async def test_bad_requests_are_refused_with_422_and_the_reason(etl, params, code):
    status, body = await read(etl.port, "/v1/candles", **params)
    assert (status, body["error"]["code"]) == (422, code)


async def test_an_unknown_indicator_or_a_period_out_of_range_is_refused(etl):
    for params in ({"name": "macd"}, {"name": "rsi", "period": "1"}, {"name": "rsi", "period": "x"}):
        status, body = await read(etl.port, "/v1/indicators", symbol="btcusdt", **params)
        assert (status, body["error"]["code"]) == (422, "invalid_indicator"), params


async def test_the_read_api_requires_the_service_credential(etl):
    for path in ("/v1/candles", "/v1/indicators"):
        status, body = await read(etl.port, path, headers={}, symbol="btcusdt")
        assert (status, body["error"]["code"]) == (401, "unauthenticated")
