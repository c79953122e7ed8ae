"""A target system added through the registry alone books an export end to end.

``tests/plugins/ledger_target`` is one folder with a ``SYSTEM``; nothing else in the repository
names it. An API process and a worker process started with
``AIC_EXTRA_SYSTEMS=tests.plugins.ledger_target`` accept a connection to it (its credential
fields checked), take an export to it, and the worker books it through the posting protocol.

The pair uses its own Redis database as broker, so the suite's other workers (which do not load
the plug-in) never take its tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import redis

from devstack.processes import ManagedProcess, free_port, python_argv, wait_for_http
from tests.fixtures.stack import Workers

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "tests.plugins.ledger_target"


@pytest.fixture
def plugin_stack(service_env, test_tmp_dir):
    broker = redis.Redis.from_url(service_env["AIC_REDIS_URL"])
    db = (broker.connection_pool.connection_kwargs.get("db", 0) + 1) % 16
    broker_url = service_env["AIC_REDIS_URL"].rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(broker_url).flushdb()
    env = {**service_env, "AIC_REDIS_URL": broker_url, "AIC_EXTRA_SYSTEMS": PLUGIN}
    log_dir = test_tmp_dir / "logs-plugin"
    port = free_port()
    api = ManagedProcess("api-plugin", python_argv(
        "-m", "uvicorn", "producers.api.app:app", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning"), env=env, log_dir=log_dir, cwd=ROOT)
    workers = Workers(env=env, log_dir=log_dir)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60, process=api)
        workers.start(concurrency=2)
        yield f"http://127.0.0.1:{port}", env
    finally:
        workers.stop_all()
        api.stop()
        redis.Redis.from_url(broker_url).flushdb()


def test_an_export_to_a_target_registered_only_by_the_test_is_booked(plugin_stack, tmp_path):
    api_url, env = plugin_stack
    ledger = tmp_path / "ledger.jsonl"
    admin = httpx.Client(base_url=api_url, timeout=30,
                         headers={"Authorization": f"Bearer {env['AIC_ADMIN_TOKEN']}"})
    org = admin.post("/api/v1/admin/organizations", json={"name": "Plug-in AS"}).json()
    connections = f"/api/v1/admin/organizations/{org['organization_id']}/connections/ledger"

    # The registry entry's credential fields are what the API checks.
    missing = admin.put(connections, json={"base_url": "http://ledger.invalid",
                                           "credentials": {"other": "x"}})
    assert missing.status_code == 422 and "api_key" in missing.text, missing.text
    put = admin.put(connections, json={"base_url": "http://ledger.invalid",
                                       "credentials": {"api_key": "letmein"},
                                       "options": {"ledger_path": str(ledger)}})
    assert put.status_code == 200, put.text
    assert "ledger" in admin.get("/openapi.json").text

    api = httpx.Client(base_url=api_url, timeout=30,
                       headers={"Authorization": f"Bearer {org['api_key']}"})
    expense = api.post("/api/v1/expenses", json={
        "source_ref": "plugin-1", "status": "approved", "description": "Train ticket",
        "employee_name": "Kari Nordmann", "expense_date": "2026-11-02", "currency": "NOK",
        "rows": [{"account": "7140", "amount": "420.00", "description": "Train ticket"},
                 {"account": "2930", "amount": "-420.00", "description": "Owed to employee"}]})
    assert expense.status_code == 201, expense.text
    created = api.post("/api/v1/accounting-exports", json={
        "expense_id": expense.json()["expense_id"], "target_system": "ledger"})
    assert created.status_code == 202, created.text
    export_id = created.json()["export_id"]

    import time
    deadline = time.monotonic() + 60
    while (export := api.get(f"/api/v1/accounting-exports/{export_id}").json())["status"] \
            == "processing":
        assert time.monotonic() < deadline, export
        time.sleep(0.2)
    assert export["status"] == "success", export
    [line] = [json.loads(x) for x in ledger.read_text().splitlines()]
    assert line["reference"] == export_id
    assert export["external_reference"] == f"LEDGER-{line['voucher_id']}"
    kinds = [e["kind"] for e in api.get(f"/api/v1/accounting-exports/{export_id}/events")
             .json()["events"]]
    assert kinds[:5] == ["created", "queued", "started", "posting_started", "posted_to_target"]
