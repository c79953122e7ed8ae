"""findity sources

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 19:52:13.846402
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('source_connections',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('organization_id', sa.String(length=40), nullable=False),
    sa.Column('source_system', sa.String(length=40), nullable=False),
    sa.Column('base_url', sa.String(length=500), nullable=False),
    sa.Column('token_url', sa.String(length=500), nullable=False),
    sa.Column('external_organization_id', sa.String(length=100), nullable=False),
    sa.Column('credentials_encrypted', sa.Text(), nullable=False),
    sa.Column('webhook_token', sa.String(length=64), nullable=False),
    sa.Column('webhook_secret_encrypted', sa.Text(), nullable=True),
    sa.Column('target_system', sa.String(length=40), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('organization_id', 'source_system'),
    sa.UniqueConstraint('webhook_token')
    )
    with op.batch_alter_table('source_connections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_source_connections_organization_id'), ['organization_id'], unique=False)

    op.create_table('source_exports',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('organization_id', sa.String(length=40), nullable=False),
    sa.Column('source_connection_id', sa.String(length=40), nullable=False),
    sa.Column('external_export_id', sa.String(length=100), nullable=False),
    sa.Column('status', sa.String(length=30), nullable=False),
    sa.Column('received_via', sa.String(length=20), nullable=False),
    sa.Column('verification_lists_type', sa.String(length=40), nullable=True),
    sa.Column('voucher_count', sa.Integer(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.ForeignKeyConstraint(['source_connection_id'], ['source_connections.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source_connection_id', 'external_export_id')
    )
    with op.batch_alter_table('source_exports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_source_exports_organization_id'), ['organization_id'], unique=False)

    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('source_connection_id', sa.String(length=40), nullable=False),
    sa.Column('external_export_id', sa.String(length=100), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('duplicate', sa.Boolean(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['source_connection_id'], ['source_connections.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_source_connection_id'), ['source_connection_id'], unique=False)

    op.create_table('source_vouchers',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('source_export_id', sa.String(length=40), nullable=False),
    sa.Column('external_voucher_id', sa.String(length=100), nullable=False),
    sa.Column('expense_id', sa.String(length=40), nullable=True),
    sa.Column('export_id', sa.String(length=40), nullable=True),
    sa.Column('outcome_error', sa.Text(), nullable=True),
    sa.Column('reported_status', sa.String(length=20), nullable=True),
    sa.Column('reported_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('report_payload', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['expense_id'], ['expenses.id'], ),
    sa.ForeignKeyConstraint(['export_id'], ['accounting_exports.id'], ),
    sa.ForeignKeyConstraint(['source_export_id'], ['source_exports.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source_export_id', 'external_voucher_id')
    )
    with op.batch_alter_table('source_vouchers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_source_vouchers_source_export_id'), ['source_export_id'], unique=False)

    with op.batch_alter_table('accounting_exports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('external_number', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('source_export_id', sa.String(length=40), nullable=True))
        batch_op.create_index(batch_op.f('ix_accounting_exports_source_export_id'), ['source_export_id'], unique=False)
        batch_op.create_foreign_key('fk_accounting_exports_source_export_id', 'source_exports', ['source_export_id'], ['id'])



def downgrade() -> None:
    with op.batch_alter_table('accounting_exports', schema=None) as batch_op:
        batch_op.drop_constraint('fk_accounting_exports_source_export_id', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_accounting_exports_source_export_id'))
        batch_op.drop_column('source_export_id')
        batch_op.drop_column('external_number')

    with op.batch_alter_table('source_vouchers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_source_vouchers_source_export_id'))

    op.drop_table('source_vouchers')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_source_connection_id'))

    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('source_exports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_source_exports_organization_id'))

    op.drop_table('source_exports')
    with op.batch_alter_table('source_connections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_source_connections_organization_id'))

    op.drop_table('source_connections')
