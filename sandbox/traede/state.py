"""The TRAEDE sandbox's in-memory world: companies, their accounting entries, the export marks
per (entry, ``system_id``), the entries' timelines, and the fault knobs.

One lock guards everything; handlers never await while holding it.

Legend as in shared/guides/entries-export-api.md: [seed] the seed page, [assumed] our contract.
"""

from __future__ import annotations

import itertools
import random
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sandbox.knobs import CommonFaults, RequestCounter
from sandbox.traede.filters import Group

DatetimeFormat = Literal["laravel", "iso8601"]
MARK_MAX = 10  # [seed] "You can at a max mark 10 accounting entries at a time"


class NotFound(LookupError):
    pass


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def format_datetime(moment: datetime, style: DatetimeFormat) -> str:
    """[assumed] Laravel's classic ``Y-m-d H:i:s`` (UTC, no offset) by default; ``iso8601``
    writes ``2026-03-18T10:15:00+00:00``. The seed only says "datetime"."""
    moment = moment.astimezone(UTC)
    if style == "iso8601":
        return moment.isoformat(timespec="seconds")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Entry:
    """The accounting entry object
    [doc: core-api/accounting-entries/the-accounting-entry-object]."""

    id: int
    currency: str
    amount: Decimal  # signed; a float on the wire
    account: int  # debit
    contra_account: int  # credit
    date: datetime
    text: str
    created_at: datetime
    updated_at: datetime

    def to_wire(self, style: DatetimeFormat) -> dict[str, Any]:
        return {
            "id": self.id,
            "currency": self.currency,
            # [seed: "float"] A JSON number; the shortest repr of a 2-decimal float is its text.
            "amount": float(self.amount),
            "account": self.account,
            "contra_account": self.contra_account,
            "date": format_datetime(self.date, style),
            "text": self.text,
            "created_at": format_datetime(self.created_at, style),
            "updated_at": format_datetime(self.updated_at, style),
        }

    def filter_values(self) -> dict[str, datetime]:
        return {"created_at": self.created_at, "updated_at": self.updated_at}


@dataclass
class Mark:
    """The export state of one entry for one ``system_id`` [seed]."""

    exported_at: datetime
    note: str | None
    times: int = 1


@dataclass
class MarkFailure:
    """Make the next ``count`` mark calls fail with ``status``: ``before`` applying anything,
    ``after`` applying every item, or ``partial`` after applying the first ``applied`` items (a
    handler that marks one entry at a time and dies in the middle)."""

    mode: Literal["before", "after", "partial"]
    count: int = 1
    status: int = 500
    applied: int = 1


@dataclass
class TraedeFaults(CommonFaults):
    fetch_cap: int | None = None
    redeliver_ids: set[int] = field(default_factory=set)
    redeliver_marked_fetches: int = 0
    mark_failure: MarkFailure | None = None

    def view(self) -> dict[str, Any]:
        return {
            **self.common_view(),
            "fetch_cap": self.fetch_cap,
            "redeliver_ids": sorted(self.redeliver_ids),
            "redeliver_marked_fetches": self.redeliver_marked_fetches,
            "mark_failure": None if self.mark_failure is None or self.mark_failure.count <= 0
            else vars(self.mark_failure).copy(),
        }


