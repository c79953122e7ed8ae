from __future__ import annotations

import pytest
from sqlalchemy import select

from shared.db.models import AccountingExport, ExportEvent
from shared.db.session import session_scope
from shared.domain import exports
from shared.domain.state_machine import (
    ALLOWED_TRANSITIONS,
    ConcurrentTransition,
    IllegalTransition,
    transition,
)
from shared.domain.statuses import ExportStatus

P, S, F, C = ExportStatus.PROCESSING, ExportStatus.SUCCESS, ExportStatus.FAILED, ExportStatus.CANCELLED


def test_table_is_exactly_the_documented_moves():
    assert ALLOWED_TRANSITIONS == {P: {S, F, C}, F: {P}, S: set(), C: set()}


def _export(org, make_expense) -> str:
    with session_scope() as session:
        return exports.create_export(session, org.id, make_expense(), "tripletex", actor="t").id


@pytest.mark.parametrize("target", [S, F, C])
def test_processing_moves_and_writes_one_event_in_the_same_transaction(org, make_expense, target):
    export_id = _export(org, make_expense)
    with session_scope() as session:
        export = session.get(AccountingExport, export_id)
        transition(session, export, target, actor="tester", attempt=2, reason="why",
                   celery_task_id="task-1", external_reference="X" if target is S else None)
    with session_scope() as session:
        export = session.get(AccountingExport, export_id)
        events = session.scalars(select(ExportEvent).where(
            ExportEvent.export_id == export_id, ExportEvent.kind == "status_changed")).all()
        assert export.status == target.value
        assert [(e.from_status, e.to_status, e.actor, e.attempt, e.celery_task_id)
                for e in events] == [("processing", target.value, "tester", 2, "task-1")]
        assert (export.active_key is not None) == (target is S)


@pytest.mark.parametrize("start,target", [(S, F), (S, P), (C, P), (C, S), (F, S), (F, C)])
def test_illegal_moves_are_refused_and_change_nothing(org, make_expense, start, target):
    export_id = _export(org, make_expense)
    with session_scope() as session:
        export = session.get(AccountingExport, export_id)
        if start is F or start is S or start is C:
            transition(session, export, start, actor="setup")
    with pytest.raises(IllegalTransition) as info:
        with session_scope() as session:
            transition(session, session.get(AccountingExport, export_id), target, actor="t")
    assert start.value in str(info.value) and target.value in str(info.value)
    with session_scope() as session:
        assert session.get(AccountingExport, export_id).status == start.value


def test_a_stale_reader_loses_the_race(org, make_expense):
    """Two actors read 'processing'; the first write wins, the second gets ConcurrentTransition."""
    export_id = _export(org, make_expense)
    with session_scope() as first_session:
        stale = first_session.get(AccountingExport, export_id)
        with session_scope() as second_session:
            transition(second_session, second_session.get(AccountingExport, export_id), C,
                       actor="canceller")
        with pytest.raises(ConcurrentTransition):
            transition(first_session, stale, S, actor="worker", external_reference="X")
        first_session.rollback()
    with session_scope() as session:
        assert session.get(AccountingExport, export_id).status == "cancelled"


def test_failed_can_be_retried_to_processing(org, make_expense):
    export_id = _export(org, make_expense)
    with session_scope() as session:
        transition(session, session.get(AccountingExport, export_id), F, actor="w",
                   error_message="boom")
    with session_scope() as session:
        export = transition(session, session.get(AccountingExport, export_id), P, actor="op")
        assert export.active_key is not None
