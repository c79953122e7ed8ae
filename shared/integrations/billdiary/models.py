"""BillDiary's Integration API as we read it (seed 004, ``/shared/guides/erp-integration-api.md``)
and the options of a BillDiary connection.

Response models read only the fields we use and ignore the rest. Amounts arrive as JSON numbers
(PHP floats); they are parsed as ``Decimal`` (``json.loads(..., parse_float=Decimal)``), never
through ``float``.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PaymentAccount(BaseModel):
    """How an expense whose counter row is on one of our accounts was paid: a payment line with
    this method (a BillDiary payment method key, allowed at the connection's location) and,
    optionally, the BillDiary payment account it was paid from."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(min_length=1, examples=["bank_transfer", "card", "cash"])
    account_id: int | None = Field(default=None, ge=1)


class BillDiaryOptions(BaseModel):
    """A BillDiary connection's settings (``connection.options``). BillDiary has no endpoint for
    locations, tax rates, payment methods or users, so their ids come from here; and it reads
    dates and (ASSUMED) numbers with the *business's* display formats, so those are here too.

    Which rows of an expense are what (see ``mapping.plan_expense``): a row on an account listed
    in ``payment_accounts`` says the expense was paid from there (a payment line); a row on an
    account in ``payable_accounts`` says it is still owed (no payment line); every other row is
    a cost, whose account (after the connection's ``account_mapping``) is a BillDiary expense
    category *code* (a sub-category's code picks its parent too).
    """

    model_config = ConfigDict(extra="forbid")

    location_id: int = Field(ge=1, description="the business location the expenses belong to; "
                                               "the integration user must be permitted there")
    currency: str = Field(min_length=3, max_length=3,
                          description="the business's currency: BillDiary has no currency field, "
                                      "so expenses in another currency are refused")
    date_format: str = Field(default="d/m/Y", min_length=1,
                             description="the business's date format in PHP tokens "
                                         "(d j m n Y y), as in Business settings")
    time_format: Literal[12, 24] = 24
    thousand_separator: str = Field(default=",", max_length=1)
    decimal_separator: str = Field(default=".", min_length=1, max_length=1)
    # ASSUMED true: amounts go through the web form's number parser, which strips the
    # thousand separator ("12.50" with separator "." is read as 1250).
    amounts_use_business_format: bool = True
    default_tax_id: int | None = Field(
        default=None, ge=1, description="tax rate id for cost rows without a VAT code")
    expense_for: int | None = Field(default=None, ge=1,
                                    description="BillDiary user id the expenses are assigned to")
    payment_accounts: dict[str, PaymentAccount] = Field(default_factory=dict)
    payable_accounts: list[str] = Field(default_factory=list)
    create_missing_categories: bool = False
    # None: AIC_BILLDIARY_SEARCH_DELAY_SECONDS.
    search_delay_seconds: float | None = Field(default=None, ge=0, le=3600)
    # How often an export waiting on a parked connection (402, 403) looks again.
    park_seconds: float = Field(default=300.0, gt=0, le=3600)

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.strip().upper()

    @field_validator("date_format")
    @classmethod
    def _known_tokens(cls, value: str) -> str:
        letters = {c for c in value if c.isalpha()}
        unknown = letters - set("djmnYy")
        if unknown:
            raise ValueError(f"date_format {value!r} uses {''.join(sorted(unknown))}: only the "
                             "PHP tokens d j m n Y y (and separators) are supported")
        if not ({"d", "j"} & letters and {"m", "n"} & letters and {"Y", "y"} & letters):
            raise ValueError(f"date_format {value!r} needs a day, a month and a year")
        return value


class Summary(BaseModel):
    id: int
    name: str | None = None


class ExpensePayment(BaseModel):
    id: int
    amount: Decimal | None = None
    method: str | None = None
    paid_on: str | None = None
    note: str | None = None


class Expense(BaseModel):
    """An ExpenseRow (list) or ExpenseDetail (one, create, update)."""

    id: int
    type: str | None = None
    ref_no: str | None = None
    document: str | None = None
    transaction_date: str | None = None
    final_total: Decimal | None = None
    additional_notes: str | None = None
    expense_category: Summary | None = None
    expense_sub_category: Summary | None = None
    location: Summary | None = None
    payments: list[ExpensePayment] = Field(default_factory=list)

    @property
    def booked_on(self) -> date | None:
        """The calendar date of ``transaction_date`` (ISO-8601 in the business's timezone)."""
        if not self.transaction_date:
            return None
        try:
            return datetime.fromisoformat(self.transaction_date).date()
        except ValueError:
            return None


class Meta(BaseModel):
    current_page: int = 1
    last_page: int = 1
    total: int | None = None


class ExpensePage(BaseModel):
    data: list[Expense]
    meta: Meta = Field(default_factory=Meta)


class ExpenseEnvelope(BaseModel):
    data: Expense


class Category(BaseModel):
    id: int
    name: str | None = None
    code: str | None = None
    parent_id: int | None = None


class CategoryPage(BaseModel):
    data: list[Category]
    meta: Meta = Field(default_factory=Meta)


class CategoryEnvelope(BaseModel):
    data: Category


class PaymentRecorded(BaseModel):
    transaction_id: int
    payment_id: int
    payment_status: str | None = None
    amount: Decimal | None = None
    method: str | None = None
    paid_on: str | None = None


class PaymentAnswer(BaseModel):
    """``POST /expenses/{id}/payments``'s 201: ``{message, data: {...}}``."""

    data: PaymentRecorded


class ErrorBody(BaseModel):
    """Laravel's ``{"message", "errors": {"field": ["..."]}}`` or a controller's ``{message}``."""

    message: str | None = None
    errors: dict[str, Any] = Field(default_factory=dict)
