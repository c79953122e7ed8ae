"""The broker transport (shared/broker_transport.py): messages due later wait in Redis, not in
a worker's memory; and a worker survives losing Redis while it holds unacknowledged messages.

Celery's consumer, on a lost connection, collects the kombu connection (which detaches the
transport: ``transport.client = None``) and then closes it; closing the channel restores what it
holds unacknowledged. kombu's own Redis transport raises ``AttributeError`` there, which Celery
treats as unrecoverable (the worker exits); ours raises a connection error, which Celery ignores.
The Redis-restart scenario (tests/reliability/test_redis_restart.py) shows it on real workers.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
import redis
from kombu import Connection, Queue
from kombu.common import ignore_errors

from shared.broker_transport import DELAYED_KEY, TRANSPORT_PATH, DelayedDelivery
from shared.config import get_settings
from shared.queue import RedisListProducer, celery_app, create_celery_app

STOCK_TRANSPORT = "redis"


def _hold_one_unacknowledged(connection: Connection) -> tuple[str, str]:
    """Publish one message and take it without acknowledging it, as a worker holds a task."""
    queue = Queue(f"test-broker-transport-{uuid.uuid4().hex[:8]}")
    with connection.Producer() as producer:
        producer.publish({"held": True}, routing_key=queue.name, declare=[queue])
    channel = connection.default_channel
    message = queue(channel).get(no_ack=False)
    assert message is not None
    assert message.delivery_tag in channel.qos._delivered
    return queue.name, message.delivery_tag


def _close_after_collect(connection: Connection) -> None:
    # What Connection.collect() leaves behind when closing the channel on the broken socket did
    # not get through (Celery's on_connection_error_after_connected), then Celery's close.
    connection.transport.client = None
    ignore_errors(connection, connection.default_channel.close)


@pytest.fixture
def redis_url() -> str:
    return os.environ["AIC_REDIS_URL"]


def test_the_stock_transport_raises_what_kills_a_worker(redis_url: str) -> None:
    # If kombu fixes this, shared/broker_transport.py can go: this test says when.
    connection = Connection(redis_url, transport=STOCK_TRANSPORT)
    queue_name, tag = _hold_one_unacknowledged(connection)
    try:
        with pytest.raises(AttributeError, match="hostname"):
            _close_after_collect(connection)
    finally:
        _forget(redis_url, queue_name, tag)


def test_ours_fails_the_restore_as_a_connection_error_and_keeps_the_message(redis_url: str) -> None:
    connection = Connection(redis_url, transport=TRANSPORT_PATH)
    queue_name, tag = _hold_one_unacknowledged(connection)
    try:
        _close_after_collect(connection)  # no exception escapes ignore_errors
        # Not restored now (the broker is gone at that moment in real life) but not lost either:
        # it stays in the unacked hash, where restore_visible finds it after the visibility
        # timeout.
        client = redis.Redis.from_url(redis_url)
        assert client.hexists("unacked", tag)
        assert client.zscore("unacked_index", tag) is not None
    finally:
        _forget(redis_url, queue_name, tag)


def _forget(redis_url: str, queue_name: str, tag: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hdel("unacked", tag)
    client.zrem("unacked_index", tag)
    client.delete(queue_name)


@pytest.mark.parametrize(("url", "module"), [
    ("redis://127.0.0.1:6379/0", "shared.broker_transport"),
    # With its TLS options given (tests/unit/test_broker_tls.py).
    ("rediss://127.0.0.1:6380/0", "shared.broker_transport"),
])
def test_the_celery_app_uses_it_for_redis_urls(url: str, module: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIC_REDIS_URL", url)
    get_settings.cache_clear()
    try:
        transport = create_celery_app().connection_for_write().transport
        assert type(transport).__module__ == module
    finally:
        get_settings.cache_clear()


# --- messages due later ---------------------------------------------------------------------


@pytest.fixture
def queue_name(redis_url: str):
    name = f"test-delayed-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    client.delete(DELAYED_KEY)
    yield name
    client.delete(name, DELAYED_KEY)


def _delayed(redis_url: str) -> list[tuple[str, str, float]]:
    client = redis.Redis.from_url(redis_url)
    rows = []
    for member, score in client.zrange(DELAYED_KEY, 0, -1, withscores=True):
        key, _, payload = member.decode().partition("\n")
        rows.append((key, payload, score))
    return rows


def _task_ids_on(redis_url: str, queue: str) -> list[str]:
    """The queue's messages' task ids, in the order a worker takes them (kombu pops the right)."""
    client = redis.Redis.from_url(redis_url)
    raw = client.lrange(queue, 0, -1)
    return [json.loads(m)["headers"]["id"] for m in reversed(raw)]


@pytest.mark.parametrize("publisher", ["kombu", "list"])
def test_a_message_due_later_waits_in_the_delayed_set_not_on_its_queue(
        redis_url: str, queue_name: str, publisher: str) -> None:
    producer = RedisListProducer(redis_url) if publisher == "list" else None
    with celery_app.connection_for_write() as connection:
        if producer is None:
            send = lambda **kw: celery_app.send_task(  # noqa: E731
                "test.delayed", args=["x"], queue=queue_name, connection=connection, **kw)
        else:
            send = lambda **kw: celery_app.send_task(  # noqa: E731
                "test.delayed", args=["x"], queue=queue_name, producer=producer, **kw)
        before = time.time()
        later = send(countdown=30)
        now = send()
    assert _task_ids_on(redis_url, queue_name) == [now.id]
    [(key, payload, due)] = _delayed(redis_url)
    assert key == queue_name
    assert json.loads(payload)["headers"]["id"] == later.id
    assert before + 29 < due < time.time() + 31


def test_due_messages_move_to_the_head_of_their_queue_earliest_first(
        redis_url: str, queue_name: str) -> None:
    with celery_app.connection_for_write() as connection:
        def send(**kw):
            return celery_app.send_task("test.delayed", args=["x"], queue=queue_name,
                                        connection=connection, **kw).id
        backlog = send()
        second = send(countdown=20)
        first = send(countdown=10)
        not_yet = send(countdown=60)
    payloads = {json.loads(p)["headers"]["id"]: p for _, p, _ in _delayed(redis_url)}
    mover = DelayedDelivery(redis_url, interval=0.25)

    assert mover.move_due(now=time.time()) == 0
    assert _task_ids_on(redis_url, queue_name) == [backlog]
    assert mover.move_due(now=time.time() + 30) == 2
    # Due ones are taken before the backlog (at their time, like a held ETA), earliest first.
    assert _task_ids_on(redis_url, queue_name) == [first, second, backlog]
    assert [json.loads(p)["headers"]["id"] for _, p, _ in _delayed(redis_url)] == [not_yet]
    # The same bytes as the message would have been on the queue.
    client = redis.Redis.from_url(redis_url)
    on_queue = {json.loads(m)["headers"]["id"]: m.decode() for m in client.lrange(queue_name, 0, -1)}
    assert on_queue[first] == payloads[first] and on_queue[second] == payloads[second]


def test_more_due_than_one_batch_are_all_moved(redis_url: str, queue_name: str) -> None:
    with celery_app.connection_for_write() as connection:
        ids = {celery_app.send_task("test.delayed", args=[i], queue=queue_name,
                                    connection=connection, countdown=5).id for i in range(7)}
    assert DelayedDelivery(redis_url, interval=0.25, batch=3).move_due(time.time() + 10) == 7
    assert set(_task_ids_on(redis_url, queue_name)) == ids and _delayed(redis_url) == []


def test_the_mover_thread_delivers_and_survives_redis_errors(redis_url: str,
                                                             queue_name: str) -> None:
    with celery_app.connection_for_write() as connection:
        soon = celery_app.send_task("test.delayed", args=["x"], queue=queue_name,
                                    connection=connection, countdown=0.5).id
    broken = DelayedDelivery("redis://127.0.0.1:1/0", interval=0.05)
    broken.start()
    mover = DelayedDelivery(redis_url, interval=0.05).start()
    try:
        deadline = time.monotonic() + 5
        while _task_ids_on(redis_url, queue_name) != [soon]:
            assert time.monotonic() < deadline, _delayed(redis_url)
            time.sleep(0.05)
        assert broken._thread.is_alive()  # an unreachable Redis is waited out, not fatal
    finally:
        mover.stop()
        broken.stop()


def test_a_purge_empties_the_queues_messages_due_later_too(redis_url: str,
                                                           queue_name: str) -> None:
    """An operator's ``celery purge``: a retry waiting for its countdown would otherwise come
    back onto the queue just emptied. Another queue's delayed messages stay."""
    other = f"{queue_name}-other"
    with celery_app.connection_for_write() as connection:
        def send(queue: str, **kw) -> str:
            return celery_app.send_task("test.delayed", args=["x"], queue=queue,
                                        connection=connection, **kw).id
        send(queue_name)
        send(queue_name, countdown=30)
        kept = send(other, countdown=30)
        purged = Queue(queue_name, channel=connection.default_channel).purge()
    try:
        assert purged == 2
        assert _task_ids_on(redis_url, queue_name) == []
        assert [(key, json.loads(payload)["headers"]["id"])
                for key, payload, _ in _delayed(redis_url)] == [(other, kept)]
    finally:
        redis.Redis.from_url(redis_url).delete(other)
