"""The BFF's HTTP transport: REST routes, the profile WebSocket, middlewares, and the service lifecycle.

Routes and shapes: docs/CONTRACTS.md, "BFF REST", and the OpenAPI 3.1 document served at ``/openapi.json``
(:mod:`profile_bff.openapi`). Every error is ``{"error": {"code", "message"}}`` with a
status that says whose fault it is: 400 malformed body, 401 no or bad token, 403 forbidden origin, a
cross-site request on a cookie route, another user's session or a wrong current password, 404
unknown, 405 wrong method, 409 conflict (a portfolio at its coin cap among them), 413 body over 64 KiB,
415 body not JSON, 422 invalid value, 429 rate-limited (by auth, or by the BFF's ceilings:
:mod:`profile_bff.ceilings`), 503 a dependency (auth, PostgreSQL, Redis) is down. A client's mistake
never becomes a 500.

Request bodies are parsed with the standard library's ``json`` with ``parse_float=Decimal``: a quantity may
be a decimal string (``"1.5"``, as every decimal in the contracts) or a JSON number (``1.5``), and either way
it is read exactly, never through float. Answers are written with :mod:`crypto_mesh.jsonutil`.

Side effects of a portfolio change, in order: the database row (the source of truth; the request fails if
it fails), the aggregator follower ``user:<id>`` (logged on failure, not fatal: every WebSocket connect and
every portfolio refresh of a connected user PUTs the followers again), and ``{"user_id"}`` on Redis channel
``bff:portfolio`` (logged on failure: the change is stored, only live sockets miss the push until their
next price update or reconnect). The change and its ``coin_history`` row are one transaction.

At start-up, once the schema is migrated, the follower set of every holder is PUT at the aggregator again
(``PUT /v1/followers/user:<id>``), so an aggregator that lost followers while the BFF was down tracks every
held symbol again without waiting for clients to reconnect.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from decimal import Decimal
from typing import Any, NoReturn

import grpc
from aiohttp import web
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from crypto_mesh import jsonutil
from crypto_mesh.binance import InvalidSymbol, normalize_symbol
from crypto_mesh.httperrors import error_response
from crypto_mesh.logs import get_logger
from crypto_mesh.proto import auth_pb2
from crypto_mesh.servicecreds import read_token
from crypto_mesh.throttle import DEVICE_TOKEN_MAX_CHARS, device_audience, name_bucket
from profile_bff import ceilings, ratelimit
from profile_bff.clients import AggregatorClient, AggregatorUnavailable, AuthClient
from profile_bff.connections import ConnectionManager
from profile_bff.cookies import CookieSpec, cross_site_refusal, device_cookie, refresh_cookie
from profile_bff.instruments import Instruments, NotTrading, UnknownSymbol
from profile_bff.openapi import openapi_document
from profile_bff.portfolio import CONTEXT, InvalidQuantity, parse_quantity, profile_message, rfc3339_ms
from profile_bff.settings import BffSettings
from profile_bff.store import (
    CoinAlreadyHeld,
    CoinLimitReached,
    CoinNotHeld,
    IdempotencyInFlight,
    IdempotencyMismatch,
    MarketBus,
    ProfileNotFound,
    ProfileStore,
    StoredAnswer,
    StoreUnavailable,
)
from profile_bff.tokens import AccessClaims, AccessTokenVerifier, InvalidToken, KeysUnavailable
from profile_bff.websocket import profile_socket

log = get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
#: Pending connections the listening socket queues (aiohttp's default is 128; the kernel caps it at
#: ``net.core.somaxconn``). A process holding 10,000 sockets sees them all come back at once after a restart;
#: with 128, connection attempts beyond it are dropped and retried by the client after 1, 3, 7 s...
LISTEN_BACKLOG = 1024
#: ``Idempotency-Key`` values: 1 to 255 visible ASCII characters (the draft's sf-string, without quotes).
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
#: ``GET /v1/instruments``: ``q`` is up to 20 letters/digits; ``limit`` 1..100 (default 20).
_INSTRUMENT_QUERY = re.compile(r"[A-Za-z0-9]{0,20}")
INSTRUMENTS_MAX_LIMIT = 100
#: Instrument answers are cached this long (s), at most this many distinct (q, limit) pairs.
INSTRUMENTS_CACHE_S = 1.0
INSTRUMENTS_CACHE_ENTRIES = 1024
HISTORY_MAX_LIMIT = 100
#: Expired idempotency keys of all users are deleted this often (s).
IDEMPOTENCY_PRUNE_S = 3600.0


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with HTTP ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class Services:
    """What the handlers use; built at start-up, closed at clean-up."""

    settings: BffSettings
    store: ProfileStore
    bus: MarketBus
    auth: AuthClient
    aggregator: AggregatorClient
    verifier: AccessTokenVerifier
    manager: ConnectionManager
    instruments: Instruments
    migrated: bool = False
    #: ``(q, limit)`` → (monotonic time, answer); bounded by INSTRUMENTS_CACHE_ENTRIES, oldest evicted.
    instrument_cache: OrderedDict[tuple[str, int], tuple[float, dict[str, Any]]] = field(
        default_factory=OrderedDict
    )

    def require_store(self) -> ProfileStore:
        """The profile store once its schema is migrated; 503 before."""
        if not self.migrated:
            raise ApiError(503, "starting", "the profile database is not ready yet")
        return self.store


SERVICES = web.AppKey("services", Services)


@dataclass
class Running:
    """A started BFF: the bound ``port`` and :meth:`stop`."""

    port: int
    _runner: web.AppRunner
    _stopped: bool = False
    _server: asyncio.AbstractServer | None = None

    async def stop(self) -> None:
        """Stop listening, close every WebSocket with 1001, wait for requests in flight (up to 5 s), close
        the pools. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.close()  # accept no more; the runner's clean-up closes the open connections
        await self._runner.cleanup()


