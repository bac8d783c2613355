"""The BFF's public market history (``GET /v1/instruments/{symbol}/candles`` and ``.../indicators``) over a
real ETL whose chDB holds the SecondStats of both shipped recordings: every candle of every interval and
every indicator equal those computed here from the recordings' trades; the live seconds in Redis make the
newest candle current; errors, the cache headers, the per-address limit and an ETL that is down."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from support.etl import load_recordings
from support.market import (
    INTERVAL_MS,
    RECORDED_SYMBOLS,
    REFERENCE_INDICATORS,
    both_recordings,
    reference_candles,
)
from support.stacks import serve_etl, serve_stack

from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil
from support.ports import free_port
from crypto_mesh.redisclient import seconds_key

@pytest.fixture(scope="module")
async def etl(tmp_path_factory, kafka_bootstrap, trade_recording, agg_trade_recording):
    async with serve_etl(kafka_bootstrap, tmp_path_factory.mktemp("bff-candles") / "chdb") as running:
        await load_recordings(running.service.store, trade_recording, agg_trade_recording)
        yield running


@pytest.fixture(scope="module")
async def bff(postgres, redis_url, tmp_path_factory, etl):
    etl_url = f"http://127.0.0.1:{etl.port}"
    async with serve_stack(postgres, redis_url, tmp_path_factory, etl_url=etl_url) as running:
        yield running


@pytest.fixture(scope="module")
def trades(trade_recording, agg_trade_recording) -> dict[str, list]:
    return both_recordings(trade_recording, agg_trade_recording)


def iso(unix_ms: int) -> str:
    """``unix_ms`` as the BFF writes times: RFC 3339, UTC, milliseconds."""
    moment = datetime.fromtimestamp(unix_ms // 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{unix_ms % 1000:03d}Z"


def answered(candle: dict) -> dict:
    """An answered candle with its decimal strings read as ``Decimal``."""
    return {
        key: value if key.endswith("_time") or key == "trades" else Decimal(value)
        for key, value in candle.items()
    }


def expected(reference, interval_ms: int) -> dict:
    return {
        "open_time": iso(reference.open_time_ms),
        "close_time": iso(reference.open_time_ms + interval_ms - 1),
        "open": reference.open,
        "high": reference.high,
        "low": reference.low,
        "close": reference.close,
        "volume": reference.volume,
        "quote_volume": reference.quote_volume,
        "trades": reference.trades,
    }


async def get(bff, path: str, **params) -> tuple[int, dict, dict]:
    async with bff.http.get(f"{bff.url}{path}", params=params) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


@pytest.mark.parametrize("interval", sorted(INTERVAL_MS))
@pytest.mark.parametrize("recording", sorted(RECORDED_SYMBOLS))
async def test_every_candle_of_every_interval_equals_the_candle_of_the_recorded_trades(
    bff, trades, recording, interval
):
    interval_ms = INTERVAL_MS[interval]
    first = min(trade.time_ms for trade in trades[recording])
    last = max(trade.time_ms for trade in trades[recording])
    for symbol in RECORDED_SYMBOLS[recording]:
        references = reference_candles(trades[recording], symbol, interval_ms)
        status, body, headers = await get(
            bff,
            f"/v1/instruments/{symbol.upper()}/candles",
            interval=interval,
            start=iso(first - first % interval_ms),
            end=str(last),
            limit="1000",
        )
        assert status == 200, body
        assert (body["symbol"], body["interval"]) == (symbol, interval)
        assert [answered(c) for c in body["candles"]] == [expected(c, interval_ms) for c in references]
        # Public market data, not personal: no "no-store" (docs/CONTRACTS.md).
        assert "no-store" not in headers.get("Cache-Control", "")


@pytest.mark.parametrize("name", sorted(REFERENCE_INDICATORS))
async def test_each_indicator_equals_its_reference_over_the_recorded_candles(bff, trades, name):
    candles = reference_candles(trades["aggTrade 2021"], "ethusdt", 1000)
    closes = [candle.close for candle in candles]
    status, body, _ = await get(
        bff,
        "/v1/instruments/ethusdt/indicators",
        name=name,
        period="5",
        interval="1s",
        start=str(candles[0].open_time_ms),
        end=str(candles[-1].open_time_ms),
    )
    assert status == 200, body
    assert (body["symbol"], body["interval"], body["name"], body["period"]) == ("ethusdt", "1s", name, 5)
    assert [(point["open_time"], Decimal(point["value"])) for point in body["points"]] == [
        (iso(candle.open_time_ms), value)
        for candle, value in zip(candles, REFERENCE_INDICATORS[name](closes, 5), strict=True)
        if value is not None
    ]
    assert len(body["points"]) > 20


async def test_the_default_period_of_each_indicator_is_given_in_the_answer(bff):
    for name, period in {"sma": 20, "ema": 20, "rsi": 14, "volatility": 20}.items():
        status, body, _ = await get(bff, "/v1/instruments/btcusdt/indicators", name=name, interval="1m")
        assert (status, body["period"]) == (200, period), body


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/v1/instruments/zzzzusdt/candles", {}, 404, "unknown_symbol"),
        ("/v1/instruments/btc-usdt/candles", {}, 404, "unknown_symbol"),
        ("/v1/instruments/zzzzusdt/indicators", {"name": "rsi"}, 404, "unknown_symbol"),
        ("/v1/instruments/btcusdt/candles", {"interval": "3m"}, 422, "invalid_interval"),
        ("/v1/instruments/btcusdt/candles", {"start": "yesterday"}, 422, "invalid_range"),
        ("/v1/instruments/btcusdt/candles", {"start": "2024-08-08T23:54:00"}, 422, "invalid_range"),
        ("/v1/instruments/btcusdt/candles", {"start": "2024-08-09T00:00:00Z", "end": "2024-08-08T00:00:00Z"},
         422, "invalid_range"),
        ("/v1/instruments/btcusdt/candles", {"limit": "0"}, 422, "invalid_limit"),
        ("/v1/instruments/btcusdt/indicators", {"name": "macd"}, 422, "invalid_indicator"),
        ("/v1/instruments/btcusdt/indicators", {"name": "rsi", "period": "1"}, 422, "invalid_indicator"),
    ],
)
async def test_unknown_symbols_are_404_and_bad_queries_422_with_the_reason(bff, path, params, status, code):
    answer_status, body, headers = await get(bff, path, **params)
    assert (answer_status, body["error"]["code"]) == (status, code), body
    assert headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "1001"},
        {"interval": "1s", "start": "2024-08-08T23:00:00Z", "end": "2024-08-09T00:00:00Z"},
    ],
)
async def test_too_many_points_are_refused_naming_the_maximum(bff, params):
    status, body, _ = await get(bff, "/v1/instruments/btcusdt/candles", **params)
    assert (status, body["error"]["code"]) == (422, "too_many_points")
    assert "1000" in body["error"]["message"]


def second(symbol: str, second_ms: int, open_: str, high: str, low: str, close: str, volume: str) -> bytes:
    """A SecondStat JSON as the aggregator lists it in ``seconds:<symbol>`` (quote volume: close × volume)."""
    o, h, l_, c, v = (Decimal(x) for x in (open_, high, low, close, volume))
    return jsonutil.dumps(SecondStat(symbol, second_ms, o, h, l_, c, v, c * v, 3, second_ms).to_json())


async def test_live_seconds_after_clickhouses_last_second_make_the_newest_candle_current(bff, trades):
    # dotusdt's seconds in ClickHouse end at 20:04:41 (2021-04-04). The aggregator's list holds that second
    # (already in ClickHouse: not counted again), two later ones of the same minute and one of the next.
    references = reference_candles(trades["aggTrade 2021"], "dotusdt", 60_000)
    last = max(trade.time_ms for trade in trades["aggTrade 2021"] if trade.symbol == "dotusdt")
    last_second = last - last % 1000
    listed = [
        second("dotusdt", last_second, "1", "1", "1", "1", "1"),
        second("dotusdt", last_second + 2000, "41.5", "99.5", "41.4", "41.45", "2"),
        second("dotusdt", last_second + 3000, "41.45", "41.46", "0.5", "41.46", "0.25"),
        second("dotusdt", references[-1].open_time_ms + 60_000, "41.6", "41.7", "41.6", "41.7", "1.5"),
    ]
    await bff.redis.rpush(seconds_key("dotusdt"), *listed)
    try:
        status, body, _ = await get(bff, "/v1/instruments/dotusdt/candles", interval="1m", limit="3")
        assert status == 200, body
        newest = references[-1]
        assert [answered(candle) for candle in body["candles"]] == [
            expected(references[-2], 60_000),
            {
                **expected(newest, 60_000),
                "high": Decimal("99.5"),
                "low": Decimal("0.5"),
                "close": Decimal("41.46"),
                "volume": newest.volume + Decimal("2.25"),
                "quote_volume": newest.quote_volume + Decimal("82.9") + Decimal("10.365"),
                "trades": newest.trades + 6,
            },
            {
                "open_time": iso(newest.open_time_ms + 60_000),
                "close_time": iso(newest.open_time_ms + 120_000 - 1),
                "open": Decimal("41.6"),
                "high": Decimal("41.7"),
                "low": Decimal("41.6"),
                "close": Decimal("41.7"),
                "volume": Decimal("1.5"),
                "quote_volume": Decimal("62.55"),
                "trades": 3,
            },
        ]
        # The indicators are computed over the same candles: the newest close is the live one.
        status, body, _ = await get(
            bff, "/v1/instruments/dotusdt/indicators", name="sma", period="2", interval="1m", limit="3"
        )
        assert status == 200, body
        assert Decimal(body["points"][-1]["value"]) == (Decimal("41.46") + Decimal("41.7")) / 2
    finally:
        await bff.redis.delete(seconds_key("dotusdt"))


async def test_with_the_etl_down_the_routes_answer_503_and_they_are_rate_limited_per_address(
    postgres, redis_url, tmp_path_factory
):
    async with serve_stack(
        postgres,
        redis_url,
        tmp_path_factory,
        etl_url=f"http://127.0.0.1:{free_port()}",
        public_rate_per_address="3/minute",
    ) as down:
        for path, params in (
            ("/v1/instruments/btcusdt/candles", {}),
            ("/v1/instruments/btcusdt/indicators", {"name": "rsi"}),
        ):
            status, body, _ = await get(down, path, **params)
            assert (status, body["error"]["code"]) == (503, "unavailable"), body
        assert (await get(down, "/v1/instruments/zzzzusdt/candles"))[0] == 404
        status, body, headers = await get(down, "/v1/instruments/btcusdt/candles")
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        assert int(headers["Retry-After"]) >= 1
