"""The BFF's storage: the profile database (PostgreSQL) and the market bus (Redis).

Profile database, schema in ``profile_bff/migrations`` (Alembic, version table ``alembic_version_profile``):

- ``profiles(id BIGINT PRIMARY KEY = auth user id, name, created_at)``
- ``coins(user_id → profiles ON DELETE CASCADE, symbol, quantity NUMERIC(38, 18) > 0, created_at,
  updated_at, PRIMARY KEY (user_id, symbol))``: a user holds a symbol at most once.

Redis (docs/CONTRACTS.md, "Redis"): key ``price:<symbol>`` holds the latest SecondStat JSON; channel
``<symbol>`` carries each new one; channel ``bff:portfolio`` carries ``{"user_id": n}`` after any change to
a user's portfolio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import redis.asyncio as aioredis
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

from crypto_mesh import jsonutil
from crypto_mesh.logs import get_logger
from profile_bff.portfolio import InvalidSecondStat, Price, parse_second_stat

log = get_logger(__name__)

PORTFOLIO_CHANNEL = "bff:portfolio"
PRICE_KEY_PREFIX = "price:"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version_profile"

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


class StoreUnavailable(Exception):
    """The profile database or Redis cannot be reached (connection refused, lost, timed out)."""


class ProfileNotFound(LookupError):
    """No profile row for the user."""


class CoinAlreadyHeld(Exception):
    """The user already holds the symbol (add is not an update: use PATCH)."""


class CoinNotHeld(LookupError):
    """The user does not hold the symbol."""


@dataclass(frozen=True, slots=True)
class Holdings:
    """A profile as stored: ``name`` and ``coins`` (symbol → quantity)."""

    name: str
    coins: dict[str, Decimal]


#: Errors that mean "the database is not reachable", as opposed to a constraint or a bug.
_UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError, TimeoutError)
#: SQLSTATE classes of the same (PostgreSQL manual, Appendix A): 08 connection exception, 53 insufficient
#: resources (too many connections, disk full), 57P operator intervention (shutdown, starting up).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


class ProfileStore:
    """Profiles and coins in PostgreSQL (SQLAlchemy Core over asyncpg).

    Every method raises :class:`StoreUnavailable` when the database cannot be reached; the other errors are
    named per method.
    """

    def __init__(self, database_url: str) -> None:
        self._engine = create_async_engine(
            database_url, pool_size=5, max_overflow=5, pool_timeout=5, pool_pre_ping=True
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self._engine.dispose()

    async def migrate(self) -> None:
        """Bring the schema to the latest Alembic revision, under an advisory lock so that replicas starting
        together migrate one at a time."""
        async with self._connection() as conn:
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('profile_bff.migrations'))"))
            await conn.run_sync(_upgrade_to_head)

    async def ensure_profile(self, user_id: int, name: str) -> None:
        """Create the profile of ``user_id`` unless it exists (register, and login healing a lost one)."""
        statement = pg_insert(profiles).values(id=user_id, name=name).on_conflict_do_nothing()
        async with self._connection() as conn:
            await conn.execute(statement)

    async def load(self, user_id: int) -> Holdings:
        """The profile of ``user_id`` with its coins. Raises :class:`ProfileNotFound`."""
        async with self._connection() as conn:
            name = await conn.scalar(sa.select(profiles.c.name).where(profiles.c.id == user_id))
            if name is None:
                raise ProfileNotFound(user_id)
            rows = await conn.execute(
                sa.select(coins.c.symbol, coins.c.quantity).where(coins.c.user_id == user_id)
            )
            return Holdings(name=name, coins={symbol: quantity for symbol, quantity in rows})

    async def add_coin(self, user_id: int, symbol: str, quantity: Decimal) -> None:
        """Add a holding. Raises :class:`ProfileNotFound`, :class:`CoinAlreadyHeld`."""
        async with self._connection() as conn:
            # KEY SHARE keeps the profile from being deleted between this check and the insert.
            found = await conn.scalar(
                sa.select(profiles.c.id).where(profiles.c.id == user_id).with_for_update(key_share=True)
            )
            if found is None:
                raise ProfileNotFound(user_id)
            inserted = await conn.scalar(
                pg_insert(coins)
                .values(user_id=user_id, symbol=symbol, quantity=quantity)
                .on_conflict_do_nothing()
                .returning(coins.c.symbol)
            )
            if inserted is None:
                raise CoinAlreadyHeld(symbol)

    async def update_coin(self, user_id: int, symbol: str, quantity: Decimal) -> None:
        """Set the quantity of a holding. Raises :class:`CoinNotHeld`."""
        statement = (
            sa.update(coins)
            .where(coins.c.user_id == user_id, coins.c.symbol == symbol)
            .values(quantity=quantity, updated_at=sa.func.now())
            .returning(coins.c.symbol)
        )
        async with self._connection() as conn:
            if await conn.scalar(statement) is None:
                raise CoinNotHeld(symbol)

    async def delete_coin(self, user_id: int, symbol: str) -> None:
        """Remove a holding. Raises :class:`CoinNotHeld`."""
        statement = (
            sa.delete(coins)
            .where(coins.c.user_id == user_id, coins.c.symbol == symbol)
            .returning(coins.c.symbol)
        )
        async with self._connection() as conn:
            if await conn.scalar(statement) is None:
                raise CoinNotHeld(symbol)

    async def delete_profile(self, user_id: int) -> list[str]:
        """Delete the profile and its coins (cascade); the symbols it held, ``[]`` if there was no profile."""
        async with self._connection() as conn:
            held = await conn.scalars(
                sa.select(coins.c.symbol).where(coins.c.user_id == user_id).with_for_update()
            )
            symbols = sorted(held)
            await conn.execute(sa.delete(profiles).where(profiles.c.id == user_id))
            return symbols

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed on success; outages become StoreUnavailable."""
        try:
            async with self._engine.begin() as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"profile database unavailable: {exc.__class__.__name__}") from exc
        except sa_exc.DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None) or ""
            if exc.connection_invalidated or sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
                raise StoreUnavailable(f"profile database unavailable (SQLSTATE {sqlstate})") from exc
            raise


