"""BillDiaryClient against the real BillDiary sandbox server (a subprocess speaking HTTP).

Each test makes its own sandbox business, so faults, formats and request counts are its own.
Faults are the sandbox's knobs, not mocks: the client sees real 402s, 403s, 422s, the seed's
500 "Could not load expense" after a save, and a business that reads dates and amounts with its
own formats.
"""

from __future__ import annotations

import contextlib
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import pytest

from shared.domain.vouchers import PostingDraft, VoucherDraft
from shared.integrations.billdiary import BillDiaryClient, BillDiaryOptions, connection_options
from shared.integrations.errors import (
    AuthError,
    ConnectionParked,
    PermanentError,
    RateLimitedError,
    SendWithdrawn,
    TransientError,
)
from tests.fixtures.billdiary_sandbox import BillDiarySandbox

EXPENSE_POST = "POST /expenses"
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


class RecordingTransport(httpx.HTTPTransport):
    """A real HTTP transport that keeps every request it sent."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return super().handle_request(request)


class Gate:
    def __init__(self, allow: bool = True, timeout: float = 10.0) -> None:
        self.allow, self.timeout, self.opened = allow, timeout, 0

    def open(self) -> bool:
        self.opened += 1
        return self.allow


def options_for(business: dict[str, Any], **overrides: Any) -> BillDiaryOptions:
    settings = business["settings"]
    base = {
        "location_id": business["locations"][0]["id"],
        "currency": settings["currency_code"],
        "date_format": settings["date_format"],
        "time_format": settings["time_format"],
        "thousand_separator": settings["thousand_separator"],
        "decimal_separator": settings["decimal_separator"],
        "payable_accounts": ["2930"],
        "payment_accounts": {"1920": {"method": "bank_transfer",
                                      "account_id": business["payment_accounts"][0]["id"]}},
    }
    return BillDiaryOptions.model_validate({**base, **overrides})


def make_client(sandbox: BillDiarySandbox, business: dict[str, Any], *,
                token: bool = False, **overrides: Any) -> BillDiaryClient:
    kwargs = overrides.pop("client_kwargs", {})
    credentials = ({"token": business["token"]} if token else
                   {"api_key": business["api_key"], "api_secret": business["api_secret"]})
    return BillDiaryClient(sandbox.base_url, options=options_for(business, **overrides),
                           **credentials, **kwargs)


def draft(ref: str, amount: str = "250.00", *, account: str = "7140", credit: str = "2930",
          vat_code: str | None = None, day: date = date(2026, 3, 18)) -> VoucherDraft:
    value = Decimal(amount)
    return VoucherDraft(external_number=ref, date=day, description="Taxi to the airport",
                        postings=[
                            PostingDraft(account_number=account, amount=value, vat_code=vat_code),
                            PostingDraft(account_number=credit, amount=-value)])


def stored(sandbox: BillDiarySandbox, business: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in sandbox.expenses(business["business_id"]) if not e["deleted"]]


@pytest.fixture
def business(billdiary_sandbox: BillDiarySandbox) -> dict[str, Any]:
    return billdiary_sandbox.create_business()


@pytest.fixture
def client(billdiary_sandbox, business):
    with make_client(billdiary_sandbox, business) as c:
        yield c


def category_id(business: dict[str, Any], code: str) -> int:
    for c in business["categories"]:
        if c["code"] == code:
            return c["id"]
        for sub in c["sub_categories"]:
            if sub["code"] == code:
                return sub["id"]
    raise KeyError(code)


# --- create --------------------------------------------------------------------------------------


def test_an_expense_is_created_with_our_reference_category_tax_and_notes(
        billdiary_sandbox, business, client):
    tax_id = business["tax_rates"][0]["id"]  # VAT 25%
    posted = client.post_voucher(draft("exp_create1", "250.00", vat_code=str(tax_id)), Gate())
    [row] = stored(billdiary_sandbox, business)
    assert posted.id == str(row["id"]) and posted.reference == f"BD-{row['id']}"
    assert posted.booked_on == date(2026, 3, 18)
    assert row["ref_no"] == "exp_create1"
    assert row["type"] == "expense"
    assert row["final_total"] == "250.0000" and row["tax_amount"] == "50.0000"
    assert row["tax_id"] == tax_id
    assert row["expense_category_id"] == category_id(business, "7140")
    assert row["expense_sub_category_id"] is None
    assert row["location_id"] == business["locations"][0]["id"]
    assert row["transaction_date"] == "2026-03-18 12:00:00"
    assert "exp_create1" in row["additional_notes"]
    assert "Taxi to the airport" in row["additional_notes"]
    assert row["payments"] == [] and row["payment_status"] == "due"  # owed to the employee


def test_a_sub_category_code_books_the_parent_and_the_sub_category(
        billdiary_sandbox, business, client):
    client.post_voucher(draft("exp_sub1", account="7142"), Gate())
    [row] = stored(billdiary_sandbox, business)
    assert row["expense_category_id"] == category_id(business, "7140")
    assert row["expense_sub_category_id"] == category_id(business, "7142")


def test_an_expense_paid_from_a_payment_account_carries_its_payment_line(
        billdiary_sandbox, business, client):
    client.post_voucher(draft("exp_paid1", "99.90", credit="1920"), Gate())
    [row] = stored(billdiary_sandbox, business)
    [payment] = row["payments"]
    assert payment["amount"] == "99.9000" and payment["method"] == "bank_transfer"
    assert payment["account_id"] == business["payment_accounts"][0]["id"]
    assert "exp_paid1" in payment["note"]
    assert row["payment_status"] == "paid"


def test_a_credit_becomes_an_expense_refund(billdiary_sandbox, business, client):
    client.post_voucher(draft("exp_refund1", "-40.00"), Gate())
    [row] = stored(billdiary_sandbox, business)
    assert row["type"] == "expense_refund" and row["final_total"] == "40.0000"


def test_a_bearer_token_works_and_every_request_asks_for_json(billdiary_sandbox, business):
    transport = RecordingTransport()
    with make_client(billdiary_sandbox, business, token=True,
                     client_kwargs={"transport": transport}) as c:
        c.post_voucher(draft("exp_token1"), Gate())
    assert transport.requests
    for request in transport.requests:
        assert request.headers["accept"] == "application/json"
        assert request.headers["authorization"] == f"Bearer {business['token']}"


def test_a_closed_gate_sends_nothing(billdiary_sandbox, business, client):
    prepared = client.prepare_voucher(draft("exp_gate1"))
    billdiary_sandbox.reset_request_counts(business["business_id"])
    with pytest.raises(SendWithdrawn):
        client.send_voucher(prepared, Gate(allow=False))
    assert billdiary_sandbox.request_counts(business["business_id"]).get(EXPENSE_POST, 0) == 0
    assert stored(billdiary_sandbox, business) == []


# --- what cannot be one expense, before anything is sent ------------------------------------------


def test_an_unknown_category_code_is_refused_before_posting(billdiary_sandbox, business, client):
    with pytest.raises(PermanentError) as caught:
        client.prepare_voucher(draft("exp_unknown1", account="9999"))
    assert "no BillDiary expense category has the code 9999" in caught.value.message
    assert billdiary_sandbox.request_counts(business["business_id"]).get(EXPENSE_POST, 0) == 0


def test_a_missing_category_is_created_only_when_the_connection_allows_it(
        billdiary_sandbox, business):
    with make_client(billdiary_sandbox, business, create_missing_categories=True) as c:
        c.post_voucher(draft("exp_newcat1", account="9999"), Gate())
        c.post_voucher(draft("exp_newcat2", account="9999"), Gate())  # cached, not created twice
    made = [c for c in billdiary_sandbox.categories(business["business_id"]) if c["code"] == "9999"]
    assert len(made) == 1
    assert {r["expense_category_id"] for r in stored(billdiary_sandbox, business)} == {made[0]["id"]}


def test_another_currency_and_mixed_categories_are_refused_with_every_problem(client):
    mixed = VoucherDraft(external_number="exp_mixed1", date=date(2026, 3, 18), description="x",
                         currency="SEK", postings=[
                             PostingDraft(account_number="7140", amount=Decimal("10")),
                             PostingDraft(account_number="6800", amount=Decimal("5")),
                             PostingDraft(account_number="2930", amount=Decimal("-15"))])
    with pytest.raises(PermanentError) as caught:
        client.prepare_voucher(mixed)
    assert "in SEK" in caught.value.message
    assert "one category" in caught.value.message and "6800, 7140" in caught.value.message


def test_options_that_are_missing_say_what_to_set():
    with pytest.raises(PermanentError) as caught:
        connection_options({"rate_limit": {"requests_per_second": 1}})
    assert "location_id" in caught.value.message and "currency" in caught.value.message


# --- the lookup by our reference -------------------------------------------------------------------


def test_find_keeps_only_the_exact_reference_among_substring_matches(
        billdiary_sandbox, business, client):
    ours = client.post_voucher(draft("exp_find1"), Gate())
    client.post_voucher(draft("exp_find10"), Gate())  # our reference is a substring of its
    neighbour = client.prepare_voucher(draft("exp_other"))
    plan, body = neighbour.payload
    body["additional_notes"] = "see exp_find1"  # our reference inside another row's notes
    client.send_voucher(neighbour, Gate())
    found = client.find_voucher("exp_find1")
    assert found is not None and found.id == ours.id
    assert client.find_voucher("exp_nothing") is None


def test_two_expenses_with_our_reference_stop_and_alert(billdiary_sandbox, business, client):
    client.post_voucher(draft("exp_dup1"), Gate())
    client.post_voucher(draft("exp_dup1"), Gate())  # a duplicate made behind our back
    with pytest.raises(PermanentError) as caught:
        client.find_voucher("exp_dup1")
    assert caught.value.code == "duplicate_ref_no"
    assert "2 expenses" in caught.value.message


def test_could_not_load_expense_is_ambiguous_and_the_expense_is_found(
        billdiary_sandbox, business, client):
    prepared = client.prepare_voucher(draft("exp_500"))
    billdiary_sandbox.set_faults(business["business_id"], save_then_fail=1)
    with pytest.raises(TransientError) as caught:
        client.send_voucher(prepared, Gate())
    assert caught.value.status_code == 500 and caught.value.sent
    assert caught.value.code == "saved_not_loaded"
    [row] = stored(billdiary_sandbox, business)
    found = client.find_voucher("exp_500")
    assert found is not None and found.id == str(row["id"])


def test_an_answer_held_past_the_timeout_is_ambiguous(billdiary_sandbox, business, client):
    prepared = client.prepare_voucher(draft("exp_hold"))
    billdiary_sandbox.set_faults(business["business_id"], save_then_hold_ms=1500)
    with pytest.raises(TransientError) as caught:
        client.send_voucher(prepared, Gate(timeout=0.5))
    assert caught.value.code == "timeout" and caught.value.sent
    billdiary_sandbox.clear_faults(business["business_id"])
    assert client.find_voucher("exp_hold") is not None


# --- refusals --------------------------------------------------------------------------------------


def test_a_422_says_what_to_fix_in_plain_words(billdiary_sandbox, business):
    with make_client(billdiary_sandbox, business, default_tax_id=999) as c:
        with pytest.raises(PermanentError) as caught:
            c.post_voucher(draft("exp_422"), Gate())
    assert caught.value.status_code == 422
    assert "The selected tax id is invalid." in caught.value.message
    assert "tax rate id" in caught.value.message


def test_a_location_the_user_may_not_use_is_a_422_naming_the_option(billdiary_sandbox, business):
    bid = business["business_id"]
    billdiary_sandbox.update_user(bid, business["user_id"],
                                  location_ids=[business["locations"][1]["id"]])
    with make_client(billdiary_sandbox, business) as c:
        with pytest.raises(PermanentError) as caught:
            c.post_voucher(draft("exp_loc"), Gate())
    assert caught.value.status_code == 422 and "location_id option" in caught.value.message


def test_wrong_credentials_are_an_auth_error(billdiary_sandbox, business):
    with BillDiaryClient(billdiary_sandbox.base_url, options=options_for(business),
                         api_key="nope", api_secret="nope") as c:
        with pytest.raises(AuthError):
            c.find_voucher("exp_x")


class RecordingLimiter:
    """Grants every permit and keeps what the client told it (the limiter's own rules are
    tested in test_rate_limit.py; this is about what BillDiary's 429 makes the client say)."""

    def __init__(self) -> None:
        self.observed: list[tuple[int | None, float | None]] = []

    def acquire(self):
        return contextlib.nullcontext()

    def observe(self, *, remaining: int | None, reset_seconds: float | None) -> None:
        self.observed.append((remaining, reset_seconds))


def test_a_429_is_rate_limited_with_retry_after_and_tells_the_limiter(billdiary_sandbox,
                                                                      business):
    billdiary_sandbox.set_faults(business["business_id"], fail_next=[
        {"status": 429, "retry_after": 7, "method": "GET"}])
    limiter = RecordingLimiter()
    with make_client(billdiary_sandbox, business, client_kwargs={"limiter": limiter}) as c:
        with pytest.raises(RateLimitedError) as caught:
            c.find_voucher("exp_429")
    assert type(caught.value) is RateLimitedError and caught.value.retry_after == 7
    assert caught.value.code == "rate_limited" and caught.value.sent
    assert limiter.observed == [(0, 7.0)]


def test_an_inactive_subscription_parks_the_connection_until_it_is_renewed(
        billdiary_sandbox, business):
    bid = business["business_id"]
    billdiary_sandbox.update_settings(bid, subscription_active=False)
    now = [1000.0]
    with make_client(billdiary_sandbox, business, park_seconds=60,
                     client_kwargs={"clock": lambda: now[0]}) as c:
        with pytest.raises(ConnectionParked) as caught:
            c.post_voucher(draft("exp_402"), Gate())
        assert caught.value.status_code == 402 and "subscription is inactive" in caught.value.message
        assert caught.value.retry_after == 60
        billdiary_sandbox.reset_request_counts(bid)
        # While parked nothing leaves: the next export is told to wait without a request.
        now[0] += 45
        with pytest.raises(ConnectionParked) as waiting:
            c.prepare_voucher(draft("exp_402b"))
        assert not waiting.value.sent and waiting.value.retry_after == 15
        assert billdiary_sandbox.request_counts(bid) == {}
        billdiary_sandbox.update_settings(bid, subscription_active=True)
        now[0] += 15  # the park is over: one request looks again, and BillDiary takes it
        assert c.post_voucher(draft("exp_402"), Gate()).id
    assert [e["ref_no"] for e in stored(billdiary_sandbox, business)] == ["exp_402"]


def test_demo_mode_parks_with_its_own_message(billdiary_sandbox, business):
    billdiary_sandbox.update_settings(business["business_id"], demo_mode=True)
    with make_client(billdiary_sandbox, business) as c:
        with pytest.raises(ConnectionParked) as caught:
            c.post_voucher(draft("exp_demo"), Gate())
    assert caught.value.status_code == 403 and "demo environment" in caught.value.message


# --- formats per business, read back ----------------------------------------------------------------


def test_a_business_date_format_is_written_as_it_reads_it(billdiary_sandbox):
    business = billdiary_sandbox.create_business(
        settings={"date_format": "m/d/Y", "time_format": 12})
    with make_client(billdiary_sandbox, business) as c:
        posted = c.post_voucher(draft("exp_us", day=date(2026, 3, 18)), Gate())
    [row] = stored(billdiary_sandbox, business)
    assert row["sent"]["transaction_date"] == "03/18/2026 12:00 PM"
    assert row["transaction_date"] == "2026-03-18 12:00:00" and posted.booked_on == date(2026, 3, 18)


def test_a_wrong_date_format_option_is_caught_by_the_read_back_and_parks(billdiary_sandbox):
    business = billdiary_sandbox.create_business(settings={"date_format": "m/d/Y"})
    with make_client(billdiary_sandbox, business, date_format="d/m/Y") as c:
        with pytest.raises(PermanentError) as caught:
            c.post_voucher(draft("exp_baddate", day=date(2026, 3, 18)), Gate())
        assert caught.value.code == "stored_mismatch" and caught.value.status_code is None
        assert "instead of 2026-03-18" in caught.value.message
        # The record exists: a lookup says so loudly instead of finding it "booked".
        with pytest.raises(PermanentError):
            c.find_voucher("exp_baddate")
        with pytest.raises(ConnectionParked):  # nothing more is posted through this client
            c.prepare_voucher(draft("exp_next"))
    assert len(stored(billdiary_sandbox, business)) == 1


def test_comma_decimals_with_dot_thousands(billdiary_sandbox):
    business = billdiary_sandbox.create_business(
        settings={"thousand_separator": ".", "decimal_separator": ","})
    # Told the truth, the client refuses what the business would misread, and posts the rest.
    with make_client(billdiary_sandbox, business) as c:
        with pytest.raises(PermanentError) as caught:
            c.prepare_voucher(draft("exp_cents", "12.50"))
        assert "would read 12.50 without its decimal point (as 125)" in caught.value.message
        c.post_voucher(draft("exp_whole", "1250.00"), Gate())
    # Told a wrong format, the read-back catches the misread amount.
    with make_client(billdiary_sandbox, business, thousand_separator=",",
                     decimal_separator=".") as c:
        with pytest.raises(PermanentError) as caught:
            c.post_voucher(draft("exp_misread", "12.50"), Gate())
        assert "total 125.0 instead of 12.50" in caught.value.message
    totals = {r["ref_no"]: r["final_total"] for r in stored(billdiary_sandbox, business)}
    assert totals == {"exp_whole": "1250.0000", "exp_misread": "125.0000"}


# --- receipts ---------------------------------------------------------------------------------------


def test_a_receipt_is_attached_as_the_expense_document(billdiary_sandbox, business, client):
    posted = client.post_voucher(draft("exp_doc"), Gate())
    assert not client.has_attachment(posted.id)
    client.attach_receipt(posted.id, "taxi.pdf", PDF, "application/pdf")
    assert client.has_attachment(posted.id)
    [row] = stored(billdiary_sandbox, business)
    assert [d["outcome"] for d in row["documents"]] == ["stored"]
    assert row["final_total"] == "250.0000"  # the upload changed nothing else


def test_a_receipt_the_erp_silently_drops_is_reported_not_attached(
        billdiary_sandbox, business, client):
    posted = client.post_voucher(draft("exp_drop"), Gate())
    billdiary_sandbox.set_faults(business["business_id"], drop_documents=1)
    with pytest.raises(PermanentError) as caught:
        client.attach_receipt(posted.id, "taxi.pdf", PDF, "application/pdf")
    assert caught.value.code == "document_not_stored" and "NOT attached" in caught.value.message
    assert not client.has_attachment(posted.id)


def test_a_receipt_of_a_type_the_erp_refuses_is_not_sent(billdiary_sandbox, business, client):
    posted = client.post_voucher(draft("exp_exe"), Gate())
    with pytest.raises(PermanentError) as caught:
        client.attach_receipt(posted.id, "r.exe", b"MZ", "application/x-msdownload")
    assert caught.value.code == "unsupported_attachment_type"


# --- payments recorded later ------------------------------------------------------------------------


def test_a_payment_recorded_later_is_found_by_our_reference(billdiary_sandbox, business, client):
    posted = client.post_voucher(draft("exp_pay1", "200.00"), Gate())
    assert client.find_payment(posted.id, "exp_pay1-p1") is None
    paid = client.record_payment(posted.id, reference="exp_pay1-p1", amount=Decimal("200.00"),
                                 paid_on=date(2026, 3, 20), method="cash", gate=Gate())
    found = client.find_payment(posted.id, "exp_pay1-p1")
    assert found is not None and found.id == paid.id and found.amount == Decimal("200")
    assert client.find_payment(posted.id, "exp_pay1-p") is None  # exact, not a prefix
    [row] = stored(billdiary_sandbox, business)
    assert row["payment_status"] == "paid" and row["payments"][0]["paid_on"].startswith(
        "2026-03-20")
    with pytest.raises(PermanentError) as again:  # a blind repeat is refused by BillDiary
        client.record_payment(posted.id, reference="exp_pay1-p1", amount=Decimal("200.00"),
                              paid_on=date(2026, 3, 20), method="cash")
    assert again.value.code == "already_paid"


def test_a_payment_saved_before_a_500_is_ambiguous_and_found(billdiary_sandbox, business, client):
    posted = client.post_voucher(draft("exp_pay2", "80.00"), Gate())
    billdiary_sandbox.set_faults(business["business_id"], payment_save_then_fail=1)
    with pytest.raises(TransientError) as caught:
        client.record_payment(posted.id, reference="exp_pay2-p1", amount=Decimal("30.00"),
                              paid_on=date(2026, 3, 20), method="card")
    assert caught.value.status_code == 500 and caught.value.sent
    found = client.find_payment(posted.id, "exp_pay2-p1")
    assert found is not None and found.amount == Decimal("30")
    [row] = stored(billdiary_sandbox, business)
    assert len(row["payments"]) == 1 and row["payment_status"] == "partial"
