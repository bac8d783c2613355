"""Alembic migrations of the profile database (run programmatically by ``ProfileStore.migrate``)."""
