"""The aggregator's control HTTP API (aiohttp) and its wiring: :func:`start` opens the parts of an
:class:`aggregator.service.AggregatorService` in order and serves the API; the views only translate HTTP.

Routes (docs/CONTRACTS.md, "Aggregator control HTTP"):

- ``PUT /v1/symbols/{symbol}/followers/{follower}`` → ``200 {"symbol", "followers": n, "tracked": true}``
- ``DELETE /v1/symbols/{symbol}/followers/{follower}`` → ``200 {"symbol", "followers": n, "tracked": bool}``
- ``PUT /v1/followers/{follower}`` with ``{"symbols": [...]}`` → ``200 {"follower", "symbols": [{"symbol",
  "followers": n}], "released": [...]}``: sets the follower's whole symbol set (rebuild from the portfolios)
- ``GET /v1/symbols`` → ``200 {"symbols": [{"symbol", "followers": n}]}``
- ``GET /metrics`` → Prometheus text format (:mod:`aggregator.metrics`)
- ``GET /v1/stats`` → ``200 {"trades": {...}, "publisher": {...}, "kafka": {...}, ..., "tracked": [symbols],
  "stale": [trade streams without a frame for AGGREGATOR_STALE_STREAM_S]}`` (counters)
- ``GET /healthz`` → ``200 {"status": "ok", ...}`` or ``503 {"status": "starting"|"degraded", ...}``

Every route but ``/healthz`` requires the service credential ``Authorization: Bearer <token>``
(``AGGREGATOR_API_TOKEN_FILE``, :mod:`crypto_mesh.servicecreds`); without it, 401.

Errors are ``{"error": {"code", "message"}}``: 400 malformed body, 404 unknown route, 405 wrong method, 413 body
too large, 422 invalid symbol or follower or too many symbols, 503 Redis unreachable
(:mod:`crypto_mesh.httperrors`). PUT and DELETE are idempotent; GETs change nothing.
"""

from __future__ import annotations

import re

from aiohttp import web
from redis.exceptions import RedisError

from aggregator.metrics import registry_for
from aggregator.service import AggregatorService
from aggregator.settings import AggregatorSettings
from crypto_mesh import jsonutil
from crypto_mesh.binance import InvalidSymbol, normalize_symbol
from crypto_mesh.httperrors import ApiError, error_middleware
from crypto_mesh.logs import get_logger
from crypto_mesh.observe import observe_http
from crypto_mesh.metrics import add_metrics_route
from crypto_mesh.service import Lifecycle, Running, start_service
from crypto_mesh.servicecreds import bearer_token_middleware, read_tokens

log = get_logger(__name__)

FOLLOWER_PATTERN = re.compile(r"[A-Za-z0-9:_-]{1,64}")
#: Symbols one follower may follow at once (Binance spot lists about 2,000 pairs).
MAX_SYMBOLS_PER_FOLLOWER = 4096
#: Seconds the closed SecondStats get, at stop, to leave for Redis and for Kafka.
STOP_FLUSH_S = 1.0

SERVICE = web.AppKey("service", AggregatorService)


async def start(settings: AggregatorSettings) -> Running[AggregatorService]:
    """Start the aggregator: control API on ``settings.host:settings.port`` (0: a free port), the Redis
    publisher and 24 h ticker store, the Kafka producers, and its membership of the replicas' consumer group
    over the follow topic, which starts the streams of the followed symbols (in Redis) it is assigned, and the
    mini-ticker stream if it holds partition 0 (:mod:`aggregator.ownership`).

    Returns once the control API is serving. Redis, Kafka and socket_proxy need not be up yet: they are
    retried in the background and ``/healthz`` reports ``starting``/``degraded`` until they are reachable.
    Raises ``OSError``/``ValueError`` if the TLS or token files cannot be read, ``OSError`` if the port cannot
    be bound. ``stop()`` closes the API, leaves the group, closes the streams, lets the closed seconds go out,
    then stops the background tasks and closes the clients.
    """

    async def build(lifecycle: Lifecycle) -> tuple[int, AggregatorService]:
        # Read before anything is opened: an aggregator that cannot prove its identity must not start.
        tls = settings.mesh_tls()
        api_tokens = read_tokens(settings.api_token_file)
        service = AggregatorService(settings, tls)
        lifecycle.on_stop(service.redis.aclose)
        lifecycle.on_stop(service.seconds.close)
        lifecycle.on_stop(service.kafka.close)
        lifecycle.on_stop(service.notices.close)
        lifecycle.task(service.publisher.run(), "redis-publisher")
        lifecycle.task(service.ticker_store.run(), "ticker-store")
        lifecycle.task(service.kafka.run(), "kafka-producer")
        lifecycle.task(service.seconds.run(), "second-producer")
        lifecycle.task(service.trades.run_clock(), "window-clock")
        lifecycle.task(service.notices.run(), "follow-notices")
        # Undone before the tasks above: the publisher and the producer still run while the seconds go out.
        lifecycle.on_stop(service.flush, STOP_FLUSH_S)
        service.feeds.start()
        lifecycle.on_stop(service.feeds.close)
        # Stopped first: leaving the group hands this replica's symbols to the others at once.
        lifecycle.task(service.resync(), "follow-resync")
        lifecycle.task(service.group.run(), "follow-group")
        port = await lifecycle.serve_http(create_app(service, api_tokens), settings.host, settings.port)
        log.info("control_api_listening", host=settings.host, port=port)
        return port, service

    return await start_service("aggregator", build)


