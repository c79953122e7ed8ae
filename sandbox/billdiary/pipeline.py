"""BillDiary's rules for the writes we use: create/update an expense, record a payment, the
category writes and the CSV import. Each function checks, parses and stores under the state's
lock, or raises ``JsonError`` / ``ValidationFailed`` with nothing stored.

Order of the checks for an expense write [assumed where the seed lists without ordering]:
permission (403) -> subscription (402) -> demo mode (403) -> visibility (404) -> validation
(422, Laravel's shape) -> permitted location (422 ``{message}``) -> the create pipeline's own
errors (422 ``{message}``: a date that does not match the business's format, a document type
outside the whitelist) -> store.

Sources: [seed] the vendor's reference text; [upos] UltimatePOS's public code the vendor derives
from; [assumed] our contract where neither says. See the project's erp-integration-api.md guide.
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sandbox.billdiary.php import (
    DateFormatError,
    ValidationFailed,
    Validator,
    as_indexed,
    create_from_format,
    num_uf,
    php_empty,
    php_float,
    php_string,
    store_decimal,
    truthy,
    uf_date,
)
from sandbox.billdiary.state import (
    DOCUMENT_MIME_TYPES,
    PAYMENT_METHOD_LABELS,
    Business,
    Category,
    Document,
    Expense,
    ImportRecord,
    Payment,
    SandboxState,
    User,
)

DEMO_MESSAGE = "Feature disabled in demo!!"  # [upos] lang_v1.disabled_in_demo
SUBSCRIPTION_MESSAGE = "Your subscription has expired. Please renew your subscription."  # [assumed]
UNAUTHORIZED_EXPENSE = "Unauthorized action."  # [upos] abort(403, 'Unauthorized action.')
UNAUTHORIZED_CATEGORY = "Unauthorized"  # [seed]
LOCATION_NOT_PERMITTED = "The selected location is not permitted for this user."  # [assumed]
INVALID_DOCUMENT = "Invalid document file"  # [upos] uploadFile's exception
NOT_FOUND = "Not found"  # [seed]
RECUR_TYPES = ("days", "months", "years")
PAYMENT_DETAIL_FIELDS = (
    "card_number", "card_holder_name", "card_transaction_number", "card_type", "card_month",
    "card_year", "card_security", "cheque_number", "bank_account_number", "transaction_no_1",
    "transaction_no_2", "transaction_no_3",
)
# The expense-import template's columns, read by position: the header row is skipped. [upos]
IMPORT_COLUMNS = (
    "LOCATION", "CATEGORY", "SUB-CATEGORY", "REFERENCE NO", "EXPENSE DATE", "EXPENSE FOR",
    "EXPENSE FOR CONTACT ID", "ATTACH DOCUMENT", "APPLICABLE TAX", "EXPENSE NOTE", "TOTAL AMOUNT",
    "PAID AMOUNT", "PAID ON DATE", "PAYMENT METHOD", "PAYMENT ACCOUND", "PAYMENT NOTE",
)


class JsonError(Exception):
    """An answer the controller writes itself: always JSON, ``{"message": ...}`` plus extras."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.payload = {"message": message, **extra}


@dataclass
class Upload:
    """A multipart file as PHP's UploadedFile sees it: the client's name and MIME type."""

    filename: str
    content_type: str
    content: bytes


# --- helpers -----------------------------------------------------------------------------------


def local_now(business: Business) -> datetime:
    """Wall time in the business's timezone, as UltimatePOS stores transaction dates."""
    return datetime.now(ZoneInfo(business.settings.timezone)).replace(tzinfo=None, microsecond=0)


def _write_gates(business: Business, user: User, allowed: bool, *, subscription: bool,
                 message: str = UNAUTHORIZED_EXPENSE) -> None:
    if not allowed:
        raise JsonError(403, message)
    if subscription and not business.settings.subscription_active:
        raise JsonError(402, SUBSCRIPTION_MESSAGE)
    if business.settings.demo_mode:
        raise JsonError(403, DEMO_MESSAGE)


def can_list_expenses(user: User) -> bool:
    return user.can("all_expense.access") or user.can("view_own_expense")


