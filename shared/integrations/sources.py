"""Which client talks to which expense source; one cached client per source connection.

Which client a system gets is its registry entry's ``build_client``
(``shared.integrations.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from shared.db.models import SourceConnection
from shared.domain.sources import source_credentials
from shared.integrations import registry
from shared.integrations.client_cache import ClientCache


def _build(connection: SourceConnection) -> Any:
    # UnknownSystem (a ValueError) for a row whose system is no longer registered.
    system = registry.source(connection.source_system)
    return system.build_client(connection, source_credentials(connection))


_cache: ClientCache[Any] = ClientCache(_build)
source_client_for = _cache.get


# --- the source adapter protocol ----------------------------------------------------------------
#
# What a source system provides, so the engine (claiming, retries, dedupe by (connection, source
# id), the sweeper, report convergence) runs every source the same way. Its registry entry's
# ``capabilities`` say which parts apply: ``discovery`` (webhook and/or a polled feed or cursor)
# and ``report_granularity`` (per item, chunks of ``report_chunk_size``, or none).
#
# Findity's adapter is ``shared/integrations/findity/adapter.py``.


@dataclass(frozen=True)
class Announcement:
    """A unit of work the source says exists (a Findity export package, a TRAEDE entry, a Brex
    expense): the engine records it once per (connection, ``external_id``)."""

    external_id: str
    # A webhook's: kept with the delivery for operators, never trusted for content. A poll's
    # (read with our own credentials): stored on the unit and handed to ``fetch_unit`` as
    # ``listed``, for sources whose listing is the content (TRAEDE).
    payload: dict[str, Any]
    # The source's organization the announcement names; a webhook naming another organization
    # than its URL's connection is refused (None: the source does not say).
    organization_id: str | None = None
    # The body's names of those two fields, so a refusal names what the sender sent.
    id_field: str = "id"
    organization_field: str = "organization"
    # What the unit's bookable content looked like when listed (a fingerprint; None: the source
    # cannot tell). A known unit announced with another version may have changed after we
    # booked it: the engine fetches it again and compares ``SourceItem.content_fingerprint``.
    # Things that do not change what is booked (an updated_at moved by our own write-back)
    # leave it as it was.
    version: str | None = None


@dataclass(frozen=True)
class PendingPage:
    """One poll's answer: what is pending, and where the next poll starts.

    The engine stores ``next_cursor`` on the connection (``poll_cursor``) in the transaction
    that records the page's announcements, and passes it to the next ``list_pending``; while a
    page moves the cursor on and announces something, the same poll asks for the next page (up
    to ``MAX_POLL_PAGES``). None keeps the stored cursor: a feed of "not exported yet" items
    needs none.
    """

    announcements: list[Announcement]
    next_cursor: str | None


@dataclass(frozen=True)
class FetchedItem:
    """One item of a fetched unit, as the source delivered it (converted only when the engine
    does not know it yet: ``SourceAdapter.to_source_item``)."""

    external_id: str
    attachment_url: str | None  # its receipt, downloaded by the engine before any transaction
    raw: Any  # the source's own object


@dataclass(frozen=True)
class FetchedUnit:
    items: list[FetchedItem]
    format: str | None = None  # the unit's format as the source names it (kept for operators)


@dataclass(frozen=True)
class SourceItem:
    """One item, target-neutral: an approved expense to book, or why it cannot be booked
    (reported back as a failure, never posted)."""

    external_id: str
    expense: Any | None  # shared.domain.expenses.ExpenseIn, without its receipt
    refusal: str | None = None
    receipt_filename: str | None = None  # the name and type its receipt is stored under
    receipt_content_type: str | None = None
    # What the booking depends on, hashed (None: the source does not say). Stored with the
    # item; an item fetched again whose fingerprint differs from the stored one changed in the
    # source (voided, refunded, another amount): booked already -> a correction for a human,
    # never a second voucher; not booked yet -> its new content supersedes the old.
    content_fingerprint: str | None = None


@dataclass(frozen=True)
class ItemOutcome:
    """What became of one item, derived by the engine from its export every time."""

    external_id: str
    booked: bool
    # Booked: what we tell about the booking ("Booked in Tripletex as ..."); not booked: what to
    # fix, in plain words.
    text: str
    external_number: str | None = None  # the target's voucher number
    booked_on: Any | None = None  # datetime of the booking
    export_id: str | None = None  # our accounting export: a stable key for idempotent reports


SUCCEEDED, FAILED = "SUCCESS", "FAILED"
# Pages one poll of one connection reads at most; the rest waits for the next poll.
MAX_POLL_PAGES = 20


@dataclass(frozen=True)
class ItemReport:
    """One item's outcome in the source's own words: ``wire`` is exactly what is sent, and what
    the engine stores as in flight / accepted. Two reports are the same outcome when their
    ``identity`` is: booked with the same number, or failed with the same text (what an
    administrator must fix); other texts and dates do not count."""

    external_id: str
    booked: bool
    number: str | None  # booked: the number the source keeps
    error_text: str | None  # failed: what the source shows
    wire: dict[str, Any]
    payload: Any = None  # the source's own object for sending (set when built, not when read)

    @property
    def status(self) -> str:
        return SUCCEEDED if self.booked else FAILED

    @property
    def identity(self) -> tuple[str, str | None]:
        return (SUCCEEDED, self.number) if self.booked else (FAILED, self.error_text)


class CompletionFailed(Exception):
    """A unit's best-effort completion step (e.g. a content file) failed; recorded, never
    turned into a failed booking."""


class MalformedAnnouncement(ValueError):
    """A webhook body the source would never send: answered 400 and not stored."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SourceAdapter(Protocol):
    """One connection to one source system, as the engine's source jobs use it.

    Errors are the taxonomy of ``shared.integrations.errors`` (retryable or not, 404 believed only
    after the not-found grace, ``AuthError`` waits for new credentials) like a target's.
    """

    system: str

    # Discovery: WEBHOOK is not here: a delivery is read before any connection's credentials are
    # at hand, by the registry entry's ``parse_webhook(body bytes) -> Announcement`` (raises
    # MalformedAnnouncement); the receiver is ``producers/webhooks/receiver.py``.

    # Discovery: POLL_FEED / POLL_CURSOR. What is pending from ``cursor`` on (None: the start).
    def list_pending(self, cursor: str | None) -> PendingPage: ...

    # Fetch one unit with our own credentials (the announcement is only a hint); a 404 is
    # retried within the not-found grace by the engine. ``download_attachment`` streams one
    # item's receipt into ``sink`` (at most ``max_bytes``), outside any transaction; what it
    # is called in messages: ``attachment_noun``. ``to_source_item`` turns an item the engine
    # does not know yet into a target-neutral expense or a refusal; ``options``: the
    # connection's options (the entry's ``options_model``).
    attachment_noun: str

    # ``listed``: the payload of the unit's last poll listing (``Announcement.payload``), for
    # sources with no GET of one unit (the listing is the content); None when only a webhook
    # announced it (a webhook body is never content). Sources that can fetch ignore it.
    def fetch_unit(self, external_id: str, listed: dict[str, Any] | None) -> FetchedUnit: ...
    def download_attachment(self, url: str, sink: Any, *, max_bytes: int) -> None: ...
    def to_source_item(self, unit: FetchedUnit, item: FetchedItem, *,
                       target_display_name: str, options: dict[str, Any]) -> SourceItem: ...

    # Reporting, only once the item's export is booked and committed (or has finally failed).
    # ReportGranularity.PER_ITEM: a unit's reports, any number per call, ``external_id`` is the
    # unit's. CHUNKED: reports gathered across the connection's units, at most
    # ``report_chunk_size`` per call, ``external_id`` is None (each report names its item).
    # NONE: none of these is called; the engine records outcomes and completes units.
    # ``report_for`` words an outcome, ``read_report`` reads back a stored wire.
    # ``send_reports`` sends them in one request (the engine sends a batch once, and each report
    # alone when the batch is refused or the source may already hold it); it must be harmless to
    # repeat with the same outcome. ``already_holds``: whether the refusal of a repeat says the
    # source holds it already.
    def report_for(self, outcome: ItemOutcome) -> ItemReport: ...
    def read_report(self, wire: dict[str, Any]) -> ItemReport: ...
    def send_reports(self, external_id: str | None, reports: list[ItemReport]) -> None: ...
    def already_holds(self, report: ItemReport, error: Exception) -> bool: ...

    # Called once every outcome of the unit is held by the source (Findity: the optional SIE 4 /
    # CSV file). Returns what it did (None: nothing to do); raises CompletionFailed.
    def completed(self, external_id: str, options: dict[str, Any]) -> str | None: ...

    def close(self) -> None: ...
