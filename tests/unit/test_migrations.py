"""Migrations on a database that already holds rows (the test database is migrated empty)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, text
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
