"""The auth schema comes from the Alembic migrations in auth/migrations, applied programmatically."""

from __future__ import annotations

import asyncio
import sys

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from auth import migrations
from auth.store import metadata


async def _inspect(url: str, fn):
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def _tables_and_version(conn: sa.Connection) -> tuple[set[str], list[str]]:
    tables = set(sa.inspect(conn).get_table_names())
    versions = (
        [row[0] for row in conn.execute(sa.text(f"SELECT version_num FROM {migrations.VERSION_TABLE}"))]
        if migrations.VERSION_TABLE in tables
        else []
    )
    return tables, versions


def _schema_diff(conn: sa.Connection) -> list:
    context = MigrationContext.configure(conn, opts={"version_table": migrations.VERSION_TABLE})
    return compare_metadata(context, metadata)


async def test_upgrade_creates_the_tables_under_an_auth_specific_version_table(fresh_database):
    url = fresh_database("auth")
    await asyncio.to_thread(migrations.upgrade, url)
    tables, versions = await _inspect(url, _tables_and_version)
    assert tables == {"users", "refresh_tokens", "alembic_version_auth"}
    assert versions == ["0001"]


async def test_upgrade_twice_is_a_no_op(fresh_database):
    url = fresh_database("auth")
    await asyncio.to_thread(migrations.upgrade, url)
    await asyncio.to_thread(migrations.upgrade, url)
    assert (await _inspect(url, _tables_and_version))[1] == ["0001"]


async def test_concurrent_upgrades_from_two_replicas_both_succeed(fresh_database):
    url = fresh_database("auth")
    script = "import sys; from auth.migrations import upgrade; upgrade(sys.argv[1])"
    replicas = [await asyncio.create_subprocess_exec(sys.executable, "-c", script, url) for _ in range(2)]
    assert [await replica.wait() for replica in replicas] == [0, 0]
    assert (await _inspect(url, _tables_and_version))[1] == ["0001"]


async def test_the_store_tables_match_the_migrated_schema(fresh_database):
    url = fresh_database("auth")
    await asyncio.to_thread(migrations.upgrade, url)
    assert await _inspect(url, _schema_diff) == []


async def test_downgrade_to_base_removes_the_tables(fresh_database):
    url = fresh_database("auth")
    await asyncio.to_thread(migrations.upgrade, url)
    await asyncio.to_thread(command.downgrade, migrations.alembic_config(url), "base")
    tables, versions = await _inspect(url, _tables_and_version)
    assert tables == {"alembic_version_auth"} and versions == []
