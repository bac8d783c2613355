"""The Binance adapter (crypto_mesh.binance): names, frames, control messages and exchangeInfo, read from the
real Binance data shipped in crypto_mesh/data/binance (see its SOURCES.md for the figures checked here)."""

from __future__ import annotations

import dataclasses
import functools
import gzip
from decimal import Decimal

import orjson
import pytest

from crypto_mesh import binance
from crypto_mesh.binance import (
    InvalidSymbol,
    MalformedFrame,
    MalformedTicker,
    MiniTicker,
    Trade,
    UnknownEvent,
    control,
    rest,
)

AGG_TRADE_RECORDING = binance.DATA_DIR / "btcusdt_ethusdt_dotusdt_aggTrade_2021-04-04.jsonl.gz"


@pytest.fixture(scope="module")
def recorded() -> list[bytes]:
    """Every frame of both shipped recordings, as Binance sent it: 34,419 @trade and 1,910 @aggTrade."""
    return binance.recording_lines(binance.DEFAULT_RECORDING) + binance.recording_lines(AGG_TRADE_RECORDING)


# --- Names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalized"), [("BTCUSDT", "btcusdt"), (" ethusdt\n", "ethusdt"), ("1inch", "1inch")]
)
def test_a_symbol_is_stripped_and_lowercased(given, normalized):
    assert binance.normalize_symbol(given) == normalized


@pytest.mark.parametrize("given", [None, 42, "", "b", "BTC/USDT", "btc usdt", "../x", "a" * 21, "bitcoïn"])
def test_a_symbol_that_is_not_2_to_20_ascii_letters_or_digits_is_refused(given):
    with pytest.raises(InvalidSymbol):
        binance.normalize_symbol(given)


def test_stream_names_are_the_lowercase_symbol_and_the_kind():
    assert binance.trade_stream("BTCUSDT") == "btcusdt@trade"
    assert binance.trade_stream("btcusdt", binance.AGG_TRADE) == "btcusdt@aggTrade"
    assert binance.mini_ticker_stream("ETHUSDT") == "ethusdt@miniTicker"
    assert binance.split_stream("btcusdt@depth@100ms") == ("btcusdt", "depth@100ms")
    with pytest.raises(ValueError, match="kind"):
        binance.trade_stream("btcusdt", "kline_1m")


def test_every_recorded_stream_name_and_the_all_market_one_are_valid_stream_names(recorded):
    streams = {orjson.loads(line)["stream"] for line in recorded}

    assert streams == {
        "btcusdt@trade",
        "ethusdt@trade",
        "btcusdt@aggTrade",
        "ethusdt@aggTrade",
        "dotusdt@aggTrade",
    }
    for stream in (*streams, binance.MINI_TICKER_ALL, "btcusdt@depth@100ms", "btcusdt@miniTicker"):
        assert binance.STREAM_NAME.fullmatch(stream), stream
    for stream in ("BTCUSDT@trade", "btc-usdt@trade", "btcusdt", "btcusdt@a@b@c", "@trade"):
        assert not binance.STREAM_NAME.fullmatch(stream), stream


@pytest.mark.parametrize(
    ("path", "parsed"),
    [
        ("/ws", (False, [])),
        ("/ws/btcusdt@trade", (False, ["btcusdt@trade"])),
        ("/ws/btcusdt@trade/ethusdt@trade/", (False, ["btcusdt@trade", "ethusdt@trade"])),
        ("/stream", (True, [])),
        ("/stream?streams=btcusdt@trade/!miniTicker@arr", (True, ["btcusdt@trade", "!miniTicker@arr"])),
        ("/nowhere", None),
        ("/wsx", None),
    ],
)
def test_stream_endpoints_tell_raw_from_combined_and_list_their_streams(path, parsed):
    assert binance.parse_stream_path(path) == parsed


def test_connections_go_to_the_combined_stream_endpoint_of_the_exchange():
    url = binance.combined_stream_url("wss://stream.binance.com:9443/")
    assert url == "wss://stream.binance.com:9443/stream"


# --- Combined-stream envelope ------------------------------------------------------------------------------


def test_the_stream_name_is_read_from_the_prefix_of_every_recorded_frame(recorded):
    for line in recorded:
        assert binance.stream_of(line) == orjson.loads(line)["stream"]


