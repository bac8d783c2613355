"""The BFF process's one Redis pub/sub connection: subscribed to the channels its owner wants, reconnected
and resubscribed when Redis goes away.

The owner (:class:`profile_bff.connections.ConnectionManager`) says which channels it wants (``channels()``,
never empty: redis-py's ``listen()`` ends without a subscription), calls :meth:`Subscriptions.sync` after
changing them, and gets each message as ``on_message(channel, data)`` and each (re)subscription as
``await on_connected()``, which re-reads what was published while the connection was down.

A connection that fails says so (an error on read), but one whose peer vanished without closing it (a host or
network gone) would just fall silent, and prices would stop without a word. So the reader sends a ``PING`` on
it after :data:`HEARTBEAT_S` without a message, and takes the connection for lost when nothing at all came
for :data:`SILENCE_S`: it reconnects, and the owner re-reads what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crypto_mesh.logs import get_logger
from crypto_mesh.retry import Backoff, raise_if_cancelling
from profile_bff.store import MarketBus

log = get_logger(__name__)

#: Cap of the first delay before a reconnection attempt (s); the backoff doubles it up to ``reconnect_max_s``.
RECONNECT_BASE_S = 0.1
#: Seconds without a message after which the reader sends a ``PING`` on the connection (Redis answers a
#: subscribed connection's ``PING`` with a ``pong`` message).
HEARTBEAT_S = 1.0
#: Seconds without anything heard (messages, confirmations, pongs) after which the connection is taken for
#: lost.
SILENCE_S = 5.0


class Subscriptions:
    """A pub/sub connection that follows ``channels()`` (see the module docstring).

    ``on_message(channel, data)`` gets every published message (channel name decoded as UTF-8, payload
    bytes); it must not block. ``on_connected()`` runs after each (re)subscription; an error it raises is
    logged and counts as a lost connection. Reconnection attempts are spaced by
    :class:`crypto_mesh.retry.Backoff` from :data:`RECONNECT_BASE_S` up to ``reconnect_max_s`` seconds.
    """

    def __init__(
        self,
        bus: MarketBus,
        channels: Callable[[], Iterable[str]],
        on_message: Callable[[str, bytes], None],
        on_connected: Callable[[], Awaitable[None]],
        *,
        reconnect_max_s: float = 5.0,
    ) -> None:
        self._bus = bus
        self._channels = channels
        self._on_message = on_message
        self._on_connected = on_connected
        self._reconnect_max_s = reconnect_max_s
        self._pubsub: PubSub | None = None
        self._subscribed: set[str] = set()
        #: Orders the SUBSCRIBE/UNSUBSCRIBE commands and the swap of the connection.
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    @property
    def connected(self) -> bool:
        """True while the pub/sub connection is up and subscribed."""
        return self._connected.is_set()

    def start(self) -> None:
        """Start the reader: it connects, and reconnects, in the background."""
        self._reader = asyncio.create_task(self._read_forever(), name="bff-pubsub")

    async def close(self) -> None:
        """Stop the reader and close the connection."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._close_pubsub()

    async def sync(self, *, raise_errors: bool = False) -> None:
        """Bring the subscriptions in line with ``channels()``.

        Errors (``RedisError``, ``OSError``) are logged and left to the reader, which resubscribes everything
        after reconnecting, unless ``raise_errors`` (the reader's own call). Without a connection, nothing to
        do: the reader subscribes when it connects.
        """
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is None:
                return
            wanted = set(self._channels())
            try:
                if added := wanted - self._subscribed:
                    await pubsub.subscribe(*added)
                    self._subscribed |= added
                if removed := self._subscribed - wanted:
                    await pubsub.unsubscribe(*removed)
                    self._subscribed -= removed
            except (RedisError, OSError) as exc:
                if raise_errors:
                    raise
                log.warning("subscription_sync_failed", error=repr(exc))

    async def _read_forever(self) -> None:
        backoff = Backoff(base_s=RECONNECT_BASE_S, max_s=self._reconnect_max_s)
        while True:
            raise_if_cancelling()  # a cancellation a library swallowed still ends the loop
            try:
                pubsub = await self._connect()
                backoff.reset()
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                raise_if_cancelling()
                delay = backoff.next_delay()
                log.warning("pubsub_lost", error=repr(exc), retry_in_s=delay)
            except Exception:
                raise_if_cancelling()
                delay = backoff.next_delay()
                log.exception("pubsub_reader_failed", retry_in_s=delay)
            self._connected.clear()
            await self._close_pubsub()
            await asyncio.sleep(delay)

    async def _listen(self, pubsub: PubSub) -> None:
        """Hand every message to ``on_message`` until the connection fails (``RedisError``/``OSError``) or
        falls silent (:data:`SILENCE_S` without anything heard despite the ``PING`` sent after each
        :data:`HEARTBEAT_S` of quiet: redis-py's ``TimeoutError``)."""
        loop = asyncio.get_running_loop()
        heard_at = loop.time()
        while True:
            # A cancellation can be swallowed by a read with a time-out (redis-py then answers None, as for a
            # quiet second): this ends the loop all the same. Seen: a BFF's stop waiting for ever on it.
            raise_if_cancelling()
            message = await pubsub.get_message(timeout=HEARTBEAT_S)
            if message is None:
                # Nothing within HEARTBEAT_S (or only a confirmation, which get_message passes over).
                if loop.time() - heard_at >= SILENCE_S:
                    raise RedisTimeoutError(f"nothing heard on the pub/sub connection for {SILENCE_S:g} s")
                async with self._lock:
                    await pubsub.ping()
                continue
            heard_at = loop.time()
            if message["type"] == "message":
                self._on_message(message["channel"].decode("utf-8", "replace"), message["data"])

    async def _connect(self) -> PubSub:
        pubsub = await self._bus.pubsub()
        async with self._lock:
            self._pubsub = pubsub
            self._subscribed = set()
        await self.sync(raise_errors=True)
        self._connected.set()
        log.info("pubsub_subscribed", channels=len(self._subscribed))
        await self._on_connected()
        return pubsub

    async def _close_pubsub(self) -> None:
        async with self._lock:
            pubsub, self._pubsub = self._pubsub, None
            self._subscribed = set()
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
