"""One-second windows (aggregator.secondstat): every second of the shipped recordings; the closing rules; gaps
filled from the exchange's history, and streams resumed after the last second published
(aggregator.intake)."""

from __future__ import annotations

import gzip
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from aggregator.backfill import ResumePoint, resumes
from aggregator.intake import TradeIntake
from aggregator.secondstat import SecondStat, SecondWindows
from aggregator.store import resume_point
from crypto_mesh.binance import Trade, parse_trade_frame

FAR_FUTURE_MS = 2**62


def expected_seconds(recording: Path, id_field: str) -> dict[tuple[str, int], dict]:
    """Straight from the file, independently of the aggregator: per (symbol, second) the price of the highest
    id, the price of the lowest id, high, low, Σq, Σp×q, count."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    with gzip.open(recording) as lines:
        for line in lines:
            data = orjson.loads(line)["data"]
            groups[(data["s"].lower(), data["T"] // 1000 * 1000)].append(data)
    expected = {}
    for key, trades in groups.items():
        by_id = sorted(trades, key=lambda d: d[id_field])
        prices = [Decimal(d["p"]) for d in trades]
        expected[key] = {
            "p": Decimal(by_id[-1]["p"]),
            "i": by_id[-1][id_field],
            "o": Decimal(by_id[0]["p"]),
            "h": max(prices),
            "l": min(prices),
            "v": sum((Decimal(d["q"]) for d in trades), Decimal(0)),
            "q": sum((Decimal(d["p"]) * Decimal(d["q"]) for d in trades), Decimal(0)),
            "n": len(trades),
        }
    return expected


def replay(recording: Path) -> list[SecondStat]:
    windows = SecondWindows(grace_ms=1000)
    stats = []
    with gzip.open(recording) as lines:
        for line in lines:
            stats.extend(windows.add(parse_trade_frame(line)))
    stats.extend(windows.close_until(FAR_FUTURE_MS))
    assert windows.late == 0
    return stats


def as_expected(stat: SecondStat) -> dict:
    return {
        "p": stat.close,
        "i": stat.close_id,
        "o": stat.open,
        "h": stat.high,
        "l": stat.low,
        "v": stat.volume,
        "q": stat.quote_volume,
        "n": stat.count,
    }


#: Each shipped recording with the id field of its trade stream kind (``t`` of @trade, ``a`` of @aggTrade).
BOTH_RECORDINGS = pytest.mark.parametrize(
    ("recording_fixture", "id_field"), [("trade_recording", "t"), ("agg_trade_recording", "a")]
)


def btcusdt_case(recording: Path, id_field: str) -> tuple[dict[tuple[str, int], dict], list[bytes]]:
    """The independent computation of ``recording``'s seconds (:func:`expected_seconds`) and its raw btcusdt
    frames in order."""
    with gzip.open(recording) as lines:
        frames = [line.rstrip(b"\n") for line in lines if b'"btcusdt@' in line]
    return expected_seconds(recording, id_field), frames


@BOTH_RECORDINGS
def test_every_second_of_the_recording_matches_an_independent_computation(
    request, recording_fixture, id_field
):
    recording = request.getfixturevalue(recording_fixture)
    expected = expected_seconds(recording, id_field)

    stats = replay(recording)

    produced = {(stat.symbol, stat.second_ms): as_expected(stat) for stat in stats}
    assert len(produced) == len(stats), "a second was published twice"
    assert produced == expected
    assert len(expected) > 100


def test_each_symbols_seconds_come_out_in_order_once(trade_recording):
    stats = replay(trade_recording)
    for symbol in ("btcusdt", "ethusdt"):
        seconds = [stat.second_ms for stat in stats if stat.symbol == symbol]
        assert seconds == sorted(set(seconds))


def trade(trade_id: int, price: str, time_ms: int, quantity: str = "1", symbol: str = "btcusdt") -> Trade:
    return Trade(symbol, trade_id, Decimal(price), Decimal(quantity), time_ms)


def test_close_is_the_price_of_the_highest_id_not_the_last_to_arrive():
    windows = SecondWindows(grace_ms=0)
    windows.add(trade(11, "101", 5_000_100))
    windows.add(trade(12, "102", 5_000_200))
    windows.add(trade(10, "100", 5_000_300))  # arrives last, has the lowest id

    [stat] = windows.add(trade(13, "103", 5_001_000))

    assert (stat.close, stat.close_id, stat.open) == (Decimal("102"), 12, Decimal("100"))
    assert (stat.high, stat.low, stat.count) == (Decimal("102"), Decimal("100"), 3)


def test_sums_are_exact_and_vwap_is_quote_over_base_volume():
    windows = SecondWindows(grace_ms=0)
    windows.add(trade(1, "61837.63000000", 1_000, "0.02000000"))
    windows.add(trade(2, "61837.64000000", 1_001, "0.00012000"))

    [stat] = windows.close_until(FAR_FUTURE_MS)

    assert stat.volume == Decimal("0.02012000")
    assert stat.quote_volume == Decimal("61837.63") * Decimal("0.02") + Decimal("61837.64") * Decimal(
        "0.00012"
    )
    assert stat.vwap == (stat.quote_volume / stat.volume).quantize(Decimal("1E-8"))
    assert orjson.loads(stat_json(stat)) == {
        "s": "btcusdt",
        "t": 1000,
        "p": "61837.64000000",
        "o": "61837.63000000",
        "h": "61837.64000000",
        "l": "61837.63000000",
        "v": "0.02012000",
        "q": "1244.1731168000000000",
        "n": 2,
        "vwap": "61837.63005964",
        "i": 2,
    }


def stat_json(stat: SecondStat) -> bytes:
    from crypto_mesh.jsonutil import dumps

    return dumps(stat.to_json())


def test_a_trade_for_a_closed_second_is_late_and_never_republishes_it():
    windows = SecondWindows(grace_ms=0)
    windows.add(trade(1, "100", 1_500))
    [first] = windows.add(trade(3, "102", 2_100))

    assert windows.add(trade(2, "999", 1_900)) == []  # second 1000 is closed
    assert windows.add(trade(0, "999", 500)) == []  # so is every earlier one

    assert windows.late == 2
    assert first.close == Decimal("100")
    [second] = windows.close_until(FAR_FUTURE_MS)
    assert (second.second_ms, second.close) == (2_000, Decimal("102"))


def test_wall_clock_closes_a_window_grace_ms_after_its_second_ends():
    windows = SecondWindows(grace_ms=300)
    windows.add(trade(1, "100", 7_250), received_ms=7_260)  # the stream runs 10 ms behind the exchange

    assert windows.close_until(8_309) == []
    [stat] = windows.close_until(8_310)

    assert stat.second_ms == 7_000
    assert windows.close_until(FAR_FUTURE_MS) == []
    assert windows.add(trade(2, "101", 7_999)) == [] and windows.late == 1


def test_wall_clock_is_read_through_the_streams_clock_offset():
    # A recording replayed years later: closing on the raw wall clock would cut every second after one trade.
    windows = SecondWindows(grace_ms=1000)
    recorded_ms = 1_723_161_255_342
    local_ms = 1_800_000_000_000
    windows.add(trade(1, "100", recorded_ms), received_ms=local_ms)

    assert windows.close_until(local_ms + 1) == []
    assert windows.add(trade(2, "101", recorded_ms + 100), received_ms=local_ms + 100) == []
    [stat] = windows.close_until(local_ms + 100 + (1_723_161_256_000 - recorded_ms - 100) + 1000)
    assert (stat.count, stat.close) == (2, Decimal("101"))


def test_seconds_without_trades_publish_nothing():
    windows = SecondWindows(grace_ms=0)
    windows.add(trade(1, "100", 1_000))

    stats = windows.add(trade(2, "101", 9_000))

    assert [stat.second_ms for stat in stats] == [1_000]
    assert [stat.second_ms for stat in windows.close_until(FAR_FUTURE_MS)] == [9_000]
    assert windows.close_until(FAR_FUTURE_MS) == []


def test_symbols_have_independent_windows_and_forget_prunes_one():
    windows = SecondWindows(grace_ms=0)
    windows.add(trade(1, "100", 1_000, symbol="btcusdt"))
    windows.add(trade(1, "5", 3_000, symbol="ethusdt"))

    assert (
        windows.add(trade(2, "101", 1_500, symbol="btcusdt")) == []
    )  # ethusdt's later second closes nothing
    windows.forget("ethusdt")

    assert windows.open_symbols() == ["btcusdt"] and len(windows) == 1
    [stat] = windows.close_until(FAR_FUTURE_MS)
    assert (stat.symbol, stat.count) == ("btcusdt", 2)


def test_a_trade_delivered_twice_counts_once():
    windows = SecondWindows(grace_ms=0)
    windows.add(trade(1, "100", 1_000, "2"))
    windows.add(trade(2, "101", 1_100, "3"))

    assert windows.add(trade(1, "100", 1_000, "2")) == []

    [stat] = windows.close_until(FAR_FUTURE_MS)
    assert (stat.count, stat.volume, windows.duplicates) == (2, Decimal("5"), 1)


def test_a_gap_between_two_seconds_marks_both_incomplete_and_the_next_seconds_whole():
    windows = SecondWindows(grace_ms=0)
    windows.add(trade(1, "100", 1_000))
    windows.add(trade(2, "101", 1_400))  # ids 3..6 are skipped: they traded between 1.4 s and 3.2 s

    [first] = windows.add(trade(7, "107", 3_200), after_gap=True)  # closes second 1, marked incomplete
    assert (first.second_ms, first.count, first.incomplete) == (1_000, 2, True)
    assert first.to_json()["x"] is True
    assert windows.add(trade(8, "108", 3_900)) == []
    [third] = windows.add(trade(9, "109", 4_100))  # closes second 3, marked incomplete
    assert (third.second_ms, third.count, third.incomplete) == (3_000, 2, True)

    [last] = windows.close_until(FAR_FUTURE_MS)
    assert (last.second_ms, last.close, last.count, last.incomplete) == (4_000, Decimal("109"), 1, False)
    assert "x" not in last.to_json()
    assert windows.incomplete == 2


def test_a_gap_inside_one_second_marks_that_second_incomplete():
    windows = SecondWindows(grace_ms=0)
    windows.add(trade(1, "100", 1_000))
    windows.add(trade(5, "105", 1_600), after_gap=True)  # ids 2..4 of the same second are missing

    [stat] = windows.close_until(FAR_FUTURE_MS)
    assert (stat.count, stat.incomplete, windows.incomplete) == (2, True, 1)
    assert windows.add(trade(6, "106", 1_700)) == [] and windows.late == 1


def second_of(raw: bytes) -> int:
    return orjson.loads(raw)["data"]["T"] // 1000 * 1000


@BOTH_RECORDINGS
def test_trades_lost_to_a_reconnect_leave_whole_seconds_and_marked_ones(request, recording_fixture, id_field):
    """A run of frames lost from the middle of the recording, as when socket_proxy ends a subscriber that fell
    behind, with no fill: every SecondStat published whole still equals the independent computation from the
    whole recording, the two seconds around the gap are published marked incomplete, and the seconds that
    lost every trade are not published."""
    expected, frames = btcusdt_case(request.getfixturevalue(recording_fixture), id_field)
    lost = frames[len(frames) // 3 : len(frames) // 3 + 250]
    published: list[SecondStat] = []
    intake = TradeIntake(SecondWindows(grace_ms=1000), published.append)

    intake.on_frames("btcusdt", frames[: len(frames) // 3], received_ms=None)
    intake.on_frames("btcusdt", frames[len(frames) // 3 + 250 :], received_ms=None)
    intake.close_until(FAR_FUTURE_MS)

    around = {second_of(frames[len(frames) // 3 - 1]), second_of(frames[len(frames) // 3 + 250])}
    touched = {second_of(raw) for raw in lost} | around
    whole = {key: fields for key, fields in expected.items() if key[0] == "btcusdt" and key[1] not in touched}
    published_whole = [stat for stat in published if not stat.incomplete]
    assert {(stat.symbol, stat.second_ms): as_expected(stat) for stat in published_whole} == whole
    assert {stat.second_ms for stat in published if stat.incomplete} == around
    assert intake.counters.gaps == 1 and intake.counters.incomplete == len(around)


def trade_frame(trade_id: int, time_ms: int) -> bytes:
    """A raw ``btcusdt@trade`` combined-stream frame (Binance spot "Trade Streams") at price 100."""
    data = {"e": "trade", "E": time_ms, "s": "BTCUSDT", "t": trade_id, "p": "100", "q": "1", "T": time_ms}
    return orjson.dumps({"stream": "btcusdt@trade", "data": data})


class FakeHistory:
    """The intake's ``backfill`` port in memory: records each fill asked for; the test answers it."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int, int]] = []

    def __call__(self, symbol: str, first_id: int, wanted_id: int) -> None:
        self.asked.append((symbol, first_id, wanted_id))


