"""The state behind the Tripletex sandbox: companies with a seeded chart, sessions, vouchers,
fault knobs and request counts. No HTTP here; ``app.py`` is the web layer.

Everything is kept in memory for the life of the process. One ``threading.Lock`` guards every
mutation: uvicorn runs the async endpoints on one event loop, but control endpoints and tests may
touch the ledger from other threads, and the lock is cheap.

Validation follows Tripletex's rules for ``POST /ledger/voucher`` (see the project's
``tripletex.md`` guide) and answers with its field names and Norwegian messages, so the client's
translation of them is exercised for real.
"""

from __future__ import annotations

import itertools
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sandbox import knobs
from sandbox.knobs import FaultStore, RateWindow, RequestCounter, fixed_window_hit

CENT = Decimal("0.01")
BASE_CURRENCY = "NOK"
MAX_EXTERNAL_NUMBER = 70
ATTACHMENT_TYPES = frozenset({"application/pdf", "image/png", "image/jpeg", "image/tiff"})
DEFAULT_RATE_LIMIT = 10_000  # per window; generous unless a test sets a rate_limit knob
DEFAULT_RATE_WINDOW = 60.0


# --- seed data -------------------------------------------------------------------------------
# A subset of the Norwegian standard chart (NS 4102) as Tripletex sets it up for a small company.
# (number, name, ledgerType, default VAT code, vatLocked, requiresDepartment, requiresProject)
SEED_ACCOUNTS: tuple[tuple[int, str, str, str | None, bool, bool, bool], ...] = (
    (1500, "Kundefordringer", "CUSTOMER", None, False, False, False),
    (1920, "Bankinnskudd", "GENERAL", "0", False, False, False),
    (2400, "Leverandørgjeld", "VENDOR", None, False, False, False),
    (2700, "Utgående merverdiavgift, høy sats", "GENERAL", None, False, False, False),
    (2710, "Inngående merverdiavgift", "GENERAL", None, False, False, False),
    (2740, "Oppgjørskonto merverdiavgift", "GENERAL", None, False, False, False),
    (2910, "Gjeld til ansatte", "EMPLOYEE", None, False, False, False),
    (2930, "Skyldig lønn", "GENERAL", "0", False, False, False),
    (3000, "Salgsinntekt, avgiftspliktig", "GENERAL", "3", False, False, False),
    (6300, "Leie lokale", "GENERAL", "1", False, False, False),
    (6420, "Leie datasystemer", "GENERAL", "1", False, False, True),
    (6540, "Inventar", "GENERAL", "1", False, False, False),
    (6800, "Kontorrekvisita", "GENERAL", "1", False, False, False),
    (6860, "Møte, kurs, oppdatering o.l.", "GENERAL", "1", False, False, False),
    (7100, "Bilgodtgjørelse, oppgavepliktig", "GENERAL", "0", True, False, False),
    (7130, "Reisekostnad, oppgavepliktig", "GENERAL", "0", True, False, False),
    (7140, "Reisekostnad, ikke oppgavepliktig", "GENERAL", "13", False, False, False),
    (7150, "Diettkostnad, oppgavepliktig", "GENERAL", "0", True, False, False),
    (7320, "Reklamekostnad", "GENERAL", "1", False, True, False),
    (7350, "Representasjon, fradragsberettiget", "GENERAL", "0", True, False, False),
    (7770, "Bank- og kortgebyrer", "GENERAL", "0", False, False, False),
    (7790, "Annen kostnad, fradragsberettiget", "GENERAL", "1", False, False, False),
)
# Accounts whose VAT codes are restricted beyond their default (Tripletex's legalVatTypes).
SEED_LEGAL_VAT: dict[int, tuple[str, ...]] = {7140: ("0", "13")}
# (number, name, percentage, VAT account number or None)
SEED_VAT_TYPES: tuple[tuple[str, str, Decimal, int | None], ...] = (
    ("0", "Ingen avgiftsbehandling (no VAT)", Decimal("0"), None),
    ("1", "Fradrag inngående avgift, høy sats (input VAT 25%)", Decimal("25"), 2710),
    ("11", "Fradrag inngående avgift, middels sats (input VAT 15%)", Decimal("15"), 2710),
    ("13", "Fradrag inngående avgift, lav sats (input VAT 12%)", Decimal("12"), 2710),
    ("3", "Utgående avgift, høy sats (output VAT 25%)", Decimal("25"), 2700),
    ("5", "Ingen utgående avgift, innenfor mva-loven (0%)", Decimal("0"), None),
    ("6", "Ingen utgående avgift, utenfor mva-loven", Decimal("0"), None),
)
SEED_VOUCHER_TYPES = (
    "Leverandørfaktura",
    "Reiseregning",
    "Ansattutlegg",
    "Memorialbilag",
    "Bankavstemming",
    "Utgående faktura",
)
# Currency ids are global in Tripletex (the same in every company).
CURRENCIES: dict[str, tuple[int, str]] = {
    "NOK": (1, "Norske kroner"),
    "SEK": (2, "Svenske kroner"),
    "USD": (4, "Amerikanske dollar"),
    "EUR": (5, "Euro"),
}
SEED_DEPARTMENTS = (("1", "Administrasjon"), ("2", "Salg"))
SEED_PROJECTS = (("1001", "Internt"), ("1002", "Kundeprosjekt Fjord"))


