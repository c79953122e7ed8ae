"""Our voucher draft as one BillDiary expense: which rows are the cost, which say how it was paid,
and how amounts and dates must be written for *this* business.

A ``VoucherDraft`` is balanced gross rows (debit positive). BillDiary stores one expense: a
gross ``final_total`` (tax included), one category (and sub-category), one tax rate, and
optional payment lines. ``plan_expense`` decides, from the connection's options, what each row
is (``BillDiaryOptions``): rows on ``payment_accounts`` become payment lines, rows on
``payable_accounts`` leave the expense due, every other row is cost. It refuses, with every
problem listed in plain words, what one BillDiary expense cannot hold, before anything is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal

from shared.domain.vouchers import CENT, VoucherDraft
from shared.integrations.billdiary.models import BillDiaryOptions, PaymentAccount
from shared.integrations.errors import PermanentError

SYSTEM = "billdiary"
# Noon, so that no timezone reading of the date moves it to another day.
BOOKING_TIME = time(12, 0)
# What we write into ``additional_notes``: the reference, and what we meant to store, so that a
# later lookup (another process, after a crash) can compare the stored expense with it.
NOTE_LINE = "AIC export {ref}: {total} {currency} on {date}"
_NOTE_PATTERN = re.compile(
    r"AIC export (?P<ref>\S+): (?P<total>\d+\.\d{2}) [A-Z]{3} on (?P<date>\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class PaymentLine:
    amount: Decimal
    account: PaymentAccount
    our_account: str


@dataclass(frozen=True)
class ExpensePlan:
    """What one export becomes in BillDiary, before category codes are resolved to ids."""

    ref_no: str
    final_total: Decimal  # gross, positive
    is_refund: bool
    booked_on: date
    category_code: str
    tax_id: int | None
    notes: str
    payments: tuple[PaymentLine, ...]


@dataclass(frozen=True)
class Intended:
    """What our notes say we sent (see ``NOTE_LINE``)."""

    total: Decimal
    booked_on: date


def plan_expense(draft: VoucherDraft, options: BillDiaryOptions) -> ExpensePlan:
    problems: list[str] = []
    currency = draft.currency.strip().upper()
    if currency != options.currency:
        problems.append(
            f"the expense is in {currency} but the BillDiary business books in "
            f"{options.currency} and has no currency field: convert it before export, or fix "
            "the connection's currency option")
    paid = [p for p in draft.postings if p.account_number.strip() in options.payment_accounts]
    owed = [p for p in draft.postings if p.account_number.strip() in options.payable_accounts]
    cost = [p for p in draft.postings if p not in paid and p not in owed]
    accounts = sorted({p.account_number.strip() for p in draft.postings})
    if not paid and not owed:
        problems.append(
            f"none of the expense's accounts ({', '.join(accounts)}) says how it was paid: list "
            "the employee payable account in the connection's payable_accounts, or the bank/card "
            "account in payment_accounts (with its BillDiary payment method)")
    total = sum((p.amount for p in cost), Decimal("0"))
    if not cost or total == 0:
        problems.append("the expense has no cost rows (every row is on a payment or payable "
                        "account): nothing to book as a BillDiary expense")
    codes = sorted({p.account_number.strip() for p in cost})
    if len(codes) > 1:
        problems.append(
            f"a BillDiary expense has one category, but the cost rows are on {', '.join(codes)}: "
            "map these accounts to one category code in the account mapping, or split the "
            "expense in the source")
    tax_ids: set[int | None] = set()
    for posting in cost:
        if posting.vat_code:
            code = posting.vat_code.strip()
            if not code.isdigit():
                problems.append(
                    f"VAT code {code} is not a BillDiary tax rate id: map it to one in the "
                    "account mapping's vat_codes")
                continue
            tax_ids.add(int(code))
        else:
            tax_ids.add(options.default_tax_id)
    if len(tax_ids) > 1:
        shown = ", ".join(str(t) if t is not None else "none" for t in sorted(
            tax_ids, key=lambda t: t or 0))
        problems.append(f"a BillDiary expense has one tax rate, but the cost rows use {shown}: "
                        "split the expense in the source")
    final_total = abs(total).quantize(CENT)
    payments = []
    for account_number, option in options.payment_accounts.items():
        amount = abs(sum((p.amount for p in paid if p.account_number.strip() == account_number),
                         Decimal("0"))).quantize(CENT)
        if amount:
            payments.append(PaymentLine(amount, option, account_number))
    for amount in [final_total, *(line.amount for line in payments)]:
        if (options.amounts_use_business_format and options.thousand_separator == "."
                and amount != amount.to_integral_value()):
            problems.append(
                f"the business writes '.' as its thousand separator, so BillDiary would read "
                f"{amount} without its decimal point (as {str(amount.normalize()).replace('.', '')}"
                f"): change the business's number format "
                "(Business settings), or set amounts_use_business_format false if BillDiary "
                "reads API amounts as plain numbers")
            break
    if problems:
        messages = list(dict.fromkeys(problems))
        raise PermanentError("Cannot post to BillDiary: " + "; ".join(messages),
                             system=SYSTEM, code="cannot_map", details=messages)
    extra = [f"{kind} {value}" for p in draft.postings
             for kind, value in (("department", p.department_number),
                                 ("project", p.project_number)) if value]
    notes = "\n".join([
        draft.description,
        *([", ".join(dict.fromkeys(extra))] if extra else []),
        NOTE_LINE.format(ref=draft.external_number, total=final_total, currency=currency,
                         date=draft.date.isoformat()),
    ])
    return ExpensePlan(
        ref_no=draft.external_number,
        final_total=final_total,
        is_refund=total < 0,
        booked_on=draft.date,
        category_code=codes[0],
        tax_id=next(iter(tax_ids)),
        notes=notes,
        payments=tuple(payments),
    )


def intended(notes: str | None, ref_no: str) -> Intended | None:
    """What we meant to store, read back from the expense's notes (None: not our line)."""
    for match in _NOTE_PATTERN.finditer(notes or ""):
        if match.group("ref") == ref_no:
            return Intended(Decimal(match.group("total")),
                            date.fromisoformat(match.group("date")))
    return None


def format_amount(amount: Decimal) -> Decimal:
    """An amount as sent: two decimals, or none when whole (a business whose thousand separator
    is '.' reads "1250.00" as 125000, but "1250" right; ``plan_expense`` refused the rest)."""
    amount = amount.quantize(CENT)
    return amount.quantize(Decimal(1)) if amount == amount.to_integral_value() else amount


def format_moment(day: date, options: BillDiaryOptions) -> str:
    """``day`` at noon written as the business's web form expects it (``uf_date($date, true)``):
    its date format plus ``H:i`` (24 h) or ``h:i A`` (12 h)."""
    moment = datetime.combine(day, BOOKING_TIME)
    tokens = {
        "d": f"{moment.day:02d}", "j": str(moment.day),
        "m": f"{moment.month:02d}", "n": str(moment.month),
        "Y": f"{moment.year:04d}", "y": f"{moment.year % 100:02d}",
    }
    written = "".join(tokens.get(c, c) for c in options.date_format)
    clock = "12:00 PM" if options.time_format == 12 else "12:00"
    return f"{written} {clock}"
