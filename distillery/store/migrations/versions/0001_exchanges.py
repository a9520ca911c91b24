"""exchanges table: captured request/response pairs

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "exchanges",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("workload", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", sa.String(40), nullable=False),
        sa.Column("request_messages", sa.JSON, nullable=False),
        sa.Column("request_params", sa.JSON, nullable=False),
        sa.Column("model", sa.String(200)),
        sa.Column("response_text", sa.Text),
        sa.Column("finish_reason", sa.String(40)),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("latency_ms", sa.Float),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_exchanges_workload", "exchanges", ["workload"])
    op.create_index("ix_exchanges_created_at", "exchanges", ["created_at"])
    op.create_index("ix_exchanges_workload_id", "exchanges", ["workload", "id"])


def downgrade() -> None:
    op.drop_table("exchanges")
