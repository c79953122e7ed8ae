"""The Tripletex API v2 client: session tokens, lookups, vouchers and their attachments.

One ``TripletexClient`` per connection (company). It sends through the shared HTTP base
(``shared.integrations.http.VendorHttp``: timeouts, the error taxonomy, 401 renew-once,
Retry-After, redaction, log fields) and keeps what is Tripletex's own: the session, the paths
and models, and how its error bodies read. See ``/shared/guides/tripletex.md`` for the API facts
it follows.

Choices worth knowing:
- ``PostedVoucher.reference`` is ``"TTX-<voucher id>"``. The voucher *number* is not stable: a
  voucher posted with ``sendToLedger=false`` has none until the accountant approves it, and
  numbers restart every year. The id never changes, so a lookup by ``externalVoucherNumber``
  after a crash yields the same reference as the original post.
- Account numbers, VAT codes, departments, projects and unknown references are checked before
  the voucher is posted (preflight), so a mapping mistake comes back as one ``PermanentError``
  listing everything to fix, in plain words, without a rejected request at Tripletex.
- Money is serialised from ``Decimal`` with exactly two decimals by our own JSON writer: the
  standard ``json`` module would either refuse ``Decimal`` or go through ``float``.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field, ValidationError

from shared.config import get_settings
from shared.domain.vouchers import CENT, PostedVoucher, PostingDraft, VoucherDraft
from shared.integrations.errors import AuthError, PermanentError
from shared.integrations.http import (
    ErrorReading,
    SessionAuth,
    VendorHttp,
    holding,
    seconds_header,
)
from shared.integrations.tripletex.models import (
    Account,
    Currency,
    Department,
    ErrorBody,
    ListEnvelope,
    Project,
    SessionToken,
    ValueEnvelope,
    VatType,
    Voucher,
    VoucherType,
    WhoAmI,
    parse_date,
)

if TYPE_CHECKING:
    from shared.integrations.rate_limit import RateLimiter
    from shared.integrations.targets import PreparedVoucher, SendGate

logger = logging.getLogger(__name__)

SYSTEM = "tripletex"
ACCOUNT_FIELDS = (
    "id,number,name,vatType(*),vatLocked,legalVatTypes,ledgerType,requiresDepartment,"
    "requiresProject"
)
VOUCHER_FIELDS = "id,number,tempNumber,year,date,description,externalVoucherNumber"
# The currency Tripletex books in for Norwegian companies. ``amountGross`` is in this currency.
BASE_CURRENCY = "NOK"
ATTACHMENT_TYPES = frozenset({"application/pdf", "image/png", "image/jpeg", "image/tiff"})
# Postings on these ledgers need the matching party id, which a VoucherDraft does not carry.
SUB_LEDGER_PARTY = {"CUSTOMER": "a customer", "VENDOR": "a supplier", "EMPLOYEE": "an employee"}

# Every answer's envelope, parametrized once at import. Pydantic builds a model class (schema
# and validator) the first time ``ValueEnvelope[Voucher]`` is written and looks it up again at
# every later use: written in the methods, the first exports of a worker built them inside its
# first tasks, and every export paid the lookup (issue 12, CPU per export).
_WHOAMI_ANSWER = ValueEnvelope[WhoAmI]
_VOUCHER_ANSWER = ValueEnvelope[Voucher]
_SESSION_ANSWER = ValueEnvelope[SessionToken]
_VOUCHER_LIST = ListEnvelope[Voucher]
_ACCOUNT_LIST = ListEnvelope[Account]
_VAT_TYPE_LIST = ListEnvelope[VatType]
_VOUCHER_TYPE_LIST = ListEnvelope[VoucherType]
_CURRENCY_LIST = ListEnvelope[Currency]
_DEPARTMENT_LIST = ListEnvelope[Department]
_PROJECT_LIST = ListEnvelope[Project]
JSON_CONTENT_TYPE = "application/json; charset=utf-8"  # the media type the spec declares

# English hints appended to Tripletex's (Norwegian) validation messages, keyed by the last
# meaningful part of the field path. They say what usually has to change in the mapping.
FIELD_HINTS = {
    "supplier": "a supplier is required: the account is a supplier sub-ledger account",
    "customer": "a customer is required: the account is a customer sub-ledger account",
    "employee": "an employee is required: the account is an employee sub-ledger account",
    "vatType": "the VAT code does not fit the account",
    "account": "the account is missing or unknown",
    "department": "the department is missing or unknown",
    "project": "the project is missing or unknown",
    "externalVoucherNumber": "the export id is too long (at most 70 characters)",
    "date": "the voucher date is missing or invalid",
    "row": "posting rows must start at 1",
    "amountGross": "an amount is missing or has more than two decimals",
    "amountGrossCurrency": "the currency amount must equal the NOK amount",
}


class TripletexOptions(BaseModel):
    """Per-connection choices of how vouchers are booked."""

    # False leaves the voucher as a draft for the accountant to approve (a cheap dry run).
    send_to_ledger: bool = True
    # e.g. "Reiseregning"; None posts without a voucher type, which Tripletex allows.
    voucher_type_name: str | None = None
    # How long a stored voucher may take to become findable; None: the setting
    # AIC_TRIPLETEX_SEARCH_DELAY_SECONDS (see there, and docs/ARCHITECTURE.md).
    search_delay_seconds: float | None = Field(default=None, ge=0, le=3600)


@dataclass(frozen=True)
class RateLimitStatus:
    """The last ``X-Rate-Limit-*`` headers seen, for a limiter that paces the next requests."""

    limit: int | None
    remaining: int | None
    reset_seconds: float | None
    seen_at: datetime


@dataclass(frozen=True)
class _Session:
    token: str
    auth: httpx.Auth  # compared by identity when a 401 rejects it
    expires_on: date
    # Renew a day early: Tripletex counts dates in Norwegian time, we count in UTC.
    renew_on: date


@dataclass(frozen=True)
class _Refs:
    """Everything a voucher refers to, resolved to this company's ids."""

    accounts: dict[str, Account]
    vat_types: dict[str, VatType]
    departments: dict[str, Department]
    projects: dict[str, Project]
    currency: Currency
    voucher_type: VoucherType | None


