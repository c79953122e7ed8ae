"""Request and response bodies of the REST API, shaped as the contract (seed 000) shows them."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.db.models import AccountingExport, ExportEvent, ExportStatus

ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"


class TargetSystem(str, Enum):
    TRIPLETEX = "tripletex"


class StrictBody(BaseModel):
    # Unknown fields are refused: a typo ("expence_id") must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


class CreateExport(StrictBody):
    expense_id: str = Field(pattern=ID_PATTERN, examples=["exp_9c2d7e"])
    target_system: TargetSystem = Field(examples=["tripletex"])
    reexport: bool = Field(default=False, description="Book again although a successful export exists.")


class CreateBatch(StrictBody):
    expense_ids: list[str] = Field(min_length=1, examples=[["exp_9c2d7e", "exp_1a4f8b"]])
    target_system: TargetSystem
    reexport: bool = False


class UpdateStatus(StrictBody):
    status: ExportStatus
    external_reference: str | None = Field(default=None, max_length=200)
    error_message: str | None = Field(default=None, max_length=2000)


class ExportSummary(BaseModel):
    export_id: str
    expense_id: str
    target_system: str
    status: ExportStatus
    external_reference: str | None
    exported_at: datetime | None
    batch_id: str | None = None
    initiated_at: datetime

    @classmethod
    def of(cls, export: AccountingExport) -> "ExportSummary":
        return cls(export_id=export.id, expense_id=export.expense_id,
                   target_system=export.target_system, status=export.status,
                   external_reference=export.external_reference, exported_at=export.exported_at,
                   batch_id=export.batch_id, initiated_at=export.created_at)


class ExportDetail(ExportSummary):
    organization_id: str
    error_message: str | None
    attempts: int
    updated_at: datetime

    @classmethod
    def of(cls, export: AccountingExport) -> "ExportDetail":
        return cls(**ExportSummary.of(export).model_dump(), organization_id=export.organization_id,
                   error_message=export.error_message, attempts=export.attempts,
                   updated_at=export.updated_at)


class Pagination(BaseModel):
    page: int
    limit: int
    total: int


class ExportList(BaseModel):
    data: list[ExportSummary]
    pagination: Pagination


class CreatedExport(BaseModel):
    export_id: str
    expense_id: str
    target_system: str
    status: ExportStatus
    initiated_at: datetime


class CreatedBatch(BaseModel):
    batch_id: str
    expense_ids: list[str]
    export_ids: list[str]
    target_system: str
    status: ExportStatus
    initiated_at: datetime


class BatchProgress(BaseModel):
    batch_id: str
    target_system: str
    total: int
    counts: dict[str, int]
    done: bool
    initiated_at: datetime


class StatusUpdated(BaseModel):
    export_id: str
    status: ExportStatus
    external_reference: str | None
    exported_at: datetime | None


class Cancelled(BaseModel):
    deleted: bool
    export_id: str


class EventOut(BaseModel):
    kind: str
    from_status: str | None
    to_status: str | None
    actor: str
    attempt: int | None
    reason: str | None
    celery_task_id: str | None
    data: dict[str, Any] | None
    at: datetime

    @classmethod
    def of(cls, event: ExportEvent) -> "EventOut":
        return cls(kind=event.kind, from_status=event.from_status, to_status=event.to_status,
                   actor=event.actor, attempt=event.attempt, reason=event.reason,
                   celery_task_id=event.celery_task_id, data=event.data, at=event.created_at)


class EventList(BaseModel):
    export_id: str
    events: list[EventOut]


# --- expenses ---------------------------------------------------------------------------------

class ExpenseRowIn(StrictBody):
    account: str = Field(min_length=1, max_length=20, pattern=r"^[0-9A-Za-z\-]+$")
    amount: Decimal = Field(description="Signed gross amount, debit positive; at most 2 decimals.")
    vat_code: str | None = Field(default=None, max_length=10)
    description: str = Field(default="", max_length=255)
    department: str | None = Field(default=None, max_length=40)
    project: str | None = Field(default=None, max_length=40)


class CreateExpense(StrictBody):
    source_ref: str = Field(min_length=1, max_length=200, description="The source system's id.")
    status: str = Field(pattern=r"^(draft|submitted|approved|rejected)$")
    description: str = Field(min_length=1, max_length=500)
    employee_name: str | None = Field(default=None, max_length=200)
    expense_date: date
    currency: str = Field(default="NOK", pattern=r"^[A-Z]{3}$")
    rows: list[ExpenseRowIn] = Field(min_length=2, max_length=200)


class ExpenseOut(BaseModel):
    expense_id: str
    source: str
    source_ref: str
    status: str
    description: str
    employee_name: str | None
    expense_date: date
    currency: str
    amount: Decimal
    has_receipt: bool
    created: bool = False


# --- admin ------------------------------------------------------------------------------------

class CreateOrganization(StrictBody):
    name: str = Field(min_length=1, max_length=200)


class OrganizationCreated(BaseModel):
    organization_id: str
    name: str
    api_key: str = Field(description="Shown once; store it now. Only its hash is kept.")
    api_key_id: str


class OrganizationOut(BaseModel):
    organization_id: str
    name: str
    created_at: datetime


class ApiKeyCreated(BaseModel):
    api_key_id: str
    api_key: str


class ApiKeyOut(BaseModel):
    api_key_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class PutConnection(StrictBody):
    base_url: str = Field(min_length=8, max_length=500, examples=["https://api-test.tripletex.tech/v2"])
    credentials: dict[str, str] | None = Field(
        default=None, description="Tripletex: consumer_token, employee_token, company_id (default 0). "
                                  "Omit to keep the stored credentials.")
    account_mapping: dict[str, Any] | None = None
    options: dict[str, Any] | None = None


class ConnectionOut(BaseModel):
    connection_id: str
    organization_id: str
    target_system: str
    base_url: str
    account_mapping: dict[str, Any]
    options: dict[str, Any]
    has_credentials: bool
    updated_at: datetime
