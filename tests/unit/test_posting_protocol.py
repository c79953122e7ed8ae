"""The holes of issue 7 in the posting path, each driven through ``run_export`` with a fake target.

Every test here failed on the code before the posting protocol (commit 0f7baf2, checked by
running this file against that commit's worker/ and shared/domain/): the docstring of each says
how. They pass on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from shared.config import Settings
from shared.db.models import AccountingExport, ExportEvent, TargetConnection
from shared.db.session import session_scope
from shared.db.types import utcnow
from shared.domain import exports, sweeper
from tests.unit.fake_target import FakeTarget
from worker import export_job


@pytest.fixture
def target(monkeypatch) -> FakeTarget:
    fake = FakeTarget(visibility_delay=0.0, search_delay_seconds=0.3)
    monkeypatch.setattr(export_job, "client_for", lambda connection: fake)
    # A posting request may take 0.2 s per phase here: its deadline is 1.8 s after the mark.
    monkeypatch.setattr("worker.posting.send_timeout", lambda: 0.2)
    return fake


@pytest.fixture
def new_export(org, make_expense):
    def _new() -> str:
        with session_scope() as session:
            return exports.create_export(session, org.id, make_expense(), "tripletex",
                                         actor="test").id
    return _new


def drive(export_id: str, *, runs: int = 40) -> list[export_job.Outcome]:
    """Deliver the export's task again and again, as the broker would, until it ends."""
    outcomes = []
    for _ in range(runs):
        outcome = export_job.run_export(export_id)
        outcomes.append(outcome)
        if outcome.kind in ("success", "failed"):
            return outcomes
        time.sleep(min(outcome.retry_in or 0.05, 3.5))
    return outcomes


def row(export_id: str) -> AccountingExport:
    with session_scope() as session:
        return session.get(AccountingExport, export_id)


def event_kinds(export_id: str) -> list[str]:
    with session_scope() as session:
        return list(session.scalars(select(ExportEvent.kind).where(
            ExportEvent.export_id == export_id).order_by(ExportEvent.id)))


@pytest.mark.parametrize("answer", ["store_then_502", "store_then_garbled"])
def test_hole1_ambiguous_answer_and_a_lagging_search_never_post_twice(target, new_export, answer):
    """Hole 1a. The target stores the voucher, then a gateway answers 502 (or a 200 we cannot
    read); the voucher is findable only 0.2 s later. Old code: one lookup right after the answer
    found nothing, cleared "posting started", and the next attempt posted a second voucher."""
    target.visibility_delay = 0.2
    target.post_script = [answer]
    export_id = new_export()
    outcomes = drive(export_id)
    assert outcomes[-1].kind == "success"
    assert len(target.vouchers_for(export_id)) == 1
    assert row(export_id).external_id == target.vouchers_for(export_id)[0].posted.id
    assert "found_existing_voucher" in event_kinds(export_id)


def test_hole1_an_export_in_doubt_cannot_be_cancelled(target, new_export, org):
    """Hole 1b. After a 502 to a POST the target stored, DELETE must answer 409. Old code
    cleared the mark after one empty lookup, and the cancel succeeded: a cancelled export with a
    voucher in the books."""
    target.visibility_delay = 5.0
    target.post_script = ["store_then_502"]
    export_id = new_export()
    assert export_job.run_export(export_id).kind == "retry"
    with session_scope() as session, pytest.raises(exports.NotCancellable):
        exports.cancel_export(session, org.id, export_id, actor="test")
    assert row(export_id).status == "processing"


def test_a_refused_post_clears_the_mark_and_can_be_cancelled(target, new_export, org):
    """The other side of hole 1: a 4xx proves nothing was stored, so the export waiting for its
    retry may be cancelled (this passed before too, through an immediate lookup)."""
    target.post_script = ["429"]
    export_id = new_export()
    assert export_job.run_export(export_id).kind == "retry"
    assert row(export_id).posting_started_at is None
    with session_scope() as session:
        exports.cancel_export(session, org.id, export_id, actor="test")
    assert row(export_id).status == "cancelled" and target.vouchers_for(export_id) == []


