"""The BFF's account use cases without transport (profile_bff/accounts.py), and how auth's gRPC answers read
in the BFF's terms (profile_bff/clients.py, ``auth_error``).

Auth and the profile database are in-memory fakes written here; gRPC's answers are ``AioRpcError`` values as
grpc builds them. The same over real auth, PostgreSQL and HTTP: tests/test_bff_api.py and
tests/test_security_bff.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import pytest

from profile_bff.accounts import Accounts, Registered, Session
from profile_bff.clients import REFUSALS, RETRY_PUSHBACK_KEY, SESSION_REFUSALS, auth_error
from profile_bff.errors import (
    AuthUnavailable,
    Forbidden,
    InvalidInput,
    InvalidRefreshToken,
    NameTaken,
    Overloaded,
    RateLimited,
    Starting,
    StoreUnavailable,
    Unauthenticated,
    UserNotFound,
)

PASSWORD = "correct horse battery staple"


@dataclass
class Auth:
    """Auth's users and sessions; while ``down`` every call fails as an unreachable auth does."""

    users: dict[str, int] = field(default_factory=dict)
    sessions: dict[str, int] = field(default_factory=dict)
    logins: list[tuple[str, str, str]] = field(default_factory=list)
    down: bool = False

    async def register(self, name: str, password: str) -> Registered:
        self._reachable()
        if name.lower() in self.users:
            raise NameTaken("this name is already taken")
        self.users[name.lower()] = len(self.users) + 1
        return Registered(self.users[name.lower()], name.lower())

    async def login(
        self, name: str, password: str, *, client_address: str = "", device_token: str = ""
    ) -> Session:
        self._reachable()
        self.logins.append((name, client_address, device_token))
        if name.lower() not in self.users or password != PASSWORD:
            raise Unauthenticated("invalid name or password")
        user_id = self.users[name.lower()]
        self.sessions[f"refresh-{len(self.sessions)}"] = user_id
        return Session("access", 900, f"refresh-{len(self.sessions) - 1}", 3600, user_id, name.lower())

    async def logout(self, refresh_token: str, owner: int | None = None) -> None:
        self._reachable()
        if refresh_token not in self.sessions:
            raise InvalidRefreshToken("refresh token is invalid, expired or revoked")
        if owner is not None and self.sessions[refresh_token] != owner:
            raise Forbidden("that session belongs to another user")
        del self.sessions[refresh_token]

    async def delete_user_by_credentials(self, name: str, password: str) -> int:
        self._reachable()
        return self.users.pop(name.lower())

    def _reachable(self) -> None:
        if self.down:
            raise AuthUnavailable("the authentication service is unavailable")


@dataclass
class Profiles:
    """The profile database's profiles; ``migrated`` and ``down`` as the real one's states."""

    names: dict[int, str] = field(default_factory=dict)
    migrated: bool = True
    down: bool = False

    def require_migrated(self) -> None:
        if not self.migrated:
            raise Starting("the profile database is not ready yet")

    async def ensure_profile(self, user_id: int, name: str) -> None:
        if self.down:
            raise StoreUnavailable("profile database unavailable: OperationalError")
        self.names.setdefault(user_id, name)


async def test_registering_creates_the_auth_user_and_its_profile():
    auth, profiles = Auth(), Profiles()
    created = await Accounts(auth, profiles).register("Alice", PASSWORD)
    assert created == Registered(1, "alice")
    assert auth.users == {"alice": 1} and profiles.names == {1: "alice"}


async def test_a_registration_whose_profile_cannot_be_stored_is_undone_at_auth():
    auth, profiles = Auth(), Profiles(down=True)
    with pytest.raises(StoreUnavailable):
        await Accounts(auth, profiles).register("alice", PASSWORD)
    assert auth.users == {}


async def test_a_registration_left_undone_because_auth_went_away_still_reports_the_first_error():
    class GoneAfterRegistering(Auth):
        async def delete_user_by_credentials(self, name: str, password: str) -> int:
            raise AuthUnavailable("the authentication service is unavailable")

    auth, profiles = GoneAfterRegistering(), Profiles(down=True)
    with pytest.raises(StoreUnavailable):
        await Accounts(auth, profiles).register("alice", PASSWORD)
    assert auth.users == {"alice": 1}


