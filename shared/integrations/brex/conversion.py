"""A Brex expense (or an itemized family) -> our target-neutral ``ExpenseIn``, or why not.

Pure functions, no I/O. The rules, and why:

- **Money** is integer minor units; ``currencies.to_major`` converts with the ISO 4217 exponent
  (JPY 0, KWD 3), never ``/100``. An unknown currency is refused. Our expenses hold two
  decimals: an amount with more (KWD 12.345) is refused rather than rounded.
- **The unit is one purchase.** A plain expense is one item with its own id. An itemized one
  (status SPLIT) and its children are ONE item under the parent's id, whose cost rows are the
  children's lines (each with its own category/account) against one credit row. The parent and
  its children are therefore never both booked: the children never have a booking key of their
  own (the poll maps them to their parent), and a parent booked before it was split keeps its
  id, so the split shows up as changed content of a booked item (a correction for a human),
  never as new items. Why the parent's id rather than booking each child alone: Brex keeps the
  receipt on the parent, the family is one card transaction (one payable to the card issuer),
  and children carry no ``parent_expense_id`` on the wire [spec], so a child booked alone could
  not be tied back to a parent booked earlier.
- **What is bookable**: a status among the connection's approved statuses; a positive expense
  whose payment was refused or refunded (``payment_status`` CANCELED, DECLINED, REFUNDING,
  REFUNDED) is not. A negative amount (Brex's credit for a partial refund) books as the reverse
  of an expense. Children that are not approved (VOID) drop out of the family; none left: refused.
- **Content fingerprint**: what the booking depends on (per member: bookable or not, the booked
  amount, the original amount, category, merchant, type, purchase date), hashed. Not in it:
  ``updated_at``, the memo (we write it ourselves), receipt links, SETTLED vs APPROVED (both
  approved). An expense whose fingerprint differs from its booked one changed after booking.
- **Texts**: the merchant, the category and the original amount when it is in another
  currency; never the memo (our write-back changes it).
- No VAT: Brex gives no VAT split; rows carry no VAT code, the gross is booked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from shared.domain.statuses import ExpenseStatus
from shared.domain.expenses import ExpenseIn
from shared.integrations.brex.currencies import UnknownCurrency, to_major
from shared.integrations.brex.models import SPLIT, Expense, Money
from shared.integrations.brex.options import BrexOptions

SOURCE = "brex"
NOT_PAID = frozenset({"CANCELED", "DECLINED", "REFUNDING", "REFUNDED"})
_DESCRIPTION_MAX = 500
_TWO_DECIMALS = Decimal("0.01")


@dataclass(frozen=True)
class Family:
    """One purchase as fetched: the expense, and its itemized children when it is SPLIT."""

    head: Expense
    children: list[Expense] = field(default_factory=list)

    @property
    def members(self) -> list[Expense]:
        """What carries the amounts: the children of a SPLIT parent, else the expense."""
        return self.children if self.head.status == SPLIT else [self.head]


class Unbookable(ValueError):
    """Why an expense cannot be booked, in words an administrator can act on."""


@dataclass(frozen=True)
class Converted:
    expense: ExpenseIn | None
    refusal: str | None
    fingerprint: str


def convert(family: Family, options: BrexOptions, *,
            target_system: str = "the accounting system") -> Converted:
    fingerprint = content_fingerprint(family, options)
    try:
        return Converted(_expense_in(family, options, target_system), None, fingerprint)
    except Unbookable as why:
        return Converted(None, str(why), fingerprint)


def content_fingerprint(family: Family, options: BrexOptions) -> str:
    facts = {"id": family.head.id, "split": family.head.status == SPLIT,
             "members": sorted((_facts(m, options) for m in family.members),
                               key=lambda f: f["id"])}
    canonical = json.dumps(facts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def listing_version(expense: Expense, options: BrexOptions) -> str:
    """The fingerprint of one listed expense: changes when its bookable content may have
    changed, not when only ``updated_at`` or the memo moved (our own write-back)."""
    canonical = json.dumps(_facts(expense, options), sort_keys=True, separators=(",", ":"),
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _facts(expense: Expense, options: BrexOptions) -> dict[str, Any]:
    def money(m: Money | None) -> list[Any] | None:
        return [m.amount, m.currency] if m is not None else None

    return {
        "id": expense.id,
        "bookable": _why_not_bookable(expense, options) is None,
        "status": "SPLIT" if expense.status == SPLIT else None,
        "booked": money(getattr(expense, options.amount_field)),
        "original": money(expense.original_amount),
        "category": expense.category,
        "merchant": expense.merchant.raw_descriptor if expense.merchant else expense.merchant_id,
        "type": expense.expense_type,
        "purchased": expense.purchased_at.date().isoformat() if expense.purchased_at else None,
    }


def _why_not_bookable(expense: Expense, options: BrexOptions) -> str | None:
    if expense.status not in options.approved_statuses:
        return (f"its status in Brex is {expense.status or 'missing'}, not one this connection "
                f"books ({', '.join(options.approved_statuses)})")
    amount = getattr(expense, options.amount_field)
    if expense.payment_status in NOT_PAID and (amount is None or amount.amount > 0):
        return f"its payment is {expense.payment_status} in Brex, so nothing was spent"
    return None


def _expense_in(family: Family, options: BrexOptions, target_system: str) -> ExpenseIn:
    head = family.head
    if head.status == SPLIT:
        if not family.children:
            raise Unbookable(f"expense {head.id} is itemized (SPLIT) but Brex lists none of its "
                             "itemized expenses")
        lines = [c for c in family.children if _why_not_bookable(c, options) is None]
        if not lines:
            reasons = "; ".join(f"{c.id}: {_why_not_bookable(c, options)}"
                                for c in family.children)
            raise Unbookable(f"no itemized expense of {head.id} can be booked ({reasons})")
    else:
        why = _why_not_bookable(head, options)
        if why:
            raise Unbookable(f"expense {head.id} is not booked: {why}")
        lines = [head]

    currency: str | None = None
    rows: list[dict[str, Any]] = []
    for line in lines:
        amount, line_currency = _amount(line, options)
        if currency is not None and line_currency != currency:
            raise Unbookable(f"the itemized expenses of {head.id} are in different currencies "
                             f"({currency}, {line_currency})")
        currency = line_currency
        if amount != 0:
            rows.append({"account": _cost_account(line, options), "amount": amount,
                         "vat_code": None, "description": _line_text(line, options)})
    assert currency is not None
    total = sum((r["amount"] for r in rows), Decimal("0"))
    if total == 0:
        raise Unbookable(f"expense {head.id} has nothing to book: its "
                         f"{options.amount_field} is 0")
    credit = _credit_account(head, options)
    rows.append({"account": credit, "amount": -total, "vat_code": None,
                 "description": _line_text(head, options)})
    try:
        return ExpenseIn(
            source=SOURCE, source_ref=head.id, status=ExpenseStatus.APPROVED,
            description=_line_text(head, options)[:_DESCRIPTION_MAX],
            employee_name=head.user.name if head.user else None,
            expense_date=_date(head), currency=currency, rows=rows)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'expense'}: {e['msg']}"
                             for e in exc.errors())
        raise Unbookable(f"expense {head.id} cannot be booked in {target_system}: "
                         f"{problems}") from None


def _amount(expense: Expense, options: BrexOptions) -> tuple[Decimal, str]:
    name = options.amount_field
    money: Money | None = getattr(expense, name)
    if money is None:
        raise Unbookable(f"expense {expense.id} has no {name}")
    try:
        major = to_major(money.amount, money.currency)
    except UnknownCurrency as error:
        raise Unbookable(f"expense {expense.id}: {error}") from None
    if options.ledger_currency and money.currency != options.ledger_currency:
        raise Unbookable(f"expense {expense.id}: its {name} is in {money.currency}, not the "
                         f"ledger currency {options.ledger_currency}; book another amount "
                         "field or change the connection's ledger_currency")
    if major != major.quantize(_TWO_DECIMALS):
        raise Unbookable(f"expense {expense.id}: {money.currency} {major} has more than two "
                         "decimals, which our expenses cannot hold exactly; it is not rounded")
    return major.quantize(_TWO_DECIMALS), money.currency


def _cost_account(expense: Expense, options: BrexOptions) -> str:
    merchant = expense.merchant
    for key in ((merchant.raw_descriptor if merchant else None),
                (f"mcc:{merchant.mcc}" if merchant and merchant.mcc else None)):
        if key and key in options.merchant_accounts:
            return options.merchant_accounts[key]
    if expense.category and expense.category in options.category_accounts:
        return options.category_accounts[expense.category]
    if options.default_account:
        return options.default_account
    raise Unbookable(f"expense {expense.id}: no account for category "
                     f"{expense.category or '(none)'} or merchant "
                     f"{(merchant.raw_descriptor if merchant else None) or '(unknown)'}; map it "
                     "in the connection's category_accounts or merchant_accounts, or set "
                     "default_account")


def _credit_account(expense: Expense, options: BrexOptions) -> str:
    kind = expense.expense_type or "UNSET"
    account = options.credit_accounts.get(kind)
    if account is None:
        raise Unbookable(f"expense {expense.id} is of type {kind}, which this connection does "
                         f"not book; map it in credit_accounts (mapped: "
                         f"{', '.join(sorted(options.credit_accounts)) or 'none'})")
    return account


def _line_text(expense: Expense, options: BrexOptions) -> str:
    parts = [expense.merchant.raw_descriptor if expense.merchant and expense.merchant.raw_descriptor
             else f"Brex expense {expense.id}"]
    if expense.category:
        parts.append(expense.category.replace("_", " ").lower())
    booked = getattr(expense, options.amount_field)
    original = expense.original_amount
    if original is not None and booked is not None and original.currency != booked.currency:
        try:
            parts.append(f"{original.currency} {to_major(original.amount, original.currency)}")
        except UnknownCurrency:
            parts.append(f"{original.currency} {original.amount} minor units")
    return ", ".join(parts)


def _date(expense: Expense) -> date:
    """The purchase date (UTC); a purchase without one books on its last update."""
    moment = expense.purchased_at or expense.updated_at
    return moment.date()
