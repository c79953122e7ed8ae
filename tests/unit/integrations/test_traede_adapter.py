"""TraedeSource (client + adapter) against the real TRAEDE sandbox server (a subprocess), plus
transport stubs for answers the sandbox never gives (a server that ignores ``page``, a body
without ids, an HTTP-date Retry-After).

Each test has a company of its own; entries are made through the sandbox's control API, and
what TRAEDE then holds (marks, notes, fetches) is read back from it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from devstack.processes import free_port
from shared.integrations import registry
from shared.integrations.errors import (
    AuthError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from shared.integrations.sources import ItemOutcome
from shared.integrations.traede import SYSTEM, TraedeOptions, TraedeSource

SYSTEM_ID = "aic-tripletex-test"
# Every account the sandbox's generated entries use, mapped to a Norwegian chart.
MAPPING = {"5820": "1500", "1010": "3000", "7730": "2700", "1310": "4000", "6800": "2400",
           "7220": "7770"}


def options(**overrides: Any) -> TraedeOptions:
    return TraedeOptions.model_validate({
        "system_id": SYSTEM_ID, "go_live_date": "2020-01-01", "account_mapping": MAPPING,
        **overrides})


@pytest.fixture
def company_id(traede_company) -> str:
    return traede_company["company_id"]


@pytest.fixture
def make_source(traede_company):
    made: list[TraedeSource] = []

    def make(company: dict | None = None, **option_overrides: Any) -> TraedeSource:
        company = company or traede_company
        source = TraedeSource(company["base_url"], access_token=company["access_token"],
                              app_key=company["app_key"], options=options(**option_overrides))
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


@pytest.fixture
def source(make_source) -> TraedeSource:
    return make_source()


def entry(amount: str = "100.00", *, account: int = 5820, contra: int = 1010,
          day: str = "2026-03-18T10:15:00Z", created: str | None = None, text: str = "Faktura",
          currency: str = "DKK") -> dict[str, Any]:
    spec = {"amount": amount, "account": account, "contra_account": contra, "date": day,
            "text": text, "currency": currency}
    if created:
        spec["created_at"] = created
    return spec


def booked(entry_id: int | str, number: str = "2026-377") -> ItemOutcome:
    return ItemOutcome(str(entry_id), booked=True, text=f"Booked in Tripletex as {number}",
                       external_number=number, booked_on=datetime.now(UTC))


def listed_ids(source: TraedeSource) -> list[int]:
    return [int(a.external_id) for a in source.list_pending(None).announcements]


def exports(traede_sandbox, company_id: str) -> dict[int, dict]:
    """entry id -> {system_id: {exported_at, note, times}} as TRAEDE holds it."""
    return {e["id"]: e["exports"] for e in traede_sandbox.entries(company_id)}


# --- the registry entry and the options ---------------------------------------------------------


def test_registry_entry_declares_the_feed_chunks_of_ten_and_both_secrets():
    assert SYSTEM.name == "traede"
    assert SYSTEM.capabilities.discovery == frozenset({registry.Discovery.POLL_FEED})
    assert SYSTEM.capabilities.report_granularity == registry.ReportGranularity.CHUNKED
    assert SYSTEM.capabilities.report_chunk_size == 10
    assert SYSTEM.capabilities.attachments is False
    assert SYSTEM.required_credentials == ("access_token", "app_key")
    assert all(field.secret for field in SYSTEM.credentials)
    assert SYSTEM.parse_webhook is None


@pytest.mark.parametrize("overrides, says", [
    ({"time_zone": "Europe/Copenhage"}, "not an IANA time zone"),
    ({"timezone": "Europe/Oslo"}, "Extra inputs are not permitted"),
    ({"account_mapping": {"kasse": "1920"}}, "not a TRAEDE account number"),
    ({"account_mapping": {"5820": " "}}, "to nothing"),
    ({"system_id": ""}, "system_id"),
    ({"system_id": " padded "}, "system_id"),
    ({"system_id": "x" * 256}, "system_id"),
])
def test_bad_options_are_refused_with_what_to_fix(overrides, says):
    with pytest.raises(ValueError, match=says):
        options(**overrides)


def test_options_need_a_system_id_and_a_go_live_date():
    with pytest.raises(ValueError) as refused:
        TraedeOptions.model_validate({})
    assert {e["loc"][0] for e in refused.value.errors()} == {"system_id", "go_live_date"}


def test_the_registry_builds_the_adapter_from_a_connection(traede_sandbox, traede_company):
    connection = SimpleNamespace(id="src_t1", base_url=traede_company["base_url"],
                                 options=options().model_dump(mode="json"))
    credentials = {"access_token": traede_company["access_token"],
                   "app_key": traede_company["app_key"]}
    with SYSTEM.build_client(connection, credentials) as source:
        assert source.system_id == SYSTEM_ID and source.list_pending(None).announcements == []


@pytest.mark.parametrize("credentials, stored_options, says", [
    # A connection stored with another source's credential fields.
    ({"client_id": "x", "client_secret": "y"}, {"system_id": "s", "go_live_date": "2026-01-01"},
     "no access_token and app_key"),
    ({"access_token": "t", "app_key": "k"}, {"system_id": "s"}, "invalid options (go_live_date"),
])
def test_a_connection_stored_without_what_traede_needs_is_a_permanent_error_naming_it(
        credentials, stored_options, says):
    connection = SimpleNamespace(id="src_t1", base_url="https://traede.test/v10",
                                 options=stored_options)
    with pytest.raises(PermanentError, match=re.escape(says)) as refused:
        SYSTEM.build_client(connection, credentials)
    assert "src_t1" in refused.value.message


# --- the feed -----------------------------------------------------------------------------------


def test_list_pending_announces_each_unmarked_entry_once_with_its_exact_listing(
        traede_sandbox, company_id, source):
    ids = traede_sandbox.add_entries(company_id, [entry("1234.50"), entry("-0.10"),
                                                  entry("99999999.99")])
    page = source.list_pending(None)
    assert page.next_cursor is None
    assert [a.external_id for a in page.announcements] == [str(i) for i in ids]
    # The payload is the entry as listed, storable as JSON, its amount as exact decimal text.
    payloads = [a.payload for a in page.announcements]
    assert [p["amount"] for p in payloads] == ["1234.5", "-0.1", "99999999.99"]
    assert json.loads(json.dumps(payloads)) == payloads
    fetches = traede_sandbox.fetches(company_id)
    assert {f["system_id"] for f in fetches} == {SYSTEM_ID}


def test_the_token_goes_in_the_header_never_the_query_string(traede_sandbox, company_id, source):
    traede_sandbox.add_entries(company_id, [entry()])
    source.list_pending(None)
    assert traede_sandbox.company_state(company_id)["query_token_uses"] == 0


@pytest.mark.parametrize("count", [0, 1, 10, 11, 100, 101, 250])
def test_every_page_is_read_whatever_the_count(traede_sandbox, company_id, source, count):
    ids = traede_sandbox.generate_entries(company_id, count) if count else []
    assert listed_ids(source) == ids
    # Full pages of 100, then the short last one; after full pages an empty one ends it; a
    # short first page (a cap, or the end?) is confirmed by an empty page 2 in its own size.
    expected = {0: 1, 1: 2, 10: 2, 11: 2, 100: 2, 101: 2, 250: 3}[count]
    assert sum(traede_sandbox.request_counts(company_id).values()) == expected


def test_an_undocumented_cap_below_our_page_size_hides_no_entry(traede_sandbox, company_id,
                                                                source):
    """The trap: with a cap of 10, page 2 in pages of 100 starts at entry 101, and the first 10
    may be permanently failing entries that never leave the feed."""
    ids = traede_sandbox.generate_entries(company_id, 25)
    traede_sandbox.set_faults(company_id, fetch_cap=10)
    assert listed_ids(source) == ids
    # Still harmless when the cap is lifted and the feed is read in full pages again.
    traede_sandbox.clear_faults(company_id)
    assert listed_ids(source) == ids


def test_marking_between_polls_shifts_pages_so_every_poll_starts_at_page_one(
        traede_sandbox, company_id, make_source):
    source = make_source()
    source.page_size = 10
    ids = traede_sandbox.generate_entries(company_id, 30)
    first = listed_ids(source)
    assert first == ids
    source.send_reports("", [source.report_for(booked(i)) for i in ids[:10]])
    # "Page 2" now starts at entry 21; the next poll reads from page 1 and sees 11..30.
    assert listed_ids(source) == ids[10:]


def test_a_marked_entry_that_comes_back_has_the_same_external_id(traede_sandbox, company_id,
                                                                  source):
    ids = traede_sandbox.generate_entries(company_id, 3)
    source.send_reports("", [source.report_for(booked(i)) for i in ids])
    assert listed_ids(source) == []
    traede_sandbox.set_faults(company_id, redeliver_ids=[ids[1]])
    assert listed_ids(source) == [ids[1]]  # the engine knows it: mark again, never post again
    traede_sandbox.set_faults(company_id, redeliver_marked_fetches=1)
    assert listed_ids(source) == ids  # a stale read: all three known
    assert listed_ids(source) == []


def test_the_history_before_go_live_is_not_fetched(traede_sandbox, company_id, make_source):
    old, new = traede_sandbox.add_entries(company_id, [
        entry(day="2025-12-30T09:00:00Z", created="2025-12-30T09:05:00Z"),
        entry(day="2026-01-02T09:00:00Z", created="2026-01-02T09:05:00Z")])
    # Go-live is midnight in Copenhagen: 23:00 UTC the evening before.
    edge, = traede_sandbox.add_entries(company_id, [
        entry(day="2025-12-31T23:30:00Z", created="2025-12-31T23:10:00Z")])
    source = make_source(go_live_date="2026-01-01")
    assert listed_ids(source) == [new, edge]
    assert listed_ids(make_source(go_live_date="2025-12-30")) == [old, new, edge]


def test_each_system_id_has_its_own_feed(traede_sandbox, company_id, make_source):
    ids = traede_sandbox.generate_entries(company_id, 2)
    ours, other = make_source(), make_source(system_id="aic-billdiary-other")
    ours.send_reports("", [ours.report_for(booked(ids[0]))])
    assert listed_ids(ours) == ids[1:]
    assert listed_ids(other) == ids


def test_the_operators_resend_listing_brings_back_entries_marked_before_the_date(
        traede_sandbox, company_id, source):
    ids = traede_sandbox.generate_entries(company_id, 3)
    source.send_reports("", [source.report_for(booked(i)) for i in ids[:2]])
    assert listed_ids(source) == ids[2:]
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    assert [int(a.external_id) for a in source.list_not_exported_since(long_ago)
            .announcements] == ids[2:]
    later = datetime.now(UTC) + timedelta(hours=1)
    again = source.list_not_exported_since(later)
    assert [int(a.external_id) for a in again.announcements] == ids and again.next_cursor is None
    # The automatic poll never sends it: the marked ones stay out.
    assert listed_ids(source) == ids[2:]


def _stub(handler) -> TraedeSource:
    return TraedeSource("https://traede.test/v10", access_token="t", app_key="k",
                        options=options(), transport=httpx.MockTransport(handler))


def _entries(ids: list[int]) -> list[dict]:
    return [{"id": i, "currency": "DKK", "amount": 1.5, "account": 5820, "contra_account": 1010,
             "date": "2026-03-18 10:00:00", "text": "x"} for i in ids]


def test_a_server_that_ignores_paging_ends_the_walk_and_each_entry_is_listed_once():
    calls = []

    def ignores_page(request: httpx.Request) -> httpx.Response:
        calls.append(dict(request.url.params))
        return httpx.Response(200, json={"accounting_entries": _entries([1, 2, 3, 2])})

    with _stub(ignores_page) as source:
        assert listed_ids(source) == [1, 2, 3]
    assert len(calls) == 2  # page 1 short (a cap?); page 2 in its size repeats it: the end


def test_a_listing_whose_entries_lack_an_id_is_refused_not_dropped():
    def no_id(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"accounting_entries": [{"amount": 1}]})

    # A 2xx we cannot read is transient for every system (shared/integrations/http.py): the
    # poll fails visibly and tries again, it never drops the entry.
    with _stub(no_id) as source, pytest.raises(TransientError, match="integer") as caught:
        source.list_pending(None)
    assert caught.value.code == "unexpected_response"


def test_a_feed_that_never_ends_stops_the_poll_with_a_clear_error():
    counter = iter(range(10**9))

    def endless(request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params["limit"])
        return httpx.Response(200, json={"accounting_entries": _entries(
            [next(counter) for _ in range(limit)])})

    with _stub(endless) as source:
        source.max_requests_per_listing = 5
        with pytest.raises(PermanentError, match="did not end within 5 pages") as stopped:
            source.list_pending(None)
    assert stopped.value.code == "feed_too_long"


# --- the unit and its conversion ----------------------------------------------------------------


def _convert(source: TraedeSource, external_id: str, listed: dict | None, **option_overrides):
    unit = source.fetch_unit(external_id, listed)
    assert len(unit.items) == 1 and unit.items[0].attachment_url is None
    opts = options(**option_overrides).model_dump(mode="json")
    return source.to_source_item(unit, unit.items[0], target_display_name="Tripletex",
                                 options=opts)


def test_one_entry_is_one_balanced_expense_without_vat(traede_sandbox, company_id, source):
    entry_id, = traede_sandbox.add_entries(company_id, [entry("12345.67", text="Faktura 10001")])
    announcement, = source.list_pending(None).announcements
    item = _convert(source, announcement.external_id, announcement.payload)
    assert item.refusal is None and item.external_id == str(entry_id)
    expense = item.expense
    assert (expense.source, expense.source_ref) == ("traede", str(entry_id))
    assert [(r.account, r.amount, r.vat_code) for r in expense.rows] == [
        ("1500", Decimal("12345.67"), None), ("3000", Decimal("-12345.67"), None)]
    assert expense.amount == Decimal("12345.67")
    assert expense.currency == "DKK" and expense.description == "Faktura 10001"
    assert expense.expense_date == date(2026, 3, 18)


def test_a_negative_amount_flips_debit_and_credit(traede_sandbox, company_id, source):
    traede_sandbox.add_entries(company_id, [entry("-250.10")])
    announcement, = source.list_pending(None).announcements
    expense = _convert(source, announcement.external_id, announcement.payload).expense
    assert [(r.account, r.amount) for r in expense.rows] == [
        ("1500", Decimal("-250.10")), ("3000", Decimal("250.10"))]


@pytest.mark.parametrize("amount", ["0.10", "0.30", "1.15", "-2.67", "1234567.89", "0.07"])
def test_amounts_are_exact_decimals_never_floats(traede_sandbox, company_id, source, amount):
    traede_sandbox.add_entries(company_id, [entry(amount)])
    announcement, = source.list_pending(None).announcements
    assert Decimal(announcement.payload["amount"]) == Decimal(amount)
    item = _convert(source, announcement.external_id, announcement.payload)
    assert item.expense.rows[0].amount == Decimal(amount)


@pytest.mark.parametrize("zone, day", [("Europe/Copenhagen", date(2026, 1, 1)),
                                       ("UTC", date(2025, 12, 31)),
                                       ("America/New_York", date(2025, 12, 31))])
def test_the_accounting_date_is_the_connections_local_date(traede_sandbox, company_id, source,
                                                           zone, day):
    traede_sandbox.add_entries(company_id, [entry(day="2025-12-31T23:30:00Z")])
    announcement, = source.list_pending(None).announcements
    item = _convert(source, announcement.external_id, announcement.payload, time_zone=zone)
    assert item.expense.expense_date == day


def test_an_entry_created_after_go_live_but_dated_before_it_is_refused_with_the_reason(
        traede_sandbox, company_id, make_source):
    late, = traede_sandbox.add_entries(company_id, [
        entry(day="2025-12-31T22:30:00Z", created="2026-01-05T08:00:00Z")])
    source = make_source(go_live_date="2026-01-01")
    announcement, = source.list_pending(None).announcements
    item = _convert(source, str(late), announcement.payload, go_live_date="2026-01-01")
    assert item.expense is None
    assert "dated 2025-12-31 (Europe/Copenhagen), before this connection's go-live date " \
           "2026-01-01" in item.refusal
    # The go-live date moved back (the operator's fix) and the retry books it.
    item = _convert(source, str(late), announcement.payload, go_live_date="2025-12-31")
    assert item.refusal is None and item.expense.expense_date == date(2025, 12, 31)


def test_an_unmapped_account_is_refused_with_the_numbers_to_map(traede_sandbox, company_id,
                                                                 source):
    traede_sandbox.add_entries(company_id, [entry(account=1234, contra=4321)])
    announcement, = source.list_pending(None).announcements
    item = _convert(source, announcement.external_id, announcement.payload)
    assert item.expense is None
    assert "TRAEDE accounts 1234 and 4321 are not in this connection's account_mapping" \
        in item.refusal
    mapped = _convert(source, announcement.external_id, announcement.payload,
                      account_mapping={**MAPPING, "1234": "6300", "4321": "1920"})
    assert [r.account for r in mapped.expense.rows] == ["6300", "1920"]


@pytest.mark.parametrize("change, says", [
    ({"amount": "12.345"}, "more than two decimals"),
    ({"amount": 0}, "amount 0"),
    ({"amount": "lots"}, "not an accounting entry we can read"),
    ({"date": "yesterday"}, "not an accounting entry we can read"),
    ({"account": "5820"}, "not an accounting entry we can read"),
])
def test_an_entry_that_cannot_be_read_or_booked_is_refused(source, change, says):
    listed = {**_entries([7])[0], "amount": "1.00", **change}
    item = _convert(source, "7", listed)
    assert item.expense is None and says in item.refusal


def test_without_a_listed_copy_the_feed_is_listed_again(traede_sandbox, company_id, source):
    ids = traede_sandbox.add_entries(company_id, [entry("10.00"), entry("20.00")])
    item = _convert(source, str(ids[1]), None)
    assert item.expense.rows[0].amount == Decimal("20.00")
    source.send_reports("", [source.report_for(booked(ids[1]))])
    with pytest.raises(NotFoundError, match="marked as exported to this system already"):
        source.fetch_unit(str(ids[1]), None)
    with pytest.raises(NotFoundError):
        source.fetch_unit("99999999", None)


def test_a_listed_copy_of_another_entry_is_refused(source):
    with pytest.raises(PermanentError, match="is entry 8"):
        source.fetch_unit("7", _entries([8])[0])


# --- reports: marks -----------------------------------------------------------------------------


def test_a_booked_report_marks_with_the_voucher_number_as_note(traede_sandbox, company_id,
                                                               source):
    ids = traede_sandbox.generate_entries(company_id, 10)
    reports = [source.report_for(booked(i, f"2026-{n}")) for n, i in enumerate(ids)]
    source.send_reports("", reports)
    calls = traede_sandbox.mark_calls(company_id)
    assert len(calls) == 1 and calls[0]["status"] == 200 and calls[0]["applied"] == ids
    held = exports(traede_sandbox, company_id)
    assert [held[i][SYSTEM_ID]["note"] for i in ids] == [f"2026-{n}" for n in range(10)]


def test_more_than_ten_in_one_call_is_refused_before_anything_is_sent(traede_sandbox,
                                                                      company_id, source):
    ids = traede_sandbox.generate_entries(company_id, 11)
    with pytest.raises(ValueError):
        source.send_reports("", [source.report_for(booked(i)) for i in ids])
    assert traede_sandbox.mark_calls(company_id) == []


def test_a_failed_outcome_is_never_sent_and_the_entry_stays_in_the_feed(traede_sandbox,
                                                                         company_id, source):
    ids = traede_sandbox.generate_entries(company_id, 2)
    failed = source.report_for(ItemOutcome(str(ids[0]), booked=False,
                                           text="account 1234 is not mapped"))
    source.send_reports("", [failed])
    assert traede_sandbox.mark_calls(company_id) == []
    source.send_reports("", [failed, source.report_for(booked(ids[1]))])
    assert [c["applied"] for c in traede_sandbox.mark_calls(company_id)] == [[ids[1]]]
    assert listed_ids(source) == [ids[0]]


def test_a_stored_wire_reads_back_as_the_same_outcome(source):
    for outcome in (booked(48213, "2026-377"), ItemOutcome("48213", booked=False, text="why"),
                    ItemOutcome("48213", booked=True, text="Booked in X as (no number)")):
        report = source.report_for(outcome)
        again = source.read_report(json.loads(json.dumps(report.wire)))
        assert again.identity == report.identity and again.external_id == "48213"
    assert source.report_for(booked(1, "2026-377")).identity == ("SUCCESS", "2026-377")


def test_a_report_read_back_from_its_wire_can_be_sent(traede_sandbox, company_id, source):
    entry_id, = traede_sandbox.generate_entries(company_id, 1)
    wire = source.report_for(booked(entry_id, "2026-9")).wire
    source.send_reports("", [source.read_report(wire)])
    assert exports(traede_sandbox, company_id)[entry_id][SYSTEM_ID]["note"] == "2026-9"


def test_marking_a_marked_entry_again_is_harmless(traede_sandbox, company_id, source):
    entry_id, = traede_sandbox.generate_entries(company_id, 1)
    report = source.report_for(booked(entry_id))
    source.send_reports("", [report])
    source.send_reports("", [report])
    held = exports(traede_sandbox, company_id)[entry_id][SYSTEM_ID]
    assert held["times"] == 2 and held["note"] == "2026-377"


@pytest.mark.parametrize("mode, applied", [("before", 0), ("after", 3), ("partial", 2)])
def test_a_chunk_that_fails_after_applying_is_recognised_when_repeated(
        traede_sandbox, company_id, source, mode, applied):
    """The engine sends a failed chunk's reports alone; when a repeat fails again, an entry the
    feed no longer lists is held by TRAEDE already."""
    ids = traede_sandbox.generate_entries(company_id, 3)
    reports = [source.report_for(booked(i)) for i in ids]
    traede_sandbox.set_faults(company_id, mark_failure={"mode": mode, "count": 2,
                                                        "applied": 2})
    with pytest.raises(TransientError) as chunk_failed:
        source.send_reports("", reports)
    assert chunk_failed.value.status_code == 500
    with pytest.raises(TransientError) as repeat_failed:
        source.send_reports("", reports[:1])
    holds = [source.already_holds(r, repeat_failed.value) for r in reports]
    assert holds == [i < applied for i in range(3)]
    # The repeat alone succeeds once TRAEDE is well again: harmless either way.
    for report in reports:
        source.send_reports("", [report])
    assert listed_ids(source) == []


def test_already_holds_only_after_an_error_that_may_have_applied_the_mark(
        traede_sandbox, company_id, source):
    entry_id, = traede_sandbox.generate_entries(company_id, 1)
    report = source.report_for(booked(entry_id))
    source.send_reports("", [report])  # TRAEDE holds it
    kw = {"system": "traede"}
    assert source.already_holds(report, TransientError("HTTP 503", **kw))
    assert not source.already_holds(report, TransientError("never left", sent=False, **kw))
    assert not source.already_holds(report, RateLimitedError("HTTP 429", **kw))
    assert not source.already_holds(report, PermanentError("HTTP 422", **kw))
    failed = source.report_for(ItemOutcome(str(entry_id), booked=False, text="why"))
    assert not source.already_holds(failed, TransientError("HTTP 503", **kw))
    # A stale read lists it again: in doubt, not held.
    traede_sandbox.set_faults(company_id, redeliver_marked_fetches=1)
    assert not source.already_holds(report, TransientError("HTTP 503", **kw))


def test_completed_does_nothing(source):
    assert source.completed("1", {}) is None


# --- errors ---------------------------------------------------------------------------------------


def test_a_wrong_token_is_an_auth_error_about_the_token(traede_company, make_source):
    source = make_source({**traede_company, "access_token": "not-the-token"})
    with pytest.raises(AuthError) as refused:
        source.list_pending(None)
    assert refused.value.status_code == 401 and refused.value.code == "invalid_token"
    assert "access token" in refused.value.message and "app key" not in refused.value.message
    assert "not-the-token" not in refused.value.message


def test_a_revoked_token_is_an_auth_error_not_retried(traede_sandbox, company_id, source):
    traede_sandbox.rotate_token(company_id)
    with pytest.raises(AuthError, match="HTTP 401"):
        source.list_pending(None)


def test_a_wrong_app_key_is_an_auth_error_about_the_app_key(traede_company, make_source):
    source = make_source({**traede_company, "app_key": "app-not-ours"})
    with pytest.raises(AuthError) as refused:
        source.list_pending(None)
    assert refused.value.status_code == 403 and refused.value.code == "forbidden"
    assert "X-Traede-App-Key" in refused.value.message
    assert "Missing or invalid X-Traede-App-Key" in refused.value.message  # TRAEDE's words
    assert "app-not-ours" not in refused.value.message


def test_429_carries_retry_after(traede_sandbox, company_id, source):
    traede_sandbox.set_faults(company_id, fail_next=[{"status": 429, "retry_after": 7}])
    with pytest.raises(RateLimitedError) as limited:
        source.list_pending(None)
    assert limited.value.retry_after == 7 and limited.value.retryable


def test_an_http_date_retry_after_is_read():
    when = datetime.now(UTC) + timedelta(seconds=120)

    def limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": format_datetime(when, usegmt=True)},
                              json={"message": "Too Many Attempts."})

    with _stub(limited) as source, pytest.raises(RateLimitedError) as raised:
        source.list_pending(None)
    assert 100 < raised.value.retry_after <= 120


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(traede_sandbox, company_id, source, status):
    traede_sandbox.set_faults(company_id, fail_next=[{"status": status}])
    with pytest.raises(TransientError) as failed:
        source.list_pending(None)
    assert failed.value.status_code == status and failed.value.sent


def test_the_rate_limit_knob_answers_429_with_its_retry_after(traede_sandbox, company_id,
                                                               source):
    traede_sandbox.set_faults(company_id, rate_limit={"limit": 1, "window_seconds": 60})
    source.list_pending(None)  # an empty feed: one request
    with pytest.raises(RateLimitedError) as limited:
        source.list_pending(None)
    assert limited.value.status_code == 429 and 0 < limited.value.retry_after <= 60


def test_a_slow_answer_is_a_transient_timeout_that_may_have_reached_traede(
        traede_sandbox, traede_company, company_id):
    traede_sandbox.set_faults(company_id, latency_ms=1500)
    source = TraedeSource(traede_company["base_url"], access_token=traede_company["access_token"],
                          app_key=traede_company["app_key"], options=options(),
                          timeout=httpx.Timeout(0.3))
    with source, pytest.raises(TransientError) as failed:
        source.list_pending(None)
    assert failed.value.code == "timeout" and failed.value.sent


def test_iso8601_datetimes_read_the_same_as_laravels(traede_sandbox, make_source):
    company = traede_sandbox.create_company(datetime_format="iso8601")
    entry_id, = traede_sandbox.add_entries(company["company_id"],
                                           [entry(day="2025-12-31T23:30:00Z")])
    source = make_source(company)
    announcement, = source.list_pending(None).announcements
    assert announcement.payload["date"] == "2025-12-31T23:30:00+00:00"
    item = _convert(source, str(entry_id), announcement.payload)
    assert item.expense.expense_date == date(2026, 1, 1)


def test_a_refused_mark_is_permanent_with_traedes_reasons(traede_sandbox, company_id, source):
    with pytest.raises(PermanentError) as refused:
        source.send_reports("", [source.report_for(booked(999_999_999))])
    assert refused.value.status_code == 422 and not refused.value.retryable
    assert "accounting entries.0.accounting entry id is invalid" in refused.value.message


def test_nothing_listening_is_transient_and_provably_unsent():
    source = TraedeSource(f"http://127.0.0.1:{free_port()}/v10", access_token="t",
                          app_key="k", options=options())
    with source, pytest.raises(TransientError) as failed:
        source.list_pending(None)
    assert failed.value.sent is False and failed.value.code == "connection_error"


def test_a_wrong_base_url_is_a_clear_not_found(traede_sandbox, traede_company, make_source):
    source = make_source({**traede_company, "base_url": traede_sandbox.root_url + "/v9"})
    with pytest.raises(NotFoundError, match="base_url"):
        source.list_pending(None)