@BOTH_RECORDINGS
def test_trades_lost_to_a_reconnect_and_fetched_back_leave_every_second_whole(
    request, recording_fixture, id_field
):
    expected, frames = btcusdt_case(request.getfixturevalue(recording_fixture), id_field)
    cut = len(frames) // 3
    lost = frames[cut : cut + 250]
    published: list[SecondStat] = []
    history = FakeHistory()
    intake = TradeIntake(SecondWindows(grace_ms=1000), published.append, max_backfill_ids=5000)
    intake.backfill = history

    intake.on_frames("btcusdt", frames[:cut], received_ms=None)
    intake.on_frames("btcusdt", frames[cut + 250 : cut + 400], received_ms=None)  # held while the fill runs
    first_lost = orjson.loads(lost[0])["data"][id_field]
    assert history.asked == [("btcusdt", first_lost, first_lost + 249)]
    intake.on_fill("btcusdt", first_lost, reversed(lost))  # any order
    intake.on_frames("btcusdt", frames[cut + 400 :], received_ms=None)
    intake.close_until(FAR_FUTURE_MS)

    assert {(stat.symbol, stat.second_ms): as_expected(stat) for stat in published} == {
        key: fields for key, fields in expected.items() if key[0] == "btcusdt"
    }
    assert not any(stat.incomplete for stat in published)
    counters = intake.counters
    assert (counters.backfills, counters.backfills_whole, counters.backfilled, counters.incomplete) == (
        1,
        1,
        250,
        0,
    )


