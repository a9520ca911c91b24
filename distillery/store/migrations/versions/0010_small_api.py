"""The small model's API: chat completions, or a pooling server's classify route

``routes.small_api``: how the gateway asks the route's small model. ``chat``: OpenAI chat completions (the local
model server, vLLM serving a generative student). ``classify``: vLLM's ``POST /classify`` (a classifier student served
by vLLM as a pooling model; its answer is the label, its confidence the label's probability).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.add_column(sa.Column("small_api", sa.String(20), nullable=False, server_default="chat"))


def downgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.drop_column("small_api")
