"""routes: the small model's decoding policy (vLLM's structured_outputs) replaces the answer check

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

routes = sa.table("routes", sa.column("workload", sa.String), sa.column("answer_check", sa.JSON),
                  sa.column("decoding_policy", sa.JSON))


def upgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.add_column(sa.Column("decoding_policy", sa.JSON))
    connection = op.get_bind()
    for workload, check in connection.execute(sa.select(routes.c.workload, routes.c.answer_check)).all():
        check = check or {}
        policy = ({"choice": check["labels"]} if check.get("labels")
                  else {"json_object": True} if check.get("json") else None)
        connection.execute(routes.update().where(routes.c.workload == workload).values(decoding_policy=policy))
    with op.batch_alter_table("routes") as batch:
        batch.drop_column("answer_check")


def downgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.add_column(sa.Column("answer_check", sa.JSON))
    connection = op.get_bind()
    for workload, policy in connection.execute(sa.select(routes.c.workload, routes.c.decoding_policy)).all():
        policy = policy or {}
        check = {"labels": policy["choice"]} if policy.get("choice") else {"json": True} if policy else None
        connection.execute(routes.update().where(routes.c.workload == workload).values(answer_check=check))
    with op.batch_alter_table("routes") as batch:
        batch.drop_column("decoding_policy")
