"""index for the source units' list in the order it is read: (organization, created_at DESC, id)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 06:30:00

``GET /api/v1/source-exports`` (``shared.domain.sources.list_source_units``) reads one
organization's units newest first at an offset and counts them, as the export list does
(migration 0010). A feed source (TRAEDE, Brex) makes one unit per expense, so the table grows as
the exports do; with only ``ix_source_units_organization_id`` PostgreSQL read and sorted all of
an organization's units on every request.

``ix_source_units_org_created`` (organization_id, created_at DESC, id) replaces
``ix_source_units_organization_id``, a prefix of it (what used that one can use this one), so a
new unit (the webhook receiver's INSERT) still updates as many indexes as before.

A plain CREATE INDEX: it holds writes to ``source_units`` (webhook deliveries, polls) until it
is built; deliveries wait, none fails.
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_source_units_org_created', 'source_units',
                    ['organization_id', sa.text('created_at DESC'), 'id'])
    op.drop_index('ix_source_units_organization_id', table_name='source_units')


def downgrade() -> None:
    op.create_index('ix_source_units_organization_id', 'source_units', ['organization_id'])
    op.drop_index('ix_source_units_org_created', table_name='source_units')
