"""Every Findity Connect shape, in one module, as pydantic models.

This is the single place where our reading of Findity's API lives (see
``/work/shared/guides/findity-connect.md``). Shapes marked [doc] are stated in Findity's public
docs; shapes marked [assumed] are our contract until Findity says otherwise. When Findity
corrects an assumption, this module is the one edit.

Conventions:
- Field names are snake_case in Python and camelCase on the wire (``by_alias=True`` to dump).
- Unknown fields are ignored: Findity may add fields without breaking us (tolerant reader).
- Money is ``Decimal`` with at most two decimals. The client parses JSON with
  ``parse_float=Decimal`` so a number never passes through a float; a float that reaches a model
  anyway is converted through its shortest ``repr`` (``0.1`` -> ``Decimal("0.1")``).
- Datetimes are timezone-aware (UTC on the wire).
"""

from __future__ import annotations

from datetime import date as Date
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

CENT = Decimal("0.01")

# The accounts the sandbox (and, by our reading, Findity's default chart) uses for the two
# generated rows. Only informative: a mapping must use the accounts in the package.
VAT_ACCOUNT = "2710"
OWED_TO_EMPLOYEE_ACCOUNT = "2930"


def _to_money(value: Any) -> Any:
    """Turn a JSON number or string into a two-decimal ``Decimal`` without float error.

    ``bool`` is refused on purpose: ``True`` would otherwise become ``Decimal("1")``.
    """
    if isinstance(value, bool):
        raise ValueError("an amount must be a number, not a boolean")
    if isinstance(value, float):
        value = repr(value)  # shortest round-trip text: 0.1 -> "0.1", not 0.1000000000000000055
    if isinstance(value, (int, str)):
        try:
            value = Decimal(value)
        except InvalidOperation as exc:
            raise ValueError(f"{value!r} is not a number") from exc
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("an amount must be a finite number")
        if value != value.quantize(CENT):
            raise ValueError(f"amount {value} has more than two decimals")
        return value.quantize(CENT)
    return value


Money = Annotated[Decimal, BeforeValidator(_to_money)]
"""A two-decimal amount; positive = debit, negative = credit [assumed sign convention]."""

Dimension = dict[str, str]
"""A row's dimension values by name, e.g. ``{"costCenter": "100", "project": "P-17"}``."""


class FindityModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )


# --- enums ------------------------------------------------------------------------------------


class VerificationListsType(str, Enum):
    """The recipient's output format: how expenses are grouped into vouchers [doc]."""

    # Accounting formats: debit/credit/VAT rows with accounts.
    REPORT_PER_EXPENSE = "REPORT_PER_EXPENSE"
    REPORT_PER_ACCOUNT = "REPORT_PER_ACCOUNT"
    USER_PER_EXPENSE = "USER_PER_EXPENSE"
    USER_PER_ACCOUNT = "USER_PER_ACCOUNT"
    EXPENSE = "EXPENSE"
    # Payment formats: amounts to pay, no accounts.
    REPORT_PER_REPORT_PAID = "REPORT_PER_REPORT_PAID"
    USER_PER_REPORT_PAID = "USER_PER_REPORT_PAID"
    REPORT_PER_EXPENSE_PAID = "REPORT_PER_EXPENSE_PAID"

    @property
    def is_payment(self) -> bool:
        """Payment formats carry totals to pay, not bookable rows [doc that they exist]."""
        return self in _PAYMENT_FORMATS

    @property
    def is_accounting(self) -> bool:
        return not self.is_payment

    @classmethod
    def accounting_formats(cls) -> tuple[VerificationListsType, ...]:
        return tuple(member for member in cls if member.is_accounting)

    @classmethod
    def payment_formats(cls) -> tuple[VerificationListsType, ...]:
        return tuple(member for member in cls if member.is_payment)


_PAYMENT_FORMATS = frozenset(
    {
        VerificationListsType.REPORT_PER_REPORT_PAID,
        VerificationListsType.USER_PER_REPORT_PAID,
        VerificationListsType.REPORT_PER_EXPENSE_PAID,
    }
)


