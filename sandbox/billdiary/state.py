"""The state behind the BillDiary sandbox: businesses (settings, users with credentials,
permissions and permitted locations, categories, tax rates, payment methods and accounts,
contacts), the expenses and payments stored, fault knobs, rate windows and request counts.
No HTTP here; ``app.py`` is the web layer and ``pipeline.py`` the create/update rules.

Ids are global, as in UltimatePOS's shared tables: the same category has a different id in every
business, and an expense id is a number a ``q`` search can hit.

One ``threading.Lock`` guards every mutation; the endpoints are async on one event loop, but the
control API and tests may read from other threads.
"""

from __future__ import annotations

import itertools
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sandbox import knobs
from sandbox.knobs import FaultStore, RateWindow, RequestCounter, fixed_window_hit

# --- seed data -------------------------------------------------------------------------------

# UltimatePOS's payment method keys and the labels its forms (and the CSV import) use.
PAYMENT_METHOD_LABELS: dict[str, str] = {
    "cash": "Cash",
    "card": "Card",
    "cheque": "Cheque",
    "bank_transfer": "Bank Transfer",
    "other": "Other",
    "advance": "Advance",
    **{f"custom_pay_{i}": f"Custom Payment {i}" for i in range(1, 8)},
}
# (name, payment method keys allowed there)
SEED_LOCATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Head Office", ("cash", "card", "bank_transfer", "other", "advance")),
    ("Warehouse", ("cash", "card")),
)
# (name, code, [(sub name, sub code)])
SEED_CATEGORIES: tuple[tuple[str, str | None, tuple[tuple[str, str | None], ...]], ...] = (
    ("Travel", "7140", (("Flights", "7141"), ("Hotels", "7142"))),
    ("Office supplies", "6800", ()),
    ("Meals and entertainment", "7350", (("Client meals", "7351"),)),
    ("Software", "6420", ()),
    ("Bank charges", "7770", ()),
)
# (name, rate %)
SEED_TAX_RATES: tuple[tuple[str, str], ...] = (
    ("VAT 25%", "25"),
    ("VAT 15%", "15"),
    ("VAT 12%", "12"),
    ("VAT 0%", "0"),
)
# (name, account number)
SEED_ACCOUNTS: tuple[tuple[str, str], ...] = (("Operating account", "1920"), ("Petty cash", "1900"))
INTEGRATION_PERMISSIONS = frozenset(
    {"all_expense.access", "expense.add", "expense.edit", "expense.delete"}
)
KNOWN_PERMISSIONS = frozenset(INTEGRATION_PERMISSIONS | {"view_own_expense"})
# UltimatePOS's document_upload_mimes_types and document_size_limit. [upos]
DOCUMENT_MIME_TYPES = frozenset(
    {
        "application/pdf",
        "text/csv",
        "application/zip",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "image/jpeg",
        "image/jpg",
        "image/png",
    }
)
DOCUMENT_SIZE_LIMIT = 5_000_000
DEFAULT_RATE_LIMIT = 60  # [assumed] Laravel's default API throttle, per user and minute
DEFAULT_RATE_WINDOW = 60.0


# --- records ---------------------------------------------------------------------------------


@dataclass
class Location:
    id: int
    name: str
    location_code: str
    payment_methods: list[str]


@dataclass
class Category:
    id: int
    name: str
    code: str | None
    parent_id: int | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


@dataclass
class TaxRate:
    id: int
    name: str
    amount: Decimal
    is_tax_group: bool = False


@dataclass
class PaymentAccount:
    id: int
    name: str
    account_number: str


@dataclass
class Contact:
    id: int
    name: str
    contact_id: str
    supplier_business_name: str | None
    mobile: str | None
    email: str | None
    balance: Decimal = Decimal("0")


@dataclass
class Credentials:
    api_key: str
    api_secret: str
    token: str
    revoked: bool = False


@dataclass
class User:
    id: int
    first_name: str
    last_name: str
    email: str
    username: str
    permissions: set[str]
    location_ids: set[int] | None  # None: every location (access_all_locations)
    is_admin: bool = False
    credentials: list[Credentials] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    def can(self, permission: str) -> bool:
        return self.is_admin or permission in self.permissions

    def may_use_location(self, location_id: int) -> bool:
        return self.is_admin or self.location_ids is None or location_id in self.location_ids


