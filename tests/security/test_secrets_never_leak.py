"""Secrets stay secret through a full run of the real processes.

One flow (module fixture) with credentials the test knows: an organization with two API keys (one
revoked), a Tripletex connection to a sandbox company, a Findity source with its client secret
and later a webhook secret, a worker process. It books an expense (and again after the sandbox
expired the Tripletex session, so the client renews it), fails an export on wrong Tripletex
tokens, takes two Findity packages through webhook, worker, Tripletex and the report back (the
second after Findity revoked our access token), and sends signed and badly signed webhooks.
Every API response on the way is recorded. Then:

- the database holds no credential in clear: the credential columns are Fernet ciphertexts that
  decrypt to the configured values, and no row of any table contains a plaintext secret;
- no API response contains a secret, except the one response that creates an API key;
- no line of the API's or the workers' logs contains a secret, a Tripletex session token, an
  OAuth token or an unmasked Authorization header;
- each sandbox (playing the vendor) only ever sees its own credentials, never ours or the other
  vendor's.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

from devstack.processes import ManagedProcess, free_port, python_argv, wait_for_http
from shared import crypto
from shared.config import get_settings
from shared.db.models import Base
from shared.db.session import session_scope
from shared.domain.sources import SIGNATURE_HEADER, sign

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

WEBHOOK_SECRET = "whsec-never-print-me-7f3a9c1e5b"
WRONG_CONSUMER = "wrong-consumer-token-4d8e2a"
WRONG_EMPLOYEE = "wrong-employee-token-9b1f6c"
WRONG_FINDITY_SECRET = "wrong-findity-secret-2c7d4e"
SESSION_TOKEN = re.compile(r"session-[A-Za-z0-9_\-]{32}")  # the Tripletex sandbox's format
# Credentials in a shape a log line could carry them, whoever they belong to.
UNMASKED = [
    re.compile(r"(?i)\bbearer\s+(?!\*\*\*)[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"(?i)\bbasic\s+(?!\*\*\*)[A-Za-z0-9+/]{8,}={0,2}"),
    re.compile(r"(?i)(access|refresh)_token\W{1,4}(?!\*\*\*)[A-Za-z0-9_\-]{8,}"),
]
REPORTS = [{"owner_name": "Kari Nordmann", "expenses": [
    {"text": "Flight Oslo-Bergen", "account": "7140", "amount": "1000.00", "vat_rate": 0},
    {"text": "Office supplies", "account": "6800", "amount": "1250.00", "vat_rate": 25}]}]


@dataclass
class Flow:
    secrets: dict[str, str]  # what each is -> the value
    webhook_token: str
    responses: list[tuple[str, str]] = field(default_factory=list)  # (request, headers + body)
    creation_responses: set[int] = field(default_factory=set)  # indexes that show a new key
    tripletex_log: Path | None = None
    findity_log: Path | None = None
    tripletex_received: str = ""
    findity_received: str = ""


def _recorder(flow: Flow):
    def record(response: httpx.Response) -> None:
        response.read()
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        flow.responses.append((f"{response.request.method} {response.request.url.path}",
                               f"{headers}\n{response.text}"))
    return record


def _wait(what: str, check, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _export_and_wait(api: httpx.Client, expense_id: str, status: str) -> dict:
    created = api.post("/api/v1/accounting-exports",
                       json={"expense_id": expense_id, "target_system": "tripletex"})
    assert created.status_code == 202, created.text
    export_id = created.json()["export_id"]

    def finished() -> dict | None:
        export = api.get(f"/api/v1/accounting-exports/{export_id}").json()
        return export if export["status"] in ("success", "failed", "cancelled") else None

    final = _wait(f"export {export_id} to finish", finished)
    assert final["status"] == status, (final, api.get(
        f"/api/v1/accounting-exports/{export_id}/events").text)
    api.get(f"/api/v1/accounting-exports/{export_id}/events")
    return final


def _add_expense(api: httpx.Client, ref: str) -> str:
    created = api.post("/api/v1/expenses", json={
        "source_ref": ref, "status": "approved", "description": "Office chair",
        "employee_name": "Kari Nordmann", "expense_date": date.today().isoformat(), "rows": [
            {"account": "6800", "amount": "1250.00", "vat_code": "1", "description": "Chair"},
            {"account": "2930", "amount": "-1250.00", "description": "Owed to employee"}]})
    assert created.status_code == 201, created.text
    return created.json()["expense_id"]


def _reported(findity_sandbox, org_id: str, export_id: str, voucher_ids: list[str]) -> bool:
    done = {u["id"] for r in findity_sandbox.status_updates(org_id, export_id)
            if r.get("response_status") == 200 for u in r["body"]["voucherUpdates"]}
    return set(voucher_ids) <= done


@pytest.fixture(scope="module")
def production_api(service_env, test_tmp_dir) -> Iterator[str]:
    """An API server run as production runs it (Procfile, Dockerfile): uvicorn's default log
    level, so its access log is on. The session's ``api_server`` runs at ``warning``, which
    would hide whatever the access log writes."""
    port = free_port()
    process = ManagedProcess(
        "api-access-log",
        python_argv("-m", "uvicorn", "producers.api.app:app", "--host", "127.0.0.1",
                    "--port", str(port)),
        env=service_env, log_dir=test_tmp_dir / "logs")
    base_url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base_url}/healthz", timeout=60, process=process)
    yield base_url
    process.stop()


@pytest.fixture(scope="module")
def flow(production_api, tripletex_sandbox, findity_sandbox, workers) -> Iterator[Flow]:
    api_server = production_api
    if not workers.running:
        workers.start()
    admin_token = get_settings().admin_token
    flow = Flow(secrets={"admin token": admin_token}, webhook_token="")
    hooks = {"response": [_recorder(flow)]}
    admin = httpx.Client(base_url=api_server, timeout=30, event_hooks=hooks,
                         headers={"Authorization": f"Bearer {admin_token}"})
    anonymous = httpx.Client(base_url=api_server, timeout=30, event_hooks=hooks)

    created = admin.post("/api/v1/admin/organizations", json={"name": "Secrets AS"})
    assert created.status_code == 201, created.text
    flow.creation_responses.add(len(flow.responses) - 1)
    org_id, api_key = created.json()["organization_id"], created.json()["api_key"]
    second = admin.post(f"/api/v1/admin/organizations/{org_id}/api-keys")
    assert second.status_code == 201, second.text
    flow.creation_responses.add(len(flow.responses) - 1)
    assert admin.delete(f"/api/v1/admin/organizations/{org_id}/api-keys/"
                        f"{second.json()['api_key_id']}").status_code == 200
    company = tripletex_sandbox.create_company("Secrets AS")
    flow.secrets |= {"API key": api_key, "revoked API key": second.json()["api_key"],
                     "Tripletex consumer token": company["consumer_token"],
                     "Tripletex employee token": company["employee_token"]}
    connection = admin.put(f"/api/v1/admin/organizations/{org_id}/connections/tripletex", json={
        "base_url": tripletex_sandbox.base_url, "credentials": {
            "consumer_token": company["consumer_token"],
            "employee_token": company["employee_token"], "company_id": "0"}})
    assert connection.status_code == 200, connection.text
    api = httpx.Client(base_url=api_server, timeout=30, event_hooks=hooks,
                       headers={"Authorization": f"Bearer {api_key}"})

    # Tripletex: book, then book again after the sandbox expired our session token.
    _export_and_wait(api, _add_expense(api, "secrets-1"), "success")
    assert tripletex_sandbox.expire_sessions(company["company_id"]) >= 1
    _export_and_wait(api, _add_expense(api, "secrets-2"), "success")

    # Tripletex refuses a wrong token pair: the error travels to the export and its events.
    other = admin.post("/api/v1/admin/organizations", json={"name": "Wrong Tokens AS"})
    flow.creation_responses.add(len(flow.responses) - 1)
    other_id, other_key = other.json()["organization_id"], other.json()["api_key"]
    flow.secrets |= {"other API key": other_key, "wrong consumer token": WRONG_CONSUMER,
                     "wrong employee token": WRONG_EMPLOYEE}
    assert admin.put(f"/api/v1/admin/organizations/{other_id}/connections/tripletex", json={
        "base_url": tripletex_sandbox.base_url, "credentials": {
            "consumer_token": WRONG_CONSUMER, "employee_token": WRONG_EMPLOYEE}}).status_code == 200
    other_api = httpx.Client(base_url=api_server, timeout=30, event_hooks=hooks,
                             headers={"Authorization": f"Bearer {other_key}"})
    failed = _export_and_wait(other_api, _add_expense(other_api, "secrets-wrong"), "failed")
    assert failed["error_message"]

    # Findity: two packages through webhook -> worker -> Tripletex -> report back; the second
    # after Findity revoked our access token.
    findity_org = findity_sandbox.create_organization(name="Secrets Findity AS")
    flow.secrets["Findity client secret"] = findity_org["client_secret"]
    source = admin.put(f"/api/v1/admin/organizations/{org_id}/sources/findity", json={
        "base_url": findity_org["base_url"],
        "credentials": {"client_id": findity_org["client_id"],
                        "client_secret": findity_org["client_secret"],
                        "token_url": findity_org["token_url"]},
        "options": {"organization_id": findity_org["organization_id"]}})
    assert source.status_code == 200, source.text
    webhook_path = source.json()["webhook_path"]
    flow.webhook_token = webhook_path.rsplit("/", 1)[1]
    findity_sandbox.update_organization(findity_org["organization_id"],
                                        webhook_url=api_server + webhook_path)
    packages = []
    for n in range(2):
        package = findity_sandbox.create_export(findity_org["organization_id"], reports=REPORTS)
        _wait(f"Findity package {n + 1} reported", lambda package=package: _reported(
            findity_sandbox, findity_org["organization_id"], package["export_id"],
            package["voucher_ids"]))
        packages.append(package)
        if n == 0:
            assert findity_sandbox.revoke_tokens(findity_org["organization_id"]) >= 1
    for row in api.get("/api/v1/source-exports").json()["data"]:
        api.get(f"/api/v1/source-exports/{row['source_export_id']}")

    # Findity refuses a wrong client secret: the error travels to the package's last_error.
    wrong_findity = findity_sandbox.create_organization(name="Wrong Secret Findity AS")
    flow.secrets["wrong Findity client secret"] = WRONG_FINDITY_SECRET
    wrong_source = admin.put(f"/api/v1/admin/organizations/{other_id}/sources/findity", json={
        "base_url": wrong_findity["base_url"],
        "credentials": {"client_id": wrong_findity["client_id"],
                        "client_secret": WRONG_FINDITY_SECRET,
                        "token_url": wrong_findity["token_url"]},
        "options": {"organization_id": wrong_findity["organization_id"]}})
    assert wrong_source.status_code == 200, wrong_source.text
    findity_sandbox.update_organization(
        wrong_findity["organization_id"],
        webhook_url=api_server + wrong_source.json()["webhook_path"])
    findity_sandbox.create_export(wrong_findity["organization_id"], reports=REPORTS)
    refused = _wait("the package refused for its wrong client secret", lambda: [
        row for row in other_api.get("/api/v1/source-exports").json()["data"]
        if row["last_error"]])
    other_api.get(f"/api/v1/source-exports/{refused[0]['source_export_id']}")

    # Signed webhooks: a valid redelivery and a forged one.
    flow.secrets["webhook secret"] = WEBHOOK_SECRET
    assert admin.put(f"/api/v1/admin/organizations/{org_id}/sources/findity", json={
        "base_url": findity_org["base_url"],
        "webhook_secret": WEBHOOK_SECRET}).json()["signed_webhooks"] is True
    body = (b'{"exportId": "%s", "organizationId": "%s"}'
            % (packages[0]["export_id"].encode(), findity_org["organization_id"].encode()))
    good = sign(WEBHOOK_SECRET, int(time.time()), body)
    flow.secrets["a valid signature"] = good.split("v1=")[1]
    assert anonymous.post(webhook_path, content=body, headers={SIGNATURE_HEADER: good}).json()[
        "duplicate"] is True
    forged = anonymous.post(webhook_path, content=body + b" ", headers={SIGNATURE_HEADER: good})
    assert forged.status_code == 401
    flow.secrets["the signature the forged body needed"] = sign(
        WEBHOOK_SECRET, int(good.split(",")[0][2:]), body + b" ").split("v1=")[1]

    # Read back everything the API shows about these organizations.
    for client in (api, other_api):
        for row in client.get("/api/v1/accounting-exports?limit=100").json()["data"]:
            client.get(f"/api/v1/accounting-exports/{row['export_id']}")
            client.get(f"/api/v1/accounting-exports/{row['export_id']}/events")
    admin.get("/api/v1/admin/organizations")
    for org in (org_id, other_id):
        for what in ("api-keys", "connections", "sources"):
            assert admin.get(f"/api/v1/admin/organizations/{org}/{what}").status_code == 200
    anonymous.get("/healthz")

    flow.tripletex_log = tripletex_sandbox.process.log_path
    flow.findity_log = findity_sandbox.process.log_path
    # What reached each vendor: the vouchers Tripletex booked, the reports Findity received.
    flow.tripletex_received = repr(tripletex_sandbox.vouchers(company["company_id"]))
    flow.findity_received = repr([findity_sandbox.status_updates(
        findity_org["organization_id"], p["export_id"]) for p in packages])
    yield flow
    for client in (admin, anonymous, api, other_api):
        client.close()


def _found(secrets: dict[str, str], text: str) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


def test_credentials_are_encrypted_at_rest(flow: Flow):
    with session_scope() as session:
        targets = session.execute(text(
            "SELECT credentials_encrypted FROM target_connections")).scalars().all()
        sources = session.execute(text(
            "SELECT credentials_encrypted, webhook_secret_encrypted FROM source_connections"
        )).all()
    decrypted = [crypto.decrypt_json(c) for c in targets]
    assert {"consumer_token": flow.secrets["Tripletex consumer token"],
            "employee_token": flow.secrets["Tripletex employee token"]}.items() <= next(
        d for d in decrypted if d.get("consumer_token") == flow.secrets[
            "Tripletex consumer token"]).items()
    assert any(crypto.decrypt_json(c).get("client_secret") == flow.secrets["Findity client secret"]
               for c, _ in sources)
    assert any(w and crypto.decrypt_json(w) == {"secret": WEBHOOK_SECRET} for _, w in sources)
    for ciphertext in [*targets, *(c for row in sources for c in row if c)]:
        assert ciphertext.startswith("gAAAAA"), "not a Fernet token"  # version byte 0x80


def test_no_row_of_any_table_holds_a_secret_in_clear(flow: Flow):
    with session_scope() as session:
        for table in Base.metadata.sorted_tables:
            dump = repr(session.execute(select(table)).all())
            assert _found(flow.secrets, dump) == [], table.name
            assert not SESSION_TOKEN.search(dump), table.name
            if table.name != "source_connections":  # the webhook URL's token is looked up there
                assert flow.webhook_token not in dump, table.name


def test_no_api_response_shows_a_secret(flow: Flow):
    assert len(flow.responses) > 40
    for index, (request, response) in enumerate(flow.responses):
        if index in flow.creation_responses:
            continue  # "Shown once; store it now": the key, and only the new key
        assert _found(flow.secrets, response) == [], request
        assert not SESSION_TOKEN.search(response), request
        for pattern in UNMASKED:
            assert not pattern.search(response), (request, pattern.pattern)
        if not request.startswith(("PUT /api/v1/admin/", "GET /api/v1/admin/")):
            assert flow.webhook_token not in response, request  # only admins see the URL
    creations = [flow.responses[i][1] for i in sorted(flow.creation_responses)]
    assert [_found(flow.secrets, c) for c in creations] == [
        ["API key"], ["revoked API key"], ["other API key"]]


def _our_logs(test_tmp_dir: Path) -> dict[str, str]:
    """Every log of the API servers and workers of this session (they share one directory)."""
    logs = {p.name: p.read_text(errors="replace")
            for p in sorted((test_tmp_dir / "logs").glob("*.log"))}
    assert "api-access-log.log" in logs and any(name.startswith("worker") for name in logs)
    return logs


def test_no_secret_reaches_the_api_or_worker_logs(flow: Flow, test_tmp_dir: Path):
    logs = _our_logs(test_tmp_dir)
    worker_log = "\n".join(text for name, text in logs.items() if name.startswith("worker"))
    # The logs hold this flow's work: these lines are what the secrets were checked against.
    assert "credentials_renewed_after_401" in worker_log and "reported to source" in worker_log
    assert '"POST /webhooks/findity/' in logs["api-access-log.log"]
    for name, content in logs.items():
        for line in content.splitlines():
            assert _found(flow.secrets, line) == [], (name, line)
            assert flow.webhook_token not in line, (name, line)
            assert not SESSION_TOKEN.search(line), (name, line)
            for pattern in UNMASKED:
                assert not pattern.search(line), (name, line)
            for match in re.finditer(r"(?i)basic\s+([A-Za-z0-9+/]{8,}={0,2})", line):
                decoded = base64.b64decode(match.group(1) + "==").decode(errors="replace")
                assert not SESSION_TOKEN.search(decoded), (name, line)


def test_each_vendor_sees_only_its_own_credentials(flow: Flow):
    """What reached each sandbox (the vouchers Tripletex booked, the reports Findity received,
    and their logs) holds none of our secrets and none of the other vendor's. The vendor knows
    its own credentials: Tripletex even takes its token pair in the session URL."""
    ours = {k: flow.secrets[k] for k in (
        "admin token", "API key", "revoked API key", "other API key", "webhook secret",
        "a valid signature", "the signature the forged body needed")}
    tripletex_own = {k: v for k, v in flow.secrets.items() if "token" in k and "API" not in k
                     and k != "admin token"}
    assert len(tripletex_own) == 4
    tripletex = flow.tripletex_log.read_text(errors="replace") + flow.tripletex_received
    findity = flow.findity_log.read_text(errors="replace") + flow.findity_received
    assert "TTX" in flow.tripletex_received or "Office" in flow.tripletex_received
    assert "voucherUpdates" in flow.findity_received
    assert _found({**ours, "Findity client secret": flow.secrets["Findity client secret"]},
                  tripletex) == []
    assert flow.webhook_token not in tripletex
    assert _found({**ours, **tripletex_own}, findity) == []
