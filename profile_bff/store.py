"""The BFF's storage: the profile database (PostgreSQL) and the market bus (Redis).

Profile database, schema in ``profile_bff/migrations`` (Alembic, version table ``alembic_version_profile``):

- ``profiles(id BIGINT PRIMARY KEY = auth user id, name, created_at)``
- ``coins(user_id → profiles ON DELETE CASCADE, symbol, quantity NUMERIC(38, 18) > 0, created_at,
  updated_at, PRIMARY KEY (user_id, symbol))``: a user holds a symbol at most once.
- ``coin_history(id identity, user_id → profiles ON DELETE CASCADE, symbol, operation add|update|remove|
  alert_create|alert_pause|alert_resume|alert_delete, old_quantity, new_quantity, at, alert_id)``: one row per
  change of the portfolio or of its alert rules, written in the change's own transaction.
- the alert tables (``alert_rules``, ``alert_states``, ``alert_firings``, ``alert_prices``, ``alert_closes``):
  :mod:`profile_bff.alertstore`.
- ``idempotency_keys(user_id, key, request_hash, status, body, created_at, expires_at)``: the first answer
  to a request sent with an ``Idempotency-Key`` (``status`` NULL while it is being processed).

Redis (docs/CONTRACTS.md, "Redis"): key ``price:<symbol>`` holds the latest SecondStat JSON, list
``seconds:<symbol>{price:<symbol>}`` the latest ones, oldest first; channel ``<symbol>`` carries each new one; hash
``ticker:24h`` holds each symbol's 24 h ticker JSON; channel
``bff:portfolio`` carries ``{"user_id": n}`` after any change to a user's portfolio; channel ``bff:alerts``
carries ``{"user_id": n, "alert": {...}}`` for each stored alert firing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import asyncio

import asyncpg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import Pool

from crypto_mesh.metrics import RedisMetrics
from crypto_mesh import jsonutil
from crypto_mesh.logs import get_logger
from crypto_mesh.redisclient import PRICE_KEY_PREFIX, connect, mget, pubsub, seconds_key
from profile_bff.errors import (
    CoinAlreadyHeld,
    CoinLimitReached,
    CoinNotHeld,
    IdempotencyInFlight,
    IdempotencyMismatch,
    ProfileNotFound,
    Starting,
    StoreUnavailable,
)
from profile_bff.candle import Candle, second_candle
from profile_bff.readbatch import ReadBatcher
from profile_bff.portfolio import InvalidSecondStat, Price, parse_second_stat
from profile_bff.search import InvalidTicker, Ticker, parse_ticker

log = get_logger(__name__)

PORTFOLIO_CHANNEL = "bff:portfolio"
#: ``{"user_id": n, "alert": {...}}`` for each stored firing (docs/CONTRACTS.md, "Alerts").
ALERTS_CHANNEL = "bff:alerts"
TICKER_KEY = "ticker:24h"
TICKET_KEY_PREFIX = "bff:ws-ticket:"
#: An Idempotency-Key reservation unanswered this long (s) was left by a process that died mid-request: every
#: request bounds its own waits (database 5 s, aggregator 3 s, Redis 2 s) far below it.
IN_FLIGHT_ABANDONED_S = 60
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version_profile"
#: The advisory lock a migration of the profile database takes in its transaction, so that replicas starting
#: together (and ``crypto-mesh db``) migrate one at a time.
MIGRATION_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('profile_bff.migrations'))"

metadata = sa.MetaData()
profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
coins = sa.Table(
    "coins",
    metadata,
    sa.Column("user_id", sa.BigInteger, sa.ForeignKey("profiles.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("symbol", sa.String(20), primary_key=True),
    sa.Column("quantity", sa.Numeric(38, 18, asdecimal=True), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
coin_history = sa.Table(
    "coin_history",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("symbol", sa.String(20)),
    sa.Column("operation", sa.Text, nullable=False),
    sa.Column("old_quantity", sa.Numeric(38, 18, asdecimal=True)),
    sa.Column("new_quantity", sa.Numeric(38, 18, asdecimal=True)),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("alert_id", sa.BigInteger),
)
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("user_id", sa.BigInteger, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("request_hash", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.Integer),
    sa.Column("body", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)
#: The profiles of the users ``$1`` (an array: the reads that share the query) LEFT JOIN their coins, a row
#: ``(id, name, symbol, quantity)`` per coin or per profile without coins: the hot read (every REST read and
#: socket connect), sent by asyncpg itself (:meth:`ProfileStore.load`), prepared once per connection.
HOLDINGS_SQL = (
    "SELECT profiles.id, profiles.name, coins.symbol, coins.quantity"
    " FROM profiles LEFT OUTER JOIN coins ON coins.user_id = profiles.id"
    " WHERE profiles.id = ANY($1::bigint[])"
)
#: Most profiles one :data:`HOLDINGS_SQL` reads (the reads waiting beyond it take the next query).
READ_BATCH_MAX = 100
#: Connections of the read pool (:meth:`ProfileStore.load`), beside SQLAlchemy's pool for everything else.
READ_POOL_SIZE = 5
#: Seconds a hot read may wait for a connection of the read pool (connecting included), and then for its answer:
#: the same bound as SQLAlchemy's ``pool_timeout`` for the other statements.
READ_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One portfolio change: ``operation`` is ``add`` (``old_quantity`` None), ``update``, or ``remove``
    (``new_quantity`` None), or a change of alert rule ``alert_id``: ``alert_create``, ``alert_pause``,
    ``alert_resume``, ``alert_delete`` (quantities None, ``symbol`` the rule's or None); ``at`` is the commit's
    transaction time (UTC)."""

    id: int
    symbol: str | None
    operation: str
    old_quantity: Decimal | None
    new_quantity: Decimal | None
    at: datetime
    alert_id: int | None = None


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The first answer to an idempotent request: HTTP ``status`` and JSON ``body`` text (``None``: 204)."""

    status: int
    body: str | None


@dataclass(frozen=True, slots=True)
class Holdings:
    """A profile as stored: ``name`` and ``coins`` (symbol → quantity)."""

    name: str
    coins: dict[str, Decimal]


def holdings_of(
    user_ids: list[int], rows: Iterable[tuple[int, str, str | None, Decimal | None]]
) -> list[Holdings | ProfileNotFound]:
    """For each of ``user_ids`` (in order; one asked twice is answered twice), its :class:`Holdings` from
    ``rows`` of :data:`HOLDINGS_SQL` (``(user id, name, symbol, quantity)``, symbol and quantity ``None``
    for a profile without coins), or :class:`ProfileNotFound` if no row is the user's."""
    found: dict[int, Holdings] = {}
    for user_id, name, symbol, quantity in rows:
        holdings = found.get(user_id)
        if holdings is None:
            holdings = found[user_id] = Holdings(name=name, coins={})
        if symbol is not None:
            holdings.coins[symbol] = quantity  # type: ignore[assignment]
    return [found.get(user_id) or ProfileNotFound(user_id) for user_id in user_ids]


