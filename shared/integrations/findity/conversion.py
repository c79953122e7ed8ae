"""Turn a Findity accounting voucher into our target-neutral ``ExpenseIn``.

Pure functions, no I/O. The rules, and why:

- Signs: Findity's positive amounts are debits, negative are credits, exactly as in
  ``ExpenseRow``; the rows of one accounting voucher sum to zero. A voucher that does not is
  refused with ``UnbookableVoucher`` (a permanent error whose message the administrator reads in
  Findity), never "repaired".
- Dimensions: ``costCenter`` -> ``department``, ``project`` -> ``project``; any other dimension is
  ignored (Findity may add some; we have nowhere to book them yet).
- VAT: Findity books VAT in a row of its own (account 2710 and friends) and repeats the VAT part
  on the cost row as ``taxAmount`` + ``taxCode``. A target such as Tripletex splits the VAT out of
  any posting that carries a VAT type, so posting both would book the VAT twice. We MERGE when we
  can prove the match: the cost row becomes gross (``amount + taxAmount``) with
  ``vat_code = taxCode`` and the VAT row is dropped, so the target's VAT report is right.
  Matching is per expense (``expenseRecordId`` + ``taxCode``) in the per-expense formats and per
  ``taxCode`` in the ``*_PER_ACCOUNT`` formats, where Findity has summed the rows of many
  expenses. If anything cannot be matched exactly, the WHOLE voucher is posted as delivered with
  no VAT code at all: the VAT then stays on the VAT account as a plain posting. Never both.
- Rows whose amount is zero carry nothing and are dropped.
- Money is ``Decimal`` throughout.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pydantic import ValidationError

from shared.domain.statuses import ExpenseStatus
from shared.domain.expenses import ExpenseIn
from shared.domain.vouchers import CENT, money
from shared.integrations.errors import PermanentError
from shared.integrations.findity.models import (
    AccountingVoucher,
    PaymentVoucher,
    VerificationListsType,
    VoucherRow,
)

SOURCE = "findity"
ZERO = Decimal("0.00")

# Norwegian standard chart (NS 4102): 2710-2719 are the input VAT accounts (2710 high rate,
# 2711 medium, 2712 low, 2713/2714 VAT on imports and services bought abroad, ...).
DEFAULT_VAT_ACCOUNTS: frozenset[str] = frozenset(str(number) for number in range(2710, 2720))

# Findity dimension name -> ExpenseRow field.
DIMENSION_FIELDS: dict[str, str] = {"costCenter": "department", "project": "project"}

# The formats whose rows Findity has summed per account / tax code across expenses.
PER_ACCOUNT_FORMATS: frozenset[VerificationListsType] = frozenset(
    {VerificationListsType.REPORT_PER_ACCOUNT, VerificationListsType.USER_PER_ACCOUNT}
)

_DESCRIPTION_MAX = 500  # ExpenseIn.description


class UnbookableVoucher(PermanentError):
    """A Findity voucher that no target can book as it is; ``message`` says what to fix in Findity.

    Permanent: retrying cannot help, the report must be corrected in Findity (the FAILED status
    sent back returns it to "Ready to send" with this text).
    """

    def __init__(self, message: str, *, voucher_id: str | None = None) -> None:
        super().__init__(message, system="findity", code="unbookable_voucher")
        self.voucher_id = voucher_id


@dataclass(frozen=True)
class Conversion:
    """The result of ``convert_voucher``.

    ``vat_merged`` tells whether the VAT rows were merged into the cost rows (they carry a
    ``vat_code``); when it is False and the voucher had VAT, ``vat_fallback_reason`` says why the
    voucher is booked as delivered, worth a log line or a note to the accountant.
    """

    expense: ExpenseIn
    vat_merged: bool
    vat_fallback_reason: str | None = None


def payment_format_error(
    verification_lists_type: VerificationListsType | str, target_system: str
) -> str:
    """The administrator's message for a recipient configured with a payment format."""
    fmt = VerificationListsType(verification_lists_type)
    return (
        f"{fmt.value} is a payment format with no accounting rows; {target_system} cannot book "
        f"it. Configure the recipient in Findity with an accounting format "
        f"(e.g. {VerificationListsType.REPORT_PER_EXPENSE.value})"
    )


