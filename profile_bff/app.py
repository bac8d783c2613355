"""The BFF's HTTP transport: REST routes, the profile WebSocket, middlewares, and the service lifecycle.

Routes and shapes: docs/CONTRACTS.md, "BFF REST". Every error is ``{"error": {"code", "message"}}`` with a
status that says whose fault it is: 400 malformed body, 401 no or bad token, 403 forbidden origin, 404
unknown, 405 wrong method, 409 conflict, 413 body over 64 KiB, 415 body not JSON, 422 invalid value, 429
rate-limited by auth, 503 a dependency (auth, PostgreSQL, Redis) is down. A client's mistake never becomes a
500.

Request bodies are parsed with the standard library's ``json`` with ``parse_float=Decimal``: a quantity may
be a decimal string (``"1.5"``, as every decimal in the contracts) or a JSON number (``1.5``), and either way
it is read exactly, never through float. Answers are written with :mod:`crypto_mesh.jsonutil`.

Side effects of a portfolio change, in order: the database row (the source of truth; the request fails if
it fails), the aggregator follower ``user:<id>`` (logged on failure, not fatal: every WebSocket connect and
every portfolio refresh of a connected user PUTs the followers again), and ``{"user_id"}`` on Redis channel
``bff:portfolio`` (logged on failure: the change is stored, only live sockets miss the push until their
next price update or reconnect).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

import grpc
from aiohttp import web
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from crypto_mesh import jsonutil
from crypto_mesh.binance import InvalidSymbol, normalize_symbol
from crypto_mesh.logs import get_logger
from crypto_mesh.proto import auth_pb2
from profile_bff.clients import AggregatorClient, AggregatorUnavailable, AuthClient
from profile_bff.connections import ConnectionManager
from profile_bff.portfolio import CONTEXT, InvalidQuantity, build_profile, parse_quantity
from profile_bff.settings import BffSettings
from profile_bff.store import (
    CoinAlreadyHeld,
    CoinNotHeld,
    MarketBus,
    ProfileNotFound,
    ProfileStore,
    StoreUnavailable,
)
from profile_bff.tokens import AccessClaims, AccessTokenVerifier, InvalidToken, KeysUnavailable

log = get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
REFRESH_COOKIE = "refresh_token"
COOKIE_PATH = "/v1"
#: Seconds between server pings on a WebSocket; a peer that misses the pong is closed.
WS_HEARTBEAT_S = 20.0
#: Clients only listen on the socket; anything they send is read and dropped, and must be small.
WS_MAX_INCOMING_BYTES = 4096


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
    migrated: bool = False

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

    async def stop(self) -> None:
        """Stop listening, close every WebSocket with 1001, wait for requests in flight (up to 5 s), close
        the pools. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        await self._runner.cleanup()


def create_app(settings: BffSettings) -> web.Application:
    """The aiohttp application: routes, the error middleware, and start-up/clean-up of its services."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware])
    app.router.add_post("/v1/register", register)
    app.router.add_post("/v1/login", login)
    app.router.add_post("/v1/refresh", refresh)
    app.router.add_post("/v1/logout", logout)
    app.router.add_get("/v2/coin/symbols", list_coins)
    app.router.add_post("/v2/coin/symbol", add_coin)
    app.router.add_patch("/v2/coin/symbol", update_coin)
    app.router.add_delete("/v2/coin/symbol", delete_coin)
    app.router.add_get("/v2/user/profile", get_profile)
    app.router.add_delete("/v2/user/profile", delete_profile)
    app.router.add_get("/v2/user/profile/ws", profile_socket)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(_services_context(settings))
    app.on_shutdown.append(_close_sockets)
    return app


async def start(settings: BffSettings) -> Running:
    """Start serving on ``settings.host:settings.port`` (port 0: a free one); returns once listening.

    The database schema is migrated in the background (retried with backoff while PostgreSQL is down) and
    the Redis subscriber connects in the background: ``/healthz`` answers 503 until both are ready.
    """
    runner = web.AppRunner(create_app(settings), shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = runner.addresses[0][1]
    log.info("serving", host=settings.host, port=port)
    return Running(port=port, _runner=runner)


def _services_context(settings: BffSettings):
    async def context(app: web.Application):
        store = ProfileStore(settings.database_url)
        bus = MarketBus(settings.redis_url)
        auth = AuthClient(settings.auth_target)
        aggregator = AggregatorClient(settings.aggregator_url)
        verifier = AccessTokenVerifier(
            auth.public_keys_json, issuer=settings.jwt_issuer, audience=settings.jwt_audience
        )
        manager = ConnectionManager(store, bus, aggregator)
        services = Services(settings, store, bus, auth, aggregator, verifier, manager)
        app[SERVICES] = services
        manager.start()
        migration = asyncio.create_task(_migrate(services), name="bff-migrate")
        yield
        migration.cancel()
        await asyncio.gather(migration, return_exceptions=True)
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


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``{"error": {"code", "message"}}`` with ``status``."""
    return web.json_response(
        {"error": {"code": code, "message": message}},
        status=status,
        headers=headers,
        dumps=jsonutil.dumps_str,
    )


