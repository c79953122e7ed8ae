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
# Status: Findity's adapter (``shared/integrations/findity/adapter.py``) provides the webhook
# parsing and ``list_pending``; its ingest (fetch, basis PDFs, conversion) and report
# (updatestatus, content file) still live in ``worker/source_jobs.py``: moving them behind
# ``fetch_items`` / ``report`` / ``completed`` is the rest of issue 8 (see the allowlist of
# ``tests/unit/test_engine_names_no_vendor.py``).


@dataclass(frozen=True)
class Announcement:
    """A unit of work the source says exists (a Findity export package, a TRAEDE entry, a Brex
    expense): the engine records it once per (connection, ``external_id``)."""

    external_id: str
    payload: dict[str, Any]  # kept with the delivery for operators; never trusted for content
    # The source's organization the announcement names; a webhook naming another organization
    # than its URL's connection is refused (None: the source does not say).
    organization_id: str | None = None
    # The body's names of those two fields, so a refusal names what the sender sent.
    id_field: str = "id"
    organization_field: str = "organization"


@dataclass(frozen=True)
class PendingPage:
    """One poll's answer: what is pending, and where the next poll starts (None: a feed of
    "not exported yet" items, which needs no cursor; the engine stores the cursor per
    connection)."""

    announcements: list[Announcement]
    next_cursor: str | None


@dataclass(frozen=True)
class SourceItem:
    """One item of a fetched unit, already target-neutral: an approved expense to book, or why
    it cannot be booked (reported back as a failure, never posted)."""

    external_id: str
    expense: Any | None  # shared.domain.expenses.ExpenseIn, with its receipt when there is one
    refusal: str | None = None
    note: str | None = None  # e.g. "booked without its receipt: ..." for operators and the source


@dataclass(frozen=True)
class ItemOutcome:
    """What became of one item, derived by the engine from its export every time."""

    external_id: str
    booked: bool
    target_display_name: str
    external_reference: str | None = None
    external_number: str | None = None
    booked_on: Any | None = None
    error: str | None = None


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

    # Fetch one unit with our own credentials (the announcement is only a hint) and turn it into
    # target-neutral items; receipts are downloaded here, outside any transaction. ``options``:
    # the connection's options (validated by the entry's ``options_model``).
    def fetch_items(self, external_id: str, *, target_display_name: str,
                    options: dict[str, Any]) -> list[SourceItem]: ...

    # Report outcomes (ReportGranularity.PER_ITEM: any number per call; CHUNKED: at most
    # ``report_chunk_size``; NONE: never called). Returns the ids the source now holds; an item
    # the source refused is absent and is sent again alone. Must be harmless to repeat with the
    # same outcome (the engine sends an outcome again when it cannot know it was received).
    def report(self, external_id: str, outcomes: list[ItemOutcome]) -> set[str]: ...

    # Called once every outcome of the unit is held by the source (e.g. Findity's content file).
    def completed(self, external_id: str, options: dict[str, Any]) -> None: ...

    def close(self) -> None: ...
