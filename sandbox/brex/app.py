"""The Brex sandbox's web layer: the Expenses API under ``/v1``, the pre-signed "S3" links under
``/_s3/``, and the control API under ``/_sandbox/``.

Brex Expenses API [seed 003; spec ``shared/specs/brex/expenses-api-0.1-patched.json``]:
  GET  /v1/expenses                   list: filters ``status[]`` ``payment_status[]``
                                      ``expense_type[]`` ``user_id[]`` ``budget_id[]``
                                      ``spending_entity_id[]`` ``parent_expense_id[]``
                                      ``purchased_at_start/_end`` ``updated_at_start/_end``
                                      (inclusive), ``expand[]``, ``load_custom_fields``,
                                      ``cursor``, ``limit`` (1..100, default 100)
  GET  /v1/expenses/card              the same, card expenses only (deprecated May 2025 [doc])
  GET  /v1/expenses/{id}              GET /v1/expenses/card/{expense_id}
  PUT  /v1/expenses/card/{expense_id} {"memo": ...}, ``Idempotency-Key`` honoured
  POST /v1/expenses/card/{expense_id}/receipt_upload   POST /v1/expenses/card/receipt_match
Auth: ``Authorization: Bearer <user token>``; scopes ``expenses.card.readonly`` (reads) and
``expenses.card`` (writes). Errors ``{"type", "message"}``: 400, 401 (unknown or revoked
token), 403 (expired token, missing scope), 404, 429, 500/503; 502/504 are a gateway's HTML.
Every ``/v1`` answer carries ``X-Brex-Trace-Id``. Query keys the endpoint does not know (e.g.
``status=APPROVED`` without ``[]``) are ignored, as a lenient server does, and counted in the
control view (``ignored_params``) so a test can catch a connector whose filter never applied.

Control API (ours):
  GET    /_sandbox/healthz
  POST   /_sandbox/accounts                        {name, billing_currency, scopes,
                                                    receipt_link_ttl_seconds, ...} -> token
  GET    /_sandbox/accounts/{id}                   settings, directory, faults, request counts
  POST   /_sandbox/accounts/{id}/tokens            {scopes} -> another token
  PUT    /_sandbox/accounts/{id}/tokens            {token, state: active|revoked|expired}
  POST   /_sandbox/accounts/{id}/expenses          {"expenses": [...]} or {"generate": {...}}
  GET    /_sandbox/accounts/{id}/expenses          every expense, parents and receipts named
  PATCH  /_sandbox/accounts/{id}/expenses/{eid}    change after the fact (updated_at moves)
  POST   /_sandbox/accounts/{id}/expenses/{eid}/refund   {amount?}
  POST   /_sandbox/accounts/{id}/expenses/{eid}/split    {parts: [minor units, ...]}
  GET    /_sandbox/accounts/{id}/memo-writes       every PUT: key, memo, replayed, applied
  GET    /_sandbox/accounts/{id}/list-calls        every list page served: limit, cursor
                                                    given, updated_at_start, ids, next_cursor
  GET    /_sandbox/accounts/{id}/receipt-events    link downloads (with status), uploads
  PUT    /_sandbox/accounts/{id}/faults            knobs (see ``FaultsIn``); DELETE resets
  GET    /_sandbox/accounts/{id}/requests          {"METHOD /path": count}; DELETE resets
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from sandbox.brex.generator import (
    EXPENSE_STATUSES,
    EXPENSE_TYPES,
    EXPONENTS,
    MERCHANTS,
    PAYMENT_STATUSES,
    generate_specs,
)
from sandbox.brex.s3 import Presigner, S3Error
from sandbox.brex.state import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    SCOPE_READ,
    SCOPE_WRITE,
    Account,
    ApiError,
    BrexFaults,
    BrexState,
    ExpenseRec,
    ListQuery,
    Receipt,
    StoredAnswer,
    bad_request,
    decode_cursor,
    default_faults,
    encode_cursor,
    iso_ms,
)
from sandbox.brex.wire import EXPANDABLE, control_expense, expandable_expense, plain_expense
from sandbox.control import add_knob_routes
from sandbox.findity.pdf import render_pdf
from sandbox.knobs import CommonFaultsIn, RateLimitIn, retry_after_value
from sandbox.wire import gateway_page

API_PREFIX = "/v1"
DOWNLOADS = "/_s3/brex-receipts"
UPLOADS = "/_s3/brex-uploads"
UPLOAD_LINK_SECONDS = 30 * 60  # [spec] receipt_upload / receipt_match
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # [spec]

_LIST_ARRAYS = {"user_id[]": "user_ids", "parent_expense_id[]": "parent_ids",
                "budget_id[]": "budget_ids", "spending_entity_id[]": "spending_entity_ids",
                "expense_type[]": "expense_types", "status[]": "statuses",
                "payment_status[]": "payment_statuses"}
_ENUMS = {"expense_type[]": EXPENSE_TYPES, "status[]": EXPENSE_STATUSES,
          "payment_status[]": PAYMENT_STATUSES}
_LIST_BOUNDS = {"purchased_at_start": "purchased_start", "purchased_at_end": "purchased_end",
                "updated_at_start": "updated_start", "updated_at_end": "updated_end"}
_ONE_EXPENSE_PARAMS = {"expand[]", "load_custom_fields"}
_INJECTED_TYPES = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
                   429: "TOO_MANY_REQUESTS", 500: "INTERNAL_SERVER_ERROR",
                   503: "SERVICE_UNAVAILABLE"}


# --- control API bodies ----------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Scope = Literal["expenses.card.readonly", "expenses.card"]
Currency = Literal[tuple(EXPONENTS)]  # type: ignore[valid-type]
Merchant = Literal[tuple(m.raw_descriptor for m in MERCHANTS)]  # type: ignore[valid-type]


class AccountIn(_Body):
    name: str = Field(default="Sandbox Inc.", min_length=1)
    billing_currency: Currency = "USD"
    scopes: list[Scope] = Field(default_factory=lambda: [SCOPE_READ, SCOPE_WRITE])
    receipt_link_ttl_seconds: int = Field(
        default=15 * 60, ge=1, le=7 * 24 * 3600,
        description="Life of receipt download links [spec: 15 minutes]; short in tests.")
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=1)


class TokenIn(_Body):
    scopes: list[Scope] = Field(default_factory=lambda: [SCOPE_READ, SCOPE_WRITE])


class TokenStateIn(_Body):
    token: str
    state: Literal["active", "revoked", "expired"]


class ExpenseIn(_Body):
    """One expense; amounts are integer minor units of their currency."""

    original_amount: int
    currency: Currency | None = Field(default=None, description="Default: the merchant's.")
    billing_amount: int | None = Field(
        default=None, description="In the account's currency; default: converted.")
    merchant: Merchant = MERCHANTS[0].raw_descriptor
    status: Literal[EXPENSE_STATUSES] = "APPROVED"  # type: ignore[valid-type]
    payment_status: Literal[PAYMENT_STATUSES] = "CLEARED"  # type: ignore[valid-type]
    expense_type: Literal[EXPENSE_TYPES] = "CARD"  # type: ignore[valid-type]
    memo: str | None = None
    category: str | None = None
    user_id: str | None = None
    receipts: int = Field(default=1, ge=0, le=10)
    purchased_at: datetime | None = None
    custom_fields: list[dict[str, Any]] = Field(default_factory=list)

    def spec(self) -> dict[str, Any]:
        spec = self.model_dump()
        if self.purchased_at is not None:
            spec["purchased_at"] = _utc(self.purchased_at)
        return spec


class GenerateIn(_Body):
    count: int = Field(default=10, ge=1, le=5000)
    seed: int = 1
    status: Literal[EXPENSE_STATUSES] | None = None  # type: ignore[valid-type]
    payment_status: Literal[PAYMENT_STATUSES] | None = None  # type: ignore[valid-type]
    expense_type: Literal[EXPENSE_TYPES] | None = None  # type: ignore[valid-type]
    splits: int = Field(default=0, ge=0, description="Split this many APPROVED expenses in two.")


class ExpensesIn(_Body):
    expenses: list[ExpenseIn] | None = None
    generate: GenerateIn | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ExpensesIn:
        if (self.expenses is None) == (self.generate is None):
            raise ValueError('give exactly one of "expenses" and "generate"')
        return self


class ExpensePatch(_Body):
    status: Literal[EXPENSE_STATUSES] | None = None  # type: ignore[valid-type]
    payment_status: Literal[PAYMENT_STATUSES] | None = None  # type: ignore[valid-type]
    original_amount: int | None = None
    billing_amount: int | None = None
    memo: str | None = None
    category: str | None = None


class RefundIn(_Body):
    amount: int | None = Field(default=None, gt=0, description="Billing minor units; "
                               "none: a full refund (payment_status REFUNDED).")


class SplitIn(_Body):
    parts: list[int] = Field(min_length=2)


class FaultsIn(CommonFaultsIn):
    """Every knob is optional; PUT replaces the whole set. ``rate_limit`` defaults to Brex's own
    1,000 requests per minute without ``Retry-After`` [doc]; ``null`` turns it off."""

    rate_limit: RateLimitIn | None = Field(
        default_factory=lambda: RateLimitIn(limit=1000, window_seconds=60, retry_after=False))
    cursor_loop: Literal["restart", "repeat"] | None = Field(
        default=None, description="restart: the last page's next_cursor leads back to the "
        "first page; repeat: every next_cursor is the cursor just used.")
    expired_links: bool = Field(default=False,
                                description="Receipt links are issued already expired.")
    list_lag_ms: int = Field(
        default=0, ge=0, le=600_000,
        description="A change shows in the list only this much later (with its earlier "
        "updated_at); GET by id shows it at once.")
    put_fail_after_apply: int = Field(
        default=0, ge=0, description="Apply the next N memo PUTs, then answer put_fail_status.")
    put_fail_status: Literal[500, 502, 503, 504] = 502

    def to_faults(self) -> BrexFaults:
        return BrexFaults(**self.common_kwargs(), cursor_loop=self.cursor_loop,
                          expired_links=self.expired_links, list_lag_ms=self.list_lag_ms,
                          put_fail_after_apply=self.put_fail_after_apply,
                          put_fail_status=self.put_fail_status)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- the app ---------------------------------------------------------------------------------


def create_app(state: BrexState | None = None, presigner: Presigner | None = None) -> FastAPI:
    state = state or BrexState()
    presigner = presigner or Presigner()
    app = FastAPI(title="Brex sandbox", docs_url="/_sandbox/docs",
                  openapi_url="/_sandbox/openapi.json", redoc_url=None)
    app.state.brex = state

    @app.middleware("http")
    async def trace_id(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        if request.url.path.startswith(API_PREFIX + "/"):
            response.headers["X-Brex-Trace-Id"] = uuid.uuid4().hex
        return response

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        if exc.status in (502, 504):
            return gateway_page(exc.status, exc.headers)
        return JSONResponse({"type": exc.type, "message": exc.message}, exc.status,
                            headers=exc.headers)

    @app.exception_handler(S3Error)
    async def s3_error(_request: Request, exc: S3Error) -> Response:
        return Response(exc.xml(), exc.status, media_type="application/xml")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/_sandbox/"):
            return JSONResponse({"detail": exc.detail}, exc.status_code)
        kind = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "ERROR")
        return JSONResponse({"type": kind, "message": str(exc.detail)}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def control_validation(_request: Request, exc: RequestValidationError) -> Response:
        # Only the control API has pydantic bodies; Brex endpoints validate by hand.
        return JSONResponse({"detail": exc.errors()}, 400)

    app.include_router(_brex_api(state, presigner), prefix=API_PREFIX)
    app.include_router(_s3_links(state, presigner))
    app.include_router(_control_api(state), prefix="/_sandbox")
    return app


def _root(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _receipt_link(request: Request, account: Account, presigner: Presigner,
                  receipt: Receipt) -> str:
    path = f"{DOWNLOADS}/{receipt.id}/{quote(receipt.filename)}"
    ttl = account.receipt_link_ttl_seconds
    issued = datetime.now(UTC)
    if account.faults.expired_links:
        issued -= timedelta(seconds=ttl + 5)
    query = presigner.query("GET", path, issued=issued, expires_seconds=ttl)
    return f"{_root(request)}{path}?{query}"


def _parse_time(name: str, raw: str) -> datetime:
    """RFC 3339 date-time [spec]; [assumed] no offset means UTC; a date alone is refused."""
    text = raw.strip()
    try:
        if "T" not in text:
            raise ValueError(text)
        return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError as exc:
        raise bad_request(f"{name} must be an RFC 3339 date-time, got {raw!r}") from exc


def _bool(name: str, raw: str) -> bool:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise bad_request(f"{name} must be true or false")


# --- Brex API --------------------------------------------------------------------------------


def _brex_api(state: BrexState, presigner: Presigner) -> APIRouter:
    router = APIRouter()

    async def enter(request: Request, scope: str) -> Account:
        """Token (401/403), count, faults (as Brex's edge would), then the scope (403)."""
        account, token = state.authenticate(request.headers.get("authorization", ""))
        with state.lock:
            account.requests.add(request, API_PREFIX)
            decision = account.faults.decide(request.method, request.url.path, time.monotonic())
        if decision.latency_seconds:
            await asyncio.sleep(decision.latency_seconds)
        injected = decision.injected
        if injected is not None:
            headers = ({"Retry-After": retry_after_value(injected.retry_after)}
                       if injected.retry_after is not None else {})
            message = ("Rate limit exceeded" if injected.status == 429
                       else f"Injected fault: HTTP {injected.status}")
            raise ApiError(injected.status, _INJECTED_TYPES.get(injected.status, "ERROR"),
                           message, headers)
        allowed = {SCOPE_READ, SCOPE_WRITE} if scope == SCOPE_READ else {SCOPE_WRITE}
        if not token.scopes & allowed:
            raise ApiError(403, "FORBIDDEN", f"The token lacks the scope {scope}")
        return account

    def params_of(request: Request, account: Account, known: set[str]) -> dict[str, list[str]]:
        params: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            if key in known:
                params.setdefault(key, []).append(value)
            else:
                with state.lock:
                    account.ignored_params[key] += 1
        return params

    def expansion(params: dict[str, list[str]]) -> tuple[set[str], bool]:
        expand = set(params.get("expand[]", []))
        unknown = expand - set(EXPANDABLE)
        if unknown:
            raise bad_request(f"Unknown expand[] value(s): {', '.join(sorted(unknown))}; "
                              f"expandable: {', '.join(EXPANDABLE)}")
        custom = params.get("load_custom_fields")
        return expand, _bool("load_custom_fields", custom[-1]) if custom else False

    def single(params: dict[str, list[str]], name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    async def list_expenses(request: Request, card_only: bool) -> Response:
        account = await enter(request, SCOPE_READ)
        arrays = dict(_LIST_ARRAYS)
        if card_only:
            del arrays["expense_type[]"]
        known = {"expand[]", "load_custom_fields", "cursor", "limit", *arrays, *_LIST_BOUNDS}
        params = params_of(request, account, known)
        raw_limit = single(params, "limit")
        try:
            limit = DEFAULT_LIMIT if raw_limit is None else int(raw_limit)
        except ValueError as exc:
            raise bad_request(f"limit must be an integer, got {raw_limit!r}") from exc
        if not 1 <= limit <= MAX_LIMIT:
            raise bad_request(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        filters: dict[str, Any] = {}
        for name, attribute in arrays.items():
            values = params.get(name, [])
            bad = [v for v in values if name in _ENUMS and v not in _ENUMS[name]]
            if bad:
                raise bad_request(f"Invalid {name} value(s): {', '.join(bad)}")
            filters[attribute] = frozenset(values)
        if card_only:
            filters["expense_types"] = frozenset({"CARD"})
        for name, attribute in _LIST_BOUNDS.items():
            raw = single(params, name)
            filters[attribute] = _parse_time(name, raw) if raw else None
        query = ListQuery(**filters)
        expand, custom = expansion(params)
        fingerprint = query.fingerprint(account.id)
        cursor = single(params, "cursor")
        after = decode_cursor(cursor, fingerprint) if cursor else 0
        page, next_after = state.list_page(account, query, after, limit)
        loop = account.faults.cursor_loop
        if loop == "repeat":
            next_cursor: str | None = cursor or encode_cursor(0, fingerprint)
        elif next_after is None:
            next_cursor = encode_cursor(0, fingerprint) if loop == "restart" else None
        else:
            next_cursor = encode_cursor(next_after, fingerprint)
        with state.lock:
            # One record per page served, so a test can count the pages of one walk (the walk
            # starts with a page asked for without a cursor) and see each page's limit.
            account.list_calls.append({
                "at": iso_ms(datetime.now(UTC)), "path": request.url.path, "limit": limit,
                "cursor": cursor is not None, "updated_at_start": single(params,
                                                                         "updated_at_start"),
                "parent_filter": bool(query.parent_ids), "ids": [e.id for e in page],
                "next_cursor": next_cursor is not None})
        return JSONResponse({
            "next_cursor": next_cursor,
            "items": [_expense_json(request, account, e, expand, custom) for e in page],
        })

    def _expense_json(request: Request, account: Account, e: ExpenseRec, expand: set[str],
                      custom: bool) -> dict[str, Any]:
        return expandable_expense(
            e, account, expand, custom, lambda r: _receipt_link(request, account, presigner, r))

    async def one_expense(request: Request, expense_id: str, card_only: bool) -> Response:
        account = await enter(request, SCOPE_READ)
        params = params_of(request, account, _ONE_EXPENSE_PARAMS)
        expand, custom = expansion(params)
        with state.lock:
            expense = state.expense(account, expense_id)
            if card_only and expense.expense_type != "CARD":  # [assumed]
                raise ApiError(404, "NOT_FOUND", f"Card expense {expense_id} not found")
            return JSONResponse(_expense_json(request, account, expense, expand, custom))

    @router.get("/expenses")
    async def list_all(request: Request) -> Response:
        return await list_expenses(request, card_only=False)

    @router.get("/expenses/card")
    async def list_card(request: Request) -> Response:
        return await list_expenses(request, card_only=True)

    @router.get("/expenses/card/{expense_id}")
    async def get_card_expense(request: Request, expense_id: str) -> Response:
        return await one_expense(request, expense_id, card_only=True)

    @router.get("/expenses/{expense_id}")
    async def get_expense(request: Request, expense_id: str) -> Response:
        return await one_expense(request, expense_id, card_only=False)

    async def json_object(request: Request, allowed: set[str], required: str) -> dict[str, Any]:
        """A JSON object with only ``allowed`` keys, ``required`` present [assumed strict]."""
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request("The request body must be JSON") from exc
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object")
        unknown = set(body) - allowed
        if unknown:
            raise bad_request(f"Unknown field(s): {', '.join(sorted(unknown))}")
        if required not in body:
            raise bad_request(f"{required} is required")
        return body

    def ascii_text(name: str, value: Any, nullable: bool) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise bad_request(f"{name} must be a string")
        if not value.isascii():  # [doc: error_codes] free text in bodies is ASCII only
            raise bad_request(f"{name} must contain ASCII characters only")
        return value

    def fingerprint_of(request: Request, body: dict[str, Any]) -> str:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(f"{request.method} {request.url.path} {canonical}".encode()
                              ).hexdigest()

    @router.put("/expenses/card/{expense_id}")
    async def update_expense(request: Request, expense_id: str) -> Response:
        account = await enter(request, SCOPE_WRITE)
        body = await json_object(request, {"memo"}, "memo")
        memo = ascii_text("memo", body["memo"], nullable=True)
        key = request.headers.get("idempotency-key")
        status, answer, replayed = state.update_memo(
            account, expense_id, memo, key, fingerprint_of(request, body), plain_expense)
        if not replayed:
            failed = state.take_put_failure(account)
            if failed is not None:  # applied (and stored for the key); the answer is lost
                raise ApiError(failed, _INJECTED_TYPES.get(failed, "ERROR"),
                               "Upstream failed after the update was applied")
        return JSONResponse(answer, status)

    async def new_upload(request: Request, expense_id: str | None) -> Response:
        account = await enter(request, SCOPE_WRITE)
        body = await json_object(request, {"receipt_name"}, "receipt_name")
        name = ascii_text("receipt_name", body["receipt_name"], nullable=False)
        if not name:
            raise bad_request("receipt_name must not be empty")
        key = request.headers.get("idempotency-key")
        fingerprint = fingerprint_of(request, body)
        with state.lock:
            stored = state.stored_answer(account, key)
            if stored is not None:
                return JSONResponse(stored.body, stored.status)
            if expense_id is not None:
                state.expense(account, expense_id)  # 404
        upload = state.create_upload(account, expense_id, name)
        path = f"{UPLOADS}/{upload.id}/{quote(name)}"
        query = presigner.query("PUT", path, issued=datetime.now(UTC),
                                expires_seconds=UPLOAD_LINK_SECONDS)
        answer = {"id": upload.id, "uri": f"{_root(request)}{path}?{query}"}
        if key:
            with state.lock:
                account.idempotency[key] = StoredAnswer(fingerprint, 201, answer,
                                                        time.monotonic())
        return JSONResponse(answer, 201)

    # Registered before /expenses/card/{expense_id}/... so "receipt_match" is not an id.
    @router.post("/expenses/card/receipt_match")
    async def receipt_match(request: Request) -> Response:
        return await new_upload(request, None)

    @router.post("/expenses/card/{expense_id}/receipt_upload")
    async def receipt_upload(request: Request, expense_id: str) -> Response:
        return await new_upload(request, expense_id)

    return router


# --- the pre-signed links --------------------------------------------------------------------


def _s3_links(state: BrexState, presigner: Presigner) -> APIRouter:
    router = APIRouter()

    @router.get(DOWNLOADS + "/{receipt_id}/{filename}")
    async def download(request: Request, receipt_id: str, filename: str) -> Response:
        found = state.receipt(receipt_id)
        event: dict[str, Any] = {"at": iso_ms(datetime.now(UTC)), "event": "download",
                                 "receipt_id": receipt_id}
        try:
            presigner.verify("GET", request.url.path, dict(request.query_params),
                             request.headers.get("authorization"), datetime.now(UTC))
            if found is None:
                raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
        except S3Error as exc:
            if found is not None:
                with state.lock:
                    found[0].receipt_events.append({**event, "status": exc.status,
                                                    "error": exc.code})
            raise
        account, expense, receipt = found
        content = receipt.content
        if content is None:
            amount = expense.original_amount
            content = render_pdf([
                f"Receipt {receipt.filename}",
                f"Merchant: {expense.merchant['raw_descriptor'] if expense.merchant else '-'}",
                f"Amount: {amount['amount']} minor units {amount['currency']}",
                f"Purchased: {iso_ms(expense.purchased_at)}",
            ])
        with state.lock:
            account.receipt_events.append({**event, "status": 200, "bytes": len(content)})
        return Response(content, media_type=receipt.content_type, headers={
            "ETag": f'"{hashlib.md5(content).hexdigest()}"',  # noqa: S324 - S3's ETag is MD5
            "x-amz-request-id": uuid.uuid4().hex[:16].upper()})

    @router.put(UPLOADS + "/{upload_id}/{filename}")
    async def upload(request: Request, upload_id: str, filename: str) -> Response:
        presigner.verify("PUT", request.url.path, dict(request.query_params),
                         request.headers.get("authorization"), datetime.now(UTC))
        pending = state.uploads.get(upload_id)
        if pending is None:
            raise S3Error(404, "NoSuchUpload", "The specified upload does not exist.")
        content = await request.body()
        if len(content) > MAX_UPLOAD_BYTES:
            raise S3Error(400, "EntityTooLarge",
                          "Your proposed upload exceeds the maximum allowed size")
        state.complete_upload(pending, content,
                              request.headers.get("content-type", "application/octet-stream"))
        return Response(status_code=200, headers={
            "ETag": f'"{hashlib.md5(content).hexdigest()}"'})  # noqa: S324

    return router


# --- control API -----------------------------------------------------------------------------


def _control_api(state: BrexState) -> APIRouter:
    router = APIRouter()

    def account_or_404(account_id: str) -> Account:
        try:
            return state.account(account_id)
        except KeyError as exc:
            raise StarletteHTTPException(404, f"no account {account_id}") from exc

    def expense_view(account: Account, expense: ExpenseRec) -> dict[str, Any]:
        with state.lock:
            return control_expense(expense, account)

    def expense_or_404(account: Account, expense_id: str) -> None:
        if expense_id not in account.expenses:
            raise StarletteHTTPException(404, f"no expense {expense_id}")

    @router.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "accounts": len(state.accounts)}

    @router.post("/accounts", status_code=201)
    async def create_account(request: Request, body: AccountIn | None = None) -> dict[str, Any]:
        body = body or AccountIn()
        account, token = state.create_account(body.name, body.billing_currency,
                                              body.receipt_link_ttl_seconds,
                                              body.idempotency_ttl_seconds, body.scopes)
        return {"account_id": account.id, "name": account.name, "token": token.value,
                "scopes": sorted(token.scopes), "base_url": _root(request),
                "billing_currency": account.billing_currency,
                "users": account.directory.users}

    @router.get("/accounts/{account_id}")
    async def account_view(account_id: str) -> dict[str, Any]:
        account = account_or_404(account_id)
        with state.lock:
            return account.view()

    @router.post("/accounts/{account_id}/tokens", status_code=201)
    async def add_token(account_id: str, body: TokenIn) -> dict[str, Any]:
        token = state.add_token(account_or_404(account_id), body.scopes)
        return {"token": token.value, "scopes": sorted(token.scopes)}

    @router.put("/accounts/{account_id}/tokens")
    async def token_state(account_id: str, body: TokenStateIn) -> dict[str, Any]:
        try:
            token = state.set_token_state(account_or_404(account_id), body.token, body.state)
        except KeyError as exc:
            raise StarletteHTTPException(404, str(exc)) from exc
        return {"state": token.state, "scopes": sorted(token.scopes)}

    @router.post("/accounts/{account_id}/expenses", status_code=201)
    async def add_expenses(account_id: str, body: ExpensesIn) -> dict[str, Any]:
        account = account_or_404(account_id)
        if body.generate is not None:
            g = body.generate
            specs = generate_specs(g.count, g.seed, account.directory, status=g.status,
                                   payment_status=g.payment_status, expense_type=g.expense_type)
        else:
            specs = [e.spec() for e in body.expenses or []]
        made = state.add_expenses(account, specs)
        children: dict[str, list[str]] = {}
        if body.generate is not None and body.generate.splits:
            splittable = [e for e in made if e.status == "APPROVED"
                          and e.original_amount["amount"] >= 2][: body.generate.splits]
            for parent in splittable:
                total = parent.original_amount["amount"]
                parts = [total * 3 // 5, total - total * 3 // 5]
                children[parent.id] = [c.id for c in state.split(account, parent.id, parts)]
        return {"expense_ids": [e.id for e in made], "split_children": children,
                "expenses": [expense_view(account, e) for e in made]}

    @router.get("/accounts/{account_id}/expenses")
    async def expenses(account_id: str) -> list[dict[str, Any]]:
        account = account_or_404(account_id)
        with state.lock:
            return [control_expense(e, account) for e in account.expenses.values()]

    @router.patch("/accounts/{account_id}/expenses/{expense_id}")
    async def change_expense(account_id: str, expense_id: str,
                             body: ExpensePatch) -> dict[str, Any]:
        account = account_or_404(account_id)
        expense_or_404(account, expense_id)
        expense = state.change_expense(account, expense_id, body.model_dump(exclude_unset=True))
        return expense_view(account, expense)

    @router.post("/accounts/{account_id}/expenses/{expense_id}/refund")
    async def refund(account_id: str, expense_id: str, body: RefundIn) -> dict[str, Any]:
        account = account_or_404(account_id)
        expense_or_404(account, expense_id)
        original, credit = state.refund(account, expense_id, body.amount)
        return {"expense": expense_view(account, original),
                "credit": expense_view(account, credit) if credit else None}

    @router.post("/accounts/{account_id}/expenses/{expense_id}/split", status_code=201)
    async def split(account_id: str, expense_id: str, body: SplitIn) -> dict[str, Any]:
        account = account_or_404(account_id)
        expense_or_404(account, expense_id)
        try:
            children = state.split(account, expense_id, body.parts)
        except ValueError as exc:
            raise StarletteHTTPException(400, str(exc)) from exc
        return {"parent": expense_view(account, account.expenses[expense_id]),
                "children": [expense_view(account, c) for c in children]}

    @router.get("/accounts/{account_id}/memo-writes")
    async def memo_writes(account_id: str) -> list[dict[str, Any]]:
        account = account_or_404(account_id)
        with state.lock:
            return list(account.memo_writes)

    @router.get("/accounts/{account_id}/list-calls")
    async def list_calls(account_id: str) -> list[dict[str, Any]]:
        account = account_or_404(account_id)
        with state.lock:
            return list(account.list_calls)

    @router.get("/accounts/{account_id}/receipt-events")
    async def receipt_events(account_id: str) -> list[dict[str, Any]]:
        account = account_or_404(account_id)
        with state.lock:
            return list(account.receipt_events)

    def put_faults(account: Account, body: FaultsIn | None) -> dict[str, Any]:
        with state.lock:
            account.faults = body.to_faults() if body else default_faults()
            return account.faults.view()

    add_knob_routes(router, "/accounts/{account_id}", str, account_or_404, state.lock, FaultsIn,
                    put_faults, on_reset_requests=lambda account: account.ignored_params.clear())

    return router
