"""How the Tripletex sandbox writes its answers: exact decimal JSON (``sandbox.wire``: amounts
as JSON numbers, their decimal text verbatim), envelopes, error bodies."""

from __future__ import annotations

from typing import Any

from sandbox.wire import dumps, respond

__all__ = ["dumps", "respond", "list_envelope", "error_body"]

# Tripletex's internal error codes per HTTP status (from the API description).
ERROR_CODES = {400: 4000, 401: 3000, 403: 9000, 404: 6000, 409: 7000, 422: 18000, 500: 1000}
ERROR_MESSAGES = {
    400: "Ugyldig forespørsel.",
    401: "Du må logge inn for å få tilgang til denne ressursen.",
    403: "Du har ikke tilgang til denne ressursen.",
    404: "Objektet finnes ikke.",
    409: "Objektet er endret av en annen bruker.",
    422: "Validering feilet.",
    429: "For mange forespørsler. Prøv igjen senere.",
    500: "En uventet feil oppstod.",
    503: "Tjenesten er midlertidig utilgjengelig.",
}
DEVELOPER_MESSAGES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "CONFLICT",
    422: "VALIDATION_ERROR",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


def list_envelope(
    values: list[dict[str, Any]], start: int = 0, count: int = 1000
) -> dict[str, Any]:
    page = values[start : start + count]
    return {
        "fullResultSize": len(values),
        "from": start,
        "count": len(page),
        "versionDigest": None,
        "values": page,
    }


def error_body(
    status: int,
    request_id: str,
    *,
    code: int | None = None,
    message: str | None = None,
    validation: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Tripletex's error envelope: status, code, message, link, developerMessage,
    validationMessages (null when there are none), requestId."""
    return {
        "status": status,
        "code": code if code is not None else ERROR_CODES.get(status, 0),
        "message": message or ERROR_MESSAGES.get(status, "Feil."),
        "link": "https://tripletex.no/v2-docs/",
        "developerMessage": DEVELOPER_MESSAGES.get(status, f"HTTP_{status}"),
        "validationMessages": (
            [{"field": f, "message": m} for f, m in validation] if validation else None
        ),
        "requestId": request_id,
    }
