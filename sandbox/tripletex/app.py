"""The Tripletex sandbox's web layer: the Tripletex API subset under ``/v2`` and the control
API under ``/_sandbox/``.

Tripletex API (what ``shared.integrations.tripletex`` calls):
  PUT  /v2/token/session/:create          GET /v2/token/session/>whoAmI
  GET  /v2/ledger/account  /ledger/vatType  /ledger/voucherType  /currency  /department  /project
  POST /v2/ledger/voucher                  GET /v2/ledger/voucher/>externalVoucherNumber
  GET  /v2/ledger/voucher?dateFrom&dateTo  (the list search)
  GET  /v2/ledger/voucher/{id}             POST /v2/ledger/voucher/{voucherId}/attachment
Every answer carries ``x-tlx-request-id`` and ``X-Rate-Limit-*`` headers.

Control API (ours, for tests and the dev stack):
  GET    /_sandbox/healthz
  POST   /_sandbox/companies                         {"name"} -> ids and tokens
  GET    /_sandbox/companies/{id}/vouchers           every voucher, postings, attachments
  PUT    /_sandbox/companies/{id}/faults             fault knobs (see ``FaultsIn``)
  DELETE /_sandbox/companies/{id}/faults
  GET    /_sandbox/companies/{id}/requests           {"METHOD /path-template": count}
  DELETE /_sandbox/companies/{id}/requests           reset the counts
  DELETE /_sandbox/companies/{id}/sessions           expire every session early (-> 401)
  PATCH  /_sandbox/companies/{id}/accounts/{number}  change an account (ledger type, VAT lock...)

Simulated waits are ``await asyncio.sleep`` in async endpoints, so a held request never
blocks the others.

Answers after a stored voucher (``commit_then_*``) are what a client cannot tell from a failure:
a gateway's 502/504 page, a 2xx whose body is cut off, a connection closed before the body.
``search_delay_ms`` makes the searches lag behind the store (GET by id does not), as a search
index does; ``post_delay_ms`` is a slow commit, abandoned if the client leaves before it. The
session refusal (a rotated employee token) answers every new session 401/403 for a while.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from sandbox.control import add_knob_routes
from sandbox.tripletex import wire
from sandbox.tripletex.ledger import (
    ATTACHMENT_TYPES,
    CURRENCIES,
    DEFAULT_RATE_LIMIT,
    DEFAULT_RATE_WINDOW,
    AccountRec,
    AttachmentRec,
    Company,
    FailRule,
    Faults,
    Ledger,
    NamedRec,
    NotFound,
    PostingRec,
    RateLimitRule,
    SessionRefusal,
    ValidationFailed,
    VatTypeRec,
    VoucherRec,
)
from sandbox.wire import CutOffAnswer, Stamp, gateway_page

API_PREFIX = "/v2"


class ApiError(Exception):
    """An answer in Tripletex's error shape."""

    def __init__(
        self,
        status: int,
        *,
        code: int | None = None,
        message: str | None = None,
        validation: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or str(status))
        self.status = status
        self.code = code
        self.message = message
        self.validation = validation
        self.headers = headers or {}


# --- control API models ----------------------------------------------------------------------


class CompanyIn(BaseModel):
    name: str = "Sandbox AS"


class AccountChangeIn(BaseModel):
    ledger_type: Literal["GENERAL", "CUSTOMER", "VENDOR", "EMPLOYEE", "ASSET"] | None = None
    vat_code: str | None = None
    vat_locked: bool | None = None
    requires_department: bool | None = None
    requires_project: bool | None = None


class FailRuleIn(BaseModel):
    status: int = Field(ge=400, le=599)
    count: int = Field(default=1, ge=1)
    method: str | None = None
    path_contains: str | None = None
    retry_after: float | None = Field(default=None, ge=0)
    reset_header: bool = False
    reset_seconds: int = Field(default=5, ge=0, description="X-Rate-Limit-Reset when reset_header")


class RateLimitIn(BaseModel):
    limit: int = Field(ge=1)
    window_seconds: float = Field(default=60.0, gt=0)
    send_reset_header: bool = True


class SessionRefusalIn(BaseModel):
    status: Literal[401, 403] = 401
    seconds: float = Field(default=10.0, gt=0, description="How long sessions are refused.")
    after_post: bool = Field(
        default=False,
        description="Open the window when the next voucher POST is stored (before its answer), "
        "not when the knob is set.",
    )


