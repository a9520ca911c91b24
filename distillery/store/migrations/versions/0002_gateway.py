"""gateway: exchange uid, upstream and cost; hashed gateway API keys

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exchanges") as batch:
        # uid makes journal replay idempotent: a row replayed twice is inserted once.
        batch.add_column(sa.Column("uid", sa.String(32)))
        batch.add_column(sa.Column("upstream", sa.String(100)))
        batch.add_column(sa.Column("cost_usd", sa.Float))
        batch.create_unique_constraint("uq_exchanges_uid", ["uid"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("default_workload", sa.String(100)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    with op.batch_alter_table("exchanges") as batch:
        batch.drop_constraint("uq_exchanges_uid", type_="unique")
        batch.drop_column("cost_usd")
        batch.drop_column("upstream")
        batch.drop_column("uid")
