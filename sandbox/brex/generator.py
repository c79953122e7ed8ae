"""Money in minor units, an account's directory (users, departments, locations, budgets) and
generated expenses for the Brex sandbox.

Money [spec: ``Money``]: ``{"amount": <int64 in the currency's smallest unit>, "currency":
"<ISO 4217>"}``. The exponent is ISO 4217's, not "always cents": JPY has 0 decimals, KWD 3.
Exchange rates are fixed here [assumed]; only the shapes and the rounding matter to a client.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

EXPONENTS = {"USD": 2, "EUR": 2, "GBP": 2, "NOK": 2, "SEK": 2, "DKK": 2, "CAD": 2,
             "JPY": 0, "KWD": 3, "BHD": 3}
USD_PER_UNIT = {"USD": Decimal("1"), "EUR": Decimal("1.08"), "GBP": Decimal("1.27"),
                "NOK": Decimal("0.094"), "SEK": Decimal("0.096"), "DKK": Decimal("0.145"),
                "CAD": Decimal("0.74"), "JPY": Decimal("0.0067"), "KWD": Decimal("3.25"),
                "BHD": Decimal("2.65")}

# [spec] enums. Brex adds values without notice [doc: versioning]; the sandbox knows these.
EXPENSE_STATUSES = ("DRAFT", "SUBMITTED", "APPROVED", "OUT_OF_POLICY", "VOID", "CANCELED",
                    "SPLIT", "SETTLED")
PAYMENT_STATUSES = ("NOT_STARTED", "PROCESSING", "CANCELED", "DECLINED", "CLEARED", "REFUNDING",
                    "REFUNDED", "CASH_ADVANCE", "CREDITED", "AWAITING_PAYMENT", "SCHEDULED")
EXPENSE_TYPES = ("CARD", "BILLPAY", "REIMBURSEMENT", "CLAWBACK", "UNSET")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def money(amount: int, currency: str) -> dict[str, Any]:
    return {"amount": int(amount), "currency": currency}


def to_major(amount: int, currency: str) -> Decimal:
    return Decimal(amount).scaleb(-EXPONENTS[currency])


def convert(amount: int, source: str, target: str) -> int:
    """Minor units of ``source`` to minor units of ``target`` at the fixed rates, half up."""
    if source == target:
        return amount
    major = to_major(amount, source) * USD_PER_UNIT[source] / USD_PER_UNIT[target]
    exponent = Decimal(1).scaleb(-EXPONENTS[target])
    return int(major.quantize(exponent, rounding=ROUND_HALF_UP).scaleb(EXPONENTS[target]))


@dataclass(frozen=True)
class Merchant:
    raw_descriptor: str
    mcc: str
    country: str  # ISO 3166-1 alpha-3 [spec]
    category: str
    currency: str
    city: str
    country2: str  # alpha-2, for the address [spec: Location.country]

    def wire(self) -> dict[str, str]:
        return {"raw_descriptor": self.raw_descriptor, "mcc": self.mcc, "country": self.country}


MERCHANTS = [
    Merchant("UBER *TRIP HELP.UBER.COM", "4121", "USA", "RIDESHARE_AND_TAXI", "USD",
             "San Francisco", "US"),
    Merchant("HOTEL OKURA TOKYO", "7011", "JPN", "LODGING", "JPY", "Tokyo", "JP"),
    Merchant("KUWAIT AIRWAYS KWI", "4511", "KWT", "AIRLINE_EXPENSES", "KWD", "Kuwait City", "KW"),
    Merchant("GITHUB, INC.", "5734", "USA", "RECURRING_SOFTWARE_AND_SAAS", "USD",
             "San Francisco", "US"),
    Merchant("LE PETIT CAFE", "5812", "FRA", "RESTAURANTS", "EUR", "Paris", "FR"),
    Merchant("JR EAST SHINKANSEN", "4112", "JPN", "PUBLIC_TRANSPORTATION", "JPY", "Tokyo", "JP"),
    Merchant("NARVESEN OSLO S", "5994", "NOR", "BOOKS_AND_NEWSPAPERS", "NOK", "Oslo", "NO"),
    Merchant("AMAZON WEB SERVICES", "4816", "USA", "SERVERS", "USD", "Seattle", "US"),
    Merchant("AVENUES MALL", "5311", "KWT", "GENERAL_MERCHANDISE", "KWD", "Kuwait City", "KW"),
    Merchant("DELTA AIR LINES", "3058", "USA", "AIRLINE_EXPENSES", "USD", "Atlanta", "US"),
]
_MERCHANT_IDS = {m.raw_descriptor: f"merchant_{i:04d}" for i, m in enumerate(MERCHANTS)}
_MEMOS = [None, "Client dinner", "Offsite travel", "Team tooling", "Conference", None]


@dataclass
class Directory:
    """Who and what an account's expenses refer to (expanded with ``expand[]``)."""

    users: list[dict[str, Any]]
    departments: list[dict[str, str]]
    locations: list[dict[str, str]]
    budgets: list[dict[str, str]]
    spending_entity_id: str

    @classmethod
    def create(cls) -> Directory:
        departments = [{"id": new_id("dept"), "name": name} for name in ("Sales", "Engineering")]
        locations = [{"id": new_id("loc"), "name": name} for name in ("New York", "Oslo")]
        people = [("Ada", "Lovelace"), ("Kari", "Nordmann"), ("Hiro", "Tanaka")]
        users = [
            {"id": new_id("cuuser"), "first_name": first, "last_name": last,
             "department_id": departments[i % 2]["id"], "location_id": locations[i % 2]["id"]}
            for i, (first, last) in enumerate(people)
        ]
        budgets = [{"id": new_id("budget"), "name": name} for name in ("Travel", "Software")]
        return cls(users, departments, locations, budgets, new_id("legal_entity"))

    def find(self, table: str, item_id: str | None) -> dict[str, Any] | None:
        return next((row for row in getattr(self, table) if row["id"] == item_id), None)


