"""The aggregator's control HTTP API (aiohttp) and its wiring: :func:`start` builds and runs the service.

Routes (docs/CONTRACTS.md, "Aggregator control HTTP"):

- ``PUT /v1/symbols/{symbol}/followers/{follower}`` → ``200 {"symbol", "followers": n, "tracked": true}``
- ``DELETE /v1/symbols/{symbol}/followers/{follower}`` → ``200 {"symbol", "followers": n, "tracked": bool}``
- ``PUT /v1/followers/{follower}`` with ``{"symbols": [...]}`` → ``200 {"follower", "symbols": [{"symbol",
  "followers": n}], "released": [...]}``: sets the follower's whole symbol set (rebuild from the portfolios)
- ``GET /v1/symbols`` → ``200 {"symbols": [{"symbol", "followers": n}]}``
- ``GET /metrics`` → Prometheus text format (:mod:`aggregator.metrics`)
- ``GET /v1/stats`` → ``200 {"trades": {...}, "publisher": {...}, "kafka": {...}, ...}`` (counters)
- ``GET /healthz`` → ``200 {"status": "ok", ...}`` or ``503 {"status": "starting"|"degraded", ...}``

Every route but ``/healthz`` requires the service credential ``Authorization: Bearer <token>``
(``AGGREGATOR_API_TOKEN_FILE``, :mod:`crypto_mesh.servicecreds`); without it, 401.

Errors are ``{"error": {"code", "message"}}``: 400 malformed body, 404 unknown route, 405 wrong method, 413 body
too large, 422 invalid symbol or follower or too many symbols, 503 Redis unreachable. PUT and DELETE are idempotent; GETs change nothing.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import redis.asyncio as redis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from aggregator.feeds import Feeds
from aggregator.intake import TickerIntake, TradeIntake, counters_json
from aggregator.metrics import registry_for
from aggregator.second_topic import SecondProducer, fan_out
from aggregator.secondstat import SecondWindows
from aggregator.settings import AggregatorSettings
from aggregator.store import FollowerStore, StatPublisher, TickerProducer, connect_redis
from crypto_mesh import jsonutil
from crypto_mesh.retry import Backoff
from crypto_mesh.binance import InvalidSymbol, normalize_symbol
from crypto_mesh.httperrors import error_response
from crypto_mesh.logs import get_logger
from crypto_mesh.runtime import raise_if_cancelling
from crypto_mesh.servicecreds import bearer_token_middleware, read_tokens

log = get_logger(__name__)

FOLLOWER_PATTERN = re.compile(r"[A-Za-z0-9:_-]{1,64}")
#: Symbols one follower may follow at once (Binance spot lists about 2,000 pairs).
MAX_SYMBOLS_PER_FOLLOWER = 4096
HEALTH_PING_TIMEOUT_S = 0.5


@dataclass
class Running:
    """A started aggregator: ``port`` is the bound control port; ``await stop()`` shuts it down cleanly."""

    port: int
    _service: _Service

    async def stop(self) -> None:
        await self._service.stop()


class _Service:
    """The parts of a running aggregator and their background tasks."""

    def __init__(self, settings: AggregatorSettings) -> None:
        # Read before anything is opened: an aggregator that cannot prove its identity must not start.
        tls = settings.mesh_tls()
        self.settings = settings
        self.api_tokens = read_tokens(settings.api_token_file)
        self.redis: redis.Redis = connect_redis(settings.redis_url.get_secret_value())
        self.followers = FollowerStore(self.redis)
        self.publisher = StatPublisher(self.redis)
        kafka_options = settings.kafka_client_options()
        self.kafka = TickerProducer(
            settings.kafka_bootstrap_servers, settings.kafka_enable_idempotence, client_options=kafka_options
        )
        # Every SecondStat also goes to Kafka (binance.second) for the analytical path; neither sink blocks.
        self.seconds = SecondProducer(
            settings.kafka_bootstrap_servers, settings.kafka_enable_idempotence, client_options=kafka_options
        )
        self.trades = TradeIntake(
            SecondWindows(settings.window_grace_ms), fan_out(self.publisher.submit, self.seconds.submit)
        )
        self.tickers = TickerIntake(self.kafka.submit)
        self.feeds = Feeds(
            settings.socket_proxy_target, tls, settings.trade_stream, self.trades, self.tickers
        )
        self.followers_loaded = False
        # Serialises follower changes with the stream they start or stop, so a PUT racing the DELETE of the
        # last follower cannot leave a followed symbol unstreamed.
        self.tracking_lock = asyncio.Lock()
        self.tasks: list[asyncio.Task] = []
        self.runner: web.AppRunner | None = None
        self.metrics = registry_for(self)

    async def start(self) -> int:
        self.tasks = [
            asyncio.create_task(self.publisher.run(), name="redis-publisher"),
            asyncio.create_task(self.kafka.run(), name="kafka-producer"),
            asyncio.create_task(self.seconds.run(), name="second-producer"),
            asyncio.create_task(self.trades.run_clock(), name="window-clock"),
            asyncio.create_task(self._reload_followers(), name="reload-followers"),
        ]
        self.feeds.start()
        self.runner = web.AppRunner(create_app(self), handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.port)
        await site.start()
        port = self.runner.addresses[0][1]
        log.info("aggregator listening", host=self.settings.host, port=port)
        return port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await self.feeds.close()
        # Open windows are incomplete seconds: they are dropped, not published. What is closed goes out.
        await self.publisher.flush(timeout_s=1.0)
        await self.seconds.flush(timeout_s=1.0)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.kafka.close()
        await self.seconds.close()
        await self.redis.aclose()
        log.info("aggregator stopped")

    async def _reload_followers(self) -> None:
        """Track again every symbol that has followers in Redis, retrying until Redis answers."""
        backoff = Backoff(base_s=0.1, max_s=5.0)
        while True:
            raise_if_cancelling()  # a cancellation a library swallowed still ends the loop
            try:
                counts = await self.followers.counts()
                break
            except (RedisError, OSError) as exc:
                raise_if_cancelling()
                log.warning("redis not reachable; followers not loaded yet", error=str(exc))
                await asyncio.sleep(backoff.next_delay())
        async with self.tracking_lock:
            for symbol in counts:
                self.feeds.track(symbol)
        self.followers_loaded = True
        log.info("followers loaded", symbols=len(counts))

    async def redis_reachable(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), HEALTH_PING_TIMEOUT_S))
        except (RedisError, OSError, TimeoutError):
            return False

    def counters(self) -> dict:
        return {
            "trades": counters_json(self.trades.counters),
            "publisher": {
                "published": self.publisher.published,
                "stale": self.publisher.stale,
                "dropped": self.publisher.dropped,
                "failures": self.publisher.failures,
                "pending": self.publisher.pending(),
            },
            "tickers": counters_json(self.tickers.counters),
            "kafka": {"sent": self.kafka.sent, "failed": self.kafka.failed, "dropped": self.kafka.dropped},
            "second_topic": {
                "sent": self.seconds.sent,
                "failed": self.seconds.failed,
                "dropped": self.seconds.dropped,
                "pending": self.seconds.pending(),
            },
            "upstream": {"reconnects": self.feeds.reconnects},
        }


SERVICE = web.AppKey("service", _Service)


async def start(settings: AggregatorSettings) -> Running:
    """Start the aggregator: control API on ``settings.host:settings.port`` (0: a free port), the mini-ticker
    stream, the Redis publisher, the Kafka producer, and the streams of the symbols followed in Redis.

    Returns once the control API is serving. Redis, Kafka and socket_proxy need not be up yet: they are
    retried in the background and ``/healthz`` reports ``starting``/``degraded`` until they are reachable.
    """
    service = _Service(settings)
    try:
        port = await service.start()
    except BaseException:
        await service.stop()
        raise
    return Running(port=port, _service=service)


def create_app(service: _Service) -> web.Application:
    """The aiohttp application of the control API, bound to ``service``."""
    app = web.Application(
        middlewares=[bearer_token_middleware(service.api_tokens, realm="aggregator"), _json_errors]
    )
    app[SERVICE] = service
    app.router.add_put("/v1/symbols/{symbol}/followers/{follower}", put_follower)
    app.router.add_delete("/v1/symbols/{symbol}/followers/{follower}", delete_follower)
    app.router.add_put("/v1/followers/{follower}", put_follower_symbols)
    app.router.add_get("/v1/symbols", list_symbols)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/healthz", healthz)
    return app


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _json(body: dict, status: int = 200) -> web.Response:
    return web.Response(body=jsonutil.dumps(body), status=status, content_type="application/json")


@web.middleware
async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except (RedisError, OSError) as exc:
        log.warning("redis unavailable for a control request", path=request.path, error=str(exc))
        return error_response(503, "unavailable", "the follower store (Redis) is unavailable; retry later")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        response = error_response(exc.status, code, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("control request failed", path=request.path)
        return error_response(500, "internal", "internal error")


def _path_args(request: web.Request) -> tuple[str, str]:
    try:
        symbol = normalize_symbol(request.match_info["symbol"])
    except InvalidSymbol as exc:
        raise ApiError(422, "invalid_symbol", str(exc)) from None
    follower = request.match_info["follower"]
    if not FOLLOWER_PATTERN.fullmatch(follower):
        raise ApiError(422, "invalid_follower", "follower must be 1 to 64 of A-Z a-z 0-9 : _ -")
    return symbol, follower


async def put_follower(request: web.Request) -> web.Response:
    """Add a follower to a symbol and make sure the symbol is streamed (idempotent)."""
    service = request.app[SERVICE]
    symbol, follower = _path_args(request)
    async with service.tracking_lock:
        count = await service.followers.add(symbol, follower)
        service.feeds.track(symbol)
    return _json({"symbol": symbol, "followers": count, "tracked": True})


async def delete_follower(request: web.Request) -> web.Response:
    """Remove a follower (idempotent); the last one leaving stops the symbol's stream."""
    service = request.app[SERVICE]
    symbol, follower = _path_args(request)
    async with service.tracking_lock:
        count = await service.followers.remove(symbol, follower)
        if count == 0:
            await service.feeds.untrack(symbol)
    return _json({"symbol": symbol, "followers": count, "tracked": count > 0})


