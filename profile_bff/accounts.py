"""The BFF's account use cases: register, log in, log out, over auth (:class:`profile_bff.clients.AuthClient`)
and the profile database.

Transport-free, as auth's own :mod:`auth.users`: the HTTP views (:mod:`profile_bff.views.accounts`) turn
requests into calls here, and :mod:`profile_bff.views.errors` turns the errors of :mod:`profile_bff.errors`
into answers. Only the account operations with a rule of the BFF's own are here; refreshing a session,
logging out everywhere and changing the password are one call to auth each, which the views make directly.

- A user and its profile come together: the auth user is created first, then the profile; if the profile
  cannot be stored the auth user is deleted again (by its credentials), so no user is left without a profile.
- A login heals a profile lost after an earlier failure: it is created again if missing (and skipped, logged,
  while the profile database is down: the login still succeeds).
- Logging out a refresh token that is no session has nothing to revoke and is not an error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from crypto_mesh.logs import get_logger
from crypto_mesh.throttle import DEVICE_TOKEN_MAX_CHARS
from profile_bff.errors import AuthError, InvalidRefreshToken, RateLimited, StoreUnavailable

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Registered:
    """A new auth user: ``user_id`` and its normalised ``name``."""

    user_id: int
    name: str


@dataclass(frozen=True, slots=True)
class Session:
    """What a login or a refresh returns: the access token and the refresh token with their expiries (Unix
    seconds), whose they are, and (login only) a login-device token for this client and its expiry."""

    access_token: str
    access_expires_at: int
    refresh_token: str
    refresh_expires_at: int
    user_id: int
    name: str
    device_token: str = ""
    device_expires_at: int = 0


class AuthPort(Protocol):
    """The calls to auth the account use cases make (:class:`profile_bff.clients.AuthClient`); each raises
    the :class:`~profile_bff.errors.AuthError` subclasses or :class:`~profile_bff.errors.RateLimited`."""

    async def register(self, name: str, password: str) -> Registered: ...

    async def login(
        self, name: str, password: str, *, client_address: str = "", device_token: str = ""
    ) -> Session: ...

    async def logout(self, refresh_token: str, owner: int | None = None) -> None: ...

    async def delete_user_by_credentials(self, name: str, password: str) -> int: ...


class ProfilesPort(Protocol):
    """The profile database as the account use cases need it (:class:`profile_bff.store.ProfileStore`)."""

    def require_migrated(self) -> None: ...

    async def ensure_profile(self, user_id: int, name: str) -> None: ...


class Accounts:
    """Register, log in and log out (see the module docstring) over ``auth`` and ``profiles``."""

    def __init__(self, auth: AuthPort, profiles: ProfilesPort) -> None:
        self._auth = auth
        self._profiles = profiles

    async def register(self, name: str, password: str) -> Registered:
        """Create the auth user and its profile.

        Raises :class:`~profile_bff.errors.Starting` (before anything is created), the errors of auth
        (``NameTaken``, ``InvalidInput``, ``AuthUnavailable``...) and :class:`StoreUnavailable` (the auth user
        is then deleted again).
        """
        self._profiles.require_migrated()
        created = await self._auth.register(name, password)
        try:
            await self._profiles.ensure_profile(created.user_id, created.name)
        except BaseException:
            await self._undo_registration(name, password, created.user_id)
            raise
        log.info("user_registered", user_id=created.user_id)
        return created

    async def login(self, name: str, password: str, *, client_address: str, device_token: str) -> Session:
        """Open a session at auth, and create the user's profile if it is missing.

        ``client_address``: the client's address bucket (:func:`crypto_mesh.throttle.address_bucket`);
        ``device_token``: the login-device cookie's value, if any (one longer than a device token can be is
        not sent). Raises the errors of auth (``Unauthenticated``, ``RateLimited`` with auth's wait,
        ``Overloaded``...).
        """
        session = await self._auth.login(
            name,
            password,
            client_address=client_address,
            device_token=device_token if len(device_token) <= DEVICE_TOKEN_MAX_CHARS else "",
        )
        try:
            self._profiles.require_migrated()
            await self._profiles.ensure_profile(session.user_id, session.name)
        except StoreUnavailable as exc:
            log.warning("profile_heal_deferred", user_id=session.user_id, error=str(exc))
        return session

    async def logout(self, refresh_token: str, owner: int | None) -> None:
        """Revoke the session of ``refresh_token`` (nothing when it is empty or no session). ``owner``: the
        user the caller proved to be, if any. Raises ``Forbidden`` (the session is another user's) and
        ``AuthUnavailable``."""
        if not refresh_token:
            return
        try:
            await self._auth.logout(refresh_token, owner)
        except InvalidRefreshToken:
            pass

    async def _undo_registration(self, name: str, password: str, user_id: int) -> None:
        try:
            await asyncio.shield(self._auth.delete_user_by_credentials(name, password))
        except (AuthError, RateLimited, asyncio.CancelledError) as exc:
            log.error("registration_undo_failed", user_id=user_id, error=repr(exc))
        else:
            log.warning("registration_undone", user_id=user_id)
