"""``VendorHttp``: the one HTTP base every vendor client sends its requests through.

A vendor client owns one ``VendorHttp`` and keeps only what is its vendor's own: paths, models,
how it gets a token or session, and how its error bodies read. The base decides everything else
once, for every system:

- **timeouts** from settings (``AIC_HTTP_CONNECT_TIMEOUT``, ``AIC_HTTP_READ_TIMEOUT``), or the
  posting gate's bound for the one request that may create a record;
- **the error taxonomy** of ``shared.integrations.errors`` (table below);
- **401 renew-once**: with ``session=SessionAuth(current, renew)`` a 401 hands the rejected
  credentials to ``renew``, asks ``current`` again and repeats the request once; a second 401 is
  an ``AuthError`` (a refused request stored nothing, so repeating it is safe). Credentials that
  cannot be renewed (a static user token kept out of a pre-signed download) have no ``renew``:
  their 401 is an ``AuthError`` at once;
- **Retry-After** as delta-seconds or an HTTP date, else the vendor's reset header
  (``rate_limit_reset`` hook, e.g. an ``X-Rate-Limit-Reset`` in seconds);
- **error bodies**: the ``read_error`` hook turns a non-2xx body into an ``ErrorReading``
  (code, the server's words, details, request id, optionally the whole message or a more
  precise 4xx class);
- **request ids** from the answer's headers (``request_id_headers``) or the error body;
- **redaction**: secrets the client names (``secrets`` hook) never appear in messages, and
  query parameters that look like credentials (``token``, ``secret``, ``signature``...) are
  masked in httpx's own request log (a pre-signed link or a token in a query string);
- **structured log fields** per exchange: ``system, method, path, status, elapsed_ms,
  request_id`` (``path`` never carries the query);
- **streamed downloads** with a size cap (``download``), with or without our credentials.

What an outcome means (the posting protocol, ``worker.posting``, reads ``sent``):

========================================================  =====================  =====
outcome                                                   error                  sent
========================================================  =====================  =====
connection refused / not made in time, pool exhausted     TransientError         False
our rate limiter refused, the posting gate stayed shut    RateLimited/Withdrawn  False
a URL with no http(s) scheme                              PermanentError         False
timeout after the connection was made, connection lost    TransientError         True
5xx, 408                                                  TransientError         True
2xx whose body we cannot read (``parse``)                 TransientError         True
429                                                       RateLimitedError       True
a 4xx the vendor reads as "wait" (``parked_for``)         ConnectionParked       True
404                                                       NotFoundError          True
401 (after the one renewal, if renewable)                 AuthError              True
other 4xx                                                 PermanentError         True
========================================================  =====================  =====

An unreadable 2xx is transient for every system: the server did answer, and after a POST that
means "outcome unknown" (settled by a lookup), never "refused". Before this base one client
called it permanent and the other transient.

``read_error`` may pick a more precise ``PermanentError`` class for a 4xx (a 403 that is an
``AuthError``, a 404 about one item that must not read as "the whole object is gone"), or say
with ``parked_for`` that a 4xx means "wait until someone acts on the vendor's side" (a lapsed
subscription, a missing permission: ``ConnectionParked``, which costs no attempt); it cannot
change what is transient, rate-limited or sent.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import IO, TYPE_CHECKING, Any, TypeVar

# httpx imports its transport, httpcore (and h11), only when the first client is built: imported
# here, it loads with the vendor systems at the worker's start (worker.celery_app) instead of
# inside a worker's first export, while the other threads' exports wait (issue 12).
import httpcore  # noqa: F401
import httpx
from pydantic import BaseModel, ValidationError

from shared.config import get_settings
from shared.integrations.errors import (
    AuthError,
    ConnectionParked,
    IntegrationError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    SendWithdrawn,
    TransientError,
)

if TYPE_CHECKING:
    from shared.integrations.rate_limit import RateLimiter
    from shared.integrations.targets import SendGate

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

DEFAULT_REQUEST_ID_HEADERS = ("X-Request-Id", "X-Correlation-Id")
# How much of an error body is kept for the error message (a streamed error is cut here).
ERROR_BODY_LIMIT = 64 * 1024
DOWNLOAD_CHUNK_BYTES = 64 * 1024
REDACTED = "***"


# --- preparing without requests ----------------------------------------------------------------

# Set while a caller asks a client to work from what it already holds (``requests_refused``).
# A context variable, not a thread-local: a client that fans its lookups out to helper threads
# in a copy of the caller's context (the Tripletex client) refuses there too.
_REQUESTS_REFUSED: ContextVar[bool] = ContextVar("aic_requests_refused", default=False)


class RequestRefused(Exception):
    """A request was about to be made inside ``requests_refused()``. Not an ``IntegrationError``:
    nothing was asked of the vendor, so no client may read it as the vendor's answer."""


