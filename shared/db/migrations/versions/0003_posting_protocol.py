"""posting protocol: the deadline of the POST an attempt sent; receipt upload started

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 16:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('accounting_exports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('post_deadline_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('receipt_upload_started_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('accounting_exports', schema=None) as batch_op:
        batch_op.drop_column('receipt_upload_started_at')
        batch_op.drop_column('post_deadline_at')