@dataclass
class Document:
    original_name: str
    stored_name: str | None  # None: not stored (too big, or dropped by a knob)
    content_type: str
    size: int
    sha256: str
    outcome: str  # "stored", "skipped_too_large", "dropped_by_knob"


@dataclass
class Payment:
    id: int
    amount: Decimal
    method: str
    paid_on: datetime
    payment_ref_no: str
    note: str | None
    is_return: bool
    account_id: int | None
    created_by: int
    details: dict[str, Any] = field(default_factory=dict)  # card/cheque/bank metadata
    sent: dict[str, Any] = field(default_factory=dict)  # amount and paid_on as received


@dataclass
class Expense:
    id: int
    business_id: int
    type: str  # expense | expense_refund
    ref_no: str
    location_id: int
    final_total: Decimal
    total_before_tax: Decimal
    tax_amount: Decimal
    transaction_date: datetime  # wall time in the business's timezone
    created_by: int
    created_at: datetime
    updated_at: datetime
    discount_amount: Decimal = Decimal("0")
    status: str = "final"
    additional_notes: str | None = None
    staff_note: str | None = None
    expense_for: int | None = None
    contact_id: int | None = None
    category_id: int | None = None
    sub_category_id: int | None = None
    tax_id: int | None = None
    is_recurring: bool = False
    recur_interval: int | None = None
    recur_interval_type: str | None = None
    recur_repetitions: int | None = None
    subscription_repeat_on: int | None = None
    recur_parent_id: int | None = None
    document: str | None = None  # the stored document name the API answers
    uploads: list[Document] = field(default_factory=list)
    payments: list[Payment] = field(default_factory=list)
    deleted_at: datetime | None = None
    source: str = "api"  # api | import
    # What the client sent for the values the business's formats parse, and what was stored.
    sent: dict[str, Any] = field(default_factory=dict)
    parsed: dict[str, Any] = field(default_factory=dict)

    def total_paid(self) -> Decimal:
        return sum(
            ((-p.amount if p.is_return else p.amount) for p in self.payments), Decimal("0")
        )

    def payment_status(self) -> str:
        paid = self.total_paid()
        if paid >= self.final_total:
            return "paid"
        if paid > 0:
            return "partial"
        return "due"


@dataclass
class ImportRecord:
    at: datetime
    filename: str
    rows: int
    success: bool
    message: str
    expense_ids: list[int]


# --- faults ----------------------------------------------------------------------------------


@dataclass
class FailRule(knobs.FailRule):
    """Answer ``status`` before doing anything (nothing stored), ``count`` times."""

    retry_after: int | None = None
    message: str | None = None


@dataclass
class RateLimitRule:
    limit: int = DEFAULT_RATE_LIMIT
    window_seconds: float = DEFAULT_RATE_WINDOW


@dataclass
class Faults:
    latency_ms: int = 0
    fail_next: list[FailRule] = field(default_factory=list)
    error_rate: float = 0.0
    seed: int = 1234
    rate_limit: RateLimitRule = field(default_factory=RateLimitRule)
    save_then_fail: int = 0
    payment_save_then_fail: int = 0
    save_then_drop: int = 0
    save_then_hold_ms: int = 0
    save_delay_ms: int = 0
    drop_documents: int = 0


# --- the business ----------------------------------------------------------------------------


@dataclass
class Settings:
    """What the business's settings page decides and the sandbox imitates."""

    currency_code: str = "NOK"
    date_format: str = "d/m/Y"
    time_format: int = 24
    thousand_separator: str = ","
    decimal_separator: str = "."
    timezone: str = "Europe/Oslo"
    subscription_active: bool = True
    demo_mode: bool = False
    document_size_limit: int = DOCUMENT_SIZE_LIMIT
    # [assumed] amounts go through num_uf as in the web form: a business with thousand
    # separator "." reads 12.5 as 125. False: amounts are read as plain numbers.
    amounts_use_business_format: bool = True


