"""Login throttling shared by the BFF (budgets in Redis) and the auth service (budgets in PostgreSQL).

Algorithm: GCRA, the generic cell rate algorithm (ATM Forum Traffic Management 4.0; as in redis-cell and
Brandur Leach's "Rate limiting, cells, and GCRA"). A rate "N per period" lets a client make N attempts at
once and then one every period/N. A budget is one number, the theoretical arrival time (TAT, Unix ms); an
attempt is charged to several budgets at once, or to none when any of them is out of allowance.
:func:`gcra_acquire` is the decision; the BFF runs the same arithmetic in a Redis Lua script, auth runs this
function inside a PostgreSQL transaction.

Budgets of a login (OWASP Authentication Cheat Sheet, "Login Throttling", and OWASP "Slow Down Online
Guessing Attacks with Device Cookies": throttle the guesses, not the owner):

- per (name, client address): the guesses one address makes at one name. The smallest: an attacker from one
  address runs out of it first.
- per name: guesses at one name from every address together (a distributed attack). Larger, and its
  sustained rate faster than the one above, so that one address alone can never empty it.
- per login device: a device that once logged in to that name holds a device token (a JWT signed by auth
  with the audience :func:`device_audience`), and its attempts are charged to its own budget only, so that its
  owner logs in while the per-name budget is exhausted by someone else. When the device's budget is out too
  (a stolen token), its attempts are charged as any other client's.

A successful attempt is refunded: the budgets count failures. Names are bucketed by :func:`name_bucket`,
addresses by :func:`address_bucket`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

_PERIODS_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE_RE = re.compile(r"\s*(\d{1,9})\s*/\s*(?:(\d{1,9})\s*)?(second|minute|hour|day)s?\s*")
#: IPv6 clients are bucketed by this prefix length (a /64 is one LAN, and what an ISP hands out at least).
IPV6_BUCKET_PREFIX = 64
#: Appended to the access tokens' audience to make the audience of login-device tokens: a device token is
#: never accepted as an access token, nor the reverse.
DEVICE_AUDIENCE_SUFFIX = "/login-device"
#: Device tokens are JWTs of a few hundred characters; a longer value is not one and is not verified.
DEVICE_TOKEN_MAX_CHARS = 2048


@dataclass(frozen=True)
class Rate:
    """``limit`` attempts per ``period_s`` seconds: a burst of ``limit``, then one every
    ``period_s / limit``."""

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

    def never_outpaces(self, other: Rate) -> bool:
        """True if a client held to this rate can never empty a budget of rate ``other`` by itself: its burst
        is no larger and its sustained pace no faster."""
        return self.limit <= other.limit and self.interval_ms >= other.interval_ms

    def __str__(self) -> str:
        return f"{self.limit}/{self.period_s} seconds"


def check_name_budgets(per_name_and_address: Rate, per_name: Rate, prefix: str) -> None:
    """Refuse login budgets with which one address could spend a whole name's budget and so lock its owner
    out: ``per_name_and_address`` must never outpace ``per_name`` (:meth:`Rate.never_outpaces`). ``prefix``
    names the settings in the error (``AUTH_``, ``BFF_``). Raises ``ValueError``."""
    if not per_name_and_address.never_outpaces(per_name):
        raise ValueError(
            f"{prefix}LOGIN_RATE_PER_NAME_AND_ADDRESS ({per_name_and_address}) must allow no larger burst and no "
            f"faster pace than {prefix}LOGIN_RATE_PER_NAME ({per_name}), else one address could spend a name's "
            "budget and lock its owner out"
        )


@dataclass(frozen=True)
class Charge:
    """One attempt charged to the budget ``key`` at ``rate``."""

    key: str
    rate: Rate


def gcra_acquire(tats_ms: Sequence[int | None], rates: Sequence[Rate], now_ms: int) -> tuple[int, list[int]]:
    """Charge one attempt to every budget, or to none.

    ``tats_ms[i]`` is budget i's stored TAT (Unix ms; ``None`` when it has none, i.e. a full allowance), at
    ``rates[i]``. Returns ``(0, new_tats)`` when allowed, the TATs to store (each expires, i.e. may be
    forgotten, once ``now_ms`` reaches it); else ``(wait_ms, [])``: the milliseconds until every budget would
    allow it, and nothing is charged.
    """
    wait = 0
    new_tats: list[int] = []
    for stored, rate in zip(tats_ms, rates, strict=True):
        interval = rate.interval_ms
        tat = max(stored if stored is not None else now_ms, now_ms)
        allow_at = tat + interval - interval * rate.limit
        if allow_at > now_ms:
            wait = max(wait, allow_at - now_ms)
        new_tats.append(tat + interval)
    if wait > 0:
        return wait, []
    return 0, new_tats


def gcra_refund(tat_ms: int | None, rate: Rate, now_ms: int) -> int | None:
    """The TAT after giving one attempt back to a budget whose TAT is ``tat_ms``; ``None``: full allowance."""
    if tat_ms is None:
        return None
    refunded = tat_ms - rate.interval_ms
    return refunded if refunded > now_ms else None


def name_bucket(name: str) -> str:
    """The bucket of a name as typed: SHA-256 (hex, first 32) of its NFKC, stripped, case-folded form, so
    ``Alice`` and ``ＡＬＩＣＥ`` share a bucket and names never sit in a budget store."""
    canonical = unicodedata.normalize("NFKC", name).strip().casefold()
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_bucket(address: IPAddress | None) -> str:
    """The bucket of a client address: the IPv4 address, the IPv6 /64 network, or ``unix``."""
    if address is None:
        return "unix"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/{IPV6_BUCKET_PREFIX}", strict=False))
    return str(address)


def parse_address_bucket(text: str) -> str | None:
    """The bucket of ``text`` (an IPv4 or IPv6 address, an IPv6 network as :func:`address_bucket` writes it,
    or ``unix``), or ``None`` if it is none of these."""
    text = text.strip()
    if text == "unix":
        return text
    try:
        return address_bucket(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= IPV6_BUCKET_PREFIX:
        return address_bucket(network.network_address)
    return None


def device_bucket(device_token: str) -> str:
    """The budget of a login device: SHA-256 (hex, first 32) of its device token."""
    return hashlib.sha256(device_token.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def device_audience(audience: str) -> str:
    """The ``aud`` of login-device tokens, given the access tokens' ``aud``."""
    return f"{audience}{DEVICE_AUDIENCE_SUFFIX}"
