"""Brex -> us -> Tripletex -> our voucher number in the Brex memo, on real processes and both
sandboxes.

The connection is made through the admin API with Brex's generic credentials (a user token);
the poll task is sent as beat sends it (twice at once). The poll walks ``GET /v1/expenses`` from
the high-water mark the engine stored as the connection's cursor; each purchase is one unit (an
itemized family under its SPLIT parent's id), booked once with its receipt attached, and the
memo write-back carries an Idempotency-Key.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
from sqlalchemy import select

from shared.queue import TASK_POLL_SOURCES, celery_app

pytestmark = pytest.mark.timeout(300)

OPTIONS = {"default_account": "7770", "credit_accounts": {"CARD": "1920", "REIMBURSEMENT": "2930"},
           "ledger_currency": "NOK", "memo_write_back": True, "overlap_seconds": 60}


def _poll() -> None:
    for _ in range(2):  # beat started twice: the poll's lock lets one through
        celery_app.send_task(TASK_POLL_SOURCES, queue="maintenance")


def _wait(what: str, check, timeout: float = 120):
    deadline = time.monotonic() + timeout
    next_poll = 0.0
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if time.monotonic() >= next_poll:
            _poll()
            next_poll = time.monotonic() + 3
        time.sleep(0.3)
    return value


def _stored_cursor(connection_id: str) -> str | None:
    from shared.db.models import SourceConnection
    from shared.db.session import session_scope

    with session_scope() as session:
        return session.scalar(select(SourceConnection.poll_cursor).where(
            SourceConnection.id == connection_id))


def test_expenses_are_booked_once_with_receipts_and_the_memo_written_back(
        tenant, brex_sandbox, admin, worker):
    account = brex_sandbox.create_account(billing_currency="NOK")
    account_id = account["account_id"]
    ids = brex_sandbox.add_expenses(account_id, [
        {"original_amount": 12345, "currency": "NOK", "billing_amount": 12345},
        {"original_amount": 50000, "currency": "NOK", "billing_amount": 50000},
        {"original_amount": 9900, "currency": "NOK", "billing_amount": 9900, "receipts": 0},
    ])
    # The second purchase is itemized: its SPLIT parent and children are never both booked.
    children = brex_sandbox.split(account_id, ids[1], [20000, 30000])
    response = admin.put(
        f"/api/v1/admin/organizations/{tenant.organization_id}/sources/brex",
        json={"base_url": account["base_url"], "credentials": {"user_token": account["token"]},
              "target_system": "tripletex", "options": OPTIONS})
    assert response.status_code == 200, response.text
    connection_id = response.json()["source_connection_id"]

    vouchers = _wait("three vouchers in Tripletex",
                     lambda: (v := tenant.vouchers()) and len(v) >= 3 and v)
    time.sleep(1)
    for _ in range(2):  # more polls (overlap, our own memo writes) book nothing again
        _poll()
        time.sleep(2)
    vouchers = tenant.vouchers()
    assert len(vouchers) == 3, [v["description"] for v in vouchers]
    assert len({v["externalVoucherNumber"] for v in vouchers}) == 3
    totals = sorted(sum(Decimal(str(p["amount"])) for p in v["postings"]
                        if Decimal(str(p["amount"])) > 0) for v in vouchers)
    assert totals == [Decimal("99.00"), Decimal("123.45"), Decimal("500.00")]
    # Receipts: the two purchases that have one carry it in Tripletex.
    assert sum(1 for v in vouchers if v.get("attachments")) == 2, vouchers

    # The cursor the engine stored is the data's high-water mark (the largest updated_at).
    cursor = json.loads(_stored_cursor(connection_id))
    listed = brex_sandbox.expenses(account_id)
    assert cursor["hwm"] is not None
    assert cursor["hwm"][:19] <= max(e["updated_at"] for e in listed)[:19]

    # Memo write-back: each booked purchase's memo names its voucher, under an Idempotency-Key.
    def memos_written():
        writes = brex_sandbox.memo_writes(account_id)
        return writes if len({w.get("expense_id") for w in writes}) >= 3 else None

    writes = _wait("the memo of every booked purchase", memos_written)
    assert all(w.get("idempotency_key") for w in writes), writes
    numbers = {str(v["number"]) for v in vouchers}
    memos = {e["id"]: e.get("memo") or "" for e in listed}
    for unit_id in (ids[0], ids[1], ids[2]):
        assert any(f"[Booked as voucher {n} " in memos[unit_id] for n in numbers), memos[unit_id]
    units = tenant.api.get("/api/v1/source-exports?limit=100").json()["data"]
    assert sorted(u["source_export_ref"] for u in units) == sorted(ids)
    child_ids = {c["id"] for c in children["children"]}
    assert len(child_ids) == 2 and not child_ids & {u["source_export_ref"] for u in units}


def test_an_expense_changed_after_booking_is_a_correction_for_a_human_never_a_second_voucher(
        tenant, brex_sandbox, admin, worker):
    account = brex_sandbox.create_account(billing_currency="NOK")
    account_id = account["account_id"]
    [changed, voided] = brex_sandbox.add_expenses(account_id, [
        {"original_amount": 40000, "currency": "NOK", "billing_amount": 40000},
        {"original_amount": 7000, "currency": "NOK", "billing_amount": 7000},
    ])
    response = admin.put(
        f"/api/v1/admin/organizations/{tenant.organization_id}/sources/brex",
        json={"base_url": account["base_url"], "credentials": {"user_token": account["token"]},
              "target_system": "tripletex", "options": {**OPTIONS, "memo_write_back": False}})
    assert response.status_code == 200, response.text
    _wait("two vouchers", lambda: len(tenant.vouchers()) >= 2)

    # After booking: the amount settles differently, the other is voided.
    brex_sandbox.change_expense(account_id, changed, billing_amount=41500,
                                original_amount=41500)
    brex_sandbox.change_expense(account_id, voided, status="VOID")

    def units_with_notes():
        rows = tenant.api.get("/api/v1/source-exports?limit=100").json()["data"]
        details = [tenant.api.get(f"/api/v1/source-exports/{r['source_export_id']}").json()
                   for r in rows]
        noted = {d["source_export_ref"]: d for d in details
                 if any(v.get("note") for v in d["vouchers"])}
        return noted if len(noted) == 2 else None

    noted = _wait("both changes surfaced as corrections", units_with_notes)
    for _ in range(2):
        _poll()
        time.sleep(2)
    assert len(tenant.vouchers()) == 2  # never a second voucher
    for unit_id in (changed, voided):
        [item] = noted[unit_id]["vouchers"]
        assert "after it was booked" in item["note"] and "correct" in item["note"], item
        assert noted[unit_id]["last_error"]
        events = [e["kind"] for e in tenant.events(item["export_id"])]
        assert events.count("source_changed_after_booking") == 1, events
        assert tenant.get(item["export_id"])["status"] == "success"
