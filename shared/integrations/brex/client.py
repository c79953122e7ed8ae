"""``BrexClient``: the one client of Brex's Expenses API for one connection.

One long-lived ``httpx.Client``; every API exchange goes through ``_request`` (auth header,
transport errors, Brex's error bodies -> the taxonomy of ``shared.integrations.errors``), so
it can move onto a shared HTTP base without touching the calls. Receipt downloads are the one
exception on purpose: pre-signed S3 links carry their own signature and must never see our
token (S3 refuses a request with two auth mechanisms, and the token would leak to AWS).

Auth [doc: authentication]: a *user token* (dashboard > Developer > Settings), sent as
``Authorization: Bearer``. It cannot be renewed by us: a 401 (invalid or revoked) or a 403 that
says the token expired means a new token for the connection (``AuthError``).

The OAuth partner shape, not built yet [doc: partner_authentication]: authorization code grant
at ``https://accounts-api.brex.com/oauth2/default`` (issuer from its
``.well-known/openid-configuration``) with ``offline_access``; credentials would be
``client_id``, ``client_secret`` and ``refresh_token``; access tokens live one hour, so such a
provider renews before expiry and once on a 401, then repeats the request. ``TokenProvider`` is
the seam: ``token()`` and ``renew(rejected)``; ``UserToken.renew`` returns None (nothing to
renew), which turns the 401 into ``AuthError`` at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from shared.config import get_settings
from shared.integrations.brex.models import (
    EXPAND,
    BrexErrorBody,
    Expense,
    ExpensePage,
    UpdateExpenseRequest,
)
from shared.integrations.errors import (
    AuthError,
    IntegrationError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    TransientError,
)

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_PAGE_SIZE = 100  # [doc: changelog Feb 2026] was 1000; above it Brex answers 400
_ERROR_BODY_LIMIT = 64 * 1024


class TokenProvider(Protocol):
    def token(self) -> str: ...
    # A fresh token after ``rejected`` got a 401, or None when there is nothing to renew.
    def renew(self, rejected: str) -> str | None: ...


class UserToken:
    """A customer's user token: static, never renewed by us."""

    def __init__(self, value: str) -> None:
        if not value or not value.strip():
            raise ValueError("the Brex user token is empty")
        self._value = value.strip()

    def token(self) -> str:
        return self._value

    def renew(self, rejected: str) -> str | None:
        return None

    def __repr__(self) -> str:
        return "UserToken(<redacted>)"


class ListingStopped(TransientError):
    """A walk over the expense list that could not finish: Brex's cursor led back to a page
    already read (a looping cursor) or the walk reached its page cap. What was read is real;
    what was not is unknown, so the caller must not move its high-water mark. ``next_cursor``
    is where the walk stood (a looping cursor: the one that led back)."""

    def __init__(self, message: str, *, code: str, next_cursor: str | None) -> None:
        super().__init__(message, system=BrexClient.system, code=code)
        self.next_cursor = next_cursor


