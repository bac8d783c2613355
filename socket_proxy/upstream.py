"""Connections to the exchange's combined-stream endpoint (``<exchange_url>/stream``), with live
SUBSCRIBE/UNSUBSCRIBE, within Binance's limits (:mod:`crypto_mesh.binance.limits`: at most 1024 streams per
connection, 5 incoming messages per second per connection with pings and pongs counted, 300 connection
attempts per 5 minutes per IP, and a connection lives at most 24 h).

:class:`Upstream` is the pool: it places each stream on a connection with room and closes a connection as
soon as it carries no stream. :class:`UpstreamConnection` owns one logical connection: it reconnects after a
close, an error or a missing pong (exponential backoff with jitter), resubscribes everything after a
reconnect, and replaces its websocket before the 24 h limit (open the new one, subscribe, hand the streams
over frame-exactly with :class:`Handover`, then close the old one). Frames are handed on unmodified: the
bytes received, or the UTF-8 encoding of a text frame.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from crypto_mesh import binance, jsonutil
from crypto_mesh.binance import control
from crypto_mesh.logs import get_logger
from crypto_mesh.observe import detached_task
from crypto_mesh.retry import Backoff, retrying
from socket_proxy.fanout import Counters
from socket_proxy.wsclient import ExchangeSocket, HandshakeError

log = get_logger(__name__)

#: Binance allows 5 incoming messages per second and counts pings and pongs among them. The exchange counts
#: arrivals, not sends: a message delayed on its way (the network, a busy peer or a busy exchange reading late)
#: arrives next to the following ones, so pacing by send time needs a margin for that jitter. Control messages
#: are spaced evenly, one every half second: six arrivals within one second then need five sends squeezed by a
#: whole second (half a second when a keepalive ping falls among them). One every 1/4 s had no margin at all
#: against a reader stalled for a quarter of a second. A full resubscription (1,024 streams, 200 a message)
#: still takes under three seconds.
CONTROL_MESSAGES_PER_SECOND = 2
#: Streams per SUBSCRIBE/UNSUBSCRIBE message; several changes made together travel in one message.
STREAMS_PER_CONTROL_MESSAGE = 200
#: Replace a connection this long after it opened, well before Binance closes it at 24 h.
REPLACE_AFTER_S = binance.MAX_CONNECTION_AGE_S - 30 * 60
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 30.0
#: A connection that lived this long was healthy: the next reconnect starts again from the initial backoff.
STABLE_AFTER_S = 30.0
#: How long a replacement connection may take to confirm its subscriptions before it is given up.
ROTATION_SYNC_TIMEOUT_S = 30.0
#: How long both websockets of a replacement run side by side at most, and the frames held per stream meanwhile.
HANDOVER_TIMEOUT_S = 10.0
HANDOVER_MAX_HELD = 10_000
#: A websocket that received nothing for this long is pinged, and ended when no PONG comes within the timeout
#: (:mod:`socket_proxy.wsclient`): a missing peer is noticed within 40 s.
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
#: The TCP (and TLS) connection and the websocket upgrade together, at most.
OPEN_TIMEOUT_S = 10.0
#: The largest message accepted; a larger one ends the connection (CLOSE 1009).
MAX_FRAME_BYTES = 16 * 1024 * 1024

FrameHandler = Callable[[str, bytes], None]

def reconnect_backoff() -> Backoff:
    """The delays of one connection's reconnects (its connection attempts wait the same): exponential from
    :data:`BACKOFF_INITIAL_S`, capped at :data:`BACKOFF_MAX_S`, with full jitter so that connections do not
    retry in step."""
    return Backoff(base_s=BACKOFF_INITIAL_S, max_s=BACKOFF_MAX_S)


def rotation_backoff() -> Backoff:
    """The delays between failed replacements of a connection that still works: they start three doublings
    above :func:`reconnect_backoff`'s, which keeps the shared connection-attempt budget for reconnects."""
    return Backoff(base_s=BACKOFF_INITIAL_S * 2**3, max_s=BACKOFF_MAX_S)


