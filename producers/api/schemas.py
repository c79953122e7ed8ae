"""Request and response bodies of the REST API, shaped as the contract (seed 000) shows them."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.db.models import AccountingExport, ExportEvent
from shared.domain.statuses import ExportStatus
from shared.integrations import registry

ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
# The MONEY column is NUMERIC(14, 2): amounts and expense totals must stay below this.
MONEY_LIMIT = Decimal("1000000000000")




def _system_enum(enum_name: str, names) -> type[Enum]:
    """The systems the registry holds when the API starts, as an enum for validation and the
    OpenAPI document (member ``TRIPLETEX`` = ``"tripletex"``)."""
    return Enum(enum_name, {name.upper(): name for name in names}, type=str)


TargetSystem = _system_enum("TargetSystem", registry.targets())
SourceSystem = _system_enum("SourceSystem", registry.sources())
# A real value for the OpenAPI examples.
TARGET_EXAMPLE = next(iter(registry.targets()))


def _per_target(describe) -> str:
    return "; ".join(f"{name}: {describe(system)}" for name, system in registry.targets().items())


class StrictBody(BaseModel):
    # Unknown fields are refused: a typo ("expence_id") must not be silently ignored.
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_character(cls, value: Any) -> Any:
        # PostgreSQL cannot store U+0000 in a text column: refuse it here (422) instead of
        # letting the database fail the request with a 5xx.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain the NUL character (\\u0000)")
        return value


class CreateExport(StrictBody):
    expense_id: str = Field(pattern=ID_PATTERN, examples=["exp_9c2d7e"])
    target_system: TargetSystem = Field(examples=[TARGET_EXAMPLE])
    reexport: bool = Field(default=False, description="Book again although a successful export exists.")


class CreateBatch(StrictBody):
    expense_ids: list[Annotated[str, Field(pattern=ID_PATTERN)]] = Field(
        min_length=1, examples=[["exp_9c2d7e", "exp_1a4f8b"]])
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
    # Why it failed, or why it is waiting (a retry, a target in doubt): what an operator scanning
    # a list needs without opening each export.
    error_message: str | None = None

    @classmethod
    def of(cls, export: AccountingExport) -> "ExportSummary":
        return cls(export_id=export.id, expense_id=export.expense_id,
                   target_system=export.target_system, status=export.status,
                   external_reference=export.external_reference, exported_at=export.exported_at,
                   batch_id=export.batch_id, initiated_at=export.created_at,
                   error_message=export.error_message)


class ExportDetail(ExportSummary):
    organization_id: str
    attempts: int
    updated_at: datetime

    @classmethod
    def of(cls, export: AccountingExport) -> "ExportDetail":
        return cls(**ExportSummary.of(export).model_dump(), organization_id=export.organization_id,
                   attempts=export.attempts, updated_at=export.updated_at)


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


class Cancelled(ExportDetail):
    """The contract's ``{"deleted": true, "export_id"}`` plus the export itself: nothing is
    deleted, the export is kept as ``cancelled`` with its event log."""

    deleted: bool = Field(description="Always true: the export is cancelled (kept, with status "
                                      "`cancelled`), never removed.")

    @classmethod
    def of(cls, export: AccountingExport) -> "Cancelled":
        return cls(**ExportDetail.of(export).model_dump(), deleted=True)


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
    amount: Decimal = Field(max_digits=14, decimal_places=2,
                            description="Signed gross amount, debit positive; at most 2 decimals.")
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

    @model_validator(mode="after")
    def _books_an_amount(self) -> "CreateExpense":
        total = sum((row.amount for row in self.rows if row.amount > 0), Decimal("0"))
        if total == 0:
            raise ValueError("an expense needs at least one debit row (an amount above zero)")
        if total >= MONEY_LIMIT:
            raise ValueError(f"the expense total {total} is too large: it must be below "
                             f"{MONEY_LIMIT}")
        return self


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

class ApiKeyScope(str, Enum):
    """What an API key may do (shared.domain.organizations.API_KEY_SCOPES)."""

    EXPORTS = "exports"
    CALLBACKS = "callbacks"


SCOPES_DESCRIPTION = (
    "What the key may do: `exports` (create, list, read and cancel exports and batches; ingest "
    "and read expenses; read source exports) and/or `callbacks` (the status callback "
    "`PUT /api/v1/accounting-exports/{id}`). Omitted: `[\"exports\"]`.")


def _scopes_field() -> Any:
    return Field(default=None, min_length=1, description=SCOPES_DESCRIPTION,
                 examples=[["exports"], ["exports", "callbacks"]])


class CreateOrganization(StrictBody):
    name: str = Field(min_length=1, max_length=200)
    api_key_scopes: list[ApiKeyScope] | None = _scopes_field()


class OrganizationCreated(BaseModel):
    organization_id: str
    name: str
    api_key: str = Field(description="Shown once; store it now. Only its hash is kept.")
    api_key_id: str
    api_key_scopes: list[str]


class CreateApiKey(StrictBody):
    name: str = Field(default="default", min_length=1, max_length=200,
                      description="Tells keys apart, e.g. the integration that uses it")
    scopes: list[ApiKeyScope] | None = _scopes_field()


class OrganizationOut(BaseModel):
    organization_id: str
    name: str
    created_at: datetime


class ApiKeyCreated(BaseModel):
    api_key_id: str
    api_key: str = Field(description="Shown once; store it now. Only its hash is kept.")
    name: str
    scopes: list[str]


class ApiKeyOut(BaseModel):
    api_key_id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class PutConnection(StrictBody):
    base_url: str = Field(min_length=8, max_length=500, examples=[
        s.base_url_example for s in registry.targets().values()][:1])
    credentials: dict[str, str] | None = Field(
        default=None, description=_per_target(lambda s: s.describe_credentials()) + ". "
                                  "Omit to keep the stored credentials; required when base_url "
                                  "changes, so stored credentials never follow a new URL.")
    account_mapping: dict[str, Any] | None = None
    options: dict[str, Any] | None = Field(
        default=None,
        description=_per_target(lambda s: ", ".join(s.options_model.model_fields)) + "; and "
                    "for every target rate_limit: "
                    "the connection's request budget shared by all workers, e.g. "
                    '{"requests_per_second": 8, "burst": 2, "max_concurrent": 4} (at most burst '
                    "requests per burst/requests_per_second seconds; burst defaults to 1 when "
                    "a rate is given; 0 turns rate or concurrency cap off; omitted keys keep "
                    "the target system's default policy). false or "
                    '{"enabled": false} turns limiting off. Omit to keep the stored options.',
        examples=[{"rate_limit": {"requests_per_second": 8, "burst": 2}}])


class ConnectionOut(BaseModel):
    connection_id: str
    organization_id: str
    target_system: str
    base_url: str
    account_mapping: dict[str, Any]
    options: dict[str, Any]
    has_credentials: bool
    updated_at: datetime
