"""Exports to BillDiary end to end on real processes: API server, Celery worker processes, Redis,
the SQL database and the BillDiary sandbox server, with its fault knobs.

BillDiary has no idempotency key and one answer that lies (a 500 "Could not load expense" after
the expense was stored): every path here must leave exactly one BillDiary expense per export,
found by its ``ref_no`` (our export id).
"""

from __future__ import annotations

import time
from datetime import date
import httpx
import pytest

from tests.fixtures.billdiary_sandbox import BillDiarySandbox
from tests.fixtures.tenants import BillDiaryTenant, new_billdiary_tenant

pytestmark = pytest.mark.timeout(240)
PDF = b"%PDF-1.4\n%test receipt\n%%EOF\n"


@pytest.fixture
def bd_tenant(admin: httpx.Client, api_server: str,
              billdiary_sandbox: BillDiarySandbox) -> BillDiaryTenant:
    tenant = new_billdiary_tenant(admin, api_server, billdiary_sandbox, "ERP AS")
    yield tenant
    tenant.api.close()


def _kinds(events: list[dict]) -> list[str]:
    return [e["kind"] if e["kind"] != "status_changed" else f"->{e['to_status']}" for e in events]


def test_an_export_becomes_one_erp_expense_with_its_id(bd_tenant, worker):
    expense_id = bd_tenant.add_expense("1250.00", account="7140", vat_code=None)
    export_id = bd_tenant.export(expense_id)
    export = bd_tenant.wait_for(export_id)
    assert export["status"] == "success", export
    [stored] = bd_tenant.expenses_for(export_id)
    assert export["external_reference"] == f"BD-{stored['id']}"
    assert stored["final_total"] == "1250.0000" and stored["payment_status"] == "due"
    assert export_id in stored["additional_notes"]
    assert _kinds(bd_tenant.events(export_id)) == [
        "created", "queued", "started", "posting_started", "posted_to_target", "->success"]


def test_could_not_load_expense_after_the_save_leaves_exactly_one_expense(bd_tenant, worker):
    bd_tenant.set_faults(save_then_fail=1)
    export_id = bd_tenant.export(bd_tenant.add_expense("480.00", account="7140", vat_code=None))
    export = bd_tenant.wait_for(export_id)
    assert export["status"] == "success", export
    [stored] = bd_tenant.expenses_for(export_id)
    assert export["external_reference"] == f"BD-{stored['id']}"
    kinds = _kinds(bd_tenant.events(export_id))
    assert "post_outcome_unknown" in kinds and "found_existing_voucher" in kinds
    assert bd_tenant.sandbox.request_counts(bd_tenant.business["business_id"])[
        "POST /expenses"] == 1


def test_an_answer_held_past_the_timeout_after_the_save_leaves_exactly_one(bd_tenant, worker):
    # AIC_HTTP_READ_TIMEOUT is 5 s in the tests: the answer comes after the worker gave up.
    bd_tenant.set_faults(save_then_hold_ms=6500)
    export_id = bd_tenant.export(bd_tenant.add_expense("77.00", account="6800", vat_code=None))
    export = bd_tenant.wait_for(export_id, timeout=90)
    assert export["status"] == "success", export
    assert len(bd_tenant.expenses_for(export_id)) == 1
    assert "found_existing_voucher" in _kinds(bd_tenant.events(export_id))


def test_a_connection_dropped_after_the_save_leaves_exactly_one(bd_tenant, worker):
    bd_tenant.set_faults(save_then_drop=1)
    export_id = bd_tenant.export(bd_tenant.add_expense("15.00", account="6800", vat_code=None))
    assert bd_tenant.wait_for(export_id)["status"] == "success"
    assert len(bd_tenant.expenses_for(export_id)) == 1


def test_a_422_fails_the_export_with_the_erp_field_messages_in_plain_words(bd_tenant, worker):
    # The VAT code maps ("same number") to a tax rate id the business does not have.
    export_id = bd_tenant.export(bd_tenant.add_expense("100.00", account="7140",
                                                       vat_code="999999"))
    export = bd_tenant.wait_for(export_id)
    assert export["status"] == "failed", export
    assert "The selected tax id is invalid." in export["error_message"]
    assert "map the VAT code to an existing BillDiary tax rate id" in export["error_message"]
    assert bd_tenant.expenses_for(export_id) == []


