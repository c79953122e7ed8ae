"""The Brex adapter (``shared.integrations.brex``) against the real Brex sandbox server.

Every rule of the connector is checked on the wire: cursor paging with limit <= 100, the page
cap and a looping cursor, the high-water mark from the data, minor units by ISO 4217 exponent,
SPLIT parents and children, expiring receipt links, the memo write-back and its
Idempotency-Key, and changes after booking seen through the content fingerprint.
"""

from __future__ import annotations

import io
import time
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.integrations.brex import SYSTEM, BrexSource
from shared.integrations.brex.client import ListingStopped
from shared.integrations.brex.currencies import UnknownCurrency, to_major
from shared.integrations.brex.options import BrexOptions, read_options
from shared.integrations.errors import AuthError, PermanentError, TransientError
from shared.integrations.sources import ItemOutcome
from tests.fixtures.brex_sandbox import BrexSandbox

UBER = "UBER *TRIP HELP.UBER.COM"  # USD, RIDESHARE_AND_TAXI
OKURA = "HOTEL OKURA TOKYO"  # JPY, LODGING
KUWAIT = "KUWAIT AIRWAYS KWI"  # KWD, AIRLINE_EXPENSES
OPTIONS = {"default_account": "7140", "category_accounts": {"LODGING": "7130"}}


@pytest.fixture
def source(brex_sandbox: BrexSandbox, brex_account: dict[str, Any]):
    adapter = BrexSource(brex_account["base_url"], token=brex_account["token"], options=OPTIONS)
    yield adapter
    adapter.close()


def acct(account: dict[str, Any]) -> str:
    return account["account_id"]


def expense(**fields: Any) -> dict[str, Any]:
    return {"original_amount": 12_345, "merchant": UBER, **fields}


def poll_all(source: BrexSource, cursor: str | None = None, polls: int = 10):
    """Announcements of successive polls until one leaves the cursor where it was."""
    seen = []
    for _ in range(polls):
        page = source.list_pending(cursor)
        seen += page.announcements
        if page.next_cursor == cursor:
            return seen, cursor
        cursor = page.next_cursor
        if "resume" not in json.loads(cursor):
            return seen, cursor
    raise AssertionError("the poll never completed a walk")


def item_of(source: BrexSource, expense_id: str, options: dict[str, Any] | None = None):
    unit = source.fetch_unit(expense_id, None)
    (fetched,) = unit.items
    return fetched, source.to_source_item(unit, fetched, target_display_name="Ledger",
                                          options=options if options is not None else OPTIONS)


# --- paging, cursor and high-water mark -------------------------------------------------------


