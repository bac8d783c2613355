"""Presenting a refresh token, decided without a database (``SessionPolicy.decide_rotation`` in
:mod:`auth.sessions`): which outcome, whether the token's family is revoked, and until when the successor of a
rotated token lives.
The store applies the decision in one transaction: tests/test_auth_server.py, against PostgreSQL and gRPC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from auth.sessions import Rotation, RotationDecision, SessionPolicy, TokenState

DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
#: Refresh tokens live 7 days from their issue; a session at most 30 days from its login.
POLICY = SessionPolicy(refresh_ttl_s=7 * 86400, max_lifetime_s=30 * 86400)
ALICE, MALLORY = 1, 2


def token(*, user_id=ALICE, expires_in=DAY, started_ago=DAY, rotated=False, revoked=False) -> TokenState:
    """A token of ``user_id``'s family started ``started_ago``, expiring ``expires_in`` from now."""
    return TokenState(
        user_id=user_id,
        expires_at=NOW + expires_in,
        family_started_at=NOW - started_ago,
        rotated_at=NOW - DAY if rotated else None,
        revoked_at=NOW - DAY if revoked else None,
    )


@pytest.mark.parametrize("expected_user_id", [None, ALICE])
def test_a_live_token_rotates_into_a_successor_that_lives_the_sliding_lifetime(expected_user_id):
    decision = POLICY.decide_rotation(token(started_ago=3 * DAY), expected_user_id, NOW)
    assert decision == RotationDecision(Rotation.ROTATED, NOW + 7 * DAY)
    assert not decision.revokes_family


def test_the_successor_of_a_token_late_in_its_session_ends_with_the_session():
    decision = POLICY.decide_rotation(token(started_ago=28 * DAY), None, NOW)
    assert decision == RotationDecision(Rotation.ROTATED, NOW + 2 * DAY)


def test_a_token_one_second_before_the_absolute_deadline_still_rotates_for_that_second():
    decision = POLICY.decide_rotation(token(started_ago=30 * DAY - SECOND), None, NOW)
    assert decision == RotationDecision(Rotation.ROTATED, NOW + SECOND)


@pytest.mark.parametrize(
    ("presented", "expected_user_id", "outcome"),
    [
        (None, None, Rotation.UNKNOWN),
        (None, ALICE, Rotation.UNKNOWN),
        (token(revoked=True), None, Rotation.REVOKED),
        # Revoked wins over everything after it: the family is already dead, nothing more to revoke.
        (token(revoked=True, rotated=True), MALLORY, Rotation.REVOKED),
        (token(expires_in=SECOND - DAY, revoked=True), None, Rotation.REVOKED),
        # A token expires at its expiry instant.
        (token(expires_in=timedelta(0)), None, Rotation.EXPIRED),
        (token(expires_in=-DAY), ALICE, Rotation.EXPIRED),
        # Refreshed every day for 30 days: each token unexpired, the session past its absolute lifetime.
        (token(started_ago=30 * DAY), None, Rotation.EXPIRED),
        (token(started_ago=31 * DAY, expires_in=6 * DAY), ALICE, Rotation.EXPIRED),
    ],
)
def test_a_dead_or_unknown_token_changes_nothing(presented, expected_user_id, outcome):
    decision = POLICY.decide_rotation(presented, expected_user_id, NOW)
    assert decision == RotationDecision(outcome)
    assert decision.successor_expires_at is None
    assert not decision.revokes_family


@pytest.mark.parametrize(
    "presented",
    [
        token(rotated=True),
        # Reuse is reuse whether or not the rotated token has expired since, or its session ended.
        token(rotated=True, expires_in=-DAY),
        token(rotated=True, started_ago=40 * DAY),
    ],
)
@pytest.mark.parametrize("expected_user_id", [None, ALICE])
def test_a_rotated_token_presented_again_revokes_its_family(presented, expected_user_id):
    decision = POLICY.decide_rotation(presented, expected_user_id, NOW)
    assert decision == RotationDecision(Rotation.REUSED)
    assert decision.revokes_family


@pytest.mark.parametrize(
    "presented",
    [
        token(),
        # Another user's token is in the wrong hands whatever state it is in, short of revoked.
        token(rotated=True),
        token(expires_in=-DAY),
        token(started_ago=40 * DAY),
    ],
)
def test_a_token_presented_by_another_user_revokes_its_family(presented):
    decision = POLICY.decide_rotation(presented, MALLORY, NOW)
    assert decision == RotationDecision(Rotation.FOREIGN)
    assert decision.revokes_family


def test_lowering_the_absolute_lifetime_ends_sessions_already_started():
    presented = token(started_ago=10 * DAY, expires_in=5 * DAY)
    assert POLICY.decide_rotation(presented, None, NOW).outcome is Rotation.ROTATED
    lowered = SessionPolicy(refresh_ttl_s=7 * 86400, max_lifetime_s=9 * 86400)
    assert lowered.decide_rotation(presented, None, NOW) == RotationDecision(Rotation.EXPIRED)
