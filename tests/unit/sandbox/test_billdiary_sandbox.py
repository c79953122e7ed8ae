"""The BillDiary sandbox's own rules, spoken to with plain httpx (no project client).

These pin down what the sandbox promises to behave like (the seed's endpoints, auth, Laravel's
422 shape and content negotiation, the substring ``q`` search, the per-business number and date
formats, documents, payments, categories, the CSV import) and what its control knobs do, so that
the client tests built on it test against something known.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.fixtures.billdiary_sandbox import BillDiarySandbox

JSON = {"Accept": "application/json"}
PDF = b"%PDF-1.4\n% receipt\n"


@dataclass
class Api:
    """An HTTP client for one sandbox business, as its integration user (Bearer token)."""

    http: httpx.Client
    business: dict[str, Any]

    @property
    def id(self) -> int:
        return self.business["business_id"]

    @property
    def location(self) -> int:
        return self.business["locations"][0]["id"]

    def tax(self, name: str) -> int:
        return next(t["id"] for t in self.business["tax_rates"] if t["name"] == name)

    def category(self, code: str) -> dict[str, Any]:
        for parent in self.business["categories"]:
            if parent["code"] == code:
                return parent
            for child in parent["sub_categories"]:
                if child["code"] == code:
                    return child
        raise KeyError(code)

    def create(self, **fields: Any) -> httpx.Response:
        body = {"location_id": self.location, "final_total": 100, **fields}
        return self.http.post("/expenses", json=body)

    def created(self, **fields: Any) -> dict[str, Any]:
        response = self.create(**fields)
        assert response.status_code == 201, response.text
        return response.json()["data"]

    def search(self, q: str, **params: Any) -> httpx.Response:
        return self.http.get("/expenses", params={"q": q, "per_page": 100, **params})


def client_for(sandbox: BillDiarySandbox, token: str, **kwargs: Any) -> httpx.Client:
    headers = {**JSON, "Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return httpx.Client(base_url=sandbox.api_url, headers=headers, timeout=10, **kwargs)


@pytest.fixture
def api(billdiary_sandbox: BillDiarySandbox, billdiary_business: dict[str, Any]) -> Iterator[Api]:
    with client_for(billdiary_sandbox, billdiary_business["token"]) as http:
        yield Api(http, billdiary_business)


def assert_validation(response: httpx.Response, field: str, message: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"message", "errors"}
    assert message in body["errors"][field], body
    return body


# --- auth ------------------------------------------------------------------------------------


def test_key_and_secret_headers_basic_auth_and_bearer_token_all_authenticate(
    billdiary_sandbox: BillDiarySandbox, billdiary_business: dict[str, Any]
) -> None:
    biz = billdiary_business
    url = f"{billdiary_sandbox.api_url}/expenses"
    answers = [
        httpx.get(url, headers={**JSON, "X-EPOS-API-Key": biz["api_key"],
                                "X-EPOS-API-Secret": biz["api_secret"]}),
        httpx.get(url, headers=JSON, auth=(biz["api_key"], biz["api_secret"])),
        httpx.get(url, headers={**JSON, "Authorization": f"Bearer {biz['token']}"}),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "data": [], "meta": {"current_page": 1, "last_page": 1, "per_page": 20, "total": 0}
        }
        assert answer.headers["X-RateLimit-Limit"] == "60"


def test_wrong_credentials_are_401_unauthenticated_and_a_login_redirect_without_accept_json(
    billdiary_sandbox: BillDiarySandbox, billdiary_business: dict[str, Any]
) -> None:
    biz = billdiary_business
    url = f"{billdiary_sandbox.api_url}/expenses"
    wrong = [
        {"Authorization": "Bearer nope"},
        {"X-EPOS-API-Key": biz["api_key"], "X-EPOS-API-Secret": "wrong"},
        {"X-EPOS-API-Key": biz["api_key"]},
        {},
    ]
    for headers in wrong:
        answer = httpx.get(url, headers={**JSON, **headers})
        assert answer.status_code == 401
        assert answer.json() == {"message": "Unauthenticated."}
    assert httpx.get(url, headers=JSON, auth=(biz["api_key"], "wrong")).status_code == 401
    # Without Accept: application/json, Laravel sends a guest to the login page.
    page = httpx.get(url, headers={"Authorization": "Bearer nope"})
    assert page.status_code == 302
    assert page.headers["location"].endswith("/login")
    assert page.headers["content-type"].startswith("text/html")
    # Rotated credentials stop working at once; the new ones work.
    fresh = billdiary_sandbox.rotate_credentials(biz["business_id"], biz["user_id"])
    old = httpx.get(url, headers={**JSON, "Authorization": f"Bearer {biz['token']}"})
    assert old.status_code == 401
    new = httpx.get(url, headers={**JSON, "Authorization": f"Bearer {fresh['token']}"})
    assert new.status_code == 200


def test_the_token_user_decides_what_is_visible(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    office, warehouse = (loc["id"] for loc in api.business["locations"])
    mine = api.created(ref_no="VIS-office")
    api.created(ref_no="VIS-warehouse", location_id=warehouse)
    own_only = billdiary_sandbox.add_user(
        api.id, "clerk", permissions=["view_own_expense", "expense.add"]
    )
    office_only = billdiary_sandbox.add_user(
        api.id, "officer", permissions=["all_expense.access"], location_ids=[office]
    )
    with client_for(billdiary_sandbox, own_only["token"]) as clerk:
        assert clerk.get("/expenses").json()["meta"]["total"] == 0
        assert clerk.get(f"/expenses/{mine['id']}").json() == {"message": "Not found"}
        own = clerk.post("/expenses", json={"location_id": office, "final_total": 5})
        assert own.status_code == 201
        assert [e["ref_no"] for e in clerk.get("/expenses").json()["data"]] == [
            own.json()["data"]["ref_no"]
        ]
    with client_for(billdiary_sandbox, office_only["token"]) as officer:
        refs = {e["ref_no"] for e in officer.get("/expenses").json()["data"]}
        assert "VIS-office" in refs and "VIS-warehouse" not in refs
    no_access = billdiary_sandbox.add_user(api.id, "nobody", permissions=["expense.add"])
    with client_for(billdiary_sandbox, no_access["token"]) as nobody:
        refused = nobody.get("/expenses")
        assert refused.status_code == 403 and refused.json() == {"message": "Unauthorized action."}


# --- validation and gates --------------------------------------------------------------------


def test_create_validation_is_laravels_422_shape(api: Api) -> None:
    empty = api.http.post("/expenses", json={})
    assert empty.status_code == 422
    assert empty.json() == {
        "message": "The location id field is required. (and 1 more error)",
        "errors": {
            "location_id": ["The location id field is required."],
            "final_total": ["The final total field is required."],
        },
    }
    assert_validation(api.create(location_id="abc"), "location_id",
                      "The location id field must be an integer.")
    assert_validation(api.create(location_id=999_999), "location_id",
                      "The selected location id is invalid.")
    assert_validation(api.create(final_total="12,50"), "final_total",
                      "The final total field must be a number.")
    assert_validation(api.create(tax_id=999_999), "tax_id", "The selected tax id is invalid.")
    assert_validation(api.create(is_refund="yes"), "is_refund",
                      "The is refund field must be true or false.")
    assert_validation(api.create(payment=[{"method": "card"}]), "payment.0.amount",
                      "The payment.0.amount field is required.")
    assert_validation(api.create(ref_no="X" * 192), "ref_no",
                      "The ref no field must not be greater than 191 characters.")
    # "" is null to Laravel (ConvertEmptyStringsToNull): required fails.
    assert_validation(api.create(final_total="  "), "final_total",
                      "The final total field is required.")
    # A body that is not JSON is no input at all.
    garbled = api.http.post("/expenses", content=b"{not json",
                            headers={"Content-Type": "application/json"})
    assert set(garbled.json()["errors"]) == {"location_id", "final_total"}
    # Without Accept: application/json a failed validation is a redirect "back".
    back = api.http.post("/expenses", json={}, headers={"Accept": "*/*"})
    assert back.status_code == 302 and back.headers["content-type"].startswith("text/html")
    assert api.http.get("/expenses").json()["meta"]["total"] == 0


def test_sub_category_needs_its_matching_parent(api: Api) -> None:
    travel, flights = api.category("7140"), api.category("7141")
    office = api.category("6800")
    alone = api.create(expense_sub_category_id=flights["id"])
    assert_validation(
        alone, "expense_category_id",
        "The expense category id field is required when expense sub category id is present.",
    )
    mismatch = api.create(expense_category_id=office["id"], expense_sub_category_id=flights["id"])
    assert_validation(mismatch, "expense_sub_category_id",
                      "The selected expense sub category id is invalid.")
    child_as_parent = api.create(expense_category_id=flights["id"])
    assert_validation(child_as_parent, "expense_category_id",
                      "The selected expense category id is invalid.")
    ok = api.created(expense_category_id=travel["id"], expense_sub_category_id=flights["id"])
    assert ok["expense_category"] == {"id": travel["id"], "name": "Travel"}
    assert ok["expense_sub_category"] == {"id": flights["id"], "name": "Flights"}


def test_a_location_the_user_may_not_use_is_refused(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    office, warehouse = (loc["id"] for loc in api.business["locations"])
    user = billdiary_sandbox.add_user(
        api.id, "office-poster", permissions=["all_expense.access", "expense.add"],
        location_ids=[office],
    )
    with client_for(billdiary_sandbox, user["token"]) as http:
        refused = http.post("/expenses", json={"location_id": warehouse, "final_total": 10})
        assert refused.status_code == 422
        assert refused.json() == {
            "message": "The selected location is not permitted for this user."
        }
        assert http.post("/expenses", json={"location_id": office, "final_total": 10}
                         ).status_code == 201
    assert len(billdiary_sandbox.expenses(api.id)) == 1


def test_permission_subscription_and_demo_mode_gates(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    expense = api.created(ref_no="GATE-1", final_total=50)
    reader = billdiary_sandbox.add_user(api.id, "reader", permissions=["all_expense.access"])
    with client_for(billdiary_sandbox, reader["token"]) as http:
        for answer in (
            http.post("/expenses", json={"location_id": api.location, "final_total": 1}),
            http.patch(f"/expenses/{expense['id']}", json={"additional_notes": "x"}),
            http.delete(f"/expenses/{expense['id']}"),
        ):
            assert answer.status_code == 403 and answer.json() == {"message": "Unauthorized action."}
        cats = http.get("/expense-categories")
        assert cats.status_code == 403 and cats.json() == {"message": "Unauthorized"}

    billdiary_sandbox.update_settings(api.id, subscription_active=False)
    for answer in (
        api.create(),
        api.http.patch(f"/expenses/{expense['id']}", json={"additional_notes": "x"}),
        api.http.post(f"/expenses/{expense['id']}/payments", json={"amount": 1, "method": "cash"}),
    ):
        assert answer.status_code == 402, answer.text
        assert set(answer.json()) == {"message"}
    assert api.http.get(f"/expenses/{expense['id']}").status_code == 200  # reads still work
    billdiary_sandbox.update_settings(api.id, subscription_active=True, demo_mode=True)
    for answer in (
        api.create(),
        api.http.post(f"/expenses/{expense['id']}/payments", json={"amount": 1, "method": "cash"}),
        api.http.delete(f"/expenses/{expense['id']}"),
        api.http.post("/expense-categories", json={"name": "Demo"}),
    ):
        assert answer.status_code == 403, answer.text
        assert answer.json() == {"message": "Feature disabled in demo!!"}
    # Even without Accept: application/json these are JSON (the controller writes them).
    plain = api.http.post("/expenses", json={"location_id": api.location, "final_total": 1},
                          headers={"Accept": "*/*"})
    assert plain.status_code == 403 and plain.json()["message"] == "Feature disabled in demo!!"
    assert [e["ref_no"] for e in billdiary_sandbox.expenses(api.id)] == ["GATE-1"]


# --- create and read ---------------------------------------------------------------------------


def test_create_answers_the_detail_with_the_tax_split_and_payments(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    travel, flights = api.category("7140"), api.category("7141")
    contact = api.business["contacts"][0]
    answer = api.http.post(
        "/expenses",
        content=(
            b'{"location_id": %d, "final_total": 12.50, "ref_no": "  XB-tax-1 ", '
            b'"transaction_date": "18/03/2026 10:00", "tax_id": %d, "contact_id": %d, '
            b'"expense_category_id": %d, "expense_sub_category_id": %d, '
            b'"additional_notes": "XB-tax-1 taxi", "expense_for": %d, '
            b'"payment": [{"amount": 10.00, "method": "card", "paid_on": "18/03/2026 11:30", '
            b'"note": "XB-tax-1"}]}'
        ) % (api.location, api.tax("VAT 12%"), contact["id"], travel["id"], flights["id"],
             api.business["user_id"]),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 201, answer.text
    # PHP's json_encode of floats: shortest form, ".0" on whole numbers.
    assert '"final_total":12.5,' in answer.text
    assert '"discount_amount":0.0,' in answer.text
    data = answer.json()["data"]
    assert data["type"] == "expense" and data["ref_no"] == "XB-tax-1"  # TrimStrings
    assert data["transaction_date"] == "2026-03-18T10:00:00+01:00"
    assert (data["total_before_tax"], data["tax_amount"]) == (11.1607, 1.3393)
    assert data["order_tax"] == {"id": api.tax("VAT 12%"), "name": "VAT 12%", "amount": 12.0,
                                 "is_tax_group": False}
    assert data["payment_status"] == "partial" and data["total_paid"] == 10.0
    [payment] = data["payments"]
    assert payment["method"] == "card" and payment["paid_on"] == "2026-03-18T11:30:00+01:00"
    assert payment["payment_ref_no"].startswith("PP") and payment["is_return"] is False
    assert data["contact"]["supplier_business_name"] == contact["supplier_business_name"]
    assert data["expense_for"]["email"].startswith("integration@")
    assert data["location"] == {"id": api.location, "name": "Head Office"}
    assert api.http.get(f"/expenses/{data['id']}").json() == {"data": data}
    [stored] = billdiary_sandbox.expenses(api.id)
    assert stored["sent"] == {"final_total": "12.50", "transaction_date": "18/03/2026 10:00"}
    assert stored["parsed"] == {"final_total": "12.5000",
                                "transaction_date": "2026-03-18 10:00:00"}
    assert stored["status"] == "final"
    # Without a ref_no one is generated; a refund is its own type.
    auto = api.created(is_refund=True)
    assert auto["ref_no"].startswith("EP") and auto["type"] == "expense_refund"
    assert api.http.get("/expenses/999999").json() == {"message": "Not found"}
    assert api.http.get("/expenses/abc").status_code == 404


def test_q_is_a_substring_search_so_X_1_also_finds_X_10(api: Api) -> None:
    for ref in ("X-1", "X-10", "X-100", "x-1b", "Y-1"):
        api.created(ref_no=ref)
    api.created(ref_no="OTHER", additional_notes="see X-1 for details")
    found = api.search("X-1").json()
    refs = sorted(e["ref_no"] for e in found["data"])
    assert refs == ["OTHER", "X-1", "X-10", "X-100", "x-1b"]
    assert found["meta"]["total"] == 5
    # Exact equality is the client's job.
    assert [e["ref_no"] for e in found["data"] if e["ref_no"] == "X-1"] == ["X-1"]
    # LIKE wildcards are not escaped: "_" is any one character.
    assert sorted(e["ref_no"] for e in api.search("X_10").json()["data"]) == ["X-10", "X-100"]
    # A numeric q also matches the id; q needs 2 characters.
    some = api.created(ref_no="NUM")
    assert any(e["ref_no"] == "NUM" for e in api.search(str(some["id"])).json()["data"])
    assert_validation(api.search("X"), "q", "The q field must be at least 2 characters.")
    # Category names match too.
    api.created(ref_no="CAT", expense_category_id=api.category("6800")["id"])
    assert [e["ref_no"] for e in api.search("office SUPP").json()["data"]] == ["CAT"]


def test_list_pagination_filters_and_csv(api: Api) -> None:
    for day in range(1, 6):
        api.created(ref_no=f"PG-{day}", transaction_date=f"0{day}/03/2026 09:00")
    api.created(ref_no="PG-refund", is_refund=True, transaction_date="10/03/2026 09:00")
    page = api.http.get("/expenses", params={"per_page": 2, "page": 2, "type": "expense"}).json()
    assert page["meta"] == {"current_page": 2, "last_page": 3, "per_page": 2, "total": 5}
    assert [e["ref_no"] for e in page["data"]] == ["PG-3", "PG-2"]  # newest date first
    assert_validation(api.http.get("/expenses", params={"per_page": 101}), "per_page",
                      "The per page field must be between 1 and 100.")
    assert_validation(api.http.get("/expenses", params={"type": "bill"}), "type",
                      "The selected type is invalid.")
    one_bound = api.http.get("/expenses", params={"start_date": "2026-03-04"}).json()
    assert one_bound["meta"]["total"] == 6  # only applied when both are given
    both = api.http.get("/expenses", params={"start_date": "2026-03-02", "end_date": "2026-03-04"})
    assert sorted(e["ref_no"] for e in both.json()["data"]) == ["PG-2", "PG-3", "PG-4"]
    csv_answer = api.http.get("/expenses", params={"format": "csv", "per_page": 1})
    assert csv_answer.headers["content-type"].startswith("text/csv")
    assert csv_answer.content.startswith("\ufeff".encode())
    lines = csv_answer.content.decode("utf-8-sig").strip().splitlines()
    assert lines[0].startswith("id,type,ref_no") and len(lines) == 7  # paging ignored
    assert "\"\"name\"\":\"\"Head Office\"\"" in csv_answer.text  # nested objects as JSON cells


# --- formats -----------------------------------------------------------------------------------


def test_a_business_with_comma_decimals_misreads_a_json_number(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    billdiary_sandbox.update_settings(api.id, thousand_separator=".", decimal_separator=",")
    misread = api.created(ref_no="FMT-1", final_total=12.5)
    assert misread["final_total"] == 125.0
    whole = api.created(ref_no="FMT-2", final_total=1250)
    assert whole["final_total"] == 1250.0
    assert_validation(api.create(final_total="12,50"), "final_total",
                      "The final total field must be a number.")
    stored = {e["ref_no"]: e for e in billdiary_sandbox.expenses(api.id)}
    assert stored["FMT-1"]["sent"]["final_total"] == "12.5"
    assert stored["FMT-1"]["parsed"]["final_total"] == "125.0000"
    # With the web form's parser off (a business where the API reads plain numbers):
    billdiary_sandbox.update_settings(api.id, amounts_use_business_format=False)
    assert api.created(final_total=12.5)["final_total"] == 12.5


def test_dates_are_read_with_the_business_format_and_overflow_silently(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    iso = api.create(transaction_date="2026-03-18")
    assert iso.status_code == 422 and set(iso.json()) == {"message"}
    date_only = api.create(transaction_date="18/03/2026")
    assert date_only.status_code == 422
    assert "Not enough data available to satisfy format" in date_only.json()["message"]
    # Month 18 in d/m/Y: PHP rolls it over into June of the next year, without a word.
    swapped = api.created(ref_no="DT-1", transaction_date="03/18/2026 10:00")
    assert swapped["transaction_date"] == "2027-06-03T10:00:00+02:00"
    stored = {e["ref_no"]: e for e in billdiary_sandbox.expenses(api.id)}
    assert stored["DT-1"]["sent"]["transaction_date"] == "03/18/2026 10:00"
    assert stored["DT-1"]["parsed"]["transaction_date"] == "2027-06-03 10:00:00"
    billdiary_sandbox.update_settings(api.id, date_format="Y-m-d", time_format=12,
                                      timezone="UTC")
    twelve = api.created(transaction_date="2026-03-18 10:15 PM")
    assert twelve["transaction_date"] == "2026-03-18T22:15:00+00:00"
    now = api.created()  # omitted: now
    assert now["transaction_date"][:4].isdigit()


# --- documents ---------------------------------------------------------------------------------


def multipart_create(api: Api, filename: str, content: bytes, content_type: str,
                     **fields: str) -> httpx.Response:
    data = {"location_id": str(api.location), "final_total": "20", **fields}
    return api.http.post("/expenses", data=data,
                         files={"document": (filename, content, content_type)})


def test_a_multipart_document_is_stored_and_searchable(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    answer = multipart_create(
        api, "XB-doc-7.pdf", PDF, "application/pdf", ref_no="R-doc",
        **{"payment[0][amount]": "20", "payment[0][method]": "cash", "is_refund": "0"},
    )
    assert answer.status_code == 201, answer.text
    data = answer.json()["data"]
    assert data["document"].endswith("_XB-doc-7.pdf")
    assert data["payment_status"] == "paid" and data["payments"][0]["method"] == "cash"
    [stored] = billdiary_sandbox.expenses(api.id)
    assert stored["documents"][0]["outcome"] == "stored"
    assert stored["documents"][0]["size"] == len(PDF)
    # q also matches the document name.
    assert [e["ref_no"] for e in api.search("XB-doc").json()["data"]] == ["R-doc"]
    # Form booleans are "1"/"0": "true" fails Laravel's boolean rule.
    assert_validation(multipart_create(api, "r.pdf", PDF, "application/pdf", is_refund="true"),
                      "is_refund", "The is refund field must be true or false.")


def test_documents_too_large_or_dropped_are_silently_not_stored(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    billdiary_sandbox.update_settings(api.id, document_size_limit=10)
    big = multipart_create(api, "big.pdf", PDF, "application/pdf", ref_no="BIG")
    assert big.status_code == 201 and big.json()["data"]["document"] is None
    billdiary_sandbox.update_settings(api.id, document_size_limit=5_000_000)
    billdiary_sandbox.set_faults(api.id, drop_documents=1)
    dropped = multipart_create(api, "lost.pdf", PDF, "application/pdf", ref_no="LOST")
    assert dropped.status_code == 201 and dropped.json()["data"]["document"] is None
    kept = multipart_create(api, "kept.pdf", PDF, "application/pdf", ref_no="KEPT")
    assert kept.json()["data"]["document"].endswith("_kept.pdf")
    wrong_type = multipart_create(api, "r.exe", b"MZ", "application/x-msdownload", ref_no="EXE")
    assert wrong_type.status_code == 422
    assert wrong_type.json() == {"message": "Invalid document file"}
    # In a JSON body "document" is just an ignored string.
    assert api.created(ref_no="JSON-DOC", document="receipt.pdf")["document"] is None
    outcomes = {e["ref_no"]: [d["outcome"] for d in e["documents"]]
                for e in billdiary_sandbox.expenses(api.id)}
    assert outcomes == {"BIG": ["skipped_too_large"], "LOST": ["dropped_by_knob"],
                        "KEPT": ["stored"], "JSON-DOC": []}


def test_update_is_partial_clears_recurrence_and_needs_post_method_put_for_files(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    created = api.created(ref_no="UPD-1", final_total=80, is_recurring=True,
                          recur_interval_type="months", tax_id=api.tax("VAT 25%"))
    assert (created["is_recurring"], created["recur_interval"]) == (True, 1)
    assert (created["total_before_tax"], created["tax_amount"]) == (64.0, 16.0)
    url = f"/expenses/{created['id']}"
    updated = api.http.patch(url, json={"final_total": 100,
                                        "payment": [{"amount": 100, "method": "cash"}]})
    assert updated.status_code == 200, updated.text
    data = updated.json()["data"]
    assert data["ref_no"] == "UPD-1" and data["final_total"] == 100.0
    assert (data["total_before_tax"], data["tax_amount"]) == (80.0, 20.0)
    assert data["is_recurring"] is False and data["recur_interval"] is None  # not resent
    assert data["payments"] == []  # update ignores payment
    # PHP does not parse multipart PUT bodies: nothing arrives, nothing changes but recurrence.
    ignored = api.http.put(url, data={"additional_notes": "lost"},
                           files={"document": ("r.pdf", PDF, "application/pdf")})
    assert ignored.status_code == 200
    assert ignored.json()["data"]["additional_notes"] is None
    assert ignored.json()["data"]["document"] is None
    spoofed = api.http.post(url, data={"_method": "PUT", "additional_notes": "kept"},
                            files={"document": ("r.pdf", PDF, "application/pdf")})
    assert spoofed.status_code == 200, spoofed.text
    assert spoofed.json()["data"]["additional_notes"] == "kept"
    assert spoofed.json()["data"]["document"].endswith("_r.pdf")
    plain_post = api.http.post(url, json={"additional_notes": "x"})
    assert plain_post.status_code == 405
    assert api.http.patch("/expenses/999999", json={}).json() == {"message": "Not found"}
    deleted = api.http.delete(url)
    assert deleted.json() == {"message": "Expense deleted successfully",
                              "data": {"id": created["id"]}}
    assert api.http.get(url).status_code == 404
    assert billdiary_sandbox.expenses(api.id)[0]["deleted"] is True


# --- payments ----------------------------------------------------------------------------------


def test_payment_rules(api: Api, billdiary_sandbox: BillDiarySandbox) -> None:
    warehouse = api.business["locations"][1]
    contact = api.business["contacts"][0]
    expense = api.created(ref_no="PAY-1", final_total=100, contact_id=contact["id"])
    url = f"/expenses/{expense['id']}/payments"
    assert_validation(api.http.post(url, json={"amount": 0, "method": "cash"}), "amount",
                      "The amount field must be at least 0.01.")
    assert_validation(api.http.post(url, json={"amount": 5}), "method",
                      "The method field is required.")
    first = api.http.post(url, json={"amount": 40, "method": "bank_transfer", "note": "PAY-1/a",
                                     "paid_on": "19/03/2026 08:00"})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["message"] == "Payment added successfully"
    assert body["data"]["transaction_id"] == expense["id"]
    assert body["data"]["payment_status"] == "partial" and body["data"]["amount"] == 40.0
    assert body["data"]["paid_on"] == "2026-03-19T08:00:00+01:00"
    assert body["data"]["payment_ref_no"].startswith("PP")
    too_much = api.http.post(url, json={"amount": 600, "method": "advance"})
    assert too_much.status_code == 422 and set(too_much.json()) == {"message"}
    assert api.http.post(url, json={"amount": 60, "method": "advance"}).json()["data"][
        "payment_status"] == "paid"
    done = api.http.post(url, json={"amount": 1, "method": "cash"})
    assert done.status_code == 422 and done.json() == {"message": "This expense is already fully paid."}
    detail = api.http.get(f"/expenses/{expense['id']}").json()["data"]
    assert [p["amount"] for p in detail["payments"]] == [40.0, 60.0]
    assert detail["payments"][0]["note"] == "PAY-1/a"
    assert billdiary_sandbox.business(api.id)["contacts"][0]["balance"] == "440.0000"
    at_warehouse = api.created(location_id=warehouse["id"], final_total=10)
    refused = api.http.post(f"/expenses/{at_warehouse['id']}/payments",
                            json={"amount": 10, "method": "bank_transfer"})
    assert refused.status_code == 422 and "payment method" in refused.json()["message"]
    assert api.http.post("/expenses/999999/payments", json={"amount": 1, "method": "cash"}
                         ).json() == {"message": "Not found"}


# --- categories --------------------------------------------------------------------------------


def test_category_search_by_code_is_a_substring_match(api: Api) -> None:
    def codes(**params: Any) -> list[str | None]:
        answer = api.http.get("/expense-categories", params=params)
        assert answer.status_code == 200, answer.text
        return [c["code"] for c in answer.json()["data"]]

    assert codes(q="7140") == ["7140"]
    assert sorted(codes(q="714")) == ["7140", "7141", "7142"]
    assert codes(q="714", scope="parents") == ["7140"]
    assert sorted(codes(q="714", scope="children")) == ["7141", "7142"]
    assert_validation(api.http.get("/expense-categories", params={"q": "7"}), "q",
                      "The q field must be at least 2 characters.")
    assert "7140" in codes(search="7")  # the legacy parameter has no minimum
    travel = api.http.get("/expense-categories", params={"q": "7140"}).json()["data"][0]
    assert travel["display_name"] == "Travel" and travel["is_sub_category"] is False
    assert [s["code"] for s in travel["sub_categories"]] == ["7141", "7142"]
    flights = api.http.get(f"/expense-categories/{travel['sub_categories'][0]['id']}").json()
    assert flights["data"]["display_name"] == "Travel / Flights"
    assert flights["data"]["parent"] == {"id": travel["id"], "name": "Travel"}
    assert codes(sort="code", direction="desc", per_page=2) == ["7770", "7351"]


def test_category_writes(api: Api, billdiary_sandbox: BillDiarySandbox) -> None:
    travel, flights = api.category("7140"), api.category("7141")
    created = api.http.post("/expense-categories",
                            json={"name": "Trains", "code": "7143", "parent_id": travel["id"]})
    assert created.status_code == 201, created.text
    trains = created.json()["data"]
    assert trains["display_name"] == "Travel / Trains" and trains["is_sub_category"] is True
    # Codes are not unique.
    assert api.http.post("/expense-categories", json={"name": "Dup", "code": "7143"}
                         ).status_code == 201
    bad_parent = api.http.post("/expense-categories", json={"name": "X", "parent_id": flights["id"]})
    assert bad_parent.status_code == 422 and bad_parent.json() == {"message": "Invalid parent_id"}
    assert_validation(api.http.post("/expense-categories", json={"code": "1"}), "name",
                      "The name field is required.")
    url = f"/expense-categories/{trains['id']}"
    assert_validation(api.http.put(url, json={"name": "Rail"}), "parent_id",
                      "The parent id field must be present.")
    self_parent = api.http.put(url, json={"name": "Rail", "parent_id": trains["id"]})
    assert self_parent.status_code == 422
    top = api.http.put(url, json={"name": "Rail", "parent_id": None})
    assert top.status_code == 200 and top.json()["data"]["parent_id"] is None
    deleted = api.http.delete(f"/expense-categories/{travel['id']}")
    assert deleted.json()["data"] == {"id": travel["id"]}
    gone = {c["code"]: c["deleted"] for c in billdiary_sandbox.categories(api.id)}
    assert gone["7140"] and gone["7141"] and gone["7142"] and not gone["7143"]
    assert api.http.get(f"/expense-categories/{travel['id']}").json() == {"message": "Not found"}


# --- CSV import --------------------------------------------------------------------------------

IMPORT_HEADER = (
    "LOCATION,CATEGORY,SUB-CATEGORY,REFERENCE NO,EXPENSE DATE,EXPENSE FOR,"
    "EXPENSE FOR CONTACT ID,ATTACH DOCUMENT,APPLICABLE TAX,EXPENSE NOTE,TOTAL AMOUNT,"
    "PAID AMOUNT,PAID ON DATE,PAYMENT METHOD,PAYMENT ACCOUND,PAYMENT NOTE\n"
)


def test_csv_import_is_positional_carries_values_over_and_fails_whole(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    def upload(rows: str) -> httpx.Response:
        return api.http.post("/import/expenses", files={
            "expense_csv": ("expenses.csv", (IMPORT_HEADER + rows).encode(), "text/csv")})

    good = upload(
        "Head Office,Parking,,IMP-1,18/03/2026,,,,VAT 25%,first,125,125,,Cash,1920,\n"
        ",,,IMP-2,18/03/2026,,,,,,50,50,,Bank Transfer,,\n"
    )
    assert good.status_code == 200 and good.json() == {
        "success": 1, "message": "Expenses imported successfully"}
    stored = {e["ref_no"]: e for e in billdiary_sandbox.expenses(api.id)}
    # Row 2 had no CATEGORY, TAX or NOTE: row 1's carry over, and so do its payment lines.
    assert stored["IMP-2"]["expense_category_id"] == stored["IMP-1"]["expense_category_id"]
    assert stored["IMP-2"]["tax_id"] == api.tax("VAT 25%")
    assert stored["IMP-2"]["additional_notes"] == "first"
    assert [p["amount"] for p in stored["IMP-2"]["payments"]] == ["125.0000", "50.0000"]
    assert stored["IMP-1"]["total_before_tax"] == "100.0000"
    assert any(c["name"] == "Parking" for c in billdiary_sandbox.categories(api.id))

    bad = upload(
        ",NewCat,,IMP-3,18/03/2026,,,,,,10,10,,Cash,,\n"
        ",,,IMP-4,18/03/2026,,,,,,10,0,,Cash,,\n"
    )
    assert bad.status_code == 422
    assert bad.json() == {"success": 0, "message": "Amount not found in row no. 2 (PAID AMOUNT)"}
    assert "IMP-3" not in {e["ref_no"] for e in billdiary_sandbox.expenses(api.id)}
    assert not any(c["name"] == "NewCat" for c in billdiary_sandbox.categories(api.id))
    label = upload(",,,IMP-5,,,,,,,10,10,,bank_transfer,,\n")  # a key, not the label
    assert label.json()["message"] == "Invalid PAYMENT METHOD in row no. 1"
    assert_validation(api.http.post("/import/expenses", files={"other": ("a", b"", "text/csv")}),
                      "expense_csv", "The expense csv field is required.")
    assert [i["success"] for i in billdiary_sandbox.imports(api.id)] == [True, False, False]


# --- fault knobs -------------------------------------------------------------------------------


def test_save_then_fail_stores_the_expense_and_answers_could_not_load_expense(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    billdiary_sandbox.set_faults(api.id, save_then_fail=1)
    answer = api.create(ref_no="XB-stf-1")
    assert answer.status_code == 500
    assert answer.json() == {"message": "Could not load expense"}
    assert [e["ref_no"] for e in billdiary_sandbox.expenses(api.id)] == ["XB-stf-1"]
    found = api.search("XB-stf-1").json()["data"]
    assert [e["ref_no"] for e in found] == ["XB-stf-1"]
    # The knob is used up; a blind retry makes the duplicate the guide warns about.
    assert api.create(ref_no="XB-stf-1").status_code == 201
    assert len(api.search("XB-stf-1").json()["data"]) == 2
    # It applies to updates too (saved, then the reload fails).
    billdiary_sandbox.set_faults(api.id, save_then_fail=1)
    updated = api.http.patch(f"/expenses/{found[0]['id']}", json={"additional_notes": "saved"})
    assert updated.status_code == 500
    assert api.http.get(f"/expenses/{found[0]['id']}").json()["data"]["additional_notes"] == "saved"


def test_payment_save_then_fail_stores_the_payment_and_answers_something_went_wrong(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    expense = api.created(final_total=30)
    billdiary_sandbox.set_faults(api.id, payment_save_then_fail=1)
    answer = api.http.post(f"/expenses/{expense['id']}/payments",
                           json={"amount": 30, "method": "cash", "note": "XB-p"})
    assert answer.status_code == 500 and answer.json() == {"message": "something_went_wrong"}
    detail = api.http.get(f"/expenses/{expense['id']}").json()["data"]
    assert detail["payment_status"] == "paid" and detail["payments"][0]["note"] == "XB-p"


def test_save_then_drop_closes_the_connection_after_storing(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    billdiary_sandbox.set_faults(api.id, save_then_drop=1)
    with pytest.raises(httpx.RemoteProtocolError):
        api.create(ref_no="XB-drop")
    assert [e["ref_no"] for e in api.search("XB-drop").json()["data"]] == ["XB-drop"]
    assert api.create(ref_no="XB-next").status_code == 201


def test_save_then_hold_outlasts_a_client_timeout_with_the_expense_stored(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    billdiary_sandbox.set_faults(api.id, save_then_hold_ms=1500)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        api.http.post("/expenses", json={"location_id": api.location, "final_total": 1,
                                         "ref_no": "XB-held"}, timeout=0.5)
    assert time.monotonic() - started < 1.4
    assert [e["ref_no"] for e in billdiary_sandbox.expenses(api.id)] == ["XB-held"]
    # Another request is answered while one is held.
    result: dict[str, Any] = {}
    poster = threading.Thread(target=lambda: result.update(r=api.create(ref_no="XB-held-2")))
    poster.start()
    time.sleep(0.3)
    quick = time.monotonic()
    assert api.http.get("/expense-categories").status_code == 200
    assert time.monotonic() - quick < 0.5
    poster.join(timeout=5)
    assert result["r"].status_code == 201


def test_save_delay_stores_nothing_when_the_client_left(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    billdiary_sandbox.set_faults(api.id, save_delay_ms=1000)
    with pytest.raises(httpx.ReadTimeout):
        api.http.post("/expenses", json={"location_id": api.location, "final_total": 1,
                                         "ref_no": "XB-late"}, timeout=0.3)
    time.sleep(1.0)
    assert billdiary_sandbox.expenses(api.id) == []
    assert api.create(ref_no="XB-waited").status_code == 201  # a patient client is served


def test_fail_next_answers_before_anything_is_stored(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    billdiary_sandbox.set_faults(api.id, fail_next=[
        {"status": 429, "retry_after": 7, "method": "POST"},
        {"status": 503, "path_contains": "/expenses"},
        {"status": 502},
        {"status": 500, "message": "something_went_wrong"},
    ])
    limited = api.create(ref_no="F-1")
    assert limited.status_code == 429 and limited.json() == {"message": "Too Many Attempts."}
    assert limited.headers["Retry-After"] == "7"
    assert limited.headers["X-RateLimit-Remaining"] == "0" and "X-RateLimit-Reset" in limited.headers
    unavailable = api.create(ref_no="F-2")
    assert unavailable.status_code == 503 and unavailable.json() == {"message": "Service Unavailable"}
    gateway = api.http.get("/expense-categories")
    assert gateway.status_code == 502 and gateway.headers["content-type"].startswith("text/html")
    custom = api.create(ref_no="F-3")
    assert custom.status_code == 500 and custom.json() == {"message": "something_went_wrong"}
    assert billdiary_sandbox.expenses(api.id) == []
    assert api.create(ref_no="F-4").status_code == 201


def test_the_throttle_counts_per_user_with_laravels_headers(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    billdiary_sandbox.set_faults(api.id, rate_limit={"limit": 3, "window_seconds": 1.5})
    remaining = [api.http.get("/expenses").headers["X-RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    refused = api.http.get("/expenses")
    assert refused.status_code == 429 and refused.json() == {"message": "Too Many Attempts."}
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    other = billdiary_sandbox.add_user(api.id, "second", permissions=["all_expense.access"])
    with client_for(billdiary_sandbox, other["token"]) as http:
        assert http.get("/expenses").status_code == 200  # its own window
    html = api.http.get("/expenses", headers={"Accept": "text/html"})
    assert html.status_code == 429 and html.headers["content-type"].startswith("text/html")
    time.sleep(1.6)
    assert api.http.get("/expenses").status_code == 200


def test_latency_error_rate_and_request_counts(
    api: Api, billdiary_sandbox: BillDiarySandbox
) -> None:
    billdiary_sandbox.set_faults(api.id, latency_ms=300)
    started = time.monotonic()
    assert api.http.get("/expenses").status_code == 200
    assert time.monotonic() - started >= 0.3
    billdiary_sandbox.set_faults(api.id, error_rate=1.0)
    failed = api.create(ref_no="ERR")
    assert failed.status_code == 500 and failed.json() == {"message": "Server Error"}
    assert api.http.get("/expenses").status_code == 200  # reads are never rolled
    assert billdiary_sandbox.expenses(api.id) == []
    billdiary_sandbox.clear_faults(api.id)
    expense = api.created(ref_no="CNT")
    api.http.get(f"/expenses/{expense['id']}")
    api.http.post(f"/expenses/{expense['id']}", data={"_method": "PATCH", "ref_no": "CNT"})
    assert billdiary_sandbox.request_counts(api.id) == {
        "GET /expenses": 2,
        "GET /expenses/{expense_id}": 1,
        "PATCH /expenses/{expense_id}": 1,
        "POST /expenses": 2,
    }
    billdiary_sandbox.reset_request_counts(api.id)
    assert billdiary_sandbox.request_counts(api.id) == {}
