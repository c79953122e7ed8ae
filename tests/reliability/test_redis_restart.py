"""Scenario 2: the broker (Redis) restarts in the middle of a run.

The scenario has a Redis of its own (an embedded redis-server on a port that stays the same
across the restart), and its own API server, workers and, where it needs one, beat.

- ``with_aof``: Redis runs with its append-only file and is restarted cleanly (SIGTERM: it
  writes the file and stops) while exports are queued, being worked on and waiting for a retry
  countdown. First only the broker may bring the work back (no beat, no sweep): once it has
  delivered everything it still had, the exports left without a message are counted - kombu's
  Redis transport takes a message (BRPOP) and records it as unacknowledged in a second command,
  so a message between the two when Redis stops exists nowhere but in the worker's memory. They
  must be few (at most one per worker connection, bounded here by the workers' concurrency); then
  the sweeper runs once (``AIC_STUCK_AFTER_SECONDS=5``) and every export must end, booked once.
- ``without_persistence``: Redis runs without persistence and is SIGKILLed: every queued and
  unacknowledged message is gone, and exports are created while it is down (the API commits
  them, the enqueue after commit fails). Beat runs the stuck-export sweeper every second with
  ``AIC_STUCK_AFTER_SECONDS=2``: the database, not the broker, says what is unfinished, and the
  sweeper re-queues it.
"""

from __future__ import annotations

import time

import pytest

from tests.reliability.conftest import scaled
from tests.reliability.invariants import check_invariants, load_exports, wait_settled

pytestmark = pytest.mark.timeout(600)


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _left_without_a_message(org_id: str, quiet: float = 12.0, timeout: float = 120.0) -> list:
    """Once the broker has delivered everything it still had (no export changed for ``quiet``
    seconds: longer than the visibility timeout and the longest retry), the exports in processing
    that nothing will run: no live lease, no retry due later."""
    from shared.db.types import utcnow

    rows = wait_settled([org_id], timeout, quiet=quiet)
    now = utcnow()
    return [r.id for r in rows if r.status == "processing"
            and not (r.lease_expires_at and r.lease_expires_at > now)
            and not (r.next_attempt_at and r.next_attempt_at > now)]


@pytest.mark.parametrize("mode", ["with_aof", "without_persistence"])
def test_redis_restarted_mid_run(stacks, tripletex_sandbox, figures, mode):
    """Redis restarted while exports are queued, in flight and waiting for a retry."""
    persistent = mode == "with_aof"
    concurrency = 4
    env = ({"AIC_STUCK_AFTER_SECONDS": "5"} if persistent else
           {"AIC_STUCK_AFTER_SECONDS": "2", "AIC_SWEEP_INTERVAL_SECONDS": "1",
            "AIC_POLL_INTERVAL_SECONDS": "3600"})
    stack = stacks(mode, env=env, persistent_redis=persistent, worker_concurrency=concurrency)
    stack.start_api()
    stack.workers.start()
    stack.workers.start()
    if not persistent:
        stack.start_beat()
    tenant = stack.new_tenant(tripletex_sandbox, f"Broker {mode} AS")
    # Slow enough to keep a backlog in the queue; some 503s so that retry countdowns are
    # pending (held by a worker, unacknowledged) when Redis goes away.
    tripletex_sandbox.set_faults(tenant.company_id, latency_ms=250, fail_next=[
        {"status": 503, "count": scaled(10), "method": "POST", "path_contains": "/ledger/voucher"}])
    figures.fault("503 on voucher POST", scaled(10))
    total = scaled(40)
    expense_ids = [tenant.add_expense(f"{900 + i}.00", account="7140", vat_code=None)
                   for i in range(total + scaled(5))]
    response = tenant.api.post("/api/v1/accounting-exports/batch", json={
        "expense_ids": expense_ids[:total], "target_system": "tripletex"})
    assert response.status_code == 202, response.text

    def done() -> int:
        return sum(r.status != "processing" for r in load_exports([tenant.organization_id]))

    _wait_until(lambda: done() >= total // 5, 60, "the first exports to finish")
    before = done()
    if persistent:
        stack.redis.stop()  # SIGTERM: Redis writes its append-only file and exits
        figures.fault("Redis stopped cleanly and restarted (AOF)")
    else:
        stack.redis.process.kill()  # a crash: no persistence, every message is gone
        stack.redis.process = None
        figures.fault("Redis SIGKILLed and restarted empty")
    down_created: list[str] = []
    if not persistent:
        # Exports created while the broker is down: committed, but their enqueue fails.
        for expense_id in expense_ids[total:]:
            down_created.append(tenant.export(expense_id))
        figures.note("exports created while Redis was down", len(down_created))
    time.sleep(3)
    stack.redis.start()
    figures.note("exports finished before the restart", f"{before} of {total}")
    if persistent:
        orphans = _left_without_a_message(tenant.organization_id)
        figures.note("exports whose message the restart lost (kombu: between BRPOP and the "
                     "unacked record); recovered by the sweeper", len(orphans))
        assert len(orphans) <= 2 * concurrency, orphans  # the queue itself survived
        stack.send_task("worker.tasks.sweep_stuck_exports", queue="maintenance")
        figures.fault("one sweep after the broker drained")

    check_invariants([tenant], figures, settle_timeout=120, require_terminal=True)
    rows = load_exports([tenant.organization_id])
    assert len(rows) == total + len(down_created)
    assert all(r.status == "success" for r in rows), [r.status for r in rows]
    requeued = sum(1 for r in rows if any(e["kind"] == "requeued" for e in r.events))
    figures.note("exports re-queued by the sweeper (at least once)", requeued)
    for process in stack.workers.running:
        assert process.alive(), f"{process.name} died:\n{process.tail()}"