def can_use_categories(user: User) -> bool:
    return user.can("expense.add") or user.can("expense.edit")


def parse_amount(business: Business, raw: Any) -> Decimal:
    settings = business.settings
    if settings.amounts_use_business_format:
        return num_uf(raw, settings.thousand_separator, settings.decimal_separator)
    return store_decimal(php_float(php_string(raw)))


def parse_moment(business: Business, raw: Any, now: datetime) -> datetime:
    """``uf_date($value, true)``, or now when empty; a mismatch is the pipeline's 422."""
    if raw is None:
        return now
    settings = business.settings
    try:
        return uf_date(php_string(raw), settings.date_format, settings.time_format, now)
    except DateFormatError as exc:
        raise JsonError(422, str(exc)) from exc


def _sent_text(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, Decimal):
        return format(raw, "f")
    return raw if isinstance(raw, str) else php_string(raw)


def _tax_split(business: Business, final_total: Decimal,
               tax_id: int | None) -> tuple[Decimal, Decimal]:
    """``calc_percentage_base``: before = total * 100 / (100 + rate), tax = total - before,
    each stored to 4 places. [seed: import back-calculates; upos]"""
    rate = business.tax_rates.get(tax_id) if tax_id is not None else None
    if rate is None:
        return final_total, Decimal("0.0000")
    before = final_total * 100 / (100 + rate.amount)
    return store_decimal(before), store_decimal(final_total - before)


def _check_document(upload: Upload | None) -> None:
    if upload is None:
        return
    if upload.content_type.split(";")[0].strip().lower() not in DOCUMENT_MIME_TYPES:
        raise JsonError(422, INVALID_DOCUMENT)


def _store_document(state: SandboxState, business: Business, upload: Upload) -> Document:
    """UltimatePOS's uploadFile: a file above the size limit is skipped without a word; the
    ``drop_documents`` knob does the same to any file."""
    digest = hashlib.sha256(upload.content).hexdigest()
    content_type = upload.content_type.split(";")[0].strip().lower()
    if len(upload.content) > business.settings.document_size_limit:
        return Document(upload.filename, None, content_type, len(upload.content), digest,
                        "skipped_too_large")
    if state.take(business, "drop_documents"):
        return Document(upload.filename, None, content_type, len(upload.content), digest,
                        "dropped_by_knob")
    stored = f"{int(time.time())}_{upload.filename}"
    return Document(upload.filename, stored, content_type, len(upload.content), digest, "stored")


# --- expenses ----------------------------------------------------------------------------------


def _validate_expense(v: Validator, business: Business, *, creating: bool,
                      current: Expense | None = None) -> dict[str, Any]:
    """Create rules, or (``creating=False``) the same rules with every field optional."""
    out: dict[str, Any] = {}
    if creating or v.has("location_id"):
        out["location_id"] = v.exists(
            "location_id", v.integer("location_id", required=True), business.locations
        )
    if creating or v.has("final_total"):
        out["final_total"] = v.numeric("final_total", required=True)
    v.string("ref_no", max_len=191)
    v.string("transaction_date")
    v.exists("expense_for", v.integer("expense_for"), business.users)
    v.string("additional_notes")
    top_level = {c.id for c in business.live_categories() if c.parent_id is None}
    category_id = v.exists("expense_category_id", v.integer("expense_category_id"), top_level)
    sub_id = v.integer("expense_sub_category_id")
    if sub_id is not None:
        parent_id = category_id
        if not v.has("expense_category_id") and current is not None:
            parent_id = current.category_id
        sub = business.categories.get(sub_id)
        if parent_id is None and not v.failed("expense_category_id"):
            v.fail(
                "expense_category_id",
                "The expense category id field is required when expense sub category id is "
                "present.",
            )
        elif sub is None or sub.deleted_at is not None or sub.parent_id is None or (
            parent_id is not None and sub.parent_id != parent_id
        ):
            v.fail("expense_sub_category_id", "The selected expense sub category id is invalid.")
    v.exists("contact_id", v.integer("contact_id"), business.contacts)
    v.exists("tax_id", v.integer("tax_id"), business.tax_rates)
    v.boolean("is_refund")
    v.boolean("is_recurring")
    v.integer("recur_interval")
    v.one_of("recur_interval_type", RECUR_TYPES)
    v.integer("recur_repetitions")
    v.integer("subscription_repeat_on")
    if v.get("payment") is not None:
        lines = as_indexed(v.get("payment"))
        if lines is None:
            v.fail("payment", "The payment field must be an array.")
        else:
            for key in lines:
                base = f"payment.{key}"
                v.numeric(f"{base}.amount", required=True)
                v.string(f"{base}.method", required=True)
                v.string(f"{base}.paid_on")
                v.string(f"{base}.note")
                v.boolean(f"{base}.is_return")
                v.exists(f"{base}.account_id", v.integer(f"{base}.account_id"), business.accounts)
    v.check()
    return out


