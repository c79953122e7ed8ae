"""The sources' page and chunk boundaries on real processes and the sandboxes as real servers.

TRAEDE marks at most ten entries per call (its sandbox refuses more with a 422): 1, 10 and 11
unmarked entries are each booked once in Tripletex and all marked, in 1, 1 and 2 mark calls.
Brex lists at most 100 expenses per page: 100 and 101 approved expenses are each booked once,
and the walk that found them took 1 and 2 pages.

Each module fixture runs its sizes at once (one organization, Tripletex company and source
tenant per size) on the session's stack, and the tests read what it recorded: one wait for all
sizes instead of one per size.

What makes the counts exact rather than timing-dependent:
- TRAEDE: the chunked report gathers whatever the connection owes *when it runs*; entries booked
  one by one would be marked in as many calls as there happened to be reports. So the workers
  stop taking report tasks (Celery's ``cancel_consumer``, a real remote-control call) until every
  entry's export is committed as a success, then take them again: the first report that gets the
  connection's lock owes every entry. Polls cannot add mark calls: an entry not marked yet is
  listed while its unit is processing, which reopens nothing.
- Brex: pages are counted per walk from the sandbox's record of every list page (a walk starts
  with a page asked for without a cursor; polls run one at a time under the poll lock, so walks
  of one account never interleave), never as a total that a poll running concurrently could
  inflate.
Every wait is on an observable end state (exports committed, entries marked, units completed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from shared.queue import TASK_POLL_SOURCES, celery_app
from tests.fixtures.tenants import Tenant

pytestmark = pytest.mark.timeout(420)

TRAEDE_SIZES = {1: 1, 10: 1, 11: 2}  # unmarked entries -> mark calls
BREX_SIZES = {100: 1, 101: 2}  # approved expenses -> pages of the walk that found them
MARK_MAX = 10
PAGE_MAX = 100


def _poll() -> None:
    for _ in range(2):  # as beat started twice would: the poll's lock lets one through
        celery_app.send_task(TASK_POLL_SOURCES, queue="maintenance")


def _wait(what: str, check: Callable[[], object], *, poll: bool, timeout: float = 240,
          detail: Callable[[], object] = lambda: "") -> object:
    deadline = time.monotonic() + timeout
    next_poll = 0.0
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {detail()}"
        if poll and time.monotonic() >= next_poll:
            _poll()
            next_poll = time.monotonic() + 3
        time.sleep(0.5)
    return value


@contextmanager
def reports_paused() -> Iterator[None]:
    """The running workers take no report task until the block ends (they stay queued)."""
    from shared.config import get_settings

    queue = get_settings().report_queue
    replies = celery_app.control.cancel_consumer(queue, reply=True, timeout=10)
    assert replies, "no worker answered cancel_consumer"
    try:
        yield
    finally:
        replies = celery_app.control.add_consumer(queue, reply=True, timeout=10)
        assert replies, "no worker answered add_consumer: reports would stay unconsumed"


def _new_tenant(admin: httpx.Client, api_url: str, tripletex_sandbox, name: str) -> Tenant:
    created = admin.post("/api/v1/admin/organizations",
                         json={"name": name, "api_key_scopes": ["exports"]})
    assert created.status_code == 201, created.text
    org = created.json()
    company = tripletex_sandbox.create_company(name)
    connection = admin.put(
        f"/api/v1/admin/organizations/{org['organization_id']}/connections/tripletex",
        json={"base_url": tripletex_sandbox.base_url,
              "credentials": {"consumer_token": company["consumer_token"],
                              "employee_token": company["employee_token"], "company_id": "0"}})
    assert connection.status_code == 200, connection.text
    client = httpx.Client(base_url=api_url, timeout=30,
                          headers={"Authorization": f"Bearer {org['api_key']}"})
    return Tenant(api=client, organization_id=org["organization_id"], api_key=org["api_key"],
                  company_id=company["company_id"], sandbox=tripletex_sandbox)


def _units(tenant: Tenant) -> list[dict]:
    units: list[dict] = []
    for page in range(1, 10):
        response = tenant.api.get(f"/api/v1/source-exports?limit=100&page={page}")
        assert response.status_code == 200, response.text
        body = response.json()
        units += body["data"]
        if len(units) >= body["pagination"]["total"]:
            return units
    raise AssertionError("more units than expected")


def _booked_exports(org_id: str) -> int:
    """Items of the organization's units whose export is committed as a success."""
    from shared.db.models import AccountingExport, SourceUnit, SourceUnitItem
    from shared.db.session import session_scope

    with session_scope() as session:
        return session.scalar(
            select(func.count()).select_from(SourceUnitItem)
            .join(SourceUnit, SourceUnit.id == SourceUnitItem.source_unit_id)
            .join(AccountingExport, AccountingExport.id == SourceUnitItem.export_id)
            .where(SourceUnit.organization_id == org_id,
                   AccountingExport.status == "success"))


