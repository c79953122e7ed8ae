"""End to end on real processes: API server, Celery worker processes, Redis, sandbox Tripletex."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

pytestmark = pytest.mark.timeout(240)


def _kinds(events):
    return [e["kind"] if e["kind"] != "status_changed" else f"->{e['to_status']}" for e in events]


def _assert_legal_path(events):
    allowed = {None: {"processing"}, "processing": {"success", "failed", "cancelled"},
               "failed": {"processing"}, "success": set(), "cancelled": set()}
    status = None
    for event in events:
        if event["to_status"] is not None:
            assert event["to_status"] in allowed[status], events
            status = event["to_status"]
    return status


def test_create_to_success_with_reference_and_the_whole_story(tenant, worker):
    expense_id = tenant.add_expense("1250.00", account="6800", vat_code="1")
    export_id = tenant.export(expense_id)
    export = tenant.wait_for(export_id)
    assert export["status"] == "success", export
    assert export["external_reference"] and export["exported_at"] and export["attempts"] == 1

    [voucher] = tenant.vouchers_for(export_id)
    assert voucher["externalVoucherNumber"] == export_id
    postings = voucher["postings"]
    assert sum(Decimal(str(p["amount"])) for p in postings) == 0
    assert min(p["row"] for p in postings if p["row"] != 0) >= 1
    # VAT was given as a VAT code on a gross amount: the target split it once (row 0), and no
    # separate VAT row was posted on top of it.
    vat_rows = [p for p in postings if p["accountNumber"] == "2710"]
    assert len(vat_rows) == 1 and Decimal(str(vat_rows[0]["amount"])) == Decimal("250.00")

    events = tenant.events(export_id)
    assert _kinds(events) == ["created", "queued", "started", "posting_started",
                              "posted_to_target", "->success"]
    assert _assert_legal_path(events) == "success"
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert events[-1]["celery_task_id"] and events[-1]["attempt"] == 1


def test_receipt_is_attached_to_the_posted_voucher(tenant, worker):
    expense_id = tenant.add_expense("300.00", account="7140", vat_code=None)
    # Receipts come with ingested expenses (Findity, demo seed); attach one directly here.
    from shared.db.models import Expense
    from shared.db.session import session_scope

    with session_scope() as session:
        expense = session.get(Expense, expense_id)
        expense.receipt_filename = "receipt.pdf"
        expense.receipt_content_type = "application/pdf"
        expense.receipt_data = b"%PDF-1.4\n%test receipt\n%%EOF\n"
    export_id = tenant.export(expense_id)
    assert tenant.wait_for(export_id)["status"] == "success"
    [voucher] = tenant.vouchers_for(export_id)
    assert [(a["filename"], a["contentType"]) for a in voucher["attachments"]] == [
        ("receipt.pdf", "application/pdf")]
    assert "receipt_attached" in _kinds(tenant.events(export_id))


def test_batch_of_200_all_succeed_once(tenant, worker):
    expense_ids = [tenant.add_expense(f"{100 + i}.50", account="7140", vat_code=None)
                   for i in range(200)]
    response = tenant.api.post("/api/v1/accounting-exports/batch",
                               json={"expense_ids": expense_ids, "target_system": "tripletex"})
    assert response.status_code == 202, response.text
    batch_id = response.json()["batch_id"]
    deadline = time.monotonic() + 180
    while True:
        progress = tenant.api.get(f"/api/v1/accounting-exports/batch/{batch_id}").json()
        if progress["done"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert progress["counts"]["success"] == 200, progress
    vouchers = tenant.vouchers()
    numbers = [v["externalVoucherNumber"] for v in vouchers]
    assert len(numbers) == 200 and len(set(numbers)) == 200
    total = sum(Decimal(str(p["amount"])) for v in vouchers for p in v["postings"]
                if p["accountNumber"] == "7140")
    assert total == sum(Decimal(f"{100 + i}.50") for i in range(200))


def test_503s_then_success_with_attempts_recorded(tenant, worker):
    tenant.sandbox.set_faults(tenant.company_id, fail_next=[
        {"status": 503, "count": 2, "method": "POST", "path_contains": "/ledger/voucher"}])
    export_id = tenant.export(tenant.add_expense("99.00", account="7140", vat_code=None))
    export = tenant.wait_for(export_id)
    assert export["status"] == "success" and export["attempts"] == 3
    events = tenant.events(export_id)
    retries = [e for e in events if e["kind"] == "retry_scheduled" and e["data"]["counted"]]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert all(e["data"]["status"] == 503 for e in retries)
    # A 503 to a POST proves nothing (a gateway may answer it while the target commits): each
    # one is followed by a lookup that is trusted only after the target's search delay; the
    # waits for it cost no attempt.
    assert [e["kind"] for e in events].count("post_outcome_unknown") == 2
    assert [e["kind"] for e in events].count("post_not_booked") == 2
    assert len(tenant.vouchers_for(export_id)) == 1


def test_validation_error_fails_with_a_readable_message(tenant, worker):
    # 2400 is a supplier sub-ledger account: Tripletex refuses a posting without a supplier.
    export_id = tenant.export(tenant.add_expense("500.00", account="6800", vat_code=None,
                                                 credit_account="2400"))
    export = tenant.wait_for(export_id)
    assert export["status"] == "failed" and export["attempts"] == 1
    assert "2400" in export["error_message"] or "supplier" in export["error_message"].lower()
    assert "Traceback" not in export["error_message"]
    assert tenant.vouchers_for(export_id) == []


def test_tripletex_422_fails_with_its_validation_message_in_plain_words(tenant, worker):
    tenant.sandbox.set_faults(tenant.company_id, fail_next=[
        {"status": 422, "count": 1, "method": "POST", "path_contains": "/ledger/voucher"}])
    export_id = tenant.export(tenant.add_expense("60.00", account="7140", vat_code=None))
    export = tenant.wait_for(export_id)
    assert export["status"] == "failed" and export["attempts"] == 1
    assert export["error_message"].startswith("Tripletex rejected the voucher")
    assert tenant.vouchers_for(export_id) == []


def test_unknown_account_fails_before_posting(tenant, worker):
    export_id = tenant.export(tenant.add_expense("80.00", account="9999", vat_code=None))
    export = tenant.wait_for(export_id)
    assert export["status"] == "failed"
    assert "9999" in export["error_message"]
    assert "posting_started" not in _kinds(tenant.events(export_id))


def test_cancel_while_waiting_for_retry_is_never_posted(tenant, worker):
    tenant.sandbox.set_faults(tenant.company_id, fail_next=[
        {"status": 429, "count": 1, "method": "POST", "path_contains": "/ledger/voucher",
         "retry_after": 30}])
    export_id = tenant.export(tenant.add_expense("42.00", account="7140", vat_code=None))
    deadline = time.monotonic() + 30
    while "retry_scheduled" not in _kinds(tenant.events(export_id)):
        assert time.monotonic() < deadline, tenant.events(export_id)
        time.sleep(0.05)
    response = tenant.api.delete(f"/api/v1/accounting-exports/{export_id}")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert {"deleted": True, "export_id": export_id, "status": "cancelled",
            "error_message": None}.items() <= cancelled.items()
    time.sleep(5)  # longer than the longest retry delay in the test settings
    assert tenant.get(export_id)["status"] == "cancelled"
    assert tenant.vouchers_for(export_id) == []
    assert _assert_legal_path(tenant.events(export_id)) == "cancelled"


def test_cancel_after_posting_is_refused(tenant, worker):
    export_id = tenant.export(tenant.add_expense("42.00", account="7140", vat_code=None))
    assert tenant.wait_for(export_id)["status"] == "success"
    response = tenant.api.delete(f"/api/v1/accounting-exports/{export_id}")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_cancellable"


def test_illegal_transition_via_put_is_409(tenant, worker):
    export_id = tenant.export(tenant.add_expense("10.00", account="7140", vat_code=None))
    assert tenant.wait_for(export_id)["status"] == "success"
    response = tenant.api.put(f"/api/v1/accounting-exports/{export_id}",
                              json={"status": "failed", "error_message": "x"})
    assert response.status_code == 409
    assert "cannot become failed" in response.json()["error"]["message"]


def test_worker_killed_after_tripletex_accepted_books_exactly_once(tenant, workers):
    """SIGKILL between "the target stored the voucher" and "we recorded it"."""
    workers.stop_all()
    doomed = workers.start()
    tenant.sandbox.set_faults(tenant.company_id, post_hold_ms=30_000)
    export_id = tenant.export(tenant.add_expense("777.00", account="7140", vat_code=None))
    deadline = time.monotonic() + 30
    while not tenant.vouchers_for(export_id):
        assert time.monotonic() < deadline, "the sandbox never received the voucher"
        time.sleep(0.05)
    workers.kill(doomed)
    tenant.sandbox.clear_faults(tenant.company_id)
    workers.start()  # the message comes back after the visibility timeout
    export = tenant.wait_for(export_id, timeout=90)
    assert export["status"] == "success", tenant.events(export_id)
    assert len(tenant.vouchers_for(export_id)) == 1
    kinds = _kinds(tenant.events(export_id))
    assert "found_existing_voucher" in kinds and kinds.count("posting_started") == 1


def _samples(text: str, name: str) -> dict[str, float]:
    """Prometheus exposition lines of one metric: {label text: value}."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            found[labels[len(name):]] = float(value)
    return found


