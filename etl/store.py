"""The one place that talks to ClickHouse (clickhouse-connect; embedded chDB or a server over HTTP).

clickhouse-connect is blocking, so each client runs on a dedicated thread and the event loop never blocks:
the ingest client (inserts of the consumer, migrations) on one, the analytics client (analysts' queries,
under the limits of :class:`etl.sql.SqlLimits`) on another, so that a 30 s query never delays an insert, and
the reads client (the typed read API, :mod:`etl.candles`) on a third, so that an analyst's 30 s query never
delays the candles the BFF asks for. The two reading clients connect as the analytics user (read-only).
With chDB every client opens the same data directory in this process: chDB allows one engine path per
process with any number of clients on it, each with its own connection handle, and queries of two handles
run concurrently (``tests/test_etl_sql.py`` inserts while a heavy query runs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from crypto_mesh.candles import CandleRange
from crypto_mesh.metrics import latency_histogram
from etl import migrate, sql
from etl.candles import Candle, read_candles
from etl.columnar import arrow_table
from etl.records import TableSpec
from etl.tickers import TICKERS, TickerRow

T = TypeVar("T")

#: Table of mini-ticker records.
TICKERS_TABLE = TICKERS.table


class _Reader:
    """A reading client (:func:`etl.sql.analytics_client` on ``url``: current database ``crypto``) on a thread
    of its own, opened by :meth:`connect`."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._client: Client | None = None
        self._connecting = asyncio.Lock()
        self.in_flight = 0

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def connect(self) -> None:
        """Open the client if it is not open (two callers at once open one client, not two)."""
        async with self._connecting:
            if self._client is None:
                self._client = await self._run(sql.analytics_client, self._url)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(client, *args)`` on this reader's thread; RuntimeError before :meth:`connect` succeeded."""
        if self._client is None:
            raise RuntimeError("the ClickHouse reading client is not connected")
        self.in_flight += 1
        try:
            return await self._run(fn, self._client, *args)
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        """Close the client on its thread. With no query running, wait until it is closed, so that the data
        directory of an embedded chDB is released when this returns (chDB holds one engine per process, and a
        next store on another directory could not open it); a running query is left to end by its time limit,
        and the client closes after it."""
        client, self._client = self._client, None
        if client is not None:
            closing = self._executor.submit(client.close)
            if self.in_flight == 0:
                await asyncio.wrap_future(closing)
        self._executor.shutdown(wait=False)


