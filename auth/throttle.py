"""Auth's own limit on failed logins, so that a caller reaching auth directly gets no more guesses than
through the BFF.

The budgets and their rules are those of :mod:`crypto_mesh.throttle` (per (name, address), per name, per
login device; successes refunded), kept in a :class:`BudgetStore`: PostgreSQL in the service
(:class:`auth.store.LoginBudgetStore`), an in-memory fake in the unit tests. Keys: ``login:name-addr:<name
bucket>:<address bucket>``, ``login:name:<name bucket>``, ``login:device:<device bucket>``, and
``login:password-change:<user id>``.

A password change is made with an access token, so its caller has already proven the session: its wrong
current passwords are charged to a budget of that user's own, at the per-(name, address) rate, and never to
the name's shared budgets, which others can spend (else anyone could keep the owner from changing a password
they fear is known).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from auth.errors import ResourceExhausted
from crypto_mesh.logs import get_logger
from crypto_mesh.throttle import Charge, Rate, device_bucket, name_bucket

log = get_logger(__name__)

TOO_MANY_FAILURES = "too many failed logins for this name, retry in {} s"
TOO_MANY_WRONG_CURRENT = "too many wrong current passwords, retry in {} s"


class BudgetStore(Protocol):
    """Where the budgets live (the port :class:`LoginThrottle` uses)."""

    async def acquire(self, charges: Sequence[Charge]) -> float:
        """Charge one attempt to every budget, or to none; 0 when allowed, else the seconds to wait."""

    async def refund(self, charges: Sequence[Charge]) -> None:
        """Give one attempt back to every budget."""


@dataclass(frozen=True)
class LoginLimits:
    """Failed logins allowed per (name, address), per name and per login device."""

    per_name_and_address: Rate
    per_name: Rate
    per_device: Rate


@dataclass(frozen=True)
class Admission:
    """The budgets an admitted attempt was charged to; ``trusted_device``: charged to its device's only."""

    charges: tuple[Charge, ...]
    trusted_device: bool


class LoginThrottle:
    """Admits login attempts (and other password checks) against the budgets of their name."""

    def __init__(self, budgets: BudgetStore, limits: LoginLimits) -> None:
        self._budgets = budgets
        self._limits = limits

    async def admit(self, name: str, address: str, device_token: str | None = None) -> Admission:
        """Charge one attempt at ``name`` (as typed) from ``address`` (an address bucket,
        :func:`crypto_mesh.throttle.address_bucket`). ``device_token``: a device token the caller verified as
        issued for this name; its own budget is tried first. Raises
        :class:`~auth.errors.ResourceExhausted` when the attempt is refused (nothing is charged then)."""
        if device_token:
            device = (Charge(f"login:device:{device_bucket(device_token)}", self._limits.per_device),)
            if await self._budgets.acquire(device) == 0:
                return Admission(device, trusted_device=True)
        bucket = name_bucket(name)
        charges = (
            Charge(f"login:name-addr:{bucket}:{address}", self._limits.per_name_and_address),
            Charge(f"login:name:{bucket}", self._limits.per_name),
        )
        wait_s = await self._budgets.acquire(charges)
        if wait_s > 0:
            retry_after = max(1, math.ceil(wait_s))
            log.info("login_throttled", name_bucket=bucket, address=address, retry_after_s=retry_after)
            raise ResourceExhausted(TOO_MANY_FAILURES.format(retry_after), retry_after)
        return Admission(charges, trusted_device=False)

    async def admit_password_change(self, user_id: int) -> Admission:
        """Charge one check of the current password of ``user_id``, proven by an access token, to that user's
        own budget. Raises :class:`~auth.errors.ResourceExhausted` when refused (nothing is charged)."""
        charges = (Charge(f"login:password-change:{user_id}", self._limits.per_name_and_address),)
        wait_s = await self._budgets.acquire(charges)
        if wait_s > 0:
            retry_after = max(1, math.ceil(wait_s))
            log.info("password_change_throttled", user_id=user_id, retry_after_s=retry_after)
            raise ResourceExhausted(TOO_MANY_WRONG_CURRENT.format(retry_after), retry_after)
        return Admission(charges, trusted_device=False)

    async def succeeded(self, admission: Admission) -> None:
        """The admitted attempt had the right password: it does not count."""
        await self._budgets.refund(admission.charges)
