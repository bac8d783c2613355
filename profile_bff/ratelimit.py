"""Rate limits of ``POST /v1/login`` and ``POST /v1/register`` per client address and per name, in Redis.

Algorithm: GCRA, the generic cell rate algorithm (ATM Forum Traffic Management 4.0; as in redis-cell and
Brandur Leach's "Rate limiting, cells, and GCRA"). A rate "N per period" lets a client make N attempts at
once and then one every period/N; Redis keeps one number per key, the theoretical arrival time (TAT, Unix
ms), which expires by itself once the client is back to a full allowance, so no key outlives its use. Every
BFF replica charges the same keys in one atomic Lua script that reads the clock of Redis (``TIME``), so the
limits hold across replicas whatever their clocks say.

An attempt is charged to every key of its route at once (its client address and, when the body names one,
its name), and refused with ``429`` + ``Retry-After`` (RFC 9110 §10.2.3, whole seconds) if any key is out of
allowance; a refused attempt charges nothing. A successful login is refunded: the login limits count failed
guesses, so users behind one shared address never lock each other out by logging in. Registrations are all
counted, successful ones included, since creating accounts is itself what the register limit throttles.

Keys (docs/CONTRACTS.md, "Redis"): ``ratelimit:<route>:addr:<address>`` and ``ratelimit:<route>:name:<h>``,
``<route>`` = ``login`` | ``register``; ``<h>``: SHA-256 (hex, 32 characters) of the name NFKC-normalised,
stripped and case-folded, so ``Alice`` and ``ＡＬＩＣＥ`` share a bucket, and names never sit in Redis. An IPv6
client is counted per /64 network, the smallest block one subscriber usually holds.

The client address is the socket peer. Only when the peer is one of ``BFF_TRUSTED_PROXIES`` is
``X-Forwarded-For`` read, from the right, skipping trusted hops: the first untrusted address is the client
(entries left of it could be written by the client itself). With no trusted proxy configured the header is
ignored, so a client cannot pick its own bucket.

If Redis cannot be reached the routes answer ``503``: failing open would hand out unlimited password guesses
whenever Redis is down.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from aiohttp import web
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from crypto_mesh import jsonutil
from crypto_mesh.logs import get_logger

if TYPE_CHECKING:
    from profile_bff.settings import BffSettings

log = get_logger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

KEY_PREFIX = "ratelimit"
#: IPv6 clients are bucketed by this prefix length (a /64 is one LAN, and what an ISP hands out at least).
IPV6_BUCKET_PREFIX = 64

_PERIODS_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE_RE = re.compile(r"\s*(\d{1,9})\s*/\s*(?:(\d{1,9})\s*)?(second|minute|hour|day)s?\s*")


@dataclass(frozen=True)
class Rate:
    """``limit`` attempts per ``period_s`` seconds: a burst of ``limit``, then one every ``period_s / limit``."""

    limit: int
    period_s: int

    @classmethod
    def parse(cls, value: object) -> object:
        """``"10/minute"``, ``"30 / 5 minutes"``, ``"100/hour"`` → :class:`Rate`; other values pass through.

        Raises ``ValueError`` for a string that is not ``<count>/[<n>] second|minute|hour|day[s]`` or whose
        count or period is 0.
        """
        if not isinstance(value, str):
            return value
        match = _RATE_RE.fullmatch(value)
        if match is None:
            raise ValueError(f"rate {value!r} is not like '10/minute' or '100/hour'")
        count, multiple, unit = int(match[1]), int(match[2] or 1), match[3]
        if count == 0 or multiple == 0:
            raise ValueError(f"rate {value!r} must allow at least one attempt per non-empty period")
        return cls(count, multiple * _PERIODS_S[unit])

    @property
    def interval_ms(self) -> int:
        """The time one attempt costs, in whole milliseconds (at least 1)."""
        return max(1, self.period_s * 1000 // self.limit)

    def __str__(self) -> str:
        return f"{self.limit}/{self.period_s} seconds"


@dataclass(frozen=True)
class Charge:
    """One attempt charged to ``key`` at ``rate``."""

    key: str
    rate: Rate


# KEYS: the keys to charge; ARGV: interval (ms) and limit of each key in turn. Returns 0 when allowed (every
# key charged), else the milliseconds until all keys would allow it (nothing charged).
_ACQUIRE = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local limit = tonumber(ARGV[2 * i])
  local tat = math.max(tonumber(redis.call('GET', key)) or now, now)
  local allow_at = tat + interval - interval * limit
  if allow_at > now then
    wait = math.max(wait, allow_at - now)
  end
  tats[i] = tat + interval
end
if wait > 0 then
  return wait
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%d', tats[i]), 'PX', string.format('%d', tats[i] - now))
end
return 0
"""

# KEYS: the keys to refund; ARGV: the interval (ms) of each. Gives one attempt back to each key.
_REFUND = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key))
  if tat then
    local refunded = tat - tonumber(ARGV[i])
    if refunded > now then
      redis.call('SET', key, string.format('%d', refunded), 'PX', string.format('%d', refunded - now))
    else
      redis.call('DEL', key)
    end
  end
end
return 0
"""


class RateLimiter:
    """GCRA over Redis (see the module docstring). Raises ``redis.exceptions.RedisError`` (or ``OSError``)
    when Redis cannot be reached."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._acquire = redis.register_script(_ACQUIRE)
        self._refund = redis.register_script(_REFUND)

    async def acquire(self, charges: Sequence[Charge]) -> float:
        """Charge one attempt to every key, or to none; returns 0 when allowed, else the seconds to wait."""
        if not charges:
            return 0.0
        args: list[int] = []
        for charge in charges:
            args += (charge.rate.interval_ms, charge.rate.limit)
        wait_ms = await self._acquire(keys=[c.key for c in charges], args=args)
        return int(wait_ms) / 1000

    async def refund(self, charges: Sequence[Charge]) -> None:
        """Give one attempt back to every key (an attempt that turned out not to count)."""
        if charges:
            await self._refund(keys=[c.key for c in charges], args=[c.rate.interval_ms for c in charges])


