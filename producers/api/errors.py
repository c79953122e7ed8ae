"""Every error leaves the API as JSON with a stable code and a message that says what to fix.

    {"error": {"code": "validation_failed", "message": "...", "details": [...]}}

Never a stack trace: unexpected exceptions are logged with their trace and answered with a
generic 500 message.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.domain.errors import (
    Conflict,
    DomainError,
    MappingError,
    NotFound,
    ValidationFailed,
)
from shared.domain.exports import BatchTooLarge
from shared.domain.sources import InvalidSignature
from shared.logs import get_logger

log = get_logger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """The body of every error answer, documented for every status an operation can return."""

    error: ErrorDetail


ERROR_DESCRIPTIONS = {
    400: "The body is not valid JSON",
    401: "Missing, unknown or revoked credentials",
    403: "The API key lacks the scope this operation needs (`missing_scope` names it)",
    404: "No such resource in your organization",
    409: "Not allowed in the resource's current state",
    413: "The request body is too large",
    415: "The body is not sent as application/json",
    422: "Invalid request; the message says what to fix",
    503: "The database is unavailable; nothing was changed, try again shortly",
}


# What any operation that reads a JSON body can answer before its endpoint runs.
BODY_ERROR_STATUSES = (400, 413, 415)


def error_responses(*statuses: int, descriptions: dict[int, str] | None = None) -> dict:
    """OpenAPI ``responses`` for error statuses, each with the ``ErrorBody`` schema (without
    this, FastAPI would document 422 as its own ``{"detail": [...]}``, which we never send)."""
    described = {**ERROR_DESCRIPTIONS, **(descriptions or {})}
    return {status: {"model": ErrorBody, "description": described[status]} for status in statuses}


# FastAPI answers HTTPException(400, this) when reading the body fails for a reason other than a
# JSON syntax error: bytes that are not UTF-8, or nesting deeper than the JSON parser's recursion.
_BODY_PARSE_FAILURE = "There was an error parsing the body"


def error_response(status: int, code: str, message: str, details=None, headers=None) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    if details:
        body["error"]["details"] = details
    return JSONResponse(status_code=status, content=body, headers=headers)


def _describe(error: dict) -> dict:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    return {"field": location or "body", "message": error.get("msg", "invalid")}


# The HTTP status of each domain error, decided here and only here: the domain says what went
# wrong, the API how it is answered. A subclass without its own entry (AlreadyExported is a
# Conflict) takes its nearest ancestor's.
DOMAIN_ERROR_STATUSES: dict[type[DomainError], int] = {
    DomainError: 400,
    ValidationFailed: 422,
    MappingError: 422,
    NotFound: 404,
    Conflict: 409,
    BatchTooLarge: 413,
    InvalidSignature: 401,
}


def domain_error_status(error: DomainError) -> int:
    for cls in type(error).__mro__:
        if cls in DOMAIN_ERROR_STATUSES:
            return DOMAIN_ERROR_STATUSES[cls]
    return 400  # unreachable: DomainError itself is in the table


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 413: "request_too_large",
              415: "unsupported_media_type", 422: "validation_failed", 503: "unavailable"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers)

    @app.exception_handler(DomainError)
    async def _domain_error(_request: Request, exc: DomainError):
        return error_response(domain_error_status(exc), exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        if any(e.get("loc") == ("body",) and isinstance(e.get("input"), bytes)
               for e in exc.errors()):
            # FastAPI hands the raw bytes on when the Content-Type is not JSON.
            return error_response(415, "unsupported_media_type",
                                  "the request body must be JSON, sent with "
                                  "'Content-Type: application/json'")
        details = [_describe(e) for e in exc.errors()]
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return error_response(400, "malformed_json",
                                  "the request body is not valid JSON: " + "; ".join(
                                      str(e.get("ctx", {}).get("error", "")) for e in exc.errors()),
                                  details)
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        return error_response(422, "validation_failed", f"invalid request: {message}", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /docs for the API"
        if exc.status_code == 400 and message == _BODY_PARSE_FAILURE:
            return error_response(400, "malformed_json",
                                  "the request body could not be read as JSON: send UTF-8 encoded "
                                  "JSON, without excessively deep nesting")
        if exc.status_code == 405:
            message = "this method is not allowed on this endpoint; see /docs"
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    async def _database_down(_request: Request, exc: OperationalError):
        log.error("database unavailable", error=type(exc.orig).__name__ if exc.orig else "")
        return error_response(503, "database_unavailable",
                              "the database is unavailable; nothing was changed, try again shortly",
                              headers={"Retry-After": "5"})

    @app.exception_handler(DataError)
    async def _value_out_of_range(_request: Request, exc: DataError):
        # The database refused a value the schemas let through: the caller's input, not an
        # outage, so "try again" would be wrong advice.
        log.warning("database refused a value", error=type(exc.orig).__name__ if exc.orig else "")
        return error_response(422, "invalid_value",
                              "a value in the request is out of range or malformed for storage; "
                              "nothing was changed")

    @app.exception_handler(DBAPIError)
    async def _database_error(_request: Request, exc: DBAPIError):
        log.exception("database error")
        return error_response(503, "database_error",
                              "the database refused the request; nothing was changed, try again",
                              headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unhandled error in request")
        return error_response(500, "internal_error",
                              "an unexpected error occurred; it has been logged")