@dataclass
class Business:
    id: int
    name: str
    settings: Settings
    locations: dict[int, Location] = field(default_factory=dict)
    categories: dict[int, Category] = field(default_factory=dict)
    tax_rates: dict[int, TaxRate] = field(default_factory=dict)
    accounts: dict[int, PaymentAccount] = field(default_factory=dict)
    contacts: dict[int, Contact] = field(default_factory=dict)
    users: dict[int, User] = field(default_factory=dict)
    expenses: dict[int, Expense] = field(default_factory=dict)
    imports: list[ImportRecord] = field(default_factory=list)
    ref_counts: Counter = field(default_factory=Counter)
    faults: Faults = field(default_factory=Faults)
    rng: random.Random = field(default_factory=lambda: random.Random(1234))
    requests: RequestCounter = field(default_factory=RequestCounter)
    rate_windows: dict[int, RateWindow] = field(default_factory=dict)

    def live_categories(self) -> list[Category]:
        return [c for c in self.categories.values() if c.deleted_at is None]

    def top_level_category(self, category_id: int | None) -> Category | None:
        found = self.categories.get(category_id) if category_id is not None else None
        if found is None or found.deleted_at is not None or found.parent_id is not None:
            return None
        return found

    def next_ref(self, kind: str, year: int) -> str:
        """UltimatePOS's reference counts: ``EP2026/0001`` for expenses, ``PP...`` payments."""
        self.ref_counts[kind] += 1
        prefix = {"expense": "EP", "expense_payment": "PP"}[kind]
        return f"{prefix}{year}/{self.ref_counts[kind]:04d}"


class NotFound(Exception):
    pass