def _permitted(user: User, location_id: int | None) -> None:
    if location_id is not None and not user.may_use_location(location_id):
        raise JsonError(422, LOCATION_NOT_PERMITTED)


def _parse_payment_lines(business: Business, raw_lines: Any, now: datetime) -> list[dict[str, Any]]:
    lines = as_indexed(raw_lines) or {}
    parsed = []
    for key in sorted(lines, key=lambda k: int(k) if str(k).isdigit() else 0):
        line = lines[key] if isinstance(lines[key], dict) else {}
        amount = parse_amount(business, line.get("amount"))
        if amount == 0:  # [upos] createOrUpdatePaymentLines skips zero lines
            continue
        parsed.append(
            {
                "amount": amount,
                "method": line.get("method"),
                "paid_on": parse_moment(business, line.get("paid_on"), now),
                "note": line.get("note"),
                "is_return": truthy(line.get("is_return")),
                "account_id": int(line["account_id"]) if line.get("account_id") is not None
                and line.get("method") != "advance" else None,
                "sent": {"amount": _sent_text(line.get("amount")),
                         "paid_on": _sent_text(line.get("paid_on"))},
            }
        )
    return parsed


def _new_payment(state: SandboxState, business: Business, user: User, line: dict[str, Any],
                 details: dict[str, Any] | None = None) -> Payment:
    return Payment(
        id=state.next_id("payment"),
        amount=line["amount"],
        method=line["method"],
        paid_on=line["paid_on"],
        payment_ref_no=business.next_ref("expense_payment", line["paid_on"].year),
        note=line.get("note"),
        is_return=line.get("is_return", False),
        account_id=line.get("account_id"),
        created_by=user.id,
        details=details or {},
        sent=line.get("sent", {}),
    )


def _opt_int(value: Any) -> int | None:
    return int(php_float(php_string(value))) if value is not None else None


def _recurrence(data: dict[str, Any]) -> dict[str, Any]:
    """``is_recurring`` truthy: its fields (interval defaults to 1); otherwise all cleared,
    whatever the expense had before [seed: the update caveat]."""
    if not truthy(data.get("is_recurring")):
        return {"is_recurring": False, "recur_interval": None, "recur_interval_type": None,
                "recur_repetitions": None, "subscription_repeat_on": None}
    return {
        "is_recurring": True,
        "recur_interval": _opt_int(data.get("recur_interval")) or 1,
        "recur_interval_type": data.get("recur_interval_type"),
        "recur_repetitions": _opt_int(data.get("recur_repetitions")),
        "subscription_repeat_on": _opt_int(data.get("subscription_repeat_on")),
    }


