"""The JSON shapes of the Brex Expenses API [spec: ``ExpandableExpense``, ``Expense``].

Every property the spec lists is written, ``null`` when Brex would not fill it: the expandable
objects (``merchant``, ``user``, ``location``, ``department``, ``budget``, ``payment``) only
with the matching ``expand[]``, ``receipts[].download_uris`` only with
``expand[]=receipts.download_uris``, ``custom_fields`` only with ``load_custom_fields=true``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sandbox.brex.state import Account, ExpenseRec, Receipt, iso_ms

EXPANDABLE = ("location", "department", "merchant", "receipts.download_uris", "user", "budget",
              "payment")


def expandable_expense(e: ExpenseRec, account: Account, expand: set[str], custom_fields: bool,
                       link_for: Callable[[Receipt], str]) -> dict[str, Any]:
    directory = account.directory
    with_links = "receipts.download_uris" in expand
    return {
        "id": e.id,
        "memo": e.memo,
        "location_id": e.location_id,
        "location": directory.find("locations", e.location_id) if "location" in expand else None,
        "address": e.address,
        "department_id": e.department_id,
        "department": directory.find("departments", e.department_id)
        if "department" in expand else None,
        "updated_at": iso_ms(e.updated_at),
        "payment_posted_at": iso_ms(e.payment_posted_at),
        "category": e.category,
        "merchant_id": e.merchant_id,
        "merchant": dict(e.merchant) if e.merchant and "merchant" in expand else None,
        "receipts": [{"id": r.id, "download_uris": [link_for(r)] if with_links else None}
                     for r in e.receipts],
        "budget_id": e.budget_id,
        "budget": directory.find("budgets", e.budget_id) if "budget" in expand else None,
        "expense_type": e.expense_type,
        "original_amount": dict(e.original_amount),
        "billing_amount": dict(e.billing_amount),
        "budget_amount": dict(e.budget_amount),
        "purchased_amount": dict(e.purchased_amount),
        "usd_equivalent_amount": dict(e.usd_equivalent_amount),
        "purchased_at": iso_ms(e.purchased_at),
        "status": e.status,
        "payment_status": e.payment_status,
        "user_id": e.user_id,
        "user": directory.find("users", e.user_id) if "user" in expand else None,
        "payment": _payment(e) if "payment" in expand else None,
        "custom_fields": [dict(f) for f in e.custom_fields] if custom_fields else None,
        "trip_id": None,
        "spending_entity_id": e.spending_entity_id,
        "spending_entity": None,
        "billing_entity_id": e.spending_entity_id,
        "exported_at": None,
        "integration_spending_entity_id": None,
        "integration_billing_entity_id": None,
        "review": None,
        "repayment": None,
        "approved_at": iso_ms(e.approved_at),
        "submitted_at": iso_ms(e.submitted_at),
        "completion_date": iso_ms(e.payment_posted_at),
    }


def _payment(e: ExpenseRec) -> dict[str, Any] | None:
    if e.payment_id is None or e.card_id is None:
        return None
    return {"id": e.payment_id, "paymentInstrument": {"type": "CARD", "id": e.card_id},
            "statusReason": "APPROVED"}


def plain_expense(e: ExpenseRec) -> dict[str, Any]:
    """The answer of the memo ``PUT`` [spec: ``Expense``]: no expandable objects."""
    return {
        "id": e.id,
        "memo": e.memo,
        "location_id": e.location_id,
        "department_id": e.department_id,
        "updated_at": iso_ms(e.updated_at),
        "category": e.category,
        "merchant_id": e.merchant_id,
        "budget_id": e.budget_id,
        "original_amount": dict(e.original_amount),
        "billing_amount": dict(e.billing_amount),
        "purchased_at": iso_ms(e.purchased_at),
        "status": e.status,
        "payment_status": e.payment_status,
    }


def control_expense(e: ExpenseRec, account: Account) -> dict[str, Any]:
    """The control API's view: what the wire hides too (parent, receipts' names, sequence)."""
    body = expandable_expense(e, account, set(EXPANDABLE) - {"receipts.download_uris"}, True,
                              lambda r: "")
    body["parent_expense_id"] = e.parent_id
    body["receipts"] = [{"id": r.id, "filename": r.filename, "uploaded": r.content is not None}
                        for r in e.receipts]
    body["seq"] = e.seq
    return body
