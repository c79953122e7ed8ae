"""source report state: what the source was told, the report on the wire, notes, receipt time

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 10:00:00

Written next to 0004 (API key scopes) and chained after it at merge; it touches only
source_vouchers and source_exports.
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('source_vouchers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reported_number', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('report_in_flight', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('report_error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('note', sa.Text(), nullable=True))
    with op.batch_alter_table('source_exports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('received_at', sa.DateTime(timezone=True), nullable=True))
    # Vouchers reported before this migration: their number is in the payload we sent.
    source_vouchers = sa.table('source_vouchers', sa.column('id', sa.Integer),
                               sa.column('reported_status', sa.String),
                               sa.column('reported_number', sa.String),
                               sa.column('report_payload', sa.JSON))
    connection = op.get_bind()
    rows = connection.execute(sa.select(source_vouchers.c.id, source_vouchers.c.report_payload)
                              .where(source_vouchers.c.reported_status == 'SUCCESS')).all()
    for row_id, payload in rows:
        number = (payload or {}).get('voucherNumber')
        if number is not None:
            connection.execute(source_vouchers.update().where(source_vouchers.c.id == row_id)
                               .values(reported_number=str(number)))


def downgrade() -> None:
    with op.batch_alter_table('source_exports', schema=None) as batch_op:
        batch_op.drop_column('received_at')
    with op.batch_alter_table('source_vouchers', schema=None) as batch_op:
        batch_op.drop_column('note')
        batch_op.drop_column('report_error')
        batch_op.drop_column('report_in_flight')
        batch_op.drop_column('reported_number')
