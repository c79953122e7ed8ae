"""GET /api/v1/admin/status: the whole system at a glance, for operators (``aic status`` prints
the same). Bearer AIC_ADMIN_TOKEN: it spans every organization."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from producers.api.deps import require_admin
from producers.api.errors import error_responses
from shared.db.session import session_scope
from shared.domain.overview import export_status
from shared.queue import broker_overview

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=error_responses(401, 503, descriptions={
                       401: "Missing or wrong admin token"}))


class FailureGroupOut(BaseModel):
    error_code: str
    count: int
    example: str | None


class ConnectionTroubleOut(BaseModel):
    connection_id: str
    organization_id: str
    target_system: str
    failed_last_hour: int
    waiting: int
    last_error: str | None


class ExportsStatusOut(BaseModel):
    at: datetime
    by_status: dict[str, int]
    oldest_processing: dict[str, Any] | None
    in_doubt: int
    stuck: int
    stuck_sample: list[str]
    failures_last_hour: list[FailureGroupOut]
    connections_in_trouble: list[ConnectionTroubleOut]


class BrokerStatusOut(BaseModel):
    reachable: bool
    error: str | None
    queues: dict[str, int]
    unacked: int | None
    # Messages due later (retry countdowns, rate-limit turns) waiting in Redis for their time.
    delayed: int | None = None
    workers: list[str]


class SystemStatusOut(BaseModel):
    exports: ExportsStatusOut
    broker: BrokerStatusOut


@router.get("/status", response_model=SystemStatusOut, summary="The system at a glance",
            description="Exports by status across organizations, the oldest one still "
                        "processing, exports in doubt (a POST that may be stored, resolved by a "
                        "lookup) and stuck (no message will run them: the sweeper re-queues "
                        "them), failures of the last hour by reason, connections in trouble, "
                        "and the broker: messages ready per queue, held by workers, workers "
                        "that answer.")
def system_status() -> SystemStatusOut:
    with session_scope() as session:
        exports = export_status(session).as_dict()
    return SystemStatusOut(exports=exports, broker=broker_overview())
