"""The API's contract and its refusals: shapes, auth, tenant isolation, clear errors.

These run the ASGI app in-process (no worker needed: nothing here waits for an export to run).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from producers.api.app import create_app
from shared.db.models import AccountingExport, ExportEvent
from shared.db.session import session_scope
from shared.domain import organizations


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(), raise_server_exceptions=False) as test_client:
        yield test_client


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _counts(org_id: str):
    """This organization's exports and events. Scoped, because worker processes started by
    integration tests in the same session may still be finishing other organizations' exports."""
    with session_scope() as session:
        exports = select(AccountingExport.id).where(AccountingExport.organization_id == org_id)
        return (session.scalar(select(func.count()).select_from(exports.subquery())),
                session.scalar(select(func.count()).select_from(ExportEvent).where(
                    ExportEvent.export_id.in_(exports))))


def test_create_get_list_in_the_contract_shape(client, org, make_expense):
    expense_id = make_expense()
    created = client.post("/api/v1/accounting-exports", headers=auth(org.api_key),
                          json={"expense_id": expense_id, "target_system": "tripletex"})
    assert created.status_code == 202
    body = created.json()
    assert set(body) == {"export_id", "expense_id", "target_system", "status", "initiated_at"}
    assert body["status"] == "processing" and body["export_id"].startswith("exp_xp_")

    detail = client.get(f"/api/v1/accounting-exports/{body['export_id']}", headers=auth(org.api_key))
    assert detail.status_code == 200
    d = detail.json()
    for key in ("export_id", "expense_id", "organization_id", "target_system", "status",
                "external_reference", "exported_at", "error_message"):
        assert key in d
    assert d["organization_id"] == org.id

    listing = client.get("/api/v1/accounting-exports?page=1&limit=20", headers=auth(org.api_key))
    assert listing.status_code == 200
    assert listing.json()["pagination"] == {"page": 1, "limit": 20, "total": 1}
    row = listing.json()["data"][0]
    for key in ("export_id", "expense_id", "target_system", "status", "external_reference",
                "exported_at"):
        assert key in row


def test_no_key_bad_key_revoked_key(client, org):
    assert client.get("/api/v1/accounting-exports").json()["error"]["code"] == "missing_api_key"
    bad = client.get("/api/v1/accounting-exports", headers=auth("aic_wrong"))
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    with session_scope() as session:
        key, plaintext = organizations.create_api_key(session, org.id, "temp")
    assert client.get("/api/v1/accounting-exports", headers=auth(plaintext)).status_code == 200
    with session_scope() as session:
        organizations.revoke_api_key(session, org.id, key.id)
    assert client.get("/api/v1/accounting-exports", headers=auth(plaintext)).status_code == 401


def test_another_organizations_export_is_simply_not_found(client, org, make_expense):
    export_id = client.post("/api/v1/accounting-exports", headers=auth(org.api_key), json={
        "expense_id": make_expense(), "target_system": "tripletex"}).json()["export_id"]
    with session_scope() as session:
        other = organizations.create_organization(session, "Other AS")
        _, other_key = organizations.create_api_key(session, other.id,
                                                    scopes=["exports", "callbacks"])
    for method in ("get", "delete"):
        response = getattr(client, method)(f"/api/v1/accounting-exports/{export_id}",
                                           headers=auth(other_key))
        assert response.status_code == 404
        assert response.json() == {"error": {"code": "not_found",
                                              "message": f"export {export_id} does not exist"}}
    put = client.put(f"/api/v1/accounting-exports/{export_id}", headers=auth(other_key),
                     json={"status": "success", "external_reference": "X"})
    assert put.status_code == 404


