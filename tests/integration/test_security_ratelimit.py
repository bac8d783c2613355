"""The rate limiter's parts: GCRA over a real Redis, rate strings, name and address buckets, and who the client
is behind proxies. The limits as the BFF applies them are in tests/test_security_bff.py."""

from __future__ import annotations

import ipaddress
import uuid

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import make_mocked_request
from support.credentials import redis_user_url

from profile_bff.ratelimit import (
    Charge,
    Rate,
    RateLimiter,
    address_bucket,
    client_address,
    name_bucket,
    parse_networks,
)


@pytest.fixture
async def limiter(redis_url):
    """The BFF's rate limiter, connected as the BFF's Redis user."""
    redis = aioredis.Redis.from_url(redis_user_url(redis_url, "bff"))
    try:
        yield RateLimiter(redis)
    finally:
        await redis.aclose()


def key() -> str:
    return f"ratelimit:test:{uuid.uuid4().hex}"


async def test_a_burst_of_the_limit_passes_then_one_per_interval(limiter, redis_url):
    # 2 per 2 hours: a burst of 2, then one every hour. So slow that no refill happens during the test on any
    # machine; the passing of one interval is simulated by moving the key's stored theoretical arrival time
    # (Unix ms, see profile_bff.ratelimit) one interval back, instead of sleeping.
    name = key()
    charge = [Charge(name, Rate(2, 7200))]
    assert await limiter.acquire(charge) == 0
    assert await limiter.acquire(charge) == 0
    assert 0 < await limiter.acquire(charge) <= 3600
    redis = aioredis.Redis.from_url(redis_url)
    try:
        tat_ms = int(await redis.get(name))
        await redis.set(name, tat_ms - 3600_000, px=await redis.pttl(name))
    finally:
        await redis.aclose()
    assert await limiter.acquire(charge) == 0  # one interval later: exactly one more attempt
    assert 0 < await limiter.acquire(charge) <= 3600


async def test_a_refused_attempt_charges_none_of_its_keys(limiter):
    exhausted, fresh = Charge(key(), Rate(1, 60)), Charge(key(), Rate(1, 60))
    assert await limiter.acquire([exhausted]) == 0
    assert await limiter.acquire([exhausted, fresh]) > 0
    assert await limiter.acquire([fresh]) == 0  # the refused attempt left it untouched


async def test_a_refund_gives_the_attempt_back(limiter):
    charge = [Charge(key(), Rate(1, 60))]
    assert await limiter.acquire(charge) == 0
    await limiter.refund(charge)
    assert await limiter.acquire(charge) == 0
    assert 0 < await limiter.acquire(charge) <= 60


async def test_keys_expire_once_the_allowance_is_full_again(limiter, redis_url):
    name = key()
    await limiter.acquire([Charge(name, Rate(10, 36000))])
    redis = aioredis.Redis.from_url(redis_url)
    try:
        assert 0 < await redis.pttl(name) <= 3600_000  # one attempt of 10 per 10 hours costs 1 hour
    finally:
        await redis.aclose()


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/minute", Rate(10, 60)),
        (" 30 / minutes ", Rate(30, 60)),
        ("3/5 minutes", Rate(3, 300)),
        ("100/hour", Rate(100, 3600)),
        ("1/day", Rate(1, 86400)),
    ],
)
def test_rates_are_read_as_count_per_period(text, rate):
    assert Rate.parse(text) == rate


@pytest.mark.parametrize(
    "text", ["", "10", "10/fortnight", "0/minute", "10/0 minutes", "-1/minute", "ten/minute"]
)
def test_malformed_rates_are_refused(text):
    with pytest.raises(ValueError):
        Rate.parse(text)


def test_one_name_in_any_spelling_is_one_bucket():
    assert name_bucket("alice") == name_bucket(" ALICE ") == name_bucket("\uff41\uff4c\uff49\uff43\uff45")
    assert name_bucket("alice") != name_bucket("alicf")
    assert len(name_bucket("x" * 60_000)) == 32


def test_ipv6_clients_are_counted_per_64_network():
    same_lan = [ipaddress.ip_address("2001:db8:1:2::1"), ipaddress.ip_address("2001:db8:1:2:ffff::9")]
    assert {address_bucket(a) for a in same_lan} == {"2001:db8:1:2::/64"}
    assert address_bucket(ipaddress.ip_address("2001:db8:1:3::1")) == "2001:db8:1:3::/64"
    assert address_bucket(ipaddress.ip_address("203.0.113.7")) == "203.0.113.7"
    assert address_bucket(None) == "unix"


class PeerTransport:
    """A transport that only knows its peer address, which is all ``Request.remote`` asks of it."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def get_extra_info(self, name: str, default=None):
        return (self._peer, 40000) if name == "peername" else default


def request_from(peer: str, forwarded_for: str | None = None):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    return make_mocked_request("POST", "/v1/login", headers=headers, transport=PeerTransport(peer))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "trusted", "client"),
    [
        # No trusted proxy: the peer, whatever the header says.
        ("198.51.100.4", "203.0.113.7", "", "198.51.100.4"),
        # A trusted proxy: the rightmost untrusted hop; what the client wrote on the left is ignored.
        ("10.0.0.2", "203.0.113.7", "10.0.0.0/8", "203.0.113.7"),
        ("10.0.0.2", "1.2.3.4, 203.0.113.7", "10.0.0.0/8", "203.0.113.7"),
        ("10.0.0.2", "203.0.113.7, 10.0.0.9", "10.0.0.0/8", "203.0.113.7"),
        # A peer that is not trusted cannot speak for anyone, even if the header names a proxy.
        ("198.51.100.4", "203.0.113.7, 10.0.0.9", "10.0.0.0/8", "198.51.100.4"),
        # Garbage stops the walk at the last trusted hop; no header means the peer.
        ("10.0.0.2", "203.0.113.7, not-an-ip", "10.0.0.0/8", "10.0.0.2"),
        ("10.0.0.2", None, "10.0.0.0/8", "10.0.0.2"),
        ("10.0.0.2", "[2001:db8::5]:443", "10.0.0.0/8", "2001:db8::5"),
        ("::ffff:10.0.0.2", "203.0.113.7", "10.0.0.0/8", "203.0.113.7"),
    ],
)
def test_the_client_address_trusts_forwarded_for_only_from_trusted_proxies(
    peer, forwarded_for, trusted, client
):
    address = client_address(request_from(peer, forwarded_for), parse_networks(trusted))
    assert address == ipaddress.ip_address(client)
