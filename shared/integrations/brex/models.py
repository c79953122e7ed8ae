"""Every Brex shape we send or read (Expenses API 0.1 [spec:
``shared/specs/brex/expenses-api-0.1-patched.json``]); the one place to correct when Brex's
real contract differs.

Enums are strings with known sets, never closed ``Enum`` types: Brex adds enum values without
calling it a breaking change [doc: versioning], and an unknown status must not make a whole page
unreadable. Models allow extra fields for the same reason.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictInt

# [spec] ExpenseStatus / ExpensePaymentStatus / ExpenseType, as known in 2026.
EXPENSE_STATUSES = frozenset({"DRAFT", "SUBMITTED", "APPROVED", "OUT_OF_POLICY", "VOID",
                              "CANCELED", "SPLIT", "SETTLED"})
PAYMENT_STATUSES = frozenset({"NOT_STARTED", "PROCESSING", "CANCELED", "DECLINED", "CLEARED",
                              "REFUNDING", "REFUNDED", "CASH_ADVANCE", "CREDITED",
                              "AWAITING_PAYMENT", "SCHEDULED"})
EXPENSE_TYPES = frozenset({"CARD", "BILLPAY", "REIMBURSEMENT", "CLAWBACK", "UNSET"})
SPLIT = "SPLIT"  # an itemized parent: its children (``parent_expense_id[]``) carry the parts
# Where an approved (maybe booked) expense can go: listed so a change after booking is seen.
WITHDRAWN_STATUSES = ("VOID", "CANCELED")

# ``expand[]`` values [spec]. Receipts' pre-signed links only come with
# ``receipts.download_uris``; merchant and user give the voucher text and the employee.
EXPAND = ("receipts.download_uris", "merchant", "user")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Money(_Model):
    """[spec] ``amount``: int64 in the currency's smallest unit, signed; ``currency`` ISO 4217,
    USD when absent. A float amount is refused (StrictInt): it would mean Brex changed units."""

    amount: StrictInt
    currency: str = "USD"


class Merchant(_Model):
    raw_descriptor: str | None = None
    mcc: str | None = None
    country: str | None = None


class User(_Model):
    id: str | None = None
    first_name: str | None = None
    last_name: str | None = None

    @property
    def name(self) -> str | None:
        full = " ".join(p for p in (self.first_name, self.last_name) if p)
        return full or None


class Receipt(_Model):
    id: str
    # Pre-signed S3 links, valid 15 minutes [spec: Receipt]; only with
    # expand[]=receipts.download_uris.
    download_uris: list[str] | None = None


class Expense(_Model):
    """``ExpandableExpense`` [spec]. ``updated_at`` is required [spec]: our high-water mark."""

    id: str
    updated_at: datetime
    status: str | None = None
    payment_status: str | None = None
    expense_type: str | None = None
    memo: str | None = None
    category: str | None = None
    merchant_id: str | None = None
    merchant: Merchant | None = None
    user_id: str | None = None
    user: User | None = None
    purchased_at: datetime | None = None
    approved_at: datetime | None = None
    original_amount: Money | None = None
    billing_amount: Money | None = None
    purchased_amount: Money | None = None
    budget_amount: Money | None = None
    usd_equivalent_amount: Money | None = None
    receipts: list[Receipt] | None = None


class ExpensePage(_Model):
    """One page of ``GET /v1/expenses`` [doc: pagination]; ``next_cursor`` null at the end."""

    next_cursor: str | None = None
    items: list[Expense] = Field(default_factory=list)


class UpdateExpenseRequest(BaseModel):
    """``PUT /v1/expenses/card/{expense_id}`` [spec]: the memo is the only writable field."""

    model_config = ConfigDict(extra="forbid")

    memo: str | None


class BrexErrorBody(_Model):
    """``{"type", "message", "code"?}`` [doc: error_codes]."""

    type: str | None = None
    message: str | None = None
    code: str | None = None
