"""Migrations on a database that already holds rows (the test database is migrated empty)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from shared.db.migrate import upgrade


def test_0004_gives_existing_api_keys_both_scopes(tmp_path):
    """Keys made before scopes could use the status callback; after the upgrade they still can
    (an upgrade breaks no integration). New keys get ["exports"] (tests/unit/api/test_api.py)."""
    url = f"sqlite:///{tmp_path / 'upgrade.db'}"
    upgrade(url, "0003")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO organizations (id, name, created_at) "
                                "VALUES ('org_old', 'Old AS', '2026-01-01 00:00:00')"))
        connection.execute(text(
            "INSERT INTO api_keys (id, organization_id, name, key_hash, key_prefix, created_at) "
            "VALUES ('key_old', 'org_old', 'default', 'h', 'aic_x', '2026-01-01 00:00:00')"))
    upgrade(url, "head")
    with engine.connect() as connection:
        scopes = connection.execute(text("SELECT scopes FROM api_keys")).scalars().all()
    assert [json.loads(s) for s in scopes] == [["exports", "callbacks"]]
    # No server default: a key inserted without scopes is refused, not silently given some.
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO api_keys (id, organization_id, name, key_hash, key_prefix, created_at) "
            "VALUES ('key_new', 'org_old', 'default', 'h2', 'aic_y', '2026-01-01 00:00:00')"))
    engine.dispose()


def test_0006_moves_source_connection_columns_into_credentials_and_options(tmp_path):
    """Findity's token_url and external organization id leave their NOT NULL columns for the
    connection's encrypted credentials and its options, without loss: the worker builds the
    same client after the upgrade. A downgrade puts them back."""
    from alembic import command

    from shared import crypto
    from shared.db.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'upgrade.db'}"
    upgrade(url, "0005")
    engine = create_engine(url)
    credentials = crypto.encrypt_json({"client_id": "cid", "client_secret": "s3cret"})
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO organizations (id, name, created_at) "
                                "VALUES ('org_old', 'Old AS', '2026-01-01 00:00:00')"))
        connection.execute(text(
            "INSERT INTO source_connections (id, organization_id, source_system, base_url, "
            "token_url, external_organization_id, credentials_encrypted, webhook_token, "
            "target_system, options, created_at, updated_at) VALUES ('src_old', 'org_old', "
            "'findity', 'https://api.findity.example/api', 'https://auth.findity.example/token', "
            "'f-org-1', :credentials, 'tok_123456789012345678', 'tripletex', "
            "'{\"content_file\": \"sie4\"}', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"),
            {"credentials": credentials})
    upgrade(url, "0006")
    with engine.connect() as connection:
        row = connection.execute(text(
            "SELECT base_url, credentials_encrypted, options, poll_cursor, last_polled_at, "
            "last_poll_error, webhook_token FROM source_connections")).one()
        columns = {c["name"] for c in inspect(connection).get_columns("source_connections")}
    assert crypto.decrypt_json(row.credentials_encrypted) == {
        "client_id": "cid", "client_secret": "s3cret",
        "token_url": "https://auth.findity.example/token"}
    assert json.loads(row.options) == {"content_file": "sie4", "organization_id": "f-org-1"}
    assert (row.base_url, row.webhook_token) == ("https://api.findity.example/api",
                                                 "tok_123456789012345678")
    assert (row.poll_cursor, row.last_polled_at, row.last_poll_error) == (None, None, None)
    assert not {"token_url", "external_organization_id"} & columns

    command.downgrade(alembic_config(url), "0005")
    with engine.connect() as connection:
        row = connection.execute(text(
            "SELECT token_url, external_organization_id, credentials_encrypted, options "
            "FROM source_connections")).one()
    assert (row.token_url, row.external_organization_id) == (
        "https://auth.findity.example/token", "f-org-1")
    assert crypto.decrypt_json(row.credentials_encrypted) == {"client_id": "cid",
                                                             "client_secret": "s3cret"}
    assert json.loads(row.options) == {"content_file": "sie4"}
    engine.dispose()


def test_0008_renames_source_packages_to_source_units_without_loss(tmp_path):
    """source_exports / source_vouchers and the source_export_id columns are renamed; every
    row and every link (unit -> items -> accounting export, events) survives, both ways."""
    from alembic import command

    from shared.db.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'upgrade.db'}"
    upgrade(url, "0007")
    engine = create_engine(url)
    at = "'2026-01-01 00:00:00'"
    with engine.begin() as connection:
        for sql in (
            f"INSERT INTO organizations (id, name, created_at) VALUES ('org_1', 'Old AS', {at})",
            "INSERT INTO target_connections (id, organization_id, target_system, base_url, "
            "credentials_encrypted, account_mapping, options, created_at, updated_at) VALUES "
            f"('con_1', 'org_1', 'tripletex', 'http://t', 'x', '{{}}', '{{}}', {at}, {at})",
            "INSERT INTO source_connections (id, organization_id, source_system, base_url, "
            "credentials_encrypted, webhook_token, target_system, options, created_at, "
            f"updated_at) VALUES ('src_1', 'org_1', 'findity', 'http://f', 'x', 'tok_1', "
            f"'tripletex', '{{}}', {at}, {at})",
            "INSERT INTO source_exports (id, organization_id, source_connection_id, "
            "external_export_id, status, received_via, attempts, created_at, updated_at) "
            f"VALUES ('srcexp_1', 'org_1', 'src_1', 'exp-1', 'processing', 'webhook', 1, "
            f"{at}, {at})",
            "INSERT INTO expenses (id, organization_id, source, source_ref, status, description, "
            "expense_date, currency, amount, rows, created_at) VALUES ('exp_1', 'org_1', "
            f"'findity', 'v-1', 'approved', 'Taxi', '2026-01-01', 'NOK', 100, '[]', {at})",
            "INSERT INTO accounting_exports (id, organization_id, expense_id, connection_id, "
            "target_system, status, attempts, source_export_id, created_at, updated_at) VALUES "
            f"('aex_1', 'org_1', 'exp_1', 'con_1', 'tripletex', 'success', 1, 'srcexp_1', "
            f"{at}, {at})",
            "INSERT INTO source_vouchers (source_export_id, external_voucher_id, expense_id, "
            "export_id, reported_status) VALUES ('srcexp_1', 'v-1', 'exp_1', 'aex_1', "
            "'SUCCESS')",
            "INSERT INTO source_unit_events (unit_id, kind, actor, created_at) VALUES "
            f"('srcexp_1', 'announced', 'webhook', {at})",
        ):
            connection.execute(text(sql))
    upgrade(url, "0008")
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        linked = connection.execute(text(
            "SELECT u.external_export_id, i.external_voucher_id, i.reported_status, a.id, e.kind "
            "FROM source_units u JOIN source_unit_items i ON i.source_unit_id = u.id "
            "JOIN accounting_exports a ON a.source_unit_id = u.id "
            "JOIN source_unit_events e ON e.unit_id = u.id")).all()
        broken = connection.execute(text("PRAGMA foreign_key_check")).all()
        indexes = {i["name"] for table in ("source_units", "source_unit_items",
                                           "accounting_exports")
                   for i in inspect(connection).get_indexes(table)}
    assert {"source_units", "source_unit_items"} <= tables
    assert not {"source_exports", "source_vouchers"} & tables
    assert linked == [("exp-1", "v-1", "SUCCESS", "aex_1", "announced")]
    assert broken == []
    assert {"ix_source_units_organization_id", "ix_source_unit_items_source_unit_id",
            "ix_accounting_exports_source_unit_id"} <= indexes

    command.downgrade(alembic_config(url), "0007")
    with engine.connect() as connection:
        assert connection.execute(text(
            "SELECT a.id FROM source_exports s JOIN source_vouchers v ON v.source_export_id = s.id "
            "JOIN accounting_exports a ON a.source_export_id = s.id")).scalars().all() == ["aex_1"]
    engine.dispose()


def _scratch_database(tmp_path, suffix: str = "migration_0010"):
    """A database of this test's own on the test suite's server: a SQLite file, or on
    PostgreSQL (CI) a database next to the test one, dropped afterwards."""
    import os
    from contextlib import contextmanager

    from sqlalchemy.engine import make_url

    suite_url = os.environ.get("AIC_DATABASE_URL", "")

    @contextmanager
    def scratch():
        if not suite_url.startswith("postgresql"):
            yield f"sqlite:///{tmp_path / 'upgrade.db'}"
            return
        url = make_url(suite_url)
        name = f"{url.database}_{suffix}"
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    return scratch()


def test_0010_indexes_the_list_in_its_order_and_comes_back_down(tmp_path):
    """(organization_id, created_at DESC, id) and (organization_id, status, created_at DESC, id)
    on a table that holds rows; the second replaces (organization_id, status). Down restores it.
    On SQLite, and on PostgreSQL when the suite runs there."""
    from alembic import command

    from shared.db.migrate import alembic_config

    with _scratch_database(tmp_path) as url:
        upgrade(url, "0009")
        engine = create_engine(url)
        at = "'2026-01-01 00:00:00+00'"
        with engine.begin() as connection:
            for sql in (
                f"INSERT INTO organizations (id, name, created_at) VALUES ('org_1', 'A', {at})",
                "INSERT INTO target_connections (id, organization_id, target_system, base_url, "
                "credentials_encrypted, account_mapping, options, created_at, updated_at) VALUES "
                f"('con_1', 'org_1', 'tripletex', 'http://t', 'x', '{{}}', '{{}}', {at}, {at})",
                "INSERT INTO expenses (id, organization_id, source, source_ref, status, "
                "description, expense_date, currency, amount, rows, created_at) VALUES ('exp_1', "
                f"'org_1', 'unit', 'r-1', 'approved', 'Taxi', '2026-01-01', 'NOK', 100, '[]', {at})",
                "INSERT INTO accounting_exports (id, organization_id, expense_id, connection_id, "
                "target_system, status, attempts, created_at, updated_at) VALUES ('aex_1', "
                f"'org_1', 'exp_1', 'con_1', 'tripletex', 'failed', 1, {at}, {at})",
            ):
                connection.execute(text(sql))

        def indexes() -> dict[str, list[str]]:
            with engine.connect() as connection:
                return {i["name"]: i["column_names"]
                        for i in inspect(connection).get_indexes("accounting_exports")}

        upgrade(url, "0010")
        after = indexes()
        assert "ix_exports_org_status" not in after
        # The DESC of created_at is checked by the EXPLAIN test (tests/unit/api/
        # test_export_list.py): the page needs no sort.
        assert after["ix_exports_org_created"] == ["organization_id", "created_at", "id"]
        assert after["ix_exports_org_status_created"] == ["organization_id", "status",
                                                          "created_at", "id"]
        with engine.connect() as connection:
            assert connection.execute(text(
                "SELECT id FROM accounting_exports WHERE organization_id = 'org_1' "
                "ORDER BY created_at DESC, id")).scalars().all() == ["aex_1"]

        command.downgrade(alembic_config(url), "0009")
        before = indexes()
        assert before["ix_exports_org_status"] == ["organization_id", "status"]
        assert not {"ix_exports_org_created", "ix_exports_org_status_created"} & set(before)
        upgrade(url, "head")
        engine.dispose()


def test_0011_indexes_the_source_unit_list_in_its_order_and_comes_back_down(tmp_path):
    """(organization_id, created_at DESC, id) replaces (organization_id) on source_units, which
    holds a row; down restores it. On SQLite, and on PostgreSQL when the suite runs there."""
    from alembic import command

    from shared.db.migrate import alembic_config

    with _scratch_database(tmp_path, "migration_0011") as url:
        upgrade(url, "0010")
        engine = create_engine(url)
        at = "'2026-01-01 00:00:00+00'"
        with engine.begin() as connection:
            for sql in (
                f"INSERT INTO organizations (id, name, created_at) VALUES ('org_1', 'A', {at})",
                "INSERT INTO source_connections (id, organization_id, source_system, base_url, "
                "credentials_encrypted, webhook_token, target_system, options, created_at, "
                f"updated_at) VALUES ('src_1', 'org_1', 'findity', 'http://f', 'x', 'tok', "
                f"'tripletex', '{{}}', {at}, {at})",
                "INSERT INTO source_units (id, organization_id, source_connection_id, "
                "external_export_id, status, received_via, attempts, created_at, updated_at) "
                f"VALUES ('su_1', 'org_1', 'src_1', 'pkg-1', 'received', 'webhook', 0, {at}, {at})",
            ):
                connection.execute(text(sql))

        def indexes() -> dict[str, list[str]]:
            with engine.connect() as connection:
                return {i["name"]: i["column_names"]
                        for i in inspect(connection).get_indexes("source_units")}

        upgrade(url, "0011")
        after = indexes()
        assert "ix_source_units_organization_id" not in after
        # The DESC is checked by the EXPLAIN test (tests/unit/api/test_source_export_list.py).
        assert after["ix_source_units_org_created"] == ["organization_id", "created_at", "id"]

        command.downgrade(alembic_config(url), "0010")
        before = indexes()
        assert before["ix_source_units_organization_id"] == ["organization_id"]
        assert "ix_source_units_org_created" not in before
        upgrade(url, "head")
        engine.dispose()
