"""A corpus of hostile and broken requests against the real API server.

Every one must get a 4xx JSON error ``{"error": {"code", "message"}}`` whose message says what is
wrong, and must change nothing: the row count of every table and the organization's own rows
(every column of its expenses, exports and connections) are the same before and after.

tests/unit/api/test_api.py already covers, in-process, a few malformed export bodies, the
200 000-id batch and bad list parameters; this corpus goes wider and goes over HTTP to uvicorn.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from shared.config import get_settings
from tests.security.helpers import (
    OrgHandle,
    assert_error_body,
    drop_queued_jobs,
    make_org,
    organization_fingerprint,
    table_counts,
)

pytestmark = pytest.mark.integration

_UNSET = object()


@dataclass
class Bad:
    """One bad request. ``{export_id}``, ``{expense_id}``, ``{org_id}`` and ``{token}`` in the
    path are filled with the seeded organization's real ids."""

    name: str
    method: str
    path: str
    status: int
    code: str
    json: Any = _UNSET
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    auth: str = "org"  # "org" | "admin" | "none"
    mentions: str | None = None  # a word the message must contain (the field at fault)

    def __str__(self) -> str:
        return self.name


JSON = {"Content-Type": "application/json"}
EXPORTS = "/api/v1/accounting-exports"
EXPENSES = "/api/v1/expenses"
ORG = "/api/v1/admin/organizations/{org_id}"


def expense(rows: list[dict] | None = None, **overrides) -> dict:
    body = {"source_ref": "bad-1", "status": "approved", "description": "Taxi",
            "expense_date": "2026-03-18", "rows": rows or [
                {"account": "7140", "amount": "100.00"}, {"account": "2930", "amount": "-100.00"}]}
    body.update(overrides)
    return body


def raw_expense(debit: str, credit: str) -> bytes:
    """An expense body with bare number literals (NaN, Infinity, 1e400) as its amounts."""
    return ('{"source_ref": "bad-raw", "status": "approved", "description": "Taxi", '
            '"expense_date": "2026-03-18", "rows": [{"account": "7140", "amount": ' + debit
            + '}, {"account": "2930", "amount": ' + credit + "}]}").encode()


def pair(amount: str) -> list[dict]:
    return [{"account": "7140", "amount": amount},
            {"account": "2930", "amount": amount[1:] if amount.startswith("-") else f"-{amount}"}]


DEEP = b"[" * 50_000 + b"]" * 50_000  # 100 kB: far under the size limit, far over the parser's
DEEP_OBJECT = b'{"a":' * 20_000 + b"1" + b"}" * 20_000

