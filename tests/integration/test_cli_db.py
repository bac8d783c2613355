"""``crypto-mesh db current|upgrade|downgrade`` on real engines: the suite's embedded PostgreSQL (databases
named by ``--auth-url``/``--profile-url``) and chDB (``--clickhouse-url``). The same commands on a running
mesh's own databases are in test_cli_mesh.py."""

from __future__ import annotations

import asyncio

import clickhouse_connect
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import create_async_engine
from support.databases import alembic_head

from auth.migrations import VERSION_TABLE as AUTH_VERSION_TABLE
from etl.migrate import load_migrations
from launcher.cli import main

CLICKHOUSE_HEAD = f"{load_migrations()[-1].version:04d}"
AUTH_HEAD, PROFILE_HEAD = alembic_head("auth"), alembic_head("profile_bff")


@pytest.fixture
def run(tmp_path):
    """``run(*args)``: ``crypto-mesh *args`` in this process, with an empty data directory (no mesh)."""

    def invoke(*args: str):
        return CliRunner().invoke(main, list(args), env={"MESH_DATA_DIR": str(tmp_path / "mesh")})

    return invoke


def table(output: str) -> dict[str, list[str]]:
    """``db current``'s rows by database name."""
    header, *rows = output.splitlines()
    assert header.split() == ["DATABASE", "CURRENT", "HEAD", "AT", "HEAD"]
    return {row.split()[0]: row.split()[1:] for row in rows}


def tables(url: str) -> set[str]:
    async def names() -> set[str]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(names())


def test_postgres_databases_are_shown_upgraded_and_downgraded(run, fresh_database):
    auth, profile = fresh_database("auth"), fresh_database("profile")
    urls = ("--auth-url", auth, "--profile-url", profile)
    both = ("--database", "auth", "--database", "profile")

    fresh = run("db", "current", *both, *urls)
    assert fresh.exit_code == 3, fresh.output
    assert table(fresh.output) == {"auth": ["none", AUTH_HEAD, "no"], "profile": ["none", PROFILE_HEAD, "no"]}

    upgraded = run("db", "upgrade", *both, *urls)
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.output.splitlines() == [
        f"auth: at {AUTH_HEAD} (head {AUTH_HEAD})",
        f"profile: at {PROFILE_HEAD} (head {PROFILE_HEAD})",
    ]
    current = run("db", "current", *both, *urls)
    assert current.exit_code == 0, current.output
    assert table(current.output) == {
        "auth": [AUTH_HEAD, AUTH_HEAD, "yes"],
        "profile": [PROFILE_HEAD, PROFILE_HEAD, "yes"],
    }
    assert "login_budgets" in tables(auth)

    down = run("db", "downgrade", "--database", "auth", "--target", "0002", *urls)
    assert down.exit_code == 0, down.output
    assert table(run("db", "current", "--database", "auth", *urls).output)["auth"] == ["0002", AUTH_HEAD, "no"]
    assert tables(auth) == {"users", "refresh_tokens", AUTH_VERSION_TABLE}

    base = run("db", "downgrade", "--database", "profile", "--target", "base", *urls)
    assert base.exit_code == 0, base.output
    assert "coins" not in tables(profile) and "profiles" not in tables(profile)

    again = run("db", "upgrade", "--database", "auth", "--database", "profile", *urls)
    assert again.exit_code == 0, again.output
    assert table(run("db", "current", *both, *urls).output)["profile"] == [PROFILE_HEAD, PROFILE_HEAD, "yes"]


def test_an_unknown_revision_or_an_unreachable_database_is_one_clear_line(run, fresh_database):
    auth = fresh_database("auth")
    unknown = run("db", "upgrade", "--database", "auth", "--target", "0042", "--auth-url", auth)
    assert unknown.exit_code == 1
    assert (
        unknown.output.strip()
        == "Error: auth has no revision '0042' (it has 0001, 0002, 0003, base and head)"
    )
    many = run("db", "upgrade", "--target", "0002", "--auth-url", auth)
    assert many.exit_code == 2 and "needs one --database" in many.output
    nowhere = "postgresql+asyncpg://nobody@127.0.0.1:1/auth"
    unreachable = run("db", "current", "--database", "auth", "--auth-url", nowhere)
    assert unreachable.exit_code == 1 and len(unreachable.output.strip().splitlines()) == 1, (
        unreachable.output
    )
    assert unreachable.output.startswith("Error: auth: cannot read its revision: ")


def test_no_embedded_database_in_the_data_directory_is_said_so(run, tmp_path):
    result = run("db", "current", "--database", "auth")
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: no embedded PostgreSQL in {tmp_path / 'mesh' / 'postgres'} (start a mesh once with "
        "`crypto-mesh up`, or give its URL)"
    )


def test_clickhouse_migrations_go_forward_to_a_target_and_never_back(run, clickhouse_url):
    url = ("--database", "clickhouse", "--clickhouse-url", clickhouse_url)
    fresh = run("db", "current", *url)
    assert fresh.exit_code == 3 and table(fresh.output)["clickhouse"] == ["none", CLICKHOUSE_HEAD, "no"]

    first = run("db", "upgrade", "--target", "0001", *url)
    assert first.exit_code == 0, first.output
    assert table(run("db", "current", *url).output)["clickhouse"][0] == "0001"
    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    try:
        assert client.command("EXISTS TABLE crypto.market_tickers") == 1
        assert client.command("EXISTS TABLE crypto.price_seconds") == 0
    finally:
        client.close()

    head = run("db", "upgrade", *url)
    assert head.exit_code == 0, head.output
    assert head.output.splitlines()[-1] == f"clickhouse: at {CLICKHOUSE_HEAD} (head {CLICKHOUSE_HEAD})"
    assert "clickhouse_migration_applied" in head.output  # each migration as the ETL logs it
    assert run("db", "current", *url).exit_code == 0

    back = run("db", "downgrade", "--target", "0001", *url)
    assert back.exit_code == 1 and "forward-only" in back.output
    assert run("db", "upgrade", "--target", "0042", *url).output.startswith(
        "Error: clickhouse has no migration"
    )