# --- records ---------------------------------------------------------------------------------


@dataclass
class AccountRec:
    id: int
    number: int
    name: str
    ledger_type: str
    vat_type_id: int | None
    vat_locked: bool
    requires_department: bool
    requires_project: bool
    legal_vat_type_ids: tuple[int, ...] = ()


@dataclass
class VatTypeRec:
    id: int
    number: str
    name: str
    percentage: Decimal
    vat_account_id: int | None


@dataclass
class NamedRec:
    """Voucher types, departments, projects, suppliers, customers, employees."""

    id: int
    name: str
    number: str | None = None


@dataclass
class PostingRec:
    id: int
    row: int
    date: date
    description: str
    account_id: int
    amount: Decimal  # net of VAT
    amount_gross: Decimal
    amount_gross_currency: Decimal
    currency_id: int
    vat_type_id: int | None = None
    department_id: int | None = None
    project_id: int | None = None
    supplier_id: int | None = None
    customer_id: int | None = None
    employee_id: int | None = None
    system_generated: bool = False


@dataclass
class AttachmentRec:
    filename: str
    content_type: str
    size: int


@dataclass
class VoucherRec:
    id: int
    date: date
    number: int  # 0 until sent to ledger
    temp_number: int
    description: str
    voucher_type_id: int | None
    external_voucher_number: str | None
    postings: list[PostingRec]
    sent_to_ledger: bool
    created_at: datetime
    version: int = 0
    attachments: list[AttachmentRec] = field(default_factory=list)
    # time.monotonic() from which the searches (``>externalVoucherNumber``, the list) show it.
    searchable_at: float = 0.0


@dataclass
class Session:
    company_id: str
    employee_token: str
    expires_on: date
    revoked: bool = False


# --- faults ----------------------------------------------------------------------------------


@dataclass
class FailRule(knobs.FailRule):
    """``sandbox.knobs.FailRule``; a 429 can also say when the window resets."""

    reset_header: bool = False
    reset_seconds: int = 5


@dataclass
class RateLimitRule:
    limit: int
    window_seconds: float = 60.0
    send_reset_header: bool = True


@dataclass
class SessionRefusal:
    """A window in which ``PUT /token/session/:create`` answers ``status`` (401 or 403), as after
    the employee token was rotated, and every session of the company opened before the window is
    expired. It opens when set, or (``after_post``) when the next voucher POST is stored, and
    closes ``seconds`` later: the operator fixed the connection."""

    status: int = 401
    seconds: float = 10.0
    after_post: bool = False
    opens_at: float | None = None  # time.monotonic(); None while armed

    def refusing(self, now: float) -> bool:
        return self.opens_at is not None and self.opens_at <= now < self.opens_at + self.seconds


@dataclass
class Faults:
    latency_ms: int = 0
    error_rate: float = 0.0
    seed: int = 1234
    fail_next: list[FailRule] = field(default_factory=list)
    rate_limit: RateLimitRule | None = None
    commit_then_fail: int = 0
    commit_then_fail_status: int = 500
    commit_then_garble: int = 0
    commit_then_drop: int = 0
    post_hold_ms: int = 0
    post_delay_ms: int = 0
    search_delay_ms: int = 0
    session_refusal: SessionRefusal | None = None


# --- the company -----------------------------------------------------------------------------