def voucher_to_expense(
    voucher: AccountingVoucher,
    *,
    verification_lists_type: VerificationListsType | str,
    vat_accounts: Collection[str] = DEFAULT_VAT_ACCOUNTS,
    vat_rates: Mapping[str, Decimal] | None = None,
    target_system: str = "the accounting system",
) -> ExpenseIn:
    """The approved expense to book for one Findity accounting voucher.

    See ``convert_voucher`` for the parameters; this returns only the expense.
    """
    return convert_voucher(
        voucher,
        verification_lists_type=verification_lists_type,
        vat_accounts=vat_accounts,
        vat_rates=vat_rates,
        target_system=target_system,
    ).expense


def convert_voucher(
    voucher: AccountingVoucher,
    *,
    verification_lists_type: VerificationListsType | str,
    vat_accounts: Collection[str] = DEFAULT_VAT_ACCOUNTS,
    vat_rates: Mapping[str, Decimal] | None = None,
    target_system: str = "the accounting system",
) -> Conversion:
    """Convert ``voucher`` and say how its VAT was treated.

    ``vat_accounts``: the accounts Findity books VAT on (default: Norwegian input VAT 2710-2719).
    ``vat_rates``: optional Findity tax code -> percentage (``{"1": Decimal("25")}``). The
    target recomputes the VAT of a merged row from its gross and the rate, so when the rates are
    known a merge is only done if that recomputation gives Findity's ``taxAmount`` to the cent
    (an aggregated row's rounding, or a hand-typed VAT on a mixed-rate receipt, may not).
    ``target_system`` only names the target in error messages.

    Raises ``UnbookableVoucher`` for a payment format, an unbalanced voucher, or one that leaves
    fewer than two rows to book.
    """
    fmt = VerificationListsType(verification_lists_type)
    if fmt.is_payment or isinstance(voucher, PaymentVoucher):
        raise UnbookableVoucher(payment_format_error(fmt, target_system), voucher_id=voucher.id)

    balance = voucher.balance
    if balance != 0:
        raise UnbookableVoucher(
            f"voucher {voucher.id}: rows sum to {money(balance)}, not 0 — correct the report in "
            f"Findity",
            voucher_id=voucher.id,
        )

    vat_accounts = frozenset(vat_accounts)
    # A row with neither amount nor VAT carries nothing, and must not make a VAT match fail.
    rows = [r for r in voucher.voucher_rows if r.amount != 0 or r.tax_amount != 0]
    has_vat = any(r.account in vat_accounts or r.tax_amount != 0 for r in rows)

    reason: str | None = None
    merged = False
    if has_vat:
        reason = _vat_merge_problem(rows, fmt, vat_accounts, vat_rates)
        merged = reason is None
    expense_rows = [
        _expense_row(row, merge_vat=merged)
        for row in rows
        if not (merged and row.account in vat_accounts)
    ]
    expense_rows = [row for row in expense_rows if row["amount"] != 0]

    description = (voucher.text or "").strip() or f"Findity voucher {voucher.id}"
    try:
        expense = ExpenseIn(
            source=SOURCE,
            source_ref=voucher.id,
            status=ExpenseStatus.APPROVED,
            description=description[:_DESCRIPTION_MAX],
            employee_name=voucher.owner_name or None,
            expense_date=voucher.date,
            currency=(voucher.currency or "NOK").upper(),
            rows=expense_rows,
        )
    except ValidationError as exc:
        message = _validation_message(voucher.id, exc)
        raise UnbookableVoucher(message, voucher_id=voucher.id) from exc
    return Conversion(expense=expense, vat_merged=merged, vat_fallback_reason=reason)


