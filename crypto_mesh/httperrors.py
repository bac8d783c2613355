"""The mesh's HTTP error answer, ``{"error": {"code": ..., "message": ...}}`` (docs/CONTRACTS.md): one shape for
the BFF, the aggregator's control API and the ETL's HTTP API."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from crypto_mesh import jsonutil


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON error answer: ``status``, body ``{"error": {"code": code, "message": message}}`` (``code`` a
    snake_case word a client can switch on, ``message`` one sentence for a person), and ``headers`` (e.g.
    ``Retry-After``, ``WWW-Authenticate``)."""
    return web.json_response(
        {"error": {"code": code, "message": message}},
        status=status,
        headers=headers,
        dumps=jsonutil.dumps_str,
    )