async def test_nobody_registers_before_the_profile_schema_is_migrated():
    auth, profiles = Auth(), Profiles(migrated=False)
    with pytest.raises(Starting):
        await Accounts(auth, profiles).register("alice", PASSWORD)
    assert auth.users == {}


async def test_a_login_heals_a_lost_profile():
    auth, profiles = Auth(users={"alice": 4}), Profiles()
    session = await Accounts(auth, profiles).login("alice", PASSWORD, client_address="a:1", device_token="d")
    assert session.user_id == 4 and profiles.names == {4: "alice"}
    assert auth.logins == [("alice", "a:1", "d")]


@pytest.mark.parametrize(
    "profiles", [Profiles(down=True), Profiles(migrated=False)], ids=["down", "starting"]
)
async def test_a_login_succeeds_while_the_profile_database_cannot_heal_a_profile(profiles):
    auth = Auth(users={"alice": 4})
    session = await Accounts(auth, profiles).login("alice", PASSWORD, client_address="", device_token="")
    assert session.user_id == 4 and profiles.names == {}


async def test_a_device_cookie_longer_than_a_device_token_is_not_sent_to_auth():
    auth = Auth(users={"alice": 4})
    await Accounts(auth, Profiles()).login("alice", PASSWORD, client_address="", device_token="x" * 5000)
    assert auth.logins == [("alice", "", "")]


async def test_a_failed_login_is_auths_refusal():
    with pytest.raises(Unauthenticated):
        await Accounts(Auth(), Profiles()).login("alice", "wrong", client_address="", device_token="")


async def test_logging_out_a_session_revokes_it_and_a_token_that_is_no_session_is_no_error():
    auth = Auth(users={"alice": 4}, sessions={"refresh-0": 4})
    accounts = Accounts(auth, Profiles())
    await accounts.logout("refresh-0", None)
    assert auth.sessions == {}
    await accounts.logout("refresh-0", 4)
    await accounts.logout("", None)


async def test_logging_out_another_users_session_is_forbidden_and_revokes_nothing():
    auth = Auth(users={"alice": 4, "bob": 5}, sessions={"refresh-0": 4})
    with pytest.raises(Forbidden):
        await Accounts(auth, Profiles()).logout("refresh-0", 5)
    assert auth.sessions == {"refresh-0": 4}


# -- auth's gRPC answers in the BFF's terms ----------------------------------------------------------------


def rpc_error(code: grpc.StatusCode, details: str, pushback_ms: str | None = None) -> grpc.aio.AioRpcError:
    """The error a failed call raises, with auth's retry pushback in its trailing metadata if given."""
    trailing = grpc.aio.Metadata()
    if pushback_ms is not None:
        trailing.add(RETRY_PUSHBACK_KEY, pushback_ms)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.ALREADY_EXISTS, NameTaken),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, Forbidden),
        (grpc.StatusCode.NOT_FOUND, UserNotFound),
    ],
)
def test_auths_refusals_keep_its_message_for_the_client(code, error):
    translated = auth_error(rpc_error(code, "said by auth"), REFUSALS)
    assert type(translated) is error and str(translated) == "said by auth"


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT])
def test_a_refresh_token_refused_as_unauthenticated_or_invalid_is_no_session(code):
    translated = auth_error(rpc_error(code, "refresh token is invalid"), SESSION_REFUSALS)
    assert isinstance(translated, InvalidRefreshToken)


@pytest.mark.parametrize(
    ("pushback_ms", "retry_after_s"), [("2500", 3), ("1000", 1), ("0", 1), (None, 1), ("x", 1)]
)
def test_spent_login_budgets_are_rate_limited_for_auths_pushback_in_whole_seconds(pushback_ms, retry_after_s):
    translated = auth_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many attempts", pushback_ms))
    assert isinstance(translated, RateLimited)
    assert (str(translated), translated.retry_after_s) == ("too many attempts", retry_after_s)


def test_a_call_auth_shed_is_overloaded_for_its_pushback():
    translated = auth_error(rpc_error(grpc.StatusCode.UNAVAILABLE, "queue full", "1200"))
    assert isinstance(translated, Overloaded) and translated.retry_after_s == 2
    assert str(translated) == "too many password checks at once; retry in 2 s"


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL]
)
def test_any_other_failure_is_auth_unavailable(code):
    translated = auth_error(rpc_error(code, "connection refused"))
    assert type(translated) is AuthUnavailable
    assert str(translated) == "the authentication service is unavailable"
