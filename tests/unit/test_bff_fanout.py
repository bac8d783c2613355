"""The fan-out's rules as pure decisions (profile_bff/fanout.py): conflation of prices, the coalescing window,
the prices REST reads take from the subscription, and what a slow socket is sent. Plain values and a fake clock: nothing here waits or reads a real clock."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profile_bff.fanout import (
    INLINE_MAX_BYTES,
    CoalescingWindow,
    Delivery,
    FanOutSlices,
    HeldPrices,
    WatchedPrices,
)
from profile_bff.portfolio import Price


class FakeClock:
    """Seconds on a monotonic scale that move only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def price(value: str, second: int) -> Price:
    """A SecondStat price of ``value`` for second ``second`` (in s since 2024-08-09, as Unix ms)."""
    return Price(Decimal(value), 1_723_161_600_000 + second * 1000)


# -- conflation: the newest second of each held symbol -----------------------------------------------------


def test_a_price_of_a_symbol_nobody_here_holds_is_dropped():
    held: HeldPrices[str] = HeldPrices()
    held.hold("alice", "btcusdt")
    assert held.offer("ethusdt", price("2", 1)) == {}
    assert "ethusdt" not in held.prices


def test_a_price_goes_to_every_holder_of_its_symbol_in_holding_order():
    held: HeldPrices[str] = HeldPrices()
    for user in ("carol", "alice", "bob"):
        held.hold(user, "btcusdt")
    held.hold("dave", "ethusdt")
    assert list(held.offer("btcusdt", price("10", 1))) == ["carol", "alice", "bob"]
    assert held.prices["btcusdt"] == price("10", 1)


def test_only_the_newest_second_of_a_symbol_is_kept_and_an_older_one_reaches_nobody():
    held: HeldPrices[str] = HeldPrices()
    held.hold("alice", "btcusdt")
    held.offer("btcusdt", price("10", 5))
    assert held.offer("btcusdt", price("9", 4)) == {}
    assert held.prices["btcusdt"] == price("10", 5)
    assert list(held.offer("btcusdt", price("11", 6))) == ["alice"]
    assert held.prices["btcusdt"] == price("11", 6)


def test_the_same_second_published_again_replaces_the_kept_price():
    held: HeldPrices[str] = HeldPrices()
    held.hold("alice", "btcusdt")
    held.offer("btcusdt", price("10", 5))
    assert list(held.offer("btcusdt", price("10.5", 5))) == ["alice"]
    assert held.prices["btcusdt"].value == Decimal("10.5")


def test_a_symbol_is_held_from_its_first_holder_to_its_last_and_its_price_goes_with_the_last():
    held: HeldPrices[str] = HeldPrices()
    held.hold("alice", "btcusdt")
    held.hold("bob", "btcusdt")
    held.hold("bob", "btcusdt")  # holding twice is holding once
    held.offer("btcusdt", price("10", 1))
    held.release("alice", "btcusdt")
    assert set(held.symbols) == {"btcusdt"}
    assert list(held.offer("btcusdt", price("11", 2))) == ["bob"]
    held.release("bob", "btcusdt")
    assert set(held.symbols) == set()
    assert "btcusdt" not in held.prices
    held.release("bob", "btcusdt")  # releasing what is not held changes nothing
    held.hold("carol", "btcusdt")
    assert held.unpriced(["btcusdt"]) == ["btcusdt"]


def test_only_symbols_without_a_kept_price_are_read_from_the_latest_price_keys():
    held: HeldPrices[str] = HeldPrices()
    for symbol in ("btcusdt", "ethusdt", "solusdt"):
        held.hold("alice", symbol)
    held.offer("ethusdt", price("3", 1))
    assert held.unpriced(["btcusdt", "ethusdt", "solusdt"]) == ["btcusdt", "solusdt"]


# -- watched prices: REST reads answered from the subscription --------------------------------------------


