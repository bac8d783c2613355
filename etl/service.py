"""The parts of a running ETL and what they do apart from HTTP: :class:`EtlService`.

:func:`etl.app.start` opens and closes the parts (:mod:`crypto_mesh.service`); the HTTP views only translate
requests to the methods here (health, SQL on the analytics client, candles on the reads client) and back.
"""

from __future__ import annotations

import asyncio

from clickhouse_connect.driver.exceptions import Error

from crypto_mesh.observe import HttpMetrics
from crypto_mesh.candles import CandleRange
from crypto_mesh.logs import get_logger
from crypto_mesh.servicecreds import read_tokens
from etl import sql
from etl.candles import Candle
from etl.consumer import TickerConsumer
from etl.migrate import MigrationError
from etl.settings import EtlSettings
from etl.store import ClickHouseStore

log = get_logger(__name__)

#: How long stopping waits for the consumer to flush and commit before cancelling it (s).
STOP_TIMEOUT_S = 30.0


class ReadsUnavailable(Exception):
    """The typed read API cannot read ClickHouse: not reachable (yet), or the query failed there."""


class EtlService:
    """State shared by the routes: the ClickHouse store, the consumer, and readiness of each dependency."""

    def __init__(self, settings: EtlSettings) -> None:
        self.settings = settings
        self.api_tokens = read_tokens(settings.api_token_file)
        self.store = ClickHouseStore(
            settings.clickhouse_url.get_secret_value(), settings.analytics_url(), settings.clickhouse_cluster
        )
        self.consumer = TickerConsumer(settings, self.store)
        self.http_metrics = HttpMetrics("etl")
        self.clickhouse_state = "connecting"  # → "ok", or "migration failed: ..."

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
            log.error("clickhouse_migration_failed", error=str(exc))
            raise
        self.clickhouse_state = "ok"
        log.info("clickhouse_ready", migrations_applied=applied)
        await self.connect_analytics()
        await self.connect_reads()

    async def connect_analytics(self) -> bool:
        """Open the analytics client if it is not open; whether it is. A failure (unreachable, or the
        ``analytics`` user's credentials refused) is logged and never stops ingestion; ``POST /v1/sql``
        tries again and answers 503 meanwhile."""
        try:
            await self.store.connect_analytics()
        except (Error, OSError) as exc:
            log.warning("clickhouse_analytics_not_connected", error=sql.one_line(str(exc)))
            return False
        return True

    async def connect_reads(self) -> bool:
        """Open the reads client of the typed read API if it is not open; whether it is. Like
        :meth:`connect_analytics`: a failure is logged, and ``GET /v1/candles`` tries again and answers 503
        meanwhile."""
        try:
            await self.store.connect_reads()
        except (Error, OSError) as exc:
            log.warning("clickhouse_reads_not_connected", error=sql.one_line(str(exc)))
            return False
        return True

    async def candles(self, symbol: str, selection: CandleRange) -> list[Candle]:
        """The candles of ``symbol`` that ``selection`` selects, oldest first, within the ``ETL_SQL_*``
        limits. Raises :class:`ReadsUnavailable` while ClickHouse cannot be read."""
        if not self.store.connected or not await self.connect_reads():
            raise ReadsUnavailable("ClickHouse is not reachable yet")
        try:
            return await self.store.candles(symbol, selection, self.settings.sql_limits())
        except Error as exc:
            # A fixed query that fails is no fault of the caller's: ClickHouse is down, or over a limit.
            log.warning("candles_query_failed", symbol=symbol, error=sql.one_line(str(exc)))
            raise ReadsUnavailable("ClickHouse could not answer") from exc

    async def run(self) -> None:
        """Background part of the service: ClickHouse ready (retried with the consumer's ``ETL_RETRY_*``
        backoff until :meth:`stop`, unless a migration is wrong, which needs a person), then the consumer loop
        until :meth:`stop`."""
        if self.clickhouse_state != "ok":
            try:
                async for attempt in self.consumer.retrying("clickhouse_connect_retrying", (Error, OSError)):
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

    async def stop(self, task: asyncio.Task) -> None:
        """Ask :meth:`run` (running as ``task``) to flush and commit the open batches and leave the consumer
        group, and wait for it up to :data:`STOP_TIMEOUT_S`; past that it is logged, and the lifecycle
        cancels the task (the uncommitted batches are redelivered)."""
        await self.consumer.stop()
        _, pending = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
        if pending:
            log.error("etl_consumer_stop_timed_out", timeout_s=STOP_TIMEOUT_S)
