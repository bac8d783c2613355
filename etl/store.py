"""The one place that talks to ClickHouse (clickhouse-connect; embedded chDB or a server over HTTP).

clickhouse-connect is blocking, and chDB is an in-process engine not meant for concurrent use, so every call
runs on ONE dedicated thread: inserts of the consumer, migrations and the analysts' queries are serialised
there, and the event loop never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from etl import migrate, sql
from etl.columnar import arrow_table
from etl.records import TableSpec
from etl.tickers import TICKERS, TickerRow

T = TypeVar("T")

#: Table of mini-ticker records.
TICKERS_TABLE = TICKERS.table


class ClickHouseStore:
    """A ClickHouse client (from ``url``: ``chdb:///dir`` or ``http://user:pass@host:8123``) and its thread.

    :meth:`connect` must succeed before the other methods; errors of clickhouse-connect
    (``clickhouse_connect.driver.exceptions.Error`` and ``OSError``) pass through to the caller, which decides
    whether to retry.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Client | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

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
        return await self._run(migrate.apply_migrations, client, migrate.load_migrations())

    async def insert(self, spec: TableSpec, table: pa.Table, deduplication_token: str) -> None:
        """Insert ``table`` (columns of ``spec``, see :mod:`etl.columnar`) into ``spec.table`` as one
        columnar insert carrying ``insert_deduplication_token``; nothing for no rows.

        The server drops an insert whose token it has seen among its last
        ``non_replicated_deduplication_window`` inserts (set by the migrations), so retrying the same batch
        after a lost acknowledgement does not write it twice.
        """
        if not table.num_rows:
            return
        client = self._require()

        def insert() -> None:
            client.insert_arrow(
                spec.table,
                table,
                settings={"insert_deduplication_token": deduplication_token},
            )

        await self._run(insert)

    async def insert_tickers(self, rows: Sequence[TickerRow], deduplication_token: str) -> None:
        """:meth:`insert` of decoded rows (:func:`etl.tickers.decode_record`) into :data:`TICKERS_TABLE`."""
        await self.insert(TICKERS, arrow_table(TICKERS, rows), deduplication_token)

    async def command(self, statement: str) -> None:
        """Run one statement with no result (DDL, ``SYSTEM ...``) for operators; never reached from HTTP."""
        client = self._require()
        await self._run(client.command, statement)

    async def query(self, query: str, max_rows: int, max_execution_s: int) -> sql.QueryResult:
        """Run an analyst's query read-only with these limits; see :func:`etl.sql.run_read_only`."""
        client = self._require()
        return await self._run(sql.run_read_only, client, query, max_rows, max_execution_s)

    async def close(self) -> None:
        """Close the client (releases chDB's data directory) and stop the thread. Safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await self._run(client.close)
        self._executor.shutdown(wait=True)