@dataclass
class Company:
    id: str
    name: str
    access_token: str
    app_key: str
    datetime_format: DatetimeFormat = "laravel"
    note_max_length: int = 255
    entries: dict[int, Entry] = field(default_factory=dict)
    marks: dict[tuple[int, str], Mark] = field(default_factory=dict)
    timeline: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    mark_calls: list[dict[str, Any]] = field(default_factory=list)
    fetches: list[dict[str, Any]] = field(default_factory=list)
    faults: TraedeFaults = field(default_factory=TraedeFaults)
    requests: RequestCounter = field(default_factory=RequestCounter)
    query_token_uses: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "company_id": self.id,
            "name": self.name,
            "datetime_format": self.datetime_format,
            "note_max_length": self.note_max_length,
            "entries": len(self.entries),
            "faults": self.faults.view(),
            "requests": self.requests.view(),
            "query_token_uses": self.query_token_uses,
        }

    def entry_view(self, entry: Entry) -> dict[str, Any]:
        """The control view: exact amount text, export state per system_id, timeline."""
        wire = entry.to_wire("iso8601")
        wire["amount"] = str(entry.amount)
        wire["exports"] = {
            system_id: {"exported_at": format_datetime(m.exported_at, "iso8601"),
                        "note": m.note, "times": m.times}
            for (entry_id, system_id), m in sorted(self.marks.items())
            if entry_id == entry.id
        }
        wire["timeline"] = list(self.timeline.get(entry.id, []))
        return wire


class TraedeState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.companies: dict[str, Company] = {}
        self._by_token: dict[str, str] = {}
        # Entry ids are unique across the server, as database ids are.
        self._entry_ids = itertools.count(48_001)

    # --- companies and credentials -----------------------------------------------------------

    def create_company(self, name: str, app_key: str | None, datetime_format: DatetimeFormat,
                       note_max_length: int) -> Company:
        company = Company(
            id=secrets.token_hex(4),
            name=name,
            access_token=secrets.token_urlsafe(32),
            app_key=app_key or f"app-{secrets.token_hex(12)}",
            datetime_format=datetime_format,
            note_max_length=note_max_length,
        )
        with self.lock:
            self.companies[company.id] = company
            self._by_token[company.access_token] = company.id
        return company

    def company(self, company_id: str) -> Company:
        company = self.companies.get(company_id)
        if company is None:
            raise NotFound(f"no company {company_id}")
        return company

    def company_for_token(self, token: str) -> Company | None:
        company_id = self._by_token.get(token)
        return self.companies.get(company_id) if company_id else None

    def rotate_token(self, company: Company) -> str:
        """A new access token; the old one answers 401 from now on (revoked in TRAEDE's UI)."""
        with self.lock:
            self._by_token.pop(company.access_token, None)
            company.access_token = secrets.token_urlsafe(32)
            self._by_token[company.access_token] = company.id
        return company.access_token

    # --- entries -----------------------------------------------------------------------------

    def add_entries(self, company: Company, specs: list[dict[str, Any]]) -> list[Entry]:
        now = utc_now()
        with self.lock:
            made = []
            for spec in specs:
                created = spec.pop("created_at", None) or now
                entry = Entry(id=next(self._entry_ids), created_at=created, updated_at=created,
                              **spec)
                company.entries[entry.id] = entry
                made.append(entry)
        return made

    def change_entry(self, company: Company, entry_id: int, changes: dict[str, Any]) -> Entry:
        """An edit in TRAEDE after the fact: ``updated_at`` moves, export marks stay."""
        with self.lock:
            entry = company.entries.get(entry_id)
            if entry is None:
                raise NotFound(f"no entry {entry_id}")
            for name, value in changes.items():
                setattr(entry, name, value)
            entry.updated_at = max(utc_now(), entry.updated_at + timedelta(seconds=1))
        return entry

    # --- the export feed ---------------------------------------------------------------------

    def export_feed(self, company: Company, system_id: str, since: datetime | None,
                    groups: list[Group], limit: int | None, page: int) -> list[Entry]:
        """Entries not exported to ``system_id`` [seed]; with ``since`` also those whose last
        mark for it is older [assumed]; redelivery knobs add marked ones; then filters, then
        ``limit``/``page`` [assumed Bruno], then ``fetch_cap``. Ordered by id [assumed]."""
        faults = company.faults
        with self.lock:
            replay_marked = faults.redeliver_marked_fetches > 0
            if replay_marked:
                faults.redeliver_marked_fetches -= 1
            chosen = []
            for entry in sorted(company.entries.values(), key=lambda e: e.id):
                mark = company.marks.get((entry.id, system_id))
                due = (
                    mark is None
                    or (since is not None and mark.exported_at < since)
                    or entry.id in faults.redeliver_ids
                    or replay_marked
                )
                values = entry.filter_values()
                if due and all(group.matches(values) for group in groups):
                    chosen.append(entry)
            if limit is not None:
                chosen = chosen[(page - 1) * limit: page * limit]
            if faults.fetch_cap is not None:
                chosen = chosen[: faults.fetch_cap]
            company.fetches.append({"at": format_datetime(utc_now(), "iso8601"),
                                    "system_id": system_id, "entry_ids": [e.id for e in chosen]})
        return chosen

    def apply_marks(self, company: Company, items: list[dict[str, Any]]) -> list[int]:
        """Mark each item (already validated). Marking a marked entry again is harmless: it
        moves ``exported_at`` and adds a timeline line [assumed]."""
        now = utc_now()
        applied = []
        with self.lock:
            for item in items:
                key = (item["accounting_entry_id"], item["system_id"])
                previous = company.marks.get(key)
                company.marks[key] = Mark(now, item.get("note"),
                                          (previous.times + 1) if previous else 1)
                company.timeline.setdefault(key[0], []).append({
                    "at": format_datetime(now, "iso8601"),
                    "event": "exported",
                    "system_id": key[1],
                    "note": item.get("note"),
                })
                applied.append(key[0])
        return applied

    def take_mark_failure(self, company: Company) -> MarkFailure | None:
        with self.lock:
            failure = company.faults.mark_failure
            if failure is None or failure.count <= 0:
                return None
            failure.count -= 1
            return failure


