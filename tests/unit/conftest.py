"""Unit-test helpers: organizations and expenses made directly through the domain services."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pytest
import redis as redis_lib

from shared.config import get_settings
from shared.db.session import session_scope
from shared.domain import organizations
from shared.domain.expenses import ExpenseIn, ingest_expense, simple_expense_rows


@dataclass
class Org:
    id: str
    api_key: str


@pytest.fixture
def org() -> Org:
    with session_scope() as session:
        organization = organizations.create_organization(session, "Unit AS")
        # Both scopes: these tests use the status callback too (test_api.py checks the scopes).
        _, key = organizations.create_api_key(session, organization.id,
                                              scopes=["exports", "callbacks"])
        organizations.upsert_connection(
            session, organization.id, "tripletex", base_url="http://127.0.0.1:9/v2",
            credentials={"consumer_token": "c", "employee_token": "e"})
        return Org(organization.id, key)


@pytest.fixture
def make_expense(org):
    counter = iter(range(1_000_000))

    def _make(status: str = "approved", amount: str = "100.00") -> str:
        with session_scope() as session:
            expense, _ = ingest_expense(session, org.id, ExpenseIn(
                source="unit", source_ref=f"u-{next(counter)}-{id(session)}", status=status,
                description="Taxi", expense_date=date(2026, 3, 18),
                rows=simple_expense_rows(cost_account="7140", amount=amount, vat_code=None,
                                         credit_account="2930", description="Taxi")))
            return expense.id

    return _make


@pytest.fixture(autouse=True)
def sent_jobs(monkeypatch) -> list:
    """Jobs the code under test enqueued, recorded instead of sent. A unit test drives the code
    itself; a job on the shared test broker would be taken by a worker process that an
    integration test of the same session left running, and change the rows under the test."""
    import shared.jobs

    sent: list = []
    monkeypatch.setattr(shared.jobs, "send_now", sent.append)
    return sent


@pytest.fixture(autouse=True)
def _no_stale_jobs():
    """Unit tests enqueue real jobs on the test broker; drop them so no worker runs them later."""
    yield
    settings = get_settings()
    client = redis_lib.Redis.from_url(settings.redis_url)
    client.delete(settings.export_queue, settings.report_queue, settings.maintenance_queue)
    client.close()