def test_poll_walks_every_page_at_limit_100_and_announces_only_approved(
        brex_sandbox, brex_account, source):
    made = brex_sandbox.generate_expenses(acct(brex_account), 230, seed=7)
    everything = brex_sandbox.expenses(acct(brex_account))
    approved = {e["id"] for e in everything if e["status"] in ("APPROVED", "SETTLED")}
    brex_sandbox.reset_request_counts(acct(brex_account))

    page = source.list_pending(None)

    assert {a.external_id for a in page.announcements} == approved
    assert len(made["expense_ids"]) == 230 and len(approved) < 230
    counts = brex_sandbox.request_counts(acct(brex_account))
    # All pages, 100 at a time (withdrawn ones are listed, and announced only if they were
    # ever approved), plus one look for SPLIT parents around these purchases.
    listed = [e for e in everything if e["status"] in ("APPROVED", "SETTLED", "VOID", "CANCELED")]
    assert len(listed) > 100  # more than one page
    assert counts == {"GET /expenses": -(-len(listed) // 100) + 1}
    state = brex_sandbox.account_state(acct(brex_account))
    assert state["ignored_params"] == {}  # every filter we sent is one Brex knows
    hwm = json.loads(page.next_cursor)["hwm"]
    assert hwm == max(e["updated_at"] for e in everything if e["id"] in approved).replace(
        "Z", "000+00:00")


def test_hwm_comes_from_the_data_and_the_next_poll_asks_from_it_minus_overlap(
        brex_sandbox, brex_account, source):
    first = brex_sandbox.add_expenses(acct(brex_account), [expense()])
    page = source.list_pending(None)
    assert [a.external_id for a in page.announcements] == first

    # Nothing new: the same expense comes back (overlap, inclusive bound), the HWM stays.
    again = source.list_pending(page.next_cursor)
    assert [a.external_id for a in again.announcements] == first
    assert again.next_cursor == page.next_cursor

    # Without overlap, the inclusive bound still brings back the expense at the HWM itself.
    no_overlap = BrexSource(brex_account["base_url"], token=brex_account["token"],
                            options={**OPTIONS, "overlap_seconds": 0})
    assert [a.external_id for a in no_overlap.list_pending(page.next_cursor).announcements] \
        == first

    second = brex_sandbox.add_expenses(acct(brex_account), [expense()])
    later = source.list_pending(page.next_cursor)
    assert {a.external_id for a in later.announcements} == {*first, *second}
    assert json.loads(later.next_cursor)["hwm"] > json.loads(page.next_cursor)["hwm"]


def test_an_approved_expense_voided_later_is_announced_again_never_approved_void_is_not(
        brex_sandbox, brex_account, source):
    booked, never = brex_sandbox.add_expenses(acct(brex_account), [
        expense(), expense(status="VOID", payment_status="CANCELED")])
    first = source.list_pending(None)
    assert [a.external_id for a in first.announcements] == [booked]

    brex_sandbox.change_expense(acct(brex_account), booked, status="VOID")
    later = source.list_pending(first.next_cursor)

    (again,) = later.announcements
    assert again.external_id == booked and again.version != first.announcements[0].version
    assert never not in {a.external_id for a in later.announcements}


def test_go_live_bounds_the_first_poll(brex_sandbox, brex_account):
    brex_sandbox.add_expenses(acct(brex_account), [expense()])
    source = BrexSource(brex_account["base_url"], token=brex_account["token"],
                        options={**OPTIONS, "go_live": datetime.now(UTC) + timedelta(hours=1)})
    page = source.list_pending(None)
    assert page.announcements == [] and json.loads(page.next_cursor)["hwm"] is None


def test_a_walk_past_the_page_cap_resumes_and_moves_the_hwm_only_when_complete(
        brex_sandbox, brex_account, source):
    brex_sandbox.generate_expenses(acct(brex_account), 25, status="APPROVED")
    source.page_size, source.max_pages = 10, 2  # 20 per poll

    first = source.list_pending(None)
    state = json.loads(first.next_cursor)
    assert len(first.announcements) == 20
    assert state["hwm"] is None and state["resume"]["cursor"]

    second = source.list_pending(first.next_cursor)
    assert len(second.announcements) == 5
    assert "resume" not in json.loads(second.next_cursor)
    assert json.loads(second.next_cursor)["hwm"] is not None
    ids = {a.external_id for a in [*first.announcements, *second.announcements]}
    assert len(ids) == 25


@pytest.mark.parametrize("loop", ["restart", "repeat"])
def test_a_looping_cursor_fails_the_poll_in_bounded_requests(brex_sandbox, brex_account, source,
                                                             loop):
    brex_sandbox.generate_expenses(acct(brex_account), 30, status="APPROVED")
    source.page_size = 10
    settled = source.list_pending(None)  # a sound walk first: the HWM is set
    brex_sandbox.set_faults(acct(brex_account), cursor_loop=loop)
    brex_sandbox.reset_request_counts(acct(brex_account))

    with pytest.raises(ListingStopped) as stopped:
        source.list_pending(settled.next_cursor)

    assert stopped.value.code == "cursor_loop" and stopped.value.retryable
    # restart: the 3 pages, then page 1 again; repeat: page 1 twice.
    assert brex_sandbox.request_counts(acct(brex_account))["GET /expenses"] == (
        4 if loop == "restart" else 2)
    brex_sandbox.clear_faults(acct(brex_account))
    assert source.list_pending(settled.next_cursor).next_cursor == settled.next_cursor


def test_the_walk_refuses_to_loop_even_without_a_cap(brex_sandbox, brex_account, source):
    brex_sandbox.generate_expenses(acct(brex_account), 3, status="APPROVED")
    brex_sandbox.set_faults(acct(brex_account), cursor_loop="repeat")
    source.page_size = 1
    with pytest.raises(ListingStopped) as stopped:
        source.walk_items({"status[]": ["APPROVED"]}, max_pages=10_000)
    assert stopped.value.code == "cursor_loop"


def test_limit_above_100_is_refused_before_sending(source):
    with pytest.raises(ValueError, match="1..100"):
        source.list_page({}, limit=101)


def test_our_memo_write_moves_updated_at_but_not_the_version(brex_sandbox, brex_account):
    source = BrexSource(brex_account["base_url"], token=brex_account["token"],
                        options={**OPTIONS, "memo_write_back": True})
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense(memo="Taxi")])
    before = source.list_pending(None)
    report = source.report_for(ItemOutcome(eid, booked=True, text="Booked", external_number="77",
                                           export_id="exp_1"))
    source.send_reports(eid, [report])

    after = source.list_pending(before.next_cursor)
    (announced,) = after.announcements
    assert announced.external_id == eid  # it comes back: the engine dedupes it by id ...
    assert announced.version == before.announcements[0].version  # ... as unchanged content
    assert json.loads(after.next_cursor)["hwm"] > json.loads(before.next_cursor)["hwm"]