#: Errors that mean "the database is not reachable", as opposed to a constraint or a bug.
_UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError, TimeoutError)
#: SQLSTATE classes of the same (PostgreSQL manual, Appendix A): 08 connection exception, 53 insufficient
#: resources (too many connections, disk full), 57P operator intervention (shutdown, starting up).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")
#: What asyncpg raises when the connection it was given is (or just became) unusable: the server closed it
#: (class 08, 57P01 at a shutdown: asyncpg's ``PostgresConnectionError``, ``OperatorInterventionError``), the
#: socket broke (``OSError``), or asyncpg already knew it closed (``InterfaceError``). A read that meets one is
#: tried once more, on another connection (:meth:`ProfileStore.load`).
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    # A session the server ended while the connection sat idle, read by the loop before the close itself:
    # asyncpg refuses the next statement so ("cannot switch to state ..."); :func:`_fetch` closes it.
    asyncpg.exceptions.InternalClientError,
    OSError,
)


class ProfileStore:
    """Profiles and coins in PostgreSQL (SQLAlchemy Core over asyncpg; the hot read, :meth:`load`, on asyncpg's
    own pool).

    Every method raises :class:`StoreUnavailable` when the database cannot be reached; the other errors are
    named per method. Until :meth:`migrate` has succeeded, :attr:`migrated` is false and the callers refuse
    to use the store (:meth:`require_migrated`).
    """

    def __init__(self, database_url: str) -> None:
        # Connections are in autocommit mode unless checked out for a transaction: a read of one statement
        # (the history, the holders) then costs the pre-ping and the SELECT, two round trips where BEGIN, the
        # SELECT and COMMIT after a ping in its own transaction (BEGIN, ping, ROLLBACK) took six. The hot read
        # (:meth:`load`) is not made here: see below.
        self._engine = create_async_engine(
            database_url,
            pool_size=5,
            max_overflow=5,
            pool_timeout=5,
            pool_pre_ping=True,
            isolation_level="AUTOCOMMIT",
        )
        self._transactions = self._engine.execution_options(isolation_level="READ COMMITTED")
        # The hot read skips SQLAlchemy (its statement execution and the pool's ping before each checkout were
        # most of a profile read's CPU): asyncpg's pool, the same server and options as the URL names.
        _, self._read_connect_args = self._engine.dialect.create_connect_args(self._engine.url)
        self._read_connect_args.pop("prepared_statement_cache_size", None)
        self._read_pool: asyncpg.Pool | None = None
        self._read_pool_opening = asyncio.Lock()
        #: Shares a query between the profile reads that arrive while the read pool is busy (:meth:`load`).
        self._reads: ReadBatcher[int, Holdings] = ReadBatcher(
            self._load_many, max_in_flight=READ_POOL_SIZE, max_batch=READ_BATCH_MAX
        )
        self._migrated = False

    @property
    def migrated(self) -> bool:
        """True once :meth:`migrate` has succeeded in this process."""
        return self._migrated

    def require_migrated(self) -> None:
        """Raise :class:`Starting` unless the schema is migrated: nothing reads or writes it before."""
        if not self._migrated:
            raise Starting("the profile database is not ready yet")

    @property
    def pool(self) -> Pool:
        """The connection pool, for its metrics (size, checked out)."""
        return self._engine.sync_engine.pool

    @property
    def read_pool(self) -> asyncpg.Pool | None:
        """The read pool of :meth:`load` (asyncpg's), for its metrics; ``None`` until the first read."""
        return self._read_pool

    async def close(self) -> None:
        """Close both connection pools."""
        if self._read_pool is not None:
            await self._read_pool.close()
        await self._engine.dispose()

    async def migrate(self) -> None:
        """Bring the schema to the latest Alembic revision, under an advisory lock so that replicas starting
        together migrate one at a time."""
        async with self._connection() as conn:
            await conn.execute(sa.text(MIGRATION_LOCK_SQL))
            await conn.run_sync(_upgrade_to_head)
        self._migrated = True

    async def ensure_profile(self, user_id: int, name: str) -> None:
        """Create the profile of ``user_id`` unless it exists (register, and login healing a lost one)."""
        statement = pg_insert(profiles).values(id=user_id, name=name).on_conflict_do_nothing()
        async with self._connection() as conn:
            await conn.execute(statement)

    async def load(self, user_id: int) -> Holdings:
        """The profile of ``user_id`` with its coins. Raises :class:`ProfileNotFound`.

        This runs on every REST read and socket connect, so it is one round trip, shared by the reads that
        arrive while the pool is busy (:class:`~profile_bff.readbatch.ReadBatcher`: a read goes at once while
        fewer than :data:`READ_POOL_SIZE` queries run; otherwise it waits and goes with the others waiting in
        the next query, at most :data:`READ_BATCH_MAX` each): one :data:`HOLDINGS_SQL`, outside a transaction,
        prepared once per connection, on asyncpg's pool without a ping before each checkout nor a reset query
        after it (the statement leaves no session state behind). The pool's checkout and release cost a read
        about as much CPU as the query itself, and a batch pays them once. A connection found dead by the
        query itself (the server restarted or closed it since its last use) costs one more try, on another
        connection; a second failure, or a pool that cannot connect within :data:`READ_TIMEOUT_S`, raises
        :class:`StoreUnavailable` (to every read of the batch).
        """
        try:
            return await self._reads.load(user_id)
        except (*_CONNECTION_LOST, TimeoutError) as exc:
            raise StoreUnavailable(f"profile database unavailable: {exc.__class__.__name__}") from exc
        except asyncpg.PostgresError as exc:
            sqlstate = exc.sqlstate or ""
            if sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
                raise StoreUnavailable(f"profile database unavailable (SQLSTATE {sqlstate})") from exc
            raise

    async def _load_many(self, user_ids: list[int]) -> list[Holdings | ProfileNotFound]:
        """The batch function of :meth:`load`: the holdings of each of ``user_ids`` (in that order, a user
        twice if asked twice) or :class:`ProfileNotFound`, from one :data:`HOLDINGS_SQL`; a connection lost
        costs one more try, then the error is raised (for every read of the batch)."""
        pool = self._read_pool or await self._open_read_pool()
        try:
            rows = await _fetch(pool, HOLDINGS_SQL, user_ids)
        except _CONNECTION_LOST as exc:
            log.info("profile_read_retried", error=exc.__class__.__name__)
            rows = await _fetch(pool, HOLDINGS_SQL, user_ids)
        return holdings_of(user_ids, rows)

    async def _open_read_pool(self) -> asyncpg.Pool:
        """The read pool of :meth:`load`, made on first use (no connection is opened before a read needs one,
        so that a database still down at start fails reads, not the start)."""
        async with self._read_pool_opening:
            if self._read_pool is None:
                self._read_pool = await asyncpg.create_pool(
                    min_size=0,
                    max_size=READ_POOL_SIZE,
                    reset=_keep_session,
                    timeout=READ_TIMEOUT_S,
                    **self._read_connect_args,
                )
            return self._read_pool

    async def add_coin(
        self, user_id: int, symbol: str, quantity: Decimal, *, max_coins: int | None = None
    ) -> None:
        """Add a holding; with ``max_coins``, only while the portfolio holds fewer coins than that.

        Raises :class:`ProfileNotFound`, :class:`CoinAlreadyHeld`, :class:`CoinLimitReached`.
        """
        async with self._connection() as conn:
            # FOR NO KEY UPDATE (SQLAlchemy's key_share without read) on the profile row orders the adds of
            # one user, since it conflicts with itself: two concurrent adds cannot both count the coins below
            # the cap. It keeps the profile from being deleted until the insert commits, and does not conflict
            # with the KEY SHARE lock the coins' foreign key takes, nor with updates and removals of coins.
            found = await conn.scalar(
                sa.select(profiles.c.id).where(profiles.c.id == user_id).with_for_update(key_share=True)
            )
            if found is None:
                raise ProfileNotFound(user_id)
            if max_coins is not None:
                held, already = (
                    await conn.execute(
                        sa.select(
                            sa.func.count(),
                            sa.func.coalesce(sa.func.bool_or(coins.c.symbol == symbol), False),
                        ).where(coins.c.user_id == user_id)
                    )
                ).one()
                if already:
                    raise CoinAlreadyHeld(symbol)
                if held >= max_coins:
                    raise CoinLimitReached(max_coins)
            inserted = await conn.scalar(
                pg_insert(coins)
                .values(user_id=user_id, symbol=symbol, quantity=quantity)
                .on_conflict_do_nothing()
                .returning(coins.c.symbol)
            )
            if inserted is None:
                raise CoinAlreadyHeld(symbol)
            await _record(conn, user_id, symbol, "add", None, quantity)

    async def update_coin(self, user_id: int, symbol: str, quantity: Decimal) -> None:
        """Set the quantity of a holding. Raises :class:`CoinNotHeld`."""
        async with self._connection() as conn:
            # The row lock orders concurrent updates, so each history row's old quantity is the one replaced.
            old = await conn.scalar(
                sa.select(coins.c.quantity)
                .where(coins.c.user_id == user_id, coins.c.symbol == symbol)
                .with_for_update()
            )
            if old is None:
                raise CoinNotHeld(symbol)
            await conn.execute(
                sa.update(coins)
                .where(coins.c.user_id == user_id, coins.c.symbol == symbol)
                .values(quantity=quantity, updated_at=sa.func.now())
            )
            await _record(conn, user_id, symbol, "update", old, quantity)

    async def delete_coin(self, user_id: int, symbol: str) -> None:
        """Remove a holding. Raises :class:`CoinNotHeld`."""
        statement = (
            sa.delete(coins)
            .where(coins.c.user_id == user_id, coins.c.symbol == symbol)
            .returning(coins.c.quantity)
        )
        async with self._connection() as conn:
            old = await conn.scalar(statement)
            if old is None:
                raise CoinNotHeld(symbol)
            await _record(conn, user_id, symbol, "remove", old, None)

    async def history(self, user_id: int, *, before_id: int | None, limit: int) -> list[HistoryEntry]:
        """Up to ``limit`` changes of ``user_id``'s portfolio, newest first, with ids below ``before_id``
        (the cursor: the last id of the previous page; ``None`` for the first page)."""
        statement = sa.select(coin_history).where(coin_history.c.user_id == user_id)
        if before_id is not None:
            statement = statement.where(coin_history.c.id < before_id)
        statement = statement.order_by(coin_history.c.id.desc()).limit(limit)
        async with self._connection(read_only=True) as conn:
            rows = await conn.execute(statement)
            return [
                HistoryEntry(
                    id=row.id,
                    symbol=row.symbol,
                    operation=row.operation,
                    old_quantity=row.old_quantity,
                    new_quantity=row.new_quantity,
                    at=row.at,
                    alert_id=row.alert_id,
                )
                for row in rows
            ]

    async def holders(self) -> dict[int, list[str]]:
        """Every user with at least one coin → its symbols, sorted (rebuilding the aggregator followers)."""
        async with self._connection(read_only=True) as conn:
            rows = await conn.execute(sa.select(coins.c.user_id, coins.c.symbol).order_by(coins.c.symbol))
            held: dict[int, list[str]] = {}
            for user_id, symbol in rows:
                held.setdefault(user_id, []).append(symbol)
            return held

    async def reserve_idempotency_key(
        self, user_id: int, key: str, request_hash: bytes, ttl_s: int
    ) -> StoredAnswer | None:
        """Claim ``key`` for a request of ``user_id`` whose method, path and body hash to ``request_hash``.

        Returns ``None`` when the key is new (now reserved: the caller processes the request and then calls
        :meth:`store_idempotent_answer` or :meth:`release_idempotency_key`), or the stored first answer.
        Raises :class:`IdempotencyMismatch` if the key was used for another request and
        :class:`IdempotencyInFlight` while the first request is still being processed. Keys expire after
        ``ttl_s`` seconds; this user's expired keys are deleted here, the others by :meth:`prune_idempotency_keys`.
        A reservation still unanswered after :data:`IN_FLIGHT_ABANDONED_S` belongs to a process that died
        mid-request: it is deleted here too, so the retry runs instead of answering 409 until expiry.
        """
        key_of = (idempotency_keys.c.user_id == user_id, idempotency_keys.c.key == key)
        abandoned = sa.and_(
            idempotency_keys.c.status.is_(None),
            idempotency_keys.c.created_at
            <= sa.func.now() - sa.text(f"interval '{IN_FLIGHT_ABANDONED_S} seconds'"),
        )
        async with self._connection() as conn:
            await conn.execute(
                sa.delete(idempotency_keys).where(
                    idempotency_keys.c.user_id == user_id,
                    sa.or_(idempotency_keys.c.expires_at <= sa.func.now(), abandoned),
                )
            )
            inserted = await conn.scalar(
                pg_insert(idempotency_keys)
                .values(
                    user_id=user_id,
                    key=key,
                    request_hash=request_hash,
                    expires_at=sa.func.now() + sa.text(f"interval '{int(ttl_s)} seconds'"),
                )
                .on_conflict_do_nothing()
                .returning(idempotency_keys.c.key)
            )
            if inserted is not None:
                return None
            row = (
                await conn.execute(
                    sa.select(
                        idempotency_keys.c.request_hash, idempotency_keys.c.status, idempotency_keys.c.body
                    ).where(*key_of)
                )
            ).one_or_none()
        if row is None:
            # Released by the first request (it failed with a 5xx) between our insert and this read.
            raise IdempotencyInFlight(key)
        if row.request_hash != request_hash:
            raise IdempotencyMismatch(key)
        if row.status is None:
            raise IdempotencyInFlight(key)
        return StoredAnswer(status=row.status, body=row.body)

    async def store_idempotent_answer(self, user_id: int, key: str, answer: StoredAnswer) -> None:
        """Record the first answer to the request that reserved ``key``."""
        async with self._connection() as conn:
            await conn.execute(
                sa.update(idempotency_keys)
                .where(idempotency_keys.c.user_id == user_id, idempotency_keys.c.key == key)
                .values(status=answer.status, body=answer.body)
            )

    async def release_idempotency_key(self, user_id: int, key: str) -> None:
        """Forget a reservation whose request failed for a reason of ours (5xx), so a retry runs again."""
        async with self._connection() as conn:
            await conn.execute(
                sa.delete(idempotency_keys).where(
                    idempotency_keys.c.user_id == user_id,
                    idempotency_keys.c.key == key,
                    idempotency_keys.c.status.is_(None),
                )
            )

    async def prune_idempotency_keys(self) -> int:
        """Delete every expired key; the number deleted."""
        async with self._connection() as conn:
            result = await conn.execute(
                sa.delete(idempotency_keys).where(idempotency_keys.c.expires_at <= sa.func.now())
            )
            return result.rowcount

    async def delete_profile(self, user_id: int) -> list[str]:
        """Delete the profile and its coins (cascade); the symbols it held, ``[]`` if there was no profile."""
        async with self._connection() as conn:
            held = await conn.scalars(
                sa.select(coins.c.symbol).where(coins.c.user_id == user_id).with_for_update()
            )
            symbols = sorted(held)
            await conn.execute(
                sa.text(
                    "DELETE FROM alert_states WHERE rule_id IN (SELECT id FROM alert_rules WHERE user_id = :user)"
                ),
                {"user": user_id},
            )
            await conn.execute(sa.text("DELETE FROM alert_firings WHERE user_id = :user"), {"user": user_id})
            await conn.execute(sa.delete(profiles).where(profiles.c.id == user_id))
            return symbols

    def connection(self, *, read_only: bool = False) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection of this store's pool in a READ COMMITTED transaction, committed on success (``read_only``:
        autocommit, for one SELECT); outages raise :class:`StoreUnavailable`. For the alert store
        (:mod:`profile_bff.alertstore`), which shares the pool and the schema."""
        return self._connection(read_only=read_only)

    @asynccontextmanager
    async def _connection(self, *, read_only: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed on success; outages become StoreUnavailable.

        ``read_only``: for a single SELECT, which needs no transaction; it runs in autocommit mode."""
        try:
            async with (self._engine if read_only else self._transactions).begin() as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"profile database unavailable: {exc.__class__.__name__}") from exc
        except sa_exc.DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None) or ""
            if exc.connection_invalidated or sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
                raise StoreUnavailable(f"profile database unavailable (SQLSTATE {sqlstate})") from exc
            raise


