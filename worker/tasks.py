"""Celery tasks: thin wrappers that take ids, call a plain function, and map its outcome.

Every task is idempotent (the plain function asks "is this already done?" first), which is what
makes late acknowledgement and redelivery safe.
"""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from shared.config import get_settings
from shared.logs import get_logger
from shared.queue import (
    TASK_EXPORT,
    TASK_POLL_SOURCES,
    TASK_PROCESS_SOURCE_EXPORT,
    TASK_REPORT_TO_SOURCE,
    TASK_SWEEP,
    celery_app,
)
from shared.domain import sweeper
from worker import source_jobs
from worker.export_job import run_export
from worker.retry_policy import backoff_delay

log = get_logger(__name__)


@celery_app.task(name=TASK_EXPORT, bind=True, max_retries=None, acks_late=True)
def export_to_target(self, export_id: str) -> str:
    if not isinstance(export_id, str) or not export_id:
        # A poison message: acknowledge it (by returning) so it cannot block the queue.
        log.error("malformed export task payload dropped", payload=repr(export_id)[:200])
        return "skipped: malformed payload"
    try:
        outcome = run_export(export_id, celery_task_id=self.request.id)
    except OperationalError as exc:
        # The database is unreachable: nothing could be recorded. Try again once the lease of
        # this attempt (if it got one) has run out.
        log.warning("database unavailable; export retried later", export_id=export_id)
        raise self.retry(exc=exc, countdown=get_settings().export_lease_seconds)
    if outcome.kind == "retry":
        raise self.retry(countdown=outcome.retry_in)
    return f"{outcome.kind}: {outcome.detail}"


@celery_app.task(name=TASK_SWEEP, acks_late=True)
def sweep_stuck_exports() -> int:
    return sweeper.requeue_stuck_exports()


@celery_app.task(name=TASK_PROCESS_SOURCE_EXPORT, bind=True, max_retries=None, acks_late=True)
def process_source_export(self, source_export_id: str) -> str:
    try:
        outcome = source_jobs.ingest_source_export(source_export_id)
    except OperationalError as exc:
        # As for exports: retried once the ingest lease this attempt may hold has run out,
        # instead of being acknowledged as failed and waiting for the poller.
        log.warning("database unavailable; ingest retried later",
                    source_export_id=source_export_id)
        raise self.retry(exc=exc, countdown=get_settings().export_lease_seconds)
    if outcome.kind == "retry":
        if outcome.retry_in is not None:
            # Not found yet (the webhook came before the export was readable): retried for as
            # long as the not-found grace lasts, whatever the attempt budget says.
            raise self.retry(countdown=outcome.retry_in)
        if self.request.retries + 1 >= get_settings().max_attempts:
            # Left in "received": the poller picks it up again after source_stuck_after_seconds.
            return f"gave up for now: {outcome.detail}"
        raise self.retry(countdown=backoff_delay(self.request.retries + 1))
    return f"{outcome.kind}: {outcome.detail}"


@celery_app.task(name=TASK_REPORT_TO_SOURCE, bind=True, max_retries=None, acks_late=True)
def report_to_source(self, source_export_id: str) -> str:
    try:
        outcome = source_jobs.report_to_source(source_export_id)
    except OperationalError as exc:
        # Findity may already hold this report (the database went away while recording it);
        # the retry sends it again and takes Findity's "already processed" for done.
        log.warning("database unavailable; report retried later",
                    source_export_id=source_export_id)
        raise self.retry(exc=exc, countdown=backoff_delay(min(self.request.retries + 1, 12)))
    if outcome.kind == "retry":
        # A report must reach the source eventually: retried with capped backoff, without limit.
        # The voucher is already booked; only the message is late.
        raise self.retry(countdown=backoff_delay(min(self.request.retries + 1, 12)))
    return f"{outcome.kind}: {outcome.detail}"


@celery_app.task(name=TASK_POLL_SOURCES, acks_late=True)
def poll_sources() -> dict:
    result = source_jobs.poll_sources()
    return {"connections": result.connections, "listed": result.listed,
            "recovered": len(result.recovered), "requeued": len(result.requeued),
            "reannounced": len(result.reannounced),
            "errors": len(result.errors), "skipped_locked": result.skipped_locked}
