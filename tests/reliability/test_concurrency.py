"""Scenario 6: races between requests, and between requests and the worker.

- the same expense exported by 10 simultaneous requests (and by a batch racing single requests):
  one 202, the others 409 ``already_exported``, never a 5xx;
- 5 simultaneous re-exports of a booked expense: one new export;
- DELETE racing a worker that is starting on the export (sent 0-80 ms after the create, Tripletex
  answering in 40 ms): either 200 and the export is cancelled and never booked, or 409
  ``not_cancellable`` and it is booked once;
- the PUT status callback racing the worker while its POST is on the way (Tripletex holds its
  answer 300 ms after storing the voucher): ``success`` and ``failed`` callbacks. Whoever wins,
  the export's story is legal, and a failed export holds no voucher.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from tests.reliability.conftest import scaled
from tests.reliability.invariants import check_invariants, load_exports

pytestmark = pytest.mark.timeout(600)


def _at_once(calls: list) -> list:
    """Run the calls in threads released together; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index: int, call) -> None:
        barrier.wait()
        results[index] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def _create(tenant, expense_id: str, **extra):
    return lambda: tenant.api.post("/api/v1/accounting-exports", json={
        "expense_id": expense_id, "target_system": "tripletex", **extra})


def test_concurrent_requests_and_worker_races(stacks, tripletex_sandbox, figures):
    """Same expense exported 10 times at once; cancel and PUT callback racing the worker."""
    stack = stacks("races")
    stack.start_api()
    stack.workers.start()
    stack.workers.start()
    rng = random.Random(6)
    problems: list[str] = []

    # --- duplicates: 10 at once, batch vs singles, re-exports --------------------------------
    dup = stack.new_tenant(tripletex_sandbox, "Duplicates AS")
    answers: Counter = Counter()
    for i in range(scaled(5)):
        expense_id = dup.add_expense(f"{40 + i}.00", account="7140", vat_code=None)
        results = _at_once([_create(dup, expense_id) for _ in range(10)])
        figures.fault("10 simultaneous creates of one expense")
        codes = Counter(r.status_code for r in results)
        answers.update(codes)
        if codes != Counter({202: 1, 409: 9}):
            problems.append(f"10 creates of {expense_id}: {dict(codes)} {results[0].text}")
        for r in results:
            if r.status_code == 409 and r.json()["error"]["code"] != "already_exported":
                problems.append(f"409 with code {r.json()['error']['code']}")
    for i in range(scaled(3)):
        ids = [dup.add_expense(f"{60 + i}.{j}0", account="7140", vat_code=None)
               for j in range(3)]
        batch = lambda: dup.api.post("/api/v1/accounting-exports/batch", json={  # noqa: E731
            "expense_ids": ids, "target_system": "tripletex"})
        results = _at_once([batch, _create(dup, ids[0]), _create(dup, ids[1])])
        figures.fault("a batch racing two single creates")
        codes = [r.status_code for r in results]
        answers.update(codes)
        # Either the batch won (both singles refused) or a single won (the batch, all or
        # nothing, refused); never a 5xx, never two live exports of one expense.
        if not (codes[0] == 202 and codes[1:] == [409, 409] or codes[0] == 409
                and 202 in codes[1:]):
            problems.append(f"batch vs singles: {codes}")
    booked = dup.add_expense("99.00", account="7140", vat_code=None)
    first = dup.export(booked)
    dup.wait_for(first)
    results = _at_once([_create(dup, booked, reexport=True) for _ in range(5)])
    figures.fault("5 simultaneous re-exports of a booked expense")
    codes = Counter(r.status_code for r in results)
    answers.update(codes)
    if codes != Counter({202: 1, 409: 4}):
        problems.append(f"5 re-exports: {dict(codes)}")
    figures.note("answers to the racing creates", dict(answers))

    # --- DELETE racing the worker's start ----------------------------------------------------
    cancel = stack.new_tenant(tripletex_sandbox, "Cancel race AS")
    tripletex_sandbox.set_faults(cancel.company_id, latency_ms=40)
    cancel_outcomes: Counter = Counter()
    for i in range(scaled(24)):
        export_id = cancel.export(cancel.add_expense(f"{10 + i}.00", account="7140",
                                                     vat_code=None))
        time.sleep(rng.uniform(0, 0.08))
        response = cancel.api.delete(f"/api/v1/accounting-exports/{export_id}")
        figures.fault("DELETE racing the worker")
        if response.status_code == 200:
            cancel_outcomes["cancelled (200)"] += 1
        elif response.status_code == 409 and response.json()["error"]["code"] == "not_cancellable":
            cancel_outcomes["too late (409 not_cancellable)"] += 1
        else:
            problems.append(f"DELETE {export_id}: {response.status_code} {response.text}")
    figures.note("DELETE outcomes", dict(cancel_outcomes))

    # --- PUT callback racing the worker's POST -------------------------------------------------
    callback = stack.new_tenant(tripletex_sandbox, "Callback race AS")
    tripletex_sandbox.set_faults(callback.company_id, latency_ms=40, post_hold_ms=300)
    put_outcomes: Counter = Counter()
    for i in range(scaled(24)):
        export_id = callback.export(callback.add_expense(f"{20 + i}.00", account="7140",
                                                         vat_code=None))
        time.sleep(rng.uniform(0, 0.5))
        if i % 2:
            body = {"status": "success", "external_reference": f"MANUAL-{i}"}
        else:
            body = {"status": "failed", "error_message": "rejected by the accountant"}
        response = callback.api.put(f"/api/v1/accounting-exports/{export_id}", json=body)
        figures.fault(f"PUT {body['status']} racing the worker")
        if response.status_code not in (200, 409) or (
                response.status_code == 409
                and response.json()["error"]["code"] != "illegal_transition"):
            problems.append(f"PUT {export_id}: {response.status_code} {response.text}")
        put_outcomes[f"PUT {body['status']}: {response.status_code}"] += 1
    figures.note("PUT callback outcomes", dict(put_outcomes))

    check_invariants([dup, cancel, callback], figures, settle_timeout=90, require_terminal=True)
    for tenant, name in ((cancel, "cancel race"), (callback, "callback race")):
        figures.note(f"{name}: final statuses",
                     dict(Counter(r.status for r in load_exports([tenant.organization_id]))))
    assert not problems, problems
