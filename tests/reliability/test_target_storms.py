"""Scenario 4: Tripletex storms - 429s (with and without hints), 5xx, timeouts, slow answers.

Each storm hits its own tenant (its own sandbox company and its own fault knobs) and all run at
once on one stack with two worker processes. The storms are shorter than the retry budget
(``AIC_MAX_ATTEMPTS=4``, backoff up to 3 s in the test settings), so every export must end in
success, booked once; the invariants hold either way. Two tenants put the worst case on the
*last* attempt: after three 503s, the fourth POST is stored by Tripletex and then goes
unanswered (held past our read timeout) or answered 500. Giving up there without looking would
leave a failed export with a voucher in the books.

The retry delays are checked against the hints: after a 429 with ``Retry-After`` or
``X-Rate-Limit-Reset`` the next attempt waits at least that long (capped at
``AIC_RETRY_MAX_SECONDS``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.reliability.conftest import scaled
from tests.reliability.invariants import check_invariants, load_exports

pytestmark = pytest.mark.timeout(600)

POST_VOUCHER = {"method": "POST", "path_contains": "/ledger/voucher"}


@dataclass
class Storm:
    name: str
    exports: int
    faults: dict
    injected: dict = field(default_factory=dict)  # fault name -> how many were set up
    # Applied this long after the exports were created (a storm that ends), if given.
    then: tuple[float, dict] | None = None
    hint_seconds: float = 0  # the least wait a 429 of this storm asks for
    # Random 5xx can outlast the retry budget of an unlucky export: it may end failed ("gave up
    # after 4 attempts"), never booked. Every other storm is shorter than the budget.
    may_exhaust_retries: bool = False


def _storms() -> list[Storm]:
    n = scaled(8)
    return [
        Storm("429 with Retry-After: 2", n, {"fail_next": [
            {"status": 429, "count": n, "retry_after": 2, **POST_VOUCHER}]},
            {"429 with Retry-After": n}, hint_seconds=2),
        Storm("429 with X-Rate-Limit-Reset: 2 only", n, {"fail_next": [
            {"status": 429, "count": n, "reset_header": True, "reset_seconds": 2,
             **POST_VOUCHER}]}, {"429 with X-Rate-Limit-Reset": n}, hint_seconds=2),
        Storm("429 without any hint", n, {"fail_next": [
            {"status": 429, "count": n, **POST_VOUCHER}]}, {"429 without hint": n}),
        Storm("rate limit of 8 requests per 2 s window", n, {"rate_limit": {
            "limit": 8, "window_seconds": 2}}, {"rate-limit windows": 1}),
        Storm("5xx burst on every endpoint + 30% 503 on voucher POSTs", n, {
            "error_rate": 0.3, "seed": 7, "fail_next": [
                {"status": 500, "count": n // 2}, {"status": 502, "count": n // 2},
                {"status": 503, "count": n // 2}, {"status": 504, "count": n // 2}]},
            {"5xx (500/502/503/504)": 4 * (n // 2), "503 at random (30% of POSTs)": 1},
            may_exhaust_retries=True),
        Storm("timeouts: 6 s per call for 8 s (read timeout 5 s)", n, {"latency_ms": 6000},
              {"timeouts (6 s latency window)": 1}, then=(8.0, {})),
        Storm("slow: 1.5 s per call", n, {"latency_ms": 1500}, {"slow answers": 1}),
        Storm("stored, then HTTP 500", n, {"commit_then_fail": n}, {"stored then 500": n}),
        Storm("stored, then held past the read timeout", n, {"post_hold_ms": 6000},
              {"stored then no answer": 1}, then=(12.0, {})),
        Storm("last attempt: 3 x 503, then stored and unanswered", 1, {
            "post_hold_ms": 6000, "fail_next": [{"status": 503, "count": 3, **POST_VOUCHER}]},
            {"503 before the last attempt": 3, "stored then no answer (last attempt)": 1},
            then=(20.0, {})),
        Storm("last attempt: 3 x 503, then stored and 500", 1, {
            "fail_next": [{"status": 503, "count": 3, **POST_VOUCHER}], "commit_then_fail": 1},
            {"503 before the last attempt": 3, "stored then 500 (last attempt)": 1}),
    ]


def test_tripletex_storms(stacks, tripletex_sandbox, figures):
    """Bursts of 429 (with and without hints), 5xx, timeouts and slow answers from Tripletex."""
    stack = stacks("storms")
    stack.start_api()
    stack.workers.start()
    stack.workers.start()
    storms = _storms()
    tenants = [stack.new_tenant(tripletex_sandbox, f"Storm {i} AS") for i in range(len(storms))]
    for storm, tenant in zip(storms, tenants):
        tripletex_sandbox.set_faults(tenant.company_id, **storm.faults)
        for name, count in storm.injected.items():
            figures.fault(name, count)

    def later(tenant, delay: float, faults: dict) -> None:
        time.sleep(delay)
        tripletex_sandbox.set_faults(tenant.company_id, **faults)

    timers = [threading.Thread(target=later, args=(t, *s.then)) for s, t in zip(storms, tenants)
              if s.then is not None]
    expected: dict[str, list[str]] = {}
    for storm, tenant in zip(storms, tenants):
        expense_ids = [tenant.add_expense(f"{700 + i}.00", account="7140", vat_code=None)
                       for i in range(storm.exports)]
        response = tenant.api.post("/api/v1/accounting-exports/batch", json={
            "expense_ids": expense_ids, "target_system": "tripletex"})
        assert response.status_code == 202, response.text
        expected[storm.name] = response.json()["export_ids"]
    for timer in timers:
        timer.start()
    for timer in timers:
        timer.join()

    check_invariants(tenants, figures, settle_timeout=150, require_terminal=True)

    problems = []
    causes: Counter = Counter()
    for storm, tenant in zip(storms, tenants):
        rows = load_exports([tenant.organization_id])
        statuses = Counter(r.status for r in rows)
        gave_up = [r for r in rows if r.status == "failed" and storm.may_exhaust_retries
                   and r.attempts == 4 and "gave up after 4 attempts" in (
                       [e for e in r.events if e["to"] == "failed"][-1]["reason"] or "")]
        if statuses - Counter({"failed": len(gave_up)}) != Counter({"success": storm.exports
                                                                     - len(gave_up)}):
            problems.append(f"{storm.name}: {dict(statuses)}")
        if gave_up:
            figures.note(f"'{storm.name}': exports that exhausted their 4 attempts (failed, "
                         "nothing booked)", len(gave_up))
        retries = [e for r in rows for e in r.events if e["kind"] == "retry_scheduled"]
        for event in retries:
            data = event["data"] or {}
            causes[f"{data.get('status') or data.get('code')}"] += 1
        hinted = [e["data"]["in_seconds"] for e in retries if (e["data"] or {}).get("status") == 429]
        if storm.hint_seconds and min(hinted, default=storm.hint_seconds) < storm.hint_seconds:
            problems.append(f"{storm.name}: retried after {min(hinted)} s, before the "
                            f"{storm.hint_seconds} s the server asked for")
        if storm.hint_seconds:
            figures.note(f"'{storm.name}': shortest wait after a 429", min(hinted, default=None))
        if storm.name.startswith("last attempt"):
            [row] = rows
            kinds = [e["kind"] for e in row.events]
            figures.note(f"'{storm.name}' event log",
                         " > ".join(k for k in kinds if k not in ("created", "queued")))
    figures.note("target errors the workers retried, by HTTP status or error code", dict(causes))
    assert not problems, problems