class AttemptLimiter:
    """At most ``limit`` connection attempts in any ``window_s`` seconds, shared by all connections."""

    def __init__(
        self, limit: int = binance.MAX_CONNECT_ATTEMPTS, window_s: float = binance.CONNECT_ATTEMPTS_WINDOW_S
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._attempts: deque[float] = deque(maxlen=limit)

    async def acquire(self) -> None:
        """Wait until one more attempt is allowed, and count it."""
        while len(self._attempts) == self._limit:
            wait = self._attempts[0] + self._window_s - time.monotonic()
            if wait <= 0:
                break
            log.warning("connect_rate_limited", wait_s=round(wait, 3))
            await asyncio.sleep(wait)
        self._attempts.append(time.monotonic())


class _Session:
    """One websocket of an :class:`UpstreamConnection`: reads frames, and brings the exchange's subscriptions
    of this websocket to the owner's wanted set (UNSUBSCRIBE first, then SUBSCRIBE, paced)."""

    def __init__(self, ws: ExchangeSocket, owner: UpstreamConnection, route: FrameHandler | None) -> None:
        self.ws = ws
        self.owner = owner
        #: Where frames go; None drops them (a replacement websocket before its handover starts).
        self.route = route
        self.opened = time.monotonic()
        self.synced = asyncio.Event()
        #: The exchange acknowledged every subscription at least once: the connection worked.
        self.confirmed = False
        self._active: set[str] = set()
        self._pending: dict[int, tuple[str, list[str]]] = {}
        self._next_id = 1
        self._wake = asyncio.Event()
        self._wake.set()
        #: Monotonic time before which the next control message may not be sent (s).
        self._next_send_at = 0.0
        self.task = asyncio.create_task(self._run())

    def wake(self) -> None:
        """The owner's wanted streams changed."""
        self.synced.clear()
        self._wake.set()

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.ws.close()

    async def _run(self) -> None:
        sender = asyncio.create_task(self._send())
        try:
            await self._read()
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await self.ws.close()

    async def _read(self) -> None:
        # Each message is dispatched from the websocket's read callback as it completes: a text frame (Binance
        # sends JSON as text) as its UTF-8 bytes, never decoded to str only to be encoded back.
        self.ws.deliver_to(self._dispatch)
        closed = await self.ws.wait_closed()
        if not closed.clean:
            log.warning("upstream_closed", code=closed.code, reason=closed.reason)

    def _dispatch(self, raw: bytes) -> None:
        stream = binance.stream_of(raw)
        if stream is not None:
            if self.route is not None:
                self.route(stream, raw)
            return
        try:
            message = jsonutil.loads(raw)
        except jsonutil.JSONDecodeError:
            log.warning("upstream_not_json", size=len(raw))
            return
        framed = binance.split_combined(message)
        if framed is not None:
            if self.route is not None:
                self.route(framed[0], raw)
            return
        if not isinstance(message, dict):
            return
        request_id = message.get("id")
        request = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if "error" in message:
            log.error("upstream_request_refused", request=request, error=message["error"])
        self._check_synced()

    def _check_synced(self) -> None:
        if not self._pending and self._active == self.owner.wanted.keys():
            self.synced.set()
            self.confirmed = True

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                wanted = self.owner.wanted
                removed = [stream for stream in self._active if stream not in wanted]
                added = [stream for stream in wanted if stream not in self._active]
                if removed:
                    method, streams = control.UNSUBSCRIBE, removed[:STREAMS_PER_CONTROL_MESSAGE]
                    self._active.difference_update(streams)
                elif added:
                    method, streams = control.SUBSCRIBE, added[:STREAMS_PER_CONTROL_MESSAGE]
                    self._active.update(streams)
                else:
                    break
                await self._pace()
                request_id = self._next_id
                self._next_id += 1
                self._pending[request_id] = (method, streams)
                self.ws.send_text(jsonutil.dumps_str(control.request(method, streams, request_id)))
                log.debug("upstream_control", method=method, streams=len(streams), id=request_id)
            self._check_synced()

    async def _pace(self) -> None:
        wait = self._next_send_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._next_send_at = time.monotonic() + 1.0 / CONTROL_MESSAGES_PER_SECOND


class UpstreamConnection:
    """One logical connection to ``<exchange_url>/stream`` carrying the streams in :attr:`wanted`.

    ``on_frame(stream, raw)`` receives every combined-stream frame as received. Call :meth:`start` once and
    :meth:`close` at the end; :meth:`add` and :meth:`remove` change the streams at any time.
    """

    def __init__(
        self,
        url: str,
        on_frame: FrameHandler,
        limiter: AttemptLimiter,
        counters: Counters,
        max_age_s: float = REPLACE_AFTER_S,
    ) -> None:
        self.url = url
        self.on_frame = on_frame
        self.wanted: dict[str, None] = {}
        self._limiter = limiter
        self._counters = counters
        self._max_age_s = max_age_s
        self._sessions: set[_Session] = set()
        self._task: asyncio.Task[None] | None = None
        self._reconnects = reconnect_backoff()
        self._rotations = rotation_backoff()

    def add(self, stream: str) -> None:
        self.wanted[stream] = None
        self._wake()

    def remove(self, stream: str) -> None:
        self.wanted.pop(stream, None)
        self._wake()

    def _wake(self) -> None:
        for session in self._sessions:
            session.wake()

    def start(self) -> None:
        # Started by a subscriber's call, it serves every later one: none of their request ids or traces.
        self._task = detached_task(self._run())
        self._task.add_done_callback(_report_crash)

    async def close(self) -> None:
        """Stop reconnecting and close the websocket(s); idempotent."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*(session.close() for session in tuple(self._sessions)), return_exceptions=True)
        self._sessions.clear()

    async def _open(self, route: FrameHandler | None) -> _Session:
        """A new websocket whose frames go to ``route``, after as many attempts as it takes."""
        async for attempt in retrying(
            "upstream_connect_failed",
            retry_on=(OSError, TimeoutError, HandshakeError),
            base_s=BACKOFF_INITIAL_S,
            max_s=BACKOFF_MAX_S,
            url=self.url,
        ):
            with attempt:
                ws = await self._connect()
        session = _Session(ws, self, route)
        self._sessions.add(session)
        log.info("upstream_connected", url=self.url, streams=len(self.wanted))
        return session

    async def _connect(self) -> ExchangeSocket:
        """One connection attempt, within the shared attempt budget."""
        await self._limiter.acquire()
        self._counters.connect_attempts += 1
        try:
            return await ExchangeSocket.connect(
                self.url,
                open_timeout=OPEN_TIMEOUT_S,
                ping_interval=PING_INTERVAL_S,
                ping_timeout=PING_TIMEOUT_S,
                max_message_bytes=MAX_FRAME_BYTES,
            )
        except (OSError, TimeoutError, HandshakeError):
            self._counters.connect_failures += 1
            raise

    async def _drop(self, session: _Session) -> None:
        self._sessions.discard(session)
        await session.close()

    async def _run(self) -> None:
        session: _Session | None = None
        while True:
            if session is None:
                session = await self._open(route=self.on_frame)
            remaining = session.opened + self._max_age_s - time.monotonic()
            await asyncio.wait((session.task,), timeout=max(remaining, 0))
            if session.task.done():
                lived = time.monotonic() - session.opened
                # A websocket that got its subscriptions confirmed worked: the exchange restarted or dropped
                # us, so reconnect soon. One that failed before that backs off further each time.
                worked = lived >= STABLE_AFTER_S or session.confirmed
                await self._drop(session)
                session = None
                self._counters.reconnects += 1
                if worked:
                    self._reconnects.reset()
                delay = self._reconnects.next_delay()
                log.info(
                    "upstream_reconnecting", url=self.url, lived_s=round(lived, 3), retry_in_s=round(delay, 3)
                )
                await asyncio.sleep(delay)
                continue
            session = await self._rotate(session)

    async def _rotate(self, old: _Session) -> _Session:
        """Replace ``old`` by a new websocket: subscribe it, hand every stream over, then close ``old``."""
        new = await self._open(route=None)
        synced = asyncio.ensure_future(new.synced.wait())
        try:
            await asyncio.wait(
                (synced, new.task), timeout=ROTATION_SYNC_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            synced.cancel()
        if not new.synced.is_set() or new.task.done():
            await self._drop(new)
            # The old websocket still works: retry later, with growing delays.
            delay = self._rotations.next_delay()
            log.warning("upstream_rotation_failed", url=self.url, retry_in_s=round(delay, 3))
            await asyncio.sleep(delay)
            return old
        handover = Handover(self.wanted, self.on_frame)
        old.route, new.route = handover.from_old, handover.from_new
        finished = asyncio.ensure_future(handover.finished.wait())
        try:
            await asyncio.wait(
                (finished, old.task), timeout=HANDOVER_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            finished.cancel()
        unmatched = handover.finish_all()
        new.route, old.route = self.on_frame, None
        await self._drop(old)
        self._rotations.reset()
        self._counters.rotations += 1
        log.info("upstream_rotated", url=self.url, streams=len(self.wanted), unmatched_streams=unmatched)
        return new


def _report_crash(task: asyncio.Task[None]) -> None:
    # The reconnect loop only ends by cancellation; anything else must not vanish silently.
    if not task.cancelled() and task.exception() is not None:
        log.error("upstream_connection_crashed", exc_info=task.exception())


class Handover:
    """Moves streams from an old websocket to its replacement without losing or repeating a frame.

    Both websockets carry the same streams for a moment and receive the same frames (Binance sends the same
    bytes to every connection), each at its own pace. Per stream, the old websocket keeps forwarding while
    the new one's frames are held back; as soon as the old one forwards a frame the new one holds, the new
    one takes over from the frame after it. New frames that the old websocket already forwarded are skipped.
    A stream that sees no such frame (no traffic, or the old websocket died) is switched by
    :meth:`finish_all`, releasing what the new one holds. Memory: at most ``max_held`` frames per stream and
    side; beyond that the stream is switched at once.
    """

    def __init__(
        self, streams: Iterable[str], forward: FrameHandler, max_held: int = HANDOVER_MAX_HELD
    ) -> None:
        self._forward = forward
        self._max_held = max_held
        self._pending = set(streams)
        self._forwarded_old: dict[str, dict[bytes, None]] = {}
        self._held_new: dict[str, dict[bytes, None]] = {}
        self.finished = asyncio.Event()
        if not self._pending:
            self.finished.set()

    def from_old(self, stream: str, raw: bytes) -> None:
        """A frame received on the old websocket."""
        if stream not in self._pending:
            return
        self._forward(stream, raw)
        held = self._held_new.get(stream)
        if held and raw in held:
            for frame in tuple(held):
                del held[frame]
                if frame == raw:
                    break
            self._switch(stream)
            return
        forwarded = self._forwarded_old.setdefault(stream, {})
        forwarded[raw] = None
        if len(forwarded) > self._max_held:
            del forwarded[next(iter(forwarded))]

    def from_new(self, stream: str, raw: bytes) -> None:
        """A frame received on the new websocket."""
        if stream not in self._pending:
            self._forward(stream, raw)
            return
        if raw in self._forwarded_old.get(stream, ()):
            return
        held = self._held_new.setdefault(stream, {})
        held[raw] = None
        if len(held) > self._max_held:
            self._switch(stream)

    def finish_all(self) -> int:
        """Switch every stream still pending; returns how many there were."""
        pending = len(self._pending)
        for stream in tuple(self._pending):
            self._switch(stream)
        return pending

    def _switch(self, stream: str) -> None:
        self._pending.discard(stream)
        self._forwarded_old.pop(stream, None)
        for frame in self._held_new.pop(stream, {}):
            self._forward(stream, frame)
        if not self._pending:
            self.finished.set()


class Upstream:
    """The pool of :class:`UpstreamConnection` to one exchange.

    ``exchange_url``: ``wss://stream.binance.com:9443`` or a replay exchange's ``ws://host:port``; connections
    go to its ``/stream`` endpoint. :meth:`add` and :meth:`remove` never block.
    """

    def __init__(
        self,
        exchange_url: str,
        on_frame: FrameHandler,
        counters: Counters,
        *,
        max_streams: int = binance.MAX_STREAMS_PER_CONNECTION,
        max_age_s: float = REPLACE_AFTER_S,
        limiter: AttemptLimiter | None = None,
    ) -> None:
        self.url = binance.combined_stream_url(exchange_url)
        self._on_frame = on_frame
        self._counters = counters
        self._max_streams = max_streams
        self._max_age_s = max_age_s
        self._limiter = limiter or AttemptLimiter()
        self._connections: list[UpstreamConnection] = []
        self._owner: dict[str, UpstreamConnection] = {}
        self._closing: set[asyncio.Task[Any]] = set()

    @property
    def connections(self) -> int:
        return len(self._connections)

    def add(self, stream: str) -> None:
        """Subscribe ``stream`` on a connection with room, opening a new connection if all are full."""
        if stream in self._owner:
            return
        connection = next((c for c in self._connections if len(c.wanted) < self._max_streams), None)
        if connection is None:
            connection = UpstreamConnection(
                self.url, self._on_frame, self._limiter, self._counters, self._max_age_s
            )
            self._connections.append(connection)
            connection.start()
        connection.add(stream)
        self._owner[stream] = connection

    def remove(self, stream: str) -> None:
        """Unsubscribe ``stream``; a connection left without streams is closed."""
        connection = self._owner.pop(stream, None)
        if connection is None:
            return
        connection.remove(stream)
        if not connection.wanted:
            self._connections.remove(connection)
            task = asyncio.get_running_loop().create_task(connection.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every connection."""
        connections, self._connections = self._connections, []
        self._owner.clear()
        await asyncio.gather(*(c.close() for c in connections), *tuple(self._closing), return_exceptions=True)