def _upgrade_to_head(connection: sa.Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    config.attributes["version_table"] = VERSION_TABLE
    command.upgrade(config, "head")


class MarketBus:
    """Redis as the BFF uses it: latest prices, portfolio-change notices, and the pub/sub connection.

    Command calls fail fast (2 s timeouts, one retry) and raise :class:`StoreUnavailable`; the pub/sub
    connection has no read timeout (it waits for messages) and no internal retry, since its owner
    (:class:`profile_bff.connections.ConnectionManager`) reconnects and resubscribes itself.
    """

    def __init__(self, redis_url: str) -> None:
        self._commands = aioredis.Redis.from_url(
            redis_url, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 1)
        )
        self._subscriber = aioredis.Redis.from_url(
            redis_url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )

    async def close(self) -> None:
        """Close both connection pools."""
        await self._commands.aclose()
        await self._subscriber.aclose()

    def pubsub(self) -> PubSub:
        """A new pub/sub object on its own connection (subscribe/unsubscribe/listen)."""
        return self._subscriber.pubsub(ignore_subscribe_messages=True)

    async def latest_prices(self, symbols: Iterable[str]) -> dict[str, Price]:
        """The latest price of each symbol that has one (key ``price:<symbol>``); malformed values are logged
        and skipped."""
        wanted = list(symbols)
        if not wanted:
            return {}
        try:
            values = await self._commands.mget([PRICE_KEY_PREFIX + symbol for symbol in wanted])
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc
        prices = {}
        for symbol, value in zip(wanted, values, strict=True):
            if value is None:
                continue
            try:
                prices[symbol] = parse_second_stat(value)
            except InvalidSecondStat as exc:
                log.warning("malformed_price_key", symbol=symbol, error=str(exc))
        return prices

    async def publish_portfolio_change(self, user_id: int) -> None:
        """Publish ``{"user_id": n}`` on ``bff:portfolio``: every replica refreshes the user's sockets."""
        try:
            await self._commands.publish(PORTFOLIO_CHANNEL, jsonutil.dumps({"user_id": user_id}))
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc.__class__.__name__}") from exc