class BrexClient:
    """Client of one Brex account's Expenses API (one token)."""

    system = "brex"
    page_size = MAX_PAGE_SIZE
    # At most this many pages in one walk (10,000 expenses): a cursor that never ends, or one
    # that leads back, cannot keep a poll running forever.
    max_pages = 100

    def __init__(self, base_url: str, *, token: TokenProvider | str,
                 timeout: httpx.Timeout | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        if timeout is None:
            settings = get_settings()
            timeout = httpx.Timeout(settings.http_read_timeout,
                                    connect=settings.http_connect_timeout)
        self.base_url = base_url.rstrip("/")
        self._tokens: TokenProvider = UserToken(token) if isinstance(token, str) else token
        self._http = httpx.Client(
            base_url=self.base_url + "/", timeout=timeout, transport=transport,
            headers={"Accept": "application/json", "User-Agent": "accounting-integration-client"})

    def __repr__(self) -> str:
        return f"BrexClient(base_url={self.base_url!r})"  # never the token

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BrexClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- Expenses API -----------------------------------------------------------------------

    def list_page(self, filters: Mapping[str, Any], *, cursor: str | None = None,
                  limit: int | None = None) -> ExpensePage:
        """One page of ``GET /v1/expenses``. ``filters``: query keys as Brex names them, list
        values sent as repeated ``name[]=value`` keys (``{"status[]": ["APPROVED"]}``)."""
        limit = self.page_size if limit is None else limit
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be 1..{MAX_PAGE_SIZE}, got {limit}")
        params = _query(filters) + [("limit", str(limit))]
        if cursor:
            params.append(("cursor", cursor))
        response = self._request("GET", "/v1/expenses", params=params)
        return self._parse(ExpensePage, response)

    def walk(self, filters: Mapping[str, Any], *, cursor: str | None = None,
             max_pages: int | None = None) -> Iterator[ExpensePage]:
        """Every page from ``cursor`` on, with the same filters on every page [doc:
        pagination]. Raises ``ListingStopped`` (after yielding what was read) when a
        ``next_cursor`` repeats one already used in this walk or ``max_pages`` is reached
        with a cursor still to follow."""
        cap = self.max_pages if max_pages is None else max_pages
        used: set[str | None] = {cursor}
        pages = 0
        while True:
            page = self.list_page(filters, cursor=cursor)
            pages += 1
            yield page
            cursor = page.next_cursor
            if not cursor:
                return
            if cursor in used:
                raise ListingStopped(f"Brex's list of expenses returned a cursor already used "
                                     f"in this walk after {pages} page(s): the cursor loops",
                                     code="cursor_loop", next_cursor=cursor)
            if pages >= cap:
                raise ListingStopped(f"the walk over Brex's expenses stopped at its cap of "
                                     f"{cap} pages with more to read", code="page_cap",
                                     next_cursor=cursor)
            used.add(cursor)

    def walk_items(self, filters: Mapping[str, Any], *,
                   max_pages: int | None = None) -> list[Expense]:
        """Every expense of a complete walk (``ListingStopped`` if it cannot complete)."""
        return [e for page in self.walk(filters, max_pages=max_pages) for e in page.items]

    def get_expense(self, expense_id: str, *, expand: Sequence[str] = EXPAND) -> Expense:
        """``GET /v1/expenses/{id}`` [spec]: a fresh copy, receipt links included."""
        response = self._request("GET", f"/v1/expenses/{quote(expense_id, safe='')}",
                                 params=[("expand[]", e) for e in expand], what=expense_id)
        return self._parse(Expense, response)

    def update_memo(self, expense_id: str, memo: str | None, *, idempotency_key: str) -> Expense:
        """``PUT /v1/expenses/card/{expense_id}`` with ``{"memo"}`` and ``Idempotency-Key``: a
        repeat with the same key is answered with the first answer and applies nothing again
        [doc: idempotency]. Brex takes ASCII only in free text [doc: error_codes]."""
        if memo is not None and not memo.isascii():
            raise ValueError("a Brex memo must be ASCII")
        body = UpdateExpenseRequest(memo=memo).model_dump(mode="json")
        response = self._request("PUT", f"/v1/expenses/card/{quote(expense_id, safe='')}",
                                 json=body, headers={"Idempotency-Key": idempotency_key},
                                 what=expense_id)
        return self._parse(Expense, response)

    def download(self, url: str, sink: BinaryIO, *, max_bytes: int) -> int:
        """Stream a pre-signed receipt link into ``sink``, at most ``max_bytes``; returns the
        size. No Authorization header: the link is its own credential. A 403 is
        ``PermanentError`` with code ``link_expired`` (S3's answer to an expired or altered
        link); the caller gets a fresh link by fetching the expense again."""
        target = httpx.URL(url).copy_with(fragment=None)
        try:
            with self._http.stream("GET", target, headers={"Accept": "*/*"}) as response:
                if response.status_code == 403:
                    raise PermanentError(
                        f"the receipt link {target.path} was refused (HTTP 403): pre-signed "
                        "links expire 15 minutes after the expense was fetched",
                        system=self.system, code="link_expired", status_code=403)
                if response.status_code == 404:
                    raise NotFoundError(f"the receipt {target.path} does not exist (HTTP 404)",
                                        system=self.system, code="receipt_not_found",
                                        status_code=404)
                if not 200 <= response.status_code < 300:
                    error = TransientError if response.status_code >= 500 else PermanentError
                    raise error(f"the receipt download {target.path} failed "
                                f"(HTTP {response.status_code})", system=self.system,
                                code=f"http_{response.status_code}",
                                status_code=response.status_code)
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise _too_large(target, max_bytes, f"it announces {declared} bytes")
                size = 0
                for chunk in response.iter_bytes(64 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise _too_large(target, max_bytes, "it kept sending")
                    sink.write(chunk)
                return size
        except httpx.TimeoutException as exc:
            raise TransientError(f"the receipt download {target.path} timed out",
                                 system=self.system, code="timeout") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"the receipt download {target.path} broke off "
                                 f"({type(exc).__name__})", system=self.system,
                                 code="connection_error") from exc

    # --- transport and error mapping --------------------------------------------------------

    def _request(self, method: str, path: str, *, what: str | None = None,
                 headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        """One authenticated exchange; every failure becomes the error taxonomy. A 401 is
        repeated once with a renewed token when the provider has one (OAuth); ``what`` names
        the expense in a 404's message."""
        token = self._tokens.token()
        response = self._send(method, path, token, headers, **kwargs)
        if response.status_code == 401:
            renewed = self._tokens.renew(token)
            if renewed is not None:
                response = self._send(method, path, renewed, headers, **kwargs)
        self._raise_for_status(response, method, path, what)
        return response

    def _send(self, method: str, path: str, token: str, headers: dict[str, str] | None,
              **kwargs: Any) -> httpx.Response:
        started = time.monotonic()
        try:
            response = self._http.request(
                method, path, headers={**(headers or {}), "Authorization": f"Bearer {token}"},
                **kwargs)
        except httpx.TimeoutException as exc:
            raise TransientError(f"Brex did not answer {method} {path} in time "
                                 f"({type(exc).__name__})", system=self.system,
                                 code="timeout") from exc
        except httpx.TransportError as exc:
            # ConnectError: nothing reached Brex; anything later may have.
            raise TransientError(f"could not reach Brex for {method} {path} "
                                 f"({type(exc).__name__})", system=self.system,
                                 code="connection_error",
                                 sent=not isinstance(exc, httpx.ConnectError)) from exc
        log.debug("brex.http", extra={
            "method": method, "path": path, "status": response.status_code,
            "trace_id": response.headers.get("X-Brex-Trace-Id"),
            "duration_ms": round((time.monotonic() - started) * 1000)})
        return response

    def _raise_for_status(self, response: httpx.Response, method: str, path: str,
                          what: str | None) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        body = _error_body(response)
        kind = (body.code or body.type) if body else None
        says = f": {body.message}" if body and body.message else ""
        common: dict[str, Any] = {"system": self.system, "code": kind or f"http_{status}",
                                  "status_code": status,
                                  "request_id": response.headers.get("X-Brex-Trace-Id")}
        where = f"{method} {path}"
        if status == 429:
            retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            raise RateLimitedError(f"Brex rate-limited {where} (HTTP 429){says}",
                                   retry_after=retry_after, **common)
        if status >= 500:
            raise TransientError(f"Brex failed on {where} (HTTP {status}){says}", **common)
        if status == 401:
            raise AuthError(f"Brex refused the token on {where} (HTTP 401{says}): it is "
                            "invalid or revoked; create a new user token in Brex (Developer > "
                            "Settings) and update this connection", **common)
        if status == 403:
            raise AuthError(f"Brex refused {where} (HTTP 403{says}): the token has expired "
                            "(unused for 30 days) or lacks a scope (expenses.card.readonly to "
                            "read, expenses.card to write the memo); create a new user token",
                            **common)
        if status == 404:
            raise NotFoundError(f"Brex has no expense {what or path}{says}", **common)
        raise PermanentError(f"Brex refused {where} (HTTP {status}){says}", **common)

    def _parse(self, model: type[ModelT], response: httpx.Response) -> ModelT:
        """A JSON body as ``model``; numbers never pass through a float."""
        try:
            return model.model_validate(json.loads(response.content, parse_float=Decimal))
        except (ValueError, ValidationError) as exc:
            details = ([f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
                       if isinstance(exc, ValidationError) else [str(exc)])
            raise PermanentError(
                f"Brex answered {response.request.method} {response.request.url.path} with a "
                f"body that is not a valid {model.__name__}: {'; '.join(details[:5])}",
                system=self.system, code="unexpected_response",
                status_code=response.status_code,
                request_id=response.headers.get("X-Brex-Trace-Id"), details=details) from exc


# --- helpers ---------------------------------------------------------------------------------


def _query(filters: Mapping[str, Any]) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for name, value in filters.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            if not name.endswith("[]"):
                raise ValueError(f"array filter {name!r} must be named with [] as Brex does")
            params += [(name, str(v)) for v in sorted(value)]
        elif isinstance(value, datetime):
            params.append((name, _rfc3339(value)))
        else:
            params.append((name, str(value)))
    return params


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("a time filter must carry its time zone")
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _too_large(url: httpx.URL, limit: int, why: str) -> PermanentError:
    return PermanentError(f"the receipt {url.path} is larger than the {limit} bytes we accept "
                          f"({why}); raise AIC_RECEIPT_MAX_BYTES to accept it",
                          system=BrexClient.system, code="receipt_too_large")


def _error_body(response: httpx.Response) -> BrexErrorBody | None:
    try:
        payload = json.loads(response.content[:_ERROR_BODY_LIMIT])
        return BrexErrorBody.model_validate(payload) if isinstance(payload, dict) else None
    except (ValueError, ValidationError):
        return None  # a gateway's HTML page: the status says enough


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date); Brex documents none, a proxy may send
    one."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
