"""The auth database: users, refresh tokens and failed-login budgets in PostgreSQL, through SQLAlchemy 2
(async, asyncpg).

The schema belongs to the Alembic migrations in ``auth/migrations``; the tables below only describe it for
queries. Every method raises :class:`~auth.errors.Unavailable` when the database cannot be reached (never a
"not found"), and lets any other database error through as a bug.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from auth.errors import Unavailable
from auth.sessions import Rotation, SessionPolicy, TokenState
from crypto_mesh.throttle import Charge, gcra_acquire, gcra_refund

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("name_key", sa.Text, nullable=False, unique=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("family_id", UUID(as_uuid=True), nullable=False),
    sa.Column("token_hash", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # When the family's login happened: the start of the session's absolute lifetime.
    sa.Column("family_started_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("octet_length(token_hash) = 32", name="refresh_tokens_token_hash_sha256"),
    sa.Index("refresh_tokens_family_id_idx", "family_id"),
    sa.Index("refresh_tokens_user_id_idx", "user_id"),
    sa.Index("refresh_tokens_expires_at_idx", "expires_at"),
)

login_budgets = sa.Table(
    "login_budgets",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    # GCRA theoretical arrival time, Unix ms (crypto_mesh.throttle); a row in the past is a full allowance.
    sa.Column("tat_ms", sa.BigInteger, nullable=False),
    sa.Index("login_budgets_tat_ms_idx", "tat_ms"),
)

_USER_COLUMNS = (users.c.id, users.c.name, users.c.password_hash)

#: SQLSTATE classes (PostgreSQL appendix A) meaning "the database is not usable right now": connection
#: exception, invalid authorization, insufficient resources, operator intervention (shutdown, starting up),
#: invalid catalog name (the database does not exist yet).
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "28", "53", "57", "3D"})
_UNIQUE_VIOLATION = "23505"


def is_unavailable(exc: BaseException) -> bool:
    """True if ``exc`` says the database cannot be reached or cannot serve now (as opposed to a bug)."""
    if isinstance(exc, (OSError, TimeoutError, sqlalchemy.exc.TimeoutError)):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated or isinstance(
            exc, (sqlalchemy.exc.InterfaceError, sqlalchemy.exc.OperationalError)
        ):
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    return False


class NameTaken(Exception):
    """Another user already has this name key."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    password_hash: str


@dataclass(frozen=True)
class RotationResult:
    """Outcome of :meth:`AuthStore.rotate_refresh_token` (:class:`auth.sessions.Rotation`)."""

    outcome: Rotation
    #: The token's user when the outcome is ``ROTATED``.
    user: User | None = None
    #: The new token's expiry when the outcome is ``ROTATED``.
    expires_at: datetime | None = None


def create_engine(database_url: str) -> AsyncEngine:
    """An engine with bounded waits: 5 s to connect or to get a pooled connection, 10 s per statement."""
    return create_async_engine(
        database_url,
        pool_size=10,
        max_overflow=10,
        pool_timeout=5,
        pool_pre_ping=True,
        connect_args={"timeout": 5, "command_timeout": 10},
    )


