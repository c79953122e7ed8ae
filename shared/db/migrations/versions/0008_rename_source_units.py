"""rename: a source's package is a "source unit", so that "export" means only our accounting export

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 20:10:00

source_exports -> source_units, source_vouchers -> source_unit_items,
accounting_exports.source_export_id and source_unit_items.source_export_id -> source_unit_id, and
their indexes. Renames only: every row and every foreign key stays (PostgreSQL and SQLite 3.26+
carry foreign keys along with a renamed table or column).
"""
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# (table, old column, new column); the index on each column is renamed with it.
COLUMNS = (('accounting_exports', 'source_export_id', 'source_unit_id'),
           ('source_unit_items', 'source_export_id', 'source_unit_id'))


def upgrade() -> None:
    op.drop_index('ix_source_exports_organization_id', table_name='source_exports')
    op.drop_index('ix_source_vouchers_source_export_id', table_name='source_vouchers')
    op.drop_index('ix_accounting_exports_source_export_id', table_name='accounting_exports')
    op.rename_table('source_exports', 'source_units')
    op.rename_table('source_vouchers', 'source_unit_items')
    for table, old, new in COLUMNS:
        op.alter_column(table, old, new_column_name=new)
        op.create_index(f'ix_{table}_{new}', table, [new], unique=False)
    op.create_index('ix_source_units_organization_id', 'source_units', ['organization_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_source_units_organization_id', table_name='source_units')
    for table, old, new in COLUMNS:
        op.drop_index(f'ix_{table}_{new}', table_name=table)
        op.alter_column(table, new, new_column_name=old)
    op.rename_table('source_unit_items', 'source_vouchers')
    op.rename_table('source_units', 'source_exports')
    op.create_index('ix_accounting_exports_source_export_id', 'accounting_exports',
                    ['source_export_id'], unique=False)
    op.create_index('ix_source_vouchers_source_export_id', 'source_vouchers',
                    ['source_export_id'], unique=False)
    op.create_index('ix_source_exports_organization_id', 'source_exports', ['organization_id'],
                    unique=False)
