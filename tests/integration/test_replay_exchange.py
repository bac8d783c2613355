"""The replay exchange speaks Binance's spot stream protocol and replays real recorded frames in the present,
and serves Binance's `GET /api/v3/exchangeInfo` from a snapshot file within the REST request-weight limit."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from decimal import Decimal
from pathlib import Path

import aiohttp
import orjson
import pytest
from support.exchange_info import replace_file, snapshot_with
from support.polling import eventually
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from crypto_mesh import binance
from launcher.replay import server as replay_server
from launcher.replay.recording import RecordingError, load_recording
from launcher.replay.server import start
from launcher.replay.settings import ReplaySettings


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def recorded_trades(path: Path) -> dict[tuple[str, int], dict]:
    """(stream, trade id) → recorded payload, read straight from the file."""
    with gzip.open(path) as lines:
        return {(frame["stream"], frame["data"]["t"]): frame["data"] for frame in map(orjson.loads, lines)}


async def get_json(port: int, path: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.json()


async def receive(ws, timeout: float = 5.0):
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


@pytest.fixture(scope="module")
async def realtime(trade_recording):
    """A replay exchange at real-time speed."""
    running = await start(ReplaySettings(port=0, files=(trade_recording,), speed=1.0))
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def fast(trade_recording):
    """A replay exchange 20 times faster than real time."""
    running = await start(ReplaySettings(port=0, files=(trade_recording,), speed=20.0))
    yield running
    await running.stop()


async def test_raw_stream_sends_bare_payloads_shifted_to_now_with_recorded_ids_and_prices(
    realtime, trade_recording
):
    recorded = recorded_trades(trade_recording)
    _, info = await get_json(realtime.port, "/replay/v1/info")
    playing = info["recordings"][0]
    shift = playing["time_shift_ms"]
    # Shifted to the present: the recording's first second is the second the replay started in.
    first_ms = load_recording(trade_recording).first_event_ms
    assert shift == playing["started_at_ms"] // 1000 * 1000 - first_ms // 1000 * 1000

    received: list[tuple[str, int]] = []
    async with connect(f"{realtime.url}/ws/btcusdt@trade") as ws:
        for _ in range(10):
            raw = await asyncio.wait_for(ws.recv(), 5)
            received.append((raw, now_ms()))

    for raw, received_ms in received:
        trade = orjson.loads(raw)
        assert "stream" not in trade
        assert trade["e"] == "trade" and trade["s"] == "BTCUSDT"
        # Paced in real time: never sent before its shifted time (within the second the shift rounds to); a
        # busy machine only makes it later.
        assert trade["E"] <= received_ms + 1000
        original = recorded[("btcusdt@trade", trade["t"])]
        assert trade["E"] - shift == original["E"] and trade["T"] - shift == original["T"]
        assert trade["p"] == original["p"] and trade["q"] == original["q"]
        assert f'"p":"{original["p"]}","q":"{original["q"]}"'.encode() in raw.encode()
    ids = [orjson.loads(raw)["t"] for raw, _ in received]
    assert ids == list(range(ids[0], ids[0] + 10))


async def test_combined_stream_wraps_each_frame_with_its_stream_name(fast, trade_recording):
    recorded = recorded_trades(trade_recording)
    _, info = await get_json(fast.port, "/replay/v1/info")
    shift = info["recordings"][0]["time_shift_ms"]
    seen = set()
    async with connect(f"{fast.url}/stream?streams=btcusdt@trade/ethusdt@trade") as ws:
        while seen != {"btcusdt@trade", "ethusdt@trade"}:
            frame = await receive(ws)
            seen.add(frame["stream"])
            original = recorded[(frame["stream"], frame["data"]["t"])]
            assert {
                **frame["data"],
                "E": frame["data"]["E"] - shift,
                "T": frame["data"]["T"] - shift,
            } == original


async def test_each_loop_shifts_times_by_the_loop_span_and_ids_by_the_id_span(tmp_path):
    recording = tmp_path / "three_trades.jsonl"  # plain text: the gzip magic decides, not the name
    lines = [
        {
            "stream": "btcusdt@trade",
            "data": {
                "e": "trade",
                "E": 1000500,
                "s": "BTCUSDT",
                "t": 7,
                "p": "1.10",
                "q": "2.0",
                "T": 1000499,
                "m": True,
                "M": True,
            },
        },
        {
            "stream": "btcusdt@trade",
            "data": {
                "e": "trade",
                "E": 1001200,
                "s": "BTCUSDT",
                "t": 8,
                "p": "1.20",
                "q": "1.0",
                "T": 1001200,
                "m": False,
                "M": True,
            },
        },
        {
            "stream": "btcusdt@trade",
            "data": {
                "e": "trade",
                "E": 1001900,
                "s": "BTCUSDT",
                "t": 9,
                "p": "1.30",
                "q": "0.5",
                "T": 1001900,
                "m": True,
                "M": True,
            },
        },
    ]
    recording.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    running = await start(ReplaySettings(port=0, files=(recording,), speed=10.0))
    try:
        async with connect(f"{running.url}/ws/btcusdt@trade") as ws:
            trades = [await receive(ws) for _ in range(7)]
        _, info = await get_json(running.port, "/replay/v1/info")
    finally:
        await running.stop()
    entry = info["recordings"][0]
    assert entry["loop_span_ms"] == 2000 and entry["id_span"] == {"btcusdt": {"t": 3}}
    for trade in trades:
        loop, index = divmod(trade["t"] - 7, 3)
        original = lines[index]["data"]
        assert trade["E"] == original["E"] + entry["time_shift_ms"] + loop * entry["loop_span_ms"]
        assert trade["T"] == original["T"] + entry["time_shift_ms"] + loop * entry["loop_span_ms"]
        assert (trade["p"], trade["q"], trade["m"]) == (original["p"], original["q"], original["m"])
    # Seven consecutive frames of a three-frame recording span at least three loops, ids still contiguous.
    assert [t["t"] for t in trades] == list(range(trades[0]["t"], trades[0]["t"] + 7))
    assert [t["E"] for t in trades] == sorted(t["E"] for t in trades)


async def test_subscribe_list_and_unsubscribe_on_a_live_connection(fast):
    async with connect(f"{fast.url}/ws") as ws:
        await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@trade"], "id": 1}).decode())
        assert await receive(ws) == {"result": None, "id": 1}
        assert (await receive(ws))["s"] == "ETHUSDT"

        await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}).decode())
        while (message := await receive(ws)).get("id") != 2:
            assert message["e"] == "trade"
        assert message == {"result": ["ethusdt@trade"], "id": 2}
        _, info = await get_json(fast.port, "/replay/v1/info")
        assert info["subscriptions"]["ethusdt@trade"] >= 1

        await ws.send(orjson.dumps({"method": "UNSUBSCRIBE", "params": ["ethusdt@trade"], "id": 3}).decode())
        while (message := await receive(ws)).get("id") != 3:
            assert message["e"] == "trade"
        assert message == {"result": None, "id": 3}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1.0)


async def test_malformed_control_messages_get_binance_error_answers(fast):
    async with connect(f"{fast.url}/ws") as ws:
        await ws.send("{not json")
        assert (await receive(ws))["error"]["code"] == 3
        await ws.send(orjson.dumps({"method": "FLY", "params": [], "id": 4}).decode())
        answer = await receive(ws)
        assert answer["error"]["code"] == 2 and answer["id"] == 4
        await asyncio.sleep(1.1)
        await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": ["BTC USDT"], "id": 5}).decode())
        answer = await receive(ws)
        assert answer["error"]["code"] == 2 and answer["id"] == 5
        await ws.send(
            orjson.dumps(
                {"method": "SUBSCRIBE", "params": [f"s{i:04d}@trade" for i in range(1025)], "id": 6}
            ).decode()
        )
        answer = await receive(ws)
        assert answer["error"]["code"] == 2 and "1024" in answer["error"]["msg"]


async def test_a_sixth_message_within_one_second_closes_the_connection(fast):
    async with connect(f"{fast.url}/ws") as ws:
        for request_id in range(6):
            await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": request_id}).decode())
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_mini_tickers_arrive_every_second_with_the_last_replayed_trade_as_close(fast):
    streams = "btcusdt@trade/btcusdt@miniTicker/!miniTicker@arr"
    last_price = None
    tickers, all_market = [], []
    async with connect(f"{fast.url}/stream?streams={streams}") as ws:
        while len(tickers) < 3 or not all_market:
            frame = await receive(ws)
            if frame["stream"] == "btcusdt@trade":
                last_price = frame["data"]["p"]
            elif frame["stream"] == "btcusdt@miniTicker":
                if last_price is not None:
                    tickers.append((frame["data"], last_price))
            else:
                all_market.append(frame["data"])
    for ticker, price in tickers:
        assert ticker["e"] == "24hrMiniTicker" and ticker["s"] == "BTCUSDT"
        assert ticker["E"] % 1000 == 0
        assert ticker["c"] == price
        assert Decimal(ticker["l"]) <= Decimal(ticker["c"]) <= Decimal(ticker["h"])
        assert Decimal(ticker["l"]) <= Decimal(ticker["o"]) <= Decimal(ticker["h"])
        assert Decimal(ticker["v"]) > 0 and Decimal(ticker["q"]) > Decimal(ticker["v"])
    assert [t["E"] for t, _ in tickers] == sorted({t["E"] for t, _ in tickers})
    assert all(isinstance(batch, list) and batch for batch in all_market)
    assert {entry["s"] for batch in all_market for entry in batch} <= {"BTCUSDT", "ETHUSDT"}


async def test_info_counts_connections_and_subscriptions_and_forgets_closed_ones(fast):
    async with connect(f"{fast.url}/ws/ethusdt@trade/btcusdt@trade"):
        _, info = await get_json(fast.port, "/replay/v1/info")
        assert info["connections"] >= 1
        assert info["subscriptions"]["ethusdt@trade"] >= 1
    for _ in range(50):
        _, info = await get_json(fast.port, "/replay/v1/info")
        if info["connections"] == 0:
            break
        await asyncio.sleep(0.05)
    assert info["connections"] == 0 and info["subscriptions"] == {}
    assert info["speed"] == 20.0


async def test_health_and_refused_handshakes(fast):
    assert await get_json(fast.port, "/healthz") == (200, {"status": "ok"})
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{fast.url}/nowhere"):
            pass
    assert refused.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{fast.url}/ws/BTC-USDT@trade"):
            pass
    assert refused.value.response.status_code == 400


async def test_several_recordings_play_side_by_side_each_on_its_own_timeline(
    trade_recording, agg_trade_recording
):
    running = await start(ReplaySettings(port=0, files=(trade_recording, agg_trade_recording), speed=20.0))
    try:
        _, info = await get_json(running.port, "/replay/v1/info")
        trades_entry, aggs_entry = info["recordings"]
        assert trades_entry["file"].endswith(trade_recording.name)
        with gzip.open(agg_trade_recording) as lines:
            recorded = {
                frame["data"]["a"]: frame["data"]
                for frame in map(orjson.loads, lines)
                if frame["stream"] == "dotusdt@aggTrade"
            }
        trade_ids = [data["f"] for data in recorded.values()] + [data["l"] for data in recorded.values()]
        # Aggregate ids and the trade ids they cover must each keep increasing with no gap (a skipped
        # aggregate id tells a subscriber that trades were lost): each has its own span.
        assert aggs_entry["id_span"]["dotusdt"] == {
            "a": max(recorded) - min(recorded) + 1,
            "f": max(trade_ids) - min(trade_ids) + 1,
        }
        assert aggs_entry["loop_span_ms"] % 1000 == 0 and aggs_entry["loop_span_ms"] >= 91_000

        async with connect(f"{running.url}/stream?streams=dotusdt@aggTrade/btcusdt@trade") as ws:
            seen = {}
            while len(seen) < 2:
                frame = await receive(ws)
                seen[frame["stream"]] = frame["data"]
        agg = seen["dotusdt@aggTrade"]
        original = recorded[agg["a"]]
        assert agg["E"] - aggs_entry["time_shift_ms"] == original["E"]
        assert (agg["f"], agg["l"], agg["p"], agg["q"]) == (
            original["f"],
            original["l"],
            original["p"],
            original["q"],
        )
        assert abs(seen["btcusdt@trade"]["E"] - agg["E"]) < 60_000  # both timelines start at the present
    finally:
        await running.stop()


async def test_a_recording_that_is_not_in_the_canonical_format_is_refused_at_start(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        '{"stream": "btcusdt@trade", "data": {"e": "trade", "E": 1, "s": "BTCUSDT", "p": 1.5, "q": "1"}}\n'
    )
    with pytest.raises(RecordingError, match="broken.jsonl:1: trade field p"):
        await start(ReplaySettings(port=0, files=(broken,)))


@pytest.mark.parametrize(
    ("stream", "symbol", "error"),
    [
        ("btc-usdt@trade", "BTCUSDT", "invalid symbol in stream name"),
        ("btcusdt@trade", "BTC/USDT", "trade field s must be the symbol"),
    ],
)
def test_a_recorded_trade_of_a_symbol_the_mesh_refuses_is_refused(tmp_path, stream, symbol, error):
    broken = tmp_path / "broken.jsonl"
    data = {"e": "trade", "E": 1, "s": symbol, "t": 1, "p": "1.5", "q": "1", "T": 1}
    broken.write_bytes(orjson.dumps({"stream": stream, "data": data}) + b"\n")
    with pytest.raises(RecordingError, match=f"broken.jsonl:1: {error}"):
        load_recording(broken)


# --- REST: GET /api/v3/exchangeInfo -------------------------------------------------------------------------


async def test_exchange_info_answers_the_shipped_snapshot_gzipped_or_plain_with_the_weight_spent(fast):
    snapshot = gzip.decompress(binance.DEFAULT_EXCHANGE_INFO.read_bytes())
    url = f"http://127.0.0.1:{fast.port}{binance.EXCHANGE_INFO_PATH}"
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(url, headers={"Accept-Encoding": "gzip"}) as zipped:
            assert zipped.status == 200 and zipped.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(await zipped.read()) == snapshot
            spent = int(zipped.headers["X-MBX-USED-WEIGHT-1M"])
        async with session.get(f"{url}?symbol=BTCUSDT", headers={"Accept-Encoding": "identity"}) as plain:
            assert plain.status == 200 and "Content-Encoding" not in plain.headers
            assert await plain.read() == snapshot
            # 20 more, unless a new minute began in between.
            assert int(plain.headers["X-MBX-USED-WEIGHT-1M"]) in (spent + 20, 20)

    client = binance.BinanceRest(f"http://127.0.0.1:{fast.port}")
    try:
        listed = binance.parse_exchange_info_body(await client.exchange_info())
    finally:
        await client.close()
    assert listed == binance.load_exchange_info(binance.DEFAULT_EXCHANGE_INFO)


def statuses(body: bytes) -> dict[str, str]:
    """Symbol → status of an exchangeInfo body."""
    return {entry.symbol: entry.status for entry in binance.parse_exchange_info_body(body)}


async def test_exchange_info_is_read_again_when_its_file_is_replaced(tmp_path, agg_trade_recording):
    document = tmp_path / "exchangeInfo.json"
    replace_file(document, snapshot_with({"bccbtc": "BREAK"}))
    running = await start(ReplaySettings(port=0, files=(agg_trade_recording,), exchange_info_file=document))
    client = binance.BinanceRest(f"http://127.0.0.1:{running.port}")
    try:
        first = statuses(await client.exchange_info())
        replace_file(document, snapshot_with({"newcoinusdt": "TRADING", "btcusdt": "HALT"}))
        second = statuses(await client.exchange_info())
        replace_file(document, b'{"symbols": "not a list"}')
        with pytest.raises(binance.RestUnavailable) as broken:
            await client.exchange_info()
    finally:
        await client.close()
        await running.stop()

    assert "newcoinusdt" not in first and first["btcusdt"] == "TRADING"
    assert second["newcoinusdt"] == "TRADING" and second["btcusdt"] == "HALT"
    assert len(second) == len(first) + 1
    # A file that is no exchangeInfo body is the exchange's own failure: 500 and Binance's -1000.
    assert broken.value.status == 500 and '"code":-1000' in str(broken.value)


async def test_exchange_info_over_the_request_weight_limit_is_refused_with_retry_after(agg_trade_recording):
    # A limit below one request's weight (20) refuses every request.
    running = await start(ReplaySettings(port=0, files=(agg_trade_recording,), request_weight_per_minute=10))
    client = binance.BinanceRest(f"http://127.0.0.1:{running.port}")
    try:
        with pytest.raises(binance.RestUnavailable) as refused:
            await client.exchange_info()
    finally:
        await client.close()
        await running.stop()

    assert refused.value.status == 429
    assert 1 <= refused.value.retry_after_s <= 60
    assert '"code":-1003' in str(refused.value) and "current limit is 10 request weight per 1 MINUTE" in str(
        refused.value
    )


async def test_a_replay_whose_exchange_info_file_is_not_one_does_not_start(tmp_path, agg_trade_recording):
    document = tmp_path / "exchangeInfo.json"
    document.write_bytes(b"[]")
    with pytest.raises(ValueError, match="no symbols list"):
        await start(ReplaySettings(port=0, files=(agg_trade_recording,), exchange_info_file=document))


# --- REST: GET /api/v3/historicalTrades and GET /api/v3/aggTrades ---------------------------------------------


async def test_trade_history_answers_played_trades_by_id_with_binances_field_names_and_weights(
    agg_trade_recording,
):
    running = await start(ReplaySettings(port=0, files=(agg_trade_recording,), speed=20.0))
    base = f"http://127.0.0.1:{running.port}"
    try:
        async with connect(f"{running.url}/ws/dotusdt@aggTrade") as ws:
            streamed = [orjson.loads(await ws.recv()) for _ in range(20)]
        async with aiohttp.ClientSession() as session:
            query = {"symbol": "DOTUSDT", "fromId": str(streamed[0]["a"]), "limit": "20"}
            async with session.get(f"{base}/api/v3/aggTrades", params=query) as response:
                assert response.status == 200
                assert int(response.headers["X-MBX-USED-WEIGHT-1M"]) >= 4
                answer = await response.json()
            # The REST element of each streamed aggTrade: the same fields, without e, E and s.
            assert answer == [
                {key: data[key] for key in ("a", "p", "q", "f", "l", "T", "m", "M")} for data in streamed
            ]
            future = {"symbol": "DOTUSDT", "fromId": str(streamed[-1]["a"] + 10**9)}
            async with session.get(f"{base}/api/v3/aggTrades", params=future) as response:
                assert await response.json() == []  # not made yet
            async with session.get(
                f"{base}/api/v3/historicalTrades", params={"symbol": "DOTUSDT", "fromId": "1"}
            ) as response:
                assert response.status == 200 and await response.json() == []  # no @trade recorded
            async with session.get(
                f"{base}/api/v3/aggTrades", params={"symbol": "DOGEUSDT", "fromId": "1"}
            ) as response:
                assert response.status == 400 and (await response.json())["code"] == -1121
    finally:
        await running.stop()


async def test_a_subscriber_that_reads_slower_than_the_replay_is_dropped_and_closed_with_1008(
    trade_recording, monkeypatch
):
    monkeypatch.setattr(replay_server, "SEND_BUFFER_BYTES", 256 * 1024)
    running = await start(ReplaySettings(port=0, files=(trade_recording,), speed=200.0))

    async def connections_are(count: int) -> bool:
        return (await get_json(running.port, "/replay/v1/info"))[1]["connections"] == count

    # A small receive buffer, and max_queue=1: the client stops reading its socket while a message waits, so
    # the kernel's buffers fill soon, then the replay's own.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", running.port))
    sock.setblocking(False)
    try:
        async with connect(f"{running.url}/stream?streams=btcusdt@trade", max_queue=1, sock=sock) as ws:
            await receive(ws)  # the replay writes to it: it is subscribed
            await eventually(lambda: connections_are(0), 60, "the slow subscriber dropped")
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    finally:
        await running.stop()
