"""Parsing of raw frames: trades (aggregator.trades) and mini-tickers into KafkaMsg (aggregator.tickers)."""

from __future__ import annotations

import gzip
import uuid
from decimal import Decimal

import orjson
import pytest

from aggregator.tickers import MalformedTicker, parse_mini_ticker_frame
from aggregator.trades import MalformedFrame, Trade, UnknownEvent, parse_trade_frame
from crypto_mesh import jsonutil


def first_line(recording) -> bytes:
    with gzip.open(recording) as lines:
        return next(lines)


def test_a_recorded_trade_frame_parses_to_exact_decimals(trade_recording):
    assert parse_trade_frame(first_line(trade_recording)) == Trade(
        symbol="btcusdt",
        trade_id=3735683259,
        price=Decimal("61837.63000000"),
        quantity=Decimal("0.02000000"),
        time_ms=1723161255342,
    )


def test_a_recorded_agg_trade_frame_uses_the_aggregate_id(agg_trade_recording):
    parsed = parse_trade_frame(first_line(agg_trade_recording))
    assert (parsed.symbol, parsed.trade_id, parsed.price, parsed.time_ms) == (
        "btcusdt",
        665076760,
        Decimal("58001.03000000"),
        1617566591314,
    )


def test_the_raw_form_without_the_stream_wrapper_parses_too(trade_recording):
    data = orjson.loads(first_line(trade_recording))["data"]
    assert parse_trade_frame(orjson.dumps(data)).trade_id == 3735683259


GOOD = {"e": "trade", "E": 2, "s": "BTCUSDT", "t": 7, "p": "1.5", "q": "2", "T": 1, "m": True}


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        b'{"stream": "btcusdt@trade", "data": "x"}',
        orjson.dumps({**GOOD, "e": None}),
        orjson.dumps({k: v for k, v in GOOD.items() if k != "p"}),
        orjson.dumps({**GOOD, "p": 1.5}),  # a float price is not trusted
        orjson.dumps({**GOOD, "p": "NaN"}),
        orjson.dumps({**GOOD, "p": "-1"}),
        orjson.dumps({**GOOD, "p": "0"}),
        orjson.dumps({**GOOD, "q": "abc"}),
        orjson.dumps({**GOOD, "t": True}),
        orjson.dumps({**GOOD, "t": "7"}),
        orjson.dumps({**GOOD, "T": -5}),
        orjson.dumps({**GOOD, "s": "BTC/USDT"}),
    ],
)
def test_a_malformed_trade_frame_is_rejected(frame):
    with pytest.raises(MalformedFrame):
        parse_trade_frame(frame)


def test_an_event_that_is_not_a_trade_is_reported_as_unknown():
    frame = orjson.dumps({"stream": "btcusdt@kline_1m", "data": {**GOOD, "e": "kline"}})
    with pytest.raises(UnknownEvent):
        parse_trade_frame(frame)


def mini_ticker(
    symbol="BTCUSDT", event_time=1723161256000, close="61837.63", open_="60000.00", **extra
) -> dict:
    return {
        "e": "24hrMiniTicker",
        "E": event_time,
        "s": symbol,
        "c": close,
        "o": open_,
        "h": "62000.00",
        "l": "59000.00",
        "v": "1234.5",
        "q": "76300000.1",
        **extra,
    }


def test_a_mini_ticker_array_becomes_kafka_msgs_as_in_the_contract():
    frame = orjson.dumps({"stream": "!miniTicker@arr", "data": [mini_ticker(), mini_ticker("ETHUSDT")]})

    messages, rejected = parse_mini_ticker_frame(frame, received_ms=1723161256012)

    assert rejected == 0
    assert [m.symbol for m in messages] == ["btcusdt", "ethusdt"]
    assert orjson.loads(jsonutil.dumps(messages[0].to_json())) == {
        "message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "binance.miniticker/btcusdt/1723161256000")),
        "e": "24hrMiniTicker",
        "E": 1723161256000,
        "receive_time": 1723161256012,
        "s": "btcusdt",
        "c": "61837.63",
        "o": "60000.00",
        "h": "62000.00",
        "l": "59000.00",
        "change_price": "1837.63",
        "change_percent": "3.06271667",
    }


def test_change_percent_divides_by_open_and_rounds_half_even_to_8_places():
    # (1 - 3) / 3 * 100 = -66.666666666...; by close it would be -200.
    [falling], _ = parse_mini_ticker_frame(orjson.dumps(mini_ticker(close="1", open_="3")), 0)
    # 0.000000005 is a tie: half-even rounds it to 0.00000000, half-up would give 0.00000001.
    [tie], _ = parse_mini_ticker_frame(orjson.dumps(mini_ticker(close="100.000000005", open_="100")), 0)

    assert falling.change_percent == Decimal("-66.66666667")
    assert falling.change_price == Decimal("-2")
    assert tie.change_percent == Decimal("0E-8")


def test_change_percent_is_zero_when_open_is_zero():
    [message], _ = parse_mini_ticker_frame(orjson.dumps(mini_ticker(close="5", open_="0")), 0)
    assert jsonutil.dumps(message.to_json()).count(b'"change_percent":"0"') == 1


def test_message_id_is_the_same_for_a_redelivered_event_and_differs_between_events():
    [a], _ = parse_mini_ticker_frame(orjson.dumps(mini_ticker()), 1)
    [again], _ = parse_mini_ticker_frame(orjson.dumps(mini_ticker()), 99)
    [later], _ = parse_mini_ticker_frame(orjson.dumps(mini_ticker(event_time=1723161257000)), 1)

    assert a.message_id == again.message_id != later.message_id


def test_malformed_mini_ticker_elements_are_skipped_and_counted():
    frame = orjson.dumps(
        {
            "stream": "!miniTicker@arr",
            "data": [
                mini_ticker(),
                mini_ticker(close=None),
                mini_ticker(symbol="../x"),
                "junk",
                mini_ticker(E=True),
                {**mini_ticker(), "e": "24hrTicker"},
            ],
        }
    )

    messages, rejected = parse_mini_ticker_frame(frame, 0)

    assert [m.symbol for m in messages] == ["btcusdt"]
    assert rejected == 5


@pytest.mark.parametrize("frame", [b"nope", b'{"stream": "!miniTicker@arr", "data": 5}', b"42"])
def test_a_frame_that_is_not_a_mini_ticker_frame_is_rejected(frame):
    with pytest.raises(MalformedTicker):
        parse_mini_ticker_frame(frame, 0)