@contextmanager
def requests_refused() -> Iterator[None]:
    """Inside the block every ``VendorHttp`` exchange raises ``RequestRefused`` before it does
    anything (no permit, no connection). The worker prepares a voucher this way inside its claim's
    transaction (``worker.export_job._claim``): a client whose lookups and session are cached
    prepares from memory; one that would need a request says so at once, and the voucher is
    prepared after the commit instead."""
    token = _REQUESTS_REFUSED.set(True)
    try:
        yield
    finally:
        _REQUESTS_REFUSED.reset(token)


@contextmanager
def holding(lock: threading.Lock | threading.RLock) -> Iterator[None]:
    """``with lock``, except inside ``requests_refused()``: a client's lock may be held by
    another thread across a request (a single flight of lookups, a session being created), and
    waiting for it would hold the caller's transaction for that round trip, so a lock that is
    taken refuses (``RequestRefused``) instead."""
    if not _REQUESTS_REFUSED.get():
        lock.acquire()
    elif not lock.acquire(blocking=False):
        raise RequestRefused("another thread of the client may be waiting for an answer")
    try:
        yield
    finally:
        lock.release()


# --- small pieces, usable on their own ---------------------------------------------------------


def default_timeout() -> httpx.Timeout:
    """Connect within ``AIC_HTTP_CONNECT_TIMEOUT``; every other phase ``AIC_HTTP_READ_TIMEOUT``."""
    settings = get_settings()
    return httpx.Timeout(settings.http_read_timeout, connect=settings.http_connect_timeout)


_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")


def seconds_header(value: str | None) -> float | None:
    """A header holding a number of seconds (``X-Rate-Limit-Reset: 12``); negatives count as 0."""
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date (RFC 9110 10.2.3).

    A date in the past is 0; a date without a zone is taken as UTC (HTTP dates are GMT); anything
    else is None (no advice), never an error: a malformed header must not fail a request.
    """
    if not value or not value.strip():
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret replaced by ``***``. Secrets shorter than 4 characters are
    left alone: masking "0" or "ab" would garble the text and protect nothing."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


# A query parameter whose name says it carries a credential: consumerToken, access_token,
# client_secret, X-Amz-Signature, X-Amz-Credential, api_key, sig...
_SECRET_QUERY = re.compile(
    r"(?i)([?&][^=&\s\"']*(?:token|secret|password|signature|credential|key|sig)[^=&\s\"']*)"
    r"=[^&\s\"']+"
)


def redact_url(text: str) -> str:
    """``text`` with the values of credential-like query parameters replaced by ``***``."""
    return _SECRET_QUERY.sub(rf"\1={REDACTED}", text)


def url_path(url: str | httpx.URL) -> str:
    """The path of a URL for messages and logs: no host, no query (a query could carry anything)."""
    return httpx.URL(str(url)).path


def response_request_id(response: httpx.Response,
                        headers: Iterable[str] = DEFAULT_REQUEST_ID_HEADERS) -> str | None:
    """The first of ``headers`` the answer carries: the id the vendor's support asks for."""
    for name in headers:
        if value := response.headers.get(name):
            return value
    return None


