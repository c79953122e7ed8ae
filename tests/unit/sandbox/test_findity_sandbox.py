"""The Findity sandbox behaves like Findity as the guide describes it.

Driven over raw HTTP (not through FindityClient), so these tests pin the sandbox's wire shapes
independently of the client's models. Webhooks go to a tiny HTTP receiver started here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from devstack.processes import free_port
from shared.integrations.findity import WebhookBody

# --- a webhook receiver ---------------------------------------------------------------------------


@dataclass
class Receiver:
    """Records every POST; answers ``status`` after ``delay`` seconds."""

    status: int = 200
    delay: float = 0.0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(state.delay)
            with state.lock:
                state.bodies.append(json.loads(body))
                state.in_flight -= 1
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/findity"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# --- raw HTTP helpers -----------------------------------------------------------------------------


def _token(org: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(org["token_url"], data={
        "grant_type": "client_credentials", "client_id": org["client_id"],
        "client_secret": org["client_secret"]})
    assert response.status_code == 200, response.text
    return response.json()


def _api(org: dict[str, Any], token: str | None = None) -> httpx.Client:
    token = token or _token(org)["access_token"]
    prefix = f"/v1/connect/organizations/{org['organization_id']}"
    return httpx.Client(base_url=org["base_url"] + prefix,
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _package(org: dict[str, Any], export_id: str) -> dict[str, Any]:
    with _api(org) as api:
        response = api.get(f"/exports/{export_id}/export")
    assert response.status_code == 200, response.text
    return json.loads(response.content, parse_float=Decimal)


def _rows(voucher: dict[str, Any]) -> list[tuple]:
    """(account, amount, taxAmount, taxCode, names an expense) per row."""
    return [(r["account"], r["amount"], r["taxAmount"], r["taxCode"],
             r["expenseRecordId"] is not None) for r in voucher["voucherRows"]]


def _report(owner: str, *expenses: dict[str, Any]) -> dict[str, Any]:
    return {"owner_name": owner, "expenses": list(expenses)}


FLIGHT = {"text": "Flight", "account": "7140", "amount": "1000.00", "vat_rate": 0,
          "cost_center": "100", "project": "P-17"}
OFFICE = {"text": "Office supplies", "account": "6800", "amount": "1250.00", "vat_rate": 25,
          "cost_center": "100"}
PAPER = {"text": "Paper", "account": "6800", "amount": "125.00", "vat_rate": 25,
         "cost_center": "100"}
TONER = {"text": "Toner", "account": "6800", "amount": "250.00", "vat_rate": 25,
         "cost_center": "200"}
TAXI = {"text": "Taxi", "account": "7140", "amount": "112.00", "vat_rate": 12}


# --- webhooks -------------------------------------------------------------------------------------


def test_webhook_copies_are_delivered_concurrently_after_the_response(findity_sandbox, receiver):
    receiver.delay = 0.5
    org = findity_sandbox.create_organization(webhook_url=receiver.url,
                                              external_organization_id="My1234")
    started = time.monotonic()
    created = findity_sandbox.create_export(org["organization_id"], webhook_copies=3)
    assert time.monotonic() - started < 0.4, "create_export waited for the webhook"

    state = findity_sandbox.wait_for_webhooks(org["organization_id"], created["export_id"])

    assert [d["status_code"] for d in state["webhook"]["deliveries"]] == [200, 200, 200]
    assert receiver.max_in_flight == 3
    assert state["webhook"]["failed"] is False
    assert {r["state"] for r in state["reports"]} == {"TRANSFER"}
    expected = {"exportId": created["export_id"], "numberOfVouchers": 2, "numberOfReports": 2,
                "organizationId": org["organization_id"], "externalOrganizationId": "My1234",
                "clientApplicationId": created["webhook_body"]["clientApplicationId"]}
    assert receiver.bodies == [expected] * 3
    assert WebhookBody.model_validate(receiver.bodies[0]).export_id == created["export_id"]


def test_a_webhook_answered_with_anything_but_200_returns_the_reports(findity_sandbox, receiver):
    receiver.status = 202  # accepted is not good enough for Findity
    org = findity_sandbox.create_organization(webhook_url=receiver.url)
    created = findity_sandbox.create_export(org["organization_id"])
    state = findity_sandbox.wait_for_webhooks(org["organization_id"], created["export_id"])
    assert state["webhook"]["deliveries"][0]["status_code"] == 202
    assert state["webhook"]["failed"] is True
    assert state["reports_returned_to_ready"] is True
    assert {r["state"] for r in state["reports"]} == {"READY_TO_SEND"}


def test_an_unreachable_webhook_is_recorded_as_failed(findity_sandbox):
    org = findity_sandbox.create_organization(webhook_url=f"http://127.0.0.1:{free_port()}/hook")
    created = findity_sandbox.create_export(org["organization_id"])
    delivery = findity_sandbox.wait_for_webhooks(
        org["organization_id"], created["export_id"])["webhook"]["deliveries"][0]
    assert delivery["status_code"] is None and delivery["error"] == "ConnectError"


def test_a_lost_webhook_never_arrives_but_the_export_can_be_polled(findity_sandbox, receiver):
    org = findity_sandbox.create_organization(webhook_url=receiver.url)
    created = findity_sandbox.create_export(org["organization_id"], lose_webhook=True)
    # A control export with a delivered webhook, created after the lost one: once it arrived,
    # the lost one would have too.
    findity_sandbox.create_export(org["organization_id"])
    deadline = time.monotonic() + 5
    while not receiver.bodies and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    assert [b["exportId"] for b in receiver.bodies] != []
    assert created["export_id"] not in [b["exportId"] for b in receiver.bodies]
    state = findity_sandbox.export_state(org["organization_id"], created["export_id"])
    assert state["webhook"]["lost"] is True and state["webhook"]["deliveries"] == []
    with _api(org) as api:
        listed = api.get("/exports", params={"status": "UNPROCESSED"}).json()
    assert created["export_id"] in [e["id"] for e in listed["data"]]


# --- updatestatus ---------------------------------------------------------------------------------


def _update(org: dict[str, Any], export_id: str, body: Any) -> httpx.Response:
    with _api(org) as api:
        return api.put(f"/exports/{export_id}/updatestatus", json=body)


def test_success_for_every_voucher_processes_the_export(findity_sandbox):
    org = findity_sandbox.create_organization()
    created = findity_sandbox.create_export(org["organization_id"])
    first, second = created["voucher_ids"]

    assert _update(org, created["export_id"], {"voucherUpdates": [
        {"id": first, "status": "SUCCESS", "voucherNumber": 1}]}).status_code == 200
    partial = findity_sandbox.export_state(org["organization_id"], created["export_id"])
    assert partial["status"] == "UNPROCESSED"
    assert [r["state"] for r in partial["reports"]] == ["SENT", "TRANSFER"]

    response = _update(org, created["export_id"], {"voucherUpdates": [
        {"id": second, "status": "SUCCESS", "bookingDate": "2024-11-21T08:29:00Z",
         "voucherNumber": 2, "informationText": "ok"}]})
    assert response.status_code == 200 and response.json()["status"] == "PROCESSED"
    state = findity_sandbox.export_state(org["organization_id"], created["export_id"])
    assert [r["state"] for r in state["reports"]] == ["SENT", "SENT"]
    with _api(org) as api:
        assert api.get("/exports", params={"status": "UNPROCESSED"}).json()["meta"]["total"] == 0
        assert api.get("/exports", params={"status": "PROCESSED"}).json()["meta"]["total"] == 1


def test_a_failed_voucher_fails_the_export_and_returns_its_reports(findity_sandbox):
    org = findity_sandbox.create_organization()
    created = findity_sandbox.create_export(org["organization_id"])
    first, second = created["voucher_ids"]
    response = _update(org, created["export_id"], {"voucherUpdates": [
        {"id": first, "status": "SUCCESS"},
        {"id": second, "status": "FAILED", "errorText": "account 7140 does not exist"}]})
    assert response.status_code == 200
    state = findity_sandbox.export_state(org["organization_id"], created["export_id"])
    assert state["status"] == "FAILED"
    assert [r["state"] for r in state["reports"]] == ["SENT", "READY_TO_SEND"]
    assert state["voucher_results"][second] == {"status": "FAILED",
                                                "errorText": "account 7140 does not exist"}


def test_a_voucher_number_makes_success_final(findity_sandbox):
    org = findity_sandbox.create_organization()
    created = findity_sandbox.create_export(org["organization_id"])
    first, second = created["voucher_ids"]
    without_number = {"voucherUpdates": [{"id": second, "status": "SUCCESS"}]}
    assert _update(org, created["export_id"], without_number).status_code == 200
    assert _update(org, created["export_id"], without_number).status_code == 200  # allowed

    numbered = {"voucherUpdates": [{"id": first, "status": "SUCCESS", "voucherNumber": 377}]}
    assert _update(org, created["export_id"], numbered).status_code == 200
    again = _update(org, created["export_id"], numbered)
    assert again.status_code == 409
    assert again.json()["code"] == "VOUCHER_ALREADY_PROCESSED"
    assert "377" in again.json()["message"]
    recorded = findity_sandbox.status_updates(org["organization_id"], created["export_id"])
    assert [r["response_status"] for r in recorded] == [200, 200, 200, 409]
    assert recorded[-1]["body"] == numbered


@pytest.mark.parametrize(("body", "hint"), [
    ([], "JSON object"),
    ({"updates": []}, "unknown field"),
    ({"voucherUpdates": []}, "non-empty list"),
    ({"voucherUpdates": [{"id": "{first}", "status": "OK"}]}, "SUCCESS or FAILED"),
    ({"voucherUpdates": [{"id": "{first}", "status": "FAILED"}]}, "errorText"),
    ({"voucherUpdates": [{"id": "{first}", "status": "FAILED", "errorText": " "}]}, "errorText"),
    ({"voucherUpdates": [{"id": "{first}", "status": "SUCCESS",
                          "bookingDate": "2024-11-21T08:29:00"}]}, "time zone"),
    ({"voucherUpdates": [{"id": "{first}", "status": "SUCCESS", "voucherNumber": "377"}]},
     "voucherNumber must be an integer"),
    ({"voucherUpdates": [{"id": "{first}", "status": "SUCCESS", "errorText": "x"}]},
     "unknown field"),
    ({"voucherUpdates": [{"id": "nope", "status": "SUCCESS"}]}, "not part of export"),
    ({"voucherUpdates": [{"id": "{first}", "status": "SUCCESS"},
                         {"id": "{first}", "status": "FAILED", "errorText": "x"}]}, "twice"),
])
def test_updatestatus_rejects_bodies_of_the_wrong_shape(findity_sandbox, body, hint):
    org = findity_sandbox.create_organization()
    created = findity_sandbox.create_export(org["organization_id"])
    body = json.loads(json.dumps(body).replace("{first}", created["voucher_ids"][0]))
    response = _update(org, created["export_id"], body)
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert hint in response.json()["message"]
    state = findity_sandbox.export_state(org["organization_id"], created["export_id"])
    assert state["status"] == "UNPROCESSED" and state["voucher_results"] == {}
    assert findity_sandbox.status_updates(org["organization_id"], created["export_id"])[0][
        "body"] == body


# --- authentication -------------------------------------------------------------------------------


def test_token_endpoint_grants(findity_sandbox):
    org = findity_sandbox.create_organization()
    token = _token(org)
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600

    wrong = httpx.post(org["token_url"], data={"grant_type": "client_credentials",
                                               "client_id": org["client_id"], "client_secret": "x"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    as_json = httpx.post(org["token_url"], json={"grant_type": "client_credentials",
                                                 "client_id": org["client_id"],
                                                 "client_secret": org["client_secret"]})
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"

    refresh = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]}
    renewed = httpx.post(org["token_url"], data=refresh)
    assert renewed.status_code == 200
    with _api(org, renewed.json()["access_token"]) as api:
        assert api.get("/exports").status_code == 200
    reused = httpx.post(org["token_url"], data=refresh)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"


def test_tokens_expire(findity_sandbox):
    org = findity_sandbox.create_organization(token_expires_in=1)
    with _api(org) as api:
        assert api.get("/exports").status_code == 200
        time.sleep(1.1)
        expired = api.get("/exports")
    assert expired.status_code == 401 and expired.json()["code"] == "UNAUTHORIZED"


def test_every_connect_call_needs_the_organization_s_token(findity_sandbox):
    org = findity_sandbox.create_organization()
    other = findity_sandbox.create_organization()
    created = findity_sandbox.create_export(org["organization_id"])
    base = f"{org['base_url']}/v1/connect/organizations/{org['organization_id']}/exports"
    for url in (base, f"{base}/{created['export_id']}", f"{base}/{created['export_id']}/export"):
        anonymous = httpx.get(url)
        assert anonymous.status_code == 401 and anonymous.json()["code"] == "UNAUTHORIZED"
        other_token = _token(other)["access_token"]
        foreign = httpx.get(url, headers={"Authorization": f"Bearer {other_token}"})
        assert foreign.status_code == 404 and foreign.json()["code"] == "ORGANIZATION_NOT_FOUND"
    with _api(other) as api:
        # The export exists, but not in this organization.
        response = api.get(f"/exports/{created['export_id']}")
    assert response.status_code == 404 and response.json()["code"] == "EXPORT_NOT_FOUND"


def test_an_organization_without_recipient_answers_recipient_not_found(findity_sandbox):
    org = findity_sandbox.create_organization()
    findity_sandbox.update_organization(org["organization_id"], recipient_configured=False)
    with _api(org) as api:
        response = api.get("/exports")
    assert response.status_code == 404 and response.json()["code"] == "RECIPIENT_NOT_FOUND"


# --- listing --------------------------------------------------------------------------------------


def test_list_envelope_and_paging_parameters(findity_sandbox):
    org = findity_sandbox.create_organization()
    ids = [findity_sandbox.create_export(org["organization_id"])["export_id"] for _ in range(3)]
    with _api(org) as api:
        page = api.get("/exports", params={"status": "UNPROCESSED", "offset": 1, "max": 1}).json()
        assert page["meta"] == {"count": 1, "total": 3}
        assert [e["id"] for e in page["data"]] == ids[1:2]
        for params in ({"max": 0}, {"max": 101}, {"offset": -1}, {"status": "DONE"}):
            bad = api.get("/exports", params=params)
            assert bad.status_code == 400 and bad.json()["code"] == "INVALID_PARAMETER", params


# --- formats --------------------------------------------------------------------------------------


def test_report_per_expense_emits_a_row_set_per_expense(findity_sandbox):
    org = findity_sandbox.create_organization(verification_lists_type="REPORT_PER_EXPENSE")
    created = findity_sandbox.create_export(
        org["organization_id"], reports=[_report("Kari Nordmann", FLIGHT, OFFICE)])
    voucher = _package(org, created["export_id"])["vouchers"][0]
    assert _rows(voucher) == [
        ("7140", Decimal("1000.00"), Decimal("0.00"), None, True),
        ("2930", Decimal("-1000.00"), Decimal("0.00"), None, True),
        ("6800", Decimal("1000.00"), Decimal("250.00"), "1", True),
        ("2710", Decimal("250.00"), Decimal("0.00"), "1", True),
        ("2930", Decimal("-1250.00"), Decimal("0.00"), None, True),
    ]
    assert voucher["voucherRows"][0]["dimension"] == {"costCenter": "100", "project": "P-17"}
    assert voucher["voucherRows"][3]["dimension"] == {}


def test_report_per_account_aggregates_per_account_and_tax_code(findity_sandbox):
    org = findity_sandbox.create_organization(verification_lists_type="REPORT_PER_ACCOUNT")
    created = findity_sandbox.create_export(
        org["organization_id"], reports=[_report("Kari Nordmann", OFFICE, PAPER, TAXI, TONER)])
    voucher = _package(org, created["export_id"])["vouchers"][0]
    assert _rows(voucher) == [
        ("6800", Decimal("1100.00"), Decimal("275.00"), "1", False),
        ("2710", Decimal("325.00"), Decimal("0.00"), "1", False),
        ("7140", Decimal("100.00"), Decimal("12.00"), "13", True),
        ("2710", Decimal("12.00"), Decimal("0.00"), "13", True),
        # Same account and tax code, another cost centre: kept apart.
        ("6800", Decimal("200.00"), Decimal("50.00"), "1", True),
        ("2930", Decimal("-1737.00"), Decimal("0.00"), None, False),
    ]
    assert voucher["voucherRows"][4]["dimension"] == {"costCenter": "200"}


def test_user_formats_combine_a_user_s_reports(findity_sandbox):
    reports = [_report("Kari Nordmann", OFFICE), _report("Ola Nordmann", TAXI),
               _report("Kari Nordmann", PAPER)]
    for format_, rows_of_kari in (("USER_PER_EXPENSE", 6), ("USER_PER_ACCOUNT", 3)):
        org = findity_sandbox.create_organization(verification_lists_type=format_)
        created = findity_sandbox.create_export(org["organization_id"], reports=reports)
        kari, ola = _package(org, created["export_id"])["vouchers"]
        assert kari["ownerName"] == "Kari Nordmann" and ola["ownerName"] == "Ola Nordmann"
        assert kari["expenseReportId"] is None  # spans two reports
        assert ola["expenseReportId"] == created["report_ids"][1]
        assert len(kari["voucherRows"]) == rows_of_kari
        assert sum(r["amount"] for r in kari["voucherRows"]) == 0


def test_expense_format_makes_a_voucher_per_expense(findity_sandbox):
    org = findity_sandbox.create_organization(verification_lists_type="EXPENSE")
    created = findity_sandbox.create_export(
        org["organization_id"], reports=[_report("Kari Nordmann", FLIGHT, OFFICE)])
    vouchers = _package(org, created["export_id"])["vouchers"]
    assert [v["text"] for v in vouchers] == ["Flight", "Office supplies"]
    assert [len(v["voucherRows"]) for v in vouchers] == [2, 3]
    assert {v["expenseReportId"] for v in vouchers} == {created["report_ids"][0]}


@pytest.mark.parametrize(("format_", "expected"), [
    ("REPORT_PER_REPORT_PAID", [[("1375.00", "r0")], [("112.00", "r1")], [("1000.00", "r2")]]),
    ("USER_PER_REPORT_PAID", [[("2375.00", None)], [("112.00", "r1")]]),
    ("REPORT_PER_EXPENSE_PAID", [[("1250.00", "r0"), ("125.00", "r0")], [("112.00", "r1")],
                                 [("1000.00", "r2")]]),
])
def test_payment_formats_carry_amounts_to_pay_and_no_account(findity_sandbox, format_, expected):
    org = findity_sandbox.create_organization(verification_lists_type=format_)
    reports = [_report("Kari Nordmann", OFFICE, PAPER), _report("Ola Nordmann", TAXI),
               _report("Kari Nordmann", FLIGHT)]
    created = findity_sandbox.create_export(org["organization_id"], reports=reports)
    report_ids = {f"r{i}": rid for i, rid in enumerate(created["report_ids"])}
    vouchers = _package(org, created["export_id"])["vouchers"]
    got = [[(str(r["amount"]), r["expenseReportId"]) for r in v["voucherRows"]] for v in vouchers]
    assert got == [[(amount, report_ids.get(ref)) for amount, ref in rows] for rows in expected]
    for voucher in vouchers:
        for row in voucher["voucherRows"]:
            assert set(row) == {"amount", "ownerId", "expenseReportId", "text"}
            assert row["ownerId"] == voucher["ownerId"]


# --- basis PDF, faults, control validation --------------------------------------------------------


def test_basis_pdf_is_a_well_formed_pdf(findity_sandbox):
    org = findity_sandbox.create_organization()
    created = findity_sandbox.create_export(org["organization_id"])
    voucher = _package(org, created["export_id"])["vouchers"][0]
    headers = {"Authorization": f"Bearer {_token(org)['access_token']}"}
    pdf = httpx.get(voucher["basisUrl"], params={"format": "pdf"}, headers=headers)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    body = pdf.content
    assert body.startswith(b"%PDF-1.4\n") and body.endswith(b"%%EOF\n")
    startxref = int(body.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    assert body[startxref:].startswith(b"xref\n")  # the cross-reference offset is right
    assert voucher["id"].encode() in body
    assert httpx.get(voucher["basisUrl"], headers=headers).status_code == 400
    other = findity_sandbox.create_organization()
    foreign = {"Authorization": f"Bearer {_token(other)['access_token']}"}
    assert httpx.get(voucher["basisUrl"], params={"format": "pdf"},
                     headers=foreign).status_code == 404


def test_fail_next_is_consumed_and_filtered(findity_sandbox):
    org = findity_sandbox.create_organization()
    findity_sandbox.set_faults(org["organization_id"], fail_next=[
        {"status": 500, "count": 2, "path_contains": "/exports", "method": "GET"}])
    with _api(org) as api:
        assert api.put("/exports/x/updatestatus", json={}).status_code == 404  # method differs
        statuses = [api.get("/exports").status_code for _ in range(3)]
    assert statuses == [500, 500, 200]


def test_global_faults_reach_every_organization(findity_sandbox):
    org = findity_sandbox.create_organization()
    with _api(org) as api:
        findity_sandbox.set_faults(error_rate=1.0)
        try:
            failed = api.get("/exports")
        finally:
            findity_sandbox.clear_faults()
        assert failed.status_code == 503 and failed.json()["code"] == "SERVICE_UNAVAILABLE"
        assert api.get("/exports").status_code == 200


def test_latency_is_added_without_blocking_other_requests(findity_sandbox):
    slow = findity_sandbox.create_organization()
    fast = findity_sandbox.create_organization()
    findity_sandbox.set_faults(slow["organization_id"], latency_ms=800)
    results: dict[str, float] = {}

    def timed(name: str, org: dict[str, Any]) -> None:
        with _api(org) as api:
            started = time.monotonic()
            assert api.get("/exports").status_code == 200
            results[name] = time.monotonic() - started

    slow_thread = threading.Thread(target=timed, args=("slow", slow))
    slow_thread.start()
    time.sleep(0.1)
    timed("fast", fast)
    slow_thread.join()
    assert results["slow"] >= 0.8
    assert results["fast"] < 0.5


@pytest.mark.parametrize("body", [
    {"reports": [], "generate": {"reports": 1}},
    {"reports": [{"owner_name": "K",
                  "expenses": [{"text": "x", "account": "1", "amount": "1.005"}]}]},
    {"reports": [{"owner_name": "K", "expenses": [{"text": "x", "account": "1", "amount": "10",
                                                   "vat_rate": 8}]}]},
])
def test_control_api_rejects_invalid_exports(findity_sandbox, body):
    org = findity_sandbox.create_organization()
    response = findity_sandbox.control.post(
        f"/_sandbox/organizations/{org['organization_id']}/exports", json=body)
    assert response.status_code == 400 and response.json()["code"] == "VALIDATION_ERROR"


def test_patch_changes_the_format_of_later_exports(findity_sandbox):
    org = findity_sandbox.create_organization(verification_lists_type="REPORT_PER_EXPENSE")
    first = findity_sandbox.create_export(org["organization_id"])
    findity_sandbox.update_organization(org["organization_id"], verification_lists_type="EXPENSE")
    second = findity_sandbox.create_export(org["organization_id"])
    assert _package(org, first["export_id"])["verificationListsType"] == "REPORT_PER_EXPENSE"
    assert _package(org, second["export_id"])["verificationListsType"] == "EXPENSE"


# --- fault knobs of one export ---------------------------------------------------------------------


def _basis(org: dict[str, Any], url: str) -> httpx.Response:
    with _api(org) as api:
        return api.get(url, params={"format": "pdf"})


def test_an_export_can_answer_404_for_its_first_seconds(findity_sandbox):
    org = findity_sandbox.create_organization()
    created = findity_sandbox.create_export(org["organization_id"], not_found_for_seconds=1.0)
    with _api(org) as api:
        listed = api.get("/exports", params={"status": "UNPROCESSED"}).json()["data"]
        early = [api.get(f"/exports/{created['export_id']}"),
                 api.get(f"/exports/{created['export_id']}/export")]
        time.sleep(1.1)
        late = [api.get(f"/exports/{created['export_id']}"),
                api.get(f"/exports/{created['export_id']}/export")]
    assert [e["id"] for e in listed] == [created["export_id"]]  # the list already shows it
    assert [r.status_code for r in early] == [404, 404]
    assert {r.json()["code"] for r in early} == {"EXPORT_NOT_FOUND"}
    assert [r.status_code for r in late] == [200, 200]


def test_basis_pdfs_can_be_missing_for_a_while_or_broken_for_good(findity_sandbox):
    org = findity_sandbox.create_organization(verification_lists_type="EXPENSE")
    # 5 s of "missing": the four reads below land inside the window even on a loaded machine.
    asked = time.monotonic()
    created = findity_sandbox.create_export(
        org["organization_id"], basis_not_found_for_seconds=5.0,
        bad_basis={"1": "not_pdf", "2": "missing", "3": "oversized"},
        oversized_basis_bytes=300_000, reports=[_report("Kari", FLIGHT, OFFICE, PAPER, TONER)])
    urls = [v["basisUrl"] for v in _package(org, created["export_id"])["vouchers"]]
    assert {_basis(org, url).status_code for url in urls} == {404}
    time.sleep(max(0.0, 5.1 - (time.monotonic() - asked)))
    good, html, missing, huge = (_basis(org, url) for url in urls)
    assert good.status_code == 200 and good.content.startswith(b"%PDF-")
    assert html.status_code == 200 and not html.content.startswith(b"%PDF-")
    assert missing.status_code == 404 and missing.json()["code"] == "VOUCHER_NOT_FOUND"
    assert huge.status_code == 200 and "content-length" not in huge.headers
    assert huge.content.startswith(b"%PDF-") and len(huge.content) == 300_000


def test_vouchers_can_be_sent_again_under_their_old_ids(findity_sandbox):
    org = findity_sandbox.create_organization()
    first = findity_sandbox.create_export(org["organization_id"])
    again = findity_sandbox.create_export(org["organization_id"], voucher_ids=first["voucher_ids"],
                                          reports=[_report("Kari", FLIGHT), _report("Ola", TAXI)])
    assert again["voucher_ids"] == first["voucher_ids"]
    assert again["export_id"] != first["export_id"]
    package = _package(org, again["export_id"])
    assert [v["id"] for v in package["vouchers"]] == first["voucher_ids"]
    assert _basis(org, package["vouchers"][0]["basisUrl"]).status_code == 200
    wrong = findity_sandbox.control.post(
        f"/_sandbox/organizations/{org['organization_id']}/exports",
        json={"voucher_ids": ["a"], "reports": [_report("Kari", FLIGHT), _report("Ola", TAXI)]})
    assert wrong.status_code == 400 and "names 1 vouchers" in wrong.json()["message"]


@pytest.mark.parametrize(("answer", "code"), [("409", 409), ("200", 200), ("400", 400)])
def test_what_a_repeated_success_gets_can_be_chosen(findity_sandbox, answer, code):
    org = findity_sandbox.create_organization(repeated_success_answer=answer)
    created = findity_sandbox.create_export(org["organization_id"])
    first = created["voucher_ids"][0]
    numbered = {"voucherUpdates": [{"id": first, "status": "SUCCESS", "voucherNumber": 377}]}
    other = {"voucherUpdates": [{"id": first, "status": "SUCCESS", "voucherNumber": 378}]}
    codes = [_update(org, created["export_id"], body).status_code
             for body in (numbered, numbered, other)]
    assert codes == [200, code, 409]  # another number is never taken
