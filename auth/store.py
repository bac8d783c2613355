"""The auth database: users and refresh tokens in PostgreSQL, through SQLAlchemy 2 (async, asyncpg).

The schema belongs to the Alembic migrations in ``auth/migrations``; the tables below only describe it for
queries. Every method raises :class:`~auth.errors.Unavailable` when the database cannot be reached (never a
"not found"), and lets any other database error through as a bug.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from auth.errors import Unavailable

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
    sa.CheckConstraint("octet_length(token_hash) = 32", name="refresh_tokens_token_hash_sha256"),
    sa.Index("refresh_tokens_family_id_idx", "family_id"),
    sa.Index("refresh_tokens_user_id_idx", "user_id"),
    sa.Index("refresh_tokens_expires_at_idx", "expires_at"),
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


class Rotation(enum.Enum):
    """Outcome of presenting a refresh token to :meth:`AuthStore.rotate_refresh_token`."""

    ROTATED = "rotated"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    #: The token had already been rotated: its family is now revoked.
    REUSED = "reused"
    #: The token belongs to another user than the caller's: its family is now revoked.
    FOREIGN = "foreign"


@dataclass(frozen=True)
class RotationResult:
    outcome: Rotation
    #: The token's user when the outcome is ``ROTATED``.
    user: User | None = None


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

    async def start_family(self, user_id: int, token_hash: bytes, expires_at: datetime) -> uuid.UUID:
        """Store the first refresh token of a new family (a login session) and return the family id."""
        family_id = uuid.uuid4()
        async with self._transaction() as conn:
            await conn.execute(
                sa.insert(refresh_tokens).values(
                    user_id=user_id, family_id=family_id, token_hash=token_hash, expires_at=expires_at
                )
            )
        return family_id

    async def rotate_refresh_token(
        self,
        token_hash: bytes,
        new_token_hash: bytes,
        new_expires_at: datetime,
        now: datetime,
        expected_user_id: int | None = None,
    ) -> RotationResult:
        """Swap the presented token for a new one in the same family, in one transaction.

        The presented row is locked (``SELECT ... FOR UPDATE``), so of two concurrent rotations of one token
        the second waits, then sees it rotated and takes the reuse path. Outcomes: ``ROTATED`` (the new token
        is stored and the old one marked rotated at ``now``), ``UNKNOWN``, ``REVOKED``, ``EXPIRED``, and
        ``REUSED``: the token had already been rotated, so it was stolen or replayed and the whole family is
        revoked (the revocation is committed); ``FOREIGN``: ``expected_user_id`` is given and the token belongs
        to another user, so it is in the wrong hands and its family is revoked too.
        """
        async with self._transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        refresh_tokens.c.id,
                        refresh_tokens.c.user_id,
                        refresh_tokens.c.family_id,
                        refresh_tokens.c.expires_at,
                        refresh_tokens.c.rotated_at,
                        refresh_tokens.c.revoked_at,
                    )
                    .where(refresh_tokens.c.token_hash == token_hash)
                    .with_for_update()
                )
            ).one_or_none()
            if row is None:
                return RotationResult(Rotation.UNKNOWN)
            if row.revoked_at is not None:
                return RotationResult(Rotation.REVOKED)
            if expected_user_id is not None and row.user_id != expected_user_id:
                await self._revoke_family(conn, row.family_id, now)
                return RotationResult(Rotation.FOREIGN)
            if row.rotated_at is not None:
                await self._revoke_family(conn, row.family_id, now)
                return RotationResult(Rotation.REUSED)
            if row.expires_at <= now:
                return RotationResult(Rotation.EXPIRED)
            await conn.execute(
                sa.update(refresh_tokens).where(refresh_tokens.c.id == row.id).values(rotated_at=now)
            )
            await conn.execute(
                sa.insert(refresh_tokens).values(
                    user_id=row.user_id,
                    family_id=row.family_id,
                    token_hash=new_token_hash,
                    expires_at=new_expires_at,
                )
            )
            user = (await conn.execute(sa.select(*_USER_COLUMNS).where(users.c.id == row.user_id))).one()
        return RotationResult(Rotation.ROTATED, User(*user))

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
