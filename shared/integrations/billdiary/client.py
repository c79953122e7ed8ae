"""The BillDiary Integration API client: expenses as a posting target.

One ``BillDiaryClient`` per connection (one business, one integration user). It sends through
the shared HTTP base (``shared.integrations.http.VendorHttp``: timeouts, the rate limiter, the
gate, transport errors, the error taxonomy of ``shared.integrations.errors``, redaction) and
keeps what is BillDiary's own: the paths, the auth headers, how its (Laravel) error bodies read,
and the park. See ``/shared/guides/erp-integration-api.md`` and seed 004 for the API facts it
follows.

What it answers the posting protocol (``worker.posting``), truthfully and nothing more:
- ``send_voucher`` is one ``POST /expenses`` with ``ref_no`` = our reference (the export id);
  BillDiary has no idempotency key. Its 500 "Could not load expense" means the expense WAS
  stored: it is a ``TransientError`` with ``sent=True`` (ambiguous), never a refusal, so the
  engine settles it with ``find_voucher`` before anything is posted again.
- ``find_voucher`` searches ``q=<reference>`` (a substring search over references, notes, ids,
  contact and category names) and keeps only rows whose ``ref_no`` equals ours. Two or more:
  a ``PermanentError`` saying so; the engine then waits and never posts a third.
- What was stored is read back (the create's 201 body, and every lookup against the line our
  notes carry) and compared with what we meant: BillDiary parses dates and, ASSUMED, amounts
  with the business's display formats, so a wrong format option would book 1250 for 12.50. A
  mismatch is raised loudly (ambiguous: the record exists, so the export waits in doubt with the
  message and never fails) and parks this client: it posts nothing more until the connection's
  options change.
- 402 (subscription inactive) and 403 (permission missing, demo mode) park the connection:
  ``ConnectionParked``, which the retry policy treats as being told to wait. While parked this
  client refuses to send (nothing leaves) for ``park_seconds``, then lets one request look again.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from shared.config import get_settings
from shared.domain.vouchers import PostedVoucher, VoucherDraft
from shared.integrations.billdiary.mapping import (
    SYSTEM,
    ExpensePlan,
    format_amount,
    format_moment,
    intended,
    plan_expense,
)
from shared.integrations.billdiary.models import (
    BillDiaryOptions,
    Category,
    CategoryEnvelope,
    CategoryPage,
    ErrorBody,
    Expense,
    ExpenseEnvelope,
    ExpensePage,
    ExpensePayment,
    PaymentAnswer,
)
from shared.integrations.errors import AuthError, ConnectionParked, PermanentError
from shared.integrations.http import ErrorReading, VendorHttp, holding, retry_after_seconds

if TYPE_CHECKING:
    from shared.integrations.rate_limit import RateLimiter
    from shared.integrations.targets import PreparedVoucher, SendGate

logger = logging.getLogger(__name__)

API = "/v1/integration"
# UltimatePOS's upload whitelist (document_upload_mimes_types); anything else is a 422.
DOCUMENT_TYPES = frozenset({
    "application/pdf", "image/jpeg", "image/jpg", "image/png", "text/csv", "application/zip",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
})
SAVED_NOT_LOADED = "Could not load expense"  # [seed] the 500 of a create that WAS stored
# Hints appended to BillDiary's validation messages, by field: what to change on our side.
FIELD_HINTS = {
    "location_id": "check the connection's location_id option and that the integration user "
                   "is permitted there",
    "tax_id": "map the VAT code to an existing BillDiary tax rate id (account mapping "
              "vat_codes, or the default_tax_id option)",
    "expense_for": "check the connection's expense_for option (a BillDiary user id)",
    "expense_category_id": "check the account mapping's category codes",
    "expense_sub_category_id": "check the account mapping's category codes",
    "final_total": "the amount was not read as a number: check the number format options",
    "transaction_date": "check the connection's date_format and time_format options",
    "method": "use a payment method allowed at the connection's location (payment_accounts)",
    "account_id": "check the payment account ids in payment_accounts",
}


@dataclass(frozen=True)
class _Park:
    reason: str
    until: float  # on the client's clock; math.inf: until the connection's options change
    status_code: int | None


class BillDiaryClient:
    """A connection to one BillDiary business as one integration user. Thread-safe for a
    worker's thread pool: the category cache only gains entries, under a lock."""

    system = SYSTEM

    def __init__(
        self,
        base_url: str,
        *,
        options: BillDiaryOptions,
        api_key: str | None = None,
        api_secret: str | None = None,
        token: str | None = None,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``base_url``: BillDiary's API base (``https://billdiary.com/api``, or a self-hosted
        copy's); credentials: a personal access ``token``, or an ``api_key`` with its
        ``api_secret``. ``clock`` times a park (tests move it instead of sleeping)."""
        if token:
            auth_headers = {"Authorization": f"Bearer {token}"}
        elif api_key and api_secret:
            auth_headers = {"X-EPOS-API-Key": api_key, "X-EPOS-API-Secret": api_secret}
        else:
            raise AuthError("the BillDiary connection needs credentials: a token, or an api_key "
                            "with its api_secret", system=SYSTEM, code="no_credentials",
                            sent=False)
        self.options = options
        # The credentials are fixed headers: nothing of BillDiary's renews them, and nothing is
        # ever downloaded from elsewhere, so every request may carry them. Accept:
        # application/json always: without it Laravel answers a failed login or a failed
        # validation with a 302 to an HTML page instead of a 401 / 422.
        self._http = VendorHttp(
            system=SYSTEM,
            display_name="BillDiary",
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"Accept": "application/json", **auth_headers},
            read_error=self._read_error,
            secrets=lambda: (token, api_key, api_secret),
            limiter=limiter,
            on_response=self._observe_rate_limit,
        )
        self._lock = threading.Lock()
        self._categories: dict[str, tuple[int, int | None]] = {}  # code -> (category, sub)
        self._park: _Park | None = None
        self._clock = clock

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BillDiaryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never show credentials
        return f"BillDiaryClient(base_url={str(self._http.client.base_url)!r})"

    @property
    def limiter(self) -> RateLimiter | None:
        return self._http.limiter

    @property
    def search_delay_seconds(self) -> float:
        if self.options.search_delay_seconds is not None:
            return self.options.search_delay_seconds
        return get_settings().billdiary_search_delay_seconds

    # --- the posting protocol's calls ------------------------------------------------------

    def check_connection(self) -> str:
        """One read that needs the integration user's expense access: ``aic connection test``."""
        response = self._request("GET", f"{API}/expenses", params={"per_page": 1},
                                 what="the connection check")
        page = self._http.parse(ExpensePage, response, "the connection check")
        return f"BillDiary, {page.meta.total or 0} expenses visible to the integration user"

    def prepare_voucher(self, draft: VoucherDraft) -> PreparedVoucher:
        """Plan the expense and resolve its category; PermanentError (nothing sent) when it
        cannot be one BillDiary expense, ConnectionParked while the connection is parked."""
        from shared.integrations.targets import PreparedVoucher

        self._refuse_while_parked()
        plan = plan_expense(draft, self.options)
        category_id, sub_category_id = self._category(plan.category_code)
        return PreparedVoucher(draft=draft, payload=(plan, self._expense_body(
            plan, category_id, sub_category_id)))

    def send_voucher(self, prepared: PreparedVoucher, gate: SendGate | None = None
                     ) -> PostedVoucher:
        """One ``POST /expenses``, behind ``gate``; the 201 body is read back and compared."""
        plan, body = prepared.payload
        response = self._request("POST", f"{API}/expenses", content=_dumps(body).encode(),
                                 headers={"Content-Type": "application/json"},
                                 what="the expense", gate=gate)
        stored = self._http.parse(ExpenseEnvelope, response, "the created expense").data
        self._check_stored(stored, plan.ref_no, plan.final_total, plan.booked_on)
        logger.info("billdiary.expense_created",
                    extra={"ref_no": plan.ref_no, "expense_id": stored.id})
        return self._posted(stored)

    def post_voucher(self, draft: VoucherDraft, gate: SendGate | None = None) -> PostedVoucher:
        """``prepare_voucher`` then ``send_voucher``: for scripts and tests."""
        return self.send_voucher(self.prepare_voucher(draft), gate)

    def find_voucher(self, external_number: str) -> PostedVoucher | None:
        """The expense we stored under ``external_number`` (its ``ref_no``), or None.

        ``q`` is a substring search, so only exact ``ref_no`` matches count. Every page of the
        answer is read: a reference also found in other rows' notes must not hide ours.
        """
        matches: list[Expense] = []
        page = 1
        while True:
            response = self._request(
                "GET", f"{API}/expenses",
                params={"q": external_number, "per_page": 100, "page": page},
                what="the expense search")
            found = self._http.parse(ExpensePage, response, "the expense search")
            matches += [e for e in found.data if (e.ref_no or "").strip() == external_number]
            if found.meta.current_page >= found.meta.last_page or not found.data:
                break
            page += 1
        if len(matches) > 1:
            ids = sorted(e.id for e in matches)
            logger.error("billdiary.duplicate_ref_no",
                         extra={"ref_no": external_number, "expense_ids": ids})
            raise PermanentError(
                f"BillDiary holds {len(ids)} expenses with our reference {external_number} "
                f"(ids {', '.join(map(str, ids))}): delete all but one in BillDiary; nothing more "
                "is posted for this export until then",
                system=SYSTEM, code="duplicate_ref_no", details=[str(i) for i in ids])
        if not matches:
            return None
        stored = matches[0]
        meant = intended(stored.additional_notes, external_number)
        if meant is not None:
            self._check_stored(stored, external_number, meant.total, meant.booked_on)
        return self._posted(stored)

    def attach_receipt(self, voucher_id: str, filename: str, content: bytes,
                       content_type: str) -> None:
        """Upload the receipt as the expense's ``document``: a multipart POST with
        ``_method=PUT`` (PHP parses no multipart body of a real PUT). BillDiary stores nothing,
        without a word, for a file above the business's size limit: a null ``document`` in the
        answer is reported as not attached (PermanentError, the booking stands)."""
        media_type = content_type.split(";")[0].strip().lower()
        if media_type not in DOCUMENT_TYPES:
            raise PermanentError(
                f"BillDiary accepts PDF, JPEG or PNG receipts (and a few office types); "
                f"{filename!r} is {media_type}: the receipt was not attached",
                system=SYSTEM, code="unsupported_attachment_type")
        response = self._request(
            "POST", f"{API}/expenses/{_expense_id(voucher_id)}",
            data={"_method": "PUT"}, files={"document": (filename, content, media_type)},
            what="the receipt")
        stored = self._http.parse(ExpenseEnvelope, response, "the expense with its receipt").data
        if not stored.document:
            raise PermanentError(
                f"BillDiary answered the upload of {filename!r} ({len(content)} bytes) but stored "
                f"no document on expense {stored.id} (files above the business's upload size "
                "limit are skipped silently): the receipt is NOT attached, attach it by hand",
                system=SYSTEM, code="document_not_stored")

    def has_attachment(self, voucher_id: str) -> bool:
        response = self._request("GET", f"{API}/expenses/{_expense_id(voucher_id)}",
                                 what="the expense's document")
        return bool(self._http.parse(ExpenseEnvelope, response, "the expense").data.document)

    # --- payments recorded later ----------------------------------------------------------

    def find_payment(self, expense_id: str, reference: str) -> ExpensePayment | None:
        """The payment line we recorded on the expense under ``reference`` (the first word of
        its note), or None. BillDiary has no key for payments either: before a payment whose
        outcome is unknown is sent again, this is how to tell whether the first one landed."""
        response = self._request("GET", f"{API}/expenses/{_expense_id(expense_id)}",
                                 what="the expense's payments")
        expense = self._http.parse(ExpenseEnvelope, response, "the expense").data
        ours = [p for p in expense.payments if (p.note or "").split(" ", 1)[0] == reference]
        if len(ours) > 1:
            raise PermanentError(
                f"BillDiary expense {expense.id} holds {len(ours)} payments with our reference "
                f"{reference} (ids {', '.join(str(p.id) for p in ours)}): delete all but one",
                system=SYSTEM, code="duplicate_payment")
        return ours[0] if ours else None

    def record_payment(self, expense_id: str, *, reference: str, amount: Decimal,
                       paid_on: date, method: str, account_id: int | None = None,
                       gate: SendGate | None = None) -> ExpensePayment:
        """``POST /expenses/{id}/payments``: one request, behind ``gate`` when given. Like the
        create, its outcome can be unknown (a timeout, the seed's 500 "something_went_wrong"
        after the insert): the caller settles that with ``find_payment`` before sending again.
        A 422 "already fully paid" after such an attempt usually means the first one landed."""
        body: dict[str, Any] = {"amount": format_amount(amount), "method": method,
                                "paid_on": format_moment(paid_on, self.options),
                                "note": f"{reference} (recorded by AIC)"}
        if account_id is not None:
            body["account_id"] = account_id
        response = self._request(
            "POST", f"{API}/expenses/{_expense_id(expense_id)}/payments",
            content=_dumps(body).encode(), headers={"Content-Type": "application/json"},
            what="the payment", gate=gate)
        answered = self._http.parse(PaymentAnswer, response, "the recorded payment").data
        return ExpensePayment(id=answered.payment_id, amount=answered.amount,
                              method=answered.method, paid_on=answered.paid_on,
                              note=body["note"])

    # --- categories ------------------------------------------------------------------------

    def _category(self, code: str) -> tuple[int, int | None]:
        """(category id, sub-category id) of the category with exactly this ``code``; created
        as a top-level category only when the connection allows it."""
        with holding(self._lock):
            if code not in self._categories:
                found = self._find_category(code)
                if found is None and self.options.create_missing_categories:
                    found = self._create_category(code)
                if found is None:
                    raise PermanentError(
                        f"no BillDiary expense category has the code {code}: give a category "
                        f"that code in BillDiary, map the account to an existing category's code "
                        "in the account mapping, or allow create_missing_categories",
                        system=SYSTEM, code="unknown_category")
                if found.parent_id is not None:
                    self._categories[code] = (found.parent_id, found.id)
                else:
                    self._categories[code] = (found.id, None)
            return self._categories[code]

    def _find_category(self, code: str) -> Category | None:
        # ``q`` matches names and ids too (and needs two characters); ``search`` has no minimum.
        response = self._request(
            "GET", f"{API}/expense-categories",
            params={"search" if len(code) < 2 else "q": code, "per_page": 100},
            what="the category lookup")
        rows = self._http.parse(CategoryPage, response, "the category lookup").data
        exact = sorted((c for c in rows if (c.code or "").strip() == code), key=lambda c: c.id)
        if len(exact) > 1:
            logger.warning("billdiary.duplicate_category_code",
                           extra={"code": code, "category_ids": [c.id for c in exact]})
        return exact[0] if exact else None

    def _create_category(self, code: str) -> Category:
        # No idempotency key here either; a lost answer leaves a category the next lookup finds.
        response = self._request("POST", f"{API}/expense-categories",
                                 json={"name": f"Account {code}", "code": code,
                                       "parent_id": None},
                                 what="the new category")
        created = self._http.parse(CategoryEnvelope, response, "the new category").data
        logger.info("billdiary.category_created", extra={"code": code, "category_id": created.id})
        return created

    # --- body and read-back ----------------------------------------------------------------

    def _expense_body(self, plan: ExpensePlan, category_id: int,
                      sub_category_id: int | None) -> dict[str, Any]:
        options = self.options
        written = format_moment(plan.booked_on, options)
        body: dict[str, Any] = {
            "location_id": options.location_id,
            "final_total": format_amount(plan.final_total),
            "ref_no": plan.ref_no,
            "transaction_date": written,
            "additional_notes": plan.notes,
            "expense_category_id": category_id,
        }
        if sub_category_id is not None:
            body["expense_sub_category_id"] = sub_category_id
        if plan.tax_id is not None:
            body["tax_id"] = plan.tax_id
        if options.expense_for is not None:
            body["expense_for"] = options.expense_for
        if plan.is_refund:
            body["is_refund"] = True
        if plan.payments:
            # In the create call: one request, one database transaction, one lookup.
            body["payment"] = [
                {"amount": format_amount(line.amount), "method": line.account.method,
                 "paid_on": written, "note": f"{plan.ref_no} (our account {line.our_account})",
                 **({"account_id": line.account.account_id}
                    if line.account.account_id is not None else {})}
                for line in plan.payments
            ]
        return body

    def _check_stored(self, stored: Expense, ref_no: str, total: Decimal,
                      booked_on: date) -> None:
        problems = []
        if stored.final_total is None or stored.final_total.quantize(Decimal("0.01")) != total:
            problems.append(f"total {stored.final_total} instead of {total}")
        if stored.booked_on != booked_on:
            problems.append(f"date {stored.transaction_date} instead of {booked_on.isoformat()}")
        if not problems:
            return
        reason = (
            f"BillDiary stored expense {stored.id} ({ref_no}) with {' and '.join(problems)}: it "
            "reads amounts and dates with the business's formats, which the connection's "
            "date_format/time_format/thousand_separator/decimal_separator options do not match. "
            "Correct or delete that expense in BillDiary and fix the options; nothing more is "
            "posted through this connection until its options change")
        self._park = _Park(reason, math.inf, None)
        logger.error("billdiary.stored_mismatch", extra={"ref_no": ref_no,
                                                         "expense_id": stored.id})
        # Ambiguous on purpose (no status, sent): the expense exists, so the export must not fail;
        # it waits in doubt, showing this message, until the stored expense matches or is gone.
        raise PermanentError(reason, system=SYSTEM, code="stored_mismatch")

    @staticmethod
    def _posted(stored: Expense) -> PostedVoucher:
        return PostedVoucher(id=str(stored.id), number=stored.ref_no,
                             reference=f"BD-{stored.id}", booked_on=stored.booked_on)

    # --- parking ---------------------------------------------------------------------------

    def _refuse_while_parked(self) -> None:
        park = self._park
        if park is None:
            return
        left = park.until - self._clock()
        if left <= 0:
            self._park = None  # let one request look again
            return
        raise ConnectionParked(park.reason, system=SYSTEM, code="parked", sent=False,
                               retry_after=min(left, self.options.park_seconds))

    # --- HTTP ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, what: str, gate: SendGate | None = None,
                 **kwargs: Any) -> httpx.Response:
        """``VendorHttp.request`` plus what this client remembers of the answer: a 402/403
        parks it (``_read_error``), an accepted write lifts a park that waits for time."""
        try:
            response = self._http.request(method, path, what=what, gate=gate, **kwargs)
        except ConnectionParked as parked:
            if parked.status_code is not None:
                self._park = _Park(parked.message, self._clock() + self.options.park_seconds,
                                   parked.status_code)
            raise
        if method != "GET" and self._park is not None and math.isfinite(self._park.until):
            self._park = None  # the target accepts writes again
        return response

    def _observe_rate_limit(self, response: httpx.Response) -> None:
        # BillDiary sends no rate-limit headers before the 429: tell the shared limiter then.
        if self.limiter is not None and response.status_code == 429:
            self.limiter.observe(remaining=0, reset_seconds=retry_after_seconds(
                response.headers.get("Retry-After")))

    def _read_error(self, response: httpx.Response) -> ErrorReading:
        """BillDiary's (Laravel's) error body in plain words, with what to change on our side."""
        status = response.status_code
        body = _error_body(response)
        message = (body.message or "").strip()
        where = f"{response.request.method} {response.request.url.path}"
        if status >= 500 and message == SAVED_NOT_LOADED:
            return ErrorReading(code="saved_not_loaded", message=(
                f"BillDiary stored what we sent with {where} but could not load it back (HTTP "
                f"500 '{SAVED_NOT_LOADED}'); it is looked up by our reference, never re-sent "
                "blindly"))
        if status >= 500 or status in (408, 429):
            return ErrorReading(text=message or None)
        if 300 <= status < 400:
            # Only a web page redirects (we always ask for JSON): the base URL is not the API.
            return ErrorReading(code="redirected", message=(
                f"BillDiary redirected {where} to "
                f"{response.headers.get('location', 'elsewhere')}: check that the connection's "
                "base URL is the API base (…/api)"))
        if status == 401:
            return ErrorReading(code="unauthorized", message=(
                "BillDiary did not accept the connection's credentials (HTTP 401): check the API "
                "key and secret, or the token, and that they were not rotated"))
        if status in (402, 403):
            return ErrorReading(code=f"parked_{status}", parked_for=self.options.park_seconds,
                                message=_park_reason(status, message or f"HTTP {status}", where))
        if status == 404:
            return ErrorReading(message=(
                f"BillDiary found nothing at {where} (or the integration user may not see it)"))
        details = _field_messages(body)
        text = "; ".join(details) or message or f"HTTP {status}"
        if message and not body.errors and "location" in message.lower():
            text += f" ({FIELD_HINTS['location_id']})"
        code = "validation_failed" if status == 422 else f"http_{status}"
        if "already fully paid" in message.lower():
            code = "already_paid"  # after an attempt whose answer was lost: it likely landed
        return ErrorReading(code=code, text=text, details=details)


