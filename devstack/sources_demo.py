"""TRAEDE entries and Brex expenses through the running stack, as those sources would send them.

The demo organization gets a TRAEDE connection to a fresh sandbox company (entries marked
exported with the voucher number) and a Brex connection to a fresh sandbox account (memo
write-back on), both booking into Tripletex. A few entries and expenses are seeded in the
sandboxes, and the poll is queued the way beat queues it (beat itself polls every
AIC_POLL_INTERVAL_SECONDS, 15 minutes by default); our worker lists them, books each one once
in the Tripletex sandbox and reports back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
from celery import Celery

from shared.queue import TASK_POLL_SOURCES

# TRAEDE's Danish chart -> the Tripletex sandbox's accounts (no VAT code on either row: TRAEDE
# books VAT as an entry of its own).
TRAEDE_MAPPING = {"5820": "1920", "1010": "2930", "1310": "7770", "6800": "1920"}
TRAEDE_ENTRIES = [
    {"amount": "1250.00", "account": 5820, "contra_account": 1010, "text": "Faktura 10001"},
    {"amount": "-310.50", "account": 5820, "contra_account": 1010, "text": "Kreditnota 10002"},
    {"amount": "845.25", "account": 1310, "contra_account": 6800, "text": "Varekøb 10003"},
]
# Minor units (NOK has two decimals); the second one is itemized into two purchases.
BREX_EXPENSES = [
    {"original_amount": 34900, "currency": "NOK", "billing_amount": 34900},
    {"original_amount": 120000, "currency": "NOK", "billing_amount": 120000},
]
BREX_SPLIT = [70000, 50000]
BREX_OPTIONS = {"default_account": "7770",
                "credit_accounts": {"CARD": "1920", "REIMBURSEMENT": "2930"},
                "ledger_currency": "NOK", "memo_write_back": True}


@dataclass
class SourcesDemo:
    traede_company_id: str
    traede_system_id: str
    traede_entry_ids: list[int]
    brex_account_id: str
    brex_expense_ids: list[str]
    notes: list[str] = field(default_factory=list)


def connect_and_seed(*, api_url: str, traede_url: str, brex_url: str, admin_token: str,
                     organization_id: str) -> SourcesDemo:
    admin = {"Authorization": f"Bearer {admin_token}"}
    sources = f"{api_url}/api/v1/admin/organizations/{organization_id}/sources"
    now = datetime.now(UTC)
    with httpx.Client(timeout=15.0) as http:
        company = http.post(f"{traede_url}/_sandbox/companies",
                            json={"name": "Fjordreiser Demo ApS (TRAEDE)"})
        company.raise_for_status()
        company = company.json()
        entries = [{**e, "currency": "NOK", "date": (now - timedelta(hours=2)).isoformat(),
                    "created_at": (now - timedelta(hours=1)).isoformat()}
                   for e in TRAEDE_ENTRIES]
        added = http.post(f"{traede_url}/_sandbox/companies/{company['company_id']}/entries",
                          json={"entries": entries})
        added.raise_for_status()
        system_id = f"aic-tripletex-{organization_id}"[:60]
        http.put(f"{sources}/traede", headers=admin, json={
            "base_url": company["base_url"], "target_system": "tripletex",
            "credentials": {"access_token": company["access_token"],
                            "app_key": company["app_key"]},
            "options": {"system_id": system_id,
                        "go_live_date": (now - timedelta(days=30)).date().isoformat(),
                        "account_mapping": TRAEDE_MAPPING, "time_zone": "Europe/Oslo"},
        }).raise_for_status()

        account = http.post(f"{brex_url}/_sandbox/accounts",
                            json={"name": "Fjordreiser Demo AS (Brex)",
                                  "billing_currency": "NOK"})
        account.raise_for_status()
        account = account.json()
        expenses = http.post(f"{brex_url}/_sandbox/accounts/{account['account_id']}/expenses",
                             json={"expenses": BREX_EXPENSES})
        expenses.raise_for_status()
        expense_ids = expenses.json()["expense_ids"]
        http.post(f"{brex_url}/_sandbox/accounts/{account['account_id']}/expenses/"
                  f"{expense_ids[1]}/split", json={"parts": BREX_SPLIT}).raise_for_status()
        http.put(f"{sources}/brex", headers=admin, json={
            "base_url": account["base_url"], "target_system": "tripletex",
            "credentials": {"user_token": account["token"]}, "options": BREX_OPTIONS,
        }).raise_for_status()
    return SourcesDemo(company["company_id"], system_id, added.json()["entry_ids"],
                       account["account_id"], expense_ids)


def queue_poll(redis_url: str, maintenance_queue: str) -> None:
    """What beat does every AIC_POLL_INTERVAL_SECONDS (and `aic source poll`)."""
    app = Celery(broker=redis_url)
    try:
        app.send_task(TASK_POLL_SOURCES, queue=maintenance_queue)
    finally:
        app.close()


def traede_marks(traede_url: str, demo: SourcesDemo) -> dict[int, str]:
    """entry id -> the note of our mark (the Tripletex voucher number), for marked entries."""
    response = httpx.get(f"{traede_url}/_sandbox/companies/{demo.traede_company_id}/entries",
                         timeout=10.0)
    response.raise_for_status()
    return {e["id"]: e["exports"][demo.traede_system_id]["note"] for e in response.json()
            if demo.traede_system_id in (e.get("exports") or {})}


def brex_memos(brex_url: str, demo: SourcesDemo) -> dict[str, str]:
    """expense id -> its memo, for the demo's purchases."""
    response = httpx.get(f"{brex_url}/_sandbox/accounts/{demo.brex_account_id}/expenses",
                         timeout=10.0)
    response.raise_for_status()
    return {e["id"]: e.get("memo") or "" for e in response.json()
            if e["id"] in demo.brex_expense_ids}


def wait_until_reported(*, traede_url: str, brex_url: str, demo: SourcesDemo, timeout: float,
                        poll) -> tuple[dict[int, str], dict[str, str]]:
    """Queue polls until every entry is marked and every purchase's memo names its voucher."""
    deadline = time.monotonic() + timeout
    next_poll = 0.0
    while True:
        marks, memos = traede_marks(traede_url, demo), brex_memos(brex_url, demo)
        done = (len(marks) == len(demo.traede_entry_ids)
                and all("[Booked as voucher" in memo for memo in memos.values()))
        if done or time.monotonic() > deadline:
            return marks, memos
        if time.monotonic() >= next_poll:
            poll()
            next_poll = time.monotonic() + 3
        time.sleep(0.5)
