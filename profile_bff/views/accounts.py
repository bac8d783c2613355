"""The session routes: ``POST /v1/register``, ``/v1/login``, ``/v1/refresh``, ``/v1/logout``, ``/v1/password``
(docs/CONTRACTS.md, "BFF REST"), over :class:`profile_bff.accounts.Accounts` and the auth client.

The refresh token travels only as an ``HttpOnly`` cookie, and so does the login-device token
(:mod:`profile_bff.cookies`); the routes the refresh cookie authenticates refuse cross-site requests.
"""

from __future__ import annotations

import time

from aiohttp import web

from crypto_mesh.httperrors import ApiError, error_response
from crypto_mesh.logs import get_logger
from profile_bff import ratelimit
from profile_bff.accounts import Accounts, Session
from profile_bff.clients import AuthClient
from profile_bff.cookies import CookieSpec, cross_site_refusal, device_cookie, own_origins, refresh_cookie
from profile_bff.errors import InvalidRefreshToken
from profile_bff.settings import BffSettings
from profile_bff.tokens import AccessTokenVerifier
from profile_bff.views.requests import (
    CHALLENGE,
    authenticate,
    json_response,
    read_json_object,
    string_field,
)

log = get_logger(__name__)


class AccountViews:
    """The session routes over ``accounts`` and ``auth``; callers prove themselves with tokens ``verifier``
    checks; cookies and the trusted proxies as ``settings`` say."""

    def __init__(
        self, accounts: Accounts, auth: AuthClient, verifier: AccessTokenVerifier, settings: BffSettings
    ) -> None:
        self._accounts = accounts
        self._auth = auth
        self._verifier = verifier
        self._settings = settings
        self._refresh_cookie = refresh_cookie(settings.cookie_secure)
        self._device_cookie = device_cookie(settings.cookie_secure)

    async def register(self, request: web.Request) -> web.Response:
        """``POST /v1/register {"name", "password"}`` → ``201 {"id", "name"}``; 409 taken, 422 invalid."""
        body = await read_json_object(request)
        created = await self._accounts.register(string_field(body, "name"), string_field(body, "password"))
        return json_response({"id": created.user_id, "name": created.name}, status=201)

    async def login(self, request: web.Request) -> web.Response:
        """``POST /v1/login {"name", "password"}`` → 200 access token; the refresh token only as a cookie, and
        a login-device cookie that keeps this client's attempts apart from others' in the login limits."""
        body = await read_json_object(request)
        session = await self._accounts.login(
            string_field(body, "name"),
            string_field(body, "password"),
            client_address=ratelimit.address_bucket(
                ratelimit.client_address(request, self._settings.trusted_proxies)
            ),
            device_token=request.cookies.get(self._device_cookie.name, ""),
        )
        response = self._token_response(session)
        if session.device_token:
            _set_cookie(
                response,
                self._device_cookie,
                session.device_token,
                max(0, session.device_expires_at - int(time.time())),
            )
        return response

    async def refresh(self, request: web.Request) -> web.Response:
        """``POST /v1/refresh`` with the refresh cookie → 200 as login, cookie rotated; 401 (the cookie is
        cleared when auth knows no such session); 403 cross-site."""
        self._refuse_cross_site(request)
        token = request.cookies.get(self._refresh_cookie.name)
        if not token:
            raise ApiError(401, "unauthenticated", "no refresh token cookie")
        owner = await self._session_owner(request)
        try:
            session = await self._auth.refresh(token, owner)
        except InvalidRefreshToken:
            return self._invalid_refresh_token()
        return self._token_response(session)

    async def logout(self, request: web.Request) -> web.Response:
        """``POST /v1/logout`` → 204: the cookie's session is revoked at auth and the cookie cleared; 403
        cross-site or another user's session. ``?all=true``: every session of the user is revoked (see
        :meth:`_logout_everywhere`)."""
        self._refuse_cross_site(request)
        everywhere = request.query.get("all", "false")
        if everywhere not in ("true", "false"):
            raise ApiError(422, "invalid", "all must be true or false")
        if everywhere == "true":
            return await self._logout_everywhere(request)
        token = request.cookies.get(self._refresh_cookie.name, "")
        owner = await self._session_owner(request)
        await self._accounts.logout(token, owner)
        return self._cleared(web.Response(status=204))

    async def _logout_everywhere(self, request: web.Request) -> web.Response:
        """``POST /v1/logout?all=true`` → 204: every session (refresh-token family) of the user ends, on every
        device; the cookie is cleared. The user is the one an unexpired ``Authorization: Bearer`` access token
        names or, without that header, the owner of the live session the refresh cookie carries; 401 if
        neither proves anyone. Access tokens already issued stay valid until they expire (at most 15
        minutes)."""
        if "Authorization" in request.headers:
            _claims, access_token = await authenticate(request, self._verifier)
            await self._auth.logout_all(access_token=access_token)
        else:
            token = request.cookies.get(self._refresh_cookie.name)
            if not token:
                raise ApiError(
                    401,
                    "unauthenticated",
                    "send Authorization: Bearer <access token> or the refresh token cookie",
                    CHALLENGE,
                )
            try:
                await self._auth.logout_all(refresh_token=token)
            except InvalidRefreshToken:
                return self._invalid_refresh_token()
        return self._cleared(web.Response(status=204))

    async def change_password(self, request: web.Request) -> web.Response:
        """``POST /v1/password {"current_password", "new_password"}`` with ``Authorization: Bearer <access>``
        → 204: the password is replaced and every session of the user ends (the cookie is cleared; log in
        again). 401 bad or expired token, 403 wrong current password, 422 a new password outside the policy,
        429 (+ Retry-After) too many wrong current passwords for this user (a budget of the user's own, which
        others cannot spend). Access tokens already issued stay valid until they expire (at most 15
        minutes)."""
        _claims, access_token = await authenticate(request, self._verifier)
        body = await read_json_object(request)
        current, new = string_field(body, "current_password"), string_field(body, "new_password")
        await self._auth.change_password(access_token, current, new)
        response = web.Response(status=204)
        response.headers["Cache-Control"] = "no-store"
        return self._cleared(response)

    async def _session_owner(self, request: web.Request) -> int | None:
        """The user the caller proves with an access token (expired or not), if it sends one.

        A refresh or logout that names its user this way is refused by auth when the cookie's session is
        another user's (and a refresh then revokes that session: the cookie is in the wrong hands). A cookie
        alone, as a browser sends it, still works: the session it carries is then the only identity claimed.
        """
        if "Authorization" not in request.headers:
            return None
        claims, _token = await authenticate(request, self._verifier, allow_expired=True)
        return claims.user_id

    def _refuse_cross_site(self, request: web.Request) -> None:
        """403 if a browser sent this cookie-authenticated request on behalf of another site
        (:func:`profile_bff.cookies.cross_site_refusal`)."""
        own = own_origins(request.scheme, request.host, self._settings.cookie_secure)
        reason = cross_site_refusal(request.headers, own, self._settings.allowed_origins)
        if reason is not None:
            log.info("cross_site_refused", path=request.path, origin=request.headers.get("Origin"))
            raise ApiError(403, "cross_site", reason)

    def _token_response(self, session: Session) -> web.Response:
        now = int(time.time())
        response = json_response(
            {
                "access_token": session.access_token,
                "token_type": "Bearer",
                "expires_in": max(0, session.access_expires_at - now),
            }
        )
        _set_cookie(
            response, self._refresh_cookie, session.refresh_token, max(0, session.refresh_expires_at - now)
        )
        # Token responses must not be cached (RFC 6749 §5.1).
        response.headers["Cache-Control"] = "no-store"
        return response

    def _invalid_refresh_token(self) -> web.Response:
        """401 for a refresh token cookie auth does not know (expired, revoked, rotated), which is cleared."""
        return self._cleared(error_response(401, "unauthenticated", "the refresh token is not valid"))

    def _cleared(self, response: web.Response) -> web.Response:
        """``response`` clearing the refresh-token cookie."""
        cookie = self._refresh_cookie
        response.del_cookie(
            cookie.name, path=cookie.path, secure=cookie.secure, httponly=True, samesite="Strict"
        )
        return response


def _set_cookie(response: web.StreamResponse, cookie: CookieSpec, value: str, max_age: int) -> None:
    response.set_cookie(
        cookie.name,
        value,
        max_age=max_age,
        path=cookie.path,
        secure=cookie.secure,
        httponly=True,
        samesite="Strict",
    )