CORPUS = [
    # --- the body is not JSON, or not sent as JSON
    Bad("truncated json", "POST", EXPORTS, 400, "malformed_json",
        content=b'{"expense_id": "exp_1", ', headers=JSON),
    Bad("not utf-8", "POST", EXPORTS, 400, "malformed_json",
        content=b'{"expense_id": "\xff\xfe", "target_system": "tripletex"}', headers=JSON),
    Bad("deeply nested array", "POST", EXPORTS, 400, "malformed_json", content=DEEP, headers=JSON),
    Bad("deeply nested object in options", "PUT", ORG + "/connections/tripletex", 400,
        "malformed_json", auth="admin", headers=JSON,
        content=b'{"base_url": "https://x.example/v2", "options": ' + DEEP_OBJECT + b"}"),
    Bad("empty body", "POST", EXPORTS, 422, "validation_failed", content=b"", headers=JSON,
        mentions="body"),
    Bad("json null", "POST", EXPORTS, 422, "validation_failed", content=b"null", headers=JSON),
    Bad("json string", "POST", EXPORTS, 422, "validation_failed", content=b'"exp_1"',
        headers=JSON),
    Bad("text/plain", "POST", EXPORTS, 415, "unsupported_media_type",
        content=b'{"expense_id": "exp_1", "target_system": "tripletex"}',
        headers={"Content-Type": "text/plain"}, mentions="application/json"),
    Bad("form encoded", "POST", EXPENSES, 415, "unsupported_media_type",
        content=b"source_ref=x&status=approved",
        headers={"Content-Type": "application/x-www-form-urlencoded"}),
    Bad("multipart", "POST", EXPORTS, 415, "unsupported_media_type",
        content=b'--b\r\nContent-Disposition: form-data; name="expense_id"\r\n\r\n'
                b"exp_1\r\n--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"}),
    Bad("no content type", "POST", EXPORTS, 415, "unsupported_media_type",
        content=b'{"expense_id": "exp_1", "target_system": "tripletex"}'),
    # --- wrong types, unknown fields, hostile strings
    Bad("expense_id is a list", "POST", EXPORTS, 422, "validation_failed",
        json={"expense_id": ["exp_1"], "target_system": "tripletex"}, mentions="expense_id"),
    Bad("expense_id is an object", "POST", EXPORTS, 422, "validation_failed",
        json={"expense_id": {"$ne": None}, "target_system": "tripletex"}, mentions="expense_id"),
    Bad("reexport is an object", "POST", EXPORTS, 422, "validation_failed",
        json={"expense_id": "{expense_id}", "target_system": "tripletex", "reexport": {}},
        mentions="reexport"),
    Bad("target system in capitals", "POST", EXPORTS, 422, "validation_failed",
        json={"expense_id": "{expense_id}", "target_system": "TRIPLETEX"},
        mentions="target_system"),
    Bad("unknown field with a valid body", "POST", EXPORTS, 422, "validation_failed",
        json={"expense_id": "{expense_id}", "target_system": "tripletex", "organization_id": "x"},
        mentions="organization_id"),
    Bad("sql in expense_id", "POST", EXPORTS, 422, "validation_failed",
        json={"expense_id": "x' OR '1'='1", "target_system": "tripletex"}, mentions="expense_id"),
    Bad("right-to-left override in expense_id", "POST", EXPORTS, 422, "validation_failed",
        json={"expense_id": "exp_\u202e1", "target_system": "tripletex"}),
    Bad("zero-width space in expense_id", "POST", EXPORTS, 422, "validation_failed",
        json={"expense_id": "exp\u200b_1", "target_system": "tripletex"}),
    Bad("NUL in a description", "POST", EXPENSES, 422, "validation_failed",
        json=expense(description="Taxi\u0000"), mentions="NUL"),
    Bad("NUL in an organization name", "POST", "/api/v1/admin/organizations", 422,
        "validation_failed", auth="admin", json={"name": "Evil\u0000 AS"}, mentions="NUL"),
    Bad("NUL in a base_url", "PUT", ORG + "/connections/tripletex", 422, "validation_failed",
        auth="admin", json={"base_url": "https://x.example/v2\u0000"}, mentions="base_url"),
    Bad("lone surrogate", "POST", EXPENSES, 422, "validation_failed",
        content=json.dumps(expense(source_ref="x")).replace('"x"', '"\\ud800"').encode(),
        headers=JSON, mentions="source_ref"),
    Bad("description too long", "POST", EXPENSES, 422, "validation_failed",
        json=expense(description="d" * 501), mentions="description"),
    Bad("organization name empty", "POST", "/api/v1/admin/organizations", 422,
        "validation_failed", auth="admin", json={"name": ""}, mentions="name"),
    # --- amounts on POST /api/v1/expenses
    Bad("NaN literal", "POST", EXPENSES, 422, "validation_failed",
        content=raw_expense("NaN", "NaN"), headers=JSON, mentions="amount"),
    Bad("Infinity literal", "POST", EXPENSES, 422, "validation_failed",
        content=raw_expense("Infinity", "-Infinity"), headers=JSON, mentions="amount"),
    Bad("NaN string", "POST", EXPENSES, 422, "validation_failed",
        json=expense(pair("NaN")), mentions="amount"),
    Bad("sNaN string", "POST", EXPENSES, 422, "validation_failed",
        json=expense([{"account": "7140", "amount": "sNaN"},
                      {"account": "2930", "amount": "-sNaN"}]), mentions="amount"),
    Bad("1e400 literal", "POST", EXPENSES, 422, "validation_failed",
        content=raw_expense("1e400", "-1e400"), headers=JSON, mentions="amount"),
    Bad("exponent string", "POST", EXPENSES, 422, "validation_failed",
        json=expense(pair("1E+999999")), mentions="amount"),
    Bad("1e30", "POST", EXPENSES, 422, "validation_failed",
        json=expense(pair("1e30")), mentions="amount"),
    Bad("one cent over the column", "POST", EXPENSES, 422, "validation_failed",
        json=expense(pair("1000000000000.00")), mentions="amount"),
    Bad("total over the column", "POST", EXPENSES, 422, "validation_failed", json=expense([
        {"account": "7140", "amount": "600000000000.00"},
        {"account": "7140", "amount": "600000000000.00"},
        {"account": "2930", "amount": "-600000000000.00"},
        {"account": "2930", "amount": "-600000000000.00"}]), mentions="total"),
    Bad("three decimals", "POST", EXPENSES, 422, "validation_failed",
        json=expense(pair("10.005")), mentions="decimal"),
    Bad("zero amounts", "POST", EXPENSES, 422, "validation_failed",
        json=expense([{"account": "7140", "amount": "0.00"},
                      {"account": "2930", "amount": "0.00"}]), mentions="debit"),
    Bad("only negative rows", "POST", EXPENSES, 422, "validation_failed",
        json=expense([{"account": "7140", "amount": "-50.00"},
                      {"account": "2930", "amount": "-50.00"}])),
    Bad("unbalanced", "POST", EXPENSES, 422, "validation_failed",
        json=expense([{"account": "7140", "amount": "100.00"},
                      {"account": "2930", "amount": "-99.99"}]), mentions="sum to zero"),
    Bad("amount is a boolean", "POST", EXPENSES, 422, "validation_failed",
        json=expense([{"account": "7140", "amount": True},
                      {"account": "2930", "amount": "-1.00"}]), mentions="amount"),
    Bad("amount is a list", "POST", EXPENSES, 422, "validation_failed",
        json=expense([{"account": "7140", "amount": [1]},
                      {"account": "2930", "amount": "-1.00"}]), mentions="amount"),
    Bad("one row", "POST", EXPENSES, 422, "validation_failed",
        json=expense([{"account": "7140", "amount": "0.00"}]), mentions="rows"),
    Bad("201 rows", "POST", EXPENSES, 422, "validation_failed",
        json=expense(pair("1.00") * 100 + [{"account": "7140", "amount": "0.00"}]),
        mentions="rows"),
    Bad("february 30th", "POST", EXPENSES, 422, "validation_failed",
        json=expense(expense_date="2026-02-30"), mentions="expense_date"),
    Bad("status in capitals", "POST", EXPENSES, 422, "validation_failed",
        json=expense(status="APPROVED"), mentions="status"),
    Bad("currency in lower case", "POST", EXPENSES, 422, "validation_failed",
        json=expense(currency="nok"), mentions="currency"),
    Bad("account with a slash", "POST", EXPENSES, 422, "validation_failed",
        json=expense([{"account": "../7140", "amount": "1.00"},
                      {"account": "2930", "amount": "-1.00"}]), mentions="account"),
    # --- batches
    Bad("batch of 10 000 ids", "POST", EXPORTS + "/batch", 413, "batch_too_large",
        json={"expense_ids": [f"exp_{n:06d}" for n in range(10_000)],
              "target_system": "tripletex"}, mentions="split"),
    Bad("batch with no ids", "POST", EXPORTS + "/batch", 422, "validation_failed",
        json={"expense_ids": [], "target_system": "tripletex"}, mentions="expense_ids"),
    Bad("batch listing an id twice", "POST", EXPORTS + "/batch", 422, "validation_failed",
        json={"expense_ids": ["{expense_id}", "{expense_id}"], "target_system": "tripletex"},
        mentions="more than once"),
    Bad("batch with a hostile id", "POST", EXPORTS + "/batch", 422, "validation_failed",
        json={"expense_ids": ["{expense_id}", "x'; DROP TABLE expenses;--"],
              "target_system": "tripletex"}, mentions="expense_ids"),
    Bad("batch with a NUL id", "POST", EXPORTS + "/batch", 422, "validation_failed",
        json={"expense_ids": ["exp\u0000"], "target_system": "tripletex"}),
    Bad("batch of numbers", "POST", EXPORTS + "/batch", 422, "validation_failed",
        json={"expense_ids": [1, 2, 3], "target_system": "tripletex"}),
    Bad("batch mixing a good and an unknown expense", "POST", EXPORTS + "/batch", 422,
        "validation_failed", json={"expense_ids": ["{expense_id}", "exp_unknown"],
                                   "target_system": "tripletex"}, mentions="nothing was exported"),
    # --- the PUT status callback
    Bad("status that does not exist", "PUT", EXPORTS + "/{export_id}", 422, "validation_failed",
        json={"status": "done"}, mentions="status"),
    Bad("external reference too long", "PUT", EXPORTS + "/{export_id}", 422,
        "validation_failed", json={"status": "success", "external_reference": "r" * 201},
        mentions="external_reference"),
    Bad("NUL in external reference", "PUT", EXPORTS + "/{export_id}", 422, "validation_failed",
        json={"status": "success", "external_reference": "TTX\u0000"}, mentions="NUL"),
    Bad("illegal transition", "PUT", EXPORTS + "/{export_id}", 409, "illegal_transition",
        json={"status": "processing"}),
    # --- ids in the path
    Bad("sql in a path id", "GET", EXPORTS + "/x'%20OR%20'1'%3D'1", 422, "validation_failed",
        mentions="export_id"),
    Bad("NUL in a path id", "GET", EXPORTS + "/exp%00", 422, "validation_failed"),
    Bad("65-character path id", "GET", EXPORTS + "/" + "a" * 65, 422, "validation_failed"),
    Bad("unicode path id", "GET", EXPENSES + "/%C3%A6%C3%B8%C3%A5", 422, "validation_failed",
        mentions="expense_id"),
    Bad("encoded slashes in a path id", "GET", EXPORTS + "/..%2F..%2Fadmin", 404, "not_found"),
    Bad("unknown export id", "GET", EXPORTS + "/exp_xp_000000000000", 404, "not_found"),
    Bad("delete an unknown export", "DELETE", EXPORTS + "/exp_xp_000000000000", 404, "not_found"),
    # --- pagination and filters
    Bad("page 10^20", "GET", EXPORTS + "?page=100000000000000000000", 422, "validation_failed",
        mentions="page"),
    Bad("page past the limit", "GET", EXPORTS + "?page=100001", 422, "validation_failed"),
    Bad("negative limit", "GET", EXPORTS + "?limit=-1", 422, "validation_failed",
        mentions="limit"),
    Bad("fractional page", "GET", EXPORTS + "?page=1.5", 422, "validation_failed"),
    Bad("limit NaN", "GET", "/api/v1/source-exports?limit=NaN", 422, "validation_failed"),
    Bad("date before year 1 in UTC", "GET",
        EXPORTS + "?initiated_from=0001-01-01T00:00:00%2B14:00", 422, "validation_failed",
        mentions="initiated_from"),
    Bad("date after year 9999 in UTC", "GET",
        EXPORTS + "?initiated_to=9999-12-31T23:59:59-23:59", 422, "validation_failed",
        mentions="initiated_to"),
    Bad("sql in a status filter", "GET", EXPORTS + "?status=success'%20OR%201=1--", 422,
        "validation_failed", mentions="status"),
    Bad("NUL in source_export_ref", "GET", "/api/v1/source-exports?source_export_ref=a%00", 422,
        "validation_failed", mentions="source_export_ref"),
    Bad("long source_export_ref", "GET", "/api/v1/source-exports?source_export_ref=" + "r" * 101,
        422, "validation_failed"),
    # --- admin inputs
    Bad("unknown target system", "PUT", ORG + "/connections/sap", 422, "validation_failed",
        auth="admin", json={"base_url": "https://x.example/v2"}, mentions="target_system"),
    Bad("credential that is not a string", "PUT", ORG + "/connections/tripletex", 422,
        "validation_failed", auth="admin",
        json={"base_url": "https://x.example/v2",
              "credentials": {"consumer_token": 1, "employee_token": ["x"]}},
        mentions="credentials"),
    Bad("file url", "PUT", ORG + "/connections/tripletex", 422, "validation_failed",
        auth="admin", json={"base_url": "file:///etc/passwd"}, mentions="base_url"),
    Bad("source with a javascript url", "PUT", ORG + "/sources/findity", 422, "validation_failed",
        auth="admin", json={"base_url": "javascript:alert(1)",
                            "credentials": {"client_id": "c", "client_secret": "s",
                                            "token_url": "https://x.example"},
                            "options": {"organization_id": "f"}}, mentions="base_url"),
    Bad("connection moved to another host without its credentials", "PUT",
        ORG + "/connections/tripletex", 422, "validation_failed", auth="admin",
        json={"base_url": "https://collector.example/v2"}, mentions="send the credentials"),
    Bad("source token_url moved without its credentials", "PUT", ORG + "/sources/findity", 422,
        "validation_failed", auth="admin",
        json={"base_url": "http://127.0.0.1:9/api",
              "credentials": {"client_id": "c", "token_url": "https://collector.example/t"},
              "options": {"organization_id": "sec-findity-org"}},
        mentions="client_secret"),
    Bad("source base_url moved without its credentials", "PUT", ORG + "/sources/findity", 422,
        "validation_failed", auth="admin",
        json={"base_url": "https://collector.example/api",
              "options": {"organization_id": "sec-findity-org"}}, mentions="base_url"),
    Bad("api key with an unknown scope", "POST", ORG + "/api-keys", 422, "validation_failed",
        auth="admin", json={"scopes": ["exports", "admin"]}, mentions="scopes"),
    Bad("api key with no scope", "POST", ORG + "/api-keys", 422, "validation_failed",
        auth="admin", json={"scopes": []}, mentions="scopes"),
    Bad("organization whose key has an unknown scope", "POST", "/api/v1/admin/organizations",
        422, "validation_failed", auth="admin",
        json={"name": "Scoped AS", "api_key_scopes": ["root"]}, mentions="api_key_scopes"),
    Bad("api key for an unknown organization", "POST",
        "/api/v1/admin/organizations/org_000000000000/api-keys", 404, "not_found", auth="admin"),
    # --- the webhook
    Bad("webhook token too short", "POST", "/webhooks/findity/short", 422, "validation_failed",
        auth="none", json={"exportId": "e", "organizationId": "o"}, mentions="token"),
    Bad("webhook body not json", "POST", "/webhooks/findity/{token}", 400, "malformed_webhook",
        auth="none", content=b"exportId=e", headers=JSON),
    Bad("webhook body deeply nested", "POST", "/webhooks/findity/{token}", 400,
        "malformed_webhook", auth="none", content=DEEP, headers=JSON),
    Bad("webhook body an array", "POST", "/webhooks/findity/{token}", 400, "malformed_webhook",
        auth="none", json=[{"exportId": "e", "organizationId": "o"}]),
    Bad("webhook exportId with NUL", "POST", "/webhooks/findity/{token}", 400,
        "malformed_webhook", auth="none",
        json={"exportId": "e\u0000", "organizationId": "sec-findity-org"}, mentions="exportId"),
    Bad("webhook exportId too long", "POST", "/webhooks/findity/{token}", 400,
        "malformed_webhook", auth="none",
        json={"exportId": "e" * 101, "organizationId": "sec-findity-org"}, mentions="exportId"),
    Bad("webhook for another Findity organization", "POST", "/webhooks/findity/{token}", 400,
        "organization_mismatch", auth="none",
        json={"exportId": "e-1", "organizationId": "someone-else"}, mentions="organizationId"),
    # --- credentials that are not credentials
    Bad("basic auth", "GET", EXPORTS, 401, "invalid_authorization", auth="none",
        headers={"Authorization": "Basic YWRtaW46YWRtaW4="}),
    Bad("bearer without a key", "GET", EXPORTS, 401, "invalid_authorization", auth="none",
        headers={"Authorization": "Bearer"}),
    Bad("sql as a key", "GET", EXPORTS, 401, "invalid_api_key", auth="none",
        headers={"Authorization": "Bearer ' OR 1=1 --"}),
    Bad("admin token as an org key", "GET", EXPORTS, 401, "invalid_api_key", auth="admin"),
]


