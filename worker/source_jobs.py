"""The Findity package flow: ingest a package, report each voucher's outcome, poll for missed ones.

ingest   - fetch the export and its voucher package with the organization's own credentials (the
           webhook body is only a hint: a forged export id ends here as EXPORT_NOT_FOUND), turn
           each accounting voucher into an approved expense with its receipt PDF, and create one
           accounting export per voucher. Payment-format and unbookable vouchers get an outcome
           error instead and are reported FAILED.
report   - when accounting exports end, tell Findity per voucher: SUCCESS with bookingDate and
           voucherNumber, or FAILED with an errorText that says what to fix. A Findity outage only
           delays the report (retried on its own); it never causes a re-post.
poll     - list unprocessed exports of every Findity connection; queue the ones we do not know
           (a lost webhook) and the ones stuck before ingestion. Known, moving packages are left
           alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import redis
from sqlalchemy import or_, select, update

from shared.config import get_settings
from shared.db.models import (
    AccountingExport,
    ExportStatus,
    SourceConnection,
    SourceExport,
    SourceExportStatus,
    SourceVoucher,
)
from shared.db.session import session_scope
from shared.db.types import utcnow
from shared.domain import exports as export_service
from shared.domain import sources
from shared.domain.expenses import ingest_expense
from shared.integrations.errors import IntegrationError, NotFoundError
from shared.integrations.findity import (
    AccountingVoucher,
    VoucherFailedUpdate,
    VoucherPackage,
    VoucherSuccessUpdate,
)
from shared.integrations.findity.files import package_file
from shared.integrations.findity.conversion import (
    UnbookableVoucher,
    payment_format_error,
    voucher_to_expense,
)
from shared.integrations.sources import source_client_for
from shared.logs import get_logger

log = get_logger(__name__)
ACTOR = "findity"
TARGET_NAMES = {"tripletex": "Tripletex"}
# Findity's answer to a second SUCCESS for a voucher it already holds as booked (with a number).
ALREADY_PROCESSED = "VOUCHER_ALREADY_PROCESSED"
# Norwegian input VAT codes (SAF-T / Tripletex vatType numbers) and their rates. A merged VAT row
# is only trusted when the target, recomputing VAT from the gross at this rate, lands on exactly
# Findity's amount; a connection can extend or override them (options.vat_rates).
DEFAULT_VAT_RATES = {"1": Decimal("25"), "11": Decimal("15"), "13": Decimal("12")}


@dataclass(frozen=True)
class StepOutcome:
    kind: str  # "done" | "skipped" | "retry" | "rejected"
    detail: str = ""


# --- ingest -------------------------------------------------------------------------------------

def ingest_source_export(source_export_id: str) -> StepOutcome:
    claimed = _claim_for_ingest(source_export_id)
    if isinstance(claimed, StepOutcome):
        return claimed
    connection, external_export_id = claimed
    client = source_client_for(connection)
    try:
        client.get_export(external_export_id)
        package = client.get_voucher_package(external_export_id)
        receipts = _download_receipts(client, package)
    except NotFoundError as error:
        log.warning("source export rejected", source_export_id=source_export_id,
                    code=error.code, error=error.message)
        _finish_claim(source_export_id, SourceExportStatus.REJECTED, f"{error.code}: {error.message}")
        return StepOutcome("rejected", error.code)
    except IntegrationError as error:
        _finish_claim(source_export_id, SourceExportStatus.RECEIVED, error.message)
        if error.retryable:
            return StepOutcome("retry", error.message)
        log.error("source export cannot be fetched", source_export_id=source_export_id,
                  error=error.message)
        return StepOutcome("skipped", error.message)

    with session_scope() as session:
        source_export = session.get(SourceExport, source_export_id)
        connection = session.get(SourceConnection, source_export.source_connection_id)
        known = {v.external_voucher_id for v in source_export.vouchers}
        for voucher in package.vouchers:
            if voucher.id not in known:
                session.add(_ingest_voucher(session, source_export, connection, package, voucher,
                                            receipts.get(voucher.id)))
        source_export.status = SourceExportStatus.PROCESSING.value
        source_export.verification_lists_type = package.verification_lists_type.value
        source_export.voucher_count = len(package.vouchers)
        source_export.lease_expires_at = None
        source_export.last_error = None
        source_export.updated_at = utcnow()
        # Vouchers refused at ingest (payment formats, unbalanced) are reportable right away.
        sources.enqueue_report(session, source_export.id)
    log.info("source export ingested", source_export_id=source_export_id,
             vouchers=len(package.vouchers), format=package.verification_lists_type.value)
    return StepOutcome("done", f"{len(package.vouchers)} vouchers")


def _claim_for_ingest(source_export_id: str):
    settings = get_settings()
    now = utcnow()
    with session_scope() as session:
        claimed = session.execute(
            update(SourceExport)
            .where(SourceExport.id == source_export_id,
                   SourceExport.status.in_([SourceExportStatus.RECEIVED.value,
                                            SourceExportStatus.INGESTING.value]),
                   or_(SourceExport.lease_expires_at.is_(None), SourceExport.lease_expires_at < now))
            .values(status=SourceExportStatus.INGESTING.value, attempts=SourceExport.attempts + 1,
                    lease_expires_at=now + timedelta(seconds=settings.export_lease_seconds),
                    updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if claimed != 1:
            return StepOutcome("skipped", "already ingested, or being ingested")
        source_export = session.get(SourceExport, source_export_id)
        connection = session.get(SourceConnection, source_export.source_connection_id)
        session.expunge(connection)
        return connection, source_export.external_export_id


def _finish_claim(source_export_id: str, status: SourceExportStatus, error: str | None) -> None:
    with session_scope() as session:
        source_export = session.get(SourceExport, source_export_id)
        source_export.status = status.value
        source_export.last_error = error
        source_export.lease_expires_at = None
        source_export.updated_at = utcnow()


def _download_receipts(client, package: VoucherPackage) -> dict[str, bytes]:
    """Receipt PDFs first, outside any transaction: a slow Findity never holds a database lock."""
    return {
        voucher.id: client.get_receipt_pdf(voucher.basis_url)
        for voucher in package.vouchers
        if isinstance(voucher, AccountingVoucher) and voucher.basis_url
    }


def _ingest_voucher(session, source_export: SourceExport, connection: SourceConnection,
                    package: VoucherPackage, voucher, receipt: bytes | None) -> SourceVoucher:
    record = SourceVoucher(source_export_id=source_export.id, external_voucher_id=voucher.id)
    fmt = package.verification_lists_type
    if fmt.is_payment:
        record.outcome_error = payment_format_error(
            fmt, TARGET_NAMES.get(connection.target_system, connection.target_system))
        return record
    try:
        vat_rates = {**DEFAULT_VAT_RATES, **{
            code: Decimal(str(rate)) for code, rate in (connection.options or {}).get(
                "vat_rates", {}).items()}}
        expense_in = voucher_to_expense(
            voucher, verification_lists_type=fmt, vat_rates=vat_rates,
            target_system=TARGET_NAMES.get(connection.target_system, connection.target_system))
    except UnbookableVoucher as error:
        record.outcome_error = str(error)
        return record
    if receipt is not None:
        expense_in = expense_in.model_copy(update={
            "receipt_filename": f"findity-{voucher.id}.pdf",
            "receipt_content_type": "application/pdf", "receipt_data": receipt})
    expense, _ = ingest_expense(session, source_export.organization_id, expense_in)
    record.expense_id = expense.id
    record.export_id = _export_for(session, source_export, connection, expense.id)
    return record


def _export_for(session, source_export: SourceExport, connection: SourceConnection,
                expense_id: str) -> str:
    """A new accounting export, or the live one of a voucher Findity sent again.

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
        actor=ACTOR, source_export_id=source_export.id)
    return export.id


