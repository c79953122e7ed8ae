"""What an operator needs at a glance, across organizations (``aic status``,
``GET /api/v1/admin/status``): where the exports are, what is stuck or waiting, what failed in
the last hour and why, which connections are in trouble.

Everything here is read from the database (the record of outcomes), on the database's clock; the
broker's side (queue depths, workers alive) is ``shared.queue.broker_overview``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.clock import database_now
from shared.db.models import AccountingExport
from shared.domain.exports import stuck_export_conditions
from shared.domain.statuses import ExportStatus

FAILURE_WINDOW = timedelta(hours=1)
STUCK_SAMPLE = 10


@dataclass(frozen=True)
class FailureGroup:
    error_code: str
    count: int
    example: str | None  # one of the messages, for the "why"


@dataclass(frozen=True)
class ConnectionTrouble:
    connection_id: str
    organization_id: str
    target_system: str
    failed_last_hour: int
    waiting: int  # processing with a message (retrying, in doubt, or waiting for credentials)
    last_error: str | None


@dataclass
class ExportStatusReport:
    at: datetime
    by_status: dict[str, int]
    oldest_processing: dict[str, Any] | None
    # Processing and in doubt (a POST may have been stored): resolved by a lookup, never failed.
    in_doubt: int
    stuck: int
    stuck_sample: list[str]
    failures_last_hour: list[FailureGroup] = field(default_factory=list)
    connections_in_trouble: list[ConnectionTrouble] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_status(session: Session) -> ExportStatusReport:
    now = database_now(session)
    processing = AccountingExport.status == ExportStatus.PROCESSING.value
    by_status = {status.value: 0 for status in ExportStatus}
    by_status.update(dict(session.execute(
        select(AccountingExport.status, func.count()).group_by(AccountingExport.status)).all()))

    oldest = session.execute(
        select(AccountingExport.id, AccountingExport.organization_id, AccountingExport.created_at,
               AccountingExport.error_message)
        .where(processing).order_by(AccountingExport.created_at).limit(1)).first()
    oldest_processing = None if oldest is None else {
        "export_id": oldest.id, "organization_id": oldest.organization_id,
        "age_seconds": round((now - oldest.created_at).total_seconds()),
        "error_message": oldest.error_message}

    in_doubt = session.scalar(select(func.count()).where(
        processing, AccountingExport.posting_started_at.is_not(None),
        AccountingExport.external_id.is_(None)))

    stuck_where = stuck_export_conditions(now, get_settings().stuck_after_seconds)
    stuck = session.scalar(select(func.count()).select_from(AccountingExport).where(*stuck_where))
    stuck_sample = list(session.scalars(select(AccountingExport.id).where(*stuck_where)
                                        .order_by(AccountingExport.created_at)
                                        .limit(STUCK_SAMPLE)))

    since = now - FAILURE_WINDOW
    failed_recently = (AccountingExport.status == ExportStatus.FAILED.value,
                       AccountingExport.updated_at >= since)
    failures = [
        FailureGroup(error_code=code or "unknown", count=count, example=example)
        for code, count, example in session.execute(
            select(AccountingExport.error_code, func.count(),
                   func.max(AccountingExport.error_message))
            .where(*failed_recently).group_by(AccountingExport.error_code)
            .order_by(func.count().desc())).all()
    ]

    # A connection is in trouble when its exports failed in the last hour, or wait with a
    # message (retrying, in doubt, or refused credentials).
    failed_count = func.sum(_when(*failed_recently))
    waiting_count = func.sum(_when(processing, AccountingExport.error_message.is_not(None)))
    troubled = session.execute(
        select(AccountingExport.connection_id, AccountingExport.organization_id,
               AccountingExport.target_system, failed_count, waiting_count,
               func.max(AccountingExport.updated_at))
        .where(AccountingExport.updated_at >= since)
        .group_by(AccountingExport.connection_id, AccountingExport.organization_id,
                  AccountingExport.target_system)
        .having((failed_count + waiting_count) > 0)).all()
    connections = []
    for connection_id, org_id, target, failed, waiting, _latest in troubled:
        last_error = session.scalar(
            select(AccountingExport.error_message)
            .where(AccountingExport.connection_id == connection_id,
                   AccountingExport.error_message.is_not(None))
            .order_by(AccountingExport.updated_at.desc()).limit(1))
        connections.append(ConnectionTrouble(connection_id, org_id, target, int(failed or 0),
                                             int(waiting or 0), last_error))
    connections.sort(key=lambda c: (c.failed_last_hour + c.waiting), reverse=True)

    return ExportStatusReport(at=now, by_status=by_status, oldest_processing=oldest_processing,
                              in_doubt=in_doubt or 0, stuck=stuck or 0, stuck_sample=stuck_sample,
                              failures_last_hour=failures, connections_in_trouble=connections)


def _when(*conditions):
    return case((and_(*conditions), 1), else_=0)