def test_hole2_lease_running_out_mid_post_never_books_a_second_voucher(target, new_export):
    """Hole 2. While the first attempt's POST is on its way its lease runs out (a frozen worker,
    a slow network) and a duplicate delivery arrives. Old code: the second attempt found no
    voucher yet and posted another; the first attempt's voucher was never recorded."""
    export_id = new_export()
    second: list[export_job.Outcome] = []

    def lease_runs_out_and_a_duplicate_arrives():
        with session_scope() as session:
            session.execute(update(AccountingExport).where(AccountingExport.id == export_id)
                            .values(lease_expires_at=utcnow() - timedelta(seconds=1),
                                    next_attempt_at=None))
        second.append(export_job.run_export(export_id))

    target.during_post = lease_runs_out_and_a_duplicate_arrives
    first = export_job.run_export(export_id)
    assert second and second[0].kind == "retry", second  # it waited instead of posting
    assert first.kind in ("success", "skipped")
    outcomes = drive(export_id)
    assert outcomes[-1].kind == "success"
    assert len(target.vouchers_for(export_id)) == 1
    assert row(export_id).external_id == target.vouchers_for(export_id)[0].posted.id


def test_a_gate_committed_after_its_slack_sends_nothing(target, new_export, monkeypatch):
    """Found by the database-outage scenario on SQLite: the gate's "posting started" waited
    ~42 s for the database's write lock, committed a deadline already past, and the request left
    21 s after it; meanwhile the next attempt trusted a lookup after that deadline, found
    nothing and posted: two vouchers. A gate whose commit took longer than the deadline keeps
    for it must send nothing and leave the export in doubt until its lookup can be trusted.
    (The gate commits its own mark when the claim could not prepare the voucher: a cold client.)"""
    export_id = new_export()
    monkeypatch.setattr(export_job, "_prepare_from_memory", lambda *args: None)
    real_event = export_job._event

    def slow_gate_commit(work, kind, **kwargs):
        written = real_event(work, kind, **kwargs)
        if kind == "posting_started":
            time.sleep(1.3)  # longer than the 1 s the deadline keeps (posting.GATE_SLACK)
        return written

    monkeypatch.setattr(export_job, "_event", slow_gate_commit)
    first = export_job.run_export(export_id)
    assert first.kind == "retry", first
    assert target.posts_sent == 0 and target.vouchers_for(export_id) == []
    assert "retry_scheduled" in event_kinds(export_id)
    # Refunded: the attempt sent nothing. It comes back when a lookup can be trusted.
    assert row(export_id).attempts == 0 and row(export_id).next_attempt_at is not None

    monkeypatch.setattr(export_job, "_event", real_event)
    outcomes = drive(export_id)
    assert outcomes[-1].kind == "success"
    assert len(target.vouchers_for(export_id)) == 1


def test_a_claim_that_prepared_the_voucher_marks_posting_started_with_it(target, new_export):
    """A warm client prepares the voucher inside the claim's transaction, and the claim records
    "posting started" and its deadline in the same compare-and-set: the gate only uses that mark.
    Both steps keep their own event row, in order, and the row says what the gate would have."""
    sent_marks = []
    real_send = target.send_voucher

    def send(prepared, gate=None):
        claimed = row(export_id)
        sent_marks.append((claimed.posting_started_at, claimed.post_deadline_at))
        return real_send(prepared, gate)

    target.send_voucher = send
    export_id = new_export()
    assert export_job.run_export(export_id).kind == "success"
    assert event_kinds(export_id)[-4:] == ["started", "posting_started", "posted_to_target",
                                           "status_changed"]
    (started_at, deadline), = sent_marks
    assert started_at is not None and deadline - started_at == export_job.posting.send_bound()
    with session_scope() as session:
        started, marked = session.scalars(select(ExportEvent).where(
            ExportEvent.export_id == export_id,
            ExportEvent.kind.in_(["started", "posting_started"])).order_by(ExportEvent.id)).all()
    assert started.created_at == marked.created_at == started_at
    assert marked.data == {"deadline": deadline.isoformat()}
    assert len(target.vouchers_for(export_id)) == 1


