"""Versioned ClickHouse migrations: ``etl/migrations/NNNN_<name>.sql``, applied in order at ETL start.

A migration file holds statements each ending with ``;`` at the end of a line. Every applied migration is
recorded in ``crypto.schema_migrations`` (version, name, SHA-256 checksum of the file, applied_at), and a
recorded migration whose file has changed since is an error: schema changes go in a new file.

ClickHouse DDL is not transactional, so a crash between a statement and its record re-runs the migration on
the next start; migrations are therefore written to be re-runnable (``IF NOT EXISTS``).

On a ClickHouse cluster (``ETL_CLICKHOUSE_CLUSTER``: the name of a cluster of the servers' ``remote_servers``)
the same files are applied in their cluster form (:func:`cluster_statements`): every statement ``ON CLUSTER``,
each table ``crypto.T`` created as a replicated table ``crypto.T_local`` (``Replicated<engine>``, replica path
``/clickhouse/tables/{shard}/{database}/{table}``, replica ``{replica}``: macros of each server) and a
``Distributed`` table ``crypto.T`` over it, sharded by the first column of its sorting key, so every copy of a
record lands on one shard and is folded there; materialized views read and write the local tables, views and
queries the Distributed ones. The ledger is one replicated table shared by every server. The checksums are of
the files, so a file keeps its checksum in both forms (docs/ANALYTICS.md, "ClickHouse cluster").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clickhouse_connect.driver.client import Client

from crypto_mesh.logs import get_logger

log = get_logger(__name__)

#: The migrations shipped with the ETL.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Where applied migrations are recorded.
LEDGER = "crypto.schema_migrations"

_FILE_NAME = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")
# A statement ends with ";" at the end of a line; ";" inside a line (a string literal) does not split.
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)
_LEDGER_DDL = (
    "CREATE DATABASE IF NOT EXISTS crypto",
    (
        f"CREATE TABLE IF NOT EXISTS {LEDGER} (version UInt32, name String, checksum String, "
        "applied_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY version"
    ),
)


#: The ledger on a cluster: one replicated table over every server of every shard.
CLUSTER_LEDGER_DDL = (
    "CREATE DATABASE IF NOT EXISTS crypto ON CLUSTER {cluster}",
    (
        f"CREATE TABLE IF NOT EXISTS {LEDGER} ON CLUSTER {{cluster}} (version UInt32, name String, "
        "checksum String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{{database}}/{{table}}', '{{replica}}') "
        "ORDER BY version"
    ),
)
#: Suffix of the replicated table under a Distributed table of the same name.
LOCAL_SUFFIX = "_local"
#: Where a replicated table keeps its replicas' state in ClickHouse Keeper (macros of each server's config).
REPLICA_PATH = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
_CLUSTER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CREATE_DATABASE = re.compile(r"CREATE DATABASE IF NOT EXISTS (?P<database>\w+)")
_CREATE_TABLE = re.compile(
    r"CREATE TABLE IF NOT EXISTS (?P<table>\w+\.\w+)\s*(?P<columns>\(.*\))\s*"
    r"ENGINE = (?P<engine>\w*MergeTree)(?:\((?P<arguments>[^)]*)\))?(?P<rest>\s.*)",
    re.DOTALL,
)
_SORTING_KEY_FIRST = re.compile(r"\bORDER BY \(?\s*(?P<column>\w+)")
_CREATE_MATERIALIZED_VIEW = re.compile(
    r"CREATE MATERIALIZED VIEW IF NOT EXISTS (?P<view>\w+\.\w+) TO (?P<target>\w+\.\w+) AS(?P<select>\s.*)",
    re.DOTALL,
)
_CREATE_VIEW = re.compile(r"CREATE VIEW IF NOT EXISTS (?P<view>\w+\.\w+) AS(?P<select>\s.*)", re.DOTALL)
_ALTER_TABLE = re.compile(r"ALTER TABLE (?P<table>\w+\.\w+) (?P<action>ADD COLUMN .*)", re.DOTALL)
_TABLE_NAME = re.compile(r"\b\w+\.\w+\b")


class MigrationError(RuntimeError):
    """The migrations on disk and those recorded in ClickHouse disagree, or a file is malformed."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: ``version`` (the NNNN prefix), ``name``, its statements, ``checksum`` (SHA-256,
    hex)."""

    version: int
    name: str
    statements: tuple[str, ...]
    checksum: str


def split_statements(text: str) -> list[str]:
    """Statements of a migration file: the text split at each ``;`` ending a line, blank pieces dropped."""
    pieces = (piece.strip() for piece in _STATEMENT_END.split(text))
    return [piece for piece in pieces if piece and not _only_comments(piece)]


def _only_comments(piece: str) -> bool:
    return all(not line.strip() or line.lstrip().startswith("--") for line in piece.splitlines())


def cluster_name(name: str) -> str:
    """``name`` if it can stand unquoted in ``ON CLUSTER``: letters, digits and ``_``, not starting with a
    digit; otherwise ``ValueError``."""
    if not _CLUSTER_NAME.fullmatch(name):
        raise ValueError(f"ClickHouse cluster name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")
    return name


def cluster_statements(migrations: list[Migration], cluster: str) -> list[list[str]]:
    """The statements of each of ``migrations`` in their form for ``cluster`` (a cluster of the servers'
    ``remote_servers``), one list per migration, in order.

    A migration's statement becomes: ``CREATE DATABASE`` → ``ON CLUSTER``; ``CREATE TABLE crypto.T ... ENGINE =
    <E>MergeTree[(args)]`` → ``crypto.T_local`` with ``Replicated<E>MergeTree(REPLICA_PATH[, args])`` (the
    setting ``non_replicated_deduplication_window`` becoming ``replicated_deduplication_window``) and
    ``crypto.T`` as ``Distributed(cluster, db, T_local, cityHash64(<first sorting-key column>))``;
    ``CREATE MATERIALIZED VIEW ... TO`` → ``ON CLUSTER``, its target and the tables it selects from the
    local ones; ``CREATE VIEW`` → ``ON CLUSTER`` (it reads the Distributed tables); ``ALTER TABLE crypto.T ADD
    COLUMN`` → the same on ``T_local`` and on ``T``. Leading comment lines are dropped. Raises
    :class:`MigrationError` for a statement of another shape (a migration must say how it runs on a cluster
    before it ships) and ``ValueError`` for a cluster name that is not an identifier.
    """
    cluster = cluster_name(cluster)
    tables: set[str] = set()
    return [[rendered for statement in migration.statements for rendered in _on_cluster(
        _without_comments(statement), cluster, tables, migration
    )] for migration in migrations]


def _without_comments(statement: str) -> str:
    lines = statement.splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
        lines.pop(0)
    return "\n".join(lines)


def _local(table: str) -> str:
    return table + LOCAL_SUFFIX


def _on_cluster(statement: str, cluster: str, tables: set[str], migration: Migration) -> list[str]:
    """The cluster form of one statement (:func:`cluster_statements`); ``tables`` collects the replicated
    tables created so far, so later statements refer to their local tables."""
    on = f"ON CLUSTER {cluster}"
    if match := _CREATE_DATABASE.fullmatch(statement):
        return [f"CREATE DATABASE IF NOT EXISTS {match['database']} {on}"]
    if match := _CREATE_TABLE.fullmatch(statement):
        table, engine, rest = match["table"], match["engine"], match["rest"]
        key = _SORTING_KEY_FIRST.search(rest)
        if key is None:
            raise MigrationError(f"migration {migration.version:04d}: {table} has no ORDER BY to shard by")
        arguments = REPLICA_PATH + (f", {match['arguments']}" if match["arguments"] else "")
        rest = rest.replace("non_replicated_deduplication_window", "replicated_deduplication_window")
        database, name = table.split(".")
        tables.add(table)
        return [
            f"CREATE TABLE IF NOT EXISTS {_local(table)} {on}\n{match['columns']}\n"
            f"ENGINE = Replicated{engine}({arguments}){rest}",
            f"CREATE TABLE IF NOT EXISTS {table} {on} AS {_local(table)}\n"
            f"ENGINE = Distributed({cluster}, {database}, {_local(name)}, cityHash64({key['column']}))",
        ]
    if match := _CREATE_MATERIALIZED_VIEW.fullmatch(statement):
        select = _TABLE_NAME.sub(lambda name: _local(name[0]) if name[0] in tables else name[0], match["select"])
        target = match["target"]
        if target not in tables:
            raise MigrationError(f"migration {migration.version:04d}: {match['view']} writes to {target}, "
                                 "which no migration creates")
        return [f"CREATE MATERIALIZED VIEW IF NOT EXISTS {match['view']} {on} TO {_local(target)} AS{select}"]
    if match := _CREATE_VIEW.fullmatch(statement):
        return [f"CREATE VIEW IF NOT EXISTS {match['view']} {on} AS{match['select']}"]
    if (match := _ALTER_TABLE.fullmatch(statement)) and match["table"] in tables:
        table, action = match["table"], match["action"]
        return [f"ALTER TABLE {_local(table)} {on} {action}", f"ALTER TABLE {table} {on} {action}"]
    raise MigrationError(
        f"migration {migration.version:04d}_{migration.name} has a statement with no cluster form: "
        f"{statement.splitlines()[0][:80]!r}"
    )


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations of ``directory`` in version order.

    Raises :class:`MigrationError` for a ``.sql`` file not named ``NNNN_<name>.sql``, two files with one
    version, or a file without statements.
    """
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name!r} is not named NNNN_<name>.sql")
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(f"two migration files have version {version}")
        data = path.read_bytes()
        statements = tuple(split_statements(data.decode()))
        if not statements:
            raise MigrationError(f"migration file {path.name!r} has no statement")
        migrations[version] = Migration(version, match["name"], statements, hashlib.sha256(data).hexdigest())
    return [migrations[version] for version in sorted(migrations)]