def create_app(settings: BffSettings) -> web.Application:
    """The aiohttp application: routes, the error middleware, and start-up/clean-up of its services."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware])
    app.router.add_post("/v1/register", register)
    app.router.add_post("/v1/login", login)
    app.router.add_post("/v1/refresh", refresh)
    app.router.add_post("/v1/logout", logout)
    app.router.add_post("/v1/password", change_password)
    app.router.add_get("/v2/coin/symbols", list_coins)
    app.router.add_post("/v2/coin/symbol", add_coin)
    app.router.add_patch("/v2/coin/symbol", update_coin)
    app.router.add_delete("/v2/coin/symbol", delete_coin)
    app.router.add_get("/v2/user/profile", get_profile)
    app.router.add_delete("/v2/user/profile", delete_profile)
    app.router.add_get("/v2/user/profile/ws", profile_socket(lambda request: request.app[SERVICES]))
    app.router.add_post("/v2/user/ws-ticket", issue_ws_ticket)
    app.router.add_get("/v2/user/history", list_history)
    app.router.add_get("/v1/instruments", search_instruments)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(_services_context(settings))
    ratelimit.install(app, settings)
    ceilings.install(app, settings)
    app.on_shutdown.append(_close_sockets)
    return app


async def start(settings: BffSettings) -> Running:
    """Start serving on ``settings.host:settings.port`` (port 0: a free one); returns once listening.

    The database schema is migrated in the background (retried with backoff while PostgreSQL is down) and
    the Redis subscriber connects in the background: ``/healthz`` answers 503 until both are ready.

    Connections are accepted through :class:`profile_bff.ceilings.GuardedProtocol` (connection caps and the
    first request's header-read timeout); aiohttp's keep-alive timeout, ``BFF_KEEPALIVE_TIMEOUT_S``, bounds
    the idle time and the head of every later request on a connection.
    """
    runner = web.AppRunner(
        create_app(settings), shutdown_timeout=5.0, keepalive_timeout=settings.keepalive_timeout_s
    )
    await runner.setup()
    descriptors = ceilings.descriptor_limit()
    counter = ceilings.ConnectionCounter(
        ceilings.connection_cap(settings.max_connections, descriptors),
        settings.max_connections_per_address,
        exempt=settings.trusted_proxies,
    )
    assert runner.server is not None
    server = await asyncio.get_running_loop().create_server(
        ceilings.guarded_factory(runner.server, counter, settings.header_timeout_s),
        settings.host,
        settings.port,
        backlog=LISTEN_BACKLOG,
        reuse_address=True,
    )
    port = server.sockets[0].getsockname()[1]
    log.info(
        "serving",
        host=settings.host,
        port=port,
        max_connections=counter.max_total,
        descriptor_limit=descriptors,
    )
    return Running(port=port, _runner=runner, _server=server)


def _services_context(settings: BffSettings):
    async def context(app: web.Application):
        # Read first and not caught: a BFF without a symbol list must not start.
        instruments = Instruments.load(settings.exchange_info_file)
        aggregator_token = read_token(settings.aggregator_token_file)
        tls = settings.mesh_tls()
        store = ProfileStore(settings.database_url)
        bus = MarketBus(settings.redis_url.get_secret_value())
        auth = AuthClient(settings.auth_target, tls)
        aggregator = AggregatorClient(settings.aggregator_url, aggregator_token)
        verifier = AccessTokenVerifier(
            auth.public_keys_json, issuer=settings.jwt_issuer, audience=settings.jwt_audience
        )
        manager = ConnectionManager(store, bus, aggregator, coalesce_s=settings.ws_coalesce_ms / 1000)
        services = Services(settings, store, bus, auth, aggregator, verifier, manager, instruments)
        app[SERVICES] = services
        # Login-device tokens: the same keys as access tokens, another audience.
        device_verifier = AccessTokenVerifier(
            auth.public_keys_json, issuer=settings.jwt_issuer, audience=device_audience(settings.jwt_audience)
        )
        app[ratelimit.DEVICES] = ratelimit.LoginDevices(
            device_cookie(settings.cookie_secure).name, _device_name_verifier(device_verifier)
        )
        manager.start()
        background = [
            asyncio.create_task(_migrate_then_maintain(services), name="bff-migrate"),
        ]
        yield
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await manager.close()
        await aggregator.close()
        await auth.close()
        await bus.close()
        await store.close()

    return context


async def _migrate(services: Services) -> None:
    # Every failure is retried, not only StoreUnavailable: a database that does not exist yet or a
    # migration locked by another replica also clear up by themselves, and /healthz says 503 meanwhile.
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(Exception),
        wait=wait_exponential(multiplier=0.2, max=5),
        before_sleep=lambda state: log.warning("migration_retry", error=repr(state.outcome.exception())),
    ):
        with attempt:
            await services.store.migrate()
    services.migrated = True
    log.info("profile_database_migrated")


async def _migrate_then_maintain(services: Services) -> None:
    """Migrate; then restore the aggregator followers of every holder (retried while the aggregator or the
    database is down); then delete expired idempotency keys every hour."""
    await _migrate(services)
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((AggregatorUnavailable, StoreUnavailable)),
        wait=wait_exponential(multiplier=0.5, max=30),
        before_sleep=lambda state: log.warning(
            "follower_rebuild_retry", error=repr(state.outcome.exception())
        ),
    ):
        with attempt:
            holders = await services.manager.rebuild_followers()
    log.info("followers_rebuilt", holders=holders)
    while True:
        try:
            pruned = await services.store.prune_idempotency_keys()
        except StoreUnavailable as exc:
            log.warning("idempotency_prune_failed", error=str(exc))
        else:
            log.info("idempotency_keys_pruned", deleted=pruned)
        await asyncio.sleep(IDEMPOTENCY_PRUNE_S)


async def _close_sockets(app: web.Application) -> None:
    await app[SERVICES].manager.close()


# -- errors ----------------------------------------------------------------------------------------------

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}

#: gRPC status of an auth call → HTTP status and error code. Auth's own messages are written for clients.
_GRPC_TO_HTTP = {
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict"),
    grpc.StatusCode.INVALID_ARGUMENT: (422, "invalid"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthenticated"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "forbidden"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limited"),
}


#: Trailing metadata of an auth refusal: how long to wait before retrying, in ms (gRFC A6 retry pushback).
_RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


def _retry_after_s(exc: grpc.aio.AioRpcError) -> int | None:
    """The whole seconds (at least 1) of the retry pushback auth attached to ``exc``, or ``None``."""
    for key, value in exc.trailing_metadata() or ():
        if key == _RETRY_PUSHBACK_KEY:
            try:
                milliseconds = int(value)
            except ValueError:
                return None
            return max(1, math.ceil(milliseconds / 1000)) if milliseconds >= 0 else None
    return None


def _grpc_error(exc: grpc.aio.AioRpcError) -> ApiError:
    mapped = _GRPC_TO_HTTP.get(exc.code())
    if mapped is not None:
        headers = {}
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            headers["Retry-After"] = str(_retry_after_s(exc) or 1)
        return ApiError(mapped[0], mapped[1], exc.details() or mapped[1], headers)
    retry_after_s = _retry_after_s(exc) if exc.code() == grpc.StatusCode.UNAVAILABLE else None
    if retry_after_s is not None:
        # Auth shed the call: its password-hashing queue could not answer within the call's deadline.
        return ApiError(
            503,
            "overloaded",
            f"too many password checks at once; retry in {retry_after_s} s",
            {"Retry-After": str(retry_after_s)},
        )
    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        log.error("auth_call_failed", code=exc.code().name, details=exc.details())
    return ApiError(503, "auth_unavailable", "the authentication service is unavailable")


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; unexpected ones are logged and answered 500 without details."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason, headers)
    except grpc.aio.AioRpcError as exc:
        error = _grpc_error(exc)
        return error_response(error.status, error.code, error.message, error.headers)
    except StoreUnavailable as exc:
        log.warning("dependency_unavailable", path=request.path, error=str(exc))
        return error_response(503, "unavailable", "a storage dependency is unavailable, retry later")
    except KeysUnavailable:
        return error_response(503, "auth_unavailable", "the authentication service is unavailable")
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return error_response(500, "internal", "internal error")


# -- request helpers -------------------------------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


async def _read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, numbers with a fraction or exponent as exact ``Decimal``.

    415 if it is not ``application/json``, 413 over 64 KiB (raised by aiohttp), 400 if not a JSON object.
    """
    if request.content_type != "application/json":
        raise ApiError(
            415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)"
        )
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8"), parse_float=Decimal, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    return body


