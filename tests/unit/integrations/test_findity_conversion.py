"""Findity accounting voucher -> ExpenseIn: signs, dimensions, the VAT merge and its fallback.

The oracle for "VAT is booked exactly once" is ``booked_vat``: it books an expense the way
Tripletex does (a row with a VAT code has its VAT split out of the gross at the code's rate; a
row on a VAT account without a code is VAT as it stands) and must give the VAT Findity booked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from shared.domain.statuses import ExpenseStatus
from shared.domain.expenses import ExpenseIn
from shared.integrations.errors import PermanentError
from shared.integrations.findity.conversion import (
    DEFAULT_VAT_ACCOUNTS,
    UnbookableVoucher,
    convert_voucher,
    payment_format_error,
    voucher_to_expense,
)
from shared.integrations.findity.models import (
    AccountingVoucher,
    VerificationListsType,
    VoucherPackage,
)

F = VerificationListsType
D = Decimal
PER_EXPENSE_FORMATS = (F.REPORT_PER_EXPENSE, F.USER_PER_EXPENSE, F.EXPENSE)
PER_ACCOUNT_FORMATS = (F.REPORT_PER_ACCOUNT, F.USER_PER_ACCOUNT)
# Findity tax code -> rate, as the sandbox generator and the Tripletex sandbox use them.
RATES = {"1": D("25"), "11": D("15"), "13": D("12")}


# --- helpers ----------------------------------------------------------------------------------


def row(amount: Any, account: str, *, tax: Any = 0, code: str | None = None,
        expense: str | None = None, dims: dict[str, str] | None = None,
        text: str = "") -> dict[str, Any]:
    return {"amount": amount, "taxAmount": tax, "account": account, "taxCode": code,
            "dimension": dims or {}, "text": text, "expenseRecordId": expense}


def voucher(*rows: dict[str, Any], id: str = "v-1", text: str = "Oslo-Bergen trip",
            **extra: Any) -> AccountingVoucher:
    return AccountingVoucher.model_validate({
        "id": id, "ownerId": "u-1001", "ownerName": "Kari Nordmann", "expenseReportId": "r-5001",
        "date": "2026-03-18", "currency": "NOK", "text": text, "voucherRows": list(rows), **extra,
    })


def guide_voucher() -> AccountingVoucher:
    """The example voucher of the Findity guide, verbatim."""
    return AccountingVoucher.model_validate({
        "id": "84bd3279bada45bfa97b0a3fd06fa775", "ownerId": "u-1001", "ownerName": "Kari Nordmann",
        "expenseReportId": "r-5001", "date": "2026-03-18", "currency": "NOK",
        "text": "Oslo-Bergen trip",
        "basisUrl": "https://findity.example/api/v1/connect/basis/84bd3279bada45bfa97b0a3fd06fa775",
        "voucherRows": [
            {"amount": 1000.00, "taxAmount": 0, "account": "7140", "taxCode": None,
             "dimension": {"costCenter": "100", "project": "P-17"}, "text": "Flight",
             "expenseRecordId": "e-9001"},
            {"amount": 250.00, "taxAmount": 0, "account": "2710", "taxCode": "1",
             "dimension": {}, "text": "Input VAT 25%", "expenseRecordId": "e-9002"},
            {"amount": 1000.00, "taxAmount": 250.00, "account": "6800", "taxCode": "1",
             "dimension": {"costCenter": "100"}, "text": "Office supplies",
             "expenseRecordId": "e-9002"},
            {"amount": -2250.00, "taxAmount": 0, "account": "2930", "taxCode": None,
             "dimension": {}, "text": "Owed to employee", "expenseRecordId": None},
        ],
    })


def source_vat(v: AccountingVoucher, vat_accounts: Iterable[str] = DEFAULT_VAT_ACCOUNTS) -> Decimal:
    """The VAT Findity booked: the sum of its VAT-account rows."""
    accounts = set(vat_accounts)
    return sum((r.amount for r in v.voucher_rows if r.account in accounts), D("0"))


def booked_vat(expense: ExpenseIn, vat_accounts: Iterable[str] = DEFAULT_VAT_ACCOUNTS,
               rates: dict[str, Decimal] = RATES) -> Decimal:
    """The VAT a target like Tripletex ends up with after booking ``expense``."""
    accounts = set(vat_accounts)
    total = D("0")
    for r in expense.rows:
        if r.vat_code is not None:
            rate = rates[r.vat_code]
            total += (r.amount * rate / (100 + rate)).quantize(D("0.01"), rounding=ROUND_HALF_UP)
        elif r.account in accounts:
            total += r.amount
    return total


def assert_vat_once(expense: ExpenseIn, v: AccountingVoucher, *,
                    vat_accounts: Iterable[str] = DEFAULT_VAT_ACCOUNTS) -> None:
    accounts = set(vat_accounts)
    with_code = [r for r in expense.rows if r.vat_code is not None]
    on_vat_accounts = [r for r in expense.rows if r.account in accounts]
    assert not (with_code and on_vat_accounts), "VAT both as a VAT code and as a VAT-account row"
    assert booked_vat(expense, accounts) == source_vat(v, accounts)


def as_tuples(expense: ExpenseIn) -> list[tuple]:
    return [(r.account, r.amount, r.vat_code) for r in expense.rows]


# --- the guide's example ----------------------------------------------------------------------


def test_guide_example_merges_the_vat_row_into_the_cost_row():
    v = guide_voucher()
    expense = voucher_to_expense(v, verification_lists_type=F.REPORT_PER_EXPENSE)

    assert as_tuples(expense) == [
        ("7140", D("1000.00"), None),
        ("6800", D("1250.00"), "1"),
        ("2930", D("-2250.00"), None),
    ]
    assert "2710" not in {r.account for r in expense.rows}
    flight, supplies, owed = expense.rows
    assert (flight.department, flight.project, flight.description) == ("100", "P-17", "Flight")
    assert (supplies.department, supplies.project) == ("100", None)
    assert (owed.department, owed.project, owed.description) == (None, None, "Owed to employee")

    assert expense.source == "findity"
    assert expense.source_ref == "84bd3279bada45bfa97b0a3fd06fa775"
    assert expense.status is ExpenseStatus.APPROVED
    assert expense.description == "Oslo-Bergen trip"
    assert expense.employee_name == "Kari Nordmann"
    assert expense.expense_date == date(2026, 3, 18)
    assert expense.currency == "NOK"
    assert expense.amount == D("2250.00")


def test_guide_example_books_its_250_of_vat_exactly_once():
    v = guide_voucher()
    conversion = convert_voucher(v, verification_lists_type=F.REPORT_PER_EXPENSE)
    assert conversion.vat_merged and conversion.vat_fallback_reason is None
    assert booked_vat(conversion.expense) == D("250.00") == source_vat(v)
    assert_vat_once(conversion.expense, v)


def test_the_oracle_catches_vat_booked_twice():
    """A mapping that keeps the 2710 row AND sets the VAT code books 500 of VAT: caught."""
    v = guide_voucher()
    twice = ExpenseIn(
        source="findity", source_ref=v.id, status=ExpenseStatus.APPROVED, description="x",
        expense_date=v.date,
        rows=[{"account": r.account, "amount": r.amount,
               "vat_code": r.tax_code if r.tax_amount else None} for r in v.voucher_rows],
    )
    assert booked_vat(twice) == D("450.00")  # 250 (2710 row) + 20% of the 1000 net row
    with pytest.raises(AssertionError):
        assert_vat_once(twice, v)


@pytest.mark.parametrize("fmt", [*PER_EXPENSE_FORMATS, *PER_ACCOUNT_FORMATS])
def test_the_guide_example_merges_in_every_accounting_format(fmt):
    v = guide_voucher()
    conversion = convert_voucher(v, verification_lists_type=fmt)
    assert conversion.vat_merged
    assert_vat_once(conversion.expense, v)


def test_format_may_be_given_as_its_wire_string():
    expense = voucher_to_expense(guide_voucher(), verification_lists_type="EXPENSE")
    assert as_tuples(expense)[1] == ("6800", D("1250.00"), "1")


# --- description, dimensions, zero rows -------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   "])
def test_description_falls_back_to_the_voucher_id(text):
    v = voucher(row("100.00", "7140"), row("-100.00", "2930"), id="abc123", text=text)
    assert voucher_to_expense(v, verification_lists_type=F.EXPENSE).description == (
        "Findity voucher abc123")


def test_long_text_is_cut_to_what_an_expense_holds():
    v = voucher(row("100.00", "7140"), row("-100.00", "2930"), text="x" * 900)
    assert len(voucher_to_expense(v, verification_lists_type=F.EXPENSE).description) == 500


def test_only_cost_center_and_project_become_dimensions():
    v = voucher(
        row("100.00", "7140", dims={"costCenter": "200", "project": "P-42", "employee": "u-1",
                                    "freeDimension1": "X"}),
        row("-100.00", "2930", dims={"costCenter": "", "region": "north"}),
    )
    cost, owed = voucher_to_expense(v, verification_lists_type=F.EXPENSE).rows
    assert (cost.department, cost.project) == ("200", "P-42")
    assert (owed.department, owed.project) == (None, None)  # "" is no cost centre
    assert not hasattr(cost, "employee")


def test_null_dimension_is_no_dimension():
    v = voucher({**row("100.00", "7140"), "dimension": None}, row("-100.00", "2930"))
    assert voucher_to_expense(v, verification_lists_type=F.EXPENSE).rows[0].department is None


@pytest.mark.parametrize("fmt", [F.REPORT_PER_EXPENSE, F.REPORT_PER_ACCOUNT])
def test_zero_rows_are_dropped(fmt):
    v = voucher(
        row("0.00", "7350", text="Client dinner, fully refunded", expense="e-1"),
        row("800.00", "6800", tax="200.00", code="1", expense="e-2"),
        row("200.00", "2710", code="1", expense="e-2"),
        row("0.00", "2711", code="11", expense="e-2"),  # an empty VAT row must not spoil the match
        row("-1000.00", "2930"),
    )
    conversion = convert_voucher(v, verification_lists_type=fmt)
    assert conversion.vat_merged
    assert as_tuples(conversion.expense) == [("6800", D("1000.00"), "1"),
                                            ("2930", D("-1000.00"), None)]


def test_zero_rows_are_dropped_in_the_fallback_too():
    v = voucher(row("0.00", "7350"), row("100.00", "6800", tax="25.00", code="1", expense="e-1"),
                row("25.00", "2710", expense="e-1"),  # no tax code: cannot be matched
                row("-125.00", "2930"))
    conversion = convert_voucher(v, verification_lists_type=F.EXPENSE)
    assert not conversion.vat_merged
    assert as_tuples(conversion.expense) == [("6800", D("100.00"), None),
                                            ("2710", D("25.00"), None),
                                            ("2930", D("-125.00"), None)]


def test_voucher_without_vat_is_booked_as_delivered():
    v = voucher(row("450.00", "7140", text="Taxi", expense="e-1"),
                row("-450.00", "2930", expense="e-1"))
    conversion = convert_voucher(v, verification_lists_type=F.EXPENSE)
    assert not conversion.vat_merged and conversion.vat_fallback_reason is None
    assert as_tuples(conversion.expense) == [("7140", D("450.00"), None),
                                            ("2930", D("-450.00"), None)]


def test_a_tax_code_without_tax_amount_gives_no_vat_code():
    """A 0 % code on a cost row has nothing to merge; the target must not split anything out."""
    v = voucher(row("300.00", "6860", code="5", expense="e-1"), row("-300.00", "2930"))
    assert as_tuples(voucher_to_expense(v, verification_lists_type=F.EXPENSE)) == [
        ("6860", D("300.00"), None), ("2930", D("-300.00"), None)]


# --- matching: per expense and per tax code ---------------------------------------------------


def aggregated_voucher(**extra: Any) -> AccountingVoucher:
    """A *_PER_ACCOUNT voucher: three expenses' rows summed per account / tax code / dims."""
    return voucher(
        row("1000.00", "6800", tax="250.00", code="1", dims={"costCenter": "100"}),
        row("200.00", "6540", tax="50.00", code="1", dims={"costCenter": "200"}),
        row("400.00", "7140", tax="60.00", code="11", dims={"project": "P-17"}),
        row("300.00", "2710", code="1"),
        row("60.00", "2710", code="11"),
        row("-1960.00", "2930", text="Owed to employee"),
        **extra,
    )


