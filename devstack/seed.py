"""Seed the demo organization: ``python -m devstack.seed --tripletex-url http://127.0.0.1:8100
--billdiary-url http://127.0.0.1:8300``.

Idempotent, and run on every start of the dev stack:
- the organization ``org_demo`` is created once;
- a new company is created in the Tripletex sandbox every time (the sandbox keeps its ledger in
  memory, so the previous run's company is gone) and the organization's Tripletex connection is
  pointed at it with the new company's tokens;
- likewise a new business in the BillDiary sandbox, and the organization's second target
  connection (BillDiary) with its key, secret and options (location, formats, which of our
  accounts mean "owed to the employee" / "paid by company card", VAT codes -> tax rate ids);
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
# The batch that goes to BillDiary. Its sandbox's categories carry our account numbers as codes
# (7142 is the sub-category Hotels under Travel); the ``credit`` of the last one is the company
# card's bank account, which the connection maps to a payment line.
BILLDIARY_EXPENSES = [
    (DemoExpense("demo-1001", "Hotell Bergen, to netter", "Kari Nordmann", 13,
                 "7142", "2780.00", "13", True), CREDIT_ACCOUNT),
    (DemoExpense("demo-1002", "Skjermkabel og mus", "Ingrid Berg", 5,
                 "6800", "459.90", "1", False), CREDIT_ACCOUNT),
    (DemoExpense("demo-1003", "Programvarelisens, årlig", "Ola Hansen", 3,
                 "6420", "1899.00", "1", True), "1920"),
]


def demo_expense_in(demo: DemoExpense, today: date,
                    credit_account: str = CREDIT_ACCOUNT) -> ExpenseIn:
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
            credit_account=credit_account,
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


def create_sandbox_business(billdiary_url: str, name: str = DEMO_ORG_NAME) -> dict:
    """A new business in the BillDiary sandbox (its seed locations, categories, tax rates and
    payment accounts): ``{"business_id", "api_key", "api_secret", "locations", ...}``."""
    response = httpx.post(
        f"{billdiary_url.rstrip('/')}/_sandbox/businesses",
        json={"name": name, "settings": {"date_format": "d.m.Y", "thousand_separator": " ",
                                          "decimal_separator": ","}}, timeout=10.0)
    response.raise_for_status()
    return response.json()


def billdiary_connection(business: dict) -> tuple[dict, dict]:
    """The demo's BillDiary connection: (options, account_mapping)."""
    settings = business["settings"]
    tax_ids = {t["amount"]: t["id"] for t in business["tax_rates"]}
    options = {
        "location_id": business["locations"][0]["id"],
        "currency": settings["currency_code"],
        "date_format": settings["date_format"],
        "time_format": settings["time_format"],
        "thousand_separator": settings["thousand_separator"],
        "decimal_separator": settings["decimal_separator"],
        "payable_accounts": [CREDIT_ACCOUNT],
        "payment_accounts": {"1920": {"method": "card",
                                      "account_id": business["payment_accounts"][0]["id"]}},
    }
    # Our VAT codes (1: 25 %, 13: 12 %) to the business's tax rate ids.
    mapping = {"vat_codes": {"1": str(tax_ids["25"]), "13": str(tax_ids["12"])}}
    return options, mapping


def _expense_summary(session, expense, demo: DemoExpense) -> dict:
    return {
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
    }


def seed_demo(session, *, tripletex_url: str, company: dict, billdiary_url: str,
              business: dict, today: date | None = None) -> dict:
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
    options, mapping = billdiary_connection(business)
    upsert_connection(
        session,
        DEMO_ORG_ID,
        "billdiary",
        base_url=f"{billdiary_url.rstrip('/')}/api",
        credentials={"api_key": business["api_key"], "api_secret": business["api_secret"]},
        account_mapping=mapping,
        options=options,
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
        expenses.append(_expense_summary(session, expense, demo))
    billdiary_expenses = []
    for demo, credit in BILLDIARY_EXPENSES:
        expense, _created = ingest_expense(session, DEMO_ORG_ID,
                                           demo_expense_in(demo, today, credit))
        billdiary_expenses.append(_expense_summary(session, expense, demo))
    return {
        "organization_id": DEMO_ORG_ID,
        "api_key": api_key,
        "sandbox_company_id": str(company["company_id"]),
        "expenses": expenses,
        "billdiary_business_id": business["business_id"],
        "billdiary_expenses": billdiary_expenses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.seed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tripletex-url", required=True, help="root URL of the Tripletex sandbox")
    parser.add_argument("--billdiary-url", required=True, help="root URL of the BillDiary sandbox")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    company = create_sandbox_company(args.tripletex_url)
    business = create_sandbox_business(args.billdiary_url)
    with session_scope() as session:
        result = seed_demo(session, tripletex_url=args.tripletex_url, company=company,
                           billdiary_url=args.billdiary_url, business=business)
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"organization {result['organization_id']}, "
              f"sandbox company {result['sandbox_company_id']}, "
              f"BillDiary business {result['billdiary_business_id']}")
        print(f"API key (shown once): {result['api_key']}")
        for expense in result["expenses"] + result["billdiary_expenses"]:
            print(f"  {expense['expense_id']}  {expense['amount']:>9} {expense['currency']}  "
                  f"{expense['description']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
