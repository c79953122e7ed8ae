"""Expense sources: connections, announced export packages, webhook deliveries.

A package is known once per (connection, external export id): the unique constraint makes a
webhook redelivered five times at once, or a webhook racing the poller, create one
``SourceExport`` and one processing job.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import crypto, ids
from shared.config import get_settings
from shared.db.models import (
    SourceConnection,
    SourceExport,
    SourceExportStatus,
    TargetConnection,
    WebhookDelivery,
)
from shared.db.types import utcnow
from shared.domain.errors import DomainError, NotFound, ValidationFailed
from shared.domain.organizations import get_organization
from shared.integrations import registry
from shared.jobs import enqueue_after_commit
from shared.queue import TASK_PROCESS_SOURCE_EXPORT, TASK_REPORT_TO_SOURCE

SIGNATURE_HEADER = "X-AIC-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300


class InvalidSignature(DomainError):
    code = "invalid_signature"


def upsert_source_connection(
    session: Session,
    org_id: str,
    source_system: str,
    *,
    base_url: str,
    token_url: str,
    external_organization_id: str,
    client_id: str | None = None,
    client_secret: str | None = None,
    webhook_secret: str | None = None,
    target_system: str | None = None,
    options: dict[str, Any] | None = None,
) -> SourceConnection:
    """``target_system``: where the source's expenses are booked; when omitted, the one it
    already books to, else the organization's only target connection, else the only target
    system registered."""
    get_organization(session, org_id)
    connection = session.scalar(select(SourceConnection).where(
        SourceConnection.organization_id == org_id, SourceConnection.source_system == source_system))
    try:
        registry.source(source_system)
        target_system = registry.target(
            target_system or _default_target(session, org_id, connection)).name
    except registry.UnknownSystem as unknown:
        raise ValidationFailed(str(unknown)) from None
    for name, url in (("base_url", base_url), ("token_url", token_url)):
        if not url.startswith(("http://", "https://")):
            raise ValidationFailed(f"{name} must start with http:// or https://")
    if connection is not None and not (client_id and client_secret):
        # The stored client secret goes to token_url and the token to base_url: moving either
        # without the credentials would hand them to another host (see upsert_connection).
        moved = [f"{name} from {old} to {new}" for name, old, new in (
            ("base_url", connection.base_url, base_url.rstrip("/")),
            ("token_url", connection.token_url, token_url)) if old != new]
        if moved:
            message = (
                f"{' and '.join(moved)} would change, and the stored credentials would then be "
                "sent there: send client_id and client_secret together with the new URL "
                "(`aic source set` with --client-id, without --keep-credentials). "
                "Nothing was changed."
            )
            raise ValidationFailed(message, details=[{"field": "client_secret",
                                                      "message": message}])
    if connection is None:
        if not (client_id and client_secret):
            raise ValidationFailed("client_id and client_secret are required for a new connection")
        connection = SourceConnection(
            id=ids.new_id("src", 6), organization_id=org_id, source_system=source_system,
            webhook_token=secrets.token_urlsafe(24), options={})
        session.add(connection)
    connection.base_url = base_url.rstrip("/")
    connection.token_url = token_url
    connection.external_organization_id = external_organization_id
    connection.target_system = target_system
    if client_id and client_secret:
        connection.credentials_encrypted = crypto.encrypt_json(
            {"client_id": client_id, "client_secret": client_secret})
    if webhook_secret is not None:
        connection.webhook_secret_encrypted = (
            crypto.encrypt_json({"secret": webhook_secret}) if webhook_secret else None)
    if options is not None:
        connection.options = options
    connection.updated_at = utcnow()
    session.flush()
    return connection


def _default_target(session: Session, org_id: str, existing: SourceConnection | None) -> str:
    if existing is not None and existing.target_system:
        return existing.target_system
    names = list(registry.targets())
    if len(names) == 1:
        return names[0]
    connected = sorted(set(session.scalars(select(TargetConnection.target_system).where(
        TargetConnection.organization_id == org_id))))
    if len(connected) == 1:
        return connected[0]
    raise ValidationFailed("name the target_system the expenses go to: one of "
                           + ", ".join(connected or names))


def source_credentials(connection: SourceConnection) -> dict[str, str]:
    return crypto.decrypt_json(connection.credentials_encrypted)


def connection_for_webhook(session: Session, token: str) -> SourceConnection:
    connection = session.scalar(select(SourceConnection).where(
        SourceConnection.webhook_token == token))
    if connection is None:
        raise NotFound("no webhook is registered at this URL; copy the URL from `aic source show`")
    return connection


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(connection: SourceConnection, header: str | None, body: bytes,
                     now: float | None = None) -> None:
    """Required only when the connection has a webhook secret. Replays outside the window fail."""
    if not connection.webhook_secret_encrypted:
        return
    if not header:
        raise InvalidSignature(f"this webhook requires a {SIGNATURE_HEADER} header")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        raise InvalidSignature(f"{SIGNATURE_HEADER} must look like t=<unix time>,v1=<hex>") from None
    now = now if now is not None else time.time()
    if abs(now - timestamp) > SIGNATURE_TOLERANCE_SECONDS:
        raise InvalidSignature("the signature's timestamp is outside the allowed 5-minute window "
                               "(a replayed or delayed delivery)")
    secret = crypto.decrypt_json(connection.webhook_secret_encrypted)["secret"]
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, given):
        raise InvalidSignature("the signature does not match the body")


def announce_export(session: Session, connection: SourceConnection, external_export_id: str, *,
                    via: str) -> tuple[SourceExport, bool]:
    """Record that the source has a package for us; queue it once. Returns (row, newly_known)."""
    existing = _find(session, connection.id, external_export_id)
    if existing is not None:
        return existing, False
    export = SourceExport(
        id=ids.new_id("srcexp", 6), organization_id=connection.organization_id,
        source_connection_id=connection.id, external_export_id=external_export_id,
        status=SourceExportStatus.RECEIVED.value, received_via=via, attempts=0,
        received_at=utcnow())
    try:
        with session.begin_nested():
            session.add(export)
            session.flush()
    except IntegrityError:
        # A concurrent delivery (or the poller) recorded it first: that one queued the job.
        existing = _find(session, connection.id, external_export_id)
        return existing, False
    enqueue_after_commit(session, TASK_PROCESS_SOURCE_EXPORT, export.id,
                         queue=get_settings().export_queue)
    return export, True


def reannounce_rejected(session: Session, export: SourceExport) -> bool:
    """The source lists a package we rejected (it answered 404 past the grace): take it again.

    Only the poll calls this: the list is read with the organization's own credentials, so the
    package exists, unlike a webhook's export id, which anyone who knows the URL can send. The
    grace starts again from now. Compare-and-set, so two polls queue it once. True if it did.
    """
    now = utcnow()
    moved = session.execute(
        update(SourceExport)
        .where(SourceExport.id == export.id,
               SourceExport.status == SourceExportStatus.REJECTED.value)
        .values(status=SourceExportStatus.RECEIVED.value, received_at=now, attempts=0,
                lease_expires_at=None, updated_at=now,
                last_error=f"the source lists this export as unprocessed again; it had been "
                           f"rejected: {export.last_error or 'no reason recorded'}")
        .execution_options(synchronize_session=False)
    ).rowcount
    if moved != 1:
        return False
    requeue_export(session, export)
    return True


def reopen_package(session: Session, source_export_id: str) -> None:
    """A package's export is running again (an operator's retry): the package is not done.

    Called in the transaction of that status change, so the stuck-work sweeper, which re-sends
    the reports of packages in ``processing``, covers a report task lost on the way.
    """
    session.execute(
        update(SourceExport)
        .where(SourceExport.id == source_export_id,
               SourceExport.status.in_([SourceExportStatus.COMPLETED.value,
                                        SourceExportStatus.COMPLETED_WITH_FAILURES.value]))
        .values(status=SourceExportStatus.PROCESSING.value, updated_at=utcnow())
        .execution_options(synchronize_session=False))


def requeue_export(session: Session, export: SourceExport) -> None:
    enqueue_after_commit(session, TASK_PROCESS_SOURCE_EXPORT, export.id,
                         queue=get_settings().export_queue)


def enqueue_report(session: Session, source_export_id: str) -> None:
    enqueue_after_commit(session, TASK_REPORT_TO_SOURCE, source_export_id,
                         queue=get_settings().report_queue)


def _find(session: Session, connection_id: str, external_export_id: str) -> SourceExport | None:
    return session.scalar(select(SourceExport).where(
        SourceExport.source_connection_id == connection_id,
        SourceExport.external_export_id == external_export_id))


def record_webhook(session: Session, connection: SourceConnection, external_export_id: str,
                   body: dict[str, Any]) -> tuple[SourceExport, bool]:
    export, new = announce_export(session, connection, external_export_id, via="webhook")
    session.add(WebhookDelivery(source_connection_id=connection.id,
                                external_export_id=external_export_id, body=body,
                                duplicate=not new))
    return export, new


def get_source_export(session: Session, org_id: str, source_export_id: str) -> SourceExport:
    export = session.get(SourceExport, source_export_id)
    if export is None or export.organization_id != org_id:
        raise NotFound(f"source export {source_export_id} does not exist")
    return export
