"""Scenario 9: the polled sources (TRAEDE, Brex) under worker SIGKILLs.

Both report an outcome back onto the item itself, after the booking: TRAEDE marks the entry
exported with the voucher number as its note, Brex gets the number in the expense's memo. So a
worker can die with the voucher booked and the item still saying nothing: the entry is still
listed as "not exported" and must come back and be *only* marked, never booked again.

``test_killed_between_booking_and_marking_the_items_are_only_marked``: every worker SIGKILLed
after every voucher was booked and before any mark / memo was taken (TRAEDE refuses every mark
and Brex every memo PUT before applying it, so the reports wait in their retries), and while a
poll is on its way (TRAEDE answers in 2.5 s: the poll holds its Redis lock). New workers come
up, Brex is healed, polls run every 2 s; TRAEDE refuses marks until a poll has listed the entries
again, then is healed: nothing is booked again, each entry is marked / each memo written with its
voucher's number. The poll is back within
AIC_POLL_LOCK_SECONDS of the kill (it used to wait out a 450 s lock).

``test_feed_sources_under_a_kill_loop``: TRAEDE entries and Brex expenses arrive while a
killer SIGKILLs one of three workers every 1-3 s, with Tripletex slow (0.8 s per call, or holding
its answer after storing a voucher), TRAEDE redelivering marked entries (a stale read, and one
entry on every fetch), TRAEDE failing marks after applying them, Brex answering 502 after
applying a memo, and beat polling every 2 s. The sources' faults stay on after the kills
while the reports still owed go out. Every item ends booked once, reported with its number;
nothing lost.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import select

from tests.reliability.conftest import scaled
from tests.reliability.invariants import (
    BrexFeed,
    TraedeFeed,
    check_feed_sources,
    check_invariants,
    load_exports,
)
from tests.reliability.test_worker_kills import _interrupted_tasks

pytestmark = pytest.mark.timeout(300)

POLL_LOCK_SECONDS = 6  # the stack's AIC_POLL_LOCK_SECONDS
# A report's lock as short as it may be (a killed reporter's lock holds its connection's marks
# back that long), the poll's lock short too; beat polls every 2 s and sweeps every 5 s.
ENV = {"AIC_POLL_LOCK_SECONDS": str(POLL_LOCK_SECONDS), "AIC_POLL_INTERVAL_SECONDS": "2",
       "AIC_REPORT_LOCK_SECONDS": "3",
       "AIC_SOURCE_STUCK_AFTER_SECONDS": "20", "AIC_STUCK_AFTER_SECONDS": "20",
       "AIC_SWEEP_INTERVAL_SECONDS": "5"}
MARK_PATH = "mark-as-exported"
CHAOS_SECONDS = 50  # the kill loop's length at most (CI scale: 15 kills or more)
MEMO_PATH = "/expenses/card/"


def _entry(amount: str) -> dict:
    when = datetime.now(UTC) - timedelta(hours=1)
    return {"currency": "NOK", "amount": amount, "account": 5820, "contra_account": 1010,
            "date": when.isoformat(), "text": "Faktura", "created_at": when.isoformat()}


def _add_entries(feed: TraedeFeed, amounts: list[str]) -> None:
    feed.entry_ids += feed.traede.add_entries(feed.company_id, [_entry(a) for a in amounts])


def _add_expenses(feed: BrexFeed, amounts: list[int], receipts: int = 0) -> None:
    feed.expense_ids += feed.brex.add_expenses(feed.account_id, [
        {"original_amount": a, "currency": "NOK", "billing_amount": a, "receipts": receipts}
        for a in amounts])


def _last_polled(connection_id: str):
    from shared.db.models import SourceConnection
    from shared.db.session import session_scope

    with session_scope() as session:
        return session.scalar(select(SourceConnection.last_polled_at).where(
            SourceConnection.id == connection_id))


def _wait(what: str, check, timeout: float, poll=None):
    deadline = time.monotonic() + timeout
    next_poll = 0.0
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if poll is not None and time.monotonic() >= next_poll:
            poll()
            next_poll = time.monotonic() + 2
        time.sleep(0.2)
    return value


def _memo_puts(feed: BrexFeed) -> int:
    """Memo PUTs Brex received, refused ones included (``fail_next`` answers before the handler
    records a write)."""
    requests = feed.brex.account_state(feed.account_id).get("requests", {})
    return sum(n for route, n in requests.items() if route.startswith("PUT") and "card" in route)


def _mark_posts(feed: TraedeFeed) -> int:
    """Mark calls TRAEDE received, refused ones included."""
    requests = feed.traede.company_state(feed.company_id).get("requests", {})
    return sum(n for route, n in requests.items() if MARK_PATH in route)


def test_killed_between_booking_and_marking_the_items_are_only_marked(
        stacks, tripletex_sandbox, traede_sandbox, brex_sandbox, figures):
    """Every worker SIGKILLed after the vouchers were booked, before the marks / memos."""
    started = time.monotonic()
    stack = stacks("crash", env=ENV)
    stack.start_api()
    stack.workers.start(concurrency=4)
    traede = stack.new_traede_feed(tripletex_sandbox, traede_sandbox, "Crash TRAEDE AS")
    brex = stack.new_brex_feed(tripletex_sandbox, brex_sandbox, "Crash Brex AS")
    items = scaled(5)
    # Refused before they are applied: the reports wait in their retries, the items unmarked.
    traede_sandbox.set_faults(traede.company_id, fail_next=[
        {"status": 503, "count": 100_000, "method": "POST", "path_contains": MARK_PATH}])
    brex_sandbox.set_faults(brex.account_id, fail_next=[
        {"status": 503, "count": 100_000, "method": "PUT", "path_contains": MEMO_PATH}])
    _add_entries(traede, [f"{300 + i}.40" for i in range(items)])
    _add_expenses(brex, [41_000 + 100 * i for i in range(items)], receipts=1)
    orgs = [traede.tenant.organization_id, brex.tenant.organization_id]

    def all_booked() -> bool:
        rows = load_exports(orgs)
        return len(rows) == 2 * items and all(r.status == "success" for r in rows)

    _wait("every voucher booked", all_booked, 90, poll=stack.poll_sources)
    _wait("a refused mark and a refused memo PUT",
          lambda: _mark_posts(traede) > 0 and _memo_puts(brex) > 0, 30)
    assert not traede.reported() and not any(brex.reported().values())
    vouchers_before = {f.tenant.organization_id: len(f.tenant.vouchers()) for f in (traede, brex)}

    # A poll on its way as well: TRAEDE answers in 2.5 s, so the poll holds its lock meanwhile.
    traede_sandbox.set_faults(traede.company_id, latency_ms=2500, fail_next=[
        {"status": 503, "count": 100_000, "method": "POST", "path_contains": MARK_PATH}])
    broker = redis.Redis.from_url(stack.redis.url)
    time.sleep(3)  # polls already queued run out; the next one starts below
    stack.poll_sources()
    _wait("a poll holding its lock", lambda: broker.get("aic:poll-lock"), 20)
    time.sleep(0.5)
    polled_before = _last_polled(traede.source_connection_id)
    for worker in list(stack.workers.running):
        stack.workers.kill(worker)
    killed_at = time.monotonic()
    figures.fault("every worker SIGKILLed after booking, before marking, while polling")
    lock_ttl = broker.pttl("aic:poll-lock") / 1000
    figures.note("the dead poll's lock: seconds left at the kill", round(lock_ttl, 1))
    assert 0 < lock_ttl <= POLL_LOCK_SECONDS, lock_ttl

    # TRAEDE answers at once again but still refuses the marks until a poll after the kill has
    # listed the entries: else the reports the dead workers held (back within the broker's
    # visibility timeout, 6 s) may mark them before the poll's lock has run out, and the path
    # this scenario is about (listed again, only marked) is not taken.
    traede_sandbox.set_faults(traede.company_id, fail_next=[
        {"status": 503, "count": 100_000, "method": "POST", "path_contains": MARK_PATH}])
    brex_sandbox.clear_faults(brex.account_id)
    fetches_before = len(traede_sandbox.fetches(traede.company_id))
    stack.workers.start(concurrency=4)
    # Beat polls every 2 s from now on; the dead poll's lock first has to run out.
    resumed_in = _wait("a poll after the kill",
                       lambda: (_last_polled(traede.source_connection_id) or polled_before)
                       != polled_before and time.monotonic() - killed_at, 60,
                       poll=stack.poll_sources)
    figures.note("seconds from the kill until a poll ran again", round(resumed_in, 1))
    assert resumed_in < POLL_LOCK_SECONDS + 20, resumed_in

    # Came back: the next polls list the unmarked entries again; they must be only marked.
    def relisted_entries() -> set[int]:
        later = traede_sandbox.fetches(traede.company_id)[fetches_before:]
        return {i for f in later for i in f["entry_ids"]} & set(traede.entry_ids)

    relisted = _wait("the unmarked entries listed again", relisted_entries, 30,
                     poll=stack.poll_sources)
    figures.note("entries listed again after the kill", len(relisted))
    traede_sandbox.clear_faults(traede.company_id)

    check_feed_sources([traede, brex], figures, settle_timeout=60, poll=stack.poll_sources)
    check_invariants([traede.tenant, brex.tenant], figures, settle_timeout=30,
                     require_terminal=True)
    assert {f.tenant.organization_id: len(f.tenant.vouchers())
            for f in (traede, brex)} == vouchers_before
    marks = [c for c in traede_sandbox.mark_calls(traede.company_id) if c.get("status") == 200]
    figures.note("TRAEDE mark calls taken after the kill", len(marks))
    writes = [w for w in brex_sandbox.memo_writes(brex.account_id) if w.get("applied")]
    figures.note("Brex memos written after the kill", len(writes))
    figures.note("runtime seconds", round(time.monotonic() - started, 1))


def test_feed_sources_under_a_kill_loop(stacks, tripletex_sandbox, traede_sandbox, brex_sandbox,
                                         figures):
    """TRAEDE entries and Brex expenses while workers are SIGKILLed every 1-3 s, sources faulty."""
    started = time.monotonic()
    wanted = scaled(20)
    # Every kill of an attempt costs it an attempt: with a kill every 2 s and Tripletex at 0.8 s
    # per call, the test settings' 4 attempts can run out (failed, never booked, nothing lost,
    # but not the outcome this scenario is about). Production has 6 and rarer kills.
    stack = stacks("feed-kills", env={**ENV, "AIC_MAX_ATTEMPTS": "12"})
    stack.start_api()
    for _ in range(3):
        stack.workers.start(concurrency=4)
    stack.start_beat()  # polls every 2 s, sweeps every 5 s; never killed
    traede = stack.new_traede_feed(tripletex_sandbox, traede_sandbox, "Kill TRAEDE AS")
    brex = stack.new_brex_feed(tripletex_sandbox, brex_sandbox, "Kill Brex AS")
    feeds = [traede, brex]
    companies = [f.tenant.company_id for f in feeds]
    rng = random.Random(20261130)
    chaos = threading.Event()
    chaos.set()
    errors: list[BaseException] = []

    bitten: Counter = Counter()

    def count_bites() -> None:
        """What the last round's counted knobs did (they count down as they bite)."""
        if round_faults["set"]:
            left = traede_sandbox.company_state(traede.company_id)["faults"]
            bitten["TRAEDE stale-read fetches (marked entries again)"] += (
                2 - left["redeliver_marked_fetches"])
            left = brex_sandbox.account_state(brex.account_id)["faults"]
            bitten["Brex memo PUTs answered 502 after apply"] += 2 - left["put_fail_after_apply"]

    round_faults = {"set": False}

    def source_faults(round_: int) -> None:
        # TRAEDE: marked entries delivered again (a stale read, and the first entry on every
        # fetch), a mark failing after it was applied; Brex: a memo PUT answered 502 after it was
        # applied, and a slow list. Renewed every round: the counts are used up.
        count_bites()
        round_faults["set"] = True
        redeliver = traede.entry_ids[:1]
        traede_sandbox.set_faults(traede.company_id, latency_ms=150,
                                  redeliver_marked_fetches=2, redeliver_ids=redeliver,
                                  mark_failure={"mode": "after", "count": 1, "status": 502})
        brex_sandbox.set_faults(brex.account_id, latency_ms=150, put_fail_after_apply=2,
                                put_fail_status=502)

    moods = [dict(latency_ms=150, post_hold_ms=700), dict(latency_ms=800)]

    def produce_and_fault() -> None:
        try:
            made = 0
            round_ = 0
            while chaos.is_set():
                if made < wanted:
                    size = min(rng.randint(2, 5), wanted - made)
                    _add_entries(traede, [f"{500 + made + i}.10" for i in range(size)])
                    _add_expenses(brex, [60_000 + 100 * (made + i) for i in range(size)],
                                  receipts=rng.randint(0, 1))
                    made += size
                round_ += 1
                source_faults(round_)
                mood = moods[round_ % 2]
                for company in companies:
                    tripletex_sandbox.set_faults(company, **mood)
                if round_ % 2:
                    figures.fault("slow Tripletex phase (0.8 s per call)")
                time.sleep(3)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    def keep_three_workers() -> None:
        # Replacements start here, one at a time, while the killer goes on: waiting for each
        # to be ready (~3-5 s on a loaded machine) would space the kills out. Three kept
        # alive, so some work gets done between kills.
        try:
            while chaos.is_set():
                if len(stack.workers.running) < 3:
                    stack.workers.start(concurrency=4)
                else:
                    time.sleep(0.1)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    producer = threading.Thread(target=produce_and_fault, name="producer")
    producer.start()
    keeper = threading.Thread(target=keep_three_workers, name="keeper")
    keeper.start()
    kills = 0
    killed_logs: list[str] = []
    orgs = [f.tenant.organization_id for f in feeds]

    def booked() -> int:
        return sum(r.status == "success" for r in load_exports(orgs))

    def reported() -> int:
        return len(traede.reported()) + sum(1 for tags in brex.reported().values() if tags)

    # Until the kills, the bookings and half of the reports back have happened under the
    # faults, within CHAOS_SECONDS (a loaded machine starts replacements slowly).
    chaos_started = time.monotonic()
    while time.monotonic() - chaos_started < CHAOS_SECONDS and (
            kills < scaled(15) or booked() < 2 * wanted or reported() < wanted):
        time.sleep(rng.uniform(1.0, 3.0))
        if not stack.workers.running:
            continue  # both dead, a replacement on its way
        victim = rng.choice(stack.workers.running)
        stack.workers.kill(victim)
        killed_logs.append(victim.log_path.read_text(errors="replace"))
        kills += 1
        figures.fault("worker SIGKILL")
    chaos.clear()
    marks_during_chaos = traede_sandbox.mark_calls(traede.company_id)
    memos_during_chaos = brex_sandbox.memo_writes(brex.account_id)
    producer.join(timeout=30)
    keeper.join(timeout=90)
    assert not errors, errors
    # The kills end; the sources' faults go on while the reports still owed go out (on a loaded
    # machine most bookings land late in the loop), then they end too.
    for company in companies:
        tripletex_sandbox.clear_faults(company)
    settle_until = time.monotonic() + 30
    while reported() < 2 * wanted and time.monotonic() < settle_until:
        source_faults(0)
        time.sleep(2)
    count_bites()
    if not stack.workers.running:
        stack.workers.start(concurrency=4)
    for company in companies:
        tripletex_sandbox.clear_faults(company)
    traede_sandbox.clear_faults(traede.company_id)
    brex_sandbox.clear_faults(brex.account_id)
    assert len(traede.entry_ids) == wanted and len(brex.expense_ids) == wanted

    report = check_feed_sources(feeds, figures, settle_timeout=90)
    check_invariants([f.tenant for f in feeds], figures, settle_timeout=30,
                     require_terminal=True)
    rows = load_exports(orgs)
    figures.note("items", report.items)
    figures.note("kills", kills)
    figures.note("exports that needed more than one attempt", sum(r.attempts > 1 for r in rows))
    calls = traede_sandbox.mark_calls(traede.company_id)
    bitten["TRAEDE mark calls failed after apply"] = sum(1 for c in calls if c.get("fault"))
    for name, count in bitten.items():
        figures.fault(name, count)
    figures.note("TRAEDE mark calls: all (during the kill loop)",
                 f"{len(calls)} ({len(marks_during_chaos)})")
    figures.note("Brex memo PUTs during the kill loop", len(memos_during_chaos))
    writes = brex_sandbox.memo_writes(brex.account_id)
    figures.note("Brex memo PUTs (replayed by Idempotency-Key)",
                 f"{len(writes)} ({sum(1 for w in writes if w.get('replayed'))})")
    interrupted = Counter()
    for text in killed_logs:
        interrupted.update(_interrupted_tasks(text))
    figures.note("tasks a killed worker had received but not finished", dict(interrupted))
    figures.note("runtime seconds", round(time.monotonic() - started, 1))
    # The kills must have landed inside work (an ingest, an export, a report, a poll), and the
    # sources' faults must have bitten while reports went out, or the scenario proves little.
    assert sum(interrupted.values()) >= kills // 3, (kills, interrupted)
    assert sum(bitten.values()) > 0, bitten