def create_expense(state: SandboxState, business: Business, user: User, data: dict[str, Any],
                   upload: Upload | None) -> Expense:
    """``POST /expenses`` [seed]. The expense and its payment lines are one transaction."""
    _write_gates(business, user, user.can("expense.add"), subscription=True)
    v = Validator(data)
    checked = _validate_expense(v, business, creating=True)
    _permitted(user, checked["location_id"])
    now = local_now(business)
    final_total = parse_amount(business, data["final_total"])
    moment = parse_moment(business, data.get("transaction_date"), now)
    lines = _parse_payment_lines(business, data.get("payment"), now)
    _check_document(upload)
    tax_id = _opt_int(data.get("tax_id"))
    before, tax = _tax_split(business, final_total, tax_id)
    with state.lock:
        ref_no = data.get("ref_no")
        if ref_no is None:
            ref_no = business.next_ref("expense", now.year)
        expense = Expense(
            id=state.next_id("expense"),
            business_id=business.id,
            type="expense_refund" if truthy(data.get("is_refund")) else "expense",
            ref_no=ref_no,
            location_id=checked["location_id"],
            final_total=final_total,
            total_before_tax=before,
            tax_amount=tax,
            transaction_date=moment,
            created_by=user.id,
            created_at=datetime.now(),
            updated_at=datetime.now(),
            additional_notes=data.get("additional_notes"),
            expense_for=_opt_int(data.get("expense_for")),
            contact_id=_opt_int(data.get("contact_id")),
            category_id=_opt_int(data.get("expense_category_id")),
            sub_category_id=_opt_int(data.get("expense_sub_category_id")),
            tax_id=tax_id,
            sent={"final_total": _sent_text(data.get("final_total")),
                  "transaction_date": _sent_text(data.get("transaction_date"))},
        )
        for name, value in _recurrence(data).items():
            setattr(expense, name, value)
        for line in lines:
            expense.payments.append(_new_payment(state, business, user, line))
    if upload is not None:
        document = _store_document(state, business, upload)
    with state.lock:
        if upload is not None:
            expense.uploads.append(document)
            expense.document = document.stored_name
        expense.parsed = _parsed(expense)
        business.expenses[expense.id] = expense
    return expense


def _parsed(expense: Expense) -> dict[str, Any]:
    return {"final_total": str(expense.final_total),
            "transaction_date": expense.transaction_date.isoformat(sep=" ")}


UPDATABLE = {
    "ref_no": "ref_no", "additional_notes": "additional_notes", "expense_for": "expense_for",
    "contact_id": "contact_id", "expense_category_id": "category_id",
    "expense_sub_category_id": "sub_category_id", "tax_id": "tax_id",
}


def update_expense(state: SandboxState, business: Business, user: User, expense_id: int,
                   data: dict[str, Any], upload: Upload | None) -> Expense:
    """``PUT/PATCH /expenses/{id}`` [seed]: partial; ``payment`` is validated and ignored;
    recurrence is cleared unless ``is_recurring`` is sent truthy."""
    _write_gates(business, user, user.can("expense.edit"), subscription=True)
    expense = state.visible_expense(business, user, expense_id)
    if expense is None:
        raise JsonError(404, NOT_FOUND)
    v = Validator(data)
    checked = _validate_expense(v, business, creating=False, current=expense)
    _permitted(user, checked.get("location_id"))
    now = local_now(business)
    final_total = parse_amount(business, data["final_total"]) if "final_total" in data else None
    moment = (parse_moment(business, data["transaction_date"], now)
              if data.get("transaction_date") is not None else None)
    _check_document(upload)
    document = _store_document(state, business, upload) if upload is not None else None
    with state.lock:
        if "location_id" in data:
            expense.location_id = checked["location_id"]
        if final_total is not None:
            expense.final_total = final_total
            expense.sent["final_total"] = _sent_text(data["final_total"])
        if moment is not None:
            expense.transaction_date = moment
            expense.sent["transaction_date"] = _sent_text(data["transaction_date"])
        for key, attr in UPDATABLE.items():
            if key in data:
                value = data[key]
                setattr(expense, attr, value if key in ("ref_no", "additional_notes")
                        else _opt_int(value))
        if "is_refund" in data:
            expense.type = "expense_refund" if truthy(data["is_refund"]) else "expense"
        for name, value in _recurrence(data).items():
            setattr(expense, name, value)
        expense.total_before_tax, expense.tax_amount = _tax_split(
            business, expense.final_total, expense.tax_id
        )
        if document is not None:
            expense.uploads.append(document)
            expense.document = document.stored_name
        expense.updated_at = datetime.now()
        expense.parsed = _parsed(expense)
    return expense


def delete_expense(state: SandboxState, business: Business, user: User, expense_id: int) -> int:
    _write_gates(business, user, user.can("expense.delete"), subscription=False)
    expense = state.visible_expense(business, user, expense_id)
    if expense is None:
        raise JsonError(404, NOT_FOUND)
    with state.lock:
        expense.deleted_at = datetime.now()
    return expense.id