@pytest.mark.parametrize("fmt", PER_ACCOUNT_FORMATS)
def test_aggregated_format_matches_per_tax_code(fmt):
    v = aggregated_voucher()
    conversion = convert_voucher(v, verification_lists_type=fmt)
    assert conversion.vat_merged
    assert as_tuples(conversion.expense) == [
        ("6800", D("1250.00"), "1"),
        ("6540", D("250.00"), "1"),
        ("7140", D("460.00"), "11"),
        ("2930", D("-1960.00"), None),
    ]
    assert_vat_once(conversion.expense, v)
    assert booked_vat(conversion.expense) == D("360.00")


@pytest.mark.parametrize("fmt", PER_EXPENSE_FORMATS)
def test_per_expense_format_needs_the_expense_on_the_vat_row(fmt):
    """The same rows without expenseRecordId cannot be matched per expense: fall back."""
    v = aggregated_voucher()
    conversion = convert_voucher(v, verification_lists_type=fmt)
    assert not conversion.vat_merged
    assert "names no expense" in conversion.vat_fallback_reason
    assert all(r.vat_code is None for r in conversion.expense.rows)
    assert_vat_once(conversion.expense, v)


def swapped_vat_voucher() -> AccountingVoucher:
    """Two expenses with the same tax code whose VAT rows are swapped between them."""
    return voucher(
        row("1000.00", "6800", tax="250.00", code="1", expense="e-1"),
        row("50.00", "2710", code="1", expense="e-1"),
        row("200.00", "6540", tax="50.00", code="1", expense="e-2"),
        row("250.00", "2710", code="1", expense="e-2"),
        row("-1500.00", "2930"),
    )