def _required(body: Mapping[str, Any], field: str) -> Any:
    if field not in body or body[field] is None:
        raise ApiError(400, "missing_field", f"{field} is required")
    return body[field]


def _string_field(body: Mapping[str, Any], field: str) -> str:
    value = _required(body, field)
    if not isinstance(value, str):
        raise ApiError(422, "invalid", f"{field} must be a string")
    if not value.isascii() and any("\ud800" <= char <= "\udfff" for char in value):
        # JSON may escape a lone surrogate ("\ud800"), which is no Unicode text and cannot travel as UTF-8.
        raise ApiError(422, "invalid", f"{field} must be Unicode text (it holds a lone surrogate)")
    return value


def _symbol(raw: object) -> str:
    try:
        return normalize_symbol(raw)
    except InvalidSymbol as exc:
        raise ApiError(422, "invalid_symbol", str(exc)) from None


def _quantity(raw: object) -> Decimal:
    try:
        return parse_quantity(raw)
    except InvalidQuantity as exc:
        raise ApiError(422, "invalid_quantity", str(exc)) from None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=jsonutil.dumps_str)


async def _authenticate(request: web.Request, *, allow_expired: bool = False) -> tuple[AccessClaims, str]:
    """The verified claims and the raw access token of ``Authorization: Bearer <token>`` (RFC 6750).

    ``allow_expired``: a token past its expiry still identifies its user (for refresh and logout).
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    challenge = {"WWW-Authenticate": 'Bearer realm="crypto-mesh"'}
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthenticated", "send Authorization: Bearer <access token>", challenge)
    try:
        claims = await request.app[SERVICES].verifier.verify(token, allow_expired=allow_expired)
    except InvalidToken as exc:
        raise ApiError(401, "unauthenticated", str(exc), challenge) from None
    return claims, token


async def _limit_user(request: web.Request, claims: AccessClaims, route: str, rate: ratelimit.Rate) -> None:
    """Charge one request of the user to ``ratelimit:<route>:user:<id>`` at ``rate``; 429 with Retry-After
    once the user is out of allowance (:mod:`profile_bff.ceilings`)."""
    wait_s = await request.app[ceilings.CEILINGS].charge_user(route, claims.user_id, rate)
    if wait_s > 0:
        retry_after = ceilings.retry_after_s(wait_s)
        log.info("rate_limited", route=route, user_id=claims.user_id, retry_after_s=retry_after)
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests of this user, retry in {retry_after} s",
            {"Retry-After": str(retry_after)},
        )


async def _limit_writes(request: web.Request, claims: AccessClaims) -> None:
    """The per-user write limit (``BFF_WRITE_RATE_PER_USER``) of the portfolio and profile writes."""
    await _limit_user(request, claims, "write", request.app[SERVICES].settings.write_rate_per_user)


async def _session_owner(request: web.Request) -> int | None:
    """The user the caller proves with an access token (expired or not), if it sends one.

    A refresh or logout that names its user this way is refused by auth when the cookie's session is another
    user's (and a refresh then revokes that session: the cookie is in the wrong hands). A cookie alone, as a
    browser sends it, still works: the session it carries is then the only identity claimed.
    """
    if "Authorization" not in request.headers:
        return None
    claims, _token = await _authenticate(request, allow_expired=True)
    return claims.user_id


# -- session routes --------------------------------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    """``POST /v1/register {"name", "password"}`` → ``201 {"id", "name"}``; 409 taken, 422 invalid.

    The auth user and the profile are created together: if the profile cannot be stored, the auth user is
    deleted again (by its credentials), so no user is left without a profile.
    """
    services = request.app[SERVICES]
    body = await _read_json_object(request)
    name, password = _string_field(body, "name"), _string_field(body, "password")
    store = services.require_store()
    created = await services.auth.register(name, password)
    try:
        await store.ensure_profile(created.user_id, created.name)
    except BaseException:
        await _undo_registration(services.auth, name, password, created.user_id)
        raise
    log.info("registered", user_id=created.user_id)
    return _json({"id": created.user_id, "name": created.name}, status=201)


async def _undo_registration(auth: AuthClient, name: str, password: str, user_id: int) -> None:
    try:
        await asyncio.shield(auth.delete_user_by_credentials(name, password))
    except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
        log.error("registration_undo_failed", user_id=user_id, error=repr(exc))
    else:
        log.warning("registration_undone", user_id=user_id)


def _client_address(request: web.Request) -> str:
    """The client's address bucket, as the rate limits count it (:mod:`profile_bff.ratelimit`)."""
    trusted = request.app[SERVICES].settings.trusted_proxies
    return ratelimit.address_bucket(ratelimit.client_address(request, trusted))


