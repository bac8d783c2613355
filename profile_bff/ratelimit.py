"""Rate limits of ``POST /v1/login`` and ``POST /v1/register`` per client address and per name, in Redis.

Algorithm: GCRA (:mod:`crypto_mesh.throttle`). Redis keeps one number per key, the theoretical arrival time
(TAT, Unix ms), which expires by itself once the client is back to a full allowance, so no key outlives its
use. Every BFF replica charges the same keys in one atomic Lua script that reads the clock of Redis
(``TIME``), so the limits hold across replicas whatever their clocks say.

An attempt is charged to every key of its route at once, and refused with ``429`` + ``Retry-After`` (RFC 9110
§10.2.3, whole seconds) if any key is out of allowance; a refused attempt charges nothing.

Logins follow OWASP's "throttle the guesses, not the owner" (:mod:`crypto_mesh.throttle`): a failed login is
charged to its client address (guessing across names), to its (name, address) pair (one address guessing one
name: the smallest budget, so an attacker from one address runs out first), and to its name (guessing from
many addresses). A client holding a login-device cookie for that name (issued at its last successful login)
is charged to its device's budget only while that budget lasts, so its owner logs in while others have spent
the name's budget. A successful login is refunded: the login limits count failed guesses, so users behind
one shared address never lock each other out by logging in. Registrations are all counted, successful ones
included, since creating accounts is itself what the register limit throttles.

Keys (docs/CONTRACTS.md, "Redis"): ``ratelimit:<route>:addr:<address>``, ``ratelimit:<route>:name:<h>``,
``ratelimit:login:name-addr:<h>:<address>`` and ``ratelimit:login:device:<d>``, each followed by the hash tag
``{ratelimit:<route>}`` (:func:`route_key`: the keys one attempt charges at once must share a Redis Cluster
slot), ``<route>`` = ``login`` | ``register``; ``<h>``: :func:`crypto_mesh.throttle.name_bucket`, so ``Alice`` and ``ＡＬＩＣＥ`` share a bucket
and names never sit in Redis; ``<d>``: :func:`crypto_mesh.throttle.device_bucket`. An IPv6 client is counted
per /64 network, the smallest block one subscriber usually holds.

The client address is the socket peer. Only when the peer is one of ``BFF_TRUSTED_PROXIES`` is
``X-Forwarded-For`` read, from the right, skipping trusted hops: the first untrusted address is the client
(entries left of it could be written by the client itself). With no trusted proxy configured the header is
ignored, so a client cannot pick its own bucket.

If Redis cannot be reached the routes answer ``503``: failing open would hand out unlimited password guesses
whenever Redis is down.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from redis.exceptions import RedisError

from crypto_mesh.httperrors import ApiError
from crypto_mesh.logs import get_logger
from crypto_mesh.redisclient import RedisClient
from crypto_mesh.throttle import (
    DEVICE_TOKEN_MAX_CHARS,
    IPV6_BUCKET_PREFIX,
    Charge,
    IPAddress,
    Rate,
    address_bucket,
    device_bucket,
    name_bucket,
)
from profile_bff.errors import RateLimited

log = get_logger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

KEY_PREFIX = "ratelimit"
#: Re-exported: the rate limits of the BFF are written with these.
__all__ = [
    "IPV6_BUCKET_PREFIX",
    "Charge",
    "Rate",
    "address_bucket",
    "name_bucket",
]


def route_key(route: str, rest: str) -> str:
    """The key ``ratelimit:<route>:<rest>{ratelimit:<route>}`` of a budget of ``route`` (``login``,
    ``register``): every key of a route carries the route as its hash tag, so that the script charging an
    attempt's keys at once finds them in one Redis Cluster slot."""
    return f"{KEY_PREFIX}:{route}:{rest}{{{KEY_PREFIX}:{route}}}"


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

    def __init__(self, redis: RedisClient) -> None:
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


def from_trusted_proxy(request: web.Request, trusted_proxies: Sequence[IPNetwork]) -> bool:
    """True if the socket peer of ``request`` is one of ``trusted_proxies`` (whose headers may be believed)."""
    peer = _parse_address(request.remote or "")
    return peer is not None and _is_trusted(peer, trusted_proxies)