def add_payment(state: SandboxState, business: Business, user: User, expense_id: int,
                data: dict[str, Any]) -> tuple[Expense, Payment]:
    """``POST /expenses/{id}/payments`` [seed]."""
    _write_gates(business, user, can_list_expenses(user), subscription=True)
    expense = state.visible_expense(business, user, expense_id)
    if expense is None:
        raise JsonError(404, NOT_FOUND)
    v = Validator(data)
    v.numeric("amount", required=True, min_value="0.01")
    v.string("method", required=True)
    v.string("paid_on")
    v.string("note", max_len=1000)
    v.exists("account_id", v.integer("account_id"), business.accounts)
    for name in PAYMENT_DETAIL_FIELDS:
        v.string(name)
    v.check()
    if expense.payment_status() == "paid":
        raise JsonError(422, "This expense is already fully paid.")  # [assumed] text
    method = data["method"]
    if method not in business.locations[expense.location_id].payment_methods:
        raise JsonError(422, "The selected payment method is not allowed for this location.")
    now = local_now(business)
    amount = parse_amount(business, data["amount"])
    paid_on = parse_moment(business, data.get("paid_on"), now)
    with state.lock:
        if method == "advance":
            contact = business.contacts.get(expense.contact_id) if expense.contact_id else None
            if contact is None or amount > contact.balance:
                raise JsonError(422, "The advance payment exceeds the contact's balance.")
            contact.balance -= amount
        line = {
            "amount": amount, "method": method, "paid_on": paid_on, "note": data.get("note"),
            "is_return": False,
            "account_id": _opt_int(data.get("account_id")) if method != "advance" else None,
            "sent": {"amount": _sent_text(data["amount"]),
                     "paid_on": _sent_text(data.get("paid_on"))},
        }
        details = {k: data[k] for k in PAYMENT_DETAIL_FIELDS if data.get(k) is not None}
        payment = _new_payment(state, business, user, line, details)
        expense.payments.append(payment)
        expense.updated_at = datetime.now()
    return expense, payment


# --- categories --------------------------------------------------------------------------------


def _category_gates(business: Business, user: User) -> None:
    _write_gates(business, user, can_use_categories(user), subscription=False,
                 message=UNAUTHORIZED_CATEGORY)


def create_category(state: SandboxState, business: Business, user: User,
                    data: dict[str, Any]) -> Category:
    _category_gates(business, user)
    v = Validator(data)
    v.string("name", required=True, max_len=255)
    v.string("code", max_len=255)
    parent_id = v.integer("parent_id")
    v.check()
    if parent_id is not None and business.top_level_category(parent_id) is None:
        raise JsonError(422, "Invalid parent_id")
    with state.lock:
        return state.add_category(business, data["name"], data.get("code"), parent_id)


def live_category(business: Business, category_id: int) -> Category:
    found = business.categories.get(category_id)
    if found is None or found.deleted_at is not None:
        raise JsonError(404, NOT_FOUND)
    return found


def update_category(state: SandboxState, business: Business, user: User, category_id: int,
                    data: dict[str, Any]) -> Category:
    _category_gates(business, user)
    category = live_category(business, category_id)
    v = Validator(data)
    v.string("name", required=True, max_len=255)
    v.string("code", max_len=255)
    if v.present("parent_id"):
        v.integer("parent_id")
    v.check()
    parent_id = _opt_int(data.get("parent_id"))
    if parent_id == category.id:
        raise JsonError(422, "A category cannot be its own parent.")
    if parent_id is not None and business.top_level_category(parent_id) is None:
        raise JsonError(422, "Invalid parent_id")
    with state.lock:
        category.name = data["name"]
        if "code" in data:
            category.code = data["code"]
        category.parent_id = parent_id
        category.updated_at = datetime.now(UTC)
    return category


def delete_category(state: SandboxState, business: Business, user: User, category_id: int) -> int:
    """Soft-deletes the category and its direct children [seed]."""
    _category_gates(business, user)
    category = live_category(business, category_id)
    with state.lock:
        now = datetime.now()
        category.deleted_at = now
        for child in business.categories.values():
            if child.parent_id == category.id and child.deleted_at is None:
                child.deleted_at = now
    return category.id


