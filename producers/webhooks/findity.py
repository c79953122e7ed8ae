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

from producers.api.errors import ApiError
from shared.db.session import session_scope
from shared.domain import sources
from shared.integrations.findity import WebhookBody
from shared.logs import get_logger

router = APIRouter(tags=["webhooks"])
log = get_logger(__name__)


@router.post("/webhooks/findity/{token}", summary="Findity export-ready webhook",
             responses={400: {"description": "Malformed body"},
                        401: {"description": "Signature missing, wrong or outside its window"},
                        404: {"description": "Unknown webhook URL"}})
async def findity_webhook(request: Request, token: str = Path(min_length=16, max_length=64,
                                                              pattern=r"^[A-Za-z0-9_\-]+$")):
    raw = await request.body()
    try:
        payload = json.loads(raw)
        body = WebhookBody.model_validate(payload)
    except (ValueError, ValidationError) as exc:
        raise ApiError(400, "malformed_webhook",
                       "the body must be Findity's JSON webhook payload with exportId and "
                       f"organizationId: {_short(exc)}") from None
    # The database work runs in the thread pool so one slow commit never stalls the event loop.
    source_export_id, new = await run_in_threadpool(
        _store_delivery, token, request.headers.get(sources.SIGNATURE_HEADER), raw, body, payload)
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