class FaultsIn(BaseModel):
    """Every knob is optional; PUT replaces the whole set."""

    latency_ms: int = Field(default=0, ge=0, description="Added to every request of the company.")
    error_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of 503s on voucher POSTs."
    )
    seed: int = Field(default=1234, description="Seed of the error_rate RNG.")
    fail_next: list[FailRuleIn] = Field(default_factory=list)
    rate_limit: RateLimitIn | None = None
    commit_then_fail: int = Field(
        default=0, ge=0, description="Store the voucher, then answer commit_then_fail_status."
    )
    commit_then_fail_status: Literal[500, 502, 503, 504] = Field(
        default=500,
        description="500/503: Tripletex's error body; 502/504: a gateway's HTML page (the gateway "
        "gave up while Tripletex committed).",
    )
    commit_then_garble: int = Field(
        default=0, ge=0, description="Store the voucher, then answer 201 with a cut-off body."
    )
    commit_then_drop: int = Field(
        default=0,
        ge=0,
        description="Store the voucher, then close the connection after the status line, before "
        "the body.",
    )
    post_hold_ms: int = Field(default=0, ge=0, description="Store the voucher, wait, then answer.")
    post_delay_ms: int = Field(
        default=0,
        ge=0,
        description="Wait, then store and answer (a slow commit); a client gone by then gets "
        "nothing stored.",
    )
    search_delay_ms: int = Field(
        default=0,
        ge=0,
        description="A voucher stored now shows in the searches (>externalVoucherNumber, the "
        "list) only this much later; GET by id and the control API show it at once.",
    )
    session_refusal: SessionRefusalIn | None = Field(
        default=None, description="Refuse new sessions (401/403) for a while; see SessionRefusal."
    )

    def to_faults(self) -> Faults:
        return Faults(
            latency_ms=self.latency_ms,
            error_rate=self.error_rate,
            seed=self.seed,
            fail_next=[FailRule(**rule.model_dump()) for rule in self.fail_next],
            rate_limit=RateLimitRule(**self.rate_limit.model_dump()) if self.rate_limit else None,
            commit_then_fail=self.commit_then_fail,
            commit_then_fail_status=self.commit_then_fail_status,
            commit_then_garble=self.commit_then_garble,
            commit_then_drop=self.commit_then_drop,
            post_hold_ms=self.post_hold_ms,
            post_delay_ms=self.post_delay_ms,
            search_delay_ms=self.search_delay_ms,
            session_refusal=SessionRefusal(**self.session_refusal.model_dump())
            if self.session_refusal
            else None,
        )


# --- the app ---------------------------------------------------------------------------------


class _Stamp(Stamp):
    """Every answer's ``x-tlx-request-id`` and every API answer's ``X-Rate-Limit-*`` headers
    (the defaults when the endpoint set none), and the server-wide latency; an answer cut off by
    ``commit_then_drop`` stays cut off."""

    api_prefix = API_PREFIX + "/"

    def begin(self, state: dict[str, Any]) -> None:
        state["request_id"] = str(uuid.uuid4())

    def stamp(self, state: dict[str, Any], headers: MutableHeaders, is_api: bool) -> None:
        headers["x-tlx-request-id"] = state["request_id"]
        if is_api:
            rate_headers = state.get("rate_headers") or {
                "X-Rate-Limit-Limit": str(DEFAULT_RATE_LIMIT),
                "X-Rate-Limit-Remaining": str(DEFAULT_RATE_LIMIT),
                "X-Rate-Limit-Reset": str(int(DEFAULT_RATE_WINDOW)),
            }
            for name, value in rate_headers.items():
                headers[name] = value


