"""pods: covering index (tenant_id, pod_id, revision, creation_ts)

list_pods' change signature, its (pod_id, revision) list and the health loop's revision scan read only this
index instead of every (wide) pod row.

Revision ID: 0009
Revises: 0011
"""

from alembic import op


revision = '0009'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_pods_revision', 'pods', ['tenant_id', 'pod_id', 'revision', 'creation_ts'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_pods_revision', table_name='pods')
