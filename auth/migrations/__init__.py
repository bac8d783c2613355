"""Alembic migrations of the auth database; applied by :func:`auth.migrations.upgrade` at service start."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config

#: Alembic's version table for this service, named apart from other services' tables in a shared database.
VERSION_TABLE = "alembic_version_auth"

_HERE = Path(__file__).resolve().parent
# Alembic keeps the running migration context in a module global, so one process runs one upgrade at a time;
# separate processes (replicas) are serialised by the advisory lock in env.py.
_UPGRADE_LOCK = threading.Lock()


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration built in code (no alembic.ini) for the database at ``database_url``.

    The URL travels in ``Config.attributes`` rather than a main option, so that ``%`` in a password needs
    no configparser escaping and the URL is never written anywhere.
    """
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``. Blocking: ``env.py`` runs its own event loop, so call this in
    a worker thread (``asyncio.to_thread``) from async code. Raises what the database driver raises."""
    with _UPGRADE_LOCK:
        command.upgrade(alembic_config(database_url), revision)
