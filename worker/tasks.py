"""Celery tasks: thin wrappers that take ids, call a plain function, and map its outcome.

Every task is idempotent (the plain function asks "is this already done?" first), which is what
makes late acknowledgement and redelivery safe. Every task that retries does so through
``retried_as``: one place maps a step's outcome and a database outage to Celery's retry, with the
decision of ``worker.retry_policy`` for the task's kind.
"""

from __future__ import annotations

import functools
from typing import Callable, Protocol

from sqlalchemy.exc import OperationalError

from shared.domain import sweeper
from shared.integrations.errors import IntegrationError
from shared.logs import get_logger
from shared.queue import (
    TASK_EXPORT,
    TASK_POLL_SOURCES,
    TASK_INGEST_SOURCE_UNIT,
    TASK_INGEST_SOURCE_UNIT_BEFORE_RENAME,
    TASK_REPORT_TO_SOURCE,
    TASK_SWEEP,
    celery_app,
)
from worker import retry_policy, source_jobs
from worker.export_job import Outcome, run_export
from worker.retry_policy import TaskKind

log = get_logger(__name__)


class WorkEndedBadly(Exception):
    """The task ran to the end and its work ended badly: the export failed, or a step gave up
    for now. Raised so Flower shows the task as FAILURE with this message instead of SUCCESS.
    Declared in each task's ``throws``: Celery records it without a traceback at ERROR, and the
    message is acknowledged like any finished task (no retry, nothing redelivered)."""


class StepOutcome(Protocol):
    kind: str  # "retry" asks for another attempt; anything else ends the task
    detail: str
    # Set when the step decided itself when to come back (the export's own decision, a lease
    # held by another attempt, the not-found grace): outside the task's attempt budget.
    retry_in: float | None
    # What failed, when the step knows (a 429 with its Retry-After); None: a transient failure.
    error: IntegrationError | None


def retried_as(kind: TaskKind) -> Callable:
    """The one retry path of a bound task whose step returns a ``StepOutcome``.

    - the database is unreachable (``OperationalError``): nothing could be recorded; retried as
      the kind's regime says (after the lease the attempt may hold, or with backoff);
    - "retry" with ``retry_in``: retried then, whatever the budget;
    - "retry" without: a failed attempt of this task (counted by Celery's ``request.retries``),
      retried or given up as the regime says; a given-up task is acknowledged.
    """
    regime = retry_policy.REGIMES[kind]

    def wrap(step: Callable[..., StepOutcome]) -> Callable[..., str]:
        @functools.wraps(step)
        def run(task, work_id) -> str:
            attempt = task.request.retries + 1
            try:
                outcome = step(task, work_id)
            except OperationalError as exc:
                decision = retry_policy.decide(regime, retry_policy.DATABASE_OUTAGE, attempt)
                log.warning("database unavailable; task retried later", task_kind=kind.value,
                            work_id=repr(work_id)[:100], in_seconds=round(decision.delay, 1))
                raise task.retry(exc=exc, countdown=decision.delay)
            if outcome.kind == "failed":
                raise WorkEndedBadly(f"failed: {outcome.detail}")
            if outcome.kind != "retry":
                return f"{outcome.kind}: {outcome.detail}"
            if outcome.retry_in is not None:
                raise task.retry(countdown=outcome.retry_in)
            decision = retry_policy.decide(regime, outcome.error or retry_policy.ATTEMPT_FAILED,
                                           attempt)
            if not decision.retry:
                log.warning("task gave up", task_kind=kind.value, work_id=repr(work_id)[:100],
                            attempts=attempt, detail=outcome.detail,
                            after=regime.after_giving_up)
                raise WorkEndedBadly(
                    f"gave up for now ({regime.after_giving_up}): {outcome.detail}")
            raise task.retry(countdown=decision.delay)

        return run

    return wrap


@celery_app.task(name=TASK_EXPORT, bind=True, max_retries=None, acks_late=True,
                 throws=(WorkEndedBadly,))
@retried_as(TaskKind.EXPORT)
def export_to_target(self, export_id: str):
    if not isinstance(export_id, str) or not export_id:
        # A poison message: acknowledge it (by returning) so it cannot block the queue.
        log.error("malformed export task payload dropped", payload=repr(export_id)[:200])
        return Outcome("skipped", "malformed payload")
    # The export job decides its retries itself (its attempts are counted, and refunded, in the
    # database), so a "retry" outcome always carries ``retry_in``.
    return run_export(export_id, celery_task_id=self.request.id)


@celery_app.task(name=TASK_SWEEP, acks_late=True)
def sweep_stuck_exports() -> int:
    return sweeper.requeue_stuck_exports()


@celery_app.task(name=TASK_INGEST_SOURCE_UNIT, bind=True, max_retries=None, acks_late=True,
                 throws=(WorkEndedBadly,))
@retried_as(TaskKind.INGEST)
def ingest_source_unit(self, unit_id: str):
    return source_jobs.ingest_source_unit(unit_id)


# Messages queued before the rename (source packages were "source exports") carry the old task
# name; it stays registered so they still run after an upgrade.
@celery_app.task(name=TASK_INGEST_SOURCE_UNIT_BEFORE_RENAME, bind=True, max_retries=None,
                 acks_late=True, throws=(WorkEndedBadly,))
@retried_as(TaskKind.INGEST)
def process_source_export(self, unit_id: str):
    return source_jobs.ingest_source_unit(unit_id)


@celery_app.task(name=TASK_REPORT_TO_SOURCE, bind=True, max_retries=None, acks_late=True,
                 throws=(WorkEndedBadly,))
@retried_as(TaskKind.REPORT)
def report_to_source(self, source_export_id: str):
    # The source may already hold this report (e.g. the database went away while recording it);
    # the retry sends it again and takes the source's "already held" for done.
    return source_jobs.report_to_source(source_export_id)


@celery_app.task(name=TASK_POLL_SOURCES, acks_late=True)
def poll_sources() -> dict:
    result = source_jobs.poll_sources()
    return {"connections": result.connections, "listed": result.listed,
            "recovered": len(result.recovered), "requeued": len(result.requeued),
            "reannounced": len(result.reannounced),
            "reported_again": len(result.reported_again), "changed": len(result.changed),
            "errors": len(result.errors), "skipped_locked": result.skipped_locked}

