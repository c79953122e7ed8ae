from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from shared.db.models import AccountingExport, ExportEvent
from shared.db.session import session_scope
from shared.domain import exports
from shared.domain.errors import NotFound, ValidationFailed
from shared.domain.state_machine import transition
from shared.domain.statuses import ExportStatus


def _create(org, expense_id, **kw):
    with session_scope() as session:
        return exports.create_export(session, org.id, expense_id, "tripletex", actor="t", **kw).id


def test_create_records_created_and_queued_events(org, make_expense):
    export_id = _create(org, make_expense())
    with session_scope() as session:
        kinds = [e.kind for e in session.scalars(
            select(ExportEvent).where(ExportEvent.export_id == export_id).order_by(ExportEvent.id))]
        export = session.get(AccountingExport, export_id)
    assert kinds == ["created", "queued"]
    assert export.status == "processing" and export.id.startswith("exp_xp_")


def test_unknown_and_unapproved_expenses_are_refused(org, make_expense):
    with pytest.raises(ValidationFailed, match="does not exist"):
        _create(org, "exp_nope")
    with pytest.raises(ValidationFailed, match="only approved"):
        _create(org, make_expense(status="submitted"))


def test_second_export_of_the_same_expense_is_a_conflict_unless_reexport(org, make_expense):
    expense_id = make_expense()
    first = _create(org, expense_id)
    with pytest.raises(exports.AlreadyExported, match="already being exported"):
        _create(org, expense_id)
    with pytest.raises(exports.AlreadyExported, match="already being exported"):
        _create(org, expense_id, reexport=True)  # never two in flight
    with session_scope() as session:
        transition(session, session.get(AccountingExport, first), ExportStatus.SUCCESS,
                   actor="t", external_reference="TTX-1")
    with pytest.raises(exports.AlreadyExported, match="reexport"):
        _create(org, expense_id)
    second = _create(org, expense_id, reexport=True)
    with session_scope() as session:
        assert session.get(AccountingExport, second).reexport_of == first
        assert session.get(AccountingExport, first).status == "success"


def test_concurrent_creates_of_one_expense_make_one_export(org, make_expense):
    expense_id = make_expense()
    results: list[str] = []
    barrier = threading.Barrier(6)

    def attempt():
        barrier.wait()
        try:
            results.append(_create(org, expense_id))
        except exports.AlreadyExported:
            results.append("conflict")

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with session_scope() as session:
        count = len(session.scalars(select(AccountingExport).where(
            AccountingExport.expense_id == expense_id)).all())
    assert count == 1
    assert results.count("conflict") == 5


def test_batch_is_all_or_nothing(org, make_expense):
    good = [make_expense() for _ in range(3)]
    bad = make_expense(status="draft")
    with pytest.raises(ValidationFailed) as info:
        with session_scope() as session:
            exports.create_batch(session, org.id, [*good, bad, "exp_missing"], "tripletex", actor="t")
    assert {d["expense_id"] for d in info.value.details} == {bad, "exp_missing"}
    with session_scope() as session:
        assert session.scalars(select(AccountingExport).where(
            AccountingExport.expense_id.in_(good))).all() == []
    with session_scope() as session:
        batch, created = exports.create_batch(session, org.id, good, "tripletex", actor="t")
        assert len(created) == 3 and all(e.batch_id == batch.id for e in created)


def test_batch_refuses_duplicates_and_oversize(org, make_expense):
    expense_id = make_expense()
    with pytest.raises(ValidationFailed, match="more than once"):
        with session_scope() as session:
            exports.create_batch(session, org.id, [expense_id, expense_id], "tripletex", actor="t")
    with pytest.raises(exports.BatchTooLarge):
        with session_scope() as session:
            exports.create_batch(session, org.id, ["exp_x"] * 10_000, "tripletex", actor="t")


def test_cancel_rules(org, make_expense):
    export_id = _create(org, make_expense())
    with session_scope() as session:
        exports.cancel_export(session, org.id, export_id, actor="t")
    with session_scope() as session:  # repeated DELETE is harmless
        assert exports.cancel_export(session, org.id, export_id, actor="t").status == "cancelled"

    posting = _create(org, make_expense())
    with session_scope() as session:
        export = session.get(AccountingExport, posting)
        from shared.db.types import utcnow
        export.posting_started_at = utcnow()
    with pytest.raises(exports.NotCancellable, match="can no longer be cancelled"):
        with session_scope() as session:
            exports.cancel_export(session, org.id, posting, actor="t")


def test_other_organizations_see_nothing(org, make_expense):
    export_id = _create(org, make_expense())
    with pytest.raises(NotFound):
        with session_scope() as session:
            exports.get_export(session, "org_other", export_id)


def test_status_callback_is_idempotent_and_legal_only(org, make_expense):
    export_id = _create(org, make_expense())

    def put(status, ref=None):
        with session_scope() as session:
            return exports.apply_status_callback(session, org.id, export_id, status=status,
                                                 external_reference=ref, error_message=None,
                                                 actor="cb").status

    assert put("success", "TTX-9") == "success"
    assert put("success", "TTX-9") == "success"  # repeated: no error, no second event
    with pytest.raises(exports.IllegalStatusChange):
        put("failed")
    with pytest.raises(exports.IllegalStatusChange):
        put("success", "TTX-other")
    with session_scope() as session:
        changes = session.scalars(select(ExportEvent).where(
            ExportEvent.export_id == export_id, ExportEvent.kind == "status_changed")).all()
    assert len(changes) == 1


def test_list_filters_and_pagination(org, make_expense):
    ids = [_create(org, make_expense()) for _ in range(5)]
    with session_scope() as session:
        rows, total = exports.list_exports(session, org.id, exports.ExportFilters(), page=1, limit=2)
        assert total == 5 and len(rows) == 2
        rows, total = exports.list_exports(session, org.id, exports.ExportFilters(), page=3, limit=2)
        assert len(rows) == 1
        rows, total = exports.list_exports(session, org.id,
                                           exports.ExportFilters(status=ExportStatus.SUCCESS),
                                           page=1, limit=20)
        assert total == 0
        assert {r.id for r in exports.list_exports(
            session, org.id, exports.ExportFilters(), page=1, limit=100)[0]} == set(ids)
