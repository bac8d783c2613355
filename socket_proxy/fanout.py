"""Fan-out of upstream streams to gRPC subscribers, reference-counted per stream.

The first subscriber of a stream asks the upstream for it (``on_first``), the last one leaving releases it
(``on_last``). Every subscriber of a stream gets every frame published after it subscribed, unmodified and in
order, through its own bounded queue. Backpressure policy: a subscriber whose queue is full is *ended* (its
RPC finishes with RESOURCE_EXHAUSTED, so it reconnects knowing it missed data); publishing never waits, so one
slow subscriber never delays the others.
"""

from __future__ import annotations

import asyncio
from collections import deque
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
    """One gRPC subscriber of one stream: a bounded queue of raw frames (bytes).

    The queue is a plain deque with one waiter, not an ``asyncio.Queue``: every frame of the market path passes
    through it, and a queue that wakes at most one reader and hands frames out by the batch costs a fraction
    of ``asyncio.Queue``'s per-frame ``put_nowait``/``get_nowait``.
    """

    def __init__(self, stream: str, queue_size: int) -> None:
        self.stream = stream
        self._queue_size = queue_size
        self._frames: deque[bytes] = deque()
        self._ended = asyncio.Event()
        #: The future :meth:`next_batch` awaits while the queue is empty; set by the next frame or the end.
        self._waiter: asyncio.Future[None] | None = None

    @property
    def overflowed(self) -> bool:
        return self._ended.is_set()

    @property
    def depth(self) -> int:
        """Frames queued, not yet handed to the RPC."""
        return len(self._frames)

    def offer(self, frame: bytes) -> bool:
        """Queue ``frame`` without waiting; False if the queue is full (the subscriber is then ended)."""
        if self._ended.is_set():
            return False
        frames = self._frames
        if len(frames) >= self._queue_size:
            self._ended.set()
            # The frames still queued can no longer make a complete sequence: free them now.
            frames.clear()
            self._wake()
            return False
        frames.append(frame)
        if self._waiter is not None:
            self._wake()
        return True

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_batch(self, max_batch: int) -> list[bytes]:
        """Wait for at least one frame; return it with every frame already queued behind it, at most
        ``max_batch``, oldest first. Raises :class:`SubscriberOverflow` once the subscriber was ended."""
        while not self._frames and not self._ended.is_set():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        if self._ended.is_set():
            raise SubscriberOverflow(self.stream)
        return self._take(max_batch)

    def queued(self, limit: int) -> list[bytes]:
        """Up to ``limit`` frames already queued, oldest first, without waiting (``[]`` once ended)."""
        if self._ended.is_set():
            return []
        return self._take(limit)

    def _take(self, limit: int) -> list[bytes]:
        frames = self._frames
        if len(frames) <= limit:
            batch = list(frames)
            frames.clear()
            return batch
        return [frames.popleft() for _ in range(limit)]

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

    def subscribed(self, stream: str) -> bool:
        """True while ``stream`` has a subscriber."""
        return stream in self._subscribers

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