def test_a_fill_that_stops_short_marks_the_seconds_still_lacking_trades():
    published: list[SecondStat] = []
    intake = TradeIntake(SecondWindows(grace_ms=0), published.append, max_backfill_ids=100)
    intake.backfill = FakeHistory()

    intake.on_frames("btcusdt", [trade_frame(1, 1_000)], received_ms=None)
    intake.on_frames(
        "btcusdt", [trade_frame(6, 3_100), trade_frame(7, 4_200)], received_ms=None
    )  # ids 2..5 skipped
    assert intake.backfill.asked == [("btcusdt", 2, 5)]
    assert published == []  # second 1 waits for the fill
    # Only ids 2 and 3 came back (4 is missing, 5 came without it): second 1 gets 2, second 2 lacks 4 and 5.
    intake.on_fill("btcusdt", 2, [trade_frame(2, 1_500), trade_frame(3, 2_100), trade_frame(5, 2_900)])
    intake.close_until(FAR_FUTURE_MS)

    assert [(s.second_ms, s.count, s.incomplete) for s in published] == [
        (1_000, 2, False),
        (2_000, 1, True),
        (3_000, 1, True),
        (4_000, 1, False),
    ]
    counters = intake.counters
    assert (counters.backfills_partial, counters.backfilled, counters.incomplete) == (1, 2, 2)


