"""TRAEDE behind the engine's source protocol (``shared.integrations.sources.SourceAdapter``).

A unit is one accounting entry (``external_id`` = its id); the source remembers per
``system_id`` what was exported, so discovery is a polled "not exported yet" feed (no cursor),
and the report of a booked entry is its mark-as-exported, at most 10 a call.

What TRAEDE cannot be told: a failure. An entry that cannot be booked stays unmarked and comes
back on every poll, with the same ``external_id``. The engine must therefore recognise it (its
(connection, external id) row), never post it again, and keep it visible to operators as failed
with the reason; a fixed mapping (or go-live date) plus a retry books it and only then is it
marked. Likewise a booked entry that comes back (a crash between booking and marking, a mark
that failed, a stale read) is only marked again, never posted again.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from shared.integrations.errors import (
    IntegrationError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from shared.integrations.sources import (
    Announcement,
    FetchedItem,
    FetchedUnit,
    ItemOutcome,
    ItemReport,
    PendingPage,
    SourceItem,
)
from shared.integrations.traede.client import TraedeClient
from shared.integrations.traede.conversion import UnbookableEntry, entry_to_expense, parse_entry
from shared.integrations.traede.models import NOTE_MAX_LENGTH, MarkItem
from shared.integrations.traede.options import TraedeOptions

# The key of a FAILED report's wire. TRAEDE has no failure status: nothing is sent for it, and
# the wire only records, for the engine, the outcome we hold for the entry.
NOT_EXPORTED = "not_exported"


def _json_safe(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as listed, storable as JSON: an amount keeps its exact decimal text."""
    return {key: str(value) if isinstance(value, Decimal) else value
            for key, value in entry.items()}


def read_report(wire: dict[str, Any]) -> ItemReport:
    """A stored report wire: a mark item (booked; its ``note`` is the target's voucher number)
    or our local record of a failure (never sent)."""
    booked = NOT_EXPORTED not in wire
    return ItemReport(external_id=str(wire.get("accounting_entry_id")), booked=booked,
                      number=wire.get("note") if booked else None,
                      error_text=None if booked else wire.get(NOT_EXPORTED), wire=wire)


