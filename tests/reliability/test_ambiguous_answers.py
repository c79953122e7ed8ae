"""Scenario 8: answers to the voucher POST that say nothing about what Tripletex did.

Tripletex has no idempotency key: after an ambiguous answer the only way to know whether our
voucher was booked is to search for it by ``externalVoucherNumber`` (our export id). Three ways
that goes wrong, each on the real stack (API server, Celery worker processes, a private Redis,
the Tripletex sandbox as an HTTP server):

- ``test_ambiguous_answer_then_a_search_that_lags``: the voucher is stored, then the answer is a
  gateway's 502 or 504, a 201 whose body is cut off, a connection closed before the body, or no
  answer within the read timeout; and the search shows a stored voucher only ``SEARCH_DELAY_S``
  later (a search index behind the store). A lookup that finds nothing right after the POST
  proves nothing. Meanwhile DELETE is sent again and again for half of the exports from the
  moment their voucher is in the ledger: it must never cancel a booked export.
- ``test_post_slower_than_the_lease``: the POST takes longer than the lease (a slow commit, or
  the voucher stored and the answer held while the search lags), while the sweeper
  (``AIC_STUCK_AFTER_SECONDS=1``, run every 0.5 s) and duplicate deliveries of the export's
  message try to start a second attempt.
- ``test_session_refused_after_a_stored_unanswered_post``: the voucher is stored and the answer
  lost (connection closed, or held past the read timeout); from that moment Tripletex refuses
  every new session (401 or 403: the employee token was rotated) for ``REFUSAL_S``, then the
  operator has fixed it. An export that may own a booked voucher must not end ``failed``.

Expected in every case: each export ends ``success`` with exactly one voucher, the one it names
(``check_invariants(..., require_terminal=True)``; a failed or cancelled export holding a voucher
is a violation there too).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from shared.queue import TASK_EXPORT, TASK_SWEEP
from tests.reliability.conftest import scaled
from tests.reliability.invariants import TERMINAL, check_invariants, load_exports

pytestmark = pytest.mark.timeout(600)

# How long a stored voucher stays invisible to the searches. The posting protocol trusts a
# lookup that finds nothing only after the POST's deadline plus the target's search delay, so
# the stacks tell it this figure. The setting's name is the protocol's; the sandbox knob is ours.
SEARCH_DELAY_S = 8
SEARCH_DELAY_SETTING = "AIC_TRIPLETEX_SEARCH_DELAY_SECONDS"
PROTOCOL_ENV = {SEARCH_DELAY_SETTING: str(SEARCH_DELAY_S)}
HELD_PAST_READ_TIMEOUT_MS = 6000  # the test settings' read timeout is 5 s
REFUSAL_S = 10


@dataclass
class Variant:
    name: str
    faults: dict
    exports: int
    # Faults to apply once the company's first voucher POST has arrived (None: keep them).
    then: dict | None = None
    tenants: list = field(default_factory=list)
    export_ids: list[str] = field(default_factory=list)


def _create_exports(tenant, count: int, amount: int) -> list[str]:
    expense_ids = [tenant.add_expense(f"{amount + i}.00", account="7140", vat_code=None)
                   for i in range(count)]
    if count == 1:
        return [tenant.export(expense_ids[0])]
    response = tenant.api.post("/api/v1/accounting-exports/batch", json={
        "expense_ids": expense_ids, "target_system": "tripletex"})
    assert response.status_code == 202, response.text
    return response.json()["export_ids"]


def _after_first_post(sandbox, tenant, faults: dict, stop: threading.Event,
                      arrived: dict[str, float]) -> None:
    """Replace the company's faults as soon as its first voucher POST has arrived (the POST
    already on its way keeps the faults it met); note when that was."""
    while not stop.is_set():
        if sandbox.request_counts(tenant.company_id).get("POST /ledger/voucher", 0) >= 1:
            arrived[tenant.company_id] = time.monotonic()
            sandbox.set_faults(tenant.company_id, **faults)
            return
        time.sleep(0.05)


def _note_outcomes(figures, variants, tenants) -> list:
    """The figures every scenario of this file notes; returns the exports' rows."""
    rows = load_exports([t.organization_id for t in tenants])
    figures.note("outcome per variant", _outcomes(variants))
    figures.note("exports by number of vouchers in the ledger, per variant",
                 _vouchers_per_export(variants))
    figures.note("how the exports got their voucher", dict(_found_by(rows)))
    return rows


