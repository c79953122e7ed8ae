"""Two worker processes share one connection's rate limit through Redis: Tripletex sees no 429.

The sandbox company enforces a real limit (10 requests per 1-second window, per employee token,
announced in X-Rate-Limit-* headers, 429 beyond it). The connection's limiter is set under it
(5 requests/s, spread out; see LIMITER for why not closer). Two worker processes export one batch. The control run is the same batch with the limiter switched off: it must see 429s,
which shows the limited run's "zero 429s" is a result, not a test that cannot fail.
"""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest

pytestmark = pytest.mark.timeout(240)

SERVER_LIMIT = {"limit": 10, "window_seconds": 1, "send_reset_header": True}
# 5/s, spread out (burst 1). The server counts arrivals in fixed 1-second windows, while the
# limiter spaces permits: a request leaves some time after its permit. A worker process that
# stalls (CPU contention on a busy CI machine) sends the permits its 4 threads hold late, on top
# of the window's on-time ones. 8/s with a burst of 2 filled a window exactly (2 + 8 = 10) and
# failed so (one 429, after a 3.5 s stall, on 0cc313e and later alike); 1 + 5 leaves room for a
# whole stalled worker's 4 requests. A burst of 8 would let two whole bursts land in one window.
LIMITER = {"requests_per_second": 5, "burst": 1}
COUNT = 80
VOUCHER_POST = "POST /ledger/voucher"


@pytest.fixture(scope="module")
def two_workers(workers):
    """Exactly two worker processes for this module; one default worker is left running.

    Four threads each: a request waits for its turn about (threads / rate) seconds, and the
    tests' export lease (4 s) and broker visibility timeout (6 s) are short. An export that
    waited longer would be delivered a second time; that is safe (the second delivery looks its
    voucher up before posting) but it is not what this module measures.
    """
    workers.stop_all()
    workers.start(concurrency=4)
    workers.start(concurrency=4)
    yield workers
    workers.stop_all()
    workers.start()  # the pool as the other modules expect it


def _set_rate_limit(admin, tenant, rate_limit) -> None:
    response = admin.put(
        f"/api/v1/admin/organizations/{tenant.organization_id}/connections/tripletex",
        json={"base_url": tenant.sandbox.base_url, "options": {"rate_limit": rate_limit}})
    assert response.status_code == 200, response.text
    assert response.json()["options"] == {"rate_limit": rate_limit}


def _export_batch(tenant) -> tuple[dict, list[str], float]:
    expense_ids = [tenant.add_expense(f"{100 + i}.25", account="7140", vat_code=None)
                   for i in range(COUNT)]
    tenant.sandbox.reset_request_counts(tenant.company_id)
    started = time.monotonic()
    response = tenant.api.post("/api/v1/accounting-exports/batch",
                               json={"expense_ids": expense_ids, "target_system": "tripletex"})
    assert response.status_code == 202, response.text
    batch = response.json()
    deadline = time.monotonic() + 90
    while True:
        progress = tenant.api.get(f"/api/v1/accounting-exports/batch/{batch['batch_id']}").json()
        if progress["done"]:
            return progress, batch["export_ids"], time.monotonic() - started
        assert time.monotonic() < deadline, progress
        time.sleep(0.25)


def _events(tenant, export_ids: list[str]) -> list[dict]:
    return [event for export_id in export_ids for event in tenant.events(export_id)]


def _retries(events: list[dict]) -> list[dict]:
    return [event["data"] or {} for event in events if event["kind"] == "retry_scheduled"]


def _max_per_second(vouchers: list[dict]) -> int:
    """The most vouchers the sandbox stored within any one second (its own clock)."""
    times = sorted(datetime.fromisoformat(v["createdAt"]).timestamp() for v in vouchers)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_two_workers_under_a_shared_limit_see_no_429(admin, tenant, two_workers):
    tenant.sandbox.set_faults(tenant.company_id, rate_limit=SERVER_LIMIT)
    _set_rate_limit(admin, tenant, LIMITER)

    progress, export_ids, elapsed = _export_batch(tenant)

    requests = tenant.sandbox.request_counts(tenant.company_id)
    events = _events(tenant, export_ids)
    retries = _retries(events)
    vouchers = tenant.vouchers()
    figures = {"exports": COUNT, "seconds": round(elapsed, 1),
               "requests": sum(requests.values()),
               "requests_per_second": round(sum(requests.values()) / elapsed, 2),
               "max_vouchers_in_one_second": _max_per_second(vouchers),
               "retries": len(retries),
               "redelivered": sum(1 for e in events if e["kind"] == "started") - COUNT,
               "429s": sum(1 for r in retries if r.get("status") == 429)}
    print(f"\nlimited run: {figures} requests={requests}")
    assert progress["counts"].get("success") == COUNT, progress
    assert figures["429s"] == 0, retries
    assert retries == []  # nor a local "waited too long": all succeeded on the first attempt
    # Server side: each voucher was POSTed exactly once (a 429'd POST would count too).
    assert requests[VOUCHER_POST] == COUNT, requests
    assert len({v["externalVoucherNumber"] for v in vouchers}) == COUNT
    # The shared budget was respected, and it was the bottleneck: 8 threads kept it busy.
    rate = LIMITER["requests_per_second"]
    assert 0.7 * rate <= figures["requests_per_second"] <= rate * 1.05, figures
    # max_vouchers_in_one_second is printed, not asserted: it slides over arrival times, which
    # network and CPU jitter bunch up; the server's own windows are judged by the 429 count.