# --- minor units ----------------------------------------------------------------------------


def test_exponents_by_iso_4217_never_by_100():
    assert to_major(1500, "JPY") == 1500
    assert str(to_major(12345, "KWD")) == "12.345"
    assert str(to_major(700, "USD")) == "7.00"
    assert str(to_major(-250, "EUR")) == "-2.50"
    with pytest.raises(UnknownCurrency, match="XYZ"):
        to_major(100, "XYZ")


def test_jpy_and_kwd_expenses_convert_by_their_exponents(brex_sandbox, brex_account, source):
    jpy, kwd, kwd_round = brex_sandbox.add_expenses(acct(brex_account), [
        expense(merchant=OKURA, original_amount=15_000, currency="JPY", billing_amount=15_000),
        expense(merchant=KUWAIT, original_amount=12_340, currency="KWD", billing_amount=4_012),
        expense(merchant=KUWAIT, original_amount=12_345, currency="KWD", billing_amount=4_013)])
    options = {**OPTIONS, "amount_field": "original_amount"}

    _, yen = item_of(source, jpy, options)
    assert yen.refusal is None
    assert yen.expense.currency == "JPY" and yen.expense.amount == 15_000
    assert yen.expense.rows[0].account == "7130"  # LODGING mapped

    _, dinar = item_of(source, kwd, options)
    assert dinar.expense.currency == "KWD" and str(dinar.expense.amount) == "12.34"

    _, odd = item_of(source, kwd_round, options)
    assert odd.expense is None and "12.345" in odd.refusal and "not rounded" in odd.refusal

    # billing_amount (the default) is in the account's currency, USD cents.
    _, billed = item_of(source, kwd)
    assert billed.expense.currency == "USD" and str(billed.expense.amount) == "40.12"


def test_ledger_currency_refuses_an_amount_in_another(brex_sandbox, brex_account, source):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense()])
    _, item = item_of(source, eid, {**OPTIONS, "ledger_currency": "NOK"})
    assert item.expense is None and "not the ledger currency NOK" in item.refusal


