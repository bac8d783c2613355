"""Versioned ClickHouse migrations: ``etl/migrations/NNNN_<name>.sql``, applied in order at ETL start.

A migration file holds statements each ending with ``;`` at the end of a line. Every applied migration is
recorded in ``crypto.schema_migrations`` (version, name, SHA-256 checksum of the file, applied_at), and a
recorded migration whose file has changed since is an error: schema changes go in a new file.

ClickHouse DDL is not transactional, so a crash between a statement and its record re-runs the migration on
the next start; migrations are therefore written to be re-runnable (``IF NOT EXISTS``).
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


def apply_migrations(client: Client, migrations: list[Migration]) -> list[int]:
    """Apply the migrations not yet recorded in :data:`LEDGER`, in order; return their versions.

    Blocking (clickhouse-connect): call it on the ClickHouse executor. Raises :class:`MigrationError` if a
    recorded migration's checksum differs from its file, or ClickHouse records a version this ETL does not
    have (the database was migrated by a newer ETL); ``clickhouse_connect`` errors pass through.
    """
    for statement in _LEDGER_DDL:
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
    for migration in migrations:
        if migration.version in recorded:
            _name, checksum = recorded[migration.version]
            if checksum != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} changed after it was applied "
                    f"(recorded checksum {checksum[:12]}…, file {migration.checksum[:12]}…)"
                )
            continue
        for statement in migration.statements:
            client.command(statement)
        client.insert(
            LEDGER,
            [[migration.version, migration.name, migration.checksum, datetime.now(UTC)]],
            column_names=["version", "name", "checksum", "applied_at"],
        )
        log.info("clickhouse_migration_applied", version=migration.version, name=migration.name)
        applied.append(migration.version)
    return applied