def test_control_without_the_limiter_does_see_429s(admin, tenant, two_workers):
    tenant.sandbox.set_faults(tenant.company_id, rate_limit=SERVER_LIMIT)
    _set_rate_limit(admin, tenant, False)

    progress, export_ids, elapsed = _export_batch(tenant)

    requests = tenant.sandbox.request_counts(tenant.company_id)
    retries = _retries(_events(tenant, export_ids))
    too_many = [r for r in retries if r.get("status") == 429]
    print(f"\ncontrol run: {COUNT} exports in {elapsed:.1f}s, {sum(requests.values())} requests, "
          f"{len(too_many)} retries after a 429, counts={progress['counts']}")
    assert too_many, "the same batch without a limiter should run into the server's limit"
    assert requests[VOUCHER_POST] > COUNT, requests  # some POSTs were answered with 429


def _second_tenant(admin, tripletex_sandbox, api_url: str):
    """Another organization with its own sandbox company and connection (its own budget)."""
    from tests.fixtures.tenants import Tenant

    org = admin.post("/api/v1/admin/organizations", json={"name": "Other AS"}).json()
    company = tripletex_sandbox.create_company("Other AS")
    response = admin.put(
        f"/api/v1/admin/organizations/{org['organization_id']}/connections/tripletex",
        json={"base_url": tripletex_sandbox.base_url,
              "credentials": {"consumer_token": company["consumer_token"],
                              "employee_token": company["employee_token"], "company_id": "0"}})
    assert response.status_code == 200, response.text
    return Tenant(api=httpx.Client(base_url=api_url, timeout=30,
                                   headers={"Authorization": f"Bearer {org['api_key']}"}),
                  organization_id=org["organization_id"], api_key=org["api_key"],
                  company_id=company["company_id"], sandbox=tripletex_sandbox)


def _post_batch(tenant, expense_ids: list[str]) -> dict:
    response = tenant.api.post("/api/v1/accounting-exports/batch",
                               json={"expense_ids": expense_ids, "target_system": "tripletex"})
    assert response.status_code == 202, response.text
    return response.json()


def test_a_tenant_out_of_budget_does_not_hold_the_workers(admin, tenant, two_workers,
                                                           tripletex_sandbox, api_server):
    """Tenant A's batch (1 request/s: 16 exports take ~20 s) is queued before tenant B's. Before
    the admission, all 8 threads took A's exports and slept on A's budget (their turns were
    within the 30 s wait bound), so B's exports waited in the queue behind A's. Now A's exports
    beyond its next turn are re-scheduled and hand the thread back: B finishes at once, while A
    is still working through its budget, and no export spent more than its one attempt.
    The admission is on by default (``AIC_RATE_LIMIT_ADMIT_WAIT_SECONDS`` 0.5)."""
    other = _second_tenant(admin, tripletex_sandbox, api_server)
    try:
        _set_rate_limit(admin, tenant, {"requests_per_second": 1, "burst": 1})
        slow = [tenant.add_expense(f"{100 + i}.25", account="7140", vat_code=None)
                for i in range(16)]
        fast = [other.add_expense(f"{200 + i}.25", account="7140", vat_code=None)
                for i in range(4)]
        slow_batch = _post_batch(tenant, slow)
        fast_batch = _post_batch(other, fast)
        posted = time.monotonic()
        while True:
            progress = other.api.get(
                f"/api/v1/accounting-exports/batch/{fast_batch['batch_id']}").json()
            if progress["done"]:
                break
            assert time.monotonic() - posted < 8, ("tenant B waited behind tenant A's budget",
                                                    progress)
            time.sleep(0.2)
        fast_took = time.monotonic() - posted
        slow_progress = tenant.api.get(
            f"/api/v1/accounting-exports/batch/{slow_batch['batch_id']}").json()
        assert progress["counts"].get("success") == 4, progress
        # A's backlog was still there: B did not simply come after it.
        assert slow_progress["counts"].get("processing", 0) >= 4, (slow_progress, fast_took)

        deadline = time.monotonic() + 90
        while not tenant.api.get(
                f"/api/v1/accounting-exports/batch/{slow_batch['batch_id']}").json()["done"]:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        for export_id in slow_batch["export_ids"]:
            export = tenant.get(export_id)
            assert export["status"] == "success", export
            assert export["attempts"] == 1, export  # waiting for the budget cost no attempt
        assert len(tenant.vouchers()) == 16
        print(f"\ntenant B's 4 exports done {fast_took:.1f}s after its batch, while tenant A had "
              f"{slow_progress['counts']}")
    finally:
        other.api.close()
