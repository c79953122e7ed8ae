"""TripletexClient against the real Tripletex sandbox server (a subprocess speaking HTTP).

Each test makes its own sandbox company, so faults and request counts are its own. Faults are
the sandbox's knobs, not mocks: the client sees real 401s, 422s, 429s, 503s and slow answers.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import pytest

from devstack.processes import free_port
from shared.domain.vouchers import PostingDraft, VoucherDraft
from shared.integrations.errors import (
    AuthError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from shared.integrations.tripletex import TripletexClient, TripletexOptions
from shared.integrations.tripletex.client import dumps_json
from tests.fixtures.raw_server import reads_then_hangs_up
from tests.fixtures.tripletex_sandbox import TripletexSandbox

SESSION_CREATE = "PUT /token/session/:create"
VOUCHER_POST = "POST /ledger/voucher"


class RecordingTransport(httpx.HTTPTransport):
    """A real HTTP transport that keeps every request it sent, to inspect bodies and headers."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return super().handle_request(request)


def make_client(
    sandbox: TripletexSandbox, company: dict[str, Any], **kwargs: Any
) -> TripletexClient:
    return TripletexClient(
        sandbox.base_url,
        consumer_token=company["consumer_token"],
        employee_token=company["employee_token"],
        **kwargs,
    )


