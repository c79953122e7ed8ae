"""The Celery application, shared by producers (which send tasks by name) and workers.

Workers import ``worker.celery_app`` which registers the task modules on this same app.
Configuration follows Celery's guidance for tasks that must not be lost or run twice:
late acknowledgement (the message stays in Redis until the task finished), reject on worker
lost, prefetch 1, JSON only, and a visibility timeout longer than the longest retry countdown.
"""

from __future__ import annotations

import base64
import threading
import uuid
from contextlib import contextmanager
from urllib.parse import urlsplit

from celery import Celery
from celery.app.amqp import AMQP
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from kombu import Queue, serialization
from kombu.entity import PERSISTENT_DELIVERY_MODE, maybe_delivery_mode

from shared.broker_transport import DELAYED_KEY, TRANSPORT_PATH, put_message
from shared.config import get_settings

TASK_EXPORT = "worker.tasks.export_to_target"
TASK_SWEEP = "worker.tasks.sweep_stuck_exports"
TASK_INGEST_SOURCE_UNIT = "worker.tasks.ingest_source_unit"
# The same task's name before source packages became "source units" (migration 0008); still
# registered by the worker so messages queued before an upgrade run.
TASK_INGEST_SOURCE_UNIT_BEFORE_RENAME = "worker.tasks.process_source_export"
TASK_REPORT_TO_SOURCE = "worker.tasks.report_to_source"
TASK_POLL_SOURCES = "worker.tasks.poll_sources"
TASK_SERIALIZER = "json"


def create_celery_app() -> Celery:
    settings = get_settings()
    app = Celery("aic", broker=settings.redis_url)
    if urlsplit(settings.redis_url).scheme in ("redis", "rediss"):
        # kombu's Redis transport, repaired so that a worker survives a Redis restart while it
        # holds unacknowledged messages and holds no message due later (see
        # shared/broker_transport.py). Under this transport's name kombu applies no TLS default
        # for rediss://, so the options are always given: the certificate is checked.
        app.conf.broker_transport = TRANSPORT_PATH
        app.conf.broker_use_ssl = settings.broker_use_ssl()
    app.conf.update(
        task_serializer=TASK_SERIALIZER,
        accept_content=["json"],
        result_serializer="json",
        # The database is the record of outcomes; Celery results would be a second truth.
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=settings.broker_transport_options(),
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.export_queue,
        task_queues=[
            Queue(settings.export_queue),
            Queue(settings.report_queue),
            Queue(settings.maintenance_queue),
        ],
        task_routes={
            TASK_SWEEP: {"queue": settings.maintenance_queue},
            TASK_POLL_SOURCES: {"queue": settings.maintenance_queue},
            TASK_REPORT_TO_SOURCE: {"queue": settings.report_queue},
        },
        # Off unless AIC_CELERY_TASK_EVENTS: Flower enables the workers' events while it runs
        # (see shared/config.py); `celery -A worker.celery_app control enable_events` does too.
        worker_send_task_events=settings.celery_task_events,
        task_send_sent_event=settings.celery_task_events,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "sweep-stuck-exports": {
                "task": TASK_SWEEP,
                "schedule": settings.sweep_interval_seconds,
                "options": {"queue": settings.maintenance_queue},
            },
            "poll-sources": {
                "task": TASK_POLL_SOURCES,
                "schedule": settings.poll_interval_seconds,
                "options": {"queue": settings.maintenance_queue},
            },
        },
    )
    return app


celery_app = create_celery_app()


class UnsupportedPublish(ValueError):
    """A message the Redis list publisher does not put on the wire (see ``RedisListProducer``)."""


class _NoErrorMapping:
    # What Celery's send_task asks of a producer's connection around the publish.
    @contextmanager
    def _reraise_as_library_errors(self):
        yield