# --- helpers -----------------------------------------------------------------------------------


def _expense_id(voucher_id: str) -> int:
    try:
        return int(voucher_id)
    except ValueError:
        raise PermanentError(f"{voucher_id!r} is not a BillDiary expense id", system=SYSTEM,
                             code="bad_expense_id") from None


def _error_body(response: httpx.Response) -> ErrorBody:
    try:
        return ErrorBody.model_validate(json.loads(response.content))
    except (ValueError, ValidationError):
        return ErrorBody()  # an HTML page from a proxy, say


def _field_messages(body: ErrorBody) -> list[str]:
    """Laravel's ``errors`` as plain sentences: its messages already name the field ("The final
    total field must be a number."); ours add what to change."""
    out = []
    for field, messages in body.errors.items():
        hint = FIELD_HINTS.get(field.split(".")[-1])
        for text in messages if isinstance(messages, list) else [messages]:
            out.append(f"{text} ({hint})" if hint else str(text))
    return out


def _park_reason(status: int, message: str, where: str) -> str:
    """What a 402 or 403 means for the connection, and who must do what."""
    if status == 402:
        return (f"BillDiary refused {where}: the business's subscription is inactive (HTTP 402: "
                f"{message}). Exports to it wait and resume by themselves once the subscription "
                "is renewed")
    if "demo" in message.lower():
        return (f"BillDiary refused {where}: the business is a demo environment, which refuses "
                f"every write (HTTP 403: {message}). Point the connection at a real business; "
                "exports wait until then")
    return (f"BillDiary refused {where}: the integration user lacks a permission (HTTP 403: "
            f"{message}). Grant it all_expense.access, expense.add and expense.edit in "
            "BillDiary; exports wait and resume by themselves")


def _dumps(value: Any) -> str:
    """JSON with ``Decimal`` as a plain number, never via ``float``."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        raise TypeError("float in a BillDiary request body: use Decimal for money")
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


__all__ = ["BillDiaryClient"]
