"""The alert use cases: create, list, pause, resume and delete a user's rules; list and acknowledge the firings;
and the JSON of a rule and of a firing (docs/CONTRACTS.md, "Alerts").

Transport-free like :mod:`profile_bff.portfolios`: the views (:mod:`profile_bff.views.alerts`) call these; the
store is :class:`profile_bff.alertstore.AlertStore`. Rules are checked by :func:`profile_bff.alertrules.parse_rule`
and their symbol against the exchange's list (listed and ``TRADING``, as a coin). A rule with a
``webhook_url`` gets a signing secret, answered once, at creation (docs/SECURITY.md, "Alert webhooks").
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, Protocol

from profile_bff.alertrules import CHANGE_PERCENT, PORTFOLIO_KINDS, RuleSpec, duration_text, parse_rule
from profile_bff.alertstore import StoredFiring, StoredRule
from profile_bff.instruments import Instruments
from profile_bff.portfolio import decimal_text

#: The ``type`` of an alert message on the profile socket; profile messages have no ``type``.
ALERT_TYPE = "alert"


class AlertPort(Protocol):
    """The alert tables (:class:`profile_bff.alertstore.AlertStore`)."""

    def require_migrated(self) -> None: ...

    async def create_rule(
        self, user_id: int, spec: RuleSpec, secret: str | None, *, max_rules: int
    ) -> StoredRule: ...

    async def rules(self, user_id: int) -> list[StoredRule]: ...

    async def set_paused(self, user_id: int, rule_id: int, paused: bool) -> StoredRule: ...

    async def delete_rule(self, user_id: int, rule_id: int) -> None: ...

    async def firings(
        self, user_id: int, *, before_seq: int | None, limit: int, unacked_only: bool = False
    ) -> list[StoredFiring]: ...

    async def ack(self, user_id: int, alert_id: str) -> None: ...


class Alerts:
    """The alert use cases over ``store``; ``instruments`` is the exchange's symbol list, ``max_rules`` the
    most rules one user may have (``BFF_MAX_ALERTS_PER_USER``)."""

    def __init__(self, store: AlertPort, instruments: Instruments, *, max_rules: int) -> None:
        self._store = store
        self._instruments = instruments
        self._max_rules = max_rules

    async def create(self, user_id: int, body: dict[str, Any]) -> StoredRule:
        """Create a rule from a client's body. Raises ``InvalidAlert``, ``InvalidSymbol``, ``UnknownSymbol``,
        ``NotTrading`` before anything is stored; then ``ProfileNotFound``, ``AlertLimitReached``."""
        spec = parse_rule(body)
        if spec.symbol is not None:
            self._instruments.require_trading(spec.symbol)
        self._store.require_migrated()
        secret = secrets.token_urlsafe(32) if spec.webhook_url else None
        return await self._store.create_rule(user_id, spec, secret, max_rules=self._max_rules)

    async def rules(self, user_id: int) -> list[StoredRule]:
        """The user's rules, oldest first."""
        self._store.require_migrated()
        return await self._store.rules(user_id)

    async def set_paused(self, user_id: int, rule_id: int, paused: bool) -> StoredRule:
        """Pause (``True``) or resume a rule. Raises ``AlertNotFound``."""
        self._store.require_migrated()
        return await self._store.set_paused(user_id, rule_id, paused)

    async def delete(self, user_id: int, rule_id: int) -> None:
        """Delete a rule. Raises ``AlertNotFound``."""
        self._store.require_migrated()
        await self._store.delete_rule(user_id, rule_id)

    async def events(
        self, user_id: int, *, before_seq: int | None, limit: int, unacked_only: bool
    ) -> tuple[list[StoredFiring], int | None]:
        """A page of the user's firings, newest first, and the cursor of the next page (``None``: last)."""
        self._store.require_migrated()
        page = await self._store.firings(user_id, before_seq=before_seq, limit=limit, unacked_only=unacked_only)
        return page, page[-1].seq if len(page) == limit else None

    async def ack(self, user_id: int, alert_id: str) -> None:
        """Acknowledge a firing: it is no longer sent again when a socket connects. Raises ``AlertNotFound``."""
        self._store.require_migrated()
        await self._store.ack(user_id, alert_id)


def rule_json(rule: StoredRule) -> dict[str, Any]:
    """A rule as the routes answer it: ``{"id", "kind", ["symbol",] "price" | "percent" + "window" | "total",
    "repeat", "cooldown", "webhook_url", "paused", "created_at"}`` (+ ``"webhook_secret"`` at creation)."""
    spec = rule.spec
    body: dict[str, Any] = {"id": rule.id, "kind": spec.kind}
    threshold = decimal_text(spec.threshold)
    if spec.kind in PORTFOLIO_KINDS:
        body["total"] = threshold
    elif spec.kind == CHANGE_PERCENT:
        assert spec.window_s is not None
        body |= {"symbol": spec.symbol, "percent": threshold, "window": duration_text(spec.window_s)}
    else:
        body |= {"symbol": spec.symbol, "price": threshold}
    body |= {
        "repeat": spec.repeat,
        "cooldown": duration_text(spec.cooldown_s),
        "webhook_url": spec.webhook_url,
        "paused": rule.paused,
        "created_at": _rfc3339(rule.created_at),
    }
    if rule.webhook_secret is not None:
        body["webhook_secret"] = rule.webhook_secret
    return body


def alert_json(firing: StoredFiring) -> dict[str, Any]:
    """A firing as the socket, the events route and the webhook send it: ``{"type": "alert", "alert_id",
    "rule_id", "kind", "symbol", "price", "second", "value", "fired_at", "acked"}``: ``price`` the close of
    ``symbol``'s SecondStat at ``second`` (Unix ms) that fired it, ``value`` the close, the change in percent
    or the portfolio total, by kind."""
    return {
        "type": ALERT_TYPE,
        "alert_id": firing.alert_id,
        "rule_id": firing.rule_id,
        "kind": firing.kind,
        "symbol": firing.symbol,
        "price": decimal_text(firing.price),
        "second": firing.second,
        "value": decimal_text(firing.value),
        "fired_at": _rfc3339(firing.fired_at),
        "acked": firing.acked_at is not None,
    }


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