def _device_name_verifier(verifier: AccessTokenVerifier) -> Callable[[str], Awaitable[str | None]]:
    """For the login limits: the name bucket a login-device token was issued for, or ``None`` if it does not
    verify (or the keys cannot be fetched: the client is then counted as any other)."""

    async def verify(token: str) -> str | None:
        try:
            return name_bucket((await verifier.verify(token)).name)
        except (InvalidToken, KeysUnavailable):
            return None

    return verify


def _refuse_cross_site(request: web.Request) -> None:
    """403 if a browser sent this cookie-authenticated request on behalf of another site
    (:func:`profile_bff.cookies.cross_site_refusal`)."""
    settings = request.app[SERVICES].settings
    own = {f"{request.scheme}://{request.host}"}
    if settings.cookie_secure:
        # Behind a TLS-terminating proxy the BFF sees http, while the browser names the https origin.
        own.add(f"https://{request.host}")
    reason = cross_site_refusal(request.headers, own, settings.allowed_origins)
    if reason is not None:
        log.info("cross_site_refused", path=request.path, origin=request.headers.get("Origin"))
        raise ApiError(403, "cross_site", reason)


async def login(request: web.Request) -> web.Response:
    """``POST /v1/login {"name", "password"}`` → 200 access token; the refresh token only as a cookie, and a
    login-device cookie that keeps this client's attempts apart from others' in the login limits.

    A missing profile (lost after an earlier failure) is created here, so logging in heals it.
    """
    services = request.app[SERVICES]
    body = await _read_json_object(request)
    device = request.cookies.get(device_cookie(services.settings.cookie_secure).name, "")
    pair = await services.auth.login(
        _string_field(body, "name"),
        _string_field(body, "password"),
        client_address=_client_address(request),
        device_token=device if len(device) <= DEVICE_TOKEN_MAX_CHARS else "",
    )
    if services.migrated:
        try:
            await services.store.ensure_profile(pair.user_id, pair.name)
        except StoreUnavailable as exc:
            log.warning("profile_heal_deferred", user_id=pair.user_id, error=str(exc))
    response = _token_response(services.settings, pair)
    if pair.device_token:
        _set_cookie(
            response,
            device_cookie(services.settings.cookie_secure),
            pair.device_token,
            max(0, pair.device_expires_at - int(time.time())),
        )
    return response