@pytest.mark.parametrize("fmt", PER_EXPENSE_FORMATS)
def test_per_expense_formats_match_each_expense_on_its_own(fmt):
    v = swapped_vat_voucher()
    conversion = convert_voucher(v, verification_lists_type=fmt)
    assert not conversion.vat_merged
    assert "expense e-1" in conversion.vat_fallback_reason
    assert all(r.vat_code is None for r in conversion.expense.rows)
    assert_vat_once(conversion.expense, v)


def test_per_account_formats_only_need_the_totals_per_tax_code():
    v = swapped_vat_voucher()
    conversion = convert_voucher(v, verification_lists_type=F.USER_PER_ACCOUNT)
    assert conversion.vat_merged
    assert_vat_once(conversion.expense, v)


def test_several_vat_rows_of_one_expense_match_as_a_sum():
    """A receipt with two VAT rates (hotel 12 %, breakfast 15 %) in one expense."""
    v = voucher(
        row("1000.00", "7140", tax="120.00", code="13", expense="e-1", text="Hotel"),
        row("200.00", "7140", tax="30.00", code="11", expense="e-1", text="Breakfast"),
        row("120.00", "2712", code="13", expense="e-1"),
        row("30.00", "2711", code="11", expense="e-1"),
        row("-1350.00", "2930", expense="e-1"),
    )
    conversion = convert_voucher(v, verification_lists_type=F.EXPENSE, vat_rates=RATES)
    assert conversion.vat_merged
    assert as_tuples(conversion.expense) == [("7140", D("1120.00"), "13"),
                                            ("7140", D("230.00"), "11"),
                                            ("2930", D("-1350.00"), None)]
    assert_vat_once(conversion.expense, v)