# --- generated entries -----------------------------------------------------------------------

# A Danish wholesaler's entries [assumed chart]: sales, VAT as its own entry, purchases, fees.
_KINDS = [
    # (debit account, credit account, text, vat share of a sale or None)
    (5820, 1010, "Faktura {n} - {customer}", None),
    (5820, 7730, "Moms faktura {n} - {customer}", "vat"),
    (1310, 6800, "Varekøb {n} - {supplier}", None),
    (7220, 5820, "Gebyr betalingsgateway {n}", None),
]
_CUSTOMERS = ["Nordisk Mode A/S", "Boutique Øresund ApS", "Hansen & Søn", "Fjord Retail AB"]
_SUPPLIERS = ["Textil Import GmbH", "Bomuld Grossisten", "Knap & Lynlås ApS"]
_CURRENCIES = ["DKK", "DKK", "DKK", "EUR", "SEK", "NOK"]


def generate_entries(count: int, seed: int, start: datetime) -> list[dict[str, Any]]:
    """``count`` entry specs 17 minutes apart from ``start`` (each created 5 minutes after its
    date): mostly DKK, some EUR/SEK/NOK, a credit note (negative amount) every seventh, and (from
    three entries on) one dated 23:30 UTC on 31 December, already 1 January in Copenhagen."""
    rng = random.Random(seed)
    specs = []
    for index in range(count):
        debit, credit, text, vat = _KINDS[index % len(_KINDS)]
        number = 10_000 + index
        net = Decimal(rng.randint(1_000, 2_500_000)) / 100
        amount = (net * Decimal("0.25")).quantize(Decimal("0.01")) if vat else net
        if index % 7 == 6:
            amount = -amount
        when = start + timedelta(minutes=17 * index)
        if index == 2:
            when = datetime(start.year - 1, 12, 31, 23, 30, tzinfo=UTC)
        specs.append({
            "currency": _CURRENCIES[index % len(_CURRENCIES)] if not vat else "DKK",
            "amount": amount,
            "account": debit,
            "contra_account": credit,
            "date": when,
            "text": text.format(n=number, customer=rng.choice(_CUSTOMERS),
                                supplier=rng.choice(_SUPPLIERS)),
            "created_at": when + timedelta(minutes=5),
        })
    return specs