async def refresh(request: web.Request) -> web.Response:
    """``POST /v1/refresh`` with the refresh cookie → 200 as login, cookie rotated; 401; 403 cross-site."""
    services = request.app[SERVICES]
    _refuse_cross_site(request)
    token = request.cookies.get(refresh_cookie(services.settings.cookie_secure).name)
    if not token:
        raise ApiError(401, "unauthenticated", "no refresh token cookie")
    owner = await _session_owner(request)
    try:
        pair = await services.auth.refresh(token, owner)
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in _NOT_A_SESSION:
            raise
        return _invalid_refresh_token(services.settings)
    return _token_response(services.settings, pair)


def _invalid_refresh_token(settings: BffSettings) -> web.Response:
    """401 for a refresh token cookie auth does not know (expired, revoked, rotated), which is cleared."""
    response = error_response(401, "unauthenticated", "the refresh token is not valid")
    _clear_refresh_cookie(response, settings)
    return response


async def logout(request: web.Request) -> web.Response:
    """``POST /v1/logout`` → 204: the cookie's session is revoked at auth and the cookie cleared; 403
    cross-site. ``?all=true``: every session of the user is revoked (see :func:`_logout_everywhere`)."""
    services = request.app[SERVICES]
    _refuse_cross_site(request)
    everywhere = request.query.get("all", "false")
    if everywhere not in ("true", "false"):
        raise ApiError(422, "invalid", "all must be true or false")
    if everywhere == "true":
        return await _logout_everywhere(request)
    token = request.cookies.get(refresh_cookie(services.settings.cookie_secure).name)
    owner = await _session_owner(request)
    if token:
        try:
            await services.auth.logout(token, owner)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise ApiError(403, "forbidden", "that session belongs to another user") from None
            # A cookie that is not a session has nothing to revoke; only an unreachable auth is an error.
            if exc.code() not in _NOT_A_SESSION:
                raise
    response = web.Response(status=204)
    _clear_refresh_cookie(response, services.settings)
    return response


async def _logout_everywhere(request: web.Request) -> web.Response:
    """``POST /v1/logout?all=true`` → 204: every session (refresh-token family) of the user ends, on every
    device; the cookie is cleared. The user is the one an unexpired ``Authorization: Bearer`` access token
    names or, without that header, the owner of the live session the refresh cookie carries; 401 if neither
    proves anyone. Access tokens already issued stay valid until they expire (at most 15 minutes)."""
    services = request.app[SERVICES]
    if "Authorization" in request.headers:
        _claims, access_token = await _authenticate(request)
        await services.auth.logout_all(access_token=access_token)
    else:
        token = request.cookies.get(refresh_cookie(services.settings.cookie_secure).name)
        if not token:
            raise ApiError(
                401,
                "unauthenticated",
                "send Authorization: Bearer <access token> or the refresh token cookie",
                {"WWW-Authenticate": 'Bearer realm="crypto-mesh"'},
            )
        try:
            await services.auth.logout_all(refresh_token=token)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _NOT_A_SESSION:
                raise
            return _invalid_refresh_token(services.settings)
    response = web.Response(status=204)
    _clear_refresh_cookie(response, services.settings)
    return response


async def change_password(request: web.Request) -> web.Response:
    """``POST /v1/password {"current_password", "new_password"}`` with ``Authorization: Bearer <access>``
    → 204: the password is replaced and every session of the user ends (the cookie is cleared; log in
    again). 401 bad or expired token, 403 wrong current password, 422 a new password outside the policy, 429
    (+ Retry-After) too many wrong current passwords for this user (a budget of the user's own, which others
    cannot spend). Access tokens already issued stay valid until
    they expire (at most 15 minutes)."""
    services = request.app[SERVICES]
    _claims, access_token = await _authenticate(request)
    body = await _read_json_object(request)
    current, new = _string_field(body, "current_password"), _string_field(body, "new_password")
    await services.auth.change_password(access_token, current, new)
    response = web.Response(status=204)
    response.headers["Cache-Control"] = "no-store"
    _clear_refresh_cookie(response, services.settings)
    return response


#: Answers of auth to a refresh token that is expired, revoked, rotated or not a token at all.
_NOT_A_SESSION = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)