def test_credit_note_vat_merges_with_its_sign():
    v = voucher(row("-1000.00", "6800", tax="-250.00", code="1", expense="e-1"),
                row("-250.00", "2710", code="1", expense="e-1"),
                row("1250.00", "2930", expense="e-1"))
    conversion = convert_voucher(v, verification_lists_type=F.EXPENSE)
    assert as_tuples(conversion.expense) == [("6800", D("-1250.00"), "1"),
                                            ("2930", D("1250.00"), None)]
    assert_vat_once(conversion.expense, v)


# --- fallback: anything unmatched -> the whole voucher as delivered ----------------------------


FALLBACKS = {
    "amounts differ": (
        [row("1000.00", "6800", tax="250.00", code="1", expense="e-1"),
         row("249.99", "2710", code="1", expense="e-1"),
         row("-1249.99", "2930")],
        "VAT rows sum to 249.99 but the cost rows' taxAmount sums to 250.00",
    ),
    "VAT row without tax code": (
        [row("1000.00", "6800", tax="250.00", code="1", expense="e-1"),
         row("250.00", "2710", expense="e-1"),
         row("-1250.00", "2930")],
        "has no tax code",
    ),
    "tax codes differ": (
        [row("1000.00", "6800", tax="250.00", code="1", expense="e-1"),
         row("250.00", "2710", code="3", expense="e-1"),
         row("-1250.00", "2930")],
        "VAT rows sum to",
    ),
    "taxAmount without VAT row": (
        [row("1000.00", "6800", tax="250.00", code="1", expense="e-1"),
         row("-1000.00", "2930")],
        "VAT rows sum to 0.00",
    ),
    "VAT row without cost row": (
        [row("1000.00", "6800", expense="e-1"),
         row("250.00", "2710", code="1", expense="e-1"),
         row("-1250.00", "2930")],
        "taxAmount sums to 0.00",
    ),
    "taxAmount without tax code": (
        [row("1000.00", "6800", tax="250.00", expense="e-1"),
         row("250.00", "2710", code="1", expense="e-1"),
         row("-1250.00", "2930")],
        "but no tax code",
    ),
    "VAT row with a taxAmount of its own": (
        [row("1000.00", "6800", tax="250.00", code="1", expense="e-1"),
         row("250.00", "2710", tax="250.00", code="1", expense="e-1"),
         row("-1250.00", "2930")],
        "taxAmount of its own",
    ),
    "one matched expense, one not": (
        [row("1000.00", "6800", tax="250.00", code="1", expense="e-1"),
         row("250.00", "2710", code="1", expense="e-1"),
         row("400.00", "7140", tax="48.00", code="13", expense="e-2"),
         row("47.00", "2712", code="13", expense="e-2"),
         row("-1697.00", "2930")],
        "expense e-2",
    ),
}


