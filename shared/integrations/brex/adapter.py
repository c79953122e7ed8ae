"""Brex behind the engine's source protocol (``shared.integrations.sources.SourceAdapter``):
a cursor poll over ``GET /v1/expenses``, one unit per purchase (an expense, or an itemized
family under its parent's id), receipts from pre-signed links, and the memo write-back.

The poll [guide: incremental polling]:

- Our cursor is a high-water mark (HWM) taken from the DATA: the largest ``updated_at`` of the
  expenses a complete walk saw, never our clock. Each poll asks for ``updated_at_start =
  HWM - overlap`` (bounds are inclusive and the list may lag behind changes), ``status[]`` = the
  approved statuses, SPLIT (itemized parents) and VOID/CANCELED (an approved expense withdrawn
  after we may have booked it; announced only when it has an ``approved_at``), all pages by
  cursor at ``limit`` 100.
- A walk that reaches its page cap resumes where it stood on the next poll (the same filters,
  Brex's cursor kept in ours), and the HWM moves only when a walk completes: the list is not in
  ``updated_at`` order, so a partial walk's largest ``updated_at`` says nothing of what it did
  not read. A cursor that leads back to a page already read (a broken cursor) fails the poll
  with ``ListingStopped`` after a bounded number of requests: nothing is announced from a walk
  we cannot trust to map itemized children, and the engine keeps the cursor it had.
- Overlap and our own memo PUT (it moves ``updated_at``) bring expenses back: the engine
  dedupes by (connection, ``external_id``), and ``Announcement.version`` is a fingerprint of
  the listed content without ``updated_at`` and memo, so a repeat listing is recognisably the
  same item; a changed version (VOID, another amount, a refund, a split) says "fetch it again
  and compare ``SourceItem.content_fingerprint``".
- Itemized children carry no parent on the wire [spec], only the ``parent_expense_id[]``
  filter. Every poll therefore asks Brex for the SPLIT parents purchased around the listed
  expenses (``purchased_at`` +- a day: [assumed] a child keeps its parent's purchase time) and
  their children, and announces a child under its parent's id (``conversion.py`` says why).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import unicodedata
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

import httpx

from shared.integrations.brex.client import BrexClient, ListingStopped, TokenProvider
from shared.integrations.brex.conversion import Family, convert, listing_version
from shared.integrations.brex.models import SPLIT, WITHDRAWN_STATUSES, Expense
from shared.integrations.brex.options import BrexOptions, read_options
from shared.integrations.errors import IntegrationError, NotFoundError, PermanentError
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

log = logging.getLogger(__name__)

LIST_EXPAND = ("merchant", "user")  # for the payload and its version; links come with the fetch
PARENT_WINDOW = timedelta(days=1)  # around a listed purchase, where its SPLIT parent may be
MEMO_TAG_PREFIX = "[Booked as voucher "


# --- reports -------------------------------------------------------------------------------


def read_report(wire: dict[str, Any]) -> ItemReport:
    booked = wire.get("status") == SUCCEEDED
    return ItemReport(external_id=wire.get("expense_id"), booked=booked,
                      number=wire.get("number") if booked else None,
                      error_text=None if booked else wire.get("error_text"), wire=wire)


def _memo_tag(number: str | None, export_id: str | None) -> str:
    ref = _ascii(number or "?")
    return f"{MEMO_TAG_PREFIX}{ref}{f' (export {export_id})' if export_id else ''}]"


def _with_tag(memo: str | None, tag: str) -> str:
    """The employee's memo kept (folded to ASCII, which Brex requires), our tag after it."""
    kept = _ascii(memo or "").strip()
    return f"{kept} {tag}" if kept else tag


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text)
    return "".join(c if c.isascii() else "?" for c in folded if not unicodedata.combining(c))


