"""The BFF's ceilings: how much one user, one address and one slow socket may take (docs/SECURITY.md, "Abuse
ceilings"; settings in :class:`profile_bff.settings.BffSettings`).

Per user:

- coins in a portfolio (``BFF_MAX_COINS_PER_USER``), checked in PostgreSQL in the add's own transaction
  (:meth:`profile_bff.store.ProfileStore.add_coin`); 409 ``coin_limit_reached``;
- open profile WebSockets (``BFF_MAX_SOCKETS_PER_USER``), counted across every replica in Redis as leases
  (:class:`SocketSlots`); 429 ``too_many_sockets`` before the upgrade;
- writes and WebSocket tickets per time (``BFF_WRITE_RATE_PER_USER``, ``BFF_WS_TICKET_RATE_PER_USER``):
  GCRA of :mod:`profile_bff.ratelimit`, keys ``ratelimit:write:user:<id>`` and
  ``ratelimit:ws-ticket:user:<id>``; 429 ``rate_limited`` with Retry-After.

Per client address (the address as :func:`profile_bff.ratelimit.client_address` finds it):

- requests to the routes that need no credentials (``BFF_PUBLIC_RATE_PER_ADDRESS``, key
  ``ratelimit:public:addr:<bucket>``) and WebSocket upgrades, failed ones included
  (``BFF_WS_UPGRADE_RATE_PER_ADDRESS``, key ``ratelimit:ws-upgrade:addr:<bucket>``); 429 with Retry-After.
  These limits protect capacity, not secrets: if Redis cannot be reached they are skipped (logged), unlike
  the login limits, which fail closed;
- open connections (``BFF_MAX_CONNECTIONS_PER_ADDRESS``), counted per process at accept time by the socket
  peer (no header has been read yet), except the ``BFF_TRUSTED_PROXIES``, behind which every client shares
  one address.

Per process: open connections (``BFF_MAX_CONNECTIONS``, bounded by the descriptor limit, see
:func:`connection_cap`) and the header-read timeout (``BFF_HEADER_TIMEOUT_S``).

What aiohttp offers and lacks: its ``keepalive_timeout`` (3630 s by default for an ``AppRunner``, 75 s for
``run_app``) closes a connection idle between requests, counting a request whose head is incomplete as idle;
only recent releases (3.14) arm it when the connection opens, so that a connection that never completes its
first request is closed too. It has no cap on connections, per process or per address. So the listening
socket's protocol factory is wrapped (:class:`GuardedProtocol`): it counts connections, refuses those over a
cap at once (a canned ``503``/``429`` error JSON, ``Connection: close``), and closes with ``408`` a
connection whose first request head (request line and headers, up to the empty line, RFC 9112 §2.1) is not
complete ``BFF_HEADER_TIMEOUT_S`` after it opened; the BFF's runner sets aiohttp's ``keepalive_timeout`` to
``BFF_KEEPALIVE_TIMEOUT_S``, which bounds the idle time and the head of every later request on a kept-alive
connection (it is longer, to stay above the idle timeouts of proxies that reuse connections).
"""

from __future__ import annotations

import asyncio
import ipaddress
import resource
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, cast

import redis.asyncio as aioredis
from aiohttp import web
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from crypto_mesh import jsonutil
from crypto_mesh.logs import get_logger
from crypto_mesh.redisclient import RedisClient, connect, is_cluster_url, run_scripts
from crypto_mesh.retry import raise_if_cancelling
from profile_bff.ratelimit import (
    KEY_PREFIX,
    Charge,
    IPAddress,
    IPNetwork,
    Rate,
    RateLimiter,
    address_bucket,
    client_address,
)
from profile_bff.errors import RateLimited, StoreUnavailable

log = get_logger(__name__)

