"""The WebSocket ConnectionManager: live profiles pushed to every connected socket.

Per process there is ONE Redis pub/sub connection. It is subscribed to ``bff:portfolio`` and to channel
``<symbol>`` for each symbol that at least one locally connected user holds (reference counting by holder:
subscribed on the first holder, unsubscribed after the last). Sockets are keyed by connection, not by user,
so a second tab or a reconnect of the same user never evicts the other socket.

- On connect: the user's coins are loaded, the needed channels subscribed, a follower ``user:<id>`` is PUT
  at the aggregator for each coin (so tracking lost anywhere is restored by reconnecting), and the profile
  snapshot is queued at once.
- On a SecondStat on channel ``s``: the price cache is updated (newer ``t`` only) and each connected user
  holding ``s`` is marked for the fan-out.
- The fan-out (one task) starts once the event loop gets to it, after the pub/sub reader has dispatched
  every message Redis delivered at once: the aggregator publishes the SecondStats its clock closes in one
  tick in one pipelined round trip, so a user holding several of those coins gets ONE message with all their
  new prices (``coalesce_s`` > 0 waits that long after the first price not yet pushed, for publishers whose
  prices of one second arrive apart). It renders each marked user's whole profile once
  (:meth:`Holdings.message <profile_bff.portfolio.Holdings.message>`: the parts that depend on prices alone
  are shared by every user holding the same coins, and a coin's total is computed again only when its price
  changed), frames it once as a WebSocket text frame, and writes that frame to the user's sockets, in slices
  of :data:`FAN_OUT_SLICE` users between which the event loop serves other work; prices arriving meanwhile
  are in the message of every user not yet served, and the others get them in the next round.
- On ``{"user_id": n}`` on ``bff:portfolio`` for a connected user: the user's coins are reloaded from the
  database, subscriptions adjusted, and the profile queued at once (not coalesced); so a change made through
  any replica shows up without reconnecting.

Backpressure: each socket has a "stale" flag instead of a queue. The fan-out writes a frame straight into the
transport of a socket whose write buffer is empty (the write cannot wait, and no task wakes up per socket);
any other socket is marked stale and gets a writer task of its own, which renders the latest profile when
the socket is free and ends once it has caught up (conflation: a slow socket skips to the latest profile,
never a backlog; a profile is built once per change per user), so a slow socket never delays the fan-out
or the others.
A peer that stops reading fills its TCP buffers and the transport's write buffer, and the writer's send
then waits: after ``send_timeout_s`` of waiting the connection is aborted (a close frame could not reach a
peer that does not read), so each stalled socket holds at most one profile and those buffers.

Tracking model: the aggregator follower ``user:<id>`` follows every symbol the user HOLDS, connected or not
(GET /v2/user/profile needs prices without a socket); it is set from the database on each connect (``PUT
/v1/followers/user:<id>``, whole set) and, at start-up, for every holder (:meth:`rebuild_followers`), and
changed by the coin routes; the aggregator keeps followers in Redis, so its restarts keep them. What the last
local CLIENT of a symbol leaving releases is this process's Redis subscription to the symbol's channel.
If Redis goes away the subscriber reconnects with exponential backoff, resubscribes every channel and
re-reads the latest prices.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from decimal import Decimal
from struct import Struct
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from crypto_mesh import jsonutil
from crypto_mesh.logs import get_logger
from crypto_mesh.runtime import raise_if_cancelling
from profile_bff.clients import AggregatorClient, AggregatorUnavailable
from profile_bff.portfolio import Holdings, InvalidSecondStat, LatestPrices, Price, parse_second_stat
from profile_bff.store import PORTFOLIO_CHANNEL, MarketBus, ProfileNotFound, ProfileStore, StoreUnavailable

log = get_logger(__name__)

#: Close code when the profile behind a socket is deleted (4000-4999: private use, RFC 6455 §7.4.2).
CLOSE_PROFILE_DELETED = 4404
#: Close code when the access token (or the one a ticket was issued for) expires during the connection: the
#: client refreshes its token and reconnects. 4401 mirrors HTTP 401 in the private-use range.
CLOSE_TOKEN_EXPIRED = 4401
#: Largest profile (bytes) the fan-out writes inline; a larger one goes through the socket's writer task.
#: Well below the transports' 64 KiB high-water mark, so an inline write into an empty buffer never pauses.
INLINE_MAX_BYTES = 16 * 1024
#: Users the fan-out serves before it lets the event loop run other work (reads, REST requests, pings).
FAN_OUT_SLICE = 256
_HEADER_7 = Struct("!BB").pack
_HEADER_16 = Struct("!BBH").pack
_HEADER_64 = Struct("!BBQ").pack
_TEXT = WSMsgType.TEXT


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one final, unmasked WebSocket text frame (RFC 6455 §5.2: a server's frames are not
    masked): ``0x81``, the payload length in 7, 7+16 or 7+64 bits, then the payload. Built once per user
    and written to each of its sockets, as aiohttp's writer would frame it."""
    length = len(payload)
    if length < 126:
        return _HEADER_7(0x81, length) + payload
    if length < 65536:
        return _HEADER_16(0x81, 126, length) + payload
    return _HEADER_64(0x81, 127, length) + payload