def test_a_symbol_is_read_from_its_key_until_a_second_stat_of_it_is_heard_after_its_first_read():
    watched = WatchedPrices(60, FakeClock())
    assert watched.read(["btcusdt", "ethusdt"]) == ({}, ["btcusdt", "ethusdt"], True)
    assert set(watched.symbols) == {"btcusdt", "ethusdt"}
    watched.offer("btcusdt", price("10", 1))
    assert watched.read(["btcusdt", "ethusdt"]) == ({"btcusdt": price("10", 1)}, ["ethusdt"], False)


def test_a_second_stat_of_a_symbol_no_read_asked_for_is_not_kept():
    watched = WatchedPrices(60, FakeClock())
    watched.offer("btcusdt", price("10", 1))
    assert watched.prices == {}
    assert watched.read(["btcusdt"]) == ({}, ["btcusdt"], True)


def test_of_the_second_stats_heard_the_newest_second_answers_and_an_older_one_is_dropped():
    watched = WatchedPrices(60, FakeClock())
    watched.read(["btcusdt"])
    watched.offer("btcusdt", price("10", 5))
    watched.offer("btcusdt", price("9", 4))
    assert watched.read(["btcusdt"])[0] == {"btcusdt": price("10", 5)}
    watched.offer("btcusdt", price("10.5", 5))
    watched.offer("btcusdt", price("11", 6))
    assert watched.read(["btcusdt"])[0] == {"btcusdt": price("11", 6)}
    watched.offer("btcusdt", price("11.5", 6))
    assert watched.read(["btcusdt"])[0] == {"btcusdt": price("11.5", 6)}


def test_after_the_connection_is_lost_no_price_answers_until_a_new_one_is_heard_and_the_symbols_stay():
    watched = WatchedPrices(60, FakeClock())
    watched.read(["btcusdt", "ethusdt"])
    watched.offer("btcusdt", price("10", 1))
    watched.offer("ethusdt", price("2", 1))
    watched.forget_prices()
    assert watched.read(["btcusdt", "ethusdt"]) == ({}, ["btcusdt", "ethusdt"], False)
    watched.offer("ethusdt", price("3", 2))
    assert watched.read(["btcusdt", "ethusdt"]) == ({"ethusdt": price("3", 2)}, ["btcusdt"], False)


def test_a_symbol_stays_watched_for_its_time_to_live_after_its_last_read_then_goes_with_its_price():
    clock = FakeClock()
    watched = WatchedPrices(60, clock)
    watched.read(["btcusdt", "ethusdt"])
    watched.offer("btcusdt", price("10", 1))
    clock.advance(40)
    watched.read(["btcusdt"])
    clock.advance(19.5)
    assert watched.expire() == []
    clock.advance(0.5)
    assert watched.expire() == ["ethusdt"]
    assert list(watched.symbols) == ["btcusdt"]
    clock.advance(40)
    assert watched.expire() == ["btcusdt"]
    assert watched.prices == {}
    assert list(watched.symbols) == []
    # Read again, it is a new symbol to subscribe, read from its key until heard of.
    assert watched.read(["btcusdt"]) == ({}, ["btcusdt"], True)


@pytest.mark.parametrize("ttl_s", [0, -1])
def test_a_watch_needs_a_positive_time_to_live(ttl_s):
    with pytest.raises(ValueError):
        WatchedPrices(ttl_s, FakeClock())


# -- the coalescing window -----------------------------------------------------------------------------------


def test_without_a_window_a_push_is_due_at_once_with_every_user_once_in_order_of_arrival():
    window: CoalescingWindow[str] = CoalescingWindow(0.0, FakeClock())
    assert window.add({"alice": None, "bob": None}) is True
    assert window.add(["carol", "alice"]) is False
    assert window.due_in() <= 0
    assert window.take() == ["alice", "bob", "carol"]
    assert len(window) == 0 and window.take() == []


