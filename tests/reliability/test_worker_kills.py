"""Scenario 1: Celery worker processes SIGKILLed at random points, again and again.

``test_workers_sigkilled_in_a_loop``: two worker processes run while exports are created
(singles and batches) and Findity packages arrive; a killer SIGKILLs one of them every 1-3 s
and starts a replacement. Tripletex alternates between answering fast but holding its answer to
a voucher POST 0.7 s after storing it, and answering every call in 1.5 s; Findity answers in
1.2 s. Kills land before the post, during the POST before and after Tripletex stored the
voucher, and while a package is ingested or reported back. Before the loop, one report is
killed at the worst moment on purpose: Findity has accepted it, we have not recorded it.
Recovery is what production has: Redis redelivers unacknowledged messages after the visibility
timeout, the dead attempt's lease runs out, the next attempt looks the voucher up first. What
redelivery cannot bring back (kombu pops a message and records it as unacknowledged in two
commands; a kill between them loses it) is counted, must stay rare, and is left to the
database-driven sweeper, run once after the chaos as beat would.

``test_workers_sigkilled_while_posting_to_billdiary``: the same loop against the BillDiary
sandbox, which has no idempotency key: it holds its answer after storing an expense, answers the
seed's 500 "Could not load expense" after storing, or is slow on every call; each export must end
as exactly one BillDiary expense, found by its ``ref_no``.

Two kill-adjacent cases are made deterministic:

- ``test_lease_outlasts_a_slow_post_while_the_sweeper_runs``: an attempt slow before posting,
  its POST on the way when the claim's lease would have run out, the sweeper running every
  0.5 s. (Found a duplicate voucher: the lease was never renewed after the claim.)
- ``test_redelivered_copy_survives_the_death_of_the_lease_holder``: a redelivered copy of the
  message meets the running attempt's lease, then that worker is SIGKILLed. (Found a lost
  export: the copy was acknowledged as "skipped", leaving no message at all.)
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter

import pytest
import redis

from tests.reliability.conftest import report_lock_tokens, scaled, wait_for_a_slow_report
from tests.reliability.invariants import check_invariants, load_exports, wait_settled

pytestmark = pytest.mark.timeout(600)

REPORTS = [
    {"owner_name": "Kari Nordmann", "expenses": [
        {"text": "Flight Oslo-Bergen", "account": "7140", "amount": "1000.00", "vat_rate": 0},
        {"text": "Office supplies", "account": "6800", "amount": "1250.00", "vat_rate": 25}]},
    {"owner_name": "Ola Hansen", "expenses": [
        {"text": "Hotel", "account": "7140", "amount": "1120.00", "vat_rate": 12}]},
]
TASK_LINE = re.compile(r"Task (worker\.tasks\.\w+)\[([0-9a-f-]+)\] (received|succeeded|retry|"
                       r"raised)")


# After the chaos, work left without a message shows as nothing changing. Quiet this long means
# the broker has redelivered all it had (visibility timeout 6 s, restore every second, the
# longest retry 3 s, the report lock 15 s) and every export or package left is old enough for
# the one sweep below to take it (AIC_STUCK_AFTER_SECONDS 30 past its due time, which is at most
# the longest retry past its last change). Waiting the whole settle timeout instead cost ~2 min
# whenever an export was left.
QUIET_BEFORE_THE_SWEEP = 35.0


def _interrupted_tasks(log_text: str) -> Counter:
    """Tasks a worker received but never finished (succeeded, retried, raised): killed mid-task
    or held in memory (a prefetched message, a countdown) when the worker died."""
    received: dict[str, str] = {}
    finished: set[str] = set()
    for name, task_id, what in TASK_LINE.findall(log_text):
        if what == "received":
            received[task_id] = name.rsplit(".", 1)[-1]
        else:
            finished.add(task_id)
    return Counter(name for task_id, name in received.items() if task_id not in finished)


def _classify_interrupted_attempts(events_by_export: dict[str, list[dict]]) -> Counter:
    """Where each attempt that never finished stopped, read from the event logs."""
    where: Counter = Counter()
    for events in events_by_export.values():
        attempts: dict[int, list[str]] = {}
        for event in events:
            if event["attempt"] is not None:
                attempts.setdefault(event["attempt"], []).append(event["kind"])
        ordered = sorted(attempts)
        for index, attempt in enumerate(ordered):
            kinds = attempts[attempt]
            if "status_changed" in kinds or "retry_scheduled" in kinds:
                continue
            if index == len(ordered) - 1:
                continue  # the last attempt of an export that is still waiting
            following = attempts[ordered[index + 1]]
            if kinds[-1] == "started":
                where["before posting"] += 1
            elif kinds[-1] == "posting_started":
                where["during the POST, after the target stored the record"
                      if "found_existing_voucher" in following
                      else "during the POST, before the target stored the record"] += 1
            else:
                where[f"after {kinds[-1]}"] += 1
    return where


def test_workers_sigkilled_in_a_loop(stacks, tripletex_sandbox, findity_sandbox, figures):
    """Worker processes SIGKILLed before the post, after Tripletex accepted, while reporting back."""
    exports_wanted = scaled(120)
    packages_wanted = scaled(6)
    # No beat: the sweeper runs once, on demand, after the chaos (below), and then only re-queues
    # what has been stuck for 30 s.
    # Room for repeated kills of one export's attempts (see the BillDiary loop below).
    stack = stacks("kills", env={"AIC_STUCK_AFTER_SECONDS": "30",
                                 "AIC_SOURCE_STUCK_AFTER_SECONDS": "30", "AIC_MAX_ATTEMPTS": "10"})
    stack.start_api()
    stack.workers.start()
    stack.workers.start()
    tenant = stack.new_tenant(tripletex_sandbox, "Kill AS")
    # Slow enough that a kill every 1-3 s lands inside the interesting windows.
    tripletex_sandbox.set_faults(tenant.company_id, latency_ms=120, post_hold_ms=700)
    # First the nastiest report-back moment, on a package of its own. The dead worker's report
    # lock frees itself within AIC_REPORT_LOCK_SECONDS (15 s); the redelivered report (after the
    # 6 s visibility timeout) then sends each voucher Findity may already hold on its own.
    reporter = stack.new_findity_tenant(tripletex_sandbox, findity_sandbox, "Report kill AS")
    report_package, report_killed_at = _kill_after_findity_took_a_report(
        stack, reporter, findity_sandbox, figures)
    stack.workers.start()
    stack.workers.start()
    report_done_in = _wait_package_completed(reporter, report_package, report_killed_at, 60)
    figures.note("report killed after Findity took it: seconds until the package was complete",
                 round(report_done_in, 1))
    ft = stack.new_findity_tenant(tripletex_sandbox, findity_sandbox, "Kill Findity AS")
    tripletex_sandbox.set_faults(ft.tenant.company_id, latency_ms=120, post_hold_ms=700)
    findity_sandbox.set_faults(ft.org["organization_id"], latency_ms=1200)

    producing = threading.Event()
    producing.set()
    chaos = threading.Event()
    chaos.set()
    rng = random.Random(20240501)
    errors: list[BaseException] = []
    findity_exports: list[str] = []

    def produce() -> None:
        try:
            made = 0
            package_every = max(1, exports_wanted // max(1, packages_wanted))
            while made < exports_wanted:
                if rng.random() < 0.5:
                    tenant.export(tenant.add_expense(f"{100 + made}.25", account="7140",
                                                     vat_code=None))
                    made += 1
                else:
                    size = min(rng.randint(3, 8), exports_wanted - made)
                    ids = [tenant.add_expense(f"{100 + made + i}.75", account="6800",
                                              vat_code="1") for i in range(size)]
                    response = tenant.api.post("/api/v1/accounting-exports/batch", json={
                        "expense_ids": ids, "target_system": "tripletex"})
                    assert response.status_code == 202, response.text
                    made += size
                if len(findity_exports) < packages_wanted and made // package_every > len(
                        findity_exports):
                    findity_exports.append(ft.create_export(REPORTS)["export_id"])
                time.sleep(rng.uniform(0.05, 0.3))
            while len(findity_exports) < packages_wanted:
                findity_exports.append(ft.create_export(REPORTS)["export_id"])
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            producing.clear()

    # Tripletex alternates between two moods: fast, but holding its answer after storing a
    # voucher (kills land after the accept), and slow on every call (attempts outlast their
    # lease; kills land before the voucher is stored).
    moods = [dict(latency_ms=120, post_hold_ms=700), dict(latency_ms=1500)]

    def change_moods() -> None:
        index = 0
        while chaos.is_set():
            time.sleep(4)
            index += 1
            mood = moods[index % 2]
            for company in (tenant.company_id, ft.tenant.company_id):
                tripletex_sandbox.set_faults(company, **mood)
            if index % 2:
                figures.fault("slow Tripletex phase (1.5 s per call)")
        for company in (tenant.company_id, ft.tenant.company_id):
            tripletex_sandbox.set_faults(company, **moods[0])

    producer = threading.Thread(target=produce, name="producer")
    producer.start()
    mood_changer = threading.Thread(target=change_moods, name="moods")
    mood_changer.start()
    kills = 0
    min_kills = scaled(10)
    killed_logs: list[str] = []
    started = time.monotonic()
    while (producing.is_set() or kills < min_kills) and time.monotonic() - started < 300:
        time.sleep(rng.uniform(1.0, 3.0))
        victim = rng.choice(stack.workers.running)
        stack.workers.kill(victim)
        killed_logs.append(victim.log_path.read_text(errors="replace"))
        kills += 1
        figures.fault("worker SIGKILL")
        stack.workers.start()
        while len(stack.workers.running) < 2:
            stack.workers.start()
    chaos.clear()
    producer.join(timeout=60)
    mood_changer.join(timeout=30)
    assert not errors, errors

    tenants = [tenant, ft.tenant, reporter.tenant]
    findity = [(ft, findity_exports), (reporter, [report_package])]
    # Redelivery alone first. What is still unfinished then had no message left: kombu's Redis
    # transport pops a message (BRPOP) and records it as unacknowledged in a second command, and
    # a SIGKILL between the two loses it. Production's backstop is the database-driven sweeper: run it once.
    wait_settled([t.organization_id for t in tenants], 150, findity, quiet=QUIET_BEFORE_THE_SWEEP)
    orphans = _unfinished(tenants)
    figures.note("left without a message after redelivery (recovered by one sweep)", orphans)
    if orphans:
        stack.send_task("worker.tasks.sweep_stuck_exports", queue="maintenance")
        figures.fault("one sweep after the chaos")
    assert len(orphans) <= kills, orphans
    report = check_invariants(tenants, figures, settle_timeout=60, findity=findity,
                              require_terminal=True)
    codes = [r.get("response_status") for r in reporter.status_updates(report_package)]
    figures.note("report killed after Findity took it: updatestatus answers", codes)
    # Findity took each voucher's SUCCESS once; what came after the kill were repeats, each
    # alone (an answer to one could not hold another back), answered "already processed".
    records = reporter.status_updates(report_package)
    taken = Counter(u["id"] for r in records if r.get("response_status") == 200
                    for u in r["body"]["voucherUpdates"])
    assert set(codes) <= {200, 409} and list(taken.values()) == [1, 1], codes
    repeats = [r["body"]["voucherUpdates"] for r in records if r.get("response_status") == 409]
    assert repeats and all(len(updates) == 1 for updates in repeats), repeats

    interrupted = Counter()
    for text in killed_logs:
        interrupted.update(_interrupted_tasks(text))
    rows = load_exports([tenant.organization_id, ft.tenant.organization_id])
    where = _classify_interrupted_attempts({r.id: r.events for r in rows})
    figures.note("tasks a killed worker had received but not finished", dict(interrupted))
    figures.note("where interrupted export attempts stopped", dict(where))
    figures.note("exports that needed more than one attempt", sum(r.attempts > 1 for r in rows))
    figures.note("Findity packages", len(findity_exports))
    assert report.statuses == Counter({"success": report.exports}), report.statuses
    # The scenario must have hit the windows it is about, or it proves little.
    assert sum(interrupted.values()) >= kills // 2, interrupted
    assert where, "no export attempt was interrupted by a kill"


def test_workers_sigkilled_while_posting_to_billdiary(stacks, billdiary_sandbox, figures):
    """Worker processes SIGKILLed while exports go to BillDiary, which has no idempotency key."""
    exports_wanted = scaled(40)
    # A SIGKILLed attempt counts as an attempt (the guard against poison messages that kill every
    # worker, tests/reliability/test_poison_messages.py). On a loaded machine an attempt here can
    # take longer than the 1-3 s between kills, and one export's four test-default attempts were
    # all killed once (CI, load 10: failed safely, no BillDiary expense). This scenario is about
    # doubles and losses, not the attempt budget: give it the room of a busier production day.
    stack = stacks("kills-erp", env={"AIC_STUCK_AFTER_SECONDS": "30", "AIC_MAX_ATTEMPTS": "10"})
    stack.start_api()
    stack.workers.start()
    stack.workers.start()
    # No concurrency cap on this connection: a SIGKILLed worker's slot would stay taken for the
    # limiter's lease (60 s); the rate stays well under the sandbox's throttle (raised below).
    tenant = stack.new_billdiary_tenant(billdiary_sandbox, "Kill ERP AS", options={
        "rate_limit": {"requests_per_second": 20, "burst": 5, "max_concurrent": 0}})
    throttle = {"rate_limit": {"limit": 100_000, "window_seconds": 60}}
    # BillDiary alternates between holding its answer 0.7 s after storing an expense (kills land
    # after the store, before we know the id), answering the seed's 500 "Could not load expense"
    # after storing the next three, and answering every call in 1.5 s (kills land before).
    moods = [dict(latency_ms=120, save_then_hold_ms=700), dict(latency_ms=120, save_then_fail=3),
             dict(latency_ms=1500)]
    tenant.set_faults(**moods[0], **throttle)
    producing = threading.Event()
    producing.set()
    chaos = threading.Event()
    chaos.set()
    rng = random.Random(20261129)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            made = 0
            while made < exports_wanted:
                if rng.random() < 0.5:
                    tenant.export(tenant.add_expense(f"{100 + made}.25", account="7140",
                                                     vat_code=None))
                    made += 1
                else:
                    size = min(rng.randint(3, 6), exports_wanted - made)
                    ids = [tenant.add_expense(f"{100 + made + i}.75", account="6800",
                                              vat_code=None) for i in range(size)]
                    response = tenant.api.post("/api/v1/accounting-exports/batch", json={
                        "expense_ids": ids, "target_system": "billdiary"})
                    assert response.status_code == 202, response.text
                    made += size
                time.sleep(rng.uniform(0.05, 0.3))
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            producing.clear()

    def change_moods() -> None:
        index = 0
        while chaos.is_set():
            time.sleep(4)
            index += 1
            tenant.set_faults(**moods[index % len(moods)], **throttle)
            figures.fault(f"BillDiary mood {index % len(moods)}")
        tenant.set_faults(**throttle)

    producer = threading.Thread(target=produce, name="producer")
    producer.start()
    mood_changer = threading.Thread(target=change_moods, name="moods")
    mood_changer.start()
    kills = 0
    min_kills = scaled(6)
    started = time.monotonic()
    while (producing.is_set() or kills < min_kills) and time.monotonic() - started < 240:
        time.sleep(rng.uniform(1.0, 3.0))
        victim = rng.choice(stack.workers.running)
        stack.workers.kill(victim)
        kills += 1
        figures.fault("worker SIGKILL")
        stack.workers.start()
        while len(stack.workers.running) < 2:
            stack.workers.start()
    chaos.clear()
    producer.join(timeout=60)
    mood_changer.join(timeout=30)
    assert not errors, errors

    wait_settled([tenant.organization_id], 150, quiet=QUIET_BEFORE_THE_SWEEP)
    orphans = _unfinished([tenant])
    figures.note("left without a message after redelivery (recovered by one sweep)", orphans)
    if orphans:
        stack.send_task("worker.tasks.sweep_stuck_exports", queue="maintenance")
        figures.fault("one sweep after the chaos")
    assert len(orphans) <= kills, orphans
    # One BillDiary expense per export, found by ref_no, and the one the export names.
    report = check_invariants([tenant], figures, settle_timeout=90, require_terminal=True)
    rows = load_exports([tenant.organization_id])
    where = _classify_interrupted_attempts({r.id: r.events for r in rows})
    figures.note("where interrupted export attempts stopped", dict(where))
    figures.note("exports settled by a lookup (found_existing_voucher)",
                 sum(any(e["kind"] == "found_existing_voucher" for e in r.events) for r in rows))
    assert report.statuses == Counter({"success": report.exports}), report.statuses
    assert report.exports == exports_wanted
    assert where, "no export attempt was interrupted by a kill"


def _wait_package_completed(ft, external_export_id: str, since: float, limit: float) -> float:
    """Seconds from ``since`` until our package of the export is completed; at most ``limit``
    (the report lock of a dead worker used to hold it back 120 s)."""
    while True:
        listed = ft.tenant.api.get("/api/v1/source-exports?limit=10").json()["data"]
        if [s["status"] for s in listed if s["source_export_ref"] == external_export_id] == [
                "completed"]:
            return time.monotonic() - since
        assert time.monotonic() - since < limit, (
            f"the killed report's package is not complete {limit:.0f} s after the kill: {listed}")
        time.sleep(0.2)


def _unfinished(tenants) -> list[str]:
    """Exports in processing that nothing will run, and packages still owing reports."""
    from shared.db.models import SourceUnit
    from shared.db.session import session_scope
    from shared.db.types import utcnow
    from sqlalchemy import select

    now = utcnow()
    rows = load_exports([t.organization_id for t in tenants])
    stuck = [r.id for r in rows if r.status == "processing"
             and not (r.lease_expires_at and r.lease_expires_at > now)
             and not (r.next_attempt_at and r.next_attempt_at > now)]
    with session_scope() as session:
        stuck += [s.id for s in session.scalars(select(SourceUnit).where(
            SourceUnit.organization_id.in_([t.organization_id for t in tenants]),
            SourceUnit.status.not_in(["completed", "completed_with_failures", "rejected"])))]
    return stuck


def test_lease_outlasts_a_slow_post_while_the_sweeper_runs(stacks, tripletex_sandbox, figures):
    """The sweeper must not start a second attempt while the first one's POST is on its way."""
    # Production's proportions: a lease longer than one request (connect + read timeout) and
    # shorter than the visibility timeout, a sweeper that re-queues exports whose lease ran out.
    # Here it sweeps every half second.
    stack = stacks("lease", env={"AIC_EXPORT_LEASE_SECONDS": "12", "AIC_STUCK_AFTER_SECONDS": "1",
                                 "AIC_BROKER_VISIBILITY_TIMEOUT": "30"})
    stack.start_api()
    stack.workers.start()
    tenants = []
    for round_ in range(scaled(1)):
        # A new tenant each round, so the worker's client starts cold. 3.5 s per call: session,
        # lookups and the POST together outlast the 12 s lease; each call stays inside the 5 s
        # read timeout.
        tenant = stack.new_tenant(tripletex_sandbox, f"Slow {round_} AS")
        tenants.append(tenant)
        tripletex_sandbox.set_faults(tenant.company_id, latency_ms=3500)
        figures.fault("Tripletex 3.5 s per call, then fast again")
        export_id = tenant.export(tenant.add_expense(f"{310 + round_}.00", account="7140",
                                                     vat_code=None))
        deadline = time.monotonic() + 40
        while "posting_started" not in [e["kind"] for e in tenant.events(export_id)]:
            assert time.monotonic() < deadline, tenant.events(export_id)
            time.sleep(0.1)
        time.sleep(0.3)  # the POST is on its way, with 3.5 s to go
        tripletex_sandbox.clear_faults(tenant.company_id)  # a second attempt would be quick
        while tenant.get(export_id)["status"] == "processing" and time.monotonic() < deadline:
            stack.send_task("worker.tasks.sweep_stuck_exports", queue="maintenance")
            figures.fault("sweeper run")
            time.sleep(0.5)
    check_invariants(tenants, figures, settle_timeout=60, require_terminal=True)
    rows = load_exports([t.organization_id for t in tenants])
    figures.note("attempts per export", sorted(r.attempts for r in rows))


