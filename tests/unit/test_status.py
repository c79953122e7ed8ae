"""`aic status` / GET /api/v1/admin/status: what an operator sees at a glance.

The unit-test database is shared by the session, so the figures are checked as differences."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import redis as redis_lib
from sqlalchemy import update

from producers.cli import main
from shared.config import get_settings
from shared.db.clock import database_now
from shared.db.models import AccountingExport
from shared.db.session import session_scope
from shared.domain import exports
from shared.domain.overview import export_status
from shared.queue import broker_overview


def _export(org, make_expense, **fields) -> str:
    with session_scope() as session:
        export = exports.create_export(session, org.id, make_expense(), "tripletex", actor="t")
        for name, value in fields.items():
            setattr(export, name, value)
        return export.id


@pytest.fixture(autouse=True)
def _nothing_left_stuck(org):
    """The sweeper's own tests count what they re-queue: leave none of ours in processing."""
    yield
    with session_scope() as session:
        session.execute(update(AccountingExport).where(
            AccountingExport.organization_id == org.id,
            AccountingExport.status == "processing").values(status="cancelled"))


def _status():
    with session_scope() as session:
        return export_status(session)


def test_status_counts_stuck_in_doubt_failures_and_troubled_connections(org, make_expense):
    before = _status()
    with session_scope() as session:
        now = database_now(session)
    long_ago = datetime(2001, 1, 1, tzinfo=timezone.utc)
    oldest = _export(org, make_expense, created_at=long_ago,
                     error_message="retrying in 40 s: HTTP 503")
    # Its attempt's lease ran out: its worker died; the sweeper re-queues it.
    _export(org, make_expense, lease_owner="w1", lease_expires_at=now - timedelta(minutes=5))
    # Posted, no answer yet: in doubt.
    _export(org, make_expense, posting_started_at=now, lease_owner="w2",
            lease_expires_at=now + timedelta(minutes=5), error_message="in doubt: timeout")
    for message in ("account 7140 is not in the chart", "account 7150 is not in the chart"):
        _export(org, make_expense, status="failed", error_code="status_test", error_message=message)
    after = _status()

    assert after.by_status["processing"] - before.by_status["processing"] == 3
    assert after.by_status["failed"] - before.by_status["failed"] == 2
    assert after.oldest_processing["export_id"] == oldest
    assert after.oldest_processing["age_seconds"] > 3600 * 24 * 365 * 20
    assert after.in_doubt - before.in_doubt == 1
    assert after.stuck - before.stuck == 1
    ours_failed = next(g for g in after.failures_last_hour if g.error_code == "status_test")
    assert ours_failed.count == 2 and "is not in the chart" in ours_failed.example
    ours = [c for c in after.connections_in_trouble if c.organization_id == org.id]
    assert len(ours) == 1
    assert (ours[0].failed_last_hour, ours[0].waiting) == (2, 2)
    assert ours[0].target_system == "tripletex"


def test_broker_overview_counts_every_priority_list_of_a_queue(monkeypatch):
    from shared.config import reset_settings_cache

    # A queue no worker reads: workers an integration test of this session left running
    # consume the real queues.
    queue = "aic-test-overview-idle"
    monkeypatch.setenv("AIC_REPORT_QUEUE", queue)
    reset_settings_cache()
    client = redis_lib.Redis.from_url(get_settings().redis_url)
    try:
        client.lpush(queue, "m1")
        client.lpush(f"{queue}\x06\x163", "m2")
        overview = broker_overview()
    finally:
        client.delete(queue, f"{queue}\x06\x163")
        client.close()
        monkeypatch.undo()
        reset_settings_cache()
    assert overview["reachable"] and overview["queues"][queue] == 2


def test_broker_overview_reports_an_unreachable_broker_instead_of_raising(monkeypatch):
    from shared.config import reset_settings_cache

    monkeypatch.setenv("AIC_REDIS_URL", "redis://127.0.0.1:9/0")
    reset_settings_cache()
    try:
        overview = broker_overview(timeout=0.5)
    finally:
        monkeypatch.undo()
        reset_settings_cache()
    assert overview["reachable"] is False and "Connection" in overview["error"]


def test_aic_status_prints_the_picture_and_exits_non_zero_when_something_is_stuck(
        capsys, org, make_expense):
    with session_scope() as session:
        now = database_now(session)
    stuck = _export(org, make_expense, lease_owner="w1", lease_expires_at=now - timedelta(hours=1),
                    created_at=datetime(2000, 1, 1, tzinfo=timezone.utc))
    assert main(["status"]) == 1
    out = capsys.readouterr().out
    assert "stuck (no message will run them):" in out and stuck in out
    assert "aic sweep" in out and "queues    exports" in out
    assert main(["status", "--json"]) == 1
    assert '"stuck_sample"' in capsys.readouterr().out


def test_admin_status_endpoint(org):
    from fastapi.testclient import TestClient

    from producers.api.app import create_app

    with TestClient(create_app()) as client:
        assert client.get("/api/v1/admin/status").status_code == 401
        body = client.get("/api/v1/admin/status", headers={
            "Authorization": f"Bearer {get_settings().admin_token}"}).json()
    assert set(body) == {"exports", "broker"}
    assert set(body["exports"]["by_status"]) == {"processing", "success", "failed", "cancelled"}
    assert body["broker"]["reachable"] is True
