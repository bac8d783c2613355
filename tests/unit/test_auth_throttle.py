"""The login-throttling decision, pure: GCRA arithmetic, and whose attempts
:class:`auth.throttle.LoginThrottle` admits, over an in-memory fake of its budget store with a clock the test
moves. The same budgets against PostgreSQL and through gRPC are in tests/test_auth_server.py; through the BFF
in tests/test_security_bff.py."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest
from support.credentials import service_token_file

from auth.errors import ResourceExhausted
from auth.settings import AuthSettings
from auth.throttle import LoginLimits, LoginThrottle
from crypto_mesh.throttle import (
    Charge,
    Rate,
    address_bucket,
    gcra_acquire,
    gcra_refund,
    parse_address_bucket,
)
from profile_bff.settings import BffSettings


class Clock:
    def __init__(self) -> None:
        self.now_ms = 1_800_000_000_000

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


class MemoryBudgets:
    """The :class:`auth.throttle.BudgetStore` port in a dict, on a test clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.tats: dict[str, int] = {}

    async def acquire(self, charges: Sequence[Charge]) -> float:
        wait_ms, tats = gcra_acquire(
            [self.tats.get(c.key) for c in charges], [c.rate for c in charges], self.clock.now_ms
        )
        for charge, tat in zip(charges, tats, strict=False):
            self.tats[charge.key] = tat
        return wait_ms / 1000

    async def refund(self, charges: Sequence[Charge]) -> None:
        for charge in charges:
            tat = gcra_refund(self.tats.get(charge.key), charge.rate, self.clock.now_ms)
            if tat is None:
                self.tats.pop(charge.key, None)
            else:
                self.tats[charge.key] = tat


LIMITS = LoginLimits(per_name_and_address=Rate(10, 900), per_name=Rate(100, 3600), per_device=Rate(10, 60))
OWNER_DEVICE = "a device token the owner got at its last login"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def throttle(clock) -> LoginThrottle:
    return LoginThrottle(MemoryBudgets(clock), LIMITS)


async def fail(throttle: LoginThrottle, name: str, address: str, device: str | None = None) -> bool:
    """One wrong password: True if it was admitted (and so counted), False if refused."""
    try:
        await throttle.admit(name, address, device)
    except ResourceExhausted:
        return False
    return True


async def test_a_burst_of_the_limit_passes_then_one_per_interval():
    rate = Rate(2, 1)
    wait, tats = gcra_acquire([None], [rate], 0)
    assert (wait, tats) == (0, [500])
    wait, tats = gcra_acquire(tats, [rate], 0)
    assert (wait, tats) == (0, [1000])
    assert gcra_acquire(tats, [rate], 0) == (500, [])
    assert gcra_acquire(tats, [rate], 500)[0] == 0


async def test_a_refused_attempt_charges_none_of_its_budgets():
    assert gcra_acquire([60_000, None], [Rate(1, 60), Rate(1, 60)], 0) == (60_000, [])


async def test_a_refund_gives_one_attempt_back_and_forgets_a_full_budget():
    assert gcra_refund(120_000, Rate(2, 120), 0) == 60_000
    assert gcra_refund(60_000, Rate(2, 120), 0) is None
    assert gcra_refund(None, Rate(2, 120), 0) is None


async def test_an_attacker_failing_fifty_times_from_one_address_does_not_lock_the_owner_out(throttle):
    admitted = [await fail(throttle, "alice", "203.0.113.66") for _ in range(50)]
    assert admitted == [True] * 10 + [False] * 40, "one address gets its (name, address) budget, no more"
    admission = await throttle.admit("alice", "198.51.100.7")
    assert not admission.trusted_device
    await throttle.succeeded(admission)


async def test_one_address_guessing_for_days_never_spends_the_names_budget(throttle, clock):
    for _ in range(48 * 60):  # two days, one guess a minute, every one that is admitted counted
        await fail(throttle, "alice", "203.0.113.66")
        clock.advance(60)
    assert await fail(throttle, "alice", "198.51.100.7")


