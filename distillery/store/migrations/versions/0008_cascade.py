"""The confidence cascade: each small-model answer's confidence, and the route's cascade threshold

``exchanges.confidence``: the small model's confidence in its answer (``distillery.tasks.confidence``), on the rows of
calls a cascade route asked it (answered, escalated, audited); NULL elsewhere. ``routes.cascade``: the route's
threshold, confidence measure and evaluated coverage; NULL for a route whose small model answers every call it takes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exchanges") as batch:
        batch.add_column(sa.Column("confidence", sa.Float))
    with op.batch_alter_table("routes") as batch:
        batch.add_column(sa.Column("cascade", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.drop_column("cascade")
    with op.batch_alter_table("exchanges") as batch:
        batch.drop_column("confidence")