def test_an_unknown_currency_is_a_clear_refusal(source):
    from shared.integrations.brex.conversion import Family, convert
    from shared.integrations.brex.models import Expense

    odd = Expense.model_validate({"id": "e1", "updated_at": "2026-01-01T00:00:00Z",
                                  "status": "APPROVED", "expense_type": "CARD",
                                  "billing_amount": {"amount": 100, "currency": "XYZ"}})
    converted = convert(Family(odd), BrexOptions(**OPTIONS))
    assert converted.expense is None and "'XYZ' is not an ISO 4217 currency" in converted.refusal


def test_unmapped_category_without_default_names_what_to_map(brex_sandbox, brex_account,
                                                             source):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense()])
    _, item = item_of(source, eid, {"category_accounts": {"LODGING": "7130"}})
    assert "RIDESHARE_AND_TAXI" in item.refusal and "category_accounts" in item.refusal
    _, mapped = item_of(source, eid, {"merchant_accounts": {UBER: "7150"}})
    assert mapped.expense.rows[0].account == "7150"
    assert mapped.expense.rows[1].account == "2400"  # CARD: owed to the card issuer


def test_options_refuse_split_as_approved_and_unknown_keys():
    with pytest.raises(PermanentError, match="approved_statuses: .*SPLIT"):
        read_options({"approved_statuses": ["APPROVED", "SPLIT"]})
    with pytest.raises(PermanentError, match="approved_status: Extra inputs"):
        read_options({"approved_status": ["APPROVED"]})
    with pytest.raises(PermanentError, match="invalid"):
        BrexSource("http://127.0.0.1:9", token="t", options={"ledger_currency": "XYZ"})


# --- SPLIT ----------------------------------------------------------------------------------


def test_split_family_is_one_unit_under_the_parent(brex_sandbox, brex_account, source):
    (parent,) = brex_sandbox.add_expenses(acct(brex_account), [expense(original_amount=10_001)])
    split = brex_sandbox.split(acct(brex_account), parent, [6_000, 4_001])
    children = [c["id"] for c in split["children"]]

    page = source.list_pending(None)
    assert [a.external_id for a in page.announcements] == [parent]  # children never alone

    fetched, item = item_of(source, parent)
    assert item.external_id == parent
    debit = [r for r in item.expense.rows if r.amount > 0]
    assert sorted(str(r.amount) for r in debit) == ["40.01", "60.00"]
    assert str(item.expense.amount) == "100.01"
    assert fetched.attachment_url  # the parent's receipt
    assert {c.id for c in fetched.raw.children} == set(children)


def test_a_child_changed_later_alone_is_announced_under_its_parent(brex_sandbox, brex_account,
                                                                   source):
    (parent,) = brex_sandbox.add_expenses(acct(brex_account), [expense(original_amount=10_000)])
    children = [c["id"] for c in brex_sandbox.split(acct(brex_account), parent,
                                                    [5_000, 5_000])["children"]]
    first = source.list_pending(None)
    _, booked = item_of(source, parent)

    # Much later, one child alone changes (its parent's updated_at does not move).
    source.options = source.options.model_copy(update={"overlap_seconds": 0})
    brex_sandbox.change_expense(acct(brex_account), children[0], status="VOID")
    brex_sandbox.change_expense(acct(brex_account), children[1], category="LODGING")
    later = source.list_pending(first.next_cursor)

    assert [a.external_id for a in later.announcements] == [parent]
    _, now = item_of(source, parent)
    assert now.content_fingerprint != booked.content_fingerprint


