"""Fan-out of upstream streams to gRPC subscribers, reference-counted per stream.

The first subscriber of a stream asks the upstream for it (``on_first``), the last one leaving releases it
(``on_last``). Every subscriber of a stream gets every frame published after it subscribed, unmodified and in
order, through its own bounded queue. Backpressure policy: a subscriber whose queue is full is *ended* (its
RPC finishes with RESOURCE_EXHAUSTED, so it reconnects knowing it missed data); publishing never waits, so one
slow subscriber never delays the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from crypto_mesh.logs import get_logger

log = get_logger(__name__)


@dataclass
class Counters:
    """Totals since start, for metrics: frames received upstream (``frames_in``), frames handed to
    subscribers' RPCs (``frames_out``) in ``messages_out`` gRPC messages, subscribers ended because their queue overflowed (``drops``),
    upstream reconnects after a lost connection (``reconnects``), connection attempts and failures, and
    planned replacements of connections close to Binance's 24 h limit (``rotations``)."""

    frames_in: int = 0
    frames_out: int = 0
    messages_out: int = 0
    drops: int = 0
    reconnects: int = 0
    connect_attempts: int = 0
    connect_failures: int = 0
    rotations: int = 0


class SubscriberOverflow(Exception):
    """The subscriber's queue overflowed and it was ended; frames were lost for it."""


class Subscriber:
    """One gRPC subscriber of one stream: a bounded queue of raw frames (bytes)."""

    def __init__(self, stream: str, queue_size: int) -> None:
        self.stream = stream
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self._ended = asyncio.Event()

    @property
    def overflowed(self) -> bool:
        return self._ended.is_set()

    @property
    def depth(self) -> int:
        """Frames queued, not yet handed to the RPC."""
        return self._queue.qsize()

    def offer(self, frame: bytes) -> bool:
        """Queue ``frame`` without waiting; False if the queue is full (the subscriber is then ended)."""
        if self._ended.is_set():
            return False
        try:
            self._queue.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            self._ended.set()
            # The frames still queued can no longer make a complete sequence: free them now.
            self._queue = asyncio.Queue(1)
            return False

    async def next_batch(self, max_batch: int) -> list[bytes]:
        """Wait for at least one frame; return it with every frame already queued behind it, at most
        ``max_batch``, oldest first. Raises :class:`SubscriberOverflow` once the subscriber was ended."""
        if self._queue.empty() and not self._ended.is_set():
            getter = asyncio.ensure_future(self._queue.get())
            ended = asyncio.ensure_future(self._ended.wait())
            try:
                await asyncio.wait((getter, ended), return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
                if not getter.done():
                    getter.cancel()
            if self._ended.is_set():
                raise SubscriberOverflow(self.stream)
            batch = [getter.result()]
        else:
            if self._ended.is_set():
                raise SubscriberOverflow(self.stream)
            batch = [self._queue.get_nowait()]
        while len(batch) < max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    def queued(self, limit: int) -> list[bytes]:
        """Up to ``limit`` frames already queued, oldest first, without waiting (``[]`` once ended)."""
        if self._ended.is_set():
            return []
        batch: list[bytes] = []
        while len(batch) < limit and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def wait_ended(self) -> None:
        """Return once the subscriber has been ended for overflow."""
        await self._ended.wait()


class FanOut:
    """Subscribers per stream, with the upstream's subscription held while a stream has any.

    ``on_first(stream)`` is called when a stream gets its first subscriber, ``on_last(stream)`` when its last
    one leaves or is ended; neither may block. The map of streams is pruned: a stream without subscribers is
    not kept.
    """

    def __init__(
        self,
        queue_size: int,
        on_first: Callable[[str], None],
        on_last: Callable[[str], None],
        counters: Counters,
    ) -> None:
        self._queue_size = queue_size
        self._on_first = on_first
        self._on_last = on_last
        self._counters = counters
        self._subscribers: dict[str, set[Subscriber]] = {}

    @property
    def streams(self) -> dict[str, int]:
        """Stream → number of subscribers."""
        return {stream: len(subscribers) for stream, subscribers in self._subscribers.items()}

    def queue_depths(self) -> list[int]:
        """Frames queued per subscriber (every stream), for metrics."""
        return [subscriber.depth for subscribers in self._subscribers.values() for subscriber in subscribers]

    def subscribe(self, stream: str) -> Subscriber:
        """A new subscriber of ``stream``; it receives the frames published from now on."""
        subscriber = Subscriber(stream, self._queue_size)
        subscribers = self._subscribers.get(stream)
        if subscribers is None:
            subscribers = self._subscribers[stream] = set()
            subscribers.add(subscriber)
            self._on_first(stream)
        else:
            subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Remove ``subscriber``; idempotent."""
        subscribers = self._subscribers.get(subscriber.stream)
        if subscribers is None or subscriber not in subscribers:
            return
        subscribers.discard(subscriber)
        if not subscribers:
            del self._subscribers[subscriber.stream]
            self._on_last(subscriber.stream)

    def publish(self, stream: str, frame: bytes) -> bool:
        """Hand ``frame`` to every subscriber of ``stream``; end those whose queue is full. False if the stream
        has no subscriber (a frame still in flight after its release)."""
        subscribers = self._subscribers.get(stream)
        if not subscribers:
            return False
        for subscriber in tuple(subscribers):
            if not subscriber.offer(frame):
                self._counters.drops += 1
                log.warning("subscriber_overflow", stream=stream, queue_size=self._queue_size)
                self.unsubscribe(subscriber)
        return True