@pytest.mark.parametrize("case", FALLBACKS, ids=list(FALLBACKS))
def test_unmatched_vat_posts_the_whole_voucher_as_delivered(case):
    rows, reason = FALLBACKS[case]
    v = voucher(*rows)
    conversion = convert_voucher(v, verification_lists_type=F.REPORT_PER_EXPENSE)

    assert not conversion.vat_merged
    assert reason in conversion.vat_fallback_reason
    assert all(r.vat_code is None for r in conversion.expense.rows)  # never both
    delivered = [(r.account, r.amount, None) for r in v.voucher_rows if r.amount != 0]
    assert as_tuples(conversion.expense) == delivered
    assert_vat_once(conversion.expense, v)


def test_other_vat_accounts_can_be_configured():
    """Swedish input VAT sits on 2640: unknown to the default set, so the voucher falls back."""
    v = voucher(row("800.00", "5410", tax="200.00", code="MP1", expense="e-1"),
                row("200.00", "2640", code="MP1", expense="e-1"),
                row("-1000.00", "2890"), currency="SEK")
    default = convert_voucher(v, verification_lists_type=F.EXPENSE)
    assert not default.vat_merged
    assert ("2640", D("200.00"), None) in as_tuples(default.expense)

    swedish = convert_voucher(v, verification_lists_type=F.EXPENSE, vat_accounts={"2640"})
    assert swedish.vat_merged
    assert as_tuples(swedish.expense) == [("5410", D("1000.00"), "MP1"),
                                         ("2890", D("-1000.00"), None)]
    assert swedish.expense.currency == "SEK"


# --- optional rate check ----------------------------------------------------------------------


def test_known_rates_confirm_the_guide_example():
    assert convert_voucher(guide_voucher(), verification_lists_type=F.EXPENSE,
                           vat_rates=RATES).vat_merged


def test_known_rates_refuse_a_merge_the_target_would_recompute_differently():
    """Tax code 1 is 25 %, but Findity says 12 % of the gross was VAT: the target would book
    280.00 of VAT instead of 120.00, so the rows go as delivered."""
    v = voucher(row("1000.00", "7140", tax="120.00", code="1", expense="e-1"),
                row("120.00", "2710", code="1", expense="e-1"),
                row("-1120.00", "2930"))
    assert convert_voucher(v, verification_lists_type=F.EXPENSE).vat_merged  # without rates
    conversion = convert_voucher(v, verification_lists_type=F.EXPENSE, vat_rates=RATES)
    assert not conversion.vat_merged
    assert "25% of gross 1120.00 is 224.00, not the taxAmount 120.00" in (
        conversion.vat_fallback_reason)
    assert_vat_once(conversion.expense, v)


