"""Trade history for skipped ids: the adapter's REST formats (crypto_mesh/binance/history.py, rest.py),
socket_proxy's request-weight budget (socket_proxy/history.py), the replay exchange's answers from its recording
(launcher/replay/history.py, rest.py) and the aggregator's fill planning (aggregator/backfill.py). Pure."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from aggregator.backfill import filling_run, next_page, plan_fill
from crypto_mesh.binance import (
    AGG_TRADE,
    TRADE,
    MalformedFrame,
    Trade,
    history_element,
    history_frames,
    parse_trade_frame,
    trade_history_url,
)
from launcher.replay.history import PlayPosition, TradeHistory
from launcher.replay.recording import Timeline, load_recording
from launcher.replay.rest import HistoryQueryError, history_query
from socket_proxy.history import BudgetSpent, WeightBudget

#: Binance's documented answers ("Old trade lookup", "Compressed/Aggregate trades list").
HISTORICAL_TRADES_BODY = (
    b'[{"id": 28457, "price": "4.00000100", "qty": "12.00000000", "quoteQty": "48.000012",'
    b' "time": 1499865549590, "isBuyerMaker": true, "isBestMatch": true}]'
)
AGG_TRADES_BODY = (
    b'[{"a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781, "T": 1498793709153,'
    b' "m": true, "M": true}]'
)


def test_historical_trades_become_the_trade_streams_frames():
    [frame] = history_frames(TRADE, "bnbbtc", HISTORICAL_TRADES_BODY)

    assert orjson.loads(frame) == {
        "stream": "bnbbtc@trade",
        "data": {
            "e": "trade",
            "E": 1499865549590,
            "s": "BNBBTC",
            "t": 28457,
            "p": "4.00000100",
            "q": "12.00000000",
            "T": 1499865549590,
            "m": True,
            "M": True,
        },
    }
    assert parse_trade_frame(frame) == Trade(
        "bnbbtc", 28457, Decimal("4.000001"), Decimal("12"), 1499865549590
    )


def test_agg_trades_become_the_agg_trade_streams_frames_and_back():
    [frame] = history_frames(AGG_TRADE, "bnbbtc", AGG_TRADES_BODY)
    data = orjson.loads(frame)["data"]

    assert (data["e"], data["s"], data["a"]) == ("aggTrade", "BNBBTC", 26129)
    assert data["E"] == data["T"] == 1498793709153
    assert parse_trade_frame(frame).trade_id == 26129
    assert [history_element(AGG_TRADE, data)] == orjson.loads(AGG_TRADES_BODY)
    trade_data = orjson.loads(history_frames(TRADE, "bnbbtc", HISTORICAL_TRADES_BODY)[0])["data"]
    expected = {k: v for k, v in orjson.loads(HISTORICAL_TRADES_BODY)[0].items() if k != "quoteQty"}
    assert history_element(TRADE, trade_data) == expected


@pytest.mark.parametrize("body", [b"{}", b"not json", b'[{"price": "1"}]', b"[1]"])
def test_a_body_that_is_not_trade_history_is_refused(body):
    with pytest.raises(MalformedFrame):
        history_frames(TRADE, "btcusdt", body)


def test_history_urls_name_the_route_of_the_streams_kind():
    assert str(trade_history_url("https://api.binance.com", TRADE, "btcusdt", 5, 1000)) == (
        "https://api.binance.com/api/v3/historicalTrades?symbol=BTCUSDT&fromId=5&limit=1000"
    )
    assert trade_history_url("http://127.0.0.1:9/", AGG_TRADE, "dotusdt", 0, 1).path == "/api/v3/aggTrades"
    for limit in (0, 1001):
        with pytest.raises(ValueError):
            trade_history_url("https://api.binance.com", TRADE, "btcusdt", 5, limit)


def test_the_proxys_budget_refuses_beyond_its_minute_and_while_the_exchange_asked_to_wait():
    budget = WeightBudget(50)
    minute = 28_000_000 * 60.0
    budget.spend(25, minute + 1)
    budget.spend(25, minute + 2)
    with pytest.raises(BudgetSpent) as refused:
        budget.spend(4, minute + 30)
    assert refused.value.retry_after_s == 30
    budget.spend(4, minute + 60)  # a new minute

    budget.wait(10, minute + 61)  # a 429 with Retry-After: 10
    with pytest.raises(BudgetSpent):
        budget.spend(4, minute + 70)
    budget.spend(4, minute + 71)
    assert budget.used == 8


def replay_history(recording_path):
    recording = load_recording(recording_path)
    timeline = Timeline.starting_at(recording, 1_800_000_000_000)
    position = PlayPosition()
    return recording, timeline, position, TradeHistory([(timeline, position)])


def test_the_replay_answers_only_trades_already_played_with_replayed_ids_and_times(trade_recording):
    recording, timeline, position, history = replay_history(trade_recording)
    frames = [frame for frame in recording.frames if frame.stream == "btcusdt@trade"]
    first_id = frames[0].data["t"]
    assert history.elements(TRADE, "btcusdt", first_id, 10) == []  # nothing played yet

    position.index = recording.frames.index(frames[5]) + 1  # six trades played
    answer = history.elements(TRADE, "btcusdt", first_id + 2, 1000)
    assert [element["id"] for element in answer] == [first_id + 2, first_id + 3, first_id + 4, first_id + 5]
    assert answer[0]["time"] == frames[2].data["T"] + timeline.time_shift_ms
    assert history.elements(AGG_TRADE, "btcusdt", first_id, 10) == []  # not recorded

    # In the second loop ids go on from the first loop's last, and times by the loop's span.
    position.loop, position.index = 1, recording.frames.index(frames[1]) + 1
    span = recording.id_span["btcusdt"]["t"]
    [element] = history.elements(TRADE, "btcusdt", first_id + span + 1, 10)
    assert element["id"] == first_id + span + 1
    assert element["time"] == frames[1].data["T"] + timeline.shift_ms(1)
    assert len(history.elements(TRADE, "btcusdt", first_id + span - 3, 10)) == 5  # across the loop


def test_replayed_history_frames_equal_the_replayed_stream_frames(agg_trade_recording):
    recording, timeline, position, history = replay_history(agg_trade_recording)
    position.loop = 1
    frames = [timeline.shifted(f, 0) for f in recording.frames if f.stream == "dotusdt@aggTrade"][:300]
    body = orjson.dumps(history.elements(AGG_TRADE, "dotusdt", frames[0]["a"], 300))

    fetched = [parse_trade_frame(raw) for raw in history_frames(AGG_TRADE, "dotusdt", body)]
    assert fetched == [parse_trade_frame(orjson.dumps(data)) for data in frames]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("fromId=1", -1102),
        ("symbol=ETHBTC&fromId=1", -1121),
        ("symbol=BTCUSDT", -1102),
        ("symbol=BTCUSDT&fromId=-1", -1100),
        ("symbol=BTCUSDT&fromId=1&limit=1001", -1100),
        ("symbol=BTCUSDT&fromId=1&limit=x", -1100),
    ],
)
def test_the_replay_refuses_history_queries_as_binance_does(query, code):
    with pytest.raises(HistoryQueryError) as refused:
        history_query(query, {"btcusdt"})
    assert refused.value.code == code


def test_a_history_query_reads_symbol_from_id_and_limit():
    assert history_query("symbol=BTCUSDT&fromId=7", {"btcusdt"}) == ("btcusdt", 7, 500)
    assert history_query("symbol=btcusdt&fromId=7&limit=1000", {"btcusdt"}) == ("btcusdt", 7, 1000)


def test_a_fill_asks_for_the_first_skipped_ids_up_to_its_cap_page_by_page():
    fill = plan_fill(next_id=10_000, skipped=9_000, max_ids=2_500)
    assert (fill.first_id, fill.wanted_id, fill.last_id) == (1_000, 3_499, 9_999)
    assert plan_fill(5, 0, 100) is None and plan_fill(5, 3, 0) is None
    assert [next_page(1_000, 3_499), next_page(3_000, 3_499), next_page(3_500, 3_499)] == [1_000, 500, 0]


def test_only_a_run_of_consecutive_ids_from_the_first_fills_a_gap():
    def trade(trade_id):
        return Trade("btcusdt", trade_id, 1, 1, trade_id)

    fetched = [trade(i) for i in (7, 3, 2, 4, 4, 6, 1)]
    assert [t.trade_id for t in filling_run(fetched, 2, 6)] == [2, 3, 4]
    assert filling_run(fetched, 5, 6) == []
