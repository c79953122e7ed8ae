"""Approved expenses ingested from sources, in the target-neutral form of ``models.Expense``."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import ids
from shared.db.models import Expense
from shared.domain.errors import ValidationFailed
from shared.domain.statuses import ExpenseStatus
from shared.domain.vouchers import money


class ExpenseRow(BaseModel):
    """One accounting row: signed gross amount (debit positive) on a source account number."""

    account: str = Field(min_length=1, max_length=20)
    amount: Decimal
    vat_code: str | None = None
    description: str = ""
    department: str | None = None
    project: str | None = None

    @field_validator("amount", mode="before")
    @classmethod
    def _two_decimals(cls, value):
        amount = Decimal(str(value))
        if amount != amount.quantize(Decimal("0.01")):
            raise ValueError("amounts have at most two decimals")
        return money(amount)


class ExpenseIn(BaseModel):
    source: str = Field(min_length=1, max_length=40)
    source_ref: str = Field(min_length=1, max_length=200)
    status: ExpenseStatus
    description: str = Field(min_length=1, max_length=500)
    employee_name: str | None = None
    expense_date: date
    currency: str = Field(default="NOK", pattern=r"^[A-Z]{3}$")
    rows: list[ExpenseRow] = Field(min_length=2)
    receipt_filename: str | None = None
    receipt_content_type: str | None = None
    receipt_data: bytes | None = None

    @model_validator(mode="after")
    def _balanced(self) -> "ExpenseIn":
        total = sum((row.amount for row in self.rows), Decimal("0"))
        if total != 0:
            raise ValueError(f"expense rows must sum to zero (debits = credits); they sum to {total}")
        return self

    @property
    def amount(self) -> Decimal:
        """The expense's gross total: the sum of its debit rows."""
        return money(sum((r.amount for r in self.rows if r.amount > 0), Decimal("0")))


def simple_expense_rows(
    *, cost_account: str, amount: Decimal | str, vat_code: str | None, credit_account: str,
    description: str,
) -> list[dict[str, Any]]:
    """The two rows of a plain employee outlay: cost (gross, VAT code) against what we owe."""
    gross = money(amount)
    return [
        {"account": cost_account, "amount": gross, "vat_code": vat_code, "description": description},
        {"account": credit_account, "amount": -gross, "vat_code": None, "description": description},
    ]


def ingest_expense(session: Session, org_id: str, data: ExpenseIn) -> tuple[Expense, bool]:
    """Store an expense once per (organization, source, source_ref).

    Returns ``(expense, created)``. A repeated ingest updates the approval status and nothing else:
    the rows of an expense that may already be booked are never rewritten behind its back.
    """
    existing = session.scalar(
        select(Expense).where(
            Expense.organization_id == org_id,
            Expense.source == data.source,
            Expense.source_ref == data.source_ref,
        )
    )
    if existing is not None:
        existing.status = data.status.value
        return existing, False
    expense = Expense(
        id=ids.new_id(ids.EXPENSE, 6),
        organization_id=org_id,
        source=data.source,
        source_ref=data.source_ref,
        status=data.status.value,
        description=data.description,
        employee_name=data.employee_name,
        expense_date=data.expense_date,
        currency=data.currency,
        amount=data.amount,
        rows=[row.model_dump(mode="json") for row in data.rows],
        receipt_filename=data.receipt_filename,
        receipt_content_type=data.receipt_content_type,
        receipt_data=data.receipt_data,
    )
    session.add(expense)
    session.flush()
    return expense, True


def find_expense(session: Session, org_id: str, source: str, source_ref: str) -> Expense | None:
    return session.scalar(select(Expense).where(
        Expense.organization_id == org_id, Expense.source == source,
        Expense.source_ref == source_ref))


def _bookable(expense_date: date, currency: str, description: str, employee_name: str | None,
              rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rows": rows, "expense_date": expense_date.isoformat(), "currency": currency,
            "description": description, "employee_name": employee_name}


def changed_content(expense: Expense, data: ExpenseIn) -> list[str]:
    """The fields whose bookable content differs between the stored expense and ``data``.

    What is booked: the rows, the date, the currency, the texts. The approval status and the
    receipt are not content (a receipt is fetched again on every ingest and may differ by a byte).
    """
    stored = _bookable(expense.expense_date, expense.currency, expense.description,
                       expense.employee_name, expense.rows)
    incoming = _bookable(data.expense_date, data.currency, data.description, data.employee_name,
                         [row.model_dump(mode="json") for row in data.rows])
    return [name for name in stored if stored[name] != incoming[name]]


def replace_content(session: Session, expense: Expense, data: ExpenseIn) -> None:
    """Rewrite an expense with the source's corrected version (rows, texts, receipt).

    Only for an expense no live export holds (``active_key``): the caller checks that, in the
    same transaction, and an export that is processing or booked keeps the rows it was created
    with. ``ingest_expense`` never does this.
    """
    expense.status = data.status.value
    expense.description = data.description
    expense.employee_name = data.employee_name
    expense.expense_date = data.expense_date
    expense.currency = data.currency
    expense.amount = data.amount
    expense.rows = [row.model_dump(mode="json") for row in data.rows]
    expense.receipt_filename = data.receipt_filename
    expense.receipt_content_type = data.receipt_content_type
    expense.receipt_data = data.receipt_data
    session.flush()


def get_expense(session: Session, org_id: str, expense_id: str) -> Expense | None:
    expense = session.get(Expense, expense_id)
    if expense is None or expense.organization_id != org_id:
        return None
    return expense


def require_valid(model: type[BaseModel], payload: dict[str, Any]) -> BaseModel:
    from pydantic import ValidationError

    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ValidationFailed("; ".join(_describe(e) for e in exc.errors())) from exc


def _describe(error: dict) -> str:
    message = error["msg"].removeprefix("Value error, ")
    location = ".".join(map(str, error["loc"]))
    return f"{location}: {message}" if location else message
