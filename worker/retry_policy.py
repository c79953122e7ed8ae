"""The one place that decides: retry (and when) or give up, for every kind of task.

Every task kind has a ``RetryRegime``: data, not code. ``decide(regime, cause, attempt)`` reads
it and is the only function that turns a failure into a decision; the tasks apply the decision
through one decorator (``worker.tasks.retried_as``) and the export job through
``export_job._schedule_retry`` (which writes it with the database's clock and the export's lease:
the posting protocol is unchanged).

The decision table (``tests/unit/test_retry_policy.py`` checks every row):

============ ===================== ==================== =========== ================== ================
task kind    transient error        attempts used up     permanent   told to wait (429) database outage
============ ===================== ==================== =========== ================== ================
export       backoff, attempt used  give up (fails)      give up     >= Retry-After,    after the lease,
                                                                     attempt refunded   no attempt used
ingest       backoff, attempt used  give up (the poller  give up     >= Retry-After,    after the lease
                                    takes it again)                  attempt used
report       backoff                never                give up     >= Retry-After     backoff
mark         backoff                never                give up     >= Retry-After     backoff
============ ===================== ==================== =========== ================== ================

Why they differ:

- export: nothing is booked yet (or the posting protocol knows whether it is), so a bounded
  budget (``AIC_MAX_ATTEMPTS``) ends hopeless exports as ``failed`` with a message. Being told to
  wait is not the export's fault: the attempt is refunded. A database outage retries once the
  attempt's lease has run out, so the next attempt may claim it (nothing could be recorded).
- ingest: a package that cannot be fetched within the budget is left ``received``; the poller
  and the sweeper take it again after ``AIC_SOURCE_STUCK_AFTER_SECONDS``. The ingest holds a
  lease of ``AIC_EXPORT_LEASE_SECONDS`` like an export, so an outage retries after it.
- report / mark: the voucher is already booked, only the message to the source is late; it must
  reach the source eventually, so they retry without limit (a report the source already holds
  is taken for done when sent again). They hold no database lease, so an outage just backs off.

Waits a step computes itself (the export's own decision, "another attempt holds the lease",
the rate limiter's admission saying when the connection's budget frees, the not-found grace of a
source package) are not failures: they come back as ``retry_in`` and are outside every budget.
(An admission refusal comes before the claim, so it has no attempt to refund; a request the
limiter refuses after the claim is the "told to wait" row above, refunded.) Every backoff is capped by ``AIC_RETRY_MAX_SECONDS`` for every kind,
because a countdown longer than the broker's visibility timeout would be delivered twice.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from shared.config import get_settings
from shared.integrations.errors import IntegrationError, RateLimitedError, TransientError

# 2 ** 30 times any base is far above any cap; larger exponents would overflow a float.
_MAX_DOUBLINGS = 30


class TaskKind(str, enum.Enum):
    EXPORT = "export"    # post one export to its target
    INGEST = "ingest"    # fetch a source's unit of work and turn it into exports
    REPORT = "report"    # tell a source what became of its vouchers
    MARK = "mark"        # tell a feed source its items are taken ("mark as exported")


class OutageWait(str, enum.Enum):
    AFTER_LEASE = "after_lease"  # the attempt may hold a database lease: retry once it ran out
    BACKOFF = "backoff"          # no lease: the usual backoff


@dataclass(frozen=True)
class RetryRegime:
    kind: TaskKind
    # False: ``AIC_MAX_ATTEMPTS`` attempts, then give up. True: retry until it succeeds.
    unlimited: bool
    on_database_outage: OutageWait
    # A 429 (or our own limiter) does not use up an attempt. Only meaningful with a budget.
    refunds_rate_limit_waits: bool
    # What giving up means for this kind, said in logs and the task's result.
    after_giving_up: str


REGIMES: dict[TaskKind, RetryRegime] = {
    TaskKind.EXPORT: RetryRegime(
        TaskKind.EXPORT, unlimited=False, on_database_outage=OutageWait.AFTER_LEASE,
        refunds_rate_limit_waits=True, after_giving_up="the export failed"),
    TaskKind.INGEST: RetryRegime(
        TaskKind.INGEST, unlimited=False, on_database_outage=OutageWait.AFTER_LEASE,
        refunds_rate_limit_waits=False,
        after_giving_up="the package stays received; the poller and the sweeper take it again"),
    TaskKind.REPORT: RetryRegime(
        TaskKind.REPORT, unlimited=True, on_database_outage=OutageWait.BACKOFF,
        refunds_rate_limit_waits=False, after_giving_up="the source refused the report"),
    TaskKind.MARK: RetryRegime(
        TaskKind.MARK, unlimited=True, on_database_outage=OutageWait.BACKOFF,
        refunds_rate_limit_waits=False, after_giving_up="the source refused the mark"),
}


class DatabaseOutage:
    """The cause when the database could not be reached (``sqlalchemy.exc.OperationalError``):
    nothing about the work itself, so it never uses up an attempt."""


DATABASE_OUTAGE = DatabaseOutage()
# A step that reports "retry" without an error object (a transient fetch error, a concurrent
# ingest): a transient failure of this attempt.
ATTEMPT_FAILED = TransientError("the attempt did not finish", system="worker", code="retry")


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float = 0.0
    # The attempt does not count towards the budget (the work was told to wait).
    refund: bool = False


def backoff_delay(attempt: int, *, rng: random.Random | None = None) -> float:
    """attempt 1 -> ~base, 2 -> ~2*base, ... capped; jitter spreads retries of a burst apart."""
    settings = get_settings()
    doublings = min(max(attempt, 1) - 1, _MAX_DOUBLINGS)
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** doublings)
    return (rng or random).uniform(ceiling / 2, ceiling)


def decide(regime: RetryRegime, cause: IntegrationError | DatabaseOutage, attempt: int, *,
           rng: random.Random | None = None) -> Decision:
    """Retry or give up after ``attempt`` (1 = the first try) of ``regime``'s kind failed."""
    settings = get_settings()
    if isinstance(cause, DatabaseOutage):
        if regime.on_database_outage is OutageWait.AFTER_LEASE:
            return Decision(retry=True, delay=float(settings.export_lease_seconds), refund=True)
        return Decision(retry=True, delay=backoff_delay(attempt, rng=rng), refund=True)
    if isinstance(cause, RateLimitedError):
        delay = backoff_delay(attempt, rng=rng)
        if cause.retry_after is not None:
            # The server said when; waking earlier only earns another 429.
            delay = max(delay, cause.retry_after + (rng or random).uniform(0, 1))
        delay = min(delay, settings.retry_max_seconds)
        if regime.refunds_rate_limit_waits or regime.unlimited:
            return Decision(retry=True, delay=delay, refund=regime.refunds_rate_limit_waits)
        if attempt >= settings.max_attempts:
            return Decision(retry=False)
        return Decision(retry=True, delay=delay)
    if not cause.retryable:
        return Decision(retry=False)
    if not regime.unlimited and attempt >= settings.max_attempts:
        return Decision(retry=False)
    return Decision(retry=True, delay=backoff_delay(attempt, rng=rng))
