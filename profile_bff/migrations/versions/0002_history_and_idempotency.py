"""Operation history of portfolios, and stored answers of requests sent with an Idempotency-Key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coin_history",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("profiles.id", ondelete="CASCADE"), nullable=False),
        sa.Column("symbol", sa.String(20), nullable=False),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("old_quantity", sa.Numeric(38, 18), nullable=True),
        sa.Column("new_quantity", sa.Numeric(38, 18), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("operation IN ('add', 'update', 'remove')", name="coin_history_operation"),
        sa.CheckConstraint(
            "(operation = 'add' AND old_quantity IS NULL AND new_quantity IS NOT NULL)"
            " OR (operation = 'update' AND old_quantity IS NOT NULL AND new_quantity IS NOT NULL)"
            " OR (operation = 'remove' AND old_quantity IS NOT NULL AND new_quantity IS NULL)",
            name="coin_history_quantities",
        ),
    )
    # The history page query: one user's entries, newest (highest id) first.
    op.create_index("coin_history_user_newest", "coin_history", ["user_id", sa.text("id DESC")])
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("request_hash", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("body", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("idempotency_keys_expiry", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("coin_history")
