"""Every error leaves the API as JSON with a stable code and a message that says what to fix.

    {"error": {"code": "validation_failed", "message": "...", "details": [...]}}

Never a stack trace: unexpected exceptions are logged with their trace and answered with a
generic 500 message.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError, DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.domain.errors import DomainError
from shared.logs import get_logger

log = get_logger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, details=None, headers=None) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    if details:
        body["error"]["details"] = details
    return JSONResponse(status_code=status, content=body, headers=headers)


def _describe(error: dict) -> dict:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    return {"field": location or "body", "message": error.get("msg", "invalid")}


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 413: "request_too_large",
              415: "unsupported_media_type", 422: "validation_failed", 503: "unavailable"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers)

    @app.exception_handler(DomainError)
    async def _domain_error(_request: Request, exc: DomainError):
        return error_response(exc.http_status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
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
        if exc.status_code == 405:
            message = "this method is not allowed on this endpoint; see /docs"
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    async def _database_down(_request: Request, exc: OperationalError):
        log.error("database unavailable", error=type(exc.orig).__name__ if exc.orig else "")
        return error_response(503, "database_unavailable",
                              "the database is unavailable; nothing was changed, try again shortly",
                              headers={"Retry-After": "5"})

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
