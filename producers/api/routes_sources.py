"""/api/v1/source-exports: the packages sources announced, and each voucher's outcome."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel
from sqlalchemy.orm import Session

from producers.api.deps import Caller, RequestSession, exports_caller
from producers.api.errors import error_responses
from producers.api.schemas import ID_PATTERN, Pagination
from shared.db.models import SourceUnit
from shared.domain import sources

router = APIRouter(prefix="/api/v1/source-exports", tags=["source-exports"],
                   responses=error_responses(401, 403, 422, 503))


class SourceVoucherOut(BaseModel):
    voucher_id: str
    expense_id: str | None
    export_id: str | None
    error: str | None
    reported_status: str | None
    reported_at: datetime | None
    # What an operator should know: a receipt not attached, or a change the source made after
    # we took the item (a correction to make by hand; never a second booking).
    note: str | None = None


class SourceExportOut(BaseModel):
    source_export_id: str
    source_export_ref: str
    status: str
    received_via: str
    verification_lists_type: str | None
    voucher_count: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    vouchers: list[SourceVoucherOut] | None = None


class SourceExportList(BaseModel):
    data: list[SourceExportOut]
    pagination: Pagination


def _out(row: SourceUnit, with_vouchers: bool = False) -> SourceExportOut:
    return SourceExportOut(
        source_export_id=row.id, source_export_ref=row.external_export_id, status=row.status,
        received_via=row.received_via, verification_lists_type=row.verification_lists_type,
        voucher_count=row.voucher_count, last_error=row.last_error, created_at=row.created_at,
        updated_at=row.updated_at,
        vouchers=[SourceVoucherOut(voucher_id=v.external_voucher_id, expense_id=v.expense_id,
                                   export_id=v.export_id, error=v.outcome_error,
                                   reported_status=v.reported_status, reported_at=v.reported_at,
                                   note=v.note)
                  for v in row.vouchers] if with_vouchers else None)


@router.get("", response_model=SourceExportList, summary="Packages received from sources")
def list_source_exports(caller: Caller = Depends(exports_caller),
                        session: Session = RequestSession,
                        page: int = Query(1, ge=1, le=100_000),
                        limit: int = Query(20, ge=1, le=100),
                        source_export_ref: str | None = Query(None, max_length=100,
                                                              pattern=r"^[^\x00-\x1f]+$")):
    rows, total = sources.list_source_units(session, caller.organization_id, page=page,
                                            limit=limit, external_export_id=source_export_ref)
    return SourceExportList(data=[_out(r) for r in rows],
                            pagination=Pagination(page=page, limit=limit, total=total))


@router.post("/{source_export_id}/retry", response_model=SourceExportOut, status_code=202,
             responses=error_responses(404, 409),
             summary="Retry what failed in a completed package",
             description="For a package `completed_with_failures`: its items that were refused "
                         "before anything was posted (an unmapped account, say) are converted "
                         "again with the connection's current options, and its failed exports "
                         "are retried. Booked items are never touched. 409 while the package is "
                         "still being worked on or when nothing in it failed. `aic source retry` "
                         "does the same.")
def retry_source_export(source_export_id: str = Path(pattern=ID_PATTERN),
                        caller: Caller = Depends(exports_caller),
                        session: Session = RequestSession):
    row = sources.retry_source_unit(session, caller.organization_id, source_export_id,
                                    actor=caller.actor)
    session.flush()
    session.refresh(row)
    return _out(row, with_vouchers=True)


@router.get("/{source_export_id}", response_model=SourceExportOut, responses=error_responses(404),
            summary="A package with every voucher's export and report status")
def get_source_export(source_export_id: str = Path(pattern=ID_PATTERN),
                      caller: Caller = Depends(exports_caller), session: Session = RequestSession):
    row = sources.get_source_unit(session, caller.organization_id, source_export_id)
    return _out(row, with_vouchers=True)