def _is_trusted(address: IPAddress, trusted_proxies: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in trusted_proxies)


@dataclass(frozen=True)
class RoutePolicy:
    """The limits of one route; ``refund_success``: a 2xx answer gives the attempt back.
    ``per_name_and_address`` and ``per_device``: the login's further budgets (module docstring)."""

    route: str
    per_address: Rate
    per_name: Rate
    refund_success: bool
    per_name_and_address: Rate | None = None
    per_device: Rate | None = None


@dataclass(frozen=True)
class LoginDevices:
    """How the login limits recognise a login device: the cookie carrying its token, and ``verify``, which
    returns the :func:`name_bucket` of the name a token was issued for, or ``None`` if it is not valid."""

    cookie_name: str
    verify: Callable[[str], Awaitable[str | None]]


def login_limits(
    limiter: RateLimiter,
    policies: Mapping[str, RoutePolicy],
    trusted_proxies: Sequence[IPNetwork],
    devices: LoginDevices,
):
    """The middleware that charges the ``POST`` attempts on the routes of ``policies`` (route path → its
    limits) to ``limiter``, the client being found behind ``trusted_proxies`` and a login device recognised by
    ``devices``. Refuses with :class:`~profile_bff.errors.RateLimited` (429) or 503 when Redis cannot be
    reached; a successful attempt is refunded when its policy says so."""
    trusted = tuple(trusted_proxies)

    @web.middleware
    async def rate_limit(request: web.Request, handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        policy = (
            policies.get(resource.canonical) if resource is not None and request.method == "POST" else None
        )
        if policy is None:
            return await handler(request)
        address = address_bucket(client_address(request, trusted))
        name = await _name_in_body(request)
        try:
            charges = await _device_charges(request, policy, devices, name)
            wait_s = 0.0
            if not charges or await limiter.acquire(charges) > 0:
                # No login device, or one out of its own budget (its token stolen, say): any other client.
                charges = client_charges(policy, address, name)
                wait_s = await limiter.acquire(charges)
        except (RedisError, OSError) as exc:
            log.warning("rate_limit_unavailable", route=policy.route, error=repr(exc))
            raise ApiError(503, "unavailable", "rate limiting is unavailable, retry later") from None
        if wait_s > 0:
            refusal = RateLimited.waiting("too many attempts", wait_s)
            log.info("rate_limited", route=policy.route, retry_after_s=refusal.retry_after_s)
            raise refusal
        response = await handler(request)
        if policy.refund_success and 200 <= response.status < 300:
            try:
                await limiter.refund(charges)
            except (RedisError, OSError) as exc:
                log.warning("rate_limit_refund_failed", route=policy.route, error=repr(exc))
        return response

    return rate_limit


def client_charges(policy: RoutePolicy, address: str, name: str | None) -> list[Charge]:
    """The budgets an attempt of an unrecognised client from ``address`` (an :func:`address_bucket`) for
    ``name`` (``None``: no name in the body) is charged to, all at once: keys of :func:`route_key`."""
    charges = [Charge(route_key(policy.route, f"addr:{address}"), policy.per_address)]
    if name is not None:
        bucket = name_bucket(name)
        if policy.per_name_and_address is not None:
            charges.append(
                Charge(route_key(policy.route, f"name-addr:{bucket}:{address}"), policy.per_name_and_address)
            )
        charges.append(Charge(route_key(policy.route, f"name:{bucket}"), policy.per_name))
    return charges


async def _device_charges(
    request: web.Request, policy: RoutePolicy, devices: LoginDevices, name: str | None
) -> list[Charge]:
    """The device budget of an attempt whose login-device cookie was issued for ``name``, else none."""
    if policy.per_device is None or name is None:
        return []
    token = request.cookies.get(devices.cookie_name)
    if not token or len(token) > DEVICE_TOKEN_MAX_CHARS or await devices.verify(token) != name_bucket(name):
        return []
    return [Charge(route_key(policy.route, f"device:{device_bucket(token)}"), policy.per_device)]


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