class TraedeSource(TraedeClient):
    """One TRAEDE account as a source, for one ``system_id`` (options: ``TraedeOptions``)."""

    attachment_noun = "receipt"  # TRAEDE's entries carry none (capabilities.attachments False)

    def __init__(self, base_url: str, *, access_token: str, app_key: str,
                 options: TraedeOptions, **kwargs: Any) -> None:
        super().__init__(base_url, access_token=access_token, app_key=app_key,
                         system_id=options.system_id, **kwargs)
        self.options = options

    # --- discovery ----------------------------------------------------------------------------

    def list_pending(self, cursor: str | None = None) -> PendingPage:
        """One announcement per entry the feed lists for our ``system_id`` (created from the
        go-live date on), booked-and-marked ones excepted by TRAEDE itself. A feed: every poll
        starts at page 1 and there is no cursor to keep (``cursor`` is ignored)."""
        entries = self.list_not_exported(created_from=self.options.go_live_at)
        return PendingPage(self._announce(entries), next_cursor=None)

    def list_not_exported_since(self, since: datetime) -> PendingPage:
        """The operator's "re-send since" listing (``not_exported_since``, UTC): also entries
        already marked for our ``system_id`` before ``since`` [assumed]. Never used by the
        automatic poll; see docs/ARCHITECTURE.md for what the engine does with it."""
        entries = self.list_not_exported(created_from=self.options.go_live_at,
                                         not_exported_since=since)
        return PendingPage(self._announce(entries), next_cursor=None)

    @staticmethod
    def _announce(entries: list[dict[str, Any]]) -> list[Announcement]:
        # The listing holds each id once already (one system_id per client).
        return [Announcement(external_id=str(entry["id"]), payload=_json_safe(entry))
                for entry in entries]

    # --- the unit -----------------------------------------------------------------------------

    def fetch_unit(self, external_id: str, listed: dict[str, Any] | None = None) -> FetchedUnit:
        """The unit is the entry itself. TRAEDE's Export API has no GET-one, so it is read from
        ``listed`` (our own poll's copy); without it (an announcement not from our poll) the
        feed is listed again and the entry found there, or ``NotFoundError``: it is then
        marked for our ``system_id`` already, or does not exist."""
        if listed is None:
            listed = next((entry for entry in self.list_not_exported(
                created_from=self.options.go_live_at) if str(entry["id"]) == external_id), None)
            if listed is None:
                raise NotFoundError(
                    f"TRAEDE's export feed for system_id {self.system_id} does not list entry "
                    f"{external_id}: it is marked as exported to this system already, was created "
                    f"before the go-live date {self.options.go_live_date}, or does not exist",
                    system=self.system, code="entry_not_listed")
        elif str(listed.get("id")) != external_id:
            raise PermanentError(
                f"the listed copy of TRAEDE entry {external_id} is entry {listed.get('id')!r}",
                system=self.system, code="listed_mismatch")
        return FetchedUnit(items=[FetchedItem(external_id=external_id, attachment_url=None,
                                              raw=dict(listed))])

    def download_attachment(self, url: str, sink: Any, *, max_bytes: int) -> None:
        raise PermanentError("TRAEDE's accounting entries have no attachments",
                             system=self.system, code="no_attachments")

    def to_source_item(self, unit: FetchedUnit, item: FetchedItem, *,
                       target_display_name: str, options: dict[str, Any]) -> SourceItem:
        """One entry as one balanced expense, or the reason it cannot be booked. ``options``
        are read again here, so a fixed mapping or go-live date applies to a retry."""
        try:
            current = TraedeOptions.model_validate(options) if options else self.options
        except ValidationError as invalid:
            raise PermanentError(f"the TRAEDE connection's options are invalid: {invalid}",
                                 system=self.system, code="invalid_options") from None
        try:
            expense = entry_to_expense(parse_entry(item.raw), current,
                                       target_system=target_display_name)
        except UnbookableEntry as refusal:
            return SourceItem(item.external_id, None, refusal=refusal.message)
        return SourceItem(item.external_id, expense)

    # --- reports ------------------------------------------------------------------------------

    def report_for(self, outcome: ItemOutcome) -> ItemReport:
        """Booked: a mark with the target's voucher number as ``note`` (what TRAEDE shows in
        the entry's timeline). Not booked: nothing TRAEDE can hold; the entry stays unmarked."""
        if outcome.booked:
            # Without a number (a target that gives none) the booking's text, so the note still
            # tells the accountant where it went.
            note = (outcome.external_number or outcome.text)[:NOTE_MAX_LENGTH]
            item = MarkItem(accounting_entry_id=int(outcome.external_id),
                            system_id=self.system_id, note=note)
            wire = item.model_dump(mode="json")
            report = read_report(wire)
            return ItemReport(external_id=report.external_id, booked=True, number=report.number,
                              error_text=None, wire=wire, payload=item)
        wire = {"accounting_entry_id": int(outcome.external_id), NOT_EXPORTED: outcome.text}
        return read_report(wire)

    read_report = staticmethod(read_report)

    def send_reports(self, external_id: str, reports: list[ItemReport]) -> None:
        """Mark the booked ones in one call (the engine sends at most ``report_chunk_size``,
        10); failed ones need no call. ``external_id`` is not used: each mark names its entry,
        and a chunk may gather entries of several units."""
        marks = [report.payload or MarkItem.model_validate(report.wire)
                 for report in reports if report.booked]
        if marks:
            self.mark_as_exported(marks)

    def already_holds(self, report: ItemReport, error: Exception) -> bool:
        """Whether a repeated mark that failed had in fact been applied before.

        Asked when a mark that may have been applied already (a chunk answered 5xx after
        applying, a lost answer) fails again when sent alone. Only an error after which the
        mark may have reached TRAEDE counts: a 5xx or a lost answer, not a 4xx (TRAEDE
        validates before applying), a 429 or a request that never left. Then the feed decides:
        an entry it no longer lists for our ``system_id`` is marked there, and only this
        connection marks with it, always with the one voucher number its booking has. Any doubt
        (still listed, a stale read, the feed failing now) answers False: the engine keeps the
        report visible and sends it again later, which is harmless.
        """
        if not report.booked:
            return False
        if not isinstance(error, TransientError) or isinstance(error, RateLimitedError):
            return False
        if not getattr(error, "sent", True):
            return False
        try:
            listed = self.list_not_exported(created_from=self.options.go_live_at)
        except IntegrationError:
            return False
        return all(str(entry["id"]) != report.external_id for entry in listed)

    def completed(self, external_id: str, options: dict[str, Any]) -> str | None:
        return None  # nothing to complete: the mark is the whole report
