"""Pydantic models of the Tripletex API v2 shapes the client reads.

Only the fields the client uses are declared; everything else Tripletex sends is ignored
(``extra="ignore"``), so a new field in a later API version never breaks us. Fields that the
vendor spec marks optional are optional here too: a response generated from the spec alone
(a Prism mock) must parse, while the values the client *acts on* are checked by the client.

Amounts arrive as ``Decimal`` because the client parses JSON with ``parse_float=Decimal``.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

T = TypeVar("T")

# Tripletex sends ``null`` for some empty lists (e.g. ``validationMessages``).
NullableList = Annotated[list[T], BeforeValidator(lambda v: [] if v is None else v)]
# ... and ``null`` for unset flags, which mean false.
NullableFlag = Annotated[bool, BeforeValidator(lambda v: False if v is None else v)]


class TripletexModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def parse_date(value: str | None) -> date | None:
    """Tripletex sends dates as ``YYYY-MM-DD`` strings; anything else is treated as absent."""
    if not value:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


class Ref(TripletexModel):
    """A reference to another entity: ``{"id": 1, "url": "..."}``, possibly expanded."""

    id: int | None = None
    url: str | None = None


# --- envelopes -------------------------------------------------------------------------------


class ListEnvelope(TripletexModel, Generic[T]):
    """``{"fullResultSize", "from", "count", "values": [...]}``."""

    full_result_size: int | None = Field(default=None, alias="fullResultSize")
    from_: int | None = Field(default=None, alias="from")
    count: int | None = None
    values: NullableList[T] = Field(default_factory=list)


class ValueEnvelope(TripletexModel, Generic[T]):
    """``{"value": {...}}``."""

    value: T


# --- session ---------------------------------------------------------------------------------


class SessionToken(TripletexModel):
    id: int | None = None
    token: str
    expiration_date: str | None = Field(default=None, alias="expirationDate")


class WhoAmI(TripletexModel):
    """``GET /token/session/>whoAmI``: who the session token belongs to."""

    employee_id: int | None = Field(default=None, alias="employeeId")
    actual_employee_id: int | None = Field(default=None, alias="actualEmployeeId")
    company_id: int | None = Field(default=None, alias="companyId")
    employee: Ref | None = None
    company: Ref | None = None
    language: str | None = None


# --- lookups ---------------------------------------------------------------------------------


class VatType(TripletexModel):
    id: int
    number: str | None = None
    name: str | None = None
    percentage: Decimal | None = None
    deduction_percentage: Decimal | None = Field(default=None, alias="deductionPercentage")


class Account(TripletexModel):
    id: int
    number: int | None = None
    name: str | None = None
    # With ``fields=vatType(*)`` Tripletex expands the VAT type; otherwise it is an ``{id}`` ref.
    # VatType requires an id, so a bare ref parses as VatType with the other fields None.
    vat_type: VatType | None = Field(default=None, alias="vatType")
    vat_locked: NullableFlag = Field(default=False, alias="vatLocked")
    legal_vat_types: NullableList[Ref] = Field(default_factory=list, alias="legalVatTypes")
    # The spec: "default is GENERAL" when the company has no multiple-ledgers module.
    ledger_type: Annotated[str, BeforeValidator(lambda v: v or "GENERAL")] = Field(
        default="GENERAL", alias="ledgerType"
    )
    requires_department: NullableFlag = Field(default=False, alias="requiresDepartment")
    requires_project: NullableFlag = Field(default=False, alias="requiresProject")

    @property
    def label(self) -> str:
        return f"{self.number} ({self.name})" if self.name else str(self.number)


class VoucherType(TripletexModel):
    id: int
    name: str | None = None
    display_name: str | None = Field(default=None, alias="displayName")


class Currency(TripletexModel):
    id: int
    code: str | None = None
    description: str | None = None


class Department(TripletexModel):
    id: int
    name: str | None = None
    department_number: str | None = Field(default=None, alias="departmentNumber")


class Project(TripletexModel):
    id: int
    name: str | None = None
    number: str | None = None


# --- vouchers --------------------------------------------------------------------------------


class Posting(TripletexModel):
    id: int | None = None
    row: int | None = None
    account: Ref | None = None
    amount: Decimal | None = None
    amount_gross: Decimal | None = Field(default=None, alias="amountGross")
    vat_type: Ref | None = Field(default=None, alias="vatType")


class Voucher(TripletexModel):
    id: int
    number: int | None = None
    temp_number: int | None = Field(default=None, alias="tempNumber")
    year: int | None = None
    date: str | None = None
    description: str | None = None
    external_voucher_number: str | None = Field(default=None, alias="externalVoucherNumber")
    postings: NullableList[Posting] = Field(default_factory=list)
    attachment: Ref | None = None

    @property
    def booked_on(self) -> date | None:
        return parse_date(self.date)


# --- errors ----------------------------------------------------------------------------------


class ValidationMessage(TripletexModel):
    field: str | None = None
    message: str | None = None


class ErrorBody(TripletexModel):
    """Tripletex's error body; every field optional because proxies and 5xx pages vary."""

    status: int | None = None
    code: int | None = None
    message: str | None = None
    link: str | None = None
    developer_message: str | None = Field(default=None, alias="developerMessage")
    validation_messages: NullableList[ValidationMessage] = Field(
        default_factory=list, alias="validationMessages"
    )
    request_id: str | None = Field(default=None, alias="requestId")
