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
                 findity: list[tuple[Any, list[str]]] | None = None) -> list[_Row]:
    """Rows once none is in processing and every Findity package is done (ingested, every
    voucher reported), or (at the timeout) as they are."""
    deadline = time.monotonic() + timeout
    while True:
        rows = load_exports(org_ids)
        settled = all(r.status != "processing" for r in rows) and _packages_done(findity or [])
        if settled or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


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