def test_redelivered_copy_survives_the_death_of_the_lease_holder(stacks, tripletex_sandbox,
                                                                  figures):
    """A redelivered copy finds the lease held; then the worker holding it is SIGKILLed."""
    stack = stacks("copy")
    stack.start_api()
    worker = stack.workers.start(concurrency=4)
    tenant = stack.new_tenant(tripletex_sandbox, "Redelivery AS")
    # Cold caches and 1.5 s per call: posting starts ~4.5 s after the claim (renewing the lease
    # to ~8.5 s), and Tripletex holds its answer 3 s after storing the voucher. Redis hands the
    # unacknowledged message to another thread after the 6 s visibility timeout: that copy finds
    # the lease held. Then the worker dies with the first attempt.
    tripletex_sandbox.set_faults(tenant.company_id, latency_ms=1500, post_hold_ms=3000)
    export_id = tenant.export(tenant.add_expense("512.00", account="7140", vat_code=None))
    deadline = time.monotonic() + 30
    while max(Counter(task_id for _, task_id, what in TASK_LINE.findall(
            worker.log_path.read_text(errors="replace")) if what == "received").values(),
            default=0) < 2:
        assert time.monotonic() < deadline, worker.tail(30)
        time.sleep(0.05)
    time.sleep(0.5)  # the copy has met the lease
    stack.workers.kill(worker)
    figures.fault("worker SIGKILL after a redelivered copy found the lease held")
    tripletex_sandbox.clear_faults(tenant.company_id)
    stack.workers.start(concurrency=4)
    check_invariants([tenant], figures, settle_timeout=45, require_terminal=True)
    [row] = load_exports([tenant.organization_id])
    figures.note("event log", " > ".join(e["kind"] for e in row.events))
    assert row.id == export_id


