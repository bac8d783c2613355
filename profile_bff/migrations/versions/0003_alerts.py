"""Alert rules, their evaluation state, their firings, and alert entries in the history.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_HISTORY_OPERATIONS = ("add", "update", "remove", "alert_create", "alert_pause", "alert_resume", "alert_delete")


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("profiles.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("symbol", sa.String(20), nullable=True),
        sa.Column("threshold", sa.Numeric(38, 18), nullable=False),
        sa.Column("window_s", sa.Integer, nullable=True),
        sa.Column("repeat", sa.Text, nullable=False),
        sa.Column("cooldown_s", sa.Integer, nullable=False),
        sa.Column("webhook_url", sa.Text, nullable=True),
        sa.Column("webhook_secret", sa.Text, nullable=True),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "kind IN ('price_above', 'price_below', 'change_percent', 'portfolio_total_above',"
            " 'portfolio_total_below')",
            name="alert_rules_kind",
        ),
        sa.CheckConstraint("repeat IN ('once', 'every_crossing')", name="alert_rules_repeat"),
    )
    op.create_index("alert_rules_user", "alert_rules", ["user_id", "id"])
    # The evaluator's state of each rule: its last evaluation and last firing (profile_bff/crossing.py). No
    # foreign key: the evaluator may still store the state of a rule deleted meanwhile (deleted with it).
    op.create_table(
        "alert_states",
        sa.Column("rule_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("second", sa.BigInteger, nullable=True),
        sa.Column("side", sa.Boolean, nullable=True),
        sa.Column("fired_second", sa.BigInteger, nullable=True),
        sa.Column("done", sa.Boolean, nullable=False),
    )
    # No foreign keys: a firing outlives its rule, and the evaluator never fails on a rule deleted meanwhile.
    op.create_table(
        "alert_firings",
        sa.Column("alert_id", sa.Uuid, primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False, unique=True),
        sa.Column("rule_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("symbol", sa.String(20), nullable=False),
        sa.Column("price", sa.Numeric(38, 18), nullable=False),
        sa.Column("value", sa.Numeric(60, 18), nullable=False),
        sa.Column("second", sa.BigInteger, nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("webhook_url", sa.Text, nullable=True),
        sa.Column("webhook_state", sa.Text, nullable=False),
        sa.Column("webhook_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("webhook_next_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "webhook_state IN ('none', 'pending', 'delivered', 'failed')", name="alert_firings_webhook_state"
        ),
    )
    op.create_index("alert_firings_user_newest", "alert_firings", ["user_id", sa.text("seq DESC")])
    op.create_index(
        "alert_firings_unpublished", "alert_firings", ["seq"], postgresql_where=sa.text("NOT published")
    )
    op.create_index(
        "alert_firings_webhooks_due",
        "alert_firings",
        ["webhook_next_at"],
        postgresql_where=sa.text("webhook_state = 'pending'"),
    )
    # The latest close of each symbol and the closes of symbols with change_percent rules, as the evaluator
    # saw them: a restarted evaluator carries on with them.
    op.create_table(
        "alert_prices",
        sa.Column("symbol", sa.String(20), primary_key=True),
        sa.Column("second", sa.BigInteger, nullable=False),
        sa.Column("close", sa.Numeric(38, 18), nullable=False),
    )
    op.create_table(
        "alert_closes",
        sa.Column("symbol", sa.String(20), primary_key=True),
        sa.Column("second", sa.BigInteger, primary_key=True),
        sa.Column("close", sa.Numeric(38, 18), nullable=False),
    )
    # History: alert rule changes too (symbol null for portfolio rules, the rule in alert_id).
    op.add_column("coin_history", sa.Column("alert_id", sa.BigInteger, nullable=True))
    op.alter_column("coin_history", "symbol", nullable=True)
    op.drop_constraint("coin_history_operation", "coin_history", type_="check")
    op.drop_constraint("coin_history_quantities", "coin_history", type_="check")
    op.create_check_constraint(
        "coin_history_operation",
        "coin_history",
        "operation IN (" + ", ".join(f"'{name}'" for name in _HISTORY_OPERATIONS) + ")",
    )
    op.create_check_constraint(
        "coin_history_quantities",
        "coin_history",
        "(operation = 'add' AND old_quantity IS NULL AND new_quantity IS NOT NULL AND symbol IS NOT NULL)"
        " OR (operation = 'update' AND old_quantity IS NOT NULL AND new_quantity IS NOT NULL"
        " AND symbol IS NOT NULL)"
        " OR (operation = 'remove' AND old_quantity IS NOT NULL AND new_quantity IS NULL AND symbol IS NOT NULL)"
        " OR (operation LIKE 'alert_%' AND alert_id IS NOT NULL AND old_quantity IS NULL AND new_quantity IS NULL)",
    )


def downgrade() -> None:
    op.execute("DELETE FROM coin_history WHERE operation LIKE 'alert_%'")
    op.drop_constraint("coin_history_quantities", "coin_history", type_="check")
    op.drop_constraint("coin_history_operation", "coin_history", type_="check")
    op.create_check_constraint(
        "coin_history_operation", "coin_history", "operation IN ('add', 'update', 'remove')"
    )
    op.create_check_constraint(
        "coin_history_quantities",
        "coin_history",
        "(operation = 'add' AND old_quantity IS NULL AND new_quantity IS NOT NULL)"
        " OR (operation = 'update' AND old_quantity IS NOT NULL AND new_quantity IS NOT NULL)"
        " OR (operation = 'remove' AND old_quantity IS NOT NULL AND new_quantity IS NULL)",
    )
    op.alter_column("coin_history", "symbol", nullable=False)
    op.drop_column("coin_history", "alert_id")
    for table in ("alert_closes", "alert_prices", "alert_firings", "alert_states", "alert_rules"):
        op.drop_table(table)
