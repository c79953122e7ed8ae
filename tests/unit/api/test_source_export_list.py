"""The source units' list (``GET /api/v1/source-exports``): the same order, pages and totals as
the export list (shared/db/paging.py), the lookup by reference, and how it reads the database on
PostgreSQL (off ``ix_source_units_org_created``, migration 0011).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from producers.api.app import create_app
from shared.db.models import SourceUnit
from shared.db.session import get_engine, session_scope
from shared.domain import organizations, sources
from tests.unit.api.plans import explained, statements_sent

BASE = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
URL = "/api/v1/source-exports"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(), raise_server_exceptions=False) as test_client:
        yield test_client


def _connection(session, org_id: str):
    return sources.upsert_source_connection(
        session, org_id, "findity", base_url="http://127.0.0.1:9/api",
        credentials={"client_id": "c", "client_secret": "s",
                     "token_url": "http://127.0.0.1:9/token"},
        options={"organization_id": f"f-{org_id}"}, target_system="tripletex")


@pytest.fixture
def listed(org):
    """10 units of ``org`` a day apart except two pairs that share a timestamp, and one unit of
    another organization with the same reference as one of them. Returns the ids in order."""
    days = [0, 1, 1, 2, 3, 4, 5, 5, 6, 7]
    with session_scope() as session:
        connection = _connection(session, org.id)
        ids = [sources.announce_unit(session, connection, f"pkg-{n}", via="webhook")[0].id
               for n in range(len(days))]
        other = organizations.create_organization(session, "Other AS")
        stranger = sources.announce_unit(session, _connection(session, other.id), "pkg-3",
                                         via="webhook")[0].id
        for unit_id, day in zip(ids, days):
            session.execute(update(SourceUnit).where(SourceUnit.id == unit_id)
                            .values(created_at=BASE + timedelta(days=day)))
    order = [i for i, _ in sorted(zip(ids, days), key=lambda pair: (-pair[1], pair[0]))]
    return {"order": order, "ref": dict(zip(ids, (f"pkg-{n}" for n in range(len(days))))),
            "stranger": stranger}


def _auth(org) -> dict:
    return {"Authorization": f"Bearer {org.api_key}"}


def test_pages_walk_the_units_newest_first_ties_by_id(client, org, listed):
    for limit in (1, 3, 20):
        ids, page = [], 1
        while True:
            body = client.get(URL, headers=_auth(org), params={"page": page, "limit": limit})
            body = body.json()
            assert body["pagination"] == {"page": page, "limit": limit, "total": 10}
            if not body["data"]:
                break
            ids += [row["source_export_id"] for row in body["data"]]
            page += 1
        assert ids == listed["order"]


def test_the_lookup_by_reference_finds_only_the_callers_unit(client, org, listed):
    body = client.get(URL, headers=_auth(org), params={"source_export_ref": "pkg-3"}).json()
    mine = [i for i, ref in listed["ref"].items() if ref == "pkg-3"]
    assert [row["source_export_id"] for row in body["data"]] == mine != [listed["stranger"]]
    assert body["pagination"]["total"] == 1
    body = client.get(URL, headers=_auth(org), params={"source_export_ref": "nope"}).json()
    assert body == {"data": [], "pagination": {"page": 1, "limit": 20, "total": 0}}


def _plans(org_id: str) -> list[str]:
    def list_page() -> None:
        with session_scope() as session:
            sources.list_source_units(session, org_id, page=2, limit=3)

    statements = statements_sent(list_page)
    assert len(statements) == 2  # the count, the page
    return explained(statements)


def test_postgres_pages_units_off_the_index_without_sorting(org, listed):
    """EXPLAIN of the list's statements: the count and the page's ids off the list's index, no
    sort of the organization's units, no sequential scan (told to avoid one, which a table of a
    dozen rows would otherwise prefer). Which index the lookup by reference takes depends on the
    table's statistics: ``bench.list_pages`` times it at a million units."""
    if get_engine().dialect.name != "postgresql":
        pytest.skip("the plan is PostgreSQL's (CI); SQLite's planner is not the one that counts")
    count_plan, page_plan = _plans(org.id)
    # The count may read the index as a bitmap (the planner's choice on a small table); the
    # page must walk it in order ("Index ... Scan using"), or the organization's units are sorted.
    assert "ix_source_units_org_created" in count_plan, count_plan
    assert "using ix_source_units_org_created" in page_plan.lower(), page_plan
    for plan in (count_plan, page_plan):
        assert "Seq Scan on source_units" not in plan, plan
    assert "Sort" not in count_plan, count_plan
    assert "Sort" not in page_plan.split("Limit", 1)[1], page_plan
