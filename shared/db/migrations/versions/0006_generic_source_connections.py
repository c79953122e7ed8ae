"""generic source connections: credentials and options per registry entry, poll state

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 19:45:00

Until now ``source_connections`` had the first source's OAuth2 columns (``token_url``,
``external_organization_id``) as NOT NULL columns. They become that source's registry fields:
``token_url`` joins the encrypted credentials (the client secret is sent there, so it may only
change together with the secret) and ``external_organization_id`` becomes
``options["organization_id"]``. Every existing row is moved; the data step runs before any
schema change, so a row that cannot be decrypted (AIC_SECRET_KEY is not the key it was
encrypted with) stops the upgrade before anything changed.

Adds the per-connection poll state: ``poll_cursor``, ``last_polled_at``, ``last_poll_error``,
and ``source_exports.listed_payload`` (what a poll listing said about a unit, for sources whose
listing is the content).
"""
import json

from alembic import op
import sqlalchemy as sa

from shared import crypto


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# Where the moved columns go (the first source's registry entry names them the same way).
TOKEN_URL_CREDENTIAL = 'token_url'
ORGANIZATION_OPTION = 'organization_id'


def _options(value) -> dict:
    # JSON columns come back as text from some drivers when read through a lightweight table.
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value or {})


def upgrade() -> None:
    connection = op.get_bind()
    old = sa.table('source_connections', sa.column('id', sa.String),
                   sa.column('token_url', sa.String),
                   sa.column('external_organization_id', sa.String),
                   sa.column('credentials_encrypted', sa.Text),
                   sa.column('options', sa.JSON))
    moved = []
    for row in connection.execute(sa.select(old)).all():
        credentials = crypto.decrypt_json(row.credentials_encrypted)
        credentials[TOKEN_URL_CREDENTIAL] = row.token_url
        options = _options(row.options)
        options[ORGANIZATION_OPTION] = row.external_organization_id
        moved.append((row.id, crypto.encrypt_json(credentials), options))

    with op.batch_alter_table('source_connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('poll_cursor', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('last_polled_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('last_poll_error', sa.Text(), nullable=True))

    new = sa.table('source_connections', sa.column('id', sa.String),
                   sa.column('credentials_encrypted', sa.Text), sa.column('options', sa.JSON))
    for row_id, credentials_encrypted, options in moved:
        connection.execute(new.update().where(new.c.id == row_id).values(
            credentials_encrypted=credentials_encrypted, options=options))

    with op.batch_alter_table('source_connections', schema=None) as batch_op:
        batch_op.drop_column('token_url')
        batch_op.drop_column('external_organization_id')
    with op.batch_alter_table('source_exports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('listed_payload', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('source_exports', schema=None) as batch_op:
        batch_op.drop_column('listed_payload')
    with op.batch_alter_table('source_connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token_url', sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column('external_organization_id', sa.String(length=100),
                                      nullable=True))
    connection = op.get_bind()
    table = sa.table('source_connections', sa.column('id', sa.String),
                     sa.column('token_url', sa.String),
                     sa.column('external_organization_id', sa.String),
                     sa.column('credentials_encrypted', sa.Text),
                     sa.column('options', sa.JSON))
    for row in connection.execute(sa.select(table)).all():
        credentials = crypto.decrypt_json(row.credentials_encrypted)
        options = _options(row.options)
        connection.execute(table.update().where(table.c.id == row.id).values(
            token_url=credentials.pop(TOKEN_URL_CREDENTIAL, ''),
            external_organization_id=options.pop(ORGANIZATION_OPTION, ''),
            credentials_encrypted=crypto.encrypt_json(credentials), options=options))
    with op.batch_alter_table('source_connections', schema=None) as batch_op:
        batch_op.alter_column('token_url', existing_type=sa.String(length=500), nullable=False)
        batch_op.alter_column('external_organization_id',
                              existing_type=sa.String(length=100), nullable=False)
        batch_op.drop_column('last_poll_error')
        batch_op.drop_column('last_polled_at')
        batch_op.drop_column('poll_cursor')
