"""The BillDiary sandbox's web layer: the vendor's Integration API (expenses part) under
``/api/v1/integration`` and the control API under ``/_sandbox/``.

Integration API [seed paths]:
  GET    /api/v1/integration/expenses                 list; q=, filters, paging, format=csv
  POST   /api/v1/integration/expenses                 create (JSON or multipart with `document`)
  GET    /api/v1/integration/expenses/{id}            one (format=csv too)
  PUT|PATCH /api/v1/integration/expenses/{id}         partial update (JSON / urlencoded only)
  POST   /api/v1/integration/expenses/{id}            with form field _method=PUT|PATCH|DELETE
  DELETE /api/v1/integration/expenses/{id}
  POST   /api/v1/integration/expenses/{id}/payments   record a payment
  GET    /api/v1/integration/expense-categories       list; q=, search=, sort, scope, format=csv
  POST   /api/v1/integration/expense-categories
  GET|PUT|PATCH|DELETE /api/v1/integration/expense-categories/{id} (POST + _method too)
  POST   /api/v1/integration/import/expenses          multipart `expense_csv`
Auth on every call: ``X-EPOS-API-Key`` + ``X-EPOS-API-Secret``, HTTP Basic key:secret, or
``Authorization: Bearer <personal access token>``. Answers carry ``X-RateLimit-*``.

Laravel's content negotiation is imitated: without ``Accept: application/json`` (or an
``X-Requested-With: XMLHttpRequest`` with ``*/*``), a failed login is a 302 to ``/login``, a
failed validation a 302 "back", and thrown HTTP errors HTML pages. Answers the controllers write
themselves (402, 403, 404, 422 ``{message}``, 500 "Could not load expense") are JSON regardless.

Control API (ours): see ``_control_api``; ``tests/fixtures/billdiary_sandbox.py`` wraps it.

Simulated waits are ``await asyncio.sleep`` in async endpoints, so a held request never blocks
the others. The after-save knobs answer what a client cannot tell from a failure: the seed's
500 "Could not load expense" after the expense was stored, a connection closed before the body,
an answer held past the client's timeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field, field_validator
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from sandbox.billdiary import pipeline, wire
from sandbox.billdiary.php import (
    ValidationFailed,
    Validator,
    laravel_input,
    like,
    like_contains,
    parse_json_body,
    php_form_keys,
    validation_body,
)
from sandbox.billdiary.pipeline import JsonError, Upload
from sandbox.billdiary.state import (
    KNOWN_PERMISSIONS,
    PAYMENT_METHOD_LABELS,
    Business,
    Category,
    Expense,
    FailRule,
    Faults,
    NotFound,
    Payment,
    RateLimitRule,
    SandboxState,
    Settings,
    User,
)
from sandbox.control import add_knob_routes
from sandbox.wire import CutOffAnswer, Stamp

API_PREFIX = "/api/v1/integration"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FAIL_MESSAGES = {
    400: "Bad Request", 401: "Unauthenticated.", 402: pipeline.SUBSCRIPTION_MESSAGE,
    403: "Unauthorized action.", 404: "Not found", 408: "Request Timeout", 409: "Conflict",
    422: "The given data was invalid.", 429: "Too Many Attempts.", 500: "Server Error",
    503: "Service Unavailable",
}


class Unauthenticated(Exception):
    """Laravel's AuthenticationException."""