def _expense_row(row: VoucherRow, *, merge_vat: bool) -> dict[str, Any]:
    """The ``ExpenseRow`` fields of ``row``; ``ExpenseIn`` validates them, so that a value it
    cannot hold is reported with its row number (``rows.0.account``)."""
    amount, vat_code = row.amount, None
    if merge_vat and row.tax_amount != 0:
        # Gross = net + VAT; the target splits the VAT out again from the VAT code.
        amount, vat_code = row.amount + row.tax_amount, row.tax_code
    dimensions = {
        field: (row.dimension.get(name) or None) for name, field in DIMENSION_FIELDS.items()
    }
    return {"account": row.account, "amount": amount, "vat_code": vat_code,
            "description": row.text, **dimensions}


def _vat_merge_problem(
    rows: list[VoucherRow],
    fmt: VerificationListsType,
    vat_accounts: frozenset[str],
    vat_rates: Mapping[str, Decimal] | None,
) -> str | None:
    """Why the VAT rows cannot be merged into the cost rows; ``None`` when every one can."""
    per_account = fmt in PER_ACCOUNT_FORMATS

    def key(row: VoucherRow) -> Hashable:
        return row.tax_code if per_account else (row.expense_record_id, row.tax_code)

    def where(row: VoucherRow) -> str:
        if per_account:
            return f"tax code {row.tax_code}"
        return f"expense {row.expense_record_id}, tax code {row.tax_code}"

    vat_sums: dict[Hashable, Decimal] = defaultdict(lambda: ZERO)
    tax_sums: dict[Hashable, Decimal] = defaultdict(lambda: ZERO)
    labels: dict[Hashable, str] = {}
    for row in rows:
        if row.account in vat_accounts:
            if row.tax_amount != 0:
                return f"VAT row on {row.account} carries a taxAmount of its own ({row.tax_amount})"
            if not row.tax_code:
                return f"VAT row on {row.account} ({row.amount}) has no tax code"
            if not per_account and not row.expense_record_id:
                return f"VAT row on {row.account} ({row.amount}) names no expense"
            vat_sums[key(row)] += row.amount
            labels[key(row)] = where(row)
        elif row.tax_amount != 0:
            if not row.tax_code:
                return f"cost row on {row.account} has taxAmount {row.tax_amount} but no tax code"
            if not per_account and not row.expense_record_id:
                return f"cost row on {row.account} with taxAmount {row.tax_amount} names no expense"
            if vat_rates is not None:
                problem = _rate_problem(row, vat_rates)
                if problem:
                    return problem
            tax_sums[key(row)] += row.tax_amount
            labels[key(row)] = where(row)
    for group in labels:
        if vat_sums[group] != tax_sums[group]:
            return (
                f"{labels[group]}: VAT rows sum to {money(vat_sums[group])} but the cost rows' "
                f"taxAmount sums to {money(tax_sums[group])}"
            )
    return None


def _rate_problem(row: VoucherRow, vat_rates: Mapping[str, Decimal]) -> str | None:
    rate = vat_rates.get(row.tax_code or "")
    if rate is None:
        return f"no VAT rate known for tax code {row.tax_code}"
    rate = Decimal(rate)
    gross = row.amount + row.tax_amount
    computed = (gross * rate / (Decimal(100) + rate)).quantize(CENT, rounding=ROUND_HALF_UP)
    if computed != row.tax_amount:
        return (
            f"cost row on {row.account}: {rate}% of gross {money(gross)} is {computed}, "
            f"not the taxAmount {row.tax_amount}"
        )
    return None


def _validation_message(voucher_id: str, exc: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'voucher'}: {error['msg']}"
        for error in exc.errors()
    )
    return f"voucher {voucher_id} cannot be booked: {problems} — correct the report in Findity"
