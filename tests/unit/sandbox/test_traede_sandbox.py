"""The TRAEDE sandbox's own rules, spoken to with plain httpx (there is no TRAEDE client yet).

These pin down what the sandbox promises (seed 001 and the guide's [assumed] contract: auth with
token and app key, the export feed per system_id, mark-as-exported with at most 10 entries,
Laravel error bodies) and what each knob does, so the connector tests built on it later test
against something known.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.fixtures.traede_sandbox import TraedeSandbox

EXPORT = "/accounting-entries/export"
MARK = "/accounting-entries/mark-as-exported"
SYSTEM = "xbridge-tripletex-7f3a"
ENTRY_KEYS = {"id", "currency", "amount", "account", "contra_account", "date", "text",
              "created_at", "updated_at"}


@pytest.fixture
def api(traede_sandbox: TraedeSandbox, traede_company: dict[str, Any]) -> Iterator[httpx.Client]:
    with traede_sandbox.api(traede_company) as client:
        yield client


def fetch(api: httpx.Client, system_id: str = SYSTEM, **params: Any) -> list[dict[str, Any]]:
    response = api.get(EXPORT, params={"system_id": system_id, **params})
    assert response.status_code == 200, response.text
    return json.loads(response.content, parse_float=Decimal)["accounting_entries"]


def ids(entries: list[dict[str, Any]]) -> list[int]:
    return [e["id"] for e in entries]


def mark(api: httpx.Client, entry_ids: list[int], system_id: str = SYSTEM,
         note: str | None = "Tripletex voucher 2026-377") -> httpx.Response:
    items = [{"accounting_entry_id": i, "system_id": system_id, "note": note} for i in entry_ids]
    return api.post(MARK, json={"accounting_entries": items})


def company_id(company: dict[str, Any]) -> str:
    return company["company_id"]


# --- auth --------------------------------------------------------------------------------------


def test_a_request_without_a_valid_token_is_401_in_laravels_shape(traede_sandbox, traede_company):
    url = traede_company["base_url"] + EXPORT
    app_key = {"X-Traede-App-Key": traede_company["app_key"]}
    for headers in (app_key, {**app_key, "Authorization": "Bearer wrong"},
                    {**app_key, "Authorization": f"Basic {traede_company['access_token']}"}):
        response = httpx.get(url, params={"system_id": SYSTEM}, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"message": "Unauthenticated."}


def test_a_missing_or_wrong_app_key_is_403(traede_sandbox, traede_company):
    bearer = {"Authorization": f"Bearer {traede_company['access_token']}"}
    url = traede_company["base_url"] + EXPORT
    for headers in (bearer, {**bearer, "X-Traede-App-Key": "app-of-someone-else"}):
        response = httpx.get(url, params={"system_id": SYSTEM}, headers=headers)
        assert response.status_code == 403
        assert "X-Traede-App-Key" in response.json()["message"]


def test_one_app_key_can_serve_several_companies(traede_sandbox):
    first = traede_sandbox.create_company(app_key="app-our-integration-key")
    second = traede_sandbox.create_company(app_key="app-our-integration-key")
    traede_sandbox.generate_entries(second["company_id"], 2)
    with traede_sandbox.api(first) as one, traede_sandbox.api(second) as two:
        assert fetch(one) == []
        assert len(fetch(two)) == 2


def test_the_query_string_token_works_and_is_counted(traede_sandbox, traede_company):
    # TRAEDE allows ?access_token=; the count lets a connector test prove it never uses it.
    response = httpx.get(traede_company["base_url"] + EXPORT, params={
        "system_id": SYSTEM, "access_token": traede_company["access_token"]},
        headers={"X-Traede-App-Key": traede_company["app_key"]})
    assert response.status_code == 200
    assert traede_sandbox.company_state(company_id(traede_company))["query_token_uses"] == 1


def test_a_rotated_token_is_refused(traede_sandbox, traede_company, api):
    new_token = traede_sandbox.rotate_token(company_id(traede_company))
    assert api.get(EXPORT, params={"system_id": SYSTEM}).status_code == 401
    with traede_sandbox.api({**traede_company, "access_token": new_token}) as fresh:
        assert fetch(fresh) == []


# --- the export feed ---------------------------------------------------------------------------


def test_the_feed_returns_the_entry_object_with_signed_float_amounts(traede_sandbox,
                                                                     traede_company, api):
    traede_sandbox.add_entries(company_id(traede_company), [
        {"currency": "DKK", "amount": "1234.56", "account": 5820, "contra_account": 1010,
         "date": "2026-03-18T10:00:00Z", "text": "Faktura 10023"},
        {"currency": "EUR", "amount": "-0.10", "account": 5820, "contra_account": 1010,
         "date": "2026-03-19T10:00:00Z", "text": "Kreditnota 10024"},
    ])
    response = api.get(EXPORT, params={"system_id": SYSTEM})
    assert response.status_code == 200
    assert b'"amount":1234.56' in response.content and b'"amount":-0.1' in response.content
    first, second = json.loads(response.content, parse_float=Decimal)["accounting_entries"]
    assert set(first) == ENTRY_KEYS
    assert (first["amount"], first["account"], first["contra_account"]) == (
        Decimal("1234.56"), 5820, 1010)
    assert first["date"] == "2026-03-18 10:00:00"  # [assumed] Laravel's Y-m-d H:i:s in UTC
    assert second["amount"] == Decimal("-0.1") and second["currency"] == "EUR"
    assert isinstance(first["id"], int)


def test_iso8601_dates_are_a_company_setting(traede_sandbox):
    company = traede_sandbox.create_company(datetime_format="iso8601")
    traede_sandbox.add_entries(company_id(company), [
        {"amount": "10.00", "account": 1, "contra_account": 2, "date": "2026-03-18T10:00:00Z"}])
    with traede_sandbox.api(company) as client:
        assert fetch(client)[0]["date"] == "2026-03-18T10:00:00+00:00"


def test_generated_entries_include_credit_notes_foreign_currency_and_a_new_year_edge(
        traede_sandbox, traede_company, api):
    traede_sandbox.generate_entries(company_id(traede_company), 14, seed=7)
    entries = fetch(api)
    assert len(entries) == 14
    assert any(e["amount"] < 0 for e in entries)
    assert {"DKK", "EUR"} <= {e["currency"] for e in entries}
    assert any(e["date"].endswith("12-31 23:30:00") for e in entries)
    assert all(e["amount"] == e["amount"].quantize(Decimal("0.01")) for e in entries)


def test_system_id_is_required(api):
    response = api.get(EXPORT)
    assert response.status_code == 422
    assert response.json() == {"message": "The system id field is required.",
                               "errors": {"system_id": ["The system id field is required."]}}


def test_each_system_id_has_its_own_export_state(traede_sandbox, traede_company, api):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 3)
    assert mark(api, entry_ids[:2]).status_code == 200
    assert ids(fetch(api)) == entry_ids[2:]
    assert ids(fetch(api, system_id="another-target")) == entry_ids


@pytest.mark.parametrize("limit", [1, 10, 11, 100, 101])
def test_limit_boundaries(traede_sandbox, traede_company, api, limit):
    # [assumed] the core API's Bruno ``limit``/``page``; the seed documents no paging.
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 101)
    assert ids(fetch(api, limit=limit)) == entry_ids[:limit]
    assert ids(fetch(api, limit=limit, page=2)) == entry_ids[limit:2 * limit]


def test_without_a_limit_everything_unmarked_comes_back(traede_sandbox, traede_company, api):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 101)
    assert ids(fetch(api)) == entry_ids


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "ten"}, {"limit": "1", "page": "0"}])
def test_a_bad_limit_or_page_is_422(api, params):
    response = api.get(EXPORT, params={"system_id": SYSTEM, **params})
    assert response.status_code == 422
    assert set(response.json()["errors"]) <= {"limit", "page"}


def test_page_two_after_marking_page_one_skips_entries(traede_sandbox, traede_company, api):
    """Offset paging over a set that shrinks as it is marked: the trap a connector avoids by
    always fetching the first page again."""
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 20)
    first = ids(fetch(api, limit=10))
    assert mark(api, first).status_code == 200
    assert ids(fetch(api, limit=10, page=2)) == []
    assert ids(fetch(api, limit=10, page=1)) == entry_ids[10:]


def test_not_exported_since_brings_back_entries_marked_before_it(traede_sandbox,
                                                                 traede_company, api):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 3)
    assert mark(api, entry_ids[:2]).status_code == 200
    assert ids(fetch(api)) == entry_ids[2:]
    assert ids(fetch(api, not_exported_since="2000-01-01 00:00:00")) == entry_ids[2:]
    assert ids(fetch(api, not_exported_since="2999-01-01T00:00:00Z")) == entry_ids
    response = api.get(EXPORT, params={"system_id": SYSTEM, "not_exported_since": "yesterday"})
    assert response.status_code == 422
    assert "not_exported_since" in response.json()["errors"]


def _filter(index: int, key: str, operator: str, value: str, group: int = 0,
            negate: bool = False) -> dict[str, str]:
    prefix = f"filter_groups[{group}][filters][{index}]"
    return {f"{prefix}[key]": key, f"{prefix}[operator]": operator, f"{prefix}[value]": value,
            f"{prefix}[not]": "1" if negate else "0"}


def test_filter_groups_on_created_at(traede_sandbox, traede_company, api):
    made = traede_sandbox.add_entries(company_id(traede_company), [
        {"amount": "1.00", "account": 1, "contra_account": 2,
         "created_at": f"2026-0{m}-15T12:00:00Z"}
        for m in (1, 2, 3)
    ])
    assert ids(fetch(api, **_filter(0, "created_at", "gte", "2026-02-01"))) == made[1:]
    both = {**_filter(0, "created_at", "gte", "2026-02-01"),
            **_filter(1, "created_at", "lt", "2026-03-01")}
    assert ids(fetch(api, **both)) == [made[1]]
    either = {**both, "filter_groups[0][or]": "1"}
    assert ids(fetch(api, **either)) == made
    assert ids(fetch(api, **_filter(0, "created_at", "gte", "2026-02-01", negate=True))) == made[:1]


@pytest.mark.parametrize("params", [
    _filter(0, "amount", "gt", "100"),
    _filter(0, "created_at", "ct", "2026"),
    _filter(0, "created_at", "gte", "not a date"),
    {"filter_groups": "created_at>2026-01-01"},
])
def test_unsupported_filters_are_422_not_ignored(api, params):
    response = api.get(EXPORT, params={"system_id": SYSTEM, **params})
    assert response.status_code == 422, response.text
    assert response.json()["errors"]


# --- mark-as-exported --------------------------------------------------------------------------


def test_marked_entries_stop_coming_back_and_keep_their_note(traede_sandbox, traede_company, api):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 3)
    response = mark(api, entry_ids[:1], note="Tripletex voucher 2026-377 (export 9c1e)")
    assert response.status_code == 200 and response.json() == {}  # [assumed] undocumented body
    assert ids(fetch(api)) == entry_ids[1:]
    entry = traede_sandbox.entries(company_id(traede_company))[0]
    assert entry["exports"][SYSTEM]["note"] == "Tripletex voucher 2026-377 (export 9c1e)"
    assert entry["exports"][SYSTEM]["times"] == 1
    assert [t["note"] for t in entry["timeline"]] == ["Tripletex voucher 2026-377 (export 9c1e)"]


def test_marking_an_entry_again_is_harmless(traede_sandbox, traede_company, api):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 1)
    assert mark(api, entry_ids, note="first").status_code == 200
    assert mark(api, entry_ids, note="again").status_code == 200
    entry = traede_sandbox.entries(company_id(traede_company))[0]
    assert entry["exports"][SYSTEM]["times"] == 2 and entry["exports"][SYSTEM]["note"] == "again"
    assert [t["note"] for t in entry["timeline"]] == ["first", "again"]


@pytest.mark.parametrize("count", [1, 10])
def test_up_to_ten_entries_per_mark_call(traede_sandbox, traede_company, api, count):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), count)
    assert mark(api, entry_ids).status_code == 200
    assert fetch(api) == []


@pytest.mark.parametrize("count", [11, 100, 101])
def test_more_than_ten_is_422_and_marks_nothing(traede_sandbox, traede_company, api, count):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), count)
    response = mark(api, entry_ids)
    assert response.status_code == 422
    message = "The accounting entries may not have more than 10 items."
    assert response.json() == {"message": message, "errors": {"accounting_entries": [message]}}
    assert ids(fetch(api)) == entry_ids


@pytest.mark.parametrize("body, field", [
    ({}, "accounting_entries"),
    ({"accounting_entries": []}, "accounting_entries"),
    ({"accounting_entries": "48001"}, "accounting_entries"),
    ({"accounting_entries": [{"system_id": SYSTEM}]}, "accounting_entries.0.accounting_entry_id"),
    ({"accounting_entries": [{"accounting_entry_id": 1.5, "system_id": SYSTEM}]},
     "accounting_entries.0.accounting_entry_id"),
    ({"accounting_entries": [{"accounting_entry_id": 999_999_999, "system_id": SYSTEM}]},
     "accounting_entries.0.accounting_entry_id"),
    ({"accounting_entries": [{"accounting_entry_id": "FIRST"}]},
     "accounting_entries.0.system_id"),
    ({"accounting_entries": [{"accounting_entry_id": "FIRST", "system_id": SYSTEM,
                              "note": 17}]}, "accounting_entries.0.note"),
    ({"accounting_entries": [{"accounting_entry_id": "FIRST", "system_id": SYSTEM,
                              "note": "x" * 256}]}, "accounting_entries.0.note"),
])
def test_mark_validation_refuses_the_whole_call(traede_sandbox, traede_company, api, body, field):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 2)
    items = body.get("accounting_entries")
    if isinstance(items, list) and items:
        items = [{k: entry_ids[0] if v == "FIRST" else v for k, v in item.items()}
                 for item in items]
        # A valid second item is refused with the bad one: nothing is marked.
        items.append({"accounting_entry_id": entry_ids[1], "system_id": SYSTEM})
        body = {"accounting_entries": items}
    response = api.post(MARK, json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["errors"]
    assert ids(fetch(api)) == entry_ids


def test_entries_of_another_company_cannot_be_marked(traede_sandbox, traede_company, api):
    other = traede_sandbox.create_company()
    foreign = traede_sandbox.generate_entries(company_id(other), 1)
    assert mark(api, foreign).status_code == 422
    assert traede_sandbox.entries(company_id(other))[0]["exports"] == {}


def test_an_entry_edited_after_its_mark_does_not_come_back(traede_sandbox, traede_company, api):
    (entry_id,) = traede_sandbox.generate_entries(company_id(traede_company), 1)
    before = traede_sandbox.entries(company_id(traede_company))[0]
    assert mark(api, [entry_id]).status_code == 200
    changed = traede_sandbox.change_entry(company_id(traede_company), entry_id, amount="99.95")
    assert changed["amount"] == "99.95" and changed["updated_at"] > before["updated_at"]
    assert fetch(api) == []  # [assumed] no "changed since export" rule
    updated = fetch(api, **_filter(0, "updated_at", "gt", before["updated_at"]),
                    not_exported_since="2999-01-01")
    assert ids(updated) == [entry_id]


def test_the_control_view_records_every_mark_call(traede_sandbox, traede_company, api):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 11)
    mark(api, entry_ids)
    mark(api, entry_ids[:3], note=None)
    calls = traede_sandbox.mark_calls(company_id(traede_company))
    assert [(c["status"], c["applied"]) for c in calls] == [(422, []), (200, entry_ids[:3])]


# --- knobs -------------------------------------------------------------------------------------


def test_redeliver_ids_keeps_returning_a_marked_entry(traede_sandbox, traede_company, api):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 3)
    traede_sandbox.set_faults(company_id(traede_company), redeliver_ids=[entry_ids[0]])
    assert mark(api, entry_ids).status_code == 200
    assert ids(fetch(api)) == [entry_ids[0]]
    assert ids(fetch(api)) == [entry_ids[0]]
    traede_sandbox.clear_faults(company_id(traede_company))
    assert fetch(api) == []


def test_redeliver_marked_fetches_is_a_stale_read_of_n_fetches(traede_sandbox, traede_company,
                                                               api):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 3)
    assert mark(api, entry_ids[:2]).status_code == 200
    traede_sandbox.set_faults(company_id(traede_company), redeliver_marked_fetches=2)
    assert ids(fetch(api)) == entry_ids
    assert ids(fetch(api)) == entry_ids
    assert ids(fetch(api)) == entry_ids[2:]


def test_fetch_cap_returns_only_part_of_what_is_due(traede_sandbox, traede_company, api):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 25)
    traede_sandbox.set_faults(company_id(traede_company), fetch_cap=10)
    assert ids(fetch(api)) == entry_ids[:10]
    assert ids(fetch(api, limit=100)) == entry_ids[:10]


@pytest.mark.parametrize("mode, marked", [("before", 0), ("after", 3), ("partial", 2)])
def test_mark_failure_answers_5xx_with_nothing_all_or_part_applied(traede_sandbox,
                                                                    traede_company, api, mode,
                                                                    marked):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 3)
    traede_sandbox.set_faults(company_id(traede_company),
                              mark_failure={"mode": mode, "status": 500, "applied": 2})
    response = mark(api, entry_ids)
    assert response.status_code == 500 and response.json() == {"message": "Server Error"}
    assert ids(fetch(api)) == entry_ids[marked:]
    assert mark(api, entry_ids).status_code == 200  # one call only (count 1)
    assert fetch(api) == []


def test_mark_failure_502_is_a_gateway_page(traede_sandbox, traede_company, api):
    entry_ids = traede_sandbox.generate_entries(company_id(traede_company), 1)
    traede_sandbox.set_faults(company_id(traede_company),
                              mark_failure={"mode": "after", "status": 502})
    response = mark(api, entry_ids)
    assert response.status_code == 502 and response.headers["content-type"].startswith("text/html")
    assert fetch(api) == []


def test_latency_knob(traede_sandbox, traede_company, api):
    traede_sandbox.set_faults(company_id(traede_company), latency_ms=300)
    started = time.monotonic()
    fetch(api)
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("status", [500, 503])
def test_fail_next_5xx_then_recovers(traede_sandbox, traede_company, api, status):
    traede_sandbox.set_faults(company_id(traede_company),
                              fail_next=[{"status": status, "count": 2, "method": "GET"}])
    assert [api.get(EXPORT, params={"system_id": SYSTEM}).status_code for _ in range(3)] == [
        status, status, 200]
    counts = traede_sandbox.request_counts(company_id(traede_company))
    assert counts == {"GET /accounting-entries/export": 3}


def test_fail_next_429_carries_retry_after(traede_sandbox, traede_company, api):
    traede_sandbox.set_faults(company_id(traede_company),
                              fail_next=[{"status": 429, "retry_after": 7}])
    response = api.get(EXPORT, params={"system_id": SYSTEM})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json() == {"message": "Too Many Attempts."}


def test_fail_next_auth_failures(traede_sandbox, traede_company, api):
    traede_sandbox.set_faults(company_id(traede_company), fail_next=[
        {"status": 401, "path_contains": "mark"}, {"status": 403, "path_contains": "export"}])
    assert api.get(EXPORT, params={"system_id": SYSTEM}).status_code == 403
    assert mark(api, [1]).json() == {"message": "Unauthenticated."}


def test_rate_limit_knob_sends_laravels_throttle_headers(traede_sandbox, traede_company, api):
    traede_sandbox.set_faults(company_id(traede_company),
                              rate_limit={"limit": 2, "window_seconds": 30})
    first, second, third = (api.get(EXPORT, params={"system_id": SYSTEM}) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert third.headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(third.headers["Retry-After"]) <= 31


def test_error_rate_knob_is_seeded(traede_sandbox, traede_company, api):
    traede_sandbox.set_faults(company_id(traede_company), error_rate=0.5, seed=3)
    statuses = [api.get(EXPORT, params={"system_id": SYSTEM}).status_code for _ in range(20)]
    assert set(statuses) == {200, 503}
    traede_sandbox.set_faults(company_id(traede_company), error_rate=0.5, seed=3)
    again = [api.get(EXPORT, params={"system_id": SYSTEM}).status_code for _ in range(20)]
    assert again == statuses
