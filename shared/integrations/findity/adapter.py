"""Findity behind the engine's source protocol (``shared.integrations.sources.SourceAdapter``):
the export-ready webhook, the unprocessed-exports poll, the voucher package and its basis PDFs,
the conversion of vouchers into expenses, updatestatus reports and the package's content file.
"""

from __future__ import annotations

import json
from decimal import Decimal

from pydantic import ValidationError

from shared.db.types import utcnow
from shared.integrations.errors import IntegrationError
from shared.integrations.findity.client import FindityClient
from shared.integrations.findity.conversion import (
    UnbookableVoucher,
    payment_format_error,
    voucher_to_expense,
)
from shared.integrations.findity.files import package_file
from shared.integrations.findity.models import (
    AccountingVoucher,
    VerificationListsType,
    VoucherFailedUpdate,
    VoucherStatusUpdate,
    VoucherSuccessUpdate,
    WebhookBody,
)
from shared.integrations.sources import (
    SUCCEEDED,
    Announcement,
    CompletionFailed,
    FetchedItem,
    FetchedUnit,
    ItemOutcome,
    ItemReport,
    MalformedAnnouncement,
    PendingPage,
    SourceItem,
)

INFORMATION_TEXT_MAX = 500
# Norwegian input VAT codes (SAF-T / Tripletex vatType numbers) and their rates. A merged VAT row
# is only trusted when the target, recomputing VAT from the gross at this rate, lands on exactly
# Findity's amount; a connection can extend or override them (options.vat_rates).
DEFAULT_VAT_RATES = {"1": Decimal("25"), "11": Decimal("15"), "13": Decimal("12")}
# ASSUMED (no Findity document describes it; our sandbox answers it): Findity refuses a SUCCESS
# for a voucher it already holds as SUCCESS with a voucher number with 409 and this code.
ALREADY_PROCESSED = "VOUCHER_ALREADY_PROCESSED"


def parse_webhook(raw: bytes) -> Announcement:
    """The "metadata" webhook [doc]: exportId and organizationId, the rest kept for operators."""
    try:
        payload = json.loads(raw)
        body = WebhookBody.model_validate(payload)
    except (ValueError, ValidationError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the parser's recursion limit.
        raise MalformedAnnouncement(
            "the body must be Findity's JSON webhook payload with exportId and "
            f"organizationId: {_short(exc)}") from None
    return Announcement(external_id=body.export_id, payload=payload,
                        organization_id=body.organization_id, id_field="exportId",
                        organization_field="organizationId")


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
    return str(exc)[:200]


def read_report(wire: dict) -> ItemReport:
    """A stored updatestatus wire (SUCCESS with voucherNumber, or FAILED with errorText)."""
    booked = wire.get("status") == SUCCEEDED
    number = wire.get("voucherNumber") if booked else None
    return ItemReport(external_id=wire.get("id"), booked=booked,
                      number=str(number) if number is not None else None,
                      error_text=None if booked else wire.get("errorText"), wire=wire)


def source_already_holds(report: ItemReport, error: Exception) -> bool:
    """ASSUMED: the one place that reads the undocumented 409 VOUCHER_ALREADY_PROCESSED.

    Asked only for a repeat (an identical SUCCESS of ours may already be there), and only
    decides whether we record the voucher as told; correctness does not depend on it: if Findity
    answers otherwise, the repeat is refused, kept visible and sent again later, and Findity
    holds what it held. (tests/unit/test_source_jobs.py pins both sides.)
    """
    return (report.booked and isinstance(error, IntegrationError) and error.status_code == 409
            and error.code == ALREADY_PROCESSED)


class FinditySource(FindityClient):
    """One Findity organization as a source."""

    attachment_noun = "basis PDF"

    def fetch_unit(self, external_id: str, listed: dict | None = None) -> FetchedUnit:
        # Always fetched with our credentials; the listing (empty for Findity) is not needed.
        self.get_export(external_id)
        package = self.get_voucher_package(external_id)
        return FetchedUnit(
            items=[FetchedItem(
                external_id=voucher.id, raw=voucher,
                attachment_url=voucher.basis_url if isinstance(voucher, AccountingVoucher)
                and voucher.basis_url else None) for voucher in package.vouchers],
            format=package.verification_lists_type.value)

    def download_attachment(self, url: str, sink, *, max_bytes: int) -> None:
        self.download_receipt_pdf(url, sink, max_bytes=max_bytes)

    def to_source_item(self, unit: FetchedUnit, item: FetchedItem, *,
                       target_display_name: str, options: dict) -> SourceItem:
        voucher = item.raw
        fmt = VerificationListsType(unit.format)
        if fmt.is_payment:
            return SourceItem(voucher.id, None,
                              refusal=payment_format_error(fmt, target_display_name))
        try:
            vat_rates = {**DEFAULT_VAT_RATES, **{
                code: Decimal(str(rate)) for code, rate in (options or {}).get(
                    "vat_rates", {}).items()}}
            expense = voucher_to_expense(voucher, verification_lists_type=fmt,
                                         vat_rates=vat_rates, target_system=target_display_name)
        except UnbookableVoucher as error:
            return SourceItem(voucher.id, None, refusal=str(error))
        return SourceItem(voucher.id, expense, receipt_filename=f"findity-{voucher.id}.pdf",
                          receipt_content_type="application/pdf")

    def list_pending(self, cursor: str | None = None) -> PendingPage:
        # Findity's list of unprocessed exports is a "not exported yet" feed: no cursor.
        return PendingPage([Announcement(external_id=export.id, payload={})
                            for export in self.list_unprocessed_exports()], next_cursor=None)

    def report_for(self, outcome: ItemOutcome) -> ItemReport:
        update: VoucherStatusUpdate
        if outcome.booked:
            number = outcome.external_number or ""
            update = VoucherSuccessUpdate(
                id=outcome.external_id, booking_date=outcome.booked_on,
                voucher_number=int(number) if number.isdigit() else None,
                information_text=outcome.text[:INFORMATION_TEXT_MAX])
        else:
            update = VoucherFailedUpdate(id=outcome.external_id, error_text=outcome.text)
        wire = update.model_dump(mode="json", by_alias=True, exclude_none=True)
        report = read_report(wire)
        return ItemReport(external_id=report.external_id, booked=report.booked,
                          number=report.number, error_text=report.error_text, wire=wire,
                          payload=update)

    read_report = staticmethod(read_report)
    already_holds = staticmethod(source_already_holds)

    def send_reports(self, external_id: str, reports: list[ItemReport]) -> None:
        self.update_status(external_id, [r.payload for r in reports])

    def completed(self, external_id: str, options: dict) -> str | None:
        """The optional SIE 4 / CSV file of the package, for administrators in Findity (its
        company name: our organization's id in Findity, as before the registry)."""
        fmt = (options or {}).get("content_file")
        if not fmt:
            return None
        try:
            package = self.get_voucher_package(external_id)
            filename, content, content_type = package_file(
                package, fmt, company_name=self.organization_id, generated_at=utcnow())
            self.put_content(external_id, filename, content, content_type)
        except (IntegrationError, ValueError) as error:
            raise CompletionFailed(f"the {fmt} file could not be attached: {error}") from error
        return filename
