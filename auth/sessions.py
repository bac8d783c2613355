"""When a refresh token may be rotated, and until when its successor lives: the session rules, pure.

A session is a refresh-token family. It has two lifetimes (OWASP Session Management Cheat Sheet, "Session
Expiration"): a sliding one, since each refresh token lives ``refresh_ttl_s`` from its issue, so a session
stays alive while it is refreshed at least that often; and an absolute one, ``max_lifetime_s`` from the
family's start (the login), past which no refresh is accepted, however often it was refreshed. Every token's
expiry is therefore the earlier of the two, and a rotation also checks the absolute deadline itself, so that
lowering the setting applies to sessions already started.
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

    def outcome(self, state: TokenState | None, now: datetime, expected_user_id: int | None) -> Rotation:
        """What presenting a token in ``state`` at ``now`` does. ``expected_user_id``, when given, is the user
        the caller proved to be. Checked in this order: unknown, revoked, another user's, already rotated,
        expired (its own expiry or the family's absolute deadline), else rotated."""
        if state is None:
            return Rotation.UNKNOWN
        if state.revoked_at is not None:
            return Rotation.REVOKED
        if expected_user_id is not None and state.user_id != expected_user_id:
            return Rotation.FOREIGN
        if state.rotated_at is not None:
            return Rotation.REUSED
        if state.expires_at <= now or self.deadline(state.family_started_at) <= now:
            return Rotation.EXPIRED
        return Rotation.ROTATED