class Client:
    """One WebSocket connection: the socket, a "stale" flag and, only while it is behind, a writer task.

    A profile reaches the socket in one of two ways:

    - inline, from the manager's fan-out (:meth:`write_now`): when nothing is waiting in the transport's
      write buffer, the user's frame, encoded once for all its sockets, is written into the transport at once.
      A frame of at most :data:`INLINE_MAX_BYTES` into an empty buffer cannot make the transport pause, so
      the write never waits, and no task wakes up per socket;
    - through the writer: otherwise :meth:`mark_stale` only says the user's profile changed, and a writer
      task, started on demand and ended once the socket has caught up, renders the profile (``render()``:
      the latest state as UTF-8 JSON, or ``None`` once the user is gone) when the socket is free. So however
      many changes a slow socket misses, it costs one flag and gets the latest profile (conflation). A send
      that waits longer than ``send_timeout_s`` (the peer stopped reading and every buffer is full) aborts
      the connection through ``transport``.

    Nothing is sent before :meth:`start_writer` (the socket is prepared then); a snapshot marked before is
    sent by it.
    """

    __slots__ = ("_open", "_render", "_send_timeout_s", "_stale", "_transport", "_writer", "user_id", "ws")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        user_id: int,
        render: Callable[[], bytes | None],
        *,
        send_timeout_s: float = 10.0,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.ws = ws
        self.user_id = user_id
        self._render = render
        self._send_timeout_s = send_timeout_s
        self._transport = transport
        self._open = False
        self._stale = False
        self._writer: asyncio.Task[None] | None = None

    def mark_stale(self) -> None:
        """The profile changed: send the latest one when the socket is free; never blocks."""
        self._stale = True
        if self._open and self._writer is None:
            self._writer = asyncio.create_task(self._write(), name=f"ws-writer-{self.user_id}")

    def start_writer(self) -> None:
        """The socket is prepared: send what is pending (the snapshot), and from now on every change."""
        self._open = True
        if self._stale:
            self.mark_stale()

    def write_now(self, frame: bytes) -> bool:
        """Write ``frame`` (a whole encoded WebSocket frame, :func:`text_frame`, of at most
        :data:`INLINE_MAX_BYTES`) into the transport at once if the socket can take it without waiting: it is
        open, not closing, no writer is behind, and nothing waits in the transport's write buffer. Returns
        False, having written nothing, otherwise."""
        transport = self._transport
        if (
            self._open
            and self._writer is None
            and transport is not None
            and not self.ws.closed
            and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
        ):
            transport.write(frame)
            return True
        return False

    async def stop_writer(self) -> None:
        """Send nothing more and stop the writer task (a message not yet sent is dropped)."""
        self._open = False
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write(self) -> None:
        try:
            while self._stale and self._open:
                self._stale = False
                message = self._render()
                if message is None:
                    return
                try:
                    async with asyncio.timeout(self._send_timeout_s):
                        await self.ws.send_frame(message, _TEXT)
                except TimeoutError:
                    log.warning("slow_client_aborted", user_id=self.user_id, waited_s=self._send_timeout_s)
                    self._open = False
                    if self._transport is not None:
                        self._transport.abort()
                    return
                except (ConnectionError, RuntimeError):
                    # The socket is closing; the handler's disconnect() will stop this task.
                    self._open = False
                    return
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None


