"""Accounting exports: create one, create a batch, cancel, apply a status callback, list.

Used by the REST API, the `aic` CLI and the Findity flow, so every producer follows the same
rules. Functions flush but never commit: the caller's ``session_scope`` commits once, and the
export task is sent to the broker only after that commit (``shared.jobs``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import ids
from shared.config import get_settings
from shared.db.models import (
    AccountingExport,
    Batch,
    Expense,
    ExportEvent,
)
from shared.db.paging import newest_first_page
from shared.db.types import utcnow
from shared.domain import organizations
from shared.domain.errors import Conflict, DomainError, NotFound, ValidationFailed
from shared.domain.state_machine import (
    ConcurrentTransition,
    EventRow,
    IllegalTransition,
    insert_events,
    record_event,
    transition,
)
from shared.domain.statuses import ExpenseStatus, ExportStatus
from shared.jobs import enqueue_after_commit
from shared.queue import TASK_EXPORT


class BatchTooLarge(DomainError):
    code = "batch_too_large"


class AlreadyExported(Conflict):
    code = "already_exported"


class NotCancellable(Conflict):
    code = "not_cancellable"


class IllegalStatusChange(Conflict):
    code = "illegal_transition"


def active_export(session: Session, expense_id: str, target_system: str) -> AccountingExport | None:
    return session.scalar(
        select(AccountingExport).where(
            AccountingExport.active_key == f"{expense_id}:{target_system}"
        )
    )


@dataclass
class _Exportable:
    expense: Expense
    supersedes: AccountingExport | None  # the successful export a re-export replaces


def _check_exportables(
    session: Session, org_id: str, expense_ids: list[str], target_system: str, reexport: bool
) -> list[tuple[str, _Exportable | None, DomainError | None]]:
    """For each expense id, in order: what to export, or None and the error that says why it
    cannot be exported. Two reads whatever the number of ids (a batch of hundreds read each
    expense and its live export one by one: issue 12, the batch POST is inside the measured
    window)."""
    expenses = {e.id: e for e in session.scalars(select(Expense).where(Expense.id.in_(expense_ids)))}
    keys = [f"{expense_id}:{target_system}" for expense_id in expense_ids]
    actives = {a.active_key: a for a in session.scalars(
        select(AccountingExport).where(AccountingExport.active_key.in_(keys)))}
    checked = []
    for expense_id, key in zip(expense_ids, keys):
        exportable, problem = _exportable(expenses.get(expense_id), actives.get(key), org_id,
                                          expense_id, target_system, reexport)
        checked.append((expense_id, exportable, problem))
    return checked


def _exportable(
    expense: Expense | None, active: AccountingExport | None, org_id: str, expense_id: str,
    target_system: str, reexport: bool
) -> tuple[_Exportable | None, DomainError | None]:
    if expense is None or expense.organization_id != org_id:
        return None, ValidationFailed(f"expense {expense_id} does not exist in this organization")
    if expense.status != ExpenseStatus.APPROVED.value:
        return None, ValidationFailed(
            f"expense {expense_id} is '{expense.status}'; only approved expenses can be exported"
        )
    if active is not None:
        if active.status == ExportStatus.PROCESSING.value:
            return None, AlreadyExported(
                f"expense {expense_id} is already being exported to {target_system} "
                f"(export {active.id}); wait for it or cancel it"
            )
        if not reexport:
            return None, AlreadyExported(
                f"expense {expense_id} was already exported to {target_system} (export "
                f"{active.id}, reference {active.external_reference}); send \"reexport\": true "
                "to book it again"
            )
    return _Exportable(expense, supersedes=active), None


def _new_exports(
    session: Session,
    org_id: str,
    exportables: list[_Exportable],
    target_system: str,
    *,
    actor: str,
    batch_id: str | None = None,
    source_unit_id: str | None = None,
) -> list[AccountingExport]:
    """The exports of ``exportables`` with their "created" and "queued" events, flushed, and
    their jobs queued for after the commit. One flush and one INSERT of the events for all of
    them (a batch flushed each export on its own before its event)."""
    connection = organizations.connection_for(session, org_id, target_system)
    if connection is None:
        raise ValidationFailed(
            f"this organization has no {target_system} connection; an administrator adds one "
            f"with `aic connection set` or PUT /api/v1/admin/organizations/{org_id}/connections/"
            f"{target_system}"
        )
    for previous in (e.supersedes for e in exportables if e.supersedes is not None):
        # An explicit re-export: the earlier export keeps its status and history but no longer
        # holds the "one live export" slot. Compare-and-set, so two concurrent re-exports of the
        # same expense cannot both take the slot.
        released = session.execute(
            update(AccountingExport)
            .where(AccountingExport.id == previous.id,
                   AccountingExport.status == ExportStatus.SUCCESS.value,
                   AccountingExport.active_key.is_not(None))
            .values(active_key=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        if released != 1:
            raise AlreadyExported(
                f"expense {previous.expense_id} was re-exported concurrently; list its exports")
        record_event(session, previous, "superseded", actor=actor,
                     reason="re-exported on request")
    now = utcnow()
    exports = [
        AccountingExport(
            id=ids.new_id(ids.EXPORT, 6),
            organization_id=org_id,
            expense_id=exportable.expense.id,
            batch_id=batch_id,
            source_unit_id=source_unit_id,
            connection_id=connection.id,
            target_system=target_system,
            status=ExportStatus.PROCESSING.value,
            active_key=f"{exportable.expense.id}:{target_system}",
            reexport_of=exportable.supersedes.id if exportable.supersedes is not None else None,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        for exportable in exportables
    ]
    session.add_all(exports)
    session.flush()
    insert_events(session, [
        event
        for export in exports
        for event in (
            EventRow(export.id, target_system, "created", actor=actor,
                     to_status=ExportStatus.PROCESSING.value, at=now),
            EventRow(export.id, target_system, "queued", actor=actor, at=now),
        )
    ])
    queue = get_settings().export_queue
    for export in exports:
        enqueue_after_commit(session, TASK_EXPORT, export.id, queue=queue)
    return exports


@contextmanager
def _one_live_export_per_expense(expense_ids: list[str], target_system: str):
    """Turn the unique ``active_key`` refusing a concurrent duplicate into a clear 409."""
    try:
        yield
    except IntegrityError as exc:
        # A concurrent request created a live export for the same expense between our check and
        # our insert; the database refused the second one. The caller's session rolls back.
        raise AlreadyExported(
            f"an export of {', '.join(expense_ids[:5])} to {target_system} was created "
            "concurrently; list the expense's exports"
        ) from exc


def create_export(
    session: Session,
    org_id: str,
    expense_id: str,
    target_system: str,
    *,
    actor: str,
    reexport: bool = False,
    source_unit_id: str | None = None,
) -> AccountingExport:
    [(_, exportable, problem)] = _check_exportables(session, org_id, [expense_id],
                                                    target_system, reexport)
    if problem is not None:
        raise problem
    with _one_live_export_per_expense([expense_id], target_system):
        [export] = _new_exports(session, org_id, [exportable], target_system, actor=actor,
                                source_unit_id=source_unit_id)
    return export


def create_batch(
    session: Session,
    org_id: str,
    expense_ids: list[str],
    target_system: str,
    *,
    actor: str,
    reexport: bool = False,
) -> tuple[Batch, list[AccountingExport]]:
    """All or nothing: every expense is checked first; one problem refuses the whole batch."""
    limit = get_settings().max_batch_size
    if len(expense_ids) > limit:
        raise BatchTooLarge(
            f"a batch takes at most {limit} expenses; this one has {len(expense_ids)}: split it"
        )
    if not expense_ids:
        raise ValidationFailed("expense_ids must list at least one expense")
    duplicates = sorted({e for e in expense_ids if expense_ids.count(e) > 1})
    if duplicates:
        raise ValidationFailed(f"expense_ids lists these more than once: {', '.join(duplicates)}")
    problems: list[tuple[str, DomainError]] = []
    exportables: list[_Exportable] = []
    for expense_id, exportable, problem in _check_exportables(session, org_id, expense_ids,
                                                              target_system, reexport):
        if problem is not None:
            problems.append((expense_id, problem))
        else:
            exportables.append(exportable)
    if problems:
        conflict_only = all(isinstance(p, AlreadyExported) for _, p in problems)
        error_cls = AlreadyExported if conflict_only else ValidationFailed
        raise error_cls(
            f"{len(problems)} of {len(expense_ids)} expenses cannot be exported; nothing was "
            "exported: " + "; ".join(p.message for _, p in problems[:5])
            + (" ..." if len(problems) > 5 else ""),
            details=[{"expense_id": e, "code": p.code, "message": p.message} for e, p in problems],
        )
    batch = Batch(id=ids.new_id(ids.BATCH, 6), organization_id=org_id,
                  target_system=target_system, export_count=len(exportables))
    session.add(batch)
    with _one_live_export_per_expense(expense_ids, target_system):
        exports = _new_exports(session, org_id, exportables, target_system, actor=actor,
                               batch_id=batch.id)
    return batch, exports


def get_export(session: Session, org_id: str, export_id: str) -> AccountingExport:
    export = session.get(AccountingExport, export_id)
    # Another organization's export answers exactly like a missing one: no existence leak.
    if export is None or export.organization_id != org_id:
        raise NotFound(f"export {export_id} does not exist")
    return export


def cancel_export(session: Session, org_id: str, export_id: str, *, actor: str) -> AccountingExport:
    """Cancel while nothing may have reached the target, including while waiting for a retry."""
    export = get_export(session, org_id, export_id)
    if export.status == ExportStatus.CANCELLED.value:
        return export  # repeating a DELETE is harmless
    if export.status != ExportStatus.PROCESSING.value:
        raise NotCancellable(
            f"export {export_id} is {export.status}; only a processing export can be cancelled"
        )
    if export.posting_started_at is not None:
        raise NotCancellable(
            f"export {export_id} is being posted to {export.target_system} (since "
            f"{export.posting_started_at.isoformat()}); it can no longer be cancelled"
        )
    try:
        return transition(
            session, export, ExportStatus.CANCELLED, actor=actor, reason="cancelled on request",
            guard=AccountingExport.posting_started_at.is_(None),
            # A waiting retry's "retrying in 40 s: ..." no longer describes it.
            error_code=None, error_message=None, next_attempt_at=None,
        )
    except ConcurrentTransition:
        session.refresh(export)
        raise NotCancellable(
            f"export {export_id} started posting to {export.target_system} at this moment; it "
            f"is now {export.status} and can no longer be cancelled"
        ) from None


def apply_status_callback(
    session: Session,
    org_id: str,
    export_id: str,
    *,
    status: ExportStatus,
    external_reference: str | None,
    error_message: str | None,
    actor: str,
    reason: str = "status callback",
) -> AccountingExport:
    """The PUT webhook callback: only legal moves; repeating the same update is harmless.
    ``reason``: what the event log says moved it (an operator's retry uses this path too)."""
    export = get_export(session, org_id, export_id)
    status = ExportStatus(status)
    if status is ExportStatus.SUCCESS and not external_reference:
        raise ValidationFailed("external_reference is required when status is success")
    if export.status == status.value:
        if status is ExportStatus.SUCCESS and export.external_reference != external_reference:
            raise IllegalStatusChange(
                f"export {export_id} already succeeded with external_reference "
                f"{export.external_reference}; it cannot be changed to {external_reference}"
            )
        return export
    fields: dict = {}
    if status is ExportStatus.SUCCESS:
        fields["external_reference"] = external_reference
    if status is ExportStatus.FAILED:
        fields["error_message"] = error_message or "marked failed by callback"
        fields["error_code"] = "callback"
    if status is ExportStatus.PROCESSING:
        # failed -> processing is an explicit retry: a fresh attempt budget, and a new job.
        fields.update(attempts=0, error_message=None, error_code=None, next_attempt_at=utcnow())
    guard = None
    if (status in (ExportStatus.FAILED, ExportStatus.SUCCESS)
            and export.status == ExportStatus.PROCESSING.value):
        # As for a DELETE: once posting has started our voucher may exist. A failed export must
        # hold none, and a success reported by a caller would hide it. Only the worker, which
        # looks the voucher up, decides that outcome (transition() enforces it as well).
        if export.posting_started_at is not None:
            raise _being_posted(export, status)
        guard = AccountingExport.posting_started_at.is_(None)
    try:
        transition(session, export, status, actor=actor, reason=reason, guard=guard, **fields)
    except IllegalTransition as exc:
        raise IllegalStatusChange(str(exc)) from None
    except ConcurrentTransition:
        session.refresh(export)
        if guard is not None and export.status == ExportStatus.PROCESSING.value:
            raise _being_posted(export, status) from None
        raise IllegalStatusChange(
            f"export {export_id} changed to {export.status} while this update was applied; "
            "read it again and retry if still needed"
        ) from None
    except IntegrityError:
        session.rollback()
        raise AlreadyExported(
            f"another export of the same expense is live; export {export_id} cannot be retried"
        ) from None
    if status is ExportStatus.PROCESSING:
        enqueue_after_commit(session, TASK_EXPORT, export.id, queue=get_settings().export_queue)
    return export


def _being_posted(export: AccountingExport, status: ExportStatus) -> IllegalStatusChange:
    return IllegalStatusChange(
        f"export {export.id} is being posted to {export.target_system} (since "
        f"{export.posting_started_at.isoformat()}); it cannot be marked {status.value} now: the "
        "worker records the outcome, read the export again once it is no longer processing"
    )


@dataclass
class ExportFilters:
    status: ExportStatus | None = None
    target_system: str | None = None
    expense_id: str | None = None
    batch_id: str | None = None
    initiated_from: datetime | None = None
    initiated_to: datetime | None = None


def list_exports(
    session: Session, org_id: str | None, filters: ExportFilters, *, page: int, limit: int,
    every_organization: bool = False,
) -> tuple[list[AccountingExport], int]:
    """One organization's exports, newest first. ``org_id=None`` with ``every_organization``:
    all of them (operators' ``aic exports list --all``; the API always names the caller's)."""
    if org_id is None and not every_organization:
        raise ValueError("name the organization, or ask for every_organization explicitly")
    conditions = [] if org_id is None else [AccountingExport.organization_id == org_id]
    if filters.status is not None:
        conditions.append(AccountingExport.status == ExportStatus(filters.status).value)
    if filters.target_system:
        conditions.append(AccountingExport.target_system == filters.target_system)
    if filters.expense_id:
        conditions.append(AccountingExport.expense_id == filters.expense_id)
    if filters.batch_id:
        conditions.append(AccountingExport.batch_id == filters.batch_id)
    if filters.initiated_from is not None:
        conditions.append(AccountingExport.created_at >= filters.initiated_from)
    if filters.initiated_to is not None:
        conditions.append(AccountingExport.created_at < filters.initiated_to)
    # With a status: ix_exports_org_status_created; otherwise ix_exports_org_created.
    return newest_first_page(session, AccountingExport, conditions, page=page, limit=limit)


def batch_progress(session: Session, org_id: str, batch_id: str) -> tuple[Batch, dict[str, int]]:
    batch = session.get(Batch, batch_id)
    if batch is None or batch.organization_id != org_id:
        raise NotFound(f"batch {batch_id} does not exist")
    counts = dict(
        session.execute(
            select(AccountingExport.status, func.count())
            .where(AccountingExport.batch_id == batch_id)
            .group_by(AccountingExport.status)
        ).all()
    )
    return batch, {s.value: int(counts.get(s.value, 0)) for s in ExportStatus}


def export_events(session: Session, org_id: str, export_id: str) -> list[ExportEvent]:
    get_export(session, org_id, export_id)
    return list(session.scalars(
        select(ExportEvent).where(ExportEvent.export_id == export_id).order_by(ExportEvent.id)
    ).all())


def retry_export(session: Session, org_id: str, export_id: str, *, actor: str) -> AccountingExport:
    """An operator's explicit retry: only a failed export goes back to processing."""
    export = get_export(session, org_id, export_id)
    if export.status != ExportStatus.FAILED.value:
        raise IllegalStatusChange(
            f"export {export_id} is {export.status}; only a failed export can be retried")
    return apply_status_callback(session, org_id, export_id, status=ExportStatus.PROCESSING,
                                 external_reference=None, error_message=None, actor=actor,
                                 reason="retried on request: a fresh attempt budget")


def stuck_export_conditions(now, stuck_after_seconds: int) -> tuple:
    """Exports in ``processing`` that no message will ever run again (the sweeper re-queues
    them; the status page counts them). ``now``: the database's clock."""
    overdue = now - timedelta(seconds=stuck_after_seconds)
    return (
        AccountingExport.status == ExportStatus.PROCESSING.value,
        or_(
            # An attempt claimed the export and its lease ran out without a retry being
            # scheduled: its worker died (with the threads pool Celery does not requeue the
            # message of a killed process; Redis would after the visibility timeout, an hour).
            # Its next attempt may start now.
            AccountingExport.lease_expires_at < now,
            # Nobody holds it and it was due long ago: its message was lost.
            and_(AccountingExport.lease_expires_at.is_(None),
                 or_(AccountingExport.next_attempt_at.is_(None),
                     AccountingExport.next_attempt_at < overdue)),
        ),
    )
