"""The one way to change an export's status.

Allowed moves (the statuses are exactly the API contract's):

    processing -> success | failed | cancelled
    failed     -> processing        (only on an explicit retry or re-run by an operator)
    success, cancelled: terminal

``transition()`` is a compare-and-set: the UPDATE only matches while the row still has the status
the caller saw (and, for the end states, the posting state the posting protocol requires), so two
racing actors (a worker finishing, a DELETE cancelling, a PUT callback) cannot both win. The status change and its event row are written in the caller's transaction. The worker, which
knows the export from its claim, uses ``transition_known()``: the same statement without reading
the row first.
Finer steps (queued, started, posted to target, receipt attached, retry scheduled) are events
written with ``record_event()``; they never change the status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ClauseElement, ColumnElement, and_, bindparam, insert, or_, update
from sqlalchemy.orm import Session

from shared.db.models import AccountingExport, ExportEvent
from shared.db.session import Transaction
from shared.db.types import utcnow
from shared.domain.statuses import ExportStatus
from shared.metrics import count_export_event

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


@dataclass(frozen=True)
class ExportKey:
    """What a status change needs to know of an export besides its status: the worker knows it
    from its claim, so it changes status without loading the row (``transition_known``)."""

    id: str
    expense_id: str
    target_system: str
    source_unit_id: str | None

    @classmethod
    def of(cls, export: AccountingExport) -> ExportKey:
        return cls(export.id, export.expense_id, export.target_system, export.source_unit_id)


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
    """Move ``export`` to ``to_status`` and append the event, or raise; ``export`` is refreshed.

    ``guard`` adds a condition the row must still meet (e.g. "posting has not started");
    ``fields`` are written in the same UPDATE (external_reference, error_message, ...).
    """
    transition_known(session, ExportKey.of(export), ExportStatus(export.status), to_status,
                     actor=actor, reason=reason, attempt=attempt, celery_task_id=celery_task_id,
                     guard=guard, data=data, **fields)
    session.refresh(export)
    return export


def transition_known(
    session: Transaction,
    export: ExportKey,
    current: ExportStatus,
    to_status: ExportStatus,
    *,
    actor: str,
    reason: str | None = None,
    attempt: int | None = None,
    celery_task_id: str | None = None,
    lease_owner: str | None = None,
    guard: ColumnElement[bool] | None = None,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
    voucher_step: EventRow | None = None,
    **fields: Any,
) -> None:
    """``transition()`` for a caller that knows the status it saw and ``export``'s key (the
    worker, from its claim): the same compare-and-set and event, without reading the row.

    ``lease_owner`` is the guard "the row's lease is still this one" as a bound parameter, so
    the statement is built once per shape and reused (``guard`` builds it anew every time).
    ``at``: the time to record (the worker's attempt clock, which its other steps' events use,
    so the log stays in order); this process's clock by default.

    ``session`` may be a ``CoreTransaction`` (the worker's), except for a move to processing of
    an export of a source package (``reopen_package`` reads the package with the ORM).

    ``voucher_step``: processing -> success that also records the target's voucher in the same
    UPDATE (``fields`` carry external_id and the rest), for the lease holder only. The
    compare-and-set is then "processing, this lease, no voucher recorded yet": the voucher it
    records is what makes the success legal. The step's own event row (posted_to_target) is
    written just before the status change's, in the same INSERT. Why: the worker finishing an
    export without a receipt spends one UPDATE and one INSERT instead of two of each (issue 12,
    CPU per export); it is still one guarded write and one event row per step.
    """
    current = ExportStatus(current)
    to_status = ExportStatus(to_status)
    if not is_allowed(current, to_status):
        raise IllegalTransition(export.id, current, to_status)
    records_voucher = voucher_step is not None
    if records_voucher and (to_status is not S or lease_owner is None
                            or fields.get("external_id") is None):
        raise ValueError("voucher_step: processing -> success by the lease holder, with the "
                         "voucher's external_id")

    now = at or utcnow()
    values: dict[str, Any] = {"status": to_status.value, "updated_at": now, **fields}
    values["active_key"] = (
        f"{export.expense_id}:{export.target_system}" if to_status in (P, S) else None
    )
    if to_status is S:
        values.setdefault("exported_at", now)
    if to_status is not P:
        values.update(lease_owner=None, lease_expires_at=None, next_attempt_at=None)

    params = {"w_id": export.id, "w_lease": lease_owner,
              **{f"v_{name}": value for name, value in values.items()
                 if not isinstance(value, ClauseElement)}}
    statement = _status_update(current, to_status, lease_owner is not None, values,
                               records_voucher=records_voucher)
    if guard is not None:
        statement = statement.where(guard)
    flush_pending(session)
    result = session.connection().execute(statement, params)
    if result.rowcount != 1:
        raise ConcurrentTransition(
            f"export {export.id} changed while moving {current.value} -> {to_status.value}"
        )
    changed = EventRow(export.id, export.target_system, "status_changed", actor,
                       from_status=current.value, to_status=to_status.value, reason=reason,
                       attempt=attempt, celery_task_id=celery_task_id, data=data, at=now)
    insert_events(session, [voucher_step, changed] if records_voucher else [changed])
    if export.source_unit_id is not None:
        from shared.domain.sources import enqueue_report, reopen_package

        if to_status is P:
            # failed -> processing (an operator's retry): the package is not done until this
            # export ends again, and the source must then be told the new outcome.
            reopen_package(session, export.source_unit_id, actor=actor)
        else:
            # Every way an export ends (worker, DELETE, PUT callback) owes its source a report.
            enqueue_report(session, export.source_unit_id)


_EXPORTS = AccountingExport.__table__
_EVENTS = ExportEvent.__table__
# Statements built once per shape (which columns are set, which guard) with bound parameters:
# building a statement and its cache key costs more CPU than running it (issue 12).
_statements: dict[tuple, Any] = {}


def _status_update(current: ExportStatus, to_status: ExportStatus, leased: bool,
                   values: dict[str, Any], *, records_voucher: bool = False):
    """The compare-and-set of ``current`` -> ``to_status``; ``values`` names what it sets (SQL
    expressions in it, e.g. ``attempts - 1``, are part of the statement's shape).
    ``records_voucher``: a success that records the voucher itself (``transition_known``'s
    ``voucher_step``)."""
    # A value that is an SQL expression (``attempts - 1``) makes the statement one of its own.
    cacheable = not any(isinstance(v, ClauseElement) for v in values.values())
    shape = (current, to_status, leased, tuple(values), records_voucher)
    if cacheable and shape in _statements:
        return _statements[shape]
    t = _EXPORTS.c
    condition = and_(t.id == bindparam("w_id"), t.status == current.value)
    if to_status in (F, C):
        # The posting protocol's invariant (worker.posting): a failed or cancelled export owns no
        # record in the target. One whose request may have booked it (in doubt) or did (booked)
        # can only succeed.
        condition = and_(condition, t.posting_started_at.is_(None), t.external_id.is_(None))
    elif to_status is S and records_voucher:
        # The voucher this UPDATE records is the one the export gets: none recorded before it
        # (another voucher already recorded would be a duplicate, handled by the caller).
        condition = and_(condition, t.external_id.is_(None))
    elif to_status is S:
        # Success with a voucher we booked, or - by PUT callback - for an export we never
        # started to post (booked elsewhere); never while our own request is in doubt.
        condition = and_(condition, or_(t.external_id.is_not(None),
                                        t.posting_started_at.is_(None)))
    if leased:
        condition = and_(condition, t.lease_owner == bindparam("w_lease"))
    statement = update(_EXPORTS).where(condition).values({
        name: value if isinstance(value, ClauseElement) else bindparam(f"v_{name}")
        for name, value in values.items()})
    if cacheable:
        _statements[shape] = statement
    return statement


_INSERT_EVENT = insert(_EVENTS).values(
    export_id=bindparam("e_export_id"), kind=bindparam("e_kind"),
    from_status=bindparam("e_from_status"), to_status=bindparam("e_to_status"),
    actor=bindparam("e_actor"), attempt=bindparam("e_attempt"), reason=bindparam("e_reason"),
    celery_task_id=bindparam("e_celery_task_id"), data=bindparam("e_data", type_=_EVENTS.c.data.type),
    created_at=bindparam("e_created_at", type_=_EVENTS.c.created_at.type))


def flush_pending(session: Transaction) -> None:
    """Statements sent on the session's connection directly skip the ORM's autoflush: write the
    session's pending objects first (an export created in this transaction, before its event)."""
    if session.new or session.dirty or session.deleted:
        session.flush()


@dataclass(frozen=True)
class EventRow:
    """One row of an export's event log, for ``insert_events``."""

    export_id: str
    target_system: str
    kind: str
    actor: str
    from_status: str | None = None
    to_status: str | None = None
    reason: str | None = None
    attempt: int | None = None
    celery_task_id: str | None = None
    data: dict[str, Any] | None = None
    at: datetime | None = None


def insert_events(session: Transaction, rows: list[EventRow]) -> None:
    """Append rows to the event log in the session's transaction, in order (one prebuilt
    INSERT, executed once for all of them; no ORM object), and count each in the metrics once
    the transaction commits."""
    if not rows:
        return
    flush_pending(session)
    now = utcnow()
    session.connection().execute(_INSERT_EVENT, [{
        "e_export_id": row.export_id, "e_kind": row.kind, "e_from_status": row.from_status,
        "e_to_status": row.to_status, "e_actor": row.actor, "e_attempt": row.attempt,
        "e_reason": row.reason, "e_celery_task_id": row.celery_task_id, "e_data": row.data,
        "e_created_at": row.at or now} for row in rows])
    for row in rows:
        count_export_event(session, row.kind, row.to_status, row.export_id, row.target_system,
                           row.data)


def insert_event(
    session: Transaction,
    export_id: str,
    target_system: str,
    kind: str,
    *,
    actor: str,
    from_status: str | None = None,
    to_status: str | None = None,
    reason: str | None = None,
    attempt: int | None = None,
    celery_task_id: str | None = None,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Append one row to the export's event log (``insert_events``)."""
    insert_events(session, [EventRow(export_id, target_system, kind, actor, from_status,
                                     to_status, reason, attempt, celery_task_id, data, at)])


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
) -> None:
    """Append a finer step to the export's log without changing its status."""
    insert_event(session, export.id, export.target_system, kind, actor=actor, reason=reason,
                 attempt=attempt, celery_task_id=celery_task_id, data=data, at=at)
