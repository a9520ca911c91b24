"""api_keys: a key writes only to the workloads of its scope (or to all, for trusted importers)

Each key's default workload becomes its scope; a key without one was writing to the default
workload, so that is its scope now (create a new key with --all-workloads where more is meant).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DEFAULT_WORKLOAD = "default"  # distillery.settings.DEFAULT_WORKLOAD when this revision was written

api_keys = sa.table("api_keys", sa.column("id", sa.Integer), sa.column("default_workload", sa.String),
                    sa.column("workloads", sa.JSON), sa.column("all_workloads", sa.Boolean))


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("workloads", sa.JSON))
        batch.add_column(sa.Column("all_workloads", sa.Boolean, nullable=False, server_default=sa.false()))
    connection = op.get_bind()
    for key_id, workload in connection.execute(sa.select(api_keys.c.id, api_keys.c.default_workload)).all():
        connection.execute(api_keys.update().where(api_keys.c.id == key_id)
                           .values(workloads=[workload or DEFAULT_WORKLOAD]))
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("default_workload")


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("default_workload", sa.String(100)))
    connection = op.get_bind()
    for key_id, workloads in connection.execute(sa.select(api_keys.c.id, api_keys.c.workloads)).all():
        connection.execute(api_keys.update().where(api_keys.c.id == key_id)
                           .values(default_workload=(workloads or [None])[0]))
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("all_workloads")
        batch.drop_column("workloads")
