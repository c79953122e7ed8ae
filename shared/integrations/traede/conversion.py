"""Turn one TRAEDE accounting entry into our target-neutral ``ExpenseIn``.

Pure functions, no I/O. The rules, and why (shared/guides/entries-export-api.md):

- One entry is one balanced voucher [assumed: nothing groups entries]: ``account`` gets
  ``+amount`` (debit), ``contra_account`` gets ``-amount`` (credit). A negative amount flips the
  direction by itself; no special case.
- No VAT code on either row: TRAEDE books VAT as an entry of its own (a sales-VAT account as
  ``contra_account``); a VAT code on the target rows would book it twice.
- Accounts are TRAEDE's chart, mapped through the connection's ``account_mapping``; an unmapped
  account is refused with the numbers to add.
- The accounting date is the entry's UTC ``date`` in the connection's time zone.
- Go-live: an entry dated before the connection's ``go_live_date`` is REFUSED with the reason,
  not skipped. It only reaches us when it was created after go-live (the listing leaves older
  ones out), so it is a late entry for a period the previous process booked: a human decides
  (book it there, or move the go-live date and retry it here). Skipping it would make it
  vanish without a trace; refused, it stays unmarked in TRAEDE and visible to operators as
  failed, and the engine never posts it.
- Money is ``Decimal`` throughout; an amount with more than two decimals, or zero, is refused
  rather than rounded or posted as nothing.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from shared.domain.expenses import ExpenseIn
from shared.domain.statuses import ExpenseStatus
from shared.integrations.errors import PermanentError
from shared.integrations.traede.models import AccountingEntry
from shared.integrations.traede.options import TraedeOptions

SOURCE = "traede"
_DESCRIPTION_MAX = 500  # ExpenseIn.description
CENT = Decimal("0.01")


class UnbookableEntry(PermanentError):
    """An entry no target can book as it is; ``message`` says what to fix and where."""

    def __init__(self, message: str, *, entry_id: Any = None) -> None:
        super().__init__(message, system=SOURCE, code="unbookable_entry")
        self.entry_id = entry_id


def parse_entry(raw: dict[str, Any]) -> AccountingEntry:
    """The entry as listed, validated; raises ``UnbookableEntry`` naming the fields."""
    try:
        return AccountingEntry.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise UnbookableEntry(
            f"TRAEDE entry {raw.get('id', '(no id)')} is not an accounting entry we can read "
            f"({problems})", entry_id=raw.get("id")) from None


def accounting_date(entry: AccountingEntry, options: TraedeOptions) -> date:
    return entry.date.astimezone(options.zone).date()


def entry_to_expense(entry: AccountingEntry, options: TraedeOptions, *,
                     target_system: str = "the accounting system") -> ExpenseIn:
    """The balanced expense to book for ``entry``; raises ``UnbookableEntry``."""
    day = accounting_date(entry, options)
    if day < options.go_live_date:
        raise UnbookableEntry(
            f"TRAEDE entry {entry.id} is dated {day.isoformat()} ({options.time_zone}), before "
            f"this connection's go-live date {options.go_live_date.isoformat()}: it belongs to "
            f"the books kept before go-live and is not booked in {target_system}. Book it there "
            "by hand, or move the connection's go_live_date to that day or earlier and retry "
            "it; until then it stays unmarked in TRAEDE", entry_id=entry.id)
    amount = entry.amount
    if amount != amount.quantize(CENT):
        raise UnbookableEntry(
            f"TRAEDE entry {entry.id} has the amount {amount}, with more than two decimals: "
            "correct it in TRAEDE (it is not rounded behind your back)", entry_id=entry.id)
    if amount == 0:
        raise UnbookableEntry(f"TRAEDE entry {entry.id} has the amount 0: there is nothing to "
                              "book; correct or delete it in TRAEDE", entry_id=entry.id)
    unmapped = [str(n) for n in dict.fromkeys((entry.account, entry.contra_account))
                if str(n) not in options.account_mapping]
    if unmapped:
        raise UnbookableEntry(
            f"TRAEDE entry {entry.id}: TRAEDE account{'s' if len(unmapped) > 1 else ''} "
            f"{' and '.join(unmapped)} {'are' if len(unmapped) > 1 else 'is'} not in this "
            f"connection's account_mapping; map {'them' if len(unmapped) > 1 else 'it'} to "
            f"{target_system} account numbers and retry the entry", entry_id=entry.id)
    text = (entry.text or "").strip()
    description = text or f"TRAEDE entry {entry.id}"
    rows = [
        {"account": options.account_mapping[str(entry.account)], "amount": amount,
         "vat_code": None, "description": text},
        {"account": options.account_mapping[str(entry.contra_account)], "amount": -amount,
         "vat_code": None, "description": text},
    ]
    try:
        return ExpenseIn(
            source=SOURCE,
            source_ref=str(entry.id),
            status=ExpenseStatus.APPROVED,
            description=description[:_DESCRIPTION_MAX],
            expense_date=day,
            currency=entry.currency.strip().upper(),
            rows=rows,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise UnbookableEntry(f"TRAEDE entry {entry.id} cannot be booked: {problems} - "
                              "correct it in TRAEDE", entry_id=entry.id) from exc
