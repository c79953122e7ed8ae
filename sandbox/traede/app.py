"""The TRAEDE sandbox's web layer: the Export API for accounting entries under ``/v10`` and the
control API under ``/_sandbox/``.

TRAEDE API [seed 001; auth per developer.traede.com, see shared/guides/entries-export-api.md]:
  GET  /v10/accounting-entries/export?system_id=...[&not_exported_since=...][&filter_groups...]
       [&limit=N&page=P]                        -> {"accounting_entries": [entry, ...]}
  POST /v10/accounting-entries/mark-as-exported {"accounting_entries": [{accounting_entry_id,
       system_id, note?}, ...]} (1..10 items)   -> 200 {} [assumed: the body is undocumented]
Auth: ``Authorization: Bearer <token>`` (or ``?access_token=``, which TRAEDE allows and the
control view counts, so a test can prove a connector never uses it) plus ``X-Traede-App-Key``.
Errors [assumed Laravel]: 401 ``{"message": "Unauthenticated."}``, 403 (app key), 404, 405,
422 ``{"message", "errors": {field: [..]}}``, 429 with ``Retry-After`` and ``X-RateLimit-*``,
500/503 ``{"message": "Server Error"}``, 502/504 a gateway's HTML page.

Control API (ours):
  GET    /_sandbox/healthz
  POST   /_sandbox/companies                    {name, app_key?, datetime_format?,
                                                 note_max_length?} -> ids, token, app key
  GET    /_sandbox/companies/{id}               settings, faults, request counts
  POST   /_sandbox/companies/{id}/rotate-token  a new token; the old one gets 401s
  POST   /_sandbox/companies/{id}/entries       {"entries": [...]} or {"generate": {count, seed}}
  GET    /_sandbox/companies/{id}/entries       every entry, its marks per system_id, timeline
  PATCH  /_sandbox/companies/{id}/entries/{eid} edit after the fact (updated_at moves)
  GET    /_sandbox/companies/{id}/mark-calls    every mark call: body, status, applied ids
  GET    /_sandbox/companies/{id}/fetches       every export fetch: system_id, ids returned
  PUT    /_sandbox/companies/{id}/faults        knobs (see ``FaultsIn``); DELETE clears them
  GET    /_sandbox/companies/{id}/requests      {"METHOD /path": count}; DELETE resets
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from sandbox.control import add_knob_routes
from sandbox.knobs import CommonFaultsIn, retry_after_value
from sandbox.traede.filters import FilterError, parse_datetime, parse_filter_groups
from sandbox.traede.state import (
    MARK_MAX,
    Company,
    DatetimeFormat,
    MarkFailure,
    NotFound,
    TraedeFaults,
    TraedeState,
    generate_entries,
    utc_now,
)
from sandbox.wire import gateway_page

API_PREFIX = "/v10"
APP_KEY_HEADER = "X-Traede-App-Key"
SYSTEM_ID_MAX = 255  # [assumed] Laravel's string|max:255


class ApiError(Exception):
    """An answer in TRAEDE's (Laravel's) error shape."""

    def __init__(self, status: int, message: str, errors: dict[str, list[str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}


def _validation_error(errors: dict[str, list[str]]) -> ApiError:
    """Laravel 9+: the first message, "(and N more errors)", and every message per field."""
    messages = [m for field_messages in errors.values() for m in field_messages]
    extra = len(messages) - 1
    summary = messages[0] + (f" (and {extra} more error{'s' if extra > 1 else ''})"
                             if extra else "")
    return ApiError(422, summary, errors)


def _attribute(field: str) -> str:
    """Laravel's displayable attribute name: underscores become spaces."""
    return field.replace("_", " ")


# --- control API bodies ----------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompanyIn(_Body):
    name: str = Field(default="Sandbox ApS", min_length=1)
    app_key: str | None = Field(default=None, min_length=8,
                                description="Share one integration app key across companies.")
    datetime_format: DatetimeFormat = "laravel"
    note_max_length: int = Field(default=255, ge=1, le=65_535)


