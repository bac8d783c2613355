"""HTTP side of the ETL and its wiring: ``GET /healthz``, ``POST /v1/sql``, the typed read API
(``GET /v1/candles``, ``GET /v1/indicators``), start and stop.

Routes and shapes: docs/CONTRACTS.md, section "ETL HTTP". Errors are ``{"error": {"code", "message"}}``
(:mod:`crypto_mesh.httperrors`; :data:`DOMAIN_ERRORS` maps the query's errors). Every route but ``/healthz``
requires the service credential ``Authorization: Bearer <token>`` (``ETL_API_TOKEN_FILE``,
:mod:`crypto_mesh.servicecreds`); without it, 401.

:func:`start` builds the service on the mesh's lifecycle (:mod:`crypto_mesh.service`): the ClickHouse store,
the HTTP port, the first ClickHouse attempt, then the consumer task. Stopping undoes it in reverse: the
consumer flushes and commits its open batches and leaves the group (up to :data:`etl.service.STOP_TIMEOUT_S`, then it is
cancelled), HTTP lets queries in flight finish, and the store is closed.
"""

from __future__ import annotations

import functools
import sys

from aiohttp import web
from clickhouse_connect.driver.exceptions import DatabaseError, Error, OperationalError, StreamFailureError

from crypto_mesh.metrics import add_metrics_route
from crypto_mesh.observe import observe_http
from etl.metrics import registry_for
from crypto_mesh import jsonutil
from crypto_mesh.binance import InvalidSymbol, normalize_symbol
from crypto_mesh.candles import CandleRange, InvalidCandleQuery, InvalidLimit, InvalidRange
from crypto_mesh.httperrors import ApiError, ErrorMapping, error_middleware
from crypto_mesh.indicators import InvalidIndicator, indicator
from crypto_mesh.logs import get_logger
from crypto_mesh.runtime import tune_garbage_collector
from crypto_mesh.servicecreds import bearer_token_middleware
from crypto_mesh.service import Lifecycle, Running, start_service
from etl import sql
from etl.candles import candles_json, indicator_json
from etl.migrate import MigrationError
from etl.service import EtlService, ReadsUnavailable
from etl.settings import EtlSettings

log = get_logger(__name__)

#: Interpreter settings of the ETL process (see :func:`tune_interpreter`).
GIL_SWITCH_INTERVAL_S = 0.001
GC_GENERATION0_THRESHOLD = 100_000


def tune_interpreter() -> None:
    """Set the interpreter up for the ETL's throughput; ``python -m etl`` calls it once at start-up, after
    its imports (and ``benchmarks/bench_etl.py`` does the same, so that it measures the service as it runs).

    - Switch interval 1 ms (Python's default is 5 ms): the insert thread (:class:`etl.store.ClickHouseStore`)
      takes the GIL back several times per insert, and each time it waited out the event loop's polling and
      decoding, which made inserts up to twice as slow; with 1 ms the loop keeps ~85 % of its speed.
    - Garbage collector: what start-up made is frozen (never walked again), and a generation-0 collection
      waits for 100,000 net new container objects instead of 700. A poll keeps up to ``ETL_BATCH_MAX_ROWS``
      ConsumerRecords alive until they are decoded, and with the default threshold they
      were walked and promoted up to the oldest generation before dying: 13 % of the ETL's time in the
      benchmark. Reference counting frees them all the same; the collector is only for cycles.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    tune_garbage_collector(GC_GENERATION0_THRESHOLD)


#: Largest accepted ``POST /v1/sql`` body (bytes); a larger one is answered 413.
MAX_BODY_BYTES = 64 * 1024


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=jsonutil.dumps(body), content_type="application/json")


SERVICE_KEY = web.AppKey("etl_service", EtlService)


async def healthz(request: web.Request) -> web.Response:
    status, body = request.app[SERVICE_KEY].health()
    return _json(status, body)


def _too_large() -> ApiError:
    return ApiError(413, "too_large", f"the body must be at most {MAX_BODY_BYTES} bytes")


async def post_sql(request: web.Request) -> web.Response:
    """``POST /v1/sql`` ``{"query": "SELECT ..."}`` → ``200 {"columns", "types", "rows"}``.

    The query is checked on ClickHouse's own parse and run within the ``ETL_SQL_*`` limits on the analytics
    client (:mod:`etl.sql`). 400 malformed body, a query ClickHouse cannot parse, a query stopped by a limit
    or another ClickHouse error (with its message); 403 a query that is not one SELECT over ``crypto`` with
    allowed functions; 413 body over 64 KiB; 503 ClickHouse not reachable yet. The query's errors are
    answered by :data:`DOMAIN_ERRORS`.
    """
    service = request.app[SERVICE_KEY]
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _too_large()
    try:
        body = jsonutil.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        raise _too_large() from None
    except jsonutil.JSONDecodeError:
        raise ApiError(400, "malformed", 'the body must be JSON: {"query": "SELECT ..."}') from None
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise ApiError(400, "malformed", 'the body must be {"query": "SELECT ..."}')
    if not service.store.connected or not await service.connect_analytics():
        raise ApiError(503, "unavailable", "ClickHouse is not reachable yet")
    result = await service.store.query(body["query"], service.settings.sql_limits())
    return web.Response(body=sql.result_json(result), content_type="application/json")


def _integer(request: web.Request, name: str, error: type[ValueError]) -> int | None:
    """Query parameter ``name`` as a non-negative integer (``None`` when absent); ``error`` otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise error(f"{name} must be a non-negative integer")
    return int(raw)


