"""Re-send exports that sit in ``processing`` with no message that will ever run them.

A message can be lost: Redis restarted without persistence, the broker was down when the API
committed, a duplicate was dropped while its original's worker crashed. The database is the
truth, so the sweeper asks it, not the broker or Flower, on the database's clock: an export in
``processing`` whose attempt's lease ran out (its worker died) is queued again at once, and one
that nobody holds and whose next attempt was due more than ``stuck_after_seconds`` ago (its
message was lost) too.
Duplicates this might create are harmless: the export task claims a lease first.

A domain service (no worker code): beat runs it through the sweep task, an operator through
``aic sweep``.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, select, update

from shared.config import get_settings
from shared.db.clock import database_now
from shared.db.models import AccountingExport, SourceUnit
from shared.db.session import session_scope
from shared.domain import sources
from shared.domain.exports import stuck_export_conditions
from shared.domain.source_units import SourceUnitStatus, record_unit_event
from shared.domain.state_machine import record_event
from shared.domain.statuses import ExportStatus
from shared.jobs import enqueue_after_commit
from shared.logs import get_logger
from shared.queue import TASK_EXPORT

log = get_logger(__name__)
SWEEP_LIMIT = 500


def requeue_stuck_exports(now=None) -> int:
    settings = get_settings()
    requeued = 0
    with session_scope() as session:
        now = now or database_now(session)
        stuck_conditions = stuck_export_conditions(now, settings.stuck_after_seconds)
        candidates = stuck_export_candidates(session, now, settings.stuck_after_seconds)
        for export in candidates:
            # Compare-and-set so two sweepers (beat started twice) queue each export once.
            # The lease is cleared too, so the export is requeued once per stuck period.
            moved = session.execute(
                update(AccountingExport)
                .where(AccountingExport.id == export.id, *stuck_conditions)
                .values(next_attempt_at=now, lease_owner=None, lease_expires_at=None,
                        updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if moved != 1:
                continue
            reason = (f"the lease of attempt {export.attempts} ran out (its worker stopped)"
                      if export.lease_expires_at is not None else
                      f"in processing with no runnable message for over "
                      f"{settings.stuck_after_seconds}s")
            record_event(session, export, "requeued", actor="sweeper", reason=reason, at=now)
            enqueue_after_commit(session, TASK_EXPORT, export.id, queue=settings.export_queue)
            requeued += 1
    requeued += _sweep_source_units(now)
    if requeued:
        log.warning("stuck work re-queued", count=requeued)
    return requeued


def stuck_export_candidates(session, now, stuck_after_seconds: int) -> list[AccountingExport]:
    """The sweeper's scan: at most ``SWEEP_LIMIT`` stuck exports. ``ix_exports_status_due``
    (status, next_attempt_at) keeps it to the processing rows however many others there are;
    ``bench.list_pages`` times it on a million rows."""
    return list(session.scalars(
        select(AccountingExport).where(*stuck_export_conditions(now, stuck_after_seconds))
        .limit(SWEEP_LIMIT)
    ).all())


def _sweep_source_units(now) -> int:
    """Source packages: ingestion that never finished, and reports still owed to the source."""
    settings = get_settings()
    overdue = now - timedelta(seconds=settings.source_stuck_after_seconds)
    count = 0
    with session_scope() as session:
        stuck = session.scalars(select(SourceUnit).where(
            SourceUnit.status.in_([SourceUnitStatus.RECEIVED.value,
                                     SourceUnitStatus.INGESTING.value,
                                     SourceUnitStatus.PROCESSING.value]),
            SourceUnit.updated_at < overdue,
            or_(SourceUnit.lease_expires_at.is_(None), SourceUnit.lease_expires_at < now),
        ).limit(SWEEP_LIMIT)).all()
        for source_export in stuck:
            source_export.updated_at = now  # once per stuck period, not every sweep
            if source_export.status == SourceUnitStatus.PROCESSING.value:
                sources.enqueue_report(session, source_export.id)
                what = "its reports are owed"
            else:
                sources.requeue_unit(session, source_export)
                what = "its ingestion never finished"
            record_unit_event(session, source_export.id, "requeued", actor="sweeper",
                              reason=f"{source_export.status} for over "
                                     f"{settings.source_stuck_after_seconds}s: {what}")
            count += 1
    return count
