"""When a refresh token may be rotated, and until when its successor lives: the session rules, pure.

A session is a refresh-token family. It has two lifetimes (OWASP Session Management Cheat Sheet, "Session
Expiration"): a sliding one, since each refresh token lives ``refresh_ttl_s`` from its issue, so a session
stays alive while it is refreshed at least that often; and an absolute one, ``max_lifetime_s`` from the
family's start (the login), past which no refresh is accepted, however often it was refreshed. Every token's
expiry is therefore the earlier of the two, and a rotation also checks the absolute deadline itself, so that
lowering the setting applies to sessions already started.

Presenting a refresh token is decided here (:meth:`SessionPolicy.decide_rotation`) and applied by
:meth:`auth.store.AuthStore.rotate_refresh_token` in the transaction that read the token: a live token is
rotated (marked rotated, a successor issued in its family), a rotated one presented again means it leaked and
its whole family is revoked (OAuth 2.0 Security BCP, RFC 9700 §4.14.2), and so is the family of a token
presented by another user than its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


class Rotation(enum.Enum):
    """Outcome of presenting a refresh token for rotation."""

    ROTATED = "rotated"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    #: The token had already been rotated: its family is now revoked.
    REUSED = "reused"
    #: The token belongs to another user than the caller's: its family is now revoked.
    FOREIGN = "foreign"


#: Outcomes that revoke the presented token's whole family (RFC 9700 §4.14.2: a reused or misplaced refresh
#: token is in the wrong hands).
REVOKES_FAMILY = frozenset({Rotation.REUSED, Rotation.FOREIGN})


@dataclass(frozen=True)
class TokenState:
    """What the store knows of a presented refresh token. Times are timezone-aware UTC."""

    user_id: int
    expires_at: datetime
    family_started_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class RotationDecision:
    """The decision on a presented refresh token, for the store to apply in the transaction that read it.

    ``outcome``: the answer. ``successor_expires_at`` (UTC), set exactly when the outcome is ``ROTATED``: mark
    the presented token rotated at ``now`` and add to its family a successor that expires then.
    """

    outcome: Rotation
    successor_expires_at: datetime | None = None

    @property
    def revokes_family(self) -> bool:
        """True if every token of the presented token's family is to be revoked at ``now`` (and committed)."""
        return self.outcome in REVOKES_FAMILY


@dataclass(frozen=True)
class SessionPolicy:
    """The two lifetimes of a session, in seconds: ``refresh_ttl_s`` (sliding) and ``max_lifetime_s``
    (absolute, from the login)."""

    refresh_ttl_s: int
    max_lifetime_s: int

    def deadline(self, family_started_at: datetime) -> datetime:
        """The instant past which the family can no longer be refreshed."""
        return family_started_at + timedelta(seconds=self.max_lifetime_s)

    def expiry(self, now: datetime, family_started_at: datetime) -> datetime:
        """Expiry of a refresh token issued at ``now`` in a family started at ``family_started_at``."""
        return min(now + timedelta(seconds=self.refresh_ttl_s), self.deadline(family_started_at))

    def decide_rotation(
        self, token: TokenState | None, expected_user_id: int | None, now: datetime
    ) -> RotationDecision:
        """What presenting a refresh token at ``now`` does; ``token`` is what the store holds of it (``None``
        if unknown), ``expected_user_id``, when given, the user the caller proved to be.

        Checked in this order, the first that holds wins: unknown; revoked; another user's (revokes the
        family); already rotated (revokes the family); expired, by its own expiry or by the family's absolute
        deadline (both exclusive of ``now``: a token is dead at its expiry instant); else rotated, with a
        successor that lives until :meth:`expiry`.
        """
        if token is None:
            return RotationDecision(Rotation.UNKNOWN)
        if token.revoked_at is not None:
            return RotationDecision(Rotation.REVOKED)
        if expected_user_id is not None and token.user_id != expected_user_id:
            return RotationDecision(Rotation.FOREIGN)
        if token.rotated_at is not None:
            return RotationDecision(Rotation.REUSED)
        if token.expires_at <= now or self.deadline(token.family_started_at) <= now:
            return RotationDecision(Rotation.EXPIRED)
        return RotationDecision(Rotation.ROTATED, self.expiry(now, token.family_started_at))