# --- the CSV import ----------------------------------------------------------------------------


class ImportRowError(Exception):
    pass


def import_expenses(state: SandboxState, business: Business, user: User,
                    upload: Upload) -> ImportRecord:
    """``POST /import/expenses`` [seed], with UltimatePOS's importer behaviour [upos]: columns
    by position (header skipped), PHP's empty() on the required amounts (``"0"`` is missing),
    optional cells and payment lines carried over from the rows before, labels (not keys) for
    payment methods, and one transaction: the first bad row fails the whole file."""
    if not user.can("expense.add"):
        raise JsonError(403, UNAUTHORIZED_CATEGORY)
    name = upload.filename.lower()
    if not name.endswith((".csv", ".xls", ".xlsx")):
        raise ValidationFailed(
            {"expense_csv": ["The expense csv field must be a file of type: csv, xls, xlsx."]}
        )
    if not name.endswith(".csv"):
        raise JsonError(422, "The sandbox reads CSV files only.", success=0)
    try:
        text = upload.content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JsonError(422, "The file is not UTF-8.", success=0) from exc
    rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)][1:]
    now = local_now(business)
    with state.lock:
        # Work on copies; nothing is kept unless every row passes.
        snapshot_categories = dict(business.categories)
        snapshot_refs = business.ref_counts.copy()
        snapshot_balances = {c.id: c.balance for c in business.contacts.values()}
        created: list[Expense] = []
        try:
            _import_rows(state, business, user, rows, now, created)
        except ImportRowError as exc:
            business.categories = snapshot_categories
            business.ref_counts = snapshot_refs
            for contact in business.contacts.values():
                contact.balance = snapshot_balances[contact.id]
            record = ImportRecord(datetime.now(), upload.filename, len(rows), False, str(exc), [])
            business.imports.append(record)
            raise JsonError(422, str(exc), success=0) from exc
        for expense in created:
            business.expenses[expense.id] = expense
        record = ImportRecord(datetime.now(), upload.filename, len(rows), True,
                              "Expenses imported successfully", [e.id for e in created])
        business.imports.append(record)
        return record