def create_app(*, latency_ms: int = 0, ledger: Ledger | None = None) -> FastAPI:
    """``latency_ms`` delays every Tripletex API request (the dev stack's "slow Tripletex")."""
    ledger = ledger or Ledger()
    app = FastAPI(title="Tripletex sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ledger = ledger
    app.add_middleware(_Stamp, latency_ms=latency_ms)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        body = wire.error_body(
            exc.status,
            request.state.request_id,
            code=exc.code,
            message=exc.message,
            validation=exc.validation,
        )
        return wire.respond(body, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        request_id = getattr(request.state, "request_id", str(uuid.uuid4()))
        return wire.respond(wire.error_body(exc.status_code, request_id), exc.status_code)

    app.include_router(_tripletex_api(ledger), prefix=API_PREFIX)
    app.include_router(_control_api(ledger), prefix="/_sandbox")
    return app


# --- helpers shared by the API endpoints -----------------------------------------------------


def _list_param(request: Request, name: str) -> list[str] | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _paging(request: Request) -> tuple[int, int]:
    try:
        start = int(request.query_params.get("from", "0"))
        count = int(request.query_params.get("count", "1000"))
    except ValueError as exc:
        raise ApiError(422, code=21000, validation=[("from/count", "Må være et heltall.")]) from exc
    return max(0, start), max(0, count)


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        username, _, password = base64.b64decode(encoded).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return username, password


def _ref(entity_id: int | None, kind: str) -> dict[str, Any] | None:
    if entity_id is None:
        return None
    return {"id": entity_id, "url": f"sandbox/v2/{kind}/{entity_id}"}


# --- JSON shapes of the Tripletex API --------------------------------------------------------


def _vat_type_json(vat: VatTypeRec) -> dict[str, Any]:
    return {
        "id": vat.id,
        "version": 0,
        "url": f"sandbox/v2/ledger/vatType/{vat.id}",
        "name": vat.name,
        "number": vat.number,
        "displayName": f"{vat.number} {vat.name}",
        "percentage": vat.percentage,
        "deductionPercentage": Decimal("100"),
    }


def _account_json(company: Company, account: AccountRec) -> dict[str, Any]:
    # ``fields`` is tolerated but not applied: the VAT type is always expanded, as with vatType(*).
    vat = company.vat_types.get(account.vat_type_id) if account.vat_type_id else None
    return {
        "id": account.id,
        "version": 0,
        "url": f"sandbox/v2/ledger/account/{account.id}",
        "number": account.number,
        "numberPretty": str(account.number),
        "name": account.name,
        "description": "",
        "ledgerType": account.ledger_type,
        "vatType": _vat_type_json(vat) if vat else None,
        "vatLocked": account.vat_locked,
        "legalVatTypes": [_ref(i, "ledger/vatType") for i in account.legal_vat_type_ids],
        "requiresDepartment": account.requires_department,
        "requiresProject": account.requires_project,
        "isInactive": False,
        "displayName": f"{account.number} {account.name}",
    }


def _named_json(rec: NamedRec, kind: str, number_field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rec.id,
        "version": 0,
        "url": f"sandbox/v2/{kind}/{rec.id}",
        "name": rec.name,
    }
    if number_field:
        body[number_field] = rec.number
    body["displayName"] = f"{rec.number} {rec.name}" if rec.number else rec.name
    return body


def _posting_json(voucher: VoucherRec, posting: PostingRec) -> dict[str, Any]:
    return {
        "id": posting.id,
        "version": 0,
        "url": f"sandbox/v2/ledger/posting/{posting.id}",
        "voucher": _ref(voucher.id, "ledger/voucher"),
        "date": posting.date.isoformat(),
        "description": posting.description,
        "account": _ref(posting.account_id, "ledger/account"),
        "customer": _ref(posting.customer_id, "customer"),
        "supplier": _ref(posting.supplier_id, "supplier"),
        "employee": _ref(posting.employee_id, "employee"),
        "project": _ref(posting.project_id, "project"),
        "department": _ref(posting.department_id, "department"),
        "vatType": _ref(posting.vat_type_id, "ledger/vatType"),
        "amount": posting.amount,
        "amountCurrency": posting.amount,
        "amountGross": posting.amount_gross,
        "amountGrossCurrency": posting.amount_gross_currency,
        "currency": _ref(posting.currency_id, "currency"),
        "row": posting.row,
        "systemGenerated": posting.system_generated,
    }


def _voucher_json(voucher: VoucherRec) -> dict[str, Any]:
    number = voucher.number or None
    return {
        "id": voucher.id,
        "version": voucher.version,
        "url": f"sandbox/v2/ledger/voucher/{voucher.id}",
        "date": voucher.date.isoformat(),
        "number": voucher.number,
        "tempNumber": voucher.temp_number,
        "year": voucher.date.year,
        "description": voucher.description,
        "voucherType": _ref(voucher.voucher_type_id, "ledger/voucherType"),
        "reverseVoucher": None,
        "postings": [_posting_json(voucher, p) for p in voucher.postings],
        "document": None,
        "attachment": _ref(voucher.id * 10 + 1, "document") if voucher.attachments else None,
        "externalVoucherNumber": voucher.external_voucher_number,
        "ediDocument": None,
        "vendorInvoiceNumber": None,
        "displayName": f"{number}-{voucher.date.year}"
        if number
        else f"Foreløpig {voucher.temp_number}",
        "numberAsString": f"{number}-{voucher.date.year}" if number else "",
    }


def _control_voucher_json(company: Company, voucher: VoucherRec) -> dict[str, Any]:
    """The control API's view: account numbers instead of ids, amounts as exact strings."""

    def number_of(table: dict[int, NamedRec], entity_id: int | None) -> str | None:
        return table[entity_id].number if entity_id in table else None

    postings = []
    for posting in sorted(voucher.postings, key=lambda p: (p.row == 0, p.row)):
        account = company.accounts[posting.account_id]
        vat = company.vat_types.get(posting.vat_type_id) if posting.vat_type_id else None
        currency = next(code for code, (cid, _) in CURRENCIES.items() if cid == posting.currency_id)
        postings.append(
            {
                "row": posting.row,
                "accountNumber": str(account.number),
                "accountName": account.name,
                "description": posting.description,
                "amount": str(posting.amount),
                "amountGross": str(posting.amount_gross),
                "amountGrossCurrency": str(posting.amount_gross_currency),
                "currency": currency,
                "vatType": vat.number if vat else None,
                "department": number_of(company.departments, posting.department_id),
                "project": number_of(company.projects, posting.project_id),
                "supplierId": posting.supplier_id,
                "customerId": posting.customer_id,
                "employeeId": posting.employee_id,
                "systemGenerated": posting.system_generated,
            }
        )
    voucher_type = (
        company.voucher_types.get(voucher.voucher_type_id) if voucher.voucher_type_id else None
    )
    return {
        "id": voucher.id,
        "number": voucher.number or None,
        "tempNumber": voucher.temp_number,
        "year": voucher.date.year,
        "date": voucher.date.isoformat(),
        "description": voucher.description,
        "externalVoucherNumber": voucher.external_voucher_number,
        "voucherType": voucher_type.name if voucher_type else None,
        "sentToLedger": voucher.sent_to_ledger,
        "createdAt": voucher.created_at.isoformat(),
        "postings": postings,
        "attachments": [
            {"filename": a.filename, "contentType": a.content_type, "size": a.size}
            for a in voucher.attachments
        ],
    }


# --- the Tripletex API -----------------------------------------------------------------------


def _tripletex_api(ledger: Ledger) -> APIRouter:
    router = APIRouter()

    async def enter(request: Request, company: Company, employee_token: str) -> None:
        """What happens to every identified request before its endpoint's work: counting,
        latency, the rate limit and queued failures (``fail_next``)."""
        ledger.count_request(company, request, API_PREFIX)
        faults = company.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        allowed, headers = ledger.rate_check(company, employee_token)
        request.state.rate_headers = headers
        if not allowed:
            raise ApiError(429)
        rule = ledger.take_fail_rule(company, request.method, request.url.path)
        if rule is not None:
            _raise_fail_rule(request, rule, headers)

    def authenticate(request: Request) -> tuple[Company, str]:
        """Basic auth: user ``0`` (or the company id), password = a live session token."""
        credentials = _basic_credentials(request)
        if credentials is None:
            raise ApiError(401, message="Autentisering mangler (Basic auth med sesjonstoken).")
        username, token = credentials
        session = ledger.session(token)
        if session is None:
            raise ApiError(401, message="Ugyldig sesjonstoken.")
        company = ledger.company(session.company_id)
        if session.revoked or datetime.now(UTC).date() >= session.expires_on:
            ledger.count_request(company, request, API_PREFIX)
            raise ApiError(401, message="Sesjonstokenet er utløpt.")
        if username not in ("0", company.id):
            ledger.count_request(company, request, API_PREFIX)
            raise ApiError(403, message=f"Ingen tilgang til selskap {username}.")
        return company, session.employee_token

    async def authed(request: Request) -> Company:
        company, employee_token = authenticate(request)
        await enter(request, company, employee_token)
        return company

    # sessions ----------------------------------------------------------------------------

    @router.put("/token/session/:create")
    async def create_session(request: Request) -> Response:
        params = request.query_params
        missing = [
            (name, "Kan ikke være null.")
            for name in ("consumerToken", "employeeToken", "expirationDate")
            if not params.get(name)
        ]
        if missing:
            raise ApiError(422, code=21000, validation=missing)
        try:
            expires_on = date.fromisoformat(params["expirationDate"])
        except ValueError as exc:
            raise ApiError(
                422, code=21000, validation=[("expirationDate", "Ugyldig dato.")]
            ) from exc
        company = ledger.company_by_tokens(params["consumerToken"], params["employeeToken"])
        if company is None:
            raise ApiError(403, message="Ugyldig consumerToken eller employeeToken.")
        await enter(request, company, company.employee_token)
        refused = ledger.session_refused(company)
        if refused is not None:  # the token was rotated; the operator has not caught up yet
            raise ApiError(refused, message="Ugyldig consumerToken eller employeeToken.")
        if expires_on <= datetime.now(UTC).date():
            raise ApiError(
                422, validation=[("expirationDate", "Utløpsdatoen må være etter dagens dato.")]
            )
        token = ledger.create_session(company, expires_on)
        return wire.respond(
            {
                "value": {
                    "id": abs(hash(token)) % 10_000_000,
                    "version": 0,
                    "url": "sandbox/v2/token/session",
                    "consumerToken": {"id": 1},
                    "employeeToken": {"id": company.employee.id},
                    "expirationDate": expires_on.isoformat(),
                    "token": token,
                }
            }
        )

    @router.get("/token/session/>whoAmI")
    async def who_am_i(request: Request) -> Response:
        company = await authed(request)
        return wire.respond(
            {
                "value": {
                    "employeeId": company.employee.id,
                    "actualEmployeeId": company.employee.id,
                    "employee": _ref(company.employee.id, "employee"),
                    "companyId": int(company.id),
                    "company": _ref(int(company.id), "company"),
                    "language": "no",
                    "loggedInWithConnect": False,
                    "employeeIsProxy": False,
                }
            }
        )

    # lookups -----------------------------------------------------------------------------

    @router.get("/ledger/account")
    async def accounts(request: Request) -> Response:
        company = await authed(request)
        found = ledger.accounts(company, _list_param(request, "number"), _list_param(request, "id"))
        start, count = _paging(request)
        return wire.respond(
            wire.list_envelope([_account_json(company, a) for a in found], start, count)
        )

    @router.get("/ledger/vatType")
    async def vat_types(request: Request) -> Response:
        company = await authed(request)
        found = ledger.vat_types(
            company, _list_param(request, "number"), _list_param(request, "id")
        )
        start, count = _paging(request)
        return wire.respond(wire.list_envelope([_vat_type_json(v) for v in found], start, count))

    @router.get("/ledger/voucherType")
    async def voucher_types(request: Request) -> Response:
        company = await authed(request)
        # Tripletex's name filter matches parts of names, case-insensitively.
        name = (request.query_params.get("name") or "").lower()
        found = [t for t in company.voucher_types.values() if name in t.name.lower()]
        start, count = _paging(request)
        return wire.respond(
            wire.list_envelope([_named_json(t, "ledger/voucherType") for t in found], start, count)
        )

    @router.get("/currency")
    async def currencies(request: Request) -> Response:
        await authed(request)
        codes = [c.upper() for c in _list_param(request, "code") or []] or None
        found = [
            {
                "id": cid,
                "version": 0,
                "url": f"sandbox/v2/currency/{cid}",
                "code": code,
                "description": description,
                "factor": 1,
                "displayName": code,
                "isDisabled": False,
            }
            for code, (cid, description) in CURRENCIES.items()
            if codes is None or code in codes
        ]
        start, count = _paging(request)
        return wire.respond(wire.list_envelope(found, start, count))

    @router.get("/department")
    async def departments(request: Request) -> Response:
        company = await authed(request)
        numbers = _list_param(request, "departmentNumber")
        found = [d for d in company.departments.values() if numbers is None or d.number in numbers]
        start, count = _paging(request)
        return wire.respond(
            wire.list_envelope(
                [_named_json(d, "department", "departmentNumber") for d in found], start, count
            )
        )

    @router.get("/project")
    async def projects(request: Request) -> Response:
        company = await authed(request)
        numbers = _list_param(request, "number")
        found = [p for p in company.projects.values() if numbers is None or p.number in numbers]
        start, count = _paging(request)
        return wire.respond(
            wire.list_envelope([_named_json(p, "project", "number") for p in found], start, count)
        )

    # vouchers ----------------------------------------------------------------------------

    @router.post("/ledger/voucher")
    async def post_voucher(request: Request) -> Response:
        company = await authed(request)
        if ledger.roll_error(company):
            raise ApiError(503)
        try:
            body = json.loads(await request.body(), parse_float=Decimal)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(422, code=22000, message="Ugyldig JSON.") from exc
        send_to_ledger = request.query_params.get("sendToLedger", "true").lower() != "false"
        faults = company.faults
        if faults.post_delay_ms and not await _commit_delay(request, faults.post_delay_ms):
            # The client left before the commit: the request's work is rolled back.
            return Response(status_code=499)
        try:
            voucher = ledger.post_voucher(company, body, send_to_ledger=send_to_ledger)
        except ValidationFailed as exc:
            raise ApiError(422, code=18000, validation=exc.messages) from exc
        after_store = ledger.take_after_store(company)
        answer = wire.dumps({"value": _voucher_json(voucher)}).encode("utf-8")
        if after_store == "fail":
            status = faults.commit_then_fail_status
            if status in (502, 504):
                return gateway_page(status)
            raise ApiError(status, message="Uventet feil etter lagring.")
        if faults.post_hold_ms:
            await asyncio.sleep(faults.post_hold_ms / 1000)
        if after_store == "garble":
            return Response(answer[: len(answer) // 2], 201, media_type="application/json")
        if after_store == "drop":
            return CutOffAnswer(len(answer), 201)
        return Response(answer, 201, media_type="application/json")

    @router.get("/ledger/voucher")
    async def list_vouchers(request: Request) -> Response:
        """The list search: ``dateFrom`` (inclusive) and ``dateTo`` (exclusive) are required."""
        company = await authed(request)
        params = request.query_params
        missing = [(n, "Kan ikke være null.") for n in ("dateFrom", "dateTo") if not params.get(n)]
        if missing:
            raise ApiError(422, code=21000, validation=missing)
        try:
            date_from, date_to = date.fromisoformat(params["dateFrom"]), date.fromisoformat(
                params["dateTo"]
            )
        except ValueError as exc:
            raise ApiError(422, code=21000, validation=[("dateFrom", "Ugyldig dato.")]) from exc
        found = [v for v in ledger.searchable_vouchers(company) if date_from <= v.date < date_to]
        start, count = _paging(request)
        return wire.respond(wire.list_envelope([_voucher_json(v) for v in found], start, count))

    # Registered before /ledger/voucher/{id}, which would otherwise match ">externalVoucherNumber".
    @router.get("/ledger/voucher/>externalVoucherNumber")
    async def vouchers_by_external_number(request: Request) -> Response:
        company = await authed(request)
        wanted = request.query_params.get("externalVoucherNumber")
        found = ledger.vouchers_by_external_number(company, wanted)
        start, count = _paging(request)
        return wire.respond(wire.list_envelope([_voucher_json(v) for v in found], start, count))

    @router.get("/ledger/voucher/{id}")
    async def get_voucher(request: Request, id: str) -> Response:
        company = await authed(request)
        return wire.respond({"value": _voucher_json(_voucher_or_404(ledger, company, id))})

    @router.post("/ledger/voucher/{voucherId}/attachment")
    async def upload_attachment(request: Request, voucherId: str) -> Response:  # noqa: N803
        company = await authed(request)
        voucher = _voucher_or_404(ledger, company, voucherId)
        form = await request.form()
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, validation=[("file", "Fil mangler.")])
            content_type = (upload.content_type or "").split(";")[0].strip().lower()
            if content_type not in ATTACHMENT_TYPES:
                raise ApiError(
                    422,
                    validation=[
                        (
                            "file",
                            f"Ugyldig filformat ({content_type or 'ukjent'}). Gyldige formater er "
                            "PDF, PNG, JPEG og TIFF.",
                        )
                    ],
                )
            content = await upload.read()
            if not content:
                raise ApiError(422, validation=[("file", "Filen er tom.")])
            attachment = AttachmentRec(upload.filename or "vedlegg", content_type, len(content))
        finally:
            await form.close()
        voucher = ledger.add_attachment(company, voucher.id, attachment)
        return wire.respond({"value": _voucher_json(voucher)}, 201)

    return router


async def _commit_delay(request: Request, delay_ms: int) -> bool:
    """Wait ``delay_ms`` before committing; False if the client disconnected meanwhile."""
    loop = asyncio.get_running_loop()
    until = loop.time() + delay_ms / 1000
    while (left := until - loop.time()) > 0:
        await asyncio.sleep(min(0.05, left))
        if await request.is_disconnected():
            return False
    return True


def _voucher_or_404(ledger: Ledger, company: Company, raw_id: str) -> VoucherRec:
    try:
        voucher_id = int(raw_id)
    except ValueError as exc:
        raise ApiError(400, code=12000, message=f"Ugyldig id: {raw_id!r}.") from exc
    try:
        return ledger.voucher(company, voucher_id)
    except NotFound as exc:
        raise ApiError(404, message=f"Bilag {voucher_id} finnes ikke.") from exc


def _raise_fail_rule(request: Request, rule: FailRule, rate_headers: dict[str, str]) -> None:
    headers: dict[str, str] = {}
    if rule.retry_after is not None:
        headers["Retry-After"] = (
            str(int(rule.retry_after))
            if rule.retry_after == int(rule.retry_after)
            else str(rule.retry_after)
        )
    if rule.status == 429:
        # Replace the rate headers of this answer: remaining 0, reset only when asked for.
        rate_headers = {k: v for k, v in rate_headers.items() if k != "X-Rate-Limit-Reset"}
        rate_headers["X-Rate-Limit-Remaining"] = "0"
        if rule.reset_header:
            rate_headers["X-Rate-Limit-Reset"] = str(rule.reset_seconds)
        request.state.rate_headers = rate_headers
    raise ApiError(rule.status, message=f"Simulert feil ({rule.status}).", headers=headers)


# --- control API -----------------------------------------------------------------------------


def _control_api(ledger: Ledger) -> APIRouter:
    router = APIRouter()

    def company_or_404(company_id: str) -> Company:
        try:
            return ledger.company(company_id)
        except NotFound as exc:
            raise StarletteHTTPException(404, str(exc)) from exc

    @router.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "companies": len(ledger.companies)}

    @router.post("/companies", status_code=201)
    async def create_company(body: CompanyIn) -> dict[str, Any]:
        company = ledger.create_company(body.name)
        return {
            "company_id": company.id,
            "name": company.name,
            "consumer_token": company.consumer_token,
            "employee_token": company.employee_token,
            "employee_id": company.employee.id,
            "supplier_id": next(iter(company.suppliers)),
            "customer_id": next(iter(company.customers)),
        }

    @router.get("/companies/{company_id}/vouchers")
    async def vouchers(company_id: str) -> Response:
        company = company_or_404(company_id)
        with ledger.lock:
            body = [
                _control_voucher_json(company, v)
                for v in sorted(company.vouchers.values(), key=lambda v: v.id)
            ]
        return wire.respond(body)

    def put_faults(company: Company, body: FaultsIn | None) -> dict[str, Any]:
        ledger.set_faults(company, body.to_faults() if body else Faults())
        return (body or FaultsIn()).model_dump()

    add_knob_routes(router, "/companies/{company_id}", str, company_or_404, ledger.lock,
                    FaultsIn, put_faults)

    @router.patch("/companies/{company_id}/accounts/{number}")
    async def change_account(company_id: str, number: int, body: AccountChangeIn) -> dict[str, Any]:
        """Change the chart as an accountant would in Tripletex's UI (after a client cached it)."""
        company = company_or_404(company_id)
        try:
            account = ledger.change_account(company, number, **body.model_dump(exclude_unset=True))
        except NotFound as exc:
            raise StarletteHTTPException(404, str(exc)) from exc
        return _account_json(company, account)

    @router.delete("/companies/{company_id}/sessions")
    async def expire_sessions(company_id: str) -> dict[str, int]:
        return {"expired": ledger.revoke_sessions(company_or_404(company_id))}

    return router
