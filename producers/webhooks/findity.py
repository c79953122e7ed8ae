"""POST /webhooks/findity/{token}: Findity says an export package is ready.

Findity treats any answer but 200 as a failure and puts the reports back to "ready to send", so
the receiver does the minimum: check the URL token (and the signature when one is configured),
validate the body, store the delivery, queue the package once, answer 200. A redelivered or
concurrent duplicate gets 200 too and changes nothing. The body is only a hint: the worker fetches
the export with the organization's credentials, so a forged exportId leads nowhere.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from producers.api.errors import ApiError, error_responses
from shared.db.session import session_scope
from shared.domain import sources
from shared.integrations.findity import WebhookBody
from shared.logs import get_logger

router = APIRouter(tags=["webhooks"])
log = get_logger(__name__)
# SourceExport.external_export_id is VARCHAR(100): a longer id must be refused here, not by the
# database with a 5xx (Findity would redeliver it forever).
EXPORT_ID_MAX_LENGTH = 100


@router.post("/webhooks/findity/{token}", summary="Findity export-ready webhook",
             responses=error_responses(400, 401, 404, 413, 422, 503, descriptions={
                 400: "Malformed body", 401: "Signature missing, wrong or outside its window",
                 404: "Unknown webhook URL", 422: "The URL's token is malformed"}))
async def findity_webhook(request: Request, token: str = Path(min_length=16, max_length=64,
                                                              pattern=r"^[A-Za-z0-9_\-]+$")):
    raw = await request.body()
    try:
        payload = json.loads(raw)
        body = WebhookBody.model_validate(payload)
    except (ValueError, ValidationError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the parser's recursion limit.
        raise ApiError(400, "malformed_webhook",
                       "the body must be Findity's JSON webhook payload with exportId and "
                       f"organizationId: {_short(exc)}") from None
    if len(body.export_id) > EXPORT_ID_MAX_LENGTH or not body.export_id.isprintable():
        raise ApiError(400, "malformed_webhook", f"exportId must be at most {EXPORT_ID_MAX_LENGTH} "
                                                 "printable characters")
    signature = request.headers.get(sources.SIGNATURE_HEADER)
    if signature is not None and not signature.isascii():
        # Header bytes arrive decoded as Latin-1, and hmac.compare_digest raises TypeError on a
        # non-ASCII str: such a header cannot be a valid signature, so let it fail as a mismatch.
        signature = signature.encode("ascii", "replace").decode("ascii")
    # The database work runs in the thread pool so one slow commit never stalls the event loop.
    source_export_id, new = await run_in_threadpool(
        _store_delivery, token, signature, raw, body, payload)
    log.info("findity webhook", source_export_id=source_export_id, export=body.export_id,
             duplicate=not new)
    return {"received": True, "duplicate": not new}


def _store_delivery(token: str, signature: str | None, raw: bytes, body: WebhookBody,
                    payload: dict) -> tuple[str, bool]:
    with session_scope() as session:
        connection = sources.connection_for_webhook(session, token)
        sources.verify_signature(connection, signature, raw)
        if body.organization_id != connection.external_organization_id:
            raise ApiError(400, "organization_mismatch",
                           "organizationId does not belong to this webhook URL; check the "
                           "recipient configured in Findity")
        source_export, new = sources.record_webhook(session, connection, body.export_id, payload)
        return source_export.id, new


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
    return str(exc)[:200]