@pytest.fixture
def client(
    tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> Iterator[TripletexClient]:
    with make_client(tripletex_sandbox, tripletex_company) as client:
        yield client


def travel_draft(external_number: str = "exp-1", **overrides: Any) -> VoucherDraft:
    """A taxi at 12% VAT and office supplies at 25% VAT, owed to the employee (2930)."""
    fields: dict[str, Any] = {
        "external_number": external_number,
        "date": date(2026, 3, 18),
        "description": "Reiseregning mars",
        "postings": [
            PostingDraft(account_number="7140", amount="560.00", vat_code="13", description="Taxi"),
            PostingDraft(
                account_number="6800", amount="125.50", vat_code="1", description="Penner"
            ),
            PostingDraft(account_number="2930", amount="-685.50"),
        ],
    }
    fields.update(overrides)
    return VoucherDraft(**fields)


def simple_draft(
    external_number: str, debit: str, credit: str = "2930", amount: str = "100.00", **posting: Any
) -> VoucherDraft:
    return VoucherDraft(
        external_number=external_number,
        date=date(2026, 3, 18),
        description="Utlegg",
        postings=[
            PostingDraft(account_number=debit, amount=amount, **posting),
            PostingDraft(account_number=credit, amount=f"-{amount}"),
        ],
    )


# --- posting ---------------------------------------------------------------------------------


def test_post_voucher_books_rows_from_one_and_tripletex_splits_the_vat(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    posted = client.post_voucher(travel_draft())

    [voucher] = tripletex_sandbox.vouchers(tripletex_company["company_id"])
    assert posted.id == str(voucher["id"])
    assert posted.number == "1" and voucher["number"] == 1
    assert posted.reference == f"TTX-{voucher['id']}"
    assert posted.booked_on == date(2026, 3, 18)
    assert voucher["externalVoucherNumber"] == "exp-1"
    assert voucher["sentToLedger"] is True
    ours = [p for p in voucher["postings"] if not p["systemGenerated"]]
    assert [(p["row"], p["accountNumber"], p["amountGross"]) for p in ours] == [
        (1, "7140", "560.00"),
        (2, "6800", "125.50"),
        (3, "2930", "-685.50"),
    ]
    # The sandbox split the VAT out of the gross into row 0 on 2710, as Tripletex does.
    generated = sorted(
        (p["vatType"], p["accountNumber"], p["amount"])
        for p in voucher["postings"]
        if p["row"] == 0
    )
    assert generated == [("1", "2710", "25.10"), ("13", "2710", "60.00")]
    assert {p["accountNumber"]: p["amount"] for p in ours} == {
        "7140": "500.00",
        "6800": "100.40",
        "2930": "-685.50",
    }
    assert sum(Decimal(p["amount"]) for p in voucher["postings"]) == 0


def test_amounts_go_out_as_exact_two_decimal_json_numbers(
    tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    transport = RecordingTransport()
    with make_client(tripletex_sandbox, tripletex_company, transport=transport) as client:
        client.post_voucher(simple_draft("exp-dec", "6800", amount="0.10", vat_code="1"))
    [post] = [r for r in transport.requests if r.method == "POST"]
    body = post.content.decode()
    assert '"amountGross":0.10,"amountGrossCurrency":0.10' in body
    assert '"amountGross":-0.10' in body
    assert post.headers["content-type"] == "application/json; charset=utf-8"
    assert post.url.params["sendToLedger"] == "true"
    # What float arithmetic would get wrong, Decimal text keeps.
    assert dumps_json({"a": Decimal("0.1") + Decimal("0.2")}) == '{"a":0.30}'
    with pytest.raises(TypeError):
        dumps_json({"a": 0.3})
    # Everything else as json writes it: escapes, non-ASCII text, numbers, true/false/null.
    other = {"text": 'Blåbær "AS"\\ \n\t\u2028', "n": 7, "yes": True, "no": False, "none": None,
             "list": [1, "x"]}
    assert json.loads(dumps_json(other)) == other
    assert dumps_json(other) == json.dumps(other, ensure_ascii=False, separators=(",", ":"))


def test_voucher_type_and_dimensions_are_sent_as_references(
    tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    options = TripletexOptions(voucher_type_name="reiseregning")
    draft = VoucherDraft(
        external_number="exp-dims",
        date=date(2026, 3, 18),
        description="Annonse og programvare",
        postings=[
            PostingDraft(
                account_number="7320", amount="250.00", vat_code="1", department_number="2"
            ),
            PostingDraft(
                account_number="6420", amount="100.00", vat_code="1", project_number="1002"
            ),
            PostingDraft(account_number="2930", amount="-350.00"),
        ],
    )
    with make_client(tripletex_sandbox, tripletex_company, options=options) as client:
        client.post_voucher(draft)
    [voucher] = tripletex_sandbox.vouchers(tripletex_company["company_id"])
    assert voucher["voucherType"] == "Reiseregning"  # exact name match, case-insensitive
    by_account = {p["accountNumber"]: p for p in voucher["postings"] if p["row"] > 0}
    assert by_account["7320"]["department"] == "2"
    assert by_account["6420"]["project"] == "1002"


def test_send_to_ledger_false_leaves_a_draft_without_a_number(
    tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    options = TripletexOptions(send_to_ledger=False)
    with make_client(tripletex_sandbox, tripletex_company, options=options) as client:
        posted = client.post_voucher(simple_draft("exp-draft", "6800"))
        assert posted.number is None
        assert posted.reference == f"TTX-{posted.id}"
        # The reference stays the same when found again later.
        assert client.find_voucher("exp-draft") == posted
    [voucher] = tripletex_sandbox.vouchers(tripletex_company["company_id"])
    assert voucher["sentToLedger"] is False and voucher["number"] is None


def test_voucher_numbers_are_sequential(client: TripletexClient) -> None:
    numbers = [client.post_voucher(simple_draft(f"exp-seq-{i}", "6800")).number for i in range(3)]
    assert numbers == ["1", "2", "3"]


# --- finding ---------------------------------------------------------------------------------


def test_find_voucher_by_external_number(client: TripletexClient) -> None:
    assert client.find_voucher("exp-10") is None
    posted = client.post_voucher(simple_draft("exp-10", "6800"))
    assert client.find_voucher("exp-10") == posted
    # Exact match only: "exp-1" is not "exp-10".
    assert client.find_voucher("exp-1") is None


def test_voucher_that_tripletex_stored_before_failing_is_found(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    """The crash window the dedup key exists for: Tripletex accepted, we heard a 500."""
    tripletex_sandbox.set_faults(tripletex_company["company_id"], commit_then_fail=1)
    with pytest.raises(TransientError) as caught:
        client.post_voucher(simple_draft("exp-lost", "6800"))
    assert caught.value.status_code == 500
    found = client.find_voucher("exp-lost")
    assert found is not None
    [voucher] = tripletex_sandbox.vouchers(tripletex_company["company_id"])
    assert found.id == str(voucher["id"])


# --- attachments -----------------------------------------------------------------------------


def test_attach_receipts(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    posted = client.post_voucher(simple_draft("exp-att", "6800"))
    client.attach_receipt(posted.id, "kvittering.pdf", b"%PDF-1.4\n% receipt\n", "application/pdf")
    client.attach_receipt(posted.id, "taxi.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100, "image/png")
    [voucher] = tripletex_sandbox.vouchers(tripletex_company["company_id"])
    assert voucher["attachments"] == [
        {"filename": "kvittering.pdf", "contentType": "application/pdf", "size": 19},
        {"filename": "taxi.png", "contentType": "image/png", "size": 108},
    ]


def test_attachment_of_unsupported_type_is_refused_before_sending(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    posted = client.post_voucher(simple_draft("exp-att2", "6800"))
    with pytest.raises(PermanentError) as caught:
        client.attach_receipt(posted.id, "notes.txt", b"hello", "text/plain")
    assert caught.value.code == "unsupported_attachment_type"
    counts = tripletex_sandbox.request_counts(tripletex_company["company_id"])
    assert "POST /ledger/voucher/{voucherId}/attachment" not in counts


def test_attachment_to_a_missing_voucher_is_not_found(client: TripletexClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.attach_receipt("999999999", "r.pdf", b"%PDF-1.4", "application/pdf")
    assert caught.value.status_code == 404
    assert caught.value.request_id


# --- session ---------------------------------------------------------------------------------


def test_session_token_is_created_once_and_reused(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    who = client.check_connection()
    assert str(who.company_id) == tripletex_company["company_id"]
    assert who.employee_id == tripletex_company["employee_id"]
    client.post_voucher(simple_draft("exp-s1", "6800"))
    client.find_voucher("exp-s1")
    counts = tripletex_sandbox.request_counts(tripletex_company["company_id"])
    assert counts[SESSION_CREATE] == 1
    assert counts["GET /token/session/>whoAmI"] == 1


def test_expired_session_is_renewed_once_and_the_request_repeated(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    company_id = tripletex_company["company_id"]
    client.check_connection()
    assert tripletex_sandbox.expire_sessions(company_id) == 1
    posted = client.post_voucher(simple_draft("exp-renew", "6800"))  # first call gets a 401
    assert posted.number == "1"
    counts = tripletex_sandbox.request_counts(company_id)
    assert counts[SESSION_CREATE] == 2
    assert counts["GET /ledger/account"] == 2  # the 401 and its repetition
    assert len(tripletex_sandbox.vouchers(company_id)) == 1


def test_401_after_renewal_is_an_auth_error(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    company_id = tripletex_company["company_id"]
    tripletex_sandbox.set_faults(
        company_id,
        fail_next=[{"status": 401, "count": 5, "method": "GET", "path_contains": "whoAmI"}],
    )
    with pytest.raises(AuthError) as caught:
        client.check_connection()
    assert caught.value.status_code == 401 and caught.value.code == "unauthorized"
    counts = tripletex_sandbox.request_counts(company_id)
    assert counts[SESSION_CREATE] == 2  # renewed exactly once
    assert counts["GET /token/session/>whoAmI"] == 2


def test_wrong_tokens_are_an_auth_error_without_the_tokens_in_it(
    tripletex_sandbox: TripletexSandbox,
    tripletex_company: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    company = {**tripletex_company, "employee_token": "employee-wrong-secret-123"}
    caplog.set_level(logging.DEBUG)
    # The service quiets httpx to WARNING (shared.logs); this test needs its URL lines.
    caplog.set_level(logging.DEBUG, logger="httpx")
    with make_client(tripletex_sandbox, company) as client, pytest.raises(AuthError) as caught:
        client.check_connection()
    assert caught.value.code == "session_refused" and caught.value.status_code == 403
    text = str(caught.value) + repr(caught.value.__dict__) + caplog.text
    assert "employee-wrong-secret-123" not in text
    assert tripletex_company["consumer_token"] not in text
    assert "consumerToken=***" in caplog.text  # httpx logged the URL, redacted


def test_forbidden_is_an_auth_error(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    tripletex_sandbox.set_faults(
        tripletex_company["company_id"],
        fail_next=[{"status": 403, "path_contains": "/ledger/account"}],
    )
    with pytest.raises(AuthError) as caught:
        client.post_voucher(simple_draft("exp-403", "6800"))
    assert caught.value.code == "forbidden"


# --- preflight -------------------------------------------------------------------------------


def test_unknown_account_fails_before_any_post(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    with pytest.raises(PermanentError) as caught:
        client.post_voucher(simple_draft("exp-unknown", "7199"))
    error = caught.value
    assert error.code == "unknown_account" and not error.retryable
    assert (
        "account 7199 does not exist in Tripletex (company 0): map it to an existing account"
        in str(error)
    )
    counts = tripletex_sandbox.request_counts(tripletex_company["company_id"])
    assert counts["GET /ledger/account"] == 1
    assert VOUCHER_POST not in counts
    assert tripletex_sandbox.vouchers(tripletex_company["company_id"]) == []


@pytest.mark.parametrize(
    ("draft", "code", "words"),
    [
        (
            simple_draft("p1", "6800", vat_code="99"),
            "unknown_vat_type",
            "VAT code 99 does not exist",
        ),
        (
            simple_draft("p2", "6800", credit="2400"),
            "sub_ledger_account",
            "account 2400 (Leverandørgjeld) is a VENDOR sub-ledger account: Tripletex needs a supplier",
        ),
        (simple_draft("p3", "6800", credit="1500"), "sub_ledger_account", "needs a customer"),
        (simple_draft("p4", "6800", credit="2910"), "sub_ledger_account", "needs an employee"),
        (
            simple_draft("p5", "7320"),
            "department_required",
            "account 7320 (Reklamekostnad) requires a department",
        ),
        (simple_draft("p6", "6420"), "project_required", "requires a project"),
        (simple_draft("p7", "7100", vat_code="1"), "vat_locked", "only accepts VAT code 0"),
        (
            simple_draft("p8", "7140", vat_code="1"),
            "vat_not_allowed",
            "VAT code 1 is not allowed on account 7140",
        ),
        (
            simple_draft("p9", "6800", department_number="77"),
            "unknown_department",
            "department 77 does not exist",
        ),
        (
            simple_draft("p10", "6800", project_number="9999"),
            "unknown_project",
            "project 9999 does not exist",
        ),
        (
            simple_draft("p11", "6800").model_copy(update={"currency": "EUR"}),
            "unsupported_currency",
            "the voucher is in EUR",
        ),
    ],
)
def test_preflight_refuses_what_tripletex_would_reject(
    client: TripletexClient,
    tripletex_sandbox: TripletexSandbox,
    tripletex_company: dict[str, Any],
    draft: VoucherDraft,
    code: str,
    words: str,
) -> None:
    with pytest.raises(PermanentError) as caught:
        client.post_voucher(draft)
    assert caught.value.code == code
    assert words in str(caught.value)
    assert VOUCHER_POST not in tripletex_sandbox.request_counts(tripletex_company["company_id"])


def test_preflight_lists_every_problem_at_once(client: TripletexClient) -> None:
    draft = VoucherDraft(
        external_number="exp-many",
        date=date(2026, 3, 18),
        description="x",
        postings=[
            PostingDraft(account_number="7199", amount="10", vat_code="42"),
            PostingDraft(account_number="2400", amount="-10"),
        ],
    )
    with pytest.raises(PermanentError) as caught:
        client.post_voucher(draft)
    assert caught.value.code == "unknown_account"
    assert len(caught.value.details) == 3
    assert any("VAT code 42" in d for d in caught.value.details)
    assert any("2400" in d for d in caught.value.details)


def test_preflight_alone_checks_without_posting_and_costs_no_extra_lookups(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    with pytest.raises(PermanentError) as caught:
        client.preflight(simple_draft("exp-pre-bad", "9999"))
    assert caught.value.code == "unknown_account"
    draft = travel_draft("exp-pre-ok")
    client.preflight(draft)
    client.post_voucher(draft)
    counts = tripletex_sandbox.request_counts(tripletex_company["company_id"])
    # One account lookup for the bad draft, one for the good one; none repeated by the post.
    assert counts["GET /ledger/account"] == 2
    assert counts["GET /ledger/vatType"] == 1
    assert counts[VOUCHER_POST] == 1


def test_lookups_are_cached_per_client(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    client.post_voucher(travel_draft("exp-c1"))
    client.post_voucher(travel_draft("exp-c2"))
    counts = tripletex_sandbox.request_counts(tripletex_company["company_id"])
    assert counts["GET /ledger/account"] == 1
    assert counts["GET /ledger/vatType"] == 1
    assert counts["GET /currency"] == 1
    assert counts[VOUCHER_POST] == 2


def test_ids_are_per_company(tripletex_sandbox: TripletexSandbox) -> None:
    """Two connections never share looked-up ids: each company's chart has its own."""
    first, second = tripletex_sandbox.create_company("A"), tripletex_sandbox.create_company("B")
    with make_client(tripletex_sandbox, first) as a, make_client(tripletex_sandbox, second) as b:
        assert a.accounts({"6800"})["6800"].id != b.accounts({"6800"})["6800"].id
        a.post_voucher(simple_draft("exp-a", "6800"))
        b.post_voucher(simple_draft("exp-b", "6800"))
    assert [
        v["externalVoucherNumber"] for v in tripletex_sandbox.vouchers(first["company_id"])
    ] == ["exp-a"]


# --- Tripletex's own rejections --------------------------------------------------------------


def test_422_from_tripletex_is_a_permanent_error_in_plain_words(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    company_id = tripletex_company["company_id"]
    client.post_voucher(simple_draft("exp-ok", "6800"))  # caches account 6800
    # The accountant turns 6800 into an account that needs a department; our cache is stale,
    # so the preflight passes and Tripletex itself rejects the voucher.
    tripletex_sandbox.change_account(company_id, 6800, requires_department=True)
    with pytest.raises(PermanentError) as caught:
        client.post_voucher(simple_draft("exp-stale", "6800"))
    error = caught.value
    assert error.status_code == 422 and error.code == "validation_failed"
    assert error.request_id
    assert str(error) == (
        "Tripletex rejected the voucher: postings.department.id: Avdeling må angis for denne "
        f"kontoen. (the department is missing or unknown) (request id {error.request_id})"
    )
    assert error.details == [
        "postings.department.id: Avdeling må angis for denne kontoen. (the department is missing or unknown)"
    ]
    # The rejection dropped the stale cache: the next try is refused by the preflight instead.
    with pytest.raises(PermanentError) as again:
        client.post_voucher(simple_draft("exp-stale", "6800"))
    assert again.value.code == "department_required"
    assert tripletex_sandbox.request_counts(company_id)[VOUCHER_POST] == 2


def test_409_is_a_permanent_conflict(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    tripletex_sandbox.set_faults(
        tripletex_company["company_id"],
        fail_next=[{"status": 409, "method": "POST", "path_contains": "/ledger/voucher"}],
    )
    with pytest.raises(PermanentError) as caught:
        client.post_voucher(simple_draft("exp-409", "6800"))
    assert caught.value.code == "conflict" and not caught.value.retryable


# --- transient failures and limits -----------------------------------------------------------


def test_503_is_transient_and_nothing_is_booked(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    company_id = tripletex_company["company_id"]
    tripletex_sandbox.set_faults(
        company_id,
        fail_next=[{"status": 503, "method": "POST", "path_contains": "/ledger/voucher"}],
    )
    with pytest.raises(TransientError) as caught:
        client.post_voucher(simple_draft("exp-503", "6800"))
    assert caught.value.retryable and caught.value.status_code == 503
    assert not isinstance(caught.value, RateLimitedError)
    assert tripletex_sandbox.vouchers(company_id) == []
    assert client.post_voucher(simple_draft("exp-503", "6800")).number == "1"  # rule used up


def test_error_rate_gives_transient_errors(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    tripletex_sandbox.set_faults(tripletex_company["company_id"], error_rate=1.0)
    with pytest.raises(TransientError):
        client.post_voucher(simple_draft("exp-rate", "6800"))


@pytest.mark.parametrize(
    ("rule", "retry_after"),
    [
        ({"retry_after": 7}, 7.0),
        ({"reset_header": True, "reset_seconds": 3}, 3.0),
        ({"retry_after": 2, "reset_header": True, "reset_seconds": 9}, 2.0),  # Retry-After wins
        ({}, None),
    ],
)
def test_429_carries_retry_after(
    client: TripletexClient,
    tripletex_sandbox: TripletexSandbox,
    tripletex_company: dict[str, Any],
    rule: dict[str, Any],
    retry_after: float | None,
) -> None:
    tripletex_sandbox.set_faults(
        tripletex_company["company_id"],
        fail_next=[{"status": 429, "method": "POST", "path_contains": "/ledger/voucher", **rule}],
    )
    with pytest.raises(RateLimitedError) as caught:
        client.post_voucher(simple_draft("exp-429", "6800"))
    assert caught.value.retry_after == retry_after
    assert caught.value.retryable and caught.value.status_code == 429


def test_real_rate_limit_window(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    tripletex_sandbox.set_faults(
        tripletex_company["company_id"], rate_limit={"limit": 3, "window_seconds": 30}
    )
    client.check_connection()  # session create + whoAmI: 2 of 3
    assert client.rate_limit is not None
    assert (client.rate_limit.limit, client.rate_limit.remaining) == (3, 1)
    client.find_voucher("x")  # 3 of 3
    with pytest.raises(RateLimitedError) as caught:
        client.find_voucher("y")
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 30
    assert client.rate_limit.remaining == 0


def test_rate_limit_without_reset_header_has_no_retry_after(
    client: TripletexClient, tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    tripletex_sandbox.set_faults(
        tripletex_company["company_id"],
        rate_limit={"limit": 2, "window_seconds": 30, "send_reset_header": False},
    )
    client.check_connection()
    with pytest.raises(RateLimitedError) as caught:
        client.find_voucher("y")
    assert caught.value.retry_after is None


def test_slow_answer_is_a_transient_timeout(
    tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    tripletex_sandbox.set_faults(tripletex_company["company_id"], latency_ms=1500)
    timeout = httpx.Timeout(0.3, connect=2.0)
    with make_client(tripletex_sandbox, tripletex_company, timeout=timeout) as client:
        with pytest.raises(TransientError) as caught:
            client.check_connection()
    assert caught.value.code == "timeout" and caught.value.retryable


def test_nothing_listening_is_a_transient_connection_error() -> None:
    client = TripletexClient(
        f"http://127.0.0.1:{free_port()}/v2", consumer_token="c", employee_token="e"
    )
    with client, pytest.raises(TransientError) as caught:
        client.check_connection()
    assert caught.value.code == "connection_error"


def test_connection_dropped_mid_request_is_transient_connection_lost() -> None:
    """A server that reads the request and hangs up: the outcome of a POST would be unknown."""
    with reads_then_hangs_up() as url:
        with TripletexClient(f"{url}/v2", consumer_token="c", employee_token="e") as client:
            with pytest.raises(TransientError) as caught:
                client.check_connection()
    assert caught.value.code == "connection_lost"


def test_default_timeouts_come_from_settings() -> None:
    from shared.config import get_settings

    settings = get_settings()
    with TripletexClient("http://127.0.0.1:9/v2", consumer_token="c", employee_token="e") as client:
        timeout = client._http.client.timeout
    assert timeout.connect == settings.http_connect_timeout
    assert timeout.read == settings.http_read_timeout


def _burst(client: TripletexClient, threads: int, draft_for) -> list[BaseException]:
    """``threads`` threads released at once, each preparing its own voucher on ``client`` (what a
    threads-pool worker does with a fresh client when a batch arrives). Returns what they raised."""
    barrier = threading.Barrier(threads)
    raised: list[BaseException] = []

    def prepare() -> None:
        barrier.wait()
        try:
            client.prepare_voucher(draft_for(threading.get_ident()))
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            raised.append(error)

    workers = [threading.Thread(target=prepare) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return raised


COLD_START_LOOKUPS = ("PUT /token/session/:create", "GET /ledger/account", "GET /ledger/vatType",
                      "GET /currency")


def test_sixteen_threads_on_a_cold_client_make_each_lookup_once(
    tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    """Worker threads share one client per connection: a burst must not stampede the session or
    the lookups (single flight: one thread fetches, the others wait for its result)."""
    company_id = tripletex_company["company_id"]
    tripletex_sandbox.set_faults(company_id, latency_ms=50)  # the others arrive mid-fetch
    with make_client(tripletex_sandbox, tripletex_company) as client:
        raised = _burst(client, 16, lambda ident: simple_draft(f"exp-{ident}", "6800", vat_code="1"))
    assert raised == []
    counts = tripletex_sandbox.request_counts(company_id)
    assert {path: counts.get(path, 0) for path in COLD_START_LOOKUPS} == dict.fromkeys(
        COLD_START_LOOKUPS, 1), counts


def test_a_failed_lookup_is_not_cached(
    tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    """The thread whose fetch failed reports the error; the next voucher fetches again."""
    company_id = tripletex_company["company_id"]
    tripletex_sandbox.set_faults(company_id, latency_ms=50, fail_next=[
        {"status": 503, "count": 1, "method": "GET", "path_contains": "/ledger/account"}])
    with make_client(tripletex_sandbox, tripletex_company) as client:
        raised = _burst(client, 4, lambda ident: simple_draft(f"exp-{ident}", "6800"))
        assert len(raised) <= 4 and all(isinstance(e, TransientError) for e in raised), raised
        client.prepare_voucher(simple_draft("exp-after", "6800"))
    counts = tripletex_sandbox.request_counts(company_id)
    # The failed fetch and one successful fetch; never one per thread.
    assert counts.get("GET /ledger/account") == 2, counts


def test_forgetting_lookups_under_a_burst_never_breaks_a_resolving_thread(
    tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    """A refused voucher drops the caches (``send_voucher``) while other threads resolve theirs:
    they must see either the old entries or fetch anew, never a half-cleared cache."""
    with make_client(tripletex_sandbox, tripletex_company) as client:
        stop = threading.Event()

        def forget() -> None:
            while not stop.is_set():
                client.forget_lookups()

        forgetter = threading.Thread(target=forget)
        forgetter.start()
        try:
            raised = _burst(client, 8, lambda ident: simple_draft(f"exp-{ident}", "6800",
                                                                  vat_code="1"))
        finally:
            stop.set()
            forgetter.join()
    assert raised == []


class LookupsMeetTransport(httpx.HTTPTransport):
    """Holds each of the cold-start lookups until all three are in flight at once: a client that
    sends them one after another never gets past the first (the barrier breaks)."""

    LOOKUPS = ("/ledger/account", "/ledger/vatType", "/currency")

    def __init__(self) -> None:
        super().__init__()
        self.meeting = threading.Barrier(len(self.LOOKUPS), timeout=10)
        self.sent: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v2")
        self.sent.append(f"{request.method} {path}")
        if path in self.LOOKUPS:
            self.meeting.wait()
        return super().handle_request(request)


def test_a_cold_client_sends_its_lookups_together_after_the_session(
    tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    """Every export in flight waits for a cold client's lookups: they go out side by side once
    the session exists (two round trips), not one after another (four)."""
    transport = LookupsMeetTransport()
    with make_client(tripletex_sandbox, tripletex_company, transport=transport) as client:
        client.prepare_voucher(simple_draft("exp-cold", "6800", vat_code="1"))
        assert transport.sent[0] == "PUT /token/session/:create"
        assert sorted(transport.sent[1:]) == ["GET /currency", "GET /ledger/account",
                                              "GET /ledger/vatType"]
        client.forget_lookups()  # cold again, session kept: the lookups meet again
        client.prepare_voucher(simple_draft("exp-forgotten", "6800", vat_code="1"))
        assert len(transport.sent) == 7


def test_with_requests_refused_only_a_warm_client_prepares(
    tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    """The worker prepares inside its claim's transaction with requests refused
    (``shared.integrations.http.requests_refused``): a cold client refuses without a request, a
    warm one prepares the same body from its caches, and a lock another thread holds (a single
    flight of lookups in progress) refuses at once instead of holding the transaction."""
    from shared.integrations.http import RequestRefused, requests_refused

    company_id = tripletex_company["company_id"]
    draft = simple_draft("exp-warm", "6800", vat_code="1")
    with make_client(tripletex_sandbox, tripletex_company) as client:
        with requests_refused(), pytest.raises(RequestRefused):
            client.prepare_voucher(draft)
        assert tripletex_sandbox.request_counts(company_id) == {}
        warm = client.prepare_voucher(draft)  # the lookups, outside
        before = tripletex_sandbox.request_counts(company_id)
        with requests_refused():
            assert client.prepare_voucher(draft).payload == warm.payload
        assert tripletex_sandbox.request_counts(company_id) == before

        held, release = threading.Event(), threading.Event()

        def hold_the_lookups() -> None:
            with client._lookup_lock:
                held.set()
                release.wait(5)

        holder = threading.Thread(target=hold_the_lookups)
        holder.start()
        try:
            held.wait(5)
            with requests_refused(), pytest.raises(RequestRefused):
                client.prepare_voucher(draft)
        finally:
            release.set()
            holder.join()
        with requests_refused():
            assert client.prepare_voucher(draft).payload == warm.payload
