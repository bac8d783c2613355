"""Alembic environment of the auth database: online migrations over the async (asyncpg) engine.

Concurrent starts of several auth replicas are serialised by a PostgreSQL advisory lock held for the
duration of the upgrade, so only one of them runs each migration.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from auth.migrations import VERSION_TABLE

#: Key of the advisory lock (any constant bigint unique to this purpose: "auth" in ASCII).
_MIGRATION_LOCK_KEY = 0x61757468


def _run(connection: sa.Connection) -> None:
    # A session-level lock outlives the transaction that took it; commit so that the migrations below run
    # in a transaction of their own (PostgreSQL DDL is transactional: all of them apply, or none).
    connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    connection.commit()
    try:
        context.configure(connection=connection, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        connection.commit()


async def _run_online() -> None:
    engine = create_async_engine(
        context.config.attributes["database_url"], poolclass=NullPool, connect_args={"timeout": 5}
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("the auth migrations run online only (auth.migrations.upgrade)")
asyncio.run(_run_online())