def test_a_parent_booked_before_its_split_changes_content_never_adds_items(
        brex_sandbox, brex_account, source):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense(original_amount=10_000)])
    _, before = item_of(source, eid)
    first = source.list_pending(None)

    brex_sandbox.split(acct(brex_account), eid, [3_000, 7_000])
    later = source.list_pending(first.next_cursor)
    assert [a.external_id for a in later.announcements] == [eid]
    assert later.announcements[0].version != first.announcements[0].version

    unit = source.fetch_unit(eid, None)
    assert [i.external_id for i in unit.items] == [eid]  # the same one item, new content
    _, after = item_of(source, eid)
    assert after.content_fingerprint != before.content_fingerprint
    assert after.expense.amount == before.expense.amount


# --- changes after booking ------------------------------------------------------------------


@pytest.mark.parametrize("change", [
    {"status": "VOID"}, {"billing_amount": 9_999}, "refund"])
def test_a_change_after_booking_changes_the_fingerprint(brex_sandbox, brex_account, source,
                                                        change):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense()])
    _, booked = item_of(source, eid)
    assert booked.expense is not None
    if change == "refund":
        brex_sandbox.refund(acct(brex_account), eid)
    else:
        brex_sandbox.change_expense(acct(brex_account), eid, **change)
    _, now = item_of(source, eid)
    assert now.content_fingerprint != booked.content_fingerprint
    if change != {"billing_amount": 9_999}:
        assert now.expense is None and now.refusal


def test_settling_and_memo_edits_do_not_change_the_fingerprint(brex_sandbox, brex_account,
                                                               source):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense(status="APPROVED")])
    _, booked = item_of(source, eid)
    brex_sandbox.change_expense(acct(brex_account), eid, status="SETTLED", memo="edited")
    _, now = item_of(source, eid)
    assert now.content_fingerprint == booked.content_fingerprint


def test_a_partial_refund_credit_books_as_a_reversal(brex_sandbox, brex_account, source):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense(billing_amount=10_000)])
    credit = brex_sandbox.refund(acct(brex_account), eid, 2_500)["credit"]["id"]
    _, item = item_of(source, credit)
    assert item.refusal is None
    assert [str(r.amount) for r in item.expense.rows] == ["-25.00", "25.00"]


# --- receipts -------------------------------------------------------------------------------


def test_receipt_is_downloaded_without_our_token(brex_sandbox, brex_account, source):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense(receipts=1)])
    fetched, item = item_of(source, eid)
    sink = io.BytesIO()
    source.download_attachment(fetched.attachment_url, sink, max_bytes=1_000_000)
    assert sink.getvalue().startswith(b"%PDF-")
    assert item.receipt_content_type == "application/pdf"
    events = brex_sandbox.receipt_events(acct(brex_account))
    assert [e["status"] for e in events if e["event"] == "download"] == [200]


def test_an_expired_link_fetches_the_expense_once_more(brex_sandbox, brex_account, source):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense(receipts=1)])
    brex_sandbox.set_faults(acct(brex_account), expired_links=True)
    fetched, _ = item_of(source, eid)
    brex_sandbox.clear_faults(acct(brex_account))
    brex_sandbox.reset_request_counts(acct(brex_account))

    sink = io.BytesIO()
    source.download_attachment(fetched.attachment_url, sink, max_bytes=1_000_000)

    assert sink.getvalue().startswith(b"%PDF-")
    downloads = [e for e in brex_sandbox.receipt_events(acct(brex_account))
                 if e["event"] == "download"]
    assert [e["status"] for e in downloads] == [403, 200]
    assert brex_sandbox.request_counts(acct(brex_account)) == {"GET /expenses/{expense_id}": 1}


def test_a_link_that_stays_expired_is_refused_after_one_refetch(brex_sandbox, brex_account,
                                                                source):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense(receipts=1)])
    brex_sandbox.set_faults(acct(brex_account), expired_links=True)
    fetched, _ = item_of(source, eid)
    with pytest.raises(PermanentError) as refused:
        source.download_attachment(fetched.attachment_url, io.BytesIO(), max_bytes=1_000_000)
    assert refused.value.code == "link_expired"
    downloads = [e for e in brex_sandbox.receipt_events(acct(brex_account))
                 if e["event"] == "download"]
    assert len(downloads) == 2