def test_a_client_that_would_ask_the_target_prepares_after_the_claim(target, new_export,
                                                                     monkeypatch):
    """Inside the claim's transaction no request may leave (``requests_refused``): a client that
    needs one (a cold cache, a session to renew) is not asked there; the voucher is prepared after
    the commit and the gate commits "posting started" itself, as before."""
    from shared.integrations.http import _REQUESTS_REFUSED, RequestRefused

    prepared_while_claiming = []
    real_prepare = target.prepare_voucher

    def prepare(draft):
        prepared_while_claiming.append(_REQUESTS_REFUSED.get())
        if _REQUESTS_REFUSED.get():
            raise RequestRefused("a lookup")
        return real_prepare(draft)

    target.prepare_voucher = prepare
    commits = []
    real_event = export_job._event
    monkeypatch.setattr(export_job, "_event",
                        lambda work, kind, **kw: commits.append(kind) or real_event(work, kind, **kw))
    export_id = new_export()
    assert export_job.run_export(export_id).kind == "success"
    assert prepared_while_claiming == [True, False]
    assert commits == ["posting_started"]  # the gate's own transaction
    assert event_kinds(export_id)[-4:] == ["started", "posting_started", "posted_to_target",
                                           "status_changed"]
    assert len(target.vouchers_for(export_id)) == 1


def test_a_claim_mark_gone_stale_is_recorded_anew_before_the_request(target, new_export):
    """More than the gate's slack between the claim's mark and the request (here a 1.2 s wait
    for a rate-limit permit): the request must not leave under that deadline. Nothing was sent
    under it, so the gate records "posting started" anew with a deadline from now and sends."""
    marks = []
    real_send = target.send_voucher

    def slow_permit(prepared, gate=None):
        time.sleep(1.2)  # longer than posting.GATE_SLACK
        result = real_send(prepared, gate)
        marks.append(row(export_id).post_deadline_at)
        return result

    target.send_voucher = slow_permit
    export_id = new_export()
    assert export_job.run_export(export_id).kind == "success"
    kinds = event_kinds(export_id)
    assert kinds[-5:] == ["started", "posting_started", "posting_started", "posted_to_target",
                          "status_changed"]
    with session_scope() as session:
        first, second = session.scalars(select(ExportEvent.data).where(
            ExportEvent.export_id == export_id,
            ExportEvent.kind == "posting_started").order_by(ExportEvent.id)).all()
    assert second["deadline"] > first["deadline"]
    assert marks[0].isoformat() == second["deadline"]
    assert len(target.vouchers_for(export_id)) == 1


def test_hole3_auth_failure_on_the_lookup_never_fails_a_booked_export(target, new_export):
    """Hole 3. The POST is stored but unanswered (timeout); every later lookup is refused (the
    token was rotated) until attempts run out. Old code failed the export on the first refused
    lookup although the voucher was booked, and cleared active_key (a re-export would book a
    second one). Now it waits in processing, says why, and finishes once the lookup works."""
    target.post_script = ["store_then_timeout"]
    target.lookup_script = ["auth"] * 20
    export_id = new_export()
    outcomes = drive(export_id, runs=6)
    assert all(o.kind == "retry" for o in outcomes), outcomes
    waiting = row(export_id)
    assert waiting.status == "processing" and waiting.posting_started_at is not None
    assert "cannot tell whether the target booked" in waiting.error_message
    target.lookup_script = []
    with session_scope() as session:  # the operator fixed the token; run it now
        session.execute(update(AccountingExport).where(AccountingExport.id == export_id)
                        .values(next_attempt_at=utcnow()))
    assert drive(export_id)[-1].kind == "success"
    assert len(target.vouchers_for(export_id)) == 1


def test_hole3_giving_up_fails_only_after_a_trusted_empty_lookup(target, new_export):
    """Attempts run out on 502s the target did not store: failing is right, but only after a
    lookup made once the request's deadline and the search delay have passed."""
    target.post_script = ["502"] * 10
    export_id = new_export()
    outcomes = drive(export_id)
    assert outcomes[-1].kind == "failed"
    assert target.vouchers_for(export_id) == []
    final = row(export_id)
    assert final.posting_started_at is None and final.external_id is None


def test_hole6_being_rate_limited_never_uses_up_the_attempts(target, new_export):
    """Hole 6. Ten 429s in a row (max_attempts is 4 in the tests). Old code: "gave up after 4
    attempts". A 429 is being told to wait, not a failure."""
    target.post_script = ["429"] * 10
    export_id = new_export()
    outcomes = drive(export_id, runs=20)
    assert outcomes[-1].kind == "success", outcomes[-1]
    assert len(target.vouchers_for(export_id)) == 1
    assert row(export_id).attempts == 1


