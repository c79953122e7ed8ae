"""Post one export to its target: the plain function behind the Celery task.

It applies the posting protocol (``worker.posting``, docs/ARCHITECTURE.md) step by step, and
every step commits before the next external call, so a crash anywhere leaves a row that tells
the next attempt where to resume:

1. claim   - take the export's lease (a compare-and-set on the database's clock); skip if it is
             terminal, cancelled or not yet due; if another attempt holds the lease, come back
             when it runs out (that worker may die). Before the claim the connection's rate
             limiter admits the export, or says when its turn comes: then the export is only
             re-scheduled (no attempt, no event, nothing sent) and the thread is free for other
             tenants' work (``_admit``).
2. settle  - an export in doubt (an earlier request may have booked it) is looked up by our
             reference first. Found: booked. Not found: trusted only after the earlier request's
             deadline plus the target's search delay; until then the export waits.
3. prepare - build the voucher and resolve everything it refers to. Nothing is sent; a mapping
             problem fails the export here with a precise message.
4. post    - one request, behind a gate: right before it leaves (after any rate-limit wait) the
             gate commits "posting started" with the request's deadline, and the request cannot
             outlive that deadline. Its answer is recorded even if the attempt lost the export
             meanwhile: a booked voucher is never dropped.
             A clear export whose client holds all it needs is prepared inside the claim's
             transaction, and the claim records "posting started" too (``_claim``): one
             transaction fewer, and the gate then only checks that the mark is fresh.
5. receipt - attached once (a lost answer to an upload is settled by asking the target).
6. finish  - success with the external reference.

Errors go to ``_handle_error``: what the answer proves about the target (refused -> clear; anything
else -> in doubt), then ``retry_policy.decide``. An export in doubt or booked never fails.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Row, and_, bindparam, or_, select, update
from sqlalchemy.exc import OperationalError

from shared.config import get_settings
from shared.db.clock import AttemptClock
from shared.db.models import AccountingExport, Expense, TargetConnection
from shared.db.session import (
    CoreTransaction,
    Transaction,
    core_transaction,
    one_sqlite_writer,
    session_scope,
)
from shared.domain.errors import MappingError
from shared.domain.mapping import build_voucher_draft
from shared.domain.state_machine import (
    ConcurrentTransition,
    EventRow,
    ExportKey,
    IllegalTransition,
    insert_event,
    insert_events,
    transition_known,
)
from shared.domain.statuses import ExportStatus
from shared.domain.vouchers import PostedVoucher
from shared.integrations.errors import (
    IntegrationError,
    PermanentError,
    RateLimitedError,
    SendWithdrawn,
    TransientError,
)
from shared.integrations.http import requests_refused
from shared.integrations.targets import (
    ConnectionVersion,
    PreparedVoucher,
    TargetClient,
    client_for,
)
from shared.logs import get_logger
from shared.metrics import count_rate_limit_deferral
from worker import posting, retry_policy

log = get_logger(__name__)

ACTOR = "worker"
# A delivery that arrives this much before the export is due is a duplicate of a retry that is
# still scheduled; the scheduled one will run.
EARLY_TOLERANCE = timedelta(seconds=1)


@dataclass(frozen=True)
class Outcome:
    kind: str  # "success" | "failed" | "retry" | "skipped"
    detail: str = ""
    # Always set with "retry": the export decides its retries itself (worker.retry_policy).
    retry_in: float | None = None
    error: IntegrationError | None = None  # unused: the decision is already in retry_in


@dataclass
class _Work:
    export_id: str
    key: ExportKey
    lease: str
    attempt: int
    celery_task_id: str | None
    clock: AttemptClock
    external_id: str | None
    external_reference: str | None
    posting_started_at: datetime | None
    post_deadline_at: datetime | None
    receipt_attached: bool
    receipt_upload_started: bool
    last_error: str | None = None
    # Read in the claim's transaction (``_BEFORE_CLAIM``'s row: the expense's columns the draft
    # needs, by their names); the connection's id, updated_at and account mapping.
    expense: Row | None = None
    connection: _ConnectionRow | None = None
    receipt: tuple | None = None  # (filename, content type, bytes) while not yet attached
    # Set when the claim prepared the voucher and recorded "posting started" with it
    # (``_claim``): the prepared voucher, and (posting started at, deadline) of that mark until
    # the gate uses it or withdraws it (``_post``).
    prepared: PreparedVoucher | None = None
    claim_mark: tuple[datetime, datetime] | None = None
    # Held while the attempt runs: the connection's rate-limit admission (see ``_admit``).
    admission: AbstractContextManager = field(default_factory=nullcontext)

    @property
    def in_doubt(self) -> bool:
        return self.posting_started_at is not None and self.external_id is None


class _Lost(Exception):
    """This attempt no longer owns the export (another attempt, a cancel or a callback took it):
    it stops without another request to the target."""


class _PostFailed(Exception):
    """The posting request raised ``error``; ``gate_opened`` says whether it was marked."""

    def __init__(self, error: IntegrationError, gate_opened: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.gate_opened = gate_opened


def run_export(export_id: str, *, celery_task_id: str | None = None) -> Outcome:
    work_or_outcome = _claim(export_id, celery_task_id)
    if isinstance(work_or_outcome, Outcome):
        return work_or_outcome
    work = work_or_outcome
    log.info("export started", export_id=export_id, attempt=work.attempt)
    try:
        with work.admission:
            return _post_and_finish(work)
    except _PostFailed as failed:
        if isinstance(failed.error, SendWithdrawn):
            return Outcome("skipped", "the export changed before the request left (cancelled, "
                                      "finished, or taken over by another attempt)")
        return _handle_error(work, failed.error, post=failed)
    except posting.NotYetKnowable as wait:
        return _wait_for_lookup(work, wait.trusted_at, refund=True)
    except _Lost as lost:
        return Outcome("skipped", f"the export changed under this attempt ({lost})")
    except IntegrationError as error:
        return _handle_error(work, error)
    except MappingError as error:
        # The connection's account mapping cannot express this expense. Found while preparing,
        # before anything is sent: the export fails at once with what to fix.
        return _handle_error(work, PermanentError(error.message, system="mapping",
                                                  code=error.code))
    except OperationalError:
        # The database went away mid-attempt: nothing more can be recorded now. The task retries
        # once this attempt's lease has run out (the export regime of worker.retry_policy); it is
        # not the export's fault, so it costs no attempt and never fails the export.
        raise
    except Exception as error:  # a bug or an unexpected answer: bounded retries, then failed
        log.exception("unexpected error in export", export_id=export_id, attempt=work.attempt)
        return _handle_error(work, TransientError(
            f"unexpected error: {type(error).__name__}: {error}", system="worker",
            code="unexpected"))


# --- 1. claim -------------------------------------------------------------------------------

_EXPORTS = AccountingExport.__table__
_T = _EXPORTS.c
# The claim: a compare-and-set on a free (or run-out) lease of a due export in processing. It
# returns the claimed row's state in the same statement (UPDATE ... RETURNING, SQLite >= 3.35
# and PostgreSQL). Built once: building statements costs more CPU than running them (issue 12).
_CLAIM = (
    update(_EXPORTS)
    .where(
        _T.id == bindparam("w_id"),
        _T.status == ExportStatus.PROCESSING.value,
        or_(_T.lease_expires_at.is_(None), _T.lease_expires_at < bindparam("w_now")),
        # A delivery that arrives well before the export is due is a duplicate of a scheduled
        # retry (checked again below, to say why it skips).
        or_(_T.next_attempt_at.is_(None), _T.next_attempt_at <= bindparam("w_due")),
    )
    .values(
        lease_owner=bindparam("v_lease_owner"),
        lease_expires_at=bindparam("v_lease_expires_at"),
        attempts=_T.attempts + 1,
        celery_task_id=bindparam("v_celery_task_id"),
        updated_at=bindparam("v_updated_at"),
    )
    # The columns another attempt may have changed since the read before the claim; what an
    # export refers to (expense, target, source unit) never changes, so the read's serve.
    .returning(_T.attempts, _T.external_id, _T.external_reference, _T.posting_started_at,
               _T.post_deadline_at, _T.receipt_attached_at, _T.receipt_upload_started_at,
               _T.error_message)
)
_X = Expense.__table__.c
_RECEIPT = select(_X.receipt_data).where(_X.id == bindparam("w_id"))
_C = TargetConnection.__table__.c
# Before the claim, in its transaction: whether it may be claimed (to say why not), the
# connection whose rate limiter admits it (id and updated_at tell whether the cached client is
# current) and the expense's columns the draft needs. One read instead of one before the claim
# and one after it (issue 12: each statement costs the worker CPU); an export that is not
# claimed read its expense for nothing, which is rare.
_BEFORE_CLAIM = select(
    _T.status, _T.next_attempt_at, _T.lease_expires_at, _T.target_system,
    _T.posting_started_at, _T.external_id, _T.expense_id, _T.source_unit_id,
    _C.id.label("connection_id"), _C.updated_at.label("connection_updated_at"),
    _C.account_mapping,
    _X.description, _X.employee_name, _X.rows, _X.expense_date, _X.currency,
    _X.receipt_filename, _X.receipt_content_type,
).select_from(
    _EXPORTS.join(TargetConnection.__table__, _C.id == _T.connection_id)
    .join(Expense.__table__, _X.id == _T.expense_id)
).where(_T.id == bindparam("w_id"))
# The claim of a clear export whose voucher was prepared in the claim's transaction: the same
# compare-and-set, and "posting started" with the request's deadline (the gate's mark, ``_post``)
# while the export is still clear. The lease is given the deadline's length, as the gate gives it.
_CLAIM_AND_MARK = _CLAIM.where(_T.posting_started_at.is_(None), _T.external_id.is_(None)).values(
    posting_started_at=bindparam("v_posting_started_at"),
    post_deadline_at=bindparam("v_post_deadline_at"),
)
# Refused by the limiter: only the due time moves (the sweeper and the duplicate check read it):
# no attempt, no event (a long backlog would write one per turn it waited), no lease.
_DEFER = update(_EXPORTS).where(
    _T.id == bindparam("w_id"), _T.status == ExportStatus.PROCESSING.value,
    or_(_T.lease_expires_at.is_(None), _T.lease_expires_at < bindparam("w_now")),
).values(next_attempt_at=bindparam("v_next_attempt_at"))
_WHY_NOT_CLAIMED = select(_T.status, _T.next_attempt_at, _T.lease_expires_at).where(
    _T.id == bindparam("w_id"))


@contextmanager
def _transaction() -> Iterator[CoreTransaction]:
    """One of an attempt's transactions, on a Core connection: every statement of the posting
    path is a prebuilt Core statement, and an ORM session's own work cost each transaction more
    CPU than they do (issue 12). On SQLite the worker's threads take turns on one lock
    (``one_sqlite_writer``) instead of colliding in the database, where a thread that finds the
    file locked sleeps in SQLite's busy handler (1, 2, 5, 10 ms and more, retried unfairly):
    with 16 exports in flight, three transactions each, those sleeps lengthened every export.
    A no-op on PostgreSQL."""
    with one_sqlite_writer(), core_transaction() as transaction:
        yield transaction


def _claim(export_id: str, celery_task_id: str | None) -> _Work | Outcome:
    """Take the lease, write the "started" event and read what the attempt works with (the
    expense and the connection), in one transaction."""
    settings = get_settings()
    with _transaction() as session:
        clock = AttemptClock.measure(session)
        now = clock.now()
        db = session.connection()
        before = db.execute(_BEFORE_CLAIM, {"w_id": export_id}).one_or_none()
        if before is None:
            return _not_claimed(None, export_id, now)
        if (before.status != ExportStatus.PROCESSING.value or (
                before.next_attempt_at is not None
                and before.next_attempt_at > now + EARLY_TOLERANCE)):
            return _not_claimed(before, export_id, now)
        connection = _ConnectionRow(before.connection_id, before.connection_updated_at,
                                    before.account_mapping)
        admission: AbstractContextManager = nullcontext()
        key = ExportKey(export_id, before.expense_id, before.target_system,
                        before.source_unit_id)
        prepared = None
        if before.lease_expires_at is None or before.lease_expires_at < now:
            admitted = _admit(connection)
            if isinstance(admitted, RateLimitedError):
                delay = min(admitted.retry_after or 0.0, settings.retry_max_seconds)
                if db.execute(_DEFER, {"w_id": export_id, "w_now": now, "v_next_attempt_at":
                                       now + timedelta(seconds=delay)}).rowcount == 1:
                    log.debug("export waits for its connection's rate budget",
                              export_id=export_id, in_seconds=round(delay, 2))
                    count_rate_limit_deferral(session, before.target_system)
                    return Outcome("retry", admitted.message, retry_in=delay)
            else:
                admission = admitted
            if before.posting_started_at is None and before.external_id is None:
                prepared = _prepare_from_memory(key, before, connection)
        lease = f"{celery_task_id or 'direct'}:{uuid.uuid4().hex[:8]}"
        claim = {
            "w_id": export_id, "w_now": now, "w_due": now + EARLY_TOLERANCE,
            "v_lease_owner": lease,
            "v_lease_expires_at": now + timedelta(seconds=settings.export_lease_seconds),
            "v_celery_task_id": celery_task_id, "v_updated_at": now,
        }
        claimed = deadline = None
        if prepared is not None:
            deadline = now + posting.send_bound()
            claimed = db.execute(_CLAIM_AND_MARK, {
                **claim, "v_posting_started_at": now, "v_post_deadline_at": deadline,
                "v_lease_expires_at": deadline + timedelta(
                    seconds=settings.export_lease_seconds)}).one_or_none()
            if claimed is None:
                prepared = None  # changed since the read: the plain claim decides
        if claimed is None:
            claimed = db.execute(_CLAIM, claim).one_or_none()
        if claimed is None:
            admission.__exit__(None, None, None)  # withdrawn: this attempt sends nothing
            return _not_claimed(db.execute(_WHY_NOT_CLAIMED, {"w_id": export_id}).one_or_none(),
                                export_id, now)
        steps = [EventRow(export_id, key.target_system, "started", ACTOR,
                          attempt=claimed.attempts, celery_task_id=celery_task_id, at=now)]
        if prepared is not None:
            steps.append(EventRow(export_id, key.target_system, "posting_started", ACTOR,
                                  attempt=claimed.attempts, celery_task_id=celery_task_id,
                                  data={"deadline": deadline.isoformat()}, at=now))
        insert_events(session, steps)
        # What the draft needs of the expense was read with the export (the connection too; its
        # whole row only to build a client: shared.integrations.targets.ConnectionVersion).
        expense = before
        receipt = None
        if expense.receipt_filename is not None and claimed.receipt_attached_at is None:
            receipt = (expense.receipt_filename, expense.receipt_content_type,
                       db.execute(_RECEIPT, {"w_id": key.expense_id}).scalar_one())
        return _Work(
            export_id=export_id,
            key=key,
            lease=lease,
            attempt=claimed.attempts,
            celery_task_id=celery_task_id,
            clock=clock,
            external_id=claimed.external_id,
            external_reference=claimed.external_reference,
            # The claim's own mark counts once the gate uses it (``_post``).
            posting_started_at=None if prepared is not None else claimed.posting_started_at,
            post_deadline_at=None if prepared is not None else claimed.post_deadline_at,
            receipt_attached=claimed.receipt_attached_at is not None,
            receipt_upload_started=claimed.receipt_upload_started_at is not None,
            last_error=claimed.error_message,
            expense=expense,
            connection=connection,
            receipt=receipt,
            admission=admission,
            prepared=prepared,
            claim_mark=(now, deadline) if prepared is not None else None,
        )


def _prepare_from_memory(key: ExportKey, before: Row, connection: _ConnectionRow
                         ) -> PreparedVoucher | None:
    """The voucher of a clear export, prepared inside the claim's transaction from what the
    connection's client already holds (its lookups, its session), or None.

    Why: the claim can then record "posting started" too, and the request leaves after one
    commit instead of two (issue 12: each transaction costs the worker more CPU than the rest of
    an export's database work). Only without requests: a request inside the transaction would
    hold the database (on SQLite every writer of the process) for a round trip. None whenever
    this is not a plain success (the client would ask the target, the mapping does not fit, a
    bug): the attempt prepares again after the commit, as every export did before, and meets
    the same error there, where it is handled."""
    try:
        with requests_refused():
            client = _client_of(connection)
            return client.prepare_voucher(
                build_voucher_draft(key, before, connection.account_mapping or {}))
    except Exception:  # noqa: BLE001 - RequestRefused, or an error met again after the commit
        return None


@dataclass(frozen=True)
class _ConnectionRow:
    """What the attempt uses of its connection: the cached client's version and the mapping."""

    id: str
    updated_at: datetime
    account_mapping: dict | None


def _admit(connection: _ConnectionRow) -> AbstractContextManager | RateLimitedError:
    """Ask the export's connection's rate limiter whether this export may start now.

    Why before the claim and not only in the request's own ``acquire``: worker threads are shared
    by every tenant, budgets are per connection. Sleeping in ``acquire`` until one tenant's
    budget frees would hold the thread while other tenants' exports wait behind it in the queue
    (with batches queued back to back the whole pool slept on the first tenant). A refusal here
    hands the thread back at the cost of one Redis call and one UPDATE; the export comes back
    at its own turn (``RateLimiter.admit`` spaces the turns at the connection's rate). The
    request still takes its permit in ``acquire`` before the send gate opens: admission is an
    estimate, the permit is the promise.
    """
    if get_settings().rate_limit_admit_wait_seconds is None:
        return nullcontext()  # admission off (shared/config.py says why)
    try:
        limiter = _client_of(connection).limiter
    except Exception:  # noqa: BLE001 - the attempt builds the client again and reports why
        return nullcontext()
    if limiter is None:
        return nullcontext()
    try:
        return limiter.admit()
    except RateLimitedError as refused:
        return refused


def _not_claimed(row, export_id: str, now: datetime) -> Outcome:
    if row is None:
        log.warning("unknown export id; message dropped", export_id=export_id)
        return Outcome("skipped", "unknown export")
    status, next_attempt_at, lease_expires_at = row[0], row[1], row[2]
    if status != ExportStatus.PROCESSING.value:
        return Outcome("skipped", f"already {status}")
    if next_attempt_at is not None and next_attempt_at > now + EARLY_TOLERANCE:
        return Outcome("skipped", "not due yet (duplicate delivery of a scheduled retry)")
    # A second delivery while an attempt is running (a redelivery, a duplicate). It must not
    # simply be acknowledged: if the running attempt's worker dies, this may be the only message
    # left. Come back when the lease runs out; by then the export is finished (and this copy
    # ends as "already done") or its worker is gone.
    remaining = (lease_expires_at - now).total_seconds() if lease_expires_at is not None else 0.0
    log.info("export leased by another attempt; checking back when the lease ends",
             export_id=export_id, in_seconds=round(remaining, 1))
    return Outcome("retry", "another worker holds the lease", retry_in=max(1.0, remaining + 1.0))


# Which rows a step's compare-and-set may change (``_event``'s ``where``).
OWNED = "owned"  # still ours: in processing, our lease
OWNED_UNBOOKED = "owned_unbooked"  # ours and no voucher recorded yet
UNBOOKED = "unbooked"  # any attempt's, no voucher recorded yet (recording a voucher we lost)
_WHERE = {
    OWNED: lambda: and_(_T.id == bindparam("w_id"),
                        _T.status == ExportStatus.PROCESSING.value,
                        _T.lease_owner == bindparam("w_lease")),
    OWNED_UNBOOKED: lambda: and_(_WHERE[OWNED](), _T.external_id.is_(None)),
    UNBOOKED: lambda: and_(_T.id == bindparam("w_id"), _T.external_id.is_(None)),
}
_step_statements: dict[tuple, object] = {}


def _step_update(where: str, names: tuple[str, ...], refund: bool):
    shape = (where, names, refund)
    statement = _step_statements.get(shape)
    if statement is None:
        values = {name: bindparam(f"v_{name}") for name in names}
        if refund:
            # Being told to wait is not a failure: this attempt does not count.
            values["attempts"] = _T.attempts - 1
        statement = update(_EXPORTS).where(_WHERE[where]()).values(values)
        _step_statements[shape] = statement
    return statement


def _step(session: Transaction, work: _Work, kind: str, *, reason: str | None = None,
          data: dict | None = None, where: str = OWNED, renew_lease: bool = True,
          refund: bool = False, **fields) -> bool:
    """In ``session``'s transaction: update fields only while ``where`` holds (a compare-and-set)
    and append the step's event. False, writing nothing, if it does not hold.

    Every step recorded also renews the lease (unless ``renew_lease`` is False): it runs
    ``export_lease_seconds`` from the last step, not from the claim (``fields`` may set a longer
    one). ``refund`` gives the attempt back (``attempts - 1``).
    """
    now = work.clock.now()
    values = {"updated_at": now}
    if renew_lease:
        values["lease_expires_at"] = now + timedelta(seconds=get_settings().export_lease_seconds)
    values.update(fields)
    params = {"w_id": work.export_id, "w_lease": work.lease,
              **{f"v_{name}": value for name, value in values.items()}}
    updated = session.connection().execute(
        _step_update(where, tuple(values), refund), params).rowcount
    if updated != 1:
        return False
    insert_event(session, work.export_id, work.key.target_system, kind, actor=ACTOR,
                 attempt=work.attempt, reason=reason, celery_task_id=work.celery_task_id,
                 data=data, at=now)
    return True


def _event(work: _Work, kind: str, **step) -> bool:
    """One step in a transaction of its own (``_step``)."""
    with _transaction() as session:
        return _step(session, work, kind, **step)


def _post_and_finish(work: _Work) -> Outcome:
    client = _client(work)
    receipt = work.receipt

    posted: PostedVoucher | None = None
    finished = False
    if work.external_id is not None:
        posted = PostedVoucher(id=work.external_id,
                               reference=work.external_reference or work.external_id)
    elif work.in_doubt:
        posted = _settle_doubt(work, client)
        if posted is None and work.attempt > get_settings().max_attempts:
            # An earlier attempt gave up and waited only to prove that failing holds no voucher.
            return _fail(work, TransientError(
                f"gave up after {get_settings().max_attempts} attempts; the target holds no "
                f"voucher for this export (last: {work.last_error})", system="worker",
                code="gave_up"), counted=False)
    if posted is None:
        # With no receipt to attach, recording the voucher also finishes the export (one
        # transaction, two events).
        posted, finished = _post(work, client, finish=receipt is None)
    work.external_id = posted.id
    work.external_reference = posted.reference

    if not finished:
        if receipt is not None:
            _attach_receipt(work, client, posted, receipt)
        with _transaction() as session:
            try:
                _succeed(session, work, posted)
            except (ConcurrentTransition, IllegalTransition):
                # Another attempt (whose lease ran out under us) or a PUT callback finished it.
                return Outcome("skipped", "export changed while finishing")
    log.info("export succeeded", export_id=work.export_id, reference=posted.reference,
             attempt=work.attempt)
    return Outcome("success", posted.reference)


def _client(work: _Work) -> TargetClient:
    return _client_of(work.connection)


def _client_of(connection: _ConnectionRow) -> TargetClient:
    def load() -> TargetConnection:
        with session_scope() as session:
            return session.get(TargetConnection, connection.id)

    return client_for(ConnectionVersion(connection.id, connection.updated_at, load))


def _succeed(session: Transaction, work: _Work, posted: PostedVoucher,
             voucher_step: EventRow | None = None, **fields) -> None:
    """processing -> success with the voucher, a compare-and-set on our lease. With
    ``voucher_step`` the same UPDATE records the voucher (``transition_known``): raises
    ConcurrentTransition when the export is no longer ours or records a voucher already."""
    transition_known(session, work.key, ExportStatus.PROCESSING, ExportStatus.SUCCESS,
                     actor=ACTOR, attempt=work.attempt, celery_task_id=work.celery_task_id,
                     lease_owner=work.lease, at=work.clock.now(), voucher_step=voucher_step,
                     external_reference=posted.reference, external_id=posted.id,
                     error_message=None, error_code=None, **fields)


# --- 2. settle a doubt ------------------------------------------------------------------------


def _settle_doubt(work: _Work, client: TargetClient) -> PostedVoucher | None:
    """The export is in doubt: find its voucher, or prove there is none. Raises NotYetKnowable
    while "not found" proves nothing yet; lookup errors go to ``_handle_error`` (in doubt, so the
    export waits and never fails)."""
    posted = client.find_voucher(work.export_id)
    if posted is not None:
        _record_voucher(work, posted, "found_existing_voucher",
                        reason="an earlier attempt's voucher was found by our reference")
        return posted
    trusted_at = posting.trusted_after(_deadline(work), client.search_delay_seconds)
    if work.clock.now() < trusted_at:
        raise posting.NotYetKnowable(trusted_at)
    if _event(work, "post_not_booked",
              reason="the earlier request's deadline and the target's search delay have passed "
                     "and the target holds no voucher for this export",
              posting_started_at=None, post_deadline_at=None):
        work.posting_started_at = work.post_deadline_at = None
        return None
    raise _Lost("while settling its doubt")


def _deadline(work: _Work) -> datetime:
    """The recorded deadline; rows marked before deadlines were recorded get the bound."""
    if work.post_deadline_at is not None:
        return work.post_deadline_at
    return work.posting_started_at + posting.send_bound()


# --- 3 and 4. prepare and post ----------------------------------------------------------------


def _post(work: _Work, client: TargetClient, *, finish: bool = False
          ) -> tuple[PostedVoucher, bool]:
    """Post the voucher and record it; with ``finish``, in the same transaction move the export
    to success. Returns the voucher and whether the export was finished."""
    prepared = work.prepared
    if prepared is None:
        # Unknown accounts, VAT codes the account refuses, missing dimensions: found here
        # (MappingError, PermanentError), so the export fails with a precise message and nothing
        # was sent. Lookups and a session renewal happen here too, before the mark: the request
        # behind the gate is the POST alone.
        prepared = client.prepare_voucher(build_voucher_draft(
            work.key, work.expense, work.connection.account_mapping or {}))
    settings = get_settings()

    def mark() -> bool:
        if work.claim_mark is not None:
            marked_at, deadline = work.claim_mark
            work.claim_mark = None
            if work.clock.now() - marked_at <= posting.GATE_SLACK:
                # The claim recorded "posting started" moments ago: the request leaves well
                # inside the deadline it recorded, as after the gate's own commit.
                work.posting_started_at, work.post_deadline_at = marked_at, deadline
                return True
            # Longer since the claim than the deadline keeps for it (a wait for a rate-limit
            # permit, a starved thread): nothing was sent under that mark, so it is recorded
            # anew below, with a deadline from now.
        now = work.clock.now()
        deadline = now + posting.send_bound()
        # The lease outlives the request, so no other attempt can start while it is on its way.
        marked = _event(
            work, "posting_started", data={"deadline": deadline.isoformat()},
            where=OWNED_UNBOOKED, posting_started_at=now, post_deadline_at=deadline,
            lease_expires_at=deadline + timedelta(seconds=settings.export_lease_seconds))
        if marked:
            work.posting_started_at, work.post_deadline_at = now, deadline
            if work.clock.now() - now > posting.GATE_SLACK:
                # The commit itself took longer than the deadline keeps for it (a database
                # lock, a slow database): sent now, the request could still be on its way after
                # the deadline, when another attempt trusts a lookup that finds nothing and
                # posts again. So nothing is sent: the export is in doubt until the deadline
                # plus the search delay, and then a lookup decides (an attempt not counted).
                raise posting.NotYetKnowable(
                    posting.trusted_after(deadline, client.search_delay_seconds))
        return marked

    gate = posting.PostGate(mark=mark, timeout=posting.send_timeout())
    try:
        posted = client.send_voucher(prepared, gate)
    except posting.NotYetKnowable:
        raise  # the gate committed too late to send (mark): nothing left
    except IntegrationError as error:
        raise _PostFailed(error, gate.opened) from error
    except Exception as error:
        # A bug after the request left is as ambiguous as a lost answer.
        raise _PostFailed(TransientError(
            f"unexpected error while posting: {type(error).__name__}: {error}",
            system="worker", code="unexpected"), gate.opened) from error
    return posted, _record_voucher(work, posted, "posted_to_target", finish=finish)


def _withdraw_claim_mark(work: _Work, why: str) -> None:
    """The attempt ends in an error before the gate opened, while the claim's "posting started"
    is still unused: nothing was sent, so the export is made clear again
    (``posting_withdrawn``), as if the claim had not marked it. Otherwise it would wait in doubt
    for a lookup it does not need (and could not be cancelled meanwhile)."""
    if work.claim_mark is None:
        return
    work.claim_mark = None
    _event(work, "posting_withdrawn", reason=f"nothing was sent: {why}", where=OWNED_UNBOOKED,
           posting_started_at=None, post_deadline_at=None)


def _record_voucher(work: _Work, posted: PostedVoucher, kind: str, reason: str | None = None,
                    *, finish: bool = False) -> bool:
    """Record the target's voucher on the export, whether or not this attempt still owns it:
    once a voucher exists it must be the export's, never an orphan that a later attempt books
    again. Only an export that already records another voucher refuses: that is a duplicate in
    the target, and it is said loudly. Raises _Lost when the attempt no longer owns the export
    (the owner finishes it).

    With ``finish`` the owner also moves the export to success (True returned): one UPDATE
    records the voucher and the success, a compare-and-set on our lease and "no voucher yet",
    followed by the two steps' event rows (``transition_known``'s ``voucher_step``)."""
    data = {"voucher_id": posted.id, "number": posted.number}
    fields = dict(external_id=posted.id, external_reference=posted.reference,
                  external_number=posted.number)
    with _transaction() as session:
        if finish:
            step = EventRow(work.export_id, work.key.target_system, kind, ACTOR, reason=reason,
                            attempt=work.attempt, celery_task_id=work.celery_task_id, data=data,
                            at=work.clock.now())
            try:
                _succeed(session, work, posted, voucher_step=step,
                         external_number=posted.number)
                return True
            except ConcurrentTransition:
                pass  # nothing written: not ours any more, or a voucher is recorded (below)
        elif _step(session, work, kind, reason=reason, data=data, where=OWNED_UNBOOKED,
                   **fields):
            return False
    if _event(work, kind, data=data, where=UNBOOKED, renew_lease=False,
              reason="recorded after this attempt had lost the export", **fields):
        log.warning("voucher recorded after the attempt lost its lease", export_id=work.export_id,
                    voucher_id=posted.id)
        raise _Lost("voucher recorded; the attempt that owns the export finishes it")
    with _transaction() as session:
        existing, owner = session.execute(
            select(AccountingExport.external_id, AccountingExport.lease_owner)
            .where(AccountingExport.id == work.export_id)).one()
        if existing == posted.id:
            if owner == work.lease:
                return False  # another attempt recorded the same voucher; this one owns the export
            raise _Lost("the voucher was recorded by another attempt")
        log.error("DUPLICATE: the target holds a second voucher for this export",
                  export_id=work.export_id, recorded=existing, duplicate=posted.id)
        insert_event(session, work.export_id, work.key.target_system, "duplicate_voucher",
                     actor=ACTOR, attempt=work.attempt,
                     reason=f"the target booked voucher {posted.id} although the export already "
                            f"records voucher {existing}: reverse one of them in the target",
                     data={**data, "recorded_voucher_id": existing})
    raise _Lost("another voucher is recorded for this export")


# --- 5. receipt -------------------------------------------------------------------------------


def _attach_receipt(work: _Work, client: TargetClient, posted: PostedVoucher, receipt) -> None:
    filename, content_type, data = receipt
    if work.receipt_upload_started and client.has_attachment(posted.id):
        # An earlier upload's answer was lost, but the voucher has its document.
        _event(work, "receipt_attached", data={"filename": filename, "found": True},
               receipt_attached_at=work.clock.now())
        return
    if not work.receipt_upload_started:
        if not _event(work, "receipt_upload_started",
                      receipt_upload_started_at=work.clock.now()):
            raise _Lost("before the receipt upload")
        work.receipt_upload_started = True
    try:
        client.attach_receipt(posted.id, filename, data, content_type or "application/pdf")
    except PermanentError as error:
        # The voucher is booked; a receipt the target refuses must not undo that. Say so loudly.
        _event(work, "receipt_rejected", reason=f"{error.message}", receipt_attached_at=None)
        return
    _event(work, "receipt_attached", data={"filename": filename},
           receipt_attached_at=work.clock.now())


# --- errors -------------------------------------------------------------------------------------


def _handle_error(work: _Work, error: IntegrationError, *, post: _PostFailed | None = None
                  ) -> Outcome:
    # The claim's "posting started" is still unused only when the gate never opened.
    _withdraw_claim_mark(work, error.message)
    if post is not None and post.gate_opened:
        _settle_post_answer(work, error)
    decision = retry_policy.decide(retry_policy.REGIMES[retry_policy.TaskKind.EXPORT], error,
                                   work.attempt)
    if not decision.retry and work.external_id is not None:
        # Only the receipt or the final bookkeeping failed; the voucher exists. Keep retrying
        # the rest rather than calling a booked expense failed.
        decision = retry_policy.Decision(retry=True, delay=get_settings().retry_max_seconds)
    elif not decision.retry and work.in_doubt:
        # Giving up, but a request of ours may have booked the voucher: a failed export must
        # hold none. Look it up (unless the lookup is what failed); while nothing can tell,
        # the export waits.
        if post is None:
            return _wait_in_doubt(work, error)
        return _look_before_failing(work, error)
    if decision.retry:
        return _schedule_retry(work, error.message, decision, code=error.code,
                               status=error.status_code)
    return _fail(work, error)


def _settle_post_answer(work: _Work, error: IntegrationError) -> None:
    """What the posting request's error proves: the target refused it (clear again: cancellable,
    may fail, may be posted without a lookup), or nothing (in doubt; an answer at least tells
    that the request is no longer on its way)."""
    if posting.proves_not_stored(error, gate_opened=True):
        if _event(work, "post_refused", reason=error.message,
                  data={"code": error.code, "status": error.status_code},
                  posting_started_at=None, post_deadline_at=None):
            work.posting_started_at = work.post_deadline_at = None
    elif posting.answered(error):
        now = work.clock.now()
        if _event(work, "post_outcome_unknown", reason=error.message,
                  data={"code": error.code, "status": error.status_code},
                  post_deadline_at=now):
            work.post_deadline_at = now


def _look_before_failing(work: _Work, error: IntegrationError) -> Outcome:
    settings = get_settings()
    try:
        posted = _settle_doubt(work, _client(work))
    # The waits below count as attempts: the next attempt is past max_attempts and, once the
    # doubt is settled as "not booked", fails instead of posting again.
    except posting.NotYetKnowable as wait:
        return _wait_for_lookup(work, wait.trusted_at, refund=False)
    except _Lost as lost:
        return Outcome("skipped", f"the export changed under this attempt ({lost})")
    except IntegrationError as lookup_error:
        return _wait_in_doubt(work, lookup_error, refund=False)
    if posted is not None:
        work.external_id = posted.id
        return _schedule_retry(work, "the voucher was found; finishing",
                               retry_policy.Decision(retry=True, delay=settings.retry_base_seconds),
                               code="found_existing_voucher")
    return _fail(work, error)  # proven clear: failing holds no voucher


def _wait_in_doubt(work: _Work, lookup_error: IntegrationError, *, refund: bool = True
                   ) -> Outcome:
    """The lookup that would settle the doubt failed for good (e.g. the token was rotated):
    never fail, wait, and say what an operator can fix."""
    log.warning("cannot tell whether the voucher was booked; export kept waiting",
                export_id=work.export_id, attempt=work.attempt, error=lookup_error.code)
    return _schedule_retry(
        work, f"cannot tell whether the target booked this export ({lookup_error.message}); "
              f"it waits and looks again, fix the connection if this persists",
        retry_policy.Decision(retry=True, delay=get_settings().retry_max_seconds, refund=refund),
        code="in_doubt", status=lookup_error.status_code)


def _wait_for_lookup(work: _Work, trusted_at: datetime, *, refund: bool) -> Outcome:
    delay = max(0.5, (trusted_at - work.clock.now()).total_seconds() + 0.2)
    return _schedule_retry(
        work, f"the target may still be storing an earlier request; looking again at "
              f"{trusted_at.isoformat(timespec='seconds')}",
        retry_policy.Decision(retry=True, delay=delay, refund=refund), code="in_doubt")


def _schedule_retry(work: _Work, message: str, decision: retry_policy.Decision, *,
                    code: str, status: int | None = None) -> Outcome:
    due = work.clock.now() + timedelta(seconds=decision.delay)
    if not _event(work, "retry_scheduled", reason=message, refund=decision.refund,
                  data={"code": code, "status": status, "in_seconds": round(decision.delay, 2),
                        "counted": not decision.refund},
                  next_attempt_at=due, lease_owner=None, lease_expires_at=None,
                  error_message=f"attempt {work.attempt} did not finish, retrying: {message}"):
        return Outcome("skipped", "export changed while scheduling a retry")
    log.info("export retry scheduled", export_id=work.export_id, attempt=work.attempt,
             in_seconds=round(decision.delay, 2), error=code)
    return Outcome("retry", message, retry_in=decision.delay)


def _fail(work: _Work, error: IntegrationError, *, counted: bool = True) -> Outcome:
    message = error.message
    fields = {}
    if error.retryable and counted:
        message = f"gave up after {work.attempt} attempts: {error.message}"
    elif not counted:
        # This attempt only proved that failing holds no voucher; it does not count.
        fields["attempts"] = AccountingExport.attempts - 1
    with _transaction() as session:
        try:
            transition_known(session, work.key, ExportStatus.PROCESSING, ExportStatus.FAILED,
                             actor=ACTOR, attempt=work.attempt,
                             celery_task_id=work.celery_task_id, reason=message,
                             lease_owner=work.lease, at=work.clock.now(), error_message=message,
                             error_code=f"{error.system}:{error.code}",
                             data={"details": error.details} if error.details else None,
                             **fields)
        except (ConcurrentTransition, IllegalTransition):
            return Outcome("skipped", "export changed while failing")
    log.warning("export failed", export_id=work.export_id, attempt=work.attempt, error=error.code)
    return Outcome("failed", message)
