"""The ClickHouse migrations in their two forms: single-node (the files as they are, byte for byte) and for a
cluster (``ETL_CLICKHOUSE_CLUSTER``: replicated tables ON CLUSTER, Distributed tables under the names queries
use). The statements are checked here as text; tests/integration/test_etl_cluster_ddl.py has ClickHouse's
own parser read every cluster statement."""

import re

import pytest

from etl import migrate
from etl.migrate import LEDGER, Migration, MigrationError, apply_migrations, cluster_statements, load_migrations

#: SHA-256 of each shipped migration file: databases record them, so a shipped file never changes.
SHIPPED = {
    1: "47dfc30d4de0426f8a4fbbbff919990d3f765f36c28a9dc5748e9f9a97feed78",
    2: "ce7888381be07725f6903d823554669d6c02319ee91083b9f5bb293a3af06917",
    3: "1e8068267121012cbb744b68afda6d59fb7ad7b35f71e29231677e2d3bd7d78e",
}
CLUSTER = "crypto_cluster"
REPLICATED = {
    "crypto.market_tickers": "ReplicatedReplacingMergeTree",
    "crypto.price_seconds": "ReplicatedReplacingMergeTree",
    "crypto.price_minutes_state": "ReplicatedAggregatingMergeTree",
}


class RecordingClient:
    """Stands in for a clickhouse-connect client: records each command and ledger insert; its ledger starts
    empty."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.inserted: list[int] = []

    def command(self, statement: str) -> None:
        self.commands.append(statement)

    def query(self, statement: str):
        assert statement.endswith(f"FROM {LEDGER}")
        return type("Result", (), {"result_rows": []})()

    def insert(self, table: str, rows, column_names) -> None:
        assert table == LEDGER
        self.inserted += [row[0] for row in rows]


@pytest.fixture(scope="module")
def migrations() -> list[Migration]:
    return load_migrations()


@pytest.fixture(scope="module")
def clustered(migrations) -> list[str]:
    return [statement for statements in cluster_statements(migrations, CLUSTER) for statement in statements]


def test_the_shipped_files_are_unchanged(migrations):
    assert {migration.version: migration.checksum for migration in migrations} == SHIPPED


def test_single_node_runs_each_file_statement_as_written(migrations):
    client = RecordingClient()
    assert apply_migrations(client, migrations) == [1, 2, 3]
    file_statements = [statement for migration in migrations for statement in migration.statements]
    assert client.commands[2:] == file_statements
    assert "ON CLUSTER" not in " ".join(client.commands)
    assert "ENGINE = MergeTree ORDER BY version" in client.commands[1]
    assert client.inserted == [1, 2, 3]


def test_a_cluster_runs_every_statement_on_the_cluster_with_a_replicated_ledger(migrations, clustered):
    client = RecordingClient()
    assert apply_migrations(client, migrations, CLUSTER) == [1, 2, 3]
    assert client.commands[2:] == clustered
    assert client.commands[0] == f"CREATE DATABASE IF NOT EXISTS crypto ON CLUSTER {CLUSTER}"
    assert f"{LEDGER} ON CLUSTER {CLUSTER}" in client.commands[1]
    assert "ReplicatedMergeTree('/clickhouse/tables/all/{database}/{table}', '{replica}')" in client.commands[1]
    assert all(f" ON CLUSTER {CLUSTER}" in statement for statement in client.commands)
    assert client.inserted == [1, 2, 3]


def test_each_table_is_replicated_under_local_and_distributed_by_symbol_under_its_own_name(clustered):
    for table, engine in REPLICATED.items():
        database, name = table.split(".")
        [local] = [s for s in clustered if s.startswith(f"CREATE TABLE IF NOT EXISTS {table}_local ")]
        assert f"ENGINE = {engine}('/clickhouse/tables/{{shard}}/{{database}}/{{table}}', '{{replica}}')" in local
        [distributed] = [s for s in clustered if s.startswith(f"CREATE TABLE IF NOT EXISTS {table} ")]
        assert distributed == (
            f"CREATE TABLE IF NOT EXISTS {table} ON CLUSTER {CLUSTER} AS {table}_local\n"
            f"ENGINE = Distributed({CLUSTER}, {database}, {name}_local, cityHash64(symbol))"
        )
    # Insert tokens are remembered by the replicated tables as the single-node ones remember them.
    assert sum("SETTINGS replicated_deduplication_window = 1000" in s for s in clustered) == 2
    assert not any("non_replicated" in s for s in clustered)
    # Every table is one of those: no plain MergeTree left on a cluster.
    engines = re.findall(r"ENGINE = (\w+)", "\n".join(clustered))
    assert set(engines) == {*REPLICATED.values(), "Distributed"}


def test_the_materialized_view_joins_the_local_tables_and_views_read_the_distributed_ones(clustered):
    [view] = [s for s in clustered if s.startswith("CREATE MATERIALIZED VIEW")]
    assert view.startswith(
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS crypto.price_minutes_mv ON CLUSTER {CLUSTER} "
        "TO crypto.price_minutes_state_local AS"
    )
    assert "FROM crypto.price_seconds_local\n" in view
    [candles] = [s for s in clustered if s.startswith("CREATE VIEW")]
    assert "FROM crypto.price_minutes_state\n" in candles


def test_a_column_added_to_a_table_is_added_to_its_local_and_distributed_tables(clustered):
    added = [s for s in clustered if s.startswith("ALTER TABLE")]
    assert added == [
        f"ALTER TABLE crypto.price_seconds{suffix} ON CLUSTER {CLUSTER} "
        "ADD COLUMN IF NOT EXISTS incomplete Bool DEFAULT false"
        for suffix in ("_local", "")
    ]


def test_a_statement_without_a_cluster_form_is_refused_before_anything_runs():
    odd = Migration(9, "odd", ("CREATE TABLE IF NOT EXISTS crypto.t (a UInt8) ENGINE = Memory",), "0" * 64)
    with pytest.raises(MigrationError, match="0009_odd has a statement with no cluster form"):
        cluster_statements([odd], CLUSTER)
    client = RecordingClient()
    with pytest.raises(MigrationError):
        apply_migrations(client, [odd], CLUSTER)
    assert client.commands == []


@pytest.mark.parametrize("name", ["", "1cluster", "a b", "c;DROP", "c'"])
def test_a_cluster_name_that_is_not_an_identifier_is_refused(name):
    with pytest.raises(ValueError, match="not an identifier"):
        migrate.cluster_name(name)
