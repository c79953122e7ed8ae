"""The Tripletex sandbox's own rules, spoken to with plain httpx (no project client).

These pin down what the sandbox promises to behave like (Tripletex's auth, envelopes, error
bodies, voucher validation, VAT split, numbering) and what its control knobs do, so that the
client tests built on it test against something known.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.fixtures.tripletex_sandbox import TripletexSandbox

ERROR_KEYS = {
    "status",
    "code",
    "message",
    "link",
    "developerMessage",
    "validationMessages",
    "requestId",
}
TOMORROW = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()


@dataclass
class Api:
    """A logged-in HTTP client for one sandbox company, plus its ids."""

    http: httpx.Client
    company: dict[str, Any]
    accounts: dict[int, int]
    vat_types: dict[str, int]

    def voucher(self, postings: list[dict[str, Any]], **fields: Any) -> httpx.Response:
        body = {"date": "2026-03-18", "description": "Test", "postings": postings, **fields}
        return self.http.post("/ledger/voucher", json=body)

    def posting(self, row: int, account: int, amount: str, **extra: Any) -> dict[str, Any]:
        # httpx's json= cannot write Decimal; amounts with 2 decimals survive float exactly here.
        return {
            "row": row,
            "account": {"id": self.accounts[account]},
            "amountGross": float(amount),
            "amountGrossCurrency": float(amount),
            **extra,
        }


def session_token(sandbox: TripletexSandbox, company: dict[str, Any]) -> str:
    response = httpx.put(
        f"{sandbox.base_url}/token/session/:create",
        params={
            "consumerToken": company["consumer_token"],
            "employeeToken": company["employee_token"],
            "expirationDate": TOMORROW,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["value"]["token"]


@pytest.fixture
def api(tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]) -> Iterator[Api]:
    token = session_token(tripletex_sandbox, tripletex_company)
    with httpx.Client(base_url=tripletex_sandbox.base_url, auth=("0", token), timeout=10) as http:
        accounts = {a["number"]: a["id"] for a in http.get("/ledger/account").json()["values"]}
        vat_types = {v["number"]: v["id"] for v in http.get("/ledger/vatType").json()["values"]}
        yield Api(http, tripletex_company, accounts, vat_types)


def assert_validation_error(response: httpx.Response, field: str, words: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["status"] == 422 and body["code"] == 18000
    assert body["requestId"] == response.headers["x-tlx-request-id"]
    messages = {(m["field"], m["message"]) for m in body["validationMessages"]}
    assert any(f == field and words in m for f, m in messages), messages
    return body


# --- sessions and auth -----------------------------------------------------------------------


def test_session_needs_matching_tokens_and_an_expiration_date(
    tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    url = f"{tripletex_sandbox.base_url}/token/session/:create"
    good = {
        "consumerToken": tripletex_company["consumer_token"],
        "employeeToken": tripletex_company["employee_token"],
    }
    missing = httpx.put(url, params=good)
    assert missing.status_code == 422 and missing.json()["code"] == 21000
    assert missing.json()["validationMessages"] == [
        {"field": "expirationDate", "message": "Kan ikke være null."}
    ]
    past = httpx.put(url, params={**good, "expirationDate": "2020-01-01"})
    assert past.status_code == 422
    other = tripletex_sandbox.create_company("Other AS")
    mixed = httpx.put(
        url, params={**good, "employeeToken": other["employee_token"], "expirationDate": TOMORROW}
    )
    assert mixed.status_code == 403 and mixed.json()["code"] == 9000
    created = httpx.put(url, params={**good, "expirationDate": TOMORROW})
    assert created.status_code == 200
    assert created.json()["value"]["expirationDate"] == TOMORROW
    assert created.json()["value"]["token"]


@pytest.mark.parametrize("auth", [None, ("0", "not-a-session"), ("0", "")])
def test_api_needs_basic_auth_with_a_live_session(
    tripletex_sandbox: TripletexSandbox, auth: tuple[str, str] | None
) -> None:
    response = httpx.get(f"{tripletex_sandbox.base_url}/ledger/account", auth=auth)
    assert response.status_code == 401
    body = response.json()
    assert set(body) == ERROR_KEYS and body["code"] == 3000
    assert body["requestId"] == response.headers["x-tlx-request-id"]


def test_company_id_as_user_and_expired_sessions(
    tripletex_sandbox: TripletexSandbox, tripletex_company: dict[str, Any]
) -> None:
    token = session_token(tripletex_sandbox, tripletex_company)
    url = f"{tripletex_sandbox.base_url}/token/session/>whoAmI"
    assert httpx.get(url, auth=(tripletex_company["company_id"], token)).status_code == 200
    assert httpx.get(url, auth=("424242", token)).status_code == 403
    who = httpx.get(url, auth=("0", token)).json()["value"]
    assert str(who["companyId"]) == tripletex_company["company_id"]
    tripletex_sandbox.expire_sessions(tripletex_company["company_id"])
    expired = httpx.get(url, auth=("0", token))
    assert expired.status_code == 401 and expired.json()["code"] == 3000


def test_every_api_answer_has_request_id_and_rate_limit_headers(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    for response in (
        api.http.get("/ledger/account", params={"number": "1920"}),
        api.http.get("/ledger/voucher/123456789"),
        httpx.get(f"{tripletex_sandbox.base_url}/ledger/account"),
    ):
        assert response.headers["x-tlx-request-id"]
        for header in ("X-Rate-Limit-Limit", "X-Rate-Limit-Remaining", "X-Rate-Limit-Reset"):
            assert int(response.headers[header]) >= 0


# --- lookups ---------------------------------------------------------------------------------


def test_account_lookup_is_a_list_envelope_with_expanded_vat_type(api: Api) -> None:
    response = api.http.get(
        "/ledger/account",
        params={
            "number": "6800,2400,1500,9999",
            "fields": "id,number,name,vatType(*),vatLocked,legalVatTypes,ledgerType,requiresDepartment,requiresProject",
        },
    )
    body = response.json()
    assert set(body) == {"fullResultSize", "from", "count", "versionDigest", "values"}
    assert body["fullResultSize"] == 3 and body["count"] == 3
    accounts = {a["number"]: a for a in body["values"]}
    assert accounts[2400]["ledgerType"] == "VENDOR" and accounts[1500]["ledgerType"] == "CUSTOMER"
    assert accounts[6800]["vatType"]["number"] == "1"
    assert accounts[6800]["vatType"]["percentage"] == 25


def test_other_lookups(api: Api) -> None:
    vat = api.http.get("/ledger/vatType", params={"number": "1,13"}).json()["values"]
    assert sorted((v["number"], v["percentage"]) for v in vat) == [("1", 25), ("13", 12)]
    types = api.http.get("/ledger/voucherType", params={"name": "reise"}).json()["values"]
    assert [t["name"] for t in types] == ["Reiseregning"]
    [nok] = api.http.get("/currency", params={"code": "NOK"}).json()["values"]
    assert nok["code"] == "NOK"
    [department] = api.http.get("/department", params={"departmentNumber": "2"}).json()["values"]
    assert department["name"] == "Salg"
    [project] = api.http.get("/project", params={"number": "1001"}).json()["values"]
    assert project["number"] == "1001"
    paged = api.http.get("/ledger/account", params={"from": 2, "count": 3}).json()
    assert paged["from"] == 2 and paged["count"] == 3 and paged["fullResultSize"] > 10


def test_ids_differ_between_companies(api: Api, tripletex_sandbox: TripletexSandbox) -> None:
    other = tripletex_sandbox.create_company("Other AS")
    token = session_token(tripletex_sandbox, other)
    other_accounts = httpx.get(
        f"{tripletex_sandbox.base_url}/ledger/account", params={"number": "6800"}, auth=("0", token)
    ).json()["values"]
    assert other_accounts[0]["id"] != api.accounts[6800]


# --- vouchers: validation --------------------------------------------------------------------


def test_balanced_voucher_is_stored_with_the_vat_split_into_row_zero(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    response = api.voucher(
        [
            api.posting(1, 6540, "1250.00", vatType={"id": api.vat_types["1"]}),
            api.posting(2, 2930, "-1250.00"),
        ],
        externalVoucherNumber="exp-1",
    )
    assert response.status_code == 201, response.text
    value = response.json()["value"]
    assert (
        value["number"] == 1 and value["year"] == 2026 and value["externalVoucherNumber"] == "exp-1"
    )
    by_row = {(p["row"], p["account"]["id"]): p for p in value["postings"]}
    assert by_row[(1, api.accounts[6540])]["amount"] == 1000
    assert by_row[(1, api.accounts[6540])]["amountGross"] == 1250
    vat = by_row[(0, api.accounts[2710])]
    assert vat["amount"] == 250 and vat["systemGenerated"] is True
    [stored] = tripletex_sandbox.vouchers(api.company["company_id"])
    assert sum(Decimal(p["amount"]) for p in stored["postings"]) == 0
    assert b'"amountGross":1250.00' in response.content  # exact decimals on the wire


def posting_rule_cases(api: Api) -> list[tuple[list[dict[str, Any]], dict[str, Any], str, str]]:
    """(postings, voucher fields, field, words): one broken rule each."""
    p = api.posting
    return [
        ([p(1, 6800, "100.00"), p(2, 2930, "-90.00")], {}, "postings", "ikke i balanse"),
        ([p(0, 6800, "100.00"), p(1, 2930, "-100.00")], {}, "postings.row", "1 eller høyere"),
        (
            [{"row": 1, "account": {"id": 1}, "amountGross": 100.0}, p(2, 2930, "-100.00")],
            {},
            "postings.account.id",
            "finnes ikke",
        ),
        (
            [p(1, 6800, "100.00"), p(2, 2400, "-100.00")],
            {},
            "postings.supplier.id",
            "Leverandør mangler.",
        ),
        (
            [p(1, 1500, "100.00"), p(2, 2930, "-100.00")],
            {},
            "postings.customer.id",
            "Kunde mangler.",
        ),
        (
            [p(1, 6800, "100.00"), p(2, 2910, "-100.00")],
            {},
            "postings.employee.id",
            "Ansatt mangler.",
        ),
        (
            [p(1, 7100, "100.00", vatType={"id": api.vat_types["1"]}), p(2, 2930, "-100.00")],
            {},
            "postings.vatType.id",
            "låst til mva-kode 0",
        ),
        (
            [p(1, 7140, "100.00", vatType={"id": api.vat_types["1"]}), p(2, 2930, "-100.00")],
            {},
            "postings.vatType.id",
            "ikke tillatt",
        ),
        ([p(1, 7320, "100.00"), p(2, 2930, "-100.00")], {}, "postings.department.id", "Avdeling"),
        ([p(1, 6420, "100.00"), p(2, 2930, "-100.00")], {}, "postings.project.id", "Prosjekt"),
        (
            [p(1, 6800, "100.00"), p(2, 2930, "-100.00")],
            {"date": None},
            "date",
            "Kan ikke være null.",
        ),
        (
            [p(1, 6800, "100.00"), p(2, 2930, "-100.00")],
            {"externalVoucherNumber": "x" * 71},
            "externalVoucherNumber",
            "Maksimal lengde er 70",
        ),
        (
            [p(1, 6800, "100.005"), p(2, 2930, "-100.005")],
            {},
            "postings.amountGross",
            "to desimaler",
        ),
        (
            [p(1, 6800, "100.00", amountGrossCurrency=90.0), p(2, 2930, "-100.00")],
            {},
            "postings.amountGrossCurrency",
            "lik beløpet",
        ),
    ]


@pytest.mark.parametrize("case", range(14))
def test_voucher_validation_rules(api: Api, tripletex_sandbox: TripletexSandbox, case: int) -> None:
    postings, fields, field, words = posting_rule_cases(api)[case]
    assert_validation_error(api.voucher(postings, **fields), field, words)
    assert tripletex_sandbox.vouchers(api.company["company_id"]) == []


def test_sub_ledger_postings_are_accepted_with_their_party(api: Api) -> None:
    response = api.voucher(
        [
            api.posting(1, 6800, "100.00", vatType={"id": api.vat_types["1"]}),
            api.posting(2, 2400, "-100.00", supplier={"id": api.company["supplier_id"]}),
        ]
    )
    assert response.status_code == 201, response.text
    response = api.voucher(
        [
            api.posting(1, 2910, "100.00", employee={"id": api.company["employee_id"]}),
            api.posting(2, 1920, "-100.00"),
        ]
    )
    assert response.status_code == 201, response.text


def test_exactly_70_characters_are_allowed(api: Api) -> None:
    response = api.voucher(
        [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")],
        externalVoucherNumber="x" * 70,
    )
    assert response.status_code == 201


def test_invalid_json_is_422(api: Api) -> None:
    response = api.http.post(
        "/ledger/voucher", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["code"] == 22000


# --- vouchers: numbering, search, attachments ------------------------------------------------


def test_numbers_are_sequential_per_company_and_year_and_drafts_get_none(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    def post(day: str, **params: Any) -> dict[str, Any]:
        body = {
            "date": day,
            "postings": [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")],
        }
        response = api.http.post("/ledger/voucher", json=body, params=params)
        assert response.status_code == 201, response.text
        return response.json()["value"]

    assert [post("2026-01-05")["number"], post("2026-02-05")["number"]] == [1, 2]
    assert post("2025-12-30")["number"] == 1  # a new year, a new sequence
    draft = post("2026-03-01", sendToLedger="false")
    assert draft["number"] == 0 and draft["tempNumber"] > 0
    # Another company starts from 1.
    other = tripletex_sandbox.create_company("Other AS")
    token = session_token(tripletex_sandbox, other)
    with httpx.Client(base_url=tripletex_sandbox.base_url, auth=("0", token)) as http:
        ids = {a["number"]: a["id"] for a in http.get("/ledger/account").json()["values"]}
        body = {
            "date": "2026-01-05",
            "postings": [
                {"row": 1, "account": {"id": ids[6800]}, "amountGross": 1.0},
                {"row": 2, "account": {"id": ids[2930]}, "amountGross": -1.0},
            ],
        }
        assert http.post("/ledger/voucher", json=body).json()["value"]["number"] == 1


def test_search_by_external_number_and_get_by_id(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    postings = [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]
    first = api.voucher(postings, externalVoucherNumber="exp-7").json()["value"]
    # Tripletex has no idempotency key: the same external number twice is two vouchers.
    second = api.voucher(postings, externalVoucherNumber="exp-7").json()["value"]
    api.voucher(postings, externalVoucherNumber="exp-70")
    found = api.http.get(
        "/ledger/voucher/>externalVoucherNumber",
        params={"externalVoucherNumber": "exp-7", "fields": "id,number"},
    ).json()
    assert found["fullResultSize"] == 2
    assert [v["id"] for v in found["values"]] == [first["id"], second["id"]]
    none = api.http.get(
        "/ledger/voucher/>externalVoucherNumber", params={"externalVoucherNumber": "nope"}
    )
    assert none.json()["values"] == [] and none.json()["count"] == 0
    assert (
        api.http.get(f"/ledger/voucher/{first['id']}").json()["value"]["externalVoucherNumber"]
        == "exp-7"
    )
    # Another company's voucher does not exist for this one.
    other = tripletex_sandbox.create_company("Other AS")
    token = session_token(tripletex_sandbox, other)
    missing = httpx.get(
        f"{tripletex_sandbox.base_url}/ledger/voucher/{first['id']}", auth=("0", token)
    )
    assert missing.status_code == 404 and missing.json()["code"] == 6000


def test_attachments(api: Api, tripletex_sandbox: TripletexSandbox) -> None:
    voucher = api.voucher([api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]).json()[
        "value"
    ]
    url = f"/ledger/voucher/{voucher['id']}/attachment"
    for name, kind in (
        ("a.pdf", "application/pdf"),
        ("b.jpg", "image/jpeg"),
        ("c.tiff", "image/tiff"),
    ):
        response = api.http.post(url, files={"file": (name, b"data-" + name.encode(), kind)})
        assert response.status_code == 201, response.text
        assert response.json()["value"]["attachment"] is not None
    assert_validation_error(
        api.http.post(url, files={"file": ("x.txt", b"hi", "text/plain")}),
        "file",
        "Ugyldig filformat",
    )
    assert_validation_error(
        api.http.post(url, files={"other": ("x.pdf", b"hi", "application/pdf")}),
        "file",
        "Fil mangler",
    )
    assert (
        api.http.post(
            "/ledger/voucher/987654321/attachment",
            files={"file": ("a.pdf", b"x", "application/pdf")},
        ).status_code
        == 404
    )
    [stored] = tripletex_sandbox.vouchers(api.company["company_id"])
    assert [(a["contentType"], a["size"]) for a in stored["attachments"]] == [
        ("application/pdf", 10),
        ("image/jpeg", 10),
        ("image/tiff", 11),
    ]


# --- control knobs ---------------------------------------------------------------------------


def test_fail_next_rules_are_consumed_in_order(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    company_id = api.company["company_id"]
    tripletex_sandbox.set_faults(
        company_id,
        fail_next=[
            {"status": 503, "count": 2, "method": "GET", "path_contains": "/ledger/account"},
            {"status": 429, "count": 1, "method": "GET", "retry_after": 4},
            {"status": 500, "count": 1, "method": "POST"},
        ],
    )
    statuses = [api.http.get("/ledger/account", params={"number": "1920"}) for _ in range(4)]
    assert [r.status_code for r in statuses] == [503, 503, 429, 200]
    assert statuses[2].headers["Retry-After"] == "4"
    assert statuses[2].headers["X-Rate-Limit-Remaining"] == "0"
    assert "X-Rate-Limit-Reset" not in statuses[2].headers
    assert statuses[0].json()["status"] == 503
    tripletex_sandbox.clear_faults(company_id)
    posted = api.voucher([api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")])
    assert posted.status_code == 201  # the POST rule went with the clear


def test_error_rate_is_seeded(api: Api, tripletex_sandbox: TripletexSandbox) -> None:
    company_id = api.company["company_id"]
    postings = [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]

    def run() -> list[int]:
        tripletex_sandbox.set_faults(company_id, error_rate=0.5, seed=7)
        return [api.voucher(postings).status_code for _ in range(12)]

    first, second = run(), run()
    assert first == second
    assert set(first) == {201, 503}
    assert api.http.get("/ledger/account").status_code == 200  # only voucher POSTs fail


def test_rate_limit_refuses_for_the_rest_of_the_window(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    tripletex_sandbox.set_faults(
        api.company["company_id"], rate_limit={"limit": 2, "window_seconds": 1}
    )
    responses = [api.http.get("/ledger/vatType") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [r.headers["X-Rate-Limit-Remaining"] for r in responses] == ["1", "0", "0"]
    assert responses[2].headers["X-Rate-Limit-Limit"] == "2"
    assert int(responses[2].headers["X-Rate-Limit-Reset"]) >= 1
    time.sleep(1.1)
    assert api.http.get("/ledger/vatType").status_code == 200


def test_commit_then_fail_stores_the_voucher(api: Api, tripletex_sandbox: TripletexSandbox) -> None:
    tripletex_sandbox.set_faults(api.company["company_id"], commit_then_fail=1)
    postings = [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]
    assert api.voucher(postings, externalVoucherNumber="exp-ctf").status_code == 500
    assert [
        v["externalVoucherNumber"] for v in tripletex_sandbox.vouchers(api.company["company_id"])
    ] == ["exp-ctf"]
    assert api.voucher(postings).status_code == 201


def test_post_hold_shows_the_voucher_before_answering_and_blocks_nothing_else(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    company_id = api.company["company_id"]
    tripletex_sandbox.set_faults(company_id, post_hold_ms=1500)
    postings = [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]
    result: dict[str, Any] = {}
    poster = threading.Thread(
        target=lambda: result.update(r=api.voucher(postings, externalVoucherNumber="exp-hold"))
    )
    started = time.monotonic()
    poster.start()
    deadline = started + 1.2
    while not tripletex_sandbox.vouchers(company_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    seen_after = time.monotonic() - started
    assert tripletex_sandbox.vouchers(company_id), "the held voucher was not visible in time"
    assert poster.is_alive(), "the POST answered before the hold ended"
    # Another request of the same company is answered while the POST is held.
    quick = time.monotonic()
    assert api.http.get("/ledger/voucherType").status_code == 200
    assert time.monotonic() - quick < 0.5
    poster.join(timeout=5)
    assert result["r"].status_code == 201
    assert time.monotonic() - started >= 1.5 > seen_after


def test_latency_applies_to_every_request(api: Api, tripletex_sandbox: TripletexSandbox) -> None:
    tripletex_sandbox.set_faults(api.company["company_id"], latency_ms=300)
    started = time.monotonic()
    assert api.http.get("/ledger/vatType").status_code == 200
    assert time.monotonic() - started >= 0.3
    tripletex_sandbox.clear_faults(api.company["company_id"])
    started = time.monotonic()
    api.http.get("/ledger/vatType")
    assert time.monotonic() - started < 0.3


def test_request_counts_by_path_template(api: Api, tripletex_sandbox: TripletexSandbox) -> None:
    company_id = api.company["company_id"]
    voucher = api.voucher([api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]).json()[
        "value"
    ]
    api.http.get(f"/ledger/voucher/{voucher['id']}")
    api.http.post(
        f"/ledger/voucher/{voucher['id']}/attachment",
        files={"file": ("a.pdf", b"x", "application/pdf")},
    )
    counts = tripletex_sandbox.request_counts(company_id)
    assert counts == {
        "PUT /token/session/:create": 1,
        "GET /ledger/account": 1,
        "GET /ledger/vatType": 1,
        "POST /ledger/voucher": 1,
        "GET /ledger/voucher/{id}": 1,
        "POST /ledger/voucher/{voucherId}/attachment": 1,
    }
    tripletex_sandbox.reset_request_counts(company_id)
    assert tripletex_sandbox.request_counts(company_id) == {}


def test_control_api_rejects_bad_knobs_and_unknown_companies(
    tripletex_sandbox: TripletexSandbox,
) -> None:
    control = tripletex_sandbox.control
    assert control.put("/_sandbox/companies/1/faults", json={}).status_code == 404
    company = tripletex_sandbox.create_company()
    bad = control.put(f"/_sandbox/companies/{company['company_id']}/faults", json={"error_rate": 2})
    assert bad.status_code == 422


# --- ambiguous answers, lagging search, slow commits, refused sessions ----------------------


def _search(api: Api, external_number: str) -> list[int]:
    found = api.http.get(
        "/ledger/voucher/>externalVoucherNumber",
        params={"externalVoucherNumber": external_number},
    )
    assert found.status_code == 200, found.text
    return [v["id"] for v in found.json()["values"]]


def _listed(api: Api) -> list[int]:
    found = api.http.get(
        "/ledger/voucher", params={"dateFrom": "2026-01-01", "dateTo": "2027-01-01"}
    )
    assert found.status_code == 200, found.text
    return [v["id"] for v in found.json()["values"]]


def test_search_delay_hides_a_stored_voucher_from_the_searches_only(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    company_id = api.company["company_id"]
    postings = [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]
    early = api.voucher(postings, externalVoucherNumber="exp-early").json()["value"]
    tripletex_sandbox.set_faults(company_id, search_delay_ms=1200)
    started = time.monotonic()
    late = api.voucher(postings, externalVoucherNumber="exp-late").json()["value"]
    # Stored: the control API and GET by id show it at once...
    assert [v["externalVoucherNumber"] for v in tripletex_sandbox.vouchers(company_id)] == [
        "exp-early",
        "exp-late",
    ]
    assert api.http.get(f"/ledger/voucher/{late['id']}").status_code == 200
    # ...the searches do not, until the delay has passed; earlier vouchers are not affected.
    assert _search(api, "exp-late") == [] and _listed(api) == [early["id"]]
    assert _search(api, "exp-early") == [early["id"]]
    # Clearing the knob does not change when a stored voucher becomes searchable.
    tripletex_sandbox.clear_faults(company_id)
    assert _search(api, "exp-late") == []
    time.sleep(max(0.0, 1.25 - (time.monotonic() - started)))
    assert _search(api, "exp-late") == [late["id"]]
    assert _listed(api) == [early["id"], late["id"]]


def test_list_search_needs_a_date_range(api: Api) -> None:
    postings = [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]
    posted = api.voucher(postings).json()["value"]
    missing = api.http.get("/ledger/voucher", params={"dateFrom": "2026-01-01"})
    assert missing.status_code == 422
    assert [m["field"] for m in missing.json()["validationMessages"]] == ["dateTo"]
    outside = api.http.get(
        "/ledger/voucher", params={"dateFrom": "2026-03-19", "dateTo": "2026-04-01"}
    )
    assert outside.json()["values"] == []
    assert _listed(api) == [posted["id"]]


@pytest.mark.parametrize("status", [502, 504])
def test_commit_then_fail_with_a_gateway_page(
    api: Api, tripletex_sandbox: TripletexSandbox, status: int
) -> None:
    company_id = api.company["company_id"]
    tripletex_sandbox.set_faults(company_id, commit_then_fail=1, commit_then_fail_status=status)
    postings = [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]
    answer = api.voucher(postings, externalVoucherNumber="exp-gw")
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("text/html")
    assert f"<title>{status} " in answer.text
    assert [v["externalVoucherNumber"] for v in tripletex_sandbox.vouchers(company_id)] == [
        "exp-gw"
    ]
    assert api.voucher(postings).status_code == 201  # the count is used up


def test_commit_then_garble_answers_201_with_a_body_nobody_can_read(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    company_id = api.company["company_id"]
    tripletex_sandbox.set_faults(company_id, commit_then_garble=1)
    postings = [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]
    answer = api.voucher(postings, externalVoucherNumber="exp-garbled")
    assert answer.status_code == 201
    assert answer.headers["content-type"].startswith("application/json")
    with pytest.raises(ValueError):
        answer.json()
    assert [v["externalVoucherNumber"] for v in tripletex_sandbox.vouchers(company_id)] == [
        "exp-garbled"
    ]
    assert api.voucher(postings).json()["value"]["id"]


def test_commit_then_drop_closes_the_connection_before_the_body(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    company_id = api.company["company_id"]
    tripletex_sandbox.set_faults(company_id, commit_then_drop=1)
    postings = [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]
    with pytest.raises(httpx.RemoteProtocolError):
        api.voucher(postings, externalVoucherNumber="exp-dropped")
    assert [v["externalVoucherNumber"] for v in tripletex_sandbox.vouchers(company_id)] == [
        "exp-dropped"
    ]
    # The server is fine and the knob is used up: the next POST (a new connection) is answered.
    assert api.voucher(postings).status_code == 201


def test_after_store_knobs_are_taken_in_order_and_combine_with_a_hold(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    company_id = api.company["company_id"]
    tripletex_sandbox.set_faults(
        company_id, commit_then_fail=1, commit_then_garble=1, commit_then_drop=1, post_hold_ms=300
    )
    postings = [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]
    assert api.voucher(postings).status_code == 500
    started = time.monotonic()
    garbled = api.voucher(postings)
    assert garbled.status_code == 201 and time.monotonic() - started >= 0.3
    with pytest.raises(httpx.RemoteProtocolError):
        api.voucher(postings)
    assert api.voucher(postings).json()["value"]["id"]
    assert len(tripletex_sandbox.vouchers(company_id)) == 4


def test_post_delay_commits_late_and_not_at_all_for_a_client_that_left(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    company_id = api.company["company_id"]
    tripletex_sandbox.set_faults(company_id, post_delay_ms=1000)
    postings = [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]
    result: dict[str, Any] = {}
    poster = threading.Thread(
        target=lambda: result.update(r=api.voucher(postings, externalVoucherNumber="exp-slow"))
    )
    started = time.monotonic()
    poster.start()
    time.sleep(0.6)
    assert tripletex_sandbox.vouchers(company_id) == [], "stored before the delay ended"
    poster.join(timeout=5)
    assert result["r"].status_code == 201 and time.monotonic() - started >= 1.0
    assert len(tripletex_sandbox.vouchers(company_id)) == 1
    # A client that gives up before the commit: nothing is stored, now or later.
    with pytest.raises(httpx.ReadTimeout):
        api.http.post(
            "/ledger/voucher",
            json={"date": "2026-03-18", "postings": postings, "externalVoucherNumber": "exp-gone"},
            timeout=httpx.Timeout(10, read=0.4),
        )
    time.sleep(1.0)
    assert [v["externalVoucherNumber"] for v in tripletex_sandbox.vouchers(company_id)] == [
        "exp-slow"
    ]


def _new_session(sandbox: TripletexSandbox, company: dict[str, Any]) -> httpx.Response:
    return httpx.put(
        f"{sandbox.base_url}/token/session/:create",
        params={
            "consumerToken": company["consumer_token"],
            "employeeToken": company["employee_token"],
            "expirationDate": TOMORROW,
        },
    )


@pytest.mark.parametrize("status", [401, 403])
def test_session_refusal_expires_sessions_and_refuses_new_ones_for_a_while(
    api: Api, tripletex_sandbox: TripletexSandbox, status: int
) -> None:
    company = api.company
    tripletex_sandbox.set_faults(
        company["company_id"], session_refusal={"status": status, "seconds": 1.0}
    )
    started = time.monotonic()
    assert api.http.get("/ledger/vatType").status_code == 401  # the old session is gone
    refused = _new_session(tripletex_sandbox, company)
    assert refused.status_code == status and refused.json()["status"] == status
    # Another company is not affected.
    other = tripletex_sandbox.create_company("Unaffected AS")
    assert _new_session(tripletex_sandbox, other).status_code == 200
    time.sleep(max(0.0, 1.05 - (time.monotonic() - started)))
    renewed = _new_session(tripletex_sandbox, company)
    assert renewed.status_code == 200, renewed.text
    token = renewed.json()["value"]["token"]
    assert httpx.get(f"{tripletex_sandbox.base_url}/ledger/vatType", auth=("0", token)).status_code == 200


def test_session_refusal_after_post_opens_when_the_next_voucher_is_stored(
    api: Api, tripletex_sandbox: TripletexSandbox
) -> None:
    company = api.company
    tripletex_sandbox.set_faults(
        company["company_id"],
        commit_then_drop=1,
        session_refusal={"status": 401, "seconds": 1.0, "after_post": True},
    )
    # Armed, not open: sessions work until a voucher is stored.
    assert api.http.get("/ledger/vatType").status_code == 200
    assert _new_session(tripletex_sandbox, company).status_code == 200
    postings = [api.posting(1, 6800, "1.00"), api.posting(2, 2930, "-1.00")]
    with pytest.raises(httpx.RemoteProtocolError):
        api.voucher(postings, externalVoucherNumber="exp-refused")
    stored_at = time.monotonic()
    assert len(tripletex_sandbox.vouchers(company["company_id"])) == 1
    assert api.http.get("/ledger/vatType").status_code == 401
    assert _new_session(tripletex_sandbox, company).status_code == 401
    time.sleep(max(0.0, 1.05 - (time.monotonic() - stored_at)))
    assert _new_session(tripletex_sandbox, company).status_code == 200
    # The window opens once: later vouchers do not open it again.
    token = _new_session(tripletex_sandbox, company).json()["value"]["token"]
    with httpx.Client(base_url=tripletex_sandbox.base_url, auth=("0", token)) as http:
        body = {"date": "2026-03-18", "postings": postings}
        assert http.post("/ledger/voucher", json=body).status_code == 201
        assert http.get("/ledger/vatType").status_code == 200


def test_new_knobs_are_validated(tripletex_sandbox: TripletexSandbox) -> None:
    control = tripletex_sandbox.control
    company = tripletex_sandbox.create_company()
    url = f"/_sandbox/companies/{company['company_id']}/faults"
    for bad in (
        {"commit_then_fail_status": 404},
        {"commit_then_garble": -1},
        {"search_delay_ms": -5},
        {"session_refusal": {"status": 500}},
        {"session_refusal": {"seconds": 0}},
    ):
        assert control.put(url, json=bad).status_code == 422, bad
