"""Errors of the domain services, each with a stable ``code``.

They say what went wrong in the domain's words; which HTTP status an error becomes is the API's
business (``producers.api.errors.DOMAIN_ERROR_STATUSES``), and the worker and the CLI report them
without one.
"""


class DomainError(Exception):
    code = "error"

    def __init__(self, message: str, *, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class ValidationFailed(DomainError):
    code = "validation_failed"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class MappingError(DomainError):
    """An expense row cannot be mapped to the target's chart of accounts (or VAT codes,
    departments, projects): the connection's account mapping must be fixed. Found before anything
    is sent, so the export that meets it fails at once with this message."""

    code = "unmapped"