def test_the_clock_closes_a_window_waiting_for_a_late_fill_marked_incomplete():
    published: list[SecondStat] = []
    intake = TradeIntake(SecondWindows(grace_ms=1_000), published.append, max_backfill_ids=100)
    intake.backfill = FakeHistory()

    def frame(trade_id: int, time_ms: int) -> bytes:
        data = {
            "e": "aggTrade",
            "E": time_ms,
            "s": "BTCUSDT",
            "a": trade_id,
            "p": "1",
            "q": "1",
            "T": time_ms,
        }
        return orjson.dumps({"stream": "btcusdt@aggTrade", "data": data})

    intake.on_frames("btcusdt", [frame(1, 1_000)], received_ms=1_000)
    intake.on_frames("btcusdt", [frame(3, 1_900)], received_ms=1_900)  # id 2 skipped
    intake.close_until(3_000)  # the grace has passed, the fill has not come
    intake.on_fill("btcusdt", 2, [frame(2, 1_500)])  # too late for second 1
    intake.close_until(FAR_FUTURE_MS)

    assert [(s.second_ms, s.count, s.incomplete) for s in published] == [(1_000, 1, True)]
    assert (intake.counters.incomplete, intake.counters.late) == (1, 2)


def test_after_an_interruption_the_next_trade_decides_whether_the_open_second_was_whole():
    lossless, lossy = SecondWindows(grace_ms=0), SecondWindows(grace_ms=0)
    for windows in (lossless, lossy):
        windows.add(trade(1, "100", 1_000))
        windows.interrupt("btcusdt")

    lossless.add(trade(2, "101", 1_500))  # the stream came back and no id was skipped
    assert lossy.add(trade(5, "105", 1_500), after_gap=True) == []  # ids 2..4 are missing

    [stat] = lossless.close_until(FAR_FUTURE_MS)
    assert (stat.second_ms, stat.count, stat.close, lossless.incomplete) == (1_000, 2, Decimal("101"), 0)
    [marked] = lossy.close_until(FAR_FUTURE_MS)
    assert (marked.count, marked.incomplete, lossy.incomplete) == (2, True, 1)