async def put_follower_symbols(request: web.Request) -> web.Response:
    """Set a follower's whole symbol set from ``{"symbols": ["btcusdt", ...]}`` (idempotent): symbols it joins are
    streamed, symbols it was the last follower of stop streaming. ``[]`` makes it leave every symbol."""
    service = request.app[SERVICE]
    follower = request.match_info["follower"]
    if not FOLLOWER_PATTERN.fullmatch(follower):
        raise ApiError(422, "invalid_follower", "follower must be 1 to 64 of A-Z a-z 0-9 : _ -")
    symbols = _symbols_body(await request.read())
    async with service.tracking_lock:
        counts, released = await service.followers.set_follower(follower, symbols)
        for symbol in symbols:
            service.feeds.track(symbol)
        for symbol in released:
            await service.feeds.untrack(symbol)
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


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (text format 0.0.4)."""
    body = generate_latest(request.app[SERVICE].metrics)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def list_symbols(request: web.Request) -> web.Response:
    """The followed symbols with their follower counts, from Redis."""
    counts = await request.app[SERVICE].followers.counts()
    return _json({"symbols": [{"symbol": symbol, "followers": n} for symbol, n in counts.items()]})


async def stats(request: web.Request) -> web.Response:
    """Counters since start."""
    service = request.app[SERVICE]
    return _json({**service.counters(), "tracked": service.feeds.tracked()})


async def healthz(request: web.Request) -> web.Response:
    """``ok`` when Redis, Kafka and socket_proxy are reachable and the followers are loaded; else 503 with
    ``starting`` (not connected yet) or ``degraded`` (was connected, lost something)."""
    service = request.app[SERVICE]
    checks = {
        "redis": await service.redis_reachable() and service.publisher.healthy is not False,
        "kafka": service.kafka.healthy is True and service.seconds.healthy is not False,
        "socket_proxy": service.feeds.connected(),
        "followers_loaded": service.followers_loaded,
    }
    if all(checks.values()):
        status = "ok"
    elif service.kafka.healthy is None or not service.followers_loaded:
        status = "starting"
    else:
        status = "degraded"
    body = {"status": status, "checks": checks, "counters": service.counters()}
    return _json(body, 200 if status == "ok" else 503)