def create_app(service: AggregatorService, api_tokens: tuple[str, ...]) -> web.Application:
    """The aiohttp application of the control API, bound to ``service``; every route but ``/healthz`` requires
    one of ``api_tokens``."""
    app = web.Application(
        middlewares=[
            observe_http(service.http_metrics, access_log=service.access_log),
            bearer_token_middleware(api_tokens, realm="aggregator"),
            error_middleware({RedisError: _redis_unavailable, OSError: _redis_unavailable}),
        ]
    )
    app[SERVICE] = service
    app.router.add_put("/v1/symbols/{symbol}/followers/{follower}", put_follower)
    app.router.add_delete("/v1/symbols/{symbol}/followers/{follower}", delete_follower)
    app.router.add_put("/v1/followers/{follower}", put_follower_symbols)
    app.router.add_get("/v1/symbols", list_symbols)
    add_metrics_route(app, registry_for(service))
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/healthz", healthz)
    return app


def _redis_unavailable(error: Exception, request: web.Request) -> ApiError:
    log.warning("control_request_redis_unavailable", path=request.path, error=str(error))
    return ApiError(503, "unavailable", "the follower store (Redis) is unavailable; retry later")


def _json(body: dict, status: int = 200) -> web.Response:
    return web.Response(body=jsonutil.dumps(body), status=status, content_type="application/json")


def _symbol(request: web.Request) -> str:
    try:
        return normalize_symbol(request.match_info["symbol"])
    except InvalidSymbol as exc:
        raise ApiError(422, "invalid_symbol", str(exc)) from None


def _follower(request: web.Request) -> str:
    follower = request.match_info["follower"]
    if not FOLLOWER_PATTERN.fullmatch(follower):
        raise ApiError(422, "invalid_follower", "follower must be 1 to 64 of A-Z a-z 0-9 : _ -")
    return follower


async def put_follower(request: web.Request) -> web.Response:
    """Add a follower to a symbol and make sure the symbol is streamed (idempotent)."""
    symbol, follower = _symbol(request), _follower(request)
    count = await request.app[SERVICE].follow(symbol, follower)
    return _json({"symbol": symbol, "followers": count, "tracked": True})


async def delete_follower(request: web.Request) -> web.Response:
    """Remove a follower (idempotent); the last one leaving stops the symbol's stream."""
    symbol, follower = _symbol(request), _follower(request)
    count = await request.app[SERVICE].unfollow(symbol, follower)
    return _json({"symbol": symbol, "followers": count, "tracked": count > 0})


async def put_follower_symbols(request: web.Request) -> web.Response:
    """Set a follower's whole symbol set from ``{"symbols": ["btcusdt", ...]}`` (idempotent): symbols it joins are
    streamed, symbols it was the last follower of stop streaming. ``[]`` makes it leave every symbol."""
    follower = _follower(request)
    symbols = _symbols_body(await request.read())
    counts, released = await request.app[SERVICE].set_follower_symbols(follower, symbols)
    return _json(
        {
            "follower": follower,
            "symbols": [{"symbol": symbol, "followers": n} for symbol, n in counts.items()],
            "released": released,
        }
    )


def _symbols_body(body: bytes) -> list[str]:
    """The distinct normalised symbols of a ``{"symbols": [...]}`` body, in first-seen order. 400 if the body is
    not such a JSON object, 422 for an invalid symbol or more than :data:`MAX_SYMBOLS_PER_FOLLOWER`."""
    try:
        document = jsonutil.loads(body)
    except jsonutil.JSONDecodeError:
        raise ApiError(400, "malformed", 'body must be JSON {"symbols": [...]}') from None
    if not isinstance(document, dict) or not isinstance(document.get("symbols"), list):
        raise ApiError(400, "malformed", 'body must be JSON {"symbols": [...]}')
    raw = document["symbols"]
    if len(raw) > MAX_SYMBOLS_PER_FOLLOWER:
        raise ApiError(422, "too_many_symbols", f"at most {MAX_SYMBOLS_PER_FOLLOWER} symbols per follower")
    symbols: dict[str, None] = {}
    for value in raw:
        try:
            symbols[normalize_symbol(value)] = None
        except InvalidSymbol as exc:
            raise ApiError(422, "invalid_symbol", str(exc)) from None
    return list(symbols)


async def list_symbols(request: web.Request) -> web.Response:
    """The followed symbols with their follower counts, from Redis."""
    counts = await request.app[SERVICE].followers.counts()
    return _json({"symbols": [{"symbol": symbol, "followers": n} for symbol, n in counts.items()]})


async def stats(request: web.Request) -> web.Response:
    """Counters since start."""
    service = request.app[SERVICE]
    feeds = service.feeds
    return _json({**service.counters(), "tracked": feeds.tracked(), "stale": sorted(feeds.watchdog.stale)})


async def healthz(request: web.Request) -> web.Response:
    """``ok`` when Redis, Kafka and socket_proxy are reachable and the followers are loaded; else 503 with
    ``starting`` (not connected yet) or ``degraded`` (was connected, lost something)."""
    service = request.app[SERVICE]
    status, checks = await service.health()
    body = {"status": status, "checks": checks, "counters": service.counters()}
    return _json(body, 200 if status == "ok" else 503)
