"""Scenario 5: Findity's webhooks duplicated, late and missing; its API failing.

Each case is a Findity organization of its own (with its own Tripletex company), all running at
once on one stack:

- duplicate: every webhook sent five times at once, and the same body delivered again, three
  times, after the package was booked and reported;
- late: the webhook is lost, the poll (beat, every 2 s here) finds the package, and then the
  webhook arrives after all;
- missing, while listing fails: no webhook ever comes, and the first poll gets a 503;
- updatestatus failing: reports refused with 503 for a while (updatestatus_down), then a 500
  and a 429 with Retry-After;
- Findity flaky while a package is fetched: 503s on the voucher package and receipts, and 20 %
  of all calls failing at random. Ingestion may give up after its 4 attempts; the poll picks
  the package up again once it is ``AIC_SOURCE_STUCK_AFTER_SECONDS`` (5 s here) old.

Checked: every voucher booked once; every package done on our side; Findity holds for each
voucher what its export became (SUCCESS with the voucher number, or FAILED); duplicate webhook
deliveries answered 200 and marked as duplicates.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.reliability.conftest import scaled
from tests.reliability.invariants import check_invariants

pytestmark = pytest.mark.timeout(600)


def _reports(seed: int, count: int) -> list[dict]:
    return [{"owner_name": f"Person {seed}-{i}", "expenses": [
        {"text": "Flight", "account": "7140", "amount": f"{1000 + seed * 10 + i}.00",
         "vat_rate": 0},
        {"text": "Office supplies", "account": "6800", "amount": f"{125 + i}.00",
         "vat_rate": 25}]} for i in range(count)]


def test_findity_webhooks_and_reports_under_faults(stacks, tripletex_sandbox, findity_sandbox,
                                                   figures):
    """Duplicate, late and missing webhooks; updatestatus and the package API failing."""
    # Beat polls Findity every 2 s, and picks up a package left before ingestion (its fetch
    # gave up after 4 attempts) once it is 5 s old: production's backstop, on a short clock.
    stack = stacks("findity", env={"AIC_POLL_INTERVAL_SECONDS": "2",
                                   "AIC_SOURCE_STUCK_AFTER_SECONDS": "5",
                                   "AIC_SWEEP_INTERVAL_SECONDS": "2"})
    stack.start_api()
    stack.workers.start()
    stack.workers.start()
    stack.start_beat()
    packages = scaled(2)
    cases = {name: stack.new_findity_tenant(tripletex_sandbox, findity_sandbox, f"{name} AS")
             for name in ("duplicate", "late", "missing", "updatestatus", "flaky")}
    org = {name: ft.org["organization_id"] for name, ft in cases.items()}
    created: dict[str, list[dict]] = {name: [] for name in cases}

    # Faults that are in place before the packages exist.
    findity_sandbox.set_faults(org["updatestatus"], updatestatus_down=True)
    figures.fault("updatestatus down (503) for 6 s")
    findity_sandbox.set_faults(org["flaky"], error_rate=0.2, fail_next=[
        {"status": 503, "count": 3, "method": "GET", "path_contains": "/export"},
        {"status": 503, "count": 2, "path_contains": "/basis/"}])
    figures.fault("Findity 503 on package/receipt fetch", 5)
    figures.fault("Findity 20% random errors (one organization)")
    findity_sandbox.set_faults(org["missing"], fail_next=[
        {"status": 503, "count": 1, "method": "GET", "path_contains": "/exports"}])
    figures.fault("503 on the first poll's export list")

    for i in range(packages):
        created["duplicate"].append(cases["duplicate"].create_export(
            _reports(10 + i, 2), webhook_copies=5))
        figures.fault("webhook delivered 5 times at once")
        created["late"].append(cases["late"].create_export(_reports(20 + i, 2),
                                                            lose_webhook=True))
        created["missing"].append(cases["missing"].create_export(_reports(30 + i, 2),
                                                                  send_webhook=False))
        figures.fault("webhook lost", 2)
        created["updatestatus"].append(cases["updatestatus"].create_export(_reports(40 + i, 2)))
        created["flaky"].append(cases["flaky"].create_export(_reports(50 + i, 3)))

    def later() -> None:
        time.sleep(6)
        findity_sandbox.set_faults(org["updatestatus"], fail_next=[
            {"status": 500, "count": 1, "path_contains": "/updatestatus"},
            {"status": 429, "count": 1, "path_contains": "/updatestatus", "retry_after": 1}])
        figures.fault("updatestatus 500, then 429 with Retry-After")

    changer = threading.Thread(target=later)
    changer.start()
    changer.join()

    # Late and repeated webhooks, after the poll recovered the packages or they were booked.
    deadline = time.monotonic() + 60
    wanted = {c["export_id"] for c in created["late"]}
    while not wanted <= _known(cases["late"]):
        assert time.monotonic() < deadline, "the poll did not find the packages"
        time.sleep(0.5)
    late = [cases["late"].deliver_webhook(c["webhook_body"]) for c in created["late"]]
    figures.fault("webhook delivered late, after the poll", len(late))
    assert all(r.status_code == 200 and r.json()["duplicate"] for r in late), \
        [r.text for r in late]

    findity = [(ft, [c["export_id"] for c in created[name]]) for name, ft in cases.items()]
    tenants = [ft.tenant for ft in cases.values()]
    check_invariants(tenants, figures, settle_timeout=150, findity=findity,
                     require_terminal=True)

    again = [cases["duplicate"].deliver_webhook(c["webhook_body"])
             for c in created["duplicate"] for _ in range(3)]
    figures.fault("webhook delivered again after the package was done", len(again))
    assert all(r.status_code == 200 and r.json()["duplicate"] for r in again)
    for name, ft in cases.items():
        for c in created[name]:
            state = findity_sandbox.wait_for_webhooks(org[name], c["export_id"])
            codes = [d["status_code"] for d in state["webhook"]["deliveries"]]
            assert all(code == 200 for code in codes), (name, codes)
    time.sleep(2)  # anything the repeated webhooks might (wrongly) have started
    report = check_invariants(tenants, figures=None, settle_timeout=30, findity=findity,
                              require_terminal=True)
    via = {s["source_export_ref"]: s["received_via"]
           for name in ("late", "missing") for s in cases[name].tenant.api.get(
               "/api/v1/source-exports?limit=100").json()["data"]}
    assert set(via.values()) == {"poll"}, via
    figures.note("vouchers booked", report.exports)
    figures.note("polls sent by beat", stack.count_in_logs("Sending due task poll-sources"))
    figures.note("updatestatus calls Findity answered, by status", _update_codes(
        findity_sandbox, org, created))


def _known(ft) -> set[str]:
    listed = ft.tenant.api.get("/api/v1/source-exports?limit=100").json()["data"]
    return {s["source_export_ref"] for s in listed}


def _update_codes(findity_sandbox, org, created) -> dict:
    codes: dict[str, int] = {}
    for name, items in created.items():
        for c in items:
            for record in findity_sandbox.status_updates(org[name], c["export_id"]):
                key = str(record.get("response_status"))
                codes[key] = codes.get(key, 0) + 1
    return codes


def _packages(ft) -> dict[str, dict]:
    listed = ft.tenant.api.get("/api/v1/source-exports?limit=100").json()["data"]
    return {s["source_export_ref"]: s for s in listed}


def test_webhook_arrives_while_the_export_still_answers_404(stacks, tripletex_sandbox,
                                                            findity_sandbox, figures):
    """The webhook comes before Findity serves the export or its basis PDFs (issue 7, hole 4).

    Findity's webhook fires as the reports move to Transfer; nothing says the export is readable
    by then. Packages whose export answers 404 for 3 s, whose basis PDFs answer 404 for 3 s, and
    one whose export answers 404 for 10 s, longer than the 6 s grace here: that one is rejected,
    and beat's poll (every 2 s), which finds it in Findity's list, takes it back. Real workers,
    beat, both sandboxes. Failed on the code before this change: the first 404 rejected each
    package for good (nothing booked, nothing reported), and a basis 404 left its package in
    "received" for the sweeper.
    """
    stack = stacks("notfound", env={"AIC_SOURCE_NOT_FOUND_GRACE_SECONDS": "6",
                                    "AIC_POLL_INTERVAL_SECONDS": "2",
                                    "AIC_SOURCE_STUCK_AFTER_SECONDS": "30",
                                    "AIC_SWEEP_INTERVAL_SECONDS": "2"})
    stack.start_api()
    stack.workers.start()
    stack.workers.start()
    stack.start_beat()
    ft = stack.new_findity_tenant(tripletex_sandbox, findity_sandbox, "Not Found Yet AS")
    created = []
    for i in range(scaled(2)):
        created.append(ft.create_export(_reports(60 + i, 2), not_found_for_seconds=3,
                                        webhook_copies=2))
        figures.fault("export 404 for its first 3 s, webhook delivered twice")
        created.append(ft.create_export(_reports(70 + i, 2), basis_not_found_for_seconds=3))
        figures.fault("basis PDFs 404 for their first 3 s")
    created.append(ft.create_export(_reports(80, 2), not_found_for_seconds=10))
    figures.fault("export 404 for 10 s, longer than the 6 s grace")
    ids = [c["export_id"] for c in created]

    # "rejected" counts as done for the shared check; this scenario wants every package back.
    deadline = time.monotonic() + 120
    while {_packages(ft).get(e, {}).get("status") for e in ids} != {"completed"}:
        assert time.monotonic() < deadline, {e: _packages(ft).get(e) for e in ids}
        time.sleep(0.5)
    report = check_invariants([ft.tenant], figures, settle_timeout=30, findity=[(ft, ids)],
                              require_terminal=True)
    assert report.statuses == {"success": 2 * len(created)}, report.statuses
    for c in created:
        held = ft.reported(c["export_id"])
        assert {u["status"] for u in held.values()} == {"SUCCESS"}
    requests = findity_sandbox.organization_state(ft.org["organization_id"])["requests"]
    export_404s = sum(1 for r in requests if r["status"] == 404 and r["method"] == "GET")
    assert export_404s >= scaled(2) + 1, "the exports were never asked for while they 404ed"
    figures.note("GETs Findity answered 404 (export not readable yet)", export_404s)
    figures.note("ingest attempts that waited for a basis PDF",
                 stack.count_in_logs("source export waits"))
    assert stack.count_in_logs("source export waits") >= scaled(2)
    assert stack.count_in_logs("reannounced=1") >= 1, "the poll never took a package back"
    figures.note("packages the poll took back after a rejection",
                 stack.count_in_logs("reannounced=1"))
    figures.note("vouchers booked", report.exports)
