"""Build Findity voucher packages from expense reports, in all eight output formats.

The sandbox deliberately does not import the client's models: it is our imitation of Findity,
written from the same guide, so a shape the client misreads shows up as a parse error in the
tests instead of being agreed on by both sides.

What an expense becomes (accounting formats) [doc: "per expense Findity emits a debit row, a
credit row when bookkeeping is on, and a VAT row when VAT applies"]:

- cost row: the net amount on the expense account, ``taxAmount`` = the VAT part (informative
  only), ``taxCode`` when VAT applies, the expense's dimensions;
- VAT row: the VAT amount on 2710 with the same ``taxCode`` (only when VAT applies);
- credit row: minus the gross amount on 2930 "owed to employee".

So the rows of every expense, and therefore of every voucher, sum to zero. The ``*_PER_ACCOUNT``
formats aggregate those rows per (account, taxCode, dimension); see ``_aggregate``.

Payment formats carry one row per report / user / expense with the gross amount to pay, the
owner and the report, and no account.
"""

from __future__ import annotations

import random
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from typing import Any

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
VAT_ACCOUNT = "2710"
OWED_TO_EMPLOYEE_ACCOUNT = "2930"

# Norwegian standard (SAF-T) input VAT codes per rate, as Findity's Norwegian customers use them.
DEFAULT_TAX_CODES: dict[int, str | None] = {25: "1", 15: "11", 12: "13", 0: None}


class Format(str, Enum):
    """``verificationListsType`` values [doc]."""

    REPORT_PER_EXPENSE = "REPORT_PER_EXPENSE"
    REPORT_PER_ACCOUNT = "REPORT_PER_ACCOUNT"
    USER_PER_EXPENSE = "USER_PER_EXPENSE"
    USER_PER_ACCOUNT = "USER_PER_ACCOUNT"
    EXPENSE = "EXPENSE"
    REPORT_PER_REPORT_PAID = "REPORT_PER_REPORT_PAID"
    USER_PER_REPORT_PAID = "USER_PER_REPORT_PAID"
    REPORT_PER_EXPENSE_PAID = "REPORT_PER_EXPENSE_PAID"

    @property
    def is_payment(self) -> bool:
        return self.value.endswith("_PAID")


def new_id() -> str:
    """Findity-style id: 32 lowercase hex characters."""
    return uuid.uuid4().hex


def money(value: Decimal | int | str) -> Decimal:
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Expense:
    id: str
    text: str
    account: str
    amount: Decimal  # gross, as on the receipt, VAT included
    vat_rate: int
    tax_code: str | None
    date: date
    cost_center: str | None = None
    project: str | None = None

    @property
    def vat(self) -> Decimal:
        """The VAT part of the gross amount: gross * rate / (100 + rate), rounded to the cent."""
        if self.vat_rate == 0:
            return ZERO
        return money(self.amount * self.vat_rate / (100 + self.vat_rate))

    @property
    def net(self) -> Decimal:
        return self.amount - self.vat

    @property
    def dimension(self) -> dict[str, str]:
        dims = {"costCenter": self.cost_center, "project": self.project}
        return {name: value for name, value in dims.items() if value}


@dataclass(frozen=True)
class Report:
    id: str
    owner_id: str
    owner_name: str
    title: str
    expenses: tuple[Expense, ...]

    @property
    def total(self) -> Decimal:
        return sum((e.amount for e in self.expenses), ZERO)


@dataclass
class BuiltVoucher:
    """A voucher as Findity would send it, minus ``basisUrl`` (that depends on the host)."""

    id: str
    owner_id: str
    owner_name: str
    report_ids: tuple[str, ...]
    date: date
    text: str
    rows: list[dict[str, Any]]
    currency: str = "NOK"
    expense_ids: tuple[str, ...] = field(default_factory=tuple)

    def to_wire(self, basis_url: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "ownerId": self.owner_id,
            "ownerName": self.owner_name,
            # A USER_* voucher spans the user's reports; one report id would be a lie.
            "expenseReportId": self.report_ids[0] if len(self.report_ids) == 1 else None,
            "date": self.date.isoformat(),
            "currency": self.currency,
            "text": self.text,
            "basisUrl": basis_url,
            "voucherRows": self.rows,
        }


# --- rows -------------------------------------------------------------------------------------


