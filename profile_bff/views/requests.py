"""What every REST view does with a request: read its JSON body and query parameters, prove its caller, answer
JSON.

Request bodies are parsed with the standard library's ``json`` with ``parse_float=Decimal``: a quantity may be
a decimal string (``"1.5"``, as every decimal in the contracts) or a JSON number (``1.5``), and either way it
is read exactly, never through float. Answers are written with :mod:`crypto_mesh.jsonutil`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NoReturn

from aiohttp import web

from crypto_mesh import jsonutil
from crypto_mesh.httperrors import ApiError
from profile_bff.tokens import AccessClaims, AccessTokenVerifier, InvalidToken

#: The challenge of a 401 (RFC 6750 §3).
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="crypto-mesh"'}


def json_response(data: Any, status: int = 200) -> web.Response:
    """``data`` as a JSON answer (:func:`crypto_mesh.jsonutil.dumps_str`: decimals as strings)."""
    return web.json_response(data, status=status, dumps=jsonutil.dumps_str)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, numbers with a fraction or exponent as exact ``Decimal``.

    415 if it is not ``application/json``, 413 over the app's ``client_max_size`` (raised by aiohttp), 400 if
    not a JSON object.
    """
    if request.content_type != "application/json":
        raise ApiError(
            415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)"
        )
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8"), parse_float=Decimal, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    return body


def required(body: Mapping[str, Any], field: str) -> Any:
    """``body[field]``; 400 ``missing_field`` if it is absent or null."""
    if field not in body or body[field] is None:
        raise ApiError(400, "missing_field", f"{field} is required")
    return body[field]


def string_field(body: Mapping[str, Any], field: str) -> str:
    """``body[field]`` as Unicode text; 400 if absent, 422 if not a string or not text."""
    value = required(body, field)
    if not isinstance(value, str):
        raise ApiError(422, "invalid", f"{field} must be a string")
    if not value.isascii() and any("\ud800" <= char <= "\udfff" for char in value):
        # JSON may escape a lone surrogate ("\ud800"), which is no Unicode text and cannot travel as UTF-8.
        raise ApiError(422, "invalid", f"{field} must be Unicode text (it holds a lone surrogate)")
    return value


def int_param(request: web.Request, name: str, *, default: int | None, maximum: int) -> int | None:
    """Query parameter ``name`` as an integer in 1..``maximum`` (``default`` when absent); 422 otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not 1 <= int(raw) <= maximum:
        raise ApiError(422, "invalid", f"{name} must be an integer from 1 to {maximum}")
    return int(raw)


async def authenticate(
    request: web.Request, verifier: AccessTokenVerifier, *, allow_expired: bool = False
) -> tuple[AccessClaims, str]:
    """The verified claims and the raw access token of ``Authorization: Bearer <token>`` (RFC 6750); 401 with
    a challenge when it is missing or does not verify (503 ``KeysUnavailable`` while auth's keys cannot be
    fetched).

    ``allow_expired``: a token past its expiry still identifies its user (for refresh and logout).
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthenticated", "send Authorization: Bearer <access token>", CHALLENGE)
    try:
        claims = await verifier.verify(token, allow_expired=allow_expired)
    except InvalidToken as exc:
        raise ApiError(401, "unauthenticated", str(exc), CHALLENGE) from None
    return claims, token