def test_a_second_the_clock_closes_while_its_stream_is_interrupted_is_marked_incomplete():
    windows = SecondWindows(grace_ms=1_000)
    windows.add(trade(1, "100", 1_000), received_ms=1_000)
    windows.add(trade(2, "101", 1_300), received_ms=1_300)
    windows.interrupt("btcusdt")

    [marked] = windows.close_until(3_000)
    assert (marked.count, marked.incomplete, windows.incomplete) == (2, True, 1)
    # The stream is back: a trade of a later second, with no gap, is published as usual.
    windows.add(trade(3, "102", 3_100), received_ms=3_100)
    [stat] = windows.close_until(FAR_FUTURE_MS)
    assert (stat.second_ms, stat.count, stat.incomplete) == (3_000, 1, False)


def test_an_interruption_without_an_open_window_changes_nothing():
    windows = SecondWindows(grace_ms=0)
    windows.interrupt("btcusdt")
    windows.add(trade(1, "100", 1_000))
    [stat] = windows.close_until(FAR_FUTURE_MS)
    assert stat.count == 1 and windows.incomplete == 0


# Resumed streams: a stream that starts again (a restarted aggregator, or a replica taking a symbol over)
# resumes after the last second published on Redis (aggregator.backfill.resumes, TradeIntake.resume_after).


