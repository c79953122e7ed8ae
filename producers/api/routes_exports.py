"""/api/v1/accounting-exports: the contract of seed 000, plus batch progress and the event log."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy.orm import Session

from producers.api.deps import Caller, RequestSession, callbacks_caller, exports_caller
from producers.api.errors import BODY_ERROR_STATUSES, error_responses
from producers.api.schemas import (
    ID_PATTERN,
    BatchProgress,
    Cancelled,
    CreateBatch,
    CreatedBatch,
    CreatedExport,
    CreateExport,
    EventList,
    EventOut,
    ExportDetail,
    ExportList,
    ExportSummary,
    Pagination,
    StatusUpdated,
    TargetSystem,
    UpdateStatus,
)
from shared.domain import exports as service
from shared.domain.errors import ValidationFailed
from shared.domain.statuses import ExportStatus

router = APIRouter(prefix="/api/v1/accounting-exports", tags=["accounting-exports"],
                   responses=error_responses(401, 403, 422, 503))

ExportId = Path(pattern=ID_PATTERN, description="Export id, e.g. exp_xp_6a2d9c")
ERRORS = error_responses(401, 404, 409, 422, descriptions={
    401: "Missing or invalid API key", 404: "No such export in this organization",
    409: "Not allowed in the export's current state"})
BODY_ERRORS = {**ERRORS, **error_responses(*BODY_ERROR_STATUSES)}


@router.get("", response_model=ExportList, summary="List export records", responses=ERRORS)
def list_exports(
    caller: Caller = Depends(exports_caller),
    session: Session = RequestSession,
    page: int = Query(1, ge=1, le=100_000),
    limit: int = Query(20, ge=1, le=100),
    status: ExportStatus | None = None,
    target_system: TargetSystem | None = None,
    expense_id: str | None = Query(None, pattern=ID_PATTERN),
    batch_id: str | None = Query(None, pattern=ID_PATTERN),
    initiated_from: datetime | None = Query(None, description="Inclusive, ISO 8601"),
    initiated_to: datetime | None = Query(None, description="Exclusive, ISO 8601"),
) -> ExportList:
    filters = service.ExportFilters(
        status=status, target_system=target_system.value if target_system else None,
        expense_id=expense_id, batch_id=batch_id,
        initiated_from=_aware(initiated_from, "initiated_from"),
        initiated_to=_aware(initiated_to, "initiated_to"))
    rows, total = service.list_exports(session, caller.organization_id, filters,
                                       page=page, limit=limit)
    return ExportList(data=[ExportSummary.of(r) for r in rows],
                      pagination=Pagination(page=page, limit=limit, total=total))


@router.post("", status_code=202, response_model=CreatedExport, responses=BODY_ERRORS,
             summary="Export a single approved expense to accounting system")
def create_export(body: CreateExport, caller: Caller = Depends(exports_caller),
                  session: Session = RequestSession) -> CreatedExport:
    export = service.create_export(session, caller.organization_id, body.expense_id,
                                   body.target_system.value, actor=caller.actor,
                                   reexport=body.reexport)
    return CreatedExport(export_id=export.id, expense_id=export.expense_id,
                         target_system=export.target_system, status=export.status,
                         initiated_at=export.created_at)


@router.post("/batch", status_code=202, response_model=CreatedBatch, responses={
    **BODY_ERRORS, **error_responses(413, descriptions={
        413: "Too many expenses in one batch, or the body is too large"})},
    summary="Batch export multiple approved expenses")
def create_batch(body: CreateBatch, caller: Caller = Depends(exports_caller),
                 session: Session = RequestSession) -> CreatedBatch:
    batch, exports = service.create_batch(session, caller.organization_id, body.expense_ids,
                                          body.target_system.value, actor=caller.actor,
                                          reexport=body.reexport)
    return CreatedBatch(batch_id=batch.id, expense_ids=body.expense_ids,
                        export_ids=[e.id for e in exports],
                        target_system=batch.target_system, status=ExportStatus.PROCESSING,
                        initiated_at=batch.created_at)


@router.get("/batch/{batch_id}", response_model=BatchProgress, responses=ERRORS,
            summary="Progress of a batch: exports per status")
def get_batch(batch_id: str = Path(pattern=ID_PATTERN),
              caller: Caller = Depends(exports_caller),
              session: Session = RequestSession) -> BatchProgress:
    batch, counts = service.batch_progress(session, caller.organization_id, batch_id)
    return BatchProgress(batch_id=batch.id, target_system=batch.target_system,
                         total=batch.export_count, counts=counts,
                         done=counts[ExportStatus.PROCESSING.value] == 0,
                         initiated_at=batch.created_at)


@router.get("/{export_id}", response_model=ExportDetail, responses=ERRORS,
            summary="Get export status and external reference")
def get_export(export_id: str = ExportId, caller: Caller = Depends(exports_caller),
               session: Session = RequestSession) -> ExportDetail:
    return ExportDetail.of(service.get_export(session, caller.organization_id, export_id))


@router.get("/{export_id}/events", response_model=EventList, responses=ERRORS,
            summary="The export's event log, oldest first")
def get_events(export_id: str = ExportId, caller: Caller = Depends(exports_caller),
               session: Session = RequestSession) -> EventList:
    events = service.export_events(session, caller.organization_id, export_id)
    return EventList(export_id=export_id, events=[EventOut.of(e) for e in events])


@router.put("/{export_id}", response_model=StatusUpdated, responses=BODY_ERRORS,
            summary="Update export record status (webhook callback)",
            description="Records an outcome the target reported: `success` with an "
                        "`external_reference`, `failed` with an `error_message`, or `processing` "
                        "to retry a failed export. Needs an API key with the **`callbacks`** "
                        "scope (a key without it gets 403 `missing_scope`): marking an export "
                        "`success` books nothing, so only the system that books should hold it. "
                        "The event log records the key (`actor`: `api_key:<key id>`).")
def update_status(body: UpdateStatus, export_id: str = ExportId,
                  caller: Caller = Depends(callbacks_caller),
                  session: Session = RequestSession) -> StatusUpdated:
    export = service.apply_status_callback(
        session, caller.organization_id, export_id, status=body.status,
        external_reference=body.external_reference, error_message=body.error_message,
        actor=caller.actor)
    return StatusUpdated(export_id=export.id, status=export.status,
                         external_reference=export.external_reference,
                         exported_at=export.exported_at)


@router.post("/{export_id}/retry", response_model=ExportDetail, responses=ERRORS,
             summary="Retry a failed export",
             description="Moves a `failed` export back to `processing` with a fresh attempt "
                         "budget and queues it (e.g. after fixing the account mapping or the "
                         "connection's credentials). Only a failed export can be retried (409 "
                         "otherwise). The event log records who asked. `aic exports retry` "
                         "does the same.")
def retry_export(export_id: str = ExportId,
                 caller: Caller = Depends(exports_caller),
                 session: Session = RequestSession) -> ExportDetail:
    export = service.retry_export(session, caller.organization_id, export_id,
                                  actor=caller.actor)
    return ExportDetail.of(export)


@router.delete("/{export_id}", response_model=Cancelled, responses=ERRORS,
               summary="Cancel a pending export job",
               description="Cancels an export that is `processing` and has not started posting "
                           "(also while it waits for a retry). The export is kept, with status "
                           "`cancelled`, and returned; `deleted: true` is the contract's word "
                           "for it. Repeating it is harmless; an export that may already be "
                           "in the target cannot be cancelled (409 `not_cancellable`).")
def cancel_export(export_id: str = ExportId, caller: Caller = Depends(exports_caller),
                  session: Session = RequestSession) -> Cancelled:
    export = service.cancel_export(session, caller.organization_id, export_id,
                                   actor=caller.actor)
    return Cancelled.of(export)


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    try:
        # The database compares in UTC; year 1 or 9999 with an offset has no UTC equivalent.
        return value.astimezone(timezone.utc)
    except OverflowError:
        message = f"{name} is out of range: it has no UTC equivalent"
        raise ValidationFailed(message, details=[{"field": f"query.{name}",
                                                  "message": message}]) from None
