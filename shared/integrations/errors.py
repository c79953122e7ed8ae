"""The error taxonomy every external client raises, decided once in the HTTP base
(``shared.integrations.http``: its table says which outcome is which).

The worker maps these to retry-or-fail in exactly one place (``worker.retry_policy``):
- ``TransientError``: timeouts, connection errors, 5xx, 408, a 2xx body we cannot read. Retry
  with backoff.
- ``RateLimitedError``: 429. Retry after ``retry_after`` seconds when the server said so.
- ``ConnectionParked``: the target refuses the whole connection until a person acts there
  (subscription lapsed, permission missing, demo mode). A kind of being told to wait: exports
  keep their attempts and look again every ``retry_after`` seconds.
- ``AuthError``: credentials rejected even after renewing the session once. Permanent until an
  operator fixes the connection.
- ``PermanentError``: the request itself is wrong (4xx validation, unknown account, missing
  export). Never retried; ``message`` says in plain words what to fix.
- ``NotFoundError``: a permanent error for a missing remote object, separated because callers
  sometimes expect it (a lookup that finds nothing is not a failure).

``sent`` is False when the request provably never left this process or never reached the
server (the connection could not be opened, the rate limiter refused it): the posting protocol
(``worker.posting``) then knows nothing can have been stored.

Messages never contain secrets or tokens.
"""

from __future__ import annotations


class IntegrationError(Exception):
    """Base class. ``system`` names the remote system, ``code`` is a short stable code."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        system: str,
        code: str = "error",
        status_code: int | None = None,
        request_id: str | None = None,
        details: list[str] | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.system = system
        self.code = code
        self.status_code = status_code
        self.request_id = request_id
        self.details = details or []
        self.sent = sent

    def __str__(self) -> str:
        return self.message


class TransientError(IntegrationError):
    retryable = True


class RateLimitedError(TransientError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ConnectionParked(RateLimitedError):
    """The target refuses every write of this connection until someone acts on its side (the
    customer renews a lapsed subscription, an administrator grants a permission, a demo tenant
    is replaced). Not the export's fault: like a 429 it costs no attempt (``worker.retry_policy``
    treats every ``RateLimitedError`` so), and the export waits in ``processing`` with
    ``message`` (what to do, in plain words) as its error until the target accepts again.

    The engine keeps no per-connection "parked" flag yet: each waiting export looks again on its
    own, at most every ``retry_after`` seconds; a client may also refuse to send (``sent=False``)
    while it remembers the refusal."""


class PermanentError(IntegrationError):
    retryable = False


class NotFoundError(PermanentError):
    pass


class AuthError(PermanentError):
    pass


class SendWithdrawn(IntegrationError):
    """The posting protocol closed the gate before the request left (the attempt lost the
    export to another attempt, a cancel or a callback). Nothing was sent."""

    def __init__(self, message: str = "the attempt no longer owns the export; nothing sent",
                 **kwargs) -> None:
        kwargs.setdefault("system", "worker")
        kwargs.setdefault("code", "withdrawn")
        super().__init__(message, sent=False, **kwargs)