def test_known_rates_refuse_an_unknown_tax_code():
    v = voucher(row("100.00", "6800", tax="25.00", code="99", expense="e-1"),
                row("25.00", "2710", code="99", expense="e-1"), row("-125.00", "2930"))
    conversion = convert_voucher(v, verification_lists_type=F.EXPENSE, vat_rates=RATES)
    assert not conversion.vat_merged
    assert conversion.vat_fallback_reason == "no VAT rate known for tax code 99"


# --- refusals ---------------------------------------------------------------------------------


def test_unbalanced_voucher_is_refused_with_a_message_for_the_administrator():
    v = voucher(row("1000.00", "7140"), row("-987.50", "2930"), id="9cfefc3a")
    with pytest.raises(UnbookableVoucher) as raised:
        voucher_to_expense(v, verification_lists_type=F.REPORT_PER_EXPENSE)
    assert raised.value.message == (
        "voucher 9cfefc3a: rows sum to 12.50, not 0 — correct the report in Findity")
    assert str(raised.value) == raised.value.message
    assert raised.value.voucher_id == "9cfefc3a"
    assert isinstance(raised.value, PermanentError) and not raised.value.retryable


def test_negative_imbalance_is_reported_with_its_sign():
    v = voucher(row("1000.00", "7140"), row("-1000.01", "2930"), id="v-9")
    with pytest.raises(UnbookableVoucher, match=r"rows sum to -0\.01, not 0"):
        voucher_to_expense(v, verification_lists_type=F.EXPENSE)


@pytest.mark.parametrize("fmt", F.payment_formats())
def test_payment_formats_are_refused(fmt):
    with pytest.raises(UnbookableVoucher) as raised:
        voucher_to_expense(guide_voucher(), verification_lists_type=fmt, target_system="Tripletex")
    assert raised.value.message == payment_format_error(fmt, "Tripletex")


def test_payment_format_error_says_what_to_configure():
    assert payment_format_error(F.REPORT_PER_REPORT_PAID, "Tripletex") == (
        "REPORT_PER_REPORT_PAID is a payment format with no accounting rows; Tripletex cannot "
        "book it. Configure the recipient in Findity with an accounting format "
        "(e.g. REPORT_PER_EXPENSE)")
    assert payment_format_error("USER_PER_REPORT_PAID", "Fiken").startswith(
        "USER_PER_REPORT_PAID is a payment format")


def test_a_voucher_of_only_zero_rows_is_refused():
    v = voucher(row("0.00", "7140"), row("0.00", "2930"), id="v-0")
    with pytest.raises(UnbookableVoucher, match=r"^voucher v-0 cannot be booked: rows: .*Findity$"):
        voucher_to_expense(v, verification_lists_type=F.EXPENSE)


def test_an_account_the_expense_model_cannot_hold_is_refused_readably():
    v = voucher(row("10.00", "7" * 21), row("-10.00", "2930"), id="v-long")
    with pytest.raises(UnbookableVoucher,
                       match=r"voucher v-long cannot be booked: rows\.0\.account"):
        voucher_to_expense(v, verification_lists_type=F.EXPENSE)


# --- Decimal exactness ------------------------------------------------------------------------


def test_tenths_balance_exactly():
    """0.10 + 0.20 - 0.30 is 0 in Decimal (in float it is 5.55e-17 and would be refused)."""
    assert 0.10 + 0.20 - 0.30 != 0
    v = voucher(row(0.10, "7140"), row(0.20, "6800"), row(-0.30, "2930"))
    expense = voucher_to_expense(v, verification_lists_type=F.EXPENSE)
    assert [r.amount for r in expense.rows] == [D("0.10"), D("0.20"), D("-0.30")]
    assert all(type(r.amount) is Decimal for r in expense.rows)