def test_metrics_of_the_worker_and_the_api_after_an_export(tenant, worker, workers, api_server):
    import httpx

    export_id = tenant.export(tenant.add_expense("80.00", account="7140", vat_code=None))
    assert tenant.wait_for(export_id)["status"] == "success"

    finished = posting = 0.0
    for process in workers.running:
        text = httpx.get(f"http://127.0.0.1:{workers.metrics_ports[process.name]}/metrics",
                         timeout=10).text
        finished += sum(v for labels, v in _samples(text, "aic_exports_finished_total").items()
                        if 'outcome="success"' in labels and 'target="tripletex"' in labels)
        posting += sum(_samples(text, "aic_posting_seconds_count").values())
    assert finished >= 1 and posting >= 1

    api = httpx.get(f"{api_server}/metrics", timeout=10).text
    assert sum(v for labels, v in _samples(api, "aic_exports_created_total").items()
               if 'target="tripletex"' in labels) >= 1
    assert _samples(api, "aic_broker_up") == {"": 1.0}
    assert '{queue="exports"}' in _samples(api, "aic_queue_depth")


def test_the_api_request_id_follows_the_export_into_every_worker_line(tenant, worker):
    import uuid

    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    response = tenant.api.post(
        "/api/v1/accounting-exports", headers={"X-Request-ID": request_id},
        json={"expense_id": tenant.add_expense("64.00", account="7140", vat_code=None),
              "target_system": "tripletex"})
    assert response.status_code == 202 and response.headers["X-Request-ID"] == request_id
    export_id = response.json()["export_id"]
    assert tenant.wait_for(export_id)["status"] == "success"
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in worker.log_path.read_text(errors="replace").splitlines()
                 if request_id in line]
        if any("export posted" in line or "succeeded" in line for line in lines) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # The task's own lines (started, the HTTP exchanges, the outcome) all carry both ids.
    assert len(lines) >= 2, lines
    assert all(f"export_id={export_id}" in line for line in lines), lines