#: Descriptors kept out of the connection cap for the process's own use: PostgreSQL and Redis pools, the
#: gRPC channel, the aggregator client, the event loop, logs, the exchangeInfo file, the listening socket.
FD_RESERVE = 256
#: A socket slot is leased for this long (s) and renewed every third of it, so a replica that dies without
#: releasing its slots frees them within this time.
SOCKET_LEASE_S = 60
SOCKET_KEY_PREFIX = "bff:ws-sockets:user:"
#: Connections of the ceilings' Redis pool; a command waits for a free one (2 s at most).
REDIS_CONNECTIONS = 64
#: The routes anyone may call without credentials that are rate-limited per address (``/healthz`` is not:
#: orchestrators probe it from one address every few seconds), as aiohttp names their resources.
PUBLIC_ROUTES = frozenset(
    {
        "/v1/instruments",
        "/v1/instruments/{symbol}",
        "/v1/instruments/{symbol}/candles",
        "/v1/instruments/{symbol}/indicators",
        "/openapi.json",
    }
)
PROFILE_SOCKET_ROUTE = "/v2/user/profile/ws"
#: The dashboard's page and files (:mod:`profile_bff.views.dashboard`): the same for everyone, no personal
#: data, served from memory, so neither rate-limited nor ``no-store``.
DASHBOARD_ROUTES = frozenset({"/", "/dashboard/{path}"})


# -- connections -------------------------------------------------------------------------------------------


