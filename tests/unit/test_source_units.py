"""The source unit state machine (``shared.domain.source_units``): one compare-and-set per
status change, each with its event, and only the moves of the table."""

from __future__ import annotations

import pytest
from celery.exceptions import Retry
from sqlalchemy import select

from shared.db.models import SourceUnit, SourceUnitEvent
from shared.db.session import session_scope
from shared.domain import organizations, sources
from shared.domain.source_units import (
    IllegalUnitTransition,
    SourceUnitStatus,
    transition_unit,
)
from worker import source_jobs


@pytest.fixture
def unit_id(org) -> str:
    with session_scope() as session:
        connection = sources.upsert_source_connection(
            session, org.id, "findity", base_url="http://127.0.0.1:9/api",
            credentials={"client_id": "c", "client_secret": "s",
                         "token_url": "http://127.0.0.1:9/token"},
            options={"organization_id": "f-units"})
        unit, new = sources.announce_unit(session, connection, "exp-1", via="webhook")
        assert new
        return unit.id


def _events(unit_id: str) -> list[tuple]:
    with session_scope() as session:
        return [(e.kind, e.from_status, e.to_status, e.actor) for e in session.scalars(
            select(SourceUnitEvent).where(SourceUnitEvent.unit_id == unit_id)
            .order_by(SourceUnitEvent.id))]


def test_a_move_not_in_the_table_is_refused(unit_id):
    with session_scope() as session:
        unit = session.get(SourceUnit, unit_id)
        with pytest.raises(IllegalUnitTransition, match="received; it cannot become completed"):
            transition_unit(session, unit, SourceUnitStatus.COMPLETED, actor="test")
    assert _events(unit_id) == [("announced", None, None, "webhook")]


def test_two_actors_that_read_the_same_status_cannot_both_move_it(unit_id):
    """Fails with the raw UPDATEs this replaces: the second writer overwrote the first."""
    with session_scope() as first, session_scope() as second:
        a = first.get(SourceUnit, unit_id)
        b = second.get(SourceUnit, unit_id)
        assert a.status == b.status == "received"
        assert transition_unit(first, a, SourceUnitStatus.INGESTING, actor="worker-a")
        first.commit()
        assert not transition_unit(second, b, SourceUnitStatus.INGESTING, actor="worker-b")
    assert _events(unit_id)[1:] == [("status_changed", "received", "ingesting", "worker-a")]


def test_a_claim_that_lost_the_unit_cannot_end_it(unit_id):
    """The claim's attempt is its fencing token: a worker whose lease ran out and whose unit
    another worker claimed leaves the other claim alone."""
    stale = source_jobs._claim_for_ingest(unit_id)
    with session_scope() as session:  # its lease ran out; another worker claims the unit
        session.get(SourceUnit, unit_id).lease_expires_at = None
    fresh = source_jobs._claim_for_ingest(unit_id)
    assert (stale.attempt, fresh.attempt) == (1, 2)
    source_jobs._finish_claim(stale, SourceUnitStatus.REJECTED, "stale")
    with session_scope() as session:
        unit = session.get(SourceUnit, unit_id)
        assert (unit.status, unit.attempts) == ("ingesting", 2)
    source_jobs._finish_claim(fresh, SourceUnitStatus.RECEIVED, "not found yet")
    assert [e[:3] for e in _events(unit_id)] == [
        ("announced", None, None), ("status_changed", "received", "ingesting"),
        ("reclaimed", "ingesting", "ingesting"), ("status_changed", "ingesting", "received")]


def test_an_ingest_message_queued_before_the_rename_still_runs(unit_id):
    """Messages carry the task's name; one published as worker.tasks.process_source_export
    before the upgrade must find a task (Celery would drop it as unregistered otherwise)."""
    import worker.tasks  # noqa: F401 - registers the tasks
    from shared.queue import (
        TASK_INGEST_SOURCE_UNIT,
        TASK_INGEST_SOURCE_UNIT_BEFORE_RENAME,
        celery_app,
    )

    assert TASK_INGEST_SOURCE_UNIT_BEFORE_RENAME == "worker.tasks.process_source_export"
    old, new = (celery_app.tasks[name] for name in (TASK_INGEST_SOURCE_UNIT_BEFORE_RENAME,
                                                     TASK_INGEST_SOURCE_UNIT))
    # The old name claims and works the unit like the new one (here: the source is unreachable,
    # so the claim ends waiting, with the reason).
    with pytest.raises(Retry):  # the source is unreachable: the task retries itself
        old.apply(args=[unit_id], throw=True)
    assert [e[:3] for e in _events(unit_id)][1:3] == [
        ("status_changed", "received", "ingesting"), ("status_changed", "ingesting", "received")]
    assert new.name != old.name


