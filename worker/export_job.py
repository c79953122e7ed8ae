"""Post one export to its target: the plain function behind the Celery task.

Each step commits before the next external call, so a crash at any point leaves a row that tells
the next attempt where to resume:

1. claim   - take the export's lease (a compare-and-set); skip if it is terminal, cancelled or
             not yet due (an early duplicate delivery); if a live worker holds the lease, come
             back when it runs out (that worker may die).
2. map     - build the voucher from the expense and the connection's account mapping.
3. post    - mark ``posting_started_at`` (commit), then POST. If an earlier attempt had started
             posting, first look the voucher up by its external number (our export id): a crash
             between "the target accepted" and "we committed" then finds the voucher instead of
             booking a second one.
4. receipt - attach the receipt when there is one and it is not attached yet.
5. finish  - transition to success with the external reference.

Errors go through ``retry_policy.decide``: retry later (lease released, ``next_attempt_at`` set)
or fail with a readable message. Once a voucher exists in the target the export never becomes
failed: a receipt that cannot be attached is recorded as an event, not as a lost booking.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, or_, update
from sqlalchemy.exc import OperationalError

from shared.config import get_settings
from shared.db.models import AccountingExport, Expense, ExportStatus
from shared.db.session import session_scope
from shared.db.types import utcnow
from shared.domain.mapping import build_voucher_draft
from shared.domain.state_machine import (
    ConcurrentTransition,
    IllegalTransition,
    record_event,
    transition,
)
from shared.domain.vouchers import PostedVoucher
from shared.integrations.errors import IntegrationError, PermanentError, TransientError
from shared.integrations.targets import TargetClient, client_for
from shared.logs import get_logger
from worker import retry_policy

log = get_logger(__name__)

ACTOR = "worker"
# A delivery that arrives this much before the export is due is a duplicate of a retry that is
# still scheduled; the scheduled one will run.
EARLY_TOLERANCE = timedelta(seconds=1)


@dataclass(frozen=True)
class Outcome:
    kind: str  # "success" | "failed" | "retry" | "skipped"
    detail: str = ""
    retry_in: float | None = None


@dataclass
class _Work:
    export_id: str
    lease: str
    attempt: int
    celery_task_id: str | None
    target_system: str
    external_id: str | None
    external_reference: str | None
    posting_started: bool
    receipt_pending: bool


def run_export(export_id: str, *, celery_task_id: str | None = None) -> Outcome:
    work_or_outcome = _claim(export_id, celery_task_id)
    if isinstance(work_or_outcome, Outcome):
        return work_or_outcome
    work = work_or_outcome
    log.info("export started", export_id=export_id, attempt=work.attempt)
    try:
        return _post_and_finish(work)
    except IntegrationError as error:
        return _handle_error(work, error)
    except OperationalError:
        # The database went away mid-attempt: nothing more can be recorded now. The task retries
        # once this attempt's lease has run out (worker.tasks); it is not the export's fault, so
        # it costs no attempt and never fails the export.
        raise
    except Exception as error:  # a bug or an unexpected answer: bounded retries, then failed
        log.exception("unexpected error in export", export_id=export_id, attempt=work.attempt)
        return _handle_error(work, TransientError(
            f"unexpected error: {type(error).__name__}: {error}", system="worker",
            code="unexpected"))


def _claim(export_id: str, celery_task_id: str | None) -> _Work | Outcome:
    settings = get_settings()
    with session_scope() as session:
        export = session.get(AccountingExport, export_id)
        if export is None:
            log.warning("unknown export id; message dropped", export_id=export_id)
            return Outcome("skipped", "unknown export")
        if export.status != ExportStatus.PROCESSING.value:
            return Outcome("skipped", f"already {export.status}")
        now = utcnow()
        if export.next_attempt_at is not None and export.next_attempt_at > now + EARLY_TOLERANCE:
            return Outcome("skipped", "not due yet (duplicate delivery of a scheduled retry)")
        lease = f"{celery_task_id or 'direct'}:{uuid.uuid4().hex[:8]}"
        claimed = session.execute(
            update(AccountingExport)
            .where(
                AccountingExport.id == export_id,
                AccountingExport.status == ExportStatus.PROCESSING.value,
                or_(AccountingExport.lease_expires_at.is_(None),
                    AccountingExport.lease_expires_at < now),
            )
            .values(
                lease_owner=lease,
                lease_expires_at=now + timedelta(seconds=settings.export_lease_seconds),
                attempts=AccountingExport.attempts + 1,
                celery_task_id=celery_task_id,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if claimed != 1:
            # A second delivery while an attempt is running (a redelivery, a duplicate). It must
            # not simply be acknowledged: if the running attempt's worker dies, this may be the
            # only message left. Come back when the lease runs out; by then the export is
            # finished (and this copy ends as "already done") or its worker is gone.
            remaining = ((export.lease_expires_at - now).total_seconds()
                         if export.lease_expires_at is not None else 0.0)
            log.info("export leased by another attempt; checking back when the lease ends",
                     export_id=export_id, in_seconds=round(remaining, 1))
            return Outcome("retry", "another worker holds the lease",
                           retry_in=max(1.0, remaining + 1.0))
        session.refresh(export)
        record_event(session, export, "started", actor=ACTOR, attempt=export.attempts,
                     celery_task_id=celery_task_id)
        expense = export.expense
        return _Work(
            export_id=export.id,
            lease=lease,
            attempt=export.attempts,
            celery_task_id=celery_task_id,
            target_system=export.target_system,
            external_id=export.external_id,
            external_reference=export.external_reference,
            posting_started=export.posting_started_at is not None,
            receipt_pending=expense.receipt_filename is not None
            and export.receipt_attached_at is None,
        )


def _owned(work: _Work):
    return and_(
        AccountingExport.id == work.export_id,
        AccountingExport.status == ExportStatus.PROCESSING.value,
        AccountingExport.lease_owner == work.lease,
    )


def _event(work: _Work, kind: str, *, reason: str | None = None, data: dict | None = None,
           **fields) -> bool:
    """Append an event and update fields, only while we still own the export. False if lost.

    Every step recorded also renews the lease: it runs ``export_lease_seconds`` from the last
    step, not from the claim. An attempt that was slow before posting (lookups, a lookup of an
    earlier voucher) would otherwise start its POST with little lease left; the lease would run
    out while the POST is on its way, and the sweeper or a redelivery would start a second
    attempt that finds no voucher yet and posts another one.
    """
    with session_scope() as session:
        now = utcnow()
        values = {"updated_at": now,
                  "lease_expires_at": now + timedelta(seconds=get_settings().export_lease_seconds),
                  **fields}
        updated = session.execute(
            update(AccountingExport).where(_owned(work)).values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        if updated != 1:
            return False
        export = session.get(AccountingExport, work.export_id)
        record_event(session, export, kind, actor=ACTOR, attempt=work.attempt, reason=reason,
                     celery_task_id=work.celery_task_id, data=data)
        return True


def _load_for_posting(work: _Work):
    with session_scope() as session:
        export = session.get(AccountingExport, work.export_id)
        expense: Expense = export.expense
        connection = export.connection
        draft = build_voucher_draft(export, expense, connection.account_mapping or {})
        client = client_for(connection)
        receipt = None
        if work.receipt_pending:
            receipt = (expense.receipt_filename, expense.receipt_content_type, expense.receipt_data)
        return draft, client, receipt


def _post_and_finish(work: _Work) -> Outcome:
    draft, client, receipt = _load_for_posting(work)

    posted: PostedVoucher | None = None
    if work.external_id is not None:
        posted = PostedVoucher(id=work.external_id, reference=work.external_reference or work.external_id)
    elif work.posting_started:
        posted = client.find_voucher(work.export_id)
        if posted is not None:
            _event(work, "found_existing_voucher",
                   reason="an earlier attempt's voucher was found by its external number",
                   data={"voucher_id": posted.id, "number": posted.number},
                   external_id=posted.id, external_reference=posted.reference,
                   external_number=posted.number)
    if posted is None:
        # Unknown accounts, VAT codes the account refuses, missing dimensions: found here from
        # cached lookups, so the export fails with a precise message and nothing was sent.
        client.preflight(draft)
        if not _event(work, "posting_started", posting_started_at=utcnow()):
            return Outcome("skipped", "export changed (cancelled?) before posting")
        work.posting_started = True
        posted = client.post_voucher(draft)
        _event(work, "posted_to_target", data={"voucher_id": posted.id, "number": posted.number},
               external_id=posted.id, external_reference=posted.reference,
               external_number=posted.number)
    work.external_id = posted.id
    work.external_reference = posted.reference

    if receipt is not None:
        _attach_receipt(work, client, posted, receipt)

    with session_scope() as session:
        export = session.get(AccountingExport, work.export_id)
        try:
            transition(session, export, ExportStatus.SUCCESS, actor=ACTOR, attempt=work.attempt,
                       celery_task_id=work.celery_task_id,
                       guard=AccountingExport.lease_owner == work.lease,
                       external_reference=posted.reference, external_id=posted.id,
                       error_message=None, error_code=None)
        except (ConcurrentTransition, IllegalTransition):
            # Another attempt (whose lease ran out under us) or a PUT callback finished it.
            return Outcome("skipped", "export changed while finishing")
    log.info("export succeeded", export_id=work.export_id, reference=posted.reference,
             attempt=work.attempt)
    return Outcome("success", posted.reference)


def _attach_receipt(work: _Work, client: TargetClient, posted: PostedVoucher, receipt) -> None:
    filename, content_type, data = receipt
    try:
        client.attach_receipt(posted.id, filename, data, content_type or "application/pdf")
    except PermanentError as error:
        # The voucher is booked; a receipt the target refuses must not undo that. Say so loudly.
        _event(work, "receipt_rejected", reason=f"{error.message}",
               receipt_attached_at=None)
        return
    _event(work, "receipt_attached", data={"filename": filename}, receipt_attached_at=utcnow())


def _handle_error(work: _Work, error: IntegrationError) -> Outcome:
    posted_already = work.external_id is not None
    decision = retry_policy.decide(error, work.attempt)
    if posted_already and not decision.retry:
        # Only the receipt or the final bookkeeping failed; the voucher exists. Keep retrying the
        # rest through the sweeper rather than calling a booked expense failed.
        decision = retry_policy.Decision(retry=True, delay=get_settings().retry_max_seconds)
    elif (not decision.retry and work.posting_started
          and (error.retryable or error.status_code is None)):
        # Giving up, but our POST may have reached the target: it went unanswered (a timeout, a
        # lost connection), answered 5xx (Tripletex can store and then fail), or something broke
        # after it. A failed export must hold no voucher: look it up before failing.
        decision = _look_before_failing(work) or decision
    if decision.retry:
        if work.posting_started and work.external_id is None and error.status_code is not None:
            _settle_refused_post(work)
        due = utcnow() + timedelta(seconds=decision.delay)
        if not _event(work, "retry_scheduled", reason=error.message,
                      data={"code": error.code, "status": error.status_code,
                            "in_seconds": round(decision.delay, 2)},
                      next_attempt_at=due, lease_owner=None, lease_expires_at=None,
                      error_message=f"attempt {work.attempt} failed, retrying: {error.message}"):
            return Outcome("skipped", "export changed while scheduling a retry")
        log.info("export retry scheduled", export_id=work.export_id, attempt=work.attempt,
                 in_seconds=round(decision.delay, 2), error=error.code)
        return Outcome("retry", error.message, retry_in=decision.delay)

    message = error.message
    if error.retryable:
        message = f"gave up after {work.attempt} attempts: {error.message}"
    with session_scope() as session:
        export = session.get(AccountingExport, work.export_id)
        try:
            transition(session, export, ExportStatus.FAILED, actor=ACTOR, attempt=work.attempt,
                       celery_task_id=work.celery_task_id, reason=message,
                       guard=AccountingExport.lease_owner == work.lease,
                       error_message=message, error_code=f"{error.system}:{error.code}",
                       data={"details": error.details} if error.details else None)
        except (ConcurrentTransition, IllegalTransition):
            return Outcome("skipped", "export changed while failing")
    log.warning("export failed", export_id=work.export_id, attempt=work.attempt, error=error.code)
    return Outcome("failed", message)


def _look_before_failing(work: _Work) -> retry_policy.Decision | None:
    """None if the target holds no voucher of this export (failing is right); otherwise a retry:
    soon when the voucher was found (the next attempt finishes with it), later when the lookup
    itself failed (the export waits in processing until a lookup can tell)."""
    settings = get_settings()
    try:
        with session_scope() as session:
            client = client_for(session.get(AccountingExport, work.export_id).connection)
        posted = client.find_voucher(work.export_id)
    except IntegrationError as error:
        log.warning("cannot tell whether the voucher was booked; export kept waiting",
                    export_id=work.export_id, attempt=work.attempt, error=error.code)
        return retry_policy.Decision(retry=True, delay=settings.retry_max_seconds)
    if posted is None:
        return None
    _event(work, "found_existing_voucher",
           reason="giving up, but the target had booked the voucher of an unanswered post",
           data={"voucher_id": posted.id, "number": posted.number},
           external_id=posted.id, external_reference=posted.reference,
           external_number=posted.number)
    work.external_id = posted.id
    return retry_policy.Decision(retry=True, delay=settings.retry_base_seconds)


def _settle_refused_post(work: _Work) -> None:
    """After the target answered an error to our POST, check it really booked nothing.

    If the lookup finds nothing, ``posting_started_at`` is cleared: the export waits for its retry
    in a state that may still be cancelled. If the lookup fails, the mark stays (the next
    attempt looks up again) - the cautious side.
    """
    try:
        with session_scope() as session:
            export = session.get(AccountingExport, work.export_id)
            client = client_for(export.connection)
        if client.find_voucher(work.export_id) is None:
            _event(work, "post_not_booked", reason="the target answered an error and holds no "
                   "voucher for this export", posting_started_at=None)
            work.posting_started = False
    except IntegrationError:
        pass  # cautious: stay "posting started"; the next attempt looks the voucher up first