class TripletexClient:
    """A connection to one Tripletex company. Thread-safe for a worker's thread pool: the
    session is created under one lock and the lookups are fetched and forgotten under another,
    so each is fetched once per client however many threads need it at once."""

    system = SYSTEM

    def __init__(
        self,
        base_url: str,
        *,
        consumer_token: str,
        employee_token: str,
        company_id: str = "0",
        options: TripletexOptions | None = None,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        """``limiter``: the connection's shared request budget (``shared.integrations.rate_limit``);
        every HTTP exchange waits for it. None sends without limiting. ``timeout``: None takes
        ``AIC_HTTP_*`` from settings."""
        self._consumer_token = consumer_token
        self._employee_token = employee_token
        self.company_id = str(company_id)
        self.options = options or TripletexOptions()
        self._http = VendorHttp(
            system=SYSTEM,
            display_name="Tripletex",
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"Accept": "application/json"},
            session=SessionAuth(current=self._current_auth, renew=self._drop_session),
            read_error=_read_error,
            rate_limit_reset=lambda response: seconds_header(
                response.headers.get("x-rate-limit-reset")),
            request_id_headers=("x-tlx-request-id",),
            secrets=self._secrets,
            limiter=limiter,
            on_response=self._observe_rate_limit,
        )
        # The voucher POST's whole URL, built once: httpx merging the base URL and a query for
        # every voucher cost more CPU than the rest of building the request (issue 12).
        self._voucher_post_url = self._http.client.base_url.join("ledger/voucher").copy_with(
            params={"sendToLedger": "true" if self.options.send_to_ledger else "false"})
        self._session: _Session | None = None
        self._session_lock = threading.Lock()
        # Worker threads share one client per connection. Resolving a draft's references holds
        # this lock (single flight): when a fresh client meets a burst of exports the first
        # thread fetches the chart and the others wait and find it cached, instead of every
        # thread fetching it (a stampede that spent the connection's rate budget; measured by
        # ``python -m bench.cold_start``). A failed fetch caches nothing: the next thread
        # fetches again. Re-entrant because resolving may forget the caches it holds.
        self._lookup_lock = threading.RLock()
        self._accounts: dict[str, Account] = {}
        self._vat_types: dict[str, VatType] = {}
        self._voucher_types: dict[str, VoucherType] = {}
        self._currencies: dict[str, Currency] = {}
        self._departments: dict[str, Department] = {}
        self._projects: dict[str, Project] = {}
        self.rate_limit: RateLimitStatus | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TripletexClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def limiter(self) -> RateLimiter | None:
        return self._http.limiter

    @property
    def search_delay_seconds(self) -> float:
        if self.options.search_delay_seconds is not None:
            return self.options.search_delay_seconds
        return get_settings().tripletex_search_delay_seconds

    def __repr__(self) -> str:  # never show tokens
        return (
            f"TripletexClient(base_url={str(self._http.client.base_url)!r}, "
            f"company={self.company_id!r})"
        )

    # --- public operations -----------------------------------------------------------------

    def check_connection(self) -> WhoAmI:
        """Create a session if needed and ask who it belongs to: the "test connection" button."""
        response = self._http.request("GET", "/token/session/>whoAmI", what="the connection check")
        return self._http.parse(_WHOAMI_ANSWER, response, "the connection check").value

    def find_voucher(self, external_number: str) -> PostedVoucher | None:
        """The voucher we posted earlier under ``external_number``, or None.

        Called before retrying a post whose outcome is unknown: Tripletex has no idempotency
        key, ``externalVoucherNumber`` is our dedup key.
        """
        response = self._http.request(
            "GET",
            "/ledger/voucher/>externalVoucherNumber",
            params={"externalVoucherNumber": external_number, "fields": VOUCHER_FIELDS},
            what="the voucher search",
        )
        found = self._http.parse(_VOUCHER_LIST, response, "the voucher search").values
        # Match exactly: the search is not documented as an exact match, and a voucher with a
        # neighbouring number must never be taken for ours.
        matches = sorted(
            (v for v in found if v.external_voucher_number == external_number), key=lambda v: v.id
        )
        if len(matches) > 1:
            logger.warning(
                "tripletex.duplicate_external_number",
                extra={"external_number": external_number, "voucher_ids": [v.id for v in matches]},
            )
        return self._posted(matches[0]) if matches else None

    def preflight(self, draft: VoucherDraft) -> None:
        """Check ``draft`` against the company's chart without posting anything.

        Raises one PermanentError listing every problem. ``post_voucher`` runs the same check;
        the lookups are cached, so a caller that checks first (to record "posting started" only
        for drafts that can be posted) pays no extra requests.
        """
        self._resolve(draft)

    def prepare_voucher(self, draft: VoucherDraft) -> PreparedVoucher:
        """Resolve ``draft`` and build its body; raises PermanentError (nothing sent) when the
        mapping does not fit. Also makes sure a session exists: creating one is a request, and
        ``send_voucher`` must be the POST alone."""
        from shared.integrations.targets import PreparedVoucher

        refs = self._resolve(draft)
        payload = dumps_json(self._voucher_body(draft, refs)).encode("utf-8")
        self._current_auth()
        return PreparedVoucher(draft=draft, payload=payload)

    def send_voucher(self, prepared: PreparedVoucher, gate: SendGate | None = None) -> PostedVoucher:
        """POST a prepared voucher: one request (two if Tripletex refuses an expired session),
        bounded by ``gate`` when given."""
        try:
            response = self._http.request(
                "POST",
                self._voucher_post_url,
                content=prepared.payload,
                headers={"Content-Type": JSON_CONTENT_TYPE},
                what="the voucher",
                gate=gate,
            )
        except PermanentError:
            # Tripletex disagrees with what we cached (the chart may have changed since).
            self.forget_lookups()
            raise
        voucher = self._http.parse(_VOUCHER_ANSWER, response, "the posted voucher").value
        posted = self._posted(voucher, fallback_date=prepared.draft.date)
        logger.info(
            "tripletex.voucher_posted",
            extra={"external_number": prepared.draft.external_number, "voucher_id": posted.id},
        )
        return posted

    def post_voucher(self, draft: VoucherDraft, gate: SendGate | None = None) -> PostedVoucher:
        """``prepare_voucher`` then ``send_voucher``: for scripts and tests. The worker calls
        the two itself, so that "posting started" is marked between them."""
        return self.send_voucher(self.prepare_voucher(draft), gate)

    def has_attachment(self, voucher_id: str) -> bool:
        response = self._http.request(
            "GET",
            f"/ledger/voucher/{self._voucher_id(voucher_id)}",
            params={"fields": "id,attachment"},
            what="the voucher's attachment",
        )
        return self._http.parse(_VOUCHER_ANSWER, response, "the voucher").value.attachment is not None

    def attach_receipt(
        self, voucher_id: str, filename: str, content: bytes, content_type: str
    ) -> None:
        """Upload a receipt; a second upload is appended to the voucher's document as pages."""
        media_type = content_type.split(";")[0].strip().lower()
        if media_type not in ATTACHMENT_TYPES:
            raise PermanentError(
                f"Tripletex accepts PDF, PNG, JPEG or TIFF receipts; {filename!r} is {media_type}",
                system=SYSTEM,
                code="unsupported_attachment_type",
            )
        self._http.request(
            "POST",
            f"/ledger/voucher/{self._voucher_id(voucher_id)}/attachment",
            files={"file": (filename, content, media_type)},
            what="the receipt",
        )

    @staticmethod
    def _voucher_id(voucher_id: str) -> int:
        try:
            return int(voucher_id)  # the spec's int64; refuse anything else early
        except ValueError:
            raise PermanentError(
                f"{voucher_id!r} is not a Tripletex voucher id",
                system=SYSTEM,
                code="bad_voucher_id",
            ) from None

    # --- lookups (cached per client) -------------------------------------------------------

    def forget_lookups(self) -> None:
        """Drop every cached lookup; the next voucher reads the chart afresh. Under the lookup
        lock, so a thread resolving a draft never sees a half-cleared cache."""
        with self._lookup_lock:
            self._forget_lookups_locked()

    def _forget_lookups_locked(self) -> None:
        for cache in (
            self._accounts,
            self._vat_types,
            self._voucher_types,
            self._currencies,
            self._departments,
            self._projects,
        ):
            cache.clear()

    def accounts(self, numbers: set[str]) -> dict[str, Account]:
        """The accounts among ``numbers`` that exist, by number. Unknown numbers are left out."""
        wanted = {n for n in numbers if n.isdigit()} - self._accounts.keys()
        if wanted:
            response = self._http.request(
                "GET",
                "/ledger/account",
                params={"number": ",".join(sorted(wanted)), "fields": ACCOUNT_FIELDS},
                what="the account lookup",
            )
            for account in self._http.parse(
                _ACCOUNT_LIST, response, "the account lookup"
            ).values:
                if str(account.number) in wanted:
                    self._accounts[str(account.number)] = account
        return {n: self._accounts[n] for n in numbers if n in self._accounts}

    def vat_types(self, numbers: set[str]) -> dict[str, VatType]:
        """The VAT types among ``numbers`` (Tripletex's VAT codes) that exist, by number."""
        wanted = numbers - self._vat_types.keys()
        if wanted:
            response = self._http.request(
                "GET",
                "/ledger/vatType",
                params={"number": ",".join(sorted(wanted))},
                what="the VAT type lookup",
            )
            for vat_type in self._http.parse(
                _VAT_TYPE_LIST, response, "the VAT type lookup"
            ).values:
                if vat_type.number in wanted:
                    self._vat_types[vat_type.number] = vat_type
        return {n: self._vat_types[n] for n in numbers if n in self._vat_types}

    def voucher_type(self, name: str) -> VoucherType | None:
        key = name.strip().lower()
        if key not in self._voucher_types:
            response = self._http.request(
                "GET", "/ledger/voucherType", params={"name": name}, what="the voucher type lookup"
            )
            values = self._http.parse(
                _VOUCHER_TYPE_LIST, response, "the voucher type lookup"
            ).values
            # The name filter may match parts of names ("Reise" finds "Reiseregning"): be exact.
            for voucher_type in values:
                if (voucher_type.name or "").strip().lower() == key:
                    self._voucher_types[key] = voucher_type
                    break
        return self._voucher_types.get(key)

    def currency(self, code: str) -> Currency | None:
        key = code.strip().upper()
        if key not in self._currencies:
            response = self._http.request(
                "GET", "/currency", params={"code": key}, what="the currency lookup"
            )
            for currency in self._http.parse(
                _CURRENCY_LIST, response, "the currency lookup"
            ).values:
                if (currency.code or "").upper() == key:
                    self._currencies[key] = currency
                    break
        return self._currencies.get(key)

    def department(self, number: str) -> Department | None:
        if number not in self._departments:
            response = self._http.request(
                "GET",
                "/department",
                params={"departmentNumber": number},
                what="the department lookup",
            )
            for department in self._http.parse(
                _DEPARTMENT_LIST, response, "the department lookup"
            ).values:
                if department.department_number == number:
                    self._departments[number] = department
                    break
        return self._departments.get(number)

    def project(self, number: str) -> Project | None:
        if number not in self._projects:
            response = self._http.request(
                "GET", "/project", params={"number": number}, what="the project lookup"
            )
            for project in self._http.parse(
                _PROJECT_LIST, response, "the project lookup"
            ).values:
                if project.number == number:
                    self._projects[number] = project
                    break
        return self._projects.get(number)

    # --- preflight and body ----------------------------------------------------------------

    def _resolve(self, draft: VoucherDraft) -> _Refs:
        """Look up every reference of ``draft``; raise one PermanentError listing all problems."""
        with holding(self._lookup_lock):
            return self._resolve_locked(draft)

    def _fetch_missing_at_once(self, draft: VoucherDraft) -> dict[tuple[str, str], object]:
        """A cold client (a new one, or one whose lookups were forgotten) fetches what ``draft``
        needs and the caches lack side by side: the session first (every lookup needs it), then
        the lookups at once, so a cold start costs two round trips instead of one per lookup
        (four at least: the session, the accounts, the VAT types, the currency), and every
        export in flight waits for it (single flight). Each lookup fills its own cache; the
        first error is raised after all have ended. Returns each lookup's answer by (lookup,
        key), for ``_resolve_locked`` to use instead of asking again (an unknown account is
        not cached). Nothing when at most one lookup is missing. Called with the lookup lock
        held."""
        account_numbers = {p.account_number.strip() for p in draft.postings}
        vat_codes = {p.vat_code.strip() for p in draft.postings if p.vat_code}
        fetches: dict[tuple[str, str], Callable[[], object]] = {}
        if {n for n in account_numbers if n.isdigit()} - self._accounts.keys():
            fetches["accounts", ""] = functools.partial(self.accounts, account_numbers)
        if vat_codes - self._vat_types.keys():
            fetches["vat_types", ""] = functools.partial(self.vat_types, vat_codes)
        if (draft.currency.strip().upper() == BASE_CURRENCY
                and BASE_CURRENCY not in self._currencies):
            fetches["currency", ""] = functools.partial(self.currency, BASE_CURRENCY)
        name = self.options.voucher_type_name
        if name and name.strip().lower() not in self._voucher_types:
            fetches["voucher_type", ""] = functools.partial(self.voucher_type, name)
        for number in {p.department_number for p in draft.postings if p.department_number}:
            if number not in self._departments:
                fetches["department", number] = functools.partial(self.department, number)
        for number in {p.project_number for p in draft.postings if p.project_number}:
            if number not in self._projects:
                fetches["project", number] = functools.partial(self.project, number)
        if len(fetches) < 2:
            return {}
        self._current_auth()
        with ThreadPoolExecutor(max_workers=len(fetches),
                                thread_name_prefix="tripletex-lookup") as pool:
            # Each in a copy of this thread's context: the lookups' log lines keep its ids.
            futures = {key: pool.submit(contextvars.copy_context().run, fetch)
                       for key, fetch in fetches.items()}
        return {key: future.result() for key, future in futures.items()}

    def _resolve_locked(self, draft: VoucherDraft) -> _Refs:
        fetched = self._fetch_missing_at_once(draft)

        def answer(lookup: str, key: str, ask: Callable[[], Any]) -> Any:
            return fetched[lookup, key] if (lookup, key) in fetched else ask()

        problems: list[tuple[str, str]] = []
        company = f"(company {self.company_id})"
        currency_code = draft.currency.strip().upper()
        if currency_code != BASE_CURRENCY:
            # amountGross must be in NOK; a VoucherDraft carries only one amount per posting,
            # so a foreign-currency draft would be booked with wrong NOK values. Refuse it.
            problems.append(
                (
                    "unsupported_currency",
                    f"the voucher is in {currency_code}, but Tripletex books in {BASE_CURRENCY} and "
                    f"the export carries no {BASE_CURRENCY} amounts: convert it before export",
                )
            )
        account_numbers = {p.account_number.strip() for p in draft.postings}
        accounts = answer("accounts", "", lambda: self.accounts(account_numbers))
        for number in sorted(account_numbers - accounts.keys()):
            problems.append(
                (
                    "unknown_account",
                    f"account {number} does not exist in Tripletex {company}: map it to an existing "
                    "account or create it",
                )
            )
        vat_codes = {p.vat_code.strip() for p in draft.postings if p.vat_code}
        vat_types = answer("vat_types", "", lambda: self.vat_types(vat_codes)) if vat_codes else {}
        for code in sorted(vat_codes - vat_types.keys()):
            problems.append(
                (
                    "unknown_vat_type",
                    f"VAT code {code} does not exist in Tripletex {company}: map it to an existing "
                    "VAT type",
                )
            )
        departments: dict[str, Department] = {}
        for number in sorted({p.department_number for p in draft.postings if p.department_number}):
            if (found := answer("department", number,
                                functools.partial(self.department, number))) is not None:
                departments[number] = found
            else:
                problems.append(
                    (
                        "unknown_department",
                        f"department {number} does not exist in Tripletex {company}",
                    )
                )
        projects: dict[str, Project] = {}
        for number in sorted({p.project_number for p in draft.postings if p.project_number}):
            if (found := answer("project", number,
                                functools.partial(self.project, number))) is not None:
                projects[number] = found
            else:
                problems.append(
                    ("unknown_project", f"project {number} does not exist in Tripletex {company}")
                )
        currency = (answer("currency", "", lambda: self.currency(BASE_CURRENCY))
                    if currency_code == BASE_CURRENCY else None)
        if currency is None and currency_code == BASE_CURRENCY:
            problems.append(
                ("unknown_currency", f"currency {currency_code} is not known to Tripletex")
            )
        voucher_type = None
        if self.options.voucher_type_name:
            voucher_type = answer("voucher_type", "", lambda: self.voucher_type(
                self.options.voucher_type_name))
            if voucher_type is None:
                problems.append(
                    (
                        "unknown_voucher_type",
                        f"voucher type {self.options.voucher_type_name!r} does not exist in Tripletex "
                        f"{company}: fix the connection's voucher type",
                    )
                )
        for posting in draft.postings:
            account = accounts.get(posting.account_number.strip())
            if account is not None:
                problems.extend(_posting_problems(posting, account, vat_types))
        if problems:
            # The accountant fixes the chart or the mapping next; see their fix on the retry.
            self.forget_lookups()
            messages = list(dict.fromkeys(message for _, message in problems))
            raise PermanentError(
                "Cannot post to Tripletex: " + "; ".join(messages),
                system=SYSTEM,
                code=problems[0][0],
                details=messages,
            )
        assert currency is not None  # a missing currency is a problem above
        return _Refs(accounts, vat_types, departments, projects, currency, voucher_type)

    def _voucher_body(self, draft: VoucherDraft, refs: _Refs) -> dict[str, Any]:
        postings = []
        for row, posting in enumerate(draft.postings, start=1):  # row 0 is Tripletex's own
            amount = posting.amount.quantize(CENT)
            body: dict[str, Any] = {
                "row": row,
                "date": draft.date.isoformat(),
                "description": posting.description or draft.description,
                "account": {"id": refs.accounts[posting.account_number.strip()].id},
                # Only gross amounts count; in NOK both are the same number.
                "amountGross": amount,
                "amountGrossCurrency": amount,
                "currency": {"id": refs.currency.id},
            }
            if posting.vat_code:
                body["vatType"] = {"id": refs.vat_types[posting.vat_code.strip()].id}
            if posting.department_number:
                body["department"] = {"id": refs.departments[posting.department_number].id}
            if posting.project_number:
                body["project"] = {"id": refs.projects[posting.project_number].id}
            postings.append(body)
        voucher: dict[str, Any] = {
            "date": draft.date.isoformat(),
            "description": draft.description,
            "externalVoucherNumber": draft.external_number,
            "postings": postings,
        }
        if refs.voucher_type is not None:
            voucher["voucherType"] = {"id": refs.voucher_type.id}
        return voucher

    def _posted(self, voucher: Voucher, fallback_date: date | None = None) -> PostedVoucher:
        # Number 0 (or none) means "not sent to ledger yet": no human number exists.
        number = str(voucher.number) if voucher.number else None
        return PostedVoucher(
            id=str(voucher.id),
            number=number,
            reference=f"TTX-{voucher.id}",
            booked_on=voucher.booked_on or fallback_date,
        )

    # --- session ---------------------------------------------------------------------------

    def _current_auth(self) -> httpx.Auth:
        with holding(self._session_lock):
            today = datetime.now(UTC).date()
            if self._session is None or today >= self._session.renew_on:
                self._session = self._create_session(today)
            return self._session.auth

    def _drop_session(self, rejected: httpx.Auth) -> None:
        """Tripletex refused ``rejected`` (401: the session expired or was revoked)."""
        with self._session_lock:
            if self._session is not None and self._session.auth is rejected:
                self._session = None

    def _secrets(self) -> tuple[str | None, ...]:
        session = self._session
        return (self._consumer_token, self._employee_token, session.token if session else None)

    def _create_session(self, today: date) -> _Session:
        requested = today + timedelta(days=2)
        # The tokens travel in the query (the API's legacy PUT form): the base masks them in
        # httpx's request log, and its messages never quote a query.
        response = self._http.exchange(
            "PUT",
            "/token/session/:create",
            what="the session",
            params={
                "consumerToken": self._consumer_token,
                "employeeToken": self._employee_token,
                "expirationDate": requested.isoformat(),
            },
        )
        if response.status_code in (401, 403):
            request_id = _read_error(response).request_id
            status = f"HTTP {response.status_code}" + (
                f", request id {request_id}" if request_id else "")
            raise AuthError(
                "Tripletex refused the consumer/employee token pair: check the connection's "
                f"tokens and that they belong to this environment ({status})",
                system=SYSTEM,
                code="session_refused",
                status_code=response.status_code,
                request_id=request_id,
            )
        self._http.raise_for_status(response, "the session")
        session = self._http.parse(_SESSION_ANSWER, response, "the session").value
        expires_on = parse_date(session.expiration_date) or requested
        logger.info("tripletex.session_created", extra={"expires_on": expires_on.isoformat()})
        # At least a day of use even if Tripletex shortened the expiry: a token that dies
        # earlier is caught by the 401 renewal, not by creating a session on every request.
        renew_on = max(expires_on - timedelta(days=1), today + timedelta(days=1))
        auth = httpx.BasicAuth(self.company_id, session.token)
        return _Session(session.token, auth, expires_on, renew_on=renew_on)

    # --- rate-limit headers ----------------------------------------------------------------

    def _observe_rate_limit(self, response: httpx.Response) -> None:
        """Every answer's ``X-Rate-Limit-*`` headers: kept for callers, fed to the limiter."""
        self._record_rate_limit(response)
        if self.limiter is not None:
            self.limiter.observe(
                remaining=_int_header(response.headers.get("x-rate-limit-remaining")),
                reset_seconds=seconds_header(response.headers.get("x-rate-limit-reset")),
            )

    def _record_rate_limit(self, response: httpx.Response) -> None:
        headers = response.headers
        if not any(
            h in headers
            for h in ("x-rate-limit-limit", "x-rate-limit-remaining", "x-rate-limit-reset")
        ):
            return
        self.rate_limit = RateLimitStatus(
            limit=_int_header(headers.get("x-rate-limit-limit")),
            remaining=_int_header(headers.get("x-rate-limit-remaining")),
            reset_seconds=seconds_header(headers.get("x-rate-limit-reset")),
            seen_at=datetime.now(UTC),
        )


