"""Alert rules, their evaluation state and their firings in the profile database (PostgreSQL), on the profile
store's pool (:meth:`profile_bff.store.ProfileStore.connection`). Schema: migration 0003.

- ``alert_rules(id identity, user_id → profiles ON DELETE CASCADE, kind, symbol, threshold, window_s, repeat,
  cooldown_s, webhook_url, webhook_secret, paused, created_at, updated_at)``; every change also writes a
  ``coin_history`` row (``alert_create``, ``alert_pause``, ``alert_resume``, ``alert_delete``) in its
  transaction.
- ``alert_states(rule_id, second, side, fired_second, done)``: :class:`profile_bff.crossing.RuleState` of each
  rule the evaluator has seen.
- ``alert_firings(alert_id uuid PRIMARY KEY, seq identity, rule_id, user_id, kind, symbol, price, value,
  second, fired_at, acked_at, published, webhook_url, webhook_state, webhook_attempts, webhook_next_at)``: each
  firing once (the id is (rule, second): :func:`profile_bff.crossing.firing_id`); ``published`` once it went out
  on Redis for the sockets; ``webhook_state`` ``none`` | ``pending`` | ``delivered`` | ``failed``.
- ``alert_prices(symbol, second, close)``: the latest close the evaluator applied; ``alert_closes(symbol,
  second, close)``: the closes of symbols watched by ``change_percent`` rules, for "the close a window ago".

The evaluator's batch (:meth:`AlertStore.commit_batch`) writes the states, the closes and the firings in ONE
transaction: a batch is either wholly stored or not at all, and its Kafka offsets are committed only after it
is (profile_bff/evaluator.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from profile_bff.alertrules import RuleSpec
from profile_bff.crossing import Firing, Rule, RuleState
from profile_bff.errors import AlertLimitReached, AlertNotFound, ProfileNotFound
from profile_bff.portfolio import CONTEXT
from profile_bff.store import ProfileStore, coin_history, coins, profiles

metadata = sa.MetaData()
alert_rules = sa.Table(
    "alert_rules",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("symbol", sa.String(20)),
    sa.Column("threshold", sa.Numeric(38, 18, asdecimal=True), nullable=False),
    sa.Column("window_s", sa.Integer),
    sa.Column("repeat", sa.Text, nullable=False),
    sa.Column("cooldown_s", sa.Integer, nullable=False),
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_secret", sa.Text),
    sa.Column("paused", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
alert_states = sa.Table(
    "alert_states",
    metadata,
    sa.Column("rule_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("second", sa.BigInteger),
    sa.Column("side", sa.Boolean),
    sa.Column("fired_second", sa.BigInteger),
    sa.Column("done", sa.Boolean, nullable=False),
)
alert_firings = sa.Table(
    "alert_firings",
    metadata,
    sa.Column("alert_id", sa.Uuid, primary_key=True),
    sa.Column("seq", sa.BigInteger, sa.Identity(always=True)),
    sa.Column("rule_id", sa.BigInteger, nullable=False),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("symbol", sa.String(20), nullable=False),
    sa.Column("price", sa.Numeric(38, 18, asdecimal=True), nullable=False),
    sa.Column("value", sa.Numeric(60, 18, asdecimal=True), nullable=False),
    sa.Column("second", sa.BigInteger, nullable=False),
    sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("acked_at", sa.DateTime(timezone=True)),
    sa.Column("published", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_state", sa.Text, nullable=False),
    sa.Column("webhook_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("webhook_next_at", sa.DateTime(timezone=True)),
)
alert_prices = sa.Table(
    "alert_prices",
    metadata,
    sa.Column("symbol", sa.String(20), primary_key=True),
    sa.Column("second", sa.BigInteger, nullable=False),
    sa.Column("close", sa.Numeric(38, 18, asdecimal=True), nullable=False),
)
alert_closes = sa.Table(
    "alert_closes",
    metadata,
    sa.Column("symbol", sa.String(20), primary_key=True),
    sa.Column("second", sa.BigInteger, primary_key=True),
    sa.Column("close", sa.Numeric(38, 18, asdecimal=True), nullable=False),
)


@dataclass(frozen=True, slots=True)
class StoredRule:
    """A rule as stored: ``id``, ``spec``, ``paused``, ``created_at``; ``webhook_secret`` only in the answer
    to its creation (the one time a client sees it)."""

    id: int
    spec: RuleSpec
    paused: bool
    created_at: datetime
    webhook_secret: str | None = None


@dataclass(frozen=True, slots=True)
class StoredFiring(Firing):
    """A stored firing: ``seq`` orders them (newest highest, the events' cursor), ``fired_at`` is when it was
    stored, ``acked_at`` None until the user acknowledged it, ``webhook_attempts`` the webhook calls made."""

    seq: int
    fired_at: datetime
    acked_at: datetime | None
    webhook_attempts: int = 0


def _spec(row: sa.Row) -> RuleSpec:
    return RuleSpec(
        kind=row.kind,
        symbol=row.symbol,
        threshold=CONTEXT.normalize(row.threshold),
        window_s=row.window_s,
        repeat=row.repeat,
        cooldown_s=row.cooldown_s,
        webhook_url=row.webhook_url,
    )


def _firing(row: sa.Row) -> StoredFiring:
    return StoredFiring(
        seq=row.seq,
        alert_id=str(row.alert_id),
        rule_id=row.rule_id,
        user_id=row.user_id,
        kind=row.kind,
        symbol=row.symbol,
        price=row.price,
        value=row.value,
        second=row.second,
        fired_at=row.fired_at,
        acked_at=row.acked_at,
        webhook_url=row.webhook_url,
        webhook_attempts=row.webhook_attempts,
    )


class AlertStore:
    """The alert tables over ``store``'s pool. Every method raises
    :class:`~profile_bff.errors.StoreUnavailable` when the database cannot be reached; others are named."""

    def __init__(self, store: ProfileStore) -> None:
        self._store = store

    def require_migrated(self) -> None:
        """:meth:`ProfileStore.require_migrated <profile_bff.store.ProfileStore.require_migrated>`."""
        self._store.require_migrated()

    # -- rules (the REST routes) -------------------------------------------------------------------------

    async def create_rule(self, user_id: int, spec: RuleSpec, secret: str | None, *, max_rules: int) -> StoredRule:
        """Store a rule of ``user_id`` while it has fewer than ``max_rules``. Raises
        :class:`~profile_bff.errors.ProfileNotFound`, :class:`~profile_bff.errors.AlertLimitReached`."""
        async with self._store.connection() as conn:
            # As adding a coin: the profile row's lock orders one user's creations, so two cannot both pass
            # the cap.
            found = await conn.scalar(
                sa.select(profiles.c.id).where(profiles.c.id == user_id).with_for_update(key_share=True)
            )
            if found is None:
                raise ProfileNotFound(user_id)
            held = await conn.scalar(sa.select(sa.func.count()).where(alert_rules.c.user_id == user_id))
            if held >= max_rules:
                raise AlertLimitReached(max_rules)
            row = (
                await conn.execute(
                    sa.insert(alert_rules)
                    .values(
                        user_id=user_id,
                        kind=spec.kind,
                        symbol=spec.symbol,
                        threshold=spec.threshold,
                        window_s=spec.window_s,
                        repeat=spec.repeat,
                        cooldown_s=spec.cooldown_s,
                        webhook_url=spec.webhook_url,
                        webhook_secret=secret,
                        paused=False,
                    )
                    .returning(alert_rules.c.id, alert_rules.c.created_at)
                )
            ).one()
            await _record(conn, user_id, row.id, spec.symbol, "alert_create")
        return StoredRule(row.id, spec, False, row.created_at, secret)

    async def rules(self, user_id: int) -> list[StoredRule]:
        """The user's rules, oldest first."""
        statement = sa.select(alert_rules).where(alert_rules.c.user_id == user_id).order_by(alert_rules.c.id)
        async with self._store.connection(read_only=True) as conn:
            rows = (await conn.execute(statement)).all()
        return [StoredRule(row.id, _spec(row), row.paused, row.created_at) for row in rows]

    async def set_paused(self, user_id: int, rule_id: int, paused: bool) -> StoredRule:
        """Pause or resume the user's rule ``rule_id`` (a history row only if it changes). Raises
        :class:`~profile_bff.errors.AlertNotFound`."""
        async with self._store.connection() as conn:
            row = (
                await conn.execute(
                    sa.select(alert_rules)
                    .where(alert_rules.c.id == rule_id, alert_rules.c.user_id == user_id)
                    .with_for_update()
                )
            ).one_or_none()
            if row is None:
                raise AlertNotFound(rule_id)
            if row.paused != paused:
                await conn.execute(
                    sa.update(alert_rules)
                    .where(alert_rules.c.id == rule_id)
                    .values(paused=paused, updated_at=sa.func.now())
                )
                await _record(conn, user_id, rule_id, row.symbol, "alert_pause" if paused else "alert_resume")
        return StoredRule(row.id, _spec(row), paused, row.created_at)

    async def delete_rule(self, user_id: int, rule_id: int) -> None:
        """Delete the user's rule and its state (its firings stay). Raises
        :class:`~profile_bff.errors.AlertNotFound`."""
        async with self._store.connection() as conn:
            symbol = (
                await conn.execute(
                    sa.delete(alert_rules)
                    .where(alert_rules.c.id == rule_id, alert_rules.c.user_id == user_id)
                    .returning(alert_rules.c.symbol)
                )
            ).one_or_none()
            if symbol is None:
                raise AlertNotFound(rule_id)
            await conn.execute(sa.delete(alert_states).where(alert_states.c.rule_id == rule_id))
            await _record(conn, user_id, rule_id, symbol.symbol, "alert_delete")

    # -- firings (the REST routes and the sockets) -------------------------------------------------------

    async def firings(
        self, user_id: int, *, before_seq: int | None, limit: int, unacked_only: bool = False
    ) -> list[StoredFiring]:
        """Up to ``limit`` firings of the user, newest first, with ``seq`` below ``before_seq``."""
        statement = sa.select(alert_firings).where(alert_firings.c.user_id == user_id)
        if before_seq is not None:
            statement = statement.where(alert_firings.c.seq < before_seq)
        if unacked_only:
            statement = statement.where(alert_firings.c.acked_at.is_(None))
        statement = statement.order_by(alert_firings.c.seq.desc()).limit(limit)
        async with self._store.connection(read_only=True) as conn:
            return [_firing(row) for row in (await conn.execute(statement)).all()]

    async def ack(self, user_id: int, alert_id: str) -> None:
        """Acknowledge the user's firing (again: no change). Raises :class:`~profile_bff.errors.AlertNotFound`."""
        try:
            key = uuid.UUID(alert_id)
        except ValueError:
            raise AlertNotFound(alert_id) from None
        async with self._store.connection() as conn:
            found = await conn.scalar(
                sa.update(alert_firings)
                .where(alert_firings.c.alert_id == key, alert_firings.c.user_id == user_id)
                .values(acked_at=sa.func.coalesce(alert_firings.c.acked_at, sa.func.now()))
                .returning(alert_firings.c.seq)
            )
        if found is None:
            raise AlertNotFound(alert_id)

    # -- the evaluator -----------------------------------------------------------------------------------

    async def version(self) -> tuple[int, int]:
        """A value that changes with every rule and coin change: (newest history id, number of rules)."""
        async with self._store.connection(read_only=True) as conn:
            row = (
                await conn.execute(
                    sa.select(
                        sa.select(sa.func.coalesce(sa.func.max(coin_history.c.id), 0)).scalar_subquery(),
                        sa.select(sa.func.count()).select_from(alert_rules).scalar_subquery(),
                    )
                )
            ).one()
        return int(row[0]), int(row[1])

    async def active_rules(self) -> tuple[list[Rule], dict[int, dict[str, Decimal]]]:
        """Every rule not paused, and the portfolios (user → symbol → quantity) of users with portfolio rules."""
        async with self._store.connection(read_only=True) as conn:
            rows = (await conn.execute(sa.select(alert_rules).where(~alert_rules.c.paused))).all()
            rules = [
                Rule(row.id, row.user_id, _spec(row), int(row.created_at.timestamp() * 1000)) for row in rows
            ]
            owners = sorted({rule.user_id for rule in rules if rule.spec.symbol is None})
            holdings: dict[int, dict[str, Decimal]] = {owner: {} for owner in owners}
            if owners:
                held = await conn.execute(
                    sa.select(coins.c.user_id, coins.c.symbol, coins.c.quantity).where(_among(coins.c.user_id, owners))
                )
                for user_id, symbol, quantity in held:
                    holdings[user_id][symbol] = quantity
        return rules, holdings

    async def states(self, rule_ids: Iterable[int]) -> dict[int, RuleState]:
        """The stored states of these rules."""
        wanted = list(rule_ids)
        if not wanted:
            return {}
        async with self._store.connection(read_only=True) as conn:
            rows = await conn.execute(sa.select(alert_states).where(_among(alert_states.c.rule_id, wanted)))
            return {
                row.rule_id: RuleState(row.second, row.side, row.fired_second, row.done) for row in rows
            }

    async def prices(self) -> dict[str, tuple[int, Decimal]]:
        """The latest close of every symbol the evaluator has applied: symbol → (second, close)."""
        async with self._store.connection(read_only=True) as conn:
            rows = await conn.execute(sa.select(alert_prices))
            return {row.symbol: (row.second, row.close) for row in rows}

    async def closes(self, symbol: str, since_ms: int) -> list[tuple[int, Decimal]]:
        """The stored closes of ``symbol`` from the latest one at or before ``since_ms`` on, oldest first."""
        async with self._store.connection(read_only=True) as conn:
            start = await conn.scalar(
                sa.select(sa.func.max(alert_closes.c.second)).where(
                    alert_closes.c.symbol == symbol, alert_closes.c.second <= since_ms
                )
            )
            rows = await conn.execute(
                sa.select(alert_closes.c.second, alert_closes.c.close)
                .where(alert_closes.c.symbol == symbol, alert_closes.c.second >= (start if start is not None else since_ms))
                .order_by(alert_closes.c.second)
            )
            return [(row.second, row.close) for row in rows]

    async def commit_batch(
        self,
        states: dict[int, RuleState],
        firings: list[Firing],
        prices: dict[str, tuple[int, Decimal]],
        closes: list[tuple[str, int, Decimal]],
        prune_closes: dict[str, int],
    ) -> list[Firing]:
        """Store one evaluated batch in one transaction: the rules' ``states`` (each unless a later second is
        stored), the ``firings`` (each at most once: one already stored is left as it is), the latest ``prices``
        (newer only), the ``closes`` of watched symbols (pruned below ``prune_closes[symbol]``). Returns the
        firings stored now, i.e. not stored by an earlier delivery of the same records."""
        async with self._store.connection() as conn:
            if states:
                statement = pg_insert(alert_states)
                await conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[alert_states.c.rule_id],
                        set_={
                            "second": statement.excluded.second,
                            "side": statement.excluded.side,
                            "fired_second": statement.excluded.fired_second,
                            "done": statement.excluded.done,
                        },
                        # Never back in time: a replica that lost the partition while storing (a stalled
                        # one) must not overwrite what its successor stored since.
                        where=sa.or_(alert_states.c.second.is_(None), alert_states.c.second <= statement.excluded.second),
                    ),
                    [
                        {
                            "rule_id": rule_id,
                            "second": state.second,
                            "side": state.side,
                            "fired_second": state.fired_second,
                            "done": state.done,
                        }
                        for rule_id, state in sorted(states.items())
                    ],
                )
            if prices:
                statement = pg_insert(alert_prices)
                await conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[alert_prices.c.symbol],
                        set_={"second": statement.excluded.second, "close": statement.excluded.close},
                        where=alert_prices.c.second <= statement.excluded.second,
                    ),
                    [{"symbol": s, "second": t, "close": c} for s, (t, c) in sorted(prices.items())],
                )
            if closes:
                await conn.execute(
                    pg_insert(alert_closes).on_conflict_do_nothing(),
                    [{"symbol": s, "second": t, "close": c} for s, t, c in closes],
                )
            if prune_closes:
                await conn.execute(
                    sa.delete(alert_closes).where(
                        alert_closes.c.symbol == sa.bindparam("prune_symbol"),
                        alert_closes.c.second < sa.bindparam("prune_before"),
                    ),
                    [{"prune_symbol": s, "prune_before": t} for s, t in sorted(prune_closes.items())],
                )
            if not firings:
                return []
            # One statement for the batch's firings; those already stored (a redelivery) are not returned.
            # ``webhook_next_at``: the transaction's now() for a firing with a webhook, else NULL.
            due_now = sa.case((sa.bindparam("has_webhook", type_=sa.Boolean), sa.func.now()))
            statement = (
                pg_insert(alert_firings)
                .values(webhook_next_at=due_now)
                .on_conflict_do_nothing()
                .returning(alert_firings.c.alert_id)
            )
            inserted = await conn.execute(
                statement,
                [
                    {
                        "alert_id": uuid.UUID(firing.alert_id),
                        "rule_id": firing.rule_id,
                        "user_id": firing.user_id,
                        "kind": firing.kind,
                        "symbol": firing.symbol,
                        "price": firing.price,
                        "value": firing.value,
                        "second": firing.second,
                        "webhook_url": firing.webhook_url,
                        "webhook_state": "pending" if firing.webhook_url else "none",
                        "has_webhook": bool(firing.webhook_url),
                    }
                    for firing in firings
                ],
            )
            new_ids = {str(alert_id) for alert_id in inserted.scalars()}
            return [firing for firing in firings if firing.alert_id in new_ids]

    async def unpublished(self, limit: int) -> list[StoredFiring]:
        """Firings not yet published to the sockets, oldest first."""
        async with self._store.connection(read_only=True) as conn:
            rows = await conn.execute(
                sa.select(alert_firings).where(~alert_firings.c.published).order_by(alert_firings.c.seq).limit(limit)
            )
            return [_firing(row) for row in rows]

    async def mark_published(self, alert_ids: Iterable[str]) -> None:
        """Mark firings published."""
        keys = [uuid.UUID(alert_id) for alert_id in alert_ids]
        if not keys:
            return
        async with self._store.connection() as conn:
            await conn.execute(
                sa.update(alert_firings).where(alert_firings.c.alert_id.in_(keys)).values(published=True)
            )

    async def claim_webhooks(self, limit: int, lease_s: int = 60) -> list[tuple[StoredFiring, str | None]]:
        """Claim up to ``limit`` firings whose webhook call is due (pending, next attempt time passed): their
        next attempt moves ``lease_s`` on, so no other replica takes them meanwhile (rows locked by another
        claim are skipped). Each with its rule's signing secret (``None``: the rule was deleted)."""
        due = (
            sa.select(alert_firings.c.alert_id)
            .where(alert_firings.c.webhook_state == "pending", alert_firings.c.webhook_next_at <= sa.func.now())
            .order_by(alert_firings.c.webhook_next_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with self._store.connection() as conn:
            rows = (
                await conn.execute(
                    sa.update(alert_firings)
                    .where(alert_firings.c.alert_id.in_(due.scalar_subquery()))
                    .values(webhook_next_at=sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, lease_s))
                    .returning(*alert_firings.c)
                )
            ).all()
            firings = [_firing(row) for row in rows]
            rule_ids = sorted({firing.rule_id for firing in firings})
            secrets = {}
            if rule_ids:
                secrets = dict(
                    (
                        await conn.execute(
                            sa.select(alert_rules.c.id, alert_rules.c.webhook_secret).where(alert_rules.c.id.in_(rule_ids))
                        )
                    ).all()
                )
        return [(firing, secrets.get(firing.rule_id)) for firing in firings]

    async def webhook_outcome(self, alert_id: str, state: str, next_in_s: float | None = None) -> None:
        """Record a webhook attempt: ``state`` ``delivered``, ``failed`` (given up) or ``pending`` (next attempt
        in ``next_in_s`` seconds)."""
        values: dict[str, object] = {
            "webhook_state": state,
            "webhook_attempts": alert_firings.c.webhook_attempts + 1,
        }
        if next_in_s is not None:
            values["webhook_next_at"] = sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, next_in_s)
        async with self._store.connection() as conn:
            await conn.execute(
                sa.update(alert_firings).where(alert_firings.c.alert_id == uuid.UUID(alert_id)).values(**values)
            )


def _among(column: sa.Column, ids: list[int]) -> sa.ColumnElement[bool]:
    """``column = ANY(:ids)``: one array parameter however many ids (``IN`` takes one parameter per id, and
    a statement at most 32,767: 10,000 users with 5 rules each passed that)."""
    return column == sa.any_(sa.bindparam(None, ids, type_=ARRAY(sa.BigInteger)))


async def _record(conn: AsyncConnection, user_id: int, rule_id: int, symbol: str | None, operation: str) -> None:
    await conn.execute(
        sa.insert(coin_history).values(user_id=user_id, symbol=symbol, operation=operation, alert_id=rule_id)
    )
