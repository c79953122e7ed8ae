"""``plan_expense``: what one export becomes in BillDiary, decided before anything is sent."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from shared.domain.vouchers import PostingDraft, VoucherDraft
from shared.integrations.billdiary.mapping import (
    format_amount,
    format_moment,
    intended,
    plan_expense,
)
from shared.integrations.billdiary.models import BillDiaryOptions
from shared.integrations.errors import PermanentError

OPTIONS = BillDiaryOptions(location_id=1, currency="NOK", payable_accounts=["2930"],
                           payment_accounts={"1920": {"method": "card", "account_id": 4}},
                           default_tax_id=9)


def voucher(*rows: tuple[str, str, str | None], **extra) -> VoucherDraft:
    return VoucherDraft(external_number="exp_1", date=date(2026, 3, 18), description="Taxi",
                        postings=[PostingDraft(account_number=a, amount=Decimal(v), vat_code=c,
                                               **extra) for a, v, c in rows])


def test_cost_rows_make_the_gross_total_and_the_counter_rows_the_payment():
    plan = plan_expense(voucher(("7140", "80.00", "3"), ("7140", "20.00", "3"),
                                ("1920", "-60.00", None), ("2930", "-40.00", None)), OPTIONS)
    assert plan.final_total == Decimal("100.00") and not plan.is_refund
    assert plan.category_code == "7140" and plan.tax_id == 3
    [line] = plan.payments
    assert line.amount == Decimal("60.00") and line.account.method == "card"
    assert intended(plan.notes, "exp_1").total == Decimal("100.00")
    assert intended(plan.notes, "exp_10") is None


def test_a_credit_is_a_refund_and_rows_without_vat_take_the_default_tax_rate():
    plan = plan_expense(voucher(("6800", "-25.00", None), ("2930", "25.00", None)), OPTIONS)
    assert plan.is_refund and plan.final_total == Decimal("25.00") and plan.tax_id == 9


def test_dimensions_the_erp_has_no_field_for_are_kept_in_the_notes():
    plan = plan_expense(voucher(("6800", "5", None), ("2930", "-5", None),
                                department_number="100", project_number="P-1"), OPTIONS)
    assert "department 100, project P-1" in plan.notes


def test_everything_one_expense_cannot_hold_is_listed_at_once():
    with pytest.raises(PermanentError) as caught:
        plan_expense(voucher(("7140", "10", "1"), ("6800", "10", "A"), ("3000", "-20", None)),
                     OPTIONS.model_copy(update={"payable_accounts": []}))
    details = caught.value.details
    assert any("says how it was paid" in d for d in details)
    assert any("one category" in d for d in details)
    assert any("VAT code A is not a BillDiary tax rate id" in d for d in details)


def test_amounts_and_dates_are_written_as_the_business_reads_them():
    assert str(format_amount(Decimal("1250.00"))) == "1250"
    assert str(format_amount(Decimal("12.5"))) == "12.50"
    us = OPTIONS.model_copy(update={"date_format": "n/j/y", "time_format": 12})
    assert format_moment(date(2026, 3, 8), us) == "3/8/26 12:00 PM"
    assert format_moment(date(2026, 3, 8), OPTIONS) == "08/03/2026 12:00"


def test_a_date_format_with_tokens_we_cannot_write_is_refused():
    with pytest.raises(ValueError, match="only the PHP tokens"):
        BillDiaryOptions(location_id=1, currency="NOK", date_format="D, d M Y")