class _User:
    """A locally connected user: name, coins as last loaded, its sockets, and its refresh state."""

    __slots__ = ("clients", "coins", "holdings", "message", "name", "refresh_again", "refreshing")

    def __init__(self, user_id: int, name: str) -> None:
        self.name = name
        #: ``coins`` prepared for rendering; rebuilt with them.
        self.holdings = Holdings(user_id, name, {})
        #: The rendered profile (UTF-8 JSON) of the current state for the sockets' writers (the fan-out writes
        #: frames of its own); ``None`` after a change until a writer renders it.
        self.message: bytes | None = None
        self.coins: dict[str, Decimal] = {}
        #: The user's sockets here, in connect order (a tuple: every fan-out iterates it, and it rarely changes).
        self.clients: tuple[Client, ...] = ()
        self.refreshing = False
        self.refresh_again = False


class ConnectionManager:
    """Registers sockets, keeps the Redis subscriptions, and pushes profiles (see the module docstring).

    ``reconnect_max_s`` caps the backoff between pub/sub reconnection attempts (seconds). ``coalesce_s``
    (seconds, ≥ 0) is the coalescing window of price pushes: the fan-out starts that long after the first
    price not yet pushed arrived (0, the default: as soon as the event loop gets to it, after the reader has
    dispatched what Redis delivered together), so that prices published a little apart reach a user holding
    several of them as one message, at the cost of up to that much latency for every price.
    """

    def __init__(
        self,
        store: ProfileStore,
        bus: MarketBus,
        aggregator: AggregatorClient,
        *,
        reconnect_max_s: float = 5.0,
        coalesce_s: float = 0.0,
    ) -> None:
        if coalesce_s < 0:
            raise ValueError("coalesce_s must be >= 0")
        self._store = store
        self._bus = bus
        self._aggregator = aggregator
        self._reconnect_max_s = reconnect_max_s
        self._users: dict[int, _User] = {}
        #: symbol → the locally connected users holding it; a symbol is here iff it must be subscribed. A dict
        #: as an ordered set: a fan-out walks the users in the order they connected, so that the objects of
        #: one user after another, allocated one after another, are near each other in memory.
        self._holders: dict[str, dict[_User, None]] = {}
        #: latest price of each symbol in ``_holders``; pruned with it.
        self._prices = LatestPrices()
        self._pubsub: PubSub | None = None
        self._subscribed: set[str] = set()
        self._subscription_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._coalesce_s = coalesce_s
        #: Users whose profile has new prices not yet pushed, in arrival order (a dict as an ordered set).
        self._dirty: dict[_User, None] = {}
        #: Event-loop time at which the oldest entry of ``_dirty`` arrived.
        self._dirty_since = 0.0
        self._dirty_event = asyncio.Event()
        self._pusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()

    @property
    def subscriber_connected(self) -> bool:
        """True while the pub/sub connection is up and subscribed."""
        return self._connected.is_set()

    def start(self) -> None:
        """Start the pub/sub reader (it connects, and reconnects, in the background) and the fan-out."""
        self._reader = asyncio.create_task(self._read_forever(), name="bff-pubsub")
        self._pusher = asyncio.create_task(self._push_forever(), name="bff-fan-out")

    async def connect(
        self,
        ws: web.WebSocketResponse,
        user_id: int,
        *,
        send_timeout_s: float = 10.0,
        transport: asyncio.Transport | None = None,
    ) -> Client:
        """Register a socket of ``user_id`` before it is prepared, and queue the profile snapshot.

        ``transport`` is the socket's (``request.transport``): the fan-out writes inline while its write
        buffer is empty, and it is aborted when a send waits longer than ``send_timeout_s`` (a peer that
        stops reading).
        Raises :class:`ProfileNotFound` or :class:`StoreUnavailable` (nothing is registered then), so the
        handler can still answer with an HTTP status.
        """
        holdings = await self._store.load(user_id)
        client = Client(
            ws, user_id, lambda: self._render(user_id), send_timeout_s=send_timeout_s, transport=transport
        )
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = _User(user_id, holdings.name)
        user.clients = (*user.clients, client)
        try:
            await self._apply_coins(user_id, user, holdings.coins)
        except BaseException:
            await self.disconnect(client)
            raise
        if holdings.coins:
            self._spawn(self._set_followed(user_id, sorted(holdings.coins)))
        # The snapshot goes to the new socket only: the user's other tabs have nothing new to show.
        client.mark_stale()
        return client

    async def rebuild_followers(self) -> int:
        """Set the aggregator follower ``user:<id>`` of every holder to its coins (BFF start-up: whatever
        the aggregator lost while the BFF was down is restored). Returns the number of holders; raises
        :class:`StoreUnavailable` or :class:`AggregatorUnavailable` for the caller to retry."""
        held = await self._store.holders()
        for user_id, symbols in held.items():
            await self._aggregator.set_followed(user_id, symbols)
        return len(held)

    async def _set_followed(self, user_id: int, symbols: list[str]) -> None:
        try:
            await self._aggregator.set_followed(user_id, symbols)
        except AggregatorUnavailable as exc:
            log.warning("follow_failed", user_id=user_id, symbols=symbols, error=str(exc))

    async def disconnect(self, client: Client) -> None:
        """Unregister a socket; the user's subscriptions go with its last socket."""
        await client.stop_writer()
        user = self._users.get(client.user_id)
        if user is None or client not in user.clients:
            return
        user.clients = tuple(other for other in user.clients if other is not client)
        if user.clients:
            return
        del self._users[client.user_id]
        for symbol in user.coins:
            self._release(symbol, user)
        await self._sync_subscriptions()

    async def close(self) -> None:
        """Close every socket with 1001 (going away), stop the reader and background tasks."""
        clients = [client for user in self._users.values() for client in user.clients]
        await asyncio.gather(
            *(client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for client in clients),
            return_exceptions=True,
        )
        tasks = [*self._tasks, *(task for task in (self._reader, self._pusher) if task is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_pubsub()

    # -- subscriptions ---------------------------------------------------------------------------------

    def _acquire(self, symbol: str, user: _User) -> None:
        self._holders.setdefault(symbol, {})[user] = None

    def _release(self, symbol: str, user: _User) -> None:
        holders = self._holders.get(symbol)
        if holders is None:
            return
        holders.pop(user, None)
        if not holders:
            del self._holders[symbol]
            self._prices.discard(symbol)

    async def _apply_coins(self, user_id: int, user: _User, coins: dict[str, Decimal]) -> None:
        """Make ``coins`` the user's holdings: adjust holders and subscriptions, seed new prices."""
        before, after = set(user.coins), set(coins)
        user.coins = dict(coins)
        user.holdings = Holdings(user_id, user.name, user.coins)
        user.message = None
        for symbol in after - before:
            self._acquire(symbol, user)
        for symbol in before - after:
            self._release(symbol, user)
        await self._sync_subscriptions()
        await self._seed_prices(symbol for symbol in after if symbol not in self._prices)

    async def _sync_subscriptions(self, *, raise_errors: bool = False) -> None:
        """Bring the pub/sub subscriptions in line with ``_holders`` (plus ``bff:portfolio``).

        One lock orders the SUBSCRIBE/UNSUBSCRIBE commands. Errors are left to the reader, which resubscribes
        everything after reconnecting, unless ``raise_errors`` (the reader's own call).
        """
        async with self._subscription_lock:
            pubsub = self._pubsub
            if pubsub is None:
                return
            wanted = {PORTFOLIO_CHANNEL, *self._holders}
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

    async def _seed_prices(self, symbols: Iterable[str]) -> None:
        """Fill the price cache from ``price:<symbol>`` keys (after subscribing, so no SecondStat is lost)."""
        wanted = list(symbols)
        try:
            prices = await self._bus.latest_prices(wanted)
        except StoreUnavailable as exc:
            log.warning("price_seed_failed", symbols=wanted, error=str(exc))
            return
        for symbol, price in prices.items():
            self._remember(symbol, price)

    def _remember(self, symbol: str, price: Price) -> bool:
        """Cache ``price`` unless a newer second is cached or no local user holds the symbol."""
        if symbol not in self._holders:
            return False
        cached = self._prices.get(symbol)
        if cached is not None and cached.second_ms > price.second_ms:
            return False
        self._prices.set(symbol, price)
        return True

    # -- pushing ---------------------------------------------------------------------------------------

    def _push(self, user_id: int, user: _User) -> None:
        user.message = None
        for client in user.clients:
            client.mark_stale()

    def _render(self, user_id: int) -> bytes | None:
        """The user's profile as UTF-8 JSON for its current coins and prices, built once per change and
        shared by its sockets; ``None`` once the user has no socket here."""
        user = self._users.get(user_id)
        if user is None:
            return None
        if user.message is None:
            user.message = jsonutil.exact_copy(user.holdings.message(self._prices))
        return user.message

    def _mark_dirty(self, users: dict[_User, None]) -> None:
        """New prices for ``users``: the fan-out pushes them next (after the coalescing window, if any)."""
        if not self._dirty:
            self._dirty_since = asyncio.get_running_loop().time()
            self._dirty_event.set()
        self._dirty.update(users)

    async def _push_forever(self) -> None:
        """The fan-out: after the coalescing window, if any, push each dirty user's profile to its sockets,
        rendered once per user; written inline where the socket can take it now, else through its writer."""
        loop = asyncio.get_running_loop()
        while True:
            raise_if_cancelling()  # a cancellation a library swallowed still ends the loop
            await self._dirty_event.wait()
            if (wait_s := self._dirty_since + self._coalesce_s - loop.time()) > 0:
                await asyncio.sleep(wait_s)
            self._dirty_event.clear()
            batch, self._dirty = self._dirty, {}
            try:
                await self._fan_out(batch)
            except Exception:
                raise_if_cancelling()
                log.exception("fan_out_failed", users=len(batch))

    async def _fan_out(self, users: Iterable[_User]) -> None:
        """Render each user's profile once and write it to the user's sockets, :data:`FAN_OUT_SLICE` users at
        a time: a slice is rendered, then written, then the event loop serves other work. A user whose last
        socket closed meanwhile is skipped."""
        prices, dirty = self._prices, self._dirty
        rendered: list[tuple[_User, bytes]] = []
        for user in users:
            if not user.clients:
                continue
            if dirty:
                # Rendered now with the latest prices: a price that marked it again meanwhile is in this message.
                dirty.pop(user, None)
            # Rendered for this fan-out only: a socket it cannot write to now renders the latest profile
            # again in its writer (_render), the rare case.
            user.message = None
            rendered.append((user, text_frame(user.holdings.message(prices))))
            if len(rendered) == FAN_OUT_SLICE:
                self._write_rendered(rendered)
                rendered.clear()
                await asyncio.sleep(0)
        self._write_rendered(rendered)

    @staticmethod
    def _write_rendered(rendered: list[tuple[_User, bytes]]) -> None:
        """Write each user's frame inline to every socket that can take it now; mark the others stale (their
        writer sends the latest profile when they are free)."""
        for user, frame in rendered:
            if len(frame) > INLINE_MAX_BYTES:
                for client in user.clients:
                    client.mark_stale()
                continue
            for client in user.clients:
                if not client.write_now(frame):
                    client.mark_stale()

    def _follow_in_background(self, user_id: int, symbols: Iterable[str]) -> None:
        wanted = sorted(symbols)
        if wanted:
            self._spawn(self._follow(user_id, wanted))

    async def _follow(self, user_id: int, symbols: list[str]) -> None:
        for symbol in symbols:
            try:
                await self._aggregator.follow(symbol, user_id)
            except AggregatorUnavailable as exc:
                log.warning("follow_failed", user_id=user_id, symbol=symbol, error=str(exc))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the pub/sub reader ----------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        delay = 0.1
        while True:
            raise_if_cancelling()  # a cancellation a library swallowed still ends the loop
            try:
                pubsub = await self._connect_pubsub()
                delay = 0.1
                async for message in pubsub.listen():
                    self._dispatch(message)
            except (RedisError, OSError) as exc:
                raise_if_cancelling()
                log.warning("pubsub_lost", error=repr(exc), retry_in_s=delay)
            except Exception:
                raise_if_cancelling()
                log.exception("pubsub_reader_failed", retry_in_s=delay)
            self._connected.clear()
            await self._close_pubsub()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_s)

    async def _connect_pubsub(self) -> PubSub:
        pubsub = self._bus.pubsub()
        async with self._subscription_lock:
            self._pubsub = pubsub
            self._subscribed = set()
        await self._sync_subscriptions(raise_errors=True)
        self._connected.set()
        log.info("pubsub_subscribed", channels=len(self._subscribed))
        # Prices published while disconnected were missed: re-read them and refresh every user.
        await self._seed_prices(list(self._holders))
        for user_id, user in list(self._users.items()):
            self._push(user_id, user)
        return pubsub

    async def _close_pubsub(self) -> None:
        async with self._subscription_lock:
            pubsub, self._pubsub = self._pubsub, None
            self._subscribed = set()
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    def _dispatch(self, message: dict) -> None:
        if message.get("type") != "message":
            return
        channel = message["channel"].decode("utf-8", "replace")
        if channel == PORTFOLIO_CHANNEL:
            self._on_portfolio_change(message["data"])
        else:
            self._on_second_stat(channel, message["data"])

    def _on_second_stat(self, symbol: str, data: bytes) -> None:
        try:
            price = parse_second_stat(data)
        except InvalidSecondStat as exc:
            log.warning("malformed_second_stat", symbol=symbol, error=str(exc))
            return
        if self._remember(symbol, price):  # only a symbol someone here holds
            self._mark_dirty(self._holders[symbol])

    def _on_portfolio_change(self, data: bytes) -> None:
        try:
            user_id = jsonutil.loads(data)["user_id"]
        except (jsonutil.JSONDecodeError, TypeError, KeyError):
            log.warning("malformed_portfolio_notice", data=data[:100])
            return
        user = self._users.get(user_id) if isinstance(user_id, int) else None
        if user is None:
            return
        if user.refreshing:
            # One refresh per user at a time; changes during it are picked up by one more round.
            user.refresh_again = True
            return
        user.refreshing = True
        self._spawn(self._refresh(user_id, user))

    async def _refresh(self, user_id: int, user: _User) -> None:
        try:
            while True:
                user.refresh_again = False
                try:
                    holdings = await self._store.load(user_id)
                except ProfileNotFound:
                    await self._close_user(user, CLOSE_PROFILE_DELETED, b"profile deleted")
                    return
                except StoreUnavailable as exc:
                    log.warning("portfolio_refresh_failed", user_id=user_id, error=str(exc))
                    return
                if self._users.get(user_id) is not user:
                    return
                added = set(holdings.coins) - set(user.coins)
                await self._apply_coins(user_id, user, holdings.coins)
                # Following again retries any PUT that failed when the coin was added.
                self._follow_in_background(user_id, added)
                self._push(user_id, user)
                if not user.refresh_again:
                    return
        finally:
            user.refreshing = False

    async def _close_user(self, user: _User, code: int, message: bytes) -> None:
        await asyncio.gather(
            *(client.ws.close(code=code, message=message) for client in user.clients),
            return_exceptions=True,
        )