@BOTH_RECORDINGS
def test_a_restarted_stream_fills_the_seconds_since_the_last_published_one_and_repeats_none(
    request, recording_fixture, id_field
):
    expected, frames = btcusdt_case(request.getfixturevalue(recording_fixture), id_field)
    cut = len(frames) // 3
    # The aggregator streaming until the cut dies: its open window is never published.
    before: list[SecondStat] = []
    TradeIntake(SecondWindows(grace_ms=1000), before.append).on_frames(
        "btcusdt", frames[:cut], received_ms=None
    )
    last = before[-1]
    # Its successor's stream starts 250 frames later, mid-second.
    after: list[SecondStat] = []
    history = FakeHistory()
    intake = TradeIntake(SecondWindows(grace_ms=1000), after.append, max_backfill_ids=5000)
    intake.backfill = history
    intake.resume_after("btcusdt", ResumePoint(last.second_ms, last.close_id))
    first_id = orjson.loads(frames[cut + 250])["data"][id_field]

    intake.on_frames("btcusdt", frames[cut + 250 : cut + 400], received_ms=None)
    assert history.asked == [("btcusdt", last.close_id + 1, first_id - 1)]
    wanted = [raw for raw in frames if last.close_id < orjson.loads(raw)["data"][id_field] < first_id]
    intake.on_fill("btcusdt", last.close_id + 1, reversed(wanted))  # any order
    intake.on_frames("btcusdt", frames[cut + 400 :], received_ms=None)
    intake.close_until(FAR_FUTURE_MS)

    assert {stat.second_ms for stat in before}.isdisjoint(stat.second_ms for stat in after)
    assert {(stat.symbol, stat.second_ms): as_expected(stat) for stat in before + after} == {
        key: fields for key, fields in expected.items() if key[0] == "btcusdt"
    }
    assert not any(stat.incomplete for stat in after)
    counters = intake.counters
    assert (counters.resumed, counters.first_windows_skipped, counters.gaps, counters.backfills_whole) == (
        1,
        0,
        0,
        1,
    )
    assert counters.backfilled == len(wanted)


def test_a_stream_continuing_right_after_the_last_id_publishes_its_first_window_without_fetching():
    published: list[SecondStat] = []
    intake = TradeIntake(SecondWindows(grace_ms=1000), published.append)  # no history port at all
    intake.resume_after("btcusdt", ResumePoint(second_ms=1_000, close_id=9))

    intake.on_frames(
        "btcusdt", [trade_frame(10, 2_000), trade_frame(11, 2_500), trade_frame(12, 3_000)], received_ms=None
    )
    intake.close_until(FAR_FUTURE_MS)

    assert [(stat.second_ms, stat.count, stat.incomplete) for stat in published] == [
        (2_000, 2, False),
        (3_000, 1, False),
    ]
    assert (intake.counters.resumed, intake.counters.first_windows_skipped) == (1, 0)


@pytest.mark.parametrize(
    ("first", "why"),
    [
        ((5, 2_000), "ids behind the point: a replay started again"),
        ((9, 2_000), "the point's own last trade"),
        ((10, 1_500), "a trade of the published second itself"),
        ((5011, 9_000), "more ids in between than a fill fetches"),
    ],
)
def test_a_stream_that_does_not_continue_from_the_point_skips_its_first_window(first, why):
    published: list[SecondStat] = []
    history = FakeHistory()
    intake = TradeIntake(SecondWindows(grace_ms=1000), published.append, max_backfill_ids=5000)
    intake.backfill = history
    intake.resume_after("btcusdt", ResumePoint(second_ms=1_000, close_id=9))
    trade_id, time_ms = first

    intake.on_frames("btcusdt", [trade_frame(trade_id, time_ms)], received_ms=None)
    intake.on_frames("btcusdt", [trade_frame(trade_id + 1, time_ms + 1_000)], received_ms=None)
    intake.close_until(FAR_FUTURE_MS)

    assert history.asked == [], why
    assert [stat.second_ms for stat in published] == [time_ms - time_ms % 1000 + 1_000], why
    assert (intake.counters.resumed, intake.counters.first_windows_skipped) == (0, 1), why


