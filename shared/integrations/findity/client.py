"""``FindityClient``: the one client of Findity's Connect API.

It owns one long-lived ``httpx.Client`` and one cached OAuth access token, and turns every HTTP
outcome into the error taxonomy of ``shared.integrations.errors`` in a single ``_request()``.
Every shape it sends or reads is a model of ``shared.integrations.findity.models``.

Thread safety: worker threads share one client per connection, so the token cache is guarded
by a lock (``httpx.Client`` itself is thread safe).
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from shared.config import get_settings
from shared.integrations.errors import (
    AuthError,
    IntegrationError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
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

log = logging.getLogger(__name__)

_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")

ModelT = TypeVar("ModelT", bound=BaseModel)

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
        if timeout is None:
            settings = get_settings()
            timeout = httpx.Timeout(
                settings.http_read_timeout, connect=settings.http_connect_timeout
            )
        self.base_url = base_url.rstrip("/")
        self.token_url = token_url
        self.organization_id = organization_id
        self._client_id = client_id
        self._client_secret = client_secret
        # httpx joins a relative path onto the base URL's path ("/api" + "/v1/...").
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            timeout=timeout,
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "accounting-integration-client"},
        )
        self._token_lock = threading.Lock()
        self._access_token: str | None = None
        self._token_expires_at = 0.0  # time.monotonic() deadline

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
            response = self._request(
                "GET",
                self._org_path("exports"),
                params={"status": ExportStatus.UNPROCESSED.value, "offset": offset,
                        "max": self.page_size},
            )
            page = self._parse(ExportList, response)
            for export in page.data:
                exports.setdefault(export.id, export)
            offset += len(page.data)
            # An empty page ends the loop even if `total` promises more: never spin forever.
            if not page.data or offset >= page.meta.total:
                break
        return list(exports.values())

    def get_export(self, export_id: str) -> FindityExport:
        response = self._request("GET", self._export_path(export_id), export_id=export_id)
        return self._parse(FindityExport, response)

    def get_voucher_package(self, export_id: str) -> VoucherPackage:
        response = self._request(
            "GET", self._export_path(export_id, "export"), export_id=export_id
        )
        return self._parse(VoucherPackage, response)

    def update_status(self, export_id: str, updates: list[VoucherStatusUpdate]) -> None:
        body = UpdateStatusRequest(voucher_updates=updates).to_wire()
        self._request(
            "PUT", self._export_path(export_id, "updatestatus"), json=body, export_id=export_id
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
        self._request(
            "PUT",
            self._export_path(export_id, "content"),
            content=content,
            headers=headers,
            export_id=export_id,
        )

    def get_content(self, export_id: str) -> bytes:
        response = self._request(
            "GET",
            self._export_path(export_id, "content"),
            headers={"Accept": "*/*"},
            export_id=export_id,
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
        url = url.copy_merge_params({"format": "pdf"})
        response = self._request("GET", url, headers={"Accept": "application/pdf"}, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise self._too_large(url, limit, f"it announces {int(declared)} bytes")
            size, head = 0, b""
            for chunk in self._stream_chunks(response, url):
                if len(head) < 5:
                    head += chunk[: 5 - len(head)]
                    if len(head) == 5 or not b"%PDF-".startswith(head):
                        self._check_pdf_head(head, url, response)
                size += len(chunk)
                if size > limit:
                    raise self._too_large(url, limit, "it is larger")
                sink.write(chunk)
            self._check_pdf_head(head, url, response)
            return size
        finally:
            response.close()

    def _stream_chunks(self, response: httpx.Response, url: httpx.URL):
        try:
            yield from response.iter_bytes(64 * 1024)
        except httpx.TimeoutException as exc:
            raise TransientError(
                f"Findity stopped sending the basis document {url.path} ({type(exc).__name__})",
                system=self.system, code="timeout") from exc
        except httpx.TransportError as exc:
            raise TransientError(
                f"the download of Findity's basis document {url.path} broke off "
                f"({type(exc).__name__})", system=self.system, code="connection_error") from exc

    def _check_pdf_head(self, head: bytes, url: httpx.URL, response: httpx.Response) -> None:
        if not head.startswith(b"%PDF-"):
            raise PermanentError(
                f"Findity's basis document {url.path} is not a PDF "
                f"(Content-Type {response.headers.get('content-type', 'missing')})",
                system=self.system,
                code="unexpected_response",
                status_code=response.status_code,
            )

    def _too_large(self, url: httpx.URL, limit: int, why: str) -> PermanentError:
        return PermanentError(
            f"Findity's basis document {url.path} is larger than the {limit} bytes we accept "
            f"({why}); raise AIC_RECEIPT_MAX_BYTES to accept it",
            system=self.system,
            code="receipt_too_large",
        )

    # --- token --------------------------------------------------------------------------------

    def _token(self, *, renew: bool = False) -> str:
        with self._token_lock:
            if renew or self._access_token is None or time.monotonic() >= self._token_expires_at:
                self._fetch_token()
            assert self._access_token is not None
            return self._access_token

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
        response = self._send("POST", self.token_url, data=form)
        if response.status_code in (400, 401, 403):
            raise AuthError(
                f"Findity refused the client credentials of organization {self.organization_id} "
                f"(HTTP {response.status_code}{_oauth_error_suffix(response)}): check the "
                "client id and secret of this connection",
                system=self.system,
                code="invalid_client",
                status_code=response.status_code,
                request_id=_request_id(response),
            )
        self._raise_for_status(response, "POST", "token endpoint", export_id=None)
        token = self._parse(TokenResponse, response)
        margin = min(self.token_renew_margin_seconds, token.expires_in / 10)
        self._access_token = token.access_token
        self._token_expires_at = time.monotonic() + token.expires_in - margin
        log.info(
            "findity.token_issued",
            extra={"organization_id": self.organization_id, "expires_in": token.expires_in},
        )

    def _forget_token(self, rejected: str) -> None:
        with self._token_lock:
            # Another thread may already have renewed it; only drop the token that failed.
            if self._access_token == rejected:
                self._access_token = None

    def _check_token_host(self, url: httpx.URL) -> None:
        allowed = {httpx.URL(self.base_url).netloc, httpx.URL(self.token_url).netloc}
        if url.netloc not in allowed:
            raise PermanentError(
                f"the basis URL of a voucher points at {url.host}, not at Findity's API host "
                f"{httpx.URL(self.base_url).host}; refusing to send the access token there",
                system=self.system,
                code="untrusted_basis_url",
            )

    # --- transport and error mapping ----------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        export_id: str | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send an authenticated request and map every failure to the error taxonomy.

        A 401 renews the token once and repeats the request; a second 401 is an ``AuthError``.
        ``stream``: a successful response's body is left unread (the caller reads and closes
        it); an error's body is read, at most ``_ERROR_BODY_LIMIT`` bytes of it.
        """
        token = self._token()
        response = self._send(method, url, headers=_bearer(headers, token), stream=stream,
                              **kwargs)
        if response.status_code == 401:
            log.info("findity.token_rejected", extra={"organization_id": self.organization_id})
            response.close()
            self._forget_token(token)
            token = self._token(renew=True)
            response = self._send(method, url, headers=_bearer(headers, token), stream=stream,
                                  **kwargs)
            if response.status_code == 401:
                response.close()
                raise AuthError(
                    f"Findity rejected a freshly issued access token for organization "
                    f"{self.organization_id} on {method} {_path(url)} (HTTP 401): check that the "
                    "API client is allowed to read this organization's exports",
                    system=self.system,
                    code="unauthorized",
                    status_code=401,
                    request_id=_request_id(response),
                )
        if stream and not 200 <= response.status_code < 300:
            response = _read_error(response)
        self._raise_for_status(response, method, _path(url), export_id=export_id)
        return response

    def _send(self, method: str, url: str | httpx.URL, *, stream: bool = False,
              **kwargs: Any) -> httpx.Response:
        """One HTTP exchange; transport failures become ``TransientError``."""
        started = time.monotonic()
        try:
            request = self._http.build_request(method, url, **kwargs)
            response = self._http.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise TransientError(
                f"Findity did not answer {method} {_path(url)} in time ({type(exc).__name__})",
                system=self.system,
                code="timeout",
            ) from exc
        except httpx.TransportError as exc:
            raise TransientError(
                f"could not reach Findity for {method} {_path(url)} ({type(exc).__name__})",
                system=self.system,
                code="connection_error",
            ) from exc
        log.debug(
            "findity.http",
            extra={
                "organization_id": self.organization_id,
                "method": method,
                "path": _path(url),
                "status": response.status_code,
                "duration_ms": round((time.monotonic() - started) * 1000),
            },
        )
        return response

    def _raise_for_status(
        self, response: httpx.Response, method: str, path: str, *, export_id: str | None
    ) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        error = _error_body(response)
        code = error.code if error else f"http_{status}"
        server_says = f": {error.message}" if error and error.message else ""
        common: dict[str, Any] = {
            "system": self.system,
            "code": code,
            "status_code": status,
            "request_id": _request_id(response),
        }
        if status == 429:
            retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            raise RateLimitedError(
                f"Findity rate-limited {method} {path} (HTTP 429)"
                + (f"; retry after {retry_after:g} s" if retry_after is not None else ""),
                retry_after=retry_after,
                **common,
            )
        if status >= 500:
            raise TransientError(
                f"Findity failed on {method} {path} (HTTP {status}{' ' + code if error else ''})"
                f"{server_says}",
                **common,
            )
        raise self._client_error(method, path, status, code, server_says, export_id, common)

    def _client_error(
        self,
        method: str,
        path: str,
        status: int,
        code: str,
        server_says: str,
        export_id: str | None,
        common: dict[str, Any],
    ) -> IntegrationError:
        org = self.organization_id
        if code == FindityErrorCode.RECIPIENT_NOT_FOUND:
            return PermanentError(
                f"Findity has no API report recipient for organization {org}{server_says}; "
                f"{RECIPIENT_HELP}",
                **common,
            )
        if code == FindityErrorCode.EXPORT_NOT_FOUND:
            return NotFoundError(
                f"Findity has no export {export_id or '(unknown)'} for organization {org}"
                f"{server_says}; check that the export id came from this organization's export "
                "list",
                **common,
            )
        if code == FindityErrorCode.ORGANIZATION_NOT_FOUND:
            return NotFoundError(
                f"Findity has no organization {org}{server_says}; check the organization id "
                "against the one shown in Findity Admin",
                **common,
            )
        if status == 401:
            # Defensive: _request and _fetch_token handle their 401s before this point.
            return AuthError(f"Findity refused {method} {path} (HTTP 401)", **common)
        return PermanentError(
            f"Findity refused {method} {path} (HTTP {status} {code}){server_says}", **common
        )

    def _parse(self, model: type[ModelT], response: httpx.Response) -> ModelT:
        """Parse a JSON body into ``model``; numbers become ``Decimal`` without passing a float."""
        try:
            payload = json.loads(response.content, parse_float=Decimal)
            return model.model_validate(payload)
        except (ValueError, ValidationError) as exc:
            # ValidationError is a ValueError; both mean Findity answered a shape we do not
            # know. Retrying will not change that.
            details = (
                [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
                if isinstance(exc, ValidationError)
                else [str(exc)]
            )
            raise PermanentError(
                f"Findity answered {response.request.method} {_path(response.request.url)} "
                f"with a body that is not a valid {model.__name__}: {'; '.join(details[:5])}",
                system=self.system,
                code="unexpected_response",
                status_code=response.status_code,
                request_id=_request_id(response),
                details=details,
                # A token response's validation error quotes the body, tokens included.
            ) from (None if model is TokenResponse else exc)

    # --- paths --------------------------------------------------------------------------------

    def _org_path(self, *parts: str) -> str:
        segments = ["v1", "connect", "organizations", self.organization_id, *parts]
        return "/" + "/".join(quote(s, safe="") for s in segments)

    def _export_path(self, export_id: str, *parts: str) -> str:
        return self._org_path("exports", export_id, *parts)


# --- helpers ----------------------------------------------------------------------------------


_ERROR_BODY_LIMIT = 64 * 1024


def _read_error(response: httpx.Response) -> httpx.Response:
    """A streamed error response with (the start of) its body read, for the error mapping."""
    body = b""
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        pass  # the status says enough
    finally:
        response.close()
    # iter_bytes() has decoded the body already: drop the headers that describe the wire form.
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(response.status_code, headers=headers,
                          content=body[:_ERROR_BODY_LIMIT], request=response.request)


def _bearer(headers: dict[str, str] | None, token: str) -> dict[str, str]:
    return {**(headers or {}), "Authorization": f"Bearer {token}"}


def _path(url: str | httpx.URL) -> str:
    """The path of a URL for messages: no host, no query (a query could carry anything)."""
    return httpx.URL(str(url)).path


def _request_id(response: httpx.Response) -> str | None:
    return response.headers.get("X-Request-Id") or response.headers.get("X-Correlation-Id")


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


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _content_disposition(filename: str) -> str:
    # RFC 6266: a plain ASCII fallback plus the exact UTF-8 name.
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"

