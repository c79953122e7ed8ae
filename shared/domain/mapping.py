"""Map an expense's source accounts to the target's chart of accounts.

A connection's ``account_mapping`` looks like::

    {"accounts": {"7140": "7140", "2930": "2910"},   # source account -> target account
     "vat_codes": {"1": "1"},                         # source tax code -> target VAT type number
     "departments": {"100": "1"}, "projects": {"P-17": "17"},
     "strict": false}

Anything not listed maps to the same number ("same number" default). With ``strict`` on, every
source account must be listed. The pre-flight here catches unmapped values before anything is
posted, so the administrator reads "account 7140 is not mapped" instead of a target's 422.
"""

from __future__ import annotations

from typing import Any

from shared.db.models import AccountingExport, Expense
from shared.domain.errors import MappingError
from shared.domain.vouchers import PostingDraft, VoucherDraft


def _map(mapping: dict[str, Any], table: str, value: str | None, what: str, strict: bool) -> str | None:
    if value is None or value == "":
        return None
    entries: dict[str, str] = mapping.get(table) or {}
    if value in entries:
        target = entries[value]
        if target in (None, ""):
            raise MappingError(f"{what} {value} is mapped to nothing; map it to a target {what}")
        return str(target)
    if strict:
        raise MappingError(
            f"{what} {value} is not mapped for this connection; add it to the account mapping "
            f"('{table}')"
        )
    return value


def build_voucher_draft(export: AccountingExport, expense: Expense, mapping: dict[str, Any]) -> VoucherDraft:
    strict = bool(mapping.get("strict", False))
    description = expense.description
    if expense.employee_name:
        description = f"{description} ({expense.employee_name})"
    postings = [
        PostingDraft(
            account_number=_map(mapping, "accounts", row["account"], "account", strict),
            amount=row["amount"],
            description=row.get("description") or expense.description,
            vat_code=_map(mapping, "vat_codes", row.get("vat_code"), "VAT code", strict),
            department_number=_map(mapping, "departments", row.get("department"), "department",
                                   strict),
            project_number=_map(mapping, "projects", row.get("project"), "project", strict),
        )
        for row in expense.rows
    ]
    return VoucherDraft(
        external_number=export.id,
        date=expense.expense_date,
        description=description[:255],
        currency=expense.currency,
        postings=postings,
    )