def test_a_window_is_due_its_length_after_the_first_change_however_many_follow():
    clock = FakeClock()
    window: CoalescingWindow[str] = CoalescingWindow(0.25, clock)
    assert window.add(["alice"]) is True
    assert window.due_in() == pytest.approx(0.25)
    clock.advance(0.1)
    # Later changes join the window that is open; they do not move its end.
    assert window.add(["bob"]) is False
    assert window.due_in() == pytest.approx(0.15)
    clock.advance(0.15)
    assert window.due_in() == pytest.approx(0.0)
    assert window.take() == ["alice", "bob"]
    clock.advance(3.0)
    # The next change opens a new window, from its own time.
    assert window.add(["alice"]) is True
    assert window.due_in() == pytest.approx(0.25)


def test_changes_after_a_push_started_wait_for_a_window_of_their_own():
    clock = FakeClock()
    window: CoalescingWindow[str] = CoalescingWindow(0.5, clock)
    window.add(["alice", "bob"])
    clock.advance(0.5)
    batch = window.take()
    clock.advance(0.01)
    assert window.add(["carol"]) is True
    assert batch == ["alice", "bob"]
    assert window.due_in() == pytest.approx(0.5)


def test_a_user_rendered_during_a_push_leaves_the_window_its_new_change_is_in_that_push():
    clock = FakeClock()
    window: CoalescingWindow[str] = CoalescingWindow(0.5, clock)
    window.add(["alice", "bob"])
    window.take()
    # alice changes again while the push is being made, before its turn: her render carries the change.
    window.add(["alice"])
    window.discard("alice")
    assert len(window) == 0
    window.discard("bob")  # not waiting: nothing happens
    clock.advance(2.0)
    assert window.add(["bob"]) is True
    assert window.due_in() == pytest.approx(0.5)
    assert window.take() == ["bob"]


def test_nothing_pending_is_never_waited_for():
    window: CoalescingWindow[str] = CoalescingWindow(1.0, FakeClock())
    assert window.due_in() <= 0
    assert window.add([]) is False
    assert window.due_in() <= 0


def test_a_negative_window_is_refused():
    with pytest.raises(ValueError, match="coalesce_s"):
        CoalescingWindow(-0.001, FakeClock())


def test_a_fan_out_slice_starts_small_and_then_fits_the_time_budget_at_the_cost_per_user_measured():
    slices = FanOutSlices(0.002, min_users=8, max_users=256)
    assert slices.size == 8  # nothing measured yet
    assert slices.measured(8, 0.0004) == 40  # 50 µs a user: 40 users in 2 ms
    assert slices.measured(40, 0.004) == 20  # the machine got slower: 100 µs a user
    assert slices.size == 20


def test_a_fan_out_slice_stays_within_its_bounds_and_an_unmeasurable_one_changes_nothing():
    slices = FanOutSlices(0.002, min_users=8, max_users=256)
    assert slices.measured(8, 0.000001) == 256  # very cheap users: at most max_users
    assert slices.measured(256, 1.0) == 8  # very dear ones: at least min_users
    assert slices.measured(0, 0.01) == 8
    assert slices.measured(10, 0.0) == 8


@pytest.mark.parametrize(
    "budget_s, min_users, max_users", [(0, 8, 256), (-1, 8, 256), (0.002, 0, 8), (0.002, 9, 8)]
)
def test_a_fan_out_slice_needs_a_positive_budget_and_ordered_bounds(budget_s, min_users, max_users):
    with pytest.raises(ValueError, match="budget_s"):
        FanOutSlices(budget_s, min_users, max_users)


# Symbols held by three users; a script of publishes (symbol, second, price) and pushes.
HOLDERS = {"alice": ("btcusdt", "ethusdt"), "bob": ("ethusdt",), "carol": ("solusdt", "btcusdt")}
SYMBOLS = ("btcusdt", "ethusdt", "solusdt", "xrpusdt")  # nobody holds xrpusdt
STEPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(SYMBOLS), st.integers(0, 20), st.integers(1, 99)),
        st.tuples(st.just("push"), st.floats(0.0, 0.5)),
    ),
    max_size=60,
)


