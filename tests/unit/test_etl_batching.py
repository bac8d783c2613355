"""The ETL's batch policy over plain numbers (:mod:`etl.batching`): when a batch is due, what it commits or
gives back, and how much one poll may take. Against a Kafka-protocol broker and chDB:
tests/test_etl_pipeline.py and tests/test_analytics_exactly_once.py."""

from __future__ import annotations

import pytest

from etl.batching import Batch, BatchPolicy

TICKERS, SECONDS = "binance.miniticker", "binance.second"
#: Batches close at 100 records or 1 s after their first record.
POLICY = BatchPolicy(max_rows=100, max_age_ms=1000)
#: A monotonic clock reading (s) at which the tests' first records are polled.
T0 = 500.0


def batch(topic: str = TICKERS, policy: BatchPolicy = POLICY) -> Batch:
    return Batch(topic, policy)


def test_an_empty_batch_is_never_due_and_commits_nothing():
    empty = batch()
    assert not empty.should_close(T0 + 3600)
    assert empty.age_ms(T0) == 0
    assert empty.commit_offsets() == {}


def test_a_batch_is_due_once_it_holds_max_rows_records_however_young():
    filling = batch()
    filling.add((TICKERS, 0), 0, 98, 99, T0)
    assert not filling.should_close(T0)
    filling.add((TICKERS, 1), 7, 7, 1, T0)
    assert filling.size == 100
    assert filling.should_close(T0)


def test_a_batch_is_due_once_its_first_record_is_max_age_old():
    young = batch()
    young.add((TICKERS, 0), 0, 0, 1, T0)
    young.add((TICKERS, 0), 1, 1, 1, T0 + 0.75)  # a later record does not make the batch younger
    assert young.opened_at == T0
    assert young.age_ms(T0 + 0.75) == 750
    assert not young.should_close(T0 + 0.75)
    assert young.should_close(T0 + 1.0)
    assert young.should_close(T0 + 5.0)


def test_with_no_insert_in_flight_a_batch_is_inserted_as_soon_as_it_is_due():
    due = batch()
    due.add((TICKERS, 0), 0, 9, 10, T0)
    assert not due.ready(T0 + 0.5, inserting=False)
    assert due.ready(T0 + 1.0, inserting=False)
    assert not batch().ready(T0 + 3600, inserting=False)


def test_a_due_batch_keeps_filling_while_an_insert_is_in_flight_until_it_is_full():
    waiting = batch()
    waiting.add((TICKERS, 0), 0, 9, 10, T0)
    assert waiting.should_close(T0 + 2.0)
    assert not waiting.ready(T0 + 2.0, inserting=True)  # old enough, but the insert in flight goes first
    waiting.add((TICKERS, 0), 10, 98, 89, T0 + 2.0)
    assert not waiting.full
    assert not waiting.ready(T0 + 2.0, inserting=True)
    waiting.add((TICKERS, 0), 99, 99, 1, T0 + 2.1)
    assert waiting.full
    assert waiting.ready(T0 + 2.1, inserting=True)  # full: it waits for the insert in flight, then goes
    assert waiting.ready(T0 + 2.1, inserting=False)


def test_the_commit_is_the_next_offset_to_read_in_every_partition_of_the_batch():
    taken = batch()
    taken.add((TICKERS, 0), 10, 19, 10, T0)
    taken.add((TICKERS, 2), 0, 4, 5, T0)
    taken.add((TICKERS, 0), 20, 29, 10, T0 + 0.1)
    assert taken.commit_offsets() == {(TICKERS, 0): 30, (TICKERS, 2): 5}
    assert taken.size == 25


def test_offsets_missing_from_a_run_are_committed_past_but_not_counted():
    # A compacted topic, or a transaction's control records, leave offsets without a record.
    sparse = batch(SECONDS)
    sparse.add((SECONDS, 0), 100, 199, 40, T0)
    assert sparse.size == 40
    assert sparse.commit_offsets() == {(SECONDS, 0): 200}


def test_a_batch_given_back_is_read_again_from_its_first_offset_in_every_partition():
    open_batch = batch()
    open_batch.add((TICKERS, 1), 50, 59, 10, T0)
    open_batch.add((TICKERS, 0), 3, 3, 1, T0)
    open_batch.add((TICKERS, 1), 60, 69, 10, T0 + 0.2)
    assert open_batch.first_offsets == {(TICKERS, 1): 50, (TICKERS, 0): 3}


def test_a_poll_takes_no_more_than_the_fullest_open_batch_has_room_for():
    tickers, seconds = batch(TICKERS), batch(SECONDS)
    assert POLICY.room([tickers, seconds]) == 100
    tickers.add((TICKERS, 0), 0, 29, 30, T0)
    seconds.add((SECONDS, 0), 0, 69, 70, T0)
    assert POLICY.room([tickers, seconds]) == 30


