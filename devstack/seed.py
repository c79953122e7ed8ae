"""Seed the demo organization: ``python -m devstack.seed --tripletex-url http://127.0.0.1:8100``.

Idempotent, and run on every start of the dev stack:
- the organization ``org_demo`` is created once;
- a new company is created in the Tripletex sandbox every time (the sandbox keeps its ledger in
  memory, so the previous run's company is gone) and the organization's Tripletex connection is
  pointed at it with the new company's tokens;
- a new API key, with both scopes (exports, callbacks), is issued every time; its plaintext is
  printed once and stored nowhere;
- the demo expenses are ingested by (source "demo", source_ref), so a second run finds them
  instead of adding copies.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import httpx

from sandbox.findity.pdf import render_pdf

from sqlalchemy import select

from shared.db.models import AccountingExport, ApiKey, Organization
from shared.db.session import session_scope
from shared.domain.expenses import ExpenseIn, ingest_expense, simple_expense_rows
from shared.domain.organizations import (
    create_api_key,
    create_organization,
    revoke_api_key,
    upsert_connection,
)
from shared.domain.statuses import ExpenseStatus

DEMO_ORG_ID = "org_demo"
DEMO_KEY_NAME = "devstack"  # the key each `make run` prints; the previous one is revoked
DEMO_ORG_NAME = "Fjordreiser Demo AS"
DEMO_SOURCE = "demo"
# 2930 Skyldig lønn: what the company owes the employee who paid out of pocket.
CREDIT_ACCOUNT = "2930"


@dataclass(frozen=True)
class DemoExpense:
    source_ref: str
    description: str
    employee_name: str
    days_ago: int
    cost_account: str
    amount: str
    vat_code: str | None
    receipt: bool


# Norwegian standard chart of accounts (NS 4102). VAT codes: 1 deductible input VAT at 25 %,
# 13 at 12 % (passenger transport); travel allowances (7130) and entertainment (7350) carry none.
DEMO_EXPENSES = [
    DemoExpense("demo-0001", "Flybillett Oslo-Bergen, kundemøte", "Kari Nordmann", 14,
                "7140", "2489.00", "13", True),
    DemoExpense("demo-0002", "Taxi Bergen lufthavn - sentrum", "Kari Nordmann", 14,
                "7140", "612.50", "13", False),
    DemoExpense("demo-0003", "Kostgodtgjørelse, dagsreise Trondheim", "Ola Hansen", 9,
                "7130", "397.00", None, False),
    DemoExpense("demo-0004", "Kontorrekvisita: permer og notatblokker", "Ingrid Berg", 6,
                "6800", "349.00", "1", True),
    DemoExpense("demo-0005", "Blekkpatroner og kopipapir", "Ingrid Berg", 4,
                "6800", "1249.50", "1", True),
    DemoExpense("demo-0006", "Lunsj med kunde, Fisketorget", "Ola Hansen", 2,
                "7350", "1120.00", None, False),
]


def demo_expense_in(demo: DemoExpense, today: date) -> ExpenseIn:
    expense_date = today - timedelta(days=demo.days_ago)
    receipt = {}
    if demo.receipt:
        receipt = {
            "receipt_filename": f"{demo.source_ref}.pdf",
            "receipt_content_type": "application/pdf",
            "receipt_data": render_pdf([
                "KVITTERING",
                demo.description,
                f"Dato: {expense_date.isoformat()}",
                f"Beløp: NOK {demo.amount}",
                f"Betalt av: {demo.employee_name}",
            ]),
        }
    return ExpenseIn(
        source=DEMO_SOURCE,
        source_ref=demo.source_ref,
        status=ExpenseStatus.APPROVED,
        description=demo.description,
        employee_name=demo.employee_name,
        expense_date=expense_date,
        currency="NOK",
        rows=simple_expense_rows(
            cost_account=demo.cost_account,
            amount=Decimal(demo.amount),
            vat_code=demo.vat_code,
            credit_account=CREDIT_ACCOUNT,
            description=demo.description,
        ),
        **receipt,
    )


def create_sandbox_company(tripletex_url: str, name: str = DEMO_ORG_NAME) -> dict:
    """A new company in the Tripletex sandbox: ``{"company_id", "consumer_token", ...}``."""
    response = httpx.post(
        f"{tripletex_url.rstrip('/')}/_sandbox/companies", json={"name": name}, timeout=10.0
    )
    response.raise_for_status()
    return response.json()


def seed_demo(session, *, tripletex_url: str, company: dict, today: date | None = None) -> dict:
    """Create or update the demo organization inside ``session``; returns what a user needs."""
    today = today or date.today()
    if session.get(Organization, DEMO_ORG_ID) is None:
        create_organization(session, DEMO_ORG_NAME, org_id=DEMO_ORG_ID)
    upsert_connection(
        session,
        DEMO_ORG_ID,
        "tripletex",
        base_url=f"{tripletex_url.rstrip('/')}/v2",
        credentials={
            "consumer_token": company["consumer_token"],
            "employee_token": company["employee_token"],
            # Basic-auth user "0": the company the employee token belongs to.
            "company_id": "0",
        },
    )
    # Both scopes: the demo key is the one `make run` prints, for every operation of the API,
    # the status callback included. The previous runs' keys are revoked: only the key this run
    # printed works, instead of one more valid key per start.
    for old in session.scalars(select(ApiKey).where(
            ApiKey.organization_id == DEMO_ORG_ID, ApiKey.name == DEMO_KEY_NAME,
            ApiKey.revoked_at.is_(None))):
        revoke_api_key(session, DEMO_ORG_ID, old.id)
    _key, api_key = create_api_key(session, DEMO_ORG_ID, name=DEMO_KEY_NAME,
                                   scopes=["exports", "callbacks"])
    expenses = []
    for demo in DEMO_EXPENSES:
        expense, _created = ingest_expense(session, DEMO_ORG_ID, demo_expense_in(demo, today))
        expenses.append({
            "expense_id": expense.id,
            "source_ref": expense.source_ref,
            "description": expense.description,
            "amount": str(expense.amount),
            "currency": expense.currency,
            "expense_date": expense.expense_date.isoformat(),
            "has_receipt": demo.receipt,
            # An earlier run may have exported it already (to an earlier sandbox company).
            "live_export_status": session.scalar(
                select(AccountingExport.status).where(
                    AccountingExport.expense_id == expense.id,
                    AccountingExport.active_key.is_not(None),
                )
            ),
        })
    return {
        "organization_id": DEMO_ORG_ID,
        "api_key": api_key,
        "sandbox_company_id": str(company["company_id"]),
        "expenses": expenses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.seed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tripletex-url", required=True, help="root URL of the Tripletex sandbox")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    company = create_sandbox_company(args.tripletex_url)
    with session_scope() as session:
        result = seed_demo(session, tripletex_url=args.tripletex_url, company=company)
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"organization {result['organization_id']}, "
              f"sandbox company {result['sandbox_company_id']}")
        print(f"API key (shown once): {result['api_key']}")
        for expense in result["expenses"]:
            print(f"  {expense['expense_id']}  {expense['amount']:>9} {expense['currency']}  "
                  f"{expense['description']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
