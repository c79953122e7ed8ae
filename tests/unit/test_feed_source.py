"""The engine runs a source it knows only through the registry: ``tests/plugins/feed_source``
(a polled cursor feed whose listing is the content, each entry its own unit, CHUNKED reports of
at most two) and its ``silent`` twin (``ReportGranularity.NONE``).

Like tests/unit/test_source_jobs.py, each test calls the functions the Celery tasks call, in
order, against the feed's HTTP server and the test database; exports are finished through the
state machine as the worker finishes them. The whole path with real workers is
tests/integration/test_plugin_source.py.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from shared.config import reset_settings_cache
from shared.db.models import AccountingExport, Expense, SourceConnection, SourceUnit
from shared.db.session import session_scope
from shared.domain import organizations, sources
from shared.domain.state_machine import transition
from shared.integrations import registry
from shared.integrations.sources import FetchedUnit
from tests.plugins.feed_source import server as feed_server
from worker import source_jobs


@pytest.fixture
def feed(monkeypatch):
    monkeypatch.setenv("AIC_EXTRA_SYSTEMS",
                       "tests.plugins.feed_source,tests.plugins.feed_source.silent")
    reset_settings_cache()
    registry.reset_for_tests()
    server = feed_server.FeedServer().start()
    yield server
    server.stop()
    monkeypatch.delenv("AIC_EXTRA_SYSTEMS")
    reset_settings_cache()
    registry.reset_for_tests()


def _connect(feed, system: str = "feed") -> tuple[str, str]:
    with session_scope() as session:
        org = organizations.create_organization(session, f"{system} AS")
        organizations.upsert_connection(
            session, org.id, "tripletex", base_url="http://127.0.0.1:9/v2",
            credentials={"consumer_token": "c", "employee_token": "e"})
        connection = sources.upsert_source_connection(
            session, org.id, system, base_url=feed.url,
            credentials={"api_key": feed_server.API_KEY}, target_system="tripletex")
        return org.id, connection.id


def _units(connection_id: str) -> dict[str, SourceUnit]:
    """entry id -> its unit (detached, with its items)."""
    with session_scope() as session:
        units = session.scalars(select(SourceUnit).where(
            SourceUnit.source_connection_id == connection_id)).all()
        for unit in units:
            unit.vouchers  # noqa: B018 - loaded before the session closes
            session.expunge(unit)
        return {unit.external_export_id: unit for unit in units}


def _ingest_all(connection_id: str) -> dict[str, SourceUnit]:
    for unit in _units(connection_id).values():
        assert source_jobs.ingest_source_unit(unit.id).kind == "done"
    return _units(connection_id)


def _book(export_id: str, number: int) -> None:
    with session_scope() as session:
        export = session.get(AccountingExport, export_id)
        export.external_id = str(9000 + number)
        export.external_reference = f"voucher {number}"
        export.external_number = str(number)
    with session_scope() as session:
        transition(session, session.get(AccountingExport, export_id), "success", actor="worker")


def test_the_poll_reads_pages_from_the_stored_cursor_and_the_listing_is_the_content(feed):
    """Fails before the poll kept a cursor (every poll listed from the start with None) and
    before fetch_unit received the listing (the feed has no GET of one entry)."""
    org_id, connection_id = _connect(feed)
    for amount in ("100.00", "200.00", "300.00"):
        feed.add(amount)
    result = source_jobs.poll_sources()
    # (Connections other tests of the session left behind may fail to poll; not this one.)
    assert [e for e in result.errors if e.startswith(connection_id)] == []
    # Pages of two from the start, until a page announces nothing new.
    assert feed.list_calls == [None, "2", "3"]
    with session_scope() as session:
        connection = session.get(SourceConnection, connection_id)
        assert (connection.poll_cursor, connection.last_poll_error) == ("3", None)
        assert connection.last_polled_at is not None

    feed.add("400.00")
    source_jobs.poll_sources()
    assert feed.list_calls[3:] == ["3", "4"]  # from the stored cursor, not from the start
    units = _ingest_all(connection_id)
    assert sorted(units) == ["1", "2", "3", "4"]
    with session_scope() as session:
        amounts = {e.source_ref: str(e.amount) for e in session.scalars(
            select(Expense).where(Expense.organization_id == org_id))}
    assert amounts == {"feed-1": "100.00", "feed-2": "200.00", "feed-3": "300.00",
                       "feed-4": "400.00"}


def test_a_unit_no_poll_listed_is_never_fetched_from_an_announcement_body(feed):
    """A webhook-style announcement carries no listing: the adapter gets None, not the body."""
    seen = []
    _, connection_id = _connect(feed)
    with session_scope() as session:
        connection = session.get(SourceConnection, connection_id)
        unit, _ = sources.announce_unit(session, connection, "1", via="webhook")
        unit_id = unit.id
    from tests.plugins.feed_source import FeedSource

    original = FeedSource.fetch_unit

    def spy(self, external_id, listed) -> FetchedUnit:
        seen.append(listed)
        return original(self, external_id, listed)

    FeedSource.fetch_unit = spy
    try:
        outcome = source_jobs.ingest_source_unit(unit_id)
    finally:
        FeedSource.fetch_unit = original
    assert seen == [None] and outcome.kind == "retry"  # a 404 within the not-found grace


def test_chunked_reports_gather_units_of_the_connection_after_their_bookings(feed):
    """Each entry is its own unit; reports go out in chunks of at most two across units, only
    for exports that are booked (or refused at ingest), and every unit completes."""
    from prometheus_client import REGISTRY

    # The counting listeners are attached when shared.metrics is imported (the worker's and the
    # API's entry points do); run alone, nothing else in this file imports it.
    import shared.metrics  # noqa: F401

    def counted(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    received = (counted("aic_source_items_received_total", outcome="bookable"),
                counted("aic_source_items_received_total", outcome="refused"))
    reported = (counted("aic_source_items_reported_total", status="SUCCESS"),
                counted("aic_source_items_reported_total", status="FAILED"))
    _, connection_id = _connect(feed)
    for amount in ("100.00", "200.00", "300.00", "400.00"):
        feed.add(amount)
    feed.entries.append({"id": "5", "text": "Mystery", "amount": "50.00", "account": "9999",
                         "date": "2026-11-02"})
    source_jobs.poll_sources()
    units = _ingest_all(connection_id)
    # The metrics (shared/metrics.py) count items as the engine records them.
    assert (counted("aic_source_items_received_total", outcome="bookable") - received[0],
            counted("aic_source_items_received_total", outcome="refused") - received[1]) == (4, 1)

    # Nothing booked yet: only the refusal is owed.
    assert source_jobs.report_to_source(units["1"].id).kind == "done"
    assert [[r["id"] for r in call] for call in feed.results_calls] == [["5"]]
    assert feed.held()["5"]["status"] == "FAILED"

    for number, entry_id in enumerate(["1", "2", "3", "4"], start=1):
        _book(units[entry_id].vouchers[0].export_id, number)
    assert source_jobs.report_to_source(units["3"].id).kind == "done"
    calls = [[r["id"] for r in call] for call in feed.results_calls[1:]]
    assert sorted(sum(calls, [])) == ["1", "2", "3", "4"]
    assert [len(call) for call in calls] == [2, 2] and not feed.refused_calls
    assert {entry_id: r.get("number") for entry_id, r in feed.held().items()} == {
        "1": "1", "2": "2", "3": "3", "4": "4", "5": None}
    statuses = {entry_id: unit.status for entry_id, unit in _units(connection_id).items()}
    assert statuses == {"1": "completed", "2": "completed", "3": "completed",
                        "4": "completed", "5": "completed_with_failures"}
    # Nothing is owed any more: a repeated report sends nothing.
    assert source_jobs.report_to_source(units["1"].id).detail == "0 reported"
    assert len(feed.results_calls) == 3
    assert (counted("aic_source_items_reported_total", status="SUCCESS") - reported[0],
            counted("aic_source_items_reported_total", status="FAILED") - reported[1]) == (4, 1)


def test_chunked_reports_that_may_be_held_already_go_out_alone(feed):
    """A chunk whose answer was a 503 may have been taken: each of its reports goes alone next
    time (the same in-flight bookkeeping as per-item reports)."""
    _, connection_id = _connect(feed)
    for amount in ("100.00", "200.00", "300.00"):
        feed.add(amount)
    source_jobs.poll_sources()
    units = _ingest_all(connection_id)
    for number, entry_id in enumerate(["1", "2", "3"], start=1):
        _book(units[entry_id].vouchers[0].export_id, number)
    feed.fail_results = 1
    assert source_jobs.report_to_source(units["1"].id).kind == "retry"
    [refused] = feed.refused_calls
    assert len(refused) == 2
    assert source_jobs.report_to_source(units["1"].id).kind == "done"
    maybe_held = {r["id"] for r in refused}
    alone = [call for call in feed.results_calls if call[0]["id"] in maybe_held]
    assert sorted(len(call) for call in alone) == [1, 1]
    assert sorted(feed.held()) == ["1", "2", "3"]
    assert {u.status for u in _units(connection_id).values()} == {"completed"}


def test_a_source_that_is_told_nothing_completes_its_units_without_reports(feed):
    """ReportGranularity.NONE: send_reports is never called; outcomes are recorded and the
    unit completes once its exports end."""
    _, connection_id = _connect(feed, "feed_silent")
    feed.add("100.00")
    feed.add("200.00")
    source_jobs.poll_sources()
    units = _ingest_all(connection_id)
    _book(units["1"].vouchers[0].export_id, 1)
    assert source_jobs.report_to_source(units["1"].id).kind == "done"
    assert source_jobs.report_to_source(units["2"].id).kind == "done"
    after = _units(connection_id)
    assert (after["1"].status, after["2"].status) == ("completed", "processing")
    with session_scope() as session:
        transition(session, session.get(AccountingExport, units["2"].vouchers[0].export_id),
                   "failed", actor="worker", error_message="unmapped account",
                   error_code="unmapped")
    assert source_jobs.report_to_source(units["2"].id).kind == "done"
    after = _units(connection_id)
    assert after["2"].status == "completed_with_failures"
    assert feed.results_calls == [] and feed.refused_calls == []
    assert [v.reported_status for u in after.values() for v in u.vouchers] == [None, None]


def test_a_completed_unit_a_cursor_listing_names_again_is_not_reported_again(feed):
    """A list of what changed since a cursor (Brex, with its overlap window; this feed) names
    completed units as a matter of course: that is no sign that the source lacks our report,
    unlike a "not exported yet" feed (TRAEDE). The poll used to reopen such a unit and re-send
    its reports on every poll, so Brex units flapped between completed and processing."""
    _, connection_id = _connect(feed)
    feed.add("100.00")
    source_jobs.poll_sources()
    units = _ingest_all(connection_id)
    _book(units["1"].vouchers[0].export_id, 1)
    assert source_jobs.report_to_source(units["1"].id).kind == "done"
    assert _units(connection_id)["1"].status == "completed"
    calls = len(feed.results_calls)
    with session_scope() as session:  # listed again from the start, as an overlap would
        session.get(SourceConnection, connection_id).poll_cursor = None
    result = source_jobs.poll_sources()
    assert "1" not in result.reported_again and result.listed >= 1
    assert _units(connection_id)["1"].status == "completed"
    assert len(feed.results_calls) == calls