def _token_response(settings: BffSettings, pair: auth_pb2.TokenPair) -> web.Response:
    now = int(time.time())
    response = _json(
        {
            "access_token": pair.access_token,
            "token_type": "Bearer",
            "expires_in": max(0, pair.access_expires_at - now),
        }
    )
    _set_cookie(
        response,
        refresh_cookie(settings.cookie_secure),
        pair.refresh_token,
        max(0, pair.refresh_expires_at - now),
    )
    # Token responses must not be cached (RFC 6749 §5.1).
    response.headers["Cache-Control"] = "no-store"
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


def _clear_refresh_cookie(response: web.StreamResponse, settings: BffSettings) -> None:
    cookie = refresh_cookie(settings.cookie_secure)
    response.del_cookie(cookie.name, path=cookie.path, secure=cookie.secure, httponly=True, samesite="Strict")


# -- portfolio routes ------------------------------------------------------------------------------------


def _coin_json(symbol: str, quantity: Decimal) -> dict[str, Any]:
    return {"symbol": symbol, "quantity": CONTEXT.normalize(quantity)}


async def list_coins(request: web.Request) -> web.Response:
    """``GET /v2/coin/symbols`` → ``200 {"coins": [{"symbol", "quantity"}]}`` sorted by symbol; 404."""
    services = request.app[SERVICES]
    claims, _ = await _authenticate(request)
    try:
        holdings = await services.require_store().load(claims.user_id)
    except ProfileNotFound:
        raise ApiError(404, "profile_not_found", "no profile for this user") from None
    return _json({"coins": [_coin_json(s, q) for s, q in sorted(holdings.coins.items())]})


async def add_coin(request: web.Request) -> web.Response:
    """``POST /v2/coin/symbol {"symbol", "quantity"}`` → ``201 {"symbol", "quantity"}``; 409 already held or
    ``coin_limit_reached`` (``BFF_MAX_COINS_PER_USER``); 422 a symbol the exchange does not list or that is
    not ``TRADING``; 429 over ``BFF_WRITE_RATE_PER_USER``. Honours ``Idempotency-Key``."""
    claims, _ = await _authenticate(request)
    await _limit_writes(request, claims)
    return await _idempotent(request, claims, lambda: _add_coin(request, claims))


async def _add_coin(request: web.Request, claims: AccessClaims) -> web.Response:
    services = request.app[SERVICES]
    body = await _read_json_object(request)
    symbol, quantity = _symbol(_required(body, "symbol")), _quantity(_required(body, "quantity"))
    try:
        services.instruments.require_trading(symbol)
    except UnknownSymbol as exc:
        raise ApiError(422, "unknown_symbol", str(exc)) from None
    except NotTrading as exc:
        raise ApiError(422, "symbol_not_trading", str(exc)) from None
    try:
        await services.require_store().add_coin(
            claims.user_id, symbol, quantity, max_coins=services.settings.max_coins_per_user
        )
    except CoinAlreadyHeld:
        raise ApiError(
            409, "coin_already_held", f"{symbol} is already held; PATCH changes its quantity"
        ) from None
    except CoinLimitReached as exc:
        raise ApiError(
            409,
            "coin_limit_reached",
            f"a portfolio holds at most {exc.limit} coins (BFF_MAX_COINS_PER_USER); remove one first",
        ) from None
    except ProfileNotFound:
        raise ApiError(404, "profile_not_found", "no profile for this user") from None
    await _follow(services, symbol, claims.user_id)
    await _announce_change(services, claims.user_id)
    return _json(_coin_json(symbol, quantity), status=201)


async def update_coin(request: web.Request) -> web.Response:
    """``PATCH /v2/coin/symbol {"symbol", "quantity"}`` → ``200 {"symbol", "quantity"}``; 404 not held."""
    services = request.app[SERVICES]
    claims, _ = await _authenticate(request)
    await _limit_writes(request, claims)
    body = await _read_json_object(request)
    symbol, quantity = _symbol(_required(body, "symbol")), _quantity(_required(body, "quantity"))
    try:
        await services.require_store().update_coin(claims.user_id, symbol, quantity)
    except CoinNotHeld:
        raise ApiError(404, "coin_not_held", f"{symbol} is not held") from None
    await _announce_change(services, claims.user_id)
    return _json(_coin_json(symbol, quantity))


async def delete_coin(request: web.Request) -> web.Response:
    """``DELETE /v2/coin/symbol`` with ``{"symbol"}`` or ``?symbol=`` → 204; 404 not held."""
    services = request.app[SERVICES]
    claims, _ = await _authenticate(request)
    await _limit_writes(request, claims)
    if "symbol" in request.query:
        raw = request.query["symbol"]
    elif request.body_exists:
        raw = _required(await _read_json_object(request), "symbol")
    else:
        raise ApiError(400, "missing_field", "symbol is required (JSON body or ?symbol=)")
    symbol = _symbol(raw)
    try:
        await services.require_store().delete_coin(claims.user_id, symbol)
    except CoinNotHeld:
        raise ApiError(404, "coin_not_held", f"{symbol} is not held") from None
    await _unfollow(services, [symbol], claims.user_id)
    await _announce_change(services, claims.user_id)
    return web.Response(status=204)