# --- report back --------------------------------------------------------------------------------

def report_to_source(source_export_id: str) -> StepOutcome:
    lock = _report_lock(source_export_id)
    if not lock.acquire(blocking=False):
        # Another worker is reporting this package right now; come back for what it misses.
        return StepOutcome("retry", "another report of this package is running")
    try:
        return _report_ready_vouchers(source_export_id)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass  # expired while we worked: the next report task takes over, nothing to undo


def _report_lock(source_export_id: str):
    client = redis.Redis.from_url(get_settings().redis_url)
    return client.lock(f"aic:report-lock:{source_export_id}", timeout=120)


def _report_ready_vouchers(source_export_id: str) -> StepOutcome:
    with session_scope() as session:
        source_export = session.get(SourceExport, source_export_id)
        if source_export is None:
            return StepOutcome("skipped", "unknown source export")
        connection = session.get(SourceConnection, source_export.source_connection_id)
        ready = _ready_updates(session, source_export)
        external_export_id = source_export.external_export_id
        session.expunge(connection)
    if ready:
        client = source_client_for(connection)
        failure: IntegrationError | None = None
        try:
            client.update_status(external_export_id, [update for _, update in ready])
        except IntegrationError as error:
            failure = error
            if _already_processed(error):
                # An earlier report reached Findity but recording it here did not (a worker
                # killed, the database gone, between the two). Findity refuses the whole request
                # for that voucher's sake: send the vouchers one at a time instead.
                ready, failure = _report_one_by_one(client, external_export_id, ready)
            else:
                ready = []
        if failure is not None:
            with session_scope() as session:
                session.get(SourceExport, source_export_id).last_error = (
                    f"reporting to Findity failed: {failure.message}")
            if ready:  # the vouchers Findity did take before the failure
                _record_reported(source_export_id, ready)
            if failure.retryable:
                return StepOutcome("retry", failure.message)
            log.error("report refused by source", source_export_id=source_export_id,
                      error=failure.message)
            return StepOutcome("skipped", failure.message)
    completed_now = _record_reported(source_export_id, ready)
    if completed_now and (connection.options or {}).get("content_file"):
        _attach_package_file(connection, external_export_id, source_export_id)
    if ready:
        log.info("reported to source", source_export_id=source_export_id, vouchers=len(ready))
    return StepOutcome("done", f"{len(ready)} reported")


