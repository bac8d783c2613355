"""Fan-out of socket_proxy: reference-counted upstream streams, every frame to every subscriber, overflow ends
only the subscriber that fell behind."""

from __future__ import annotations

import asyncio

import pytest

from socket_proxy.fanout import Counters, FanOut, SubscriberOverflow


class UpstreamCalls:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def first(self, stream: str) -> None:
        self.calls.append(("subscribe", stream))

    def last(self, stream: str) -> None:
        self.calls.append(("unsubscribe", stream))


def make_fanout(queue_size: int = 100) -> tuple[FanOut, UpstreamCalls, Counters]:
    upstream, counters = UpstreamCalls(), Counters()
    return FanOut(queue_size, upstream.first, upstream.last, counters), upstream, counters


async def test_the_first_subscriber_subscribes_upstream_and_the_last_one_leaving_unsubscribes():
    fanout, upstream, _ = make_fanout()
    a = fanout.subscribe("btcusdt@trade")
    b = fanout.subscribe("btcusdt@trade")
    fanout.unsubscribe(a)
    fanout.unsubscribe(a)  # idempotent
    assert upstream.calls == [("subscribe", "btcusdt@trade")]
    fanout.unsubscribe(b)
    assert upstream.calls == [("subscribe", "btcusdt@trade"), ("unsubscribe", "btcusdt@trade")]
    assert fanout.streams == {}


async def test_every_subscriber_gets_every_frame_in_order_batched_up_to_the_limit():
    fanout, _, _ = make_fanout()
    a = fanout.subscribe("s")
    b = fanout.subscribe("s")
    frames = [str(i).encode() for i in range(5)]
    for frame in frames:
        fanout.publish("s", frame)
    fanout.publish("other", b"not mine")
    assert await a.next_batch(3) == frames[:3]
    assert await a.next_batch(3) == frames[3:]
    assert await b.next_batch(10) == frames


async def test_a_subscriber_whose_queue_overflows_is_ended_and_the_others_are_not_delayed():
    fanout, upstream, counters = make_fanout(queue_size=2)
    slow = fanout.subscribe("s")
    fast = fanout.subscribe("s")
    fanout.publish("s", b"1")
    assert await fast.next_batch(10) == [b"1"]
    fanout.publish("s", b"2")
    fanout.publish("s", b"3")  # slow now holds 1, 2 and has no room for 3
    assert slow.overflowed and not fast.overflowed
    assert counters.drops == 1
    assert fanout.streams == {"s": 1}
    with pytest.raises(SubscriberOverflow):
        await slow.next_batch(10)
    assert await fast.next_batch(10) == [b"2", b"3"]
    assert upstream.calls == [("subscribe", "s")]


async def test_a_waiting_subscriber_wakes_up_on_the_next_frame_and_on_being_ended():
    fanout, _, _ = make_fanout(queue_size=1)
    waiting = fanout.subscribe("s")
    batch = asyncio.create_task(waiting.next_batch(10))
    await asyncio.sleep(0)
    fanout.publish("s", b"x")
    assert await asyncio.wait_for(batch, 1) == [b"x"]

    pending = asyncio.create_task(waiting.next_batch(10))
    await asyncio.sleep(0)
    fanout.publish("s", b"y")
    fanout.publish("s", b"z")  # before the subscriber ran: its one-frame queue is still full
    with pytest.raises(SubscriberOverflow):
        await asyncio.wait_for(pending, 1)


async def test_a_stream_whose_last_subscriber_overflowed_is_no_longer_subscribed():
    fanout, upstream, _ = make_fanout(queue_size=1)
    only = fanout.subscribe("s")
    assert fanout.subscribed("s")
    assert fanout.publish("s", b"1")
    assert fanout.publish("s", b"2")  # the stream had a subscriber, which this frame ended
    assert only.overflowed and not fanout.subscribed("s")
    assert upstream.calls == [("subscribe", "s"), ("unsubscribe", "s")]


async def test_a_subscriber_whose_wait_was_cancelled_still_gets_the_next_frames():
    fanout, _, _ = make_fanout()
    subscriber = fanout.subscribe("s")
    waiting = asyncio.create_task(subscriber.next_batch(10))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    fanout.publish("s", b"x")
    fanout.publish("s", b"y")
    assert await asyncio.wait_for(subscriber.next_batch(10), 1) == [b"x", b"y"]
    assert subscriber.depth == 0