def test_hole7_a_limiter_refusal_sends_nothing_and_stays_cancellable(target, new_export, org):
    """Hole 7. Our own limiter refuses the POST: nothing left the process. Old code had marked
    "posting started" before asking the limiter: DELETE answered 409 and every retry spent a
    lookup first."""
    target.post_script = ["limiter"]
    export_id = new_export()
    assert export_job.run_export(export_id).kind == "retry"
    waiting = row(export_id)
    assert waiting.posting_started_at is None and waiting.attempts == 0
    assert target.posts_sent == 0
    # The claim had prepared the voucher and marked "posting started"; the refusal withdrew it.
    assert event_kinds(export_id)[-4:] == ["started", "posting_started", "posting_withdrawn",
                                           "retry_scheduled"]
    with session_scope() as session:
        exports.cancel_export(session, org.id, export_id, actor="test")


def test_a_receipt_upload_whose_answer_was_lost_is_not_uploaded_twice(target, org, make_expense):
    """Also found: the receipt upload stored, its answer lost; the retry uploaded it again and
    the target appended it as extra pages. Old code: two attachments."""
    expense_id = make_expense()
    with session_scope() as session:
        from shared.db.models import Expense

        session.execute(update(Expense).where(Expense.id == expense_id).values(
            receipt_filename="r.pdf", receipt_content_type="application/pdf",
            receipt_data=b"%PDF-1.4 receipt"))
        export_id = exports.create_export(session, org.id, expense_id, "tripletex",
                                          actor="test").id
    target.attach_script = ["store_then_timeout"]
    assert drive(export_id)[-1].kind == "success"
    [voucher] = target.vouchers_for(export_id)
    assert voucher.attachments == ["r.pdf"]


def test_a_callback_cannot_mark_an_export_in_doubt_success(target, new_export, org):
    """A PUT callback `success` while our request may have booked the export would hide our
    voucher behind the caller's reference. Old code accepted it."""
    target.visibility_delay = 5.0
    target.post_script = ["store_then_502"]
    export_id = new_export()
    export_job.run_export(export_id)
    with session_scope() as session, pytest.raises(exports.IllegalStatusChange,
                                                   match="being posted"):
        exports.apply_status_callback(session, org.id, export_id, status="success",
                                      external_reference="ELSEWHERE-1", error_message=None,
                                      actor="test")


def test_the_sweeper_requeues_a_dead_attempts_export_when_its_lease_runs_out(new_export):
    """Also found: with the threads pool a killed worker's message comes back only after the
    visibility timeout (an hour). Old code's sweeper waited for stuck_after_seconds (15 minutes,
    an hour in the tests) past the due time; now an expired lease is enough."""
    export_id = new_export()
    with session_scope() as session:
        session.execute(update(AccountingExport).where(AccountingExport.id == export_id).values(
            lease_owner="dead-worker", lease_expires_at=utcnow() - timedelta(seconds=1),
            next_attempt_at=utcnow() - timedelta(seconds=5)))
    # The sweeper sweeps every organization: judged by this export's own log, not by the count
    # (exports other tests left with a lease that ran out are swept too).
    assert sweeper.requeue_stuck_exports() >= 1
    assert row(export_id).lease_owner is None
    assert event_kinds(export_id).count("requeued") == 1
    sweeper.requeue_stuck_exports()
    assert event_kinds(export_id).count("requeued") == 1  # once per stuck period


def test_a_retry_longer_than_the_visibility_timeout_is_refused_at_start():
    """Also found: documented, never validated."""
    with pytest.raises(ValueError, match="AIC_RETRY_MAX_SECONDS"):
        Settings(retry_max_seconds=4000, broker_visibility_timeout=3600)