class _RecordingBlocked:
    """Holds the rows a report records into (PostgreSQL: a row lock on the package's vouchers;
    SQLite: the write lock), so a worker that has just been answered by Findity waits there."""

    def __init__(self, source_export_id: str) -> None:
        from shared.config import get_settings
        from sqlalchemy.engine import make_url

        self.url = make_url(get_settings().database_url)
        self.source_export_id = source_export_id
        # PostgreSQL locks the package's rows only; SQLite the whole database.
        self.selective = self.url.get_backend_name() == "postgresql"
        self._connection = None

    def __enter__(self):
        if self.selective:
            import psycopg

            self._connection = psycopg.connect(
                self.url.set(drivername="postgresql").render_as_string(hide_password=False))
            self._connection.execute("SELECT id FROM source_unit_items WHERE source_unit_id = %s "
                                     "FOR UPDATE", (self.source_export_id,))
        else:
            import sqlite3

            self._connection = sqlite3.connect(self.url.database, isolation_level=None)
            self._connection.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc) -> None:
        self._connection.rollback()
        self._connection.close()


def _kill_after_findity_took_a_report(stack, ft, findity_sandbox, figures) -> tuple[str, float]:
    """SIGKILL every worker between "Findity accepted the report" and "we recorded it".

    Reports are held back (updatestatus down) until the package is booked; then recording is
    blocked, Findity is let through, and once it has answered 200 the workers die. Returns the
    package and when the kill happened."""
    org_id = ft.org["organization_id"]
    findity_sandbox.set_faults(org_id, updatestatus_down=True)
    created = ft.create_export(REPORTS)
    package = created["export_id"]
    deadline = time.monotonic() + 60
    while True:
        booked = load_exports([ft.tenant.organization_id])
        if len(booked) == len(created["voucher_ids"]) and all(
                r.status == "success" for r in booked):
            break
        assert time.monotonic() < deadline, [r.status for r in booked]
        time.sleep(0.2)
    [source_export_id] = [s["source_export_id"] for s in ft.tenant.api.get(
        "/api/v1/source-exports?limit=10").json()["data"]]
    blocked = _RecordingBlocked(source_export_id)
    if blocked.selective:
        # PostgreSQL: only the package's voucher rows are locked. The next report needs them
        # only to record Findity's answer (their in-flight marks were committed by the attempts
        # Findity refused while it was down).
        with blocked:
            findity_sandbox.clear_faults(org_id)
            killed_at = _kill_once_findity_answered(stack, ft, package, deadline, figures)
    else:
        # SQLite's write lock is all or nothing: a report attempt that writes anything while it
        # is held (the error of the attempt refused just before) waits out the busy timeout
        # holding the package's report lock, and the report goes out later than this test
        # waits. So let a report reach the wire first, slowly, then block the recording.
        broker = redis.Redis.from_url(stack.redis.url)
        before = report_lock_tokens(broker)
        findity_sandbox.set_faults(org_id, latency_ms=2500)
        wait_for_a_slow_report(broker, before)
        with blocked:
            killed_at = _kill_once_findity_answered(stack, ft, package, deadline, figures)
        findity_sandbox.clear_faults(org_id)
    return package, killed_at


def _kill_once_findity_answered(stack, ft, package: str, deadline: float, figures) -> float:
    while not any(r.get("response_status") == 200 for r in ft.status_updates(package)):
        assert time.monotonic() < deadline + 30, ft.status_updates(package)
        time.sleep(0.05)
    time.sleep(0.3)
    for worker in list(stack.workers.running):
        stack.workers.kill(worker)
    killed_at = time.monotonic()
    figures.fault("worker SIGKILL after Findity accepted a report, before it was recorded")
    return killed_at
