"""The session rules, pure: when a presented refresh token rotates, and until when its successor lives (the
sliding lifetime capped by the absolute one). Against PostgreSQL and gRPC: tests/test_auth_server.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from auth.sessions import Rotation, SessionPolicy, TokenState

DAY = timedelta(days=1)
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
#: Refresh tokens live 7 days from their issue; a session at most 30 days from its login.
POLICY = SessionPolicy(refresh_ttl_s=7 * 86400, max_lifetime_s=30 * 86400)


def token(*, user_id=1, expires_in=DAY, started_ago=DAY, rotated=False, revoked=False) -> TokenState:
    return TokenState(
        user_id=user_id,
        expires_at=NOW + expires_in,
        family_started_at=NOW - started_ago,
        rotated_at=NOW - DAY if rotated else None,
        revoked_at=NOW - DAY if revoked else None,
    )


@pytest.mark.parametrize(
    ("state", "expected_user_id", "outcome"),
    [
        (token(), None, Rotation.ROTATED),
        (token(), 1, Rotation.ROTATED),
        (None, None, Rotation.UNKNOWN),
        (token(revoked=True), None, Rotation.REVOKED),
        (token(revoked=True, rotated=True), 2, Rotation.REVOKED),
        (token(), 2, Rotation.FOREIGN),
        (token(rotated=True), 2, Rotation.FOREIGN),
        (token(rotated=True), None, Rotation.REUSED),
        (token(rotated=True, expires_in=-DAY), None, Rotation.REUSED),
        (token(expires_in=timedelta(0)), None, Rotation.EXPIRED),
        (token(expires_in=-DAY), None, Rotation.EXPIRED),
        # Refreshed every day for 30 days: each token unexpired, the session past its absolute lifetime.
        (token(started_ago=30 * DAY), None, Rotation.EXPIRED),
        (token(started_ago=30 * DAY - timedelta(seconds=1)), None, Rotation.ROTATED),
    ],
)
def test_the_outcome_of_presenting_a_refresh_token(state, expected_user_id, outcome):
    assert POLICY.outcome(state, NOW, expected_user_id) is outcome


def test_a_new_token_lives_the_sliding_lifetime_while_the_session_is_young():
    assert POLICY.expiry(NOW, NOW - 3 * DAY) == NOW + 7 * DAY


def test_a_new_token_never_outlives_the_session():
    assert POLICY.expiry(NOW, NOW - 28 * DAY) == NOW + 2 * DAY
    assert POLICY.expiry(NOW, NOW) == NOW + 7 * DAY
    assert SessionPolicy(refresh_ttl_s=30 * 86400, max_lifetime_s=86400).expiry(NOW, NOW) == NOW + DAY


def test_lowering_the_absolute_lifetime_ends_sessions_already_started():
    state = token(started_ago=10 * DAY, expires_in=5 * DAY)
    assert POLICY.outcome(state, NOW, None) is Rotation.ROTATED
    assert SessionPolicy(7 * 86400, 9 * 86400).outcome(state, NOW, None) is Rotation.EXPIRED