async def _idempotent(
    request: web.Request, claims: AccessClaims, handle: Callable[[], Awaitable[web.Response]]
) -> web.Response:
    """Run ``handle`` at most once per ``Idempotency-Key`` of this user (draft-ietf-httpapi-idempotency-key-
    header): without the header it simply runs. The first answer below 500 is stored for
    ``BFF_IDEMPOTENCY_TTL_S`` and replayed to every retry with the same key, method, path and body (with
    ``Idempotent-Replayed: true``); the same key with another request is 422, and a retry while the first is
    still processed is 409 (both as the draft, section 2.7). A 5xx is not stored: the retry runs again.
    """
    raw_key = request.headers.get("Idempotency-Key")
    if raw_key is None:
        return await handle()
    # The draft writes the key as a Structured Field string; the quotes are optional here.
    key = raw_key.strip().removeprefix('"').removesuffix('"')
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 visible ASCII characters"
        )
    services = request.app[SERVICES]
    store = services.require_store()
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.path.encode(), await request.read()):
        digest.update(len(part).to_bytes(8, "big") + part)
    try:
        stored = await store.reserve_idempotency_key(
            claims.user_id, key, digest.digest(), services.settings.idempotency_ttl_s
        )
    except IdempotencyMismatch:
        raise ApiError(
            422, "idempotency_key_reused", "this Idempotency-Key was used for a different request"
        ) from None
    except IdempotencyInFlight:
        raise ApiError(
            409, "idempotency_key_in_flight", "a request with this Idempotency-Key is still being processed"
        ) from None
    if stored is not None:
        return _replay(stored)
    try:
        response = await handle()
    except ApiError as exc:
        if exc.status >= 500:
            await _release_key(store, claims.user_id, key)
            raise
        answer = StoredAnswer(
            exc.status, jsonutil.dumps_str({"error": {"code": exc.code, "message": exc.message}})
        )
        await store.store_idempotent_answer(claims.user_id, key, answer)
        raise
    except BaseException:
        await _release_key(store, claims.user_id, key)
        raise
    await store.store_idempotent_answer(claims.user_id, key, StoredAnswer(response.status, response.text))
    return response


async def _release_key(store: ProfileStore, user_id: int, key: str) -> None:
    try:
        await asyncio.shield(store.release_idempotency_key(user_id, key))
    except (StoreUnavailable, asyncio.CancelledError) as exc:
        # The reservation stays and answers 409 until it expires; logged so an operator can see why.
        log.warning("idempotency_release_failed", user_id=user_id, error=repr(exc))


def _replay(answer: StoredAnswer) -> web.Response:
    headers = {"Idempotent-Replayed": "true"}
    if answer.body is None:
        return web.Response(status=answer.status, headers=headers)
    return web.Response(
        status=answer.status, text=answer.body, content_type="application/json", headers=headers
    )


