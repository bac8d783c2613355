"""The profile WebSocket, ``GET /v2/user/profile/ws``, and its tickets, ``POST /v2/user/ws-ticket``: the checks
of the handshake (origin, credentials, ticket, the open-socket ceiling) and the session (token expiry, the
message loop). What the socket is sent is the :class:`~profile_bff.connections.ConnectionManager`'s.

Refusals before the upgrade are :class:`crypto_mesh.httperrors.ApiError` or the BFF's own errors, answered by
the application's one error layer (:mod:`profile_bff.views.errors`), like every REST view's.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from aiohttp import WSCloseCode, WSMsgType, web

from crypto_mesh import jsonutil
from crypto_mesh.httperrors import ApiError
from crypto_mesh.logs import get_logger
from profile_bff import ceilings
from profile_bff.cookies import origin_allowed, own_origins
from profile_bff.service import SERVICES, Bff
from profile_bff.sockets import CLOSE_TOKEN_EXPIRED
from profile_bff.tokens import InvalidToken
from profile_bff.views.requests import CHALLENGE, authenticate, json_response

log = get_logger(__name__)

#: Seconds between server pings on a WebSocket; a peer that misses the pong is closed.
WS_HEARTBEAT_S = 20.0
#: Clients only listen on the socket; anything they send is read and dropped, and must be small (bytes;
#: a larger frame closes the socket with 1009).
WS_MAX_INCOMING_BYTES = 4096
#: The WebSocket subprotocol that carries the access token: ``Sec-WebSocket-Protocol: bearer, <token>``;
#: the server echoes ``bearer`` (browsers cannot set Authorization on a WebSocket, but can list protocols).
WS_BEARER_PROTOCOL = "bearer"
#: The longest ticket looked up (``secrets.token_urlsafe(32)`` makes 43 characters).
TICKET_MAX_CHARS = 128


async def issue_ws_ticket(request: web.Request) -> web.Response:
    """``POST /v2/user/ws-ticket`` → ``201 {"ticket", "expires_in"}``: a single-use ticket that opens the
    profile socket as ``/v2/user/profile/ws?ticket=<ticket>`` within ``BFF_WS_TICKET_TTL_S`` seconds. The
    socket is still closed (4401) when the access token that obtained the ticket expires."""
    services = request.app[SERVICES]
    claims, _ = await authenticate(request, services.verifier)
    await services.ceilings.limit_user("ws-ticket", claims.user_id, services.settings.ws_ticket_rate_per_user)
    ticket = secrets.token_urlsafe(32)
    ttl = services.settings.ws_ticket_ttl_s
    # What _socket_identity reads back when the ticket is redeemed.
    payload = {"user_id": claims.user_id, "name": claims.name, "expires_at": claims.expires_at}
    await services.bus.issue_ticket(ticket, jsonutil.dumps(payload), ttl)
    response = json_response({"ticket": ticket, "expires_in": ttl}, status=201)
    response.headers["Cache-Control"] = "no-store"
    return response


async def profile_socket(request: web.Request) -> web.StreamResponse:
    """The handler of ``GET /v2/user/profile/ws``, the live profile.

    Authentication, any one of (docs/CONTRACTS.md, "BFF WebSocket"):

    - ``Authorization: Bearer <access>`` (wscat, scripts, services);
    - ``Sec-WebSocket-Protocol: bearer, <access>`` (browsers): the server selects and echoes ``bearer``;
    - ``?ticket=<ticket>`` from ``POST /v2/user/ws-ticket`` (browsers), valid once.

    Checked before the upgrade, as HTTP errors: 403 an ``Origin`` that is neither the BFF's own (the
    dashboard it serves at ``/``; :func:`profile_bff.cookies.own_origins`) nor in ``BFF_ALLOWED_ORIGINS``, 401
    missing, invalid or expired credentials, 400 not a WebSocket handshake, 404 no profile, 429
    ``rate_limited`` (upgrades per address, with Retry-After) or ``too_many_sockets`` (the user already holds
    ``BFF_MAX_SOCKETS_PER_USER`` open sockets on all replicas together), 503 a dependency down. After it:
    one text message with the profile JSON at once, then one after every price change of a held coin and
    every portfolio change. Text frames from the client are ignored; a binary frame
    closes the socket with 1003, a frame over 4 KiB with 1009. Closed with 4401 when the access token
    expires, 4404 if the profile is deleted, 1001 on shutdown; a peer that misses the server's ping (every
    20 s) or stops reading for ``BFF_WS_SEND_TIMEOUT_S`` is dropped.
    """
    services = request.app[SERVICES]
    origin = request.headers.get("Origin")
    settings = services.settings
    own = own_origins(request.scheme, request.host, settings.cookie_secure)
    if origin is not None and not origin_allowed(origin, own, settings.allowed_origins):
        raise ApiError(403, "forbidden_origin", "this origin may not open the profile socket")
    offered = _offered_protocols(request)
    ws = web.WebSocketResponse(
        heartbeat=WS_HEARTBEAT_S,
        max_msg_size=WS_MAX_INCOMING_BYTES,
        # No permessage-deflate: a profile is a few hundred bytes, and a deflate context would cost each
        # socket about 256 KiB and each message a compression.
        compress=False,
        protocols=(WS_BEARER_PROTOCOL,) if offered[:1] == [WS_BEARER_PROTOCOL] else (),
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "websocket_required", "this route only speaks WebSocket")
    user_id, expires_at = await _socket_identity(request, services, offered)
    services.require_store()
    slots = request.app[ceilings.CEILINGS].slots
    slot = await slots.acquire(user_id)
    if slot is None:
        raise ApiError(
            429,
            "too_many_sockets",
            f"this user has {slots.cap} profile sockets open (BFF_MAX_SOCKETS_PER_USER); close one first",
        )
    try:
        client = await services.manager.connect(
            ws,
            user_id,
            send_timeout_s=services.settings.ws_send_timeout_s,
            transport=request.transport,
        )
    except BaseException:  # ProfileNotFound (404) included
        await slots.release(user_id, slot)
        raise
    closing: list[asyncio.Task[bool]] = []  # holds the close task so it is not garbage-collected
    expiry = asyncio.get_running_loop().call_later(
        max(0.0, expires_at - time.time()),
        lambda: closing.append(
            asyncio.create_task(ws.close(code=CLOSE_TOKEN_EXPIRED, message=b"access token expired"))
        ),
    )
    try:
        await ws.prepare(request)
        client.start_writer()
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"binary frames are not accepted")
            # Text frames (pings from scripts, stray input) carry nothing the server needs: ignored.
    except Exception:
        log.exception("websocket_failed", user_id=user_id)
    finally:
        expiry.cancel()
        await services.manager.disconnect(client)
        await slots.release(user_id, slot)
    return ws


def _offered_protocols(request: web.Request) -> list[str]:
    """The ``Sec-WebSocket-Protocol`` values in order (RFC 6455 §4.1, comma-separated)."""
    return [
        value.strip()
        for header in request.headers.getall("Sec-WebSocket-Protocol", [])
        for value in header.split(",")
        if value.strip()
    ]


async def _socket_identity(request: web.Request, services: Bff, offered: list[str]) -> tuple[int, int]:
    """``(user_id, expires_at)`` (Unix seconds) of the socket's credentials: the ``Authorization`` header,
    the ``bearer`` subprotocol, or a ticket. Raises :class:`ApiError` 401 when they are missing or refused."""
    if "Authorization" in request.headers:
        claims, _ = await authenticate(request, services.verifier)
        return claims.user_id, claims.expires_at
    if offered[:1] == [WS_BEARER_PROTOCOL]:
        if len(offered) != 2:
            raise _unauthenticated("send Sec-WebSocket-Protocol: bearer, <access token>")
        return await _verified(services, offered[1])
    ticket = request.query.get("ticket")
    if ticket is not None:
        # The ticket's JSON is what POST /v2/user/ws-ticket stored: {"user_id", "name", "expires_at"}.
        stored = await services.bus.redeem_ticket(ticket) if 0 < len(ticket) <= TICKET_MAX_CHARS else None
        if stored is None:
            raise _unauthenticated("the ticket is unknown, used or expired")
        payload = jsonutil.loads(stored)
        if payload["expires_at"] <= time.time():
            raise _unauthenticated("the access token of this ticket has expired")
        return payload["user_id"], payload["expires_at"]
    raise _unauthenticated(
        "send Authorization: Bearer <token>, Sec-WebSocket-Protocol: bearer, <token>, or ?ticket="
    )


async def _verified(services: Bff, token: str) -> tuple[int, int]:
    """``(user_id, expires_at)`` of a valid access token; raises :class:`ApiError` 401 for an invalid one."""
    try:
        claims = await services.verifier.verify(token)
    except InvalidToken as exc:
        raise _unauthenticated(str(exc)) from None
    return claims.user_id, claims.expires_at


def _unauthenticated(message: str) -> ApiError:
    """A 401 refusal with the Bearer challenge (RFC 6750 §3)."""
    return ApiError(401, "unauthenticated", message, CHALLENGE)