@pytest.mark.parametrize(
    ("raw", "framed"),
    [
        (b'{"data":{},"stream":"btcusdt@trade"}', ("btcusdt@trade", {})),  # not in Binance's order
        (b'{"stream": "btcusdt@trade", "data": {}}', ("btcusdt@trade", {})),  # not compact
        (b'{"stream":"btc\\u0075sdt@trade","data":{}}', ("btcusdt@trade", {})),  # escaped
        (b'{"result":null,"id":1}', None),  # a control answer
    ],
)
def test_a_frame_not_in_binances_exact_form_leaves_its_stream_to_a_full_decode(raw, framed):
    assert binance.stream_of(raw) is None
    assert binance.split_combined(orjson.loads(raw)) == framed


def test_a_recorded_frame_wrapped_again_is_byte_identical_to_what_binance_sent(recorded):
    for line in recorded:
        stream, data = binance.split_combined(orjson.loads(line))
        assert binance.combined_frame(stream, data) == line


def test_the_payload_is_data_of_a_combined_frame_and_the_frame_itself_in_raw_form():
    assert binance.payload({"stream": "s", "data": {"e": "trade"}}) == {"e": "trade"}
    assert binance.payload({"e": "trade"}) == {"e": "trade"}
    assert binance.payload({"stream": "s"}) is None
    assert binance.split_combined({"result": None, "id": 1}) is None
    assert binance.split_combined([1, 2]) is None


# --- Trades ------------------------------------------------------------------------------------------------


def test_every_recorded_trade_and_agg_trade_parses_to_its_exact_fields_with_contiguous_ids(recorded):
    ids: dict[str, list[int]] = {}
    for line in recorded:
        frame = orjson.loads(line)
        data = frame["data"]
        field = binance.trade_id_field(frame["stream"])

        trade = binance.parse_trade_frame(line)

        assert trade == Trade(
            symbol=data["s"].lower(),
            trade_id=data[field],
            price=Decimal(data["p"]),
            quantity=Decimal(data["q"]),
            time_ms=data["T"],
        )
        ids.setdefault(frame["stream"], []).append(trade.trade_id)
    assert {stream: len(found) for stream, found in ids.items()} == {
        "btcusdt@trade": 19_904,
        "ethusdt@trade": 14_515,
        "btcusdt@aggTrade": 1_227,
        "ethusdt@aggTrade": 506,
        "dotusdt@aggTrade": 177,
    }
    for found in ids.values():
        assert found == list(range(found[0], found[0] + len(found)))


def test_the_first_recorded_trade_keeps_every_digit():
    first = binance.recording_lines(binance.DEFAULT_RECORDING)[0]
    assert binance.parse_trade_frame(first) == Trade(
        symbol="btcusdt",
        trade_id=3735683259,
        price=Decimal("61837.63000000"),
        quantity=Decimal("0.02000000"),
        time_ms=1723161255342,
    )
    assert str(binance.parse_trade_frame(first).price) == "61837.63000000"


def test_the_raw_form_without_the_stream_wrapper_parses_too():
    first = binance.recording_lines(AGG_TRADE_RECORDING)[0]
    data = orjson.loads(first)["data"]
    assert binance.parse_trade_frame(orjson.dumps(data)) == binance.parse_trade_frame(first)
    assert binance.parse_trade_frame(orjson.dumps(data)).trade_id == 665076760


def test_the_id_field_follows_the_stream_kind():
    assert binance.trade_id_field("btcusdt@trade") == "t"
    assert binance.trade_id_field("btcusdt@aggTrade") == "a"
    assert binance.trade_id_field("btcusdt@miniTicker") is None
    assert binance.trade_id_field(binance.MINI_TICKER_ALL) is None


GOOD = {"e": "trade", "E": 2, "s": "BTCUSDT", "t": 7, "p": "1.5", "q": "2", "T": 1, "m": True}


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        b'{"stream": "btcusdt@trade", "data": "x"}',
        orjson.dumps({"stream": "btcusdt@trade", **GOOD}),  # a combined frame without data
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
        orjson.dumps({**GOOD, "e": "aggTrade"}),  # an aggregate trade needs its id a
    ],
)
def test_a_malformed_trade_frame_is_rejected(frame):
    with pytest.raises(MalformedFrame):
        binance.parse_trade_frame(frame)


