"""The auth use cases: register, log in, refresh, log out (one session or all), change the password, delete
a user, publish the public keys.

Transport-free: :mod:`auth.server` turns requests into calls here and :mod:`auth.errors` into status codes.
A session is a refresh-token family: login starts one, every refresh rotates its token (the presented one is
marked rotated, a new one issued), and presenting a rotated token again means it leaked, so the whole family
is revoked and its legitimate holder must log in again (OAuth 2.0 Security BCP, RFC 9700 §4.14.2). A session
ends at the latest :class:`~auth.sessions.SessionPolicy` ``max_lifetime_s`` after its login.

Every password check (login, password change, deletion by credentials) is admitted by the
:class:`~auth.throttle.LoginThrottle` first, so that no route to auth gets more guesses than its budgets
allow.
Logging out everywhere and changing the password revoke every refresh-token family of the user; access tokens
already issued stay valid until their expiry (at most ``ACCESS_TOKEN_TTL_S``): they are verified without a
call to auth, which is what makes them cheap, and their short life is what bounds them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from auth import passwords
from auth.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from auth.passwords import PasswordHasher
from auth.sessions import Rotation, SessionPolicy
from auth.store import AuthStore, NameTaken, User
from auth.throttle import LoginThrottle
from auth.tokens import (
    REFRESH_TOKEN_MAX_CHARS,
    TokenIssuer,
    new_refresh_token,
    password_version,
    refresh_token_digest,
)
from crypto_mesh.logs import get_logger
from crypto_mesh.throttle import DEVICE_TOKEN_MAX_CHARS

log = get_logger(__name__)

#: One message for an unknown name and a wrong password, so neither can be told from the other.
BAD_CREDENTIALS = "invalid name or password"
BAD_REFRESH_TOKEN = "refresh token is invalid, expired or revoked"
WRONG_CURRENT_CREDENTIAL = "the current password is wrong"


@dataclass(frozen=True)
class Tokens:
    """What a login or a refresh returns. Times are Unix seconds."""

    access_token: str
    access_expires_at: int
    refresh_token: str
    refresh_expires_at: int
    user_id: int
    name: str
    #: Set by a login only: the login-device token for this client, and its expiry.
    device_token: str = ""
    device_expires_at: int = 0


class Accounts:
    """Users and their sessions over an :class:`AuthStore`.

    ``sessions``: the sliding and absolute lifetimes of a session. ``throttle``: the failed-login budgets.
    ``clock`` returns Unix time in seconds.
    """

    def __init__(
        self,
        store: AuthStore,
        hasher: PasswordHasher,
        issuer: TokenIssuer,
        *,
        sessions: SessionPolicy,
        throttle: LoginThrottle,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._issuer = issuer
        self._sessions = sessions
        self._throttle = throttle
        self._clock = clock

    async def register(self, raw_name: str, raw_password: str) -> tuple[int, str]:
        """Create a user; returns ``(user_id, normalised name)``.

        Raises ``InvalidArgument`` (bad name or password), ``AlreadyExists`` (name taken, in any case).
        """
        name = passwords.normalize_name(raw_name)
        password = passwords.normalize_password(raw_password)
        password_hash = await self._hasher.hash(password)
        try:
            user_id = await self._store.add_user(name, passwords.name_key(name), password_hash)
        except NameTaken:
            raise AlreadyExists("this name is already taken") from None
        log.info("user_registered", user_id=user_id)
        return user_id, name

    async def login(self, raw_name: str, raw_password: str, address: str, device_token: str = "") -> Tokens:
        """Check the credentials and open a session (a new refresh-token family).

        ``address``: the client's address bucket (:func:`crypto_mesh.throttle.address_bucket`);
        ``device_token``: the login-device token the client holds, if any. Raises ``InvalidArgument`` (name
        or password missing), ``Unauthenticated`` (unknown name or wrong password, same message and about the
        same time), ``ResourceExhausted`` (the name's failed-login budgets are spent, with the seconds to
        wait). The answer carries a new login-device token for this client.
        """
        user = await self._authenticate(raw_name, raw_password, address, device_token)
        now = self._now()
        refresh_token, digest = new_refresh_token()
        started = _utc(now)
        refresh_expires_at = int(self._sessions.expiry(started, started).timestamp())
        await self._store.start_family(user.id, digest, _utc(refresh_expires_at), started)
        device, device_expires_at = self._issuer.issue_device(user.id, user.name, user.password_hash, now)
        log.info("user_logged_in", user_id=user.id)
        tokens = self._tokens(user, now, refresh_token, refresh_expires_at)
        return dataclasses.replace(tokens, device_token=device, device_expires_at=device_expires_at)

    async def refresh(self, refresh_token: str, expected_user_id: int | None = None) -> Tokens:
        """Rotate a refresh token: a new access token and a new refresh token of the same family.

        ``expected_user_id``, when given, is the user the caller proved to be (its access token's subject).
        Raises ``InvalidArgument`` (token missing), ``Unauthenticated`` (unknown, expired, revoked, already
        rotated, or another user's than ``expected_user_id``: the last two also revoke the family).
        """
        _check_refresh_token_shape(refresh_token)
        now = self._now()
        new_token, new_digest = new_refresh_token()
        result = await self._store.rotate_refresh_token(
            refresh_token_digest(refresh_token), new_digest, _utc(now), self._sessions, expected_user_id
        )
        if result.outcome is Rotation.REUSED:
            log.warning("refresh_token_reused_family_revoked")
        if result.outcome is Rotation.FOREIGN:
            log.warning("refresh_token_of_another_user_family_revoked", caller=expected_user_id)
        if result.outcome is not Rotation.ROTATED:
            raise Unauthenticated(BAD_REFRESH_TOKEN)
        return self._tokens(result.user, now, new_token, int(result.expires_at.timestamp()))

    async def logout(self, refresh_token: str, expected_user_id: int | None = None) -> None:
        """Revoke the session (family) of ``refresh_token``. Idempotent; an unknown token is not an error.

        Raises ``InvalidArgument`` if the token is missing, ``PermissionDenied`` (and revokes nothing) if
        ``expected_user_id`` is given and the token is another user's.
        """
        _check_refresh_token_shape(refresh_token)
        revoked = await self._store.revoke_family_of(
            refresh_token_digest(refresh_token), _utc(self._now()), expected_user_id
        )
        if revoked is None:
            raise PermissionDenied("that session belongs to another user")

    async def logout_all(self, *, access_token: str = "", refresh_token: str = "") -> tuple[int, int]:
        """Revoke every session of the user proven by an unexpired ``access_token`` or, without one, by a
        live ``refresh_token`` of one of their sessions. Returns ``(user_id, sessions that were live)``.

        Raises ``InvalidArgument`` (no proof, or a malformed one), ``Unauthenticated`` (the proof does not
        check out: a bad or expired access token, or a refresh token that is unknown, revoked, rotated or
        expired).
        """
        now = _utc(self._now())
        if access_token:
            user_id = self._issuer.verify(access_token).user_id
        elif refresh_token:
            _check_refresh_token_shape(refresh_token)
            owner = await self._store.owner_of_live_token(refresh_token_digest(refresh_token), now)
            if owner is None:
                raise Unauthenticated(BAD_REFRESH_TOKEN)
            user_id = owner
        else:
            raise InvalidArgument("a proof is required: access_token or refresh_token")
        revoked = await self._store.revoke_all_families(user_id, now)
        log.info("user_logged_out_everywhere", user_id=user_id, sessions=revoked)
        return user_id, revoked

    async def change_password(self, access_token: str, raw_current: str, raw_new: str) -> tuple[int, int]:
        """Replace the password of the user an unexpired ``access_token`` proves, once ``raw_current`` checks
        out, and revoke every session of theirs. Returns ``(user_id, sessions that were live)``.

        A wrong current password is charged to the user's own budget
        (:meth:`~auth.throttle.LoginThrottle.admit_password_change`), which only holders of its access tokens
        can spend. Raises ``InvalidArgument`` (a field missing, or a new password outside the policy),
        ``Unauthenticated`` (bad token), ``PermissionDenied`` (wrong current password), ``ResourceExhausted``
        (the user's failed-login budgets are spent), ``NotFound`` (the user is gone).
        """
        if not access_token:
            raise InvalidArgument("access_token is required")
        if not raw_current:
            raise InvalidArgument("current_password is required")
        new_password = passwords.normalize_password(raw_new)
        claims = self._issuer.verify(access_token)
        user = await self._store.get_user(claims.user_id)
        if user is None:
            raise NotFound("the user does not exist")
        admission = await self._throttle.admit_password_change(user.id)
        if not await self._hasher.verify(passwords.candidate_password(raw_current), user.password_hash):
            raise PermissionDenied(WRONG_CURRENT_CREDENTIAL)
        await self._throttle.succeeded(admission)
        revoked = await self._store.change_password(
            user.id, await self._hasher.hash(new_password), _utc(self._now())
        )
        if revoked is None:
            raise NotFound("the user does not exist")
        log.info("password_changed", user_id=user.id, sessions_revoked=revoked)
        return user.id, revoked

    async def delete_by_access_token(self, access_token: str) -> int:
        """Delete the user an access token was issued to; returns its id.

        Raises ``InvalidArgument`` (empty token), ``Unauthenticated`` (token does not verify), ``NotFound``
        (the user is already gone).
        """
        if not access_token:
            raise InvalidArgument("access_token is required")
        claims = self._issuer.verify(access_token)
        return await self._delete(claims.user_id)

    async def delete_by_credentials(self, raw_name: str, raw_password: str, address: str) -> int:
        """Delete the user with these credentials; returns its id. Errors as :meth:`login`, plus ``NotFound``
        if the user is deleted concurrently."""
        user = await self._authenticate(raw_name, raw_password, address)
        return await self._delete(user.id)

    def public_keys_json(self) -> str:
        """The JWK Set that verifies access tokens (see :meth:`TokenIssuer.jwks_json`)."""
        return self._issuer.jwks_json()

    async def _delete(self, user_id: int) -> int:
        if not await self._store.delete_user(user_id):
            raise NotFound("the user does not exist")
        log.info("user_deleted", user_id=user_id)
        return user_id

    async def _authenticate(
        self, raw_name: str, raw_password: str, address: str, device_token: str = ""
    ) -> User:
        if not raw_name.strip():
            raise InvalidArgument("name is required")
        if not raw_password:
            raise InvalidArgument("password is required")
        password = passwords.candidate_password(raw_password)
        try:
            key = passwords.name_key(passwords.normalize_name(raw_name))
        except InvalidArgument:
            # No user can have this name; answer as for any unknown name.
            key = None
        user = await self._store.find_user(key) if key is not None else None
        device = device_token if user is not None and self._is_device_of(device_token, user) else None
        admission = await self._throttle.admit(raw_name, address, device)
        if user is None:
            await self._hasher.verify_unknown()
            raise Unauthenticated(BAD_CREDENTIALS)
        if not await self._hasher.verify(password, user.password_hash):
            raise Unauthenticated(BAD_CREDENTIALS)
        await self._throttle.succeeded(admission)
        if self._hasher.needs_rehash(user.password_hash):
            rehashed = await self._hasher.hash(password)
            await self._store.set_password_hash(user.id, rehashed)
            user = dataclasses.replace(user, password_hash=rehashed)
        return user

    def _is_device_of(self, device_token: str, user: User) -> bool:
        """True if ``device_token`` is a valid login-device token issued to ``user`` (this very user: not an
        earlier one of the same name) under its current password (a password change withdraws the trust)."""
        if not device_token or len(device_token) > DEVICE_TOKEN_MAX_CHARS:
            return False
        try:
            claims = self._issuer.verify_device(device_token)
        except Unauthenticated:
            return False
        return claims.user_id == user.id and claims.password_version == password_version(user.password_hash)

    def _tokens(self, user: User, now: int, refresh_token: str, refresh_expires_at: int) -> Tokens:
        access_token, access_expires_at = self._issuer.issue(user.id, user.name, now)
        return Tokens(
            access_token=access_token,
            access_expires_at=access_expires_at,
            refresh_token=refresh_token,
            refresh_expires_at=refresh_expires_at,
            user_id=user.id,
            name=user.name,
        )

    def _now(self) -> int:
        return int(self._clock())


def _check_refresh_token_shape(refresh_token: str) -> None:
    if not refresh_token:
        raise InvalidArgument("refresh_token is required")
    if len(refresh_token) > REFRESH_TOKEN_MAX_CHARS:
        raise InvalidArgument(f"refresh_token is longer than {REFRESH_TOKEN_MAX_CHARS} characters")


def _utc(unix_s: int) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)