def test_records_polled_within_the_room_never_overfill_a_batch_and_every_offset_is_committed_once():
    """A loop over an in-memory log of two topics: poll what the room allows, close what is due, commit it."""
    policy = BatchPolicy(max_rows=7, max_age_ms=1000)
    log_end = {(TICKERS, 0): 23, (TICKERS, 1): 5, (SECONDS, 0): 31}
    position = dict.fromkeys(log_end, 0)
    batches = {topic: Batch(topic, policy) for topic in (TICKERS, SECONDS)}
    committed: dict[tuple[str, int], list[int]] = {partition: [0] for partition in log_end}
    now = T0
    while any(position[partition] < end for partition, end in log_end.items()):
        now += 0.3
        room = policy.room(batches.values())
        assert room >= 1
        for partition, end in log_end.items():  # one poll: up to `room` records over every partition
            first, count = position[partition], min(room, end - position[partition])
            if count:
                batches[partition[0]].add(partition, first, first + count - 1, count, now)
                position[partition] += count
                room -= count
        for topic, open_batch in batches.items():
            assert open_batch.size <= policy.max_rows
            if open_batch.should_close(now):
                for partition, offset in open_batch.commit_offsets().items():
                    assert open_batch.first_offsets[partition] == committed[partition][-1]
                    committed[partition].append(offset)
                batches[topic] = Batch(topic, policy)
    for topic, open_batch in batches.items():  # a stop flushes the open batches
        for partition, offset in open_batch.commit_offsets().items():
            committed[partition].append(offset)
    assert {partition: offsets[-1] for partition, offsets in committed.items()} == log_end
    assert all(offsets == sorted(set(offsets)) for offsets in committed.values())


@pytest.mark.parametrize("longest_ms", [250, 10])
def test_with_no_open_batch_a_poll_waits_the_loops_longest(longest_ms):
    assert POLICY.poll_timeout_ms([batch(TICKERS), batch(SECONDS)], T0, longest_ms) == longest_ms


def test_a_poll_waits_no_longer_than_the_oldest_open_batch_has_left():
    older, newer = batch(TICKERS), batch(SECONDS)
    older.add((TICKERS, 0), 0, 0, 1, T0)
    newer.add((SECONDS, 0), 0, 0, 1, T0 + 0.5)
    assert POLICY.poll_timeout_ms([older, newer], T0 + 0.875, 250) == 125
    assert POLICY.poll_timeout_ms([older, newer], T0 + 0.5, 250) == 250
    # Whole milliseconds, rounded down; never negative once a batch is overdue.
    assert POLICY.poll_timeout_ms([older], T0 + 0.0005, 5000) == 999
    assert POLICY.poll_timeout_ms([older], T0 + 2, 250) == 0


def test_while_an_insert_is_in_flight_a_batch_already_due_does_not_cut_the_wait_short():
    due, filling = batch(TICKERS), batch(SECONDS)
    due.add((TICKERS, 0), 0, 0, 1, T0)
    filling.add((SECONDS, 0), 0, 0, 1, T0 + 0.5)
    assert POLICY.poll_timeout_ms([due, filling], T0 + 1.25, 500) == 0  # nothing in flight: insert it now
    assert POLICY.poll_timeout_ms([due], T0 + 1.25, 500, inserting=True) == 500
    # A batch not yet due still closes on time.
    assert POLICY.poll_timeout_ms([due, filling], T0 + 1.25, 500, inserting=True) == 250


def test_the_deduplication_token_names_each_partitions_run_in_partition_order_and_the_digest():
    taken = batch(SECONDS)
    taken.add((SECONDS, 10), 5, 9, 5, T0)
    taken.add((SECONDS, 2), 40, 41, 2, T0)
    taken.add((SECONDS, 10), 10, 12, 3, T0 + 0.1)
    assert taken.deduplication_token("0123456789abcdef") == "binance.second:2:40-41,10:5-12:0123456789abcdef"


def test_a_batch_refuses_records_of_another_topic_and_empty_runs():
    tickers = batch(TICKERS)
    with pytest.raises(ValueError, match="not of topic"):
        tickers.add((SECONDS, 0), 0, 0, 1, T0)
    with pytest.raises(ValueError, match="at least one record"):
        tickers.add((TICKERS, 0), 0, 0, 0, T0)
    with pytest.raises(ValueError, match="empty batch"):
        tickers.deduplication_token("0123456789abcdef")
    assert tickers.size == 0
