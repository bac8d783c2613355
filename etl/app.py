"""HTTP side of the ETL and its wiring: ``GET /healthz``, ``POST /v1/sql``, start and stop.

Routes and shapes: docs/CONTRACTS.md, section "ETL HTTP". Errors are ``{"error": {"code", "message"}}``.
Every route but ``/healthz`` requires the service credential ``Authorization: Bearer <token>``
(``ETL_API_TOKEN_FILE``, :mod:`crypto_mesh.servicecreds`); without it, 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass

from aiohttp import web
from clickhouse_connect.driver.exceptions import DatabaseError, Error, OperationalError, StreamFailureError
from tenacity import AsyncRetrying, RetryCallState, retry_if_not_exception_type

from crypto_mesh import jsonutil
from crypto_mesh.httperrors import error_response
from crypto_mesh.logs import get_logger
from crypto_mesh.runtime import tune_garbage_collector
from crypto_mesh.servicecreds import bearer_token_middleware, read_tokens
from etl import sql
from etl.consumer import TickerConsumer, backoff
from etl.migrate import MigrationError
from etl.settings import EtlSettings
from etl.store import ClickHouseStore

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
#: How long :meth:`Running.stop` waits for the consumer to flush and commit before cancelling it (s).
_STOP_TIMEOUT_S = 30.0


class EtlService:
    """State shared by the routes: the ClickHouse store, the consumer, and readiness of each dependency."""

    def __init__(self, settings: EtlSettings) -> None:
        self.settings = settings
        self.api_tokens = read_tokens(settings.api_token_file)
        self.store = ClickHouseStore(settings.clickhouse_url.get_secret_value(), settings.analytics_url())
        self.consumer = TickerConsumer(settings, self.store)
        self.clickhouse_state = "connecting"  # → "ok", or "migration failed: ..."
        self._stopping = asyncio.Event()

    async def connect_and_migrate(self) -> None:
        """One attempt to connect to ClickHouse and apply pending migrations.

        Raises :class:`etl.migrate.MigrationError` (files and database disagree), or the
        ``clickhouse_connect`` error / ``OSError`` of an unreachable ClickHouse.
        """
        try:
            await self.store.connect()
            applied = await self.store.migrate()
        except MigrationError as exc:
            self.clickhouse_state = f"migration failed: {exc}"
            log.error("clickhouse migration failed", error=str(exc))
            raise
        self.clickhouse_state = "ok"
        log.info("clickhouse ready", migrations_applied=applied)
        await self.connect_analytics()

    async def connect_analytics(self) -> bool:
        """Open the analytics client if it is not open; whether it is. A failure (unreachable, or the
        ``analytics`` user's credentials refused) is logged and never stops ingestion; ``POST /v1/sql``
        tries again and answers 503 meanwhile."""
        try:
            await self.store.connect_analytics()
        except (Error, OSError) as exc:
            log.warning("clickhouse analytics client not connected", error=sql.one_line(str(exc)))
            return False
        return True

    async def run(self) -> None:
        """Background part of the service: ClickHouse ready (retried with backoff unless a migration is
        wrong, which needs a person), then the consumer loop until stopped."""

        def log_retry(state: RetryCallState) -> None:
            log.warning(
                "clickhouse not ready, retrying",
                attempt=state.attempt_number,
                retry_in_s=round(state.upcoming_sleep, 2),
                error=repr(state.outcome.exception()),
            )

        async def sleep(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

        if self.clickhouse_state != "ok":
            retrying = AsyncRetrying(
                wait=backoff(self.settings),
                retry=retry_if_not_exception_type(MigrationError),
                stop=lambda _state: self._stopping.is_set(),
                sleep=sleep,
                before_sleep=log_retry,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self.connect_and_migrate()
            except (MigrationError, Error, OSError):
                return  # logged; /healthz reports it
        await self.consumer.run()

    def health(self) -> tuple[int, dict]:
        """``(status code, body)`` of ``GET /healthz``."""
        clickhouse = "failing" if self.consumer.clickhouse_failing else self.clickhouse_state
        kafka = "ok" if self.consumer.kafka_ready else "connecting"
        ready = clickhouse == "ok" and kafka == "ok"
        if ready:
            status = "ok"
        elif self.clickhouse_state == "connecting" or (
            clickhouse == "ok" and not self.consumer.kafka_ever_ready
        ):
            status = "starting"
        else:
            status = "degraded"
        stats = self.consumer.stats
        body = {
            "status": status,
            "clickhouse": clickhouse,
            "kafka": kafka,
            "rows_inserted": stats.rows_inserted,
            "records_dead_lettered": stats.records_dead_lettered,
            "batches_committed": stats.batches_committed,
            "insert_failures": stats.insert_failures,
            "deadletter_failures": stats.deadletter_failures,
            "records_held": stats.records_held,
            "max_records_held": stats.max_records_held,
        }
        return (200 if ready else 503), body

    async def stop(self) -> None:
        self._stopping.set()
        await self.consumer.stop()


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=jsonutil.dumps(body), content_type="application/json")


SERVICE_KEY = web.AppKey("etl_service", EtlService)


async def healthz(request: web.Request) -> web.Response:
    status, body = request.app[SERVICE_KEY].health()
    return _json(status, body)


async def post_sql(request: web.Request) -> web.Response:
    """``POST /v1/sql`` ``{"query": "SELECT ..."}`` → ``200 {"columns", "types", "rows"}``.

    The query is checked on ClickHouse's own parse and run within the ``ETL_SQL_*`` limits on the analytics
    client (:mod:`etl.sql`). 400 malformed body, a query ClickHouse cannot parse, a query stopped by a limit
    or another ClickHouse error (with its message); 403 a query that is not one SELECT over ``crypto`` with
    allowed functions; 413 body over 64 KiB; 503 ClickHouse not reachable yet.
    """
    service = request.app[SERVICE_KEY]
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return error_response(413, "too_large", f"the body must be at most {MAX_BODY_BYTES} bytes")
    try:
        body = jsonutil.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "too_large", f"the body must be at most {MAX_BODY_BYTES} bytes")
    except jsonutil.JSONDecodeError:
        return error_response(400, "malformed", 'the body must be JSON: {"query": "SELECT ..."}')
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return error_response(400, "malformed", 'the body must be {"query": "SELECT ..."}')
    if not service.store.connected or not await service.connect_analytics():
        return error_response(503, "unavailable", "ClickHouse is not reachable yet")
    try:
        result = await service.store.query(body["query"], service.settings.sql_limits())
    except sql.QueryMalformed as exc:
        return error_response(400, "malformed_query", str(exc))
    except sql.QueryRefused as exc:
        return error_response(403, "forbidden_query", str(exc))
    except StreamFailureError as exc:
        return error_response(400, "clickhouse_error", sql.one_line(str(exc)))
    except OperationalError as exc:
        log.warning("clickhouse unreachable for a query", error=str(exc))
        return error_response(503, "unavailable", "ClickHouse is not reachable")
    except DatabaseError as exc:
        return error_response(400, "clickhouse_error", sql.one_line(str(exc)))
    return web.Response(body=sql.result_json(result), content_type="application/json")


def create_app(service: EtlService) -> web.Application:
    """The aiohttp application of ``service`` (routes of docs/CONTRACTS.md, "ETL HTTP")."""
    app = web.Application(
        client_max_size=MAX_BODY_BYTES, middlewares=[bearer_token_middleware(service.api_tokens, realm="etl")]
    )
    app[SERVICE_KEY] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/sql", post_sql)
    return app


@dataclass
class Running:
    """A started ETL: ``port`` is the bound HTTP port; ``service`` exposes health and the consumer's
    counters."""

    port: int
    service: EtlService
    _runner: web.AppRunner
    _task: asyncio.Task

    async def stop(self) -> None:
        """Flush the open batch and commit it, leave the consumer group, stop HTTP, close ClickHouse."""
        await self.service.stop()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), _STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("consumer did not stop in time; cancelling it", timeout_s=_STOP_TIMEOUT_S)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        except Exception:
            log.exception("consumer failed")
        await self._runner.cleanup()
        await self.service.store.close()
        log.info("etl stopped")


async def start(settings: EtlSettings) -> Running:
    """Start the ETL: HTTP server, ClickHouse migrations, consumer loop; return once HTTP is serving.

    The first ClickHouse attempt is awaited, so with a reachable ClickHouse (always, for chDB) the schema is
    migrated when this returns; otherwise connecting continues in the background and ``/healthz`` answers 503
    meanwhile. Kafka is always joined in the background. Raises :class:`etl.migrate.MigrationError` if a
    recorded migration's file has changed, and ``OSError`` if the HTTP port cannot be bound.
    """
    service = EtlService(settings)
    runner = web.AppRunner(create_app(service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        await service.store.close()
        raise
    port = runner.addresses[0][1]
    try:
        await service.connect_and_migrate()
    except MigrationError:
        await runner.cleanup()
        await service.store.close()
        raise
    except (Error, OSError) as exc:
        log.warning("clickhouse not reachable yet; retrying in the background", error=repr(exc))
    task = asyncio.create_task(service.run(), name="etl")
    log.info(
        "etl serving",
        host=settings.host,
        port=port,
        topics=[settings.kafka_topic, settings.kafka_second_topic],
        deadletter_topic=settings.kafka_deadletter_topic,
    )
    return Running(port=port, service=service, _runner=runner, _task=task)
