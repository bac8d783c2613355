"""The auth use cases: register, log in, refresh, log out, delete a user, publish the public keys.

Transport-free: :mod:`auth.server` turns requests into calls here and :mod:`auth.errors` into status codes.
A session is a refresh-token family: login starts one, every refresh rotates its token (the presented one is
marked rotated, a new one issued), and presenting a rotated token again means it leaked, so the whole family
is revoked and its legitimate holder must log in again (OAuth 2.0 Security BCP, RFC 9700 §4.14.2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from auth import passwords
from auth.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from auth.passwords import PasswordHasher
from auth.store import AuthStore, NameTaken, Rotation, User
from auth.tokens import REFRESH_TOKEN_MAX_CHARS, TokenIssuer, new_refresh_token, refresh_token_digest
from crypto_mesh.logs import get_logger

log = get_logger(__name__)

#: One message for an unknown name and a wrong password, so neither can be told from the other.
BAD_CREDENTIALS = "invalid name or password"
BAD_REFRESH_TOKEN = "refresh token is invalid, expired or revoked"


@dataclass(frozen=True)
class Tokens:
    """What a login or a refresh returns. Times are Unix seconds."""

    access_token: str
    access_expires_at: int
    refresh_token: str
    refresh_expires_at: int
    user_id: int
    name: str


class Accounts:
    """Users and their sessions over an :class:`AuthStore`.

    ``refresh_ttl_s``: lifetime in seconds of each refresh token, counted from its issue (a session stays
    alive while it is refreshed at least that often). ``clock`` returns Unix time in seconds.
    """

    def __init__(
        self,
        store: AuthStore,
        hasher: PasswordHasher,
        issuer: TokenIssuer,
        *,
        refresh_ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._issuer = issuer
        self._refresh_ttl_s = refresh_ttl_s
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

    async def login(self, raw_name: str, raw_password: str) -> Tokens:
        """Check the credentials and open a session (a new refresh-token family).

        Raises ``InvalidArgument`` (name or password missing), ``Unauthenticated`` (unknown name or wrong
        password, same message and about the same time).
        """
        user = await self._authenticate(raw_name, raw_password)
        now = self._now()
        refresh_token, digest = new_refresh_token()
        refresh_expires_at = now + self._refresh_ttl_s
        await self._store.start_family(user.id, digest, _utc(refresh_expires_at))
        log.info("user_logged_in", user_id=user.id)
        return self._tokens(user, now, refresh_token, refresh_expires_at)

    async def refresh(self, refresh_token: str, expected_user_id: int | None = None) -> Tokens:
        """Rotate a refresh token: a new access token and a new refresh token of the same family.

        ``expected_user_id``, when given, is the user the caller proved to be (its access token's subject).
        Raises ``InvalidArgument`` (token missing), ``Unauthenticated`` (unknown, expired, revoked, already
        rotated, or another user's than ``expected_user_id``: the last two also revoke the family).
        """
        _check_refresh_token_shape(refresh_token)
        now = self._now()
        new_token, new_digest = new_refresh_token()
        refresh_expires_at = now + self._refresh_ttl_s
        result = await self._store.rotate_refresh_token(
            refresh_token_digest(refresh_token), new_digest, _utc(refresh_expires_at), _utc(now), expected_user_id
        )
        if result.outcome is Rotation.REUSED:
            log.warning("refresh_token_reused_family_revoked")
        if result.outcome is Rotation.FOREIGN:
            log.warning("refresh_token_of_another_user_family_revoked", caller=expected_user_id)
        if result.outcome is not Rotation.ROTATED:
            raise Unauthenticated(BAD_REFRESH_TOKEN)
        return self._tokens(result.user, now, new_token, refresh_expires_at)

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

    async def delete_by_access_token(self, access_token: str) -> int:
        """Delete the user an access token was issued to; returns its id.

        Raises ``InvalidArgument`` (empty token), ``Unauthenticated`` (token does not verify), ``NotFound``
        (the user is already gone).
        """
        if not access_token:
            raise InvalidArgument("access_token is required")
        claims = self._issuer.verify(access_token)
        return await self._delete(claims.user_id)

    async def delete_by_credentials(self, raw_name: str, raw_password: str) -> int:
        """Delete the user with these credentials; returns its id. Errors as :meth:`login`, plus ``NotFound``
        if the user is deleted concurrently."""
        user = await self._authenticate(raw_name, raw_password)
        return await self._delete(user.id)

    def public_keys_json(self) -> str:
        """The JWK Set that verifies access tokens (see :meth:`TokenIssuer.jwks_json`)."""
        return self._issuer.jwks_json()

    async def _delete(self, user_id: int) -> int:
        if not await self._store.delete_user(user_id):
            raise NotFound("the user does not exist")
        log.info("user_deleted", user_id=user_id)
        return user_id

    async def _authenticate(self, raw_name: str, raw_password: str) -> User:
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
        if user is None:
            await self._hasher.verify_unknown()
            raise Unauthenticated(BAD_CREDENTIALS)
        if not await self._hasher.verify(password, user.password_hash):
            raise Unauthenticated(BAD_CREDENTIALS)
        if self._hasher.needs_rehash(user.password_hash):
            await self._store.set_password_hash(user.id, await self._hasher.hash(password))
        return user

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
