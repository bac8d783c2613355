"""Clients of the BFF's upstream services: auth (gRPC, proto/auth.proto), the aggregator (control HTTP) and
the ETL (its read API over HTTP).

All are anti-corruption layers: they speak the upstream's protocol and hand the BFF its own types
(:class:`~profile_bff.accounts.Registered`, :class:`~profile_bff.accounts.Session`,
:class:`~profile_bff.candle.CandlePage`) and its own errors (:mod:`profile_bff.errors`). How auth's gRPC
status codes read in the BFF's terms is decided here, once (:func:`auth_error`); nothing past this module
sees gRPC, nor the ETL's JSON.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import grpc
from yarl import URL

from crypto_mesh import jsonutil
from crypto_mesh.candles import CandleRange
from crypto_mesh.decimals import parse_decimal
from crypto_mesh.grpc_tls import tls_channel
from crypto_mesh.observe import request_id_headers
from crypto_mesh.logs import get_logger
from crypto_mesh.pki import AUTH, MeshTls
from crypto_mesh.proto import auth_pb2, auth_pb2_grpc
from crypto_mesh.servicecreds import bearer_header
from profile_bff.accounts import Registered, Session
from profile_bff.candle import Candle, CandlePage
from profile_bff.errors import (
    AggregatorUnavailable,
    AuthError,
    AuthRefusal,
    AuthUnavailable,
    EtlUnavailable,
    Forbidden,
    InvalidInput,
    InvalidRefreshToken,
    NameTaken,
    Overloaded,
    RateLimited,
    Unauthenticated,
    UserNotFound,
)

log = get_logger(__name__)

#: Trailing metadata of an auth refusal: how long to wait before retrying, in ms (gRFC A6 retry pushback).
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"

#: Auth's refusals for a reason of the caller's, by status; auth's messages are written for clients.
REFUSALS: Mapping[grpc.StatusCode, type[AuthRefusal]] = {
    grpc.StatusCode.ALREADY_EXISTS: NameTaken,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Forbidden,
    grpc.StatusCode.NOT_FOUND: UserNotFound,
}
#: The same for the calls that present a refresh token: auth refuses one that is expired, revoked, rotated or
#: not a token at all (or, when the caller named its user, another user's) as UNAUTHENTICATED or
#: INVALID_ARGUMENT, which then means "no session".
SESSION_REFUSALS: Mapping[grpc.StatusCode, type[AuthRefusal]] = {
    **REFUSALS,
    grpc.StatusCode.UNAUTHENTICATED: InvalidRefreshToken,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRefreshToken,
}
def auth_error(
    exc: grpc.aio.AioRpcError, refusals: Mapping[grpc.StatusCode, type[AuthRefusal]] = REFUSALS
) -> AuthError | RateLimited:
    """The BFF's error for a failed call to auth:

    - a status of ``refusals`` → that :class:`AuthRefusal` with auth's message (the status's name should auth
      send none);
    - RESOURCE_EXHAUSTED (failed-login budgets spent) → :class:`RateLimited` with auth's message and its retry
      pushback in whole seconds (1 if it sent none);
    - UNAVAILABLE with a retry pushback (auth shed the call) → :class:`Overloaded`;
    - anything else (UNAVAILABLE, DEADLINE_EXCEEDED, and, logged as ``auth_call_failed``, the statuses that
      mean a bug) → :class:`AuthUnavailable`.
    """
    code = exc.code()
    refusal = refusals.get(code)
    if refusal is not None:
        return refusal(exc.details() or code.name.lower())
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(exc.details() or code.name.lower(), _retry_after_s(exc) or 1)
    retry_after_s = _retry_after_s(exc) if code == grpc.StatusCode.UNAVAILABLE else None
    if retry_after_s is not None:
        return Overloaded(retry_after_s)
    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        log.error("auth_call_failed", code=code.name, details=exc.details())
    return AuthUnavailable("the authentication service is unavailable")


def _retry_after_s(exc: grpc.aio.AioRpcError) -> int | None:
    """The whole seconds (at least 1) of the retry pushback auth attached to ``exc``, or ``None``."""
    for key, value in exc.trailing_metadata() or ():
        if key == RETRY_PUSHBACK_KEY:
            try:
                milliseconds = int(value)
            except ValueError:
                return None
            return max(1, math.ceil(milliseconds / 1000)) if milliseconds >= 0 else None
    return None


class AuthClient:
    """The ``crypto.auth.v1.Auth`` service at ``target`` (``host:port``), over mutual TLS with ``tls`` (the
    BFF's identity); the server must prove the ``auth`` identity. Each call times out after ``timeout_s``
    seconds (then :class:`AuthUnavailable`). The channel connects lazily and reconnects by itself.

    Every call raises the BFF's errors of :func:`auth_error`, never gRPC's.
    """

    def __init__(
        self,
        target: str,
        tls: MeshTls,
        timeout_s: float = 5.0,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self._channel = tls_channel(target, tls, AUTH, interceptors=interceptors)
        self._stub = auth_pb2_grpc.AuthStub(self._channel)
        self._timeout_s = timeout_s

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def register(self, name: str, password: str) -> Registered:
        """Create a user: its id and normalised name. ``NameTaken``, ``InvalidInput``, ``Overloaded``."""
        request = auth_pb2.RegisterRequest(name=name, password=password)
        response = await self._call(self._stub.Register, request)
        return Registered(response.user_id, response.name)

    async def login(
        self, name: str, password: str, *, client_address: str = "", device_token: str = ""
    ) -> Session:
        """Open a session, with a login-device token for this client. ``client_address``: the end user's
        address bucket, ``device_token``: the one it holds from an earlier login (both for auth's failed-login
        budgets). ``Unauthenticated``, ``RateLimited`` (auth's budgets spent), ``Overloaded``."""
        request = auth_pb2.LoginRequest(
            name=name, password=password, client_address=client_address, device_token=device_token
        )
        return _session(await self._call(self._stub.Login, request))

    async def refresh(self, refresh_token: str, owner: int | None = None) -> Session:
        """Rotate a refresh token (the presented one becomes invalid); ``owner``, when known, is the user the
        caller proved to be, and the token must be theirs. ``InvalidRefreshToken`` otherwise."""
        request = auth_pb2.RefreshRequest(refresh_token=refresh_token, expected_user_id=owner or 0)
        return _session(await self._call(self._stub.Refresh, request, SESSION_REFUSALS))

    async def logout(self, refresh_token: str, owner: int | None = None) -> None:
        """Revoke the session (token family) of a refresh token; idempotent. ``owner`` as for :meth:`refresh`:
        another user's session is ``Forbidden``; a token that is no session, ``InvalidRefreshToken``."""
        request = auth_pb2.LogoutRequest(refresh_token=refresh_token, expected_user_id=owner or 0)
        await self._call(self._stub.Logout, request, SESSION_REFUSALS)

    async def logout_all(self, *, access_token: str = "", refresh_token: str = "") -> int:
        """Revoke every session of the user an unexpired access token (or else a live refresh token) proves;
        returns how many were live. A bad access token is ``Unauthenticated``; a refresh token that is no
        live session, ``InvalidRefreshToken``."""
        if access_token:
            request = auth_pb2.LogoutAllRequest(access_token=access_token)
            response = await self._call(self._stub.LogoutAll, request)
        else:
            request = auth_pb2.LogoutAllRequest(refresh_token=refresh_token)
            response = await self._call(self._stub.LogoutAll, request, SESSION_REFUSALS)
        return response.sessions_revoked

    async def change_password(self, access_token: str, current_password: str, new_password: str) -> int:
        """Replace the password of the user an access token proves and revoke every session of theirs;
        returns how many were live. ``Forbidden``: the current password is wrong; ``InvalidInput``: the new
        one is outside the policy; ``RateLimited``: too many wrong current passwords."""
        request = auth_pb2.ChangePasswordRequest(
            access_token=access_token,
            current_password=current_password,
            new_password=new_password,
        )
        return (await self._call(self._stub.ChangePassword, request)).sessions_revoked

    async def delete_user_by_token(self, access_token: str) -> int:
        """Delete the user an access token proves; returns its id. ``UserNotFound`` if already gone."""
        request = auth_pb2.DeleteUserRequest(access_token=access_token)
        return (await self._call(self._stub.DeleteUser, request)).user_id

    async def delete_user_by_credentials(self, name: str, password: str) -> int:
        """Delete a user by name and password (undoes a registration whose profile could not be created)."""
        request = auth_pb2.DeleteUserRequest(credentials=auth_pb2.Credentials(name=name, password=password))
        return (await self._call(self._stub.DeleteUser, request)).user_id

    async def public_keys_json(self) -> str:
        """The RFC 7517 JWK Set that verifies access tokens, as JSON text."""
        response = await self._call(self._stub.GetPublicKeys, auth_pb2.GetPublicKeysRequest())
        return response.jwks_json

    async def _call(
        self,
        method: Callable[..., Awaitable[Any]],
        request: Any,
        refusals: Mapping[grpc.StatusCode, type[AuthRefusal]] = REFUSALS,
    ) -> Any:
        try:
            return await method(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise auth_error(exc, refusals) from exc


def _session(pair: auth_pb2.TokenPair) -> Session:
    return Session(
        access_token=pair.access_token,
        access_expires_at=pair.access_expires_at,
        refresh_token=pair.refresh_token,
        refresh_expires_at=pair.refresh_expires_at,
        user_id=pair.user_id,
        name=pair.name,
        device_token=pair.device_token,
        device_expires_at=pair.device_expires_at,
    )


class AggregatorClient:
    """The aggregator's follower routes (docs/CONTRACTS.md, "Aggregator control HTTP") at ``base_url``.

    A symbol is tracked while it has a follower; the BFF follows as ``user:<user_id>``. Both calls are
    idempotent, so retrying them is always safe. Must be created inside a running event loop.

    ``token`` is the aggregator's service credential (``BFF_AGGREGATOR_TOKEN_FILE``), sent as
    ``Authorization: Bearer <token>`` on every call (:mod:`crypto_mesh.servicecreds`); a refused one surfaces
    as :class:`AggregatorUnavailable` naming the 401.
    """

    def __init__(self, base_url: str, token: str, timeout_s: float = 3.0) -> None:
        self._base = URL(base_url)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s), headers=bearer_header(token)
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()

    async def follow(self, symbol: str, user_id: int) -> None:
        """``PUT /v1/symbols/{symbol}/followers/user:{user_id}``. Raises :class:`AggregatorUnavailable`."""
        await self._call("PUT", symbol, user_id)

    async def unfollow(self, symbol: str, user_id: int) -> None:
        """``DELETE /v1/symbols/{symbol}/followers/user:{user_id}``. Raises :class:`AggregatorUnavailable`."""
        await self._call("DELETE", symbol, user_id)

    async def set_followed(self, user_id: int, symbols: list[str]) -> None:
        """Make ``symbols`` the whole set followed by ``user:{user_id}``: ``PUT /v1/followers/user:{id}``
        with ``{"symbols": [...]}``. An aggregator without that route (404/405) gets one follower PUT per
        symbol instead, which adds but cannot remove. Raises :class:`AggregatorUnavailable`."""
        url = self._base / "v1" / "followers" / f"user:{user_id}"
        try:
            async with self._session.put(url, json={"symbols": symbols}, headers=request_id_headers()) as response:
                if response.status == 200:
                    return
                if response.status not in (404, 405):
                    body = (await response.text())[:200]
                    raise AggregatorUnavailable(f"PUT {url.path}: {response.status} {body}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AggregatorUnavailable(f"PUT {url.path}: {exc!r}") from exc
        for symbol in symbols:
            await self.follow(symbol, user_id)

    async def _call(self, method: str, symbol: str, user_id: int) -> None:
        url = self._base / "v1" / "symbols" / symbol / "followers" / f"user:{user_id}"
        try:
            async with self._session.request(method, url, headers=request_id_headers()) as response:
                if response.status != 200:
                    body = (await response.text())[:200]
                    raise AggregatorUnavailable(f"{method} {url.path}: {response.status} {body}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AggregatorUnavailable(f"{method} {url.path}: {exc!r}") from exc


class EtlClient:
    """The ETL's read API (docs/CONTRACTS.md, "ETL HTTP": ``GET /v1/candles``) at ``base_url``, presenting
    the ETL's service credential ``token`` (``BFF_ETL_TOKEN_FILE``) as ``Authorization: Bearer <token>``. A
    call times out after ``timeout_s`` seconds. Must be created inside a running event loop.

    Every failure (the ETL unreachable or slow, a refused credential, an answer that is not 200 or not the
    contract's shape) raises :class:`EtlUnavailable`; the BFF checks what it asks, so a 4xx is a fault of
    the mesh and is logged as ``etl_call_failed``.
    """

    def __init__(self, base_url: str, token: str, timeout_s: float = 5.0) -> None:
        self._base = URL(base_url)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s), headers=bearer_header(token)
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()

    async def candles(self, symbol: str, selection: CandleRange) -> CandlePage:
        """``GET /v1/candles``: the candles of ``symbol`` that ``selection`` selects, oldest first, and the
        last second they hold."""
        parameters = {"symbol": symbol, "interval": selection.interval, "limit": str(selection.limit)}
        if selection.start_ms is not None:
            parameters["start"] = str(selection.start_ms)
        if selection.end_ms is not None:
            parameters["end"] = str(selection.end_ms)
        url = self._base / "v1" / "candles"
        try:
            async with self._session.get(url, params=parameters, headers=request_id_headers()) as response:
                body = await response.read()
                if response.status != 200:
                    if response.status != 503:  # 503: ClickHouse not readable yet, said by the ETL itself
                        text = body[:200].decode("utf-8", "replace")
                        log.error("etl_call_failed", path=url.path, status=response.status, body=text)
                    raise EtlUnavailable(f"GET {url.path}: {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EtlUnavailable(f"GET {url.path}: {exc!r}") from exc
        try:
            return _candle_page(jsonutil.loads(body))
        except (jsonutil.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.error("etl_answer_malformed", path=url.path, error=repr(exc))
            raise EtlUnavailable(f"GET {url.path}: the answer is not a candle page") from exc


def _candle_page(body: Any) -> CandlePage:
    """The BFF's :class:`CandlePage` of the ETL's ``GET /v1/candles`` answer; KeyError, TypeError or
    ValueError (``DecimalFieldError`` among them) when it is not one."""
    last_second = body["last_second"]
    if last_second is not None and not isinstance(last_second, int):
        raise TypeError("last_second must be an integer or null")
    candles = []
    for item in body["candles"]:
        if not isinstance(item["open_time"], int) or not isinstance(item["trades"], int):
            raise TypeError("open_time and trades must be integers")
        amounts = [
            parse_decimal(item[key], minimum="nonnegative")
            for key in ("open", "high", "low", "close", "volume", "quote_volume")
        ]
        candles.append(Candle(item["open_time"], *amounts, item["trades"]))
    return CandlePage(candles, last_second)
