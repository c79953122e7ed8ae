"""The Findity sandbox as an ASGI app: ``create_app()``.

Three surfaces:
- ``POST /oauth/token``: OAuth 2.0 client credentials and refresh token grants [doc].
- ``/api/v1/connect/...``: the Connect API [doc paths], Bearer auth on every call, Findity's
  ``{"code", "message"}`` errors, fault injection before anything else (as a proxy would).
- ``/_sandbox/...``: the control API that tests and the dev stack use to create organizations
  and exports, read what the integration reported, and inject faults.

Handlers are async so latency faults are ``asyncio.sleep``s and never block other requests.
Webhooks go out from background tasks, after the control call that created the export answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from datetime import timezone
from typing import Any
from urllib.parse import unquote

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response, StreamingResponse

from sandbox.findity.pdf import render_pdf
from sandbox.findity.schemas import (
    ExportIn,
    FaultsIn,
    OrganizationIn,
    OrganizationPatch,
)
from sandbox.findity.state import (
    EXPORT_STATUSES,
    FailRule,
    Faults,
    OAuthError,
    SandboxError,
    SandboxState,
    StoredContent,
    iso_z,
    utc_now,
)
from sandbox.findity.wire import error, respond

log = logging.getLogger("sandbox.findity")

CONNECT = "/api/v1/connect"
MAX_PAGE = 100  # [assumed] Findity's largest page
DEFAULT_PAGE = 25
MAX_CONTENT_BYTES = 10 * 1024 * 1024
_ORG_IN_PATH = re.compile(r"^/api/v1/connect/organizations/([^/]+)")


def create_app(state: SandboxState | None = None) -> FastAPI:
    state = state or SandboxState()
    app = FastAPI(
        title="Findity sandbox",
        docs_url="/_sandbox/docs",
        openapi_url="/_sandbox/openapi.json",
        redoc_url=None,
    )
    app.state.sandbox = state
    # Strong references: asyncio keeps only weak ones to running tasks.
    app.state.webhook_tasks = set()
    _install_error_handlers(app)
    _install_request_log(app, state)
    _add_token_endpoint(app, state)
    _add_connect_api(app, state)
    _add_control_api(app, state)
    return app


# --- plumbing ---------------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SandboxError)
    async def _sandbox_error(_request: Request, exc: SandboxError) -> Response:
        return error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(OAuthError)
    async def _oauth_error(_request: Request, exc: OAuthError) -> Response:
        return respond({"error": exc.error, "error_description": exc.description}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors()
        ]
        return respond(
            {"code": "VALIDATION_ERROR", "message": "; ".join(problems), "details": problems}, 400
        )


def _install_request_log(app: FastAPI, state: SandboxState) -> None:
    """Record every Connect API call per organization (the control view shows them)."""

    @app.middleware("http")
    async def _log_request(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        match = _ORG_IN_PATH.match(request.url.path)
        if match:
            state.record_request(unquote(match.group(1)), request.method, request.url.path,
                                 response.status_code)
        return response


async def _inject_faults(state: SandboxState, request: Request, org_id: str | None) -> None:
    decision = state.decide_fault(org_id, request.method, request.url.path)
    if decision.latency_seconds:
        await asyncio.sleep(decision.latency_seconds)
    if decision.error is not None:
        raise decision.error


def _bearer_org(state: SandboxState, request: Request) -> str:
    """The organization of the request's valid Bearer token, or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SandboxError(401, "UNAUTHORIZED", "a Bearer access token is required",
                           {"WWW-Authenticate": 'Bearer realm="findity"'})
    org_id = state.authenticate(token.strip())
    if org_id is None:
        raise SandboxError(401, "UNAUTHORIZED", "the access token is expired or invalid",
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return org_id


async def _connect_call(state: SandboxState, request: Request, org_id: str) -> None:
    """Faults, then auth, then organization and recipient checks, like Findity's gateway."""
    await _inject_faults(state, request, org_id)
    token_org = _bearer_org(state, request)
    if token_org != org_id:
        # Do not reveal whether another organization exists.
        raise SandboxError(404, "ORGANIZATION_NOT_FOUND", f"Organization {org_id} not found")
    if not state.organization(org_id).recipient_configured:
        raise SandboxError(404, "RECIPIENT_NOT_FOUND",
                           "No API report recipient is configured for this organization")


def _basis_url(request: Request, voucher_id: str) -> str:
    return f"{str(request.base_url).rstrip('/')}{CONNECT}/basis/{voucher_id}"


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise SandboxError(400, "INVALID_PARAMETER",
                           f"{name} must be an integer from {low} to {high}; got {raw!r}")
    return value


# --- token endpoint ---------------------------------------------------------------------------


def _add_token_endpoint(app: FastAPI, state: SandboxState) -> None:
    @app.post("/oauth/token")
    async def token(request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            raise OAuthError(
                400, "invalid_request",
                "the token request must be form-encoded (application/x-www-form-urlencoded)")
        form = await request.form()
        client_id = _form_str(form, "client_id")
        await _inject_faults(state, request, state.organization_id_for_client(client_id))
        grant = _form_str(form, "grant_type")
        if grant == "client_credentials":
            body = state.issue_token(client_id, _form_str(form, "client_secret"))
        elif grant == "refresh_token":
            body = state.refresh_token(_form_str(form, "refresh_token"))
        else:
            raise OAuthError(400, "unsupported_grant_type",
                             "grant_type must be client_credentials or refresh_token")
        return respond(body, headers={"Cache-Control": "no-store"})


def _form_str(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


# --- Connect API ------------------------------------------------------------------------------


def _add_connect_api(app: FastAPI, state: SandboxState) -> None:
    exports_path = CONNECT + "/organizations/{org_id}/exports"
    export_path = exports_path + "/{export_id}"

    @app.get(exports_path)
    async def list_exports(org_id: str, request: Request) -> Response:
        await _connect_call(state, request, org_id)
        status = request.query_params.get("status")
        if status is not None and status not in EXPORT_STATUSES:
            allowed = ", ".join(EXPORT_STATUSES)
            raise SandboxError(400, "INVALID_PARAMETER",
                               f"status must be one of {allowed}; got {status!r}")
        offset = _int_param(request, "offset", 0, 0, 10**9)
        limit = _int_param(request, "max", DEFAULT_PAGE, 1, MAX_PAGE)
        page, total = state.list_exports(org_id, status, offset, limit)
        return respond({"data": [e.to_wire() for e in page],
                        "meta": {"count": len(page), "total": total}})

    @app.get(export_path)
    async def get_export(org_id: str, export_id: str, request: Request) -> Response:
        await _connect_call(state, request, org_id)
        export = state.export(org_id, export_id)
        export.check_readable()
        return respond(export.to_wire())

    @app.get(export_path + "/export")
    async def get_voucher_package(org_id: str, export_id: str, request: Request) -> Response:
        await _connect_call(state, request, org_id)
        export = state.export(org_id, export_id)
        export.check_readable()
        return respond(export.package(lambda voucher_id: _basis_url(request, voucher_id)))

    @app.put(export_path + "/updatestatus")
    async def update_status(org_id: str, export_id: str, request: Request) -> Response:
        await _connect_call(state, request, org_id)
        raw = (await request.body()).decode("utf-8", "replace")
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None  # recorded as received; validation explains the problem
        export = state.apply_status_update(org_id, export_id, body, raw)
        return respond(export.to_wire())

    @app.put(export_path + "/content")
    async def put_content(org_id: str, export_id: str, request: Request) -> Response:
        await _connect_call(state, request, org_id)
        state.export(org_id, export_id)  # 404 before reading a body we would throw away
        data = await request.body()
        if not data:
            raise SandboxError(400, "VALIDATION_ERROR", "the content body is empty")
        if len(data) > MAX_CONTENT_BYTES:
            raise SandboxError(413, "CONTENT_TOO_LARGE",
                               f"content is limited to {MAX_CONTENT_BYTES} bytes")
        content = StoredContent(
            data=data,
            content_type=request.headers.get("content-type", "application/octet-stream"),
            filename=_filename(request.headers.get("content-disposition", "")),
            updated_at=utc_now(),
        )
        state.store_content(org_id, export_id, content)
        return Response(status_code=204)

    @app.get(export_path + "/content")
    async def get_content(org_id: str, export_id: str, request: Request) -> Response:
        await _connect_call(state, request, org_id)
        content = state.export(org_id, export_id).content
        if content is None:
            raise SandboxError(404, "CONTENT_NOT_FOUND", f"Export {export_id} has no content")
        headers = {}
        if content.filename:
            headers["Content-Disposition"] = f'attachment; filename="{content.filename}"'
        return Response(content.data, media_type=content.content_type, headers=headers)

    @app.get(CONNECT + "/basis/{voucher_id}")
    async def basis(voucher_id: str, request: Request) -> Response:
        export = state.export_of_voucher(voucher_id)
        await _inject_faults(state, request, export.organization.id if export else None)
        token_org = _bearer_org(state, request)
        if export is None or export.organization.id != token_org:
            raise SandboxError(404, "VOUCHER_NOT_FOUND", f"Voucher {voucher_id} not found")
        if request.query_params.get("format") != "pdf":
            raise SandboxError(400, "INVALID_PARAMETER", "append ?format=pdf to the basis URL")
        fault = export.basis_fault(voucher_id)
        if fault == "missing":
            raise SandboxError(404, "VOUCHER_NOT_FOUND", f"Voucher {voucher_id} not found")
        if fault == "not_pdf":
            return Response(b"<html><body>Sign in to Findity</body></html>",
                            media_type="text/html")
        if fault == "oversized":
            return StreamingResponse(_oversized_pdf(export, voucher_id),
                                     media_type="application/pdf")
        return Response(_basis_pdf(export, voucher_id), media_type="application/pdf")


def _filename(disposition: str) -> str | None:
    """The file name of a Content-Disposition header (RFC 6266: ``filename*`` wins)."""
    extended = re.search(r"filename\*\s*=\s*UTF-8''([^;]+)", disposition, re.IGNORECASE)
    if extended:
        return unquote(extended.group(1).strip())
    plain = re.search(r'filename\s*=\s*"([^"]*)"|filename\s*=\s*([^;]+)', disposition,
                      re.IGNORECASE)
    if plain:
        return (plain.group(1) or plain.group(2) or "").strip() or None
    return None


async def _oversized_pdf(export: Any, voucher_id: str):
    """The basis PDF padded to ``oversized_basis_bytes``, chunked: nothing announces its size,
    and nothing but the chunk in flight is held in memory."""
    head = _basis_pdf(export, voucher_id)
    yield head
    left = max(0, export.oversized_basis_bytes - len(head))
    chunk = b"%" + b"0" * (64 * 1024 - 2) + b"\n"
    while left > 0:
        piece = chunk[:left]
        left -= len(piece)
        yield piece


def _basis_pdf(export: Any, voucher_id: str) -> bytes:
    voucher = export.voucher(voucher_id)
    lines = [
        "Findity sandbox - basis for voucher",
        f"Voucher: {voucher.id}",
        f"Export: {export.id}",
        f"Owner: {voucher.owner_name} ({voucher.owner_id})",
        f"Date: {voucher.date.isoformat()}",
        f"Text: {voucher.text}",
        "",
    ]
    for row in voucher.rows:
        account = row.get("account", "-")
        lines.append(f"{account}  {row['amount']}  {row['text']}")
    return render_pdf(lines)


# --- control API ------------------------------------------------------------------------------


def _add_control_api(app: FastAPI, state: SandboxState) -> None:
    @app.get("/_sandbox/healthz")
    async def healthz() -> Response:
        return respond({"status": "ok"})

    @app.post("/_sandbox/organizations")
    async def create_organization(body: OrganizationIn, request: Request) -> Response:
        org = state.create_organization(**body.model_dump())
        root = str(request.base_url).rstrip("/")
        return respond({
            "organization_id": org.id,
            "client_id": org.client_id,
            "client_secret": org.client_secret,
            "token_url": f"{root}/oauth/token",
            "base_url": f"{root}/api",
            "external_organization_id": org.external_organization_id,
            "verification_lists_type": org.verification_lists_type.value,
            "webhook_url": org.webhook_url,
        }, 201)

    @app.get("/_sandbox/organizations/{org_id}")
    async def get_organization(org_id: str) -> Response:
        return respond(state.organization(org_id).control_view())

    @app.patch("/_sandbox/organizations/{org_id}")
    async def patch_organization(org_id: str, body: OrganizationPatch) -> Response:
        changes = body.model_dump(include=body.model_fields_set)
        return respond(state.update_organization(org_id, changes).control_view())

    @app.post("/_sandbox/organizations/{org_id}/revoke-tokens")
    async def revoke_tokens(org_id: str) -> Response:
        return respond({"revoked": state.revoke_tokens(org_id)})

    @app.post("/_sandbox/organizations/{org_id}/exports")
    async def create_export(org_id: str, body: ExportIn) -> Response:
        state.organization(org_id)
        reports = body.build_reports(utc_now().date())
        export = state.create_export(org_id, reports, webhook_copies=body.webhook_copies,
                                     send_webhook=body.send_webhook,
                                     lose_webhook=body.lose_webhook,
                                     not_found_for_seconds=body.not_found_for_seconds,
                                     basis_not_found_for_seconds=body.basis_not_found_for_seconds,
                                     bad_basis=body.bad_basis,
                                     oversized_basis_bytes=body.oversized_basis_bytes,
                                     voucher_ids=body.voucher_ids)
        if not export.webhook.done:
            _start_webhooks(app, state, export)
        return respond({
            "export_id": export.id,
            "voucher_ids": [v.id for v in export.vouchers],
            "report_ids": [r.id for r in export.reports],
            "verification_lists_type": export.verification_lists_type.value,
            "webhook_body": export.webhook_body(),
        }, 201)

    @app.get("/_sandbox/organizations/{org_id}/exports/{export_id}")
    async def export_state(org_id: str, export_id: str) -> Response:
        return respond(state.export(org_id, export_id).control_view())

    @app.get("/_sandbox/organizations/{org_id}/exports/{export_id}/status-updates")
    async def status_updates(org_id: str, export_id: str) -> Response:
        return respond(list(state.export(org_id, export_id).status_updates))

    @app.get("/_sandbox/faults")
    async def get_global_faults() -> Response:
        return respond(state.faults(None).to_dict())

    @app.put("/_sandbox/faults")
    async def put_global_faults(body: FaultsIn) -> Response:
        state.set_faults(None, _faults(body))
        return respond(state.faults(None).to_dict())

    @app.delete("/_sandbox/faults")
    async def clear_global_faults() -> Response:
        state.set_faults(None, Faults())
        return Response(status_code=204)

    @app.get("/_sandbox/organizations/{org_id}/faults")
    async def get_org_faults(org_id: str) -> Response:
        return respond(state.faults(org_id).to_dict())

    @app.put("/_sandbox/organizations/{org_id}/faults")
    async def put_org_faults(org_id: str, body: FaultsIn) -> Response:
        state.set_faults(org_id, _faults(body))
        return respond(state.faults(org_id).to_dict())

    @app.delete("/_sandbox/organizations/{org_id}/faults")
    async def clear_org_faults(org_id: str) -> Response:
        state.set_faults(org_id, Faults())
        return Response(status_code=204)


def _faults(body: FaultsIn) -> Faults:
    rules = []
    for rule in body.fail_next:
        retry_after = rule.retry_after
        if isinstance(retry_after, float):
            retry_after = f"{retry_after:g}"  # 2.0 -> "2", the delta-seconds form
        rules.append(FailRule(status=rule.status, count=rule.count,
                              path_contains=rule.path_contains, method=rule.method,
                              retry_after=retry_after, code=rule.code, message=rule.message))
    return Faults(latency_ms=body.latency_ms, fail_next=rules,
                  updatestatus_down=body.updatestatus_down, error_rate=body.error_rate)


# --- webhooks ---------------------------------------------------------------------------------


def _start_webhooks(app: FastAPI, state: SandboxState, export: Any) -> None:
    """Deliver the webhook in the background: the control call does not wait for it."""
    task = asyncio.get_running_loop().create_task(
        _deliver_webhooks(state, export.organization.id, export.id, export.webhook.url,
                          export.webhook_body(), export.webhook.requested_copies,
                          export.organization.webhook_timeout_seconds),
        name=f"webhook-{export.id}",
    )
    app.state.webhook_tasks.add(task)
    task.add_done_callback(app.state.webhook_tasks.discard)
    task.add_done_callback(_log_task_failure)


def _log_task_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("webhook task %s crashed", task.get_name(), exc_info=task.exception())


async def _deliver_webhooks(state: SandboxState, org_id: str, export_id: str, url: str,
                            body: dict[str, Any], copies: int, timeout: float) -> None:
    """POST the metadata body ``copies`` times at once (the duplicates knob) and record each."""
    payload = json.dumps(body).encode()
    async with httpx.AsyncClient(timeout=timeout) as client:

        async def deliver(copy: int) -> None:
            started = time.monotonic()
            sent_at = iso_z(utc_now().astimezone(timezone.utc))
            status_code: int | None = None
            failure: str | None = None
            try:
                response = await client.post(
                    url, content=payload, headers={"Content-Type": "application/json"})
                status_code = response.status_code
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
            state.record_webhook_delivery(org_id, export_id, {
                "copy": copy,
                "sent_at": sent_at,
                "status_code": status_code,
                "error": failure,
                "duration_ms": round((time.monotonic() - started) * 1000),
                "ok": status_code == 200,
            })

        await asyncio.gather(*(deliver(copy) for copy in range(1, copies + 1)))
    state.finish_webhook(org_id, export_id)
