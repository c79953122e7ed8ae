"""The one way to change a source unit's status, and its event log.

A source unit is one piece of work a source announced (a Findity export package, a TRAEDE entry,
a Brex expense); it is not an accounting export. Allowed moves:

    received   -> ingesting                  (a worker claims it, with a lease)
    ingesting  -> ingesting                  (re-claimed after the lease ran out)
    ingesting  -> received                   (waits: not found yet, a transient error)
    ingesting  -> rejected                   (not found past the grace: a forged or stale id)
    ingesting  -> processing                 (its items are ingested; their exports run)
    rejected   -> received                   (the source's own listing names it again)
    processing -> completed | completed_with_failures   (every outcome final and, unless the
                                                        source is told nothing, held by it)
    completed, completed_with_failures -> processing    (an export of it runs again)
    completed <-> completed_with_failures               (an outcome changed while settled)
    completed_with_failures -> received                 (an operator retries the items refused
                                                        at ingest, e.g. after a mapping fix)

``transition_unit()`` is a compare-and-set on the status the caller read (plus any guard, e.g.
the claim's attempt as a fencing token), and writes a ``status_changed`` event in the caller's
transaction, so two actors (a worker, the poller, the sweeper, an operator's retry) cannot both
win. Finer steps are events written with ``record_unit_event()``.
"""

from __future__ import annotations

from typing import Any

from datetime import datetime

from sqlalchemy import ColumnElement, Connection, Insert, bindparam, insert, select, update
from sqlalchemy.orm import Session

from shared.db.models import SourceUnit, SourceUnitEvent
from shared.db.types import utcnow
from shared.domain.statuses import SourceUnitStatus

__all__ = ["SourceUnitStatus", "transition_unit", "record_unit_event", "write_unit_event",
           "SETTLED", "ALLOWED_TRANSITIONS", "IllegalUnitTransition"]


R, I, P, C, CF, X = (SourceUnitStatus.RECEIVED, SourceUnitStatus.INGESTING,
                     SourceUnitStatus.PROCESSING, SourceUnitStatus.COMPLETED,
                     SourceUnitStatus.COMPLETED_WITH_FAILURES, SourceUnitStatus.REJECTED)

ALLOWED_TRANSITIONS: dict[SourceUnitStatus, frozenset[SourceUnitStatus]] = {
    R: frozenset({I}),
    I: frozenset({I, R, X, P}),
    X: frozenset({R}),
    P: frozenset({C, CF}),
    C: frozenset({P, CF}),
    CF: frozenset({P, C, R}),
}
SETTLED = frozenset({C, CF})


class IllegalUnitTransition(ValueError):
    """A move not in the table: a programming error, never a race."""


def transition_unit(session: Session, unit: SourceUnit, to: SourceUnitStatus, *, actor: str,
                    reason: str | None = None, guard: tuple[ColumnElement[bool], ...] = (),
                    values: dict[str, Any] | None = None,
                    data: dict[str, Any] | None = None) -> bool:
    """Move ``unit`` from the status it was read with to ``to`` (setting ``values`` too) if
    nobody changed it meanwhile and every ``guard`` holds. False, and nothing written, if not.

    The unit's changed attributes are expired, so reading them again (in this transaction)
    sees what was written, SQL expressions in ``values`` included.
    """
    current = SourceUnitStatus(unit.status)
    to = SourceUnitStatus(to)
    if to not in ALLOWED_TRANSITIONS[current]:
        raise IllegalUnitTransition(f"source unit {unit.id} is {current.value}; it cannot "
                                    f"become {to.value}")
    now = utcnow()
    values = {"status": to.value, "updated_at": now, **(values or {})}
    moved = session.execute(
        update(SourceUnit)
        .where(SourceUnit.id == unit.id, SourceUnit.status == current.value, *guard)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if moved != 1:
        return False
    session.expire(unit, list(values))
    # The UPDATE above flushed the session's pending changes first (autoflush).
    write_unit_event(session.connection(), unit.id,
                     "status_changed" if to != current else "reclaimed", actor=actor,
                     from_status=current.value, to_status=to.value, reason=reason, data=data,
                     at=now)
    return True


def record_unit_event(session: Session, unit_id: str, kind: str, *, actor: str,
                      reason: str | None = None, data: dict[str, Any] | None = None) -> None:
    """A step that changes no status (announced, listed again, re-queued by the sweeper)."""
    # What the session holds unflushed happened before this step: written first, so the log
    # keeps the order of events (and a unit added in this session exists for the foreign key).
    session.flush()
    write_unit_event(session.connection(), unit_id, kind, actor=actor, reason=reason, data=data)


# Every event row is written by this one prebuilt statement (or, where a statement writes units
# and their events at once, by insert_event_of_each), the values bound at execution:
# the webhook receiver writes one per new unit without an ORM session, and the ORM's flush of
# an added event cost more CPU than the INSERT itself (issue 12, target 6). Inline: nothing
# reads the new row's id, and without it PostgreSQL would send it back (RETURNING id) each time.
_INSERT_EVENT = insert(SourceUnitEvent.__table__).inline()


def insert_event_of_each(units) -> Insert:
    """``write_unit_event``'s row (no status change, no reason) for each unit id that ``units``
    (a CTE or subquery with an ``id`` column) yields, as ``INSERT ... SELECT``: for a statement
    that writes the units and their events at once (the webhook receiver's on PostgreSQL,
    ``sources._record_webhook_statement``). Binds ``event_kind``, ``event_actor``,
    ``event_data`` and ``created_at``."""
    events = SourceUnitEvent.__table__
    return insert(events).from_select(
        ["unit_id", "kind", "actor", "data", "created_at"],
        select(units.c.id, bindparam("event_kind", type_=events.c.kind.type),
               bindparam("event_actor", type_=events.c.actor.type),
               bindparam("event_data", type_=events.c.data.type),
               bindparam("created_at", type_=events.c.created_at.type)))


def write_unit_event(connection: Connection, unit_id: str, kind: str, *, actor: str,
                     from_status: str | None = None, to_status: str | None = None,
                     reason: str | None = None, data: dict[str, Any] | None = None,
                     at: datetime | None = None) -> None:
    """Append one event to a unit's log, in the connection's transaction (with
    ``insert_event_of_each``, the only writer of ``source_unit_events``; sessions go through
    ``record_unit_event``/``transition_unit``)."""
    # Every column bound every time: one compiled form of the statement, cached.
    connection.execute(_INSERT_EVENT, {
        "unit_id": unit_id, "kind": kind, "from_status": from_status, "to_status": to_status,
        "actor": actor, "reason": reason, "data": data, "created_at": at or utcnow()})
