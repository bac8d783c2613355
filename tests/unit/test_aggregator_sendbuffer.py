"""The buffer between the real-time path and a Kafka producer: bounded, oldest dropped, failed records first."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.sendbuffer import SendBuffer


def drain(buffer: SendBuffer) -> list:
    return [buffer.take() for _ in range(len(buffer))]


def test_a_full_buffer_drops_its_oldest_record_for_a_new_one():
    buffer = SendBuffer(2)
    for record in (1, 2, 3):
        buffer.submit(record)
    assert (drain(buffer), buffer.dropped) == ([2, 3], 1)


def test_a_record_given_back_is_taken_before_the_ones_queued_after_it():
    buffer = SendBuffer(3)
    for record in (1, 2, 3):
        buffer.submit(record)
    first = buffer.take()
    buffer.submit(4)  # came while 1 was in flight
    buffer.give_back(first)  # its delivery failed; the buffer was full again
    assert (drain(buffer), buffer.dropped) == ([2, 3, 4], 1)


def test_a_record_given_back_to_a_buffer_with_room_keeps_its_place_and_nothing_is_dropped():
    buffer = SendBuffer(3)
    for record in (1, 2):
        buffer.submit(record)
    first, second = buffer.take(), buffer.take()
    buffer.submit(3)
    buffer.give_back(second)
    buffer.give_back(first)
    assert (drain(buffer), buffer.dropped) == ([1, 2, 3], 0)


def test_an_empty_buffer_has_nothing_to_take_and_a_buffer_holds_at_least_one():
    with pytest.raises(IndexError):
        SendBuffer(1).take()
    with pytest.raises(ValueError):
        SendBuffer(0)


@given(
    maxsize=st.integers(1, 5),
    steps=st.lists(st.sampled_from(["submit", "send", "fail", "deliver"]), max_size=60),
)
def test_every_record_is_delivered_once_or_counted_as_dropped(maxsize, steps):
    """Against a plain model: records submitted = delivered + dropped + still waiting + in flight, the buffer
    never holds more than ``maxsize``, and a record is delivered at most once."""
    buffer = SendBuffer(maxsize)
    submitted, delivered, in_flight = 0, [], []
    for step in steps:
        if step == "submit":
            buffer.submit(submitted)
            submitted += 1
        elif step == "send" and len(buffer):
            in_flight.append(buffer.take())
        elif step == "fail" and in_flight:
            buffer.give_back(in_flight.pop())
        elif step == "deliver" and in_flight:
            delivered.append(in_flight.pop(0))
        assert len(buffer) <= maxsize
    waiting = drain(buffer)
    assert len(set(delivered)) == len(delivered)
    assert sorted(delivered + waiting + in_flight) == sorted(set(delivered + waiting + in_flight))
    assert len(delivered) + len(waiting) + len(in_flight) + buffer.dropped == submitted


def test_records_are_taken_oldest_first_up_to_a_limit():
    buffer = SendBuffer(10)
    for record in range(5):
        buffer.submit(record)
    assert buffer.take_up_to(3) == [0, 1, 2]
    assert buffer.take_up_to(3) == [3, 4]
    assert buffer.take_up_to(3) == []


def test_a_failed_batch_goes_back_in_order_before_the_newer_records():
    buffer = SendBuffer(10)
    for record in range(6):
        buffer.submit(record)
    batch = buffer.take_up_to(4)
    buffer.submit(6)
    buffer.give_back_all(batch)
    assert drain(buffer) == [0, 1, 2, 3, 4, 5, 6]


def test_a_failed_batch_given_back_to_a_filling_buffer_loses_its_oldest_records():
    buffer = SendBuffer(4)
    for record in range(4):
        buffer.submit(record)
    batch = buffer.take_up_to(3)  # 0, 1, 2; 3 waits
    buffer.submit(4)
    buffer.give_back_all(batch)  # room for 2 of the 3: the oldest, 0, is dropped
    assert drain(buffer) == [1, 2, 3, 4]
    assert buffer.dropped == 1


@given(
    maxsize=st.integers(1, 6),
    steps=st.lists(
        st.tuples(st.sampled_from(["submit", "send", "fail", "deliver"]), st.integers(1, 4)), max_size=60
    ),
)
def test_batches_deliver_every_record_once_or_count_it_as_dropped(maxsize, steps):
    """The model above with batches: taken ``n`` at a time, given back or delivered a whole batch at once."""
    buffer = SendBuffer(maxsize)
    submitted, delivered, in_flight = 0, [], []
    for step, size in steps:
        if step == "submit":
            buffer.submit(submitted)
            submitted += 1
        elif step == "send" and len(buffer):
            in_flight.append(buffer.take_up_to(size))
        elif step == "fail" and in_flight:
            buffer.give_back_all(in_flight.pop())
        elif step == "deliver" and in_flight:
            delivered += in_flight.pop(0)
        assert len(buffer) <= maxsize
    waiting = drain(buffer)
    flying = [record for batch in in_flight for record in batch]
    assert len(set(delivered)) == len(delivered)
    assert len(delivered) + len(waiting) + len(flying) + buffer.dropped == submitted
    assert len(set(delivered + waiting + flying)) == len(delivered + waiting + flying)