@given(STEPS)
def test_every_push_carries_the_newest_second_published_of_each_held_symbol_and_reaches_each_holder_once(
    steps,
):
    clock = FakeClock()
    held: HeldPrices[str] = HeldPrices()
    window: CoalescingWindow[str] = CoalescingWindow(0.2, clock)
    for user, symbols in HOLDERS.items():
        for symbol in symbols:
            held.hold(user, symbol)
    newest: dict[str, Price] = {}  # the independent account: the newest second of each symbol so far
    changed_since_push: set[str] = set()
    for step in steps:
        if step[0] == "push":
            clock.advance(step[1])
            if window.due_in() > 0:
                continue  # not due yet: the pusher would still be waiting
            batch = window.take()
            assert len(batch) == len(set(batch))
            assert set(batch) == {u for u, symbols in HOLDERS.items() if changed_since_push & set(symbols)}
            for user in batch:
                # What the user's profile is rendered at: the kept price of each of its coins.
                carried = {symbol: held.prices[symbol] for symbol in HOLDERS[user] if symbol in held.prices}
                assert carried == {symbol: newest[symbol] for symbol in HOLDERS[user] if symbol in newest}
            changed_since_push.clear()
            continue
        symbol, second, value = step
        offered = price(str(value), second)
        if symbol in held.symbols and (symbol not in newest or newest[symbol].second_ms <= offered.second_ms):
            newest[symbol] = offered
            changed_since_push.add(symbol)
        window.add(held.offer(symbol, offered))
    assert "xrpusdt" not in held.prices


# -- backpressure: what one socket is sent --------------------------------------------------------------


def test_nothing_is_sent_before_the_socket_opens_and_the_snapshot_goes_first_then():
    delivery = Delivery()
    assert delivery.changed() is False  # the snapshot, marked before the socket is prepared
    assert delivery.may_write_inline(100, 0, False) is False
    assert delivery.opened() is True  # a writer starts now, for the snapshot
    assert delivery.next_send() is True
    assert delivery.next_send() is False
    delivery.writer_ended()
    assert delivery.writing is False


def test_an_open_socket_without_a_change_starts_no_writer_when_it_opens():
    delivery = Delivery()
    assert delivery.opened() is False
    assert delivery.is_open


@pytest.mark.parametrize(
    ("frame_bytes", "buffered_bytes", "closing", "inline"),
    [
        (200, 0, False, True),
        (INLINE_MAX_BYTES, 0, False, True),
        (INLINE_MAX_BYTES + 1, 0, False, False),  # could fill the transport's buffer: the writer sends it
        (200, 1, False, False),  # something waits in the transport: the write would queue behind it
        (200, 0, True, False),
    ],
)
def test_a_frame_is_written_inline_only_when_the_transport_takes_it_at_once(
    frame_bytes, buffered_bytes, closing, inline
):
    delivery = Delivery()
    delivery.opened()
    assert delivery.may_write_inline(frame_bytes, buffered_bytes, closing) is inline


def test_a_slow_socket_holds_one_pending_profile_however_many_changes_it_misses():
    delivery = Delivery()
    delivery.opened()
    assert delivery.changed() is True  # could not be written inline: its writer starts
    assert delivery.next_send() is True  # the writer renders the latest profile and sends it (slowly)
    starts = [delivery.changed() for _ in range(100)]
    assert starts == [False] * 100  # one writer per socket
    # While a writer is behind, no frame overtakes it inline.
    assert delivery.may_write_inline(100, 0, False) is False
    # The send ends: one more send, of the latest profile, for the hundred changes; then it has caught up.
    assert delivery.next_send() is True
    assert delivery.next_send() is False
    delivery.writer_ended()
    assert delivery.may_write_inline(100, 0, False) is True
    assert delivery.changed() is True  # the next change starts a writer again


def test_after_a_send_times_out_or_fails_nothing_more_is_sent():
    delivery = Delivery()
    delivery.opened()
    delivery.changed()
    assert delivery.next_send() is True
    delivery.changed()
    delivery.closed()  # the send waited past BFF_WS_SEND_TIMEOUT_S: the connection is aborted
    assert delivery.next_send() is False
    delivery.writer_ended()
    assert delivery.changed() is False
    assert delivery.may_write_inline(100, 0, False) is False
    assert not delivery.is_open