def test_receipt_size_cap(brex_sandbox, brex_account, source):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense(receipts=1)])
    fetched, _ = item_of(source, eid)
    with pytest.raises(PermanentError) as refused:
        source.download_attachment(fetched.attachment_url, io.BytesIO(), max_bytes=100)
    assert refused.value.code == "receipt_too_large"


def test_the_listed_payload_keeps_no_receipt_link(brex_sandbox, brex_account, source):
    brex_sandbox.add_expenses(acct(brex_account), [expense(receipts=2)])
    (announced,) = source.list_pending(None).announcements
    assert "X-Amz-Signature" not in json.dumps(announced.payload)


# --- memo write-back ------------------------------------------------------------------------


@pytest.fixture
def writer(brex_sandbox, brex_account):
    adapter = BrexSource(brex_account["base_url"], token=brex_account["token"],
                         options={**OPTIONS, "memo_write_back": True})
    yield adapter
    adapter.close()


def booked_report(source: BrexSource, eid: str, number: str = "1234"):
    return source.report_for(ItemOutcome(eid, booked=True, text=f"Booked as {number}",
                                         external_number=number, export_id="exp_abc"))


def test_memo_write_back_keeps_the_memo_and_uses_the_export_key(brex_sandbox, brex_account,
                                                                writer):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense(memo="Client dinner")])
    report = booked_report(writer, eid)
    writer.send_reports(eid, [report])
    writer.send_reports(eid, [report])  # a repeat: recognised, nothing written

    (write,) = brex_sandbox.memo_writes(acct(brex_account))
    assert write["idempotency_key"] == "exp_abc:memo"
    assert write["memo"] == "Client dinner [Booked as voucher 1234 (export exp_abc)]"
    assert writer.read_report(report.wire).identity == report.identity


def test_memo_put_applied_then_502_is_settled_by_the_repeat(brex_sandbox, brex_account, writer):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense(memo=None)])
    brex_sandbox.set_faults(acct(brex_account), put_fail_after_apply=1)
    report = booked_report(writer, eid)
    with pytest.raises(TransientError):
        writer.send_reports(eid, [report])
    assert writer.already_holds(report, TransientError("x", system="brex"))

    writer.send_reports(eid, [report])  # the engine's repeat: the memo holds the tag already
    writes = brex_sandbox.memo_writes(acct(brex_account))
    assert [w["applied"] for w in writes] == [True]
    memo = next(e for e in brex_sandbox.expenses(acct(brex_account)) if e["id"] == eid)["memo"]
    assert memo == "[Booked as voucher 1234 (export exp_abc)]"


def test_memo_repeat_with_the_same_key_is_replayed_not_applied(brex_sandbox, brex_account,
                                                               writer):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense(memo="x")])
    writer.update_memo(eid, "x [tag]", idempotency_key="exp_1:memo")
    brex_sandbox.change_expense(acct(brex_account), eid, memo="edited by a person")
    writer.update_memo(eid, "x [tag]", idempotency_key="exp_1:memo")
    writes = brex_sandbox.memo_writes(acct(brex_account))
    assert [(w["applied"], w["replayed"]) for w in writes] == [(True, False), (False, True)]


def test_non_ascii_memo_is_folded_before_it_is_sent(brex_sandbox, brex_account, writer):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense()])
    brex_sandbox.change_expense(acct(brex_account), eid, memo="Middag på Grünerløkka")
    writer.send_reports(eid, [booked_report(writer, eid)])
    (write,) = brex_sandbox.memo_writes(acct(brex_account))
    assert write["memo"].startswith("Middag pa Grunerl?kka [Booked as voucher 1234")