class _RedactCredentialQueries(logging.Filter):
    """httpx logs every request URL at INFO, query included: mask credential-like parameters
    before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_url(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _install_httpx_log_redaction() -> None:
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactCredentialQueries) for f in httpx_logger.filters):
        httpx_logger.addFilter(_RedactCredentialQueries())


_install_httpx_log_redaction()


_ssl_context: ssl.SSLContext | None = None
_ssl_context_lock = threading.Lock()


def shared_ssl_context() -> ssl.SSLContext:
    """httpx's default certificate verification (certifi's CAs, or ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR``), built once per process and shared by every client. Building one reads
    the whole CA bundle: 20-40 ms of CPU for every client otherwise, paid by the first export
    of each connection while the exports behind it wait (issue 12). An ``SSLContext`` is safe
    to share between clients and threads."""
    global _ssl_context
    with _ssl_context_lock:
        if _ssl_context is None:
            _ssl_context = httpx.create_ssl_context()
        return _ssl_context


# --- what a vendor client supplies -------------------------------------------------------------


class BearerToken(httpx.Auth):
    """``Authorization: Bearer <token>``. Compared by identity in ``SessionAuth.renew``."""

    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request

    def __repr__(self) -> str:  # never the token
        return "BearerToken(***)"


@dataclass(frozen=True)
class SessionAuth:
    """How a client authenticates, for the 401 renew-once rule.

    ``current()``: the credentials to send now (creating a token or session if there is none; it
    may send requests itself, through ``VendorHttp.exchange``). ``renew(rejected)``: forget
    ``rejected`` so the next ``current()`` gets fresh ones; if another thread already replaced
    them, keep the replacement. No ``renew``: the credentials cannot be renewed by us (a user
    token), so a 401 is an ``AuthError`` without repeating the request.
    """

    current: Callable[[], httpx.Auth]
    renew: Callable[[httpx.Auth], None] | None = None


@dataclass(frozen=True)
class ErrorReading:
    """What a vendor's ``read_error`` hook read from a non-2xx answer. Every field is optional.

    ``code``: the vendor's stable error code (default: derived from the status). ``text``: what
    the server said, in plain words (added to the default message). ``details``: one line per
    problem (validation messages with what to change). ``request_id``: from the body, when the
    vendor puts it there. ``message``: the whole message, when the vendor words it itself (with
    what to fix). ``error_class``: for a 4xx other than 408/429, a more precise
    ``PermanentError`` class than the status gives. ``parked_for``: for a 4xx other than
    408/429, the vendor refuses this connection until someone acts on its side; the error is a
    ``ConnectionParked`` with this ``retry_after`` (how often to look again), never permanent.
    """

    code: str | None = None
    text: str | None = None
    details: list[str] = field(default_factory=list)
    request_id: str | None = None
    message: str | None = None
    error_class: type[PermanentError] | None = None
    parked_for: float | None = None


# --- the base ----------------------------------------------------------------------------------


class VendorHttp:
    """One long-lived ``httpx.Client`` of one connection, with the rules above. Thread safe
    (``httpx.Client`` is; the base keeps no per-request state)."""

    def __init__(
        self,
        *,
        system: str,
        display_name: str,
        base_url: str,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
        headers: dict[str, str] | None = None,
        session: SessionAuth | None = None,
        read_error: Callable[[httpx.Response], ErrorReading] | None = None,
        rate_limit_reset: Callable[[httpx.Response], float | None] | None = None,
        request_id_headers: Iterable[str] = DEFAULT_REQUEST_ID_HEADERS,
        secrets: Callable[[], Iterable[str | None]] | None = None,
        limiter: RateLimiter | None = None,
        on_response: Callable[[httpx.Response], None] | None = None,
    ) -> None:
        """``system``: the registry name errors carry; ``display_name``: the name in messages.
        ``limiter``: every exchange waits for a permit first (it may refuse: nothing sent).
        ``on_response``: sees every answer (any status), e.g. to feed rate-limit headers back."""
        self.system = system
        self.display_name = display_name
        self.session = session
        self._read_error = read_error
        self._rate_limit_reset = rate_limit_reset
        self._request_id_headers = tuple(request_id_headers)
        self._secrets = secrets
        self.limiter = limiter
        self._on_response = on_response
        self.client = httpx.Client(
            base_url=base_url,
            verify=shared_ssl_context(),
            timeout=timeout if timeout is not None else default_timeout(),
            transport=transport,
            headers=headers,
        )

    def close(self) -> None:
        self.client.close()

    # --- sending ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        what: str,
        authenticate: bool = True,
        stream: bool = False,
        gate: SendGate | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request; return the 2xx answer or raise the taxonomy.

        ``what`` names the request in messages ("the voucher", "the export list").
        ``authenticate``: send the session's credentials and renew them once on a 401 (False,
        or no session: send as is, e.g. to a pre-signed link; a token in the constructor's
        ``headers`` goes with every request, so a client that must sometimes send none keeps
        it in ``session``). ``stream``: a 2xx body is left
        unread for the caller (read it, then close the response); an error's body is read, at
        most ``ERROR_BODY_LIMIT`` bytes. ``gate``: see ``exchange``. Other keywords go to httpx.
        """
        session = self.session if authenticate else None
        auth = session.current() if session is not None else None
        response = self.exchange(method, url, what=what, auth=auth, stream=stream, gate=gate,
                                 **kwargs)
        if (response.status_code == 401 and session is not None and session.renew is not None
                and auth is not None):
            response.close()
            log.info("http.credentials_renewed_after_401",
                     extra={"system": self.system, "method": method,
                            "path": url_path(response.request.url)})
            session.renew(auth)
            response = self.exchange(method, url, what=what, auth=session.current(),
                                     stream=stream, gate=gate, **kwargs)
        if stream and not response.is_success:
            response = _read_error_body(response)
        self.raise_for_status(response, what)
        return response

    def exchange(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        what: str,
        auth: httpx.Auth | None = None,
        stream: bool = False,
        gate: SendGate | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One HTTP exchange, any status returned; transport failures raise the taxonomy.

        For what ``request`` does not fit (a token endpoint whose 400 means "bad credentials").
        A permit from the limiter comes first. With a ``gate`` the request leaves only if
        ``gate.open()`` says so, after the permit (else ``SendWithdrawn``), and each phase of
        the exchange is bounded by ``gate.timeout``.
        """
        if _REQUESTS_REFUSED.get():
            raise RequestRefused(f"{method} to {self.display_name} ({what}) while requests are "
                                 "refused")
        permit: AbstractContextManager[object] = (
            self.limiter.acquire() if self.limiter is not None else nullcontext()
        )
        if gate is not None:
            kwargs["timeout"] = httpx.Timeout(gate.timeout)
        request = self.client.build_request(method, url, **kwargs)
        path = request.url.path
        where = f"{method} {path}"
        started = time.monotonic()
        try:
            with permit:
                if gate is not None and not gate.open():
                    raise SendWithdrawn()
                response = self.client.send(request, auth=auth, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # No connection was made: nothing of this request reached the server.
            error: IntegrationError = TransientError(
                f"could not reach {self.display_name} for {what} ({where}): "
                f"{type(exc).__name__}", system=self.system,
                code="connect_timeout" if isinstance(exc, httpx.TimeoutException)
                else "connection_error", sent=False)
            raise self._logged(error, method, path, started) from None
        except httpx.UnsupportedProtocol:
            error = PermanentError(
                f"{self.display_name}'s URL for {what} is not an http(s) URL ({where}): fix "
                "the connection's URL", system=self.system, code="bad_url", sent=False)
            raise self._logged(error, method, path, started) from None
        except httpx.TimeoutException as exc:
            # Connected, so the request may have arrived: its outcome is unknown.
            error = TransientError(
                f"{self.display_name} did not answer {what} ({where}) in time "
                f"({type(exc).__name__})", system=self.system, code="timeout")
            raise self._logged(error, method, path, started) from None
        except httpx.TransportError as exc:
            error = TransientError(
                f"lost the connection to {self.display_name} during {what} ({where}): "
                f"{type(exc).__name__}", system=self.system, code="connection_lost")
            raise self._logged(error, method, path, started) from None
        log.log(
            logging.DEBUG if response.is_success else logging.INFO,
            "http.exchange",
            extra={"system": self.system, "method": method, "path": path,
                   "status": response.status_code, "elapsed_ms": _elapsed_ms(started),
                   "request_id": response_request_id(response, self._request_id_headers)},
        )
        if self._on_response is not None:
            self._on_response(response)
        return response

    def _logged(self, error: IntegrationError, method: str, path: str,
                started: float) -> IntegrationError:
        # The transport error's own text may quote the URL (query included): not in messages.
        log.info("http.exchange_failed",
                 extra={"system": self.system, "method": method, "path": path, "status": None,
                        "elapsed_ms": _elapsed_ms(started), "code": error.code,
                        "sent": error.sent})
        return error

    # --- answers ---------------------------------------------------------------------------

    def raise_for_status(self, response: httpx.Response, what: str) -> None:
        """Nothing for a 2xx; otherwise the error the status (and the vendor's body) means."""
        status = response.status_code
        if response.is_success:
            return
        reading = self._read_error(response) if self._read_error is not None else ErrorReading()
        request_id = reading.request_id or response_request_id(response, self._request_id_headers)
        where = f"{response.request.method} {url_path(response.request.url)}"
        note = f" (request id {request_id})" if request_id else ""
        says = f": {reading.text}" if reading.text else ""
        text = reading.text or f"HTTP {status}"
        name = self.display_name
        code = reading.code or _default_code(status)
        # The default messages put the server's words first; the status and request are in the
        # error's fields and the exchange's log line.
        error_class: type[IntegrationError]
        retry_after = None
        if status == 429:
            error_class = RateLimitedError
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if retry_after is None and self._rate_limit_reset is not None:
                retry_after = self._rate_limit_reset(response)
            default = (f"{name} rate-limited {what}{note}"
                       + (f"; retry after {retry_after:g} s" if retry_after is not None else ""))
        elif status >= 500 or status == 408:
            error_class = TransientError
            default = f"{name} failed with HTTP {status} on {what} ({where}){says}{note}"
        elif reading.parked_for is not None:
            error_class = ConnectionParked
            retry_after = reading.parked_for
            default = (f"{name} refused {what} until something changes on its side: {text}"
                       f"{note}; exports wait and look again every {retry_after:g} s")
        elif status == 401:
            error_class = reading.error_class or AuthError
            renewed = (" even after renewing them"
                       if self.session is not None and self.session.renew is not None else "")
            default = (f"{name} refused our credentials for {what}{renewed}{note}: check the "
                       "connection's credentials")
        elif status == 404:
            error_class = reading.error_class or NotFoundError
            default = f"{name} found nothing for {what} at {where}{says}{note}"
        elif status == 409:
            error_class = reading.error_class or PermanentError
            default = f"{name} reported a conflict on {what}: {text}{note}"
        else:
            error_class = reading.error_class or PermanentError
            default = f"{name} rejected {what}: {text}{note}"
        secrets = list(self._secrets()) if self._secrets is not None else []
        kwargs: dict[str, Any] = {}
        if issubclass(error_class, RateLimitedError):
            kwargs["retry_after"] = retry_after
        raise error_class(
            redact(reading.message or default, secrets),
            system=self.system,
            code=code,
            status_code=status,
            request_id=request_id,
            details=[redact(d, secrets) for d in reading.details],
            **kwargs,
        )

    def parse(self, model: type[ModelT], response: httpx.Response, what: str) -> ModelT:
        """A 2xx JSON body as ``model``; numbers become ``Decimal`` without passing a float.

        A body we cannot read is a ``TransientError`` (sent): the server answered, so after a
        POST the outcome is unknown (settled by a lookup), and a retry may read a good answer.
        The details name fields and problems, never the values (a token response's values are
        secrets), and the pydantic error is not chained for the same reason.
        """
        try:
            return model.model_validate(json.loads(response.content, parse_float=Decimal))
        except (ValueError, ValidationError) as exc:
            details = (
                [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()]
                if isinstance(exc, ValidationError)
                else [f"not JSON ({type(exc).__name__})"]
            )
        request = response.request
        raise TransientError(
            f"{self.display_name} answered {what} ({request.method} {url_path(request.url)}) "
            f"with a body that is not a valid {model.__name__}: {'; '.join(details[:5])}",
            system=self.system,
            code="unexpected_response",
            status_code=response.status_code,
            request_id=response_request_id(response, self._request_id_headers),
            details=details,
        )

    # --- downloads -------------------------------------------------------------------------

    def download(
        self,
        url: str | httpx.URL,
        sink: IO[bytes],
        *,
        what: str,
        max_bytes: int,
        authenticate: bool = True,
        expect_prefix: bytes | None = None,
        expect_name: str = "",
        **kwargs: Any,
    ) -> int:
        """Stream a file into ``sink``; returns its size.

        More than ``max_bytes`` stops it with ``PermanentError`` ``receipt_too_large``, whether
        Content-Length says so or the bytes do. ``expect_prefix`` (``b"%PDF-"``): a body that
        does not start with it stops at its first bytes, ``PermanentError``
        ``unexpected_response`` saying it is not ``expect_name`` (what was sent is the wrong
        document, which retrying does not change). A stream that breaks off is transient.
        ``sink`` may then hold a part: the caller throws it away. ``authenticate=False`` sends
        no credentials (a pre-signed link must not receive our token).
        """
        response = self.request("GET", url, what=what, authenticate=authenticate, stream=True,
                                **kwargs)
        path = url_path(url)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise self._too_large(what, path, max_bytes, f"it announces {int(declared)} bytes")
            size, head = 0, b""
            for chunk in self._chunks(response, what, path):
                if expect_prefix is not None and len(head) < len(expect_prefix):
                    head += chunk[: len(expect_prefix) - len(head)]
                    if len(head) == len(expect_prefix) or not expect_prefix.startswith(head):
                        self._check_prefix(head, expect_prefix, expect_name, what, path, response)
                size += len(chunk)
                if size > max_bytes:
                    raise self._too_large(what, path, max_bytes, "it is larger")
                sink.write(chunk)
            if expect_prefix is not None:
                self._check_prefix(head, expect_prefix, expect_name, what, path, response)
            return size
        finally:
            response.close()

    def _chunks(self, response: httpx.Response, what: str, path: str) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(DOWNLOAD_CHUNK_BYTES)
        except httpx.TimeoutException as exc:
            raise TransientError(
                f"{self.display_name} stopped sending {what} {path} ({type(exc).__name__})",
                system=self.system, code="timeout") from None
        except httpx.TransportError as exc:
            raise TransientError(
                f"the download of {what} {path} from {self.display_name} broke off "
                f"({type(exc).__name__})", system=self.system, code="connection_lost") from None

    def _check_prefix(self, head: bytes, prefix: bytes, name: str, what: str, path: str,
                      response: httpx.Response) -> None:
        if not head.startswith(prefix):
            raise PermanentError(
                f"{what} {path} from {self.display_name} is not {name or 'what we expected'} "
                f"(Content-Type {response.headers.get('content-type', 'missing')})",
                system=self.system, code="unexpected_response",
                status_code=response.status_code,
                request_id=response_request_id(response, self._request_id_headers))

    def _too_large(self, what: str, path: str, limit: int, why: str) -> PermanentError:
        return PermanentError(
            f"{what} {path} from {self.display_name} is larger than the {limit} bytes we accept "
            f"({why}); raise AIC_RECEIPT_MAX_BYTES to accept it",
            system=self.system, code="receipt_too_large")


# --- helpers -----------------------------------------------------------------------------------


def _default_code(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    return {401: "unauthorized", 403: "forbidden", 404: "not_found", 408: "request_timeout",
            409: "conflict", 400: "validation_failed", 422: "validation_failed"}.get(
        status, f"http_{status}")


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _read_error_body(response: httpx.Response) -> httpx.Response:
    """A streamed error answer with (the start of) its body read, for the error mapping."""
    body = b""
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        pass  # the status says enough
    finally:
        response.close()
    # iter_bytes() has decoded the body already: drop the headers that describe the wire form.
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(response.status_code, headers=headers,
                          content=body[:ERROR_BODY_LIMIT], request=response.request)


__all__ = [
    "DEFAULT_REQUEST_ID_HEADERS",
    "ERROR_BODY_LIMIT",
    "BearerToken",
    "ErrorReading",
    "SessionAuth",
    "VendorHttp",
    "default_timeout",
    "redact",
    "redact_url",
    "response_request_id",
    "retry_after_seconds",
    "seconds_header",
    "url_path",
]