def test_the_owner_finishes_when_a_stale_attempt_recorded_the_same_voucher_first(target, new_export):
    """Found by the database-outage scenario: attempt A's claim committed late (the database was
    slow), its lease ran out, attempt B claimed. Both found the voucher of the export in doubt; A
    recorded it first (a voucher is recorded even by an attempt that lost the export) and
    stopped, and B, the owner, stopped too because the voucher was "already recorded": nobody
    finished the export until the sweeper. B must finish."""
    target.post_script = ["store_then_timeout"]
    export_id = new_export()
    assert export_job.run_export(export_id).kind == "retry"  # in doubt, voucher stored
    with session_scope() as session:
        session.execute(update(AccountingExport).where(AccountingExport.id == export_id)
                        .values(next_attempt_at=None))
    stale = export_job._claim(export_id, "A")
    with session_scope() as session:
        session.execute(update(AccountingExport).where(AccountingExport.id == export_id)
                        .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    owner = export_job._claim(export_id, "B")
    with pytest.raises(export_job._Lost):
        export_job._post_and_finish(stale)
    assert export_job._post_and_finish(owner).kind == "success"
    assert row(export_id).status == "success"
    assert len(target.vouchers_for(export_id)) == 1


def test_an_unmapped_account_fails_the_export_at_once_and_sends_nothing(target, new_export, org):
    """MappingError is a domain error now, not an integration error: the export job must still
    fail the export on the first attempt with what to fix, before anything is sent."""
    with session_scope() as session:
        connection = session.query(TargetConnection).filter_by(organization_id=org.id).one()
        connection.account_mapping = {"strict": True, "accounts": {"2930": "2930"}}
    export_id = new_export()
    assert export_job.run_export(export_id).kind == "failed"
    failed = row(export_id)
    assert failed.error_code == "mapping:unmapped" and failed.attempts == 1
    assert "account 7140 is not mapped" in failed.error_message
    assert target.posts_sent == 0


def test_a_successful_export_reads_its_row_few_times_and_logs_every_step(target, new_export):
    """The happy path's database work (issue 12): what it writes is the protocol's (one event row
    per step, every write a compare-and-set on the lease); what it reads again is overhead. A
    count of statements and transactions, not a timing: it fails when a change adds round trips
    to every export."""
    from sqlalchemy import event as sa_event

    from shared.db.session import get_engine

    export_id = new_export()
    statements: list[str] = []
    commits: list[int] = []

    def record(_conn, _cursor, statement, _params, _context, _many) -> None:
        statements.append(" ".join(statement.split()).upper())

    def commit(_conn) -> None:
        commits.append(len(statements))

    engine = get_engine()
    sa_event.listen(engine, "before_cursor_execute", record)
    sa_event.listen(engine, "commit", commit)
    try:
        assert export_job.run_export(export_id).kind == "success"
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)
        sa_event.remove(engine, "commit", commit)
    # The database clock (shared/db/clock.py: a statement on PostgreSQL, none on SQLite).
    statements = [s for s in statements if not (s.startswith("SELECT") and " FROM " not in s)]
    export_reads = [s for s in statements
                    if s.startswith("SELECT") and "FROM ACCOUNTING_EXPORTS" in s]
    event_writes = [s for s in statements if s.startswith("INSERT INTO EXPORT_EVENTS")]
    export_writes = [s for s in statements if s.startswith("UPDATE ACCOUNTING_EXPORTS")]
    # The claim's compare-and-set is on the lease's expiry, every later step's on its owner.
    guarded_writes = [s for s in export_writes if "LEASE_OWNER" in s.split(" WHERE ", 1)[1]]
    # One event row per step; "started" and "posting started" are one INSERT of two rows, as
    # are the voucher's and the success's.
    assert event_kinds(export_id)[-4:] == ["started", "posting_started", "posted_to_target",
                                           "status_changed"]
    assert len(event_writes) == 2, statements
    # The claim with "posting started" (the voucher was prepared in its transaction), and the
    # voucher recorded with the success in one UPDATE.
    assert len(export_writes) == 2, statements
    assert len(guarded_writes) == 1, statements
    # One read before the claim: the export joined with its connection (the connection's rate
    # limiter admits the export before it is claimed: target 4, the tenants' fairness) and its
    # expense (what the draft needs); the same read says why a delivery is skipped. The claim
    # returns the row it claimed (UPDATE ... RETURNING); the steps after it never read the
    # export again. Was 7 reads of the export, 18 statements in 5 transactions before issue 12;
    # then 4 reads, 14 statements in 5; then 10 statements in 3; then 7 in 3.
    assert len(export_reads) == 1, "\n".join(export_reads)
    assert "JOIN TARGET_CONNECTIONS" in export_reads[0] and "JOIN EXPENSES" in export_reads[0]
    assert not [s for s in statements if s.startswith("SELECT") and "FROM EXPENSES" in s]
    assert len(statements) <= 5, "\n".join(statements)
    # claim (+ admission read, "started", "posting started") | voucher recorded + success
    assert len(commits) == 2, commits