@dataclass
class Seeded:
    org: OrgHandle
    ids: dict[str, str]


@pytest.fixture(scope="module")
def seeded(no_workers, admin: httpx.Client, api_server: str) -> Iterator[Seeded]:
    """An organization with an approved expense, an export that already succeeded, and a Findity
    webhook: real ids for the corpus to aim at."""
    org = make_org(admin, api_server)
    expense_id = org.add_expense()
    export = org.api.post(EXPORTS, json={"expense_id": org.add_expense(),
                                         "target_system": "tripletex"})
    assert export.status_code == 202, export.text
    export_id = export.json()["export_id"]
    # No worker posts it: record the outcome as the target's callback would.
    done = org.api.put(f"{EXPORTS}/{export_id}", json={"status": "success",
                                                       "external_reference": "TTX-1"})
    assert done.status_code == 200, done.text
    source = admin.put(f"/api/v1/admin/organizations/{org.organization_id}/sources/findity", json={
        "base_url": "http://127.0.0.1:9/api",
        "credentials": {"client_id": "c", "client_secret": "s",
                        "token_url": "http://127.0.0.1:9/token"},
        "options": {"organization_id": "sec-findity-org"}})
    assert source.status_code == 200, source.text
    ids = {"expense_id": expense_id, "export_id": export_id, "org_id": org.organization_id,
           "token": source.json()["webhook_path"].rsplit("/", 1)[1]}
    yield Seeded(org, ids)
    org.api.close()
    drop_queued_jobs()


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, real in ids.items():
            value = value.replace("{" + name + "}", real)
        return value
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize("bad", CORPUS, ids=str)
def test_bad_request_gets_a_clear_4xx_and_changes_nothing(bad: Bad, seeded: Seeded,
                                                          api_server: str):
    headers = dict(bad.headers)
    if bad.auth == "org":
        headers.setdefault("Authorization", f"Bearer {seeded.org.api_key}")
    elif bad.auth == "admin":
        headers.setdefault("Authorization", f"Bearer {get_settings().admin_token}")
    kwargs: dict[str, Any] = {"headers": headers}
    if bad.json is not _UNSET:
        kwargs["json"] = _fill(bad.json, seeded.ids)
    elif bad.content is not None:
        kwargs["content"] = bad.content
    path = _fill(bad.path, seeded.ids)
    counts = table_counts()
    fingerprint = organization_fingerprint(seeded.org.organization_id)

    with httpx.Client(base_url=api_server, timeout=30) as client:
        response = client.request(bad.method, path, **kwargs)

    error = assert_error_body(response, bad.status)
    assert error["code"] == bad.code, error
    if bad.mentions:
        assert bad.mentions.lower() in error["message"].lower(), error
    assert table_counts() == counts
    assert organization_fingerprint(seeded.org.organization_id) == fingerprint


def test_oversized_bodies_are_refused_before_they_are_read(seeded: Seeded, api_server: str):
    """Over the limit by Content-Length, and over it in a chunked body that declares no length."""
    limit = get_settings().max_request_bytes
    counts = table_counts()
    headers = {"Authorization": f"Bearer {seeded.org.api_key}", **JSON}
    declared = b'{"expense_ids": ["' + b"e" * limit + b'"], "target_system": "tripletex"}'

    def chunks() -> Iterator[bytes]:
        yield b'{"source_ref": "'
        for _ in range(limit // 65_536 + 2):
            yield b"r" * 65_536
        yield b'"}'

    with httpx.Client(base_url=api_server, timeout=30) as client:
        by_length = client.post(EXPORTS + "/batch", content=declared, headers=headers)
        chunked = client.post(EXPENSES, content=chunks(), headers=headers)

    for response in (by_length, chunked):
        error = assert_error_body(response, 413)
        assert error["code"] == "request_too_large" and str(limit) in error["message"]
    assert "transfer-encoding" not in by_length.request.headers
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert table_counts() == counts


def test_unknown_routes_and_methods_answer_json(seeded: Seeded, api_server: str):
    headers = {"Authorization": f"Bearer {seeded.org.api_key}"}
    with httpx.Client(base_url=api_server, timeout=30, headers=headers) as client:
        missing = client.get("/api/v1/accounting-export")
        wrong_method = client.patch(f"{EXPORTS}/{seeded.ids['export_id']}", json={})
    assert assert_error_body(missing, 404)["code"] == "not_found"
    assert assert_error_body(wrong_method, 405)["code"] == "method_not_allowed"
