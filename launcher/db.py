"""The mesh's schema migrations, run by an operator (``crypto-mesh db current|upgrade|downgrade``).

Three databases, each migrated by its own service at start (which stays so: these commands are for an operator
who wants to see, prepare or roll back a schema without starting a service):

- ``auth`` (PostgreSQL): Alembic, ``auth/migrations``, version table ``alembic_version_auth``;
- ``profile`` (PostgreSQL): Alembic, ``profile_bff/migrations``, version table ``alembic_version_profile``;
- ``clickhouse``: the ETL's numbered SQL files (:mod:`etl.migrate`), recorded in ``crypto.schema_migrations``.
  They are forward-only (no file has a down part): ``crypto-mesh db downgrade`` refuses ClickHouse.

Every function takes the database's URL (SQLAlchemy asyncpg URL for PostgreSQL, clickhouse-connect DSN for
ClickHouse) and raises :class:`DbCommandError` with one line for the operator, or the driver's error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


class DbCommandError(Exception):
    """A migration command that cannot run as asked (unknown revision, forward-only ClickHouse, a database
    migrated by newer code); its message is one line for the operator."""


@dataclass(frozen=True)
class Revision:
    """Where one database stands: ``current`` (``None`` before the first migration) and ``head``, the newest
    revision this code ships (Alembic revision ids for PostgreSQL, ``NNNN`` versions for ClickHouse)."""

    database: str
    current: str | None
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head


@dataclass(frozen=True)
class _Alembic:
    script_location: Path
    version_table: str


def _alembic(database: str) -> _Alembic:
    if database == "auth":
        from auth import migrations

        return _Alembic(Path(migrations.__file__).parent, migrations.VERSION_TABLE)
    if database == "profile":
        from profile_bff import store

        return _Alembic(store.MIGRATIONS_DIR, store.VERSION_TABLE)
    raise DbCommandError(f"{database!r} is not an Alembic database (auth, profile)")


def _script(database: str) -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(_alembic(database).script_location))
    return ScriptDirectory.from_config(config)


async def _on_connection(url: str, fn: Callable[[sa.Connection], Any], lock_sql: str | None = None) -> Any:
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 10})
    try:
        async with engine.begin() as connection:
            if lock_sql is not None:
                await connection.execute(sa.text(lock_sql))
            return await connection.run_sync(fn)
    finally:
        await engine.dispose()


def postgres_revision(database: str, url: str) -> Revision:
    """Where the Alembic database ``database`` (``auth`` or ``profile``) at ``url`` stands."""
    spec = _alembic(database)

    def current(connection: sa.Connection) -> str | None:
        context = MigrationContext.configure(connection, opts={"version_table": spec.version_table})
        return context.get_current_revision()

    head = _script(database).get_current_head() or ""
    return Revision(database, asyncio.run(_on_connection(url, current)), head)


def _check_revision(database: str, target: str) -> None:
    """Refuse a target Alembic would not resolve (relative ``-1``/``+1`` and ``base``/``head`` pass)."""
    if target in ("head", "base") or target.lstrip("+-").isdigit() and target[0] in "+-":
        return
    try:
        found = _script(database).get_revision(target)
    except Exception:  # noqa: BLE001 - alembic raises several CommandError/ResolutionError kinds for a bad id
        found = None
    if found is None:
        known = ", ".join(sorted(r.revision for r in _script(database).walk_revisions()))
        raise DbCommandError(f"{database} has no revision {target!r} (it has {known}, base and head)")


def migrate_postgres(database: str, url: str, direction: str, target: str) -> Revision:
    """Run Alembic's ``upgrade`` or ``downgrade`` (``direction``) to ``target`` on the database ``database``
    at ``url``, as its service does (same version table, same advisory lock against a replica migrating at
    the same time); returns where it stands afterwards."""
    if direction not in ("upgrade", "downgrade"):
        raise ValueError(direction)
    _check_revision(database, target)
    run = getattr(command, direction)
    if database == "auth":
        from auth import migrations

        # auth's env.py opens its own connection (and advisory lock) from the URL.
        with migrations._UPGRADE_LOCK:
            run(migrations.alembic_config(url), target)
    else:
        from profile_bff import store

        def migrate(connection: sa.Connection) -> None:
            run(store.alembic_config(connection), target)

        # The profile service's configuration and advisory lock (a replica migrating at the same time waits).
        asyncio.run(_on_connection(url, migrate, store.MIGRATION_LOCK_SQL))
    return postgres_revision(database, url)


def _clickhouse_client(url: str):
    import clickhouse_connect

    return clickhouse_connect.get_client(dsn=url, tz_mode="aware")


def clickhouse_head() -> str:
    """The newest ClickHouse migration version this code ships, as ``NNNN``."""
    from etl.migrate import load_migrations

    return f"{load_migrations()[-1].version:04d}"


def clickhouse_revision(url: str) -> Revision:
    """Where the ClickHouse at ``url`` stands: the highest version recorded in ``crypto.schema_migrations``
    (``None`` if the ledger does not exist or is empty)."""
    from etl.migrate import LEDGER

    client = _clickhouse_client(url)
    try:
        exists = client.command("EXISTS TABLE crypto.schema_migrations")
        current = None
        if int(exists):
            versions = [row[0] for row in client.query(f"SELECT version FROM {LEDGER}").result_rows]
            current = f"{max(versions):04d}" if versions else None
    finally:
        client.close()
    return Revision("clickhouse", current, clickhouse_head())


def upgrade_clickhouse(url: str, target: str = "head") -> Revision:
    """Apply the ETL's ClickHouse migrations up to ``target`` (``head`` or a version number) on ``url``, as
    the ETL does at start (:func:`etl.migrate.apply_migrations`); returns where it stands afterwards.
    :class:`etl.migrate.MigrationError` becomes :class:`DbCommandError`."""
    from etl.migrate import MigrationError, apply_migrations, load_migrations

    migrations = load_migrations()
    if target != "head":
        if not target.isdigit() or int(target) not in {m.version for m in migrations}:
            known = ", ".join(f"{m.version:04d}" for m in migrations)
            raise DbCommandError(f"clickhouse has no migration {target!r} (it has {known} and head)")
        migrations = [m for m in migrations if m.version <= int(target)]
    client = _clickhouse_client(url)
    try:
        apply_migrations(client, migrations)
    except MigrationError as error:
        raise DbCommandError(f"clickhouse: {error}") from None
    finally:
        client.close()
    return clickhouse_revision(url)


def format_revisions(revisions: list[Revision]) -> list[list[str]]:
    """The rows of ``crypto-mesh db current``: a header, then database, current revision (``none`` before
    the first), the head this code ships, and ``yes``/``no`` for being at it."""
    rows = [["DATABASE", "CURRENT", "HEAD", "AT HEAD"]]
    for revision in revisions:
        rows.append(
            [
                revision.database,
                revision.current or "none",
                revision.head,
                "yes" if revision.at_head else "no",
            ]
        )
    return rows
