"""api key scopes: what each API key may do

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 17:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# Before scopes, every key could use every operation, the status callback included. Existing keys
# keep exactly that, so an upgrade breaks no integration; keys made from now on get only what
# they are given (["exports"] unless said otherwise).
EVERYTHING_BEFORE_SCOPES = ['exports', 'callbacks']


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scopes', sa.JSON(), nullable=True))
    api_keys = sa.table('api_keys', sa.column('scopes', sa.JSON()))
    op.execute(api_keys.update().values(scopes=EVERYTHING_BEFORE_SCOPES))
    # NOT NULL without a server default: a key inserted without scopes is a bug, not a key
    # that silently gets some.
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.alter_column('scopes', existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('scopes')
