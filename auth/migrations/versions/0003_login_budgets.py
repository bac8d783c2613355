"""Failed-login budgets (GCRA theoretical arrival times), auth's own login throttling.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_budgets",
        # "login:name:<bucket>", "login:name-addr:<bucket>:<address>", "login:device:<bucket>": no name or
        # token in clear.
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("tat_ms", sa.BigInteger, nullable=False),
    )
    # Serves the pruning of budgets back to a full allowance.
    op.create_index("login_budgets_tat_ms_idx", "login_budgets", ["tat_ms"])


def downgrade() -> None:
    op.drop_table("login_budgets")