async def _fetch(pool: asyncpg.Pool, query: str, *args: object) -> list[asyncpg.Record]:
    """The rows of ``query`` on a connection of ``pool``, all within :data:`READ_TIMEOUT_S` (waiting for a
    connection, connecting included, and for the rows; ``TimeoutError``). One deadline for both: asyncpg's
    own ``timeout`` arguments would each start a task or a timer per read. A connection asyncpg finds in a
    state it cannot use (:class:`asyncpg.exceptions.InternalClientError`) is closed before the error is
    raised."""
    async with asyncio.timeout(READ_TIMEOUT_S), pool.acquire() as connection:
        try:
            return await connection.fetch(query, *args)
        except asyncpg.exceptions.InternalClientError:
            connection.terminate()  # unusable (see _CONNECTION_LOST): the pool connects anew in its place
            raise


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """The read pool's reset on release: nothing to reset, since its one statement changes no session state.
    (asyncpg's default, ``Connection.reset()``, sends a reset query: a second round trip per read.) asyncpg
    still rolls back a transaction left open before calling it."""


async def _record(
    conn: AsyncConnection,
    user_id: int,
    symbol: str,
    operation: str,
    old: Decimal | None,
    new: Decimal | None,
) -> None:
    await conn.execute(
        sa.insert(coin_history).values(
            user_id=user_id, symbol=symbol, operation=operation, old_quantity=old, new_quantity=new
        )
    )


