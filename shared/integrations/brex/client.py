"""``BrexClient``: the one client of Brex's Expenses API for one connection.

It sends through the shared HTTP base (``shared.integrations.http.VendorHttp``: timeouts, the
error taxonomy, Retry-After, request ids, redaction, log fields, capped downloads) and keeps what
is Brex's own: the paths, the token, and how Brex's (and S3's) errors read. The token lives in
the base's ``session``, not in its default headers, on purpose: pre-signed S3 receipt links
carry their own signature and must never see it (S3 refuses a request with two auth mechanisms,
and the token would leak to AWS), so downloads go with ``authenticate=False``.

Auth [doc: authentication]: a *user token* (dashboard > Developer > Settings), sent as
``Authorization: Bearer``. It cannot be renewed by us: a 401 (invalid or revoked) or a 403 that
says the token expired means a new token for the connection (``AuthError``).

The OAuth partner shape, not built yet [doc: partner_authentication]: authorization code grant
at ``https://accounts-api.brex.com/oauth2/default`` (issuer from its
``.well-known/openid-configuration``) with ``offline_access``; credentials would be
``client_id``, ``client_secret`` and ``refresh_token``; access tokens live one hour, so such a
provider renews before expiry and once on a 401, then repeats the request. ``TokenProvider`` is
the seam: ``token()`` and ``renew(rejected)``; ``UserToken.renew`` is None (nothing to renew),
which turns the 401 into ``AuthError`` at once, without repeating the request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from shared.integrations.brex.models import (
    EXPAND,
    BrexErrorBody,
    Expense,
    ExpensePage,
    UpdateExpenseRequest,
)
from shared.integrations.errors import AuthError, PermanentError, TransientError
from shared.integrations.http import (
    ERROR_BODY_LIMIT,
    BearerToken,
    ErrorReading,
    SessionAuth,
    VendorHttp,
)

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100  # [doc: changelog Feb 2026] was 1000; above it Brex answers 400
# Brex's id for a request (what its support asks for); S3's for a receipt download.
REQUEST_ID_HEADERS = ("X-Brex-Trace-Id", "x-amz-request-id")


class TokenProvider(Protocol):
    def token(self) -> str: ...

    # Forget ``rejected`` (it got a 401) so the next ``token()`` is fresh; None when there is
    # nothing to renew (the 401 is final at once).
    renew: Callable[[str], None] | None


class UserToken:
    """A customer's user token: static, never renewed by us."""

    def __init__(self, value: str) -> None:
        if not value or not value.strip():
            raise ValueError("the Brex user token is empty")
        self._value = value.strip()

    renew = None  # a user token is replaced by a person, in Brex and in the connection

    def token(self) -> str:
        return self._value

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
        """``timeout``: None takes ``AIC_HTTP_*`` from settings."""
        self.base_url = base_url.rstrip("/")
        self._tokens: TokenProvider = UserToken(token) if isinstance(token, str) else token
        self._auth: BearerToken | None = None  # the token last sent, for redaction
        self._http = VendorHttp(
            system=self.system,
            display_name="Brex",
            base_url=self.base_url + "/",
            timeout=timeout,
            transport=transport,
            # No Authorization here: see the module's docstring (receipt links).
            headers={"Accept": "application/json", "User-Agent": "accounting-integration-client"},
            session=SessionAuth(current=self._current_auth,
                                renew=self._renew if self._tokens.renew is not None else None),
            read_error=self._read_error,
            request_id_headers=REQUEST_ID_HEADERS,
            secrets=lambda: (self._auth.token if self._auth else None,),
        )

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
        response = self._http.request("GET", "/v1/expenses", params=params,
                                      what="the expense list")
        return self._http.parse(ExpensePage, response, "the expense list")

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
        what = f"expense {expense_id}"
        response = self._http.request("GET", f"/v1/expenses/{quote(expense_id, safe='')}",
                                      params=[("expand[]", e) for e in expand], what=what)
        return self._http.parse(Expense, response, what)

    def update_memo(self, expense_id: str, memo: str | None, *, idempotency_key: str) -> Expense:
        """``PUT /v1/expenses/card/{expense_id}`` with ``{"memo"}`` and ``Idempotency-Key``: a
        repeat with the same key is answered with the first answer and applies nothing again
        [doc: idempotency]. Brex takes ASCII only in free text [doc: error_codes]."""
        if memo is not None and not memo.isascii():
            raise ValueError("a Brex memo must be ASCII")
        body = UpdateExpenseRequest(memo=memo).model_dump(mode="json")
        what = f"the memo of expense {expense_id}"
        response = self._http.request("PUT", f"/v1/expenses/card/{quote(expense_id, safe='')}",
                                      json=body, headers={"Idempotency-Key": idempotency_key},
                                      what=what)
        return self._http.parse(Expense, response, what)

    def download(self, url: str, sink: BinaryIO, *, max_bytes: int) -> int:
        """Stream a pre-signed receipt link into ``sink``, at most ``max_bytes``; returns the
        size. No Authorization header: the link is its own credential. A 403 is
        ``PermanentError`` with code ``link_expired`` (S3's answer to an expired or altered
        link); the caller gets a fresh link by fetching the expense again."""
        target = httpx.URL(url).copy_with(fragment=None)
        return self._http.download(target, sink, what="the receipt", max_bytes=max_bytes,
                                   authenticate=False, headers={"Accept": "*/*"})

    # --- our token and Brex's errors --------------------------------------------------------

    def _current_auth(self) -> httpx.Auth:
        token = self._tokens.token()
        auth = self._auth
        if auth is None or auth.token != token:
            auth = self._auth = BearerToken(token)
        return auth

    def _renew(self, rejected: httpx.Auth) -> None:
        if self._tokens.renew is not None and isinstance(rejected, BearerToken):
            self._tokens.renew(rejected.token)

    def _read_error(self, response: httpx.Response) -> ErrorReading:
        """Brex's ``{"type", "message", "code"}`` in plain words, with what to do. An answer to
        a request that carried no token of ours is S3's, about a pre-signed receipt link."""
        status = response.status_code
        where = f"{response.request.method} {response.request.url.path}"
        if "Authorization" not in response.request.headers:
            return _read_link_error(response, where)
        body = _error_body(response)
        # A gateway's HTML page has no code: the status names it (http_502).
        code = ((body.code or body.type) if body else None) or f"http_{status}"
        says = f": {body.message}" if body and body.message else ""
        if status == 429 or status >= 500 or status == 408:
            return ErrorReading(code=code, text=body.message if body else None)
        if status == 401:
            return ErrorReading(code=code, message=(
                f"Brex refused the token on {where} (HTTP 401{says}): it is invalid or revoked; "
                "create a new user token in Brex (Developer > Settings) and update this "
                "connection"))
        if status == 403:
            return ErrorReading(code=code, error_class=AuthError, message=(
                f"Brex refused {where} (HTTP 403{says}): the token has expired (unused for 30 "
                "days) or lacks a scope (expenses.card.readonly to read, expenses.card to write "
                "the memo); create a new user token"))
        if status == 404:
            return ErrorReading(code=code, text=body.message if body else None)
        return ErrorReading(code=code, message=f"Brex refused {where} (HTTP {status}){says}")


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


def _read_link_error(response: httpx.Response, where: str) -> ErrorReading:
    """S3's answer to a pre-signed receipt link (its XML body says no more than the status)."""
    status = response.status_code
    if status == 403:
        return ErrorReading(code="link_expired", error_class=PermanentError, message=(
            f"the receipt link {response.request.url.path} was refused (HTTP 403): pre-signed "
            "links expire 15 minutes after the expense was fetched"))
    if status == 404:
        return ErrorReading(code="receipt_not_found", message=(
            f"the receipt {response.request.url.path} does not exist (HTTP 404)"))
    return ErrorReading(code=f"http_{status}", message=(
        f"the receipt download {where} failed (HTTP {status})"))


def _error_body(response: httpx.Response) -> BrexErrorBody | None:
    try:
        payload = json.loads(response.content[:ERROR_BODY_LIMIT])
        return BrexErrorBody.model_validate(payload) if isinstance(payload, dict) else None
    except (ValueError, ValidationError):
        return None  # a gateway's HTML page: the status says enough
