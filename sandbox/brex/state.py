"""The Brex sandbox's in-memory world: accounts, user tokens, expenses (with SPLIT parents and
their itemized children), receipts, memo writes and their idempotency keys, and fault knobs.

One lock guards everything; handlers never await while holding it. Legend as in
shared/guides/brex-expenses.md: [spec] Brex's OpenAPI file, [doc] developer.brex.com,
[assumed] our contract.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import itertools
import json
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sandbox.brex.generator import (
    Directory,
    convert,
    merchant_by_descriptor,
    merchant_id,
    money,
    new_id,
)
from sandbox.knobs import CommonFaults, RateLimit, RequestCounter

SCOPE_READ = "expenses.card.readonly"
SCOPE_WRITE = "expenses.card"
MAX_LIMIT = 100  # [doc: changelog Feb 2026; patched spec] was 1000
DEFAULT_LIMIT = 100  # [doc: pagination]
BREX_RATE_LIMIT = 1000  # [doc: rate_limits] requests per 60 s per client and account


class ApiError(Exception):
    """An answer in Brex's error shape ``{"type", "message"}`` [doc: error_codes]."""

    def __init__(self, status: int, type_: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", message)


def now_ms() -> datetime:
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def iso_ms(moment: datetime | None) -> str | None:
    """``2026-03-18T10:15:22.123Z``: RFC 3339, UTC, milliseconds [assumed precision]."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- records ---------------------------------------------------------------------------------


@dataclass
class Token:
    value: str
    account_id: str
    scopes: frozenset[str]
    state: Literal["active", "revoked", "expired"] = "active"


@dataclass
class Receipt:
    id: str
    filename: str
    content: bytes | None = None  # None: rendered on download
    content_type: str = "application/pdf"


@dataclass
class ExpenseRec:
    id: str
    seq: int
    expense_type: str
    status: str
    payment_status: str
    memo: str | None
    category: str | None
    merchant: dict[str, str] | None
    merchant_id: str | None
    address: dict[str, Any] | None
    user_id: str
    department_id: str | None
    location_id: str | None
    budget_id: str | None
    original_amount: dict[str, Any]
    billing_amount: dict[str, Any]
    budget_amount: dict[str, Any]
    purchased_amount: dict[str, Any]
    usd_equivalent_amount: dict[str, Any]
    purchased_at: datetime
    submitted_at: datetime | None
    approved_at: datetime | None
    payment_posted_at: datetime | None
    updated_at: datetime
    spending_entity_id: str
    receipts: list[Receipt] = field(default_factory=list)
    custom_fields: list[dict[str, Any]] = field(default_factory=list)
    card_id: str | None = None
    payment_id: str | None = None
    parent_id: str | None = None  # itemized child of a SPLIT parent; not on the wire [spec]
    # What the list shows while ``list_lag_ms`` hides the newest version (None: not listed yet).
    lag_view: ExpenseRec | None = None
    lag_until: float = 0.0

    def listed(self, now: float) -> ExpenseRec | None:
        return self.lag_view if now < self.lag_until else self


@dataclass
class Upload:
    id: str
    account_id: str
    expense_id: str | None  # None: receipt_match (Brex matches it later) [spec]
    receipt_name: str
    uploaded: bool = False


@dataclass
class StoredAnswer:
    fingerprint: str
    status: int
    body: dict[str, Any]
    stored_at: float


@dataclass
class BrexFaults(CommonFaults):
    cursor_loop: Literal["restart", "repeat"] | None = None
    expired_links: bool = False
    list_lag_ms: int = 0
    put_fail_after_apply: int = 0
    put_fail_status: int = 502

    def view(self) -> dict[str, Any]:
        return {**self.common_view(), "cursor_loop": self.cursor_loop,
                "expired_links": self.expired_links, "list_lag_ms": self.list_lag_ms,
                "put_fail_after_apply": self.put_fail_after_apply,
                "put_fail_status": self.put_fail_status}


def default_faults() -> BrexFaults:
    """No fault, but Brex's own rate limit (1,000 per minute, 429 without Retry-After [doc])."""
    return BrexFaults(rate_limit=RateLimit(BREX_RATE_LIMIT, 60.0, retry_after=False))


@dataclass
class Account:
    id: str
    name: str
    billing_currency: str
    receipt_link_ttl_seconds: int
    idempotency_ttl_seconds: int
    directory: Directory
    expenses: dict[str, ExpenseRec] = field(default_factory=dict)
    faults: BrexFaults = field(default_factory=default_faults)
    requests: RequestCounter = field(default_factory=RequestCounter)
    ignored_params: Counter = field(default_factory=Counter)
    memo_writes: list[dict[str, Any]] = field(default_factory=list)
    list_calls: list[dict[str, Any]] = field(default_factory=list)  # every list page served
    receipt_events: list[dict[str, Any]] = field(default_factory=list)
    idempotency: dict[str, StoredAnswer] = field(default_factory=dict)
    last_stamp: datetime = field(default_factory=lambda: datetime.fromtimestamp(0, UTC))

    def stamp(self) -> datetime:
        """A new ``updated_at``: now, but strictly after the account's previous one."""
        moment = max(now_ms(), self.last_stamp + timedelta(milliseconds=1))
        self.last_stamp = moment
        return moment

    def view(self) -> dict[str, Any]:
        return {
            "account_id": self.id,
            "name": self.name,
            "billing_currency": self.billing_currency,
            "receipt_link_ttl_seconds": self.receipt_link_ttl_seconds,
            "idempotency_ttl_seconds": self.idempotency_ttl_seconds,
            "expenses": len(self.expenses),
            "users": self.directory.users,
            "faults": self.faults.view(),
            "requests": self.requests.view(),
            "ignored_params": dict(self.ignored_params),
        }


# --- list queries and cursors ----------------------------------------------------------------


@dataclass
class ListQuery:
    """The filters of ``GET /v1/expenses`` [spec]; every bound is inclusive [spec]."""

    statuses: frozenset[str] = frozenset()
    payment_statuses: frozenset[str] = frozenset()
    expense_types: frozenset[str] = frozenset()
    user_ids: frozenset[str] = frozenset()
    budget_ids: frozenset[str] = frozenset()
    spending_entity_ids: frozenset[str] = frozenset()
    parent_ids: frozenset[str] = frozenset()
    purchased_start: datetime | None = None
    purchased_end: datetime | None = None
    updated_start: datetime | None = None
    updated_end: datetime | None = None

    def matches(self, e: ExpenseRec) -> bool:
        checks = [
            (self.statuses, e.status), (self.payment_statuses, e.payment_status),
            (self.expense_types, e.expense_type), (self.user_ids, e.user_id),
            (self.budget_ids, e.budget_id), (self.spending_entity_ids, e.spending_entity_id),
            (self.parent_ids, e.parent_id),
        ]
        if any(wanted and value not in wanted for wanted, value in checks):
            return False
        return (_within(e.purchased_at, self.purchased_start, self.purchased_end)
                and _within(e.updated_at, self.updated_start, self.updated_end))

    def fingerprint(self, account_id: str) -> str:
        parts = [account_id] + [
            ",".join(sorted(v)) if isinstance(v, frozenset) else (iso_ms(v) or "")
            for v in vars(self).values()
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _within(value: datetime | None, start: datetime | None, end: datetime | None) -> bool:
    if start is None and end is None:
        return True
    if value is None:
        return False
    return (start is None or value >= start) and (end is None or value <= end)


def encode_cursor(after_seq: int, fingerprint: str) -> str:
    raw = json.dumps({"a": after_seq, "f": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, fingerprint: str) -> int:
    """The position a cursor stands for. [assumed] A cursor from a walk with other filters (or
    another account) is refused: keep every filter identical on every page of one walk."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after, mark = int(data["a"]), str(data["f"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise bad_request("Invalid cursor") from exc
    if mark != fingerprint:
        raise bad_request("The cursor does not belong to this query: keep the filters of a "
                          "paginated request identical on every page")
    return after


# --- the state -------------------------------------------------------------------------------


class BrexState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accounts: dict[str, Account] = {}
        self.tokens: dict[str, Token] = {}
        self.receipts: dict[str, tuple[str, str]] = {}  # receipt id -> (account, expense)
        self.uploads: dict[str, Upload] = {}
        self._seq = itertools.count(1)

    # --- accounts and tokens -----------------------------------------------------------------

    def create_account(self, name: str, billing_currency: str, link_ttl: int,
                       idempotency_ttl: int, scopes: list[str]) -> tuple[Account, Token]:
        account = Account(id=new_id("account"), name=name, billing_currency=billing_currency,
                          receipt_link_ttl_seconds=link_ttl,
                          idempotency_ttl_seconds=idempotency_ttl,
                          directory=Directory.create())
        with self.lock:
            self.accounts[account.id] = account
        return account, self.add_token(account, scopes)

    def account(self, account_id: str) -> Account:
        account = self.accounts.get(account_id)
        if account is None:
            raise KeyError(account_id)
        return account

    def add_token(self, account: Account, scopes: list[str]) -> Token:
        token = Token(f"bxt_{secrets.token_urlsafe(36)}", account.id, frozenset(scopes))
        with self.lock:
            self.tokens[token.value] = token
        return token

    def set_token_state(self, account: Account, value: str, state: str) -> Token:
        with self.lock:
            token = self.tokens.get(value)
            if token is None or token.account_id != account.id:
                raise KeyError("no such token for this account")
            token.state = state  # type: ignore[assignment]
            return token

    def authenticate(self, header: str) -> tuple[Account, Token]:
        """``Authorization: Bearer <user token>`` [doc: authentication]. Unknown or revoked:
        401; expired: 403 [doc: error_codes, "403 forbidden or expired token"]."""
        scheme, _, value = header.partition(" ")
        token = self.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if token is None or token.state == "revoked":
            raise ApiError(401, "UNAUTHORIZED", "The access token is missing, invalid or revoked")
        if token.state == "expired":
            raise ApiError(403, "FORBIDDEN", "The access token has expired")
        return self.accounts[token.account_id], token

    # --- expenses ----------------------------------------------------------------------------

    def _touch(self, account: Account, expense: ExpenseRec, *, new: bool = False) -> None:
        """Before a change: with ``list_lag_ms`` the list keeps showing the previous version
        (or nothing, for a new expense) for that long; GET by id shows the change at once."""
        lag = account.faults.list_lag_ms
        if not lag:
            return
        now = time.monotonic()
        if now >= expense.lag_until:  # not inside an earlier lag: freeze what is listed now
            expense.lag_view = None if new else _snapshot(expense)
        expense.lag_until = now + lag / 1000

    def add_expenses(self, account: Account, specs: list[dict[str, Any]]) -> list[ExpenseRec]:
        with self.lock:
            made = [self._build(account, spec) for spec in specs]
            for expense in made:
                account.expenses[expense.id] = expense
                for receipt in expense.receipts:
                    self.receipts[receipt.id] = (account.id, expense.id)
                self._touch(account, expense, new=True)
        return made

    def _build(self, account: Account, spec: dict[str, Any]) -> ExpenseRec:
        directory = account.directory
        merchant = merchant_by_descriptor(spec["merchant"])
        currency = spec.get("currency") or merchant.currency
        original = int(spec["original_amount"])
        billing = spec.get("billing_amount")
        if billing is None:
            billing = convert(original, currency, account.billing_currency)
        user = directory.find("users", spec.get("user_id")) or directory.users[0]
        updated = account.stamp()
        purchased = spec.get("purchased_at") or updated - timedelta(
            hours=spec.get("hours_ago", 30))
        status = spec["status"]
        card = spec.get("expense_type", "CARD") == "CARD"
        approved = status in ("APPROVED", "SETTLED", "SPLIT", "OUT_OF_POLICY")
        expense_id = new_id("expense")
        return ExpenseRec(
            id=expense_id,
            seq=next(self._seq),
            expense_type=spec.get("expense_type", "CARD"),
            status=status,
            payment_status=spec["payment_status"],
            memo=spec.get("memo"),
            category=spec.get("category") or merchant.category,
            merchant=merchant.wire(),
            merchant_id=merchant_id(merchant),
            address={"country": merchant.country2, "city": merchant.city, "state": None,
                     "postal_code": None, "line1": None, "line2": None, "timezone": None,
                     "coordinates": None},
            user_id=user["id"],
            department_id=user["department_id"],
            location_id=user["location_id"],
            budget_id=spec.get("budget_id") or directory.budgets[0]["id"],
            original_amount=money(original, currency),
            billing_amount=money(billing, account.billing_currency),
            budget_amount=money(billing, account.billing_currency),
            purchased_amount=money(original, currency),
            usd_equivalent_amount=money(convert(original, currency, "USD"), "USD"),
            purchased_at=purchased,
            submitted_at=purchased + timedelta(hours=1) if status != "DRAFT" else None,
            approved_at=purchased + timedelta(hours=2) if approved else None,
            payment_posted_at=purchased + timedelta(days=1)
            if spec["payment_status"] == "CLEARED" else None,
            updated_at=updated,
            spending_entity_id=directory.spending_entity_id,
            receipts=[Receipt(new_id("receipt"), f"receipt-{expense_id[-6:]}-{n + 1}.pdf")
                      for n in range(int(spec.get("receipts", 0)))],
            custom_fields=list(spec.get("custom_fields") or []),
            card_id=new_id("card") if card else None,
            payment_id=new_id("payment") if card else None,
            parent_id=spec.get("parent_id"),
        )

    def expense(self, account: Account, expense_id: str) -> ExpenseRec:
        expense = account.expenses.get(expense_id)
        if expense is None:
            raise ApiError(404, "NOT_FOUND", f"Expense {expense_id} not found")
        return expense

    def change_expense(self, account: Account, expense_id: str,
                       changes: dict[str, Any]) -> ExpenseRec:
        """A change in Brex after the fact (status, amounts, memo...): ``updated_at`` moves."""
        with self.lock:
            expense = self.expense(account, expense_id)
            self._touch(account, expense)
            if "original_amount" in changes:
                amount = int(changes.pop("original_amount"))
                currency = expense.original_amount["currency"]
                expense.original_amount = money(amount, currency)
                expense.purchased_amount = money(amount, currency)
                expense.usd_equivalent_amount = money(convert(amount, currency, "USD"), "USD")
                if "billing_amount" not in changes:
                    changes["billing_amount"] = convert(amount, currency, account.billing_currency)
            if "billing_amount" in changes:
                billing = int(changes.pop("billing_amount"))
                expense.billing_amount = money(billing, account.billing_currency)
                expense.budget_amount = money(billing, account.billing_currency)
            for name, value in changes.items():
                setattr(expense, name, value)
            expense.updated_at = account.stamp()
            return expense

    def refund(self, account: Account, expense_id: str,
               amount: int | None) -> tuple[ExpenseRec, ExpenseRec | None]:
        """[assumed] A full refund sets the expense's ``payment_status`` to REFUNDED; a partial
        one (``amount`` in billing minor units) arrives as a separate negative expense."""
        if amount is None:
            return self.change_expense(account, expense_id, {"payment_status": "REFUNDED"}), None
        with self.lock:
            original = self.expense(account, expense_id)
            currency = original.original_amount["currency"]
            back = convert(amount, account.billing_currency, currency)
            spec = {"merchant": _descriptor(original), "original_amount": -back,
                    "billing_amount": -amount, "currency": currency, "status": original.status,
                    "payment_status": "REFUNDED", "expense_type": original.expense_type,
                    "memo": f"Refund: {original.memo or original.id}",
                    "user_id": original.user_id, "budget_id": original.budget_id,
                    "purchased_at": now_ms(), "category": original.category}
            credit = self._build(account, spec)
            account.expenses[credit.id] = credit
            self._touch(account, credit, new=True)
        return original, credit

    def split(self, account: Account, expense_id: str, parts: list[int]) -> list[ExpenseRec]:
        """Itemize an expense: it becomes a SPLIT parent; the children (found with
        ``parent_expense_id[]`` [spec]) carry the parts, in the parent's status, billing split
        proportionally with the rounding on the last child. [assumed] The receipts stay on the
        parent."""
        with self.lock:
            parent = self.expense(account, expense_id)
            total = parent.original_amount["amount"]
            if parent.status == "SPLIT" or parent.parent_id:
                raise ValueError("the expense is already split or is itself an itemized child")
            if len(parts) < 2 or sum(parts) != total:
                raise ValueError(f"give at least two parts that sum to {total}")
            billing_total = parent.billing_amount["amount"]
            billings = [billing_total * part // total for part in parts[:-1]]
            billings.append(billing_total - sum(billings))
            children = []
            for part, billing in zip(parts, billings, strict=True):
                spec = {"merchant": _descriptor(parent), "original_amount": part,
                        "billing_amount": billing,
                        "currency": parent.original_amount["currency"],
                        "status": parent.status, "payment_status": parent.payment_status,
                        "expense_type": parent.expense_type, "memo": parent.memo,
                        "user_id": parent.user_id, "budget_id": parent.budget_id,
                        "purchased_at": parent.purchased_at, "category": parent.category,
                        "parent_id": parent.id}
                child = self._build(account, spec)
                account.expenses[child.id] = child
                self._touch(account, child, new=True)
                children.append(child)
            self._touch(account, parent)
            parent.status = "SPLIT"
            parent.updated_at = account.stamp()
        return children

    # --- the list ----------------------------------------------------------------------------

    def list_page(self, account: Account, query: ListQuery, after: int,
                  limit: int) -> tuple[list[ExpenseRec], int | None]:
        """One page in creation order [assumed]: the expenses after position ``after`` that the
        list shows now and that match; the position of the next page, or None at the end."""
        now = time.monotonic()
        with self.lock:
            matching = []
            for expense in account.expenses.values():
                if expense.seq <= after:
                    continue
                shown = expense.listed(now)
                if shown is not None and query.matches(shown):
                    matching.append(shown)
                    if len(matching) > limit:
                        break
        page = matching[:limit]
        return page, (page[-1].seq if len(matching) > limit else None)

    # --- memo writes -------------------------------------------------------------------------

    def update_memo(self, account: Account, expense_id: str, memo: str | None,
                    key: str | None, fingerprint: str,
                    answer: Any) -> tuple[int, dict[str, Any], bool]:
        """Apply a memo write, or replay the stored answer of an earlier write with the same
        ``Idempotency-Key`` [doc: idempotency: "identify the second request as a duplicate and
        ignore it"]. [assumed] The replay is the first answer even when the body differs (the
        second memo is silently not applied); keys live ``idempotency_ttl_seconds``; only
        answered writes are stored (a refused one can be retried with the same key).
        ``answer(expense)`` builds the 200 body. Returns (status, body, replayed)."""
        now = time.monotonic()
        with self.lock:
            record: dict[str, Any] = {"at": iso_ms(now_ms()), "expense_id": expense_id,
                                      "memo": memo, "idempotency_key": key}
            stored = self.stored_answer(account, key)
            if stored is not None:
                record.update(replayed=True, applied=False,
                              body_differs=stored.fingerprint != fingerprint,
                              status=stored.status)
                account.memo_writes.append(record)
                return stored.status, stored.body, True
            try:
                expense = self.expense(account, expense_id)
            except ApiError as exc:
                record.update(replayed=False, applied=False, status=exc.status)
                account.memo_writes.append(record)
                raise
            self._touch(account, expense)
            # [assumed] every answered write moves updated_at, an unchanged memo too.
            expense.memo = memo
            expense.updated_at = account.stamp()
            body = answer(expense)
            if key:
                account.idempotency[key] = StoredAnswer(fingerprint, 200, body, now)
            record.update(replayed=False, applied=True, body_differs=False, status=200)
            account.memo_writes.append(record)
            return 200, body, False

    @staticmethod
    def stored_answer(account: Account, key: str | None) -> StoredAnswer | None:
        """The answer stored for an ``Idempotency-Key`` still alive (the caller holds the lock)."""
        stored = account.idempotency.get(key) if key else None
        if stored is None or time.monotonic() - stored.stored_at > account.idempotency_ttl_seconds:
            return None
        return stored

    def take_put_failure(self, account: Account) -> int | None:
        with self.lock:
            faults = account.faults
            if faults.put_fail_after_apply <= 0:
                return None
            faults.put_fail_after_apply -= 1
            account.memo_writes[-1]["answered_status"] = faults.put_fail_status
            return faults.put_fail_status

    # --- receipts ----------------------------------------------------------------------------

    def receipt(self, receipt_id: str) -> tuple[Account, ExpenseRec, Receipt] | None:
        owner = self.receipts.get(receipt_id)
        if owner is None:
            return None
        account = self.accounts[owner[0]]
        expense = account.expenses[owner[1]]
        found = next((r for r in expense.receipts if r.id == receipt_id), None)
        return (account, expense, found) if found else None

    def create_upload(self, account: Account, expense_id: str | None, name: str) -> Upload:
        upload = Upload(new_id("receipt_upload"), account.id, expense_id, name)
        with self.lock:
            self.uploads[upload.id] = upload
            account.receipt_events.append({"at": iso_ms(now_ms()), "event": "upload_created",
                                           "upload_id": upload.id, "expense_id": expense_id,
                                           "receipt_name": name})
        return upload

    def complete_upload(self, upload: Upload, content: bytes, content_type: str) -> None:
        """The PUT to the pre-signed link: the receipt joins its expense (``updated_at`` moves
        [assumed]); a matched-later upload is only recorded."""
        with self.lock:
            account = self.accounts[upload.account_id]
            if upload.expense_id is not None:
                expense = account.expenses[upload.expense_id]
                existing = next((r for r in expense.receipts if r.id == upload.id), None)
                self._touch(account, expense)
                if existing is None:
                    expense.receipts.append(
                        Receipt(upload.id, upload.receipt_name, content, content_type))
                    self.receipts[upload.id] = (account.id, expense.id)
                else:  # S3 overwrites an object PUT twice
                    existing.content, existing.content_type = content, content_type
                expense.updated_at = account.stamp()
            upload.uploaded = True
            account.receipt_events.append({"at": iso_ms(now_ms()), "event": "uploaded",
                                           "upload_id": upload.id, "bytes": len(content)})


def _snapshot(expense: ExpenseRec) -> ExpenseRec:
    snap = copy.copy(expense)
    snap.receipts = list(expense.receipts)
    snap.lag_view, snap.lag_until = None, 0.0
    return snap


def _descriptor(expense: ExpenseRec) -> str:
    assert expense.merchant is not None
    return expense.merchant["raw_descriptor"]
