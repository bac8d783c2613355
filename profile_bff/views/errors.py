"""Every domain error of the BFF and its HTTP answer, declared once (docs/CONTRACTS.md, "BFF REST"; the
OpenAPI document of :mod:`profile_bff.openapi`).

Statuses say whose fault it is: 400 malformed request, 401 no or bad credentials, 403 not the caller's, 404
unknown, 409 conflict (a portfolio at its coin cap among them), 422 invalid value, 429 rate-limited (by auth,
or by the BFF's own limits) with ``Retry-After``, 503 a dependency (auth, PostgreSQL, Redis, the ETL) is down
or shedding load. A client's mistake never becomes a 500.

:data:`ERRORS` is the error middleware of the BFF's application
(:func:`crypto_mesh.httperrors.error_middleware` with these mappings); :func:`answer` gives the answer it
would give, for the idempotent views, which store it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from crypto_mesh.binance import InvalidSymbol
from crypto_mesh.candles import InvalidCandleQuery
from crypto_mesh.httperrors import ApiError, ErrorMapping, error_middleware
from crypto_mesh.indicators import InvalidIndicator
from crypto_mesh.logs import get_logger
from profile_bff.alertrules import InvalidAlert
from profile_bff.errors import (
    AlertLimitReached,
    AlertNotFound,
    AuthUnavailable,
    CoinAlreadyHeld,
    CoinLimitReached,
    CoinNotHeld,
    EtlUnavailable,
    Forbidden,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InstrumentNotFound,
    InvalidIdempotencyKey,
    InvalidInput,
    NameTaken,
    Overloaded,
    ProfileNotFound,
    RateLimited,
    Starting,
    StoreUnavailable,
    Unauthenticated,
    UserNotFound,
)
from profile_bff.instruments import NotTrading, UnknownSymbol
from profile_bff.portfolio import InvalidQuantity
from profile_bff.search import InvalidCursor
from profile_bff.tokens import KeysUnavailable

log = get_logger(__name__)


def _fixed(status: int, code: str, message: str) -> ErrorMapping:
    return lambda _exc, _request: ApiError(status, code, message)


def _own_message(status: int, code: str) -> ErrorMapping:
    """``status`` and ``code`` with the error's own message (``str(error)``)."""
    return lambda exc, _request: ApiError(status, code, str(exc))


def _retry_later(status: int, code: str) -> ErrorMapping:
    """The error's own message and its ``retry_after_s`` as ``Retry-After``."""

    def mapping(exc: Exception, _request: web.Request) -> ApiError:
        assert isinstance(exc, RateLimited | Overloaded)
        return ApiError(status, code, str(exc), {"Retry-After": str(exc.retry_after_s)})

    return mapping


def _store_unavailable(exc: Exception, request: web.Request) -> ApiError:
    log.warning("dependency_unavailable", path=request.path, error=str(exc))
    return ApiError(503, "unavailable", "a storage dependency is unavailable, retry later")


def _etl_unavailable(exc: Exception, request: web.Request) -> ApiError:
    log.warning("etl_unavailable", path=request.path, error=str(exc))
    return ApiError(503, "unavailable", "market history is unavailable, retry later")


def _invalid_candle_query(exc: Exception, _request: web.Request) -> ApiError:
    assert isinstance(exc, InvalidCandleQuery)
    return ApiError(422, exc.code, str(exc))


def _coin_already_held(exc: Exception, _request: web.Request) -> ApiError:
    assert isinstance(exc, CoinAlreadyHeld)
    return ApiError(409, "coin_already_held", f"{exc.symbol} is already held; PATCH changes its quantity")


def _limit_reached(code: str, what: str, setting: str, remedy: str) -> ErrorMapping:
    """409 ``code``: ``"<what> <limit> ... (<setting>); <remedy>"``, the limit read from the error."""

    def mapping(exc: Exception, _request: web.Request) -> ApiError:
        assert isinstance(exc, CoinLimitReached | AlertLimitReached)
        return ApiError(409, code, f"{what.format(limit=exc.limit)} ({setting}); {remedy}")

    return mapping


_coin_limit_reached = _limit_reached(
    "coin_limit_reached", "a portfolio holds at most {limit} coins", "BFF_MAX_COINS_PER_USER", "remove one first"
)
_alert_limit_reached = _limit_reached(
    "alert_limit_reached", "a user has at most {limit} alert rules", "BFF_MAX_ALERTS_PER_USER", "delete one first"
)


_AUTH_UNAVAILABLE = _fixed(503, "auth_unavailable", "the authentication service is unavailable")

#: Domain error class → its answer; the nearest class in an error's MRO wins.
DOMAIN_ERRORS: dict[type[Exception], ErrorMapping] = {
    # the profile database and Redis
    StoreUnavailable: _store_unavailable,
    Starting: _fixed(503, "starting", "the profile database is not ready yet"),
    ProfileNotFound: _fixed(404, "profile_not_found", "no profile for this user"),
    # coins
    InvalidSymbol: _own_message(422, "invalid_symbol"),
    InvalidQuantity: _own_message(422, "invalid_quantity"),
    UnknownSymbol: _own_message(422, "unknown_symbol"),
    NotTrading: _own_message(422, "symbol_not_trading"),
    # instrument search
    InvalidCursor: _own_message(422, "invalid"),
    CoinAlreadyHeld: _coin_already_held,
    CoinLimitReached: _coin_limit_reached,
    CoinNotHeld: _own_message(404, "coin_not_held"),
    # alerts
    InvalidAlert: _own_message(422, "invalid_alert"),
    AlertNotFound: _own_message(404, "alert_not_found"),
    AlertLimitReached: _alert_limit_reached,
    # market history (candles, indicators)
    InstrumentNotFound: _own_message(404, "unknown_symbol"),
    InvalidCandleQuery: _invalid_candle_query,
    InvalidIndicator: _own_message(422, "invalid_indicator"),
    EtlUnavailable: _etl_unavailable,
    # Idempotency-Key (the draft's section 2.7)
    InvalidIdempotencyKey: _own_message(400, "invalid_idempotency_key"),
    IdempotencyMismatch: _fixed(
        422, "idempotency_key_reused", "this Idempotency-Key was used for a different request"
    ),
    IdempotencyInFlight: _fixed(
        409, "idempotency_key_in_flight", "a request with this Idempotency-Key is still being processed"
    ),
    # limits: the BFF's own and auth's failed-login budgets
    RateLimited: _retry_later(429, "rate_limited"),
    # auth: its refusals carry its own messages, written for clients
    NameTaken: _own_message(409, "conflict"),
    InvalidInput: _own_message(422, "invalid"),
    Unauthenticated: _own_message(401, "unauthenticated"),
    Forbidden: _own_message(403, "forbidden"),
    UserNotFound: _own_message(404, "not_found"),
    AuthUnavailable: _AUTH_UNAVAILABLE,
    KeysUnavailable: _AUTH_UNAVAILABLE,
    Overloaded: _retry_later(503, "overloaded"),
}

#: The error middleware of the BFF's application.
ERRORS = error_middleware(DOMAIN_ERRORS)


async def answer(
    request: web.Request, respond: Callable[[], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The answer of ``respond()``, or the error answer :data:`ERRORS` gives for what it raised."""
    return await ERRORS(request, lambda _request: respond())