def test_a_parsed_trade_is_as_frozen_and_hashable_as_a_constructed_one():
    trade = binance.parse_trade_frame(orjson.dumps(GOOD))
    constructed = Trade(symbol="btcusdt", trade_id=7, price=Decimal("1.5"), quantity=Decimal("2"), time_ms=1)
    assert trade == constructed and hash(trade) == hash(constructed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        trade.price = Decimal("2")  # type: ignore[misc]


def test_every_frame_of_a_symbol_is_checked_alike_after_the_first():
    # The parser remembers the symbol strings it has normalised; the second frame of each must be read alike.
    for _ in range(2):
        assert binance.parse_trade_frame(orjson.dumps({**GOOD, "s": " EthUsdt"})).symbol == "ethusdt"
        with pytest.raises(MalformedFrame):
            binance.parse_trade_frame(orjson.dumps({**GOOD, "s": "ETH/USDT"}))
        with pytest.raises(MalformedFrame):
            binance.parse_trade_frame(orjson.dumps({**GOOD, "s": ["BTCUSDT"]}))


def test_an_event_that_is_not_a_trade_is_reported_as_unknown():
    frame = orjson.dumps({"stream": "btcusdt@kline_1m", "data": {**GOOD, "e": "kline"}})
    with pytest.raises(UnknownEvent):
        binance.parse_trade_frame(frame)


# --- Mini-tickers ------------------------------------------------------------------------------------------


@functools.cache
def first_recorded_trades() -> dict[str, dict]:
    """Symbol as Binance writes it → the payload of its first trade in the shipped @trade recording."""
    first: dict[str, dict] = {}
    for line in binance.recording_lines(binance.DEFAULT_RECORDING):
        data = orjson.loads(line)["data"]
        first.setdefault(data["s"], data)
    return first


def recorded_mini_ticker(symbol: str = "BTCUSDT") -> dict:
    """The mini-ticker of the second of ``symbol``'s first recorded trade, as the adapter writes it."""
    trade = first_recorded_trades()[symbol]
    return binance.mini_ticker_payload(
        event_ms=trade["E"] - trade["E"] % 1000 + 1000,
        symbol=symbol,
        close=trade["p"],
        open_=trade["p"],
        high=trade["p"],
        low=trade["p"],
        volume=trade["q"],
        quote_volume=str(Decimal(trade["p"]) * Decimal(trade["q"])),
    )


def test_a_written_mini_ticker_has_binances_fields_and_reads_back_exactly():
    payload = recorded_mini_ticker()

    assert list(payload) == ["e", "E", "s", "c", "o", "h", "l", "v", "q"]
    assert payload["e"] == binance.MINI_TICKER_EVENT == "24hrMiniTicker"
    for frame in (
        {"stream": binance.MINI_TICKER_ALL, "data": [payload]},  # all market, combined
        {"stream": "btcusdt@miniTicker", "data": payload},  # one symbol, combined
        [payload],  # all market, raw
        payload,  # one symbol, raw
    ):
        assert binance.parse_mini_ticker_frame(orjson.dumps(frame)) == (
            [
                MiniTicker(
                    event_time_ms=1723161256000,
                    symbol="btcusdt",
                    close=Decimal("61837.63000000"),
                    open=Decimal("61837.63000000"),
                    high=Decimal("61837.63000000"),
                    low=Decimal("61837.63000000"),
                    volume=Decimal("0.02000000"),
                    quote_volume=Decimal("1236.7526000000000000"),
                )
            ],
            0,
        )


def test_malformed_mini_ticker_elements_are_skipped_and_counted():
    good = recorded_mini_ticker()
    frame = {
        "stream": binance.MINI_TICKER_ALL,
        "data": [
            good,
            recorded_mini_ticker("ETHUSDT"),
            {**good, "c": None},
            {**good, "c": "-1"},
            {**good, "s": "../x"},
            "junk",
            {**good, "E": True},
            {**good, "e": "24hrTicker"},
            {key: value for key, value in good.items() if key != "q"},
            {**good, "v": 1.5},
        ],
    }

    tickers, rejected = binance.parse_mini_ticker_frame(orjson.dumps(frame))

    assert [ticker.symbol for ticker in tickers] == ["btcusdt", "ethusdt"]
    assert rejected == 8


@pytest.mark.parametrize(
    "frame", [b"nope", b'{"stream": "!miniTicker@arr", "data": 5}', b'{"stream": "!miniTicker@arr"}', b"42"]
)
def test_a_frame_that_is_not_a_mini_ticker_frame_is_rejected(frame):
    with pytest.raises(MalformedTicker):
        binance.parse_mini_ticker_frame(frame)


# --- Control messages --------------------------------------------------------------------------------------


def test_control_messages_have_the_documented_shapes():
    assert control.request(control.SUBSCRIBE, ["btcusdt@trade"], 1) == {
        "method": "SUBSCRIBE",
        "params": ["btcusdt@trade"],
        "id": 1,
    }
    assert control.result(["btcusdt@trade"], 3) == {"result": ["btcusdt@trade"], "id": 3}
    assert control.error(control.INVALID_REQUEST, "Invalid request: x", None) == {
        "error": {"code": 2, "msg": "Invalid request: x"},
        "id": None,
    }


# --- exchangeInfo ------------------------------------------------------------------------------------------


def test_the_shipped_exchange_info_lists_1695_symbols_of_which_1262_trade():
    listed = binance.load_exchange_info(binance.DEFAULT_EXCHANGE_INFO)
    by_symbol = {entry.symbol: entry for entry in listed}

    assert len(listed) == len(by_symbol) == 1695
    assert sum(entry.trading for entry in listed) == 1262
    assert by_symbol["btcusdt"] == binance.ListedSymbol("btcusdt", "BTC", "USDT", binance.TRADING)
    assert by_symbol["bccbtc"].status == "BREAK" and not by_symbol["bccbtc"].trading
    assert all(entry.symbol == entry.symbol.lower() for entry in listed)


def test_exchange_info_reads_the_same_gzipped_or_plain(tmp_path):
    plain = tmp_path / "exchangeInfo.json.gz"  # the magic bytes decide, not the name
    plain.write_bytes(gzip.decompress(binance.DEFAULT_EXCHANGE_INFO.read_bytes()))

    assert binance.load_exchange_info(plain) == binance.load_exchange_info(binance.DEFAULT_EXCHANGE_INFO)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "exchangeInfo.json: "),
        (b"[]", "no symbols list"),
        (b'{"symbols": {}}', "no symbols list"),
        (b'{"symbols": [{"symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC"}]}', "malformed"),
        (b'{"symbols": ["BTCUSDT"]}', "malformed symbol"),
    ],
)
def test_a_file_that_is_not_an_exchange_info_body_is_refused_naming_the_file(tmp_path, body, error):
    path = tmp_path / "exchangeInfo.json"
    path.write_bytes(body)
    with pytest.raises(ValueError, match=error) as refused:
        binance.load_exchange_info(path)
    assert str(refused.value).startswith(f"{path}: ")


