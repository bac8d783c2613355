"""The WebSocket ConnectionManager: who is connected to this process, what they hold, and the push of their
live profiles.

Its parts: :mod:`profile_bff.sockets` (one socket: inline writes, its writer, the abort of a peer that stopped
reading), :mod:`profile_bff.subscriptions` (the process's one Redis pub/sub connection) and
:mod:`profile_bff.fanout` (the rules, pure: conflation of prices, the coalescing window, backpressure).

The pub/sub connection is subscribed to ``bff:portfolio`` and to channel ``<symbol>`` for each symbol that at
least one locally connected user holds (subscribed on the first holder, unsubscribed after the last). Sockets
are keyed by connection, not by user, so a second tab or a reconnect of the same user never evicts the other
socket.

- On connect: the user's coins are loaded, the needed channels subscribed, a follower ``user:<id>`` is PUT
  at the aggregator for each coin (so tracking lost anywhere is restored by reconnecting), and the profile
  snapshot is queued at once.
- On a SecondStat on channel ``s``: the price is kept unless a later second is (conflation), and each
  connected user holding ``s`` joins the coalescing window.
- The fan-out (one task) starts once the event loop gets to it, after the pub/sub reader has dispatched
  every message Redis delivered at once: the aggregator publishes the SecondStats its clock closes in one
  tick in one pipelined round trip, so a user holding several of those coins gets ONE message with all their
  new prices (``coalesce_s`` > 0 waits that long after the first price not yet pushed, for publishers whose
  prices of one second arrive apart). It renders each waiting user's whole profile once
  (:meth:`Holdings.message <profile_bff.portfolio.Holdings.message>`: the parts that depend on prices alone
  are shared by every user holding the same coins, and a coin's total is computed again only when its price
  changed), frames it once as a WebSocket text frame, and writes that frame to the user's sockets, in slices
  of about :data:`FAN_OUT_SLICE_S` each (:class:`~profile_bff.fanout.FanOutSlices` sizes them from the last
  one's cost per user) between which the event loop serves other work; prices arriving meanwhile
  are in the message of every user not yet served, and the others get them in the next round. A socket that
  cannot take the frame at once is marked stale and gets the latest profile from its own writer (a slow
  socket never delays the fan-out or the others, and never holds a backlog).
- On ``{"user_id": n, "alert": {...}}`` on ``bff:alerts`` for a connected user: the alert to each of its
  sockets, queued apart from the profile (never conflated), once per socket; at connect (and after the
  pub/sub reconnects) the user's unacknowledged firings are queued the same way.
- On ``{"user_id": n}`` on ``bff:portfolio`` for a connected user: the user's coins are reloaded from the
  database, subscriptions adjusted, and the profile queued at once (not coalesced); so a change made through
  any replica shows up without reconnecting.

Tracking model: the aggregator follower ``user:<id>`` follows every symbol the user HOLDS, connected or not
(GET /v2/user/profile needs prices without a socket); it is set from the database on each connect (``PUT
/v1/followers/user:<id>``, whole set) and, at start-up, for every holder (:meth:`profile_bff.portfolios.Portfolios.rebuild_followers`), and
changed by the coin routes; the aggregator keeps followers in Redis, so its restarts keep them. What the last
local CLIENT of a symbol leaving releases is this process's Redis subscription to the symbol's channel.
If Redis goes away the subscriber reconnects with backoff, resubscribes every channel, re-reads the latest
prices and pushes every profile again.

REST reads of prices (:meth:`ConnectionManager.latest_prices`, for ``GET /v2/user/profile``) use the same
connection: a symbol read is subscribed too, for :data:`PRICE_WATCH_S` after its last read
(:class:`~profile_bff.fanout.WatchedPrices`), and once a SecondStat of it has been heard, reads take its price
from memory instead of an ``MGET``. While the connection is down, and for a symbol not heard of since it was
first read, reads go to the ``price:<symbol>`` keys as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from decimal import Decimal
from typing import Any

from aiohttp import WSCloseCode, web

from crypto_mesh import jsonutil
from crypto_mesh.logs import get_logger
from crypto_mesh.metrics import latency_histogram
from crypto_mesh.retry import raise_if_cancelling
from profile_bff.clients import AggregatorClient
from profile_bff.errors import AggregatorUnavailable, ProfileNotFound, StoreUnavailable
from profile_bff.fanout import CoalescingWindow, FanOutSlices, HeldPrices, WatchedPrices
from profile_bff.portfolio import Holdings, InvalidSecondStat, Price, parse_second_stat
from profile_bff.sockets import CLOSE_PROFILE_DELETED, Client, text_frame
from profile_bff.alerts import alert_json
from profile_bff.alertstore import AlertStore
from profile_bff.store import ALERTS_CHANNEL, PORTFOLIO_CHANNEL, MarketBus, ProfileStore
from profile_bff.subscriptions import Subscriptions

log = get_logger(__name__)

#: How long (seconds) one slice of the fan-out holds the event loop before it lets other work run (reads, REST
#: requests, pings); a slice serves 8 to 256 users.
FAN_OUT_SLICE_S = 0.001
#: Unacknowledged alert firings a socket is sent when it connects, at most (the newest; the rest are listed by
#: ``GET /v2/user/alerts/events?unacked=true``).
UNACKNOWLEDGED_AT_CONNECT = 100
#: How long (seconds) a symbol a REST read asked for stays subscribed after that read, so that the next reads
#: take its price from the subscription (:class:`~profile_bff.fanout.WatchedPrices`). A client polling its
#: profile once a minute keeps its coins watched; every watched symbol costs one SecondStat a second (parsed,
#: about 5 µs) while it trades.
PRICE_WATCH_S = 90.0


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
        #: The user's sockets here, in connect order (a tuple: every fan-out iterates it, and it rarely
        #: changes).
        self.clients: tuple[Client, ...] = ()
        self.refreshing = False
        self.refresh_again = False


class ConnectionManager:
    """Registers sockets, keeps the Redis subscriptions, and pushes profiles (see the module docstring).

    ``reconnect_max_s`` caps the backoff between pub/sub reconnection attempts (seconds). ``coalesce_s``
    (seconds, ≥ 0, else :class:`ValueError`) is the coalescing window of price pushes
    (:class:`~profile_bff.fanout.CoalescingWindow`): the fan-out starts that long after the first price not
    yet pushed arrived (0, the default: as soon as the event loop gets to it, after the reader has
    dispatched what Redis delivered together), so that prices published a little apart reach a user holding
    several of them as one message, at the cost of up to that much latency for every price.
    """

    def __init__(
        self,
        store: ProfileStore,
        bus: MarketBus,
        aggregator: AggregatorClient,
        *,
        alerts: AlertStore | None = None,
        reconnect_max_s: float = 5.0,
        coalesce_s: float = 0.0,
    ) -> None:
        self._store = store
        self._alerts = alerts
        self._bus = bus
        self._aggregator = aggregator
        self._users: dict[int, _User] = {}
        #: Who holds which symbol here, and the newest price of each; a symbol is held iff it is subscribed.
        self._held: HeldPrices[_User] = HeldPrices()
        #: Symbols REST reads asked for lately, subscribed too, and the newest price heard of each.
        self._watched = WatchedPrices(PRICE_WATCH_S, time.monotonic)
        #: Prices REST reads took from the subscription and from Redis (``bff_price_reads_total{source}``).
        self.price_reads = {"subscription": 0, "redis": 0}
        #: Users whose profile has new prices not yet pushed.
        self._window: CoalescingWindow[_User] = CoalescingWindow(coalesce_s, time.monotonic)
        self._window_opened = asyncio.Event()
        #: How many users a fan-out slice serves, from the cost per user of the last slice.
        self._slices = FanOutSlices(FAN_OUT_SLICE_S, min_users=8, max_users=256)
        self._subscriptions = Subscriptions(
            bus, self._channels, self._on_message, self._catch_up, reconnect_max_s=reconnect_max_s
        )
        self._pusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: When the first price not yet pushed arrived (time.perf_counter() s), for :attr:`fan_out_latency`.
        self._first_price_at: float | None = None
        #: ``bff_ws_fan_out_seconds``: a price's arrival from Redis → its profiles written to the sockets.
        self.fan_out_latency = latency_histogram(
            "bff_ws_fan_out_seconds",
            "From the first price of a fan-out read from Redis to its profiles written to every socket (s).",
        )

    @property
    def socket_count(self) -> int:
        """WebSocket connections open on this process now."""
        return sum(len(user.clients) for user in self._users.values())

    @property
    def subscriber_connected(self) -> bool:
        """True while the pub/sub connection is up and subscribed."""
        return self._subscriptions.connected

    @property
    def watched_count(self) -> int:
        """Symbols subscribed for REST reads now (:data:`PRICE_WATCH_S`)."""
        return len(self._watched.symbols)

    def start(self) -> None:
        """Start the pub/sub reader (it connects, and reconnects, in the background), the fan-out and the
        expiry of watched symbols."""
        self._subscriptions.start()
        self._pusher = asyncio.create_task(self._push_forever(), name="bff-fan-out")
        self._spawn(self._expire_watched_forever())

    async def latest_prices(self, symbols: Iterable[str]) -> dict[str, Price]:
        """The latest price of each of ``symbols`` that has one, for REST reads (the read of
        :class:`profile_bff.portfolios.MarketPort`): the newest SecondStat heard on the subscription where
        there is one (see the module docstring), else the ``price:<symbol>`` key. Each symbol is watched from
        now on. Raises :class:`StoreUnavailable` when keys must be read and Redis is down."""
        wanted = list(symbols)
        known, missing, added = self._watched.read(wanted)
        if added:
            self._spawn(self._subscriptions.sync())
        if not self._subscriptions.connected:
            # Prices heard before the connection was lost may have been superseded since.
            known, missing = {}, wanted
        if missing:
            known.update(await self._bus.latest_prices(missing))
        self.price_reads["subscription"] += len(wanted) - len(missing)
        self.price_reads["redis"] += len(missing)
        return known

    async def _expire_watched_forever(self) -> None:
        """Every quarter of :data:`PRICE_WATCH_S`, stop watching (and unsubscribe) the symbols no read asked
        for in that long."""
        while True:
            raise_if_cancelling()  # a cancellation redis-py swallowed in sync() still ends the loop
            await asyncio.sleep(PRICE_WATCH_S / 4)
            if self._watched.expire():
                await self._subscriptions.sync()

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
        # After registering: an alert published from now on reaches the socket live, one published before is
        # among the unacknowledged ones (an alert both ways is sent once: Client.send_alert).
        await self._send_unacknowledged(user_id, (client,))
        return client

    async def _send_unacknowledged(self, user_id: int, clients: Iterable[Client]) -> None:
        """Queue the user's unacknowledged firings (the newest :data:`UNACKNOWLEDGED_AT_CONNECT`, oldest
        first) on ``clients``; logged and skipped while the database is down."""
        if self._alerts is None:
            return
        try:
            firings = await self._alerts.firings(
                user_id, before_seq=None, limit=UNACKNOWLEDGED_AT_CONNECT, unacked_only=True
            )
        except StoreUnavailable as exc:
            log.warning("unacknowledged_alerts_failed", user_id=user_id, error=str(exc))
            return
        for firing in reversed(firings):
            message = jsonutil.dumps(alert_json(firing))
            for client in clients:
                client.send_alert(firing.alert_id, message)

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
            self._held.release(user, symbol)
        await self._subscriptions.sync()

    async def close(self) -> None:
        """Close every socket with 1001 (going away), stop the reader and background tasks."""
        clients = [client for user in self._users.values() for client in user.clients]
        await asyncio.gather(
            *(client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for client in clients),
            return_exceptions=True,
        )
        tasks = [*self._tasks, *(task for task in (self._pusher,) if task is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._subscriptions.close()

    # -- holdings and prices ---------------------------------------------------------------------------

    def _channels(self) -> Iterable[str]:
        """The pub/sub channels this process needs: ``bff:portfolio``, ``bff:alerts``, and the channel of
        every held or watched symbol."""
        return (PORTFOLIO_CHANNEL, ALERTS_CHANNEL, *self._held.symbols, *self._watched.symbols)

    async def _apply_coins(self, user_id: int, user: _User, coins: dict[str, Decimal]) -> None:
        """Make ``coins`` the user's holdings: adjust holders and subscriptions, seed new prices."""
        before, after = set(user.coins), set(coins)
        user.coins = dict(coins)
        user.holdings = Holdings(user_id, user.name, user.coins)
        user.message = None
        for symbol in after - before:
            self._held.hold(user, symbol)
        for symbol in before - after:
            self._held.release(user, symbol)
        await self._subscriptions.sync()
        await self._seed_prices(self._held.unpriced(after))

    async def _seed_prices(self, symbols: list[str]) -> None:
        """Fill the price cache from ``price:<symbol>`` keys (after subscribing, so no SecondStat is lost)."""
        try:
            prices = await self._bus.latest_prices(symbols)
        except StoreUnavailable as exc:
            log.warning("price_seed_failed", symbols=symbols, error=str(exc))
            return
        for symbol, price in prices.items():
            self._held.offer(symbol, price)

    async def _catch_up(self) -> None:
        """After each (re)subscription: prices published while disconnected were missed, so re-read them and
        refresh every user; the watched prices wait for their next SecondStat."""
        self._watched.forget_prices()
        await self._seed_prices(list(self._held.symbols))
        for user_id, user in list(self._users.items()):
            self._push(user)
            # Alerts published while disconnected: those not acknowledged yet.
            self._spawn(self._send_unacknowledged(user_id, user.clients))

    # -- pushing ---------------------------------------------------------------------------------------

    @staticmethod
    def _push(user: _User) -> None:
        """Send the user's profile to each of its sockets through their writers, at once (not coalesced)."""
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
            user.message = jsonutil.exact_copy(user.holdings.message(self._held.prices))
        return user.message

    async def _push_forever(self) -> None:
        """The fan-out: once the coalescing window is due, push each waiting user's profile to its sockets,
        rendered once per user; written inline where the socket can take it now, else through its writer."""
        while True:
            raise_if_cancelling()  # a cancellation a library swallowed still ends the loop
            await self._window_opened.wait()
            if (wait_s := self._window.due_in()) > 0:
                await asyncio.sleep(wait_s)
            self._window_opened.clear()
            batch = self._window.take()
            first_price_at, self._first_price_at = self._first_price_at, None
            try:
                await self._fan_out(batch)
            except Exception:
                raise_if_cancelling()
                log.exception("fan_out_failed", users=len(batch))
            else:
                if first_price_at is not None and batch:
                    self.fan_out_latency.observe(time.perf_counter() - first_price_at)

    async def _fan_out(self, users: Iterable[_User]) -> None:
        """Render each user's profile once and write it to the user's sockets, a slice of users at a time
        (:attr:`_slices`): a slice is rendered, then written, then the event loop serves other work. A user
        whose last socket closed meanwhile is skipped."""
        prices, window, slices = self._held.prices, self._window, self._slices
        rendered: list[tuple[_User, bytes]] = []
        started = time.perf_counter()
        # Prices arrive only while the event loop serves other work, between slices: until then the window
        # is empty (its batch was just taken) and there is no user to take out of it.
        window_filled = False
        for user in users:
            if not user.clients:
                continue
            if window_filled:
                # Rendered now, at the latest prices: a price that put it in the window again is in this push.
                window.discard(user)
            # Rendered for this fan-out only: a socket it cannot write to now renders the latest profile
            # again in its writer (_render), the rare case.
            user.message = None
            rendered.append((user, text_frame(user.holdings.message(prices))))
            if len(rendered) >= slices.size:
                self._write_rendered(rendered)
                slices.measured(len(rendered), time.perf_counter() - started)
                rendered.clear()
                await asyncio.sleep(0)
                started = time.perf_counter()
                window_filled = len(window) > 0
        self._write_rendered(rendered)

    @staticmethod
    def _write_rendered(rendered: list[tuple[_User, bytes]]) -> None:
        """Write each user's frame inline to every socket that can take it now; mark the others stale (their
        writer sends the latest profile when they are free)."""
        for user, frame in rendered:
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

    # -- messages --------------------------------------------------------------------------------------

    def _on_message(self, channel: str, data: bytes) -> None:
        if channel == PORTFOLIO_CHANNEL:
            self._on_portfolio_change(data)
        elif channel == ALERTS_CHANNEL:
            self._on_alert(data)
        else:
            self._on_second_stat(channel, data)

    def _on_second_stat(self, symbol: str, data: bytes) -> None:
        try:
            price = parse_second_stat(data)
        except InvalidSecondStat as exc:
            log.warning("malformed_second_stat", symbol=symbol, error=str(exc))
            return
        self._watched.offer(symbol, price)
        if self._window.add(self._held.offer(symbol, price)):
            if self._first_price_at is None:
                self._first_price_at = time.perf_counter()
            self._window_opened.set()

    def _on_alert(self, data: bytes) -> None:
        """``{"user_id", "alert"}``: the alert to each of the user's sockets here, once per socket."""
        try:
            notice = jsonutil.loads(data)
            user_id, alert = notice["user_id"], notice["alert"]
            alert_id = alert["alert_id"]
        except (jsonutil.JSONDecodeError, TypeError, KeyError):
            log.warning("malformed_alert_notice", data=data[:100])
            return
        user = self._users.get(user_id) if isinstance(user_id, int) else None
        if user is None or not isinstance(alert_id, str):
            return
        message = jsonutil.dumps(alert)
        for client in user.clients:
            client.send_alert(alert_id, message)

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
                self._push(user)
                if not user.refresh_again:
                    return
        finally:
            user.refreshing = False

    async def _close_user(self, user: _User, code: int, message: bytes) -> None:
        await asyncio.gather(
            *(client.ws.close(code=code, message=message) for client in user.clients),
            return_exceptions=True,
        )