def test_no_write_back_and_failures_send_nothing(brex_sandbox, brex_account, source, writer):
    (eid,) = brex_sandbox.add_expenses(acct(brex_account), [expense()])
    source.send_reports(eid, [booked_report(source, eid)])  # write-back off
    failed = writer.report_for(ItemOutcome(eid, booked=False, text="account 7140 missing"))
    writer.send_reports(eid, [failed])
    assert brex_sandbox.memo_writes(acct(brex_account)) == []
    assert writer.read_report(failed.wire).identity == ("FAILED", "account 7140 missing")


# --- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["revoked", "expired"])
def test_a_dead_token_is_an_auth_error_that_says_what_to_do(brex_sandbox, brex_account, state):
    token = brex_sandbox.add_token(acct(brex_account), ["expenses.card.readonly"])
    brex_sandbox.set_token_state(acct(brex_account), token, state)
    source = BrexSource(brex_account["base_url"], token=token, options=OPTIONS)
    with pytest.raises(AuthError, match="new user token") as refused:
        source.list_pending(None)
    assert token not in refused.value.message


def test_the_registry_entry_builds_the_adapter(brex_account):
    class Connection:
        base_url = brex_account["base_url"]
        options = {**OPTIONS, "memo_write_back": True}

    adapter = SYSTEM.build_client(Connection(), {"user_token": brex_account["token"]})
    assert isinstance(adapter, BrexSource) and adapter.options.memo_write_back
    assert repr(adapter).count(brex_account["token"]) == 0
    adapter.close()


def test_a_connection_without_a_user_token_is_told_what_to_store():
    class Connection:
        base_url = "http://127.0.0.1:9"
        options: dict[str, Any] = {}

    with pytest.raises(AuthError, match="user_token"):
        SYSTEM.build_client(Connection(), {"client_id": "x", "client_secret": "y"})


# --- errors and the list's lag --------------------------------------------------------------


@pytest.mark.parametrize(("status", "retry_after", "kind", "code"), [
    (429, None, "RateLimitedError", "TOO_MANY_REQUESTS"),  # Brex sends no Retry-After [doc]
    (429, 7, "RateLimitedError", "TOO_MANY_REQUESTS"),
    (503, None, "TransientError", "SERVICE_UNAVAILABLE"),
    (502, None, "TransientError", "http_502"),  # a gateway's HTML page
    (400, None, "PermanentError", "BAD_REQUEST"),
])
def test_brex_errors_map_to_the_taxonomy(brex_sandbox, brex_account, source, status,
                                         retry_after, kind, code):
    brex_sandbox.set_faults(acct(brex_account), fail_next=[
        {"status": status, "retry_after": retry_after}])
    with pytest.raises(Exception) as raised:
        source.list_pending(None)
    error = raised.value
    assert type(error).__name__ == kind and error.code == code and error.status_code == status
    assert error.request_id  # X-Brex-Trace-Id, what Brex support asks for
    if retry_after is not None:
        assert error.retry_after == retry_after


def test_a_lagging_list_never_makes_the_hwm_skip_an_expense(brex_sandbox, brex_account):
    """The HWM is the data's, not our clock: an expense the list does not show yet is listed
    by a later poll even without overlap."""
    source = BrexSource(brex_account["base_url"], token=brex_account["token"],
                        options={**OPTIONS, "overlap_seconds": 0})
    (first,) = brex_sandbox.add_expenses(acct(brex_account), [expense()])
    polled = source.list_pending(None)
    brex_sandbox.set_faults(acct(brex_account), list_lag_ms=400)
    (late,) = brex_sandbox.add_expenses(acct(brex_account), [expense()])

    hidden = source.list_pending(polled.next_cursor)
    assert [a.external_id for a in hidden.announcements] == [first]
    assert hidden.next_cursor == polled.next_cursor

    for _ in range(50):  # until the sandbox shows it (400 ms); no assertion on time
        shown = source.list_pending(hidden.next_cursor)
        if late in {a.external_id for a in shown.announcements}:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the lagging expense never showed")