def _candle_request(request: web.Request) -> tuple[str, CandleRange]:
    """The symbol (normalised) and the selection of a candles or indicators request: ``symbol`` (required),
    ``interval`` (default ``1m``), ``start``/``end`` (Unix ms), ``limit`` (crypto_mesh.candles)."""
    symbol = normalize_symbol(request.query.get("symbol"))
    selection = CandleRange.of(
        request.query.get("interval", "1m"),
        _integer(request, "start", InvalidRange),
        _integer(request, "end", InvalidRange),
        _integer(request, "limit", InvalidLimit),
    )
    return symbol, selection


async def get_candles(request: web.Request) -> web.Response:
    """``GET /v1/candles?symbol=&interval=&start=&end=&limit=`` → ``200 {"symbol", "interval", "candles":
    [{"open_time", "close_time", "open", "high", "low", "close", "volume", "quote_volume", "trades"}],
    "last_second"}``: times in Unix ms, decimals as strings, oldest first (:mod:`etl.candles`). 422 a bad
    symbol, interval, range or limit; 503 while ClickHouse cannot be read."""
    symbol, selection = _candle_request(request)
    candles = await request.app[SERVICE_KEY].candles(symbol, selection)
    return _json(200, candles_json(symbol, selection, candles))


async def get_indicators(request: web.Request) -> web.Response:
    """``GET /v1/indicators?symbol=&name=&period=&interval=&start=&end=&limit=`` → ``200 {"symbol",
    "interval", "name", "period", "points": [{"open_time", "value"}]}``: the indicator
    (:mod:`crypto_mesh.indicators`) over the closes of the candles ``GET /v1/candles`` selects for the same
    values. 422 as there, and for an unknown ``name`` or a ``period`` out of range."""
    symbol, selection = _candle_request(request)
    name = request.query.get("name", "")
    computation, period = indicator(name, _integer(request, "period", InvalidIndicator))
    candles = await request.app[SERVICE_KEY].candles(symbol, selection)
    return _json(200, indicator_json(symbol, selection, name, period, computation, candles))


def _clickhouse_unreachable(exc: Exception, _request: web.Request) -> ApiError:
    log.warning("clickhouse_unreachable_for_a_query", error=str(exc))
    return ApiError(503, "unavailable", "ClickHouse is not reachable")


#: How the errors of a request are answered (the nearest class wins): the read API's refusals of a symbol,
#: a selection or an indicator, and ClickHouse unreadable for it; an analytics query's own refusals, a query
#: stopped by ClickHouse (a limit, a failure while streaming the result) with ClickHouse's message, and a
#: ClickHouse that cannot be reached.
DOMAIN_ERRORS: dict[type[Exception], ErrorMapping] = {
    InvalidSymbol: lambda exc, _request: ApiError(422, "invalid_symbol", str(exc)),
    InvalidCandleQuery: lambda exc, _request: ApiError(422, exc.code, str(exc)),  # type: ignore[attr-defined]
    InvalidIndicator: lambda exc, _request: ApiError(422, "invalid_indicator", str(exc)),
    ReadsUnavailable: lambda exc, _request: ApiError(503, "unavailable", str(exc)),
    sql.QueryMalformed: lambda exc, _request: ApiError(400, "malformed_query", str(exc)),
    sql.QueryRefused: lambda exc, _request: ApiError(403, "forbidden_query", str(exc)),
    StreamFailureError: lambda exc, _request: ApiError(400, "clickhouse_error", sql.one_line(str(exc))),
    OperationalError: _clickhouse_unreachable,
    DatabaseError: lambda exc, _request: ApiError(400, "clickhouse_error", sql.one_line(str(exc))),
}


def create_app(service: EtlService) -> web.Application:
    """The aiohttp application of ``service`` (routes of docs/CONTRACTS.md, "ETL HTTP")."""
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            observe_http(service.http_metrics, access_log=service.settings.access_log),
            error_middleware(DOMAIN_ERRORS),
            bearer_token_middleware(service.api_tokens, realm="etl"),
        ],
    )
    app[SERVICE_KEY] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/sql", post_sql)
    app.router.add_get("/v1/candles", get_candles)
    app.router.add_get("/v1/indicators", get_indicators)
    add_metrics_route(app, registry_for(service))
    return app


async def start(settings: EtlSettings) -> Running[EtlService]:
    """Start the ETL: HTTP server, ClickHouse migrations, consumer loop; return once HTTP is serving.

    The first ClickHouse attempt is awaited, so with a reachable ClickHouse (always, for chDB) the schema is
    migrated when this returns; otherwise connecting continues in the background and ``/healthz`` answers 503
    meanwhile. Kafka is always joined in the background. ``running.service`` is the :class:`EtlService`
    (health, the store, the consumer's counters). Raises :class:`etl.migrate.MigrationError` if a recorded
    migration's file has changed, and ``OSError`` if the HTTP port cannot be bound; nothing is left open then.
    """
    return await start_service("etl", functools.partial(_build, settings))


async def _build(settings: EtlSettings, lifecycle: Lifecycle) -> tuple[int, EtlService]:
    service = EtlService(settings)
    lifecycle.on_stop(service.store.close)
    # An analytics query in flight at stop may run to its time limit before HTTP closes.
    port = await lifecycle.serve_http(
        create_app(service), settings.host, settings.port, shutdown_timeout_s=settings.sql_max_execution_s
    )
    try:
        await service.connect_and_migrate()
    except (Error, OSError) as exc:
        log.warning("clickhouse_not_reachable_yet", error=repr(exc))
    task = lifecycle.task(service.run(), "etl")
    lifecycle.on_stop(service.stop, task)
    log.info(
        "etl_listening",
        host=settings.host,
        port=port,
        topics=[settings.kafka_topic, settings.kafka_second_topic],
        deadletter_topic=settings.kafka_deadletter_topic,
    )
    return port, service
