"""routes: per-workload routing (frontier, shadow, canary, small), its events, and who served each exchange

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exchanges") as batch:
        # frontier (also NULL: rows from before routing), small, or shadow; only frontier rows are training data.
        batch.add_column(sa.Column("served_by", sa.String(20)))
    op.create_table(
        "routes",
        sa.Column("workload", sa.String(100), primary_key=True),
        sa.Column("mode", sa.String(20), nullable=False),
        sa.Column("canary_percent", sa.Float, nullable=False),
        sa.Column("small_url", sa.String(500)),
        sa.Column("small_model", sa.String(200)),
        # What a valid small-model answer is: {"labels": [...]} (classification), {"json": true} (extraction).
        sa.Column("answer_check", sa.JSON),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "route_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workload", sa.String(100), nullable=False, index=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("from_mode", sa.String(40)),
        sa.Column("to_mode", sa.String(40), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("route_events")
    op.drop_table("routes")
    with op.batch_alter_table("exchanges") as batch:
        batch.drop_column("served_by")
