"""source unit events: the log of every source unit's status changes and steps

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 20:00:00

A source unit's status now changes only through shared.domain.source_units.transition_unit,
which writes one row here per change; existing units start with no history.
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'source_unit_events',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('unit_id', sa.String(length=40), nullable=False),
        sa.Column('kind', sa.String(length=40), nullable=False),
        sa.Column('from_status', sa.String(length=30), nullable=True),
        sa.Column('to_status', sa.String(length=30), nullable=True),
        sa.Column('actor', sa.String(length=100), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('data', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['unit_id'], ['source_exports.id'], ),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('source_unit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_source_unit_events_unit_id'), ['unit_id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('source_unit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_source_unit_events_unit_id'))
    op.drop_table('source_unit_events')
