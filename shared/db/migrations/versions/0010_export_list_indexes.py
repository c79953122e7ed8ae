"""indexes for the export list in the order it is read: (organization, created_at DESC, id)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 23:40:00

The list (``shared.domain.exports.list_exports``, ``GET /api/v1/accounting-exports``) reads one
organization's exports newest first, ``ORDER BY created_at DESC, id``, a page at an offset, and
counts the matching rows for ``pagination.total``. Without an index in that order PostgreSQL read
and sorted all of the organization's rows on every request (issue 12, target 7: page 1 took
42 ms at a million rows).

- ``ix_exports_org_created`` (organization_id, created_at DESC, id): the unfiltered list and the
  ``initiated_from``/``initiated_to`` range read a page straight off it, and the count of an
  organization's rows is an index-only scan of it. The directions are the ORDER BY's (id
  ascending within one created_at), so no sort, whichever end is read.
- ``ix_exports_org_status_created`` (organization_id, status, created_at DESC, id) replaces
  ``ix_exports_org_status`` (organization_id, status), a prefix of it: the ``status`` filter
  (with or without a date range) pages and counts off it, and whatever used the old one can use
  this one.
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_exports_org_created', 'accounting_exports',
                    ['organization_id', sa.text('created_at DESC'), 'id'])
    op.create_index('ix_exports_org_status_created', 'accounting_exports',
                    ['organization_id', 'status', sa.text('created_at DESC'), 'id'])
    op.drop_index('ix_exports_org_status', table_name='accounting_exports')


def downgrade() -> None:
    op.create_index('ix_exports_org_status', 'accounting_exports', ['organization_id', 'status'])
    op.drop_index('ix_exports_org_status_created', table_name='accounting_exports')
    op.drop_index('ix_exports_org_created', table_name='accounting_exports')
