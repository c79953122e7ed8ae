"""``FindityClient``: the one client of Findity's Connect API.

It sends through the shared HTTP base (``shared.integrations.http.VendorHttp``: timeouts, the
error taxonomy, 401 renew-once, Retry-After, redaction, log fields, capped downloads) and keeps
what is Findity's own: the OAuth access token, the paths, and how Findity's error codes read.
Every shape it sends or reads is a model of ``shared.integrations.findity.models``.

Thread safety: worker threads share one client per connection, so the token cache is guarded
by a lock (the base is thread safe).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from typing import BinaryIO
from urllib.parse import quote, unquote

import httpx
from pydantic import ValidationError

from shared.config import get_settings
from shared.integrations.errors import AuthError, NotFoundError, PermanentError
from shared.integrations.findity.models import (
    ExportList,
    ExportStatus,
    FindityErrorBody,
    FindityErrorCode,
    FindityExport,
    TokenResponse,
    UpdateStatusRequest,
    VoucherPackage,
    VoucherStatusUpdate,
)
from shared.integrations.http import (
    BearerToken,
    ErrorReading,
    SessionAuth,
    VendorHttp,
    response_request_id,
)

log = logging.getLogger(__name__)

RECIPIENT_HELP = (
    "configure an API report recipient in Findity Admin > Settings > Expense management > "
    "Integrations"
)


class FindityClient:
    """Client of one Findity organization's Connect API (one set of client credentials)."""

    system = "findity"
    # [assumed] Findity's maximum page size is not documented; 100 is a conservative page.
    page_size = 100
    # Renew the token this long before Findity says it expires (capped at a tenth of its life,
    # so a short-lived token is not renewed on every call).
    token_renew_margin_seconds = 60.0

    def __init__(
        self,
        base_url: str,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        organization_id: str,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``timeout``: None takes ``AIC_HTTP_*`` from settings."""
        self.base_url = base_url.rstrip("/")
        self.token_url = token_url
        self.organization_id = organization_id
        self._client_id = client_id
        self._client_secret = client_secret
        self._token_lock = threading.Lock()
        self._auth: BearerToken | None = None
        self._token_expires_at = 0.0  # time.monotonic() deadline
        # httpx joins a relative path onto the base URL's path ("/api" + "/v1/...").
        self._http = VendorHttp(
            system=self.system,
            display_name="Findity",
            base_url=self.base_url + "/",
            timeout=timeout,
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "accounting-integration-client"},
            session=SessionAuth(current=self._current_auth, renew=self._forget_auth),
            read_error=self._read_error,
            secrets=lambda: (self._client_secret, self._auth.token if self._auth else None),
        )

    def __repr__(self) -> str:
        # Never the secret or the token.
        return (
            f"FindityClient(base_url={self.base_url!r}, "
            f"organization_id={self.organization_id!r})"
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FindityClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- Connect API --------------------------------------------------------------------------

    def list_unprocessed_exports(self) -> list[FindityExport]:
        """All UNPROCESSED exports of the organization, following every page (offset/max).

        Offset paging over a list that shrinks while we read it (exports processed meanwhile)
        can skip an export; the periodic reconciliation poll picks it up next time. An export
        seen twice (the list grew meanwhile) is returned once.
        """
        exports: dict[str, FindityExport] = {}
        offset = 0
        while True:
            response = self._http.request(
                "GET",
                self._org_path("exports"),
                what="the export list",
                params={"status": ExportStatus.UNPROCESSED.value, "offset": offset,
                        "max": self.page_size},
            )
            page = self._http.parse(ExportList, response, "the export list")
            for export in page.data:
                exports.setdefault(export.id, export)
            offset += len(page.data)
            # An empty page ends the loop even if `total` promises more: never spin forever.
            if not page.data or offset >= page.meta.total:
                break
        return list(exports.values())

    def get_export(self, export_id: str) -> FindityExport:
        response = self._http.request("GET", self._export_path(export_id), what="the export")
        return self._http.parse(FindityExport, response, "the export")

    def get_voucher_package(self, export_id: str) -> VoucherPackage:
        response = self._http.request(
            "GET", self._export_path(export_id, "export"), what="the voucher package"
        )
        return self._http.parse(VoucherPackage, response, "the voucher package")

    def update_status(self, export_id: str, updates: list[VoucherStatusUpdate]) -> None:
        body = UpdateStatusRequest(voucher_updates=updates).to_wire()
        self._http.request(
            "PUT", self._export_path(export_id, "updatestatus"), what="the status update",
            json=body,
        )

    def put_content(self, export_id: str, filename: str, content: bytes, content_type: str) -> None:
        """Attach a file to the export.

        [assumed] the body is the raw file with its Content-Type; the file name travels in a
        Content-Disposition header (Findity does not document the upload encoding).
        """
        headers = {
            "Content-Type": content_type,
            "Content-Disposition": _content_disposition(filename),
        }
        self._http.request(
            "PUT",
            self._export_path(export_id, "content"),
            what="the export's file",
            content=content,
            headers=headers,
        )

    def get_content(self, export_id: str) -> bytes:
        response = self._http.request(
            "GET",
            self._export_path(export_id, "content"),
            what="the export's file",
            headers={"Accept": "*/*"},
        )
        return response.content

    def get_receipt_pdf(self, basis_url: str, *, max_bytes: int | None = None) -> bytes:
        """The voucher's booking data and receipts as PDF: ``basisUrl`` with ``format=pdf`` [doc].

        Same rules as ``download_receipt_pdf``; the PDF is returned as bytes.
        """
        sink = io.BytesIO()
        self.download_receipt_pdf(basis_url, sink, max_bytes=max_bytes)
        return sink.getvalue()

    def download_receipt_pdf(self, basis_url: str, sink: BinaryIO, *,
                             max_bytes: int | None = None) -> int:
        """Stream the voucher's basis PDF into ``sink``; returns its size.

        Findity publishes no size limit and a basis PDF holds every receipt image of its
        voucher, so it is streamed and counted: more than ``max_bytes`` (default
        ``AIC_RECEIPT_MAX_BYTES``) stops the download with a ``PermanentError``
        ``receipt_too_large``, whatever Content-Length says or omits. A body that does not start
        like a PDF stops it at the first bytes (``unexpected_response``). ``sink`` may then hold
        a part: the caller throws it away.

        The Bearer token is only sent to the Connect API's or token endpoint's host: a basis URL
        pointing elsewhere is refused rather than handed our token.
        """
        limit = max_bytes if max_bytes is not None else get_settings().receipt_max_bytes
        url = httpx.URL(basis_url)
        if not url.is_absolute_url:
            url = httpx.URL(self.base_url + "/").join(basis_url)
        self._check_token_host(url)
        return self._http.download(
            url.copy_merge_params({"format": "pdf"}),
            sink,
            what="the basis document",
            max_bytes=limit,
            expect_prefix=b"%PDF-",
            expect_name="a PDF",
            headers={"Accept": "application/pdf"},
        )

    # --- token --------------------------------------------------------------------------------

    def _current_auth(self) -> BearerToken:
        with self._token_lock:
            if self._auth is None or time.monotonic() >= self._token_expires_at:
                self._fetch_token()
            assert self._auth is not None
            return self._auth

    def _forget_auth(self, rejected: httpx.Auth) -> None:
        """Findity refused ``rejected`` (401): the next request fetches a new token."""
        with self._token_lock:
            # Another thread may already have renewed it; only drop the token that failed.
            if self._auth is rejected:
                self._auth = None

    def _fetch_token(self) -> None:
        """Client credentials grant [doc]. Called with ``_token_lock`` held.

        The refresh token Findity also returns is not used: it works once, and the client
        credentials can always get a fresh token, so it would only add a second path to fail.
        """
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
        }
        response = self._http.exchange("POST", self.token_url, what="the access token", data=form)
        if response.status_code in (400, 401, 403):
            raise AuthError(
                f"Findity refused the client credentials of organization {self.organization_id} "
                f"(HTTP {response.status_code}{_oauth_error_suffix(response)}): check the "
                "client id and secret of this connection",
                system=self.system,
                code="invalid_client",
                status_code=response.status_code,
                request_id=response_request_id(response),
            )
        self._http.raise_for_status(response, "the access token")
        token = self._http.parse(TokenResponse, response, "the access token")
        margin = min(self.token_renew_margin_seconds, token.expires_in / 10)
        self._auth = BearerToken(token.access_token)
        self._token_expires_at = time.monotonic() + token.expires_in - margin
        log.info(
            "findity.token_issued",
            extra={"organization_id": self.organization_id, "expires_in": token.expires_in},
        )

    def _check_token_host(self, url: httpx.URL) -> None:
        allowed = {httpx.URL(self.base_url).netloc, httpx.URL(self.token_url).netloc}
        if url.netloc not in allowed:
            raise PermanentError(
                f"the basis URL of a voucher points at {url.host}, not at Findity's API host "
                f"{httpx.URL(self.base_url).host}; refusing to send the access token there",
                system=self.system,
                code="untrusted_basis_url",
            )

    # --- Findity's error bodies ---------------------------------------------------------------

    def _read_error(self, response: httpx.Response) -> ErrorReading:
        """Findity's ``{"code", "message"}`` in plain words, with what to check for its codes."""
        status = response.status_code
        error = _error_body(response)
        code = error.code if error else None  # None: the base's code for the status
        says = f": {error.message}" if error and error.message else ""
        where = f"{response.request.method} {response.request.url.path}"
        org = self.organization_id
        if status == 401:
            return ErrorReading(code=code, message=(
                f"Findity rejected a freshly issued access token for organization {org} on "
                f"{where} (HTTP 401): check that the API client is allowed to read this "
                "organization's exports"), error_class=AuthError)
        if status == 429 or status >= 500 or status == 408:
            return ErrorReading(code=code, text=error.message if error else None)
        if code == FindityErrorCode.RECIPIENT_NOT_FOUND:
            return ErrorReading(code=code, error_class=PermanentError, message=(
                f"Findity has no API report recipient for organization {org}{says}; "
                f"{RECIPIENT_HELP}"))
        if code == FindityErrorCode.EXPORT_NOT_FOUND:
            return ErrorReading(code=code, error_class=NotFoundError, message=(
                f"Findity has no export {_export_id(response.request.url) or '(unknown)'} for "
                f"organization {org}{says}; check that the export id came from this "
                "organization's export list"))
        if code == FindityErrorCode.ORGANIZATION_NOT_FOUND:
            return ErrorReading(code=code, error_class=NotFoundError, message=(
                f"Findity has no organization {org}{says}; check the organization id against "
                "the one shown in Findity Admin"))
        # Any other 4xx, a 404 included: a 404 without one of the codes above is about a part
        # (one voucher's basis, one update), not the export or organization as a whole.
        label = f"HTTP {status} {code}" if code else f"HTTP {status}"
        return ErrorReading(code=code, error_class=PermanentError,
                            message=f"Findity refused {where} ({label}){says}")

    # --- paths --------------------------------------------------------------------------------

    def _org_path(self, *parts: str) -> str:
        segments = ["v1", "connect", "organizations", self.organization_id, *parts]
        return "/" + "/".join(quote(s, safe="") for s in segments)

    def _export_path(self, export_id: str, *parts: str) -> str:
        return self._org_path("exports", export_id, *parts)


# --- helpers ----------------------------------------------------------------------------------


def _export_id(url: httpx.URL) -> str | None:
    """The export a Connect API path names (``.../exports/{id}/...``), for messages."""
    segments = url.path.split("/")
    if "exports" in segments and segments.index("exports") + 1 < len(segments):
        return unquote(segments[segments.index("exports") + 1]) or None
    return None


def _error_body(response: httpx.Response) -> FindityErrorBody | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    if not isinstance(payload, dict) or "code" not in payload:
        return None
    try:
        return FindityErrorBody.model_validate(payload)
    except ValidationError:
        return None


def _oauth_error_suffix(response: httpx.Response) -> str:
    """`` invalid_client`` from an OAuth error body ``{"error": ...}``; never echoes the form."""
    try:
        payload = response.json()
    except ValueError:
        return ""
    error = payload.get("error") if isinstance(payload, dict) else None
    return f" {error}" if isinstance(error, str) and error.isidentifier() else ""


def _content_disposition(filename: str) -> str:
    # RFC 6266: a plain ASCII fallback plus the exact UTF-8 name.
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
