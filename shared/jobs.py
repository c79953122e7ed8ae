"""Enqueue Celery tasks only after the database transaction commits.

A producer that sent the task before committing could have a worker look for an export row that
is not there yet (or never will be, if the commit fails). ``enqueue_after_commit`` parks the job
on the transaction (its ``info``); the after-commit hook (``shared.db.session.on_commit``) sends
it. If sending fails after the commit (broker down), the export stays in ``processing`` with
``next_attempt_at`` in the past and the stuck-export sweeper sends it again: nothing is lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from shared.config import get_settings
from shared.db.session import Transaction, on_commit, on_rollback
from shared.logs import log_context
from shared.queue import celery_app, list_producer

log = logging.getLogger(__name__)

_PENDING_KEY = "aic_jobs_after_commit"
# A message header, read back by the worker (worker.celery_app) into its log context.
REQUEST_ID_HEADER = "aic_request_id"
_UNSENT_KEY = "aic_jobs_unsent"


@dataclass
class Job:
    task_name: str
    args: list[Any]
    queue: str
    countdown: float | None = None
    task_id: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def enqueue_after_commit(
    session: Transaction,
    task_name: str,
    *args: Any,
    queue: str,
    countdown: float | None = None,
    task_id: str | None = None,
) -> None:
    enqueue_job_after_commit(session, Job(task_name, list(args), queue, countdown, task_id))


def enqueue_job_after_commit(session: Transaction, job: Job) -> None:
    session.info.setdefault(_PENDING_KEY, []).append(job)


def send_now(job: Job) -> None:
    # The request (or task) that caused this job: its id follows into the worker's log lines.
    request_id = log_context().get("request_id")
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    # RedisListProducer puts the message on the queue's list with one LPUSH (kombu's own
    # producer costs a webhook delivery more CPU than its database work), and builds it too
    # where it can (RedisListProducer.builds); otherwise Celery builds it. With task events on
    # (Flower), Celery's producer goes, as only it sends the "task-sent" event.
    if get_settings().celery_task_events:
        producer = None
    else:
        producer = list_producer()
        if producer.builds(job.task_name, job.countdown):
            producer.send_task(job.task_name, job.args, job.kwargs, job.queue, headers=headers,
                               task_id=job.task_id)
            return
    celery_app.send_task(
        job.task_name,
        args=job.args,
        kwargs=job.kwargs,
        queue=job.queue,
        countdown=job.countdown,
        task_id=job.task_id,
        headers=headers,
        producer=producer,
    )


@on_commit
def _send_pending_jobs(info: dict[str, Any]) -> None:
    jobs: list[Job] = info.pop(_PENDING_KEY, [])
    for job, error in send_jobs(jobs):
        info.setdefault(_UNSENT_KEY, []).append((job, error))


def send_jobs(jobs: list[Job]) -> list[tuple[Job, Exception]]:
    """Send jobs of committed transactions; returns those the broker did not take (logged)."""
    unsent = []
    for job in jobs:
        try:
            send_now(job)
        except Exception as error:  # broker unreachable: the sweeper re-sends from the database
            unsent.append((job, error))
            # Not "args": that is a LogRecord attribute, and logging refuses to overwrite it.
            log.exception("enqueue failed after commit; the sweeper will re-send", extra={
                "task": job.task_name, "task_args": job.args})
    return unsent


def unsent_jobs(session: Transaction) -> list[tuple[Job, Exception]]:
    """The jobs this session committed but could not hand to the broker (and why): a command
    that promised "queued" must say it was not. The rows are committed; the sweeper sends them
    once the broker answers."""
    return list(session.info.get(_UNSENT_KEY, []))


@on_rollback
def _drop_pending_jobs(info: dict[str, Any]) -> None:
    info.pop(_PENDING_KEY, None)
