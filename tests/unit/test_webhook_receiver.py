"""The webhook receiver's behaviour under redeliveries, concurrency, bad input and a broker that
fails after the commit (its speed is ``bench.webhook_receiver``'s business, not these tests')."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from datetime import timedelta

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from sqlalchemy import func, select

import shared.jobs
from producers.api.app import create_app
from shared.config import get_settings
from shared.db.models import SourceUnit, SourceUnitEvent, WebhookDelivery
from shared.db.session import session_scope
from shared.db.types import utcnow
from shared.domain import sources, sweeper
from shared.queue import TASK_INGEST_SOURCE_UNIT, RedisListProducer, celery_app, list_producer

FINDITY_ORG = "f-receiver"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def connection(org):
    with session_scope() as session:
        found = sources.upsert_source_connection(
            session, org.id, "findity", base_url="http://127.0.0.1:9/api",
            credentials={"client_id": "c", "client_secret": "s",
                         "token_url": "http://127.0.0.1:9/token"},
            options={"organization_id": FINDITY_ORG})
        return found.id, found.webhook_token


def _deliver(client, token: str, export_id: str, org: str = FINDITY_ORG):
    return client.post(f"/webhooks/findity/{token}",
                       json={"exportId": export_id, "organizationId": org})


def _rows(connection_id: str) -> tuple[list[str], int, list[str]]:
    """(the units' external ids, the deliveries logged, the 'announced' events)."""
    with session_scope() as session:
        units = session.scalars(select(SourceUnit.external_export_id).where(
            SourceUnit.source_connection_id == connection_id)).all()
        deliveries = session.scalar(select(func.count()).select_from(WebhookDelivery).where(
            WebhookDelivery.source_connection_id == connection_id))
        announced = session.scalars(
            select(SourceUnitEvent.unit_id).join(SourceUnit,
                                                 SourceUnit.id == SourceUnitEvent.unit_id)
            .where(SourceUnit.source_connection_id == connection_id,
                   SourceUnitEvent.kind == "announced")).all()
        return sorted(units), deliveries, announced


def test_a_redelivery_is_answered_200_logged_and_announces_nothing(client, connection,
                                                                   sent_jobs):
    connection_id, token = connection
    first = _deliver(client, token, "exp-1")
    again = _deliver(client, token, "exp-1")
    assert (first.status_code, first.json()) == (200, {"received": True, "duplicate": False})
    assert (again.status_code, again.json()) == (200, {"received": True, "duplicate": True})
    units, deliveries, announced = _rows(connection_id)
    assert units == ["exp-1"] and deliveries == 2 and len(announced) == 1
    assert [(j.task_name, j.args) for j in sent_jobs] == [(TASK_INGEST_SOURCE_UNIT, announced)]


def test_a_delivery_and_its_redelivery_write_these_rows(client, connection, sent_jobs):
    """The rows themselves, whichever database the tests run on: PostgreSQL writes them in one
    statement, SQLite in three (sources.record_webhook); both must write these."""
    connection_id, token = connection
    _deliver(client, token, "exp-rows")
    _deliver(client, token, "exp-rows")
    with session_scope() as session:
        unit = session.scalars(select(SourceUnit).where(
            SourceUnit.source_connection_id == connection_id)).one()
        events = session.scalars(select(SourceUnitEvent).where(
            SourceUnitEvent.unit_id == unit.id)).all()
        deliveries = session.scalars(select(WebhookDelivery).where(
            WebhookDelivery.source_connection_id == connection_id)
            .order_by(WebhookDelivery.id)).all()
        assert (unit.external_export_id, unit.status, unit.received_via, unit.attempts,
                unit.listed_payload, unit.organization_id) == (
            "exp-rows", "received", "webhook", 0, None,
            session.get(sources.SourceConnection, connection_id).organization_id)
        assert unit.received_at is not None and unit.created_at is not None
        assert [(e.kind, e.actor, e.data, e.from_status, e.to_status, e.reason)
                for e in events] == [("announced", "webhook", {"external_id": "exp-rows"},
                                      None, None, None)]
        assert events[0].created_at is not None
        assert [(d.external_export_id, d.duplicate, d.body["exportId"])
                for d in deliveries] == [("exp-rows", False, "exp-rows"),
                                         ("exp-rows", True, "exp-rows")]
        assert all(d.received_at is not None for d in deliveries)
    assert [(j.task_name, j.args) for j in sent_jobs] == [(TASK_INGEST_SOURCE_UNIT, [unit.id])]


def test_concurrent_copies_of_one_delivery_make_one_unit_and_one_job(client, connection,
                                                                     sent_jobs):
    """Findity may deliver the same webhook several times at once: the unique constraint decides
    in the INSERT ... ON CONFLICT, whichever thread gets there first."""
    connection_id, token = connection
    copies, barrier = 12, threading.Barrier(12)
    answers: list = []

    def deliver(export_id: str) -> None:
        barrier.wait()
        answers.append(_deliver(client, token, export_id))

    threads = [threading.Thread(target=deliver, args=(f"exp-{i % 3}",)) for i in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(a.status_code for a in answers) == [200] * copies
    assert sum(not a.json()["duplicate"] for a in answers) == 3
    units, deliveries, announced = _rows(connection_id)
    assert units == ["exp-0", "exp-1", "exp-2"] and deliveries == copies
    assert sorted(j.args[0] for j in sent_jobs) == sorted(announced) and len(announced) == 3


def test_each_committed_delivery_is_counted_once_by_whether_it_repeated_one(client, connection,
                                                                           sent_jobs):
    from shared.metrics import WEBHOOK_DELIVERIES

    _, token = connection

    def counts() -> tuple[float, float]:
        return tuple(WEBHOOK_DELIVERIES.labels(result)._value.get()
                     for result in ("new", "duplicate"))

    before = counts()
    _deliver(client, token, "exp-1")
    _deliver(client, token, "exp-1")
    _deliver(client, token, "exp-2", org="someone-else")  # refused: nothing stored, not counted
    _deliver(client, "x" * 32, "exp-3")  # unknown URL: not counted
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


@pytest.mark.parametrize("body, code", [
    (b"not json", "malformed_webhook"),
    (b'{"organizationId": "f-receiver"}', "malformed_webhook"),
    (json.dumps({"exportId": "x" * 101, "organizationId": FINDITY_ORG}).encode(),
     "malformed_webhook"),
    (json.dumps({"exportId": "exp-9", "organizationId": "someone-else"}).encode(),
     "organization_mismatch"),
])
def test_bad_input_gets_a_clear_400_and_changes_nothing(client, connection, sent_jobs, body,
                                                        code):
    connection_id, token = connection
    response = client.post(f"/webhooks/findity/{token}", content=body,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == code
    assert _rows(connection_id) == ([], 0, []) and sent_jobs == []


def test_an_unknown_token_is_a_404_and_changes_nothing(client, connection, sent_jobs):
    connection_id, _ = connection
    response = _deliver(client, "x" * 32, "exp-1")
    assert response.status_code == 404
    assert _rows(connection_id) == ([], 0, []) and sent_jobs == []


def _set_webhook_secret(org_id: str, secret: str) -> None:
    """What an operator does from another process (``aic source set``, the admin API): this
    process is not told."""
    with session_scope() as session:
        sources.upsert_source_connection(session, org_id, "findity",
                                         base_url="http://127.0.0.1:9/api", webhook_secret=secret)


def _signed(client, token: str, export_id: str, secret: str):
    body = json.dumps({"exportId": export_id, "organizationId": FINDITY_ORG}).encode()
    signature = sources.sign(secret, int(utcnow().timestamp()), body)
    return client.post(f"/webhooks/findity/{token}", content=body, headers={
        "Content-Type": "application/json", sources.SIGNATURE_HEADER: signature})


def test_a_secret_set_after_deliveries_is_required_from_the_next_delivery(client, connection,
                                                                          org, sent_jobs):
    """The receiver keeps each token's connection between deliveries (no SELECT of it per
    delivery), but a delivery checked against a connection that has changed since is never
    recorded: the next unsigned delivery is refused at once, a signed one is taken."""
    connection_id, token = connection
    assert _deliver(client, token, "exp-1").status_code == 200
    _set_webhook_secret(org.id, "the-new-secret")

    unsigned = _deliver(client, token, "exp-2")
    assert unsigned.status_code == 401
    assert unsigned.json()["error"]["code"] == "invalid_signature"
    assert _signed(client, token, "exp-2", "a-guessed-secret").status_code == 401
    assert _rows(connection_id)[:2] == (["exp-1"], 1)
    signed = _signed(client, token, "exp-2", "the-new-secret")
    assert (signed.status_code, signed.json()) == (200, {"received": True, "duplicate": False})
    units, deliveries, announced = _rows(connection_id)
    assert units == ["exp-1", "exp-2"] and deliveries == 2 and len(announced) == 2
    assert len(sent_jobs) == 2


def test_a_secret_rotated_or_removed_after_deliveries_takes_effect_at_once(client, connection,
                                                                           org, sent_jobs):
    connection_id, token = connection
    _set_webhook_secret(org.id, "first-secret")
    assert _signed(client, token, "exp-1", "first-secret").status_code == 200
    _set_webhook_secret(org.id, "second-secret")
    assert _signed(client, token, "exp-2", "first-secret").status_code == 401
    assert _signed(client, token, "exp-2", "second-secret").status_code == 200
    _set_webhook_secret(org.id, "")  # removed: unsigned deliveries are taken again
    assert _deliver(client, token, "exp-3").status_code == 200
    units, deliveries, announced = _rows(connection_id)
    assert units == ["exp-1", "exp-2", "exp-3"] and deliveries == 3 and len(announced) == 3


def test_a_connection_changed_between_its_check_and_the_commit_records_nothing(
        client, connection, org, sent_jobs, monkeypatch):
    """The connection changes while a delivery is being stored (after its checks, before its
    commit): nothing is recorded, and the source is told to deliver again (503)."""
    from producers.webhooks import receiver

    connection_id, token = connection
    check = receiver._check  # noqa: SLF001 - the moment between the checks and the writes

    def check_then_the_connection_changes(*args, **kwargs):
        check(*args, **kwargs)
        with session_scope() as session:
            session.get(sources.SourceConnection, connection_id).updated_at = utcnow()

    monkeypatch.setattr(receiver, "_check", check_then_the_connection_changes)
    changed = _deliver(client, token, "exp-1")
    assert changed.status_code == 503
    assert changed.json()["error"]["code"] == "connection_changed"
    assert _rows(connection_id) == ([], 0, []) and sent_jobs == []

    monkeypatch.setattr(receiver, "_check", check)
    again = _deliver(client, token, "exp-1")
    assert (again.status_code, again.json()) == (200, {"received": True, "duplicate": False})
    assert _rows(connection_id)[:2] == (["exp-1"], 1) and len(sent_jobs) == 1


def test_a_delivery_whose_transaction_fails_leaves_nothing_and_sends_no_job(
        client, connection, sent_jobs, monkeypatch):
    """Jobs only for committed rows: the unit was inserted, then the transaction failed before
    its commit. The source gets an error and delivers again; that delivery announces it once."""
    connection_id, token = connection
    ingest_job = sources.ingest_job

    # After the rows are written (in one statement on PostgreSQL, three on SQLite), before the
    # commit.
    def fails_before_the_commit(*args, **kwargs):
        raise RuntimeError("the transaction failed after its writes, before its commit")

    monkeypatch.setattr(sources, "ingest_job", fails_before_the_commit)
    assert _deliver(client, token, "exp-1").status_code == 500
    assert _rows(connection_id) == ([], 0, []) and sent_jobs == []

    monkeypatch.setattr(sources, "ingest_job", ingest_job)
    again = _deliver(client, token, "exp-1")
    assert (again.status_code, again.json()) == (200, {"received": True, "duplicate": False})
    units, deliveries, announced = _rows(connection_id)
    assert units == ["exp-1"] and deliveries == 1 and len(announced) == 1
    assert [(j.task_name, j.args) for j in sent_jobs] == [(TASK_INGEST_SOURCE_UNIT, announced)]


def test_a_publish_that_fails_after_the_commit_is_sent_again_by_the_sweeper(
        client, connection, monkeypatch):
    """The row committed, the broker refused the job: the delivery is still answered 200 (the
    source must not send it again for nothing), and the stuck-work sweeper queues the unit."""
    connection_id, token = connection

    def broker_down(job):
        raise redis_lib.ConnectionError("Error 111 connecting to the broker")

    monkeypatch.setattr(shared.jobs, "send_now", broker_down)
    response = _deliver(client, token, "exp-lost")
    assert response.status_code == 200 and response.json()["duplicate"] is False
    units, _, announced = _rows(connection_id)
    assert units == ["exp-lost"]

    requeued: list = []
    monkeypatch.setattr(shared.jobs, "send_now", requeued.append)
    later = utcnow() + timedelta(seconds=get_settings().source_stuck_after_seconds + 1)
    assert sweeper._sweep_source_units(later) >= 1
    assert (TASK_INGEST_SOURCE_UNIT, announced) in [(j.task_name, j.args) for j in requeued]


def test_the_list_producer_puts_what_kombus_producer_puts(monkeypatch):
    """A worker reads our LPUSHed message as kombu's own: the same envelope, headers and body
    (ids, tags and times aside). Celery builds both."""
    queue = f"test-list-producer-{uuid.uuid4().hex[:8]}"
    client = redis_lib.Redis.from_url(get_settings().redis_url)
    try:
        for producer in (None, list_producer()):
            celery_app.send_task(TASK_INGEST_SOURCE_UNIT, args=["srcexp_1"], queue=queue,
                                 headers={"aic_request_id": "req-1"}, producer=producer)
        ours, kombus = (json.loads(raw) for raw in client.lrange(queue, 0, -1))
    finally:
        client.delete(queue)
        client.close()

    def comparable(message: dict) -> dict:
        headers = {k: v for k, v in message["headers"].items()
                   if k not in ("id", "root_id")}
        properties = {k: v for k, v in message["properties"].items()
                      if k not in ("correlation_id", "delivery_tag")}
        return {**message, "headers": headers, "properties": properties,
                "body": base64.b64decode(message["body"])}

    assert comparable(ours) == comparable(kombus)
    assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}
    assert json.loads(base64.b64decode(ours["body"]))[0] == ["srcexp_1"]


def test_the_message_the_list_producer_builds_is_the_one_celery_and_kombu_put():
    """A job sent from outside a task, without a countdown, of a task this process has not
    registered (the webhook receiver's): built without Celery's send_task, read by the worker
    as Celery's own (ids, tags and the origin's process aside)."""
    queue = f"test-list-producer-{uuid.uuid4().hex[:8]}"
    task = f"test.unregistered_{uuid.uuid4().hex[:8]}"
    args, kwargs, headers = ["srcexp_1", 2], {"why": "a test"}, {"aic_request_id": "req-1"}
    producer = list_producer()
    assert producer.builds(task, None)
    client = redis_lib.Redis.from_url(get_settings().redis_url)
    try:
        celery_app.send_task(task, args=args, kwargs=kwargs, queue=queue, headers=headers,
                             task_id="task-1")
        producer.send_task(task, args, kwargs, queue, headers=headers, task_id="task-1")
        ours, kombus = (json.loads(raw) for raw in client.lrange(queue, 0, -1))
    finally:
        client.delete(queue)
        client.close()

    def comparable(message: dict) -> dict:
        properties = {k: v for k, v in message["properties"].items() if k != "delivery_tag"}
        return {**message, "properties": properties, "body": base64.b64decode(message["body"])}

    assert comparable(ours) == comparable(kombus)
    assert ours["headers"]["id"] == ours["properties"]["correlation_id"] == "task-1"


def test_the_list_producer_leaves_to_celery_what_celery_would_build_otherwise(monkeypatch):
    producer = list_producer()
    assert not producer.builds("test.unregistered", 30)  # a countdown: Celery computes the eta
    monkeypatch.setitem(celery_app._tasks, "test.registered", object())
    assert not producer.builds("test.registered", None)  # Celery merges the task's options
    monkeypatch.setattr(type(celery_app), "current_worker_task", property(lambda app: object()))
    assert not producer.builds("test.unregistered", None)  # sent by a task: parent and root ids


def test_the_list_producer_fails_fast_when_the_broker_is_unreachable():
    producer = RedisListProducer("redis://127.0.0.1:1/0")
    with pytest.raises(redis_lib.ConnectionError):
        celery_app.send_task(TASK_INGEST_SOURCE_UNIT, args=["srcexp_1"], queue="exports",
                             producer=producer)


def test_the_list_producer_refuses_what_it_does_not_put_on_the_wire():
    from shared.queue import UnsupportedPublish

    with pytest.raises(UnsupportedPublish, match="priority"):
        celery_app.send_task(TASK_INGEST_SOURCE_UNIT, args=["srcexp_1"], queue="exports",
                             priority=5, producer=list_producer())