def descriptor_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` of this process (``RLIM_INFINITY`` reads as a large number)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_descriptor_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one (as Go's runtime does at start): systemd's default soft
    limit, 1024 (hard 524288), would hold the BFF to 768 connections. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("descriptor_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    return descriptor_limit()


def connection_cap(configured: int, descriptors: int) -> int:
    """The effective process-wide connection cap: ``configured``, but no more than ``descriptors`` minus
    :data:`FD_RESERVE` (at least 1), so that accepting never exhausts the descriptors the process needs."""
    return max(1, min(configured, descriptors - FD_RESERVE))


class ConnectionCounter:
    """Open connections, in total and per address bucket; decides who may open one more.

    ``max_total`` and ``max_per_address`` are the caps; connections from an address in ``exempt`` (trusted
    proxies) count towards the total only. Pure bookkeeping: no I/O.
    """

    def __init__(self, max_total: int, max_per_address: int, exempt: Sequence[IPNetwork] = ()) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._exempt = tuple(exempt)
        self.total = 0
        self._per_bucket: Counter[str] = Counter()

    def admit(self, address: IPAddress | None) -> tuple[str | None, str | None]:
        """Count one more connection from ``address`` → ``(bucket, None)``; or refuse it, counting nothing
        → ``(None, "total" | "address")``. ``bucket`` is passed back to :meth:`release` (``None`` when the
        address is not counted on its own)."""
        if self.total >= self.max_total:
            return None, "total"
        bucket = None
        if address is not None and not any(address in network for network in self._exempt):
            bucket = address_bucket(address)
            if self._per_bucket[bucket] >= self.max_per_address:
                return None, "address"
            self._per_bucket[bucket] += 1
        self.total += 1
        return bucket, None

    def release(self, bucket: str | None) -> None:
        """One connection admitted with ``bucket`` is closed."""
        self.total -= 1
        if bucket is not None:
            self._per_bucket[bucket] -= 1
            if self._per_bucket[bucket] <= 0:
                del self._per_bucket[bucket]

    def open_from(self, address: IPAddress) -> int:
        """Open connections counted for ``address``'s bucket."""
        return self._per_bucket.get(address_bucket(address), 0)


def _canned(status: str, code: str, message: str, extra: str = "") -> bytes:
    body = jsonutil.dumps({"error": {"code": code, "message": message}})
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n{extra}\r\n"
    )
    return head.encode("ascii") + body


_REFUSED_TOTAL = _canned(
    "503 Service Unavailable",
    "too_many_connections",
    "the server holds all the connections it can",
    "Retry-After: 1\r\n",
)
_REFUSED_ADDRESS = _canned(
    "429 Too Many Requests",
    "too_many_connections",
    "this address holds all the connections it may; close one first",
    "Retry-After: 1\r\n",
)
_HEADER_TIMEOUT = _canned("408 Request Timeout", "request_timeout", "the request head came too slowly")


class GuardedProtocol(asyncio.Protocol):
    """One accepted connection in front of aiohttp's request handler (``inner``): counted by ``counter``,
    refused at once over a cap, closed with ``408`` if its first request head is not complete within
    ``header_timeout_s``. Every other event is handed to ``inner`` unchanged."""

    __slots__ = (
        "_admitted",
        "_bucket",
        "_counter",
        "_deadline",
        "_inner",
        "_scan_tail",
        "_timeout_s",
        "_transport",
        "_waiting",
    )

    def __init__(self, inner: asyncio.Protocol, counter: ConnectionCounter, header_timeout_s: float) -> None:
        self._inner = inner
        self._counter = counter
        self._timeout_s = header_timeout_s
        self._transport: asyncio.Transport | None = None
        self._bucket: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting = True  # for the first request head
        self._scan_tail = b""
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport, hence no isinstance check).
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        address = _peer_address(peer)
        bucket, refused = self._counter.admit(address)
        if refused is not None:
            log.info("connection_refused", cap=refused, address=str(address))
            transport.write(_REFUSED_TOTAL if refused == "total" else _REFUSED_ADDRESS)
            transport.close()
            return
        self._admitted = True
        self._bucket = bucket
        self._deadline = asyncio.get_running_loop().call_later(self._timeout_s, self._head_timed_out)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._waiting:
            # The head ends at the first empty line (CRLF CRLF: aiohttp's parser takes no bare LF) after
            # something else: empty lines before the request line are allowed (RFC 9112 §2.2).
            scanned = self._scan_tail + data if self._scan_tail else data.lstrip(b"\r\n")
            if b"\r\n\r\n" in scanned:
                self._waiting = False
                self._cancel_deadline()
            else:
                self._scan_tail = scanned[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._admitted:
            return None
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._cancel_deadline()
        self._counter.release(self._bucket)
        self._inner.connection_lost(exc)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        self._deadline = None
        transport = self._transport
        if not self._waiting or transport is None or transport.is_closing():
            return
        log.info("request_head_timeout", timeout_s=self._timeout_s)
        transport.write(_HEADER_TIMEOUT)
        # A peer that does not read would keep a graceful close waiting for its buffer to drain.
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()


def _peer_address(peer: object) -> IPAddress | None:
    if not isinstance(peer, tuple) or not peer:
        return None  # a Unix socket
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def guarded_factory(
    inner: Callable[[], asyncio.Protocol], counter: ConnectionCounter, header_timeout_s: float
) -> Callable[[], GuardedProtocol]:
    """A protocol factory for ``loop.create_server``: each connection gets ``inner()`` (aiohttp's
    ``runner.server``) behind a :class:`GuardedProtocol`."""

    def factory() -> GuardedProtocol:
        return GuardedProtocol(inner(), counter, header_timeout_s)

    return factory


# -- open sockets per user ---------------------------------------------------------------------------------


class SocketLeasePort(Protocol):
    """Where socket slots are leased (Redis in production, :class:`RedisSocketLeases`)."""

    async def acquire(self, user_id: int, slot: str, cap: int, lease_s: int) -> bool: ...

    async def renew(self, held: Mapping[int, Iterable[str]], lease_s: int) -> None: ...

    async def release(self, user_id: int, slot: str) -> None: ...


# KEYS[1]: the user's sorted set (member: slot, score: lease end, Unix ms); ARGV: slot, cap, lease (ms).
# Expired leases are dropped, then the slot is added if fewer than cap remain. Returns 1 if leased.
_LEASE = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""

# KEYS[1]: the user's sorted set; ARGV: lease (ms), then the slots this replica holds. Extends (or, after
# Redis lost them, restores) their leases.
_RENEW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease)
return 0
"""


class RedisSocketLeases:
    """Socket slots in Redis: sorted set ``bff:ws-sockets:user:<id>`` of slot → lease end (Unix ms, Redis's
    clock). :meth:`renew` and :meth:`release` raise ``RedisError`` or ``OSError`` when Redis cannot be
    reached."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._lease = redis.register_script(_LEASE)
        self._renew = redis.register_script(_RENEW)

    async def acquire(self, user_id: int, slot: str, cap: int, lease_s: int) -> bool:
        """Lease ``slot`` if the user holds fewer than ``cap`` unexpired slots. Raises
        :class:`~profile_bff.store.StoreUnavailable` when Redis cannot be reached (the upgrade: 503)."""
        try:
            leased = await self._lease(
                keys=[SOCKET_KEY_PREFIX + str(user_id)], args=[slot, cap, lease_s * 1000]
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc
        return bool(leased)

    async def renew(self, held: Mapping[int, Iterable[str]], lease_s: int) -> None:
        """Extend the lease of every slot in ``held`` (user id → slots), in one pipelined round trip."""
        if not held:
            return
        await run_scripts(
            self._redis,
            [
                (self._renew, [SOCKET_KEY_PREFIX + str(user_id)], [lease_s * 1000, *slots])
                for user_id, slots in held.items()
            ],
        )

    async def release(self, user_id: int, slot: str) -> None:
        """Give ``slot`` back."""
        await self._redis.zrem(SOCKET_KEY_PREFIX + str(user_id), slot)


class SocketSlots:
    """The open profile sockets of each user, at most ``cap`` across every replica.

    Each socket holds a slot leased for ``lease_s`` seconds in ``leases`` (shared by the replicas); this
    replica renews the leases of its slots every ``lease_s / 3`` seconds while the socket is open and
    releases a slot when its socket closes. A replica that dies leaves its slots to expire. Errors of
    ``leases`` (Redis down) propagate from :meth:`acquire`; renewals and releases that fail are logged (a
    lease then expires by itself).
    """

    def __init__(self, leases: SocketLeasePort, cap: int, lease_s: int = SOCKET_LEASE_S) -> None:
        self._leases = leases
        self.cap = cap
        self._lease_s = lease_s
        self._replica = secrets.token_hex(6)
        self._next = 0
        self._held: dict[int, set[str]] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self, user_id: int) -> str | None:
        """A new slot of ``user_id``, or ``None`` if the user already holds ``cap``."""
        self._next += 1
        slot = f"{self._replica}:{self._next}"
        if not await self._leases.acquire(user_id, slot, self.cap, self._lease_s):
            return None
        self._held.setdefault(user_id, set()).add(slot)
        return slot

    async def release(self, user_id: int, slot: str) -> None:
        """The socket of ``slot`` closed."""
        slots = self._held.get(user_id)
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del self._held[user_id]
        try:
            await self._leases.release(user_id, slot)
        except (RedisError, OSError) as exc:
            log.warning("socket_slot_release_failed", user_id=user_id, error=repr(exc))

    def held(self, user_id: int) -> int:
        """Slots this replica holds for ``user_id``."""
        return len(self._held.get(user_id, ()))

    async def renew(self) -> None:
        """Extend every lease this replica holds (called every ``lease_s / 3`` by :meth:`start`)."""
        snapshot = {user_id: tuple(slots) for user_id, slots in self._held.items()}
        await self._leases.renew(snapshot, self._lease_s)

    def start(self) -> None:
        """Start renewing leases in the background."""
        self._renewer = asyncio.create_task(self._renew_forever(), name="bff-socket-leases")

    async def close(self) -> None:
        """Stop renewing (the remaining leases expire by themselves)."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)

    async def _renew_forever(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self._lease_s / 3)
            try:
                await self.renew()
            except (RedisError, OSError) as exc:
                # A cancel that redis-py's timeout turned into TimeoutError (an OSError) still ends the loop:
                # a CI run's BFF stop waited for ever on this task, left "cancelling" while it slept on.
                raise_if_cancelling()
                log.warning("socket_lease_renewal_failed", error=repr(exc))


# -- rates -------------------------------------------------------------------------------------------------


class Ceilings:
    """What the handlers and middleware use: the rate limiter and the socket slots, on their own Redis
    connection pool (``redis_url``); a user holds at most ``max_sockets_per_user`` sockets. :meth:`start`
    renews the slots' leases in the background until :meth:`close`."""

    def __init__(self, redis_url: str, max_sockets_per_user: int) -> None:
        # A blocking pool: a burst of upgrades (10,000 clients reconnecting after a restart) waits up to 2 s
        # for one of REDIS_CONNECTIONS connections, where redis-py's default pool fails at once beyond 100.
        # redis-py's cluster client has no blocking pool: REDIS_CONNECTIONS per node, failing beyond.
        self._pool: aioredis.BlockingConnectionPool | None = None
        self._redis: RedisClient
        if is_cluster_url(redis_url):
            self._redis = connect(
                redis_url,
                max_connections=REDIS_CONNECTIONS,
                socket_connect_timeout=2,
                socket_timeout=2,
                retry=Retry(NoBackoff(), 1),
            )
        else:
            self._pool = aioredis.BlockingConnectionPool.from_url(
                redis_url,
                max_connections=REDIS_CONNECTIONS,
                timeout=2,
                socket_connect_timeout=2,
                socket_timeout=2,
            )
            self._redis = aioredis.Redis(connection_pool=self._pool, retry=Retry(NoBackoff(), 1))
        self.limiter = RateLimiter(self._redis)
        self.slots = SocketSlots(RedisSocketLeases(self._redis), max_sockets_per_user)

    def start(self) -> None:
        """Start renewing the socket slots' leases."""
        self.slots.start()

    async def close(self) -> None:
        """Stop renewing leases (the remaining ones expire by themselves) and close the Redis pool."""
        await self.slots.close()
        await self._redis.aclose()
        if self._pool is not None:
            await self._pool.aclose()

    async def wait_s(self, charge: Charge) -> float:
        """Charge one request; 0 when allowed, else the seconds to wait. A Redis outage allows it (logged)."""
        try:
            return await self.limiter.acquire([charge])
        except (RedisError, OSError) as exc:
            log.warning("ceiling_unavailable", key=charge.key.rsplit(":", 1)[0], error=repr(exc))
            return 0.0

    async def limit_user(self, route: str, user_id: int, rate: Rate) -> None:
        """Charge one request of the user to ``ratelimit:<route>:user:<id>`` at ``rate``. Raises
        :class:`~profile_bff.errors.RateLimited` once the user is out of allowance."""
        wait_s = await self.wait_s(Charge(f"{KEY_PREFIX}:{route}:user:{user_id}", rate))
        if wait_s > 0:
            refusal = RateLimited.waiting("too many requests of this user", wait_s)
            log.info("rate_limited", route=route, user_id=user_id, retry_after_s=refusal.retry_after_s)
            raise refusal


CEILINGS = web.AppKey("ceilings", Ceilings)


def address_limits(
    ceilings: Ceilings, public_rate: Rate, ws_upgrade_rate: Rate, trusted_proxies: Sequence[IPNetwork]
):
    """The middleware of the per-address rate limits: of the public routes (``public_rate``) and of WebSocket
    upgrades (``ws_upgrade_rate``), the client being found behind ``trusted_proxies``; refuses with
    :class:`~profile_bff.errors.RateLimited`."""
    trusted = tuple(trusted_proxies)

    @web.middleware
    async def limit_address(request: web.Request, handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else None
        if path in PUBLIC_ROUTES and request.method in ("GET", "HEAD"):
            route, rate = "public", public_rate
            what = "too many requests from this address"
        elif path == PROFILE_SOCKET_ROUTE:
            route, rate = "ws-upgrade", ws_upgrade_rate
            what = "too many WebSocket upgrades from this address"
        else:
            return await handler(request)
        bucket = address_bucket(client_address(request, trusted))
        wait_s = await ceilings.wait_s(Charge(f"{KEY_PREFIX}:{route}:addr:{bucket}", rate))
        if wait_s > 0:
            refusal = RateLimited.waiting(what, wait_s)
            log.info("rate_limited", route=route, retry_after_s=refusal.retry_after_s)
            raise refusal
        return await handler(request)

    return limit_address


async def no_store(request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` hook: ``Cache-Control: no-store`` on every answer but the public routes' and
    the dashboard's successes (RFC 9111 §5.2.2.5: personal data must not be stored by any cache)."""
    resource = request.match_info.route.resource if request.match_info.route is not None else None
    public = resource is not None and resource.canonical in (*PUBLIC_ROUTES, *DASHBOARD_ROUTES, "/healthz")
    if not (public and response.status < 400):
        response.headers["Cache-Control"] = "no-store"
