"""Clients of the BFF's upstream services: auth (gRPC, proto/auth.proto) and the aggregator (control HTTP).

gRPC failures surface as ``grpc.aio.AioRpcError``; the HTTP layer maps their status codes (ALREADY_EXISTS →
409, UNAUTHENTICATED → 401, UNAVAILABLE → 503, ...). Aggregator failures surface as
:class:`AggregatorUnavailable`.
"""

from __future__ import annotations

import aiohttp
from yarl import URL

from crypto_mesh.grpc_tls import tls_channel
from crypto_mesh.pki import AUTH, MeshTls
from crypto_mesh.proto import auth_pb2, auth_pb2_grpc
from crypto_mesh.servicecreds import bearer_header


class AuthClient:
    """The ``crypto.auth.v1.Auth`` service at ``target`` (``host:port``), over mutual TLS with ``tls`` (the
    BFF's identity); the server must prove the ``auth`` identity. Each call times out after ``timeout_s``
    seconds (DEADLINE_EXCEEDED). The channel connects lazily and reconnects by itself."""

    def __init__(self, target: str, tls: MeshTls, timeout_s: float = 5.0) -> None:
        self._channel = tls_channel(target, tls, AUTH)
        self._stub = auth_pb2_grpc.AuthStub(self._channel)
        self._timeout_s = timeout_s

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def register(self, name: str, password: str) -> auth_pb2.RegisterResponse:
        """Create a user; the response carries ``user_id`` and the normalised ``name``."""
        request = auth_pb2.RegisterRequest(name=name, password=password)
        return await self._stub.Register(request, timeout=self._timeout_s)

    async def login(
        self, name: str, password: str, *, client_address: str = "", device_token: str = ""
    ) -> auth_pb2.TokenPair:
        """Open a session: access token, refresh token, their expiries (Unix s), user id and name, and a
        login-device token. ``client_address``: the end user's address bucket, ``device_token``: the one it
        holds from an earlier login (both for auth's failed-login budgets). RESOURCE_EXHAUSTED carries the
        time to wait in the trailing metadata ``grpc-retry-pushback-ms`` (ms)."""
        request = auth_pb2.LoginRequest(
            name=name, password=password, client_address=client_address, device_token=device_token
        )
        return await self._stub.Login(request, timeout=self._timeout_s)

    async def refresh(self, refresh_token: str, owner: int | None = None) -> auth_pb2.TokenPair:
        """Rotate a refresh token (the presented one becomes invalid); ``owner``, when known, is the user the
        caller proved to be, and the token must be theirs."""
        request = auth_pb2.RefreshRequest(refresh_token=refresh_token, expected_user_id=owner or 0)
        return await self._stub.Refresh(request, timeout=self._timeout_s)

    async def logout(self, refresh_token: str, owner: int | None = None) -> None:
        """Revoke the session (token family) of a refresh token; idempotent. ``owner`` as for :meth:`refresh`:
        another user's session is refused with PERMISSION_DENIED."""
        request = auth_pb2.LogoutRequest(refresh_token=refresh_token, expected_user_id=owner or 0)
        await self._stub.Logout(request, timeout=self._timeout_s)

    async def logout_all(self, *, access_token: str = "", refresh_token: str = "") -> int:
        """Revoke every session of the user an unexpired access token (or else a live refresh token) proves;
        returns how many were live."""
        if access_token:
            request = auth_pb2.LogoutAllRequest(access_token=access_token)
        else:
            request = auth_pb2.LogoutAllRequest(refresh_token=refresh_token)
        return (await self._stub.LogoutAll(request, timeout=self._timeout_s)).sessions_revoked

    async def change_password(self, access_token: str, current_password: str, new_password: str) -> int:
        """Replace the password of the user an access token proves and revoke every session of theirs;
        returns how many were live. PERMISSION_DENIED: the current password is wrong."""
        request = auth_pb2.ChangePasswordRequest(
            access_token=access_token,
            current_password=current_password,
            new_password=new_password,
        )
        return (await self._stub.ChangePassword(request, timeout=self._timeout_s)).sessions_revoked

    async def delete_user_by_token(self, access_token: str) -> int:
        """Delete the user an access token proves; returns its id."""
        request = auth_pb2.DeleteUserRequest(access_token=access_token)
        return (await self._stub.DeleteUser(request, timeout=self._timeout_s)).user_id

    async def delete_user_by_credentials(self, name: str, password: str) -> int:
        """Delete a user by name and password (undoes a registration whose profile could not be created)."""
        request = auth_pb2.DeleteUserRequest(credentials=auth_pb2.Credentials(name=name, password=password))
        return (await self._stub.DeleteUser(request, timeout=self._timeout_s)).user_id

    async def public_keys_json(self) -> str:
        """The RFC 7517 JWK Set that verifies access tokens, as JSON text."""
        response = await self._stub.GetPublicKeys(auth_pb2.GetPublicKeysRequest(), timeout=self._timeout_s)
        return response.jwks_json


class AggregatorUnavailable(Exception):
    """The aggregator's control API could not be reached or did not answer 200."""


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
            async with self._session.put(url, json={"symbols": symbols}) as response:
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
            async with self._session.request(method, url) as response:
                if response.status != 200:
                    body = (await response.text())[:200]
                    raise AggregatorUnavailable(f"{method} {url.path}: {response.status} {body}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AggregatorUnavailable(f"{method} {url.path}: {exc!r}") from exc
