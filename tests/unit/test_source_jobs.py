"""The Findity package flow's functions (``worker.source_jobs``), one step at a time.

Each test calls the functions the Celery tasks call (ingest, report, poll), in the order its
scenario needs, against the real Findity sandbox server (a subprocess) and the test database.
Jobs those functions would publish are collected instead of sent, so no worker can race the
steps. Where a voucher must be booked or failed, the test finishes its export through the state
machine exactly as the worker finishes one (``transition`` with the voucher's reference and
number); the whole path with real workers and Tripletex is in
tests/integration/test_findity_flow.py.

"Failed on the code before this change" in a docstring means: run against the previous
``worker/source_jobs.py`` and domain code (the sandbox knobs kept), the test failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import pytest
import redis as redis_lib
from sqlalchemy import select

import shared.jobs
from shared.config import PROJECT_ROOT, get_settings, reset_settings_cache
from shared.db.models import (
    AccountingExport,
    Expense,
    ExportEvent,
    SourceUnit,
    SourceUnitItem,
)
from shared.db.session import session_scope
from shared.db.types import utcnow
from shared.domain import exports as export_service
from shared.domain import organizations, sources
from shared.domain.state_machine import transition
from shared.integrations.errors import PermanentError
from shared.integrations.findity import VoucherSuccessUpdate
from shared.integrations.findity.adapter import read_report, source_already_holds
from shared.jobs import enqueue_job_after_commit
from shared.queue import TASK_INGEST_SOURCE_UNIT, TASK_REPORT_TO_SOURCE
from worker import source_jobs

FLIGHT = {"text": "Flight", "account": "7140", "amount": "1000.00", "vat_rate": 0}
TAXI = {"text": "Taxi", "account": "7140", "amount": "112.00", "vat_rate": 12}
MYSTERY = {"text": "Mystery", "account": "9999", "amount": "100.00", "vat_rate": 0}
FIXED = {"text": "Mystery", "account": "7140", "amount": "100.00", "vat_rate": 0}


@pytest.fixture
def jobs(monkeypatch) -> list:
    """What the functions would have sent to the broker (after their commits)."""
    sent: list = []
    monkeypatch.setattr(shared.jobs, "send_now", sent.append)
    return sent


@dataclass
class Source:
    org_id: str
    connection_id: str
    findity: object
    forg: dict

    @property
    def findity_org(self) -> str:
        return self.forg["organization_id"]

    def send(self, *items: dict, **knobs) -> dict:
        """Findity builds an export (send_webhook off: the test announces it). Each item is a
        report, or an expense that becomes a report (and a voucher) of its own."""
        reports = [item if "owner_name" in item else
                   {"owner_name": f"Person {i}", "expenses": [item]}
                   for i, item in enumerate(items)]
        return self.findity.create_export(self.findity_org, reports=reports,
                                          send_webhook=False, **knobs)

    def announce(self, external_export_id: str) -> str:
        with session_scope() as session:
            connection = session.get(sources.SourceConnection, self.connection_id)
            unit_id, job = sources.record_webhook(session.connection(), connection,
                                                  external_export_id,
                                                  {"exportId": external_export_id})
            if job is not None:  # sent after the commit, as the receiver does
                enqueue_job_after_commit(session, job)
            return unit_id

    def updates(self, external_export_id: str) -> list[dict]:
        """Every updatestatus call Findity received for the export, refused ones included."""
        return self.findity.status_updates(self.findity_org, external_export_id)

    def held(self, external_export_id: str) -> dict:
        """voucher id -> what Findity holds for it."""
        return self.findity.export_state(self.findity_org, external_export_id)["voucher_results"]


@pytest.fixture
def source(findity_sandbox, jobs) -> Source:
    forg = findity_sandbox.create_organization(name="Source Jobs AS")
    with session_scope() as session:
        org = organizations.create_organization(session, "Source Jobs AS")
        organizations.upsert_connection(
            session, org.id, "tripletex", base_url="http://127.0.0.1:9/v2",
            credentials={"consumer_token": "c", "employee_token": "e"})
        connection = sources.upsert_source_connection(
            session, org.id, "findity", base_url=forg["base_url"],
            credentials={"client_id": forg["client_id"], "client_secret": forg["client_secret"],
                         "token_url": forg["token_url"]},
            options={"organization_id": forg["organization_id"]})
        return Source(org.id, connection.id, findity_sandbox, forg)


def _package(source_export_id: str) -> dict:
    with session_scope() as session:
        package = session.get(SourceUnit, source_export_id)
        return {"status": package.status, "last_error": package.last_error,
                "received_at": package.received_at,
                "vouchers": [{"id": v.external_voucher_id, "export_id": v.export_id,
                              "expense_id": v.expense_id, "note": v.note,
                              "reported_status": v.reported_status,
                              "reported_number": v.reported_number,
                              "report_error": v.report_error} for v in package.vouchers]}


def _age(source_export_id: str, seconds: float) -> None:
    """The package was received ``seconds`` ago (its not-found grace counts from then)."""
    with session_scope() as session:
        session.get(SourceUnit, source_export_id).received_at = (
            utcnow() - timedelta(seconds=seconds))


def _book(export_id: str, number: int) -> None:
    """Finish the export as the worker does once Tripletex booked voucher ``number``: the
    voucher is recorded first (posted_to_target), then the export succeeds."""
    with session_scope() as session:
        export = session.get(AccountingExport, export_id)
        export.external_id = str(9000 + number)
        export.external_reference = f"voucher {number}"
        export.external_number = str(number)
    with session_scope() as session:
        transition(session, session.get(AccountingExport, export_id), "success", actor="worker")


def _fail(export_id: str, message: str) -> None:
    with session_scope() as session:
        transition(session, session.get(AccountingExport, export_id), "failed", actor="worker",
                   error_message=message, error_code="unmapped")


def _rows(expense_id: str) -> list[str]:
    with session_scope() as session:
        return [row["account"] for row in session.get(Expense, expense_id).rows]


def _export(export_id: str) -> AccountingExport:
    with session_scope() as session:
        export = session.get(AccountingExport, export_id)
        session.expunge(export)
        return export


def _ingest_until_done(source_export_id: str, timeout: float = 15) -> source_jobs.StepOutcome:
    deadline = time.monotonic() + timeout
    while True:
        outcome = source_jobs.ingest_source_unit(source_export_id)
        if outcome.kind != "retry" or time.monotonic() > deadline:
            return outcome
        time.sleep(min(outcome.retry_in or 0.5, 1.0))


# --- hole 4: a 404 is retried for a bounded time ---------------------------------------------


def test_an_export_that_answers_404_at_first_is_ingested_once_readable(source, jobs):
    """The webhook comes before Findity can serve the export. Failed on the code before this
    change: the first 404 rejected the package for good."""
    created = source.send(FLIGHT, not_found_for_seconds=1.5)
    package = source.announce(created["export_id"])

    first = source_jobs.ingest_source_unit(package)
    assert first.kind == "retry" and first.retry_in is not None
    assert 0 < first.retry_in <= get_settings().source_not_found_grace_seconds + 0.5
    state = _package(package)
    assert state["status"] == "received" and "EXPORT_NOT_FOUND" in state["last_error"]

    time.sleep(1.6)
    assert _ingest_until_done(package).kind == "done"
    state = _package(package)
    assert state["status"] == "processing" and len(state["vouchers"]) == 1
    assert state["vouchers"][0]["export_id"] is not None


def test_a_basis_pdf_that_answers_404_at_first_is_waited_for(source):
    """Failed on the code before this change: the basis 404 left the package in 'received'
    without a retry (the sweeper's next look, 15 minutes later, was all that remained)."""
    created = source.send(FLIGHT, TAXI, basis_not_found_for_seconds=1.5)
    package = source.announce(created["export_id"])

    first = source_jobs.ingest_source_unit(package)
    assert first.kind == "retry" and first.retry_in is not None
    assert "basis PDF" in first.detail and _package(package)["vouchers"] == []

    time.sleep(1.6)
    assert _ingest_until_done(package).kind == "done"
    vouchers = _package(package)["vouchers"]
    assert len(vouchers) == 2 and all(v["note"] is None for v in vouchers)
    with session_scope() as session:
        pdfs = [session.get(Expense, v["expense_id"]).receipt_data for v in vouchers]
    assert all(pdf and pdf.startswith(b"%PDF-") for pdf in pdfs)


def test_a_forged_export_id_is_rejected_once_the_grace_has_passed(source):
    package = source.announce("forged-export-id")
    inside = source_jobs.ingest_source_unit(package)
    assert inside.kind == "retry" and _package(package)["status"] == "received"

    _age(package, get_settings().source_not_found_grace_seconds + 1)
    after = source_jobs.ingest_source_unit(package)
    assert after.kind == "rejected" and after.detail == "EXPORT_NOT_FOUND"
    state = _package(package)
    assert state["status"] == "rejected"
    assert "EXPORT_NOT_FOUND" in state["last_error"] and "still not found" in state["last_error"]


def test_the_poll_takes_back_a_rejected_package_that_findity_lists(source, jobs):
    """Findity's own list proves the export exists. Failed on the code before this change: the
    poll left a known row alone, so a rejected package was never looked at again."""
    created = source.send(FLIGHT, not_found_for_seconds=3)
    package = source.announce(created["export_id"])
    _age(package, get_settings().source_not_found_grace_seconds + 1)
    assert source_jobs.ingest_source_unit(package).kind == "rejected"

    jobs.clear()
    with session_scope() as session:
        connection = session.get(sources.SourceConnection, source.connection_id)
        session.expunge(connection)
    result = source_jobs.PollResult()
    source_jobs._poll_connection(connection, result)

    assert result.reannounced == [created["export_id"]]
    state = _package(package)
    assert state["status"] == "received" and "rejected" in state["last_error"]
    assert (utcnow() - state["received_at"]).total_seconds() < 5  # a fresh grace
    assert [(j.task_name, j.args) for j in jobs] == [(TASK_INGEST_SOURCE_UNIT, [package])]
    time.sleep(3.1)
    assert _ingest_until_done(package).kind == "done"
    assert len(_package(package)["vouchers"]) == 1


# --- hole 5: Findity converges on our final outcome -------------------------------------------


def test_a_failed_voucher_booked_after_a_retry_is_reported_success(source, jobs):
    """FAILED reported, the operator fixes and retries, the export is booked: Findity must end
    with SUCCESS and the voucher number. Failed on the code before this change: a reported
    voucher was never reported again, and Findity kept FAILED."""
    created = source.send(MYSTERY, FLIGHT)
    package = source.announce(created["export_id"])
    assert source_jobs.ingest_source_unit(package).kind == "done"
    bad, good = _package(package)["vouchers"]
    _fail(bad["export_id"], "account 9999 does not exist in Tripletex")
    _book(good["export_id"], 41)
    assert source_jobs.report_to_source(package).kind == "done"
    assert {v: r["status"] for v, r in source.held(created["export_id"]).items()} == {
        bad["id"]: "FAILED", good["id"]: "SUCCESS"}
    assert _package(package)["status"] == "completed_with_failures"

    with session_scope() as session:
        export_service.retry_export(session, source.org_id, bad["export_id"], actor="operator")
    assert _package(package)["status"] == "processing"  # reopened while the export runs
    _book(bad["export_id"], 42)
    assert source_jobs.report_to_source(package).kind == "done"

    held = source.held(created["export_id"])
    assert held[bad["id"]]["status"] == "SUCCESS" and held[bad["id"]]["voucherNumber"] == 42
    state = _package(package)
    assert state["status"] == "completed"
    assert [(v["reported_status"], v["reported_number"]) for v in state["vouchers"]] == [
        ("SUCCESS", "42"), ("SUCCESS", "41")]
    # Nothing left to say: a further report sends nothing.
    calls = len(source.updates(created["export_id"]))
    assert source_jobs.report_to_source(package).detail == "0 reported"
    assert len(source.updates(created["export_id"])) == calls


# --- hole 8: a repeated report is harmless and bounded ------------------------------------------


def _forget_recording(source_export_id: str, voucher_id: str) -> None:
    """The database as a worker killed between Findity's 200 and our commit leaves it: the
    update marked in flight, nothing recorded as reported."""
    with session_scope() as session:
        voucher = session.scalar(select(SourceUnitItem).where(
            SourceUnitItem.source_unit_id == source_export_id,
            SourceUnitItem.external_voucher_id == voucher_id))
        voucher.report_in_flight = voucher.report_payload
        voucher.reported_status = voucher.reported_number = voucher.reported_at = None
        session.get(SourceUnit, source_export_id).status = "processing"


@pytest.mark.parametrize("answer", ["409", "200", "400"])
def test_a_repeated_success_is_harmless_whatever_findity_answers(source, findity_sandbox, answer):
    """Findity already holds voucher A's SUCCESS (our record of it was lost); B is new. What
    Findity answers to A's repeat is undocumented. Failed on the code before this change with
    "400": A and B went out in one request, Findity refused it for A's sake, and B was never
    reported (every retry got the same refusal)."""
    findity_sandbox.update_organization(source.findity_org, repeated_success_answer=answer)
    created = source.send(FLIGHT, TAXI)
    package = source.announce(created["export_id"])
    assert source_jobs.ingest_source_unit(package).kind == "done"
    a, b = _package(package)["vouchers"]
    _book(a["export_id"], 7)
    assert source_jobs.report_to_source(package).kind == "done"
    _forget_recording(package, a["id"])
    _book(b["export_id"], 8)

    outcome = source_jobs.report_to_source(package)

    calls = source.updates(created["export_id"])
    sent = [[u["id"] for u in c["body"]["voucherUpdates"]] for c in calls]
    assert sent[0] == [a["id"]]
    # Each alone: whatever Findity answers to A cannot hold B back.
    assert sorted(sent[1:]) == sorted([[a["id"]], [b["id"]]])
    held = source.held(created["export_id"])
    assert (held[a["id"]]["status"], held[a["id"]]["voucherNumber"]) == ("SUCCESS", 7)
    assert (held[b["id"]]["status"], held[b["id"]]["voucherNumber"]) == ("SUCCESS", 8)
    state = _package(package)
    told = {v["id"]: (v["reported_status"], v["reported_number"]) for v in state["vouchers"]}
    assert told[b["id"]] == ("SUCCESS", "8")
    if answer in ("409", "200"):  # 200: taken again; 409: the ASSUMED "already processed"
        assert outcome.kind == "done" and state["status"] == "completed"
        assert told[a["id"]] == ("SUCCESS", "7")
    else:  # refused: not recorded as told, visible, and left for the sweeper to send again
        assert outcome.kind == "skipped" and state["status"] == "processing"
        assert told[a["id"]] == (None, None)
        [refused] = [v for v in state["vouchers"] if v["id"] == a["id"]]
        assert "Findity may hold it already" in refused["report_error"]
        assert "has already been processed" in state["last_error"]


def test_already_processed_counts_only_for_a_success_we_may_have_sent(source):
    """The ASSUMED 409 is read in one place, and only for a repeat of our own SUCCESS: a 409 to
    a first report (someone else booked the voucher with another number) is a refusal."""
    created = source.send(FLIGHT)
    package = source.announce(created["export_id"])
    source_jobs.ingest_source_unit(package)
    [voucher] = _package(package)["vouchers"]
    with source.findity.client_for(source.forg) as findity:  # another system reports first
        findity.update_status(created["export_id"], [VoucherSuccessUpdate(
            id=voucher["id"], voucher_number=999)])
    _book(voucher["export_id"], 5)

    assert source_jobs.report_to_source(package).kind == "skipped"
    [state] = _package(package)["vouchers"]
    assert state["reported_status"] is None
    assert "VOUCHER_ALREADY_PROCESSED" in state["report_error"]
    assert "may hold it already" not in state["report_error"]

    update = read_report({"id": "v", "status": "SUCCESS", "voucherNumber": 5})
    conflict = PermanentError("x", system="findity", code="VOUCHER_ALREADY_PROCESSED",
                              status_code=409)
    other = PermanentError("x", system="findity", code="VALIDATION_ERROR", status_code=400)
    assert source_already_holds(update, conflict)
    assert not source_already_holds(update, other)


def test_a_killed_reporters_lock_frees_itself_within_seconds(source, findity_sandbox):
    """A worker process SIGKILLed while Findity holds the answer to its report. Failed on the
    code before this change: its lock lived 120 s, holding the package's report back."""
    created = source.send(FLIGHT)
    package = source.announce(created["export_id"])
    source_jobs.ingest_source_unit(package)
    [voucher] = _package(package)["vouchers"]
    _book(voucher["export_id"], 3)
    findity_sandbox.set_faults(source.findity_org, latency_ms=20_000)
    reporter = subprocess.Popen(
        [sys.executable, "-c", "import sys; from worker.source_jobs import report_to_source; "
                               "report_to_source(sys.argv[1])", package],
        cwd=PROJECT_ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    key = f"aic:report-lock:{package}"
    store = redis_lib.Redis.from_url(get_settings().redis_url)
    try:
        deadline = time.monotonic() + 20
        while not store.exists(key):
            assert reporter.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # the report is on the wire, Findity holds its answer
        reporter.send_signal(signal.SIGKILL)
        reporter.wait(timeout=10)
        killed_at = time.monotonic()
        lock_seconds = get_settings().report_lock_seconds
        assert 0 < store.ttl(key) <= lock_seconds
        findity_sandbox.clear_faults(source.findity_org)
        while source_jobs.report_to_source(package).kind == "retry":
            assert time.monotonic() - killed_at < lock_seconds + 2, "the lock outlived the worker"
            time.sleep(0.2)
    finally:
        if reporter.poll() is None:
            reporter.kill()
        findity_sandbox.clear_faults(source.findity_org)
        store.close()
    assert _package(package)["status"] == "completed"
    held = source.held(created["export_id"])[voucher["id"]]
    assert (held["status"], held["voucherNumber"]) == ("SUCCESS", 3)


# --- a voucher Findity sends again under the same id ------------------------------------------


def test_a_corrected_voucher_replaces_a_version_that_was_never_booked(source):
    """Failed on the code before this change: the expense kept its old rows, so the new export
    would book (or fail on) what Findity had corrected."""
    first = source.send({"owner_name": "Kari", "expenses": [MYSTERY]})
    p1 = source.announce(first["export_id"])
    source_jobs.ingest_source_unit(p1)
    [old] = _package(p1)["vouchers"]
    _fail(old["export_id"], "account 9999 does not exist in Tripletex")

    again = source.send({"owner_name": "Kari", "expenses": [FIXED]},
                        voucher_ids=first["voucher_ids"])
    p2 = source.announce(again["export_id"])
    assert source_jobs.ingest_source_unit(p2).kind == "done"

    [new] = _package(p2)["vouchers"]
    assert new["expense_id"] == old["expense_id"] and new["export_id"] != old["export_id"]
    assert _rows(new["expense_id"]) == ["7140", "2930"]
    assert _export(new["export_id"]).status == "processing"
    assert _export(old["export_id"]).status == "failed"


def test_a_corrected_voucher_cancels_an_export_that_has_not_started_posting(source, jobs):
    """Failed on the code before this change: the new package was linked to the running export
    of the old rows."""
    first = source.send({"owner_name": "Kari", "expenses": [MYSTERY]})
    p1 = source.announce(first["export_id"])
    source_jobs.ingest_source_unit(p1)
    [old] = _package(p1)["vouchers"]

    again = source.send({"owner_name": "Kari", "expenses": [FIXED]},
                        voucher_ids=first["voucher_ids"])
    p2 = source.announce(again["export_id"])
    assert source_jobs.ingest_source_unit(p2).kind == "done"

    cancelled = _export(old["export_id"])
    assert cancelled.status == "cancelled" and "superseded" in cancelled.error_message
    [new] = _package(p2)["vouchers"]
    assert new["export_id"] != old["export_id"]
    assert _rows(new["expense_id"]) == ["7140", "2930"]
    # The old package is told why its voucher will not be booked there.
    assert source_jobs.report_to_source(p1).kind == "done"
    [update] = source.held(first["export_id"]).values()
    assert update["status"] == "FAILED" and "superseded" in update["errorText"]


def test_a_corrected_voucher_already_booked_is_flagged_not_booked_again(source):
    """While the old version is being posted the new package waits; once it is booked the
    voucher is linked to that booking and the difference is surfaced. Failed on the code before
    this change: the new package was linked at once, silently."""
    first = source.send({"owner_name": "Kari", "expenses": [MYSTERY]})
    p1 = source.announce(first["export_id"])
    source_jobs.ingest_source_unit(p1)
    [old] = _package(p1)["vouchers"]
    with session_scope() as session:  # the worker has started posting it
        session.get(AccountingExport, old["export_id"]).posting_started_at = utcnow()

    again = source.send({"owner_name": "Kari", "expenses": [FIXED]},
                        voucher_ids=first["voucher_ids"])
    p2 = source.announce(again["export_id"])
    waiting = source_jobs.ingest_source_unit(p2)
    assert waiting.kind == "retry" and "being posted" in waiting.detail
    assert _package(p2)["vouchers"] == [] and _package(p2)["status"] == "received"

    _book(old["export_id"], 12)
    assert source_jobs.ingest_source_unit(p2).kind == "done"
    [linked] = _package(p2)["vouchers"]
    assert linked["export_id"] == old["export_id"]
    assert "already booked as voucher 12" in linked["note"]
    assert _rows(linked["expense_id"]) == ["9999", "2930"]  # what the ledger holds
    assert "already booked" in _package(p2)["last_error"]
    with session_scope() as session:
        kinds = [e.kind for e in session.scalars(select(ExportEvent).where(
            ExportEvent.export_id == old["export_id"]))]
    assert "source_note" in kinds
    assert source_jobs.report_to_source(p2).kind == "done"
    [update] = source.held(again["export_id"]).values()
    assert (update["status"], update["voucherNumber"]) == ("SUCCESS", 12)
    assert "already booked" in update["informationText"]


# --- a bad basis PDF affects only its voucher ---------------------------------------------------


@pytest.fixture
def small_receipt_cap(monkeypatch):
    monkeypatch.setenv("AIC_RECEIPT_MAX_BYTES", str(1024 * 1024))
    reset_settings_cache()
    yield 1024 * 1024
    monkeypatch.delenv("AIC_RECEIPT_MAX_BYTES")
    reset_settings_cache()


def test_a_bad_basis_pdf_costs_only_its_voucher_the_attachment(source, findity_sandbox,
                                                              small_receipt_cap):
    """Not a PDF, missing (past the grace), larger than the cap: those vouchers are booked
    without it, with the reason kept. Failed on the code before this change: one bad PDF left
    the whole package un-ingested, picked up and refused again every 15 minutes."""
    findity_sandbox.update_organization(source.findity_org, verification_lists_type="EXPENSE")
    created = source.send({"owner_name": "Kari", "expenses": [FLIGHT, TAXI, FIXED, MYSTERY]},
                          bad_basis={"1": "not_pdf", "2": "missing", "3": "oversized"},
                          oversized_basis_bytes=3 * 1024 * 1024)
    package = source.announce(created["export_id"])
    waiting = source_jobs.ingest_source_unit(package)
    assert waiting.kind == "retry" and "not found yet" in waiting.detail  # 404: may still come

    _age(package, get_settings().source_not_found_grace_seconds + 1)
    assert source_jobs.ingest_source_unit(package).kind == "done"
    vouchers = _package(package)["vouchers"]
    assert all(v["export_id"] for v in vouchers)
    with session_scope() as session:
        pdfs = [session.get(Expense, v["expense_id"]).receipt_data for v in vouchers]
    assert pdfs[0].startswith(b"%PDF-") and pdfs[1:] == [None, None, None]
    notes = [v["note"] for v in vouchers]
    assert notes[0] is None
    assert "is not a PDF" in notes[1]
    assert "VOUCHER_NOT_FOUND" in notes[2]
    assert "larger than the 1048576 bytes" in notes[3]


# --- reports in chunks (a source that takes at most N per call, e.g. TRAEDE's 10) ------------

class _HeldLock:
    held = True


class _ChunkedSource:
    """Records each report request; refuses the batches listed in ``refuse``."""

    def __init__(self, refuse: tuple[int, ...] = ()) -> None:
        self.requests: list[list[str]] = []
        self.refuse = refuse

    def send_reports(self, external_id, reports):
        self.requests.append([r.external_id for r in reports])
        if len(self.requests) in self.refuse:
            raise PermanentError("refused", system="test", code="refused", status_code=400)

    def already_holds(self, report, error):
        return False


def _owed(n: int) -> list:
    return [source_jobs._Owed(i, read_report({"id": f"v{i}", "status": "SUCCESS",
                                              "voucherNumber": i}), maybe_held=False)
            for i in range(n)]


def test_reports_go_out_in_chunks_and_a_refused_chunk_goes_alone():
    source = _ChunkedSource()
    accepted, refused, failure = source_jobs._send(source, "findity", "x", _owed(5),
                                                   _HeldLock(), chunk_size=2)
    assert source.requests == [["v0", "v1"], ["v2", "v3"], ["v4"]]
    assert len(accepted) == 5 and not refused and failure is None

    source = _ChunkedSource(refuse=(1,))
    accepted, refused, failure = source_jobs._send(source, "findity", "x", _owed(3),
                                                   _HeldLock(), chunk_size=2)
    assert source.requests == [["v0", "v1"], ["v0"], ["v1"], ["v2"]]
    assert len(accepted) == 3 and failure is None
    # Without a chunk size every fresh report goes in one request, as before.
    source = _ChunkedSource()
    source_jobs._send(source, "findity", "x", _owed(3), _HeldLock())
    assert source.requests == [["v0", "v1", "v2"]]