# (status, payment_status) by position: mostly approved, every state a connector must skip.
_STATE_CYCLE = [
    ("APPROVED", "CLEARED"), ("APPROVED", "CLEARED"), ("SETTLED", "CLEARED"),
    ("APPROVED", "PROCESSING"), ("SUBMITTED", "NOT_STARTED"), ("APPROVED", "CLEARED"),
    ("DRAFT", "NOT_STARTED"), ("OUT_OF_POLICY", "CLEARED"), ("VOID", "CANCELED"),
    ("SETTLED", "CLEARED"),
]


def _random_amount(rng: random.Random, currency: str) -> int:
    """A plausible purchase in minor units: JPY 500-80,000; KWD 1.000-250.000; else 5-2,500."""
    if currency == "JPY":
        return rng.randint(500, 80_000)
    if currency in ("KWD", "BHD"):
        return rng.randint(1_000, 250_000)
    return rng.randint(500, 250_000)


def generate_specs(count: int, seed: int, directory: Directory, *,
                   status: str | None = None, payment_status: str | None = None,
                   expense_type: str | None = None) -> list[dict[str, Any]]:
    """Expense specs (what ``BrexState.add_expenses`` takes). From three expenses on the second
    is in JPY and the third in KWD; statuses cycle through ``_STATE_CYCLE`` unless given."""
    rng = random.Random(seed)
    specs = []
    for index in range(count):
        merchant = MERCHANTS[index] if index < 3 else rng.choice(MERCHANTS)
        state, pay_state = _STATE_CYCLE[index % len(_STATE_CYCLE)]
        kind = expense_type or ("REIMBURSEMENT" if index % 6 == 5 else "CARD")
        user = directory.users[index % len(directory.users)]
        specs.append({
            "merchant": merchant.raw_descriptor,
            "original_amount": _random_amount(rng, merchant.currency),
            "currency": merchant.currency,
            "status": status or state,
            "payment_status": payment_status or pay_state,
            "expense_type": kind,
            "memo": _MEMOS[index % len(_MEMOS)],
            "user_id": user["id"],
            "budget_id": directory.budgets[0 if merchant.category != "SERVERS" else 1]["id"],
            "receipts": index % 3,  # 0, 1 or 2 receipts
            "hours_ago": 24 * (count - index) + rng.randint(0, 12),
            "custom_fields": [{"key": "project_code", "value": {
                "value_type": "SINGLE_VALUE", "data_type": "STRING",
                "data": f"P-{rng.randint(10, 99)}"}}],
        })
    return specs


def merchant_by_descriptor(descriptor: str) -> Merchant:
    for merchant in MERCHANTS:
        if merchant.raw_descriptor == descriptor:
            return merchant
    raise KeyError(descriptor)


def merchant_id(merchant: Merchant) -> str:
    return _MERCHANT_IDS[merchant.raw_descriptor]