def _already_processed(error: IntegrationError) -> bool:
    return error.status_code == 409 and error.code == ALREADY_PROCESSED


def _report_one_by_one(client, external_export_id: str, ready: list):
    """Report each voucher alone. Returns (the ones Findity now holds, the error that stopped us).

    "Already processed" answers a SUCCESS we sent before: Findity holds it (a voucher is booked
    once, so with the same number), so the voucher counts as reported.
    """
    accepted = []
    for voucher_row_id, update in ready:
        try:
            client.update_status(external_export_id, [update])
        except IntegrationError as error:
            if not (_already_processed(error) and update.status.value == "SUCCESS"):
                return accepted, error
            log.info("report already held by source", voucher=update.id)
        accepted.append((voucher_row_id, update))
    return accepted, None


def _record_reported(source_export_id: str, ready: list) -> bool:
    """Mark the vouchers reported; True if that completed the package."""
    with session_scope() as session:
        now = utcnow()
        for voucher_row_id, update_model in ready:
            voucher = session.get(SourceVoucher, voucher_row_id)
            voucher.reported_status = update_model.status.value
            voucher.reported_at = now
            voucher.report_payload = update_model.model_dump(mode="json", by_alias=True,
                                                             exclude_none=True)
        source_export = session.get(SourceExport, source_export_id)
        return _complete_if_all_reported(source_export)


def _ready_updates(session, source_export: SourceExport):
    ready = []
    for voucher in source_export.vouchers:
        if voucher.reported_at is not None:
            continue
        if voucher.outcome_error is not None:
            ready.append((voucher.id, VoucherFailedUpdate(id=voucher.external_voucher_id,
                                                          error_text=voucher.outcome_error)))
            continue
        export = session.get(AccountingExport, voucher.export_id)
        if export.status == ExportStatus.SUCCESS.value:
            ready.append((voucher.id, VoucherSuccessUpdate(
                id=voucher.external_voucher_id, booking_date=export.exported_at,
                voucher_number=int(export.external_number)
                if (export.external_number or "").isdigit() else None,
                information_text=f"Booked in {TARGET_NAMES.get(export.target_system, export.target_system)}"
                                 f" as {export.external_reference} (export {export.id})")))
        elif export.status == ExportStatus.FAILED.value:
            ready.append((voucher.id, VoucherFailedUpdate(
                id=voucher.external_voucher_id,
                error_text=export.error_message or "the export failed")))
        elif export.status == ExportStatus.CANCELLED.value:
            ready.append((voucher.id, VoucherFailedUpdate(
                id=voucher.external_voucher_id,
                error_text="the export was cancelled by an operator; send it again when ready")))
    return ready