def _outcomes(variants: list[Variant]) -> dict[str, dict[str, int]]:
    result = {}
    for variant in variants:
        rows = load_exports([t.organization_id for t in variant.tenants])
        result[variant.name] = dict(Counter(r.status for r in rows))
    return result


def _vouchers_per_export(variants: list[Variant]) -> dict[str, dict[int, int]]:
    """Per variant: how many exports have 0, 1, 2... vouchers in the ledger."""
    result = {}
    for variant in variants:
        counts: Counter = Counter()
        for tenant in variant.tenants:
            numbers = Counter(v.get("externalVoucherNumber") for v in tenant.vouchers())
            rows = load_exports([tenant.organization_id])
            counts.update(numbers.get(r.id, 0) for r in rows)
        result[variant.name] = dict(sorted(counts.items()))
    return result


def _found_by(rows) -> Counter:
    """How each export got its voucher: its own answer, or a later lookup."""
    how: Counter = Counter()
    for row in rows:
        kinds = {e["kind"] for e in row.events}
        how["found by a lookup" if "found_existing_voucher" in kinds else
            "read from the POST's answer" if "posted_to_target" in kinds else "no voucher"] += 1
    return how


# --- 1. ambiguous answers, and a search that lags behind the store ---------------------------

def test_ambiguous_answer_then_a_search_that_lags(stacks, tripletex_sandbox, figures):
    """Stored, then 502/504/garbled 201/connection lost/no answer; the search lags 8 s; DELETEs."""
    # A retry base of 1 s (production: 5 s) keeps the attempts of a scenario close together and
    # still leaves the wait between attempts long enough for a DELETE to land in it.
    stack = stacks("ambiguous", env={**PROTOCOL_ENV, "AIC_RETRY_BASE_SECONDS": "1"})
    stack.start_api()
    stack.workers.start()
    stack.workers.start()
    n = scaled(4, minimum=2)
    lag = {"search_delay_ms": SEARCH_DELAY_S * 1000}
    variants = [
        Variant("stored, then a gateway's 502", {
            "commit_then_fail": n, "commit_then_fail_status": 502, **lag}, n),
        Variant("stored, then a gateway's 504", {
            "commit_then_fail": n, "commit_then_fail_status": 504, **lag}, n),
        Variant("stored, then 201 with a cut-off body", {"commit_then_garble": n, **lag}, n),
        Variant("stored, then the connection closed before the body", {
            "commit_then_drop": n, **lag}, n),
        Variant("stored, then no answer within the read timeout", {
            "post_hold_ms": HELD_PAST_READ_TIMEOUT_MS, **lag}, n),
    ]
    for index, variant in enumerate(variants):
        tenant = stack.new_tenant(tripletex_sandbox, f"Ambiguous {index} AS")
        variant.tenants.append(tenant)
        tripletex_sandbox.set_faults(tenant.company_id, **variant.faults)
        figures.fault(variant.name, n)
    figures.fault(f"search delay of {SEARCH_DELAY_S} s", len(variants))

    deletes: Counter = Counter()
    deletes_lock = threading.Lock()
    stop = threading.Event()

    def cancel_while_booked(tenant, export_ids: list[str]) -> None:
        """From the moment an export's voucher is in the ledger until the export ends, DELETE
        it every 0.2 s. Any 200 cancels an export whose voucher is booked."""
        booked: set[str] = set()
        done: set[str] = set()
        rounds = 0
        while not stop.is_set() and len(done) < len(export_ids):
            numbers = {v.get("externalVoucherNumber") for v in tripletex_sandbox.vouchers(
                tenant.company_id)}
            booked |= {e for e in export_ids if e in numbers}
            for export_id in booked - done:
                response = tenant.api.delete(f"/api/v1/accounting-exports/{export_id}")
                with deletes_lock:
                    deletes[response.status_code] += 1
                if response.status_code == 200:
                    done.add(export_id)
                elif rounds % 5 == 0 and tenant.get(export_id)["status"] in TERMINAL:
                    done.add(export_id)
            rounds += 1
            time.sleep(0.2)

    cancellers = []
    for amount, variant in zip(range(100, 1000, 100), variants):
        tenant = variant.tenants[0]
        variant.export_ids = _create_exports(tenant, n, amount)
        cancellers.append(threading.Thread(
            target=cancel_while_booked, args=(tenant, variant.export_ids[: n // 2]),
            name=f"cancel-{amount}"))
    for thread in cancellers:
        thread.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(thread.is_alive() for thread in cancellers):
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in cancellers:
            thread.join(timeout=30)
    figures.fault("DELETE sent while the export's voucher was booked", sum(deletes.values()))
    figures.note("DELETE answers while the voucher was booked", dict(deletes))

    tenants = [t for v in variants for t in v.tenants]
    try:
        check_invariants(tenants, figures, settle_timeout=120, require_terminal=True)
    finally:
        figures.note("outcome per variant", _outcomes(variants))
        figures.note("exports by number of vouchers in the ledger, per variant",
                     _vouchers_per_export(variants))
        figures.note("how the exports got their voucher", dict(_found_by(
            load_exports([t.organization_id for t in tenants]))))
    assert deletes[200] == 0, f"{deletes[200]} DELETE(s) cancelled an export whose voucher is booked"
    problems = {name: outcome for name, outcome in _outcomes(variants).items()
                if outcome != {"success": n}}
    assert not problems, problems


# --- 2. a POST slower than the lease --------------------------------------------------------

def test_post_slower_than_the_lease(stacks, tripletex_sandbox, figures):
    """The POST outlasts the lease while the sweeper and duplicate deliveries push a 2nd attempt."""
    # The read timeout bounds each read, not the exchange (and the rate limiter's wait comes on
    # top): a POST can outlast the lease. Here the read timeout is 12 s against a 4 s lease.
    stack = stacks("slow-post", env={**PROTOCOL_ENV, "AIC_STUCK_AFTER_SECONDS": "1",
                                     "AIC_HTTP_READ_TIMEOUT": "12"})
    stack.start_api()
    stack.workers.start()
    stack.workers.start()
    per_variant = scaled(2)
    slow_ms = 7000
    variants = [
        # Tripletex commits 7 s after the request arrived (abandoned if the client left first).
        Variant("slow commit: stored 7 s after the POST arrived", {"post_delay_ms": slow_ms}, 1,
                then={}),
        # Stored at once, answered 7 s later, visible to the search after 8 s.
        Variant("stored at once, answered after 7 s, searchable after 8 s", {
            "post_hold_ms": slow_ms, "search_delay_ms": SEARCH_DELAY_S * 1000}, 1,
            then={"search_delay_ms": SEARCH_DELAY_S * 1000}),
    ]
    stop = threading.Event()
    first_post_arrived: dict[str, float] = {}
    switchers = []
    for v_index, variant in enumerate(variants):
        for index in range(per_variant):
            tenant = stack.new_tenant(tripletex_sandbox, f"Slow POST {v_index}.{index} AS")
            variant.tenants.append(tenant)
            tripletex_sandbox.set_faults(tenant.company_id, **variant.faults)
            figures.fault(variant.name)
            switchers.append(threading.Thread(
                target=_after_first_post,
                args=(tripletex_sandbox, tenant, variant.then, stop, first_post_arrived)))
    for thread in switchers:
        thread.start()
    exports: dict[str, object] = {}
    for amount, variant in zip(range(300, 1000, 100), variants):
        for tenant in variant.tenants:
            [export_id] = _create_exports(tenant, 1, amount)
            variant.export_ids.append(export_id)
            exports[export_id] = tenant

    # Until every export has ended: the sweeper every 0.5 s and a duplicate of each export's
    # message, as a redelivery or a second beat would send.
    pushes = Counter()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            open_ids = [e for e, t in exports.items() if t.get(e)["status"] not in TERMINAL]
            if not open_ids:
                break
            stack.send_task(TASK_SWEEP, queue="maintenance")
            pushes["sweeper run"] += 1
            for export_id in open_ids:
                stack.send_task(TASK_EXPORT, args=[export_id])
                pushes["duplicate delivery"] += 1
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in switchers:
            thread.join(timeout=10)
    for name, count in pushes.items():
        figures.fault(name, count)
    # The exports may have ended while a first, slow POST is still with Tripletex: the ledger is
    # read only once every first POST has had its 7 s (and a little more).
    if first_post_arrived:
        time.sleep(max(0.0, max(first_post_arrived.values()) + slow_ms / 1000 + 1.5
                       - time.monotonic()))

    tenants = [t for v in variants for t in v.tenants]
    try:
        check_invariants(tenants, figures, settle_timeout=90, require_terminal=True)
    finally:
        rows = _note_outcomes(figures, variants, tenants)
        figures.note("attempts per export", sorted(r.attempts for r in rows))
    problems = {name: outcome for name, outcome in _outcomes(variants).items()
                if outcome != {"success": per_variant}}
    assert not problems, problems


# --- 3. sessions refused after a stored, unanswered POST ------------------------------------

def test_session_refused_after_a_stored_unanswered_post(stacks, tripletex_sandbox, figures):
    """Stored, answer lost; then every new session is refused (401/403) for 10 s, then fixed."""
    stack = stacks("refused", env=PROTOCOL_ENV)
    stack.start_api()
    stack.workers.start()
    per_variant = scaled(2)
    variants = [
        Variant(f"connection closed after storing, then sessions refused 401 for {REFUSAL_S} s", {
            "commit_then_drop": 1,
            "session_refusal": {"status": 401, "seconds": REFUSAL_S, "after_post": True}}, 1),
        Variant(f"no answer within the read timeout, then sessions refused 403 for {REFUSAL_S} s",
                {"post_hold_ms": HELD_PAST_READ_TIMEOUT_MS,
                 "session_refusal": {"status": 403, "seconds": REFUSAL_S, "after_post": True}},
                1),
    ]
    for v_index, variant in enumerate(variants):
        for index in range(per_variant):
            tenant = stack.new_tenant(tripletex_sandbox, f"Refused {v_index}.{index} AS")
            variant.tenants.append(tenant)
            tripletex_sandbox.set_faults(tenant.company_id, **variant.faults)
            figures.fault(variant.name)
    for amount, variant in zip(range(500, 1000, 100), variants):
        for tenant in variant.tenants:
            variant.export_ids += _create_exports(tenant, 1, amount)
    tenants = [t for v in variants for t in v.tenants]

    # Until every refusal window has closed (each opens when its company stores the voucher):
    # no export whose voucher is booked may have failed.
    stored: dict[str, float] = {}  # organization id -> when its voucher was seen in the ledger
    failed_while_booked: list[str] = []
    window_end = time.monotonic() + 60
    while time.monotonic() < window_end:
        for tenant in tenants:
            if tenant.organization_id not in stored and tenant.vouchers():
                stored[tenant.organization_id] = time.monotonic()
        if len(stored) == len(tenants):
            window_end = min(window_end, max(stored.values()) + REFUSAL_S + 1)
        for row in load_exports(list(stored)):
            if row.status == "failed" and row.id not in failed_while_booked:
                failed_while_booked.append(row.id)
        time.sleep(0.5)
    figures.note("exports failed while their voucher was booked and sessions were refused",
                 len(failed_while_booked))
    for tenant in tenants:
        tripletex_sandbox.clear_faults(tenant.company_id)  # the window has closed anyway

    try:
        check_invariants(tenants, figures, settle_timeout=90, require_terminal=True)
    finally:
        rows = _note_outcomes(figures, variants, tenants)
        figures.note("last error of failed exports", sorted(
            {(r.events[-1]["reason"] or "")[:160] for r in rows if r.status == "failed"}))
    assert not failed_while_booked, (
        f"{len(failed_while_booked)} export(s) failed while their voucher was booked: "
        f"{failed_while_booked}")
    problems = {name: outcome for name, outcome in _outcomes(variants).items()
                if outcome != {"success": per_variant}}
    assert not problems, problems
