"""The auth schema comes from the Alembic migrations in auth/migrations, applied programmatically."""

from __future__ import annotations

import asyncio
import sys
import uuid

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from auth import migrations
from auth.store import metadata

HEAD = "0003"


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
    assert tables == {"users", "refresh_tokens", "login_budgets", "alembic_version_auth"}
    assert versions == [HEAD]


async def test_upgrade_twice_is_a_no_op(fresh_database):
    url = fresh_database("auth")
    await asyncio.to_thread(migrations.upgrade, url)
    await asyncio.to_thread(migrations.upgrade, url)
    assert (await _inspect(url, _tables_and_version))[1] == [HEAD]


async def test_concurrent_upgrades_from_two_replicas_both_succeed(fresh_database):
    url = fresh_database("auth")
    script = "import sys; from auth.migrations import upgrade; upgrade(sys.argv[1])"
    replicas = [await asyncio.create_subprocess_exec(sys.executable, "-c", script, url) for _ in range(2)]
    assert [await replica.wait() for replica in replicas] == [0, 0]
    assert (await _inspect(url, _tables_and_version))[1] == [HEAD]


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


async def test_sessions_open_before_the_absolute_lifetime_keep_the_time_of_their_login(fresh_database):
    url = fresh_database("auth")
    await asyncio.to_thread(migrations.upgrade, url, "0001")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            user_id = await conn.scalar(
                sa.text(
                    "INSERT INTO users (name, name_key, password_hash) VALUES ('a', 'a', 'x') RETURNING id"
                )
            )
            # One family logged in ten days ago and refreshed twice since; another logged in an hour ago.
            for family, ages_h in (("11111111-1111-1111-1111-111111111111", (240, 120, 1)),
                                   ("22222222-2222-2222-2222-222222222222", (1,))):
                for age_h in ages_h:
                    await conn.execute(
                        sa.text(
                            "INSERT INTO refresh_tokens "
                            "(user_id, family_id, token_hash, expires_at, created_at) "
                            "VALUES (:u, CAST(:f AS uuid), :h, now() + interval '1 day', "
                            "now() - make_interval(hours => :age))"
                        ),
                        {"u": user_id, "f": family, "h": uuid.uuid4().bytes * 2, "age": age_h},
                    )
        await asyncio.to_thread(migrations.upgrade, url)
        async with engine.connect() as conn:
            ages = (
                await conn.execute(
                    sa.text(
                        "SELECT family_id::text, round(extract(epoch FROM now() - family_started_at) / 3600) "
                        "FROM refresh_tokens GROUP BY 1, 2 ORDER BY 1"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    assert [(family[:1], int(age)) for family, age in ages] == [("1", 240), ("2", 1)]