class ExportStatus(str, Enum):
    """[assumed] status of an export on Findity's side."""

    UNPROCESSED = "UNPROCESSED"
    PROCESSED = "PROCESSED"
    FAILED = "FAILED"


class VoucherStatus(str, Enum):
    """What we report per voucher in updatestatus [doc]."""

    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


# --- authentication ---------------------------------------------------------------------------


class TokenResponse(BaseModel):
    """OAuth 2.0 token response [doc]. Plain snake_case on the wire (OAuth, not Connect)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    access_token: str = Field(min_length=1, repr=False)
    token_type: str = "Bearer"
    expires_in: int = Field(default=3600, ge=0, description="Seconds the access token lives.")
    refresh_token: str | None = Field(default=None, repr=False)


# --- exports ----------------------------------------------------------------------------------


class Recipient(FindityModel):
    """[assumed] the API report recipient the export was built for."""

    id: str
    name: str | None = None
    verification_lists_type: VerificationListsType


class FindityExport(FindityModel):
    """An export package's metadata [assumed beyond ``id``]."""

    id: str = Field(min_length=1)
    organization_id: str
    external_organization_id: str | None = None
    status: ExportStatus
    created_at: AwareDatetime
    number_of_vouchers: int = Field(ge=0)
    number_of_reports: int = Field(ge=0)
    recipient: Recipient | None = None


class ListMeta(FindityModel):
    """``meta`` of a list envelope [doc]: ``count`` on this page, ``total`` matching."""

    count: int = Field(ge=0)
    total: int = Field(ge=0)


T = TypeVar("T")


class ListEnvelope(FindityModel, Generic[T]):
    """``{"data": [...], "meta": {"count": 10, "total": 245}}`` [doc]."""

    data: list[T]
    meta: ListMeta


class ExportList(ListEnvelope[FindityExport]):
    """One page of the list exports call."""


# --- voucher package --------------------------------------------------------------------------


class VoucherRow(FindityModel):
    """A row of an accounting-format voucher [doc names, assumed layout].

    ``amount`` is signed (debit positive). VAT is booked in its own row; ``tax_amount`` on a cost
    row only says which part of that expense was VAT, and must not be booked a second time.
    """

    amount: Money
    tax_amount: Money = Decimal("0.00")
    account: str = Field(min_length=1)
    tax_code: str | None = None
    dimension: Dimension = Field(default_factory=dict)
    text: str = ""
    expense_record_id: str | None = None

    @field_validator("dimension", mode="before")
    @classmethod
    def _null_dimension_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class PaymentRow(FindityModel):
    """A row of a payment-format voucher [assumed]: an amount to pay a user, no account."""

    amount: Money = Field(description="Amount to pay the owner; positive.")
    owner_id: str
    expense_report_id: str | None = Field(
        default=None, description="None when the row totals several reports (USER_PER_REPORT_PAID)."
    )
    text: str = ""


class _VoucherBase(FindityModel):
    """Fields every voucher has [doc names: ownerId, expenseReportId, basisUrl, voucherRows]."""

    id: str = Field(min_length=1)
    owner_id: str
    owner_name: str | None = None
    expense_report_id: str | None = Field(
        default=None, description="None when the voucher spans several reports (USER_* formats)."
    )
    date: Date
    currency: str = "NOK"
    text: str = ""
    basis_url: str | None = None


class AccountingVoucher(_VoucherBase):
    voucher_rows: list[VoucherRow] = Field(min_length=1)

    @property
    def balance(self) -> Decimal:
        """Sum of the rows; zero for a well-formed accounting voucher."""
        return sum((row.amount for row in self.voucher_rows), Decimal("0.00"))


class PaymentVoucher(_VoucherBase):
    voucher_rows: list[PaymentRow] = Field(min_length=1)

    @property
    def total(self) -> Decimal:
        return sum((row.amount for row in self.voucher_rows), Decimal("0.00"))


Voucher = Union[AccountingVoucher, PaymentVoucher]


