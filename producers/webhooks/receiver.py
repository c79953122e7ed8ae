"""POST /webhooks/<source system>/{token}: a source says work is ready (Findity: an export
package), one route per registered source that announces by webhook.

Sources treat any answer but 200 as a failure (Findity puts the reports back to "ready to
send"), so the receiver does the minimum: check the URL token (and the signature when one is
configured), have the source's registry entry read the body (``parse_webhook``), store the
delivery, queue the work once, answer 200. A redelivered or concurrent duplicate gets 200 too and
changes nothing. The body is only a hint: the worker fetches the work with the organization's
credentials, so a forged id leads nowhere.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Row

from producers.api.errors import ApiError, error_responses
from shared import jobs, metrics
from shared.db.session import get_engine, one_sqlite_writer
from shared.domain import sources
from shared.domain.errors import DomainError, NotFound
from shared.integrations import registry
from shared.integrations.sources import Announcement, MalformedAnnouncement
from shared.logs import get_logger

router = APIRouter(tags=["webhooks"])
log = get_logger(__name__)
# SourceUnit.external_export_id is VARCHAR(100): a longer id must be refused here, not by the
# database with a 5xx (the source would redeliver it forever).
EXPORT_ID_MAX_LENGTH = 100
TOKEN = Path(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")


def _mount(system: registry.SourceSystem) -> None:
    async def receive_webhook(request: Request, token: str = TOKEN):
        raw = await request.body()
        try:
            announcement = system.parse_webhook(raw)
        except MalformedAnnouncement as malformed:
            raise ApiError(400, "malformed_webhook", malformed.message) from None
        export_id = announcement.external_id
        if len(export_id) > EXPORT_ID_MAX_LENGTH or not export_id.isprintable():
            raise ApiError(400, "malformed_webhook",
                           f"{announcement.id_field} must be at most {EXPORT_ID_MAX_LENGTH} "
                           "printable characters")
        signature = request.headers.get(sources.SIGNATURE_HEADER)
        if signature is not None and not signature.isascii():
            # Header bytes arrive decoded as Latin-1, and hmac.compare_digest raises TypeError on
            # a non-ASCII str: such a header cannot be a valid signature; let it fail as one.
            signature = signature.encode("ascii", "replace").decode("ascii")
        # The database work runs in the thread pool so one slow commit never stalls the loop.
        source_export_id = await run_in_threadpool(
            _store_delivery, system, token, signature, raw, announcement)
        new = source_export_id is not None
        # DEBUG, not INFO: formatting and writing a line was ~5% of a delivery's CPU, and each
        # delivery is already a row (webhook_deliveries), a count (aic_webhook_deliveries_total)
        # and, when new, the unit's "announced" event (issue 12, target 6). A duplicate's line
        # names no unit: reading its id cost a statement per duplicate for this line alone.
        log.debug("source webhook", source_system=system.name,
                  source_export_id=source_export_id, export=export_id, duplicate=not new)
        return {"received": True, "duplicate": not new}

    receive_webhook.__name__ = f"{system.name}_webhook"
    router.post(f"/webhooks/{system.name}/{{token}}",
                summary=f"{system.display_name} work-ready webhook",
                responses=error_responses(400, 401, 404, 413, 422, 503, descriptions={
                    400: "Malformed body", 401: "Signature missing, wrong or outside its window",
                    404: "Unknown webhook URL", 422: "The URL's token is malformed"}),
                )(receive_webhook)


def _store_delivery(system: registry.SourceSystem, token: str, signature: str | None,
                    raw: bytes, announcement: Announcement) -> str | None:
    """The delivery stored and its job sent: the new unit's id, or None for a duplicate."""
    # The connection kept from an earlier delivery to this token saves the SELECT of it, but
    # it is trusted no further than it is checked: whatever it refuses (a secret or an
    # organization set since, say), or finds changed by the commit, is decided again against
    # the connection as it is now, as if nothing had been kept.
    kept = sources.kept_webhook_connection(token)
    if kept is not None:
        try:
            return _store_checked(system, kept, token, signature, raw, announcement)
        except (DomainError, ApiError, sources.ConnectionChanged):
            sources.forget_webhook_connection(token)
    try:
        return _store_checked(system, None, token, signature, raw, announcement)
    except sources.ConnectionChanged:
        raise ApiError(503, "connection_changed",
                       "this webhook's connection changed while the delivery was stored; "
                       "nothing was recorded, deliver it again") from None


def _store_checked(system: registry.SourceSystem, connection: Row | None, token: str,
                   signature: str | None, raw: bytes,
                   announcement: Announcement) -> str | None:
    # A Core connection, no ORM session: nothing here needs one, and its flush and commit
    # machinery cost a delivery more CPU than the statements (issue 12, target 6). Leaving the
    # block without the commit below (a refused delivery, a changed connection, any error)
    # rolls everything back.
    with get_engine().connect() as db:
        if connection is None:
            connection = sources.connection_for_webhook(db, token)
        _check(system, connection, signature, raw, announcement)
        # On SQLite the deliveries of this process take turns on the one writer
        # (one_sqlite_writer) for the writes and the commit only: the read and the checks
        # above run outside that turn (SQLite's write transaction starts at the first INSERT).
        with one_sqlite_writer():
            unit_id, job = sources.record_webhook(db, connection, announcement.external_id,
                                                  announcement.payload)
            db.commit()
    metrics.count_webhook_delivery(duplicate=job is None)
    # Only a committed unit's job, and once out of the turn, so no delivery waits for Redis's
    # answer to another one. A job the broker refuses is logged; the sweeper re-sends it.
    if job is not None:
        jobs.send_jobs([job])
    return unit_id


def _check(system: registry.SourceSystem, connection: Row, signature: str | None, raw: bytes,
           announcement: Announcement) -> None:
    # A token is unguessable per connection; a token of another system's connection is as
    # unknown here as no token at all.
    if connection.source_system != system.name:
        raise NotFound("no webhook is registered at this URL; copy the URL from "
                       "`aic source show`")
    sources.verify_signature(connection, signature, raw)
    ours = ((connection.options or {}).get(system.organization_option)
            if system.organization_option else None)
    if (announcement.organization_id is not None and system.organization_option
            and announcement.organization_id != ours):
        raise ApiError(400, "organization_mismatch",
                       f"{announcement.organization_field} does not belong to this webhook "
                       f"URL; check the recipient configured in {system.display_name}")


for _system in registry.sources().values():
    if _system.parse_webhook is not None:
        _mount(_system)