async def list_history(request: web.Request) -> web.Response:
    """``GET /v2/user/history?limit=&cursor=`` → ``200 {"items": [...], "next_cursor"}``, newest first.

    Each item: ``{"id", "symbol", "operation": "add"|"update"|"remove", "old_quantity", "new_quantity",
    "at"}`` (quantities decimal strings or null, ``at`` RFC 3339 UTC). ``limit`` 1..100 (default 50);
    ``next_cursor`` is passed back as ``cursor`` for the next (older) page and is null on the last page.
    """
    services = request.app[SERVICES]
    claims, _ = await _authenticate(request)
    limit = _int_param(request, "limit", default=50, maximum=HISTORY_MAX_LIMIT)
    cursor = _int_param(request, "cursor", default=None, maximum=2**63 - 1)
    entries = await services.require_store().history(claims.user_id, before_id=cursor, limit=limit)
    items = [
        {
            "id": entry.id,
            "symbol": entry.symbol,
            "operation": entry.operation,
            "old_quantity": None if entry.old_quantity is None else CONTEXT.normalize(entry.old_quantity),
            "new_quantity": None if entry.new_quantity is None else CONTEXT.normalize(entry.new_quantity),
            "at": entry.at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        for entry in entries
    ]
    next_cursor = str(entries[-1].id) if len(entries) == limit else None
    return _json({"items": items, "next_cursor": next_cursor})


def _int_param(request: web.Request, name: str, *, default: int | None, maximum: int) -> int | None:
    """Query parameter ``name`` as an integer in 1..``maximum``; 422 otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not 1 <= int(raw) <= maximum:
        raise ApiError(422, "invalid", f"{name} must be an integer from 1 to {maximum}")
    return int(raw)


async def search_instruments(request: web.Request) -> web.Response:
    """``GET /v1/instruments?q=btc&limit=20`` (no token needed) → ``200 {"instruments": [{"symbol", "type",
    "base", "quote", "status", "price", "price_time"}]}``: listed symbols containing ``q`` (prefix matches
    first), with the aggregator's latest price (``price:<symbol>``; null when none). ``q`` is 0 to 20
    letters or digits (422 otherwise). Answers are cached for 1 s per (q, limit)."""
    services = request.app[SERVICES]
    query = request.query.get("q", "")
    if not _INSTRUMENT_QUERY.fullmatch(query):
        raise ApiError(422, "invalid", "q must be at most 20 letters or digits")
    limit = _int_param(request, "limit", default=20, maximum=INSTRUMENTS_MAX_LIMIT)
    cache_key = (query.lower(), limit)
    cached = services.instrument_cache.get(cache_key)
    now = time.monotonic()
    if cached is not None and now - cached[0] < INSTRUMENTS_CACHE_S:
        return _json(cached[1])
    found = services.instruments.search(query, limit)
    prices = await services.bus.latest_prices(instrument.symbol for instrument in found)
    answer = {
        "instruments": [
            {
                "symbol": instrument.symbol,
                "type": instrument.type,
                "base": instrument.base,
                "quote": instrument.quote,
                "status": instrument.status,
                "price": prices[instrument.symbol].value if instrument.symbol in prices else None,
                "price_time": rfc3339_ms(prices[instrument.symbol].second_ms)
                if instrument.symbol in prices
                else None,
            }
            for instrument in found
        ]
    }
    services.instrument_cache[cache_key] = (now, answer)
    services.instrument_cache.move_to_end(cache_key)
    while len(services.instrument_cache) > INSTRUMENTS_CACHE_ENTRIES:
        services.instrument_cache.popitem(last=False)
    return _json(answer)


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the OpenAPI 3.1 document of every route (:mod:`profile_bff.openapi`)."""
    return _json(openapi_document())


async def issue_ws_ticket(request: web.Request) -> web.Response:
    """``POST /v2/user/ws-ticket`` → ``201 {"ticket", "expires_in"}``: a single-use ticket that opens the
    profile socket as ``/v2/user/profile/ws?ticket=<ticket>`` within ``BFF_WS_TICKET_TTL_S`` seconds. The
    socket is still closed (4401) when the access token that obtained the ticket expires."""
    services = request.app[SERVICES]
    claims, _ = await _authenticate(request)
    await _limit_user(request, claims, "ws-ticket", services.settings.ws_ticket_rate_per_user)
    ticket = secrets.token_urlsafe(32)
    ttl = services.settings.ws_ticket_ttl_s
    payload = {"user_id": claims.user_id, "name": claims.name, "expires_at": claims.expires_at}
    await services.bus.issue_ticket(ticket, jsonutil.dumps(payload), ttl)
    response = _json({"ticket": ticket, "expires_in": ttl}, status=201)
    response.headers["Cache-Control"] = "no-store"
    return response


async def get_profile(request: web.Request) -> web.Response:
    """``GET /v2/user/profile`` → 200 profile (docs/CONTRACTS.md, "Profile JSON"); 404; 503 Redis down."""
    services = request.app[SERVICES]
    claims, _ = await _authenticate(request)
    try:
        holdings = await services.require_store().load(claims.user_id)
    except ProfileNotFound:
        raise ApiError(404, "profile_not_found", "no profile for this user") from None
    prices = await services.bus.latest_prices(holdings.coins)
    return web.Response(
        body=profile_message(claims.user_id, holdings.name, holdings.coins, prices),
        content_type="application/json",
        charset="utf-8",
    )


async def delete_profile(request: web.Request) -> web.Response:
    """``DELETE /v2/user/profile`` → 204: the profile, its coins, its followers and the auth user go.

    The profile goes first, then the auth user: if auth is down the request fails with 503 and can be
    retried with the same token (the profile is then already gone, and the auth user is deleted). Until
    then the auth user has no profile, which the next login would heal.
    """
    services = request.app[SERVICES]
    claims, token = await _authenticate(request)
    await _limit_writes(request, claims)
    symbols = await services.require_store().delete_profile(claims.user_id)
    try:
        await services.auth.delete_user_by_token(token)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
    await _unfollow(services, symbols, claims.user_id)
    await _announce_change(services, claims.user_id)
    log.info("profile_deleted", user_id=claims.user_id)
    return web.Response(status=204)


async def _follow(services: Services, symbol: str, user_id: int) -> None:
    try:
        await services.aggregator.follow(symbol, user_id)
    except AggregatorUnavailable as exc:
        log.warning("follow_deferred", user_id=user_id, symbol=symbol, error=str(exc))


async def _unfollow(services: Services, symbols: list[str], user_id: int) -> None:
    for symbol in symbols:
        try:
            await services.aggregator.unfollow(symbol, user_id)
        except AggregatorUnavailable as exc:
            log.warning("unfollow_failed", user_id=user_id, symbol=symbol, error=str(exc))


async def _announce_change(services: Services, user_id: int) -> None:
    try:
        await services.bus.publish_portfolio_change(user_id)
    except StoreUnavailable as exc:
        log.warning("portfolio_notice_failed", user_id=user_id, error=str(exc))


# -- health --------------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: ``200 {"status": "ok"}`` once the schema is migrated and the Redis subscriber is up;
    ``503 {"status": "starting"|"degraded", "database", "redis"}`` otherwise."""
    services = request.app[SERVICES]
    redis_up = services.manager.subscriber_connected
    if services.migrated and redis_up:
        return _json({"status": "ok"})
    status = "starting" if not services.migrated else "degraded"
    return _json({"status": status, "database": services.migrated, "redis": redis_up}, status=503)