class AuthStore:
    """Users and refresh-token families. Times are timezone-aware UTC ``datetime``; token hashes 32 bytes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def close(self) -> None:
        """Close the pool's connections."""
        await self._engine.dispose()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.begin() as conn:
                yield conn
        except Exception as exc:
            if is_unavailable(exc):
                raise Unavailable("the auth database is unavailable, try again later") from exc
            raise

    async def ping(self) -> None:
        """Run ``SELECT 1``; raises :class:`~auth.errors.Unavailable` if the database does not answer."""
        async with self._transaction() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def add_user(self, name: str, name_key: str, password_hash: str) -> int:
        """Insert a user and return its id. Raises :class:`NameTaken` if ``name_key`` is in use."""
        try:
            async with self._transaction() as conn:
                return await conn.scalar(
                    sa.insert(users)
                    .values(name=name, name_key=name_key, password_hash=password_hash)
                    .returning(users.c.id)
                )
        except sqlalchemy.exc.IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) == _UNIQUE_VIOLATION:
                raise NameTaken(name_key) from exc
            raise

    async def find_user(self, name_key: str) -> User | None:
        """The user with this name key, or ``None``."""
        async with self._transaction() as conn:
            row = (
                await conn.execute(sa.select(*_USER_COLUMNS).where(users.c.name_key == name_key))
            ).one_or_none()
        return User(*row) if row else None

    async def get_user(self, user_id: int) -> User | None:
        """The user with this id, or ``None``."""
        async with self._transaction() as conn:
            row = (await conn.execute(sa.select(*_USER_COLUMNS).where(users.c.id == user_id))).one_or_none()
        return User(*row) if row else None

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        """Replace the user's password hash (a no-op if the user is gone)."""
        async with self._transaction() as conn:
            await conn.execute(
                sa.update(users).where(users.c.id == user_id).values(password_hash=password_hash)
            )

    async def delete_user(self, user_id: int) -> bool:
        """Delete the user and (by ``ON DELETE CASCADE``) its refresh tokens; False if there was none."""
        async with self._transaction() as conn:
            deleted = await conn.scalar(sa.delete(users).where(users.c.id == user_id).returning(users.c.id))
        return deleted is not None

    async def start_family(
        self, user_id: int, token_hash: bytes, expires_at: datetime, started_at: datetime
    ) -> uuid.UUID:
        """Store the first refresh token of a new family (a login session at ``started_at``) and return the
        family id."""
        family_id = uuid.uuid4()
        async with self._transaction() as conn:
            await conn.execute(
                sa.insert(refresh_tokens).values(
                    user_id=user_id,
                    family_id=family_id,
                    token_hash=token_hash,
                    expires_at=expires_at,
                    family_started_at=started_at,
                )
            )
        return family_id

    async def rotate_refresh_token(
        self,
        token_hash: bytes,
        new_token_hash: bytes,
        now: datetime,
        policy: SessionPolicy,
        expected_user_id: int | None = None,
    ) -> RotationResult:
        """Swap the presented token for a new one in the same family, in one transaction, as ``policy``
        decides (:meth:`auth.sessions.SessionPolicy.decide_rotation`).

        The presented row is locked (``SELECT ... FOR UPDATE``), so of two concurrent rotations of one token
        the second waits, then sees it rotated and takes the reuse path. ``ROTATED``: the new token is stored
        with the policy's expiry and the old one marked rotated at ``now``; ``REUSED`` and ``FOREIGN`` revoke
        the whole family (the revocation is committed); the other outcomes change nothing.
        """
        async with self._transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        refresh_tokens.c.id,
                        refresh_tokens.c.user_id,
                        refresh_tokens.c.family_id,
                        refresh_tokens.c.expires_at,
                        refresh_tokens.c.family_started_at,
                        refresh_tokens.c.rotated_at,
                        refresh_tokens.c.revoked_at,
                    )
                    .where(refresh_tokens.c.token_hash == token_hash)
                    .with_for_update()
                )
            ).one_or_none()
            token = (
                TokenState(row.user_id, row.expires_at, row.family_started_at, row.rotated_at, row.revoked_at)
                if row is not None
                else None
            )
            decision = policy.decide_rotation(token, expected_user_id, now)
            if decision.revokes_family:
                await self._revoke_family(conn, row.family_id, now)
            if decision.successor_expires_at is None:
                return RotationResult(decision.outcome)
            await conn.execute(
                sa.update(refresh_tokens).where(refresh_tokens.c.id == row.id).values(rotated_at=now)
            )
            await conn.execute(
                sa.insert(refresh_tokens).values(
                    user_id=row.user_id,
                    family_id=row.family_id,
                    token_hash=new_token_hash,
                    expires_at=decision.successor_expires_at,
                    family_started_at=row.family_started_at,
                )
            )
            user = (await conn.execute(sa.select(*_USER_COLUMNS).where(users.c.id == row.user_id))).one()
        return RotationResult(decision.outcome, User(*user), decision.successor_expires_at)

    async def revoke_family_of(
        self, token_hash: bytes, now: datetime, expected_user_id: int | None = None
    ) -> bool | None:
        """Revoke every live token of the family the given token belongs to.

        Returns True when revoked, False if the token is unknown, None (and revokes nothing) if
        ``expected_user_id`` is given and the token belongs to another user.
        """
        async with self._transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(refresh_tokens.c.family_id, refresh_tokens.c.user_id).where(
                        refresh_tokens.c.token_hash == token_hash
                    )
                )
            ).one_or_none()
            if row is None:
                return False
            if expected_user_id is not None and row.user_id != expected_user_id:
                return None
            await self._revoke_family(conn, row.family_id, now)
        return True

    async def owner_of_live_token(self, token_hash: bytes, now: datetime) -> int | None:
        """The user of a refresh token neither revoked, rotated nor expired at ``now``, or ``None``."""
        async with self._transaction() as conn:
            return await conn.scalar(
                sa.select(refresh_tokens.c.user_id).where(
                    refresh_tokens.c.token_hash == token_hash,
                    refresh_tokens.c.revoked_at.is_(None),
                    refresh_tokens.c.rotated_at.is_(None),
                    refresh_tokens.c.expires_at > now,
                )
            )

    async def revoke_all_families(self, user_id: int, now: datetime) -> int:
        """Revoke every session of the user; returns how many were live (not expired) until now."""
        async with self._transaction() as conn:
            return await self._revoke_user(conn, user_id, now)

    async def change_password(self, user_id: int, password_hash: str, now: datetime) -> int | None:
        """Store the user's new password hash and revoke every session of theirs, in one transaction.

        Returns how many sessions were live, or ``None`` (and changes nothing) if the user does not exist.
        """
        async with self._transaction() as conn:
            changed = await conn.scalar(
                sa.update(users)
                .where(users.c.id == user_id)
                .values(password_hash=password_hash)
                .returning(users.c.id)
            )
            if changed is None:
                return None
            return await self._revoke_user(conn, user_id, now)

    @staticmethod
    async def _revoke_user(conn: AsyncConnection, user_id: int, now: datetime) -> int:
        revoked = await conn.execute(
            sa.update(refresh_tokens)
            .where(refresh_tokens.c.user_id == user_id, refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
            .returning(refresh_tokens.c.family_id, refresh_tokens.c.rotated_at, refresh_tokens.c.expires_at)
        )
        # A live family has exactly one token neither rotated nor expired: its current one.
        return len({row.family_id for row in revoked if row.rotated_at is None and row.expires_at > now})

    @staticmethod
    async def _revoke_family(conn: AsyncConnection, family_id: uuid.UUID, now: datetime) -> None:
        await conn.execute(
            sa.update(refresh_tokens)
            .where(refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def delete_expired_refresh_tokens(self, before: datetime) -> int:
        """Delete refresh tokens that expired before ``before``; returns how many. Keeps the table bounded."""
        async with self._transaction() as conn:
            result = await conn.execute(sa.delete(refresh_tokens).where(refresh_tokens.c.expires_at < before))
        return result.rowcount


#: The database's clock, Unix ms: every auth replica charges budgets on the same clock.
_NOW_MS = sa.text("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")


class LoginBudgetStore:
    """Failed-login budgets (:mod:`auth.throttle`) in table ``login_budgets``, one row per budget.

    Each call is one transaction that locks the budgets' rows in key order (inserting missing ones, in the
    same statement), so concurrent attempts of every replica are charged one after the other and never
    deadlock; the clock is PostgreSQL's. Raises :class:`~auth.errors.Unavailable` when the database cannot
    be reached.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def _locked(self, charges: Sequence[Charge]):
        keys = sorted({charge.key for charge in charges})
        try:
            async with self._engine.begin() as conn:
                # One statement inserts each missing row and locks each existing one (in key order), so a row
                # cannot be pruned (delete_full) between being found and being locked.
                rows = await conn.execute(
                    pg_insert(login_budgets)
                    .values([{"key": key, "tat_ms": 0} for key in keys])
                    .on_conflict_do_update(
                        index_elements=[login_budgets.c.key], set_={"tat_ms": login_budgets.c.tat_ms}
                    )
                    .returning(login_budgets.c.key, login_budgets.c.tat_ms)
                )
                tats = {row.key: row.tat_ms for row in rows}
                yield conn, tats, await conn.scalar(_NOW_MS)
        except Exception as exc:
            if is_unavailable(exc):
                raise Unavailable("the auth database is unavailable, try again later") from exc
            raise

    async def acquire(self, charges: Sequence[Charge]) -> float:
        """Charge one attempt to every budget, or to none (GCRA); 0 when allowed, else the seconds to wait."""
        if not charges:
            return 0.0
        async with self._locked(charges) as (conn, tats, now_ms):
            wait_ms, new_tats = gcra_acquire(
                [tats[c.key] for c in charges], [c.rate for c in charges], now_ms
            )
            if wait_ms == 0:
                await conn.execute(
                    sa.update(login_budgets).where(login_budgets.c.key == sa.bindparam("k")),
                    [{"k": c.key, "tat_ms": tat} for c, tat in zip(charges, new_tats, strict=True)],
                )
        return wait_ms / 1000

    async def refund(self, charges: Sequence[Charge]) -> None:
        """Give one attempt back to every budget."""
        if not charges:
            return
        async with self._locked(charges) as (conn, tats, now_ms):
            for charge in charges:
                tat = gcra_refund(tats[charge.key], charge.rate, now_ms)
                await conn.execute(
                    sa.update(login_budgets).where(login_budgets.c.key == charge.key).values(tat_ms=tat or 0)
                )

    async def delete_full(self) -> int:
        """Delete the budgets back to a full allowance (their TAT is past) that no attempt holds at the
        moment; returns how many."""
        try:
            async with self._engine.begin() as conn:
                now_ms = await conn.scalar(_NOW_MS)
                # Rows an attempt holds now are left for the next pruning (SKIP LOCKED): the pruning never
                # waits for an attempt, so it cannot deadlock with one that locks its rows in key order.
                full = (
                    sa.select(login_budgets.c.key)
                    .where(login_budgets.c.tat_ms <= now_ms)
                    .with_for_update(skip_locked=True)
                )
                result = await conn.execute(
                    sa.delete(login_budgets).where(
                        login_budgets.c.key.in_(full), login_budgets.c.tat_ms <= now_ms
                    )
                )
        except Exception as exc:
            if is_unavailable(exc):
                raise Unavailable("the auth database is unavailable, try again later") from exc
            raise
        return result.rowcount
