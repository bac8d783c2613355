"""The two lifetimes of a session, pure: until when a refresh token issued at a given instant lives (the
sliding lifetime capped by the absolute one). What presenting a token decides: tests/test_auth_rotation.py;
against PostgreSQL and gRPC: tests/test_auth_server.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from auth.sessions import SessionPolicy

DAY = timedelta(days=1)
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
#: Refresh tokens live 7 days from their issue; a session at most 30 days from its login.
POLICY = SessionPolicy(refresh_ttl_s=7 * 86400, max_lifetime_s=30 * 86400)


def test_a_new_token_lives_the_sliding_lifetime_while_the_session_is_young():
    assert POLICY.expiry(NOW, NOW - 3 * DAY) == NOW + 7 * DAY


def test_a_new_token_never_outlives_the_session():
    assert POLICY.expiry(NOW, NOW - 28 * DAY) == NOW + 2 * DAY
    assert POLICY.expiry(NOW, NOW) == NOW + 7 * DAY
    assert SessionPolicy(refresh_ttl_s=30 * 86400, max_lifetime_s=86400).expiry(NOW, NOW) == NOW + DAY


def test_the_session_deadline_is_its_absolute_lifetime_after_the_login():
    assert POLICY.deadline(NOW - 3 * DAY) == NOW + 27 * DAY
