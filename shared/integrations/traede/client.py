"""``TraedeClient``: the one client of TRAEDE's Export API for accounting entries (seed 001).

Two calls: the "not exported yet" feed of our ``system_id`` (read-only, always safe to repeat)
and mark-as-exported (at most 10 entries a call). It sends through the shared HTTP base
(``shared.integrations.http.VendorHttp``: timeouts, the error taxonomy, Retry-After, redaction,
log fields) and keeps what is TRAEDE's own: paths, the entry feed, and how its Laravel error
bodies read.

Auth [doc: guides/api-usage/authentication]: ``Authorization: Bearer <token>`` (a token issued
in TRAEDE's UI on behalf of a user; nothing documents a refresh, so a 401 is not retried) and
the integration's app key in ``X-Traede-App-Key``. TRAEDE also takes ``?access_token=``: never
used here, query strings end up in logs.

Thread safety: one ``VendorHttp`` (thread safe) and no other mutable state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import httpx
from pydantic import ValidationError

from shared.integrations.errors import AuthError, NotFoundError, PermanentError, TransientError
from shared.integrations.http import (
    ERROR_BODY_LIMIT,
    ErrorReading,
    VendorHttp,
    response_request_id,
)
from shared.integrations.traede.models import (
    MARK_MAX,
    LaravelError,
    MarkItem,
    MarkRequest,
    format_utc_datetime,
)

APP_KEY_HEADER = "X-Traede-App-Key"
EXPORT_PATH = "/accounting-entries/export"
MARK_PATH = "/accounting-entries/mark-as-exported"


class TraedeClient:
    """Client of one TRAEDE account's Export API, for one receiving ``system_id``."""

    system = "traede"
    # [assumed] the export feed takes the core API's Bruno ``limit``/``page``; the seed documents
    # no paging. Pages are asked for in this size; the server may answer fewer (see
    # ``list_not_exported``).
    page_size = 100
    # The most export requests one listing makes, so a server that ignores paging or a feed
    # that never ends cannot keep a poll running: 500 pages are 50,000 entries.
    max_requests_per_listing = 500

    def __init__(
        self,
        base_url: str,
        *,
        access_token: str,
        app_key: str,
        system_id: str,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``timeout``: None takes ``AIC_HTTP_*`` from settings."""
        # The API root including its version, e.g. https://api.traede.com/v10
        self.base_url = base_url.rstrip("/")
        self.system_id = system_id
        # The token is a fixed header: nothing documents a refresh, so there is no session to
        # renew and a 401 is an AuthError at once.
        self._http = VendorHttp(
            system=self.system,
            display_name="TRAEDE",
            base_url=self.base_url + "/",
            timeout=timeout,
            transport=transport,
            headers={
                "Accept": "application/json",
                "User-Agent": "accounting-integration-client",
                "Authorization": f"Bearer {access_token}",
                APP_KEY_HEADER: app_key,
            },
            read_error=_read_error,
            secrets=lambda: (access_token, app_key),
        )

    def __repr__(self) -> str:
        # Never the token or the app key.
        return f"TraedeClient(base_url={self.base_url!r}, system_id={self.system_id!r})"

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TraedeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the Export API -----------------------------------------------------------------------

    def list_not_exported(
        self,
        *,
        created_from: datetime | None = None,
        not_exported_since: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Every entry the feed lists for our ``system_id``: the raw entry objects (numbers as
        ``Decimal``), once each, in the feed's order.

        ``created_from``: only entries created at or after it (a ``created_at`` filter in the
        Filters Syntax). ``not_exported_since`` (UTC): also entries whose mark for our
        ``system_id`` is older [assumed; TRAEDE's section on it reads "TODO"]; for an operator's
        deliberate re-send only, never the automatic poll.

        Paging [assumed], and why it is walked the way it is:
        - Every listing starts at page 1 (a poll stores no page number): marking removes
          entries from the feed, so "page 3" of the last poll means other entries now (the
          sandbox pins that trap). Marks made by report tasks while this walk runs can shift a
          later page past an entry; it is still unmarked and is listed by the next poll.
        - A page shorter than asked ends the walk only when the server has already proven it
          gives pages of that size. Otherwise the short page may be an undocumented cap, and
          reading page 2 with our size would skip what lies between; so the walk goes on in
          the size the server gave. Without this, a cap smaller than our page and a front
          of permanently failing (forever unmarked) entries would hide every entry behind them.
        - A page that brings nothing new (a server ignoring ``page``, a stale read) ends it.
        """
        params: dict[str, Any] = {"system_id": self.system_id}
        if not_exported_since is not None:
            params["not_exported_since"] = format_utc_datetime(not_exported_since)
        if created_from is not None:
            params.update({
                "filter_groups[0][filters][0][key]": "created_at",
                "filter_groups[0][filters][0][operator]": "gte",
                "filter_groups[0][filters][0][value]": format_utc_datetime(created_from),
            })
        found: dict[int, dict[str, Any]] = {}
        limit, proven, page, requests = self.page_size, 0, 1, 0
        walk: set[int] = set()
        while True:
            requests += 1
            if requests > self.max_requests_per_listing:
                raise PermanentError(
                    f"TRAEDE's export feed for system_id {self.system_id} did not end within "
                    f"{self.max_requests_per_listing} pages of at most {limit} entries; set a "
                    "go-live date to leave the history before it out, or mark old entries in "
                    "TRAEDE", system=self.system, code="feed_too_long")
            entries = self._export_page(params, limit, page)
            new = [entry for entry in entries if entry["id"] not in walk]
            for entry in entries:
                # Listed twice (a page shifted, a stale read): one announcement, the latest copy.
                found[entry["id"]] = entry
                walk.add(entry["id"])
            if not new:
                break
            if len(entries) < limit:
                if limit <= proven:
                    break  # the server gives pages of ``limit``: this is the last one
                # A cap, or the end. Only page 1 can get here (a full page before it would have
                # proven ``limit``), so page 1 in the size the server gave is what we hold:
                # go on with page 2 in that size.
                limit = proven = len(entries)
                page = 2
                continue
            proven = max(proven, len(entries))
            page += 1
        return list(found.values())

    def mark_as_exported(self, items: Iterable[MarkItem]) -> None:
        """Mark 1..10 entries exported to our ``system_id`` [seed]. TRAEDE validates the whole
        call first (one bad item refuses all, nothing marked) [assumed Laravel]; a 5xx may come
        after it applied some or all [assumed: the sandbox's ``mark_failure`` knob]. Marking a
        marked entry again is harmless [assumed]: it only adds a line to its timeline."""
        body = MarkRequest(accounting_entries=list(items))
        if any(item.system_id != self.system_id for item in body.accounting_entries):
            raise ValueError("a mark names another system_id than this client's")
        self._http.request("POST", MARK_PATH, what="the mark-as-exported call",
                           json=body.model_dump(mode="json", exclude_none=True))

    def _export_page(self, params: dict[str, Any], limit: int, page: int) -> list[dict[str, Any]]:
        response = self._http.request("GET", EXPORT_PATH, what="the export feed",
                                      params={**params, "limit": limit, "page": page})
        payload = self._json(response)
        entries = payload.get("accounting_entries") if isinstance(payload, dict) else None
        if not isinstance(entries, list) or not all(
                isinstance(e, dict) and type(e.get("id")) is int for e in entries):
            # Without an integer id an entry can be neither told apart nor marked: refusing the
            # whole answer keeps the poll's error visible instead of dropping an entry unseen.
            # A 2xx we cannot read is transient for every system (shared/integrations/http.py).
            raise TransientError(
                f"TRAEDE answered GET {EXPORT_PATH} with a body that is not "
                '{"accounting_entries": [entry with an integer "id", ...]}',
                system=self.system, code="unexpected_response",
                status_code=response.status_code, request_id=response_request_id(response))
        return entries

    def _json(self, response: httpx.Response) -> Any:
        """The body as JSON; numbers become ``Decimal`` without passing through a float. Not JSON
        is transient, like every 2xx we cannot read (shared/integrations/http.py)."""
        try:
            return json.loads(response.content, parse_float=Decimal)
        except (ValueError, RecursionError) as exc:
            raise TransientError(
                f"TRAEDE answered {response.request.method} {response.request.url.path} with a "
                f"body that is not JSON ({type(exc).__name__})", system=self.system,
                code="unexpected_response", status_code=response.status_code,
                request_id=response_request_id(response)) from exc


# --- helpers ----------------------------------------------------------------------------------


def _read_error(response: httpx.Response) -> ErrorReading:
    """TRAEDE's (Laravel's) error body in plain words, with what to fix for its statuses."""
    status = response.status_code
    body = _error_body(response)
    says = f": {body.message}" if body and body.message else ""
    details = body.details() if body else []
    where = f"{response.request.method} {response.request.url.path}"
    if status == 401:
        return ErrorReading(code="invalid_token", details=details, message=(
            f"TRAEDE refused the access token (HTTP 401{says}) on {where}: the token of this "
            "connection is wrong, expired or was revoked in TRAEDE. Create a new API token in "
            "TRAEDE (it acts on behalf of a TRAEDE user) and set it as this connection's "
            "access_token"))
    if status == 403:
        return ErrorReading(code="forbidden", details=details, error_class=AuthError, message=(
            f"TRAEDE refused the request (HTTP 403{says}) on {where}: the access token was "
            f"accepted, so either the app key ({APP_KEY_HEADER}) is wrong - check this "
            "connection's app_key against the integration's API App in TRAEDE - or the token's "
            "TRAEDE user may not export accounting entries"))
    if status == 429 or status >= 500 or status == 408:
        return ErrorReading(details=details, text=body.message if body else None)
    if status == 404:
        return ErrorReading(details=details, error_class=NotFoundError, message=(
            f"TRAEDE has no {response.request.url.path} (HTTP 404{says}): check the "
            "connection's base_url (the API root including /v10)"))
    if status == 422:
        problems = "; ".join(details[:5]) or (body.message if body else "")
        return ErrorReading(details=details, message=(
            f"TRAEDE refused {where} as invalid (HTTP 422): {problems}"))
    return ErrorReading(details=details, message=f"TRAEDE refused {where} (HTTP {status}){says}")


def _error_body(response: httpx.Response) -> LaravelError | None:
    """Laravel's ``{"message", "errors"}``; None for anything else (a gateway's HTML page)."""
    try:
        payload = json.loads(response.content[:ERROR_BODY_LIMIT])
        return LaravelError.model_validate(payload) if isinstance(payload, dict) else None
    except (ValueError, ValidationError, RecursionError):
        return None