# --- helpers -------------------------------------------------------------------------------


def _posting_problems(
    posting: PostingDraft, account: Account, vat_types: dict[str, VatType]
) -> list[tuple[str, str]]:
    """What Tripletex would reject about ``posting`` on ``account``, in plain words."""
    problems: list[tuple[str, str]] = []
    label = f"account {account.label}"
    party = SUB_LEDGER_PARTY.get(account.ledger_type)
    if party is not None:
        problems.append(
            (
                "sub_ledger_account",
                f"{label} is a {account.ledger_type} sub-ledger account: Tripletex needs {party} on "
                f"every posting to it and this export has none; map the expense to a general ledger "
                f"account instead",
            )
        )
    if account.requires_department and not posting.department_number:
        problems.append(
            ("department_required", f"{label} requires a department: set one in the mapping")
        )
    if account.requires_project and not posting.project_number:
        problems.append(("project_required", f"{label} requires a project: set one in the mapping"))
    vat_type = vat_types.get(posting.vat_code.strip()) if posting.vat_code else None
    locked = account.vat_type if account.vat_locked else None
    if locked is not None:
        if locked.number is not None:
            wrong = (posting.vat_code.strip() if posting.vat_code else "0") != locked.number
        else:  # only the id is known: compare when the posting names a VAT type
            wrong = vat_type is not None and vat_type.id != locked.id
        if wrong:
            problems.append(
                (
                    "vat_locked",
                    f"{label} only accepts VAT code {locked.number or locked.id}, the posting uses "
                    f"{posting.vat_code or 'none'}: map a matching VAT code",
                )
            )
    legal = {ref.id for ref in account.legal_vat_types if ref.id is not None}
    if vat_type is not None and legal and vat_type.id not in legal and locked is None:
        problems.append(
            (
                "vat_not_allowed",
                f"VAT code {posting.vat_code} is not allowed on {label}: map an allowed VAT code",
            )
        )
    return problems