def test_a_resumed_streams_short_fill_publishes_no_incomplete_second_and_leaves_out_what_it_lacks():
    published: list[SecondStat] = []
    history = FakeHistory()
    intake = TradeIntake(SecondWindows(grace_ms=1000), published.append, max_backfill_ids=100)
    intake.backfill = history
    intake.resume_after("btcusdt", ResumePoint(second_ms=1_000, close_id=9))

    intake.on_frames(
        "btcusdt", [trade_frame(16, 4_100), trade_frame(17, 4_600), trade_frame(18, 5_000)], received_ms=None
    )
    assert history.asked == [("btcusdt", 10, 15)]
    # 10 and 11 come back (second 2 whole, closed by 12), 12 too, 13 does not: seconds 3 and 4 lack trades.
    intake.on_fill(
        "btcusdt",
        10,
        [trade_frame(10, 2_000), trade_frame(11, 2_900), trade_frame(12, 3_000), trade_frame(14, 3_500)],
    )
    intake.close_until(FAR_FUTURE_MS)

    assert [(stat.second_ms, stat.count, stat.incomplete) for stat in published] == [
        (2_000, 2, False),
        (5_000, 1, False),
    ]
    counters = intake.counters
    assert (counters.resumed, counters.backfills_partial, counters.incomplete) == (1, 1, 0)


def test_untracking_before_the_first_trade_forgets_the_point():
    published: list[SecondStat] = []
    intake = TradeIntake(SecondWindows(grace_ms=1000), published.append)
    intake.resume_after("btcusdt", ResumePoint(second_ms=1_000, close_id=9))
    intake.forget("btcusdt")

    intake.on_frames(
        "btcusdt", [trade_frame(3, 500), trade_frame(4, 900)], received_ms=None
    )  # a new follow, anew
    intake.close_until(FAR_FUTURE_MS)

    assert [stat.second_ms for stat in published] == [0]
    assert (intake.counters.resumed, intake.counters.first_windows_skipped) == (0, 0)


def test_resumes_needs_a_later_id_a_later_second_and_at_most_max_ids_between():
    point = ResumePoint(second_ms=1_000, close_id=9)

    assert resumes(point, trade(10, "100", 2_000), max_ids=0)
    assert resumes(point, trade(15, "100", 2_000), max_ids=5)
    assert not resumes(point, trade(16, "100", 2_000), max_ids=5)
    assert not resumes(point, trade(10, "100", 1_999), max_ids=5)
    assert not resumes(point, trade(9, "100", 2_000), max_ids=5)


def test_trades_of_seconds_before_a_resume_are_late():
    windows = SecondWindows(grace_ms=1000)
    windows.resume("btcusdt", 2_000)

    assert windows.add(trade(10, "100", 1_999)) == [] and windows.late == 1
    assert windows.add(trade(11, "100", 2_000)) == [] and windows.late == 1
    assert [stat.second_ms for stat in windows.close_until(FAR_FUTURE_MS)] == [2_000]


@pytest.mark.parametrize(
    ("value", "point"),
    [
        (b'{"s":"btcusdt","t":1000,"p":"1","i":9,"x":true}', ResumePoint(1_000, 9)),
        (None, None),
        (b"not json", None),
        (b"[1,2]", None),
        (b'{"t":1000}', None),
        (b'{"t":"1000","i":9}', None),
    ],
)
def test_the_resume_point_is_read_from_the_price_keys_secondstat_json(value, point):
    assert resume_point(value) == point