def test_an_inactive_subscription_parks_exports_until_it_is_renewed(bd_tenant, worker):
    bid = bd_tenant.business["business_id"]
    bd_tenant.sandbox.update_settings(bid, subscription_active=False)
    export_id = bd_tenant.export(bd_tenant.add_expense("60.00", account="7140", vat_code=None))
    deadline = time.monotonic() + 60
    while True:
        export = bd_tenant.get(export_id)
        if "subscription is inactive" in (export["error_message"] or ""):
            break
        assert time.monotonic() < deadline, bd_tenant.events(export_id)
        time.sleep(0.2)
    time.sleep(4)  # several looks while parked: none uses up an attempt, none fails the export
    export = bd_tenant.get(export_id)
    assert export["status"] == "processing" and export["attempts"] <= 1, export
    bd_tenant.sandbox.update_settings(bid, subscription_active=True)
    export = bd_tenant.wait_for(export_id, timeout=60)
    assert export["status"] == "success", export
    assert len(bd_tenant.expenses_for(export_id)) == 1


def _with_receipt(expense_id: str) -> None:
    from shared.db.models import Expense
    from shared.db.session import session_scope

    with session_scope() as session:
        expense = session.get(Expense, expense_id)
        expense.receipt_filename = "receipt.pdf"
        expense.receipt_content_type = "application/pdf"
        expense.receipt_data = PDF


def test_a_receipt_is_attached_as_the_expense_document(bd_tenant, worker):
    expense_id = bd_tenant.add_expense("300.00", account="7140", vat_code=None)
    _with_receipt(expense_id)
    export_id = bd_tenant.export(expense_id)
    assert bd_tenant.wait_for(export_id)["status"] == "success"
    [stored] = bd_tenant.expenses_for(export_id)
    assert [d["outcome"] for d in stored["documents"]] == ["stored"]
    assert "receipt_attached" in _kinds(bd_tenant.events(export_id))


def test_a_receipt_the_erp_silently_drops_is_reported_not_attached(bd_tenant, worker):
    bd_tenant.set_faults(drop_documents=1)
    expense_id = bd_tenant.add_expense("300.00", account="7140", vat_code=None)
    _with_receipt(expense_id)
    export_id = bd_tenant.export(expense_id)
    assert bd_tenant.wait_for(export_id)["status"] == "success"
    [stored] = bd_tenant.expenses_for(export_id)
    assert stored["document"] is None
    events = bd_tenant.events(export_id)
    [rejected] = [e for e in events if e["kind"] == "receipt_rejected"]
    assert "NOT attached" in rejected["reason"]
    assert "receipt_attached" not in _kinds(events)


def test_a_stored_date_that_differs_from_ours_keeps_the_export_waiting_loudly(
        admin, api_server, billdiary_sandbox, worker):
    # The business reads m/d/Y; the connection says d/m/Y. 18 March is written "18/03/2026"
    # and stored as another date (PHP rolls month 18 over into the next year): the read-back
    # catches it. The expense exists, so the export must not fail; it waits, saying why.
    business = billdiary_sandbox.create_business(name="US ERP", settings={"date_format": "m/d/Y"})
    tenant = new_billdiary_tenant(admin, api_server, billdiary_sandbox, "US ERP AS",
                                  business=business, options={"date_format": "d/m/Y"})
    try:
        expense_id = tenant.add_expense("40.00", account="7140", vat_code=None,
                                        expense_date=date(2026, 3, 18))
        export_id = tenant.export(expense_id)
        deadline = time.monotonic() + 60
        while "BillDiary stored expense" not in (tenant.get(export_id)["error_message"] or ""):
            assert time.monotonic() < deadline, tenant.events(export_id)
            time.sleep(0.2)
        export = tenant.get(export_id)
        assert export["status"] == "processing" and export["external_reference"] is None
        assert "instead of 2026-03-18" in export["error_message"]
        assert "fix the options" in export["error_message"]
        [stored] = tenant.expenses_for(export_id)
        assert stored["transaction_date"].startswith("2027-06-03")
    finally:
        tenant.api.close()
