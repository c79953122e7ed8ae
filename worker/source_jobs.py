"""The source package flow, the same for every source (its words are its adapter's,
``shared.integrations.sources.SourceAdapter``; Findity is the one today): ingest a package,
report each voucher's outcome, poll for missed ones.

ingest   - fetch the export and its voucher package with the organization's own credentials (the
           webhook body is only a hint), turn each accounting voucher into an approved expense
           with its receipt PDF, and create one accounting export per voucher. Payment-format and
           unbookable vouchers get an outcome error instead and are reported FAILED.
           A 404 is not believed at once: Findity's webhook can come before the export (or a
           basis PDF) is readable, so a 404 is retried for AIC_SOURCE_NOT_FOUND_GRACE_SECONDS
           from the package's receipt; only then is the package rejected (a forged export id
           ends there). A basis PDF that cannot be had (not a PDF, too large, missing past the
           grace) costs its voucher the attachment, never the package: see ``_fetch_receipts``.
report   - tell Findity per voucher what its export became: SUCCESS with bookingDate and
           voucherNumber, or FAILED with an errorText that says what to fix. What Findity was
           told is stored per voucher, and a voucher is reported again whenever our outcome
           differs from it (a FAILED export retried and booked later), so Findity converges on
           our final outcome. See ``report_to_source`` for why a repeated report is harmless.
poll     - list unprocessed exports of every Findity connection; queue the ones we do not know
           (a lost webhook), the ones stuck before ingestion, and the ones we rejected (Findity's
           own list proves they exist).
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import BinaryIO

import redis
from sqlalchemy import or_, select, update

from shared.config import get_settings
from shared.db.models import (
    AccountingExport,
    ExportStatus,
    SourceConnection,
    SourceUnit,
    SourceUnitItem,
)
from shared.db.session import session_scope
from shared.db.types import utcnow
from shared.domain import exports as export_service
from shared.domain import sources
from shared.domain.errors import Conflict
from shared.domain.expenses import (
    changed_content,
    find_expense,
    ingest_expense,
    replace_content,
)
from shared.domain.source_units import SourceUnitStatus, record_unit_event, transition_unit
from shared.domain.state_machine import ConcurrentTransition, record_event, transition
from shared.integrations.errors import (
    AuthError,
    IntegrationError,
    NotFoundError,
    TransientError,
)
from shared.integrations import registry
from shared.integrations.sources import (
    MAX_POLL_PAGES,
    SUCCEEDED,
    CompletionFailed,
    FetchedUnit,
    ItemOutcome,
    ItemReport,
    SourceItem,
    source_client_for,
)
from shared.logs import get_logger
from worker.retry_policy import backoff_delay

log = get_logger(__name__)
# Basis PDFs are spooled to a temporary file beyond this size, so a package of many large PDFs is
# not held in memory while it is fetched (each is capped by AIC_RECEIPT_MAX_BYTES).
RECEIPT_SPOOL_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StepOutcome:
    kind: str  # "done" | "skipped" | "retry" | "rejected"
    detail: str = ""
    # Set for a not-found inside the grace: retry after this many seconds, outside the attempt
    # budget (the grace bounds these retries, not the budget).
    retry_in: float | None = None
    # The source's error behind a "retry", for the retry decision (a 429 says when to come back).
    error: IntegrationError | None = None


# --- ingest -------------------------------------------------------------------------------------

class _NotYet(Exception):
    """The package cannot be ingested now but may be soon; nothing was written."""

    def __init__(self, message: str, *, retry_in: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_in = retry_in


class _ClaimLost(Exception):
    """Another worker claimed the unit after our lease ran out: roll back what we wrote."""


@dataclass
class _Claim:
    connection: SourceConnection
    external_export_id: str
    received_at: datetime
    attempt: int
    listed: dict | None  # the unit's last poll listing (None: announced by webhook only)
    unit_id: str

    def grace_left(self) -> float:
        """Seconds of the not-found grace left (<= 0: a 404 is believed now)."""
        deadline = self.received_at + timedelta(
            seconds=get_settings().source_not_found_grace_seconds)
        return (deadline - utcnow()).total_seconds()

    def retry_in(self) -> float:
        """When to look again inside the grace: the usual backoff, and once right after it."""
        return max(0.5, min(backoff_delay(min(self.attempt, 12)), self.grace_left() + 0.5))


@dataclass
class _Receipts:
    files: dict[str, BinaryIO] = field(default_factory=dict)  # voucher id -> the PDF
    problems: dict[str, str] = field(default_factory=dict)  # voucher id -> why there is none

    def pdf(self, voucher_id: str) -> bytes | None:
        spool = self.files.get(voucher_id)
        if spool is None:
            return None
        spool.seek(0)
        return spool.read()

    def close(self) -> None:
        for spool in self.files.values():
            spool.close()


def ingest_source_unit(source_export_id: str) -> StepOutcome:
    claimed = _claim_for_ingest(source_export_id)
    if isinstance(claimed, StepOutcome):
        return claimed
    try:
        client = source_client_for(claimed.connection)
    except registry.UnknownSystem as unknown:
        # Not loaded by this process (AIC_EXTRA_SYSTEMS differs): left for one that does.
        _finish_claim(claimed, SourceUnitStatus.RECEIVED, str(unknown))
        return StepOutcome("skipped", str(unknown))
    receipts = _Receipts()
    try:
        try:
            unit = client.fetch_unit(claimed.external_export_id, claimed.listed)
            _fetch_receipts(client, unit, claimed, receipts)
        except IntegrationError as error:
            return _fetch_failed(source_export_id, claimed, error)
        except _NotYet as wait:
            log.info("source export waits", source_export_id=source_export_id,
                     reason=wait.message)
            _finish_claim(claimed, SourceUnitStatus.RECEIVED, wait.message)
            return StepOutcome("retry", wait.message, retry_in=wait.retry_in)
        try:
            with session_scope() as session:
                vouchers = _ingest_package(session, client, source_export_id, unit, receipts,
                                           claimed.attempt)
        except _NotYet as wait:
            log.info("source export waits", source_export_id=source_export_id,
                     reason=wait.message)
            _finish_claim(claimed, SourceUnitStatus.RECEIVED, wait.message)
            return StepOutcome("retry", wait.message, retry_in=wait.retry_in)
        except _ClaimLost:
            log.warning("source unit claim lost while ingesting; nothing written",
                        source_export_id=source_export_id)
            return StepOutcome("skipped", "another worker claimed the unit meanwhile")
        except Conflict as conflict:
            # A concurrent ingest of the same voucher (another package) took the one live
            # export slot first; the next attempt links to that export.
            _finish_claim(claimed, SourceUnitStatus.RECEIVED, conflict.message)
            return StepOutcome("retry", conflict.message)
    finally:
        receipts.close()
    log.info("source export ingested", source_export_id=source_export_id, vouchers=vouchers,
             format=unit.format,
             receipts_missing=len(receipts.problems))
    return StepOutcome("done", f"{vouchers} vouchers")


def _fetch_failed(source_export_id: str, claimed: _Claim, error: IntegrationError) -> StepOutcome:
    if error.status_code == 404:
        grace_left = claimed.grace_left()
        if grace_left > 0:
            # Findity's webhook fires when the reports move to Transfer; its export may not be
            # readable yet. Believed only once the grace from the package's receipt has passed.
            detail = (f"{error.code}: {error.message} (looked again until "
                      f"{int(grace_left)} s from now: the export may not be readable yet)")
            log.info("source export not found yet", source_export_id=source_export_id,
                     code=error.code, grace_left=round(grace_left))
            _finish_claim(claimed, SourceUnitStatus.RECEIVED, detail)
            return StepOutcome("retry", detail, retry_in=claimed.retry_in())
        log.warning("source export rejected", source_export_id=source_export_id,
                    code=error.code, error=error.message)
        _finish_claim(claimed, SourceUnitStatus.REJECTED,
                      f"{error.code}: {error.message} (still not found "
                      f"{get_settings().source_not_found_grace_seconds} s after it was received)")
        return StepOutcome("rejected", error.code)
    _finish_claim(claimed, SourceUnitStatus.RECEIVED, error.message)
    if error.retryable:
        return StepOutcome("retry", error.message, error=error)
    log.error("source export cannot be fetched", source_export_id=source_export_id,
              error=error.message)
    return StepOutcome("skipped", error.message)


def _claim_for_ingest(source_export_id: str) -> _Claim | StepOutcome:
    settings = get_settings()
    now = utcnow()
    with session_scope() as session:
        source_export = session.get(SourceUnit, source_export_id)
        free = or_(SourceUnit.lease_expires_at.is_(None), SourceUnit.lease_expires_at < now)
        # Compare-and-set on the status read and a free lease; ``attempts`` becomes this
        # claim's fencing token (see _finish_claim).
        if (source_export is None
                or source_export.status not in (SourceUnitStatus.RECEIVED.value,
                                                SourceUnitStatus.INGESTING.value)
                or not transition_unit(
                    session, source_export, SourceUnitStatus.INGESTING, actor="worker",
                    guard=(free,), values={
                        "attempts": SourceUnit.attempts + 1,
                        "lease_expires_at": now + timedelta(
                            seconds=settings.export_lease_seconds)})):
            return StepOutcome("skipped", "already ingested, or being ingested")
        connection = session.get(SourceConnection, source_export.source_connection_id)
        session.expunge(connection)
        return _Claim(connection, source_export.external_export_id,
                      source_export.received_at or source_export.created_at,
                      source_export.attempts, source_export.listed_payload, source_export.id)


def _finish_claim(claimed: _Claim, status: SourceUnitStatus, error: str | None) -> None:
    """End this claim (waiting again, or rejected). A claim that lost the unit (its lease ran
    out and another worker claimed it: ``attempts`` moved on) changes nothing."""
    with session_scope() as session:
        source_export = session.get(SourceUnit, claimed.unit_id)
        if not transition_unit(session, source_export, status, actor="worker", reason=error,
                               guard=(SourceUnit.attempts == claimed.attempt,),
                               values={"last_error": error, "lease_expires_at": None}):
            log.warning("source unit claim lost before it ended", source_export_id=claimed.unit_id,
                        status=status.value)


def _fetch_receipts(client, unit: FetchedUnit, claimed: _Claim, receipts: _Receipts) -> None:
    """Receipts (Findity: basis PDFs) first, outside any transaction: a slow source never holds
    a database lock.

    One voucher's PDF never holds up the package for good. A PDF that may still come (404, or a
    5xx / timeout) is waited for while the package is inside its not-found grace: the whole
    package is fetched again. Past the grace, and at once for what no retry can change (not a
    PDF, larger than AIC_RECEIPT_MAX_BYTES, a basis URL on a foreign host), the voucher is booked
    without it and the reason is kept for operators and told to Findity.

    Why book without rather than fail the voucher: the rows are what the approver approved, and
    the receipt is documentation an accountant can attach later; a FAILED voucher goes back to
    "Ready to send" in Findity, and sending it again cannot repair a PDF Findity cannot serve,
    so the employee would never be paid. The target's own refusal of a receipt already works
    this way (``receipt_rejected`` keeps the booking).
    """
    settings = get_settings()
    noun = client.attachment_noun
    source = registry.display_name(claimed.connection.source_system)
    for item in unit.items:
        if not item.attachment_url:
            continue
        spool = tempfile.SpooledTemporaryFile(max_size=RECEIPT_SPOOL_BYTES)
        try:
            client.download_attachment(item.attachment_url, spool,
                                       max_bytes=settings.receipt_max_bytes)
        except IntegrationError as error:
            spool.close()
            if isinstance(error, AuthError):
                raise  # our credentials, not this PDF: the package waits like any fetch
            may_pass = error.retryable or error.status_code == 404
            if may_pass and claimed.grace_left() > 0:
                if error.retryable:
                    raise  # the usual retry of a transient fetch error
                raise _NotYet(
                    f"the {noun} of voucher {item.external_id} is not found yet ({error.code}); "
                    f"looked again until {int(claimed.grace_left())} s from now",
                    retry_in=claimed.retry_in()) from error
            receipts.problems[item.external_id] = (
                f"the {noun} from {source} is not attached: {error.message}")
            log.warning("voucher booked without its receipt", voucher=item.external_id,
                        code=error.code, error=error.message)
            continue
        receipts.files[item.external_id] = spool


def _ingest_package(session, client, source_export_id: str, unit: FetchedUnit,
                    receipts: _Receipts, attempt: int) -> int:
    source_export = session.get(SourceUnit, source_export_id)
    connection = session.get(SourceConnection, source_export.source_connection_id)
    known = {v.external_voucher_id for v in source_export.vouchers}
    notes = []
    for fetched in unit.items:
        if fetched.external_id in known:
            continue
        item = client.to_source_item(
            unit, fetched, target_display_name=registry.display_name(connection.target_system),
            options=connection.options or {})
        record = _ingest_voucher(session, source_export, connection, item, receipts)
        session.add(record)
        if record.note:
            notes.append(f"voucher {fetched.external_id}: {record.note}")
    if not transition_unit(
            session, source_export, SourceUnitStatus.PROCESSING, actor="worker",
            reason=f"{len(unit.items)} items ingested",
            guard=(SourceUnit.attempts == attempt,),
            values={"verification_lists_type": unit.format, "voucher_count": len(unit.items),
                    "lease_expires_at": None,
                    "last_error": "; ".join(notes)[:2000] if notes else None}):
        # Our lease ran out and another worker claimed the unit: everything this transaction
        # wrote is rolled back; that worker ingests it.
        raise _ClaimLost()
    # Vouchers refused at ingest (payment formats, unbalanced) are reportable right away.
    sources.enqueue_report(session, source_export.id)
    return len(unit.items)


def _ingest_voucher(session, source_export: SourceUnit, connection: SourceConnection,
                    item: SourceItem, receipts: _Receipts) -> SourceUnitItem:
    record = SourceUnitItem(source_unit_id=source_export.id, external_voucher_id=item.external_id,
                            content_fingerprint=item.content_fingerprint)
    if item.refusal is not None:  # a payment format, an unbalanced voucher: reported, not booked
        record.outcome_error = item.refusal
        return record
    expense_in = item.expense
    pdf = receipts.pdf(item.external_id)
    if pdf is not None:
        expense_in = expense_in.model_copy(update={
            "receipt_filename": item.receipt_filename,
            "receipt_content_type": item.receipt_content_type, "receipt_data": pdf})
    del pdf
    record.note = receipts.problems.get(item.external_id)

    existing = find_expense(session, source_export.organization_id, expense_in.source,
                            expense_in.source_ref)
    changed = changed_content(existing, expense_in) if existing is not None else []
    if changed:
        export_id, note = _resent_with_changes(session, source_export, connection, existing,
                                               expense_in, changed)
        record.expense_id, record.export_id = existing.id, export_id
        record.note = "; ".join(n for n in (note, record.note) if n)
    else:
        expense, created = ingest_expense(session, source_export.organization_id, expense_in)
        if not created and expense.receipt_filename is None and expense_in.receipt_data:
            live = export_service.active_export(session, expense.id, connection.target_system)
            if live is None:  # a PDF missing last time, here now, and nothing booked yet
                expense.receipt_filename = expense_in.receipt_filename
                expense.receipt_content_type = expense_in.receipt_content_type
                expense.receipt_data = expense_in.receipt_data
        record.expense_id = expense.id
        record.export_id = _export_for(session, source_export, connection, expense.id)
        session.flush()
        # The PDF is in the database now; do not keep every voucher's PDF in the session.
        session.expire(expense, ["receipt_data"])
    if record.note and record.export_id:
        export = session.get(AccountingExport, record.export_id)
        record_event(session, export, "source_note", actor=connection.source_system,
                     reason=record.note,
                     data={"source_export_id": source_export.id, "voucher_id": item.external_id})
    return record


def _resent_with_changes(session, source_export: SourceUnit, connection: SourceConnection,
                         expense, expense_in, changed: list[str]) -> tuple[str, str]:
    """Findity sent a voucher we know again, under the same id, with other content.

    Returns (the export that answers for it, a note for operators). Nothing is ever booked twice
    and the old rows are never booked from now on:

    - the old version is booked (a success holds the live slot): it stays; the voucher is linked
      to that export and reported SUCCESS with its number (that is what the ledger holds), and
      the difference is surfaced for an accountant to correct by hand;
    - an export of the old version is running and has not started posting: it is cancelled
      (compare-and-set on ``posting_started_at IS NULL``, like a DELETE), then as below;
    - it has started posting: its outcome decides, so the package waits for it (``_NotYet``);
    - nothing live: the expense takes the new content and a new export books it. The one
      live export per expense (``active_key``) keeps an operator's retry of an old failed
      export and the new export from both booking.
    """
    what = ", ".join(changed)
    source = registry.display_name(connection.source_system)
    live = export_service.active_export(session, expense.id, connection.target_system)
    if live is not None and live.status == ExportStatus.SUCCESS.value:
        note = (f"{source} sent this voucher again with other content ({what}), but its earlier "
                f"version is already booked as {live.external_reference} (export {live.id}); "
                "it was not booked again. Correct that booking by hand if the change matters")
        log.warning("re-sent voucher conflicts with its booking", export_id=live.id,
                    source_export_id=source_export.id, changed=what)
        return live.id, note
    if live is not None:
        if live.posting_started_at is not None:
            raise _NotYet(f"{source} sent voucher {expense.source_ref} again with other content "
                          f"({what}) while export {live.id} of its earlier version is being "
                          "posted; ingested once that export ends")
        try:
            transition(session, live, ExportStatus.CANCELLED, actor=connection.source_system,
                       reason=f"superseded: {source} sent the voucher again with other content "
                              f"({what}) in export {source_export.external_export_id}",
                       guard=AccountingExport.posting_started_at.is_(None),
                       error_message=f"superseded by a corrected version of the voucher that "
                                     f"{source} sent in export {source_export.external_export_id}")
        except ConcurrentTransition:
            raise _NotYet(f"export {live.id} of voucher {expense.source_ref} started posting "
                          "while its corrected version arrived; ingested once it ends") from None
    replace_content(session, expense, expense_in)
    export = export_service.create_export(
        session, source_export.organization_id, expense.id, connection.target_system,
        actor=connection.source_system, source_unit_id=source_export.id)
    record_event(session, export, "source_content_changed", actor=connection.source_system,
                 reason=f"{source} sent the voucher again with other content ({what}); the "
                        "earlier version was never booked",
                 data={"superseded_export_id": live.id if live is not None else None})
    session.flush()
    session.expire(expense, ["receipt_data"])
    return export.id, None


def _export_for(session, source_export: SourceUnit, connection: SourceConnection,
                expense_id: str) -> str:
    """A new accounting export, or the live one of a voucher Findity sent again unchanged.

    Findity may resend a voucher we already booked (our SUCCESS report was lost, say): it is
    linked to the existing export and reported again, never booked twice.
    """
    live = export_service.active_export(session, expense_id, connection.target_system)
    if live is not None:
        if live.status != ExportStatus.PROCESSING.value:
            sources.enqueue_report(session, source_export.id)
        return live.id
    export = export_service.create_export(
        session, source_export.organization_id, expense_id, connection.target_system,
        actor=connection.source_system, source_unit_id=source_export.id)
    return export.id


# --- report back --------------------------------------------------------------------------------
#
# Why a repeated report is harmless, without relying on anything Findity did not document:
#
# 1. What we send is derived from the database every time (``_desired_report``), and a voucher is
#    sent only when that differs from what Findity accepted last (``reported_status`` +
#    ``reported_number``; the errorText for FAILED). A repeat is therefore always the same
#    update again: the same SUCCESS with the same voucher number (a booking is never redone) or
#    the same FAILED.
# 2. Before an update goes on the wire it is committed as ``report_in_flight``. A report that
#    finds it set (a worker killed, an answer lost, the database gone before we recorded the
#    200) knows Findity may already hold exactly that update, and sends it in a request of its
#    own. Whatever Findity answers to it, only that voucher is affected: a refusal can no longer
#    hold back the other vouchers of the package, and a 200 is recorded like any acceptance.
#    Findity documents that a voucher number makes a voucher "only sent once", so the same
#    SUCCESS with the same number cannot cause a second booking anywhere.
# 3. A refusal of a repeat is kept on the voucher (``report_error``) and the package stays
#    ``processing``: the sweeper re-sends it every AIC_SOURCE_STUCK_AFTER_SECONDS and operators
#    see why. Only recording it as done relies on Findity's answer, in its adapter's ``already_holds``.
# 4. One report per package at a time: a Redis lock of AIC_REPORT_LOCK_SECONDS renewed while the
#    report runs (``_ReportLock``), so a killed worker's lock is gone within seconds, and no
#    request is sent once the lock is lost.

# The source's words (the wire of a report, how it says "already held") are its adapter's
# (``SourceAdapter.report_for`` / ``read_report`` / ``already_holds``); what to report, when,
# and in which requests is decided here, the same for every source.


@dataclass
class _Owed:
    voucher_row_id: int
    report: ItemReport
    maybe_held: bool  # the source may already hold exactly this report
    unit_id: str = ""  # the unit (SourceUnit) the item belongs to


# Units of one connection a CHUNKED report reads at once; more are reported by the next run.
CHUNKED_REPORT_UNITS = 500


def report_to_source(source_export_id: str) -> StepOutcome:
    """Report what became of a unit's items, as its source's ``report_granularity`` says.

    PER_ITEM: the unit's reports in one request (a unit's lock). CHUNKED: every report the
    connection owes, gathered across its units, in requests of at most ``report_chunk_size``
    (a connection's lock: TRAEDE marks entries, each its own unit, ten at a time). NONE: the
    source is never told; the unit completes once every item's outcome is final.
    """
    with session_scope() as session:
        source_export = session.get(SourceUnit, source_export_id)
        if source_export is None:
            return StepOutcome("skipped", "unknown source export")
        connection_id = source_export.source_connection_id
        system = session.get(SourceConnection, connection_id).source_system
    try:
        chunked = (registry.source(system).capabilities.report_granularity
                   == registry.ReportGranularity.CHUNKED)
    except registry.UnknownSystem as unknown:
        return StepOutcome("skipped", str(unknown))
    lock = _ReportLock(f"connection:{connection_id}" if chunked else source_export_id)
    if not lock.acquire():
        # Another worker is reporting this package (connection) right now; come back for what
        # it misses.
        return StepOutcome("retry", "another report of this "
                                    f"{'connection' if chunked else 'package'} is running")
    try:
        return _report_connection(connection_id, lock) if chunked else _report(
            source_export_id, lock)
    finally:
        lock.release()


class _ReportLock:
    """One report of a package at a time, held only while a live worker works.

    A short Redis lock (AIC_REPORT_LOCK_SECONDS) that a thread renews every third of its life
    while the report runs: a SIGKILLed worker stops renewing and its lock is gone within those
    seconds, instead of holding the package's report back for minutes.
    """

    def __init__(self, source_export_id: str) -> None:
        settings = get_settings()
        self.seconds = settings.report_lock_seconds
        self._redis = redis.Redis.from_url(settings.redis_url)
        # Not thread-local: redis-py keeps a lock's token per thread by default, and the renewer
        # is another thread. It died on its first renewal (AttributeError: no token in that
        # thread), so a report longer than the lock lost it and stopped as "report_lock_lost".
        self._lock = self._redis.lock(f"aic:report-lock:{source_export_id}", timeout=self.seconds,
                                      thread_local=False)
        self._stop = threading.Event()
        self._lost = False
        self._renewer: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self._lock.acquire(blocking=False):
            self._redis.close()
            return False
        self._renewer = threading.Thread(target=self._renew, daemon=True,
                                         name="report-lock-renewer")
        self._renewer.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self._lock.reacquire()
            except redis.exceptions.LockError:
                self._lost = True  # expired (Redis away too long): ``held`` stops the sends
                return
            except redis.exceptions.RedisError:
                continue  # try again; if Redis stays away the lock expires and ``held`` says so

    @property
    def held(self) -> bool:
        if self._lost:
            return False
        try:
            return bool(self._lock.owned())
        except redis.exceptions.RedisError:
            return False

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        try:
            self._lock.release()
        except redis.exceptions.RedisError:
            pass  # expired or Redis away: it frees itself within ``seconds``
        self._redis.close()


def _report(source_export_id: str, lock: _ReportLock) -> StepOutcome:
    with session_scope() as session:
        source_export = session.get(SourceUnit, source_export_id)
        if source_export is None:
            return StepOutcome("skipped", "unknown source export")
        connection = session.get(SourceConnection, source_export.source_connection_id)
        adapter = source_client_for(connection)
        owed = _owed_updates(session, adapter, source_export)
        external_export_id = source_export.external_export_id
        completed_now = _settle(session, adapter, source_export) if not owed else False
        session.expunge(connection)
    if not owed:
        if completed_now:
            _completed(adapter, connection, external_export_id, source_export_id)
        return StepOutcome("done", "0 reported")

    accepted, refused, failure = _send(adapter, connection.source_system, external_export_id,
                                       owed, lock)
    completed_now = _record(adapter, connection.source_system, source_export_id, accepted,
                            refused, failure)
    if completed_now:
        _completed(adapter, connection, external_export_id, source_export_id)
    return _report_outcome(source_export_id, accepted, refused, failure)


def _report_connection(connection_id: str, lock: _ReportLock) -> StepOutcome:
    """CHUNKED: the reports every unit of the connection owes, sent in chunks across units."""
    with session_scope() as session:
        connection = session.get(SourceConnection, connection_id)
        adapter = source_client_for(connection)
        units = session.scalars(
            select(SourceUnit)
            .where(SourceUnit.source_connection_id == connection_id,
                   SourceUnit.status == SourceUnitStatus.PROCESSING.value)
            .order_by(SourceUnit.updated_at, SourceUnit.id)
            .limit(CHUNKED_REPORT_UNITS)).all()
        owed: list[_Owed] = []
        completed_now: list[tuple[str, str]] = []
        for unit in units:
            unit_owed = _owed_updates(session, adapter, unit)
            for o in unit_owed:
                o.unit_id = unit.id
            owed += unit_owed
            if not unit_owed and _settle(session, adapter, unit):
                completed_now.append((unit.id, unit.external_export_id))
        external_ids = {unit.id: unit.external_export_id for unit in units}
        more = len(units) == CHUNKED_REPORT_UNITS
        session.expunge(connection)
    for unit_id, external_id in completed_now:
        _completed(adapter, connection, external_id, unit_id)
    if not owed:
        return StepOutcome("retry" if more else "done", "0 reported")

    size = registry.source(connection.source_system).capabilities.report_chunk_size
    accepted, refused, failure = _send(adapter, connection.source_system, None, owed, lock,
                                       size)
    unit_of = {o.voucher_row_id: o.unit_id for o in owed}
    for unit_id in dict.fromkeys(unit_of.values()):
        # Each unit records its own items (and the error that stopped the run, if any).
        if _record(adapter, connection.source_system, unit_id,
                   [o for o in accepted if o.unit_id == unit_id],
                   {row: message for row, message in refused.items()
                    if unit_of[row] == unit_id}, failure):
            _completed(adapter, connection, external_ids[unit_id], unit_id)
    outcome = _report_outcome(f"connection {connection_id}", accepted, refused, failure)
    if outcome.kind == "done" and more:
        return StepOutcome("retry", f"{outcome.detail}; more units to report")
    return outcome


def _report_outcome(what: str, accepted: list[_Owed], refused: dict[int, str],
                    failure: IntegrationError | None) -> StepOutcome:
    if accepted:
        log.info("reported to source", source_export_id=what, vouchers=len(accepted))
    if failure is not None:
        if failure.retryable:
            return StepOutcome("retry", failure.message, error=failure)
        log.error("report refused by source", source_export_id=what, error=failure.message)
        return StepOutcome("skipped", failure.message)
    if refused:
        log.error("source refused reports of some vouchers", source_export_id=what,
                  vouchers=len(refused))
        return StepOutcome("skipped", f"{len(accepted)} reported, {len(refused)} refused")
    return StepOutcome("done", f"{len(accepted)} reported")


def _owed_updates(session, adapter, source_export: SourceUnit) -> list[_Owed]:
    """The vouchers whose outcome the source does not hold yet, marked in flight (committed by
    the caller's transaction before anything is sent). None for a source that is never told."""
    if _granularity(source_export) == registry.ReportGranularity.NONE:
        return []
    owed = []
    for voucher in source_export.vouchers:
        desired = _desired_report(session, adapter, voucher)
        if desired is None or desired.identity == _told(adapter, voucher):
            continue
        maybe_held = _maybe_held(session, adapter, source_export, voucher, desired)
        voucher.report_in_flight = desired.wire
        owed.append(_Owed(voucher.id, desired, maybe_held, source_export.id))
    return owed


def _granularity(source_export: SourceUnit) -> registry.ReportGranularity:
    return registry.source(source_export.connection.source_system).capabilities.report_granularity


def _send(adapter, system: str, external_export_id: str | None, owed: list[_Owed],
          lock: _ReportLock, chunk_size: int | None = None):
    """Returns (accepted, {voucher row id: refusal}, the error that stopped us or None).

    ``external_export_id``: the unit the reports belong to, or None for reports gathered
    across units (CHUNKED; each report names its item).

    Reports the source cannot hold yet go out together: in one request, or in requests of
    ``chunk_size`` (a source that takes at most that many per call). Any report the source may
    hold already goes out alone; so does each report of a batch the source refused, because a
    refused batch says nothing about which voucher it objects to (nor, undocumented, whether it
    took any of them).
    """
    accepted: list[_Owed] = []
    refused: dict[int, str] = {}
    fresh = [o for o in owed if not o.maybe_held]
    alone = [o for o in owed if o.maybe_held]
    size = chunk_size or max(len(fresh), 1)
    batches = [fresh[i:i + size] for i in range(0, len(fresh), size)]
    fresh = []  # what a batch did not settle: sent alone below, before the repeats
    for batch in batches:
        if len(batch) == 1:
            fresh += batch
            continue
        if not lock.held:
            return accepted, refused, _lock_lost(system)
        try:
            adapter.send_reports(external_export_id, [o.report for o in batch])
            accepted += batch
        except IntegrationError as error:
            if _stops_the_package(error):
                return accepted, refused, error
            for o in batch:
                o.maybe_held = True
            fresh += batch
    for o in [*fresh, *alone]:
        if not lock.held:
            return accepted, refused, _lock_lost(system)
        try:
            adapter.send_reports(external_export_id, [o.report])
            accepted.append(o)
        except IntegrationError as error:
            if o.maybe_held and adapter.already_holds(o.report, error):
                log.info("report already held by source", voucher=o.report.external_id)
                accepted.append(o)
            elif _stops_the_package(error):
                return accepted, refused, error
            else:
                source = registry.display_name(system)
                refused[o.voucher_row_id] = (
                    f"{source} refused the {o.report.status} report"
                    f"{f' (sent again: {source} may hold it already)' if o.maybe_held else ''}: "
                    f"{error.message}")
    return accepted, refused, None


def _stops_the_package(error: IntegrationError) -> bool:
    """An error about the request as a whole (outage, rate limit, credentials, an export
    Findity does not know), not about one voucher's update."""
    return error.retryable or isinstance(error, (AuthError, NotFoundError))


def _lock_lost(system: str) -> IntegrationError:
    return TransientError("the package's report lock expired while reporting (Redis away?); "
                          "the rest is reported by the next report task", system=system,
                          code="report_lock_lost")


def _record(adapter, system: str, source_export_id: str, accepted: list[_Owed],
            refused: dict[int, str], failure: IntegrationError | None) -> bool:
    """Record what the source now holds; True if that completed the package."""
    with session_scope() as session:
        now = utcnow()
        for owed in accepted:
            voucher = session.get(SourceUnitItem, owed.voucher_row_id)
            voucher.reported_status = owed.report.status
            voucher.reported_number = owed.report.number if owed.report.booked else None
            voucher.reported_at = now
            voucher.report_payload = owed.report.wire
            voucher.report_error = None
            if _identity_of(adapter, voucher.report_in_flight) == owed.report.identity:
                voucher.report_in_flight = None
        for voucher_row_id, message in refused.items():
            voucher = session.get(SourceUnitItem, voucher_row_id)
            voucher.report_error = message
            # report_in_flight stays: a refusal does not prove the source lacks the report.
        source_export = session.get(SourceUnit, source_export_id)
        problems = ([f"reporting to {registry.display_name(system)} failed: {failure.message}"]
                    if failure else [])
        problems += [f"voucher {session.get(SourceUnitItem, row).external_voucher_id}: {message}"
                     for row, message in refused.items()]
        if problems:
            source_export.last_error = "; ".join(problems)[:2000]
        return _settle(session, adapter, source_export)


def _settle(session, adapter, source_export: SourceUnit) -> bool:
    """The package's status follows its vouchers: ``processing`` while any outcome is unknown
    or not yet held by the source (a source that is never told: while any outcome is unknown),
    else ``completed`` / ``completed_with_failures``. True if this call completed it."""
    if source_export.status not in (SourceUnitStatus.PROCESSING.value,
                                    SourceUnitStatus.COMPLETED.value,
                                    SourceUnitStatus.COMPLETED_WITH_FAILURES.value):
        return False
    told = _granularity(source_export) != registry.ReportGranularity.NONE
    failed = False
    done = True
    for voucher in source_export.vouchers:
        outcome = _outcome(session, voucher)
        if outcome is None:
            done = False
            break
        if told and adapter.report_for(outcome).identity != _told(adapter, voucher):
            done = False
            break
        failed = failed or not outcome.booked
    status = (SourceUnitStatus.PROCESSING if not done
              else SourceUnitStatus.COMPLETED_WITH_FAILURES if failed
              else SourceUnitStatus.COMPLETED).value
    if status == source_export.status:
        return False
    # A compare-and-set on the status read: a concurrent reopen (an export retried) wins.
    return transition_unit(session, source_export, SourceUnitStatus(status), actor="worker",
                           reason="every outcome is final" + ("" if not told else
                                                              " and held by the source")
                           ) and status != SourceUnitStatus.PROCESSING.value


def _desired_report(session, adapter, voucher: SourceUnitItem) -> ItemReport | None:
    """What the source should hold for this voucher now; None while its export is running."""
    outcome = _outcome(session, voucher)
    return adapter.report_for(outcome) if outcome is not None else None


def _outcome(session, voucher: SourceUnitItem) -> ItemOutcome | None:
    """What became of the voucher, from its export; None while the export is running (an
    export is SUCCESS only once its booking is recorded and committed)."""
    if voucher.outcome_error is not None:
        return ItemOutcome(voucher.external_voucher_id, booked=False, text=voucher.outcome_error)
    export = session.get(AccountingExport, voucher.export_id) if voucher.export_id else None
    if export is None:
        return None
    target = registry.display_name(export.target_system)
    if export.status == ExportStatus.SUCCESS.value:
        text = f"Booked in {target} as {export.external_reference} (export {export.id})"
        if voucher.note:
            text = f"{text}. Note: {voucher.note}"
        return ItemOutcome(voucher.external_voucher_id, booked=True, text=text,
                           external_number=export.external_number, booked_on=export.exported_at,
                           export_id=export.id)
    if export.status == ExportStatus.FAILED.value:
        return ItemOutcome(voucher.external_voucher_id, booked=False,
                           text=export.error_message or "the export failed", export_id=export.id)
    if export.status == ExportStatus.CANCELLED.value:
        return ItemOutcome(
            voucher.external_voucher_id, booked=False,
            text=export.error_message
            or "the export was cancelled by an operator; send it again when ready")
    return None


def _identity_of(adapter, wire: dict | None) -> tuple | None:
    """The identity (``ItemReport.identity``) of a stored report; None for none."""
    return adapter.read_report(wire).identity if wire else None


def _told(adapter, voucher: SourceUnitItem) -> tuple | None:
    """What the source accepted last for this voucher, as an identity."""
    if voucher.reported_status is None:
        return None
    if voucher.reported_status == SUCCEEDED:
        return (SUCCEEDED, voucher.reported_number)
    payload = voucher.report_payload
    return (voucher.reported_status, adapter.read_report(payload).error_text if payload else None)


def _maybe_held(session, adapter, source_export: SourceUnit, voucher: SourceUnitItem,
                desired: ItemReport) -> bool:
    """Could the source already hold exactly ``desired`` for this voucher? Yes if we put it on
    the wire before without recording an answer, or (booked) if another package of this
    connection reported or sent the same success for the same voucher id (the source sent the
    voucher again and we had booked it)."""
    identity = desired.identity
    if _identity_of(adapter, voucher.report_in_flight) == identity:
        return True
    if not desired.booked:
        return False
    others = session.scalars(
        select(SourceUnitItem).join(SourceUnit,
                                   SourceUnitItem.source_unit_id == SourceUnit.id)
        .where(SourceUnit.source_connection_id == source_export.source_connection_id,
               SourceUnitItem.external_voucher_id == voucher.external_voucher_id,
               SourceUnitItem.id != voucher.id)).all()
    return any(_told(adapter, o) == identity or _identity_of(adapter, o.report_in_flight) == identity
               for o in others)


def _completed(adapter, connection: SourceConnection, external_export_id: str,
               source_export_id: str) -> None:
    """The unit's completion step (Findity: the optional SIE 4 / CSV file, for administrators).

    Best effort after the bookings and reports are done: a failure is logged and recorded on the
    package, never turned into a failed booking.
    """
    try:
        done = adapter.completed(external_export_id, connection.options or {})
    except CompletionFailed as error:
        log.warning("package file not attached", source_export_id=source_export_id,
                    error=str(error))
        with session_scope() as session:
            session.get(SourceUnit, source_export_id).last_error = str(error)
        return
    if done is not None:
        log.info("package file attached", source_export_id=source_export_id, file=done)


# --- poll ---------------------------------------------------------------------------------------

@dataclass
class PollResult:
    connections: int = 0
    listed: int = 0
    recovered: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    reannounced: list[str] = field(default_factory=list)
    reported_again: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # known units whose content changed
    errors: list[str] = field(default_factory=list)
    skipped_locked: bool = False


def poll_sources() -> PollResult:
    """Safe to run twice at once (beat started twice): a Redis lock lets one poll through."""
    result = PollResult()
    lock = _PollLock()
    if not lock.acquire():
        result.skipped_locked = True
        return result
    try:
        with session_scope() as session:
            connections = session.scalars(select(SourceConnection)).all()
            for connection in connections:
                session.expunge(connection)
        for connection in connections:
            try:
                system = registry.source(connection.source_system)
            except registry.UnknownSystem:
                # A system this process does not load (removed, or AIC_EXTRA_SYSTEMS differs):
                # its connections wait; the others are polled.
                result.errors.append(f"{connection.id}: source system "
                                     f"{connection.source_system!r} is not registered here")
                continue
            if not system.capabilities.discovery & {
                    registry.Discovery.POLL_FEED, registry.Discovery.POLL_CURSOR}:
                continue  # announces by webhook only: nothing to list
            if not lock.renew():
                result.errors.append("the poll's lock expired and another poll holds it now; "
                                     "this poll stopped and leaves the rest to that one")
                break
            result.connections += 1
            _poll_connection(connection, result, lock)
    finally:
        lock.release()
    if result.changed:
        log.warning("poll found items changed in their source after we took them",
                    changed=len(result.changed))
    if result.recovered or result.requeued or result.reannounced or result.reported_again:
        log.warning("poll recovered exports", recovered=len(result.recovered),
                    requeued=len(result.requeued), reannounced=len(result.reannounced),
                    reported_again=len(result.reported_again))
    return result


class _PollLock:
    """One poll at a time, held only while a live worker polls.

    A Redis lock of AIC_POLL_LOCK_SECONDS, renewed after each page and each connection polled.
    It used to live half the poll interval (450 s) with no renewal: a worker SIGKILLed while
    polling held every later poll back that long, the redelivered poll included. Renewal is
    owner-checked (redis-py's ``reacquire`` compares our token in a script): a poll that stalled
    past its lock while another took it cannot extend the other's lock; it stops instead.
    """

    KEY = "aic:poll-lock"

    def __init__(self) -> None:
        settings = get_settings()
        self._redis = redis.Redis.from_url(settings.redis_url)
        self._lock = self._redis.lock(self.KEY, timeout=settings.poll_lock_seconds)

    def acquire(self) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        self._redis.close()
        return False

    def renew(self) -> bool:
        """Another AIC_POLL_LOCK_SECONDS from now, if the lock is still ours. A Redis error is
        not a loss: the poll goes on and the lock frees itself in time."""
        try:
            self._lock.reacquire()
        except redis.exceptions.LockError:
            log.warning("poll lock lost to another poll; this poll stops")
            return False
        except redis.exceptions.RedisError:
            pass
        return True

    def release(self) -> None:
        try:
            self._lock.release()
        except redis.exceptions.LockError:
            pass  # the lock expired during a long poll; the next poll simply runs
        except redis.exceptions.RedisError:
            pass  # Redis away: the lock frees itself within AIC_POLL_LOCK_SECONDS
        self._redis.close()


def _poll_connection(connection: SourceConnection, result: PollResult,
                     lock: _PollLock | None = None) -> None:
    """Read the connection's pending pages from its stored cursor on. Each page's announcements
    and the cursor after it are committed together, so a crash re-reads at most one page
    (announcing twice is harmless) and never skips one. The poll's lock is renewed after each
    page; a poll that lost it stops after the page it committed."""
    adapter = source_client_for(connection)
    # Only a feed of "not exported yet" items (Findity, TRAEDE) says, by listing a completed
    # unit, that the source lacks our report. A list of what changed since a cursor (Brex, with
    # its overlap) names completed units all the time, our own memo write among the changes.
    pending_feed = registry.Discovery.POLL_FEED in registry.source(
        connection.source_system).capabilities.discovery
    cursor = connection.poll_cursor
    for _ in range(MAX_POLL_PAGES):
        try:
            page = adapter.list_pending(cursor)
        except IntegrationError as error:
            result.errors.append(f"{connection.id}: {error.message}")
            log.warning("poll failed", connection_id=connection.id, error=error.message)
            _record_poll(connection.id, error=error.message)
            return
        changed: list[tuple[str, str]] = []
        with session_scope() as session:
            for item in page.announcements:
                if (version := _take_listed(session, connection, item, result,
                                            pending_feed=pending_feed)) is not None:
                    changed.append(version)
            moved = page.next_cursor is not None and page.next_cursor != cursor
            _record_poll(connection.id, cursor=page.next_cursor if moved else None,
                         session=session)
        for unit_id, version in changed:
            _recheck_unit(adapter, connection, unit_id, version, result)
        if not moved or not page.announcements:
            return
        if lock is not None and not lock.renew():
            result.errors.append(f"{connection.id}: the poll's lock was lost; the walk goes "
                                 "on at the next poll from the cursor just stored")
            return
        cursor = page.next_cursor


def _record_poll(connection_id: str, *, cursor: str | None = None, error: str | None = None,
                 session=None) -> None:
    if session is None:
        with session_scope() as own:
            return _record_poll(connection_id, cursor=cursor, error=error, session=own)
    values = {"last_polled_at": utcnow(), "last_poll_error": error}
    if cursor is not None:
        values["poll_cursor"] = cursor
    session.execute(update(SourceConnection).where(SourceConnection.id == connection_id)
                    .values(**values).execution_options(synchronize_session=False))


def _take_listed(session, connection: SourceConnection, item, result: PollResult, *,
                 pending_feed: bool = True) -> tuple[str, str] | None:
    """Record one listed unit. Returns (unit id, listed version) when a unit whose items are
    ingested is listed with another version than the one stored: the caller fetches it again
    after the page's commit (``_recheck_unit``)."""
    settings = get_settings()
    stuck_before = utcnow() - timedelta(seconds=settings.source_stuck_after_seconds)
    result.listed += 1
    source_export, new = sources.announce_unit(session, connection, item.external_id,
                                               via="poll", listed=item.payload or None,
                                               version=item.version)
    if not new and item.version is not None and source_export.listed_version != item.version:
        if source_export.listed_version is None or source_export.status in (
                SourceUnitStatus.RECEIVED.value, SourceUnitStatus.INGESTING.value,
                SourceUnitStatus.REJECTED.value):
            # Not ingested yet (the ingest fetches what is there now), or a unit recorded
            # before versions were kept: the version only needs recording.
            source_export.listed_version = item.version
        else:
            return source_export.id, item.version
    if new:
        result.recovered.append(item.external_id)
    elif source_export.status == SourceUnitStatus.REJECTED.value:
        # We believed a 404 (past the grace), yet the source lists the unit: take it again.
        if sources.reannounce_rejected(session, source_export):
            result.reannounced.append(item.external_id)
    elif source_export.status == SourceUnitStatus.COMPLETED.value and pending_feed:
        # Booked and reported, yet listed as pending: the source lost our report (TRAEDE: an
        # entry that comes back unmarked). Report it again; it is never booked again. Not for
        # a cursor listing (Brex): it re-sent the reports of every unit in its overlap window
        # on every poll, and the units went back to processing again and again.
        if sources.report_again(session, source_export):
            result.reported_again.append(item.external_id)
    elif (source_export.status in (SourceUnitStatus.RECEIVED.value,
                                   SourceUnitStatus.INGESTING.value)
          and source_export.updated_at < stuck_before
          and (source_export.lease_expires_at is None
               or source_export.lease_expires_at < utcnow())):
        sources.requeue_unit(session, source_export)
        result.requeued.append(item.external_id)


def _recheck_unit(adapter, connection: SourceConnection, unit_id: str, version: str,
                  result: PollResult) -> None:
    """A unit whose items are ingested was listed with another version: fetch it again and
    compare each item's content fingerprint with the one it was ingested with.

    A difference is a change in the source after we took the item (Brex: VOID, another amount,
    a refund, a split). It is never booked a second time: the item gets a note, its export an
    event (``source_changed_after_booking`` when it is booked), and the unit's ``last_error``
    says what to correct, all visible in the API and ``aic exports show``. The new fingerprint
    and version are stored so one change is surfaced once. A fetch that fails leaves the stored
    version, so the next poll tries again.
    """
    with session_scope() as session:
        unit = session.get(SourceUnit, unit_id)
        external_id, listed = unit.external_export_id, unit.listed_payload
    try:
        fetched = adapter.fetch_unit(external_id, listed)
    except IntegrationError as error:
        result.errors.append(f"{connection.id}: re-check of {external_id}: {error.message}")
        log.warning("changed unit not re-checked", source_export_id=unit_id, error=error.message)
        return
    source = registry.display_name(connection.source_system)
    target = registry.display_name(connection.target_system)
    items = []
    for fetched_item in fetched.items:
        try:
            items.append(adapter.to_source_item(fetched, fetched_item, target_display_name=target,
                                                options=connection.options or {}))
        except IntegrationError as error:
            result.errors.append(f"{connection.id}: re-check of {external_id}: {error.message}")
            return
    with session_scope() as session:
        unit = session.get(SourceUnit, unit_id)
        known = {v.external_voucher_id: v for v in unit.vouchers}
        notes = []
        for item in items:
            record = known.get(item.external_id)
            if (record is None or record.content_fingerprint is None
                    or item.content_fingerprint is None
                    or record.content_fingerprint == item.content_fingerprint):
                continue
            what = (f"it is now refused: {item.refusal}" if item.refusal
                    else "its content changed")
            export = session.get(AccountingExport, record.export_id) if record.export_id else None
            # Booked: succeeded, or its voucher is recorded and the export is still finishing
            # (receipt upload, the success write): either way a correction, never a new booking.
            if export is not None and (export.status == ExportStatus.SUCCESS.value
                                       or export.external_id is not None):
                note = (f"{source} changed item {item.external_id} after it was booked in "
                        f"{target} as {export.external_reference} (export {export.id}): {what}. "
                        "It was not booked again: correct that booking by hand")
                record_event(session, export, "source_changed_after_booking",
                             actor=connection.source_system, reason=note,
                             data={"source_export_id": unit.id,
                                   "voucher_id": item.external_id})
            else:
                note = (f"{source} changed item {item.external_id} after we took it "
                        f"({what}); what we hold was not changed: check it before it is "
                        "booked or retried")
                if export is not None:
                    record_event(session, export, "source_note", actor=connection.source_system,
                                 reason=note, data={"source_export_id": unit.id,
                                                    "voucher_id": item.external_id})
            record.note = "; ".join(n for n in (record.note, note) if n)[:4000]
            record.content_fingerprint = item.content_fingerprint
            notes.append(note)
            log.warning("source item changed after we took it", source_export_id=unit.id,
                        voucher=item.external_id)
        if notes:
            unit.last_error = "; ".join(notes)[:2000]
            record_unit_event(session, unit.id, "changed_in_source", actor="poll",
                              reason="; ".join(notes)[:2000], data={"version": version})
            result.changed.append(external_id)
        unit.listed_version = version
