"""Findity behind the engine's source protocol (``shared.integrations.sources.SourceAdapter``).

Moved here from the engine: reading the export-ready webhook and listing the unprocessed
exports (the poll). Still in ``worker/source_jobs.py``, to move behind ``fetch_items`` /
``report`` / ``completed``: the package ingest and the updatestatus reports. Until then
``FinditySource`` is also the plain ``FindityClient`` those parts call.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from shared.integrations.findity.client import FindityClient
from shared.integrations.findity.models import WebhookBody
from shared.integrations.sources import Announcement, MalformedAnnouncement, PendingPage


def parse_webhook(raw: bytes) -> Announcement:
    """The "metadata" webhook [doc]: exportId and organizationId, the rest kept for operators."""
    try:
        payload = json.loads(raw)
        body = WebhookBody.model_validate(payload)
    except (ValueError, ValidationError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the parser's recursion limit.
        raise MalformedAnnouncement(
            "the body must be Findity's JSON webhook payload with exportId and "
            f"organizationId: {_short(exc)}") from None
    return Announcement(external_id=body.export_id, payload=payload,
                        organization_id=body.organization_id, id_field="exportId",
                        organization_field="organizationId")


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
    return str(exc)[:200]


class FinditySource(FindityClient):
    """One Findity organization as a source."""

    def list_pending(self, cursor: str | None = None) -> PendingPage:
        # Findity's list of unprocessed exports is a "not exported yet" feed: no cursor.
        return PendingPage([Announcement(external_id=export.id, payload={})
                            for export in self.list_unprocessed_exports()], next_cursor=None)