def _row(amount: Decimal, tax_amount: Decimal, account: str, tax_code: str | None,
         dimension: dict[str, str], text: str, expense_id: str | None) -> dict[str, Any]:
    return {
        "amount": amount,
        "taxAmount": tax_amount,
        "account": account,
        "taxCode": tax_code,
        "dimension": dict(dimension),
        "text": text,
        "expenseRecordId": expense_id,
    }


def expense_rows(expense: Expense) -> list[dict[str, Any]]:
    """Cost row, VAT row (when VAT applies) and credit row of one expense; they sum to zero."""
    vat = expense.vat
    rows = [_row(expense.net, vat, expense.account, expense.tax_code if vat else None,
                 expense.dimension, expense.text, expense.id)]
    if vat:
        rows.append(_row(vat, ZERO, VAT_ACCOUNT, expense.tax_code, {},
                         f"Input VAT {expense.vat_rate}%", expense.id))
    rows.append(_row(-expense.amount, ZERO, OWED_TO_EMPLOYEE_ACCOUNT, None, {},
                     f"Owed to employee: {expense.text}", expense.id))
    return rows


def _aggregate(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sum rows per (account, taxCode, dimension): the ``*_PER_ACCOUNT`` formats.

    The guide says "aggregated per account / tax code"; we also keep dimensions apart, because
    merging two cost centres' costs into one row would lose where they must be booked.
    Debit rows come first, then credit rows, each in order of first appearance.
    """
    groups: OrderedDict[tuple, list[dict[str, Any]]] = OrderedDict()
    for row in rows:
        key = (row["account"], row["taxCode"], tuple(sorted(row["dimension"].items())),
               row["amount"] < 0)
        groups.setdefault(key, []).append(row)
    aggregated = []
    for (account, tax_code, _dims, _credit), members in groups.items():
        expense_ids = {m["expenseRecordId"] for m in members}
        texts = {m["text"] for m in members}
        if len(members) == 1:
            text = members[0]["text"]
        elif account == OWED_TO_EMPLOYEE_ACCOUNT:
            text = "Owed to employee"
        elif len(texts) == 1:
            text = texts.pop()
        else:
            text = f"Account {account}, {len(members)} expenses"
        aggregated.append(_row(
            sum((m["amount"] for m in members), ZERO),
            sum((m["taxAmount"] for m in members), ZERO),
            account, tax_code, members[0]["dimension"], text,
            expense_ids.pop() if len(expense_ids) == 1 else None,
        ))
    aggregated.sort(key=lambda r: r["amount"] < 0)  # stable: keeps first-appearance order
    return aggregated


def _payment_row(amount: Decimal, owner_id: str, report_id: str | None,
                 text: str) -> dict[str, Any]:
    return {"amount": amount, "ownerId": owner_id, "expenseReportId": report_id, "text": text}


# --- grouping ---------------------------------------------------------------------------------


def _by_owner(reports: list[Report]) -> OrderedDict[str, list[Report]]:
    owners: OrderedDict[str, list[Report]] = OrderedDict()
    for report in reports:
        owners.setdefault(report.owner_id, []).append(report)
    return owners


def _voucher(reports: list[Report], expenses: list[Expense], text: str,
             rows: list[dict[str, Any]]) -> BuiltVoucher:
    return BuiltVoucher(
        id=new_id(),
        owner_id=reports[0].owner_id,
        owner_name=reports[0].owner_name,
        report_ids=tuple(r.id for r in reports),
        date=max(e.date for e in expenses),
        text=text,
        rows=rows,
        expense_ids=tuple(e.id for e in expenses),
    )


def build_vouchers(format_: Format, reports: list[Report]) -> list[BuiltVoucher]:
    """The vouchers of an export of ``reports`` in ``format_`` (see the module docstring)."""
    vouchers: list[BuiltVoucher] = []
    if format_ in (Format.REPORT_PER_EXPENSE, Format.REPORT_PER_ACCOUNT):
        for report in reports:
            rows = [row for e in report.expenses for row in expense_rows(e)]
            if format_ is Format.REPORT_PER_ACCOUNT:
                rows = _aggregate(rows)
            vouchers.append(_voucher([report], list(report.expenses), report.title, rows))
    elif format_ in (Format.USER_PER_EXPENSE, Format.USER_PER_ACCOUNT):
        for owner_reports in _by_owner(reports).values():
            expenses = [e for r in owner_reports for e in r.expenses]
            rows = [row for e in expenses for row in expense_rows(e)]
            if format_ is Format.USER_PER_ACCOUNT:
                rows = _aggregate(rows)
            text = f"Expenses {owner_reports[0].owner_name}"
            vouchers.append(_voucher(owner_reports, expenses, text, rows))
    elif format_ is Format.EXPENSE:
        for report in reports:
            for expense in report.expenses:
                vouchers.append(_voucher([report], [expense], expense.text, expense_rows(expense)))
    elif format_ is Format.REPORT_PER_REPORT_PAID:
        for report in reports:
            row = _payment_row(report.total, report.owner_id, report.id, report.title)
            vouchers.append(_voucher([report], list(report.expenses), report.title, [row]))
    elif format_ is Format.USER_PER_REPORT_PAID:
        for owner_reports in _by_owner(reports).values():
            total = sum((r.total for r in owner_reports), ZERO)
            report_id = owner_reports[0].id if len(owner_reports) == 1 else None
            text = f"Expenses {owner_reports[0].owner_name}"
            row = _payment_row(total, owner_reports[0].owner_id, report_id, text)
            expenses = [e for r in owner_reports for e in r.expenses]
            vouchers.append(_voucher(owner_reports, expenses, text, [row]))
    elif format_ is Format.REPORT_PER_EXPENSE_PAID:
        for report in reports:
            rows = [_payment_row(e.amount, report.owner_id, report.id, e.text)
                    for e in report.expenses]
            vouchers.append(_voucher([report], list(report.expenses), report.title, rows))
    else:  # pragma: no cover - the enum is exhaustive
        raise ValueError(f"unknown format {format_}")
    return vouchers


# --- seeded reports ---------------------------------------------------------------------------

# (text, account, VAT rate): a small, plausible Norwegian expense catalogue.
_CATALOGUE: tuple[tuple[str, str, int], ...] = (
    ("Flight Oslo-Bergen", "7140", 12),
    ("Hotel Bergen", "7140", 12),
    ("Taxi to airport", "7140", 12),
    ("Train ticket", "7140", 12),
    ("Meal during travel", "7140", 15),
    ("Office supplies", "6800", 25),
    ("Software subscription", "6540", 25),
    ("Parking", "7140", 25),
    ("Client dinner", "7350", 0),
    ("Course fee", "6860", 0),
)
_OWNERS = ("Kari Nordmann", "Ola Nordmann", "Ingrid Hansen", "Lars Johansen", "Sofie Berg")
_COST_CENTERS = ("100", "200", "300")
_PROJECTS = ("P-17", "P-42")


def generate_reports(*, reports: int, expenses_per_report: int, seed: int,
                     users: int | None = None, start: date = date(2026, 3, 2)) -> list[Report]:
    """Deterministic reports from ``seed`` (ids are fresh each call; the content is not).

    ``users`` defaults to about half the reports, so USER_* formats have a user with several
    reports to combine.
    """
    rng = random.Random(seed)
    users = users or max(1, (reports + 1) // 2)
    built = []
    for r in range(reports):
        owner_index = r % users
        owner_name = _OWNERS[owner_index % len(_OWNERS)]
        if owner_index >= len(_OWNERS):
            owner_name = f"{owner_name} {owner_index // len(_OWNERS) + 1}"
        expenses = []
        for _ in range(expenses_per_report):
            text, account, rate = rng.choice(_CATALOGUE)
            expenses.append(Expense(
                id=new_id(),
                text=text,
                account=account,
                amount=money(Decimal(rng.randint(5_000, 300_000)) / 100),
                vat_rate=rate,
                tax_code=DEFAULT_TAX_CODES[rate],
                date=start + timedelta(days=rng.randint(0, 20)),
                cost_center=rng.choice((*_COST_CENTERS, None)),
                project=rng.choice((*_PROJECTS, None, None)),
            ))
        built.append(Report(
            id=new_id(),
            owner_id=f"u-{1001 + owner_index}",
            owner_name=owner_name,
            title=f"Expense report {r + 1}: {owner_name}",
            expenses=tuple(expenses),
        ))
    return built
