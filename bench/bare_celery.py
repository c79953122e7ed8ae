"""The anchor of issue 12's targets 1 and 2: a bare Celery task that does the same single voucher
POST to the same Tripletex sandbox, and nothing else.

``python -m bench.export_throughput --versus-bare`` starts a worker of this app
(``celery -A bench.bare_celery:app worker``) with the same pool and concurrency as our worker,
sends it one task per voucher and compares throughput and CPU per task with our pipeline's.

The app has the delivery settings of ``shared.queue`` that a task which must not be lost needs
(late ack, reject on worker lost, prefetch 1, JSON, no results) and Celery's defaults otherwise
(task events off). The task gets the request body ready-made (built by our Tripletex client in
the benchmark process) and a session token, so its work is the POST alone over one
``httpx.Client`` shared by the process's threads, then one Redis INCR so the benchmark knows it
finished. No database, no lookups, no events.
"""

from __future__ import annotations

import os
import threading

import httpx
import redis
from celery import Celery

BROKER_URL = os.environ.get("AIC_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "bare"
DONE_KEY = "bench:bare:done"
FAILED_KEY = "bench:bare:failed"

app = Celery("bare", broker=BROKER_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)

_local = threading.Lock()
_http: httpx.Client | None = None
_redis = redis.Redis.from_url(BROKER_URL)


def _client() -> httpx.Client:
    global _http
    with _local:
        if _http is None:
            _http = httpx.Client(timeout=30.0)
        return _http


@app.task(name="bench.bare_voucher_post")
def bare_voucher_post(url: str, company_id: str, session_token: str, body: str) -> None:
    response = _client().post(url, params={"sendToLedger": "true"}, content=body.encode("utf-8"),
                              auth=(company_id, session_token),
                              headers={"Content-Type": "application/json; charset=utf-8",
                                       "Accept": "application/json"})
    _redis.incr(DONE_KEY if response.status_code == 201 else FAILED_KEY)