class RedisListProducer:
    """The producer ``shared.jobs`` hands to Celery's ``send_task``: Celery builds the task
    message as always (routing, protocol 2 headers, eta, ids); this puts it on the queue's Redis
    list the way kombu's Redis transport does (the same envelope: base64 body, delivery_info,
    a delivery tag; one ``LPUSH`` onto the list named after the queue), over one kept
    connection pool.

    Why not kombu's producer: its Redis channel builds a new redis client for every message
    and goes through its publish machinery: ~0.6 ms of CPU per message and a few ms of a thread,
    the largest single cost of a webhook delivery (issue 12, target 6). Only what our jobs use is
    supported (the default priority, anonymous direct routing to a queue, no expiration, JSON);
    anything else raises ``UnsupportedPublish``. kombu's publish retries while the broker is
    unreachable; this one fails at once (5 s socket timeouts): the job is then "unsent" and the
    stuck-work sweeper sends it again (``shared.jobs``).

    ``send_task`` builds the message itself, for the plain case of a producer process.
    """

    connection = _NoErrorMapping()

    def __init__(self, url: str) -> None:
        import redis as redis_lib

        self._client = redis_lib.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5,
                                                health_check_interval=30)
        self._repr_maxlevels = celery_app.conf.task_repr_maxlevels

    @staticmethod
    def builds(task_name: str, countdown: float | None) -> bool:
        """Whether ``send_task`` puts on the wire what ``celery_app.send_task`` would: a task
        sent without a countdown, from outside a running task (no parent or root id to
        inherit), whose name this process has not registered (Celery would merge the task's
        own options). The webhook receiver's jobs are such; anything else goes through
        Celery's ``send_task`` with this producer."""
        return (countdown is None and celery_app.current_worker_task is None
                and task_name not in celery_app._tasks)  # noqa: SLF001 - as send_task reads it

    def send_task(self, name: str, args: list, kwargs: dict, queue: str,
                  headers: dict | None = None, task_id: str | None = None) -> None:
        """Celery's protocol 2 message (``celery.app.amqp.AMQP.as_task_v2`` with
        ``Celery.send_task``'s defaults) of ``celery_app.send_task(name, args=args,
        kwargs=kwargs, queue=queue, headers=headers, task_id=task_id)``, for what ``builds``
        accepts. Celery's routing, option merging and publish machinery cost a webhook
        delivery more CPU than its LPUSH (issue 12, target 6);
        tests/unit/test_webhook_receiver.py compares this message with the one Celery and
        kombu put on the wire."""
        task_id = task_id or str(uuid.uuid4())
        message_headers = {
            "lang": "py", "task": name, "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": saferepr(args, AMQP.argsrepr_maxsize, maxlevels=self._repr_maxlevels),
            "kwargsrepr": saferepr(kwargs, AMQP.kwargsrepr_maxsize,
                                   maxlevels=self._repr_maxlevels),
            "origin": anon_nodename(), "ignore_result": None, "replaced_task_nesting": 0,
            "stamped_headers": None, "stamps": {},
            **(headers or {}),
        }
        body = (args, kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                               "chord": None})
        self.publish(body, routing_key=queue, serializer=TASK_SERIALIZER,
                     headers=message_headers, correlation_id=task_id,
                     reply_to=celery_app.thread_oid)

    def publish(self, body, routing_key=None, delivery_mode=None, mandatory=False,
                immediate=False, priority=0, content_type=None, content_encoding=None,
                serializer=None, headers=None, compression=None, exchange=None, retry=False,
                retry_policy=None, declare=None, expiration=None, timeout=None,
                confirm_timeout=None, **properties):
        if exchange or not routing_key or priority or compression or expiration is not None:
            raise UnsupportedPublish(
                f"only messages to a queue by name, at the default priority, uncompressed and "
                f"without expiration go through RedisListProducer (exchange={exchange!r}, "
                f"priority={priority!r}, compression={compression!r})")
        content_type, content_encoding, data = serialization.dumps(body, serializer)
        if isinstance(data, str):
            data = data.encode(content_encoding or "utf-8")
        message = {
            "body": base64.b64encode(data).decode("ascii"),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers or {},
            "properties": {
                **properties,
                "delivery_mode": maybe_delivery_mode(delivery_mode or PERSISTENT_DELIVERY_MODE),
                "delivery_info": {"exchange": "", "routing_key": routing_key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        # kombu's Redis transport: the default priority's list is the queue's own name (a
        # message due later waits in the delayed set: shared/broker_transport.py).
        put_message(self._client, routing_key, message)


_list_producers: dict[str, RedisListProducer] = {}
_list_producers_lock = threading.Lock()


def list_producer() -> RedisListProducer:
    """This process's ``RedisListProducer`` for the configured broker (redis-py's pool notices
    a fork and opens new connections in the child)."""
    url = get_settings().redis_url
    producer = _list_producers.get(url)
    if producer is None:
        with _list_producers_lock:
            producer = _list_producers.setdefault(url, RedisListProducer(url))
    return producer


# kombu's Redis transport keeps each queue as a list per priority step: the queue's own name for
# the default priority and "<name>\x06\x16<step>" for the others (kombu.transport.redis).
_PRIORITY_SEPARATOR = "\x06\x16"
# Messages handed to a worker and not yet acknowledged (incl. retries waiting for their
# countdown in a worker's memory): a hash of kombu's Redis transport.
_UNACKED_KEY = "unacked"


def broker_overview(timeout: float = 1.0) -> dict:
    """What the broker holds and who consumes it, for operators (``aic status``,
    ``GET /api/v1/admin/status``). Never raises: an unreachable broker is part of the answer.

    ``queues``: messages ready per queue; ``unacked``: messages a worker holds (running);
    ``delayed``: messages due later (retry countdowns, rate-limit turns) waiting in Redis until
    a worker moves them onto their queue (shared/broker_transport.py); ``workers``: the workers that answered a ping within
    ``timeout``.
    """
    import redis as redis_lib

    settings = get_settings()
    queues = [settings.export_queue, settings.report_queue, settings.maintenance_queue]
    try:
        client = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=timeout,
                                          socket_connect_timeout=timeout)
        try:
            depths = {}
            for queue in queues:
                names = [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in range(1, 10))]
                with client.pipeline(transaction=False) as pipe:
                    for name in names:
                        pipe.llen(name)
                    depths[queue] = sum(pipe.execute())
            unacked = client.hlen(_UNACKED_KEY)
            delayed = client.zcard(DELAYED_KEY)
        finally:
            client.close()
    except Exception as exc:  # reported, not raised: this is a status page
        return {"reachable": False, "error": f"{type(exc).__name__}: {exc}", "queues": {},
                "unacked": None, "delayed": None, "workers": []}
    try:
        replies = celery_app.control.ping(timeout=timeout) or []
        workers = sorted(name for reply in replies for name in reply)
    except Exception:  # noqa: BLE001 - the queues above are still worth showing
        workers = []
    return {"reachable": True, "error": None, "queues": depths, "unacked": unacked,
            "delayed": delayed, "workers": workers}
