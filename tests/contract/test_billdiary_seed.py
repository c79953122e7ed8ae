"""The BillDiary client's requests against BillDiary's published reference (seed 004).

BillDiary publishes no OpenAPI spec, so the seed's tables are transcribed here (endpoints, the
create fields, the payment-line fields, the list and category query parameters, the statuses
each endpoint documents). The client runs its real calls against the sandbox through a
recording transport, and every request it sent must be one the seed documents, with only
documented fields. A field or endpoint the client starts using that the seed does not list
fails here, and must be checked against the vendor's docs before it is added.
"""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal
from urllib.parse import parse_qsl

import httpx

from shared.domain.vouchers import PostingDraft, VoucherDraft
from shared.integrations.billdiary import BillDiaryClient, BillDiaryOptions

# Seed 004, "Integration API reference", expenses module: (method, path template).
SEED_ENDPOINTS = {
    ("GET", "/api/v1/integration/expenses"),
    ("GET", "/api/v1/integration/expenses/{id}"),
    ("POST", "/api/v1/integration/expenses"),
    ("PUT", "/api/v1/integration/expenses/{id}"),
    ("PATCH", "/api/v1/integration/expenses/{id}"),
    ("POST", "/api/v1/integration/expenses/{id}/payments"),
    ("DELETE", "/api/v1/integration/expenses/{id}"),
    ("GET", "/api/v1/integration/expense-categories"),
    ("GET", "/api/v1/integration/expense-categories/{id}"),
    ("POST", "/api/v1/integration/expense-categories"),
    ("PUT", "/api/v1/integration/expense-categories/{id}"),
    ("PATCH", "/api/v1/integration/expense-categories/{id}"),
    ("DELETE", "/api/v1/integration/expense-categories/{id}"),
    ("POST", "/api/v1/integration/import/expenses"),
}
# "Add expense" fields; update takes "all Add expense fields" plus document.
CREATE_FIELDS = {
    "location_id", "final_total", "ref_no", "transaction_date", "expense_for",
    "additional_notes", "expense_category_id", "expense_sub_category_id", "contact_id", "tax_id",
    "is_refund", "is_recurring", "recur_interval", "recur_interval_type", "recur_repetitions",
    "subscription_repeat_on", "payment", "document",
}
REQUIRED_CREATE_FIELDS = {"location_id", "final_total"}
PAYMENT_LINE_FIELDS = {"amount", "method", "paid_on", "note", "is_return", "account_id"}
LIST_PARAMETERS = {
    "per_page", "page", "location_id", "contact_id", "expense_for", "created_by",
    "expense_category_id", "expense_sub_category_id", "start_date", "end_date",
    "payment_status", "type", "q", "format",
}
CATEGORY_LIST_PARAMETERS = {"per_page", "page", "q", "search", "sort", "direction", "scope",
                            "format"}
CATEGORY_CREATE_FIELDS = {"name", "code", "parent_id"}
# "Record expense payment" fields.
RECORD_PAYMENT_FIELDS = {
    "amount", "method", "paid_on", "note", "account_id", "card_number", "card_holder_name",
    "card_transaction_number", "card_type", "card_month", "card_year", "card_security",
    "cheque_number", "bank_account_number", "transaction_no_1", "transaction_no_2",
    "transaction_no_3",
}
# Laravel's method spoofing: how a multipart update reaches PUT (the guide's [assumed, PHP]).
SPOOFING_FIELD = "_method"


class RecordingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return super().handle_request(request)


def _template(method: str, path: str, body_fields: set[str]) -> tuple[str, str]:
    template = re.sub(r"/\d+(?=/|$)", "/{id}", path)
    if method == "POST" and SPOOFING_FIELD in body_fields and template.endswith("/{id}"):
        return "PUT", template  # POST + _method=PUT is the documented PUT
    return method, template


def _multipart_fields(request: httpx.Request) -> set[str]:
    return {name.decode() for name in re.findall(rb'; name="([^"]+)"', request.content)}