@dataclass
class Company:
    id: str
    name: str
    consumer_token: str
    employee_token: str
    employee: NamedRec
    accounts: dict[int, AccountRec] = field(default_factory=dict)
    vat_types: dict[int, VatTypeRec] = field(default_factory=dict)
    voucher_types: dict[int, NamedRec] = field(default_factory=dict)
    departments: dict[int, NamedRec] = field(default_factory=dict)
    projects: dict[int, NamedRec] = field(default_factory=dict)
    suppliers: dict[int, NamedRec] = field(default_factory=dict)
    customers: dict[int, NamedRec] = field(default_factory=dict)
    employees: dict[int, NamedRec] = field(default_factory=dict)
    vouchers: dict[int, VoucherRec] = field(default_factory=dict)
    numbers_by_year: Counter = field(default_factory=Counter)
    temp_numbers: itertools.count = field(default_factory=lambda: itertools.count(1))
    faults: Faults = field(default_factory=Faults)
    rng: random.Random = field(default_factory=lambda: random.Random(1234))
    requests: RequestCounter = field(default_factory=RequestCounter)
    rate_windows: dict[str, RateWindow] = field(default_factory=dict)

    def account_by_number(self, number: int) -> AccountRec | None:
        return next((a for a in self.accounts.values() if a.number == number), None)

    def vat_type_by_number(self, number: str) -> VatTypeRec | None:
        return next((v for v in self.vat_types.values() if v.number == number), None)


