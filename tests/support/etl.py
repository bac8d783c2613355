"""The ETL's HTTP routes, as the tests call them: ``POST /v1/sql`` (the analysts' read-only SQL) and the typed
read API (``GET /v1/candles``, ``GET /v1/indicators``), behind the service credential, and ``GET /healthz``
(docs/CONTRACTS.md, "ETL HTTP"); and loading SecondStats into its ClickHouse as the consumer does."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import aiohttp
from support.credentials import service_headers
from support.market import recorded_secondstats

from aggregator.second_topic import second_record
from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil
from etl.columnar import arrow_table
from etl.seconds import SECONDS
from etl.store import ClickHouseStore


def mini_ticker_message(
    symbol: str, event_time_ms: int, close: Decimal, open_: Decimal, high: Decimal, low: Decimal
) -> dict:
    """The mini-ticker KafkaMsg the aggregator writes on ``binance.miniticker`` (docs/CONTRACTS.md) for
    ``symbol``'s second ``event_time_ms`` (Unix ms): its ``message_id`` deterministic as socket_proxy makes it,
    received 12 ms after the event, the change and change percent (8 places) of ``close`` against ``open_``."""
    return {
        "message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"binance.miniticker/{symbol}/{event_time_ms}")),
        "e": "24hrMiniTicker",
        "E": event_time_ms,
        "receive_time": event_time_ms + 12,
        "s": symbol,
        "c": str(close),
        "o": str(open_),
        "h": str(high),
        "l": str(low),
        "change_price": str(close - open_),
        "change_percent": str(((close - open_) / open_ * 100).quantize(Decimal("1E-8"))),
    }


async def sql(port: int, query: str) -> dict:
    """Run ``query`` at the ETL on ``127.0.0.1:port``: the answer ``{"columns", "types", "rows"}``; fails the
    test unless it is ``200``."""
    url = f"http://127.0.0.1:{port}/v1/sql"
    async with (
        aiohttp.ClientSession(headers=service_headers()) as session,
        session.post(url, json={"query": query}) as response,
    ):
        body = await response.json()
        assert response.status == 200, body
        return body


async def sql_rows(port: int, query: str) -> list[list]:
    """The rows of :func:`sql`."""
    return (await sql(port, query))["rows"]


async def health(port: int) -> tuple[int, dict]:
    """``GET /healthz`` of the ETL on ``127.0.0.1:port``: status and report."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status, await response.json()


async def read(port: int, path: str, headers: dict[str, str] | None = None, **params) -> tuple[int, dict]:
    """``GET path?params`` at the ETL on ``127.0.0.1:port`` with the service credential (or ``headers``):
    status and JSON body."""
    async with (
        aiohttp.ClientSession(headers=service_headers() if headers is None else headers) as session,
        session.get(f"http://127.0.0.1:{port}{path}", params=params) as response,
    ):
        return response.status, await response.json()


async def insert_seconds(store: ClickHouseStore, stats: Sequence[SecondStat], token: str) -> None:
    """Insert ``stats`` into ``crypto.price_seconds`` as the consumer inserts a batch of ``binance.second``
    records (the same decoding, one columnar insert carrying ``token`` as its deduplication token)."""
    rows = [SECONDS.decode(jsonutil.dumps(second_record(stat))) for stat in stats]
    await store.insert(SECONDS, arrow_table(SECONDS, rows), token)


async def load_recordings(store: ClickHouseStore, *recordings: Path) -> None:
    """Insert the SecondStats of each recording (:func:`support.market.recorded_secondstats`), and the first
    half of them once more in another batch: a redelivery the insert token cannot recognise, which no
    candle may count twice."""
    for recording in recordings:
        stats = recorded_secondstats(recording)
        await insert_seconds(store, stats, f"test:{recording.name}")
        await insert_seconds(store, stats[: len(stats) // 2], f"test:{recording.name}:again")