class HttpFailure(Exception):
    """A thrown HttpException: ``{message}`` as JSON, or Laravel's HTML page."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class GatewayFailure(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(str(status))
        self.status = status


# --- control API models ----------------------------------------------------------------------


def _check_zone(value: str | None) -> str | None:
    if value is not None:
        try:
            ZoneInfo(value)
        except Exception as exc:  # ZoneInfoNotFoundError is a KeyError; pydantic wants ValueError
            raise ValueError(f"unknown timezone {value!r}") from exc
    return value


class SettingsIn(BaseModel):
    currency_code: str = "NOK"
    date_format: str = Field(default="d/m/Y", description="PHP format: d j m n Y y and separators")
    time_format: Literal[12, 24] = 24
    thousand_separator: str = ","
    decimal_separator: str = "."
    timezone: str = "Europe/Oslo"
    subscription_active: bool = True
    demo_mode: bool = False
    document_size_limit: int = Field(default=5_000_000, ge=1)
    amounts_use_business_format: bool = True

    _zone = field_validator("timezone")(lambda value: _check_zone(value))


class SettingsPatch(BaseModel):
    currency_code: str | None = None
    date_format: str | None = None
    time_format: Literal[12, 24] | None = None
    thousand_separator: str | None = None
    decimal_separator: str | None = None
    timezone: str | None = None
    subscription_active: bool | None = None
    demo_mode: bool | None = None
    document_size_limit: int | None = Field(default=None, ge=1)
    amounts_use_business_format: bool | None = None

    _zone = field_validator("timezone")(lambda value: _check_zone(value))


def _check_methods(value: list[str]) -> list[str]:
    unknown = [m for m in value if m not in PAYMENT_METHOD_LABELS]
    if unknown:
        known = list(PAYMENT_METHOD_LABELS)
        raise ValueError(f"unknown payment method keys {unknown}; known: {known}")
    return value


class LocationIn(BaseModel):
    name: str
    payment_methods: list[str] = Field(default_factory=lambda: ["cash", "card", "bank_transfer"])

    _methods = field_validator("payment_methods")(_check_methods)


class LocationPatch(BaseModel):
    payment_methods: list[str]

    _methods = field_validator("payment_methods")(_check_methods)


class SubCategoryIn(BaseModel):
    name: str
    code: str | None = None


class CategoryIn(BaseModel):
    name: str
    code: str | None = None
    sub_categories: list[SubCategoryIn] = Field(default_factory=list)


class ControlCategoryIn(BaseModel):
    name: str
    code: str | None = None
    parent_id: int | None = None


class TaxRateIn(BaseModel):
    name: str
    amount: Decimal = Field(ge=0)


class AccountIn(BaseModel):
    name: str
    account_number: str


class BusinessIn(BaseModel):
    """Omitted lists get the seed data (two locations, five categories with codes, four VAT
    rates, two payment accounts); an empty list means none."""

    name: str = "Sandbox Business"
    settings: SettingsIn = Field(default_factory=SettingsIn)
    locations: list[LocationIn] | None = None
    categories: list[CategoryIn] | None = None
    tax_rates: list[TaxRateIn] | None = None
    payment_accounts: list[AccountIn] | None = None
    contact_balance: Decimal = Decimal("500")


def _check_permissions(value: list[str] | None) -> list[str] | None:
    if value is not None:
        unknown = sorted(set(value) - KNOWN_PERMISSIONS)
        if unknown:
            raise ValueError(f"unknown permissions {unknown}; known: {sorted(KNOWN_PERMISSIONS)}")
    return value


class UserIn(BaseModel):
    first_name: str = "Extra"
    last_name: str = "User"
    username: str
    permissions: list[str] = Field(default_factory=list)
    location_ids: list[int] | None = Field(default=None, description="None: every location")
    is_admin: bool = False

    _perms = field_validator("permissions")(_check_permissions)


class UserPatch(BaseModel):
    permissions: list[str] | None = None
    location_ids: list[int] | None = Field(default=None, description="null: every location")
    is_admin: bool | None = None

    _perms = field_validator("permissions")(_check_permissions)


class FailRuleIn(BaseModel):
    status: int = Field(ge=400, le=599)
    count: int = Field(default=1, ge=1)
    method: str | None = None
    path_contains: str | None = None
    retry_after: int | None = Field(default=None, ge=0, description="Retry-After on a 429")
    message: str | None = Field(default=None, description="the JSON message, e.g. "
                                "'something_went_wrong'; default: Laravel's for the status")


class RateLimitIn(BaseModel):
    limit: int = Field(default=60, ge=1)
    window_seconds: float = Field(default=60.0, gt=0)


class FaultsIn(BaseModel):
    """Every knob is optional; PUT replaces the whole set."""

    latency_ms: int = Field(default=0, ge=0, description="Added to every API request.")
    fail_next: list[FailRuleIn] = Field(
        default_factory=list, description="Answer these before doing anything (nothing stored).")
    error_rate: float = Field(default=0.0, ge=0, le=1,
                              description="Share of writes answered 500 before storing.")
    seed: int = 1234
    rate_limit: RateLimitIn = Field(default_factory=RateLimitIn,
                                    description="Laravel's throttle per user [assumed 60/min].")
    save_then_fail: int = Field(
        default=0, ge=0, description="Store the expense (create/update), then answer the seed's "
        "500 {'message': 'Could not load expense'}.")
    payment_save_then_fail: int = Field(
        default=0, ge=0, description="Store the payment, then answer 500 "
        "{'message': 'something_went_wrong'}.")
    save_then_drop: int = Field(
        default=0, ge=0, description="Store (expense or payment), then close the connection "
        "after the status line, before the body.")
    save_then_hold_ms: int = Field(default=0, ge=0,
                                   description="Store, wait, then answer (a client timeout).")
    save_delay_ms: int = Field(
        default=0, ge=0, description="Wait, then store and answer; a client gone by then gets "
        "nothing stored.")
    drop_documents: int = Field(
        default=0, ge=0, description="Silently store nothing for the next N uploaded documents "
        "(the answer's document is null), as UltimatePOS does with a file above its size limit.")

    def to_faults(self) -> Faults:
        return Faults(
            latency_ms=self.latency_ms,
            fail_next=[FailRule(**r.model_dump()) for r in self.fail_next],
            error_rate=self.error_rate,
            seed=self.seed,
            rate_limit=RateLimitRule(**self.rate_limit.model_dump()),
            save_then_fail=self.save_then_fail,
            payment_save_then_fail=self.payment_save_then_fail,
            save_then_drop=self.save_then_drop,
            save_then_hold_ms=self.save_then_hold_ms,
            save_delay_ms=self.save_delay_ms,
            drop_documents=self.drop_documents,
        )


# --- plumbing --------------------------------------------------------------------------------


class _Stamp(Stamp):
    """Every API answer's ``X-RateLimit-*`` headers (the endpoint's own win) and the
    server-wide latency; an answer cut off by ``save_then_drop`` stays cut off."""

    api_prefix = "/api/"

    def stamp(self, state: dict[str, Any], headers: MutableHeaders, is_api: bool) -> None:
        if is_api and state.get("rate_headers"):
            for name, value in state["rate_headers"].items():
                if name not in headers:
                    headers[name] = value


def expects_json(request: Request) -> bool:
    """Laravel's ``expectsJson()``: the first Accept type is JSON, or an XHR accepting ``*/*``."""
    accept = request.headers.get("accept", "")
    first = accept.split(",")[0].split(";")[0].strip().lower()
    if "/json" in first or "+json" in first:
        return True
    ajax = request.headers.get("x-requested-with", "") == "XMLHttpRequest"
    return ajax and first in ("", "*/*", "*")


