"""The alert routes: ``/v2/user/alerts`` (rules) and ``/v2/user/alerts/events`` (firings) (docs/CONTRACTS.md,
"Alerts"), over :class:`profile_bff.alerts.Alerts`.

Every route needs an access token; rule writes are charged to the user's write limit
(``BFF_WRITE_RATE_PER_USER``), and creating a rule honours ``Idempotency-Key``.
"""

from __future__ import annotations

from aiohttp import web

from crypto_mesh.httperrors import ApiError
from crypto_mesh.throttle import Rate
from profile_bff.alerts import Alerts, alert_json, rule_json
from profile_bff.ceilings import Ceilings
from profile_bff.errors import AlertNotFound
from profile_bff.idempotency import Idempotency
from profile_bff.tokens import AccessClaims, AccessTokenVerifier
from profile_bff.views.portfolios import run_idempotent
from profile_bff.views.requests import authenticate, int_param, json_response, read_json_object

EVENTS_MAX_LIMIT = 100
_MAX_ID = 2**63 - 1


class AlertViews:
    """The alert routes over ``alerts`` and ``keys``; callers prove themselves with tokens ``verifier``
    checks, and their rule writes are charged to ``ceilings`` at ``write_rate``."""

    def __init__(
        self,
        alerts: Alerts,
        keys: Idempotency,
        verifier: AccessTokenVerifier,
        ceilings: Ceilings,
        write_rate: Rate,
    ) -> None:
        self._alerts = alerts
        self._keys = keys
        self._verifier = verifier
        self._ceilings = ceilings
        self._write_rate = write_rate

    async def create(self, request: web.Request) -> web.StreamResponse:
        """``POST /v2/user/alerts`` (a rule body, profile_bff/alertrules.py) → ``201`` the rule; 409
        ``alert_limit_reached``; 422 ``invalid_alert``, ``invalid_symbol``, ``unknown_symbol``,
        ``symbol_not_trading``; 429. Honours ``Idempotency-Key``."""
        claims = await self._writer(request)

        async def create() -> web.Response:
            rule = await self._alerts.create(claims.user_id, await read_json_object(request))
            return json_response(rule_json(rule), status=201)

        return await run_idempotent(request, self._keys, claims.user_id, create)

    async def list_rules(self, request: web.Request) -> web.Response:
        """``GET /v2/user/alerts`` → ``200 {"alerts": [rule, ...]}``, oldest first."""
        claims, _ = await authenticate(request, self._verifier)
        return json_response({"alerts": [rule_json(rule) for rule in await self._alerts.rules(claims.user_id)]})

    async def update(self, request: web.Request) -> web.Response:
        """``PATCH /v2/user/alerts/{id} {"paused": true|false}`` → ``200`` the rule; 404; 422."""
        claims = await self._writer(request)
        rule_id = _rule_id(request)
        paused = (await read_json_object(request)).get("paused")
        if not isinstance(paused, bool):
            raise ApiError(422, "invalid_alert", "paused must be true or false")
        return json_response(rule_json(await self._alerts.set_paused(claims.user_id, rule_id, paused)))

    async def delete(self, request: web.Request) -> web.Response:
        """``DELETE /v2/user/alerts/{id}`` → 204; 404."""
        claims = await self._writer(request)
        await self._alerts.delete(claims.user_id, _rule_id(request))
        return web.Response(status=204)

    async def events(self, request: web.Request) -> web.Response:
        """``GET /v2/user/alerts/events?limit=&cursor=&unacked=`` → ``200 {"items": [alert, ...],
        "next_cursor"}``, newest first; ``unacked=true`` lists only those not acknowledged."""
        claims, _ = await authenticate(request, self._verifier)
        limit = int_param(request, "limit", default=50, maximum=EVENTS_MAX_LIMIT)
        cursor = int_param(request, "cursor", default=None, maximum=_MAX_ID)
        unacked = request.query.get("unacked", "false")
        if unacked not in ("true", "false"):
            raise ApiError(422, "invalid", "unacked must be true or false")
        assert limit is not None
        page, next_cursor = await self._alerts.events(
            claims.user_id, before_seq=cursor, limit=limit, unacked_only=unacked == "true"
        )
        return json_response(
            {
                "items": [alert_json(firing) for firing in page],
                "next_cursor": None if next_cursor is None else str(next_cursor),
            }
        )

    async def ack(self, request: web.Request) -> web.Response:
        """``POST /v2/user/alerts/events/{alert_id}/ack`` → 204 (again: 204); 404."""
        claims, _ = await authenticate(request, self._verifier)
        await self._alerts.ack(claims.user_id, request.match_info["alert_id"])
        return web.Response(status=204)

    async def _writer(self, request: web.Request) -> AccessClaims:
        claims, _ = await authenticate(request, self._verifier)
        await self._ceilings.limit_user("write", claims.user_id, self._write_rate)
        return claims


def _rule_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise AlertNotFound(raw[:40])
    return int(raw)