def _settle_with(unit_id: str, status: SourceUnitStatus, item: dict) -> None:
    from shared.db.models import SourceUnitItem

    with session_scope() as session:
        unit = session.get(SourceUnit, unit_id)
        for step in (SourceUnitStatus.INGESTING, SourceUnitStatus.PROCESSING, status):
            assert transition_unit(session, unit, step, actor="test")
        session.add(SourceUnitItem(source_unit_id=unit_id, **item))


def test_a_retry_forgets_only_refused_items_and_ingests_the_unit_again(org, unit_id, sent_jobs):
    from shared.domain.errors import Conflict

    with session_scope() as session, pytest.raises(Conflict, match="only a completed"):
        sources.retry_source_unit(session, org.id, unit_id, actor="test")
    _settle_with(unit_id, SourceUnitStatus.COMPLETED_WITH_FAILURES,
                 {"external_voucher_id": "v1", "outcome_error": "account 4444 is not mapped",
                  "reported_status": "FAILED"})
    sent_jobs.clear()
    with session_scope() as session:
        sources.retry_source_unit(session, org.id, unit_id, actor="test")
    with session_scope() as session:
        unit = session.get(SourceUnit, unit_id)
        assert unit.status == "received" and unit.vouchers == [] and unit.attempts == 0
    assert [job.args for job in sent_jobs] == [[unit_id]]  # its ingest is queued again
    kinds = _events(unit_id)
    assert kinds[-1] == ("status_changed", "completed_with_failures", "received", "test")


def test_a_completed_unit_listed_again_is_reported_again_once(org, unit_id, sent_jobs):
    _settle_with(unit_id, SourceUnitStatus.COMPLETED,
                 {"external_voucher_id": "v1", "reported_status": "SUCCESS",
                  "reported_number": "7"})
    sent_jobs.clear()
    with session_scope() as session:
        unit = session.get(SourceUnit, unit_id)
        assert sources.report_again(session, unit)
        assert not sources.report_again(session, session.get(SourceUnit, unit_id))
    with session_scope() as session:
        unit = session.get(SourceUnit, unit_id)
        assert unit.status == "processing"
        assert [(v.reported_status, v.reported_number) for v in unit.vouchers] == [(None, None)]
    assert len(sent_jobs) == 1


def test_a_resend_since_books_only_unknown_items_and_reports_booked_ones_again(org, unit_id,
                                                                               sent_jobs):
    from shared.integrations.sources import Announcement

    _settle_with(unit_id, SourceUnitStatus.COMPLETED,
                 {"external_voucher_id": "v1", "reported_status": "SUCCESS",
                  "reported_number": "7"})
    with session_scope() as session:
        connection = session.get(SourceUnit, unit_id).connection
        failed, _ = sources.announce_unit(session, connection, "exp-failed", via="poll")
        failed_id = failed.id
    _settle_with(failed_id, SourceUnitStatus.COMPLETED_WITH_FAILURES,
                 {"external_voucher_id": "v2", "outcome_error": "unmapped"})
    sent_jobs.clear()
    with session_scope() as session:
        connection = session.get(SourceUnit, unit_id).connection
        outcome = sources.resend_since(
            session, connection,
            [Announcement("exp-1", {}), Announcement("exp-failed", {}),
             Announcement("exp-new", {"id": "exp-new"})], actor="cli", since="2026-11-01")
    assert outcome == {"announced": ["exp-new"], "reported_again": ["exp-1"],
                       "left": ["exp-failed"]}
    with session_scope() as session:
        assert session.get(SourceUnit, unit_id).status == "processing"
        assert session.get(SourceUnit, failed_id).status == "completed_with_failures"
    assert _events(unit_id)[-1] == ("status_changed", "completed", "processing", "cli")
    assert len(sent_jobs) == 2  # the new unit's ingest, the completed one's report