def alembic_config(connection: sa.Connection) -> Config:
    """An Alembic configuration built in code (no alembic.ini) that migrates the profile database on
    ``connection`` (a synchronous connection, e.g. inside ``AsyncConnection.run_sync``), with its version
    table :data:`VERSION_TABLE`. The caller takes :data:`MIGRATION_LOCK_SQL` in the same transaction."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    config.attributes["version_table"] = VERSION_TABLE
    return config


def _upgrade_to_head(connection: sa.Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


# ARGV[1]: a channel, ARGV[2..]: messages, published on it in order. No key: on a cluster any master runs it,
# and a Redis 7 cluster delivers a PUBLISH on every node.
_PUBLISH_ALL = """
for i = 2, #ARGV do redis.call('PUBLISH', ARGV[1], ARGV[i]) end
return #ARGV - 1
"""


class MarketBus:
    """Redis as the BFF uses it: latest prices and seconds, portfolio-change notices, the pub/sub connection.

    Command calls fail fast (2 s timeouts, one retry) and raise :class:`StoreUnavailable`; the pub/sub
    connection has no read timeout (it waits for messages) and no internal retry, since its owner
    (:class:`profile_bff.subscriptions.Subscriptions`) reconnects and resubscribes itself.
    """

    def __init__(self, redis_url: str) -> None:
        self._commands = connect(
            redis_url, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 1)
        )
        self._subscriber = connect(redis_url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        self._publish_all = self._commands.register_script(_PUBLISH_ALL)
        #: The tickers of the last :meth:`tickers` read by their JSON: a symbol whose ticker has not changed
        #: since (the exchange sends only the tickers that changed) is not parsed again.
        self._parsed_tickers: dict[bytes, Ticker] = {}
        #: Each symbol's last price read by :meth:`latest_prices`, with its JSON: a price changes once a second
        #: and is read by every profile read of its holders meanwhile, so it is parsed once.
        self._parsed_prices: dict[str, tuple[bytes, Price]] = {}

    def instrument(self, metrics: RedisMetrics) -> None:
        """Time the commands (not the pub/sub connection) in ``metrics``."""
        metrics.instrument(self._commands)

    async def close(self) -> None:
        """Close both connection pools."""
        await self._commands.aclose()
        await self._subscriber.aclose()

    async def pubsub(self) -> PubSub:
        """A new pub/sub object on its own connection (subscribe/unsubscribe/listen); on a Redis Cluster, on
        one node, which hears every channel (:func:`crypto_mesh.redisclient.pubsub`)."""
        return await pubsub(self._subscriber, ignore_subscribe_messages=True)

    async def latest_prices(self, symbols: Iterable[str]) -> dict[str, Price]:
        """The latest price of each symbol that has one (key ``price:<symbol>``); malformed values are logged
        and skipped. A value equal to the one this symbol had at the previous read is not parsed again."""
        wanted = list(symbols)
        if not wanted:
            return {}
        try:
            values = await mget(self._commands, [PRICE_KEY_PREFIX + symbol for symbol in wanted])
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc
        prices = {}
        parsed = self._parsed_prices
        for symbol, value in zip(wanted, values, strict=True):
            if value is None:
                continue
            known = parsed.get(symbol)
            if known is not None and known[0] == value:
                prices[symbol] = known[1]
                continue
            try:
                price = parse_second_stat(value)
            except InvalidSecondStat as exc:
                log.warning("malformed_price_key", symbol=symbol, error=str(exc))
                continue
            prices[symbol] = price
            parsed[symbol] = (value, price)
        return prices

    async def tickers(self) -> dict[str, Ticker]:
        """Every symbol's 24 h ticker (hash ``ticker:24h``, one ``HGETALL``: ~2,000 entries of ~250 bytes);
        malformed values are skipped, and logged once per read."""
        try:
            values = await self._commands.hgetall(TICKER_KEY)
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc
        tickers, malformed, parsed = {}, {}, {}
        previous = self._parsed_tickers
        for raw_symbol, value in values.items():
            symbol = raw_symbol.decode(errors="replace")
            ticker = previous.get(value)
            if ticker is None:
                try:
                    ticker = parse_ticker(value)
                except InvalidTicker as exc:
                    malformed[symbol] = str(exc)
                    continue
            tickers[symbol] = parsed[value] = ticker
        self._parsed_tickers = parsed
        if malformed:
            symbol, error = next(iter(malformed.items()))
            log.warning("malformed_tickers", count=len(malformed), symbol=symbol, error=error)
        return tickers

    async def market_of(self, symbol: str) -> tuple[Ticker | None, Price | None]:
        """``symbol``'s 24 h ticker and latest SecondStat price (``None`` where there is none), in one round
        trip; malformed values are logged and taken as absent."""
        try:
            async with self._commands.pipeline(transaction=False) as pipe:
                pipe.hget(TICKER_KEY, symbol)
                pipe.get(PRICE_KEY_PREFIX + symbol)
                ticker_value, price_value = await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc
        price = None
        if price_value is not None:
            try:
                price = parse_second_stat(price_value)
            except InvalidSecondStat as exc:
                log.warning("malformed_price_key", symbol=symbol, error=str(exc))
        ticker = None
        if ticker_value is not None:
            try:
                ticker = parse_ticker(ticker_value)
            except InvalidTicker as exc:
                log.warning("malformed_tickers", count=1, symbol=symbol, error=str(exc))
        return ticker, price

    async def recent_seconds(self, symbol: str) -> list[Candle]:
        """The symbol's latest SecondStats (list ``seconds:<symbol>{price:<symbol>}``, kept by the aggregator)
        as 1-second candles, oldest first; malformed entries are logged and skipped. Raises
        :class:`StoreUnavailable`."""
        try:
            values = await self._commands.lrange(seconds_key(symbol), 0, -1)
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc
        seconds = []
        for value in values:
            try:
                seconds.append(second_candle(value))
            except InvalidSecondStat as exc:
                log.warning("malformed_recent_second", symbol=symbol, error=str(exc))
        return seconds

    async def issue_ticket(self, ticket: str, claims_json: bytes, ttl_s: int) -> None:
        """Store a one-time WebSocket ticket (key ``bff:ws-ticket:<ticket>``, expiring after ``ttl_s``)."""
        try:
            await self._commands.set(TICKET_KEY_PREFIX + ticket, claims_json, ex=ttl_s)
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc

    async def redeem_ticket(self, ticket: str) -> bytes | None:
        """The claims stored with ``ticket``, deleting it in the same command (GETDEL): a ticket opens at
        most one socket. ``None`` if unknown, used or expired."""
        try:
            return await self._commands.getdel(TICKET_KEY_PREFIX + ticket)
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc

    async def publish_alerts(self, messages: Iterable[bytes]) -> None:
        """Publish each ``{"user_id", "alert"}`` JSON on ``bff:alerts``, in order, in one round trip (one
        script: redis-py's cluster pipeline refuses ``PUBLISH``): every replica sends it to the user's sockets
        there."""
        batch = list(messages)
        if not batch:
            return
        try:
            await self._publish_all(args=[ALERTS_CHANNEL, *batch])
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc

    async def publish_portfolio_change(self, user_id: int) -> None:
        """Publish ``{"user_id": n}`` on ``bff:portfolio``: every replica refreshes the user's sockets."""
        try:
            await self._commands.publish(PORTFOLIO_CHANNEL, jsonutil.dumps({"user_id": user_id}))
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc
