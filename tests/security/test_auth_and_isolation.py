"""Who may call what, against the real API server.

- every operation of the published API refuses a request without credentials, and the admin
  operations refuse an organization's key (and the other way round);
- a revoked key is refused exactly like a key that never existed;
- another organization's exports, batches, expenses and source exports answer exactly like ids
  that do not exist (same status, same body once the id is masked): no existence leak, and its
  PUT/DELETE change nothing;
- the Findity webhook: an unknown token is a 404; with a webhook secret configured, a missing,
  malformed, wrong or replayed (outside the 5-minute window) signature is a 401 that says which,
  and changes nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from shared.config import get_settings
from shared.domain.sources import SIGNATURE_HEADER, SIGNATURE_TOLERANCE_SECONDS, sign
from tests.security.helpers import (
    OrgHandle,
    assert_error_body,
    drop_queued_jobs,
    organization_fingerprint,
    table_counts,
)

pytestmark = pytest.mark.integration

EXPORTS = "/api/v1/accounting-exports"
PUBLIC = {("GET", "/healthz")}
TOKEN_IN_URL = {("POST", "/webhooks/findity/{token}")}


def _operations() -> list[tuple[str, str, bool]]:
    """(method, path template, has a request body) of every operation the API publishes."""
    from producers.api.app import app

    return [(method.upper(), path, "requestBody" in operation)
            for path, item in app.openapi()["paths"].items()
            for method, operation in item.items()]


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: "tripletex" if m.group() == "{target_system}"
                  else "id_000000000000", path)


@pytest.fixture(autouse=True, scope="module")
def _quiet_database(no_workers):
    """No worker runs while this module compares the database (see ``no_workers``), and none
    runs its exports later."""
    yield
    drop_queued_jobs()


@pytest.mark.parametrize("method,path,has_body", [
    pytest.param(*op, id=f"{op[0]} {op[1]}") for op in _operations()
    if op[:2] not in PUBLIC | TOKEN_IN_URL])
def test_every_operation_requires_the_right_credentials(method, path, has_body, new_org,
                                                        anonymous):
    org = new_org()
    admin_token = get_settings().admin_token
    is_admin = path.startswith("/api/v1/admin/")
    url = _concrete(path)
    body = {"json": {}} if has_body else {}
    counts = table_counts()

    missing = anonymous.request(method, url, **body)
    wrong_kind = anonymous.request(method, url, **body, headers={
        "Authorization": f"Bearer {org.api_key if is_admin else admin_token}"})
    unknown = anonymous.request(method, url, **body, headers={
        "Authorization": "Bearer aic_" + "x" * 43})

    assert assert_error_body(missing, 401)["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    expected = "invalid_admin_token" if is_admin else "invalid_api_key"
    assert assert_error_body(wrong_kind, 401)["code"] == expected
    assert assert_error_body(unknown, 401)["code"] == expected
    assert table_counts() == counts


def test_a_revoked_key_is_refused_like_an_unknown_one(new_org, admin, anonymous):
    org = new_org()
    created = admin.post(f"/api/v1/admin/organizations/{org.organization_id}/api-keys")
    assert created.status_code == 201, created.text
    key = created.json()
    as_second_key = {"Authorization": f"Bearer {key['api_key']}"}
    assert anonymous.get(EXPORTS, headers=as_second_key).status_code == 200

    revoked = admin.delete(
        f"/api/v1/admin/organizations/{org.organization_id}/api-keys/{key['api_key_id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"], revoked.text
    assert key["api_key"] not in revoked.text

    refused = anonymous.get(EXPORTS, headers=as_second_key)
    never_existed = anonymous.get(EXPORTS, headers={"Authorization": "Bearer aic_" + "n" * 43})
    assert assert_error_body(refused, 401)["code"] == "invalid_api_key"
    assert refused.json() == never_existed.json()
    # The organization's first key is untouched, and so is every other operation of the key.
    assert org.api.get(EXPORTS).status_code == 200
    assert anonymous.post("/api/v1/expenses", headers=as_second_key, json={}).status_code == 401


def test_api_key_scopes_are_enforced_over_http(new_org, admin, anonymous):
    """An organization's default key (scope `exports`) may not use the status callback: 403
    missing_scope, and the unbooked export stays as it was. A key with `callbacks` may, and the
    event names that key. Fails on the old code, where any key got 200 and the export
    became `success` with the reference STOLEN."""
    org = new_org(scopes=None)
    created = admin.get(f"/api/v1/admin/organizations/{org.organization_id}/api-keys")
    assert [k["scopes"] for k in created.json()] == [["exports"]], created.text
    export = org.api.post(EXPORTS, json={"expense_id": org.add_expense(),
                                         "target_system": "tripletex"})
    assert export.status_code == 202, export.text
    url = f"{EXPORTS}/{export.json()['export_id']}"
    counts, fingerprint = table_counts(), organization_fingerprint(org.organization_id)

    refused = org.api.put(url, json={"status": "success", "external_reference": "STOLEN"})

    error = assert_error_body(refused, 403)
    assert error["code"] == "missing_scope" and "'callbacks' scope" in error["message"]
    assert table_counts() == counts
    assert organization_fingerprint(org.organization_id) == fingerprint

    key = admin.post(f"/api/v1/admin/organizations/{org.organization_id}/api-keys",
                     json={"name": "booking", "scopes": ["callbacks"]}).json()
    booked = anonymous.put(url, headers={"Authorization": f"Bearer {key['api_key']}"},
                           json={"status": "success", "external_reference": "TTX-42"})
    assert booked.status_code == 200 and booked.json()["external_reference"] == "TTX-42"
    events = org.api.get(f"{url}/events").json()["events"]
    assert [e["actor"] for e in events if e["to_status"] == "success"] == [
        f"api_key:{key['api_key_id']}"]


@pytest.fixture
def two_orgs(new_org) -> Iterator[tuple[OrgHandle, OrgHandle, dict[str, str]]]:
    """``owner`` with an export, a batch, an expense and a source export; ``intruder`` with
    nothing. Returns (owner, intruder, the owner's ids)."""
    owner, intruder = new_org(), new_org()
    expense_id = owner.add_expense()
    export = owner.api.post(EXPORTS, json={"expense_id": expense_id,
                                           "target_system": "tripletex"})
    assert export.status_code == 202, export.text
    batch = owner.api.post(f"{EXPORTS}/batch", json={
        "expense_ids": [owner.add_expense(), owner.add_expense()], "target_system": "tripletex"})
    assert batch.status_code == 202, batch.text
    yield owner, intruder, {"export_id": export.json()["export_id"],
                            "batch_id": batch.json()["batch_id"], "expense_id": expense_id}


def _masked(response: httpx.Response, secret_id: str) -> tuple[int, str, str]:
    return (response.status_code, response.headers.get("content-type", ""),
            response.text.replace(secret_id, "<ID>"))


@pytest.mark.parametrize("method,template,body", [
    pytest.param("GET", EXPORTS + "/{export_id}", None, id="get export"),
    pytest.param("GET", EXPORTS + "/{export_id}/events", None, id="get events"),
    pytest.param("PUT", EXPORTS + "/{export_id}",
                 {"status": "success", "external_reference": "STOLEN"}, id="put success"),
    pytest.param("PUT", EXPORTS + "/{export_id}", {"status": "failed", "error_message": "x"},
                 id="put failed"),
    pytest.param("DELETE", EXPORTS + "/{export_id}", None, id="cancel export"),
    pytest.param("GET", EXPORTS + "/batch/{batch_id}", None, id="get batch"),
    pytest.param("GET", "/api/v1/expenses/{expense_id}", None, id="get expense"),
    pytest.param("POST", EXPORTS, {"expense_id": "{expense_id}", "target_system": "tripletex"},
                 id="export their expense"),
    pytest.param("POST", EXPORTS, {"expense_id": "{expense_id}", "target_system": "tripletex",
                                   "reexport": True}, id="re-export their expense"),
    pytest.param("POST", EXPORTS + "/batch", {"expense_ids": ["{expense_id}"],
                                              "target_system": "tripletex"},
                 id="batch their expense"),
])
def test_another_organizations_ids_answer_exactly_like_missing_ones(two_orgs, method, template,
                                                                    body):
    owner, intruder, ids = two_orgs
    name = re.search(r"\{(\w+)\}", template + str(body)).group(1)
    real = ids[name]
    missing = real[:-6] + ("000000" if not real.endswith("000000") else "111111")

    def call(the_id: str) -> httpx.Response:
        def fill(value):
            if isinstance(value, list):
                return [fill(v) for v in value]
            return value.replace("{" + name + "}", the_id) if isinstance(value, str) else value

        payload = None if body is None else {k: fill(v) for k, v in body.items()}
        return intruder.api.request(method, fill(template), json=payload)

    counts = table_counts()
    fingerprint = organization_fingerprint(owner.organization_id)
    foreign, absent = call(real), call(missing)

    assert foreign.status_code in (404, 422), foreign.text
    assert_error_body(foreign, foreign.status_code)
    assert _masked(foreign, real) == _masked(absent, missing)
    assert table_counts() == counts
    assert organization_fingerprint(owner.organization_id) == fingerprint


def test_lists_never_show_another_organizations_rows(two_orgs):
    owner, intruder, ids = two_orgs
    for query in ("", f"?expense_id={ids['expense_id']}", f"?batch_id={ids['batch_id']}",
                  "?status=processing&limit=100"):
        listed = intruder.api.get(EXPORTS + query)
        assert listed.status_code == 200, listed.text
        assert listed.json()["data"] == [] and listed.json()["pagination"]["total"] == 0
    assert owner.api.get(f"{EXPORTS}?batch_id={ids['batch_id']}").json()["pagination"]["total"] == 2
    assert intruder.api.get("/api/v1/source-exports").json()["data"] == []


# --- the Findity webhook ------------------------------------------------------------------------

WEBHOOK_SECRET = "whsec-test-0123456789abcdef"
FINDITY_ORG = "findity-sec-org"


@pytest.fixture
def signed_webhook(new_org, admin, api_server) -> Iterator[tuple[OrgHandle, str]]:
    """An organization with a Findity source that requires signed webhooks; (org, webhook URL)."""
    org = new_org()
    source = admin.put(f"/api/v1/admin/organizations/{org.organization_id}/sources/findity",
                       json={"base_url": "http://127.0.0.1:9/api",
                             "credentials": {"client_id": "c", "client_secret": "s",
                                             "token_url": "http://127.0.0.1:9/token"},
                             "options": {"organization_id": FINDITY_ORG},
                             "webhook_secret": WEBHOOK_SECRET})
    assert source.status_code == 200, source.text
    assert source.json()["signed_webhooks"] is True
    assert WEBHOOK_SECRET not in source.text
    yield org, api_server + source.json()["webhook_path"]


def _delivery(export_id: str) -> bytes:
    return (b'{"exportId": "%s", "organizationId": "%s", "numberOfVouchers": 1}'
            % (export_id.encode(), FINDITY_ORG.encode()))


def test_an_unknown_webhook_token_is_a_404(anonymous, signed_webhook):
    _, url = signed_webhook
    unknown = url.rsplit("/", 1)[0] + "/" + "A" * 32
    counts = table_counts()
    response = anonymous.post(unknown, content=_delivery("e-1"),
                              headers={"Content-Type": "application/json"})
    error = assert_error_body(response, 404)
    assert error["code"] == "not_found" and "webhook" in error["message"]
    assert table_counts() == counts


@pytest.mark.parametrize("make_header,mentions", [
    pytest.param(lambda body, now: None, SIGNATURE_HEADER, id="missing"),
    pytest.param(lambda body, now: "sha256=abcdef", "t=<unix time>,v1=<hex>", id="not the format"),
    pytest.param(lambda body, now: f"t=soon,v1={'0' * 64}", "t=<unix time>",
                 id="timestamp not a number"),
    pytest.param(lambda body, now: sign("not-the-secret", now, body), "does not match",
                 id="wrong secret"),
    pytest.param(lambda body, now: sign(WEBHOOK_SECRET, now, body + b" "), "does not match",
                 id="signature of another body"),
    pytest.param(lambda body, now: sign(WEBHOOK_SECRET, now, body).replace(f"t={now}",
                                                                          f"t={now - 1}"),
                 "does not match", id="timestamp changed after signing"),
    pytest.param(lambda body, now: f"t={now},v1=\u00e6\u00f8\u00e5", "does not match",
                 id="non-ascii signature"),
    pytest.param(lambda body, now: sign(WEBHOOK_SECRET, now - SIGNATURE_TOLERANCE_SECONDS - 5,
                                        body), "5-minute window", id="replayed after the window"),
    pytest.param(lambda body, now: sign(WEBHOOK_SECRET, now + SIGNATURE_TOLERANCE_SECONDS + 5,
                                        body), "5-minute window", id="dated in the future"),
])
def test_a_signed_webhook_refuses_a_bad_signature(anonymous, signed_webhook, make_header,
                                                  mentions):
    org, url = signed_webhook
    body = _delivery("e-bad")
    header = make_header(body, int(time.time()))
    headers = {"Content-Type": "application/json"}
    if header is not None:
        # Raw bytes: a real client may send any octets; Starlette decodes them as Latin-1.
        headers[SIGNATURE_HEADER] = header.encode("utf-8")
    counts = table_counts()

    response = anonymous.post(url, content=body, headers=headers)

    error = assert_error_body(response, 401)
    assert error["code"] == "invalid_signature", error
    assert mentions.lower() in error["message"].lower(), error
    assert WEBHOOK_SECRET not in response.text
    assert table_counts() == counts
    assert org.api.get("/api/v1/source-exports").json()["data"] == []


def test_a_correctly_signed_webhook_is_accepted_once(anonymous, signed_webhook):
    org, url = signed_webhook
    body = _delivery("e-good")
    headers = {"Content-Type": "application/json",
               SIGNATURE_HEADER: sign(WEBHOOK_SECRET, int(time.time()), body)}
    first = anonymous.post(url, content=body, headers=headers)
    # The same delivery again inside the window (Findity retries): accepted, changes nothing new.
    again = anonymous.post(url, content=body, headers=headers)
    assert first.status_code == 200 and first.json() == {"received": True, "duplicate": False}
    assert again.status_code == 200 and again.json() == {"received": True, "duplicate": True}
    packages = org.api.get("/api/v1/source-exports").json()["data"]
    assert [p["source_export_ref"] for p in packages] == ["e-good"]


def test_removing_the_webhook_secret_accepts_unsigned_deliveries_again(anonymous, admin,
                                                                      signed_webhook):
    org, url = signed_webhook
    unsigned = anonymous.post(url, content=_delivery("e-unsigned"),
                              headers={"Content-Type": "application/json"})
    assert unsigned.status_code == 401
    removed = admin.put(f"/api/v1/admin/organizations/{org.organization_id}/sources/findity",
                        json={"base_url": "http://127.0.0.1:9/api",
                              "options": {"organization_id": FINDITY_ORG},
                              "webhook_secret": ""})
    assert removed.status_code == 200 and removed.json()["signed_webhooks"] is False
    accepted = anonymous.post(url, content=_delivery("e-unsigned"),
                              headers={"Content-Type": "application/json"})
    assert accepted.status_code == 200, accepted.text
