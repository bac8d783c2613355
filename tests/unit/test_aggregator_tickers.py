"""Mini-tickers into KafkaMsg records and 24 h tickers (aggregator.tickers): the contracts' JSON, the change
since open, stable ids, and the buffer that keeps only the newest pending ticker of each symbol.

Parsing the mini-ticker frames themselves is the Binance adapter's (tests/test_binance_adapter.py).
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import orjson

from aggregator.tickers import KafkaMsg, LatestTickers, day_ticker_json
from crypto_mesh import jsonutil
from crypto_mesh.binance import MiniTicker, mini_ticker_payload, parse_mini_ticker_frame


def mini_ticker(
    symbol="BTCUSDT", event_time=1723161256000, close="61837.63", open_="60000.00"
) -> dict:
    return mini_ticker_payload(
        event_ms=event_time,
        symbol=symbol,
        close=close,
        open_=open_,
        high="62000.00",
        low="59000.00",
        volume="1234.5",
        quote_volume="76300000.1",
    )


def kafka_msgs(frame: dict | list, received_ms: int) -> list[KafkaMsg]:
    tickers, rejected = parse_mini_ticker_frame(orjson.dumps(frame))
    assert rejected == 0
    return [KafkaMsg.of(ticker, received_ms) for ticker in tickers]


def test_a_mini_ticker_array_becomes_kafka_msgs_as_in_the_contract():
    frame = {"stream": "!miniTicker@arr", "data": [mini_ticker(), mini_ticker("ETHUSDT")]}

    messages = kafka_msgs(frame, received_ms=1723161256012)

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
    [falling] = kafka_msgs(mini_ticker(close="1", open_="3"), 0)
    # 0.000000005 is a tie: half-even rounds it to 0.00000000, half-up would give 0.00000001.
    [tie] = kafka_msgs(mini_ticker(close="100.000000005", open_="100"), 0)

    assert falling.change_percent == Decimal("-66.66666667")
    assert falling.change_price == Decimal("-2")
    assert tie.change_percent == Decimal("0E-8")


def test_change_percent_is_zero_when_open_is_zero():
    [message] = kafka_msgs(mini_ticker(close="5", open_="0"), 0)
    assert jsonutil.dumps(message.to_json()).count(b'"change_percent":"0"') == 1


def test_message_id_is_the_same_for_a_redelivered_event_and_differs_between_events():
    [a] = kafka_msgs(mini_ticker(), 1)
    [again] = kafka_msgs(mini_ticker(), 99)
    [later] = kafka_msgs(mini_ticker(event_time=1723161257000), 1)

    assert a.message_id == again.message_id != later.message_id


def parsed(frame: dict | list) -> list[MiniTicker]:
    tickers, rejected = parse_mini_ticker_frame(orjson.dumps(frame))
    assert rejected == 0
    return tickers


def test_a_day_ticker_keeps_every_field_of_the_mini_ticker_exactly_with_the_change_since_open():
    [ticker] = parsed(mini_ticker(close="61837.63000000", open_="60000.00000000"))

    assert orjson.loads(jsonutil.dumps(day_ticker_json(ticker))) == {
        "s": "btcusdt",
        "E": 1723161256000,
        "c": "61837.63000000",
        "o": "60000.00000000",
        "h": "62000.00",
        "l": "59000.00",
        "v": "1234.5",
        "q": "76300000.1",
        "change_price": "1837.63000000",
        # 1837.63 / 60000 * 100 = 3.0627166666...: half-even to 8 places.
        "change_percent": "3.06271667",
    }


def ticker_at(symbol: str, event_time: int) -> MiniTicker:
    [ticker] = parsed(mini_ticker(symbol=symbol, event_time=event_time))
    return ticker


def test_the_buffer_keeps_the_newest_pending_ticker_of_each_symbol_and_counts_the_others():
    buffer = LatestTickers()

    buffer.add([ticker_at("BTCUSDT", 2000), ticker_at("ETHUSDT", 2000)])
    buffer.add([ticker_at("BTCUSDT", 3000)])
    buffer.add([ticker_at("BTCUSDT", 1000)])  # older than the pending one: ignored

    assert len(buffer) == 2
    assert [(t.symbol, t.event_time_ms) for t in buffer.take()] == [("btcusdt", 3000), ("ethusdt", 2000)]
    assert buffer.conflated == 2 and buffer.dropped == 0
    assert buffer.take() == [] and len(buffer) == 0


def test_tickers_put_back_after_a_failed_write_lose_to_newer_pending_ones():
    buffer = LatestTickers()
    buffer.add([ticker_at("BTCUSDT", 1000), ticker_at("ETHUSDT", 1000)])
    lent = buffer.take()
    buffer.add([ticker_at("BTCUSDT", 2000)])

    buffer.restore(lent)

    assert sorted((t.symbol, t.event_time_ms) for t in buffer.take()) == [
        ("btcusdt", 2000),
        ("ethusdt", 1000),
    ]
    assert buffer.conflated == 0


def test_the_buffer_holds_at_most_its_number_of_symbols_and_drops_tickers_of_further_ones():
    buffer = LatestTickers(max_symbols=2)

    buffer.add([ticker_at("AUSDT", 1000), ticker_at("BUSDT", 1000), ticker_at("CUSDT", 1000)])
    buffer.add([ticker_at("AUSDT", 2000)])  # a symbol already waiting still gets its newer ticker

    assert [(t.symbol, t.event_time_ms) for t in buffer.take()] == [("ausdt", 2000), ("busdt", 1000)]
    assert buffer.dropped == 1