def _all_completed(tenant: Tenant, count: int) -> bool:
    units = _units(tenant)
    return len(units) == count and all(u["status"] == "completed" for u in units)


@pytest.fixture(scope="module")
def stack(workers, api_server, admin, tripletex_sandbox):
    if not workers.running:
        workers.start()
    return admin, api_server, tripletex_sandbox


# --- TRAEDE: at most ten marks per call --------------------------------------------------------


@pytest.fixture(scope="module")
def traede_runs(stack, traede_sandbox) -> Iterator[dict[int, dict]]:
    admin, api_url, tripletex_sandbox = stack
    when = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    runs: dict[int, dict] = {}
    for size in TRAEDE_SIZES:
        tenant = _new_tenant(admin, api_url, tripletex_sandbox, f"Traede {size} AS")
        company = traede_sandbox.create_company()
        ids = traede_sandbox.add_entries(company["company_id"], [
            {"currency": "NOK", "amount": f"{300 + i}.75", "account": 5820,
             "contra_account": 1010, "date": when, "text": f"Faktura {i}", "created_at": when}
            for i in range(size)])
        runs[size] = {"tenant": tenant, "company": company, "ids": ids,
                      "system_id": f"aic-boundary-{tenant.organization_id}"}

    def marked(run: dict) -> dict[int, dict]:
        return {e["id"]: e["exports"][run["system_id"]]
                for e in traede_sandbox.entries(run["company"]["company_id"])
                if run["system_id"] in (e.get("exports") or {})}

    with reports_paused():
        for run in runs.values():
            response = admin.put(
                f"/api/v1/admin/organizations/{run['tenant'].organization_id}/sources/traede",
                json={"base_url": run["company"]["base_url"], "target_system": "tripletex",
                      "credentials": {"access_token": run["company"]["access_token"],
                                      "app_key": run["company"]["app_key"]},
                      "options": {"system_id": run["system_id"],
                                  "go_live_date": (datetime.now(UTC) - timedelta(days=30))
                                  .date().isoformat(),
                                  "account_mapping": {"5820": "1920", "1010": "2930"},
                                  "time_zone": "Europe/Oslo"}})
            assert response.status_code == 200, response.text
        _wait("every entry's export committed as a success",
              lambda: all(_booked_exports(r["tenant"].organization_id) == size
                          for size, r in runs.items()), poll=True,
              detail=lambda: {s: _booked_exports(r["tenant"].organization_id)
                              for s, r in runs.items()})
        # Nothing was marked while the reports waited: the counts below are the reports'.
        assert not any(traede_sandbox.mark_calls(r["company"]["company_id"])
                       for r in runs.values())
    _wait("every entry marked and every unit completed",
          lambda: all(len(marked(r)) == size and _all_completed(r["tenant"], size)
                      for size, r in runs.items()), poll=False,
          detail=lambda: {s: (len(marked(r)), [u["status"] for u in _units(r["tenant"])])
                          for s, r in runs.items()})
    for run in runs.values():
        run["marks"] = marked(run)
        run["mark_calls"] = traede_sandbox.mark_calls(run["company"]["company_id"])
        run["vouchers"] = run["tenant"].vouchers()
        run["units"] = _units(run["tenant"])
    yield runs
    for run in runs.values():
        run["tenant"].api.close()