def dumps_json(value: Any) -> str:
    """JSON text with ``Decimal`` as a number with two decimals, never via ``float``.

    Strings go through json's own string encoder directly: ``json.dumps(..., ensure_ascii=False)``
    builds a new encoder on every call, which was half the CPU of building a voucher's body
    (issue 12)."""
    if isinstance(value, str):
        return encode_basestring(value)
    if isinstance(value, Decimal):
        return format(value.quantize(CENT), "f")
    if isinstance(value, float):
        raise TypeError("float in a Tripletex request body: use Decimal for money")
    if isinstance(value, dict):
        return (
            "{" + ",".join(f"{encode_basestring(str(k))}:{dumps_json(v)}"
                           for k, v in value.items()) + "}"
        )
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps_json(v) for v in value) + "]"
    return json.dumps(value)  # int, bool, None


def _error_body(response: httpx.Response) -> ErrorBody:
    try:
        return ErrorBody.model_validate(json.loads(response.content))
    except (ValueError, ValidationError):
        return ErrorBody()  # an HTML error page from a proxy, say


def _read_error(response: httpx.Response) -> ErrorReading:
    """Tripletex's error body: validation messages with hints, its request id, and what the
    statuses that need more than the base's words mean."""
    body = _error_body(response)
    request_id = body.request_id or response.headers.get("x-tlx-request-id")
    note = f" (request id {request_id})" if request_id else ""
    details = [_describe(m.field, m.message) for m in body.validation_messages if m.message]
    status = response.status_code
    if status == 401:
        return ErrorReading(request_id=request_id, message=(
            f"Tripletex refused the session token even after renewing it{note}: check the "
            "connection's employee token and company id"))
    if status == 403:
        return ErrorReading(
            request_id=request_id, error_class=AuthError,
            text="access denied: the employee token lacks the needed permission or the company "
                 "id is wrong")
    return ErrorReading(request_id=request_id, details=details,
                        text="; ".join(details) or body.message)


def _describe(field: str | None, message: str) -> str:
    text = f"{field}: {message}" if field else message
    parts = [p for p in re.split(r"[.\[\]]", field or "") if p and not p.isdigit() and p != "id"]
    hint = FIELD_HINTS.get(parts[-1]) if parts else None
    return f"{text} ({hint})" if hint else text


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


__all__ = [
    "RateLimitStatus",
    "TripletexClient",
    "TripletexOptions",
    "dumps_json",
]