def test_merged_gross_is_exact_from_json_numbers():
    payload = json.dumps({
        "id": "v-json", "ownerId": "u-1", "date": "2026-03-18",
        "voucherRows": [
            {"amount": 0.10, "taxAmount": 0.20, "account": "6800", "taxCode": "1",
             "expenseRecordId": "e-1"},
            {"amount": 0.20, "account": "2710", "taxCode": "1", "expenseRecordId": "e-1"},
            {"amount": -0.30, "account": "2930"},
        ],
    })
    v = AccountingVoucher.model_validate_json(payload)
    expense = voucher_to_expense(v, verification_lists_type=F.EXPENSE)
    assert as_tuples(expense) == [("6800", D("0.30"), "1"), ("2930", D("-0.30"), None)]
    assert str(expense.rows[0].amount) == "0.30"


def test_many_small_rows_sum_exactly():
    rows = [row("0.10", "7140", tax="0.01", code="1", expense=f"e-{i}") for i in range(1000)]
    rows += [row("0.01", "2710", code="1", expense=f"e-{i}") for i in range(1000)]
    rows.append(row("-110.00", "2930"))
    expense = voucher_to_expense(voucher(*rows), verification_lists_type=F.REPORT_PER_EXPENSE)
    assert {r.amount for r in expense.rows[:-1]} == {D("0.11")}
    assert sum(r.amount for r in expense.rows) == 0


# --- every format of the sandbox generator ----------------------------------------------------

try:  # written by another engineer; these tests run whenever it imports
    from sandbox.findity import generator
except ImportError:  # pragma: no cover
    generator = None

needs_generator = pytest.mark.skipif(generator is None, reason="no Findity sandbox generator")


def generated_package(fmt: VerificationListsType, seed: int) -> VoucherPackage:
    reports = generator.generate_reports(reports=4, expenses_per_report=5, seed=seed)
    built = generator.build_vouchers(generator.Format(fmt.value), reports)
    return VoucherPackage.model_validate({
        "exportId": f"x-{fmt.value}-{seed}", "verificationListsType": fmt.value,
        "vouchers": [b.to_wire(f"https://findity.example/basis/{b.id}") for b in built],
    })


SEEDS = range(1, 9)


@needs_generator
@pytest.mark.parametrize("fmt", F.accounting_formats())
def test_every_generated_voucher_balances_and_books_its_vat_once(fmt):
    merged = with_vat = 0
    for seed in SEEDS:
        package = generated_package(fmt, seed)
        assert package.vouchers
        package_vat = sum((source_vat(v) for v in package.accounting_vouchers()), D("0"))
        booked = D("0")
        for v in package.accounting_vouchers():
            conversion = convert_voucher(v, verification_lists_type=fmt, vat_rates=RATES)
            expense = conversion.expense
            assert sum(r.amount for r in expense.rows) == 0
            assert_vat_once(expense, v)
            booked += booked_vat(expense)
            if source_vat(v):
                with_vat += 1
                merged += conversion.vat_merged
                if fmt not in PER_ACCOUNT_FORMATS:
                    # Per expense, Findity's VAT is the rate's VAT of the gross: always merged.
                    assert conversion.vat_merged, conversion.vat_fallback_reason
        assert booked == package_vat
    assert with_vat > 0 and merged > 0  # the merge path was exercised, not only the fallback


@needs_generator
@pytest.mark.parametrize("fmt", F.accounting_formats())
def test_every_generated_voucher_merges_when_rates_are_not_checked(fmt):
    """Without rates the generator's VAT always matches (per expense or per tax code)."""
    for seed in SEEDS:
        for v in generated_package(fmt, seed).accounting_vouchers():
            conversion = convert_voucher(v, verification_lists_type=fmt)
            if source_vat(v):
                assert conversion.vat_merged, conversion.vat_fallback_reason
            coded = sum(r.amount for r in conversion.expense.rows if r.vat_code)
            taxed_gross = sum(r.amount + r.tax_amount for r in v.voucher_rows if r.tax_amount)
            assert coded == taxed_gross


@needs_generator
@pytest.mark.parametrize("fmt", F.payment_formats())
def test_generated_payment_packages_are_refused(fmt):
    package = generated_package(fmt, 1)
    assert package.is_payment
    with pytest.raises(UnbookableVoucher, match="payment format"):
        convert_voucher(package.vouchers[0], verification_lists_type=fmt)