class ValidationFailed(Exception):
    """Tripletex's 422 with code 18000: a list of (field, message)."""

    def __init__(self, messages: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {m}" for f, m in messages))
        self.messages = messages


class NotFound(Exception):
    pass


# --- the ledger ------------------------------------------------------------------------------


class Ledger(FaultStore):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.companies: dict[str, Company] = {}
        self.sessions: dict[str, Session] = {}
        # Ids are global, as in Tripletex: the same account has a different id in every company,
        # which catches a client that caches ids across connections.
        self._ids = itertools.count(10_001)
        self._company_ids = itertools.count(100_001)

    def _id(self) -> int:
        return next(self._ids)

    # companies ---------------------------------------------------------------------------

    def create_company(self, name: str) -> Company:
        with self.lock:
            employee = NamedRec(self._id(), "Ola Nordmann", "1")
            company = Company(
                id=str(next(self._company_ids)),
                name=name,
                consumer_token=f"consumer-{secrets.token_hex(12)}",
                employee_token=f"employee-{secrets.token_hex(12)}",
                employee=employee,
            )
            self._seed(company)
            self.companies[company.id] = company
            return company

    def _seed(self, company: Company) -> None:
        company.employees[company.employee.id] = company.employee
        account_ids: dict[int, int] = {}
        for number, *_ in SEED_ACCOUNTS:
            account_ids[number] = self._id()
        for number, name, percentage, vat_account in SEED_VAT_TYPES:
            rec = VatTypeRec(
                self._id(),
                number,
                name,
                percentage,
                account_ids.get(vat_account) if vat_account else None,
            )
            company.vat_types[rec.id] = rec
        for number, name, ledger_type, vat, locked, needs_dept, needs_proj in SEED_ACCOUNTS:
            vat_rec = company.vat_type_by_number(vat) if vat else None
            legal = tuple(
                company.vat_type_by_number(n).id
                for n in SEED_LEGAL_VAT.get(number, ())  # type: ignore[union-attr]
            )
            company.accounts[account_ids[number]] = AccountRec(
                id=account_ids[number],
                number=number,
                name=name,
                ledger_type=ledger_type,
                vat_type_id=vat_rec.id if vat_rec else None,
                vat_locked=locked,
                requires_department=needs_dept,
                requires_project=needs_proj,
                legal_vat_type_ids=legal,
            )
        for name in SEED_VOUCHER_TYPES:
            rec = NamedRec(self._id(), name)
            company.voucher_types[rec.id] = rec
        for number, name in SEED_DEPARTMENTS:
            rec = NamedRec(self._id(), name, number)
            company.departments[rec.id] = rec
        for number, name in SEED_PROJECTS:
            rec = NamedRec(self._id(), name, number)
            company.projects[rec.id] = rec
        supplier = NamedRec(self._id(), "Kontorleverandøren AS", "20001")
        company.suppliers[supplier.id] = supplier
        customer = NamedRec(self._id(), "Fjordkunden AS", "10001")
        company.customers[customer.id] = customer

    def company(self, company_id: str) -> Company:
        found = self.companies.get(company_id)
        if found is None:
            raise NotFound(f"no sandbox company {company_id}")
        return found

    def company_by_tokens(self, consumer_token: str, employee_token: str) -> Company | None:
        return next(
            (
                c
                for c in self.companies.values()
                if secrets.compare_digest(c.consumer_token, consumer_token)
                and secrets.compare_digest(c.employee_token, employee_token)
            ),
            None,
        )

    # sessions ----------------------------------------------------------------------------

    def create_session(self, company: Company, expires_on: date) -> str:
        token = f"session-{secrets.token_urlsafe(24)}"
        with self.lock:
            self.sessions[token] = Session(company.id, company.employee_token, expires_on)
        return token

    def session(self, token: str) -> Session | None:
        return self.sessions.get(token)

    def revoke_sessions(self, company: Company) -> int:
        """Expire every session of ``company`` early, as Tripletex may: the next call gets 401."""
        with self.lock:
            return self._revoke_sessions(company)

    def _revoke_sessions(self, company: Company) -> int:
        revoked = [
            s for s in self.sessions.values() if s.company_id == company.id and not s.revoked
        ]
        for session in revoked:
            session.revoked = True
        return len(revoked)

    def session_refused(self, company: Company) -> int | None:
        """The status ``PUT /token/session/:create`` answers now, if a refusal window is open."""
        with self.lock:
            refusal = company.faults.session_refusal
            if refusal is not None and refusal.refusing(time.monotonic()):
                return refusal.status
            return None

    def _open_session_refusal(self, company: Company) -> None:
        refusal = company.faults.session_refusal
        if refusal is not None and refusal.opens_at is None:
            refusal.opens_at = time.monotonic()
            self._revoke_sessions(company)

    def change_account(self, company: Company, number: int, **changes: Any) -> AccountRec:
        """Apply ``changes`` (ledger_type, vat_code, vat_locked, requires_department,
        requires_project) to the account ``number``."""
        with self.lock:
            account = company.account_by_number(number)
            if account is None:
                raise NotFound(f"account {number}")
            if "vat_code" in changes:
                code = changes.pop("vat_code")
                vat = company.vat_type_by_number(code) if code is not None else None
                if code is not None and vat is None:
                    raise NotFound(f"VAT code {code}")
                account.vat_type_id = vat.id if vat else None
            for name, value in changes.items():
                if value is not None:
                    setattr(account, name, value)
            return account

    # faults and rate limits --------------------------------------------------------------

    def set_faults(self, company: Company, faults: Faults) -> None:
        with self.lock:
            self._replace_faults(company, faults)
            if faults.session_refusal is not None and not faults.session_refusal.after_post:
                self._open_session_refusal(company)

    def take_after_store(self, company: Company) -> str | None:
        """How to answer a voucher POST that was just stored: ``"fail"`` (HTTP
        ``commit_then_fail_status``), ``"garble"`` (2xx with a body nobody can read), ``"drop"``
        (the connection closes before the answer's body), or None (answer normally). Each
        consumes one of its knob's count; checked in that order."""
        with self.lock:
            faults = company.faults
            for kind, knob in (("fail", "commit_then_fail"), ("garble", "commit_then_garble"),
                               ("drop", "commit_then_drop")):
                if getattr(faults, knob) > 0:
                    setattr(faults, knob, getattr(faults, knob) - 1)
                    return kind
            return None

    def rate_check(self, company: Company, employee_token: str) -> tuple[bool, dict[str, str]]:
        """Count one request in the employee's fixed window: (allowed, X-Rate-Limit-* headers).

        Once the limit is hit, every request is refused for the rest of the window, as the
        Tripletex docs describe.
        """
        rule = company.faults.rate_limit or RateLimitRule(DEFAULT_RATE_LIMIT, DEFAULT_RATE_WINDOW)
        now = time.monotonic()
        with self.lock:
            allowed, remaining, reset = fixed_window_hit(
                company.rate_windows, employee_token, rule.limit, rule.window_seconds, now)
            headers = {
                "X-Rate-Limit-Limit": str(rule.limit),
                "X-Rate-Limit-Remaining": str(remaining),
            }
            if rule.send_reset_header:
                headers["X-Rate-Limit-Reset"] = str(reset)
            return allowed, headers

    # lookups -----------------------------------------------------------------------------

    @staticmethod
    def accounts(
        company: Company, numbers: list[str] | None, ids: list[str] | None
    ) -> list[AccountRec]:
        found = sorted(company.accounts.values(), key=lambda a: a.number)
        if numbers is not None:
            found = [a for a in found if str(a.number) in numbers]
        if ids is not None:
            found = [a for a in found if str(a.id) in ids]
        return found

    @staticmethod
    def vat_types(
        company: Company, numbers: list[str] | None, ids: list[str] | None
    ) -> list[VatTypeRec]:
        found = list(company.vat_types.values())
        if numbers is not None:
            found = [v for v in found if v.number in numbers]
        if ids is not None:
            found = [v for v in found if str(v.id) in ids]
        return found

    # vouchers ----------------------------------------------------------------------------

    def post_voucher(self, company: Company, body: Any, *, send_to_ledger: bool) -> VoucherRec:
        """Validate ``body`` like Tripletex and store the voucher, VAT split out into row 0."""
        if not isinstance(body, dict):
            raise ValidationFailed([("", "Forventet et bilagsobjekt.")])
        with self.lock:
            checked = _check_voucher(company, body)
            voucher_date, postings = checked
            voucher_id = self._id()
            stored: list[PostingRec] = []
            for posting in postings:
                stored.extend(self._book_posting(company, posting, voucher_date))
            year = voucher_date.year
            if send_to_ledger:
                company.numbers_by_year[year] += 1
                number = company.numbers_by_year[year]
            else:
                number = 0
            voucher = VoucherRec(
                id=voucher_id,
                date=voucher_date,
                number=number,
                temp_number=next(company.temp_numbers),
                description=str(body.get("description") or ""),
                voucher_type_id=_ref_id(body.get("voucherType")),
                external_voucher_number=body.get("externalVoucherNumber"),
                postings=stored,
                sent_to_ledger=send_to_ledger,
                created_at=datetime.now(UTC),
                searchable_at=time.monotonic() + company.faults.search_delay_ms / 1000,
            )
            company.vouchers[voucher.id] = voucher
            if company.faults.session_refusal is not None:
                self._open_session_refusal(company)  # armed with after_post: opens now
            return voucher

    def _book_posting(
        self, company: Company, posting: dict[str, Any], voucher_date: date
    ) -> list[PostingRec]:
        gross: Decimal = posting["amountGross"]
        vat = company.vat_types.get(posting["vatType"]) if posting["vatType"] else None
        vat_amount = Decimal("0.00")
        if vat is not None and vat.percentage > 0 and vat.vat_account_id is not None:
            # Gross includes VAT: VAT = gross * p / (100 + p), rounded to øre.
            vat_amount = (gross * vat.percentage / (Decimal(100) + vat.percentage)).quantize(
                CENT, rounding=ROUND_HALF_UP
            )
        line = PostingRec(
            id=self._id(),
            row=posting["row"],
            date=posting["date"] or voucher_date,
            description=posting["description"],
            account_id=posting["account"],
            amount=gross - vat_amount,
            amount_gross=gross,
            amount_gross_currency=posting["amountGrossCurrency"],
            currency_id=posting["currency"],
            vat_type_id=vat.id if vat else None,
            department_id=posting["department"],
            project_id=posting["project"],
            supplier_id=posting["supplier"],
            customer_id=posting["customer"],
            employee_id=posting["employee"],
        )
        if not vat_amount:
            return [line]
        assert vat is not None and vat.vat_account_id is not None
        vat_line = PostingRec(
            id=self._id(),
            row=0,  # Tripletex's own row for postings it generates
            date=line.date,
            description=f"{vat.name}",
            account_id=vat.vat_account_id,
            amount=vat_amount,
            amount_gross=vat_amount,
            amount_gross_currency=vat_amount,
            currency_id=line.currency_id,
            vat_type_id=vat.id,
            system_generated=True,
        )
        return [line, vat_line]

    def voucher(self, company: Company, voucher_id: int) -> VoucherRec:
        found = company.vouchers.get(voucher_id)
        if found is None:
            raise NotFound(f"voucher {voucher_id}")
        return found

    def vouchers_by_external_number(
        self, company: Company, external_number: str | None
    ) -> list[VoucherRec]:
        """What the search shows: vouchers stored under ``search_delay_ms`` appear only once it
        has passed (an index that lags behind the store)."""
        return [
            v
            for v in self.searchable_vouchers(company)
            if external_number is None or v.external_voucher_number == external_number
        ]

    @staticmethod
    def searchable_vouchers(company: Company) -> list[VoucherRec]:
        now = time.monotonic()
        return [
            v
            for v in sorted(company.vouchers.values(), key=lambda v: v.id)
            if v.searchable_at <= now
        ]

    def add_attachment(
        self, company: Company, voucher_id: int, attachment: AttachmentRec
    ) -> VoucherRec:
        with self.lock:
            voucher = self.voucher(company, voucher_id)
            voucher.attachments.append(attachment)
            voucher.version += 1
            return voucher


# --- validation ------------------------------------------------------------------------------


def _ref_id(value: Any) -> int | None:
    """``{"id": 5}`` -> 5; anything else -> None."""
    if (
        isinstance(value, dict)
        and isinstance(value.get("id"), int)
        and not isinstance(value.get("id"), bool)
    ):
        return value["id"]
    return None


def _amount(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None


def _parse_date(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _check_voucher(company: Company, body: dict[str, Any]) -> tuple[date, list[dict[str, Any]]]:
    """Every rule Tripletex applies that the sandbox imitates; raises ValidationFailed."""
    errors: list[tuple[str, str]] = []
    voucher_date = _parse_date(body.get("date"))
    if body.get("date") is None:
        errors.append(("date", "Kan ikke være null."))
    elif voucher_date is None:
        errors.append(("date", "Ugyldig dato. Forventet format er ÅÅÅÅ-MM-DD."))
    external = body.get("externalVoucherNumber")
    if external is not None and not isinstance(external, str):
        errors.append(("externalVoucherNumber", "Må være en tekst."))
    elif isinstance(external, str) and len(external) > MAX_EXTERNAL_NUMBER:
        errors.append(
            (
                "externalVoucherNumber",
                f"Verdien er for lang. Maksimal lengde er {MAX_EXTERNAL_NUMBER} tegn.",
            )
        )
    if body.get("voucherType") is not None:
        type_id = _ref_id(body.get("voucherType"))
        if type_id is None or type_id not in company.voucher_types:
            errors.append(("voucherType.id", "Bilagstypen finnes ikke."))
    raw_postings = body.get("postings")
    if not isinstance(raw_postings, list) or not raw_postings:
        errors.append(("postings", "Bilaget må ha minst én postering."))
        raise ValidationFailed(errors)
    postings: list[dict[str, Any]] = []
    total = Decimal("0")
    amounts_complete = True
    for raw in raw_postings:
        checked, posting_errors = _check_posting(company, raw)
        errors.extend(posting_errors)
        if checked["amountGross"] is None:
            amounts_complete = False
        else:
            total += checked["amountGross"]
        postings.append(checked)
    if amounts_complete and total != 0:
        errors.append(
            (
                "postings",
                f"Bilaget er ikke i balanse. Summen av posteringene er {total}, men må være 0.",
            )
        )
    if errors:
        # Tripletex reports one message per field and problem, not one per posting.
        raise ValidationFailed(list(dict.fromkeys(errors)))
    assert voucher_date is not None
    for posting in postings:
        posting["date"] = posting["date"] or voucher_date
    return voucher_date, postings


def _check_posting(company: Company, raw: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    errors: list[tuple[str, str]] = []
    if not isinstance(raw, dict):
        return {"amountGross": None}, [("postings", "Ugyldig postering.")]
    row = raw.get("row")
    if not isinstance(row, int) or isinstance(row, bool) or row < 1:
        errors.append(
            (
                "postings.row",
                "Rad 0 er forbeholdt posteringer systemet lager selv. Radnummer må være 1 eller høyere.",
            )
        )
    account = company.accounts.get(_ref_id(raw.get("account")) or -1)
    if raw.get("account") is None:
        errors.append(("postings.account.id", "Konto mangler."))
    elif account is None:
        errors.append(("postings.account.id", "Kontoen finnes ikke."))
    gross = _amount(raw.get("amountGross"))
    if raw.get("amountGross") is None:
        errors.append(("postings.amountGross", "Kan ikke være null."))
    elif gross is None:
        errors.append(("postings.amountGross", "Ugyldig beløp."))
    elif gross != gross.quantize(CENT):
        errors.append(("postings.amountGross", "Beløpet kan ikke ha mer enn to desimaler."))
        gross = None
    else:
        gross = gross.quantize(CENT)  # stored and answered as øre: 1250 -> 1250.00
    currency_id = (
        _ref_id(raw.get("currency"))
        if raw.get("currency") is not None
        else CURRENCIES[BASE_CURRENCY][0]
    )
    currency_code = next(
        (code for code, (cid, _) in CURRENCIES.items() if cid == currency_id), None
    )
    if currency_code is None:
        errors.append(("postings.currency.id", "Valutaen finnes ikke."))
    gross_currency = (
        _amount(raw.get("amountGrossCurrency"))
        if raw.get("amountGrossCurrency") is not None
        else gross
    )
    if gross_currency is None and raw.get("amountGrossCurrency") is not None:
        errors.append(("postings.amountGrossCurrency", "Ugyldig beløp."))
    elif currency_code == BASE_CURRENCY and gross is not None and gross_currency != gross:
        errors.append(
            (
                "postings.amountGrossCurrency",
                "Beløp i valuta må være lik beløpet når valutaen er NOK.",
            )
        )
    elif gross_currency is not None:
        gross_currency = gross_currency.quantize(CENT)
    vat_type = None
    if raw.get("vatType") is not None:
        vat_type = company.vat_types.get(_ref_id(raw.get("vatType")) or -1)
        if vat_type is None:
            errors.append(("postings.vatType.id", "Mva-koden finnes ikke."))
    department_id = _known_ref(
        raw, "department", company.departments, "Avdelingen finnes ikke.", errors
    )
    project_id = _known_ref(raw, "project", company.projects, "Prosjektet finnes ikke.", errors)
    supplier_id = _known_ref(
        raw, "supplier", company.suppliers, "Leverandøren finnes ikke.", errors
    )
    customer_id = _known_ref(raw, "customer", company.customers, "Kunden finnes ikke.", errors)
    employee_id = _known_ref(raw, "employee", company.employees, "Den ansatte finnes ikke.", errors)
    if account is not None:
        errors.extend(_account_rules(company, account, raw, vat_type))
    checked = {
        "row": row,
        "date": _parse_date(raw.get("date")),
        "description": str(raw.get("description") or ""),
        "account": account.id if account else None,
        "amountGross": gross,
        "amountGrossCurrency": gross_currency,
        "currency": currency_id,
        "vatType": vat_type.id if vat_type else None,
        "department": department_id,
        "project": project_id,
        "supplier": supplier_id,
        "customer": customer_id,
        "employee": employee_id,
    }
    return checked, errors


def _known_ref(
    raw: dict[str, Any],
    name: str,
    known: dict[int, NamedRec],
    message: str,
    errors: list[tuple[str, str]],
) -> int | None:
    if raw.get(name) is None:
        return None
    ref = _ref_id(raw.get(name))
    if ref is None or ref not in known:
        errors.append((f"postings.{name}.id", message))
        return None
    return ref


def _account_rules(
    company: Company, account: AccountRec, raw: dict[str, Any], vat_type: VatTypeRec | None
) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    party_rules = {
        "CUSTOMER": ("customer", "Kunde mangler."),
        "VENDOR": ("supplier", "Leverandør mangler."),
        "EMPLOYEE": ("employee", "Ansatt mangler."),
    }
    if account.ledger_type in party_rules:
        name, message = party_rules[account.ledger_type]
        if raw.get(name) is None:
            errors.append((f"postings.{name}.id", message))
    # No vatType on a posting means VAT code 0 ("no VAT").
    effective = vat_type or company.vat_type_by_number("0")
    if (
        account.vat_locked
        and account.vat_type_id is not None
        and (effective is None or effective.id != account.vat_type_id)
    ):
        locked = company.vat_types[account.vat_type_id]
        errors.append(
            (
                "postings.vatType.id",
                f"Konto {account.number} er låst til mva-kode {locked.number}.",
            )
        )
    elif (
        vat_type is not None
        and account.legal_vat_type_ids
        and vat_type.id not in account.legal_vat_type_ids
    ):
        errors.append(
            (
                "postings.vatType.id",
                f"Mva-kode {vat_type.number} er ikke tillatt på konto {account.number}.",
            )
        )
    if account.requires_department and raw.get("department") is None:
        errors.append(("postings.department.id", "Avdeling må angis for denne kontoen."))
    if account.requires_project and raw.get("project") is None:
        errors.append(("postings.project.id", "Prosjekt må angis for denne kontoen."))
    return errors
