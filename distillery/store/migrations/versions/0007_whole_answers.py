"""exchanges: the whole answer, not only its text: the function calls and the refusal

Rows stored before have NULL in both, which reads as an answer with neither (what every earlier row was: the gateway
kept only text answers until now).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exchanges") as batch:
        batch.add_column(sa.Column("tool_calls", sa.JSON))
        batch.add_column(sa.Column("refusal", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("exchanges") as batch:
        batch.drop_column("refusal")
        batch.drop_column("tool_calls")