def test_a_missing_exchange_info_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        binance.load_exchange_info(tmp_path / "absent.json")


def test_symbols_the_mesh_cannot_name_are_left_out_of_the_list_and_the_rest_is_kept():
    # Binance may list symbols with non-ASCII characters ("General API Information").
    body = orjson.dumps(
        {
            "symbols": [
                {"symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT"},
                {"symbol": "币安人生USDT", "status": "TRADING", "baseAsset": "币安人生", "quoteAsset": "USDT"},
                {"symbol": "A" * 21, "status": "TRADING", "baseAsset": "A" * 17, "quoteAsset": "USDT"},
            ]
        }
    )

    listed = binance.parse_exchange_info_body(body)

    assert listed == [binance.ListedSymbol("btcusdt", "BTC", "USDT", "TRADING")]
    not_a_name = {"symbol": 42, "status": "TRADING", "baseAsset": "A", "quoteAsset": "B"}
    with pytest.raises(ValueError, match="malformed"):
        binance.parse_exchange_info_body(orjson.dumps({"symbols": [not_a_name]}))


def test_the_exchange_info_request_is_the_documented_route_of_the_rest_base_url():
    assert str(binance.exchange_info_url("https://api.binance.com")) == (
        "https://api.binance.com/api/v3/exchangeInfo?showPermissionSets=false"
    )
    assert str(binance.exchange_info_url("http://127.0.0.1:9443/")).startswith(
        "http://127.0.0.1:9443/api/v3/exchangeInfo?"
    )
    assert binance.EXCHANGE_INFO_PATH == "/api/v3/exchangeInfo" and binance.EXCHANGE_INFO_WEIGHT == 20


@pytest.mark.parametrize(
    ("header", "seconds"), [("120", 120.0), ("0", 0.0), (None, None), ("soon", None), ("-1", None)]
)
def test_retry_after_is_read_in_seconds(header, seconds):
    assert rest.retry_after_s(header) == seconds


# --- Data files --------------------------------------------------------------------------------------------


def test_recording_lines_skip_blank_lines_in_plain_and_gzipped_files(tmp_path):
    lines = binance.recording_lines(binance.DEFAULT_RECORDING)[:3]
    text = b"\n".join(lines[:2]) + b"\n\n  \n" + lines[2] + b"\n"
    plain, packed = tmp_path / "plain.jsonl.gz", tmp_path / "packed.jsonl"
    plain.write_bytes(text)
    packed.write_bytes(gzip.compress(text))

    assert binance.recording_lines(plain) == binance.recording_lines(packed) == lines