def test_every_request_the_client_sends_is_documented_in_the_seed(billdiary_sandbox):
    business = billdiary_sandbox.create_business()
    transport = RecordingTransport()
    options = BillDiaryOptions(
        location_id=business["locations"][0]["id"], currency="NOK", payable_accounts=["2930"],
        payment_accounts={"1920": {"method": "card",
                                   "account_id": business["payment_accounts"][0]["id"]}},
        default_tax_id=business["tax_rates"][0]["id"], expense_for=business["user_id"],
        create_missing_categories=True)

    class Gate:
        timeout = 10.0

        def open(self) -> bool:
            return True

    with BillDiaryClient(billdiary_sandbox.base_url, options=options, transport=transport,
                         api_key=business["api_key"], api_secret=business["api_secret"]) as c:
        c.check_connection()
        for ref, account, credit, amount in (("exp_c1", "7142", "1920", "10.00"),
                                             ("exp_c2", "5555", "2930", "-3.50")):
            posted = c.post_voucher(VoucherDraft(
                external_number=ref, date=date(2026, 3, 18), description="d", postings=[
                    PostingDraft(account_number=account, amount=Decimal(amount)),
                    PostingDraft(account_number=credit, amount=-Decimal(amount))]), Gate())
            assert c.find_voucher(ref).id == posted.id
            c.attach_receipt(posted.id, "r.pdf", b"%PDF-1.4\n%%EOF\n", "application/pdf")
            assert c.has_attachment(posted.id)
        owed = c.post_voucher(VoucherDraft(
            external_number="exp_c3", date=date(2026, 3, 18), description="d", postings=[
                PostingDraft(account_number="6800", amount=Decimal("5")),
                PostingDraft(account_number="2930", amount=Decimal("-5"))]), Gate())
        c.record_payment(owed.id, reference="exp_c3-p1", amount=Decimal("5"),
                         paid_on=date(2026, 3, 19), method="cash",
                         account_id=business["payment_accounts"][0]["id"], gate=Gate())
        assert c.find_payment(owed.id, "exp_c3-p1") is not None

    seen = set()
    for request in transport.requests:
        query = {k for k, _ in parse_qsl(request.url.query.decode())}
        content_type = request.headers.get("content-type", "")
        if "json" in content_type:
            body = json.loads(request.content)
        elif "multipart" in content_type:
            body = dict.fromkeys(_multipart_fields(request))
        else:
            body = {}
        method, template = _template(request.method, request.url.path, set(body))
        seen.add((method, template))
        assert (method, template) in SEED_ENDPOINTS, f"{method} {template} is not in the seed"
        assert request.headers["accept"] == "application/json"
        if template == "/api/v1/integration/expenses" and method == "GET":
            assert query <= LIST_PARAMETERS, query - LIST_PARAMETERS
        if template == "/api/v1/integration/expense-categories" and method == "GET":
            assert query <= CATEGORY_LIST_PARAMETERS, query - CATEGORY_LIST_PARAMETERS
        if (method, template) == ("POST", "/api/v1/integration/expense-categories"):
            assert set(body) <= CATEGORY_CREATE_FIELDS
        if (method, template) == ("POST", "/api/v1/integration/expenses"):
            assert REQUIRED_CREATE_FIELDS <= set(body) <= CREATE_FIELDS, set(body) - CREATE_FIELDS
            for line in body.get("payment", []):
                assert {"amount", "method"} <= set(line) <= PAYMENT_LINE_FIELDS
            # Amounts are JSON numbers (the seed's "number"), never strings or floats' noise.
            assert isinstance(body["final_total"], (int, float))
        if (method, template) == ("PUT", "/api/v1/integration/expenses/{id}"):
            assert set(body) - {SPOOFING_FIELD} <= CREATE_FIELDS
        if (method, template) == ("POST", "/api/v1/integration/expenses/{id}/payments"):
            assert {"amount", "method"} <= set(body) <= RECORD_PAYMENT_FIELDS
    # The calls of the posting protocol were all exercised.
    assert {("POST", "/api/v1/integration/expenses"), ("GET", "/api/v1/integration/expenses"),
            ("PUT", "/api/v1/integration/expenses/{id}"),
            ("GET", "/api/v1/integration/expenses/{id}"),
            ("GET", "/api/v1/integration/expense-categories"),
            ("POST", "/api/v1/integration/expense-categories"),
            ("POST", "/api/v1/integration/expenses/{id}/payments")} <= seen