@pytest.mark.parametrize("size", list(TRAEDE_SIZES))
def test_traede_entries_are_booked_once_and_marked_at_most_ten_per_call(traede_runs, size):
    run = traede_runs[size]
    ids, vouchers, calls = run["ids"], run["vouchers"], run["mark_calls"]
    assert len(vouchers) == size, [v["externalVoucherNumber"] for v in vouchers]
    assert len({v["externalVoucherNumber"] for v in vouchers}) == size
    assert len(run["units"]) == size
    # Every entry marked once, with its own voucher's number as note.
    assert sorted(run["marks"]) == sorted(ids)
    assert all(m["times"] == 1 for m in run["marks"].values()), run["marks"]
    assert {m["note"] for m in run["marks"].values()} == {str(v["number"]) for v in vouchers}
    # In as few calls as ten-per-call allows, none refused.
    items = [(c["body"] or {}).get("accounting_entries") or [] for c in calls]
    assert len(calls) == TRAEDE_SIZES[size], calls
    assert [c["status"] for c in calls] == [200] * len(calls), calls
    assert all(len(chunk) <= MARK_MAX for chunk in items)
    assert sorted(i["accounting_entry_id"] for chunk in items for i in chunk) == sorted(ids)


# --- Brex: at most 100 expenses per page -------------------------------------------------------


def _walks(calls: list[dict]) -> list[list[dict]]:
    """The list pages served, grouped by walk (each starts with a page asked without cursor);
    the lookups of an itemized purchase's children (``parent_expense_id[]``) are not walks."""
    walks: list[list[dict]] = []
    for call in calls:
        if call["parent_filter"]:
            continue
        if not call["cursor"] or not walks:
            walks.append([])
        walks[-1].append(call)
    return walks


@pytest.fixture(scope="module")
def brex_runs(stack, brex_sandbox) -> Iterator[dict[int, dict]]:
    admin, api_url, tripletex_sandbox = stack
    runs: dict[int, dict] = {}
    for size in BREX_SIZES:
        tenant = _new_tenant(admin, api_url, tripletex_sandbox, f"Brex {size} AS")
        account = brex_sandbox.create_account(billing_currency="NOK")
        ids = brex_sandbox.add_expenses(account["account_id"], [
            {"original_amount": 10_000 + i, "currency": "NOK", "billing_amount": 10_000 + i,
             "receipts": 0} for i in range(size)])
        runs[size] = {"tenant": tenant, "account": account, "ids": ids}
    for run in runs.values():
        response = admin.put(
            f"/api/v1/admin/organizations/{run['tenant'].organization_id}/sources/brex",
            json={"base_url": run["account"]["base_url"], "target_system": "tripletex",
                  "credentials": {"user_token": run["account"]["token"]},
                  "options": {"default_account": "7770",
                              "credit_accounts": {"CARD": "1920", "REIMBURSEMENT": "2930"},
                              "ledger_currency": "NOK", "memo_write_back": False,
                              "overlap_seconds": 60}})
        assert response.status_code == 200, response.text
    _wait("every expense booked and every unit completed",
          lambda: all(_all_completed(r["tenant"], size) for size, r in runs.items()), poll=True,
          detail=lambda: {s: sorted({u["status"] for u in _units(r["tenant"])})
                          for s, r in runs.items()})
    for run in runs.values():
        run["vouchers"] = run["tenant"].vouchers()
        run["units"] = _units(run["tenant"])
        run["list_calls"] = brex_sandbox.list_calls(run["account"]["account_id"])
    yield runs
    for run in runs.values():
        run["tenant"].api.close()


@pytest.mark.parametrize("size", list(BREX_SIZES))
def test_brex_expenses_are_booked_once_and_listed_at_most_100_per_page(brex_runs, size):
    run = brex_runs[size]
    vouchers = run["vouchers"]
    assert len(vouchers) == size
    assert len({v["externalVoucherNumber"] for v in vouchers}) == size
    assert sorted(u["source_export_ref"] for u in run["units"]) == sorted(run["ids"])

    calls = run["list_calls"]
    assert all(c["limit"] <= PAGE_MAX for c in calls), {c["limit"] for c in calls}
    walks = _walks(calls)
    first = walks[0]
    assert len(first) == BREX_SIZES[size], [(len(c["ids"]), c["next_cursor"]) for c in first]
    assert sorted(i for c in first for i in c["ids"]) == sorted(run["ids"])
    # Every walk (later polls list again from the stored high-water mark, minus the overlap)
    # took exactly the pages its expenses need, and ran to its end.
    for walk in walks:
        listed = sum(len(c["ids"]) for c in walk)
        assert len(walk) == max(1, math.ceil(listed / PAGE_MAX)), walk
        assert not walk[-1]["next_cursor"] and all(c["next_cursor"] for c in walk[:-1])