def create_app(*, latency_ms: int = 0, state: SandboxState | None = None) -> FastAPI:
    """``latency_ms`` delays every Integration API request (a slow BillDiary)."""
    state = state or SandboxState()
    app = FastAPI(title="BillDiary sandbox", docs_url="/_sandbox/docs",
                  openapi_url="/_sandbox/openapi.json", redoc_url=None)
    app.state.sandbox = state
    app.add_middleware(_Stamp, latency_ms=latency_ms)

    @app.exception_handler(JsonError)
    async def json_error(request: Request, exc: JsonError) -> Response:
        return wire.respond(exc.payload, exc.status)

    @app.exception_handler(ValidationFailed)
    async def validation_failed(request: Request, exc: ValidationFailed) -> Response:
        if not expects_json(request):
            return wire.redirect(request.headers.get("referer") or str(request.base_url))
        return wire.respond(validation_body(exc.errors), 422)

    @app.exception_handler(Unauthenticated)
    async def unauthenticated(request: Request, exc: Unauthenticated) -> Response:
        if not expects_json(request):
            return wire.redirect(f"{str(request.base_url).rstrip('/')}/login")
        return wire.respond({"message": "Unauthenticated."}, 401)

    @app.exception_handler(HttpFailure)
    async def http_failure(request: Request, exc: HttpFailure) -> Response:
        if not expects_json(request):
            return wire.error_page(exc.status, exc.headers)
        return wire.respond({"message": exc.message}, exc.status, exc.headers)

    @app.exception_handler(GatewayFailure)
    async def gateway_failure(request: Request, exc: GatewayFailure) -> Response:
        return wire.gateway_page(exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path.lstrip("/")
        if request.url.path.startswith("/_sandbox"):
            return wire.respond({"detail": exc.detail}, exc.status_code)
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = (f"The {request.method} method is not supported for route {path}. "
                       f"Supported methods: {allowed}.")
        elif exc.status_code == 404:
            message = f"The route {path} could not be found."
        else:
            message = str(exc.detail)
        if not expects_json(request):
            return wire.error_page(exc.status_code)
        return wire.respond({"message": message}, exc.status_code)

    app.include_router(_integration_api(state), prefix=API_PREFIX)
    app.include_router(_control_api(state), prefix="/_sandbox")
    return app


# --- request input -------------------------------------------------------------------------------


async def read_input(request: Request) -> tuple[dict[str, Any], dict[str, Upload]]:
    """``$request->all()`` and ``$request->file(...)`` as PHP would have them. PHP parses
    multipart bodies of POST only: a multipart PUT/PATCH arrives with no fields and no files."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    query = php_form_keys(list(request.query_params.multi_items()))
    body: dict[str, Any] = {}
    files: dict[str, Upload] = {}
    if "/json" in content_type or "+json" in content_type:
        body = parse_json_body(await request.body())
    elif content_type == "multipart/form-data" and request.method == "POST":
        form = await request.form()
        try:
            pairs = []
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    content = await value.read()
                    if value.filename or content:
                        files[key] = Upload(value.filename or "", value.content_type or "", content)
                else:
                    pairs.append((key, value))
            body = php_form_keys(pairs)
        finally:
            await form.close()
    elif content_type == "application/x-www-form-urlencoded":
        form = await request.form()
        body = php_form_keys(list(form.multi_items()))
    return laravel_input(query, body), files


def _spoofed_method(request: Request, data: dict[str, Any]) -> str:
    """Symfony's method override: ``_method`` from a form body or the query string of a POST
    (never from a JSON body)."""
    content_type = request.headers.get("content-type", "").lower()
    if "json" in content_type:
        value = request.query_params.get("_method")
    else:
        value = data.get("_method")
    data.pop("_method", None)
    return str(value or "").strip().upper()


def _path_id(raw: str) -> int:
    """An id in the path that is not a number finds nothing."""
    if not raw.isdigit():
        raise JsonError(404, pipeline.NOT_FOUND)
    return int(raw)


def _paginate(v: Validator) -> tuple[int, int]:
    per_page = v.between("per_page", 1, 100) or 20
    page = v.integer("page")
    if page is not None and page < 1:
        v.fail("page", "The page field must be at least 1.")
    return per_page, page or 1


def _page(rows: list[dict[str, Any]], per_page: int, page: int) -> dict[str, Any]:
    total = len(rows)
    return {
        "data": rows[(page - 1) * per_page : page * per_page],
        "meta": {
            "current_page": page,
            "last_page": max(1, math.ceil(total / per_page)),
            "per_page": per_page,
            "total": total,
        },
    }


# --- JSON shapes -----------------------------------------------------------------------------


def _iso(business: Business, moment: datetime | None) -> str | None:
    """Carbon's ``toIso8601String()`` in the business's timezone: 2026-03-18T10:00:00+01:00."""
    if moment is None:
        return None
    zone = ZoneInfo(business.settings.timezone)
    local = moment.astimezone(zone) if moment.tzinfo else moment.replace(tzinfo=zone)
    return local.replace(microsecond=0).isoformat()


def _summary(rec: Any) -> dict[str, Any] | None:
    return {"id": rec.id, "name": rec.name} if rec is not None else None


def _payment_json(business: Business, payment: Payment) -> dict[str, Any]:
    return {
        "id": payment.id,
        "amount": payment.amount,
        "method": payment.method,
        "paid_on": _iso(business, payment.paid_on),
        "payment_ref_no": payment.payment_ref_no,
        "note": payment.note,
        "is_return": payment.is_return,
    }


def _expense_json(business: Business, e: Expense, *, detail: bool) -> dict[str, Any]:
    category = business.categories.get(e.category_id) if e.category_id else None
    sub = business.categories.get(e.sub_category_id) if e.sub_category_id else None
    user = business.users.get(e.expense_for) if e.expense_for else None
    contact = business.contacts.get(e.contact_id) if e.contact_id else None
    location = business.locations.get(e.location_id)
    body: dict[str, Any] = {
        "id": e.id,
        "type": e.type,
        "ref_no": e.ref_no,
        "document": e.document,
        "transaction_date": _iso(business, e.transaction_date),
        "payment_status": e.payment_status(),
        "final_total": e.final_total,
        "total_before_tax": e.total_before_tax,
        "tax_amount": e.tax_amount,
    }
    if detail:
        body["discount_amount"] = e.discount_amount
    body["total_paid"] = e.total_paid()
    body["additional_notes"] = e.additional_notes
    if detail:
        body["staff_note"] = e.staff_note
    body["is_recurring"] = e.is_recurring
    if detail:
        body.update(
            recur_interval=e.recur_interval,
            recur_interval_type=e.recur_interval_type,
            recur_repetitions=e.recur_repetitions,
            recur_parent_id=e.recur_parent_id,
            subscription_repeat_on=e.subscription_repeat_on,
        )
    body["created_by"] = e.created_by
    body["expense_category"] = _summary(category)
    body["expense_sub_category"] = _summary(sub)
    if user is None:
        body["expense_for"] = None
    else:
        body["expense_for"] = {"id": user.id, "name": user.name}
        if detail:
            body["expense_for"]["email"] = user.email
    if contact is None:
        body["contact"] = None
    else:
        body["contact"] = {"id": contact.id, "name": contact.name, "mobile": contact.mobile}
        if detail:
            body["contact"]["email"] = contact.email
        body["contact"]["contact_id"] = contact.contact_id
        body["contact"]["supplier_business_name"] = contact.supplier_business_name
    body["location"] = _summary(location)
    if detail:
        tax = business.tax_rates.get(e.tax_id) if e.tax_id else None
        body["order_tax"] = (
            {"id": tax.id, "name": tax.name, "amount": tax.amount, "is_tax_group": tax.is_tax_group}
            if tax else None
        )
        body["payments"] = [_payment_json(business, p) for p in e.payments]
    return body


def _category_json(business: Business, c: Category) -> dict[str, Any]:
    parent = business.categories.get(c.parent_id) if c.parent_id else None
    children = [
        {"id": k.id, "name": k.name, "code": k.code}
        for k in sorted(business.live_categories(), key=lambda k: k.id)
        if k.parent_id == c.id
    ]
    return {
        "id": c.id,
        "name": c.name,
        "code": c.code,
        "parent_id": c.parent_id,
        "is_sub_category": c.parent_id is not None,
        "display_name": f"{parent.name} / {c.name}" if parent else c.name,
        "parent": _summary(parent),
        "sub_categories": children if c.parent_id is None else [],
        "created_at": _iso(business, c.created_at),
        "updated_at": _iso(business, c.updated_at),
    }


# --- the Integration API -------------------------------------------------------------------------


def _integration_api(state: SandboxState) -> APIRouter:
    router = APIRouter()

    def authenticate(request: Request) -> tuple[Business, User]:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        found = None
        if scheme.lower() == "bearer" and value.strip():
            found = state.by_token(value.strip())
        elif request.headers.get("x-epos-api-key") is not None:
            found = state.by_key(request.headers["x-epos-api-key"],
                                 request.headers.get("x-epos-api-secret", ""))
        elif scheme.lower() == "basic" and value.strip():
            try:
                key, _, secret = base64.b64decode(value.strip()).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                key = secret = ""
            found = state.by_key(key, secret) if key else None
        if found is None:
            raise Unauthenticated()
        return found

    async def enter(request: Request, method: str | None = None) -> tuple[Business, User]:
        """Before every endpoint's work: auth, counting, latency, the throttle, queued failures,
        the random error rate on writes."""
        business, user = authenticate(request)
        method = method or request.method
        state.count_request(business, request, API_PREFIX, method)
        faults = business.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        allowed, headers = state.rate_check(business, user)
        request.state.rate_headers = headers
        if not allowed:
            raise HttpFailure(429, "Too Many Attempts.", headers)
        rule = state.take_fail_rule(business, method, request.url.path)
        if rule is not None:
            raise _rule_failure(rule, headers)
        if method in WRITE_METHODS and state.roll_error(business):
            raise HttpFailure(500, "Server Error")
        return business, user

    async def after_save(
        request: Request, business: Business, payload: dict[str, Any], status: int,
        fail_knob: str | None, fail_message: str,
    ) -> Response:
        """The answer to a write that was stored: the knobs decide what the client gets."""
        answer = wire.dumps(payload).encode("utf-8")
        faults = business.faults
        if faults.save_then_hold_ms:
            await asyncio.sleep(faults.save_then_hold_ms / 1000)
        if fail_knob and state.take(business, fail_knob):
            return wire.respond({"message": fail_message}, 500)
        if state.take(business, "save_then_drop"):
            return CutOffAnswer(len(answer), status)
        return Response(answer, status, media_type="application/json")

    async def delayed(request: Request, business: Business) -> bool:
        """``save_delay_ms``: False if the client left before the commit (nothing stored)."""
        delay = business.faults.save_delay_ms
        if not delay:
            return True
        loop = asyncio.get_running_loop()
        until = loop.time() + delay / 1000
        while (left := until - loop.time()) > 0:
            await asyncio.sleep(min(0.05, left))
            if await request.is_disconnected():
                return False
        return True

    # expenses --------------------------------------------------------------------------------

    @router.get("/expenses")
    async def list_expenses(request: Request) -> Response:
        business, user = await enter(request)
        if not pipeline.can_list_expenses(user):
            raise JsonError(403, pipeline.UNAUTHORIZED_EXPENSE)
        data, _ = await read_input(request)
        v = Validator(data)
        per_page, page = _paginate(v)
        ints = {}
        for name in ("location_id", "contact_id", "expense_for", "created_by",
                     "expense_category_id", "expense_sub_category_id"):
            ints[name] = v.integer(name)
        start, end = v.date_ymd("start_date"), v.date_ymd("end_date")
        payment_status = v.one_of("payment_status", ("paid", "due", "partial"))
        kind = v.one_of("type", ("expense", "expense_refund"))
        q = v.string("q", min_len=2)
        fmt = v.one_of("format", ("json", "csv"))
        v.check()
        rows = state.visible_expenses(business, user)
        attr = {"location_id": "location_id", "contact_id": "contact_id",
                "expense_for": "expense_for", "created_by": "created_by",
                "expense_category_id": "category_id", "expense_sub_category_id": "sub_category_id"}
        for name, wanted in ints.items():
            if wanted is not None:
                rows = [e for e in rows if getattr(e, attr[name]) == wanted]
        if start and end:  # [seed] only when both are given
            rows = [e for e in rows if start <= e.transaction_date.date().isoformat() <= end]
        if payment_status:
            rows = [e for e in rows if e.payment_status() == payment_status]
        if kind:
            rows = [e for e in rows if e.type == kind]
        if q is not None:
            rows = [e for e in rows if _expense_matches(business, e, q)]
        rows.sort(key=lambda e: (e.transaction_date, e.id), reverse=True)
        shaped = [_expense_json(business, e, detail=False) for e in rows]
        if fmt == "csv":
            return wire.csv_response(shaped, "expenses.csv", _EXPENSE_ROW_COLUMNS)
        return wire.respond(_page(shaped, per_page, page))

    @router.post("/expenses")
    async def create_expense(request: Request) -> Response:
        business, user = await enter(request)
        data, files = await read_input(request)
        if not await delayed(request, business):
            return Response(status_code=499)
        expense = pipeline.create_expense(state, business, user, data, files.get("document"))
        payload = {"data": _expense_json(business, expense, detail=True)}
        return await after_save(request, business, payload, 201, "save_then_fail",
                                "Could not load expense")

    @router.get("/expenses/{expense_id}")
    async def get_expense(request: Request, expense_id: str) -> Response:
        business, user = await enter(request)
        if not pipeline.can_list_expenses(user):
            raise JsonError(403, pipeline.UNAUTHORIZED_EXPENSE)
        data, _ = await read_input(request)
        v = Validator(data)
        fmt = v.one_of("format", ("json", "csv"))
        v.check()
        expense = state.visible_expense(business, user, _path_id(expense_id))
        if expense is None:
            raise JsonError(404, pipeline.NOT_FOUND)
        shaped = _expense_json(business, expense, detail=True)
        if fmt == "csv":
            return wire.csv_response([{"id": expense.id, "data_json": shaped}],
                                     f"expense-{expense.id}.csv")
        return wire.respond({"data": shaped})

    async def update_expense(request: Request, expense_id: str, method: str,
                             data: dict[str, Any], files: dict[str, Upload]) -> Response:
        business, user = await enter(request, method)
        if not await delayed(request, business):
            return Response(status_code=499)
        expense = pipeline.update_expense(state, business, user, _path_id(expense_id), data,
                                          files.get("document"))
        payload = {"data": _expense_json(business, expense, detail=True)}
        return await after_save(request, business, payload, 200, "save_then_fail",
                                "Could not load expense")

    async def delete_expense(request: Request, expense_id: str) -> Response:
        business, user = await enter(request, "DELETE")
        deleted = pipeline.delete_expense(state, business, user, _path_id(expense_id))
        return wire.respond({"message": "Expense deleted successfully", "data": {"id": deleted}})

    @router.api_route("/expenses/{expense_id}", methods=["PUT", "PATCH"])
    async def put_expense(request: Request, expense_id: str) -> Response:
        data, files = await read_input(request)
        return await update_expense(request, expense_id, request.method, data, files)

    @router.delete("/expenses/{expense_id}")
    async def delete_expense_route(request: Request, expense_id: str) -> Response:
        return await delete_expense(request, expense_id)

    @router.post("/expenses/{expense_id}")
    async def spoofed_expense(request: Request, expense_id: str) -> Response:
        """Laravel's method spoofing: a POST form with ``_method``; the only way to send a
        multipart update (and so a document) to an existing expense."""
        data, files = await read_input(request)
        spoofed = _spoofed_method(request, data)
        if spoofed in ("PUT", "PATCH"):
            return await update_expense(request, expense_id, spoofed, data, files)
        if spoofed == "DELETE":
            return await delete_expense(request, expense_id)
        raise StarletteHTTPException(405, headers={"Allow": "GET, HEAD, PUT, PATCH, DELETE"})

    @router.post("/expenses/{expense_id}/payments")
    async def add_payment(request: Request, expense_id: str) -> Response:
        business, user = await enter(request)
        data, _ = await read_input(request)
        if not await delayed(request, business):
            return Response(status_code=499)
        expense, payment = pipeline.add_payment(state, business, user, _path_id(expense_id), data)
        payload = {
            "message": "Payment added successfully",
            "data": {
                "transaction_id": expense.id,
                "payment_id": payment.id,
                "payment_ref_no": payment.payment_ref_no,
                "payment_status": expense.payment_status(),
                "amount": payment.amount,
                "method": payment.method,
                "paid_on": _iso(business, payment.paid_on),
            },
        }
        return await after_save(request, business, payload, 201, "payment_save_then_fail",
                                "something_went_wrong")

    # categories ------------------------------------------------------------------------------

    @router.get("/expense-categories")
    async def list_categories(request: Request) -> Response:
        business, user = await enter(request)
        if not pipeline.can_use_categories(user):
            raise JsonError(403, pipeline.UNAUTHORIZED_CATEGORY)
        data, _ = await read_input(request)
        v = Validator(data)
        per_page, page = _paginate(v)
        q = v.string("q", min_len=2)
        search = v.string("search")
        sort = v.one_of("sort", ("name", "code", "created_at")) or "name"
        direction = v.one_of("direction", ("asc", "desc")) or "asc"
        scope = v.one_of("scope", ("parents", "children"))
        fmt = v.one_of("format", ("json", "csv"))
        v.check()
        rows = business.live_categories()
        if scope == "parents":
            rows = [c for c in rows if c.parent_id is None]
        elif scope == "children":
            rows = [c for c in rows if c.parent_id is not None]
        for term in (q, search):
            if term is not None:
                pattern = like_contains(term)
                rows = [c for c in rows if like(pattern, c.name) or like(pattern, c.code)
                        or (term.isdigit() and c.id == int(term))]

        def sort_key(c: Category) -> tuple[Any, ...]:
            value = getattr(c, sort)
            if isinstance(value, str):
                value = value.casefold()
            return (value is not None, value if value is not None else "", c.id)

        rows.sort(key=sort_key, reverse=direction == "desc")
        shaped = [_category_json(business, c) for c in rows]
        if fmt == "csv":
            return wire.csv_response(shaped, "expense-categories.csv")
        return wire.respond(_page(shaped, per_page, page))

    @router.post("/expense-categories")
    async def create_category(request: Request) -> Response:
        business, user = await enter(request)
        data, _ = await read_input(request)
        category = pipeline.create_category(state, business, user, data)
        return wire.respond({"data": _category_json(business, category)}, 201)

    @router.get("/expense-categories/{category_id}")
    async def get_category(request: Request, category_id: str) -> Response:
        business, user = await enter(request)
        if not pipeline.can_use_categories(user):
            raise JsonError(403, pipeline.UNAUTHORIZED_CATEGORY)
        data, _ = await read_input(request)
        v = Validator(data)
        fmt = v.one_of("format", ("json", "csv"))
        v.check()
        category = pipeline.live_category(business, _path_id(category_id))
        shaped = _category_json(business, category)
        if fmt == "csv":
            return wire.csv_response([{"id": category.id, "data_json": shaped}],
                                     f"expense-category-{category.id}.csv")
        return wire.respond({"data": shaped})

    async def update_category(request: Request, category_id: str, method: str,
                              data: dict[str, Any]) -> Response:
        business, user = await enter(request, method)
        category = pipeline.update_category(state, business, user, _path_id(category_id), data)
        return wire.respond({"data": _category_json(business, category)})

    async def delete_category(request: Request, category_id: str) -> Response:
        business, user = await enter(request, "DELETE")
        deleted = pipeline.delete_category(state, business, user, _path_id(category_id))
        return wire.respond({"message": "Expense category deleted successfully",
                             "data": {"id": deleted}})

    @router.api_route("/expense-categories/{category_id}", methods=["PUT", "PATCH"])
    async def put_category(request: Request, category_id: str) -> Response:
        data, _ = await read_input(request)
        return await update_category(request, category_id, request.method, data)

    @router.delete("/expense-categories/{category_id}")
    async def delete_category_route(request: Request, category_id: str) -> Response:
        return await delete_category(request, category_id)

    @router.post("/expense-categories/{category_id}")
    async def spoofed_category(request: Request, category_id: str) -> Response:
        data, _ = await read_input(request)
        spoofed = _spoofed_method(request, data)
        if spoofed in ("PUT", "PATCH"):
            return await update_category(request, category_id, spoofed, data)
        if spoofed == "DELETE":
            return await delete_category(request, category_id)
        raise StarletteHTTPException(405, headers={"Allow": "GET, HEAD, PUT, PATCH, DELETE"})

    # import ----------------------------------------------------------------------------------

    @router.post("/import/expenses")
    async def import_expenses(request: Request) -> Response:
        business, user = await enter(request)
        if not user.can("expense.add"):
            raise JsonError(403, pipeline.UNAUTHORIZED_CATEGORY)
        _, files = await read_input(request)
        upload = files.get("expense_csv")
        if upload is None:
            raise ValidationFailed({"expense_csv": ["The expense csv field is required."]})
        record = pipeline.import_expenses(state, business, user, upload)
        return wire.respond({"success": 1, "message": record.message})

    return router


_EXPENSE_ROW_COLUMNS = [
    "id", "type", "ref_no", "document", "transaction_date", "payment_status", "final_total",
    "total_before_tax", "tax_amount", "total_paid", "additional_notes", "is_recurring",
    "created_by", "expense_category", "expense_sub_category", "expense_for", "contact", "location",
]


def _expense_matches(business: Business, e: Expense, q: str) -> bool:
    """[seed] q matches ref, document, notes, numeric id, linked contact fields and category
    names; a LIKE '%q%' (substring, case-insensitive, ``%``/``_`` are wildcards)."""
    pattern = like_contains(q)
    if q.isdigit() and e.id == int(q):
        return True
    texts: list[Any] = [e.ref_no, e.document, e.additional_notes]
    contact = business.contacts.get(e.contact_id) if e.contact_id else None
    if contact is not None:
        texts += [contact.name, contact.mobile, contact.contact_id, contact.supplier_business_name]
    for category_id in (e.category_id, e.sub_category_id):
        category = business.categories.get(category_id) if category_id else None
        if category is not None:
            texts.append(category.name)
    return any(like(pattern, text) for text in texts)


def _rule_failure(rule: FailRule, rate_headers: dict[str, str]) -> Exception:
    if rule.status in (502, 504):
        return GatewayFailure(rule.status)
    message = rule.message or FAIL_MESSAGES.get(rule.status, "Server Error")
    headers: dict[str, str] = {}
    if rule.status == 429:
        retry = rule.retry_after if rule.retry_after is not None else 60
        headers = {
            **rate_headers,
            "X-RateLimit-Remaining": "0",
            "Retry-After": str(retry),
            "X-RateLimit-Reset": str(int(datetime.now().timestamp()) + retry),
        }
    elif rule.retry_after is not None:
        headers["Retry-After"] = str(rule.retry_after)
    if rule.status in (402, 403, 404, 422) or rule.message:
        # What the controllers write themselves: JSON whatever the Accept header says.
        return JsonError(rule.status, message)
    return HttpFailure(rule.status, message, headers)


# --- control API -------------------------------------------------------------------------------


def _control_user(user: User) -> dict[str, Any]:
    live = next((c for c in reversed(user.credentials) if not c.revoked), None)
    return {
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "username": user.username,
        "permissions": sorted(user.permissions),
        "location_ids": sorted(user.location_ids) if user.location_ids is not None else None,
        "is_admin": user.is_admin,
        "api_key": live.api_key if live else None,
        "api_secret": live.api_secret if live else None,
        "token": live.token if live else None,
    }


def _control_business(business: Business) -> dict[str, Any]:
    users = [_control_user(u) for u in business.users.values()]
    integration = users[0]
    categories = []
    for c in sorted(business.live_categories(), key=lambda c: c.id):
        if c.parent_id is None:
            categories.append({
                "id": c.id, "name": c.name, "code": c.code, "parent_id": None,
                "sub_categories": [
                    {"id": k.id, "name": k.name, "code": k.code, "parent_id": c.id}
                    for k in sorted(business.live_categories(), key=lambda k: k.id)
                    if k.parent_id == c.id
                ],
            })
    return {
        "business_id": business.id,
        "name": business.name,
        "settings": vars(business.settings).copy(),
        "user_id": integration["id"],
        "api_key": integration["api_key"],
        "api_secret": integration["api_secret"],
        "token": integration["token"],
        "users": users,
        "locations": [
            {"id": loc.id, "name": loc.name, "location_code": loc.location_code,
             "payment_methods": list(loc.payment_methods)}
            for loc in business.locations.values()
        ],
        "categories": categories,
        "tax_rates": [
            {"id": t.id, "name": t.name, "amount": str(t.amount)}
            for t in business.tax_rates.values()
        ],
        "payment_accounts": [
            {"id": a.id, "name": a.name, "account_number": a.account_number}
            for a in business.accounts.values()
        ],
        "contacts": [
            {"id": c.id, "name": c.name, "contact_id": c.contact_id,
             "supplier_business_name": c.supplier_business_name, "balance": str(c.balance)}
            for c in business.contacts.values()
        ],
        "payment_method_labels": dict(PAYMENT_METHOD_LABELS),
    }


def _control_expense(business: Business, e: Expense) -> dict[str, Any]:
    """Everything stored, amounts as exact strings; ``sent`` vs ``parsed`` shows what the
    business's number and date formats made of the client's values."""
    return {
        "id": e.id,
        "type": e.type,
        "ref_no": e.ref_no,
        "location_id": e.location_id,
        "final_total": str(e.final_total),
        "total_before_tax": str(e.total_before_tax),
        "tax_amount": str(e.tax_amount),
        "total_paid": str(e.total_paid()),
        "payment_status": e.payment_status(),
        "transaction_date": e.transaction_date.isoformat(sep=" "),
        "additional_notes": e.additional_notes,
        "expense_for": e.expense_for,
        "contact_id": e.contact_id,
        "expense_category_id": e.category_id,
        "expense_sub_category_id": e.sub_category_id,
        "tax_id": e.tax_id,
        "is_recurring": e.is_recurring,
        "recur_interval": e.recur_interval,
        "recur_interval_type": e.recur_interval_type,
        "recur_repetitions": e.recur_repetitions,
        "subscription_repeat_on": e.subscription_repeat_on,
        "created_by": e.created_by,
        "status": e.status,
        "source": e.source,
        "deleted": e.deleted_at is not None,
        "document": e.document,
        "documents": [
            {"original_name": d.original_name, "stored_name": d.stored_name,
             "content_type": d.content_type, "size": d.size, "sha256": d.sha256,
             "outcome": d.outcome}
            for d in e.uploads
        ],
        "payments": [
            {"id": p.id, "amount": str(p.amount), "method": p.method,
             "paid_on": p.paid_on.isoformat(sep=" "), "payment_ref_no": p.payment_ref_no,
             "note": p.note, "is_return": p.is_return, "account_id": p.account_id,
             "details": p.details, "sent": p.sent}
            for p in e.payments
        ],
        "sent": e.sent,
        "parsed": e.parsed,
        "created_at": e.created_at.isoformat(),
        "updated_at": e.updated_at.isoformat(),
    }


def _control_api(state: SandboxState) -> APIRouter:
    router = APIRouter()

    def business_or_404(business_id: int) -> Business:
        try:
            return state.business(business_id)
        except NotFound as exc:
            raise StarletteHTTPException(404, str(exc)) from exc

    def user_or_404(business: Business, user_id: int) -> User:
        user = business.users.get(user_id)
        if user is None:
            raise StarletteHTTPException(404, f"no user {user_id} in business {business.id}")
        return user

    def check_locations(business: Business, ids: list[int] | None) -> None:
        unknown = sorted(set(ids or ()) - set(business.locations))
        if unknown:
            raise StarletteHTTPException(422, f"unknown location ids {unknown}")

    @router.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "businesses": len(state.businesses)}

    @router.post("/businesses", status_code=201)
    async def create_business(body: BusinessIn) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": body.name,
            "settings": body.settings.model_dump(),
            "contact_balance": body.contact_balance,
        }
        if body.locations is not None:
            spec["locations"] = [(loc.name, loc.payment_methods) for loc in body.locations]
        if body.categories is not None:
            spec["categories"] = [c.model_dump() for c in body.categories]
        if body.tax_rates is not None:
            spec["tax_rates"] = [(t.name, t.amount) for t in body.tax_rates]
        if body.payment_accounts is not None:
            spec["payment_accounts"] = [(a.name, a.account_number) for a in body.payment_accounts]
        if spec.get("locations") == []:
            raise StarletteHTTPException(422, "a business needs at least one location")
        business = state.create_business(spec)
        return _control_business(business)

    @router.get("/businesses/{business_id}")
    async def get_business(business_id: int) -> dict[str, Any]:
        return _control_business(business_or_404(business_id))

    @router.patch("/businesses/{business_id}/settings")
    async def patch_settings(business_id: int, body: SettingsPatch) -> dict[str, Any]:
        """Change the business's settings: formats, subscription (402), demo mode (403)..."""
        business = business_or_404(business_id)
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        with state.lock:
            merged = {**vars(business.settings), **changes}
            business.settings = Settings(**merged)
        return vars(business.settings).copy()

    @router.post("/businesses/{business_id}/users", status_code=201)
    async def add_user(business_id: int, body: UserIn) -> dict[str, Any]:
        business = business_or_404(business_id)
        check_locations(business, body.location_ids)
        user = state.add_user(
            business, first=body.first_name, last=body.last_name, username=body.username,
            permissions=set(body.permissions),
            location_ids=set(body.location_ids) if body.location_ids is not None else None,
            is_admin=body.is_admin,
        )
        return _control_user(user)

    @router.patch("/businesses/{business_id}/users/{user_id}")
    async def patch_user(business_id: int, user_id: int, body: UserPatch) -> dict[str, Any]:
        business = business_or_404(business_id)
        user = user_or_404(business, user_id)
        with state.lock:
            if body.permissions is not None:
                user.permissions = set(body.permissions)
            if "location_ids" in body.model_fields_set:
                check_locations(business, body.location_ids)
                ids = body.location_ids
                user.location_ids = set(ids) if ids is not None else None
            if body.is_admin is not None:
                user.is_admin = body.is_admin
        return _control_user(user)

    @router.post("/businesses/{business_id}/users/{user_id}/rotate-credentials")
    async def rotate(business_id: int, user_id: int) -> dict[str, Any]:
        """Revoke the user's key, secret and token (the next call with them is a 401)."""
        business = business_or_404(business_id)
        state.rotate_credentials(business, user_or_404(business, user_id))
        return _control_user(business.users[user_id])

    @router.post("/businesses/{business_id}/locations", status_code=201)
    async def add_location(business_id: int, body: LocationIn) -> dict[str, Any]:
        business = business_or_404(business_id)
        loc = state.add_location(business, body.name, body.payment_methods)
        return {"id": loc.id, "name": loc.name, "location_code": loc.location_code,
                "payment_methods": loc.payment_methods}

    @router.patch("/businesses/{business_id}/locations/{location_id}")
    async def patch_location(business_id: int, location_id: int,
                             body: LocationPatch) -> dict[str, Any]:
        business = business_or_404(business_id)
        loc = business.locations.get(location_id)
        if loc is None:
            raise StarletteHTTPException(404, f"no location {location_id}")
        with state.lock:
            loc.payment_methods = list(body.payment_methods)
        return {"id": loc.id, "name": loc.name, "location_code": loc.location_code,
                "payment_methods": loc.payment_methods}

    @router.post("/businesses/{business_id}/categories", status_code=201)
    async def add_category(business_id: int, body: ControlCategoryIn) -> dict[str, Any]:
        """Add a category as an accountant would in BillDiary's UI (no permission checks)."""
        business = business_or_404(business_id)
        if body.parent_id is not None and business.top_level_category(body.parent_id) is None:
            raise StarletteHTTPException(422, "parent_id is not a live top-level category")
        with state.lock:
            category = state.add_category(business, body.name, body.code, body.parent_id)
        return _category_json(business, category)

    @router.get("/businesses/{business_id}/categories")
    async def categories(business_id: int) -> list[dict[str, Any]]:
        business = business_or_404(business_id)
        return [
            {**_category_json(business, c), "deleted": c.deleted_at is not None}
            for c in sorted(business.categories.values(), key=lambda c: c.id)
        ]

    @router.post("/businesses/{business_id}/tax-rates", status_code=201)
    async def add_tax_rate(business_id: int, body: TaxRateIn) -> dict[str, Any]:
        business = business_or_404(business_id)
        with state.lock:
            rate = state.add_tax_rate(business, body.name, body.amount)
        return {"id": rate.id, "name": rate.name, "amount": str(rate.amount)}

    @router.get("/businesses/{business_id}/expenses")
    async def expenses(business_id: int) -> list[dict[str, Any]]:
        """Every expense stored, deleted ones included, with documents and payments."""
        business = business_or_404(business_id)
        with state.lock:
            return [_control_expense(business, e)
                    for e in sorted(business.expenses.values(), key=lambda e: e.id)]

    @router.get("/businesses/{business_id}/imports")
    async def imports(business_id: int) -> list[dict[str, Any]]:
        business = business_or_404(business_id)
        return [
            {"at": r.at.isoformat(), "filename": r.filename, "rows": r.rows,
             "success": r.success, "message": r.message, "expense_ids": r.expense_ids}
            for r in business.imports
        ]

    def put_faults(business: Business, body: FaultsIn | None) -> dict[str, Any]:
        state.set_faults(business, body.to_faults() if body else Faults())
        return (body or FaultsIn()).model_dump()

    add_knob_routes(router, "/businesses/{business_id}", int, business_or_404, state.lock,
                    FaultsIn, put_faults)

    return router

