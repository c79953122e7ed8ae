"""The one way to change an export's status.

Allowed moves (the statuses are exactly the API contract's):

    processing -> success | failed | cancelled
    failed     -> processing        (only on an explicit retry or re-run by an operator)
    success, cancelled: terminal

``transition()`` is a compare-and-set: the UPDATE only matches while the row still has the status
the caller saw (and, for the end states, the posting state the posting protocol requires), so two
racing actors (a worker finishing, a DELETE cancelling, a PUT callback) cannot both win. The status change and its event row are written in the caller's transaction.
Finer steps (queued, started, posted to target, receipt attached, retry scheduled) are events
written with ``record_event()``; they never change the status.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, update
from sqlalchemy.orm import Session

from shared.db.models import AccountingExport, ExportEvent
from shared.db.types import utcnow
from shared.domain.statuses import ExportStatus

P, S, F, C = (ExportStatus.PROCESSING, ExportStatus.SUCCESS, ExportStatus.FAILED,
              ExportStatus.CANCELLED)

ALLOWED_TRANSITIONS: dict[ExportStatus, frozenset[ExportStatus]] = {
    P: frozenset({S, F, C}),
    F: frozenset({P}),
    S: frozenset(),
    C: frozenset(),
}
TERMINAL = frozenset({S, C})


class IllegalTransition(Exception):
    """The move is not in the table (e.g. success -> failed)."""

    def __init__(self, export_id: str, current: ExportStatus, requested: ExportStatus) -> None:
        self.export_id = export_id
        self.current = ExportStatus(current)
        self.requested = ExportStatus(requested)
        allowed = sorted(s.value for s in ALLOWED_TRANSITIONS[self.current]) or ["none"]
        super().__init__(
            f"export {export_id} is {self.current.value}; it cannot become {self.requested.value} "
            f"(allowed from {self.current.value}: {', '.join(allowed)})"
        )


class ConcurrentTransition(Exception):
    """Someone else changed the export (or a guard failed) between our read and our write."""


def is_allowed(current: ExportStatus, requested: ExportStatus) -> bool:
    return ExportStatus(requested) in ALLOWED_TRANSITIONS[ExportStatus(current)]


def transition(
    session: Session,
    export: AccountingExport,
    to_status: ExportStatus,
    *,
    actor: str,
    reason: str | None = None,
    attempt: int | None = None,
    celery_task_id: str | None = None,
    guard: ColumnElement[bool] | None = None,
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> AccountingExport:
    """Move ``export`` to ``to_status`` and append the event, or raise.

    ``guard`` adds a condition the row must still meet (e.g. "posting has not started");
    ``fields`` are written in the same UPDATE (external_reference, error_message, ...).
    """
    current = ExportStatus(export.status)
    to_status = ExportStatus(to_status)
    if not is_allowed(current, to_status):
        raise IllegalTransition(export.id, current, to_status)

    now = utcnow()
    values: dict[str, Any] = {"status": to_status.value, "updated_at": now, **fields}
    values["active_key"] = (
        f"{export.expense_id}:{export.target_system}" if to_status in (P, S) else None
    )
    if to_status is S:
        values.setdefault("exported_at", now)
    if to_status is not P:
        values.update(lease_owner=None, lease_expires_at=None, next_attempt_at=None)

    condition = and_(AccountingExport.id == export.id, AccountingExport.status == current.value)
    if to_status in (F, C):
        # The posting protocol's invariant (worker.posting): a failed or cancelled export owns no
        # record in the target. One whose request may have booked it (in doubt) or did (booked)
        # can only succeed.
        condition = and_(condition, AccountingExport.posting_started_at.is_(None),
                         AccountingExport.external_id.is_(None))
    elif to_status is S:
        # Success with a voucher we booked, or - by PUT callback - for an export we never
        # started to post (booked elsewhere); never while our own request is in doubt.
        condition = and_(condition, or_(AccountingExport.external_id.is_not(None),
                                        AccountingExport.posting_started_at.is_(None)))
    if guard is not None:
        condition = and_(condition, guard)
    result = session.execute(
        update(AccountingExport).where(condition).values(**values).execution_options(
            synchronize_session=False
        )
    )
    if result.rowcount != 1:
        raise ConcurrentTransition(
            f"export {export.id} changed while moving {current.value} -> {to_status.value}"
        )
    session.add(
        ExportEvent(
            export_id=export.id,
            kind="status_changed",
            from_status=current.value,
            to_status=to_status.value,
            actor=actor,
            attempt=attempt,
            reason=reason,
            celery_task_id=celery_task_id,
            data=data,
            created_at=now,
        )
    )
    session.flush()
    session.refresh(export)
    if export.source_unit_id is not None:
        from shared.domain.sources import enqueue_report, reopen_package

        if to_status is P:
            # failed -> processing (an operator's retry): the package is not done until this
            # export ends again, and the source must then be told the new outcome.
            reopen_package(session, export.source_unit_id, actor=actor)
        else:
            # Every way an export ends (worker, DELETE, PUT callback) owes its source a report.
            enqueue_report(session, export.source_unit_id)
    return export


def record_event(
    session: Session,
    export: AccountingExport,
    kind: str,
    *,
    actor: str,
    reason: str | None = None,
    attempt: int | None = None,
    celery_task_id: str | None = None,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> ExportEvent:
    """Append a finer step to the export's log without changing its status."""
    event = ExportEvent(
        export_id=export.id,
        kind=kind,
        actor=actor,
        attempt=attempt,
        reason=reason,
        celery_task_id=celery_task_id,
        data=data,
        created_at=at or utcnow(),
    )
    session.add(event)
    session.flush()
    return event
