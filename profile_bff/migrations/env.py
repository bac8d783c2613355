"""Alembic environment of the profile database.

Run only programmatically (:meth:`profile_bff.store.ProfileStore.migrate`), which hands over an open
connection in ``config.attributes["connection"]`` and the version table name in
``config.attributes["version_table"]`` (``alembic_version_profile``, so that the profile and auth schemas
could share one database without clashing).
"""

from alembic import context

config = context.config
context.configure(
    connection=config.attributes["connection"],
    version_table=config.attributes["version_table"],
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
