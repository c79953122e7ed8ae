"""FindityClient against the real Findity sandbox server (a subprocess), plus two transport
stubs for answers the sandbox never gives (a malformed body, an HTTP-date Retry-After)."""

from __future__ import annotations

import io
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime

import httpx
import pytest

from devstack.processes import free_port
from shared.integrations.errors import (
    AuthError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from shared.integrations.findity import (
    AccountingVoucher,
    ExportStatus,
    FindityClient,
    PaymentVoucher,
    VerificationListsType,
    VoucherFailedUpdate,
    VoucherPackage,
    VoucherSuccessUpdate,
)

FORMATS = list(VerificationListsType)


@pytest.fixture
def org(findity_sandbox) -> dict:
    return findity_sandbox.create_organization(name="Client Test AS",
                                               external_organization_id="My1234")


@pytest.fixture
def client(findity_sandbox, org):
    with findity_sandbox.client_for(org) as findity:
        yield findity


def _requests(findity_sandbox, org) -> list[dict]:
    return findity_sandbox.organization_state(org["organization_id"])["requests"]


# --- authentication -------------------------------------------------------------------------------


def test_access_token_is_fetched_once_and_reused(findity_sandbox, org, client):
    findity_sandbox.create_export(org["organization_id"])
    client.list_unprocessed_exports()
    client.list_unprocessed_exports()
    assert findity_sandbox.organization_state(org["organization_id"])["tokens_issued"] == 1


def test_token_is_renewed_before_it_expires(findity_sandbox):
    org = findity_sandbox.create_organization(token_expires_in=2)
    with findity_sandbox.client_for(org) as client:
        client.list_unprocessed_exports()
        # Still valid for ~0.1 s on Findity's side, but inside the client's renewal margin.
        time.sleep(1.9)
        client.list_unprocessed_exports()
    state = findity_sandbox.organization_state(org["organization_id"])
    assert state["tokens_issued"] == 2
    # Renewed ahead of expiry: Findity never had to answer 401.
    assert [r["status"] for r in state["requests"]] == [200, 200]


def test_a_rejected_token_is_renewed_once_and_the_call_repeated(findity_sandbox, org, client):
    client.list_unprocessed_exports()
    assert findity_sandbox.revoke_tokens(org["organization_id"]) == 1
    assert client.list_unprocessed_exports() == []
    state = findity_sandbox.organization_state(org["organization_id"])
    assert state["tokens_issued"] == 2
    assert [r["status"] for r in state["requests"]] == [200, 401, 200]


def test_a_second_401_after_renewal_is_an_auth_error(findity_sandbox, org, client):
    findity_sandbox.set_faults(org["organization_id"],
                               fail_next=[{"status": 401, "count": 5, "path_contains": "/exports"}])
    with pytest.raises(AuthError) as caught:
        client.list_unprocessed_exports()
    assert caught.value.status_code == 401
    state = findity_sandbox.organization_state(org["organization_id"])
    assert state["tokens_issued"] == 2  # the first token and exactly one renewal
    assert [r["status"] for r in state["requests"]] == [401, 401]


def test_a_wrong_client_secret_is_an_auth_error_without_the_secret(findity_sandbox, org):
    wrong = {**org, "client_secret": "not-the-secret-xyz"}
    with findity_sandbox.client_for(wrong) as client, pytest.raises(AuthError) as caught:
        client.list_unprocessed_exports()
    assert caught.value.code == "invalid_client"
    assert "client id and secret" in caught.value.message
    assert "not-the-secret-xyz" not in str(caught.value)
    assert "not-the-secret-xyz" not in repr(client)


# --- listing --------------------------------------------------------------------------------------


def test_lists_every_page_and_only_unprocessed_exports(findity_sandbox, org, client):
    org_id = org["organization_id"]
    one_report = {"reports": 1, "expenses_per_report": 1}
    created = [
        findity_sandbox.create_export(org_id, generate={**one_report, "seed": n})["export_id"]
        for n in range(5)
    ]
    done = findity_sandbox.create_export(org_id)
    client.update_status(done["export_id"],
                         [VoucherSuccessUpdate(id=v) for v in done["voucher_ids"]])
    client.page_size = 2

    exports = client.list_unprocessed_exports()

    assert [e.id for e in exports] == created
    assert all(e.status is ExportStatus.UNPROCESSED and e.organization_id == org_id
               for e in exports)
    assert exports[0].external_organization_id == "My1234"
    assert exports[0].created_at.tzinfo is not None
    list_calls = [r["path"] for r in _requests(findity_sandbox, org)
                  if r["path"].endswith("/exports")]
    assert len(list_calls) == 3  # 2 + 2 + 1


def test_get_export_returns_its_metadata(findity_sandbox, org, client):
    created = findity_sandbox.create_export(org["organization_id"])
    export = client.get_export(created["export_id"])
    assert export.id == created["export_id"]
    assert export.number_of_vouchers == len(created["voucher_ids"])
    assert export.number_of_reports == 2
    assert export.recipient.verification_lists_type is VerificationListsType.REPORT_PER_EXPENSE


# --- voucher packages -----------------------------------------------------------------------------


def _expected_voucher_count(format_: VerificationListsType, reports: int, users: int,
                            expenses: int) -> int:
    if format_ is VerificationListsType.EXPENSE:
        return reports * expenses
    return users if format_.name.startswith("USER_") else reports


@pytest.mark.parametrize("format_", FORMATS, ids=[f.value for f in FORMATS])
def test_voucher_package_in_every_format(findity_sandbox, format_):
    org = findity_sandbox.create_organization(verification_lists_type=format_.value)
    created = findity_sandbox.create_export(
        org["organization_id"],
        generate={"reports": 3, "expenses_per_report": 2, "seed": 7, "users": 2})
    with findity_sandbox.client_for(org) as client:
        package = client.get_voucher_package(created["export_id"])

    assert isinstance(package, VoucherPackage)
    assert package.export_id == created["export_id"]
    assert package.verification_lists_type is format_
    assert [v.id for v in package.vouchers] == created["voucher_ids"]
    assert len(package.vouchers) == _expected_voucher_count(format_, 3, 2, 2)
    if format_.is_accounting:
        assert all(isinstance(v, AccountingVoucher) for v in package.vouchers)
        for voucher in package.vouchers:
            assert voucher.balance == Decimal("0.00"), voucher
            assert all(row.account for row in voucher.voucher_rows)
    else:
        assert all(isinstance(v, PaymentVoucher) for v in package.vouchers)
        for voucher in package.vouchers:
            assert all(row.amount > 0 and row.owner_id == voucher.owner_id
                       for row in voucher.voucher_rows)
    for voucher in package.vouchers:
        assert voucher.basis_url and voucher.basis_url.endswith(voucher.id)


def test_every_format_owes_the_employees_the_same_total(findity_sandbox):
    """Same seed, eight formats: the amounts owed (credit rows or payment rows) must agree."""
    owed = {}
    for format_ in FORMATS:
        org = findity_sandbox.create_organization(verification_lists_type=format_.value)
        export_id = findity_sandbox.create_export(
            org["organization_id"],
            generate={"reports": 4, "expenses_per_report": 3, "seed": 11})["export_id"]
        with findity_sandbox.client_for(org) as client:
            package = client.get_voucher_package(export_id)
        if format_.is_payment:
            owed[format_] = sum(v.total for v in package.payment_vouchers())
        else:
            owed[format_] = -sum(row.amount for v in package.accounting_vouchers()
                                 for row in v.voucher_rows if row.account == "2930")
    assert len(set(owed.values())) == 1, owed
    assert next(iter(owed.values())) > 0


def test_amounts_arrive_as_exact_decimals(findity_sandbox, org, client):
    created = findity_sandbox.create_export(org["organization_id"], reports=[{
        "owner_name": "Kari Nordmann",
        "expenses": [
            {"text": "Office supplies", "account": "6800", "amount": "1250.00", "vat_rate": 25,
             "cost_center": "100"},
            # 18 significant digits: a float would round it.
            {"text": "Big one", "account": "6800", "amount": "1234567890123456.78", "vat_rate": 0},
        ],
    }])
    voucher = client.get_voucher_package(created["export_id"]).vouchers[0]
    rows = [(r.account, r.amount, r.tax_amount, r.tax_code) for r in voucher.voucher_rows]
    assert rows == [
        ("6800", Decimal("1000.00"), Decimal("250.00"), "1"),
        ("2710", Decimal("250.00"), Decimal("0.00"), "1"),
        ("2930", Decimal("-1250.00"), Decimal("0.00"), None),
        ("6800", Decimal("1234567890123456.78"), Decimal("0.00"), None),
        ("2930", Decimal("-1234567890123456.78"), Decimal("0.00"), None),
    ]
    assert voucher.voucher_rows[0].dimension == {"costCenter": "100"}


# --- reporting back -------------------------------------------------------------------------------


def test_update_status_sends_the_documented_body_verbatim(findity_sandbox, org, client):
    created = findity_sandbox.create_export(org["organization_id"])
    first, second = created["voucher_ids"]
    client.update_status(created["export_id"], [
        VoucherSuccessUpdate(id=first,
                             booking_date=datetime(2024, 11, 21, 8, 29, tzinfo=timezone.utc),
                             voucher_number=377, information_text="External System says OK"),
        VoucherFailedUpdate(id=second, error_text="account 7140 does not exist in Tripletex"),
    ])
    recorded = findity_sandbox.status_updates(org["organization_id"], created["export_id"])
    assert len(recorded) == 1
    assert recorded[0]["response_status"] == 200
    assert recorded[0]["body"] == {"voucherUpdates": [
        {"id": first, "status": "SUCCESS", "bookingDate": "2024-11-21T08:29:00Z",
         "voucherNumber": 377, "informationText": "External System says OK"},
        {"id": second, "status": "FAILED",
         "errorText": "account 7140 does not exist in Tripletex"},
    ]}
    assert client.get_export(created["export_id"]).status is ExportStatus.FAILED


def test_a_voucher_reported_with_a_number_cannot_be_reported_again(findity_sandbox, org, client):
    created = findity_sandbox.create_export(org["organization_id"])
    update = [VoucherSuccessUpdate(id=created["voucher_ids"][0], voucher_number=1)]
    client.update_status(created["export_id"], update)
    # Unset optional fields are left out, not sent as null.
    assert findity_sandbox.status_updates(org["organization_id"], created["export_id"])[0][
        "body"] == {"voucherUpdates": [{"id": created["voucher_ids"][0], "status": "SUCCESS",
                                        "voucherNumber": 1}]}
    with pytest.raises(PermanentError) as caught:
        client.update_status(created["export_id"], update)
    assert caught.value.status_code == 409
    assert caught.value.code == "VOUCHER_ALREADY_PROCESSED"
    assert not isinstance(caught.value, NotFoundError)


def test_an_invalid_update_is_a_permanent_error_with_findity_s_explanation(findity_sandbox, org,
                                                                          client):
    created = findity_sandbox.create_export(org["organization_id"])
    with pytest.raises(PermanentError) as caught:
        client.update_status(created["export_id"], [VoucherSuccessUpdate(id="not-a-voucher")])
    assert caught.value.status_code == 400
    assert caught.value.code == "VALIDATION_ERROR"
    assert "not-a-voucher is not part of export" in caught.value.message


# --- files ----------------------------------------------------------------------------------------


def test_receipt_pdf_is_fetched_with_format_pdf(findity_sandbox, org, client):
    created = findity_sandbox.create_export(org["organization_id"])
    voucher = client.get_voucher_package(created["export_id"]).vouchers[0]

    pdf = client.get_receipt_pdf(voucher.basis_url)
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    assert voucher.id.encode() in pdf
    # An existing query string is kept, and format=pdf added to it.
    assert client.get_receipt_pdf(voucher.basis_url + "?lang=nb").startswith(b"%PDF-")


def _voucher_urls(findity_sandbox, org, client, **knobs) -> list[str]:
    findity_sandbox.update_organization(org["organization_id"], verification_lists_type="EXPENSE")
    expenses = [{"text": f"Taxi {i}", "account": "7140", "amount": "112.00", "vat_rate": 12}
                for i in range(3)]
    created = findity_sandbox.create_export(org["organization_id"], reports=[
        {"owner_name": "Kari", "expenses": expenses}], **knobs)
    return [v.basis_url for v in client.get_voucher_package(created["export_id"]).vouchers]


def test_an_oversized_basis_pdf_is_cut_off_while_streaming(findity_sandbox, org, client):
    """Sent chunked without Content-Length: only counting what arrives can catch it. Before the
    cap, the whole body was read into memory whatever its size."""
    _, huge, _ = _voucher_urls(findity_sandbox, org, client, bad_basis={"1": "oversized"},
                               oversized_basis_bytes=5 * 1024 * 1024)
    sink = io.BytesIO()
    with pytest.raises(PermanentError) as caught:
        client.download_receipt_pdf(huge, sink, max_bytes=256 * 1024)
    assert caught.value.code == "receipt_too_large"
    assert "larger than the 262144 bytes" in caught.value.message
    assert "AIC_RECEIPT_MAX_BYTES" in caught.value.message
    assert len(sink.getvalue()) <= 256 * 1024  # stopped at the cap, not after the download


def test_a_basis_pdf_over_the_cap_is_refused_by_its_content_length(findity_sandbox, org, client):
    good, _, _ = _voucher_urls(findity_sandbox, org, client)
    size = len(client.get_receipt_pdf(good))
    assert len(client.get_receipt_pdf(good, max_bytes=size)) == size
    with pytest.raises(PermanentError) as caught:
        client.get_receipt_pdf(good, max_bytes=size - 1)
    assert caught.value.code == "receipt_too_large" and f"announces {size} bytes" in caught.value.message


def test_a_basis_that_is_not_a_pdf_or_missing_says_so(findity_sandbox, org, client):
    _, html, missing = _voucher_urls(findity_sandbox, org, client,
                                     bad_basis={"1": "not_pdf", "2": "missing"})
    with pytest.raises(PermanentError) as not_pdf:
        client.get_receipt_pdf(html)
    assert not_pdf.value.code == "unexpected_response"
    assert "is not a PDF (Content-Type text/html" in not_pdf.value.message
    with pytest.raises(PermanentError) as gone:
        client.get_receipt_pdf(missing)
    assert gone.value.status_code == 404 and gone.value.code == "VOUCHER_NOT_FOUND"


def test_the_token_is_never_sent_to_another_host(client):
    with pytest.raises(PermanentError) as caught:
        client.get_receipt_pdf("https://evil.example/api/v1/connect/basis/abc")
    assert caught.value.code == "untrusted_basis_url"


def test_content_round_trip(findity_sandbox, org, client):
    created = findity_sandbox.create_export(org["organization_id"])
    payload = "#FLAGGA 0\n#VER A 1 20260318 \"Taxi\"\n".encode("cp437")
    client.put_content(created["export_id"], "bilag-ø.se", payload, "text/plain; charset=cp437")
    assert client.get_content(created["export_id"]) == payload
    stored = findity_sandbox.export_state(org["organization_id"], created["export_id"])["content"]
    assert stored == {"filename": "bilag-ø.se", "content_type": "text/plain; charset=cp437",
                      "size": len(payload)}


# --- error taxonomy -------------------------------------------------------------------------------


def test_unknown_export_is_not_found_with_what_to_check(org, client):
    with pytest.raises(NotFoundError) as caught:
        client.get_voucher_package("0123456789abcdef")
    error = caught.value
    assert (error.code, error.status_code, error.system) == ("EXPORT_NOT_FOUND", 404, "findity")
    assert "0123456789abcdef" in error.message and org["organization_id"] in error.message


def test_unknown_organization_is_not_found(findity_sandbox, org):
    other = {**org, "organization_id": "ffffffffffffffffffffffffffffffff"}
    with findity_sandbox.client_for(other) as client, pytest.raises(NotFoundError) as caught:
        client.list_unprocessed_exports()
    assert caught.value.code == "ORGANIZATION_NOT_FOUND"
    assert "Findity Admin" in caught.value.message


def test_missing_recipient_says_where_to_configure_it(findity_sandbox):
    org = findity_sandbox.create_organization(recipient_configured=False)
    with findity_sandbox.client_for(org) as client, pytest.raises(PermanentError) as caught:
        client.list_unprocessed_exports()
    assert not isinstance(caught.value, NotFoundError)
    assert caught.value.code == "RECIPIENT_NOT_FOUND"
    assert ("configure an API report recipient in Findity Admin > Settings > "
            "Expense management > Integrations") in caught.value.message


def test_server_errors_are_transient(findity_sandbox, org, client):
    findity_sandbox.set_faults(org["organization_id"],
                               fail_next=[{"status": 503, "count": 1, "path_contains": "/exports"}])
    with pytest.raises(TransientError) as caught:
        client.list_unprocessed_exports()
    assert caught.value.status_code == 503 and not isinstance(caught.value, RateLimitedError)
    assert client.list_unprocessed_exports() == []  # the fault was used up


def test_updatestatus_down_is_transient(findity_sandbox, org, client):
    created = findity_sandbox.create_export(org["organization_id"])
    update = [VoucherSuccessUpdate(id=v) for v in created["voucher_ids"]]
    findity_sandbox.set_faults(org["organization_id"], updatestatus_down=True)
    with pytest.raises(TransientError):
        client.update_status(created["export_id"], update)
    client.get_export(created["export_id"])  # the rest of the API still answers
    findity_sandbox.clear_faults(org["organization_id"])
    client.update_status(created["export_id"], update)
    assert client.get_export(created["export_id"]).status is ExportStatus.PROCESSED


def test_429_is_rate_limited_with_retry_after(findity_sandbox, org, client):
    findity_sandbox.set_faults(org["organization_id"], fail_next=[
        {"status": 429, "count": 1, "method": "GET", "retry_after": 7}])
    with pytest.raises(RateLimitedError) as caught:
        client.list_unprocessed_exports()
    assert caught.value.retry_after == 7.0
    assert caught.value.retryable


def test_a_slow_answer_is_a_transient_timeout(findity_sandbox, org):
    findity_sandbox.set_faults(org["organization_id"], latency_ms=600)
    with findity_sandbox.client_for(org, timeout=httpx.Timeout(0.2)) as client:
        with pytest.raises(TransientError) as caught:
            client.list_unprocessed_exports()
    assert caught.value.code == "timeout"


def test_an_unreachable_findity_is_transient():
    dead = f"http://127.0.0.1:{free_port()}"
    with FindityClient(f"{dead}/api", token_url=f"{dead}/oauth/token", client_id="c",
                       client_secret="s", organization_id="o") as client:
        with pytest.raises(TransientError) as caught:
            client.list_unprocessed_exports()
    assert caught.value.code == "connection_error"


# --- answers the sandbox never gives: stubbed transport -------------------------------------------


def _stub_client(handler) -> FindityClient:
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return handler(request)

    return FindityClient("https://findity.test/api", token_url="https://findity.test/oauth/token",
                         client_id="c", client_secret="s", organization_id="o",
                         transport=httpx.MockTransport(route))


def test_a_body_of_the_wrong_shape_is_transient():
    """One rule for every client (shared/integrations/http.py): Findity answered, so a body we
    cannot read is an answer we may read next time, not a refusal. It was permanent before."""
    client = _stub_client(lambda request: httpx.Response(200, json={"data": [{"id": 1}]}))
    with client, pytest.raises(TransientError) as caught:
        client.list_unprocessed_exports()
    assert caught.value.code == "unexpected_response" and caught.value.sent
    assert "ExportList" in caught.value.message and caught.value.details


def test_retry_after_as_an_http_date():
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    client = _stub_client(lambda request: httpx.Response(
        429, headers={"Retry-After": format_datetime(when, usegmt=True)}))
    with client, pytest.raises(RateLimitedError) as caught:
        client.get_export("e")
    assert 20 <= caught.value.retry_after <= 31


def test_requests_carry_the_bearer_token_and_documented_paths():
    seen = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t"
        seen[(request.method, request.url.path, request.url.query.decode())] += 1
        return httpx.Response(200, json={"data": [], "meta": {"count": 0, "total": 0}})

    with _stub_client(handler) as client:
        client.list_unprocessed_exports()
    assert seen == {("GET", "/api/v1/connect/organizations/o/exports",
                     "status=UNPROCESSED&offset=0&max=100"): 1}
