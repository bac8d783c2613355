"""Which symbols an aggregator replica streams (aggregator.ownership): partitions of the follow topic, the
assignments of the replicas' consumer group, follower changes and resyncs; and the taken-over symbol's first
window, which is not published (aggregator.intake)."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from aggregator.intake import TradeIntake
from aggregator.ownership import MINI_TICKER_PARTITION, Ownership, Plan, partition_of
from aggregator.secondstat import SecondStat, SecondWindows

PARTITIONS = 6
SYMBOLS = [f"{base}usdt" for base in ("btc", "eth", "bnb", "sol", "xrp", "ada", "doge", "dot", "ltc", "trx")]


def split(partitions: int = PARTITIONS) -> tuple[frozenset[int], frozenset[int]]:
    """Two replicas' halves of the partitions, as a range assignor gives them."""
    return frozenset(range(partitions // 2)), frozenset(range(partitions // 2, partitions))


def test_a_symbols_partition_is_the_one_the_producer_sends_its_notices_to():
    partitioner = DefaultPartitioner()
    partitions = list(range(PARTITIONS))
    for symbol in SYMBOLS + ["1000satsusdt", "a", "btc" * 7]:
        assert partition_of(symbol, PARTITIONS) == partitioner(symbol.encode(), partitions, partitions)


def test_two_replicas_with_the_partitions_split_stream_each_followed_symbol_exactly_once():
    first, second = Ownership(PARTITIONS), Ownership(PARTITIONS)
    mine, theirs = split()

    plans = [first.assign(mine, SYMBOLS), second.assign(theirs, SYMBOLS)]

    assert set(plans[0].start).isdisjoint(plans[1].start)
    assert set(plans[0].start) | set(plans[1].start) == set(SYMBOLS)
    assert plans[0].start and plans[1].start
    assert first.streamed == set(plans[0].start) and second.streamed == set(plans[1].start)
    assert all(plan.taken_over and not plan.stop for plan in plans)
    # The all-market mini-tickers: one replica only, the owner of partition 0.
    assert [plan.mini_tickers for plan in plans] == [True, False]


def test_before_its_first_assignment_a_replica_streams_nothing():
    ownership = Ownership(PARTITIONS)

    assert ownership.change("btcusdt", True) == Plan()
    assert not ownership.owns("btcusdt") and ownership.streamed == set()


def test_a_replica_joining_takes_its_share_and_the_other_stops_exactly_that_share():
    first, second = Ownership(PARTITIONS), Ownership(PARTITIONS)
    first.assign(range(PARTITIONS), SYMBOLS)
    mine, theirs = split()

    kept = first.assign(mine, SYMBOLS)
    taken = second.assign(theirs, SYMBOLS)

    # What the first keeps goes on without a break (nothing to start again); it stops what the second starts.
    assert kept.start == ()
    assert set(kept.stop) == set(taken.start) == {s for s in SYMBOLS if partition_of(s, PARTITIONS) in theirs}
    assert taken.taken_over
    assert first.streamed.isdisjoint(second.streamed) and first.streamed | second.streamed == set(SYMBOLS)


def test_when_a_replica_dies_the_survivor_takes_over_its_symbols_and_keeps_its_own():
    first, second = Ownership(PARTITIONS), Ownership(PARTITIONS)
    mine, theirs = split()
    first.assign(mine, SYMBOLS)
    second.assign(theirs, SYMBOLS)
    survivor_had = set(second.streamed)

    plan = second.assign(range(PARTITIONS), SYMBOLS)

    assert plan.stop == ()
    assert set(plan.start) == set(first.streamed) and plan.taken_over
    assert second.streamed == survivor_had | first.streamed == set(SYMBOLS)
    assert plan.mini_tickers


def test_a_revoked_partition_given_back_to_the_same_replica_changes_nothing():
    ownership = Ownership(PARTITIONS)
    mine, _theirs = split()
    ownership.assign(mine, SYMBOLS)

    assert ownership.assign(mine, SYMBOLS) == Plan(taken_over=True, mini_tickers=True)


def test_a_follower_change_starts_or_stops_a_symbol_on_its_owner_only():
    owner, other = Ownership(PARTITIONS), Ownership(PARTITIONS)
    mine, theirs = split()
    owner.assign(mine, [])
    other.assign(theirs, [])
    symbol = next(s for s in SYMBOLS if partition_of(s, PARTITIONS) in mine)

    # Nobody streamed a symbol that had no follower: its first second is published.
    assert owner.change(symbol, True) == Plan(start=(symbol,), mini_tickers=True)
    assert owner.change(symbol, True) == Plan(mini_tickers=True)
    assert other.change(symbol, True) == Plan()
    assert owner.change(symbol, False) == Plan(stop=(symbol,), mini_tickers=True)
    assert owner.change(symbol, False) == Plan(mini_tickers=True)
    assert owner.streamed == set() and other.streamed == set()


def test_an_assignment_stops_symbols_no_longer_followed_and_a_resync_repairs_a_lost_notice():
    ownership = Ownership(PARTITIONS)
    ownership.assign(range(PARTITIONS), SYMBOLS)

    plan = ownership.resync(SYMBOLS[2:] + ["maticusdt"])

    assert plan.stop == tuple(sorted(SYMBOLS[:2])) and plan.start == ("maticusdt",) and plan.taken_over
    assert ownership.resync(SYMBOLS[2:] + ["maticusdt"]) == Plan(taken_over=True, mini_tickers=True)


def test_the_mini_tickers_follow_partition_zero():
    ownership = Ownership(PARTITIONS)
    assert not ownership.assign([1, 2], []).mini_tickers
    assert ownership.assign([MINI_TICKER_PARTITION, 3], []).mini_tickers
    assert not ownership.assign([3], []).mini_tickers


def test_a_topic_created_with_another_partition_count_is_partitioned_as_it_is():
    ownership = Ownership(12)
    symbol = next(s for s in SYMBOLS if partition_of(s, 12) != partition_of(s, 2))

    plan = ownership.assign([partition_of(symbol, 2)], [symbol], partitions=2)

    assert plan.start == (symbol,) and ownership.partitions == 2


def test_there_is_at_least_one_partition():
    with pytest.raises(ValueError):
        Ownership(0)


def frame(trade_id: int, time_ms: int, price: str = "100", symbol: str = "btcusdt") -> bytes:
    """A raw ``<symbol>@trade`` combined-stream frame (Binance spot "Trade Streams")."""
    data = {"e": "trade", "E": time_ms, "s": symbol.upper(), "t": trade_id, "p": price, "q": "1", "T": time_ms}
    return orjson.dumps({"stream": f"{symbol}@trade", "data": data})


def test_a_taken_over_symbols_first_window_is_not_published_and_every_later_one_is():
    published: list[SecondStat] = []
    intake = TradeIntake(SecondWindows(grace_ms=1000), published.append)

    intake.skip_first_window("btcusdt")
    # The stream starts mid-second: trades 1..9 of the second 1000 went to the replica streaming it before.
    intake.on_frames("btcusdt", [frame(10, 1_600), frame(11, 1_900)], received_ms=None)
    intake.on_frames("btcusdt", [frame(12, 2_100, "101"), frame(13, 2_500, "102")], received_ms=None)
    intake.on_frames("btcusdt", [frame(14, 3_000)], received_ms=None)
    intake.close_until(10_000)

    assert [(stat.second_ms, stat.count, stat.close, stat.incomplete) for stat in published] == [
        (2_000, 2, Decimal("102"), False),
        (3_000, 1, Decimal("100"), False),
    ]
    assert intake.counters.first_windows_skipped == 1


def test_a_new_follow_publishes_its_first_window_and_untracking_forgets_a_pending_skip():
    published: list[SecondStat] = []
    intake = TradeIntake(SecondWindows(grace_ms=1000), published.append)
    intake.skip_first_window("btcusdt")
    intake.forget("btcusdt")  # released before any trade came

    intake.on_frames("btcusdt", [frame(10, 1_600), frame(11, 2_100)], received_ms=None)
    intake.close_until(10_000)

    assert [stat.second_ms for stat in published] == [1_000, 2_000]
    assert intake.counters.first_windows_skipped == 0
