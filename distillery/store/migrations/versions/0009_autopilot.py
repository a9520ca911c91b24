"""The rollout autopilot: a route's autopilot switch, what the gate approved, and the evidence of its current stage

``routes.autopilot``: whether the route advances and steps back by itself (``distillery route auto``).
``routes.approval``: what the gate approved for the deployed model (its mode, the agreement evaluation measured, the
cascade, the model version); NULL before a deployment recorded one. ``routes.epoch``: counts the route's changes, so
evidence a gateway gathered at an earlier stage never lands on a later one. ``routes.evidence_*``: the sequential
test of the current stage (compared calls, agreeing calls, log-likelihood ratio), pooled over every gateway.
``route_events.evidence``: what a decision was made on.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.add_column(sa.Column("autopilot", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("approval", sa.JSON))
        batch.add_column(sa.Column("epoch", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("evidence_calls", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("evidence_agreed", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("evidence_llr", sa.Float, nullable=False, server_default="0"))
    with op.batch_alter_table("route_events") as batch:
        batch.add_column(sa.Column("evidence", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("route_events") as batch:
        batch.drop_column("evidence")
    with op.batch_alter_table("routes") as batch:
        for column in ("evidence_llr", "evidence_agreed", "evidence_calls", "epoch", "approval", "autopilot"):
            batch.drop_column(column)