def _utc(value: datetime | date) -> datetime:
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _EntryFields(_Body):
    @field_validator("amount", mode="before", check_fields=False)
    @classmethod
    def _exact(cls, value: object) -> object:
        # A JSON number arrives as float; its shortest repr is the number that was written.
        return repr(value) if isinstance(value, float) else value

    @field_validator("amount", check_fields=False)
    @classmethod
    def _two_decimals(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value != value.quantize(Decimal("0.01")):
            raise ValueError("amounts have at most two decimals")
        return value.quantize(Decimal("0.01")) if value is not None else None


class EntryIn(_EntryFields):
    currency: str = Field(default="DKK", pattern="^[A-Z]{3}$")
    amount: Decimal
    account: int
    contra_account: int
    date: datetime | None = None
    text: str = ""
    created_at: datetime | None = None

    def spec(self) -> dict[str, Any]:
        now = utc_now()
        return {
            "currency": self.currency, "amount": self.amount, "account": self.account,
            "contra_account": self.contra_account, "date": _utc(self.date or now),
            "text": self.text,
            "created_at": _utc(self.created_at) if self.created_at else None,
        }


class GenerateIn(_Body):
    count: int = Field(default=5, ge=1, le=5000)
    seed: int = 1
    start: datetime | None = Field(
        default=None, description="Date of the first entry; entries are 17 minutes apart.")


class EntriesIn(_Body):
    entries: list[EntryIn] | None = None
    generate: GenerateIn | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EntriesIn:
        if (self.entries is None) == (self.generate is None):
            raise ValueError('give exactly one of "entries" and "generate"')
        return self

    def specs(self) -> list[dict[str, Any]]:
        if self.entries is not None:
            return [e.spec() for e in self.entries]
        g = self.generate
        assert g is not None
        # By default the last entry is dated about now.
        start = _utc(g.start) if g.start else utc_now() - timedelta(minutes=17 * g.count + 10)
        return generate_entries(g.count, g.seed, start)


class EntryPatch(_EntryFields):
    currency: str | None = Field(default=None, pattern="^[A-Z]{3}$")
    amount: Decimal | None = None
    account: int | None = None
    contra_account: int | None = None
    date: datetime | None = None
    text: str | None = None

    def changes(self) -> dict[str, Any]:
        changes = self.model_dump(exclude_unset=True, exclude_none=True)
        if "date" in changes:
            changes["date"] = _utc(changes["date"])
        return changes


class MarkFailureIn(_Body):
    mode: Literal["before", "after", "partial"]
    count: int = Field(default=1, ge=1)
    status: Literal[500, 502, 503, 504] = 500
    applied: int = Field(default=1, ge=0, description="Items applied first (mode partial).")


class FaultsIn(CommonFaultsIn):
    """Every knob is optional; PUT replaces the whole set."""

    fetch_cap: int | None = Field(
        default=None, ge=1,
        description="The export fetch returns at most this many entries, whatever the query "
        "(an undocumented server-side cap).")
    redeliver_ids: list[int] = Field(
        default_factory=list, description="These entries keep coming back after being marked.")
    redeliver_marked_fetches: int = Field(
        default=0, ge=0,
        description="The next N fetches also return every entry already marked (a stale read).")
    mark_failure: MarkFailureIn | None = None

    def to_faults(self) -> TraedeFaults:
        return TraedeFaults(
            **self.common_kwargs(),
            fetch_cap=self.fetch_cap,
            redeliver_ids=set(self.redeliver_ids),
            redeliver_marked_fetches=self.redeliver_marked_fetches,
            mark_failure=MarkFailure(**self.mark_failure.model_dump())
            if self.mark_failure else None,
        )


# --- the app ---------------------------------------------------------------------------------


def create_app(state: TraedeState | None = None) -> FastAPI:
    state = state or TraedeState()
    app = FastAPI(title="TRAEDE sandbox", docs_url="/_sandbox/docs",
                  openapi_url="/_sandbox/openapi.json", redoc_url=None)
    app.state.traede = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        if exc.status in (502, 504):
            return gateway_page(exc.status, exc.headers)
        body: dict[str, Any] = {"message": exc.message}
        if exc.errors is not None:
            body["errors"] = exc.errors
        return JSONResponse(body, exc.status, headers={**_rate_headers(request), **exc.headers})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: "Not Found",
                   405: f"The {request.method} method is not supported for this route."}.get(
            exc.status_code, str(exc.detail))
        return JSONResponse({"message": message}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def control_validation(request: Request, exc: RequestValidationError) -> Response:
        # Only the control API has pydantic bodies; TRAEDE endpoints validate by hand.
        return JSONResponse({"message": "invalid control request", "errors": exc.errors()}, 400)

    app.include_router(_traede_api(state), prefix=API_PREFIX)
    app.include_router(_control_api(state), prefix="/_sandbox")
    return app


def _rate_headers(request: Request) -> dict[str, str]:
    """Laravel's throttle middleware headers, when the company has a rate limit knob."""
    rate = getattr(request.state, "rate", None)
    if not rate:
        return {}
    return {"X-RateLimit-Limit": rate["limit"], "X-RateLimit-Remaining": rate["remaining"]}


def _json(request: Request, body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status, headers=_rate_headers(request))


# --- TRAEDE API ------------------------------------------------------------------------------


def _traede_api(state: TraedeState) -> APIRouter:
    router = APIRouter()

    async def enter(request: Request) -> Company:
        """Token -> company (401), count, faults (as TRAEDE's edge would), then the app key."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        via_query = False
        if scheme.lower() != "bearer" or not token.strip():
            token = request.query_params.get("access_token", "")
            via_query = bool(token)
        company = state.company_for_token(token.strip()) if token.strip() else None
        if company is None:
            raise ApiError(401, "Unauthenticated.")
        with state.lock:
            company.requests.add(request, API_PREFIX)
            if via_query:
                company.query_token_uses += 1
            decision = company.faults.decide(request.method, request.url.path, time.monotonic())
        request.state.rate = decision.rate_headers
        if decision.latency_seconds:
            await asyncio.sleep(decision.latency_seconds)
        injected = decision.injected
        if injected is not None:
            headers = {}
            if injected.retry_after is not None:
                headers["Retry-After"] = retry_after_value(injected.retry_after)
            if injected.status == 429:
                if decision.rate_headers:
                    request.state.rate = {**decision.rate_headers, "remaining": "0"}
                if injected.retry_after is not None:
                    headers["X-RateLimit-Reset"] = str(int(time.time() + injected.retry_after))
            raise ApiError(injected.status, _INJECTED_MESSAGES.get(injected.status, "Server Error"),
                           headers=headers)
        if request.headers.get(APP_KEY_HEADER) != company.app_key:
            raise ApiError(403, f"Missing or invalid {APP_KEY_HEADER}.")
        return company

    @router.get("/accounting-entries/export")
    async def export(request: Request) -> Response:
        company = await enter(request)
        params = request.query_params
        errors: dict[str, list[str]] = {}
        system_id = params.get("system_id", "")
        if not system_id.strip():
            errors["system_id"] = ["The system id field is required."]
        elif len(system_id) > SYSTEM_ID_MAX:
            errors["system_id"] = [f"The system id may not be greater than {SYSTEM_ID_MAX} "
                                   "characters."]
        since = None
        if params.get("not_exported_since"):
            try:
                since = parse_datetime(params["not_exported_since"])
            except ValueError:
                errors["not_exported_since"] = ["The not exported since is not a valid date."]
        limit = _positive_int(params, "limit", errors)
        page = _positive_int(params, "page", errors) or 1
        groups = []
        try:
            groups = parse_filter_groups(params.multi_items())
        except FilterError as exc:
            errors.setdefault(exc.field, []).append(exc.message)
        if errors:
            raise _validation_error(errors)
        entries = state.export_feed(company, system_id, since, groups, limit, page)
        return _json(request, {
            "accounting_entries": [e.to_wire(company.datetime_format) for e in entries]})

    @router.post("/accounting-entries/mark-as-exported")
    async def mark_as_exported(request: Request) -> Response:
        company = await enter(request)
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError):
            body = {}  # Laravel sees no input: the "required" rule answers
        record: dict[str, Any] = {"at": datetime.now(UTC).isoformat(timespec="seconds"),
                                  "body": body, "applied": []}
        with state.lock:
            company.mark_calls.append(record)
        try:
            items = _validate_marks(body, company)
            failure = state.take_mark_failure(company)
            if failure is not None:
                if failure.mode == "after":
                    record["applied"] = state.apply_marks(company, items)
                elif failure.mode == "partial":
                    record["applied"] = state.apply_marks(company, items[: failure.applied])
                record["fault"] = failure.mode
                raise ApiError(failure.status, "Server Error")
            record["applied"] = state.apply_marks(company, items)
        except ApiError as exc:
            record["status"] = exc.status
            raise
        record["status"] = 200
        return _json(request, {})

    return router


_INJECTED_MESSAGES = {401: "Unauthenticated.", 403: "This action is unauthorized.",
                      429: "Too Many Attempts.", 404: "Not Found"}


def _positive_int(params: Any, name: str, errors: dict[str, list[str]]) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.strip().lstrip("-").isdigit():
        errors[name] = [f"The {name} must be an integer."]
        return None
    value = int(raw)
    if value < 1:
        errors[name] = [f"The {name} must be at least 1."]
        return None
    return value


def _as_int(value: Any) -> int | None:
    """Laravel's ``integer`` rule: an int, or a string of digits; never a bool or a float."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _validate_marks(body: Any, company: Company) -> list[dict[str, Any]]:
    """The mark call's rules [seed: fields, at most 10] with Laravel's messages [assumed]; one
    bad item refuses the whole call, nothing is marked."""
    errors: dict[str, list[str]] = {}
    entries = body.get("accounting_entries") if isinstance(body, dict) else None
    if entries in (None, "", []):
        raise _validation_error(
            {"accounting_entries": ["The accounting entries field is required."]})
    if not isinstance(entries, list):
        raise _validation_error(
            {"accounting_entries": ["The accounting entries must be an array."]})
    if len(entries) > MARK_MAX:
        raise _validation_error({"accounting_entries": [
            f"The accounting entries may not have more than {MARK_MAX} items."]})
    items = []
    for index, item in enumerate(entries):
        prefix = f"accounting_entries.{index}"
        if not isinstance(item, dict):
            errors[prefix] = [f"The {_attribute(prefix)} must be an array."]
            continue
        entry_field = f"{prefix}.accounting_entry_id"
        entry_id = _as_int(item.get("accounting_entry_id"))
        if item.get("accounting_entry_id") in (None, ""):
            errors[entry_field] = [f"The {_attribute(entry_field)} field is required."]
        elif entry_id is None:
            errors[entry_field] = [f"The {_attribute(entry_field)} must be an integer."]
        elif entry_id not in company.entries:
            errors[entry_field] = [f"The selected {_attribute(entry_field)} is invalid."]
        system_field = f"{prefix}.system_id"
        system_id = item.get("system_id")
        if system_id in (None, ""):
            errors[system_field] = [f"The {_attribute(system_field)} field is required."]
        elif not isinstance(system_id, str):
            errors[system_field] = [f"The {_attribute(system_field)} must be a string."]
        elif len(system_id) > SYSTEM_ID_MAX:
            errors[system_field] = [f"The {_attribute(system_field)} may not be greater than "
                                    f"{SYSTEM_ID_MAX} characters."]
        note_field = f"{prefix}.note"
        note = item.get("note")
        if note is not None and not isinstance(note, str):
            errors[note_field] = [f"The {_attribute(note_field)} must be a string."]
        elif note is not None and len(note) > company.note_max_length:
            errors[note_field] = [f"The {_attribute(note_field)} may not be greater than "
                                  f"{company.note_max_length} characters."]
        items.append({"accounting_entry_id": entry_id, "system_id": system_id, "note": note})
    if errors:
        raise _validation_error(errors)
    return items


# --- control API -----------------------------------------------------------------------------


def _control_api(state: TraedeState) -> APIRouter:
    router = APIRouter()

    def company_or_404(company_id: str) -> Company:
        try:
            return state.company(company_id)
        except NotFound as exc:
            raise StarletteHTTPException(404, str(exc)) from exc

    @router.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "companies": len(state.companies)}

    @router.post("/companies", status_code=201)
    async def create_company(request: Request, body: CompanyIn | None = None) -> dict[str, Any]:
        body = body or CompanyIn()
        company = state.create_company(body.name, body.app_key, body.datetime_format,
                                       body.note_max_length)
        return {
            "company_id": company.id,
            "name": company.name,
            "access_token": company.access_token,
            "app_key": company.app_key,
            "base_url": f"{str(request.base_url).rstrip('/')}{API_PREFIX}",
        }

    @router.get("/companies/{company_id}")
    async def company_view(company_id: str) -> dict[str, Any]:
        company = company_or_404(company_id)
        with state.lock:
            return company.view()

    @router.post("/companies/{company_id}/rotate-token")
    async def rotate_token(company_id: str) -> dict[str, str]:
        return {"access_token": state.rotate_token(company_or_404(company_id))}

    @router.post("/companies/{company_id}/entries", status_code=201)
    async def add_entries(company_id: str, body: EntriesIn) -> dict[str, Any]:
        company = company_or_404(company_id)
        made = state.add_entries(company, body.specs())
        with state.lock:
            return {"entry_ids": [e.id for e in made],
                    "entries": [company.entry_view(e) for e in made]}

    @router.get("/companies/{company_id}/entries")
    async def entries(company_id: str) -> list[dict[str, Any]]:
        company = company_or_404(company_id)
        with state.lock:
            return [company.entry_view(e) for e in sorted(company.entries.values(),
                                                          key=lambda e: e.id)]

    @router.patch("/companies/{company_id}/entries/{entry_id}")
    async def change_entry(company_id: str, entry_id: int, body: EntryPatch) -> dict[str, Any]:
        company = company_or_404(company_id)
        try:
            entry = state.change_entry(company, entry_id, body.changes())
        except NotFound as exc:
            raise StarletteHTTPException(404, str(exc)) from exc
        with state.lock:
            return company.entry_view(entry)

    @router.get("/companies/{company_id}/mark-calls")
    async def mark_calls(company_id: str) -> list[dict[str, Any]]:
        company = company_or_404(company_id)
        with state.lock:
            return list(company.mark_calls)

    @router.get("/companies/{company_id}/fetches")
    async def fetches(company_id: str) -> list[dict[str, Any]]:
        company = company_or_404(company_id)
        with state.lock:
            return list(company.fetches)

    def put_faults(company: Company, body: FaultsIn | None) -> dict[str, Any]:
        with state.lock:
            company.faults = body.to_faults() if body else TraedeFaults()
            return company.faults.view()

    add_knob_routes(router, "/companies/{company_id}", str, company_or_404, state.lock,
                    FaultsIn, put_faults)

    return router