class SandboxState(FaultStore):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.businesses: dict[int, Business] = {}
        self._ids: dict[str, itertools.count] = {}
        self._credentials: dict[str, tuple[int, int]] = {}  # secret material -> (business, user)

    def next_id(self, table: str) -> int:
        start = {"business": 1, "expense": 501, "payment": 9001, "category": 101}.get(table, 11)
        counter = self._ids.setdefault(table, itertools.count(start))
        return next(counter)

    # businesses --------------------------------------------------------------------------

    def create_business(self, spec: dict[str, Any]) -> Business:
        """``spec`` as the control API's BusinessIn dumps it."""
        now = datetime.now(UTC)
        with self.lock:
            settings = Settings(**spec["settings"])
            business = Business(self.next_id("business"), spec["name"], settings)
            for name, methods in spec.get("locations") or SEED_LOCATIONS:
                self._add_location(business, name, list(methods))
            categories = spec.get("categories")
            if categories is None:
                categories = [
                    {"name": n, "code": c,
                     "sub_categories": [{"name": sn, "code": sc} for sn, sc in subs]}
                    for n, c, subs in SEED_CATEGORIES
                ]
            for cat in categories:
                parent = self.add_category(business, cat["name"], cat.get("code"), None, now)
                for sub in cat.get("sub_categories") or []:
                    self.add_category(business, sub["name"], sub.get("code"), parent.id, now)
            for name, rate in spec.get("tax_rates") or SEED_TAX_RATES:
                self.add_tax_rate(business, name, Decimal(str(rate)))
            for name, number in spec.get("payment_accounts") or SEED_ACCOUNTS:
                account = PaymentAccount(self.next_id("account"), name, number)
                business.accounts[account.id] = account
            contact = Contact(
                self.next_id("contact"), "Kari Supplier", "CO0001", "Kontorleverandøren AS",
                "+4790000000", "kari@supplier.example",
                Decimal(str(spec.get("contact_balance", "500"))),
            )
            business.contacts[contact.id] = contact
            self._add_user(
                business, "Integration", "User", "integration", set(INTEGRATION_PERMISSIONS), None,
            )
            self._add_user(business, "Ola", "Employee", "ola", {"view_own_expense"}, None)
            self.businesses[business.id] = business
            return business

    def _add_location(self, business: Business, name: str, methods: list[str]) -> Location:
        location = Location(
            self.next_id("location"), name, f"BL{len(business.locations) + 1:04d}", methods
        )
        business.locations[location.id] = location
        return location

    def add_location(self, business: Business, name: str, methods: list[str]) -> Location:
        with self.lock:
            return self._add_location(business, name, methods)

    def add_category(
        self, business: Business, name: str, code: str | None, parent_id: int | None,
        now: datetime | None = None,
    ) -> Category:
        now = now or datetime.now(UTC)
        category = Category(self.next_id("category"), name, code, parent_id, now, now)
        business.categories[category.id] = category
        return category

    def add_tax_rate(self, business: Business, name: str, amount: Decimal) -> TaxRate:
        rate = TaxRate(self.next_id("tax_rate"), name, amount)
        business.tax_rates[rate.id] = rate
        return rate

    def _add_user(
        self, business: Business, first: str, last: str, username: str, permissions: set[str],
        location_ids: set[int] | None, is_admin: bool = False,
    ) -> User:
        user = User(
            self.next_id("user"), first, last, f"{username}@business{business.id}.example",
            username, permissions, location_ids, is_admin,
        )
        business.users[user.id] = user
        self._issue(business, user)
        return user

    def add_user(self, business: Business, **spec: Any) -> User:
        with self.lock:
            return self._add_user(business, **spec)

    def _issue(self, business: Business, user: User) -> Credentials:
        creds = Credentials(
            api_key=f"bd_key_{secrets.token_hex(8)}",
            api_secret=f"bd_secret_{secrets.token_hex(16)}",
            token=f"bd_pat_{secrets.token_urlsafe(32)}",
        )
        user.credentials.append(creds)
        self._credentials[creds.api_key] = (business.id, user.id)
        self._credentials[creds.token] = (business.id, user.id)
        return creds

    def rotate_credentials(self, business: Business, user: User) -> Credentials:
        """Revoke every credential of the user and issue a new set (old ones -> 401)."""
        with self.lock:
            for creds in user.credentials:
                creds.revoked = True
            return self._issue(business, user)

    def business(self, business_id: int) -> Business:
        found = self.businesses.get(business_id)
        if found is None:
            raise NotFound(f"no sandbox business {business_id}")
        return found

    # auth --------------------------------------------------------------------------------

    def _live(self, lookup: str) -> tuple[Business, User, Credentials] | None:
        ids = self._credentials.get(lookup)
        if ids is None:
            return None
        business = self.businesses[ids[0]]
        user = business.users[ids[1]]
        creds = next(
            (c for c in user.credentials if lookup in (c.api_key, c.token) and not c.revoked), None
        )
        return (business, user, creds) if creds else None

    def by_token(self, token: str) -> tuple[Business, User] | None:
        found = self._live(token)
        if found is None or not secrets.compare_digest(found[2].token, token):
            return None
        return found[0], found[1]

    def by_key(self, key: str, secret: str) -> tuple[Business, User] | None:
        found = self._live(key)
        if (
            found is None
            or found[2].api_key != key
            or not secrets.compare_digest(found[2].api_secret, secret)
        ):
            return None
        return found[0], found[1]

    # faults, counts, rate ----------------------------------------------------------------

    def set_faults(self, business: Business, faults: Faults) -> None:
        with self.lock:
            self._replace_faults(business, faults)

    def take(self, business: Business, knob: str) -> bool:
        """Consume one count of an integer knob; True if there was one."""
        with self.lock:
            left = getattr(business.faults, knob)
            if left > 0:
                setattr(business.faults, knob, left - 1)
                return True
            return False

    def rate_check(self, business: Business, user: User) -> tuple[bool, dict[str, str]]:
        """Laravel's ThrottleRequests: a window per user from its first hit. (allowed, headers)"""
        rule = business.faults.rate_limit
        now = time.monotonic()
        with self.lock:
            allowed, remaining, retry = fixed_window_hit(
                business.rate_windows, user.id, rule.limit, rule.window_seconds, now)
            headers = {
                "X-RateLimit-Limit": str(rule.limit),
                "X-RateLimit-Remaining": str(remaining),
            }
            if not allowed:
                headers["Retry-After"] = str(retry)
                headers["X-RateLimit-Reset"] = str(int(time.time()) + retry)
            return allowed, headers

    # visibility --------------------------------------------------------------------------

    @staticmethod
    def sees(user: User, expense: Expense) -> bool:
        """The list/show query: live rows at permitted locations; without all_expense.access,
        only rows the user created or is the expense_for of."""
        return (
            expense.deleted_at is None
            and user.may_use_location(expense.location_id)
            and (
                user.can("all_expense.access")
                or expense.created_by == user.id
                or expense.expense_for == user.id
            )
        )

    def visible_expenses(self, business: Business, user: User) -> list[Expense]:
        return [e for e in business.expenses.values() if self.sees(user, e)]

    def visible_expense(self, business: Business, user: User, expense_id: int) -> Expense | None:
        found = business.expenses.get(expense_id)
        return found if found is not None and self.sees(user, found) else None
