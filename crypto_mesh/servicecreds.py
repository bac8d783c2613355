"""Service credentials of the mesh's internal HTTP APIs: a bearer token (RFC 6750) read from a secret file.

The aggregator's control API and the ETL's HTTP API are called only by other parts of the mesh (the BFF,
``crypto-mesh sql``, Prometheus). Each API has its own token; the server and its callers read the same secret
file (``*_TOKEN_FILE`` settings, made by ``crypto-mesh up`` under ``<MESH_DATA_DIR>/secrets`` and by
``crypto-mesh secrets`` for compose) through :func:`crypto_mesh.secrets.read_secret`.

A token file holds one token per line. The server accepts every line; a caller presents the first. That is
how a token is rotated without refusing a request (docs/SECURITY.md, "Service credentials"): put the new
token on the first line above the old one, restart the server, then the callers, then drop the old line.

Only ``GET /healthz`` stays open (:data:`OPEN_PATHS`): liveness probes of container runtimes and
``crypto-mesh up`` send no credential, and the answer says only whether the service is up. ``/metrics``
requires the token like every other route (Prometheus sends one with ``authorization: {credentials_file:}``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from crypto_mesh.logs import get_logger
from crypto_mesh.secrets import read_secret

if TYPE_CHECKING:
    from aiohttp import web

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = get_logger(__name__)

#: Routes served without a credential: liveness and readiness probes.
OPEN_PATHS = frozenset({"/healthz"})

#: The authentication scheme of RFC 6750, section 2.1 (compared without regard to case, RFC 9110 11.1).
SCHEME = "Bearer"


def read_tokens(path: Path | str) -> tuple[str, ...]:
    """The tokens of the token file ``path``: its non-blank lines, surrounding whitespace removed, in order.

    Raises ``OSError`` if the file cannot be read and ``ValueError`` if it holds no token; neither message
    contains a token.
    """
    tokens = tuple(line.strip() for line in read_secret(path).splitlines() if line.strip())
    if not tokens:
        raise ValueError(f"token file {path} holds no token")
    return tokens


def read_token(path: Path | str) -> str:
    """The token a caller presents: the first of :func:`read_tokens` (``OSError``, ``ValueError`` as there)."""
    return read_tokens(path)[0]


def bearer_header(token: str) -> dict[str, str]:
    """The ``Authorization`` header that presents ``token``: ``{"Authorization": "Bearer <token>"}``."""
    return {"Authorization": f"{SCHEME} {token}"}


def presented_token(request: web.Request) -> str | None:
    """The token of the request's ``Authorization: Bearer <token>`` header, or None if it has none (another
    scheme, no header, an empty token)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != SCHEME.lower() or not token:
        return None
    return token


def token_matches(presented: str, accepted: Iterable[str]) -> bool:
    """True if ``presented`` is one of ``accepted``. Every accepted token is compared, each in constant time
    (:func:`hmac.compare_digest` on UTF-8 bytes), so the time taken tells nothing of which came closest."""
    given = presented.encode()
    matched = False
    for token in accepted:
        matched |= hmac.compare_digest(given, token.encode())
    return matched


def bearer_token_middleware(
    tokens: Iterable[str], *, realm: str, open_paths: frozenset[str] = OPEN_PATHS
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """An aiohttp middleware that lets through only requests presenting one of ``tokens`` (non-empty) as
    ``Authorization: Bearer <token>``, except on ``open_paths``.

    Refusal: ``401`` with ``WWW-Authenticate: Bearer realm="<realm>"`` (plus ``error="invalid_token"`` when a
    token was presented, RFC 6750 section 3) and the body ``{"error": {"code": "unauthenticated", "message":
    ...}}``. The refusal is logged with the method and path; the presented token never is. Put it first in
    the application's middlewares so that nothing else runs for an unauthenticated request.
    """
    # aiohttp is imported by the services that serve, not by the clients of this module (crypto-mesh's
    # commands read their credential here and start faster without it).
    from aiohttp import web

    from crypto_mesh.httperrors import error_response

    accepted = tuple(tokens)
    if not accepted or not all(accepted):
        raise ValueError("a bearer-token middleware needs at least one non-empty token")

    @web.middleware
    async def require_bearer_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        token = presented_token(request)
        if token is not None and token_matches(token, accepted):
            return await handler(request)
        challenge = f'{SCHEME} realm="{realm}"'
        if token is None:
            message = "this API requires a service credential: Authorization: Bearer <token>"
        else:
            challenge += ', error="invalid_token"'
            message = "the service credential is not valid"
        log.warning(
            "service_credential_refused",
            method=request.method,
            path=request.path,
            presented=token is not None,
            peer=request.remote,
        )
        return error_response(401, "unauthenticated", message, {"WWW-Authenticate": challenge})

    return require_bearer_token
