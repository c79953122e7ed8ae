from datetime import date
from decimal import Decimal
from types import SimpleNamespace

import pytest

from shared.domain.errors import MappingError
from shared.domain.mapping import build_voucher_draft


def _expense(rows):
    return SimpleNamespace(description="Trip", employee_name="Kari", expense_date=date(2026, 3, 18),
                           currency="NOK", rows=rows)


ROWS = [
    {"account": "7140", "amount": "1250.00", "vat_code": "1", "description": "Flight",
     "department": "100", "project": None},
    {"account": "2930", "amount": "-1250.00", "vat_code": None, "description": "Owed"},
]


def test_same_number_by_default_and_decimal_amounts():
    draft = build_voucher_draft(SimpleNamespace(id="exp_xp_1"), _expense(ROWS), {})
    assert [p.account_number for p in draft.postings] == ["7140", "2930"]
    assert draft.postings[0].amount == Decimal("1250.00")
    assert draft.postings[0].vat_code == "1" and draft.postings[0].department_number == "100"
    assert draft.external_number == "exp_xp_1"
    assert draft.description == "Trip (Kari)"


def test_mapping_tables_translate_accounts_vat_and_dimensions():
    mapping = {"accounts": {"2930": "2910"}, "vat_codes": {"1": "11"}, "departments": {"100": "1"}}
    draft = build_voucher_draft(SimpleNamespace(id="x"), _expense(ROWS), mapping)
    assert [p.account_number for p in draft.postings] == ["7140", "2910"]
    assert draft.postings[0].vat_code == "11" and draft.postings[0].department_number == "1"


def test_strict_mapping_names_the_unmapped_account():
    with pytest.raises(MappingError, match="account 7140 is not mapped"):
        build_voucher_draft(SimpleNamespace(id="x"), _expense(ROWS),
                            {"strict": True, "accounts": {"2930": "2930"}})


def test_unbalanced_rows_never_become_a_voucher():
    rows = [dict(ROWS[0]), dict(ROWS[1], amount="-1000.00")]
    with pytest.raises(ValueError, match="do not balance"):
        build_voucher_draft(SimpleNamespace(id="x"), _expense(rows), {})