class VoucherPackage(FindityModel):
    """The vouchers of one export, in the recipient's output format [assumed layout].

    Which row model applies is decided by ``verificationListsType`` (declared before
    ``vouchers`` so it is validated first): accounting formats hold ``AccountingVoucher``,
    payment formats ``PaymentVoucher``.
    """

    export_id: str
    verification_lists_type: VerificationListsType
    vouchers: list[Union[AccountingVoucher, PaymentVoucher]]

    @field_validator("vouchers", mode="before")
    @classmethod
    def _parse_in_format(cls, value: Any, info: ValidationInfo) -> Any:
        format_ = info.data.get("verification_lists_type")
        if format_ is None or not isinstance(value, list):
            return value  # the format's own error is reported; nothing sensible to do here
        model = PaymentVoucher if format_.is_payment else AccountingVoucher
        return [model.model_validate(item) if isinstance(item, dict) else item for item in value]

    @model_validator(mode="after")
    def _vouchers_match_format(self) -> VoucherPackage:
        expected = PaymentVoucher if self.verification_lists_type.is_payment else AccountingVoucher
        for voucher in self.vouchers:
            if not isinstance(voucher, expected):
                raise ValueError(
                    f"voucher {voucher.id} is a {type(voucher).__name__} in a "
                    f"{self.verification_lists_type.value} package"
                )
        return self

    @property
    def is_payment(self) -> bool:
        return self.verification_lists_type.is_payment

    def accounting_vouchers(self) -> list[AccountingVoucher]:
        return [v for v in self.vouchers if isinstance(v, AccountingVoucher)]

    def payment_vouchers(self) -> list[PaymentVoucher]:
        return [v for v in self.vouchers if isinstance(v, PaymentVoucher)]


# --- updatestatus [doc, verbatim shapes] ------------------------------------------------------


class VoucherSuccessUpdate(FindityModel):
    """``{"id", "status": "SUCCESS", "bookingDate", "voucherNumber", "informationText"}``.

    Sending ``voucher_number`` makes Findity refuse a second report for the voucher, which is
    what keeps a voucher from being sent twice.
    """

    id: str = Field(min_length=1)
    status: Literal[VoucherStatus.SUCCESS] = VoucherStatus.SUCCESS
    booking_date: AwareDatetime | None = None
    voucher_number: int | None = None
    information_text: str | None = None


class VoucherFailedUpdate(FindityModel):
    """``{"id", "status": "FAILED", "errorText"}``; the admin reads ``error_text``: say what
    to fix."""

    id: str = Field(min_length=1)
    status: Literal[VoucherStatus.FAILED] = VoucherStatus.FAILED
    error_text: str = Field(min_length=1)


VoucherStatusUpdate = Annotated[
    Union[VoucherSuccessUpdate, VoucherFailedUpdate], Field(discriminator="status")
]


class UpdateStatusRequest(FindityModel):
    """Body of ``PUT .../updatestatus``: ``{"voucherUpdates": [...]}`` [doc]."""

    voucher_updates: list[VoucherStatusUpdate] = Field(min_length=1)

    def to_wire(self) -> dict[str, Any]:
        # exclude_none: the documented FAILED body has no bookingDate/voucherNumber keys at all.
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- webhook and errors -----------------------------------------------------------------------


class WebhookBody(FindityModel):
    """The "metadata" webhook payload [doc]. An untrusted hint: always re-fetch the export."""

    export_id: str = Field(min_length=1)
    number_of_vouchers: int | None = None
    number_of_reports: int | None = None
    organization_id: str = Field(min_length=1)
    external_organization_id: str | None = None
    client_application_id: str | None = None


class FindityErrorBody(FindityModel):
    """``{"code": "EXPORT_NOT_FOUND", "message": "..."}`` [doc names, assumed body]."""

    code: str
    message: str = ""


class FindityErrorCode(str, Enum):
    """Error codes Findity documents."""

    EXPORT_NOT_FOUND = "EXPORT_NOT_FOUND"
    ORGANIZATION_NOT_FOUND = "ORGANIZATION_NOT_FOUND"
    RECIPIENT_NOT_FOUND = "RECIPIENT_NOT_FOUND"
