"""source units remember the version a poll listed and items the fingerprint they were booked from

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 21:00:00

``source_units.listed_version`` (``Announcement.version``: a known unit listed with another one
may have changed after we booked it) and ``source_unit_items.content_fingerprint``
(``SourceItem.content_fingerprint``, compared when such a unit is fetched again). Both nullable:
sources that cannot tell leave them NULL, and rows from before are never re-checked.
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('source_units') as batch_op:
        batch_op.add_column(sa.Column('listed_version', sa.String(length=200), nullable=True))
    with op.batch_alter_table('source_unit_items') as batch_op:
        batch_op.add_column(sa.Column('content_fingerprint', sa.String(length=200),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('source_unit_items') as batch_op:
        batch_op.drop_column('content_fingerprint')
    with op.batch_alter_table('source_units') as batch_op:
        batch_op.drop_column('listed_version')