def name_bucket(name: str) -> str:
    """The bucket of a name as typed: SHA-256 (hex, first 32) of its NFKC, stripped, case-folded form."""
    canonical = unicodedata.normalize("NFKC", name).strip().casefold()
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def parse_networks(value: object) -> object:
    """``"10.0.0.0/8, 192.168.1.7"`` → a tuple of networks (a bare address is a /32 or /128); other values
    pass through. Raises ``ValueError`` for an entry that is not an address or network."""
    if not isinstance(value, str):
        return value
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()
    )


def _parse_address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443", as some proxies write IPv6
        text = text[1 : text.index("]")]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(request: web.Request, trusted_proxies: Sequence[IPNetwork]) -> IPAddress | None:
    """The client's address: the socket peer, or, if the peer is a trusted proxy, the rightmost untrusted
    address of ``X-Forwarded-For``. ``None`` if the peer has no IP address (a Unix socket)."""
    peer = _parse_address(request.remote or "")
    if peer is None or not _is_trusted(peer, trusted_proxies):
        return peer
    hops = [hop for header in request.headers.getall("X-Forwarded-For", []) for hop in header.split(",")]
    client = peer
    for hop in reversed(hops):
        address = _parse_address(hop)
        if address is None:
            break  # a malformed entry: nothing left of it can be trusted
        client = address
        if not _is_trusted(address, trusted_proxies):
            break
    return client


def _is_trusted(address: IPAddress, trusted_proxies: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in trusted_proxies)


def address_bucket(address: IPAddress | None) -> str:
    """The bucket of a client address: the IPv4 address, the IPv6 /64 network, or ``unix``."""
    if address is None:
        return "unix"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network(f"{address}/{IPV6_BUCKET_PREFIX}", strict=False))
    return str(address)


@dataclass(frozen=True)
class RoutePolicy:
    """The limits of one route; ``refund_success``: a 2xx answer gives the attempt back."""

    route: str
    per_address: Rate
    per_name: Rate
    refund_success: bool


LIMITER = web.AppKey("rate_limiter", RateLimiter)


def install(app: web.Application, settings: BffSettings) -> None:
    """Add the rate-limit middleware for ``POST /v1/login`` and ``POST /v1/register`` to ``app``, and its
    Redis connection (``settings.redis_url``) to the app's start-up and clean-up. Call before the app starts.
    """
    policies = {
        "/v1/login": RoutePolicy(
            "login", settings.login_rate_per_address, settings.login_rate_per_name, refund_success=True
        ),
        "/v1/register": RoutePolicy(
            "register",
            settings.register_rate_per_address,
            settings.register_rate_per_name,
            refund_success=False,
        ),
    }
    trusted = tuple(settings.trusted_proxies)

    @web.middleware
    async def rate_limit(request: web.Request, handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        policy = (
            policies.get(resource.canonical) if resource is not None and request.method == "POST" else None
        )
        if policy is None:
            return await handler(request)
        charges = [
            Charge(
                f"{KEY_PREFIX}:{policy.route}:addr:{address_bucket(client_address(request, trusted))}",
                policy.per_address,
            )
        ]
        name = await _name_in_body(request)
        if name is not None:
            charges.append(Charge(f"{KEY_PREFIX}:{policy.route}:name:{name_bucket(name)}", policy.per_name))
        limiter = request.app[LIMITER]
        try:
            wait_s = await limiter.acquire(charges)
        except (RedisError, OSError) as exc:
            log.warning("rate_limit_unavailable", route=policy.route, error=repr(exc))
            return _error(503, "unavailable", "rate limiting is unavailable, retry later")
        if wait_s > 0:
            retry_after = max(1, math.ceil(wait_s))
            log.info("rate_limited", route=policy.route, retry_after_s=retry_after)
            return _error(
                429,
                "rate_limited",
                f"too many attempts, retry in {retry_after} s",
                {"Retry-After": str(retry_after)},
            )
        response = await handler(request)
        if policy.refund_success and 200 <= response.status < 300:
            try:
                await limiter.refund(charges)
            except (RedisError, OSError) as exc:
                log.warning("rate_limit_refund_failed", route=policy.route, error=repr(exc))
        return response

    async def redis_context(app: web.Application):
        redis = aioredis.Redis.from_url(
            settings.redis_url.get_secret_value(), socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 1)
        )
        app[LIMITER] = RateLimiter(redis)
        yield
        await redis.aclose()

    app.middlewares.append(rate_limit)
    app.cleanup_ctx.append(redis_context)


async def _name_in_body(request: web.Request) -> str | None:
    """The ``name`` string of a JSON object body, or ``None`` (the handler answers the malformed body).

    Reading caches the body for the handler; a body over the app's ``client_max_size`` raises 413 here.
    """
    if request.content_type != "application/json":
        return None
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    name = body.get("name") if isinstance(body, dict) else None
    return name if isinstance(name, str) else None


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The BFF's error shape, ``{"error": {"code", "message"}}`` (docs/CONTRACTS.md, "BFF REST")."""
    return web.json_response(
        {"error": {"code": code, "message": message}},
        status=status,
        headers=headers,
        dumps=jsonutil.dumps_str,
    )