@pytest.mark.parametrize("body,status,code", [
    ('{"expense_id": ', 400, "malformed_json"),
    ('{"expense_id": "exp_1", "target_system": "sap"}', 422, "validation_failed"),
    ('{"expense_id": "exp_1", "target_system": "tripletex", "expence": 1}', 422, "validation_failed"),
    ('{"expense_id": 5, "target_system": "tripletex"}', 422, "validation_failed"),
    ('{"expense_id": "exp_1\'; DROP TABLE expenses;--", "target_system": "tripletex"}', 422,
     "validation_failed"),
    ('{"expense_id": "exp_\u00e6\u00f8\u00e5\U0001F600", "target_system": "tripletex"}', 422,
     "validation_failed"),
    ('{"expense_id": "exp_unknown", "target_system": "tripletex"}', 422, "validation_failed"),
    ('[]', 422, "validation_failed"),
])
def test_bad_requests_get_a_clear_4xx_and_change_nothing(client, org, body, status, code):
    before = _counts(org.id)
    response = client.post("/api/v1/accounting-exports", content=body.encode(),
                           headers={**auth(org.api_key), "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and len(error["message"]) > 10
    assert "Traceback" not in response.text
    assert _counts(org.id) == before


def test_oversized_body_is_refused_with_413(client, org):
    huge = '{"expense_ids": [' + ",".join(['"exp_x"'] * 200_000) + '], "target_system": "tripletex"}'
    response = client.post("/api/v1/accounting-exports/batch", content=huge.encode(),
                           headers={**auth(org.api_key), "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("query", ["page=0", "limit=0", "limit=1000000", "page=99999999999999999999",
                                   "status=done", "initiated_from=yesterday"])
def test_bad_list_parameters_are_explained(client, org, query):
    response = client.get(f"/api/v1/accounting-exports?{query}", headers=auth(org.api_key))
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"].startswith("query.")


def test_put_only_allows_legal_transitions(client, org, make_expense):
    export_id = client.post("/api/v1/accounting-exports", headers=auth(org.api_key), json={
        "expense_id": make_expense(), "target_system": "tripletex"}).json()["export_id"]
    url = f"/api/v1/accounting-exports/{export_id}"
    ok = client.put(url, headers=auth(org.api_key),
                    json={"status": "success", "external_reference": "TTX-1"})
    assert ok.status_code == 200 and ok.json()["status"] == "success"
    again = client.put(url, headers=auth(org.api_key),
                       json={"status": "success", "external_reference": "TTX-1"})
    assert again.status_code == 200
    illegal = client.put(url, headers=auth(org.api_key), json={"status": "processing"})
    assert illegal.status_code == 409
    assert illegal.json()["error"]["code"] == "illegal_transition"
    assert "cannot become processing" in illegal.json()["error"]["message"]
    assert client.delete(url, headers=auth(org.api_key)).status_code == 409


def test_delete_answers_with_the_cancelled_export_and_drops_its_retry_message(
        client, org, make_expense):
    from shared.db.models import AccountingExport

    export_id = client.post("/api/v1/accounting-exports", headers=auth(org.api_key), json={
        "expense_id": make_expense(), "target_system": "tripletex"}).json()["export_id"]
    with session_scope() as session:  # as a worker leaves an export waiting for its retry
        export = session.get(AccountingExport, export_id)
        export.error_code, export.error_message = "transient", "retrying in 40 s: HTTP 503"
    url = f"/api/v1/accounting-exports/{export_id}"
    cancelled = client.delete(url, headers=auth(org.api_key))
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["deleted"] is True and body["export_id"] == export_id  # the contract's fields
    assert body["status"] == "cancelled" and body["error_message"] is None
    listed = client.get("/api/v1/accounting-exports", headers=auth(org.api_key)).json()["data"]
    assert {"export_id": export_id, "status": "cancelled", "error_message": None}.items() <= next(
        e for e in listed if e["export_id"] == export_id).items()
    assert client.delete(url, headers=auth(org.api_key)).json()["status"] == "cancelled"


def test_batch_and_its_progress(client, org, make_expense):
    ids = [make_expense() for _ in range(3)]
    created = client.post("/api/v1/accounting-exports/batch", headers=auth(org.api_key),
                          json={"expense_ids": ids, "target_system": "tripletex"})
    assert created.status_code == 202
    batch = created.json()
    assert batch["batch_id"].startswith("batch_") and batch["expense_ids"] == ids
    progress = client.get(f"/api/v1/accounting-exports/batch/{batch['batch_id']}",
                          headers=auth(org.api_key)).json()
    assert progress["total"] == 3 and progress["counts"]["processing"] == 3 and not progress["done"]
    listed = client.get(f"/api/v1/accounting-exports?batch_id={batch['batch_id']}",
                        headers=auth(org.api_key)).json()
    assert listed["pagination"]["total"] == 3


def test_admin_requires_its_token_and_never_returns_credentials(client, org):
    assert client.get("/api/v1/admin/organizations").status_code == 401
    assert client.get("/api/v1/admin/organizations", headers=auth(org.api_key)).status_code == 401
    from shared.config import get_settings

    admin = auth(get_settings().admin_token)
    response = client.put(f"/api/v1/admin/organizations/{org.id}/connections/tripletex",
                          headers=admin, json={"base_url": "https://api-test.tripletex.tech/v2",
                                               "credentials": {"consumer_token": "SECRET-C",
                                                               "employee_token": "SECRET-E"}})
    assert response.status_code == 200
    assert "SECRET" not in response.text and response.json()["has_credentials"] is True
    listing = client.get(f"/api/v1/admin/organizations/{org.id}/connections", headers=admin)
    assert "SECRET" not in listing.text
    missing = client.put(f"/api/v1/admin/organizations/{org.id}/connections/tripletex",
                         headers=admin, json={"base_url": "https://x.example/v2",
                                              "credentials": {"consumer_token": "a"}})
    assert missing.status_code == 422 and "employee_token" in missing.json()["error"]["message"]


def test_openapi_and_docs_are_served(client):
    spec = client.get("/openapi.json").json()
    assert "/api/v1/accounting-exports" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_docs_work_offline_and_know_how_to_authenticate(client):
    page = client.get("/docs").text
    # Every asset from this server, none from a CDN (a blank page without internet).
    assert "cdn." not in page and "https://" not in page.split("<body")[0]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs-assets/{asset}" in page
        assert client.get(f"/docs-assets/{asset}").status_code == 200
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "http", "scheme": "bearer",
                                 "description": schemes["ApiKey"]["description"]}
    assert "AdminToken" in schemes
    # "Authorize" then sends the key with every operation that needs one.
    assert spec["paths"]["/api/v1/accounting-exports"]["post"]["security"] == [{"ApiKey": []}]
    admin = next(op for path, item in spec["paths"].items() if path.startswith("/api/v1/admin")
                 for op in item.values())
    assert admin["security"] == [{"AdminToken": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def _admin():
    from shared.config import get_settings

    return auth(get_settings().admin_token)


def _stored(org_id: str) -> tuple:
    from shared.db.models import SourceConnection, TargetConnection

    with session_scope() as session:
        rows = [session.scalar(select(model).where(model.organization_id == org_id))
                for model in (TargetConnection, SourceConnection)]
        return tuple((r.base_url, r.credentials_encrypted, r.options, r.updated_at) if r else None
                     for r in rows)


def test_admin_cannot_point_stored_credentials_at_another_host(client, org):
    """A new base_url (or token_url, one of Findity's credentials) without every secret is a
    422 that says what to send, and changes nothing. Fails on the old code: it answered 200 and
    the worker would have sent the stored tokens to the new host."""
    connections = f"/api/v1/admin/organizations/{org.id}/connections/tripletex"
    source = f"/api/v1/admin/organizations/{org.id}/sources/findity"
    findity = {"base_url": "http://127.0.0.1:9/api", "options": {"organization_id": "f-1"}}
    created = client.put(source, headers=_admin(), json={**findity, "credentials": {
        "client_id": "c", "client_secret": "s", "token_url": "http://127.0.0.1:9/token"}})
    assert created.status_code == 200, created.text
    assert created.json()["has_credentials"] and "credentials" not in created.json()
    before = _stored(org.id)

    refused = [
        client.put(connections, headers=_admin(),
                   json={"base_url": "https://collector.example/v2"}),
        client.put(source, headers=_admin(), json={**findity,
                                                   "base_url": "https://collector.example/api"}),
        client.put(source, headers=_admin(), json={**findity, "credentials": {
            "client_id": "c", "token_url": "https://collector.example/t"}}),
    ]
    for response in refused:
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_failed"
    for response in refused[:2]:
        message = response.json()["error"]["message"]
        assert "together with the new base_url" in message and "Nothing was changed" in message
    assert "send the credentials" in refused[0].json()["error"]["message"]
    assert "client_id, client_secret, token_url" in refused[1].json()["error"]["message"]
    assert "need: client_secret" in refused[2].json()["error"]["message"]
    assert _stored(org.id) == before

    # The same URL without credentials keeps the stored ones (a trailing slash is no move)...
    same = client.put(connections, headers=_admin(), json={"base_url": before[0][0] + "/"})
    assert same.status_code == 200 and same.json()["has_credentials"], same.text
    assert client.put(source, headers=_admin(), json=findity).status_code == 200
    # ...and new URLs with the credentials are accepted.
    moved = client.put(connections, headers=_admin(), json={
        "base_url": "https://api-test.tripletex.tech/v2",
        "credentials": {"consumer_token": "c2", "employee_token": "e2"}})
    assert moved.status_code == 200 and moved.json()["base_url"].endswith("tech/v2")
    moved = client.put(source, headers=_admin(), json={**findity, "credentials": {
        "client_id": "c", "client_secret": "s2",
        "token_url": "https://auth.findity.example/token"}})
    assert moved.status_code == 200, moved.text


def test_source_credentials_and_options_are_checked_against_the_registry(client, org):
    """The source's registry entry says which credentials and options it takes: a misspelt
    credential, a token URL that is not http(s) and a missing required option are refused with
    the field to fix, and nothing is stored."""
    source = f"/api/v1/admin/organizations/{org.id}/sources/findity"
    good = {"client_id": "c", "client_secret": "s", "token_url": "http://127.0.0.1:9/token"}
    cases = [
        ({"credentials": {**good, "client_sercet": "x"}, "options": {"organization_id": "f"}},
         "no field client_sercet"),
        ({"credentials": {**good, "token_url": "ftp://x"}, "options": {"organization_id": "f"}},
         "credentials.token_url must start with http"),
        ({"credentials": good}, "options.organization_id"),
        ({"credentials": good, "options": {"organization_id": "f", "content_file": "pdf"}},
         "options.content_file"),
    ]
    for body, expected in cases:
        response = client.put(source, headers=_admin(),
                              json={"base_url": "http://127.0.0.1:9/api", **body})
        assert response.status_code == 422, response.text
        assert expected in response.json()["error"]["message"], response.text
    assert _stored(org.id)[1] is None


def _export_state(export_id: str) -> tuple:
    with session_scope() as session:
        export = session.get(AccountingExport, export_id)
        events = session.scalar(select(func.count()).select_from(ExportEvent).where(
            ExportEvent.export_id == export_id))
        return export.status, export.external_reference, export.updated_at, events


def test_a_key_made_without_scopes_cannot_use_the_status_callback(client, org, make_expense):
    """The default key (scope `exports`) exports but may not mark an export booked: 403
    missing_scope naming `callbacks`, nothing changed. Fails on the old code, where any key of
    the organization turned the unbooked export into `success` with the reference STOLEN."""
    with session_scope() as session:
        key, plaintext = organizations.create_api_key(session, org.id, "integration")
        assert key.scopes == ["exports"]
    created = client.post("/api/v1/accounting-exports", headers=auth(plaintext),
                          json={"expense_id": make_expense(), "target_system": "tripletex"})
    assert created.status_code == 202, created.text
    export_id = created.json()["export_id"]
    before = _export_state(export_id)

    put = client.put(f"/api/v1/accounting-exports/{export_id}", headers=auth(plaintext),
                     json={"status": "success", "external_reference": "STOLEN"})

    assert put.status_code == 403, put.text
    error = put.json()["error"]
    assert set(put.json()) == {"error"} and error["code"] == "missing_scope"
    assert "lacks the 'callbacks' scope" in error["message"]
    assert "the key has: exports" in error["message"]
    assert _export_state(export_id) == before


def test_a_callbacks_key_may_only_call_back_and_the_event_names_it(client, org, make_expense):
    export_id = client.post("/api/v1/accounting-exports", headers=auth(org.api_key), json={
        "expense_id": make_expense(), "target_system": "tripletex"}).json()["export_id"]
    with session_scope() as session:
        key, plaintext = organizations.create_api_key(session, org.id, "booking",
                                                      scopes=["callbacks"])
    state = _export_state(export_id)
    for method, url, body in [
            ("GET", "/api/v1/accounting-exports", None),
            ("GET", f"/api/v1/accounting-exports/{export_id}", None),
            ("DELETE", f"/api/v1/accounting-exports/{export_id}", None),
            ("POST", "/api/v1/accounting-exports", {"expense_id": make_expense(),
                                                    "target_system": "tripletex"}),
            ("GET", "/api/v1/source-exports", None)]:
        before = _counts(org.id)
        response = client.request(method, url, headers=auth(plaintext), json=body)
        assert response.status_code == 403, (method, url, response.text)
        assert "lacks the 'exports' scope" in response.json()["error"]["message"]
        assert _counts(org.id) == before
    assert _export_state(export_id) == state  # the DELETE cancelled nothing

    put = client.put(f"/api/v1/accounting-exports/{export_id}", headers=auth(plaintext),
                     json={"status": "success", "external_reference": "TTX-7"})
    assert put.status_code == 200, put.text
    with session_scope() as session:
        changed = session.scalars(select(ExportEvent).where(
            ExportEvent.export_id == export_id, ExportEvent.kind == "status_changed")).all()
    assert [(e.to_status, e.actor) for e in changed] == [("success", f"api_key:{key.id}")]


def test_admin_api_creates_keys_with_scopes_and_refuses_unknown_ones(client, org):
    keys = f"/api/v1/admin/organizations/{org.id}/api-keys"

    def key_count() -> int:
        with session_scope() as session:
            return len(organizations.get_organization(session, org.id).api_keys)

    plain = client.post(keys, headers=_admin())
    assert plain.status_code == 201 and plain.json()["scopes"] == ["exports"], plain.text
    both = client.post(keys, headers=_admin(), json={
        "name": "booking", "scopes": ["callbacks", "exports", "callbacks"]})
    assert both.status_code == 201, both.text
    assert both.json()["scopes"] == ["exports", "callbacks"] and both.json()["name"] == "booking"
    listed = {k["api_key_id"]: k["scopes"] for k in client.get(keys, headers=_admin()).json()}
    assert listed[both.json()["api_key_id"]] == ["exports", "callbacks"]

    before = key_count()
    for body in ({"scopes": ["admin"]}, {"scopes": []}, {"scopes": "exports"}):
        refused = client.post(keys, headers=_admin(), json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "validation_failed"
        assert "scopes" in refused.json()["error"]["message"]
    unknown = client.post(keys, headers=_admin(), json={"scopes": ["admin"]}).json()["error"]
    assert "'exports' or 'callbacks'" in unknown["message"]
    assert key_count() == before

    org_created = client.post("/api/v1/admin/organizations", headers=_admin(), json={
        "name": "Booking AS", "api_key_scopes": ["callbacks"]})
    assert org_created.status_code == 201 and org_created.json()["api_key_scopes"] == [
        "callbacks"], org_created.text


def test_retry_endpoint_requeues_a_failed_export_and_says_who_asked(client, org, make_expense,
                                                                   sent_jobs):
    from shared.db.models import ExportStatus
    from shared.domain.state_machine import transition

    export_id = client.post("/api/v1/accounting-exports", headers=auth(org.api_key), json={
        "expense_id": make_expense(), "target_system": "tripletex"}).json()["export_id"]
    url = f"/api/v1/accounting-exports/{export_id}/retry"
    refused = client.post(url, headers=auth(org.api_key))
    assert refused.status_code == 409 and "only a failed export" in refused.json()["error"]["message"]
    with session_scope() as session:
        transition(session, session.get(AccountingExport, export_id), ExportStatus.FAILED,
                   actor="t", error_code="mapping", error_message="no account 7140", attempts=6)
    retried = client.post(url, headers=auth(org.api_key))
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert (body["status"], body["attempts"], body["error_message"]) == ("processing", 0, None)
    assert sent_jobs[-1].args == [export_id]
    last = client.get(f"/api/v1/accounting-exports/{export_id}/events",
                      headers=auth(org.api_key)).json()["events"][-1]
    assert last["to_status"] == "processing" and last["reason"].startswith("retried on request")
    assert last["actor"].startswith("api_key:")
    other = client.post("/api/v1/accounting-exports/exp_xp_000000000000/retry",
                        headers=auth(org.api_key))
    assert other.status_code == 404
