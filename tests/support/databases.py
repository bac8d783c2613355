"""PostgreSQL for the tests: a new database on the session's server, and SQL run on one."""

from __future__ import annotations

import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from launcher.embedded import EmbeddedPostgres


def new_database(postgres: EmbeddedPostgres, prefix: str) -> str:
    """Create an empty database ``<prefix>_<10 hex>`` on ``postgres`` and return its asyncpg SQLAlchemy URL.
    The ``fresh_database`` fixture does the same for one test; this serves fixtures that outlive a test."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    postgres.create_database(name)
    return postgres.url(name)


async def execute_sql(database_url: str, *statements: str) -> None:
    """Run ``statements`` in order in one transaction on ``database_url`` (a SQLAlchemy URL); raises what
    the database raises."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


def alembic_head(package: str) -> str:
    """The newest revision of ``package``'s Alembic migrations (``auth``, ``profile_bff``: files
    ``<package>/migrations/versions/NNNN_*.py``), e.g. ``"0003"``."""
    versions = Path(__file__).resolve().parents[2] / package / "migrations" / "versions"
    return max(path.name[:4] for path in versions.glob("[0-9]*.py"))