def _grpc_error(exc: grpc.aio.AioRpcError) -> ApiError:
    mapped = _GRPC_TO_HTTP.get(exc.code())
    if mapped is not None:
        return ApiError(mapped[0], mapped[1], exc.details() or mapped[1])
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
        return error_response(error.status, error.code, error.message)
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


async def _authenticate(request: web.Request) -> tuple[AccessClaims, str]:
    """The verified claims and the raw access token of ``Authorization: Bearer <token>`` (RFC 6750)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    challenge = {"WWW-Authenticate": 'Bearer realm="crypto-mesh"'}
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthenticated", "send Authorization: Bearer <access token>", challenge)
    try:
        claims = await request.app[SERVICES].verifier.verify(token)
    except InvalidToken as exc:
        raise ApiError(401, "unauthenticated", str(exc), challenge) from None
    return claims, token


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


async def login(request: web.Request) -> web.Response:
    """``POST /v1/login {"name", "password"}`` → 200 access token; the refresh token only as a cookie.

    A missing profile (lost after an earlier failure) is created here, so logging in heals it.
    """
    services = request.app[SERVICES]
    body = await _read_json_object(request)
    pair = await services.auth.login(_string_field(body, "name"), _string_field(body, "password"))
    if services.migrated:
        try:
            await services.store.ensure_profile(pair.user_id, pair.name)
        except StoreUnavailable as exc:
            log.warning("profile_heal_deferred", user_id=pair.user_id, error=str(exc))
    return _token_response(services.settings, pair)


async def refresh(request: web.Request) -> web.Response:
    """``POST /v1/refresh`` with the ``refresh_token`` cookie → 200 as login, cookie rotated; 401."""
    services = request.app[SERVICES]
    token = request.cookies.get(REFRESH_COOKIE)
    if not token:
        raise ApiError(401, "unauthenticated", "no refresh token cookie")
    try:
        pair = await services.auth.refresh(token)
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in _NOT_A_SESSION:
            raise
        response = error_response(401, "unauthenticated", "the refresh token is not valid")
        _clear_refresh_cookie(response, services.settings)
        return response
    return _token_response(services.settings, pair)


async def logout(request: web.Request) -> web.Response:
    """``POST /v1/logout`` → 204: the cookie's session is revoked at auth and the cookie cleared."""
    services = request.app[SERVICES]
    token = request.cookies.get(REFRESH_COOKIE)
    if token:
        try:
            await services.auth.logout(token)
        except grpc.aio.AioRpcError as exc:
            # A cookie that is not a session has nothing to revoke; only an unreachable auth is an error.
            if exc.code() not in _NOT_A_SESSION:
                raise
    response = web.Response(status=204)
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
    response.set_cookie(
        REFRESH_COOKIE,
        pair.refresh_token,
        max_age=max(0, pair.refresh_expires_at - now),
        path=COOKIE_PATH,
        secure=settings.cookie_secure,
        httponly=True,
        samesite="Strict",
    )
    # Token responses must not be cached (RFC 6749 §5.1).
    response.headers["Cache-Control"] = "no-store"
    return response


