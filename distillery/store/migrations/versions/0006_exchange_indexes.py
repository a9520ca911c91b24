"""exchanges: drop the two indexes no query reads, which every captured row paid for; api_keys.workloads NOT NULL

ix_exchanges_workload is the leading column of ix_exchanges_workload_id, which serves every look-up by workload;
no query filters or sorts exchanges by created_at. Each index cost the gateway's writer ~1.6 µs of SQLite work a
row (benchmarks/gateway.py, 2026-12-02). api_keys.workloads was added nullable by 0005, which filled it for every
key; the model has always said NOT NULL (tests/test_logstore.py compares the two).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_exchanges_workload", table_name="exchanges")
    op.drop_index("ix_exchanges_created_at", table_name="exchanges")
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("workloads", existing_type=sa.JSON, nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("workloads", existing_type=sa.JSON, nullable=True)
    op.create_index("ix_exchanges_created_at", "exchanges", ["created_at"])
    op.create_index("ix_exchanges_workload", "exchanges", ["workload"])