async def test_many_addresses_spend_the_names_budget_but_the_owners_device_still_gets_in(throttle):
    attackers = [f"203.0.113.{n}" for n in range(1, 51)]
    admitted = sum([await fail(throttle, "alice", address) for address in attackers for _ in range(3)])
    assert admitted == 100, "the name's budget: 100 guesses from all addresses together"
    with pytest.raises(ResourceExhausted) as refused:
        await throttle.admit("alice", "198.51.100.7")
    assert refused.value.retry_after_s >= 1
    # The owner's device is budgeted apart, even from an address the attackers used.
    admission = await throttle.admit("alice", "203.0.113.1", OWNER_DEVICE)
    assert admission.trusted_device


async def test_a_device_out_of_its_own_budget_is_counted_as_any_other_client(throttle):
    admitted = [await fail(throttle, "alice", "198.51.100.7", OWNER_DEVICE) for _ in range(25)]
    # 10 on the device's budget, then 10 on the (name, address) budget, then refused.
    assert admitted == [True] * 20 + [False] * 5


async def test_a_success_is_refunded_so_the_owner_never_spends_a_budget(throttle):
    for _ in range(200):
        await throttle.succeeded(await throttle.admit("alice", "198.51.100.7"))
    assert await fail(throttle, "alice", "198.51.100.7")


async def test_spellings_of_one_name_share_its_budget(throttle):
    for spelling in ("alice", "ALICE", " Alice ", "\uff41\uff4c\uff49\uff43\uff45") * 3:
        await fail(throttle, spelling, "203.0.113.66")
    assert not await fail(throttle, "aLiCe", "203.0.113.66")


async def test_the_budgets_fill_up_again_with_time(throttle, clock):
    for _ in range(10):
        await fail(throttle, "alice", "203.0.113.66")
    with pytest.raises(ResourceExhausted) as refused:
        await throttle.admit("alice", "203.0.113.66")
    assert refused.value.retry_after_s == 90  # one attempt of 10 per 15 minutes
    clock.advance(90)
    assert await fail(throttle, "alice", "203.0.113.66")


@pytest.mark.parametrize(
    ("text", "bucket"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::/64", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("unix", "unix"),
        ("10.0.0.0/8", None),
        ("2001:db8::/32", None),
        ("not an address", None),
        ("", None),
    ],
)
def test_a_client_address_is_read_as_its_bucket(text, bucket):
    assert parse_address_bucket(text) == bucket


def test_an_address_bucket_reads_back_as_itself():
    for address in ("203.0.113.7", "2001:db8:1:2::99"):
        bucket = address_bucket(ipaddress.ip_address(address))
        assert parse_address_bucket(bucket) == bucket


async def test_a_password_change_is_charged_to_its_users_own_budget_which_others_cannot_spend(throttle):
    for n in range(150):
        await fail(throttle, "alice", f"203.0.113.{n}")
    assert not await fail(throttle, "alice", "198.51.100.7"), "the name's budget is spent"
    admitted = []
    for _ in range(11):
        try:
            await throttle.admit_password_change(user_id=7)
            admitted.append(True)
        except ResourceExhausted:
            admitted.append(False)
    assert admitted == [True] * 10 + [False]
    await throttle.admit_password_change(user_id=8)


def auth_settings(**rates):
    return AuthSettings(database_url="postgresql+asyncpg://x/auth", jwt_private_key_file="k.pem", **rates)


def bff_settings(**rates):
    return BffSettings(
        database_url="postgresql+asyncpg://x/profile",
        redis_url="redis://x",
        aggregator_token_file=service_token_file(),
        etl_token_file=service_token_file(),
        **rates,
    )


@pytest.mark.parametrize(
    ("per_name_and_address", "per_name"),
    [
        ("20/15 minutes", "10/15 minutes"),  # a larger burst
        ("10/minute", "100/hour"),  # a faster pace: 600 an hour against 100
    ],
)
def test_settings_refuse_budgets_where_one_address_could_spend_a_names_budget(per_name_and_address, per_name):
    rates = {"login_rate_per_name_and_address": per_name_and_address, "login_rate_per_name": per_name}
    for make in (auth_settings, bff_settings):
        with pytest.raises(ValueError, match="lock its owner out"):
            make(**rates)


def test_the_default_budgets_keep_one_address_from_spending_a_names_budget():
    for settings in (auth_settings(), bff_settings()):
        assert settings.login_rate_per_name_and_address.never_outpaces(settings.login_rate_per_name)
