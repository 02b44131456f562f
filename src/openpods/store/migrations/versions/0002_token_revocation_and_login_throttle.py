"""token revocation (per-user cutoff, revoked/used token ids) and login throttling

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'token_cutoffs',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('username', sa.String(length=128), nullable=False),
        sa.Column('not_before_ms', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'username'),
    )
    op.create_table(
        'used_tokens',
        sa.Column('jti', sa.String(length=128), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('jti'),
    )
    op.create_index('ix_used_tokens_expires', 'used_tokens', ['expires_at'], unique=False)
    op.create_table(
        'login_throttle',
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('next_allowed', sa.Float(), nullable=False),
        sa.Column('last_attempt', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('key'),
    )
    op.create_index('ix_login_throttle_last', 'login_throttle', ['last_attempt'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_login_throttle_last', table_name='login_throttle')
    op.drop_table('login_throttle')
    op.drop_index('ix_used_tokens_expires', table_name='used_tokens')
    op.drop_table('used_tokens')
    op.drop_table('token_cutoffs')
