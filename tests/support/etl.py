"""The ETL's HTTP routes, as the tests call them: ``POST /v1/sql`` (the analysts' read-only SQL, behind the
service credential) and ``GET /healthz`` (docs/CONTRACTS.md, "ETL HTTP")."""

from __future__ import annotations

import aiohttp
from support.credentials import service_headers


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