def apply_migrations(client: Client, migrations: list[Migration], cluster: str | None = None) -> list[int]:
    """Apply the migrations not yet recorded in :data:`LEDGER`, in order; return their versions. With
    ``cluster``, in their form for that cluster (:func:`cluster_statements`), the ledger replicated.

    Blocking (clickhouse-connect): call it on the ClickHouse executor. Raises :class:`MigrationError` if a
    recorded migration's checksum differs from its file, or ClickHouse records a version this ETL does not
    have (the database was migrated by a newer ETL); ``clickhouse_connect`` errors pass through.
    """
    if cluster is None:
        ledger_ddl, statements = _LEDGER_DDL, [list(migration.statements) for migration in migrations]
    else:
        ledger_ddl = tuple(statement.format(cluster=cluster_name(cluster)) for statement in CLUSTER_LEDGER_DDL)
        statements = cluster_statements(migrations, cluster)
    for statement in ledger_ddl:
        client.command(statement)
    recorded = {
        version: (name, checksum)
        for version, name, checksum in client.query(
            f"SELECT version, name, checksum FROM {LEDGER}"
        ).result_rows
    }
    known = {migration.version for migration in migrations}
    unknown = sorted(set(recorded) - known)
    if unknown:
        raise MigrationError(f"ClickHouse has migrations {unknown} that this ETL does not know")
    applied = []
    for migration, migration_statements in zip(migrations, statements, strict=True):
        if migration.version in recorded:
            _name, checksum = recorded[migration.version]
            if checksum != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} changed after it was applied "
                    f"(recorded checksum {checksum[:12]}…, file {migration.checksum[:12]}…)"
                )
            continue
        for statement in migration_statements:
            client.command(statement)
        client.insert(
            LEDGER,
            [[migration.version, migration.name, migration.checksum, datetime.now(UTC)]],
            column_names=["version", "name", "checksum", "applied_at"],
        )
        log.info("clickhouse_migration_applied", version=migration.version, name=migration.name)
        applied.append(migration.version)
    return applied