class BrexSource(BrexClient):
    """One Brex account as a source."""

    attachment_noun = "receipt"

    def __init__(self, base_url: str, *, token: TokenProvider | str,
                 options: BrexOptions | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(base_url, token=token, **kwargs)
        self.options = options if isinstance(options, BrexOptions) else read_options(options)

    # --- discovery ------------------------------------------------------------------------

    def list_pending(self, cursor: str | None) -> PendingPage:
        state = _PollState.read(cursor)
        if state.resume is not None:
            start = _parse_time(state.resume["start"]) if state.resume["start"] else None
            walk_cursor = state.resume["cursor"]
        else:
            start = (state.hwm - timedelta(seconds=self.options.overlap_seconds)
                     if state.hwm else self.options.go_live)
            walk_cursor = None
        filters = {"status[]": [*self.options.approved_statuses, SPLIT, *WITHDRAWN_STATUSES],
                   "updated_at_start": start, "expand[]": list(LIST_EXPAND)}
        items: list[Expense] = []
        stopped: ListingStopped | None = None
        try:
            for page in self.walk(filters, cursor=walk_cursor):
                items += page.items
        except ListingStopped as error:
            if error.code != "page_cap":
                raise  # a looping cursor: the poll fails, saying so; the HWM stays
            stopped = error
        except PermanentError as error:
            if state.resume is None or error.status_code != 400:
                raise
            # Brex no longer takes the cursor we stopped at (expired): walk again from the HWM.
            log.warning("brex.resume_refused", extra={"error": error.message})
            return self.list_pending(_PollState(hwm=state.hwm).dump())
        seen_max = max((e.updated_at for e in items), default=None)
        if state.resume and state.resume.get("max"):
            seen_max = max(filter(None, [seen_max, _parse_time(state.resume["max"])]))

        if stopped is None:  # a complete walk: the HWM moves to the data's largest updated_at
            hwm = max(filter(None, [state.hwm, seen_max]), default=None)
            next_state = _PollState(hwm=hwm)
        else:  # the page cap: the next poll goes on from here with the same filters
            next_state = _PollState(hwm=state.hwm, resume={
                "cursor": stopped.next_cursor, "start": _iso(start),
                "max": _iso(seen_max)})
        return PendingPage(self._announcements(items), next_cursor=next_state.dump())

    def _announcements(self, items: list[Expense]) -> list[Announcement]:
        parent_of = self._parents_of(items)
        listed = {e.id: e for e in items}
        announced: dict[str, Announcement] = {}
        for expense in items:
            if not self._may_matter(expense) and expense.id not in parent_of:
                continue
            unit_id = parent_of.get(expense.id, expense.id)
            if unit_id in announced:
                continue
            shown = listed.get(unit_id, expense)
            announced[unit_id] = Announcement(
                external_id=unit_id, payload=_payload(shown),
                version=listing_version(shown, self.options))
        return list(announced.values())

    def _may_matter(self, expense: Expense) -> bool:
        """Approved (or an itemized parent), or withdrawn after it was approved: a VOID or
        CANCELED expense that was once approved may be booked, and its change must reach the
        engine; one never approved is nothing to us. Anything else is a status we did not ask
        for (a filter Brex did not apply): never announced."""
        if expense.status in self.options.approved_statuses or expense.status == SPLIT:
            return True
        return expense.status in WITHDRAWN_STATUSES and expense.approved_at is not None

    def _parents_of(self, items: list[Expense]) -> dict[str, str]:
        """child id -> SPLIT parent id, for every listed expense that is an itemized child."""
        parents = {e.id for e in items if e.status == SPLIT}
        purchased = [e.purchased_at for e in items if e.status != SPLIT and e.purchased_at]
        if purchased:
            around = self.walk_items({"status[]": [SPLIT],
                                      "purchased_at_start": min(purchased) - PARENT_WINDOW,
                                      "purchased_at_end": max(purchased) + PARENT_WINDOW})
            parents |= {e.id for e in around}
        # One request per parent: the filter takes many ids but the answer does not say
        # which child belongs to which.
        parent_of: dict[str, str] = {}
        for parent in sorted(parents):
            for child in self.walk_items({"parent_expense_id[]": [parent]}):
                parent_of[child.id] = parent
        return parent_of

    # --- one unit ---------------------------------------------------------------------------

    def fetch_unit(self, external_id: str, listed: dict[str, Any] | None = None) -> FetchedUnit:
        """A fresh copy of the expense (receipt links are valid 15 minutes from now), with its
        itemized children when it is SPLIT. ``listed`` is not used: Brex has a GET-one
        endpoint, and a listing may be older than a receipt link lives."""
        head = self.get_expense(external_id)
        children: list[Expense] = []
        if head.status == SPLIT:
            children = self.walk_items({"parent_expense_id[]": [head.id],
                                        "expand[]": ["receipts.download_uris", "merchant",
                                                     "user"]})
        family = Family(head, children)
        return FetchedUnit(items=[FetchedItem(external_id=head.id, raw=family,
                                              attachment_url=_receipt_link(family))])

    def download_attachment(self, url: str, sink, *, max_bytes: int) -> None:
        """Download without our token; on a 403 (the link expired) fetch the expense once more
        and try its fresh link. The link's fragment names the expense and receipt for that."""
        try:
            self.download(url, sink, max_bytes=max_bytes)
            return
        except PermanentError as error:
            if error.code != "link_expired":
                raise
            owner = parse_qs(httpx.URL(url).fragment)
            expense_id, receipt_id = owner.get("expense", [None])[0], owner.get("receipt",
                                                                               [None])[0]
            if not expense_id or not receipt_id:
                raise
        fresh = self.get_expense(expense_id)
        link = next((r.download_uris[0] for r in fresh.receipts or []
                     if r.id == receipt_id and r.download_uris), None)
        if link is None:
            raise NotFoundError(f"receipt {receipt_id} is no longer on expense {expense_id}",
                                system=self.system, code="receipt_not_found")
        sink.seek(0)
        sink.truncate()
        self.download(link, sink, max_bytes=max_bytes)

    def to_source_item(self, unit: FetchedUnit, item: FetchedItem, *,
                       target_display_name: str, options: dict[str, Any]) -> SourceItem:
        converted = convert(item.raw, read_options(options), target_system=target_display_name)
        filename, content_type = _receipt_name(item.attachment_url)
        return SourceItem(item.external_id, converted.expense, refusal=converted.refusal,
                          receipt_filename=filename, receipt_content_type=content_type,
                          content_fingerprint=converted.fingerprint)

    # --- reports: our voucher reference into the memo ----------------------------------------

    def report_for(self, outcome: ItemOutcome) -> ItemReport:
        """Booked: a memo tag with the target's voucher number, sent under the Idempotency-Key
        ``<export id>:memo``. Failed: nothing is written to Brex (a memo is the employee's
        text; failures are shown by our API), so the report is held at once."""
        number = outcome.external_number if outcome.booked else None
        wire: dict[str, Any] = {"expense_id": outcome.external_id,
                                "status": SUCCEEDED if outcome.booked else "FAILED"}
        if outcome.booked:
            wire["number"] = number
            wire["memo_tag"] = _memo_tag(number, outcome.export_id)
            wire["idempotency_key"] = (f"{outcome.export_id}:memo" if outcome.export_id
                                       else f"{outcome.external_id}:{number}:memo")
        else:
            wire["error_text"] = outcome.text
        return read_report(wire)

    read_report = staticmethod(read_report)

    def send_reports(self, external_id: str, reports: list[ItemReport]) -> None:
        """Harmless to repeat: a memo that already holds our tag is left alone, and a repeated
        PUT carries the same Idempotency-Key (Brex answers it with the first answer)."""
        if not self.options.memo_write_back:
            return
        for report in reports:
            if not report.booked:
                continue
            current = self.get_expense(report.wire["expense_id"], expand=())
            tag = report.wire["memo_tag"]
            if tag in (current.memo or ""):
                continue
            self.update_memo(report.wire["expense_id"], _with_tag(current.memo, tag),
                             idempotency_key=report.wire["idempotency_key"])

    def already_holds(self, report: ItemReport, error: Exception) -> bool:
        """Whether Brex holds a repeated report although the repeat was refused: the memo
        shows our tag (read again; an unreadable expense proves nothing)."""
        if not report.booked or not self.options.memo_write_back:
            return False
        try:
            current = self.get_expense(report.wire["expense_id"], expand=())
        except IntegrationError:
            return False
        return report.wire["memo_tag"] in (current.memo or "")

    def completed(self, external_id: str, options: dict[str, Any]) -> str | None:
        return None  # nothing to attach to a Brex expense when its unit is done


# --- receipts ------------------------------------------------------------------------------


def _receipt_link(family: Family) -> str | None:
    """The first receipt with a link (the parent's, else a child's), with a fragment naming
    its expense and receipt: a fragment never leaves this process (HTTP does not send it)."""
    for owner in [family.head, *family.children]:
        for receipt in owner.receipts or []:
            if receipt.download_uris:
                return (f"{receipt.download_uris[0]}#"
                        f"{urlencode({'expense': owner.id, 'receipt': receipt.id})}")
    return None


def _receipt_name(url: str | None) -> tuple[str | None, str | None]:
    if not url:
        return None, None
    name = unquote(httpx.URL(url).path.rsplit("/", 1)[-1]) or "receipt"
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return f"brex-{name}", content_type


# --- the poll's cursor ---------------------------------------------------------------------


class _PollState:
    """Our cursor, as JSON text: ``{"hwm": ..., "resume": {"cursor", "start", "max"}}``."""

    def __init__(self, hwm: datetime | None = None,
                 resume: dict[str, Any] | None = None) -> None:
        self.hwm = hwm
        self.resume = resume

    @classmethod
    def read(cls, text: str | None) -> _PollState:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            hwm = _parse_time(data["hwm"]) if data.get("hwm") else None
            resume = data.get("resume")
            if resume is not None and not isinstance(resume.get("cursor"), str):
                raise ValueError("resume without a cursor")
            return cls(hwm, resume)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PermanentError(f"the stored Brex poll cursor is not ours ({exc}): clear the "
                                 "connection's poll cursor to list from go_live again",
                                 system=BrexClient.system, code="bad_cursor") from None

    def dump(self) -> str:
        data: dict[str, Any] = {"hwm": _iso(self.hwm)}
        if self.resume is not None:
            data["resume"] = self.resume
        return json.dumps(data, separators=(",", ":"))


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time without zone: {text}")
    return moment


def _payload(expense: Expense) -> dict[str, Any]:
    """The listed expense for operators, without anything that would be a credential."""
    data = expense.model_dump(mode="json", exclude_none=True)
    for receipt in data.get("receipts", []):
        receipt.pop("download_uris", None)
    return data
