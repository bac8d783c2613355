"""The fan-out's rules, pure: which prices a push carries, when a push is due, and what a slow socket gets.

Decisions over plain values (symbols, :class:`~profile_bff.portfolio.Price`, users as any hashable object,
sizes in bytes, times in seconds from an injected clock); :class:`profile_bff.connections.ConnectionManager`
applies them to Redis messages and :class:`profile_bff.sockets.Client` to aiohttp sockets.

- Conflation (:class:`HeldPrices`): of the SecondStats published for a symbol, only the newest second is kept
  (the same second again replaces it; an older one is dropped), and only for a symbol that some local user
  holds. A push renders the user's profile at the kept prices, so however many SecondStats arrived since the
  last push, it carries the newest second of each symbol, and a dropped (older) one never shows.
- Coalescing (:class:`CoalescingWindow`): users whose prices changed wait for one push, due ``window_s``
  after the first change not yet pushed (0: at once, which is after the pub/sub reader has dispatched what
  Redis delivered together). Changes arriving meanwhile join it, and a user is in it once however many of
  its prices changed.
- Watched prices (:class:`WatchedPrices`): a symbol whose price a REST read (``GET /v2/user/profile``) asked
  for stays subscribed for a while after, and the SecondStats heard on its channel answer the next reads
  without a Redis round trip.
- Backpressure (:class:`Delivery`): a socket holds at most one pending profile, the latest (a "stale" flag,
  never a queue). A push is written inline when the socket can take it at once (open, no writer behind,
  nothing buffered, at most :data:`INLINE_MAX_BYTES`); otherwise the socket is only marked stale, and a
  writer of its own sends the latest profile when the socket is free, then ends once it has caught up. A send
  that fails or waits past the send timeout closes the socket for good: nothing more is sent to it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, KeysView, Mapping
from typing import Generic, TypeVar

from profile_bff.portfolio import LatestPrices, Price

U = TypeVar("U", bound=Hashable)

#: Largest frame (bytes) written inline; a larger one goes through the socket's writer. Well below the
#: transports' 64 KiB high-water mark, so an inline write into an empty buffer never pauses the transport.
INLINE_MAX_BYTES = 16 * 1024


def supersedes(price: Price, kept: Price | None) -> bool:
    """Whether ``price`` replaces ``kept`` as a symbol's newest SecondStat: none kept yet, or a second no
    older (the same second again replaces it; an older one is dropped)."""
    return kept is None or price.second_ms >= kept.second_ms


class HeldPrices(Generic[U]):
    """Which local users hold each symbol, and the newest price of each held symbol (conflation).

    A symbol is held from its first holder to its last (reference counting by holder): :attr:`symbols` is
    what the process must be subscribed to, and a symbol's price is forgotten with its last holder.
    :attr:`prices` is what profiles are rendered at.
    """

    __slots__ = ("_holders", "prices")

    def __init__(self) -> None:
        #: symbol → its holders. A dict as an ordered set: a fan-out walks the users in the order they
        #: started holding it, so that the objects of one user after another, allocated one after another,
        #: are near each other in memory.
        self._holders: dict[str, dict[U, None]] = {}
        #: The kept price of each held symbol that has one.
        self.prices = LatestPrices()

    @property
    def symbols(self) -> KeysView[str]:
        """The symbols at least one local user holds (a live view)."""
        return self._holders.keys()

    def hold(self, user: U, symbol: str) -> None:
        """``user`` holds ``symbol`` (again: no change)."""
        self._holders.setdefault(symbol, {})[user] = None

    def release(self, user: U, symbol: str) -> None:
        """``user`` no longer holds ``symbol``; with its last holder the symbol and its price go."""
        holders = self._holders.get(symbol)
        if holders is None:
            return
        holders.pop(user, None)
        if not holders:
            del self._holders[symbol]
            self.prices.discard(symbol)

    def unpriced(self, symbols: Iterable[str]) -> list[str]:
        """Those of ``symbols`` that have no kept price (to be read from the latest-price keys)."""
        return [symbol for symbol in symbols if symbol not in self.prices]

    def offer(self, symbol: str, price: Price) -> Mapping[U, None]:
        """Keep ``price`` as the newest of ``symbol`` unless a later second is kept or no local user holds
        ``symbol``. Returns the holders whose next push must carry it (a live view, in holding order), or an
        empty mapping when the price was dropped."""
        holders = self._holders.get(symbol)
        if holders is None:
            return {}
        if not supersedes(price, self.prices.get(symbol)):
            return {}
        self.prices.set(symbol, price)
        return holders


class WatchedPrices:
    """The symbols REST reads asked for lately, kept subscribed, and the newest price heard of each.

    ``ttl_s`` (seconds, > 0; :class:`ValueError` otherwise) is how long a symbol stays watched after its last
    read; ``clock`` returns seconds on a monotonic scale. The owner subscribes :attr:`symbols`, offers every
    SecondStat heard on their channels (:meth:`offer`), and calls :meth:`forget_prices` when its pub/sub
    connection is lost and :meth:`expire` now and then.

    A price is kept only as heard on the subscription, never as read from the ``price:<symbol>`` key: a
    SecondStat heard on the channel is the newest one published when it was heard (the aggregator sets the key
    and publishes in one step, and only a newer second), and every later one will be heard too while the
    connection lasts. A key read around the time of the subscription could miss one published just before
    Redis took the ``SUBSCRIBE``. So a symbol answers reads from its first SecondStat after it is watched
    until the connection is lost; before that, and for a symbol nobody read lately, :meth:`read` says to read
    the key. Of the SecondStats heard, the newest second is kept; an older one is dropped.
    """

    __slots__ = ("_clock", "_read_at", "prices", "ttl_s")

    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.ttl_s = ttl_s
        self._clock = clock
        #: symbol → when a read last asked for it (clock seconds).
        self._read_at: dict[str, float] = {}
        #: The newest price heard of each watched symbol since the connection was made.
        self.prices: dict[str, Price] = {}

    @property
    def symbols(self) -> KeysView[str]:
        """The symbols watched now (a live view): what the process must be subscribed to for REST reads."""
        return self._read_at.keys()

    def read(self, symbols: Iterable[str]) -> tuple[dict[str, Price], list[str], bool]:
        """A read asks for ``symbols`` now: each is watched (again) from now. Returns the prices heard of
        those that have one, those to read from their keys instead, and whether a symbol was not watched
        before (then the owner subscribes it)."""
        now, read_at, prices = self._clock(), self._read_at, self.prices
        known: dict[str, Price] = {}
        missing: list[str] = []
        added = False
        for symbol in symbols:
            if symbol not in read_at:
                added = True
            read_at[symbol] = now
            price = prices.get(symbol)
            if price is None:
                missing.append(symbol)
            else:
                known[symbol] = price
        return known, missing, added

    def offer(self, symbol: str, price: Price) -> None:
        """A SecondStat of ``symbol`` heard on the subscription: kept if the symbol is watched and no later
        second is kept."""
        if symbol in self._read_at and supersedes(price, self.prices.get(symbol)):
            self.prices[symbol] = price

    def forget_prices(self) -> None:
        """The subscription was lost: SecondStats published meanwhile were not heard, so no kept price may
        answer a read until a new one is heard. The symbols stay watched."""
        self.prices.clear()

    def expire(self) -> list[str]:
        """Stop watching the symbols last read ``ttl_s`` or more ago, and forget their prices; returns them
        (the owner unsubscribes them)."""
        cutoff = self._clock() - self.ttl_s
        expired = [symbol for symbol, at in self._read_at.items() if at <= cutoff]
        for symbol in expired:
            del self._read_at[symbol]
            self.prices.pop(symbol, None)
        return expired


class CoalescingWindow(Generic[U]):
    """The users whose profile changed since the last push, in order of arrival, and when the push is due.

    ``window_s`` (seconds, ≥ 0; :class:`ValueError` otherwise) is how long after the first change not yet
    pushed the push is due; ``clock`` returns seconds on a monotonic scale. The caller wakes its pusher when
    :meth:`add` opens the window, waits :meth:`due_in`, then pushes :meth:`take`.
    """

    __slots__ = ("_clock", "_opened_at", "_pending", "window_s")

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        if window_s < 0:
            raise ValueError("coalesce_s must be >= 0")
        self.window_s = window_s
        self._clock = clock
        #: A dict as an ordered set: users in the order their first change arrived.
        self._pending: dict[U, None] = {}
        self._opened_at = 0.0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, users: Iterable[U]) -> bool:
        """``users`` have changes to push. Returns True if this opened the window (nothing was pending, and
        now something is): the push is due :attr:`window_s` from now."""
        was_empty = not self._pending
        # A dict (a symbol's holders, once per price) is merged as it is, without a copy of its keys.
        self._pending.update(users if isinstance(users, dict) else dict.fromkeys(users))
        if was_empty and self._pending:
            self._opened_at = self._clock()
            return True
        return False

    def due_in(self) -> float:
        """Seconds until the push of what is pending is due: ≤ 0 when due now (or nothing is pending)."""
        if not self._pending:
            return 0.0
        return self._opened_at + self.window_s - self._clock()

    def take(self) -> list[U]:
        """The users to push now, in order of arrival; the window is empty afterwards."""
        batch = list(self._pending)
        self._pending.clear()
        return batch

    def discard(self, user: U) -> None:
        """``user``'s profile is being rendered now, at the latest prices: a change that came after the batch
        was taken is in that push and needs no other."""
        if self._pending:
            self._pending.pop(user, None)


class FanOutSlices:
    """How many users the fan-out serves before it lets the event loop run other work (REST requests, reads,
    pings), so that one slice holds the loop for about ``budget_s`` seconds whatever the machine's speed.

    The caller times each slice and reports it to :meth:`measured`; the next slice is the budget over the
    cost per user just measured, kept within ``min_users``..``max_users``. :attr:`size` starts at
    ``min_users`` (nothing measured yet). ValueError unless ``budget_s > 0`` and
    ``1 <= min_users <= max_users``.

    Why a time budget: a request arriving during a fan-out waits for a slice at every step it takes on the
    loop (accept, read, each database and Redis round trip, the write), so its latency grows with the
    slice's duration, not its user count. With a fixed 256 users a slice held the loop ~10 ms on the 2-CPU
    benchmark machine, and a profile request took p50 40–52 ms, p99 124–361 ms while 5,000 sockets received
    prices; with 1 ms slices p50 14 ms, p99 24–39 ms, for some 5–10 % more CPU per message
    (``benchmarks/bench_bff.py --clients 5000``).
    """

    __slots__ = ("budget_s", "max_users", "min_users", "size")

    def __init__(self, budget_s: float, min_users: int, max_users: int) -> None:
        if budget_s <= 0 or not 1 <= min_users <= max_users:
            raise ValueError("need budget_s > 0 and 1 <= min_users <= max_users")
        self.budget_s = budget_s
        self.min_users = min_users
        self.max_users = max_users
        #: Users in the next slice.
        self.size = min_users

    def measured(self, users: int, took_s: float) -> int:
        """A slice served ``users`` users in ``took_s`` seconds: returns (and keeps) the next slice's size.
        A slice of no user or no measurable time changes nothing."""
        if users > 0 and took_s > 0:
            fitting = int(self.budget_s * users / took_s)
            self.size = min(self.max_users, max(self.min_users, fitting))
        return self.size


class Delivery:
    """The backpressure state of one socket: whether it is open, whether its profile is stale (changed and
    not sent), and whether a writer is behind it. See the module docstring for the rules.

    The socket's adapter asks before each step: :meth:`changed` and :meth:`opened` say when to start a writer,
    :meth:`may_write_inline` whether a frame may go straight into the transport, :meth:`next_send` whether
    the writer sends (again); it reports :meth:`closed` and :meth:`writer_ended`.
    """

    __slots__ = ("_open", "_stale", "_writing")

    def __init__(self) -> None:
        self._open = False
        self._stale = False
        self._writing = False

    @property
    def is_open(self) -> bool:
        """True from :meth:`opened` to :meth:`closed`."""
        return self._open

    @property
    def writing(self) -> bool:
        """True while a writer runs: from a True of :meth:`changed` or :meth:`opened` to
        :meth:`writer_ended`."""
        return self._writing

    def opened(self) -> bool:
        """The socket can send from now on. Returns True if a writer must start now (a change, such as the
        snapshot, came before it opened)."""
        self._open = True
        return self._start_writer()

    def changed(self) -> bool:
        """The profile changed and the socket must get it. Returns True if a writer must start now; False
        if none is needed: one is running and will send the latest profile, or the socket is not open yet
        (the change waits for :meth:`opened`) or no more."""
        self._stale = True
        return self._start_writer()

    def may_write_inline(self, frame_bytes: int, buffered_bytes: int, closing: bool) -> bool:
        """Whether a frame of ``frame_bytes`` may be written into the transport at once, which never waits:
        the socket is open, no writer is behind (it would send after, and over, the newer frame), the
        transport is not ``closing``, holds nothing (``buffered_bytes`` 0) and the frame is at most
        :data:`INLINE_MAX_BYTES`. When False the caller marks the socket :meth:`changed` instead."""
        return (
            self._open
            and not self._writing
            and not closing
            and buffered_bytes == 0
            and frame_bytes <= INLINE_MAX_BYTES
        )

    def next_send(self) -> bool:
        """The writer asks whether to send the latest profile: True while the socket is open and stale
        (the stale flag is cleared: a change from now on asks for one more send); False once it has caught
        up or the socket closed, and the writer ends."""
        if self._open and self._stale:
            self._stale = False
            return True
        return False

    def closed(self) -> None:
        """Nothing more is sent: the socket is closing, or a send failed or waited past the send timeout (a
        peer that stopped reading holds at most the one profile it was sent)."""
        self._open = False

    def writer_ended(self) -> None:
        """The writer has returned (caught up, closed, or cancelled)."""
        self._writing = False

    def _start_writer(self) -> bool:
        if self._open and self._stale and not self._writing:
            self._writing = True
            return True
        return False
