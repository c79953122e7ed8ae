"""Model-based test of the posting protocol: random programs of everything that can happen to one
export, and after each the promise checked against what the target holds.

Hypothesis draws a program: deliveries of the export's task (duplicates included), time passing,
the target's next answers (stored-then-502, stored-then-timeout, a 200 we cannot read, 5xx,
timeouts, 422, 429, our limiter refusing, connections that fail), lookups refused or failing,
a search that lags behind the target's writes, workers killed before or after the target stored,
while looking up or while uploading the receipt, leases running out in the middle of a POST
while a duplicate arrives, DELETE and PUT callbacks at every step, and the sweeper. Then the
world heals (every answer ok, time passes, the task is delivered and the sweeper runs, as in
production), and we check:

1. the target holds at most one voucher for the export (never two),
2. the export ended, and its final state agrees with the target: success owns the one voucher
   the target holds (or, for a success set by a PUT callback, we booked none); failed and
   cancelled own none,
3. no receipt was attached twice.

Time is virtual (the protocol reads it through ``shared.db.clock``), so thousands of steps run in
seconds. ``AIC_MODEL_EXAMPLES`` sets how many programs (200 in ``make test``, more in
``make test-reliability``), ``AIC_MODEL_SEED`` the seed (fixed, so a run is repeatable); the
figures are printed at the end of the test.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sqlalchemy import update

from shared.db.models import AccountingExport, Expense
from shared.db.session import session_scope
from shared.domain import exports, sweeper
from tests.unit.fake_target import FakeTarget, WorkerKilled
from worker import export_job

EXAMPLES = int(os.environ.get("AIC_MODEL_EXAMPLES", "200"))
SEED = int(os.environ.get("AIC_MODEL_SEED", "20261129"))

POST_ANSWERS = ["ok", "store_then_502", "store_then_timeout", "store_then_garbled", "502",
                "timeout", "422", "429", "limiter", "connect_error"]
DURING_POST = ["duplicate", "lease_expires_and_duplicate", "cancel", "callback_success",
               "callback_failed", "sweep"]

step = st.one_of(
    st.tuples(st.just("deliver")),
    st.tuples(st.just("deliver")),
    st.tuples(st.just("advance"), st.sampled_from([0.2, 1.0, 3.0, 10.0, 40.0])),
    st.tuples(st.just("post"), st.sampled_from(POST_ANSWERS)),
    st.tuples(st.just("lookup"), st.sampled_from(["auth", "502"])),
    st.tuples(st.just("kill"), st.sampled_from(["before_store", "after_store", "lookup", "attach"])),
    st.tuples(st.just("during_post"), st.sampled_from(DURING_POST)),
    st.tuples(st.just("cancel")),
    st.tuples(st.just("callback"), st.sampled_from(["success", "failed", "processing"])),
    st.tuples(st.just("sweep")),
)
program = st.fixed_dictionaries({
    "search_delay": st.sampled_from([0.0, 1.0, 5.0]),
    # The protocol's one assumption about the target: a stored voucher is findable within its
    # declared search delay. The fake's search lags by up to exactly that.
    "visibility_share": st.sampled_from([0.0, 0.5, 1.0]),
    "receipt": st.booleans(),
    "steps": st.lists(step, min_size=1, max_size=30),
})


class VirtualTime:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)
        self.origin = self.now

    def utcnow(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return (self.now - self.origin).total_seconds()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_posting_protocol_model(org, make_expense, monkeypatch, capsys):
    clock = VirtualTime()
    monkeypatch.setattr("shared.db.clock.utcnow", clock.utcnow)
    monkeypatch.setattr("shared.db.clock.database_now", lambda session: clock.utcnow())
    monkeypatch.setattr("shared.domain.sweeper.database_now", lambda session: clock.utcnow())
    figures: Counter = Counter()
    finals: Counter = Counter()

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(program)
    def run(prog):
        target = FakeTarget(search_delay_seconds=prog["search_delay"],
                            visibility_delay=prog["search_delay"] * prog["visibility_share"],
                            clock=clock.monotonic)
        monkeypatch.setattr(export_job, "client_for", lambda connection: target)
        export_id = _new_export(org, make_expense, receipt=prog["receipt"])
        figures["runs"] += 1

        def act(kind: str, arg=None) -> None:
            figures[f"step:{kind}"] += 1
            if kind == "deliver":
                _deliver(export_id, figures)
            elif kind == "advance":
                clock.advance(arg)
            elif kind == "post":
                target.post_script.append(arg)
                figures["faults"] += arg != "ok"
            elif kind == "lookup":
                target.lookup_script.append(arg)
                figures["faults"] += 1
            elif kind == "kill":
                target.kill_at = arg
                figures["faults"] += 1
            elif kind == "during_post":
                target.during_post = lambda: during_post(arg)
                figures["faults"] += 1
            elif kind == "cancel":
                with session_scope() as session:
                    try:
                        exports.cancel_export(session, org.id, export_id, actor="model")
                    except exports.NotCancellable:
                        figures["cancel refused"] += 1
            elif kind == "callback":
                with session_scope() as session:
                    try:
                        exports.apply_status_callback(
                            session, org.id, export_id, status=arg,
                            external_reference="CALLER-1" if arg == "success" else None,
                            error_message=None, actor="model")
                    except (exports.IllegalStatusChange, exports.AlreadyExported):
                        figures["callback refused"] += 1
            elif kind == "sweep":
                sweeper.requeue_stuck_exports()

        def during_post(action: str) -> None:
            # Inside the POST: after the gate opened, before the target stores.
            if action == "lease_expires_and_duplicate":
                with session_scope() as session:
                    session.execute(update(AccountingExport)
                                    .where(AccountingExport.id == export_id)
                                    .values(lease_expires_at=clock.utcnow() - timedelta(seconds=1)))
                act("deliver")
            elif action == "duplicate":
                act("deliver")
            elif action in ("callback_success", "callback_failed"):
                act("callback", action.split("_")[1])
            else:
                act(action)

        for kind, *args in prog["steps"]:
            act(kind, *args)
            figures["steps"] += 1

        # The world heals: every answer is ok, time passes, deliveries and sweeps as production
        # makes them, until the export has ended.
        target.post_script.clear()
        target.lookup_script.clear()
        target.kill_at = None
        target.during_post = None
        final = None
        for _ in range(60):
            clock.advance(15.0)
            sweeper.requeue_stuck_exports()
            _deliver(export_id, figures)
            final = _row(export_id)
            if final.status != "processing":
                break
        vouchers = target.vouchers_for(export_id)
        figures["vouchers"] += len(vouchers)
        figures["duplicates"] += max(0, len(vouchers) - 1)
        finals[final.status] += 1
        assert len(vouchers) <= 1, f"{len(vouchers)} vouchers for one export"
        assert final.status != "processing", "the export never ended after the world healed"
        if final.status == "success":
            if final.external_id is not None:
                assert [v.posted.id for v in vouchers] == [final.external_id]
            else:  # a PUT callback said it was booked elsewhere, before we posted anything
                assert vouchers == [] and final.external_reference == "CALLER-1"
        else:
            assert vouchers == [], f"a {final.status} export owns voucher {vouchers[0].posted.id}"
        for voucher in vouchers:
            assert len(voucher.attachments) <= 1, voucher.attachments

    run()
    summary = {"examples": EXAMPLES, "seed": SEED, **figures,
               "final": dict(finals)}
    with capsys.disabled():
        print("\n[posting model] " + json.dumps(summary, sort_keys=True))
    assert figures["duplicates"] == 0


def _deliver(export_id: str, figures: Counter) -> None:
    try:
        outcome = export_job.run_export(export_id)
        figures[f"outcome:{outcome.kind}"] += 1
    except WorkerKilled:
        figures["killed"] += 1


def _row(export_id: str) -> AccountingExport:
    with session_scope() as session:
        return session.get(AccountingExport, export_id)


def _new_export(org, make_expense, *, receipt: bool) -> str:
    expense_id = make_expense()
    with session_scope() as session:
        if receipt:
            session.execute(update(Expense).where(Expense.id == expense_id).values(
                receipt_filename="r.pdf", receipt_content_type="application/pdf",
                receipt_data=b"%PDF-1.4 receipt"))
        return exports.create_export(session, org.id, expense_id, "tripletex", actor="model").id
