"""A throwaway source system that lives only in the test tree: one folder, one ``SYSTEM``.

It proves the promise of ``shared.integrations.registry`` for sources: processes started with
``AIC_EXTRA_SYSTEMS=tests.plugins.feed_source`` accept connections to ``feed`` (credentials and
options checked against the entry below), poll its listing from the stored cursor, book each
entry (its own unit; the listing is the content, there is no GET of one entry) and report the
outcomes in chunks of at most two across units, without any engine module knowing this system
exists. Its server is ``server.py``; ``silent`` is the same source told nothing
(``ReportGranularity.NONE``).
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel, ConfigDict

from shared.domain.expenses import ExpenseIn
from shared.integrations.errors import (
    AuthError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from shared.integrations.registry import (
    CredentialField,
    Discovery,
    ReportGranularity,
    SourceCapabilities,
    SourceSystem,
)
from shared.integrations.sources import (
    SUCCEEDED,
    Announcement,
    FetchedItem,
    FetchedUnit,
    ItemOutcome,
    ItemReport,
    PendingPage,
    SourceItem,
)

NAME = "feed"
PAGE_SIZE = 2


class FeedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    employee_account: str = "2930"  # what the expense is owed on


def read_report(wire: dict) -> ItemReport:
    booked = wire.get("status") == SUCCEEDED
    return ItemReport(external_id=wire["id"], booked=booked,
                      number=wire.get("number") if booked else None,
                      error_text=None if booked else wire.get("error"), wire=wire)


class FeedSource:
    """A ``SourceAdapter`` over the feed server."""

    attachment_noun = "receipt"

    def __init__(self, system: str, base_url: str, api_key: str, options: FeedOptions) -> None:
        self.system = system
        self.options = options
        self._http = httpx.Client(base_url=base_url, headers={"X-Api-Key": api_key}, timeout=10)

    def _call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise TransientError(str(error), system=self.system, code="unreachable") from error
        if response.status_code == 401:
            raise AuthError("the feed refused our api_key", system=self.system,
                            code="unauthorized", status_code=401)
        if response.status_code >= 500:
            raise TransientError(response.text, system=self.system, code="server_error",
                                 status_code=response.status_code)
        if response.status_code >= 400:
            raise PermanentError(response.text, system=self.system, code="refused",
                                 status_code=response.status_code)
        return response.json()

    def list_pending(self, cursor: str | None) -> PendingPage:
        params = {"limit": PAGE_SIZE, **({"after": cursor} if cursor else {})}
        page = self._call("GET", "/entries", params=params)
        return PendingPage([Announcement(external_id=e["id"], payload=e)
                            for e in page["entries"]], next_cursor=page["next_cursor"])

    def fetch_unit(self, external_id: str, listed: dict | None) -> FetchedUnit:
        if listed is None:
            # No GET of one entry: only the listing, read with our credentials, is content.
            raise NotFoundError(f"entry {external_id} is known only from its listing",
                                system=self.system, code="not_listed", status_code=404)
        return FetchedUnit([FetchedItem(external_id=external_id, attachment_url=None,
                                        raw=listed)])

    def download_attachment(self, url: str, sink, *, max_bytes: int) -> None:
        raise NotImplementedError("the feed has no receipts")

    def to_source_item(self, unit: FetchedUnit, item: FetchedItem, *,
                       target_display_name: str, options: dict) -> SourceItem:
        entry = item.raw
        if entry["account"] == "9999":
            return SourceItem(item.external_id, None, refusal="account 9999 is not bookable")
        expense = ExpenseIn(
            source=self.system, source_ref=f"{self.system}-{entry['id']}", status="approved",
            description=entry["text"], expense_date=entry["date"], currency="NOK",
            rows=[{"account": entry["account"], "amount": entry["amount"],
                   "description": entry["text"]},
                  {"account": self.options.employee_account, "amount": f"-{entry['amount']}",
                   "description": "Owed to employee"}])
        return SourceItem(item.external_id, expense)

    def report_for(self, outcome: ItemOutcome) -> ItemReport:
        wire = ({"id": outcome.external_id, "status": SUCCEEDED,
                 "number": outcome.external_number} if outcome.booked else
                {"id": outcome.external_id, "status": "FAILED", "error": outcome.text})
        return read_report(wire)

    read_report = staticmethod(read_report)

    def send_reports(self, external_id: str | None, reports: list[ItemReport]) -> None:
        assert external_id is None, "CHUNKED reports gather several units"
        self._call("POST", "/results", json={"results": [r.wire for r in reports]})

    def already_holds(self, report: ItemReport, error: Exception) -> bool:
        return False

    def completed(self, external_id: str, options: dict) -> str | None:
        return None

    def close(self) -> None:
        self._http.close()


def build(name: str):
    def _build_client(connection, credentials) -> FeedSource:
        return FeedSource(name, connection.base_url, credentials["api_key"],
                          FeedOptions.model_validate(connection.options or {}))
    return _build_client


def entry(name: str, display_name: str, granularity: ReportGranularity) -> SourceSystem:
    return SourceSystem(
        name=name,
        display_name=display_name,
        credentials=(CredentialField("api_key", "the feed's key"),),
        options_model=FeedOptions,
        base_url_example="http://feed.invalid",
        build_client=build(name),
        capabilities=SourceCapabilities(
            discovery=frozenset({Discovery.POLL_CURSOR}), report_granularity=granularity,
            report_chunk_size=2 if granularity == ReportGranularity.CHUNKED else None),
    )


SYSTEM = entry(NAME, "Test Feed", ReportGranularity.CHUNKED)

__all__ = ["SYSTEM", "FeedSource"]