def _import_rows(state: SandboxState, business: Business, user: User, rows: list[list[str]],
                 now: datetime, created: list[Expense]) -> None:
    settings = business.settings
    label_to_key = {label.lower(): key for key, label in PAYMENT_METHOD_LABELS.items()}
    first_location = min(business.locations)
    carried: dict[str, Any] = {}
    payments: list[dict[str, Any]] = []

    def moment(raw: str, row_no: int, column: str) -> datetime:
        if not raw:
            return now
        for fmt in (settings.date_format + (" h:i A" if settings.time_format == 12 else " H:i"),
                    settings.date_format):
            try:
                return create_from_format(fmt, raw, now)
            except DateFormatError:
                continue
        raise ImportRowError(f"Invalid {column} in row no. {row_no}")

    for index, raw_row in enumerate(rows):
        row_no = index + 1
        cells = {col: (raw_row[i].strip() if i < len(raw_row) else "")
                 for i, col in enumerate(IMPORT_COLUMNS)}
        for column in ("CATEGORY", "SUB-CATEGORY", "EXPENSE FOR", "EXPENSE FOR CONTACT ID",
                       "APPLICABLE TAX", "EXPENSE NOTE", "PAYMENT ACCOUND", "PAYMENT NOTE"):
            if cells[column]:
                carried[column] = cells[column]
            elif column in carried:
                cells[column] = carried[column]  # [upos] a variable set by an earlier row
        location_id = first_location
        if cells["LOCATION"]:
            location = next((loc for loc in business.locations.values()
                             if loc.name.lower() == cells["LOCATION"].lower()), None)
            if location is None:
                raise ImportRowError(f"Invalid LOCATION in row no. {row_no}")
            location_id = location.id
        category_id = sub_id = None
        if cells["CATEGORY"]:
            category = next((c for c in business.live_categories() if c.parent_id is None
                             and c.name.lower() == cells["CATEGORY"].lower()), None)
            if category is None:
                category = state.add_category(business, cells["CATEGORY"], None, None)
            category_id = category.id
            if cells["SUB-CATEGORY"]:
                sub = next((c for c in business.live_categories() if c.parent_id == category.id
                            and c.name.lower() == cells["SUB-CATEGORY"].lower()), None)
                if sub is None:
                    sub = state.add_category(business, cells["SUB-CATEGORY"], None, category.id)
                sub_id = sub.id
        expense_for = None
        if cells["EXPENSE FOR"]:
            wanted = cells["EXPENSE FOR"].lower()
            found_user = next((u for u in business.users.values()
                               if wanted in (u.email.lower(), u.username.lower())), None)
            if found_user is None:
                raise ImportRowError(f"Invalid EXPENSE FOR in row no. {row_no}")
            expense_for = found_user.id
        contact_id = None
        if cells["EXPENSE FOR CONTACT ID"]:
            contact = next((c for c in business.contacts.values()
                            if c.contact_id == cells["EXPENSE FOR CONTACT ID"]), None)
            if contact is None:
                raise ImportRowError(f"Invalid EXPENSE FOR CONTACT ID in row no. {row_no}")
            contact_id = contact.id
        tax_id = None
        if cells["APPLICABLE TAX"]:
            rate = next((t for t in business.tax_rates.values()
                         if t.name.lower() == cells["APPLICABLE TAX"].lower()), None)
            if rate is None:
                raise ImportRowError(f"Invalid APPLICABLE TAX in row no. {row_no}")
            tax_id = rate.id
        if php_empty(cells["TOTAL AMOUNT"]):
            raise ImportRowError(f"Amount not found in row no. {row_no} (TOTAL AMOUNT)")
        if php_empty(cells["PAID AMOUNT"]):
            raise ImportRowError(f"Amount not found in row no. {row_no} (PAID AMOUNT)")
        if not cells["PAYMENT METHOD"]:
            raise ImportRowError(f"PAYMENT METHOD not found in row no. {row_no}")
        method = label_to_key.get(cells["PAYMENT METHOD"].lower())
        if method is None:
            raise ImportRowError(f"Invalid PAYMENT METHOD in row no. {row_no}")
        account_id = None
        if cells["PAYMENT ACCOUND"]:
            account = next((a for a in business.accounts.values()
                            if a.account_number == cells["PAYMENT ACCOUND"]), None)
            if account is None:
                raise ImportRowError(f"Invalid PAYMENT ACCOUND in row no. {row_no}")
            account_id = account.id
        final_total = num_uf(cells["TOTAL AMOUNT"], settings.thousand_separator,
                             settings.decimal_separator)
        paid = num_uf(cells["PAID AMOUNT"], settings.thousand_separator, settings.decimal_separator)
        transaction_date = moment(cells["EXPENSE DATE"], row_no, "EXPENSE DATE")
        payments.append({
            "amount": paid, "method": method,
            "paid_on": moment(cells["PAID ON DATE"], row_no, "PAID ON DATE"),
            "note": cells["PAYMENT NOTE"] or None, "is_return": False, "account_id": account_id,
            "sent": {"amount": cells["PAID AMOUNT"], "paid_on": cells["PAID ON DATE"] or None},
        })
        before, tax = _tax_split(business, final_total, tax_id)
        expense = Expense(
            id=state.next_id("expense"), business_id=business.id, type="expense",
            ref_no=cells["REFERENCE NO"] or business.next_ref("expense", now.year),
            location_id=location_id, final_total=final_total, total_before_tax=before,
            tax_amount=tax, transaction_date=transaction_date, created_by=user.id,
            created_at=datetime.now(), updated_at=datetime.now(),
            additional_notes=cells["EXPENSE NOTE"] or None, expense_for=expense_for,
            contact_id=contact_id, category_id=category_id, sub_category_id=sub_id, tax_id=tax_id,
            document=cells["ATTACH DOCUMENT"] or None, source="import",
            sent={"final_total": cells["TOTAL AMOUNT"],
                  "transaction_date": cells["EXPENSE DATE"] or None},
        )
        # [upos] the payment array is never reset: each expense gets every line so far.
        for line in payments:
            expense.payments.append(_new_payment(state, business, user, line))
        expense.parsed = _parsed(expense)
        created.append(expense)