def _clear_refresh_cookie(response: web.StreamResponse, settings: BffSettings) -> None:
    response.del_cookie(
        REFRESH_COOKIE, path=COOKIE_PATH, secure=settings.cookie_secure, httponly=True, samesite="Strict"
    )


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
    """``POST /v2/coin/symbol {"symbol", "quantity"}`` → ``201 {"symbol", "quantity"}``; 409 already held."""
    services = request.app[SERVICES]
    claims, _ = await _authenticate(request)
    body = await _read_json_object(request)
    symbol, quantity = _symbol(_required(body, "symbol")), _quantity(_required(body, "quantity"))
    try:
        await services.require_store().add_coin(claims.user_id, symbol, quantity)
    except CoinAlreadyHeld:
        raise ApiError(
            409, "coin_already_held", f"{symbol} is already held; PATCH changes its quantity"
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


async def get_profile(request: web.Request) -> web.Response:
    """``GET /v2/user/profile`` → 200 profile (docs/CONTRACTS.md, "Profile JSON"); 404; 503 Redis down."""
    services = request.app[SERVICES]
    claims, _ = await _authenticate(request)
    try:
        holdings = await services.require_store().load(claims.user_id)
    except ProfileNotFound:
        raise ApiError(404, "profile_not_found", "no profile for this user") from None
    prices = await services.bus.latest_prices(holdings.coins)
    return _json(build_profile(claims.user_id, holdings.name, holdings.coins, prices))


async def delete_profile(request: web.Request) -> web.Response:
    """``DELETE /v2/user/profile`` → 204: the profile, its coins, its followers and the auth user go.

    The profile goes first, then the auth user: if auth is down the request fails with 503 and can be
    retried with the same token (the profile is then already gone, and the auth user is deleted). Until
    then the auth user has no profile, which the next login would heal.
    """
    services = request.app[SERVICES]
    claims, token = await _authenticate(request)
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


# -- WebSocket and health --------------------------------------------------------------------------------


async def profile_socket(request: web.Request) -> web.StreamResponse:
    """``GET /v2/user/profile/ws`` with ``Authorization: Bearer <access>``: the live profile.

    Checked before the upgrade, as HTTP errors: 401 missing or invalid token, 403 an ``Origin`` not in
    ``BFF_ALLOWED_ORIGINS``, 400 not a WebSocket handshake, 404 no profile, 503 database down. After it,
    one text message with the profile JSON at connect and one after every change; messages from the client
    are ignored. Closed with 1001 on shutdown, 4404 if the profile is deleted.
    """
    services = request.app[SERVICES]
    claims, _ = await _authenticate(request)
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/") not in services.settings.allowed_origins:
        raise ApiError(403, "forbidden_origin", "this origin may not open the profile socket")
    ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT_S, max_msg_size=WS_MAX_INCOMING_BYTES)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "websocket_required", "this route only speaks WebSocket")
    services.require_store()
    try:
        client = await services.manager.connect(ws, claims.user_id)
    except ProfileNotFound:
        raise ApiError(404, "profile_not_found", "no profile for this user") from None
    try:
        await ws.prepare(request)
        client.start_writer()
        async for _ in ws:
            pass
    except Exception:
        log.exception("websocket_failed", user_id=claims.user_id)
    finally:
        await services.manager.disconnect(client)
    return ws


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: ``200 {"status": "ok"}`` once the schema is migrated and the Redis subscriber is up;
    ``503 {"status": "starting"|"degraded", "database", "redis"}`` otherwise."""
    services = request.app[SERVICES]
    redis_up = services.manager.subscriber_connected
    if services.migrated and redis_up:
        return _json({"status": "ok"})
    status = "starting" if not services.migrated else "degraded"
    return _json({"status": status, "database": services.migrated, "redis": redis_up}, status=503)