def _complete_if_all_reported(source_export: SourceExport) -> bool:
    if source_export.status != SourceExportStatus.PROCESSING.value:
        return False
    if any(v.reported_at is None for v in source_export.vouchers):
        return False
    failed = any(v.reported_status != "SUCCESS" for v in source_export.vouchers)
    source_export.status = (SourceExportStatus.COMPLETED_WITH_FAILURES if failed
                            else SourceExportStatus.COMPLETED).value
    source_export.updated_at = utcnow()
    return True


def _attach_package_file(connection: SourceConnection, external_export_id: str,
                         source_export_id: str) -> None:
    """The optional SIE 4 / CSV file of the package, for administrators in Findity.

    Best effort after the bookings and reports are done: a failure is logged and recorded on the
    package, never turned into a failed booking.
    """
    fmt = connection.options["content_file"]
    client = source_client_for(connection)
    try:
        package = client.get_voucher_package(external_export_id)
        filename, content, content_type = package_file(
            package, fmt, company_name=connection.external_organization_id,
            generated_at=utcnow())
        client.put_content(external_export_id, filename, content, content_type)
    except (IntegrationError, ValueError) as error:
        log.warning("package file not attached", source_export_id=source_export_id,
                    error=str(error))
        with session_scope() as session:
            session.get(SourceExport, source_export_id).last_error = (
                f"the {fmt} file could not be attached: {error}")
        return
    log.info("package file attached", source_export_id=source_export_id, file=filename)


# --- poll ---------------------------------------------------------------------------------------

@dataclass
class PollResult:
    connections: int = 0
    listed: int = 0
    recovered: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped_locked: bool = False


def poll_sources() -> PollResult:
    """Safe to run twice at once (beat started twice): a Redis lock lets one poll through."""
    settings = get_settings()
    lock = redis.Redis.from_url(settings.redis_url).lock(
        "aic:poll-lock", timeout=max(60, int(settings.poll_interval_seconds // 2)))
    result = PollResult()
    if not lock.acquire(blocking=False):
        result.skipped_locked = True
        return result
    try:
        with session_scope() as session:
            connections = session.scalars(select(SourceConnection)).all()
            for connection in connections:
                session.expunge(connection)
        for connection in connections:
            result.connections += 1
            _poll_connection(connection, result)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass  # the lock expired during a long poll; the next poll simply runs
    if result.recovered or result.requeued:
        log.warning("poll recovered exports", recovered=len(result.recovered),
                    requeued=len(result.requeued))
    return result


def _poll_connection(connection: SourceConnection, result: PollResult) -> None:
    settings = get_settings()
    try:
        listed = source_client_for(connection).list_unprocessed_exports()
    except IntegrationError as error:
        result.errors.append(f"{connection.id}: {error.message}")
        log.warning("poll failed", connection_id=connection.id, error=error.message)
        return
    stuck_before = utcnow() - timedelta(seconds=settings.source_stuck_after_seconds)
    with session_scope() as session:
        for item in listed:
            result.listed += 1
            source_export, new = sources.announce_export(session, connection, item.id, via="poll")
            if new:
                result.recovered.append(item.id)
            elif (source_export.status in (SourceExportStatus.RECEIVED.value,
                                           SourceExportStatus.INGESTING.value)
                  and source_export.updated_at < stuck_before
                  and (source_export.lease_expires_at is None
                       or source_export.lease_expires_at < utcnow())):
                sources.requeue_export(session, source_export)
                result.requeued.append(item.id)
