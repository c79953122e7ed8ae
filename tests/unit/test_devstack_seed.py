"""``make run`` seeds the demo organization on every start (devstack.seed)."""

from sqlalchemy import select

from devstack.seed import DEMO_ORG_ID, seed_demo
from shared.db.models import ApiKey
from shared.db.session import session_scope
from shared.domain.organizations import active_api_key

COMPANY = {"id": 1, "company_id": 1, "consumer_token": "consumer", "employee_token": "employee"}
# What the BillDiary sandbox's control API answers for a new business (the fields seeding reads).
BUSINESS = {"business_id": 7, "api_key": "key", "api_secret": "secret",
            "settings": {"currency_code": "NOK", "date_format": "d.m.Y", "time_format": 24,
                         "thousand_separator": " ", "decimal_separator": ","},
            "locations": [{"id": 3}], "payment_accounts": [{"id": 5}],
            "tax_rates": [{"id": 11, "amount": "25"}, {"id": 12, "amount": "12"}]}


def test_each_start_prints_a_key_that_works_and_revokes_the_previous_ones():
    printed = []
    for _start in range(3):
        with session_scope() as session:
            printed.append(seed_demo(session, tripletex_url="http://127.0.0.1:9/", company=COMPANY,
                                     billdiary_url="http://127.0.0.1:9/", business=BUSINESS)
                           ["api_key"])
    with session_scope() as session:
        assert active_api_key(session, printed[-1]) is not None
        assert [active_api_key(session, key) for key in printed[:-1]] == [None, None]
        active = session.scalars(select(ApiKey).where(ApiKey.organization_id == DEMO_ORG_ID,
                                                      ApiKey.revoked_at.is_(None))).all()
        assert len(active) == 1
