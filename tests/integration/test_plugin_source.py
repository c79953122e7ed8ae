"""A source system added through the registry alone runs end to end through the real worker.

``tests/plugins/feed_source`` is one folder with a ``SYSTEM`` (and its own tiny HTTP server, run
here in the test process); nothing else in the repository names it. An API process and a worker
process started with ``AIC_EXTRA_SYSTEMS`` naming it and ``tests.plugins.ledger_target`` accept
a connection to it, and the worker polls its feed, ingests each listed entry as a unit, books
the expenses into the throwaway ledger target, and reports the outcomes back in chunks of at
most two gathered across units: poll -> ingest -> export -> report, with no vendor of ours.

The pair uses its own Redis database as broker, so the suite's other workers (which do not load
the plug-ins) never take its tasks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import redis
from celery import Celery

from devstack.processes import ManagedProcess, free_port, python_argv, wait_for_http
from shared.config import get_settings
from shared.queue import TASK_POLL_SOURCES
from tests.fixtures.stack import Workers
from tests.plugins.feed_source import server as feed_server

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]
PLUGINS = "tests.plugins.ledger_target,tests.plugins.feed_source"


@pytest.fixture
def plugin_stack(service_env, test_tmp_dir):
    broker = redis.Redis.from_url(service_env["AIC_REDIS_URL"])
    db = (broker.connection_pool.connection_kwargs.get("db", 0) + 2) % 16
    broker_url = service_env["AIC_REDIS_URL"].rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(broker_url).flushdb()
    env = {**service_env, "AIC_REDIS_URL": broker_url, "AIC_EXTRA_SYSTEMS": PLUGINS}
    log_dir = test_tmp_dir / "logs-plugin-source"
    port = free_port()
    api = ManagedProcess("api-plugin-source", python_argv(
        "-m", "uvicorn", "producers.api.app:app", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning"), env=env, log_dir=log_dir, cwd=ROOT)
    workers = Workers(env=env, log_dir=log_dir)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60, process=api)
        workers.start(concurrency=2)
        yield f"http://127.0.0.1:{port}", env, broker_url
    finally:
        workers.stop_all()
        api.stop()
        redis.Redis.from_url(broker_url).flushdb()


@pytest.fixture
def feed():
    server = feed_server.FeedServer().start()
    yield server
    server.stop()


def _wait(what: str, check, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return value


def test_entries_of_a_source_registered_only_by_the_test_are_booked_and_reported(
        plugin_stack, feed, tmp_path):
    api_url, env, broker_url = plugin_stack
    ledger = tmp_path / "ledger.jsonl"
    admin = httpx.Client(base_url=api_url, timeout=30,
                         headers={"Authorization": f"Bearer {env['AIC_ADMIN_TOKEN']}"})
    org = admin.post("/api/v1/admin/organizations", json={"name": "Feed Plug-in AS"}).json()
    base = f"/api/v1/admin/organizations/{org['organization_id']}"
    assert admin.put(f"{base}/connections/ledger", json={
        "base_url": "http://ledger.invalid", "credentials": {"api_key": "letmein"},
        "options": {"ledger_path": str(ledger)}}).status_code == 200

    # The registry entry's credential fields and options model are what the API checks.
    missing = admin.put(f"{base}/sources/feed", json={
        "base_url": feed.url, "credentials": {"token": "x"}, "target_system": "ledger"})
    assert missing.status_code == 422 and "api_key" in missing.text, missing.text
    unknown_option = admin.put(f"{base}/sources/feed", json={
        "base_url": feed.url, "credentials": {"api_key": feed_server.API_KEY},
        "target_system": "ledger", "options": {"colour": "blue"}})
    assert unknown_option.status_code == 422 and "colour" in unknown_option.text
    put = admin.put(f"{base}/sources/feed", json={
        "base_url": feed.url, "credentials": {"api_key": feed_server.API_KEY},
        "target_system": "ledger"})
    assert put.status_code == 200, put.text

    entries = [feed.add(amount) for amount in ("100.00", "200.00", "300.00")]
    feed.entries.append({"id": "4", "text": "Mystery", "amount": "50.00", "account": "9999",
                         "date": "2026-11-02"})
    broker = Celery(broker=broker_url)

    def reported_after_a_poll():
        # Polled again and again like beat would (a poll that fails is simply repeated).
        if len(feed.held()) == 4:
            return feed.held()
        broker.send_task(TASK_POLL_SOURCES, queue=get_settings().maintenance_queue)
        time.sleep(2)
        return None

    held = _wait("every entry's outcome reported to the feed", reported_after_a_poll)
    lines = [json.loads(x) for x in ledger.read_text().splitlines()]
    booked = {line["voucher_id"] for line in lines if "voucher_id" in line}
    assert len(booked) == 3  # one voucher per booked entry, nothing twice
    assert {held[e]["status"] for e in entries} == {"SUCCESS"}
    assert {held[e]["number"] for e in entries} == booked
    assert held["4"]["status"] == "FAILED" and "9999" in held["4"]["error"]
    # Chunks of at most two, and never an entry reported before its booking was committed.
    assert all(len(call) <= 2 for call in feed.results_calls) and not feed.refused_calls

    api = httpx.Client(base_url=api_url, timeout=30,
                       headers={"Authorization": f"Bearer {org['api_key']}"})
    def completed_units():
        rows = api.get("/api/v1/source-exports", params={"limit": 10}).json()["data"]
        done = {"completed", "completed_with_failures"}
        return rows if len(rows) == 4 and {r["status"] for r in rows} <= done else None

    units = _wait("every unit completed", completed_units)
    assert sorted((u["source_export_ref"], u["status"], u["received_via"]) for u in units) == [
        ("1", "completed", "poll"), ("2", "completed", "poll"), ("3", "completed", "poll"),
        ("4", "completed_with_failures", "poll")]
    first = next(u for u in units if u["source_export_ref"] == "1")
    detail = api.get(f"/api/v1/source-exports/{first['source_export_id']}").json()
    export = api.get(f"/api/v1/accounting-exports/{detail['vouchers'][0]['export_id']}").json()
    assert export["status"] == "success" and export["target_system"] == "ledger"
    assert detail["vouchers"][0]["reported_status"] == "SUCCESS"
