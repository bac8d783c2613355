"""The start of each refresh-token family, which bounds a session's absolute lifetime.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("refresh_tokens", sa.Column("family_started_at", sa.DateTime(timezone=True), nullable=True))
    # A family's first token was issued at its login: sessions already open keep their true age.
    op.execute(
        """
        UPDATE refresh_tokens AS token
        SET family_started_at = family.started_at
        FROM (
            SELECT family_id, min(created_at) AS started_at FROM refresh_tokens GROUP BY family_id
        ) AS family
        WHERE token.family_id = family.family_id
        """
    )
    op.alter_column("refresh_tokens", "family_started_at", nullable=False)


def downgrade() -> None:
    op.drop_column("refresh_tokens", "family_started_at")
