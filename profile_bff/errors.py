"""The BFF's own errors, in its own terms: what its use cases (:mod:`profile_bff.portfolios`,
:mod:`profile_bff.accounts`, :mod:`profile_bff.idempotency`) and its adapters (:mod:`profile_bff.store`,
:mod:`profile_bff.clients`, the rate limits) raise.

None of them names a transport: the store's engines and auth's gRPC status codes are translated where they are
met, and :mod:`profile_bff.views.errors` maps each of these to its HTTP answer, once. ``str(error)`` is a
message a client may read; errors that say more than that (a user id, a symbol, a limit) carry it as an
attribute.
"""

from __future__ import annotations

import math

# -- the profile database and Redis ------------------------------------------------------------------------


class StoreUnavailable(Exception):
    """The profile database or Redis cannot be reached (connection refused, lost, timed out)."""


class Starting(StoreUnavailable):
    """The profile database's schema is not migrated yet (the BFF has just started)."""


class ProfileNotFound(LookupError):
    """No profile row for the user."""


class CoinAlreadyHeld(Exception):
    """The user already holds ``symbol`` (adding is not updating: PATCH changes a quantity)."""

    def __init__(self, symbol: str) -> None:
        super().__init__(f"{symbol} is already held")
        self.symbol = symbol


class CoinNotHeld(LookupError):
    """The user does not hold ``symbol``."""

    def __init__(self, symbol: str) -> None:
        super().__init__(f"{symbol} is not held")
        self.symbol = symbol


class CoinLimitReached(Exception):
    """The portfolio already holds ``limit`` coins, the most one may hold (``BFF_MAX_COINS_PER_USER``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a portfolio holds at most {limit} coins")
        self.limit = limit


class AlertNotFound(LookupError):
    """The user has no alert rule (or firing) with this id."""

    def __init__(self, alert_id: int | str) -> None:
        super().__init__(f"no alert {alert_id}")
        self.alert_id = alert_id


class AlertLimitReached(Exception):
    """The user already has ``limit`` alert rules, the most one may have (``BFF_MAX_ALERTS_PER_USER``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a user has at most {limit} alert rules")
        self.limit = limit


class InstrumentNotFound(LookupError):
    """No listed instrument has this symbol (the 404 of the routes under ``/v1/instruments/{symbol}``)."""

    def __init__(self, symbol: str) -> None:
        super().__init__(f"{symbol} is not listed by the exchange")
        self.symbol = symbol


# -- Idempotency-Key ---------------------------------------------------------------------------------------


class InvalidIdempotencyKey(ValueError):
    """An ``Idempotency-Key`` that is not 1 to 255 visible ASCII characters."""


class IdempotencyMismatch(Exception):
    """The key was already used by this user for a request with a different method, path or body."""


class IdempotencyInFlight(Exception):
    """The first request with this key is still being processed."""


# -- limits ------------------------------------------------------------------------------------------------


class RateLimited(Exception):
    """Out of allowance: the BFF's own limits or auth's failed-login budgets. ``retry_after_s``: whole seconds
    (at least 1) until the next attempt may be admitted; ``str(error)`` says so."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @classmethod
    def waiting(cls, what: str, wait_s: float) -> RateLimited:
        """``"<what>, retry in <n> s"`` after a wait of ``wait_s`` seconds, rounded up to whole seconds (at
        least 1), as ``Retry-After`` counts them (RFC 9110 §10.2.3)."""
        retry_after_s = max(1, math.ceil(wait_s))
        return cls(f"{what}, retry in {retry_after_s} s", retry_after_s)


# -- upstream services -------------------------------------------------------------------------------------


class AggregatorUnavailable(Exception):
    """The aggregator's control API could not be reached or did not answer 200."""


class EtlUnavailable(Exception):
    """The ETL's read API (market history) could not be reached, refused the BFF's credential, or failed."""


class AuthError(Exception):
    """Base of what a call to auth can end with (:class:`profile_bff.clients.AuthClient`)."""


class AuthRefusal(AuthError):
    """Auth refused the call for a reason of the caller's; ``str(error)`` is auth's message, written for
    clients (it never tells an unknown name from a wrong password)."""


class NameTaken(AuthRefusal):
    """Registration: the name is taken (compared case-insensitively)."""


class InvalidInput(AuthRefusal):
    """A name, password or token that auth does not accept (malformed, outside the policy)."""


class Unauthenticated(AuthRefusal):
    """Bad credentials, or a token that does not prove anyone."""


class InvalidRefreshToken(Unauthenticated):
    """A refresh token that is no live session: unknown, expired, revoked, rotated, malformed, or (when the
    caller proved who they are) another user's."""


class Forbidden(AuthRefusal):
    """The caller proved who they are, but the object is not theirs, or the current password is wrong."""


class UserNotFound(AuthRefusal):
    """The proven user no longer exists at auth."""


class AuthUnavailable(AuthError):
    """Auth cannot be reached, did not answer in time, or failed."""


class Overloaded(AuthUnavailable):
    """Auth shed the call: its password-hashing queue could not answer within the call's deadline;
    ``retry_after_s`` whole seconds (at least 1) as auth asked."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many password checks at once; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s
