"""The one check every reliability scenario ends with: nothing lost, nothing posted twice.

``check_invariants(tenants, figures)`` reads our database directly (the test process shares the
test database) and each tenant's records in its target's sandbox (control API:
``tenant.target_records()``, Tripletex vouchers or BillDiary expenses), and asserts:

1. Settled. Every export of the tenants' organizations is terminal (success, failed, cancelled)
   or legitimately waiting: processing with a live lease or a retry due in the future. An export
   in processing with neither is *lost* (nothing will ever run it without the sweeper).
2. Booked once. The tenant's ledger holds exactly one record per export that the worker
   finished as success (its reference, ``externalVoucherNumber`` or ``ref_no``, == export id,
   and it is the record the export
   names), none for failed or cancelled exports, at most one for an export still waiting, and no
   voucher that no export of the organization explains. An export that a PUT callback declared
   successful was booked by someone else; the ledger may hold at most one voucher of ours for it.
3. Legal story. The status changes in every export's event log are a path through the state
   machine (created -> processing; processing -> success | failed | cancelled;
   failed -> processing), each starting from the status the previous one reached, ending at the
   status the row holds; every voucher the events name is the same one.
4. Findity (when given): every package is done on our side (every voucher recorded as reported),
   every voucher of the packages was reported, and what Findity holds last for it agrees with
   the export: SUCCESS with the voucher's number for a success, FAILED for a
   failed or cancelled export or a voucher refused at ingest; never SUCCESS with two numbers.

It fills ``figures`` (exports, statuses, duplicates, lost, illegal paths) *before* asserting, so a
failing run still reports what it found.

``check_feed_sources(feeds, figures)`` extends them to the sources we poll, whose outcome goes
back to the item itself: TRAEDE entries (``TraedeFeed``) and Brex expenses (``BrexFeed``). Every
entry / expense the sandbox holds for the test (the ids it created, all bookable) must end as

5. exactly one source unit with one item, linked to one export of the organization that
   succeeded, and no unit, item or export beyond those (nothing booked twice under another unit);
6. exactly one voucher in the Tripletex sandbox carrying that export's id as its reference
   (fewer: lost; more: a duplicate);
7. reported as it ended, with that voucher's number: the TRAEDE entry marked exported for our
   ``system_id`` with the number as its ``note``; the Brex memo holding our tag
   ``[Booked as voucher <number> (export <id>)]`` once and no tag of another voucher (when the
   connection writes memos back; otherwise nothing written).

It waits (``settle_timeout``, calling ``poll`` every few seconds as beat would) until they hold
or time runs out, then fills ``figures`` and asserts; ``check_invariants`` over the same tenants
still checks the exports' own story (one voucher per export, legal paths).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from shared.db.models import AccountingExport, ExportEvent, SourceUnit
from shared.db.session import session_scope
from shared.db.types import utcnow

TERMINAL = {"success", "failed", "cancelled"}
ALLOWED = {None: {"processing"}, "processing": {"success", "failed", "cancelled"},
           "failed": {"processing"}, "success": set(), "cancelled": set()}
VOUCHER_EVENTS = {"posted_to_target", "found_existing_voucher"}


@dataclass
class InvariantReport:
    exports: int = 0
    statuses: Counter = field(default_factory=Counter)
    waiting: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    wrongly_booked: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    illegal: list[str] = field(default_factory=list)
    findity: list[str] = field(default_factory=list)
    callback_successes: int = 0

    @property
    def violations(self) -> list[str]:
        return [*self.lost, *self.duplicates, *self.wrongly_booked, *self.orphans,
                *self.illegal, *self.findity]


@dataclass
class _Row:
    id: str
    organization_id: str
    status: str
    external_id: str | None
    external_reference: str | None
    lease_expires_at: datetime | None
    next_attempt_at: datetime | None
    attempts: int
    events: list[dict[str, Any]]


def load_exports(org_ids: list[str]) -> list[_Row]:
    with session_scope() as session:
        exports = session.scalars(select(AccountingExport).where(
            AccountingExport.organization_id.in_(org_ids))).all()
        ids = [e.id for e in exports]
        events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for start in range(0, len(ids), 500):
            for event in session.scalars(select(ExportEvent).where(
                    ExportEvent.export_id.in_(ids[start:start + 500])).order_by(ExportEvent.id)):
                events[event.export_id].append({
                    "kind": event.kind, "from": event.from_status, "to": event.to_status,
                    "actor": event.actor, "data": event.data, "attempt": event.attempt,
                    "reason": event.reason})
        return [_Row(e.id, e.organization_id, e.status, e.external_id, e.external_reference,
                     e.lease_expires_at, e.next_attempt_at, e.attempts, events[e.id])
                for e in exports]


def _waiting(row: _Row, now: datetime) -> bool:
    """Processing, and something will run it: a live lease, or a retry due later."""
    return row.status == "processing" and (
        (row.lease_expires_at is not None and row.lease_expires_at > now)
        or (row.next_attempt_at is not None and row.next_attempt_at > now))


PACKAGE_DONE = {"completed", "completed_with_failures", "rejected"}


def _packages_done(findity: list[tuple[Any, list[str]]]) -> bool:
    with session_scope() as session:
        for ft, external_ids in findity:
            statuses = dict(session.execute(select(
                SourceUnit.external_export_id, SourceUnit.status).where(
                SourceUnit.organization_id == ft.tenant.organization_id)).all())
            if any(statuses.get(e) not in PACKAGE_DONE for e in external_ids):
                return False
    return True


def wait_settled(org_ids: list[str], timeout: float,
                 findity: list[tuple[Any, list[str]]] | None = None,
                 quiet: float | None = None) -> list[_Row]:
    """Rows once none is in processing and every Findity package is done (ingested, every
    voucher reported), or (at the timeout) as they are.

    ``quiet``: return as well once nothing has changed for that many seconds (no export's
    status, attempts, lease or due time; no source unit's status or ``updated_at``). A scenario
    that ends with work left without a message (a kill between kombu's pop and its unacked
    record) learns that in ``quiet`` seconds instead of waiting out the whole ``timeout``; it
    must be longer than anything that legitimately changes nothing meanwhile (a redelivery after
    the visibility timeout, the longest retry, a report lock) for the scenario at hand."""
    deadline = time.monotonic() + timeout
    last_state, since = None, time.monotonic()
    while True:
        rows = load_exports(org_ids)
        settled = all(r.status != "processing" for r in rows) and _packages_done(findity or [])
        if settled or time.monotonic() > deadline:
            return rows
        if quiet is not None:
            state = _progress_state(rows, org_ids)
            if state != last_state:
                last_state, since = state, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return rows
        time.sleep(0.5)


def _progress_state(rows: list[_Row], org_ids: list[str]) -> tuple:
    """What changes while work is moving: each export's status, attempts, lease and due time,
    and each source unit's status and last update."""
    with session_scope() as session:
        units = sorted(session.execute(select(
            SourceUnit.id, SourceUnit.status, SourceUnit.updated_at).where(
            SourceUnit.organization_id.in_(org_ids))).all())
    return (sorted((r.id, r.status, r.attempts, r.lease_expires_at, r.next_attempt_at)
                   for r in rows), [tuple(u) for u in units])


def _check_path(row: _Row) -> str | None:
    status = None
    for event in row.events:
        if event["to"] is None:
            continue
        if event["from"] != status:
            return (f"{row.id}: event {event['kind']} moves {event['from']} -> {event['to']} but "
                    f"the export was {status}")
        if event["to"] not in ALLOWED[status]:
            return f"{row.id}: illegal move {status} -> {event['to']} ({event['actor']})"
        status = event["to"]
    if status != row.status:
        return f"{row.id}: events end at {status} but the row says {row.status}"
    if not row.events or row.events[0]["kind"] != "created":
        return f"{row.id}: the log does not start with 'created'"
    return None


def _success_actor(row: _Row) -> str | None:
    for event in reversed(row.events):
        if event["to"] == "success":
            return event["actor"]
    return None


def check_invariants(tenants: list[Any], figures=None, *, settle_timeout: float = 90.0,
                     findity: list[tuple[Any, list[str]]] | None = None,
                     require_terminal: bool = False) -> InvariantReport:
    """Assert the invariants over every export of ``tenants`` (objects with ``organization_id``,
    ``company_id`` and ``sandbox``). ``findity``: ``[(findity_tenant, [external export ids])]``.
    ``require_terminal``: waiting exports are violations too (the scenario has ended every
    fault, so nothing has a reason to wait)."""
    org_ids = [t.organization_id for t in tenants]
    started = time.monotonic()
    rows = wait_settled(org_ids, settle_timeout, findity)
    settled_in = time.monotonic() - started
    now = utcnow()
    report = InvariantReport(exports=len(rows), statuses=Counter(r.status for r in rows))

    # 1. settled
    for row in rows:
        if row.status in TERMINAL:
            continue
        waiting = _waiting(row, now)
        if waiting and not require_terminal:
            report.waiting.append(row.id)
        else:
            why = ("waiting, though every fault has ended" if waiting
                   else "no live lease and no future retry")
            report.lost.append(f"{row.id}: still processing after {settle_timeout:.0f}s, {why} "
                               f"(attempts {row.attempts}, next attempt {row.next_attempt_at}, "
                               f"lease {row.lease_expires_at})")

    # 2. booked once
    by_org = {t.organization_id: t for t in tenants}
    rows_by_org: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        rows_by_org[row.organization_id].append(row)
    for org_id, tenant in by_org.items():
        # Every target's records in one shape: Tripletex vouchers by externalVoucherNumber,
        # BillDiary expenses by ref_no (tests.fixtures.tenants).
        by_number: dict[str, list[dict]] = defaultdict(list)
        for record in tenant.target_records():
            by_number[record["reference"]].append(record)
        known = {r.id for r in rows_by_org[org_id]}
        for number, found in by_number.items():
            if number not in known:
                report.orphans.append(f"{len(found)} record(s) with our reference "
                                      f"{number!r} belong to no export of {org_id}")
        for row in rows_by_org[org_id]:
            found = by_number.get(row.id, [])
            ids = sorted(str(v["id"]) for v in found)
            if row.status == "success":
                if _success_actor(row) == "worker":
                    if len(found) > 1:
                        report.duplicates.append(f"{row.id}: {len(found)} vouchers {ids}")
                    elif not found:
                        report.lost.append(f"{row.id}: success but no voucher in the ledger")
                    elif row.external_id is not None and ids != [str(row.external_id)]:
                        report.duplicates.append(f"{row.id}: the ledger holds {ids} but the "
                                                 f"export names {row.external_id}")
                else:
                    report.callback_successes += 1
                    if len(found) > 1:
                        report.duplicates.append(f"{row.id}: {len(found)} vouchers {ids}")
            elif row.status in ("failed", "cancelled"):
                if found:
                    report.wrongly_booked.append(f"{row.id}: {row.status} but the ledger holds "
                                                 f"voucher(s) {ids}")
            elif len(found) > 1:
                report.duplicates.append(f"{row.id}: waiting with {len(found)} vouchers {ids}")

    # 3. legal story
    for row in rows:
        problem = _check_path(row)
        if problem:
            report.illegal.append(problem)
        named = {str((e["data"] or {}).get("voucher_id")) for e in row.events
                 if e["kind"] in VOUCHER_EVENTS}
        if len(named) > 1:
            report.duplicates.append(f"{row.id}: its events name vouchers {sorted(named)}")

    # 4. Findity
    for findity_tenant, external_ids in findity or []:
        report.findity += _check_findity(findity_tenant, external_ids, {r.id: r for r in rows})

    if figures is not None:
        figures.exports += report.exports
        figures.statuses.update(report.statuses)
        figures.waiting += len(report.waiting)
        figures.duplicates += len(report.duplicates) + len(report.orphans)
        figures.wrongly_booked += len(report.wrongly_booked)
        figures.lost += len(report.lost)
        figures.illegal_paths += len(report.illegal)
        if report.callback_successes:
            figures.note("exports made successful by a PUT callback", report.callback_successes)
        if report.findity:
            figures.note("Findity report problems", len(report.findity))
        figures.note("seconds to settle after the faults", round(settled_in, 1))

    problems = report.violations
    assert not problems, (f"{len(problems)} invariant violation(s) over {report.exports} exports "
                          f"({dict(report.statuses)}):\n" + "\n".join(problems[:30]))
    return report


def _check_findity(ft, external_ids: list[str], rows: dict[str, _Row]) -> list[str]:
    problems: list[str] = []
    with session_scope() as session:
        packages = {s.external_export_id: s for s in session.scalars(select(SourceUnit).where(
            SourceUnit.organization_id == ft.tenant.organization_id))}
        ours = {ext: [(v.external_voucher_id, v.export_id, v.outcome_error)
                      for v in packages[ext].vouchers] if ext in packages else None
                for ext in external_ids}
        for ext in external_ids:
            package = packages.get(ext)
            if package is None:
                continue
            unrecorded = [v.external_voucher_id for v in package.vouchers if v.reported_at is None]
            if package.status not in PACKAGE_DONE or unrecorded:
                problems.append(f"Findity export {ext}: our package {package.id} is "
                                f"{package.status}, vouchers not recorded as reported: "
                                f"{unrecorded} (last error: {package.last_error})")
    for external_id in external_ids:
        if ours[external_id] is None:
            problems.append(f"Findity export {external_id}: never received")
            continue
        state = ft.findity.export_state(ft.org["organization_id"], external_id)
        expected = {v["id"] if isinstance(v, dict) else v for v in state.get("voucher_ids", [])}
        known = {voucher_id for voucher_id, _, _ in ours[external_id]}
        if expected and expected != known:
            problems.append(f"Findity export {external_id}: we know vouchers {sorted(known)}, "
                            f"Findity has {sorted(expected)}")
        numbers: dict[str, set] = defaultdict(set)
        for record in ft.status_updates(external_id):
            if record.get("response_status") != 200:
                continue
            for update in record["body"]["voucherUpdates"]:
                if update["status"] == "SUCCESS":
                    numbers[update["id"]].add(update.get("voucherNumber"))
        reported = ft.reported(external_id)
        for voucher_id, export_id, outcome_error in ours[external_id]:
            last = reported.get(voucher_id)
            if len(numbers[voucher_id]) > 1:
                problems.append(f"Findity voucher {voucher_id}: reported SUCCESS with numbers "
                                f"{sorted(map(str, numbers[voucher_id]))}")
            row = rows.get(export_id) if export_id else None
            if row is not None and row.status == "processing":
                continue  # still waiting: nothing to report yet
            if last is None:
                problems.append(f"Findity voucher {voucher_id} (export {export_id}): never "
                                "reported")
                continue
            if row is None:
                if last["status"] != "FAILED":
                    problems.append(f"Findity voucher {voucher_id}: refused at ingest "
                                    f"({outcome_error}) but reported {last['status']}")
            elif row.status == "success":
                if last["status"] != "SUCCESS":
                    problems.append(f"Findity voucher {voucher_id}: export {export_id} succeeded "
                                    f"but Findity holds {last['status']}")
            elif last["status"] != "FAILED":
                problems.append(f"Findity voucher {voucher_id}: export {export_id} is "
                                f"{row.status} but Findity holds {last['status']}")
    return problems


# --- polled sources whose outcome goes back to the item (TRAEDE marks, Brex memos) ------------

@dataclass
class TraedeFeed:
    """An organization booking a TRAEDE company's entries into its Tripletex sandbox company."""

    tenant: Any  # tests.fixtures.tenants.Tenant
    traede: Any  # tests.fixtures.traede_sandbox.TraedeSandbox
    company_id: str
    system_id: str
    source_connection_id: str
    entry_ids: list[int] = field(default_factory=list)

    kind = "TRAEDE entry"

    @property
    def expected(self) -> list[str]:
        return [str(i) for i in self.entry_ids]

    def reported(self) -> dict[str, list[str]]:
        """entry id -> the notes of our marks (one mark per entry and system_id, or none)."""
        return {str(e["id"]): [e["exports"][self.system_id].get("note") or ""]
                for e in self.traede.entries(self.company_id)
                if self.system_id in (e.get("exports") or {})}

    def reported_problem(self, external_id: str, number: str, export_id: str,
                         reported: dict[str, list[str]]) -> tuple[str, str] | None:
        notes = reported.get(external_id)
        if not notes:
            return "lost", f"booked as voucher {number} but never marked exported"
        if notes != [number]:
            return "duplicates", f"marked with note {notes[0]!r}, but its voucher is {number}"
        return None


@dataclass
class BrexFeed:
    """An organization booking a Brex account's expenses into its Tripletex sandbox company."""

    tenant: Any
    brex: Any  # tests.fixtures.brex_sandbox.BrexSandbox
    account_id: str
    source_connection_id: str
    memo_write_back: bool = True
    expense_ids: list[str] = field(default_factory=list)

    kind = "Brex expense"

    @property
    def expected(self) -> list[str]:
        return list(self.expense_ids)

    def reported(self) -> dict[str, list[str]]:
        """expense id -> our tags found in its memo."""
        from shared.integrations.brex.adapter import MEMO_TAG_PREFIX

        tags: dict[str, list[str]] = {}
        for expense in self.brex.expenses(self.account_id):
            memo = expense.get("memo") or ""
            found = []
            start = memo.find(MEMO_TAG_PREFIX)
            while start >= 0:
                end = memo.find("]", start)
                found.append(memo[start:end + 1] if end >= 0 else memo[start:])
                start = memo.find(MEMO_TAG_PREFIX, start + 1)
            tags[expense["id"]] = found
        return tags

    def reported_problem(self, external_id: str, number: str, export_id: str,
                         reported: dict[str, list[str]]) -> tuple[str, str] | None:
        from shared.integrations.brex.adapter import MEMO_TAG_PREFIX

        tags = reported.get(external_id, [])
        if not self.memo_write_back:
            return ("duplicates", f"memo written ({tags}) though write-back is off") if tags \
                else None
        wanted = f"{MEMO_TAG_PREFIX}{number} (export {export_id})]"
        if not tags:
            return "lost", f"booked as voucher {number} but its memo was never written"
        if tags != [wanted]:
            return "duplicates", f"memo tags {tags}, expected exactly {wanted!r}"
        return None


@dataclass
class FeedReport:
    items: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        return [*self.lost, *self.duplicates]


def _feed_problems(feed: Any) -> FeedReport:
    from shared.db.models import SourceUnitItem

    report = FeedReport(items=len(feed.expected))
    org_id = feed.tenant.organization_id
    exports = {r.id: r for r in load_exports([org_id])}
    with session_scope() as session:
        units = session.scalars(select(SourceUnit).where(
            SourceUnit.source_connection_id == feed.source_connection_id)).all()
        by_external: dict[str, list[tuple[str, list[tuple[str, str | None, str | None]]]]] = (
            defaultdict(list))
        for unit in units:
            items = [(i.external_voucher_id, i.export_id, i.outcome_error)
                     for i in session.scalars(select(SourceUnitItem).where(
                         SourceUnitItem.source_unit_id == unit.id))]
            by_external[unit.external_export_id].append((unit.status, items))
    vouchers: dict[str, list[dict]] = defaultdict(list)
    for voucher in feed.tenant.vouchers():
        vouchers[voucher.get("externalVoucherNumber") or ""].append(voucher)
    reported = feed.reported()
    linked: set[str] = set()
    expected = set(feed.expected)
    for external_id in sorted(set(by_external) - expected):
        report.duplicates.append(f"{feed.kind} {external_id}: a unit for an item the sandbox "
                                 "never held for this test")
    for external_id in feed.expected:
        where = f"{feed.kind} {external_id}"
        found = by_external.get(external_id, [])
        if not found:
            report.lost.append(f"{where}: never received (no unit)")
            continue
        if len(found) > 1:
            report.duplicates.append(f"{where}: {len(found)} units")
        status, items = found[0]
        if len(items) != 1:
            report.duplicates.append(f"{where}: {len(items)} items {items}")
            if not items:
                continue
        _, export_id, outcome_error = items[0]
        if export_id is None:
            report.lost.append(f"{where}: refused at ingest ({outcome_error}), never booked")
            continue
        linked.add(export_id)
        row = exports.get(export_id)
        if row is None or row.status != "success":
            report.lost.append(f"{where}: its export {export_id} is "
                               f"{row.status if row else 'missing'}, not success")
            continue
        booked = vouchers.get(export_id, [])
        if len(booked) > 1:
            report.duplicates.append(f"{where}: {len(booked)} vouchers for export {export_id}: "
                                     f"{sorted(str(v['number']) for v in booked)}")
            continue
        if not booked:
            report.lost.append(f"{where}: export {export_id} succeeded but Tripletex holds "
                               "no voucher for it")
            continue
        number = str(booked[0]["number"])
        if status != "completed":
            report.lost.append(f"{where}: booked as voucher {number}, but its unit is {status}")
        problem = feed.reported_problem(external_id, number, export_id, reported)
        if problem is not None:
            getattr(report, problem[0]).append(f"{where}: {problem[1]}")
    for export_id in sorted(set(exports) - linked):
        report.duplicates.append(f"export {export_id} of {org_id} belongs to no item of the "
                                 f"test ({exports[export_id].status})")
    for reference in sorted(set(vouchers) - set(exports)):
        report.duplicates.append(f"voucher(s) with reference {reference!r} in {org_id}'s "
                                 "Tripletex company belong to no export")
    return report


def check_feed_sources(feeds: list[Any], figures=None, *, settle_timeout: float = 60.0,
                       poll=None, poll_every: float = 2.0) -> FeedReport:
    """Assert invariants 5-7 over ``feeds`` (``TraedeFeed`` / ``BrexFeed``), waiting up to
    ``settle_timeout`` for them to hold; ``poll()`` is called every ``poll_every`` seconds
    meanwhile (what beat does). Returns the combined report."""
    started = time.monotonic()
    next_poll = 0.0
    while True:
        total = FeedReport()
        for feed in feeds:
            one = _feed_problems(feed)
            total.items += one.items
            total.lost += one.lost
            total.duplicates += one.duplicates
        if not total.violations or time.monotonic() - started > settle_timeout:
            break
        if poll is not None and time.monotonic() >= next_poll:
            poll()
            next_poll = time.monotonic() + poll_every
        time.sleep(0.5)
    if figures is not None:
        figures.duplicates += len(total.duplicates)
        figures.lost += len(total.lost)
        figures.note("source items (TRAEDE entries, Brex expenses)", total.items)
        figures.note("seconds until the source items settled", round(time.monotonic() - started, 1))
    problems = total.violations
    assert not problems, (f"{len(problems)} source invariant violation(s) over {total.items} "
                          "items:\n" + "\n".join(problems[:30]))
    return total