class ClickHouseStore:
    """A ClickHouse ingest client (from ``url``: ``chdb:///dir`` or ``http://user:pass@host:8123``), and an
    analytics client and a reads client (both from ``analytics_url``, default ``url``; current database
    ``crypto``), each on its own thread. With ``cluster`` (a cluster of the servers' ``remote_servers``), the
    migrations take their cluster form and inserts into the Distributed tables are synchronous
    (``distributed_foreground_insert``): acknowledged once each shard has the rows, the deduplication token
    passed on to the replicated table.

    :meth:`connect` must succeed before the other methods; errors of clickhouse-connect
    (``clickhouse_connect.driver.exceptions.Error`` and ``OSError``) pass through to the caller, which decides
    whether to retry.
    """

    def __init__(self, url: str, analytics_url: str | None = None, cluster: str | None = None) -> None:
        self._url = url
        self._cluster = cluster
        self._insert_settings = {} if cluster is None else {"distributed_foreground_insert": 1}
        self._analytics_url = analytics_url or url
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        #: ``etl_clickhouse_insert_seconds{table}``: round trip of each acknowledged insert.
        self.insert_latency = latency_histogram(
            "etl_clickhouse_insert_seconds", "Round trip of an acknowledged ClickHouse insert (s), by table.", ("table",)
        )
        self._client: Client | None = None
        self._analytics = _Reader(self._analytics_url, "clickhouse-analytics")
        self._reads = _Reader(self._analytics_url, "clickhouse-reads")

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def analytics_connected(self) -> bool:
        return self._analytics.connected

    @property
    def analytics_busy(self) -> bool:
        """Whether an analytics query is queued or running on the analytics thread."""
        return self._analytics.in_flight > 0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))

    async def connect(self) -> None:
        """Open the client (for a server: connect and read its version). Idempotent."""
        if self._client is None:
            # tz_mode="aware": DateTime64(3, 'UTC') values come back as aware UTC datetimes, not naive ones.
            self._client = await self._run(
                lambda: clickhouse_connect.get_client(dsn=self._url, tz_mode="aware")
            )

    def _require(self) -> Client:
        if self._client is None:
            raise RuntimeError("ClickHouseStore.connect() has not succeeded")
        return self._client

    async def migrate(self) -> list[int]:
        """Apply pending migrations of ``etl/migrations`` (see :mod:`etl.migrate`); their versions."""
        client = self._require()
        return await self._run(migrate.apply_migrations, client, migrate.load_migrations(), self._cluster)

    async def insert(self, spec: TableSpec, table: pa.Table, deduplication_token: str) -> None:
        """Insert ``table`` (columns of ``spec``, see :mod:`etl.columnar`) into ``spec.table`` as one
        columnar insert carrying ``insert_deduplication_token``; nothing for no rows.

        The server drops an insert whose token it has seen among its last
        ``non_replicated_deduplication_window`` inserts (set by the migrations), so retrying the same batch
        after a lost acknowledgement does not write it twice.
        """
        await self.start_insert(spec, table, deduplication_token)

    def start_insert(
        self, spec: TableSpec, table: pa.Table, deduplication_token: str
    ) -> asyncio.Future[None]:
        """:meth:`insert`, handed to the store's thread before this returns: the future is done once
        ClickHouse has acknowledged the insert (or holds its error). Unlike a task of :meth:`insert`, which
        starts only when the event loop next gets to it, the insert runs while the caller goes on with work
        that does not yield. Call it from the event loop's thread."""
        loop = asyncio.get_running_loop()
        if not table.num_rows:
            done = loop.create_future()
            done.set_result(None)
            return done
        client = self._require()
        latency = self.insert_latency.labels(spec.table)

        def insert() -> None:
            started = time.perf_counter()
            client.insert_arrow(
                spec.table,
                table,
                settings={"insert_deduplication_token": deduplication_token, **self._insert_settings},
            )
            latency.observe(time.perf_counter() - started)

        return loop.run_in_executor(self._executor, insert)

    async def insert_tickers(self, rows: Sequence[TickerRow], deduplication_token: str) -> None:
        """:meth:`insert` of decoded rows (:func:`etl.tickers.decode_record`) into :data:`TICKERS_TABLE`."""
        await self.insert(TICKERS, arrow_table(TICKERS, rows), deduplication_token)

    async def command(self, statement: str) -> None:
        """Run one statement with no result (DDL, ``SYSTEM ...``) for operators; never reached from HTTP."""
        client = self._require()
        await self._run(client.command, statement)

    async def connect_analytics(self) -> None:
        """Open the analytics client (:func:`etl.sql.analytics_client`); after the migrations, which create
        the ``crypto`` database it uses. Idempotent."""
        await self._analytics.connect()

    async def connect_reads(self) -> None:
        """Open the reads client, as :meth:`connect_analytics`. Idempotent."""
        await self._reads.connect()

    async def query(self, query: str, limits: sql.SqlLimits) -> sql.QueryResult:
        """Check and run an analyst's query within ``limits`` on the analytics client and its thread; see
        :func:`etl.sql.run_read_only` for the errors. RuntimeError before :meth:`connect_analytics`."""
        return await self._analytics.run(sql.run_read_only, query, limits)

    async def candles(self, symbol: str, selection: CandleRange, limits: sql.SqlLimits) -> list[Candle]:
        """The candles of ``symbol`` that ``selection`` selects, oldest first, on the reads client and its
        thread (:func:`etl.candles.read_candles`). RuntimeError before :meth:`connect_reads`."""
        return await self._reads.run(read_candles, symbol, selection, limits)

    async def close(self) -> None:
        """Close every client (releases chDB's data directory) and stop their threads. Safe to call twice.

        A running analytics or reads query is left to end by its time limit; its thread is not waited for."""
        client, self._client = self._client, None
        if client is not None:
            await self._run(client.close)
        await self._analytics.close()
        await self._reads.close()
        self._executor.shutdown(wait=True)
